"""Fixtures: the real Redis at 127.0.0.1:6379 (never flushed: every test has its own key prefix,
namespace, Celery queue and kombu key prefix, and deletes its keys), real Celery workers and
beats started as subprocesses from ``tests/app.py``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import redis

import funcscale_celery

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
REDIS_URL = os.environ.get("FUNCSCALE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def wait_for(cond, timeout=20.0, every=0.05, what="condition"):
    """Poll ``cond`` until it returns something truthy (and return it), else fail."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(every)


@pytest.fixture(scope="session")
def r():
    c = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        c.ping()
    except redis.ConnectionError:
        pytest.fail("Redis at %s (make redis)" % REDIS_URL)
    return c


class Scope:
    """One test's names: funcscale prefix and namespace, Celery queue, kombu key prefix."""

    def __init__(self, r):
        tag = uuid.uuid4().hex[:10]
        self.r = r
        self.tag = tag
        self.prefix = "fsct-%s" % tag
        self.namespace = "ns-%s" % tag
        self.celery_queue = "cq-%s" % tag
        self.kombu_prefix = "fsck-%s:" % tag
        self.queue_name = "jobs"
        self.queue_id = "{%s.%s}" % (self.namespace, self.queue_name)
        #: what FUNCSCALE_CELERY_QUEUES maps the Celery queue to
        self.mapped = "%s.%s" % (self.namespace, self.queue_name)
        #: the namespace of the worker slots' keys
        self.slot_ns = self.namespace
        self.side = "fsct-side-%s" % tag  # tasks record their side effects under this prefix
        self.pod = "pod-%s" % tag

    def bare(self):
        """The queue by its bare id (a FuncQueue the operator keys by name: foreign format or
        legacyKeys): worker slots in the unscoped registry."""
        self.queue_id = self.mapped = self.queue_name
        self.slot_ns = None
        return self

    def env(self, **extra):
        e = dict(os.environ)
        for k in list(e):
            if k.startswith("FUNCSCALE_"):
                del e[k]
        e.update(
            FUNCSCALE_REDIS_URL=REDIS_URL,
            FUNCSCALE_PREFIX=self.prefix,
            FUNCSCALE_POD_NAME=self.pod,
            FUNCSCALE_POD_NAMESPACE=self.namespace,
            FUNCSCALE_CELERY_QUEUES='{"%s": "%s"}' % (self.celery_queue, self.mapped),
            FSCT_BROKER=REDIS_URL,
            FSCT_KOMBU_PREFIX=self.kombu_prefix,
            FSCT_QUEUE=self.celery_queue,
            FSCT_SIDE=self.side,
            PYTHONPATH=str(HERE) + os.pathsep + e.get("PYTHONPATH", ""),
            PYTHONUNBUFFERED="1",
        )
        e.update({k: str(v) for k, v in extra.items()})
        return e

    def cleanup(self):
        # what the test process's own recorders still hold (a test that failed early) first,
        # so nothing is written after the keys are gone
        for app in getattr(self, "apps", []):
            rec = funcscale_celery.installed(app)
            if rec is not None:
                rec.flush()
        for pat in (self.prefix + ":*", self.kombu_prefix + "*", self.side + "*"):
            for k in self.r.scan_iter(match=pat, count=1000):
                self.r.delete(k)


@pytest.fixture
def scope(r):
    s = Scope(r)
    yield s
    s.cleanup()


class Procs:
    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []

    def start(self, args, env, name):
        log = open(os.path.join(self.tmp, name + ".log"), "wb")
        p = subprocess.Popen(
            args, env=env, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        p.log_path = log.name
        p.name = name
        self.procs.append(p)
        return p

    def log(self, p):
        with open(p.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, p, sig=signal.SIGTERM, timeout=20):
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)

    def stop_all(self):
        for p in self.procs:
            self.stop(p)


@pytest.fixture
def procs(tmp_path):
    ps = Procs(str(tmp_path))
    yield ps
    ps.stop_all()


def celery_bin():
    return os.path.join(os.path.dirname(sys.executable), "celery")


def start_worker(procs, scope, concurrency=2, pool="prefork", name="worker", env_extra=None):
    p = procs.start(
        [
            celery_bin(), "-A", "app", "worker", "-Q", scope.celery_queue, "-c", str(concurrency),
            "-P", pool, "-n", "%s-%s@%%h" % (name, scope.tag), "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-l", "info",
        ],
        scope.env(**(env_extra or {})),
        name,
    )
    wait_for(lambda: "ready." in procs.log(p) or p.poll() is not None, 60, 0.1, "the worker to be ready")
    assert p.poll() is None, procs.log(p)
    return p


@pytest.fixture
def own_redis():
    """A Redis server of our own on a free port (killed after): for an outage or a password."""
    servers = []

    def make(*extra, port=None):
        if port is None:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
        d = tempfile.mkdtemp(prefix="fsct-redis-")
        p = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d, *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        servers.append((p, d))
        c = redis.Redis(port=port, decode_responses=True, password=None)

        def up():
            try:
                return c.ping()
            except redis.AuthenticationError:
                return True
            except redis.ConnectionError:
                return False

        wait_for(up, 10, 0.05, "redis-server on port %d" % port)
        return port, p

    yield make
    for p, d in servers:
        if p.poll() is None:
            p.kill()
            p.wait(5)
        shutil.rmtree(d, ignore_errors=True)
