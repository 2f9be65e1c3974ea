//! The ledger's rules, run on both journals (test names say which:
//! `sqlite::…` and `postgres::…`).

mod support;

use std::sync::Arc;

use credit_operator::ledger::writer::LedgerOptions;
use credit_operator::ledger::*;
use jiff::{SignedDuration, ToSpan};
use support::*;

/// A total past an input's 18 digits.
fn big(s: &str) -> credit_operator::amount::Amount {
    credit_operator::amount::Amount::from_decimal(s.parse().expect("a decimal"))
}

fn hours(h: i64) -> SignedDuration {
    SignedDuration::from_hours(h)
}

/// Alice and Bob in `ml`, Carol in the default group on signup credits.
fn standard(f: &Fixture) {
    f.account_with("10000", "CalendarMonth", "UTC", "1", "40");
    f.group("default", "1000", "0", "0");
    f.group("ml", "3000", "500", "200");
    f.member("alice", Some("ml"), Some("1000"), "100");
    f.member("bob", Some("ml"), Some("800"), "0");
    f.member("carol", None, None, "0");
}

on_both_backends! {
    fn numbers_follow_the_design_formulas(db: &Db) {
        let f = Fixture::new(db);
        standard(&f);
        f.usage("u-alice", "250", "k1").unwrap();
        f.usage("u-bob", "100.5", "k2").unwrap();
        let req = f.submit("r1", "bob", "150");
        assert_eq!(req.phase, Phase::AutoApproved);

        let alice = f.member_figures("u-alice");
        assert_eq!((alice.allocation, alice.used, alice.remaining), (amt("1100"), amt("250"), amt("850")));
        let bob = f.member_figures("u-bob");
        assert_eq!((bob.monthly, bob.granted, bob.allocation), (amt("800"), amt("150"), amt("950")));
        assert_eq!(bob.remaining, amt("849.5"));
        let carol = f.member_figures("u-carol");
        assert_eq!((carol.group.as_str(), carol.monthly), ("default", amt("40")));

        let ml = f.group_figures("ml");
        assert_eq!(ml.budget, amt("3500"));
        assert_eq!(ml.distributed, amt("1900"));
        assert_eq!(ml.available, amt("1600"));
        assert_eq!(ml.granted, amt("150"));
        assert_eq!(ml.used, amt("350.5"));
        assert_eq!(ml.auto_approve_remaining, amt("50"));
        assert_eq!(ml.members, 2);

        let acct = f.account_figures();
        assert_eq!(acct.used, amt("350.5"));
        assert_eq!(acct.balance, amt("9649.5"));
        // 350.5 / 10000 × 100 = 3.505 → half-even → 3.50
        assert_eq!(acct.usage_percent.to_string(), "3.5");
        assert_eq!(acct.allocated, amt("4500"));
        assert_eq!(acct.unallocated, amt("5500"));
        assert_eq!(acct.cycle.number, 1);
        assert_eq!(acct.cycle.start, t("2026-11-01T00:00:00Z"));
        assert_eq!(acct.cycle.end, t("2026-12-01T00:00:00Z"));
    }

    fn the_same_key_debits_once_and_answers_as_the_first_time(db: &Db) {
        let mut f = Fixture::new(db);
        standard(&f);
        let first = f.usage("u-alice", "10", "evt-1").unwrap();
        assert!(!first.duplicate);
        assert_eq!((first.member_used, first.member_remaining), (amt("10"), amt("1090")));
        f.usage("u-alice", "5", "evt-2").unwrap();
        let again = f.usage("u-alice", "10.000", "evt-1").unwrap();
        assert!(again.duplicate);
        assert_eq!((again.credits, again.member_used, again.member_remaining), (amt("10"), amt("10"), amt("1090")));
        assert_eq!(f.member_figures("u-alice").used, amt("15"));

        let before = f.state();
        let err = f.usage("u-alice", "11", "evt-1").unwrap_err();
        assert!(matches!(err, LedgerError::IdempotencyConflict(ref k) if k == "evt-1"), "{err}");
        assert_eq!(f.state(), before, "a conflict changes nothing");

        f.restart();
        let after_restart = f.usage("u-alice", "10", "evt-1").unwrap();
        assert!(after_restart.duplicate);
        assert_eq!(after_restart.member_used, amt("10"));
        assert_eq!(f.member_figures("u-alice").used, amt("15"));
    }

    fn a_retry_after_its_key_left_memory_gets_the_first_answer_from_the_journal(db: &Db) {
        use credit_operator::ledger::keys::KEY_GENERATION;
        let mut f = Fixture::new(db);
        standard(&f);
        let first = f.usage("u-alice", "10", "evt-first").unwrap();
        assert_eq!((first.member_used, first.member_remaining), (amt("10"), amt("1090")));
        let hold = match f.ok(Command::OpenHold {
            account: ACCOUNT.into(),
            member: "u-alice".into(),
            charge: Charge::Credits(amt("20")),
            ttl_seconds: 600,
            key: "hold-first".into(),
        }) {
            Outcome::Hold(h) => h,
            other => panic!("unexpected {other:?}"),
        };
        f.usage("u-alice", "5", "evt-later").unwrap();
        // Two generations of new keys push both out of memory.
        let flood = 2 * KEY_GENERATION as u64 + 1;
        let mut pending = std::collections::VecDeque::new();
        for i in 0..flood {
            pending.push_back(f.ledger.submit(Command::RecordUsage {
                labels: Default::default(),
                account: ACCOUNT.into(),
                member: "u-bob".into(),
                charge: Charge::Credits(amt("0.001")),
                key: format!("flood-{i}"),
                occurred_at: None,
            }));
            if pending.len() >= 8192 {
                pending.pop_front().unwrap().blocking_recv().unwrap().unwrap();
            }
        }
        for rx in pending {
            rx.blocking_recv().unwrap().unwrap();
        }
        let bob_used = amt("131.073");
        let check = |f: &Fixture, when: &str| {
            let state = f.state();
            let keys = &state.accounts[ACCOUNT].keys;
            assert!(keys.get("evt-first").is_none() && keys.get("hold-first").is_none(), "{when}: still in memory");
            assert!(keys.in_memory() <= 2 * KEY_GENERATION, "{when}: {} keys in memory", keys.in_memory());
            assert!(keys.past() >= KEY_GENERATION as u64, "{when}: {} keys past", keys.past());
            let last_seq = state.last_seq;
            // The first answer, not today's figures (alice has used 15).
            let again = f.usage("u-alice", "10.0", "evt-first").unwrap();
            assert!(again.duplicate, "{when}");
            assert_eq!(
                (again.credits, again.member_used, again.member_remaining),
                (amt("10"), amt("10"), amt("1090")),
                "{when}"
            );
            // The same key for another body or member is still taken.
            for (user, credits) in [("u-alice", "11"), ("u-bob", "10")] {
                let err = f.usage(user, credits, "evt-first").unwrap_err();
                assert!(matches!(err, LedgerError::IdempotencyConflict(_)), "{when}: {err}");
            }
            match f.ok(Command::OpenHold {
                account: ACCOUNT.into(),
                member: "u-alice".into(),
                charge: Charge::Credits(amt("20")),
                ttl_seconds: 600,
                key: "hold-first".into(),
            }) {
                Outcome::Hold(h) => assert_eq!((h.id, h.credits, h.duplicate), (hold.id.clone(), amt("20"), true), "{when}"),
                other => panic!("unexpected {other:?}"),
            }
            // Nothing was recorded twice.
            assert_eq!(f.state().last_seq, last_seq, "{when}");
            assert_eq!(f.member_figures("u-alice").used, amt("15"), "{when}");
            assert_eq!(f.member_figures("u-bob").used, bob_used, "{when}");
        };
        check(&f, "live");
        f.restart();
        check(&f, "after a replay");
        f.ledger.snapshot_blocking().unwrap();
        f.restart();
        check(&f, "after a snapshot");
        // A new key right after is recorded once, as new.
        let new = f.usage("u-alice", "1", "evt-new").unwrap();
        assert!(!new.duplicate);
        assert_eq!(new.member_used, amt("16"));
    }

    fn a_closed_cycle_keeps_the_members_and_settings_it_had_before_and_after_restarts(db: &Db) {
        let mut f = Fixture::new(db);
        f.account("100000", "1d");
        f.group("default", "1000", "0", "0");
        f.group("data", "5000", "0", "0");
        f.member("alice", Some("data"), Some("1000"), "0");
        f.member("bob", Some("data"), Some("800"), "0");
        f.member("carol", Some("data"), Some("600"), "50");
        f.member("dave", None, Some("300"), "0");
        f.usage("u-alice", "100", "a1").unwrap();
        f.usage("u-bob", "50", "b1").unwrap();

        f.clock.advance(hours(25));
        f.ledger.catch_up_blocking(None).unwrap();
        // Cycle 2 changes the group: carol's allocation, bob leaves, erin
        // joins, dave moves in; alice spends again.
        f.member("carol", Some("data"), Some("900"), "0");
        f.ok(Command::RemoveMember {
            account: ACCOUNT.into(),
            user_id: "u-bob".into(),
        });
        f.member("erin", Some("data"), Some("700"), "0");
        f.member("dave", Some("data"), Some("300"), "0");
        f.usage("u-alice", "10", "a2").unwrap();

        // (user, monthly, extra, used) of cycle 1's `data`, by user id.
        let cycle_one = |f: &Fixture| {
            let view = f.closed(1);
            let groups = numbers::closed_groups(&view);
            let data = groups.iter().find(|g| g.name == "data").expect("data in cycle 1").clone();
            let mut listed: Vec<(String, String, String, String)> = view
                .members_in("data")
                .map(numbers::closed_member)
                .map(|m| (m.user_id, m.monthly.to_string(), m.extra.to_string(), m.used.to_string()))
                .collect();
            listed.sort();
            let default_members = view.members_in("default").count();
            (data.members, data.distributed, data.used, listed, default_members)
        };
        let expected = (
            3,
            amt("2450"),
            amt("150"),
            vec![
                ("u-alice".to_string(), "1000".to_string(), "0".to_string(), "100".to_string()),
                ("u-bob".to_string(), "800".to_string(), "0".to_string(), "50".to_string()),
                ("u-carol".to_string(), "600".to_string(), "50".to_string(), "0".to_string()),
            ],
            1,
        );
        assert_eq!(cycle_one(&f), expected, "cycle 1 as it was, not as cycle 2 made it");
        let now = f.group_figures("data");
        assert_eq!((now.members, now.distributed), (4, amt("2900")), "cycle 2: alice, carol, erin, dave");

        f.restart();
        assert_eq!(cycle_one(&f), expected, "the same after a replay of the journal");
        f.ledger.snapshot_blocking().unwrap();
        f.restart();
        assert_eq!(cycle_one(&f), expected, "the same after a snapshot restore");

        // A third cycle in which nobody of `data` did anything: cycle 2 is
        // kept as it ended, quiet members included.
        f.clock.advance(hours(24));
        f.ledger.catch_up_blocking(None).unwrap();
        f.restart();
        let view = f.closed(2);
        let two = numbers::closed_groups(&view);
        let data = two.iter().find(|g| g.name == "data").unwrap();
        assert_eq!((data.members, data.distributed, data.used), (4, amt("2900"), amt("10")));
        assert_eq!(view.members_in("data").count(), 4);
        assert_eq!(view.members_in("default").count(), 0);
        // Nothing of a closed cycle stays in memory or in a snapshot.
        let body = journal::encode_snapshot(&f.state()).unwrap();
        assert!(!body.contains("\"closed\"") && !body.contains("history"), "{body}");
    }

    fn a_scheduled_reset_happens_once_across_restarts_and_downtime(db: &Db) {
        let mut f = Fixture::new(db);
        f.account("1000", "1d");
        f.group("default", "1000", "0", "0");
        f.member("alice", None, Some("100"), "0");
        f.usage("u-alice", "30", "a").unwrap();
        let anchor = t("2026-11-26T10:00:00Z");

        f.clock.advance(hours(25));
        f.ledger.catch_up_blocking(None).unwrap();
        let acct = f.account_figures();
        assert_eq!(acct.cycle.number, 2);
        assert_eq!(acct.cycle.start, anchor + 24.hours());
        assert_eq!(acct.used, amt("0"));
        assert_eq!(f.member_figures("u-alice").used, amt("0"));
        let seq = f.state().last_seq;

        f.restart();
        f.ledger.catch_up_blocking(None).unwrap();
        assert_eq!(f.account_figures().cycle.number, 2, "no second reset after a restart");
        assert_eq!(f.state().last_seq, seq, "nothing was journaled");

        // Down for three and a half days: one entry, the cycle containing now.
        f.clock.advance(hours(84));
        f.restart();
        f.ledger.catch_up_blocking(None).unwrap();
        assert_eq!(f.state().last_seq, seq + 1, "one journal entry for several missed boundaries");
        let acct = f.account_figures();
        assert_eq!(acct.cycle.number, 3);
        assert_eq!(acct.cycle.start, anchor + 96.hours());
        assert_eq!(acct.cycle.end, anchor + 120.hours());
        // History of the closed cycle stays readable.
        let closed = numbers::closed_account(&f.closed(1), true);
        assert_eq!(closed.used, amt("30"));
    }

    fn commands_apply_due_boundaries_first(db: &Db) {
        let f = Fixture::new(db);
        f.account("1000", "1h");
        f.group("default", "1000", "0", "0");
        f.member("alice", None, Some("100"), "0");
        f.usage("u-alice", "60", "a").unwrap();
        f.clock.advance(hours(1));
        // No tick ran; the usage itself lands in the new cycle.
        let receipt = f.usage("u-alice", "5", "b").unwrap();
        assert_eq!(receipt.member_used, amt("5"));
        assert_eq!(f.account_figures().cycle.number, 2);
    }

    fn a_reset_is_one_entry_whatever_the_number_of_members(db: &Db) {
        let f = Fixture::new(db);
        f.account("1000000", "CalendarMonth");
        f.group("default", "1000000", "0", "0");
        for i in 0..500 {
            f.member(&format!("m{i}"), None, Some("100"), "0");
            f.usage(&format!("u-m{i}"), "1", &format!("k{i}")).unwrap();
        }
        let before = f.state().last_seq;
        let outcome = f.ok(Command::Reset { account: ACCOUNT.into(), mark: None });
        assert!(matches!(outcome, Outcome::Cycle(c) if c.number == 2));
        assert_eq!(f.state().last_seq, before + 1);
        assert_eq!(f.member_figures("u-m7").used, amt("0"));
        assert_eq!(f.group_figures("default").used, amt("0"));
        let view = f.closed(1);
        let m7 = view.members.iter().find(|m| m.user_id == "u-m7").unwrap();
        assert_eq!(numbers::closed_member(m7).used, amt("1"));
        assert_eq!(numbers::closed_account(&view, true).used, amt("500"));
    }

    fn the_reset_annotation_resets_once_per_later_value(db: &Db) {
        let f = Fixture::new(db);
        f.account("1000", "CalendarMonth");
        let mark = t("2026-11-26T09:00:00Z");
        f.ok(Command::Reset { account: ACCOUNT.into(), mark: Some(mark) });
        assert_eq!(f.account_figures().cycle.number, 2);
        assert_eq!(f.account_figures().cycle.start, t("2026-11-26T10:00:00Z"));
        // The same value again, or an older one (a git revert), does nothing.
        f.ok(Command::Reset { account: ACCOUNT.into(), mark: Some(mark) });
        f.ok(Command::Reset { account: ACCOUNT.into(), mark: Some(t("2026-11-01T00:00:00Z")) });
        assert_eq!(f.account_figures().cycle.number, 2);
        f.clock.advance(hours(1));
        f.ok(Command::Reset { account: ACCOUNT.into(), mark: Some(t("2026-11-26T10:30:00Z")) });
        let acct = f.account_figures();
        assert_eq!(acct.cycle.number, 3);
        // A calendar month keeps its day and time: the fresh cycle ends at
        // the month's next boundary, where it would have ended anyway.
        assert_eq!(acct.cycle.start, t("2026-11-26T11:00:00Z"));
        assert_eq!(acct.cycle.end, t("2026-12-01T00:00:00Z"));
        // A mark from before the current cycle began resets nothing, even
        // when it is later than the last one recorded.
        f.ok(Command::Reset { account: ACCOUNT.into(), mark: Some(t("2026-11-26T10:45:00Z")) });
        assert_eq!(f.account_figures().cycle.number, 3);
    }

    fn a_cadence_change_resets_once_and_an_equal_spelling_does_not(db: &Db) {
        let f = Fixture::new(db);
        f.account("1000", "1w");
        f.account("1000", "7d");
        assert_eq!(f.account_figures().cycle.number, 1);
        f.clock.advance(hours(2));
        f.account("1000", "1d");
        let acct = f.account_figures();
        assert_eq!(acct.cycle.number, 2);
        assert_eq!(acct.cycle.start, t("2026-11-26T12:00:00Z"));
        assert_eq!(acct.cycle.end, t("2026-11-27T12:00:00Z"));
        f.account("1000", "1d");
        assert_eq!(f.account_figures().cycle.number, 2);
        let state = f.state();
        assert_eq!(state.accounts[ACCOUNT].last_reset.unwrap().reason, ResetReason::CadenceChanged);
    }

    fn a_limit_or_timezone_change_never_resets(db: &Db) {
        let f = Fixture::new(db);
        f.account_with("1000", "CalendarMonth", "UTC", "1", "0");
        f.group("default", "1000", "0", "0");
        f.member("alice", None, Some("500"), "0");
        f.usage("u-alice", "300", "a").unwrap();
        f.account_with("2000", "CalendarMonth", "UTC", "1", "0");
        let acct = f.account_figures();
        assert_eq!((acct.cycle.number, acct.used, acct.balance), (1, amt("300"), amt("1700")));
        f.account_with("2000", "CalendarMonth", "Asia/Tokyo", "1", "0");
        let acct = f.account_figures();
        assert_eq!((acct.cycle.number, acct.used), (1, amt("300")));
        // Later boundaries: the anchor's wall clock (1st, 00:00) in Tokyo.
        assert_eq!(acct.cycle.end, t("2026-11-30T15:00:00Z"));
    }

    fn a_timezone_change_past_the_new_zones_boundary_resets_once_and_skips_none(db: &Db) {
        // UTC → Asia/Tokyo at 2026-03-31T20:00Z: in Tokyo April began at
        // 15:00Z, inside this cycle, so it resets now, once; then every
        // Tokyo boundary resets once (April 30 15:00Z, May 31 15:00Z).
        let f = Fixture::new(db);
        f.clock.set(t("2026-03-01T00:00:00Z"));
        f.account_with("1000", "CalendarMonth", "UTC", "1", "0");
        f.group("default", "1000", "0", "0");
        f.member("alice", None, Some("500"), "0");
        f.usage("u-alice", "300", "a").unwrap();
        assert_eq!(f.account_figures().cycle.end, t("2026-04-01T00:00:00Z"));
        f.clock.set(t("2026-03-31T20:00:00Z"));
        f.account_with("1000", "CalendarMonth", "Asia/Tokyo", "1", "0");
        let acct = f.account_figures();
        assert_eq!((acct.cycle.number, acct.used), (2, amt("0")));
        assert_eq!((acct.cycle.start, acct.cycle.end), (t("2026-03-31T15:00:00Z"), t("2026-04-30T15:00:00Z")));
        f.ok(Command::Tick { account: None });
        assert_eq!(f.account_figures().cycle.number, 2, "no second reset for the same boundary");
        f.clock.set(t("2026-04-01T00:00:00Z"));
        f.ok(Command::Tick { account: None });
        assert_eq!(f.account_figures().cycle.number, 2, "the old zone's boundary no longer counts");
        f.clock.set(t("2026-04-30T15:00:00Z"));
        f.ok(Command::Tick { account: None });
        assert_eq!((f.account_figures().cycle.number, f.account_figures().cycle.end), (3, t("2026-05-31T15:00:00Z")));

        // UTC → America/Los_Angeles mid-month: LA's March began 8 hours
        // after this cycle did; that is the same March, not a new cycle.
        let g = Fixture::new(&support::sqlite_db());
        g.clock.set(t("2026-03-01T00:00:00Z"));
        g.account_with("1000", "CalendarMonth", "UTC", "1", "0");
        g.clock.set(t("2026-03-15T12:00:00Z"));
        g.account_with("1000", "CalendarMonth", "America/Los_Angeles", "1", "0");
        let acct = g.account_figures();
        assert_eq!((acct.cycle.number, acct.cycle.end), (1, t("2026-04-01T07:00:00Z")));
    }

    fn requests_auto_approve_from_the_reserve_then_wait_for_an_admin(db: &Db) {
        let f = Fixture::new(db);
        standard(&f);
        assert_eq!(f.submit("r1", "alice", "150").phase, Phase::AutoApproved);
        let waiting = f.submit("r2", "alice", "100");
        assert_eq!(waiting.phase, Phase::Pending, "reserve left is 50");
        assert_eq!(f.group_figures("ml").auto_approve_remaining, amt("50"));

        for bad in ["0", "100.01"] {
            let before = f.state();
            let err = f.decide("r2", Verdict::Approve { credits: Some(amt(bad)) }).unwrap_err();
            assert!(matches!(err, LedgerError::InvalidApproval { .. }), "{bad}: {err}");
            assert_eq!(f.state(), before);
        }
        let approved = f.decide("r2", Verdict::Approve { credits: Some(amt("60")) }).unwrap();
        assert_eq!((approved.phase, approved.approved_credits), (Phase::Approved, Some(amt("60"))));
        assert_eq!(approved.decided_by.as_deref(), Some("admin@example.com"));
        assert_eq!(f.member_figures("u-alice").granted, amt("210"));
        assert_eq!(f.group_figures("ml").granted, amt("210"));

        let err = f.decide("r2", Verdict::Deny).unwrap_err();
        assert!(matches!(err, LedgerError::AlreadyDecided { ref phase, .. } if phase == "Approved"), "{err}");
        f.submit("r3", "bob", "500");
        let denied = f.decide("r3", Verdict::Deny).unwrap();
        assert_eq!((denied.phase, denied.approved_credits), (Phase::Denied, None));
        assert_eq!(f.member_figures("u-bob").granted, amt("0"));
        // Approve without an amount grants what was asked.
        f.submit("r4", "bob", "70");
        let full = f.decide("r4", Verdict::Approve { credits: None }).unwrap();
        assert_eq!(full.approved_credits, Some(amt("70")));
    }

    fn a_pending_request_survives_a_reset_and_grants_in_the_cycle_of_the_decision(db: &Db) {
        let f = Fixture::new(db);
        standard(&f);
        f.submit("r1", "carol", "25");
        f.ok(Command::Reset { account: ACCOUNT.into(), mark: None });
        let approved = f.decide("r1", Verdict::Approve { credits: None }).unwrap();
        assert_eq!(approved.cycle, Some(2));
        assert_eq!(f.member_figures("u-carol").granted, amt("25"));
    }

    fn approval_needs_the_member_but_denial_does_not(db: &Db) {
        let f = Fixture::new(db);
        standard(&f);
        f.submit("r1", "ghost", "10");
        f.submit("r2", "ghost", "10");
        let err = f.decide("r1", Verdict::Approve { credits: None }).unwrap_err();
        assert!(matches!(err, LedgerError::MemberNotFound(ref m) if m == "ghost"), "{err}");
        assert_eq!(f.decide("r2", Verdict::Deny).unwrap().phase, Phase::Denied);
    }

    fn signup_credits_are_recorded_at_enrolment(db: &Db) {
        let f = Fixture::new(db);
        f.account_with("1000", "CalendarMonth", "UTC", "1", "50");
        f.group("default", "1000", "0", "0");
        f.member("early", None, None, "0");
        f.account_with("1000", "CalendarMonth", "UTC", "1", "80");
        f.member("late", None, None, "0");
        assert_eq!(f.member_figures("u-early").monthly, amt("50"));
        assert_eq!(f.member_figures("u-late").monthly, amt("80"));
        // An explicit allocation wins; removing it falls back to the snapshot.
        f.member("early", None, Some("300"), "0");
        assert_eq!(f.member_figures("u-early").monthly, amt("300"));
        f.member("early", None, None, "0");
        assert_eq!(f.member_figures("u-early").monthly, amt("50"));
    }

    fn tracking_disabled_records_usage_but_debits_nothing(db: &Db) {
        let f = Fixture::new(db);
        f.account_with("100", "CalendarMonth", "UTC", "0", "0");
        f.group("default", "100", "0", "0");
        f.member("alice", None, Some("10"), "0");
        let seq = f.state().last_seq;
        let receipt = f.usage("u-alice", "500", "a").unwrap();
        assert_eq!(receipt.credits, amt("0"));
        assert_eq!(f.state().last_seq, seq + 1, "the usage is journaled");
        assert_eq!(f.member_figures("u-alice").used, amt("0"));
        let auth = f.ledger.authorize(ACCOUNT, "u-alice", Charge::Credits(amt("1000000"))).unwrap();
        assert_eq!((auth.allowed, auth.remaining, auth.limited_by), (true, None, None));
        assert!(!f.account_figures().tracking_enabled);
    }

    fn cost_converts_with_the_credit_factor_exactly(db: &Db) {
        let f = Fixture::new(db);
        f.account_with("100000", "CalendarMonth", "UTC", "1000", "0");
        f.group("default", "100000", "0", "0");
        f.member("alice", None, Some("5000"), "0");
        let r = f.ledger.execute_blocking(Command::RecordUsage { labels: Default::default(),
            account: ACCOUNT.into(),
            member: "u-alice".into(),
            charge: Charge::CostUsd(amt("0.012345678")),
            key: "c2".into(),
            occurred_at: None,
        }).unwrap();
        assert!(matches!(r, Outcome::Usage(ref u) if u.credits == amt("12.345678")), "{r:?}");
        // Changing the factor is never retroactive; conversions round
        // half-even to 9 places: 0.000000003 × 0.5 = 0.0000000015 → 0.000000002.
        f.account_with("100000", "CalendarMonth", "UTC", "0.5", "0");
        assert_eq!(f.member_figures("u-alice").used, amt("12.345678"));
        let r = f.ledger.execute_blocking(Command::RecordUsage { labels: Default::default(),
            account: ACCOUNT.into(),
            member: "u-alice".into(),
            charge: Charge::CostUsd(amt("0.000000003")),
            key: "c3".into(),
            occurred_at: None,
        }).unwrap();
        assert!(matches!(r, Outcome::Usage(ref u) if u.credits == amt("0.000000002")), "{r:?}");
    }

    fn authorize_answers_with_the_narrowest_smallest_headroom(db: &Db) {
        let f = Fixture::new(db);
        f.account("1000", "CalendarMonth");
        f.group("default", "400", "0", "0");
        f.group("small", "100", "0", "0");
        f.member("alice", None, Some("300"), "0");
        f.member("bob", Some("small"), Some("300"), "0");
        f.member("lost", Some("nowhere"), Some("300"), "0");
        let auth = |user: &str, c: &str| f.ledger.authorize(ACCOUNT, user, Charge::Credits(amt(c))).unwrap();

        let a = auth("u-alice", "300");
        assert_eq!((a.allowed, a.remaining, a.limited_by), (true, Some(amt("300")), Some(Scope::Member)));
        assert!(!auth("u-alice", "300.01").allowed);
        let b = auth("u-bob", "150");
        assert_eq!((b.allowed, b.remaining, b.limited_by), (false, Some(amt("100")), Some(Scope::Group)));
        let lost = auth("u-lost", "1");
        assert_eq!((lost.allowed, lost.limited_by), (false, Some(Scope::Group)));

        // Account scope: usage elsewhere leaves 50 in the account.
        f.usage("u-alice", "250", "x").unwrap();
        f.usage("u-lost", "700", "y").unwrap();
        let a = auth("u-alice", "10");
        assert_eq!((a.allowed, a.remaining, a.limited_by), (true, Some(amt("50")), Some(Scope::Member)));
        f.usage("u-bob", "20", "z").unwrap();
        let a = auth("u-alice", "40");
        assert_eq!((a.allowed, a.remaining, a.limited_by), (false, Some(amt("30")), Some(Scope::Account)));
        // Ties go to the narrowest scope.
        f.group("tie", "30", "0", "0");
        f.member("carol", Some("tie"), Some("30"), "0");
        let c = auth("u-carol", "1");
        assert_eq!((c.remaining, c.limited_by), (Some(amt("30")), Some(Scope::Member)));
    }

    fn a_replay_answers_its_first_answer_after_settings_and_state_moved_on(db: &Db) {
        let f = Fixture::new(db);
        f.account_with("900000000000000000", "CalendarMonth", "UTC", "1", "0");
        f.group("default", "1000", "0", "0");
        f.member("alice", None, Some("100"), "0");

        let open = || f.run(Command::OpenHold {
            account: ACCOUNT.into(), member: "u-alice".into(), charge: Charge::Credits(amt("0.5")), ttl_seconds: 60, key: "h".into(),
        });
        let Outcome::Hold(opened) = open().unwrap() else { panic!() };
        f.ok(Command::SettleHold { labels: Default::default(), account: ACCOUNT.into(), id: opened.id.clone(), charge: Charge::Credits(amt("0.25")) });
        let Outcome::Hold(replayed) = open().unwrap() else { panic!() };
        assert_eq!(
            (replayed.id, replayed.state, replayed.settled_credits, replayed.credits, replayed.duplicate),
            (opened.id, HoldState::Open, None, amt("0.5"), true),
            "a replayed open answers the hold as it was opened"
        );

        let cost = |key: &str| f.run(Command::RecordUsage { labels: Default::default(),
            account: ACCOUNT.into(), member: "u-alice".into(), charge: Charge::CostUsd(amt("900000000000")), key: key.into(), occurred_at: None,
        });
        let Outcome::Usage(first) = cost("big").unwrap() else { panic!() };
        assert_eq!(first.credits, amt("900000000000"));
        // At factor 10,000,000 the same dollars would be beyond range: the
        // retry still gets the stored answer, not a 400.
        f.account_with("900000000000000000", "CalendarMonth", "UTC", "10000000", "0");
        assert!(matches!(cost("fresh").unwrap_err(), LedgerError::InvalidField { .. }));
        let Outcome::Usage(again) = cost("big").unwrap() else { panic!() };
        assert!(again.duplicate);
        assert_eq!((again.credits, again.member_used), (first.credits, first.member_used));
    }

    fn holds_cut_headroom_settle_with_the_actual_cost_and_expire(db: &Db) {
        let f = Fixture::new(db);
        f.account("1000", "CalendarMonth");
        f.group("default", "1000", "0", "0");
        f.member("alice", None, Some("100"), "0");
        let open = |c: &str, key: &str| f.run(Command::OpenHold {
            account: ACCOUNT.into(), member: "u-alice".into(), charge: Charge::Credits(amt(c)), ttl_seconds: 60, key: key.into(),
        });
        let Outcome::Hold(h1) = open("70", "h1").unwrap() else { panic!() };
        assert_eq!(h1.state, HoldState::Open);
        let Outcome::Hold(again) = open("70", "h1").unwrap() else { panic!() };
        assert!(again.duplicate && again.id == h1.id);
        assert_eq!(f.member_figures("u-alice").used, amt("0"), "holds cut headroom, not used");
        let err = open("40", "h2").unwrap_err();
        assert!(matches!(err, LedgerError::InsufficientCredits { ref remaining, ref limited_by } if remaining == "30" && limited_by == "member"), "{err}");

        let Outcome::Hold(settled) = f.ok(Command::SettleHold { labels: Default::default(), account: ACCOUNT.into(), id: h1.id.clone(), charge: Charge::Credits(amt("80")) }) else { panic!() };
        assert_eq!((settled.state, settled.settled_credits), (HoldState::Settled, Some(amt("80"))));
        assert_eq!(f.member_figures("u-alice").used, amt("80"));
        let Outcome::Hold(twice) = f.ok(Command::SettleHold { labels: Default::default(), account: ACCOUNT.into(), id: h1.id.clone(), charge: Charge::Credits(amt("80")) }) else { panic!() };
        assert!(twice.duplicate);
        assert_eq!(f.member_figures("u-alice").used, amt("80"), "settling twice debits once");

        let Outcome::Hold(h3) = open("15", "h3").unwrap() else { panic!() };
        let Outcome::Hold(released) = f.ok(Command::ReleaseHold { account: ACCOUNT.into(), id: h3.id.clone() }) else { panic!() };
        assert_eq!(released.state, HoldState::Released);
        let err = f.run(Command::SettleHold { labels: Default::default(), account: ACCOUNT.into(), id: h3.id, charge: Charge::Credits(amt("1")) }).unwrap_err();
        assert!(matches!(err, LedgerError::HoldClosed { .. }));

        let Outcome::Hold(h4) = open("20", "h4").unwrap() else { panic!() };
        f.clock.advance(SignedDuration::from_secs(61));
        f.ledger.catch_up_blocking(None).unwrap();
        let state = f.state();
        assert_eq!(state.accounts[ACCOUNT].holds[&h4.id].state, HoldState::Expired);
        assert_eq!(state.accounts[ACCOUNT].held, amt("0"));
    }

    fn a_member_moved_mid_cycle_takes_its_usage_along(db: &Db) {
        let f = Fixture::new(db);
        standard(&f);
        f.usage("u-alice", "120", "a").unwrap();
        f.submit("r1", "alice", "50");
        f.member("alice", Some("default"), Some("1000"), "100");
        let (ml, default) = (f.group_figures("ml"), f.group_figures("default"));
        assert_eq!((ml.used, ml.granted), (amt("0"), amt("0")));
        assert_eq!((default.used, default.granted), (amt("120"), amt("50")));
        assert_eq!(ml.auto_approve_remaining, amt("150"), "spent reserve stays spent in ml");
    }

    fn a_removed_member_keeps_its_history_and_is_refused(db: &Db) {
        let f = Fixture::new(db);
        standard(&f);
        f.usage("u-bob", "40", "a").unwrap();
        f.ok(Command::RemoveMember { account: ACCOUNT.into(), user_id: "u-bob".into() });
        assert_eq!(f.group_figures("ml").used, amt("0"));
        f.usage("u-bob", "5", "b").unwrap();
        assert_eq!(f.account_figures().used, amt("45"), "usage of a removed member still counts");
        let auth = f.ledger.authorize(ACCOUNT, "u-bob", Charge::Credits(amt("1"))).unwrap();
        assert_eq!((auth.allowed, auth.limited_by), (false, Some(Scope::Member)));
        // Re-created under the same user id: history comes back.
        f.member("bob", Some("ml"), Some("800"), "0");
        assert_eq!(f.member_figures("u-bob").used, amt("45"));
        assert_eq!(f.group_figures("ml").used, amt("45"));
        let err = f.usage("u-nobody", "1", "c").unwrap_err();
        assert!(matches!(err, LedgerError::UnknownMember(_)));
    }

    fn a_user_id_belongs_to_the_oldest_member(db: &Db) {
        let f = Fixture::new(db);
        standard(&f);
        let mut dup = spec("alice", None, Some("1"), "0");
        dup.name = "alice-2".into();
        let err = f.run(Command::ApplyMember { account: ACCOUNT.into(), member: dup }).unwrap_err();
        assert!(matches!(err, LedgerError::DuplicateUserId { ref owner, .. } if owner == "alice"), "{err}");
    }

    fn bad_input_names_the_field_and_changes_nothing(db: &Db) {
        let f = Fixture::new(db);
        standard(&f);
        f.usage("u-alice", "1", "seen").unwrap();
        let before = f.state();
        let usage = |member: &str, charge: Charge, key: &str| Command::RecordUsage { labels: Default::default(),
            account: ACCOUNT.into(), member: member.into(), charge, key: key.into(), occurred_at: None,
        };
        let neg = credit_operator::amount::Amount::from_int(-5);
        let cases: Vec<(Command, &str)> = vec![
            (usage("u-alice", Charge::Credits(neg), "n1"), "credits"),
            (usage("u-alice", Charge::CostUsd(neg), "n2"), "costUsd"),
            (usage("u-alice", Charge::Credits(amt("999999999999999999")), "n3"), "credits"),
            (usage("", Charge::Credits(amt("1")), "n4"), "member"),
            (usage("u-alice", Charge::Credits(amt("1")), ""), "idempotencyKey"),
            (Command::ApplyMember { account: ACCOUNT.into(), member: spec("", None, None, "0") }, "metadata.name"),
            (Command::ApplyMember { account: ACCOUNT.into(), member: MemberSpec { user_id: String::new(), ..spec("x", None, None, "0") } }, "spec.user.id"),
            (Command::ApplyMember { account: ACCOUNT.into(), member: MemberSpec { extra_credits: neg, ..spec("x", None, None, "0") } }, "spec.extraCredits"),
            (Command::ApplyGroup { account: ACCOUNT.into(), name: "g".into(), settings: GroupSettings { monthly_credits: neg, ..GroupSettings::default() } }, "spec.monthlyCredits"),
            (Command::SubmitRequest { account: ACCOUNT.into(), uid: "q".into(), name: "q".into(), member: "alice".into(), credits: amt("0"), reason: String::new() }, "spec.credits"),
            (Command::SubmitRequest { account: ACCOUNT.into(), uid: "q".into(), name: "q".into(), member: "alice".into(), credits: amt("1"), reason: "x".repeat(2000) }, "reason"),
            (Command::OpenHold { account: ACCOUNT.into(), member: "u-alice".into(), charge: Charge::Credits(amt("1")), ttl_seconds: 0, key: "h".into() }, "ttlSeconds"),
        ];
        for (command, field) in cases {
            let description = format!("{command:?}");
            match f.run(command) {
                Err(LedgerError::InvalidField { field: got, .. }) => assert_eq!(got, field, "{description}"),
                other => panic!("{description}: expected an error naming {field}, got {other:?}"),
            }
            assert_eq!(f.state(), before, "{description} changed the state");
        }
        for (command, expected) in [
            (usage("u-nobody", Charge::Credits(amt("1")), "n5"), "not_found"),
            (Command::RecordUsage { labels: Default::default(), account: "team/other".into(), member: "u-alice".into(), charge: Charge::Credits(amt("1")), key: "n6".into(), occurred_at: None }, "not_found"),
            (Command::DecideRequest { account: ACCOUNT.into(), uid: "nope".into(), verdict: Verdict::Deny, reason: String::new(), by: "x".into() }, "not_found"),
        ] {
            let err = f.run(command).unwrap_err();
            assert_eq!(err.code(), expected, "{err}");
            assert_eq!(f.state(), before);
        }
        for (cadence, tz, field) in [("1s", "UTC", "spec.cadence"), ("fortnight", "UTC", "spec.cadence"), ("1d", "Mars/Base", "spec.timezone")] {
            let err = AccountSettings::new(amt("1"), cadence, tz, amt("0"), amt("0"), "default").unwrap_err();
            assert!(matches!(err, LedgerError::InvalidField { field: ref got, .. } if got == field), "{err}");
        }
    }

    fn an_absurd_event_is_refused_and_usage_after_a_near_ceiling_event_is_still_recorded(db: &Db) {
        let mut f = Fixture::new(db);
        // Factor 100: a dollar is 100 credits.
        f.account_with("10000", "CalendarMonth", "UTC", "100", "40");
        f.group("default", "1000", "0", "0");
        f.group("ml", "3000", "500", "200");
        f.member("alice", Some("ml"), Some("1000"), "100");
        f.member("bob", Some("ml"), Some("800"), "0");
        let usd = |member: &str, dollars: &str, key: &str| Command::RecordUsage {
            labels: Default::default(),
            account: ACCOUNT.into(),
            member: member.into(),
            charge: Charge::CostUsd(amt(dollars)),
            key: key.into(),
            occurred_at: None,
        };
        let before = f.state();
        // One event over the ceiling of 10^12 credits (or dollars), as
        // credits, as dollars, and as dollars that convert past it.
        for (command, field, says) in [
            (Command::RecordUsage { labels: Default::default(), account: ACCOUNT.into(), member: "u-alice".into(), charge: Charge::Credits(amt("999999999999999000")), key: "huge-1".into(), occurred_at: None }, "credits", "at most 1000000000000 credits"),
            (usd("u-alice", "1000000000000000", "huge-2"), "costUsd", "at most 1000000000000 dollars"),
            (usd("u-alice", "10000000000.01", "huge-3"), "costUsd", "converts to 1000000000001 credits"),
        ] {
            match f.run(command) {
                Err(LedgerError::InvalidField { field: got, message }) => {
                    assert_eq!(got, field);
                    assert!(message.contains(says), "{message}");
                }
                other => panic!("expected a refusal naming {field}, got {other:?}"),
            }
            assert_eq!(f.state(), before, "a refused event changed the state");
        }
        // Exactly at the ceiling is one event: recorded, and so is all the
        // usage after it, of this member and of the others.
        let r = f.run(usd("u-alice", "10000000000", "near-1")).unwrap();
        assert!(matches!(r, Outcome::Usage(ref u) if u.credits == amt("1000000000000")), "{r:?}");
        f.usage("u-alice", "1000000000000", "near-2").unwrap();
        for i in 0..5 {
            f.usage("u-bob", "1.5", &format!("after-b{i}")).unwrap();
            f.usage("u-alice", "0.25", &format!("after-a{i}")).unwrap();
        }
        assert_eq!(f.member_figures("u-alice").used, amt("2000000000001.25"));
        assert_eq!(f.member_figures("u-bob").used, amt("7.5"));
        assert_eq!(f.account_figures().used, amt("2000000000008.75"));
        assert_eq!(f.group_figures("ml").used, amt("2000000000008.75"));

        // Two approvals near the input cap take bob's granted credits past
        // 18 digits; a snapshot of that state restores unchanged.
        for uid in ["big-1", "big-2"] {
            let req = f.submit(uid, "bob", "999999999999999999");
            assert_eq!(req.phase, Phase::Pending);
            let approved = f.decide(uid, Verdict::Approve { credits: None }).unwrap();
            assert_eq!(approved.approved_credits, Some(amt("999999999999999999")));
        }
        assert_eq!(f.member_figures("u-bob").granted, big("1999999999999999998"));
        assert_eq!(f.group_figures("ml").granted, big("1999999999999999998"));
        // Past the totals' ceiling of 10^19 an approval is refused by field.
        for i in 0..8 {
            let uid = format!("big-more-{i}");
            f.submit(&uid, "bob", "999999999999999999");
            f.decide(&uid, Verdict::Approve { credits: None }).unwrap();
        }
        f.submit("one-too-many", "bob", "999999999999999999");
        let live = f.state();
        match f.decide("one-too-many", Verdict::Approve { credits: None }) {
            Err(LedgerError::InvalidField { field, message }) => {
                assert_eq!(field, "status.approval.credits");
                assert!(message.contains("10000000000000000000"), "{message}");
            }
            other => panic!("expected the approval to be refused, got {other:?}"),
        }
        assert_eq!(f.state(), live);
        assert_eq!(f.member_figures("u-bob").granted, big("9999999999999999990"));
        f.ledger.snapshot_blocking().unwrap();
        f.restart();
        assert_eq!(f.state(), live, "the snapshot restored another state");
        f.usage("u-bob", "1", "after-restart").unwrap();
        assert_eq!(f.member_figures("u-bob").used, amt("8.5"));
        f.restart();
        assert_eq!(f.member_figures("u-bob").used, amt("8.5"));
    }

    fn costs_sum_by_model_provider_group_and_member_and_survive_a_reset_and_restarts(db: &Db) {
        use credit_operator::ledger::costs::{breakdown, CostDimension, Labels};
        let mut f = Fixture::with_options(db, LedgerOptions { snapshot_every: 4, ..LedgerOptions::default() });
        // Factor 1000: a dollar is 1,000 credits.
        f.account_with("100000", "CalendarMonth", "UTC", "1000", "40");
        f.group("default", "1000", "0", "0");
        f.group("ml", "3000", "0", "0");
        f.member("alice", Some("ml"), Some("1000"), "0");
        f.member("bob", Some("ml"), Some("800"), "0");
        f.member("carol", None, None, "0");
        let labels = |model: Option<&str>, provider: Option<&str>| Labels {
            model: model.map(str::to_string),
            provider: provider.map(str::to_string),
            tags: [("team".to_string(), "search".to_string())].into_iter().collect(),
        };
        let spend = |f: &Fixture, user: &str, charge: Charge, key: &str, l: Labels| {
            f.ok(Command::RecordUsage { account: ACCOUNT.into(), member: user.into(), charge, key: key.into(), occurred_at: None, labels: l });
        };
        spend(&f, "u-alice", Charge::CostUsd(amt("0.25")), "e1", labels(Some("gpt-4o"), Some("openai")));
        spend(&f, "u-alice", Charge::CostUsd(amt("0.125")), "e2", labels(Some("claude-3.5-sonnet"), Some("anthropic")));
        spend(&f, "u-bob", Charge::CostUsd(amt("0.5")), "e3", labels(Some("gpt-4o"), Some("openai")));
        spend(&f, "u-carol", Charge::Credits(amt("7")), "e4", Labels::default());
        // A retry is counted once; the same key with other labels is a conflict.
        spend(&f, "u-alice", Charge::CostUsd(amt("0.25")), "e1", labels(Some("gpt-4o"), Some("openai")));
        let err = f.run(Command::RecordUsage { account: ACCOUNT.into(), member: "u-alice".into(), charge: Charge::CostUsd(amt("0.25")), key: "e1".into(), occurred_at: None, labels: labels(Some("gpt-4o-mini"), Some("openai")) }).unwrap_err();
        assert!(matches!(err, LedgerError::IdempotencyConflict(_)), "{err:?}");
        // A settled hold counts with the settlement's labels.
        let Outcome::Hold(h) = f.ok(Command::OpenHold { account: ACCOUNT.into(), member: "u-bob".into(), charge: Charge::Credits(amt("100")), ttl_seconds: 60, key: "h1".into() }) else { panic!() };
        f.ok(Command::SettleHold { account: ACCOUNT.into(), id: h.id, charge: Charge::CostUsd(amt("0.04")), labels: labels(Some("gpt-4o"), Some("openai")) });
        // Bad labels name their field and change nothing.
        let before = f.state();
        let bad = Labels { model: Some("(none)".into()), ..Labels::default() };
        let err = f.run(Command::RecordUsage { account: ACCOUNT.into(), member: "u-alice".into(), charge: Charge::Credits(amt("1")), key: "bad".into(), occurred_at: None, labels: bad }).unwrap_err();
        assert!(err.to_string().contains("model"), "{err}");
        assert_eq!(f.state().accounts[ACCOUNT].spent(), before.accounts[ACCOUNT].spent());

        let rows = |f: &Fixture, cycle: u64, by: CostDimension| {
            let state = f.state();
            let acct = &state.accounts[ACCOUNT];
            let credit_operator::ledger::costs::Breakdown { items, total, .. } = if cycle == acct.cycle.number {
                breakdown(acct, by)
            } else {
                credit_operator::ledger::costs::closed_breakdown(&f.closed(cycle), by)
            };
            let items: Vec<(String, String, String, u64)> = items.into_iter().map(|i| (i.key, i.sum.credits.to_string(), i.sum.cost_usd.to_string(), i.sum.events)).collect();
            (items, (total.credits.to_string(), total.cost_usd.to_string(), total.events))
        };
        let row = |k: &str, c: &str, usd: &str, n: u64| (k.to_string(), c.to_string(), usd.to_string(), n);
        // 250 + 500 + 40 credits on gpt-4o; 125 on claude; carol's 7 named no model.
        let by_model = (vec![row("gpt-4o", "790", "0.79", 3), row("claude-3.5-sonnet", "125", "0.125", 1), row("(none)", "7", "0", 1)], ("922".to_string(), "0.915".to_string(), 5));
        let by_provider = vec![row("openai", "790", "0.79", 3), row("anthropic", "125", "0.125", 1), row("(none)", "7", "0", 1)];
        let by_group = vec![row("ml", "915", "0.915", 4), row("default", "7", "0", 1)];
        let by_member = vec![row("u-bob", "540", "0.54", 2), row("u-alice", "375", "0.375", 2), row("u-carol", "7", "0", 1)];
        let check = |f: &Fixture, cycle: u64| {
            assert_eq!(rows(f, cycle, CostDimension::Model), by_model, "cycle {cycle} by model");
            assert_eq!(rows(f, cycle, CostDimension::Provider).0, by_provider, "cycle {cycle} by provider");
            assert_eq!(rows(f, cycle, CostDimension::Group).0, by_group, "cycle {cycle} by group");
            assert_eq!(rows(f, cycle, CostDimension::Member).0, by_member, "cycle {cycle} by member");
        };
        check(&f, 1);
        f.restart();
        check(&f, 1);
        // The cycle closes: its breakdown stays, the new one starts empty.
        f.ok(Command::Reset { account: ACCOUNT.into(), mark: None });
        check(&f, 1);
        assert_eq!(rows(&f, 2, CostDimension::Model), (vec![], ("0".to_string(), "0".to_string(), 0)));
        spend(&f, "u-carol", Charge::CostUsd(amt("0.001")), "e5", labels(Some("gpt-4o"), None));
        assert_eq!(rows(&f, 2, CostDimension::Model).0, vec![row("gpt-4o", "1", "0.001", 1)]);
        assert_eq!(rows(&f, 2, CostDimension::Provider).0, vec![row("(none)", "1", "0.001", 1)]);
        f.restart();
        check(&f, 1);
        assert_eq!(rows(&f, 2, CostDimension::Member).0, vec![row("u-carol", "1", "0.001", 1)]);
        // Snapshots were taken along the way: a restart from one agrees.
        let live = f.state();
        f.restart();
        assert_eq!(f.state(), live);
    }

    fn recovery_from_snapshot_and_journal_matches_the_live_state(db: &Db) {
        let mut f = Fixture::with_options(db, LedgerOptions { snapshot_every: 7, ..LedgerOptions::default() });
        standard(&f);
        for i in 0..40 {
            let user = ["u-alice", "u-bob", "u-carol"][i % 3];
            f.usage(user, &format!("{}.25", i), &format!("k{i}")).unwrap();
            if i % 9 == 0 {
                f.submit(&format!("r{i}"), ["alice", "bob", "carol"][i % 3], "30");
            }
            if i == 20 {
                f.clock.advance(hours(24 * 40));
            }
        }
        f.decide("r9", Verdict::Approve { credits: Some(amt("12")) }).ok();
        let live = f.state();
        f.restart();
        assert_eq!(f.state(), live);
    }

    fn a_start_while_a_newer_snapshot_is_stored_reads_one_whole_snapshot(db: &Db) {
        let f = Fixture::new(db);
        standard(&f);
        for i in 0..300 {
            f.usage("u-alice", "1", &format!("k{i}")).unwrap();
        }
        let state = f.state();
        let last = state.last_seq;
        drop(f);
        // A writer storing ever newer snapshots (each deletes the older
        // one and its parts) while a starting process reads the newest.
        let mut reader = journal::open(&db.url).unwrap();
        let saver = journal::open(&db.url).unwrap();
        let mut attached = saver.attach().unwrap();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let done = done.clone();
            let mut state = state.clone();
            std::thread::spawn(move || {
                for round in 0..4 {
                    for seq in 10..last {
                        state.last_seq = seq + round;
                        attached.save_snapshot(&state).unwrap();
                    }
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        let mut reads = 0u32;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let found = reader.latest_snapshot().unwrap_or_else(|e| panic!("read {reads}: {e}"));
            if let Some(found) = found {
                assert_eq!(found.accounts, state.accounts, "read {reads} restored another state");
            }
            reads += 1;
        }
        writer.join().unwrap();
        assert!(reads > 0);
    }

    fn random_command_sequences_recover_to_the_identical_state(db: &Db) {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let mut runner = TestRunner::new(Config { cases: 12, failure_persistence: None, ..Config::default() });
        let step = (0usize..6, 0u32..5000, 0u32..30, 0u32..8);
        runner
            .run(&proptest::collection::vec(step, 1..60), |steps| {
                // A fresh journal per case: a schema or file of its own.
                let own = if db.url.starts_with("sqlite") { sqlite_db() } else { postgres_db().unwrap() };
                let mut f = Fixture::with_options(&own, LedgerOptions { snapshot_every: 5, ..LedgerOptions::default() });
                standard(&f);
                for (i, (kind, amount, key, extra)) in steps.into_iter().enumerate() {
                    let user = ["u-alice", "u-bob", "u-carol"][extra as usize % 3];
                    let credits = format!("{}.{:02}", amount / 100, amount % 100);
                    match kind {
                        0 | 1 => { let _ = f.usage(user, &credits, &format!("k{key}")); }
                        2 => { f.submit(&format!("r{i}"), ["alice", "bob", "carol"][extra as usize % 3], &format!("{}", amount % 400 + 1)); }
                        3 => { let _ = f.decide(&format!("r{key}"), if extra % 2 == 0 { Verdict::Deny } else { Verdict::Approve { credits: None } }); }
                        4 => f.clock.advance(hours(i64::from(extra) * 100)),
                        _ => { let _ = f.run(Command::OpenHold { account: ACCOUNT.into(), member: user.into(), charge: Charge::Credits(amt(&credits)), ttl_seconds: 3600, key: format!("h{key}") }); }
                    }
                }
                let live = f.state();
                f.restart();
                prop_assert_eq!(f.state(), live);
                Ok(())
            })
            .unwrap();
    }

    fn eight_concurrent_writers_with_retries_debit_each_event_once(db: &Db) {
        let f = Fixture::new(db);
        f.account("100000000", "CalendarMonth");
        f.group("default", "100000000", "0", "0");
        f.member("alice", None, Some("100000000"), "0");
        let ledger = Arc::new(f.ledger.clone());
        let mut threads = Vec::new();
        for w in 0..8u32 {
            let ledger = ledger.clone();
            threads.push(std::thread::spawn(move || {
                let mut distinct = credit_operator::amount::Amount::ZERO;
                for i in 0..1000u32 {
                    // Every fifth event retries one this writer sent before.
                    let n = if i % 5 == 4 { i - 3 } else { i };
                    let credits = amt(&format!("{}.{:03}", n % 17 + 1, w));
                    let key = format!("w{w}-e{n}");
                    let outcome = ledger
                        .execute_blocking(Command::RecordUsage { labels: Default::default(),
                            account: ACCOUNT.into(), member: "u-alice".into(), charge: Charge::Credits(credits), key, occurred_at: None,
                        })
                        .expect("usage accepted");
                    let Outcome::Usage(receipt) = outcome else { panic!() };
                    assert_eq!(receipt.duplicate, i % 5 == 4);
                    if !receipt.duplicate {
                        distinct += credits;
                    }
                }
                distinct
            }));
        }
        let expected: credit_operator::amount::Amount = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(f.member_figures("u-alice").used, expected);
        assert_eq!(f.state().accounts[ACCOUNT].keys.in_memory(), 8 * 800);
        let stats = f.ledger.stats();
        assert!(stats.entries >= 6400);
        eprintln!("{} batches for {} entries", stats.batches, stats.entries);
    }

    fn closed_holds_leave_memory_and_are_read_back_from_the_journal(db: &Db) {
        use credit_operator::ledger::state::CLOSED_HOLDS_KEPT;
        let mut f = Fixture::new(db);
        f.account("100000000", "CalendarMonth");
        f.group("default", "100000000", "0", "0");
        f.member("alice", None, Some("100000000"), "0");
        let open = |f: &Fixture, key: &str| match f.ok(Command::OpenHold { account: ACCOUNT.into(), member: "u-alice".into(), charge: Charge::Credits(amt("10")), ttl_seconds: 60, key: key.into() }) {
            Outcome::Hold(h) => h,
            other => panic!("{other:?}"),
        };
        let settle = |f: &Fixture, id: &str, credits: &str| f.run(Command::SettleHold { account: ACCOUNT.into(), id: id.into(), charge: Charge::Credits(amt(credits)), labels: Default::default() });
        let release = |f: &Fixture, id: &str| f.run(Command::ReleaseHold { account: ACCOUNT.into(), id: id.into() });
        let settled = open(&f, "h-settled");
        settle(&f, &settled.id, "7").unwrap();
        let released = open(&f, "h-released");
        release(&f, &released.id).unwrap();
        let expired = open(&f, "h-expired");
        f.clock.advance(SignedDuration::from_secs(61));
        f.ledger.catch_up_blocking(None).unwrap();
        let used = |f: &Fixture| f.member_figures("u-alice").used;
        assert_eq!(used(&f), amt("7"));
        // As many holds again open and close: the three leave memory.
        let pending: Vec<_> = (0..CLOSED_HOLDS_KEPT)
            .map(|i| f.ledger.submit(Command::OpenHold { account: ACCOUNT.into(), member: "u-alice".into(), charge: Charge::Credits(amt("1")), ttl_seconds: 60, key: format!("churn-{i}") }))
            .collect();
        let ids: Vec<String> = pending.into_iter().map(|rx| match rx.blocking_recv().unwrap().unwrap() { Outcome::Hold(h) => h.id, other => panic!("{other:?}") }).collect();
        let pending: Vec<_> = ids.iter().map(|id| f.ledger.submit(Command::ReleaseHold { account: ACCOUNT.into(), id: id.clone() })).collect();
        for rx in pending {
            rx.blocking_recv().unwrap().unwrap();
        }
        let in_memory = |f: &Fixture| {
            let state = f.state();
            let acct = &state.accounts[ACCOUNT];
            (acct.holds.len(), acct.closed_holds.len(), [&settled.id, &released.id, &expired.id].iter().filter(|id| acct.holds.contains_key(**id)).count())
        };
        assert_eq!(in_memory(&f), (CLOSED_HOLDS_KEPT, CLOSED_HOLDS_KEPT, 0), "only the newest closed holds stay");

        for round in ["live", "after a restart"] {
            // A settled hold: the same settlement is a replay, another a conflict.
            let again = settle(&f, &settled.id, "7").unwrap();
            assert!(matches!(again, Outcome::Hold(ref h) if h.duplicate && h.state == HoldState::Settled && h.settled_credits == Some(amt("7"))), "{round}: {again:?}");
            let err = settle(&f, &settled.id, "8").unwrap_err();
            assert!(matches!(err, LedgerError::HoldClosed { ref state, .. } if state == "Settled for 7 credits"), "{round}: {err:?}");
            // A released hold: released again is a replay, settled a conflict.
            let again = release(&f, &released.id).unwrap();
            assert!(matches!(again, Outcome::Hold(ref h) if h.duplicate && h.state == HoldState::Released), "{round}: {again:?}");
            assert!(matches!(settle(&f, &released.id, "1"), Err(LedgerError::HoldClosed { .. })), "{round}");
            // A replayed key answers the hold as it was opened.
            let replay = open(&f, "h-settled");
            assert_eq!((replay.id.as_str(), replay.state, replay.credits, replay.duplicate), (settled.id.as_str(), HoldState::Open, amt("10"), true), "{round}");
            // Ids that name no hold.
            assert!(matches!(settle(&f, "hold-3", "1"), Err(LedgerError::UnknownHold(_))), "{round}");
            assert!(matches!(release(&f, "hold-99999999999"), Err(LedgerError::UnknownHold(_))), "{round}");
            f.restart();
        }
        // An expired hold settled long after: the debit lands once.
        let late = settle(&f, &expired.id, "4").unwrap();
        assert!(matches!(late, Outcome::Hold(ref h) if !h.duplicate && h.state == HoldState::Settled && h.settled_credits == Some(amt("4"))), "{late:?}");
        assert_eq!(used(&f), amt("11"));
        let again = settle(&f, &expired.id, "4").unwrap();
        assert!(matches!(again, Outcome::Hold(ref h) if h.duplicate), "{again:?}");
        assert_eq!(used(&f), amt("11"));
        let live = f.state();
        f.restart();
        assert_eq!(f.state(), live, "replay lets the same holds go");
        assert_eq!(used(&f), amt("11"));
    }

}

/// A real SQLite journal whose commits wait while the test holds its gate
/// shut: a writer stuck on a slow disk. With `fail` set, the next commit
/// through the gate fails, as on a full disk, and writes nothing.
struct Gated {
    inner: Box<dyn journal::Journal>,
    gate: Arc<(std::sync::Mutex<(bool, bool)>, std::sync::Condvar)>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl journal::Journal for Gated {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn epoch(&self) -> i64 {
        self.inner.epoch()
    }
    fn attach(&self) -> Result<Box<dyn journal::Journal>, journal::JournalError> {
        self.inner.attach()
    }
    fn append(&mut self, entries: &[JournalEntry]) -> Result<(), journal::JournalError> {
        let (lock, wake) = &*self.gate;
        let mut g = lock.lock().unwrap();
        // (shut, a commit is waiting)
        g.1 = true;
        wake.notify_all();
        while g.0 {
            g = wake.wait(g).unwrap();
        }
        g.1 = false;
        drop(g);
        if self.fail.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(journal::JournalError::Backend("disk I/O error (the test's)".into()));
        }
        self.inner.append(entries)
    }
    fn latest_snapshot(&mut self) -> Result<Option<State>, journal::JournalError> {
        self.inner.latest_snapshot()
    }
    fn replay_after(&mut self, seq: u64, f: &mut dyn FnMut(JournalEntry)) -> Result<(), journal::JournalError> {
        self.inner.replay_after(seq, f)
    }
    fn find_key(&mut self, account: &str, key: &str) -> Result<Option<JournalEntry>, journal::JournalError> {
        self.inner.find_key(account, key)
    }
    fn save_snapshot(&mut self, state: &State) -> Result<u64, journal::JournalError> {
        self.inner.save_snapshot(state)
    }
    fn archive(&mut self, records: &[history::Archived]) -> Result<(), journal::JournalError> {
        self.inner.archive(records)
    }
    fn history_from(&mut self) -> Result<u64, journal::JournalError> {
        self.inner.history_from()
    }
    fn closed_cycle(
        &mut self,
        account: &str,
        number: u64,
    ) -> Result<Option<state::ClosedCycle>, journal::JournalError> {
        self.inner.closed_cycle(account, number)
    }
    fn member_cycles(
        &mut self,
        account: &str,
        cycle: u64,
        user_ids: &[&str],
    ) -> Result<std::collections::HashMap<String, (u64, state::MemberCycle)>, journal::JournalError> {
        self.inner.member_cycles(account, cycle, user_ids)
    }
    fn find_hold(&mut self, account: &str, id: &str) -> Result<Vec<JournalEntry>, journal::JournalError> {
        self.inner.find_hold(account, id)
    }
}

#[test]
fn a_full_queue_answers_busy_at_once_and_every_queued_command_still_commits() {
    use credit_operator::ledger::writer::QUEUE_DEPTH;
    let db = sqlite_db();
    let gate = Arc::new((std::sync::Mutex::new((false, false)), std::sync::Condvar::new()));
    let journal = Gated {
        inner: journal::open(&db.url).unwrap(),
        gate: gate.clone(),
        fail: Default::default(),
    };
    let clock = credit_operator::clock::ManualClock::new(t("2026-11-26T10:00:00Z"));
    let ledger = Ledger::start(Box::new(journal), Arc::new(clock), LedgerOptions::default()).unwrap();
    let usage = |key: String| Command::RecordUsage {
        labels: Default::default(),
        account: ACCOUNT.into(),
        member: "u-alice".into(),
        charge: Charge::Credits(amt("1")),
        key,
        occurred_at: None,
    };
    for command in [
        Command::ApplyAccount {
            account: ACCOUNT.into(),
            settings: AccountSettings::new(amt("1000000"), "CalendarMonth", "UTC", amt("1"), amt("0"), "default")
                .unwrap(),
        },
        Command::ApplyGroup {
            account: ACCOUNT.into(),
            name: "default".into(),
            settings: GroupSettings::new(amt("1000000"), amt("0"), amt("0")).unwrap(),
        },
        Command::ApplyMember {
            account: ACCOUNT.into(),
            member: spec("alice", None, Some("1000000"), "0"),
        },
    ] {
        ledger.execute_blocking(command).unwrap();
    }
    // The disk stalls: the writer waits in a commit.
    let (lock, wake) = &*gate;
    lock.lock().unwrap().0 = true;
    let first = ledger.submit(usage("first".into()));
    let mut g = lock.lock().unwrap();
    while !g.1 {
        g = wake.wait(g).unwrap();
    }
    drop(g);
    // The queue takes QUEUE_DEPTH commands (besides the two batches the
    // writer may hold behind the stalled commit); the next is refused at
    // once, without waiting for room.
    use credit_operator::ledger::writer::MAX_BATCH;
    let mut queued = Vec::new();
    let started = std::time::Instant::now();
    let answer = loop {
        assert!(queued.len() <= QUEUE_DEPTH + 2 * MAX_BATCH, "the queue has no bound");
        let mut rx = ledger.submit(usage(format!("q{}", queued.len())));
        match rx.try_recv() {
            Ok(answer) => break answer,
            Err(_) => queued.push(rx),
        }
    };
    assert!(queued.len() >= QUEUE_DEPTH, "only {} queued", queued.len());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let refused_key = format!("q{}", queued.len());
    assert_eq!(answer, Err(LedgerError::Busy(QUEUE_DEPTH)));
    assert_eq!(LedgerError::Busy(QUEUE_DEPTH).code(), "busy");
    // The disk recovers: everything queued commits, the refused one left nothing.
    lock.lock().unwrap().0 = false;
    wake.notify_all();
    assert!(matches!(first.blocking_recv().unwrap(), Ok(Outcome::Usage(_))));
    let accepted = queued.len() + 1;
    for rx in queued {
        assert!(matches!(rx.blocking_recv().unwrap(), Ok(Outcome::Usage(ref r)) if !r.duplicate));
    }
    let used = |l: &Ledger| l.read().accounts[ACCOUNT].members.get("u-alice").unwrap().tally.used;
    assert_eq!(used(&ledger), amt(&accepted.to_string()));
    let Outcome::Usage(retry) = ledger.execute_blocking(usage(refused_key)).unwrap() else {
        panic!()
    };
    assert!(!retry.duplicate, "the refused command was never recorded");
    assert_eq!(used(&ledger), amt(&(accepted + 1).to_string()));
    ledger.shutdown();
}

#[test]
fn reads_never_show_credit_before_it_is_durable_nor_a_debit_after_its_commit_failed() {
    let db = sqlite_db();
    let gate = Arc::new((std::sync::Mutex::new((false, false)), std::sync::Condvar::new()));
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let journal = Gated {
        inner: journal::open(&db.url).unwrap(),
        gate: gate.clone(),
        fail: fail.clone(),
    };
    let clock = credit_operator::clock::ManualClock::new(t("2026-11-26T10:00:00Z"));
    let ledger = Ledger::start(Box::new(journal), Arc::new(clock), LedgerOptions::default()).unwrap();
    let alice = |monthly: &str| Command::ApplyMember {
        account: ACCOUNT.into(),
        member: spec("alice", None, Some(monthly), "0"),
    };
    for command in [
        Command::ApplyAccount {
            account: ACCOUNT.into(),
            settings: AccountSettings::new(amt("10000"), "CalendarMonth", "UTC", amt("1"), amt("0"), "default")
                .unwrap(),
        },
        Command::ApplyGroup {
            account: ACCOUNT.into(),
            name: "default".into(),
            settings: GroupSettings::new(amt("10000"), amt("0"), amt("0")).unwrap(),
        },
        alice("1000"),
    ] {
        ledger.execute_blocking(command).unwrap();
    }
    let usage = |credits: &str, key: &str| Command::RecordUsage {
        labels: Default::default(),
        account: ACCOUNT.into(),
        member: "u-alice".into(),
        charge: Charge::Credits(amt(credits)),
        key: key.into(),
        occurred_at: None,
    };
    // What a gateway and a status writer read: used and remaining.
    let look = |l: &Ledger| -> Result<(String, String), LedgerError> {
        let state = l.read();
        let acct = state.active_account(ACCOUNT)?;
        let m = numbers::member(acct, acct.members.get("u-alice").unwrap());
        Ok((m.used.to_string(), m.remaining.to_string()))
    };
    let figures = |used: &str, remaining: &str| Ok((used.to_string(), remaining.to_string()));
    assert_eq!(look(&ledger), figures("0", "1000"));
    let (lock, wake) = &*gate;
    // Runs `command` with its commit held at the gate while a reader looks;
    // answers what the reader saw meanwhile (None: it waited), the
    // command's answer, and what the reader saw once the commit returned.
    type Seen = Result<(String, String), LedgerError>;
    let stalled = |command: Command, failing: bool| -> (Option<Seen>, Result<Outcome, LedgerError>, Seen) {
        lock.lock().unwrap().0 = true;
        fail.store(failing, std::sync::atomic::Ordering::SeqCst);
        let pending = ledger.submit(command);
        let mut g = lock.lock().unwrap();
        while !g.1 {
            g = wake.wait(g).unwrap();
        }
        drop(g);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let ledger = ledger.clone();
            std::thread::spawn(move || tx.send(look(&ledger)).unwrap())
        };
        // Time for the reader to show what it would see mid-commit.
        let during = rx.recv_timeout(std::time::Duration::from_millis(300)).ok();
        lock.lock().unwrap().0 = false;
        wake.notify_all();
        let answer = pending.blocking_recv().unwrap();
        let after = match &during {
            Some(_) => look(&ledger),
            None => rx.recv().unwrap(),
        };
        reader.join().unwrap();
        (during, answer, after)
    };
    let healed = |l: &Ledger| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while l.outage().is_some() || l.read().stale.is_set() {
            assert!(std::time::Instant::now() < deadline, "the writer did not heal");
            std::thread::yield_now();
        }
    };

    // Credit: alice's allocation rises to 3000; no read shows it before it
    // is durable, and after a failed commit none ever does.
    let (during, answer, after) = stalled(alice("3000"), true);
    assert_eq!(during, None, "a read showed credit that was not durable yet");
    assert!(matches!(answer, Err(LedgerError::Storage(_))), "{answer:?}");
    assert!(
        matches!(after, Err(LedgerError::Storage(_))) || after == figures("0", "1000"),
        "a read after the failed commit showed its credit: {after:?}"
    );
    healed(&ledger);
    assert_eq!(look(&ledger), figures("0", "1000"));
    let (during, answer, after) = stalled(alice("3000"), false);
    assert_eq!(during, None, "a read showed credit that was not durable yet");
    assert!(answer.is_ok());
    assert_eq!(after, figures("0", "3000"));

    // A debit may be read a commit early (it errs on refusing), but once
    // its commit failed no read shows it.
    let (during, answer, after) = stalled(usage("500", "u1"), true);
    assert!(during.is_none() || during == Some(figures("500", "2500")), "{during:?}");
    assert!(matches!(answer, Err(LedgerError::Storage(_))), "{answer:?}");
    assert!(
        matches!(after, Err(LedgerError::Storage(_))) || after == figures("0", "3000"),
        "a read after the failed commit showed its usage: {after:?}"
    );
    healed(&ledger);
    assert_eq!(look(&ledger), figures("0", "3000"));
    let Outcome::Usage(retry) = ledger.execute_blocking(usage("500", "u1")).unwrap() else {
        panic!()
    };
    assert!(!retry.duplicate, "the failed batch left no key behind");
    assert_eq!(look(&ledger), figures("500", "2500"));
    ledger.shutdown();
}

