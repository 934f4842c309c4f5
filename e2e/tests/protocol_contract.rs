//! The wire contract, end to end: what the worker side writes is what the operator side
//! reads, and the other way round, for every key the two share — written with the worker's
//! code, read with the operator's (and settings written with the operator's code, read and
//! acted on by the worker's), against the real Redis at 127.0.0.1:6379. Each test has its own
//! key prefix, so they run in parallel. Both sides take key names from `funcscale_protocol`
//! only; these tests are what notices when one side's reading of a value drifts from the
//! other's writing of it.
//!
//! | key | written by | read by |
//! | --- | --- | --- |
//! | `Keys::queue` | producers (`protocol::enqueue`), the beat | the operator's poll: depth, oldest task's age |
//! | `Keys::stats` | enqueue (`enqueued`), workers' finishes (`completed`, task time) | the poll: arrival and completion rates, T |
//! | `Keys::schedules_per_period` | the registry (`protocol::schedules_add`/`remove`) | the poll: M |
//! | `Keys::queue_config` | the operator (`queue_config::write_config`) | the workers' scripts: destinations, retention; the workers: retries |
//! | `Keys::delayed` | workers' finishes of a failed attempt with retries left (due time from the queue's backoff) | the poll: retries waiting, retries due (backlog) and the next due time |

use std::time::Duration;

use funcscale_e2e::scenario::REDIS_URL as URL;
use funcscale_e2e::wait::eventually;

use funcscale_operator::crd::{FuncQueue, FuncQueueSpec, QueueFormat, RetryBackoff, Schedule};
use funcscale_operator::queue_config;
use funcscale_operator::redis_metrics::{
    MetricsCache, Poller, PollerConfig, QueueId, QueueMetrics, QueueTarget, Reading, RedisEndpoint,
    Registry,
};
use funcscale_protocol::cron::{Cron, per_period};
use funcscale_protocol::{
    Destination, Envelope, Keys, QueueConfig, QueueStats, ScheduleEntry, TaskTimeAverage,
};
use funcscale_worker::protocol;
use funcscale_worker::worker::{Worker, now_ms};

const PERIOD_MS: u64 = 60_000;

fn prefix(test: &str) -> Keys {
    Keys::new(format!(
        "contract-{test}-{}-{}",
        std::process::id(),
        now_ms()
    ))
}

/// A connection that waits for slow replies (the clean-up's `KEYS` over a Redis that every
/// parallel test fills): redis-rs' default response timeout is for interactive use.
async fn con() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(URL).unwrap();
    let cfg = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(30)));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .unwrap()
}

/// Delete the test's keys (one script: every key under the prefix).
async fn cleanup(keys: &Keys) {
    let lua = "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end";
    let script = redis::Script::new(lua);
    let pattern = format!("{}:*", keys.prefix());
    let () = script
        .arg(pattern)
        .invoke_async(&mut con().await)
        .await
        .unwrap();
}

type Running = tokio::task::JoinHandle<anyhow::Result<()>>;

/// A real worker (one process, the built-in handlers) on `queue` until the returned sender
/// fires; join the handle to wait for its drain.
async fn worker(keys: &Keys, queue: &str) -> (tokio::sync::oneshot::Sender<()>, Running) {
    let builder = Worker::builder().redis_url(URL).prefix(keys.prefix());
    let worker = builder.queues([queue]).processes(1).build().await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    (
        stop,
        tokio::spawn(worker.run(async move { stopped.await.unwrap_or(()) })),
    )
}

/// The operator's poller over one funcscale queue `name` with `schedules` in its spec.
fn poller(keys: &Keys, name: &str, schedules: &[&str]) -> (Poller, MetricsCache, QueueId) {
    let mut q = FuncQueue::new(
        name,
        FuncQueueSpec {
            format: QueueFormat::Funcscale,
            task_time_ms: 500,
            schedules: schedules
                .iter()
                .enumerate()
                .map(|(i, c)| Schedule {
                    name: format!("s{i}"),
                    cron: (*c).into(),
                    function: "f".into(),
                    args: vec![],
                })
                .collect(),
            ..Default::default()
        },
    );
    q.metadata.namespace = Some("ns".into());
    let registry = Registry::default();
    let cache = MetricsCache::default();
    let id = QueueId::new("ns", name);
    registry.upsert(
        id.clone(),
        QueueTarget::for_queue(&q, name, RedisEndpoint::new(URL), keys, PERIOD_MS),
    );
    (
        Poller::new(registry, cache.clone(), PollerConfig::default()),
        cache,
        id,
    )
}

async fn read(poller: &mut Poller, cache: &MetricsCache, id: &QueueId, at: u64) -> QueueMetrics {
    poller.poll_once(at).await;
    match cache.get(id) {
        Some(Reading::Ok(m)) => m,
        other => panic!("{id}: {other:?}"),
    }
}

