//! Credit requests: submitted Pending, auto-approved from the group's
//! reserve when it covers them, otherwise decided once by an approver.
//! A grant belongs to the cycle current at the decision.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::cycles::catch_up;
use super::{at_most, past_total, Account, Emitter, Posting, MAX_TOTAL};
use crate::amount::Amount;
use crate::ledger::error::LedgerError;
use crate::ledger::model::*;
use crate::ledger::numbers;

/// A request asks for less than this (an input's 18 digits).
const MAX_REQUEST: u64 = 1_000_000_000_000_000_000;

/// A credit request as the ledger knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub uid: String,
    pub name: String,
    /// The MemberAllocation name the request is for.
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

impl Request {
    pub fn view(&self) -> RequestView {
        RequestView {
            uid: self.uid.clone(),
            name: self.name.clone(),
            member: self.member.clone(),
            credits: self.credits,
            reason: self.reason.clone(),
            phase: self.phase,
            approved_credits: self.approved_credits,
            submitted_at: self.submitted_at,
            decided_at: self.decided_at,
            decided_by: self.decided_by.clone(),
            decision_reason: self.decision_reason.clone(),
            cycle: self.cycle,
        }
    }
}

/// Refuses an approval that would push the credits granted to the member
/// or its group this cycle past [`MAX_TOTAL`].
fn check_grant_room(account: &Account, member: &str, credits: Amount) -> Result<(), LedgerError> {
    let cycle = account.cycle.number;
    let Some(m) = account.member_by_name(member) else {
        return Ok(());
    };
    let group = account.groups.get(account.group_of(m));
    let granted = [
        Some(m.tally.at(cycle).granted),
        group.map(|g| g.tally.at(cycle).granted),
    ];
    if granted.into_iter().flatten().any(|total| past_total(total, credits)) {
        return Err(LedgerError::field(
            "status.approval.credits",
            format!("would take the credits granted this cycle past the ledger's ceiling of {MAX_TOTAL}"),
        ));
    }
    Ok(())
}

/// `Command::SubmitRequest`: the uid keys it (the same uid again answers
/// the request as it stands); auto-approved at once where the group's
/// reserve covers it.
pub(super) fn submit(
    em: &mut Emitter,
    account: AccountId,
    uid: String,
    name: String,
    member: String,
    credits: Amount,
    reason: String,
) -> Result<Outcome, LedgerError> {
    check_name("metadata.uid", &uid)?;
    check_name("metadata.name", &name)?;
    check_name("spec.member", &member)?;
    credits
        .check_positive()
        .map_err(|e| LedgerError::field("spec.credits", e))?;
    if credits.decimal() >= at_most(MAX_REQUEST) {
        return Err(LedgerError::field("spec.credits", "is too large"));
    }
    check_request_reason(&reason)?;
    let acct = em.state.active_account(&account)?;
    if let Some(existing) = acct.requests.get(&uid) {
        return Ok(Outcome::Request(existing.view()));
    }
    catch_up(em, &account)?;
    let event = Event::RequestSubmitted {
        uid: uid.clone(),
        name,
        member: member.clone(),
        credits,
        reason,
    };
    em.emit(&account, None, event);
    let acct = &em.state.accounts[&account];
    let reserve_left = acct
        .member_by_name(&member)
        .filter(|m| m.active)
        .and_then(|m| acct.groups.get(acct.group_of(m)))
        .filter(|g| g.active)
        .map(|g| numbers::auto_approve_remaining(g, acct.cycle.number));
    let room = check_grant_room(acct, &member, credits).is_ok();
    if room && reserve_left.is_some_and(|left| left >= credits) {
        let decided = Event::RequestDecided {
            uid: uid.clone(),
            phase: Phase::AutoApproved,
            credits,
            by: "auto".to_string(),
            reason: String::new(),
        };
        em.emit(&account, None, decided);
    }
    Ok(Outcome::Request(em.state.accounts[&account].requests[&uid].view()))
}

/// `Command::DecideRequest`: final once decided; an approval needs the
/// member to exist and 0 < credits ≤ requested.
pub(super) fn decide(
    em: &mut Emitter,
    account: AccountId,
    uid: String,
    verdict: Verdict,
    reason: String,
    by: String,
) -> Result<Outcome, LedgerError> {
    check_request_reason(&reason)?;
    let acct = em.state.active_account(&account)?;
    let request = acct
        .requests
        .get(&uid)
        .ok_or_else(|| LedgerError::UnknownRequest(uid.clone()))?;
    if request.phase != Phase::Pending {
        return Err(LedgerError::AlreadyDecided {
            name: request.name.clone(),
            phase: request.phase.as_str().to_string(),
        });
    }
    let (phase, credits) = match verdict {
        Verdict::Deny => (Phase::Denied, Amount::ZERO),
        Verdict::Approve { credits } => {
            let credits = check_approval(request.credits, credits)?;
            if !acct.member_by_name(&request.member).is_some_and(|m| m.active) {
                return Err(LedgerError::MemberNotFound(request.member.clone()));
            }
            check_grant_room(acct, &request.member, credits)?;
            (Phase::Approved, credits)
        }
    };
    catch_up(em, &account)?;
    em.emit(
        &account,
        None,
        Event::RequestDecided {
            uid: uid.clone(),
            phase,
            credits,
            by,
            reason,
        },
    );
    Ok(Outcome::Request(em.state.accounts[&account].requests[&uid].view()))
}

/// Applies the request events: a decision grants to the member (and its
/// group) in the cycle current at the decision.
pub(super) fn apply(account: &mut Account, at: Timestamp, event: &Event) {
    match event {
        Event::RequestSubmitted {
            uid,
            name,
            member,
            credits,
            reason,
        } => {
            account.requests.insert(
                uid.clone(),
                Request {
                    uid: uid.clone(),
                    name: name.clone(),
                    member: member.clone(),
                    credits: *credits,
                    reason: reason.clone(),
                    phase: Phase::Pending,
                    approved_credits: None,
                    submitted_at: at,
                    decided_at: None,
                    decided_by: None,
                    decision_reason: None,
                    cycle: None,
                },
            );
        }
        Event::RequestDecided {
            uid,
            phase,
            credits,
            by,
            reason,
        } => {
            let cycle = account.cycle.number;
            let Some(request) = account.requests.get_mut(uid) else {
                return;
            };
            request.phase = *phase;
            request.decided_at = Some(at);
            request.decided_by = Some(by.clone());
            request.decision_reason = (!reason.is_empty()).then(|| reason.clone());
            request.cycle = Some(cycle);
            if *phase == Phase::Denied {
                return;
            }
            request.approved_credits = Some(*credits);
            let member = request.member.clone();
            let Some(user_id) = account.members.by_name(&member).map(|m| m.user_id().to_string()) else {
                return;
            };
            account.post(&user_id, Posting::grant(*credits, *phase == Phase::AutoApproved));
        }
        _ => {}
    }
}
