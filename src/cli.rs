//! The command line: argument parsing (clap) and the `replay`, `generate` and `demo` commands.
//! `main.rs` only calls [`main`].

use clap::{Parser, Subcommand};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::bench::{bench, BenchOptions};
use crate::config::Config;
use crate::dataflow::{Cluster, ClusterError};
use crate::generate::{generate, GenerateOptions, Label};
use crate::model::Anomaly;
use crate::replay::{self, peak_rss_bytes, ReplayOptions, ReplayReport};

#[derive(Parser, Debug)]
#[command(
    name = "aer",
    version,
    about = "Anomaly Event Response for Slack audit logs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// timely's cluster mode: every process runs the same command with its own `--process`.
#[derive(clap::Args, Debug)]
struct ClusterArgs {
    /// Processes in the timely cluster (each runs `--workers` threads).
    #[arg(long)]
    processes: Option<usize>,
    /// This process's index, 0 to processes-1; process 0 gathers the outputs and responds.
    #[arg(long, default_value_t = 0)]
    process: usize,
    /// One host:port per process, in process order (`#` comments and blank lines allowed).
    #[arg(long)]
    hostfile: Option<PathBuf>,
}

impl ClusterArgs {
    fn resolve(&self) -> Result<Option<Cluster>, ClusterError> {
        Cluster::from_args(self.processes, self.process, self.hostfile.as_ref())
    }
}

