//! The Slack Audit Logs codec: turns one input line (an entry, or an API page of entries) into
//! accepted [`Event`]s and [`Reject`]s. Nothing here panics on input; every line ends up either
//! accepted or rejected with a reason (DESIGN 2).

use crate::model::{ArcStr, Event, EventId, Time};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Why a line (or a page entry) was rejected. The `as_str` names are the metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Not parseable JSON.
    InvalidJson,
    /// JSON, but not an object of the entry's shape (a field of the wrong type).
    InvalidEntry,
    MissingDateCreate,
    /// `date_create` present but neither unix seconds nor a UTC date string.
    BadDateCreate,
    MissingAction,
    MissingActorUser,
    MissingLocation,
}

impl RejectReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::InvalidEntry => "invalid_entry",
            RejectReason::MissingDateCreate => "missing_date_create",
            RejectReason::BadDateCreate => "bad_date_create",
            RejectReason::MissingAction => "missing_action",
            RejectReason::MissingActorUser => "missing_actor_user",
            RejectReason::MissingLocation => "missing_location",
        }
    }
}

/// A rejected line, as written to `rejects.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Reject {
    /// The input it came from (a path, or `-` for stdin).
    pub source: String,
    /// 1-based line number in that input.
    pub line: u64,
    /// For an API page, the 0-based index of the entry in `entries`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<u64>,
    pub reason: RejectReason,
    pub detail: String,
    /// The start of the offending text (at most 200 characters).
    pub excerpt: String,
}

/// A JSON scalar as it came: an integer, a float or a string (borrowed from the line when it
/// holds no escapes). Ids, session ids and `date_create` arrive as any of these. Read by a
/// visitor, not an untagged enum: serde buffers an untagged enum's content before trying each
/// variant, which cost more than the rest of the line.
enum Scalar<'a> {
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(Cow<'a, str>),
}

impl<'a> Scalar<'a> {
    /// The value as text: strings as they are, numbers in their decimal form. Negative zero is
    /// `0`: serde_json reads `-0` as a float and sonic-rs as an integer, and the codec's result
    /// must not depend on which parser read the line.
    fn into_text(self) -> Cow<'a, str> {
        match self {
            Scalar::Int(v) => Cow::Owned(v.to_string()),
            Scalar::UInt(v) => Cow::Owned(v.to_string()),
            // Float patterns compare with `==`, so this matches -0.0 as well.
            Scalar::Float(0.0) => Cow::Borrowed("0"),
            Scalar::Float(v) => Cow::Owned(v.to_string()),
            Scalar::Text(t) => t,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Scalar<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::UInt(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A JSON string, borrowed from the line when it holds no escapes. serde borrows a `Cow<str>`
/// only when it is a field's whole type: inside an `Option` it always allocates a `String`, and
/// that was three allocations and frees per line (action, address and user agent).
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            // As serde's own for `String`, so that a reject's detail reads as before.
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize, Default)]
struct RawUser<'a> {
    #[serde(default, borrow)]
    id: Option<Scalar<'a>>,
}

#[derive(Deserialize, Default)]
struct RawActor<'a> {
    #[serde(default, borrow)]
    user: Option<RawUser<'a>>,
}

#[derive(Deserialize, Default)]
struct RawLocation<'a> {
    #[serde(default, borrow)]
    id: Option<Scalar<'a>>,
}

#[derive(Deserialize, Default)]
struct RawContext<'a> {
    #[serde(default, borrow)]
    location: Option<RawLocation<'a>>,
    #[serde(default, borrow)]
    session_id: Option<Scalar<'a>>,
    #[serde(default, borrow)]
    ip_address: Option<Text<'a>>,
    #[serde(default, borrow)]
    ua: Option<Text<'a>>,
}

/// An entry, or an API page (`entries` set, read as a [`RawPage`]). Unknown fields are
/// ignored, as DESIGN 2 says.
#[derive(Deserialize)]
struct RawLine<'a> {
    #[serde(default, borrow)]
    id: Option<Scalar<'a>>,
    #[serde(default, borrow)]
    date_create: Option<Scalar<'a>>,
    #[serde(default, borrow)]
    action: Option<Text<'a>>,
    #[serde(default, borrow)]
    actor: Option<RawActor<'a>>,
    #[serde(default, borrow)]
    context: Option<RawContext<'a>>,
    /// Whether the line is a page, and that its entries are a list (a sequence of zero-sized
    /// values: nothing is allocated); they are read by [`RawPage`].
    #[serde(default)]
    entries: Option<Vec<serde::de::IgnoredAny>>,
}

/// An API page's entries, as serde_json's raw text of each (sonic-rs cannot read into
/// serde_json's `RawValue`); each is then decoded as a line of its own.
#[derive(Deserialize)]
struct RawPage<'a> {
    #[serde(borrow)]
    entries: Vec<&'a serde_json::value::RawValue>,
}

/// How a line's text becomes a [`RawLine`]: [`parse`], or (in tests) serde_json alone.
type Parser = for<'a> fn(&'a str) -> Result<RawLine<'a>, serde_json::Error>;

