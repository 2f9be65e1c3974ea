//! Groups and members: configuration, enrolment, removal, and which group
//! a member counts in (its figures move with it).

use super::cycles::catch_up;
use super::{Account, Emitter};
use crate::ledger::error::LedgerError;
use crate::ledger::model::*;

/// `Command::ApplyGroup`: an event only when something changed.
pub(super) fn apply_group(
    em: &mut Emitter,
    account: AccountId,
    name: String,
    settings: GroupSettings,
) -> Result<Outcome, LedgerError> {
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

pub(super) fn remove_group(em: &mut Emitter, account: AccountId, name: String) -> Result<Outcome, LedgerError> {
    em.state.active_account(&account)?;
    if em.state.accounts[&account].groups.get(&name).is_some_and(|g| g.active) {
        em.emit(&account, None, Event::GroupRemoved { name });
    }
    Ok(Outcome::Done)
}

/// `Command::ApplyMember`: enrols a user id (recording the signup credits
/// of the moment) or reconfigures it. A user id is held by one object: an
/// active member's id named by another object is a `DuplicateUserId`.
pub(super) fn apply_member(em: &mut Emitter, account: AccountId, spec: MemberSpec) -> Result<Outcome, LedgerError> {
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

pub(super) fn remove_member(em: &mut Emitter, account: AccountId, user_id: String) -> Result<Outcome, LedgerError> {
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

/// Applies `AccountConfigured` to an account (new or known): members
/// without a group follow a new default group, figures and all.
pub(super) fn configure_account(account: &mut Account, settings: &AccountSettings) {
    if account.settings.default_group != settings.default_group {
        // Every member without a group rolls under the old default first,
        // so its closed cycles keep the group they had; enrolled ones take
        // their figures along.
        let followers: Vec<(String, bool)> = account
            .members
            .values()
            .filter(|m| m.group().is_none())
            .map(|m| (m.user_id().to_string(), m.active))
            .collect();
        for (id, active) in &followers {
            if *active {
                account.count_in_group(id, false);
            } else {
                account.member_entry(id);
            }
        }
        account.settings = settings.clone();
        for (id, _) in followers.iter().filter(|(_, active)| *active) {
            account.count_in_group(id, true);
        }
    }
    account.settings = settings.clone();
    account.active = true;
}

/// Applies the group and member events.
pub(super) fn apply(account: &mut Account, event: &Event) {
    match event {
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
            if account.members.get(&id).is_some_and(|m| m.active) {
                account.count_in_group(&id, false);
            }
            // Close the old cycle's figures under the old spec first.
            account.member_entry(&id);
            let cycle = account.cycle.number;
            account.members.upsert(spec, signup.unwrap_or_default(), cycle).active = true;
            account.count_in_group(&id, true);
        }
        Event::MemberRemoved { user_id } if account.members.get(user_id).is_some_and(|m| m.active) => {
            account.count_in_group(user_id, false);
            if let Some(m) = account.members.get_mut(user_id) {
                m.active = false;
            }
        }
        _ => {}
    }
}
