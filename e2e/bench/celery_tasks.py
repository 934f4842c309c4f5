"""The Celery side of the benchmark: one no-op task on the Redis broker.

The task increments a counter so the driver can see completions (Celery with results off has
no other cheap signal); one INCR on the local Redis is small next to Celery's per-task cost.
"""
import os

import redis
from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
COUNTER = os.environ.get("BENCH_COUNTER", "bench-celery-counter")

app = Celery("celery_tasks", broker=REDIS_URL)
app.conf.update(
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_disable_rate_limits=True,
)

_r = None


@app.task(name="noop", ignore_result=True)
def noop():
    global _r
    if _r is None:
        _r = redis.Redis.from_url(REDIS_URL)
    _r.incr(COUNTER)
