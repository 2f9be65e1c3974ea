//! Holds: credits reserved now and settled with the actual cost later,
//! released, or expired (a journal entry when it is due). Holds cut
//! headroom, not `used`.
//!
//! Open holds stay in memory; of the closed ones only the newest
//! [`CLOSED_HOLDS_KEPT`] do. An older one is read back from the journal
//! (its events, by the journal's index of holds) when a command names it:
//! a retried settlement or release, a replayed key, an expired hold
//! settled late.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::cycles::catch_up;
use super::usage::{check_room, credits_for, spend_of};
use super::{Account, Emitter, Posting, MAX_HOLD_TTL_SECONDS};
use crate::amount::Amount;
use crate::ledger::costs::Labels;
use crate::ledger::error::LedgerError;
use crate::ledger::keys::{Fingerprint, KeyAnswer, KeyRecord};
use crate::ledger::model::*;
use crate::ledger::numbers;

/// Closed holds an account keeps in memory, newest first out of mind.
pub const CLOSED_HOLDS_KEPT: usize = 16_384;

/// Credits reserved for a member until settled, released or expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: String,
    pub member: String,
    pub charge: Charge,
    pub credits: Amount,
    pub state: HoldState,
    pub expires_at: Timestamp,
    pub settled_credits: Option<Amount>,
}

impl Hold {
    /// The answer the hold was opened with, for a replay of its key.
    pub fn opened_view(&self) -> HoldView {
        HoldView {
            state: HoldState::Open,
            settled_credits: None,
            ..self.view(true)
        }
    }

    pub fn view(&self, duplicate: bool) -> HoldView {
        HoldView {
            id: self.id.clone(),
            member: self.member.clone(),
            credits: self.credits,
            state: self.state,
            expires_at: self.expires_at,
            settled_credits: self.settled_credits,
            duplicate,
        }
    }

    /// The hold a `HoldOpened` event opens.
    fn opened(event: &Event) -> Option<Hold> {
        let Event::HoldOpened {
            id,
            member,
            charge,
            credits,
            expires_at,
        } = event
        else {
            return None;
        };
        Some(Hold {
            id: id.clone(),
            member: member.clone(),
            charge: *charge,
            credits: *credits,
            state: HoldState::Open,
            expires_at: *expires_at,
            settled_credits: None,
        })
    }

    /// A hold rebuilt from its journal entries, in order (the journal's
    /// index of holds); `None` without its opening.
    pub fn recall(entries: &[JournalEntry]) -> Option<Hold> {
        let mut hold: Option<Hold> = None;
        for entry in entries {
            match (&entry.event, &mut hold) {
                (event @ Event::HoldOpened { .. }, None) => hold = Hold::opened(event),
                (Event::HoldSettled { credits, .. }, Some(h)) => {
                    h.state = HoldState::Settled;
                    h.settled_credits = Some(*credits);
                }
                (Event::HoldReleased { .. }, Some(h)) if h.state == HoldState::Open => h.state = HoldState::Released,
                (Event::HoldExpired { .. }, Some(h)) if h.state == HoldState::Open => h.state = HoldState::Expired,
                _ => {}
            }
        }
        hold
    }
}

/// Whether `id` names a hold the account may have let go of from memory:
/// a hold id of an entry already journaled, not in memory.
pub(super) fn may_be_past(account: &Account, id: &str, last_seq: u64) -> bool {
    !account.holds.contains_key(id)
        && id
            .strip_prefix("hold-")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n <= last_seq)
}

/// Marks a hold closed: it joins the window of closed holds, and the
/// oldest one past [`CLOSED_HOLDS_KEPT`] leaves memory.
fn closed(account: &mut Account, id: &str) {
    account.closed_holds.push_back(id.to_string());
    while account.closed_holds.len() > CLOSED_HOLDS_KEPT {
        if let Some(old) = account.closed_holds.pop_front() {
            account.holds.remove(&old);
        }
    }
}

/// The window of closed holds, for a snapshot written before there was
/// one (every hold it had stayed in memory): the newest closed holds, by
/// the sequence number in their ids.
pub(super) fn rebuild_window(account: &mut Account) {
    if !account.closed_holds.is_empty() {
        return;
    }
    let mut closed_ids: Vec<(u64, String)> = account
        .holds
        .values()
        .filter(|h| h.state != HoldState::Open)
        .map(|h| {
            let n = h.id.strip_prefix("hold-").and_then(|n| n.parse().ok()).unwrap_or(0);
            (n, h.id.clone())
        })
        .collect();
    closed_ids.sort();
    for (_, id) in closed_ids {
        closed(account, &id);
    }
}

