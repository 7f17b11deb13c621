//! The records aer passes between its stages: ingested audit events, the threshold rules they are
//! matched against, and the anomalies the detectors emit. Plain data with serde, no behaviour beyond
//! small constructors and the deterministic ids that DESIGN.md fixes.

pub use arcstr::ArcStr;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub mod client;
pub mod event_id;

pub use event_id::EventId;
pub mod decision;

/// Event time and dataflow time: whole unix seconds.
pub type Time = u64;

/// One accepted Slack audit-log entry, reduced to the fields detection uses.
///
/// The id is an [`EventId`] (a UUID held as its bits, other text shared). The other text fields
/// are [`ArcStr`]s: one pointer each, shared between events when the decoder interned them
/// ([`crate::io::codec`] does: the same user, enterprise, action, session, address or user
/// agent is one allocation however many events carry it, and most are made static, so cloning
/// touches no count). Equality, order and hashing are those of the text, so nothing depends on
/// what was shared or how an id is held.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    /// The entry's `id`, or `h-<hash of the line>` when the entry had none.
    pub id: EventId,
    /// `date_create` in unix seconds.
    pub time: Time,
    pub action: ArcStr,
    /// `context.location.id`.
    pub enterprise: ArcStr,
    /// `actor.user.id`.
    pub user: ArcStr,
    /// `context.session_id`, as a string whatever its JSON type.
    pub session: Option<ArcStr>,
    /// `context.ip_address`.
    pub ip: Option<ArcStr>,
    /// `context.ua`.
    pub ua: Option<ArcStr>,
    /// The AS number of `ip`, when an ASN table is loaded and holds it (set at ingest).
    /// Always serialized: events cross timely processes as bincode, which cannot skip fields.
    #[serde(default)]
    pub asn: Option<u32>,
}

#[cfg(test)]
impl Event {
    /// Event `id` at `time`, with nothing but its id and time set apart (the unit tests').
    pub(crate) fn bare(id: &str, time: Time) -> Event {
        Event {
            id: id.into(),
            time,
            action: "a".into(),
            enterprise: "E".into(),
            user: "U".into(),
            session: None,
            ip: None,
            ua: None,
            asn: None,
        }
    }
}

/// An event as it travels the dataflow: shared, so that handing it to several operators (and
/// dropping those copies) touches one reference count instead of one per text field. The text
/// fields are interned and shared by many events, so their counts are hot across workers.
/// Serialized as the event itself (serde's `rc` feature): a copy per process, never a pointer.
pub type SharedEvent = std::sync::Arc<Event>;

/// An event as the engines see it: the time it is processed at (its `date_create`, or the
/// watermark when it arrived late, DESIGN 3) and the event.
pub type Sequenced = (Time, Event);

/// Sequenced events in processing order, held in chunks: iterating it by value frees each chunk
/// once passed (a replay's engine does, which keeps its input from being held twice).
///
/// The events can be held dealt into parts, event i in part i mod k ([`EventChunks::dealt`]),
/// as the engine's workers take them (round robin): a replay sequences its input straight into
/// its workers' shares, and the engine takes each part as it is instead of copying every event
/// into a share of its own. Iteration interleaves the parts back into processing order, so the
/// dealing shows nowhere else.
#[derive(Clone, Debug)]
pub struct EventChunks {
    /// The parts, each in chunks: always at least one.
    parts: Vec<Vec<Vec<Sequenced>>>,
    len: usize,
}

/// Items taken from each iterator in turn, `left` in all: event i of an [`EventChunks`] is
/// item i / k of part i mod k.
#[derive(Clone, Debug)]
pub struct RoundRobin<I> {
    iters: Vec<I>,
    next: usize,
    left: usize,
}