async fn stats(keys: &Keys, queue: &str) -> QueueStats {
    let pairs: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(keys.stats(queue))
        .query_async(&mut con().await)
        .await
        .unwrap();
    QueueStats::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// `Keys::queue`: the producer's envelopes are the operator's depth and oldest age; the
/// enqueue's `enqueued` counter is its arrival rate.
#[tokio::test]
async fn enqueued_tasks_are_the_depth_age_and_arrivals_the_operator_reads() {
    let keys = prefix("queue");
    let mut c = con().await;
    let now = now_ms();
    let (mut poller, cache, id) = poller(&keys, "q", &[]);
    let envelopes: Vec<Envelope> = [40_000u64, 20_000, 10_000]
        .iter()
        .enumerate()
        .map(|(i, age)| Envelope::new(format!("t{i}"), "noop", "q", now - age))
        .collect();
    protocol::enqueue(&mut c, &keys, "q", &envelopes[..1])
        .await
        .unwrap();
    let m = read(&mut poller, &cache, &id, now).await;
    assert_eq!(m.depth, 1);
    assert!((m.oldest_age_seconds.unwrap() - 40.0).abs() < 0.01, "{m:?}");

    protocol::enqueue(&mut c, &keys, "q", &envelopes[1..])
        .await
        .unwrap();
    let m = read(&mut poller, &cache, &id, now + 1_000).await;
    assert_eq!(m.depth, 3);
    assert!((m.oldest_age_seconds.unwrap() - 41.0).abs() < 0.01, "{m:?}");
    assert_eq!(m.arrival_rate, 2.0, "two enqueued in the second");
    cleanup(&keys).await;
}

/// `Keys::stats`: the worker's finishes are the operator's completion rate and measured
/// task time T.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_are_the_completions_and_task_time_the_operator_reads() {
    let keys = prefix("stats");
    let mut c = con().await;
    let (mut poller, cache, id) = poller(&keys, "work", &[]);
    let now = now_ms();
    let m = read(&mut poller, &cache, &id, now).await;
    assert!(!m.task_time_measured, "nothing finished yet: the hint");
    assert_eq!(m.task_time_ms, 500.0);

    let (stop, running) = worker(&keys, "work").await;
    let tasks: Vec<Envelope> = (0..4)
        .map(|i| {
            let mut e = Envelope::new(format!("w{i}"), "sleep", "work", now_ms());
            e.args = serde_json::json!([20]);
            e
        })
        .collect();
    protocol::enqueue(&mut c, &keys, "work", &tasks)
        .await
        .unwrap();
    let done = || async { (stats(&keys, "work").await.completed == 4).then_some(()) };
    eventually(Duration::from_secs(20), "4 completions", done)
        .await
        .unwrap();
    let _ = stop.send(());
    running.await.unwrap().unwrap();

    let written = stats(&keys, "work").await;
    let m = read(&mut poller, &cache, &id, now + 1_000).await;
    assert!(m.task_time_measured, "{m:?}");
    assert_eq!(Some(m.task_time_ms), written.ewma_ms);
    assert!(m.task_time_ms >= 20.0, "each task slept 20 ms: {m:?}");
    assert_eq!(m.completion_rate, 4.0, "four completed in the second");
    assert_eq!(m.arrival_rate, 4.0, "four enqueued in the second");
    assert_eq!(m.depth, 0);
    cleanup(&keys).await;
}

/// `Keys::stats`: the task-time average the stats script keeps is the one the simulator
/// computes in Rust (`TaskTimeAverage`), so the simulator learns T as the operator does live.
#[tokio::test]
async fn the_stats_script_average_is_the_simulators() {
    let keys = prefix("ewma");
    let mut c = con().await;
    let script = redis::Script::new(funcscale_protocol::scripts::RECORD_DURATION);
    let stats_key = keys.stats("avg");
    let mut rust: Option<TaskTimeAverage> = None;
    // bursts of finishes within a millisecond, then gaps of seconds to minutes
    let samples = [
        (500, 1_000_000),
        (700, 1_000_000),
        (90, 1_000_001),
        (3_000, 1_002_500),
        (450, 1_062_500),
        (20, 1_062_600),
        (1_200, 1_300_000),
        (480, 1_300_010),
    ];
    for (duration, now) in samples {
        let () = funcscale_protocol::stats::record_duration(
            &script,
            &stats_key,
            (duration, now),
            funcscale_protocol::StatsField::Completed,
        )
        .invoke_async(&mut c)
        .await
        .unwrap();
        rust = Some(TaskTimeAverage::record(
            rust,
            duration as f64,
            now,
            funcscale_protocol::STATS_HALF_LIFE_MS,
        ));
        let lua = stats(&keys, "avg").await.ewma_ms.unwrap();
        let r = rust.unwrap().ewma_ms;
        assert!(
            (lua - r).abs() <= 1e-6 * r.max(1.0),
            "after {duration} ms at {now}: Lua {lua}, Rust {r}"
        );
    }
    cleanup(&keys).await;
}

