//! The ledger state machine.
//!
//! [`State::handle`] validates a command against the current state and, if
//! it is accepted, emits journal events and applies them; a refused command
//! emits nothing. [`State::apply`] applies one event and is all that replay
//! needs, so recovery reproduces the live state exactly.
//!
//! Cycle resets are O(1) in members: every per-cycle figure carries the
//! cycle number it belongs to, and a figure of an older cycle reads as
//! zero. The first write to a member in a new cycle moves its old figures
//! into its history.

use std::collections::{BTreeMap, BTreeSet};

use jiff::civil::DateTime;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::costs::{CycleCosts, Labels, Spend};
use super::error::LedgerError;
pub(crate) use super::keys::stable_hash;
pub use super::keys::{Fingerprint, KeyAnswer, KeyRecord, Keys, NO_ROW};
use super::model::*;
use super::numbers;
use crate::amount::Amount;
use crate::cycle::{time_zone, CycleWindow, Schedule};

/// Longest hold accepted: a week.
pub const MAX_HOLD_TTL_SECONDS: u64 = 7 * 86_400;
/// Most credits, and most dollars, one usage, hold or settlement may
/// carry: a trillion. Far above any real event and far below
/// [`MAX_TOTAL`], so one absurd event can never fill a total and block the
/// usage after it.
pub const MAX_EVENT_AMOUNT: u64 = 1_000_000_000_000;
/// Most a running total may reach: a cycle's usage of a member or of the
/// account, the credits granted to a member or a group in a cycle. 10^19
/// is ten million events at [`MAX_EVENT_AMOUNT`], and with 9 decimal
/// places still inside the decimal's exact range (about 7.9 × 10^19);
/// snapshots read totals at the decimal's full size.
pub const MAX_TOTAL: u64 = 10_000_000_000_000_000_000;
/// A request asks for less than this (an input's 18 digits).
const MAX_REQUEST: u64 = 1_000_000_000_000_000_000;

fn at_most(limit: u64) -> rust_decimal::Decimal {
    rust_decimal::Decimal::from(limit)
}

/// Whether adding `credits` would take `total` past [`MAX_TOTAL`].
fn past_total(total: Amount, credits: Amount) -> bool {
    total
        .decimal()
        .checked_add(credits.decimal())
        .is_none_or(|t| t > at_most(MAX_TOTAL))
}

/// Figures that belong to one cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub cycle: u64,
    pub used: Amount,
    pub granted: Amount,
    /// Credits granted by auto-approval (groups only).
    pub auto_granted: Amount,
    /// Dollars reported by the usage behind `used`.
    #[serde(default)]
    pub cost_usd: Amount,
    /// Usage events and settled holds behind `used`.
    #[serde(default)]
    pub events: u64,
}

impl Tally {
    /// The figures as of `cycle`: zero when they belong to an older one.
    pub fn at(&self, cycle: u64) -> Tally {
        if self.cycle == cycle {
            self.clone()
        } else {
            Tally {
                cycle,
                ..Tally::default()
            }
        }
    }

    /// Moves the tally to `cycle`, returning the figures it held before
    /// when they belonged to an older cycle.
    fn roll(&mut self, cycle: u64) -> Option<Tally> {
        if self.cycle == cycle {
            return None;
        }
        let old = std::mem::replace(
            self,
            Tally {
                cycle,
                ..Tally::default()
            },
        );
        Some(old)
    }
}

pub use super::members::{Member, MemberCycle, MemberTable, MemberTally};

/// A group's settings and running figures (sums over its active members).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub settings: GroupSettings,
    /// False while the group is missing (members may still name it).
    pub active: bool,
    pub tally: Tally,
    pub held: Amount,
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
}

/// When and why the current cycle began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReset {
    pub at: Timestamp,
    pub reason: ResetReason,
}

/// One account and everything in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    pub settings: AccountSettings,
    pub active: bool,
    pub anchor: Timestamp,
    pub anchor_wall: DateTime,
    pub cycle: CycleWindow,
    pub last_reset: Option<LastReset>,
    /// The latest reset annotation applied.
    pub reset_mark: Option<Timestamp>,
    /// Credits used this cycle by everyone, removed members included.
    pub used: Amount,
    /// Dollars reported this cycle, and the events behind `used`.
    #[serde(default)]
    pub cost_usd: Amount,
    #[serde(default)]
    pub events: u64,
    /// This cycle's sums by model and provider.
    #[serde(default)]
    pub costs: CycleCosts,
    pub held: Amount,
    pub closed: Vec<ClosedCycle>,
    pub groups: BTreeMap<String, Group>,
    /// Members by user id and by MemberAllocation name.
    pub members: MemberTable,
    /// Requests by uid.
    pub requests: BTreeMap<String, Request>,
    pub holds: BTreeMap<String, Hold>,
    /// Open holds by expiry, so due expiries are found without a scan.
    pub expiries: BTreeSet<(Timestamp, String)>,
    /// Idempotency keys: the recent ones whole, the rest as filter bits.
    pub keys: Keys,
}

