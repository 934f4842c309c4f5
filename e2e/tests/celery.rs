//! A real Celery application (Celery from PyPI in the e2e virtualenv, `funcscale-celery`
//! installed in it, the task module written by this test) run by funcscale on the real
//! control plane as FuncWorkerPools with `spec.celery`:
//! - a burst produced with `apply_async` at every priority is reported as the queue's depth,
//!   equal to what is in Redis over kombu's priority lists;
//! - the pool grows from the task time its workers measured (the hint is far off), drains the
//!   queue, and shrinks; a scale-down while long tasks run loses none (each task records that
//!   it ran: the side effects are counted, not Celery's books), and with `acks_late` the tasks
//!   of a pod that crashes mid-task come back and run;
//! - two Celery beats (the Beat pool's pod and a second beat started beside it, a split
//!   brain) guarded by `funcscale_celery.GuardedScheduler` send no tick twice for a minute.
//!
//! Needs the binaries built (`cargo build --workspace --bins`) and the virtualenv
//! (`e2e/control-plane/celery-venv.sh`, which the test runs).

use std::process::Stdio;
use std::time::{Duration, Instant};

use funcscale_e2e::eventually;
use funcscale_e2e::scenario::{Options, ReplicaHistory, Scenario, celery_image};
use serde_json::json;

const REDIS: &str = "redis://127.0.0.1:6379/0";

/// The task module. Each task records that it ran in the side-effect keys (a set of ids and
/// a list of runs, so a task run twice shows); `tick` is the beat's task.
const APP: &str = r#"
import os, time
import redis
from celery import Celery
import funcscale_celery

