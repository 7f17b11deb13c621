//! Threshold rules with per-enterprise dynamic thresholds (DESIGN 4.1) as differential dataflow:
//! events are matched against the rules collection as they are processed (those an allow-list
//! in force trusts are left out, DESIGN 4.3), kept in sliding windows and in baseline buckets
//! that enter at their close and leave after the history, the baseline quantile is a reduce over
//! (value, multiplicity) pairs, and episodes are the moments a key's membership in the "over
//! threshold" collection begins.

use differential_dataflow::difference::IsZero;
use differential_dataflow::{AsCollection, Hashable, VecCollection};
use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use super::ops::{hold_at, hold_earliest, ordered_binary, Contents, PolicyView};
use crate::model::decision::{Policy, PolicyScope};
use crate::model::{
    explain_threshold, Anomaly, ArcStr, Baseline, EventId, Evidence, Rule, ShapeId, SharedEvent,
    Time,
};

/// A counting key: (enterprise, rule shape, group key), with its hash worked out once.
///
/// Every counted record carries its key through four keyed steps on its key's worker (the
/// exchange that takes it there, `WindowCounts`' map and its two consolidations, `BucketCounts`'
/// map, `EpisodeStart`'s map) and each hashed or compared the key's texts again. The hash is
/// now made once, where the key is made ([`CKey::new`]): it is the key's exchange route
/// (`Hashable::hashed` of the (enterprise, shape, group) tuple, the same in every process, as
/// the route was before), maps hash only it, and comparisons look at it first, so two keys are
/// told apart without reading their texts. Equal keys have equal hashes, so equality is still
/// the texts'; the order is by hash first, then the texts: a fixed order, not the texts' own
/// (no result depends on the order in which a time's keys are visited).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CKey {
    hash: u64,
    enterprise: ArcStr,
    shape: ShapeId,
    group: ArcStr,
}

impl CKey {
    pub fn new(enterprise: ArcStr, shape: ShapeId, group: ArcStr) -> CKey {
        CKey {
            hash: (&enterprise, shape, &group).hashed(),
            enterprise,
            shape,
            group,
        }
    }

    /// The worker that owns the key: every keyed operator routes by this.
    pub fn route(&self) -> u64 {
        self.hash
    }

    /// The key's texts and shape, (enterprise, shape, group). The fields are private, so a key's
    /// parts cannot change under its hash.
    pub fn into_parts(self) -> (ArcStr, ShapeId, ArcStr) {
        (self.enterprise, self.shape, self.group)
    }
}

impl PartialEq for CKey {
    fn eq(&self, other: &CKey) -> bool {
        self.hash == other.hash
            && self.shape == other.shape
            && self.enterprise == other.enterprise
            && self.group == other.group
    }
}

impl Eq for CKey {}

impl std::hash::Hash for CKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl Ord for CKey {
    fn cmp(&self, other: &CKey) -> std::cmp::Ordering {
        (self.hash, self.shape, &self.enterprise, &self.group).cmp(&(
            other.hash,
            other.shape,
            &other.enterprise,
            &other.group,
        ))
    }
}

impl PartialOrd for CKey {
    fn partial_cmp(&self, other: &CKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A matched event as the windows and baselines keep it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Counted {
    /// The rule's window W and history H at match time (they belong to the shape).
    pub window: u64,
    pub history: u64,
    /// The time the event was processed at.
    pub time: Time,
    pub id: EventId,
    pub user: ArcStr,
    pub session: Option<ArcStr>,
}

/// What the episode detector remembers of a key's window: its latest counted event and the
/// last time each user was counted. Users whose last count has left the window are dropped
/// when the map has doubled since it was last pruned (and are never reported: an anomaly lists
/// only the users counted within its window).
struct Recent {
    latest: Counted,
    users: BTreeMap<ArcStr, Time>,
    /// `users`' size after its last pruning.
    pruned: usize,
}

/// A key over its threshold, with the numbers that put it there.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Over {
    pub observed: u64,
    pub threshold: u64,
    pub baseline: Baseline,
    pub rule: SharedRule,
}

/// What the threshold graph computes on the way, for the live API: the window count of every
/// key, and the baseline of every (enterprise, shape, rule in force).
pub struct ThresholdState<'s> {
    pub counts: VecCollection<'s, Time, (CKey, isize), isize>,
    pub baselines: VecCollection<'s, Time, (RuleKey, Baseline), isize>,
}

