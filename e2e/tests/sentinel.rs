//! Redis Sentinel (issue 17 item 1), on a Sentinel set this file starts
//! ([`funcscale_e2e::redis_topology::SentinelSet`]: a master, two replicas, three sentinels):
//!
//! - what a failover loses with asynchronous replication: writers LPUSH numbered items at full
//!   speed, the master is SIGKILLed, the acknowledged items missing on the promoted replica are
//!   counted — with the defaults, with `min-replicas-to-write 1` + `min-replicas-max-lag 1`, and
//!   with `WAIT 1 100` / `WAIT 2 100` after each write (printed as a table);
//! - the closed loop on the real control plane: a FuncQueue, a Worker pool, a Beat pool and the
//!   operator on the `redis+sentinel://` URL, the master SIGKILLed while tasks flow: a replica
//!   is promoted, every acknowledged task runs (side effects counted in a file, outside Redis),
//!   the beat fires after the failover, the operator keeps reading and sizing (the pool, grown
//!   above its minimum by the load, keeps its size until the operator reads the queue again).
//!
//! Needs `cargo build --workspace --bins` first and `redis-server`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use funcscale_e2e::redis_topology::{Auth, SentinelOptions, SentinelSet};
use funcscale_e2e::scenario::{Failover, Options, Scenario, spawn_producer};
use serde_json::json;

/// How writes are acknowledged in a loss measurement.
#[derive(Clone, Copy, Debug)]
enum Ack {
    /// The LPUSH reply.
    Reply,
    /// The LPUSH reply, then `WAIT n 100` answering at least `n` replicas.
    Wait(u32),
}

/// One measured failover.
#[derive(Debug, Default)]
struct Loss {
    /// Items whose write was acknowledged.
    acked: u64,
    /// Acknowledged items missing on the promoted replica.
    lost: u64,
    /// Writes refused by the master (`NOREPLICAS`) or whose `WAIT` saw too few replicas.
    refused: u64,
    /// Items on the promoted replica whose write was never acknowledged.
    unacked_present: u64,
    /// Writes per second before the kill (before the partition).
    rate: f64,
    /// From the kill to the promoted replica answering as master.
    failover: Duration,
}

/// Writers LPUSH numbered items to the master as fast as they can for `run`, then (with
/// `partition`) the master is cut off from its replicas for that long while they go on
/// writing, then the master is SIGKILLed; the promoted replica's list is compared with what
/// was acknowledged.
async fn measure(
    data_config: &[&str],
    ack: Ack,
    run: Duration,
    partition: Option<Duration>,
) -> Loss {
    const WRITERS: u64 = 4;
    let mut set = SentinelSet::start(SentinelOptions {
        data_config: data_config.iter().map(|s| s.to_string()).collect(),
        replication_proxy: partition.is_some(),
        ..Default::default()
    })
    .await
    .unwrap();
    let master = set.master_port().await.unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let mut con = set.data_connection(master).await.unwrap();
        let (next, refused) = (next.clone(), refused.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                match redis::cmd("LPUSH")
                    .arg("items")
                    .arg(i)
                    .query_async::<i64>(&mut con)
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.code() == Some("NOREPLICAS") => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    Err(_) => break, // the master is gone
                }
                match ack {
                    Ack::Reply => acked.push(i),
                    Ack::Wait(n) => {
                        match redis::cmd("WAIT")
                            .arg(n)
                            .arg(100)
                            .query_async::<u32>(&mut con)
                            .await
                        {
                            Ok(got) if got >= n => acked.push(i),
                            Ok(_) => {
                                refused.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
            acked
        }));
    }
    tokio::time::sleep(run).await;
    let before = next.load(Ordering::SeqCst);
    if let Some(p) = partition {
        set.partition_master();
        tokio::time::sleep(p).await;
    }
    let killed_at = Instant::now();
    let old = set.kill_master().await.unwrap();
    let mut acked = BTreeSet::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let new = set
        .wait_for_new_master(old, Duration::from_secs(30))
        .await
        .unwrap();
    let failover = killed_at.elapsed();
    let mut con = set.data_connection(new).await.unwrap();
    let present: Vec<u64> = redis::cmd("LRANGE")
        .arg("items")
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    let present: BTreeSet<u64> = present.into_iter().collect();
    Loss {
        acked: acked.len() as u64,
        lost: acked.difference(&present).count() as u64,
        refused: refused.load(Ordering::SeqCst),
        unacked_present: present.difference(&acked).count() as u64,
        rate: before as f64 / run.as_secs_f64(),
        failover,
    }
}

