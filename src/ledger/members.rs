//! Members, packed for a million of them per account.
//!
//! A member's strings (object name, user id, email, display name, group)
//! live in one allocation, and the table indexes members by user id and
//! by object name without storing either string twice.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use serde::{Deserialize, Serialize};

use super::model::MemberSpec;
use crate::amount::Amount;

/// The per-cycle figures of a member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberTally {
    pub cycle: u64,
    pub used: Amount,
    pub granted: Amount,
    /// Dollars reported by the usage behind `used`.
    #[serde(default, skip_serializing_if = "no_amount")]
    pub cost_usd: Amount,
    /// Usage events and settled holds behind `used`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub events: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn no_amount(a: &Amount) -> bool {
    a.is_zero()
}

impl MemberTally {
    /// The figures as of `cycle`: zero when they belong to an older one.
    pub fn at(&self, cycle: u64) -> MemberTally {
        if self.cycle == cycle {
            *self
        } else {
            MemberTally {
                cycle,
                ..MemberTally::default()
            }
        }
    }
}

/// A member in one cycle: its figures, and the settings in force and
/// whether it was enrolled as the cycle ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberCycle {
    pub group: String,
    pub monthly: Amount,
    pub extra: Amount,
    pub used: Amount,
    pub granted: Amount,
    #[serde(default, skip_serializing_if = "no_amount")]
    pub cost_usd: Amount,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub events: u64,
    /// False when the member was removed before the cycle ended. Records
    /// of older snapshots have no such field: they were enrolled.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub active: bool,
}

impl MemberCycle {
    /// The same member in a cycle after this one in which it did nothing:
    /// the same settings and enrolment, zero figures.
    pub fn quiet(self) -> MemberCycle {
        MemberCycle {
            used: Amount::ZERO,
            granted: Amount::ZERO,
            cost_usd: Amount::ZERO,
            events: 0,
            ..self
        }
    }
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

super::costs::spending!(MemberTally, MemberCycle);

/// Name, user id, email, display name and group in one string.
#[derive(Clone, PartialEq, Eq)]
struct Profile {
    text: Box<str>,
    /// End offsets of name, user id, email and display name; the group
    /// (when `has_group`) is the rest.
    ends: [u16; 4],
    has_group: bool,
}

impl Profile {
    fn new(spec: &MemberSpec) -> Profile {
        let group = spec.group.as_deref().unwrap_or_default();
        let mut text = String::with_capacity(
            spec.name.len() + spec.user_id.len() + spec.email.len() + spec.display_name.len() + group.len(),
        );
        let mut ends = [0u16; 4];
        for (i, part) in [&spec.name, &spec.user_id, &spec.email, &spec.display_name]
            .into_iter()
            .enumerate()
        {
            text.push_str(part);
            // MemberSpec::validate bounds every part; saturate rather than wrap.
            ends[i] = u16::try_from(text.len()).unwrap_or(u16::MAX);
        }
        text.push_str(group);
        Profile {
            text: text.into_boxed_str(),
            ends,
            has_group: spec.group.is_some(),
        }
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { usize::from(self.ends[i - 1]) };
        let end = if i == 4 {
            self.text.len()
        } else {
            usize::from(self.ends[i])
        };
        self.text.get(start..end).unwrap_or_default()
    }
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("name", &self.part(0))
            .field("user_id", &self.part(1))
            .field("group", &self.has_group.then(|| self.part(4)))
            .finish()
    }
}

/// A user's allocation and figures, kept for good under its user id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "MemberRecord", into = "MemberRecord")]
pub struct Member {
    profile: Profile,
    pub monthly_credits: Option<Amount>,
    pub extra_credits: Amount,
    /// Signup credits recorded at enrolment.
    pub signup: Amount,
    pub active: bool,
    pub tally: MemberTally,
    pub held: Amount,
}

