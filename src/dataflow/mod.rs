//! The differential dataflow graph and its driver. [`run`] builds the same graph on every worker
//! (threads of this process, or of a timely cluster: [`cluster`]), has each worker feed its
//! round-robin share of the sequenced events, worker 0 alone the rules, policy and Tor timelines
//! (the others advance those inputs in step), runs until every time up to the end is final, and
//! gathers anomalies and decisions on worker 0.
//!
//! The operators' maps hash with foldhash, seeded at random per process (as hashbrown's own
//! default is), not std's SipHash: the engine looks up several maps per event, keyed by texts
//! (enterprise, user, session ids), and SipHash was about a fifth of the engine's instructions
//! (README, "the instruction-count round"). No result depends on a map's order: what is walked is
//! sorted, consolidated or counted on the way out.

pub mod cluster;
pub mod decide;
pub mod heuristics;
pub mod live;
pub mod ops;
pub mod profile;
pub mod threshold;

use differential_dataflow::input::{Input, InputSession};
use std::sync::{Arc, Mutex};
use timely::dataflow::operators::{Exchange, Inspect, Probe};
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

pub use cluster::{Cluster, ClusterError, Placement};

use crate::model::decision::{Decision, Policies, Policy, PolicyScope};
use crate::model::{Anomaly, EventChunks, HeuristicParams, Rule, SharedEvent, Time};
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Errors running the dataflow.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("timely: {0}")]
    Timely(String),
    #[error("a worker panicked")]
    WorkerPanicked,
    #[error("input is not in increasing time order at {0}")]
    Timeline(Time),
}

/// What the engines consume: events in processing order, and the rule sets and decision
/// policies in force from each time on (before a timeline's first entry: no rules, and the
/// built-in default policy).
#[derive(Clone, Debug, Default)]
pub struct EngineInput {
    pub events: EventChunks,
    pub rules: Vec<(Time, Vec<Rule>)>,
    pub policies: Vec<(Time, Policies)>,
    /// The Tor exit-node list in force from each time on (empty before the first entry).
    pub tor: Vec<(Time, BTreeSet<String>)>,
    /// The heuristic detectors' parameters; the default runs none.
    pub heuristics: HeuristicParams,
    /// A session idle this long is forgotten (`engine.session_expiry`).
    pub session_expiry: u64,
    /// The last time evaluated: results are final up to and including it.
    pub end: Time,
    /// Record each worker's operator times ([`profile`]); off by default (it costs time).
    pub operator_times: bool,
    /// Events a worker feeds between checks on the dataflow's progress; `None` is
    /// [`WORKER_BATCH`]. Tests make it small, so that small inputs run the way large ones do
    /// (many batches, [`BATCHES_IN_FLIGHT`] of them ahead of the dataflow).
    pub worker_batch: Option<usize>,
}

/// What the engines produce, each sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineOutput {
    pub anomalies: Vec<Anomaly>,
    pub decisions: Vec<Decision>,
}

/// The default session expiry, 14 days.
pub const DEFAULT_SESSION_EXPIRY: u64 = 14 * 86_400;

impl EngineInput {
    /// One rule set and one policy set in force from time 0, evaluated up to the last event.
    pub fn new(events: impl Into<EventChunks>, rules: Vec<Rule>, policies: Policies) -> Self {
        let events = events.into();
        let end = events.last().map_or(0, |(t, _)| *t);
        EngineInput {
            events,
            rules: vec![(0, rules)],
            policies: vec![(0, policies)],
            tor: Vec::new(),
            heuristics: HeuristicParams::default(),
            session_expiry: DEFAULT_SESSION_EXPIRY,
            end,
            operator_times: false,
            worker_batch: None,
        }
    }

    fn check(&self) -> Result<(), EngineError> {
        let rules = self.rules.iter().map(|(t, _)| *t);
        let policies = self.policies.iter().map(|(t, _)| *t);
        let tor = self.tor.iter().map(|(t, _)| *t);
        for times in [rules.collect::<Vec<_>>(), policies.collect(), tor.collect()] {
            if let Some(w) = times.windows(2).find(|w| w[0] >= w[1]) {
                return Err(EngineError::Timeline(w[1]));
            }
        }
        let times = self.events.iter().map(|(t, _)| *t);
        if let Some((_, t)) = times.clone().zip(times.skip(1)).find(|(a, b)| a > b) {
            return Err(EngineError::Timeline(t));
        }
        Ok(())
    }
}

/// Retracts the records in force and inserts `to` (what is unchanged consolidates away).
fn replace<D: differential_dataflow::ExchangeData>(
    to: Vec<D>,
    in_force: &mut Vec<D>,
    input: &mut InputSession<Time, D, isize>,
) {
    for old in in_force.drain(..) {
        input.remove(old);
    }
    for new in &to {
        input.insert(new.clone());
    }
    *in_force = to;
}

