//! Metrics reader against the real Redis at 127.0.0.1:6379. Each test uses its own key
//! prefix / foreign key names, so tests run in parallel.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use funcscale_operator::crd::{FuncQueue, FuncQueueSpec, QueueFormat, Schedule};
use funcscale_operator::redis_metrics::{
    MetricsCache, Poller, PollerConfig, QueueId, QueueTarget, Reading, RedisEndpoint, Registry,
};
use funcscale_worker::protocol::{self, Envelope, Keys};
use redis::AsyncCommands;

const URL: &str = "redis://127.0.0.1:6379/0";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn unique(tag: &str) -> String {
    format!("t-{tag}-{}-{}", std::process::id(), now_ms())
}

async fn con() -> redis::aio::MultiplexedConnection {
    redis::Client::open(URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn queue(name: &str, format: QueueFormat, key: Option<String>) -> FuncQueue {
    let mut q = FuncQueue::new(
        name,
        FuncQueueSpec {
            format,
            key,
            task_time_ms: 500,
            ..Default::default()
        },
    );
    q.metadata.namespace = Some("ns".into());
    q
}

/// A registry with one funcscale queue `ns/name` on `endpoint`, and its cache.
fn one_queue(
    name: &str,
    endpoint: RedisEndpoint,
    keys: &Keys,
) -> (Registry, MetricsCache, QueueId) {
    let registry = Registry::default();
    let id = QueueId::new("ns", name);
    registry.upsert(
        id.clone(),
        QueueTarget::for_queue(
            &queue(name, QueueFormat::Funcscale, None),
            name,
            endpoint,
            keys,
            60_000,
        ),
    );
    (registry, MetricsCache::default(), id)
}

fn ok(cache: &MetricsCache, id: &QueueId) -> funcscale_operator::redis_metrics::QueueMetrics {
    match cache.get(id) {
        Some(Reading::Ok(m)) => m,
        other => panic!("{id}: {other:?}"),
    }
}

#[tokio::test]
async fn funcscale_queue_depth_age_rates_task_time_and_schedules() {
    let prefix = unique("fs");
    let keys = Keys::new(&prefix);
    let mut c = con().await;
    let now = now_ms();
    // oldest task at the right end (producers LPUSH)
    for (i, age_ms) in [30_000u64, 20_000, 10_000].iter().enumerate() {
        let e = Envelope::new(format!("id{i}"), "f", "q1", now - age_ms);
        let _: () = c.lpush(keys.queue("q1"), e.to_json()).await.unwrap();
    }
    let _: () = c
        .hset_multiple(
            keys.stats("q1"),
            &[("enqueued", "100"), ("completed", "40"), ("ewma_ms", "480")],
        )
        .await
        .unwrap();
    let _: () = c
        .set(keys.schedules_per_period("q1"), 10_000)
        .await
        .unwrap();

    let mut q = queue("q1", QueueFormat::Funcscale, None);
    q.spec.schedules = vec![Schedule {
        name: "s".into(),
        cron: "*/10 * * * * *".into(),
        function: "f".into(),
        args: vec![],
    }];
    let registry = Registry::default();
    let cache = MetricsCache::default();
    let id = QueueId::new("ns", "q1");
    registry.upsert(
        id.clone(),
        QueueTarget::for_queue(&q, "q1", RedisEndpoint::new(URL), &keys, 60_000),
    );
    let mut poller = Poller::new(registry, cache.clone(), PollerConfig::default());

    let report = poller.poll_once(now).await;
    assert_eq!(report.changed, vec![id.clone()]);
    let m = ok(&cache, &id);
    assert_eq!(m.depth, 3);
    assert!((m.oldest_age_seconds.unwrap() - 30.0).abs() < 0.01, "{m:?}");
    assert_eq!(m.task_time_ms, 480.0);
    assert!(m.task_time_measured);
    assert_eq!(m.scheduled_per_period, 10_006);

    // producers enqueue 50 more, workers complete 20, one second later
    let _: () = c.hincr(keys.stats("q1"), "enqueued", 50).await.unwrap();
    let _: () = c.hincr(keys.stats("q1"), "completed", 20).await.unwrap();
    poller.poll_once(now + 1000).await;
    let m = ok(&cache, &id);
    assert_eq!(m.arrival_rate, 50.0);
    assert_eq!(m.completion_rate, 20.0);
    // read from the running set (none here), not estimated as 20/s × 0.48 s = 10
    assert_eq!((m.in_flight, m.in_flight_measured), (0, true));
}

/// Size one pool of 5 processes per pod (drain target 60 s, [0, 30] pods, at `current`)
/// serving the queue `id` alone, from the poller's reading.
fn size_alone(
    cache: &MetricsCache,
    id: &QueueId,
    current: i32,
    now_ms: u64,
) -> funcscale_operator::policy::Decision {
    size_alone_with(cache, id, current, now_ms, 0)
}

/// [`size_alone`] with `autoscaling.activationDepth`.
fn size_alone_with(
    cache: &MetricsCache,
    id: &QueueId,
    current: i32,
    now_ms: u64,
    activation_depth: u64,
) -> funcscale_operator::policy::Decision {
    use funcscale_operator::policy::{self, History, Input, PolicyConfig};
    use funcscale_operator::pool::size::{QueueReading, aggregate};
    let obs = aggregate(
        &[QueueReading::whole(&id.name, cache.get(id))],
        funcscale_operator::policy::DEFAULT_PERIOD_MS,
    )
    .unwrap();
    let cfg = PolicyConfig {
        min_replicas: 0,
        max_replicas: 30,
        scale_down_stabilization_ms: 0,
        activation_depth,
        ..PolicyConfig::default()
    };
    let input = Input {
        now_ms,
        current,
        observation: Some(obs),
    };
    policy::decide(&cfg, &input, &mut History::default())
}

/// 3,000 tasks of 300 ms enqueued at once show up as 300/s arriving over the 10 s window and
/// as a backlog of 3,000; they are the same tasks, so the pool wants the 3 pods of 5 that drain
/// 3,000 × 300 ms in 60 s, not 21.
#[tokio::test]
async fn a_burst_is_counted_once_as_backlog() {
    let keys = Keys::new(unique("burst"));
    let (registry, cache, id) = one_queue("burst", RedisEndpoint::new(URL), &keys);
    let mut c = con().await;
    let _: () = c.hset(keys.stats("burst"), "ewma_ms", 300).await.unwrap();
    let mut poller = Poller::new(registry, cache.clone(), PollerConfig::default());
    let t0 = now_ms();
    poller.poll_once(t0).await;
    let envs: Vec<Envelope> = (0..3_000)
        .map(|i| Envelope::new(format!("b{i}"), "f", "burst", t0))
        .collect();
    protocol::enqueue(&mut c, &keys, "burst", &envs)
        .await
        .unwrap();
    poller.poll_once(t0 + 10_000).await;
    let m = ok(&cache, &id);
    assert_eq!(
        (m.depth, m.arrival_rate, m.one_off_rate),
        (3_000, 300.0, 300.0),
        "{m:?}"
    );
    let d = size_alone(&cache, &id, 3, t0 + 10_000);
    assert_eq!(d.recommendation, 3, "{}", d.message);

    // a worker drains a third of it: what left the queue was the burst, not a new flow
    for _ in 0..1_000 {
        let _: Option<String> = c.rpop(keys.queue("burst"), None).await.unwrap();
    }
    poller.poll_once(t0 + 11_000).await;
    let d = size_alone(&cache, &id, 3, t0 + 11_000);
    assert_eq!(d.recommendation, 2, "2,000 × 300 ms in 60 s: {}", d.message);
}

/// A retry waiting in the delayed set is not backlog until it is due; once due it is, so a
/// pool at zero (whose workers would move it to the queue) starts.
#[tokio::test]
async fn a_due_retry_wakes_a_pool_at_zero() {
    let keys = Keys::new(unique("retry"));
    let (registry, cache, id) = one_queue("rq", RedisEndpoint::new(URL), &keys);
    let mut c = con().await;
    let t0 = now_ms();
    let retry = Envelope::new("r1", "f", "rq", t0 - 60_000).to_json();
    let _: () = c
        .zadd(keys.delayed("rq"), &retry, t0 + 5_000)
        .await
        .unwrap();
    let mut poller = Poller::new(registry, cache.clone(), PollerConfig::default());
    poller.poll_once(t0).await;
    let m = ok(&cache, &id);
    assert_eq!(
        (m.retries_waiting, m.retries_due, m.next_retry_due_ms),
        (1, 0, Some(t0 + 5_000))
    );
    let d = size_alone(&cache, &id, 0, t0);
    assert_eq!(d.desired, 0, "not due yet: {}", d.message);

    let report = poller.poll_once(t0 + 6_000).await;
    assert_eq!(report.changed, vec![id.clone()], "the pools are triggered");
    let m = ok(&cache, &id);
    assert_eq!((m.depth, m.retries_due), (0, 1));
    let d = size_alone(&cache, &id, 0, t0 + 6_000);
    assert_eq!(d.desired, 1, "{}", d.message);
    assert!(d.message.contains("backlog 1"), "{}", d.message);
}

/// A delivery to a destination staged in the queue's outbox is made only by the queue's
/// workers: once due it is backlog, so a pool at zero starts a worker to make it (else a
/// webhook would wait for the next task). One not due yet (backing off after a failure) is
/// not.
#[tokio::test]
async fn a_due_delivery_wakes_a_pool_at_zero() {
    let keys = Keys::new(unique("outbox"));
    let (registry, cache, id) = one_queue("hooks", RedisEndpoint::new(URL), &keys);
    let mut c = con().await;
    let t0 = now_ms();
    // as the finish script stages it (`protocol::OutboxItem`), retried after a failure
    let item = serde_json::json!({
        "id": "t1:success", "url": "http://receiver.example/hook", "attempt": 1,
        "body": {"event": "success"}, "error": "HTTP 503"
    })
    .to_string();
    let _: () = c
        .zadd(keys.queue_outbox("hooks"), &item, t0 + 5_000)
        .await
        .unwrap();
    let mut poller = Poller::new(registry, cache.clone(), PollerConfig::default());
    poller.poll_once(t0).await;
    let m = ok(&cache, &id);
    assert_eq!((m.depth, m.deliveries_due), (0, 0));
    let d = size_alone(&cache, &id, 0, t0);
    assert_eq!(d.desired, 0, "not due yet: {}", d.message);

    let report = poller.poll_once(t0 + 6_000).await;
    assert_eq!(report.changed, vec![id.clone()], "the pools are triggered");
    let m = ok(&cache, &id);
    assert_eq!((m.depth, m.deliveries_due), (0, 1));
    let d = size_alone(&cache, &id, 0, t0 + 6_000);
    assert_eq!(d.desired, 1, "{}", d.message);
    assert!(d.message.contains("backlog 1"), "{}", d.message);
}

/// A due delivery or a due retry waits for a worker, not for more tasks: it wakes a pool at
/// zero though `activationDepth` (5) keeps the pool at zero while up to 5 tasks merely wait.
#[tokio::test]
async fn due_work_wakes_a_pool_at_zero_whatever_the_activation_depth() {
    let keys = Keys::new(unique("activation"));
    let (registry, cache, id) = one_queue("gated", RedisEndpoint::new(URL), &keys);
    let mut c = con().await;
    let t0 = now_ms();
    let mut poller = Poller::new(registry, cache.clone(), PollerConfig::default());
    // one task waiting: not above the activation depth
    let task = Envelope::new("w1", "f", "gated", t0);
    protocol::enqueue(&mut c, &keys, "gated", &[task])
        .await
        .unwrap();
    poller.poll_once(t0).await;
    let d = size_alone_with(&cache, &id, 0, t0, 5);
    assert_eq!(d.desired, 0, "1 waiting, activation depth 5: {}", d.message);
    assert!(
        d.message.contains("not above activation depth 5"),
        "{}",
        d.message
    );
    let _: () = c.del(keys.queue("gated")).await.unwrap();

    // a delivery due in the outbox (as the finish script stages it)
    let item = serde_json::json!({
        "id": "t1:success", "url": "http://receiver.example/hook", "attempt": 1,
        "body": {"event": "success"}, "error": "HTTP 503"
    })
    .to_string();
    let _: () = c
        .zadd(keys.queue_outbox("gated"), &item, t0 + 1_000)
        .await
        .unwrap();
    poller.poll_once(t0 + 2_000).await;
    let m = ok(&cache, &id);
    assert_eq!((m.depth, m.deliveries_due, m.retries_due), (0, 1, 0));
    let d = size_alone_with(&cache, &id, 0, t0 + 2_000, 5);
    assert_eq!(d.desired, 1, "a due delivery: {}", d.message);
    let _: () = c.del(keys.queue_outbox("gated")).await.unwrap();

    // a retry due in the delayed set
    let retry = Envelope::new("r1", "f", "gated", t0 - 60_000).to_json();
    let _: () = c
        .zadd(keys.delayed("gated"), &retry, t0 + 3_000)
        .await
        .unwrap();
    poller.poll_once(t0 + 4_000).await;
    let m = ok(&cache, &id);
    assert_eq!((m.depth, m.deliveries_due, m.retries_due), (0, 0, 1));
    let d = size_alone_with(&cache, &id, 0, t0 + 4_000, 5);
    assert_eq!(d.desired, 1, "a due retry: {}", d.message);
    let _: () = c.del(keys.delayed("gated")).await.unwrap();
}

/// The tasks running now are read from the running set the worker keeps, not estimated from
/// completions × T: a 75 s task that is running holds its pod though nothing completes, and a
/// long task that just finished does not make the pool want its maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_tasks_are_read_from_the_workers() {
    let keys = Keys::new(unique("run"));
    let (registry, cache, id) = one_queue("long", RedisEndpoint::new(URL), &keys);
    let mut c = con().await;
    // T measured at 75 s
    let _: () = c.hset(keys.stats("long"), "ewma_ms", 75_000).await.unwrap();
    let worker = funcscale_worker::worker::Worker::builder()
        .redis_url(URL)
        .prefix(keys.prefix())
        .queues(["long"])
        .processes(2)
        .build()
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async {
        let _ = stop_rx.await;
    }));
    let mut slow = Envelope::new("slow", "sleep", "long", now_ms());
    slow.args = serde_json::json!([3_000]);
    protocol::enqueue(&mut c, &keys, "long", &[slow])
        .await
        .unwrap();
    let mut poller = Poller::new(registry, cache.clone(), PollerConfig::default());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while c.zcard::<_, u64>(keys.running("long")).await.unwrap() == 0
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the first poll: no rates yet (one sample), nothing waiting, one task running
    poller.poll_once(now_ms()).await;
    let m = ok(&cache, &id);
    assert_eq!((m.depth, m.in_flight, m.in_flight_measured), (0, 1, true));
    let d = size_alone(&cache, &id, 1, now_ms());
    assert_eq!(
        d.desired, 1,
        "the running task keeps its pod: {}",
        d.message
    );

    // it finishes: one completion in the window (× 75 s was 7.5 tasks "in flight")
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        poller.poll_once(now_ms()).await;
        let m = ok(&cache, &id);
        if m.completion_rate > 0.0 || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = ok(&cache, &id);
    assert!(m.completion_rate > 0.0, "{m:?}");
    assert_eq!(m.in_flight, 0, "{m:?}");
    let d = size_alone(&cache, &id, 1, now_ms());
    assert_eq!(d.desired, 0, "idle once it finished: {}", d.message);
    stop_tx.send(()).unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn hint_is_used_until_measured() {
    let keys = Keys::new(unique("hint"));
    let (registry, cache, id) = one_queue("empty", RedisEndpoint::new(URL), &keys);
    Poller::new(registry, cache.clone(), PollerConfig::default())
        .poll_once(now_ms())
        .await;
    let m = ok(&cache, &id);
    assert_eq!(
        (
            m.depth,
            m.task_time_ms,
            m.task_time_measured,
            m.oldest_age_seconds
        ),
        (0, 500.0, false, None)
    );
}

