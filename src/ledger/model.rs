//! The ledger's vocabulary: validated settings, the commands callers send,
//! the events the journal keeps, and the answers callers get.

use jiff::civil::DateTime;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use super::costs::Labels;
use super::error::LedgerError;
use crate::amount::Amount;
use crate::cycle::{time_zone, Cadence, CycleWindow};

/// An account is named `namespace/name`.
pub type AccountId = String;

/// Longest user id, group name or idempotency key accepted.
pub const MAX_NAME_LEN: usize = 253;
/// Longest reason text accepted.
pub const MAX_REASON_LEN: usize = 1024;

/// Checks a required identifier: not empty, not too long.
pub fn check_name(field: &str, value: &str) -> Result<(), LedgerError> {
    if value.trim().is_empty() {
        return Err(LedgerError::field(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(LedgerError::field(
            field,
            format!("must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    Ok(())
}

fn check_reason(field: &str, value: &str) -> Result<(), LedgerError> {
    if value.len() > MAX_REASON_LEN {
        return Err(LedgerError::field(
            field,
            format!("must be at most {MAX_REASON_LEN} characters"),
        ));
    }
    Ok(())
}

/// An account's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSettings {
    pub credits_per_cycle: Amount,
    pub cadence: Cadence,
    pub timezone: String,
    pub credit_factor: Amount,
    pub signup_credits: Amount,
    pub default_group: String,
}

impl AccountSettings {
    /// Validates raw settings; each error names its field under `spec.`.
    pub fn new(
        credits_per_cycle: Amount,
        cadence: &str,
        timezone: &str,
        credit_factor: Amount,
        signup_credits: Amount,
        default_group: &str,
    ) -> Result<Self, LedgerError> {
        let nonneg = |field: &str, a: Amount| a.check_non_negative().map_err(|e| LedgerError::field(field, e));
        let settings = AccountSettings {
            credits_per_cycle: nonneg("spec.creditsPerCycle", credits_per_cycle)?,
            cadence: Cadence::parse(cadence).map_err(|e| LedgerError::field("spec.cadence", e))?,
            timezone: {
                time_zone(timezone).map_err(|e| LedgerError::field("spec.timezone", e))?;
                timezone.to_string()
            },
            credit_factor: nonneg("spec.creditFactor", credit_factor)?,
            signup_credits: nonneg("spec.signupCredits", signup_credits)?,
            default_group: default_group.to_string(),
        };
        check_name("spec.defaultGroup", default_group)?;
        Ok(settings)
    }

    pub fn tracking_enabled(&self) -> bool {
        !self.credit_factor.is_zero()
    }
}

/// A group's settings, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSettings {
    pub monthly_credits: Amount,
    pub extra_credits: Amount,
    pub auto_approve_reserve: Amount,
}

impl GroupSettings {
    pub fn new(monthly: Amount, extra: Amount, reserve: Amount) -> Result<Self, LedgerError> {
        let nonneg = |field: &str, a: Amount| a.check_non_negative().map_err(|e| LedgerError::field(field, e));
        Ok(GroupSettings {
            monthly_credits: nonneg("spec.monthlyCredits", monthly)?,
            extra_credits: nonneg("spec.extraCredits", extra)?,
            auto_approve_reserve: nonneg("spec.autoApproveReserve", reserve)?,
        })
    }

    /// `monthly + extra`.
    pub fn budget(&self) -> Amount {
        self.monthly_credits + self.extra_credits
    }
}

/// Who a member is and what it is allocated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSpec {
    /// The MemberAllocation object name (requests refer to it).
    pub name: String,
    pub user_id: String,
    pub email: String,
    pub display_name: String,
    /// `None`: the account's default group.
    pub group: Option<String>,
    /// `None`: the signup credits recorded at enrolment.
    pub monthly_credits: Option<Amount>,
    pub extra_credits: Amount,
}

impl MemberSpec {
    pub fn validate(&self) -> Result<(), LedgerError> {
        check_name("metadata.name", &self.name)?;
        check_name("spec.user.id", &self.user_id)?;
        if self.email.len() > 320 {
            return Err(LedgerError::field("spec.user.email", "must be at most 320 characters"));
        }
        if self.display_name.len() > 256 {
            return Err(LedgerError::field("spec.user.name", "must be at most 256 characters"));
        }
        for (field, text) in [("spec.user.email", &self.email), ("spec.user.name", &self.display_name)] {
            if let Some(c) = text.chars().find(|c| c.is_control()) {
                return Err(LedgerError::field(
                    field,
                    format!("must not hold control characters (found U+{:04X})", c as u32),
                ));
            }
        }
        if let Some(g) = &self.group {
            check_name("spec.group", g)?;
        }
        if let Some(m) = self.monthly_credits {
            m.check_non_negative()
                .map_err(|e| LedgerError::field("spec.monthlyCredits", e))?;
        }
        self.extra_credits
            .check_non_negative()
            .map_err(|e| LedgerError::field("spec.extraCredits", e))?;
        Ok(())
    }
}

/// What a usage event or a hold costs: credits directly, or dollars that
/// the account's credit factor converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Charge {
    Credits(Amount),
    CostUsd(Amount),
}

impl Charge {
    pub fn amount(self) -> Amount {
        match self {
            Charge::Credits(a) | Charge::CostUsd(a) => a,
        }
    }

    pub fn validate(self) -> Result<(), LedgerError> {
        let (field, a) = match self {
            Charge::Credits(a) => ("credits", a),
            Charge::CostUsd(a) => ("costUsd", a),
        };
        a.check_non_negative()
            .map(|_| ())
            .map_err(|e| LedgerError::field(field, e))
    }
}

/// How an approver decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Grant `credits`, or the requested amount when `None`.
    Approve {
        credits: Option<Amount>,
    },
    Deny,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Pending,
    Approved,
    Denied,
    AutoApproved,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Approved => "Approved",
            Phase::Denied => "Denied",
            Phase::AutoApproved => "AutoApproved",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        [Phase::Pending, Phase::Approved, Phase::Denied, Phase::AutoApproved]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// Why a cycle started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResetReason {
    Created,
    Scheduled,
    Manual,
    CadenceChanged,
}

/// The state of a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldState {
    Open,
    Settled,
    Released,
    Expired,
}