/// `aer bench`'s options.
#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Workload files; without them a workload is generated (`--events`, `--days`, ...).
    #[arg(long = "input")]
    inputs: Vec<PathBuf>,
    /// TOML configuration; without it the built-in rules, and the generated Tor list.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Approximate number of benign events to generate.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    #[arg(long, default_value_t = 5)]
    enterprises: u32,
    #[arg(long, default_value_t = 14)]
    days: u32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Dataflow worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Offered rate of the live phase, events/s (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Events offered in the live phase (0: the whole workload).
    #[arg(long, default_value_t = 0)]
    live_events: u64,
    /// Also run the soak phase for this long (for example `30m`): the workload offered
    /// round after round at `--rate`, RSS sampled.
    #[arg(long, value_parser = humantime::parse_duration)]
    soak: Option<std::time::Duration>,
    /// Interval between the soak's RSS samples.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    sample_every: std::time::Duration,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Report the batch phase's time per dataflow operator on each worker, and each worker's
    /// time outside them (feeding and waiting).
    #[arg(long)]
    operator_times: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole pipeline over audit-log files (`-` is stdin) and write the results.
    Replay {
        /// JSON-lines files of Slack audit entries, or API pages one per line.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// TOML configuration; without it the built-in rules apply.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Dataflow worker threads (per process in a cluster; no more than free cores).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Output directory.
        #[arg(long, default_value = "aer-out")]
        out: PathBuf,
        /// The response stage's job store (SQLite); default `<out>/aer.db`. Reusing it across
        /// replays never resets or records the same decision twice.
        #[arg(long)]
        db: Option<PathBuf>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Run the live service: sources, the dataflow, the response stage and the HTTP API, until
    /// SIGINT or SIGTERM.
    Run {
        /// TOML configuration (see the README); `[service]` sets the address, store and tokens.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Worker threads of the dataflow.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Overrides `[service] listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Overrides `[service] db`.
        #[arg(long)]
        db: Option<PathBuf>,
        /// Also read events (JSON lines) from standard input.
        #[arg(long)]
        stdin: bool,
        /// Follow these files (read from the start, then appended lines; rotation is noticed).
        #[arg(long)]
        follow: Vec<PathBuf>,
    },
    /// List the response stage's jobs (JSON lines), for example the dead letters.
    Jobs {
        #[arg(long, default_value = "aer-out/aer.db")]
        db: PathBuf,
        /// Only jobs in this state: pending, done or dead.
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this kind: reset or notify.
        #[arg(long)]
        kind: Option<String>,
    },
    /// Measure throughput, peak memory and live latency (release builds only give real numbers).
    Bench(BenchArgs),
    /// Write a synthetic workload with injected attacks as JSON lines.
    Generate {
        /// Output file (`-` for stdout).
        #[arg(long, default_value = "-")]
        out: PathBuf,
        /// Where to write the injected attacks' labels (JSON lines).
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Where to write a Tor exit-node list holding the injected Tor sign-ins' addresses.
        #[arg(long)]
        tor_list: Option<PathBuf>,
        /// Approximate number of benign events.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        #[arg(long, default_value_t = 4)]
        enterprises: u32,
        #[arg(long, default_value_t = 7)]
        days: u32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Convert an OpenSSH syslog (auth.log) into Slack-shaped audit entries (JSON lines).
    AdaptSshd {
        /// The syslog file (`-` for stdin).
        file: PathBuf,
        /// The year of the log's timestamps (syslog lines carry none); times are taken as UTC.
        #[arg(long)]
        year: i32,
        /// The enterprise id given to every entry.
        #[arg(long, default_value = "sshd")]
        enterprise: String,
        /// Output file (`-` for stdout).
        #[arg(long, default_value = "-")]
        out: PathBuf,
    },
    /// Generate a workload, replay it with the built-in rules, and show what was caught and why.
    Demo {
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Output directory for the replay's files.
        #[arg(long, default_value = "aer-out")]
        out: PathBuf,
        /// Where the demo serves the API while it runs.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// How long to keep serving the API after the summary (Ctrl-C ends it). Default 60s
        /// when standard output is a terminal, else 0s.
        #[arg(long, value_parser = humantime::parse_duration)]
        serve_for: Option<std::time::Duration>,
    },
}

/// Entry point for the `aer` binary.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    tracing::debug!(
        purge_delay_ms = crate::allocator::purge_delay_ms(),
        "allocator: mimalloc's purge delay"
    );
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay {
            files,
            config,
            workers,
            out,
            db,
            cluster,
        } => cmd_replay(files, config, workers, out, db, cluster),
        Command::Jobs { db, state, kind } => cmd_jobs(db, state, kind),
        Command::Run {
            config,
            workers,
            listen,
            db,
            stdin,
            follow,
        } => cmd_run(config, workers, listen, db, stdin, follow),
        Command::Bench(args) => cmd_bench(args),
        Command::Generate {
            out,
            labels,
            tor_list,
            events,
            enterprises,
            days,
            seed,
        } => cmd_generate(
            out,
            labels,
            tor_list,
            GenerateOptions {
                events,
                enterprises,
                days,
                seed,
                ..GenerateOptions::default()
            },
        ),
        Command::AdaptSshd {
            file,
            year,
            enterprise,
            out,
        } => cmd_adapt_sshd(file, year, enterprise, out),
        Command::Demo {
            events,
            workers,
            seed,
            out,
            listen,
            serve_for,
        } => cmd_demo(events, workers, seed, out, listen, serve_for),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aer: {e}");
            ExitCode::FAILURE
        }
    }
}

type AnyError = Box<dyn std::error::Error>;

fn load_config(path: Option<PathBuf>) -> Result<Config, AnyError> {
    Ok(match path {
        Some(p) => Config::load(&p)?,
        None => Config::default(),
    })
}

fn print_measurements(report: &ReplayReport, workers: usize) {
    let events = report.summary.events as f64;
    let secs = report.total_time.as_secs_f64().max(1e-9);
    let engine = report.engine_time.as_secs_f64().max(1e-9);
    eprintln!(
        "{} events in {:.2} s with {} worker(s): {:.0} events/s end to end ({:.0} events/s in the engine, read+parse {:.2} s); peak RSS {} MiB",
        report.summary.events,
        secs,
        workers,
        events / secs,
        events / engine,
        report.read_time.as_secs_f64(),
        peak_rss_bytes().map_or("?".into(), |b| (b >> 20).to_string()),
    );
}

