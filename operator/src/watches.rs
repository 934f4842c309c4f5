//! What the controllers keep from their watches, and which events wake them.
//!
//! At 1,000 pools and 10,000 queues the operator spent its memory on fields no controller
//! reads (`managedFields`, the `last-applied-configuration` annotation, whole Deployments)
//! and its CPU on reconciles of objects that had not changed: every status write of a queue
//! woke the queue again and, through the queue watch, every pool serving it. Here:
//!
//! - *strip* ([`strip_meta`], [`strip_deployment`]): what is removed before an object reaches a
//!   store or a trigger;
//! - *filter* ([`ChangeFilter`]): an event passes when the part of the object a controller
//!   reads changed (a [`ChangeKey`]), or when the object was deleted. kube's
//!   `predicate_filter` on `touched_objects()` drops a deletion (a deleted object hashes like
//!   its last version); this one never does.
//!
//! The keys say what each controller reads: a pool's or a queue's spec is its `generation`
//! (its status is the operator's own output); a Deployment's `generation` (its spec, a
//! `kubectl scale` included) and the replica counts the pool's status reports.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::watcher;

/// The annotation `kubectl apply` keeps a whole copy of the object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drop the metadata no controller reads: `managedFields` (often larger than the spec) and
/// `kubectl apply`'s copy of the object.
pub fn strip_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

/// Keep of a Deployment only what the pool controller's trigger and its [`DeploymentKey`]
/// read: name, namespace, owner references, generation, `spec.replicas` and the replica
/// counts of its status (the pod template, selector and conditions go).
pub fn strip_deployment(d: &mut Deployment) {
    strip_meta(&mut d.metadata);
    d.metadata.labels = None;
    d.metadata.annotations = None;
    d.spec = d.spec.as_ref().map(|s| DeploymentSpec {
        replicas: s.replicas,
        ..DeploymentSpec::default()
    });
    d.status = d.status.as_ref().map(|s| DeploymentStatus {
        replicas: s.replicas,
        ready_replicas: s.ready_replicas,
        ..DeploymentStatus::default()
    });
}

/// The part of an object a controller reacts to, hashed; an event whose key did not change
/// since the last one of the same object is not passed on.
pub trait ChangeKey<K> {
    /// Hash what matters of `obj`.
    fn key(&self, obj: &K) -> u64;
}

impl<K, F: Fn(&K) -> u64> ChangeKey<K> for F {
    fn key(&self, obj: &K) -> u64 {
        self(obj)
    }
}

fn hash_of(v: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// A custom resource whose spec is all the controllers read (its status is the operator's
/// output): `metadata.generation`, which the API server bumps on every spec change.
pub fn generation<K: Resource>(obj: &K) -> u64 {
    hash_of(obj.meta().generation)
}

/// What a pool reads of its Deployment: its generation (a spec change: ours, or a
/// `kubectl scale` / edit by someone else) and the replica counts its status reports.
pub fn deployment_key(d: &Deployment) -> u64 {
    let status = d.status.as_ref();
    hash_of((
        d.metadata.generation,
        status.and_then(|s| s.replicas),
        status.and_then(|s| s.ready_replicas),
    ))
}

/// What an event means to a controller after filtering.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<K> {
    /// Created, or changed where it matters.
    Applied(K),
    /// Deleted.
    Deleted(K),
}

impl<K> Change<K> {
    /// The object, whichever happened.
    pub fn object(&self) -> &K {
        match self {
            Change::Applied(k) | Change::Deleted(k) => k,
        }
    }

    /// The object, whichever happened.
    pub fn into_object(self) -> K {
        match self {
            Change::Applied(k) | Change::Deleted(k) => k,
        }
    }
}

/// Identity of one object: namespace, name and uid (a deleted and recreated object is
/// another one, even at the same generation).
fn identity<K: Resource>(obj: &K) -> u64 {
    let m = obj.meta();
    hash_of((&m.namespace, &m.name, &m.uid))
}

