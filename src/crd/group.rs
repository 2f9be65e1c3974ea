use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::amount::Amount;

/// A group's budget per cycle, shared out to its members, and the reserve
/// from which credit requests are approved without a human.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "credits.alchemi.io",
    version = "v1alpha1",
    kind = "CreditGroup",
    namespaced,
    shortname = "cgrp",
    category = "credits",
    status = "CreditGroupStatus",
    derive = "PartialEq",
    cel,
    doc = "A credit group: a budget per cycle distributed to its members, and an auto-approve reserve for credit requests.",
    printcolumn(name = "Monthly", type_ = "string", json_path = ".spec.monthlyCredits"),
    printcolumn(name = "Extra", type_ = "string", json_path = ".spec.extraCredits"),
    printcolumn(name = "Distributed", type_ = "string", json_path = ".status.distributed"),
    printcolumn(name = "Available", type_ = "string", json_path = ".status.available"),
    printcolumn(name = "Auto-Approve", type_ = "string", json_path = ".status.autoApproveRemaining"),
    printcolumn(name = "Used", type_ = "string", json_path = ".status.used"),
    printcolumn(name = "Members", type_ = "integer", json_path = ".status.members")
)]
#[serde(rename_all = "camelCase")]
pub struct CreditGroupSpec {
    /// The group's credits per cycle ("monthly" whatever the cadence).
    #[serde(default)]
    pub monthly_credits: Amount,
    /// Credits added to the budget every cycle until removed.
    #[serde(default)]
    pub extra_credits: Amount,
    /// Credits per cycle that requests may be granted without a human.
    /// `0` means every request waits for an admin.
    #[serde(default)]
    pub auto_approve_reserve: Amount,
}

/// The live numbers of a group's current cycle, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CreditGroupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `OverDistributed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Number of members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<u32>,
    /// `monthlyCredits + extraCredits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub budget: Option<Amount>,
    /// Sum of members' monthly and extra credits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub distributed: Option<Amount>,
    /// `budget − distributed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub available: Option<Amount>,
    /// Credits granted to members by requests this cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub granted: Option<Amount>,
    /// Credits used by members this cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub used: Option<Amount>,
    /// Auto-approve reserve left this cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub auto_approve_remaining: Option<Amount>,
}
