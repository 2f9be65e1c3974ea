//! Accounts and their cycles: creation and settings, boundaries due at
//! `now`, manual resets, time zone and cadence changes, closed cycles.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Account, Emitter};
use crate::amount::Amount;
use crate::cycle::{time_zone, Cadence, CycleWindow, Schedule};
use crate::ledger::costs::CycleCosts;
use crate::ledger::error::LedgerError;
use crate::ledger::history::Archived;
use crate::ledger::model::*;

/// When and why the current cycle began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReset {
    pub at: Timestamp,
    pub reason: ResetReason,
}

/// One group as a cycle closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedGroup {
    pub name: String,
    pub settings: GroupSettings,
    pub used: Amount,
    pub granted: Amount,
    pub auto_granted: Amount,
    #[serde(default)]
    pub cost_usd: Amount,
    #[serde(default)]
    pub events: u64,
}

/// An account's cycle after it closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedCycle {
    pub window: CycleWindow,
    pub credits_per_cycle: Amount,
    pub used: Amount,
    pub groups: Vec<ClosedGroup>,
    #[serde(default)]
    pub cost_usd: Amount,
    #[serde(default)]
    pub events: u64,
    /// Sums by model and provider.
    #[serde(default)]
    pub costs: CycleCosts,
}

/// `Command::Tick`: boundaries and expiries due now, in one account or all.
pub(super) fn tick(em: &mut Emitter, account: Option<AccountId>) -> Result<Outcome, LedgerError> {
    let ids: Vec<String> = match account {
        Some(id) => vec![id],
        None => em.state.accounts.keys().cloned().collect(),
    };
    for id in ids {
        catch_up(em, &id)?;
    }
    Ok(Outcome::Done)
}

/// Applies boundaries and hold expiries due at `now` for one account.
/// Downtime across several boundaries is one entry: the cycle that
/// contains now.
pub(super) fn catch_up(em: &mut Emitter, account_id: &str) -> Result<(), LedgerError> {
    let now = em.now;
    let Some(account) = em.state.accounts.get(account_id).filter(|a| a.active) else {
        return Ok(());
    };
    if account.cycle.end <= now {
        let schedule = account.schedule()?;
        let (start, end) = schedule.window_at(now);
        let event = Event::CycleStarted {
            number: account.cycle.number + 1,
            start,
            end,
            anchor: account.anchor,
            anchor_wall: account.anchor_wall,
            reason: ResetReason::Scheduled,
            mark: None,
        };
        em.emit(account_id, None, event);
    }
    super::holds::expire_due(em, account_id);
    Ok(())
}

/// `Command::ApplyAccount`: the first sight sets the anchor and starts
/// cycle 1; a cadence change starts a cycle now; a time zone change
/// re-times the current cycle's end; a limit change applies at once.
pub(super) fn apply_account(
    em: &mut Emitter,
    id: AccountId,
    settings: AccountSettings,
) -> Result<Outcome, LedgerError> {
    let now = em.now;
    check_name("metadata.name", &id)?;
    let tz = time_zone(&settings.timezone).map_err(|e| LedgerError::field("spec.timezone", e))?;
    check_name("spec.defaultGroup", &settings.default_group)?;
    catch_up(em, &id)?;
    match em.state.accounts.get(&id) {
        None => {
            let (anchor, anchor_wall) = Schedule::first_anchor(settings.cadence, &tz, now);
            let schedule = Schedule::new(settings.cadence, anchor, anchor_wall, tz);
            let (start, end) = schedule.window_at(now);
            em.emit(&id, None, Event::AccountConfigured { settings });
            let started = Event::CycleStarted {
                number: 1,
                start,
                end,
                anchor,
                anchor_wall,
                reason: ResetReason::Created,
                mark: None,
            };
            em.emit(&id, None, started);
        }
        Some(existing) if existing.settings == settings && existing.active => {}
        Some(existing) => {
            let cadence_changed = existing.settings.cadence != settings.cadence;
            let tz_changed = existing.settings.timezone != settings.timezone;
            // The period of the old zone's schedule this cycle is in.
            let period = existing.schedule()?.index_at(existing.cycle.start);
            let (number, cycle_start) = (existing.cycle.number, existing.cycle.start);
            let (anchor, anchor_wall) = (existing.anchor, existing.anchor_wall);
            em.emit(
                &id,
                None,
                Event::AccountConfigured {
                    settings: settings.clone(),
                },
            );
            if cadence_changed {
                let (anchor, anchor_wall) = Schedule::anchor_now(&tz, now);
                let schedule = Schedule::new(settings.cadence, anchor, anchor_wall, tz);
                let started = Event::CycleStarted {
                    number: number + 1,
                    start: now,
                    end: schedule.next_after(now),
                    anchor,
                    anchor_wall,
                    reason: ResetReason::CadenceChanged,
                    mark: None,
                };
                em.emit(&id, None, started);
            } else if tz_changed {
                // Same cycle, same start; it ends where the new zone ends
                // its period. If the new zone passed that boundary already,
                // inside this cycle, it is due now (one reset, by catch_up
                // below): no boundary of the new zone is skipped.
                let schedule = Schedule::new(settings.cadence, anchor, anchor_wall, tz);
                let end = match schedule.boundary(period + 1) {
                    Some(b) if b > now => b,
                    Some(b) if b > cycle_start => now,
                    _ => schedule.next_after(cycle_start.max(now)),
                };
                em.emit(&id, None, Event::CycleRetimed { end });
            }
            catch_up(em, &id)?;
        }
    }
    Ok(Outcome::Done)
}

