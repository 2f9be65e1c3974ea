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

/// Terminates every connection the writer named `app` holds.
fn drop_connections(admin: &mut ::postgres::Client, app: &str) -> u64 {
    admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .expect("pg_terminate_backend")
        .len() as u64
}

#[test]
fn postgres_a_dropped_connection_is_reconnected_and_nothing_acknowledged_is_lost_or_doubled() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let Some(mut db) = postgres_db() else { return };
    let app = format!("credits-writer-{}", std::process::id());
    db.url.push_str(&format!("&application_name={app}"));
    let base = std::env::var(POSTGRES_ENV).unwrap();
    let mut admin = ::postgres::Client::connect(&base, ::postgres::NoTls).unwrap();
    let mut f = Fixture::new(&db);
    f.account("100000000", "CalendarMonth");
    f.group("default", "100000000", "0", "0");
    f.member("alice", None, Some("100000000"), "0");

    // A gateway sends 600 usages of 5 with unique keys and retries each,
    // with the same key, until it is acknowledged.
    const EVENTS: u64 = 600;
    let acked = Arc::new(AtomicU64::new(0));
    let gateway = {
        let (ledger, acked) = (f.ledger.clone(), acked.clone());
        std::thread::spawn(move || {
            let (mut refused, mut duplicates) = (0u64, 0u64);
            for i in 0..EVENTS {
                loop {
                    match ledger.execute_blocking(usage(&format!("k{i}"))) {
                        Ok(Outcome::Usage(r)) => {
                            duplicates += u64::from(r.duplicate);
                            break;
                        }
                        Err(LedgerError::Storage(e)) => {
                            refused += 1;
                            assert!(refused < 1000, "k{i} still refused after 1,000 tries: {e}");
                            std::thread::sleep(std::time::Duration::from_millis(2));
                        }
                        other => panic!("usage k{i}: {other:?}"),
                    }
                }
                acked.fetch_add(1, Ordering::SeqCst);
            }
            (refused, duplicates)
        })
    };
    // Three times while it streams, the writer's connection is killed.
    let mut terminated = 0;
    for round in 1..=3u64 {
        while acked.load(Ordering::SeqCst) < round * 150 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        terminated += drop_connections(&mut admin, &app);
    }
    let (refused, duplicates) = gateway.join().unwrap();
    eprintln!("{terminated} connections terminated, {refused} refusals retried, {duplicates} duplicate answers");
    assert!(
        terminated >= 3,
        "the writer's connection was terminated {terminated} times"
    );
    assert!(refused >= 1, "a write failed while the connection was gone");
    assert_eq!(f.ledger.fenced(), None, "a dropped connection is no fence");
    assert_eq!(f.ledger.outage(), None);
    // Every acknowledged event is in the journal exactly once.
    let used = |f: &Fixture| f.state().accounts[ACCOUNT].members.get("u-alice").unwrap().tally.used;
    assert_eq!(used(&f), amt("3000"));
    let schema_rows: i64 = {
        let mut c = ::postgres::Client::connect(&db.url, ::postgres::NoTls).unwrap();
        c.query_one("SELECT count(*) FROM journal WHERE idem_key LIKE 'k%'", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(schema_rows, EVENTS as i64);
    f.restart();
    assert_eq!(used(&f), amt("3000"), "the journal holds what was acknowledged");

    // A real fence: another writer takes a newer epoch while this one's
    // connection is gone. The reconnect finds it and stops writing.
    let newer = journal::open(&db.url).unwrap();
    drop_connections(&mut admin, &app);
    let err = loop {
        match f.run(usage("after-fence")) {
            Err(LedgerError::Storage(_)) => std::thread::sleep(std::time::Duration::from_millis(10)),
            other => break other.unwrap_err(),
        }
    };
    assert!(matches!(err, LedgerError::Fenced(e) if e == newer.epoch()), "{err}");
    assert_eq!(f.ledger.fenced(), Some(newer.epoch()));
    assert_eq!(used(&f), amt("3000"), "nothing half-applied");
}
