//! The operator's poll (`funcscale_operator::redis_metrics::Poller`) of queues on a real Redis
//! Cluster (`funcscale_e2e::redis_cluster::RedisCluster`): queues on the three masters are read
//! in one poll, the queue status says topology `cluster` and names each queue's master; a
//! poll during a slot migration (held half-way, then finished) still reads the moved queue; a
//! killed master makes only its queues unavailable (naming it), the others are read, and its
//! queues are read again from the promoted replica. An RQ queue's oldest job (its hash on
//! another slot) is read in two steps.

use std::time::{Duration, Instant};

use funcscale_e2e::redis_cluster::{ClusterOptions, RedisCluster};
use funcscale_operator::crd::{FuncQueue, FuncQueueSpec, QueueFormat, StreamGroupRef};
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

    // Stream queues on the second and the third master: one SCRIPT LOAD of the stream script
    // for the poll, sent to each master that runs it; the second master sorts first, so its
    // reply was the one every Stream queue was checked against (issue 17)
    assert!(
        format!("127.0.0.1:{}", masters[1]) < format!("127.0.0.1:{}", masters[2]),
        "{masters:?}"
    );
    let mut streams = Vec::new();
    for &port in &masters[1..] {
        let key = adopted_on(&mut c, &keys, port).await;
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("n")
            .arg(1)
            .query_async(&mut con)
            .await
            .unwrap();
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg("g")
            .arg("0")
            .query_async(&mut con)
            .await
            .unwrap();
        let name = key;
        let mut q = queue(&name, QueueFormat::Stream);
        q.spec.stream = Some(StreamGroupRef { group: "g".into() });
        let id = QueueId::new("ns", name.clone());
        registry.upsert(
            id.clone(),
            QueueTarget::for_queue(&q, &name, endpoint.clone(), &keys, 60_000),
        );
        streams.push((port, id));
    }

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
    for (port, id) in &streams {
        match cache.get(id) {
            Some(Reading::Ok(q)) => {
                assert_eq!((q.depth, q.node.clone()), (1, format!("127.0.0.1:{port}")));
            }
            other => panic!("{id}: {other:?}"),
        }
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
    // the Stream queue of the dead master fails; the other master's Stream queue is read,
    // though the dead master was the one whose SCRIPT LOAD reply came first
    let (_, dead_stream) = &streams[0];
    match cache.get(dead_stream) {
        Some(Reading::Unavailable { error, .. }) => assert!(
            error.contains(&format!("127.0.0.1:{victim} (cluster, slots ")),
            "{error}"
        ),
        other => panic!("{dead_stream}: {other:?}"),
    }
    let (_, live_stream) = &streams[1];
    match cache.get(live_stream) {
        Some(Reading::Ok(q)) => assert_eq!(q.depth, 1, "{live_stream}"),
        other => panic!("{live_stream}: {other:?}"),
    }

    let promoted = c
        .wait_promoted(victim, Duration::from_secs(20))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        poller.poll_once(now_ms()).await;
        if let (Some(Reading::Ok(q)), Some(Reading::Ok(s))) =
            (cache.get(&dead_q), cache.get(dead_stream))
        {
            assert_eq!(q.depth, 2);
            assert_eq!(q.node, format!("127.0.0.1:{promoted}"));
            // the stream script is loaded on the promoted master too
            assert_eq!((s.depth, s.node), (1, format!("127.0.0.1:{promoted}")));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{dead_q} or {dead_stream} not read again: {:?} {:?}",
            cache.get(&dead_q),
            cache.get(dead_stream)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The name of an adopted queue (its stream or list is its name) whose keys are all on master
/// `port`: its list, and its stats hash and scheduled-executions key, which are named by the
/// queue (`<prefix>:stats:<name>`) and so in slots of their own.
async fn adopted_on(c: &mut RedisCluster, keys: &Keys, port: u16) -> String {
    let view = c.view(port).await.unwrap();
    let owner = |k: &str| {
        view.iter()
            .find(|n| n.master && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot(k))))
            .map(|n| n.port)
    };
    (0..100_000)
        .map(|i| format!("conn3-stream-{i}"))
        .find(|n| {
            [n.clone(), keys.stats(n), keys.schedules_per_period(n)]
                .iter()
                .all(|k| owner(k) == Some(port))
        })
        .expect("a name on the master")
}

/// The cluster additions docs/operations.md gives the operator's ACL user: the words of its
/// `ACL SETUSER funcscale-operator ... <additions>` example.
fn cluster_additions() -> Vec<String> {
    let doc = include_str!("../../docs/operations.md");
    let head = "`ACL SETUSER funcscale-operator ... ";
    let line = doc
        .lines()
        .find_map(|l| l.split_once(head).map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("docs/operations.md gives no {head}...` line"));
    let words = line.split('`').next().unwrap_or_default();
    words.split_whitespace().map(String::from).collect()
}

