//! Generic operators the aer graph is built from, beyond what differential-dataflow provides:
//! a delay whose target time depends on the record (rules carry their own window and history),
//! and a binary operator that processes each time in order once both inputs have passed it (the
//! pattern for deterministic stateful stages such as rule matching and episode detection).

use differential_dataflow::difference::Semigroup;
use differential_dataflow::{AsCollection, VecCollection};
use std::collections::{BTreeMap, HashMap};

use crate::model::decision::{Policy, PolicyScope};
use timely::dataflow::channels::pact::{ParallelizationContract, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::model::Time;

/// Moves every update to `f(record, time)`, which must be at least `time`.
///
/// `f` may read the record, so each record can carry its own window or history. Each input
/// message leaves as one message stamped with its earliest new time (each update keeps its own).
pub fn delay_by<'s, D, R, F>(
    collection: VecCollection<'s, Time, D, R>,
    name: &str,
    f: F,
) -> VecCollection<'s, Time, D, R>
where
    D: differential_dataflow::Data,
    R: Semigroup + 'static,
    F: Fn(&D, Time) -> Time + 'static,
{
    let mut buffer: Vec<(D, Time, R)> = Vec::new();
    collection
        .inner
        .unary(Pipeline, name, move |_, _| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    for batch in data {
                        buffer.extend(batch.drain(..).map(|(d, t, r)| {
                            let to = f(&d, t);
                            debug_assert!(to >= t, "delay_by moves time backwards");
                            (d, to.max(t), r)
                        }));
                    }
                    // One message under the earliest new time: differential updates may travel
                    // in a message stamped earlier than their own times, and one message per
                    // batch instead of one per distinct time keeps timely's overhead per batch.
                    if let Some(earliest) = buffer.iter().map(|(_, t, _)| *t).min() {
                        let cap = cap.delayed(&earliest, output.output_index());
                        output.session(&cap).give_container(&mut buffer);
                        buffer.clear();
                    }
                });
            }
        })
        .as_collection()
}

/// What [`ordered_binary`] hands its logic for one time: the updates of each input at that time.
pub struct AtTime<D1, R1, D2, R2> {
    pub time: Time,
    pub left: Vec<(D1, R1)>,
    pub right: Vec<(D2, R2)>,
}

type Pending<D1, R1, D2, R2> = BTreeMap<Time, (Vec<(D1, R1)>, Vec<(D2, R2)>)>;

