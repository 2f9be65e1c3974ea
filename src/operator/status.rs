//! The status of each resource, computed from the ledger. Deterministic:
//! the same ledger state gives the same status, so a repeat reconcile
//! writes nothing. The operator never writes `status.approval`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{json, Value};

use crate::crd::{
    AllocationEntry, CreditAccountStatus, CreditGroupStatus, CycleStatus, LastReset, MemberAllocationStatus,
};
use crate::ledger::state::Account;
use crate::ledger::{numbers, Phase, ResetReason};

/// A time as the API stores it: `metav1.Time` keeps whole seconds, so a
/// status carrying finer times would differ from its stored copy forever
/// and be written again on every reconcile.
pub fn api_time(t: jiff::Timestamp) -> Time {
    Time(jiff::Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// A condition, before timestamps: `(type, status, reason, message)`.
pub type Cond = (&'static str, bool, String, String);

/// Builds conditions, keeping the transition time of those that did not change.
pub fn conditions(
    wanted: Vec<Cond>,
    current: &[Condition],
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> Vec<Condition> {
    wanted
        .into_iter()
        .map(|(type_, ok, reason, message)| {
            let status = if ok { "True" } else { "False" }.to_string();
            let since = current
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| api_time(now));
            Condition {
                type_: type_.to_string(),
                status,
                reason,
                message,
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// Two condition lists equal but for their timestamps.
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            (&x.type_, &x.status, &x.reason, &x.message, x.observed_generation)
                == (&y.type_, &y.status, &y.reason, &y.message, y.observed_generation)
        })
}

fn reason(r: ResetReason) -> crate::crd::ResetReason {
    match r {
        ResetReason::Created => crate::crd::ResetReason::Created,
        ResetReason::Scheduled => crate::crd::ResetReason::Scheduled,
        ResetReason::Manual => crate::crd::ResetReason::Manual,
        ResetReason::CadenceChanged => crate::crd::ResetReason::CadenceChanged,
    }
}

pub fn account(
    acct: &Account,
    generation: Option<i64>,
    current: &[Condition],
    now: jiff::Timestamp,
) -> CreditAccountStatus {
    let f = numbers::account(acct);
    let mut wanted: Vec<Cond> = vec![(
        "Ready",
        true,
        "Reconciled".into(),
        format!("cycle {} is current", f.cycle.number),
    )];
    wanted.push(if f.tracking_enabled {
        ("TrackingDisabled", false, "CreditFactorSet".into(), String::new())
    } else {
        (
            "TrackingDisabled",
            true,
            "CreditFactorZero".into(),
            "creditFactor is 0: usage is recorded, nothing is debited".into(),
        )
    });
    wanted.push(if f.allocated > f.credits_per_cycle {
        (
            "OverAllocated",
            true,
            "GroupsExceedLimit".into(),
            format!("groups hold {} of {} per cycle", f.allocated, f.credits_per_cycle),
        )
    } else {
        ("OverAllocated", false, "WithinLimit".into(), String::new())
    });
    CreditAccountStatus {
        observed_generation: generation,
        conditions: conditions(wanted, current, generation, now),
        cycle: Some(CycleStatus {
            number: f.cycle.number,
            start: api_time(f.cycle.start),
            end: api_time(f.cycle.end),
        }),
        credits_per_cycle: Some(f.credits_per_cycle),
        used: Some(f.used),
        balance: Some(f.balance),
        usage_percent: Some(f.usage_percent),
        allocated: Some(f.allocated),
        unallocated: Some(f.unallocated),
        tracking_enabled: Some(f.tracking_enabled),
        groups: Some(f.groups.len() as u32),
        allocation_overview: f
            .groups
            .into_iter()
            .map(|(name, budget, used)| AllocationEntry { name, budget, used })
            .collect(),
        last_reset: acct.last_reset.map(|r| LastReset {
            at: api_time(r.at),
            reason: reason(r.reason),
        }),
    }
}

pub fn group(
    acct: &Account,
    name: &str,
    generation: Option<i64>,
    current: &[Condition],
    now: jiff::Timestamp,
) -> Option<CreditGroupStatus> {
    let g = acct.groups.get(name).filter(|g| g.active)?;
    let f = numbers::group(acct, g);
    let over = f.distributed > f.budget;
    let wanted: Vec<Cond> = vec![
        ("Ready", true, "Reconciled".into(), String::new()),
        if over {
            (
                "OverDistributed",
                true,
                "MembersExceedBudget".into(),
                format!("members hold {} of a {} budget", f.distributed, f.budget),
            )
        } else {
            ("OverDistributed", false, "WithinBudget".into(), String::new())
        },
    ];
    Some(CreditGroupStatus {
        observed_generation: generation,
        conditions: conditions(wanted, current, generation, now),
        members: Some(f.members),
        budget: Some(f.budget),
        distributed: Some(f.distributed),
        available: Some(f.available),
        granted: Some(f.granted),
        used: Some(f.used),
        auto_approve_remaining: Some(f.auto_approve_remaining),
    })
}

pub fn member(
    acct: &Account,
    name: &str,
    user_id: &str,
    generation: Option<i64>,
    current: &[Condition],
    now: jiff::Timestamp,
) -> MemberAllocationStatus {
    let owned = acct.members.get(user_id).filter(|m| m.active && m.name() == name);
    let Some(m) = owned else {
        let owner = acct
            .members
            .get(user_id)
            .map(|m| m.name().to_string())
            .unwrap_or_default();
        let wanted = vec![(
            "Ready",
            false,
            "DuplicateUserId".into(),
            format!("user id {user_id} belongs to MemberAllocation {owner}"),
        )];
        return MemberAllocationStatus {
            observed_generation: generation,
            conditions: conditions(wanted, current, generation, now),
            ..MemberAllocationStatus::default()
        };
    };
    let f = numbers::member(acct, m);
    let group_ok = acct.groups.get(&f.group).is_some_and(|g| g.active);
    let wanted: Vec<Cond> = if group_ok {
        vec![("Ready", true, "Reconciled".into(), String::new())]
    } else {
        vec![(
            "Ready",
            false,
            "GroupNotFound".into(),
            format!("group {} does not exist: spending is refused at group scope", f.group),
        )]
    };
    MemberAllocationStatus {
        observed_generation: generation,
        conditions: conditions(wanted, current, generation, now),
        group: Some(f.group),
        monthly_credits: Some(f.monthly),
        extra_credits: Some(f.extra),
        granted: Some(f.granted),
        used: Some(f.used),
        remaining: Some(f.remaining),
    }
}

/// The operator's part of a request's status (never `approval`), as the
/// JSON to apply, and whether its phase is decided.
pub fn request(
    acct: &Account,
    uid: &str,
    generation: Option<i64>,
    problem: Option<Cond>,
    current: &[Condition],
    now: jiff::Timestamp,
) -> Option<Value> {
    let r = acct.requests.get(uid)?;
    let mut wanted: Vec<Cond> = vec![("Ready", true, "Reconciled".into(), String::new())];
    wanted.extend(problem);
    let conds = conditions(wanted, current, generation, now);
    let mut status = json!({
        "observedGeneration": generation,
        "phase": r.phase.as_str(),
        "conditions": conds,
    });
    if r.phase != Phase::Pending {
        status["decidedAt"] = json!(r.decided_at.map(api_time));
        status["decidedBy"] = json!(r.decided_by);
        status["cycle"] = json!(r.cycle);
        if let Some(c) = r.approved_credits {
            status["approvedCredits"] = json!(c.to_string());
        }
    }
    Some(status)
}
