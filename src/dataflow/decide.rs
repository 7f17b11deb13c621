//! The per-user stage: the heuristic detectors (DESIGN 4.2, [`super::heuristics`]) and the
//! decision framework (DESIGN 5) as one deterministic operator keyed by (enterprise, user).
//! Events and the threshold detectors' anomalies are routed by that key; the policy collection
//! and the Tor exit list are broadcast. Each second is processed once both inputs have passed
//! it: policy and Tor list changes first, then the second's events in id order (each records its
//! session's sighting; those no allow-list in force trusts go through the detectors), then
//! the second's anomalies (the threshold detectors' and the heuristics' own) in id order, each
//! folded into its user's decisions. So a decision made for a time is never revised and a
//! policy change at t applies from t on. One stage, not two: a second stage keyed by user would
//! take every event through another exchange just to learn when its session was first seen.

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::Stream;

use super::heuristics;
use super::ops::{ordered_binary, PolicyView};
use crate::model::decision::{Decision, Policy, PolicyScope, UserFold, LOOP_HORIZON};
use crate::model::{Anomaly, HeuristicParams, SharedEvent, Time};

/// What the per-user stage reads, routed by (enterprise, user).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum UserInput {
    /// An event (whether an allow-list trusts its network is asked in the stage, with the
    /// policies in force at its time).
    Event(SharedEvent),
    /// A threshold detector's anomaly.
    Anomaly(Box<Anomaly>),
}

impl UserInput {
    fn route(&self) -> u64 {
        match self {
            UserInput::Event(e) => (&e.enterprise, &e.user).hashed(),
            UserInput::Anomaly(a) => (&a.enterprise, &a.user).hashed(),
        }
    }
}

/// What the per-user stage reads broadcast: the policies and the Tor exit list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Setting {
    Policy(PolicyScope, Policy),
    Tor(String),
}

/// What the per-user stage emits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum UserOutput {
    /// A heuristic detector's anomaly.
    Anomaly(Box<Anomaly>),
    Decision(Box<Decision>),
}

/// The decisions, each at its anomaly's time.
pub type Decisions<'s> = Stream<'s, Time, Vec<(Decision, Time, isize)>>;

/// Builds the per-user stage over the events and the threshold anomalies; returns the heuristic
/// anomalies and the decisions, each at its anomaly's time.
pub fn decide<'s>(
    events: VecCollection<'s, Time, SharedEvent, isize>,
    threshold: VecCollection<'s, Time, Anomaly, isize>,
    policies: VecCollection<'s, Time, (PolicyScope, Policy), isize>,
    tor: VecCollection<'s, Time, String, isize>,
    heuristics: HeuristicParams,
    session_expiry: u64,
    state_size: Arc<AtomicUsize>,
) -> (VecCollection<'s, Time, Anomaly, isize>, Decisions<'s>) {
    let inputs = events
        .map(UserInput::Event)
        .concat(threshold.map(|a| UserInput::Anomaly(Box::new(a))));
    let settings = policies
        .map(|(scope, policy)| Setting::Policy(scope, policy))
        .concat(tor.map(Setting::Tor));

    let mut detector = heuristics::Detector::new(heuristics, session_expiry, state_size);
    let mut policies_now = PolicyView::default();
    let fallback = Policy::default();
    let mut folds: HashMap<(String, String), UserFold> = HashMap::new();
    let mut fold_expiry_at: BTreeMap<Time, Vec<(String, String)>> = BTreeMap::new();
    // One second's events, in id order, and its anomalies (both reused from one second to the
    // next).
    let mut events: Vec<SharedEvent> = Vec::new();
    let mut anomalies: Vec<Anomaly> = Vec::new();

    let produced = ordered_binary(
        inputs.inner,
        settings.inner.broadcast(),
        Exchange::new(|(d, _, _): &(UserInput, Time, isize)| d.route()),
        Pipeline,
        "UserStage",
        move |at, out| {
            let now = at.time;
            let mut tor = Vec::new();
            let mut policy = Vec::new();
            for (setting, diff) in at.right.drain(..) {
                match setting {
                    Setting::Policy(scope, p) => policy.push(((scope, p), diff)),
                    Setting::Tor(ip) => tor.push((ip, diff)),
                }
            }
            policies_now.apply(policy);
            detector.apply_tor(tor);
            for (input, diff) in at.left.drain(..) {
                if diff <= 0 {
                    continue;
                }
                match input {
                    UserInput::Event(event) => events.push(event),
                    UserInput::Anomaly(a) => anomalies.push(*a),
                }
            }
            events.sort_by(|a, b| a.id.cmp(&b.id));
            for event in events.drain(..) {
                let trusted = policies_now.trusts(&event);
                detector.event(&event, now, trusted, |a| {
                    anomalies.push(a.clone());
                    out.push((UserOutput::Anomaly(Box::new(a)), now, 1));
                });
            }
            anomalies.sort_by(|a, b| a.id.cmp(&b.id));
            for anomaly in anomalies.drain(..) {
                let policy = policies_now
                    .for_enterprise(&anomaly.enterprise)
                    .unwrap_or(&fallback);
                let first_seen = anomaly
                    .session_id
                    .as_ref()
                    .and_then(|s| detector.first_seen(&anomaly.enterprise, &anomaly.user, s, now));
                let key = (anomaly.enterprise.clone(), anomaly.user.clone());
                let decision = folds
                    .entry(key.clone())
                    .or_default()
                    .decide(anomaly, policy, first_seen);
                if decision.resets_sessions {
                    fold_expiry_at
                        .entry(now + LOOP_HORIZON)
                        .or_default()
                        .push(key);
                }
                tracing::info!(
                    decision_id = %decision.id,
                    anomaly_id = %decision.anomaly.id,
                    enterprise = %decision.enterprise,
                    user = %decision.user,
                    reason = %decision.anomaly.reason,
                    outcome = decision.outcome.as_str(),
                    escalate = decision.escalate,
                    "decision"
                );
                out.push((UserOutput::Decision(Box::new(decision)), now, 1));
            }
            detector.end_second(now);
            // Evict users whose fold state can no longer change a decision.
            while let Some(entry) = fold_expiry_at.first_entry() {
                if *entry.key() > now {
                    break;
                }
                for key in entry.remove() {
                    if folds.get(&key).is_some_and(|f| f.is_idle(now)) {
                        folds.remove(&key);
                    }
                }
            }
        },
    );
    let heuristic = pick(produced.clone(), "HeuristicAnomalies", |o| match o {
        UserOutput::Anomaly(a) => Some(*a),
        UserOutput::Decision(_) => None,
    });
    let decisions = pick(produced, "Decisions", |o| match o {
        UserOutput::Decision(decision) => Some(*decision),
        UserOutput::Anomaly(_) => None,
    });
    (heuristic.as_collection(), decisions)
}

/// The per-user stage's outputs of one kind (a named operator).
fn pick<'s, O: Clone + 'static>(
    produced: Stream<'s, Time, Vec<(UserOutput, Time, isize)>>,
    name: &str,
    pick: fn(UserOutput) -> Option<O>,
) -> Stream<'s, Time, Vec<(O, Time, isize)>> {
    produced.unary(Pipeline, name, move |_, _| {
        move |input, output| {
            input.for_each_stamp(|cap, data| {
                let mut session = output.session(&cap);
                for batch in data {
                    for (o, t, d) in batch.drain(..) {
                        if let Some(o) = pick(o) {
                            session.give((o, t, d));
                        }
                    }
                }
            })
        }
    })
}
