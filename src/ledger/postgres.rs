//! The journal on PostgreSQL, for several replicas and scale.

use postgres::{Client, NoTls};

use super::journal::{
    decode, decode_snapshot, encode, encode_snapshot, nanos, snapshot_parts, Journal, JournalError, MIGRATIONS,
    SNAPSHOT_PART_BYTES,
};
use super::model::JournalEntry;
use super::state::State;

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
        for entry in entries {
            seqs.push(i64::try_from(entry.seq).map_err(|_| JournalError::Backend("sequence overflow".into()))?);
            accounts.push(entry.account.as_str());
            keys.push(entry.key.as_deref());
            ats.push(nanos(entry)?);
            bodies.push(encode(entry)?);
            answers.push(entry.answer.as_deref());
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
            "INSERT INTO journal (seq, account, idem_key, recorded_at, body, answer)
             SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], $6::TEXT[])",
            &[&seqs, &accounts, &keys, &ats, &bodies, &answers],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
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

    fn save_snapshot(&mut self, state: &State) -> Result<(), JournalError> {
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
        tx.commit().map_err(backend)
    }
}