/// A cluster whose nodes have the documented ACL users `funcscale-operator` (with the cluster
/// `additions`) and `funcscale-worker`, password `pw`, key prefix `conn3acl`.
async fn cluster_with_operator_user(additions: &[String]) -> RedisCluster {
    let mut rule = funcscale_e2e::docs::documented_rule("funcscale-operator", "pw", "conn3acl");
    rule.extend(additions.iter().cloned());
    let worker = funcscale_e2e::docs::documented_rule("funcscale-worker", "pw", "conn3acl");
    RedisCluster::start_with(ClusterOptions {
        config: vec![
            format!("user {}", rule.join(" ")),
            format!("user {}", worker.join(" ")),
        ],
        ..ClusterOptions::default()
    })
    .await
    .unwrap()
}

/// The operator's documented ACL user with the documented cluster additions polls a cluster,
/// also while a queue's slot is half migrated (`ASK`: the client sends `ASKING`, which
/// `+@connection` grants); without any one of the additions the poll is refused
/// (`RedisAuthFailed`). A command a node refuses to the user (a Stream queue without the
/// Stream additions `+evalsha +script|load`) makes that queue `RedisAuthFailed`, naming the
/// master of its key, as on one server; the other queues are read.
#[tokio::test]
async fn the_documented_operator_acl_polls_a_cluster_with_the_cluster_additions_only() {
    let additions = cluster_additions();
    assert_eq!(additions, ["+cluster|slots"], "the documented additions");
    let keys = Keys::new("conn3acl");
    let mut variants = vec![(additions.clone(), None)];
    for (i, word) in additions.iter().enumerate() {
        let mut less = additions.clone();
        less.remove(i);
        variants.push((less, Some(word.clone())));
    }
    for (rules, without) in variants {
        let mut c = cluster_with_operator_user(&rules).await;
        let mut con = c.cluster_connection().await.unwrap();
        let qid = "{ns.acl}";
        let e = Envelope::new("t", "f", qid, now_ms() - 5_000);
        let _: () = redis::cmd("LPUSH")
            .arg(keys.queue(qid))
            .arg(e.to_json())
            .query_async(&mut con)
            .await
            .unwrap();
        // a Stream queue in the user's keys: its script needs +evalsha +script|load
        let stream = "conn3acl:stream";
        let _: String = redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("n")
            .arg(1)
            .query_async(&mut con)
            .await
            .unwrap();
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg("g")
            .arg("0")
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
                RedisEndpoint::new(url.clone()),
                &keys,
                60_000,
            ),
        );
        let mut sq = queue("acl-stream", QueueFormat::Stream);
        sq.spec.key = Some(stream.into());
        sq.spec.stream = Some(StreamGroupRef { group: "g".into() });
        let stream_id = QueueId::new("ns", "acl-stream");
        registry.upsert(
            stream_id.clone(),
            QueueTarget::for_queue(&sq, "acl-stream", RedisEndpoint::new(url), &keys, 60_000),
        );
        let mut poller = Poller::new(registry, cache.clone(), poller_config());
        poller.poll_once(now_ms()).await;
        let Some(word) = without else {
            match cache.get(&id) {
                Some(Reading::Ok(q)) => assert_eq!(q.depth, 1),
                other => panic!("{id}: {other:?}"),
            }
            let stream_master = c.master_of_slot(slot(stream)).await.unwrap();
            match cache.get(&stream_id) {
                Some(Reading::Unavailable { error, reason, .. }) => {
                    assert_eq!(reason.as_str(), "RedisAuthFailed", "{error}");
                    assert!(
                        error.contains(&format!("Redis at 127.0.0.1:{stream_master} "))
                            && error.contains("NOPERM"),
                        "{error}"
                    );
                }
                other => panic!("{stream_id}: {other:?}"),
            }
            // the queue's slot half moved to another master: the poll follows the ASK
            let from = c.master_of_slot(slot(qid)).await.unwrap();
            let masters = c.master_ports().await.unwrap();
            let to = *masters.iter().find(|&&m| m != from).unwrap();
            let m = c.migrate_slot_partly(slot(qid), to, 1).await.unwrap();
            assert_eq!(m.moved, 1, "{m:?}");
            poller.poll_once(now_ms()).await;
            match cache.get(&id) {
                Some(Reading::Ok(q)) => assert_eq!(q.depth, 1),
                other => panic!("{id} mid-migration: {other:?}"),
            }
            // ASKING is in +@connection; the pods' rule grants what the cluster client sends
            let mut node = c.connection(from).await.unwrap();
            for (user, cmd) in [
                ("funcscale-operator", vec!["ASKING"]),
                ("funcscale-worker", vec!["ASKING"]),
                ("funcscale-worker", vec!["CLUSTER", "SLOTS"]),
            ] {
                let ok: String = redis::cmd("ACL")
                    .arg("DRYRUN")
                    .arg(user)
                    .arg(&cmd)
                    .query_async(&mut node)
                    .await
                    .unwrap();
                assert_eq!(ok, "OK", "{user} {cmd:?}");
            }
            continue;
        };
        match cache.get(&id) {
            Some(Reading::Unavailable { error, reason, .. }) => {
                assert_eq!(
                    reason.as_str(),
                    "RedisAuthFailed",
                    "without {word}: {error}"
                );
                assert!(
                    error.contains("NOPERM") && error.contains("+cluster|slots"),
                    "{error}"
                )
            }
            other => panic!("without {word}: {other:?}"),
        }
        drop(c.master_ports().await);
    }
}
