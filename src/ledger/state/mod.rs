//! The ledger state machine.
//!
//! [`State::handle`] validates a command against the current state and, if
//! it is accepted, emits journal events and applies them; a refused command
//! emits nothing. [`State::apply`] applies one event and is all that replay
//! needs, so recovery reproduces the live state exactly.
//!
//! The machine is split by concern, one module each, as TigerBeetle splits
//! its state machine by operation: each handles its commands and applies
//! its events.
//!
//! - [`cycles`]: accounts, boundaries, resets, closed cycles;
//! - [`membership`]: groups and members, and who counts in which group;
//! - [`usage`]: recorded usage, what a charge costs, idempotency keys;
//! - [`holds`]: reservations and their settlement, release and expiry;
//! - [`requests`]: credit requests and their decisions.
//!
//! Figures that span scopes are kept in one place: a member's figures
//! change only through [`Account::post`], which keeps its group (a sum over
//! its members) and the account in step. Figures users read are derived in
//! [`super::numbers`].
//!
//! Cycle resets are O(1) in members: every per-cycle figure carries the
//! cycle number it belongs to, and a figure of an older cycle reads as
//! zero. The first write to a member in a new cycle moves its old figures
//! into its history.

mod cycles;
mod holds;
mod membership;
mod requests;
mod usage;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use jiff::civil::DateTime;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::costs::{CycleCosts, Spend};
use super::error::LedgerError;
use super::history::{Archive, Archived};
pub(crate) use super::keys::stable_hash;
pub use super::keys::{Fingerprint, KeyAnswer, KeyRecord, Keys, NO_ROW};
use super::model::*;
use crate::amount::Amount;
use crate::cycle::{time_zone, CycleWindow, Schedule};

pub use super::members::{Member, MemberCycle, MemberTable, MemberTally};
pub use cycles::{ClosedCycle, ClosedGroup, LastReset};
pub use holds::{Hold, CLOSED_HOLDS_KEPT};
pub use requests::Request;

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

    /// Moves the tally to `cycle`; figures of an older cycle are dropped
    /// (a group's closed cycles are recorded when the cycle closes).
    fn roll(&mut self, cycle: u64) {
        if self.cycle != cycle {
            *self = Tally {
                cycle,
                ..Tally::default()
            };
        }
    }
}

/// A change of one member's figures in the current cycle. Positive or
/// negative: a hold let go posts a negative `held`, a member leaving its
/// group takes its figures out with [`Posting::negated`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Posting {
    pub used: Amount,
    pub cost_usd: Amount,
    pub events: i64,
    pub granted: Amount,
    /// Of `granted`, what a group's auto-approve reserve gave (counted on
    /// the group only: a reserve spent stays spent where it was spent).
    pub auto_granted: Amount,
    pub held: Amount,
}

impl Posting {
    /// One debit: credits used, with the dollars and the event behind them.
    pub fn spend(spend: Spend) -> Posting {
        Posting {
            used: spend.credits,
            cost_usd: spend.cost_usd,
            events: 1,
            ..Posting::default()
        }
    }

    pub fn grant(credits: Amount, auto: bool) -> Posting {
        Posting {
            granted: credits,
            auto_granted: if auto { credits } else { Amount::ZERO },
            ..Posting::default()
        }
    }

    pub fn hold(delta: Amount) -> Posting {
        Posting {
            held: delta,
            ..Posting::default()
        }
    }

    /// What a member contributes to its group this cycle.
    fn member(m: &Member) -> Posting {
        Posting {
            used: m.tally.used,
            cost_usd: m.tally.cost_usd,
            events: i64::try_from(m.tally.events).unwrap_or(i64::MAX),
            granted: m.tally.granted,
            auto_granted: Amount::ZERO,
            held: m.held,
        }
    }

    fn negated(self) -> Posting {
        let neg = |a: Amount| Amount::ZERO - a;
        Posting {
            used: neg(self.used),
            cost_usd: neg(self.cost_usd),
            events: -self.events,
            granted: neg(self.granted),
            auto_granted: neg(self.auto_granted),
            held: neg(self.held),
        }
    }

    fn events_onto(&self, n: u64) -> u64 {
        if self.events >= 0 {
            n.saturating_add(self.events.unsigned_abs())
        } else {
            n.saturating_sub(self.events.unsigned_abs())
        }
    }
}

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