/// A hold's lifetime in seconds, as its fingerprint keeps it.
pub(super) fn hold_ttl(opened: Timestamp, expires_at: Timestamp) -> u64 {
    (expires_at.as_second() - opened.as_second()).max(0) as u64
}

pub(super) fn fingerprint_hold(account: &Account, member: &str, charge: Charge, ttl: u64) -> Fingerprint {
    Fingerprint::new(1, member, account.members.position(member), charge, ttl, 0)
}

/// `Command::OpenHold`: reserves the credits when authorize allows them,
/// else `InsufficientCredits` naming the scope that limits.
pub(super) fn open(
    em: &mut Emitter,
    account: AccountId,
    member: String,
    charge: Charge,
    ttl_seconds: u64,
    key: String,
) -> Result<Outcome, LedgerError> {
    let now = em.now;
    check_key(&key)?;
    check_name("member", &member)?;
    if ttl_seconds == 0 || ttl_seconds > MAX_HOLD_TTL_SECONDS {
        return Err(LedgerError::field(
            "ttlSeconds",
            format!("must be between 1 and {MAX_HOLD_TTL_SECONDS}"),
        ));
    }
    if charge.amount().is_zero() {
        return Err(LedgerError::field(
            super::usage::charge_field(charge),
            "a hold must reserve more than 0",
        ));
    }
    charge.validate()?;
    let acct = em.state.active_account(&account)?;
    // A replay answers the hold as it was opened (not as it stands now),
    // for the same member compared by value.
    if let Some(record) = em.key_record(acct, &key) {
        let same = record
            .fingerprint
            .matches(&member, &fingerprint_hold(acct, &member, charge, ttl_seconds));
        return match (&record.answer, same) {
            (KeyAnswer::Hold(id), true) => match em.hold(acct, id) {
                Some(hold) if hold.member == member => Ok(Outcome::Hold(hold.opened_view())),
                _ => Err(LedgerError::IdempotencyConflict(key)),
            },
            _ => Err(LedgerError::IdempotencyConflict(key)),
        };
    }
    let credits = credits_for(acct, charge)?;
    if !acct.members.contains_key(&member) {
        return Err(LedgerError::UnknownMember(member));
    }
    catch_up(em, &account)?;
    let acct = &em.state.accounts[&account];
    let verdict = numbers::authorize(acct, &member, credits)?;
    if !verdict.allowed {
        return Err(LedgerError::InsufficientCredits {
            remaining: verdict.remaining.unwrap_or_default().to_string(),
            limited_by: verdict.limited_by.map(|s| s.as_str()).unwrap_or("member").to_string(),
        });
    }
    let id = format!("hold-{}", em.state.last_seq + 1);
    let expires_at = now
        .checked_add(SignedDuration::from_secs(ttl_seconds as i64))
        .map_err(|_| LedgerError::field("ttlSeconds", "is out of range"))?;
    let event = Event::HoldOpened {
        id: id.clone(),
        member,
        charge,
        credits,
        expires_at,
    };
    em.emit(&account, Some(key), event);
    Ok(Outcome::Hold(em.state.accounts[&account].holds[&id].view(false)))
}

/// `Command::SettleHold`: debits the actual amount, also above the hold
/// or after expiry. The same settlement again is a replay; another amount
/// is a conflict, never a silent success.
pub(super) fn settle(
    em: &mut Emitter,
    account: AccountId,
    id: String,
    charge: Charge,
    labels: Labels,
) -> Result<Outcome, LedgerError> {
    labels.validate()?;
    let acct = em.state.active_account(&account)?;
    let credits = credits_for(acct, charge)?;
    let in_memory = acct.holds.contains_key(&id);
    let hold = em.hold(acct, &id).ok_or_else(|| LedgerError::UnknownHold(id.clone()))?;
    match hold.state {
        HoldState::Settled if hold.settled_credits == Some(credits) => return Ok(Outcome::Hold(hold.view(true))),
        HoldState::Settled => {
            return Err(LedgerError::HoldClosed {
                id,
                state: format!("Settled for {} credits", hold.settled_credits.unwrap_or_default()),
            });
        }
        HoldState::Released => {
            return Err(LedgerError::HoldClosed {
                id,
                state: "Released".to_string(),
            });
        }
        HoldState::Open | HoldState::Expired => {}
    }
    check_room(acct, acct.members.position(&hold.member), credits, charge)?;
    let mut settled = hold.clone();
    catch_up(em, &account)?;
    em.emit(
        &account,
        None,
        Event::HoldSettled {
            id: id.clone(),
            charge,
            credits,
            labels,
            member: (!in_memory).then(|| settled.member.clone()),
        },
    );
    match em.state.accounts[&account].holds.get(&id) {
        Some(hold) => Ok(Outcome::Hold(hold.view(false))),
        None => {
            settled.state = HoldState::Settled;
            settled.settled_credits = Some(credits);
            Ok(Outcome::Hold(settled.view(false)))
        }
    }
}

