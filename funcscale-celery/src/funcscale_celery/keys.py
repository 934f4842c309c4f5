"""funcscale's Redis key names, spelled as ``Keys`` in protocol/src/keys.rs spells them.

Only the keys this package writes or reads. The tests compare every one with the Rust crate's
(``protocol/tests/celery_contract.rs`` prints them).
"""

from __future__ import annotations

import re
from typing import Optional

DEFAULT_PREFIX = "funcscale"
#: A slot whose heartbeat is older than this is dead (``WORKER_TTL_MS`` of keys.rs).
WORKER_TTL_MS = 15_000
#: Half-life of the decaying task-time average (``STATS_HALF_LIFE_MS`` of stats.rs).
STATS_HALF_LIFE_MS = 60_000
#: How long per-minute count buckets are kept (``COUNTS_RETENTION_MS`` of records.rs).
COUNTS_RETENTION_MS = 24 * 3_600_000
#: Format of the count buckets (``COUNTS_FORMAT`` of records.rs).
COUNTS_FORMAT = 2
#: The worker hash field naming the slot's pod (``WORKER_POD_FIELD`` of stop.rs).
WORKER_POD_FIELD = "pod"

_QUEUE_ID = re.compile(r"^\{([^.{}]+)\.([^{}]+)\}$")


def queue_id(namespace: str, name: str) -> str:
    """The id of FuncQueue ``name`` in ``namespace``: ``{<namespace>.<name>}`` (``Keys::queue_id``)."""
    return "{%s.%s}" % (namespace, name)


def queue_id_namespace(qid: str) -> Optional[str]:
    """The namespace a queue id names, ``None`` for a bare (legacy) id."""
    m = _QUEUE_ID.match(qid)
    return m.group(1) if m else None


class Keys:
    """Key names under ``prefix``, for the worker slots of ``namespace``."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, namespace: Optional[str] = None):
        self.prefix = prefix
        self.namespace = namespace or None

    def _scoped(self, what: str) -> str:
        if self.namespace:
            return "%s:%s:{%s}" % (self.prefix, what, self.namespace)
        return "%s:%s" % (self.prefix, what)

    def stats(self, queue: str) -> str:
        return "%s:stats:%s" % (self.prefix, queue)

    def counts(self, queue: str, minute: int) -> str:
        return "%s:counts:%s:%d" % (self.prefix, queue, minute)

    def running(self, queue: str) -> str:
        return "%s:running:%s" % (self.prefix, queue)

    def inflight(self, slot: str) -> str:
        return "%s:%s" % (self._scoped("inflight"), slot)

    def workers(self) -> str:
        return self._scoped("workers")

    def worker(self, slot: str) -> str:
        return "%s:%s" % (self._scoped("worker"), slot)

    def beat_lease(self, namespace: Optional[str]) -> str:
        if namespace:
            return "%s:beat:{%s}:lease" % (self.prefix, namespace)
        return "%s:beat:lease" % self.prefix

    def beat_fence(self, namespace: Optional[str]) -> str:
        if namespace:
            return "%s:beat:{%s}:fence" % (self.prefix, namespace)
        return "%s:beat:fence" % self.prefix

    def celery_beat_sent(self, namespace: Optional[str]) -> str:
        if namespace:
            return "%s:beat:{%s}:celery-sent" % (self.prefix, namespace)
        return "%s:beat:celery-sent" % self.prefix
