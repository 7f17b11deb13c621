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

/// `aer run` as a process: it serves, takes events on stdin, and on SIGTERM drains and exits 0.
#[test]
fn aer_run_serves_and_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_aer"))
        .args(["run", "--listen", "127.0.0.1:0", "--stdin", "--db"])
        .arg(dir.path().join("aer.db"))
        .env("AER_ADMIN_TOKEN", "t0ken")
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let port: u16 = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "aer run exited early"
        );
        if let Some(at) = line.find("127.0.0.1:") {
            let digits: String = line[at + 10..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            break digits.parse().unwrap();
        }
    };
    let entry = r#"{"id":"x1","date_create":1700000000,"action":"user_login","actor":{"type":"user","user":{"id":"U1"}},"context":{"location":{"type":"enterprise","id":"E1"},"ip_address":"10.0.0.1"}}"#;
    writeln!(child.stdin.as_mut().unwrap(), "{entry}").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ready = runtime.block_on(async {
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if let Ok(r) = client
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
            {
                if r.status() == 200 {
                    return true;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    });
    assert!(ready, "never ready");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit {exit}: {rest}");
    assert!(
        rest.contains("shutting down") && rest.contains("aer run: stopped"),
        "{rest}"
    );
}

/// `aer demo` serves the API while it runs: the replay's decisions are readable with the token it
/// prints, and SIGTERM ends the serving early.
#[test]
fn the_demo_serves_the_api_while_it_runs() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_aer"))
        .args([
            "demo",
            "--events",
            "20000",
            "--listen",
            "127.0.0.1:0",
            "--serve-for",
            "2m",
            "--out",
        ])
        .arg(dir.path())
        .env_remove("AER_ADMIN_TOKEN")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (mut address, mut token, mut line) = (String::new(), String::new(), String::new());
    let mut caught = false;
    loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "demo ended before serving"
        );
        if let Some(rest) = line.strip_prefix("the API is at http://") {
            address = rest.split_whitespace().next().unwrap().to_string();
            token = rest
                .split("admin token ")
                .nth(1)
                .unwrap()
                .split(')')
                .next()
                .unwrap()
                .to_string();
        }
        caught |= line.contains("injected attacks caught:");
        if line.starts_with("serving the results") {
            break;
        }
    }
    assert!(
        caught && !address.is_empty() && token.len() >= 32,
        "{address} {token}"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (ready, decisions, denied) = runtime.block_on(async {
        let client = reqwest::Client::new();
        let ready = client
            .get(format!("http://{address}/readyz"))
            .send()
            .await
            .unwrap()
            .status();
        let enterprises: Vec<String> = client
            .get(format!("http://{address}/v1/enterprises"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page: serde_json::Value = client
            .get(format!(
                "http://{address}/v1/enterprises/{}/decisions",
                enterprises[0]
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let denied = client
            .get(format!(
                "http://{address}/v1/enterprises/{}/decisions",
                enterprises[0]
            ))
            .send()
            .await
            .unwrap()
            .status();
        (ready, page, denied)
    });
    assert_eq!(ready, 200);
    assert!(decisions["as_of"].is_u64());
    assert!(
        !decisions["items"].as_array().unwrap().is_empty(),
        "{decisions}"
    );
    assert_eq!(denied, 401);
    let started = std::time::Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "SIGTERM ends the serving"
    );
}

#[test]
fn bench_measures_batch_live_and_soak_and_live_agrees_with_batch() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let result = Command::new(env!("CARGO_BIN_EXE_aer"))
        .args([
            "bench",
            "--events",
            "3000",
            "--days",
            "2",
            "--enterprises",
            "2",
            "--workers",
            "1",
            "--rate",
            "10000",
            "--soak",
            "1200ms",
            "--sample-every",
            "300ms",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        stdout.contains("batch: ") && stdout.contains("live: "),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let batch = &report["batch"];
    let live = &report["live"];
    let events = batch["events"].as_u64().unwrap();
    assert!(events > 3000, "{report}");
    assert!(batch["events_per_sec"].as_f64().unwrap() > 0.0);
    assert!(batch["peak_rss_bytes"].as_u64().unwrap() > 0);
    // The batch phase's CPU, in seconds and in cores over its wall time.
    let cpu = batch["cpu_seconds"].as_f64().unwrap();
    let cores = batch["cpu_cores"].as_f64().unwrap();
    let seconds = batch["seconds"].as_f64().unwrap();
    assert!(
        cpu >= 0.0 && (cores * seconds - cpu).abs() < 1e-9,
        "{report}"
    );
    // Of which the kernel's, and the pages faulted in (reading and the engine touch fresh
    // memory, so there are some).
    let system = batch["system_seconds"].as_f64().unwrap();
    assert!((0.0..=cpu).contains(&system), "{report}");
    assert!(batch["minor_faults"].as_u64().unwrap() > 0, "{report}");
    // The live driver, fed the same workload in order, decides exactly what the batch did, and
    // every decision has a latency.
    let decisions = batch["decisions"].as_u64().unwrap();
    assert!(decisions > 0, "{report}");
    assert_eq!(live["events"].as_u64(), Some(events));
    assert_eq!(live["decisions"].as_u64(), Some(decisions));
    assert_eq!(live["latency"]["count"].as_u64(), Some(decisions));
    let p50 = live["latency"]["p50_ms"].as_f64().unwrap();
    let p99 = live["latency"]["p99_ms"].as_f64().unwrap();
    assert!(0.0 < p50 && p50 <= p99, "{report}");
    let soak = &report["soak"];
    assert!(soak["samples"].as_array().unwrap().len() >= 3, "{report}");
    assert!(
        soak["events"].as_u64().unwrap() > events,
        "more than one round: {report}"
    );
}