/// Builds the threshold detectors over `events` and `rules` (events an allow-list in force
/// among `policies` trusts are not counted); returns the stream of anomalies, each at its
/// `detected_at` time.
pub fn detect<'s>(
    events: VecCollection<'s, Time, SharedEvent, isize>,
    rules: VecCollection<'s, Time, Rule, isize>,
    policies: VecCollection<'s, Time, (PolicyScope, Policy), isize>,
) -> VecCollection<'s, Time, Anomaly, isize> {
    detect_with_state(events, rules, policies, false).0
}

/// [`detect`], also returning the live baselines, and the live window counts when `with_counts`
/// is set (otherwise that collection stays empty: a replay has no use for it).
pub fn detect_with_state<'s>(
    events: VecCollection<'s, Time, SharedEvent, isize>,
    rules: VecCollection<'s, Time, Rule, isize>,
    policies: VecCollection<'s, Time, (PolicyScope, Policy), isize>,
    with_counts: bool,
) -> (VecCollection<'s, Time, Anomaly, isize>, ThresholdState<'s>) {
    // Each counted record crosses to the worker that owns its key once; the three keyed
    // operators below (`WindowCounts`, `BucketCounts`, `EpisodeStart`) read it there.
    let matched = by_key(match_rules(events, rules.clone(), policies));

    // Rule parameters by shape: a rule is in force while its shape has an entry here.
    let params = rules
        .clone()
        .map(|rule| (rule.shape(), SharedRule::new(rule)))
        .arrange_by_key_named("RuleParams");

    // Live counts c(k, t): each counted event is present for [t, t + W). Counted, and kept only
    // where some rule of the key's shape could find them over its threshold (no threshold is
    // below min(floor, default)), in one operator that also expires them: see [`window_counts`].
    let (counts, high) = window_counts(matched.clone(), rules, with_counts);

    // Baseline buckets: the count of key k in bucket [bW, (b+1)W) is present for
    // [(b+1)W, (b+1)W + H): see [`bucket_counts`].
    let bucket_counts = bucket_counts(matched.clone());

    // Per (enterprise, shape, rule in force): the samples' size and nearest-rank quantile.
    let baselines = bucket_counts
        .map(|((key, _), n)| (key.shape, (key.enterprise, n as u64)))
        .arrange_by_key_named("SamplesByShape")
        .join_core(params.clone(), |shape, (enterprise, n), rule| {
            Some(((enterprise.clone(), *shape, rule.clone()), *n))
        })
        .reduce_named("BaselineQuantile", |key, samples, out| {
            let (_, _, rule) = key;
            let total: isize = samples.iter().map(|(_, m)| *m).sum();
            let total = total.max(0) as u64;
            let rank = rule.eval.rank(total);
            let mut seen = 0u64;
            let mut quantile = None;
            for (value, m) in samples {
                seen += (*m).max(0) as u64;
                if seen >= rank {
                    quantile = Some(**value);
                    break;
                }
            }
            out.push((
                Baseline {
                    samples: total,
                    quantile,
                },
                1isize,
            ));
        });

    let baselines_out = baselines.clone();
    let high_arranged = high.clone().arrange_by_key_named("HighCounts");
    let baselines_arranged = baselines.clone().arrange_by_key_named("Baselines");
    let over_dynamic =
        high_arranged
            .clone()
            .join_core(baselines_arranged, |(_, _, rule), (key, c), baseline| {
                let threshold = rule.eval.threshold(baseline);
                (*c > threshold).then(|| {
                    (
                        key.clone(),
                        Over {
                            observed: *c,
                            threshold,
                            baseline: baseline.clone(),
                            rule: rule.clone(),
                        },
                    )
                })
            });
    // Keys whose (enterprise, rule) has no baseline samples at all use the default threshold.
    let with_baseline = high_arranged.join_core(
        baselines
            .map(|(key, _)| key)
            .arrange_by_self_named("BaselineKeys"),
        |key, value, ()| Some((key.clone(), value.clone())),
    );
    let over_default = high
        .concat(with_baseline.negate())
        .flat_map(|((_, _, rule), (key, c))| {
            let threshold = rule.eval.default_threshold;
            (c > threshold).then_some((
                key,
                Over {
                    observed: c,
                    threshold,
                    baseline: Baseline {
                        samples: 0,
                        quantile: None,
                    },
                    rule,
                },
            ))
        });
    let over = over_dynamic.concat(over_default);

    let state = ThresholdState {
        counts,
        baselines: baselines_out,
    };
    (episodes(over, matched).as_collection(), state)
}

