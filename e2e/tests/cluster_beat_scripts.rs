//! The beat's and the schedules registry's Redis calls on a real Redis Cluster (three masters,
//! [`funcscale_e2e::redis_cluster::RedisCluster`]) through redis-rs' cluster client, for
//! queues of one namespace whose slots are on three different masters: the lease scripts
//! (namespace slot), `beat_fire` (one queue's slot, fenced there), the registry's `SADD` and
//! add/remove scripts — no `CROSSSLOT`, and the effects the beat relies on. `beat_fire` runs
//! in Redis 7's strict mode (`#!lua`: a key of another slot is an error even when that slot
//! is on the same node), since its record writes touch keys it does not declare.

use std::time::Duration;

use funcscale_e2e::redis_cluster::{RedisCluster, strict};
use funcscale_worker::protocol::{self, Envelope, Keys, ScheduleEntry, scripts};
use redis::cluster_async::ClusterConnection;
use serde_json::json;

async fn int(con: &mut ClusterConnection, cmd: &[&str]) -> i64 {
    let mut c = redis::cmd(cmd[0]);
    for a in &cmd[1..] {
        c.arg(*a);
    }
    let v: Option<i64> = c.query_async(con).await.unwrap();
    v.unwrap_or(0)
}

/// One pipeline of `beat_fire` for `queue` as the beat sends it (SCRIPT LOAD, then the call).
async fn fire(
    con: &mut ClusterConnection,
    script: &redis::Script,
    keys: &Keys,
    token: u64,
    queue: &str,
    ticks: &[i64],
) -> redis::RedisResult<Vec<i64>> {
    let now = 1_900_000_000_000;
    let envs: Vec<Envelope> = ticks
        .iter()
        .map(|t| Envelope::new(format!("{queue}/file:t@{t}"), "noop", queue, now))
        .collect();
    let mut pipe = redis::pipe();
    pipe.load_script(script).ignore();
    pipe.invoke_script(&protocol::beat_fire_invocation(
        script,
        keys,
        token,
        queue,
        now,
        ticks.iter().zip(&envs).map(|(t, e)| ("file:t", *t, e)),
    ));
    pipe.query_async(con).await
}

#[tokio::test]
async fn beat_and_schedules_scripts_run_on_a_cluster_one_slot_each() {
    let mut c = RedisCluster::start().await.unwrap();
    let ns = "a";
    let keys = Keys::new("cb8");
    let queues = c.queue_on_every_master(ns).await.unwrap();
    assert_eq!(queues.len(), 3);
    let mut con = c
        .cluster_connection_with(|b| b.response_timeout(Duration::from_secs(10)))
        .await
        .unwrap();

    // the lease: acquire, renew, release (the namespace's slot)
    let lease_acquire = redis::Script::new(scripts::LEASE_ACQUIRE);
    let acquire = |holder: &str| {
        let mut inv = lease_acquire.key(keys.beat_lease(Some(ns)));
        inv.key(keys.beat_fence(Some(ns))).arg(holder).arg(60_000);
        inv
    };
    let token: Option<u64> = acquire("a").invoke_async(&mut con).await.unwrap();
    assert_eq!(token, Some(1));
    let renewed: i64 = redis::Script::new(scripts::LEASE_RENEW)
        .key(keys.beat_lease(Some(ns)))
        .arg("a 1")
        .arg(60_000)
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert_eq!(renewed, 1);

    // beat_fire per queue, strict: every key it touches is in the queue's slot
    let beat_fire = strict(scripts::BEAT_FIRE);
    for q in &queues {
        assert_eq!(
            fire(&mut con, &beat_fire, &keys, 1, q, &[100, 101])
                .await
                .unwrap(),
            vec![2],
            "{q}"
        );
        // a tick at or before the last fired one is skipped
        assert_eq!(
            fire(&mut con, &beat_fire, &keys, 1, q, &[101])
                .await
                .unwrap(),
            vec![0]
        );
        assert_eq!(int(&mut con, &["LLEN", &keys.queue(q)]).await, 2);
        assert_eq!(
            int(&mut con, &["HGET", &keys.stats(q), "enqueued"]).await,
            2
        );
        assert_eq!(
            int(&mut con, &["HGET", &keys.beat_last(q), "file:t"]).await,
            101
        );
        assert_eq!(
            int(&mut con, &["HGET", &keys.beat_last(q), "_fence"]).await,
            1
        );
        let record = keys.task(q, &format!("{q}/file:t@101"));
        assert_eq!(int(&mut con, &["EXISTS", &record]).await, 1, "{record}");
    }

    // a new holder (token 2) fires the first queue: the old holder is fenced there only
    let released: i64 = redis::Script::new(scripts::LEASE_RELEASE)
        .key(keys.beat_lease(Some(ns)))
        .arg("a 1")
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert_eq!(released, 1);
    let token: Option<u64> = acquire("b").invoke_async(&mut con).await.unwrap();
    assert_eq!(token, Some(2));
    assert_eq!(
        fire(&mut con, &beat_fire, &keys, 2, &queues[0], &[102])
            .await
            .unwrap(),
        vec![1]
    );
    assert_eq!(
        fire(&mut con, &beat_fire, &keys, 1, &queues[0], &[103])
            .await
            .unwrap(),
        vec![-2]
    );
    assert_eq!(int(&mut con, &["LLEN", &keys.queue(&queues[0])]).await, 3);
    assert_eq!(
        fire(&mut con, &beat_fire, &keys, 1, &queues[1], &[102])
            .await
            .unwrap(),
        vec![1]
    );

    // the registry: SADD (namespace slot), then the scripts (queue slot); removal keeps the member
    let entry = ScheduleEntry {
        cron: "* * * * *".into(),
        func: "noop".into(),
        args: json!([1]),
    };
    let set = keys.schedule_queues(Some(ns));
    for q in &queues {
        let entries = [
            ("m1".to_string(), entry.clone(), 1.0),
            ("m2".into(), entry.clone(), 1.0),
        ];
        assert_eq!(
            protocol::schedules_add(&mut con, &keys, q, &entries)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            int(&mut con, &["GET", &keys.schedules_per_period(q)]).await,
            2
        );
        assert_eq!(int(&mut con, &["SISMEMBER", &set, q]).await, 1);
        let listed = protocol::schedules_list(&mut con, &keys, q).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(
            protocol::schedules_remove(&mut con, &keys, q, &["m1".into(), "m2".into()])
                .await
                .unwrap(),
            2
        );
        assert_eq!(int(&mut con, &["HLEN", &keys.schedules(q)]).await, 0);
        assert_eq!(
            int(&mut con, &["GET", &keys.schedules_per_period(q)]).await,
            0
        );
        assert_eq!(int(&mut con, &["SISMEMBER", &set, q]).await, 1);
    }
}
