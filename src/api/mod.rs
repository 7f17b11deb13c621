//! The HTTP API (axum), built by one [`router`] over an [`AppState`]: HTTP ingest
//! (`POST /v1/events`), the live view of anomalies and decisions per enterprise (each answer says
//! `as_of`, the last event time the dataflow has made final), audit entries and jobs from the
//! store, policy read and replace per enterprise (a replacement flows into the dataflow's policy
//! collection), a server-sent-events stream of decisions, `/metrics`, `/healthz`, `/readyz` and
//! `/openapi.json`. Every error has one JSON shape ([`ApiError`]). Tokens: an admin token sees
//! and changes everything; a read token belongs to one enterprise and can read only its data.

pub mod metrics;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use utoipa::OpenApi;

use crate::config::{Config, PolicyConfig};
use crate::dataflow::live::LiveState;
use crate::io::codec::Reject;
use crate::io::live::decode_batch;
use crate::model::decision::{Decision, Policies};
use crate::model::{Anomaly, Baseline, Event, Rule, ShapeId, Time};
use crate::response::store::{JobKind, JobState, JobStore};
use metrics::{Metrics, RouteLabel, SourceLabel};

/// What the ingest queue carries to the sequencer, in order.
#[derive(Debug)]
pub enum Ingest {
    /// Decoded events from one source.
    Events { source: String, events: Vec<Event> },
    /// New decision policies, in force from the current time.
    Policies(Policies),
}

/// Records kept per enterprise for the API (the newest; older ones are in the logs, the store's
/// audit table and the output files).
pub const RECENT: usize = 10_000;

/// What the API shows of the dataflow's outputs.
#[derive(Default)]
pub struct View {
    pub anomalies: BTreeMap<String, VecDeque<Anomaly>>,
    pub decisions: BTreeMap<String, VecDeque<Decision>>,
    /// Enterprises seen in events, configured, or both.
    pub enterprises: BTreeSet<String>,
}

impl View {
    pub fn add_anomaly(&mut self, a: Anomaly) {
        self.enterprises.insert(a.enterprise.clone());
        push_capped(self.anomalies.entry(a.enterprise.clone()).or_default(), a);
    }

    pub fn add_decision(&mut self, d: Decision) {
        self.enterprises.insert(d.enterprise.clone());
        push_capped(self.decisions.entry(d.enterprise.clone()).or_default(), d);
    }
}

fn push_capped<T>(q: &mut VecDeque<T>, item: T) {
    if q.len() == RECENT {
        q.pop_front();
    }
    q.push_back(item);
}

/// Who a request is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Reader(String),
    Ingest,
}

/// The tokens the service accepts.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    pub admin: Option<String>,
    /// token -> enterprise.
    pub readers: BTreeMap<String, String>,
    /// A token allowed to post events only (the admin token may too).
    pub ingest: Option<String>,
}

