//! Recovery with per-queue in-flight lists (layout 2: `Keys::inflight_q`, registry
//! `Keys::slots`): the reaper of a dead slot, the running-set sweep, the drain, and the
//! upgrade pass over the registry of earlier versions (`Keys::workers`), which never touches a
//! slot of the new registry.

mod common;

use std::time::Duration;

use common::{REDIS_URL, Running, Space, wait_until};
use funcscale_worker::protocol::Envelope;
use funcscale_worker::worker::{RedisAuth, Worker, WorkerBuilder, now_ms, reap_dead_legacy};
use serde_json::json;

fn builder(s: &Space, queues: &[&str], processes: usize) -> WorkerBuilder {
    Worker::builder()
        .redis_url(REDIS_URL)
        .prefix(s.prefix.clone())
        .queues(queues.iter().copied())
        .processes(processes)
}

/// A slot of the registry that died with a task of a queue the reaper does not serve: its
/// hash (no TTL) names that queue, so the task goes back there; the empty lists leave the
/// running sets; the slot and its hash are forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_slots_lists_of_every_queue_it_served_are_recovered() {
    let s = Space::new("reap2");
    let (qd, qe) = ("{r2.d}", "{r2.e}");
    let ks = s.keys.clone().in_namespace(Some("r2".into()));
    let ghost = "ghost-3.0";
    let (td, te) = (
        s.env("td", "noop", qd, json!([])),
        s.env("te", "noop", qe, json!([])),
    );
    let old = now_ms() - 10_000;
    let mut con = s.con().await;
    let _: () = redis::pipe()
        .zadd(ks.slots(), ghost, old)
        .hset_multiple(
            ks.worker(ghost),
            &[("queues", format!("{qd},{qe}")), ("layout", "2".into())],
        )
        .lpush(ks.inflight_q(qd, ghost), td.to_json())
        .zadd(s.keys.running(qd), ks.inflight_q(qd, ghost), old)
        .lpush(ks.inflight_q(qe, ghost), te.to_json())
        .zadd(s.keys.running(qe), ks.inflight_q(qe, ghost), old)
        .query_async(&mut con)
        .await
        .unwrap();
    let w = Running::start(builder(&s, &[qd], 1).configure(|c| c.worker_ttl_ms = 1_000)).await;
    wait_until(
        "the ghost's task of our queue ran",
        Duration::from_secs(10),
        || async { s.stat(qd, "completed").await == 1 },
    )
    .await;
    wait_until("the ghost is forgotten", Duration::from_secs(5), || async {
        s.int(&["ZSCORE", &ks.slots(), ghost]).await == 0
    })
    .await;
    // the other queue's task waits in its own queue (nobody serves it here)
    let back = s.list(&s.keys.queue(qe)).await;
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(Envelope::from_json(&back[0]).unwrap().id, "te");
    for q in [qd, qe] {
        assert_eq!(s.int(&["ZCARD", &s.keys.running(q)]).await, 0, "{q}");
        assert_eq!(s.int(&["EXISTS", &ks.inflight_q(q, ghost)]).await, 0, "{q}");
    }
    assert_eq!(s.int(&["EXISTS", &ks.worker(ghost)]).await, 0);
    w.stop().await;
}

/// An in-flight list that only a running set names (its slot is in neither registry: forgotten
/// while paused, it fetched, then died before its next heartbeat) is swept: its task goes
/// back and runs, the member leaves the running set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_slots_running_list_is_swept() {
    let s = Space::new("sweep");
    let set = s.own("done");
    let q = "{sw.q}";
    let ks = s.keys.clone().in_namespace(Some("sw".into()));
    let ghost = "ghost-4.0";
    let t = s.env("t", "record", q, json!([set]));
    let mut con = s.con().await;
    let _: () = redis::pipe()
        .lpush(ks.inflight_q(q, ghost), t.to_json())
        .zadd(s.keys.running(q), ks.inflight_q(q, ghost), now_ms())
        .query_async(&mut con)
        .await
        .unwrap();
    let w = Running::start(builder(&s, &[q], 1).configure(|c| c.worker_ttl_ms = 1_000)).await;
    wait_until("the swept task ran", Duration::from_secs(10), || async {
        s.int(&["SISMEMBER", &set, "t"]).await == 1
    })
    .await;
    wait_until(
        "the running set is clean",
        Duration::from_secs(5),
        || async { s.int(&["ZCARD", &s.keys.running(q)]).await == 0 },
    )
    .await;
    assert_eq!(s.int(&["EXISTS", &ks.inflight_q(q, ghost)]).await, 0);
    w.stop().await;
}

