//! The beat against the real Redis: one firing beat among two, failover without a duplicate
//! or a lost tick, the registry at tens of thousands of entries, the missed-tick policy.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::{REDIS_URL, Space, wait_until};
use funcscale_worker::beat::{Beat, BeatConfig, Missed};
use funcscale_worker::protocol::{self, Envelope, Keys, ScheduleEntry};
use funcscale_worker::worker::now_ms;
use serde_json::json;
use tokio::sync::oneshot;

fn yaml_file(s: &Space, body: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}.yaml", s.prefix));
    std::fs::write(&path, body).unwrap();
    path
}

fn config(s: &Space, holder: &str, file: Option<PathBuf>) -> BeatConfig {
    BeatConfig {
        redis_url: REDIS_URL.into(),
        redis_auth: Default::default(),
        keys: s.keys.clone(),
        namespace: None,
        schedules_file: file,
        registry: true,
        holder: holder.into(),
        lease_ttl: Duration::from_secs(2),
        missed: Missed::Skip,
        reload_interval: Duration::from_millis(500),
    }
}

struct Running {
    metrics: funcscale_worker::beat::BeatMetrics,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(cfg: BeatConfig) -> Running {
    let beat = Beat::new(cfg).await.unwrap();
    let metrics = beat.metrics();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(beat.run(async move {
        let _ = rx.await;
    }));
    Running {
        metrics,
        stop: Some(tx),
        task,
    }
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
    /// A crash: no lease release.
    fn crash(self) {
        self.task.abort();
    }
}

/// (schedule field, tick) of every task in `queue`; panics on a duplicate.
async fn fired(s: &Space, queue: &str) -> Vec<(String, i64)> {
    let raw: Vec<String> = s.list(&s.keys.queue(queue)).await;
    let mut seen = BTreeSet::new();
    for r in &raw {
        let e = Envelope::from_json(r).unwrap();
        let (sched, tick) = e.id.rsplit_once('@').unwrap();
        assert!(
            seen.insert((sched.to_string(), tick.parse::<i64>().unwrap())),
            "tick fired twice: {}",
            e.id
        );
    }
    seen.into_iter().collect()
}

const EVERY_SECOND: &str = r#"
apiVersion: funcscale.dev/v1alpha1
kind: FuncQueue
metadata: {name: q}
spec:
  schedules:
    - {name: tick, cron: "* * * * * *", function: noop}
"#;

fn assert_contiguous(ticks: &[(String, i64)]) {
    let t: Vec<i64> = ticks.iter().map(|x| x.1).collect();
    for w in t.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "a tick was lost between {} and {}: {t:?}",
            w[0],
            w[1]
        );
    }
}

/// Two tenants on one Redis, each with a beat of its own namespace: both beats hold a lease
/// (their namespace's), each fires its namespace's file and registry schedules, and neither
/// fires the other's — though both namespaces have a queue named `q`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beats_of_two_namespaces_fire_their_own_schedules() {
    let s = Space::new("beatns");
    let file = yaml_file(&s, EVERY_SECOND);
    let (qa, qb) = (Keys::queue_id("a", "q"), Keys::queue_id("b", "q"));
    let mut con = s.con().await;
    for q in [&qa, &qb] {
        let entry = ScheduleEntry {
            cron: "* * * * * *".into(),
            func: "noop".into(),
            args: json!([]),
        };
        protocol::schedules_add(&mut con, &s.keys, q, &[("dyn".into(), entry, 60.0)])
            .await
            .unwrap();
    }
    let in_ns = |ns: &str, holder: &str| BeatConfig {
        namespace: Some(ns.into()),
        ..config(&s, holder, Some(file.clone()))
    };
    let a = start(in_ns("a", "beat-a")).await;
    let b = start(in_ns("b", "beat-b")).await;
    let started = (now_ms() / 1000) as i64;
    let fields = |ticks: Vec<(String, i64)>| -> BTreeSet<String> {
        ticks.into_iter().map(|(f, _)| f).collect()
    };
    for (q, ns) in [(&qa, "a"), (&qb, "b")] {
        wait_until(
            &format!("namespace {ns}'s file and registry schedules fire"),
            Duration::from_secs(15),
            || async {
                let ticks = fired(&s, q).await;
                ticks.last().is_some_and(|t| t.1 >= started + 2) && fields(ticks).len() == 2
            },
        )
        .await;
        assert_eq!(
            fields(fired(&s, q).await),
            [format!("{q}/file:tick"), format!("{q}/reg:dyn")].into(),
        );
        assert_eq!(s.int(&["GET", &s.keys.beat_fence(Some(ns))]).await, 1);
    }
    // the file names `q` in no namespace: each beat put it in its own, none in the bare key
    assert_eq!(s.int(&["LLEN", &s.keys.queue("q")]).await, 0);
    a.stop().await;
    b.stop().await;
}

