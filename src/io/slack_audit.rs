//! The Slack Audit Logs API poller: `GET {base}/audit/v1/logs?oldest=&limit=&cursor=` with a
//! bearer token, following `response_metadata.next_cursor` through every page of a cycle, at most
//! one request per `request_interval` (Tier 3) and never sooner than a 429's Retry-After. A cycle
//! ends when the pages are exhausted; its entries are sent to the ingest queue oldest first, and
//! only then is the checkpoint (the newest `date_create` delivered and the ids delivered at that
//! second) written to the SQLite store. A restart resumes from the checkpoint: the next cycle asks
//! for `oldest = checkpoint` and drops the ids already delivered, so there are no gaps and no
//! duplicates. Without a checkpoint, the first cycle starts `backfill` before now.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::api::metrics::{Metrics, SourceLabel};
use crate::api::Ingest;
use crate::io::live::decode_batch;
use crate::response::reset::{describe, retry_after};
use crate::response::store::{JobStore, StoreError};

/// `[service.slack_audit]`: the poller's settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlackAuditConfig {
    /// Default `https://api.slack.com`.
    #[serde(default = "default_base")]
    pub base_url: String,
    /// The variable holding an Org-level token with `auditlogs:read`. Default
    /// `AER_SLACK_AUDIT_TOKEN`.
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// Time between cycles. Default 60 s.
    #[serde(
        with = "crate::config::humantime_serde_compat",
        default = "default_poll"
    )]
    pub poll_interval: Duration,
    /// Entries per page (Slack allows up to 9,999). Default 1,000.
    #[serde(default = "default_limit")]
    pub limit: u32,
    /// Without a checkpoint, start this far back. Default 1 d.
    #[serde(
        with = "crate::config::humantime_serde_compat",
        default = "default_backfill"
    )]
    pub backfill: Duration,
    /// At most one request per this long (Tier 3 allows about 50 a minute). Default 1.2 s.
    #[serde(
        with = "crate::config::humantime_serde_compat",
        default = "default_request_interval"
    )]
    pub request_interval: Duration,
    /// Per-request timeout. Default 30 s.
    #[serde(
        with = "crate::config::humantime_serde_compat",
        default = "default_timeout"
    )]
    pub timeout: Duration,
}

fn default_base() -> String {
    "https://api.slack.com".into()
}
fn default_token_env() -> String {
    "AER_SLACK_AUDIT_TOKEN".into()
}
fn default_poll() -> Duration {
    Duration::from_secs(60)
}
fn default_limit() -> u32 {
    1000
}
fn default_backfill() -> Duration {
    Duration::from_secs(86_400)
}
fn default_request_interval() -> Duration {
    Duration::from_millis(1200)
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for SlackAuditConfig {
    fn default() -> Self {
        SlackAuditConfig {
            base_url: default_base(),
            token_env: default_token_env(),
            poll_interval: default_poll(),
            limit: default_limit(),
            backfill: default_backfill(),
            request_interval: default_request_interval(),
            timeout: default_timeout(),
        }
    }
}

/// Errors that stop the poller (transient HTTP failures do not: they are retried).
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("slack_audit: environment variable {0} is not set")]
    Token(String),
    #[error("slack_audit: {0}")]
    Client(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the poller stands: the newest `date_create` delivered, and the ids delivered at it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub oldest: u64,
    pub ids: BTreeSet<String>,
}

const CURSOR: &str = "slack_audit";

/// One page of the API.
#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    entries: Vec<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    response_metadata: Option<Metadata>,
    ok: Option<bool>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    next_cursor: String,
}

/// The poller.
pub struct Poller {
    config: SlackAuditConfig,
    client: reqwest::Client,
    token: String,
    store: JobStore,
    queue: mpsc::Sender<Ingest>,
    metrics: Arc<Metrics>,
    last_request: Option<tokio::time::Instant>,
}

impl Poller {
    /// Reads the token now; keeps its checkpoint in the store at `db`.
    pub fn new(
        config: SlackAuditConfig,
        db: &Path,
        queue: mpsc::Sender<Ingest>,
        metrics: Arc<Metrics>,
    ) -> Result<Poller, PollError> {
        let token = std::env::var(&config.token_env)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| PollError::Token(config.token_env.clone()))?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("aer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PollError::Client(e.to_string()))?;
        Ok(Poller {
            config,
            client,
            token,
            store: JobStore::open(db)?,
            queue,
            metrics,
            last_request: None,
        })
    }

