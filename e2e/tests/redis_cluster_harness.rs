//! The Redis Cluster harness ([`funcscale_e2e::redis_cluster::RedisCluster`]) on real
//! `redis-server` processes: it comes up with three masters and three replicas, keys written
//! through redis-rs' cluster client land on the master the harness names, a slot migration
//! (held half-way, then finished) moves keys to the new owner, a killed master is replaced by
//! its replica. And funcscale's own hash-slot function (`funcscale_protocol::keys::slot`)
//! against the server's `CLUSTER KEYSLOT`, for keys of every shape funcscale writes.

use std::time::Duration;

use funcscale_e2e::redis_cluster::RedisCluster;
use funcscale_protocol::keys::slot;
use funcscale_protocol::{Keys, TaskStatus};

async fn get(
    con: &mut impl redis::aio::ConnectionLike,
    key: &str,
) -> redis::RedisResult<Option<String>> {
    redis::cmd("GET").arg(key).query_async(con).await
}

/// `e` is a `kind` redirection (`MOVED` / `ASK`) to `127.0.0.1:<to>` for `slot`.
fn assert_redirect(e: &redis::RedisError, kind: redis::ServerErrorKind, to: u16, slot: u16) {
    assert_eq!(e.kind(), redis::ErrorKind::Server(kind), "{e}");
    let addr = format!("127.0.0.1:{to}");
    assert_eq!(e.redirect_node(), Some((addr.as_str(), slot)), "{e}");
}

#[tokio::test]
async fn comes_up_and_keys_land_on_the_master_of_their_slot() {
    let mut c = RedisCluster::start().await.unwrap();
    let nodes = c.nodes();
    assert_eq!(nodes.len(), 6);
    let masters = c.master_ports().await.unwrap();
    assert_eq!(masters.len(), 3, "{masters:?}");
    assert!(masters.iter().all(|m| nodes.contains(m)));
    assert_eq!(
        c.url(),
        format!(
            "redis+cluster://{}",
            nodes
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(",")
        )
    );
    // every node agrees on the master of a slot, whoever is asked
    for s in [0, 5000, 10000, 16383] {
        let m = c.master_of_slot(s).await.unwrap();
        for &n in &nodes {
            let owner = c
                .view(n)
                .await
                .unwrap()
                .into_iter()
                .find(|v| v.master && v.slots.iter().any(|&(a, b)| (a..=b).contains(&s)))
                .map(|v| v.port);
            assert_eq!(owner, Some(m), "node {n} on slot {s}");
        }
    }

    let mut con = c.cluster_connection().await.unwrap();
    let mut used = std::collections::BTreeSet::new();
    for i in 0..30 {
        let key = format!("cl1:land:{i}");
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(i)
            .query_async(&mut con)
            .await
            .unwrap();
        let master = c.master_of_slot(slot(&key)).await.unwrap();
        used.insert(master);
        // a plain connection to that master serves it; another master redirects
        let mut direct = c.connection(master).await.unwrap();
        assert_eq!(get(&mut direct, &key).await.unwrap(), Some(i.to_string()));
        let other = masters.iter().find(|m| **m != master).unwrap();
        let mut elsewhere = c.connection(*other).await.unwrap();
        let e = get(&mut elsewhere, &key).await.unwrap_err();
        assert_redirect(&e, redis::ServerErrorKind::Moved, master, slot(&key));
    }
    assert_eq!(used.len(), 3, "30 keys spread over the three masters");
}

