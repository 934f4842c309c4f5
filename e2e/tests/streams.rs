//! A Redis Stream adopted by a FuncQueue (`format: Stream`) on the real control plane: the
//! pool runs the user's own consumer (Python with redis-py, from the e2e Celery virtualenv, as
//! an image of the process kubelet), grows from zero on the consumer group's lag, consumes
//! every entry exactly once (side effects counted) although a consumer is SIGKILLed while
//! entries flow (its pending entry is claimed by another consumer), and goes back to zero. Needs `cargo build --workspace
//! --bins` first, Redis at 127.0.0.1:6379 and python3 (the virtualenv is made once).

use std::path::Path;
use std::time::Duration;

use funcscale_e2e::eventually;
use funcscale_e2e::node::ImageRule;
use funcscale_e2e::scenario::{Options, ReplicaHistory, Scenario};
use serde_json::json;

/// A consumer of a stream's group: claims the entries of consumers gone for 5 s, else reads
/// new ones; per entry sleeps `task_ms`, then records the entry's `n` (a set and a list) and
/// acknowledges it in one MULTI. Stops reading on SIGTERM after the entry in hand.
const CONSUMER: &str = r#"
import os, signal, sys, time
import redis

url, stream, group, done_set, done_list, task_ms = sys.argv[1:7]
r = redis.Redis.from_url(url)
me = os.environ.get("FUNCSCALE_POD_NAME", "consumer")
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
while not stopping:
    entries = r.xautoclaim(stream, group, me, min_idle_time=5000, start_id="0-0", count=10)[1]
    if not entries:
        got = r.xreadgroup(group, me, {stream: ">"}, count=1, block=500)
        entries = got[0][1] if got else []
    for entry_id, fields in entries:
        if fields:
            time.sleep(int(task_ms) / 1000)
            p = r.pipeline(transaction=True)
            p.sadd(done_set, fields[b"n"])
            p.rpush(done_list, fields[b"n"])
            p.xack(stream, group, entry_id)
            p.execute()
        else:
            r.xack(stream, group, entry_id)
"#;

/// The consumer image (`registry.example.com/stream-consumer`): the e2e virtualenv's Python
/// (it has redis-py) with `consumer.py` in its working directory.
fn consumer_image(dir: &Path) -> anyhow::Result<ImageRule> {
    Ok(funcscale_e2e::scenario::celery_image("stream-consumer", dir, "consumer", CONSUMER, &[])?.0)
}

async fn int(con: &mut redis::aio::MultiplexedConnection, cmd: &str, key: &str) -> i64 {
    redis::cmd(cmd)
        .arg(key)
        .query_async(con)
        .await
        .unwrap_or(-1)
}

