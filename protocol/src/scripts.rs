//! The Lua scripts, one file each under `lua/` (each file's header says its `KEYS` and
//! `ARGV`). Scripts that write task records, counts or destinations are the record library
//! (`lua/record_lib.lua`) followed by their own body, joined at compile time.
//!
//! The programs wrap them in [`redis::Script`] once and invoke them with the keys from
//! [`crate::Keys`].
//!
//! Redis Cluster: the record keys a script writes are built from `ARGV` (not declared in
//! `KEYS`), all in the queue's hash slot. While that slot migrates, such a key the node no
//! longer (or not yet) holds would fail the script after its earlier writes ran; so every
//! write script probes the keys it will touch first (one `EXISTS` of several keys, which the
//! importing node also refuses while one is missing) and answers `TRYAGAIN` with nothing
//! written (`fs_local` in `lua/record_lib.lua`; redis-rs' cluster client waits and re-sends),
//! and is idempotent under a re-send (finish, requeue, claim, started: the in-flight list or
//! the record says it was done; enqueue: an id recorded as enqueued at the call's `now` is
//! skipped; the beat: its last-fired ticks). Records of earlier versions under the id alone
//! (`Keys::task_legacy`, no hash tag) are only looked at where the node holds that key, i.e.
//! never on a cluster (they cannot exist there).
//!
//! Feature `strict-scripts` (tests only): every script starts with `#!lua`, so on a cluster
//! Redis refuses any access to a key of another slot than the declared keys', even when the
//! node serves that slot too (without the shebang such an access works by luck until a
//! reshard).

#[cfg(feature = "strict-scripts")]
macro_rules! shebang {
    () => {
        "#!lua\n"
    };
}

#[cfg(not(feature = "strict-scripts"))]
macro_rules! shebang {
    () => {
        ""
    };
}

macro_rules! lua {
    ($name:literal) => {
        concat!(shebang!(), include_str!(concat!("../lua/", $name, ".lua")))
    };
}

macro_rules! with_record_lib {
    ($name:literal) => {
        concat!(
            shebang!(),
            include_str!("../lua/record_lib.lua"),
            "\n",
            include_str!(concat!("../lua/", $name, ".lua"))
        )
    };
}

/// The record library alone (functions only: running it does nothing).
pub const RECORD_LIB: &str = lua!("record_lib");

/// Producers: push envelopes, count them and record them (status `queued`), atomically.
pub const ENQUEUE: &str = with_record_lib!("enqueue");
/// The beat: fire ticks under the lease, each pushed, counted and recorded as `enqueue` does.
pub const BEAT_FIRE: &str = with_record_lib!("beat_fire");
/// The beat lease: acquire (or extend when held), with a fencing token.
pub const LEASE_ACQUIRE: &str = lua!("lease_acquire");
/// The beat lease: extend while held.
pub const LEASE_RENEW: &str = lua!("lease_renew");
/// The beat lease: release when held.
pub const LEASE_RELEASE: &str = lua!("lease_release");
/// Celery beat (funcscale-celery's `GuardedScheduler`, which ships a copy): may this beat send
/// this tick of a schedule entry? Checks the lease value (fencing token) and that the tick was
/// not sent yet ([`crate::Keys::celery_beat_sent`]), and records it.
pub const CELERY_BEAT_SEND: &str = lua!("celery_beat_send");
/// The schedules registry: add or replace entries, keeping M per minute exact.
pub const SCHEDULES_ADD: &str = lua!("schedules_add");
/// The schedules registry: remove entries, keeping M per minute exact.
pub const SCHEDULES_REMOVE: &str = lua!("schedules_remove");