/// `Keys::schedules_per_period`: the registry's M per minute (fractional when entries fire
/// less often than every minute) is the operator's M over its period, with the queue's own
/// `spec.schedules` counted by the same cron reader.
#[tokio::test]
async fn registered_schedules_are_the_cron_load_the_operator_reads() {
    let keys = prefix("schedules");
    let mut c = con().await;
    let (mut poller, cache, id) = poller(&keys, "mon", &["*/10 * * * * *"]);
    let entry = |cron: &str| {
        let per_minute = Cron::parse(cron).unwrap().per_minute();
        let e = ScheduleEntry {
            cron: cron.into(),
            func: "check".into(),
            args: serde_json::json!([]),
        };
        (e, per_minute)
    };
    let entries: Vec<(String, ScheduleEntry, f64)> = ["* * * * *", "* * * * *", "*/5 * * * *"]
        .iter()
        .enumerate()
        .map(|(i, cron)| {
            let (e, m) = entry(cron);
            (format!("m{i}"), e, m)
        })
        .collect();
    protocol::schedules_add(&mut c, &keys, "mon", &entries)
        .await
        .unwrap();
    let m = read(&mut poller, &cache, &id, now_ms()).await;
    // static: 6 a minute; registry: 1 + 1 + 0.2 a minute, rounded up over the period
    assert_eq!(m.scheduled_per_period, 6 + per_period(2.2, PERIOD_MS));
    assert_eq!(m.scheduled_per_period, 9);

    // only the fractional entry left: 0.2 a minute is still one execution a period, not 0
    protocol::schedules_remove(&mut c, &keys, "mon", &["m0".into(), "m1".into()])
        .await
        .unwrap();
    let m = read(&mut poller, &cache, &id, now_ms() + 1_000).await;
    assert_eq!(m.scheduled_per_period, 6 + 1);

    protocol::schedules_remove(&mut c, &keys, "mon", &["m2".into()])
        .await
        .unwrap();
    let m = read(&mut poller, &cache, &id, now_ms() + 2_000).await;
    assert_eq!(m.scheduled_per_period, 6);
    cleanup(&keys).await;
}

/// The settings of `queue` written with the operator's code, read back with the worker's.
async fn written_then_read(keys: &Keys, queue: &str, config: &QueueConfig) -> QueueConfig {
    let mut c = con().await;
    let write = queue_config::write_config(&mut c, keys, queue, config);
    write.await.unwrap();
    protocol::queue_config_get(&mut c, keys, queue)
        .await
        .unwrap()
}

/// `Keys::queue_config`: what the operator writes is what the worker reads back and routes
/// by; a setting the operator drops is gone for the worker too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_settings_the_operator_writes_are_what_workers_route_by() {
    let keys = prefix("settings");
    let mut c = con().await;
    let config = QueueConfig {
        record_max_age_ms: Some(3_600_000),
        record_max_count: Some(50),
        on_success: Some(Destination::Queue {
            queue: "results".into(),
            func: Some("collect".into()),
        }),
        on_failure: Some(Destination::Url("http://127.0.0.1:9/failed".into())),
        max_retries: Some(0),
        retry_backoff_base_ms: Some(250),
        retry_backoff_max_ms: Some(4_000),
    };
    assert_eq!(written_then_read(&keys, "orders", &config).await, config);

    let (stop, running) = worker(&keys, "orders").await;
    protocol::enqueue(
        &mut c,
        &keys,
        "orders",
        &[Envelope::new("o1", "noop", "orders", now_ms())],
    )
    .await
    .unwrap();
    let results = keys.queue("results");
    let routed = || async {
        let mut c = con().await;
        let mut head = redis::cmd("LINDEX");
        head.arg(&results).arg(0);
        head.query_async::<Option<String>>(&mut c).await.unwrap()
    };
    let raw = eventually(Duration::from_secs(20), "the routed result", routed)
        .await
        .unwrap();
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    // the routed task is an envelope the worker and the operator read like any other
    let routed = Envelope::from_json(&raw).unwrap();
    assert_eq!(
        (routed.func.as_str(), routed.queue.as_str()),
        ("collect", "results")
    );
    assert_eq!(routed.kwargs["task"]["id"], "o1");

    // the operator drops the settings: the worker reads none
    let none = QueueConfig::default();
    assert_eq!(written_then_read(&keys, "orders", &none).await, none);
    cleanup(&keys).await;
}

