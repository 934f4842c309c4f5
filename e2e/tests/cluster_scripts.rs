//! The worker's delivery scripts on a real Redis Cluster (layout 2, per-queue in-flight lists,
//! docs/design/redis-cluster-plan.md §2.1): fetch, claim, started, finish, requeue, release
//! and forget2 called through redis-rs' cluster client with the keys `Keys` names, for queues
//! on three different masters. Each script runs in strict mode (`#!lua`: an access to a key of
//! another hash slot than the declared keys' errors even when that slot is on the same node),
//! so a key of the wrong slot — declared or not — fails the test. Re-sent calls (what the
//! cluster client does after MOVED or a timeout) change nothing.

use funcscale_e2e::redis_cluster::{RedisCluster, strict};
use funcscale_protocol::{Envelope, Keys, scripts};
use redis::AsyncCommands;

fn env(id: &str, queue: &str) -> Envelope {
    Envelope::new(id, "noop", queue, 1_000)
}

/// ARGV of finish.lua after the mode's own four: prefix, queue, id, func, now, records on,
/// attempt, slot, duration, started, payload, error, start recorded, earlier error.
fn finish_args(inv: &mut redis::ScriptInvocation, keys: &Keys, q: &str, e: &Envelope, slot: &str) {
    inv.arg(keys.prefix())
        .arg(q)
        .arg(&e.id)
        .arg(&e.func)
        .arg(1_000_000u64)
        .arg("1")
        .arg(e.attempt)
        .arg(slot)
        .arg(5)
        .arg(999_995u64)
        .arg("null")
        .arg("")
        .arg("0")
        .arg("0");
}

