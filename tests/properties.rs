//! Properties that must hold for any input: cycle boundaries, the
//! identities between the numbers, and deterministic replay.

use credit_operator::amount::Amount;
use credit_operator::cycle::{time_zone, Cadence, Schedule};
use credit_operator::ledger::*;
use credit_operator::ledger::{journal, numbers};
use jiff::civil::DateTime;
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

const ZONES: &[&str] = &[
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/Santiago",
];

fn schedule_strategy() -> impl Strategy<Value = (Schedule, Timestamp)> {
    (
        prop_oneof![Just(None), (1i64..=60 * 24 * 40).prop_map(Some)],
        0usize..ZONES.len(),
        2000i16..2090,
        1i8..=12,
        1i8..=31,
        0i8..24,
        0i8..60,
        0i64..(86_400 * 365 * 8),
    )
        .prop_map(|(minutes, zone, year, month, day, hour, minute, offset)| {
            let tz = time_zone(ZONES[zone]).unwrap();
            let day = day.min(jiff::civil::date(year, month, 1).days_in_month());
            let wall = DateTime::new(year, month, day, hour, minute, 0, 0).unwrap();
            let anchor = tz.to_ambiguous_timestamp(wall).compatible().unwrap();
            let cadence = match minutes {
                None => Cadence::CalendarMonth,
                Some(m) => Cadence::Every { seconds: m * 60 },
            };
            let probe = anchor + SignedDuration::from_secs(offset);
            (Schedule::new(cadence, anchor, wall, tz), probe)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn cycle_boundaries_strictly_increase((schedule, _) in schedule_strategy(), k in -30i64..120) {
        let (a, b) = (schedule.boundary(k).unwrap(), schedule.boundary(k + 1).unwrap());
        prop_assert!(a < b, "boundary {k} = {a} is not before boundary {} = {b}", k + 1);
    }

    #[test]
    fn every_instant_lies_in_exactly_one_cycle((schedule, probe) in schedule_strategy()) {
        let k = schedule.index_at(probe);
        let (start, end) = (schedule.boundary(k).unwrap(), schedule.boundary(k + 1).unwrap());
        prop_assert!(start <= probe && probe < end, "{probe} not in [{start}, {end})");
        prop_assert_eq!(schedule.window_at(probe), (start, end));
        // The neighbouring cycles do not contain it.
        prop_assert!(schedule.boundary(k - 1).unwrap() < start);
        prop_assert!(schedule.boundary(k + 2).unwrap() > end);
    }
}

#[test]
fn month_boundaries_land_on_29_february_in_leap_years_only() {
    let tz = time_zone("UTC").unwrap();
    let wall: DateTime = "2027-01-29T08:00".parse().unwrap();
    let s = Schedule::new(
        Cadence::CalendarMonth,
        tz.to_ambiguous_timestamp(wall).compatible().unwrap(),
        wall,
        tz,
    );
    assert_eq!(
        s.boundary(1).unwrap(),
        "2027-02-28T08:00Z".parse::<Timestamp>().unwrap()
    );
    assert_eq!(
        s.boundary(13).unwrap(),
        "2028-02-29T08:00Z".parse::<Timestamp>().unwrap()
    );
    assert_eq!(
        s.boundary(14).unwrap(),
        "2028-03-29T08:00Z".parse::<Timestamp>().unwrap()
    );
}

/// One step of a random scenario.
#[derive(Debug, Clone)]
enum Step {
    Group(usize, u32, u32, u32),
    RemoveGroup(usize),
    Member(usize, Option<usize>, Option<u32>, u32),
    RemoveMember(usize),
    Usage(usize, u32, u32),
    Request(usize, u32),
    Decide(u32, Option<u32>),
    Hold(usize, u32),
    Settle(u32, u32),
    Release(u32),
    Advance(u32),
    Reset,
    Limit(u32),
    /// Usage just under the per-event ceiling.
    BigUsage(usize, u32),
    /// A request at the input cap, approved in full by `Decide(_, None)`
    /// being a denial, so by `ApproveAll`.
    BigRequest(usize),
    ApproveAll(u32),
    /// A member object whose name is reused for another user id.
    Reuse(usize, usize),
    RemoveId(usize),
}

const GROUPS: &[&str] = &["default", "ml", "infra", "ghost"];
const USERS: &[&str] = &["ann", "ben", "cat", "dan", "eve"];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0..3usize, 0..5000u32, 0..500u32, 0..300u32).prop_map(|(g, m, e, r)| Step::Group(g, m, e, r)),
        1 => (0..3usize).prop_map(Step::RemoveGroup),
        3 => (0..5usize, proptest::option::of(0..4usize), proptest::option::of(0..2000u32), 0..200u32)
            .prop_map(|(u, g, m, e)| Step::Member(u, g, m, e)),
        1 => (0..5usize).prop_map(Step::RemoveMember),
        4 => (0..5usize, 0..100_000u32, 0..40u32).prop_map(|(u, c, k)| Step::Usage(u, c, k)),
        1 => (0..5usize, 1..400u32).prop_map(|(u, c)| Step::Request(u, c)),
        1 => (0..20u32, proptest::option::of(0..400u32)).prop_map(|(r, c)| Step::Decide(r, c)),
        1 => (0..5usize, 0..500u32).prop_map(|(u, c)| Step::Hold(u, c)),
        1 => (0..20u32, 0..500u32).prop_map(|(h, c)| Step::Settle(h, c)),
        1 => (0..20u32).prop_map(Step::Release),
        1 => (1..200_000u32).prop_map(Step::Advance),
        1 => Just(Step::Reset),
        1 => (0..20_000u32).prop_map(Step::Limit),
        1 => (0..5usize, 0..1000u32).prop_map(|(u, k)| Step::BigUsage(u, k)),
        1 => (0..5usize).prop_map(Step::BigRequest),
        1 => (0..20u32).prop_map(Step::ApproveAll),
        2 => (0..5usize, 0..3usize).prop_map(|(u, v)| Step::Reuse(u, v)),
        1 => (0..3usize).prop_map(Step::RemoveId),
    ]
}