impl Auth {
    fn principal(&self, headers: &HeaderMap) -> Option<Principal> {
        let token = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?
            .trim();
        let same =
            |a: &str| a.len() == token.len() && constant_time_eq(a.as_bytes(), token.as_bytes());
        if self.admin.as_deref().is_some_and(same) {
            return Some(Principal::Admin);
        }
        if self.ingest.as_deref().is_some_and(same) {
            return Some(Principal::Ingest);
        }
        // Every reader token is compared, so timing does not tell which one matched.
        let mut found = None;
        for (t, enterprise) in &self.readers {
            if same(t) {
                found = Some(Principal::Reader(enterprise.clone()));
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The state every handler shares.
pub struct Shared {
    pub auth: Auth,
    pub view: RwLock<View>,
    /// One past the last final event time (the live driver's frontier; 0: nothing final).
    pub frontier: Arc<AtomicU64>,
    /// The newest event time the sequencer has seen.
    pub newest: AtomicU64,
    /// The live window counts and baselines (set by `aer run`).
    pub live_state: Option<Arc<Mutex<LiveState>>>,
    /// A read connection to the job store.
    pub store: Option<Mutex<JobStore>>,
    pub ingest: Option<mpsc::Sender<Ingest>>,
    /// The configuration whose policies are in force (replaced per enterprise by `PUT`).
    pub config: RwLock<Config>,
    pub metrics: Arc<Metrics>,
    /// New final decisions for the stream; taken (closing every stream) at shutdown.
    pub decisions: Mutex<Option<broadcast::Sender<Decision>>>,
    pub ready: AtomicBool,
    /// Largest accepted request body, bytes.
    pub max_body: usize,
}

pub type AppState = Arc<Shared>;

impl Shared {
    pub fn new(config: Config, auth: Auth) -> Shared {
        let mut view = View::default();
        view.enterprises.extend(config.enterprises.keys().cloned());
        Shared {
            auth,
            view: RwLock::new(view),
            frontier: Arc::new(AtomicU64::new(0)),
            newest: AtomicU64::new(0),
            live_state: None,
            store: None,
            ingest: None,
            config: RwLock::new(config),
            metrics: Arc::new(Metrics::default()),
            decisions: Mutex::new(Some(broadcast::channel(1024).0)),
            ready: AtomicBool::new(false),
            max_body: 10 << 20,
        }
    }

    /// The last final event time.
    pub fn as_of(&self) -> Option<Time> {
        self.frontier.load(Ordering::Relaxed).checked_sub(1)
    }

    pub fn metrics_handle(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Sends a final decision to every stream reader.
    pub fn publish(&self, decision: &Decision) {
        if let Some(tx) = &*self.decisions.lock().expect("stream") {
            // No reader: nothing to do.
            let _ = tx.send(decision.clone());
        }
    }

    /// Ends every decision stream (at shutdown, so that open streams do not hold it up).
    pub fn close_stream(&self) {
        self.decisions.lock().expect("stream").take();
    }
}

/// The one error shape: `{"error": {"code": ..., "message": ...}}` with a fitting status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or unknown bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body over {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

/// The error body.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "API error");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().into(),
                message: self.to_string(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, "1".parse().expect("static header"));
        }
        response
    }
}

impl From<crate::response::store::StoreError> for ApiError {
    fn from(e: crate::response::store::StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

fn principal(state: &Shared, headers: &HeaderMap) -> Result<Principal, ApiError> {
    state.auth.principal(headers).ok_or(ApiError::Unauthorized)
}

fn admin(state: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    match principal(state, headers)? {
        Principal::Admin => Ok(()),
        _ => Err(ApiError::Forbidden("this needs the admin token".into())),
    }
}

/// Checks that the caller may read `enterprise`, and that it exists.
fn may_read(state: &Shared, headers: &HeaderMap, enterprise: &str) -> Result<(), ApiError> {
    match principal(state, headers)? {
        Principal::Admin => {}
        Principal::Reader(own) if own == enterprise => {}
        Principal::Reader(_) | Principal::Ingest => {
            return Err(ApiError::Forbidden(
                "this token cannot read that enterprise".into(),
            ))
        }
    }
    if !state
        .view
        .read()
        .expect("view")
        .enterprises
        .contains(enterprise)
    {
        return Err(ApiError::NotFound(format!(
            "unknown enterprise {enterprise:?}"
        )));
    }
    Ok(())
}

/// A page of records with the time they are consistent at.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct Page {
    /// The last event time whose results are final (null: none yet).
    pub as_of: Option<Time>,
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
}

/// `?since=<unix seconds>&limit=<n>` (default limit 100, at most 10 000).
#[derive(Deserialize, utoipa::IntoParams)]
pub struct Window {
    pub since: Option<Time>,
    pub limit: Option<usize>,
}

impl Window {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(100).min(RECENT)
    }
}

/// The newest records of an enterprise from the view (`since` and `limit` applied), oldest first.
fn recent<T: Serialize>(
    state: &Shared,
    headers: &HeaderMap,
    enterprise: &str,
    window: &Window,
    records: impl Fn(&View) -> &BTreeMap<String, VecDeque<T>>,
    time: impl Fn(&T) -> Time,
) -> Result<Json<Page>, ApiError> {
    may_read(state, headers, enterprise)?;
    let as_of = state.as_of();
    let view = state.view.read().expect("view");
    let since = window.since.unwrap_or(0);
    let mut items: Vec<serde_json::Value> = records(&view)
        .get(enterprise)
        .into_iter()
        .flatten()
        .rev()
        .filter(|r| time(r) >= since)
        .take(window.limit())
        .map(|r| serde_json::to_value(r).map_err(|e| ApiError::Internal(e.to_string())))
        .collect::<Result<_, _>>()?;
    items.reverse();
    Ok(Json(Page { as_of, items }))
}

/// Builds the whole API.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .route("/v1/events", post(ingest))
        .route("/v1/enterprises", get(enterprises))
        .route("/v1/enterprises/{enterprise}/anomalies", get(anomalies))
        .route("/v1/enterprises/{enterprise}/decisions", get(decisions))
        .route("/v1/enterprises/{enterprise}/audit", get(audit))
        .route("/v1/enterprises/{enterprise}/aggregates", get(aggregates))
        .route("/v1/enterprises/{enterprise}/baselines", get(baselines))
        .route(
            "/v1/enterprises/{enterprise}/config",
            get(get_config).put(put_config),
        )
        .route("/v1/jobs", get(jobs))
        .route("/v1/decisions/stream", get(stream))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Records each request's latency by route and status.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    state
        .metrics
        .http
        .get_or_create(&RouteLabel {
            method,
            route,
            status: response.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process is up")))]
async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "The dataflow and the store are running"),
    (status = 503, description = "Starting or stopping", body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.ready.load(Ordering::Relaxed) {
        Ok("ready\n")
    } else {
        Err(ApiError::Unavailable("not ready".into()))
    }
}

#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Prometheus text format (admin token)")))]
async fn metrics_text(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admin(&state, &headers)?;
    if let Some(store) = &state.store {
        let store = store.lock().expect("store");
        for (kind, state_name, n) in store.job_counts()? {
            state
                .metrics
                .jobs
                .get_or_create(&metrics::JobLabel {
                    kind,
                    state: state_name,
                })
                .set(n as i64);
        }
    }
    let newest = state.newest.load(Ordering::Relaxed);
    let lag = state.as_of().map_or(0, |t| newest.saturating_sub(t));
    state.metrics.frontier_lag.set(lag as i64);
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "aer",
        description = "Anomaly Event Response: live anomalies, decisions, audit and configuration per enterprise. Bearer tokens: admin, per-enterprise read, ingest."
    ),
    paths(
        healthz,
        readyz,
        metrics_text,
        ingest,
        enterprises,
        anomalies,
        decisions,
        audit,
        get_config,
        put_config,
        jobs,
        stream
    ),
    components(schemas(Page, ErrorBody, ErrorDetail, Ingested))
)]
pub struct ApiDoc;

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The answer to an ingest request.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ingested {
    /// Entries decoded and queued.
    pub accepted: usize,
    /// Lines or entries rejected (counted in `aer_rejected_events_total`).
    pub rejected: usize,
    /// The first rejects, with their reasons.
    #[schema(value_type = Vec<Object>)]
    pub rejects: Vec<Reject>,
}

/// Splits a body into lines: JSON lines, or a JSON array of entries (one line each).
fn lines(body: &str) -> Result<Vec<String>, ApiError> {
    let trimmed = body.trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<Box<serde_json::value::RawValue>> = serde_json::from_str(trimmed)
            .map_err(|e| ApiError::BadRequest(format!("body is not a JSON array: {e}")))?;
        Ok(items.into_iter().map(|r| r.get().to_string()).collect())
    } else {
        Ok(body.lines().map(str::to_string).collect())
    }
}

