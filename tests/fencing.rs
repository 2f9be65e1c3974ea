//! One writer at a time: a newer writer's epoch fences the older one off.

mod support;

use std::sync::Arc;

use credit_operator::clock::ManualClock;
use credit_operator::ledger::journal::{self, JournalError};
use credit_operator::ledger::*;
use support::*;

fn usage(key: &str) -> Command {
    Command::RecordUsage {
        labels: Default::default(),
        account: ACCOUNT.into(),
        member: "u-alice".into(),
        charge: Charge::Credits(amt("5")),
        key: key.into(),
        occurred_at: None,
    }
}

on_both_backends! {
    fn the_older_epoch_has_its_batches_refused_and_stops_serving(db: &Db) {
        let old = Fixture::new(db);
        old.account("1000", "CalendarMonth");
        old.group("default", "1000", "0", "0");
        old.member("alice", None, Some("100"), "0");
        old.ok(usage("before"));

        // A second writer takes over (a new leader): the database hands out
        // the next epoch.
        let clock = ManualClock::new(t("2026-11-26T10:00:00Z"));
        let new = Ledger::open(&db.url, Arc::new(clock)).expect("second writer");
        assert_eq!(new.read().accounts[ACCOUNT].members.get("u-alice").unwrap().tally.used, amt("5"));

        let err = old.run(usage("after")).unwrap_err();
        assert!(matches!(err, LedgerError::Fenced(_)), "{err}");
        assert!(old.ledger.fenced().is_some(), "the deposed writer knows it");
        let err = old.run(usage("again")).unwrap_err();
        assert!(matches!(err, LedgerError::Fenced(_)), "and refuses everything after: {err}");
        assert_eq!(old.state().accounts[ACCOUNT].members.get("u-alice").unwrap().tally.used, amt("5"), "nothing half-applied");

        // The new writer goes on; the refused event never happened.
        let Outcome::Usage(r) = new.execute_blocking(usage("after")).unwrap() else { panic!() };
        assert_eq!((r.duplicate, r.member_used), (false, amt("10")));
        new.shutdown();
    }

    fn each_open_takes_a_newer_epoch(db: &Db) {
        let mut first = journal::open(&db.url).unwrap();
        let second = journal::open(&db.url).unwrap();
        assert_eq!(second.epoch(), first.epoch() + 1);
        match first.append(&[]) {
            Err(JournalError::Fenced { ours, stored }) => assert_eq!((ours, stored), (first.epoch(), second.epoch())),
            other => panic!("expected fencing, got {other:?}"),
        }
    }
}
