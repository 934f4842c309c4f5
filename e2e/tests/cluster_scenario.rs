//! Redis Cluster on the real control plane (issue 17 item 2): a FuncQueue, a Worker pool, a
//! Beat pool and the operator all on a `redis+cluster://` URL of a three-master cluster this
//! file starts ([`funcscale_e2e::redis_cluster::RedisCluster`]). While a producer pushes tasks
//! (one `funcscale-worker enqueue` each, a failed push re-sent), the queue's hash slot is
//! migrated to another master (held half-way for a second: ASK/TRYAGAIN), then that master is
//! SIGKILLed and its replica promoted. Every acknowledged task runs (side effects counted in a
//! file, outside Redis), the beat fires after the failover, the operator keeps reading and
//! sizing the pool (its size held through the switch), and the same worker and beat
//! processes serve throughout. Needs `cargo build --workspace --bins` and `redis-server`.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use funcscale_e2e::eventually;
use funcscale_e2e::redis_cluster::RedisCluster;
use funcscale_e2e::scenario::{
    Options, ReplicaHistory, Scenario, log_tails, sample_metrics_available, side_effects,
    spawn_producer,
};
use funcscale_protocol::Keys;
use serde_json::json;

/// The queue's `status.lastPollTime`, parsed.
async fn last_poll(s: &Scenario, queue: &str) -> Option<k8s_openapi::jiff::Timestamp> {
    let st = s.queues().get(queue).await.ok()?.status?;
    st.last_poll_time?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_migration_and_a_master_failover_while_tasks_flow_lose_no_task() {
    if funcscale_e2e::scenario::real_cluster() {
        eprintln!("skipped against a real cluster: pods cannot reach this machine's Redis Cluster");
        return;
    }
    const N: usize = 90;
    let mut cluster = RedisCluster::start().await.unwrap();
    let url = cluster.url();
    let mut opts = Options::new("cluster");
    opts.redis_url = url.clone();
    let s = Scenario::start(opts).await.unwrap();
    let logs = |s: &Scenario, c: &RedisCluster| log_tails(s, c.dir());
    // the queue's hash slot (its id `{<namespace>.jobs}` is the hash tag of all its keys)
    let slot = funcscale_protocol::keys::slot(&Keys::queue_id(&s.ns, "jobs"));

    // side effects in a file outside /tmp (a pod's /tmp is its own emptyDir)
    let side = tempfile::tempdir_in("/var/tmp").unwrap();
    let done = side.path().join("done");
    let handler = format!(
        "exec:echo \"$FUNCSCALE_FUNC $FUNCSCALE_TASK_ID\" >> {}",
        done.display()
    );
    s.apply_queue(
        "jobs",
        json!({"taskTimeMs": 100, "maxRetries": 5, "redis": {"url": url},
            "schedules": [{"name": "tick", "cron": "*/2 * * * * *", "function": "tick", "args": []}]}),
    )
    .await
    .unwrap();
    s.apply_pool(
        "w",
        json!({"queues": ["jobs"], "processesPerPod": 2, "handler": handler,
            "autoscaling": {"minReplicas": 2, "maxReplicas": 4, "drainTargetSeconds": 5,
                "activationDepth": 0, "periodMs": 60000,
                "scaleDownStabilizationSeconds": 300, "scaleUpMaxStep": 2}}),
    )
    .await
    .unwrap();
    s.apply_pool("beat", json!({"role": "Beat", "queues": [], "replicas": 1}))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "2 ready workers, a ready beat, ticks running",
        || async {
            let ticks = side_effects(&done).0.get("tick").map_or(0, |t| t.len());
            (s.replicas("w").await.ok().flatten() == Some((2, 2))
                && s.replicas("beat").await.ok().flatten() == Some((1, 1))
                && ticks >= 1)
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s, &cluster)));
    let queue_status = s.queues().get("jobs").await.unwrap().status.unwrap();
    let topology = serde_json::to_value(&queue_status).unwrap()["redis"]["topology"].clone();
    assert_eq!(topology, "cluster", "the queue's status says its topology");
    let history = ReplicaHistory::start(s.deployments(), "w");
    let worker_pids = s.pod_ids("w").await;
    let beat_pids = s.pod_ids("beat").await;

    // the producer: one process per task, a failed push re-sent until it is acknowledged
    let (producer, produced, failed_pushes, stop) =
        spawn_producer(&s, &url, Vec::new(), N, Duration::from_millis(100));
    let pushed = |n: usize| {
        let produced = produced.clone();
        async move {
            eventually(
                Duration::from_secs(90),
                &format!("{n} tasks pushed"),
                || {
                    let produced = produced.clone();
                    async move { (produced.lock().unwrap().len() >= n).then_some(()) }
                },
            )
            .await
        }
    };

    // a third of the way: the queue's slot moves to another master, held half-way a second
    pushed(N / 3)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s, &cluster)));
    let from = cluster.master_of_slot(slot).await.unwrap();
    let to = *cluster
        .master_ports()
        .await
        .unwrap()
        .iter()
        .find(|p| **p != from)
        .unwrap();
    let m = cluster.migrate_slot_partly(slot, to, 3).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.finish_migration(m).await.unwrap();
    eprintln!("slot {slot} of the queue migrated from 127.0.0.1:{from} to 127.0.0.1:{to}");

    // two thirds: the queue's (new) master dies, after its writes reached its replica
    pushed(2 * N / 3)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s, &cluster)));
    let victim = cluster.master_of_slot(slot).await.unwrap();
    {
        let mut con = cluster.connection(victim).await.unwrap();
        let fence = format!("{}:e2e-replication-fence", Keys::queue_id(&s.ns, "jobs"));
        let _: () = redis::cmd("SET")
            .arg(&fence)
            .arg(1)
            .query_async(&mut con)
            .await
            .unwrap();
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(2000)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(
            acked, 1,
            "the replica has the master's writes before the kill"
        );
    }
    let size_at_kill = s.replicas("w").await.unwrap().unwrap().0;
    let (sampler, seen_conditions) = sample_metrics_available(&s, "w");
    let poll_at_kill = last_poll(&s, "jobs").await;
    let killed = Instant::now();
    cluster.kill_master(victim).await.unwrap();
    let promoted = cluster
        .wait_promoted(victim, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s, &cluster)));
    let ticks_at_promotion = side_effects(&done).0.get("tick").map_or(0, |t| t.len());
    eprintln!(
        "master 127.0.0.1:{victim} killed; 127.0.0.1:{promoted} promoted after {:?}; {} tasks \
         pushed by then",
        killed.elapsed(),
        produced.lock().unwrap().len()
    );

    // every acknowledged task runs
    tokio::time::timeout(Duration::from_secs(120), producer)
        .await
        .unwrap_or_else(|_| {
            stop.store(true, Ordering::SeqCst);
            panic!("the producer did not finish\n{}", logs(&s, &cluster))
        })
        .unwrap();
    let produced: BTreeSet<String> = produced.lock().unwrap().iter().cloned().collect();
    assert_eq!(produced.len(), N);
    let ran = eventually(
        Duration::from_secs(90),
        "every acknowledged task ran",
        || async {
            let ran = side_effects(&done).0.remove("job").unwrap_or_default();
            produced.is_subset(&ran).then_some(ran)
        },
    )
    .await
    .unwrap_or_else(|e| {
        let ran = side_effects(&done).0.remove("job").unwrap_or_default();
        let missing: Vec<_> = produced.difference(&ran).collect();
        panic!("{e}: missing {missing:?}\n{}", logs(&s, &cluster))
    });
    assert_eq!(ran.len(), N, "distinct task ids that ran");

    // the beat reconnected: its schedule fires after the failover
    eventually(
        Duration::from_secs(30),
        "the beat fires after the failover",
        || async {
            let ticks = side_effects(&done).0.get("tick").map_or(0, |t| t.len());
            (ticks >= ticks_at_promotion + 2).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s, &cluster)));

    // the operator reads the queue from the promoted master
    eventually(
        Duration::from_secs(30),
        "the queue's status polled after the failover, MetricsAvailable=True",
        || async {
            let polled = last_poll(&s, "jobs").await?;
            let fresh = poll_at_kill.is_none_or(|p| polled > p);
            let ok = s
                .condition("w", "MetricsAvailable")
                .await
                .ok()
                .flatten()
                .is_some_and(|c| c.0 == "True");
            (fresh && ok).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s, &cluster)));
    sampler.abort();
    let seen = seen_conditions.lock().unwrap().clone();
    // the failover showed in the pool's condition (naming the node), the size held meanwhile
    assert!(
        seen.contains(&("False".into(), "RedisUnavailable".into())),
        "MetricsAvailable through the switch: {seen:?}"
    );
    assert!(
        seen.iter()
            .all(|(st, reason)| st == "True" || reason == "RedisUnavailable"),
        "MetricsAvailable through the switch: {seen:?}"
    );
    let sizes = history.values();
    assert!(
        sizes.iter().all(|r| *r >= size_at_kill.min(2)),
        "the pool shrank during the failover: {sizes:?}"
    );
    let pids_after = s.pod_ids("w").await;
    let beat_after = s.pod_ids("beat").await;
    let (_, executions) = side_effects(&done);
    eprintln!(
        "cluster: {N} tasks acknowledged, {} failed pushes re-sent, {executions} executions in \
         all, pool sizes {sizes:?}, MetricsAvailable through the switch {seen:?}",
        failed_pushes.load(Ordering::SeqCst),
    );
    assert_eq!(
        worker_pids,
        pids_after,
        "worker processes were replaced: they exited instead of reconnecting\n{}",
        logs(&s, &cluster)
    );
    assert_eq!(
        beat_pids,
        beat_after,
        "the beat process was replaced: it exited instead of reconnecting\n{}",
        logs(&s, &cluster)
    );
    s.shutdown().await;
}