impl Account {
    fn new(id: AccountId, settings: AccountSettings) -> Self {
        Account {
            id,
            settings,
            active: true,
            anchor: Timestamp::UNIX_EPOCH,
            anchor_wall: DateTime::default(),
            cycle: CycleWindow {
                number: 0,
                start: Timestamp::UNIX_EPOCH,
                end: Timestamp::MAX,
            },
            last_reset: None,
            reset_mark: None,
            used: Amount::ZERO,
            cost_usd: Amount::ZERO,
            events: 0,
            costs: CycleCosts::default(),
            held: Amount::ZERO,
            closed: Vec::new(),
            groups: BTreeMap::new(),
            members: MemberTable::default(),
            requests: BTreeMap::new(),
            holds: BTreeMap::new(),
            expiries: BTreeSet::new(),
            keys: Keys::default(),
        }
    }

    /// The schedule in force: the recorded anchor, the current cadence
    /// and time zone.
    pub fn schedule(&self) -> Result<Schedule, LedgerError> {
        let tz = time_zone(&self.settings.timezone).map_err(|e| LedgerError::field("spec.timezone", e))?;
        Ok(Schedule::new(self.settings.cadence, self.anchor, self.anchor_wall, tz))
    }

    /// The group a member counts in.
    pub fn group_of<'a>(&'a self, member: &'a Member) -> &'a str {
        member.group().unwrap_or(&self.settings.default_group)
    }

    /// The member a MemberAllocation name refers to.
    pub fn member_by_name(&self, name: &str) -> Option<&Member> {
        self.members.by_name(name)
    }

    /// A group's entry, created (inactive) when a member names a group
    /// that does not exist yet, with its tally moved to the current cycle.
    fn group_entry(&mut self, name: &str) -> &mut Group {
        let cycle = self.cycle.number;
        let group = self.groups.entry(name.to_string()).or_insert_with(|| Group {
            name: name.to_string(),
            ..Group::default()
        });
        group.tally.roll(cycle);
        group
    }

    /// A member with its tally moved to the current cycle; the figures of
    /// the cycle it leaves go to its history.
    fn member_entry(&mut self, user_id: &str) -> Option<&mut Member> {
        let cycle = self.cycle.number;
        let Account { members, settings, .. } = self;
        let member = members.get_mut(user_id)?;
        member.roll(cycle, &settings.default_group);
        Some(member)
    }

    /// Adds (`sign` = 1) or removes (`sign` = -1) a member's current
    /// figures to or from the group it counts in.
    fn count_member_in_group(&mut self, user_id: &str, sign: i64) {
        let Some(member) = self.member_entry(user_id) else {
            return;
        };
        let tally = member.tally;
        let held = member.held;
        let group_name = member
            .group()
            .map(str::to_string)
            .unwrap_or_else(|| self.settings.default_group.clone());
        let group = self.group_entry(&group_name);
        let s = Amount::from_int(sign);
        let scale = |a: Amount| Amount::from_decimal(a.decimal() * s.decimal());
        group.tally.used += scale(tally.used);
        group.tally.granted += scale(tally.granted);
        group.tally.cost_usd = group.tally.cost_usd.saturating_add(scale(tally.cost_usd));
        group.tally.events = if sign > 0 {
            group.tally.events.saturating_add(tally.events)
        } else {
            group.tally.events.saturating_sub(tally.events)
        };
        group.held += scale(held);
    }

    /// Debits a spend from a member (its group when active) and the account.
    fn debit(&mut self, user_id: &str, spend: Spend) {
        if self.member_entry(user_id).is_none() {
            return;
        }
        let cycle = self.cycle.number;
        let Account {
            members,
            groups,
            settings,
            ..
        } = self;
        let Some(member) = members.get_mut(user_id) else { return };
        member.tally.count(spend);
        if member.active {
            let group = member.group().unwrap_or(&settings.default_group);
            match groups.get_mut(group) {
                Some(g) => {
                    g.tally.roll(cycle);
                    g.tally.count(spend);
                }
                None => {
                    let group = group.to_string();
                    self.group_entry(&group).tally.count(spend);
                }
            }
        }
        self.count(spend);
    }

