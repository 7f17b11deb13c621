//! How fast can the fields aer's decoder needs be taken from a JSON line? Each path extracts the
//! same eight fields (id, date_create, action, actor.user.id, context.location.id,
//! context.session_id, context.ip_address, context.ua) from the same lines on one thread, and
//! the best of several rounds is printed in nanoseconds per line.
//!
//! `cargo run --release -- FILE [LINES] [ROUNDS]` (defaults: 200,000 lines, 5 rounds), with a
//! file from `aer generate`.

mod scan;

use serde::Deserialize;
use std::borrow::Cow;
use std::time::{Duration, Instant};

/// `actor.user` and `context.location`: aer reads only their `id`.
#[derive(Deserialize, Default)]
struct WithId<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct Actor<'a> {
    #[serde(default, borrow)]
    user: Option<WithId<'a>>,
}

#[derive(Deserialize, Default)]
struct Context<'a> {
    #[serde(default, borrow)]
    location: Option<WithId<'a>>,
    #[serde(default, borrow)]
    session_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    ip_address: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    ua: Option<Cow<'a, str>>,
}

/// aer's shape (`src/io/codec.rs`), with plain strings and integers where aer accepts either.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    date_create: Option<u64>,
    #[serde(default, borrow)]
    action: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    actor: Option<Actor<'a>>,
    #[serde(default, borrow)]
    context: Option<Context<'a>>,
}

/// aer's `Scalar`: ids and times read with `deserialize_any`, as strings or numbers.
enum Scalar<'a> {
    UInt(u64),
    Text(Cow<'a, str>),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Scalar<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::UInt(v))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
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

impl<'a> Scalar<'a> {
    fn text(&self) -> Option<&str> {
        match self {
            Scalar::Text(t) => Some(t),
            _ => None,
        }
    }
}

#[derive(Deserialize, Default)]
struct SWithId<'a> {
    #[serde(default, borrow)]
    id: Option<Scalar<'a>>,
}

#[derive(Deserialize, Default)]
struct SActor<'a> {
    #[serde(default, borrow)]
    user: Option<SWithId<'a>>,
}

#[derive(Deserialize, Default)]
struct SContext<'a> {
    #[serde(default, borrow)]
    location: Option<SWithId<'a>>,
    #[serde(default, borrow)]
    session_id: Option<Scalar<'a>>,
    #[serde(default, borrow)]
    ip_address: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    ua: Option<Cow<'a, str>>,
}

/// aer's shape exactly: scalars where aer accepts strings or numbers.
#[derive(Deserialize)]
struct SLine<'a> {
    #[serde(default, borrow)]
    id: Option<Scalar<'a>>,
    #[serde(default, borrow)]
    date_create: Option<Scalar<'a>>,
    #[serde(default, borrow)]
    action: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    actor: Option<SActor<'a>>,
    #[serde(default, borrow)]
    context: Option<SContext<'a>>,
}

fn scalar_fields(l: SLine) -> usize {
    let user = l.actor.and_then(|a| a.user).and_then(|u| u.id);
    let c = l.context.unwrap_or_default();
    let enterprise = c.location.and_then(|l| l.id);
    let time = match l.date_create {
        Some(Scalar::UInt(t)) => Some(t),
        _ => None,
    };
    digest(
        [
            l.id.as_ref().and_then(Scalar::text),
            l.action.as_deref(),
            user.as_ref().and_then(Scalar::text),
            enterprise.as_ref().and_then(Scalar::text),
            c.session_id.as_ref().and_then(Scalar::text),
            c.ip_address.as_deref(),
            c.ua.as_deref(),
        ],
        time,
    )
}

/// serde_json into aer's exact shape.
fn serde_scalar(line: &str) -> usize {
    scalar_fields(serde_json::from_str(line).expect("valid"))
}

/// sonic-rs into aer's exact shape.
fn sonic_scalar(line: &str) -> usize {
    scalar_fields(sonic_rs::from_str(line).expect("valid"))
}

