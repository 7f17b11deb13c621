//! timely's cluster mode through the CLI: two `aer replay` processes on 127.0.0.1, connected by
//! timely itself, produce exactly the files one process does. Process 0 gathers the outputs and
//! runs the response stage; process 1 feeds its share of the events and writes nothing.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn aer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aer"))
}

/// Ports free at the time of asking (bound to port 0, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// Waits for `child` for at most `limit`, killing it if it takes longer.
fn wait(mut child: Child, limit: Duration) -> Output {
    let started = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if started.elapsed() > limit {
            child.kill().ok();
            let output = child.wait_with_output().expect("output");
            panic!(
                "process did not finish in {limit:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// Every output file's lines, sorted, and the summary.
fn outputs(dir: &Path) -> Vec<(String, Vec<String>)> {
    [
        "anomalies.jsonl",
        "decisions.jsonl",
        "audit.jsonl",
        "notifications.jsonl",
        "rejects.jsonl",
        "summary.json",
    ]
    .iter()
    .map(|name| {
        let text = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()));
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.sort();
        (name.to_string(), lines)
    })
    .collect()
}

#[test]
fn two_processes_give_exactly_the_single_process_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let tor = dir.path().join("tor.txt");
    let generated = aer()
        .args([
            "generate", "--events", "40000", "--days", "4", "--seed", "11",
        ])
        .arg("--out")
        .arg(&input)
        .arg("--tor-list")
        .arg(&tor)
        .output()
        .unwrap();
    assert!(generated.status.success(), "{generated:?}");
    // The Tor detector runs too, so every stage of the graph sees cross-process traffic.
    let config = dir.path().join("aer.toml");
    std::fs::write(
        &config,
        format!(
            "[detectors]\ntor_exit_list = {:?}\n",
            tor.display().to_string()
        ),
    )
    .unwrap();

    let single = dir.path().join("single");
    let result = aer()
        .arg("replay")
        .arg(&input)
        .arg("--config")
        .arg(&config)
        .args(["--workers", "2", "--out"])
        .arg(&single)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );

    let ports = free_ports(2);
    let hostfile = dir.path().join("hosts.txt");
    std::fs::write(
        &hostfile,
        format!(
            "# aer test cluster\n127.0.0.1:{}\n127.0.0.1:{}\n",
            ports[0], ports[1]
        ),
    )
    .unwrap();
    let cluster_out = |i: usize| dir.path().join(format!("process{i}"));
    let start = |i: usize| {
        aer()
            .arg("replay")
            .arg(&input)
            .arg("--config")
            .arg(&config)
            .args(["--workers", "1", "--processes", "2", "--process"])
            .arg(i.to_string())
            .arg("--hostfile")
            .arg(&hostfile)
            .arg("--out")
            .arg(cluster_out(i))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The higher process starts first: it retries until process 0 listens.
    let peer = start(1);
    let gatherer = start(0);
    let gathered = wait(gatherer, Duration::from_secs(300));
    let peer = wait(peer, Duration::from_secs(60));
    let stderr0 = String::from_utf8_lossy(&gathered.stderr);
    let stderr1 = String::from_utf8_lossy(&peer.stderr);
    assert!(gathered.status.success(), "{stderr0}");
    assert!(peer.status.success(), "{stderr1}");
    assert!(stderr1.contains("process 1 of 2"), "{stderr1}");
    assert!(!cluster_out(1).exists(), "process 1 must not write outputs");

    let expected = outputs(&single);
    let decisions = &expected[1].1;
    assert!(
        decisions.len() > 10,
        "the workload should produce decisions, got {}",
        decisions.len()
    );
    assert!(
        expected[0].1.iter().any(|a| a.contains("\"tor\"")),
        "the workload should trip the Tor detector"
    );
    assert_eq!(outputs(&cluster_out(0)), expected);
}

#[test]
fn cluster_arguments_are_checked_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, "").unwrap();
    let hostfile = dir.path().join("hosts.txt");
    std::fs::write(&hostfile, "127.0.0.1:1\n").unwrap();
    for (args, message) in [
        (vec!["--processes", "2"], "needs --hostfile"),
        (
            vec!["--processes", "2", "--hostfile", hostfile.to_str().unwrap()],
            "lists 1 processes, but --processes is 2",
        ),
        (
            vec![
                "--processes",
                "1",
                "--process",
                "1",
                "--hostfile",
                hostfile.to_str().unwrap(),
            ],
            "out of range",
        ),
    ] {
        let result = aer()
            .arg("replay")
            .arg(&input)
            .args(&args)
            .arg("--out")
            .arg(dir.path().join("out"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success(), "{args:?} should fail");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}