app = Celery("e2eapp", broker=os.environ["CELERY_BROKER_URL"])
app.conf.update(
    # a short visibility timeout: a crashed worker's unacknowledged tasks come back within
    # seconds (kombu's default is an hour); longer than any task here
    broker_transport_options={"global_keyprefix": os.environ["E2E_KEYPREFIX"],
                              "visibility_timeout": 20},
    task_default_queue=os.environ["E2E_QUEUE"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    beat_schedule={"tick": {"task": "e2eapp.tick", "schedule": 1.0,
                            "args": (os.environ["E2E_SIDE"] + ":ticks",)}},
)
funcscale_celery.install(app)
side = redis.Redis.from_url(os.environ["E2E_SIDE_URL"])

@app.task
def work(ms, marker):
    side.sadd(marker + ":started", work.request.id)
    time.sleep(ms / 1000.0)
    side.sadd(marker, work.request.id)
    side.rpush(marker + ":runs", work.request.id)

@app.task
def tick(marker):
    side.rpush(marker, time.time())
"#;

/// Push `n` tasks of `ms` each at priorities 0..=9 (round robin), recording into `marker`.
const PRODUCE: &str = r#"
import sys
from e2eapp import work
n, ms, marker = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for i in range(n):
    work.apply_async((ms, marker), priority=i % 10)
"#;

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn int(con: &redis::aio::MultiplexedConnection, cmd: &str, key: &str) -> i64 {
    let mut con = con.clone();
    redis::cmd(cmd)
        .arg(key)
        .query_async(&mut con)
        .await
        .unwrap_or(0)
}

fn logs(s: &Scenario) -> String {
    let mut out = String::new();
    let mut files = vec![s.log_dir().join("operator-op-0.log")];
    if let Ok(d) = std::fs::read_dir(s.log_dir().join("pods")) {
        files.extend(d.flatten().map(|e| e.path()));
    }
    for f in files {
        if let Ok(t) = std::fs::read_to_string(&f) {
            let lines: Vec<&str> = t.lines().collect();
            out.push_str(&format!("==== {}\n", f.display()));
            for l in &lines[lines.len().saturating_sub(30)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_celery_app_is_sized_drained_and_beaten_once() {
    if funcscale_e2e::scenario::real_cluster() {
        eprintln!("skipped against a real cluster: the Celery image is this machine's virtualenv");
        return;
    }
    let run = format!("{:x}", std::process::id());
    let queue = format!("cq-{run}");
    let keyprefix = format!("e2e-celery-{run}:");
    let side = format!("e2e-celery-side-{run}");
    let scratch = tempfile::tempdir().unwrap();
    let env = [
        ("CELERY_BROKER_URL", REDIS),
        ("E2E_KEYPREFIX", keyprefix.as_str()),
        ("E2E_QUEUE", queue.as_str()),
        ("E2E_SIDE", side.as_str()),
        ("E2E_SIDE_URL", REDIS),
    ];
    let (image, venv) =
        celery_image("e2e/celery-app", scratch.path(), "e2eapp", APP, &env).unwrap();
    let app_dir = image.workdir.clone().unwrap();
    std::fs::write(app_dir.join("produce.py"), PRODUCE).unwrap();
    let mut opts = Options::new("celery");
    opts.images.push(image);
    let s = Scenario::start(opts).await.unwrap();
    let con = redis().await;

    // the queue: kombu's lists under the app's global_keyprefix; a task-time hint far off
    // (100 ms) that the measured T must replace
    s.apply_queue(
        &queue,
        json!({"format": "Celery", "taskTimeMs": 100,
            "celery": {"globalKeyprefix": keyprefix}}),
    )
    .await
    .unwrap();

    // a producer as a user's: the app module imported, funcscale_celery installed (it sets
    // the enqueue-time header and counts arrivals) with the scenario's funcscale settings
    let produce = |n: u32, ms: u32, marker: String| {
        let (venv, app_dir, queue_id, s_prefix) = (
            venv.clone(),
            app_dir.clone(),
            s.queue_id(&queue),
            s.prefix.clone(),
        );
        let env = env.map(|(k, v)| (k.to_string(), v.to_string()));
        let ns = s.ns.clone();
        let queue = queue.clone();
        async move {
            let out = tokio::process::Command::new(venv.join("bin/python"))
                .arg("produce.py")
                .args([n.to_string(), ms.to_string(), marker])
                .current_dir(&app_dir)
                .env("PYTHONPATH", &app_dir)
                .envs(env)
                .env("FUNCSCALE_REDIS_URL", REDIS)
                .env("FUNCSCALE_PREFIX", s_prefix)
                .env("FUNCSCALE_POD_NAMESPACE", ns)
                .env(
                    "FUNCSCALE_CELERY_QUEUES",
                    json!({ queue: queue_id }).to_string(),
                )
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "produce.py: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };

    // 1. a burst at every priority, no pool yet: the reported depth is what Redis holds over
    // kombu's priority lists (default steps 0, 3, 6, 9; separator \x06\x16)
    const N: u32 = 60;
    const TASK_MS: u32 = 1_500;
    let done = format!("{side}:done");
    produce(N, TASK_MS, done.clone()).await;
    let lists: Vec<String> = [0u8, 3, 6, 9]
        .iter()
        .map(|p| match p {
            0 => format!("{keyprefix}{queue}"),
            p => format!("{keyprefix}{queue}\x06\x16{p}"),
        })
        .collect();
    let mut in_redis = 0;
    let mut per_list = Vec::new();
    for l in &lists {
        let n = int(&con, "LLEN", l).await;
        per_list.push(n);
        in_redis += n;
    }
    assert_eq!(in_redis, i64::from(N), "kombu's lists: {per_list:?}");
    assert!(
        per_list.iter().filter(|n| **n > 0).count() >= 3,
        "the burst spans the priority lists: {per_list:?}"
    );
    eventually(
        Duration::from_secs(20),
        "status.depth = the lists' sum",
        || async {
            let st = s.queues().get(&queue).await.ok()?.status?;
            (st.depth == Some(in_redis as u64)).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    // the header the producer set gives the oldest task's age
    let st = s.queues().get(&queue).await.unwrap().status.unwrap();
    assert!(
        st.oldest_task_age_seconds.is_some_and(|a| a >= 0.0),
        "oldest age from the funcscale_enqueued_ms header: {st:?}"
    );

    // 2. the pool: grows from the measured T, drains, shrinks to zero
    s.apply_pool(
        "w",
        json!({"queues": [queue], "processesPerPod": 4, "image": "e2e/celery-app:1",
            "celery": {"app": "e2eapp"},
            "autoscaling": {"minReplicas": 0, "maxReplicas": 4, "drainTargetSeconds": 10,
                "activationDepth": 0, "scaleDownStabilizationSeconds": 3}}),
    )
    .await
    .unwrap();
    let history = ReplicaHistory::start(s.deployments(), "w");
    eventually(Duration::from_secs(180), "the burst ran", || async {
        (int(&con, "SCARD", &done).await == i64::from(N)).then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: replicas {:?}\nstatus {:?}\n{}",
            history.values(),
            futures_block(s.queues().get(&queue))
                .ok()
                .and_then(|q| q.status),
            logs(&s)
        )
    });
    let st = s.queues().get(&queue).await.unwrap().status.unwrap();
    let t = st.task_time_ms.unwrap_or_default();
    assert_eq!(
        st.task_time_source.as_deref(),
        Some("Measured"),
        "T measured by funcscale-celery: {st:?}"
    );
    assert!(
        (1_200.0..=3_000.0).contains(&t),
        "measured T {t} ms for {TASK_MS} ms tasks"
    );
    assert!(
        history.max() >= 2,
        "the pool grew: replicas {:?}",
        history.values()
    );
    eventually(Duration::from_secs(90), "pool w back at 0", || async {
        (s.replicas("w").await.ok().flatten().map(|r| r.0) == Some(0)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", history.values(), logs(&s)));
    assert_eq!(int(&con, "SCARD", &done).await, i64::from(N), "none lost");

    // 3. a scale-down while long tasks run: 3 pods running 12 tasks of 8 s, then 1 pod; none
    // is lost (Celery's warm shutdown on SIGTERM finishes them within the pool's grace; with
    // acks_late a killed one would come back)
    const LONG: u32 = 12;
    let long = format!("{side}:long");
    let fixed = |replicas: i32| {
        json!({"queues": [queue], "processesPerPod": 4, "image": "e2e/celery-app:1",
            "celery": {"app": "e2eapp"}, "replicas": replicas})
    };
    // (a pool of its own: server-side apply cannot take autoscaling off "w" on this API
    // server, its defaulted fields stay)
    s.pools().delete("w", &Default::default()).await.unwrap();
    s.apply_pool("fixed", fixed(3)).await.unwrap();
    eventually(Duration::from_secs(60), "3 pods ready", || async {
        (s.replicas("fixed").await.ok().flatten()? == (3, 3)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    produce(LONG, 8_000, long.clone()).await;
    let long_started = format!("{long}:started");
    eventually(
        Duration::from_secs(30),
        "the long tasks running",
        || async { (int(&con, "SCARD", &long_started).await == i64::from(LONG)).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    s.apply_pool("fixed", fixed(1)).await.unwrap();
    eventually(Duration::from_secs(180), "every long task ran", || async {
        (int(&con, "SCARD", &long).await == i64::from(LONG)).then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {} of {LONG} ran; replicas {:?}\n{}",
            futures_block(int(&con, "SCARD", &long)),
            history.values(),
            logs(&s)
        )
    });

    // 3b. a pod that crashes mid-task (SIGKILL, no warm shutdown): with acks_late its
    // unacknowledged tasks come back (after the visibility timeout) and run; none is lost
    const CRASHED: u32 = 4;
    let crashed = format!("{side}:crashed");
    produce(CRASHED, 5_000, crashed.clone()).await;
    let started = format!("{crashed}:started");
    eventually(Duration::from_secs(30), "the 4 tasks running", || async {
        (int(&con, "SCARD", &started).await == i64::from(CRASHED)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    s.kill_pod("fixed").await.unwrap();
    eventually(
        Duration::from_secs(120),
        "every crashed task ran",
        || async { (int(&con, "SCARD", &crashed).await == i64::from(CRASHED)).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {} of {CRASHED} ran\n{}",
            futures_block(int(&con, "SCARD", &crashed)),
            logs(&s)
        )
    });

    // 4. two guarded beats for a minute: the Beat pool's pod and a second `celery beat` beside
    // it (a split brain): ticks once a second, not twice
    let ticks = format!("{side}:ticks");
    s.apply_pool(
        "beat",
        json!({"role": "Beat", "queues": [], "replicas": 1, "image": "e2e/celery-app:1",
            "celery": {"app": "e2eapp", "scheduler": "funcscale_celery.GuardedScheduler"}}),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(60), "the beat ticks", || async {
        (int(&con, "LLEN", &ticks).await >= 2).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s)));
    let mut second = tokio::process::Command::new(venv.join("bin/celery"))
        .args([
            "-A",
            "e2eapp",
            "beat",
            "-S",
            "funcscale_celery.GuardedScheduler",
            "-s",
        ])
        .arg(app_dir.join("second-beat-schedule"))
        .current_dir(&app_dir)
        .env("PYTHONPATH", &app_dir)
        .envs(env.map(|(k, v)| (k.to_string(), v.to_string())))
        .env("FUNCSCALE_REDIS_URL", REDIS)
        .env("FUNCSCALE_PREFIX", &s.prefix)
        .env("FUNCSCALE_POD_NAMESPACE", &s.ns)
        .env("FUNCSCALE_POD_NAME", "second-beat")
        .env(
            "FUNCSCALE_CELERY_QUEUES",
            json!({ queue.clone(): s.queue_id(&queue) }).to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let start = int(&con, "LLEN", &ticks).await;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    // the ticks of the minute have run by now (the pool is up for them)
    tokio::time::sleep(Duration::from_secs(10)).await;
    let sent = int(&con, "LLEN", &ticks).await - start;
    let elapsed = t0.elapsed().as_secs_f64();
    let _ = second.kill().await;
    assert!(
        (sent as f64) <= elapsed + 3.0 && (sent as f64) >= 40.0,
        "{sent} ticks in {elapsed:.0} s from two beats (one a second expected)\n{}",
        logs(&s)
    );
    eprintln!(
        "celery: burst of {N} grew to {} pods (T measured {t:.0} ms); {LONG} long tasks survived \
         the shrink; two beats sent {sent} ticks in {elapsed:.0} s",
        history.max()
    );
    let _: () = redis::cmd("DEL")
        .arg(&done)
        .arg(format!("{done}:runs"))
        .arg(&long)
        .arg(format!("{long}:runs"))
        .arg(&crashed)
        .arg(format!("{crashed}:runs"))
        .arg(&started)
        .arg(format!("{done}:started"))
        .arg(format!("{long}:started"))
        .arg(&ticks)
        .query_async(&mut con.clone())
        .await
        .unwrap_or(());
    s.shutdown().await;
}

/// The value of a future in a panic message (the test is already failing).
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}
