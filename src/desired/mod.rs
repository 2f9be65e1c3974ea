//! The desired state: objects of this API group, from wherever they are
//! declared, turned into ledger commands. The rules serve both modes:
//!
//! - every object is stated each round (level-triggered); the ledger keeps
//!   only real changes;
//! - one active account per namespace, the oldest (or the one the ledger
//!   already serves); the others are reported;
//! - an account's default group is created when nothing declares it, with
//!   the credits unallocated at that moment;
//! - removals happen only when every source has been read whole (no broken
//!   file, no malformed object): an object missing from a partial read is
//!   never taken for deleted;
//! - a request's spec is immutable; its decision comes from its status.
//!
//! Two sources feed it: [`folder`] (a manifest folder: last good state per
//! file, files that have settled) and [`cluster`] (the Kubernetes API's
//! reflectors, one namespace at a time).

pub mod cluster;
pub mod folder;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::crd::convert;
use crate::ledger::{numbers, Command, GroupSettings, Ledger, LedgerError, Verdict};
use crate::manifests::{Object, Problem, Severity, Sourced};

/// What a round did not manage, for the log.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<Problem>,
    pub applied: usize,
    /// Commands the ledger refused or could not commit.
    pub failures: usize,
}

/// States `desired` (the objects of one namespace when `scope` names it,
/// of everything otherwise) to the ledger; `approver` names who decided a
/// request whose `status.approval` is set.
pub async fn apply(
    ledger: &Ledger,
    desired: &[&Sourced],
    removals_allowed: bool,
    scope: Option<&str>,
    approver: fn(&Sourced) -> String,
) -> Report {
    let mut report = Report::default();
    let mut round = Round {
        ledger,
        report: &mut report,
        scope: scope.map(str::to_string),
        approver,
        previous: BTreeMap::new(),
    };
    round.apply(desired, removals_allowed).await;
    report
}

pub(crate) struct Round<'a> {
    pub(crate) ledger: &'a Ledger,
    pub(crate) report: &'a mut Report,
    /// Only accounts of this namespace may be removed.
    pub(crate) scope: Option<String>,
    pub(crate) approver: fn(&Sourced) -> String,
    /// Where each object was declared before this round (`Kind:namespace`,
    /// name), to say which file a removal comes from.
    pub(crate) previous: BTreeMap<(String, String), PathBuf>,
}

