"""Configuration: the environment the funcscale operator gives pods, or install()'s arguments."""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

import redis

from .keys import DEFAULT_PREFIX, Keys, queue_id_namespace

ENV_REDIS_URL = "FUNCSCALE_REDIS_URL"
ENV_REDIS_USERNAME = "FUNCSCALE_REDIS_USERNAME"
ENV_REDIS_PASSWORD = "FUNCSCALE_REDIS_PASSWORD"
ENV_REDIS_SENTINEL_USERNAME = "FUNCSCALE_REDIS_SENTINEL_USERNAME"
ENV_REDIS_SENTINEL_PASSWORD = "FUNCSCALE_REDIS_SENTINEL_PASSWORD"
SENTINEL_PORT = 26379
ENV_PREFIX = "FUNCSCALE_PREFIX"
ENV_POD_NAME = "FUNCSCALE_POD_NAME"
ENV_POD_NAMESPACE = "FUNCSCALE_POD_NAMESPACE"
ENV_QUEUES = "FUNCSCALE_CELERY_QUEUES"

# a Kubernetes namespace: a DNS label
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_QUEUE_NAME = re.compile(r"^[^{}:\s]+$")


class ConfigError(ValueError):
    """Missing or invalid configuration; the message names the variable (or argument)."""


@dataclass(frozen=True)
class SentinelUrl:
    """A ``redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/<master>[/db]`` URL
    (``rediss+sentinel://`` for TLS), read as the Rust crate's ``connection::target`` reads it:
    the hosts are sentinels (port 26379 when not given); the credentials and the database are
    the data nodes'."""

    sentinels: tuple
    master: str
    db: int = 0
    username: Optional[str] = field(default=None, repr=False)
    password: Optional[str] = field(default=None, repr=False)
    tls: bool = False
    #: ``#insecure`` at the end of the URL: no certificate check (as the Rust crate reads it).
    insecure: bool = False


def parse_sentinel_url(url: str) -> Optional[SentinelUrl]:
    """The sentinel URL ``url`` is, ``None`` for any other URL; ``ValueError`` when it is a
    sentinel URL that does not parse."""
    from urllib.parse import unquote

    for scheme, tls in (("redis+sentinel://", False), ("rediss+sentinel://", True)):
        if url.startswith(scheme):
            rest, _, fragment = url[len(scheme):].partition("#")
            break
    else:
        return None
    if "?" in rest:
        raise ValueError("a redis+sentinel:// URL takes no query parameters")
    userinfo, at, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    parts = path.split("/") if path else []
    if len(parts) == 2 and not parts[1]:
        parts = parts[:1]  # a trailing slash: no database given
    if not parts or not parts[0]:
        raise ValueError("no master name: the path of a redis+sentinel:// URL is /<master>[/db]")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("the path of a redis+sentinel:// URL is /<master>[/db]")
    sentinels = []
    for host in hosts.split(","):
        if not host:
            raise ValueError("an empty sentinel address")
        if host.startswith("["):
            name, _, after = host[1:].partition("]")
            if after and not after.startswith(":"):
                raise ValueError("a sentinel address is host[:port]")
            has_port, port = bool(after), after[1:]
        elif host.count(":") > 1:
            raise ValueError("an IPv6 sentinel address goes in brackets: [::1]:26379")
        else:
            name, colon, port = host.partition(":")
            has_port = bool(colon)
        if has_port and not port:
            raise ValueError("a sentinel address with an empty port")
        if not name or (port and not port.isdigit()):
            raise ValueError("a sentinel address is host[:port]")
        sentinels.append((name, int(port) if port else SENTINEL_PORT))
    user, _, pw = userinfo.partition(":") if at else ("", "", "")
    return SentinelUrl(
        sentinels=tuple(sentinels),
        master=parts[0],
        db=int(parts[1]) if len(parts) == 2 and parts[1] else 0,
        username=unquote(user) or None,
        password=unquote(pw) or None,
        tls=tls,
        insecure=fragment == "insecure",
    )


def _given(v: Optional[str]) -> Optional[str]:
    """A credential given apart from the URL: set and not empty, a trailing newline dropped
    (as ``connection::given`` of the Rust crate)."""
    if v is None:
        return None
    v = v[:-1] if v.endswith("\n") else v
    v = v[:-1] if v.endswith("\r") else v
    return v or None


