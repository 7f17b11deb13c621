//! The live driver: the same graph as [`super::run`], fed from a channel of [`Command`]s while it
//! runs (sequenced events, configuration changes, watermark advances) instead of from a finished
//! input. Anomalies and decisions leave through a channel once their time is final (the probe
//! has passed it), in (time, id) order, and [`Live::as_of`] tells the last final event time, the
//! time every answer built from the outputs is consistent at.

use std::cell::RefCell;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::threshold::{CKey, RuleKey, SharedRule};
use super::{build, replace, EngineError, Inputs};
use crate::model::decision::{Decision, Policies, Policy, PolicyScope};
use crate::model::{Anomaly, ArcStr, Baseline, HeuristicParams, Rule, Sequenced, ShapeId, Time};

/// What the live dataflow is told.
#[derive(Clone, Debug)]
pub enum Command {
    /// A sequenced event; its time is never earlier than the last advance.
    Event(Sequenced),
    /// The rule set in force from now on.
    Rules(Vec<Rule>),
    /// The decision policies in force from now on.
    Policies(Policies),
    /// The Tor exit list in force from now on.
    Tor(BTreeSet<String>),
    /// The watermark: no event earlier than this time will come, so earlier times are final.
    Advance(Time),
}

/// A final result, or word that every result up to a time has been sent.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // few, and moved once each
pub enum Output {
    Anomaly(Anomaly),
    Decision(Decision),
    /// Every anomaly and decision up to and including this time has been sent before this.
    Final(Time),
}

/// A change of the threshold graph's state, for the live API.
#[derive(Clone, Debug)]
pub enum StateUpdate {
    /// The window count of (enterprise, shape, key).
    Count(CKey, u64),
    /// The baseline of (enterprise, shape, rule in force).
    Baseline(RuleKey, Baseline),
}

/// The live window counts and baselines, exactly as of `as_of` (updates are applied only once
/// their time is final).
#[derive(Clone, Debug, Default)]
pub struct LiveState {
    pub as_of: Option<Time>,
    /// enterprise -> (shape, key) -> count in the current window. Keyed by the interned text
    /// the dataflow already holds: applying an update allocates nothing (every counted event
    /// changes a count, and this runs on worker 0).
    pub counts: BTreeMap<ArcStr, BTreeMap<(ShapeId, ArcStr), u64>>,
    /// enterprise -> shape -> (the rule in force, its baseline).
    pub baselines: BTreeMap<ArcStr, BTreeMap<ShapeId, (SharedRule, Baseline)>>,
}

impl LiveState {
    fn apply(&mut self, update: StateUpdate, diff: isize) {
        match update {
            StateUpdate::Count(key, n) => {
                let (enterprise, shape, key) = key.into_parts();
                let counts = self.counts.entry(enterprise).or_default();
                if diff > 0 {
                    counts.insert((shape, key), n);
                } else if let Entry::Occupied(e) = counts.entry((shape, key)) {
                    if *e.get() == n {
                        e.remove();
                    }
                }
            }
            StateUpdate::Baseline((enterprise, shape, rule), baseline) => {
                let baselines = self.baselines.entry(enterprise).or_default();
                if diff > 0 {
                    baselines.insert(shape, (rule, baseline));
                } else if baselines.get(&shape) == Some(&(rule, baseline)) {
                    baselines.remove(&shape);
                }
            }
        }
    }
}

/// How the live graph is set up.
#[derive(Clone, Debug)]
pub struct LiveSettings {
    pub workers: usize,
    pub heuristics: HeuristicParams,
    pub session_expiry: u64,
}

/// A running live dataflow. Dropping the command sender (through [`Live::finish`]) makes every
/// time up to the last event final, releases what is left, and stops the workers.
pub struct Live {
    commands: Option<Sender<Command>>,
    /// One past the last final time (0: nothing final yet).
    frontier: Arc<AtomicU64>,
    state: Arc<Mutex<LiveState>>,
    guards: Option<timely::communication::WorkerGuards<()>>,
}

