//! `aer replay`: the whole pipeline over files. Reads and decodes every input, sequences the
//! events (sorting the whole input by (date_create, id), DESIGN 3), runs the detection dataflow,
//! and the decision fold, hands the decisions to the response stage (jobs, audit, coalesced
//! notifications), and writes `anomalies.jsonl`, `decisions.jsonl`, `audit.jsonl`,
//! `notifications.jsonl`, `rejects.jsonl` and `summary.json` to the output directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, DetectorsConfig};
use crate::dataflow::heuristics::parse_tor_list;
use crate::dataflow::profile::WorkerTimes;
use crate::dataflow::{self, Cluster, EngineError, EngineInput, Placement};
use crate::fault;
use crate::io::asn::{AsnError, AsnTable};
use crate::io::codec::Reject;
use crate::io::huge_pages::HugePagesOff;
use crate::io::sequencer::Sequencer;
use crate::io::sink::{self, SinkError};
use crate::io::source::{self, SourceError};
use crate::model::decision::Decision;
use crate::model::Anomaly;
use crate::model::{HeuristicParams, HEURISTICS};
use crate::response::config::{ResponseConfigError, ResponseSetup};
use crate::response::notify::Notification;
use crate::response::reset::ResetBackend;
use crate::response::store::{JobState, JobStore, StoreError};
use crate::response::{self, Accepted, RunStats};
use std::collections::BTreeSet;

/// Everything that can stop a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Asn(#[from] AsnError),
    #[error("{0}")]
    Detectors(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Response(#[from] ResponseConfigError),
    #[error("cannot start the response stage's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot create output directory {path}: {source}")]
    OutDir {
        path: String,
        source: std::io::Error,
    },
}

/// What a replay is asked to do.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub inputs: Vec<PathBuf>,
    pub config: Config,
    pub workers: usize,
    /// This process's place in a timely cluster; `None` runs in this process alone.
    pub cluster: Option<Cluster>,
    pub out: PathBuf,
    pub progress: bool,
    /// The response stage's job store; default `<out>/aer.db`.
    pub db: Option<PathBuf>,
    /// Record each worker's operator times (`aer bench --operator-times`).
    pub operator_times: bool,
}

/// `summary.json`: counts only, nothing that depends on timing or the worker count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Non-blank input lines read.
    pub lines: u64,
    /// Entries decoded successfully (before de-duplication).
    pub accepted: u64,
    /// Rejected lines or page entries, by reason (`aer_rejected_events_total{reason}`).
    pub rejected: BTreeMap<String, u64>,
    /// Entries dropped because their id was already seen.
    pub duplicates: u64,
    /// Events processed at the watermark because they arrived late (`aer_late_events_total`).
    pub late: u64,
    /// Events that went through the engine.
    pub events: u64,
    /// First and last event time (unix seconds) processed.
    pub first_time: Option<u64>,
    pub last_time: Option<u64>,
    pub anomalies: u64,
    pub anomalies_by_reason: BTreeMap<String, u64>,
    pub decisions: u64,
    pub decisions_by_outcome: BTreeMap<String, u64>,
    /// Decisions that reset sessions (each one job in the store, at most once ever).
    pub resets: u64,
    pub audit_entries: u64,
    /// Messages in `notifications.jsonl` (first alerts and digests).
    pub notifications: u64,
    /// Alerts not repeated to a recipient within `repeat_interval`.
    pub notifications_suppressed: u64,
}

/// What the response stage did in this run (depends on the store's history, so it is not part
/// of `summary.json`).
#[derive(Clone, Debug, Default)]
pub struct ResponseReport {
    /// Jobs and audit entries new to the store.
    pub accepted: Accepted,
    /// Attempts made in this run.
    pub ran: RunStats,
    /// Jobs left pending (waiting for a retry) and dead letters, in the whole store.
    pub pending: u64,
    pub dead: u64,
}

/// The result of a replay, with the measurements `aer replay` prints.
#[derive(Debug)]
pub struct ReplayReport {
    pub summary: Summary,
    pub anomalies: Vec<Anomaly>,
    pub decisions: Vec<Decision>,
    /// Audit entries of this run's decisions, ordered by (date_create, id).
    pub audit: Vec<serde_json::Value>,
    /// Messages of this run's decisions, ordered by (send_at, id).
    pub notifications: Vec<Notification>,
    pub response: ResponseReport,
    pub rejects: Vec<Reject>,
    /// Each worker's operator times, when asked for.
    pub operator_times: Vec<WorkerTimes>,
    pub read_time: Duration,
    pub engine_time: Duration,
    pub total_time: Duration,
}

