"""Two Celery beats with the GuardedScheduler, a 1 s schedule, for ~20 s while the lease changes
hands every few seconds (the holder stalls, loses the lease and resumes believing it holds it:
a split brain): each tick is sent once, counted by the side
effects of the tasks that ran (each records the tick it was sent for)."""

import collections
import json
import os
import signal
import time

from conftest import celery_bin, start_worker, wait_for
from funcscale_celery.keys import Keys
from helpers import broker_list

SECONDS = float(os.environ.get("FSCT_BEAT_SECONDS", "20"))


def start_beat(procs, scope, name):
    return procs.start(
        [
            celery_bin(), "-A", "app", "beat", "-S", "funcscale_celery.GuardedScheduler",
            "-s", "celerybeat-schedule-%s" % name, "--pidfile=", "-l", "info",
        ],
        scope.env(FSCT_BEAT="1", FSCT_LEASE_TTL_MS="6000", FUNCSCALE_POD_NAME="beat-%s-%s" % (name, scope.tag)),
        "beat-" + name,
    )


def test_two_guarded_beats_send_each_tick_once(scope, r, procs):
    k = Keys(scope.prefix, scope.namespace)
    lease = k.beat_lease(scope.namespace)
    start_worker(procs, scope, concurrency=2)
    beats = [start_beat(procs, scope, "a"), start_beat(procs, scope, "b")]
    wait_for(lambda: r.get(lease), 30, what="a beat to take the lease")
    holders = collections.Counter()
    end = time.monotonic() + SECONDS
    next_steal = time.monotonic() + 3
    while time.monotonic() < end:
        v = r.get(lease)
        if v:
            holders[v] += 1
        if v and time.monotonic() >= next_steal:
            # split brain: the holder stalls (SIGSTOP), its lease goes, the other beat takes
            # it with a new token; the stalled one resumes believing it still holds the lease
            old = beats[0] if "-beat-a-" in v else beats[1]
            os.killpg(old.pid, signal.SIGSTOP)
            try:
                r.delete(lease)
                wait_for(lambda: (r.get(lease) or v) != v, 10, what="the other beat to take the lease")
            finally:
                os.killpg(old.pid, signal.SIGCONT)
            next_steal = time.monotonic() + 3
        time.sleep(0.1)
    for b in beats:
        procs.stop(b)
        assert b.returncode == 0, procs.log(b)[-3000:]
    assert r.get(lease) is None, "the beat that held the lease released it when it stopped"
    wait_for(lambda: r.llen(broker_list(scope)) == 0, 30, what="the worker to run every tick")
    time.sleep(1)
    ticks = [json.loads(t) for t in r.lrange(scope.side + ":ticks", 0, -1)]
    sent = collections.Counter(t["tick"] for t in ticks)
    assert None not in sent, "every tick carries its tick header"
    dup = {t: n for t, n in sent.items() if n > 1}
    assert not dup, "ticks sent more than once: %s" % dup
    # both beats held the lease (the handovers happened) and the ticks kept coming
    holder_names = {v.rsplit(" ", 1)[0] for v in holders}
    assert len(holder_names) == 2, holders
    assert len(holders) >= 3, "the lease changed hands: %s" % holders
    assert len(sent) >= SECONDS * 0.6, "only %d ticks in %.0f s: %s" % (len(sent), SECONDS, sorted(sent))
    logs = procs.log(beats[0]) + procs.log(beats[1])
    assert "beat lease acquired" in logs
    # the sent ticks are recorded per entry, the last one the latest tick
    assert int(r.hget(k.celery_beat_sent(scope.namespace), "every-second")) == max(sent)