impl HoldState {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldState::Open => "Open",
            HoldState::Settled => "Settled",
            HoldState::Released => "Released",
            HoldState::Expired => "Expired",
        }
    }
}

/// Something a caller asks the ledger to do. Commands are validated and
/// turned into [`Event`]s by the writer; a refused command changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Create or update an account (the first sight sets its anchor).
    ApplyAccount {
        account: AccountId,
        settings: AccountSettings,
    },
    /// Stop an account; its history stays.
    RemoveAccount {
        account: AccountId,
    },
    ApplyGroup {
        account: AccountId,
        name: String,
        settings: GroupSettings,
    },
    RemoveGroup {
        account: AccountId,
        name: String,
    },
    ApplyMember {
        account: AccountId,
        member: MemberSpec,
    },
    /// Stop a member's allocation; usage, grants and history stay with the user id.
    RemoveMember {
        account: AccountId,
        user_id: String,
    },
    /// Start a new cycle now. `mark` is the reset annotation's time: a
    /// mark not later than the last applied one does nothing.
    Reset {
        account: AccountId,
        mark: Option<Timestamp>,
    },
    RecordUsage {
        account: AccountId,
        member: String,
        charge: Charge,
        key: String,
        occurred_at: Option<Timestamp>,
        /// Model, provider and tags, for cost tracking.
        labels: Labels,
    },
    /// Submit a request; `uid` keys it (re-submitting the same uid is a no-op).
    SubmitRequest {
        account: AccountId,
        uid: String,
        name: String,
        member: String,
        credits: Amount,
        reason: String,
    },
    DecideRequest {
        account: AccountId,
        uid: String,
        verdict: Verdict,
        reason: String,
        by: String,
    },
    OpenHold {
        account: AccountId,
        member: String,
        charge: Charge,
        ttl_seconds: u64,
        key: String,
    },
    SettleHold {
        account: AccountId,
        id: String,
        charge: Charge,
        labels: Labels,
    },
    ReleaseHold {
        account: AccountId,
        id: String,
    },
    /// Apply due cycle boundaries and hold expiries (all accounts when `None`).
    Tick {
        account: Option<AccountId>,
    },
}

impl Command {
    /// The account and idempotency key of a command that carries one.
    pub fn idempotency_key(&self) -> Option<(&str, &str)> {
        match self {
            Command::RecordUsage { account, key, .. } | Command::OpenHold { account, key, .. } => {
                Some((account.as_str(), key.as_str()))
            }
            _ => None,
        }
    }
}

