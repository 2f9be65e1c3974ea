//! The durable journal: append-only entries, group-committed, plus
//! snapshots of the whole state. Two backends implement it.

use std::collections::HashMap;

use super::error::LedgerError;
use super::history::Archived;
use super::members::MemberCycle;
use super::model::JournalEntry;
use super::state::{ClosedCycle, State};

/// Why the journal failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{0}")]
    Backend(String),
    /// The stored epoch is newer than this writer's.
    #[error("fenced: epoch {stored} has replaced this writer's epoch {ours}")]
    Fenced { ours: i64, stored: i64 },
    #[error("journal entry {seq} is unreadable: {message}")]
    Corrupt { seq: u64, message: String },
    #[error("unsupported ledger URL {0:?}: use sqlite://PATH or postgres://…")]
    BadUrl(String),
}

impl From<JournalError> for LedgerError {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::Fenced { stored, .. } => LedgerError::Fenced(stored),
            other => LedgerError::Storage(other.to_string()),
        }
    }
}

/// Where the ledger keeps its journal and snapshots.
pub trait Journal: Send + 'static {
    /// Which backend this is (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;
    /// The epoch this writer holds.
    fn epoch(&self) -> i64;
    /// Another connection to the same journal under the same epoch, for
    /// work off the writer thread (snapshots).
    fn attach(&self) -> Result<Box<dyn Journal>, JournalError>;
    /// Writes a batch in one transaction, only while this writer's epoch
    /// is still the stored one, with the history records its entries
    /// carry. All or nothing.
    fn append(&mut self, entries: &[JournalEntry]) -> Result<(), JournalError>;
    /// Writes history records that may be stored already (those a replay
    /// produced again, those of an older snapshot); a stored one is kept.
    fn archive(&mut self, records: &[Archived]) -> Result<(), JournalError>;
    /// The last entry written before the history tables existed: records
    /// of entries up to it were never written with them.
    fn history_from(&mut self) -> Result<u64, JournalError>;
    /// A closed cycle of an account.
    fn closed_cycle(&mut self, account: &str, number: u64) -> Result<Option<ClosedCycle>, JournalError>;
    /// For each of `user_ids` that has one, the record whose range holds
    /// `cycle`, as `user id → (first, record)`.
    fn member_cycles(
        &mut self,
        account: &str,
        cycle: u64,
        user_ids: &[&str],
    ) -> Result<HashMap<String, (u64, MemberCycle)>, JournalError>;
    /// Every entry of one hold, in order (the journal's index of holds).
    fn find_hold(&mut self, account: &str, id: &str) -> Result<Vec<JournalEntry>, JournalError>;
    /// The newest snapshot: the state as of its last sequence number.
    fn latest_snapshot(&mut self) -> Result<Option<State>, JournalError>;
    /// Entries after `seq`, in order, handed to `f`.
    fn replay_after(&mut self, seq: u64, f: &mut dyn FnMut(JournalEntry)) -> Result<(), JournalError>;
    /// The entry that recorded `key` in `account`, with its stored first
    /// answer: the journal's unique index holds every key for good.
    fn find_key(&mut self, account: &str, key: &str) -> Result<Option<JournalEntry>, JournalError>;
    /// Stores a snapshot of `state` (as of `state.last_seq`); answers its
    /// size in bytes.
    fn save_snapshot(&mut self, state: &State) -> Result<u64, JournalError>;
    /// After a failed write: a fresh connection under the same epoch,
    /// fenced when another writer has taken a newer one meanwhile. A
    /// backend whose connection cannot drop (a local file) keeps its own.
    fn reconnect(&mut self) -> Result<(), JournalError> {
        Ok(())
    }
}

/// Opens the journal a URL names: `sqlite://PATH` or `postgres://…`.
pub fn open(url: &str) -> Result<Box<dyn Journal>, JournalError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Box::new(super::sqlite::SqliteJournal::open(path)?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Box::new(super::postgres::PostgresJournal::open(url)?));
    }
    Err(JournalError::BadUrl(url.to_string()))
}