/// Reads a line (an entry or a page) with sonic-rs, and hands what it declines to serde_json.
/// sonic-rs (SIMD) took about a quarter less time per line than serde_json here
/// (`experiments/json_paths`), and decoding is about half of a replay's CPU. Every reject
/// comes from serde_json, with serde_json's message, and the property test
/// `sonic_rs_and_serde_json_agree` holds the fast path to the same events and rejects as
/// serde_json alone, on generated and mutated lines. serde_json parses floats exactly (its
/// `float_roundtrip` feature), as sonic-rs does, so a float id or time cannot differ in its
/// last digit between the two.
fn parse(text: &str) -> Result<RawLine<'_>, serde_json::Error> {
    match read_fast(text) {
        Some(raw) => Ok(raw),
        None => serde_json::from_str(text),
    }
}

/// The fast path of [`parse`]: the line as sonic-rs reads it, or `None` for a line left to
/// serde_json (one that sonic-rs declines, or holds a `\u`).
fn read_fast(text: &str) -> Option<RawLine<'_>> {
    // sonic-rs accepts a `\u` escape with too few hex digits in a value it skips, where
    // serde_json rejects the line: text with any `\u` goes to serde_json. Found as a backslash
    // followed by `u` (memchr for one byte; `memmem::find` built a searcher for every line).
    let bytes = text.as_bytes();
    if memchr::memchr_iter(b'\\', bytes).any(|i| bytes.get(i + 1) == Some(&b'u')) {
        return None;
    }
    sonic_rs::from_str(text).ok()
}

/// How serde_json's error on a line is counted: a syntax error is invalid JSON, a value of the
/// wrong type an invalid entry.
fn error_reason(e: &serde_json::Error) -> RejectReason {
    if e.is_data() {
        RejectReason::InvalidEntry
    } else {
        RejectReason::InvalidJson
    }
}

/// How many distinct strings one decoding thread keeps for sharing; past it the cache starts over
/// (sharing is lost for a while, nothing else).
const INTERN_CAPACITY: usize = 1 << 18;

/// The interning sets' hasher. Every text field of every event is looked up (six per event, user
/// agents over a hundred bytes); with foldhash instead of SipHash, decoding the 1M-event replay
/// took 775 ms instead of 860 (medians). It is seeded at random per process, as SipHash is, so
/// colliding texts cannot be prepared in advance, though it claims only minimal resistance to
/// flooding. Here flooding could only slow decoding: the sets are bounded, and what is interned
/// never changes a result.
type InternSet = std::collections::HashSet<ArcStr, foldhash::fast::RandomState>;

thread_local! {
    static INTERNED: std::cell::RefCell<InternSet> = std::cell::RefCell::new(InternSet::default());
}

/// The shared copy of `text`: events decoded on the same thread that carry the same user,
/// enterprise, action, session, address or user agent hold one allocation between them.
fn intern(text: &str) -> ArcStr {
    INTERNED.with_borrow_mut(|set| {
        if let Some(shared) = set.get(text) {
            return shared.clone();
        }
        if set.len() >= INTERN_CAPACITY {
            set.clear();
        }
        let shared = ArcStr::from(text);
        set.insert(shared.clone());
        shared
    })
}

/// How many distinct enterprise ids, actions and user ids the process makes permanent (see
/// [`intern_permanent`]); past it they are interned as other text is. At most a few MB leaked.
const PERMANENT_CAPACITY: usize = 1 << 16;

/// Enterprise ids, actions and user ids made permanent so far, process-wide.
static PERMANENT_MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many bytes of session ids, addresses and user agents the process makes permanent (see
/// [`intern_context`]). Such values are many more, and a user agent's length is the sender's
/// choice, so this budget is of bytes, apart from the one above (sessions cannot use up the
/// users' budget), and texts longer than [`CONTEXT_PERMANENT_MAX_LEN`] are never made permanent.
const CONTEXT_PERMANENT_BYTES: usize = 16 << 20;
const CONTEXT_PERMANENT_MAX_LEN: usize = 512;

/// Bytes of session ids, addresses and user agents made permanent so far, process-wide.
static CONTEXT_PERMANENT_MADE: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    static PERMANENT: std::cell::RefCell<InternSet> = std::cell::RefCell::new(InternSet::default());
}

/// The shared copy of an enterprise id, an action or a user id: values each carried by many
/// events. Reference-counted copies would have both workers writing the same few counters for
/// every clone and drop of every event (dropping events was the top of the workers' profile),
/// so the first [`PERMANENT_CAPACITY`] distinct values are made static (`ArcStr::leak`: never
/// freed, and clones and drops no longer touch a count). The bound is process-wide, so input
/// with ever new values cannot grow the leak past it: the rest are interned as usual. Equality,
/// order and hashing are the text's either way, so no result depends on which copies are static.
fn intern_permanent(text: &str) -> ArcStr {
    PERMANENT
        .with_borrow_mut(|set| permanent_in(set, &PERMANENT_MADE, PERMANENT_CAPACITY, 1, text))
        .unwrap_or_else(|| intern(text))
}

/// The shared copy of a session id, an address or a user agent: as [`intern_permanent`], for
/// the same reason (each is carried by many events, on both workers), under a budget of bytes,
/// [`CONTEXT_PERMANENT_BYTES`]. Past it, and for longer texts, they are interned. In a
/// long-running `aer run`, sessions come and go: the budget is spent in the first hours, and
/// then at most that much memory stays leaked (16 MiB) while new values are interned as before.
fn intern_context(text: &str) -> ArcStr {
    if text.len() > CONTEXT_PERMANENT_MAX_LEN {
        return intern(text);
    }
    // The allocation's header and rounding, roughly, besides the text.
    let cost = text.len() + 16;
    PERMANENT
        .with_borrow_mut(|set| {
            permanent_in(
                set,
                &CONTEXT_PERMANENT_MADE,
                CONTEXT_PERMANENT_BYTES,
                cost,
                text,
            )
        })
        .unwrap_or_else(|| intern(text))
}

