//! Allow-lists in the dataflow: an as-of join of events with the broadcast policy collection.
//! Each event leaves with the verdict: an event from a network its enterprise trusts (at the
//! event's time) produces no anomaly and enters no baseline; it only records its session's
//! sighting for the decisions (DESIGN 5).

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::Broadcast;

use super::decide::UserInput;
use super::ops::{ordered_binary, PolicyView};
use crate::model::decision::{Policy, PolicyScope};
use crate::model::{SharedEvent, Time};

/// Every event, with whether an allow-list in force at its time trusts its network.
pub fn screen<'s>(
    events: VecCollection<'s, Time, SharedEvent, isize>,
    policies: VecCollection<'s, Time, (PolicyScope, Policy), isize>,
) -> VecCollection<'s, Time, UserInput, isize> {
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
                out.push((UserInput::Event(event, trusted), at.time, diff));
            }
        },
    )
    .as_collection()
}
