//! Kubernetes Events the controllers publish.

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};

/// Publish a Warning Event about `obj` (a failure to publish is logged, never fatal).
pub async fn warn<K>(recorder: &Recorder, obj: &K, reason: &str, note: String)
where
    K: Resource<DynamicType = ()>,
{
    let ev = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish event");
    }
}
