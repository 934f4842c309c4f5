//! Celery queues as the operator reads them, laid out by real Celery and kombu (from the e2e
//! virtualenv, `e2e/control-plane/celery-venv.sh`) on the real Redis at 127.0.0.1:6379: the
//! depth over every priority list kombu uses (default and custom `priority_steps`, `sep`,
//! `global_keyprefix`), the oldest task's age from the `funcscale_enqueued_ms` header, and
//! the tasks delivered to workers (prefetch + `acks_late`) but not acknowledged as in-flight,
//! per queue; the commands the operator renders for `spec.celery` pools start real Celery; and,
//! on the real control plane with the process kubelet, a `spec.celery` pool keeps the pods its
//! unacknowledged tasks occupy and lets them go once the tasks are acknowledged. Each test has
//! its own queue names and key prefix, so tests run in parallel.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use funcscale_e2e::node::ImageRule;
use funcscale_e2e::scenario::{Options, REDIS_URL as URL, Scenario};
use funcscale_e2e::wait::eventually;
use funcscale_operator::context::Config;
use funcscale_operator::crd::{
    CeleryApp as CeleryApp_, CeleryPoolKind, CeleryTransport, FuncQueue, FuncQueueSpec,
    FuncWorkerPool, FuncWorkerPoolSpec, PoolRole, ProcessLimits, QueueFormat,
};
use funcscale_operator::pool::build;
use funcscale_operator::pool::size::{QueueReading, aggregate};
use funcscale_operator::pool::validate::Valid;
use funcscale_operator::redis_metrics::{
    MetricsCache, Poller, PollerConfig, QueueId, QueueMetrics, QueueTarget, Reading, RedisEndpoint,
    Registry,
};
use funcscale_protocol::Keys;
use funcscale_worker::worker::now_ms;
use redis::AsyncCommands;

/// The Celery application of these tests: one task that sleeps, the transport options from
/// `TRANSPORT` (JSON), `acks_late` and the prefetch multiplier from `PREFETCH`. Run as a
/// script it publishes `[queue, priority, count, funcscale_enqueued_ms or null, seconds,
/// countdown seconds (optional)]` batches with `apply_async`.
const TASKS_PY: &str = r#"
import json, os, sys, time
from celery import Celery
app = Celery('tasks', broker=os.environ['BROKER'])
app.conf.broker_transport_options = json.loads(os.environ.get('TRANSPORT', '{}'))
app.conf.task_acks_late = True
app.conf.worker_prefetch_multiplier = int(os.environ.get('PREFETCH', '1'))

@app.task(name='tasks.work')
def work(seconds):
    time.sleep(seconds)

if __name__ == '__main__':
    for batch in json.loads(sys.argv[1]):
        queue, pri, n, at, secs = batch[:5]
        countdown = batch[5] if len(batch) > 5 else None
        for _ in range(n):
            h = {'funcscale_enqueued_ms': at} if at else {}
            work.apply_async(args=(secs,), queue=queue, priority=pri, headers=h,
                             countdown=countdown)
"#;

struct CeleryApp {
    dir: tempfile::TempDir,
    venv: PathBuf,
    transport: serde_json::Value,
}