impl<I: Iterator> Iterator for RoundRobin<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        if self.left == 0 {
            return None;
        }
        let item = self.iters[self.next].next();
        // No division per item: the whole sequence's walks (the engine's input check among
        // them) go through here.
        self.next += 1;
        if self.next == self.iters.len() {
            self.next = 0;
        }
        self.left -= 1;
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl EventChunks {
    /// Events per chunk: 320 KiB, about the size of a decoded block's events (a 4 MiB block of
    /// lines). Chunks are filled while the sorted blocks are freed, and the allocator reuses the
    /// freed blocks for chunks of that size; 5 MiB chunks (65,536 events) took new memory
    /// instead, which raised a replay's peak RSS by about 20 MiB.
    pub const CHUNK: usize = 4_096;

    /// An empty sequence that deals the events it is given into `k` parts (at least one).
    pub fn dealt(k: usize) -> Self {
        EventChunks {
            parts: vec![Vec::new(); k.max(1)],
            len: 0,
        }
    }

    /// The sequence whose event i is item i / k of `parts[i mod k]`, each part in chunks (no
    /// parts at all is one empty part). The parts' lengths must be those of a dealing: none
    /// shorter than a later one, none longer by more than one.
    pub fn from_parts(mut parts: Vec<Vec<Vec<Sequenced>>>) -> Self {
        if parts.is_empty() {
            parts.push(Vec::new());
        }
        let lens: Vec<usize> = parts.iter().map(|p| p.iter().map(Vec::len).sum()).collect();
        let len = lens.iter().sum();
        let k = lens.len();
        assert!(
            lens.iter()
                .enumerate()
                .all(|(w, n)| *n == (len + k - 1 - w) / k),
            "parts of {lens:?} are not a dealing"
        );
        EventChunks { parts, len }
    }

    /// How many parts the events are dealt into.
    pub fn deal(&self) -> usize {
        self.parts.len()
    }

    /// The parts, each as a sequence of its own (in part order).
    pub fn into_parts(self) -> Vec<EventChunks> {
        self.parts
            .into_iter()
            .map(|chunks| {
                let len = chunks.iter().map(Vec::len).sum();
                EventChunks {
                    parts: vec![chunks],
                    len,
                }
            })
            .collect()
    }

    pub fn push(&mut self, event: Sequenced) {
        let k = self.parts.len();
        let part = &mut self.parts[self.len % k];
        if part.last().is_none_or(|c| c.len() >= Self::CHUNK) {
            part.push(Vec::with_capacity(Self::CHUNK));
        }
        part.last_mut().expect("a chunk").push(event);
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &Sequenced> + Clone {
        self.into_iter()
    }

    pub fn first(&self) -> Option<&Sequenced> {
        self.parts.first()?.iter().flatten().next()
    }

    pub fn last(&self) -> Option<&Sequenced> {
        let last = self.len.checked_sub(1)?;
        self.parts[last % self.deal()].iter().flatten().next_back()
    }
}

/// Empty, in one part.
impl Default for EventChunks {
    fn default() -> Self {
        EventChunks::dealt(1)
    }
}

/// Equal when they hold the same events in the same order, however dealt.
impl PartialEq for EventChunks {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for EventChunks {}

impl From<Vec<Sequenced>> for EventChunks {
    fn from(events: Vec<Sequenced>) -> Self {
        events.into_iter().collect()
    }
}

impl FromIterator<Sequenced> for EventChunks {
    fn from_iter<I: IntoIterator<Item = Sequenced>>(iter: I) -> Self {
        let mut chunks = EventChunks::default();
        for event in iter {
            chunks.push(event);
        }
        chunks
    }
}

impl IntoIterator for EventChunks {
    type Item = Sequenced;
    type IntoIter = RoundRobin<std::iter::Flatten<std::vec::IntoIter<Vec<Sequenced>>>>;
    fn into_iter(self) -> Self::IntoIter {
        let left = self.len;
        let iters = self
            .parts
            .into_iter()
            .map(|p| p.into_iter().flatten())
            .collect();
        RoundRobin {
            iters,
            next: 0,
            left,
        }
    }
}

impl<'a> IntoIterator for &'a EventChunks {
    type Item = &'a Sequenced;
    type IntoIter = RoundRobin<std::iter::Flatten<std::slice::Iter<'a, Vec<Sequenced>>>>;
    fn into_iter(self) -> Self::IntoIter {
        RoundRobin {
            iters: self.parts.iter().map(|p| p.iter().flatten()).collect(),
            next: 0,
            left: self.len,
        }
    }
}

/// What a threshold rule counts per: the acting user (default), the source IP or the session.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    #[default]
    User,
    Ip,
    Session,
}

impl GroupBy {
    /// The counting key of `event` under this grouping; `None` when the event lacks the field
    /// (such an event is not counted by the rule).
    pub fn key<'a>(&self, event: &'a Event) -> Option<&'a ArcStr> {
        match self {
            GroupBy::User => Some(&event.user),
            GroupBy::Ip => event.ip.as_ref(),
            GroupBy::Session => event.session.as_ref(),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            GroupBy::User => "user",
            GroupBy::Ip => "ip",
            GroupBy::Session => "session",
        }
    }
}