#[tokio::test]
async fn celery_depth_includes_priority_sub_lists() {
    let name = unique("celery");
    let mut c = con().await;
    let lists = protocol::celery_queue_keys(&name);
    assert_eq!(lists[1], format!("{name}\x06\x163"));
    for (i, l) in lists.iter().enumerate() {
        for _ in 0..=i {
            let _: () = c.lpush(l, r#"{"body":"x","headers":{}}"#).await.unwrap();
        }
    }
    let keys = Keys::new(unique("celery-p"));
    let registry = Registry::default();
    let cache = MetricsCache::default();
    let id = QueueId::new("ns", "celery");
    // adopt the existing Celery queue through `key`
    let q = queue("celery", QueueFormat::Celery, Some(name.clone()));
    registry.upsert(
        id.clone(),
        QueueTarget::for_queue(&q, "celery", RedisEndpoint::new(URL), &keys, 60_000),
    );
    Poller::new(registry, cache.clone(), PollerConfig::default())
        .poll_once(now_ms())
        .await;
    assert_eq!(ok(&cache, &id).depth, 1 + 2 + 3 + 4);
    let _: () = c.del(&lists).await.unwrap();
}

#[tokio::test]
async fn rq_and_sidekiq_queues() {
    let rq_name = unique("rq");
    let sk_name = unique("sk");
    let mut c = con().await;
    let now = now_ms();
    // as RQ enqueues: RPUSH of the job id, the job hash with `enqueued_at` (UTC, microseconds)
    let rq_jobs: Vec<String> = (0..4)
        .map(|i| funcscale_protocol::foreign::rq_job_key(&format!("{rq_name}-{i}")))
        .collect();
    for (i, job) in rq_jobs.iter().enumerate() {
        let at = k8s_openapi::jiff::Timestamp::from_millisecond(
            (now - 30_000 + i as u64 * 1_000) as i64,
        )
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string();
        let _: () = c.hset(job, "enqueued_at", at).await.unwrap();
        let _: () = c
            .rpush(protocol::rq_queue_key(&rq_name), format!("{rq_name}-{i}"))
            .await
            .unwrap();
    }
    let old = format!(
        r#"{{"class":"HardWorker","jid":"a","enqueued_at":{}}}"#,
        (now - 42_000) as f64 / 1000.0
    );
    let new = format!(
        r#"{{"class":"HardWorker","jid":"b","enqueued_at":{}}}"#,
        (now - 1_000) as f64 / 1000.0
    );
    let _: () = c
        .lpush(protocol::sidekiq_queue_key(&sk_name), old)
        .await
        .unwrap();
    let _: () = c
        .lpush(protocol::sidekiq_queue_key(&sk_name), new)
        .await
        .unwrap();

    let keys = Keys::new(unique("foreign-p"));
    let registry = Registry::default();
    let cache = MetricsCache::default();
    let rq = QueueId::new("ns", rq_name.clone());
    let sk = QueueId::new("ns", sk_name.clone());
    registry.upsert(
        rq.clone(),
        QueueTarget::for_queue(
            &queue(&rq_name, QueueFormat::Rq, None),
            &rq_name,
            RedisEndpoint::new(URL),
            &keys,
            60_000,
        ),
    );
    registry.upsert(
        sk.clone(),
        QueueTarget::for_queue(
            &queue(&sk_name, QueueFormat::Sidekiq, None),
            &sk_name,
            RedisEndpoint::new(URL),
            &keys,
            60_000,
        ),
    );
    Poller::new(registry, cache.clone(), PollerConfig::default())
        .poll_once(now)
        .await;
    let r = ok(&cache, &rq);
    assert_eq!(r.depth, 4);
    // the head of the list is the oldest job: enqueued 30 s ago
    assert!((r.oldest_age_seconds.unwrap() - 30.0).abs() < 0.01, "{r:?}");
    let s = ok(&cache, &sk);
    assert_eq!(s.depth, 2);
    assert!((s.oldest_age_seconds.unwrap() - 42.0).abs() < 0.01, "{s:?}");
    let _: () = c
        .del(&[
            protocol::rq_queue_key(&rq_name),
            protocol::sidekiq_queue_key(&sk_name),
        ])
        .await
        .unwrap();
    let _: () = c.del(&rq_jobs).await.unwrap();
}

/// A TCP proxy in front of Redis that the test can stop (closing every connection) and restart.
struct Proxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    break;
                };
                conns.spawn(async move {
                    let mut outbound = tokio::net::TcpStream::connect("127.0.0.1:6379")
                        .await
                        .unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Self { port, task }
    }
    async fn stop(self) -> u16 {
        self.task.abort(); // drops the listener and the JoinSet: every proxied connection closes
        let _ = self.task.await;
        self.port
    }
}

