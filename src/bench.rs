//! `credit-operator bench`: measures the ledger's hot path on this machine
//! and prints one JSON line per backend.
//!
//! Every figure is measured in the same run as its baseline: durable
//! ingest through group commit against the same events committed one
//! transaction each, authorize in-process and over loopback HTTP, a reset
//! of 1,000,000 members, and memory per million members.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::amount::Amount;
use crate::api::{self, AppState, Metrics};
use crate::clock::SystemClock;
use crate::ledger::writer::LedgerOptions;
use crate::ledger::{AccountSettings, Charge, Command, GroupSettings, Ledger, LedgerError, MemberSpec, Outcome};

/// `credit-operator bench`: what to measure, from the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// `sqlite`, `postgres` or `all`.
    #[arg(long, default_value = "sqlite")]
    pub backend: String,
    /// PostgreSQL server for `--backend postgres` (a fresh schema is
    /// created and dropped).
    #[arg(
        long,
        env = "CREDITS_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub postgres_url: String,
    /// Usage events ingested through group commit (time-ordered keys).
    #[arg(long, default_value = "200000")]
    pub events: u64,
    /// Events committed one transaction each (the baseline).
    #[arg(long, default_value = "3000")]
    pub naive_events: u64,
    /// Members during ingest and authorize.
    #[arg(long, default_value = "100000")]
    pub members: u64,
    /// Members at the reset and memory measurement.
    #[arg(long, default_value = "1000000")]
    pub reset_members: u64,
    /// Seconds of HTTP load.
    #[arg(long, default_value = "5")]
    pub http_seconds: f64,
    /// Keep-alive HTTP connections.
    #[arg(long, default_value = "16")]
    pub http_connections: usize,
    /// Unique-key events measured after the in-memory key window is full.
    #[arg(long, default_value = "1000000")]
    pub key_events: u64,
    /// Events with random (UUIDv4-like) keys, against time-ordered ones.
    #[arg(long, default_value = "200000")]
    pub random_key_events: u64,
}

