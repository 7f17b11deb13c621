//! The response stage's calls to the outside world, against fake peers on 127.0.0.1: the Slack
//! `admin.users.session.reset` backend (token, body, ok:false, 429 / ratelimited with Retry-After,
//! 5xx, timeouts), the Slack incoming-webhook channel and the SMTP email channel.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use aer::model::decision::Outcome;
use aer::response::channel::{
    Channel, Channels, EmailChannel, EmailSettings, SmtpTls, WebhookChannel,
};
use aer::response::config::NotificationsConfig;
use aer::response::notify::{Coalescer, Notification, Recipient, Role};
use aer::response::reset::{ResetBackend, SlackBackend};
use aer::response::store::{Job, JobKind, JobState, JobStore};
use aer::response::{accept, drain, run_due, CallError, Responders, RetryPolicy};
use serde_json::json;
use support::{tor_decision, Reply};

fn job(user: &str, enterprise: &str) -> Job {
    Job {
        id: format!("d-{user}"),
        kind: JobKind::Reset,
        enterprise: enterprise.into(),
        subject: user.into(),
        event_time: 100,
        state: JobState::Pending,
        attempts: 0,
        next_attempt_ms: 0,
        last_error: None,
        payload: json!({"session": "s1"}),
    }
}

fn retryable(result: Result<(), CallError>) -> (String, Option<Duration>) {
    match result {
        Err(CallError::Retryable {
            message,
            retry_after,
        }) => (message, retry_after),
        other => panic!("expected a retryable error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_slack_backend_speaks_admin_users_session_reset() {
    let (base, fake) = support::slack();
    let tokens = BTreeMap::from([("E2".to_string(), "xoxp-e2".to_string())]);
    let backend = SlackBackend::new(
        &base,
        Some("xoxp-default".into()),
        tokens,
        Duration::from_millis(500),
    )
    .unwrap();

    assert_eq!(backend.reset(&job("U1", "E1")).await, Ok(()));
    assert_eq!(backend.reset(&job("U2", "E2")).await, Ok(()));
    let seen = fake.seen();
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Bearer xoxp-default")
    );
    assert_eq!(seen[0].body, json!({"user_id": "U1"}));
    assert_eq!(
        seen[1].authorization.as_deref(),
        Some("Bearer xoxp-e2"),
        "per-enterprise token"
    );

    // ok:false with an error no retry can fix: permanent.
    fake.push(Reply::Http(
        200,
        None,
        json!({"ok": false, "error": "invalid_auth"}),
    ));
    assert_eq!(
        backend.reset(&job("U1", "E1")).await,
        Err(CallError::Permanent("invalid_auth".into()))
    );
    // HTTP 429 with Retry-After.
    fake.push(Reply::Http(
        429,
        Some(7),
        json!({"ok": false, "error": "ratelimited"}),
    ));
    let (message, after) = retryable(backend.reset(&job("U1", "E1")).await);
    assert!(message.contains("429"), "{message}");
    assert_eq!(after, Some(Duration::from_secs(7)));
    // ok:false ratelimited on a 200, with Retry-After.
    fake.push(Reply::Http(
        200,
        Some(3),
        json!({"ok": false, "error": "ratelimited"}),
    ));
    assert_eq!(
        retryable(backend.reset(&job("U1", "E1")).await),
        ("ratelimited".to_string(), Some(Duration::from_secs(3)))
    );
    // An error code aer does not know is retried (bounded by max_attempts).
    fake.push(Reply::Http(
        200,
        None,
        json!({"ok": false, "error": "brand_new_error"}),
    ));
    assert_eq!(
        retryable(backend.reset(&job("U1", "E1")).await).0,
        "brand_new_error"
    );
    // 5xx retries; other 4xx are permanent.
    fake.push(Reply::Http(503, None, json!({})));
    assert!(retryable(backend.reset(&job("U1", "E1")).await)
        .0
        .contains("503"));
    fake.push(Reply::Http(404, None, json!({})));
    assert!(matches!(
        backend.reset(&job("U1", "E1")).await,
        Err(CallError::Permanent(m)) if m.contains("404")
    ));
    // A call that outlives the timeout retries.
    fake.push(Reply::Slow(Duration::from_secs(2)));
    let (message, after) = retryable(backend.reset(&job("U1", "E1")).await);
    assert!(
        message.contains("timed out") || message.contains("timeout"),
        "{message}"
    );
    assert_eq!(after, None);
    // No token for the enterprise at all: permanent.
    let bare = SlackBackend::new(&base, None, BTreeMap::new(), Duration::from_secs(1)).unwrap();
    assert!(matches!(
        bare.reset(&job("U1", "E1")).await,
        Err(CallError::Permanent(m)) if m.contains("no Slack token")
    ));
}

#[tokio::test]
async fn a_rate_limited_reset_waits_for_retry_after_then_completes() {
    let (base, fake) = support::slack();
    let backend = SlackBackend::new(
        &base,
        Some("t".into()),
        BTreeMap::new(),
        Duration::from_secs(5),
    )
    .unwrap();
    fake.push(Reply::Http(
        429,
        Some(1),
        json!({"ok": false, "error": "ratelimited"}),
    ));
    let store = JobStore::in_memory().unwrap();
    accept(&store, &[tor_decision("U9", 100, Outcome::Reset)], &[], 0).unwrap();
    let responders = Responders {
        reset: backend,
        channels: Channels::default(),
    };
    let policy = RetryPolicy {
        base_ms: 10,
        ..RetryPolicy::default()
    };
    let now = aer::response::now_ms();
    let first = run_due(&store, &responders, &policy, now).await.unwrap();
    assert_eq!(first.retried, 1);
    let job = store.jobs(None, None).unwrap().remove(0);
    assert!(
        job.next_attempt_ms >= now + 1_000,
        "Retry-After (1 s) beats the 10 ms backoff"
    );
    let rest = drain(&store, &responders, &policy, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(rest.done, 1);
    let job = store.jobs(None, None).unwrap().remove(0);
    assert_eq!((job.state, job.attempts), (JobState::Done, 2));
    assert_eq!(fake.seen().len(), 2);
}

/// A first alert to the security admins about user A.
fn notification(channel: &str, address: &str) -> Notification {
    let mut config = NotificationsConfig::default();
    config.routes.security_admins = Some(aer::response::config::RouteConfig {
        channel: Some("log".into()),
        addresses: Some(vec![address.into()]),
        on: None,
    });
    let mut coalescer = Coalescer::new(config.routing().unwrap(), 300, 4 * 3600);
    let mut n = coalescer
        .offer(&tor_decision("A", 1_700_000_000, Outcome::Reset))
        .into_iter()
        .find(|n| n.recipient.role == Role::SecurityAdmin)
        .unwrap();
    n.recipient = Recipient {
        channel: channel.into(),
        ..n.recipient
    };
    n
}

#[tokio::test]
async fn the_webhook_channel_posts_slack_incoming_webhook_json() {
    let (url, fake) = support::webhook();
    let mut channels = Channels::default();
    channels.insert(
        "hook",
        Channel::Webhook(WebhookChannel::new(&url, Duration::from_secs(5)).unwrap()),
    );
    let n = notification("hook", "#secops");
    channels.deliver(&n).await.unwrap();
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let text = seen[0].body["text"].as_str().unwrap();
    assert!(text.contains(&n.subject) && text.contains("tor"), "{text}");
    assert_eq!(seen[0].notification_id.as_deref(), Some(n.id.as_str()));
    // Slack answers 404 channel_not_found for a removed webhook: permanent; 429 retries.
    fake.push(Reply::Http(404, None, json!("channel_not_found")));
    assert!(
        matches!(channels.deliver(&n).await, Err(CallError::Permanent(m)) if m.contains("channel_not_found"))
    );
    fake.push(Reply::Http(429, Some(2), json!("rate_limited")));
    assert_eq!(
        retryable(channels.deliver(&n).await).1,
        Some(Duration::from_secs(2))
    );
    // A channel nobody configured is a permanent error, not a panic.
    let stray = notification("nowhere", "#x");
    assert!(matches!(
        channels.deliver(&stray).await,
        Err(CallError::Permanent(_))
    ));
}

#[tokio::test]
async fn the_email_channel_sends_mail_over_smtp() {
    let (port, mails) = support::smtp_sink();
    let channel = EmailChannel::new(&EmailSettings {
        host: "127.0.0.1".into(),
        port,
        tls: SmtpTls::None,
        from: "aer <aer@example.com>".into(),
        credentials: None,
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let mut channels = Channels::default();
    channels.insert("mail", Channel::Email(Box::new(channel)));
    let n = notification("mail", "secops@example.com");
    channels.deliver(&n).await.unwrap();
    let mails = mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, vec!["<secops@example.com>".to_string()]);
    assert!(mails[0].from.contains("aer@example.com"));
    let data = &mails[0].data;
    assert!(data.contains(&format!("Subject: {}", n.subject)), "{data}");
    assert!(
        data.contains(&n.id),
        "Message-ID carries the notification id"
    );
    assert!(data.contains("tor"), "{data}");
    // An address that is not one fails for good.
    let bad = notification("mail", "not an address");
    assert!(matches!(
        channels.deliver(&bad).await,
        Err(CallError::Permanent(_))
    ));
}