/// Passes the events whose [`ChangeKey`] changed, and every deletion. One per watch.
pub struct ChangeFilter<K, C> {
    key: C,
    /// identity → key of the last version passed or seen
    seen: HashMap<u64, u64>,
    /// identities listed since the last `Init` (a re-list): at `InitDone`, the others are
    /// gone and forgotten
    relisted: Option<HashSet<u64>>,
    _k: std::marker::PhantomData<fn(&K)>,
}

impl<K: Resource, C: ChangeKey<K>> ChangeFilter<K, C> {
    /// A filter comparing `key`s.
    pub fn new(key: C) -> Self {
        Self {
            key,
            seen: HashMap::new(),
            relisted: None,
            _k: std::marker::PhantomData,
        }
    }

    /// What `event` means to the controller, if anything.
    pub fn filter(&mut self, event: watcher::Event<K>) -> Option<Change<K>> {
        match event {
            watcher::Event::Apply(obj) => self.applied(obj),
            watcher::Event::InitApply(obj) => {
                if let Some(r) = self.relisted.as_mut() {
                    r.insert(identity(&obj));
                }
                self.applied(obj)
            }
            watcher::Event::Delete(obj) => {
                self.seen.remove(&identity(&obj));
                Some(Change::Deleted(obj))
            }
            watcher::Event::Init => {
                self.relisted = Some(HashSet::new());
                None
            }
            watcher::Event::InitDone => {
                if let Some(listed) = self.relisted.take() {
                    self.seen.retain(|id, _| listed.contains(id));
                }
                None
            }
        }
    }

    fn applied(&mut self, obj: K) -> Option<Change<K>> {
        let key = self.key.key(&obj);
        match self.seen.insert(identity(&obj), key) {
            Some(old) if old == key => None,
            _ => Some(Change::Applied(obj)),
        }
    }
}

/// A watch stream's changes that matter ([`ChangeFilter`] with `key`), errors passed on.
pub fn changes<K, C, S>(
    events: S,
    key: C,
) -> impl futures::Stream<Item = watcher::Result<Change<K>>> + Send + 'static
where
    K: Resource + Send + 'static,
    C: ChangeKey<K> + Send + 'static,
    S: futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    use futures::StreamExt;
    let mut f = ChangeFilter::new(key);
    events.filter_map(move |e| {
        futures::future::ready(match e {
            Ok(e) => f.filter(e).map(Ok),
            Err(e) => Some(Err(e)),
        })
    })
}

/// The objects of `changes` that exist (for a controller's own stream: a deleted object is
/// not reconciled).
pub fn applied<K, S>(changes: S) -> impl futures::Stream<Item = watcher::Result<K>> + Send + 'static
where
    K: Send + 'static,
    S: futures::Stream<Item = watcher::Result<Change<K>>> + Send + 'static,
{
    use futures::StreamExt;
    changes.filter_map(|c| {
        futures::future::ready(match c {
            Ok(Change::Applied(k)) => Some(Ok(k)),
            Ok(Change::Deleted(_)) => None,
            Err(e) => Some(Err(e)),
        })
    })
}

