//! Every figure users see, computed in one place (DESIGN "The numbers").
//!
//! - member: `allocation = monthly + extra + granted`, `remaining =
//!   allocation − used`;
//! - group: `budget = monthly + extra`, `distributed = Σ members (monthly +
//!   extra)`, `available = budget − distributed`, `used`/`granted` = Σ
//!   members, `autoApproveRemaining = reserve − auto-granted` (≥ 0);
//! - account: `balance = creditsPerCycle − used`, `usagePercent`,
//!   `allocated = Σ group budgets`, `unallocated = creditsPerCycle −
//!   allocated`;
//! - authorize: headroom per scope = limit − used − held; the smallest wins.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

use super::error::LedgerError;
use super::history::{ClosedMember, ClosedView};
use super::model::GroupSettings;
use super::state::{Account, Group, Member};
use crate::amount::Amount;
use crate::cycle::CycleWindow;

/// A scope that can limit spending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    Member,
    Group,
    Account,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Member => "member",
            Scope::Group => "group",
            Scope::Account => "account",
        }
    }
}

/// The answer to "may this member spend N credits?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub allowed: bool,
    /// The smallest headroom; `None` while tracking is disabled.
    pub remaining: Option<Amount>,
    pub limited_by: Option<Scope>,
}

/// A member's figures in one cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberFigures {
    pub name: String,
    pub user_id: String,
    pub email: String,
    pub display_name: String,
    pub group: String,
    pub active: bool,
    pub monthly: Amount,
    pub extra: Amount,
    pub granted: Amount,
    pub used: Amount,
    pub allocation: Amount,
    pub remaining: Amount,
    pub held: Amount,
}

/// A group's figures in one cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFigures {
    pub name: String,
    pub monthly: Amount,
    pub extra: Amount,
    pub budget: Amount,
    pub distributed: Amount,
    pub available: Amount,
    pub granted: Amount,
    pub used: Amount,
    pub auto_approve_reserve: Amount,
    pub auto_approve_remaining: Amount,
    pub members: u32,
}

/// An account's figures in one cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountFigures {
    pub cycle: CycleWindow,
    pub credits_per_cycle: Amount,
    pub used: Amount,
    pub balance: Amount,
    pub usage_percent: Amount,
    pub allocated: Amount,
    pub unallocated: Amount,
    pub tracking_enabled: bool,
    /// `(name, budget, used)` per active group, by name.
    pub groups: Vec<(String, Amount, Amount)>,
}

/// `used / limit × 100`, half-even to 2 places; 0 when the limit is 0.
pub fn usage_percent(used: Amount, limit: Amount) -> Amount {
    if limit.is_zero() {
        return Amount::ZERO;
    }
    let p = used
        .decimal()
        .checked_div(limit.decimal())
        .and_then(|r| r.checked_mul(Decimal::ONE_HUNDRED));
    Amount::from_decimal(
        p.unwrap_or(Decimal::ZERO)
            .round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven),
    )
}

/// Auto-approve reserve left in a group this cycle (never below 0).
pub fn auto_approve_remaining(group: &Group, cycle: u64) -> Amount {
    (group.settings.auto_approve_reserve - group.tally.at(cycle).auto_granted).max(Amount::ZERO)
}

/// A member's allocation, usage and what is left in `cycle`, under its
/// settings of now: `allocation = monthly + extra + granted`, `remaining =
/// allocation − used`. Cheap (no strings): usage answers read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub allocation: Amount,
    pub granted: Amount,
    pub used: Amount,
    pub remaining: Amount,
}

pub fn standing(m: &Member, cycle: u64) -> Standing {
    let t = m.tally.at(cycle);
    allocation(m.monthly(), m.extra_credits, t.granted, t.used)
}

fn allocation(monthly: Amount, extra: Amount, granted: Amount, used: Amount) -> Standing {
    let allocation = monthly + extra + granted;
    Standing {
        allocation,
        granted,
        used,
        remaining: allocation - used,
    }
}

/// A member's figures in the current cycle.
pub fn member(account: &Account, m: &Member) -> MemberFigures {
    let Standing {
        allocation,
        granted,
        used,
        remaining,
    } = standing(m, account.cycle.number);
    MemberFigures {
        name: m.name().to_string(),
        user_id: m.user_id().to_string(),
        email: m.email().to_string(),
        display_name: m.display_name().to_string(),
        group: account.group_of(m).to_string(),
        active: m.active,
        monthly: m.monthly(),
        extra: m.extra_credits,
        granted,
        used,
        allocation,
        remaining,
        held: m.held,
    }
}

/// A member's figures in a closed cycle, as the member was then
/// (settings, group and enrolment included).
pub fn closed_member(m: &ClosedMember) -> MemberFigures {
    let r = &m.record;
    let Standing {
        allocation, remaining, ..
    } = allocation(r.monthly, r.extra, r.granted, r.used);
    MemberFigures {
        name: m.name.clone(),
        user_id: m.user_id.clone(),
        email: m.email.clone(),
        display_name: m.display_name.clone(),
        group: r.group.clone(),
        active: r.active,
        monthly: r.monthly,
        extra: r.extra,
        granted: r.granted,
        used: r.used,
        allocation,
        remaining,
        held: Amount::ZERO,
    }
}