impl Group {
    fn post(&mut self, p: &Posting) {
        let t = &mut self.tally;
        t.used += p.used;
        t.cost_usd = t.cost_usd.saturating_add(p.cost_usd);
        t.events = p.events_onto(t.events);
        t.granted += p.granted;
        t.auto_granted += p.auto_granted;
        self.held += p.held;
    }
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
    /// Closed cycles, in snapshots written before they moved to the
    /// history tables (read, never written; see [`State::take_legacy`]).
    #[serde(default, rename = "closed", skip_serializing)]
    legacy_closed: Vec<ClosedCycle>,
    pub groups: BTreeMap<String, Group>,
    /// Members by user id and by MemberAllocation name.
    pub members: MemberTable,
    /// Requests by uid.
    pub requests: BTreeMap<String, Request>,
    /// Open holds, and the newest [`holds::CLOSED_HOLDS_KEPT`] closed ones.
    pub holds: BTreeMap<String, Hold>,
    /// Closed holds still in `holds`, oldest first; an older one is read
    /// back from the journal when it is needed.
    #[serde(default)]
    pub closed_holds: VecDeque<String>,
    /// Open holds by expiry, so due expiries are found without a scan.
    pub expiries: BTreeSet<(Timestamp, String)>,
    /// Idempotency keys: the recent ones whole, the rest as filter bits.
    pub keys: Keys,
    /// Records for the history tables left by the event being applied.
    #[serde(skip)]
    archive: Archive,
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
            legacy_closed: Vec::new(),
            groups: BTreeMap::new(),
            members: MemberTable::default(),
            requests: BTreeMap::new(),
            holds: BTreeMap::new(),
            closed_holds: VecDeque::new(),
            expiries: BTreeSet::new(),
            keys: Keys::default(),
            archive: Archive::default(),
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
        let row = self.members.position(user_id)?;
        Some(self.member_at(row))
    }

    /// [`Account::member_entry`] by row.
    fn member_at(&mut self, row: u32) -> &mut Member {
        let cycle = self.cycle.number;
        let Account {
            id,
            members,
            settings,
            archive,
            ..
        } = self;
        let member = members.at_mut(row);
        if let Some((first, last, record)) = member.roll(cycle, &settings.default_group) {
            archive.push(Archived::Member {
                account: id.clone(),
                user_id: member.user_id().to_string(),
                first,
                last,
                record,
            });
        }
        member
    }

    /// The one place a member's figures change. Its group follows while
    /// the member is enrolled (a group's figures are sums over its
    /// members); the account follows for usage and holds (it counts every
    /// debit, removed members included; grants raise member and group
    /// headroom, never the account limit).
    fn post(&mut self, user_id: &str, p: Posting) {
        if let Some(row) = self.members.position(user_id) {
            self.post_at(row, p);
        }
    }

    /// [`Account::post`] by row.
    fn post_at(&mut self, row: u32, p: Posting) {
        let member = self.member_at(row);
        let t = &mut member.tally;
        t.used += p.used;
        t.cost_usd = t.cost_usd.saturating_add(p.cost_usd);
        t.events = p.events_onto(t.events);
        t.granted += p.granted;
        member.held += p.held;
        if member.active {
            let group = member.group().map(str::to_string);
            let group = group.unwrap_or_else(|| self.settings.default_group.clone());
            self.group_entry(&group).post(&p);
        }
        self.used += p.used;
        self.cost_usd = self.cost_usd.saturating_add(p.cost_usd);
        self.events = p.events_onto(self.events);
        self.held += p.held;
    }

    /// Adds (`joins`) or takes out a member's current figures to or from
    /// the group it counts in: enrolment, removal and moves between groups.
    fn count_in_group(&mut self, user_id: &str, joins: bool) {
        let Some(member) = self.member_entry(user_id) else {
            return;
        };
        let p = Posting::member(member);
        let group = member.group().map(str::to_string);
        let group = group.unwrap_or_else(|| self.settings.default_group.clone());
        self.group_entry(&group).post(&if joins { p } else { p.negated() });
    }
}

// `used` and the dollars and events behind it, counted the same way on
// a group's tally, a closed group and cycle, and the account.
super::costs::spending!(Tally, ClosedGroup, ClosedCycle, Account);

/// Every account the ledger knows, and the number of the last event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub accounts: BTreeMap<AccountId, Account>,
    pub last_seq: u64,
    /// Set when a batch applied here failed to commit: the figures are
    /// ahead of the journal until the state is reloaded from it, and no
    /// read may show them. Never stored; shared with the writer's commit
    /// thread, which sets it without the state's lock.
    #[serde(skip)]
    pub stale: Stale,
}

