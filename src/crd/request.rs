use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::amount::Amount;

/// A member's request for more credits this cycle. Approve or deny it by
/// patching `status.approval`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "credits.alchemi.io",
    version = "v1alpha1",
    kind = "CreditRequest",
    namespaced,
    shortname = "creq",
    category = "credits",
    status = "CreditRequestStatus",
    derive = "PartialEq",
    cel,
    doc = "A request for extra credits for one member. Approve with: kubectl patch creditrequest NAME --subresource=status --type=merge -p '{\"status\":{\"approval\":{\"decision\":\"Approve\"}}}'",
    validation = kube::core::Rule::new("self.spec == oldSelf.spec").message("spec is immutable: create a new request instead"),
    printcolumn(name = "Member", type_ = "string", json_path = ".spec.member"),
    printcolumn(name = "Credits", type_ = "string", json_path = ".spec.credits"),
    printcolumn(name = "Approved", type_ = "string", json_path = ".status.approvedCredits"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct CreditRequestSpec {
    /// The MemberAllocation (object name) the credits are for.
    #[schemars(length(min = 1, max = 253))]
    pub member: String,
    /// Credits asked for; more than zero.
    #[x_kube(validation = kube::core::Rule::new("string(self).matches('[1-9]')").message("must be greater than zero"))]
    pub credits: Amount,
    /// Why the credits are needed. Required.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
}

/// Where a request stands.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestPhase {
    Pending,
    Approved,
    Denied,
    AutoApproved,
}

/// An approver's decision.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny,
}

/// Written by an approver with a status patch; the operator never writes it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.decision != 'Deny' || (has(self.reason) && self.reason.matches('\\\\S'))").message("a denial needs a reason"))]
pub struct Approval {
    /// `Approve` or `Deny`.
    pub decision: Decision,
    /// Credits to grant (0 < credits ≤ spec.credits); the requested amount
    /// when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<Amount>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
    /// Who decided: the approver's username, stamped from the API
    /// request's user by the chart's admission policy (or by the operator
    /// for decisions made through its HTTP API). Without the policy it is
    /// whatever the writer put here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub by: Option<String>,
}

/// The decision and its effect, as the ledger recorded it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(oldSelf.approval) || (has(self.approval) && self.approval == oldSelf.approval)").message("status.approval cannot change once set"))]
pub struct CreditRequestStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `InvalidApproval`, `MemberNotFound`, `DecisionIgnored`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RequestPhase>,
    /// The approver's decision (set by a status patch, immutable once set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Credits granted to the member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub approved_credits: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Time>,
    /// The approver's username, or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// The cycle the grant counts in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle: Option<u64>,
}
