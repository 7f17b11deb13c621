//! Generic operators the aer graph is built from, beyond what differential-dataflow provides: a
//! binary operator that processes each time in order once both inputs have passed it (the
//! pattern for deterministic stateful stages such as rule matching and episode detection), able
//! to wake itself at a later time for work it keeps (the window counts expire each counted
//! record W after it entered, with no input at that time).

use foldhash::HashMap;
use std::collections::{BTreeMap, VecDeque};

use crate::model::decision::{Policy, PolicyScope};
use timely::dataflow::channels::pact::ParallelizationContract;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::model::{Event, Time};

/// Makes an operator's one held capability cover `earliest`, a time the operator now keeps
/// (at or after `cap`'s time): held there if it was held later, or not at all.
pub(crate) fn hold_earliest(
    held: &mut Option<Capability<Time>>,
    cap: &timely::dataflow::operators::InputCapability<Time>,
    earliest: Option<Time>,
    index: usize,
) {
    if let Some(earliest) = earliest {
        if held.as_ref().is_none_or(|h| earliest < *h.time()) {
            *held = Some(cap.delayed(&earliest, index));
        }
    }
}

/// Moves an operator's one held capability to `next`, the earliest time it still keeps, or drops
/// it when it keeps nothing (its output frontier may then pass everything).
pub(crate) fn hold_at(held: &mut Option<Capability<Time>>, next: Option<&Time>) {
    match (held.as_mut(), next) {
        (Some(cap), Some(next)) => cap.downgrade(next),
        _ => *held = None,
    }
}

/// What [`ordered_binary`] hands its logic for one time: the updates of each input at that time,
/// in the order they arrived. The logic may drain them; they are cleared after the call either
/// way (the buffers are the operator's own, reused from one time to the next).
pub struct AtTime<'a, D1, R1, D2, R2> {
    pub time: Time,
    pub left: &'a mut Vec<(D1, R1)>,
    pub right: &'a mut Vec<(D2, R2)>,
    /// The earliest later time at which the logic asks to be called again, with or without
    /// updates at it. It holds what the last call left; the logic moves it (to a time after
    /// this one) or clears it as its own pending work changes.
    pub wake: &'a mut Option<Time>,
}

/// One input's pending updates of [`ordered_binary`], in arrival order, sorted by time (stably,
/// so the arrival order stays within a time) before they are released.
///
/// A queue, not a list: released updates leave from the front, and the rest stay where they
/// are. With a list, each release moved every update still pending (they can be many: one
/// input often runs a whole batch ahead of the other), which was 3% of the engine's
/// instructions. Each input nearly always arrives in time order, so the queue is sorted only
/// when a batch breaks the order.
struct Pending<D, R> {
    updates: VecDeque<(D, Time, R)>,
    sorted: bool,
}

impl<D, R> Default for Pending<D, R> {
    fn default() -> Self {
        Pending {
            updates: VecDeque::new(),
            sorted: true,
        }
    }
}

impl<D, R> Pending<D, R> {
    /// Appends a batch, leaving it empty.
    fn append(&mut self, batch: &mut Vec<(D, Time, R)>) {
        let time = |(_, t, _): &(D, Time, R)| *t;
        let in_order = batch.is_sorted_by_key(time)
            && match (self.updates.back(), batch.first()) {
                (Some(last), Some(first)) => time(last) <= time(first),
                _ => true,
            };
        self.sorted &= in_order;
        self.updates.extend(batch.drain(..));
    }

    /// Sorts the updates by time if a batch broke the order (stably).
    fn sort(&mut self) {
        if !self.sorted {
            self.updates.make_contiguous().sort_by_key(|(_, t, _)| *t);
            self.sorted = true;
        }
    }

    /// How many updates, from the front, are at times for which `complete` holds (after
    /// [`Pending::sort`], complete times are a prefix).
    fn ready(&self, complete: impl Fn(&Time) -> bool) -> usize {
        self.updates.partition_point(|(_, t, _)| complete(t))
    }

    fn first_time(&self) -> Option<Time> {
        self.updates.front().map(|(_, t, _)| *t)
    }
}

