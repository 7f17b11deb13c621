//! Session reset backends. A backend either succeeds, fails in a way worth retrying (rate limits,
//! timeouts, 5xx, with an optional Retry-After), or fails for good (bad token, unknown user).
//! `log` is the default: it records the call and resets nothing.

use std::sync::Mutex;
use std::time::Duration;

use super::store::Job;

/// Why a reset did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResetError {
    #[error("retryable: {message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("permanent: {0}")]
    Permanent(String),
}

/// Something that can end a user's sessions.
pub trait ResetBackend {
    fn name(&self) -> &'static str;
    fn reset(&self, job: &Job) -> Result<(), ResetError>;
}

/// The `log` backend: records each call (and logs it) without resetting anything.
#[derive(Default)]
pub struct LogBackend {
    calls: Mutex<Vec<(String, String)>>,
}

impl LogBackend {
    /// The (enterprise, user) of every call so far.
    pub fn calls(&self) -> Vec<(String, String)> {
        self.calls.lock().expect("log backend poisoned").clone()
    }
}

impl ResetBackend for LogBackend {
    fn name(&self) -> &'static str {
        "log"
    }

    fn reset(&self, job: &Job) -> Result<(), ResetError> {
        tracing::warn!(
            job_id = %job.id,
            enterprise = %job.enterprise,
            user = %job.user,
            session = job.session.as_deref().unwrap_or(""),
            backend = "log",
            "session reset (log backend: recorded, nothing reset)"
        );
        self.calls
            .lock()
            .expect("log backend poisoned")
            .push((job.enterprise.clone(), job.user.clone()));
        Ok(())
    }
}
