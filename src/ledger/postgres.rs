//! The journal on PostgreSQL, for several replicas and scale.

use postgres::{Client, NoTls};

use std::collections::HashMap;

use super::history::Archived;
use super::journal::{
    archive_row, decode, decode_closed_cycle, decode_member_cycle, decode_snapshot, encode, encode_snapshot, nanos,
    snapshot_parts, Journal, JournalError, HOLD_ID_VERSION, MIGRATIONS, SNAPSHOT_PART_BYTES,
};
use super::members::MemberCycle;
use super::model::JournalEntry;
use super::state::{ClosedCycle, State};

fn backend(e: postgres::Error) -> JournalError {
    JournalError::Backend(format!("postgres: {e}"))
}

/// How long a connection attempt may take unless the URL says otherwise.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects as the URL says, with a connect timeout and an application
/// name (`credit-operator`) unless it names its own.
fn connect(url: &str) -> Result<Client, JournalError> {
    let mut config: postgres::Config = url.parse().map_err(backend)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("credit-operator");
    }
    config.connect(NoTls).map_err(backend)
}

/// `journal.hold_id` for hold events written before the column existed.
const HOLD_ID_BACKFILL: &str =
    "UPDATE journal SET hold_id = body::json->>'id' WHERE hold_id IS NULL AND body LIKE '{\"type\":\"Hold%'";

/// Writes history records in a transaction; a stored one is kept.
fn write_archive(tx: &mut postgres::Transaction, records: &[Archived]) -> Result<(), JournalError> {
    if records.is_empty() {
        return Ok(());
    }
    let (mut c_account, mut c_number, mut c_body) = (Vec::new(), Vec::new(), Vec::new());
    let (mut m_account, mut m_user, mut m_first, mut m_last, mut m_body) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for record in records {
        let (account, user_id, first, last, body) = archive_row(record)?;
        match record {
            Archived::Cycle { .. } => {
                c_account.push(account);
                c_number.push(first);
                c_body.push(body);
            }
            Archived::Member { .. } => {
                m_account.push(account);
                m_user.push(user_id);
                m_first.push(first);
                m_last.push(last);
                m_body.push(body);
            }
        }
    }
    if !c_account.is_empty() {
        tx.execute(
            "INSERT INTO closed_cycles (account, number, body)
             SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[]) ON CONFLICT DO NOTHING",
            &[&c_account, &c_number, &c_body],
        )
        .map_err(backend)?;
    }
    if !m_account.is_empty() {
        tx.execute(
            "INSERT INTO member_cycles (account, user_id, first_cycle, last_cycle, body)
             SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::TEXT[]) ON CONFLICT DO NOTHING",
            &[&m_account, &m_user, &m_first, &m_last, &m_body],
        )
        .map_err(backend)?;
    }
    Ok(())
}

/// A journal in a PostgreSQL database.
pub struct PostgresJournal {
    client: Client,
    epoch: i64,
    url: String,
}

impl PostgresJournal {
    /// Connects, migrates and takes the next epoch, which fences off any
    /// earlier writer.
    pub fn open(url: &str) -> Result<Self, JournalError> {
        let mut client = connect(url)?;
        let mut tx = client.transaction().map_err(backend)?;
        // One migrator at a time.
        tx.batch_execute("SELECT pg_advisory_xact_lock(7223401); CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)")
            .map_err(backend)?;
        for (version, sql) in MIGRATIONS {
            let done = tx
                .query_opt("SELECT version FROM schema_migrations WHERE version = $1", &[version])
                .map_err(backend)?;
            if done.is_none() {
                tx.batch_execute(sql).map_err(backend)?;
                if *version == HOLD_ID_VERSION {
                    tx.batch_execute(HOLD_ID_BACKFILL).map_err(backend)?;
                }
                tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[version])
                    .map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)?;
        let epoch: i64 = client
            .query_one(
                "UPDATE writer_epoch SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch",
                &[],
            )
            .map_err(backend)?
            .get(0);
        Ok(PostgresJournal {
            client,
            epoch,
            url: url.to_string(),
        })
    }
}

impl Journal for PostgresJournal {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn attach(&self) -> Result<Box<dyn Journal>, JournalError> {
        let client = connect(&self.url)?;
        Ok(Box::new(PostgresJournal {
            client,
            epoch: self.epoch,
            url: self.url.clone(),
        }))
    }

    fn epoch(&self) -> i64 {
        self.epoch
    }