/// Commands applied between two steps of the dataflow.
const BATCH: usize = 16_384;

impl Live {
    /// Starts the workers; final outputs go to `outputs`.
    pub fn start(settings: LiveSettings, outputs: Sender<Output>) -> Result<Live, EngineError> {
        let (tx, rx) = std::sync::mpsc::channel::<Command>();
        let rx = Arc::new(Mutex::new(Some(rx)));
        let frontier = Arc::new(AtomicU64::new(0));
        let worker_frontier = frontier.clone();
        let state = Arc::new(Mutex::new(LiveState::default()));
        let worker_state = state.clone();
        // The time all workers run to before they stop (u64::MAX: still running).
        let stop_at = Arc::new(AtomicU64::new(u64::MAX));
        let outputs = Mutex::new(outputs);
        let config = timely::Config::process(settings.workers.max(1));
        let guards = timely::execute(config, move |worker| {
            let stop_at = stop_at.clone();
            let held: Rc<RefCell<Vec<(Time, Output)>>> = Rc::default();
            let (a, d) = (held.clone(), held.clone());
            let held_state: Rc<RefCell<Vec<(Time, isize, StateUpdate)>>> = Rc::default();
            let s = held_state.clone();
            let (inputs, probe) = build(
                worker,
                settings.heuristics.clone(),
                settings.session_expiry,
                Arc::new(AtomicUsize::new(0)),
                move |anomaly: &Anomaly, t| {
                    a.borrow_mut().push((t, Output::Anomaly(anomaly.clone())))
                },
                move |decision: &Decision, t| {
                    d.borrow_mut().push((t, Output::Decision(decision.clone())))
                },
                Some(Box::new(move |update, t, diff| {
                    s.borrow_mut().push((t, diff, update))
                })),
            );
            let release = || {
                let frontier = probe.with_frontier(|f| f.first().copied());
                let mut held = held.borrow_mut();
                let (ready, keep): (Vec<_>, Vec<_>) = held
                    .drain(..)
                    .partition(|(t, _)| frontier.is_none_or(|f| *t < f));
                *held = keep;
                let mut ready = ready;
                ready.sort_by(|a, b| (a.0, key(&a.1)).cmp(&(b.0, key(&b.1))));
                if !ready.is_empty() {
                    let out = outputs.lock().expect("live outputs");
                    for (_, o) in ready {
                        // A closed receiver means nobody listens any more: drop quietly.
                        let _ = out.send(o);
                    }
                }
                // The state view moves to the frontier: retractions before insertions in a time.
                let mut pending = held_state.borrow_mut();
                let (mut ready, keep): (Vec<_>, Vec<_>) = pending
                    .drain(..)
                    .partition(|(t, _, _)| frontier.is_none_or(|f| *t < f));
                *pending = keep;
                ready.sort_by_key(|(t, diff, _)| (*t, *diff));
                let mut view = worker_state.lock().expect("live state");
                for (_, diff, update) in ready {
                    view.apply(update, diff);
                }
                if let Some(f) = frontier {
                    let before = worker_frontier.fetch_max(f, Ordering::Relaxed);
                    view.as_of = f.checked_sub(1).max(view.as_of);
                    if f > before && f > 0 {
                        // In the same channel, after the outputs: readers downstream (the
                        // notification coalescer) can advance their event-time clock exactly.
                        let _ = outputs
                            .lock()
                            .expect("live outputs")
                            .send(Output::Final(f - 1));
                    }
                }
            };
            if worker.index() != 0 {
                drop(inputs);
                loop {
                    let end = stop_at.load(Ordering::Acquire);
                    if end != u64::MAX && !probe.less_than(&end) {
                        break;
                    }
                    worker.step_or_park(Some(Duration::from_millis(5)));
                }
                for dataflow in worker.installed_dataflows() {
                    worker.drop_dataflow(dataflow);
                }
                return;
            }
            let rx: Receiver<Command> = rx
                .lock()
                .expect("live commands")
                .take()
                .expect("worker 0 takes the commands once");
            let mut state = Feed::new(inputs);
            loop {
                let mut open = true;
                match rx.recv_timeout(Duration::from_millis(5)) {
                    Ok(c) => state.apply(c),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
                for _ in 0..BATCH {
                    match rx.try_recv() {
                        Ok(c) => state.apply(c),
                        Err(_) => break,
                    }
                }
                state.inputs.flush();
                // Run until every time before the input's is final, then take more commands:
                // a batch's outputs leave before the next batch starts (and the commands
                // waiting meanwhile make the next batch larger when the input is fast).
                let caught_up = state.now;
                worker.step_while(|| probe.less_than(&caught_up));
                release();
                if !open {
                    break;
                }
            }
            // Make everything up to the last event final, then stop: later window and bucket
            // expiries are not needed.
            let end = state.now + 1;
            stop_at.store(end, Ordering::Release);
            state.inputs.advance_to(end);
            state.inputs.flush();
            worker.step_while(|| probe.less_than(&end));
            release();
            drop(state);
            for dataflow in worker.installed_dataflows() {
                worker.drop_dataflow(dataflow);
            }
        })
        .map_err(EngineError::Timely)?;
        Ok(Live {
            commands: Some(tx),
            frontier,
            state,
            guards: Some(guards),
        })
    }

    /// Sends a command; false when the dataflow has stopped.
    pub fn send(&self, command: Command) -> bool {
        self.commands
            .as_ref()
            .is_some_and(|tx| tx.send(command).is_ok())
    }

    /// The last event time whose results are final, if any.
    pub fn as_of(&self) -> Option<Time> {
        self.frontier.load(Ordering::Relaxed).checked_sub(1)
    }

    /// The live window counts and baselines.
    pub fn state(&self) -> Arc<Mutex<LiveState>> {
        self.state.clone()
    }

    /// A shared view of the frontier, for readers that outlive a borrow of `self`.
    pub fn frontier(&self) -> Arc<AtomicU64> {
        self.frontier.clone()
    }

    /// Closes the input, waits until every result up to the last event has been released, and
    /// stops the workers.
    pub fn finish(mut self) -> Result<(), EngineError> {
        self.commands = None;
        if let Some(guards) = self.guards.take() {
            for result in guards.join() {
                result.map_err(|_| EngineError::WorkerPanicked)?;
            }
        }
        Ok(())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.commands = None;
        if let Some(guards) = self.guards.take() {
            let _ = guards.join();
        }
    }
}

fn key(o: &Output) -> (u8, &str) {
    match o {
        Output::Anomaly(a) => (0, a.id.as_str()),
        Output::Decision(d) => (1, d.id.as_str()),
        Output::Final(_) => (2, ""),
    }
}

/// Worker 0's inputs and what is in force.
struct Feed {
    inputs: Inputs,
    now: Time,
    rules: Vec<Rule>,
    policies: Vec<(PolicyScope, Policy)>,
    tor: Vec<String>,
}

impl Feed {
    fn new(inputs: Inputs) -> Feed {
        Feed {
            inputs,
            now: 0,
            rules: Vec::new(),
            policies: Vec::new(),
            tor: Vec::new(),
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Event((at, event)) => {
                if at > self.now {
                    self.now = at;
                    self.inputs.advance_to(at);
                }
                self.inputs
                    .events
                    .insert(crate::model::SharedEvent::new(event));
            }
            Command::Advance(to) => {
                if to > self.now {
                    self.now = to;
                    self.inputs.advance_to(to);
                }
            }
            Command::Rules(rules) => replace(rules, &mut self.rules, &mut self.inputs.rules),
            Command::Policies(p) => {
                replace(p.records(), &mut self.policies, &mut self.inputs.policies)
            }
            Command::Tor(ips) => replace(
                ips.into_iter().collect(),
                &mut self.tor,
                &mut self.inputs.tor,
            ),
        }
    }
}