/// `Command::ReleaseHold`: lets an open hold go; releasing a released or
/// expired one again is a replay, a settled one a conflict (its credits
/// are spent).
pub(super) fn release(em: &mut Emitter, account: AccountId, id: String) -> Result<Outcome, LedgerError> {
    let acct = em.state.active_account(&account)?;
    let hold = em.hold(acct, &id).ok_or_else(|| LedgerError::UnknownHold(id.clone()))?;
    match hold.state {
        HoldState::Open => {}
        HoldState::Settled => {
            return Err(LedgerError::HoldClosed {
                id,
                state: "Settled".to_string(),
            });
        }
        HoldState::Released | HoldState::Expired => return Ok(Outcome::Hold(hold.view(true))),
    }
    let mut expired = hold.clone();
    catch_up(em, &account)?;
    let state = em.state.accounts[&account].holds.get(&id).map(|h| h.state);
    if state == Some(HoldState::Open) {
        em.emit(&account, None, Event::HoldReleased { id: id.clone() });
    }
    match em.state.accounts[&account].holds.get(&id) {
        Some(hold) => Ok(Outcome::Hold(hold.view(false))),
        // It expired while boundaries were applied, among so many others
        // that it left memory at once.
        None => {
            expired.state = HoldState::Expired;
            Ok(Outcome::Hold(expired.view(false)))
        }
    }
}

/// Emits `HoldExpired` for every open hold of the account due at `now`.
pub(super) fn expire_due(em: &mut Emitter, account_id: &str) {
    let now = em.now;
    let expired: Vec<String> = em.state.accounts[account_id]
        .expiries
        .iter()
        .take_while(|(t, _)| *t <= now)
        .map(|(_, id)| id.clone())
        .collect();
    for id in expired {
        em.emit(account_id, None, Event::HoldExpired { id });
    }
}

/// Applies the hold events.
pub(super) fn apply(account: &mut Account, entry: &JournalEntry) {
    match &entry.event {
        Event::HoldOpened {
            id,
            member,
            charge,
            credits,
            expires_at,
        } => {
            if let Some(hold) = Hold::opened(&entry.event) {
                account.holds.insert(id.clone(), hold);
            }
            account.expiries.insert((*expires_at, id.clone()));
            account.post(member, Posting::hold(*credits));
            if let Some(key) = &entry.key {
                let fingerprint = fingerprint_hold(account, member, *charge, hold_ttl(entry.at, *expires_at));
                account.keys.insert(
                    key.clone(),
                    KeyRecord {
                        fingerprint,
                        answer: KeyAnswer::Hold(id.clone()),
                    },
                );
            }
        }
        Event::HoldSettled {
            id,
            charge,
            credits,
            labels,
            member,
        } => {
            let spend = spend_of(*charge, *credits);
            let Some(hold) = account.holds.get_mut(id) else {
                // A closed hold that had left memory: only the debit.
                if let Some(member) = member {
                    account.post(member, Posting::spend(spend));
                    account.costs.record(labels, spend);
                }
                return;
            };
            let was_open = hold.state == HoldState::Open;
            hold.state = HoldState::Settled;
            hold.settled_credits = Some(*credits);
            let (member, held, expires) = (hold.member.clone(), hold.credits, hold.expires_at);
            if was_open {
                account.expiries.remove(&(expires, id.clone()));
                account.post(&member, Posting::hold(Amount::ZERO - held));
                closed(account, id);
            }
            account.post(&member, Posting::spend(spend));
            account.costs.record(labels, spend);
        }
        Event::HoldReleased { id } | Event::HoldExpired { id } => {
            let Some(hold) = account.holds.get_mut(id) else { return };
            if hold.state != HoldState::Open {
                return;
            }
            hold.state = if matches!(entry.event, Event::HoldReleased { .. }) {
                HoldState::Released
            } else {
                HoldState::Expired
            };
            let (member, held, expires) = (hold.member.clone(), hold.credits, hold.expires_at);
            account.expiries.remove(&(expires, id.clone()));
            account.post(&member, Posting::hold(Amount::ZERO - held));
            closed(account, id);
        }
        _ => {}
    }
}
