"""The integration writes what funcscale's workers write, where the operator reads it: checked
with real Celery workers on the real Redis, and read back by the Rust protocol crate."""

import json
import os
import signal
import time

import pytest

from conftest import REPO, start_worker, wait_for
from funcscale_celery import ENQUEUED_HEADER
from funcscale_celery.keys import Keys, STATS_HALF_LIFE_MS, WORKER_TTL_MS
from funcscale_celery.scripts import SHIPPED, lua
from helpers import broker_list, publisher, rust_contract


def test_shipped_scripts_are_byte_identical_to_the_protocols():
    for name in SHIPPED:
        path = REPO / "protocol" / "lua" / (name + ".lua")
        assert path.is_file(), "%s: not in protocol/lua" % name
        assert lua(name) == path.read_text(encoding="utf-8"), (
            "funcscale-celery's copy of %s.lua is stale: copy protocol/lua/%s.lua into "
            "funcscale-celery/src/funcscale_celery/lua/" % (name, name)
        )


def test_the_constants_are_the_crates():
    src = (REPO / "protocol" / "src").joinpath
    assert "STATS_HALF_LIFE_MS: u64 = %s;" % format(STATS_HALF_LIFE_MS, "_") in src("stats.rs").read_text()
    assert "WORKER_TTL_MS: u64 = %s;" % format(WORKER_TTL_MS, "_") in src("keys.rs").read_text()
    assert 'WORKER_POD_FIELD: &str = "pod";' in src("stop.rs").read_text()
    records = src("records.rs").read_text()
    assert "COUNTS_FORMAT: i64 = 2;" in records
    assert "COUNTS_RETENTION_MS: u64 = 24 * 3_600_000;" in records


def test_keys_are_the_rust_crates(scope):
    got = rust_contract(scope, "pod-x-1.0", 29_000_000, read=False)["keys"]
    k = Keys(scope.prefix, scope.namespace)
    q = scope.queue_id
    assert got == {
        "stats": k.stats(q),
        "counts": k.counts(q, 29_000_000),
        "running": k.running(q),
        "inflight": k.inflight("pod-x-1.0"),
        "workers": k.workers(),
        "worker": k.worker("pod-x-1.0"),
        "beat_lease": k.beat_lease(scope.namespace),
        "beat_fence": k.beat_fence(scope.namespace),
        "celery_beat_sent": k.celery_beat_sent(scope.namespace),
        "queue_id": "{%s.jobs}" % scope.namespace,
    }


