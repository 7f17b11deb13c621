//! The response stage's guarantees: jobs and audit entries are idempotent by decision id (a
//! replay or a restart never resets or records twice), failures retry with backoff that honours
//! Retry-After, and a job that keeps failing ends in the dead-letter state with its last error.

use aer::model::decision::Outcome;
use aer::response::channel::Channels;
use aer::response::reset::{LogBackend, ResetBackend};
use aer::response::store::{Job, JobKind, JobState, JobStore};
use aer::response::{accept, audit, run_due, CallError, Responders, RetryPolicy, RunStats};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

mod support;

/// Runs the due jobs once with `backend` and the default channels.
fn run<R: ResetBackend>(store: &JobStore, backend: R, policy: &RetryPolicy, now: i64) -> RunStats {
    let responders = Responders {
        reset: backend,
        channels: Channels::default(),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run_due(store, &responders, policy, now))
        .unwrap()
}

use support::tor_decision as decision;

#[test]
fn a_restart_or_replay_never_resets_or_records_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("aer.db");
    let decisions = vec![
        decision("A", 100, Outcome::Reset),
        decision("B", 200, Outcome::ResetPersisting),
        decision("C", 300, Outcome::Monitored),
        decision("D", 400, Outcome::Duplicate),
    ];
    let backend = LogBackend::default();
    {
        let store = JobStore::open(&db).unwrap();
        let first = accept(&store, &decisions, &[], 0).unwrap();
        assert_eq!(
            (first.resets, first.audit),
            (2, 3),
            "duplicates record no audit entry"
        );
        assert_eq!(run(&store, &backend, &RetryPolicy::default(), 0).done, 2);
    }
    // The process restarts and the same decisions arrive again (a replay).
    let store = JobStore::open(&db).unwrap();
    let again = accept(&store, &decisions, &[], 10).unwrap();
    assert_eq!((again.resets, again.audit), (0, 0));
    assert_eq!(run(&store, &backend, &RetryPolicy::default(), 10).done, 0);
    assert_eq!(
        backend.calls(),
        vec![
            ("E".to_string(), "A".to_string()),
            ("E".to_string(), "B".to_string())
        ]
    );
    assert_eq!(store.jobs(None, Some(JobState::Done)).unwrap().len(), 2);
    assert_eq!(store.audit_entries().unwrap().len(), 3);
}

/// Fails with a retryable error `failures` times, then succeeds.
struct Flaky {
    failures: u32,
    calls: AtomicU32,
    retry_after: Option<Duration>,
}

impl ResetBackend for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    async fn reset(&self, _job: &Job) -> Result<(), CallError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.failures {
            Err(CallError::Retryable {
                message: format!("ratelimited ({n})"),
                retry_after: self.retry_after,
            })
        } else {
            Ok(())
        }
    }
}

#[test]
fn failures_back_off_honour_retry_after_and_then_succeed() {
    let store = JobStore::in_memory().unwrap();
    accept(&store, &[decision("A", 100, Outcome::Reset)], &[], 0).unwrap();
    let backend = Flaky {
        failures: 2,
        calls: AtomicU32::new(0),
        retry_after: Some(Duration::from_secs(30)),
    };
    let policy = RetryPolicy::default();
    assert_eq!(run(&store, &backend, &policy, 0).retried, 1);
    let job = store.jobs(None, None).unwrap().remove(0);
    assert_eq!(job.attempts, 1);
    assert!(
        job.next_attempt_ms >= 30_000,
        "Retry-After honoured: {}",
        job.next_attempt_ms
    );
    assert_eq!(job.last_error.as_deref(), Some("ratelimited (0)"));
    // Nothing is due before then.
    assert_eq!(run(&store, &backend, &policy, 29_999), Default::default());
    let t = job.next_attempt_ms;
    assert_eq!(run(&store, &backend, &policy, t).retried, 1);
    let t = store.jobs(None, None).unwrap()[0].next_attempt_ms;
    assert_eq!(run(&store, &backend, &policy, t).done, 1);
    let job = store.jobs(None, None).unwrap().remove(0);
    assert_eq!((job.state, job.attempts), (JobState::Done, 3));
}

#[test]
fn a_job_that_keeps_failing_goes_to_the_dead_letter_state() {
    let store = JobStore::in_memory().unwrap();
    accept(&store, &[decision("A", 100, Outcome::Reset)], &[], 0).unwrap();
    let backend = Flaky {
        failures: u32::MAX,
        calls: AtomicU32::new(0),
        retry_after: None,
    };
    let policy = RetryPolicy {
        max_attempts: 4,
        ..RetryPolicy::default()
    };
    let mut now = 0;
    let mut delays = Vec::new();
    for _ in 0..10 {
        run(&store, &backend, &policy, now);
        let job = store.jobs(None, None).unwrap().remove(0);
        if job.state == JobState::Dead {
            break;
        }
        delays.push(job.next_attempt_ms - now);
        now = job.next_attempt_ms;
    }
    let dead = store.jobs(None, Some(JobState::Dead)).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 4);
    assert_eq!(dead[0].last_error.as_deref(), Some("ratelimited (3)"));
    // Exponential: 1 s, 2 s, 4 s, each within the ±20 % jitter.
    assert_eq!(delays.len(), 3);
    for (i, d) in delays.iter().enumerate() {
        let base = 1000 * (1 << i);
        assert!(
            *d >= base * 8 / 10 && *d <= base * 12 / 10,
            "delay {i}: {d}"
        );
    }
    // A permanent error is dead at once.
    let store = JobStore::in_memory().unwrap();
    accept(&store, &[decision("B", 100, Outcome::Reset)], &[], 0).unwrap();
    struct Refuses;
    impl ResetBackend for Refuses {
        fn name(&self) -> &'static str {
            "refuses"
        }
        async fn reset(&self, _job: &Job) -> Result<(), CallError> {
            Err(CallError::Permanent("user_not_found".into()))
        }
    }
    assert_eq!(run(&store, &Refuses, &policy, 0).dead, 1);
}

