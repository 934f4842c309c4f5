//! The real `kubectl-funcscale` binary against the test API server through a kubeconfig, and
//! real Redis at 127.0.0.1:6379 reached through a FuncQueue's `spec.redis.urlSecretRef` (and,
//! for `status`'s note of the master, a Redis Cluster and a Sentinel set of their own).
//! Needs the binary built (`cargo build --workspace --bins`); each test has its own namespace
//! and key prefix.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use funcscale_e2e::TestCluster;
use funcscale_e2e::scenario::bin;
use funcscale_operator::crd::{FuncQueue, FuncWorkerPool};
use funcscale_worker::protocol::{self, Envelope, Keys};
use funcscale_worker::worker::{Worker, now_ms};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
const WHY: &str = "formula: 10000 monitors × 500 ms / (5 × 60000 ms) = 17";

/// A namespace and key prefix of its own, and the test cluster.
struct Fixture {
    cluster: TestCluster,
    ns: String,
    keys: Keys,
}

impl Fixture {
    async fn start(name: &str) -> Self {
        let cluster = TestCluster::start().await.unwrap();
        cluster.install_crds().await.unwrap();
        let unique = format!("{name}-{}-{}", std::process::id(), fastrand_suffix());
        let ns = unique.clone();
        Self {
            cluster,
            ns,
            keys: Keys::new(format!("test-plugin-{unique}")),
        }
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(REDIS_URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn secret(&self, name: &str, url: &str) {
        let api: Api<Secret> = Api::namespaced(self.cluster.client.clone(), &self.ns);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": name},
                "stringData": {"url": url}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    }

    /// Create a queue and give it a status, as the operator would.
    async fn queue(&self, name: &str, spec: Value, status: Value) {
        let api: Api<FuncQueue> = Api::namespaced(self.cluster.client.clone(), &self.ns);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap(),
        )
        .await
        .unwrap();
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
    }

    async fn pool(&self, name: &str, spec: Value, status: Value) {
        let api: Api<FuncWorkerPool> = Api::namespaced(self.cluster.client.clone(), &self.ns);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap(),
        )
        .await
        .unwrap();
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
    }

    /// The id in Redis of FuncQueue `name` of the test's namespace.
    fn id(&self, name: &str) -> String {
        Keys::queue_id(&self.ns, name)
    }

    async fn enqueue(&self, name: &str, ids: &[&str], func: &str, max_retries: u32) {
        let queue = &self.id(name);
        let envs: Vec<Envelope> = ids
            .iter()
            .map(|id| {
                let mut e = Envelope::new(*id, func, queue, now_ms());
                e.max_retries = Some(max_retries);
                e
            })
            .collect();
        protocol::enqueue(&mut self.redis().await, &self.keys, queue, &envs)
            .await
            .unwrap();
    }

    /// Run a worker on `queue` until the queue is empty and `dead` dead letters are there.
    async fn work_until_dead(&self, name: &str, dead: u64) {
        let queue = &self.id(name);
        let worker = Worker::builder()
            .redis_url(REDIS_URL)
            .prefix(self.keys.prefix())
            .queues([queue.as_str()])
            .processes(1)
            .build()
            .await
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(worker.run(async move {
            let _ = stopped.await;
        }));
        let mut con = self.redis().await;
        let dead_key = self.keys.dead(queue);
        let queue_key = self.keys.queue(queue);
        funcscale_e2e::eventually(
            Duration::from_secs(15),
            "the failing task dead-lettered",
            || {
                let mut con = con.clone();
                let (dead_key, queue_key) = (dead_key.clone(), queue_key.clone());
                async move {
                    let (n, waiting): (u64, u64) = redis::pipe()
                        .llen(&dead_key)
                        .llen(&queue_key)
                        .query_async(&mut con)
                        .await
                        .ok()?;
                    (n == dead && waiting == 0).then_some(())
                }
            },
        )
        .await
        .expect("the failing task is dead-lettered");
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let _: () = redis::cmd("PING").query_async(&mut con).await.unwrap();
    }

    /// Run the plugin with this cluster's kubeconfig, and no Redis URL in the environment:
    /// whatever it reads in Redis, it reached through the cluster.
    async fn plugin(&self, args: &[&str]) -> Output {
        self.plugin_with(&self.cluster.kubeconfig, args).await
    }