/// A binary operator over two update streams that calls `logic` once per time that has data, or
/// that an earlier call asked to be woken at ([`AtTime::wake`]), in increasing time order, only
/// after both input frontiers have passed that time. Its output for a time is therefore a
/// deterministic function of the complete inputs up to that time, whatever the batching, the
/// worker count or the arrival order of messages.
///
/// It holds one capability, at the earliest pending time (of updates or the wake), and sends
/// everything made ready by one activation in one message under it: timely's cost then follows
/// the batches, not the number of distinct seconds (updates carry their own times, which are
/// never earlier than the message's).
///
/// Pending updates wait in one flat queue per input ([`Pending`]), in arrival order, sorted by
/// time (stably) when they are released; nearly every event has a second of its own, and a map
/// entry and two lists per second cost a few allocations per event in each of the graph's
/// ordered operators.
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
    L: for<'a> FnMut(AtTime<'a, D1, R1, D2, R2>, &mut Vec<O>) + 'static,
{
    left.binary_frontier(right, pact_left, pact_right, name, move |_, _| {
        let mut pending_left: Pending<D1, R1> = Pending::default();
        let mut pending_right: Pending<D2, R2> = Pending::default();
        // One time's updates, handed to `logic`.
        let mut at_left: Vec<(D1, R1)> = Vec::new();
        let mut at_right: Vec<(D2, R2)> = Vec::new();
        // The time the logic asked to be called at next, if any.
        let mut wake: Option<Time> = None;
        // One capability, at or before the earliest pending time (times are totally ordered).
        let mut held: Option<Capability<Time>> = None;
        let mut produced: Vec<O> = Vec::new();
        // How much the last activation produced. Sending hands `produced` itself downstream (it
        // comes back empty, without room), so each activation's output would grow from nothing,
        // copying itself at every doubling; room for as much as last time is made up front.
        let mut last_produced = 0;
        move |(in_left, frontier_left), (in_right, frontier_right), output| {
            let index = output.output_index();
            in_left.for_each_stamp(|cap, data| {
                hold_earliest(&mut held, &cap, cap.least().copied(), index);
                for batch in data {
                    pending_left.append(batch);
                }
            });
            in_right.for_each_stamp(|cap, data| {
                hold_earliest(&mut held, &cap, cap.least().copied(), index);
                for batch in data {
                    pending_right.append(batch);
                }
            });
            pending_left.sort();
            pending_right.sort();
            // A time is complete once neither input can bring more at it; complete times are a
            // prefix of the sorted queues.
            let complete = |t: &Time| !frontier_left.less_equal(t) && !frontier_right.less_equal(t);
            let ready_left = pending_left.ready(complete);
            let ready_right = pending_right.ready(complete);
            if ready_left + ready_right > 0 || wake.is_some_and(|w| complete(&w)) {
                produced.reserve(last_produced);
                let mut lefts = pending_left.updates.drain(..ready_left).peekable();
                let mut rights = pending_right.updates.drain(..ready_right).peekable();
                loop {
                    let time = match (lefts.peek(), rights.peek()) {
                        (None, None) => None,
                        (Some((_, l, _)), None) => Some(*l),
                        (None, Some((_, r, _))) => Some(*r),
                        (Some((_, l, _)), Some((_, r, _))) => Some((*l).min(*r)),
                    };
                    // The wake, when complete and earlier (a call may ask for a time that is
                    // already complete: it comes in its turn).
                    let time = match (time, wake.filter(complete)) {
                        (Some(t), Some(w)) => t.min(w),
                        (Some(t), None) | (None, Some(t)) => t,
                        (None, None) => break,
                    };
                    while let Some((d, _, r)) = lefts.next_if(|(_, t, _)| *t == time) {
                        at_left.push((d, r));
                    }
                    while let Some((d, _, r)) = rights.next_if(|(_, t, _)| *t == time) {
                        at_right.push((d, r));
                    }
                    let at = AtTime {
                        time,
                        left: &mut at_left,
                        right: &mut at_right,
                        wake: &mut wake,
                    };
                    logic(at, &mut produced);
                    at_left.clear();
                    at_right.clear();
                    debug_assert!(
                        wake.is_none_or(|w| w > time),
                        "ordered_binary: a wake at or before its call"
                    );
                }
            }
            // Everything ready leaves in one message under the held capability (its time is
            // at or before every time processed); then the capability moves to what is left.
            if let Some(cap) = held.as_ref() {
                if !produced.is_empty() {
                    last_produced = produced.len();
                    output.session(cap).give_container(&mut produced);
                    produced.clear();
                }
            }
            let next = [pending_left.first_time(), pending_right.first_time(), wake]
                .into_iter()
                .flatten()
                .min();
            hold_at(&mut held, next.as_ref());
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
    pub fn apply(&mut self, updates: impl IntoIterator<Item = (K, isize)>) -> bool {
        let mut changed = false;
        for (record, diff) in updates {
            changed = true;
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

/// The policies in force by scope, rebuilt from the policy collection when it changes. The
/// enterprises' own policies are keyed by id alone, so that the lookup made for every event
/// borrows the event's id instead of building a scope from a copy of it.
#[derive(Default)]
pub struct PolicyView {
    contents: Contents<(PolicyScope, Policy)>,
    default: Option<Policy>,
    by_enterprise: HashMap<String, Policy>,
}

impl PolicyView {
    /// Applies one time's updates of the policy collection.
    pub fn apply(&mut self, updates: impl IntoIterator<Item = ((PolicyScope, Policy), isize)>) {
        if self.contents.apply(updates) {
            self.default = None;
            self.by_enterprise.clear();
            for (scope, policy) in self.contents.present() {
                match scope {
                    None => self.default = Some(policy.clone()),
                    Some(enterprise) => {
                        self.by_enterprise
                            .insert(enterprise.clone(), policy.clone());
                    }
                }
            }
        }
    }

    /// The enterprise's own policy, else the default; none before any policy is in force.
    pub fn for_enterprise(&self, enterprise: &str) -> Option<&Policy> {
        self.by_enterprise.get(enterprise).or(self.default.as_ref())
    }

    /// Whether an allow-list in force trusts the event's network (DESIGN 4.3): such an event
    /// enters no count and reaches no detector; it only records its session's sighting. Asked
    /// where the verdict is used (`MatchRules` and `UserStage`), each of which applies a
    /// time's policy changes before its events, so both see the policies in force at the
    /// event's time.
    pub fn trusts(&self, event: &Event) -> bool {
        self.for_enterprise(&event.enterprise)
            .is_some_and(|p| p.allow.allows(event.ip.as_deref(), event.asn))
    }
}

#[cfg(test)]
mod tests {
    use super::{ordered_binary, Pending, Time};
    use differential_dataflow::input::Input;
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;
    use std::rc::Rc;
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::{Inspect, Probe};

    /// A record and its delay.
    type Delayed = (u64, u64);

    /// A delay made of an ordered operator that keeps each update for its new time and asks to
    /// be woken at the earliest: every update leaves at its own new time with its diff (same
    /// record and new time added up), none before both inputs have passed that time, and times
    /// with nothing but a wake (past the input's last time) are called too.
    #[test]
    fn woken_times_release_kept_updates_once_both_inputs_passed_them() {
        timely::execute_directly(|worker| {
            let seen: Rc<RefCell<BTreeMap<(u64, u64), isize>>> = Rc::default();
            let passed = Rc::new(Cell::new(0u64));
            let early = Rc::new(Cell::new(0usize));
            let (mut input, mut other, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, records) = scope.new_collection::<(u64, u64), isize>();
                let (other, nothing) = scope.new_collection::<(), isize>();
                let (seen, passed, early) = (seen.clone(), passed.clone(), early.clone());
                // New time -> the updates kept for it.
                let mut later: BTreeMap<Time, Vec<(Delayed, isize)>> = BTreeMap::new();
                let probe = ordered_binary(
                    records.inner,
                    nothing.inner,
                    Pipeline,
                    Pipeline,
                    "TestDelay",
                    move |at, out: &mut Vec<((u64, u64), Time, isize)>| {
                        assert!(at.wake.is_none_or(|w| w >= at.time), "a wake skipped");
                        for (update, diff) in at.left.drain(..) {
                            let to = at.time + update.1;
                            later.entry(to).or_default().push((update, diff));
                        }
                        let due = later.remove(&at.time).unwrap_or_default();
                        out.extend(due.into_iter().map(|(u, d)| (u, at.time, d)));
                        *at.wake = later.keys().next().copied();
                    },
                )
                .inspect(move |((record, _), time, diff)| {
                    if *time >= passed.get() {
                        early.set(early.get() + 1);
                    }
                    *seen.borrow_mut().entry((*record, *time)).or_default() += *diff;
                })
                .probe()
                .0;
                (input, other, probe)
            });
            let mut expected: BTreeMap<(u64, u64), isize> = BTreeMap::new();
            for t in 0..200u64 {
                input.advance_to(t);
                other.advance_to(t);
                passed.set(t);
                // Records with delays 0, 7 and 50; every third time, a retraction that cancels
                // the delay-7 record.
                for (record, delay, diff) in [(t % 5, 0, 1), (t % 3, 7, 2), (t % 4, 50, 1)] {
                    input.update((record, delay), diff);
                    *expected.entry((record, t + delay)).or_default() += diff;
                }
                if t % 3 == 0 {
                    input.update((t % 3, 7), -2);
                    *expected.entry((t % 3, t + 7)).or_default() -= 2;
                }
                // Many updates to few records that all move to the end of their 64-second
                // bucket, insertions and retractions interleaved.
                for i in 0..60u64 {
                    let record = 100 + (t + i) % 7;
                    let diff = if i % 3 == 2 { -1 } else { 1 };
                    input.update((record, 64 * (t / 64 + 1) - t), diff);
                    *expected.entry((record, 64 * (t / 64 + 1))).or_default() += diff;
                }
                // The other input, still at t - 1, holds time t - 1 back until it moves on too.
                input.flush();
                for _ in 0..5 {
                    worker.step();
                }
                assert!(seen.borrow().keys().all(|(_, time)| time + 1 < t));
                other.flush();
                worker.step_while(|| probe.less_than(input.time()));
            }
            input.close();
            other.close();
            passed.set(u64::MAX);
            while worker.step() {}
            expected.retain(|_, d| *d != 0);
            let mut seen = seen.borrow().clone();
            seen.retain(|_, d| *d != 0);
            assert!(seen.keys().any(|(_, time)| *time >= 200), "wake-only times");
            assert_eq!(seen, expected);
            assert_eq!(
                early.get(),
                0,
                "updates released before the inputs passed them"
            );
        });
    }

    /// After every append and sort, the pending queue holds what a stable sort by time of its
    /// updates in arrival order gives: for batches in time order, batches in order within but
    /// starting before the last one ended, and batches out of order within; with releases of
    /// a complete prefix in between.
    #[test]
    fn pending_updates_stay_in_stable_time_order() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut sorts = [0usize; 2];
        for kind in 0..3 {
            let mut pending: Pending<u32, i64> = Pending::default();
            let mut model: Vec<(u32, Time, i64)> = Vec::new();
            let mut time: Time = 100;
            for round in 0..200u32 {
                let mut batch: Vec<(u32, Time, i64)> = (0..rng.gen_range(0..12u32))
                    .map(|i| {
                        time += rng.gen_range(0..3);
                        let t = match kind {
                            2 => time - rng.gen_range(0..6),
                            _ => time,
                        };
                        (round * 100 + i, t, 1)
                    })
                    .collect();
                if kind == 1 && round % 4 == 0 {
                    // In order within, but starting before what is pending ends.
                    for update in &mut batch {
                        update.1 -= 8;
                    }
                }
                model.extend(batch.iter().cloned());
                model.sort_by_key(|(_, t, _)| *t);
                pending.append(&mut batch);
                assert!(batch.is_empty());
                sorts[usize::from(pending.sorted)] += 1;
                pending.sort();
                assert_eq!(pending.updates.iter().cloned().collect::<Vec<_>>(), model);
                let frontier = time - 4;
                let ready = pending.ready(|t| *t < frontier);
                assert_eq!(ready, model.partition_point(|(_, t, _)| *t < frontier));
                pending.updates.drain(..ready);
                model.drain(..ready);
                assert_eq!(pending.first_time(), model.first().map(|(_, t, _)| *t));
            }
        }
        // Both paths were taken: appends that kept the order and appends that broke it.
        assert!(sorts[0] > 0 && sorts[1] > 0, "{sorts:?}");
    }
}