    /// The checkpoint in the store, if any.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, PollError> {
        Ok(self
            .store
            .cursor(CURSOR)?
            .and_then(|text| serde_json::from_str(&text).ok()))
    }

    /// Polls until `stop` resolves.
    pub async fn run(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), PollError> {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                result = self.cycle() => {
                    let delivered = result?;
                    tracing::info!(delivered, "slack_audit: cycle done");
                }
                _ = &mut stop => return Ok(()),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.poll_interval) => {}
                _ = &mut stop => return Ok(()),
            }
        }
    }

    /// One cycle: every page since the checkpoint, delivered oldest first, then the checkpoint
    /// moved. Returns the entries delivered. A failed request is retried (after Retry-After
    /// on 429, else with backoff), never skipped.
    pub async fn cycle(&mut self) -> Result<usize, PollError> {
        let checkpoint = match self.checkpoint()? {
            Some(c) => c,
            None => Checkpoint {
                oldest: ((crate::response::now_ms() / 1000) as u64)
                    .saturating_sub(self.config.backfill.as_secs()),
                ids: BTreeSet::new(),
            },
        };
        let mut entries: Vec<(u64, String, String)> = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self.fetch(checkpoint.oldest, &cursor).await?;
            for raw in page.entries {
                let text = raw.get().to_string();
                // An entry that is not an object is rejected by the codec below, with a reason.
                let head: EntryHead = serde_json::from_str(&text).unwrap_or_default();
                let time = head
                    .date_create
                    .as_ref()
                    .and_then(time_of)
                    .unwrap_or(u64::MAX);
                entries.push((time, head.id.unwrap_or_default(), text));
            }
            cursor = page
                .response_metadata
                .map(|m| m.next_cursor)
                .unwrap_or_default();
            if cursor.is_empty() {
                break;
            }
        }
        // Oldest first; what the checkpoint says was delivered is dropped.
        entries.sort();
        entries.dedup_by(|a, b| a.1 == b.1 && !a.1.is_empty());
        entries.retain(|(t, id, _)| {
            *t == u64::MAX
                || *t > checkpoint.oldest
                || (*t == checkpoint.oldest && !checkpoint.ids.contains(id))
        });
        let lines: Vec<&str> = entries.iter().map(|(_, _, text)| text.as_str()).collect();
        let (events, _) = decode_batch("slack_audit", 1, &lines, &self.metrics);
        let delivered = events.len();
        let mut next = checkpoint.clone();
        for e in &events {
            if e.time > next.oldest {
                next.oldest = e.time;
                next.ids.clear();
            }
            if e.time == next.oldest {
                next.ids.insert(e.id.to_string());
            }
        }
        if !events.is_empty() {
            self.metrics
                .events
                .get_or_create(&SourceLabel {
                    source: "slack_audit".into(),
                })
                .inc_by(delivered as u64);
            if self
                .queue
                .send(Ingest::Events {
                    source: "slack_audit".into(),
                    events,
                })
                .await
                .is_err()
            {
                // Shutting down: the checkpoint stays where it was, nothing is lost.
                return Ok(0);
            }
        }
        if next != checkpoint {
            let text = serde_json::to_string(&next).map_err(StoreError::from)?;
            self.store.set_cursor(CURSOR, &text)?;
        }
        Ok(delivered)
    }

    async fn fetch(&mut self, oldest: u64, cursor: &str) -> Result<Page, PollError> {
        let url = format!(
            "{}/audit/v1/logs",
            self.config.base_url.trim_end_matches('/')
        );
        let mut failures = 0u32;
        loop {
            if let Some(last) = self.last_request {
                tokio::time::sleep_until(last + self.config.request_interval).await;
            }
            self.last_request = Some(tokio::time::Instant::now());
            let mut request = self.client.get(&url).bearer_auth(&self.token).query(&[
                ("oldest", oldest.to_string()),
                ("limit", self.config.limit.to_string()),
            ]);
            if !cursor.is_empty() {
                request = request.query(&[("cursor", cursor)]);
            }
            let wait = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    match response.json::<Page>().await {
                        Ok(page) if page.ok != Some(false) => return Ok(page),
                        Ok(page) => {
                            let error = page.error.unwrap_or_else(|| "unknown_error".into());
                            tracing::warn!(error = %error, "slack_audit: ok:false");
                            None
                        }
                        Err(e) => {
                            tracing::warn!(error = %describe(&e), "slack_audit: unreadable page");
                            None
                        }
                    }
                }
                Ok(response) => {
                    let status = response.status();
                    let after = retry_after(response.headers());
                    tracing::warn!(status = status.as_u16(), retry_after = ?after, "slack_audit: request refused");
                    after
                }
                Err(e) => {
                    tracing::warn!(error = %describe(&e), "slack_audit: request failed");
                    None
                }
            };
            failures += 1;
            let backoff = Duration::from_millis(500 * (1 << failures.min(7)));
            tokio::time::sleep(wait.unwrap_or(backoff).max(self.config.request_interval)).await;
        }
    }
}

#[derive(Deserialize, Default)]
struct EntryHead {
    id: Option<String>,
    date_create: Option<serde_json::Value>,
}

fn time_of(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => crate::io::codec::parse_date(s),
        _ => None,
    }
}