fn pod_logs(s: &Scenario) -> String {
    let mut out = String::new();
    if let Ok(t) = std::fs::read_to_string(s.log_dir().join("operator-op-0.log")) {
        let lines: Vec<&str> = t.lines().collect();
        out.push_str(&lines[lines.len().saturating_sub(20)..].join("\n"));
    }
    if let Ok(dir) = std::fs::read_dir(s.log_dir().join("pods")) {
        for f in dir.flatten() {
            if let Ok(t) = std::fs::read_to_string(f.path()) {
                let lines: Vec<&str> = t.lines().collect();
                out.push_str(&format!(
                    "\n-- {}:\n{}",
                    f.file_name().to_string_lossy(),
                    lines[lines.len().saturating_sub(8)..].join("\n")
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_queue_scales_from_zero_on_lag_and_back() {
    const N: i64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let s = Scenario::start(Options {
        images: vec![consumer_image(dir.path()).unwrap()],
        ..Options::new("stream")
    })
    .await
    .unwrap();
    let mut con = redis::Client::open(funcscale_e2e::scenario::REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stream = format!("{}:events", s.prefix);
    let (done_set, done_list) = (
        format!("{}:test:done", s.prefix),
        format!("{}:test:runs", s.prefix),
    );
    // the group exists before the pool may sit at zero
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut con)
        .await
        .unwrap();
    s.apply_queue(
        "events",
        json!({"format": "Stream", "key": stream, "stream": {"group": "g"}, "taskTimeMs": 50}),
    )
    .await
    .unwrap();
    s.apply_pool(
        "consumer",
        json!({"queues": ["events"], "processesPerPod": 1,
            "image": "registry.example.com/stream-consumer:1",
            "command": ["python", "consumer.py", funcscale_e2e::scenario::REDIS_URL, stream, "g",
                done_set, done_list, "50"],
            "autoscaling": {"minReplicas": 0, "maxReplicas": 4, "drainTargetSeconds": 2,
                "activationDepth": 0, "periodMs": 60000,
                "scaleDownStabilizationSeconds": 3, "scaleUpMaxStep": 4}}),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "Deployment consumer at 0 replicas",
        || async {
            (s.replicas("consumer").await.ok().flatten().map(|r| r.0) == Some(0)).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pod_logs(&s)));
    let history = ReplicaHistory::start(s.deployments(), "consumer");

    // producers add N entries: the lag grows the pool from zero
    let mut pipe = redis::pipe();
    for i in 0..N {
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("n")
            .arg(i)
            .ignore();
    }
    let _: () = pipe.query_async(&mut con).await.unwrap();
    let depth = eventually(
        Duration::from_secs(10),
        "the queue's status to show the lag",
        || async {
            let st = s.queues().get("events").await.ok()?.status?;
            st.depth.filter(|d| *d > 0)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pod_logs(&s)));
    eventually(
        Duration::from_secs(20),
        "the pool to grow from 0",
        || async {
            (s.replicas("consumer")
                .await
                .ok()
                .flatten()
                .is_some_and(|r| r.0 > 0))
            .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pod_logs(&s)));

    // a consumer dies hard while entries flow: what it held stays pending until another
    // consumer claims it (XAUTOCLAIM after 5 s idle)
    eventually(Duration::from_secs(30), "entries flowing", || {
        let mut con = con.clone();
        let done_set = done_set.clone();
        async move { (int(&mut con, "SCARD", &done_set).await >= 20).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pod_logs(&s)));
    s.kill_pod("consumer").await.unwrap();
    let consumed_at_kill = int(&mut con, "SCARD", &done_set).await;

    // every entry consumed and acknowledged
    eventually(Duration::from_secs(120), "every entry consumed", || {
        let mut con = con.clone();
        let done_set = done_set.clone();
        async move { (int(&mut con, "SCARD", &done_set).await == N).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pod_logs(&s)));
    // the operator sees nothing waiting and nothing pending, and the pool goes back to zero
    let r = eventually(Duration::from_secs(40), "the pool back at 0", || async {
        let st = s.queues().get("events").await.ok()?.status?;
        let zero = s.replicas("consumer").await.ok().flatten().map(|r| r.0) == Some(0);
        (zero && st.depth == Some(0) && st.running == Some(0)).then_some(())
    })
    .await;
    if let Err(e) = r {
        let st = s.pools().get("consumer").await.unwrap().status;
        panic!(
            "{e}: {:?}\nstatus {st:?}\n{}",
            history.values(),
            pod_logs(&s)
        );
    }
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("g")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        matches!(&pending, redis::Value::Array(v) if v.first() == Some(&redis::Value::Int(0))),
        "pending entries left: {pending:?}"
    );
    // every entry once: none lost, none twice
    assert_eq!(int(&mut con, "SCARD", &done_set).await, N);
    assert_eq!(
        int(&mut con, "LLEN", &done_list).await,
        N,
        "an entry ran twice"
    );
    let q = s.queues().get("events").await.unwrap().status.unwrap();
    let ready = q.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True", "{ready:?}");
    eprintln!(
        "stream: lag seen {depth}, a consumer killed after {consumed_at_kill} entries, replicas \
         {:?} (max {})",
        history.values(),
        history.max()
    );
    assert!(consumed_at_kill < N, "the kill came after the work");
    let _: () = redis::cmd("DEL")
        .arg(&[&stream, &done_set, &done_list])
        .query_async(&mut con)
        .await
        .unwrap();
    s.shutdown().await;
}