fn amount_cents(c: u32) -> Amount {
    Amount::from_decimal(rust_decimal::Decimal::new(i64::from(c), 2))
}

const ACCOUNT: &str = "ns/acct";

fn command(step: &Step, now: &mut Timestamp, seq: u64) -> Option<Command> {
    let account = ACCOUNT.to_string();
    Some(match step.clone() {
        Step::Group(g, m, e, r) => Command::ApplyGroup {
            account,
            name: GROUPS[g].into(),
            settings: GroupSettings::new(
                Amount::from_int(m.into()),
                Amount::from_int(e.into()),
                Amount::from_int(r.into()),
            )
            .unwrap(),
        },
        Step::RemoveGroup(g) => Command::RemoveGroup {
            account,
            name: GROUPS[g].into(),
        },
        Step::Member(u, g, m, e) => Command::ApplyMember {
            account,
            member: MemberSpec {
                name: USERS[u].into(),
                user_id: format!("id-{}", USERS[u]),
                email: format!("{}@x.io", USERS[u]),
                display_name: USERS[u].into(),
                group: g.map(|g| GROUPS[g].to_string()),
                monthly_credits: m.map(|m| Amount::from_int(m.into())),
                extra_credits: Amount::from_int(e.into()),
            },
        },
        Step::RemoveMember(u) => Command::RemoveMember {
            account,
            user_id: format!("id-{}", USERS[u]),
        },
        Step::Usage(u, c, k) => Command::RecordUsage {
            // Some usage names a model and a provider, so cost sums are in
            // every state these properties reach.
            labels: credit_operator::ledger::Labels {
                model: (k % 3 != 0).then(|| ["gpt-4o", "claude-3.5-sonnet"][(k % 2) as usize].to_string()),
                provider: (k % 4 == 1).then(|| "openai".to_string()),
                tags: Default::default(),
            },
            account,
            member: format!("id-{}", USERS[u]),
            charge: Charge::Credits(amount_cents(c)),
            key: format!("k{k}"),
            occurred_at: None,
        },
        Step::Request(u, c) => Command::SubmitRequest {
            account,
            uid: format!("req-{seq}"),
            name: format!("req-{seq}"),
            member: USERS[u].into(),
            credits: Amount::from_int(c.into()),
            reason: String::new(),
        },
        Step::Decide(r, c) => Command::DecideRequest {
            account,
            uid: format!("req-{r}"),
            verdict: match c {
                Some(c) => Verdict::Approve {
                    credits: Some(Amount::from_int(c.into())),
                },
                None => Verdict::Deny,
            },
            reason: String::new(),
            by: "admin".into(),
        },
        Step::Hold(u, c) => Command::OpenHold {
            account,
            member: format!("id-{}", USERS[u]),
            charge: Charge::Credits(Amount::from_int(c.into())),
            ttl_seconds: 3600,
            key: format!("hold-key-{seq}"),
        },
        Step::Settle(h, c) => Command::SettleHold {
            labels: Default::default(),
            account,
            id: format!("hold-{h}"),
            charge: Charge::Credits(Amount::from_int(c.into())),
        },
        Step::Release(h) => Command::ReleaseHold {
            account,
            id: format!("hold-{h}"),
        },
        Step::Advance(secs) => {
            *now += SignedDuration::from_secs(i64::from(secs));
            Command::Tick { account: None }
        }
        Step::Reset => Command::Reset { account, mark: None },
        Step::BigUsage(u, k) => Command::RecordUsage {
            labels: Default::default(),
            account,
            member: format!("id-{}", USERS[u]),
            charge: Charge::Credits(Amount::from_int(1_000_000_000_000 - i64::from(k))),
            key: format!("big-{k}"),
            occurred_at: None,
        },
        Step::BigRequest(u) => Command::SubmitRequest {
            account,
            uid: format!("req-{seq}"),
            name: format!("req-{seq}"),
            member: USERS[u].into(),
            credits: Amount::parse("999999999999999999").unwrap(),
            reason: String::new(),
        },
        Step::ApproveAll(r) => Command::DecideRequest {
            account,
            uid: format!("req-{r}"),
            verdict: Verdict::Approve { credits: None },
            reason: String::new(),
            by: "admin".into(),
        },
        Step::Reuse(u, v) => Command::ApplyMember {
            account,
            member: MemberSpec {
                name: USERS[u].into(),
                user_id: format!("uid-{v}"),
                email: format!("{}-{v}@x.io", USERS[u]),
                display_name: USERS[u].into(),
                group: None,
                monthly_credits: None,
                extra_credits: Amount::from_int(v as i64),
            },
        },
        Step::RemoveId(v) => Command::RemoveMember {
            account,
            user_id: format!("uid-{v}"),
        },
        Step::Limit(l) => Command::ApplyAccount {
            account,
            settings: AccountSettings::new(
                Amount::from_int(l.into()),
                "1w",
                "UTC",
                Amount::from_int(1),
                Amount::from_int(25),
                "default",
            )
            .unwrap(),
        },
    })
}

