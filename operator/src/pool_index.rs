//! Which pools serve which queue: an index kept from the same watch events as the pool store,
//! so that "the pools of queue q" is a lookup, not a scan of every pool (the poll loop asks it
//! for every queue whose numbers changed, the queue controller for every queue's consumers, the
//! pool controller for the pools sharing each of its queues).
//!
//! Applying an event says what it changed for others ([`Affected`]): the queues whose
//! consumers changed (their `Served` condition and `consumers` status) and the pools that must
//! be sized again (pools sharing a queue with a pool that came, went or changed its spec: their
//! share of the queue changed; Beat pools when a Beat pool came or went: the one-beat rule).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::crd::{FuncWorkerPool, PoolRole};
use crate::redis_metrics::QueueId;

/// `(namespace, name)` of a pool.
type PoolKey = (String, String);

/// What the index keeps of a pool.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    beat: bool,
    queues: Vec<String>,
    /// Any spec change (its capacity, and so its share of a queue, may have changed).
    generation: Option<i64>,
}

impl Entry {
    fn of(p: &FuncWorkerPool) -> Self {
        Self {
            beat: p.spec.role == PoolRole::Beat,
            queues: p.spec.queues.clone(),
            generation: p.metadata.generation,
        }
    }

    /// The queues this pool consumes (a Beat pool consumes none: it only enqueues).
    fn consumed(&self) -> impl Iterator<Item = &String> {
        self.queues.iter().filter(move |_| !self.beat)
    }
}

/// What an index change means for other objects.
#[derive(Debug, Default, PartialEq)]
pub struct Affected {
    /// Queues whose consuming pools changed.
    pub queues: BTreeSet<QueueId>,
    /// Pools to size again (`namespace`, `name`).
    pub pools: BTreeSet<PoolKey>,
}

impl Affected {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty() && self.pools.is_empty()
    }

    fn merge(&mut self, other: Affected) {
        self.queues.extend(other.queues);
        self.pools.extend(other.pools);
    }

    /// The pools as object references.
    pub fn pool_refs(&self) -> impl Iterator<Item = ObjectRef<FuncWorkerPool>> + '_ {
        self.pools
            .iter()
            .map(|(ns, name)| ObjectRef::new(name).within(ns))
    }

    /// The queues as object references.
    pub fn queue_refs(&self) -> impl Iterator<Item = ObjectRef<crate::crd::FuncQueue>> + '_ {
        self.queues
            .iter()
            .map(|q| ObjectRef::new(&q.name).within(&q.namespace))
    }
}

#[derive(Default)]
struct Inner {
    pools: HashMap<PoolKey, Entry>,
    /// Worker pools listing each queue (names; the namespace is the queue's).
    workers: HashMap<QueueId, BTreeSet<String>>,
    /// Beat pools per namespace.
    beats: HashMap<String, BTreeSet<String>>,
    /// Pools listed since the last `Init` (a re-list), until its `InitDone`.
    relisted: Option<HashSet<PoolKey>>,
}

/// The pools serving each queue. Cheap to clone; clones share the index.
#[derive(Clone, Default)]
pub struct PoolIndex(Arc<RwLock<Inner>>);

impl PoolIndex {
    /// Apply a pool watch event (the same events the pool store gets).
    pub fn apply(&self, event: &watcher::Event<FuncWorkerPool>) -> Affected {
        let mut inner = self.0.write().expect("pool index lock");
        match event {
            watcher::Event::Apply(p) => inner.upsert(p),
            watcher::Event::InitApply(p) => {
                let key = key_of(p);
                if let Some(r) = inner.relisted.as_mut() {
                    r.insert(key);
                }
                inner.upsert(p)
            }
            watcher::Event::Delete(p) => inner.remove(&key_of(p)),
            watcher::Event::Init => {
                inner.relisted = Some(HashSet::new());
                Affected::default()
            }
            watcher::Event::InitDone => {
                let Some(listed) = inner.relisted.take() else {
                    return Affected::default();
                };
                let gone: Vec<PoolKey> = inner
                    .pools
                    .keys()
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                let mut affected = Affected::default();
                for k in gone {
                    affected.merge(inner.remove(&k));
                }
                affected
            }
        }
    }

