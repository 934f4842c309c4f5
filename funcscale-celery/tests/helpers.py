"""Helpers shared by the tests: a publishing app, and the Rust side of the contract."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from celery import Celery

import funcscale_celery
from conftest import REDIS_URL, REPO


def publisher(scope, install=True, **install_kw):
    """A Celery app of the test process that publishes to the scope's queue, installed with
    arguments (not the environment), as a producer's app would be."""
    app = Celery("fsct-pub-%s" % scope.tag, broker=REDIS_URL, set_as_current=False)
    app.conf.update(
        task_default_queue=scope.celery_queue,
        broker_transport_options={"global_keyprefix": scope.kombu_prefix},
    )
    if install:
        kw = dict(
            queues={scope.celery_queue: scope.mapped},
            redis_url=REDIS_URL,
            prefix=scope.prefix,
            pod=scope.pod,
        )
        kw.update(install_kw)
        funcscale_celery.install(app, **kw)
    scope.apps = getattr(scope, "apps", []) + [app]
    return app


def broker_list(scope):
    """The Redis list holding the scope's Celery queue (default priority)."""
    return scope.kombu_prefix + scope.celery_queue


def rust_contract(scope, slot, minute, read=True):
    """What the Rust protocol crate makes of the scope's keys (protocol/tests/celery_contract.rs):
    its key names and, with ``read``, the stats, counts and running tasks it parses."""
    cargo = shutil.which(os.environ.get("CARGO") or "cargo")
    if cargo is None:
        if os.environ.get("FUNCSCALE_CELERY_SKIP_RUST") == "1":
            pytest.skip("cargo not found and FUNCSCALE_CELERY_SKIP_RUST=1")
        pytest.fail("cargo not found: the contract test reads with the Rust crate (FUNCSCALE_CELERY_SKIP_RUST=1 skips it)")
    env = dict(os.environ)
    env.update(
        FSC_PREFIX=scope.prefix,
        FSC_NAMESPACE=scope.namespace,
        FSC_SLOT_NAMESPACE=scope.slot_ns or "",
        FSC_QUEUE=scope.queue_id,
        FSC_SLOT=slot,
        FSC_MINUTE=str(minute),
    )
    if read:
        env["FSC_REDIS_URL"] = REDIS_URL
    else:
        env.pop("FSC_REDIS_URL", None)
    out = subprocess.run(
        [cargo, "test", "-q", "-p", "funcscale-protocol", "--test", "celery_contract", "--", "--ignored", "--nocapture"],
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    for line in out.stdout.splitlines():
        if line.startswith("CONTRACT "):
            return json.loads(line[len("CONTRACT "):])
    raise AssertionError("the Rust contract test printed nothing:\n%s\n%s" % (out.stdout[-3000:], out.stderr[-3000:]))
