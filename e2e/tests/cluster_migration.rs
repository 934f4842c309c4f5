//! The write scripts while their queue's hash slot migrates (docs/design/redis-cluster-plan.md
//! §2.5, step 9), on a real Redis Cluster through redis-rs' cluster client. A script's record
//! keys are not declared (built from ARGV); when the slot is held half-migrated and such a key
//! already moved (or is new), the script must answer `TRYAGAIN` *before* its first write —
//! without the probes (`fs_local` in `lua/record_lib.lua`) Redis fails it with "non local key"
//! after the earlier writes ran. Every key of the slot, on both nodes, is compared before and
//! after each refused call. Once the migration ends the same calls succeed. Scripts run strict
//! (`#!lua`, the crate's dev-dependency enables protocol feature `strict-scripts`).

use std::collections::BTreeMap;
use std::time::Duration;

use funcscale_e2e::redis_cluster::{Migration, RedisCluster, strict};
use funcscale_protocol::keys::slot;
use funcscale_protocol::{Envelope, Keys, TaskStatus, scripts};
use redis::AsyncCommands;
use redis::cluster_async::ClusterConnection;

/// A cluster client that re-sends a `TRYAGAIN` once (after a short wait) and then reports it.
async fn cluster_client(c: &RedisCluster) -> ClusterConnection {
    c.cluster_connection_with(|b| b.retries(1)).await.unwrap()
}

/// Every key of the migrating slot on its source and its target, with its `DUMP`.
async fn slot_state(c: &RedisCluster, m: &Migration) -> BTreeMap<String, Vec<u8>> {
    let mut state = BTreeMap::new();
    for port in [m.from, m.to] {
        let mut con = c.connection(port).await.unwrap();
        let ks: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(m.slot)
            .arg(10_000)
            .query_async(&mut con)
            .await
            .unwrap();
        for k in ks {
            // the target answers for an importing slot after ASKING
            let (d,): (Vec<u8>,) = redis::pipe()
                .cmd("ASKING")
                .ignore()
                .cmd("DUMP")
                .arg(&k)
                .query_async(&mut con)
                .await
                .unwrap();
            state.insert(format!("{port} {k}"), d);
        }
    }
    state
}

/// `r` is the `TRYAGAIN` the cluster client gave up on, and the slot did not change.
async fn refused<T: std::fmt::Debug>(
    c: &RedisCluster,
    m: &Migration,
    before: &BTreeMap<String, Vec<u8>>,
    what: &str,
    r: redis::RedisResult<T>,
) {
    let after = slot_state(c, m).await;
    let changed: Vec<&String> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, _)| k)
        .chain(before.keys().filter(|k| !after.contains_key(*k)))
        .collect();
    assert!(changed.is_empty(), "{what} wrote {changed:?} ({r:?})");
    let e = r.expect_err(what);
    assert_eq!(e.code(), Some("TRYAGAIN"), "{what}: {e}");
}

/// ARGV of finish.lua (ack): task, mode, new text, due, prefix, queue, id, func, now, records
/// on, attempt, slot, duration, started, payload, error, start recorded, earlier error.
fn finish_inv<'a>(
    finish: &'a redis::Script,
    keys: &Keys,
    q: &str,
    inflight: &str,
    raw: &str,
    e: &Envelope,
    slot_id: &str,
) -> redis::ScriptInvocation<'a> {
    let mut inv = finish.key(inflight);
    inv.key(keys.stats(q))
        .key(keys.stats(q))
        .arg(raw)
        .arg("ack")
        .arg("")
        .arg(0)
        .arg(keys.prefix())
        .arg(q)
        .arg(&e.id)
        .arg(&e.func)
        .arg(1_300_000u64)
        .arg("1")
        .arg(e.attempt)
        .arg(slot_id)
        .arg(5)
        .arg(1_299_995u64)
        .arg("null")
        .arg("")
        .arg("1")
        .arg("0");
    inv
}

