//! The JSON shapes of HTTP API v1. Amounts in answers are canonical
//! decimal strings; amounts in bodies may be strings or JSON numbers and
//! are always read from their text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::amount::Amount;

/// An amount in a request body: `"12.5"` or `12.5`, parsed exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct AmountIn(pub Amount);

impl PartialSchema for AmountIn {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^-?[0-9]+(\.[0-9]+)?$"))
                    .description(Some("A decimal string such as \"12.5\"")),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .description(Some("A JSON number, read from its text")),
            )
            .description(Some("An amount: at most 9 decimal places and 18 integer digits"))
            .into()
    }
}

impl ToSchema for AmountIn {}

/// `tags`: at most 8 keys, string values of at most 256 characters.
fn tags_schema() -> utoipa::openapi::schema::Object {
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::Object,
            Type::Null,
        ]))
        .max_properties(Some(8))
        .additional_properties(Some(
            ObjectBuilder::new().schema_type(Type::String).max_length(Some(256)),
        ))
        .description(Some("Up to 8 `key: value` tags, kept in the journal with the event."))
        .build()
}

/// Body of `POST …/usage`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsageIn {
    /// The member's user id.
    #[schema(example = "u-1001")]
    pub member: String,
    /// Cost in dollars, converted with the account's credit factor.
    #[serde(default)]
    pub cost_usd: Option<AmountIn>,
    /// Credits, when the gateway counts in credits itself.
    #[serde(default)]
    pub credits: Option<AmountIn>,
    /// Unique per event and account; a retry with the same key debits once.
    pub idempotency_key: String,
    /// When the usage happened (informational; never selects a cycle).
    #[serde(default)]
    pub occurred_at: Option<String>,
    /// The model that served the call, for cost tracking (at most 64
    /// characters: letters, digits and `- _ . : / @ +`).
    #[serde(default)]
    #[schema(example = "gpt-4o")]
    pub model: Option<String>,
    /// The provider that served it, named like `model`.
    #[serde(default)]
    #[schema(example = "openai")]
    pub provider: Option<String>,
    /// Up to 8 `key: value` tags, kept in the journal with the event.
    #[serde(default)]
    #[schema(schema_with = tags_schema)]
    pub tags: Option<BTreeMap<String, String>>,
}

/// Credits used and left for the member after a usage event.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberBalance {
    #[schema(value_type = String)]
    pub used: Amount,
    #[schema(value_type = String)]
    pub remaining: Amount,
}

/// Answer of `POST …/usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageOut {
    /// True when this key was seen before; the answer is the first one.
    pub duplicate: bool,
    /// Credits debited.
    #[schema(value_type = String)]
    pub credits: Amount,
    pub member: MemberBalance,
}

/// Body of `POST …/authorize`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizeIn {
    /// The member's user id.
    #[schema(example = "u-1001")]
    pub member: String,
    #[serde(default)]
    pub credits: Option<AmountIn>,
    #[serde(default)]
    pub cost_usd: Option<AmountIn>,
}

/// Answer of `POST …/authorize`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizeOut {
    pub allowed: bool,
    /// The smallest headroom of member, group and account; null while
    /// credit tracking is disabled.
    #[schema(value_type = Option<String>)]
    pub remaining: Option<Amount>,
    /// The scope with that headroom: `member`, `group` or `account`.
    pub limited_by: Option<String>,
}

/// Body of `POST …/holds`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HoldIn {
    /// The member's user id.
    #[schema(example = "u-1001")]
    pub member: String,
    #[serde(default)]
    pub credits: Option<AmountIn>,
    #[serde(default)]
    pub cost_usd: Option<AmountIn>,
    /// Seconds until an unsettled hold expires (1 to 604800).
    pub ttl_seconds: u64,
    pub idempotency_key: String,
}

/// Body of `POST …/holds/{id}/settle`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettleIn {
    #[serde(default)]
    pub credits: Option<AmountIn>,
    #[serde(default)]
    pub cost_usd: Option<AmountIn>,
    /// The model that served the call, for cost tracking (at most 64
    /// characters: letters, digits and `- _ . : / @ +`).
    #[serde(default)]
    #[schema(example = "gpt-4o")]
    pub model: Option<String>,
    /// The provider that served it, named like `model`.
    #[serde(default)]
    #[schema(example = "openai")]
    pub provider: Option<String>,
    /// Up to 8 `key: value` tags, kept in the journal with the event.
    #[serde(default)]
    #[schema(schema_with = tags_schema)]
    pub tags: Option<BTreeMap<String, String>>,
}

