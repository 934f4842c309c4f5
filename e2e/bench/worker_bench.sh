#!/usr/bin/env bash
# No-op task throughput: funcscale-worker (--processes 1 and 5) vs Celery 5 (solo and
# prefork -c 5) on the same local Redis, plus the Redis ceiling of the fetch path.
#
#   e2e/bench/worker_bench.sh            # N=20000 tasks per run
#   N=50000 e2e/bench/worker_bench.sh
#
# Env: N, BENCH_REDIS_URL (default redis://127.0.0.1:6379/0), BENCH_VENV (Celery venv,
# default /tmp/funcscale-bench-venv), CARGO_TARGET_DIR.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
N="${N:-20000}"
export BENCH_REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6379/0}"
target="${CARGO_TARGET_DIR:-$root/target}"
venv="${BENCH_VENV:-/tmp/funcscale-bench-venv}"
rhost=127.0.0.1; rport=6379
if [[ "$BENCH_REDIS_URL" =~ redis://([^:/]+):([0-9]+) ]]; then rhost="${BASH_REMATCH[1]}"; rport="${BASH_REMATCH[2]}"; fi

echo "== building funcscale-worker (release)" >&2
(cd "$root" && cargo build --release -q -p funcscale-worker)
bin="$target/release/funcscale-worker"

if ! "$venv/bin/python" -c 'import celery, redis, packaging' 2>/dev/null; then
  echo "== installing Celery into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'celery>=5,<6' 'redis>=4' packaging
fi
py="$venv/bin/python"
celery_version="$("$py" -c 'import celery; print(celery.__version__)')"

echo "== Redis ceiling (redis-benchmark, no pipelining)" >&2
rb() { redis-benchmark -h "$rhost" -p "$rport" -q "$@" | tr '\r' '\n' | grep -E 'requests per second' | tail -1 | sed -E 's/.*: *([0-9.]+) requests per second.*/\1/'; }
list="bench-ceiling-$$"
redis-cli -h "$rhost" -p "$rport" del "$list" >/dev/null
for _ in $(seq 1 10); do redis-cli -h "$rhost" -p "$rport" lpush "$list" x x x x x x x x x x x x x x x x x x x x >/dev/null; done
ceil_lpush_1=$(rb -n 100000 -c 1 -t lpush)
ceil_rpop_1=$(rb -n 100000 -c 1 -t rpop)
ceil_lmove_1=$(rb -n 100000 -c 1 LMOVE "$list" "$list" RIGHT LEFT)
ceil_lmove_50=$(rb -n 300000 -c 50 LMOVE "$list" "$list" RIGHT LEFT)
redis-cli -h "$rhost" -p "$rport" del "$list" mylist >/dev/null

run() { "$py" "$here/bench_driver.py" "$@" | tail -1; }
echo "== funcscale-worker, $N no-op tasks" >&2
fs1=$(run funcscale --bin "$bin" --processes 1 --n "$N")
fs5=$(run funcscale --bin "$bin" --processes 5 --n "$N")
echo "== Celery $celery_version, $N no-op tasks" >&2
cs1=$(run celery --pool solo --concurrency 1 --n "$N")
cp5=$(run celery --pool prefork --concurrency 5 --n "$N")

"$py" - "$fs1" "$fs5" "$cs1" "$cp5" <<PY
import json, sys
fs1, fs5, cs1, cp5 = (json.loads(a) for a in sys.argv[1:])
print(f"no-op tasks/s, N=$N, Redis at $rhost:$rport, Celery $celery_version")
for r in (fs1, fs5, cs1, cp5):
    print(f"  {r['system']:<10} {r['mode']:<24} {r['rate']:>10.0f} tasks/s  ({r['n']} in {r['seconds']:.2f} s)")
print(f"  ratio funcscale processes=1 / celery solo          : {fs1['rate'] / cs1['rate']:.1f}x")
print(f"  ratio funcscale processes=5 / celery prefork c=5   : {fs5['rate'] / cp5['rate']:.1f}x")
print("Redis ceiling (redis-benchmark requests/s, no pipelining):")
print(f"  LPUSH 1 client {float('$ceil_lpush_1'):>10.0f}   RPOP 1 client {float('$ceil_rpop_1'):>10.0f}")
print(f"  LMOVE 1 client {float('$ceil_lmove_1'):>10.0f}   LMOVE 50 clients {float('$ceil_lmove_50'):>10.0f}")
print("  (a funcscale task costs 2 round trips: fetch script, then ack + stats in one pipeline)")
PY