#[test]
fn sqlite_snapshots_live_beside_the_journal_so_a_locked_snapshot_never_stalls_a_commit() {
    let db = sqlite_db();
    let path = db.url.strip_prefix("sqlite://").unwrap().to_string();
    let mut f = Fixture::with_options(
        &db,
        LedgerOptions {
            snapshot_every: 50,
            ..LedgerOptions::default()
        },
    );
    standard(&f);
    f.usage("u-alice", "1", "warm-up").unwrap();
    f.ledger.snapshot_blocking().unwrap();
    // Someone holds the snapshot file's write lock (a backup, a slow disk):
    // snapshots wait for it, commits do not.
    let snapshots = rusqlite::Connection::open(format!("{path}.snapshots")).unwrap();
    snapshots.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = std::time::Instant::now();
    for i in 0..300 {
        f.usage("u-bob", "0.5", &format!("locked-{i}")).unwrap();
    }
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(10),
        "300 commits took {took:?} behind a snapshot"
    );
    snapshots.execute_batch("ROLLBACK").unwrap();
    f.ledger.snapshot_blocking().unwrap();
    let live = f.state();
    let stored: i64 = snapshots
        .query_row("SELECT max(seq) FROM snapshots", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored as u64, live.last_seq);
    let journal = rusqlite::Connection::open(&path).unwrap();
    let in_journal: i64 = journal
        .query_row("SELECT count(*) FROM snapshots", [], |r| r.get(0))
        .unwrap();
    assert_eq!(in_journal, 0, "the journal's file holds no snapshot");
    f.restart();
    assert_eq!(f.state(), live);

    // A snapshot ahead of the journal (a journal restored from an older
    // backup) is ignored: the journal alone recovers.
    snapshots
        .execute_batch("UPDATE snapshots SET seq = seq + 1000; UPDATE snapshot_parts SET seq = seq + 1000;")
        .unwrap();
    f.restart();
    assert_eq!(f.state(), live);

    // A snapshot stored the old way, in the journal's own file, still
    // restores.
    drop(snapshots);
    std::fs::remove_file(format!("{path}.snapshots")).unwrap();
    // Its body is marked (a figure no replay gives) to show where the
    // restored state came from.
    let mut marked = live.clone();
    marked.accounts.get_mut(ACCOUNT).unwrap().used = amt("12345");
    let body = journal::encode_snapshot(&marked).unwrap();
    journal
        .execute(
            "INSERT INTO snapshots (seq, taken_at, body) VALUES (?1, 0, ?2)",
            rusqlite::params![live.last_seq as i64, body],
        )
        .unwrap();
    f.restart();
    assert_eq!(f.state(), marked);
}