/// The evaluation parameters of a threshold rule, integer-exact (DESIGN 4.1).
///
/// These apply at evaluation time: changing them re-evaluates the retained windows and
/// baselines from the moment of the change.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Eval {
    /// Quantile q in parts per million (0.99 is 990_000).
    pub quantile_ppm: u32,
    /// Multiplier m in thousandths (3.0 is 3_000).
    pub multiplier_milli: u64,
    /// Floor f: the threshold is never below it once the baseline has enough samples.
    pub floor: u64,
    /// Minimum number of baseline samples s before the dynamic threshold applies.
    pub min_samples: u64,
    /// Threshold d used while the baseline has fewer than `min_samples` samples.
    pub default_threshold: u64,
}

/// Baseline statistics of one (enterprise, rule) at one time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Baseline {
    /// |B|: user-buckets with at least one counted event in the history.
    pub samples: u64,
    /// Q_q(B), the nearest-rank quantile; absent when B is empty.
    pub quantile: Option<u64>,
}

impl Eval {
    /// The nearest-rank quantile of a multiset given as ascending `(value, multiplicity)` pairs:
    /// element ceil(q * n) (1-based, at least 1) of the sorted samples.
    pub fn rank(&self, n: u64) -> u64 {
        let scaled = u128::from(self.quantile_ppm) * u128::from(n);
        let rank = scaled.div_ceil(1_000_000) as u64;
        rank.max(1)
    }

    /// The threshold θ for a baseline: max(f, floor(m x Q)) with enough samples, else d.
    ///
    /// A count c is above θ exactly when c > m x Q and c > f, because for integer c,
    /// c > x if and only if c > floor(x): the integer threshold loses nothing.
    pub fn threshold(&self, baseline: &Baseline) -> u64 {
        match baseline.quantile {
            Some(q) if baseline.samples >= self.min_samples => {
                let scaled = u128::from(self.multiplier_milli) * u128::from(q) / 1000;
                self.floor.max(u64::try_from(scaled).unwrap_or(u64::MAX))
            }
            _ => self.default_threshold,
        }
    }

    /// No threshold this rule can produce is below this value, whatever the baseline.
    pub fn lowest_threshold(&self) -> u64 {
        self.floor.min(self.default_threshold)
    }
}

/// A threshold rule (DESIGN 4.1), compiled from configuration.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// The anomaly reason it emits, also the rule's name.
    pub reason: String,
    /// The actions it counts.
    pub actions: BTreeSet<String>,
    /// Window W in seconds; also the baseline bucket width.
    pub window: u64,
    /// History H in seconds.
    pub history: u64,
    pub group_by: GroupBy,
    pub eval: Eval,
}

/// The part of a rule that decides what is counted and how it is bucketed. Counts and baselines
/// belong to a shape: changing a rule's actions keeps its shape (events are matched against the
/// actions in force when they are processed), while changing its window, history or grouping
/// starts a new shape with empty windows and baselines.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct ShapeId(pub u64);

impl Rule {
    pub fn shape(&self) -> ShapeId {
        let text = format!(
            "{}\u{0}{}\u{0}{}\u{0}{}",
            self.reason,
            self.window,
            self.history,
            self.group_by.as_str()
        );
        ShapeId(xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
    }
}

/// A detected anomaly (DESIGN 4).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Anomaly {
    pub id: String,
    pub enterprise: String,
    /// The user, or for rules grouped by IP or session, that key.
    pub user: String,
    pub reason: String,
    pub detected_at: Time,
    pub session_id: Option<String>,
    pub observed: u64,
    pub threshold: u64,
    pub baseline: Baseline,
    pub evidence: Evidence,
}

/// Why an anomaly fired, beyond the numbers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub struct Evidence {
    /// The rule's counting key kind.
    pub group_by: GroupBy,
    pub window_secs: u64,
    pub history_secs: u64,
    /// The latest counted event at or before `detected_at` (ties: greatest id).
    pub latest_event_id: String,
    /// The users involved: those with counted events in the window at `detected_at` (for a
    /// rule counted per user, that user).
    pub users: Vec<String>,
    /// Detector-specific facts (for example both fingerprints of a session); empty for
    /// threshold rules.
    #[serde(default)]
    pub details: BTreeMap<String, String>,
    /// A one-line human explanation.
    pub explanation: String,
}