/// One entry of the merged configuration timelines.
enum Change<'a> {
    Rules(&'a [Rule]),
    Policies(&'a Policies),
    Tor(&'a BTreeSet<String>),
}

/// Worker 0's inputs, advanced together.
pub(crate) struct Inputs {
    events: InputSession<Time, SharedEvent, isize>,
    rules: InputSession<Time, Rule, isize>,
    policies: InputSession<Time, (PolicyScope, Policy), isize>,
    tor: InputSession<Time, String, isize>,
}

impl Inputs {
    fn advance_to(&mut self, time: Time) {
        self.events.advance_to(time);
        self.rules.advance_to(time);
        self.policies.advance_to(time);
        self.tor.advance_to(time);
    }

    fn flush(&mut self) {
        self.events.flush();
        self.rules.flush();
        self.policies.flush();
        self.tor.flush();
    }
}

/// Receives the threshold graph's state updates (with their time and difference) on worker 0.
pub(crate) type StateSink = Box<dyn Fn(live::StateUpdate, Time, isize)>;

/// Builds the detection and decision graph on `worker`: the inputs, and a probe that has passed a
/// time once every anomaly and decision of that time went through `on_anomaly` / `on_decision`
/// on worker 0 (both are gathered there).
pub(crate) fn build(
    worker: &mut Worker,
    heuristics: HeuristicParams,
    session_expiry: u64,
    state_max: Arc<AtomicUsize>,
    on_anomaly: impl Fn(&Anomaly, Time) + 'static,
    on_decision: impl Fn(&Decision, Time) + 'static,
    on_state: Option<StateSink>,
) -> (Inputs, ProbeHandle<Time>) {
    worker.dataflow::<Time, _, _>(|scope| {
        let (events_in, events) = scope.new_collection();
        let (rules_in, rules) = scope.new_collection();
        let (policies_in, policies) = scope.new_collection();
        let (tor_in, tor) = scope.new_collection();
        let (threshold, state) = threshold::detect_with_state(
            events.clone(),
            rules,
            policies.clone(),
            on_state.is_some(),
        );
        let (heuristic, decisions) = decide::decide(
            events,
            threshold.clone(),
            policies,
            tor,
            heuristics,
            session_expiry,
            state_max,
        );
        let anomalies = threshold.concat(heuristic);
        let probe = ProbeHandle::new();
        if let Some(sink) = on_state {
            // The live API's view of window counts and baselines, gathered on worker 0.
            let sink = std::rc::Rc::new(sink);
            let counts_sink = sink.clone();
            state
                .counts
                .inner
                .exchange(|_| 0)
                .inspect(move |((key, count), time, diff)| {
                    counts_sink(
                        live::StateUpdate::Count(key.clone(), (*count).max(0) as u64),
                        *time,
                        *diff,
                    )
                })
                .probe_with(&probe);
            state
                .baselines
                .inner
                .exchange(|_| 0)
                .inspect(move |((key, baseline), time, diff)| {
                    sink(
                        live::StateUpdate::Baseline(key.clone(), baseline.clone()),
                        *time,
                        *diff,
                    )
                })
                .probe_with(&probe);
        }
        anomalies
            .inner
            .exchange(|_| 0)
            .inspect(move |(anomaly, time, _): &(Anomaly, Time, isize)| on_anomaly(anomaly, *time))
            .probe_with(&probe);
        decisions
            .exchange(|_| 0)
            .inspect(move |(decision, time, _): &(Decision, Time, isize)| {
                on_decision(decision, *time)
            })
            .probe_with(&probe);
        let inputs = Inputs {
            events: events_in,
            rules: rules_in,
            policies: policies_in,
            tor: tor_in,
        };
        (inputs, probe)
    })
}

/// Events one worker feeds between two checks on the dataflow's progress.
pub const WORKER_BATCH: usize = 8_192;

/// How many batches a worker feeds ahead of the dataflow: after each batch it steps the
/// dataflow until the time of the batch this many before has passed, instead of its own. The
/// dataflow then always has a batch to work on while the slower worker catches up, and the
/// faster one spins less. With two, the 1M-event replay's engine took 5% less time (0.60 →
/// 0.57 s, medians of 12 interleaved rounds, faster in 10; four gave the same as two with
/// 7–10 MiB more peak RSS; README, "The batches-in-flight round"). Results do not depend on it:
/// every output is final only once the probe has passed the end.
pub const BATCHES_IN_FLIGHT: usize = 2;

type Share = Mutex<Option<EventChunks>>;

/// Splits the events among the workers of this process: event i goes to global worker
/// i mod peers (so each share stays in time order); other processes' shares are dropped. Events
/// already dealt that way (a replay sequences them so) are taken part by part, as they are;
/// otherwise each is moved into its share, each input chunk freed once dealt. Each share's
/// chunks are freed once fed.
fn share_out(events: EventChunks, placement: &Placement) -> Vec<Share> {
    let threads = placement.threads.max(1);
    let (process, _) = placement.process();
    let peers = placement.peers();
    if events.deal() == peers {
        return events
            .into_parts()
            .into_iter()
            .skip(process * threads)
            .take(threads)
            .map(|s| Mutex::new(Some(s)))
            .collect();
    }
    let mut shares: Vec<EventChunks> = vec![EventChunks::default(); threads];
    for (i, event) in events.into_iter().enumerate() {
        let global = i % peers;
        if global / threads != process {
            continue;
        }
        shares[global % threads].push(event);
    }
    shares.into_iter().map(|s| Mutex::new(Some(s))).collect()
}

/// Runs the dataflow on `workers` threads; returns the anomalies and decisions, sorted.
pub fn run(input: Arc<EngineInput>, workers: usize) -> Result<EngineOutput, EngineError> {
    run_with_progress(input, workers, false)
}

type Shared<T> = Arc<Mutex<Vec<T>>>;

/// What a run measured about itself.
#[derive(Clone, Debug, Default)]
pub struct EngineStats {
    /// The most entries the heuristic detectors held on one worker at once.
    pub heuristic_state_max: usize,
    /// Each worker's operator times, by worker index, when the input asked for them (in a
    /// cluster, this process's workers only).
    pub operator_times: Vec<profile::WorkerTimes>,
}

/// As [`run`], with a progress bar on stderr when `progress` is set.
pub fn run_with_progress(
    input: Arc<EngineInput>,
    workers: usize,
    progress: bool,
) -> Result<EngineOutput, EngineError> {
    run_instrumented(input, workers, progress).map(|(output, _)| output)
}

/// As [`run_with_progress`], also returning what the run measured.
pub fn run_instrumented(
    input: Arc<EngineInput>,
    workers: usize,
    progress: bool,
) -> Result<(EngineOutput, EngineStats), EngineError> {
    run_placed(input, &Placement::local(workers), progress)
}

/// Runs the dataflow on the workers of `placement`. In a cluster, every process passes the same
/// input and feeds its workers' share of it; the anomalies and decisions are gathered in the
/// process that holds worker 0 (the others return empty outputs).
pub fn run_placed(
    input: Arc<EngineInput>,
    placement: &Placement,
    progress: bool,
) -> Result<(EngineOutput, EngineStats), EngineError> {
    input.check()?;
    let progress = progress && placement.gathers();
    // Each worker owns its share of the events (round robin over the sequenced order, by global
    // worker index) and moves them into the dataflow, so the input is freed as it is fed.
    let mut input = Arc::try_unwrap(input).unwrap_or_else(|shared| (*shared).clone());
    let total_events = input.events.len() as u64;
    let dealing = std::time::Instant::now();
    let shares = share_out(std::mem::take(&mut input.events), placement);
    tracing::debug!(
        share_ms = dealing.elapsed().as_millis() as u64,
        "events dealt to the workers"
    );
    let input = Arc::new(input);
    let state_max = Arc::new(AtomicUsize::new(0));
    let worker_state_max = state_max.clone();
    let bar = crate::io::progress_bar(
        total_events,
        "{spinner} detecting {pos}/{len} events [{bar:30}] {per_sec} eta {eta}",
        progress,
    );
    let anomalies_out: Shared<Anomaly> = Arc::new(Mutex::new(Vec::new()));
    let decisions_out: Shared<Decision> = Arc::new(Mutex::new(Vec::new()));
    let (anomaly_sink, decision_sink) = (anomalies_out.clone(), decisions_out.clone());
    let times_out: Shared<profile::WorkerTimes> = Arc::new(Mutex::new(Vec::new()));
    let times_sink = times_out.clone();
    let worker_bar = bar.clone();
    let config = placement.timely_config();
    let placement_threads = placement.threads;
    let guards = timely::execute(config, move |worker| {
        let (anomaly_sink, decision_sink) = (anomaly_sink.clone(), decision_sink.clone());
        let state_max = worker_state_max.clone();
        let end = input.end;
        let session_expiry = input.session_expiry;
        let mut recorder = if input.operator_times {
            profile::Recorder::install(worker)
        } else {
            None
        };
        let (inputs, probe) = build(
            worker,
            input.heuristics.clone(),
            session_expiry,
            state_max,
            move |anomaly: &Anomaly, _| {
                if anomaly.detected_at <= end {
                    anomaly_sink
                        .lock()
                        .expect("collector")
                        .push(anomaly.clone());
                }
            },
            move |decision: &Decision, _| {
                if decision.decided_at <= end {
                    decision_sink
                        .lock()
                        .expect("collector")
                        .push(decision.clone());
                }
            },
            None,
        );
        let (peers, index) = (worker.peers(), worker.index());
        let share = shares[index % placement_threads]
            .lock()
            .expect("shares")
            .take()
            .expect("each worker takes its share once");
        let mut events = share.into_iter().peekable();
        let mut fed = 0usize;
        // Worker 0 also feeds the configuration timelines, merged with its events by time; the
        // others only advance their configuration inputs along with their events.
        let mut changes: Vec<(Time, Change<'_>)> = Vec::new();
        if index == 0 {
            changes = input
                .rules
                .iter()
                .map(|(t, r)| (*t, Change::Rules(r)))
                .chain(
                    input
                        .policies
                        .iter()
                        .map(|(t, p)| (*t, Change::Policies(p))),
                )
                .chain(input.tor.iter().map(|(t, p)| (*t, Change::Tor(p))))
                .filter(|(t, _)| *t <= end)
                .collect();
            changes.sort_by_key(|(t, _)| *t);
        }
        let mut changes = changes.into_iter().peekable();
        let mut inputs = inputs;
        let mut rules_now: Vec<Rule> = Vec::new();
        let mut policies_now: Vec<(PolicyScope, Policy)> = Vec::new();
        let mut tor_now: Vec<String> = Vec::new();
        let mut now: Time = 0;
        let batch = input.worker_batch.unwrap_or(WORKER_BATCH).max(1);
        // The time each batch in flight was fed up to, oldest first.
        let mut in_flight: VecDeque<Time> = VecDeque::with_capacity(BATCHES_IN_FLIGHT + 1);
        if let Some(recorder) = recorder.as_mut() {
            recorder.start_clock();
        }
        loop {
            let next_event = events.peek().map(|(t, _)| *t);
            let next_change = changes.peek().map(|(t, _)| *t);
            let change_first = match (next_event, next_change) {
                (None, None) => break,
                (Some(te), Some(tc)) => tc <= te,
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            if change_first {
                let (at, change) = changes.next().expect("peeked");
                now = now.max(at);
                inputs.advance_to(now);
                match change {
                    Change::Rules(r) => replace(r.to_vec(), &mut rules_now, &mut inputs.rules),
                    Change::Policies(p) => {
                        replace(p.records(), &mut policies_now, &mut inputs.policies)
                    }
                    Change::Tor(ips) => {
                        replace(ips.iter().cloned().collect(), &mut tor_now, &mut inputs.tor)
                    }
                }
                continue;
            }
            let (at, event) = events.next().expect("peeked");
            if at > now {
                now = at;
                inputs.advance_to(now);
            }
            inputs.events.insert(SharedEvent::new(event));
            fed += 1;
            if fed.is_multiple_of(batch) {
                inputs.flush();
                in_flight.push_back(now);
                if in_flight.len() > BATCHES_IN_FLIGHT {
                    let behind = in_flight.pop_front().expect("a batch in flight");
                    worker.step_while(|| probe.less_than(&behind));
                } else {
                    worker.step();
                }
                if index == 0 {
                    worker_bar.set_position((fed * peers) as u64);
                }
            }
        }
        inputs.advance_to(end + 1);
        inputs.flush();
        worker.step_while(|| probe.less_than(&(end + 1)));
        if let Some(recorder) = recorder {
            let times = recorder.finish(worker);
            times_sink.lock().expect("collector").push(times);
        }
        // Everything up to `end` is final; the future (window and bucket expiries) is not needed.
        for dataflow in worker.installed_dataflows() {
            worker.drop_dataflow(dataflow);
        }
    })
    .map_err(EngineError::Timely)?;
    for result in guards.join() {
        result.map_err(|_| EngineError::WorkerPanicked)?;
    }
    bar.finish_and_clear();
    let mut anomalies = std::mem::take(&mut *anomalies_out.lock().expect("collector"));
    let mut decisions = std::mem::take(&mut *decisions_out.lock().expect("collector"));
    anomalies.sort();
    decisions.sort_by(|a, b| (a.decided_at, &a.id).cmp(&(b.decided_at, &b.id)));
    let mut operator_times = std::mem::take(&mut *times_out.lock().expect("collector"));
    operator_times.sort_by_key(|t| t.worker);
    let stats = EngineStats {
        heuristic_state_max: state_max.load(Ordering::Relaxed),
        operator_times,
    };
    Ok((
        EngineOutput {
            anomalies,
            decisions,
        },
        stats,
    ))
}
