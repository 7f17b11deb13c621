//! Credential testing on a real sshd log (loghub OpenSSH_2k, third-party data): converted by the
//! sshd adapter and replayed with failed logins counted per source IP. The brute force from
//! 183.62.140.253 and the password spraying from 187.141.143.180 must be flagged; an IP with a
//! handful of failures must not be.

use aer::config::Config;
use aer::io::sshd::{convert, SshdOptions};
use aer::replay::{replay, ReplayOptions};
use std::path::PathBuf;

fn log() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/third_party/loghub_OpenSSH_2k.log")
}

#[test]
fn sshd_log_converts_every_failed_login() {
    let text = std::fs::read_to_string(log()).unwrap();
    // Counted independently: direct failure lines, plus N for each "message repeated N times".
    let mut expected = 0u64;
    for line in text
        .lines()
        .filter(|l| l.contains("]: Failed ") || l.contains("[ Failed "))
    {
        expected += match line.split_once("message repeated ") {
            Some((_, rest)) => rest
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
            None => 1,
        };
    }
    let mut out = Vec::new();
    let stats = convert(
        text.as_bytes(),
        &mut out,
        &SshdOptions {
            year: 2016,
            enterprise: "LabSZ".into(),
        },
    )
    .unwrap();
    assert_eq!(stats.lines, 2000);
    assert_eq!(stats.failed, expected);
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.bad_time, 0);
    assert_eq!(
        String::from_utf8(out).unwrap().lines().count() as u64,
        stats.failed + stats.accepted
    );
}

#[test]
fn brute_force_and_spraying_are_flagged_per_source_ip() {
    let dir = tempfile::tempdir().unwrap();
    let converted = dir.path().join("sshd.jsonl");
    let mut file = std::fs::File::create(&converted).unwrap();
    convert(
        std::io::BufReader::new(std::fs::File::open(log()).unwrap()),
        &mut file,
        &SshdOptions {
            year: 2016,
            enterprise: "LabSZ".into(),
        },
    )
    .unwrap();
    drop(file);
    // One morning has no baseline: more than 20 failures from one IP within an hour.
    let config: Config = toml::from_str(
        r#"
        [[rules]]
        reason = "unexpected_credential_testing"
        default_threshold = 20
        "#,
    )
    .unwrap();
    let report = replay(&ReplayOptions {
        inputs: vec![converted],
        config,
        workers: 2,
        cluster: None,
        out: dir.path().join("out"),
        progress: false,
        db: None,
        operator_times: false,
    })
    .unwrap();
    let flagged: Vec<&str> = report
        .anomalies
        .iter()
        .filter(|a| a.reason == "unexpected_credential_testing")
        .map(|a| a.user.as_str())
        .collect();
    assert!(flagged.contains(&"183.62.140.253"), "{flagged:?}");
    assert!(flagged.contains(&"187.141.143.180"), "{flagged:?}");
    // 5.36.59.76 failed 6 times ("message repeated 5 times"): not credential testing.
    assert!(!flagged.contains(&"5.36.59.76"), "{flagged:?}");
    // The sprayer tried root 40 times before spraying other names: at detection, the window
    // holds only root. The anomaly names the users seen up to that moment.
    let spray = report
        .anomalies
        .iter()
        .find(|a| a.user == "187.141.143.180")
        .unwrap();
    assert_eq!(spray.evidence.users, vec!["root"]);
    assert!(spray.observed > 20);
    let brute = report
        .anomalies
        .iter()
        .find(|a| a.user == "183.62.140.253")
        .unwrap();
    // Mostly root, with a few other names tried within the same hour.
    assert!(brute.evidence.users.contains(&"root".to_string()));
    assert!(brute.observed > 20);
    assert_eq!(report.decisions.len(), report.anomalies.len());
}