/// JSON leaves out empty `details`; bincode (how records cross timely processes) cannot skip a
/// field, so binary formats always carry it.
impl Serialize for Evidence {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let readable = serializer.is_human_readable();
        let mut s = serializer.serialize_struct("Evidence", 7)?;
        s.serialize_field("group_by", &self.group_by)?;
        s.serialize_field("window_secs", &self.window_secs)?;
        s.serialize_field("history_secs", &self.history_secs)?;
        s.serialize_field("latest_event_id", &self.latest_event_id)?;
        s.serialize_field("users", &self.users)?;
        if self.details.is_empty() && readable {
            s.skip_field("details")?;
        } else {
            s.serialize_field("details", &self.details)?;
        }
        s.serialize_field("explanation", &self.explanation)?;
        s.end()
    }
}

impl Anomaly {
    /// The deterministic anomaly id: a hash of (enterprise, user, reason, detected_at, session).
    pub fn make_id(
        enterprise: &str,
        user: &str,
        reason: &str,
        detected_at: Time,
        session: Option<&str>,
    ) -> String {
        let text = format!(
            "{enterprise}\u{0}{user}\u{0}{reason}\u{0}{detected_at}\u{0}{}",
            session.unwrap_or("\u{1}none")
        );
        format!("{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
    }
}

impl Anomaly {
    /// The record of a heuristic finding on `event`: observed 1, threshold 0, and as baseline
    /// the number of values the user was known with (`known`).
    pub fn heuristic(
        event: &Event,
        now: Time,
        reason: &str,
        details: Vec<(&str, String)>,
        known: usize,
        history: u64,
        explanation: String,
    ) -> Anomaly {
        Anomaly {
            id: Anomaly::make_id(
                &event.enterprise,
                &event.user,
                reason,
                now,
                event.session.as_deref(),
            ),
            enterprise: event.enterprise.to_string(),
            user: event.user.to_string(),
            reason: reason.to_string(),
            detected_at: now,
            session_id: event.session.as_deref().map(str::to_string),
            observed: 1,
            threshold: 0,
            baseline: Baseline {
                samples: known as u64,
                quantile: None,
            },
            evidence: Evidence {
                group_by: GroupBy::User,
                window_secs: 0,
                history_secs: history,
                latest_event_id: event.id.to_string(),
                users: vec![event.user.to_string()],
                details: details
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                explanation,
            },
        }
    }
}

/// A one-line explanation of a threshold anomaly, for example
/// `file_downloaded x412 in 1h > threshold 150 (3 x p99 of 1873 user-hours in 14d)`.
pub fn explain_threshold(
    rule: &Rule,
    observed: u64,
    threshold: u64,
    baseline: &Baseline,
) -> String {
    let window = humantime::format_duration(std::time::Duration::from_secs(rule.window));
    let history = humantime::format_duration(std::time::Duration::from_secs(rule.history));
    let counted = rule.actions.iter().cloned().collect::<Vec<_>>().join("|");
    let how = match baseline.quantile {
        Some(q) if baseline.samples >= rule.eval.min_samples => {
            let dynamic = u128::from(rule.eval.multiplier_milli) * u128::from(q) / 1000;
            if u128::from(threshold) > dynamic {
                format!(
                    "floor {}; {} x p{} = {} of {} {}-buckets in {}",
                    rule.eval.floor,
                    fmt_milli(rule.eval.multiplier_milli),
                    fmt_ppm(rule.eval.quantile_ppm),
                    q,
                    baseline.samples,
                    rule.group_by.as_str(),
                    history
                )
            } else {
                format!(
                    "{} x p{} {} of {} {}-buckets in {}",
                    fmt_milli(rule.eval.multiplier_milli),
                    fmt_ppm(rule.eval.quantile_ppm),
                    q,
                    baseline.samples,
                    rule.group_by.as_str(),
                    history
                )
            }
        }
        _ => format!(
            "default; baseline has {} of {} samples needed",
            baseline.samples, rule.eval.min_samples
        ),
    };
    format!("{counted} x{observed} in {window} > threshold {threshold} ({how})")
}

fn fmt_milli(v: u64) -> String {
    if v.is_multiple_of(1000) {
        format!("{}", v / 1000)
    } else {
        format!("{}", v as f64 / 1000.0)
    }
}

fn fmt_ppm(v: u32) -> String {
    let pct = f64::from(v) / 10_000.0;
    format!("{pct}")
}

#[cfg(test)]
mod tests {

