//! Leader election on a coordination.k8s.io Lease: one writer at a time.
//!
//! The holder renews the Lease well within its duration; a standby takes
//! it over once it has expired. Taking over opens the ledger, which takes
//! the next epoch from the database and so fences off a deposed holder
//! that has not noticed yet. On graceful shutdown the holder hands the
//! Lease back so a standby takes over at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// The label the holder puts on its own pod; the API Service selects it.
pub const LEADER_LABEL: &str = "credits.alchemi.io/leader";

/// Competes for one Lease under one identity.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// How often the holder renews: a third of the duration.
    pub fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    /// Takes or renews the Lease at `now`; true while this identity holds it.
    pub async fn try_acquire(&self, now: jiff::Timestamp) -> Result<bool, kube::Error> {
        let seconds = self.duration.as_secs().max(1) as i32;
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: kube::core::ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let renewed = spec
            .renew_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let lasts = jiff::SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(seconds)));
        let expired = holder.is_none() || renewed.checked_add(lasts).map_or(true, |until| until <= now);
        if !ours && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let mut patch = json!({
            "metadata": {"resourceVersion": lease.metadata.resource_version},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": seconds,
                "renewTime": MicroTime(now),
                "leaseTransitions": transitions,
            }
        });
        if !ours {
            patch["spec"]["acquireTime"] = json!(MicroTime(now));
        }
        // The resourceVersion makes this a compare-and-swap: of two
        // standbys taking over at once, one gets 409.
        match self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Hands the Lease back if this identity holds it.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        if lease.spec.and_then(|s| s.holder_identity).as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        let patch = json!({
            "metadata": {"resourceVersion": lease.metadata.resource_version},
            "spec": {"holderIdentity": null, "renewTime": null}
        });
        match self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Labels (or unlabels) this pod as the leader, so the API Service routes
/// to it. Readiness stays "healthy" on standbys, so rollouts and
/// PodDisruptionBudgets work.
pub async fn label_pod(client: Client, namespace: &str, pod: &str, leader: bool) -> Result<(), kube::Error> {
    let value = if leader { json!("true") } else { serde_json::Value::Null };
    let patch = json!({"metadata": {"labels": {LEADER_LABEL: value}}});
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client, namespace)
        .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}
