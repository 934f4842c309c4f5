#!/usr/bin/env python3
"""Throughput driver for worker_bench.sh: no-op tasks per second through funcscale-worker and
through Celery 5, on the same Redis.

The rate is measured from the first task's completion to the last one's, so process start-up
(Celery's import and boot take seconds) is not counted for either side.

  bench_driver.py funcscale --bin PATH --processes N --n TASKS
  bench_driver.py celery --pool solo|prefork --concurrency N --n TASKS

Prints one JSON line: {"system", "mode", "n", "seconds", "rate"}.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import redis

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def wait_done(read, n, proc, timeout=600):
    """Poll the completion count; return (t_first, t_last)."""
    t_first = None
    deadline = time.monotonic() + timeout
    while True:
        done = read()
        now = time.monotonic()
        if t_first is None and done >= 1:
            t_first = now
        if done >= n:
            return t_first, now
        if proc.poll() is not None:
            sys.exit(f"worker exited early with {proc.returncode} after {done}/{n} tasks")
        if now > deadline:
            sys.exit(f"timed out: {done}/{n}")
        time.sleep(0.005)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench_funcscale(args):
    r = redis.Redis.from_url(REDIS_URL)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, FUNCSCALE_REDIS_URL=REDIS_URL, FUNCSCALE_PREFIX=prefix, RUST_LOG="warn")
    subprocess.run([args.bin, "enqueue", "--queue", "bench", "--func", "noop", "--count", str(args.n)],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    proc = subprocess.Popen([args.bin, "run", "--queues", "bench", "--processes", str(args.processes),
                             "--metrics-addr", "127.0.0.1:0"], env=env)
    stats = f"{prefix}:stats:bench"
    try:
        t0, t1 = wait_done(lambda: int(r.hget(stats, "completed") or 0), args.n, proc)
    finally:
        stop(proc)
        for k in r.scan_iter(f"{prefix}:*"):
            r.delete(k)
    return {"system": "funcscale", "mode": f"processes={args.processes}", "n": args.n, "seconds": t1 - t0,
            "rate": (args.n - 1) / (t1 - t0)}


def bench_celery(args):
    here = os.path.dirname(os.path.abspath(__file__))
    counter = f"bench-celery-{uuid.uuid4().hex[:8]}"
    queue = counter + "-q"
    env = dict(os.environ, BENCH_COUNTER=counter, BENCH_REDIS_URL=REDIS_URL, PYTHONPATH=here)
    os.environ.update(BENCH_COUNTER=counter)
    sys.path.insert(0, here)
    import celery_tasks  # noqa: E402

    for _ in range(args.n):
        celery_tasks.noop.apply_async(queue=queue)
    cmd = [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker", "-Q", queue, "-P", args.pool,
           "--concurrency", str(args.concurrency), "--without-gossip", "--without-mingle", "--without-heartbeat",
           "-l", "warning"]
    proc = subprocess.Popen(cmd, env=env, cwd=here)
    r = redis.Redis.from_url(REDIS_URL)
    try:
        t0, t1 = wait_done(lambda: int(r.get(counter) or 0), args.n, proc)
    finally:
        stop(proc)
        r.delete(counter, queue)
    return {"system": "celery", "mode": f"{args.pool} concurrency={args.concurrency}", "n": args.n,
            "seconds": t1 - t0, "rate": (args.n - 1) / (t1 - t0)}


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("funcscale")
    f.add_argument("--bin", required=True)
    f.add_argument("--processes", type=int, default=1)
    f.add_argument("--n", type=int, default=20000)
    c = sub.add_parser("celery")
    c.add_argument("--pool", default="solo")
    c.add_argument("--concurrency", type=int, default=1)
    c.add_argument("--n", type=int, default=20000)
    args = p.parse_args()
    res = bench_funcscale(args) if args.cmd == "funcscale" else bench_celery(args)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