    /// Changes the credits held for a member, its group and the account.
    fn hold_delta(&mut self, user_id: &str, delta: Amount) {
        let Some(member) = self.members.get_mut(user_id) else {
            return;
        };
        member.held += delta;
        if member.active {
            let group = member
                .group()
                .map(str::to_string)
                .unwrap_or_else(|| self.settings.default_group.clone());
            self.group_entry(&group).held += delta;
        }
        self.held += delta;
    }

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
                        .as_deref()
                        .and_then(|a| super::keys::stored_receipt(*credits, a))
                        .unwrap_or_else(|| self.usage_receipt(member, *credits)),
                ),
            }),
            Event::HoldOpened {
                id,
                member,
                charge,
                expires_at,
                ..
            } => Some(KeyRecord {
                fingerprint: fingerprint_hold(self, member, *charge, hold_ttl(entry.at, *expires_at)),
                answer: KeyAnswer::Hold(id.clone()),
            }),
            _ => None,
        }
    }

    fn usage_receipt(&self, user_id: &str, credits: Amount) -> UsageReceipt {
        let (used, remaining) = match self.members.get(user_id) {
            Some(m) => {
                let t = m.tally.at(self.cycle.number);
                (t.used, m.monthly() + m.extra_credits + t.granted - t.used)
            }
            None => (Amount::ZERO, Amount::ZERO),
        };
        UsageReceipt {
            duplicate: false,
            credits,
            member_used: used,
            member_remaining: remaining,
        }
    }
}

// `used` and the dollars and events behind it, counted the same way on
// the group tally, a closed group and cycle, and the account (what
// everyone spent this cycle, removed members included).
super::costs::spending!(Tally, ClosedGroup, ClosedCycle, Account);

/// Every account the ledger knows, and the number of the last event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub accounts: BTreeMap<AccountId, Account>,
    pub last_seq: u64,
    /// Set when a batch applied here failed to commit: the figures are
    /// ahead of the journal until the state is reloaded from it, and no
    /// read may show them. Never stored.
    #[serde(skip)]
    pub stale: Option<String>,
}

/// Collects the events a command emits, applying each as it goes.
struct Emitter<'a> {
    state: &'a mut State,
    out: &'a mut Vec<JournalEntry>,
    now: Timestamp,
    /// The command's key as the journal holds it, when it left memory.
    recalled: Option<KeyRecord>,
}

impl Emitter<'_> {
    fn emit(&mut self, account: &str, key: Option<String>, event: Event) {
        let mut entry = JournalEntry {
            seq: self.state.last_seq + 1,
            at: self.now,
            account: account.to_string(),
            key,
            event,
            answer: None,
        };
        self.state.apply(&entry);
        // The first answer goes to the journal with the event, for a retry
        // that comes after the key left memory.
        if let (Some(key), Event::UsageRecorded { .. }) = (&entry.key, &entry.event) {
            entry.answer = self.state.accounts[account]
                .keys
                .get(key)
                .and_then(KeyRecord::stored_answer);
        }
        self.out.push(entry);
    }

    /// The record of `key`: in memory, or recalled from the journal.
    fn key_record(&self, account: &Account, key: &str) -> Option<KeyRecord> {
        account.keys.get(key).cloned().or_else(|| self.recalled.clone())
    }
}

/// The spend a usage or settlement counts for costs: the credits debited
/// and the dollars the caller reported.
fn spend_of(charge: Charge, credits: Amount) -> Spend {
    Spend {
        credits,
        cost_usd: match charge {
            Charge::CostUsd(usd) => usd,
            Charge::Credits(_) => Amount::ZERO,
        },
    }
}

fn fingerprint_usage(account: &Account, member: &str, charge: Charge, labels: &Labels) -> Fingerprint {
    Fingerprint::new(0, member, account.members.position(member), charge, 0, labels.digest())
}

/// A hold's lifetime in seconds, as its fingerprint keeps it.
fn hold_ttl(opened: Timestamp, expires_at: Timestamp) -> u64 {
    (expires_at.as_second() - opened.as_second()).max(0) as u64
}

