use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::amount::Amount;

fn default_timezone() -> String {
    "UTC".to_string()
}

fn default_group_name() -> String {
    "default".to_string()
}

/// The credit budget of one namespace: a limit per cycle, the cadence on
/// which cycles reset, and how dollar costs convert to credits.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "credits.alchemi.io",
    version = "v1alpha1",
    kind = "CreditAccount",
    namespaced,
    shortname = "cacct",
    category = "credits",
    status = "CreditAccountStatus",
    derive = "PartialEq",
    cel,
    doc = "A credit account: the per-cycle credit limit of a namespace, its cycle cadence and credit factor. One active account per namespace (the oldest).",
    printcolumn(name = "Cadence", type_ = "string", json_path = ".spec.cadence"),
    printcolumn(name = "Cycle-End", type_ = "string", json_path = ".status.cycle.end"),
    printcolumn(name = "Limit", type_ = "string", json_path = ".spec.creditsPerCycle"),
    printcolumn(name = "Used", type_ = "string", json_path = ".status.used"),
    printcolumn(name = "Balance", type_ = "string", json_path = ".status.balance"),
    printcolumn(name = "Usage%", type_ = "string", json_path = ".status.usagePercent")
)]
#[serde(rename_all = "camelCase")]
pub struct CreditAccountSpec {
    /// The account's credit limit per cycle. Changing it applies at once to
    /// the current cycle: used credits stay, the balance is recalculated.
    /// An integer or a decimal string ("12.5").
    pub credits_per_cycle: Amount,
    /// How often the cycle resets: `CalendarMonth` (same day and time each
    /// month in `timezone`), or a duration such as `15d`, `1w`, `1d`, `12h`,
    /// `30m` (at least `1m`). Changing it starts a new cycle at once.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^(CalendarMonth|[1-9][0-9]{0,8}[mhdw])$')").message("must be CalendarMonth or a duration such as 15d, 1w, 1d, 12h, 30m (minimum 1m)"))]
    pub cadence: String,
    /// IANA time zone for calendar-month boundaries, such as `Europe/Berlin`.
    /// Default `UTC`. Changing it never resets the cycle.
    #[serde(default = "default_timezone")]
    #[schemars(length(min = 1, max = 64))]
    pub timezone: String,
    /// Internal credit units per $1 of cost. Required: `0`, written out,
    /// disables credit tracking (usage is still stored, nothing is debited
    /// and every authorization is allowed); an omission never does.
    pub credit_factor: Amount,
    /// Credits per cycle a member gets when it joins without an explicit
    /// `monthlyCredits`. Recorded at enrolment; `0` disables it.
    #[serde(default)]
    pub signup_credits: Amount,
    /// The group of members that name none. Created by the operator when
    /// missing. Default `default`.
    #[serde(default = "default_group_name")]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$')").message("must be a Kubernetes object name"))]
    pub default_group: String,
}

/// The live numbers of an account's current cycle, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CreditAccountStatus {
    /// The generation of the spec these numbers reflect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `OverAllocated`, `TrackingDisabled`, `DuplicateAccount`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The current cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle: Option<CycleStatus>,
    /// The limit in force for this cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub credits_per_cycle: Option<Amount>,
    /// Credits used by all members this cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub used: Option<Amount>,
    /// `creditsPerCycle − used`; negative when overspent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub balance: Option<Amount>,
    /// `used / creditsPerCycle × 100`, two places; may exceed 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub usage_percent: Option<Amount>,
    /// Sum of group budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub allocated: Option<Amount>,
    /// `creditsPerCycle − allocated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub unallocated: Option<Amount>,
    /// False when `creditFactor` is 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_enabled: Option<bool>,
    /// Number of groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<u32>,
    /// Budget and usage per group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocation_overview: Vec<AllocationEntry>,
    /// The last cycle reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset: Option<LastReset>,
}

/// A cycle: its number (from 1) and its `[start, end)` window.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CycleStatus {
    pub number: u64,
    pub start: Time,
    pub end: Time,
}

/// One group's share of the account.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AllocationEntry {
    pub name: String,
    #[schemars(with = "String")]
    pub budget: Amount,
    #[schemars(with = "String")]
    pub used: Amount,
}

/// When and why the cycle last reset.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastReset {
    pub at: Time,
    pub reason: ResetReason,
}

/// Why a cycle started.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// The account was first seen.
    Created,
    /// A scheduled boundary passed.
    Scheduled,
    /// The reset annotation asked for it.
    Manual,
    /// The cadence changed.
    CadenceChanged,
}