#[utoipa::path(post, path = "/v1/events",
    request_body(content = String, description = "Slack audit entries as JSON lines (or API pages, one per line), or a JSON array of entries", content_type = "application/x-ndjson"),
    responses(
        (status = 202, description = "Queued", body = Ingested),
        (status = 400, description = "Not JSON lines nor an array", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "Queue full: retry after the Retry-After seconds", body = ErrorBody)))]
async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Ingested>), ApiError> {
    match principal(&state, &headers)? {
        Principal::Admin | Principal::Ingest => {}
        Principal::Reader(_) => {
            return Err(ApiError::Forbidden(
                "a read token cannot post events".into(),
            ))
        }
    }
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(state.max_body),
        _ => ApiError::BadRequest(e.body_text()),
    })?;
    let text = std::str::from_utf8(&body)
        .map_err(|e| ApiError::BadRequest(format!("body is not UTF-8: {e}")))?;
    let lines = lines(text)?;
    let (events, mut rejects) = decode_batch("http", 1, &lines, &state.metrics);
    let accepted = events.len();
    if accepted > 0 {
        let queue = state
            .ingest
            .as_ref()
            .ok_or_else(|| ApiError::Unavailable("ingest is not running".into()))?;
        queue
            .try_send(Ingest::Events {
                source: "http".into(),
                events,
            })
            .map_err(|e| {
                state.metrics.ingest_refused.inc();
                match e {
                    mpsc::error::TrySendError::Full(_) => {
                        ApiError::Unavailable("ingest queue full: retry later".into())
                    }
                    mpsc::error::TrySendError::Closed(_) => {
                        ApiError::Unavailable("shutting down".into())
                    }
                }
            })?;
        state
            .metrics
            .events
            .get_or_create(&SourceLabel {
                source: "http".into(),
            })
            .inc_by(accepted as u64);
    }
    let rejected = rejects.len();
    rejects.truncate(20);
    Ok((
        StatusCode::ACCEPTED,
        Json(Ingested {
            accepted,
            rejected,
            rejects,
        }),
    ))
}