/// A hold.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldOut {
    pub id: String,
    pub member: String,
    /// Credits held.
    #[schema(value_type = String)]
    pub credits: Amount,
    /// `Open`, `Settled`, `Released` or `Expired`.
    pub state: String,
    pub expires_at: String,
    /// Credits debited by the settlement.
    #[schema(value_type = Option<String>)]
    pub settled_credits: Option<Amount>,
    pub duplicate: bool,
}

/// A cycle window.
#[derive(Debug, Serialize, ToSchema)]
pub struct CycleOut {
    pub number: u64,
    pub start: String,
    pub end: String,
}

/// One group's share in the overview.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupShare {
    pub name: String,
    #[schema(value_type = String)]
    pub budget: Amount,
    #[schema(value_type = String)]
    pub used: Amount,
}

/// Answer of `GET …/overview`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OverviewOut {
    pub cycle: CycleOut,
    #[schema(value_type = String)]
    pub credits_per_cycle: Amount,
    #[schema(value_type = String)]
    pub used: Amount,
    #[schema(value_type = String)]
    pub balance: Amount,
    #[schema(value_type = String)]
    pub usage_percent: Amount,
    #[schema(value_type = String)]
    pub allocated: Amount,
    #[schema(value_type = String)]
    pub unallocated: Amount,
    pub tracking_enabled: bool,
    pub groups: Vec<GroupShare>,
    /// Requests waiting for an admin.
    pub pending_requests: u64,
    /// The ledger's time of this answer (time to the next reset is
    /// `cycle.end − asOf`, whatever the caller's clock says).
    pub as_of: String,
    pub settings: SettingsOut,
}

/// The account's settings, as its spec states them.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettingsOut {
    #[schema(value_type = String)]
    pub credits_per_cycle: Amount,
    /// `CalendarMonth` or a duration such as `15d`, `1w`, `12h`.
    pub cadence: String,
    pub timezone: String,
    #[schema(value_type = String)]
    pub credit_factor: Amount,
    #[schema(value_type = String)]
    pub signup_credits: Amount,
    pub default_group: String,
}

/// Body of `PATCH …/members/{userId}`: the values to change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberPatchIn {
    #[serde(default)]
    pub monthly_credits: Option<AmountIn>,
    #[serde(default)]
    pub extra_credits: Option<AmountIn>,
    /// Move the member to this group.
    #[serde(default)]
    pub group: Option<String>,
    /// Edit an object a GitOps tool manages anyway.
    #[serde(default)]
    pub force: bool,
}

/// Body of `PATCH …/groups/{group}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupPatchIn {
    #[serde(default)]
    pub monthly_credits: Option<AmountIn>,
    #[serde(default)]
    pub extra_credits: Option<AmountIn>,
    #[serde(default)]
    pub auto_approve_reserve: Option<AmountIn>,
    #[serde(default)]
    pub force: bool,
}

/// Body of `PATCH …/settings`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsPatchIn {
    #[serde(default)]
    pub credits_per_cycle: Option<AmountIn>,
    /// `CalendarMonth` or a duration such as `15d`, `1w`, `1d`, `12h`, `1h`;
    /// a change starts a fresh cycle.
    #[serde(default)]
    pub cadence: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub credit_factor: Option<AmountIn>,
    #[serde(default)]
    pub signup_credits: Option<AmountIn>,
    #[serde(default)]
    pub force: bool,
}

/// An account the caller can read.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountRef {
    pub namespace: String,
    pub name: String,
}

/// Answer of `GET /v1/accounts`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountsOut {
    pub items: Vec<AccountRef>,
}

/// Answer of `GET /v1/whoami`: who the API takes the caller for.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoamiOut {
    pub name: String,
    /// `admin` or `gateway` (in a cluster `admin`: RBAC decides each call).
    pub role: String,
}

/// A group's figures.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupOut {
    pub name: String,
    #[schema(value_type = String)]
    pub monthly_credits: Amount,
    #[schema(value_type = String)]
    pub extra_credits: Amount,
    #[schema(value_type = String)]
    pub budget: Amount,
    #[schema(value_type = String)]
    pub distributed: Amount,
    #[schema(value_type = String)]
    pub available: Amount,
    #[schema(value_type = String)]
    pub granted: Amount,
    #[schema(value_type = String)]
    pub used: Amount,
    #[schema(value_type = String)]
    pub auto_approve_reserve: Amount,
    #[schema(value_type = String)]
    pub auto_approve_remaining: Amount,
    pub members: u32,
}