/// The eight fields' lengths and the time, summed: what every path must agree on.
fn digest<'a>(texts: impl IntoIterator<Item = Option<&'a str>>, time: Option<u64>) -> usize {
    texts
        .into_iter()
        .map(|t| t.map_or(0, str::len))
        .sum::<usize>()
        + time.unwrap_or(0) as usize
}

/// serde_json validating and skipping the whole line, extracting nothing: the floor of any
/// serde_json path.
fn serde_ignored(line: &str) -> usize {
    serde_json::from_str::<serde::de::IgnoredAny>(line).map_or(0, |_| 1)
}

/// serde_json into derived structs borrowing the line, as aer's decoder does.
fn serde_derive(line: &str) -> usize {
    fields(serde_json::from_str(line).expect("valid"))
}

/// sonic-rs's serde deserializer into the same derived structs.
fn sonic_derive(line: &str) -> usize {
    fields(sonic_rs::from_str(line).expect("valid"))
}

/// simd-json's serde deserializer into the same derived structs (it parses in place, so a copy).
fn simd_json_derive(line: &str) -> usize {
    let mut buf = line.as_bytes().to_vec();
    fields(simd_json::serde::from_slice(&mut buf).expect("valid"))
}

/// The digest of a line deserialized into aer's shape.
fn fields(l: Line) -> usize {
    let user = l.actor.and_then(|a| a.user).and_then(|u| u.id);
    let c = l.context.unwrap_or_default();
    let enterprise = c.location.and_then(|l| l.id);
    digest(
        [
            l.id.as_deref(),
            l.action.as_deref(),
            user.as_deref(),
            enterprise.as_deref(),
            c.session_id.as_deref(),
            c.ip_address.as_deref(),
            c.ua.as_deref(),
        ],
        l.date_create,
    )
}

/// A hand-written scanner for the common subset (`scan.rs`); it declines anything else.
fn hand_scanner(line: &str) -> usize {
    let f = scan::scan(line).expect("the generated lines are in the subset");
    digest(
        [f.id, f.action, f.user, f.enterprise, f.session, f.ip, f.ua],
        f.date,
    )
}

