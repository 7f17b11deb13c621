//! `aer bench`: the benchmark harness. It generates a workload (or reads files), then measures
//! three things, each in its own phase:
//!
//! - **batch**: `aer replay`'s whole pipeline without the response stage and the output files
//!   (read, parse, sequence, windows, baselines, heuristics, decisions): events/s and peak RSS;
//! - **live**: the live driver `aer run` uses, fed at a fixed offered rate by wall clock: the
//!   latency from an event's ingest to the decisions of its second leaving the dataflow
//!   (percentiles), and whether the dataflow kept up;
//! - **soak** (only when asked): the live phase repeated for a duration, the workload shifted
//!   forward in time each round, with RSS sampled to show whether memory stays flat.
//!
//! Peak RSS is reset between phases (`/proc/self/clear_refs`), so each phase reports its own.
//! Numbers are only meaningful from a release build.

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;
use crate::dataflow::live::{Command, Live, LiveSettings, Output};
use crate::dataflow::profile::WorkerTimes;
use crate::dataflow::EngineError;
use crate::generate::{generate, GenerateOptions};
use crate::io::sequencer::Sequencer;
use crate::io::source::{self, SourceError};
use crate::model::Sequenced;
use crate::replay::{
    self, current_rss_bytes, heuristic_setup, peak_rss_bytes, process_use, ProcessUse, ReplayError,
    ReplayOptions,
};

