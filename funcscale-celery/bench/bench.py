"""The integration's cost: Celery no-op task throughput with and without
``funcscale_celery.install(app)``, in the same run, several rounds, medians.

Each run publishes N no-op tasks (the publish rate is measured too: install() adds the enqueue
header and the arrival count to every publish), then starts a real Celery worker on them and
times the first task's start to the last task's end, and takes the worker process's CPU time
over the same span (from /proc: the integration's background thread included), which a busy
machine disturbs less than the wall-clock rate. Both modes alternate within each round, on the
same Redis (broker and funcscale), with fresh keys per run.

    python bench/bench.py [--tasks 2000] [--rounds 5] [--pool solo] [--concurrency 1]
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
from celery import Celery

import funcscale_celery

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
URL = os.environ.get("FUNCSCALE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def proc_cpu(pid):
    """User + system CPU seconds of process ``pid`` so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(r, n, install, pool, concurrency, tmp):
    tag = uuid.uuid4().hex[:10]
    queue, kprefix, prefix, side = "bq-" + tag, "fsbk-%s:" % tag, "fsbt-" + tag, "fsbt-side-" + tag
    ns = "bench-" + tag
    mapping = '{"%s": "%s.jobs"}' % (queue, ns)
    app = Celery("bench-" + tag, broker=URL, set_as_current=False)
    app.conf.update(task_default_queue=queue, broker_transport_options={"global_keyprefix": kprefix})
    if install:
        funcscale_celery.install(app, queues={queue: ns + ".jobs"}, redis_url=URL, prefix=prefix)
    key = side + ":bench"
    try:
        with app.producer_or_acquire() as producer:
            t0 = time.perf_counter()
            for i in range(n):
                app.send_task("app.bench_noop", args=[i, n, key], queue=queue, producer=producer)
            publish_rate = n / (time.perf_counter() - t0)
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("FUNCSCALE_"):
                del env[k]
        env.update(
            FSCT_BROKER=URL, FSCT_KOMBU_PREFIX=kprefix, FSCT_QUEUE=queue, FSCT_SIDE=side,
            FSCT_NO_INSTALL="0" if install else "1", FUNCSCALE_REDIS_URL=URL, FUNCSCALE_PREFIX=prefix,
            FUNCSCALE_CELERY_QUEUES=mapping, FUNCSCALE_POD_NAME="bench", FUNCSCALE_POD_NAMESPACE=ns,
            PYTHONPATH=str(TESTS),
        )
        log = open(os.path.join(tmp, "worker-%s.log" % tag), "wb")
        w = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "celery"), "-A", "app", "worker", "-Q", queue,
             "-P", pool, "-c", str(concurrency), "--without-gossip", "--without-mingle", "--without-heartbeat",
             "-l", "warning", "--prefetch-multiplier", "16"],
            env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            cpu0 = None
            while not r.exists(key + ":end"):
                if w.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the bench worker failed: see %s" % log.name)
                if cpu0 is None and r.exists(key + ":start"):
                    cpu0 = proc_cpu(w.pid)
                time.sleep(0.01)
            cpu = proc_cpu(w.pid) - (cpu0 if cpu0 is not None else proc_cpu(w.pid))
            start, end = float(r.get(key + ":start")), float(r.get(key + ":end"))
        finally:
            os.killpg(w.pid, signal.SIGTERM)
            w.wait(30)
        if install:
            completed = int(r.hget("%s:stats:{%s.jobs}" % (prefix, ns), "completed") or 0)
            assert completed == n, "the installed worker recorded %d of %d completions" % (completed, n)
        return (n - 1) / (end - start), publish_rate, cpu * 1e6 / (n - 1)
    finally:
        for pat in (prefix + ":*", kprefix + "*", side + "*"):
            for k in r.scan_iter(match=pat, count=1000):
                r.delete(k)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pool", default="solo")
    ap.add_argument("--concurrency", type=int, default=1)
    a = ap.parse_args()
    r = redis.Redis.from_url(URL, decode_responses=True)
    r.ping()
    runs = {False: [], True: []}
    pubs = {False: [], True: []}
    cpus = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="fsc-bench-") as tmp:
        for i in range(a.rounds):
            order = (False, True) if i % 2 == 0 else (True, False)
            row = {}
            for install in order:
                tput, pub, cpu = one_run(r, a.tasks, install, a.pool, a.concurrency, tmp)
                runs[install].append(tput)
                pubs[install].append(pub)
                cpus[install].append(cpu)
                row[install] = (tput, pub, cpu)
            print(
                "round %d: worker %5.0f tasks/s without, %5.0f with install(); worker CPU %4.0f us/task without, "
                "%4.0f with; publish %5.0f/s without, %5.0f/s with"
                % (i + 1, row[False][0], row[True][0], row[False][2], row[True][2], row[False][1], row[True][1]),
                flush=True,
            )
    off, on = statistics.median(runs[False]), statistics.median(runs[True])
    poff, pon = statistics.median(pubs[False]), statistics.median(pubs[True])
    coff, con = statistics.median(cpus[False]), statistics.median(cpus[True])
    ratios = [b / a_ for a_, b in zip(runs[False], runs[True])]
    print(
        "funcscale-celery cost (%d no-op tasks, -P %s -c %d, %d rounds, medians): worker %.0f -> %.0f tasks/s "
        "(with/without %.2f; median of per-round ratios %.2f); worker CPU %.0f -> %.0f us/task (+%.0f us, %.2f); "
        "publish %.0f -> %.0f tasks/s (%.2f); load average %.1f"
        % (a.tasks, a.pool, a.concurrency, a.rounds, off, on, on / off, statistics.median(ratios),
           coff, con, con - coff, con / coff, poff, pon, pon / poff, os.getloadavg()[0])
    )


if __name__ == "__main__":
    main()
