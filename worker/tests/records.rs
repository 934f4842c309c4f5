//! Task records, queries, retention, dead-letter tools, destinations and per-minute counts,
//! against the real Redis (and a real local HTTP receiver for URL destinations).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::ValueEnum;
use common::{REDIS_URL, Receiver, Running, Space, wait_until};
use funcscale_worker::handler::TaskError;
use funcscale_worker::protocol::{self, Destination, Envelope, Keys, QueueConfig, TaskStatus};
use funcscale_worker::records::{self, Selector, StatusFilter, TaskQuery};
use funcscale_worker::worker::{Worker, WorkerBuilder, now_ms};
use serde_json::json;

fn builder(s: &Space, queues: &[&str], processes: usize) -> WorkerBuilder {
    Worker::builder()
        .redis_url(REDIS_URL)
        .prefix(s.prefix.clone())
        .queues(queues.iter().copied())
        .processes(processes)
        .configure(|c| {
            c.retry_base_ms = 10;
            c.retry_max_ms = 20;
        })
}

fn query(queue: &str) -> TaskQuery {
    TaskQuery {
        queue: queue.into(),
        limit: 1_000,
        ..Default::default()
    }
}

async fn list(s: &Space, q: &TaskQuery) -> Vec<protocol::TaskRecord> {
    let mut con = s.con().await;
    records::list_tasks(&mut con, &s.keys, q).await.unwrap()
}