    /// Worker pools listing `queue` in namespace `ns`, sorted by name.
    pub fn consumers(&self, ns: &str, queue: &str) -> Vec<String> {
        let inner = self.0.read().expect("pool index lock");
        inner
            .workers
            .get(&QueueId::new(ns, queue))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The pools that serve `queue` of namespace `ns`: the Worker pools listing it, and the
    /// Beat pools of the namespace (they carry its schedules).
    pub fn pools_for_queue(&self, ns: &str, queue: &str) -> Vec<ObjectRef<FuncWorkerPool>> {
        let inner = self.0.read().expect("pool index lock");
        let workers = inner.workers.get(&QueueId::new(ns, queue));
        let beats = inner.beats.get(ns);
        workers
            .into_iter()
            .flatten()
            .chain(beats.into_iter().flatten())
            .map(|name| ObjectRef::new(name).within(ns))
            .collect()
    }

    /// Namespaces that have pools, sorted.
    pub fn namespaces(&self) -> Vec<String> {
        let inner = self.0.read().expect("pool index lock");
        let set: BTreeSet<&String> = inner.pools.keys().map(|(ns, _)| ns).collect();
        set.into_iter().cloned().collect()
    }
}

fn key_of(p: &FuncWorkerPool) -> PoolKey {
    (p.namespace().unwrap_or_default(), p.name_any())
}

impl Inner {
    fn upsert(&mut self, p: &FuncWorkerPool) -> Affected {
        let key = key_of(p);
        let new = Entry::of(p);
        if self.pools.get(&key) == Some(&new) {
            return Affected::default();
        }
        let old = self.pools.insert(key.clone(), new.clone());
        self.changed(&key, old.as_ref(), Some(&new))
    }

    fn remove(&mut self, key: &PoolKey) -> Affected {
        match self.pools.remove(key) {
            Some(old) => self.changed(key, Some(&old), None),
            None => Affected::default(),
        }
    }