def _parse_queues(raw: Any, source: str) -> Dict[str, str]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as e:
            raise ConfigError(
                "%s is not JSON (%s): expected an object mapping a Celery queue name to a "
                'funcscale queue id, e.g. {"celery": "default.jobs"}' % (source, e)
            ) from None
    if not isinstance(raw, Mapping):
        raise ConfigError(
            "%s must be a JSON object mapping a Celery queue name to a funcscale queue id "
            '"<namespace>.<FuncQueue name>", got %s' % (source, type(raw).__name__)
        )
    # an empty object is valid: a process that maps no queue (e.g. a Celery beat whose pool
    # names none) reports nothing per queue but still sets the enqueue-time header and can
    # guard the beat
    out: Dict[str, str] = {}
    for celery_queue, target in raw.items():
        if not isinstance(celery_queue, str) or not celery_queue:
            raise ConfigError("%s: a Celery queue name must be a non-empty string" % source)
        if not isinstance(target, str):
            raise ConfigError(
                "%s: the funcscale queue of %r must be a string "
                '"<namespace>.<FuncQueue name>", got %r' % (source, celery_queue, target)
            )
        braced = target.startswith("{") and target.endswith("}")
        inner = target[1:-1] if braced else target
        ns, dot, name = inner.partition(".")
        if dot and _DNS_LABEL.match(ns) and _QUEUE_NAME.match(name):
            # a FuncQueue's id, `{<namespace>.<name>}` (given with or without the braces)
            out[celery_queue] = "{%s.%s}" % (ns, name)
        elif not braced and not dot and _QUEUE_NAME.match(target):
            # a bare id: a queue keyed by its name alone (the operator's id of a FuncQueue of
            # a foreign format or with legacyKeys)
            out[celery_queue] = target
        else:
            raise ConfigError(
                "%s: the funcscale queue of %r is %r; expected its queue id: "
                '"<namespace>.<FuncQueue name>" (e.g. "default.jobs"), or a bare FuncQueue name'
                % (source, celery_queue, target)
            )
    return out


@dataclass(frozen=True)
class Config:
    """What the integration writes to and for whom."""

    redis_url: str
    #: Celery queue (Redis list) name -> funcscale queue id ``{<namespace>.<name>}``.
    queues: Dict[str, str]
    prefix: str = DEFAULT_PREFIX
    username: Optional[str] = field(default=None, repr=False)
    password: Optional[str] = field(default=None, repr=False)
    sentinel_username: Optional[str] = field(default=None, repr=False)
    sentinel_password: Optional[str] = field(default=None, repr=False)
    pod: str = ""
    #: The namespace of the worker slots' keys (registry, in-flight lists): the one the queue
    #: ids name, as the Rust worker and the operator's scale-down scope them; ``None`` when the
    #: ids are bare (the keys of earlier versions).
    namespace: Optional[str] = None
    #: The namespace whose beat lease the beat guard takes: ``FUNCSCALE_POD_NAMESPACE``, else the
    #: one the queue ids name.
    beat_namespace: Optional[str] = None

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix, self.namespace)

    def redacted_url(self) -> str:
        scheme, sep, rest = self.redis_url.partition("://")
        if not sep or "@" not in rest:
            return self.redis_url
        user, _, host = rest.rpartition("@")
        return "%s://%s:***@%s" % (scheme, user.split(":")[0], host)

    def client(self, socket_timeout: float = 2.0) -> "redis.Redis":
        """A client of the funcscale Redis: the URL, with the username and password given
        apart replacing the URL's; short timeouts, so that a Redis that is down costs a task
        little time. For a ``redis+sentinel://`` URL, a client of the master the sentinels
        name, found again after a failover (redis-py's ``Sentinel.master_for``)."""
        sentinel = parse_sentinel_url(self.redis_url)
        if sentinel is not None:
            from redis.sentinel import Sentinel

            node = dict(
                db=sentinel.db,
                username=self.username if self.username is not None else sentinel.username,
                password=self.password if self.password is not None else sentinel.password,
                socket_connect_timeout=min(socket_timeout, 1.0),
                socket_timeout=socket_timeout,
                decode_responses=True,
            )
            sentinel_kwargs = dict(
                username=self.sentinel_username,
                password=self.sentinel_password,
                socket_connect_timeout=min(socket_timeout, 1.0),
                socket_timeout=socket_timeout,
            )
            if sentinel.tls:
                node["ssl"] = True
                sentinel_kwargs["ssl"] = True
                if sentinel.insecure:
                    node["ssl_cert_reqs"] = "none"
                    sentinel_kwargs["ssl_cert_reqs"] = "none"
            return Sentinel(
                list(sentinel.sentinels), sentinel_kwargs=sentinel_kwargs, **node
            ).master_for(sentinel.master)
        opts = redis.connection.parse_url(self.redis_url)
        if self.username is not None:
            opts["username"] = self.username
        if self.password is not None:
            opts["password"] = self.password
        opts.setdefault("socket_connect_timeout", min(socket_timeout, 1.0))
        opts.setdefault("socket_timeout", socket_timeout)
        opts["decode_responses"] = True
        return redis.Redis(connection_pool=redis.ConnectionPool(**opts))


