//! The single writer: commands in order, events group-committed.
//!
//! Two threads share the work of one writer. The *writer* thread takes
//! every queued command (up to [`MAX_BATCH`]), applies each to the
//! in-memory state and hands the batch's events to the *commit* thread,
//! which writes them in one transaction and only then answers the
//! callers. While one batch commits the writer applies the next, so
//! applying and committing overlap (two cores both work), and the batch
//! size follows the load: one commit per batch, not per event. At most
//! two batches are in flight.
//!
//! Reads (figures, authorize) take the state's read lock and never touch
//! the database. A batch that can give credit is applied and committed
//! under the write lock, so no read shows credit that is not durable; a
//! batch that only debits (usage, the hot path) is published once
//! applied, so reads never wait on ingest and may show a debit one commit
//! early. If a commit fails, the commit thread marks the state stale
//! before anyone hears of it (reads answer a storage error), every caller
//! of that batch and of any batch applied after it gets an error, and the
//! writer connects again under the same epoch (at once, then with backoff
//! from 50 ms to 5 s, answering storage errors meanwhile) and reloads the
//! state from the journal. A newer epoch found there fences this writer
//! for good.
//!
//! What memory let go of (an old idempotency key, a closed hold, a closed
//! cycle) is read on connections of their own, never the commit thread's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::error::LedgerError;
use super::history::{self, ClosedView};
use super::journal::{self, Journal, JournalError};
use super::model::{AccountId, Charge, Command, JournalEntry, Outcome};
use super::numbers::{self, Authorization};
use super::state::{Hold, Recall, Recalled, Stale, State};
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
/// How often the writer looks for a failed commit while batches are in
/// flight and no command comes.
const FAILURE_POLL: Duration = Duration::from_millis(1);
/// A commit that takes longer is logged: every caller of its batch, and
/// of the batches behind it, waited that long.
const SLOW_COMMIT: Duration = Duration::from_millis(50);
/// Longest a read of a closed cycle waits for the commits in flight.
const DURABLE_WAIT: Duration = Duration::from_secs(10);

type Reply = oneshot::Sender<Result<Outcome, LedgerError>>;

struct Job {
    command: Command,
    reply: Reply,
}

/// What the writer thread receives.
enum Message {
    Command(Job),
    /// Store a snapshot now; answers how long it took.
    Snapshot(oneshot::Sender<Result<SnapshotTiming, LedgerError>>),
}

/// What the commit thread receives.
enum ToCommit {
    Batch {
        entries: Vec<JournalEntry>,
        replies: Vec<(Reply, Result<Outcome, LedgerError>)>,
        /// Answered once the batch is durable (true) or failed, for a
        /// writer that holds the state's write lock until then.
        done: Option<std::sync::mpsc::SyncSender<bool>>,
    },
    /// Answered once every batch sent before it is settled.
    Barrier(std::sync::mpsc::SyncSender<()>),
}

/// A failed commit and the callers waiting to hear of it: they are
/// answered once the writer has reloaded the state (or been fenced), so
/// no caller told of a failure can read its figures afterwards.
struct Failure {
    error: JournalError,
    parked: Vec<Reply>,
}

/// How long a snapshot held up the writer, how long it took in all, and
/// how large it was.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotTiming {
    pub stall: Duration,
    pub total: Duration,
    pub bytes: u64,
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
    /// The mark every state the writer installs shares: set by the commit
    /// thread the moment a commit fails.
    stale: Stale,
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
    /// The last sequence number known durable.
    durable: AtomicU64,
    /// The journal the commit thread writes; the writer takes it between
    /// batches to reconnect and reload.
    journal: Mutex<Box<dyn Journal>>,
    /// A connection for reading closed cycles.
    history: Mutex<Box<dyn Journal>>,
    /// The first failed commit not yet dealt with by the writer.
    failure: Mutex<Option<Failure>>,
    /// Batches the commit thread has settled.
    settled: AtomicU64,
}