#[tokio::test]
async fn write_scripts_in_a_half_migrated_slot_answer_tryagain_and_write_nothing() {
    let mut c = RedisCluster::start().await.unwrap();
    let masters = c.master_ports().await.unwrap();
    let ns = "mg";
    let keys = Keys::new("mg9").in_namespace(Some(ns.into()));
    let q = c.queue_on(ns, masters[0]).await.unwrap();
    let mut con = cluster_client(&c).await;
    let enqueue = strict(scripts::ENQUEUE);
    let fetch = redis::Script::new(scripts::FETCH);
    let claim = redis::Script::new(scripts::CLAIM);
    let started = redis::Script::new(scripts::STARTED);
    let finish = redis::Script::new(scripts::FINISH);
    let requeue = redis::Script::new(scripts::REQUEUE);
    let (s1, s2, s3) = ("w-1-ab.0", "w-1-ab.1", "w-1-ab.2");
    let (in1, in2, in3) = (
        keys.inflight_q(&q, s1),
        keys.inflight_q(&q, s2),
        keys.inflight_q(&q, s3),
    );
    let running = keys.running(&q);

    let enqueue_inv = |ids: &[&str], now: u64| {
        let mut inv = enqueue.key(keys.queue(&q));
        inv.key(keys.stats(&q)).arg(keys.prefix()).arg(&q).arg(now);
        for id in ids {
            let e = Envelope::new(*id, "noop", &q, now);
            inv.arg(e.to_json()).arg(&e.id).arg(&e.func).arg("");
        }
        inv
    };
    // a, b, c, d queued; a in slot 1's list (started), b in slot 2's, c moved into slot 3's
    // (a blocking move, not claimed yet); d stays queued
    let n: u64 = enqueue_inv(&["a", "b", "c", "d", "x"], 1_000_000)
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert_eq!(n, 5);
    // x is also a dead letter (for requeue_dead); the beat fired tick 100 (its last-fired hash
    // exists, so its next call runs on the slot's source)
    let dead_x = Envelope::new("x", "noop", &q, 1_000_000).to_json();
    let _: () = con.lpush(keys.dead(&q), &dead_x).await.unwrap();
    let beat_fire = redis::Script::new(scripts::BEAT_FIRE);
    let fire_inv = |tick: i64, now: u64| {
        let e = Envelope::new(format!("bt{tick}"), "noop", &q, now);
        let mut inv = beat_fire.key(keys.beat_last(&q));
        inv.key(keys.queue(&q))
            .key(keys.stats(&q))
            .arg(1)
            .arg(keys.prefix())
            .arg(&q)
            .arg(now)
            .arg("file:t")
            .arg(tick)
            .arg(e.to_json())
            .arg(&e.id)
            .arg(&e.func);
        inv
    };
    let n: i64 = fire_inv(100, 900_000).invoke_async(&mut con).await.unwrap();
    assert_eq!(n, 1);
    // f runs in slot 4 (its record written by started alone)
    let s4 = "w-1-ab.3";
    let in4 = keys.inflight_q(&q, s4);
    let f = Envelope::new("f", "noop", &q, 1_000_000);
    let _: () = con.lpush(&in4, f.to_json()).await.unwrap();
    let n: i64 = started
        .key(&in4)
        .arg(keys.prefix())
        .arg(f.to_json())
        .arg(s4)
        .arg(1_299_995u64)
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let mut raws = BTreeMap::new();
    for (list, now) in [(&in1, 1_100_000u64), (&in2, 1_100_001)] {
        let (raw, _): (String, usize) = fetch
            .key(keys.queue(&q))
            .key(list)
            .key(&running)
            .arg(now)
            .invoke_async(&mut con)
            .await
            .unwrap();
        raws.insert(Envelope::from_json(&raw).unwrap().id, raw);
    }
    let raw_c: String = con
        .lmove(
            keys.queue(&q),
            &in3,
            redis::Direction::Right,
            redis::Direction::Left,
        )
        .await
        .unwrap();
    raws.insert(Envelope::from_json(&raw_c).unwrap().id, raw_c);
    assert_eq!(raws.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    let n: i64 = started
        .key(&in1)
        .arg(keys.prefix())
        .arg(&raws["a"])
        .arg(s1)
        .arg(1_299_995u64)
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert_eq!(n, 1);

    // the slot held mid-migration, nothing moved yet: then the records of a, b, c alone move
    let to = masters[1];
    let mut m = c.migrate_slot_partly(slot(&q), to, 0).await.unwrap();
    c.migrate_keys(
        &mut m,
        &[
            keys.task(&q, "a"),
            keys.task(&q, "b"),
            keys.task(&q, "c"),
            keys.task(&q, "x"),
        ],
    )
    .await
    .unwrap();
    let before = slot_state(&c, &m).await;
    assert!(before.contains_key(&format!("{to} {}", keys.task(&q, "a"))));
    assert!(before.contains_key(&format!("{} {}", m.from, keys.queue(&q))));

    // finish of a: its in-flight list (declared) is here, its record moved
    let a = Envelope::from_json(&raws["a"]).unwrap();
    let r = finish_inv(&finish, &keys, &q, &in1, &raws["a"], &a, s1)
        .invoke_async::<i64>(&mut con)
        .await;
    refused(&c, &m, &before, "finish", r).await;

    // requeue of b: its list, the queue and the running set are here, its record moved
    let requeue_inv = || {
        let mut inv = requeue.key(&in2);
        inv.key(keys.queue(&q))
            .key(&running)
            .arg(&raws["b"])
            .arg(keys.prefix())
            .arg(1_400_000u64)
            .arg("1")
            .arg(&q)
            .arg("0");
        inv
    };
    let r = requeue_inv().invoke_async::<i64>(&mut con).await;
    refused(&c, &m, &before, "requeue", r).await;

    // started of c: its list is here, its record moved
    let started_inv = || {
        let mut inv = started.key(&in3);
        inv.arg(keys.prefix())
            .arg(&raws["c"])
            .arg(s3)
            .arg(1_500_000u64);
        inv
    };
    let r = started_inv().invoke_async::<i64>(&mut con).await;
    refused(&c, &m, &before, "started", r).await;

    // enqueue of e: the queue and stats are here, e's record would be a new key
    let r = enqueue_inv(&["e"], 1_600_000)
        .invoke_async::<u64>(&mut con)
        .await;
    refused(&c, &m, &before, "enqueue", r).await;

    // requeue_dead of x: the dead list, the queue and stats are here, x's record moved
    let requeue_dead = redis::Script::new(scripts::REQUEUE_DEAD);
    let requeue_dead_inv = || {
        let mut inv = requeue_dead.key(keys.dead(&q));
        inv.key(keys.queue(&q))
            .key(keys.stats(&q))
            .arg(keys.prefix())
            .arg(&q)
            .arg(1_450_000u64)
            .arg(&dead_x)
            .arg(Envelope::new("x", "noop", &q, 1_450_000).to_json())
            .arg("x")
            .arg("noop");
        inv
    };
    let r = requeue_dead_inv().invoke_async::<i64>(&mut con).await;
    refused(&c, &m, &before, "requeue_dead", r).await;

    // the beat fires tick 101: its hash, the queue and stats are here, the record is new
    let r = fire_inv(101, 1_460_000).invoke_async::<i64>(&mut con).await;
    refused(&c, &m, &before, "beat_fire", r).await;

    // claim of c: every key declared; the running set moved, the list did not: Redis itself
    // answers TRYAGAIN before the script runs
    c.migrate_keys(&mut m, std::slice::from_ref(&running))
        .await
        .unwrap();
    let before = slot_state(&c, &m).await;
    let claim_inv = || {
        let mut inv = claim.key(&in3);
        inv.key(&running).arg(&raws["c"]).arg(1_800_000u64);
        inv
    };
    let r = claim_inv().invoke_async::<i64>(&mut con).await;
    refused(&c, &m, &before, "claim", r).await;

    // finish of f once its declared keys (its list, stats) have all moved: the client is sent
    // `ASK` and runs it on the target (`ASKING`), where f's record, still on the source, looks
    // absent: the probe (one EXISTS of several keys: `TRYAGAIN` there when one is missing)
    // refuses it there too
    c.migrate_keys(&mut m, &[in4.clone(), keys.stats(&q)])
        .await
        .unwrap();
    let before = slot_state(&c, &m).await;
    let r = finish_inv(&finish, &keys, &q, &in4, &f.to_json(), &f, s4)
        .invoke_async::<i64>(&mut con)
        .await;
    refused(&c, &m, &before, "finish sent by ASK", r).await;

    // the migration ends: the same calls go through, once
    c.finish_migration(m).await.unwrap();
    assert_eq!(c.master_of_slot(slot(&q)).await.unwrap(), to);
    let mut con = cluster_client(&c).await;
    let n: i64 = claim_inv().invoke_async(&mut con).await.unwrap();
    assert_eq!(n, 1, "claim");
    let n: i64 = started_inv().invoke_async(&mut con).await.unwrap();
    assert_eq!(n, 1, "started");
    let n: i64 = finish_inv(&finish, &keys, &q, &in1, &raws["a"], &a, s1)
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert_eq!(n, 2, "finish (the record said started)");
    let n: i64 = finish_inv(&finish, &keys, &q, &in4, &f.to_json(), &f, s4)
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert_eq!(n, 2, "finish of f");
    for want in [1, 0] {
        let n: i64 = requeue_inv().invoke_async(&mut con).await.unwrap();
        assert_eq!(n, want, "requeue (re-sent: nothing)");
    }
    for want in [1, 0] {
        let n: i64 = requeue_dead_inv().invoke_async(&mut con).await.unwrap();
        assert_eq!(n, want, "requeue_dead (re-sent: nothing)");
        let n: i64 = fire_inv(101, 1_460_000)
            .invoke_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, want, "beat_fire (re-sent: nothing)");
    }
    for _ in 0..2 {
        // re-sent (the reply lost): e is pushed once
        let n: u64 = enqueue_inv(&["e"], 1_600_000)
            .invoke_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, 7, "enqueue: d, x, bt100, b back, x again, bt101, e");
    }
    let status = |id: &'static str| {
        let k = keys.task(&q, id);
        let mut con = con.clone();
        async move {
            let s: Option<String> = con.hget(k, "status").await.unwrap();
            s
        }
    };
    for (id, want) in [
        ("a", "succeeded"),
        ("f", "succeeded"),
        ("b", "queued"),
        ("c", "started"),
        ("d", "queued"),
        ("e", "queued"),
        ("x", "queued"),
        ("bt101", "queued"),
    ] {
        assert_eq!(status(id).await.as_deref(), Some(want), "{id}");
    }
    let members: Vec<String> = con.zrange(&running, 0, -1).await.unwrap();
    assert_eq!(
        members,
        std::slice::from_ref(&in3),
        "only slot 3 runs a task of the queue"
    );
    let queued: Vec<String> = con
        .zrange(keys.tasks_status(&q, TaskStatus::Queued), 0, -1)
        .await
        .unwrap();
    assert_eq!(
        queued,
        ["bt100", "d", "b", "x", "bt101", "e"],
        "by last update"
    );
}