/// `Command::RemoveAccount`: the account stops; its history stays.
pub(super) fn remove_account(em: &mut Emitter, account: AccountId) -> Result<Outcome, LedgerError> {
    if em.state.accounts.get(&account).is_some_and(|a| a.active) {
        em.emit(&account, None, Event::AccountRemoved);
    }
    Ok(Outcome::Done)
}

/// `Command::Reset`: a new cycle now, once per later annotation mark.
pub(super) fn reset(em: &mut Emitter, account: AccountId, mark: Option<Timestamp>) -> Result<Outcome, LedgerError> {
    let now = em.now;
    em.state.active_account(&account)?;
    catch_up(em, &account)?;
    let acct = &em.state.accounts[&account];
    if let (Some(m), Some(last)) = (mark, acct.reset_mark) {
        if m <= last {
            return Ok(Outcome::Cycle(acct.cycle));
        }
    }
    // A mark from before the current cycle began asks for nothing this
    // cycle has not already given (a fresh ledger meeting an old
    // annotation, a restored object).
    if mark.is_some_and(|m| m < acct.cycle.start) {
        return Ok(Outcome::Cycle(acct.cycle));
    }
    let tz = time_zone(&acct.settings.timezone).map_err(|e| LedgerError::field("spec.timezone", e))?;
    // A calendar month keeps its day and time: the fresh cycle ends at the
    // next boundary of the same anchor. A duration counts afresh from now.
    let (anchor, anchor_wall) = match acct.settings.cadence {
        Cadence::CalendarMonth => (acct.anchor, acct.anchor_wall),
        Cadence::Every { .. } => Schedule::anchor_now(&tz, now),
    };
    let schedule = Schedule::new(acct.settings.cadence, anchor, anchor_wall, tz);
    let started = Event::CycleStarted {
        number: acct.cycle.number + 1,
        start: now,
        end: schedule.next_after(now),
        anchor,
        anchor_wall,
        reason: ResetReason::Manual,
        mark,
    };
    em.emit(&account, None, started);
    Ok(Outcome::Cycle(em.state.accounts[&account].cycle))
}

/// Applies `CycleStarted` and `CycleRetimed`. A new cycle records the one
/// that closes (account and group figures) and zeroes the account's
/// figures; members and groups read as zero by their cycle number.
pub(super) fn apply(account: &mut Account, at: Timestamp, event: &Event) {
    match event {
        Event::CycleStarted {
            number,
            start,
            end,
            anchor,
            anchor_wall,
            reason,
            mark,
        } => {
            if account.cycle.number > 0 {
                let closing = account.cycle.number;
                let closed = ClosedCycle {
                    window: CycleWindow {
                        number: closing,
                        start: account.cycle.start,
                        end: *start,
                    },
                    credits_per_cycle: account.settings.credits_per_cycle,
                    used: account.used,
                    groups: account
                        .groups
                        .values()
                        .filter(|g| g.active)
                        .map(|g| {
                            let t = g.tally.at(closing);
                            ClosedGroup {
                                name: g.name.clone(),
                                settings: g.settings.clone(),
                                used: t.used,
                                granted: t.granted,
                                auto_granted: t.auto_granted,
                                cost_usd: t.cost_usd,
                                events: t.events,
                            }
                        })
                        .collect(),
                    cost_usd: account.cost_usd,
                    events: account.events,
                    costs: std::mem::take(&mut account.costs),
                };
                account.archive.push(Archived::Cycle {
                    account: account.id.clone(),
                    cycle: closed,
                });
            }
            account.cycle = CycleWindow {
                number: *number,
                start: *start,
                end: *end,
            };
            account.anchor = *anchor;
            account.anchor_wall = *anchor_wall;
            account.used = Amount::ZERO;
            account.cost_usd = Amount::ZERO;
            account.events = 0;
            account.costs = CycleCosts::default();
            account.last_reset = Some(LastReset { at, reason: *reason });
            if mark.is_some() {
                account.reset_mark = *mark;
            }
        }
        Event::CycleRetimed { end } => account.cycle.end = *end,
        _ => {}
    }
}