fn cmd_run(
    config: Option<PathBuf>,
    workers: usize,
    listen: Option<std::net::SocketAddr>,
    db: Option<PathBuf>,
    stdin: bool,
    follow: Vec<PathBuf>,
) -> Result<(), AnyError> {
    check_workers(workers)?;
    let config = load_config(config)?;
    let service = config.service.clone();
    let mut options = crate::run::RunOptions::new(config);
    options.workers = workers;
    options.listen = listen.unwrap_or(service.listen);
    options.db = db.unwrap_or(service.db.clone());
    options.stdin = stdin || service.stdin;
    options.follow = service.follow.iter().cloned().chain(follow).collect();
    options.queue = service.queue;
    options.max_body = service.max_body_bytes;
    options.idle_flush = service.idle_flush;
    options.slack_audit = service.slack_audit.clone();
    options.auth = crate::run::auth_from_env(&service)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(crate::run::run(options, crate::run::signal(), None))?;
    Ok(())
}

fn cmd_jobs(db: PathBuf, state: Option<String>, kind: Option<String>) -> Result<(), AnyError> {
    use crate::response::store::{JobKind, JobState, JobStore};
    if !db.exists() {
        return Err(format!("no job store at {}", db.display()).into());
    }
    let state = match state.as_deref() {
        None => None,
        Some(s) => Some(
            JobState::parse(s)
                .ok_or_else(|| format!("--state must be pending, done or dead, not {s:?}"))?,
        ),
    };
    let kind = match kind.as_deref() {
        None => None,
        Some(k) => Some(
            JobKind::parse(k)
                .ok_or_else(|| format!("--kind must be reset or notify, not {k:?}"))?,
        ),
    };
    let store = JobStore::open(&db)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for job in store.jobs(kind, state)? {
        serde_json::to_writer(&mut out, &job)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn cmd_replay(
    files: Vec<PathBuf>,
    config: Option<PathBuf>,
    workers: usize,
    out: PathBuf,
    db: Option<PathBuf>,
    cluster: ClusterArgs,
) -> Result<(), AnyError> {
    check_workers(workers)?;
    let cluster = cluster.resolve()?;
    let options = ReplayOptions {
        inputs: files,
        config: load_config(config)?,
        workers,
        cluster: cluster.clone(),
        out: out.clone(),
        progress: std::io::stderr().is_terminal(),
        db,
        operator_times: false,
    };
    let report = replay::replay(&options)?;
    if let Some(c) = cluster.as_ref().filter(|c| c.process != 0) {
        eprintln!(
            "process {} of {}: its {} worker(s) took their share of {} events; process 0 gathers the outputs",
            c.process, c.processes, workers, report.summary.events
        );
        return Ok(());
    }
    let s = &report.summary;
    let rejected: u64 = s.rejected.values().sum();
    eprintln!(
        "read {} lines: {} accepted, {} rejected, {} duplicates, {} late; {} anomalies; wrote {}",
        s.lines,
        s.accepted,
        rejected,
        s.duplicates,
        s.late,
        s.anomalies,
        out.display()
    );
    eprint!("{}", response_line(&report));
    print_measurements(&report, workers);
    Ok(())
}

/// What the response stage did, in one or two lines.
fn response_line(report: &ReplayReport) -> String {
    use crate::response::notify::MessageKind;
    let s = &report.summary;
    let r = &report.response;
    let digests = report
        .notifications
        .iter()
        .filter(|n| n.kind == MessageKind::Digest)
        .count();
    let mut text = format!(
        "response: {} resets, {} audit entries, {} notifications ({} first alerts, {digests} digests, {} repeats not repeated); new to the store: {} resets, {} audit entries, {} notifications; jobs run now: {} done, {} retried, {} dead\n",
        s.resets,
        s.audit_entries,
        s.notifications,
        s.notifications as usize - digests,
        s.notifications_suppressed,
        r.accepted.resets,
        r.accepted.audit,
        r.accepted.notifications,
        r.ran.done,
        r.ran.retried,
        r.ran.dead,
    );
    if r.pending > 0 || r.dead > 0 {
        text.push_str(&format!(
            "response: the store holds {} pending and {} dead jobs (`aer jobs --state dead`)\n",
            r.pending, r.dead
        ));
    }
    text
}

/// Rejects zero workers, and warns when there are more workers than cores: idle timely workers
/// spin, so oversubscription is much slower, never faster.
fn check_workers(workers: usize) -> Result<(), AnyError> {
    if workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if workers > cores {
        tracing::warn!(
            workers,
            cores,
            "more workers than cores: expect it to be much slower"
        );
    }
    Ok(())
}

fn cmd_generate(
    out: PathBuf,
    labels: Option<PathBuf>,
    tor_list: Option<PathBuf>,
    options: GenerateOptions,
) -> Result<(), AnyError> {
    let generated = if out.as_os_str() == "-" {
        let stdout = std::io::stdout();
        let mut w = BufWriter::new(stdout.lock());
        let g = generate(&options, &mut w)?;
        w.flush()?;
        g
    } else {
        let mut w = BufWriter::new(std::fs::File::create(&out)?);
        let g = generate(&options, &mut w)?;
        w.flush()?;
        g
    };
    if let Some(path) = labels {
        crate::io::sink::write_jsonl(&path, &generated.labels)?;
    }
    if let Some(path) = tor_list {
        write_tor_list(&path, &generated.tor_exits)?;
    }
    eprintln!(
        "generated {} entries with {} injected attacks",
        generated.lines,
        generated.labels.len()
    );
    Ok(())
}

fn cmd_adapt_sshd(
    file: PathBuf,
    year: i32,
    enterprise: String,
    out: PathBuf,
) -> Result<(), AnyError> {
    let options = crate::io::sshd::SshdOptions { year, enterprise };
    let input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(&file)
            .map_err(|e| format!("cannot open {}: {e}", file.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let stats = if out.as_os_str() == "-" {
        let stdout = std::io::stdout();
        let mut w = BufWriter::new(stdout.lock());
        let s = crate::io::sshd::convert(input, &mut w, &options)?;
        w.flush()?;
        s
    } else {
        let mut w = BufWriter::new(std::fs::File::create(&out)?);
        let s = crate::io::sshd::convert(input, &mut w, &options)?;
        w.flush()?;
        s
    };
    eprintln!(
        "{} lines: {} failed logins, {} accepted, {} other lines skipped, {} with unreadable times",
        stats.lines, stats.failed, stats.accepted, stats.skipped, stats.bad_time
    );
    Ok(())
}

fn write_tor_list(path: &std::path::Path, ips: &[String]) -> Result<(), AnyError> {
    let mut text = String::from("# Tor exit nodes (synthetic, from aer generate)\n");
    for ip in ips {
        text.push_str(ip);
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// Whether `anomaly` reports the attack `label`: same enterprise, key and reason, detected between
/// the attack's start and an hour (or the rule's window, if longer) after its end. A stolen
/// session, for example, may only show when its owner next uses it.
pub fn catches(anomaly: &Anomaly, label: &Label) -> bool {
    anomaly.enterprise == label.enterprise
        && anomaly.user == label.key
        && anomaly.reason == label.expected_reason
        && anomaly.detected_at >= label.start
        && anomaly.detected_at <= label.end + anomaly.evidence.window_secs.max(3600)
}

fn when(t: u64) -> String {
    chrono::DateTime::from_timestamp(t as i64, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| t.to_string())
}

fn cmd_demo(
    events: u64,
    workers: usize,
    seed: u64,
    out: PathBuf,
    listen: std::net::SocketAddr,
    serve_for: Option<std::time::Duration>,
) -> Result<(), AnyError> {
    check_workers(workers)?;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("audit.jsonl");
    let options = GenerateOptions {
        events,
        seed,
        ..GenerateOptions::default()
    };
    println!(
        "aer demo: generating {} enterprises x {} days, about {} benign events (seed {seed})...",
        options.enterprises, options.days, options.events
    );
    let generated = {
        let mut w = BufWriter::new(std::fs::File::create(&input)?);
        let g = generate(&options, &mut w)?;
        w.flush()?;
        g
    };
    let tor_list = dir.path().join("tor-exits.txt");
    write_tor_list(&tor_list, &generated.tor_exits)?;
    let mut config = Config::default();
    config.detectors.tor_exit_list = Some(tor_list);
    std::fs::create_dir_all(&out)?;
    let api = DemoApi::start(listen, &config, &out.join("aer.db"))?;
    println!(
        "generated {} audit entries with {} injected attacks; replaying with the built-in rules and a Tor exit list...",
        generated.lines,
        generated.labels.len()
    );
    let report = replay::replay(&ReplayOptions {
        inputs: vec![input],
        config,
        workers,
        cluster: None,
        out: out.clone(),
        progress: std::io::stderr().is_terminal(),
        db: None,
        operator_times: false,
    })?;
    print_measurements(&report, workers);
    print!("{}", demo_summary(&report, &generated.labels));
    print!("{}", response_line(&report));
    println!("full results: {}/anomalies.jsonl", out.display());
    if let Some(api) = api {
        let serve_for = serve_for.unwrap_or(if std::io::stdout().is_terminal() {
            std::time::Duration::from_secs(60)
        } else {
            std::time::Duration::ZERO
        });
        api.show(&report, serve_for)?;
    }
    Ok(())
}

/// The API the demo serves while it runs: `/healthz` at once, the replay's anomalies, decisions,
/// audit and jobs once it is done.
struct DemoApi {
    runtime: tokio::runtime::Runtime,
    shared: std::sync::Arc<crate::api::Shared>,
    address: std::net::SocketAddr,
    token: String,
    stop: std::sync::Arc<tokio::sync::Notify>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl DemoApi {
    /// Serves on `listen`; if the address is taken, says so and the demo goes on without it.
    fn start(
        listen: std::net::SocketAddr,
        config: &Config,
        db: &std::path::Path,
    ) -> Result<Option<DemoApi>, AnyError> {
        use rand::Rng;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = match runtime.block_on(tokio::net::TcpListener::bind(listen)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("aer demo: not serving the API: cannot listen on {listen}: {e} (try --listen 127.0.0.1:0)");
                return Ok(None);
            }
        };
        let address = listener.local_addr()?;
        let token = std::env::var("AER_ADMIN_TOKEN").unwrap_or_else(|_| {
            let bytes: [u8; 16] = rand::thread_rng().gen();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        });
        let auth = crate::api::Auth {
            admin: Some(token.clone()),
            ..Default::default()
        };
        let mut shared = crate::api::Shared::new(config.clone(), auth);
        shared.store = Some(std::sync::Mutex::new(
            crate::response::store::JobStore::open(db)?,
        ));
        let shared = std::sync::Arc::new(shared);
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        let router = crate::api::router(shared.clone());
        let server = runtime.spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.notified().await })
                .await
        });
        println!(
            "the API is at http://{address} while the demo runs (admin token {token}); /healthz answers now, the results once the replay is done"
        );
        Ok(Some(DemoApi {
            runtime,
            shared,
            address,
            token,
            stop,
            server,
        }))
    }

    /// Loads the replay's results into the API, serves them for `serve_for`, then stops.
    fn show(self, report: &ReplayReport, serve_for: std::time::Duration) -> Result<(), AnyError> {
        {
            let mut view = self.shared.view.write().expect("view");
            for a in &report.anomalies {
                view.add_anomaly(a.clone());
            }
            for d in &report.decisions {
                view.add_decision(d.clone());
            }
        }
        if let Some(last) = report.summary.last_time {
            self.shared
                .frontier
                .store(last + 1, std::sync::atomic::Ordering::Relaxed);
        }
        self.shared
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if !serve_for.is_zero() {
            let enterprise = report
                .decisions
                .first()
                .map_or("E00BIRD".to_string(), |d| d.enterprise.clone());
            println!(
                "serving the results for {} (Ctrl-C to stop), for example:\n  curl -H 'Authorization: Bearer {}' http://{}/v1/enterprises/{enterprise}/decisions?limit=5",
                humantime::format_duration(serve_for),
                self.token,
                self.address
            );
            self.runtime.block_on(async {
                tokio::select! {
                    _ = tokio::time::sleep(serve_for) => {}
                    _ = crate::run::signal() => {}
                }
            });
        }
        self.shared.close_stream();
        self.stop.notify_one();
        self.runtime.block_on(self.server)??;
        Ok(())
    }
}

/// The demo's readable summary: each injected attack, caught or missed and why, then the
/// anomalies that match no injected attack.
pub fn demo_summary(report: &ReplayReport, labels: &[Label]) -> String {
    let mut text = String::new();
    let caught = labels
        .iter()
        .filter(|l| report.anomalies.iter().any(|a| catches(a, l)))
        .count();
    text.push_str(&format!(
        "\ninjected attacks caught: {caught} of {}\n",
        labels.len()
    ));
    for label in labels {
        match report.anomalies.iter().find(|a| catches(a, label)) {
            Some(a) => {
                text.push_str(&format!(
                    "  CAUGHT {:<20} {} {:<12} at {} ({}s after it began)\n         {}: {}\n",
                    label.kind,
                    label.enterprise,
                    label.key,
                    when(a.detected_at),
                    a.detected_at - label.start,
                    a.reason,
                    a.evidence.explanation
                ));
                if let Some(d) = report.decisions.iter().find(|d| d.anomaly.id == a.id) {
                    let own = d
                        .explanation
                        .strip_suffix(&format!(": {}", a.evidence.explanation))
                        .unwrap_or(&d.explanation);
                    text.push_str(&format!("         decision: {own}\n"));
                }
            }
            None => text.push_str(&format!(
                "  MISSED {:<20} {} {:<12} from {}\n",
                label.kind,
                label.enterprise,
                label.key,
                when(label.start)
            )),
        }
    }
    let outcomes: Vec<String> = report
        .summary
        .decisions_by_outcome
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    text.push_str(&format!(
        "decisions: {} ({}); modes are Slack's defaults: only tor and unexpected_scraping reset sessions unless configured\n",
        report.summary.decisions,
        outcomes.join(", ")
    ));
    let others: Vec<&Anomaly> = report
        .anomalies
        .iter()
        .filter(|a| !labels.iter().any(|l| catches(a, l)))
        .collect();
    // The generator marks attack traffic: anomalies on it are further signals of the attacks
    // (each victim of credential testing, for example, sees a scripted client from a new /16).
    let (on_attacks, on_benign): (Vec<&Anomaly>, Vec<&Anomaly>) = others
        .into_iter()
        .partition(|a| a.evidence.latest_event_id.starts_with("attack-"));
    let by_reason = |v: &[&Anomaly]| {
        let mut m: std::collections::BTreeMap<&str, usize> = Default::default();
        for a in v {
            *m.entry(a.reason.as_str()).or_default() += 1;
        }
        m.iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    text.push_str(&format!(
        "other anomalies on injected attack traffic: {} ({})\n",
        on_attacks.len(),
        by_reason(&on_attacks)
    ));
    text.push_str(&format!(
        "anomalies on benign traffic: {} ({})\n",
        on_benign.len(),
        by_reason(&on_benign)
    ));
    for a in on_benign.iter().take(5) {
        text.push_str(&format!(
            "  {} {} {} at {}: {}\n",
            a.reason,
            a.enterprise,
            a.user,
            when(a.detected_at),
            a.evidence.explanation
        ));
    }
    text
}

fn cmd_bench(args: BenchArgs) -> Result<(), AnyError> {
    check_workers(args.workers)?;
    let options = BenchOptions {
        inputs: args.inputs,
        generate: GenerateOptions {
            events: args.events,
            enterprises: args.enterprises,
            days: args.days,
            seed: args.seed,
            ..GenerateOptions::default()
        },
        config: load_config(args.config)?,
        workers: args.workers,
        rate: args.rate,
        live_events: args.live_events,
        soak: args.soak,
        sample_every: args.sample_every,
        progress: std::io::stderr().is_terminal(),
        operator_times: args.operator_times,
    };
    let report = bench(&options, &mut |line| println!("{line}"))?;
    if let Some(path) = args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}