/// The upgrade path: a queue with `legacyKeys` keeps its bare name as its id; the beat of
/// its namespace (the queue is in its file) fires its dynamic schedules, registered under the
/// bare name before the upgrade, while another namespace's beat runs beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_beat_fires_its_legacy_queues_registry() {
    let s = Space::new("beatlegacy");
    let file = yaml_file(
        &s,
        r#"
apiVersion: funcscale.dev/v1alpha1
kind: FuncQueue
metadata: {name: old, namespace: a}
spec:
  legacyKeys: true
"#,
    );
    let mut con = s.con().await;
    let entry = ScheduleEntry {
        cron: "* * * * * *".into(),
        func: "noop".into(),
        args: json!([]),
    };
    protocol::schedules_add(&mut con, &s.keys, "old", &[("dyn".into(), entry, 60.0)])
        .await
        .unwrap();
    let other = start(BeatConfig {
        namespace: Some("b".into()),
        ..config(&s, "beat-b", None)
    })
    .await;
    let mine = start(BeatConfig {
        namespace: Some("a".into()),
        ..config(&s, "beat-a", Some(file))
    })
    .await;
    wait_until(
        "the legacy registry fires",
        Duration::from_secs(15),
        || async { fired(&s, "old").await.len() >= 2 },
    )
    .await;
    assert!(
        fired(&s, "old")
            .await
            .iter()
            .all(|(f, _)| f == "old/reg:dyn")
    );
    assert_eq!(
        s.int(&["GET", &s.keys.beat_fence(Some("b"))]).await,
        1,
        "b's beat runs"
    );
    mine.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_beats_one_fires() {
    let s = Space::new("beat2");
    let file = yaml_file(&s, EVERY_SECOND);
    let a = start(config(&s, "a", Some(file.clone()))).await;
    let b = start(config(&s, "b", Some(file.clone()))).await;
    let started = (now_ms() / 1000) as i64;
    wait_until(
        "ticks for 4 s with both beats running",
        Duration::from_secs(15),
        || async {
            fired(&s, "q")
                .await
                .last()
                .is_some_and(|t| t.1 >= started + 4)
        },
    )
    .await;
    let ticks = fired(&s, "q").await;
    assert_contiguous(&ticks);
    // Only one lease was ever granted: the other beat waited.
    assert_eq!(s.int(&["GET", &s.keys.beat_fence(None)]).await, 1);
    let mut con = s.con().await;
    let holder: String = redis::cmd("GET")
        .arg(s.keys.beat_lease(None))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(holder == "a 1" || holder == "b 1", "{holder}");
    assert_eq!(s.stat("q", "enqueued").await as usize, ticks.len());
    // Exactly one reports itself leader, and it is the one that fired.
    assert_eq!(a.metrics.leader.get() + b.metrics.leader.get(), 1);
    assert_eq!(
        (a.metrics.fired.get() + b.metrics.fired.get()) as usize,
        ticks.len()
    );
    assert!(a.metrics.fired.get() == 0 || b.metrics.fired.get() == 0);
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_without_duplicate_or_lost_tick() {
    let s = Space::new("failover");
    let file = yaml_file(&s, EVERY_SECOND);
    let a = start(config(&s, "a", Some(file.clone()))).await;
    wait_until("a fires", Duration::from_secs(10), || async {
        s.int(&["LLEN", &s.keys.queue("q")]).await >= 3
    })
    .await;
    let b = start(config(&s, "b", Some(file.clone()))).await;
    // a crashes without releasing; b takes over once the lease expires.
    a.crash();
    let crashed_at = (now_ms() / 1000) as i64;
    let mut con = s.con().await;
    wait_until(
        "b holds the lease and fires past the crash",
        Duration::from_secs(15),
        || async {
            let ticks = fired(&s, "q").await;
            ticks.last().is_some_and(|t| t.1 >= crashed_at + 4)
        },
    )
    .await;
    let holder: String = redis::cmd("GET")
        .arg(s.keys.beat_lease(None))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(holder, "b 2");
    let ticks = fired(&s, "q").await; // panics on a duplicate
    assert_contiguous(&ticks); // ticks during the failover gap were fired by b
    b.stop().await;
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_of_tens_of_thousands() {
    let s = Space::new("registry");
    let mut con = s.con().await;
    let entry = |cron: &str| ScheduleEntry {
        cron: cron.into(),
        func: "noop".into(),
        args: json!([]),
    };
    // 20,000 monitors every minute: M = 20,000.
    let monitors: Vec<_> = (0..20_000)
        .map(|i| (format!("m{i}"), entry("*/1 * * * *"), 1.0))
        .collect();
    protocol::schedules_add(&mut con, &s.keys, "mon", &monitors)
        .await
        .unwrap();
    assert_eq!(
        s.int(&["GET", &s.keys.schedules_per_period("mon")]).await,
        20_000
    );
    // Replacing entries does not double count; removing subtracts.
    protocol::schedules_add(&mut con, &s.keys, "mon", &monitors[..100])
        .await
        .unwrap();
    assert_eq!(
        s.int(&["GET", &s.keys.schedules_per_period("mon")]).await,
        20_000
    );
    let gone: Vec<String> = (0..5_000).map(|i| format!("m{i}")).collect();
    assert_eq!(
        protocol::schedules_remove(&mut con, &s.keys, "mon", &gone)
            .await
            .unwrap(),
        5_000
    );
    assert_eq!(
        s.int(&["GET", &s.keys.schedules_per_period("mon")]).await,
        15_000
    );
    assert_eq!(
        protocol::schedules_list(&mut con, &s.keys, "mon")
            .await
            .unwrap()
            .len(),
        15_000
    );
    protocol::schedules_remove(
        &mut con,
        &s.keys,
        "mon",
        &(5_000..20_000).map(|i| format!("m{i}")).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert_eq!(
        s.int(&["GET", &s.keys.schedules_per_period("mon")]).await,
        0
    );

    // The beat fires a 20,000-entry registry within one tick: every 3 s here, to keep it short.
    let fast: Vec<_> = (0..20_000)
        .map(|i| (format!("f{i}"), entry("*/3 * * * * *"), 20.0))
        .collect();
    protocol::schedules_add(&mut con, &s.keys, "fast", &fast)
        .await
        .unwrap();
    // the lease is 2 s; a tick of 20,000 took 9 s on a loaded machine: each chunk of the tick
    // extends the lease it checks, so the tick is not cut off half-way
    let beat = start(config(&s, "a", None)).await;
    wait_until(
        "one full tick of 20,000",
        Duration::from_secs(20),
        || async { s.int(&["LLEN", &s.keys.queue("fast")]).await >= 20_000 },
    )
    .await;
    beat.stop().await;
    // a tick's pipeline already sent when the beat stopped still runs in Redis: wait for it
    // (on a loaded machine the LLEN can land between its scripts), then it must be whole
    let started = std::time::Instant::now();
    loop {
        let n = s.int(&["LLEN", &s.keys.queue("fast")]).await;
        if n % 20_000 == 0 {
            break;
        }
        let ticks = fired(&s, "fast").await;
        let mut per_tick = std::collections::BTreeMap::<i64, usize>::new();
        for (_, tick) in &ticks {
            *per_tick.entry(*tick).or_default() += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the last tick's pipeline did not finish: {n} queued, per tick {per_tick:?}, \
             enqueued stat {}",
            s.stat("fast", "enqueued").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = s.int(&["LLEN", &s.keys.queue("fast")]).await;
    assert_eq!(n % 20_000, 0, "ticks are enqueued whole");
    assert_eq!(s.stat("fast", "enqueued").await, n);
    let ticks = fired(&s, "fast").await; // no duplicates
    assert_eq!(ticks.len() as i64, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_ticks_skip_or_catch_up_once() {
    for missed in [Missed::Skip, Missed::CatchUpOnce] {
        let s = Space::new("missed");
        let file = yaml_file(
            &s,
            r#"
kind: FuncQueue
metadata: {name: q}
spec:
  schedules:
    - {name: minutely, cron: "* * * * *", function: noop}
    - {name: marker, cron: "* * * * * *", function: noop}
"#,
        );
        // minutely last fired 10 minutes ago: about ten ticks were missed.
        let now = (now_ms() / 1000) as i64;
        let last = now - now % 60 - 600;
        let mut con = s.con().await;
        let _: () = redis::cmd("HSET")
            .arg(s.keys.beat_last("q"))
            .arg("file:minutely")
            .arg(last)
            .query_async(&mut con)
            .await
            .unwrap();
        let mut cfg = config(&s, "a", Some(file.clone()));
        cfg.missed = missed;
        let beat = start(cfg).await;
        // The marker proves the beat has been evaluating for a few seconds.
        wait_until("marker fired 3 times", Duration::from_secs(15), || async {
            fired(&s, "q")
                .await
                .iter()
                .filter(|t| t.0.ends_with("marker"))
                .count()
                >= 3
        })
        .await;
        beat.stop().await;
        let old: Vec<i64> = fired(&s, "q")
            .await
            .into_iter()
            .filter(|t| t.0.ends_with("minutely") && t.1 <= now - 4)
            .map(|t| t.1)
            .collect();
        match missed {
            Missed::Skip => assert!(old.is_empty(), "skip fired {old:?}"),
            Missed::CatchUpOnce => {
                assert_eq!(old.len(), 1, "catch-up-once fired {old:?}");
                assert!(old[0] > last && old[0] % 60 == 0);
            }
        }
        let _ = std::fs::remove_file(file);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beat_that_lost_its_lease_stops_firing() {
    let s = Space::new("fence");
    let file = yaml_file(&s, EVERY_SECOND);
    let a = start(config(&s, "a", Some(file.clone()))).await;
    wait_until("a fires", Duration::from_secs(10), || async {
        s.int(&["LLEN", &s.keys.queue("q")]).await >= 2
    })
    .await;
    // Another holder takes the lease (as after an expiry): a's next firing is refused by the
    // fencing check and its renewal fails, so nothing more is enqueued while it is held.
    let mut con = s.con().await;
    let _: () = redis::cmd("SET")
        .arg(s.keys.beat_lease(None))
        .arg("intruder 99")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut con)
        .await
        .unwrap();
    let taken_at = now_ms();
    let deadline = std::time::Instant::now() + Duration::from_millis(2_500);
    while std::time::Instant::now() < deadline {
        let raw: Vec<String> = s.list(&s.keys.queue("q")).await;
        for r in raw {
            let e = Envelope::from_json(&r).unwrap();
            assert!(
                e.enqueued_at_ms <= taken_at,
                "fired under a foreign lease: {}",
                e.id
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // When the other holder goes away, a acquires a new token and resumes.
    let _: () = redis::cmd("DEL")
        .arg(s.keys.beat_lease(None))
        .query_async(&mut con)
        .await
        .unwrap();
    wait_until("a holds a new token", Duration::from_secs(5), || async {
        let mut con = s.con().await;
        let v: Option<String> = redis::cmd("GET")
            .arg(s.keys.beat_lease(None))
            .query_async(&mut con)
            .await
            .unwrap();
        v.as_deref() == Some("a 2")
    })
    .await;
    let before = fired(&s, "q").await.len();
    wait_until("a fires again", Duration::from_secs(5), || async {
        fired(&s, "q").await.len() > before
    })
    .await;
    a.stop().await;
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fired_ticks_have_queued_records_like_any_enqueue() {
    use funcscale_worker::protocol::TaskStatus;
    use funcscale_worker::records::{self, TaskQuery};
    let s = Space::new("beat-records");
    let file = yaml_file(&s, EVERY_SECOND);
    let a = start(config(&s, "a", Some(file.clone()))).await;
    wait_until("two ticks fired", Duration::from_secs(10), || async {
        s.int(&["LLEN", &s.keys.queue("q")]).await >= 2
    })
    .await;
    a.stop().await;
    let _ = std::fs::remove_file(file);
    let ticks = fired(&s, "q").await;
    let mut con = s.con().await;
    let queued = records::list_tasks(
        &mut con,
        &s.keys,
        &TaskQuery {
            queue: "q".into(),
            status: Some(TaskStatus::Queued.into()),
            func: Some("noop".into()),
            id_prefix: Some("q/".into()),
            limit: 100,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut ids: Vec<String> = queued.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    let mut want: Vec<String> = ticks.iter().map(|(f, t)| format!("{f}@{t}")).collect();
    want.sort();
    assert_eq!(ids, want, "every fired tick has a queued record");
    for r in &queued {
        assert_eq!(r.attempt, Some(0));
        assert!(r.enqueued_ms.is_some() && r.created_ms.is_some());
    }
    let now = now_ms();
    let submitted: i64 = records::counts(&mut con, &s.keys, "q", now - 120_000, now)
        .await
        .unwrap()
        .iter()
        .map(|b| b.submitted)
        .sum();
    assert_eq!(submitted as usize, ticks.len());
}

/// `beat_fire` of `queue` under `token`: one tick per `(field, tick)`.
async fn fire_as(s: &Space, token: u64, queue: &str, ticks: &[(&str, i64)]) -> i64 {
    let envs: Vec<Envelope> = ticks
        .iter()
        .map(|(f, t)| Envelope::new(format!("{queue}/{f}@{t}"), "noop", queue, now_ms()))
        .collect();
    let script = protocol::beat_fire_script();
    let inv = protocol::beat_fire_invocation(
        &script,
        &s.keys,
        token,
        queue,
        now_ms(),
        ticks.iter().zip(&envs).map(|((f, t), e)| (*f, *t, e)),
    );
    inv.invoke_async(&mut s.con().await).await.unwrap()
}

/// Take the lease of no namespace for `holder` (TTL 60 s): its fencing token.
async fn acquire(s: &Space, holder: &str) -> Option<u64> {
    redis::Script::new(protocol::scripts::LEASE_ACQUIRE)
        .key(s.keys.beat_lease(None))
        .key(s.keys.beat_fence(None))
        .arg(holder)
        .arg(60_000)
        .invoke_async(&mut s.con().await)
        .await
        .unwrap()
}

/// Two beats overlapping: `a` held the lease (token 1), it expired, `b` took it (token 2) and
/// fired; `a`, paused after its last renewal, then sends its pipelines with token 1. The fence
/// in each queue's slot (field `_fence` of `beat:last`) refuses `a` on every queue `b` has
/// touched — even a tick `b` has not fired yet — and no tick is ever enqueued twice (on a queue
/// `b` has not touched yet `a` may still fire; `b` then skips that tick).
#[tokio::test]
async fn an_old_lease_holder_is_fenced_once_the_new_one_fired_the_queue() {
    let s = Space::new("beatfence2");
    assert_eq!(acquire(&s, "a").await, Some(1));
    assert_eq!(fire_as(&s, 1, "q1", &[("file:t", 100)]).await, 1);
    assert_eq!(fire_as(&s, 1, "q2", &[("file:t", 100)]).await, 1);
    // a's lease expires, b takes it over and fires q1's next tick
    let _: () = redis::cmd("DEL")
        .arg(s.keys.beat_lease(None))
        .query_async(&mut s.con().await)
        .await
        .unwrap();
    assert_eq!(acquire(&s, "b").await, Some(2));
    assert_eq!(acquire(&s, "a").await, None, "b holds the lease");
    assert_eq!(fire_as(&s, 2, "q1", &[("file:t", 101)]).await, 1);
    // a wakes up: refused on q1, for the tick b fired and for one b has not fired yet
    assert_eq!(
        fire_as(&s, 1, "q1", &[("file:t", 101), ("file:t", 102)]).await,
        -1,
        "the old holder fired into a queue the new holder had fired"
    );
    assert_eq!(s.int(&["LLEN", &s.keys.queue("q1")]).await, 2);
    assert_eq!(
        s.int(&["HGET", &s.keys.beat_last("q1"), "file:t"]).await,
        101
    );
    // q2 untouched by b: a's tick 101 goes in, b's same tick is skipped, then a is fenced
    assert_eq!(fire_as(&s, 1, "q2", &[("file:t", 101)]).await, 1);
    assert_eq!(fire_as(&s, 2, "q2", &[("file:t", 101)]).await, 0);
    assert_eq!(fire_as(&s, 1, "q2", &[("file:t", 102)]).await, -1);
    assert_eq!(fire_as(&s, 2, "q2", &[("file:t", 102)]).await, 1);
    for q in ["q1", "q2"] {
        let ticks = fired(&s, q).await; // panics on a duplicate
        assert_eq!(ticks.len() as i64, s.stat(q, "enqueued").await);
        assert_eq!(s.int(&["HGET", &s.keys.beat_last(q), "_fence"]).await, 2);
    }
    assert_eq!(fired(&s, "q1").await.len(), 2);
    assert_eq!(fired(&s, "q2").await.len(), 3);
}

/// A removal of a queue's last registry entry racing an add to the same queue (the add's
/// `SADD` to the namespace's registry set and its script are two commands, in two slots on
/// Redis Cluster): whatever the interleaving, a registry with entries stays in the set, and
/// the beat of the namespace fires it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_racing_a_remove_never_hides_a_registry_from_the_beat() {
    let s = Space::new("schedrace");
    let ns = "race";
    let queues: Vec<String> = (0..300)
        .map(|i| Keys::queue_id(ns, &format!("q{i}")))
        .collect();
    let entry = |cron: &str| ScheduleEntry {
        cron: cron.into(),
        func: "noop".into(),
        args: json!([]),
    };
    let mut con = s.con().await;
    for q in &queues {
        protocol::schedules_add(
            &mut con,
            &s.keys,
            q,
            &[("x".into(), entry("0 0 1 1 *"), 0.0)],
        )
        .await
        .unwrap();
    }
    // per queue: remove x (the registry becomes empty) and add y at once, on two connections
    let races = queues.iter().enumerate().map(|(i, q)| {
        let keys = s.keys.clone();
        let (remover, adder) = (s.con(), s.con());
        let y = entry("* * * * * *");
        async move {
            let (mut remover, mut adder) = (remover.await, adder.await);
            let x = ["x".to_string()];
            let remove = protocol::schedules_remove(&mut remover, &keys, q, &x);
            let add = async {
                // spread the add over the removal's round trips
                tokio::time::sleep(Duration::from_micros((i as u64 % 10) * 50)).await;
                protocol::schedules_add(&mut adder, &keys, q, &[("y".into(), y, 60.0)]).await
            };
            let (removed, len) = tokio::join!(remove, add);
            assert_eq!(removed.unwrap(), 1);
            // 2 when the add's script ran before the removal's
            assert!((1..=2).contains(&len.unwrap()));
        }
    });
    futures::future::join_all(races).await;
    let set = s.keys.schedule_queues(Some(ns));
    for q in &queues {
        assert_eq!(s.int(&["HLEN", &s.keys.schedules(q)]).await, 1);
        assert_eq!(
            s.int(&["SISMEMBER", &set, q]).await,
            1,
            "{q} has a registry the beat cannot find"
        );
    }
    // an emptied registry stays a member; the beat skips it
    protocol::schedules_remove(&mut con, &s.keys, &queues[0], &["y".into()])
        .await
        .unwrap();
    assert_eq!(s.int(&["SISMEMBER", &set, &queues[0]]).await, 1);
    let beat = start(BeatConfig {
        namespace: Some(ns.into()),
        ..config(&s, "beat-race", None)
    })
    .await;
    wait_until(
        "the beat fires every raced registry",
        Duration::from_secs(20),
        || async {
            let mut con = s.con().await;
            let mut pipe = redis::pipe();
            for q in &queues[1..] {
                pipe.llen(s.keys.queue(q));
            }
            let lens: Vec<i64> = pipe.query_async(&mut con).await.unwrap();
            lens.iter().all(|n| *n > 0)
        },
    )
    .await;
    beat.stop().await;
    assert_eq!(s.int(&["LLEN", &s.keys.queue(&queues[0])]).await, 0);
    for q in &queues[1..4] {
        assert!(
            fired(&s, q)
                .await
                .iter()
                .all(|(f, _)| f.ends_with("/reg:y"))
        );
    }
}

/// The token counter behind a queue's fence (its increments lost with a failed master of the
/// namespace's slot, on Redis Cluster): the queue's fence refuses the beat's token though the
/// beat holds the lease. The beat gives the lease up and takes it again with a higher token
/// until the fence lets it fire — it does not stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beat_whose_token_lags_a_queues_fence_catches_up() {
    let s = Space::new("fencelag");
    let file = yaml_file(&s, EVERY_SECOND);
    let _: () = redis::cmd("HSET")
        .arg(s.keys.beat_last("q"))
        .arg("_fence")
        .arg(4)
        .query_async(&mut s.con().await)
        .await
        .unwrap();
    let a = start(config(&s, "a", Some(file.clone()))).await;
    wait_until("a fires", Duration::from_secs(15), || async {
        s.int(&["LLEN", &s.keys.queue("q")]).await >= 2
    })
    .await;
    a.stop().await;
    assert!(s.int(&["GET", &s.keys.beat_fence(None)]).await >= 4);
    fired(&s, "q").await; // no duplicate
    let _ = std::fs::remove_file(file);
}
