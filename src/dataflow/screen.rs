//! Allow-lists in the dataflow: an as-of join of events with the broadcast policy collection.
//! An event from a network its enterprise trusts (at the event's time) goes no further: it
//! produces no anomaly and enters no baseline.

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::Broadcast;

use super::ops::{ordered_binary, PolicyView};
use crate::model::decision::{Policy, PolicyScope};
use crate::model::{SharedEvent, Time};

/// The events no allow-list in force at their time trusts.
pub fn screen<'s>(
    events: VecCollection<'s, Time, SharedEvent, isize>,
    policies: VecCollection<'s, Time, (PolicyScope, Policy), isize>,
) -> VecCollection<'s, Time, SharedEvent, isize> {
    let mut policies_now = PolicyView::default();
    ordered_binary(
        events.inner,
        policies.inner.broadcast(),
        Pipeline,
        Pipeline,
        "Screen",
        move |at, out| {
            policies_now.apply(at.right.drain(..));
            for (event, diff) in at.left.drain(..) {
                let policy = policies_now.for_enterprise(&event.enterprise);
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