/// Runs the bench on each backend asked for and prints a line each.
pub fn main(args: BenchArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let backends: Vec<&'static str> = match args.backend.as_str() {
        "all" => vec!["sqlite", "postgres"],
        "sqlite" => vec!["sqlite"],
        "postgres" => vec!["postgres"],
        other => {
            eprintln!("error: --backend must be sqlite, postgres or all, not {other:?}");
            return ExitCode::from(2);
        }
    };
    for backend in backends {
        match on_backend(backend, &args) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {backend} bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// One backend's run on a fresh journal: a temporary SQLite file, or a
/// schema of its own on the PostgreSQL server (dropped afterwards).
fn on_backend(backend: &'static str, args: &BenchArgs) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("credits-bench-{}", std::process::id()));
    let mut schema = None;
    let postgres_url = &args.postgres_url;
    let ledger_url = if backend == "sqlite" {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        format!("sqlite://{}", dir.join("bench.db").display())
    } else {
        let name = format!("bench_{}", std::process::id());
        let mut client = postgres::Client::connect(postgres_url, postgres::NoTls).map_err(|e| e.to_string())?;
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"))
            .map_err(|e| e.to_string())?;
        schema = Some(name.clone());
        let sep = if postgres_url.contains('?') { '&' } else { '?' };
        format!("{postgres_url}{sep}options=-c%20search_path%3D{name}")
    };
    let options = BenchOptions {
        ledger_url,
        backend,
        events: args.events,
        naive_events: args.naive_events,
        members: args.members,
        reset_members: args.reset_members.max(args.members),
        authorize_calls: 1_000_000,
        http_seconds: args.http_seconds,
        http_connections: args.http_connections,
        key_events: args.key_events,
        random_key_events: args.random_key_events,
    };
    let result = run(&options).map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(name) = schema {
        if let Ok(mut client) = postgres::Client::connect(postgres_url, postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
        }
    }
    let report = result?;
    serde_json::to_string(&report).map_err(|e| e.to_string())
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// `sqlite://PATH` or `postgres://…` of an empty journal.
    pub ledger_url: String,
    pub backend: &'static str,
    pub events: u64,
    pub naive_events: u64,
    pub members: u64,
    pub reset_members: u64,
    pub authorize_calls: u64,
    pub http_seconds: f64,
    pub http_connections: usize,
    /// Unique-key events after an account's key window is full.
    pub key_events: u64,
    /// Events with random keys.
    pub random_key_events: u64,
}

/// One line of results.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub backend: &'static str,
    pub events: u64,
    pub events_per_sec: u64,
    /// Resident memory once the ingest is durable, and how much it grew
    /// during the ingest (the members were enrolled before).
    pub rss_mib_after_ingest: f64,
    pub rss_mib_ingest_growth: f64,
    /// The journal on disk once the ingest is durable.
    pub journal_mib_after_ingest: f64,
    pub naive_events: u64,
    pub naive_events_per_sec: u64,
    pub ratio: f64,
    pub mean_batch_size: f64,
    pub authorize_p50_us: f64,
    pub authorize_p99_us: f64,
    /// Authorize while a stream of usage commits: a read waits for the
    /// commit in flight, so this shows what reading only durable figures
    /// costs (the baseline is the line above, in the same run).
    pub authorize_under_ingest_p50_us: f64,
    pub authorize_under_ingest_p99_us: f64,
    /// The slowest of them: about one commit.
    pub authorize_under_ingest_max_us: f64,
    pub http_requests: u64,
    pub http_rps: u64,
    pub http_p50_us: f64,
    pub http_p99_us: f64,
    pub reset_members: u64,
    pub reset_ms: f64,
    /// A snapshot at a million members: all of it, and the writer's pause.
    pub snapshot_ms: f64,
    pub snapshot_stall_ms: f64,
    /// The snapshot's size per million members (it holds no closed cycle,
    /// no closed hold past the window and no key past the window).
    pub snapshot_mib_per_million_members: f64,
    pub rss_mib_per_million_members: f64,
    /// Unique-key events ingested on an account whose in-memory key
    /// window was already full, and how fast.
    pub key_events: u64,
    pub key_events_per_sec: u64,
    /// RSS growth per million of those events: what keys cost once they
    /// have left memory for the filters (target at most 10).
    pub idempotency_mib_per_million_events_past_window: f64,
    /// The baseline in the same run: RSS growth per million events while
    /// the window fills, which is what every key kept whole would cost.
    pub idempotency_mib_per_million_events_in_window: f64,
    /// What the filters hold per million keys that left memory.
    pub idempotency_filter_mib_per_million_keys: f64,
    /// The same ingest with random keys (UUIDv4-like) instead of
    /// time-ordered ones: every event then writes a page of the unique
    /// index somewhere else.
    pub random_key_events: u64,
    pub random_key_events_per_sec: u64,
    /// Share of the ingest time the writer spent in journal commits.
    pub commit_share: f64,
}

/// A small deterministic generator: the same events every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const ACCOUNT: &str = "bench/acme";

fn member(i: u64) -> MemberSpec {
    MemberSpec {
        name: format!("m{i}"),
        user_id: format!("u{i:07}"),
        email: format!("user{i}@example.com"),
        display_name: format!("User {i}"),
        group: Some(format!("g{}", i % 20)),
        monthly_credits: Some(Amount::from_int(1_000_000)),
        extra_credits: Amount::ZERO,
    }
}

/// A realistic charge: 0.001 to 50 credits with three decimals.
fn charge(rng: &mut XorShift) -> Charge {
    let milli = rng.next() % 50_000 + 1;
    Charge::Credits(Amount::from_decimal(rust_decimal::Decimal::new(milli as i64, 3)))
}