/// sonic-rs: iterating objects lazily, skipping unwanted values.
fn sonic_object_iter(line: &str) -> usize {
    use sonic_rs::to_object_iter;
    let text = |v: &sonic_rs::LazyValue| v.as_raw_str().len() - 2;
    let mut n = 0;
    for kv in to_object_iter(line) {
        let (k, v) = kv.expect("valid");
        match &*k {
            "id" | "action" => n += text(&v),
            "date_create" => n += v.as_raw_str().parse::<usize>().expect("integer"),
            "actor" => {
                for kv in to_object_iter(v.as_raw_str()) {
                    let (k, v) = kv.expect("valid");
                    if &*k == "user" {
                        for kv in to_object_iter(v.as_raw_str()) {
                            let (k, v) = kv.expect("valid");
                            if &*k == "id" {
                                n += text(&v);
                            }
                        }
                    }
                }
            }
            "context" => {
                for kv in to_object_iter(v.as_raw_str()) {
                    let (k, v) = kv.expect("valid");
                    match &*k {
                        "location" => {
                            for kv in to_object_iter(v.as_raw_str()) {
                                let (k, v) = kv.expect("valid");
                                if &*k == "id" {
                                    n += text(&v);
                                }
                            }
                        }
                        "session_id" | "ip_address" | "ua" => n += text(&v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    n
}

/// simd-json: a borrowed value tree of the line (which it parses in place, so a copy).
fn simd_json_value(line: &str) -> usize {
    use simd_json::prelude::*;
    let mut buf = line.as_bytes().to_vec();
    let v = simd_json::to_borrowed_value(&mut buf).expect("valid");
    let user = v.get("actor").and_then(|a| a.get("user"));
    let c = v.get("context");
    digest(
        [
            v.get_str("id"),
            v.get_str("action"),
            user.and_then(|u| u.get_str("id")),
            c.and_then(|c| c.get("location"))
                .and_then(|l| l.get_str("id")),
            c.and_then(|c| c.get_str("session_id")),
            c.and_then(|c| c.get_str("ip_address")),
            c.and_then(|c| c.get_str("ua")),
        ],
        v.get_u64("date_create"),
    )
}

/// The eight paths, in the order [`sonic_get_many`] returns them.
fn pointer_tree() -> sonic_rs::PointerTree {
    let mut tree = sonic_rs::PointerTree::new();
    tree.add_path(["id"]);
    tree.add_path(["action"]);
    tree.add_path(["actor", "user", "id"]);
    tree.add_path(["context", "location", "id"]);
    tree.add_path(["context", "session_id"]);
    tree.add_path(["context", "ip_address"]);
    tree.add_path(["context", "ua"]);
    tree.add_path(["date_create"]);
    tree
}

thread_local! {
    static TREE: sonic_rs::PointerTree = pointer_tree();
}

/// sonic-rs's `get_many`: the eight paths looked up in one pass (it checks the JSON it skips).
fn sonic_get_many(line: &str) -> usize {
    use sonic_rs::JsonValueTrait;
    TREE.with(|tree| {
        let v = sonic_rs::get_many(line, tree).expect("valid");
        let s = |i: usize| v[i].as_ref().and_then(|v| v.as_str());
        digest(
            [s(0), s(1), s(2), s(3), s(4), s(5), s(6)],
            v[7].as_ref().and_then(|v| v.as_u64()),
        )
    })
}

/// sonic-rs, validating and skipping the line (the floor of any sonic-rs path).
fn sonic_ignored(line: &str) -> usize {
    sonic_rs::from_str::<serde::de::IgnoredAny>(line).map_or(0, |_| 1)
}

/// One way of taking the fields from a line; returns their digest.
type Path = fn(&str) -> usize;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: json_paths FILE [LINES] [ROUNDS]");
    let limit: usize = args.next().map_or(200_000, |a| a.parse().expect("LINES"));
    let rounds: usize = args.next().map_or(5, |a| a.parse().expect("ROUNDS"));
    let text = std::fs::read_to_string(&path).expect("read FILE");
    let lines: Vec<&str> = text.lines().take(limit).collect();
    let paths: [(&str, Path); 12] = [
        ("serde_json, IgnoredAny (floor)", serde_ignored),
        ("serde_json, derived structs (aer)", serde_derive),
        ("hand-written subset scanner", hand_scanner),
        ("sonic-rs, lazy object iteration", sonic_object_iter),
        ("simd-json, borrowed value", simd_json_value),
        ("sonic-rs, derived structs", sonic_derive),
        ("simd-json, derived structs", simd_json_derive),
        ("serde_json, aer's scalars", serde_scalar),
        ("sonic-rs, aer's scalars", sonic_scalar),
        ("serde_json, derived structs (again)", serde_derive),
        ("sonic-rs, get_many", sonic_get_many),
        ("sonic-rs, IgnoredAny (floor)", sonic_ignored),
    ];
    let expected = lines.iter().map(|l| serde_derive(l)).sum::<usize>();
    let mut best = [Duration::MAX; 12];
    // Rounds interleave the paths, so that a slow spell of the machine hits them all.
    for _ in 0..rounds {
        for (i, (name, f)) in paths.iter().enumerate() {
            let started = Instant::now();
            let sum = lines.iter().map(|l| f(l)).sum::<usize>();
            best[i] = best[i].min(started.elapsed());
            if i > 0 && !name.contains("floor") {
                assert_eq!(sum, expected, "{name} disagrees");
            }
        }
    }
    println!("{} lines, best of {rounds} rounds", lines.len());
    for ((name, _), best) in paths.iter().zip(best) {
        let per_line = best.as_nanos() as f64 / lines.len() as f64;
        println!("{name:38} {per_line:6.0} ns/line");
    }
}
