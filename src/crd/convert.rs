//! Specs to ledger inputs. Every error names the field it is about.

use jiff::Timestamp;

use super::{CreditAccountSpec, CreditGroupSpec, MemberAllocationSpec, RESET_ANNOTATION};
use crate::ledger::{AccountSettings, GroupSettings, LedgerError, MemberSpec};

pub fn account_settings(spec: &CreditAccountSpec) -> Result<AccountSettings, LedgerError> {
    AccountSettings::new(
        spec.credits_per_cycle,
        &spec.cadence,
        &spec.timezone,
        spec.credit_factor,
        spec.signup_credits,
        &spec.default_group,
    )
}

pub fn group_settings(spec: &CreditGroupSpec) -> Result<GroupSettings, LedgerError> {
    GroupSettings::new(spec.monthly_credits, spec.extra_credits, spec.auto_approve_reserve)
}

/// A MemberAllocation named `name` as the ledger sees it.
pub fn member_spec(name: &str, spec: &MemberAllocationSpec) -> Result<MemberSpec, LedgerError> {
    let member = MemberSpec {
        name: name.to_string(),
        user_id: spec.user.id.clone(),
        email: spec.user.email.clone(),
        display_name: spec.user.name.clone(),
        group: spec.group.clone().filter(|g| !g.is_empty()),
        monthly_credits: spec.monthly_credits,
        extra_credits: spec.extra_credits,
    };
    member.validate()?;
    Ok(member)
}

/// The reset annotation's time, if set. A value that is not RFC 3339 is
/// an error naming the annotation.
pub fn reset_mark(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<Option<Timestamp>, LedgerError> {
    let Some(value) = annotations.and_then(|a| a.get(RESET_ANNOTATION)) else {
        return Ok(None);
    };
    value.trim().parse::<Timestamp>().map(Some).map_err(|e| {
        LedgerError::field(
            format!("metadata.annotations[{RESET_ANNOTATION}]"),
            format!("must be an RFC 3339 time such as 2026-11-26T10:00:00Z: {e}"),
        )
    })
}