/// Runs the pipeline, hands the decisions and their notifications to the response stage, runs
/// the jobs, and writes the output files.
pub fn replay(options: &ReplayOptions) -> Result<ReplayReport, ReplayError> {
    if options.cluster.as_ref().is_some_and(|c| c.process != 0) {
        // A peer process feeds its workers' share and computes with the others; process 0
        // gathers the outputs, runs the response stage and writes the files.
        return run_pipeline(options);
    }
    // Everything the response stage needs is checked before the long part.
    let config = &options.config;
    let ResponseSetup {
        responders,
        retry,
        coalescer,
    } = ResponseSetup::new(&config.response, &config.notifications)?;
    std::fs::create_dir_all(&options.out).map_err(|source| ReplayError::OutDir {
        path: options.out.display().to_string(),
        source,
    })?;
    let db = options
        .db
        .clone()
        .unwrap_or_else(|| options.out.join("aer.db"));
    let store = JobStore::open(&db)?;

    let mut report = run_pipeline(options)?;
    fault::point("pipeline");
    let (notifications, suppressed) = coalescer.run(&report.decisions);
    let accepted = response::accept(
        &store,
        &report.decisions,
        &notifications,
        response::now_ms(),
    )?;
    fault::point("accepted");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ReplayError::Runtime)?;
    let ran = runtime.block_on(response::drain(
        &store,
        &responders,
        &retry,
        config.response.drain_timeout,
    ))?;
    let pending = store.jobs(None, Some(JobState::Pending))?.len() as u64;
    let dead = store.jobs(None, Some(JobState::Dead))?.len() as u64;
    tracing::info!(
        db = %db.display(),
        backend = responders.reset.name(),
        new_resets = accepted.resets,
        new_audit = accepted.audit,
        new_notifications = accepted.notifications,
        done = ran.done,
        retried = ran.retried,
        dead_now = ran.dead,
        pending,
        dead,
        "response stage"
    );
    report.response = ResponseReport {
        accepted,
        ran,
        pending,
        dead,
    };
    report.audit = report
        .decisions
        .iter()
        .filter_map(response::audit::entry)
        .collect();
    report.audit.sort_by(|a, b| {
        (a["date_create"].as_u64(), a["id"].as_str())
            .cmp(&(b["date_create"].as_u64(), b["id"].as_str()))
    });
    report.summary.audit_entries = report.audit.len() as u64;
    report.summary.resets = report
        .decisions
        .iter()
        .filter(|d| d.resets_sessions)
        .count() as u64;
    report.summary.notifications = notifications.len() as u64;
    report.summary.notifications_suppressed = suppressed;
    report.notifications = notifications;
    fault::point("outputs");
    write_outputs(&options.out, &report)?;
    Ok(report)
}

