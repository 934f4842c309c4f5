//! The operator's poll (`funcscale_operator::redis_metrics::Poller`) of queues on a real Redis
//! Cluster (`funcscale_e2e::redis_cluster::RedisCluster`): queues on the three masters are read
//! in one poll, the queue status says topology `cluster` and names each queue's master; a
//! poll during a slot migration (held half-way, then finished) still reads the moved queue; a
//! killed master makes only its queues unavailable (naming it), the others are read, and its
//! queues are read again from the promoted replica. An RQ queue's oldest job (its hash on
//! another slot) is read in two steps.

use std::time::{Duration, Instant};

use funcscale_e2e::redis_cluster::{ClusterOptions, RedisCluster};
use funcscale_operator::crd::{FuncQueue, FuncQueueSpec, QueueFormat};
use funcscale_operator::redis_metrics::{
    MetricsCache, Poller, PollerConfig, QueueId, QueueTarget, Reading, RedisEndpoint, Registry,
};
use funcscale_protocol::keys::slot;
use funcscale_protocol::{Envelope, Keys};
use funcscale_worker::clock::now_ms;

fn queue(name: &str, format: QueueFormat) -> FuncQueue {
    let mut q = FuncQueue::new(
        name,
        FuncQueueSpec {
            format,
            task_time_ms: 500,
            ..Default::default()
        },
    );
    q.metadata.namespace = Some("ns".into());
    q
}

/// The poller's configuration in these tests: 1 s to connect, 2 s for a reply.
fn poller_config() -> PollerConfig {
    PollerConfig {
        response_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        ..PollerConfig::default()
    }
}

