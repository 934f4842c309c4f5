"""Missing or bad configuration fails install() with a message naming the variable; arguments
override the environment; a username and password given apart replace the URL's."""

import pytest
from celery import Celery

import funcscale_celery
from funcscale_celery import ConfigError, config

GOOD = {
    "FUNCSCALE_REDIS_URL": "redis://127.0.0.1:6379/0",
    "FUNCSCALE_CELERY_QUEUES": '{"celery": "team-a.jobs"}',
    "FUNCSCALE_POD_NAMESPACE": "team-a",
}


def load(**env):
    e = dict(GOOD)
    e.update(env)
    return config.load(env={k: v for k, v in e.items() if v is not None})


def test_a_good_environment():
    c = load(FUNCSCALE_POD_NAME="w-1", FUNCSCALE_PREFIX="fs2")
    assert c.queues == {"celery": "{team-a.jobs}"}
    assert (c.namespace, c.pod, c.prefix) == ("team-a", "w-1", "fs2")
    assert c.keys.stats("{team-a.jobs}") == "fs2:stats:{team-a.jobs}"
    # the namespace may come from the queues alone; ids may be given with their braces
    c = load(FUNCSCALE_POD_NAMESPACE=None, FUNCSCALE_CELERY_QUEUES='{"a": "{b.c}"}')
    assert (c.namespace, c.beat_namespace, c.queues) == ("b", "b", {"a": "{b.c}"})
    # a bare id (the operator keys a FuncQueue of format Celery by its name): the slots' keys
    # have no namespace, as the Rust worker's and the operator's scale-down scope them; the
    # beat lease is the pod's namespace's
    c = load(FUNCSCALE_CELERY_QUEUES='{"celery": "celery", "hi": "high-priority"}')
    assert c.queues == {"celery": "celery", "hi": "high-priority"}
    assert (c.namespace, c.beat_namespace) == (None, "team-a")
    assert c.keys.workers() == "funcscale:workers"


def test_an_empty_queue_map_is_valid():
    # a Celery beat pool that names no queue gets `{}` from the operator: it must start
    c = load(FUNCSCALE_CELERY_QUEUES="{}")
    assert c.queues == {}
    assert c.beat_namespace == "team-a"


@pytest.mark.parametrize(
    "env, names",
    [
        ({"FUNCSCALE_REDIS_URL": None}, "FUNCSCALE_REDIS_URL is not set"),
        ({"FUNCSCALE_REDIS_URL": "  "}, "FUNCSCALE_REDIS_URL is not set"),
        ({"FUNCSCALE_REDIS_URL": "http://x:1"}, "FUNCSCALE_REDIS_URL is not a Redis URL"),
        ({"FUNCSCALE_CELERY_QUEUES": None}, "FUNCSCALE_CELERY_QUEUES is not set"),
        ({"FUNCSCALE_CELERY_QUEUES": "{nope"}, "FUNCSCALE_CELERY_QUEUES is not JSON"),
        ({"FUNCSCALE_CELERY_QUEUES": '["celery"]'}, "FUNCSCALE_CELERY_QUEUES must be a JSON object"),
        ({"FUNCSCALE_CELERY_QUEUES": '{"celery": "{jobs}"}'}, "FUNCSCALE_CELERY_QUEUES: the funcscale queue of 'celery' is '{jobs}'"),
        ({"FUNCSCALE_CELERY_QUEUES": '{"celery": "Team_A.jobs"}'}, "FUNCSCALE_CELERY_QUEUES: the funcscale queue of 'celery' is 'Team_A.jobs'"),
        ({"FUNCSCALE_CELERY_QUEUES": '{"celery": "a b"}'}, "FUNCSCALE_CELERY_QUEUES: the funcscale queue of 'celery' is 'a b'"),
        ({"FUNCSCALE_CELERY_QUEUES": '{"celery": 3}'}, "FUNCSCALE_CELERY_QUEUES: the funcscale queue of 'celery' must be a string"),
        ({"FUNCSCALE_CELERY_QUEUES": '{"a": "x.j", "b": "y.j"}', "FUNCSCALE_POD_NAMESPACE": None}, "several namespaces"),
        ({"FUNCSCALE_POD_NAMESPACE": "team-b"}, "FUNCSCALE_CELERY_QUEUES maps queues of namespace 'team-a', but FUNCSCALE_POD_NAMESPACE is 'team-b'"),
        ({"FUNCSCALE_POD_NAMESPACE": "Team_B"}, "FUNCSCALE_POD_NAMESPACE is 'Team_B'"),
        ({"FUNCSCALE_PREFIX": "fs:"}, "FUNCSCALE_PREFIX is 'fs:'"),
    ],
)
def test_bad_environment_names_the_variable(env, names):
    with pytest.raises(ConfigError) as e:
        load(**env)
    assert names in str(e.value)