/// Keys of every shape funcscale writes (every key method of `Keys`, with and without a
/// namespace, legacy bare queue ids, ids and function names holding braces).
fn funcscale_keys() -> Vec<String> {
    let mut keys = Vec::new();
    let ids = ["t1", "0190a1b2-c3d4", "{x}", "a}b{c", "{}", "é", ""];
    let funcs = ["send_mail", "{f}", "m.f:g"];
    for prefix in ["funcscale", "cl1", "a{b}"] {
        for ns in [None, Some("a"), Some("team-7"), Some("x")] {
            let k = Keys::new(prefix).in_namespace(ns.map(str::to_string));
            let queues: Vec<String> = match ns {
                Some(ns) => ["jobs", "mail", "q.8", "a}b"]
                    .iter()
                    .map(|n| Keys::queue_id(ns, n))
                    .collect(),
                None => vec!["jobs".into(), "q8".into()],
            };
            for q in &queues {
                keys.extend([
                    k.queue(q),
                    k.running(q),
                    k.delayed(q),
                    k.dead(q),
                    k.stats(q),
                    k.schedules(q),
                    k.schedules_per_period(q),
                    k.beat_last(q),
                    k.tasks(q),
                    k.tasks_ids(q),
                    k.queue_config(q),
                    k.counts(q, 29_000_000),
                    k.counts(q, 0),
                ]);
                keys.extend(ids.iter().map(|id| k.task(q, id)));
                keys.extend(TaskStatus::ALL.iter().map(|s| k.tasks_status(q, *s)));
                keys.extend(funcs.iter().map(|f| k.tasks_func(q, f)));
                keys.extend(["w-1-ab.0", "{w}"].iter().map(|w| k.inflight_q(q, w)));
            }
            keys.extend(ids.iter().map(|id| k.task_legacy(id)));
            for w in ["w-1-ab.0", "w-2-cd.4", "{w}"] {
                keys.extend([k.inflight(w), k.worker(w)]);
            }
            keys.extend([k.workers(), k.slots(), k.outbox(), k.outbox_dead()]);
            keys.extend([
                k.beat_lease(ns),
                k.beat_fence(ns),
                k.celery_beat_sent(ns),
                k.schedule_queues(ns),
                k.stop(ns.unwrap_or("default"), "pod-1"),
                k.stop(ns.unwrap_or("default"), "w-1-ab"),
            ]);
        }
    }
    keys
}

#[tokio::test]
async fn slot_agrees_with_cluster_keyslot_for_every_key_shape() {
    let mut c = RedisCluster::start().await.unwrap();
    let keys = funcscale_keys();
    assert!(keys.len() >= 1000, "{} keys", keys.len());
    let port = c.master_ports().await.unwrap()[0];
    let mut con = c.connection(port).await.unwrap();
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("CLUSTER").arg("KEYSLOT").arg(k);
    }
    let server: Vec<u16> = pipe.query_async(&mut con).await.unwrap();
    let mut distinct = std::collections::BTreeSet::new();
    for (k, s) in keys.iter().zip(&server) {
        assert_eq!(slot(k), *s, "slot({k:?})");
        distinct.insert(*s);
    }
    assert!(distinct.len() > 100, "{} distinct slots", distinct.len());
}