/// A fact in the journal. Applying the same events in the same order
/// always yields the same state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    AccountConfigured {
        settings: AccountSettings,
    },
    AccountRemoved,
    CycleStarted {
        number: u64,
        start: Timestamp,
        end: Timestamp,
        anchor: Timestamp,
        anchor_wall: DateTime,
        reason: ResetReason,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mark: Option<Timestamp>,
    },
    /// The current cycle's end moved (a time zone change); nothing resets.
    CycleRetimed {
        end: Timestamp,
    },
    GroupConfigured {
        name: String,
        settings: GroupSettings,
    },
    GroupRemoved {
        name: String,
    },
    /// `signup` is set when the ledger first enrols the user id.
    MemberConfigured {
        spec: MemberSpec,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signup: Option<Amount>,
    },
    MemberRemoved {
        user_id: String,
    },
    UsageRecorded {
        member: String,
        charge: Charge,
        /// Credits debited (0 while tracking is disabled).
        credits: Amount,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        occurred_at: Option<Timestamp>,
        #[serde(default, skip_serializing_if = "Labels::is_empty")]
        labels: Labels,
    },
    RequestSubmitted {
        uid: String,
        name: String,
        member: String,
        credits: Amount,
        reason: String,
    },
    RequestDecided {
        uid: String,
        phase: Phase,
        credits: Amount,
        by: String,
        reason: String,
    },
    HoldOpened {
        id: String,
        member: String,
        charge: Charge,
        credits: Amount,
        expires_at: Timestamp,
    },
    HoldSettled {
        id: String,
        charge: Charge,
        credits: Amount,
        #[serde(default, skip_serializing_if = "Labels::is_empty")]
        labels: Labels,
        /// The hold's member, when the hold had left memory (an expired
        /// hold settled long after, see `state::holds`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member: Option<String>,
    },
    HoldReleased {
        id: String,
    },
    HoldExpired {
        id: String,
    },
}

impl Event {
    /// The hold an event is about, for the journal's index of holds.
    pub fn hold_id(&self) -> Option<&str> {
        match self {
            Event::HoldOpened { id, .. }
            | Event::HoldSettled { id, .. }
            | Event::HoldReleased { id }
            | Event::HoldExpired { id } => Some(id),
            _ => None,
        }
    }

    /// True for an event that can only take credit away (or change no
    /// figure): usage, a hold opened, a request submitted. Every other
    /// event may give credit: a grant, a setting, a reset, a hold let go.
    pub fn only_debits(&self) -> bool {
        matches!(
            self,
            Event::UsageRecorded { .. } | Event::HoldOpened { .. } | Event::RequestSubmitted { .. }
        )
    }
}

/// One journal record: an event of one account, numbered in commit order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub seq: u64,
    pub at: Timestamp,
    pub account: AccountId,
    /// The caller's idempotency key, unique per account.
    pub key: Option<String>,
    pub event: Event,
    /// The part of the key's first answer the event does not carry
    /// ([`super::keys::KeyRecord::stored_answer`]), stored beside it for a
    /// retry that comes after the key left memory. Replay recomputes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<super::keys::StoredAnswer>,
    /// Closed-cycle records the event produced, written to the history
    /// tables in the same commit ([`super::history`]); not journaled.
    #[serde(skip)]
    pub archived: super::history::Archive,
}

/// The answer to a usage event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReceipt {
    pub duplicate: bool,
    pub credits: Amount,
    pub member_used: Amount,
    pub member_remaining: Amount,
}

/// A hold as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldView {
    pub id: String,
    pub member: String,
    pub credits: Amount,
    pub state: HoldState,
    pub expires_at: Timestamp,
    /// Credits debited by the settlement.
    pub settled_credits: Option<Amount>,
    pub duplicate: bool,
}

/// A request as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestView {
    pub uid: String,
    pub name: String,
    pub member: String,
    pub credits: Amount,
    pub reason: String,
    pub phase: Phase,
    pub approved_credits: Option<Amount>,
    pub submitted_at: Timestamp,
    pub decided_at: Option<Timestamp>,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    pub cycle: Option<u64>,
}

/// What a command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Usage(UsageReceipt),
    Hold(HoldView),
    Request(RequestView),
    Cycle(CycleWindow),
}

/// Validates the fields shared by usage and holds.
pub(crate) fn check_key(key: &str) -> Result<(), LedgerError> {
    check_name("idempotencyKey", key)
}

pub(crate) fn check_request_reason(reason: &str) -> Result<(), LedgerError> {
    check_reason("reason", reason)
}

/// The credits an approval grants: `given`, or the requested amount when
/// it names none; 0 < credits ≤ requested, else `InvalidApproval`. The one
/// rule for the ledger, `validate` and standalone manifests.
pub fn check_approval(requested: Amount, given: Option<Amount>) -> Result<Amount, LedgerError> {
    let credits = given.unwrap_or(requested);
    if credits.decimal() <= rust_decimal::Decimal::ZERO || credits > requested {
        return Err(LedgerError::InvalidApproval {
            requested: requested.to_string(),
            given: credits.to_string(),
        });
    }
    Ok(credits)
}