/// Why a state's figures may not be read, if they may not: a mark the
/// writer's commit thread sets the moment a commit fails, before anyone
/// hears of it. Not part of the state's value.
#[derive(Debug, Clone, Default)]
pub struct Stale(std::sync::Arc<StaleMark>);

#[derive(Debug, Default)]
pub struct StaleMark {
    /// Read on every read of figures: an atomic, not a lock.
    set: std::sync::atomic::AtomicBool,
    why: std::sync::Mutex<Option<String>>,
}

impl Stale {
    pub fn set(&self, why: String) {
        *self.0.why.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.0.set.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.0.set.store(false, std::sync::atomic::Ordering::SeqCst);
        *self.0.why.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn get(&self) -> Option<String> {
        if !self.is_set() {
            return None;
        }
        self.0.why.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn is_set(&self) -> bool {
        self.0.set.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl PartialEq for Stale {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Stale {}

/// What the writer must read from the journal before a command can run:
/// what memory let go of ([`State::recall_needed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recall<'c> {
    /// An idempotency key that may have left memory for the filters.
    Key { account: &'c str, key: &'c str },
    /// A closed hold that left memory, by its journal entries.
    Hold { account: &'c str, id: String },
}

/// What the writer read back for a command; `Some(None)` when the
/// journal does not hold it either.
#[derive(Debug, Clone, Default)]
pub struct Recalled {
    /// The key's record ([`Account::recall`]).
    pub key: Option<Option<KeyRecord>>,
    /// The hold, rebuilt from its entries ([`Hold::recall`]).
    pub hold: Option<Option<Hold>>,
}

/// Collects the events a command emits, applying each as it goes.
struct Emitter<'a> {
    state: &'a mut State,
    out: &'a mut Vec<JournalEntry>,
    now: Timestamp,
    /// What the journal held of what memory let go of.
    recalled: Recalled,
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
            archived: Archive::default(),
        };
        self.state.apply(&entry);
        entry.archived = self.state.take_archived(account);
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
        account
            .keys
            .get(key)
            .cloned()
            .or_else(|| self.recalled.key.clone().flatten())
    }

    /// A hold: in memory, or recalled from the journal.
    fn hold<'h>(&'h self, account: &'h Account, id: &str) -> Option<&'h Hold> {
        account.holds.get(id).or_else(|| {
            self.recalled
                .hold
                .as_ref()
                .and_then(Option::as_ref)
                .filter(|h| h.id == id)
        })
    }
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
        match self.stale.get() {
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
        self.handle_recalled(cmd, now, out, Recalled::default())
    }

    /// [`State::handle`] for a command that needed what memory let go of
    /// ([`State::recall_needed`]): `recalled` is what the journal holds.
    pub fn handle_recalled(
        &mut self,
        cmd: Command,
        now: Timestamp,
        out: &mut Vec<JournalEntry>,
        recalled: Recalled,
    ) -> Result<Outcome, LedgerError> {
        let mut em = Emitter {
            state: self,
            out,
            now,
            recalled,
        };
        match cmd {
            Command::Tick { account } => cycles::tick(&mut em, account),
            Command::ApplyAccount { account, settings } => cycles::apply_account(&mut em, account, settings),
            Command::RemoveAccount { account } => cycles::remove_account(&mut em, account),
            Command::Reset { account, mark } => cycles::reset(&mut em, account, mark),
            Command::ApplyGroup {
                account,
                name,
                settings,
            } => membership::apply_group(&mut em, account, name, settings),
            Command::RemoveGroup { account, name } => membership::remove_group(&mut em, account, name),
            Command::ApplyMember { account, member } => membership::apply_member(&mut em, account, member),
            Command::RemoveMember { account, user_id } => membership::remove_member(&mut em, account, user_id),
            Command::RecordUsage {
                account,
                member,
                charge,
                key,
                occurred_at,
                labels,
            } => usage::record(&mut em, account, member, charge, key, occurred_at, labels),
            Command::SubmitRequest {
                account,
                uid,
                name,
                member,
                credits,
                reason,
            } => requests::submit(&mut em, account, uid, name, member, credits, reason),
            Command::DecideRequest {
                account,
                uid,
                verdict,
                reason,
                by,
            } => requests::decide(&mut em, account, uid, verdict, reason, by),
            Command::OpenHold {
                account,
                member,
                charge,
                ttl_seconds,
                key,
            } => holds::open(&mut em, account, member, charge, ttl_seconds, key),
            Command::SettleHold {
                account,
                id,
                charge,
                labels,
            } => holds::settle(&mut em, account, id, charge, labels),
            Command::ReleaseHold { account, id } => holds::release(&mut em, account, id),
        }
    }

    /// What the writer must read from the journal before `command` can
    /// run, given what it `recalled` already: a key that may have left
    /// memory for the filters, then a closed hold that left memory (named
    /// by the command, or by the key's first answer). `None`: run it.
    pub fn recall_needed<'c>(&self, command: &'c Command, recalled: &Recalled) -> Option<Recall<'c>> {
        let hold = |account: &'c str, id: &str| {
            let acct = self.accounts.get(account)?;
            (recalled.hold.is_none() && holds::may_be_past(acct, id, self.last_seq)).then(|| Recall::Hold {
                account,
                id: id.to_string(),
            })
        };
        match command {
            Command::RecordUsage { account, key, .. } | Command::OpenHold { account, key, .. } => {
                let acct = self.accounts.get(account.as_str())?;
                let record = match acct.keys.get(key) {
                    Some(record) => Some(record),
                    None if recalled.key.is_none() && acct.keys.in_filters(key) => {
                        return Some(Recall::Key { account, key });
                    }
                    None => recalled.key.as_ref().and_then(Option::as_ref),
                };
                match (command, record.map(|r| &r.answer)) {
                    (Command::OpenHold { .. }, Some(KeyAnswer::Hold(id))) => hold(account, id),
                    _ => None,
                }
            }
            Command::SettleHold { account, id, .. } | Command::ReleaseHold { account, id } => hold(account, id),
            _ => None,
        }
    }

    /// The history records the last applied event left in `account`.
    pub fn take_archived(&mut self, account: &str) -> Archive {
        match self.accounts.get_mut(account) {
            Some(a) if !a.archive.is_empty() => Archive(a.archive.take()),
            _ => Archive::default(),
        }
    }

    /// After a snapshot is read: the closed cycles an older snapshot kept
    /// in memory, as records for the history tables (once), and the window
    /// of closed holds rebuilt where an older snapshot had none.
    pub fn take_legacy(&mut self) -> Vec<Archived> {
        let mut records = Vec::new();
        for account in self.accounts.values_mut() {
            for cycle in std::mem::take(&mut account.legacy_closed) {
                records.push(Archived::Cycle {
                    account: account.id.clone(),
                    cycle,
                });
            }
            for (user_id, first, last, record) in account.members.take_legacy_history() {
                records.push(Archived::Member {
                    account: account.id.clone(),
                    user_id,
                    first,
                    last,
                    record,
                });
            }
            holds::rebuild_window(account);
        }
        records
    }

    /// Applies one journal event. Events were validated when emitted, so
    /// this never refuses; anything it cannot place is ignored.
    pub fn apply(&mut self, entry: &JournalEntry) {
        self.last_seq = entry.seq;
        if let Event::AccountConfigured { settings } = &entry.event {
            let account = self
                .accounts
                .entry(entry.account.clone())
                .or_insert_with(|| Account::new(entry.account.clone(), settings.clone()));
            membership::configure_account(account, settings);
            return;
        }
        let Some(account) = self.accounts.get_mut(&entry.account) else {
            return;
        };
        let at = entry.at;
        match &entry.event {
            Event::AccountConfigured { .. } => {}
            Event::AccountRemoved => account.active = false,
            Event::CycleStarted { .. } | Event::CycleRetimed { .. } => cycles::apply(account, at, &entry.event),
            Event::GroupConfigured { .. }
            | Event::GroupRemoved { .. }
            | Event::MemberConfigured { .. }
            | Event::MemberRemoved { .. } => membership::apply(account, &entry.event),
            Event::UsageRecorded { .. } => usage::apply(account, entry),
            Event::RequestSubmitted { .. } | Event::RequestDecided { .. } => requests::apply(account, at, &entry.event),
            Event::HoldOpened { .. }
            | Event::HoldSettled { .. }
            | Event::HoldReleased { .. }
            | Event::HoldExpired { .. } => holds::apply(account, entry),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::costs::Labels;

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
