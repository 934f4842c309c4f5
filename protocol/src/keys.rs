//! Key names.

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "funcscale";

/// Check a key prefix given on a command line (`--prefix`, `--key-prefix`): not empty, no
/// whitespace, and no `{`: Redis Cluster hashes the part of a key between its first `{` and the
/// next `}`, so a `{` in the prefix would start every key's hash tag and a queue's keys would no
/// longer share one hash slot (its scripts would fail with `CROSSSLOT`).
pub fn parse_prefix(p: &str) -> Result<String, String> {
    if p.is_empty() {
        return Err("the key prefix must not be empty".into());
    }
    if p.contains('{') {
        return Err(format!(
            "the key prefix {p:?} contains '{{': it would start the Redis Cluster hash tag of every key (a queue's keys would no longer share a slot)"
        ));
    }
    if p.contains(char::is_whitespace) {
        return Err(format!("the key prefix {p:?} contains whitespace"));
    }
    Ok(p.to_string())
}
/// A worker whose heartbeat (its score in [`Keys::slots`]) is older than this is dead; its
/// in-flight tasks are recovered.
pub const WORKER_TTL_MS: u64 = 15_000;

/// Number of Redis Cluster hash slots.
pub const SLOTS: u16 = 16384;

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM: polynomial 0x1021, initial value 0)
/// of its hash tag, mod [`SLOTS`]. The hash tag is what lies between the first `{` and the
/// first `}` after it when that is not empty; otherwise the whole key is hashed (Redis'
/// `keyHashSlot`). Two keys share a slot — and one script may touch both on a cluster — when
/// they have the same tag.
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    crc16_xmodem(tagged.unwrap_or(bytes)) % SLOTS
}