/// Workers: move the next task of the first non-empty queue to the slot's in-flight list of
/// that queue (and the list into that queue's running set); KEYS are (queue, in-flight list,
/// running set) triples. Idempotent: a task already in one of the lists (a re-sent call) is
/// returned again.
pub const FETCH: &str = lua!("fetch");
/// Workers: after a blocking move, enter the in-flight list in the queue's running set.
pub const CLAIM: &str = lua!("claim");
/// Workers: record an attempt as started while it is still in flight.
pub const STARTED: &str = with_record_lib!("started");
/// Workers: acknowledge, retry or dead-letter a task; its record and its destination.
pub const FINISH: &str = with_record_lib!("finish");
/// Workers: put an in-flight task back at the head of its queue (drain, reaper, sweep).
pub const REQUEUE: &str = with_record_lib!("requeue");
/// Workers: the reaper's upgrade pass: put a task of an earlier version's one in-flight list
/// per slot ([`crate::Keys::inflight`]) back (touches several hash slots: not on a cluster).
pub const REQUEUE_LEGACY: &str = with_record_lib!("requeue_legacy");
/// Workers: the reaper takes a dead slot's empty in-flight list of a queue out of the queue's
/// running set.
pub const RELEASE: &str = lua!("release");
/// Workers: move due retries from the delayed set to the queue.
pub const PROMOTE: &str = lua!("promote");
/// Workers (the upgrade pass) and funcscale-celery: forget a dead slot of the registry of
/// earlier versions ([`crate::Keys::workers`]) once its in-flight list is empty.
pub const FORGET: &str = with_record_lib!("forget");
/// Workers: forget a dead slot of the registry ([`crate::Keys::slots`]) and its hash.
pub const FORGET2: &str = lua!("forget2");
/// Workers: the task time (decaying average and histogram) in the stats hash.
pub const RECORD_DURATION: &str = lua!("record_duration");
/// Workers: sample the running tasks into the current minute's counts.
pub const SAMPLE_EXECUTING: &str = lua!("sample_executing");

/// The operator: Celery tasks delivered but not acknowledged (kombu's `unacked` hash), per
/// queue.
pub const CELERY_UNACKED: &str = lua!("celery_unacked");

/// Records: walk one index on the server (`tasks list`).
pub const SCAN_INDEX: &str = lua!("scan_index");
/// Records: move dead letters back to their queue (`dead-letters requeue`).
pub const REQUEUE_DEAD: &str = with_record_lib!("requeue_dead");
/// Records: apply a queue's retention (`tasks trim`).
pub const TRIM: &str = with_record_lib!("trim");

/// Outbox: claim due deliveries for a lease.
pub const OUTBOX_CLAIM: &str = lua!("outbox_claim");
/// Outbox: settle a delivery (delivered, rescheduled or parked).
pub const OUTBOX_SETTLE: &str = lua!("outbox_settle");
/// Outbox: move parked deliveries back (`outbox requeue`).
pub const OUTBOX_REQUEUE_PARKED: &str = lua!("outbox_requeue_parked");
/// Outbox: deliver a [`crate::ForwardItem`] into its destination queue (in that queue's slot),
/// at most once per delivery id ([`crate::Keys::fwd_marker`]).
pub const FORWARD: &str = with_record_lib!("forward");

/// The operator: the oldest RQ job's `enqueued_at` (see `foreign::rq_oldest_cmd`).
pub const RQ_OLDEST: &str = lua!("rq_oldest");

/// The operator: a Redis Stream consumer group's lag, pending entries and first undelivered
/// entry (see `foreign::stream_group_cmd`).
pub const STREAM_GROUP: &str = lua!("stream_group");