#[tokio::test]
async fn outage_reports_unavailable_then_recovers_without_restart() {
    let keys = Keys::new(unique("outage"));
    let mut c = con().await;
    let _: () = c
        .lpush(
            keys.queue("q"),
            Envelope::new("a", "f", "q", now_ms()).to_json(),
        )
        .await
        .unwrap();

    let proxy = Proxy::start(0).await;
    let endpoint = RedisEndpoint::new(format!("redis://127.0.0.1:{}/0", proxy.port));
    let (registry, cache, id) = one_queue("q", endpoint, &keys);
    let cfg = PollerConfig {
        connect_timeout: Duration::from_millis(300),
        response_timeout: Duration::from_millis(500),
        max_backoff: Duration::from_millis(400),
        ..Default::default()
    };
    let mut poller = Poller::new(registry, cache.clone(), cfg);

    assert!(poller.poll_once(now_ms()).await.errors.is_empty());
    assert_eq!(ok(&cache, &id).depth, 1);

    let port = proxy.stop().await;
    let report = poller.poll_once(now_ms()).await;
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert_eq!(report.changed, vec![id.clone()]);
    assert!(
        matches!(cache.get(&id), Some(Reading::Unavailable { .. })),
        "{:?}",
        cache.get(&id)
    );

    let _proxy = Proxy::start(port).await;
    let _: () = c
        .lpush(
            keys.queue("q"),
            Envelope::new("b", "f", "q", now_ms()).to_json(),
        )
        .await
        .unwrap();
    // recovers once the backoff has passed: wait on the condition, bounded
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let report = poller.poll_once(now_ms()).await;
        if report.errors.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recovered: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ok(&cache, &id).depth, 2);
}

