//! Apply: server-side apply of the built objects with one field manager, forced.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::build::Desired;
use crate::context::FIELD_MANAGER;
use crate::error::{Error, Result};

/// Apply `desired`; returns the Deployment as the API server has it now. An object the API
/// server refuses is [`Error::Rejected`].
pub async fn apply(client: &Client, ns: &str, desired: &Desired) -> Result<Deployment> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    if let Some(cm) = &desired.configmap {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let name = cm.name_any();
        api.patch(&name, &pp, &Patch::Apply(with_kind(cm, "v1", "ConfigMap")?))
            .await
            .map_err(|e| Error::applying("ConfigMap", &name, e))?;
    }
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d = &desired.deployment;
    let name = d.name_any();
    api.patch(
        &name,
        &pp,
        &Patch::Apply(with_kind(d, "apps/v1", "Deployment")?),
    )
    .await
    .map_err(|e| Error::applying("Deployment", &name, e))
}

/// Server-side apply needs `apiVersion` and `kind` in the body.
fn with_kind<T: serde::Serialize>(
    obj: &T,
    api_version: &str,
    kind: &str,
) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(obj)?;
    v["apiVersion"] = api_version.into();
    v["kind"] = kind.into();
    Ok(v)
}
