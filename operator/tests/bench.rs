//! How fast: run with
//! `cargo nextest run -p funcscale-operator --test bench --run-ignored only --no-capture`
//! (figures are printed, nothing is timed against a threshold). Add `--cargo-profile release`
//! for meaningful numbers: the redis crate's reply parsing is ~6× slower in a debug build.
//!
//! Figures on the 2-core dev VM, release build, local Redis 7 (2026-11-23):
//! - poll: 10,000 queues (40,000 commands, one pipelined round trip): 153 ms per poll,
//!   65,000 queues/s; the raw round trip alone is 68 ms.
//! - build: validate + size + build + serialize one pool: 14 µs.
//! - reconcile through kube-fake-client: 2.5 ms per pool (mostly the fake's JSON handling).

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use funcscale_operator::context::Config;
use funcscale_operator::crd::*;
use funcscale_operator::pool::{build, dereference::Dereferenced, size, validate};
use funcscale_operator::redis_metrics::{
    MetricsCache, Poller, PollerConfig, QueueId, QueueMetrics, QueueTarget, Reading, RedisEndpoint,
    Registry,
};
use funcscale_worker::protocol::{Envelope, Keys};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

#[tokio::test]
#[ignore = "benchmark"]
async fn poll_10k_queues_in_one_round_trip() {
    const N: usize = 10_000;
    let prefix = format!("bench-{}-{}", std::process::id(), now_ms());
    let keys = Keys::new(&prefix);
    let mut con = redis::Client::open("redis://127.0.0.1:6379/0")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut fill = redis::pipe();
    for i in 0..N {
        let q = format!("q{i}");
        fill.lpush(
            keys.queue(&q),
            Envelope::new("t", "f", &q, now_ms()).to_json(),
        )
        .ignore();
        fill.hset(keys.stats(&q), "enqueued", 10).ignore();
        fill.hset(keys.stats(&q), "ewma_ms", "480").ignore();
    }
    let _: () = fill.query_async(&mut con).await.unwrap();

    let registry = Registry::default();
    let cache = MetricsCache::default();
    for i in 0..N {
        let name = format!("q{i}");
        let q = FuncQueue::new(
            &name,
            FuncQueueSpec {
                task_time_ms: 500,
                ..Default::default()
            },
        );
        registry.upsert(
            QueueId::new("bench", &name),
            QueueTarget::for_queue(
                &q,
                &name,
                RedisEndpoint::new("redis://127.0.0.1:6379/0"),
                &keys,
                60_000,
            ),
        );
    }
    let mut poller = Poller::new(registry, cache.clone(), PollerConfig::default());
    poller.poll_once(now_ms()).await; // connect
    let rounds = 10;
    let t = Instant::now();
    for _ in 0..rounds {
        let r = poller.poll_once(now_ms()).await;
        assert!(r.errors.is_empty(), "{r:?}");
        assert_eq!(r.queues, N);
    }
    let per_poll = t.elapsed() / rounds;
    println!(
        "BENCH poll: {N} queues, {} commands in one pipeline: {:.1} ms per poll, {:.0} queues/s",
        N * 4,
        per_poll.as_secs_f64() * 1000.0,
        N as f64 / per_poll.as_secs_f64()
    );
    assert!(
        matches!(cache.get(&QueueId::new("bench", "q9999")), Some(Reading::Ok(m)) if m.depth == 1)
    );
    // the same 40,000 commands as one raw pipeline, without parsing: the Redis + transport share
    let mut raw = redis::pipe();
    for i in 0..N {
        let q = format!("q{i}");
        raw.cmd("LLEN")
            .arg(keys.queue(&q))
            .cmd("LINDEX")
            .arg(keys.queue(&q))
            .arg(-1);
        raw.cmd("HGETALL")
            .arg(keys.stats(&q))
            .cmd("GET")
            .arg(keys.schedules_per_period(&q));
    }
    let t = Instant::now();
    for _ in 0..rounds {
        let _: Vec<redis::Value> = raw.query_async(&mut con).await.unwrap();
    }
    println!(
        "BENCH poll: raw pipeline round trip alone: {:.1} ms",
        (t.elapsed() / rounds).as_secs_f64() * 1000.0
    );
    // clean up
    let mut del = redis::pipe();
    for i in 0..N {
        let q = format!("q{i}");
        del.del(keys.queue(&q))
            .ignore()
            .del(keys.stats(&q))
            .ignore();
    }
    let _: () = del.query_async(&mut con).await.unwrap();
}

