//! The `aer` binary as a user runs it: stdin input, output files, and clear errors.

use std::io::Write;
use std::process::{Command, Stdio};

const LINES: &str = concat!(
    r#"{"id":"a","date_create":100,"action":"file_downloaded","actor":{"user":{"id":"U1"}},"context":{"location":{"id":"E1"},"session_id":7}}"#,
    "\n",
    r#"{"id":"a","date_create":100,"action":"file_downloaded","actor":{"user":{"id":"U1"}},"context":{"location":{"id":"E1"},"session_id":7}}"#,
    "\n",
    "not json\n",
);

#[test]
fn replay_reads_stdin_and_writes_every_output_file() {
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_aer"))
        .args(["replay", "-", "--out"])
        .arg(out.path())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(LINES.as_bytes())
        .unwrap();
    let result = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("1 rejected, 1 duplicates"), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["events"], 1);
    assert_eq!(summary["rejected"]["invalid_json"], 1);
    let rejects = std::fs::read_to_string(out.path().join("rejects.jsonl")).unwrap();
    assert!(rejects.contains("\"source\":\"-\",\"line\":3"), "{rejects}");
    assert!(out.path().join("anomalies.jsonl").exists());
}

#[test]
fn a_bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("aer.toml");
    std::fs::write(
        &config,
        "[[rules]]\nreason = \"excessive_downloads\"\nfloor = -1\n",
    )
    .unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, LINES).unwrap();
    let result = Command::new(env!("CARGO_BIN_EXE_aer"))
        .arg("replay")
        .arg(&input)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("aer.toml") && stderr.contains("floor"),
        "{stderr}"
    );
}

#[test]
fn a_missing_input_is_a_clear_error() {
    let result = Command::new(env!("CARGO_BIN_EXE_aer"))
        .args(["replay", "/nonexistent/audit.jsonl", "--out"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("cannot open /nonexistent/audit.jsonl"),
        "{stderr}"
    );
}

/// Every TOML example in the README is a valid configuration on its own.
#[test]
fn the_readme_config_examples_are_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut blocks = 0;
    for (i, block) in readme.split("```toml\n").skip(1).enumerate() {
        let text = block.split("```").next().unwrap();
        let path = dir.path().join(format!("example{i}.toml"));
        std::fs::write(&path, text).unwrap();
        if let Err(e) = aer::config::Config::load(&path) {
            panic!("README example {i} is invalid: {e}\n{text}");
        }
        blocks += 1;
    }
    assert!(blocks >= 3, "found {blocks} examples");
}
