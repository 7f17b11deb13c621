//! The HTTP API, through `router(state)` and `oneshot` (axum's testing model): tenant-safe auth
//! (tests that try to read another enterprise), one error shape for bad JSON, oversized bodies,
//! unknown routes and enterprises, HTTP ingest with back-pressure, policy replacement flowing
//! toward the dataflow, and the OpenAPI document. Then `aer run` end to end: a workload posted
//! over HTTP gives the same audit entries as `aer replay` of the same file.

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use aer::api::{router, Auth, Ingest, Shared};
use aer::config::Config;
use aer::model::decision::Outcome;
use aer::response::store::JobStore;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tower::ServiceExt;

const ADMIN: &str = "admin-secret";
const READ_E: &str = "read-e";
const READ_F: &str = "read-f";

/// A state with decisions and audit entries for enterprises E and F, and the ingest queue's
/// receiving end.
fn state(queue: usize) -> (Arc<Shared>, mpsc::Receiver<Ingest>) {
    let config: Config =
        toml::from_str("[enterprises.E]\n[enterprises.F]\n[enterprises.G]").unwrap();
    let auth = Auth {
        admin: Some(ADMIN.into()),
        readers: [
            (READ_E.to_string(), "E".to_string()),
            (READ_F.to_string(), "F".to_string()),
        ]
        .into_iter()
        .collect(),
        ingest: None,
    };
    let mut shared = Shared::new(config, auth);
    let store = JobStore::in_memory().unwrap();
    for (enterprise, user, at) in [("E", "A", 100), ("F", "B", 200), ("E", "C", 300)] {
        let mut d = support::tor_decision(user, at, Outcome::Reset);
        d.enterprise = enterprise.into();
        d.anomaly.enterprise = enterprise.into();
        aer::response::accept(&store, std::slice::from_ref(&d), &[], 0).unwrap();
        let mut view = shared.view.write().unwrap();
        view.add_anomaly(d.anomaly.clone());
        view.add_decision(d);
    }
    shared.store = Some(Mutex::new(store));
    let (tx, rx) = mpsc::channel(queue);
    shared.ingest = Some(tx);
    shared.max_body = 4096;
    shared.frontier.store(301, Ordering::Relaxed);
    (Arc::new(shared), rx)
}

async fn call(
    state: &Arc<Shared>,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let response = router(state.clone())
        .oneshot(request.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value, headers)
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not the error shape: {body}"))
}