/// A key's rule-independent part and a rule in force for its shape: what `high` counts are keyed by.
pub type RuleKey = (ArcStr, ShapeId, SharedRule);

/// A rule as the threshold graph's records hold it: allocated when the rules change (where the
/// rule parameters are keyed by shape, and in `WindowCounts`' rules by shape), so that the many
/// records that name a rule (every "high" count change, every baseline sample, every "over"
/// record) copy a pointer, not its name and action set. Equality, order and hashing are the
/// rule's own. (Between processes of a cluster a record's rule is serialized whole, as before.)
pub type SharedRule = std::sync::Arc<Rule>;

/// A "high" count: ((enterprise, shape, rule), (key, count)); the value holds the whole key
/// (with its hash) for the "over" records the joins below make of it.
type HighCount = (RuleKey, (CKey, u64));

/// What [`window_counts`] emits: a key's window count, and a count that may be over a threshold.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum WindowOut {
    Count(CKey, isize),
    High(RuleKey, (CKey, u64)),
}

/// The live window counts, and the "high" counts: for each rule in force of the key's shape,
/// ((enterprise, shape, rule), (key, count)) while the count is over the rule's lowest possible
/// threshold. The same collections as `arrange_by_self` + `count_total` on the window updates,
/// then a `join_core` of the counts arranged by shape with the rules arranged by shape and a
/// filter, computed in one ordered operator. That pipeline kept two arrangements of every count
/// change (four updates per counted event) only to drop all but a few at the filter: a quarter of
/// a replay's engine time. Here a map holds each key's count while it is not zero.
///
/// Each counted record (key, W) at t enters the count at t and leaves it at t + W. The operator
/// keeps the leaving updates itself, one queue per window length (times are processed in order,
/// so each queue is in time order too), a time's records consolidated first so that a queue
/// holds one entry per key and second, and asks to be woken at the earliest. That was a delay
/// operator's job in front of this one, and every counted record crossed the exchange twice,
/// once entering and once leaving.
///
/// The counts are exact per time: a time's updates (those entering and those leaving) are
/// applied together, once both inputs have passed it, in time order (see [`ordered_binary`]).
/// When the rules change at a time, every key's high records under the old rules are retracted
/// and those under the new rules inserted; a time's output is consolidated, so what did not
/// change cancels. Rules are a set (`replace` keeps each
/// once), so each rule joins with multiplicity one, as the join did.
#[allow(clippy::type_complexity)]
fn window_counts<'s>(
    entering: VecCollection<'s, Time, (CKey, Counted), isize>,
    rules: VecCollection<'s, Time, Rule, isize>,
    with_counts: bool,
) -> (
    VecCollection<'s, Time, (CKey, isize), isize>,
    VecCollection<'s, Time, HighCount, isize>,
) {
    type ByShape = HashMap<ShapeId, Vec<SharedRule>>;
    fn by_shape(rules: &Contents<Rule>) -> ByShape {
        let mut map = ByShape::new();
        for rule in rules.present() {
            map.entry(rule.shape())
                .or_default()
                .push(SharedRule::new(rule.clone()));
        }
        map
    }
    // The high records of `key` at `count` under `rules`, with difference `diff`.
    fn high(
        out: &mut Vec<(HighCount, isize)>,
        rules: &ByShape,
        key: &CKey,
        count: isize,
        diff: isize,
    ) {
        if count == 0 {
            return;
        }
        // As the join read count_total's output: the count as u64.
        let c = count as u64;
        for rule in rules.get(&key.shape).into_iter().flatten() {
            if c > rule.eval.lowest_threshold() {
                out.push((
                    (
                        (key.enterprise.clone(), key.shape, rule.clone()),
                        (key.clone(), c),
                    ),
                    diff,
                ));
            }
        }
    }
    let mut in_force: Contents<Rule> = Contents::default();
    let mut rules_now = ByShape::new();
    let mut counts: HashMap<CKey, isize> = HashMap::new();
    let mut highs: Vec<(HighCount, isize)> = Vec::new();
    // Per window length, the leaving updates in time order: (time, key, diff).
    let mut leaving: Vec<(u64, VecDeque<(Time, CKey, isize)>)> = Vec::new();
    let mut deltas: Vec<(CKey, isize)> = Vec::new();
    // A time's entering records as (key, window), consolidated.
    let mut windows: Vec<((CKey, u64), isize)> = Vec::new();
    let out = ordered_binary(
        entering.inner,
        rules.inner.broadcast(),
        // Already routed by key ([`by_key`]).
        Pipeline,
        Pipeline,
        "WindowCounts",
        move |at, out| {
            let time = at.time;
            if in_force.apply(at.right.drain(..)) {
                let new = by_shape(&in_force);
                // Every key's high records move from the old rules to the new ones.
                for (key, count) in &counts {
                    high(&mut highs, &rules_now, key, *count, -1);
                    high(&mut highs, &new, key, *count, 1);
                }
                rules_now = new;
            }
            windows.extend(
                at.left
                    .drain(..)
                    .map(|((key, counted), diff)| ((key, counted.window), diff)),
            );
            differential_dataflow::consolidation::consolidate(&mut windows);
            for ((key, window), diff) in windows.drain(..) {
                // A record with no window is present at no time: it enters and leaves at once.
                if window == 0 {
                    continue;
                }
                let queue = match leaving.iter().position(|(w, _)| *w == window) {
                    Some(i) => &mut leaving[i].1,
                    None => {
                        leaving.push((window, VecDeque::new()));
                        &mut leaving.last_mut().expect("pushed").1
                    }
                };
                queue.push_back((time + window, key.clone(), -diff));
                deltas.push((key, diff));
            }
            for (_, queue) in &mut leaving {
                while let Some((_, key, diff)) = queue.pop_front_if(|(t, _, _)| *t == time) {
                    deltas.push((key, diff));
                }
            }
            *at.wake = leaving
                .iter()
                .filter_map(|(_, q)| q.front())
                .map(|f| f.0)
                .min();
            differential_dataflow::consolidation::consolidate(&mut deltas);
            for (key, delta) in deltas.drain(..) {
                let old = counts.get(&key).copied().unwrap_or(0);
                let new = old + delta;
                high(&mut highs, &rules_now, &key, old, -1);
                high(&mut highs, &rules_now, &key, new, 1);
                if with_counts {
                    if old != 0 {
                        out.push((WindowOut::Count(key.clone(), old), time, -1));
                    }
                    if new != 0 {
                        out.push((WindowOut::Count(key.clone(), new), time, 1));
                    }
                }
                if new == 0 {
                    counts.remove(&key);
                } else {
                    counts.insert(key, new);
                }
            }
            differential_dataflow::consolidation::consolidate(&mut highs);
            out.extend(
                highs
                    .drain(..)
                    .map(|((k, v), diff)| (WindowOut::High(k, v), time, diff)),
            );
        },
    )
    .as_collection();
    let counts = out.clone().flat_map(|o| match o {
        WindowOut::Count(key, count) => Some((key, count)),
        WindowOut::High(..) => None,
    });
    let high = out.flat_map(|o| match o {
        WindowOut::High(key, value) => Some((key, value)),
        WindowOut::Count(..) => None,
    });
    (counts, high)
}

