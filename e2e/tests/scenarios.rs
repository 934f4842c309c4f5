//! Closed-loop scenarios: the real operator and worker binaries on the real control plane with
//! the process kubelet, Redis at 127.0.0.1:6379 (each scenario: its own namespace, node and key
//! prefix). Needs `cargo build --workspace --bins` first (`make test` does).

use std::time::Duration;

use funcscale_e2e::eventually;
use funcscale_e2e::scenario::{Options, ReplicaHistory, Scenario};
use serde_json::json;

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(funcscale_e2e::scenario::REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis at 127.0.0.1:6379 (make redis)")
}

async fn int(con: &mut redis::aio::MultiplexedConnection, cmd: &str, key: &str) -> i64 {
    redis::cmd(cmd)
        .arg(key)
        .query_async(con)
        .await
        .unwrap_or(-1)
}

/// Dump the scenario's logs' tail on failure, to see why.
fn logs(s: &Scenario) -> String {
    let mut out = String::new();
    if let Ok(t) = std::fs::read_to_string(s.log_dir().join("operator-op-0.log")) {
        let lines: Vec<&str> = t.lines().collect();
        let from = lines.len().saturating_sub(30);
        out.push_str(&lines[from..].join("\n"));
    }
    if let Some(k) = s.kubelet() {
        out.push_str(&format!("\n-- pods on the process kubelet: {:?}", k.pods()));
    }
    // the pods' own logs (process kubelet: <log_dir>/pods/<ns>_<pod>_<container>.log)
    if let Ok(dir) = std::fs::read_dir(s.log_dir().join("pods")) {
        for f in dir.flatten() {
            if let Ok(t) = std::fs::read_to_string(f.path()) {
                let lines: Vec<&str> = t.lines().collect();
                let from = lines.len().saturating_sub(8);
                out.push_str(&format!(
                    "\n-- {}:\n{}",
                    f.file_name().to_string_lossy(),
                    lines[from..].join("\n")
                ));
            }
        }
    }
    out
}

/// Queue `jobs` (task time hint `task_ms`) and a fixed pool `w` of `n` builtin workers of 5
/// processes, waited for until all `n` are Ready.
async fn fixed_pool(s: &Scenario, task_ms: u64, n: i32) {
    s.apply_queue("jobs", json!({"taskTimeMs": task_ms, "maxRetries": 3}))
        .await
        .unwrap();
    s.apply_pool(
        "w",
        json!({"queues": ["jobs"], "processesPerPod": 5, "handler": "builtin", "replicas": n}),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(30),
        &format!("{n} ready workers"),
        || async { (s.replicas("w").await.ok().flatten() == Some((n, n))).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(s)));
}