#[utoipa::path(get, path = "/v1/enterprises", responses((status = 200, description = "Known enterprises (admin)")))]
async fn enterprises(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<String>>, ApiError> {
    admin(&state, &headers)?;
    let view = state.view.read().expect("view");
    Ok(Json(view.enterprises.iter().cloned().collect()))
}

#[utoipa::path(get, path = "/v1/enterprises/{enterprise}/anomalies", params(("enterprise" = String, Path), Window),
    responses((status = 200, body = Page), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn anomalies(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(enterprise): Path<String>,
    Query(window): Query<Window>,
) -> Result<Json<Page>, ApiError> {
    recent(
        &state,
        &headers,
        &enterprise,
        &window,
        |v| &v.anomalies,
        |a| a.detected_at,
    )
}

#[utoipa::path(get, path = "/v1/enterprises/{enterprise}/decisions", params(("enterprise" = String, Path), Window),
    responses((status = 200, body = Page), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn decisions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(enterprise): Path<String>,
    Query(window): Query<Window>,
) -> Result<Json<Page>, ApiError> {
    recent(
        &state,
        &headers,
        &enterprise,
        &window,
        |v| &v.decisions,
        |d| d.decided_at,
    )
}

#[utoipa::path(get, path = "/v1/enterprises/{enterprise}/audit", params(("enterprise" = String, Path), Window),
    responses((status = 200, body = Page), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(enterprise): Path<String>,
    Query(window): Query<Window>,
) -> Result<Json<Page>, ApiError> {
    may_read(&state, &headers, &enterprise)?;
    let store = state
        .store
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("no job store".into()))?;
    let entries = store.lock().expect("store").audit_for(
        &enterprise,
        window.since.unwrap_or(0),
        window.limit(),
    )?;
    Ok(Json(Page {
        as_of: state.as_of(),
        items: entries,
    }))
}

/// The rules in force by shape, and the live state.
type LiveView = (BTreeMap<ShapeId, Rule>, Arc<Mutex<LiveState>>);

/// The rules in force by shape, and the live state, for the aggregate endpoints.
fn live_view(state: &Shared) -> Result<LiveView, ApiError> {
    let live = state
        .live_state
        .clone()
        .ok_or_else(|| ApiError::Unavailable("the live dataflow is not running".into()))?;
    let rules = state
        .config
        .read()
        .expect("config")
        .rules()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((rules.into_iter().map(|r| (r.shape(), r)).collect(), live))
}

fn threshold_of(rule: &Rule, baseline: Option<&Baseline>) -> u64 {
    baseline.map_or(rule.eval.default_threshold, |b| rule.eval.threshold(b))
}

/// `?key=<user, IP or session>&limit=<n>`.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct KeyFilter {
    pub key: Option<String>,
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/enterprises/{enterprise}/aggregates", params(("enterprise" = String, Path), KeyFilter),
    responses((status = 200, description = "Current window counts per rule and key (user, IP or session), with the threshold in force", body = Page)))]