/// How a member is written in a snapshot.
#[derive(Serialize, Deserialize)]
struct MemberRecord {
    spec: MemberSpec,
    signup: Amount,
    active: bool,
    tally: MemberTally,
    held: Amount,
    /// Closed cycles, in snapshots written before they moved to the
    /// history tables (read, never written).
    #[serde(default, skip_serializing)]
    history: BTreeMap<u64, MemberCycle>,
    /// Whether this member's object name refers to it (a name reused by
    /// several user ids refers to the last one configured with it, which
    /// enrolment order cannot tell). Absent in older snapshots.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    holds_name: bool,
}

/// [`MemberRecord`] borrowed, so a snapshot copies no member.
#[derive(Serialize)]
struct MemberRecordRef<'a> {
    spec: SpecRef<'a>,
    signup: Amount,
    active: bool,
    tally: MemberTally,
    held: Amount,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    holds_name: bool,
}

/// [`MemberSpec`]'s serialized form, borrowed.
#[derive(Serialize)]
struct SpecRef<'a> {
    name: &'a str,
    user_id: &'a str,
    email: &'a str,
    display_name: &'a str,
    group: Option<&'a str>,
    monthly_credits: Option<Amount>,
    extra_credits: Amount,
}

impl<'a> From<&'a Member> for MemberRecordRef<'a> {
    fn from(m: &'a Member) -> Self {
        MemberRecordRef {
            spec: SpecRef {
                name: m.name(),
                user_id: m.user_id(),
                email: m.email(),
                display_name: m.display_name(),
                group: m.group(),
                monthly_credits: m.monthly_credits,
                extra_credits: m.extra_credits,
            },
            signup: m.signup,
            active: m.active,
            tally: m.tally,
            held: m.held,
            holds_name: false,
        }
    }
}

impl From<MemberRecord> for Member {
    fn from(r: MemberRecord) -> Member {
        let mut m = Member::new(&r.spec, r.signup, r.tally.cycle);
        m.active = r.active;
        m.tally = r.tally;
        m.held = r.held;
        m
    }
}

impl From<Member> for MemberRecord {
    fn from(m: Member) -> MemberRecord {
        MemberRecord {
            spec: m.spec(),
            signup: m.signup,
            active: m.active,
            tally: m.tally,
            held: m.held,
            history: BTreeMap::new(),
            holds_name: false,
        }
    }
}

impl Member {
    /// A member first seen in `cycle`, not yet active.
    pub fn new(spec: &MemberSpec, signup: Amount, cycle: u64) -> Member {
        Member {
            profile: Profile::new(spec),
            monthly_credits: spec.monthly_credits,
            extra_credits: spec.extra_credits,
            signup,
            active: false,
            tally: MemberTally {
                cycle,
                ..MemberTally::default()
            },
            held: Amount::ZERO,
        }
    }

    /// The MemberAllocation name.
    pub fn name(&self) -> &str {
        self.profile.part(0)
    }

    pub fn user_id(&self) -> &str {
        self.profile.part(1)
    }

    pub fn email(&self) -> &str {
        self.profile.part(2)
    }

    pub fn display_name(&self) -> &str {
        self.profile.part(3)
    }

    /// The group the spec names; `None` means the account's default group.
    pub fn group(&self) -> Option<&str> {
        self.profile.has_group.then(|| self.profile.part(4))
    }

    /// Monthly credits in force: the spec's, else the recorded signup credits.
    pub fn monthly(&self) -> Amount {
        self.monthly_credits.unwrap_or(self.signup)
    }

    /// The spec this member was last configured with.
    pub fn spec(&self) -> MemberSpec {
        MemberSpec {
            name: self.name().to_string(),
            user_id: self.user_id().to_string(),
            email: self.email().to_string(),
            display_name: self.display_name().to_string(),
            group: self.group().map(str::to_string),
            monthly_credits: self.monthly_credits,
            extra_credits: self.extra_credits,
        }
    }

