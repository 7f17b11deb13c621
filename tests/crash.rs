//! Crash safety of the response stage: `aer replay` runs as a child process against a fake Slack
//! API and a fake webhook, is stopped at a fault point (`AER_FAULT_PAUSE`, see `src/fault.rs`)
//! and killed with SIGKILL there, then run again on the same store. Whatever the point, the
//! resets Slack received, the webhook messages delivered, the store's audit entries and jobs, and
//! the `audit.jsonl` and `notifications.jsonl` outputs equal those of an uninterrupted run: no
//! duplicates, nothing missing.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use aer::generate::{generate, GenerateOptions};
use aer::response::store::{JobKind, JobState, JobStore};
use support::Fake;

struct Workload {
    _dir: tempfile::TempDir,
    root: PathBuf,
    input: PathBuf,
    tor: PathBuf,
}

fn workload() -> Workload {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let input = root.join("in.jsonl");
    let mut file = std::fs::File::create(&input).unwrap();
    let generated = generate(
        &GenerateOptions {
            events: 12_000,
            enterprises: 2,
            days: 3,
            seed: 5,
            ..GenerateOptions::default()
        },
        &mut file,
    )
    .unwrap();
    drop(file);
    let tor = root.join("tor.txt");
    std::fs::write(&tor, generated.tor_exits.join("\n")).unwrap();
    Workload {
        _dir: dir,
        root,
        input,
        tor,
    }
}

/// What one (possibly interrupted, then resumed) replay left behind.
#[derive(Debug, PartialEq, Eq)]
struct Effects {
    /// user id -> reset calls Slack received.
    resets: BTreeMap<String, usize>,
    /// notification id -> webhook deliveries.
    deliveries: BTreeMap<String, usize>,
    audit: Vec<serde_json::Value>,
    jobs: Vec<(String, JobKind, JobState)>,
    audit_jsonl: String,
    notifications_jsonl: String,
}

struct Peers {
    slack: Arc<Fake>,
    hook: Arc<Fake>,
    config: PathBuf,
}

fn peers(w: &Workload, name: &str) -> Peers {
    let (slack_url, slack) = support::slack();
    let (hook_url, hook) = support::webhook();
    let config = w.root.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            r##"
[detectors]
tor_exit_list = "{tor}"

[response]
backend = "slack"
[response.slack]
base_url = "{slack_url}"
token_env = "AER_CRASH_TEST_TOKEN"

[notifications.channels.hook]
kind = "webhook"
url = "{hook_url}"

[notifications.routes.user]
channel = "hook"
[notifications.routes.security_admins]
channel = "hook"
addresses = ["#secops"]
"##,
            tor = w.tor.display()
        ),
    )
    .unwrap();
    Peers {
        slack,
        hook,
        config,
    }
}

fn replay(w: &Workload, peers: &Peers, out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aer"));
    cmd.arg("replay")
        .arg(&w.input)
        .arg("--config")
        .arg(&peers.config)
        .arg("--out")
        .arg(out)
        .env("AER_CRASH_TEST_TOKEN", "xoxp-crash")
        .env("RUST_LOG", "error")
        .env_remove("AER_FAULT_PAUSE");
    cmd
}

/// Runs a replay that pauses at `point` (`name:n`), kills it there with SIGKILL, and says
/// whether it reached the point.
fn crash_at(w: &Workload, peers: &Peers, out: &Path, point: &str) -> bool {
    let mut child = replay(w, peers, out)
        .env("AER_FAULT_PAUSE", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let marker = format!("aer: paused at fault point {point}");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut reached = false;
    for line in stderr.lines() {
        if line.unwrap().contains(&marker) {
            reached = true;
            break;
        }
    }
    // SIGKILL: no destructor, no flush, no WAL checkpoint.
    child.kill().unwrap();
    child.wait().unwrap();
    reached
}

fn complete(w: &Workload, peers: &Peers, out: &Path) {
    let status = replay(w, peers, out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "replay failed: {status}");
}

fn effects(peers: &Peers, out: &Path) -> Effects {
    let mut resets = BTreeMap::new();
    for seen in peers.slack.seen() {
        assert_eq!(seen.authorization.as_deref(), Some("Bearer xoxp-crash"));
        *resets
            .entry(seen.body["user_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let mut deliveries = BTreeMap::new();
    for seen in peers.hook.seen() {
        *deliveries.entry(seen.notification_id.unwrap()).or_default() += 1;
    }
    let store = JobStore::open(&out.join("aer.db")).unwrap();
    let jobs = store
        .jobs(None, None)
        .unwrap()
        .into_iter()
        .map(|j| (j.id, j.kind, j.state))
        .collect();
    Effects {
        resets,
        deliveries,
        audit: store.audit_entries().unwrap(),
        jobs,
        audit_jsonl: std::fs::read_to_string(out.join("audit.jsonl")).unwrap(),
        notifications_jsonl: std::fs::read_to_string(out.join("notifications.jsonl")).unwrap(),
    }
}

#[test]
fn a_replay_killed_anywhere_and_run_again_neither_repeats_nor_loses_anything() {
    let w = workload();
    let clean = peers(&w, "clean");
    let clean_out = w.root.join("clean");
    complete(&w, &clean, &clean_out);
    let expected = effects(&clean, &clean_out);
    // The workload exercises what the test claims to check.
    assert!(expected.resets.len() >= 2, "{:?}", expected.resets);
    assert!(expected.resets.values().all(|c| *c == 1));
    assert!(expected.deliveries.len() >= 4, "{:?}", expected.deliveries);
    assert!(expected.deliveries.values().all(|c| *c == 1));
    assert!(expected.jobs.iter().all(|j| j.2 == JobState::Done));
    assert!(!expected.audit.is_empty());
    let jobs = expected.jobs.len();

    let points = [
        "pipeline:1".to_string(),
        "accept_decision:2".to_string(),
        "accept_notification:1".to_string(),
        "accepted:1".to_string(),
        "job:1".to_string(),
        format!("job:{}", jobs / 2),
        format!("job:{}", jobs - 1),
        "outputs:1".to_string(),
    ];
    for (i, point) in points.iter().enumerate() {
        let run = peers(&w, &format!("run{i}"));
        let out = w.root.join(format!("run{i}"));
        assert!(crash_at(&w, &run, &out, point), "never reached {point}");
        complete(&w, &run, &out);
        let got = effects(&run, &out);
        assert_eq!(got, expected, "killed at {point}");
    }
}