/// [`intern_permanent`] over a given set and budget: the static copy of `text`, or `None` once
/// `made` plus `cost` would pass `capacity`. A text already in `set` costs nothing.
fn permanent_in(
    set: &mut InternSet,
    made: &std::sync::atomic::AtomicUsize,
    capacity: usize,
    cost: usize,
    text: &str,
) -> Option<ArcStr> {
    use std::sync::atomic::Ordering;
    if let Some(shared) = set.get(text) {
        return Some(shared.clone());
    }
    made.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        (n + cost <= capacity).then_some(n + cost)
    })
    .ok()?;
    let shared = ArcStr::from(text);
    shared.leak();
    set.insert(shared.clone());
    Some(shared)
}

/// An event's user, enterprise, session, address and user agent: as texts from the line, or as
/// the shared copies the decoder hands out.
#[derive(Clone)]
struct Companions<T> {
    user: T,
    enterprise: T,
    session: Option<T>,
    ip: Option<T>,
    ua: Option<T>,
}

type SharedCompanions = Companions<ArcStr>;

/// How many sessions one decoding thread remembers the companions of; past it the cache starts
/// over (sharing is lost for a while, nothing else). The remembered copies stay alive while
/// remembered, so this also bounds the texts the cache keeps alive: five per session, as the
/// interning sets keep at most [`INTERN_CAPACITY`] texts each.
const SESSION_CACHE_CAPACITY: usize = 1 << 16;

thread_local! {
    static BY_SESSION: std::cell::RefCell<
        std::collections::HashMap<ArcStr, SharedCompanions, foldhash::fast::RandomState>,
    > = std::cell::RefCell::new(Default::default());
}

/// The shared copies of an event's texts. A session's events nearly always carry the same user,
/// enterprise, address and user agent, so each thread remembers the copies the last event of
/// each session got: one lookup (the session's) then stands for five, and each remembered copy
/// is used only when its text is equal to the line's (a byte comparison). Any text that
/// differs is interned as usual and remembered in its place. Without a session, each text is
/// interned on its own. Interning never changes a result, so neither does this cache.
fn intern_companions(texts: Companions<&str>) -> SharedCompanions {
    let fresh = |texts: &Companions<&str>| Companions {
        user: intern_permanent(texts.user),
        enterprise: intern_permanent(texts.enterprise),
        session: texts.session.map(intern_context),
        ip: texts.ip.map(intern_context),
        ua: texts.ua.map(intern_context),
    };
    let Some(session) = texts.session else {
        return fresh(&texts);
    };
    BY_SESSION.with_borrow_mut(|cache| {
        if let Some(last) = cache.get_mut(session) {
            refresh(&mut last.user, texts.user, intern_permanent);
            refresh(&mut last.enterprise, texts.enterprise, intern_permanent);
            refresh_optional(&mut last.ip, texts.ip);
            refresh_optional(&mut last.ua, texts.ua);
            return last.clone();
        }
        if cache.len() >= SESSION_CACHE_CAPACITY {
            cache.clear();
        }
        let shared = fresh(&texts);
        let key = shared.session.clone().expect("a session");
        cache.insert(key, shared.clone());
        shared
    })
}

/// Keeps `slot` when it holds `text`, else replaces it with `intern(text)`.
fn refresh(slot: &mut ArcStr, text: &str, intern: fn(&str) -> ArcStr) {
    if slot.as_str() != text {
        *slot = intern(text);
    }
}

/// As [`refresh`], for a context text that may be absent.
fn refresh_optional(slot: &mut Option<ArcStr>, text: Option<&str>) {
    match text {
        None => *slot = None,
        Some(text) if slot.as_deref() != Some(text) => *slot = Some(intern_context(text)),
        Some(_) => {}
    }
}

/// Parses `"2022-07-28 16:48:14"` (UTC; `T` instead of the space, fractional seconds and a
/// trailing `Z` or RFC 3339 offset are accepted too) into unix seconds.
pub fn parse_date(text: &str) -> Option<Time> {
    use chrono::{DateTime, NaiveDateTime};
    let t = text.trim();
    let secs = if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        dt.timestamp()
    } else {
        let naive = t.strip_suffix('Z').unwrap_or(t);
        ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(naive, f).ok())?
            .and_utc()
            .timestamp()
    };
    u64::try_from(secs).ok()
}

fn excerpt(text: &str) -> String {
    text.chars().take(200).collect()
}

/// The id of an entry that has none: `h-` and a 128-bit hash of its text.
pub fn derived_id(text: &str) -> String {
    format!("h-{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
}

/// Where a parsed line came from, for rejects.
#[derive(Clone, Copy)]
pub struct LineRef<'a> {
    pub source: &'a str,
    pub line: u64,
}

/// Decodes one line into `events` and `rejects`. Blank lines are neither.
pub fn decode_line(
    text: &str,
    at: LineRef<'_>,
    events: &mut Vec<Event>,
    rejects: &mut Vec<Reject>,
) {
    decode_line_with(parse, text, at, events, rejects)
}

