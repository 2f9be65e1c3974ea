//! Closed cycles, kept in the journal's database instead of in memory, so
//! memory and snapshots do not grow with the cycles an account has lived.
//!
//! - An account's cycle is recorded when it closes: its window, limit and
//!   totals, its groups' settings and figures, its sums by model and
//!   provider.
//! - A member's cycle is recorded when the member is first touched in a
//!   later cycle (so a reset stays one entry, whatever the number of
//!   members). Every change of settings, group or enrolment touches the
//!   member first, so one record stands for the cycle it describes and
//!   for the quiet cycles after it: `first..=last`, its figures in
//!   `first`, zero in the others, its settings in all of them.
//!
//! The state machine leaves these records on the entry whose event
//! produced them ([`Archive`]), and the journal writes them in the same
//! commit as the entry; replay produces the same records again (written
//! again harmlessly). To read a closed cycle `N` (the API's `?cycle=N`),
//! members untouched since `N` are taken from memory and the others from
//! their records ([`plan`], then [`Plan::assemble`]).

use std::collections::HashMap;

use super::members::{Member, MemberCycle};
use super::model::AccountId;
use super::state::{Account, ClosedCycle};

/// A record of a closed cycle, for the history tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Archived {
    /// An account's cycle as it closed.
    Cycle { account: AccountId, cycle: ClosedCycle },
    /// A member in cycles `first..=last`: figures of `first`, settings and
    /// enrolment of all of them.
    Member {
        account: AccountId,
        user_id: String,
        first: u64,
        last: u64,
        record: MemberCycle,
    },
}

/// Records waiting to be written with the entry that produced them. Not
/// part of any value: two entries or states are equal whatever their
/// pending records.
#[derive(Debug, Clone, Default)]
pub struct Archive(pub Vec<Archived>);

impl PartialEq for Archive {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Archive {}

impl Archive {
    pub fn push(&mut self, record: Archived) {
        self.0.push(record);
    }

    pub fn take(&mut self) -> Vec<Archived> {
        std::mem::take(&mut self.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A member as a closed cycle had it (its names as they are now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedMember {
    pub name: String,
    pub user_id: String,
    pub email: String,
    pub display_name: String,
    pub record: MemberCycle,
}

/// Everything a closed cycle's figures are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedView {
    pub cycle: ClosedCycle,
    /// The members enrolled at some point before the cycle ended, in
    /// enrolment order (removed ones with `record.active` false).
    pub members: Vec<ClosedMember>,
}

impl ClosedView {
    /// The members a group had as the cycle ended.
    pub fn members_in<'a>(&'a self, group: &'a str) -> impl Iterator<Item = &'a ClosedMember> + 'a {
        self.members
            .iter()
            .filter(move |m| m.record.active && m.record.group == group)
    }
}

/// What reading a closed cycle needs: the members memory can tell about,
/// and the ones whose record must be read.
#[derive(Debug)]
pub struct Plan {
    pub cycle: u64,
    /// In enrolment order; `None` where the record must be read.
    members: Vec<(Profile, Option<MemberCycle>)>,
}

#[derive(Debug)]
struct Profile {
    name: String,
    user_id: String,
    email: String,
    display_name: String,
}

impl Profile {
    fn of(m: &Member) -> Profile {
        Profile {
            name: m.name().to_string(),
            user_id: m.user_id().to_string(),
            email: m.email().to_string(),
            display_name: m.display_name().to_string(),
        }
    }
}

/// Plans the read of closed cycle `cycle` of `account`.
pub fn plan(account: &Account, cycle: u64) -> Plan {
    let default_group = &account.settings.default_group;
    Plan {
        cycle,
        members: account
            .members
            .values()
            .map(|m| (Profile::of(m), m.as_of_current(cycle, default_group)))
            .collect(),
    }
}

impl Plan {
    /// The user ids whose record of the cycle must be read.
    pub fn lookups(&self) -> Vec<&str> {
        self.members
            .iter()
            .filter(|(_, known)| known.is_none())
            .map(|(p, _)| p.user_id.as_str())
            .collect()
    }

    /// The view, from the cycle's record and the members' records found
    /// (`user id → (first, record)` of the record whose range holds the
    /// cycle). A member without one was enrolled after the cycle.
    pub fn assemble(self, cycle: ClosedCycle, mut found: HashMap<String, (u64, MemberCycle)>) -> ClosedView {
        let number = self.cycle;
        let members = self
            .members
            .into_iter()
            .filter_map(|(p, known)| {
                let record = match known {
                    Some(r) => r,
                    None => {
                        let (first, r) = found.remove(&p.user_id)?;
                        if first == number {
                            r
                        } else {
                            r.quiet()
                        }
                    }
                };
                Some(ClosedMember {
                    name: p.name,
                    user_id: p.user_id,
                    email: p.email,
                    display_name: p.display_name,
                    record,
                })
            })
            .collect();
        ClosedView { cycle, members }
    }
}
