//! Which queues of other namespaces could share a queue's keys: an index kept from the queue
//! watch's events, so that [`crate::crd_ext::key_conflict`] looks at the few queues on the
//! same Redis with the same queue id or list, not at all of them. (A copy of 10,000 queue
//! references and a scan of them for each queue of each reconcile was most of a reconcile's
//! time at 10,000 queues.)
//!
//! Each queue is filed under two hashes: its queue id, and its list
//! ([`crate::crd_ext::list_key`]). Two queues that can conflict share one of them; a hash
//! collision, or two queues of one name on two Redis servers, only adds a candidate, which
//! `key_conflict` then rejects. The Redis is not in the hash: which server a queue uses is
//! known only once its Secrets are read (two Secrets can name one Redis), so the conflict
//! check resolves it for the few candidates.
//!
//! Applying an event says which queues of other namespaces shared (before) or share (now) a
//! key with the queue that changed: their conflict may have appeared or gone.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, RwLock};

use funcscale_protocol::Keys;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::crd::FuncQueue;
use crate::crd_ext::{KeyConflict, key_conflict, list_key, queue_id};
use crate::redis_metrics::QueueId;

/// What the index keeps of a queue.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    /// The spec the hashes were computed from (its keys change only with the spec).
    generation: Option<i64>,
    uid: Option<String>,
    /// Hashes of the queue id and of the list.
    hashes: [u64; 2],
}

#[derive(Default)]
struct Inner {
    queues: HashMap<QueueId, Entry>,
    by_hash: HashMap<u64, BTreeSet<QueueId>>,
    /// Queues listed since the last `Init` (a re-list), until its `InitDone`.
    relisted: Option<HashSet<QueueId>>,
}

/// The queues that could share each queue's keys. Cheap to clone; clones share the index.
#[derive(Clone)]
pub struct KeyIndex {
    keys: Keys,
    inner: Arc<RwLock<Inner>>,
}

fn hash_of(v: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

impl KeyIndex {
    /// An empty index for the operator's key layout.
    pub fn new(keys: Keys) -> Self {
        Self {
            keys,
            inner: Arc::default(),
        }
    }

    fn hashes(&self, q: &FuncQueue, ns: &str) -> [u64; 2] {
        let id = queue_id(q, ns);
        let list = list_key(q, &id, &self.keys);
        [hash_of(("id", &id)), hash_of(("list", &list))]
    }

    /// Apply a queue watch event (the same events the queue store gets); returns the queues
    /// of other namespaces whose conflict with it may have changed.
    pub fn apply(&self, event: &watcher::Event<FuncQueue>) -> BTreeSet<QueueId> {
        let mut inner = self.inner.write().expect("key index lock");
        match event {
            watcher::Event::Apply(q) => self.upsert(&mut inner, q),
            watcher::Event::InitApply(q) => {
                let id = id_of(q);
                if let Some(r) = inner.relisted.as_mut() {
                    r.insert(id);
                }
                self.upsert(&mut inner, q)
            }
            watcher::Event::Delete(q) => inner.remove(&id_of(q)),
            watcher::Event::Init => {
                inner.relisted = Some(HashSet::new());
                BTreeSet::new()
            }
            watcher::Event::InitDone => {
                let Some(listed) = inner.relisted.take() else {
                    return BTreeSet::new();
                };
                let gone: Vec<QueueId> = inner
                    .queues
                    .keys()
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                gone.iter().flat_map(|k| inner.remove(k)).collect()
            }
        }
    }

    fn upsert(&self, inner: &mut Inner, q: &FuncQueue) -> BTreeSet<QueueId> {
        let id = id_of(q);
        let (generation, uid) = (q.metadata.generation, q.metadata.uid.clone());
        if let Some(e) = inner.queues.get(&id)
            && e.generation == generation
            && e.uid == uid
        {
            // a status write: its keys did not change
            return BTreeSet::new();
        }
        let new = Entry {
            generation,
            uid,
            hashes: self.hashes(q, &id.namespace),
        };
        let mut affected = inner.remove(&id);
        for h in new.hashes {
            inner.by_hash.entry(h).or_default().insert(id.clone());
        }
        affected.extend(inner.sharers(&id, &new.hashes));
        inner.queues.insert(id, new);
        affected
    }

    /// The queues of other namespaces filed under one of the keys of `q` (in namespace `ns`).
    pub fn candidates(&self, q: &FuncQueue, ns: &str) -> BTreeSet<QueueId> {
        let me = QueueId::new(ns, q.name_any());
        let hashes = self.hashes(q, ns);
        self.inner
            .read()
            .expect("key index lock")
            .sharers(&me, &hashes)
    }

    /// [`key_conflict`] of `q` against its [`candidates`](Self::candidates) as `queues`
    /// holds them now; `redis` names the Redis a queue of a namespace uses
    /// ([`crate::redis_metrics::RedisEndpoint::identity`], Secrets read), asked only when
    /// there are candidates.
    pub async fn conflict<F, Fut>(
        &self,
        q: &FuncQueue,
        ns: &str,
        queues: &Store<FuncQueue>,
        redis: F,
    ) -> Option<KeyConflict>
    where
        F: Fn(Arc<FuncQueue>, String) -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        let others: Vec<Arc<FuncQueue>> = self
            .candidates(q, ns)
            .iter()
            .filter_map(|c| queues.get(&ObjectRef::new(&c.name).within(&c.namespace)))
            .collect();
        if others.is_empty() {
            return None;
        }
        let mine = redis(Arc::new(q.clone()), ns.to_string()).await;
        let mut resolved = Vec::with_capacity(others.len());
        for o in others {
            let ons = o.namespace().unwrap_or_default();
            let theirs = redis(o.clone(), ons).await;
            resolved.push((o, theirs));
        }
        key_conflict(q, ns, &mine, &resolved, &self.keys)
    }
}

