"""The beat guard: Celery beat sends a tick only while it holds funcscale's fenced beat lease,
and never sends one tick twice across beats.

- The lease is the namespace's funcscale beat lease (``<prefix>:beat:{<ns>}:lease``, value
  ``<holder> <token>``, token from ``<prefix>:beat:{<ns>}:fence``), taken, renewed and released
  with funcscale's own scripts (``lua/lease_acquire.lua``, ``lease_renew.lua``,
  ``lease_release.lua``) exactly as the Rust beat does: renewed every TTL/3; no tick is sent
  once the last successful renewal is older than TTL/2.
- Every send is conditional: ``lua/celery_beat_send.lua`` checks, in one step on Redis, that the
  lease value (holder and fencing token) is still this beat's and that this tick of the entry is
  newer than the last one sent (``<prefix>:beat:{<ns>}:celery-sent``: entry name -> last tick),
  records it and only then does the beat publish. A tick is at most once: a publish that fails
  after the script is not retried.
- A tick is the period the entry's send belongs to: for an interval schedule (``schedule``,
  ``timedelta``, seconds) the interval-long window of the Unix epoch holding the send time; for
  a ``crontab`` the minute; for any other schedule the second. Two sends of one entry that
  Celery makes at least an interval apart are in two windows, so the single holder is never
  refused; a new holder whose own schedule state says the entry is due in a window the old
  holder already sent is refused.
- Entries are advanced whether sent or not (every beat keeps its own schedule), so a beat that
  takes the lease over goes on from the current time: missed ticks are not caught up.

The message of a sent tick carries the header ``funcscale_beat_tick_ms`` (the tick).
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import time
from typing import Any, Optional

from celery import signals
from celery.beat import PersistentScheduler
from celery.schedules import crontab
from celery.schedules import schedule as interval_schedule

from . import config as _config
from .scripts import lua

log = logging.getLogger("funcscale_celery.beat")

#: Message header of a tick sent under the guard: the tick (unix ms).
TICK_HEADER = "funcscale_beat_tick_ms"
#: Default lease TTL (the Rust beat's default).
DEFAULT_LEASE_TTL_MS = 10_000

_current_tick: "contextvars.ContextVar[Optional[int]]" = contextvars.ContextVar(
    "funcscale_beat_tick", default=None
)


def _tick_header(headers=None, **_kw):
    tick = _current_tick.get()
    if tick is not None and headers is not None:
        headers[TICK_HEADER] = tick


signals.before_task_publish.connect(_tick_header, weak=False, dispatch_uid="funcscale_celery.beat.tick")


def tick_of(sched: Any, now_ms: int) -> int:
    """The tick (unix ms) a send at ``now_ms`` of an entry with schedule ``sched`` belongs to."""
    if isinstance(sched, crontab):
        period = 60_000
    elif isinstance(sched, interval_schedule):
        period = max(1, int(sched.run_every.total_seconds() * 1000))
    else:
        period = 1_000
    return now_ms - now_ms % period


class GuardedScheduler(PersistentScheduler):
    """Celery beat's default scheduler (state in a local file), sending only under funcscale's
    beat lease of the namespace (see the module docs).

    Configuration: the app's :func:`funcscale_celery.install` configuration when installed, else
    the environment (``FUNCSCALE_REDIS_URL`` [+ ``FUNCSCALE_REDIS_USERNAME`` /
    ``FUNCSCALE_REDIS_PASSWORD``], ``FUNCSCALE_PREFIX``, and the namespace from
    ``FUNCSCALE_POD_NAMESPACE`` or the queues of ``FUNCSCALE_CELERY_QUEUES``). The lease TTL is
    ``app.conf.funcscale_beat_lease_ttl_ms`` (default 10,000).
    """

    def __init__(self, app, *args: Any, **kwargs: Any):
        from . import installed

        rec = installed(app)
        cfg = rec.config if rec is not None else _config.load(need_queues=False)
        if not cfg.beat_namespace:
            raise _config.ConfigError(
                "%s is not set (and %s names no queue): the beat lease is a namespace's"
                % (_config.ENV_POD_NAMESPACE, _config.ENV_QUEUES)
            )
        self.fs_config = cfg
        self.fs_redis = cfg.client()
        keys = cfg.keys
        self.fs_lease_key = keys.beat_lease(cfg.beat_namespace)
        self.fs_fence_key = keys.beat_fence(cfg.beat_namespace)
        self.fs_sent_key = keys.celery_beat_sent(cfg.beat_namespace)
        self.fs_ttl_ms = int(app.conf.get("funcscale_beat_lease_ttl_ms") or DEFAULT_LEASE_TTL_MS)
        self.fs_holder = "celery-beat-%s-%d-%04x" % (cfg.pod, os.getpid(), random.getrandbits(16))
        self._acquire = self.fs_redis.register_script(lua("lease_acquire"))
        self._renew = self.fs_redis.register_script(lua("lease_renew"))
        self._release = self.fs_redis.register_script(lua("lease_release"))
        self._send = self.fs_redis.register_script(lua("celery_beat_send"))
        #: the lease value while held
        self.fs_value: Optional[str] = None
        self.fs_token: Optional[int] = None
        self._renewed = 0.0  # monotonic time of the last successful renewal (or acquisition)
        self._last_try = 0.0
        self.fs_sent = 0
        self.fs_refused = 0
        super().__init__(app, *args, **kwargs)

    # ---- the lease ----

    def fs_may_send(self) -> bool:
        return self.fs_value is not None and (time.monotonic() - self._renewed) < self.fs_ttl_ms / 2000.0

    def fs_keep_lease(self) -> None:
        """Acquire the lease, or renew it every TTL/3, as the Rust beat does."""
        t = time.monotonic()
        try:
            if self.fs_value is None:
                token = self._acquire(keys=[self.fs_lease_key, self.fs_fence_key], args=[self.fs_holder, self.fs_ttl_ms])
                if token:
                    self.fs_token = int(token)
                    self.fs_value = "%s %d" % (self.fs_holder, self.fs_token)
                    self._renewed = t
                    self._last_try = t
                    log.info("funcscale: beat lease acquired (holder %s, token %d)", self.fs_holder, self.fs_token)
            elif t - self._last_try >= self.fs_ttl_ms / 3000.0:
                self._last_try = t
                if int(self._renew(keys=[self.fs_lease_key], args=[self.fs_value, self.fs_ttl_ms]) or 0) == 1:
                    self._renewed = t
                else:
                    log.warning("funcscale: beat lease lost (token %s)", self.fs_token)
                    self.fs_value = None
        except Exception as e:
            log.warning("funcscale: keeping the beat lease failed: %s", e)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self.fs_keep_lease()
        delay = super().tick(*args, **kwargs)
        # wake up in time to renew (or to try again to acquire)
        return min(delay, self.fs_ttl_ms / 3000.0 / 2)

    def close(self) -> None:
        if self.fs_value is not None:
            try:
                self._release(keys=[self.fs_lease_key], args=[self.fs_value])
                log.info("funcscale: beat lease released (sent %d ticks)", self.fs_sent)
            except Exception as e:
                log.warning("funcscale: releasing the beat lease failed: %s", e)
            self.fs_value = None
        super().close()

    # ---- sending ----

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        if not self.fs_may_send():
            log.debug("funcscale: not the beat leader: %s not sent", entry.name)
            if advance:
                self.reserve(entry)
            return None
        now = int(time.time() * 1000)
        tick = tick_of(entry.schedule, now)
        try:
            r = int(self._send(keys=[self.fs_lease_key, self.fs_sent_key], args=[self.fs_value, entry.name, tick, self.fs_ttl_ms]))
        except Exception as e:
            log.warning("funcscale: checking the beat lease failed, %s not sent: %s", entry.name, e)
            if advance:
                self.reserve(entry)
            return None
        if r == -1:
            log.warning("funcscale: beat lease lost (token %s): %s not sent", self.fs_token, entry.name)
            self.fs_value = None
            if advance:
                self.reserve(entry)
            return None
        if r == 0:
            self.fs_refused += 1
            log.info("funcscale: tick %d of %s was already sent", tick, entry.name)
            if advance:
                self.reserve(entry)
            return None
        self.fs_sent += 1
        token = _current_tick.set(tick)
        try:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        finally:
            _current_tick.reset(token)