/// The journal's size on disk: the SQLite file with its WAL, or the
/// PostgreSQL tables of the bench's schema with their indexes.
fn journal_size(url: &str) -> u64 {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let size = |p: &str| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        return size(path) + size(&format!("{path}-wal"));
    }
    let Ok(mut client) = postgres::Client::connect(url, postgres::NoTls) else {
        return 0;
    };
    client
        .query_one(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relkind = 'r'",
            &[],
        )
        .map(|r| r.get::<_, i64>(0).max(0) as u64)
        .unwrap_or(0)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Submits commands with many in flight (the way concurrent gateways
/// load the writer) and waits for every durable answer.
fn pipeline(ledger: &Ledger, commands: impl Iterator<Item = Command>) -> Result<(), LedgerError> {
    let mut in_flight = std::collections::VecDeque::new();
    for command in commands {
        in_flight.push_back(ledger.submit(command));
        if in_flight.len() >= 16_384 {
            if let Some(rx) = in_flight.pop_front() {
                rx.blocking_recv().map_err(|_| LedgerError::ShuttingDown)??;
            }
        }
    }
    for rx in in_flight {
        rx.blocking_recv().map_err(|_| LedgerError::ShuttingDown)??;
    }
    Ok(())
}

fn enrol(ledger: &Ledger, from: u64, to: u64) -> Result<(), LedgerError> {
    pipeline(
        ledger,
        (from..to).map(|i| Command::ApplyMember {
            account: ACCOUNT.into(),
            member: member(i),
        }),
    )
}

/// Bytes in MiB, one decimal.
fn mib(bytes: u64) -> f64 {
    (bytes as f64 / 1_048_576.0 * 10.0).round() / 10.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    (sorted[idx] * 100.0).round() / 100.0
}

/// Runs every measurement on an empty journal.
pub fn run(options: &BenchOptions) -> Result<BenchReport, LedgerError> {
    // Snapshots are measured on their own below, not left to fall into
    // the middle of another measurement.
    let ledger_options = LedgerOptions {
        snapshot_every: u64::MAX,
        ..LedgerOptions::default()
    };
    let ledger = Ledger::open_with(&options.ledger_url, Arc::new(SystemClock), ledger_options)?;
    let settings = AccountSettings::new(
        Amount::from_int(1_000_000_000_000),
        "CalendarMonth",
        "UTC",
        Amount::from_int(100),
        Amount::ZERO,
        "default",
    )?;
    ledger.execute_blocking(Command::ApplyAccount {
        account: ACCOUNT.into(),
        settings,
    })?;
    for g in 0..20 {
        let settings = GroupSettings::new(Amount::from_int(100_000_000_000), Amount::ZERO, Amount::ZERO)?;
        ledger.execute_blocking(Command::ApplyGroup {
            account: ACCOUNT.into(),
            name: format!("g{g}"),
            settings,
        })?;
    }
    enrol(&ledger, 0, options.members)?;

    // Durable ingest through group commit: time-ordered keys. The events
    // are made as they are sent, as a gateway makes its requests (the
    // clock counts that work too), so memory holds none in advance.
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let rss_before_ingest = rss_bytes();
    let before = ledger.stats();
    let started = Instant::now();
    let members = options.members;
    pipeline(
        &ledger,
        (0..options.events).map(|i| Command::RecordUsage {
            labels: Default::default(),
            account: ACCOUNT.into(),
            member: format!("u{:07}", rng.next() % members),
            charge: charge(&mut rng),
            key: format!("evt-{i:012}"),
            occurred_at: None,
        }),
    )?;
    let ingest = started.elapsed();
    let after = ledger.stats();
    let rss_after_ingest = rss_bytes();
    let journal_bytes = journal_size(&options.ledger_url);
    let batches = (after.batches - before.batches).max(1);
    let mean_batch_size = ((after.entries - before.entries) as f64 / batches as f64 * 10.0).round() / 10.0;
    let commit_micros = (after.total_commit_micros - before.total_commit_micros) as f64;
    let commit_share = (commit_micros / ingest.as_micros().max(1) as f64 * 100.0).round() / 100.0;
    let events_per_sec = (options.events as f64 / ingest.as_secs_f64()) as u64;

    // The same kind of events, one transaction each.
    let started = Instant::now();
    for i in 0..options.naive_events {
        ledger.execute_blocking(Command::RecordUsage {
            labels: Default::default(),
            account: ACCOUNT.into(),
            member: format!("u{:07}", rng.next() % options.members),
            charge: charge(&mut rng),
            key: format!("naive-{i:012}"),
            occurred_at: None,
        })?;
    }
    let naive_events_per_sec = (options.naive_events as f64 / started.elapsed().as_secs_f64()) as u64;

    // Authorize in memory.
    let mut samples = Vec::with_capacity(options.authorize_calls as usize);
    let ids: Vec<String> = (0..4096)
        .map(|_| format!("u{:07}", rng.next() % options.members))
        .collect();
    for i in 0..options.authorize_calls as usize {
        let c = charge(&mut rng);
        let t = Instant::now();
        let a = ledger.authorize(ACCOUNT, &ids[i % ids.len()], c)?;
        samples.push(t.elapsed().as_nanos() as f64 / 1000.0);
        std::hint::black_box(a);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let (authorize_p50_us, authorize_p99_us) = (percentile(&samples, 0.5), percentile(&samples, 0.99));

    // Authorize again while a quarter of the ingest runs beside it.
    let stream: Vec<Command> = (0..(options.events / 4).max(1))
        .map(|i| Command::RecordUsage {
            labels: Default::default(),
            account: ACCOUNT.into(),
            member: format!("u{:07}", rng.next() % options.members),
            charge: charge(&mut rng),
            key: format!("beside-{i:012}"),
            occurred_at: None,
        })
        .collect();
    let writer = {
        let ledger = ledger.clone();
        std::thread::spawn(move || pipeline(&ledger, stream.into_iter()))
    };
    let mut samples = Vec::with_capacity(options.authorize_calls as usize);
    let mut i = 0usize;
    while !writer.is_finished() && samples.len() < options.authorize_calls as usize {
        let c = charge(&mut rng);
        let t = Instant::now();
        let a = ledger.authorize(ACCOUNT, &ids[i % ids.len()], c)?;
        samples.push(t.elapsed().as_nanos() as f64 / 1000.0);
        std::hint::black_box(a);
        i += 1;
    }
    writer
        .join()
        .map_err(|_| LedgerError::Storage("the ingest thread panicked".into()))??;
    samples.sort_by(|a, b| a.total_cmp(b));
    let (authorize_under_ingest_p50_us, authorize_under_ingest_p99_us, authorize_under_ingest_max_us) = (
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0),
    );

    let (http_requests, http_rps, http_p50_us, http_p99_us) = http(&ledger, options)?;

    let keys = key_memory(&ledger, options.key_events, options.random_key_events)?;

    // Memory and reset at a million members.
    let rss_before = rss_bytes();
    enrol(&ledger, options.members, options.reset_members)?;
    let rss_after = rss_bytes();
    let added = options.reset_members.saturating_sub(options.members).max(1);
    let rss_mib_per_million_members =
        ((rss_after.saturating_sub(rss_before)) as f64 / 1_048_576.0 * 1_000_000.0 / added as f64 * 10.0).round()
            / 10.0;
    let started = Instant::now();
    match ledger.execute_blocking(Command::Reset {
        account: ACCOUNT.into(),
        mark: None,
    })? {
        Outcome::Cycle(_) => {}
        other => return Err(LedgerError::Storage(format!("unexpected reset answer {other:?}"))),
    }
    let reset_ms = (started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    let snapshot = ledger.snapshot_blocking()?;
    let snapshot_ms = (snapshot.total.as_secs_f64() * 1000.0).round();
    let snapshot_stall_ms = (snapshot.stall.as_secs_f64() * 1000.0).round();
    let snapshot_mib_per_million_members =
        (snapshot.bytes as f64 / 1_048_576.0 * 1_000_000.0 / options.reset_members.max(1) as f64 * 10.0).round() / 10.0;
    ledger.shutdown();

    Ok(BenchReport {
        backend: options.backend,
        events: options.events,
        events_per_sec,
        rss_mib_after_ingest: mib(rss_after_ingest),
        rss_mib_ingest_growth: mib(rss_after_ingest.saturating_sub(rss_before_ingest)),
        journal_mib_after_ingest: mib(journal_bytes),
        naive_events: options.naive_events,
        naive_events_per_sec,
        ratio: ((events_per_sec as f64 / naive_events_per_sec.max(1) as f64) * 10.0).round() / 10.0,
        mean_batch_size,
        authorize_p50_us,
        authorize_p99_us,
        authorize_under_ingest_p50_us,
        authorize_under_ingest_p99_us,
        authorize_under_ingest_max_us,
        http_requests,
        http_rps,
        http_p50_us,
        http_p99_us,
        reset_members: options.reset_members,
        reset_ms,
        snapshot_ms,
        snapshot_stall_ms,
        snapshot_mib_per_million_members,
        rss_mib_per_million_members,
        key_events: options.key_events,
        key_events_per_sec: keys.events_per_sec,
        idempotency_mib_per_million_events_past_window: keys.past_window,
        idempotency_mib_per_million_events_in_window: keys.in_window,
        idempotency_filter_mib_per_million_keys: keys.filter_per_million,
        random_key_events: keys.random_events,
        random_key_events_per_sec: keys.random_events_per_sec,
        commit_share,
    })
}

/// What idempotency keys cost in memory.
struct KeyMemory {
    events_per_sec: u64,
    past_window: f64,
    in_window: f64,
    filter_per_million: f64,
    random_events: u64,
    random_events_per_sec: u64,
}

/// Fills an account's key window, then ingests `events` more unique keys,
/// reading RSS before, between and after.
fn key_memory(ledger: &Ledger, events: u64, random_events: u64) -> Result<KeyMemory, LedgerError> {
    const KEYS: &str = "bench/keys";
    let settings = AccountSettings::new(
        Amount::from_int(1_000_000_000_000),
        "CalendarMonth",
        "UTC",
        Amount::from_int(1),
        Amount::from_int(1_000_000_000),
        "default",
    )?;
    ledger.execute_blocking(Command::ApplyAccount {
        account: KEYS.into(),
        settings,
    })?;
    ledger.execute_blocking(Command::ApplyGroup {
        account: KEYS.into(),
        name: "default".into(),
        settings: GroupSettings::new(Amount::from_int(1_000_000_000_000), Amount::ZERO, Amount::ZERO)?,
    })?;
    ledger.execute_blocking(Command::ApplyMember {
        account: KEYS.into(),
        member: MemberSpec {
            group: None,
            monthly_credits: Some(Amount::from_int(1_000_000_000)),
            ..member(0)
        },
    })?;
    // Keys of a UUID's size: time-ordered (like UUIDv7 or ULID: a counter,
    // then random bits) or random (like UUIDv4).
    let usage = |from: u64, to: u64, ordered: bool| {
        (from..to).map(move |i| {
            let noise = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            Command::RecordUsage {
                labels: Default::default(),
                account: KEYS.into(),
                member: "u0000000".into(),
                charge: Charge::Credits(Amount::from_int(1)),
                key: if ordered {
                    format!("{i:019}-{noise:016x}")
                } else {
                    format!("{noise:016x}-{i:019}")
                },
                occurred_at: None,
            }
        })
    };
    let window = 2 * crate::ledger::keys::KEY_GENERATION as u64;
    let empty = rss_bytes();
    pipeline(ledger, usage(0, window, true))?;
    let full = rss_bytes();
    let started = Instant::now();
    pipeline(ledger, usage(window, window + events, true))?;
    let took = started.elapsed();
    let after = rss_bytes();
    let per_million =
        |grew: u64, n: u64| (grew as f64 / 1_048_576.0 * 1_000_000.0 / n.max(1) as f64 * 10.0).round() / 10.0;
    let (filter_bytes, past) = {
        let state = ledger.read();
        let keys = state.account(KEYS).map(|a| &a.keys);
        (keys.map_or(0, |k| k.filter_bytes()), keys.map_or(0, |k| k.past()))
    };
    let from = window + events;
    let started = Instant::now();
    pipeline(ledger, usage(from, from + random_events, false))?;
    let random_took = started.elapsed();
    Ok(KeyMemory {
        events_per_sec: (events as f64 / took.as_secs_f64()) as u64,
        past_window: per_million(after.saturating_sub(full), events),
        in_window: per_million(full.saturating_sub(empty), window),
        filter_per_million: per_million(filter_bytes, past),
        random_events,
        random_events_per_sec: (random_events as f64 / random_took.as_secs_f64()) as u64,
    })
}

/// Authorize over loopback HTTP with keep-alive connections; the client
/// runs in the same process and is counted against the same two cores.
fn http(ledger: &Ledger, options: &BenchOptions) -> Result<(u64, u64, f64, f64), LedgerError> {
    let io = |e: std::io::Error| LedgerError::Storage(format!("http bench: {e}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io)?;
    let state = AppState::new(api::Services {
        ledger: ledger.clone(),
        auth: Arc::new(api::auth::Auth::Local),
        metrics: Metrics::default(),
        directory: Arc::new(NoDirectory),
    });
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
        let address = listener.local_addr().map_err(io)?;
        let server = tokio::spawn(async move { axum::serve(listener, api::router(state)).await });
        let deadline = Instant::now() + Duration::from_secs_f64(options.http_seconds);
        let mut clients = Vec::new();
        for c in 0..options.http_connections {
            let members = options.members;
            clients.push(tokio::spawn(async move {
                client(address, c as u64, members, deadline).await
            }));
        }
        let started = Instant::now();
        let mut latencies = Vec::new();
        for client in clients {
            latencies.extend(client.await.map_err(|e| io(std::io::Error::other(e)))?.map_err(io)?);
        }
        let elapsed = started.elapsed().as_secs_f64();
        server.abort();
        latencies.sort_by(|a, b| a.total_cmp(b));
        let n = latencies.len() as u64;
        Ok((
            n,
            (n as f64 / elapsed) as u64,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
        ))
    })
}

/// One keep-alive connection sending authorize requests until the deadline.
async fn client(
    address: std::net::SocketAddr,
    seed: u64,
    members: u64,
    deadline: Instant,
) -> std::io::Result<Vec<f64>> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let mut rng = XorShift(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
    let mut latencies = Vec::new();
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        let body = format!(
            "{{\"member\":\"u{:07}\",\"credits\":\"{}.5\"}}",
            rng.next() % members,
            rng.next() % 40
        );
        let request = format!(
            "POST /v1/namespaces/bench/accounts/acme/authorize HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let t = Instant::now();
        stream.write_all(request.as_bytes()).await?;
        let mut filled = 0;
        loop {
            let n = stream.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "server closed"));
            }
            filled += n;
            if let Some(end) = response_end(&buf[..filled]) {
                if !buf.starts_with(b"HTTP/1.1 200") {
                    return Err(std::io::Error::other(String::from_utf8_lossy(&buf[..end]).to_string()));
                }
                break;
            }
        }
        latencies.push(t.elapsed().as_nanos() as f64 / 1000.0);
    }
    Ok(latencies)
}

/// The length of a complete response in `buf`, if it holds one.
fn response_end(buf: &[u8]) -> Option<usize> {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let headers = std::str::from_utf8(&buf[..head]).ok()?;
    let length: usize = headers.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse().ok())
    })??;
    (buf.len() >= head + length).then_some(head + length)
}

struct NoDirectory;

impl api::Directory for NoDirectory {
    fn enrol<'a>(
        &'a self,
        _account: &'a str,
        _member: MemberSpec,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), api::error::ApiError>> + Send + 'a>> {
        Box::pin(async {
            Err(api::error::ApiError::not_found(
                "enrolment is not part of the benchmark",
            ))
        })
    }
}
