//! Support for the response stage's tests: a decision builder, and small fake peers on
//! 127.0.0.1, each on its own thread and runtime so that the code under test (or a child process)
//! talks to it over real sockets.
//!
//! Fake Slack Web API, `POST /api/admin.users.session.reset`:
//! - request: `Authorization: Bearer <token>`, JSON body `{"user_id": "U..."}`;
//! - response: the next scripted [`Reply`], or `200 {"ok":true}` when the script is empty.
//!
//! Fake incoming webhook, `POST /hook`: records the JSON body and the `X-Aer-Notification-Id`
//! header; answers the next scripted status (200 `ok` when the script is empty).
//!
//! SMTP sink: speaks just enough SMTP (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) to accept
//! mail and records each message's envelope and data.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A decision about `user` of enterprise `E` at `at`, from a Tor sign-in on session `s1`.
pub fn tor_decision(
    user: &str,
    at: u64,
    outcome: aer::model::decision::Outcome,
) -> aer::model::decision::Decision {
    use aer::model::decision::{Decision, Policy};
    let event = aer::model::Event {
        id: format!("e-{user}-{at}").into(),
        time: at,
        action: "user_login".into(),
        enterprise: "E".into(),
        user: user.into(),
        session: Some("s1".into()),
        ip: Some("204.8.156.10".into()),
        ua: None,
        asn: None,
    };
    let finding = aer::model::client::Finding::Tor {
        ip: "204.8.156.10".into(),
    };
    let anomaly = finding.anomaly(&event, at, 0, 3600);
    Decision::record(anomaly, outcome, &Policy::default(), 0, None, Some(at))
}

/// A scripted answer of the fake Slack API or webhook.
#[derive(Clone, Debug)]
pub enum Reply {
    /// HTTP status, optional Retry-After seconds, JSON body.
    Http(u16, Option<u64>, serde_json::Value),
    /// Answer `{"ok":true}` only after this long (to provoke a client timeout).
    Slow(Duration),
}

/// A request the fake received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub authorization: Option<String>,
    pub notification_id: Option<String>,
    pub body: serde_json::Value,
}

#[derive(Default)]
pub struct Fake {
    pub script: Mutex<VecDeque<Reply>>,
    pub seen: Mutex<Vec<Seen>>,
}

impl Fake {
    pub fn push(&self, reply: Reply) {
        self.script.lock().unwrap().push_back(reply);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(fake: Arc<Fake>, headers: HeaderMap, body: serde_json::Value) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    fake.seen.lock().unwrap().push(Seen {
        authorization: header("authorization"),
        notification_id: header("x-aer-notification-id"),
        body,
    });
    let next = fake.script.lock().unwrap().pop_front();
    match next {
        None => Json(serde_json::json!({"ok": true})).into_response(),
        Some(Reply::Slow(d)) => {
            tokio::time::sleep(d).await;
            Json(serde_json::json!({"ok": true})).into_response()
        }
        Some(Reply::Http(status, retry_after, body)) => {
            let mut response = (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
            if let Some(s) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", s.to_string().parse().unwrap());
            }
            response
        }
    }
}

/// Serves `router` on 127.0.0.1 from a thread of its own; returns the base URL.
fn serve(router: Router) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, router).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

/// Starts a fake Slack Web API; returns its base URL (use as `[response.slack] base_url`).
pub fn slack() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let router = Router::new()
        .route(
            "/api/admin.users.session.reset",
            post(
                |State(fake): State<Arc<Fake>>,
                 headers: HeaderMap,
                 Json(body): Json<serde_json::Value>| {
                    answer(fake, headers, body)
                },
            ),
        )
        .with_state(fake.clone());
    (serve(router), fake)
}

/// Starts a fake incoming webhook; returns its URL.
pub fn webhook() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let router = Router::new()
        .route(
            "/hook",
            post(
                |State(fake): State<Arc<Fake>>,
                 headers: HeaderMap,
                 Json(body): Json<serde_json::Value>| {
                    answer(fake, headers, body)
                },
            ),
        )
        .with_state(fake.clone());
    (format!("{}/hook", serve(router)), fake)
}

/// A message the SMTP sink accepted.
#[derive(Clone, Debug)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

/// Starts an SMTP sink; returns its port and the mail it accepted.
pub fn smtp_sink() -> (u16, Arc<Mutex<Vec<Mail>>>) {
    let mails = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let store = mails.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                let store = store.clone();
                tokio::spawn(async move {
                    let _ = smtp_session(socket, store).await;
                });
            }
        });
    });
    (rx.recv().unwrap(), mails)
}