fn ids(v: &[protocol::TaskRecord]) -> Vec<String> {
    let mut ids: Vec<String> = v.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_every_transition_and_each_filter_finds_them() {
    let s = Space::new("rec-filters");
    let t0 = now_ms();
    let mut envs = Vec::new();
    for i in 0..10 {
        envs.push(s.env(&format!("trace-a-{i}"), "noop", "q", json!([])));
        envs.push(s.env(&format!("trace-b-{i}"), "noop", "q", json!([])));
    }
    for i in 0..3 {
        let mut e = s.env(&format!("trace-a-bad{i}"), "fail", "q", json!(["boom"]));
        e.max_retries = Some(1);
        envs.push(e);
    }
    s.enqueue("q", &envs).await;
    // Queued: all 23 recorded before any worker runs.
    let queued = list(
        &s,
        &TaskQuery {
            status: Some(TaskStatus::Queued.into()),
            ..query("q")
        },
    )
    .await;
    assert_eq!(queued.len(), 23);
    assert!(queued.iter().all(|r| r.enqueued_ms.is_some()));
    let w = Running::start(builder(&s, &["q"], 3)).await;
    wait_until("20 succeeded, 3 dead", Duration::from_secs(15), || async {
        s.int(&["ZCARD", &s.keys.tasks_status("q", TaskStatus::Succeeded)])
            .await
            == 20
            && s.int(&["ZCARD", &s.keys.tasks_status("q", TaskStatus::Dead)])
                .await
                == 3
    })
    .await;
    w.stop().await;
    let t1 = now_ms();

    // Status.
    let dead = list(
        &s,
        &TaskQuery {
            status: Some(TaskStatus::Dead.into()),
            ..query("q")
        },
    )
    .await;
    assert_eq!(ids(&dead), ["trace-a-bad0", "trace-a-bad1", "trace-a-bad2"]);
    for r in &dead {
        assert_eq!(r.error.as_deref(), Some("boom"));
        assert_eq!(r.attempt, Some(1), "the second attempt died");
        assert!(
            r.worker.as_deref().is_some_and(|w| w.contains('.')),
            "slot recorded"
        );
        assert!(r.finished_ms.is_some() && r.started_ms.is_some() && r.duration_ms.is_some());
    }
    for st in [
        TaskStatus::Queued,
        TaskStatus::Started,
        TaskStatus::Retrying,
    ] {
        let l = list(
            &s,
            &TaskQuery {
                status: Some(st.into()),
                ..query("q")
            },
        )
        .await;
        assert!(l.is_empty(), "{st:?}: {l:?}");
    }
    // Id prefix (lexicographic index), alone and with a status.
    let a = list(
        &s,
        &TaskQuery {
            id_prefix: Some("trace-a-".into()),
            ..query("q")
        },
    )
    .await;
    assert_eq!(a.len(), 13);
    let a_ok = list(
        &s,
        &TaskQuery {
            id_prefix: Some("trace-a-".into()),
            status: Some(TaskStatus::Succeeded.into()),
            ..query("q")
        },
    )
    .await;
    assert_eq!(a_ok.len(), 10);
    // Function.
    let f = list(
        &s,
        &TaskQuery {
            func: Some("fail".into()),
            ..query("q")
        },
    )
    .await;
    assert_eq!(ids(&f), ids(&dead));
    // Time window and limit, newest first.
    let all = list(
        &s,
        &TaskQuery {
            since_ms: Some(t0),
            until_ms: Some(t1),
            ..query("q")
        },
    )
    .await;
    assert_eq!(all.len(), 23);
    assert!(all.windows(2).all(|w| w[0].updated_ms >= w[1].updated_ms));
    let none = list(
        &s,
        &TaskQuery {
            since_ms: Some(t1 + 1),
            ..query("q")
        },
    )
    .await;
    assert!(none.is_empty());
    let two = list(
        &s,
        &TaskQuery {
            limit: 2,
            ..query("q")
        },
    )
    .await;
    assert_eq!(ids(&two), ids(&all[..2]));
    // Show.
    let mut con = s.con().await;
    let r = records::show_task(&mut con, &s.keys, "q", "trace-b-3")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.status.as_str(), r.func.as_str(), r.queue.as_str()),
        ("succeeded", "noop", "q")
    );
    assert_eq!(r.error, None);
    // Per-minute counts: everything happened within the last two minutes.
    let buckets = records::counts(&mut con, &s.keys, "q", t0, now_ms())
        .await
        .unwrap();
    let sum = |f: fn(&records::CountBucket) -> i64| buckets.iter().map(f).sum::<i64>();
    assert_eq!(sum(|b| b.submitted), 23);
    assert_eq!(sum(|b| b.completed), 20);
    assert_eq!(sum(|b| b.dead), 3);
    assert_eq!(sum(|b| b.retried), 3);
    assert_eq!(sum(|b| b.failed), 6);
    assert_eq!(sum(|b| b.started), 26);
    assert_eq!(records::executing(&mut con, &s.keys, "q").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count_and_by_age() {
    let s = Space::new("rec-retention");
    let mut con = s.con().await;
    s.keep_records("q", 50).await;
    let envs: Vec<Envelope> = (0..200)
        .map(|i| s.env(&format!("r{i:03}"), "noop", "q", json!([])))
        .collect();
    s.enqueue("q", &envs).await;
    assert_eq!(s.int(&["ZCARD", &s.keys.tasks_ids("q")]).await, 50);
    assert_eq!(
        s.int(&["ZCARD", &s.keys.tasks_status("q", TaskStatus::Queued)])
            .await,
        50
    );
    assert_eq!(
        s.int(&["EXISTS", &s.keys.task("q", "r000")]).await,
        0,
        "oldest gone"
    );
    assert_eq!(
        s.int(&["EXISTS", &s.keys.task("q", "r199")]).await,
        1,
        "newest kept"
    );

    // By age: records older than a minute go (trimmed as at a time two minutes on).
    protocol::queue_config_set(
        &mut con,
        &s.keys,
        "q",
        &QueueConfig {
            record_max_age_ms: Some(60_000),
            ..Default::default()
        },
        &[],
    )
    .await
    .unwrap();
    let now = now_ms();
    assert_eq!(records::trim(&mut con, &s.keys, "q", now).await.unwrap(), 0);
    assert_eq!(
        records::trim(&mut con, &s.keys, "q", now + 120_000)
            .await
            .unwrap(),
        50
    );
    for key in [
        s.keys.tasks_ids("q"),
        s.keys.tasks_func("q", "noop"),
        s.keys.tasks_status("q", TaskStatus::Queued),
    ] {
        assert_eq!(s.int(&["ZCARD", &key]).await, 0, "{key}");
    }
    assert_eq!(s.int(&["EXISTS", &s.keys.task("q", "r199")]).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_task_is_found_by_prefix_requeued_and_succeeds() {
    let s = Space::new("rec-dead");
    let fixed = Arc::new(AtomicBool::new(false));
    let worker = || {
        let f2 = fixed.clone();
        builder(&s, &["q"], 2).handler("charge", move |_ctx| {
            let fixed = f2.clone();
            async move {
                if fixed.load(Ordering::SeqCst) {
                    Ok(json!("charged"))
                } else {
                    Err(TaskError::new("card declined"))
                }
            }
        })
    };
    let w = Running::start(worker()).await;
    let mut e = s.env("order-42-a", "charge", "q", json!([]));
    e.max_retries = Some(2);
    let other = s.env("order-43-a", "noop", "q", json!([]));
    s.enqueue("q", &[e, other]).await;
    wait_until("dead-lettered", Duration::from_secs(10), || async {
        s.int(&["LLEN", &s.keys.dead("q")]).await == 1
    })
    .await;
    let mut con = s.con().await;
    let found = records::dead_letters(&mut con, &s.keys, "q", &Selector::Prefix("order-42".into()))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    let env = found[0].1.clone().unwrap();
    assert_eq!((env.id.as_str(), env.attempt), ("order-42-a", 2));
    assert_eq!(env.error.as_deref(), Some("card declined"));
    let rec = list(
        &s,
        &TaskQuery {
            id_prefix: Some("order-42".into()),
            status: Some(TaskStatus::Dead.into()),
            ..query("q")
        },
    )
    .await;
    assert_eq!(ids(&rec), ["order-42-a"]);
    let dead = records::show_task(&mut con, &s.keys, "q", "order-42-a")
        .await
        .unwrap()
        .unwrap();

    // Requeued while no worker runs: the same task waits again, as new as a fresh enqueue.
    w.stop().await;
    fixed.store(true, Ordering::SeqCst);
    let before = now_ms();
    let n = records::requeue_dead(&mut con, &s.keys, "q", &Selector::Prefix("order-42".into()))
        .await
        .unwrap();
    assert_eq!(n, 1);
    let waiting = records::show_task(&mut con, &s.keys, "q", "order-42-a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (waiting.status.as_str(), waiting.attempt),
        ("queued", Some(0))
    );
    assert_eq!(
        (&waiting.error, &waiting.worker, waiting.duration_ms),
        (&None, &None, None),
        "the dead attempt's details went: {waiting:?}"
    );
    assert_eq!(waiting.created_ms, dead.created_ms, "the same task");
    let queued: Vec<String> = s.list(&s.keys.queue("q")).await;
    let again = Envelope::from_json(&queued[0]).unwrap();
    assert_eq!((again.id.as_str(), again.attempt), ("order-42-a", 0));
    assert!(
        again.enqueued_at_ms >= before,
        "the wait counts from the requeue (oldest-task age)"
    );
    let w = Running::start(worker()).await;
    wait_until(
        "the requeued task succeeds",
        Duration::from_secs(10),
        || async {
            let mut con = s.con().await;
            records::show_task(&mut con, &s.keys, "q", "order-42-a")
                .await
                .unwrap()
                .is_some_and(|r| r.status == "succeeded")
        },
    )
    .await;
    let r = records::show_task(&mut con, &s.keys, "q", "order-42-a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.attempt, Some(0), "attempt count reset, same id");
    assert_eq!(r.error, None);
    assert_eq!(s.int(&["LLEN", &s.keys.dead("q")]).await, 0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_id_and_all_and_the_cli_refuses_without_a_terminal() {
    let s = Space::new("rec-purge");
    let mut envs = Vec::new();
    for i in 0..5 {
        let mut e = s.env(&format!("p{i}"), "fail", "q", json!(["x"]));
        e.max_retries = Some(0);
        envs.push(e);
    }
    s.enqueue("q", &envs).await;
    let w = Running::start(builder(&s, &["q"], 2)).await;
    wait_until("5 dead", Duration::from_secs(10), || async {
        s.int(&["LLEN", &s.keys.dead("q")]).await == 5
    })
    .await;
    w.stop().await;
    let bin = env!("CARGO_BIN_EXE_funcscale-worker");
    let out = std::process::Command::new(bin)
        .args([
            "--prefix",
            &s.prefix,
            "dead-letters",
            "purge",
            "--queue",
            "q",
            "--all",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stdin is not a terminal; pass --yes"), "{err}");
    assert_eq!(s.int(&["LLEN", &s.keys.dead("q")]).await, 5);
    let out = std::process::Command::new(bin)
        .args([
            "--prefix",
            &s.prefix,
            "dead-letters",
            "purge",
            "--queue",
            "q",
            "--id",
            "p1",
            "--id",
            "p3",
            "--yes",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.int(&["LLEN", &s.keys.dead("q")]).await, 3);
    let mut con = s.con().await;
    let left = records::dead_letters(&mut con, &s.keys, "q", &Selector::All)
        .await
        .unwrap();
    let mut left: Vec<String> = left.into_iter().map(|(_, e)| e.unwrap().id).collect();
    left.sort();
    assert_eq!(left, ["p0", "p2", "p4"]);
    assert_eq!(
        records::purge_dead(&mut con, &s.keys, "q", &Selector::All)
            .await
            .unwrap(),
        3
    );
    assert_eq!(s.int(&["LLEN", &s.keys.dead("q")]).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_destinations_chain_results_and_failures() {
    let s = Space::new("rec-dest-q");
    let mut con = s.con().await;
    protocol::queue_config_set(
        &mut con,
        &s.keys,
        "orders",
        &QueueConfig {
            on_success: Some(Destination::parse("queue:results/collect").unwrap()),
            on_failure: Some(Destination::parse("queue:compensate").unwrap()),
            ..Default::default()
        },
        &[],
    )
    .await
    .unwrap();
    let got = s.own("got");
    let got2 = got.clone();
    let b = builder(&s, &["orders", "results", "compensate"], 2)
        .handler("charge", |ctx| async move {
            let n = ctx.envelope.args[0].as_i64().unwrap();
            if n < 0 {
                Err(TaskError::permanent("negative amount"))
            } else {
                Ok(json!({"charged": n}))
            }
        })
        .handler("collect", move |ctx| {
            let got = got2.clone();
            async move {
                let mut con = redis::Client::open(REDIS_URL)
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                let _: () = redis::cmd("RPUSH")
                    .arg(&got)
                    .arg(serde_json::to_string(&ctx.envelope).unwrap())
                    .query_async(&mut con)
                    .await
                    .unwrap();
                Ok(json!(null))
            }
        })
        .handler("on_failure", {
            let got = s.own("comp");
            move |ctx| {
                let got = got.clone();
                async move {
                    let mut con = redis::Client::open(REDIS_URL)
                        .unwrap()
                        .get_multiplexed_async_connection()
                        .await
                        .unwrap();
                    let _: () = redis::cmd("RPUSH")
                        .arg(&got)
                        .arg(serde_json::to_string(&ctx.envelope).unwrap())
                        .query_async(&mut con)
                        .await
                        .unwrap();
                    Ok(json!(null))
                }
            }
        });
    let w = Running::start(b).await;
    s.enqueue(
        "orders",
        &[
            s.env("ord-1", "charge", "orders", json!([7])),
            s.env("ord-2", "charge", "orders", json!([-1])),
        ],
    )
    .await;
    wait_until(
        "result collected and failure compensated",
        Duration::from_secs(10),
        || async {
            s.int(&["LLEN", &got]).await == 1 && s.int(&["LLEN", &s.own("comp")]).await == 1
        },
    )
    .await;
    w.stop().await;
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(&got)
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    let e = Envelope::from_json(&raw[0]).unwrap();
    assert_eq!(
        (e.id.as_str(), e.func.as_str(), e.queue.as_str()),
        ("ord-1:success", "collect", "results")
    );
    assert_eq!(e.kwargs["event"], "success");
    assert_eq!(e.kwargs["result"], json!({"charged": 7}));
    assert_eq!(e.kwargs["task"]["id"], "ord-1");
    assert_eq!(e.kwargs["task"]["args"], json!([7]));
    let raw: Vec<String> = s.list(&s.own("comp")).await;
    let e = Envelope::from_json(&raw[0]).unwrap();
    assert_eq!(
        (e.id.as_str(), e.func.as_str()),
        ("ord-2:failure", "on_failure")
    );
    assert_eq!(e.kwargs["error"], "negative amount");
    assert_eq!(e.kwargs["task"]["id"], "ord-2");
    // The chained tasks have records too: a prefix query on the upstream id finds the chain.
    let chain = list(
        &s,
        &TaskQuery {
            id_prefix: Some("ord-1".into()),
            ..query("results")
        },
    )
    .await;
    assert_eq!(ids(&chain), ["ord-1:success"]);
    assert_eq!(chain[0].status, "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_destinations_are_delivered_at_least_once_with_retries() {
    let s = Space::new("rec-dest-url");
    // The very first delivery fails: the outbox must retry it.
    let rx = Receiver::start(false, 1).await;
    let mut con = s.con().await;
    let url = rx.url.clone();
    protocol::queue_config_set(
        &mut con,
        &s.keys,
        "q",
        &QueueConfig {
            on_success: Some(Destination::Url(url.clone())),
            on_failure: Some(Destination::Url(url.clone())),
            ..Default::default()
        },
        &[],
    )
    .await
    .unwrap();
    let mut bad = s.env("u-2", "fail", "q", json!(["nope"]));
    bad.max_retries = Some(0);
    s.enqueue("q", &[s.env("u-1", "noop", "q", json!([])), bad])
        .await;
    let w = Running::start(builder(&s, &["q"], 2)).await;
    wait_until("both delivered", Duration::from_secs(15), || async {
        rx.received.lock().unwrap().len() == 2
    })
    .await;
    wait_until("outbox empty", Duration::from_secs(5), || async {
        s.int(&["ZCARD", &s.keys.queue_outbox("q")]).await == 0
    })
    .await;
    w.stop().await;
    let mut got = rx.received.lock().unwrap().clone();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got[0].0, "u-1:success");
    assert_eq!(got[0].1["event"], "success");
    assert_eq!(got[0].1["task"]["id"], "u-1");
    assert_eq!(got[0].1["result"], json!(null));
    assert_eq!(got[1].0, "u-2:failure");
    assert_eq!(got[1].1["error"], "nope");
    assert_eq!(
        rx.calls.load(Ordering::SeqCst),
        3,
        "one failed delivery, retried"
    );
    assert_eq!(s.int(&["LLEN", &s.keys.queue_outbox_dead("q")]).await, 0);
}

#[tokio::test]
async fn record_keys_written_by_lua_match_the_rust_key_names() {
    let s = Space::new("rec-keys");
    s.enqueue("q", &[s.env("k1", "f", "q", json!([]))]).await;
    for key in [
        s.keys.task("q", "k1"),
        s.keys.tasks_ids("q"),
        s.keys.tasks_func("q", "f"),
        s.keys.tasks_status("q", TaskStatus::Queued),
        s.keys.counts("q", now_ms() / 60_000),
    ] {
        assert_eq!(s.int(&["EXISTS", &key]).await, 1, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_counts_are_exported_as_prometheus_gauges() {
    use prometheus::Encoder as _;
    let s = Space::new("rec-prom");
    let envs: Vec<Envelope> = (0..7)
        .map(|i| s.env(&format!("m{i}"), "sleep", "q", json!([60_000])))
        .collect();
    s.enqueue("q", &envs).await;
    // Outcomes of the last complete minute, as workers write them (also into the current
    // minute, so a minute turning over during the test reads the same; these tasks sleep
    // for a minute, so nothing adds to these fields meanwhile).
    let mut con = s.con().await;
    let minute = now_ms() / 60_000;
    for m in [minute - 1, minute] {
        let _: () = redis::cmd("HSET")
            .arg(s.keys.counts("q", m))
            .arg(&[
                "completed",
                "7",
                "failed",
                "3",
                "retried",
                "1",
                "dead",
                "2",
                "fmt",
                "2",
            ])
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let metrics = funcscale_worker::metrics::Metrics::new();
    let w = Running::start(
        builder(&s, &["q"], 2)
            .metrics(metrics.clone())
            .configure(|c| c.drain_timeout = Duration::from_millis(100)),
    )
    .await;
    let text = || {
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&metrics.registry.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf).unwrap()
    };
    wait_until(
        "gauges show the backlog",
        Duration::from_secs(25),
        || async {
            let t = text();
            t.contains("funcscale_worker_queue_depth{queue=\"q\"} 5")
                && t.contains("funcscale_worker_queue_tasks_executing{queue=\"q\"} 2")
        },
    )
    .await;
    assert!(text().contains("funcscale_worker_queue_dead_letters{queue=\"q\"} 0"));
    let last_minute = |kind: &str| {
        text()
            .lines()
            .find(|l| {
                l.starts_with("funcscale_worker_queue_tasks_last_minute{")
                    && l.contains(&format!("kind=\"{kind}\""))
                    && l.contains("queue=\"q\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
    };
    for (kind, n) in [("completed", 7), ("failed", 3), ("retried", 1), ("dead", 2)] {
        assert_eq!(last_minute(kind), Some(n), "{kind}");
    }
    // started = the outcomes of attempts whose start was not recorded (fmt 2), plus the two
    // sleeping tasks' started records if the minute turned over since they were written (one
    // of them if it turned between the two writes)
    let started = last_minute("started");
    assert!(matches!(started, Some(10..=12)), "{started:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_is_found_as_started_by_every_filter() {
    let s = Space::new("rec-running");
    let mut con = s.con().await;
    // A: taken by the fetch script (queue not empty at start); B: by the blocking move.
    s.enqueue("q", &[s.env("run-a", "sleep", "q", json!([60_000]))])
        .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let t1 = now_ms();
    let w = Running::start(
        builder(&s, &["q"], 2).configure(|c| c.drain_timeout = Duration::from_millis(100)),
    )
    .await;
    let started = || async {
        s.int(&["ZCARD", &s.keys.tasks_status("q", TaskStatus::Started)])
            .await
    };
    wait_until("A runs", Duration::from_secs(10), || async {
        started().await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the idle slot now blocks
    s.enqueue("q", &[s.env("run-b", "sleep", "q", json!([60_000]))])
        .await;
    wait_until("B runs", Duration::from_secs(10), || async {
        started().await == 2
    })
    .await;
    assert_eq!(records::executing(&mut con, &s.keys, "q").await.unwrap(), 2);
    // Every filter, alone and together, finds both running tasks; the time window starts
    // after A was enqueued, so A is found by its start.
    let filters = [
        TaskQuery {
            status: Some(TaskStatus::Started.into()),
            ..query("q")
        },
        TaskQuery {
            func: Some("sleep".into()),
            since_ms: Some(t1),
            ..query("q")
        },
        TaskQuery {
            since_ms: Some(t1),
            until_ms: Some(now_ms()),
            ..query("q")
        },
        TaskQuery {
            id_prefix: Some("run-".into()),
            status: Some(TaskStatus::Started.into()),
            func: Some("sleep".into()),
            since_ms: Some(t1),
            ..query("q")
        },
    ];
    for q in &filters {
        let l = list(&s, q).await;
        assert_eq!(ids(&l), ["run-a", "run-b"], "{q:?}");
        for r in &l {
            assert_eq!(r.status, "started");
            assert!(r.started_ms.is_some_and(|t| t >= t1), "{r:?}");
            assert!(r.worker.as_deref().is_some_and(|w| w.contains('.')));
            assert_eq!(r.attempt, Some(0));
        }
    }
    for st in [TaskStatus::Queued, TaskStatus::Succeeded] {
        let l = list(
            &s,
            &TaskQuery {
                status: Some(st.into()),
                ..query("q")
            },
        )
        .await;
        assert!(l.is_empty(), "{st:?}: {l:?}");
    }
    // Stopping cancels both: back in the queue, recorded as queued, nothing running.
    w.stop().await;
    let queued = list(
        &s,
        &TaskQuery {
            status: Some(TaskStatus::Queued.into()),
            func: Some("sleep".into()),
            ..query("q")
        },
    )
    .await;
    assert_eq!(ids(&queued), ["run-a", "run-b"]);
    assert_eq!(records::executing(&mut con, &s.keys, "q").await.unwrap(), 0);
    let now = now_ms();
    let buckets = records::counts(&mut con, &s.keys, "q", now - 120_000, now)
        .await
        .unwrap();
    assert_eq!(buckets.iter().map(|b| b.started).sum::<i64>(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_start_is_counted_once_whether_or_not_it_was_recorded() {
    let s = Space::new("rec-start-counts");
    let mut con = s.con().await;
    let t0 = now_ms();
    s.enqueue(
        "q",
        &[
            s.env("short", "noop", "q", json!([])),
            s.env("long", "sleep", "q", json!([1_500])),
        ],
    )
    .await;
    let w = Running::start(builder(&s, &["q"], 2)).await;
    // The long attempt gets its started record while it runs, the short one never does.
    wait_until(
        "the long task is recorded as started",
        Duration::from_secs(10),
        || async {
            records::show_task(&mut s.con().await, &s.keys, "q", "long")
                .await
                .unwrap()
                .is_some_and(|r| r.status == "started")
        },
    )
    .await;
    wait_until("both done", Duration::from_secs(15), || async {
        s.stat("q", "completed").await == 2
    })
    .await;
    w.stop().await;
    let buckets = records::counts(&mut con, &s.keys, "q", t0, now_ms())
        .await
        .unwrap();
    let sum = |f: fn(&records::CountBucket) -> i64| buckets.iter().map(f).sum::<i64>();
    assert_eq!(sum(|b| b.started), 2);
    assert_eq!(sum(|b| b.completed), 2);
    for id in ["short", "long"] {
        let r = records::show_task(&mut con, &s.keys, "q", id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.status, "succeeded");
        assert!(r.started_ms.is_some() && r.worker.is_some() && r.duration_ms.is_some());
    }
}

/// Every way `list_tasks` walks the indexes (the id prefix, a function's members, one status
/// index, or all status indexes merged) returns exactly what a full read of the records
/// gives, in the same order, for every combination of filters and a small and a large limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_index_walk_agrees_with_a_full_read() {
    let s = Space::new("rec-walks");
    let mut envs = Vec::new();
    for i in 0..60 {
        envs.push(s.env(&format!("n-{i:02}"), "noop", "q", json!([])));
    }
    for i in 0..4 {
        let mut e = s.env(&format!("x-{i}"), "fail", "q", json!(["boom"]));
        e.max_retries = Some(0);
        envs.push(e);
    }
    // Failed attempts that will be retried (in ten minutes: they stay `retrying`).
    for i in 0..3 {
        envs.push(s.env(&format!("x-r{i}"), "fail", "q", json!(["again"])));
    }
    s.enqueue("q", &envs).await;
    // The same function in another queue must not leak into q's answers.
    s.enqueue("other", &[s.env("x-other", "fail", "other", json!([]))])
        .await;
    let w = Running::start(builder(&s, &["q"], 2).configure(|c| {
        c.retry_base_ms = 600_000;
        c.retry_max_ms = 600_000;
    }))
    .await;
    let count = |st| {
        let key = s.keys.tasks_status("q", st);
        let s = &s;
        async move { s.int(&["ZCARD", &key]).await }
    };
    wait_until(
        "60 succeeded, 4 dead, 3 retrying",
        Duration::from_secs(15),
        || async {
            count(TaskStatus::Succeeded).await == 60
                && count(TaskStatus::Dead).await == 4
                && count(TaskStatus::Retrying).await == 3
        },
    )
    .await;
    w.stop().await;
    let later: Vec<Envelope> = (0..6)
        .map(|i| s.env(&format!("n-later-{i}"), "later", "q", json!([])))
        .collect();
    s.enqueue("q", &later).await;

    let mut con = s.con().await;
    let all_ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(s.keys.tasks_ids("q"))
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    let mut all = Vec::new();
    for id in &all_ids {
        all.push(
            records::show_task(&mut con, &s.keys, "q", id)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(all.len(), 73);
    let mut times: Vec<u64> = all.iter().map(|r| r.updated_ms).collect();
    times.sort();
    let mid = times[times.len() / 2];
    let mut checked = 0;
    let filters = StatusFilter::value_variants();
    for status in [None].into_iter().chain(filters.iter().copied().map(Some)) {
        for func in [
            None,
            Some("noop"),
            Some("fail"),
            Some("later"),
            Some("none"),
        ] {
            for prefix in [None, Some("n-1"), Some("x-"), Some("n-"), Some("zz")] {
                for (since, until) in [(None, None), (Some(mid), None), (None, Some(mid))] {
                    for limit in [3, 1_000] {
                        let q = TaskQuery {
                            queue: "q".into(),
                            status,
                            since_ms: since,
                            until_ms: until,
                            id_prefix: prefix.map(String::from),
                            func: func.map(String::from),
                            limit,
                        };
                        let mut want: Vec<&protocol::TaskRecord> = all
                            .iter()
                            .filter(|r| {
                                status.is_none_or(|f| match f {
                                    // spelled out here, not taken from StatusFilter::statuses
                                    StatusFilter::Failed => {
                                        r.status == "retrying" || r.status == "dead"
                                    }
                                    f => {
                                        Some(r.status.as_str())
                                            == f.to_possible_value().as_ref().map(|v| v.get_name())
                                    }
                                }) && func.is_none_or(|f| r.func == f)
                                    && prefix.is_none_or(|p| r.id.starts_with(p))
                                    && since.is_none_or(|t| r.updated_ms >= t)
                                    && until.is_none_or(|t| r.updated_ms <= t)
                            })
                            .collect();
                        want.sort_by(|a, b| b.updated_ms.cmp(&a.updated_ms).then(b.id.cmp(&a.id)));
                        want.truncate(limit);
                        let want: Vec<&str> = want.iter().map(|r| r.id.as_str()).collect();
                        let got = records::list_tasks(&mut con, &s.keys, &q).await.unwrap();
                        let got: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
                        assert_eq!(got, want, "{q:?}");
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 7 * 5 * 5 * 3 * 2);
}

/// Retention by count takes the oldest records across the status indexes (which together are
/// the queue's time index), whatever their status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count_takes_the_oldest_of_every_status() {
    let s = Space::new("rec-retention-mixed");
    let mut con = s.con().await;
    s.keep_records("q", 10).await;
    let old: Vec<Envelope> = (0..8)
        .map(|i| s.env(&format!("a{i}"), "noop", "q", json!([])))
        .collect();
    s.enqueue("q", &old).await;
    let w = Running::start(builder(&s, &["q"], 1)).await;
    wait_until("8 succeeded", Duration::from_secs(15), || async {
        s.int(&["ZCARD", &s.keys.tasks_status("q", TaskStatus::Succeeded)])
            .await
            == 8
    })
    .await;
    w.stop().await;
    let succeeded_at: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(s.keys.tasks_status("q", TaskStatus::Succeeded))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut con)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let new: Vec<Envelope> = (0..8)
        .map(|i| s.env(&format!("b{i}"), "noop", "q", json!([])))
        .collect();
    s.enqueue("q", &new).await;
    assert_eq!(s.int(&["ZCARD", &s.keys.tasks_ids("q")]).await, 10);
    assert_eq!(
        s.int(&["ZCARD", &s.keys.tasks_status("q", TaskStatus::Queued)])
            .await,
        8,
        "the newest, queued, are kept"
    );
    // The two newest succeeded records are kept, the six older ones are gone entirely.
    for (i, (id, _)) in succeeded_at.iter().enumerate() {
        let kept = i >= 6;
        assert_eq!(
            s.int(&["EXISTS", &s.keys.task("q", id)]).await == 1,
            kept,
            "{id}"
        );
        assert_eq!(
            s.int(&["ZSCORE", &s.keys.tasks_func("q", "noop"), id])
                .await
                != 0,
            kept,
            "{id} in the function index"
        );
    }
}

/// A success after a failed attempt clears the record's error; a first-attempt success has
/// none; both report when they finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_after_a_retry_clears_the_error() {
    let s = Space::new("rec-retry-ok");
    let failed_once = Arc::new(AtomicBool::new(false));
    let f2 = failed_once.clone();
    let b = builder(&s, &["q"], 1).handler("flaky", move |_ctx| {
        let first = !f2.swap(true, Ordering::SeqCst);
        async move {
            if first {
                Err(TaskError::new("transient"))
            } else {
                Ok(json!("ok"))
            }
        }
    });
    let w = Running::start(b).await;
    s.enqueue(
        "q",
        &[
            s.env("flaky-1", "flaky", "q", json!([])),
            s.env("plain-1", "noop", "q", json!([])),
        ],
    )
    .await;
    wait_until("both succeeded", Duration::from_secs(15), || async {
        s.int(&["ZCARD", &s.keys.tasks_status("q", TaskStatus::Succeeded)])
            .await
            == 2
    })
    .await;
    w.stop().await;
    let mut con = s.con().await;
    for id in ["flaky-1", "plain-1"] {
        let r = records::show_task(&mut con, &s.keys, "q", id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.status, "succeeded");
        assert_eq!(r.error, None, "{id}");
        assert_eq!(r.finished_ms, Some(r.updated_ms), "{id}");
    }
    let flaky = records::show_task(&mut con, &s.keys, "q", "flaky-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(flaky.attempt, Some(1));
}

/// A task id reused for another function is a new task: the index of its old function no
/// longer holds it. Reused in another queue, it is another record: each queue keeps its own
/// (records are kept per queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_id_leaves_the_index_of_its_old_function_and_is_another_queues_own() {
    let s = Space::new("rec-reuse");
    let mut first = s.env("dup", "fail", "q1", json!(["boom"]));
    first.max_retries = Some(0);
    s.enqueue("q1", &[first]).await;
    let w = Running::start(builder(&s, &["q1"], 1)).await;
    wait_until("dead in q1", Duration::from_secs(10), || async {
        s.int(&["ZCARD", &s.keys.tasks_status("q1", TaskStatus::Dead)])
            .await
            == 1
    })
    .await;
    w.stop().await;
    let dead = records_of(&s, "q1", "dup").await;
    assert_eq!(dead.error.as_deref(), Some("boom"));
    // (each index below could only ever hold this one id)
    let holds_it = |key: String| {
        let s = &s;
        async move { s.int(&["ZCARD", &key]).await > 0 }
    };
    // The same queue, another function: a new task, with nothing of the old one's record;
    // the old function's index lets it go.
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.enqueue("q1", &[s.env("dup", "later", "q1", json!([]))])
        .await;
    let first = records_of(&s, "q1", "dup").await;
    assert_eq!(
        (first.status.as_str(), first.func.as_str(), first.attempt),
        ("queued", "later", Some(0))
    );
    assert_eq!(
        (
            &first.error,
            &first.worker,
            first.duration_ms,
            first.started_ms
        ),
        (&None, &None, None, None),
        "nothing of the dead task stays: {first:?}"
    );
    assert!(first.created_ms > dead.created_ms, "{first:?}");
    assert!(!holds_it(s.keys.tasks_func("q1", "fail")).await);
    assert!(!holds_it(s.keys.tasks_status("q1", TaskStatus::Dead)).await);
    assert!(holds_it(s.keys.tasks_func("q1", "later")).await);
    let by_func = |func: &str| TaskQuery {
        func: Some(func.into()),
        ..query("q1")
    };
    assert!(list(&s, &by_func("fail")).await.is_empty());
    assert_eq!(ids(&list(&s, &by_func("later")).await), ["dup"]);
    // Another queue: a record of its own there; q1's stays, with its indexes.
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.enqueue("q2", &[s.env("dup", "noop", "q2", json!([]))])
        .await;
    for key in [
        s.keys.tasks_ids("q1"),
        s.keys.tasks_status("q1", TaskStatus::Queued),
        s.keys.tasks_func("q1", "later"),
    ] {
        assert!(holds_it(key.clone()).await, "{key} lost the id");
    }
    let prefix = |q: &str| TaskQuery {
        id_prefix: Some("du".into()),
        ..query(q)
    };
    assert_eq!(ids(&list(&s, &prefix("q1")).await), ["dup"]);
    assert_eq!(ids(&list(&s, &prefix("q2")).await), ["dup"]);
    let other = records_of(&s, "q2", "dup").await;
    assert_eq!((other.queue.as_str(), other.func.as_str()), ("q2", "noop"));
    assert!(
        other.created_ms > first.created_ms,
        "a new task in q2: {other:?} after {first:?}"
    );
    let still = records_of(&s, "q1", "dup").await;
    assert_eq!((still.queue.as_str(), still.func.as_str()), ("q1", "later"));
}

/// Two tenants' queues (`{a.jobs}`, `{b.jobs}`) on one Redis and one prefix, a task of the
/// same id in each: two records, each found under its queue, each run by its own worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_tasks_of_one_id_are_two_records() {
    let s = Space::new("rec-tenants");
    let (a, b) = (Keys::queue_id("a", "jobs"), Keys::queue_id("b", "jobs"));
    s.enqueue(&a, &[s.env("order-1", "noop", &a, json!([]))])
        .await;
    let mut theirs = s.env("order-1", "fail", &b, json!(["b's own failure"]));
    theirs.max_retries = Some(0);
    s.enqueue(&b, &[theirs]).await;
    let (wa, wb) = (
        Running::start(builder(&s, &[a.as_str()], 1)).await,
        Running::start(builder(&s, &[b.as_str()], 1)).await,
    );
    wait_until("both tasks done", Duration::from_secs(10), || async {
        s.int(&["ZCARD", &s.keys.tasks_status(&a, TaskStatus::Succeeded)])
            .await
            == 1
            && s.int(&["ZCARD", &s.keys.tasks_status(&b, TaskStatus::Dead)])
                .await
                == 1
    })
    .await;
    wa.stop().await;
    wb.stop().await;
    let (ra, rb) = (
        records_of(&s, &a, "order-1").await,
        records_of(&s, &b, "order-1").await,
    );
    assert_eq!(
        (
            ra.queue.as_str(),
            ra.func.as_str(),
            ra.status.as_str(),
            &ra.error
        ),
        (a.as_str(), "noop", "succeeded", &None)
    );
    assert_eq!(
        (rb.queue.as_str(), rb.func.as_str(), rb.status.as_str()),
        (b.as_str(), "fail", "dead")
    );
    assert_eq!(rb.error.as_deref(), Some("b's own failure"));
    assert_ne!(s.keys.task(&a, "order-1"), s.keys.task(&b, "order-1"));
    // each tenant's query sees its own
    assert_eq!(ids(&list(&s, &query(&a)).await), ["order-1"]);
    assert_eq!(list(&s, &query(&b)).await[0].status, "dead");
}

/// A record an earlier version wrote under the id alone (`Keys::task_legacy`) is still read
/// for its queue, and moves under the queue when the task is written again (a task in flight
/// across the upgrade).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_an_earlier_version_is_read_and_moved_under_its_queue() {
    let s = Space::new("rec-legacy");
    let legacy = s.keys.task_legacy("old-1");
    let mut con = s.con().await;
    // written a minute ago (within retention: trimming would delete it)
    let t0 = now_ms() - 60_000;
    let t0s = t0.to_string();
    let _: () = redis::cmd("HSET")
        .arg(&legacy)
        .arg(&[
            ("id", "old-1"),
            ("queue", "q"),
            ("func", "noop"),
            ("status", "queued"),
            ("created_ms", t0s.as_str()),
            ("updated_ms", t0s.as_str()),
        ])
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg(s.keys.tasks_status("q", TaskStatus::Queued))
        .arg(t0)
        .arg("old-1")
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg(s.keys.tasks_ids("q"))
        .arg(0)
        .arg("old-1")
        .query_async(&mut con)
        .await
        .unwrap();
    // read: by id, in a list, and not for another queue
    assert_eq!(records_of(&s, "q", "old-1").await.created_ms, Some(t0));
    assert_eq!(ids(&list(&s, &query("q")).await), ["old-1"]);
    let prefix = TaskQuery {
        id_prefix: Some("old".into()),
        ..query("q")
    };
    assert_eq!(ids(&list(&s, &prefix).await), ["old-1"]);
    assert!(
        records::show_task(&mut con, &s.keys, "other", "old-1")
            .await
            .unwrap()
            .is_none()
    );
    // its task (waiting across the upgrade) runs: the record moves under the queue, whole
    let _: () = redis::cmd("LPUSH")
        .arg(s.keys.queue("q"))
        .arg(s.env("old-1", "noop", "q", json!([])).to_json())
        .query_async(&mut con)
        .await
        .unwrap();
    let w = Running::start(builder(&s, &["q"], 1)).await;
    wait_until("the old task done", Duration::from_secs(10), || async {
        s.int(&["ZCARD", &s.keys.tasks_status("q", TaskStatus::Succeeded)])
            .await
            == 1
    })
    .await;
    w.stop().await;
    assert_eq!(s.int(&["EXISTS", &legacy]).await, 0);
    let r = records_of(&s, "q", "old-1").await;
    assert_eq!((r.status.as_str(), r.created_ms), ("succeeded", Some(t0)));
}

async fn records_of(s: &Space, queue: &str, id: &str) -> protocol::TaskRecord {
    let mut con = s.con().await;
    records::show_task(&mut con, &s.keys, queue, id)
        .await
        .unwrap()
        .unwrap()
}

/// A worker adds its outcomes to the minute buckets while it runs (about every second), not
/// only when it stops, and stopping adds nothing twice; with records on or off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcome_counts_reach_redis_while_the_worker_runs() {
    for records in [true, false] {
        outcome_counts(records).await;
    }
}

async fn outcome_counts(records: bool) {
    let s = Space::new(&format!("rec-count-flush-{records}"));
    let t0 = now_ms();
    let w = Running::start(builder(&s, &["q"], 2).configure(|c| c.records = records)).await;
    let mut envs: Vec<Envelope> = (0..3)
        .map(|i| s.env(&format!("ok-{i}"), "noop", "q", json!([])))
        .collect();
    let mut bad = s.env("bad", "fail", "q", json!(["boom"]));
    bad.max_retries = Some(0);
    envs.push(bad);
    s.enqueue("q", &envs).await;
    let sums = || async {
        let mut con = s.con().await;
        let b = records::counts(&mut con, &s.keys, "q", t0, now_ms())
            .await
            .unwrap();
        let sum = |f: fn(&records::CountBucket) -> i64| b.iter().map(f).sum::<i64>();
        [
            sum(|b| b.submitted),
            sum(|b| b.started),
            sum(|b| b.completed),
            sum(|b| b.failed),
            sum(|b| b.dead),
        ]
    };
    wait_until(
        "the outcomes are counted",
        Duration::from_secs(15),
        || async { sums().await == [4, 4, 3, 1, 1] },
    )
    .await;
    w.stop().await;
    assert_eq!(sums().await, [4, 4, 3, 1, 1]);
}