/// A binary operator over two update streams that calls `logic` once per time that has data, in
/// increasing time order, only after both input frontiers have passed that time. Its output for a
/// time is therefore a deterministic function of the complete inputs up to that time, whatever the
/// batching, the worker count or the arrival order of messages.
///
/// It holds one capability, at the earliest pending time, and sends everything made ready by one
/// activation in one message under it: timely's cost then follows the batches, not the number of
/// distinct seconds (updates carry their own times, which are never earlier than the message's).
pub fn ordered_binary<'s, D1, R1, D2, R2, O, P1, P2, L>(
    left: Stream<'s, Time, Vec<(D1, Time, R1)>>,
    right: Stream<'s, Time, Vec<(D2, Time, R2)>>,
    pact_left: P1,
    pact_right: P2,
    name: &str,
    mut logic: L,
) -> Stream<'s, Time, Vec<O>>
where
    D1: Clone + 'static,
    R1: Clone + 'static,
    D2: Clone + 'static,
    R2: Clone + 'static,
    O: Clone + 'static,
    P1: ParallelizationContract<Time, Vec<(D1, Time, R1)>>,
    P2: ParallelizationContract<Time, Vec<(D2, Time, R2)>>,
    L: FnMut(AtTime<D1, R1, D2, R2>, &mut Vec<O>) + 'static,
{
    left.binary_frontier(right, pact_left, pact_right, name, move |_, _| {
        let mut pending: Pending<D1, R1, D2, R2> = BTreeMap::new();
        // One capability, at or before the earliest pending time (times are totally ordered).
        let mut held: Option<Capability<Time>> = None;
        let mut produced: Vec<O> = Vec::new();
        move |(in_left, frontier_left), (in_right, frontier_right), output| {
            let index = output.output_index();
            let mut hold = |cap: &timely::dataflow::operators::InputCapability<Time>| {
                if let Some(time) = cap.least() {
                    if held.as_ref().is_none_or(|h| time < h.time()) {
                        held = Some(cap.delayed(time, index));
                    }
                }
            };
            in_left.for_each_stamp(|cap, data| {
                hold(&cap);
                for batch in data {
                    for (d, t, r) in batch.drain(..) {
                        pending.entry(t).or_default().0.push((d, r));
                    }
                }
            });
            in_right.for_each_stamp(|cap, data| {
                hold(&cap);
                for batch in data {
                    for (d, t, r) in batch.drain(..) {
                        pending.entry(t).or_default().1.push((d, r));
                    }
                }
            });
            while let Some(entry) = pending.first_entry() {
                let time = *entry.key();
                if frontier_left.less_equal(&time) || frontier_right.less_equal(&time) {
                    break;
                }
                let (left, right) = entry.remove();
                logic(AtTime { time, left, right }, &mut produced);
            }
            // Everything ready leaves in one message under the held capability (its time is
            // at or before every time processed); then the capability moves to what is left.
            if let Some(cap) = held.as_mut() {
                if !produced.is_empty() {
                    output.session(&*cap).give_container(&mut produced);
                    produced.clear();
                }
                match pending.first_key_value() {
                    Some((next, _)) => cap.downgrade(next),
                    None => held = None,
                }
            }
            // Every message in this graph carries a capability, so nothing is ever ready
            // without one to send it under.
            debug_assert!(
                produced.is_empty(),
                "ordered_binary: output without a capability"
            );
        }
    })
}

/// The current contents of a small collection (rules, policies, the Tor list) that an ordered
/// operator receives as updates, accumulated in time order.
pub struct Contents<K> {
    counts: BTreeMap<K, isize>,
}

impl<K: Ord + Clone> Default for Contents<K> {
    fn default() -> Self {
        Contents {
            counts: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> Contents<K> {
    /// Applies one time's updates; returns whether there were any.
    pub fn apply(&mut self, updates: Vec<(K, isize)>) -> bool {
        let changed = !updates.is_empty();
        for (record, diff) in updates {
            let count = self.counts.entry(record.clone()).or_insert(0);
            *count += diff;
            if *count == 0 {
                self.counts.remove(&record);
            }
        }
        changed
    }

    /// The records present (positive multiplicity), in order.
    pub fn present(&self) -> impl Iterator<Item = &K> {
        self.counts.iter().filter(|(_, c)| **c > 0).map(|(k, _)| k)
    }

    pub fn contains<Q: Ord + ?Sized>(&self, record: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
    {
        self.counts.get(record).is_some_and(|c| *c > 0)
    }
}

/// The policies in force by scope, rebuilt from the policy collection when it changes.
#[derive(Default)]
pub struct PolicyView {
    contents: Contents<(PolicyScope, Policy)>,
    by_scope: HashMap<PolicyScope, Policy>,
}

impl PolicyView {
    /// Applies one time's updates of the policy collection.
    pub fn apply(&mut self, updates: Vec<((PolicyScope, Policy), isize)>) {
        if self.contents.apply(updates) {
            self.by_scope = self
                .contents
                .present()
                .map(|(scope, policy)| (scope.clone(), policy.clone()))
                .collect();
        }
    }

    /// The enterprise's own policy, else the default; none before any policy is in force.
    pub fn for_enterprise(&self, enterprise: &str) -> Option<&Policy> {
        self.by_scope
            .get(&Some(enterprise.to_string()))
            .or_else(|| self.by_scope.get(&None))
    }
}