async fn aggregates(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(enterprise): Path<String>,
    Query(filter): Query<KeyFilter>,
) -> Result<Json<Page>, ApiError> {
    may_read(&state, &headers, &enterprise)?;
    let (rules, live) = live_view(&state)?;
    let live = live.lock().expect("live state");
    let baselines = live.baselines.get(enterprise.as_str());
    let mut items = Vec::new();
    for ((shape, key), count) in live.counts.get(enterprise.as_str()).into_iter().flatten() {
        if filter
            .key
            .as_ref()
            .is_some_and(|k| k.as_str() != key.as_str())
        {
            continue;
        }
        let Some(rule) = rules.get(shape) else {
            continue;
        };
        let baseline = baselines.and_then(|b| b.get(shape)).map(|(_, b)| b);
        items.push(serde_json::json!({
            "reason": rule.reason,
            "group_by": rule.group_by.as_str(),
            "key": key,
            "window_secs": rule.window,
            "count": count,
            "threshold": threshold_of(rule, baseline),
        }));
        if items.len() >= filter.limit.unwrap_or(1000).min(RECENT) {
            break;
        }
    }
    Ok(Json(Page {
        as_of: live.as_of,
        items,
    }))
}

#[utoipa::path(get, path = "/v1/enterprises/{enterprise}/baselines", params(("enterprise" = String, Path)),
    responses((status = 200, description = "Per rule: baseline samples, quantile and the threshold in force (dynamic, or the default while samples are short)", body = Page)))]
async fn baselines(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(enterprise): Path<String>,
) -> Result<Json<Page>, ApiError> {
    may_read(&state, &headers, &enterprise)?;
    let (rules, live) = live_view(&state)?;
    let live = live.lock().expect("live state");
    let baselines = live.baselines.get(enterprise.as_str());
    let items = rules
        .iter()
        .map(|(shape, rule)| {
            let baseline = baselines.and_then(|b| b.get(shape)).map(|(_, b)| b);
            let dynamic = baseline.is_some_and(|b| b.samples >= rule.eval.min_samples);
            serde_json::json!({
                "reason": rule.reason,
                "group_by": rule.group_by.as_str(),
                "window_secs": rule.window,
                "history_secs": rule.history,
                "samples": baseline.map_or(0, |b| b.samples),
                "quantile": baseline.and_then(|b| b.quantile),
                "threshold": threshold_of(rule, baseline),
                "threshold_source": if dynamic { "baseline" } else { "default" },
            })
        })
        .collect();
    Ok(Json(Page {
        as_of: live.as_of,
        items,
    }))
}

/// `?state=pending|done|dead&kind=reset|notify`.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct JobFilter {
    pub state: Option<String>,
    pub kind: Option<String>,
}

#[utoipa::path(get, path = "/v1/jobs", params(JobFilter),
    responses((status = 200, description = "Jobs, for example the dead letters (admin)", body = Page)))]
async fn jobs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(filter): Query<JobFilter>,
) -> Result<Json<Page>, ApiError> {
    admin(&state, &headers)?;
    let job_state = match filter.state.as_deref() {
        None => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!("state must be pending, done or dead, not {s:?}"))
        })?),
    };
    let kind = match filter.kind.as_deref() {
        None => None,
        Some(k) => Some(JobKind::parse(k).ok_or_else(|| {
            ApiError::BadRequest(format!("kind must be reset or notify, not {k:?}"))
        })?),
    };
    let store = state
        .store
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("no job store".into()))?;
    let jobs = store.lock().expect("store").jobs(kind, job_state)?;
    let items = jobs
        .into_iter()
        .map(|j| serde_json::to_value(j).map_err(|e| ApiError::Internal(e.to_string())))
        .collect::<Result<_, _>>()?;
    Ok(Json(Page {
        as_of: state.as_of(),
        items,
    }))
}