    fn reconnect(&mut self) -> Result<(), JournalError> {
        let mut client = connect(&self.url)?;
        let stored: i64 = client
            .query_one("SELECT epoch FROM writer_epoch WHERE id = 1", &[])
            .map_err(backend)?
            .get(0);
        // Fenced or not, the new connection reads what is durable.
        self.client = client;
        if stored != self.epoch {
            return Err(JournalError::Fenced {
                ours: self.epoch,
                stored,
            });
        }
        Ok(())
    }

    fn append(&mut self, entries: &[JournalEntry]) -> Result<(), JournalError> {
        let mut seqs = Vec::with_capacity(entries.len());
        let mut accounts = Vec::with_capacity(entries.len());
        let mut keys = Vec::with_capacity(entries.len());
        let mut ats = Vec::with_capacity(entries.len());
        let mut bodies = Vec::with_capacity(entries.len());
        let mut answers = Vec::with_capacity(entries.len());
        let mut holds = Vec::with_capacity(entries.len());
        for entry in entries {
            holds.push(entry.event.hold_id());
            seqs.push(i64::try_from(entry.seq).map_err(|_| JournalError::Backend("sequence overflow".into()))?);
            accounts.push(entry.account.as_str());
            keys.push(entry.key.as_deref());
            ats.push(nanos(entry)?);
            bodies.push(encode(entry)?);
            answers.push(entry.answer.map(|a| a.text()));
        }
        let mut tx = self.client.transaction().map_err(backend)?;
        // FOR SHARE blocks a takeover's epoch bump until this batch is in,
        // and makes every batch after the bump see the new epoch.
        let stored: i64 = tx
            .query_one("SELECT epoch FROM writer_epoch WHERE id = 1 FOR SHARE", &[])
            .map_err(backend)?
            .get(0);
        if stored != self.epoch {
            return Err(JournalError::Fenced {
                ours: self.epoch,
                stored,
            });
        }
        tx.execute(
            "INSERT INTO journal (seq, account, idem_key, recorded_at, body, answer, hold_id)
             SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], $6::TEXT[], $7::TEXT[])",
            &[&seqs, &accounts, &keys, &ats, &bodies, &answers, &holds],
        )
        .map_err(backend)?;
        let archived: Vec<Archived> = entries.iter().flat_map(|e| e.archived.0.iter().cloned()).collect();
        write_archive(&mut tx, &archived)?;
        tx.commit().map_err(backend)
    }

    fn archive(&mut self, records: &[Archived]) -> Result<(), JournalError> {
        let mut tx = self.client.transaction().map_err(backend)?;
        write_archive(&mut tx, records)?;
        tx.commit().map_err(backend)
    }

    fn history_from(&mut self) -> Result<u64, JournalError> {
        let seq: i64 = self
            .client
            .query_one("SELECT seq FROM history_from", &[])
            .map_err(backend)?
            .get(0);
        Ok(seq.max(0) as u64)
    }

    fn closed_cycle(&mut self, account: &str, number: u64) -> Result<Option<ClosedCycle>, JournalError> {
        let row = self
            .client
            .query_opt(
                "SELECT body FROM closed_cycles WHERE account = $1 AND number = $2",
                &[&account, &(number as i64)],
            )
            .map_err(backend)?;
        row.map(|r| decode_closed_cycle(r.get(0))).transpose()
    }

    fn member_cycles(
        &mut self,
        account: &str,
        cycle: u64,
        user_ids: &[&str],
    ) -> Result<HashMap<String, (u64, MemberCycle)>, JournalError> {
        // One round trip; one lookup in the primary key per member.
        let rows = self
            .client
            .query(
                "SELECT u.id, r.first_cycle, r.body FROM UNNEST($2::TEXT[]) AS u(id)
                 CROSS JOIN LATERAL (
                     SELECT first_cycle, last_cycle, body FROM member_cycles m
                     WHERE m.account = $1 AND m.user_id = u.id AND m.first_cycle <= $3
                     ORDER BY first_cycle DESC LIMIT 1
                 ) r
                 WHERE r.last_cycle >= $3",
                &[&account, &user_ids, &(cycle as i64)],
            )
            .map_err(backend)?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in rows {
            let first: i64 = row.get(1);
            found.insert(
                row.get::<_, String>(0),
                (first as u64, decode_member_cycle(row.get(2))?),
            );
        }
        Ok(found)
    }

    fn find_hold(&mut self, account: &str, id: &str) -> Result<Vec<JournalEntry>, JournalError> {
        let rows = self
            .client
            .query(
                "SELECT seq, recorded_at, idem_key, body FROM journal WHERE account = $1 AND hold_id = $2 ORDER BY seq",
                &[&account, &id],
            )
            .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.get(0);
                decode(
                    seq as u64,
                    row.get(1),
                    account.to_string(),
                    row.get(2),
                    row.get(3),
                    None,
                )
            })
            .collect()
    }

    fn latest_snapshot(&mut self) -> Result<Option<State>, JournalError> {
        // One snapshot of the database for the row and its parts: a newer
        // snapshot stored meanwhile deletes this one's parts.
        let mut tx = self
            .client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(backend)?;
        let Some(row) = tx
            .query_opt("SELECT seq, body, parts FROM snapshots ORDER BY seq DESC LIMIT 1", &[])
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let (seq, mut body, parts): (i64, String, i32) = (row.get(0), row.get(1), row.get(2));
        if parts > 0 {
            let rows = tx
                .query("SELECT body FROM snapshot_parts WHERE seq = $1 ORDER BY part", &[&seq])
                .map_err(backend)?;
            if rows.len() != parts as usize {
                return Err(JournalError::Corrupt {
                    seq: seq as u64,
                    message: format!("snapshot: {} of its {parts} parts are stored", rows.len()),
                });
            }
            body = rows.iter().map(|r| r.get::<_, &str>(0)).collect();
        }
        tx.commit().map_err(backend)?;
        decode_snapshot(seq as u64, &body).map(Some)
    }

    fn replay_after(&mut self, seq: u64, f: &mut dyn FnMut(JournalEntry)) -> Result<(), JournalError> {
        let mut after = seq as i64;
        // Page through the tail so a long journal never sits in memory at once.
        loop {
            let rows = self
                .client
                .query(
                    "SELECT seq, recorded_at, account, idem_key, body FROM journal WHERE seq > $1 ORDER BY seq LIMIT 10000",
                    &[&after],
                )
                .map_err(backend)?;
            if rows.is_empty() {
                return Ok(());
            }
            for row in rows {
                let seq: i64 = row.get(0);
                let body: &str = row.get(4);
                f(decode(seq as u64, row.get(1), row.get(2), row.get(3), body, None)?);
                after = seq;
            }
        }
    }

    fn find_key(&mut self, account: &str, key: &str) -> Result<Option<JournalEntry>, JournalError> {
        let row = self
            .client
            .query_opt(
                "SELECT seq, recorded_at, body, answer FROM journal WHERE account = $1 AND idem_key = $2",
                &[&account, &key],
            )
            .map_err(backend)?;
        let Some(row) = row else { return Ok(None) };
        let seq: i64 = row.get(0);
        let body: &str = row.get(2);
        decode(
            seq as u64,
            row.get(1),
            account.to_string(),
            Some(key.to_string()),
            body,
            row.get(3),
        )
        .map(Some)
    }

    fn save_snapshot(&mut self, state: &State) -> Result<u64, JournalError> {
        let body = encode_snapshot(state)?;
        let taken_at = i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX);
        let seq = state.last_seq as i64;
        let mut tx = self.client.transaction().map_err(backend)?;
        let stored: i64 = tx
            .query_one("SELECT epoch FROM writer_epoch WHERE id = 1 FOR SHARE", &[])
            .map_err(backend)?
            .get(0);
        if stored != self.epoch {
            return Err(JournalError::Fenced {
                ours: self.epoch,
                stored,
            });
        }
        let parts = snapshot_parts(&body, SNAPSHOT_PART_BYTES);
        let stored = tx
            .execute(
                "INSERT INTO snapshots (seq, taken_at, body, parts) VALUES ($1, $2, '', $3) ON CONFLICT (seq) DO NOTHING",
                &[&seq, &taken_at, &(parts.len() as i32)],
            )
            .map_err(backend)?;
        if stored == 1 {
            for (i, part) in parts.iter().enumerate() {
                tx.execute(
                    "INSERT INTO snapshot_parts (seq, part, body) VALUES ($1, $2, $3)",
                    &[&seq, &(i as i32), part],
                )
                .map_err(backend)?;
            }
        }
        // Older snapshots are no longer needed for recovery.
        tx.execute("DELETE FROM snapshot_parts WHERE seq < $1", &[&seq])
            .map_err(backend)?;
        tx.execute("DELETE FROM snapshots WHERE seq < $1", &[&seq])
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(body.len() as u64)
    }
}