/// Runs the pipeline without writing anything.
pub fn run_pipeline(options: &ReplayOptions) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let rules = options.config.rules()?;
    let policies = options.config.policies()?;
    let asn_table = match &options.config.detectors.asn_table {
        Some(path) => {
            let table = AsnTable::load(path)?;
            tracing::info!(path = %path.display(), ranges = table.len(), "ASN table loaded");
            Some(table)
        }
        None => None,
    };
    // Reading and sequencing fill fresh memory once, in order: without huge pages (see
    // `huge_pages`); the engine runs with the process's own setting.
    let reading = HugePagesOff::new();
    let mut decoded = source::read_inputs(&options.inputs, options.progress)?;
    if let Some(table) = &asn_table {
        for event in decoded.events_mut() {
            event.asn = event.ip.as_deref().and_then(|ip| table.lookup(ip));
        }
    }
    let mut summary = Summary {
        lines: decoded.lines,
        accepted: decoded.event_count() as u64,
        ..Summary::default()
    };
    for reject in &decoded.rejects {
        *summary
            .rejected
            .entry(reject.reason.as_str().to_string())
            .or_default() += 1;
    }
    for (reason, count) in &summary.rejected {
        tracing::warn!(reason = %reason, count, "rejected input lines");
    }
    let decoded_at = started.elapsed();
    // Replay holds everything until the end, then releases in (time, id) order, dealt as the
    // engine's workers (in every process) take the events.
    let placement = Placement {
        threads: options.workers.max(1),
        cluster: options.cluster.clone(),
    };
    let (events, stats) = Sequencer::sort_all(decoded.blocks, placement.peers());
    summary.duplicates = stats.duplicates;
    summary.late = stats.late;
    summary.events = events.len() as u64;
    summary.first_time = events.first().map(|(t, _)| *t);
    summary.last_time = events.last().map(|(t, _)| *t);
    let read_time = started.elapsed();
    drop(reading);
    tracing::debug!(
        decode_ms = decoded_at.as_millis() as u64,
        sequence_ms = (read_time - decoded_at).as_millis() as u64,
        "input read"
    );

    let engine_started = Instant::now();
    let mut input = EngineInput::new(events, rules, policies);
    input.session_expiry = options.config.engine.session_expiry.as_secs();
    input.operator_times = options.operator_times;
    let (heuristics, tor) = heuristic_setup(&options.config.detectors, asn_table.is_some())?;
    input.heuristics = heuristics;
    input.tor = tor.map(|ips| vec![(0, ips)]).unwrap_or_default();
    let (output, stats) = dataflow::run_placed(Arc::new(input), &placement, options.progress)?;
    let (anomalies, decisions) = (output.anomalies, output.decisions);
    let engine_time = engine_started.elapsed();
    summary.anomalies = anomalies.len() as u64;
    for anomaly in &anomalies {
        *summary
            .anomalies_by_reason
            .entry(anomaly.reason.clone())
            .or_default() += 1;
        tracing::info!(
            anomaly_id = %anomaly.id,
            enterprise = %anomaly.enterprise,
            user = %anomaly.user,
            reason = %anomaly.reason,
            detected_at = anomaly.detected_at,
            observed = anomaly.observed,
            threshold = anomaly.threshold,
            "anomaly"
        );
    }
    summary.decisions = decisions.len() as u64;
    for decision in &decisions {
        *summary
            .decisions_by_outcome
            .entry(decision.outcome.as_str().to_string())
            .or_default() += 1;
    }
    let mut rejects = decoded.rejects;
    rejects.sort();
    Ok(ReplayReport {
        summary,
        anomalies,
        decisions,
        audit: Vec::new(),
        notifications: Vec::new(),
        response: ResponseReport::default(),
        rejects,
        operator_times: stats.operator_times,
        read_time,
        engine_time,
        total_time: started.elapsed(),
    })
}

/// The heuristic detectors' parameters from `[detectors]`, and the Tor exit list if configured.
/// Detectors whose table is missing are turned off with a warning.
pub fn heuristic_setup(
    config: &DetectorsConfig,
    asn_table_loaded: bool,
) -> Result<(HeuristicParams, Option<BTreeSet<String>>), ReplayError> {
    let mut enabled: BTreeSet<String> = HEURISTICS
        .iter()
        .map(|s| s.to_string())
        .filter(|r| !config.disabled.contains(r))
        .collect();
    if let Some(unknown) = config
        .disabled
        .iter()
        .find(|r| !HEURISTICS.contains(&r.as_str()))
    {
        return Err(ReplayError::Detectors(format!(
            "detectors.disabled: unknown detector {unknown:?} (known: {})",
            HEURISTICS.join(", ")
        )));
    }
    if !asn_table_loaded && enabled.remove("asn") {
        tracing::warn!("no detectors.asn_table: the asn detector is off");
    }
    let tor = match &config.tor_exit_list {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ReplayError::Detectors(format!("cannot read Tor list {}: {e}", path.display()))
            })?;
            let (ips, bad) = parse_tor_list(&text);
            if let Some((line, text)) = bad.first() {
                return Err(ReplayError::Detectors(format!(
                    "Tor list {} line {line}: {text:?} is not an IP address ({} bad lines)",
                    path.display(),
                    bad.len()
                )));
            }
            tracing::info!(path = %path.display(), ips = ips.len(), "Tor exit list loaded");
            Some(ips)
        }
        None => {
            if enabled.remove("tor") {
                tracing::warn!("no detectors.tor_exit_list: the tor detector is off");
            }
            None
        }
    };
    let params = HeuristicParams {
        enabled,
        history: config.history.as_secs(),
        min_history: config.min_history,
        scripted_clients: config
            .scripted_clients
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect(),
    };
    Ok((params, tor))
}