/// CRC16-XMODEM (CCITT polynomial 0x1021, initial value 0, no reflection, no final XOR): the
/// checksum Redis Cluster hashes keys with.
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Key names under one prefix, for the workers of one namespace ([`Keys::in_namespace`])
/// or, without one, as earlier versions named them.
///
/// Per-queue keys carry the queue id (which names the namespace). The keys that are not a
/// queue's — the worker registry ([`Keys::workers`], [`Keys::worker`]), the in-flight lists
/// ([`Keys::inflight`]) — carry the namespace of the keys' scope: worker ids come from pod
/// names, which repeat across namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    namespace: Option<String>,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    /// Keys under `prefix` (no trailing colon).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            namespace: None,
        }
    }

    /// The same keys for the workers of `namespace` (`None`: the keys of earlier versions,
    /// shared by every namespace).
    pub fn in_namespace(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace.filter(|n| !n.is_empty());
        self
    }

    /// The namespace of the scope, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The same prefix without a namespace: the worker registry of earlier versions, which a
    /// namespaced worker still reaps (its dead slots' tasks are recovered after an upgrade).
    pub fn unscoped(&self) -> Self {
        Self::new(self.prefix.clone())
    }

    /// `<prefix>:<what>:{<namespace>}` in a namespace's scope, else `<prefix>:<what>`.
    fn scoped(&self, what: &str) -> String {
        match &self.namespace {
            Some(ns) => format!("{}:{what}:{{{ns}}}", self.prefix),
            None => format!("{}:{what}", self.prefix),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The id of FuncQueue `name` in `namespace`: the `<queue>` of every per-queue key
    /// (`{<namespace>.<name>}`), so same-named queues of two namespaces never share a key.
    /// The braces are a Redis Cluster hash tag: every key of one queue hashes to one slot.
    /// Namespaces are DNS labels (no dots), so the id names its namespace unambiguously
    /// ([`Keys::queue_id_namespace`]).
    pub fn queue_id(namespace: &str, name: &str) -> String {
        format!("{{{namespace}.{name}}}")
    }

    /// The namespace a [`Keys::queue_id`] belongs to; `None` for a legacy id (the bare
    /// queue name of a queue with `legacyKeys`).
    pub fn queue_id_namespace(id: &str) -> Option<&str> {
        let inner = id.strip_prefix('{')?.strip_suffix('}')?;
        inner.split_once('.').map(|(ns, _)| ns)
    }

    /// The FuncQueue name of a [`Keys::queue_id`] (a legacy id is the name): what metrics
    /// label a queue with, next to the namespace Prometheus adds.
    pub fn queue_name(id: &str) -> &str {
        id.strip_prefix('{')
            .and_then(|i| i.strip_suffix('}'))
            .and_then(|i| i.split_once('.'))
            .map_or(id, |(_, name)| name)
    }

    /// Waiting tasks of `queue` (a [`Keys::queue_id`], or a legacy bare name).
    pub fn queue(&self, queue: &str) -> String {
        format!("{}:q:{queue}", self.prefix)
    }

    /// In-flight tasks of one worker process (of the scope's namespace).
    pub fn inflight(&self, worker: &str) -> String {
        format!("{}:{worker}", self.scoped("inflight"))
    }

    /// In-flight tasks of worker slot `slot` taken from `queue` (layout 2): one list per
    /// queue a slot serves (at most one of them holds a task), in the queue's hash tag, so
    /// every script that moves a task of `queue` touches one Redis Cluster slot. A legacy
    /// queue id (a bare name, no tag) of a namespaced scope also names the namespace:
    /// worker ids come from pod names, which repeat across namespaces.
    pub fn inflight_q(&self, queue: &str, slot: &str) -> String {
        match (&self.namespace, Self::queue_id_namespace(queue)) {
            (Some(ns), None) => format!("{}:inflight:{{{ns}}}:{queue}:{slot}", self.prefix),
            _ => format!("{}:inflight:{queue}:{slot}", self.prefix),
        }
    }

    /// The slot id of an in-flight list key of this scope, e.g. a member of
    /// [`Keys::running`]: either shape, [`Keys::inflight_q`] (layout 2) or [`Keys::inflight`]
    /// (earlier versions; still written by funcscale-celery's slots). `None` for a key of
    /// another prefix or namespace.
    pub fn inflight_slot<'a>(&self, key: &'a str) -> Option<&'a str> {
        self.parse_inflight(key).map(|(_, slot)| slot)
    }

    /// An in-flight list key of this scope split into its queue (`None`: the one list per
    /// slot of earlier versions, [`Keys::inflight`]) and slot id.
    pub fn parse_inflight<'a>(&self, key: &'a str) -> Option<(Option<&'a str>, &'a str)> {
        let rest = key
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":inflight:")?;
        // a slot id has no colon
        let (middle, slot) = match rest.rsplit_once(':') {
            Some((m, s)) => (Some(m), s),
            None => (None, rest),
        };
        if slot.is_empty() {
            return None;
        }
        let tag = self.namespace.as_ref().map(|ns| format!("{{{ns}}}"));
        match (middle, &self.namespace, tag) {
            // earlier versions: `inflight:<slot>` / `inflight:{ns}:<slot>`
            (None, None, _) => Some((None, slot)),
            (Some(m), Some(_), Some(t)) if m == t => Some((None, slot)),
            // layout 2, a queue of this namespace: `inflight:{ns.q}:<slot>`
            (Some(m), Some(ns), _) if Self::queue_id_namespace(m) == Some(ns.as_str()) => {
                Some((Some(m), slot))
            }
            // layout 2, a legacy queue id: `inflight:{ns}:<queue>:<slot>` / `inflight:<queue>:<slot>`
            (Some(m), Some(_), Some(t)) => m
                .strip_prefix(t.as_str())?
                .strip_prefix(':')
                .filter(|q| !q.is_empty() && Self::queue_id_namespace(q).is_none())
                .map(|q| (Some(q), slot)),
            (Some(m), None, _) => (!m.is_empty() && !m.starts_with('{')).then_some((Some(m), slot)),
            _ => None,
        }
    }

    /// Tasks running now from `queue`: a zset of the in-flight list keys
    /// ([`Keys::inflight_q`]) of the slots running one, scored by when the slot fetched it
    /// (ms). The worker's scripts keep it in step with the in-flight lists: fetch adds,
    /// finish and requeue (drain, reaper) remove, the reaper's release of a dead slot's
    /// empty list and the running-set sweep clean up.
    pub fn running(&self, queue: &str) -> String {
        format!("{}:running:{queue}", self.prefix)
    }

    /// Tasks waiting for a retry (zset scored by due time in ms).
    pub fn delayed(&self, queue: &str) -> String {
        format!("{}:delayed:{queue}", self.prefix)
    }

    /// Dead letters of `queue`.
    pub fn dead(&self, queue: &str) -> String {
        format!("{}:dead:{queue}", self.prefix)
    }

    /// Stats hash of `queue` (see [`crate::StatsField`]).
    pub fn stats(&self, queue: &str) -> String {
        format!("{}:stats:{queue}", self.prefix)
    }

    /// The worker registry of earlier versions (layout 1): slots scored by last heartbeat
    /// (ms). Read by the reaper only, to recover an old worker's in-flight list
    /// ([`Keys::inflight`]) after a rolling update (and written by funcscale-celery's slots).
    pub fn workers(&self) -> String {
        self.scoped("workers")
    }

    /// The worker registry (layout 2): live worker slots of the scope's namespace, scored by
    /// last heartbeat (ms). A new key, so an old worker's reaper never sees, and never
    /// forgets, a slot of this layout.
    pub fn slots(&self) -> String {
        self.scoped("slots")
    }

    /// Description hash of one worker slot (of the scope's namespace): `pod`, `queues`,
    /// `processes`, `heartbeat_ms`, `layout` (`2`). Layout 2 sets no TTL: the reaper reads a
    /// dead slot's queues there, then deletes it.
    pub fn worker(&self, worker: &str) -> String {
        format!("{}:{worker}", self.scoped("worker"))
    }

    /// The stop mark of pod `pod` in `namespace` (string: why, with a TTL): the operator sets
    /// it on the pods a scale-down removes; their workers take no new task and report not
    /// ready while it exists ([`crate::stop`]).
    pub fn stop(&self, namespace: &str, pod: &str) -> String {
        format!("{}:stop:{namespace}/{pod}", self.prefix)
    }

    /// Dynamic schedules registry of `queue`.
    pub fn schedules(&self, queue: &str) -> String {
        format!("{}:schedules:{queue}", self.prefix)
    }

    /// Executions per minute of the registry's schedules for `queue` (M).
    pub fn schedules_per_period(&self, queue: &str) -> String {
        format!("{}:schedules:{queue}:per-period", self.prefix)
    }

    /// Queues of `namespace` that have a dynamic schedules registry (`None`: the set of
    /// earlier versions, and of queues whose id names no namespace: [`Keys::queue_id_namespace`]).
    pub fn schedule_queues(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) => format!("{}:schedules-queues:{{{ns}}}", self.prefix),
            None => format!("{}:schedules-queues", self.prefix),
        }
    }

    /// The beat lease of `namespace` (one beat per namespace fires); `None`: the one lease
    /// of earlier versions, shared by every namespace on the Redis.
    pub fn beat_lease(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) => format!("{}:beat:{{{ns}}}:lease", self.prefix),
            None => format!("{}:beat:lease", self.prefix),
        }
    }

    /// The beat fencing-token counter of `namespace` (see [`Keys::beat_lease`]).
    pub fn beat_fence(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) => format!("{}:beat:{{{ns}}}:fence", self.prefix),
            None => format!("{}:beat:fence", self.prefix),
        }
    }

    /// The Celery beat ticks sent under the beat lease of `namespace` (hash: schedule entry name
    /// -> last sent tick, unix ms): `lua/celery_beat_send.lua` checks and records a tick there,
    /// with the lease, before funcscale-celery's `GuardedScheduler` sends it, so two Celery beats
    /// never send one tick twice. Next to the lease, in its hash tag. `None`: the key beside the
    /// lease of earlier versions.
    pub fn celery_beat_sent(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) => format!("{}:beat:{{{ns}}}:celery-sent", self.prefix),
            None => format!("{}:beat:celery-sent", self.prefix),
        }
    }

    /// Last fired tick of each schedule of `queue`.
    pub fn beat_last(&self, queue: &str) -> String {
        format!("{}:beat:last:{queue}", self.prefix)
    }

    /// Record of task `id` of `queue`: two tenants' tasks of the same id (a producer's own
    /// ids, a beat tick's) are two records. Lookups by id name the queue (`tasks show
    /// --queue`), or walk the queues of a namespace (`kubectl funcscale tasks show`).
    pub fn task(&self, queue: &str, id: &str) -> String {
        format!("{}:task:{queue}:{id}", self.prefix)
    }

    /// Record of task `id` as earlier versions keyed it (by id alone, shared by every
    /// queue): read when a queue's record is missing (if its `queue` field names that queue),
    /// moved under the queue when the task is written again, deleted with the queue's
    /// records by retention. No hash tag: the scripts look at it only where the node holds it
    /// (never on a Redis Cluster, where it cannot exist).
    pub fn task_legacy(&self, id: &str) -> String {
        format!("{}:task:{id}", self.prefix)
    }

    /// The per-queue time index earlier versions wrote (no longer written; deleted by
    /// the trim script), and the stem of the other record index keys.
    pub fn tasks(&self, queue: &str) -> String {
        format!("{}:tasks:{queue}", self.prefix)
    }

    /// Record ids of `queue` in `status`, by last update (ms).
    pub fn tasks_status(&self, queue: &str, status: crate::TaskStatus) -> String {
        format!("{}:tasks:{queue}:s:{}", self.prefix, status.name())
    }

    /// Record ids of `queue` running `func` (membership; scored by when the record got it).
    pub fn tasks_func(&self, queue: &str, func: &str) -> String {
        format!("{}:tasks:{queue}:f:{func}", self.prefix)
    }

    /// Lexicographic index of the record ids of `queue`.
    pub fn tasks_ids(&self, queue: &str) -> String {
        format!("{}:tasks:{queue}:ids", self.prefix)
    }

    /// Counts of `queue` in the minute starting at `minute` × 60 s (unix).
    pub fn counts(&self, queue: &str, minute: u64) -> String {
        format!("{}:counts:{queue}:{minute}", self.prefix)
    }

    /// Settings of `queue` ([`crate::QueueConfig`]).
    pub fn queue_config(&self, queue: &str) -> String {
        format!("{}:queue-config:{queue}", self.prefix)
    }

    /// Pending deliveries to the destinations of `queue`'s tasks (a zset by due time, ms):
    /// URL deliveries ([`crate::OutboxItem`]) and tasks for a destination queue
    /// ([`crate::ForwardItem`]), staged by the finish script in the queue's hash tag (one
    /// Redis Cluster slot with the task) and delivered by the workers of the queue:
    /// `<prefix>:outbox:{<ns>.<name>}`. A queue id has a dot and a namespace none, so this
    /// never names [`Keys::outbox`]; a legacy id (no namespace: a bare name, or any id
    /// [`Keys::queue_id_namespace`] does not read) gets `<prefix>:outbox:q:<id>`, so no
    /// name (`dead`, `{x}`) can meet an outbox of earlier versions.
    pub fn queue_outbox(&self, queue: &str) -> String {
        match Self::queue_id_namespace(queue) {
            Some(_) => format!("{}:outbox:{queue}", self.prefix),
            None => format!("{}:outbox:q:{queue}", self.prefix),
        }
    }

    /// Deliveries of `queue`'s outbox that failed for good (list), until replayed or purged.
    pub fn queue_outbox_dead(&self, queue: &str) -> String {
        format!("{}:dead", self.queue_outbox(queue))
    }

    /// The forward marker of delivery `id` into destination queue `queue` (string, 24 h TTL):
    /// set by `forward.lua` with the enqueue, in the destination's hash tag, so a delivery
    /// re-sent after a lost settle enqueues nothing twice.
    pub fn fwd_marker(&self, queue: &str, id: &str) -> String {
        format!("{}:fwd:{queue}:{id}", self.prefix)
    }

    /// Pending deliveries to URL destinations of the scope's namespace as earlier versions
    /// staged them (one zset per namespace, another hash tag than its queues): no longer
    /// written; the workers drain it until it is empty ([`Keys::queue_outbox`] replaces it).
    pub fn outbox(&self) -> String {
        self.scoped("outbox")
    }

    /// Deliveries of the scope's namespace that failed for good (earlier versions; still
    /// listed, replayed into [`Keys::outbox`] and purged).
    pub fn outbox_dead(&self) -> String {
        format!("{}:dead", self.scoped("outbox"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_redis_clusters_hash_slot() {
        // CRC16-XMODEM's check value ("123456789" → 0x31C3)
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(slot("123456789"), 0x31C3);
        // CLUSTER KEYSLOT on redis-server 7.0 (e2e/tests/redis_cluster_harness.rs compares
        // many more with a running cluster)
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("somekey"), 11058);
        assert_eq!(slot(""), 0);
        assert_eq!(slot("{a}"), 15495);
        assert_eq!(slot("{a.jobs}"), 14395);
        assert_eq!(slot("{a.mail}"), 3379);
        assert_eq!(slot("funcscale:beat:lease"), 15419);
        assert_eq!(slot("funcscale:beat:fence"), 5591);
        // the hash tag: between the first `{` and the next `}`, when not empty
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("foo{bar}{zap}"), slot("bar"));
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
        assert_eq!(slot("x{a}"), slot("y{a}z"));
        // an empty or unclosed tag: the whole key
        assert_eq!(slot("foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % SLOTS);
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
        assert_eq!(slot("foo{bar"), crc16_xmodem(b"foo{bar") % SLOTS);
        assert_eq!(slot("foo}bar{"), crc16_xmodem(b"foo}bar{") % SLOTS);
        assert_eq!(slot("{}"), crc16_xmodem(b"{}") % SLOTS);
        // bytes, not chars
        assert_eq!(slot("{é}x"), crc16_xmodem("é".as_bytes()) % SLOTS);
        assert!(
            ["", "a", "{x}", "\u{10ffff}"]
                .iter()
                .all(|k| slot(k) < SLOTS)
        );
    }

    /// The names of the `Keys` methods that return a key (`pub fn ...(&self, ...) -> String`),
    /// read from this file: a key method added later must be classified below.
    fn key_fns() -> std::collections::BTreeSet<String> {
        let src = include_str!("keys.rs");
        let start = src.find("\nimpl Keys {").expect("impl Keys");
        let end = start + src[start..].find("\n}\n").expect("end of impl Keys");
        src[start..end]
            .split("pub fn ")
            .skip(1)
            // the signature, wherever rustfmt wraps it
            .map(|f| &f[..f.find('{').expect("fn body")])
            .filter(|sig| sig.contains("&self") && sig.contains("-> String"))
            .map(|sig| sig[..sig.find(['(', '<']).expect("fn name")].to_string())
            .collect()
    }

    /// Redis Cluster: a script or multi-key command may touch only keys of one hash slot.
    /// Every per-queue key carries the queue id `{<ns>.<name>}` as its hash tag, so every key
    /// of one queue hashes to the slot of its list; the keys of a namespace's scope carry
    /// `{<ns>}`. Keys that do not follow this today are listed as known exceptions, with the
    /// step of docs (`/work/notes/cluster-design.md` §6) that deals with them.
    #[test]
    fn every_per_queue_key_hashes_to_the_queues_slot() {
        type QueueKey = fn(&Keys, &str) -> Vec<String>;
        let per_queue: &[(&str, QueueKey)] = &[
            ("queue", |k, q| vec![k.queue(q)]),
            ("running", |k, q| vec![k.running(q)]),
            ("inflight_q", |k, q| {
                vec![k.inflight_q(q, "w-1-ab.0"), k.inflight_q(q, "{w}")]
            }),
            ("delayed", |k, q| vec![k.delayed(q)]),
            ("dead", |k, q| vec![k.dead(q)]),
            ("stats", |k, q| vec![k.stats(q)]),
            ("schedules", |k, q| vec![k.schedules(q)]),
            ("schedules_per_period", |k, q| {
                vec![k.schedules_per_period(q)]
            }),
            ("beat_last", |k, q| vec![k.beat_last(q)]),
            ("task", |k, q| {
                ["t1", "{x}", "a}b{c", "", "é"]
                    .iter()
                    .map(|id| k.task(q, id))
                    .collect()
            }),
            ("tasks", |k, q| vec![k.tasks(q)]),
            ("tasks_status", |k, q| {
                crate::TaskStatus::ALL
                    .iter()
                    .map(|s| k.tasks_status(q, *s))
                    .collect()
            }),
            ("tasks_func", |k, q| {
                ["send_mail", "{f}", "m.f:g"]
                    .iter()
                    .map(|f| k.tasks_func(q, f))
                    .collect()
            }),
            ("tasks_ids", |k, q| vec![k.tasks_ids(q)]),
            ("counts", |k, q| {
                [0, 29_000_000, u64::MAX]
                    .iter()
                    .map(|m| k.counts(q, *m))
                    .collect()
            }),
            ("queue_config", |k, q| vec![k.queue_config(q)]),
            ("queue_outbox", |k, q| vec![k.queue_outbox(q)]),
            ("queue_outbox_dead", |k, q| vec![k.queue_outbox_dead(q)]),
            ("fwd_marker", |k, q| {
                ["t1:success", "{x}:failure", "a}b{c:success"]
                    .iter()
                    .map(|id| k.fwd_marker(q, id))
                    .collect()
            }),
        ];
        type NsKey = fn(&Keys, &str) -> Vec<String>;
        // keys of a namespace's scope (`k` is `in_namespace(Some(ns))`)
        let per_namespace: &[(&str, NsKey)] = &[
            ("inflight", |k, _| {
                vec![k.inflight("w-1-ab.0"), k.inflight("{w}")]
            }),
            ("workers", |k, _| vec![k.workers()]),
            ("slots", |k, _| vec![k.slots()]),
            ("worker", |k, _| vec![k.worker("w-1-ab.0"), k.worker("{w}")]),
            ("outbox", |k, _| vec![k.outbox()]),
            ("outbox_dead", |k, _| vec![k.outbox_dead()]),
            ("beat_lease", |k, ns| vec![k.beat_lease(Some(ns))]),
            ("beat_fence", |k, ns| vec![k.beat_fence(Some(ns))]),
            ("celery_beat_sent", |k, ns| {
                vec![k.celery_beat_sent(Some(ns))]
            }),
            ("schedule_queues", |k, ns| vec![k.schedule_queues(Some(ns))]),
        ];
        // Known exceptions: keys with no hash tag (the whole key is hashed), so they share no
        // slot with anything. Not changed here; the design says what becomes of them.
        let exceptions: &[(&str, NsKey, &str)] = &[
            // one string per pod, only ever read or written alone; §2.6 / step 10 keeps the
            // keys and sends marks through `query_grouped` (one pipeline split by slot)
            (
                "stop",
                |k, ns| vec![k.stop(ns, "pod-1"), k.stop(ns, "pod-2")],
                "step 10",
            ),
            // records of earlier versions keyed by id alone; §2.5 / step 9: the scripts look
            // at one only where the node holds its slot (`fs_is_local`), so never on a
            // cluster (strict mode included): they cannot exist there
            ("task_legacy", |k, _| vec![k.task_legacy("t1")], "step 9"),
        ];
        // The same keys without a namespace (as earlier versions named them): untagged.
        // §2.1 / §2.3 (steps 4-6, 8): workers and beat on a cluster require a namespace.
        let unscoped = |k: &Keys| {
            vec![
                k.inflight("w.0"),
                k.workers(),
                k.slots(),
                k.worker("w.0"),
                k.inflight_q("jobs", "w.0"),
                k.outbox(),
                k.outbox_dead(),
                k.beat_lease(None),
                k.beat_fence(None),
                k.celery_beat_sent(None),
                k.schedule_queues(None),
            ]
        };
        // Legacy queue ids (a bare name: `legacyKeys`, adopted or hand-run queues): the
        // per-queue keys of one such queue spread over slots (`q:jobs` 5636, `stats:jobs`
        // 2090). §2.6 / step 10: the operator refuses them on a cluster.

        let mut classified: Vec<&str> = per_queue.iter().map(|(n, _)| *n).collect();
        classified.extend(per_namespace.iter().map(|(n, _)| *n));
        classified.extend(exceptions.iter().map(|(n, _, _)| *n));
        let classified: std::collections::BTreeSet<String> =
            classified.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            classified,
            key_fns(),
            "every key function of Keys is classified here (per queue, per namespace, or a \
             known exception)"
        );

        for prefix in ["funcscale", "t1", "a:b"] {
            for (ns, name) in [
                ("a", "jobs"),
                ("team-7", "mail"),
                ("x", "q.8"),
                ("n", "a}b"),
            ] {
                let k = Keys::new(prefix).in_namespace(Some(ns.to_string()));
                let q = Keys::queue_id(ns, name);
                let want = slot(&k.queue(&q));
                assert_eq!(want, slot(&q));
                for (f, keys) in per_queue {
                    for key in keys(&k, &q) {
                        assert_eq!(slot(&key), want, "{f}: {key} is not in the slot of {q}");
                    }
                }
                let ns_slot = slot(&format!("{{{ns}}}"));
                for (f, keys) in per_namespace {
                    for key in keys(&k, ns) {
                        assert_eq!(
                            slot(&key),
                            ns_slot,
                            "{f}: {key} is not in the slot of {{{ns}}}"
                        );
                    }
                }
                for (f, keys, _) in exceptions {
                    for key in keys(&k, ns) {
                        assert!(!key.contains('{'), "{f}: {key} has a hash tag now");
                    }
                }
                for key in unscoped(&k.unscoped()) {
                    assert!(!key.contains('{'), "{key} has a hash tag now");
                }
            }
        }
        let k = Keys::default();
        assert_ne!(slot(&k.queue("jobs")), slot(&k.stats("jobs")));
    }

    #[test]
    fn keys_share_the_prefix() {
        let k = Keys::new("t1");
        for key in [
            k.queue("a"),
            k.inflight("w"),
            k.delayed("a"),
            k.running("a"),
            k.dead("a"),
            k.stats("a"),
            k.workers(),
            k.worker("w"),
            k.schedules("a"),
            k.schedules_per_period("a"),
            k.beat_lease(None),
            k.beat_fence(None),
            k.beat_lease(Some("ns")),
            k.beat_fence(Some("ns")),
            k.celery_beat_sent(None),
            k.celery_beat_sent(Some("ns")),
            k.beat_last("a"),
            k.schedule_queues(None),
            k.schedule_queues(Some("ns")),
            k.task("a", "i"),
            k.task_legacy("i"),
            k.clone().in_namespace(Some("ns".into())).workers(),
            k.clone().in_namespace(Some("ns".into())).slots(),
            k.inflight_q("a", "w"),
            k.clone().in_namespace(Some("ns".into())).inflight("w"),
            k.stop("ns", "pod"),
        ] {
            assert!(key.starts_with("t1:"), "{key}");
        }
        assert_eq!(Keys::default().queue("q8"), "funcscale:q:q8");
    }

    #[test]
    fn inflight_keys_name_their_slot() {
        let k = Keys::new("t1");
        // layout 2: one list per queue, in the queue's hash tag; both shapes parse
        let a = k.clone().in_namespace(Some("a".into()));
        let (qa, qb) = (Keys::queue_id("a", "jobs"), Keys::queue_id("b", "jobs"));
        assert_eq!(a.inflight_q(&qa, "w.0"), "t1:inflight:{a.jobs}:w.0");
        assert_eq!(slot(&a.inflight_q(&qa, "w.0")), slot(&a.queue(&qa)));
        assert_eq!(
            a.parse_inflight(&a.inflight_q(&qa, "w.0")),
            Some((Some(qa.as_str()), "w.0"))
        );
        assert_eq!(a.parse_inflight(&a.inflight("w.0")), Some((None, "w.0")));
        assert_eq!(
            a.inflight_slot(&a.inflight_q(&qb, "w.0")),
            None,
            "another namespace's queue"
        );
        assert_eq!(a.inflight_slot(&k.inflight_q("jobs", "w.0")), None);
        assert_eq!(k.inflight_slot(&a.inflight_q(&qa, "w.0")), None);
        // a legacy queue id: the namespace is in the key (pod names repeat across namespaces)
        assert_eq!(a.inflight_q("jobs", "w.0"), "t1:inflight:{a}:jobs:w.0");
        assert_ne!(
            a.inflight_q("jobs", "w.0"),
            k.clone()
                .in_namespace(Some("b".into()))
                .inflight_q("jobs", "w.0")
        );
        assert_eq!(
            a.parse_inflight(&a.inflight_q("jobs", "w.0")),
            Some((Some("jobs"), "w.0"))
        );
        assert_eq!(
            k.parse_inflight(&k.inflight_q("jobs", "w.0")),
            Some((Some("jobs"), "w.0"))
        );
        assert_eq!(k.parse_inflight(&k.inflight("w.0")), Some((None, "w.0")));
        assert_eq!(a.inflight_slot("t1:inflight:{a}:w.0:"), None);
        assert_eq!(a.inflight_slot("t1:inflight:{a}::w.0"), None);
        assert_eq!(k.inflight_slot(&k.inflight("w-1-ab.3")), Some("w-1-ab.3"));
        assert_eq!(k.inflight_slot(&Keys::new("t2").inflight("w.0")), None);
        assert_eq!(k.inflight_slot("t1:inflight:"), None);
        assert_eq!(k.inflight_slot("t1:q:x"), None);
        let a = k.clone().in_namespace(Some("a".into()));
        assert_eq!(a.inflight_slot(&a.inflight("w.0")), Some("w.0"));
        assert_eq!(a.inflight_slot(&k.inflight("w.0")), None);
        assert_eq!(k.inflight_slot(&a.inflight("w.0")), None);
        assert_ne!(k.stop("a", "p"), k.stop("b", "p"));
    }

    #[test]
    fn queue_ids_separate_namespaces_and_name_them() {
        let k = Keys::default();
        let a = Keys::queue_id("a", "jobs");
        let b = Keys::queue_id("b", "jobs");
        assert_eq!(k.queue(&a), "funcscale:q:{a.jobs}");
        for f in [
            Keys::queue,
            Keys::delayed,
            Keys::running,
            Keys::dead,
            Keys::stats,
            Keys::schedules,
            Keys::schedules_per_period,
            Keys::beat_last,
            Keys::tasks,
            Keys::tasks_ids,
            Keys::queue_config,
        ] {
            assert_ne!(f(&k, &a), f(&k, &b));
            assert!(f(&k, &a).contains("{a.jobs}"), "{}", f(&k, &a));
        }
        assert_ne!(k.counts(&a, 1), k.counts(&b, 1));
        assert_eq!(Keys::queue_id_namespace(&a), Some("a"));
        assert_eq!(Keys::queue_id_namespace("jobs"), None);
        assert_eq!(Keys::queue_name(&a), "jobs");
        assert_eq!(Keys::queue_name("jobs"), "jobs");
        assert_ne!(k.beat_lease(Some("a")), k.beat_lease(Some("b")));
        assert_ne!(k.beat_fence(Some("a")), k.beat_fence(Some("b")));
        assert_eq!(k.beat_lease(None), "funcscale:beat:lease");
        // the Celery beat's sent ticks: per namespace, in the lease's hash tag (one script
        // touches both: one Redis Cluster slot)
        assert_ne!(k.celery_beat_sent(Some("a")), k.celery_beat_sent(Some("b")));
        assert_eq!(
            k.celery_beat_sent(Some("a")),
            "funcscale:beat:{a}:celery-sent"
        );
        assert!(k.beat_lease(Some("a")).contains("{a}"));
        assert_eq!(k.celery_beat_sent(None), "funcscale:beat:celery-sent");
        // records: the same task id in two tenants' queues is two records
        assert_ne!(k.task(&a, "t1"), k.task(&b, "t1"));
        assert_eq!(k.task(&a, "t1"), "funcscale:task:{a.jobs}:t1");
        assert_eq!(k.task_legacy("t1"), "funcscale:task:t1");
        assert_ne!(k.schedule_queues(Some("a")), k.schedule_queues(Some("b")));
        assert_eq!(k.schedule_queues(None), "funcscale:schedules-queues");
        // worker registry and in-flight lists: the same pod name in two namespaces
        let (ka, kb) = (
            k.clone().in_namespace(Some("a".into())),
            k.clone().in_namespace(Some("b".into())),
        );
        assert_ne!(ka.workers(), kb.workers());
        assert_ne!(ka.worker("w-1.0"), kb.worker("w-1.0"));
        assert_ne!(ka.inflight("w-1.0"), kb.inflight("w-1.0"));
        assert_eq!(ka.inflight("w-1.0"), "funcscale:inflight:{a}:w-1.0");
        assert_eq!(ka.unscoped().workers(), "funcscale:workers");
        assert_eq!(k.inflight("w-1.0"), "funcscale:inflight:w-1.0");
        assert_eq!(k.worker("w-1.0"), "funcscale:worker:w-1.0");
        // the outbox of URL deliveries: a tenant's results go to its own
        assert_ne!(ka.outbox(), kb.outbox());
        assert_ne!(ka.outbox_dead(), kb.outbox_dead());
        assert_eq!(ka.outbox(), "funcscale:outbox:{a}");
        assert_eq!(ka.outbox_dead(), "funcscale:outbox:{a}:dead");
        assert_eq!(k.outbox(), "funcscale:outbox");
        assert_eq!(k.outbox_dead(), "funcscale:outbox:dead");
        // per-queue outboxes (layout 2): never the namespace's of earlier versions
        assert_eq!(k.queue_outbox(&a), "funcscale:outbox:{a.jobs}");
        assert_eq!(k.queue_outbox_dead(&a), "funcscale:outbox:{a.jobs}:dead");
        assert_ne!(k.queue_outbox(&a), k.queue_outbox(&b));
        assert_ne!(k.queue_outbox(&a), ka.outbox());
        // legacy ids: never an outbox of earlier versions
        assert_eq!(k.queue_outbox("jobs"), "funcscale:outbox:q:jobs");
        assert_eq!(k.queue_outbox_dead("dead"), "funcscale:outbox:q:dead:dead");
        assert_ne!(k.queue_outbox("dead"), k.outbox_dead());
        assert_ne!(k.queue_outbox("{a}"), ka.outbox());
        assert_eq!(
            k.fwd_marker(&a, "t1:success"),
            "funcscale:fwd:{a.jobs}:t1:success"
        );
    }

    #[test]
    fn a_prefix_with_braces_or_whitespace_is_refused() {
        assert_eq!(parse_prefix("funcscale-prod").unwrap(), "funcscale-prod");
        assert_eq!(parse_prefix("a:b").unwrap(), "a:b");
        assert_eq!(
            parse_prefix("fs}").unwrap(),
            "fs}",
            "a lone '}}' starts no tag"
        );
        for bad in ["", "fs{x}", "fs{", "f s"] {
            assert!(parse_prefix(bad).is_err(), "{bad:?}");
        }
        assert!(parse_prefix("fs{").unwrap_err().contains("hash tag"));
    }
}
