//! The decision framework (DESIGN 5) as a dataflow stage: one deterministic fold per (enterprise,
//! user). Events (for when each session was first seen) and anomalies are routed by that key; the
//! policy collection is broadcast. Each second is processed once both inputs have passed it:
//! policy changes first, then the second's events, then its anomalies in id order, so a decision
//! made for a time is never revised and a policy change at t applies from t on.

use differential_dataflow::{Hashable, VecCollection};
use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::Stream;

use super::ops::{ordered_binary, PolicyView};
use crate::model::decision::{Decision, Policy, PolicyScope, UserFold, LOOP_HORIZON};
use crate::model::{Anomaly, ArcStr, SharedEvent, Time};

/// What the fold reads per (enterprise, user).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FoldInput {
    /// The user acted in a session (enterprise, user, session).
    Seen(ArcStr, ArcStr, ArcStr),
    Anomaly(Box<Anomaly>),
}

impl FoldInput {
    fn route(&self) -> u64 {
        match self {
            FoldInput::Seen(e, u, _) => (e, u).hashed(),
            FoldInput::Anomaly(a) => (&a.enterprise, &a.user).hashed(),
        }
    }
}

/// A session's first and last sighting.
struct SessionSeen {
    first: Time,
    last: Time,
}

/// Builds the decision stage; returns the decisions, each at its anomaly's time.
pub fn decide<'s>(
    events: VecCollection<'s, Time, SharedEvent, isize>,
    anomalies: VecCollection<'s, Time, Anomaly, isize>,
    policies: VecCollection<'s, Time, (PolicyScope, Policy), isize>,
    session_expiry: u64,
) -> Stream<'s, Time, Vec<(Decision, Time, isize)>> {
    let seen = events.flat_map(|e| {
        let s = e.session.clone()?;
        Some(FoldInput::Seen(e.enterprise.clone(), e.user.clone(), s))
    });
    let folded = seen.concat(anomalies.map(|a| FoldInput::Anomaly(Box::new(a))));

    let mut policies_now = PolicyView::default();
    let fallback = Policy::default();
    let mut sessions: HashMap<(ArcStr, ArcStr, ArcStr), SessionSeen> = HashMap::new();
    let mut session_expiry_at: BTreeMap<Time, Vec<(ArcStr, ArcStr, ArcStr)>> = BTreeMap::new();
    let mut folds: HashMap<(String, String), UserFold> = HashMap::new();
    let mut fold_expiry_at: BTreeMap<Time, Vec<(String, String)>> = BTreeMap::new();

    ordered_binary(
        folded.inner,
        policies.inner.broadcast(),
        Exchange::new(|(d, _, _): &(FoldInput, Time, isize)| d.route()),
        Pipeline,
        "DecisionFold",
        move |at, out| {
            let now = at.time;
            policies_now.apply(at.right.drain(..));
            let mut anomalies = Vec::new();
            for (input, diff) in at.left.drain(..) {
                if diff <= 0 {
                    continue;
                }
                match input {
                    FoldInput::Seen(e, u, s) => {
                        // Every remembered session has exactly one pending expiry check.
                        let key = (e, u, s);
                        match sessions.get_mut(&key) {
                            Some(seen) if now - seen.last <= session_expiry => seen.last = now,
                            Some(seen) => {
                                seen.first = now;
                                seen.last = now;
                            }
                            None => {
                                sessions.insert(
                                    key.clone(),
                                    SessionSeen {
                                        first: now,
                                        last: now,
                                    },
                                );
                                session_expiry_at
                                    .entry(now + session_expiry + 1)
                                    .or_default()
                                    .push(key);
                            }
                        }
                    }
                    FoldInput::Anomaly(a) => anomalies.push(*a),
                }
            }
            // Forget sessions idle for longer than the expiry: exactly as if they had expired.
            while let Some(entry) = session_expiry_at.first_entry() {
                if *entry.key() > now {
                    break;
                }
                for key in entry.remove() {
                    match sessions.get(&key) {
                        Some(s) if now - s.last > session_expiry => {
                            sessions.remove(&key);
                        }
                        Some(s) => {
                            let at = s.last + session_expiry + 1;
                            session_expiry_at.entry(at).or_default().push(key);
                        }
                        None => {}
                    }
                }
            }
            anomalies.sort_by(|a, b| a.id.cmp(&b.id));
            for anomaly in anomalies {
                let policy = policies_now
                    .for_enterprise(&anomaly.enterprise)
                    .unwrap_or(&fallback);
                let first_seen = anomaly.session_id.as_ref().and_then(|s| {
                    sessions
                        .get(&(
                            ArcStr::from(anomaly.enterprise.as_str()),
                            ArcStr::from(anomaly.user.as_str()),
                            ArcStr::from(s.as_str()),
                        ))
                        .filter(|seen| now - seen.last <= session_expiry)
                        .map(|seen| seen.first)
                });
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
                out.push((decision, now, 1));
            }
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
    )
}