def test_install_raises_at_install_time(monkeypatch):
    for k in list(GOOD) + ["FUNCSCALE_PREFIX"]:
        monkeypatch.delenv(k, raising=False)
    app = Celery("fsct-cfg", set_as_current=False)
    with pytest.raises(ConfigError, match="FUNCSCALE_REDIS_URL is not set"):
        funcscale_celery.install(app)
    monkeypatch.setenv("FUNCSCALE_REDIS_URL", "redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match="FUNCSCALE_CELERY_QUEUES is not set"):
        funcscale_celery.install(app)
    assert funcscale_celery.installed(app) is None, "a failed install installs nothing"
    # arguments override the environment
    monkeypatch.setenv("FUNCSCALE_CELERY_QUEUES", '{"celery": "env-ns.jobs"}')
    monkeypatch.setenv("FUNCSCALE_PREFIX", "from-env")
    rec = funcscale_celery.install(app, queues={"q1": "arg-ns.jobs"}, prefix="from-arg")
    assert rec.config.queues == {"q1": "{arg-ns.jobs}"}
    assert rec.config.prefix == "from-arg"
    assert funcscale_celery.install(app) is rec, "installing twice is one install"
    # the bad argument is named as the argument
    with pytest.raises(ConfigError, match="queues: the funcscale queue of 'q' is 'x:y'"):
        funcscale_celery.install(Celery("fsct-cfg2", set_as_current=False), queues={"q": "x:y"})


def test_guarded_scheduler_needs_a_namespace(monkeypatch):
    for k in list(GOOD):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("FUNCSCALE_REDIS_URL", "redis://127.0.0.1:6379/0")
    app = Celery("fsct-beat-cfg", set_as_current=False)
    with pytest.raises(ConfigError, match="FUNCSCALE_POD_NAMESPACE is not set"):
        funcscale_celery.GuardedScheduler(app, lazy=True)


def test_username_and_password_replace_the_urls(own_redis):
    port, _ = own_redis("--requirepass", "s3cret")
    url = "redis://nobody:wrong@127.0.0.1:%d/0" % port
    c = config.load(
        env={
            "FUNCSCALE_REDIS_URL": url,
            "FUNCSCALE_REDIS_PASSWORD": "s3cret\n",  # a Secret file's trailing newline
            "FUNCSCALE_REDIS_USERNAME": "default",
            "FUNCSCALE_CELERY_QUEUES": '{"celery": "a.b"}',
        }
    )
    assert c.client().ping()
    assert "wrong" not in c.redacted_url() and "s3cret" not in repr(c)
    # without them, the URL's wrong password is used and refused
    import redis

    with pytest.raises(redis.AuthenticationError):
        config.load(env={"FUNCSCALE_REDIS_URL": url, "FUNCSCALE_CELERY_QUEUES": '{"celery": "a.b"}'}).client().ping()


def test_a_sentinel_url_is_read_as_the_rust_crate_reads_it():
    s = config.parse_sentinel_url("redis+sentinel://app:p%40ss@s1:26380,S2,[::1]:5000/mymaster/3")
    assert s.sentinels == (("s1", 26380), ("S2", 26379), ("::1", 5000))
    assert (s.master, s.db, s.username, s.password, s.tls) == ("mymaster", 3, "app", "p@ss", False)
    assert config.parse_sentinel_url("rediss+sentinel://s1/m").tls
    assert config.parse_sentinel_url("rediss+sentinel://s1/m#insecure").insecure
    assert config.parse_sentinel_url("redis+sentinel://s1/m/").db == 0
    assert config.parse_sentinel_url("redis://h:1/0") is None
    c = load(
        FUNCSCALE_REDIS_URL="redis+sentinel://s1/m",
        FUNCSCALE_REDIS_SENTINEL_PASSWORD="spw\n",
        FUNCSCALE_REDIS_PASSWORD="pw",
    )
    assert (c.sentinel_password, c.password) == ("spw", "pw")
    # the same URLs the Rust crate refuses (protocol/src/connection.rs)
    for bad in ["redis+sentinel://s1", "redis+sentinel://s1/", "redis+sentinel://s1,,s2/m",
                "redis+sentinel://s1/m/x", "redis+sentinel://s1/m/0/x",
                "redis+sentinel://s1/m/0?protocol=resp3", "redis+sentinel://s1:/m",
                "redis+sentinel://::1:26379/m"]:
        with pytest.raises(ConfigError, match="FUNCSCALE_REDIS_URL"):
            load(FUNCSCALE_REDIS_URL=bad)
