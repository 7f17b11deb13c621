//! The durable job store: an embedded SQLite database (WAL) holding response jobs (session resets
//! keyed by decision id, notification deliveries keyed by notification id) and audit entries keyed
//! by their own id. Inserting an id that exists is a no-op, which is
//! what makes a replay or a restart never reset or record twice. Jobs move from `pending` to
//! `done`, or to `dead` (the dead-letter state, with the last error) when retries run out.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::Path;

use super::notify::Notification;
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
    #[error("job store {path} has schema version {found}; this aer uses version {expected}")]
    Version {
        path: String,
        found: i64,
        expected: i64,
    },
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
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Done => "done",
            JobState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        match s {
            "pending" => Some(JobState::Pending),
            "done" => Some(JobState::Done),
            "dead" => Some(JobState::Dead),
            _ => None,
        }
    }
}

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// End a user's sessions (`subject` = the user id).
    Reset,
    /// Deliver a notification (`subject` = the recipient's address).
    Notify,
}

impl JobKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobKind::Reset => "reset",
            JobKind::Notify => "notify",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        match s {
            "reset" => Some(JobKind::Reset),
            "notify" => Some(JobKind::Notify),
            _ => None,
        }
    }
}

/// A response job: a session reset or a notification delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The idempotency key: the decision id for a reset, the notification id for a delivery.
    pub id: String,
    pub kind: JobKind,
    pub enterprise: String,
    /// The user whose sessions to reset, or the recipient's address.
    pub subject: String,
    /// The event time the job stems from (decision time, or a notification's send time).
    pub event_time: u64,
    pub state: JobState,
    pub attempts: u32,
    /// Wall-clock milliseconds before which the job is not tried again.
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    /// The job's data: `{"session": ...}` for a reset, the notification for a delivery.
    pub payload: serde_json::Value,
}

impl Job {
    /// The originating session of a reset job.
    pub fn session(&self) -> Option<&str> {
        self.payload["session"].as_str()
    }
}

/// The store. One connection; callers serialise access.
pub struct JobStore {
    conn: Connection,
}

/// The schema version kept in `PRAGMA user_version`; a store of another version is refused.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    enterprise TEXT NOT NULL,
    subject TEXT NOT NULL,
    event_time INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    last_error TEXT,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_attempt_ms);
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
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
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open)?;
        let has_tables: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .map_err(open)?;
        if has_tables && found != SCHEMA_VERSION {
            return Err(StoreError::Version {
                path: path.display().to_string(),
                found,
                expected: SCHEMA_VERSION,
            });
        }
        conn.execute_batch(SCHEMA).map_err(open)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(open)?;
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
        let payload = serde_json::json!({ "session": decision.anomaly.session_id });
        self.enqueue(
            &decision.id,
            JobKind::Reset,
            &decision.enterprise,
            &decision.user,
            decision.decided_at,
            &payload,
            now_ms,
        )
    }

    /// Adds the delivery job of a notification; returns false when it was already there.
    pub fn enqueue_notification(
        &self,
        notification: &Notification,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.enqueue(
            &notification.id,
            JobKind::Notify,
            &notification.enterprise,
            &notification.recipient.address,
            notification.send_at,
            &serde_json::to_value(notification)?,
            now_ms,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &self,
        id: &str,
        kind: JobKind,
        enterprise: &str,
        subject: &str,
        event_time: u64,
        payload: &serde_json::Value,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO jobs (id, kind, enterprise, subject, event_time, state, attempts, next_attempt_ms, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?7)",
            params![
                id,
                kind.as_str(),
                enterprise,
                subject,
                event_time as i64,
                now_ms,
                serde_json::to_string(payload)?
            ],
        )?;
        Ok(n == 1)
    }

    /// Runs `f` in one transaction: all of its writes land, or none.
    pub fn atomically<T>(
        &self,
        f: impl FnOnce(&JobStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(self) {
            Ok(value) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(value)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
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

    /// Audit entries of one enterprise from `since` (event time), the newest `limit`, oldest
    /// first.
    pub fn audit_for(
        &self,
        enterprise: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT entry FROM (SELECT entry, date_create, id FROM audit
               WHERE json_extract(entry, '$.context.location.id') = ?1 AND date_create >= ?2
               ORDER BY date_create DESC, id DESC LIMIT ?3)
             ORDER BY date_create, id",
        )?;
        let rows = stmt.query_map(params![enterprise, since as i64, limit as i64], |r| {
            r.get::<_, String>(0)
        })?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?)?);
        }
        Ok(out)
    }

    /// A source's saved position (for example the Slack Audit Logs API poller's checkpoint).
    pub fn cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM cursors WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Saves a source's position.
    pub fn set_cursor(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO cursors (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            params![name, value],
        )?;
        Ok(())
    }

    /// (kind, state, count) of every job kind and state present.
    pub fn job_counts(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT kind, state, count(*) FROM jobs GROUP BY kind, state")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
        let bad = |i: usize, what: &str, v: String| {
            rusqlite::Error::FromSqlConversionFailure(
                i,
                rusqlite::types::Type::Text,
                format!("unknown job {what} {v:?}").into(),
            )
        };
        let kind: String = r.get(1)?;
        let state: String = r.get(5)?;
        let payload: String = r.get(9)?;
        Ok(Job {
            id: r.get(0)?,
            kind: JobKind::parse(&kind).ok_or_else(|| bad(1, "kind", kind.clone()))?,
            enterprise: r.get(2)?,
            subject: r.get(3)?,
            event_time: r.get::<_, i64>(4)? as u64,
            state: JobState::parse(&state).ok_or_else(|| bad(5, "state", state.clone()))?,
            attempts: r.get::<_, i64>(6)? as u32,
            next_attempt_ms: r.get(7)?,
            last_error: r.get(8)?,
            payload: serde_json::from_str(&payload).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(9, rusqlite::types::Type::Text, e.into())
            })?,
        })
    }

    const COLUMNS: &'static str =
        "id, kind, enterprise, subject, event_time, state, attempts, next_attempt_ms, last_error, payload";

    /// Pending jobs due at `now_ms`, oldest event first.
    pub fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<Job>, StoreError> {
        let sql = format!(
            "SELECT {} FROM jobs WHERE state = 'pending' AND next_attempt_ms <= ?1
             ORDER BY event_time, id LIMIT ?2",
            Self::COLUMNS
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![now_ms, limit as i64], Self::job_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When the earliest pending job is next due (wall-clock ms), if any job is pending.
    pub fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.conn.query_row(
            "SELECT min(next_attempt_ms) FROM jobs WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )?)
    }

    /// Jobs of a kind and in a state (all when `None`), oldest event first.
    pub fn jobs(
        &self,
        kind: Option<JobKind>,
        state: Option<JobState>,
    ) -> Result<Vec<Job>, StoreError> {
        let sql = format!(
            "SELECT {} FROM jobs WHERE (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR state = ?2)
             ORDER BY event_time, id",
            Self::COLUMNS
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(
            params![kind.map(|k| k.as_str()), state.map(|s| s.as_str())],
            Self::job_from_row,
        )?;
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
