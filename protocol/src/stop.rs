//! Idle pods go first on scale-down: the operator's stop marks ([`Keys::stop`]) and the
//! running tasks per pod it reads to choose the pods to remove.
//!
//! - **Running tasks per pod**: every running task is one slot's in-flight list in its queue's
//!   running set ([`Keys::running`]); the slot's worker hash ([`Keys::worker`]) names its pod
//!   ([`WORKER_POD_FIELD`]). Two pipelined round trips for a whole pool, whatever its size:
//!   [`running_slots_pipeline`], then [`slot_pods_pipeline`]; [`count_by_pod`] adds them up.
//! - **Stop marks**: a string per pod (the reason), with a TTL ([`STOP_TTL_MS`]) that the
//!   operator renews while its scale-down waits, so a dead operator never leaves workers
//!   stuck. A worker whose pod is marked takes no new task, finishes the ones it runs and
//!   answers `/readyz` with 503 (so the ReplicaSet, which deletes not-ready pods first,
//!   removes the marked pods); when the mark goes (cleared, or expired) it takes tasks
//!   and turns ready again.

use std::collections::{BTreeMap, BTreeSet};

use crate::Keys;

/// How long a stop mark lives unless the operator renews it (ms).
pub const STOP_TTL_MS: u64 = 20_000;

/// The field of a slot's worker hash ([`Keys::worker`]) that names the pod it runs in (the
/// worker's name when it does not know its pod).
pub const WORKER_POD_FIELD: &str = "pod";

/// Add the commands marking `pods` of `namespace` to `pipe`: `reason` with a TTL of `ttl_ms`
/// (a mark that exists is renewed).
pub fn mark(
    pipe: &mut redis::Pipeline,
    keys: &Keys,
    namespace: &str,
    pods: &[&str],
    reason: &str,
    ttl_ms: u64,
) {
    for pod in pods {
        pipe.cmd("SET")
            .arg(keys.stop(namespace, pod))
            .arg(reason)
            .arg("PX")
            .arg(ttl_ms.max(1))
            .ignore();
    }
}

/// Add the commands clearing the marks of `pods` of `namespace` to `pipe`.
pub fn clear(pipe: &mut redis::Pipeline, keys: &Keys, namespace: &str, pods: &[&str]) {
    for pod in pods {
        pipe.del(keys.stop(namespace, pod)).ignore();
    }
}

/// The command reading a pod's mark: its reason, or nil when the pod may take tasks.
pub fn read_cmd(keys: &Keys, namespace: &str, pod: &str) -> redis::Cmd {
    let mut c = redis::cmd("GET");
    c.arg(keys.stop(namespace, pod));
    c
}

/// The running sets of `queues` (queue ids), one `ZRANGE` each; the replies are lists of
/// in-flight list keys, for [`running_slots`].
pub fn running_slots_pipeline(keys: &Keys, queues: &[&str]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for q in queues {
        pipe.zrange(keys.running(q), 0, -1);
    }
    pipe
}

/// The slots running a task, from the replies of [`running_slots_pipeline`] (each slot once).
pub fn running_slots(keys: &Keys, replies: &[Vec<String>]) -> Vec<String> {
    let slots: BTreeSet<&str> = replies
        .iter()
        .flatten()
        .filter_map(|k| keys.inflight_slot(k))
        .collect();
    slots.into_iter().map(str::to_string).collect()
}

/// The pod of each of `slots` (`HGET` of [`WORKER_POD_FIELD`]); replies in order, nil for a
/// slot whose hash is gone.
pub fn slot_pods_pipeline(keys: &Keys, slots: &[String]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for s in slots {
        pipe.hget(keys.worker(s), WORKER_POD_FIELD);
    }
    pipe
}

/// The Deployment a pod of a ReplicaSet belongs to: its name without the ReplicaSet's
/// template hash and the pod's own suffix (`w-2-5d8f7c9b4-x7k2p` → `w-2`); `None` for a name
/// not of that shape (a bare pod, a worker outside Kubernetes).
pub fn deployment_of_pod(pod: &str) -> Option<&str> {
    let mut parts = pod.rsplitn(3, '-');
    let (_suffix, _hash, deployment) = (parts.next()?, parts.next()?, parts.next()?);
    (!deployment.is_empty()).then_some(deployment)
}

