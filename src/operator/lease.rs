//! Leader election on a coordination.k8s.io Lease: one writer at a time.
//!
//! As client-go's leader election does, a Lease counts as expired when
//! this replica has seen its record unchanged for the lease duration, by
//! its own monotonic clock: the holder's `renewTime` is another machine's
//! wall clock and is never compared with ours. The holder renews every
//! `duration / 5` from the moment it takes the Lease (also while it
//! replays the ledger) and gives leadership up when it has not managed to
//! renew for `2/3` of the duration, before anyone may take over. Taking
//! over opens the ledger, which takes the next epoch from the database
//! and so fences off a deposed holder that has not noticed yet. On
//! graceful shutdown the holder hands the Lease back so a standby takes
//! over at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// The label the holder puts on its own pod; the API Service selects it.
pub const LEADER_LABEL: &str = "credits.alchemi.io/leader";

/// What identifies one version of the Lease's record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<String>,
    transitions: Option<i32>,
}

/// Competes for one Lease under one identity.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The record last seen, and when this replica first saw it.
    observed: Mutex<Option<(Record, Instant)>>,
}

fn record_of(spec: &LeaseSpec) -> Record {
    Record {
        holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
        renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
        transitions: spec.lease_transitions,
    }
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
            observed: Mutex::new(None),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// How often the holder renews and a standby retries.
    pub fn retry_every(&self) -> Duration {
        self.duration / 5
    }

    /// How long the holder may fail to renew before it gives up: well
    /// before a standby may take over.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// Remembers `record` as seen now unless it is the one already seen;
    /// returns since when it has been seen unchanged.
    fn observe(&self, record: Record, now: Instant) -> Instant {
        let Ok(mut seen) = self.observed.lock() else {
            return now;
        };
        match &*seen {
            Some((r, since)) if *r == record => *since,
            _ => {
                *seen = Some((record, now));
                now
            }
        }
    }

    /// The current holder, as last observed.
    pub fn holder(&self) -> Option<String> {
        self.observed
            .lock()
            .ok()
            .and_then(|o| o.as_ref().and_then(|(r, _)| r.holder.clone()))
    }

    /// Takes or renews the Lease; true while this identity holds it.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let wall = jiff::Timestamp::now();
        let local = Instant::now();
        let seconds = self.duration.as_secs().max(1) as i32;
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let spec = LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(wall)),
                renew_time: Some(MicroTime(wall)),
                lease_transitions: Some(0),
                ..Default::default()
            };
            let lease = Lease {
                metadata: kube::core::ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(spec.clone()),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(record_of(&created.spec.unwrap_or(spec)), local);
                    Ok(true)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = record_of(&spec);
        let ours = record.holder.as_deref() == Some(self.identity.as_str());
        let since = self.observe(record.clone(), local);
        let lasts = Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(seconds)).unwrap_or(1));
        let expired = record.holder.is_none() || local.duration_since(since) >= lasts;
        if !ours && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let mut patch = json!({
            "metadata": {"resourceVersion": lease.metadata.resource_version},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": seconds,
                "renewTime": MicroTime(wall),
                "leaseTransitions": transitions,
            }
        });
        if !ours {
            patch["spec"]["acquireTime"] = json!(MicroTime(wall));
        }
        // The resourceVersion makes this a compare-and-swap: of two
        // standbys taking over at once, one gets 409.
        match self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(updated) => {
                if let Some(spec) = updated.spec {
                    self.observe(record_of(&spec), local);
                }
                Ok(true)
            }
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

    /// Renews the Lease until it is lost or cannot be renewed within the
    /// renew deadline; returns why leadership ended.
    pub async fn hold(&self) -> String {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.retry_every()).await;
            match self.try_acquire().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    return format!(
                        "lost the lease to {}",
                        self.holder().unwrap_or_else(|| "another replica".into())
                    )
                }
                Err(e) if renewed.elapsed() >= self.renew_deadline() => {
                    return format!(
                        "could not renew the lease for {:?} ({e}): giving leadership up",
                        renewed.elapsed()
                    )
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the lease; retrying"),
            }
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