    /// Update the reverse maps for pool `key` going from `old` to `new`, and say who is
    /// affected.
    fn changed(&mut self, key: &PoolKey, old: Option<&Entry>, new: Option<&Entry>) -> Affected {
        let (ns, name) = key;
        let before: BTreeSet<&String> = old.into_iter().flat_map(Entry::consumed).collect();
        let after: BTreeSet<&String> = new.into_iter().flat_map(Entry::consumed).collect();
        let mut affected = Affected::default();
        for q in before.difference(&after) {
            let id = QueueId::new(ns.clone(), (*q).clone());
            if let Some(set) = self.workers.get_mut(&id) {
                set.remove(name);
                if set.is_empty() {
                    self.workers.remove(&id);
                }
            }
            affected.queues.insert(id);
        }
        for q in after.difference(&before) {
            let id = QueueId::new(ns.clone(), (*q).clone());
            self.workers
                .entry(id.clone())
                .or_default()
                .insert(name.clone());
            affected.queues.insert(id);
        }
        // the other Worker pools of every queue it served or serves: their share changed
        for q in before.union(&after) {
            if let Some(set) = self.workers.get(&QueueId::new(ns.clone(), (*q).clone())) {
                affected.pools.extend(
                    set.iter()
                        .filter(|n| *n != name)
                        .map(|n| (ns.clone(), n.clone())),
                );
            }
        }
        let (was_beat, is_beat) = (old.is_some_and(|e| e.beat), new.is_some_and(|e| e.beat));
        if was_beat
            && !is_beat
            && let Some(set) = self.beats.get_mut(ns)
        {
            set.remove(name);
            if set.is_empty() {
                self.beats.remove(ns);
            }
        }
        if is_beat {
            self.beats
                .entry(ns.clone())
                .or_default()
                .insert(name.clone());
        }
        // a Beat pool came, went or changed: every other Beat pool checks the one-beat rule
        if was_beat || is_beat {
            for (bns, set) in &self.beats {
                affected.pools.extend(
                    set.iter()
                        .filter(|n| !(bns == ns && *n == name))
                        .map(|n| (bns.clone(), n.clone())),
                );
            }
        }
        affected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::FuncWorkerPoolSpec;

    fn pool(
        ns: &str,
        name: &str,
        role: PoolRole,
        queues: &[&str],
        generation: i64,
    ) -> FuncWorkerPool {
        let role = match role {
            PoolRole::Beat => "Beat",
            PoolRole::Worker => "Worker",
        };
        let spec: FuncWorkerPoolSpec =
            serde_json::from_value(serde_json::json!({ "queues": queues, "role": role })).unwrap();
        let mut p = FuncWorkerPool::new(name, spec);
        p.metadata.namespace = Some(ns.into());
        p.metadata.generation = Some(generation);
        p
    }

    fn worker(ns: &str, name: &str, queues: &[&str], generation: i64) -> FuncWorkerPool {
        pool(ns, name, PoolRole::Worker, queues, generation)
    }

    fn queues(a: &Affected) -> Vec<String> {
        a.queues
            .iter()
            .map(|q| format!("{}/{}", q.namespace, q.name))
            .collect()
    }

    fn pools(a: &Affected) -> Vec<String> {
        a.pools.iter().map(|(ns, n)| format!("{ns}/{n}")).collect()
    }

    fn names(refs: Vec<ObjectRef<FuncWorkerPool>>) -> Vec<String> {
        let mut v: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        v.sort();
        v
    }

    #[test]
    fn lookups_follow_applies_and_deletes() {
        let ix = PoolIndex::default();
        let a = ix.apply(&watcher::Event::Apply(worker("ns", "a", &["q1", "q2"], 1)));
        assert_eq!(queues(&a), ["ns/q1", "ns/q2"]);
        assert!(a.pools.is_empty());
        let b = ix.apply(&watcher::Event::Apply(worker("ns", "b", &["q2"], 1)));
        assert_eq!(queues(&b), ["ns/q2"]);
        // a shares q2 with b: its share changed
        assert_eq!(pools(&b), ["ns/a"]);
        ix.apply(&watcher::Event::Apply(pool(
            "ns",
            "beat",
            PoolRole::Beat,
            &[],
            1,
        )));
        ix.apply(&watcher::Event::Apply(worker("other", "c", &["q2"], 1)));

        assert_eq!(ix.consumers("ns", "q2"), ["a", "b"]);
        assert_eq!(ix.consumers("ns", "q1"), ["a"]);
        assert!(ix.consumers("ns", "q3").is_empty());
        assert_eq!(names(ix.pools_for_queue("ns", "q2")), ["a", "b", "beat"]);
        // a queue nobody lists still wakes the namespace's Beat pool (its schedules)
        assert_eq!(names(ix.pools_for_queue("ns", "q9")), ["beat"]);
        assert_eq!(names(ix.pools_for_queue("other", "q2")), ["c"]);
        assert_eq!(ix.namespaces(), ["ns", "other"]);

        // a status write (same generation, same queues): nothing changed for anyone
        assert!(
            ix.apply(&watcher::Event::Apply(worker("ns", "b", &["q2"], 1)))
                .is_empty()
        );
        // b moves from q2 to q3: both queues' consumers changed, a's share of q2 too
        let moved = ix.apply(&watcher::Event::Apply(worker("ns", "b", &["q3"], 2)));
        assert_eq!(queues(&moved), ["ns/q2", "ns/q3"]);
        assert_eq!(pools(&moved), ["ns/a"]);
        assert_eq!(ix.consumers("ns", "q2"), ["a"]);
        assert_eq!(ix.consumers("ns", "q3"), ["b"]);

        let gone = ix.apply(&watcher::Event::Delete(worker("ns", "a", &["q1", "q2"], 1)));
        assert_eq!(queues(&gone), ["ns/q1", "ns/q2"]);
        assert!(ix.consumers("ns", "q1").is_empty());
        assert_eq!(names(ix.pools_for_queue("ns", "q2")), ["beat"]);
    }

    #[test]
    fn a_spec_change_of_a_sharing_pool_resizes_the_others() {
        let ix = PoolIndex::default();
        ix.apply(&watcher::Event::Apply(worker("ns", "a", &["q"], 1)));
        ix.apply(&watcher::Event::Apply(worker("ns", "b", &["q"], 1)));
        // b's processesPerPod or maxReplicas changed: same queues, new generation
        let a = ix.apply(&watcher::Event::Apply(worker("ns", "b", &["q"], 2)));
        assert!(a.queues.is_empty(), "the consumers did not change");
        assert_eq!(pools(&a), ["ns/a"]);
    }

    #[test]
    fn beat_pools_come_and_go_for_each_other() {
        let ix = PoolIndex::default();
        ix.apply(&watcher::Event::Apply(pool(
            "a",
            "beat",
            PoolRole::Beat,
            &[],
            1,
        )));
        let second = ix.apply(&watcher::Event::Apply(pool(
            "b",
            "beat",
            PoolRole::Beat,
            &[],
            1,
        )));
        assert_eq!(pools(&second), ["a/beat"]);
        assert!(second.queues.is_empty(), "a Beat pool consumes no queue");
        let gone = ix.apply(&watcher::Event::Delete(pool(
            "a",
            "beat",
            PoolRole::Beat,
            &[],
            1,
        )));
        assert_eq!(pools(&gone), ["b/beat"]);
    }

    #[test]
    fn a_relist_drops_the_pools_it_did_not_list() {
        let ix = PoolIndex::default();
        ix.apply(&watcher::Event::Apply(worker("ns", "a", &["q1"], 1)));
        ix.apply(&watcher::Event::Apply(worker("ns", "b", &["q2"], 1)));
        // the watch restarts; b was deleted while it was down
        assert!(ix.apply(&watcher::Event::Init).is_empty());
        assert!(
            ix.apply(&watcher::Event::InitApply(worker("ns", "a", &["q1"], 1)))
                .is_empty()
        );
        let done = ix.apply(&watcher::Event::InitDone);
        assert_eq!(queues(&done), ["ns/q2"]);
        assert!(ix.consumers("ns", "q2").is_empty());
        assert_eq!(ix.consumers("ns", "q1"), ["a"]);
    }
}
