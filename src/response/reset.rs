//! Session reset backends. A backend either succeeds, fails in a way worth retrying (rate limits,
//! timeouts, 5xx, with an optional Retry-After), or fails for good (bad token, unknown user).
//! `log` is the default: it records the call and resets nothing. `slack` calls Slack's
//! `admin.users.session.reset`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use super::store::Job;
use super::CallError;

/// Something that can end a user's sessions.
pub trait ResetBackend: Sync {
    fn name(&self) -> &'static str;
    fn reset(&self, job: &Job) -> impl Future<Output = Result<(), CallError>> + Send;
}

impl<T: ResetBackend> ResetBackend for &T {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn reset(&self, job: &Job) -> impl Future<Output = Result<(), CallError>> + Send {
        (**self).reset(job)
    }
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

    async fn reset(&self, job: &Job) -> Result<(), CallError> {
        tracing::warn!(
            job_id = %job.id,
            enterprise = %job.enterprise,
            user = %job.subject,
            session = job.session().unwrap_or(""),
            backend = "log",
            "session reset (log backend: recorded, nothing reset)"
        );
        self.calls
            .lock()
            .expect("log backend poisoned")
            .push((job.enterprise.clone(), job.subject.clone()));
        Ok(())
    }
}

/// Slack error codes that no retry can fix (the job goes to the dead letters at once). Any other
/// `ok:false` error is retried, up to the retry policy's attempts: a reset is a security action,
/// so an unknown error does not end it early.
pub const PERMANENT_SLACK_ERRORS: &[&str] = &[
    "invalid_auth",
    "not_authed",
    "account_inactive",
    "token_revoked",
    "token_expired",
    "no_permission",
    "missing_scope",
    "not_allowed_token_type",
    "user_not_found",
    "invalid_arguments",
    "invalid_arg_name",
    "ekm_access_denied",
    "feature_not_enabled",
    "not_an_enterprise",
    "cannot_reset_primary_owner",
];

/// The `slack` backend: `POST {base}/api/admin.users.session.reset` with `{"user_id": ...}` and
/// the enterprise's bearer token.
///
/// Answers: `{"ok":true}` is done; HTTP 429, or `{"ok":false,"error":"ratelimited"}`, retries no
/// sooner than `Retry-After` seconds; 5xx, timeouts, connection errors and unreadable bodies
/// retry; other 4xx and [`PERMANENT_SLACK_ERRORS`] are permanent.
pub struct SlackBackend {
    client: reqwest::Client,
    base_url: String,
    default_token: Option<String>,
    tokens: BTreeMap<String, String>,
}

impl SlackBackend {
    /// `base_url` without a trailing slash (`https://slack.com`); `timeout` bounds each call.
    pub fn new(
        base_url: &str,
        default_token: Option<String>,
        tokens: BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<SlackBackend, reqwest::Error> {
        Ok(SlackBackend {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .user_agent(concat!("aer/", env!("CARGO_PKG_VERSION")))
                .build()?,
            base_url: base_url.trim_end_matches('/').to_string(),
            default_token,
            tokens,
        })
    }
}

/// Seconds of an HTTP `Retry-After` header (Slack sends whole seconds).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A transport error with its causes (reqwest's own text omits them), marking timeouts.
pub fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        format!("timed out: {e}")
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Sorts a failed HTTP exchange (no answer, or a non-2xx status) into retryable or permanent.
pub fn http_error(
    status: Option<reqwest::StatusCode>,
    headers: Option<&reqwest::header::HeaderMap>,
    message: String,
) -> CallError {
    match status {
        Some(s) if s == reqwest::StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
            CallError::Retryable {
                message,
                retry_after: headers.and_then(retry_after),
            }
        }
        Some(s) if s == reqwest::StatusCode::REQUEST_TIMEOUT => CallError::Retryable {
            message,
            retry_after: None,
        },
        Some(_) => CallError::Permanent(message),
        None => CallError::Retryable {
            message,
            retry_after: None,
        },
    }
}

impl ResetBackend for SlackBackend {
    fn name(&self) -> &'static str {
        "slack"
    }

    async fn reset(&self, job: &Job) -> Result<(), CallError> {
        let token = self
            .tokens
            .get(&job.enterprise)
            .or(self.default_token.as_ref())
            .ok_or_else(|| {
                CallError::Permanent(format!("no Slack token for enterprise {}", job.enterprise))
            })?;
        let url = format!("{}/api/admin.users.session.reset", self.base_url);
        let response = self
            .client
            .post(&url)
            .bearer_auth(token)
            .json(&serde_json::json!({ "user_id": job.subject }))
            .send()
            .await
            .map_err(|e| http_error(e.status(), None, format!("{url}: {}", describe(&e))))?;
        let status = response.status();
        let headers = response.headers().clone();
        if !status.is_success() {
            return Err(http_error(
                Some(status),
                Some(&headers),
                format!("{url}: HTTP {status}"),
            ));
        }
        let body: serde_json::Value = response.json().await.map_err(|e| CallError::Retryable {
            message: format!("{url}: unreadable answer: {e}"),
            retry_after: None,
        })?;
        if body["ok"].as_bool() == Some(true) {
            return Ok(());
        }
        let error = body["error"]
            .as_str()
            .unwrap_or("unknown_error")
            .to_string();
        if PERMANENT_SLACK_ERRORS.contains(&error.as_str()) {
            Err(CallError::Permanent(error))
        } else {
            Err(CallError::Retryable {
                message: error,
                retry_after: retry_after(&headers),
            })
        }
    }
}

/// The backend chosen by the configuration.
pub enum Backend {
    Log(LogBackend),
    Slack(SlackBackend),
}

impl ResetBackend for Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Log(b) => b.name(),
            Backend::Slack(b) => b.name(),
        }
    }

    async fn reset(&self, job: &Job) -> Result<(), CallError> {
        match self {
            Backend::Log(b) => b.reset(job).await,
            Backend::Slack(b) => b.reset(job).await,
        }
    }
}
