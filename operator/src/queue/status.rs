//! *Status*: write the queue's status when it changed.

use kube::api::{Api, Patch, PatchParams};

use crate::context::Context;
use crate::crd::{FuncQueue, FuncQueueStatus};
use crate::error::Result;
use crate::redis_metrics::QueueId;

/// Merge-patch `st` into the status of queue `id` (status only: the spec is the user's).
pub async fn patch(ctx: &Context, id: &QueueId, st: &FuncQueueStatus) -> Result<()> {
    let api: Api<FuncQueue> = Api::namespaced(ctx.client.clone(), &id.namespace);
    api.patch_status(
        &id.name,
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({ "status": st })),
    )
    .await?;
    Ok(())
}
