//! The embedded journal: one SQLite file, WAL, `synchronous=FULL`.
//!
//! Snapshots live in a second file beside it (`PATH.snapshots`), so that
//! storing one, however large, never holds the journal's write lock: the
//! writer waits for nobody but its own commits. The journal alone still
//! recovers everything; a snapshot only shortens the replay, and one that
//! is ahead of the journal (a journal restored from an older backup) is
//! ignored.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use std::collections::HashMap;

use super::history::Archived;
use super::journal::{
    archive_row, decode, decode_closed_cycle, decode_member_cycle, decode_snapshot, encode, encode_snapshot, nanos,
    snapshot_parts, Journal, JournalError, HOLD_ID_VERSION, MIGRATIONS, SNAPSHOT_PART_BYTES,
};
use super::members::MemberCycle;
use super::model::JournalEntry;
use super::state::{ClosedCycle, State};

fn backend(e: rusqlite::Error) -> JournalError {
    JournalError::Backend(format!("sqlite: {e}"))
}

/// Page cache of each connection, in KiB.
const CACHE_KIB: i64 = 64 * 1024;

fn connect(path: &str) -> Result<Connection, JournalError> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(backend)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(backend)?;
    // Pages of the journal's indexes stay in the connection's cache (the
    // default 2 MiB reads them back from the OS on every batch).
    conn.pragma_update(None, "cache_size", -CACHE_KIB).map_err(backend)?;
    Ok(conn)
}

