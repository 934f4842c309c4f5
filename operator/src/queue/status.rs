//! *Status*: write the queue's status when it changed.

use kube::api::{Api, Patch, PatchParams};

use super::Context;
use crate::crd::{FuncQueue, FuncQueueStatus};
use crate::error::Result;
use crate::redis_metrics::QueueId;

/// The merge patch that turns status `stored` into `st`. A field `st` leaves out (an empty
/// `consumers`, a reading that is gone) is sent as `null`: a merge patch keeps every field it
/// does not name, so the last pool's deletion would otherwise leave it in `consumers`.
pub fn body(st: &FuncQueueStatus, stored: Option<&FuncQueueStatus>) -> serde_json::Value {
    let mut new = serde_json::to_value(st).unwrap_or_default();
    let old = stored
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or_default();
    if let (Some(new), Some(old)) = (new.as_object_mut(), old.as_object()) {
        for k in old.keys() {
            new.entry(k.clone()).or_insert(serde_json::Value::Null);
        }
    }
    serde_json::json!({ "status": new })
}

/// Merge-patch `st` into the status of queue `id` (status only: the spec is the user's);
/// `stored`: the status as read.
pub async fn patch(
    ctx: &Context,
    id: &QueueId,
    st: &FuncQueueStatus,
    stored: Option<&FuncQueueStatus>,
) -> Result<()> {
    let api: Api<FuncQueue> = Api::namespaced(ctx.shared.client.clone(), &id.namespace);
    api.patch_status(
        &id.name,
        &PatchParams::default(),
        &Patch::Merge(&body(st, stored)),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_new_status_leaves_out_is_removed() {
        let old = FuncQueueStatus {
            consumers: vec!["w".into()],
            oldest_task_age_seconds: Some(3.0),
            depth: Some(4),
            ..Default::default()
        };
        let new = FuncQueueStatus {
            depth: Some(0),
            ..Default::default()
        };
        let b = body(&new, Some(&old));
        assert_eq!(b["status"]["consumers"], serde_json::Value::Null);
        assert!(b["status"].as_object().unwrap().contains_key("consumers"));
        assert_eq!(b["status"]["oldestTaskAgeSeconds"], serde_json::Value::Null);
        assert_eq!(b["status"]["depth"], 0);
        // nothing stored: nothing to remove
        let b = body(&new, None);
        assert!(!b["status"].as_object().unwrap().contains_key("consumers"));
    }
}
