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
//!   the beat fires after the failover, the operator keeps reading and sizing.
//!
//! Needs `cargo build --workspace --bins` first and `redis-server`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use funcscale_e2e::eventually;
use funcscale_e2e::redis_topology::{Auth, SentinelOptions, SentinelSet};
use funcscale_e2e::scenario::{
    Options, ReplicaHistory, Scenario, log_tails, sample_metrics_available, side_effects,
    spawn_producer,
};
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

/// The tail of the scenario's logs and the Sentinel set's, to see why.
fn logs(s: &Scenario, set: &SentinelSet) -> String {
    log_tails(s, set.dir())
}

/// The queue's `status.lastPollTime`, parsed.
async fn last_poll(s: &Scenario, queue: &str) -> Option<k8s_openapi::jiff::Timestamp> {
    let st = s.queues().get(queue).await.ok()?.status?;
    st.last_poll_time?.parse().ok()
}

/// A queue, a Worker pool, a Beat pool and the operator all on the `redis+sentinel://` URL;
/// a producer pushes 60 tasks (one `funcscale-worker enqueue` each, a failed push re-sent),
/// the master is SIGKILLed after a third of them: a replica is promoted, every acknowledged
/// task runs at least once (its side effect is a line in a file, outside Redis), the beat's
/// schedule fires after the failover, the operator keeps reading the queue (its status moves
/// on) and the pool's size is held through the switch; workers and beat reconnect (the same
/// processes).
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

    // the side effects: a file outside /tmp (a pod's /tmp is its own emptyDir; the checkout,
    // and so CARGO_TARGET_TMPDIR, may itself be under /tmp, as CI's fresh clone is)
    let side = tempfile::tempdir_in("/var/tmp").unwrap();
    let done = side.path().join("done");
    let handler = format!(
        "exec:echo \"$FUNCSCALE_FUNC $FUNCSCALE_TASK_ID\" >> {}",
        done.display()
    );
    s.apply_queue(
        "jobs",
        json!({"taskTimeMs": 100, "maxRetries": 5, "redis": redis,
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
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s, &set)));
    let history = ReplicaHistory::start(s.deployments(), "w");
    let worker_pids = s.pod_ids("w").await;
    let beat_pids = s.pod_ids("beat").await;

    // the producer: one process per task, a failed push re-sent until it is acknowledged
    let (producer, produced, failed_pushes, stop) =
        spawn_producer(&s, &url, env.clone(), N, Duration::from_millis(150));

    // a third of the way: the master dies
    eventually(
        Duration::from_secs(60),
        "a third of the tasks pushed",
        || async { (produced.lock().unwrap().len() >= N / 3).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s, &set)));
    // the writes acknowledged so far are on both replicas (a write of ours, then WAIT 2): what
    // asynchronous replication loses in the last moment is measured apart
    // (`failover_write_loss_by_setting`)
    let replicas = set
        .wait_replicated(2, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(replicas, 2);
    let size_at_kill = s.replicas("w").await.unwrap().unwrap().0;
    // what the pool says about its metrics through the switch
    let (sampler, seen_conditions) = sample_metrics_available(&s, "w");
    let poll_at_kill = last_poll(&s, "jobs").await;
    let killed = Instant::now();
    let old = set.kill_master().await.unwrap();
    let new = set
        .wait_for_new_master(old, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s, &set)));
    let promoted_after = killed.elapsed();
    let ticks_at_promotion = side_effects(&done).0.get("tick").map_or(0, |t| t.len());
    eprintln!(
        "master 127.0.0.1:{old} killed; 127.0.0.1:{new} promoted after {promoted_after:?}; \
         {} tasks pushed by then",
        produced.lock().unwrap().len()
    );

    // every acknowledged task runs (at least once)
    tokio::time::timeout(Duration::from_secs(120), producer)
        .await
        .unwrap_or_else(|_| {
            stop.store(true, Ordering::SeqCst);
            panic!("the producer did not finish\n{}", logs(&s, &set))
        })
        .unwrap();
    let produced: BTreeSet<String> = produced.lock().unwrap().iter().cloned().collect();
    assert_eq!(produced.len(), N);
    let ran = eventually(
        Duration::from_secs(90),
        "every acknowledged task ran",
        || async {
            let (by_func, _) = side_effects(&done);
            let ran = by_func.get("job").cloned().unwrap_or_default();
            produced.is_subset(&ran).then_some(ran)
        },
    )
    .await
    .unwrap_or_else(|e| {
        let ran = side_effects(&done).0.remove("job").unwrap_or_default();
        let missing: Vec<_> = produced.difference(&ran).collect();
        panic!("{e}: missing {missing:?}\n{}", logs(&s, &set))
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
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s, &set)));

    // the operator reads the queue from the new master: its status moves on and says Ready
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
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&s, &set)));
    sampler.abort();
    // the switch showed in the pool's condition (the sentinels take over a second to act: the
    // operator's polls fail meanwhile), and it holds the size while saying so
    let seen = seen_conditions.lock().unwrap().clone();
    assert!(
        seen.contains(&("False".into(), "RedisUnavailable".into())),
        "MetricsAvailable through the switch: {seen:?}"
    );
    assert!(
        seen.iter()
            .all(|(st, reason)| st == "True" || reason == "RedisUnavailable"),
        "MetricsAvailable through the switch: {seen:?}"
    );
    // the pool's size was held through the switch (never below its size at the kill)
    let sizes = history.values();
    assert!(
        sizes.iter().all(|r| *r >= size_at_kill.min(2)),
        "the pool shrank during the failover: {sizes:?}"
    );
    // the workers reconnected rather than crashed: the same processes served throughout
    let pids_after = s.pod_ids("w").await;
    let beat_after = s.pod_ids("beat").await;
    let (_, executions) = side_effects(&done);
    eprintln!(
        "sentinel failover: {N} tasks acknowledged, {} failed pushes re-sent, {executions} \
         executions in all, pool sizes {sizes:?}, MetricsAvailable through the switch \
         {:?}, worker processes before {worker_pids:?} after {pids_after:?}",
        failed_pushes.load(Ordering::SeqCst),
        seen_conditions.lock().unwrap()
    );
    assert_eq!(
        worker_pids,
        pids_after,
        "worker processes were replaced: they exited instead of reconnecting\n{}",
        logs(&s, &set)
    );
    assert_eq!(
        beat_pids,
        beat_after,
        "the beat process was replaced: it exited instead of reconnecting\n{}",
        logs(&s, &set)
    );
    s.shutdown().await;
}
