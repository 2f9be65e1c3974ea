use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::amount::Amount;

/// One user's share of a group's budget.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "credits.alchemi.io",
    version = "v1alpha1",
    kind = "MemberAllocation",
    namespaced,
    shortname = "cmem",
    category = "credits",
    status = "MemberAllocationStatus",
    derive = "PartialEq",
    cel,
    doc = "A member allocation: the credits per cycle of one user, in one group.",
    printcolumn(name = "Group", type_ = "string", json_path = ".status.group"),
    printcolumn(name = "Email", type_ = "string", json_path = ".spec.user.email"),
    printcolumn(name = "Monthly", type_ = "string", json_path = ".status.monthlyCredits"),
    printcolumn(name = "Used", type_ = "string", json_path = ".status.used"),
    printcolumn(name = "Remaining", type_ = "string", json_path = ".status.remaining")
)]
#[serde(rename_all = "camelCase")]
pub struct MemberAllocationSpec {
    /// The CreditGroup this member belongs to; the account's default group
    /// when empty. Moving a member mid-cycle takes its usage along.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Who the member is. `user.id` is what usage is recorded against.
    pub user: UserRef,
    /// Credits per cycle. When empty, the account's signup credits as the
    /// ledger recorded them when it first saw this member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_credits: Option<Amount>,
    /// Credits added every cycle until removed.
    #[serde(default)]
    pub extra_credits: Amount,
}

/// A user of the AI platform.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.id == oldSelf.id").message("user.id is immutable"))]
pub struct UserRef {
    /// The user id gateways record usage against. Unique in the account
    /// and immutable.
    #[schemars(length(min = 1, max = 253))]
    pub id: String,
    /// The user's email, used for search and ordering. Required.
    #[schemars(length(min = 3, max = 320))]
    #[x_kube(validation = kube::core::Rule::new("self.contains('@')").message("must be an email address"))]
    pub email: String,
    /// The user's display name. Required.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
}

/// The member's effective allocation and usage this cycle.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberAllocationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `GroupNotFound`, `DuplicateUserId`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The group the member counts in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Effective credits per cycle (the spec, or the recorded signup credits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub monthly_credits: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub extra_credits: Option<Amount>,
    /// Credits granted by requests this cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub granted: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub used: Option<Amount>,
    /// `monthly + extra + granted − used`; negative when overspent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub remaining: Option<Amount>,
}
