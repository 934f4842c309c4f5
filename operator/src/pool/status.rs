//! Status: what the pool's status says after a reconcile (pure), and the status patch
//! (the status subresource only; spec is never written).

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};

use super::size::{MetricsState, Sizing};
use crate::conditions::{self, new};
use crate::crd::{FuncWorkerPool, FuncWorkerPoolStatus, PoolRole};
use crate::crd_ext::selector_string;
use crate::error::Result;

/// Status of a pool whose spec cannot be acted on.
pub fn invalid(
    pool: &FuncWorkerPool,
    name: &str,
    field: &str,
    reason: &str,
    now: &str,
) -> FuncWorkerPoolStatus {
    let mut s = pool.status.clone().unwrap_or_default();
    let g = pool.metadata.generation;
    s.observed_generation = g;
    s.selector = Some(selector_string(name));
    conditions::set(
        &mut s.conditions,
        new(
            "SpecValid",
            false,
            "InvalidSpec",
            format!("{field}: {reason}"),
            g,
        ),
        now,
    );
    conditions::set(
        &mut s.conditions,
        new(
            "Ready",
            false,
            "InvalidSpec",
            format!("{field}: {reason}"),
            g,
        ),
        now,
    );
    s
}

/// Status of a pool whose Deployment or ConfigMap the API server refused (400, 422):
/// `Ready=False`, `reason` (`DeploymentRejected`, `ConfigMapRejected`) and the API server's
/// message. The operator's own checks passed (`SpecValid=True`); the other conditions keep
/// what the last reconcile found.
pub fn rejected(
    pool: &FuncWorkerPool,
    name: &str,
    reason: &str,
    message: &str,
    now: &str,
) -> FuncWorkerPoolStatus {
    let mut s = pool.status.clone().unwrap_or_default();
    let g = pool.metadata.generation;
    s.observed_generation = g;
    s.selector = Some(selector_string(name));
    let c = &mut s.conditions;
    conditions::set(c, new("SpecValid", true, "Valid", "", g), now);
    conditions::set(c, new("Ready", false, reason, message, g), now);
    s
}

/// Status after a successful apply.
pub fn reconciled(
    pool: &FuncWorkerPool,
    name: &str,
    sizing: &Sizing,
    deployment: &Deployment,
    beat_conflict: Option<&str>,
    now: &str,
) -> FuncWorkerPoolStatus {
    let prior = pool.status.clone().unwrap_or_default();
    let mut s = prior.clone();
    let g = pool.metadata.generation;
    let ds = deployment.status.clone().unwrap_or_default();
    let spec_replicas = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(sizing.decision.desired);
    let desired = sizing.replicas.unwrap_or(spec_replicas);
    s.replicas = ds.replicas.unwrap_or(0);
    s.ready_replicas = ds.ready_replicas.unwrap_or(0);
    s.desired_replicas = desired;
    s.selector = Some(selector_string(name));
    s.decision = Some(sizing.decision.to_status());
    s.queues = sizing.depths.clone();
    s.observed_generation = g;
    if prior.desired_replicas != desired || prior.last_scale_time.is_none() {
        s.last_scale_time = Some(now.to_string());
    }
    let c = &mut s.conditions;
    conditions::set(c, new("SpecValid", true, "Valid", "", g), now);
    match &sizing.metrics {
        MetricsState::NotNeeded => conditions::remove(c, "MetricsAvailable"),
        MetricsState::Available => {
            conditions::set(c, new("MetricsAvailable", true, "Polled", "", g), now)
        }
        MetricsState::Unavailable(e) => conditions::set(
            c,
            new(
                "MetricsAvailable",
                false,
                "RedisUnavailable",
                format!("{e}; holding {desired} replicas"),
                g,
            ),
            now,
        ),
    }
    let scaling = s.replicas != desired;
    let (reason, msg) = if !scaling {
        ("Stable", String::new())
    } else if s.replicas < desired {
        (
            "ScalingUp",
            format!("{} → {desired}: {}", s.replicas, sizing.decision.message),
        )
    } else {
        (
            "ScalingDown",
            format!("{} → {desired}: {}", s.replicas, sizing.decision.message),
        )
    };
    conditions::set(c, new("Scaling", scaling, reason, msg, g), now);
    if pool.spec.role == PoolRole::Beat {
        match beat_conflict {
            Some(other) => conditions::set(
                c,
                new(
                    "Conflict",
                    true,
                    "BeatAlreadyRunning",
                    format!(
                        "Beat pool {other} already runs for this namespace and Redis; this one stays at 0"
                    ),
                    g,
                ),
                now,
            ),
            None => conditions::set(c, new("Conflict", false, "NoConflict", "", g), now),
        }
    }
    let ready = beat_conflict.is_none() && s.ready_replicas >= desired;
    let (reason, msg) = match (beat_conflict, ready) {
        (Some(_), _) => (
            "Conflict",
            "refused: another Beat pool runs for this Redis".to_string(),
        ),
        (None, true) => (
            "AllReplicasReady",
            format!("{}/{desired} ready", s.ready_replicas),
        ),
        (None, false) => (
            "WaitingForReplicas",
            format!("{}/{desired} ready", s.ready_replicas),
        ),
    };
    conditions::set(c, new("Ready", ready, reason, msg, g), now);
    s
}

/// Patch the status subresource when it differs from what the object has.
pub async fn patch(
    api: &Api<FuncWorkerPool>,
    pool: &FuncWorkerPool,
    name: &str,
    status: FuncWorkerPoolStatus,
) -> Result<bool> {
    if pool.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    let body = serde_json::json!({ "status": status });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(true)
}
