//! The single writer: commands in order, events group-committed.
//!
//! One thread owns the journal. It takes every queued command (up to
//! [`MAX_BATCH`]), applies each to the in-memory state, writes all their
//! events in one transaction, and only then answers the callers. While a
//! batch commits, the next one queues up, so the batch size follows the
//! load: one commit per batch, not per event.
//!
//! Reads (figures, authorize) take the state's read lock and never touch
//! the database. A batch that can give credit is applied and committed
//! under the write lock, so no read shows credit that is not durable; a
//! batch that only debits (usage, the hot path) is published once
//! applied, so reads never wait on ingest and may show a debit one commit
//! early. If a commit fails, the state is marked stale before any read
//! can see past it (reads answer a storage error), every caller of the
//! batch gets an error, and the writer connects again under the same
//! epoch (at once, then with backoff from 50 ms to 5 s, answering storage
//! errors meanwhile) and reloads the state from the journal. A newer
//! epoch found there fences this writer for good.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::error::LedgerError;
use super::journal::{self, Journal, JournalError};
use super::model::{AccountId, Charge, Command, JournalEntry, Outcome};
use super::numbers::{self, Authorization};
use super::state::State;
use crate::clock::Clock;

/// Most commands in one commit.
pub const MAX_BATCH: usize = 4096;
/// Commands that may wait for the writer; past that an async caller is
/// answered [`LedgerError::Busy`] at once (503 with `Retry-After`) instead
/// of blocking a runtime thread.
pub const QUEUE_DEPTH: usize = 65_536;
/// Entries between snapshots.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 1_000_000;
/// First wait before the writer connects again after a failed write; it
/// doubles with every failed try, up to [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

struct Job {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, LedgerError>>,
}

/// What the writer thread receives.
enum Message {
    Command(Job),
    /// Store a snapshot now; answers how long it took.
    Snapshot(oneshot::Sender<Result<SnapshotTiming, LedgerError>>),
}

/// How long a snapshot held up the writer, and how long it took in all.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotTiming {
    pub stall: std::time::Duration,
    pub total: std::time::Duration,
}

/// Figures about commits, for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommitStats {
    pub batches: u64,
    pub entries: u64,
    pub last_batch_size: u64,
    pub last_commit_micros: u64,
    pub total_commit_micros: u64,
}

struct Shared {
    state: RwLock<State>,
    stats: RwLock<CommitStats>,
    fenced: RwLock<Option<i64>>,
    /// Why the journal cannot be written right now (a lost connection the
    /// writer is re-establishing).
    outage: RwLock<Option<String>>,
    backend: &'static str,
    /// Counts batches that changed something; readers wait on it.
    changes: tokio::sync::watch::Sender<u64>,
    /// Per account, the count of the last batch that touched it.
    versions: RwLock<std::collections::HashMap<AccountId, u64>>,
}

/// A handle to the ledger; clones share one writer.
#[derive(Clone)]
pub struct Ledger {
    shared: Arc<Shared>,
    tx: SyncSender<Message>,
    clock: Arc<dyn Clock>,
    writer: Arc<WriterThread>,
}

struct WriterThread(std::sync::Mutex<Option<JoinHandle<()>>>);

/// Called after each commit with the batch size and how long it took.
pub type CommitObserver = Arc<dyn Fn(usize, std::time::Duration) + Send + Sync>;

/// Options for opening a ledger.
#[derive(Clone)]
pub struct LedgerOptions {
    /// Entries between snapshots.
    pub snapshot_every: u64,
    pub on_commit: Option<CommitObserver>,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions {
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            on_commit: None,
        }
    }
}

impl Ledger {
    /// Opens the journal at `url`, recovers the state and starts the writer.
    pub fn open(url: &str, clock: Arc<dyn Clock>) -> Result<Ledger, LedgerError> {
        Ledger::open_with(url, clock, LedgerOptions::default())
    }

    pub fn open_with(url: &str, clock: Arc<dyn Clock>, options: LedgerOptions) -> Result<Ledger, LedgerError> {
        let journal = journal::open(url)?;
        Ledger::start(journal, clock, options)
    }