#[tokio::test]
async fn closed_port_is_unavailable() {
    let keys = Keys::new(unique("closed"));
    let registry = Registry::default();
    let cache = MetricsCache::default();
    let id = QueueId::new("ns", "q");
    // port 1 on localhost: nothing listens
    registry.upsert(
        id.clone(),
        QueueTarget::for_queue(
            &queue("q", QueueFormat::Funcscale, None),
            "q",
            RedisEndpoint::new("redis://127.0.0.1:1/0"),
            &keys,
            60_000,
        ),
    );
    let report = Poller::new(registry, cache.clone(), PollerConfig::default())
        .poll_once(now_ms())
        .await;
    assert_eq!(report.errors.len(), 1);
    match cache.get(&id) {
        Some(Reading::Unavailable { error, .. }) => {
            assert!(error.contains("127.0.0.1:1"), "{error}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn password_and_username_connections() {
    // an ACL user only this test knows
    let user = unique("user");
    let mut c = con().await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(">s3cr3t!")
        .arg("~*")
        .arg("+@all")
        .query_async(&mut c)
        .await
        .unwrap();
    let keys = Keys::new(unique("acl"));
    let registry = Registry::default();
    let cache = MetricsCache::default();
    let good = QueueId::new("ns", "good");
    let bad = QueueId::new("ns2", "bad");
    let q = queue("good", QueueFormat::Funcscale, None);
    registry.upsert(
        good.clone(),
        QueueTarget::for_queue(
            &q,
            "good",
            RedisEndpoint::with_password(&format!("redis://{user}@127.0.0.1:6379/0"), "s3cr3t!"),
            &keys,
            60_000,
        ),
    );
    registry.upsert(
        bad.clone(),
        QueueTarget::for_queue(
            &q,
            "good",
            RedisEndpoint::with_password(&format!("redis://{user}@127.0.0.1:6379/0"), "wrong"),
            &keys,
            60_000,
        ),
    );
    Poller::new(registry, cache.clone(), PollerConfig::default())
        .poll_once(now_ms())
        .await;
    assert!(
        matches!(cache.get(&good), Some(Reading::Ok(_))),
        "{:?}",
        cache.get(&good)
    );
    match cache.get(&bad) {
        Some(Reading::Unavailable { error, .. }) => {
            assert!(!error.contains("wrong"), "password leaked: {error}")
        }
        other => panic!("{other:?}"),
    }
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut c)
        .await
        .unwrap();
}

/// `rediss://` goes through rustls (no panic over the crypto provider): against the plain-text
/// server the TLS handshake fails and the queue is reported unavailable with the reason.
/// (A verified TLS round trip needs a CA the test can make the client trust; see the report.)
#[tokio::test]
async fn tls_url_uses_rustls_and_fails_cleanly_against_plain_text() {
    funcscale_operator::cli_run::install_crypto_provider();
    let endpoint = RedisEndpoint::new("rediss://127.0.0.1:6379/0");
    let (registry, cache, id) = one_queue("q", endpoint, &Keys::new(unique("tls")));
    let cfg = PollerConfig {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let report = Poller::new(registry, cache.clone(), cfg)
        .poll_once(now_ms())
        .await;
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(matches!(cache.get(&id), Some(Reading::Unavailable { .. })));
}

/// A TCP proxy that counts request/response turns: a turn starts when the client writes after
/// Redis has answered (or for the first time). A pipeline is one turn however it is split.
struct TurnCounter {
    port: u16,
    turns: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TurnCounter {
    async fn start() -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let turns = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (t, n) = (turns.clone(), connections.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                n.fetch_add(1, Ordering::SeqCst);
                let turns = t.clone();
                conns.spawn(async move {
                    let outbound = tokio::net::TcpStream::connect("127.0.0.1:6379")
                        .await
                        .unwrap();
                    let (mut ci, mut co) = inbound.into_split();
                    let (mut si, mut so) = outbound.into_split();
                    let answered = Arc::new(AtomicBool::new(true));
                    let a2 = answered.clone();
                    // a client's burst is held until it pauses (20 ms) and forwarded whole:
                    // Redis cannot answer the head of a large pipeline while its tail is still
                    // on the way, which counted one pipeline as two turns under load
                    let up = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        'conn: while let Ok(n) = ci.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            let mut burst = buf[..n].to_vec();
                            loop {
                                let more = tokio::time::timeout(
                                    std::time::Duration::from_millis(20),
                                    ci.read(&mut buf),
                                )
                                .await;
                                match more {
                                    Ok(Ok(0)) | Ok(Err(_)) => break 'conn,
                                    Ok(Ok(m)) => burst.extend_from_slice(&buf[..m]),
                                    Err(_) => break,
                                }
                            }
                            if answered.swap(false, Ordering::SeqCst) {
                                turns.fetch_add(1, Ordering::SeqCst);
                            }
                            if so.write_all(&burst).await.is_err() {
                                break;
                            }
                        }
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = si.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            a2.store(true, Ordering::SeqCst);
                            if co.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Self {
            port,
            turns,
            connections,
            task,
        }
    }
    fn turns(&self) -> usize {
        self.turns.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for TurnCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The poll reads every queue of one Redis, whatever its format, in ONE pipelined round trip
/// on one long-lived connection (not a connection or a command round trip per queue).
#[tokio::test]
async fn one_pipelined_round_trip_per_redis_per_poll() {
    let keys = Keys::new(unique("turns"));
    let proxy = TurnCounter::start().await;
    let endpoint = RedisEndpoint::new(format!("redis://127.0.0.1:{}/0", proxy.port));
    let registry = Registry::default();
    let cache = MetricsCache::default();
    let formats = [
        QueueFormat::Funcscale,
        QueueFormat::Celery,
        QueueFormat::Rq,
        QueueFormat::Sidekiq,
        QueueFormat::Stream,
    ];
    let mut c = con().await;
    for i in 0..400 {
        let name = format!("q{i}");
        let format = formats[i % formats.len()];
        let key =
            (format != QueueFormat::Funcscale).then(|| format!("{}:foreign:{name}", keys.prefix()));
        let mut q = queue(&name, format, key);
        if format == QueueFormat::Stream {
            q.spec.stream = Some(funcscale_operator::crd::StreamGroupRef { group: "g".into() });
        } else if i % 7 == 0 {
            q.spec.schedules = vec![Schedule {
                name: "tick".into(),
                cron: "* * * * *".into(),
                function: "f".into(),
                ..Default::default()
            }];
        }
        registry.upsert(
            QueueId::new("ns", &name),
            QueueTarget::for_queue(&q, &name, endpoint.clone(), &keys, 60_000),
        );
    }
    let _: () = c
        .lpush(
            keys.queue("q0"),
            Envelope::new("a", "f", "q0", now_ms()).to_json(),
        )
        .await
        .unwrap();
    // a Stream queue with its group and two undelivered entries (the others have no stream)
    let stream = format!("{}:foreign:q4", keys.prefix());
    for _ in 0..2 {
        let _: String = c.xadd(&stream, "*", &[("f", 1)]).await.unwrap();
    }
    let _: () = c.xgroup_create(&stream, "g", "0").await.unwrap();
    let mut poller = Poller::new(registry, cache.clone(), PollerConfig::default());

    // the first poll connects (handshake turns); count the polls after it
    assert!(poller.poll_once(now_ms()).await.errors.is_empty());
    for _ in 0..3 {
        let before = proxy.turns();
        let report = poller.poll_once(now_ms()).await;
        assert!(report.errors.is_empty(), "{report:?}");
        assert_eq!(
            proxy.turns() - before,
            1,
            "one poll of 400 queues must be one round trip"
        );
    }
    assert_eq!(
        proxy.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one connection, kept across polls"
    );
    assert_eq!(ok(&cache, &QueueId::new("ns", "q0")).depth, 1);
    assert_eq!(ok(&cache, &QueueId::new("ns", "q399")).depth, 0);
    assert_eq!(ok(&cache, &QueueId::new("ns", "q4")).depth, 2);
    let _: () = c.del(&stream).await.unwrap();

    // the counter sees sequential commands as separate turns (so the 1 above means something)
    let mut direct = redis::Client::open(format!("redis://127.0.0.1:{}/0", proxy.port))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let before = proxy.turns();
    for _ in 0..3 {
        let _: i64 = direct.llen(keys.queue("q0")).await.unwrap();
    }
    assert_eq!(proxy.turns() - before, 3);
    let _: () = c.del(keys.queue("q0")).await.unwrap();
}

/// TLS end to end: a Redis that serves only TLS, with a certificate from a private CA. As
/// docs/operations.md tells users, `SSL_CERT_FILE` points the process at the CA; the poll
/// then reads the queue over `rediss://`. The environment variable must be set before the
/// process starts (and this crate forbids `unsafe`, so no `set_var`): the test runs its half
/// that polls in a child process of this test binary.
#[tokio::test]
async fn tls_with_a_private_ca_reads_the_queue() {
    use std::process::{Command, Stdio};

    let dir = std::env::temp_dir().join(unique("tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let p = |f: &str| dir.join(f).display().to_string();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=funcscale test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &p("server.crt"),
            "--tls-key-file",
            &p("server.key"),
            "--tls-ca-cert-file",
            &p("ca.crt"),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &p(""),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "TLS redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tls_child_polls_over_rediss",
            "--include-ignored",
            "--nocapture",
        ])
        .env("SSL_CERT_FILE", p("ca.crt"))
        .env("FUNCSCALE_TEST_TLS_PORT", port.to_string())
        .output()
        .unwrap();
    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let out = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success() && out.contains("1 passed"),
        "child: {out}\n{}",
        String::from_utf8_lossy(&child.stderr)
    );
}

/// The child half of `tls_with_a_private_ca_reads_the_queue` (needs its environment).
#[tokio::test]
#[ignore = "run by tls_with_a_private_ca_reads_the_queue in a child process"]
async fn tls_child_polls_over_rediss() {
    funcscale_operator::cli_run::install_crypto_provider();
    let port = std::env::var("FUNCSCALE_TEST_TLS_PORT").expect("run by the parent test");
    let url = format!("rediss://127.0.0.1:{port}/0");
    let keys = Keys::new(unique("tls-ok"));
    // a producer over TLS too
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("TLS connection with the private CA");
    for id in ["a", "b", "c"] {
        let _: () = c
            .lpush(
                keys.queue("q"),
                Envelope::new(id, "f", "q", now_ms()).to_json(),
            )
            .await
            .unwrap();
    }
    let (registry, cache, id) = one_queue("q", RedisEndpoint::new(url.clone()), &keys);
    let report = Poller::new(registry, cache.clone(), PollerConfig::default())
        .poll_once(now_ms())
        .await;
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(ok(&cache, &id).depth, 3);
}

/// A Stream FuncQueue `ns/<name>` adopting `key` with consumer group `group`, on its own
/// registry: the reading after one poll at `now`.
async fn poll_stream(name: &str, key: &str, group: &str, now: u64) -> Option<Reading> {
    let mut q = queue(name, QueueFormat::Stream, Some(key.to_string()));
    q.spec.stream = Some(funcscale_operator::crd::StreamGroupRef {
        group: group.to_string(),
    });
    let registry = Registry::default();
    let cache = MetricsCache::default();
    let id = QueueId::new("ns", name);
    let keys = Keys::new(unique("stream-p"));
    registry.upsert(
        id.clone(),
        QueueTarget::for_queue(&q, name, RedisEndpoint::new(URL), &keys, 60_000),
    );
    Poller::new(registry, cache.clone(), PollerConfig::default())
        .poll_once(now)
        .await;
    cache.get(&id)
}

/// `XINFO GROUPS` `lag` of `group` (nil: Redis cannot give it).
async fn redis_lag(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
    group: &str,
) -> Option<i64> {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(c)
        .await
        .unwrap();
    let g = groups
        .into_iter()
        .find(|g| g.get("name") == Some(&redis::Value::BulkString(group.as_bytes().to_vec())))
        .unwrap();
    match g.get("lag") {
        Some(redis::Value::Int(i)) => Some(*i),
        _ => None,
    }
}

/// Deliver up to `n` new entries of `key` to `consumer` of `group` (`XREADGROUP ... >`): their ids.
async fn deliver(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
    group: &str,
    n: usize,
) -> Vec<String> {
    let reply: redis::streams::StreamReadReply = c
        .xread_options(
            &[key],
            &[">"],
            &redis::streams::StreamReadOptions::default()
                .group(group, "c1")
                .count(n),
        )
        .await
        .unwrap();
    reply
        .keys
        .into_iter()
        .flat_map(|k| k.ids.into_iter().map(|e| e.id))
        .collect()
}

#[tokio::test]
async fn stream_group_lag_pending_and_oldest() {
    let key = unique("stream");
    let group = "workers";
    let mut c = con().await;
    let now = now_ms();
    let expect = |r: Option<Reading>| match r {
        Some(Reading::Ok(m)) => m,
        other => panic!("{other:?}"),
    };
    // no stream yet: depth 0, and the queue says why
    let m = expect(poll_stream("s", &key, group, now).await);
    assert_eq!((m.depth, m.in_flight, m.oldest_age_seconds), (0, 0, None));
    let (reason, msg) = m.not_ready.expect("not ready");
    assert_eq!(reason, "StreamMissing");
    assert!(msg.contains(&key), "{msg}");

    // ten entries, one a second, the first 60 s ago (ids as XADD * makes them: ms-seq)
    let base = now - 60_000;
    for i in 0..10u64 {
        let _: String = c
            .xadd(&key, format!("{}-0", base + i * 1_000), &[("n", i)])
            .await
            .unwrap();
    }
    // no group yet: depth 0, naming key and group
    let m = expect(poll_stream("s", &key, group, now).await);
    assert_eq!(m.depth, 0);
    let (reason, msg) = m.not_ready.expect("not ready");
    assert_eq!(reason, "StreamGroupMissing");
    assert!(msg.contains(&key) && msg.contains(group), "{msg}");

    // a group from the start: all ten undelivered, the oldest 60 s old
    let _: () = c.xgroup_create(&key, group, "0").await.unwrap();
    let m = expect(poll_stream("s", &key, group, now).await);
    assert_eq!((m.depth, m.in_flight, m.in_flight_measured), (10, 0, true));
    assert_eq!(m.oldest_age_seconds, Some(60.0));
    assert_eq!(m.not_ready, None);

    // four delivered (pending), two of them acknowledged
    let ids = deliver(&mut c, &key, group, 4).await;
    assert_eq!(ids.len(), 4);
    let _: i64 = c.xack(&key, group, &ids[..2]).await.unwrap();
    assert_eq!(redis_lag(&mut c, &key, group).await, Some(6));
    let m = expect(poll_stream("s", &key, group, now).await);
    // by hand: 10 added - 4 delivered = 6 lag; 4 delivered - 2 acked = 2 pending; the first
    // undelivered is entry 4, added 56 s ago
    assert_eq!((m.depth, m.in_flight), (6, 2));
    assert_eq!(m.oldest_age_seconds, Some(56.0));
    assert!(!m.depth_lower_bound);

    // an undelivered entry deleted: Redis cannot give the lag any more; it is counted
    let _: i64 = c
        .xdel(&key, &[format!("{}-0", base + 6_000)])
        .await
        .unwrap();
    assert_eq!(
        redis_lag(&mut c, &key, group).await,
        None,
        "the lag-nil path"
    );
    let m = expect(poll_stream("s", &key, group, now).await);
    // entries 4, 5, 7, 8, 9
    assert_eq!((m.depth, m.in_flight), (5, 2));
    assert_eq!(m.oldest_age_seconds, Some(56.0));

    // a trim of undelivered entries: MAXLEN 3 keeps 7, 8, 9
    let _: i64 = redis::cmd("XTRIM")
        .arg(&key)
        .arg("MAXLEN")
        .arg(3)
        .query_async(&mut c)
        .await
        .unwrap();
    let m = expect(poll_stream("s", &key, group, now).await);
    // by hand: 7, 8 and 9 wait (Redis 7.0's lag still counts the trimmed 4 and 5, which no
    // consumer will ever get); the PEL keeps the two delivered, unacknowledged ids
    assert_eq!((m.depth, m.in_flight), (3, 2));
    assert_eq!(m.oldest_age_seconds, Some(53.0));

    // everything delivered: no lag, no oldest waiting task
    assert_eq!(deliver(&mut c, &key, group, 100).await.len(), 3);
    let m = expect(poll_stream("s", &key, group, now).await);
    assert_eq!((m.depth, m.in_flight, m.oldest_age_seconds), (0, 5, None));
    let _: () = c.del(&key).await.unwrap();
}

/// When Redis cannot give the lag of a long stream, the count stays bounded: the undelivered
/// side up to the cap, else the length minus the delivered side, else the cap as a lower bound.
#[tokio::test]
async fn stream_lag_without_redis_counts_at_most_the_cap() {
    use funcscale_protocol::foreign::STREAM_COUNT_CAP;
    let key = unique("stream-big");
    let group = "g";
    let mut c = con().await;
    let add = |n: u64| {
        let mut p = redis::pipe();
        for _ in 0..n {
            p.cmd("XADD").arg(&key).arg("*").arg("f").arg(1).ignore();
        }
        p
    };
    let cap = STREAM_COUNT_CAP;
    let _: () = add(cap + 50).query_async(&mut c).await.unwrap();
    let _: () = c.xgroup_create(&key, group, "0").await.unwrap();
    let ids = deliver(&mut c, &key, group, 10).await;
    // delete the first undelivered entry: the lag is nil
    let next: redis::streams::StreamRangeReply = c
        .xrange_count(&key, format!("({}", ids[9]), "+", 1)
        .await
        .unwrap();
    let _: i64 = c.xdel(&key, &[&next.ids[0].id]).await.unwrap();
    assert_eq!(redis_lag(&mut c, &key, group).await, None);
    let m = match poll_stream("big", &key, group, now_ms()).await {
        Some(Reading::Ok(m)) => m,
        other => panic!("{other:?}"),
    };
    // by hand: cap + 50 added, one deleted, 10 delivered
    assert_eq!((m.depth, m.depth_lower_bound), (cap + 50 - 1 - 10, false));
    assert_eq!(m.in_flight, 10);

    // more than the cap delivered as well: the cap, a lower bound
    assert_eq!(
        deliver(&mut c, &key, group, cap as usize).await.len(),
        cap as usize
    );
    let _: () = add(cap + 5).query_async(&mut c).await.unwrap();
    let next: redis::streams::StreamRangeReply =
        c.xrevrange_count(&key, "+", "-", 1).await.unwrap();
    let _: i64 = c.xdel(&key, &[&next.ids[0].id]).await.unwrap();
    assert_eq!(redis_lag(&mut c, &key, group).await, None);
    let m = match poll_stream("big", &key, group, now_ms()).await {
        Some(Reading::Ok(m)) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!((m.depth, m.depth_lower_bound), (cap, true));
    let _: () = c.del(&key).await.unwrap();
}

/// A Stream queue whose key holds a list: that queue's reading is unavailable with a message
/// naming the key (reason WrongKeyType), not a depth; the other queues of that Redis are read.
#[tokio::test]
async fn a_stream_queue_on_a_list_key_is_unavailable_alone() {
    let key = unique("stream-wrong");
    let mut c = con().await;
    let _: () = c.rpush(&key, "x").await.unwrap();
    let keys = Keys::new(unique("stream-wrong-p"));
    let mut q = queue("w", QueueFormat::Stream, Some(key.clone()));
    q.spec.stream = Some(funcscale_operator::crd::StreamGroupRef { group: "g".into() });
    let (registry, cache, fine) = one_queue("fine", RedisEndpoint::new(URL), &keys);
    let wrong = QueueId::new("ns", "w");
    registry.upsert(
        wrong.clone(),
        QueueTarget::for_queue(&q, "w", RedisEndpoint::new(URL), &keys, 60_000),
    );
    let report = Poller::new(registry, cache.clone(), PollerConfig::default())
        .poll_once(now_ms())
        .await;
    assert!(report.errors.is_empty(), "{report:?}");
    match cache.get(&wrong) {
        Some(Reading::Unavailable { error, reason, .. }) => {
            assert_eq!(reason.as_str(), "WrongKeyType");
            assert!(
                error.contains(&key) && error.contains("not a stream"),
                "{error}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ok(&cache, &fine).depth, 0);
    let _: () = c.del(&key).await.unwrap();
}

/// The ACL rules docs/operations.md gives the operator read a Stream queue: the stream's key
/// in its `~` patterns (EVALSHA checks the keys a script declares for read and write, even for
/// a read-only script: `%R~` is not enough) and `+evalsha +script|load`. Without either the
/// reading fails with Redis's NOPERM (reason RedisAuthFailed).
#[tokio::test]
async fn the_documented_acl_reads_a_stream_queue() {
    let key = unique("stream-acl");
    let mut c = con().await;
    let _: String = c.xadd(&key, "*", &[("n", 1)]).await.unwrap();
    let _: () = c.xgroup_create(&key, "g", "0").await.unwrap();
    let keys = Keys::new(unique("stream-acl-p"));
    let mut q = queue("s", QueueFormat::Stream, Some(key.clone()));
    q.spec.stream = Some(funcscale_operator::crd::StreamGroupRef { group: "g".into() });
    let documented = format!(
        "~{}:* ~{key} %R~* +@read +hset +hdel +eval +evalsha +script|load +@connection -@dangerous",
        keys.prefix()
    );
    let without_key = documented.replace(&format!(" ~{key}"), "");
    let without_evalsha = documented.replace(" +evalsha +script|load", "");
    for (rules, reads) in [
        (&documented, true),
        (&without_key, false),
        (&without_evalsha, false),
    ] {
        let user = unique("stream-acl-user");
        let mut setuser = redis::cmd("ACL");
        setuser.arg("SETUSER").arg(&user).arg("on").arg(">pw");
        for r in rules.split(' ') {
            setuser.arg(r);
        }
        let _: () = setuser.query_async(&mut c).await.unwrap();
        let registry = Registry::default();
        let cache = MetricsCache::default();
        let id = QueueId::new("ns", "s");
        let endpoint =
            RedisEndpoint::with_password(&format!("redis://{user}@127.0.0.1:6379/0"), "pw");
        registry.upsert(
            id.clone(),
            QueueTarget::for_queue(&q, "s", endpoint, &keys, 60_000),
        );
        Poller::new(registry, cache.clone(), PollerConfig::default())
            .poll_once(now_ms())
            .await;
        let _: () = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&user)
            .query_async(&mut c)
            .await
            .unwrap();
        match (cache.get(&id), reads) {
            (Some(Reading::Ok(m)), true) => assert_eq!(m.depth, 1),
            (Some(Reading::Unavailable { error, reason, .. }), false) => {
                assert_eq!(reason.as_str(), "RedisAuthFailed", "{error}")
            }
            (other, _) => panic!("{rules}: {other:?}"),
        }
    }
    let _: () = c.del(&key).await.unwrap();
}