/// trim.lua probes its victims before deleting any: with a victim's record moved it deletes
/// nothing and answers TRYAGAIN; after the migration it trims them.
#[tokio::test]
async fn trim_in_a_half_migrated_slot_deletes_nothing() {
    let mut c = RedisCluster::start().await.unwrap();
    let masters = c.master_ports().await.unwrap();
    let ns = "mt";
    let keys = Keys::new("mt9").in_namespace(Some(ns.into()));
    let q = c.queue_on(ns, masters[2]).await.unwrap();
    let mut con = cluster_client(&c).await;
    let enqueue = redis::Script::new(scripts::ENQUEUE);
    let trim = redis::Script::new(scripts::TRIM);
    let mut inv = enqueue.key(keys.queue(&q));
    inv.key(keys.stats(&q))
        .arg(keys.prefix())
        .arg(&q)
        .arg(1_000_000u64);
    for id in ["a", "b", "c"] {
        let e = Envelope::new(id, "noop", &q, 1_000_000);
        inv.arg(e.to_json()).arg(&e.id).arg(&e.func).arg("");
    }
    let n: u64 = inv.invoke_async(&mut con).await.unwrap();
    assert_eq!(n, 3);
    // keep one record: the two others are over the count
    let _: () = con
        .hset(keys.queue_config(&q), "record_max_count", 1)
        .await
        .unwrap();
    // KEYS[1]: the time index of earlier versions, which trim deletes (present here, so the
    // call runs on the slot's source node)
    let old_index = format!("{}:old", keys.tasks_ids(&q));
    let _: () = con.zadd(&old_index, "x", 1).await.unwrap();
    let trim_inv = || {
        let mut inv = trim.key(&old_index);
        inv.arg(keys.prefix()).arg(&q).arg(1_000_001u64).arg(100);
        inv
    };
    let mut m = c
        .migrate_slot_partly(slot(&q), masters[0], 0)
        .await
        .unwrap();
    c.migrate_keys(&mut m, &[keys.task(&q, "a"), keys.task(&q, "b")])
        .await
        .unwrap();
    let before = slot_state(&c, &m).await;
    let r = trim_inv().invoke_async::<i64>(&mut con).await;
    refused(&c, &m, &before, "trim", r).await;
    c.finish_migration(m).await.unwrap();
    let mut con = cluster_client(&c).await;
    let n: i64 = trim_inv().invoke_async(&mut con).await.unwrap();
    assert_eq!(n, 2);
    let ids: Vec<String> = con.zrange(keys.tasks_ids(&q), 0, -1).await.unwrap();
    assert_eq!(ids.len(), 1);
    assert!(!con.exists::<_, bool>(&old_index).await.unwrap());
}