#[test]
fn sqlite_a_snapshot_that_kept_closed_cycles_in_memory_hands_them_to_the_history_tables() {
    let db = sqlite_db();
    let path = db.url.strip_prefix("sqlite://").unwrap().to_string();
    let mut f = Fixture::new(&db);
    f.account("100000", "1d");
    f.group("default", "1000", "0", "0");
    f.group("data", "5000", "0", "0");
    f.member("alice", Some("data"), Some("1000"), "0");
    f.member("bob", Some("data"), Some("800"), "0");
    f.member("carol", None, Some("300"), "0");
    f.usage("u-alice", "100", "a1").unwrap();
    f.usage("u-bob", "50", "b1").unwrap();
    f.clock.advance(hours(25));
    f.ledger.catch_up_blocking(None).unwrap();
    f.usage("u-alice", "10", "a2").unwrap();
    f.member("bob", None, Some("900"), "0");
    f.clock.advance(hours(24));
    f.ledger.catch_up_blocking(None).unwrap();
    let expected = [f.closed(1), f.closed(2)];
    assert_eq!(expected[0].cycle.used, amt("150"));
    assert_eq!(expected[1].cycle.used, amt("10"));

    // The same ledger as an older version kept it: closed cycles and
    // member histories inside the snapshot, none in the history tables.
    let live = f.state();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut snapshot: serde_json::Value = serde_json::from_str(&journal::encode_snapshot(&live).unwrap()).unwrap();
    let account = &mut snapshot["accounts"][ACCOUNT];
    let cycles: Vec<serde_json::Value> = conn
        .prepare("SELECT body FROM closed_cycles ORDER BY number")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|b| serde_json::from_str(&b.unwrap()).unwrap())
        .collect();
    assert_eq!(cycles.len(), 2);
    account["closed"] = serde_json::Value::Array(cycles);
    let mut histories = 0;
    for member in account["members"].as_array_mut().unwrap() {
        let user_id = member["spec"]["user_id"].as_str().unwrap().to_string();
        let mut history = serde_json::Map::new();
        let mut rows = conn
            .prepare("SELECT first_cycle, body FROM member_cycles WHERE user_id = ?1")
            .unwrap();
        for row in rows
            .query_map([&user_id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .unwrap()
        {
            let (first, body) = row.unwrap();
            history.insert(first.to_string(), serde_json::from_str(&body).unwrap());
            histories += 1;
        }
        if !history.is_empty() {
            member["history"] = serde_json::Value::Object(history);
        }
    }
    assert_eq!(
        histories, 2,
        "alice (usage) and bob (a new spec) rolled into cycle 2; carol stayed quiet"
    );
    conn.execute_batch("DELETE FROM closed_cycles; DELETE FROM member_cycles;")
        .unwrap();
    std::fs::remove_file(format!("{path}.snapshots")).ok();
    conn.execute(
        "INSERT INTO snapshots (seq, taken_at, body) VALUES (?1, 0, ?2)",
        rusqlite::params![live.last_seq as i64, snapshot.to_string()],
    )
    .unwrap();
    f.restart();
    assert_eq!(f.state(), live, "the same state, without its history in memory");
    assert_eq!([f.closed(1), f.closed(2)], expected, "closed cycles read as before");
    let stored: i64 = conn
        .query_row("SELECT count(*) FROM member_cycles", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, histories, "every record is in the history tables again");
}
