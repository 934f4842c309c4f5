"""What a funcscale worker writes, written for a Celery worker and its producers.

Per mapped queue (``Config.queues``: Celery queue -> funcscale queue id ``q``):

- **publish** (``before_task_publish``, in any process that sends tasks: producers, beat, tasks
  calling tasks): the header ``funcscale_enqueued_ms`` (unix ms) on the message, and the
  arrival: ``HINCRBY <prefix>:stats:q enqueued 1`` and ``submitted`` +1 in the minute's count
  bucket, as ``lua/enqueue.lua`` counts them. A retry's republish (header ``retries`` > 0) is
  not an arrival (funcscale counts retries apart: ``retried``).
- **start** (``task_prerun``, in the process running the task): the slot's in-flight list key
  enters the running set ``<prefix>:running:q`` scored by the start (ms), as ``lua/fetch.lua``
  does. A slot is one task at a time of one process (prefork: one per child process):
  ``<pod>-<pid of the main worker process>.<process index>``, registered with a heartbeat in
  the namespace's ``workers`` zset and ``worker`` hash (``pod``, ``queues``, ``processes``,
  ``heartbeat_ms``), as the Rust worker's slots are, so the operator counts running tasks per
  pod. The in-flight list itself stays empty: Celery holds the task, not funcscale.
- **finish** (``task_postrun``): the slot leaves the running set; the run time goes through
  ``lua/record_duration.lua`` (``completed`` or ``failed``, the decaying average ``ewma_ms`` the
  operator reads as T, and the histogram); a final failure adds ``dead`` to the stats, a retry
  ``retried``; the minute's count bucket gets ``completed`` / ``failed`` + ``dead`` /
  ``failed`` + ``retried`` (format 2, as ``records::add_counts`` writes them).

The writes are not made on the task's path: a signal handler appends what happened to a list
that a background thread of the process sends every 50 ms in one pipeline (counters summed),
as the Rust worker adds its counts every second; so the cost per task is one list append, and a
task's start and end reach Redis at most ~50 ms late. The thread also sends the heartbeats (every
3 s) and forgets dead slots (every 5 s). A process that stops (worker shutdown, pool child exit,
interpreter exit) sends what is pending first.

A Redis error never fails or delays a task: it is logged (at most every 10 s) and that batch of
writes is dropped.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import logging
import os
import threading
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Set, Tuple

import redis

from .config import Config
from .keys import COUNTS_FORMAT, COUNTS_RETENTION_MS, STATS_HALF_LIFE_MS, WORKER_POD_FIELD, WORKER_TTL_MS
from .scripts import lua, with_record_lib

log = logging.getLogger("funcscale_celery")

#: The message header holding the enqueue time (unix ms) of a task.
ENQUEUED_HEADER = "funcscale_enqueued_ms"

FLUSH_EVERY_S = 0.05
HEARTBEAT_EVERY_S = WORKER_TTL_MS / 5 / 1000.0
REAP_EVERY_S = WORKER_TTL_MS / 3 / 1000.0


def now_ms() -> int:
    return int(time.time() * 1000)


def _process_index() -> int:
    try:
        from billiard.process import current_process

        return int(getattr(current_process(), "index", 0) or 0)
    except Exception:  # pragma: no cover - billiard missing or odd
        return 0


class Recorder:
    """The signal handlers of one Celery app (see the module docs)."""

    def __init__(self, config: Config, processes: Optional[int] = None):
        self.config = config
        self.keys = config.keys
        self.redis = config.client()
        self._record = self.redis.register_script(lua("record_duration"))
        self._forget = self.redis.register_script(with_record_lib("forget"))
        # the worker name: the pod, and the process that installed (the main worker process;
        # its pool's children inherit it), so two workers of one pod never share a slot
        self.name = "%s-%d" % (config.pod, os.getpid())
        self.processes = processes or 1
        self._queue_list = ",".join(sorted(set(config.queues.values())))
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._reset_process_state()
        self._last_error_log = 0.0
        self.errors = 0
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        if os.getpid() == self._pid and self._ops:
            self.flush()

    # ---- per process state (a forked child starts afresh) ----

    def _reset_process_state(self) -> None:
        self._free: List[int] = []
        self._next = 0
        self._owned: Set[str] = set()
        self._running: Dict[str, Tuple[str, str, float, int]] = {}
        self._runs = itertools.count()
        self._ops: List[tuple] = []
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:
            with self._lock:
                if os.getpid() != self._pid:
                    self._pid = os.getpid()
                    self._lock = threading.Lock()
                    self._reset_process_state()

    def _error(self, what: str, e: BaseException) -> None:
        self.errors += 1
        t = time.monotonic()
        if t - self._last_error_log >= 10.0:
            self._last_error_log = t
            log.warning(
                "funcscale: %s failed (Redis %s): %s; the task goes on, funcscale misses this write",
                what,
                self.config.redacted_url(),
                e,
            )

    def queue_of(self, delivery_info: Optional[Dict[str, Any]]) -> Optional[str]:
        """The funcscale queue id of a delivered task, ``None`` when its Celery queue is not mapped."""
        if not delivery_info:
            return None
        for k in ("routing_key", "queue"):
            v = delivery_info.get(k)
            if v and v in self.config.queues:
                return self.config.queues[v]
        return None

    # ---- slots ----

    def slot_name(self, k: int) -> str:
        idx = _process_index()
        return "%s.%d" % (self.name, idx) if k == 0 else "%s.%d-%d" % (self.name, idx, k)

    def _take_slot(self) -> str:
        with self._lock:
            k = heapq.heappop(self._free) if self._free else self._next
            if k == self._next:
                self._next += 1
        slot = self.slot_name(k)
        if slot not in self._owned:
            # registered with the task's start, in the same batch
            self._owned.add(slot)
            self._push(("beat", slot))
        return slot

    def _give_slot(self, slot: str) -> None:
        k = slot.rsplit(".", 1)[1]
        k = int(k.split("-", 1)[1]) if "-" in k else 0
        with self._lock:
            heapq.heappush(self._free, k)

    def _heartbeat_cmds(self, pipe: Any, slots: List[str], now: int) -> None:
        for s in slots:
            pipe.zadd(self.keys.workers(), {s: now})
            pipe.hset(
                self.keys.worker(s),
                mapping={
                    WORKER_POD_FIELD: self.config.pod,
                    "queues": self._queue_list,
                    "processes": str(self.processes),
                    "heartbeat_ms": str(now),
                },
            )
            pipe.pexpire(self.keys.worker(s), WORKER_TTL_MS * 4)

    def heartbeat(self, slots: Optional[List[str]] = None) -> None:
        """Register the process's slots as live (as the Rust worker's heartbeat does)."""
        slots = sorted(self._owned) if slots is None else slots
        if not slots:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            self._heartbeat_cmds(pipe, slots, now_ms())
            pipe.execute()
        except Exception as e:
            self._error("heartbeat", e)

    def reap(self) -> int:
        """Forget dead slots (heartbeat older than the TTL) of the namespace whose in-flight list
        is empty, with ``lua/forget.lua`` as the Rust worker does: a Celery slot killed while it
        ran a task leaves the running set. Slots of Rust workers with tasks in flight are left
        to those workers' reapers (the script refuses them)."""
        cutoff = now_ms() - WORKER_TTL_MS
        n = 0
        try:
            dead = self.redis.zrangebyscore(self.keys.workers(), "-inf", cutoff, start=0, num=1000)
            for slot in dead:
                if slot in self._owned:
                    continue
                n += int(
                    self._forget(
                        keys=[self.keys.workers(), self.keys.inflight(slot), self.keys.worker(slot)],
                        args=[slot, cutoff, self.config.prefix],
                    )
                    or 0
                )
        except Exception as e:
            self._error("forgetting dead slots", e)
        return n

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._background, name="funcscale-heartbeat", daemon=True
            )
            self._thread.start()

    def _background(self) -> None:
        stop = self._stop
        next_beat = time.monotonic() + HEARTBEAT_EVERY_S
        next_reap = time.monotonic() + REAP_EVERY_S
        while not stop.wait(FLUSH_EVERY_S):
            self.flush()
            t = time.monotonic()
            if t >= next_beat:
                next_beat = t + HEARTBEAT_EVERY_S
                self.heartbeat()
            if t >= next_reap:
                next_reap = t + REAP_EVERY_S
                self.reap()

    def _push(self, op: tuple) -> None:
        with self._lock:
            self._ops.append(op)
        if self._thread is None or not self._thread.is_alive():
            self._ensure_thread()

    def flush(self) -> None:
        """Send the pending writes in one pipeline (counters summed per key)."""
        with self._lock:
            ops, self._ops = self._ops, []
        if not ops:
            return
        try:
            try:
                self._send(ops)
            except redis.exceptions.ConnectionError:
                # a pooled connection to a Redis that restarted fails once (nothing ran on
                # it): once more on a new connection; refused again, the batch is dropped
                self._send(ops)
        except Exception as e:
            self._error("writing %d task events" % len(ops), e)

    def _send(self, ops: List[tuple]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        stats: Counter = Counter()
        counts: Counter = Counter()
        # record_duration.lua by its SHA (one command per finish; a Redis that lost its
        # scripts answers NOSCRIPT for those only, sent again after loading the script)
        evals: List[Tuple[int, tuple]] = []
        # a task that started and finished within this batch was never seen running:
        # its running-set entry is neither added nor removed
        started = {op[-1] for op in ops if op[0] == "start"}
        short = {op[-1] for op in ops if op[0] == "finish" and op[-1] in started}
        for op in ops:
            kind, qid = op[0], op[1]
            if kind == "beat":
                self._heartbeat_cmds(pipe, [qid], now_ms())
            elif kind == "clear":
                pipe.zrem(self.keys.running(qid), op[2])
            elif kind == "arrive":
                stats[(qid, "enqueued")] += 1
                counts[(qid, op[2], "submitted")] += 1
            elif kind == "start":
                if op[-1] not in short:
                    pipe.zadd(self.keys.running(qid), {op[2]: op[3]})
            else:  # finish
                _, _, member, duration, now, outcome, counted, extra, run = op
                if run not in short:
                    pipe.zrem(self.keys.running(qid), member)
                if outcome is not None:
                    args = (self.keys.stats(qid), duration, now, STATS_HALF_LIFE_MS, outcome)
                    evals.append((len(pipe), args))
                    pipe.execute_command("EVALSHA", self._record.sha, 1, *args)
                for f in counted:
                    counts[(qid, now // 60_000, f)] += 1
                if extra:
                    stats[(qid, extra)] += 1
        for (qid, f), n in stats.items():
            pipe.hincrby(self.keys.stats(qid), f, n)
        buckets = set()
        for (qid, minute, f), n in counts.items():
            bucket = self.keys.counts(qid, minute)
            pipe.hincrby(bucket, f, n)
            buckets.add(bucket)
        for bucket in buckets:
            pipe.hset(bucket, "fmt", COUNTS_FORMAT)
            pipe.pexpire(bucket, COUNTS_RETENTION_MS)
        results = pipe.execute(raise_on_error=False)
        again = [args for i, args in evals if isinstance(results[i], redis.exceptions.NoScriptError)]
        if again:
            self.redis.script_load(lua("record_duration"))
            retry = self.redis.pipeline(transaction=False)
            for args in again:
                retry.execute_command("EVALSHA", self._record.sha, 1, *args)
            results = retry.execute(raise_on_error=False)
        failed = [x for x in results if isinstance(x, Exception)]
        if failed:
            self._error("writing %d task events" % len(ops), failed[0])

    def process_started(self) -> None:
        """A pool process starts (``worker_process_init``): it runs nothing, so its slot is in
        no running set. A process that replaces one killed mid-task (hard time limit, memory
        limit, a crash) has the same index, hence the same slot: the entry its predecessor left
        goes now, not when this process next finishes a task."""
        self._check_fork()
        slot = self.slot_name(0)
        for q in sorted(set(self.config.queues.values())):
            self._push(("clear", q, self.keys.inflight(slot)))

    def shutdown(self) -> None:
        """Deregister this process's slots (a worker that stops, as the Rust worker drains)."""
        self._check_fork()
        self._stop.set()
        self.flush()
        slots = sorted(self._owned)
        if not slots:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for s in slots:
                for q in set(self.config.queues.values()):
                    pipe.zrem(self.keys.running(q), self.keys.inflight(s))
                pipe.zrem(self.keys.workers(), s)
                pipe.delete(self.keys.worker(s))
            pipe.execute()
            self._owned.clear()
        except Exception as e:
            self._error("deregistering the worker slots", e)

    # ---- signal handlers ----

    def on_publish(self, body=None, exchange=None, routing_key=None, headers=None, declare=None, **_kw):
        now = now_ms()
        if headers is None:
            return
        headers[ENQUEUED_HEADER] = now
        name = None
        for q in declare or ():
            qn = getattr(q, "name", None)
            if qn:
                name = qn
                break
        qid = next((self.config.queues[n] for n in (name, routing_key) if n in self.config.queues), None)
        if qid is None:
            return
        try:
            if int(headers.get("retries") or 0) > 0:
                return
        except (TypeError, ValueError):
            pass
        self._check_fork()
        self._push(("arrive", qid, now // 60_000))

    def on_prerun(self, task_id=None, task=None, **_kw):
        self._check_fork()
        try:
            qid = self.queue_of(getattr(task.request, "delivery_info", None))
        except Exception:
            qid = None
        if qid is None or task_id is None:
            return
        slot = self._take_slot()
        run = next(self._runs)  # this attempt (a retry has the task's id again)
        self._running[task_id] = (qid, slot, time.monotonic(), run)
        self._push(("start", qid, self.keys.inflight(slot), now_ms(), run))

    def on_postrun(self, task_id=None, state=None, **_kw):
        entry = self._running.pop(task_id, None) if task_id is not None else None
        if entry is None:
            return
        qid, slot, t0, run = entry
        duration = max(0, int(round((time.monotonic() - t0) * 1000)))
        if state == "SUCCESS":
            outcome, counted, extra = "completed", ("completed",), None
        elif state == "FAILURE":
            outcome, counted, extra = "failed", ("failed", "dead"), "dead"
        elif state == "RETRY":
            outcome, counted, extra = "failed", ("failed", "retried"), "retried"
        else:  # IGNORED, REJECTED: no attempt outcome to count
            outcome, counted, extra = None, (), None
        self._push(("finish", qid, self.keys.inflight(slot), duration, now_ms(), outcome, counted, extra, run))
        self._give_slot(slot)