/// [`decode_line`] with the given parser.
fn decode_line_with(
    parse: Parser,
    text: &str,
    at: LineRef<'_>,
    events: &mut Vec<Event>,
    rejects: &mut Vec<Reject>,
) {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return;
    }
    let reject = |reason, detail: String, entry: Option<u64>, body: &str| Reject {
        source: at.source.to_string(),
        line: at.line,
        entry,
        reason,
        detail,
        excerpt: excerpt(body),
    };
    // serde would read a JSON array into a struct positionally: only objects are entries.
    if !trimmed.starts_with('{') {
        let (reason, detail) = match serde_json::from_str::<serde::de::IgnoredAny>(trimmed) {
            Ok(_) => (RejectReason::InvalidEntry, "not a JSON object".to_string()),
            Err(e) => (RejectReason::InvalidJson, e.to_string()),
        };
        rejects.push(reject(reason, detail, None, trimmed));
        return;
    }
    let raw = match parse(trimmed) {
        Ok(raw) => raw,
        Err(e) => {
            rejects.push(reject(error_reason(&e), e.to_string(), None, trimmed));
            return;
        }
    };
    if raw.entries.is_some() {
        let page: RawPage = match serde_json::from_str(trimmed) {
            Ok(page) => page,
            Err(e) => {
                rejects.push(reject(error_reason(&e), e.to_string(), None, trimmed));
                return;
            }
        };
        for (i, entry) in page.entries.iter().enumerate() {
            let body = entry.get();
            if !body.starts_with('{') {
                rejects.push(reject(
                    RejectReason::InvalidEntry,
                    "page entry is not a JSON object".to_string(),
                    Some(i as u64),
                    body,
                ));
                continue;
            }
            match parse(body) {
                Ok(raw) => match validate(raw, body) {
                    Ok(ev) => events.push(ev),
                    Err((reason, detail)) => {
                        rejects.push(reject(reason, detail, Some(i as u64), body))
                    }
                },
                Err(e) => rejects.push(reject(
                    RejectReason::InvalidEntry,
                    e.to_string(),
                    Some(i as u64),
                    body,
                )),
            }
        }
        return;
    }
    match validate(raw, trimmed) {
        Ok(ev) => events.push(ev),
        Err((reason, detail)) => rejects.push(reject(reason, detail, None, trimmed)),
    }
}