impl CeleryApp {
    fn new(transport: serde_json::Value) -> Self {
        let venv = funcscale_e2e::scenario::celery_venv().expect("celery-venv.sh runs");
        let dir = tempfile::Builder::new()
            .prefix("funcscale-celery-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("tasks.py"), TASKS_PY).unwrap();
        Self {
            dir,
            venv,
            transport,
        }
    }

    fn command(&self, program: &str, prefetch: u32) -> Command {
        let mut c = Command::new(self.venv.join("bin").join(program));
        c.current_dir(self.dir.path())
            .env("PYTHONPATH", self.dir.path())
            .env("BROKER", URL)
            .env("TRANSPORT", self.transport.to_string())
            .env("PREFETCH", prefetch.to_string());
        c
    }

    /// Publish with `apply_async`, as a producer does.
    fn publish(&self, batches: serde_json::Value) {
        let out = self
            .command("python", 1)
            .arg("tasks.py")
            .arg(batches.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "publishing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A worker on `queue`, one thread, `prefetch` × 1 messages held.
    fn worker(&self, queue: &str, prefetch: u32, log: &Path) -> Killed {
        let log = std::fs::File::create(log).unwrap();
        let child = self
            .command("celery", prefetch)
            .args([
                "-A", "tasks", "worker", "-Q", queue, "-c", "1", "-P", "threads",
            ])
            .args(["-n", &format!("{queue}@%h"), "-l", "WARNING"])
            .args([
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Killed(child)
    }
}

/// A worker process, killed when dropped (its 60 s tasks are not waited for).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn con() -> redis::aio::MultiplexedConnection {
    redis::Client::open(URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn unique(tag: &str) -> String {
    format!("cel-{tag}-{}-{}", std::process::id(), now_ms())
}

/// Delete every key starting with `prefix`.
async fn cleanup(prefix: &str) {
    let lua = "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end";
    let _: () = redis::Script::new(lua)
        .arg(format!("{prefix}*"))
        .invoke_async(&mut con().await)
        .await
        .unwrap();
}

fn celery_queue(name: &str, transport: Option<CeleryTransport>) -> FuncQueue {
    let mut q = FuncQueue::new(
        name,
        FuncQueueSpec {
            format: QueueFormat::Celery,
            celery: transport,
            ..Default::default()
        },
    );
    q.metadata.namespace = Some("ns".into());
    q
}

/// Poll `queues` once; their readings by name, and their targets.
async fn poll(queues: &[&FuncQueue]) -> Vec<(QueueMetrics, QueueTarget)> {
    let registry = Registry::default();
    let cache = MetricsCache::default();
    let keys = Keys::new(unique("fs"));
    for q in queues {
        let name = q.metadata.name.clone().unwrap();
        registry.upsert(
            QueueId::new("ns", &name),
            QueueTarget::for_queue(q, &name, RedisEndpoint::new(URL), &keys, 60_000),
        );
    }
    Poller::new(registry.clone(), cache.clone(), PollerConfig::default())
        .poll_once(now_ms())
        .await;
    queues
        .iter()
        .map(|q| {
            let id = QueueId::new("ns", q.metadata.name.clone().unwrap());
            match cache.get(&id) {
                Some(Reading::Ok(m)) => (m, registry.get(&id).unwrap()),
                other => panic!("{id}: {other:?}"),
            }
        })
        .collect()
}

/// The lists Celery actually wrote for `queue` (behind `prefix`), with their lengths.
async fn lists_in_redis(prefix: &str, queue: &str) -> Vec<(String, u64)> {
    let mut c = con().await;
    let found: Vec<String> = c.keys(format!("{prefix}{queue}*")).await.unwrap();
    let mut out = Vec::new();
    for k in found {
        let t: String = redis::cmd("TYPE")
            .arg(&k)
            .query_async(&mut c)
            .await
            .unwrap();
        if t == "list" {
            out.push((k.clone(), c.llen(&k).await.unwrap()));
        }
    }
    out.sort();
    out
}

/// Every priority 0..=9 published, 1 + p tasks at priority p, enqueued 5 s ago; the oldest (the
/// first published, priority 0) with an enqueue time 30 s ago. The reported depth is what Celery
/// wrote into Redis, in every list, and each list Celery wrote is one the operator reads.
async fn depth_over_every_priority_list(
    transport: serde_json::Value,
    spec: Option<CeleryTransport>,
) {
    let prefix = spec
        .as_ref()
        .map(|t| t.global_keyprefix.clone())
        .unwrap_or_default();
    let name = unique("prio");
    let app = CeleryApp::new(transport);
    let at = now_ms() - 30_000;
    let mut batches = vec![serde_json::json!([name, 0, 1, at, 1])];
    // the others 5 s ago: the age is the earliest of the lists' tails, not any tail
    for p in 0..=9u32 {
        batches.push(serde_json::json!([name, p, 1 + p, at + 25_000, 1]));
    }
    app.publish(serde_json::Value::Array(batches));
    let published: u64 = 1 + (0..=9u64).map(|p| 1 + p).sum::<u64>();

    let q = celery_queue(&name, spec);
    let (m, target) = poll(&[&q]).await.remove(0);
    let written = lists_in_redis(&prefix, &name).await;
    assert!(
        written.len() >= 4,
        "Celery wrote one list per step: {written:?}"
    );
    for (list, _) in &written {
        assert!(
            target.lists.contains(list),
            "Celery wrote {list:?}, the operator reads {:?}",
            target.lists
        );
    }
    let in_redis: u64 = written.iter().map(|(_, n)| n).sum();
    assert_eq!(in_redis, published);
    assert_eq!(m.depth, published, "{written:?}");
    let age = m
        .oldest_age_seconds
        .expect("the oldest task's header is read");
    assert!((29.0..40.0).contains(&age), "oldest age {age}");
    assert_eq!((m.in_flight, m.in_flight_measured), (0, true));
    cleanup(&format!("{prefix}{name}")).await;
    cleanup(&format!("{prefix}_kombu.binding*.{name}")).await;
    if !prefix.is_empty() {
        cleanup(&prefix).await;
    }
}

#[tokio::test]
async fn celery_depth_with_kombus_default_transport_options() {
    depth_over_every_priority_list(serde_json::json!({}), None).await;
}

#[tokio::test]
async fn celery_depth_with_custom_priority_steps_separator_and_global_keyprefix() {
    let prefix = format!("{}:", unique("gp"));
    let transport = serde_json::json!({
        "priority_steps": [0, 2, 5, 8],
        "sep": ":",
        "global_keyprefix": prefix,
    });
    let spec = CeleryTransport {
        priority_steps: vec![0, 2, 5, 8],
        separator: ":".into(),
        global_keyprefix: prefix,
        ..Default::default()
    };
    depth_over_every_priority_list(transport, Some(spec)).await;
}

/// Two workers with prefetch and `acks_late` hold tasks delivered but not acknowledged (in
/// kombu's `unacked` hash, behind the global key prefix): the one on `slow` runs one and has
/// one more prefetched (multiplier 2), the one on `other` runs one (multiplier 1). Each
/// queue's in-flight is its own unacked tasks, and a pool serving both counts them all.
#[tokio::test]
async fn celery_in_flight_is_each_queues_unacknowledged_tasks() {
    let prefix = format!("{}:", unique("ack"));
    let app = CeleryApp::new(serde_json::json!({"global_keyprefix": prefix}));
    let (slow, other, idle) = ("slow", "other", "idle");
    // and two tasks on `other` due in an hour: Celery's worker takes them at once (beyond the
    // prefetch) and holds them unacknowledged, but they run nothing yet: not in flight
    app.publish(serde_json::json!([
        [slow, 0, 5, null, 60],
        [other, 0, 2, null, 60, 3600],
        [other, 0, 4, null, 60],
        [idle, 0, 2, null, 60]
    ]));
    let _a = app.worker(slow, 2, &app.dir.path().join("slow.log"));
    let _b = app.worker(other, 1, &app.dir.path().join("other.log"));
    let mut c = con().await;
    let unacked = format!("{prefix}unacked");
    let settled = eventually(
        Duration::from_secs(60),
        "workers holding 2 + 1 tasks (and the 2 due in an hour)",
        || {
            let mut c = c.clone();
            let (slow, other, unacked, prefix) = (slow, other, unacked.clone(), prefix.clone());
            async move {
                let s: u64 = c.llen(format!("{prefix}{slow}")).await.ok()?;
                let o: u64 = c.llen(format!("{prefix}{other}")).await.ok()?;
                let h: u64 = c.hlen(&unacked).await.ok()?;
                (s == 3 && o == 3 && h == 5).then_some(())
            }
        },
    )
    .await;
    if let Err(e) = settled {
        let logs = ["slow.log", "other.log"]
            .map(|f| std::fs::read_to_string(app.dir.path().join(f)).unwrap_or_default());
        panic!("{e}\n{}", logs.join("\n"));
    }

    let transport = CeleryTransport {
        global_keyprefix: prefix.clone(),
        ..Default::default()
    };
    let queues: Vec<FuncQueue> = [slow, other, idle]
        .iter()
        .map(|n| celery_queue(n, Some(transport.clone())))
        .collect();
    let readings = poll(&queues.iter().collect::<Vec<_>>()).await;
    let got: Vec<(u64, u64, bool)> = readings
        .iter()
        .map(|(m, _)| (m.depth, m.in_flight, m.in_flight_measured))
        .collect();
    assert_eq!(got, [(3, 2, true), (3, 1, true), (2, 0, true)]);

    // the pool's observation counts the running tasks (the policy keeps their pods)
    let obs = aggregate(
        &readings
            .iter()
            .zip([slow, other, idle])
            .map(|((m, _), name)| QueueReading {
                name: name.into(),
                reading: Some(Reading::Ok(m.clone())),
                share: 1.0,
                running_here: None,
            })
            .collect::<Vec<_>>(),
        60_000,
    )
    .unwrap();
    assert_eq!((obs.depth, obs.in_flight), (8, 3));
    drop((_a, _b));
    let _: () = c.del(&unacked).await.unwrap_or(());
    cleanup(&prefix).await;
}

/// The rendered command of a pool: `$(VAR)` expanded from the container's env values (as a
/// kubelet does), the beat's schedule file moved into `dir` (the pod's `/tmp`).
fn rendered(pool: &FuncWorkerPool, valid: &Valid, dir: &Path) -> Vec<String> {
    let d = build::build(pool, "ns", valid, Some(1), &Config::default()).unwrap();
    let c = d.deployment.spec.unwrap().template.spec.unwrap().containers[0].clone();
    c.command
        .unwrap()
        .into_iter()
        .map(|a| {
            a.replace("$(FUNCSCALE_POD_NAME)", "pod-1")
                .replace("/tmp/", &format!("{}/", dir.display()))
        })
        .collect()
}

/// Run `argv` (from the venv) until `ready` is in its log, then SIGTERM it.
fn starts(app: &CeleryApp, argv: &[String], ready: &str, log: &Path) {
    let mut cmd = app.command(&argv[0], 1);
    cmd.args(&argv[1..])
        .env("CELERY_BROKER_URL", URL)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    let mut child = Killed(cmd.spawn().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(ready) {
            break;
        }
        let exited = child.0.try_wait().unwrap();
        assert!(
            exited.is_none() && std::time::Instant::now() < deadline,
            "{argv:?} did not log {ready:?} (exit: {exited:?}):\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(child);
}

/// Real Celery takes every flag the operator renders: a prefork worker with all four limits
/// (memory in KiB), a threads worker, and beat with its schedule file.
#[tokio::test]
async fn rendered_celery_commands_start_real_celery() {
    let app = CeleryApp::new(serde_json::json!({}));
    let name = unique("render");
    let q = std::sync::Arc::new(celery_queue(&name, None));
    let valid = Valid {
        queues: vec![q.clone()],
        redis: None,
        redis_identity: "default".into(),
        beat_conflict: None,
        celery_queues: vec![q],
    };
    let mut pool = FuncWorkerPool::new(
        "w",
        FuncWorkerPoolSpec {
            queues: vec![name.clone()],
            processes_per_pod: 2,
            celery: Some(CeleryApp_ {
                app: "tasks".into(),
                ..Default::default()
            }),
            limits: Some(ProcessLimits {
                max_tasks_per_child: Some(100),
                max_memory_per_child_mb: Some(700),
                soft_time_limit_seconds: Some(50),
                hard_time_limit_seconds: Some(60),
            }),
            ..Default::default()
        },
    );
    pool.metadata.uid = Some("u".into());
    let dir = app.dir.path().to_path_buf();
    let argv = rendered(&pool, &valid, &dir);
    assert!(argv.contains(&"716800".to_string()), "{argv:?}");
    starts(&app, &argv, " ready.", &dir.join("prefork.log"));
    let log = std::fs::read_to_string(dir.join("prefork.log")).unwrap();
    assert!(
        log.contains("pod-1@"),
        "the worker is named after its pod:\n{log}"
    );

    pool.spec.limits = None;
    pool.spec.celery.as_mut().unwrap().pool = CeleryPoolKind::Threads;
    let argv = rendered(&pool, &valid, &dir);
    starts(&app, &argv, " ready.", &dir.join("threads.log"));

    pool.spec.role = PoolRole::Beat;
    pool.spec.queues = vec![];
    let argv = rendered(&pool, &valid, &dir);
    assert!(
        argv.iter().any(|a| a.ends_with("/celerybeat-schedule")),
        "{argv:?}"
    );
    starts(&app, &argv, "beat: Starting", &dir.join("beat.log"));
    cleanup(&format!("_kombu.binding*.{name}")).await;
}

/// A `spec.celery` pool on the real control plane (Celery from the venv under the process
/// kubelet), `minReplicas: 0` and no stabilization window: two 30 s tasks with `acks_late`
/// start it; once its worker holds both (nothing waits, nothing arrives, no completions yet),
/// the queue reports them running and the pool keeps its pod instead of going to zero under
/// them; once they are acknowledged, it goes to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_celery_pool_keeps_the_pods_its_unacknowledged_tasks_occupy() {
    let prefix = format!("{}:", unique("pool"));
    let transport = serde_json::json!({"global_keyprefix": prefix});
    let app = CeleryApp::new(transport.clone());
    let dir = app.dir.path().display().to_string();
    let mut image = ImageRule::new("celery/tasks");
    image.path.push(app.venv.join("bin"));
    image.env.insert("PYTHONPATH".into(), dir.clone());
    image.env.insert("HOME".into(), dir);
    image.workdir = Some(app.dir.path().to_path_buf());
    let mut opts = Options::new("celerypool");
    opts.images.push(image);
    let s = Scenario::start(opts).await.unwrap();
    let queue = unique("jobs");
    s.apply_queue(
        "jobs",
        serde_json::json!({"format": "Celery", "key": queue, "taskTimeMs": 1000,
            "celery": {"globalKeyprefix": prefix}}),
    )
    .await
    .unwrap();
    let env = serde_json::json!([
        {"name": "BROKER", "value": s.opts.redis_url},
        {"name": "TRANSPORT", "value": transport.to_string()},
        {"name": "PREFETCH", "value": "1"}
    ]);
    s.apply_pool(
        "w",
        serde_json::json!({"queues": ["jobs"], "processesPerPod": 2,
            "image": "registry.example.com/celery/tasks:1",
            "celery": {"app": "tasks", "pool": "threads",
                "extraArgs": ["--without-gossip", "--without-mingle", "--without-heartbeat"]},
            "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "drainTargetSeconds": 600,
                "scaleDownStabilizationSeconds": 0},
            "podTemplate": {"spec": {"containers": [{"name": "worker", "env": env}]}}}),
    )
    .await
    .unwrap();
    app.publish(serde_json::json!([[queue, 0, 2, null, 30]]));
    let published = std::time::Instant::now();

    // the pool starts, and its worker takes both tasks (threads × 2, prefetch 1)
    let mut c = con().await;
    let (list, unacked) = (format!("{prefix}{queue}"), format!("{prefix}unacked"));
    let held = eventually(
        Duration::from_secs(60),
        "the worker holding both tasks",
        || {
            let (mut c, list, unacked) = (c.clone(), list.clone(), unacked.clone());
            async move {
                let waiting: u64 = c.llen(&list).await.ok()?;
                let held: u64 = c.hlen(&unacked).await.ok()?;
                (waiting == 0 && held == 2).then_some(())
            }
        },
    )
    .await;
    if let Err(e) = held {
        panic!("{e}: pods {:?}", s.replicas("w").await);
    }
    let running = eventually(
        Duration::from_secs(10),
        "the queue reporting 2 running",
        || async {
            let q = s.queues().get("jobs").await.ok()?;
            (q.status?.running == Some(2)).then_some(())
        },
    )
    .await;
    running.unwrap();
    // while they run (until 30 s after publishing): the pod stays
    while published.elapsed() < Duration::from_secs(24) {
        let (want, _) = s.replicas("w").await.unwrap().unwrap();
        assert!(
            want >= 1,
            "the pool went to {want} pods under 2 running tasks ({:.0} s after publishing)",
            published.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // acknowledged: nothing held, the pool goes to zero
    eventually(
        Duration::from_secs(60),
        "the pool at zero after the acks",
        || async {
            let held: u64 = c.clone().hlen(&unacked).await.ok()?;
            let (want, _) = s.replicas("w").await.ok()??;
            (held == 0 && want == 0).then_some(())
        },
    )
    .await
    .unwrap();
    s.shutdown().await;
    let _: () = c.del(&unacked).await.unwrap_or(());
    cleanup(&prefix).await;
}