fn fingerprint_hold(account: &Account, member: &str, charge: Charge, ttl: u64) -> Fingerprint {
    Fingerprint::new(1, member, account.members.position(member), charge, ttl, 0)
}

impl State {
    pub fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.get(id)
    }

    /// The account a caller may act on: known and active, with figures
    /// that are durable (a storage error while they are not).
    pub fn active_account(&self, id: &str) -> Result<&Account, LedgerError> {
        self.readable()?;
        self.accounts
            .get(id)
            .filter(|a| a.active)
            .ok_or_else(|| LedgerError::UnknownAccount(id.to_string()))
    }

    /// Ok unless the figures include a batch that failed to commit.
    pub fn readable(&self) -> Result<(), LedgerError> {
        match &self.stale {
            None => Ok(()),
            Some(why) => Err(LedgerError::Storage(format!(
                "the figures are being reloaded from the journal after a failed commit: {why}"
            ))),
        }
    }

    /// True when a boundary or a hold expiry is due at `now` somewhere.
    pub fn is_due(&self, account: Option<&str>, now: Timestamp) -> bool {
        let due = |a: &Account| a.active && (a.cycle.end <= now || a.expiries.first().is_some_and(|(t, _)| *t <= now));
        match account {
            Some(id) => self.accounts.get(id).is_some_and(due),
            None => self.accounts.values().any(due),
        }
    }

    /// Validates `cmd` at `now`; if accepted, appends its events to `out`
    /// (already applied) and answers. A refused command emits no event of
    /// its own, though due boundaries it found are still applied.
    pub fn handle(
        &mut self,
        cmd: Command,
        now: Timestamp,
        out: &mut Vec<JournalEntry>,
    ) -> Result<Outcome, LedgerError> {
        self.handle_recalled(cmd, now, out, None)
    }

    /// [`State::handle`] for a command whose key left memory: `recalled`
    /// is its record rebuilt from the journal ([`Account::recall`]), or
    /// `None` when the journal does not hold the key (it is new).
    pub fn handle_recalled(
        &mut self,
        cmd: Command,
        now: Timestamp,
        out: &mut Vec<JournalEntry>,
        recalled: Option<KeyRecord>,
    ) -> Result<Outcome, LedgerError> {
        let mut em = Emitter {
            state: self,
            out,
            now,
            recalled,
        };
        handle(&mut em, cmd)
    }

    /// Whether `command` carries a key that may have left memory, so the
    /// writer looks it up in the journal before running it.
    pub fn needs_recall<'c>(&self, command: &'c Command) -> Option<(&'c str, &'c str)> {
        let (account, key) = command.idempotency_key()?;
        self.accounts
            .get(account)
            .is_some_and(|a| a.keys.maybe_past(key))
            .then_some((account, key))
    }

    /// Applies one journal event. Events were validated when emitted, so
    /// this never refuses; anything it cannot place is ignored.
    pub fn apply(&mut self, entry: &JournalEntry) {
        self.last_seq = entry.seq;
        let at = entry.at;
        if let Event::AccountConfigured { settings } = &entry.event {
            let account = self
                .accounts
                .entry(entry.account.clone())
                .or_insert_with(|| Account::new(entry.account.clone(), settings.clone()));
            let old_default = account.settings.default_group.clone();
            if old_default != settings.default_group {
                // Members without a group follow the default group.
                let followers: Vec<String> = account
                    .members
                    .values()
                    .filter(|m| m.active && m.group().is_none())
                    .map(|m| m.user_id().to_string())
                    .collect();
                for id in &followers {
                    account.count_member_in_group(id, -1);
                }
                account.settings = settings.clone();
                for id in &followers {
                    account.count_member_in_group(id, 1);
                }
            }
            account.settings = settings.clone();
            account.active = true;
            return;
        }
        let Some(account) = self.accounts.get_mut(&entry.account) else {
            return;
        };
        match &entry.event {
            Event::AccountConfigured { .. } => {}
            Event::AccountRemoved => account.active = false,
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
                    account.closed.push(ClosedCycle {
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
            Event::GroupConfigured { name, settings } => {
                let g = account.group_entry(name);
                g.settings = settings.clone();
                g.active = true;
            }
            Event::GroupRemoved { name } => {
                if let Some(g) = account.groups.get_mut(name) {
                    g.active = false;
                }
            }
            Event::MemberConfigured { spec, signup } => {
                let id = spec.user_id.clone();
                let was_active = account.members.get(&id).is_some_and(|m| m.active);
                if was_active {
                    account.count_member_in_group(&id, -1);
                }
                // Close the old cycle's figures under the old spec first.
                account.member_entry(&id);
                let cycle = account.cycle.number;
                account.members.upsert(spec, signup.unwrap_or_default(), cycle).active = true;
                account.count_member_in_group(&id, 1);
            }
            Event::MemberRemoved { user_id } => {
                if account.members.get(user_id).is_some_and(|m| m.active) {
                    account.count_member_in_group(user_id, -1);
                    if let Some(m) = account.members.get_mut(user_id) {
                        m.active = false;
                    }
                }
            }
            Event::UsageRecorded {
                member,
                charge,
                credits,
                labels,
                ..
            } => {
                let spend = spend_of(*charge, *credits);
                account.debit(member, spend);
                account.costs.record(labels, spend);
                if let Some(key) = &entry.key {
                    let receipt = account.usage_receipt(member, *credits);
                    let fingerprint = fingerprint_usage(account, member, *charge, labels);
                    account.keys.insert(
                        key.clone(),
                        KeyRecord {
                            fingerprint,
                            answer: KeyAnswer::Usage(receipt),
                        },
                    );
                }
            }
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
                let member_name = request.member.clone();
                let Some(user_id) = account.members.by_name(&member_name).map(|m| m.user_id().to_string()) else {
                    return;
                };
                let Some(member) = account.member_entry(&user_id) else {
                    return;
                };
                member.tally.granted += *credits;
                let active = member.active;
                let group = member.group().map(str::to_string);
                let group = group.unwrap_or_else(|| account.settings.default_group.clone());
                if active {
                    let g = account.group_entry(&group);
                    g.tally.granted += *credits;
                    if *phase == Phase::AutoApproved {
                        g.tally.auto_granted += *credits;
                    }
                }
            }
            Event::HoldOpened {
                id,
                member,
                charge,
                credits,
                expires_at,
            } => {
                account.holds.insert(
                    id.clone(),
                    Hold {
                        id: id.clone(),
                        member: member.clone(),
                        charge: *charge,
                        credits: *credits,
                        state: HoldState::Open,
                        expires_at: *expires_at,
                        settled_credits: None,
                    },
                );
                account.expiries.insert((*expires_at, id.clone()));
                account.hold_delta(member, *credits);
                if let Some(key) = &entry.key {
                    let fingerprint = fingerprint_hold(account, member, *charge, hold_ttl(at, *expires_at));
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
            } => {
                let Some(hold) = account.holds.get_mut(id) else { return };
                let was_open = hold.state == HoldState::Open;
                hold.state = HoldState::Settled;
                hold.settled_credits = Some(*credits);
                let (member, held, expires) = (hold.member.clone(), hold.credits, hold.expires_at);
                if was_open {
                    account.expiries.remove(&(expires, id.clone()));
                    account.hold_delta(&member, Amount::ZERO - held);
                }
                let spend = spend_of(*charge, *credits);
                account.debit(&member, spend);
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
                account.hold_delta(&member, Amount::ZERO - held);
            }
        }
    }
}

/// Applies boundaries and hold expiries due at `now` for one account.
fn catch_up(em: &mut Emitter, account_id: &str) -> Result<(), LedgerError> {
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
    let account = &em.state.accounts[account_id];
    let expired: Vec<String> = account
        .expiries
        .iter()
        .take_while(|(t, _)| *t <= now)
        .map(|(_, id)| id.clone())
        .collect();
    for id in expired {
        em.emit(account_id, None, Event::HoldExpired { id });
    }
    Ok(())
}

/// Credits a charge costs in an account; 0 while tracking is disabled.
/// Neither the charge nor the credits it converts to may pass
/// [`MAX_EVENT_AMOUNT`].
fn credits_for(account: &Account, charge: Charge) -> Result<Amount, LedgerError> {
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

fn charge_field(charge: Charge) -> &'static str {
    match charge {
        Charge::Credits(_) => "credits",
        Charge::CostUsd(_) => "costUsd",
    }
}

/// Refuses a debit that would push the cycle's usage of the member or of
/// the account past [`MAX_TOTAL`] (ten million events at the per-event
/// ceiling: no real cycle gets there).
fn check_room(account: &Account, user_id: &str, credits: Amount, charge: Charge) -> Result<(), LedgerError> {
    let cycle = account.cycle.number;
    let member_used = account
        .members
        .get(user_id)
        .map(|m| m.tally.at(cycle).used)
        .unwrap_or_default();
    if past_total(account.used, credits) || past_total(member_used, credits) {
        return Err(LedgerError::field(
            charge_field(charge),
            format!("would take this cycle's usage past the ledger's ceiling of {MAX_TOTAL} credits"),
        ));
    }
    Ok(())
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

fn handle(em: &mut Emitter, cmd: Command) -> Result<Outcome, LedgerError> {
    let now = em.now;
    match cmd {
        Command::Tick { account } => {
            let ids: Vec<String> = match account {
                Some(id) => vec![id],
                None => em.state.accounts.keys().cloned().collect(),
            };
            for id in ids {
                catch_up(em, &id)?;
            }
            Ok(Outcome::Done)
        }
        Command::ApplyAccount { account: id, settings } => {
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
                        // Same cycle, same start; it ends where the new
                        // zone ends its period. If the new zone passed
                        // that boundary already, inside this cycle, it is
                        // due now (one reset, by catch_up below): no
                        // boundary of the new zone is skipped.
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
        Command::RemoveAccount { account } => {
            if em.state.accounts.get(&account).is_some_and(|a| a.active) {
                em.emit(&account, None, Event::AccountRemoved);
            }
            Ok(Outcome::Done)
        }
        Command::ApplyGroup {
            account,
            name,
            settings,
        } => {
            check_name("metadata.name", &name)?;
            GroupSettings::new(
                settings.monthly_credits,
                settings.extra_credits,
                settings.auto_approve_reserve,
            )?;
            em.state.active_account(&account)?;
            catch_up(em, &account)?;
            let acct = &em.state.accounts[&account];
            let unchanged = acct
                .groups
                .get(&name)
                .is_some_and(|g| g.active && g.settings == settings);
            if !unchanged {
                em.emit(&account, None, Event::GroupConfigured { name, settings });
            }
            Ok(Outcome::Done)
        }
        Command::RemoveGroup { account, name } => {
            em.state.active_account(&account)?;
            if em.state.accounts[&account].groups.get(&name).is_some_and(|g| g.active) {
                em.emit(&account, None, Event::GroupRemoved { name });
            }
            Ok(Outcome::Done)
        }
        Command::ApplyMember { account, member: spec } => {
            spec.validate()?;
            let acct = em.state.active_account(&account)?;
            if let Some(existing) = acct.members.get(&spec.user_id) {
                if existing.active && existing.name() != spec.name {
                    return Err(LedgerError::DuplicateUserId {
                        user_id: spec.user_id.clone(),
                        owner: existing.name().to_string(),
                    });
                }
                if existing.active && existing.matches(&spec) {
                    return Ok(Outcome::Done);
                }
            }
            // The object now names another user id: the old one leaves.
            let replaced = acct
                .members
                .by_name(&spec.name)
                .filter(|m| m.user_id() != spec.user_id && m.active)
                .map(|m| m.user_id().to_string());
            let signup = (!acct.members.contains_key(&spec.user_id)).then_some(acct.settings.signup_credits);
            catch_up(em, &account)?;
            if let Some(old) = replaced {
                em.emit(&account, None, Event::MemberRemoved { user_id: old });
            }
            em.emit(&account, None, Event::MemberConfigured { spec, signup });
            Ok(Outcome::Done)
        }
        Command::RemoveMember { account, user_id } => {
            let acct = em.state.active_account(&account)?;
            match acct.members.get(&user_id) {
                None => Err(LedgerError::UnknownMember(user_id)),
                Some(m) if !m.active => Ok(Outcome::Done),
                Some(_) => {
                    catch_up(em, &account)?;
                    em.emit(&account, None, Event::MemberRemoved { user_id });
                    Ok(Outcome::Done)
                }
            }
        }
        Command::Reset { account, mark } => {
            em.state.active_account(&account)?;
            catch_up(em, &account)?;
            let acct = &em.state.accounts[&account];
            if let (Some(m), Some(last)) = (mark, acct.reset_mark) {
                if m <= last {
                    return Ok(Outcome::Cycle(acct.cycle));
                }
            }
            // A mark from before the current cycle began asks for nothing
            // this cycle has not already given (a fresh ledger meeting an
            // old annotation, a restored object).
            if mark.is_some_and(|m| m < acct.cycle.start) {
                return Ok(Outcome::Cycle(acct.cycle));
            }
            let tz = time_zone(&acct.settings.timezone).map_err(|e| LedgerError::field("spec.timezone", e))?;
            // A calendar month keeps its day and time: the fresh cycle ends
            // at the next boundary of the same anchor. A duration counts
            // afresh from now.
            let (anchor, anchor_wall) = match acct.settings.cadence {
                crate::cycle::Cadence::CalendarMonth => (acct.anchor, acct.anchor_wall),
                crate::cycle::Cadence::Every { .. } => Schedule::anchor_now(&tz, now),
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
        Command::RecordUsage {
            account,
            member,
            charge,
            key,
            occurred_at,
            labels,
        } => {
            check_key(&key)?;
            check_name("member", &member)?;
            charge.validate()?;
            labels.validate()?;
            let acct = em.state.active_account(&account)?;
            // A replay answers the first answer, whatever changed since (a
            // creditFactor change must not turn a retry into a 400).
            if let Some(record) = em.key_record(acct, &key) {
                return match (
                    &record.answer,
                    record
                        .fingerprint
                        .matches(&member, &fingerprint_usage(acct, &member, charge, &labels)),
                ) {
                    (KeyAnswer::Usage(receipt), true) => Ok(Outcome::Usage(UsageReceipt {
                        duplicate: true,
                        ..receipt.clone()
                    })),
                    _ => Err(LedgerError::IdempotencyConflict(key)),
                };
            }
            let credits = credits_for(acct, charge)?;
            if !acct.members.contains_key(&member) {
                return Err(LedgerError::UnknownMember(member));
            }
            check_room(acct, &member, credits, charge)?;
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
        Command::SubmitRequest {
            account,
            uid,
            name,
            member,
            credits,
            reason,
        } => {
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
        Command::DecideRequest {
            account,
            uid,
            verdict,
            reason,
            by,
        } => {
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
                    let c = credits.unwrap_or(request.credits);
                    if c.decimal() <= rust_decimal::Decimal::ZERO || c > request.credits {
                        return Err(LedgerError::InvalidApproval {
                            requested: request.credits.to_string(),
                            given: c.to_string(),
                        });
                    }
                    if !acct.member_by_name(&request.member).is_some_and(|m| m.active) {
                        return Err(LedgerError::MemberNotFound(request.member.clone()));
                    }
                    check_grant_room(acct, &request.member, c)?;
                    (Phase::Approved, c)
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
        Command::OpenHold {
            account,
            member,
            charge,
            ttl_seconds,
            key,
        } => {
            check_key(&key)?;
            check_name("member", &member)?;
            if ttl_seconds == 0 || ttl_seconds > MAX_HOLD_TTL_SECONDS {
                return Err(LedgerError::field(
                    "ttlSeconds",
                    format!("must be between 1 and {MAX_HOLD_TTL_SECONDS}"),
                ));
            }
            if charge.amount().is_zero() {
                let field = match charge {
                    Charge::Credits(_) => "credits",
                    Charge::CostUsd(_) => "costUsd",
                };
                return Err(LedgerError::field(field, "a hold must reserve more than 0"));
            }
            charge.validate()?;
            let acct = em.state.active_account(&account)?;
            // A replay answers the hold as it was opened (not as it stands
            // now), for the same member compared by value.
            if let Some(record) = em.key_record(acct, &key) {
                return match (
                    &record.answer,
                    record
                        .fingerprint
                        .matches(&member, &fingerprint_hold(acct, &member, charge, ttl_seconds)),
                ) {
                    (KeyAnswer::Hold(id), true) => match acct.holds.get(id) {
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
        Command::SettleHold {
            account,
            id,
            charge,
            labels,
        } => {
            labels.validate()?;
            let acct = em.state.active_account(&account)?;
            let credits = credits_for(acct, charge)?;
            let hold = acct
                .holds
                .get(&id)
                .ok_or_else(|| LedgerError::UnknownHold(id.clone()))?;
            match hold.state {
                // The same settlement again is a replay; another amount is
                // a conflict, never a silent success.
                HoldState::Settled if hold.settled_credits == Some(credits) => {
                    return Ok(Outcome::Hold(hold.view(true)))
                }
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
            check_room(acct, &hold.member, credits, charge)?;
            catch_up(em, &account)?;
            em.emit(
                &account,
                None,
                Event::HoldSettled {
                    id: id.clone(),
                    charge,
                    credits,
                    labels,
                },
            );
            Ok(Outcome::Hold(em.state.accounts[&account].holds[&id].view(false)))
        }
        Command::ReleaseHold { account, id } => {
            let acct = em.state.active_account(&account)?;
            let hold = acct
                .holds
                .get(&id)
                .ok_or_else(|| LedgerError::UnknownHold(id.clone()))?;
            match hold.state {
                HoldState::Open => {}
                // Settled credits are spent: releasing them is a conflict.
                HoldState::Settled => {
                    return Err(LedgerError::HoldClosed {
                        id,
                        state: "Settled".to_string(),
                    });
                }
                HoldState::Released | HoldState::Expired => return Ok(Outcome::Hold(hold.view(true))),
            }
            catch_up(em, &account)?;
            if em.state.accounts[&account].holds[&id].state == HoldState::Open {
                em.emit(&account, None, Event::HoldReleased { id: id.clone() });
            }
            Ok(Outcome::Hold(em.state.accounts[&account].holds[&id].view(false)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: &mut State, cmd: Command) -> Result<Outcome, LedgerError> {
        let now: Timestamp = "2026-11-26T10:00:00Z".parse().unwrap();
        state.handle(cmd, now, &mut Vec::new())
    }

    fn member(name: &str, user_id: &str) -> Command {
        Command::ApplyMember {
            account: "ns/a".into(),
            member: MemberSpec {
                name: name.into(),
                user_id: user_id.into(),
                email: format!("{name}@example.com"),
                display_name: name.into(),
                group: None,
                monthly_credits: Some(Amount::from_int(100)),
                extra_credits: Amount::ZERO,
            },
        }
    }

    fn usage(user_id: &str, key: &str) -> Command {
        Command::RecordUsage {
            account: "ns/a".into(),
            member: user_id.into(),
            charge: Charge::Credits(Amount::from_int(5)),
            key: key.into(),
            occurred_at: None,
            labels: Labels::default(),
        }
    }

    #[test]
    fn a_retry_names_the_same_member_by_value_and_older_records_by_hash() {
        let mut state = State::default();
        let settings = AccountSettings::new(
            Amount::from_int(1000),
            "1d",
            "UTC",
            Amount::from_int(1),
            Amount::ZERO,
            "default",
        )
        .unwrap();
        run(
            &mut state,
            Command::ApplyAccount {
                account: "ns/a".into(),
                settings,
            },
        )
        .unwrap();
        run(&mut state, member("alice", "u-alice")).unwrap();
        run(&mut state, member("bob", "u-bob")).unwrap();
        run(&mut state, usage("u-alice", "k1")).unwrap();
        let acct = &state.accounts["ns/a"];
        let stored = acct.keys.get("k1").unwrap().fingerprint;
        // The member is kept as its row: the user id exactly, no hash.
        assert_eq!(
            (stored.row, stored.member),
            (acct.members.position("u-alice").unwrap(), 0)
        );
        assert!(matches!(run(&mut state, usage("u-alice", "k1")), Ok(Outcome::Usage(ref r)) if r.duplicate));
        assert!(matches!(
            run(&mut state, usage("u-bob", "k1")),
            Err(LedgerError::IdempotencyConflict(_))
        ));
        // A record from an older snapshot has only the hash: still the
        // same answers.
        let record = state.accounts.get_mut("ns/a").unwrap().keys.get_mut("k1").unwrap();
        record.fingerprint.row = NO_ROW;
        record.fingerprint.member = stable_hash("u-alice");
        let old = serde_json::to_string(&state).unwrap();
        let mut restored: State = serde_json::from_str(&old).unwrap();
        assert_eq!(
            restored.accounts["ns/a"].keys.get("k1").unwrap().fingerprint.row,
            NO_ROW
        );
        assert!(matches!(run(&mut restored, usage("u-alice", "k1")), Ok(Outcome::Usage(ref r)) if r.duplicate));
        assert!(matches!(
            run(&mut restored, usage("u-bob", "k1")),
            Err(LedgerError::IdempotencyConflict(_))
        ));
        // The row decides: the same record pointed at bob's row answers
        // bob's retry and refuses alice's.
        let record = restored.accounts.get_mut("ns/a").unwrap().keys.get_mut("k1").unwrap();
        record.fingerprint.row = 1;
        record.fingerprint.member = 0;
        assert_eq!(restored.accounts["ns/a"].members.position("u-bob"), Some(1));
        assert!(matches!(run(&mut restored, usage("u-bob", "k1")), Ok(Outcome::Usage(ref r)) if r.duplicate));
        assert!(matches!(
            run(&mut restored, usage("u-alice", "k1")),
            Err(LedgerError::IdempotencyConflict(_))
        ));
    }
}
