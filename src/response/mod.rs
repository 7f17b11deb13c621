//! The response stage (DESIGN 6), fed by final decisions: durable, idempotent jobs in an embedded
//! SQLite store ([`store`]) that reset sessions through a backend ([`reset`]) and deliver
//! coalesced notifications ([`notify`]) over channels ([`channel`]), with exponential backoff,
//! jitter and a dead-letter state; and Slack-shaped audit entries ([`audit`]).

pub mod audit;
pub mod channel;
pub mod config;
pub mod notify;
pub mod reset;
pub mod store;

use std::time::Duration;

use rand::Rng;

use crate::fault;
use crate::model::decision::Decision;
use channel::Channels;
use notify::Notification;
use reset::{Backend, ResetBackend};
use store::{Job, JobKind, JobState, JobStore, StoreError};

/// Why a call to the outside world (a reset, a delivery) did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("retryable: {message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("permanent: {0}")]
    Permanent(String),
}

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

/// What runs the jobs: a reset backend and the notification channels.
pub struct Responders<R = Backend> {
    pub reset: R,
    pub channels: Channels,
}

impl Default for Responders<Backend> {
    fn default() -> Self {
        Responders {
            reset: Backend::Log(reset::LogBackend::default()),
            channels: Channels::default(),
        }
    }
}

/// What running due jobs did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub done: u64,
    pub retried: u64,
    pub dead: u64,
}

impl std::ops::AddAssign for RunStats {
    fn add_assign(&mut self, other: RunStats) {
        self.done += other.done;
        self.retried += other.retried;
        self.dead += other.dead;
    }
}

/// What accepting decisions and notifications did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// New reset jobs (a decision already in the store adds none).
    pub resets: u64,
    /// New audit entries.
    pub audit: u64,
    /// New notification delivery jobs.
    pub notifications: u64,
}

/// Turns final decisions into reset jobs and audit entries, and notifications into delivery
/// jobs; idempotent by id. Each decision's job and audit entry land in one transaction.
pub fn accept(
    store: &JobStore,
    decisions: &[Decision],
    notifications: &[Notification],
    now_ms: i64,
) -> Result<Accepted, StoreError> {
    let mut accepted = Accepted::default();
    for decision in decisions {
        let (reset, audited) = store.atomically(|store| {
            let reset = decision.resets_sessions && store.enqueue_reset(decision, now_ms)?;
            let audited = match audit::entry(decision) {
                Some(entry) => store.append_audit(&entry)?,
                None => false,
            };
            Ok((reset, audited))
        })?;
        accepted.resets += reset as u64;
        accepted.audit += audited as u64;
        fault::point("accept_decision");
    }
    for notification in notifications {
        if store.enqueue_notification(notification, now_ms)? {
            accepted.notifications += 1;
        }
        fault::point("accept_notification");
    }
    Ok(accepted)
}

async fn execute<R: ResetBackend>(job: &Job, responders: &Responders<R>) -> Result<(), CallError> {
    match job.kind {
        JobKind::Reset => responders.reset.reset(job).await,
        JobKind::Notify => {
            let notification: Notification = serde_json::from_value(job.payload.clone())
                .map_err(|e| CallError::Permanent(format!("bad notification payload: {e}")))?;
            responders.channels.deliver(&notification).await
        }
    }
}

/// Tries every job due at `now_ms` once, oldest event first.
pub async fn run_due<R: ResetBackend>(
    store: &JobStore,
    responders: &Responders<R>,
    policy: &RetryPolicy,
    now_ms: i64,
) -> Result<RunStats, StoreError> {
    let mut stats = RunStats::default();
    for job in store.due(now_ms, 1_000)? {
        let attempts = job.attempts + 1;
        let kind = job.kind.as_str();
        match execute(&job, responders).await {
            Ok(()) => {
                store.record(&job.id, JobState::Done, attempts, now_ms, None)?;
                tracing::info!(job_id = %job.id, kind, enterprise = %job.enterprise, subject = %job.subject, attempts, "job done");
                stats.done += 1;
            }
            Err(CallError::Permanent(message)) => {
                store.record(&job.id, JobState::Dead, attempts, now_ms, Some(&message))?;
                tracing::error!(job_id = %job.id, kind, enterprise = %job.enterprise, subject = %job.subject, error = %message, "job failed for good: dead letter");
                stats.dead += 1;
            }
            Err(CallError::Retryable {
                message,
                retry_after,
            }) => {
                if attempts >= policy.max_attempts {
                    store.record(&job.id, JobState::Dead, attempts, now_ms, Some(&message))?;
                    tracing::error!(job_id = %job.id, kind, enterprise = %job.enterprise, subject = %job.subject, attempts, error = %message, "job retries exhausted: dead letter");
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
                    tracing::warn!(job_id = %job.id, kind, enterprise = %job.enterprise, subject = %job.subject, attempts, wait_ms = wait, error = %message, "job failed: will retry");
                    stats.retried += 1;
                }
            }
        }
        fault::point("job");
    }
    Ok(stats)
}

/// Runs jobs as they fall due until none is pending, or until the next one is due later than
/// `patience` from now (those stay pending in the store for the next run).
pub async fn drain<R: ResetBackend>(
    store: &JobStore,
    responders: &Responders<R>,
    policy: &RetryPolicy,
    patience: Duration,
) -> Result<RunStats, StoreError> {
    let deadline = now_ms() + patience.as_millis() as i64;
    let mut total = RunStats::default();
    loop {
        total += run_due(store, responders, policy, now_ms()).await?;
        match store.next_due_ms()? {
            None => break,
            Some(next) if next > deadline => {
                tracing::warn!(
                    next_due_ms = next,
                    "response jobs still pending after the drain; they run on the next start"
                );
                break;
            }
            Some(next) => {
                let wait = (next - now_ms()).max(0) as u64;
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    }
    Ok(total)
}

/// Milliseconds since the epoch, for job scheduling (wall clock, unlike the dataflow).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
