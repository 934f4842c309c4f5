"""funcscale-celery: a Celery application reports to funcscale what funcscale's own workers do.

One line in the module that creates the Celery app::

    import funcscale_celery
    funcscale_celery.install(app)

and, for Celery beat, ``celery -A proj beat -S funcscale_celery.GuardedScheduler`` (or
``app.conf.beat_scheduler = "funcscale_celery.GuardedScheduler"``). See docs/celery.md.
"""

from __future__ import annotations

import itertools
from typing import Any, Optional

from .config import (
    ENV_POD_NAME,
    ENV_POD_NAMESPACE,
    ENV_PREFIX,
    ENV_QUEUES,
    ENV_REDIS_PASSWORD,
    ENV_REDIS_URL,
    ENV_REDIS_USERNAME,
    Config,
    ConfigError,
    load,
)
from .recorder import ENQUEUED_HEADER, Recorder

__all__ = [
    "install",
    "Config",
    "ConfigError",
    "Recorder",
    "GuardedScheduler",
    "ENQUEUED_HEADER",
    "ENV_REDIS_URL",
    "ENV_REDIS_USERNAME",
    "ENV_REDIS_PASSWORD",
    "ENV_PREFIX",
    "ENV_POD_NAME",
    "ENV_POD_NAMESPACE",
    "ENV_QUEUES",
]

__version__ = "0.1.0"

_ATTR = "_funcscale_recorder"
_installs = itertools.count()


def install(
    app: Any,
    queues: Optional[Any] = None,
    redis_url: Optional[str] = None,
    prefix: Optional[str] = None,
    *,
    username: Optional[str] = None,
    password: Optional[str] = None,
    pod: Optional[str] = None,
    namespace: Optional[str] = None,
) -> Recorder:
    """Report ``app``'s tasks to funcscale (see :mod:`funcscale_celery.recorder`).

    The arguments override the environment the operator gives pods (``FUNCSCALE_CELERY_QUEUES``:
    a JSON object, or here a dict, mapping Celery queue names to funcscale queue ids
    ``"<namespace>.<FuncQueue name>"``; ``FUNCSCALE_REDIS_URL``, ``FUNCSCALE_REDIS_USERNAME``,
    ``FUNCSCALE_REDIS_PASSWORD``, ``FUNCSCALE_PREFIX``, ``FUNCSCALE_POD_NAME``,
    ``FUNCSCALE_POD_NAMESPACE``). Raises :class:`ConfigError`, naming the variable, when the
    configuration is missing or invalid. Installing twice on one app returns the first recorder.
    """
    existing = getattr(app, _ATTR, None)
    if existing is not None:
        return existing
    config = load(
        queues=queues,
        redis_url=redis_url,
        prefix=prefix,
        username=username,
        password=password,
        pod=pod,
        namespace=namespace,
    )
    from celery import signals

    rec = Recorder(config, processes=app.conf.worker_concurrency)
    uid = "funcscale_celery.%d" % next(_installs)

    def mine(task: Any) -> bool:
        return getattr(task, "app", None) is None or task.app is app

    def on_publish(sender=None, **kw):
        rec.on_publish(**kw)

    def on_prerun(sender=None, **kw):
        if mine(kw.get("task") or sender):
            rec.on_prerun(**kw)

    def on_postrun(sender=None, **kw):
        rec.on_postrun(**kw)

    def on_worker_init(sender=None, **kw):
        concurrency = getattr(sender, "concurrency", None)
        if concurrency:
            rec.processes = int(concurrency)

    def on_shutdown(sender=None, **kw):
        rec.shutdown()

    def on_process_init(sender=None, **kw):
        rec.process_started()

    signals.before_task_publish.connect(on_publish, weak=False, dispatch_uid=uid + ".publish")
    signals.task_prerun.connect(on_prerun, weak=False, dispatch_uid=uid + ".prerun")
    signals.task_postrun.connect(on_postrun, weak=False, dispatch_uid=uid + ".postrun")
    signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid=uid + ".init")
    signals.worker_process_init.connect(on_process_init, weak=False, dispatch_uid=uid + ".pinit")
    signals.worker_process_shutdown.connect(on_shutdown, weak=False, dispatch_uid=uid + ".pshutdown")
    signals.worker_shutdown.connect(on_shutdown, weak=False, dispatch_uid=uid + ".shutdown")
    setattr(app, _ATTR, rec)
    return rec


def installed(app: Any) -> Optional[Recorder]:
    """The recorder :func:`install` put on ``app``, if any."""
    return getattr(app, _ATTR, None)


def __getattr__(name: str) -> Any:
    # the beat guard imports celery.beat: only when asked for
    if name == "GuardedScheduler":
        from .beat import GuardedScheduler

        return GuardedScheduler
    raise AttributeError(name)
