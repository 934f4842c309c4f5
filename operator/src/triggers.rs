//! Which watch events wake which controller. Each controller's own stream passes only spec
//! changes ([`crate::watches`]: its status is its own output); what another object's change
//! means for it is sent as a trigger instead:
//!
//! - a pool that came, went or changed its spec: the queues whose consumers changed, the pools
//!   sharing its queues, the other Beat pools ([`crate::pool_index::Affected`]);
//! - a queue that came, went or changed its spec: the pools serving it (through the index), and
//!   the queues of other namespaces that shared or share a key with it, with their pools
//!   ([`crate::key_index`]: the older queue keeps the keys, the younger is refused).
//!
//! A queue's status write reaches no pool (the pool controller reads no queue status); before,
//! every one of them (1,000 a second at 10,000 queues) re-reconciled every pool of the queue.

use futures::channel::mpsc::UnboundedSender;
use futures::{Stream, StreamExt};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::crd::{FuncQueue, FuncWorkerPool};
use crate::key_index::KeyIndex;
use crate::pool_index::PoolIndex;
use crate::watches;

/// Where triggers for each controller go.
#[derive(Clone)]
pub struct Senders {
    /// To the pool controller.
    pub pools: UnboundedSender<ObjectRef<FuncWorkerPool>>,
    /// To the queue controller.
    pub queues: UnboundedSender<ObjectRef<FuncQueue>>,
}

impl Senders {
    fn pool(&self, r: ObjectRef<FuncWorkerPool>) {
        // the receiver is gone only when the controller stopped
        let _ = self.pools.unbounded_send(r);
    }

    fn queue(&self, r: ObjectRef<FuncQueue>) {
        let _ = self.queues.unbounded_send(r);
    }
}

/// The pool controller's own stream from the pool watch's events (after the store's
/// reflector): the index follows every event and sends what it affects; the controller gets
/// the pools whose spec changed.
pub fn pool_stream<S>(
    events: S,
    index: PoolIndex,
    send: Senders,
) -> impl Stream<Item = watcher::Result<FuncWorkerPool>> + Send + 'static
where
    S: Stream<Item = watcher::Result<watcher::Event<FuncWorkerPool>>> + Send + 'static,
{
    let events = events.inspect(move |e| {
        if let Ok(e) = e {
            let affected = index.apply(e);
            affected.pool_refs().for_each(|r| send.pool(r));
            affected.queue_refs().for_each(|r| send.queue(r));
        }
    });
    watches::applied(watches::changes(
        events,
        watches::generation::<FuncWorkerPool>,
    ))
}

