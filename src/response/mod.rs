//! The response stage (DESIGN 6), fed by final decisions: durable, idempotent session-reset jobs
//! in an embedded SQLite store ([`store`]), executed by a reset backend ([`reset`]) with
//! exponential backoff and jitter and a dead-letter state, and Slack-shaped audit entries
//! ([`audit`]). Notifications are not built yet.

pub mod audit;
pub mod reset;
pub mod store;

use rand::Rng;

use crate::model::decision::Decision;
use reset::{ResetBackend, ResetError};
use store::{JobState, JobStore, StoreError};

/// Retry schedule: attempt n (from 1) waits base x 2^(n-1), capped, times a jitter in
/// [1 - jitter, 1 + jitter], and never less than a backend's Retry-After.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub base_ms: i64,
    pub max_ms: i64,
    pub jitter: f64,
    /// After this many failed attempts the job is dead.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_ms: 1_000,
            max_ms: 300_000,
            jitter: 0.2,
            max_attempts: 8,
        }
    }
}

impl RetryPolicy {
    /// The delay before the next attempt after `attempts` failures.
    pub fn delay_ms(&self, attempts: u32, retry_after_ms: Option<i64>) -> i64 {
        let exp = self
            .base_ms
            .saturating_mul(1i64 << attempts.saturating_sub(1).min(30))
            .min(self.max_ms);
        let factor = 1.0 + rand::thread_rng().gen_range(-self.jitter..=self.jitter);
        let jittered = (exp as f64 * factor) as i64;
        jittered.max(retry_after_ms.unwrap_or(0))
    }
}

/// What one pass over due jobs did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub done: u64,
    pub retried: u64,
    pub dead: u64,
}

/// What accepting decisions did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// New reset jobs (a decision already in the store adds none).
    pub resets: u64,
    /// New audit entries.
    pub audit: u64,
}

/// Turns final decisions into jobs and audit entries; idempotent by decision id.
pub fn accept(
    store: &JobStore,
    decisions: &[Decision],
    now_ms: i64,
) -> Result<Accepted, StoreError> {
    let mut accepted = Accepted::default();
    for decision in decisions {
        if decision.resets_sessions && store.enqueue_reset(decision, now_ms)? {
            accepted.resets += 1;
        }
        if let Some(entry) = audit::entry(decision) {
            if store.append_audit(&entry)? {
                accepted.audit += 1;
            }
        }
    }
    Ok(accepted)
}

/// Tries every job due at `now_ms` once.
pub fn run_due(
    store: &JobStore,
    backend: &dyn ResetBackend,
    policy: &RetryPolicy,
    now_ms: i64,
) -> Result<RunStats, StoreError> {
    let mut stats = RunStats::default();
    for job in store.due(now_ms, 1_000)? {
        let attempts = job.attempts + 1;
        match backend.reset(&job) {
            Ok(()) => {
                store.record(&job.id, JobState::Done, attempts, now_ms, None)?;
                tracing::info!(job_id = %job.id, user = %job.user, backend = backend.name(), attempts, "sessions reset");
                stats.done += 1;
            }
            Err(ResetError::Permanent(message)) => {
                store.record(&job.id, JobState::Dead, attempts, now_ms, Some(&message))?;
                tracing::error!(job_id = %job.id, user = %job.user, error = %message, "reset failed for good: dead letter");
                stats.dead += 1;
            }
            Err(ResetError::Retryable {
                message,
                retry_after,
            }) => {
                if attempts >= policy.max_attempts {
                    store.record(&job.id, JobState::Dead, attempts, now_ms, Some(&message))?;
                    tracing::error!(job_id = %job.id, user = %job.user, attempts, error = %message, "reset retries exhausted: dead letter");
                    stats.dead += 1;
                } else {
                    let wait = policy.delay_ms(attempts, retry_after.map(|d| d.as_millis() as i64));
                    store.record(
                        &job.id,
                        JobState::Pending,
                        attempts,
                        now_ms + wait,
                        Some(&message),
                    )?;
                    tracing::warn!(job_id = %job.id, user = %job.user, attempts, wait_ms = wait, error = %message, "reset failed: will retry");
                    stats.retried += 1;
                }
            }
        }
    }
    Ok(stats)
}

/// Milliseconds since the epoch, for job scheduling (wall clock, unlike the dataflow).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