    /// True when `spec` is what this member is configured with.
    pub fn matches(&self, spec: &MemberSpec) -> bool {
        self.name() == spec.name
            && self.user_id() == spec.user_id
            && self.email() == spec.email
            && self.display_name() == spec.display_name
            && self.group() == spec.group.as_deref()
            && self.monthly_credits == spec.monthly_credits
            && self.extra_credits == spec.extra_credits
    }

    /// Takes a new spec (same user id).
    pub fn configure(&mut self, spec: &MemberSpec) {
        self.profile = Profile::new(spec);
        self.monthly_credits = spec.monthly_credits;
        self.extra_credits = spec.extra_credits;
    }

    /// Moves the tally to `cycle`. The cycle it leaves is answered as a
    /// record for the history tables, `(first, last, record)`: its figures
    /// and the settings in force until now, standing also for the quiet
    /// cycles up to `cycle` (every change of settings, group or enrolment
    /// rolls first, so nothing changed in between).
    pub fn roll(&mut self, cycle: u64, default_group: &str) -> Option<(u64, u64, MemberCycle)> {
        if self.tally.cycle == cycle {
            return None;
        }
        let old = std::mem::replace(
            &mut self.tally,
            MemberTally {
                cycle,
                ..MemberTally::default()
            },
        );
        (old.cycle != 0 && old.cycle < cycle).then(|| (old.cycle, cycle - 1, self.record(&old, default_group)))
    }

    fn record(&self, t: &MemberTally, default_group: &str) -> MemberCycle {
        MemberCycle {
            group: self.group().unwrap_or(default_group).to_string(),
            monthly: self.monthly(),
            extra: self.extra_credits,
            used: t.used,
            granted: t.granted,
            cost_usd: t.cost_usd,
            events: t.events,
            active: self.active,
        }
    }

    /// What this member was in `cycle`, when memory can tell: the member
    /// has not been touched since (its settings of now were those of then;
    /// figures of an older cycle read as zero). `None` when it was touched
    /// after `cycle`: its record in the history tables has it.
    /// `default_group` is the account's current one.
    pub fn as_of_current(&self, cycle: u64, default_group: &str) -> Option<MemberCycle> {
        (cycle >= self.tally.cycle).then(|| self.record(&self.tally.at(cycle), default_group))
    }
}

/// Members by user id and by object name.
#[derive(Default)]
pub struct MemberTable {
    rows: Vec<Member>,
    by_id: HashTable<u32>,
    by_name: HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    /// Closed cycles read from a snapshot written before they moved to
    /// the history tables, as `(user id, first, last, record)`, until the
    /// writer stores them ([`MemberTable::take_legacy_history`]).
    legacy_history: Vec<(String, u64, u64, MemberCycle)>,
}

impl Clone for MemberTable {
    fn clone(&self) -> Self {
        MemberTable {
            rows: self.rows.clone(),
            by_id: self.by_id.clone(),
            by_name: self.by_name.clone(),
            hasher: self.hasher,
            legacy_history: self.legacy_history.clone(),
        }
    }
}

impl std::fmt::Debug for MemberTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.rows.iter()).finish()
    }
}

impl PartialEq for MemberTable {
    fn eq(&self, other: &Self) -> bool {
        self.rows == other.rows && self.iter_names().eq(other.iter_names())
    }
}

impl Eq for MemberTable {}

impl From<Vec<Member>> for MemberTable {
    fn from(rows: Vec<Member>) -> MemberTable {
        let mut table = MemberTable {
            rows,
            ..MemberTable::default()
        };
        table.rebuild_ids();
        // Later members took over names from earlier ones.
        for i in 0..table.rows.len() {
            table.point_name(i as u32);
        }
        table
    }
}