/// The baseline buckets' counts: ((key, bucket b), n) present from the bucket's close (b+1)W for
/// the history H, where n is the number of the key's counted events in [bW, (b+1)W) (W and H are
/// the key's shape's). The same collection as delaying each counted (key, b) to the bucket's
/// close, retracting it H later, and `count_total` over the arranged result, in one operator
/// on the key's worker (its input routed by [`by_key`]): a map per open bucket's close counts
/// the events, and when the input has passed the close, each count is emitted and its
/// retraction kept until H later. The counted
/// events are never held, only the counts. Before, a delay held every counted event until its
/// bucket closed, consolidating them by sorting, and the closed counts went through a second
/// delay, an arrangement and `count_total`: cutting that path off took about a fifth off a
/// replay's engine time. Counts leave in a fixed order, whatever the map's.
fn bucket_counts<'s>(
    matched: VecCollection<'s, Time, (CKey, Counted), isize>,
) -> VecCollection<'s, Time, ((CKey, u64), isize), isize> {
    type Bucket = (CKey, u64);
    matched
        .inner
        // Already routed by key ([`by_key`]).
        .unary_frontier(Pipeline, "BucketCounts", |_, _| {
            // Close time -> (key, bucket) -> (count so far, the key's history).
            let mut open: BTreeMap<Time, HashMap<Bucket, (isize, u64)>> = BTreeMap::new();
            // Expiry time -> the counts emitted at the buckets' close, to retract then.
            let mut closed: BTreeMap<Time, Vec<(Bucket, isize)>> = BTreeMap::new();
            let mut held: Option<Capability<Time>> = None;
            let mut ready: Vec<((Bucket, isize), Time, isize)> = Vec::new();
            move |(input, frontier), output| {
                let index = output.output_index();
                input.for_each_stamp(|cap, data| {
                    let mut earliest: Option<Time> = None;
                    for batch in data {
                        for ((key, counted), _, diff) in batch.drain(..) {
                            let bucket = counted.time / counted.window;
                            let close = (bucket + 1) * counted.window;
                            earliest = Some(earliest.map_or(close, |e| e.min(close)));
                            let (count, _) = open
                                .entry(close)
                                .or_default()
                                .entry((key, bucket))
                                .or_insert((0, counted.history));
                            *count += diff;
                        }
                    }
                    hold_earliest(&mut held, &cap, earliest, index);
                });
                // Buckets whose close the input has reached are complete.
                while let Some(entry) = open.first_entry() {
                    let close = *entry.key();
                    if frontier.less_than(&close) {
                        break;
                    }
                    let mut counts: Vec<(Bucket, (isize, u64))> =
                        entry.remove().into_iter().collect();
                    counts.sort_unstable();
                    for (bucket, (count, history)) in counts {
                        if count != 0 {
                            ready.push(((bucket.clone(), count), close, 1));
                            closed
                                .entry(close + history)
                                .or_default()
                                .push((bucket, count));
                        }
                    }
                }
                while let Some(entry) = closed.first_entry() {
                    let expiry = *entry.key();
                    if frontier.less_than(&expiry) {
                        break;
                    }
                    ready.extend(entry.remove().into_iter().map(|c| (c, expiry, -1)));
                }
                if let Some(cap) = held.as_ref() {
                    if !ready.is_empty() {
                        output.session(cap).give_container(&mut ready);
                        ready.clear();
                    }
                }
                let next = match (open.keys().next(), closed.keys().next()) {
                    (Some(a), Some(b)) => Some(*a.min(b)),
                    (a, b) => a.or(b).copied(),
                };
                hold_at(&mut held, next.as_ref());
                debug_assert!(
                    ready.is_empty(),
                    "BucketCounts: output without a capability"
                );
            }
        })
        .as_collection()
}