@pytest.mark.parametrize("ids", ["namespaced", "bare"])
def test_every_message_carries_its_enqueue_time(scope, r, ids):
    if ids == "bare":
        scope.bare()
    app = publisher(scope)
    before = int(time.time() * 1000)
    app.send_task("app.noop", queue=scope.celery_queue)
    app.send_task("app.noop", queue=scope.celery_queue, priority=3)
    after = int(time.time() * 1000)
    # the oldest message is at the right end of the list (kombu LPUSHes, workers BRPOP)
    msgs = [json.loads(m) for m in r.lrange(broker_list(scope), 0, -1)]
    msgs += [json.loads(m) for m in r.lrange(broker_list(scope) + "\x06\x163", 0, -1)]
    assert len(msgs) == 2
    for m in msgs:
        assert before <= m["headers"][ENQUEUED_HEADER] <= after, m["headers"]
    # and each is an arrival of the funcscale queue (written by the background thread)
    k = Keys(scope.prefix, scope.namespace)
    wait_for(lambda: r.hget(k.stats(scope.queue_id), "enqueued") == "2", 5, what="2 arrivals")
    bucket = k.counts(scope.queue_id, before // 60_000)
    if before // 60_000 == after // 60_000:
        assert r.hgetall(bucket) == {"submitted": "2", "fmt": "2"}
        assert 0 < r.pttl(bucket) <= 24 * 3_600_000
    # a queue that is not mapped: the header, but no funcscale count
    app.send_task("app.noop", queue=scope.celery_queue + "-other")
    m = json.loads(r.lindex(scope.kombu_prefix + scope.celery_queue + "-other", -1))
    assert m["headers"][ENQUEUED_HEADER] >= before
    time.sleep(0.3)  # 6 flushes
    assert r.hget(k.stats(scope.queue_id), "enqueued") == "2"


@pytest.mark.parametrize("ids", ["namespaced", "bare"])
def test_a_worker_reports_running_tasks_task_time_and_outcomes(scope, r, procs, ids):
    if ids == "bare":
        scope.bare()
    k = Keys(scope.prefix, scope.slot_ns)
    q = scope.queue_id
    start_worker(procs, scope, concurrency=2)
    app = publisher(scope)
    minute = int(time.time() * 1000) // 60_000
    app.send_task("app.hold", args=["a"], queue=scope.celery_queue)
    app.send_task("app.hold", args=["b"], queue=scope.celery_queue)
    wait_for(lambda: r.llen(scope.side + ":started") == 2, 30, what="both tasks to start")
    # running: one slot per worker process, each an in-flight list key in the running set,
    # each slot registered with its pod, as the Rust worker's slots are
    running = wait_for(lambda: (lambda m: m if len(m) == 2 else None)(r.zrange(k.running(q), 0, -1, withscores=True)), 5, what="the running set")
    now = time.time() * 1000
    slots = []
    for member, score in running:
        assert member.startswith(k.inflight("")), member
        slot = member[len(k.inflight("")):]
        assert ":" not in slot and slot.startswith(scope.pod + "-"), slot
        slots.append(slot)
        assert now - 30_000 < score <= now + 1000
        h = r.hgetall(k.worker(slot))
        assert h["pod"] == scope.pod and h["queues"] == q and h["processes"] == "2", h
        assert r.zscore(k.workers(), slot) is not None
        assert 0 < r.pttl(k.worker(slot)) <= 4 * WORKER_TTL_MS
        assert r.llen(member) == 0, "the in-flight list stays empty: Celery holds the task"
    assert len(set(slots)) == 2
    # the Rust crate sees them as the operator does: 2 running, both of the pod
    seen = rust_contract(scope, slots[0], minute)
    assert seen["running"] == 2
    assert seen["running_by_pod"] == {scope.pod: 2}
    assert sorted(seen["running_slots"]) == sorted(slots)
    # finish: 250 ms tasks, a failure, a retry
    r.rpush(scope.side + ":release:a", 1)
    r.rpush(scope.side + ":release:b", 1)
    for i in range(4):
        app.send_task("app.hold", args=["t%d" % i, 250], queue=scope.celery_queue)
    app.send_task("app.boom", queue=scope.celery_queue)
    app.send_task("app.flaky", args=["f"], queue=scope.celery_queue)
    wait_for(lambda: r.llen(scope.side + ":ran") == 7, 30, what="the tasks to run")
    # all 9 outcomes (each child process sends its own: wait for every one)
    stats = wait_for(
        lambda: (lambda h: h if (h.get("dead"), h.get("completed"), h.get("retried")) == ("1", "7", "1") else None)(r.hgetall(k.stats(q))),
        10,
        what="the stats",
    )
    assert r.zcard(k.running(q)) == 0, "finished tasks leave the running set"
    # the fields record_duration.lua and the counters write, with the operator's names
    assert stats["enqueued"] == "8", "8 arrivals; the retry's republish is not one"
    assert stats["failed"] == "2" and stats["retried"] == "1" and stats["dead"] == "1"
    assert {"ewma_ms", "dsum_ms", "dcount", "updated_ms"} <= set(stats)
    assert float(stats["dcount"]) == pytest.approx(9, abs=0.1)
    seen = rust_contract(scope, slots[0], minute)
    s = seen["stats"]
    assert (s["enqueued"], s["completed"], s["failed"], s["retried"], s["dead"]) == (8, 7, 2, 1, 1)
    # T measured: 4 tasks of 250 ms among 9 attempts; the 2 held ones ran longer
    assert 100 < s["ewma_ms"] < 30_000, s
    assert s["p50_ms"] in (250, 500, 1000, 2500), s
    c = seen["counts"]
    if int(time.time() * 1000) // 60_000 == minute:
        assert (c["submitted"], c["completed"], c["failed"], c["retried"], c["dead"]) == (8, 7, 2, 1, 1), c
        assert c["started"] == 9, "format 2: every attempt's start derived from its outcome"
    else:  # the minute turned during the test: the two buckets together
        later = rust_contract(scope, slots[0], minute + 1)["counts"]
        assert c["completed"] + later["completed"] == 7 and c["submitted"] + later["submitted"] == 8
    assert 0 < r.pttl(k.counts(q, minute)) <= 24 * 3_600_000


def test_a_slot_killed_mid_task_is_forgotten(scope, r, procs):
    """A worker killed while it runs a task leaves its slot in the running set; the next worker's
    reaper forgets it once its heartbeat is older than the TTL (lua/forget.lua)."""
    k = Keys(scope.prefix, scope.slot_ns)
    q = scope.queue_id
    w = start_worker(procs, scope, concurrency=1, name="victim")
    app = publisher(scope)
    app.send_task("app.hold", args=["x"], queue=scope.celery_queue)
    wait_for(lambda: r.zcard(k.running(q)) == 1, 30, what="the task to run")
    dead_slot = r.zrange(k.running(q), 0, -1)[0][len(k.inflight("")):]
    procs.stop(w, signal.SIGKILL)
    # its heartbeat ages: pretend 20 s passed instead of waiting for them
    r.zadd(k.workers(), {dead_slot: int(time.time() * 1000) - 20_000})
    start_worker(procs, scope, concurrency=1, name="survivor")
    app.send_task("app.hold", args=["y", 10], queue=scope.celery_queue)
    wait_for(lambda: r.zscore(k.workers(), dead_slot) is None, 30, what="the dead slot to be forgotten")
    assert r.exists(k.worker(dead_slot)) == 0
    wait_for(lambda: k.inflight(dead_slot) not in r.zrange(k.running(q), 0, -1), 5, what="the running set to lose it")


def test_a_pool_process_killed_mid_task_leaves_no_running_task(scope, r, procs):
    """A prefork child SIGKILLed (the OOM killer) never finishes its task nor runs its exit
    handlers; the child that replaces it (same index, same slot, heartbeat alive) takes the
    entry out of the running set as it starts."""
    k = Keys(scope.prefix, scope.slot_ns)
    q = scope.queue_id
    start_worker(procs, scope, concurrency=1)
    app = publisher(scope)
    app.send_task("app.stuck", args=["x"], queue=scope.celery_queue)
    pid = int(wait_for(lambda: r.lindex(scope.side + ":pids", 0), 30, what="the task to run"))
    wait_for(lambda: r.zcard(k.running(q)) == 1, 5, what="the running entry")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: r.zcard(k.running(q)) == 0, 10, what="the running set to be empty after the kill")
    # and the new child runs tasks as before
    app.send_task("app.record", args=["after"], queue=scope.celery_queue)
    wait_for(lambda: r.lrange(scope.side + ":ran", 0, -1) == ["after"], 30, what="a task after the kill")


