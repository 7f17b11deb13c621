//! The batch reference: a plain, deliberately naive implementation of DESIGN 4.1 over the whole
//! input, used only as the oracle the dataflow is tested against. It shares types with the engine
//! but none of its operator code: it re-evaluates every key at every time where anything can
//! change (an event, an event leaving its window, a bucket closing or expiring, a rule change).

pub mod decisions;
pub mod heuristics;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::dataflow::EngineInput;
use crate::model::{explain_threshold, Anomaly, Baseline, Evidence, Rule, ShapeId, Time};

struct Hit<'a> {
    time: Time,
    key: &'a str,
    user: &'a str,
    /// The id's text: the oracle does not lean on `EventId`'s order.
    id: String,
    session: Option<&'a str>,
}

/// The rules in force at `time`: the last timeline entry at or before it.
fn rules_at(timeline: &[(Time, Vec<Rule>)], time: Time) -> &[Rule] {
    timeline
        .iter()
        .rev()
        .find(|(from, _)| *from <= time)
        .map_or(&[], |(_, rules)| rules.as_slice())
}

/// Everything the engine outputs, computed the plain way.
pub fn evaluate(input: &EngineInput) -> crate::dataflow::EngineOutput {
    let mut anomalies = threshold_anomalies(input);
    anomalies.extend(heuristics::heuristic_anomalies(input));
    anomalies.sort();
    let decisions = decisions::decisions(input, &anomalies);
    crate::dataflow::EngineOutput {
        anomalies,
        decisions,
    }
}

type Hits<'a> = BTreeMap<(&'a str, ShapeId), Vec<Hit<'a>>>;

/// Every event matched against the rules in force at its processing time (allow-listed events
/// left out), by (enterprise, shape), with each shape's (window, history).
fn matched(input: &EngineInput) -> (Hits<'_>, HashMap<ShapeId, (u64, u64)>) {
    let mut hits: Hits<'_> = BTreeMap::new();
    let mut geometry: HashMap<ShapeId, (u64, u64)> = HashMap::new();
    let fallback = crate::model::decision::Policy::default();
    for (time, event) in &input.events {
        let policy = decisions::policy_at(&input.policies, &event.enterprise, *time, &fallback);
        if policy.allow.allows(event.ip.as_deref(), event.asn) {
            continue;
        }
        for rule in rules_at(&input.rules, *time) {
            if !rule.actions.contains(event.action.as_str()) {
                continue;
            }
            let Some(key) = rule.group_by.key(event) else {
                continue;
            };
            geometry.insert(rule.shape(), (rule.window, rule.history));
            hits.entry((event.enterprise.as_str(), rule.shape()))
                .or_default()
                .push(Hit {
                    time: *time,
                    key,
                    user: &event.user,
                    id: event.id.to_string(),
                    session: event.session.as_deref(),
                });
        }
    }
    (hits, geometry)
}

/// The live count and the latest counted hit of every key at `now`.
fn live_counts<'h, 'a>(
    hits: &'h [Hit<'a>],
    w: u64,
    now: Time,
) -> BTreeMap<&'a str, (u64, &'h Hit<'a>)> {
    let mut live: BTreeMap<&str, (u64, &Hit<'_>)> = BTreeMap::new();
    for hit in hits.iter().filter(|x| x.time <= now && x.time + w > now) {
        let entry = live.entry(hit.key).or_insert((0, hit));
        entry.0 += 1;
        if (hit.time, &hit.id) > (entry.1.time, &entry.1.id) {
            entry.1 = hit;
        }
    }
    live
}