/// Every script, by file name (for the tests).
pub const ALL: [(&str, &str); 31] = [
    ("record_lib", RECORD_LIB),
    ("enqueue", ENQUEUE),
    ("beat_fire", BEAT_FIRE),
    ("lease_acquire", LEASE_ACQUIRE),
    ("lease_renew", LEASE_RENEW),
    ("lease_release", LEASE_RELEASE),
    ("celery_beat_send", CELERY_BEAT_SEND),
    ("schedules_add", SCHEDULES_ADD),
    ("schedules_remove", SCHEDULES_REMOVE),
    ("fetch", FETCH),
    ("claim", CLAIM),
    ("started", STARTED),
    ("finish", FINISH),
    ("requeue", REQUEUE),
    ("requeue_legacy", REQUEUE_LEGACY),
    ("release", RELEASE),
    ("promote", PROMOTE),
    ("forget", FORGET),
    ("forget2", FORGET2),
    ("record_duration", RECORD_DURATION),
    ("sample_executing", SAMPLE_EXECUTING),
    ("celery_unacked", CELERY_UNACKED),
    ("scan_index", SCAN_INDEX),
    ("requeue_dead", REQUEUE_DEAD),
    ("trim", TRIM),
    ("outbox_claim", OUTBOX_CLAIM),
    ("outbox_settle", OUTBOX_SETTLE),
    ("outbox_requeue_parked", OUTBOX_REQUEUE_PARKED),
    ("forward", FORWARD),
    ("rq_oldest", RQ_OLDEST),
    ("stream_group", STREAM_GROUP),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Keys, TaskStatus};

    /// The integer a `local NAME = <n>` line of a script sets.
    fn lua_const(src: &str, name: &str) -> u64 {
        let line = src
            .lines()
            .find_map(|l| l.strip_prefix(&format!("local {name} = ")))
            .unwrap_or_else(|| panic!("no `local {name}` in the script"));
        line.trim().parse().expect("an integer")
    }

    #[test]
    fn the_scripts_constants_are_the_crates() {
        assert_eq!(
            lua_const(RECORD_LIB, "FS_RECORD_MAX_AGE_MS"),
            crate::RECORD_MAX_AGE_MS
        );
        assert_eq!(
            lua_const(RECORD_LIB, "FS_RECORD_MAX_COUNT"),
            crate::RECORD_MAX_COUNT
        );
        assert_eq!(
            lua_const(RECORD_LIB, "FS_COUNTS_RETENTION_MS"),
            crate::COUNTS_RETENTION_MS
        );
        assert_eq!(
            lua_const(RECORD_LIB, "FS_RECORD_TRIM_EVERY"),
            crate::RECORD_TRIM_EVERY
        );
        assert_eq!(
            lua_const(RECORD_LIB, "FS_OUTBOX_LEASE_MS"),
            crate::OUTBOX_LEASE_MS
        );
        let bounds = RECORD_DURATION
            .lines()
            .find_map(|l| l.strip_prefix("local bounds = {"))
            .and_then(|l| l.strip_suffix('}'))
            .expect("the bucket bounds");
        let bounds: Vec<u64> = bounds.split(", ").map(|b| b.parse().unwrap()).collect();
        assert_eq!(bounds, crate::DURATION_BUCKETS_MS);
    }

    #[test]
    fn no_placeholders_and_no_key_spelling_outside_the_library() {
        for (name, src) in ALL {
            assert!(!src.contains("__"), "{name}: a placeholder");
            let body = src.strip_prefix(RECORD_LIB).unwrap_or(src);
            if name == "record_lib" {
                continue;
            }
            for part in [
                ":q:",
                ":task:",
                ":tasks:",
                ":counts:",
                ":stats:",
                ":outbox",
                ":queue-config:",
                ":running:",
            ] {
                assert!(
                    !body.contains(part),
                    "{name} spells a key ({part}): use KEYS or fs_k_*"
                );
            }
        }
    }

    /// The library's key functions against [`Keys`], run on the real Redis.
    #[test]
    fn library_keys_are_the_crates() {
        let Ok(mut con) =
            redis::Client::open("redis://127.0.0.1:6379/").and_then(|c| c.get_connection())
        else {
            panic!("Redis at 127.0.0.1:6379 (make redis)");
        };
        let probe = format!(
            "{RECORD_LIB}\nlocal P = ARGV[1]\nreturn {{fs_k_queue(P, 'a'), fs_k_stats(P, 'a'), fs_k_task(P, 'a', 'i'), fs_k_task_legacy(P, 'i'), \
             fs_k_tasks_status(P, 'a', 'dead'), fs_k_tasks_func(P, 'a', 'f'), fs_k_tasks_ids(P, 'a'), \
             fs_k_counts(P, 'a', 180001), fs_k_queue_config(P, 'a'), fs_k_queue_outbox(P, 'a'), fs_k_running(P, 'a'), fs_k_queue_outbox(P, '{{ns.a}}'), \
             fs_k_fwd(P, '{{ns.a}}', 'i:success'), fs_k_queue_outbox(P, '{{a}}'), fs_k_queue_outbox(P, '{{.}}'), \
             fs_k_queue_outbox(P, '{{a.b'), fs_k_queue_outbox(P, '{{}}'), fs_k_queue_outbox(P, 'a.b}}')}}"
        );
        let got: Vec<String> = redis::Script::new(&probe)
            .arg("pfx")
            .invoke(&mut con)
            .unwrap();
        let k = Keys::new("pfx");
        assert_eq!(
            got,
            [
                k.queue("a"),
                k.stats("a"),
                k.task("a", "i"),
                k.task_legacy("i"),
                k.tasks_status("a", TaskStatus::Dead),
                k.tasks_func("a", "f"),
                k.tasks_ids("a"),
                k.counts("a", 3),
                k.queue_config("a"),
                k.queue_outbox("a"),
                k.running("a"),
                k.queue_outbox("{ns.a}"),
                k.fwd_marker("{ns.a}", "i:success"),
                k.queue_outbox("{a}"),
                k.queue_outbox("{.}"),
                k.queue_outbox("{a.b"),
                k.queue_outbox("{}"),
                k.queue_outbox("a.b}"),
            ]
        );
    }

    #[test]
    fn the_shebang_is_the_strict_scripts_feature() {
        for (name, src) in ALL {
            assert_eq!(
                src.starts_with("#!lua\n"),
                cfg!(feature = "strict-scripts"),
                "{name}"
            );
            assert!(src.matches("#!lua").count() <= 1, "{name}");
        }
    }

    fn redis() -> redis::Connection {
        let Ok(con) =
            redis::Client::open("redis://127.0.0.1:6379/").and_then(|c| c.get_connection())
        else {
            panic!("Redis at 127.0.0.1:6379 (make redis)");
        };
        con
    }

    /// A key prefix of this test alone; its keys are deleted on drop.
    struct Scratch(String);

    impl Scratch {
        fn new(name: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            Scratch(format!("m9-{name}-{}-{nanos}", std::process::id()))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let mut con = redis();
            let ks: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.0))
                .query(&mut con)
                .unwrap_or_default();
            if !ks.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(ks).query(&mut con);
            }
        }
    }

    /// A re-sent enqueue (a cluster client re-sends after a timeout or a redirection) pushes,
    /// records and counts nothing twice; the same id enqueued at another time is pushed again.
    #[test]
    fn enqueue_re_sent_pushes_once() {
        let scratch = Scratch::new("enqueue");
        let k = Keys::new(scratch.0.as_str());
        let mut con = redis();
        let script = redis::Script::new(ENQUEUE);
        let q = "{ns.jobs}";
        let send = |con: &mut redis::Connection, now: u64| -> u64 {
            let mut inv = script.key(k.queue(q));
            inv.key(k.stats(q)).arg(k.prefix()).arg(q).arg(now);
            for id in ["a", "b"] {
                let e = crate::Envelope::new(id, "f", q, now);
                inv.arg(e.to_json()).arg(id).arg("f").arg("");
            }
            inv.invoke(con).unwrap()
        };
        for _ in 0..2 {
            assert_eq!(send(&mut con, 120_000), 2);
        }
        let enqueued: u64 = redis::cmd("HGET")
            .arg(k.stats(q))
            .arg("enqueued")
            .query(&mut con)
            .unwrap();
        assert_eq!(enqueued, 2);
        let submitted: u64 = redis::cmd("HGET")
            .arg(k.counts(q, 2))
            .arg("submitted")
            .query(&mut con)
            .unwrap();
        assert_eq!(submitted, 2);
        assert_eq!(send(&mut con, 120_001), 4, "a new enqueue of the same ids");
    }

    /// fetch.lua returns a task left in the slot's in-flight list (a move whose reply was
    /// lost) before taking one, entering its list in the running set; `recover` only does that
    /// (a queue's task stays there), and says `false` when the lists are empty.
    #[test]
    fn fetch_returns_a_left_task_and_recover_takes_none() {
        let scratch = Scratch::new("fetch");
        let k = Keys::new(scratch.0.as_str());
        let mut con = redis();
        let script = redis::Script::new(FETCH);
        let (a, b) = ("{ns.a}", "{ns.b}");
        let fetch = |con: &mut redis::Connection, mode: Option<&str>| {
            let mut inv = script.prepare_invoke();
            for q in [a, b] {
                inv.key(k.queue(q))
                    .key(k.inflight_q(q, "w-1.0"))
                    .key(k.running(q));
            }
            inv.arg(5_000u64);
            if let Some(m) = mode {
                inv.arg(m);
            }
            inv.invoke::<Option<(String, u64)>>(con).unwrap()
        };
        let push = |con: &mut redis::Connection, key: &str, v: &str| {
            let _: () = redis::cmd("LPUSH").arg(key).arg(v).query(con).unwrap();
        };
        push(&mut con, &k.queue(a), "a1");
        assert_eq!(
            fetch(&mut con, Some("recover")),
            None,
            "nothing left: none taken"
        );
        // `b`'s move whose reply was lost (a BLMOVE: its list is not in the running set)
        push(&mut con, &k.inflight_q(b, "w-1.0"), "b1");
        assert_eq!(fetch(&mut con, Some("recover")), Some(("b1".into(), 2)));
        let score: Option<u64> = redis::cmd("ZSCORE")
            .arg(k.running(b))
            .arg(k.inflight_q(b, "w-1.0"))
            .query(&mut con)
            .unwrap();
        assert_eq!(score, Some(5_000), "the list entered the running set");
        // the normal fetch returns it too, before `a`'s task
        assert_eq!(fetch(&mut con, None), Some(("b1".into(), 2)));
        let len: u64 = redis::cmd("LLEN").arg(k.queue(a)).query(&mut con).unwrap();
        assert_eq!(len, 1, "a's task is still queued");
        let _: () = redis::cmd("DEL")
            .arg(k.inflight_q(b, "w-1.0"))
            .query(&mut con)
            .unwrap();
        assert_eq!(fetch(&mut con, None), Some(("a1".into(), 1)));
    }

    /// A re-sent `started` counts the start once.
    #[test]
    fn started_re_sent_counts_once() {
        let scratch = Scratch::new("started");
        let k = Keys::new(scratch.0.as_str());
        let mut con = redis();
        let q = "{ns.jobs}";
        let inflight = k.inflight_q(q, "w-1.0");
        let raw = crate::Envelope::new("a", "f", q, 60_000).to_json();
        let _: () = redis::cmd("LPUSH")
            .arg(&inflight)
            .arg(&raw)
            .query(&mut con)
            .unwrap();
        let script = redis::Script::new(STARTED);
        for _ in 0..2 {
            let n: i64 = script
                .key(&inflight)
                .arg(k.prefix())
                .arg(&raw)
                .arg("w-1.0")
                .arg(60_500u64)
                .invoke(&mut con)
                .unwrap();
            assert_eq!(n, 1);
        }
        let started: u64 = redis::cmd("HGET")
            .arg(k.counts(q, 1))
            .arg("started")
            .query(&mut con)
            .unwrap();
        assert_eq!(started, 1);
        let status: String = redis::cmd("HGET")
            .arg(k.task(q, "a"))
            .arg("status")
            .query(&mut con)
            .unwrap();
        assert_eq!(status, "started");
    }
}