impl Shared {
    fn journal(&self) -> MutexGuard<'_, Box<dyn Journal>> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a state reloaded from the journal in place; it shares the
    /// stale mark, cleared.
    fn install(&self, mut state: State) {
        state.stale = self.stale.clone();
        let last = state.last_seq;
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state;
        self.stale.clear();
        self.durable.store(last, Ordering::SeqCst);
    }
}

/// A handle to the ledger; clones share one writer.
#[derive(Clone)]
pub struct Ledger {
    shared: Arc<Shared>,
    tx: SyncSender<Message>,
    clock: Arc<dyn Clock>,
    writer: Arc<WriterThread>,
}

struct WriterThread(Mutex<Option<JoinHandle<()>>>);

/// Called after each commit with the batch size and how long it took.
pub type CommitObserver = Arc<dyn Fn(usize, Duration) + Send + Sync>;

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

    /// Recovers from `journal` and starts the writer and commit threads.
    pub fn start(
        mut journal: Box<dyn Journal>,
        clock: Arc<dyn Clock>,
        options: LedgerOptions,
    ) -> Result<Ledger, LedgerError> {
        let mut state = journal::recover(journal.as_mut())?;
        let stale = Stale::default();
        state.stale = stale.clone();
        let recall_reader = journal.attach()?;
        let history = journal.attach()?;
        let shared = Arc::new(Shared {
            durable: AtomicU64::new(state.last_seq),
            state: RwLock::new(state),
            stale,
            stats: RwLock::new(CommitStats::default()),
            fenced: RwLock::new(None),
            outage: RwLock::new(None),
            backend: journal.backend(),
            changes: tokio::sync::watch::Sender::new(0),
            versions: RwLock::new(Default::default()),
            journal: Mutex::new(journal),
            history: Mutex::new(history),
            failure: Mutex::new(None),
            settled: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::sync_channel::<Message>(QUEUE_DEPTH);
        let writer_shared = shared.clone();
        let writer_clock = clock.clone();
        let handle = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || {
                let mut writer = Writer::new(writer_shared, writer_clock, recall_reader, options);
                writer.run(rx);
            })
            .map_err(|e| LedgerError::Storage(format!("cannot start the writer thread: {e}")))?;
        Ok(Ledger {
            shared,
            tx,
            clock,
            writer: Arc::new(WriterThread(Mutex::new(Some(handle)))),
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

    /// A closed cycle of an account, as it ended (`None` for the current
    /// cycle or one the account never had): account and group figures
    /// from its record, each member from memory when untouched since,
    /// else from its record. Reads the database on a connection of its
    /// own, after the commits in flight.
    pub fn closed_blocking(&self, account: &str, cycle: u64) -> Result<Option<ClosedView>, LedgerError> {
        let (seq, plan) = {
            let state = self.read();
            let acct = state.active_account(account)?;
            if cycle == 0 || cycle >= acct.cycle.number {
                return Ok(None);
            }
            (state.last_seq, history::plan(acct, cycle))
        };
        // Records of members touched in a batch still committing are not
        // readable yet: wait for what memory showed to be durable.
        let deadline = Instant::now() + DURABLE_WAIT;
        while self.shared.durable.load(Ordering::SeqCst) < seq && self.read().last_seq >= seq {
            if Instant::now() > deadline {
                return Err(LedgerError::Storage(
                    "the commits in flight did not finish in time to read a closed cycle".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut reader = self.shared.history.lock().unwrap_or_else(|p| p.into_inner());
        let read = |reader: &mut Box<dyn Journal>| -> Result<_, JournalError> {
            let Some(closed) = reader.closed_cycle(account, cycle)? else {
                return Ok(None);
            };
            let found = reader.member_cycles(account, cycle, &plan.lookups())?;
            Ok(Some((closed, found)))
        };
        let read = match read(&mut reader) {
            Ok(r) => r,
            // A dropped connection: once more on a fresh one.
            Err(JournalError::Backend(_)) => {
                *reader = reader.attach()?;
                read(&mut reader)?
            }
            Err(e) => return Err(e.into()),
        };
        Ok(read.map(|(closed, found)| plan.assemble(closed, found)))
    }

    /// [`Ledger::closed_blocking`] off the async runtime's threads.
    pub async fn closed(&self, account: &str, cycle: u64) -> Result<Option<ClosedView>, LedgerError> {
        let ledger = self.clone();
        let account = account.to_string();
        tokio::task::spawn_blocking(move || ledger.closed_blocking(&account, cycle))
            .await
            .map_err(|e| LedgerError::Storage(format!("reading a closed cycle: {e}")))?
    }

    /// Stores a snapshot now and answers how long the writer paused, how
    /// long the whole snapshot took and its size.
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

    /// The epoch that fenced this writer off, if one did.
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

/// The writer thread's own state.
struct Writer {
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
    options: LedgerOptions,
    /// A connection for reading back what memory let go of.
    reader: Box<dyn Journal>,
    to_commit: Option<SyncSender<ToCommit>>,
    committer: Option<JoinHandle<()>>,
    /// Batches handed to the commit thread.
    sent: u64,
    /// Commands taken from the queue that wait for the next batch.
    carried: std::collections::VecDeque<Job>,
    outage: Option<Outage>,
    since_snapshot: u64,
    snapshotter: Option<JoinHandle<Result<(Duration, u64), JournalError>>>,
}

impl Writer {
    fn new(shared: Arc<Shared>, clock: Arc<dyn Clock>, reader: Box<dyn Journal>, options: LedgerOptions) -> Writer {
        let (to_commit, from_writer) = mpsc::sync_channel::<ToCommit>(1);
        let commit_shared = shared.clone();
        let observer = options.on_commit.clone();
        let committer = std::thread::Builder::new()
            .name("ledger-commit".into())
            .spawn(move || commit_loop(commit_shared, observer, from_writer))
            .ok();
        Writer {
            shared,
            clock,
            options,
            reader,
            to_commit: Some(to_commit),
            committer,
            sent: 0,
            carried: Default::default(),
            outage: None,
            since_snapshot: 0,
            snapshotter: None,
        }
    }

    fn in_flight(&self) -> u64 {
        self.sent - self.shared.settled.load(Ordering::SeqCst)
    }

    /// Waits until every batch sent is settled.
    fn barrier(&mut self) {
        if self.in_flight() == 0 {
            return;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        if let Some(to_commit) = &self.to_commit {
            if to_commit.send(ToCommit::Barrier(tx)).is_ok() {
                let _ = rx.recv();
            }
        }
    }

    fn run(&mut self, rx: Receiver<Message>) {
        let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        loop {
            self.deal_with_failure();
            // While the journal is out of reach or batches are in flight,
            // wake up even when no command comes.
            let first = if let Some(job) = self.carried.pop_front() {
                Some(Message::Command(job))
            } else {
                let wait = match &self.outage {
                    Some(o) => Some(o.next_try.saturating_duration_since(Instant::now())),
                    None if self.in_flight() > 0 => Some(FAILURE_POLL),
                    None => None,
                };
                match wait {
                    None => match rx.recv() {
                        Ok(m) => Some(m),
                        Err(_) => break,
                    },
                    Some(wait) => match rx.recv_timeout(wait) {
                        Ok(m) => Some(m),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    },
                }
            };
            if self.outage.as_ref().is_some_and(|o| Instant::now() >= o.next_try) {
                let outage = self.outage.take();
                self.outage = heal(&self.shared, outage);
            }
            let Some(first) = first else { continue };
            let mut snapshot_request = None;
            match first {
                Message::Command(job) => jobs.push(job),
                Message::Snapshot(reply) => snapshot_request = Some(reply),
            }
            while jobs.len() < MAX_BATCH && snapshot_request.is_none() {
                if let Some(job) = self.carried.pop_front() {
                    jobs.push(job);
                    continue;
                }
                match rx.try_recv() {
                    Ok(Message::Command(job)) => jobs.push(job),
                    Ok(Message::Snapshot(reply)) => snapshot_request = Some(reply),
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
                }
            }
            let refusal = match (
                *self.shared.fenced.read().unwrap_or_else(|p| p.into_inner()),
                &self.outage,
            ) {
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
            if !jobs.is_empty() {
                self.batch(&mut jobs);
            }
            if self.snapshotter.as_ref().is_some_and(|h| h.is_finished()) {
                finish_snapshot(self.snapshotter.take());
            }
            let due = self.since_snapshot >= self.options.snapshot_every && self.snapshotter.is_none();
            if due || snapshot_request.is_some() {
                self.snapshot(snapshot_request);
            }
        }
        // Shutting down: what is in flight commits, then the commit thread
        // ends.
        self.barrier();
        self.to_commit.take();
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
        finish_snapshot(self.snapshotter.take());
    }

    /// Applies a batch and hands it to the commit thread.
    fn batch(&mut self, jobs: &mut Vec<Job>) {
        let mut entries: Vec<JournalEntry> = Vec::with_capacity(jobs.len() + 16);
        let mut replies = Vec::with_capacity(jobs.len());
        let shared = self.shared.clone();
        let mut state = shared.state.write().unwrap_or_else(|p| p.into_inner());
        // One time for the batch: its commands are answered together.
        let now = self.clock.now();
        let mut rest = jobs.drain(..);
        while let Some(mut job) = rest.next() {
            let command = std::mem::replace(&mut job.command, Command::Tick { account: None });
            let recalled = match self.recall(&state, &command, entries.is_empty()) {
                Ok(Some(recalled)) => recalled,
                // A closed hold must be read back after everything before
                // it is durable: this command and the rest wait for the
                // next batch.
                Ok(None) => {
                    job.command = command;
                    self.carried.push_front(job);
                    let tail: Vec<Job> = rest.by_ref().collect();
                    for (i, job) in tail.into_iter().enumerate() {
                        self.carried.insert(i + 1, job);
                    }
                    break;
                }
                Err(e) => {
                    replies.push((job.reply, Err(e)));
                    continue;
                }
            };
            let result = state.handle_recalled(command, now, &mut entries, recalled);
            replies.push((job.reply, result));
        }
        drop(rest);
        if entries.is_empty() {
            drop(state);
            for (reply, result) in replies {
                let _ = reply.send(result);
            }
            return;
        }
        self.since_snapshot += entries.len() as u64;
        // A batch that can give credit (a grant, a new setting, a reset, a
        // released hold) is committed under the write lock: no read shows
        // credit before it is durable; such a read waits at most one
        // commit. A batch that only debits (usage, holds opened, requests
        // submitted: the hot path) is published as soon as it is applied,
        // so reads never wait on ingest; they may show a debit a commit
        // early, which errs on the side of refusing.
        let gives_credit = !entries.iter().all(|e| e.event.only_debits());
        let Some(to_commit) = self.to_commit.clone() else {
            return;
        };
        if gives_credit {
            let (done, settled) = mpsc::sync_channel(1);
            self.sent += 1;
            let sent = to_commit.send(ToCommit::Batch {
                entries,
                replies,
                done: Some(done),
            });
            if sent.is_ok() {
                let _ = settled.recv();
            }
            drop(state);
        } else {
            drop(state);
            self.sent += 1;
            let _ = to_commit.send(ToCommit::Batch {
                entries,
                replies,
                done: None,
            });
        }
    }

    /// Reads back what `command` needs of what memory let go of. `Ok(None)`
    /// when it needs a closed hold while entries of this batch are not yet
    /// durable (`batch_empty` false): the command waits for the next batch.
    fn recall(&mut self, state: &State, command: &Command, batch_empty: bool) -> Result<Option<Recalled>, LedgerError> {
        let mut recalled = Recalled::default();
        loop {
            match state.recall_needed(command, &recalled) {
                None => return Ok(Some(recalled)),
                // A key that left memory is older than anything in flight
                // (the window holds many batches).
                Some(Recall::Key { account, key }) => {
                    let entry = self.read_back(|r| r.find_key(account, key))?;
                    recalled.key = Some(match entry {
                        None => None,
                        // The key is taken: never run the command as new.
                        Some(entry) => Some(
                            state
                                .accounts
                                .get(account)
                                .and_then(|a| a.recall(&entry))
                                .ok_or_else(|| LedgerError::IdempotencyConflict(key.to_string()))?,
                        ),
                    });
                }
                Some(Recall::Hold { account, id }) => {
                    if !batch_empty {
                        return Ok(None);
                    }
                    self.barrier();
                    let entries = self.read_back(|r| r.find_hold(account, &id))?;
                    recalled.hold = Some(Hold::recall(&entries));
                }
            }
        }
    }

    /// A read on the writer's reading connection, once more on a fresh one
    /// when it failed (a dropped connection).
    fn read_back<T>(
        &mut self,
        mut read: impl FnMut(&mut dyn Journal) -> Result<T, JournalError>,
    ) -> Result<T, LedgerError> {
        match read(self.reader.as_mut()) {
            Ok(v) => Ok(v),
            Err(_) => {
                self.reader = self.reader.attach()?;
                read(self.reader.as_mut()).map_err(LedgerError::from)
            }
        }
    }

    /// After a failed commit: every batch in flight is answered (as
    /// failed), then the writer reconnects and reloads, or stops for good
    /// when fenced.
    fn deal_with_failure(&mut self) {
        let failed = self.shared.failure.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        if !failed {
            return;
        }
        self.barrier();
        let Some(Failure { error, parked }) = self.shared.failure.lock().unwrap_or_else(|p| p.into_inner()).take()
        else {
            return;
        };
        tracing::error!(error = %error, batch = parked.len(), "journal commit failed; reloading state from the journal");
        let refusal = refusal_of(&error);
        match error {
            JournalError::Fenced { stored, .. } => fence(&self.shared, stored),
            other => self.outage = heal(&self.shared, Some(Outage::new(other.to_string()))),
        }
        // Commands carried over were applied to nothing yet: they wait.
        for reply in parked {
            let _ = reply.send(Err(refusal.clone()));
        }
    }

    /// Stores a snapshot of what is durable: the writer waits for the
    /// batches in flight and copies the state; encoding and storing happen
    /// on another thread and connection.
    fn snapshot(&mut self, request: Option<oneshot::Sender<Result<SnapshotTiming, LedgerError>>>) {
        finish_snapshot(self.snapshotter.take());
        self.since_snapshot = 0;
        let started = Instant::now();
        self.barrier();
        self.deal_with_failure();
        let copy = self.shared.state.read().unwrap_or_else(|p| p.into_inner()).clone();
        let stall = started.elapsed();
        if copy.stale.is_set() {
            if let Some(reply) = request {
                let _ = reply.send(Err(LedgerError::Storage("the state is being reloaded".into())));
            }
            return;
        }
        let attached = self.shared.journal().attach();
        let handle = attached.map(|mut attached| {
            std::thread::spawn(move || {
                super::background_thread();
                attached.save_snapshot(&copy).map(|bytes| (started.elapsed(), bytes))
            })
        });
        match (handle, request) {
            (Ok(handle), None) => self.snapshotter = Some(handle),
            (Ok(handle), Some(reply)) => {
                let result = handle
                    .join()
                    .unwrap_or_else(|_| Err(JournalError::Backend("snapshot thread panicked".into())));
                let _ = reply.send(
                    result
                        .map(|(total, bytes)| SnapshotTiming { stall, total, bytes })
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

/// The commit thread: writes each batch, then answers its callers. After
/// a failed commit every later batch is answered with the same failure
/// without being written (it was applied on top of the failed one) until
/// the writer has reloaded.
fn commit_loop(shared: Arc<Shared>, observer: Option<CommitObserver>, rx: Receiver<ToCommit>) {
    for message in rx {
        let (entries, replies, done) = match message {
            ToCommit::Barrier(reply) => {
                let _ = reply.send(());
                continue;
            }
            ToCommit::Batch { entries, replies, done } => (entries, replies, done),
        };
        let mut failure = shared.failure.lock().unwrap_or_else(|p| p.into_inner());
        let ok = if let Some(failed) = failure.as_mut() {
            // Applied on top of a batch that failed: never written.
            failed.parked.extend(replies.into_iter().map(|(reply, _)| reply));
            false
        } else {
            drop(failure);
            let started = Instant::now();
            let r = shared.journal().append(&entries);
            let took = started.elapsed();
            if let (Ok(()), Some(observe)) = (&r, &observer) {
                observe(entries.len(), took);
            }
            if took >= SLOW_COMMIT {
                tracing::warn!(
                    millis = took.as_millis() as u64,
                    entries = entries.len(),
                    "slow journal commit (the disk's flush)"
                );
            }
            {
                let micros = took.as_micros() as u64;
                let mut stats = shared.stats.write().unwrap_or_else(|p| p.into_inner());
                stats.batches += 1;
                stats.entries += entries.len() as u64;
                stats.last_batch_size = entries.len() as u64;
                stats.last_commit_micros = micros;
                stats.total_commit_micros += micros;
            }
            failure = shared.failure.lock().unwrap_or_else(|p| p.into_inner());
            match r {
                Ok(()) => {
                    if let Some(last) = entries.last() {
                        shared.durable.store(last.seq, Ordering::SeqCst);
                    }
                    for (reply, result) in replies {
                        let _ = reply.send(result);
                    }
                    true
                }
                Err(error) => {
                    // No read may show the batch's figures from now on.
                    shared.stale.set(error.to_string());
                    if let JournalError::Fenced { stored, .. } = &error {
                        *shared.fenced.write().unwrap_or_else(|p| p.into_inner()) = Some(*stored);
                    }
                    *failure = Some(Failure {
                        error,
                        parked: replies.into_iter().map(|(reply, _)| reply).collect(),
                    });
                    false
                }
            }
        };
        drop(failure);
        notify(&shared, &entries);
        if let Some(done) = done {
            let _ = done.send(ok);
        }
        shared.settled.fetch_add(1, Ordering::SeqCst);
    }
}

/// What the callers of a failed batch hear: nothing of it happened.
fn refusal_of(error: &JournalError) -> LedgerError {
    match error {
        JournalError::Fenced { stored, .. } => LedgerError::Fenced(*stored),
        other => LedgerError::Storage(other.to_string()),
    }
}

/// Committed or rolled back, the figures moved: tells the readers.
fn notify(shared: &Shared, entries: &[JournalEntry]) {
    let n = *shared.changes.borrow() + 1;
    {
        let mut versions = shared.versions.write().unwrap_or_else(|p| p.into_inner());
        let mut last: Option<&str> = None;
        for e in entries {
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

/// Waits for a background snapshot and reports how it went.
fn finish_snapshot(handle: Option<JoinHandle<Result<(Duration, u64), JournalError>>>) {
    let Some(handle) = handle else { return };
    match handle.join() {
        Ok(Ok((took, bytes))) => tracing::info!(millis = took.as_millis() as u64, bytes, "snapshot stored"),
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
fn fence(shared: &Shared, epoch: i64) {
    *shared.fenced.write().unwrap_or_else(|p| p.into_inner()) = Some(epoch);
    *shared.outage.write().unwrap_or_else(|p| p.into_inner()) = None;
    let recovered = journal::recover(shared.journal().as_mut());
    if let Ok(state) = recovered {
        shared.install(state);
    }
}

/// After a failed write the memory may be ahead of the journal: connect
/// again under the same epoch and rebuild the state from what is durable.
/// Answers the outage that remains: none when healed, or a longer wait
/// while the journal is still out of reach. A newer epoch fences this
/// writer; an unreadable journal stops it writing for good.
fn heal(shared: &Shared, outage: Option<Outage>) -> Option<Outage> {
    let mut outage = outage?;
    let result = {
        let mut journal = shared.journal();
        journal.reconnect().and_then(|()| journal::recover(journal.as_mut()))
    };
    let error = match result {
        Ok(state) => {
            shared.install(state);
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
            fence(shared, stored);
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