#[tokio::test]
async fn a_slot_migrated_with_its_keys_is_served_by_the_new_owner() {
    let mut c = RedisCluster::start().await.unwrap();
    let masters = c.master_ports().await.unwrap();
    let keys: Vec<String> = (0..5).map(|i| format!("cl1:mig:{{q}}:{i}")).collect();
    let s = slot(&keys[0]);
    let from = c.master_of_slot(s).await.unwrap();
    let to = *masters.iter().find(|m| **m != from).unwrap();
    let mut con = c.cluster_connection().await.unwrap();
    for (i, k) in keys.iter().enumerate() {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(i)
            .query_async(&mut con)
            .await
            .unwrap();
    }

    // held half-way: two keys on the target, three on the source
    let m = c.migrate_slot_partly(s, to, 2).await.unwrap();
    assert_eq!((m.from, m.to, m.moved), (from, to, 2));
    let count = |port: u16| async move {
        let mut con = c_connection(port).await;
        redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(s)
            .query_async::<usize>(&mut con)
            .await
            .unwrap()
    };
    assert_eq!(count(from).await, 3);
    assert_eq!(count(to).await, 2);
    // the source still owns the slot; a moved key is an ASK away
    assert_eq!(c.master_of_slot(s).await.unwrap(), from);
    let mut source = c.connection(from).await.unwrap();
    let moved: Vec<String> = {
        let mut target = c.connection(to).await.unwrap();
        redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(s)
            .arg(10)
            .query_async(&mut target)
            .await
            .unwrap()
    };
    let e = get(&mut source, &moved[0]).await.unwrap_err();
    assert_redirect(&e, redis::ServerErrorKind::Ask, to, s);
    // the cluster client follows ASK: every key reads
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(get(&mut con, k).await.unwrap(), Some(i.to_string()), "{k}");
    }

    c.finish_migration(m).await.unwrap();
    assert_eq!(c.master_of_slot(s).await.unwrap(), to);
    let mut target = c.connection(to).await.unwrap();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            get(&mut target, k).await.unwrap(),
            Some(i.to_string()),
            "{k}"
        );
        let e = get(&mut source, k).await.unwrap_err();
        assert_redirect(&e, redis::ServerErrorKind::Moved, to, s);
        assert_eq!(get(&mut con, k).await.unwrap(), Some(i.to_string()), "{k}");
    }
    for port in c.live_nodes() {
        let master_of = c
            .view(port)
            .await
            .unwrap()
            .into_iter()
            .find(|v| v.master && v.slots.iter().any(|&(a, b)| (a..=b).contains(&s)))
            .map(|v| v.port);
        assert_eq!(master_of, Some(to), "node {port}");
    }

    // migrate_slot in one go: back to the first owner, an empty slot too
    c.migrate_slot(s, from).await.unwrap();
    assert_eq!(c.master_of_slot(s).await.unwrap(), from);
    assert_eq!(get(&mut source, &keys[4]).await.unwrap(), Some("4".into()));
    let empty = slot("cl1:mig:{empty}");
    let owner = c.master_of_slot(empty).await.unwrap();
    let dest = *masters.iter().find(|m| **m != owner).unwrap();
    c.migrate_slot(empty, dest).await.unwrap();
    assert_eq!(c.master_of_slot(empty).await.unwrap(), dest);
}

async fn c_connection(port: u16) -> redis::aio::MultiplexedConnection {
    funcscale_e2e::redis_topology::connect(port, None)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_replica_takes_over_the_slots_of_a_killed_master() {
    let mut c = RedisCluster::start().await.unwrap();
    let masters = c.master_ports().await.unwrap();
    let old = masters[1];
    let key = c
        .key_on(old, |i| format!("cl1:failover:{i}"))
        .await
        .unwrap();
    let s = slot(&key);
    let replicas: Vec<u16> = {
        let view = c.view(old).await.unwrap();
        let id = view.iter().find(|n| n.myself).unwrap().id.clone();
        view.iter()
            .filter(|n| n.master_id.as_deref() == Some(id.as_str()))
            .map(|n| n.port)
            .collect()
    };
    assert_eq!(replicas.len(), 1, "one replica per master");
    let mut con = c.cluster_connection().await.unwrap();
    // written on the master's own connection: WAIT counts the replicas that acknowledged
    // this connection's writes
    let mut direct = c.connection(old).await.unwrap();
    let (_, acked): ((), i64) = redis::pipe()
        .cmd("SET")
        .arg(&key)
        .arg("before")
        .cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(acked, 1);

    c.kill_master(old).await.unwrap();
    assert!(c.kill_master(old).await.is_err(), "killed twice");
    let t = std::time::Instant::now();
    let new = c.wait_promoted(old, Duration::from_secs(30)).await.unwrap();
    eprintln!(
        "127.0.0.1:{new} took over from 127.0.0.1:{old} after {:?}",
        t.elapsed()
    );
    assert_eq!(new, replicas[0]);
    assert_eq!(c.master_of_slot(s).await.unwrap(), new);
    let now = c.master_ports().await.unwrap();
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.contains(&new) && !now.contains(&old));
    // the new master serves the slot: the write before, and new writes (through the cluster
    // client too, which finds the new owner)
    let mut direct = c.connection(new).await.unwrap();
    assert_eq!(get(&mut direct, &key).await.unwrap(), Some("before".into()));
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("after")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(get(&mut direct, &key).await.unwrap(), Some("after".into()));
    // a master that never died is not "promoted"
    assert!(
        c.wait_promoted(masters[0], Duration::from_millis(10))
            .await
            .is_err()
    );
}