/// A worker first puts back what an earlier process of its name left in its per-queue lists;
/// a drain cut short puts each running task back on the queue it came from, from that queue's
/// in-flight list, and empties the running sets and the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_puts_back_each_queues_list() {
    let s = Space::new("drain2");
    let (qa, qb) = ("{d2.a}", "{d2.b}");
    let ks = s.keys.clone().in_namespace(Some("d2".into()));
    // left by an earlier process named `dw`
    let left = s.env("left", "noop", qb, json!([]));
    let _: () = redis::pipe()
        .lpush(ks.inflight_q(qb, "dw.1"), left.to_json())
        .zadd(s.keys.running(qb), ks.inflight_q(qb, "dw.1"), now_ms())
        .query_async(&mut s.con().await)
        .await
        .unwrap();
    s.enqueue(qa, &[s.env("ta", "sleep", qa, json!([60_000]))])
        .await;
    s.enqueue(qb, &[s.env("tb", "sleep", qb, json!([60_000]))])
        .await;
    let w = Running::start(builder(&s, &[qa, qb], 2).configure(|c| {
        c.name = "dw".into();
        c.drain_timeout = Duration::from_millis(300);
    }))
    .await;
    wait_until(
        "the left task ran, both running",
        Duration::from_secs(10),
        || async {
            s.stat(qb, "completed").await == 1
                && s.int(&["ZCARD", &s.keys.running(qa)]).await == 1
                && s.int(&["ZCARD", &s.keys.running(qb)]).await == 1
        },
    )
    .await;
    let mut held = 0;
    for q in [qa, qb] {
        for slot in ["dw.0", "dw.1"] {
            held += s.int(&["LLEN", &ks.inflight_q(q, slot)]).await;
        }
    }
    assert_eq!(held, 2, "each task in its queue's list of its slot");
    w.stop().await;
    for (q, id) in [(qa, "ta"), (qb, "tb")] {
        let back = s.list(&s.keys.queue(q)).await;
        assert_eq!(back.len(), 1, "{q}: {back:?}");
        assert_eq!(Envelope::from_json(&back[0]).unwrap().id, id);
        assert_eq!(s.int(&["ZCARD", &s.keys.running(q)]).await, 0);
        for slot in ["dw.0", "dw.1"] {
            assert_eq!(s.int(&["EXISTS", &ks.inflight_q(q, slot)]).await, 0);
        }
    }
    assert_eq!(s.int(&["ZCARD", &ks.slots()]).await, 0);
    assert_eq!(s.int(&["EXISTS", &ks.worker("dw.0")]).await, 0);
}

/// During a rolling update an old worker's reaper runs the pass over the registry of earlier
/// versions with `forget.lua`: a live slot of the new layout is not in that registry, so its
/// hash and registry entry survive even when every old-registry slot counts as dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_workers_forget_never_touches_a_new_slot() {
    let s = Space::new("oldforget");
    let q = "{of.q}";
    let ks = s.keys.clone().in_namespace(Some("of".into()));
    let w = Running::start(builder(&s, &[q], 1).configure(|c| c.name = "new".into())).await;
    wait_until("registered", Duration::from_secs(5), || async {
        s.int(&["ZCARD", &ks.slots()]).await == 1
    })
    .await;
    // an old slot, dead, and the old reaper's pass with every heartbeat counted as old
    let ghost = "old-1.0";
    let mut con = s.con().await;
    let _: () = redis::pipe()
        .zadd(ks.workers(), ghost, now_ms() - 60_000)
        .hset(ks.worker(ghost), "queues", q)
        .query_async(&mut con)
        .await
        .unwrap();
    let conn = RedisAuth::default().connect(REDIS_URL).await.unwrap();
    reap_dead_legacy(&conn, &ks, 0, &[]).await.unwrap();
    assert_eq!(
        s.int(&["ZCARD", &ks.workers()]).await,
        0,
        "the old slot is forgotten"
    );
    assert_eq!(s.int(&["EXISTS", &ks.worker(ghost)]).await, 0);
    assert_eq!(
        s.int(&["ZCARD", &ks.slots()]).await,
        1,
        "the new slot is kept"
    );
    assert_eq!(s.int(&["EXISTS", &ks.worker("new.0")]).await, 1);
    w.stop().await;
}

/// A worker serves one namespace: its slots are registered there, so a queue of another
/// namespace would have in-flight lists that namespace's sweep takes for a dead slot's.
#[tokio::test]
async fn a_worker_refuses_queues_of_two_namespaces() {
    let s = Space::new("twons");
    let e = builder(&s, &["{tn1.a}", "{tn2.b}"], 1)
        .build()
        .await
        .err()
        .expect("two namespaces refused");
    let msg = e.to_string();
    assert!(
        msg.contains("{tn2.b}") && msg.contains("another namespace"),
        "{msg}"
    );
}

/// Live slots are left alone by the other workers' sweeps and reapers: two workers with a
/// short TTL (sweeps every 2 s) run 6 tasks of 4 s each, and each task runs exactly once (its
/// runs are counted in a list, not a set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_slots_long_task_is_never_swept_or_reaped() {
    let s = Space::new("live");
    let q = "{lv.q}";
    let runs = s.own("runs");
    let done = s.own("done");
    let envs: Vec<Envelope> = (0..6)
        .map(|i| s.env(&format!("t{i}"), "record", q, json!([done, 4000, runs])))
        .collect();
    s.enqueue(q, &envs).await;
    let a = Running::start(builder(&s, &[q], 3).configure(|c| c.worker_ttl_ms = 1_000)).await;
    let b = Running::start(builder(&s, &[q], 3).configure(|c| c.worker_ttl_ms = 1_000)).await;
    wait_until("every task ran", Duration::from_secs(30), || async {
        s.stat(q, "completed").await == 6
    })
    .await;
    a.stop().await;
    b.stop().await;
    let mut ran = s.list(&runs).await;
    ran.sort();
    assert_eq!(
        ran,
        ["t0", "t1", "t2", "t3", "t4", "t5"],
        "a task ran twice or not at all"
    );
}