/// A task with no record yet (enqueued without one, or by an earlier version) is recorded by
/// started, finish and requeue on a cluster: the record an earlier version would have written
/// under the id alone (`Keys::task_legacy`, no hash tag, another slot) is never looked at
/// there (strict mode would fail the script on it).
#[tokio::test]
async fn records_of_earlier_versions_are_not_looked_at_on_a_cluster() {
    let mut c = RedisCluster::start().await.unwrap();
    let masters = c.master_ports().await.unwrap();
    let ns = "ml";
    let keys = Keys::new("ml9").in_namespace(Some(ns.into()));
    let mut con = cluster_client(&c).await;
    let started = redis::Script::new(scripts::STARTED);
    let finish = redis::Script::new(scripts::FINISH);
    let requeue = redis::Script::new(scripts::REQUEUE);
    for &master in &masters {
        let q = c.queue_on(ns, master).await.unwrap();
        let slot_id = "w-1-ab.0";
        let inflight = keys.inflight_q(&q, slot_id);
        let (a, b) = (
            Envelope::new("a", "noop", &q, 1_000),
            Envelope::new("b", "noop", &q, 1_000),
        );
        assert_ne!(slot(&keys.task_legacy("a")), slot(&q));
        let _: () = con.lpush(&inflight, a.to_json()).await.unwrap();
        let n: i64 = started
            .key(&inflight)
            .arg(keys.prefix())
            .arg(a.to_json())
            .arg(slot_id)
            .arg(1_299_995u64)
            .invoke_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, 1, "{q}");
        let n: i64 = finish_inv(&finish, &keys, &q, &inflight, &a.to_json(), &a, slot_id)
            .invoke_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, 2, "{q}");
        let _: () = con.lpush(&inflight, b.to_json()).await.unwrap();
        let n: i64 = requeue
            .key(&inflight)
            .key(keys.queue(&q))
            .key(keys.running(&q))
            .arg(b.to_json())
            .arg(keys.prefix())
            .arg(1_400_000u64)
            .arg("1")
            .arg(&q)
            .arg("0")
            .invoke_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, 1, "{q}");
        for (id, want) in [("a", "succeeded"), ("b", "queued")] {
            let s: Option<String> = con.hget(keys.task(&q, id), "status").await.unwrap();
            assert_eq!(s.as_deref(), Some(want), "{q} {id}");
        }
    }
}

