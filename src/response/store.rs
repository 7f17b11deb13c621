//! The durable job store: an embedded SQLite database (WAL) holding reset jobs keyed by decision
//! id and audit entries keyed by their own id. Inserting an id that exists is a no-op, which is
//! what makes a replay or a restart never reset or record twice. Jobs move from `pending` to
//! `done`, or to `dead` (the dead-letter state, with the last error) when retries run out.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::model::decision::Decision;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job store {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("job store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("job store holds a bad record: {0}")]
    Decode(#[from] serde_json::Error),
}

/// A job's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Done,
    Dead,
}

impl JobState {
    fn as_str(&self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Done => "done",
            JobState::Dead => "dead",
        }
    }

    fn parse(s: &str) -> JobState {
        match s {
            "done" => JobState::Done,
            "dead" => JobState::Dead,
            _ => JobState::Pending,
        }
    }
}

/// A session reset job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The decision id: one job per decision, ever.
    pub id: String,
    pub enterprise: String,
    pub user: String,
    pub session: Option<String>,
    /// The event time of the decision.
    pub decided_at: u64,
    pub state: JobState,
    pub attempts: u32,
    /// Wall-clock milliseconds before which the job is not tried again.
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
}

/// The store. One connection; callers serialise access.
pub struct JobStore {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    enterprise TEXT NOT NULL,
    user TEXT NOT NULL,
    session TEXT,
    decided_at INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_attempt_ms);
CREATE TABLE IF NOT EXISTS audit (
    id TEXT PRIMARY KEY,
    date_create INTEGER NOT NULL,
    entry TEXT NOT NULL
);
";

impl JobStore {
    /// Opens (creating if needed) the database at `path`, in WAL mode.
    pub fn open(path: &Path) -> Result<JobStore, StoreError> {
        let open = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open)?;
        conn.execute_batch(SCHEMA).map_err(open)?;
        Ok(JobStore { conn })
    }

    /// A throw-away store, for tests.
    pub fn in_memory() -> Result<JobStore, StoreError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(JobStore { conn })
    }

    /// Adds the reset job of a decision; returns false when it was already there.
    pub fn enqueue_reset(&self, decision: &Decision, now_ms: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO jobs (id, enterprise, user, session, decided_at, state, attempts, next_attempt_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6)",
            params![
                decision.id,
                decision.enterprise,
                decision.user,
                decision.anomaly.session_id,
                decision.decided_at as i64,
                now_ms
            ],
        )?;
        Ok(n == 1)
    }

    /// Appends an audit entry (with a string `id` and integer `date_create`); false if present.
    pub fn append_audit(&self, entry: &serde_json::Value) -> Result<bool, StoreError> {
        let id = entry["id"].as_str().unwrap_or_default();
        let at = entry["date_create"].as_i64().unwrap_or_default();
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO audit (id, date_create, entry) VALUES (?1, ?2, ?3)",
            params![id, at, serde_json::to_string(entry)?],
        )?;
        Ok(n == 1)
    }

    /// Every audit entry, ordered by (date_create, id).
    pub fn audit_entries(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT entry FROM audit ORDER BY date_create, id")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?)?);
        }
        Ok(out)
    }

    fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
        Ok(Job {
            id: r.get(0)?,
            enterprise: r.get(1)?,
            user: r.get(2)?,
            session: r.get(3)?,
            decided_at: r.get::<_, i64>(4)? as u64,
            state: JobState::parse(&r.get::<_, String>(5)?),
            attempts: r.get::<_, i64>(6)? as u32,
            next_attempt_ms: r.get(7)?,
            last_error: r.get(8)?,
        })
    }

    const COLUMNS: &'static str =
        "id, enterprise, user, session, decided_at, state, attempts, next_attempt_ms, last_error";

    /// Pending jobs due at `now_ms`, oldest decision first.
    pub fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<Job>, StoreError> {
        let sql = format!(
            "SELECT {} FROM jobs WHERE state = 'pending' AND next_attempt_ms <= ?1
             ORDER BY decided_at, id LIMIT ?2",
            Self::COLUMNS
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![now_ms, limit as i64], Self::job_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Jobs in a state (all when `None`), oldest decision first.
    pub fn jobs(&self, state: Option<JobState>) -> Result<Vec<Job>, StoreError> {
        let sql = format!(
            "SELECT {} FROM jobs WHERE ?1 IS NULL OR state = ?1 ORDER BY decided_at, id",
            Self::COLUMNS
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![state.map(|s| s.as_str())], Self::job_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let sql = format!("SELECT {} FROM jobs WHERE id = ?1", Self::COLUMNS);
        Ok(self
            .conn
            .query_row(&sql, params![id], Self::job_from_row)
            .optional()?)
    }

    /// Records an attempt's outcome.
    pub fn record(
        &self,
        id: &str,
        state: JobState,
        attempts: u32,
        next_attempt_ms: i64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE jobs SET state = ?2, attempts = ?3, next_attempt_ms = ?4,
             last_error = COALESCE(?5, last_error) WHERE id = ?1",
            params![id, state.as_str(), attempts as i64, next_attempt_ms, error],
        )?;
        Ok(())
    }
}
