//! Benchmark (issue 17 item 5, `make bench`): the operator's poll of 10,000 queues on a
//! three-master Redis Cluster (`funcscale_e2e::redis_cluster::RedisCluster`, replicas too)
//! against the same 10,000 queues on one private `redis-server`, in the same run: time per
//! poll (median of 10), the ratio, and the commands each master ran per poll (from `INFO
//! stats` `total_commands_processed`: one pipeline per master, the queues' commands split by
//! slot).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use funcscale_connect::Conn;
use funcscale_e2e::redis_cluster::RedisCluster;
use funcscale_e2e::scenario::PrivateRedis;
use funcscale_operator::crd::{FuncQueue, FuncQueueSpec};
use funcscale_operator::redis_metrics::{
    MetricsCache, Poller, PollerConfig, QueueId, QueueTarget, Reading, RedisEndpoint, Registry,
};
use funcscale_protocol::{Envelope, Keys};

const N: usize = 10_000;
const ROUNDS: usize = 10;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Fill 10,000 queues `{bench.q<i>}` (one task, stats) through `url`, in chunks of 1,000 (on
/// a cluster `query_grouped` splits each chunk per master).
async fn fill(url: &str, keys: &Keys) {
    let mut con = Conn::open(url).await.unwrap();
    for chunk in (0..N).collect::<Vec<_>>().chunks(1_000) {
        let mut p = redis::pipe();
        for &i in chunk {
            let q = Keys::queue_id("bench", &format!("q{i}"));
            p.lpush(
                keys.queue(&q),
                Envelope::new("t", "f", &q, now_ms()).to_json(),
            );
            p.hset(keys.stats(&q), "enqueued", 10);
            p.hset(keys.stats(&q), "ewma_ms", "480");
        }
        funcscale_connect::query_grouped(&mut con, &p)
            .await
            .into_values()
            .unwrap();
    }
}

/// A Poller of the 10,000 queues on `url`; the median time of [`ROUNDS`] polls after a
/// first one (connections made).
async fn poll(url: &str, keys: &Keys) -> Duration {
    let registry = Registry::default();
    let cache = MetricsCache::default();
    for i in 0..N {
        let name = format!("q{i}");
        let mut q = FuncQueue::new(
            &name,
            FuncQueueSpec {
                task_time_ms: 500,
                ..Default::default()
            },
        );
        q.metadata.namespace = Some("bench".into());
        registry.upsert(
            QueueId::new("bench", &name),
            QueueTarget::for_queue(
                &q,
                &Keys::queue_id("bench", &name),
                RedisEndpoint::new(url),
                keys,
                60_000,
            ),
        );
    }
    let mut poller = Poller::new(registry, cache.clone(), PollerConfig::default());
    let first = poller.poll_once(now_ms()).await;
    assert!(first.errors.is_empty(), "{first:?}");
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let r = poller.poll_once(now_ms()).await;
        times.push(t.elapsed());
        assert!(r.errors.is_empty(), "{r:?}");
        assert_eq!(r.queues, N);
    }
    assert!(
        matches!(cache.get(&QueueId::new("bench", "q9999")), Some(Reading::Ok(m)) if m.depth == 1),
        "the last queue read: {:?}",
        cache.get(&QueueId::new("bench", "q9999"))
    );
    times.sort();
    times[ROUNDS / 2]
}

async fn commands_processed(c: &RedisCluster, port: u16) -> u64 {
    let mut con = c.connection(port).await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut con)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: make bench"]
async fn bench_poll_10k_queues_cluster_vs_single_node() {
    let keys = Keys::new("pollbench");
    let single = PrivateRedis::start().await.unwrap();
    let mut cluster = RedisCluster::start().await.unwrap();
    fill(&single.url(), &keys).await;
    fill(&cluster.url(), &keys).await;

    let one = poll(&single.url(), &keys).await;
    let masters = cluster.master_ports().await.unwrap();
    let mut before = Vec::new();
    for &m in &masters {
        before.push(commands_processed(&cluster, m).await);
    }
    let three = poll(&cluster.url(), &keys).await;
    let mut per_master = Vec::new();
    for (i, &m) in masters.iter().enumerate() {
        // (1 + ROUNDS polls, plus the INFO of this measurement)
        let n = commands_processed(&cluster, m).await - before[i] - 1;
        per_master.push(n / (1 + ROUNDS as u64));
    }
    println!(
        "BENCH cluster poll: {N} queues: one redis-server {:.1} ms per poll, 3-master cluster \
         {:.1} ms per poll (ratio {:.2}); commands per master per poll {per_master:?} (sum {})",
        one.as_secs_f64() * 1e3,
        three.as_secs_f64() * 1e3,
        three.as_secs_f64() / one.as_secs_f64(),
        per_master.iter().sum::<u64>()
    );
    // every master took a share: the poll was split, not sent to one node
    assert!(
        per_master.iter().all(|&n| n > N as u64 / 10),
        "{per_master:?}"
    );
}