#[test]
fn audit_entries_are_slack_shaped() {
    let reset = audit::entry(&decision("A", 100, Outcome::Reset)).unwrap();
    assert_eq!(
        reset["action"],
        "user_sessions_reset_by_anomaly_event_response"
    );
    assert_eq!(reset["date_create"], 100);
    assert_eq!(reset["entity"]["type"], "user");
    assert_eq!(reset["entity"]["user"]["id"], "A");
    assert_eq!(reset["context"]["location"]["id"], "E");
    assert_eq!(reset["context"]["session_id"], "s1");
    assert_eq!(reset["details"]["reasons"][0], "tor");
    assert_eq!(reset["details"]["decision"], "reset");
    assert_eq!(reset["details"]["observed"], 1);
    assert!(reset["details"]["anomaly_id"].is_string());
    let monitored = audit::entry(&decision("A", 100, Outcome::Monitored)).unwrap();
    assert_eq!(monitored["action"], "anomaly_event_response_monitored");
    let suppressed = audit::entry(&decision("A", 100, Outcome::LoopSuppressed)).unwrap();
    assert_eq!(
        suppressed["action"],
        "anomaly_event_response_loop_suppressed"
    );
    assert_ne!(reset["id"], monitored["id"]);
    for quiet in [Outcome::Duplicate, Outcome::Excluded, Outcome::Ignored] {
        assert!(audit::entry(&decision("A", 100, quiet)).is_none());
    }
    // An audit entry goes through aer's own codec as an event.
    let (mut events, mut rejects) = (Vec::new(), Vec::new());
    aer::io::codec::decode_line(
        &reset.to_string(),
        aer::io::codec::LineRef {
            source: "audit",
            line: 1,
        },
        &mut events,
        &mut rejects,
    );
    assert_eq!(
        rejects.len(),
        1,
        "actor is the app, not a user: rejected, not crashed"
    );
}

#[test]
fn replaying_twice_into_one_store_resets_each_decision_once() {
    use aer::config::Config;
    use aer::generate::{generate, GenerateOptions};
    use aer::replay::{replay, ReplayOptions};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut file = std::fs::File::create(&input).unwrap();
    let generated = generate(
        &GenerateOptions {
            events: 20_000,
            enterprises: 2,
            days: 3,
            seed: 11,
            ..GenerateOptions::default()
        },
        &mut file,
    )
    .unwrap();
    drop(file);
    let tor = dir.path().join("tor.txt");
    std::fs::write(&tor, generated.tor_exits.join("\n")).unwrap();
    let mut config = Config::default();
    config.detectors.tor_exit_list = Some(tor);
    let db = dir.path().join("aer.db");
    let (mut audits, mut notes) = (Vec::new(), Vec::new());
    for run in 0..2 {
        let out = dir.path().join(format!("out{run}"));
        let report = replay(&ReplayOptions {
            inputs: vec![input.clone()],
            config: config.clone(),
            workers: 1,
            cluster: None,
            out: out.clone(),
            progress: false,
            db: Some(db.clone()),
            operator_times: false,
        })
        .unwrap();
        // Tor responds by default (Slack's shipping modes): the injected Tor sign-ins reset.
        assert!(report.summary.resets >= 2, "{:?}", report.summary);
        let store = JobStore::open(&db).unwrap();
        let resets = store.jobs(Some(JobKind::Reset), None).unwrap();
        assert_eq!(
            resets.len() as u64,
            report.summary.resets,
            "one job per resetting decision"
        );
        let deliveries = store.jobs(Some(JobKind::Notify), None).unwrap();
        assert_eq!(
            deliveries.len() as u64,
            report.summary.notifications,
            "one job per message"
        );
        assert!(report.summary.notifications > 0);
        assert!(resets
            .iter()
            .chain(&deliveries)
            .all(|j| j.state == JobState::Done && j.attempts == 1));
        assert_eq!(
            store.audit_entries().unwrap().len() as u64,
            report.summary.audit_entries
        );
        if run == 1 {
            assert_eq!(
                report.response.accepted,
                Default::default(),
                "the second replay adds nothing to the store"
            );
            assert_eq!(report.response.ran, Default::default(), "and runs nothing");
        }
        audits.push(std::fs::read_to_string(out.join("audit.jsonl")).unwrap());
        notes.push(std::fs::read_to_string(out.join("notifications.jsonl")).unwrap());
    }
    assert_eq!(audits[0], audits[1]);
    assert_eq!(notes[0], notes[1]);
    assert!(audits[0].contains("user_sessions_reset_by_anomaly_event_response"));
}