/// The counted records, each moved to the worker that owns its key: one exchange for the three
/// keyed operators that read them, where each had routed them itself (three hashes of the key
/// and three crossings per record). A container is handed on whole, not record by record.
fn by_key<'s>(
    matched: VecCollection<'s, Time, (CKey, Counted), isize>,
) -> VecCollection<'s, Time, (CKey, Counted), isize> {
    let route = |((key, _), _, _): &((CKey, Counted), Time, isize)| key.route();
    matched
        .inner
        .unary(Exchange::new(route), "CountedByKey", |_, _| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let mut session = output.session(&cap);
                    for batch in data {
                        session.give_container(batch);
                    }
                });
            }
        })
        .as_collection()
}

/// What rule matching reads broadcast: the rules, and the policies, whose allow-lists keep the
/// events they trust out of every count.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum MatchSetting {
    Rule(Rule),
    Policy(PolicyScope, Policy),
}

/// Matches each event against the rules in force at its time (an as-of join), leaving out the
/// events an allow-list in force at that time trusts: the rules and the policies are broadcast,
/// and a time's events are matched once both inputs have passed it, after that time's rule and
/// policy changes. The verdict is asked here and in the per-user stage, where it is used, rather
/// than once in an operator of its own in front of both: that was one more ordered pass over
/// every event (README, "The screen round").
fn match_rules<'s>(
    events: VecCollection<'s, Time, SharedEvent, isize>,
    rules: VecCollection<'s, Time, Rule, isize>,
    policies: VecCollection<'s, Time, (PolicyScope, Policy), isize>,
) -> VecCollection<'s, Time, (CKey, Counted), isize> {
    let settings = rules
        .map(MatchSetting::Rule)
        .concat(policies.map(|(scope, policy)| MatchSetting::Policy(scope, policy)));
    let mut in_force: Contents<Rule> = Contents::default();
    let mut policies_now = PolicyView::default();
    let mut by_action: HashMap<String, Vec<(Rule, ShapeId)>> = HashMap::new();
    ordered_binary(
        events.inner,
        settings.inner.broadcast(),
        Pipeline,
        Pipeline,
        "MatchRules",
        move |at, out| {
            let mut rule_changes = Vec::new();
            let mut policy_changes = Vec::new();
            for (setting, diff) in at.right.drain(..) {
                match setting {
                    MatchSetting::Rule(rule) => rule_changes.push((rule, diff)),
                    MatchSetting::Policy(scope, p) => policy_changes.push(((scope, p), diff)),
                }
            }
            policies_now.apply(policy_changes);
            if in_force.apply(rule_changes) {
                by_action.clear();
                for rule in in_force.present() {
                    for action in &rule.actions {
                        by_action
                            .entry(action.clone())
                            .or_default()
                            .push((rule.clone(), rule.shape()));
                    }
                }
            }
            for (event, diff) in at.left.drain(..) {
                let Some(rules) = by_action.get(event.action.as_str()) else {
                    continue;
                };
                // Events an allow-list trusts enter no count (asked only of events a rule
                // matches).
                if policies_now.trusts(&event) {
                    continue;
                }
                for (rule, shape) in rules {
                    if let Some(group) = rule.group_by.key(&event) {
                        let key = CKey::new(event.enterprise.clone(), *shape, group.clone());
                        let counted = Counted {
                            window: rule.window,
                            history: rule.history,
                            time: at.time,
                            id: event.id.clone(),
                            user: event.user.clone(),
                            session: event.session.clone(),
                        };
                        out.push(((key, counted), at.time, diff));
                    }
                }
            }
        },
    )
    .as_collection()
}

