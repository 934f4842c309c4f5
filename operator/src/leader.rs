//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Two (or more) operator replicas run; the one holding the Lease reconciles. The holder
//! renews it every `duration / 3`; a standby takes it over once `renewTime + duration` has
//! passed, so a dead leader is replaced within the lease duration. Writes use the Lease's
//! `resourceVersion` (optimistic concurrency): of two standbys racing, one gets a conflict.
//! On SIGTERM the leader releases the Lease so a standby takes over at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::error::{Error, Result};

/// A Lease used as a lock.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

fn ts(ms: u64) -> MicroTime {
    MicroTime(Timestamp::from_millisecond(ms as i64).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    /// A lock on Lease `namespace/name` held as `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// How long a lease lasts without renewal.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Take the lease if it is free or expired, or renew it if held. `Ok(true)`: we lead.
    /// `now_ms`: wall clock, unix ms.
    pub async fn try_acquire_or_renew(&self, now_ms: u64) -> Result<bool> {
        let secs = self.duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(ts(now_ms)),
                    renew_time: Some(ts(now_ms)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let held_by_me = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        if !held_by_me {
            let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
            let expires_ms = spec
                .renew_time
                .as_ref()
                .map(|t| t.0.as_millisecond())
                .unwrap_or(0)
                + i64::from(spec.lease_duration_seconds.unwrap_or(secs)) * 1000;
            if holder.is_some() && (now_ms as i64) < expires_ms {
                return Ok(false);
            }
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(ts(now_ms));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(ts(now_ms));
        spec.lease_duration_seconds = Some(secs);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The current holder, if any.
    pub async fn holder(&self) -> Result<Option<String>> {
        Ok(self
            .api
            .get_opt(&self.name)
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity))
    }

    /// Give the lease up (if we hold it) so a standby takes over without waiting.
    pub async fn release(&self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
            .map_err(|source| Error::Leadership {
                what: "cannot release lease",
                source: Box::new(source),
            })
    }
}