/// The active members of a group, as of the current cycle.
pub fn members_of<'a>(account: &'a Account, group: &'a str) -> impl Iterator<Item = &'a Member> + 'a {
    account
        .members
        .values()
        .filter(move |m| m.active && account.group_of(m) == group)
}

/// A group's figures in the current cycle.
pub fn group(account: &Account, g: &Group) -> GroupFigures {
    let cycle = account.cycle.number;
    let t = g.tally.at(cycle);
    let (mut distributed, mut count) = (Amount::ZERO, 0u32);
    for m in members_of(account, &g.name) {
        distributed += m.monthly() + m.extra_credits;
        count += 1;
    }
    group_figures(
        &g.name,
        &g.settings,
        distributed,
        count,
        t.granted,
        t.used,
        t.auto_granted,
    )
}

/// `budget`, `available` and the reserve left, from a group's settings
/// and sums.
fn group_figures(
    name: &str,
    settings: &GroupSettings,
    distributed: Amount,
    members: u32,
    granted: Amount,
    used: Amount,
    auto_granted: Amount,
) -> GroupFigures {
    let budget = settings.budget();
    GroupFigures {
        name: name.to_string(),
        monthly: settings.monthly_credits,
        extra: settings.extra_credits,
        budget,
        distributed,
        available: budget - distributed,
        granted,
        used,
        auto_approve_reserve: settings.auto_approve_reserve,
        auto_approve_remaining: (settings.auto_approve_reserve - auto_granted).max(Amount::ZERO),
        members,
    }
}

/// The groups of a closed cycle, as they ended it.
pub fn closed_groups(view: &ClosedView) -> Vec<GroupFigures> {
    view.cycle
        .groups
        .iter()
        .map(|g| {
            let (mut distributed, mut count) = (Amount::ZERO, 0u32);
            for m in view.members_in(&g.name) {
                distributed += m.record.monthly + m.record.extra;
                count += 1;
            }
            group_figures(
                &g.name,
                &g.settings,
                distributed,
                count,
                g.granted,
                g.used,
                g.auto_granted,
            )
        })
        .collect()
}

/// An account's figures in the current cycle.
pub fn account(account: &Account) -> AccountFigures {
    let cycle = account.cycle.number;
    let groups: Vec<(String, Amount, Amount)> = account
        .groups
        .values()
        .filter(|g| g.active)
        .map(|g| (g.name.clone(), g.settings.budget(), g.tally.at(cycle).used))
        .collect();
    figures(
        account.cycle,
        account.settings.credits_per_cycle,
        account.used,
        account.settings.tracking_enabled(),
        groups,
    )
}

/// An account's figures in a closed cycle (tracking as it is now).
pub fn closed_account(view: &ClosedView, tracking_enabled: bool) -> AccountFigures {
    let closed = &view.cycle;
    let groups = closed
        .groups
        .iter()
        .map(|g| (g.name.clone(), g.settings.budget(), g.used))
        .collect();
    figures(
        closed.window,
        closed.credits_per_cycle,
        closed.used,
        tracking_enabled,
        groups,
    )
}

fn figures(
    cycle: CycleWindow,
    limit: Amount,
    used: Amount,
    tracking_enabled: bool,
    groups: Vec<(String, Amount, Amount)>,
) -> AccountFigures {
    let allocated: Amount = groups.iter().map(|g| g.1).sum();
    AccountFigures {
        cycle,
        credits_per_cycle: limit,
        used,
        balance: limit - used,
        usage_percent: usage_percent(used, limit),
        allocated,
        unallocated: limit - allocated,
        tracking_enabled,
        groups,
    }
}

/// May `user_id` spend `credits` now? Headroom per scope is its limit
/// minus used minus open holds; grants raise member and group headroom,
/// never the account's. Ties go to the narrowest scope.
pub fn authorize(account: &Account, user_id: &str, credits: Amount) -> Result<Authorization, LedgerError> {
    let m = account
        .members
        .get(user_id)
        .ok_or_else(|| LedgerError::UnknownMember(user_id.to_string()))?;
    if !account.settings.tracking_enabled() {
        return Ok(Authorization {
            allowed: true,
            remaining: None,
            limited_by: None,
        });
    }
    let refuse = |scope| Authorization {
        allowed: false,
        remaining: Some(Amount::ZERO),
        limited_by: Some(scope),
    };
    if !m.active {
        return Ok(refuse(Scope::Member));
    }
    let Some(g) = account.groups.get(account.group_of(m)).filter(|g| g.active) else {
        return Ok(refuse(Scope::Group));
    };
    let cycle = account.cycle.number;
    let gt = g.tally.at(cycle);
    let member_room = standing(m, cycle).remaining - m.held;
    let group_room = g.settings.budget() + gt.granted - gt.used - g.held;
    let account_room = account.settings.credits_per_cycle - account.used - account.held;
    let mut best = (member_room, Scope::Member);
    for candidate in [(group_room, Scope::Group), (account_room, Scope::Account)] {
        if candidate.0 < best.0 {
            best = candidate;
        }
    }
    Ok(Authorization {
        allowed: credits <= best.0,
        remaining: Some(best.0),
        limited_by: Some(best.1),
    })
}
