"""funcscale's Redis down: tasks still publish, run and succeed (side effects counted); the
integration logs and goes on, and writes again when Redis is back."""

import time

import redis

from conftest import start_worker, wait_for
from funcscale_celery.keys import Keys
from helpers import publisher


def test_tasks_succeed_while_funcscales_redis_is_down(scope, r, procs, own_redis):
    port, server = own_redis()
    fs_url = "redis://127.0.0.1:%d/0" % port
    start_worker(procs, scope, concurrency=1, env_extra={"FUNCSCALE_REDIS_URL": fs_url})
    w = procs.procs[-1]
    app = publisher(scope, redis_url=fs_url)
    app.send_task("app.hold", args=["before"], queue=scope.celery_queue)
    wait_for(lambda: r.lrange(scope.side + ":started", 0, -1) == ["before"], 30, what="the first task to start")
    # Redis goes down while the task runs
    server.kill()
    server.wait(5)
    r.rpush(scope.side + ":release:before", 1)
    # publishing while it is down, and tasks that start and finish while it is down
    t0 = time.monotonic()
    app.send_task("app.record", args=["during-1"], queue=scope.celery_queue)
    app.send_task("app.hold", args=["during-2", 50], queue=scope.celery_queue)
    assert time.monotonic() - t0 < 5, "a publish does not wait long for funcscale's Redis"
    wait_for(lambda: r.lrange(scope.side + ":ran", 0, -1) == ["before", "during-1", "during-2"], 30, what="every task to run")
    assert w.poll() is None, "the worker is still up"
    log = procs.log(w)
    assert "funcscale: " in log and "the task goes on" in log, log[-3000:]
    assert "succeeded" in log and "Traceback" not in log, log[-3000:]

    # Redis is back (empty: a new server on the same port): the same worker writes again
    _, server = own_redis(port=port)
    fs = redis.Redis(port=port, decode_responses=True)
    k = Keys(scope.prefix, scope.namespace)
    app.send_task("app.record", args=["after"], queue=scope.celery_queue)
    wait_for(lambda: fs.hget(k.stats(scope.queue_id), "completed") == "1", 30, what="a completion recorded again")
    assert fs.hget(k.stats(scope.queue_id), "enqueued") == "1"
    # the slot's next heartbeat (every 3 s) registers it again
    wait_for(lambda: fs.zcard(k.workers()) == 1, 10, what="the slot registered again")
