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
        operator_times: false,
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
            operator_times: false,
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

/// `operator_times` (`aer bench --operator-times`) records where each worker's time went without
/// changing a result: the same anomalies and decisions as without it, one record per worker,
/// each of the graph's named operators timed on each, and the parts within the whole.
#[test]
fn operator_times_name_every_worker_and_operator_and_change_no_result() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut file = std::fs::File::create(&input).unwrap();
    generate(
        &GenerateOptions {
            events: 10_000,
            enterprises: 2,
            days: 2,
            seed: 11,
            ..GenerateOptions::default()
        },
        &mut file,
    )
    .unwrap();
    drop(file);
    let run = |operator_times: bool| {
        aer::replay::run_pipeline(&ReplayOptions {
            inputs: vec![input.clone()],
            config: Config::default(),
            workers: 2,
            cluster: None,
            out: dir.path().join("unused"),
            progress: false,
            db: None,
            operator_times,
        })
        .unwrap()
    };
    let plain = run(false);
    let timed = run(true);
    assert!(plain.operator_times.is_empty(), "off unless asked for");
    assert!(!plain.anomalies.is_empty());
    assert_eq!(timed.anomalies, plain.anomalies);
    assert_eq!(timed.decisions, plain.decisions);
    let workers: Vec<usize> = timed.operator_times.iter().map(|w| w.worker).collect();
    assert_eq!(workers, vec![0, 1]);
    for w in &timed.operator_times {
        for name in [
            "MatchRules",
            "WindowCounts",
            "BucketCounts",
            "EpisodeStart",
            "UserStage",
            "HeuristicAnomalies",
            "Decisions",
        ] {
            let op = w.operators.iter().find(|o| o.name == name);
            let op = op.unwrap_or_else(|| panic!("worker {}: no {name}", w.worker));
            assert!(op.activations > 0, "worker {}: {name} never ran", w.worker);
        }
        let operators: f64 = w.operators.iter().map(|o| o.busy_ms).sum();
        assert!(w.dataflow_ms > 0.0);
        // The dataflow's activations contain its operators' (clock reads round down: 1 ms).
        assert!(
            operators <= w.dataflow_ms + 1.0,
            "{operators} > {}",
            w.dataflow_ms
        );
        assert!(
            w.dataflow_ms <= w.wall_ms,
            "{} > {}",
            w.dataflow_ms,
            w.wall_ms
        );
        assert!(
            w.operators.windows(2).all(|p| p[0].busy_ms >= p[1].busy_ms),
            "busiest first"
        );
    }
    let table = aer::bench::operator_table(&timed.operator_times);
    assert!(table[0].starts_with("operators: worker 0:"), "{table:?}");
    assert!(table[1].starts_with("operators: worker 1:"), "{table:?}");
    assert!(
        table.iter().any(|l| l.contains("UserStage (id ")),
        "{table:?}"
    );
}