fn account_id(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl Round<'_> {
    fn problem(&mut self, s: &Sourced, severity: Severity, e: LedgerError) {
        let code = e.code();
        let (field, message) = match e {
            LedgerError::InvalidField { field, message } => (field, message),
            other => ("-".to_string(), other.to_string()),
        };
        self.report.problems.push(Problem {
            severity,
            file: s.file.clone(),
            object: format!("{}/{}", s.object.kind(), s.object.name()),
            field,
            message,
            code,
        });
    }

    async fn run(&mut self, s: &Sourced, command: Command) -> bool {
        match self.ledger.execute(command).await {
            Ok(_) => {
                self.report.applied += 1;
                true
            }
            Err(e) => {
                self.report.failures += 1;
                self.problem(s, Severity::Error, e);
                false
            }
        }
    }

    pub(crate) async fn apply(&mut self, desired: &[&Sourced], removals_allowed: bool) {
        // Oldest first: creation time when the file has one, else file order.
        let mut ordered: Vec<&Sourced> = desired.to_vec();
        ordered.sort_by_key(|s| (s.object.created(), s.position));
        let namespaces: BTreeSet<&str> = ordered.iter().map(|s| s.object.namespace()).collect();

        let mut active_accounts: BTreeMap<String, String> = BTreeMap::new();
        let mut held: BTreeSet<String> = BTreeSet::new();
        for ns in &namespaces {
            let accounts: Vec<&&Sourced> = ordered
                .iter()
                .filter(|s| s.object.namespace() == *ns && matches!(s.object, Object::Account(_)))
                .collect();
            // The account the ledger already serves keeps the namespace.
            let serving = {
                let state = self.ledger.read();
                accounts
                    .iter()
                    .find(|s| {
                        state
                            .account(&account_id(ns, s.object.name()))
                            .is_some_and(|a| a.active)
                    })
                    .map(|s| s.object.name().to_string())
            };
            let Some(chosen) = serving.or_else(|| accounts.first().map(|s| s.object.name().to_string())) else {
                continue;
            };
            for other in accounts.iter().filter(|s| s.object.name() != chosen) {
                let message = format!("namespace {ns} already has account {chosen}; this one is ignored");
                self.problem(other, Severity::Error, LedgerError::field("metadata.name", message));
            }
            active_accounts.insert(ns.to_string(), account_id(ns, &chosen));
        }

        for s in &ordered {
            let Object::Account(a) = &s.object else { continue };
            let id = account_id(s.object.namespace(), s.object.name());
            if active_accounts.get(s.object.namespace()) != Some(&id) {
                continue;
            }
            let Ok(settings) = convert::account_settings(&a.spec) else {
                held.insert(id.clone());
                active_accounts.remove(s.object.namespace());
                continue;
            };
            let tracking_was_on = self
                .ledger
                .read()
                .account(&id)
                .is_some_and(|acct| acct.active && !acct.settings.credit_factor.is_zero());
            let tracking_off = settings.credit_factor.is_zero();
            if !self
                .run(
                    s,
                    Command::ApplyAccount {
                        account: id.clone(),
                        settings,
                    },
                )
                .await
            {
                // A refused apply is no removal: the account keeps what the
                // ledger has, and nothing in it is removed this round.
                held.insert(id.clone());
                active_accounts.remove(s.object.namespace());
                continue;
            }
            if tracking_was_on && tracking_off {
                tracing::warn!(
                    account = %id,
                    file = %s.file.display(),
                    "credit tracking is now DISABLED: creditFactor is 0; usage is stored but nothing is debited"
                );
            }
            if let Ok(Some(mark)) = convert::reset_mark(a.metadata.annotations.as_ref()) {
                self.run(
                    s,
                    Command::Reset {
                        account: id,
                        mark: Some(mark),
                    },
                )
                .await;
            }
        }

        let desired_groups: BTreeSet<(String, String)> = ordered
            .iter()
            .filter(|s| matches!(s.object, Object::Group(_)))
            .map(|s| (s.object.namespace().to_string(), s.object.name().to_string()))
            .collect();
        for s in &ordered {
            let Object::Group(g) = &s.object else { continue };
            let Some(account) = active_accounts.get(s.object.namespace()).cloned() else {
                continue;
            };
            let Ok(settings) = convert::group_settings(&g.spec) else {
                continue;
            };
            self.run(
                s,
                Command::ApplyGroup {
                    account,
                    name: s.object.name().to_string(),
                    settings,
                },
            )
            .await;
        }
        self.ensure_default_groups(&active_accounts).await;

        let mut desired_members: BTreeSet<(String, String)> = BTreeSet::new();
        for s in &ordered {
            let Object::Member(m) = &s.object else { continue };
            let Some(account) = active_accounts.get(s.object.namespace()).cloned() else {
                continue;
            };
            let Ok(member) = convert::member_spec(s.object.name(), &m.spec) else {
                continue;
            };
            desired_members.insert((account.clone(), member.user_id.clone()));
            self.run(s, Command::ApplyMember { account, member }).await;
        }

        for s in &ordered {
            let Object::Request(r) = &s.object else { continue };
            let Some(account) = active_accounts.get(s.object.namespace()).cloned() else {
                continue;
            };
            let uid = s
                .object
                .uid()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{}/{}", s.object.namespace(), s.object.name()));
            // A request is immutable once submitted (the CRD says so in a
            // cluster): an edit, or a new request under a used name, is
            // reported, never silently ignored.
            let submitted = self
                .ledger
                .read()
                .account(&account)
                .and_then(|a| a.requests.get(&uid))
                .map(|q| (q.member.clone(), q.credits, q.reason.clone(), q.phase, q.submitted_at));
            if let Some((member, credits, reason, phase, at)) = submitted {
                let mut changed = Vec::new();
                if member != r.spec.member {
                    changed.push(format!("member {member:?} → {:?}", r.spec.member));
                }
                if credits != r.spec.credits {
                    changed.push(format!("credits {credits} → {}", r.spec.credits));
                }
                if reason != r.spec.reason {
                    changed.push("reason".to_string());
                }
                if !changed.is_empty() {
                    let message = format!(
                        "a request is immutable once submitted: this name was submitted at {at} and is {phase:?}; this change ({}) is ignored: a new request needs a new name",
                        changed.join(", ")
                    );
                    self.problem(s, Severity::Error, LedgerError::field("spec", message));
                    continue;
                }
            }
            let submit = Command::SubmitRequest {
                account: account.clone(),
                uid: uid.clone(),
                name: s.object.name().to_string(),
                member: r.spec.member.clone(),
                credits: r.spec.credits,
                reason: r.spec.reason.clone(),
            };
            if !self.run(s, submit).await {
                continue;
            }
            let Some(approval) = r.status.as_ref().and_then(|st| st.approval.as_ref()) else {
                continue;
            };
            let pending = self
                .ledger
                .read()
                .account(&account)
                .and_then(|a| a.requests.get(&uid))
                .is_some_and(|q| q.phase == crate::ledger::Phase::Pending);
            if !pending {
                continue;
            }
            let verdict = match approval.decision {
                crate::crd::Decision::Approve => Verdict::Approve {
                    credits: approval.credits,
                },
                crate::crd::Decision::Deny => Verdict::Deny,
            };
            let decide = Command::DecideRequest {
                account,
                uid,
                verdict,
                reason: approval.reason.clone().unwrap_or_default(),
                by: (self.approver)(s),
            };
            self.run(s, decide).await;
        }

        if removals_allowed {
            self.remove_missing(&active_accounts, &held, &desired_groups, &desired_members)
                .await;
        }
    }

    /// Creates each account's default group when no file declares it,
    /// with the credits still unallocated at that moment.
    async fn ensure_default_groups(&mut self, accounts: &BTreeMap<String, String>) {
        for account in accounts.values() {
            let missing = {
                let state = self.ledger.read();
                state.account(account).filter(|a| a.active).and_then(|a| {
                    let name = a.settings.default_group.clone();
                    let exists = a.groups.get(&name).is_some_and(|g| g.active);
                    let unallocated = numbers::account(a).unallocated;
                    (!exists).then_some((name, unallocated.max(crate::amount::Amount::ZERO)))
                })
            };
            if let Some((name, credits)) = missing {
                let settings = GroupSettings {
                    monthly_credits: credits,
                    ..GroupSettings::default()
                };
                tracing::info!(%account, group = %name, monthly_credits = %credits, "created the default group");
                if let Err(e) = self
                    .ledger
                    .execute(Command::ApplyGroup {
                        account: account.clone(),
                        name,
                        settings,
                    })
                    .await
                {
                    self.report.failures += 1;
                    tracing::error!(%account, error = %e, "cannot create the default group");
                }
            }
        }
    }

    /// Stops what the folder no longer declares; the ledger keeps its history.
    async fn remove_missing(
        &mut self,
        accounts: &BTreeMap<String, String>,
        held: &BTreeSet<String>,
        groups: &BTreeSet<(String, String)>,
        members: &BTreeSet<(String, String)>,
    ) {
        let mut commands = Vec::new();
        {
            let state = self.ledger.read();
            let serving: BTreeSet<&String> = accounts.values().collect();
            let in_scope = |id: &str| {
                self.scope
                    .as_ref()
                    .is_none_or(|ns| id.split('/').next() == Some(ns.as_str()))
            };
            for (id, account) in state
                .accounts
                .iter()
                .filter(|(id, a)| a.active && in_scope(id) && !held.contains(*id))
            {
                if !serving.contains(id) {
                    commands.push(Command::RemoveAccount { account: id.clone() });
                    continue;
                }
                let ns = id.split('/').next().unwrap_or_default().to_string();
                for group in account.groups.values().filter(|g| g.active) {
                    if group.name != account.settings.default_group
                        && !groups.contains(&(ns.clone(), group.name.clone()))
                    {
                        commands.push(Command::RemoveGroup {
                            account: id.clone(),
                            name: group.name.clone(),
                        });
                    }
                }
                for member in account.members.values().filter(|m| m.active) {
                    if !members.contains(&(id.clone(), member.user_id().to_string())) {
                        commands.push(Command::RemoveMember {
                            account: id.clone(),
                            user_id: member.user_id().to_string(),
                        });
                    }
                }
            }
        }
        for command in commands {
            let (kind, account, name) = match &command {
                Command::RemoveAccount { account } => (
                    "CreditAccount",
                    account,
                    account.split('/').nth(1).unwrap_or_default().to_string(),
                ),
                Command::RemoveGroup { account, name } => ("CreditGroup", account, name.clone()),
                Command::RemoveMember { account, user_id } => {
                    let name = self
                        .ledger
                        .read()
                        .account(account)
                        .and_then(|a| a.members.get(user_id).map(|m| m.name().to_string()))
                        .unwrap_or_else(|| user_id.clone());
                    ("MemberAllocation", account, name)
                }
                _ => ("-", &String::new(), String::new()),
            };
            let ns = account.split('/').next().unwrap_or_default().to_string();
            let file = self
                .previous
                .get(&(format!("{kind}:{ns}"), name.clone()))
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| "no file this process has read".into());
            tracing::warn!(
                kind,
                %account,
                %name,
                %file,
                "REMOVING {kind} {name} of {account}: no file declares it any more (it was in {file})"
            );
            if let Err(e) = self.ledger.execute(command).await {
                self.report.failures += 1;
                tracing::error!(error = %e, "removal failed");
            }
        }
    }
}