/// Everything that can stop a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot write the generated workload: {0}")]
    Generate(std::io::Error),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Invalid(String),
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Workload files; empty: generate one.
    pub inputs: Vec<PathBuf>,
    /// The generated workload's size and shape (ignored with `inputs`).
    pub generate: GenerateOptions,
    /// Configuration; with a generated workload and no Tor list configured, the generator's
    /// Tor list is used so that every detector runs.
    pub config: Config,
    pub workers: usize,
    /// Offered rate of the live phase (events/s); 0 skips the live phase.
    pub rate: u64,
    /// Events offered in the live phase (at most the workload's; 0: all of it).
    pub live_events: u64,
    /// Run the soak phase for this long.
    pub soak: Option<Duration>,
    /// Interval between the soak's RSS samples.
    pub sample_every: Duration,
    pub progress: bool,
    /// Record the batch phase's operator times (see `dataflow::profile`).
    pub operator_times: bool,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples`.
    pub fn of(mut samples: Vec<Duration>) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1].as_secs_f64() * 1000.0
        };
        Percentiles {
            count: samples.len() as u64,
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// The batch phase's result.
#[derive(Clone, Debug, Serialize)]
pub struct BatchResult {
    pub events: u64,
    pub workers: usize,
    pub seconds: f64,
    pub events_per_sec: f64,
    /// Of `seconds`: reading, parsing and sequencing.
    pub read_seconds: f64,
    /// Of `seconds`: the dataflow.
    pub engine_seconds: f64,
    pub peak_rss_bytes: Option<u64>,
    pub anomalies: u64,
    pub decisions: u64,
    /// User and system CPU time of the whole process over `seconds`: what the replay costs in
    /// all, whatever the cores (a rate of R events/s on C cores leaves each event at most C / R
    /// CPU-seconds).
    pub cpu_seconds: Option<f64>,
    /// `cpu_seconds` over `seconds`, in cores: near the number of cores, the replay is bound
    /// by CPU.
    pub cpu_cores: Option<f64>,
    /// Of `cpu_seconds`: the kernel's, chiefly copying the input file and zeroing fresh
    /// memory. On a machine that is slow to hand out fresh pages it can be a quarter of the
    /// whole (see the README).
    pub system_seconds: Option<f64>,
    /// Minor page faults over `seconds` (a transparent huge page counts once).
    pub minor_faults: Option<u64>,
    /// Each worker's time per operator, with `--operator-times` (otherwise empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub operator_times: Vec<WorkerTimes>,
}

/// The live phase's result.
#[derive(Clone, Debug, Serialize)]
pub struct LiveResult {
    pub offered_rate: u64,
    pub events: u64,
    /// Wall time from the first event offered until the last decision left.
    pub seconds: f64,
    /// Events offered per second of feeding (the offered rate, unless the feeder fell behind).
    pub fed_rate: f64,
    /// CPU time used over `seconds`, in cores (the feeder and the measuring thread included):
    /// how much of the machine the offered rate takes, and so how much is left for bursts.
    pub cpu_cores: Option<f64>,
    /// The longest a second took to become final after a later second was offered.
    pub max_final_lag_ms: f64,
    /// Whether that lag stayed under one second.
    pub kept_up: bool,
    pub decisions: u64,
    /// Event ingested -> decision out: from the first event of a decision's second being
    /// offered to the decision leaving the dataflow.
    pub latency: Percentiles,
    pub peak_rss_bytes: Option<u64>,
}

/// One sample of the soak phase: RSS at the sample, and the decisions that left since the
/// sample before (their latency percentiles) with the longest finalisation lag seen meanwhile,
/// so a slow stretch can be placed in time.
#[derive(Clone, Debug, Serialize)]
pub struct SoakSample {
    pub elapsed_secs: f64,
    pub events: u64,
    pub rss_bytes: Option<u64>,
    pub latency: Percentiles,
    pub max_final_lag_ms: f64,
}

/// The soak phase's result.
#[derive(Clone, Debug, Serialize)]
pub struct SoakResult {
    pub offered_rate: u64,
    pub seconds: f64,
    pub events: u64,
    pub decisions: u64,
    pub latency: Percentiles,
    /// CPU time used over `seconds`, in cores (as in the live phase).
    pub cpu_cores: Option<f64>,
    pub samples: Vec<SoakSample>,
    /// The largest RSS of the second half over the largest of the first half (1.0: flat).
    pub rss_growth: Option<f64>,
}

/// Everything `aer bench` measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub build: &'static str,
    pub batch: BatchResult,
    pub live: Option<LiveResult>,
    pub soak: Option<SoakResult>,
}

/// The operator times as lines: each worker's wall time, inside and outside the dataflow, then
/// the operators by name (the busiest first, as worker 0 ranks them), one column per worker.
/// Operators under 0.5% of every worker's wall time are summed in one line.
pub fn operator_table(times: &[WorkerTimes]) -> Vec<String> {
    let Some(first) = times.first() else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for w in times {
        lines.push(format!(
            "operators: worker {}: {:.1} ms, {:.1} ms in the dataflow, {:.1} ms outside it (feeding, waiting)",
            w.worker,
            w.wall_ms,
            w.dataflow_ms,
            w.outside_ms()
        ));
    }
    let mut rest = vec![0.0; times.len()];
    let mut rest_count = 0;
    for op in &first.operators {
        let per_worker: Vec<f64> = times
            .iter()
            .map(|w| {
                w.operators
                    .iter()
                    .find(|o| o.id == op.id)
                    .map_or(0.0, |o| o.busy_ms)
            })
            .collect();
        let small = times
            .iter()
            .zip(&per_worker)
            .all(|(w, ms)| *ms < w.wall_ms * 0.005);
        if small {
            rest_count += 1;
            for (r, ms) in rest.iter_mut().zip(&per_worker) {
                *r += ms;
            }
            continue;
        }
        let cells: Vec<String> = per_worker.iter().map(|ms| format!("{ms:8.1}")).collect();
        lines.push(format!(
            "operators: {:<26} {} ms",
            format!("{} (id {})", op.name, op.id),
            cells.join(" ")
        ));
    }
    if rest_count > 0 {
        let cells: Vec<String> = rest.iter().map(|ms| format!("{ms:8.1}")).collect();
        lines.push(format!(
            "operators: {:<26} {} ms",
            format!("{rest_count} others"),
            cells.join(" ")
        ));
    }
    lines
}

/// Resets the process's peak RSS (VmHWM), so the next phase reports its own peak.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Runs the benchmark; `say` receives one line per step and result.
pub fn bench(options: &BenchOptions, say: &mut dyn FnMut(&str)) -> Result<BenchReport, BenchError> {
    if options.workers == 0 {
        return Err(BenchError::Invalid("--workers must be at least 1".into()));
    }
    let dir = tempfile::tempdir().map_err(BenchError::Generate)?;
    let mut config = options.config.clone();
    let inputs = if options.inputs.is_empty() {
        let g = &options.generate;
        say(&format!(
            "generating {} enterprises x {} days, about {} benign events (seed {})",
            g.enterprises, g.days, g.events, g.seed
        ));
        let path = dir.path().join("workload.jsonl");
        let file = std::fs::File::create(&path).map_err(BenchError::Generate)?;
        let mut w = BufWriter::new(file);
        let generated = generate(g, &mut w).map_err(BenchError::Generate)?;
        w.flush().map_err(BenchError::Generate)?;
        if config.detectors.tor_exit_list.is_none() {
            let tor = dir.path().join("tor-exits.txt");
            std::fs::write(&tor, generated.tor_exits.join("\n")).map_err(BenchError::Generate)?;
            config.detectors.tor_exit_list = Some(tor);
        }
        vec![path]
    } else {
        options.inputs.clone()
    };

    // Batch: the replay pipeline, timed from the first byte read to the last decision.
    reset_peak_rss();
    say(&format!(
        "batch: replaying with {} worker(s)",
        options.workers
    ));
    let started = Instant::now();
    let before = process_use();
    let report = replay::run_pipeline(&ReplayOptions {
        inputs: inputs.clone(),
        config: config.clone(),
        workers: options.workers,
        cluster: None,
        out: dir.path().join("out"),
        progress: options.progress,
        db: None,
        operator_times: options.operator_times,
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let used = used_since(before);
    let cpu = used.map(|used| used.cpu_seconds());
    let events = report.summary.events;
    let batch = BatchResult {
        events,
        workers: options.workers,
        seconds,
        events_per_sec: events as f64 / seconds.max(1e-9),
        read_seconds: report.read_time.as_secs_f64(),
        engine_seconds: report.engine_time.as_secs_f64(),
        peak_rss_bytes: peak_rss_bytes(),
        anomalies: report.summary.anomalies,
        decisions: report.summary.decisions,
        cpu_seconds: cpu,
        cpu_cores: cpu.map(|c| c / seconds.max(1e-9)),
        system_seconds: used.map(|used| used.system_seconds),
        minor_faults: used.map(|used| used.minor_faults),
        operator_times: report.operator_times.clone(),
    };
    say(&format!(
        "batch: {} events in {:.2} s: {:.0} events/s ({:.2} s reading, {:.2} s in the engine), peak RSS {}, {} anomalies, {} decisions; CPU {} s ({} cores; system {} s, {} minor faults)",
        batch.events,
        batch.seconds,
        batch.events_per_sec,
        batch.read_seconds,
        batch.engine_seconds,
        mib(batch.peak_rss_bytes),
        batch.anomalies,
        batch.decisions,
        two_places(batch.cpu_seconds),
        two_places(batch.cpu_cores),
        two_places(batch.system_seconds),
        batch
            .minor_faults
            .map_or("n/a".to_string(), |n| n.to_string()),
    ));
    drop(report);
    for line in operator_table(&batch.operator_times) {
        say(&line);
    }

    if options.rate == 0 && options.soak.is_none() {
        return Ok(BenchReport {
            build: build_profile(),
            batch,
            live: None,
            soak: None,
        });
    }
    let decoded = source::read_inputs(&inputs, false)?;
    let (workload, _) = Sequencer::sort_all(decoded.blocks, 1);
    let mut workload: Vec<Sequenced> = workload.into_iter().collect();
    if options.live_events > 0 {
        workload.truncate(options.live_events as usize);
    }
    let setup = LiveSetup::new(&config, options.workers)?;
    let rate = options.rate.max(1);

    let live = if options.rate > 0 {
        reset_peak_rss();
        say(&format!(
            "live: offering {} events at {} events/s",
            workload.len(),
            rate
        ));
        let run = setup.run(&workload, rate, 1, None, &mut |_| {})?;
        let result = LiveResult {
            offered_rate: rate,
            events: run.events,
            seconds: run.seconds,
            fed_rate: run.fed_rate,
            cpu_cores: run.cpu_cores,
            max_final_lag_ms: run.max_final_lag.as_secs_f64() * 1000.0,
            kept_up: run.max_final_lag <= Duration::from_secs(1),
            decisions: run.latencies.len() as u64,
            latency: Percentiles::of(run.latencies),
            peak_rss_bytes: peak_rss_bytes(),
        };
        say(&format!(
            "live: {} events offered at {:.0} events/s; {} decisions; event -> decision p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {}; CPU {} cores; peak RSS {}",
            result.events,
            result.fed_rate,
            result.decisions,
            result.latency.p50_ms,
            result.latency.p90_ms,
            result.latency.p99_ms,
            result.latency.max_ms,
            if result.kept_up { "kept up" } else { "fell behind" },
            two_places(result.cpu_cores),
            mib(result.peak_rss_bytes)
        ));
        Some(result)
    } else {
        None
    };

    let soak = match options.soak {
        None => None,
        Some(duration) => {
            reset_peak_rss();
            say(&format!(
                "soak: offering the workload round after round at {rate} events/s for {}",
                humantime::format_duration(duration)
            ));
            let rounds = u64::MAX;
            let mut samples = Vec::new();
            let run = setup.run(
                &workload,
                rate,
                rounds,
                Some((duration, options.sample_every)),
                &mut |sample: SoakSample| {
                    say(&format!(
                        "soak: {:>7.0} s {:>12} events, RSS {}; since the last sample {} decisions, p99 {:.1} ms, max {:.1} ms, longest finalisation lag {:.1} ms",
                        sample.elapsed_secs,
                        sample.events,
                        mib(sample.rss_bytes),
                        sample.latency.count,
                        sample.latency.p99_ms,
                        sample.latency.max_ms,
                        sample.max_final_lag_ms
                    ));
                    samples.push(sample);
                },
            )?;
            // The halves of the sampled period (the drain after it is not sampled).
            let half = duration.as_secs_f64() / 2.0;
            let max_rss = |first: bool| {
                samples
                    .iter()
                    .filter(|s| (s.elapsed_secs < half) == first)
                    .filter_map(|s| s.rss_bytes)
                    .max()
            };
            let rss_growth = match (max_rss(true), max_rss(false)) {
                (Some(a), Some(b)) if a > 0 => Some(b as f64 / a as f64),
                _ => None,
            };
            let result = SoakResult {
                offered_rate: rate,
                seconds: run.seconds,
                events: run.events,
                decisions: run.latencies.len() as u64,
                latency: Percentiles::of(run.latencies),
                cpu_cores: run.cpu_cores,
                samples,
                rss_growth,
            };
            say(&format!(
                "soak: {} events in {:.0} s, {} decisions, p99 {:.1} ms; CPU {} cores; RSS second half / first half: {}",
                result.events,
                result.seconds,
                result.decisions,
                result.latency.p99_ms,
                two_places(result.cpu_cores),
                result
                    .rss_growth
                    .map_or("n/a".to_string(), |g| format!("{g:.3}"))
            ));
            Some(result)
        }
    };
    Ok(BenchReport {
        build: build_profile(),
        batch,
        live,
        soak,
    })
}

fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug (numbers are not meaningful: build with --release)"
    } else {
        "release"
    }
}

/// A measure with two decimals (CPU seconds or cores), or "n/a" where `/proc` gave none.
fn two_places(value: Option<f64>) -> String {
    value.map_or("n/a".to_string(), |v| format!("{v:.2}"))
}

/// What the process has used since `before` (a [`process_use`] reading), if both readings
/// exist.
fn used_since(before: Option<ProcessUse>) -> Option<ProcessUse> {
    before
        .zip(process_use())
        .map(|(before, after)| after.since(&before))
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("n/a".to_string(), |b| format!("{} MiB", b >> 20))
}

/// The live graph's configuration, as `aer run` sets it up.
struct LiveSetup {
    settings: LiveSettings,
    rules: Vec<crate::model::Rule>,
    policies: crate::model::decision::Policies,
    tor: BTreeSet<String>,
}

/// What one live run measured.
struct LiveRun {
    events: u64,
    seconds: f64,
    fed_rate: f64,
    cpu_cores: Option<f64>,
    max_final_lag: Duration,
    latencies: Vec<Duration>,
}

impl LiveSetup {
    fn new(config: &Config, workers: usize) -> Result<LiveSetup, BenchError> {
        let (heuristics, tor) = heuristic_setup(&config.detectors, false)?;
        Ok(LiveSetup {
            settings: LiveSettings {
                workers,
                heuristics,
                session_expiry: config.engine.session_expiry.as_secs(),
            },
            rules: config.rules().map_err(ReplayError::from)?,
            policies: config.policies().map_err(ReplayError::from)?,
            tor: tor.unwrap_or_default(),
        })
    }

    /// Offers `workload` at `rate` events/s, `rounds` times (each round shifted past the one
    /// before), or until `soak`'s duration has passed, sampling RSS at its interval.
    fn run(
        &self,
        workload: &[Sequenced],
        rate: u64,
        rounds: u64,
        soak: Option<(Duration, Duration)>,
        on_sample: &mut dyn FnMut(SoakSample),
    ) -> Result<LiveRun, BenchError> {
        let (tx, rx) = mpsc::channel::<Output>();
        let live = Live::start(self.settings.clone(), tx)?;
        live.send(Command::Rules(self.rules.clone()));
        live.send(Command::Policies(self.policies.clone()));
        live.send(Command::Tor(self.tor.clone()));
        // (event time, when its first event was offered), in time order: sent before the
        // second's events, so the receiver has it by the time the second's outputs leave.
        let (offered_tx, offered_rx) = mpsc::channel::<(u64, Instant)>();
        let measured = Arc::new(Mutex::new(Measured::default()));
        let receiver = {
            let measured = measured.clone();
            std::thread::spawn(move || measure(rx, offered_rx, &measured))
        };
        // Decisions already reported in an earlier sample.
        let mut sampled = 0;
        let (first, last) = match (workload.first(), workload.last()) {
            (Some(f), Some(l)) => (f.0, l.0),
            _ => return Err(BenchError::Invalid("the workload has no events".into())),
        };
        let span = last - first + 1;
        let started = Instant::now();
        let before = process_use();
        let mut next_sample = soak.map(|(_, every)| every);
        let mut sent = 0u64;
        let mut last_time = None;
        'rounds: for round in 0..rounds {
            let shift = round * span;
            for chunk in workload.chunks(1024) {
                // Pace by wall clock: `sent` events are due at `sent / rate` seconds.
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                let elapsed = started.elapsed();
                if due > elapsed {
                    std::thread::sleep(due - elapsed);
                }
                let now = Instant::now();
                for (t, event) in chunk {
                    let t = t + shift;
                    if last_time != Some(t) {
                        let _ = offered_tx.send((t, now));
                        last_time = Some(t);
                    }
                    let mut event = event.clone();
                    event.time += shift;
                    live.send(Command::Event((t, event)));
                }
                sent += chunk.len() as u64;
                if let Some(t) = last_time {
                    live.send(Command::Advance(t));
                }
                if let (Some((duration, every)), Some(at)) = (soak, next_sample.as_mut()) {
                    let elapsed = started.elapsed();
                    if elapsed >= *at {
                        let (latency, lag) = {
                            let mut m = measured.lock().expect("bench measurements");
                            let latency = Percentiles::of(m.latencies[sampled..].to_vec());
                            sampled = m.latencies.len();
                            (latency, std::mem::take(&mut m.window_max_lag))
                        };
                        on_sample(SoakSample {
                            elapsed_secs: elapsed.as_secs_f64(),
                            events: sent,
                            rss_bytes: current_rss_bytes(),
                            latency,
                            max_final_lag_ms: lag.as_secs_f64() * 1000.0,
                        });
                        *at += every;
                    }
                    if elapsed >= duration {
                        break 'rounds;
                    }
                }
            }
        }
        let fed_seconds = started.elapsed().as_secs_f64();
        drop(offered_tx);
        live.finish()?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu_cores = used_since(before).map(|used| used.cpu_seconds() / seconds.max(1e-9));
        receiver.join().map_err(|_| EngineError::WorkerPanicked)?;
        let Measured {
            latencies,
            max_lag: max_final_lag,
            ..
        } = std::mem::take(&mut *measured.lock().expect("bench measurements"));
        Ok(LiveRun {
            events: sent,
            seconds,
            fed_rate: sent as f64 / fed_seconds.max(1e-9),
            cpu_cores,
            max_final_lag,
            latencies,
        })
    }
}

/// What the receiver measured so far.
#[derive(Default)]
struct Measured {
    /// Each decision's latency, in the order they left.
    latencies: Vec<Duration>,
    /// The largest finalisation lag of the run.
    max_lag: Duration,
    /// The largest since the soak's last sample (taken and reset by the sampler).
    window_max_lag: Duration,
}

/// Reads the live outputs as they leave: each decision's latency from the first event of its
/// second being offered, and the largest lag of a second becoming final after the next second
/// was offered. Outputs come in time order, so only the offered seconds not yet final are kept.
fn measure(
    outputs: mpsc::Receiver<Output>,
    offered: mpsc::Receiver<(u64, Instant)>,
    measured: &Mutex<Measured>,
) {
    let mut pending: VecDeque<(u64, Instant)> = VecDeque::new();
    for output in outputs {
        let now = Instant::now();
        pending.extend(offered.try_iter());
        match output {
            Output::Decision(d) => {
                // The latest offered second at or before the decision's.
                let i = pending.partition_point(|(s, _)| *s <= d.decided_at);
                if let Some((_, at)) = i.checked_sub(1).and_then(|i| pending.get(i)) {
                    let latency = now.saturating_duration_since(*at);
                    measured
                        .lock()
                        .expect("bench measurements")
                        .latencies
                        .push(latency);
                }
            }
            Output::Final(t) => {
                // Seconds up to t are final: keep the last of them for later decisions' lookup.
                while pending.len() > 1 && pending[1].0 <= t {
                    pending.pop_front();
                }
                if let Some((_, next)) = pending.iter().find(|(s, _)| *s > t) {
                    let lag = now.saturating_duration_since(*next);
                    let mut m = measured.lock().expect("bench measurements");
                    m.max_lag = m.max_lag.max(lag);
                    m.window_max_lag = m.window_max_lag.max(lag);
                }
            }
            Output::Anomaly(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::profile::OperatorTime;

    fn op(name: &str, id: usize, busy_ms: f64) -> OperatorTime {
        OperatorTime {
            name: name.to_string(),
            id,
            busy_ms,
            activations: 1,
        }
    }

    /// One line per worker, then one per operator in worker 0's order with a column per worker
    /// (matched by id, since names repeat), and operators under 0.5% of every worker's wall time
    /// summed in one line.
    #[test]
    fn operator_table_lists_workers_then_operators_with_the_small_ones_summed() {
        let times = vec![
            WorkerTimes {
                worker: 0,
                wall_ms: 1000.0,
                dataflow_ms: 700.0,
                operators: vec![
                    op("Heuristics", 9, 300.0),
                    op("Map", 4, 20.0),
                    op("Map", 5, 2.0),
                    op("Probe", 7, 1.0),
                ],
            },
            WorkerTimes {
                worker: 1,
                wall_ms: 1000.0,
                dataflow_ms: 600.0,
                operators: vec![
                    op("Heuristics", 9, 250.0),
                    op("Map", 5, 30.0),
                    op("Map", 4, 3.0),
                    op("Probe", 7, 0.5),
                ],
            },
        ];
        let lines = operator_table(&times);
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert!(
            lines[0].contains("worker 0: 1000.0 ms, 700.0 ms in the dataflow, 300.0 ms outside")
        );
        assert!(
            lines[1].contains("worker 1: 1000.0 ms, 600.0 ms in the dataflow, 400.0 ms outside")
        );
        assert!(lines[2].contains("Heuristics (id 9)") && lines[2].ends_with("300.0    250.0 ms"));
        assert!(lines[3].contains("Map (id 4)") && lines[3].ends_with("20.0      3.0 ms"));
        // Map 5 is small on worker 0 but not on worker 1: listed.
        assert!(lines[4].contains("Map (id 5)") && lines[4].ends_with("2.0     30.0 ms"));
        assert!(lines[5].contains("1 others") && lines[5].ends_with("1.0      0.5 ms"));
        assert!(operator_table(&[]).is_empty());
    }
}