/// The snapshot file's schema: as the journal's version 2 snapshots.
const SNAPSHOT_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS snapshots (
        seq INTEGER PRIMARY KEY,
        taken_at INTEGER NOT NULL,
        parts INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS snapshot_parts (
        seq INTEGER NOT NULL,
        part INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (seq, part)
    );";

/// The newest snapshot in a connection's `snapshots` table: its sequence
/// number and body, whole (`parts = 0`) or joined from its parts.
fn newest_snapshot(conn: &Connection) -> Result<Option<(u64, String)>, JournalError> {
    // One read transaction: a newer snapshot stored meanwhile deletes this
    // one's parts, and the reader must see both rows and parts as of one
    // moment (dropped unfinished: a read has nothing to commit).
    let conn = conn.unchecked_transaction().map_err(backend)?;
    let row: Option<(i64, i64)> = conn
        .query_row("SELECT seq, parts FROM snapshots ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(backend)?;
    let Some((seq, parts)) = row else { return Ok(None) };
    if parts == 0 {
        let body: String = conn
            .query_row("SELECT body FROM snapshots WHERE seq = ?1", [seq], |r| r.get(0))
            .map_err(backend)?;
        return Ok(Some((seq as u64, body)));
    }
    let mut stmt = conn
        .prepare("SELECT body FROM snapshot_parts WHERE seq = ?1 ORDER BY part")
        .map_err(backend)?;
    let pieces: Vec<String> = stmt
        .query_map([seq], |r| r.get(0))
        .map_err(backend)?
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    if pieces.len() != parts as usize {
        return Err(JournalError::Corrupt {
            seq: seq as u64,
            message: format!("snapshot: {} of its {parts} parts are stored", pieces.len()),
        });
    }
    Ok(Some((seq as u64, pieces.concat())))
}

const ROWS_PER_INSERT: usize = 64;

fn insert_sql(rows: usize) -> String {
    let row = "(?, ?, ?, ?, ?, ?, ?)";
    format!(
        "INSERT INTO journal (seq, account, idem_key, recorded_at, body, answer, hold_id) VALUES {}",
        vec![row; rows].join(", ")
    )
}

fn push_row(values: &mut Vec<rusqlite::types::Value>, entry: &JournalEntry) -> Result<(), JournalError> {
    use rusqlite::types::Value;
    let seq = i64::try_from(entry.seq).map_err(|_| JournalError::Backend("sequence overflow".into()))?;
    values.push(Value::Integer(seq));
    values.push(Value::Text(entry.account.clone()));
    values.push(entry.key.clone().map_or(Value::Null, Value::Text));
    values.push(Value::Integer(nanos(entry)?));
    values.push(Value::Text(encode(entry)?));
    values.push(entry.answer.map_or(Value::Null, |a| Value::Text(a.text())));
    values.push(
        entry
            .event
            .hold_id()
            .map_or(Value::Null, |id| Value::Text(id.to_string())),
    );
    Ok(())
}

/// `journal.hold_id` for hold events written before the column existed.
const HOLD_ID_BACKFILL: &str =
    "UPDATE journal SET hold_id = json_extract(body, '$.id') WHERE hold_id IS NULL AND body LIKE '{\"type\":\"Hold%'";

/// Writes history records in a transaction; a stored one is kept.
fn write_archive(tx: &rusqlite::Transaction, records: &[Archived]) -> Result<(), JournalError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut cycle = tx
        .prepare_cached("INSERT OR IGNORE INTO closed_cycles (account, number, body) VALUES (?1, ?2, ?3)")
        .map_err(backend)?;
    let mut member = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO member_cycles (account, user_id, first_cycle, last_cycle, body) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(backend)?;
    for record in records {
        let (account, user_id, first, last, body) = archive_row(record)?;
        match record {
            Archived::Cycle { .. } => cycle.execute(params![account, first, body]),
            Archived::Member { .. } => member.execute(params![account, user_id, first, last, body]),
        }
        .map_err(backend)?;
    }
    Ok(())
}

fn entry_from_row(account: &str, row: &rusqlite::Row) -> Result<JournalEntry, JournalError> {
    let seq: i64 = row.get(0).map_err(backend)?;
    let body: String = row.get(3).map_err(backend)?;
    decode(
        seq as u64,
        row.get(1).map_err(backend)?,
        account.to_string(),
        row.get(2).map_err(backend)?,
        &body,
        None,
    )
}

/// A journal in one SQLite file.
pub struct SqliteJournal {
    conn: Connection,
    epoch: i64,
    path: String,
    /// The writer's journal checkpoints the WAL on a thread of its own.
    checkpointer: Option<Checkpointer>,
}

/// WAL size past which the checkpoint thread copies pages back into the
/// database file, without waiting for anyone, as they come.
const CHECKPOINT_AT: u64 = 32 << 20;
/// WAL content past which the checkpoint thread starts the WAL over (and
/// the file is cut back to this size). Starting over takes the write lock
/// for a last copy and a flush of the database file: a pause of the
/// commits, as SQLite's own checkpoints make at every 4 MiB, here once per
/// 256 MiB of WAL (seconds apart at full load).
const RESTART_AT: u64 = 256 << 20;
/// How often the checkpoint thread looks at the WAL.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Copies the WAL back into the database file off the commit path: a
/// commit never pays for a checkpoint (SQLite's automatic checkpoint runs
/// in the connection whose commit crossed the threshold, stalling it for
/// as long as the copy takes).
struct Checkpointer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &str) -> Result<Checkpointer, JournalError> {
        let conn = connect(path)?;
        let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).map_err(backend)?;
        let page = page.max(512) as u64;
        let wal = format!("{path}-wal");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ledger-checkpoint".into())
            .spawn(move || {
                while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(CHECKPOINT_EVERY);
                    let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
                    if size < CHECKPOINT_AT {
                        continue;
                    }
                    // Copy without holding anyone up. A WAL only starts
                    // over when a checkpoint copied every frame and no
                    // commit came meanwhile, which under steady load never
                    // happens by itself: once the copy has caught up with
                    // a WAL past RESTART_AT, a RESTART takes the write lock
                    // between two commits to copy the last frames and
                    // start the WAL over.
                    for mode in ["PASSIVE", "RESTART"] {
                        let started = std::time::Instant::now();
                        let done = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                        });
                        match done {
                            Ok((busy, frames, copied)) => {
                                tracing::debug!(
                                    mode,
                                    wal_bytes = size,
                                    frames,
                                    copied,
                                    busy,
                                    millis = started.elapsed().as_millis() as u64,
                                    "WAL checkpoint"
                                );
                                if copied < frames || (frames.max(0) as u64) * page < RESTART_AT {
                                    break;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "WAL checkpoint failed; the next one tries again");
                                break;
                            }
                        }
                    }
                }
            })
            .map_err(|e| JournalError::Backend(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl SqliteJournal {
    /// Opens (or creates) the file, migrates it and takes the next epoch.
    pub fn open(path: &str) -> Result<Self, JournalError> {
        let conn = connect(path)?;
        conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)")
            .map_err(backend)?;
        let mut journal = SqliteJournal {
            conn,
            epoch: 0,
            path: path.to_string(),
            checkpointer: None,
        };
        journal.migrate()?;
        // Checkpoints happen on the checkpoint thread; a WAL that was
        // reset is cut back to this size.
        journal
            .conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(backend)?;
        journal
            .conn
            .pragma_update(None, "journal_size_limit", RESTART_AT as i64)
            .map_err(backend)?;
        journal.checkpointer = Some(Checkpointer::start(path)?);
        journal.epoch = journal
            .conn
            .query_row(
                "UPDATE writer_epoch SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch",
                [],
                |r| r.get(0),
            )
            .map_err(backend)?;
        Ok(journal)
    }

    /// A second connection under the same epoch (for background snapshots).
    pub fn attach(&self) -> Result<Self, JournalError> {
        Ok(SqliteJournal {
            conn: connect(&self.path)?,
            epoch: self.epoch,
            path: self.path.clone(),
            checkpointer: None,
        })
    }

    /// The file beside the journal that holds its snapshots.
    fn snapshots_path(&self) -> String {
        format!("{}.snapshots", self.path)
    }

    fn migrate(&mut self) -> Result<(), JournalError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        for (version, sql) in MIGRATIONS {
            let done: Option<i64> = tx
                .query_row(
                    "SELECT version FROM schema_migrations WHERE version = ?1",
                    [version],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            if done.is_none() {
                tx.execute_batch(sql).map_err(backend)?;
                if *version == HOLD_ID_VERSION {
                    tx.execute_batch(HOLD_ID_BACKFILL).map_err(backend)?;
                }
                tx.execute("INSERT INTO schema_migrations (version) VALUES (?1)", [version])
                    .map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)
    }
}

impl Journal for SqliteJournal {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn attach(&self) -> Result<Box<dyn Journal>, JournalError> {
        Ok(Box::new(SqliteJournal::attach(self)?))
    }

    fn epoch(&self) -> i64 {
        self.epoch
    }

    fn append(&mut self, entries: &[JournalEntry]) -> Result<(), JournalError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let stored: i64 = tx
            .query_row("SELECT epoch FROM writer_epoch WHERE id = 1", [], |r| r.get(0))
            .map_err(backend)?;
        if stored != self.epoch {
            return Err(JournalError::Fenced {
                ours: self.epoch,
                stored,
            });
        }
        // Many rows per statement: the per-statement cost is paid once per
        // ROWS_PER_INSERT entries instead of once per entry.
        let mut chunks = entries.chunks_exact(ROWS_PER_INSERT);
        {
            let mut insert = tx.prepare_cached(&insert_sql(ROWS_PER_INSERT)).map_err(backend)?;
            for chunk in &mut chunks {
                let mut values: Vec<rusqlite::types::Value> = Vec::with_capacity(ROWS_PER_INSERT * 6);
                for entry in chunk {
                    push_row(&mut values, entry)?;
                }
                insert.execute(rusqlite::params_from_iter(values)).map_err(backend)?;
            }
        }
        {
            let mut insert = tx.prepare_cached(&insert_sql(1)).map_err(backend)?;
            for entry in chunks.remainder() {
                let seq = i64::try_from(entry.seq).map_err(|_| JournalError::Backend("sequence overflow".into()))?;
                insert
                    .execute(params![
                        seq,
                        entry.account,
                        entry.key,
                        nanos(entry)?,
                        encode(entry)?,
                        entry.answer.map(|a| a.text()),
                        entry.event.hold_id()
                    ])
                    .map_err(backend)?;
            }
        }
        for entry in entries.iter().filter(|e| !e.archived.is_empty()) {
            write_archive(&tx, &entry.archived.0)?;
        }
        tx.commit().map_err(backend)
    }

    fn archive(&mut self, records: &[Archived]) -> Result<(), JournalError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        write_archive(&tx, records)?;
        tx.commit().map_err(backend)
    }

    fn history_from(&mut self) -> Result<u64, JournalError> {
        let seq: i64 = self
            .conn
            .query_row("SELECT seq FROM history_from", [], |r| r.get(0))
            .map_err(backend)?;
        Ok(seq.max(0) as u64)
    }

    fn closed_cycle(&mut self, account: &str, number: u64) -> Result<Option<ClosedCycle>, JournalError> {
        let body: Option<String> = self
            .conn
            .query_row(
                "SELECT body FROM closed_cycles WHERE account = ?1 AND number = ?2",
                params![account, number as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        body.map(|b| decode_closed_cycle(&b)).transpose()
    }

    fn member_cycles(
        &mut self,
        account: &str,
        cycle: u64,
        user_ids: &[&str],
    ) -> Result<HashMap<String, (u64, MemberCycle)>, JournalError> {
        // One lookup in the primary key per member: no scan, whatever the
        // number of cycles an account has lived.
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT first_cycle, last_cycle, body FROM member_cycles
                 WHERE account = ?1 AND user_id = ?2 AND first_cycle <= ?3 ORDER BY first_cycle DESC LIMIT 1",
            )
            .map_err(backend)?;
        let mut found = HashMap::new();
        for user_id in user_ids {
            let row: Option<(i64, i64, String)> = stmt
                .query_row(params![account, user_id, cycle as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
                .map_err(backend)?;
            if let Some((first, _, body)) = row.filter(|(_, last, _)| *last >= cycle as i64) {
                found.insert(user_id.to_string(), (first as u64, decode_member_cycle(&body)?));
            }
        }
        Ok(found)
    }

    fn find_hold(&mut self, account: &str, id: &str) -> Result<Vec<JournalEntry>, JournalError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, recorded_at, idem_key, body FROM journal WHERE account = ?1 AND hold_id = ?2 ORDER BY seq",
            )
            .map_err(backend)?;
        let mut rows = stmt.query(params![account, id]).map_err(backend)?;
        let mut entries = Vec::new();
        while let Some(row) = rows.next().map_err(backend)? {
            entries.push(entry_from_row(account, row)?);
        }
        Ok(entries)
    }

    fn latest_snapshot(&mut self) -> Result<Option<State>, JournalError> {
        // Snapshots written before they had a file of their own.
        let mut newest = newest_snapshot(&self.conn)?;
        if std::path::Path::new(&self.snapshots_path()).exists() {
            let file = connect(&self.snapshots_path())?;
            file.execute_batch(SNAPSHOT_SCHEMA).map_err(backend)?;
            if let Some((seq, body)) = newest_snapshot(&file)? {
                let in_journal: bool = self
                    .conn
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM journal WHERE seq = ?1)",
                        [seq as i64],
                        |r| r.get(0),
                    )
                    .map_err(backend)?;
                if !in_journal {
                    tracing::warn!(
                        seq,
                        file = %self.snapshots_path(),
                        "the snapshot is ahead of the journal (a journal restored from an older backup?); replaying the journal instead"
                    );
                } else if newest.as_ref().is_none_or(|(old, _)| *old < seq) {
                    newest = Some((seq, body));
                }
            }
        }
        newest.map(|(seq, body)| decode_snapshot(seq, &body)).transpose()
    }

    fn replay_after(&mut self, seq: u64, f: &mut dyn FnMut(JournalEntry)) -> Result<(), JournalError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, recorded_at, account, idem_key, body FROM journal WHERE seq > ?1 ORDER BY seq")
            .map_err(backend)?;
        let mut rows = stmt.query([seq as i64]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            let seq: i64 = row.get(0).map_err(backend)?;
            let body: String = row.get(4).map_err(backend)?;
            let entry = decode(
                seq as u64,
                row.get(1).map_err(backend)?,
                row.get(2).map_err(backend)?,
                row.get(3).map_err(backend)?,
                &body,
                None,
            )?;
            f(entry);
        }
        Ok(())
    }

    fn find_key(&mut self, account: &str, key: &str) -> Result<Option<JournalEntry>, JournalError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, recorded_at, body, answer FROM journal WHERE account = ?1 AND idem_key = ?2")
            .map_err(backend)?;
        let mut rows = stmt.query(params![account, key]).map_err(backend)?;
        let Some(row) = rows.next().map_err(backend)? else {
            return Ok(None);
        };
        let seq: i64 = row.get(0).map_err(backend)?;
        let body: String = row.get(2).map_err(backend)?;
        decode(
            seq as u64,
            row.get(1).map_err(backend)?,
            account.to_string(),
            Some(key.to_string()),
            &body,
            row.get(3).map_err(backend)?,
        )
        .map(Some)
    }

    fn save_snapshot(&mut self, state: &State) -> Result<u64, JournalError> {
        let body = encode_snapshot(state)?;
        let taken_at = i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX);
        let seq = state.last_seq as i64;
        let parts = snapshot_parts(&body, SNAPSHOT_PART_BYTES);
        // The snapshot file's own lock: the journal's writer never waits.
        let mut file = connect(&self.snapshots_path())?;
        file.execute_batch(SNAPSHOT_SCHEMA).map_err(backend)?;
        let tx = file
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let stored = tx
            .execute(
                "INSERT INTO snapshots (seq, taken_at, parts) VALUES (?1, ?2, ?3) ON CONFLICT (seq) DO NOTHING",
                params![seq, taken_at, parts.len() as i64],
            )
            .map_err(backend)?;
        if stored == 1 {
            let mut insert = tx
                .prepare("INSERT INTO snapshot_parts (seq, part, body) VALUES (?1, ?2, ?3)")
                .map_err(backend)?;
            for (i, part) in parts.iter().enumerate() {
                insert.execute(params![seq, i as i64, part]).map_err(backend)?;
            }
        }
        // Older snapshots are no longer needed for recovery.
        tx.execute("DELETE FROM snapshot_parts WHERE seq < ?1", [seq])
            .map_err(backend)?;
        tx.execute("DELETE FROM snapshots WHERE seq < ?1", [seq])
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        // Snapshots in the journal's own file are older now: drop them
        // (a short write, once).
        let legacy: bool = self
            .conn
            .query_row("SELECT EXISTS (SELECT 1 FROM snapshots)", [], |r| r.get(0))
            .map_err(backend)?;
        if legacy {
            self.conn.execute("DELETE FROM snapshots", []).map_err(backend)?;
        }
        Ok(body.len() as u64)
    }
}