#[tokio::test]
async fn delivery_scripts_touch_one_slot_per_call() {
    let mut c = RedisCluster::start().await.unwrap();
    let masters = c.master_ports().await.unwrap();
    assert_eq!(masters.len(), 3);
    let ns = "cs";
    let keys = Keys::new("cs1").in_namespace(Some(ns.into()));
    let queues = c.queue_on_every_master(ns).await.unwrap();
    let mut con = c.cluster_connection().await.unwrap();
    let enqueue = strict(scripts::ENQUEUE);
    let fetch = strict(scripts::FETCH);
    let claim = strict(scripts::CLAIM);
    let started = strict(scripts::STARTED);
    let finish = strict(scripts::FINISH);
    let requeue = strict(scripts::REQUEUE);
    let release = strict(scripts::RELEASE);
    let forget2 = strict(scripts::FORGET2);
    let slot_id = "w-1-ab.0";

    for q in &queues {
        let inflight = keys.inflight_q(q, slot_id);
        let running = keys.running(q);
        let (a, b) = (env("a", q), env("b", q));
        // enqueued with their records (a task's record exists before it runs: the scripts
        // below then never look for a record of an earlier version, `Keys::task_legacy`,
        // which has no hash tag — step 9 of the plan)
        let mut inv = enqueue.key(keys.queue(q));
        inv.key(keys.stats(q)).arg(keys.prefix()).arg(q).arg(500u64);
        for e in [&a, &b] {
            inv.arg(e.to_json()).arg(&e.id).arg(&e.func).arg("");
        }
        let n: i64 = inv.invoke_async(&mut con).await.unwrap();
        assert_eq!(n, 2);

        // fetch: one triple, the queue's slot
        let got: Option<(String, usize)> = fetch
            .key(keys.queue(q))
            .key(&inflight)
            .key(&running)
            .arg(1_000u64)
            .invoke_async(&mut con)
            .await
            .unwrap();
        let (raw, i) = got.expect("a task");
        assert_eq!(
            (Envelope::from_json(&raw).unwrap().id.as_str(), i),
            ("a", 1)
        );
        // re-sent (its reply lost): the same task again, no second one taken, same start
        let again: Option<(String, usize)> = fetch
            .key(keys.queue(q))
            .key(&inflight)
            .key(&running)
            .arg(1_500u64)
            .invoke_async(&mut con)
            .await
            .unwrap();
        assert_eq!(again, Some((raw.clone(), 1)), "{q}");
        assert_eq!(con.llen::<_, i64>(keys.queue(q)).await.unwrap(), 1);
        assert_eq!(con.llen::<_, i64>(&inflight).await.unwrap(), 1);
        let r: Option<f64> = con.zscore(&running, &inflight).await.unwrap();
        assert_eq!(r, Some(1_000.0), "{q}: the list entered the running set");

        // claim (re-sent: the same effect), with a corrected text
        let mut fixed = Envelope::from_json(&raw).unwrap();
        fixed.func = "noop2".into();
        for want in [1, 0] {
            let n: i64 = claim
                .key(&inflight)
                .key(&running)
                .arg(&raw)
                .arg(2_000u64)
                .arg(fixed.to_json())
                .invoke_async(&mut con)
                .await
                .unwrap();
            assert_eq!(n, want, "{q}");
        }
        let raw = fixed.to_json();
        let listed: Vec<String> = con.lrange(&inflight, 0, -1).await.unwrap();
        assert_eq!(listed, std::slice::from_ref(&raw));

        // started: the record (undeclared keys of the queue's slot)
        let n: i64 = started
            .key(&inflight)
            .arg(keys.prefix())
            .arg(&raw)
            .arg(slot_id)
            .arg(999_995u64)
            .invoke_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, 1);
        let status: Option<String> = con.hget(keys.task(q, "a"), "status").await.unwrap();
        assert_eq!(status.as_deref(), Some("started"));

        // finish (ack), twice: the second finds nothing in flight
        let stats = keys.stats(q);
        for want in [2, 0] {
            let mut inv = finish.key(&inflight);
            inv.key(&stats)
                .key(&stats)
                .arg(&raw)
                .arg("ack")
                .arg("")
                .arg(0);
            finish_args(&mut inv, &keys, q, &fixed, slot_id);
            let n: i64 = inv.invoke_async(&mut con).await.unwrap();
            assert_eq!(n, want, "{q}");
        }
        let status: Option<String> = con.hget(keys.task(q, "a"), "status").await.unwrap();
        assert_eq!(status.as_deref(), Some("succeeded"));
        assert_eq!(con.llen::<_, i64>(&inflight).await.unwrap(), 0);
        assert_eq!(con.zcard::<_, i64>(&running).await.unwrap(), 0);

        // blocking move into the queue's list, claim, then requeue (twice: idempotent)
        let moved: Option<String> = con
            .blmove(
                keys.queue(q),
                &inflight,
                redis::Direction::Right,
                redis::Direction::Left,
                1.0,
            )
            .await
            .unwrap();
        let raw_b = moved.expect("b");
        assert_eq!(Envelope::from_json(&raw_b).unwrap().id, "b");
        let n: i64 = claim
            .key(&inflight)
            .key(&running)
            .arg(&raw_b)
            .arg(3_000u64)
            .invoke_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, 1);
        for want in [1, 0] {
            let n: i64 = requeue
                .key(&inflight)
                .key(keys.queue(q))
                .key(&running)
                .arg(&raw_b)
                .arg(keys.prefix())
                .arg(4_000u64)
                .arg("1")
                .arg(q)
                .arg("0")
                .invoke_async(&mut con)
                .await
                .unwrap();
            assert_eq!(n, want, "{q}");
        }
        let back: Vec<String> = con.lrange(keys.queue(q), 0, -1).await.unwrap();
        assert_eq!(back, std::slice::from_ref(&raw_b), "{q}: back in its queue");
        assert_eq!(con.zcard::<_, i64>(&running).await.unwrap(), 0);

        // a malformed entry goes to the queue's own dead letters
        let _: () = con.lpush(&inflight, "not json").await.unwrap();
        let _: () = con.zadd(&running, &inflight, 5_000).await.unwrap();
        let n: i64 = requeue
            .key(&inflight)
            .key(keys.dead(q))
            .key(&running)
            .arg("not json")
            .arg(keys.prefix())
            .arg(5_000u64)
            .arg("1")
            .arg(q)
            .arg("1")
            .invoke_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, 1);
        let dead: Vec<String> = con.lrange(keys.dead(q), 0, -1).await.unwrap();
        assert_eq!(dead, ["not json"]);

        // release: a list with a task stays in the running set, an empty one leaves it
        let _: () = con.lpush(&inflight, &raw_b).await.unwrap();
        let _: () = con.zadd(&running, &inflight, 6_000).await.unwrap();
        let n: i64 = release
            .key(&inflight)
            .key(&running)
            .invoke_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, 0);
        assert_eq!(con.zcard::<_, i64>(&running).await.unwrap(), 1);
        let _: () = con.del(&inflight).await.unwrap();
        for _ in 0..2 {
            let n: i64 = release
                .key(&inflight)
                .key(&running)
                .invoke_async(&mut con)
                .await
                .unwrap();
            assert_eq!(n, 1);
        }
        assert_eq!(con.zcard::<_, i64>(&running).await.unwrap(), 0);
    }

    // the triples of two queues on two masters in one call: CROSSSLOT (why a cluster sends
    // one fetch per slot group)
    let mut inv = fetch.prepare_invoke();
    for q in &queues[..2] {
        inv.key(keys.queue(q))
            .key(keys.inflight_q(q, slot_id))
            .key(keys.running(q));
    }
    let e = inv
        .arg(1u64)
        .invoke_async::<Option<(String, usize)>>(&mut con)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("CROSSSLOT") || e.to_string().contains("slot"),
        "{e}"
    );

    // forget2: the registry and the slot's hash share the namespace's slot; a heartbeat newer
    // than the cutoff keeps the slot
    let _: () = con.zadd(keys.slots(), slot_id, 10_000).await.unwrap();
    let _: () = con
        .hset_multiple(
            keys.worker(slot_id),
            &[("queues", queues.join(",")), ("layout", "2".into())],
        )
        .await
        .unwrap();
    let n: i64 = forget2
        .key(keys.slots())
        .key(keys.worker(slot_id))
        .arg(slot_id)
        .arg(9_000u64)
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert_eq!(n, 0, "a fresh heartbeat is kept");
    for _ in 0..2 {
        let n: i64 = forget2
            .key(keys.slots())
            .key(keys.worker(slot_id))
            .arg(slot_id)
            .arg(20_000u64)
            .invoke_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    assert_eq!(con.zcard::<_, i64>(keys.slots()).await.unwrap(), 0);
    assert_eq!(con.exists::<_, i64>(keys.worker(slot_id)).await.unwrap(), 0);
}