/// Whether `pod` is a pod of Deployment `deployment`'s ReplicaSets, by its generated name
/// `<deployment>-<template hash>-<5 characters>`; a long name is cut to 58 characters
/// before its 5 random ones (Kubernetes' generated names), so the cut base must be a prefix
/// of `<deployment>-`.
pub fn pod_of_deployment(pod: &str, deployment: &str) -> bool {
    const GENERATED_BASE_MAX: usize = 58;
    if deployment_of_pod(pod) == Some(deployment) {
        return true;
    }
    let own = format!("{deployment}-");
    pod.len() == GENERATED_BASE_MAX + 5
        && pod.is_char_boundary(GENERATED_BASE_MAX)
        && (own.starts_with(&pod[..GENERATED_BASE_MAX])
            || pod[..GENERATED_BASE_MAX].starts_with(&own))
        && pod[..GENERATED_BASE_MAX]
            .strip_prefix(&own)
            .is_none_or(|hash| !hash.contains('-'))
}

/// Running tasks per pod: `pods` are the replies of [`slot_pods_pipeline`] (one per slot).
/// A slot runs one task at a time; a slot of unknown pod is left out.
pub fn count_by_pod(pods: &[Option<String>]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for pod in pods.iter().flatten() {
        *out.entry(pod.clone()).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_deployment_is_its_name_without_the_two_suffixes() {
        assert_eq!(deployment_of_pod("w-2-5d8f7c9b4-x7k2p"), Some("w-2"));
        assert_eq!(deployment_of_pod("w-5d8f7c9b4-x7k2p"), Some("w"));
        assert_eq!(deployment_of_pod("worker-1"), None);
        assert_eq!(deployment_of_pod("host"), None);
        assert!(pod_of_deployment("w-2-5d8f7c9b4-x7k2p", "w-2"));
        assert!(!pod_of_deployment("w-2-5d8f7c9b4-x7k2p", "w"));
        // a long name: the generated base cut to 58 characters, then 5 random ones
        let long = "a-very-long-pool-name-for-the-nightly-reports-of-team-x";
        let base = format!("{long}-6c9f8d7b5d-");
        let pod = format!("{}{}", &base[..58], "q2w3e");
        assert!(pod_of_deployment(&pod, long));
        assert!(!pod_of_deployment(&pod, "a-very-long-pool-name"));
    }

    #[test]
    fn slots_from_running_sets_counted_per_pod() {
        let k = Keys::new("t");
        let replies = vec![
            vec![k.inflight("a-1-x.0"), k.inflight("a-1-x.1")],
            // a slot in two running sets (a moment of a move) counts once
            vec![
                k.inflight("a-1-x.1"),
                k.inflight("b-2-y.0"),
                "other:inflight:z".into(),
            ],
            // layout 2: per-queue lists name their slot too
            vec![k.inflight_q("q", "c-3-z.0"), k.inflight_q("q", "a-1-x.0")],
        ];
        let slots = running_slots(&k, &replies);
        assert_eq!(slots, ["a-1-x.0", "a-1-x.1", "b-2-y.0", "c-3-z.0"]);
        let a = k.clone().in_namespace(Some("a".into()));
        let q = Keys::queue_id("a", "jobs");
        let replies = vec![vec![a.inflight_q(&q, "p-1-x.0"), a.inflight("p-1-x.1")]];
        assert_eq!(running_slots(&a, &replies), ["p-1-x.0", "p-1-x.1"]);
        let pods = [Some("pod-a".to_string()), Some("pod-a".into()), None];
        let counts = count_by_pod(&pods);
        assert_eq!(counts.get("pod-a"), Some(&2));
        assert_eq!(counts.len(), 1, "a slot without a hash names no pod");
    }
}
