//! A Redis that wants a password (`requirepass`) and one with ACL users, each a private
//! `redis-server` this file starts: the real `funcscale-worker` binary (worker, beat, producer
//! and query CLI), the operator's poller and the real `kubectl-funcscale` log in with the
//! username and password given apart from the URL, and say which setting to fix when Redis
//! refuses them. Needs the binaries built (`cargo build --workspace --bins`).

use std::process::{Output, Stdio};
use std::time::Duration;

use funcscale_e2e::TestCluster;
use funcscale_e2e::scenario::{PrivateRedis, bin, output_text, worker_command, worker_output};
use funcscale_operator::crd::FuncQueue;
use funcscale_operator::redis_metrics::{
    MetricsCache, Poller, PollerConfig, QueueId, QueueTarget, Reading, RedisEndpoint, Registry,
    UnavailableReason,
};
use funcscale_protocol::Keys;
use funcscale_protocol::connection::connection_info;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;

/// A password with the characters a URL would need escaped: it only ever travels apart.
const PW: &str = "s3cr3t:p@ss/w#rd";
const TIMEOUT: Duration = Duration::from_secs(30);

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("auth-{name}-{}-{:x}", std::process::id(), nanos % 0xfffff)
}

/// A connection as `user` (None: the `default` user) with `password`.
async fn admin(
    srv: &PrivateRedis,
    user: Option<&str>,
    password: &str,
) -> redis::aio::MultiplexedConnection {
    let info = connection_info(&srv.url(), user, Some(password)).unwrap();
    redis::Client::open(info)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn worker_cmd(env: &[(&str, &str)], args: &[&str]) -> tokio::process::Command {
    worker_command(env, args)
}

async fn worker_out(env: &[(&str, &str)], args: &[&str]) -> Output {
    worker_output(env, args, TIMEOUT).await
}

/// A long-running `funcscale-worker` (run, beat), stopped with SIGTERM.
struct Running(tokio::process::Child);

impl Running {
    fn start(env: &[(&str, &str)], args: &[&str]) -> Self {
        Self(
            worker_cmd(env, args)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    }

    /// SIGTERM, and its exit status.
    async fn stop(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.0.id().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        tokio::time::timeout(TIMEOUT, self.0.wait())
            .await
            .expect("stops on SIGTERM")
            .unwrap()
    }
}

async fn scard(con: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("SCARD").arg(key).query_async(con).await.unwrap()
}

async fn wait_for_members(con: &redis::aio::MultiplexedConnection, key: &str, n: u64) {
    funcscale_e2e::eventually(TIMEOUT, &format!("{n} members in {key}"), || {
        let mut con = con.clone();
        let key = key.to_string();
        async move { (scard(&mut con, &key).await >= n).then_some(()) }
    })
    .await
    .unwrap();
}

fn text(o: &Output) -> String {
    output_text(o)
}

/// `requirepass`: the producer CLI, a worker and the beat get the password only through
/// FUNCSCALE_REDIS_PASSWORD (as the operator's pods do), the tasks run (their side effects are
/// counted), and the query CLI reads their records. A missing or wrong password stops each
/// program at once with a message naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirepass_worker_beat_and_cli_take_the_password_from_the_environment() {
    let srv = PrivateRedis::start_with(&["--requirepass", PW])
        .await
        .unwrap();
    let url = srv.url();
    let prefix = unique("pw");
    let done = format!("{prefix}-done");
    let ticked = format!("{prefix}-ticked");
    let env = [
        ("FUNCSCALE_REDIS_URL", url.as_str()),
        ("FUNCSCALE_REDIS_PASSWORD", PW),
        ("FUNCSCALE_PREFIX", prefix.as_str()),
    ];
    let mut con = admin(&srv, None, PW).await;

    // producer CLI: 20 tasks, and a schedule firing every second for the beat
    let args = json!([done]).to_string();
    let out = worker_out(
        &env,
        &[
            "enqueue", "--queue", "jobs", "--func", "record", "--args", &args, "--count", "20",
            "--id", "t",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let tick_args = json!([ticked]).to_string();
    let out = worker_out(
        &env,
        &[
            "schedules",
            "add",
            "--queue",
            "ticks",
            "--id",
            "tick",
            "--cron",
            "* * * * * *",
            "--func",
            "record",
            "--args",
            &tick_args,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));

    let worker = Running::start(
        &env,
        &[
            "run",
            "--queues",
            "jobs,ticks",
            "--processes",
            "4",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let beat = Running::start(&env, &["beat", "--metrics-addr", "127.0.0.1:0"]);
    wait_for_members(&con, &done, 20).await;
    wait_for_members(&con, &ticked, 2).await;
    assert!(beat.stop().await.success());
    assert!(worker.stop().await.success());
    assert_eq!(scard(&mut con, &done).await, 20, "every task ran once");

    // the query CLI reads the records the worker wrote
    let out = worker_out(
        &env,
        &[
            "tasks", "list", "--queue", "jobs", "--json", "--limit", "100",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 20);

    // the password from the environment replaces a stale one in the URL
    let stale = url.replace("redis://", "redis://:stale@");
    let out = worker_out(
        &[
            ("FUNCSCALE_REDIS_URL", stale.as_str()),
            ("FUNCSCALE_REDIS_PASSWORD", PW),
            ("FUNCSCALE_PREFIX", prefix.as_str()),
        ],
        &["dead-letters", "list", "--queue", "jobs"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));

    // no password: NOAUTH, named; wrong password: WRONGPASS, named, the password not echoed
    let node = format!("127.0.0.1:{}", srv.port);
    let no_pw = [
        ("FUNCSCALE_REDIS_URL", url.as_str()),
        ("FUNCSCALE_PREFIX", prefix.as_str()),
    ];
    let wrong = [
        ("FUNCSCALE_REDIS_URL", url.as_str()),
        ("FUNCSCALE_REDIS_PASSWORD", "not-the-pw"),
        ("FUNCSCALE_PREFIX", prefix.as_str()),
    ];
    let run = ["run", "--queues", "jobs", "--metrics-addr", "127.0.0.1:0"];
    let beat = ["beat", "--metrics-addr", "127.0.0.1:0"];
    let enqueue = ["enqueue", "--queue", "jobs", "--func", "noop"];
    for (env, said) in [(&no_pw[..], "NOAUTH"), (&wrong[..], "WRONGPASS")] {
        for args in [&run[..], &beat[..], &enqueue[..]] {
            let out = worker_out(env, args).await;
            let t = text(&out);
            assert!(!out.status.success(), "{t}");
            assert!(t.contains(said), "{t}");
            assert!(t.contains(&node), "names the node: {t}");
            assert!(
                t.contains("FUNCSCALE_REDIS_PASSWORD"),
                "names the setting: {t}"
            );
            assert!(!t.contains("not-the-pw"), "the password is not echoed: {t}");
        }
    }
    assert_eq!(
        redis::cmd("LLEN")
            .arg(Keys::new(prefix.as_str()).queue("jobs"))
            .query_async::<u64>(&mut con)
            .await
            .unwrap(),
        0,
        "nothing was enqueued without the password"
    );
}

/// ACL users: the username in the URL or in FUNCSCALE_REDIS_USERNAME with the password from
/// FUNCSCALE_REDIS_PASSWORD; the operator's poller reads the queue as that user, and reports
/// a refused login or missing rights as `RedisAuthFailed` naming the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_users_for_the_worker_cli_and_the_operators_poller() {
    let srv = PrivateRedis::start().await.unwrap();
    let url = srv.url();
    let prefix = unique("acl");
    {
        let mut con = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for rule in [
            vec!["app", "on", ">app-pw", "~*", "&*", "+@all"],
            vec!["outsider", "on", ">out-pw", "~elsewhere:*", "+@all"],
            vec!["default", "off"],
        ] {
            let _: () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg(rule)
                .query_async(&mut con)
                .await
                .unwrap();
        }
    }
    let mut con = admin(&srv, Some("app"), "app-pw").await;
    let user_url = url.replace("redis://", "redis://app@");
    let done = format!("{prefix}-done");
    let args = json!([done]).to_string();

    // producer: username from FUNCSCALE_REDIS_USERNAME
    let by_env = [
        ("FUNCSCALE_REDIS_URL", url.as_str()),
        ("FUNCSCALE_REDIS_USERNAME", "app"),
        ("FUNCSCALE_REDIS_PASSWORD", "app-pw"),
        ("FUNCSCALE_PREFIX", prefix.as_str()),
    ];
    let out = worker_out(
        &by_env,
        &[
            "enqueue", "--queue", "jobs", "--func", "record", "--args", &args, "--count", "12",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));

    // the operator's poller sees the 12 waiting tasks as `app`
    let keys = Keys::new(prefix.as_str());
    let registry = Registry::default();
    let cache = MetricsCache::default();
    let q: FuncQueue = serde_json::from_value(json!({
        "metadata": {"name": "jobs", "namespace": "ns"}, "spec": {}
    }))
    .unwrap();
    let endpoints = [
        (
            "good",
            RedisEndpoint::with_credentials(&url, Some("app"), Some("app-pw")),
        ),
        ("in-url", RedisEndpoint::with_password(&user_url, "app-pw")),
        (
            "wrong",
            RedisEndpoint::with_credentials(&url, Some("app"), Some("nope-pw")),
        ),
        ("none", RedisEndpoint::new(url.clone())),
        (
            "outsider",
            RedisEndpoint::with_credentials(&url, Some("outsider"), Some("out-pw")),
        ),
    ];
    for (name, ep) in &endpoints {
        registry.upsert(
            QueueId::new(*name, "jobs"),
            QueueTarget::for_queue(&q, "jobs", ep.clone(), &keys, 60_000),
        );
    }
    Poller::new(registry, cache.clone(), PollerConfig::default())
        .poll_once(funcscale_worker::worker::now_ms())
        .await;
    let node = format!("127.0.0.1:{}", srv.port);
    for (name, _) in &endpoints {
        let reading = cache.get(&QueueId::new(*name, "jobs"));
        match (*name, reading) {
            ("good" | "in-url", Some(Reading::Ok(m))) => assert_eq!(m.depth, 12, "{name}"),
            ("wrong" | "none" | "outsider", Some(Reading::Unavailable { error, reason, .. })) => {
                assert_eq!(reason, UnavailableReason::AuthFailed, "{name}: {error}");
                assert!(error.contains(&node), "{name}: names the node: {error}");
                assert!(error.contains("passwordSecretRef"), "{name}: {error}");
                assert!(
                    !error.contains("nope-pw"),
                    "{name}: leaks the password: {error}"
                );
            }
            (name, other) => panic!("{name}: {other:?}"),
        }
    }

    // worker: username in the URL, password from the environment
    let in_url = [
        ("FUNCSCALE_REDIS_URL", user_url.as_str()),
        ("FUNCSCALE_REDIS_PASSWORD", "app-pw"),
        ("FUNCSCALE_PREFIX", prefix.as_str()),
    ];
    let worker = Running::start(
        &in_url,
        &["run", "--queues", "jobs", "--metrics-addr", "127.0.0.1:0"],
    );
    wait_for_members(&con, &done, 12).await;
    assert!(worker.stop().await.success());
    assert_eq!(scard(&mut con, &done).await, 12);

    // a disabled default user: NOAUTH without a username; a wrong one: WRONGPASS
    for (env, said) in [
        (
            vec![
                ("FUNCSCALE_REDIS_URL", url.as_str()),
                ("FUNCSCALE_REDIS_PASSWORD", "app-pw"),
            ],
            "WRONGPASS",
        ),
        (
            vec![
                ("FUNCSCALE_REDIS_URL", url.as_str()),
                ("FUNCSCALE_REDIS_USERNAME", "app"),
                ("FUNCSCALE_REDIS_PASSWORD", "nope-pw"),
            ],
            "WRONGPASS",
        ),
        (vec![("FUNCSCALE_REDIS_URL", url.as_str())], "NOAUTH"),
        // logged in, but no rights on the queue's keys: said at start, not in a loop of
        // failed fetches
        (
            vec![
                ("FUNCSCALE_REDIS_URL", url.as_str()),
                ("FUNCSCALE_REDIS_USERNAME", "outsider"),
                ("FUNCSCALE_REDIS_PASSWORD", "out-pw"),
                ("FUNCSCALE_PREFIX", prefix.as_str()),
            ],
            "NOPERM",
        ),
    ] {
        let out = worker_out(
            &env,
            &["run", "--queues", "jobs", "--metrics-addr", "127.0.0.1:0"],
        )
        .await;
        let t = text(&out);
        assert!(!out.status.success(), "{t}");
        assert!(
            t.contains(said) && t.contains("FUNCSCALE_REDIS_USERNAME"),
            "{t}"
        );
    }
}

/// The real plugin: a FuncQueue whose `spec.redis` is a URL plus `passwordSecretRef` is read
/// with the Secret's password; `--redis-url` with FUNCSCALE_REDIS_PASSWORD reads it directly;
/// a wrong password is an error naming the flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubectl_plugin_reads_a_password_protected_queue() {
    let srv = PrivateRedis::start_with(&["--requirepass", PW])
        .await
        .unwrap();
    let url = srv.url();
    let prefix = unique("plugin");
    let cluster = TestCluster::start().await.unwrap();
    cluster.install_crds().await.unwrap();
    let ns = prefix.clone();
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &ns);
    for (name, pw) in [
        ("redis-auth", format!("{PW}\n")),
        ("stale-auth", "old".into()),
    ] {
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": name}, "stringData": {"password": pw}
                }))
                .unwrap(),
            )
            .await
            .unwrap();
    }
    let queues: Api<FuncQueue> = Api::namespaced(cluster.client.clone(), &ns);
    for (name, secret) in [("q", "redis-auth"), ("stale", "stale-auth")] {
        queues
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "spec": {"redis": {"url": url,
                        "passwordSecretRef": {"name": secret, "key": "password"}}}
                }))
                .unwrap(),
            )
            .await
            .unwrap();
    }
    let env = [
        ("FUNCSCALE_REDIS_URL", url.as_str()),
        ("FUNCSCALE_REDIS_PASSWORD", PW),
        ("FUNCSCALE_PREFIX", prefix.as_str()),
    ];
    let out = worker_out(
        &env,
        &[
            "enqueue",
            "--queue",
            "q",
            "--func",
            "fail",
            "--max-retries",
            "0",
            "--id",
            "bad-1",
            // the FuncQueue's namespace: its tasks go to the queue's namespaced id
            "--namespace",
            &ns,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let worker = Running::start(
        &env,
        &[
            "run",
            "--queues",
            "q",
            "--namespace",
            &ns,
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let mut con = admin(&srv, None, PW).await;
    let dead = Keys::new(prefix.as_str()).dead(&Keys::queue_id(&ns, "q"));
    funcscale_e2e::eventually(TIMEOUT, "the task dead-lettered", || {
        let mut con = con.clone();
        let dead = dead.clone();
        async move {
            let n: u64 = redis::cmd("LLEN")
                .arg(&dead)
                .query_async(&mut con)
                .await
                .ok()?;
            (n == 1).then_some(())
        }
    })
    .await
    .unwrap();
    assert!(worker.stop().await.success());
    let _: u64 = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();

    let plugin = |args: Vec<String>, env: Vec<(&'static str, String)>| {
        let kubeconfig = cluster.kubeconfig.clone();
        let prefix = prefix.clone();
        let ns = ns.clone();
        async move {
            let mut c = tokio::process::Command::new(bin("kubectl-funcscale").unwrap());
            for (k, _) in std::env::vars() {
                if k.starts_with("FUNCSCALE_") && !k.starts_with("FUNCSCALE_E2E") {
                    c.env_remove(k);
                }
            }
            let out = c
                .args(&args)
                .args(["-n", &ns, "--prefix", &prefix])
                .env("KUBECONFIG", kubeconfig)
                .envs(env)
                .stdin(Stdio::null())
                .output();
            let out = tokio::time::timeout(TIMEOUT, out).await.unwrap().unwrap();
            eprintln!(
                "$ kubectl funcscale {}\n{}-> {:?}",
                args.join(" "),
                text(&out),
                out.status.code()
            );
            out
        }
    };
    let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();

    // through the FuncQueue's passwordSecretRef
    let out = plugin(args("dead-letters list --queue q"), vec![]).await;
    assert!(
        out.status.success() && text(&out).contains("bad-1"),
        "{}",
        text(&out)
    );
    let out = plugin(args("status --json"), vec![]).await;
    assert!(out.status.success(), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let view = |name: &str| {
        doc["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .unwrap()
            .clone()
    };
    let live = &view("q")["redis"]["live"];
    assert_eq!(
        live["dead_letters"]
            .as_u64()
            .or(live["deadLetters"].as_u64()),
        Some(1),
        "{doc}"
    );
    let stale = view("stale")["redis"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        stale.contains("WRONGPASS") && stale.contains("Secrets it names"),
        "{doc}"
    );
    assert!(!doc.to_string().contains(PW), "the password is not printed");

    // --redis-url on the command line with the password from the environment
    let out = plugin(
        [
            args("dead-letters list --queue q --redis-url"),
            vec![url.clone()],
        ]
        .concat(),
        vec![("FUNCSCALE_REDIS_PASSWORD", PW.to_string())],
    )
    .await;
    assert!(
        out.status.success() && text(&out).contains("bad-1"),
        "{}",
        text(&out)
    );
    let out = plugin(
        [
            args("dead-letters list --queue q --redis-url"),
            vec![url.clone()],
        ]
        .concat(),
        vec![("FUNCSCALE_REDIS_PASSWORD", "nope-pw".to_string())],
    )
    .await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("WRONGPASS") && t.contains("--redis-password"),
        "{t}"
    );
    assert!(!t.contains("nope-pw"), "{t}");
}
