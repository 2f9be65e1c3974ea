//! Shared test fixtures: real SQLite files and real PostgreSQL schemas.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use credit_operator::amount::Amount;
use credit_operator::clock::ManualClock;
use credit_operator::ledger::writer::LedgerOptions;
use credit_operator::ledger::*;
use jiff::Timestamp;

pub mod apiserver;
pub mod cel_cases;
pub mod kube;

/// Environment variable naming the PostgreSQL server for tests.
pub const POSTGRES_ENV: &str = "CREDITS_TEST_POSTGRES_URL";

/// A place for a journal that lives as long as the test.
pub struct Db {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    /// `(server URL, schema)` to drop afterwards.
    schema: Option<(String, String)>,
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some((base, schema)) = &self.schema {
            if let Ok(mut client) = ::postgres::Client::connect(base, ::postgres::NoTls) {
                let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
            }
        }
    }
}

pub fn sqlite_db() -> Db {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("credits.db").display());
    Db {
        url,
        _dir: Some(dir),
        schema: None,
    }
}

/// A fresh schema in the test PostgreSQL database, or `None` (the test
/// prints that it was skipped) when `CREDITS_TEST_POSTGRES_URL` is unset.
pub fn postgres_db() -> Option<Db> {
    static N: AtomicU32 = AtomicU32::new(0);
    let Ok(base) = std::env::var(POSTGRES_ENV) else {
        eprintln!("skipped: {POSTGRES_ENV} is not set");
        return None;
    };
    let schema = format!(
        "t_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        Timestamp::now().as_millisecond()
    );
    let mut client = ::postgres::Client::connect(&base, ::postgres::NoTls).expect("connect to the test PostgreSQL");
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .expect("create schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    Some(Db {
        url,
        _dir: None,
        schema: Some((base, schema)),
    })
}

pub fn t(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

pub fn amt(s: &str) -> Amount {
    Amount::parse(s).expect("amount")
}

pub const ACCOUNT: &str = "team/acme";

/// A ledger on a real journal with a clock the test moves.
pub struct Fixture {
    pub ledger: Ledger,
    pub clock: ManualClock,
    pub url: String,
    options: LedgerOptions,
}

impl Fixture {
    pub fn new(db: &Db) -> Fixture {
        Fixture::with_options(db, LedgerOptions::default())
    }

    pub fn with_options(db: &Db, options: LedgerOptions) -> Fixture {
        let clock = ManualClock::new(t("2026-11-26T10:00:00Z"));
        let ledger = Ledger::open_with(&db.url, Arc::new(clock.clone()), options.clone()).expect("open ledger");
        Fixture {
            ledger,
            clock,
            url: db.url.clone(),
            options,
        }
    }

    /// Stops the writer and opens the journal again: a process restart.
    pub fn restart(&mut self) {
        let old = std::mem::replace(
            &mut self.ledger,
            Ledger::open_with(&self.url, Arc::new(self.clock.clone()), self.options.clone()).expect("reopen ledger"),
        );
        old.shutdown();
    }

    pub fn run(&self, command: Command) -> Result<Outcome, LedgerError> {
        self.ledger.execute_blocking(command)
    }

    pub fn ok(&self, command: Command) -> Outcome {
        let description = format!("{command:?}");
        self.run(command)
            .unwrap_or_else(|e| panic!("{description} failed: {e}"))
    }

    pub fn account(&self, limit: &str, cadence: &str) {
        self.account_with(limit, cadence, "UTC", "1", "0");
    }

    pub fn account_with(&self, limit: &str, cadence: &str, tz: &str, factor: &str, signup: &str) {
        let settings = AccountSettings::new(amt(limit), cadence, tz, amt(factor), amt(signup), "default").unwrap();
        self.ok(Command::ApplyAccount {
            account: ACCOUNT.into(),
            settings,
        });
    }

    pub fn group(&self, name: &str, monthly: &str, extra: &str, reserve: &str) {
        let settings = GroupSettings::new(amt(monthly), amt(extra), amt(reserve)).unwrap();
        self.ok(Command::ApplyGroup {
            account: ACCOUNT.into(),
            name: name.into(),
            settings,
        });
    }

    pub fn member(&self, user: &str, group: Option<&str>, monthly: Option<&str>, extra: &str) {
        self.ok(Command::ApplyMember {
            account: ACCOUNT.into(),
            member: spec(user, group, monthly, extra),
        });
    }

    pub fn usage(&self, user: &str, credits: &str, key: &str) -> Result<UsageReceipt, LedgerError> {
        match self.run(Command::RecordUsage {
            labels: Default::default(),
            account: ACCOUNT.into(),
            member: user.into(),
            charge: Charge::Credits(amt(credits)),
            key: key.into(),
            occurred_at: None,
        })? {
            Outcome::Usage(r) => Ok(r),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn submit(&self, uid: &str, member: &str, credits: &str) -> RequestView {
        match self.ok(Command::SubmitRequest {
            account: ACCOUNT.into(),
            uid: uid.into(),
            name: uid.into(),
            member: member.into(),
            credits: amt(credits),
            reason: "more experiments".into(),
        }) {
            Outcome::Request(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn decide(&self, uid: &str, verdict: Verdict) -> Result<RequestView, LedgerError> {
        match self.run(Command::DecideRequest {
            account: ACCOUNT.into(),
            uid: uid.into(),
            verdict,
            reason: String::new(),
            by: "admin@example.com".into(),
        })? {
            Outcome::Request(r) => Ok(r),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn member_figures(&self, user: &str) -> numbers::MemberFigures {
        let state = self.ledger.read();
        let acct = state.account(ACCOUNT).expect("account");
        numbers::member(acct, acct.members.get(user).unwrap())
    }

    pub fn group_figures(&self, name: &str) -> numbers::GroupFigures {
        let state = self.ledger.read();
        let acct = state.account(ACCOUNT).expect("account");
        numbers::group(acct, &acct.groups[name])
    }

    pub fn account_figures(&self) -> numbers::AccountFigures {
        let state = self.ledger.read();
        let acct = state.account(ACCOUNT).expect("account");
        numbers::account(acct)
    }

    pub fn state(&self) -> State {
        self.ledger.read().clone()
    }

    /// A closed cycle, read back from the ledger's history.
    pub fn closed(&self, cycle: u64) -> credit_operator::ledger::history::ClosedView {
        self.ledger
            .closed_blocking(ACCOUNT, cycle)
            .expect("the history reads")
            .unwrap_or_else(|| panic!("cycle {cycle} is closed"))
    }
}

/// A member named after its user id (`alice` → object `alice`, id `u-alice`).
pub fn spec(user: &str, group: Option<&str>, monthly: Option<&str>, extra: &str) -> MemberSpec {
    MemberSpec {
        name: user.into(),
        user_id: format!("u-{user}"),
        email: format!("{user}@example.com"),
        display_name: user.to_string(),
        group: group.map(str::to_string),
        monthly_credits: monthly.map(amt),
        extra_credits: amt(extra),
    }
}

/// Runs a test body once per backend: `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($(#[$meta:meta])* fn $name:ident($db:ident: &Db) $body:block)*) => {
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            $( $(#[$meta])* #[test] fn $name() { let $db = &support::sqlite_db(); $body } )*
        }
        mod postgres {
            #[allow(unused_imports)]
            use super::*;
            $( $(#[$meta])* #[test] fn $name() { let Some(db) = support::postgres_db() else { return }; let $db = &db; $body } )*
        }
    };
}
