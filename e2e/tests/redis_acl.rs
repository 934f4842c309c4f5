//! Redis ACL users with exactly the rules `docs/operations.md` documents (read from the doc,
//! so the doc cannot drift from what works), on the real control plane: the operator logs in
//! as `funcscale-operator` (`--redis-url` plus `FUNCSCALE_REDIS_USERNAME` /
//! `FUNCSCALE_REDIS_PASSWORD`), the pods of a Worker and a Beat pool as `funcscale-worker`
//! (from `--worker-redis-secret` for the operator's default Redis, from a queue's
//! `spec.redis.usernameSecretRef` / `passwordSecretRef` for a queue of its own), the producer
//! CLI and `kubectl funcscale` too, with the `default` user off. Tasks and ticks are counted
//! by their side effects. Needs the binaries built (`cargo build --workspace --bins`).

use std::process::Stdio;
use std::time::Duration;

use funcscale_e2e::docs::documented_rule;
use funcscale_e2e::eventually;
use funcscale_e2e::scenario::{Options, PrivateRedis, Scenario, bin};
use funcscale_protocol::connection::{PASSWORD_ENV, USERNAME_ENV, connection_info};
use serde_json::json;

const OPERATOR_PW: &str = "op-pw";
const WORKER_PW: &str = "wk-pw";
const ADMIN_PW: &str = "admin-pw";