#[test]
#[ignore = "benchmark"]
fn size_and_build_1000_pools() {
    const N: usize = 1000;
    let rss0 = rss_kib();
    let config = Config::default();
    let queues: Vec<Arc<FuncQueue>> = (0..N)
        .map(|i| {
            let mut q = FuncQueue::new(
                &format!("q{i}"),
                FuncQueueSpec {
                    task_time_ms: 500,
                    ..Default::default()
                },
            );
            q.metadata.namespace = Some("bench".into());
            Arc::new(q)
        })
        .collect();
    let pools: Vec<FuncWorkerPool> = (0..N)
        .map(|i| {
            let mut p = FuncWorkerPool::new(
                &format!("w{i}"),
                FuncWorkerPoolSpec {
                    queues: vec![format!("q{i}")],
                    processes_per_pod: 5,
                    autoscaling: Some(Autoscaling {
                        min_replicas: 1,
                        max_replicas: 100,
                        drain_target_seconds: 60,
                        period_ms: 60_000,
                        scale_down_stabilization_seconds: 300,
                        scale_up_max_step: 4,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            );
            p.metadata.namespace = Some("bench".into());
            p.metadata.uid = Some(format!("uid-{i}"));
            p
        })
        .collect();
    let mut histories = vec![funcscale_operator::policy::History::default(); N];
    let rounds = 10;
    let t = Instant::now();
    let mut bytes = 0usize;
    for r in 0..rounds {
        for (i, p) in pools.iter().enumerate() {
            let d = Dereferenced {
                queues: vec![(format!("q{i}"), Some(queues[i].clone()))],
                ..Default::default()
            };
            let valid =
                validate::validate(p, "bench", &d, &funcscale_worker::protocol::Keys::default())
                    .unwrap();
            let readings = vec![size::QueueReading::whole(
                format!("q{i}"),
                Some(Reading::Ok(QueueMetrics {
                    depth: (i * 10 + r) as u64,
                    task_time_ms: 480.0,
                    task_time_measured: true,
                    ..Default::default()
                })),
            )];
            let s = size::size(
                p,
                None,
                &readings,
                Some(3),
                1_000 * r as u64,
                &mut histories[i],
            );
            let desired = build::build(p, "bench", &valid, s.replicas, &config).unwrap();
            bytes += serde_json::to_vec(&desired.deployment).unwrap().len();
        }
    }
    let per = t.elapsed() / (rounds * N) as u32;
    let rss1 = rss_kib();
    println!(
        "BENCH build: validate+size+build+serialize of one pool: {:.1} µs ({} pools × {rounds} rounds, {} B per Deployment); RSS {} MiB → {} MiB with {N} pools, queues and histories",
        per.as_secs_f64() * 1e6,
        N,
        bytes / (rounds * N),
        rss0 / 1024,
        rss1 / 1024
    );
}

#[tokio::test]
#[ignore = "benchmark"]
async fn reconcile_1000_pools_against_the_in_memory_api() {
    use funcscale_operator::context::Shared;
    use kube::api::{Api, PostParams};
    use kube::runtime::{reflector, watcher};
    const N: usize = 1000;
    let rss0 = rss_kib();
    let client = kube_fake_client::ClientBuilder::new()
        .with_resource::<FuncQueue>()
        .with_resource::<FuncWorkerPool>()
        .build()
        .await
        .unwrap();
    let (queues, mut qw) = reflector::store();
    let (pools_store, mut pw) = reflector::store();
    let shared = Arc::new(Shared::new(
        client.clone(),
        Config::default(),
        funcscale_operator::telemetry::Metrics::new(),
        queues,
        Arc::new(now_ms),
    ));
    let ctx = Arc::new(funcscale_operator::pool::Context::new(
        shared.clone(),
        pools_store,
        Arc::default(),
    ));
    let qapi: Api<FuncQueue> = Api::namespaced(client.clone(), "bench");
    let papi: Api<FuncWorkerPool> = Api::namespaced(client.clone(), "bench");
    let mut pools = Vec::new();
    for i in 0..N {
        let q = qapi
            .create(
                &PostParams::default(),
                &FuncQueue::new(
                    &format!("q{i}"),
                    FuncQueueSpec {
                        task_time_ms: 500,
                        ..Default::default()
                    },
                ),
            )
            .await
            .unwrap();
        let ev = watcher::Event::Apply(q);
        qw.apply_watcher_event(&ev);
        shared.key_index.apply(&ev);
        let spec = FuncWorkerPoolSpec {
            queues: vec![format!("q{i}")],
            processes_per_pod: 5,
            autoscaling: Some(Autoscaling {
                min_replicas: 1,
                max_replicas: 100,
                drain_target_seconds: 60,
                period_ms: 60_000,
                scale_down_stabilization_seconds: 300,
                scale_up_max_step: 4,
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = papi
            .create(
                &PostParams::default(),
                &FuncWorkerPool::new(&format!("w{i}"), spec),
            )
            .await
            .unwrap();
        let ev = watcher::Event::Apply(p.clone());
        pw.apply_watcher_event(&ev);
        shared.index.apply(&ev);
        pools.push(p);
        shared.cache.set(
            QueueId::new("bench", format!("q{i}")),
            Reading::Ok(QueueMetrics {
                depth: 1000,
                task_time_ms: 480.0,
                task_time_measured: true,
                ..Default::default()
            }),
        );
    }
    let t = Instant::now();
    for p in &pools {
        funcscale_operator::pool::reconcile(Arc::new(p.clone()), ctx.clone())
            .await
            .unwrap();
    }
    let first = t.elapsed() / N as u32;
    let t = Instant::now();
    for p in &pools {
        let p = papi.get(p.metadata.name.as_deref().unwrap()).await.unwrap();
        funcscale_operator::pool::reconcile(Arc::new(p), ctx.clone())
            .await
            .unwrap();
    }
    let steady = t.elapsed() / N as u32;
    println!(
        "BENCH reconcile (in-memory API): first {:.2} ms per pool (GET + SSA + status), unchanged {:.2} ms per pool (the test's GET + the reconcile's GET, no write); RSS {} MiB → {} MiB for {N} pools with their Deployments in the fake API",
        first.as_secs_f64() * 1000.0,
        steady.as_secs_f64() * 1000.0,
        rss0 / 1024,
        rss_kib() / 1024
    );
}