/// The baseline at `now`: complete buckets that closed in (now - H, now].
fn baseline_at(hits: &[Hit<'_>], rule: &Rule, w: u64, h: u64, now: Time) -> Baseline {
    let mut buckets: BTreeMap<(&str, u64), u64> = BTreeMap::new();
    for hit in hits {
        let close = (hit.time / w + 1) * w;
        if close <= now && close + h > now {
            *buckets.entry((hit.key, hit.time / w)).or_default() += 1;
        }
    }
    let mut samples: Vec<u64> = buckets.into_values().collect();
    samples.sort_unstable();
    if samples.is_empty() {
        Baseline {
            samples: 0,
            quantile: None,
        }
    } else {
        let n = samples.len() as u64;
        let rank = rule.eval.rank(n);
        Baseline {
            samples: n,
            quantile: Some(samples[(rank - 1) as usize]),
        }
    }
}

/// The threshold state at `now`, the plain way: the window count of every (enterprise, shape,
/// key) with events in its window, and the baseline of every (enterprise, shape) of a rule in
/// force with at least one sample.
#[allow(clippy::type_complexity)]
pub fn threshold_state(
    input: &EngineInput,
    now: Time,
) -> (
    BTreeMap<(String, ShapeId, String), u64>,
    BTreeMap<(String, ShapeId), (Rule, Baseline)>,
) {
    let (hits, geometry) = matched(input);
    let (mut counts, mut baselines) = (BTreeMap::new(), BTreeMap::new());
    for ((enterprise, shape), hits) in &hits {
        let Some(rule) = rules_at(&input.rules, now)
            .iter()
            .find(|r| r.shape() == *shape)
        else {
            continue;
        };
        let (w, h) = geometry[shape];
        for (key, (count, _)) in live_counts(hits, w, now) {
            counts.insert((enterprise.to_string(), *shape, key.to_string()), count);
        }
        let baseline = baseline_at(hits, rule, w, h, now);
        if baseline.samples > 0 {
            baselines.insert((enterprise.to_string(), *shape), (rule.clone(), baseline));
        }
    }
    (counts, baselines)
}

/// All threshold anomalies up to `input.end`, sorted.
pub fn threshold_anomalies(input: &EngineInput) -> Vec<Anomaly> {
    let (hits, geometry) = matched(input);
    let mut anomalies = Vec::new();
    for ((enterprise, shape), hits) in &hits {
        let (w, h) = geometry[shape];
        let mut moments: BTreeSet<Time> = input.rules.iter().map(|(t, _)| *t).collect();
        for hit in hits {
            let close = (hit.time / w + 1) * w;
            moments.extend([hit.time, hit.time + w, close, close + h]);
        }
        let mut was_over: BTreeSet<&str> = BTreeSet::new();
        for &now in moments.range(..=input.end) {
            let Some(rule) = rules_at(&input.rules, now)
                .iter()
                .find(|r| r.shape() == *shape)
            else {
                was_over.clear();
                continue;
            };
            let live = live_counts(hits, w, now);
            let baseline = baseline_at(hits, rule, w, h, now);
            let threshold = rule.eval.threshold(&baseline);
            let mut over = BTreeSet::new();
            for (key, (count, latest)) in &live {
                if *count <= threshold {
                    continue;
                }
                over.insert(*key);
                if was_over.contains(key) {
                    continue;
                }
                anomalies.push(Anomaly {
                    id: Anomaly::make_id(enterprise, key, &rule.reason, now, latest.session),
                    enterprise: enterprise.to_string(),
                    user: key.to_string(),
                    reason: rule.reason.clone(),
                    detected_at: now,
                    session_id: latest.session.map(str::to_string),
                    observed: *count,
                    threshold,
                    baseline: baseline.clone(),
                    evidence: Evidence {
                        group_by: rule.group_by,
                        window_secs: w,
                        history_secs: h,
                        latest_event_id: latest.id.to_string(),
                        users: hits
                            .iter()
                            .filter(|x| x.key == *key && x.time <= now && x.time + w > now)
                            .map(|x| x.user.to_string())
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect(),
                        details: BTreeMap::new(),
                        explanation: explain_threshold(rule, *count, threshold, &baseline),
                    },
                });
            }
            was_over = over;
        }
    }
    anomalies.sort();
    anomalies
}