/// Writes `anomalies.jsonl`, `decisions.jsonl`, `rejects.jsonl` and `summary.json` into `out`.
pub fn write_outputs(out: &Path, report: &ReplayReport) -> Result<(), ReplayError> {
    std::fs::create_dir_all(out).map_err(|source| ReplayError::OutDir {
        path: out.display().to_string(),
        source,
    })?;
    sink::write_jsonl(&out.join("anomalies.jsonl"), &report.anomalies)?;
    sink::write_jsonl(&out.join("decisions.jsonl"), &report.decisions)?;
    sink::write_jsonl(&out.join("audit.jsonl"), &report.audit)?;
    sink::write_jsonl(&out.join("notifications.jsonl"), &report.notifications)?;
    sink::write_jsonl(&out.join("rejects.jsonl"), &report.rejects)?;
    sink::write_json(&out.join("summary.json"), &report.summary)?;
    Ok(())
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// Resident set size of this process now, in bytes (Linux `VmRSS`), if known.
pub fn current_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

/// What this process has used so far, all threads together: CPU time in user space and in the
/// kernel, and minor page faults. The kernel's share is where fresh memory is paid for: each
/// page the process touches first is found and zeroed there.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessUse {
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// Page faults served without I/O (a transparent huge page counts once, for 2 MiB).
    pub minor_faults: u64,
}

impl ProcessUse {
    /// User and system CPU seconds together.
    pub fn cpu_seconds(&self) -> f64 {
        self.user_seconds + self.system_seconds
    }

    /// What was used between the reading `before` and this one.
    pub fn since(&self, before: &ProcessUse) -> ProcessUse {
        ProcessUse {
            user_seconds: self.user_seconds - before.user_seconds,
            system_seconds: self.system_seconds - before.system_seconds,
            minor_faults: self.minor_faults.saturating_sub(before.minor_faults),
        }
    }
}

/// What this process has used so far (Linux `/proc/self/stat`), if known.
pub fn process_use() -> Option<ProcessUse> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// Fields 10 (minflt), 14 and 15 (utime, stime) of a `/proc/<pid>/stat` line. The times count
/// clock ticks of `USER_HZ`, which is 100 on x86 and arm Linux.
fn parse_stat(stat: &str) -> Option<ProcessUse> {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses: count
    // from after the last ')', where field 3 is the first.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(7);
    let minor_faults: u64 = fields.next()?.parse().ok()?;
    let mut times = fields.skip(3);
    let user: u64 = times.next()?.parse().ok()?;
    let system: u64 = times.next()?.parse().ok()?;
    Some(ProcessUse {
        user_seconds: user as f64 / 100.0,
        system_seconds: system as f64 / 100.0,
        minor_faults,
    })
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::{parse_stat, process_use, ProcessUse};

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        // A command name with a space and a ')' of its own; 900 minor faults (and 7 of
        // children), utime 250 and stime 31 ticks.
        let line =
            "4242 (aer (x) y) R 1 4242 4242 0 -1 4194560 900 7 0 0 250 31 0 0 20 0 3 0 100 1000 50";
        let used = parse_stat(line).unwrap();
        assert_eq!(
            used,
            ProcessUse {
                user_seconds: 2.5,
                system_seconds: 0.31,
                minor_faults: 900
            }
        );
        assert_eq!(used.cpu_seconds(), 2.81);
        let before = ProcessUse {
            user_seconds: 0.5,
            system_seconds: 0.01,
            minor_faults: 100,
        };
        let between = used.since(&before);
        assert_eq!(between.minor_faults, 800);
        assert!((between.user_seconds - 2.0).abs() < 1e-9);
        assert!((between.system_seconds - 0.3).abs() < 1e-9);
        assert_eq!(parse_stat("4242 aer R 1"), None);
        assert_eq!(parse_stat("4242 (aer) R 1 2 3"), None);
        // This process's own line parses, and it has faulted pages in.
        assert!(process_use().unwrap().minor_faults > 0);
    }
}