#[tokio::test]
async fn queues_on_three_masters_are_read_and_a_dead_master_fails_only_its_own() {
    let mut c = RedisCluster::start_with(ClusterOptions {
        require_full_coverage: false,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let mut con = c.cluster_connection().await.unwrap();
    let keys = Keys::new("conn3poll");
    let masters = c.master_ports().await.unwrap();
    let endpoint = RedisEndpoint::new(c.url());
    let registry = Registry::default();
    let cache = MetricsCache::default();
    let now = now_ms();
    let mut queues = Vec::new();
    for (m, &port) in masters.iter().enumerate() {
        // a queue id (hash tag) whose slot this master serves
        let qid = c.queue_on("ns", port).await.unwrap();
        let name = Keys::queue_name(&qid).to_string();
        for t in 0..=m {
            let e = Envelope::new(format!("t{t}"), "f", &qid, now - 10_000);
            let _: () = redis::cmd("LPUSH")
                .arg(keys.queue(&qid))
                .arg(e.to_json())
                .query_async(&mut con)
                .await
                .unwrap();
        }
        let id = QueueId::new("ns", name.clone());
        registry.upsert(
            id.clone(),
            QueueTarget::for_queue(
                &queue(&name, QueueFormat::Funcscale),
                &qid,
                endpoint.clone(),
                &keys,
                60_000,
            ),
        );
        queues.push((port, id));
    }
    // an RQ queue: its list and its job's hash are on two slots
    let rq = "conn3-rq";
    let job = funcscale_protocol::foreign::rq_job_key("conn3-job");
    let at = k8s_openapi::jiff::Timestamp::from_millisecond((now - 30_000) as i64)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string();
    let _: () = redis::cmd("HSET")
        .arg(&job)
        .arg("enqueued_at")
        .arg(at)
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg(funcscale_protocol::foreign::rq_queue_key(rq))
        .arg("conn3-job")
        .query_async(&mut con)
        .await
        .unwrap();
    let rq_id = QueueId::new("ns", rq);
    registry.upsert(
        rq_id.clone(),
        QueueTarget::for_queue(
            &queue(rq, QueueFormat::Rq),
            rq,
            endpoint.clone(),
            &keys,
            60_000,
        ),
    );

    let mut poller = Poller::new(registry, cache.clone(), poller_config());
    let report = poller.poll_once(now).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.nodes.len(), 1);
    assert_eq!(report.nodes[0].topology, "cluster");
    for (m, (port, id)) in queues.iter().enumerate() {
        match cache.get(id) {
            Some(Reading::Ok(q)) => {
                assert_eq!(q.depth, m as u64 + 1, "{id}");
                assert_eq!(q.topology, "cluster");
                assert_eq!(q.node, format!("127.0.0.1:{port}"));
                assert!((q.oldest_age_seconds.unwrap() - 10.0).abs() < 0.01, "{q:?}");
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    match cache.get(&rq_id) {
        Some(Reading::Ok(q)) => {
            assert_eq!(q.depth, 1);
            assert!((q.oldest_age_seconds.unwrap() - 30.0).abs() < 0.01, "{q:?}");
        }
        other => panic!("{rq_id}: {other:?}"),
    }

    // the first queue's slot moves to the third master, held half-way (its keys on both
    // masters: ASK for those moved), then finished (MOVED)
    let (_, first) = queues[0].clone();
    let first_slot = slot(&keys.queue(&format!("{{ns.{}}}", first.name)));
    let m = c
        .migrate_slot_partly(first_slot, masters[2], 2)
        .await
        .unwrap();
    assert!(m.moved >= 1, "{m:?}");
    poller.poll_once(now + 500).await;
    match cache.get(&first) {
        Some(Reading::Ok(q)) => assert_eq!(q.depth, 1, "{first}"),
        other => panic!("{first} mid-migration: {other:?}"),
    }
    c.finish_migration(m).await.unwrap();
    poller.poll_once(now + 600).await;
    match cache.get(&first) {
        Some(Reading::Ok(q)) => assert_eq!(q.depth, 1, "{first}"),
        other => panic!("{first} after the migration: {other:?}"),
    }

    // the writes reached the replicas; then the master of the second queue dies
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (victim, dead_q) = queues[1].clone();
    c.kill_master(victim).await.unwrap();
    let report = poller.poll_once(now + 1000).await;
    // one poll error: the dead master's (the poll-errors metric counts it)
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert!(
        report.errors[0]
            .1
            .contains(&format!("127.0.0.1:{victim} (cluster, slots ")),
        "{:?}",
        report.errors
    );
    match cache.get(&dead_q) {
        Some(Reading::Unavailable { error, .. }) => assert!(
            error.contains(&format!("127.0.0.1:{victim} (cluster, slots ")),
            "{error}"
        ),
        other => panic!("{dead_q}: {other:?}"),
    }
    for (m, (_, id)) in queues.iter().enumerate().filter(|(m, _)| *m != 1) {
        match cache.get(id) {
            Some(Reading::Ok(q)) => assert_eq!(q.depth, m as u64 + 1, "{id}"),
            other => panic!("{id}: {other:?}"),
        }
    }

    let promoted = c
        .wait_promoted(victim, Duration::from_secs(20))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        poller.poll_once(now_ms()).await;
        if let Some(Reading::Ok(q)) = cache.get(&dead_q) {
            assert_eq!(q.depth, 2);
            assert_eq!(q.node, format!("127.0.0.1:{promoted}"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{dead_q} not read again: {:?}",
            cache.get(&dead_q)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The cluster additions docs/operations.md gives the operator's ACL user.
const CLUSTER_ACL: &str = "+cluster|slots +cluster|nodes +asking +readonly";

/// A cluster whose nodes have the operator's documented ACL user `funcscale-operator` (password `pw`,
/// prefix `conn3acl`), with the cluster additions when `additions`.
async fn cluster_with_operator_user(additions: bool) -> RedisCluster {
    let mut rule = funcscale_e2e::docs::documented_rule("funcscale-operator", "pw", "conn3acl");
    if additions {
        rule.extend(CLUSTER_ACL.split_whitespace().map(String::from));
    }
    RedisCluster::start_with(ClusterOptions {
        config: vec![format!("user {}", rule.join(" "))],
        ..ClusterOptions::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_documented_operator_acl_polls_a_cluster_with_the_cluster_additions_only() {
    let doc = include_str!("../../docs/operations.md");
    assert!(
        doc.contains(CLUSTER_ACL),
        "docs/operations.md gives no {CLUSTER_ACL}"
    );
    let keys = Keys::new("conn3acl");
    for additions in [true, false] {
        let mut c = cluster_with_operator_user(additions).await;
        let mut con = c.cluster_connection().await.unwrap();
        let qid = "{ns.acl}";
        let e = Envelope::new("t", "f", qid, now_ms() - 5_000);
        let _: () = redis::cmd("LPUSH")
            .arg(keys.queue(qid))
            .arg(e.to_json())
            .query_async(&mut con)
            .await
            .unwrap();
        let url = c
            .url()
            .replace("redis+cluster://", "redis+cluster://funcscale-operator:pw@");
        let registry = Registry::default();
        let cache = MetricsCache::default();
        let id = QueueId::new("ns", "acl");
        registry.upsert(
            id.clone(),
            QueueTarget::for_queue(
                &queue("acl", QueueFormat::Funcscale),
                qid,
                RedisEndpoint::new(url),
                &keys,
                60_000,
            ),
        );
        Poller::new(registry, cache.clone(), poller_config())
            .poll_once(now_ms())
            .await;
        match (additions, cache.get(&id)) {
            (true, Some(Reading::Ok(q))) => assert_eq!(q.depth, 1),
            (false, Some(Reading::Unavailable { error, .. })) => {
                assert!(
                    error.contains("NOPERM") && error.contains("+cluster|slots"),
                    "{error}"
                )
            }
            (_, other) => panic!("additions {additions}: {other:?}"),
        }
        drop(c.master_ports().await);
    }
}