/// `Keys::queue_config`, retries: the operator writes a FuncQueue's `maxRetries` and
/// `retryBackoff`; a worker applies them to a task a producer enqueued without a count of
/// its own (on `maxRetries: 0` it dies after its first attempt) and keeps the count of a task
/// that carries one — retried after the queue's short backoff, not the worker's 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queues_retry_settings_reach_the_tasks_producers_enqueue() {
    let keys = prefix("retries");
    let queue = Keys::queue_id("ns", "jobs");
    let spec = FuncQueueSpec {
        max_retries: 0,
        retry_backoff: Some(RetryBackoff {
            base_ms: Some(20),
            max_ms: Some(40),
        }),
        ..Default::default()
    };
    let config = queue_config::desired_config(&spec, (None, None));
    queue_config::write_config(&mut con().await, &keys, &queue, &config)
        .await
        .unwrap();
    let mut plain = Envelope::new("plain", "fail", &queue, now_ms());
    plain.args = serde_json::json!(["boom"]);
    let mut own = plain.clone();
    own.id = "own".into();
    own.max_retries = Some(3);
    protocol::enqueue(&mut con().await, &keys, &queue, &[plain, own])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (stop, running) = worker(&keys, &queue).await;
    let dead = keys.dead(&queue);
    let raw = eventually(Duration::from_secs(20), "both tasks dead-lettered", || {
        let dead = dead.clone();
        async move {
            let list: Vec<String> = redis::cmd("LRANGE")
                .arg(&dead)
                .arg(0)
                .arg(-1)
                .query_async(&mut con().await)
                .await
                .unwrap();
            (list.len() == 2).then_some(list)
        }
    })
    .await
    .unwrap();
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    let mut attempts: Vec<(String, u32)> = raw
        .iter()
        .map(|r| {
            let e = Envelope::from_json(r).unwrap();
            (e.id, e.attempt)
        })
        .collect();
    attempts.sort();
    assert_eq!(attempts, vec![("own".into(), 3), ("plain".into(), 0)]);
    // three retries at the worker's default backoff (1 s, 2 s, 4 s, ±50%) take ≥ 3.5 s
    assert!(
        started.elapsed() < Duration::from_millis(3_000),
        "{:?}",
        started.elapsed()
    );
    cleanup(&keys).await;
}

/// `Keys::delayed`: a task that fails with retries left, in the worker's code, waits in the
/// delayed set with its due time (the operator-written queue backoff, 60 s); the operator
/// reads it as a retry waiting (not backlog) until that time and as a due one (backlog) after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tasks_retry_is_the_waiting_then_due_retry_the_operator_reads() {
    let keys = prefix("delayed");
    let (mut poller, cache, id) = poller(&keys, "flaky", &[]);
    let spec = FuncQueueSpec {
        max_retries: 2,
        retry_backoff: Some(RetryBackoff {
            base_ms: Some(60_000),
            max_ms: Some(60_000),
        }),
        ..Default::default()
    };
    let config = queue_config::desired_config(&spec, (None, None));
    queue_config::write_config(&mut con().await, &keys, "flaky", &config)
        .await
        .unwrap();
    let mut task = Envelope::new("f1", "fail", "flaky", now_ms());
    task.args = serde_json::json!(["boom"]);
    protocol::enqueue(&mut con().await, &keys, "flaky", &[task])
        .await
        .unwrap();
    let (stop, running) = worker(&keys, "flaky").await;
    let delayed = keys.delayed("flaky");
    let (raw, due) = eventually(Duration::from_secs(20), "the retry waiting", || {
        let delayed = delayed.clone();
        async move {
            let set: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(&delayed)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut con().await)
                .await
                .unwrap();
            (set.len() == 1).then(|| set[0].clone())
        }
    })
    .await
    .unwrap();
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    let retry = Envelope::from_json(&raw).unwrap();
    assert_eq!((retry.id.as_str(), retry.attempt), ("f1", 1));
    let due = due as u64;
    let now = now_ms();
    assert!(
        due > now + 20_000,
        "the queue's 60 s backoff: due {due}, now {now}"
    );

    let m = read(&mut poller, &cache, &id, now).await;
    assert!(m.retries_read, "{m:?}");
    assert_eq!(
        (
            m.depth,
            m.retries_waiting,
            m.retries_due,
            m.next_retry_due_ms
        ),
        (0, 1, 0, Some(due)),
        "waiting, not due"
    );
    let m = read(&mut poller, &cache, &id, due + 1).await;
    assert_eq!(
        (m.depth, m.retries_waiting, m.retries_due),
        (0, 1, 1),
        "due once its time has passed"
    );
    cleanup(&keys).await;
}