fn check_identities(state: &State) -> Result<(), TestCaseError> {
    let acct = &state.accounts[ACCOUNT];
    let cycle = acct.cycle.number;
    let mut total_used = Amount::ZERO;
    let mut total_held = Amount::ZERO;
    for m in acct.members.values() {
        let f = numbers::member(acct, m);
        prop_assert_eq!(f.allocation, f.monthly + f.extra + f.granted);
        prop_assert_eq!(f.remaining, f.allocation - f.used);
        total_used += f.used;
        total_held += m.held;
    }
    prop_assert_eq!(acct.used, total_used, "account used = Σ members used");
    // Every cost breakdown covers the cycle's spending exactly once.
    use credit_operator::ledger::costs::{breakdown, CostDimension};
    for by in [CostDimension::Model, CostDimension::Provider, CostDimension::Member] {
        let credit_operator::ledger::costs::Breakdown { items, total, .. } = breakdown(acct, by);
        prop_assert_eq!(total.credits, acct.used);
        prop_assert_eq!(
            items.iter().map(|i| i.sum.credits).sum::<Amount>(),
            total.credits,
            "{:?} credits",
            by
        );
        prop_assert_eq!(
            items.iter().map(|i| i.sum.events).sum::<u64>(),
            total.events,
            "{:?} events",
            by
        );
    }
    for g in acct.groups.values().filter(|g| g.active) {
        let spent = g.tally.at(cycle).spent();
        let members: Vec<_> = numbers::members_of(acct, &g.name)
            .map(|m| m.tally.at(cycle).spent())
            .collect();
        prop_assert_eq!(
            spent.events,
            members.iter().map(|s| s.events).sum::<u64>(),
            "group {} events",
            g.name
        );
    }
    prop_assert_eq!(acct.held, total_held, "account held = Σ members held");
    let open: Amount = acct
        .holds
        .values()
        .filter(|h| h.state == HoldState::Open)
        .map(|h| h.credits)
        .sum();
    prop_assert_eq!(acct.held, open, "held = Σ open holds");
    for g in acct.groups.values().filter(|g| g.active) {
        let f = numbers::group(acct, g);
        let members: Vec<_> = numbers::members_of(acct, &g.name)
            .map(|m| numbers::member(acct, m))
            .collect();
        prop_assert_eq!(f.budget, f.monthly + f.extra);
        prop_assert_eq!(
            f.distributed,
            members.iter().map(|m| m.monthly + m.extra).sum::<Amount>()
        );
        prop_assert_eq!(f.available, f.budget - f.distributed);
        prop_assert_eq!(
            f.used,
            members.iter().map(|m| m.used).sum::<Amount>(),
            "group {} used",
            g.name
        );
        prop_assert_eq!(
            f.granted,
            members.iter().map(|m| m.granted).sum::<Amount>(),
            "group {} granted",
            g.name
        );
        prop_assert_eq!(
            g.held,
            numbers::members_of(acct, &g.name).map(|m| m.held).sum::<Amount>()
        );
        prop_assert!(!f.auto_approve_remaining.is_negative());
        prop_assert_eq!(f.members as usize, members.len());
    }
    let a = numbers::account(acct);
    prop_assert_eq!(a.balance, a.credits_per_cycle - a.used);
    prop_assert_eq!(a.unallocated, a.credits_per_cycle - a.allocated);
    prop_assert_eq!(
        a.allocated,
        acct.groups
            .values()
            .filter(|g| g.active)
            .map(|g| g.settings.budget())
            .sum::<Amount>()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_numbers_keep_their_identities_and_replay_reproduces_the_state(steps in proptest::collection::vec(step(), 1..80)) {
        let mut now: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        let mut state = State::default();
        let mut journal = Vec::new();
        let settings = AccountSettings::new(Amount::from_int(10_000), "1w", "UTC", Amount::from_int(1), Amount::from_int(25), "default").unwrap();
        state.handle(Command::ApplyAccount { account: ACCOUNT.into(), settings }, now, &mut journal).unwrap();
        for s in &steps {
            let Some(cmd) = command(s, &mut now, state.last_seq) else { continue };
            let before = state.clone();
            let mut out = Vec::new();
            let result = state.handle(cmd, now, &mut out);
            if result.is_err() {
                // A refusal emits no event of its own (due boundaries aside).
                prop_assert!(out.iter().all(|e| matches!(e.event, Event::CycleStarted { .. } | Event::HoldExpired { .. })), "{:?}", out);
                if out.is_empty() {
                    prop_assert_eq!(&state, &before);
                }
            }
            journal.extend(out);
            check_identities(&state)?;
        }
        let mut replayed = State::default();
        for entry in &journal {
            replayed.apply(entry);
        }
        prop_assert_eq!(&replayed, &state);
        // A snapshot restores exactly the state it was taken of, totals
        // past 18 digits and reused names included.
        let body = journal::encode_snapshot(&state).unwrap();
        let snapshot = journal::decode_snapshot(state.last_seq, &body).unwrap();
        prop_assert_eq!(&snapshot, &state);
    }
}
