//! Recorded usage: what a charge costs, the ceilings of one event and of
//! a cycle's totals, and idempotency (a replay answers its first answer).

use jiff::Timestamp;

use super::cycles::catch_up;
use super::{at_most, past_total, Account, Emitter, Posting, MAX_EVENT_AMOUNT, MAX_TOTAL};
use crate::amount::Amount;
use crate::ledger::costs::{Labels, Spend};
use crate::ledger::error::LedgerError;
use crate::ledger::keys::{Fingerprint, KeyAnswer, KeyRecord};
use crate::ledger::model::*;
use crate::ledger::numbers;

/// `Command::RecordUsage`: usage that happened is recorded whatever the
/// headroom (it may drive remaining below zero); only the ceilings of one
/// event and of a cycle's totals refuse it.
pub(super) fn record(
    em: &mut Emitter,
    account: AccountId,
    member: String,
    charge: Charge,
    key: String,
    occurred_at: Option<Timestamp>,
    labels: Labels,
) -> Result<Outcome, LedgerError> {
    check_key(&key)?;
    check_name("member", &member)?;
    charge.validate()?;
    labels.validate()?;
    let acct = em.state.active_account(&account)?;
    // One look-up of the member for everything below.
    let row = acct.members.position(&member);
    // A replay answers the first answer, whatever changed since (a
    // creditFactor change must not turn a retry into a 400).
    if let Some(record) = em.key_record(acct, &key) {
        let same = record
            .fingerprint
            .matches(&member, &Fingerprint::new(0, &member, row, charge, 0, labels.digest()));
        return match (&record.answer, same) {
            (KeyAnswer::Usage(receipt), true) => Ok(Outcome::Usage(UsageReceipt {
                duplicate: true,
                ..receipt.clone()
            })),
            _ => Err(LedgerError::IdempotencyConflict(key)),
        };
    }
    let credits = credits_for(acct, charge)?;
    let Some(row) = row else {
        return Err(LedgerError::UnknownMember(member));
    };
    check_room(acct, Some(row), credits, charge)?;
    catch_up(em, &account)?;
    let event = Event::UsageRecorded {
        member,
        charge,
        credits,
        occurred_at,
        labels,
    };
    em.emit(&account, Some(key.clone()), event);
    match em.state.accounts[&account].keys.get(&key).map(|r| &r.answer) {
        Some(KeyAnswer::Usage(r)) => Ok(Outcome::Usage(r.clone())),
        _ => Err(LedgerError::IdempotencyConflict(key)),
    }
}

/// Applies `UsageRecorded`: the debit, the cycle's cost sums, the key.
pub(super) fn apply(account: &mut Account, entry: &JournalEntry) {
    let Event::UsageRecorded {
        member,
        charge,
        credits,
        labels,
        ..
    } = &entry.event
    else {
        return;
    };
    let spend = spend_of(*charge, *credits);
    let row = account.members.position(member);
    if let Some(row) = row {
        account.post_at(row, Posting::spend(spend));
    }
    account.costs.record(labels, spend);
    if let Some(key) = &entry.key {
        let receipt = usage_receipt(account, row, *credits);
        let fingerprint = Fingerprint::new(0, member, row, *charge, 0, labels.digest());
        account.keys.insert(
            key.clone(),
            KeyRecord {
                fingerprint,
                answer: KeyAnswer::Usage(receipt),
            },
        );
    }
}