    async fn plugin_with(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        let exe = bin("kubectl-funcscale").unwrap();
        let out = tokio::process::Command::new(exe)
            .args(args)
            .args(["--prefix", self.keys.prefix()])
            .env("KUBECONFIG", kubeconfig)
            .env_remove("FUNCSCALE_REDIS_URL")
            .env_remove("FUNCSCALE_PREFIX")
            .stdin(Stdio::null())
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), out)
            .await
            .expect("the plugin finishes")
            .unwrap();
        eprintln!(
            "$ kubectl funcscale {}\n{}{}-> {:?}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status.code()
        );
        out
    }

    async fn cleanup(&self) {
        let mut con = self.redis().await;
        let pattern = format!("{}:*", self.keys.prefix());
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut con)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut con)
                .await
                .unwrap();
        }
    }
}

fn fastrand_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:x}", nanos % 0xfffff)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// q8 reads its Redis from a Secret: 4 waiting tasks and 1 dead letter; worker-8 serves it.
async fn seed(f: &Fixture) {
    f.secret("queue-redis", &format!("{REDIS_URL}\n")).await;
    f.queue(
        "q8",
        json!({"redis": {"urlSecretRef": {"name": "queue-redis", "key": "url"}}}),
        json!({
            "depth": 3, "oldestTaskAgeSeconds": 75.0, "arrivalRate": 0.5, "completionRate": 0.25,
            "taskTimeMs": 500.0, "consumers": ["worker-8"],
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Polled", "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "MetricsAvailable", "status": "True", "reason": "Polled", "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ]
        }),
    )
    .await;
    f.pool(
        "worker-8",
        json!({"queues": ["q8"], "autoscaling": {"minReplicas": 1, "maxReplicas": 20}}),
        json!({
            "replicas": 3, "readyReplicas": 2, "desiredReplicas": 17,
            "decision": {"rule": "CronLoad", "message": WHY},
            "conditions": [{"type": "Ready", "status": "True", "reason": "Scaled", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        }),
    )
    .await;
    f.enqueue("q8", &["order-1-bad"], "fail", 0).await;
    f.work_until_dead("q8", 1).await;
    f.enqueue(
        "q8",
        &["order-2", "order-3", "order-4", "order-5"],
        "noop",
        3,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_why_and_live_figures_read_through_the_queues_secret() {
    let f = Fixture::start("plug-status").await;
    seed(&f).await;
    // a queue whose Redis does not answer, and one with no connection of its own
    f.queue(
        "q-down",
        json!({"redis": {"url": "redis://127.0.0.1:1/0"}}),
        json!({"conditions": [{"type": "Served", "status": "False", "reason": "NoPool",
            "message": "no FuncWorkerPool lists this queue", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
    )
    .await;
    f.queue("q-plain", json!({}), json!({})).await;

    let out = f.plugin(&["status", "-n", &f.ns, "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["namespace"], json!(f.ns));
    let pool = &doc["pools"][0];
    assert_eq!(pool["name"], "worker-8");
    assert_eq!(pool["rule"], "CronLoad");
    assert_eq!(pool["why"], WHY);
    assert_eq!(
        (
            &pool["replicas"],
            &pool["readyReplicas"],
            &pool["desiredReplicas"]
        ),
        (&json!(3), &json!(2), &json!(17))
    );
    let queue = |name: &str| {
        doc["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {doc}"))
            .clone()
    };
    let q8 = queue("q8");
    assert_eq!(q8["depth"], 3, "the operator's figure, from .status");
    assert_eq!(q8["arrivalsPerMinute"], 30.0);
    let live = &q8["redis"]["live"];
    assert_eq!(live["depth"], 4, "live, through the Secret's URL: {q8}");
    assert_eq!(live["dead_letters"], 1, "{q8}");
    assert!(
        q8["redis"]["source"]
            .as_str()
            .unwrap()
            .starts_with("spec.redis.urlSecretRef (Secret queue-redis"),
        "{q8}"
    );
    let down = queue("q-down");
    assert!(down["redis"]["live"].is_null());
    assert!(
        down["redis"]["error"]
            .as_str()
            .unwrap()
            .starts_with("cannot reach redis://127.0.0.1:1/0"),
        "{down}"
    );
    assert_eq!(down["problems"][0]["reason"], "NoPool");
    let plain = queue("q-plain");
    assert!(
        plain["redis"]["error"]
            .as_str()
            .unwrap()
            .starts_with("no spec.redis"),
        "{plain}"
    );

    // the table: the pool's why and q8's live waiting and dead counts
    let out = f.plugin(&["status", "-n", &f.ns]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let pool_line = text.lines().find(|l| l.starts_with("worker-8")).unwrap();
    assert!(pool_line.ends_with(WHY), "{text}");
    let q8: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("q8 "))
        .unwrap()
        .split_whitespace()
        .collect();
    // QUEUE DEPTH OLDEST IN/MIN OUT/MIN TASK-MS POOLS WAITING DELAYED RUNNING DEAD
    assert_eq!(
        q8,
        [
            "q8", "3", "1m15s", "30", "15", "500", "worker-8", "4", "0", "0", "1"
        ],
        "{text}"
    );
    let down = text.lines().find(|l| l.starts_with("q-down")).unwrap();
    assert!(
        down.contains("Served=False(NoPool); redis: cannot reach"),
        "{text}"
    );

    // -A: every namespace, with a NAMESPACE column
    let out = f.plugin(&["status", "-A"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("NAMESPACE"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("{}  worker-8", f.ns))
                || l.split_whitespace().take(2).eq([f.ns.as_str(), "worker-8"])),
        "{text}"
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_and_dead_letters_use_the_queues_connection_and_the_contexts_namespace() {
    let f = Fixture::start("plug-tasks").await;
    seed(&f).await;
    // a kubeconfig whose context's namespace is the test's: no -n needed
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let text = std::fs::read_to_string(&f.cluster.kubeconfig)
        .unwrap()
        .replace("namespace: default", &format!("namespace: {}", f.ns));
    std::fs::write(&kubeconfig, text).unwrap();

    let out = f
        .plugin_with(
            &kubeconfig,
            &["tasks", "list", "--queue", "q8", "--json", "-v"],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut ids: Vec<String> = stdout(&out)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["order-1-bad", "order-2", "order-3", "order-4", "order-5"]
    );
    assert!(
        stderr(&out).contains("spec.redis.urlSecretRef (Secret queue-redis, key url)"),
        "-v says which connection: {}",
        stderr(&out)
    );

    let out = f
        .plugin_with(&kubeconfig, &["dead-letters", "list", "--queue", "q8"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("order-1-bad "), "{text}");
    assert!(text.contains("failed on purpose"), "{text}");

    // `tasks show` names no queue: the record is found through the namespace's FuncQueues
    let out = f
        .plugin_with(&kubeconfig, &["tasks", "show", "order-1-bad"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&record["id"], &record["status"]),
        (&json!("order-1-bad"), &json!("dead"))
    );
    // a task of another tenant's queue `q8` on the same Redis is not shown here
    let theirs = Keys::queue_id("another-tenant", "q8");
    protocol::enqueue(
        &mut f.redis().await,
        &f.keys,
        &theirs,
        &[Envelope::new("order-theirs", "noop", &theirs, now_ms())],
    )
    .await
    .unwrap();
    for id in ["order-404", "order-theirs"] {
        let out = f.plugin_with(&kubeconfig, &["tasks", "show", id]).await;
        assert_eq!(out.status.code(), Some(1), "{id}");
        assert!(
            stderr(&out).contains(&format!("no record of task \"{id}\"")),
            "{}",
            stderr(&out)
        );
    }
    let out = f
        .plugin_with(&kubeconfig, &["tasks", "show", "order-404"])
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no record of task \"order-404\""),
        "{}",
        stderr(&out)
    );

    // -n overrides the context's namespace: nothing named q8 in `default`
    let out = f
        .plugin_with(
            &kubeconfig,
            &["tasks", "list", "--queue", "q8", "-n", "default"],
        )
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "FuncQueue q8 not found in namespace default; pass --redis-url to read Redis directly"
        ),
        "{}",
        stderr(&out)
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_queue_is_a_usage_error_unless_a_url_is_given() {
    let f = Fixture::start("plug-missing").await;
    f.enqueue("q9", &["loose-1"], "noop", 3).await;

    for args in [
        vec!["tasks", "list", "--queue", "q9"],
        vec!["dead-letters", "list", "--queue", "q9"],
    ] {
        let mut a = args.clone();
        a.extend(["-n", &f.ns]);
        let out = f.plugin(&a).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains(&format!(
                "FuncQueue q9 not found in namespace {}; pass --redis-url to read Redis directly",
                f.ns
            )),
            "{}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"));
    }

    // with --redis-url the queue is read directly, no FuncQueue needed
    let out = f
        .plugin(&[
            "tasks",
            "list",
            "--queue",
            "q9",
            "-n",
            &f.ns,
            "--redis-url",
            REDIS_URL,
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("loose-1"), "{}", stdout(&out));

    // other bad input: exit 2 with the flag named
    let out = f
        .plugin(&["status", "--context", "nope", "-n", &f.ns])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--context nope: no such context"),
        "{}",
        stderr(&out)
    );
    let out = f
        .plugin(&["dead-letters", "requeue", "--queue", "q9", "-n", &f.ns])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--id"), "{}", stderr(&out));
    let out = f
        .plugin(&[
            "dead-letters",
            "purge",
            "--queue",
            "q9",
            "--all",
            "-n",
            &f.ns,
        ])
        .await;
    assert_eq!(out.status.code(), Some(2), "stdin is not a terminal");
    assert!(stderr(&out).contains("pass --yes"), "{}", stderr(&out));
    let out = f
        .plugin(&["tasks", "list", "--queue", "q9", "--redis-url", "nonsense"])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--redis-url: not a Redis URL"),
        "{}",
        stderr(&out)
    );
    f.cleanup().await;
}

/// `outbox` reaches the Redis of the queue named by `--queue` (its Secret read through the
/// API): a parked delivery is listed, requeued (pending again, attempt 0, same id), and a
/// command naming no Redis is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_lists_and_requeues_parked_deliveries_through_the_queues_connection() {
    let f = Fixture::start("plug-outbox").await;
    seed(&f).await;
    let item = protocol::OutboxItem {
        id: "order-1-bad:failure".into(),
        url: "http://receiver.invalid/hook".into(),
        attempt: protocol::OUTBOX_MAX_ATTEMPTS,
        body: json!({"event": "failure"}),
        error: Some("HTTP 503".into()),
    };
    let mut con = f.redis().await;
    // the outbox of the queue's namespace (earlier versions), the queue's own outbox, and
    // another namespace's queue's (not listed)
    let keys = f.keys.clone().in_namespace(Some(f.ns.clone()));
    let q8 = Keys::queue_id(&f.ns, "q8");
    let other = Keys::queue_id(&format!("{}-other", f.ns), "q8");
    for (dead, id) in [
        (keys.outbox_dead(), "order-1-bad:failure"),
        (keys.queue_outbox_dead(&q8), "order-2-bad:failure"),
        (keys.queue_outbox_dead(&other), "order-3-bad:failure"),
    ] {
        let item = protocol::OutboxItem {
            id: id.into(),
            ..item.clone()
        };
        let _: () = redis::cmd("LPUSH")
            .arg(dead)
            .arg(serde_json::to_string(&item).unwrap())
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let q = ["--queue", "q8", "-n", f.ns.as_str()];
    let json_lines = |out: &Output| -> Vec<Value> {
        stdout(out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    let out = f
        .plugin(&[&["outbox", "list", "--dead", "--json"][..], &q].concat())
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut parked = json_lines(&out);
    parked.sort_by_key(|v| v["id"].as_str().unwrap().to_string());
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert_eq!(
        (&parked[0]["id"], &parked[0]["error"]),
        (&json!("order-1-bad:failure"), &json!("HTTP 503"))
    );
    assert_eq!(parked[1]["id"], json!("order-2-bad:failure"));

    let out = f
        .plugin(&[&["outbox", "requeue", "--all"][..], &q].concat())
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = f
        .plugin(&[&["outbox", "list", "--json"][..], &q].concat())
        .await;
    let mut pending = json_lines(&out);
    pending.sort_by_key(|v| v["id"].as_str().unwrap().to_string());
    assert_eq!(pending.len(), 2, "{pending:?}");
    // each back in the outbox it was parked from
    assert_eq!(
        (
            &pending[0]["id"],
            &pending[0]["attempt"],
            &pending[0]["outbox"]
        ),
        (
            &json!("order-1-bad:failure"),
            &json!(0),
            &json!(keys.outbox())
        )
    );
    assert_eq!(
        (&pending[1]["id"], &pending[1]["outbox"]),
        (
            &json!("order-2-bad:failure"),
            &json!(keys.queue_outbox(&q8))
        )
    );
    let other_parked: i64 = redis::cmd("LLEN")
        .arg(keys.queue_outbox_dead(&other))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(other_parked, 1, "another namespace's outbox is not touched");
    let out = f
        .plugin(&[&["outbox", "list", "--dead", "--json"][..], &q].concat())
        .await;
    assert!(json_lines(&out).is_empty(), "{}", stdout(&out));

    let out = f.plugin(&["outbox", "list", "-n", &f.ns]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--queue"), "{}", stderr(&out));
    f.cleanup().await;
}

/// Enqueue `n` tasks into the queue `id` of a Redis reached through `url` (any topology).
async fn enqueue_at(url: &str, keys: &Keys, id: &str, n: usize) {
    let envs: Vec<Envelope> = (0..n)
        .map(|i| Envelope::new(format!("t{i}"), "noop", id, now_ms()))
        .collect();
    let mut con = funcscale_connect::Conn::open(url).await.unwrap();
    protocol::enqueue(&mut con, keys, id, &envs).await.unwrap();
}

/// `status --json`'s queue `name`, and the note of its table line.
async fn queue_status(f: &Fixture, name: &str) -> (Value, String) {
    let out = f.plugin(&["status", "-n", &f.ns, "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let queue = doc["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {doc}"))
        .clone();
    let out = f.plugin(&["status", "-n", &f.ns]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = stdout(&out)
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} in {}", stdout(&out)))
        .to_string();
    (queue, line)
}

/// A queue on a Redis Cluster: `status` names the master that serves the queue's hash slot
/// (from the cluster's slot map), not the seed nodes of the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_the_cluster_master_that_serves_the_queue() {
    use funcscale_e2e::redis_cluster::RedisCluster;
    let f = Fixture::start("plug-cluster").await;
    let mut c = RedisCluster::start().await.unwrap();
    f.queue("qc", json!({"redis": {"url": c.url()}}), json!({}))
        .await;
    let id = f.id("qc");
    enqueue_at(&c.url(), &f.keys, &id, 3).await;
    let slot = funcscale_protocol::keys::slot(&f.keys.queue(&id));
    let master = format!("127.0.0.1:{}", c.master_of_slot(slot).await.unwrap());

    let (q, line) = queue_status(&f, "qc").await;
    assert_eq!(q["redis"]["topology"], "cluster", "{q}");
    assert_eq!(q["redis"]["live"]["depth"], 3, "{q}");
    assert_eq!(
        q["redis"]["node"], master,
        "the master of slot {slot}, not the seeds: {q}"
    );
    assert!(
        line.contains(&format!("cluster: master {master}")),
        "{line}"
    );
}

/// A queue on a Sentinel set: `status` names the master the sentinels name now, also after a
/// failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_the_sentinel_sets_current_master() {
    use funcscale_e2e::redis_topology::{SentinelOptions, SentinelSet};
    let f = Fixture::start("plug-sentinel").await;
    let mut set = SentinelSet::start(SentinelOptions::default())
        .await
        .unwrap();
    f.queue("qs", json!({"redis": {"url": set.url()}}), json!({}))
        .await;
    let id = f.id("qs");
    enqueue_at(&set.url(), &f.keys, &id, 2).await;
    let first = set.master_port().await.unwrap();

    let (q, line) = queue_status(&f, "qs").await;
    assert_eq!(q["redis"]["topology"], "sentinel", "{q}");
    assert_eq!(q["redis"]["live"]["depth"], 2, "{q}");
    assert_eq!(q["redis"]["node"], format!("127.0.0.1:{first}"), "{q}");
    assert!(
        line.contains(&format!("sentinel: master 127.0.0.1:{first}")),
        "{line}"
    );

    set.wait_replicated(2, Duration::from_secs(5))
        .await
        .unwrap();
    let old = set.kill_master().await.unwrap();
    let new = set
        .wait_for_new_master(old, Duration::from_secs(30))
        .await
        .unwrap();
    let (q, line) = queue_status(&f, "qs").await;
    assert_eq!(q["redis"]["node"], format!("127.0.0.1:{new}"), "{q}");
    assert_eq!(q["redis"]["live"]["depth"], 2, "{q}");
    assert!(
        line.contains(&format!("sentinel: master 127.0.0.1:{new}")),
        "{line}"
    );
}