    /// Event `e{i}` at `time`.
    fn event(i: u64, time: Time) -> Event {
        Event::bare(&format!("e{i}"), time)
    }

    fn sequenced(n: usize) -> Vec<Sequenced> {
        (0..n as u64)
            .map(|i| {
                let event = event(i, i / 3);
                (event.time, event)
            })
            .collect()
    }

    /// However the events are dealt (and across chunk boundaries), a sequence iterates, by
    /// reference and by value, in the order it was given; first, last, length and equality are
    /// the events'; each part holds every k-th event.
    #[test]
    fn dealt_events_iterate_in_their_order() {
        for n in [0, 1, 2, 5, EventChunks::CHUNK * 2 + 3] {
            let events = sequenced(n);
            let plain: EventChunks = events.clone().into();
            for k in 1..=4 {
                let mut dealt = EventChunks::dealt(k);
                for e in events.clone() {
                    dealt.push(e);
                }
                assert_eq!(dealt.deal(), k);
                assert_eq!(dealt.len(), n);
                assert_eq!(dealt.iter().cloned().collect::<Vec<_>>(), events);
                assert_eq!(dealt.first(), events.first());
                assert_eq!(dealt.last(), events.last());
                assert_eq!(dealt, plain, "equal whatever the dealing");
                let parts = dealt.clone().into_parts();
                assert_eq!(parts.len(), k);
                for (w, part) in parts.iter().enumerate() {
                    let every: Vec<Sequenced> = events.iter().skip(w).step_by(k).cloned().collect();
                    assert_eq!(part.iter().cloned().collect::<Vec<_>>(), every);
                }
                let rebuilt = EventChunks::from_parts(
                    parts
                        .into_iter()
                        .map(|p| vec![p.into_iter().collect::<Vec<_>>()])
                        .collect(),
                );
                assert_eq!(rebuilt.into_iter().collect::<Vec<_>>(), events);
                assert_eq!(dealt.into_iter().collect::<Vec<_>>(), events);
            }
        }
        assert!(EventChunks::default().iter().next().is_none());
    }

    #[test]
    #[should_panic(expected = "not a dealing")]
    fn parts_that_are_not_a_dealing_are_refused() {
        let events = sequenced(3);
        EventChunks::from_parts(vec![vec![], vec![events]]);
    }

    #[test]
    fn events_are_small_and_chunks_keep_order_across_boundaries() {
        // The README's per-event figure: seven pointers or integers, and the id (a UUID inline,
        // other text on the heap) in three more.
        assert_eq!(std::mem::size_of::<super::Event>(), 88);
        let n = super::EventChunks::CHUNK * 2 + 3;
        let events: Vec<super::Sequenced> = (0..n as u64)
            .map(|t| {
                let mut e = event(t, t);
                e.asn = Some(t as u32);
                (t, e)
            })
            .collect();
        let chunks = super::EventChunks::from(events.clone());
        assert_eq!(chunks.len(), n);
        assert_eq!(chunks.first(), events.first());
        assert_eq!(chunks.last(), events.last());
        assert!(chunks.iter().eq(events.iter()));
        assert_eq!(chunks.into_iter().collect::<Vec<_>>(), events);
    }

    use super::*;

    /// Records cross timely processes as bincode, which cannot skip fields: what JSON leaves out
    /// must still make the round trip.
    #[test]
    fn records_survive_bincode_and_json_still_omits_empty_fields() {
        let event = Event {
            id: "e1".into(),
            time: 5,
            action: "user_login".into(),
            enterprise: "E".into(),
            user: "U".into(),
            session: None,
            ip: Some("10.0.0.1".into()),
            ua: None,
            asn: None,
        };
        let bytes = bincode::serialize(&event).expect("serialize");
        assert_eq!(bincode::deserialize::<Event>(&bytes).expect("event"), event);
        let mut evidence = Evidence {
            group_by: GroupBy::Ip,
            window_secs: 60,
            history_secs: 600,
            latest_event_id: "e1".into(),
            users: vec!["U".into()],
            details: BTreeMap::new(),
            explanation: "x".into(),
        };
        for details in [vec![], vec![("ip", "10.0.0.1")]] {
            evidence.details = details
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let bytes = bincode::serialize(&evidence).expect("serialize");
            let back: Evidence = bincode::deserialize(&bytes).expect("evidence");
            assert_eq!(back, evidence);
            let json = serde_json::to_string(&evidence).expect("json");
            assert_eq!(
                json.contains("details"),
                !evidence.details.is_empty(),
                "{json}"
            );
            assert_eq!(
                serde_json::from_str::<Evidence>(&json).expect("json"),
                evidence
            );
        }
    }

