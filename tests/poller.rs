//! The Slack Audit Logs API poller against a fake API on 127.0.0.1: cursor pagination, the bearer
//! token, 429 with Retry-After, delivery oldest first, and a restart from the SQLite checkpoint
//! with no gaps and no duplicates (entries at the checkpoint's own second included).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aer::api::metrics::Metrics;
use aer::api::Ingest;
use aer::io::slack_audit::{Poller, SlackAuditConfig};
use serde_json::json;
use support::{audit_entry, Reply};
use tokio::sync::mpsc;

fn drain(rx: &mut mpsc::Receiver<Ingest>) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while let Ok(Ingest::Events { events, .. }) = rx.try_recv() {
        out.extend(events.into_iter().map(|e| (e.time, e.id.to_string())));
    }
    out
}

#[tokio::test]
async fn the_poller_pages_retries_and_resumes_without_gaps_or_duplicates() {
    let (base, fake) = support::slack_audit();
    {
        let mut entries = fake.entries.lock().unwrap();
        for i in 0..25u64 {
            entries.push(audit_entry(&format!("e{i:02}"), 1_000 + i / 2, "U1"));
        }
    }
    std::env::set_var("AER_TEST_AUDIT_TOKEN", "xoxp-audit");
    let config = SlackAuditConfig {
        base_url: base,
        token_env: "AER_TEST_AUDIT_TOKEN".into(),
        limit: 10,
        backfill: Duration::from_secs(100 * 365 * 86_400),
        request_interval: Duration::from_millis(10),
        ..SlackAuditConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("aer.db");
    let metrics = Arc::new(Metrics::default());
    let (tx, mut rx) = mpsc::channel(16);

    // First cycle: three pages, one 429 on the way.
    fake.script.lock().unwrap().push_back(Reply::Http(
        429,
        Some(1),
        json!({"ok": false, "error": "ratelimited"}),
    ));
    let mut poller = Poller::new(config.clone(), &db, tx.clone(), metrics.clone()).unwrap();
    let started = Instant::now();
    assert_eq!(poller.cycle().await.unwrap(), 25);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    let first = drain(&mut rx);
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(first, sorted, "delivered oldest first");
    assert_eq!(first.len(), 25);
    let requests = fake.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 4, "a refused request and three pages");
    assert!(requests
        .iter()
        .all(|r| r.2.as_deref() == Some("Bearer xoxp-audit")));
    assert_eq!(requests[2].1, "10", "the cursor is followed");
    let checkpoint = poller.checkpoint().unwrap().unwrap();
    assert_eq!(checkpoint.oldest, 1_012);
    assert_eq!(checkpoint.ids.len(), 1, "e24 alone at 1012");
    drop(poller);

    // New entries arrive, two of them in the checkpoint's own second; the service restarts.
    {
        let mut entries = fake.entries.lock().unwrap();
        entries.push(audit_entry("late-a", 1_012, "U2"));
        entries.push(audit_entry("late-b", 1_012, "U3"));
        for i in 0..3u64 {
            entries.push(audit_entry(&format!("n{i}"), 1_020 + i, "U1"));
        }
    }
    let mut poller = Poller::new(config.clone(), &db, tx.clone(), metrics.clone()).unwrap();
    assert_eq!(poller.cycle().await.unwrap(), 5);
    let ids: Vec<String> = drain(&mut rx).into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, vec!["late-a", "late-b", "n0", "n1", "n2"]);
    let asked = fake.requests.lock().unwrap().last().unwrap().0;
    assert_eq!(asked, 1_012, "resumed from the checkpoint");
    // Nothing new: nothing delivered, the checkpoint unchanged.
    assert_eq!(poller.cycle().await.unwrap(), 0);
    assert!(drain(&mut rx).is_empty());
    assert_eq!(poller.checkpoint().unwrap().unwrap().oldest, 1_022);
    // A missing token is a clear error at start.
    let bad = SlackAuditConfig {
        token_env: "AER_TEST_NO_SUCH_TOKEN".into(),
        ..config
    };
    let err = Poller::new(bad, &db, tx, metrics)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("AER_TEST_NO_SUCH_TOKEN"), "{err}");
}