/// Emits one anomaly per episode: at each time a key enters the "over" collection. Keeps, per key,
/// the latest counted event (for the anomaly's session) and the users counted in the window.
///
/// A key whose latest counted event has left its window is forgotten; that happens in a sweep
/// of all keys, when the map has doubled since the last sweep or the longest window seen has
/// passed since it, not by an expiry per counted event: each expiry was a second lookup of a key
/// that is rarely in the cache, and this operator's time was mostly such lookups. So a key is
/// dropped at most one longest window after its own has passed, and memory follows recent
/// activity. A key over its threshold has a counted event in its window, so its latest event is
/// the same whether or not older keys have been swept yet.
fn episodes<'s>(
    over: VecCollection<'s, Time, (CKey, Over), isize>,
    matched: VecCollection<'s, Time, (CKey, Counted), isize>,
) -> Stream<'s, Time, Vec<(Anomaly, Time, isize)>> {
    let mut present: HashMap<CKey, HashMap<Over, isize>> = HashMap::new();
    let mut recent: HashMap<CKey, Recent> = HashMap::new();
    // `recent`'s size after its last sweep, the time of the next sweep by the clock, and the
    // longest window seen (the interval between those sweeps).
    let mut swept = 0usize;
    let mut sweep_at: Time = 0;
    let mut longest: u64 = 0;
    ordered_binary(
        over.inner,
        matched.inner,
        Exchange::new(|(d, _, _): &((CKey, Over), Time, isize)| d.0.route()),
        // Already routed by key ([`by_key`]).
        Pipeline,
        "EpisodeStart",
        move |at, out| {
            for ((key, counted), diff) in at.right.drain(..) {
                if diff <= 0 {
                    continue;
                }
                longest = longest.max(counted.window);
                match recent.get_mut(&key) {
                    Some(r) => {
                        r.users.insert(counted.user.clone(), counted.time);
                        if r.users.len() > 2 * r.pruned.max(2) {
                            let window = counted.window;
                            r.users.retain(|_, t| *t + window > at.time);
                            r.pruned = r.users.len();
                        }
                        if (r.latest.time, &r.latest.id) < (counted.time, &counted.id) {
                            r.latest = counted;
                        }
                    }
                    None => {
                        let users = [(counted.user.clone(), counted.time)].into();
                        recent.insert(
                            key,
                            Recent {
                                latest: counted,
                                users,
                                pruned: 0,
                            },
                        );
                    }
                }
            }
            if recent.len() > 2 * swept.max(16) || at.time >= sweep_at {
                recent.retain(|_, r| r.latest.time + r.latest.window > at.time);
                swept = recent.len();
                sweep_at = at.time.saturating_add(longest.max(1));
            }
            let mut changed: BTreeMap<CKey, bool> = BTreeMap::new();
            for ((key, over), diff) in at.left.drain(..) {
                changed
                    .entry(key.clone())
                    .or_insert_with(|| present.get(&key).is_some_and(|m| !m.is_empty()));
                // The record itself is the map's key: no copy of it (a rule's texts) per update.
                match present.entry(key).or_default().entry(over) {
                    Entry::Occupied(mut count) => {
                        *count.get_mut() += diff;
                        if count.get().is_zero() {
                            count.remove();
                        }
                    }
                    Entry::Vacant(slot) => {
                        if !diff.is_zero() {
                            slot.insert(diff);
                        }
                    }
                }
            }
            for (key, was_over) in changed {
                let details = present.get(&key);
                // The least of the present records, so that the choice never rests on the
                // map's order (rule reasons are unique, so there is one rule per shape and
                // at most one record here).
                let now = details.and_then(|m| {
                    m.iter()
                        .filter(|(_, c)| **c > 0)
                        .map(|(over, _)| over)
                        .min()
                });
                match now {
                    Some(over) if !was_over => {
                        out.push((anomaly(&key, over, at.time, recent.get(&key)), at.time, 1));
                    }
                    None => {
                        present.remove(&key);
                    }
                    _ => {}
                }
            }
        },
    )
}

