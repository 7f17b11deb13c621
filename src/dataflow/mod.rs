//! The differential dataflow graph and its driver. [`run`] builds the same graph on every worker,
//! feeds the sequenced events and the rules timeline through worker 0's inputs (the other workers
//! close theirs, so only worker 0 holds the frontier back), steps until every time up to the end
//! is final, and gathers the anomalies on worker 0.

pub mod ops;
pub mod threshold;

use differential_dataflow::input::{Input, InputSession};
use std::sync::{Arc, Mutex};
use timely::dataflow::operators::{Exchange, Inspect, Probe};

use crate::model::{Anomaly, Rule, Sequenced, Time};

/// Errors running the dataflow.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("timely: {0}")]
    Timely(String),
    #[error("a worker panicked")]
    WorkerPanicked,
    #[error("rules timeline is not in increasing time order at {0}")]
    Timeline(Time),
}

/// What the engines consume: events in processing order, and the rule sets in force from each
/// time on (before the first entry, no rules).
#[derive(Clone, Debug, Default)]
pub struct EngineInput {
    pub events: Vec<Sequenced>,
    pub rules: Vec<(Time, Vec<Rule>)>,
    /// The last time evaluated: results are final up to and including it.
    pub end: Time,
}

impl EngineInput {
    /// One rule set in force from time 0, evaluated up to the last event.
    pub fn new(events: Vec<Sequenced>, rules: Vec<Rule>) -> Self {
        let end = events.last().map_or(0, |(t, _)| *t);
        EngineInput {
            events,
            rules: vec![(0, rules)],
            end,
        }
    }

    fn check(&self) -> Result<(), EngineError> {
        for pair in self.rules.windows(2) {
            if pair[0].0 >= pair[1].0 {
                return Err(EngineError::Timeline(pair[1].0));
            }
        }
        if let Some(w) = self.events.windows(2).find(|w| w[0].0 > w[1].0) {
            return Err(EngineError::Timeline(w[1].0));
        }
        Ok(())
    }
}

/// Retracts the rules in force and inserts `to` (what is unchanged consolidates away).
fn replace_rules(
    to: &[Rule],
    in_force: &mut Vec<Rule>,
    rules_in: &mut InputSession<Time, Rule, isize>,
) {
    for old in in_force.drain(..) {
        rules_in.remove(old);
    }
    for new in to {
        rules_in.insert(new.clone());
    }
    in_force.extend(to.iter().cloned());
}

/// Events fed between two checks on the dataflow's progress.
const BATCH: usize = 16_384;

/// Runs the detection dataflow on `workers` threads; returns the anomalies sorted.
pub fn run(input: Arc<EngineInput>, workers: usize) -> Result<Vec<Anomaly>, EngineError> {
    run_with_progress(input, workers, false)
}

/// As [`run`], with a progress bar on stderr when `progress` is set.
pub fn run_with_progress(
    input: Arc<EngineInput>,
    workers: usize,
    progress: bool,
) -> Result<Vec<Anomaly>, EngineError> {
    input.check()?;
    let bar = crate::io::progress_bar(
        input.events.len() as u64,
        "{spinner} detecting {pos}/{len} events [{bar:30}] {per_sec} eta {eta}",
        progress,
    );
    let collected: Arc<Mutex<Vec<Anomaly>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = collected.clone();
    let worker_bar = bar.clone();
    let config = timely::Config::process(workers.max(1));
    let guards = timely::execute(config, move |worker| {
        let index = worker.index();
        let sink = sink.clone();
        let bar = worker_bar.clone();
        let end = input.end;
        let (mut events_in, mut rules_in, probe) = worker.dataflow::<Time, _, _>(|scope| {
            let (events_in, events) = scope.new_collection();
            let (rules_in, rules) = scope.new_collection();
            let (probe, _) = threshold::detect(events, rules)
                .exchange(|_| 0)
                .inspect(move |anomaly: &Anomaly| {
                    if anomaly.detected_at <= end {
                        sink.lock()
                            .expect("collector poisoned")
                            .push(anomaly.clone());
                    }
                })
                .probe();
            (events_in, rules_in, probe)
        });
        if index == 0 {
            let mut changes = input.rules.iter().peekable();
            let mut in_force: Vec<Rule> = Vec::new();
            let mut now: Time = 0;
            let mut fed = 0usize;
            for (time, event) in &input.events {
                while let Some((at, rules)) = changes.next_if(|(at, _)| *at <= *time) {
                    now = now.max(*at);
                    events_in.advance_to(now);
                    rules_in.advance_to(now);
                    replace_rules(rules, &mut in_force, &mut rules_in);
                }
                if *time > now {
                    now = *time;
                    events_in.advance_to(now);
                    rules_in.advance_to(now);
                }
                events_in.insert(event.clone());
                fed += 1;
                if fed.is_multiple_of(BATCH) {
                    events_in.flush();
                    rules_in.flush();
                    let lag = now;
                    worker.step_while(|| probe.less_than(&lag));
                    bar.set_position(fed as u64);
                }
            }
            for (at, rules) in changes.filter(|(at, _)| *at <= end) {
                now = now.max(*at);
                events_in.advance_to(now);
                rules_in.advance_to(now);
                replace_rules(rules, &mut in_force, &mut rules_in);
            }
            events_in.advance_to(end + 1);
            rules_in.advance_to(end + 1);
            events_in.flush();
            rules_in.flush();
        } else {
            drop(events_in);
            drop(rules_in);
        }
        worker.step_while(|| probe.less_than(&(end + 1)));
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
    let mut anomalies = std::mem::take(&mut *collected.lock().expect("collector poisoned"));
    anomalies.sort();
    Ok(anomalies)
}