/// funcscale's own producer path (`funcscale_worker::protocol::enqueue`: a pipeline of
/// `SCRIPT LOAD` and the enqueue script) over a cluster `Conn` while the queue's slot is held
/// half-migrated: the script answers `TRYAGAIN` (new record keys), the cluster client waits
/// and re-sends, nothing is written meanwhile; once the migration ends every task lands once.
#[tokio::test]
async fn an_enqueue_during_a_migration_waits_and_lands_once() {
    use funcscale_connect::{Config, Conn};
    use funcscale_protocol::connection::{Credentials, target};
    let mut c = RedisCluster::start().await.unwrap();
    let masters = c.master_ports().await.unwrap();
    let ns = "me";
    let keys = Keys::new("me9").in_namespace(Some(ns.into()));
    let q = c.queue_on(ns, masters[1]).await.unwrap();
    let t = target(&c.url(), Credentials::default()).unwrap();
    let mut conn = Conn::connect(&t, &Config::default()).await.unwrap();
    assert!(conn.is_cluster());
    let first = [Envelope::new("a", "noop", &q, 1)];
    let n = funcscale_worker::protocol::enqueue(&mut conn, &keys, &q, &first)
        .await
        .unwrap();
    assert_eq!(n, 1);

    let m = c
        .migrate_slot_partly(slot(&q), masters[2], 0)
        .await
        .unwrap();
    let before = slot_state(&c, &m).await;
    let envs: Vec<Envelope> = (0..50)
        .map(|i| Envelope::new(format!("t{i}"), "noop", &q, 1))
        .collect();
    let task = {
        let (mut conn, keys, q) = (conn.clone(), keys.clone(), q.clone());
        tokio::spawn(async move {
            funcscale_worker::protocol::enqueue(&mut conn, &keys, &q, &envs).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !task.is_finished(),
        "the enqueue waits while the slot migrates"
    );
    assert_eq!(
        slot_state(&c, &m).await,
        before,
        "nothing written meanwhile"
    );
    c.finish_migration(m).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the enqueue ends after the migration")
        .unwrap()
        .unwrap();
    assert_eq!(n, 51);
    let listed: Vec<String> = conn.lrange(keys.queue(&q), 0, -1).await.unwrap();
    let mut ids: Vec<String> = listed
        .iter()
        .map(|raw| Envelope::from_json(raw).unwrap().id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!((listed.len(), ids.len()), (51, 51), "each task once");
    let enqueued: u64 = conn.hget(keys.stats(&q), "enqueued").await.unwrap();
    assert_eq!(enqueued, 51);
    let records: u64 = conn.zcard(keys.tasks_ids(&q)).await.unwrap();
    assert_eq!(records, 51);
}