/// burst: 10,000 tasks → the pool grows within seconds → the queue drains → after the
/// stabilization window the pool shrinks to zero; every task ran exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn burst_grows_drains_and_shrinks_to_zero() {
    const N: i64 = 10_000;
    let s = Scenario::start(Options::new("burst")).await.unwrap();
    let mut con = redis().await;
    let set = format!("{}:test:ran", s.prefix);
    let list = format!("{}:test:runs", s.prefix);
    s.apply_queue("jobs", json!({"taskTimeMs": 5, "maxRetries": 3}))
        .await
        .unwrap();
    s.apply_pool(
        "w",
        json!({"queues": ["jobs"], "processesPerPod": 5, "handler": "builtin",
            "autoscaling": {"minReplicas": 0, "maxReplicas": 8, "drainTargetSeconds": 2,
                "activationDepth": 0, "periodMs": 60000,
                "scaleDownStabilizationSeconds": 3, "scaleUpMaxStep": 4}}),
    )
    .await
    .unwrap();
    // idle pool with minReplicas 0: the Deployment exists at zero
    eventually(
        Duration::from_secs(30),
        "Deployment w at 0 replicas",
        || async { (s.replicas("w").await.ok().flatten().map(|r| r.0) == Some(0)).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    let history = ReplicaHistory::start(s.deployments(), "w");

    let t0 = tokio::time::Instant::now();
    s.enqueue(
        "jobs",
        "record",
        &format!("[\"{set}\", 2, \"{list}\"]"),
        N as u64,
    )
    .await
    .unwrap();
    // grows within seconds
    eventually(
        Duration::from_secs(10),
        "the pool to grow past 1",
        || async {
            (s.replicas("w")
                .await
                .ok()
                .flatten()
                .map(|r| r.0)
                .unwrap_or(0)
                > 1)
            .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    let grew_after = t0.elapsed();
    // drains: every task ran
    let key = s.queue_key("jobs");
    eventually(Duration::from_secs(90), "all tasks to run", || {
        let mut con = con.clone();
        let (set, key) = (set.clone(), key.clone());
        async move {
            (int(&mut con, "SCARD", &set).await == N && int(&mut con, "LLEN", &key).await == 0)
                .then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    let drained_after = t0.elapsed();
    // shrinks to zero after the stabilization window
    let r = eventually(
        Duration::from_secs(40),
        "the pool to shrink to 0",
        || async { (s.replicas("w").await.ok().flatten().map(|r| r.0) == Some(0)).then_some(()) },
    )
    .await;
    if let Err(e) = r {
        let st = s.pools().get("w").await.unwrap().status;
        panic!("{e}: {:?}\nstatus {st:?}\n{}", history.values(), logs(&s));
    }
    let shrunk_after = t0.elapsed();
    assert!(
        shrunk_after >= drained_after,
        "shrank before the queue drained"
    );
    // none twice after success, none lost, nothing dead
    assert_eq!(int(&mut con, "SCARD", &set).await, N);
    assert_eq!(int(&mut con, "LLEN", &list).await, N, "a task ran twice");
    let dead = s.keys().dead(&s.queue_id("jobs"));
    assert_eq!(int(&mut con, "LLEN", &dead).await, 0, "dead letters");
    let values = history.values();
    assert!(history.max() > 1, "replica history {values:?}");
    // pods really served: more than one Ready at once (readiness probes passed)
    let ready = history.max_ready.load(std::sync::atomic::Ordering::SeqCst);
    assert!(ready > 1, "at most {ready} pod(s) Ready at once");
    // (the final 0 was seen above; the 100 ms sampler may not have recorded it yet)
    let peak = values.iter().position(|v| *v == history.max()).unwrap();
    assert!(
        values[peak..].windows(2).all(|w| w[1] <= w[0]),
        "the pool grew again after the burst: {values:?}"
    );
    eprintln!(
        "burst: grew after {grew_after:?}, drained after {drained_after:?}, at 0 after \
         {shrunk_after:?}; replicas {values:?}"
    );
    s.shutdown().await;
}

fn task_ids(raw: &[String]) -> Vec<String> {
    raw.iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .filter_map(|v| v.get("id").and_then(|i| i.as_str()).map(String::from))
        .collect()
}

async fn queue_ids(con: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(con)
        .await
        .unwrap_or_default();
    task_ids(&raw)
}

fn assert_unique(ids: &[String]) {
    let mut sorted = ids.to_vec();
    sorted.sort();
    let before = sorted.len();
    sorted.dedup();
    assert_eq!(before, sorted.len(), "a tick was enqueued twice: {ids:?}");
}

/// beat: someone scales the beat Deployment to 3 → back to 1 at once; a second Beat pool →
/// Conflict; the beat process killed → restarted, ticks resume, no tick enqueued twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn beat_stays_single_refuses_a_second_and_survives_a_kill() {
    let s = Scenario::start(Options::new("beat")).await.unwrap();
    let mut con = redis().await;
    s.apply_queue(
        "tick",
        json!({"taskTimeMs": 5, "maxRetries": 3, "schedules": [
            {"name": "every-second", "cron": "* * * * * *", "function": "noop", "args": []}]}),
    )
    .await
    .unwrap();
    s.apply_pool("beat", json!({"role": "Beat", "queues": [], "replicas": 1}))
        .await
        .unwrap();
    let key = s.queue_key("tick");
    eventually(Duration::from_secs(30), "the beat to enqueue ticks", || {
        let (mut con, key) = (con.clone(), key.clone());
        async move { (int(&mut con, "LLEN", &key).await >= 2).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));

    // kubectl scale deployment beat --replicas=3 → back to 1
    let scaled = s
        .deployments()
        .patch(
            "beat",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    let g = scaled.metadata.generation.unwrap_or(0);
    let t = tokio::time::Instant::now();
    eventually(
        Duration::from_secs(10),
        "beat back to 1 replica",
        || async {
            let d = s.deployments().get("beat").await.ok()?;
            (d.metadata.generation.unwrap_or(0) > g && d.spec?.replicas == Some(1)).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    eprintln!("beat: scaled to 3, restored to 1 after {:?}", t.elapsed());

    // a second Beat pool for the same Redis → Conflict, stays at 0
    s.apply_pool(
        "beat2",
        json!({"role": "Beat", "queues": [], "replicas": 1}),
    )
    .await
    .unwrap();
    let (status, reason, msg) =
        eventually(Duration::from_secs(15), "beat2 Conflict=True", || async {
            s.condition("beat2", "Conflict")
                .await
                .ok()
                .flatten()
                .filter(|c| c.0 == "True")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "BeatAlreadyRunning"),
        "{msg}"
    );
    assert!(msg.contains("beat"), "{msg}");
    assert_eq!(
        s.replicas("beat2").await.unwrap().map(|r| r.0).unwrap_or(0),
        0
    );
    assert_eq!(
        s.condition("beat", "Conflict").await.unwrap().unwrap().0,
        "False"
    );

    // kill -9 the beat process → restarted (the kubelet restarts it; in a cluster the
    // Deployment replaces the pod), ticks resume
    // (the pods the scale to 3 started are stopped by the ReplicaSet: wait until one runs)
    let before = eventually(Duration::from_secs(30), "one beat pod", || async {
        let ids = s.pod_ids("beat").await;
        (ids.len() == 1).then_some(ids)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    s.kill_pod("beat").await.unwrap();
    let at_kill = int(&mut con, "LLEN", &key).await;
    eventually(
        Duration::from_secs(30),
        "the beat pod to restart",
        || async {
            let now = s.pod_ids("beat").await;
            (now.len() == 1 && now != before).then_some(())
        },
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(40), "ticks after the restart", || {
        let (mut con, key) = (con.clone(), key.clone());
        async move { (int(&mut con, "LLEN", &key).await >= at_kill + 3).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    let ids = queue_ids(&mut con, &key).await;
    assert!(ids.len() as i64 >= at_kill + 3);
    assert_unique(&ids);
    s.shutdown().await;
}

/// Wait until the side-effect set `set` holds `n` task ids (`what`; `s`'s logs on failure).
async fn ran(s: &Scenario, set: &str, n: i64, what: &str) {
    let con = redis().await;
    eventually(Duration::from_secs(40), what, || {
        let mut con = con.clone();
        async move { (int(&mut con, "SCARD", set).await == n).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(s)));
}

/// Two tenants on one Redis (one key prefix) served by ONE cluster-wide operator (no
/// `--namespace`, a ClusterRoleBinding: the chart's default install), each namespace with a
/// FuncQueue `jobs`, a worker pool `w` and a Beat pool `beat`: tasks enqueued to `a/jobs`
/// are run only by `a`'s pool (counted by their side effects), `b`'s queue and pool never
/// see them, neither Beat is refused and both fire their own namespace's schedules.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_tenants_on_one_redis_share_nothing() {
    let a = Scenario::start(Options {
        cluster_wide: true,
        ..Options::new("tenant-a")
    })
    .await
    .unwrap();
    // b: a namespace of its own (and its own node), served by a's operator
    let b = Scenario::start(Options {
        prefix: Some(a.prefix.clone()),
        label: Some(a.label.clone()),
        operator: false,
        ..Options::new("tenant-b")
    })
    .await
    .unwrap();
    let mut con = redis().await;
    let tick = json!({"taskTimeMs": 5, "maxRetries": 3, "schedules": [
        {"name": "every-second", "cron": "* * * * * *", "function": "noop", "args": []}]});
    for (s, replicas) in [(&a, 0), (&b, 1)] {
        s.apply_queue("jobs", json!({"taskTimeMs": 5, "maxRetries": 3}))
            .await
            .unwrap();
        s.apply_queue("tick", tick.clone()).await.unwrap();
        s.apply_pool(
            "w",
            json!({"queues": ["jobs"], "processesPerPod": 5, "handler": "builtin", "replicas": replicas}),
        )
        .await
        .unwrap();
        s.apply_pool("beat", json!({"role": "Beat", "queues": [], "replicas": 1}))
            .await
            .unwrap();
    }
    assert_ne!(a.queue_key("jobs"), b.queue_key("jobs"));

    // both Beats run and fire their own namespace's schedule into their own list
    for s in [&a, &b] {
        let key = s.queue_key("tick");
        eventually(
            Duration::from_secs(40),
            &format!("the beat of {} to fire", s.ns),
            || {
                let (mut con, key) = (con.clone(), key.clone());
                async move { (int(&mut con, "LLEN", &key).await >= 2).then_some(()) }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(s)));
        let ids = queue_ids(&mut con, &key).await;
        assert_unique(&ids);
        assert!(
            ids.iter().all(|id| id.starts_with(&s.queue_id("tick"))),
            "{ids:?}"
        );
        assert_eq!(
            s.condition("beat", "Conflict").await.unwrap().map(|c| c.0),
            Some("False".into())
        );
    }

    // a's tasks first, then b's: b's worker runs every one of its own and none of a's
    const N: i64 = 200;
    const M: i64 = 50;
    let (set_a, set_b) = (
        format!("{}:test:ran-a", a.prefix),
        format!("{}:test:ran-b", a.prefix),
    );
    a.enqueue("jobs", "record", &json!([set_a]).to_string(), N as u64)
        .await
        .unwrap();
    b.enqueue("jobs", "record", &json!([set_b]).to_string(), M as u64)
        .await
        .unwrap();
    ran(&b, &set_b, M, "b's pool to run b's tasks").await;
    assert_eq!(int(&mut con, "SCARD", &set_a).await, 0, "b ran a's tasks");
    assert_eq!(int(&mut con, "LLEN", &a.queue_key("jobs")).await, N);
    // each operator reads its own queue: a's depth is N, b's stays 0
    let depth = |s: &Scenario| {
        let api = s.queues();
        async move { api.get("jobs").await.ok()?.status?.depth }
    };
    eventually(Duration::from_secs(20), "a/jobs status depth N", || async {
        (depth(&a).await == Some(N as u64)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&a)));
    eventually(Duration::from_secs(20), "b/jobs status depth 0", || async {
        (depth(&b).await == Some(0)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", logs(&a), logs(&b)));
    let key_of = |s: &Scenario| {
        let api = s.queues();
        async move { api.get("jobs").await.ok()?.status?.key }
    };
    assert_eq!(key_of(&a).await, Some(a.queue_key("jobs")));
    assert_eq!(key_of(&b).await, Some(b.queue_key("jobs")));

    // a's own pool runs a's tasks, each once; b's side effects are unchanged
    a.apply_pool(
        "w",
        json!({"queues": ["jobs"], "processesPerPod": 5, "handler": "builtin", "replicas": 1}),
    )
    .await
    .unwrap();
    ran(&a, &set_a, N, "a's pool to run a's tasks").await;
    assert_eq!(int(&mut con, "SCARD", &set_b).await, M);
    let completed = |s: &Scenario| {
        let key = s.keys().stats(&s.queue_id("jobs"));
        let mut con = con.clone();
        async move {
            redis::cmd("HGET")
                .arg(key)
                .arg("completed")
                .query_async::<Option<i64>>(&mut con)
                .await
                .unwrap()
        }
    };
    assert_eq!(completed(&a).await, Some(N));
    assert_eq!(completed(&b).await, Some(M));
    let _: () = redis::cmd("DEL")
        .arg(&set_a)
        .arg(&set_b)
        .query_async(&mut con)
        .await
        .unwrap();
    b.shutdown().await;
    a.shutdown().await;
}

/// Redis stopped in the middle → the pool holds its size, MetricsAvailable=False says why;
/// the operator stays ready (`/readyz` 200) and keeps sizing a queue on another Redis (another
/// tenant's); Redis back → the loop resumes (the pool shrinks to its minimum once idle).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_holds_the_pool_and_resumes() {
    if funcscale_e2e::scenario::real_cluster() {
        eprintln!("skipped against a real cluster: pods cannot reach this machine's private Redis");
        return;
    }
    let mut redis_srv = funcscale_e2e::scenario::PrivateRedis::start()
        .await
        .unwrap();
    let mut opts = Options::new("outage");
    opts.redis_url = redis_srv.url();
    let s = Scenario::start(opts).await.unwrap();
    s.apply_queue("jobs", json!({"taskTimeMs": 200, "maxRetries": 3}))
        .await
        .unwrap();
    s.apply_pool(
        "w",
        json!({"queues": ["jobs"], "processesPerPod": 5, "handler": "builtin",
            "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "drainTargetSeconds": 5,
                "activationDepth": 0, "periodMs": 60000,
                "scaleDownStabilizationSeconds": 3, "scaleUpMaxStep": 4}}),
    )
    .await
    .unwrap();
    // another tenant's queue, on the shared Redis: it must not notice the outage
    s.apply_queue(
        "other",
        json!({"taskTimeMs": 1000, "redis": {"url": funcscale_e2e::scenario::REDIS_URL}}),
    )
    .await
    .unwrap();
    s.apply_pool(
        "o",
        json!({"queues": ["other"], "processesPerPod": 1, "handler": "builtin",
            "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "drainTargetSeconds": 5,
                "activationDepth": 0, "periodMs": 60000, "scaleUpMaxStep": 3}}),
    )
    .await
    .unwrap();
    s.enqueue("jobs", "sleep", "[200]", 2_000).await.unwrap();
    let grown = eventually(Duration::from_secs(20), "the pool to grow", || async {
        s.replicas("w")
            .await
            .ok()
            .flatten()
            .map(|r| r.0)
            .filter(|r| *r > 1)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    eventually(Duration::from_secs(10), "MetricsAvailable=True", || async {
        s.condition("w", "MetricsAvailable")
            .await
            .ok()
            .flatten()
            .filter(|c| c.0 == "True")
    })
    .await
    .unwrap();
    let size = s.replicas("w").await.unwrap().unwrap().0;
    redis_srv.kill().await;
    let (_, reason, msg) = eventually(
        Duration::from_secs(15),
        "MetricsAvailable=False",
        || async {
            s.condition("w", "MetricsAvailable")
                .await
                .ok()
                .flatten()
                .filter(|c| c.0 == "False")
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    assert_eq!(reason, "RedisUnavailable", "{msg}");
    assert!(msg.contains("holding"), "{msg}");
    // hold for longer than the stabilization window: the size does not move
    let history = ReplicaHistory::start(s.deployments(), "w");
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < until {
        assert_eq!(
            s.replicas("w").await.unwrap().unwrap().0,
            size,
            "size moved during the outage"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(history.values(), vec![size]);
    // the operator stays ready, and the other tenant's pool still scales from its own Redis
    s.wait_operator_ready(0)
        .await
        .unwrap_or_else(|e| panic!("one tenant's Redis down made the operator unready: {e}"));
    s.worker_cli_at(
        funcscale_e2e::scenario::REDIS_URL,
        None,
        &[
            "enqueue", "--queue", "other", "--func", "sleep", "--args", "[1000]", "--count", "40",
        ],
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(20),
        "the other tenant's pool to grow during the outage",
        || async {
            s.replicas("o")
                .await
                .ok()
                .flatten()
                .filter(|r| r.0 > 0)
                .map(|_| ())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    s.wait_operator_ready(0)
        .await
        .unwrap_or_else(|e| panic!("one tenant's Redis down made the operator unready: {e}"));
    eprintln!("outage: grew to {grown}, held {size} during the outage: {msg}");
    // Redis back (empty): metrics resume, the idle pool shrinks to minReplicas
    redis_srv.restart().await.unwrap();
    eventually(
        Duration::from_secs(20),
        "MetricsAvailable=True again",
        || async {
            s.condition("w", "MetricsAvailable")
                .await
                .ok()
                .flatten()
                .filter(|c| c.0 == "True")
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    eventually(
        Duration::from_secs(20),
        "the pool to shrink to 1",
        || async { (s.replicas("w").await.ok().flatten().map(|r| r.0) == Some(1)).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    s.shutdown().await;
}

/// operator killed, a standby replica takes the lease, the killed one comes back as standby:
/// the worker pods are not touched, every task runs once, the new leader acts on changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_takeover_leaves_workers_alone_and_loses_no_task() {
    const N: i64 = 3_000;
    let mut opts = Options::new("takeover");
    opts.leader_election = true;
    let mut s = Scenario::start(opts).await.unwrap();
    let mut con = redis().await;
    let set = format!("{}:test:ran", s.prefix);
    let list = format!("{}:test:runs", s.prefix);
    fixed_pool(&s, 5, 2).await;
    s.start_operator("op-1").unwrap();
    let before = s.pod_ids("w").await;
    assert_eq!(before.len(), 2);
    let dep_before = s.deployments().get("w").await.unwrap();
    // tasks flow while the leader dies
    s.enqueue(
        "jobs",
        "record",
        &format!("[\"{set}\", 3, \"{list}\"]"),
        N as u64,
    )
    .await
    .unwrap();
    s.operators[0].kill().await.unwrap();
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(s.client.clone(), &s.ns);
    eventually(
        Duration::from_secs(20),
        "op-1 to hold the lease",
        || async {
            let l = leases.get_opt("funcscale-operator").await.ok().flatten()?;
            (l.spec?.holder_identity.as_deref() == Some("op-1")).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    // the killed replica comes back: a standby now
    s.start_operator("op-0b").unwrap();
    eventually(Duration::from_secs(60), "all tasks to run", || {
        let (mut con, set) = (con.clone(), set.clone());
        async move { (int(&mut con, "SCARD", &set).await == N).then_some(()) }
    })
    .await
    .unwrap();
    assert_eq!(int(&mut con, "LLEN", &list).await, N, "a task ran twice");
    assert_eq!(s.pod_ids("w").await, before, "worker pods were restarted");
    let dep_after = s.deployments().get("w").await.unwrap();
    assert_eq!(
        dep_before.metadata.generation, dep_after.metadata.generation,
        "the new leader changed the Deployment"
    );
    // the new leader acts
    s.apply_pool(
        "w",
        json!({"queues": ["jobs"], "processesPerPod": 5, "handler": "builtin", "replicas": 3}),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(15),
        "the new leader to scale to 3",
        || async { (s.replicas("w").await.ok().flatten().map(|r| r.0) == Some(3)).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    s.shutdown().await;
}

/// SIGKILL chaos: worker processes killed at random while tasks run (the kubelet restarts the
/// containers, as a crash does in a cluster) → every task still runs (counted by its own side
/// effect), none is dead-lettered; a killed task may run again (at-least-once), never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_chaos_loses_no_task() {
    const N: i64 = 2_000;
    let s = Scenario::start(Options::new("chaos")).await.unwrap();
    let mut con = redis().await;
    let set = format!("{}:test:ran", s.prefix);
    let list = format!("{}:test:runs", s.prefix);
    fixed_pool(&s, 50, 3).await;
    s.enqueue(
        "jobs",
        "record",
        &format!("[\"{set}\", 40, \"{list}\"]"),
        N as u64,
    )
    .await
    .unwrap();
    let mut kills = 0;
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let pods = s.pod_ids("w").await;
        if let Some(pid) = pods.get(i % pods.len().max(1)) {
            let pid: i32 = pid.parse().unwrap();
            if nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
            {
                kills += 1;
            }
        }
    }
    assert!(kills >= 4, "only {kills} kills");
    let key = s.queue_key("jobs");
    eventually(
        Duration::from_secs(150),
        "every task to run despite the kills",
        || {
            let (mut con, set, key) = (con.clone(), set.clone(), key.clone());
            async move {
                (int(&mut con, "SCARD", &set).await == N && int(&mut con, "LLEN", &key).await == 0)
                    .then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    let dead = s.keys().dead(&s.queue_id("jobs"));
    assert_eq!(int(&mut con, "LLEN", &dead).await, 0, "dead letters");
    let runs = int(&mut con, "LLEN", &list).await;
    let restarts: u32 = s
        .kubelet()
        .map(|k| k.pods_of(&s.ns, "w").iter().map(|p| p.restarts).sum())
        .unwrap_or(0);
    eprintln!(
        "chaos: {kills} SIGKILLs, {restarts} container restarts, {N} tasks, {runs} runs ({} re-run after a kill)",
        runs - N
    );
    s.shutdown().await;
}

/// invalid resources → SpecValid=False naming the field and the reason; the others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_resources_are_flagged_and_the_rest_served() {
    let s = Scenario::start(Options::new("invalid")).await.unwrap();
    s.apply_queue("ok", json!({"taskTimeMs": 5})).await.unwrap();
    s.apply_queue("celery", json!({"taskTimeMs": 5, "format": "Celery"}))
        .await
        .unwrap();
    s.apply_pool("missing", json!({"queues": ["nope"], "replicas": 1}))
        .await
        .unwrap();
    s.apply_pool("foreign", json!({"queues": ["celery"], "replicas": 1}))
        .await
        .unwrap();
    s.apply_pool(
        "good",
        json!({"queues": ["ok"], "replicas": 1, "handler": "builtin"}),
    )
    .await
    .unwrap();
    for (pool, field, why) in [
        ("missing", "spec.queues[0]", "FuncQueue nope does not exist"),
        ("foreign", "spec.queues[0]", "Celery queue"),
    ] {
        let (_, reason, msg) = eventually(Duration::from_secs(15), "SpecValid=False", || async {
            s.condition(pool, "SpecValid")
                .await
                .ok()
                .flatten()
                // the pool may be checked before the operator's cache has its queue: wait
                // for the condition that names this pool's own fault
                .filter(|c| c.0 == "False" && c.2.contains(why))
        })
        .await
        .unwrap_or_else(|e| panic!("{pool}: {e}\n{}", logs(&s)));
        assert_eq!(reason, "InvalidSpec");
        assert!(msg.starts_with(field) && msg.contains(why), "{pool}: {msg}");
        assert!(
            s.replicas(pool).await.unwrap().is_none(),
            "{pool} got a Deployment"
        );
    }
    eventually(Duration::from_secs(30), "good: 1 ready worker", || async {
        (s.replicas("good").await.ok().flatten() == Some((1, 1))).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    assert_eq!(
        s.condition("good", "SpecValid").await.unwrap().unwrap().0,
        "True"
    );
    // an object only the real API server refuses (a CPU request above its limit): the
    // pool says so where users look — Ready=False with the API's message, a Warning Event,
    // a metric — and recovers when the spec is fixed
    let rejected = |limit: &str| {
        json!({"queues": ["ok"], "replicas": 1, "handler": "builtin",
            "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": limit}}})
    };
    s.apply_pool("rejected", rejected("1")).await.unwrap();
    let (_, _, msg) = eventually(Duration::from_secs(15), "rejected: Ready=False", || async {
        s.condition("rejected", "Ready")
            .await
            .ok()
            .flatten()
            .filter(|c| c.0 == "False" && c.1 == "DeploymentRejected")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    assert!(msg.contains("Invalid value"), "{msg}");
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(s.client.clone(), &s.ns);
    eventually(
        Duration::from_secs(10),
        "a DeploymentRejected Warning Event",
        || async {
            events
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("DeploymentRejected")
                        && e.type_.as_deref() == Some("Warning")
                })
        },
    )
    .await
    .unwrap();
    let metrics = funcscale_e2e::scenario::http_get(s.operator_addrs[0], "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("funcscale_apply_rejected_total{kind=\"Deployment\"}"),
        "no rejection metric in /metrics"
    );
    s.apply_pool("rejected", rejected("2")).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "rejected: fixed, 1 ready worker",
        || async { (s.replicas("rejected").await.ok().flatten() == Some((1, 1))).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    // fixing the spec clears the condition
    s.apply_queue("nope", json!({"taskTimeMs": 5}))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(15),
        "missing: SpecValid=True",
        || async {
            s.condition("missing", "SpecValid")
                .await
                .ok()
                .flatten()
                .filter(|c| c.0 == "True")
        },
    )
    .await
    .unwrap();
    s.shutdown().await;
}

/// cron load: M registered schedules with task time T → the pool settles at
/// ceil(M × T / (c × P)).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cron_load_settles_at_the_formula() {
    const M: u64 = 3_000;
    const T: u64 = 500;
    const C: u64 = 5;
    const P: u64 = 60_000;
    let want = (M * T).div_ceil(C * P) as i32; // 5
    let s = Scenario::start(Options::new("cron")).await.unwrap();
    s.worker_cli(&[
        "schedules",
        "add",
        "--queue",
        "monitors",
        "--id",
        "m",
        "--cron",
        "*/1 * * * *",
        "--func",
        "noop",
        "--count",
        &M.to_string(),
    ])
    .await
    .unwrap();
    s.apply_queue("monitors", json!({"taskTimeMs": T}))
        .await
        .unwrap();
    s.apply_pool(
        "w",
        json!({"queues": ["monitors"], "processesPerPod": C, "handler": "builtin",
            "autoscaling": {"minReplicas": 0, "maxReplicas": 20, "drainTargetSeconds": 60,
                "activationDepth": 0, "periodMs": P,
                "scaleDownStabilizationSeconds": 3, "scaleUpMaxStep": 4}}),
    )
    .await
    .unwrap();
    let st = eventually(
        Duration::from_secs(30),
        "desiredReplicas at the formula",
        || async {
            let p = s.pools().get_opt("w").await.ok().flatten()?;
            let st = p.status?;
            (st.desired_replicas == want
                && s.replicas("w").await.ok().flatten().map(|r| r.0) == Some(want))
            .then_some(st)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    let d = st.decision.unwrap();
    assert_eq!(d.rule, "CronLoad", "{}", d.message);
    assert_eq!(d.scheduled_per_period, Some(M), "{}", d.message);
    eprintln!("cron: {} → {} ({})", M, want, d.message);
    // settled: still there a few polls later
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.pools()
            .get("w")
            .await
            .unwrap()
            .status
            .unwrap()
            .desired_replicas,
        want
    );
    s.shutdown().await;
}

/// Reaction latency (`make bench`): tasks pushed → Deployment replicas changed, over
/// `FUNCSCALE_E2E_LATENCY_TRIALS` trials (default 10), operator polling every 1 s (its default).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: make bench"]
async fn reaction_latency() {
    let trials: usize = std::env::var("FUNCSCALE_E2E_LATENCY_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut opts = Options::new("latency");
    opts.poll_interval = Duration::from_secs(1);
    let s = Scenario::start(opts).await.unwrap();
    let mut con = redis().await;
    s.apply_queue("jobs", json!({"taskTimeMs": 100, "maxRetries": 0}))
        .await
        .unwrap();
    s.apply_pool(
        "w",
        json!({"queues": ["jobs"], "processesPerPod": 5, "handler": "builtin",
            "autoscaling": {"minReplicas": 1, "maxReplicas": 10, "drainTargetSeconds": 10,
                "activationDepth": 0, "periodMs": 60000,
                "scaleDownStabilizationSeconds": 1, "scaleUpMaxStep": 4}}),
    )
    .await
    .unwrap();
    let key = s.queue_key("jobs");
    let mut ms = Vec::new();
    for i in 0..trials {
        eventually(Duration::from_secs(60), "the pool back at 1", || async {
            (s.replicas("w").await.ok().flatten().map(|r| r.0) == Some(1)).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
        // a random phase against the poll tick
        tokio::time::sleep(Duration::from_millis(fastrand_ms(i))).await;
        let t0 = tokio::time::Instant::now();
        s.enqueue("jobs", "sleep", "[100]", 3_000).await.unwrap();
        eventually(Duration::from_secs(30), "replicas to change", || async {
            (s.replicas("w")
                .await
                .ok()
                .flatten()
                .map(|r| r.0)
                .unwrap_or(1)
                > 1)
            .then_some(())
        })
        .await
        .unwrap();
        ms.push(t0.elapsed().as_millis() as u64);
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
    }
    ms.sort();
    let pct = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "reaction latency (tasks pushed -> Deployment replicas changed), {} trials, poll 1 s: \
         p50 {} ms, p95 {} ms, max {} ms; all {:?}",
        ms.len(),
        pct(0.5),
        pct(0.95),
        ms.last().unwrap(),
        ms
    );
    println!(
        "reference, KEDA defaults: pollingInterval 30 s + HPA sync period 15 s -> up to ~45 s \
         (~22 s on average) before the replicas change"
    );
    s.shutdown().await;
}

/// A spread of start phases over one poll interval without a RNG dependency.
fn fastrand_ms(i: usize) -> u64 {
    ((i as u64 * 379) + (std::process::id() as u64 % 97)) % 1000
}

/// A queue on a password-protected Redis (`requirepass`), the password in a real Secret
/// (`spec.redis.passwordSecretRef`): the operator reads the queue's depth with it, the pool's
/// pods get it as FUNCSCALE_REDIS_PASSWORD and run every task (side effects counted), and a
/// queue whose Secret holds a wrong password says RedisAuthFailed with the node address.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_on_a_password_protected_redis() {
    if funcscale_e2e::scenario::real_cluster() {
        eprintln!("skipped against a real cluster: pods cannot reach this machine's private Redis");
        return;
    }
    const PW: &str = "s3cr3t:p@ss/w#rd";
    let redis_srv = funcscale_e2e::scenario::PrivateRedis::start_with(&["--requirepass", PW])
        .await
        .unwrap();
    let s = Scenario::start(Options::new("auth")).await.unwrap();
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(s.client.clone(), &s.ns);
    for (name, pw) in [("redis-auth", PW), ("stale-auth", "old-password")] {
        secrets
            .create(
                &Default::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": name}, "stringData": {"password": format!("{pw}\n")}
                }))
                .unwrap(),
            )
            .await
            .unwrap();
    }
    let redis_spec = |secret: &str| json!({"url": redis_srv.url(), "passwordSecretRef": {"name": secret, "key": "password"}});
    s.apply_queue(
        "jobs",
        json!({"taskTimeMs": 100, "redis": redis_spec("redis-auth")}),
    )
    .await
    .unwrap();
    s.apply_queue(
        "stale",
        json!({"taskTimeMs": 100, "redis": redis_spec("stale-auth")}),
    )
    .await
    .unwrap();

    // 30 tasks, pushed with the password (the producer CLI reads it from the environment)
    let done = format!("{}-done", s.prefix);
    let args = json!([done]).to_string();
    s.worker_cli_at(
        &redis_srv.url(),
        Some(PW),
        &[
            "enqueue", "--queue", "jobs", "--func", "record", "--count", "30", "--args", &args,
        ],
    )
    .await
    .unwrap();

    // the operator reads the depth through the Secret's password
    eventually(Duration::from_secs(20), "status.depth = 30", || async {
        let q = s.queues().get("jobs").await.ok()?;
        (q.status?.depth == Some(30)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    // the wrong password: a reason of its own, naming the node, not the password
    let node = format!("127.0.0.1:{}", redis_srv.port);
    let (reason, msg) = eventually(
        Duration::from_secs(20),
        "stale: RedisAuthFailed",
        || async {
            let st = s.queues().get("stale").await.ok()?.status?;
            let c = st.conditions.into_iter().find(|c| c.type_ == "Ready")?;
            (c.reason == "RedisAuthFailed").then_some((c.reason, c.message))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    assert!(
        msg.contains(&node) && msg.contains("passwordSecretRef"),
        "{reason}: {msg}"
    );
    assert!(!msg.contains("old-password"), "{msg}");

    // a pool on the queue: its pods log in with FUNCSCALE_REDIS_PASSWORD from the Secret
    s.apply_pool(
        "w",
        json!({"queues": ["jobs"], "processesPerPod": 5, "handler": "builtin", "replicas": 1}),
    )
    .await
    .unwrap();
    let info =
        funcscale_protocol::connection::connection_info(&redis_srv.url(), None, Some(PW)).unwrap();
    let con = redis::Client::open(info)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "30 tasks run", || async {
        let mut con = con.clone();
        (int(&mut con, "SCARD", &done).await == 30).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    eventually(Duration::from_secs(20), "status.depth = 0", || async {
        let q = s.queues().get("jobs").await.ok()?;
        (q.status?.depth == Some(0)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    s.shutdown().await;
}

/// An autoscaled pool of builtin workers (5 processes, 0..=`max` pods, 2 s stabilization)
/// on queue `jobs`, waited for at zero.
async fn pool_at_zero(s: &Scenario, max: i32) {
    s.apply_pool(
        "w",
        json!({"queues": ["jobs"], "processesPerPod": 5, "handler": "builtin",
            "autoscaling": {"minReplicas": 0, "maxReplicas": max, "drainTargetSeconds": 2,
                "activationDepth": 0, "periodMs": 60000,
                "scaleDownStabilizationSeconds": 2, "scaleUpMaxStep": 4}}),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "Deployment w at 0 replicas",
        || async { (s.replicas("w").await.ok().flatten().map(|r| r.0) == Some(0)).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(s)));
}

/// A task that fails once waits for its retry (backoff 10-30 s); meanwhile the pool goes
/// back to zero, and when the retry is due the pool comes back and runs it (counted by its
/// side effect): a due retry is backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_due_retry_wakes_a_pool_at_zero() {
    let s = Scenario::start(Options::new("retry-wake")).await.unwrap();
    let mut con = redis().await;
    let set = format!("{}:test:ran", s.prefix);
    s.apply_queue(
        "jobs",
        json!({"taskTimeMs": 50, "maxRetries": 2,
            "retryBackoff": {"baseMs": 20000, "maxMs": 20000}}),
    )
    .await
    .unwrap();
    pool_at_zero(&s, 2).await;
    let history = ReplicaHistory::start(s.deployments(), "w");
    s.enqueue("jobs", "flaky", &json!([set, 1]).to_string(), 1)
        .await
        .unwrap();
    // the first attempt runs and fails: the task waits in the delayed set
    let delayed = s.keys().delayed(&s.queue_id("jobs"));
    eventually(Duration::from_secs(40), "the first attempt to fail", || {
        let (mut con, delayed) = (con.clone(), delayed.clone());
        async move { (int(&mut con, "ZCARD", &delayed).await == 1).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    // nothing to do until the retry is due: the pool goes back to zero before it is
    eventually(Duration::from_secs(20), "the pool back at 0", || async {
        (s.replicas("w").await.ok().flatten().map(|r| r.0) == Some(0)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", history.values(), logs(&s)));
    let due: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(&delayed)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut con)
        .await
        .unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    assert!(
        due.len() == 1 && due[0].1 > now_ms,
        "the retry was already due when the pool reached 0: {due:?} (now {now_ms})"
    );
    assert_eq!(int(&mut con, "SCARD", &set).await, 0);
    // the retry falls due: the pool wakes and the second attempt succeeds
    ran(&s, &set, 1, "the due retry to wake the pool and run").await;
    let values = history.values();
    let first = values.iter().position(|v| *v > 0).expect("the pool woke");
    let zero = first + values[first..].iter().position(|v| *v == 0).unwrap();
    assert!(
        values[zero..].iter().any(|v| *v > 0),
        "woke again for the retry: {values:?}"
    );
    assert_eq!(int(&mut con, "ZCARD", &delayed).await, 0);
    let dead = s.keys().dead(&s.queue_id("jobs"));
    assert_eq!(int(&mut con, "LLEN", &dead).await, 0, "dead letters");
    eprintln!("retry wake: replicas {values:?}");
    let _: () = redis::cmd("DEL")
        .arg(&set)
        .query_async(&mut con)
        .await
        .unwrap();
    s.shutdown().await;
}

/// A local HTTP receiver of URL deliveries: answers 503 until `accept` is set, then 200;
/// records each POST's `x-funcscale-delivery-id` with the status it was answered.
struct Hook {
    url: String,
    accept: std::sync::Arc<std::sync::atomic::AtomicBool>,
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, u16)>>>,
}

impl Hook {
    async fn start() -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let accept = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (a, g) = (accept.clone(), got.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (a, g) = (a.clone(), g.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // the head, then as much body as content-length says
                    let (head, body_len) = loop {
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (head, end + 4 + len);
                        }
                    };
                    while buf.len() < body_len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let id = head
                        .lines()
                        .find_map(|l| l.strip_prefix("x-funcscale-delivery-id:"))
                        .map(|v| v.trim().to_string())
                        .unwrap_or_default();
                    let status = if a.load(Ordering::SeqCst) { 200 } else { 503 };
                    g.lock().unwrap().push((id, status));
                    let reply = format!(
                        "HTTP/1.1 {status} {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        if status == 200 {
                            "OK"
                        } else {
                            "Service Unavailable"
                        }
                    );
                    let _ = sock.write_all(reply.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Self { url, accept, got }
    }

    fn got(&self) -> Vec<(String, u16)> {
        self.got.lock().unwrap().clone()
    }
}

/// Deliveries to a URL destination are made only by the queue's workers. The receiver refuses
/// the first attempts; while the delivery backs off, nothing is due and the pool goes back to
/// zero; then the receiver accepts, and when the delivery falls due again the pool wakes (a
/// due delivery is backlog, `status.deliveriesDue`) and makes it. (Before, it waited for the
/// queue's next task.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_due_delivery_wakes_a_pool_at_zero() {
    let s = Scenario::start(Options::new("delivery-wake"))
        .await
        .unwrap();
    let mut con = redis().await;
    let hook = Hook::start().await;
    let set = format!("{}:test:ran", s.prefix);
    s.apply_queue(
        "jobs",
        json!({"taskTimeMs": 50, "onSuccess": {"url": hook.url}}),
    )
    .await
    .unwrap();
    pool_at_zero(&s, 2).await;
    let history = ReplicaHistory::start(s.deployments(), "w");
    s.enqueue("jobs", "record", &json!([set]).to_string(), 1)
        .await
        .unwrap();
    ran(&s, &set, 1, "the task to run").await;
    let task: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&set)
        .query_async(&mut con)
        .await
        .unwrap();
    let id = format!("{}:success", task[0]);
    let outbox = s.keys().queue_outbox(&s.queue_id("jobs"));
    eventually(Duration::from_secs(20), "a refused delivery", || async {
        hook.got()
            .iter()
            .any(|(i, st)| *i == id && *st == 503)
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}
{}",
            logs(&s)
        )
    });
    // backing off (1 s doubling), nothing due between attempts: the pool reaches zero
    eventually(Duration::from_secs(90), "the pool back at 0", || async {
        (s.replicas("w").await.ok().flatten().map(|r| r.0) == Some(0)).then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}
{}",
            history.values(),
            logs(&s)
        )
    });
    assert_eq!(int(&mut con, "ZCARD", &outbox).await, 1, "still pending");
    let at_zero = history.values().len();
    hook.accept.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually(Duration::from_secs(120), "the delivery made", || async {
        hook.got()
            .iter()
            .any(|(i, st)| *i == id && *st == 200)
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?} {:?}
{}",
            hook.got(),
            history.values(),
            logs(&s)
        )
    });
    let values = history.values();
    assert!(
        values[at_zero.saturating_sub(1)..].iter().any(|v| *v > 0),
        "woke from zero to deliver: {values:?}"
    );
    eventually(Duration::from_secs(10), "the outbox empty", || async {
        (int(&mut con.clone(), "ZCARD", &outbox).await == 0).then_some(())
    })
    .await
    .unwrap();
    let dead = format!("{outbox}:dead");
    assert_eq!(int(&mut con, "LLEN", &dead).await, 0, "parked");
    eprintln!("delivery wake: replicas {values:?}, posts {:?}", hook.got());
    let _: () = redis::cmd("DEL")
        .arg(&set)
        .query_async(&mut con)
        .await
        .unwrap();
    s.shutdown().await;
}

/// One 40 s task and no backlog: the pool stays at one pod (it never goes below the pods
/// its running tasks occupy) until the task finishes, then goes to zero; the task ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_task_holds_its_pod() {
    const TASK_MS: u64 = 40_000;
    let s = Scenario::start(Options::new("long-task")).await.unwrap();
    let mut con = redis().await;
    let (set, list) = (
        format!("{}:test:ran", s.prefix),
        format!("{}:test:runs", s.prefix),
    );
    s.apply_queue("jobs", json!({"taskTimeMs": 100, "maxRetries": 3}))
        .await
        .unwrap();
    pool_at_zero(&s, 3).await;
    let history = ReplicaHistory::start(s.deployments(), "w");
    s.enqueue(
        "jobs",
        "record",
        &json!([set, TASK_MS, list]).to_string(),
        1,
    )
    .await
    .unwrap();
    // `record` adds the id before it sleeps: the task started
    ran(&s, &set, 1, "the long task to start").await;
    let stats = s.keys().stats(&s.queue_id("jobs"));
    let reader = con.clone();
    let completed = || {
        let (mut con, stats) = (reader.clone(), stats.clone());
        async move {
            redis::cmd("HGET")
                .arg(&stats)
                .arg("completed")
                .query_async::<Option<i64>>(&mut con)
                .await
                .ok()
                .flatten()
                .unwrap_or(0)
        }
    };
    eventually(
        Duration::from_millis(TASK_MS + 30_000),
        "the long task to finish",
        || async { (completed().await == 1).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", history.values(), logs(&s)));
    let values = history.values();
    let first = values.iter().position(|v| *v > 0).expect("the pool woke");
    assert!(
        values[first..].iter().all(|v| *v > 0),
        "the pool went below its running task's pod while it ran: {values:?}\n{}",
        logs(&s)
    );
    // done: nothing runs, nothing waits → zero
    eventually(Duration::from_secs(30), "the pool to go to 0", || async {
        (s.replicas("w").await.ok().flatten().map(|r| r.0) == Some(0)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", history.values(), logs(&s)));
    assert_eq!(int(&mut con, "LLEN", &list).await, 1, "the task ran twice");
    assert_eq!(completed().await, 1);
    eprintln!("long task: replicas {:?}", history.values());
    let _: () = redis::cmd("DEL")
        .arg(&set)
        .arg(&list)
        .query_async(&mut con)
        .await
        .unwrap();
    s.shutdown().await;
}

/// Two pools serve one queue with a cron load that one pool would meet with
/// `ceil(2,400 × 500 / (5 × 60,000))` = 4 pods: the pools split it by capacity (30 and 10
/// pods of 5 processes: 3/4 and 1/4), 3 + 1 = 4 pods, not 4 each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_on_one_queue_share_its_load() {
    const M: u64 = 2_400;
    const T: u64 = 500;
    let alone = (M * T).div_ceil(5 * 60_000) as i32; // 4
    let s = Scenario::start(Options::new("shared-q")).await.unwrap();
    s.worker_cli(&[
        "schedules",
        "add",
        "--queue",
        "jobs",
        "--id",
        "m",
        "--cron",
        "*/1 * * * *",
        "--func",
        "noop",
        "--count",
        &M.to_string(),
    ])
    .await
    .unwrap();
    s.apply_queue("jobs", json!({"taskTimeMs": T}))
        .await
        .unwrap();
    for (pool, max) in [("big", 30), ("small", 10)] {
        s.apply_pool(
            pool,
            json!({"queues": ["jobs"], "processesPerPod": 5, "handler": "builtin",
                "autoscaling": {"minReplicas": 0, "maxReplicas": max, "drainTargetSeconds": 60,
                    "activationDepth": 0, "periodMs": 60000,
                    "scaleDownStabilizationSeconds": 3, "scaleUpMaxStep": 4}}),
        )
        .await
        .unwrap();
    }
    let desired = |pool: &'static str| {
        let api = s.pools();
        async move {
            let st = api.get_opt(pool).await.ok()??.status?;
            Some((st.desired_replicas, st.decision?.message))
        }
    };
    let settled = eventually(
        Duration::from_secs(40),
        "both pools sized at 3 + 1",
        || async {
            let (big, small) = (desired("big").await?, desired("small").await?);
            let (db, ds) = (
                s.replicas("big").await.ok()??.0,
                s.replicas("small").await.ok()??.0,
            );
            (big.0 == 3 && small.0 == 1 && db == 3 && ds == 1).then_some((big, small))
        },
    )
    .await;
    let (big, small) = match settled {
        Ok(v) => v,
        Err(e) => panic!(
            "{e}: big {:?}, small {:?}\n{}",
            desired("big").await,
            desired("small").await,
            logs(&s)
        ),
    };
    assert_eq!(big.0 + small.0, alone, "{big:?} {small:?}");
    eprintln!("shared queue: big {big:?}, small {small:?}; one pool alone: {alone}");
    s.shutdown().await;
}

/// The pool's live pods (not being deleted), by name.
async fn live_pods(s: &Scenario, pool: &str) -> std::collections::BTreeSet<String> {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(s.client.clone(), &s.ns);
    let lp = kube::api::ListParams::default().labels(&format!(
        "{}={pool}",
        funcscale_operator::crd_ext::POOL_LABEL
    ));
    pods.list(&lp)
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.metadata.name)
                .collect()
        })
        .unwrap_or_default()
}

/// Running tasks per pod of `queue`, read as the operator reads them.
async fn running_by_pod(
    s: &Scenario,
    con: &mut redis::aio::MultiplexedConnection,
    queue: &str,
) -> std::collections::BTreeMap<String, u64> {
    use funcscale_worker::protocol::stop;
    // the workers' registry and in-flight lists are under their queues' namespace
    let keys = s.keys().in_namespace(Some(s.ns.clone()));
    let id = s.queue_id(queue);
    let sets: Vec<Vec<String>> = stop::running_slots_pipeline(&keys, &[id.as_str()])
        .query_async(con)
        .await
        .unwrap_or_default();
    let slots = stop::running_slots(&keys, &sets);
    if slots.is_empty() {
        return Default::default();
    }
    let pods: Vec<Option<String>> = stop::slot_pods_pipeline(&keys, &slots)
        .query_async(con)
        .await
        .unwrap_or_default();
    stop::count_by_pod(&pods)
}

/// idle pods go first: a pool of 4 pods of one process each, the two youngest (and most
/// recently ready, which the ReplicaSet would delete first by itself) running long tasks,
/// shrinks to 2 → the two idle pods are the ones deleted (and got the deletion cost), the busy
/// ones keep running, and every task ran exactly once (none put back).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shrink_removes_the_idle_pods() {
    use std::collections::{BTreeMap, BTreeSet};
    let s = Scenario::start(Options::new("idlefirst")).await.unwrap();
    let mut con = redis().await;
    let (blockers, blocker_runs) = (
        format!("{}:test:b", s.prefix),
        format!("{}:test:b-runs", s.prefix),
    );
    let (long, long_runs) = (
        format!("{}:test:l", s.prefix),
        format!("{}:test:l-runs", s.prefix),
    );
    s.apply_queue("jobs", json!({"taskTimeMs": 1000, "maxRetries": 3}))
        .await
        .unwrap();
    let pool = |n: i32| json!({"queues": ["jobs"], "processesPerPod": 1, "handler": "builtin", "replicas": n});
    s.apply_pool("w", pool(2)).await.unwrap();
    let ready = |n: i32| {
        let s = &s;
        async move {
            eventually(
                Duration::from_secs(60),
                &format!("{n} ready workers"),
                || async {
                    (s.replicas("w").await.ok().flatten() == Some((n, n))
                        && live_pods(s, "w").await.len() == n as usize)
                        .then_some(())
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", logs(s)));
        }
    };
    ready(2).await;
    let old = live_pods(&s, "w").await;
    // the two old pods busy for a while, so that the new ones take the long tasks
    s.enqueue(
        "jobs",
        "record",
        &format!("[\"{blockers}\", 25000, \"{blocker_runs}\"]"),
        2,
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(10), "both old pods busy", || {
        let mut con = con.clone();
        let blockers = blockers.clone();
        async move { (int(&mut con, "SCARD", &blockers).await == 2).then_some(()) }
    })
    .await
    .unwrap();
    s.apply_pool("w", pool(4)).await.unwrap();
    ready(4).await;
    let young: BTreeSet<String> = live_pods(&s, "w").await.difference(&old).cloned().collect();
    assert_eq!(young.len(), 2, "{young:?}");
    s.enqueue(
        "jobs",
        "record",
        &format!("[\"{long}\", 40000, \"{long_runs}\"]"),
        2,
    )
    .await
    .unwrap();
    // the blockers end: the old pods are idle, the young ones run one long task each
    let want: BTreeMap<String, u64> = young.iter().map(|p| (p.clone(), 1)).collect();
    eventually(Duration::from_secs(40), "only the young pods busy", || {
        let (s, mut con, want) = (&s, con.clone(), want.clone());
        async move { (running_by_pod(s, &mut con, "jobs").await == want).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    assert_eq!(int(&mut con, "SCARD", &long).await, 2, "the long tasks run");

    // record every pod that gets deleted, with its deletion cost: a watch sees each deletion
    // (a pod with nothing to drain is gone within milliseconds, between two polls of a list)
    let deleted = std::sync::Arc::new(std::sync::Mutex::new(
        BTreeMap::<String, Option<String>>::new(),
    ));
    let (watching, mut watch_started) = tokio::sync::watch::channel(false);
    let watcher = {
        use futures::StreamExt;
        use kube::runtime::watcher::{self, Event};
        let (deleted, client, ns) = (deleted.clone(), s.client.clone(), s.ns.clone());
        tokio::spawn(async move {
            let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
                kube::Api::namespaced(client, &ns);
            let mut events = watcher::watcher(pods, watcher::Config::default()).boxed();
            while let Some(e) = events.next().await {
                let p = match e {
                    Ok(Event::InitDone) => {
                        let _ = watching.send(true);
                        continue;
                    }
                    Ok(Event::Apply(p)) if p.metadata.deletion_timestamp.is_some() => p,
                    Ok(Event::Delete(p)) => p,
                    _ => continue,
                };
                let cost = p
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost").cloned());
                deleted
                    .lock()
                    .unwrap()
                    .entry(p.metadata.name.unwrap_or_default())
                    .or_insert(cost);
            }
        })
    };
    watch_started.wait_for(|w| *w).await.unwrap();
    let t = tokio::time::Instant::now();
    s.apply_pool("w", pool(2)).await.unwrap();
    eventually(Duration::from_secs(40), "the pool at 2 pods", || async {
        (s.replicas("w").await.ok().flatten().map(|r| r.0) == Some(2)
            && live_pods(&s, "w").await.len() == 2)
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    watcher.abort();
    let deleted = deleted.lock().unwrap().clone();
    let kept = live_pods(&s, "w").await;
    assert_eq!(
        kept,
        young,
        "the busy pods must stay; deleted {deleted:?}\n{}",
        logs(&s)
    );
    assert_eq!(
        deleted.keys().cloned().collect::<BTreeSet<_>>(),
        old,
        "the idle pods are the ones deleted"
    );
    for (pod, cost) in &deleted {
        assert_eq!(cost.as_deref(), Some("-1000"), "{pod}: deletion cost");
    }
    // the long tasks finish where they run: each ran once, nothing put back
    eventually(Duration::from_secs(60), "the long tasks to finish", || {
        let (s, mut con) = (&s, con.clone());
        async move {
            running_by_pod(s, &mut con, "jobs")
                .await
                .is_empty()
                .then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    let runs = |key: String| {
        let mut con = con.clone();
        async move {
            let v: Vec<String> = redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut con)
                .await
                .unwrap();
            v
        }
    };
    let (l, b) = (
        runs(long_runs.clone()).await,
        runs(blocker_runs.clone()).await,
    );
    assert_eq!(l.len(), 2, "a long task ran twice or not at all: {l:?}");
    assert_eq!(b.len(), 2, "a blocker ran twice or not at all: {b:?}");
    assert_eq!(
        int(&mut con, "LLEN", &s.queue_key("jobs")).await,
        0,
        "nothing put back"
    );
    assert_eq!(
        kept,
        live_pods(&s, "w").await,
        "the busy pods were not removed after their tasks"
    );
    eprintln!("idle pods first: 4 → 2 in {took:?}; deleted {deleted:?}, kept {kept:?}");
    s.shutdown().await;
}