#[tokio::test]
async fn a_read_token_never_sees_another_enterprise() {
    let (state, _rx) = state(4);
    // Its own enterprise: only its own records, with as_of.
    let (status, body, _) = call(
        &state,
        "GET",
        "/v1/enterprises/E/decisions",
        Some(READ_E),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["as_of"], 300);
    let users: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, vec!["A", "C"]);
    let (_, body, _) = call(
        &state,
        "GET",
        "/v1/enterprises/E/anomalies?since=200",
        Some(READ_E),
        "",
    )
    .await;
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    let (_, body, _) = call(&state, "GET", "/v1/enterprises/E/audit", Some(READ_E), "").await;
    let audit = body["items"].as_array().unwrap();
    assert_eq!(audit.len(), 2);
    assert!(audit.iter().all(|e| e["context"]["location"]["id"] == "E"));
    // Every way into F, and into the admin-only endpoints, is refused.
    for uri in [
        "/v1/enterprises/F/decisions",
        "/v1/enterprises/F/anomalies",
        "/v1/enterprises/F/audit",
        "/v1/enterprises/F/config",
        "/v1/decisions/stream?enterprise=F",
        "/v1/jobs?state=dead",
        "/v1/enterprises",
        "/metrics",
    ] {
        let (status, body, _) = call(&state, "GET", uri, Some(READ_E), "").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
        assert_eq!(error_code(&body), "forbidden");
        assert!(
            !body.to_string().contains("\"B\""),
            "{uri} leaked F's data: {body}"
        );
    }
    // Nor can it change anything or post events.
    let (status, _, _) = call(
        &state,
        "PUT",
        "/v1/enterprises/E/config",
        Some(READ_E),
        "{}",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = call(&state, "POST", "/v1/events", Some(READ_E), "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // No token, or a wrong one: 401 in the same shape.
    for token in [None, Some("guess"), Some("read-")] {
        let (status, body, _) = call(&state, "GET", "/v1/enterprises/E/decisions", token, "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&body), "unauthorized");
    }
    // The admin sees F; an unknown enterprise is a 404.
    let (_, body, _) = call(
        &state,
        "GET",
        "/v1/enterprises/F/decisions",
        Some(ADMIN),
        "",
    )
    .await;
    assert_eq!(body["items"][0]["user"], "B");
    let (status, body, _) = call(
        &state,
        "GET",
        "/v1/enterprises/Z/decisions",
        Some(ADMIN),
        "",
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, body, _) = call(&state, "GET", "/v1/nothing", Some(ADMIN), "").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test]
async fn ingest_takes_json_lines_or_an_array_and_pushes_back_when_full() {
    let (state, mut rx) = state(1);
    let entry = |id: &str| {
        json!({"id": id, "date_create": 1_700_000_000, "action": "user_login",
               "actor": {"type": "user", "user": {"id": "U1"}},
               "context": {"location": {"type": "enterprise", "id": "E"}, "ip_address": "10.0.0.1"}})
        .to_string()
    };
    let lines = format!("{}\nnot json\n{}\n", entry("a"), entry("b"));
    let (status, body, _) = call(&state, "POST", "/v1/events", Some(ADMIN), &lines).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        (body["accepted"].as_u64(), body["rejected"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(body["rejects"][0]["line"], 2);
    match rx.try_recv().unwrap() {
        Ingest::Events { events, .. } => assert_eq!(events.len(), 2),
        other => panic!("{other:?}"),
    }
    // The queue holds one batch: the second request while it is full is refused with 503.
    let array = format!("[{}, {}]", entry("c"), entry("d"));
    let (status, body, _) = call(&state, "POST", "/v1/events", Some(ADMIN), &array).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (StatusCode::ACCEPTED, Some(2))
    );
    let (status, body, headers) = call(&state, "POST", "/v1/events", Some(ADMIN), &array).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(&body), "unavailable");
    assert_eq!(headers["retry-after"], "1");
    // Bad JSON and oversized bodies: clear 4xx in the same shape.
    let (status, body, _) = call(&state, "POST", "/v1/events", Some(ADMIN), "[{\"id\": ").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let big = "x".repeat(5000);
    let (status, body, _) = call(&state, "POST", "/v1/events", Some(ADMIN), &big).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
}

#[tokio::test]
async fn a_policy_replacement_flows_toward_the_dataflow() {
    let (state, mut rx) = state(4);
    let (status, body, _) = call(
        &state,
        "PUT",
        "/v1/enterprises/E/config",
        Some(ADMIN),
        r#"{"modes": {"tor": "monitor"}, "groups": {"sec": ["A"]}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    match rx.try_recv().unwrap() {
        Ingest::Policies(p) => {
            assert_eq!(
                p.for_enterprise("E").modes["tor"],
                aer::model::decision::Mode::Monitor
            );
            assert_ne!(
                p.for_enterprise("F").modes.get("tor"),
                Some(&aer::model::decision::Mode::Monitor)
            );
        }
        other => panic!("{other:?}"),
    }
    let (_, body, _) = call(&state, "GET", "/v1/enterprises/E/config", Some(READ_E), "").await;
    assert_eq!(body["modes"]["tor"], "monitor");
    let (status, body, _) = call(
        &state,
        "PUT",
        "/v1/enterprises/E/config",
        Some(ADMIN),
        r#"{"modes": {"tor": "sometimes"}}"#,
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let (status, body, _) = call(
        &state,
        "PUT",
        "/v1/enterprises/E/config",
        Some(ADMIN),
        r#"{"mode": {}}"#,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unknown fields are refused: {body}"
    );
}

#[tokio::test]
async fn health_metrics_jobs_and_the_openapi_document() {
    let (state, _rx) = state(4);
    assert_eq!(
        call(&state, "GET", "/healthz", None, "").await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&state, "GET", "/readyz", None, "").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    state.ready.store(true, Ordering::Relaxed);
    assert_eq!(
        call(&state, "GET", "/readyz", None, "").await.0,
        StatusCode::OK
    );
    let (status, body, _) = call(&state, "GET", "/metrics", Some(ADMIN), "").await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().unwrap();
    assert!(
        text.contains("aer_jobs{kind=\"reset\",state=\"pending\"} 3"),
        "{text}"
    );
    assert!(text.contains("aer_http_request_duration_seconds"), "{text}");
    assert!(text.contains("aer_frontier_lag_seconds"), "{text}");
    let (_, body, _) = call(
        &state,
        "GET",
        "/v1/jobs?state=pending&kind=reset",
        Some(ADMIN),
        "",
    )
    .await;
    assert_eq!(body["items"].as_array().unwrap().len(), 3);
    let (status, body, _) = call(&state, "GET", "/v1/jobs?state=sleeping", Some(ADMIN), "").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    // Without a live dataflow, the live views say so.
    let (status, body, _) = call(
        &state,
        "GET",
        "/v1/enterprises/E/baselines",
        Some(READ_E),
        "",
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    let (status, _, _) = call(
        &state,
        "GET",
        "/v1/enterprises/F/aggregates",
        Some(READ_E),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, doc, _) = call(&state, "GET", "/openapi.json", None, "").await;
    for path in [
        "/v1/events",
        "/v1/enterprises/{enterprise}/decisions",
        "/v1/decisions/stream",
        "/metrics",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
}

/// `aer run` end to end: a policy replaced through the API, then a generated workload posted
/// over HTTP (in chunks, retrying on 503), give exactly the audit entries `aer replay` writes
/// for the same file and policy; the decision stream carries every decision; the live
/// baselines and aggregates answer as of the last event; shutdown drains everything, with a
/// stream still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aer_run_over_http_gives_the_replay_results() {
    use aer::generate::{generate, GenerateOptions};
    use aer::replay::{replay, ReplayOptions};
    use aer::run::{run, RunOptions};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let generated = {
        let mut file = std::fs::File::create(&input).unwrap();
        generate(
            &GenerateOptions {
                events: 6_000,
                enterprises: 2,
                days: 2,
                seed: 3,
                ..GenerateOptions::default()
            },
            &mut file,
        )
        .unwrap()
    };
    let tor = dir.path().join("tor.txt");
    std::fs::write(&tor, generated.tor_exits.join("\n")).unwrap();
    let mut config = Config::default();
    config.detectors.tor_exit_list = Some(tor);
    // One enterprise's policy is replaced through the API before the events arrive: Tor only
    // monitors there. The replay gets the same section in its file.
    let tor_enterprise = generated
        .labels
        .iter()
        .find(|l| l.kind == "tor_access")
        .unwrap()
        .enterprise
        .clone();
    let mut replayed = config.clone();
    replayed.enterprises.insert(
        tor_enterprise.clone(),
        toml::from_str("modes = { tor = \"monitor\" }").unwrap(),
    );
    let expected = tokio::task::spawn_blocking({
        let (config, input, out) = (replayed, input.clone(), dir.path().join("replay"));
        move || {
            replay(&ReplayOptions {
                inputs: vec![input],
                config,
                workers: 1,
                cluster: None,
                out,
                progress: false,
                db: None,
                operator_times: false,
            })
            .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(expected.summary.resets > 0 && !expected.audit.is_empty());
    assert!(
        expected
            .decisions
            .iter()
            .any(|d| d.enterprise == tor_enterprise
                && d.anomaly.reason == "tor"
                && d.outcome == Outcome::Monitored),
        "the replaced policy matters"
    );

    let mut options = RunOptions::new(config);
    options.listen = "127.0.0.1:0".parse().unwrap();
    options.db = dir.path().join("live.db");
    options.auth = Auth {
        admin: Some(ADMIN.into()),
        ..Auth::default()
    };
    options.idle_flush = std::time::Duration::from_millis(200);
    options.queue = 2;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let service = tokio::spawn(run(
        options,
        async {
            stop_rx.await.ok();
        },
        Some(bound_tx),
    ));
    let base = format!("http://{}", bound_rx.await.unwrap());
    let client = reqwest::Client::new();

    // Subscribe to the decision stream first.
    let mut stream = client
        .get(format!("{base}/v1/decisions/stream"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let streamed = tokio::spawn(async move {
        let mut text = String::new();
        while let Ok(Some(chunk)) = stream.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text.matches("event: decision").count()
    });

    let replaced = client
        .put(format!("{base}/v1/enterprises/{tor_enterprise}/config"))
        .bearer_auth(ADMIN)
        .body(r#"{"modes": {"tor": "monitor"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), StatusCode::OK);
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut refused = 0;
    for chunk in lines.chunks(500) {
        loop {
            let response = client
                .post(format!("{base}/v1/events"))
                .bearer_auth(ADMIN)
                .body(chunk.join("\n"))
                .send()
                .await
                .unwrap();
            match response.status().as_u16() {
                202 => break,
                503 => {
                    refused += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => panic!("ingest answered {other}"),
            }
        }
    }
    // Wait until the last event's time is final (the idle flush moves the watermark).
    let last = expected.summary.last_time.unwrap();
    let enterprise = expected.decisions[0].enterprise.clone();
    loop {
        let page: Value = client
            .get(format!("{base}/v1/enterprises/{enterprise}/decisions"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["as_of"].as_u64().is_some_and(|t| t >= last) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Live baselines and window counts, consistent at as_of.
    let get = |path: String| {
        let client = client.clone();
        async move {
            client
                .get(path)
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let baselines = get(format!("{base}/v1/enterprises/{enterprise}/baselines")).await;
    assert!(baselines["as_of"].as_u64().unwrap() >= last);
    let rules = baselines["items"].as_array().unwrap();
    assert_eq!(
        rules.len(),
        Config::default().rules().unwrap().len(),
        "one entry per rule"
    );
    assert!(
        rules.iter().any(|r| r["samples"].as_u64().unwrap() > 0),
        "{baselines}"
    );
    let aggregates = get(format!("{base}/v1/enterprises/{enterprise}/aggregates")).await;
    assert!(aggregates["as_of"].as_u64().unwrap() >= last);
    let items = aggregates["items"].as_array().unwrap();
    assert!(items
        .iter()
        .all(|i| i["count"].as_u64().unwrap() > 0 && i["threshold"].is_u64()));
    if let Some(one) = items.first() {
        let key = one["key"].as_str().unwrap();
        let narrowed = get(format!(
            "{base}/v1/enterprises/{enterprise}/aggregates?key={key}"
        ))
        .await;
        assert!(narrowed["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["key"] == key));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop_tx.send(()).unwrap();
    service.await.unwrap().unwrap();
    assert_eq!(
        streamed.await.unwrap(),
        expected.decisions.len(),
        "every decision streamed"
    );
    let store = JobStore::open(&dir.path().join("live.db")).unwrap();
    assert_eq!(
        store.audit_entries().unwrap(),
        expected.audit,
        "live audit = replay audit"
    );
    // The notifications, coalesced live by event time, are the replay's, message for message.
    let live_messages: Vec<String> = store
        .jobs(Some(aer::response::store::JobKind::Notify), None)
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut replay_messages: Vec<String> = expected
        .notifications
        .iter()
        .map(|n| n.id.clone())
        .collect();
    replay_messages.sort();
    assert!(expected
        .notifications
        .iter()
        .any(|n| n.kind == aer::response::notify::MessageKind::Digest));
    assert_eq!(
        live_messages, replay_messages,
        "live notifications = replay notifications"
    );
    let resets = store
        .jobs(Some(aer::response::store::JobKind::Reset), None)
        .unwrap();
    assert_eq!(resets.len() as u64, expected.summary.resets);
    assert!(resets
        .iter()
        .all(|j| j.state == aer::response::store::JobState::Done));
    eprintln!("ingest refusals (back-pressure) while posting: {refused}");
}