#[utoipa::path(get, path = "/v1/enterprises/{enterprise}/config", params(("enterprise" = String, Path)),
    responses((status = 200, description = "The enterprise's policy section and the policy in force")))]
async fn get_config(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(enterprise): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    may_read(&state, &headers, &enterprise)?;
    let config = state.config.read().expect("config");
    let section = config
        .enterprises
        .get(&enterprise)
        .cloned()
        .unwrap_or_default();
    let policies = config
        .policies()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let in_force = policies.for_enterprise(&enterprise);
    Ok(Json(serde_json::json!({
        "enterprise": enterprise,
        "section": section,
        "policy_version": in_force.version(),
        "modes": in_force.modes,
    })))
}

#[utoipa::path(put, path = "/v1/enterprises/{enterprise}/config", params(("enterprise" = String, Path)),
    request_body(content = Object, description = "The enterprise's policy section, as `[enterprises.<id>]` in the TOML file (modes, groups, exclusions, loop, allow)"),
    responses((status = 200, description = "Replaced; in force from the current event time"), (status = 400, body = ErrorBody)))]
async fn put_config(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(enterprise): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin(&state, &headers)?;
    let body = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let section: PolicyConfig = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("policy section: {e}")))?;
    let policies = {
        let mut config = state.config.write().expect("config");
        let mut next = config.clone();
        next.enterprises.insert(enterprise.clone(), section);
        let policies = next
            .policies()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        *config = next;
        policies
    };
    let version = policies.for_enterprise(&enterprise).version();
    let queue = state
        .ingest
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("the dataflow is not running".into()))?;
    queue
        .send(Ingest::Policies(policies))
        .await
        .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
    state
        .view
        .write()
        .expect("view")
        .enterprises
        .insert(enterprise.clone());
    tracing::warn!(enterprise = %enterprise, policy_version = %version, "policy replaced through the API");
    Ok(Json(serde_json::json!({
        "enterprise": enterprise,
        "policy_version": version,
        "from_event_time": state.newest.load(Ordering::Relaxed),
    })))
}

/// `?enterprise=<id>` narrows the stream (a read token is always narrowed to its own).
#[derive(Deserialize, utoipa::IntoParams)]
pub struct StreamFilter {
    pub enterprise: Option<String>,
}

#[utoipa::path(get, path = "/v1/decisions/stream", params(StreamFilter),
    responses((status = 200, description = "Server-sent events: one `decision` event per final decision", content_type = "text/event-stream")))]
async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(filter): Query<StreamFilter>,
) -> Result<Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let only = match principal(&state, &headers)? {
        Principal::Admin => filter.enterprise,
        Principal::Reader(own) => {
            if filter.enterprise.as_ref().is_some_and(|e| *e != own) {
                return Err(ApiError::Forbidden(
                    "this token cannot read that enterprise".into(),
                ));
            }
            Some(own)
        }
        Principal::Ingest => return Err(ApiError::Forbidden("an ingest token cannot read".into())),
    };
    let receiver = state
        .decisions
        .lock()
        .expect("stream")
        .as_ref()
        .map(|tx| tx.subscribe())
        .ok_or_else(|| ApiError::Unavailable("shutting down".into()))?;
    let events = tokio_stream::wrappers::BroadcastStream::new(receiver).filter_map(move |d| {
        let d = match d {
            Ok(d) => d,
            // A slow reader missed some: say so rather than pretend.
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                return Some(Ok(SseEvent::default().event("lagged").data(n.to_string())))
            }
        };
        if only.as_ref().is_some_and(|e| *e != d.enterprise) {
            return None;
        }
        let data = serde_json::to_string(&d).unwrap_or_default();
        Some(Ok(SseEvent::default()
            .event("decision")
            .id(d.id)
            .data(data)))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