/// The objects of `changes`, deleted ones included (for triggers: a deleted Deployment must
/// reach its pool).
pub fn touched<K, S>(changes: S) -> impl futures::Stream<Item = watcher::Result<K>> + Send + 'static
where
    K: Send + 'static,
    S: futures::Stream<Item = watcher::Result<Change<K>>> + Send + 'static,
{
    use futures::StreamExt;
    changes.map(|c| c.map(Change::into_object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::watcher::Event;

    fn deployment(uid: &str, generation: i64, replicas: i32, ready: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("w".into()),
                namespace: Some("ns".into()),
                uid: Some(uid.into()),
                generation: Some(generation),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                replicas: Some(replicas),
                ready_replicas: Some(ready),
                observed_generation: Some(generation),
                ..Default::default()
            }),
        }
    }

    fn passes(
        f: &mut ChangeFilter<Deployment, fn(&Deployment) -> u64>,
        e: Event<Deployment>,
    ) -> bool {
        f.filter(e).is_some()
    }

    #[test]
    fn a_deployment_passes_on_spec_and_replica_changes_only() {
        let mut f: ChangeFilter<Deployment, fn(&Deployment) -> u64> =
            ChangeFilter::new(deployment_key);
        assert!(passes(&mut f, Event::Apply(deployment("u1", 1, 2, 0))));
        // the same again (a resync, or a status change of no interest): dropped
        let mut conditions_only = deployment("u1", 1, 2, 0);
        conditions_only.status.as_mut().unwrap().observed_generation = Some(7);
        assert!(!passes(&mut f, Event::Apply(conditions_only)));
        // status-only: a pod became ready; the pool's status reports it
        assert!(passes(&mut f, Event::Apply(deployment("u1", 1, 2, 1))));
        // scaled by hand: generation
        assert!(passes(&mut f, Event::Apply(deployment("u1", 2, 5, 1))));
        // deleted: always, although nothing of it changed
        assert!(passes(&mut f, Event::Delete(deployment("u1", 2, 5, 1))));
        // recreated with the same numbers: another object
        assert!(passes(&mut f, Event::Apply(deployment("u2", 2, 5, 1))));
        assert!(!passes(&mut f, Event::Apply(deployment("u2", 2, 5, 1))));
    }

    #[test]
    fn a_relist_passes_what_changed_meanwhile_and_forgets_what_went() {
        let mut f: ChangeFilter<Deployment, fn(&Deployment) -> u64> =
            ChangeFilter::new(deployment_key);
        assert!(passes(&mut f, Event::Apply(deployment("a", 1, 1, 1))));
        assert!(passes(&mut f, Event::Apply(deployment("b", 1, 1, 1))));
        assert!(!passes(&mut f, Event::Init));
        assert!(!passes(&mut f, Event::InitApply(deployment("a", 1, 1, 1))));
        assert!(!passes(&mut f, Event::InitDone));
        assert_eq!(f.seen.len(), 1, "b was not listed again: forgotten");
        // b back under the same uid (say, a watch that missed its deletion and re-creation
        // is not possible with one uid, but a forgotten entry must pass again)
        assert!(passes(&mut f, Event::Apply(deployment("b", 1, 1, 1))));
    }

    #[test]
    fn a_custom_resource_passes_on_generation_only() {
        let cm = |g: i64, data: &str| ConfigMap {
            metadata: ObjectMeta {
                name: Some("c".into()),
                uid: Some("u".into()),
                generation: Some(g),
                ..Default::default()
            },
            data: Some([("k".to_string(), data.to_string())].into()),
            ..Default::default()
        };
        let mut f: ChangeFilter<ConfigMap, fn(&ConfigMap) -> u64> = ChangeFilter::new(generation);
        assert!(f.filter(Event::Apply(cm(1, "a"))).is_some());
        assert!(f.filter(Event::Apply(cm(1, "b"))).is_none());
        assert!(f.filter(Event::Apply(cm(2, "b"))).is_some());
    }

    #[test]
    fn stripping_keeps_what_the_key_reads() {
        let mut d = deployment("u", 3, 4, 2);
        d.metadata.managed_fields = Some(vec![Default::default()]);
        d.metadata.annotations = Some([(LAST_APPLIED.to_string(), "{}".to_string())].into());
        d.spec.as_mut().unwrap().template.metadata = Some(ObjectMeta::default());
        let before = deployment_key(&d);
        strip_deployment(&mut d);
        assert_eq!(deployment_key(&d), before);
        assert_eq!(d.metadata.managed_fields, None);
        assert_eq!(d.metadata.annotations, None);
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(4));
        assert_eq!(d.spec.as_ref().unwrap().template.metadata, None);

        let mut m = ObjectMeta {
            annotations: Some(
                [
                    (LAST_APPLIED.to_string(), "{}".to_string()),
                    ("team".to_string(), "a".to_string()),
                ]
                .into(),
            ),
            managed_fields: Some(vec![Default::default()]),
            ..Default::default()
        };
        strip_meta(&mut m);
        assert_eq!(m.managed_fields, None);
        assert_eq!(
            m.annotations,
            Some([("team".to_string(), "a".to_string())].into())
        );
    }
}