    fn eval(q: u32, m: u64, f: u64, s: u64, d: u64) -> Eval {
        Eval {
            quantile_ppm: q,
            multiplier_milli: m,
            floor: f,
            min_samples: s,
            default_threshold: d,
        }
    }

    #[test]
    fn nearest_rank_is_ceil_of_q_times_n() {
        let e = eval(990_000, 3000, 0, 1, 9);
        assert_eq!(e.rank(1), 1);
        assert_eq!(e.rank(100), 99);
        assert_eq!(e.rank(101), 100); // 99.99 rounds up
        assert_eq!(e.rank(1873), 1855); // ceil(1854.27)
        let median = eval(500_000, 3000, 0, 1, 9);
        assert_eq!(median.rank(4), 2);
        assert_eq!(median.rank(5), 3);
        let zero = eval(0, 3000, 0, 1, 9);
        assert_eq!(zero.rank(10), 1, "q = 0 takes the smallest element");
    }

    #[test]
    fn threshold_uses_floor_multiplier_and_default() {
        let e = eval(990_000, 3000, 50, 3, 200);
        let few = Baseline {
            samples: 2,
            quantile: Some(40),
        };
        assert_eq!(e.threshold(&few), 200, "below min_samples: default");
        let low = Baseline {
            samples: 3,
            quantile: Some(10),
        };
        assert_eq!(e.threshold(&low), 50, "3 x 10 below the floor");
        let high = Baseline {
            samples: 3,
            quantile: Some(40),
        };
        assert_eq!(e.threshold(&high), 120);
        let none = Baseline {
            samples: 0,
            quantile: None,
        };
        assert_eq!(e.threshold(&none), 200);
    }

    #[test]
    fn fractional_multiplier_floors_exactly() {
        // 2.5 x 3 = 7.5: a count of 7 is not above it, 8 is; the integer threshold 7 says the same.
        let e = eval(1_000_000, 2500, 0, 1, 99);
        let b = Baseline {
            samples: 1,
            quantile: Some(3),
        };
        assert_eq!(e.threshold(&b), 7);
        // 1.001 x 1000 = 1001 exactly, no float error.
        let e = eval(1_000_000, 1001, 0, 1, 99);
        let b = Baseline {
            samples: 1,
            quantile: Some(1000),
        };
        assert_eq!(e.threshold(&b), 1001);
    }

    #[test]
    fn anomaly_ids_are_deterministic_and_distinct() {
        let a = Anomaly::make_id("E1", "U1", "tor", 10, Some("s"));
        assert_eq!(a, Anomaly::make_id("E1", "U1", "tor", 10, Some("s")));
        assert_ne!(a, Anomaly::make_id("E1", "U1", "tor", 11, Some("s")));
        assert_ne!(a, Anomaly::make_id("E1", "U1", "tor", 10, None));
    }
}

/// Parameters of the heuristic detectors (DESIGN 4.2), fixed for a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeuristicParams {
    /// The detectors that run, by reason. Empty (the default) runs none.
    pub enabled: BTreeSet<String>,
    /// H: first-seen sets, sessions and flags expire after this much inactivity.
    pub history: u64,
    /// Events a user needs in H (counted in whole hours) before novelty is judged.
    pub min_history: u64,
    /// Lower-case user-agent substrings of scripted clients.
    pub scripted_clients: Vec<String>,
}

/// Every heuristic detector's reason.
pub const HEURISTICS: [&str; 6] = [
    "session_fingerprint",
    "tor",
    "unexpected_user_agent",
    "unexpected_client",
    "asn",
    "ip_address",
];

impl HeuristicParams {
    pub fn on(&self, reason: &str) -> bool {
        self.enabled.contains(reason)
    }
}

/// Seconds as a short human duration ("1h", "14days").
pub fn human_secs(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}