def load(
    queues: Optional[Any] = None,
    redis_url: Optional[str] = None,
    prefix: Optional[str] = None,
    username: Optional[str] = None,
    password: Optional[str] = None,
    pod: Optional[str] = None,
    namespace: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    need_queues: bool = True,
) -> Config:
    """The configuration from the arguments, else the environment. Raises :class:`ConfigError`
    naming the variable (or argument) that is missing or invalid."""
    env = os.environ if env is None else env
    url_source = "redis_url" if redis_url is not None else ENV_REDIS_URL
    url = redis_url if redis_url is not None else env.get(ENV_REDIS_URL, "")
    url = url.strip()
    if not url:
        raise ConfigError(
            "%s is not set: the URL of funcscale's Redis (redis://host:6379/0; "
            "rediss:// for TLS; redis+sentinel://sentinel:26379/<master>/0 for a Sentinel set)"
            % ENV_REDIS_URL
        )
    try:
        if parse_sentinel_url(url) is None:
            redis.connection.parse_url(url)
    except ValueError as e:
        raise ConfigError("%s is not a Redis URL: %s" % (url_source, e)) from None

    p_source = "prefix" if prefix is not None else ENV_PREFIX
    p = prefix if prefix is not None else (env.get(ENV_PREFIX) or DEFAULT_PREFIX)
    if not p or p.endswith(":") or any(c.isspace() for c in p):
        raise ConfigError(
            "%s is %r: a key prefix is not empty, has no spaces and no trailing colon"
            % (p_source, p)
        )

    ns_given = namespace if namespace is not None else (env.get(ENV_POD_NAMESPACE) or None)
    ns_source = "namespace" if namespace is not None else ENV_POD_NAMESPACE
    if ns_given is not None and not _DNS_LABEL.match(ns_given):
        raise ConfigError("%s is %r: not a Kubernetes namespace name" % (ns_source, ns_given))

    q_source = "queues" if queues is not None else ENV_QUEUES
    raw_queues = queues if queues is not None else env.get(ENV_QUEUES)
    mapped: Dict[str, str] = {}
    if raw_queues is None or (isinstance(raw_queues, str) and not raw_queues.strip()):
        if need_queues:
            raise ConfigError(
                "%s is not set: a JSON object mapping each Celery queue name to its "
                'funcscale queue "<namespace>.<FuncQueue name>", e.g. {"celery": "default.jobs"}'
                % ENV_QUEUES
            )
    else:
        mapped = _parse_queues(raw_queues, q_source)
    spaces = sorted({n for n in (queue_id_namespace(q) for q in mapped.values()) if n})
    if len(spaces) > 1:
        raise ConfigError(
            "%s maps queues of several namespaces (%s): one process serves the queues of "
            "one namespace" % (q_source, ", ".join(spaces))
        )
    scope = spaces[0] if spaces else None
    if ns_given and scope and scope != ns_given:
        raise ConfigError(
            "%s maps queues of namespace %r, but %s is %r"
            % (q_source, scope, ns_source, ns_given)
        )
    pod_name = pod if pod is not None else (env.get(ENV_POD_NAME) or socket.gethostname())
    if not pod_name or ":" in pod_name or any(c.isspace() for c in pod_name):
        raise ConfigError("%s is %r: not a pod name" % (ENV_POD_NAME, pod_name))
    return Config(
        redis_url=url,
        queues=mapped,
        prefix=p,
        username=_given(username if username is not None else env.get(ENV_REDIS_USERNAME)),
        password=_given(password if password is not None else env.get(ENV_REDIS_PASSWORD)),
        sentinel_username=_given(env.get(ENV_REDIS_SENTINEL_USERNAME)),
        sentinel_password=_given(env.get(ENV_REDIS_SENTINEL_PASSWORD)),
        pod=pod_name,
        namespace=scope,
        beat_namespace=ns_given or scope,
    )