/// What a failover loses with asynchronous replication, per setting and fault (a table on
/// stdout; `FUNCSCALE_E2E_LOSS_RUNS` runs of each, default 1): the master SIGKILLed with its
/// replication links intact, and the master cut off from its replicas for 5 s (a network
/// partition: it goes on acknowledging writes no replica receives), then SIGKILLed. Acknowledged
/// with `WAIT n` nothing may be lost (the replica with the most data is promoted); with the
/// defaults the partition loses what was written during it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_write_loss_by_setting() {
    let runs: usize = std::env::var("FUNCSCALE_E2E_LOSS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let min_replicas = ["min-replicas-to-write 1", "min-replicas-max-lag 1"];
    let settings: [(&str, &[&str], Ack); 4] = [
        ("defaults (async replication)", &[], Ack::Reply),
        (
            "min-replicas-to-write 1, min-replicas-max-lag 1",
            &min_replicas,
            Ack::Reply,
        ),
        ("WAIT 1 100 after each write", &[], Ack::Wait(1)),
        ("WAIT 2 100 after each write", &[], Ack::Wait(2)),
    ];
    let faults = [
        ("master SIGKILLed", None),
        (
            "master cut off from its replicas for 5 s, then SIGKILLed",
            Some(Duration::from_secs(5)),
        ),
    ];
    let mut table = Vec::new();
    for (fault, partition) in faults {
        for (name, config, ack) in settings {
            for run in 0..runs {
                let l = measure(config, ack, Duration::from_millis(1500), partition).await;
                println!("{fault}, {name} (run {run}): {l:?}");
                assert!(l.acked > 0, "{name}: nothing was written: {l:?}");
                if let Ack::Wait(_) = ack {
                    assert_eq!(l.lost, 0, "{fault}, {name}: {l:?}");
                }
                if partition.is_some() && config.is_empty() && matches!(ack, Ack::Reply) {
                    assert!(
                        l.lost > 0,
                        "{fault}, {name}: the partition lost nothing? {l:?}"
                    );
                }
                table.push((fault, name, l));
            }
        }
    }
    println!(
        "\n| fault | setting | writes/s | acknowledged | lost (acknowledged, missing after the failover) | refused | applied, not acknowledged | kill → promoted |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (fault, name, l) in &table {
        println!(
            "| {fault} | {name} | {:.0} | {} | {} | {} | {} | {:.1} s |",
            l.rate,
            l.acked,
            l.lost,
            l.refused,
            l.unacked_present,
            l.failover.as_secs_f64()
        );
    }
}

/// A queue, a Worker pool, a Beat pool and the operator all on the `redis+sentinel://` URL;
/// a producer pushes 60 tasks of 4 s (one `funcscale-worker enqueue` each, a failed push
/// re-sent), the master is SIGKILLed once a third of them were pushed and the pool grew from 1
/// to its 4 pods with tasks waiting: a replica is promoted, every acknowledged task runs at
/// least once (its side effect is a line in a file, outside Redis), the beat's schedule fires
/// after the failover, the operator keeps reading the queue (its status moves on) and the pool
/// keeps its 4 pods from the kill until `MetricsAvailable` is True again; workers and beat
/// reconnect (the same processes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_failover_while_tasks_flow_loses_no_task() {
    failover_scenario("sentinel", false).await;
}

/// The same with a password on the data nodes and an ACL user on the sentinels, each from a
/// Secret (`passwordSecretRef`, `sentinelUsernameSecretRef`, `sentinelPasswordSecretRef`);
/// the operator, the producer and the check connections get them from the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_failover_with_passwords_from_secrets() {
    failover_scenario("sentinel-auth", true).await;
}

async fn failover_scenario(name: &str, auth: bool) {
    if funcscale_e2e::scenario::real_cluster() {
        eprintln!("skipped against a real cluster: pods cannot reach this machine's Sentinel set");
        return;
    }
    const N: usize = 60;
    let mut set = SentinelSet::start(SentinelOptions {
        data_auth: auth.then(|| Auth::password("d@ta pw#1")),
        sentinel_auth: auth.then(|| Auth::user("watcher", "s3nt:nel/pw")),
        ..Default::default()
    })
    .await
    .unwrap();
    let url = set.url();
    let env = set.env();
    let mut opts = Options::new(name);
    opts.redis_url = url.clone();
    opts.operator_env = env.clone();
    let s = Scenario::start(opts).await.unwrap();
    let mut redis = json!({"url": url});
    if auth {
        let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(s.client.clone(), &s.ns);
        let data: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_lowercase().replace('_', "-"), format!("{v}\n")))
            .collect();
        secrets
            .create(
                &Default::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "redis-auth"}, "stringData": data
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        let key = |k: &str| json!({"name": "redis-auth", "key": k});
        redis["passwordSecretRef"] = key("funcscale-redis-password");
        redis["sentinelUsernameSecretRef"] = key("funcscale-redis-sentinel-username");
        redis["sentinelPasswordSecretRef"] = key("funcscale-redis-sentinel-password");
    }

    let mut f = Failover::start(&s, redis, set.dir()).await;

    // the producer: one process per task, a failed push re-sent until it is acknowledged
    let producer = spawn_producer(&s, &url, env, N, Duration::from_millis(150));

    // a third of the way, the pool grown above its minimum to its most pods with tasks
    // waiting: the master dies
    producer
        .wait_acknowledged(N / 3, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    f.wait_loaded().await;
    // the writes acknowledged so far are on both replicas (a write of ours, then WAIT 2): what
    // asynchronous replication loses in the last moment is measured apart
    // (`failover_write_loss_by_setting`)
    let replicas = set
        .wait_replicated(2, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(replicas, 2);
    f.at_kill().await;
    let old = set.kill_master().await.unwrap();
    let new = set
        .wait_for_new_master(old, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", f.logs()));
    f.promoted(old, new, &producer);

    // every acknowledged task runs, the beat fires, the operator reads the queue from the new
    // master and held the pool's size, the same processes served throughout
    f.check(producer, N, "sentinel failover").await;
    s.shutdown().await;
}