    /// Recovers from `journal` and starts the writer thread on it.
    pub fn start(
        mut journal: Box<dyn Journal>,
        clock: Arc<dyn Clock>,
        options: LedgerOptions,
    ) -> Result<Ledger, LedgerError> {
        let state = journal::recover(journal.as_mut())?;
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            stats: RwLock::new(CommitStats::default()),
            fenced: RwLock::new(None),
            outage: RwLock::new(None),
            backend: journal.backend(),
            changes: tokio::sync::watch::Sender::new(0),
            versions: RwLock::new(Default::default()),
        });
        let (tx, rx) = mpsc::sync_channel::<Message>(QUEUE_DEPTH);
        let writer_shared = shared.clone();
        let writer_clock = clock.clone();
        let handle = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || run_writer(journal, writer_shared, writer_clock, rx, options))
            .map_err(|e| LedgerError::Storage(format!("cannot start the writer thread: {e}")))?;
        Ok(Ledger {
            shared,
            tx,
            clock,
            writer: Arc::new(WriterThread(std::sync::Mutex::new(Some(handle)))),
        })
    }

    /// Which backend holds the journal.
    pub fn backend(&self) -> &'static str {
        self.shared.backend
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Queues a command without waiting for room; the answer arrives once
    /// its batch is durable, or at once as [`LedgerError::Busy`] when
    /// [`QUEUE_DEPTH`] commands are already waiting.
    pub fn submit(&self, command: Command) -> oneshot::Receiver<Result<Outcome, LedgerError>> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Message::Command(Job { command, reply })) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(Message::Command(job))) => {
                let _ = job.reply.send(Err(LedgerError::Busy(QUEUE_DEPTH)));
            }
            Err(mpsc::TrySendError::Disconnected(Message::Command(job))) => {
                let _ = job.reply.send(Err(LedgerError::ShuttingDown));
            }
            Err(_) => {}
        }
        rx
    }

    /// Runs a command and waits for its durable answer; never blocks the
    /// runtime's thread (a full queue answers [`LedgerError::Busy`]).
    pub async fn execute(&self, command: Command) -> Result<Outcome, LedgerError> {
        self.submit(command).await.unwrap_or(Err(LedgerError::ShuttingDown))
    }

    /// [`Ledger::execute`] for callers outside an async runtime: waits for
    /// room in the queue, then for the durable answer.
    pub fn execute_blocking(&self, command: Command) -> Result<Outcome, LedgerError> {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::SendError(Message::Command(job))) = self.tx.send(Message::Command(Job { command, reply })) {
            let _ = job.reply.send(Err(LedgerError::ShuttingDown));
        }
        rx.blocking_recv().unwrap_or(Err(LedgerError::ShuttingDown))
    }

    /// Reads the state. Boundaries that passed since the last command are
    /// not applied here: call [`Ledger::catch_up`] first where it matters.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.shared.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// True when a cycle boundary or hold expiry is due in `account`.
    pub fn is_due(&self, account: Option<&str>) -> bool {
        self.read().is_due(account, self.clock.now())
    }

    /// Applies due boundaries and expiries (a journal entry each) and waits
    /// until they are durable. Cheap when nothing is due.
    pub async fn catch_up(&self, account: Option<&str>) -> Result<(), LedgerError> {
        if self.is_due(account) {
            self.execute(Command::Tick {
                account: account.map(str::to_string),
            })
            .await?;
        }
        Ok(())
    }

    pub fn catch_up_blocking(&self, account: Option<&str>) -> Result<(), LedgerError> {
        if self.is_due(account) {
            self.execute_blocking(Command::Tick {
                account: account.map(str::to_string),
            })?;
        }
        Ok(())
    }

    /// May `member` spend this charge now? Reads memory only.
    pub fn authorize(&self, account: &str, member: &str, charge: Charge) -> Result<Authorization, LedgerError> {
        charge.validate()?;
        let state = self.read();
        let acct = state.active_account(account)?;
        let credits = match (acct.settings.tracking_enabled(), charge) {
            (false, _) => crate::amount::Amount::ZERO,
            (true, Charge::Credits(c)) => c,
            (true, Charge::CostUsd(usd)) => usd
                .convert(acct.settings.credit_factor)
                .ok_or_else(|| LedgerError::field("costUsd", "is too large to convert to credits"))?,
        };
        numbers::authorize(acct, member, credits)
    }

    /// Stores a snapshot now and answers how long the writer paused and
    /// how long the whole snapshot took.
    pub fn snapshot_blocking(&self) -> Result<SnapshotTiming, LedgerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Message::Snapshot(reply))
            .map_err(|_| LedgerError::ShuttingDown)?;
        rx.blocking_recv().unwrap_or(Err(LedgerError::ShuttingDown))
    }

    pub fn stats(&self) -> CommitStats {
        *self.shared.stats.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The epoch that fenced this writer off, if one did.
    /// Wakes whenever a batch changed the ledger (its value counts them).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// A number that grows whenever `account`'s figures may have moved.
    pub fn account_version(&self, account: &str) -> u64 {
        self.shared
            .versions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(account)
            .copied()
            .unwrap_or(0)
    }

    pub fn fenced(&self) -> Option<i64> {
        *self.shared.fenced.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the journal cannot be written right now, while the writer
    /// reconnects; commands meanwhile get a storage error.
    pub fn outage(&self) -> Option<String> {
        self.shared.outage.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops accepting commands, finishes the queue and joins the writer.
    pub fn shutdown(self) {
        let Ledger { tx, writer, .. } = self;
        drop(tx);
        if Arc::strong_count(&writer) == 1 {
            if let Some(handle) = writer.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = handle.join();
            }
        }
    }
}

fn run_writer(
    mut journal: Box<dyn Journal>,
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
    rx: Receiver<Message>,
    options: LedgerOptions,
) {
    let mut since_snapshot = 0u64;
    let mut snapshotter: Option<JoinHandle<Result<std::time::Duration, JournalError>>> = None;
    let mut entries: Vec<JournalEntry> = Vec::new();
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut results = Vec::with_capacity(MAX_BATCH);
    let mut outage: Option<Outage> = None;
    loop {
        // While the journal is out of reach, wake up to try it again even
        // when no command comes.
        let first = match &outage {
            None => match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => break,
            },
            Some(o) => match rx.recv_timeout(o.next_try.saturating_duration_since(Instant::now())) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        if outage.as_ref().is_some_and(|o| Instant::now() >= o.next_try) {
            outage = heal(journal.as_mut(), &shared, outage.take());
        }
        let Some(first) = first else { continue };
        let mut snapshot_request = None;
        match first {
            Message::Command(job) => jobs.push(job),
            Message::Snapshot(reply) => snapshot_request = Some(reply),
        }
        while jobs.len() < MAX_BATCH && snapshot_request.is_none() {
            match rx.try_recv() {
                Ok(Message::Command(job)) => jobs.push(job),
                Ok(Message::Snapshot(reply)) => snapshot_request = Some(reply),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        let refusal = match (*shared.fenced.read().unwrap_or_else(|p| p.into_inner()), &outage) {
            (Some(epoch), _) => Some(LedgerError::Fenced(epoch)),
            (None, Some(o)) => Some(o.refusal()),
            (None, None) => None,
        };
        if let Some(error) = refusal {
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(error.clone()));
            }
            if let Some(reply) = snapshot_request {
                let _ = reply.send(Err(error));
            }
            continue;
        }
        // A batch that can give credit (a grant, a new setting, a reset, a
        // released hold) is committed under the write lock: no read shows
        // credit before it is durable; such a read waits at most one
        // commit. A batch that only debits (usage, holds opened, requests
        // submitted: the hot path) is published as soon as it is applied,
        // so reads never wait on ingest; they may show a debit a commit
        // early, which errs on the side of refusing. Either way a failed
        // commit marks the state stale before the writer lets go of it
        // again, and reads answer a storage error until it is reloaded.
        let mut state = shared.state.write().unwrap_or_else(|p| p.into_inner());
        for job in &mut jobs {
            let command = std::mem::replace(&mut job.command, Command::Tick { account: None });
            results.push(match recall(&state, &command, journal.as_mut()) {
                Ok(recalled) => state.handle_recalled(command, clock.now(), &mut entries, recalled),
                Err(e) => Err(e),
            });
        }
        let mut held = Some(state).filter(|_| !entries.iter().all(|e| e.event.only_debits()));
        let committed = if entries.is_empty() {
            Ok(())
        } else {
            let started = Instant::now();
            let r = journal.append(&entries);
            let took = started.elapsed();
            let micros = took.as_micros() as u64;
            if let (Ok(()), Some(observe)) = (&r, &options.on_commit) {
                observe(entries.len(), took);
            }
            let mut stats = shared.stats.write().unwrap_or_else(|p| p.into_inner());
            stats.batches += 1;
            stats.entries += entries.len() as u64;
            stats.last_batch_size = entries.len() as u64;
            stats.last_commit_micros = micros;
            stats.total_commit_micros += micros;
            r
        };
        if let Err(e) = &committed {
            let mut state = held
                .take()
                .unwrap_or_else(|| shared.state.write().unwrap_or_else(|p| p.into_inner()));
            state.stale = Some(e.to_string());
        }
        drop(held);
        match committed {
            Ok(()) => {
                since_snapshot += entries.len() as u64;
                for (job, result) in jobs.drain(..).zip(results.drain(..)) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = entries.len(), "journal commit failed; reloading state from the journal");
                let error: LedgerError = match &e {
                    JournalError::Fenced { stored, .. } => {
                        fence(journal.as_mut(), &shared, *stored);
                        LedgerError::Fenced(*stored)
                    }
                    other => {
                        // The connection may be gone: connect again (same
                        // epoch) and rebuild the state from what is durable,
                        // now, and with backoff while that fails.
                        outage = heal(journal.as_mut(), &shared, Some(Outage::new(other.to_string())));
                        LedgerError::Storage(other.to_string())
                    }
                };
                results.clear();
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
        if !entries.is_empty() {
            // Committed or rolled back, the figures moved: tell the readers.
            let n = *shared.changes.borrow() + 1;
            {
                let mut versions = shared.versions.write().unwrap_or_else(|p| p.into_inner());
                let mut last: Option<&str> = None;
                for e in &entries {
                    if last == Some(e.account.as_str()) {
                        continue;
                    }
                    last = Some(e.account.as_str());
                    match versions.get_mut(&e.account) {
                        Some(v) => *v = n,
                        None => {
                            versions.insert(e.account.clone(), n);
                        }
                    }
                }
            }
            shared.changes.send_replace(n);
        }
        entries.clear();
        if snapshotter.as_ref().is_some_and(|h| h.is_finished()) {
            finish_snapshot(snapshotter.take());
        }
        let due = since_snapshot >= options.snapshot_every && snapshotter.is_none();
        if due || snapshot_request.is_some() {
            finish_snapshot(snapshotter.take());
            since_snapshot = 0;
            // The writer only pauses to copy the state; encoding and
            // storing it happen on another thread and connection.
            let started = Instant::now();
            let copy = shared.state.read().unwrap_or_else(|p| p.into_inner()).clone();
            let stall = started.elapsed();
            let handle = journal.attach().map(|mut attached| {
                std::thread::spawn(move || attached.save_snapshot(&copy).map(|()| started.elapsed()))
            });
            match (handle, snapshot_request) {
                (Ok(handle), None) => snapshotter = Some(handle),
                (Ok(handle), Some(reply)) => {
                    let result = handle
                        .join()
                        .unwrap_or_else(|_| Err(JournalError::Backend("snapshot thread panicked".into())));
                    let _ = reply.send(
                        result
                            .map(|total| SnapshotTiming { stall, total })
                            .map_err(LedgerError::from),
                    );
                }
                (Err(e), reply) => {
                    tracing::warn!(error = %e, "cannot start a snapshot; the journal alone still recovers");
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
        }
    }
    finish_snapshot(snapshotter.take());
}

/// The record of a command's key that left memory, from the journal's
/// unique index (`None` for a new key: the filters knew it by chance). A
/// read that fails refuses the command rather than take a retry for new.
fn recall(
    state: &State,
    command: &Command,
    journal: &mut dyn Journal,
) -> Result<Option<super::state::KeyRecord>, LedgerError> {
    let Some((account, key)) = state.needs_recall(command) else {
        return Ok(None);
    };
    match journal.find_key(account, key).map_err(LedgerError::from)? {
        None => Ok(None),
        // The key is taken: never run the command as new.
        Some(entry) => state
            .accounts
            .get(account)
            .and_then(|a| a.recall(&entry))
            .map(Some)
            .ok_or_else(|| LedgerError::IdempotencyConflict(key.to_string())),
    }
}

/// Waits for a background snapshot and reports how it went.
fn finish_snapshot(handle: Option<JoinHandle<Result<std::time::Duration, JournalError>>>) {
    let Some(handle) = handle else { return };
    match handle.join() {
        Ok(Ok(took)) => tracing::info!(millis = took.as_millis() as u64, "snapshot stored"),
        Ok(Err(e)) => tracing::warn!(error = %e, "snapshot failed; the journal alone still recovers"),
        Err(_) => tracing::error!("the snapshot thread panicked"),
    }
}

/// The journal could not be written: why, and when to try again.
struct Outage {
    error: String,
    delay: Duration,
    next_try: Instant,
}

impl Outage {
    fn new(error: String) -> Outage {
        Outage {
            error,
            delay: Duration::ZERO,
            next_try: Instant::now(),
        }
    }

    /// What a command gets meanwhile: nothing of it happened.
    fn refusal(&self) -> LedgerError {
        LedgerError::Storage(format!(
            "the journal is out of reach, reconnecting (next try in {} ms): {}",
            self.next_try.saturating_duration_since(Instant::now()).as_millis(),
            self.error
        ))
    }
}

/// Stops this writer for good. Reads go on, on what is durable.
fn fence(journal: &mut dyn Journal, shared: &Shared, epoch: i64) {
    *shared.fenced.write().unwrap_or_else(|p| p.into_inner()) = Some(epoch);
    *shared.outage.write().unwrap_or_else(|p| p.into_inner()) = None;
    if let Ok(state) = journal::recover(journal) {
        *shared.state.write().unwrap_or_else(|p| p.into_inner()) = state;
    }
}

/// After a failed write the memory may be ahead of the journal: connect
/// again under the same epoch and rebuild the state from what is durable.
/// Answers the outage that remains: none when healed, or a longer wait
/// while the journal is still out of reach. A newer epoch fences this
/// writer; an unreadable journal stops it writing for good.
fn heal(journal: &mut dyn Journal, shared: &Shared, outage: Option<Outage>) -> Option<Outage> {
    let mut outage = outage?;
    let result = journal.reconnect().and_then(|()| journal::recover(journal));
    let error = match result {
        Ok(state) => {
            *shared.state.write().unwrap_or_else(|p| p.into_inner()) = state;
            *shared.outage.write().unwrap_or_else(|p| p.into_inner()) = None;
            if !outage.delay.is_zero() {
                tracing::info!(after = %outage.error, "the journal is back; writes resume");
            }
            return None;
        }
        Err(JournalError::Fenced { stored, .. }) => {
            tracing::error!(
                epoch = stored,
                "another writer took a newer epoch; this one stops writing"
            );
            fence(journal, shared, stored);
            return None;
        }
        Err(e @ JournalError::Corrupt { .. }) => {
            // Without a trustworthy state the writer must not go on.
            tracing::error!(error = %e, "cannot reload the ledger state; refusing further writes");
            *shared.fenced.write().unwrap_or_else(|p| p.into_inner()) = Some(i64::MAX);
            return None;
        }
        Err(e) => e.to_string(),
    };
    outage.delay = (outage.delay * 2).clamp(RECONNECT_FIRST, RECONNECT_MAX);
    outage.next_try = Instant::now() + outage.delay;
    tracing::warn!(error = %error, retry_in_ms = outage.delay.as_millis() as u64, "the journal is out of reach");
    outage.error = error;
    *shared.outage.write().unwrap_or_else(|p| p.into_inner()) = Some(outage.error.clone());
    Some(outage)
}