fn anomaly(key: &CKey, over: &Over, time: Time, recent: Option<&Recent>) -> Anomaly {
    let CKey {
        enterprise, group, ..
    } = key;
    if recent.is_none() {
        tracing::error!(
            enterprise = enterprise.as_str(),
            key = group.as_str(),
            "over threshold with no counted event"
        );
    }
    let latest = recent.map(|r| &r.latest);
    let session = latest.and_then(|l| l.session.clone());
    let window = over.rule.window;
    let users = recent.map_or_else(Vec::new, |r| {
        r.users
            .iter()
            .filter(|(_, t)| **t + window > time)
            .map(|(u, _)| u.to_string())
            .collect()
    });
    Anomaly {
        id: Anomaly::make_id(
            enterprise,
            group,
            &over.rule.reason,
            time,
            session.as_deref(),
        ),
        enterprise: enterprise.to_string(),
        user: group.to_string(),
        reason: over.rule.reason.clone(),
        detected_at: time,
        session_id: session.map(|s| s.to_string()),
        observed: over.observed,
        threshold: over.threshold,
        baseline: over.baseline.clone(),
        evidence: Evidence {
            group_by: over.rule.group_by,
            window_secs: over.rule.window,
            history_secs: over.rule.history,
            latest_event_id: latest.map(|l| l.id.to_string()).unwrap_or_default(),
            users,
            details: BTreeMap::new(),
            explanation: explain_threshold(
                &over.rule,
                over.observed,
                over.threshold,
                &over.baseline,
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    fn key(enterprise: &str, shape: u64, group: &str) -> CKey {
        // Each text a fresh allocation: equal keys made apart share no pointers.
        CKey::new(
            ArcStr::from(enterprise.to_string()),
            ShapeId(shape),
            ArcStr::from(group.to_string()),
        )
    }

    /// A key made twice from equal texts is one key (equal, same order, same hash and route),
    /// and its route is the (enterprise, shape, group) tuple's `hashed()`: the exchange route
    /// it had as a tuple, which every process computes alike.
    #[test]
    fn equal_texts_make_one_key_routed_as_the_tuple_was() {
        let (a, b) = (key("E1", 7, "U1"), key("E1", 7, "U1"));
        assert!(!ArcStr::ptr_eq(&a.group, &b.group));
        assert_eq!(a, b);
        assert_eq!(a.cmp(&b), Ordering::Equal);
        assert_eq!(a.route(), b.route());
        let tuple = (ArcStr::from("E1"), ShapeId(7), ArcStr::from("U1"));
        assert_eq!(a.route(), tuple.hashed());
        let mut map: HashMap<CKey, u32> = HashMap::new();
        map.insert(a, 1);
        assert_eq!(map.get(&b), Some(&1));
    }

    /// Keys that differ in any part are different keys, ordered one way round.
    #[test]
    fn keys_differing_in_any_part_differ() {
        let a = key("E1", 7, "U1");
        for other in [key("E2", 7, "U1"), key("E1", 8, "U1"), key("E1", 7, "U2")] {
            assert_ne!(a, other);
            assert_ne!(a.cmp(&other), Ordering::Equal);
            assert_eq!(a.cmp(&other), other.cmp(&a).reverse());
        }
        let mut keys = vec![key("E1", 7, "U2"), key("E1", 7, "U1"), key("E1", 7, "U2")];
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 2);
    }

    /// Two keys whose hashes collide stay two keys: equality and order read the texts after the
    /// hash, so a collision costs a comparison, never a merged count.
    #[test]
    fn colliding_hashes_do_not_merge_keys() {
        let collide = |group: &str| CKey {
            hash: 42,
            ..key("E1", 7, group)
        };
        let (a, b) = (collide("U1"), collide("U2"));
        assert_ne!(a, b);
        assert_eq!(a.cmp(&b), Ordering::Less);
        let mut map: HashMap<CKey, u32> = HashMap::new();
        map.insert(a.clone(), 1);
        map.insert(b, 2);
        assert_eq!(map.len(), 2);
        assert_eq!(map.get(&a), Some(&1));
    }
}
