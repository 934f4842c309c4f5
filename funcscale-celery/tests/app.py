"""The Celery application the tests run as real workers and beats (``celery -A app``), and
publish from. Everything comes from the environment the test sets (conftest.Scope.env)."""

import json
import os
import time

import redis
from celery import Celery

import funcscale_celery

BROKER = os.environ.get("FSCT_BROKER", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("FSCT_QUEUE", "celery")
SIDE = os.environ.get("FSCT_SIDE", "fsct-side")

app = Celery("fsct", broker=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    broker_transport_options={"global_keyprefix": os.environ.get("FSCT_KOMBU_PREFIX", "fsck:")},
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
if os.environ.get("FSCT_BEAT"):
    app.conf.beat_schedule = {
        "every-second": {"task": "app.record_tick", "schedule": 1.0},
    }
    app.conf.funcscale_beat_lease_ttl_ms = int(os.environ.get("FSCT_LEASE_TTL_MS", "3000"))

if os.environ.get("FSCT_NO_INSTALL") != "1":
    funcscale_celery.install(app)

_side = redis.Redis.from_url(BROKER, decode_responses=True)


@app.task
def noop():
    return None


@app.task
def record(tag):
    """Side effect: the task ran."""
    _side.rpush(SIDE + ":ran", tag)
    return tag


@app.task
def hold(tag, ms=0):
    """Run until the test releases ``tag`` (or ``ms`` pass)."""
    _side.rpush(SIDE + ":started", tag)
    if ms:
        time.sleep(ms / 1000.0)
    else:
        _side.blpop(SIDE + ":release:" + tag, timeout=60)
    _side.rpush(SIDE + ":ran", tag)
    return tag


@app.task
def stuck(tag):
    """Runs until the test SIGKILLs its process (recorded): no task_postrun, no process exit."""
    _side.rpush(SIDE + ":pids", os.getpid())
    time.sleep(60)


@app.task
def boom():
    raise ValueError("boom")


@app.task(bind=True, max_retries=1, default_retry_delay=0)
def flaky(self, tag):
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    _side.rpush(SIDE + ":ran", tag)
    return tag


@app.task(bind=True)
def record_tick(self):
    """A beat tick: records the tick header the guarded beat sent it with."""
    tick = getattr(self.request, "funcscale_beat_tick_ms", None)
    _side.rpush(SIDE + ":ticks", json.dumps({"tick": tick, "at": time.time()}))


@app.task
def bench_noop(i, n, key):
    if i == 0:
        _side.set(key + ":start", time.time())
    if i == n - 1:
        _side.set(key + ":end", time.time())