impl Serialize for MemberTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.rows.len()))?;
        for (i, m) in self.rows.iter().enumerate() {
            let mut record = MemberRecordRef::from(m);
            record.holds_name = self.name_index(m.name()) == Some(i as u32);
            seq.serialize_element(&record)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for MemberTable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut records = Vec::<MemberRecord>::deserialize(d)?;
        let holders: Vec<bool> = records.iter().map(|r| r.holds_name).collect();
        // A record stood for its cycle and the quiet ones up to the next
        // record, the last one up to the cycle the member is in now.
        let mut legacy_history = Vec::new();
        for r in &mut records {
            let history = std::mem::take(&mut r.history);
            let mut cycles = history.into_iter().peekable();
            while let Some((first, record)) = cycles.next() {
                let next = cycles.peek().map_or(r.tally.cycle, |(c, _)| *c);
                legacy_history.push((r.spec.user_id.clone(), first, next.max(first + 1) - 1, record));
            }
        }
        let mut table = MemberTable::from(records.into_iter().map(Member::from).collect::<Vec<_>>());
        // The snapshot says which member holds each name, as the live table
        // knew: exactly those names are indexed (a name dropped by a rename
        // stays dropped). The member configured last always holds its name,
        // so a table without any holder comes from an older snapshot: there
        // the last member to claim a name holds it.
        if holders.contains(&true) {
            table.by_name = HashTable::with_capacity(table.rows.len());
            for (i, _) in holders.iter().enumerate().filter(|(_, h)| **h) {
                table.point_name(i as u32);
            }
        }
        table.legacy_history = legacy_history;
        Ok(table)
    }
}

impl MemberTable {
    /// Closed cycles of an older snapshot, once, for the history tables.
    pub fn take_legacy_history(&mut self) -> Vec<(String, u64, u64, MemberCycle)> {
        std::mem::take(&mut self.legacy_history)
    }

    fn rebuild_ids(&mut self) {
        let mut by_id = HashTable::with_capacity(self.rows.len());
        for (i, m) in self.rows.iter().enumerate() {
            let hash = self.hasher.hash_one(m.user_id());
            by_id.insert_unique(hash, i as u32, |&j| {
                self.hasher.hash_one(self.rows[j as usize].user_id())
            });
        }
        self.by_id = by_id;
    }

    fn iter_names(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut names: Vec<(&str, &str)> = self
            .by_name
            .iter()
            .map(|&i| (self.rows[i as usize].name(), self.rows[i as usize].user_id()))
            .collect();
        names.sort_unstable();
        names.into_iter()
    }

    /// The row of `user_id`: rows are never removed, so a row names one
    /// user id for good.
    pub fn position(&self, user_id: &str) -> Option<u32> {
        self.index_of(user_id)
    }

    fn index_of(&self, user_id: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(user_id);
        self.by_id
            .find(hash, |&i| self.rows[i as usize].user_id() == user_id)
            .copied()
    }

