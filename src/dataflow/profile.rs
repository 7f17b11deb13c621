//! Operator times: where each worker's time goes, by named operator, from timely's own log of
//! operator activations (`TimelyEvent::Schedule` start and stop, `TimelyEvent::Operates` for the
//! names). `aer bench --operator-times` turns it on for the batch phase. It answers what a
//! sampling profiler cannot, since most operators run inside one generic timely closure: how
//! long each of the graph's operators ran on each worker, and how much of a worker's time was
//! spent outside them (feeding input, and waiting for the other workers).
//!
//! Recording adds two log entries per activation; on the 1M-event replay its cost was within the
//! machine's noise (README), but compare profiled runs with profiled runs.

use serde::Serialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};
use timely::worker::Worker;

/// One operator's time on one worker.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OperatorTime {
    /// The operator's name (`arrange_by_key_named`'s and `ordered_binary`'s names, or timely's
    /// own for its generic operators: `Map`, `Concatenate`, ...).
    pub name: String,
    /// Timely's operator id on the worker (names repeat; ids do not).
    pub id: usize,
    /// Time inside the operator's activations, in milliseconds.
    pub busy_ms: f64,
    pub activations: u64,
}

/// Where one worker's time went.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkerTimes {
    pub worker: usize,
    /// From the first event fed to the last time final, in milliseconds.
    pub wall_ms: f64,
    /// Inside the dataflow: its operators and timely's progress tracking between them.
    pub dataflow_ms: f64,
    /// The dataflow's operators (direct children), busiest first.
    pub operators: Vec<OperatorTime>,
}

impl WorkerTimes {
    /// Wall time spent outside the dataflow: feeding events into it, and stepping the worker
    /// while there was nothing to run (waiting for other workers' data and progress).
    pub fn outside_ms(&self) -> f64 {
        (self.wall_ms - self.dataflow_ms).max(0.0)
    }
}

/// What the log receiver keeps: operator names and depths, each operator's accumulated time and
/// activation count, and the start of each activation in progress.
#[derive(Default)]
struct Log {
    names: HashMap<usize, (String, usize)>,
    busy: HashMap<usize, (Duration, u64)>,
    started: HashMap<usize, Duration>,
}

/// Records one worker's operator activations from before its dataflow is built.
pub(crate) struct Recorder {
    log: Rc<RefCell<Log>>,
    started: Instant,
}

impl Recorder {
    /// Starts recording on `worker`; call before building the dataflow, so that its operators'
    /// names are logged. `None` when the worker has no log registry.
    pub(crate) fn install(worker: &mut Worker) -> Option<Recorder> {
        let log: Rc<RefCell<Log>> = Rc::default();
        let receiver = log.clone();
        worker
            .log_register()?
            .insert::<TimelyEventBuilder, _>("timely", move |_, batch| {
                let Some(batch) = batch else { return };
                let mut log = receiver.borrow_mut();
                for (at, event) in batch.iter() {
                    match event {
                        TimelyEvent::Operates(op) => {
                            log.names.insert(op.id, (op.name.clone(), op.addr.len()));
                        }
                        TimelyEvent::Schedule(s) => match s.start_stop {
                            StartStop::Start => {
                                log.started.insert(s.id, *at);
                            }
                            StartStop::Stop => {
                                if let Some(start) = log.started.remove(&s.id) {
                                    let entry = log.busy.entry(s.id).or_default();
                                    entry.0 += at.saturating_sub(start);
                                    entry.1 += 1;
                                }
                            }
                        },
                        _ => {}
                    }
                }
            });
        Some(Recorder {
            log,
            started: Instant::now(),
        })
    }

    /// Restarts the wall clock (at the first event fed).
    pub(crate) fn start_clock(&mut self) {
        self.started = Instant::now();
    }

    /// Flushes the log and returns the worker's times; call once the dataflow is done and before
    /// it is dropped.
    pub(crate) fn finish(self, worker: &mut Worker) -> WorkerTimes {
        let wall = self.started.elapsed();
        if let Some(mut registry) = worker.log_register() {
            registry.flush();
            registry.remove("timely");
        }
        let log = self.log.borrow();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut dataflow = Duration::ZERO;
        let mut operators = Vec::new();
        for (id, (busy, activations)) in &log.busy {
            match log.names.get(id) {
                // The dataflow itself: its activations contain its operators'.
                Some((_, 1)) => dataflow += *busy,
                Some((name, 2)) => operators.push(OperatorTime {
                    name: name.clone(),
                    id: *id,
                    busy_ms: ms(*busy),
                    activations: *activations,
                }),
                _ => {}
            }
        }
        operators.sort_by(|a, b| b.busy_ms.total_cmp(&a.busy_ms).then(a.id.cmp(&b.id)));
        WorkerTimes {
            worker: worker.index(),
            wall_ms: ms(wall),
            dataflow_ms: ms(dataflow),
            operators,
        }
    }
}
