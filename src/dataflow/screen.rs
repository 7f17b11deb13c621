//! Allow-lists in the dataflow: an as-of join of events with the broadcast policy collection.
//! An event from a network its enterprise trusts (at the event's time) goes no further: it
//! produces no anomaly and enters no baseline.

use differential_dataflow::{AsCollection, VecCollection};
use std::collections::{BTreeMap, HashMap};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::Broadcast;

use super::ops::ordered_binary;
use crate::model::decision::{Policy, PolicyScope};
use crate::model::{Event, Time};

/// The events no allow-list in force at their time trusts.
pub fn screen<'s>(
    events: VecCollection<'s, Time, Event, isize>,
    policies: VecCollection<'s, Time, (PolicyScope, Policy), isize>,
) -> VecCollection<'s, Time, Event, isize> {
    let mut in_force: BTreeMap<(PolicyScope, Policy), isize> = BTreeMap::new();
    let mut current: HashMap<PolicyScope, Policy> = HashMap::new();
    ordered_binary(
        events.inner,
        policies.inner.broadcast(),
        Pipeline,
        Pipeline,
        "Screen",
        move |at, out| {
            if !at.right.is_empty() {
                for (record, diff) in at.right {
                    let count = in_force.entry(record.clone()).or_insert(0);
                    *count += diff;
                    if *count == 0 {
                        in_force.remove(&record);
                    }
                }
                current = in_force
                    .iter()
                    .filter(|(_, c)| **c > 0)
                    .map(|((scope, policy), _)| (scope.clone(), policy.clone()))
                    .collect();
            }
            for (event, diff) in at.left {
                let policy = current
                    .get(&Some(event.enterprise.clone()))
                    .or_else(|| current.get(&None));
                let trusted =
                    policy.is_some_and(|p| p.allow.allows(event.ip.as_deref(), event.asn));
                if trusted {
                    tracing::trace!(id = %event.id, "event from an allow-listed network");
                } else {
                    out.push((event, at.time, diff));
                }
            }
        },
    )
    .as_collection()
}