async fn smtp_session(
    socket: tokio::net::TcpStream,
    store: Arc<Mutex<Vec<Mail>>>,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 sink ESMTP\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            write.write_all(b"250-sink\r\n250 8BITMIME\r\n").await?;
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            write.write_all(b"250 ok\r\n").await?;
        } else if upper.starts_with("MAIL FROM:") {
            from = line[10..].trim().to_string();
            write.write_all(b"250 ok\r\n").await?;
        } else if upper.starts_with("RCPT TO:") {
            to.push(line[8..].trim().to_string());
            write.write_all(b"250 ok\r\n").await?;
        } else if upper.starts_with("RSET") {
            from.clear();
            to.clear();
            write.write_all(b"250 ok\r\n").await?;
        } else if upper.starts_with("DATA") {
            write.write_all(b"354 go on\r\n").await?;
            let mut data = String::new();
            while let Some(line) = lines.next_line().await? {
                if line == "." {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
                data.push('\n');
            }
            store.lock().unwrap().push(Mail {
                from: std::mem::take(&mut from),
                to: std::mem::take(&mut to),
                data,
            });
            write.write_all(b"250 queued\r\n").await?;
        } else if upper.starts_with("QUIT") {
            write.write_all(b"221 bye\r\n").await?;
            break;
        } else {
            write.write_all(b"502 not implemented\r\n").await?;
        }
    }
    Ok(())
}

/// A fake Slack Audit Logs API, `GET /audit/v1/logs?oldest=&limit=&cursor=`: serves `entries`
/// with `date_create >= oldest`, newest first, `limit` per page, the cursor being the offset.
/// Scripted replies (for example a 429) are answered before the real page.
#[derive(Default)]
pub struct FakeAudit {
    pub entries: Mutex<Vec<serde_json::Value>>,
    pub script: Mutex<VecDeque<Reply>>,
    /// (oldest, cursor, authorization) of every request.
    pub requests: Mutex<Vec<(u64, String, Option<String>)>>,
}

pub fn slack_audit() -> (String, Arc<FakeAudit>) {
    use axum::extract::Query;
    use std::collections::HashMap;
    let fake = Arc::new(FakeAudit::default());
    let router = Router::new()
        .route(
            "/audit/v1/logs",
            axum::routing::get(
                |State(fake): State<Arc<FakeAudit>>,
                 headers: HeaderMap,
                 Query(q): Query<HashMap<String, String>>| async move {
                    let oldest: u64 = q.get("oldest").and_then(|v| v.parse().ok()).unwrap_or(0);
                    let limit: usize = q.get("limit").and_then(|v| v.parse().ok()).unwrap_or(100);
                    let cursor = q.get("cursor").cloned().unwrap_or_default();
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    fake.requests
                        .lock()
                        .unwrap()
                        .push((oldest, cursor.clone(), auth));
                    if let Some(Reply::Http(status, after, body)) =
                        fake.script.lock().unwrap().pop_front()
                    {
                        let mut r =
                            (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
                        if let Some(s) = after {
                            r.headers_mut()
                                .insert("retry-after", s.to_string().parse().unwrap());
                        }
                        return r;
                    }
                    let mut matching: Vec<serde_json::Value> = fake
                        .entries
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|e| e["date_create"].as_u64().unwrap() >= oldest)
                        .cloned()
                        .collect();
                    matching.sort_by_key(|e| std::cmp::Reverse(e["date_create"].as_u64().unwrap()));
                    let start: usize = cursor.parse().unwrap_or(0);
                    let end = (start + limit).min(matching.len());
                    let next = if end < matching.len() {
                        end.to_string()
                    } else {
                        String::new()
                    };
                    Json(serde_json::json!({
                        "ok": true,
                        "entries": matching[start..end],
                        "response_metadata": {"next_cursor": next},
                    }))
                    .into_response()
                },
            ),
        )
        .with_state(fake.clone());
    (serve(router), fake)
}

/// A Slack audit entry: a user_login of `user` in enterprise E at `at`.
pub fn audit_entry(id: &str, at: u64, user: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "date_create": at, "action": "user_login",
        "actor": {"type": "user", "user": {"id": user}},
        "context": {"location": {"type": "enterprise", "id": "E"}, "ip_address": "10.0.0.1"},
    })
}