/// Rebuilds the state: the newest snapshot, then every later entry. The
/// history records an older snapshot kept in memory, and those of entries
/// written before the history tables existed, are stored on the way.
pub fn recover(journal: &mut dyn Journal) -> Result<State, JournalError> {
    let mut state = journal.latest_snapshot()?.unwrap_or_default();
    let mut records = state.take_legacy();
    let history_from = journal.history_from()?;
    let mut gap = None;
    journal.replay_after(state.last_seq, &mut |entry| {
        if gap.is_none() && entry.seq != state.last_seq + 1 {
            gap = Some((state.last_seq, entry.seq));
        }
        state.apply(&entry);
        let archived = state.take_archived(&entry.account);
        if entry.seq <= history_from {
            records.extend(archived.0);
        }
    })?;
    if let Some((after, found)) = gap {
        return Err(JournalError::Corrupt {
            seq: found,
            message: format!("expected entry {} next", after + 1),
        });
    }
    if !records.is_empty() {
        journal.archive(&records)?;
    }
    Ok(state)
}

/// A history record as a row: account, user id (empty for a cycle),
/// first and last cycle, body.
pub(crate) fn archive_row(record: &Archived) -> Result<(&str, &str, i64, i64, String), JournalError> {
    match record {
        Archived::Cycle { account, cycle } => {
            let n = cycle_number(cycle.window.number)?;
            Ok((account, "", n, n, to_json(cycle)?))
        }
        Archived::Member {
            account,
            user_id,
            first,
            last,
            record,
        } => Ok((
            account,
            user_id,
            cycle_number(*first)?,
            cycle_number(*last)?,
            to_json(record)?,
        )),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, JournalError> {
    serde_json::to_string(value).map_err(|e| JournalError::Backend(format!("encoding a history record: {e}")))
}

fn cycle_number(n: u64) -> Result<i64, JournalError> {
    i64::try_from(n).map_err(|_| JournalError::Backend(format!("cycle number {n} is out of range")))
}

/// Decodes a closed cycle's stored body.
pub(crate) fn decode_closed_cycle(body: &str) -> Result<ClosedCycle, JournalError> {
    crate::amount::reading_records(|| serde_json::from_str(body))
        .map_err(|e| JournalError::Backend(format!("a closed cycle's record is unreadable: {e}")))
}

/// Decodes a member's stored record of a cycle.
pub(crate) fn decode_member_cycle(body: &str) -> Result<MemberCycle, JournalError> {
    crate::amount::reading_records(|| serde_json::from_str(body))
        .map_err(|e| JournalError::Backend(format!("a member's record of a cycle is unreadable: {e}")))
}

/// Encodes an event for storage.
pub(crate) fn encode(entry: &JournalEntry) -> Result<String, JournalError> {
    serde_json::to_string(&entry.event).map_err(|e| JournalError::Backend(format!("encoding entry {}: {e}", entry.seq)))
}

/// Encodes the whole state for a snapshot.
pub fn encode_snapshot(state: &State) -> Result<String, JournalError> {
    serde_json::to_string(state).map_err(|e| JournalError::Backend(format!("encoding snapshot: {e}")))
}

/// Decodes a snapshot taken at `seq`. Its amounts are read at the
/// decimal's full size: a running total may pass the 18 digits an input
/// is capped at, and whatever the live state holds must restore.
pub fn decode_snapshot(seq: u64, body: &str) -> Result<State, JournalError> {
    crate::amount::reading_records(|| serde_json::from_str(body)).map_err(|e| JournalError::Corrupt {
        seq,
        message: format!("snapshot: {e}"),
    })
}

/// Most bytes of a snapshot stored in one value: far below the 1 GB both
/// databases allow in one text value, however large the state grows.
pub const SNAPSHOT_PART_BYTES: usize = 64 << 20;

/// `body` cut into pieces of at most `max` bytes, each ending on a
/// character boundary; joined in order they are `body` again.
pub fn snapshot_parts(body: &str, max: usize) -> Vec<&str> {
    let mut parts = Vec::with_capacity(body.len() / max.max(1) + 1);
    let mut rest = body;
    while !rest.is_empty() {
        let mut end = rest.len().min(max.max(4));
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (part, tail) = rest.split_at(end);
        parts.push(part);
        rest = tail;
    }
    parts
}

/// Decodes a stored event (its amounts read as records, like a snapshot's).
pub(crate) fn decode(
    seq: u64,
    at_nanos: i64,
    account: String,
    key: Option<String>,
    body: &str,
    answer: Option<String>,
) -> Result<JournalEntry, JournalError> {
    let event = crate::amount::reading_records(|| serde_json::from_str(body)).map_err(|e| JournalError::Corrupt {
        seq,
        message: e.to_string(),
    })?;
    let answer = answer.as_deref().and_then(super::keys::StoredAnswer::parse);
    let at = jiff::Timestamp::from_nanosecond(i128::from(at_nanos)).map_err(|e| JournalError::Corrupt {
        seq,
        message: e.to_string(),
    })?;
    Ok(JournalEntry {
        seq,
        at,
        account,
        key,
        event,
        answer,
        archived: Default::default(),
    })
}

/// A timestamp as stored: nanoseconds since the epoch.
pub(crate) fn nanos(entry: &JournalEntry) -> Result<i64, JournalError> {
    i64::try_from(entry.at.as_nanosecond())
        .map_err(|_| JournalError::Backend(format!("entry {} has a time outside 1677–2262", entry.seq)))
}

/// Schema versions, applied in order by both backends.
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE journal (
        seq BIGINT PRIMARY KEY,
        account TEXT NOT NULL,
        idem_key TEXT,
        recorded_at BIGINT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE UNIQUE INDEX journal_idem ON journal (account, idem_key) WHERE idem_key IS NOT NULL;
    CREATE TABLE snapshots (
        seq BIGINT PRIMARY KEY,
        taken_at BIGINT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE writer_epoch (
        id INTEGER PRIMARY KEY,
        epoch BIGINT NOT NULL
    );
    INSERT INTO writer_epoch (id, epoch) VALUES (1, 0);",
    ),
    // Snapshots in parts of at most SNAPSHOT_PART_BYTES; `parts = 0` is a
    // snapshot of version 1, whole in `snapshots.body`. (SQLite keeps new
    // snapshots in a file of their own, see `sqlite`.)
    (
        2,
        "ALTER TABLE snapshots ADD COLUMN parts INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE snapshot_parts (
        seq BIGINT NOT NULL,
        part INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (seq, part)
    );",
    ),
    // A keyed entry's first answer, beside its event, for a retry after
    // the key left memory (see `keys`).
    (3, "ALTER TABLE journal ADD COLUMN answer TEXT;"),
    // Closed cycles and members' records of them (see `history`), and an
    // index of hold events for holds that left memory. `history_from`
    // marks the last entry written before: replay stores what those left.
    // Each backend fills `hold_id` of older hold events (HOLD_ID_BACKFILL).
    (
        4,
        "CREATE TABLE closed_cycles (
        account TEXT NOT NULL,
        number BIGINT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (account, number)
    );
    CREATE TABLE member_cycles (
        account TEXT NOT NULL,
        user_id TEXT NOT NULL,
        first_cycle BIGINT NOT NULL,
        last_cycle BIGINT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (account, user_id, first_cycle)
    );
    CREATE TABLE history_from AS SELECT COALESCE(MAX(seq), 0) AS seq FROM journal;
    ALTER TABLE journal ADD COLUMN hold_id TEXT;
    CREATE INDEX journal_hold ON journal (account, hold_id) WHERE hold_id IS NOT NULL;",
    ),
];

/// The version whose migration each backend follows with its own fill of
/// `journal.hold_id` for the hold events already written, and the index.
pub(crate) const HOLD_ID_VERSION: i64 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_parts_end_on_character_boundaries_and_join_to_the_body() {
        let body = "ab€cd€€e".repeat(50);
        for max in [4, 5, 7, 64, 10_000] {
            let parts = snapshot_parts(&body, max);
            assert!(parts.iter().all(|p| p.len() <= max.max(4) && !p.is_empty()), "{max}");
            assert_eq!(parts.concat(), body, "{max}");
        }
        assert_eq!(snapshot_parts(&body, 10_000).len(), 1);
        assert_eq!(snapshot_parts(&"x".repeat(10), 4), vec!["xxxx", "xxxx", "xx"]);
        assert!(snapshot_parts("", 4).is_empty());
    }
}