fn validate(raw: RawLine, body: &str) -> Result<Event, (RejectReason, String)> {
    let time = match raw.date_create {
        None => {
            return Err((
                RejectReason::MissingDateCreate,
                "no date_create".to_string(),
            ))
        }
        Some(Scalar::Int(i)) => u64::try_from(i).map_err(|_| {
            (
                RejectReason::BadDateCreate,
                format!("negative date_create {i}"),
            )
        })?,
        // Past i64::MAX is no time (a float that large is rejected below as well).
        Some(Scalar::UInt(u)) => match i64::try_from(u) {
            Ok(_) => u,
            Err(_) => {
                return Err((
                    RejectReason::BadDateCreate,
                    format!("date_create {u} is not a time"),
                ))
            }
        },
        Some(Scalar::Float(f)) => {
            if (0.0..1e15).contains(&f) {
                f.floor() as u64
            } else {
                return Err((
                    RejectReason::BadDateCreate,
                    format!("date_create {f} is not a time"),
                ));
            }
        }
        Some(Scalar::Text(t)) => match t.trim().parse::<u64>() {
            Ok(secs) => secs,
            Err(_) => parse_date(&t).ok_or_else(|| {
                (
                    RejectReason::BadDateCreate,
                    format!("date_create {t:?} is not unix seconds or \"YYYY-MM-DD HH:MM:SS\""),
                )
            })?,
        },
    };
    let action = match raw.action {
        Some(Text(a)) if !a.is_empty() => intern_permanent(&a),
        _ => return Err((RejectReason::MissingAction, "no action".to_string())),
    };
    let user = raw
        .actor
        .and_then(|a| a.user)
        .and_then(|u| u.id)
        .map(Scalar::into_text)
        .filter(|u| !u.is_empty())
        // `_else`: the reason's text is made only for a reject (it was two allocations and
        // frees per accepted line).
        .ok_or_else(|| {
            (
                RejectReason::MissingActorUser,
                "no actor.user.id".to_string(),
            )
        })?;
    let context = raw.context.unwrap_or_default();
    let enterprise = context
        .location
        .and_then(|l| l.id)
        .map(Scalar::into_text)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| {
            (
                RejectReason::MissingLocation,
                "no context.location.id".to_string(),
            )
        })?;
    let id = match raw.id.map(Scalar::into_text) {
        Some(id) if !id.is_empty() => EventId::new(&id),
        _ => EventId::new(&derived_id(body)),
    };
    let session = context.session_id.map(Scalar::into_text);
    let ip = context.ip_address.map(|t| t.0).filter(|s| !s.is_empty());
    let ua = context.ua.map(|t| t.0).filter(|s| !s.is_empty());
    let shared = intern_companions(Companions {
        user: &user,
        enterprise: &enterprise,
        session: session.as_deref(),
        ip: ip.as_deref(),
        ua: ua.as_deref(),
    });
    Ok(Event {
        id,
        time,
        action,
        enterprise: shared.enterprise,
        user: shared.user,
        session: shared.session,
        ip: shared.ip,
        ua: shared.ua,
        asn: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Permanent copies are static and shared, equal to their text, and stop at the capacity:
    /// past it nothing more is leaked, and what was made stays shared.
    #[test]
    fn permanent_texts_are_static_shared_and_bounded() {
        let made = std::sync::atomic::AtomicUsize::new(0);
        let mut set = InternSet::default();
        let e1 = permanent_in(&mut set, &made, 2, 1, "E1").expect("under capacity");
        assert!(ArcStr::is_static(&e1));
        assert_eq!(e1, "E1");
        let again = permanent_in(&mut set, &made, 2, 1, &String::from("E1")).expect("known");
        assert!(ArcStr::ptr_eq(&e1, &again));
        assert!(permanent_in(&mut set, &made, 2, 1, "file_downloaded").is_some());
        assert_eq!(permanent_in(&mut set, &made, 2, 1, "W0123"), None);
        assert_eq!(made.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert!(permanent_in(&mut set, &made, 2, 1, "E1").is_some());
        // A budget of bytes: a text that would pass it is not made permanent, a shorter one
        // that fits still is.
        let bytes = std::sync::atomic::AtomicUsize::new(0);
        let mut set = InternSet::default();
        assert!(permanent_in(&mut set, &bytes, 30, 20, "Mozilla/5.0").is_some());
        assert_eq!(permanent_in(&mut set, &bytes, 30, 20, "curl/8.5.0"), None);
        assert!(permanent_in(&mut set, &bytes, 30, 10, "s1").is_some());
        assert_eq!(bytes.load(std::sync::atomic::Ordering::Relaxed), 30);
        // Decoded events carry such copies, and compare as their text does.
        let (events, _) = decode(
            r#"{"id":"x","date_create":5,"action":"file_downloaded","actor":{"user":{"id":"W1"}},"context":{"location":{"id":"E9"}}}"#,
        );
        assert!(ArcStr::is_static(&events[0].enterprise));
        assert!(ArcStr::is_static(&events[0].action));
        assert_eq!(events[0].enterprise, ArcStr::from("E9"));
        // Sessions, addresses and user agents too, but never a text past the length bound.
        let long_ua = "x".repeat(CONTEXT_PERMANENT_MAX_LEN + 1);
        let (events, _) = decode(&format!(
            r#"{{"id":"y","date_create":5,"action":"a","actor":{{"user":{{"id":"W1"}}}},"context":{{"location":{{"id":"E9"}},"session_id":"s9","ip_address":"10.1.2.3","ua":"{long_ua}"}}}}"#,
        ));
        assert!(ArcStr::is_static(events[0].session.as_ref().unwrap()));
        assert!(ArcStr::is_static(events[0].ip.as_ref().unwrap()));
        assert!(!ArcStr::is_static(events[0].ua.as_ref().unwrap()));
        assert_eq!(events[0].ua.as_deref(), Some(long_ua.as_str()));
    }

    fn decode(text: &str) -> (Vec<Event>, Vec<Reject>) {
        let (mut e, mut r) = (Vec::new(), Vec::new());
        decode_line(
            text,
            LineRef {
                source: "t",
                line: 7,
            },
            &mut e,
            &mut r,
        );
        (e, r)
    }

    const FULL: &str = r#"{"id":"0123a45b","date_create":1521214343,"action":"file_downloaded","actor":{"type":"user","user":{"id":"W123AB456","name":"Charlie Parker"}},"entity":{"type":"file"},"context":{"location":{"type":"enterprise","id":"E1701NCCA"},"ua":"Mozilla/5.0","session_id":"847288190092","ip_address":"1.23.45.67"},"details":{}}"#;

    #[test]
    fn integer_and_string_date_create_agree() {
        let (e, r) = decode(FULL);
        assert!(r.is_empty());
        assert_eq!(e[0].time, 1_521_214_343);
        assert_eq!(e[0].enterprise, "E1701NCCA");
        assert_eq!(e[0].session.as_deref(), Some("847288190092"));
        let text = FULL.replace("1521214343", "\"2018-03-16 15:32:23\"");
        let (e2, _) = decode(&text);
        assert_eq!(e2[0].time, 1_521_214_343);
        assert_eq!(parse_date("2018-03-16T15:32:23Z"), Some(1_521_214_343));
        assert_eq!(
            parse_date("2024-08-19 13:54:53.000000000"),
            Some(1_724_075_693)
        );
        assert_eq!(parse_date("2018-03-16 15:32:23+00:00"), Some(1_521_214_343));
        assert_eq!(parse_date("yesterday"), None);
    }

    #[test]
    fn numeric_session_ids_become_strings() {
        let text = FULL.replace("\"847288190092\"", "847288190092");
        let (e, _) = decode(&text);
        assert_eq!(e[0].session.as_deref(), Some("847288190092"));
        // Numeric ids, users and enterprises read as their decimal text; a float date is floored.
        let text = FULL
            .replace("\"0123a45b\"", "42")
            .replace("\"W123AB456\"", "7")
            .replace("\"E1701NCCA\"", "9")
            .replace("1521214343", "1521214343.75");
        let (e, r) = decode(&text);
        assert!(r.is_empty(), "{r:?}");
        assert_eq!(e[0].id, "42");
        assert_eq!((&*e[0].user, &*e[0].enterprise), ("7", "9"));
        assert_eq!(e[0].time, 1_521_214_343);
    }

    proptest::proptest! {
        /// The session cache hands out the line's own texts: a session's user, enterprise,
        /// address and user agent change from line to line, appear and disappear, and sessions
        /// come as strings, numbers or not at all; every event still carries exactly its line's
        /// texts (an empty address or user agent is none).
        #[test]
        fn session_cache_gives_each_line_its_own_texts(lines in proptest::collection::vec(
            (0usize..7, 0usize..3, 0usize..2, 0usize..4, 0usize..4),
            1..40,
        )) {
            // The last two are long and alike in their first 24 bytes: the cache must tell
            // sessions apart by their whole text (a key cut short, or kept as a prefix, fails).
            const SESSIONS: [Option<&str>; 7] = [
                None,
                Some("\"s1\""),
                Some("\"s2\""),
                Some("12345"),
                Some("\"12345\""),
                Some("\"session-0123456789abcdef-long-a\""),
                Some("\"session-0123456789abcdef-long-b\""),
            ];
            const USERS: [&str; 3] = ["W1", "W2", "W10"];
            const ENTERPRISES: [&str; 2] = ["E1", "E2"];
            const IPS: [Option<&str>; 4] = [None, Some(""), Some("1.2.3.4"), Some("1.2.3.5")];
            const UAS: [Option<&str>; 4] = [None, Some(""), Some("ua/1"), Some("ua/2")];
            for (i, &(s, u, e, ip, ua)) in lines.iter().enumerate() {
                let mut context = format!("\"location\":{{\"id\":\"{}\"}}", ENTERPRISES[e]);
                if let Some(session) = SESSIONS[s] {
                    context += &format!(",\"session_id\":{session}");
                }
                if let Some(ip) = IPS[ip] {
                    context += &format!(",\"ip_address\":\"{ip}\"");
                }
                if let Some(ua) = UAS[ua] {
                    context += &format!(",\"ua\":\"{ua}\"");
                }
                let line = format!(
                    "{{\"id\":\"p{i}\",\"date_create\":{i},\"action\":\"a\",\"actor\":{{\"user\":{{\"id\":\"{}\"}}}},\"context\":{{{context}}}}}",
                    USERS[u]
                );
                let (events, rejects) = decode(&line);
                proptest::prop_assert!(rejects.is_empty(), "{:?}", rejects);
                let event = &events[0];
                proptest::prop_assert_eq!(event.user.as_str(), USERS[u]);
                proptest::prop_assert_eq!(event.enterprise.as_str(), ENTERPRISES[e]);
                let session = SESSIONS[s].map(|t| t.trim_matches('"'));
                proptest::prop_assert_eq!(event.session.as_deref(), session);
                let ip = IPS[ip].filter(|t| !t.is_empty());
                proptest::prop_assert_eq!(event.ip.as_deref(), ip);
                let ua = UAS[ua].filter(|t| !t.is_empty());
                proptest::prop_assert_eq!(event.ua.as_deref(), ua);
            }
        }
    }

    #[test]
    fn repeated_fields_share_one_allocation_and_escapes_are_decoded() {
        let second =
            FULL.replace("\"847288190092\"", "\"s2\"")
                .replacen("\"id\":\"", "\"id\":\"other-", 1);
        let escaped = FULL
            .replace("\"file_downloaded\"", "\"file\\u005fdownloaded\"")
            .replace("\"id\":\"0123", "\"id\":\"third-");
        let e: Vec<Event> = [FULL, &second, &escaped]
            .iter()
            .flat_map(|line| {
                let (events, rejects) = decode(line);
                assert!(rejects.is_empty(), "{rejects:?}");
                events
            })
            .collect();
        assert_eq!(e.len(), 3);
        assert!(ArcStr::ptr_eq(&e[0].user, &e[1].user));
        assert!(ArcStr::ptr_eq(&e[0].enterprise, &e[1].enterprise));
        assert!(ArcStr::ptr_eq(&e[0].action, &e[1].action));
        assert_ne!(e[0].session, e[1].session);
        // An escaped string is decoded, then shared like any other.
        assert_eq!(e[2].action, "file_downloaded");
        assert!(ArcStr::ptr_eq(&e[0].action, &e[2].action));
    }

    /// serde_json alone, as the codec parsed every line before the fast path.
    fn serde_json_only(text: &str) -> Result<RawLine<'_>, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// `text` decoded with the fast path and with serde_json alone.
    fn both_ways(text: &str) -> [(Vec<Event>, Vec<Reject>); 2] {
        [parse as Parser, serde_json_only].map(|parser| {
            let (mut e, mut r) = (Vec::new(), Vec::new());
            let at = LineRef {
                source: "t",
                line: 7,
            };
            decode_line_with(parser, text, at, &mut e, &mut r);
            (e, r)
        })
    }

    /// Field values: what entries carry, and what JSON parsers are known to differ on:
    /// escapes, lone and reversed surrogates, raw non-ASCII text, integers past 2^53, 2^63 and
    /// 2^64, negative zero, floats that need exact rounding (to the last digit, or by their
    /// floor), out-of-range exponents, and nested values.
    const VALUES: &[&str] = &[
        r#""U1""#,
        r#""""#,
        r#""a\u00e9\/b\"c""#,
        "\"é ü\"",
        r#""\ud800""#,
        r#""\ud83d\ude00""#,
        r#""\udc00\ud800""#,
        r#""2022-07-28 16:48:14""#,
        r#"" 1700000000 ""#,
        r#""1700000000""#,
        "0",
        "-0",
        "-0.0",
        "1700000000",
        "-5",
        "1700000000.5",
        "1.7e9",
        "0.1e1",
        "1E2",
        "9007199254740993",
        "9007199254740993.0",
        "1700000000.99999999999999999",
        "0.30000000000000004",
        "2.2250738585072011e-308",
        "1.7976931348623157e308",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "1e400",
        "123456789012345678901234567890",
        "true",
        "null",
        "[]",
        "{}",
        r#"[1,{"id":[]}]"#,
        r#"{"id":"nested","user":{"id":"W1"}}"#,
    ];

    /// Values that make a field valid (each is a valid id, user, enterprise, session, address
    /// and user agent, and two of them are valid times), so that many lines are accepted.
    const GOOD: &[&str] = &[
        r#""U1""#,
        r#""Mozilla\/5.0 \"x\"""#,
        "\"é ü\"",
        "1700000000",
        r#""2022-07-28 16:48:14""#,
    ];

    /// Keys: the entry's own (some escaped, as `entries` may be), and others.
    const KEYS: &[&str] = &[
        "id",
        "date_create",
        "action",
        "actor",
        "user",
        "context",
        "location",
        "session_id",
        "ip_address",
        "ua",
        "entries",
        r"entr\u0069es",
        r"\u0069d",
        "details",
    ];

    /// Any JSON value built from [`VALUES`] and [`KEYS`], up to three levels deep.
    fn any_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = proptest::sample::select(VALUES).prop_map(str::to_string);
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                proptest::collection::vec((proptest::sample::select(KEYS), inner.clone()), 0..5)
                    .prop_map(|members| {
                        let members: Vec<String> = members
                            .iter()
                            .map(|(k, v)| format!("\"{k}\":{v}"))
                            .collect();
                        format!("{{{}}}", members.join(","))
                    }),
                proptest::collection::vec(inner, 0..3)
                    .prop_map(|items| format!("[{}]", items.join(","))),
            ]
        })
    }

    /// A line: an entry with every field aer reads (each usually valid) and maybe extra
    /// members, an API page of such entries, or any value; then edited a character at a time
    /// (characters deleted, or JSON's punctuation, escape and number characters inserted), which
    /// makes most of them invalid.
    fn any_line() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let field = || {
            prop_oneof![
                12 => proptest::sample::select(GOOD).prop_map(str::to_string),
                2 => proptest::sample::select(VALUES).prop_map(str::to_string),
                1 => any_value(),
            ]
        };
        let extra = proptest::collection::vec((proptest::sample::select(KEYS), any_value()), 0..2)
            .prop_map(|members| {
                members
                    .iter()
                    .map(|(k, v)| format!(",\"{k}\":{v}"))
                    .collect::<String>()
            });
        let entry = (proptest::collection::vec(field(), 8), extra).prop_map(|(f, extra)| {
            format!(
                r#"{{"id":{},"date_create":{},"action":{},"actor":{{"type":"user","user":{{"id":{}}}}},"context":{{"location":{{"id":{}}},"session_id":{},"ip_address":{},"ua":{}}}{extra}}}"#,
                f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]
            )
        })
        .boxed();
        let page = proptest::collection::vec(entry.clone(), 0..3)
            .prop_map(|entries| format!(r#"{{"entries":[{}]}}"#, entries.join(",")));
        let line = prop_oneof![6 => entry, 1 => page, 1 => any_value()];
        let edits = proptest::collection::vec(
            (
                any::<usize>(),
                proptest::option::of(proptest::sample::select(&b"{}[],:\"\\ -.eE0u1aFnt/+"[..])),
            ),
            0..3,
        );
        (line, prop_oneof![2 => Just(Vec::new()), 1 => edits]).prop_map(|(line, edits)| {
            let mut chars: Vec<char> = line.chars().collect();
            for (at, insert) in edits {
                let at = at % (chars.len() + 1);
                match insert {
                    Some(c) => chars.insert(at, c as char),
                    None if at < chars.len() => {
                        chars.remove(at);
                    }
                    None => {}
                }
            }
            chars.into_iter().collect()
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
        /// The fast path (sonic-rs first) decodes every line exactly as serde_json alone does:
        /// the same events, and the same rejects with the same reasons and messages.
        #[test]
        fn sonic_rs_and_serde_json_agree(line in any_line()) {
            let [fast, serde_only] = both_ways(&line);
            proptest::prop_assert_eq!(fast, serde_only, "line: {}", line);
        }
    }

    /// The property above has power: a good share of the generated lines is read by sonic-rs
    /// itself (not handed to serde_json), and some of them are accepted as events.
    #[test]
    fn generated_lines_reach_the_fast_path() {
        use proptest::strategy::{Strategy, ValueTree};
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut fast, mut accepted) = (0, 0);
        for _ in 0..2_000 {
            let line = any_line().new_tree(&mut runner).unwrap().current();
            if read_fast(line.trim()).is_some() {
                fast += 1;
                accepted += usize::from(!both_ways(&line)[0].0.is_empty());
            }
        }
        assert!(
            fast >= 100 && accepted >= 30,
            "fast {fast}, accepted {accepted}"
        );
    }

    /// Any backslash followed by `u` sends a line to serde_json (the one case where sonic-rs
    /// accepts what serde_json rejects is a short `\u` escape), and no other text does.
    #[test]
    fn the_fast_path_leaves_every_u_escape_to_serde_json() {
        assert!(read_fast(FULL).is_some());
        for declined in [
            FULL.replace("\"file_downloaded\"", "\"file\\u005fdownloaded\""),
            FULL.replace("\"file_downloaded\"", "\"file\\\\u\""),
            FULL.replace("\"file_downloaded\"", "\"\\u005f\""),
        ] {
            assert!(read_fast(&declined).is_none(), "read: {declined}");
        }
        let other_escapes = FULL.replace("\"file_downloaded\"", "\"file\\n\\\\ u\\\"\"");
        let fast = read_fast(&other_escapes).expect("no \\u escape");
        assert!(matches!(fast.action, Some(Text(Cow::Owned(ref a))) if a == "file\n\\ u\""));
    }

    /// Texts without escapes are borrowed from the line, by either parser, whether the field
    /// is a text or a scalar (no allocation per field). Escaped ones are decoded into text of
    /// their own (the test above).
    #[test]
    fn unescaped_texts_are_borrowed() {
        for raw in [
            read_fast(FULL).expect("fast"),
            serde_json_only(FULL).expect("serde"),
        ] {
            assert!(matches!(
                raw.action,
                Some(Text(Cow::Borrowed("file_downloaded")))
            ));
            let context = raw.context.expect("context");
            assert!(matches!(
                context.ip_address,
                Some(Text(Cow::Borrowed("1.23.45.67")))
            ));
            assert!(matches!(
                context.ua,
                Some(Text(Cow::Borrowed("Mozilla/5.0")))
            ));
            assert!(matches!(
                context.session_id,
                Some(Scalar::Text(Cow::Borrowed(_)))
            ));
            assert!(matches!(
                raw.id,
                Some(Scalar::Text(Cow::Borrowed("0123a45b")))
            ));
        }
    }

    /// The two ways agree on real Slack audit entries too, and the fast path reads every one
    /// of them itself (none falls back to serde_json): it is the path entries take.
    #[test]
    fn the_fast_path_reads_real_entries() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/data/third_party/panther_slack_audit_samples.jsonl"
        );
        let text = std::fs::read_to_string(path).expect("the shared samples");
        let mut lines = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            lines += 1;
            let [fast, serde_only] = both_ways(line);
            assert_eq!(fast, serde_only, "line: {line}");
            assert!(read_fast(line.trim()).is_some(), "declined: {line}");
        }
        assert_eq!(lines, 66);
    }

    #[test]
    fn every_bad_line_has_a_reason() {
        let cases = [
            ("{not json", RejectReason::InvalidJson),
            ("[1,2]", RejectReason::InvalidEntry),
            ("\"text\"", RejectReason::InvalidEntry),
            (r#"{"action":"x"}"#, RejectReason::MissingDateCreate),
            (
                r#"{"date_create":-5,"action":"x"}"#,
                RejectReason::BadDateCreate,
            ),
            (
                r#"{"date_create":"soon","action":"x"}"#,
                RejectReason::BadDateCreate,
            ),
            (
                r#"{"date_create":18446744073709551615,"action":"x"}"#,
                RejectReason::BadDateCreate,
            ),
            (
                r#"{"date_create":1e300,"action":"x"}"#,
                RejectReason::BadDateCreate,
            ),
            (r#"{"date_create":true}"#, RejectReason::InvalidEntry),
            ("[1,2,\"x\"]", RejectReason::InvalidEntry),
            ("[1,2", RejectReason::InvalidJson),
            (r#"{"entries":[[1,2]]}"#, RejectReason::InvalidEntry),
            (r#"{"date_create":5}"#, RejectReason::MissingAction),
            (
                r#"{"date_create":5,"action":"x"}"#,
                RejectReason::MissingActorUser,
            ),
            (
                r#"{"date_create":5,"action":"x","actor":{"user":{"id":"U"}}}"#,
                RejectReason::MissingLocation,
            ),
        ];
        for (text, reason) in cases {
            let (e, r) = decode(text);
            assert!(e.is_empty(), "{text}");
            assert_eq!(r.len(), 1, "{text}");
            assert_eq!(r[0].reason, reason, "{text}: {}", r[0].detail);
            assert_eq!(r[0].line, 7);
        }
        assert_eq!(decode("   "), (vec![], vec![]), "blank lines are skipped");
    }

    #[test]
    fn missing_id_is_derived_from_the_line() {
        let text = FULL.replace("\"id\":\"0123a45b\",", "");
        let (a, _) = decode(&text);
        let (b, _) = decode(&text);
        assert!(a[0].id.to_string().starts_with("h-"));
        assert_eq!(a[0].id, b[0].id);
    }

    #[test]
    fn api_pages_yield_each_entry() {
        let page = format!(
            r#"{{"entries":[{FULL},{{"date_create":1}}],"response_metadata":{{"next_cursor":""}}}}"#
        );
        let (e, r) = decode(&page);
        assert_eq!(e.len(), 1);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].entry, Some(1));
        assert_eq!(r[0].reason, RejectReason::MissingAction);
    }
}