fn id_of(q: &FuncQueue) -> QueueId {
    QueueId::new(q.namespace().unwrap_or_default(), q.name_any())
}

impl Inner {
    /// Forget `id`; returns the queues that shared a key with it.
    fn remove(&mut self, id: &QueueId) -> BTreeSet<QueueId> {
        let Some(old) = self.queues.remove(id) else {
            return BTreeSet::new();
        };
        for h in old.hashes {
            if let Some(set) = self.by_hash.get_mut(&h) {
                set.remove(id);
                if set.is_empty() {
                    self.by_hash.remove(&h);
                }
            }
        }
        self.sharers(id, &old.hashes)
    }

    /// Queues of another namespace than `me`'s filed under one of `hashes`.
    fn sharers(&self, me: &QueueId, hashes: &[u64; 2]) -> BTreeSet<QueueId> {
        hashes
            .iter()
            .filter_map(|h| self.by_hash.get(h))
            .flatten()
            .filter(|o| o.namespace != me.namespace)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::FuncQueueSpec;
    use kube::runtime::watcher::Event;

    fn queue(ns: &str, name: &str, generation: i64, spec: serde_json::Value) -> FuncQueue {
        let spec: FuncQueueSpec = serde_json::from_value(spec).unwrap();
        let mut q = FuncQueue::new(name, spec);
        q.metadata.namespace = Some(ns.into());
        q.metadata.uid = Some(format!("{ns}-{name}"));
        q.metadata.generation = Some(generation);
        q
    }

    fn ids(s: &BTreeSet<QueueId>) -> Vec<String> {
        s.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn queues_that_can_share_keys_find_each_other_and_others_do_not() {
        let ix = KeyIndex::new(Keys::default());
        let plain = serde_json::json!({});
        let legacy = serde_json::json!({ "legacyKeys": true });
        // plain queues of one name in two namespaces: two ids, two lists
        ix.apply(&Event::Apply(queue("a", "jobs", 1, plain.clone())));
        let b = ix.apply(&Event::Apply(queue("b", "jobs", 1, plain.clone())));
        assert!(b.is_empty());
        assert!(
            ix.candidates(&queue("b", "jobs", 1, plain.clone()), "b")
                .is_empty()
        );
        // legacyKeys queues of one name: one id
        ix.apply(&Event::Apply(queue("a", "mail", 1, legacy.clone())));
        let b = ix.apply(&Event::Apply(queue("b", "mail", 1, legacy.clone())));
        assert_eq!(ids(&b), ["a/mail"]);
        assert_eq!(
            ids(&ix.candidates(&queue("a", "mail", 1, legacy.clone()), "a")),
            ["b/mail"]
        );
        // an explicit key naming namespace a's plain list
        let list = Keys::default().queue(&Keys::queue_id("a", "jobs"));
        let c = ix.apply(&Event::Apply(queue(
            "c",
            "mine",
            1,
            serde_json::json!({ "key": list }),
        )));
        assert_eq!(ids(&c), ["a/jobs"]);
        // a status write: nothing changed for anyone
        assert!(
            ix.apply(&Event::Apply(queue(
                "c",
                "mine",
                1,
                serde_json::json!({ "key": list })
            )))
            .is_empty()
        );
        // c changes its key: a/jobs loses its sharer (the conflict may be gone)
        let moved = ix.apply(&Event::Apply(queue(
            "c",
            "mine",
            2,
            serde_json::json!({ "key": "elsewhere" }),
        )));
        assert_eq!(ids(&moved), ["a/jobs"]);
        assert!(
            ix.candidates(&queue("a", "jobs", 1, plain.clone()), "a")
                .is_empty()
        );
        // another Redis is a candidate too (which Redis a Secret names is known only when it
        // is read): the conflict check rejects it
        let other = ix.apply(&Event::Apply(queue(
            "d",
            "mail",
            1,
            serde_json::json!({ "legacyKeys": true, "redis": { "url": "redis://other:6379" } }),
        )));
        assert_eq!(ids(&other), ["a/mail", "b/mail"]);
        // deleting a's mail frees b's
        let gone = ix.apply(&Event::Delete(queue("a", "mail", 1, legacy.clone())));
        assert_eq!(ids(&gone), ["b/mail", "d/mail"]);
    }

    #[test]
    fn a_relist_drops_the_queues_it_did_not_list() {
        let ix = KeyIndex::new(Keys::default());
        let legacy = serde_json::json!({ "legacyKeys": true });
        ix.apply(&Event::Apply(queue("a", "mail", 1, legacy.clone())));
        ix.apply(&Event::Apply(queue("b", "mail", 1, legacy.clone())));
        assert!(ix.apply(&Event::Init).is_empty());
        assert!(
            ix.apply(&Event::InitApply(queue("b", "mail", 1, legacy.clone())))
                .is_empty()
        );
        // a was deleted while the watch was down
        assert_eq!(ids(&ix.apply(&Event::InitDone)), ["b/mail"]);
        assert!(
            ix.candidates(&queue("b", "mail", 1, legacy.clone()), "b")
                .is_empty()
        );
    }
}
