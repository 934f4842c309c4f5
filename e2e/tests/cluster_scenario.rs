//! Redis Cluster on the real control plane (issue 17 item 2): a FuncQueue, a Worker pool, a
//! Beat pool and the operator all on a `redis+cluster://` URL of a three-master cluster this
//! file starts ([`funcscale_e2e::redis_cluster::RedisCluster`]). While a producer pushes tasks
//! (one `funcscale-worker enqueue` each, a failed push re-sent), the queue's hash slot is
//! migrated to another master (held half-way for a second: ASK/TRYAGAIN), then that master is
//! SIGKILLed (once the load of 4 s tasks grew the pool from 1 to its 4 pods, with tasks
//! waiting) and its replica promoted. Every acknowledged task runs (side effects counted in a
//! file, outside Redis), the beat fires after the failover, the operator keeps reading and
//! sizing the pool (its 4 pods kept until it reads the queue again), and the same worker and
//! beat processes serve throughout. Needs `cargo build --workspace --bins` and `redis-server`.

use std::time::Duration;

use funcscale_e2e::redis_cluster::RedisCluster;
use funcscale_e2e::scenario::{Failover, Options, Scenario, spawn_producer};
use funcscale_protocol::Keys;
use serde_json::json;

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
    // the queue's hash slot (its id `{<namespace>.jobs}` is the hash tag of all its keys)
    let slot = funcscale_protocol::keys::slot(&Keys::queue_id(&s.ns, "jobs"));

    let mut f = Failover::start(&s, json!({"url": url}), cluster.dir()).await;
    let queue_status = s.queues().get("jobs").await.unwrap().status.unwrap();
    let topology = serde_json::to_value(&queue_status).unwrap()["redis"]["topology"].clone();
    assert_eq!(topology, "cluster", "the queue's status says its topology");

    // the producer: one process per task, a failed push re-sent until it is acknowledged
    let producer = spawn_producer(&s, &url, Vec::new(), N, Duration::from_millis(100));

    // a third of the way: the queue's slot moves to another master, held half-way a second
    producer
        .wait_acknowledged(N / 3, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
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

    // two thirds, the pool grown above its minimum to its most pods with tasks waiting: the
    // queue's (new) master dies, after its writes reached its replica
    producer
        .wait_acknowledged(2 * N / 3, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    f.wait_loaded().await;
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
    f.at_kill().await;
    cluster.kill_master(victim).await.unwrap();
    let promoted = cluster
        .wait_promoted(victim, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    f.promoted(victim, promoted, &producer);

    // every acknowledged task runs, the beat fires, the operator reads the queue from the
    // promoted master and held the pool's size, the same processes served throughout
    f.check(producer, N, "cluster").await;
    s.shutdown().await;
}
