//! `credit-operator validate DIR`: the offline check for GitOps pipelines.
//!
//! Each object is checked on its own (schema, CEL rules, what the ledger
//! would refuse), then across objects: references to groups and members,
//! duplicate user ids, one account per namespace (errors), and
//! over-distribution and over-allocation (warnings).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::amount::Amount;
use crate::manifests::{scan, Object, Problem, Severity, Sourced};

/// Every problem in the folder, errors and warnings, in file order.
pub fn validate(dir: &Path) -> std::io::Result<Vec<Problem>> {
    let scan = scan(dir)?;
    let mut problems = scan.problems.clone();
    let mut by_ns: BTreeMap<&str, Vec<&Sourced>> = BTreeMap::new();
    for s in &scan.objects {
        by_ns.entry(s.object.namespace()).or_default().push(s);
    }
    for (ns, objects) in by_ns {
        check_namespace(ns, &objects, &mut problems);
    }
    problems.sort_by(|a, b| (&a.file, &a.object).cmp(&(&b.file, &b.object)));
    Ok(problems)
}

fn problem(s: &Sourced, severity: Severity, field: &str, message: String) -> Problem {
    Problem {
        severity,
        file: s.file.clone(),
        object: format!("{}/{}", s.object.kind(), s.object.name()),
        field: field.to_string(),
        message,
        code: "",
    }
}

fn check_namespace(ns: &str, objects: &[&Sourced], out: &mut Vec<Problem>) {
    let mut ordered = objects.to_vec();
    ordered.sort_by_key(|s| (s.object.created(), s.position));
    let accounts: Vec<_> = ordered
        .iter()
        .filter_map(|s| match &s.object {
            Object::Account(a) => Some((*s, a)),
            _ => None,
        })
        .collect();
    for (s, _) in accounts.iter().skip(1) {
        let first = accounts[0].0.object.name();
        out.push(problem(
            s,
            Severity::Error,
            "metadata.name",
            format!("namespace {ns} already has account {first}; only one account per namespace is active"),
        ));
    }
    let account = accounts.first().map(|(_, a)| *a);
    let default_group = account
        .map(|a| a.spec.default_group.clone())
        .unwrap_or_else(|| "default".into());
    let signup = account.map(|a| a.spec.signup_credits).unwrap_or_default();

    let groups: BTreeMap<&str, (&Sourced, Amount)> = ordered
        .iter()
        .filter_map(|s| match &s.object {
            Object::Group(g) => Some((s.object.name(), (*s, g.spec.monthly_credits + g.spec.extra_credits))),
            _ => None,
        })
        .collect();
    let mut distributed: BTreeMap<String, Amount> = BTreeMap::new();
    let mut user_ids: BTreeMap<&str, &str> = BTreeMap::new();
    let mut member_names = BTreeSet::new();
    for s in &ordered {
        let Object::Member(m) = &s.object else { continue };
        if account.is_none() {
            out.push(problem(
                s,
                Severity::Error,
                "metadata.namespace",
                format!("namespace {ns} has no CreditAccount"),
            ));
        }
        member_names.insert(s.object.name());
        if let Some(owner) = user_ids.get(m.spec.user.id.as_str()) {
            out.push(problem(
                s,
                Severity::Error,
                "spec.user.id",
                format!(
                    "user id {:?} already belongs to MemberAllocation/{owner}",
                    m.spec.user.id
                ),
            ));
            continue;
        }
        user_ids.insert(&m.spec.user.id, s.object.name());
        let group = m.spec.group.clone().filter(|g| !g.is_empty());
        if let Some(g) = &group {
            if !groups.contains_key(g.as_str()) && *g != default_group {
                out.push(problem(
                    s,
                    Severity::Error,
                    "spec.group",
                    format!("group {g:?} not found in namespace {ns}"),
                ));
            }
        }
        let share = m.spec.monthly_credits.unwrap_or(signup) + m.spec.extra_credits;
        *distributed
            .entry(group.unwrap_or_else(|| default_group.clone()))
            .or_default() += share;
    }
    for (name, (s, budget)) in &groups {
        if account.is_none() {
            out.push(problem(
                s,
                Severity::Error,
                "metadata.namespace",
                format!("namespace {ns} has no CreditAccount"),
            ));
        }
        let d = distributed.get(*name).copied().unwrap_or_default();
        if d > *budget {
            out.push(problem(
                s,
                Severity::Warning,
                "spec.monthlyCredits",
                format!("over-distributed: members hold {d} of a {budget} budget"),
            ));
        }
    }
    if let Some((s, a)) = accounts.first() {
        let allocated: Amount = groups.values().map(|(_, b)| *b).sum();
        if allocated > a.spec.credits_per_cycle {
            out.push(problem(
                s,
                Severity::Warning,
                "spec.creditsPerCycle",
                format!(
                    "over-allocated: groups hold {allocated} of {} per cycle",
                    a.spec.credits_per_cycle
                ),
            ));
        }
    }
    for s in &ordered {
        let Object::Request(r) = &s.object else { continue };
        if !member_names.contains(r.spec.member.as_str()) {
            out.push(problem(
                s,
                Severity::Error,
                "spec.member",
                format!("MemberAllocation {:?} not found in namespace {ns}", r.spec.member),
            ));
        }
    }
}