/// Answer of `GET …/groups`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupsOut {
    pub items: Vec<GroupOut>,
}

/// A user of the platform.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserOut {
    pub id: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub name: String,
}

/// The user being enrolled: every field required.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserIn {
    #[schema(min_length = 1, max_length = 253, example = "u-5001")]
    pub id: String,
    /// An email address.
    #[schema(min_length = 3, max_length = 320, example = "new@acme.example")]
    pub email: String,
    #[schema(min_length = 1, max_length = 256, example = "New Hire")]
    pub name: String,
}

/// A member's figures.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberOut {
    /// The MemberAllocation name.
    pub name: String,
    pub user: UserOut,
    pub group: String,
    #[schema(value_type = String)]
    pub monthly_credits: Amount,
    #[schema(value_type = String)]
    pub extra_credits: Amount,
    #[schema(value_type = String)]
    pub granted: Amount,
    #[schema(value_type = String)]
    pub used: Amount,
    #[schema(value_type = String)]
    pub remaining: Amount,
}

/// A page of members.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MembersOut {
    pub items: Vec<MemberOut>,
    pub page: u32,
    pub page_size: u32,
    pub total: u64,
}

/// Body of `POST …/members`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolIn {
    pub user: UserIn,
    /// The group; the account's default group when absent.
    #[serde(default)]
    pub group: Option<String>,
}

/// A credit request.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestOut {
    pub name: String,
    /// The member's user id (the MemberAllocation name when it is unknown).
    pub member: String,
    pub user: Option<UserOut>,
    #[schema(value_type = String)]
    pub credits: Amount,
    pub reason: String,
    /// `Pending`, `Approved`, `Denied` or `AutoApproved`.
    pub phase: String,
    #[schema(value_type = Option<String>)]
    pub approved_credits: Option<Amount>,
    pub submitted_at: String,
    pub decided_at: Option<String>,
    pub decided_by: Option<String>,
}

/// A page of requests.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestsOut {
    pub items: Vec<RequestOut>,
    pub page: u32,
    pub page_size: u32,
    pub total: u64,
}

/// Body of `POST …/requests`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestIn {
    /// The member's user id.
    #[schema(example = "u-1001")]
    pub member: String,
    pub credits: AmountIn,
    /// Why the credits are needed. Required.
    #[schema(min_length = 1, max_length = 1024)]
    pub reason: String,
}

/// Body of `POST …/requests/{name}/approve`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveIn {
    /// Credits to grant; the requested amount when absent.
    #[serde(default)]
    pub credits: Option<AmountIn>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Body of `POST …/requests/{name}/deny`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DenyIn {
    /// Why the request is denied. Required.
    #[schema(min_length = 1, max_length = 1024)]
    pub reason: String,
}

/// One row of `GET …/costs`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostItemOut {
    /// The model, provider, group or member user id; `(none)` sums usage
    /// that named no model (or provider), `(other)` the names past the
    /// per-cycle bound.
    pub key: String,
    /// A member's display name (or email); absent for other breakdowns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Credits debited.
    #[schema(value_type = String)]
    pub credits: Amount,
    /// Dollars the gateways reported (usage counted in credits adds 0).
    #[schema(value_type = String)]
    pub cost_usd: Amount,
    /// Usage events and settled holds.
    pub events: u64,
}

/// The account's sums for the cycle, whatever the breakdown.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostTotalOut {
    #[schema(value_type = String)]
    pub credits: Amount,
    #[schema(value_type = String)]
    pub cost_usd: Amount,
    pub events: u64,
}

/// Answer of `GET …/costs`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostsOut {
    /// `model`, `provider`, `group` or `member`.
    pub group_by: String,
    pub cycle: CycleOut,
    /// Largest first: by credits, then dollars, then key.
    pub items: Vec<CostItemOut>,
    pub total: CostTotalOut,
    pub page: u32,
    pub page_size: u32,
    /// Rows across all pages.
    pub count: u64,
}

/// Body of `POST …/reset`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetIn {}

/// An error: a stable code, a sentence, and the field when one is at fault.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorOut {
    pub error: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `insufficient_credits`: the scope that refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limited_by: Option<String>,
}

/// Answer of `/healthz` and `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthOut {
    pub status: String,
}
