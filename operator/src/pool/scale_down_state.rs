//! The state of the scale-downs in progress (`pool::scale_down`), kept in the pool
//! controller's context: plain data, no client.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::runtime::reflector::ObjectRef;

use crate::crd::FuncWorkerPool;

/// A scale-down waiting for its chosen pods to turn not ready.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    /// Replicas when it started.
    pub from: i32,
    /// Replicas it goes to.
    pub to: i32,
    /// The pods chosen for removal (marked).
    pub pods: Vec<String>,
    /// When the pods were marked (unix ms).
    pub started_ms: u64,
}

/// The scale-downs in progress, per pool, and whether the API server
/// honours the deletion cost (read once from `/version`).
#[derive(Default)]
pub struct ScaleDowns {
    pending: Mutex<HashMap<ObjectRef<FuncWorkerPool>, Pending>>,
    deletion_cost: tokio::sync::OnceCell<bool>,
}

impl ScaleDowns {
    /// Forget the scale-downs of pools that are gone (not `live`).
    pub fn retain(&self, live: impl Fn(&ObjectRef<FuncWorkerPool>) -> bool) {
        self.pending
            .lock()
            .expect("scale-down lock")
            .retain(|k, _| live(k));
    }

    pub(crate) fn get(&self, key: &ObjectRef<FuncWorkerPool>) -> Option<Pending> {
        self.pending
            .lock()
            .expect("scale-down lock")
            .get(key)
            .cloned()
    }

    /// Whether the API server honours the deletion cost, once known.
    pub(crate) fn deletion_cost(&self) -> &tokio::sync::OnceCell<bool> {
        &self.deletion_cost
    }

    pub(crate) fn set(&self, key: &ObjectRef<FuncWorkerPool>, p: Option<Pending>) {
        let mut m = self.pending.lock().expect("scale-down lock");
        match p {
            Some(p) => m.insert(key.clone(), p),
            None => m.remove(key),
        };
    }
}
