//! Ingestion against real third-party data and the replay contract: every line of the Panther
//! Slack samples is accepted or rejected with a reason, and replay output is identical for any
//! worker count.

use aer::config::Config;
use aer::generate::{generate, GenerateOptions};
use aer::io::codec::RejectReason;
use aer::io::source::read_file;
use aer::replay::{replay, ReplayOptions};
use std::path::PathBuf;

fn panther() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/third_party/panther_slack_audit_samples.jsonl")
}

#[test]
fn every_panther_sample_line_is_accepted_or_rejected_with_a_reason() {
    let decoded = read_file(&panther()).expect("the samples are readable");
    assert_eq!(decoded.lines, 66);
    assert_eq!(
        decoded.event_count() + decoded.rejects.len(),
        66,
        "one outcome per line"
    );
    // 32 lines have no date_create; every other line is complete.
    assert_eq!(decoded.rejects.len(), 32);
    for r in &decoded.rejects {
        assert_eq!(r.reason, RejectReason::MissingDateCreate, "line {}", r.line);
        assert!(r.line >= 1 && r.line <= 66);
        assert!(!r.excerpt.is_empty());
    }
    // String dates parse, including the fractional form on one line.
    assert!(decoded.events().any(|e| e.time == 1_659_026_894)); // 2022-07-28 16:48:14
    assert!(decoded.events().any(|e| e.time == 1_724_075_693)); // 2024-08-19 13:54:53.000000000
                                                                // Lines without an id get a derived one; ids are unique after that except true re-sends.
    let derived = decoded
        .events()
        .filter(|e| e.id.to_string().starts_with("h-"))
        .count();
    assert!(derived > 0);
}

#[test]
fn replaying_the_panther_samples_counts_rejects_and_duplicates() {
    let out = tempfile::tempdir().unwrap();
    let report = replay(&ReplayOptions {
        inputs: vec![panther()],
        config: Config::default(),
        workers: 1,
        cluster: None,
        out: out.path().to_path_buf(),
        progress: false,
        db: None,
    })
    .unwrap();
    let s = &report.summary;
    assert_eq!(s.lines, 66);
    assert_eq!(s.rejected.get("missing_date_create"), Some(&32));
    assert_eq!(s.accepted, 34);
    // Several sample lines are exact copies (same id): they count once.
    assert_eq!(s.events + s.duplicates, 34);
    assert!(s.duplicates > 0);
    let rejects = std::fs::read_to_string(out.path().join("rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), 32);
    assert!(rejects.contains("\"reason\":\"missing_date_create\""));
    assert!(out.path().join("summary.json").exists());
}

fn sorted_lines(path: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn replay_output_is_identical_for_one_and_two_workers() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut file = std::fs::File::create(&input).unwrap();
    let generated = generate(
        &GenerateOptions {
            events: 30_000,
            enterprises: 3,
            days: 3,
            seed: 7,
            ..GenerateOptions::default()
        },
        &mut file,
    )
    .unwrap();
    drop(file);
    let mut outs = Vec::new();
    for workers in [1, 2] {
        let out = dir.path().join(format!("out{workers}"));
        replay(&ReplayOptions {
            inputs: vec![input.clone()],
            config: Config::default(),
            workers,
            cluster: None,
            out: out.clone(),
            progress: false,
            db: None,
        })
        .unwrap();
        outs.push(out);
    }
    for name in [
        "anomalies.jsonl",
        "decisions.jsonl",
        "audit.jsonl",
        "rejects.jsonl",
        "summary.json",
    ] {
        assert_eq!(
            sorted_lines(&outs[0].join(name)),
            sorted_lines(&outs[1].join(name)),
            "{name}"
        );
    }
    let anomalies = sorted_lines(&outs[0].join("anomalies.jsonl"));
    let decisions = sorted_lines(&outs[0].join("decisions.jsonl"));
    assert_eq!(decisions.len(), anomalies.len(), "one decision per anomaly");
    assert!(
        !anomalies.is_empty(),
        "the injected attacks produce anomalies"
    );
    // Each injected mass download is reported.
    for label in generated
        .labels
        .iter()
        .filter(|l| l.kind == "mass_download")
    {
        assert!(
            anomalies
                .iter()
                .any(|a| a.contains(&label.key) && a.contains("excessive_downloads")),
            "{label:?}"
        );
    }
}