async fn connect(url: &str, user: &str, pw: &str) -> redis::aio::MultiplexedConnection {
    let info = connection_info(url, Some(user), Some(pw)).unwrap();
    redis::Client::open(info)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn scard(con: &redis::aio::MultiplexedConnection, key: &str) -> i64 {
    let mut con = con.clone();
    redis::cmd("SCARD")
        .arg(key)
        .query_async(&mut con)
        .await
        .unwrap_or(0)
}

fn logs(s: &Scenario) -> String {
    let mut out = String::new();
    for entry in walk(s.log_dir()) {
        if let Ok(t) = std::fs::read_to_string(&entry) {
            let tail: Vec<&str> = t.lines().rev().take(40).collect();
            out.push_str(&format!("==== {}\n", entry.display()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "log") {
            out.push(p);
        }
    }
    out
}

async fn condition(s: &Scenario, queue: &str, type_: &str) -> Option<(String, String, String)> {
    let st = s.queues().get(queue).await.ok()?.status?;
    let c = st.conditions.into_iter().find(|c| c.type_ == type_)?;
    Some((c.status, c.reason, c.message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acl_users_with_the_documented_rules_run_end_to_end() {
    if funcscale_e2e::scenario::real_cluster() {
        eprintln!("skipped against a real cluster: pods cannot reach this machine's private Redis");
        return;
    }
    let admin_pw = format!(">{ADMIN_PW}");
    let srv = PrivateRedis::start_with(&["--user", "admin", "on", &admin_pw, "~*", "&*", "+@all"])
        .await
        .unwrap();
    let url = srv.url();
    let admin = connect(&url, "admin", ADMIN_PW).await;

    let mut opts = Options::new("acl");
    opts.redis_url = url.clone();
    opts.operator_env = vec![
        (USERNAME_ENV.into(), "funcscale-operator".into()),
        (PASSWORD_ENV.into(), OPERATOR_PW.into()),
    ];
    // the pods of pools on the operator's default Redis read their URL from this Secret
    opts.operator_args = vec!["--worker-redis-secret".into(), "worker-redis/url".into()];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let prefix_probe = format!("fs-acl-{}-{:x}", std::process::id(), nanos % 0xfffff);
    opts.prefix = Some(prefix_probe.clone());
    {
        let mut con = admin.clone();
        for rule in [
            documented_rule("funcscale-operator", OPERATOR_PW, &prefix_probe),
            documented_rule("funcscale-worker", WORKER_PW, &prefix_probe),
            vec!["default".into(), "off".into()],
        ] {
            let _: () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg(&rule)
                .query_async(&mut con)
                .await
                .unwrap_or_else(|e| panic!("ACL SETUSER {rule:?}: {e}"));
        }
    }
    let s = Scenario::start(opts).await.unwrap();
    assert_eq!(s.prefix, prefix_probe);
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(s.client.clone(), &s.ns);
    let worker_url = url.replace(
        "redis://",
        &format!("redis://funcscale-worker:{WORKER_PW}@"),
    );
    secrets
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "worker-redis"},
                "stringData": {"url": worker_url, "user": "funcscale-worker\n",
                    "password": format!("{WORKER_PW}\n")}}))
            .unwrap(),
        )
        .await
        .unwrap();

    // `jobs` on the operator's default Redis; `own` names the same Redis itself, the worker
    // user from Secrets (the operator polls it as that user), with a schedule for the Beat
    // (whose pod then logs in through those Secrets)
    let done = format!("{}:done", s.prefix);
    let ticks = format!("{}:ticks", s.prefix);
    s.apply_queue("jobs", json!({"taskTimeMs": 100}))
        .await
        .unwrap();
    s.apply_queue(
        "own",
        json!({"taskTimeMs": 100, "redis": {"url": url,
            "usernameSecretRef": {"name": "worker-redis", "key": "user"},
            "passwordSecretRef": {"name": "worker-redis", "key": "password"}},
            "schedules": [{"name": "tick", "cron": "* * * * * *",
            "function": "record", "args": [ticks]}]}),
    )
    .await
    .unwrap();
    s.apply_pool(
        "w",
        json!({"queues": ["jobs"], "processesPerPod": 5, "handler": "builtin",
            "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "drainTargetSeconds": 2,
                "activationDepth": 0, "scaleDownStabilizationSeconds": 2}}),
    )
    .await
    .unwrap();
    s.apply_pool(
        "own",
        json!({"queues": ["own"], "processesPerPod": 2, "handler": "builtin", "replicas": 1}),
    )
    .await
    .unwrap();
    s.apply_pool("beat", json!({"role": "Beat", "queues": [], "replicas": 1}))
        .await
        .unwrap();

    // producers log in as the worker user, the username apart from the URL
    let args = json!([done]).to_string();
    let env = [
        (USERNAME_ENV, "funcscale-worker"),
        (PASSWORD_ENV, WORKER_PW),
    ];
    for queue in ["jobs", "own"] {
        s.worker_cli_env(
            &url,
            &env,
            &[
                "enqueue", "--queue", queue, "--func", "record", "--count", "20", "--args", &args,
            ],
        )
        .await
        .unwrap();
    }
    eventually(
        Duration::from_secs(90),
        "40 tasks and 3 ticks run",
        || async {
            (scard(&admin, &done).await == 40 && scard(&admin, &ticks).await >= 3).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: done {}, ticks {}\n{}",
            futures_block(scard(&admin, &done)),
            futures_block(scard(&admin, &ticks)),
            logs(&s)
        )
    });

    // the operator read and wrote everything it needs as funcscale-operator: the queues are
    // Ready with their settings applied, and the autoscaled pool went back to zero (its
    // scale-down marks the pods to stop: SET / DEL on the stop keys)
    for queue in ["jobs", "own"] {
        // Ready; the settings written (`ConfigApplied` is set once there is something to
        // write, and never False)
        for (type_, ok) in [("Ready", Some("True")), ("ConfigApplied", None)] {
            let c = eventually(Duration::from_secs(20), "condition as wanted", || async {
                let c = condition(&s, queue, type_).await;
                match (ok, c) {
                    (Some(want), Some(c)) if c.0 == want => Some(()),
                    (None, c) if c.as_ref().is_none_or(|c| c.0 != "False") => Some(()),
                    _ => None,
                }
            })
            .await;
            assert!(
                c.is_ok(),
                "{queue} {type_}: {:?}\n{}",
                condition(&s, queue, type_).await,
                logs(&s)
            );
        }
    }
    eventually(Duration::from_secs(60), "pool w back at 0", || async {
        (s.replicas("w").await.ok().flatten().map(|r| r.0) == Some(0)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    let operator_log = std::fs::read_to_string(s.log_dir().join("operator-op-0.log")).unwrap();
    let lower = operator_log.to_ascii_lowercase();
    assert!(
        !lower.contains("noperm") && !lower.contains("noauth"),
        "the operator was refused something:\n{operator_log}"
    );

    // kubectl funcscale reads the queues as the operator's (read-mostly) user
    let out = tokio::process::Command::new(bin("kubectl-funcscale").unwrap())
        .args([
            "status",
            "-n",
            &s.ns,
            "--prefix",
            &s.prefix,
            "--redis-url",
            &url,
        ])
        .env("KUBECONFIG", &s.kubeconfig)
        .env(USERNAME_ENV, "funcscale-operator")
        .env(PASSWORD_ENV, OPERATOR_PW)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("jobs") && text.contains("own"), "{text}");
    assert!(!text.to_ascii_lowercase().contains("noperm"), "{text}");
    s.shutdown().await;
}

/// The value of a future in a panic message (the test is already failing).
fn futures_block<F: std::future::Future<Output = i64>>(f: F) -> i64 {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}