@pytest.mark.parametrize("pool", ["threads"])
def test_concurrent_tasks_of_one_process_are_separate_slots(scope, r, procs, pool):
    k = Keys(scope.prefix, scope.slot_ns)
    q = scope.queue_id
    start_worker(procs, scope, concurrency=2, pool=pool)
    app = publisher(scope)
    app.send_task("app.hold", args=["a"], queue=scope.celery_queue)
    app.send_task("app.hold", args=["b"], queue=scope.celery_queue)
    members = wait_for(lambda: (lambda m: m if len(m) == 2 else None)(r.zrange(k.running(q), 0, -1)), 30, what="2 running")
    slots = sorted(m[len(k.inflight("")):] for m in members)
    assert slots[0].endswith(".0") and slots[1].endswith(".0-1"), slots
    for s in slots:
        assert r.hget(k.worker(s), "pod") == scope.pod
    r.rpush(scope.side + ":release:a", 1)
    r.rpush(scope.side + ":release:b", 1)
    wait_for(lambda: r.zcard(k.running(q)) == 0, 30, what="both to finish")


def test_the_beat_send_script(scope, r):
    """celery_beat_send.lua: the lease value (holder and token) must be the caller's, and a
    tick of an entry is sent once."""
    k = Keys(scope.prefix, scope.namespace)
    send = r.register_script(lua("celery_beat_send"))
    acquire = r.register_script(lua("lease_acquire"))
    lease, fence, sent = k.beat_lease(scope.namespace), k.beat_fence(scope.namespace), k.celery_beat_sent(scope.namespace)
    t1 = acquire(keys=[lease, fence], args=["a", 5000])
    va = "a %d" % t1
    assert send(keys=[lease, sent], args=[va, "e", 1000, 5000]) == 1
    assert send(keys=[lease, sent], args=[va, "e", 1000, 5000]) == 0, "the same tick twice"
    assert send(keys=[lease, sent], args=[va, "e", 0, 5000]) == 0, "an older tick"
    assert send(keys=[lease, sent], args=[va, "f", 1000, 5000]) == 1, "another entry's tick"
    assert r.hgetall(sent) == {"e": "1000", "f": "1000"}
    # the lease changes hands: the old holder's value (same holder name, old token) is refused
    r.delete(lease)
    t2 = acquire(keys=[lease, fence], args=["a", 5000])
    assert t2 == t1 + 1
    assert send(keys=[lease, sent], args=[va, "e", 2000, 5000]) == -1, "a stale token"
    assert send(keys=[lease, sent], args=["a %d" % t2, "e", 2000, 5000]) == 1
    r.pexpire(lease, 100)
    assert send(keys=[lease, sent], args=["a %d" % t2, "e", 3000, 5000]) == 1
    assert r.pttl(lease) > 1000, "a send extends the lease"