/// Credits a charge costs in an account; 0 while tracking is disabled.
/// Neither the charge nor the credits it converts to may pass
/// [`MAX_EVENT_AMOUNT`].
pub(super) fn credits_for(account: &Account, charge: Charge) -> Result<Amount, LedgerError> {
    charge.validate()?;
    let field = charge_field(charge);
    let unit = match charge {
        Charge::Credits(_) => "credits",
        Charge::CostUsd(_) => "dollars",
    };
    if charge.amount().decimal() > at_most(MAX_EVENT_AMOUNT) {
        return Err(LedgerError::field(
            field,
            format!("is more than one event may carry (at most {MAX_EVENT_AMOUNT} {unit})"),
        ));
    }
    if !account.settings.tracking_enabled() {
        return Ok(Amount::ZERO);
    }
    let credits = match charge {
        Charge::Credits(a) => a,
        Charge::CostUsd(usd) => usd
            .convert(account.settings.credit_factor)
            .ok_or_else(|| LedgerError::field(field, "is too large to convert to credits"))?,
    };
    if credits.decimal() > at_most(MAX_EVENT_AMOUNT) {
        return Err(LedgerError::field(
            field,
            format!("converts to {credits} credits, more than one event may carry (at most {MAX_EVENT_AMOUNT})"),
        ));
    }
    Ok(credits)
}

pub(super) fn charge_field(charge: Charge) -> &'static str {
    match charge {
        Charge::Credits(_) => "credits",
        Charge::CostUsd(_) => "costUsd",
    }
}

/// Refuses a debit that would push the cycle's usage of the member or of
/// the account past [`MAX_TOTAL`] (ten million events at the per-event
/// ceiling: no real cycle gets there).
pub(super) fn check_room(
    account: &Account,
    row: Option<u32>,
    credits: Amount,
    charge: Charge,
) -> Result<(), LedgerError> {
    let cycle = account.cycle.number;
    let member_used = row
        .map(|row| account.members.at(row).tally.at(cycle).used)
        .unwrap_or_default();
    if past_total(account.used, credits) || past_total(member_used, credits) {
        return Err(LedgerError::field(
            charge_field(charge),
            format!("would take this cycle's usage past the ledger's ceiling of {MAX_TOTAL} credits"),
        ));
    }
    Ok(())
}

/// The spend a usage or settlement counts for costs: the credits debited
/// and the dollars the caller reported.
pub(super) fn spend_of(charge: Charge, credits: Amount) -> Spend {
    Spend {
        credits,
        cost_usd: match charge {
            Charge::CostUsd(usd) => usd,
            Charge::Credits(_) => Amount::ZERO,
        },
    }
}

pub(super) fn fingerprint_usage(account: &Account, member: &str, charge: Charge, labels: &Labels) -> Fingerprint {
    Fingerprint::new(0, member, account.members.position(member), charge, 0, labels.digest())
}

/// A usage's answer: the member's used and remaining right after it.
fn usage_receipt(account: &Account, row: Option<u32>, credits: Amount) -> UsageReceipt {
    let (member_used, member_remaining) = match row {
        Some(row) => {
            let s = numbers::standing(account.members.at(row), account.cycle.number);
            (s.used, s.remaining)
        }
        None => (Amount::ZERO, Amount::ZERO),
    };
    UsageReceipt {
        duplicate: false,
        credits,
        member_used,
        member_remaining,
    }
}

impl Account {
    /// The record a key got when `entry` (its journal row, with the
    /// stored answer) was applied: the same fingerprint, the same first
    /// answer. Member rows are never removed, so the fingerprint reads
    /// the same now as then.
    pub fn recall(&self, entry: &JournalEntry) -> Option<KeyRecord> {
        match &entry.event {
            Event::UsageRecorded {
                member,
                charge,
                credits,
                labels,
                ..
            } => Some(KeyRecord {
                fingerprint: fingerprint_usage(self, member, *charge, labels),
                // Rows written before answers were stored answer with the
                // member's figures of today.
                answer: KeyAnswer::Usage(
                    entry
                        .answer
                        .map(|a| a.receipt(*credits))
                        .unwrap_or_else(|| usage_receipt(self, self.members.position(member), *credits)),
                ),
            }),
            Event::HoldOpened {
                id,
                member,
                charge,
                expires_at,
                ..
            } => Some(KeyRecord {
                fingerprint: super::holds::fingerprint_hold(
                    self,
                    member,
                    *charge,
                    super::holds::hold_ttl(entry.at, *expires_at),
                ),
                answer: KeyAnswer::Hold(id.clone()),
            }),
            _ => None,
        }
    }
}
