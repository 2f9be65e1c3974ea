//! The pure functions on every gateway request.

use std::hint::black_box;

use credit_operator::amount::Amount;
use credit_operator::cycle::{time_zone, Cadence, Schedule};
use credit_operator::ledger::*;
use criterion::{criterion_group, criterion_main, Criterion};
use jiff::Timestamp;

const ACCOUNT: &str = "bench/acme";

fn state_with_members(n: u64, now: Timestamp) -> State {
    let mut state = State::default();
    let mut out = Vec::new();
    let settings = AccountSettings::new(
        Amount::from_int(1_000_000_000),
        "CalendarMonth",
        "UTC",
        Amount::from_int(100),
        Amount::ZERO,
        "default",
    )
    .unwrap();
    state
        .handle(
            Command::ApplyAccount {
                account: ACCOUNT.into(),
                settings,
            },
            now,
            &mut out,
        )
        .unwrap();
    let settings = GroupSettings::new(Amount::from_int(1_000_000_000), Amount::ZERO, Amount::ZERO).unwrap();
    state
        .handle(
            Command::ApplyGroup {
                account: ACCOUNT.into(),
                name: "default".into(),
                settings,
            },
            now,
            &mut out,
        )
        .unwrap();
    for i in 0..n {
        let member = MemberSpec {
            name: format!("m{i}"),
            user_id: format!("u{i:07}"),
            email: format!("user{i}@example.com"),
            display_name: format!("User {i}"),
            group: None,
            monthly_credits: Some(Amount::from_int(1_000_000)),
            extra_credits: Amount::ZERO,
        };
        state
            .handle(
                Command::ApplyMember {
                    account: ACCOUNT.into(),
                    member,
                },
                now,
                &mut out,
            )
            .unwrap();
    }
    state
}

fn hot(c: &mut Criterion) {
    let now: Timestamp = "2026-11-26T10:00:00Z".parse().unwrap();
    let mut state = state_with_members(100_000, now);

    c.bench_function("amount_parse", |b| {
        b.iter(|| Amount::parse(black_box("1234.567890123")))
    });

    c.bench_function("authorize_100k_members", |b| {
        let acct = state.account(ACCOUNT).unwrap();
        let credits = Amount::parse("12.5").unwrap();
        let ids: Vec<String> = (0..4096u64).map(|i| format!("u{:07}", i * 24 % 100_000)).collect();
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % ids.len();
            numbers::authorize(acct, black_box(&ids[i]), credits)
        })
    });

    c.bench_function("record_usage_in_memory", |b| {
        let mut out = Vec::with_capacity(1);
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            out.clear();
            let cmd = Command::RecordUsage {
                labels: Default::default(),
                account: ACCOUNT.into(),
                member: format!("u{:07}", i % 100_000),
                charge: Charge::Credits(Amount::from_int(3)),
                key: format!("evt-{i:012}"),
                occurred_at: None,
            };
            state.handle(cmd, now, &mut out)
        })
    });

    let tz = time_zone("Europe/Berlin").unwrap();
    let wall = "2026-01-31T00:00".parse().unwrap();
    let schedule = Schedule::new(
        Cadence::CalendarMonth,
        "2026-01-30T23:00:00Z".parse().unwrap(),
        wall,
        tz,
    );
    c.bench_function("calendar_month_window", |b| {
        b.iter(|| schedule.window_at(black_box(now)))
    });
}

criterion_group!(benches, hot);
criterion_main!(benches);