    /// Makes `name` of row `i` point at row `i`.
    fn point_name(&mut self, i: u32) {
        let rows = &self.rows;
        let hasher = &self.hasher;
        let name = rows[i as usize].name();
        let hash = hasher.hash_one(name);
        match self.by_name.find_mut(hash, |&j| rows[j as usize].name() == name) {
            Some(slot) => *slot = i,
            None => {
                self.by_name
                    .insert_unique(hash, i, |&j| hasher.hash_one(rows[j as usize].name()));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The member in row `row` (from [`MemberTable::position`]).
    pub fn at(&self, row: u32) -> &Member {
        &self.rows[row as usize]
    }

    pub fn at_mut(&mut self, row: u32) -> &mut Member {
        &mut self.rows[row as usize]
    }

    pub fn get(&self, user_id: &str) -> Option<&Member> {
        self.index_of(user_id).map(|i| &self.rows[i as usize])
    }

    pub fn get_mut(&mut self, user_id: &str) -> Option<&mut Member> {
        self.index_of(user_id).map(|i| &mut self.rows[i as usize])
    }

    pub fn contains_key(&self, user_id: &str) -> bool {
        self.index_of(user_id).is_some()
    }

    fn name_index(&self, name: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(name);
        self.by_name
            .find(hash, |&i| self.rows[i as usize].name() == name)
            .copied()
    }

    /// The member a MemberAllocation name refers to.
    pub fn by_name(&self, name: &str) -> Option<&Member> {
        let hash = self.hasher.hash_one(name);
        self.by_name
            .find(hash, |&i| self.rows[i as usize].name() == name)
            .map(|&i| &self.rows[i as usize])
    }

    /// Every member, in enrolment order.
    pub fn values(&self) -> std::slice::Iter<'_, Member> {
        self.rows.iter()
    }

    /// Configures (or enrols) the member `spec` names and points its
    /// object name at it.
    pub fn upsert(&mut self, spec: &MemberSpec, signup: Amount, cycle: u64) -> &mut Member {
        let i = match self.index_of(&spec.user_id) {
            Some(i) => {
                let old_name = self.rows[i as usize].name().to_string();
                self.rows[i as usize].configure(spec);
                if old_name != spec.name {
                    self.unpoint_name(&old_name, i);
                }
                i
            }
            None => {
                let i = self.rows.len() as u32;
                self.rows.push(Member::new(spec, signup, cycle));
                let rows = &self.rows;
                let hasher = &self.hasher;
                let hash = hasher.hash_one(spec.user_id.as_str());
                self.by_id
                    .insert_unique(hash, i, |&j| hasher.hash_one(rows[j as usize].user_id()));
                i
            }
        };
        self.point_name(i);
        &mut self.rows[i as usize]
    }

    /// Drops `name` from the index when it still points at row `i`.
    fn unpoint_name(&mut self, name: &str, i: u32) {
        let hash = self.hasher.hash_one(name);
        if let Ok(entry) = self.by_name.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, user_id: &str) -> MemberSpec {
        MemberSpec {
            name: name.into(),
            user_id: user_id.into(),
            email: format!("{user_id}@example.com"),
            display_name: user_id.into(),
            group: None,
            monthly_credits: None,
            extra_credits: Amount::ZERO,
        }
    }

    #[test]
    fn a_name_reused_across_members_points_where_it_did_after_a_snapshot() {
        let mut table = MemberTable::default();
        table.upsert(&spec("alice", "u1"), Amount::ZERO, 1).active = false;
        table.upsert(&spec("alice", "u2"), Amount::ZERO, 1).active = false;
        table.upsert(&spec("alice", "u1"), Amount::ZERO, 1);
        table.upsert(&spec("bob", "u3"), Amount::ZERO, 1);
        assert_eq!(table.by_name("alice").map(|m| m.user_id()), Some("u1"));
        let text = serde_json::to_string(&table).unwrap();
        let restored: MemberTable = serde_json::from_str(&text).unwrap();
        assert_eq!(restored.by_name("alice").map(|m| m.user_id()), Some("u1"), "{text}");
        assert_eq!(restored.by_name("bob").map(|m| m.user_id()), Some("u3"));
        assert_eq!(restored, table);
        // A snapshot written before names were recorded keeps the old rule.
        let old = text.replace(",\"holds_name\":true", "");
        assert!(!old.contains("holds_name"), "{old}");
        let legacy: MemberTable = serde_json::from_str(&old).unwrap();
        assert_eq!(legacy.by_name("alice").map(|m| m.user_id()), Some("u2"));
    }

    #[test]
    fn a_name_a_rename_dropped_stays_dropped_after_a_snapshot() {
        let mut table = MemberTable::default();
        table.upsert(&spec("ann", "id-ann"), Amount::ZERO, 1).active = false;
        // The object ann now names another user, which is then renamed ben:
        // ann refers to nobody.
        table.upsert(&spec("ann", "uid-0"), Amount::ZERO, 1).active = false;
        table.upsert(&spec("ben", "uid-0"), Amount::ZERO, 1);
        assert!(table.by_name("ann").is_none());
        let restored: MemberTable = serde_json::from_str(&serde_json::to_string(&table).unwrap()).unwrap();
        assert!(restored.by_name("ann").is_none());
        assert_eq!(restored.by_name("ben").map(|m| m.user_id()), Some("uid-0"));
        assert_eq!(restored, table);
    }
}