/// The queue controller's own stream from the queue watch's events (after the store's
/// reflector): a queue created, deleted or with a new spec wakes the pools serving it, and
/// the queues of other namespaces that shared or share a key with it (the key index: the older
/// queue keeps the keys, the younger is refused — or freed) with their pools; the controller
/// gets the queues whose spec changed.
pub fn queue_stream<S>(
    events: S,
    index: PoolIndex,
    key_index: KeyIndex,
    send: Senders,
) -> impl Stream<Item = watcher::Result<FuncQueue>> + Send + 'static
where
    S: Stream<Item = watcher::Result<watcher::Event<FuncQueue>>> + Send + 'static,
{
    let to_pools = crate::pool::queue_to_pools(index.clone());
    let to_pools_send = send.clone();
    let events = events.inspect(move |e| {
        if let Ok(e) = e {
            for other in key_index.apply(e) {
                index
                    .pools_for_queue(&other.namespace, &other.name)
                    .into_iter()
                    .for_each(|r| send.pool(r));
                send.queue(ObjectRef::new(&other.name).within(&other.namespace));
            }
        }
    });
    let changes = watches::changes(events, watches::generation::<FuncQueue>).inspect(move |c| {
        let Ok(c) = c else { return };
        to_pools(c.object())
            .into_iter()
            .for_each(|r| to_pools_send.pool(r));
    });
    watches::applied(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{FuncQueueStatus, FuncWorkerPoolSpec};
    use futures::channel::mpsc::{UnboundedReceiver, unbounded};
    use kube::runtime::watcher::Event;

    fn queue(ns: &str, name: &str, generation: i64, depth: u64) -> FuncQueue {
        let mut q = FuncQueue::new(name, Default::default());
        q.metadata.namespace = Some(ns.into());
        q.metadata.uid = Some(format!("{ns}-{name}"));
        q.metadata.generation = Some(generation);
        q.status = Some(FuncQueueStatus {
            depth: Some(depth),
            ..Default::default()
        });
        q
    }

    fn pool(ns: &str, name: &str, queues: &[&str], generation: i64, ready: i32) -> FuncWorkerPool {
        let spec: FuncWorkerPoolSpec =
            serde_json::from_value(serde_json::json!({ "queues": queues })).unwrap();
        let mut p = FuncWorkerPool::new(name, spec);
        p.metadata.namespace = Some(ns.into());
        p.metadata.uid = Some(format!("{ns}-{name}"));
        p.metadata.generation = Some(generation);
        p.status = Some(crate::crd::FuncWorkerPoolStatus {
            ready_replicas: ready,
            ..Default::default()
        });
        p
    }

    fn drain<T>(rx: &mut UnboundedReceiver<ObjectRef<T>>) -> Vec<String>
    where
        T: kube::Resource<DynamicType = ()>,
    {
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            out.push(format!("{}/{}", r.namespace.unwrap_or_default(), r.name));
        }
        out.sort();
        out
    }

    fn names<K: kube::Resource>(objs: Vec<watcher::Result<K>>) -> Vec<String> {
        objs.into_iter()
            .map(|o| o.unwrap().meta().name.clone().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_queue_spec_change_or_deletion_wakes_its_pools_and_a_status_write_does_not() {
        let index = PoolIndex::default();
        index.apply(&Event::Apply(pool("ns", "a", &["q"], 1, 0)));
        index.apply(&Event::Apply(pool("ns", "b", &["q", "r"], 1, 0)));
        index.apply(&Event::Apply(pool("other", "c", &["q"], 1, 0)));
        let keys = KeyIndex::new(Default::default());
        let (ptx, mut prx) = unbounded();
        let (qtx, mut qrx) = unbounded();
        let send = Senders {
            pools: ptx,
            queues: qtx,
        };
        let events = vec![
            Ok(Event::Apply(queue("ns", "q", 1, 0))),
            // status writes: nothing for anyone
            Ok(Event::Apply(queue("ns", "q", 1, 5))),
            Ok(Event::Apply(queue("ns", "q", 1, 9))),
        ];
        let out: Vec<_> = queue_stream(
            futures::stream::iter(events),
            index.clone(),
            keys.clone(),
            send.clone(),
        )
        .collect()
        .await;
        assert_eq!(
            names(out),
            ["q"],
            "the queue controller sees its creation only"
        );
        assert_eq!(drain(&mut prx), ["ns/a", "ns/b"]);

        // a spec change (its Redis, its task time hint): the controller and the pools;
        // then its deletion: the pools only
        let events = vec![
            Ok(Event::Apply(queue("ns", "q", 1, 9))),
            Ok(Event::Apply(queue("ns", "q", 2, 9))),
            Ok(Event::Delete(queue("ns", "q", 2, 9))),
        ];
        let out: Vec<_> = queue_stream(futures::stream::iter(events), index, keys, send)
            .collect()
            .await;
        assert_eq!(
            names(out),
            ["q", "q"],
            "first sight in this stream, then generation 2"
        );
        assert_eq!(
            drain(&mut prx),
            ["ns/a", "ns/a", "ns/a", "ns/b", "ns/b", "ns/b"]
        );
        assert!(drain(&mut qrx).is_empty());
    }

    #[tokio::test]
    async fn a_pool_change_wakes_its_queues_and_sharing_pools_and_a_status_write_does_not() {
        let index = PoolIndex::default();
        let (ptx, mut prx) = unbounded();
        let (qtx, mut qrx) = unbounded();
        let send = Senders {
            pools: ptx,
            queues: qtx,
        };
        let events = vec![
            Ok(Event::Apply(pool("ns", "a", &["q"], 1, 0))),
            Ok(Event::Apply(pool("ns", "b", &["q"], 1, 0))),
            // b's status: a pod became ready (its own output)
            Ok(Event::Apply(pool("ns", "b", &["q"], 1, 1))),
            // b now also serves r
            Ok(Event::Apply(pool("ns", "b", &["q", "r"], 2, 1))),
            Ok(Event::Delete(pool("ns", "a", &["q"], 1, 0))),
        ];
        let out: Vec<_> = pool_stream(futures::stream::iter(events), index.clone(), send)
            .collect()
            .await;
        assert_eq!(names(out), ["a", "b", "b"]);
        // q: a came, b came, a went; r: b came
        assert_eq!(drain(&mut qrx), ["ns/q", "ns/q", "ns/q", "ns/r"]);
        // a when b came and when b changed; b when a went
        assert_eq!(drain(&mut prx), ["ns/a", "ns/a", "ns/b"]);
        assert_eq!(index.consumers("ns", "q"), ["b"]);
    }

    #[tokio::test]
    async fn a_legacy_keys_queue_wakes_its_twin_in_another_namespace_and_the_twins_pools() {
        let index = PoolIndex::default();
        index.apply(&Event::Apply(pool("b", "w", &["mail"], 1, 0)));
        let keys = KeyIndex::new(Default::default());
        let (ptx, mut prx) = unbounded();
        let (qtx, mut qrx) = unbounded();
        let send = Senders {
            pools: ptx,
            queues: qtx,
        };
        let legacy = |ns: &str, generation: i64, depth: u64| {
            let mut q = queue(ns, "mail", generation, depth);
            q.spec.legacy_keys = true;
            q
        };
        let events = vec![
            Ok(Event::Apply(legacy("b", 1, 0))),
            // a, older or not, now shares b's keys: b's conflict is decided again
            Ok(Event::Apply(legacy("a", 1, 0))),
            // a's status write: nothing for b
            Ok(Event::Apply(legacy("a", 1, 7))),
            // a goes: b is freed
            Ok(Event::Delete(legacy("a", 1, 7))),
        ];
        let out: Vec<_> = queue_stream(futures::stream::iter(events), index, keys, send)
            .collect()
            .await;
        assert_eq!(names(out), ["mail", "mail"]);
        assert_eq!(drain(&mut qrx), ["b/mail", "b/mail"]);
        // b/w: b/mail's creation, and each of a's comings and goings
        assert_eq!(drain(&mut prx), ["b/w", "b/w", "b/w"]);
    }
}
