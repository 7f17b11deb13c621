//! An audit entry's `id`. Slack's ids are lower-case UUIDs (`9d9b76ce-47bb-4838-a96a-1b5fd4d1b564`);
//! such an id is held as its 128 bits, in the event itself, and any other text as a shared
//! [`ArcStr`]. Every event has a distinct id, so as text each one was an allocation of its own,
//! made on a decoder thread and freed on a worker: on the 1M-event replay, freeing them took
//! about a seventh of the engine's time. Equality, order, hashing, display and serialization
//! are the text's (the representation is canonical: text in the UUID form is always held as
//! bits), so no result depends on which form an id is held in.

use std::cmp::Ordering;
use std::fmt;

use super::ArcStr;

/// An event id; see the module documentation.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventId(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    /// A lower-case hyphenated UUID: its 32 hex digits as (high, low) 64-bit halves.
    Uuid(u64, u64),
    /// Any other text (never text in the UUID form).
    Text(ArcStr),
}

/// The length of a hyphenated UUID, and where its hyphens are.
const UUID_LEN: usize = 36;
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

/// Each byte's value as a lower-case hex digit, or `NOT_HEX`.
const NOT_HEX: u8 = 0x80;
const HEX_VALUE: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// `acc` followed by the hex digits `digits` (lower case only), or `None` at any other byte.
/// Without a branch per digit: a byte that is not a digit only sets a flag, checked at the end.
fn hex_run(acc: u64, digits: &[u8]) -> Option<u64> {
    let (mut acc, mut flags) = (acc, 0u8);
    for &b in digits {
        let v = HEX_VALUE[usize::from(b)];
        flags |= v;
        acc = acc << 4 | u64::from(v & 0xf);
    }
    (flags & NOT_HEX == 0).then_some(acc)
}

/// The bits of `text` when it is a lower-case hyphenated UUID (upper-case digits are other
/// text: they would print differently). Runs once per decoded event, so the hyphens are checked
/// where they must be and each group of digits is read straight.
fn parse_uuid(text: &str) -> Option<(u64, u64)> {
    let b = text.as_bytes();
    if b.len() != UUID_LEN || HYPHENS.iter().any(|&i| b[i] != b'-') {
        return None;
    }
    // Digits 1-16 (groups of 8, 4 and 4) are the high half, 17-32 (4 and 12) the low.
    let hi = hex_run(hex_run(hex_run(0, &b[0..8])?, &b[9..13])?, &b[14..18])?;
    let lo = hex_run(hex_run(0, &b[19..23])?, &b[24..36])?;
    Some((hi, lo))
}

fn write_uuid(hi: u64, lo: u64, buf: &mut [u8; UUID_LEN]) -> &str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let bits = u128::from(hi) << 64 | u128::from(lo);
    let mut digit = 32;
    for (i, slot) in buf.iter_mut().enumerate() {
        if HYPHENS.contains(&i) {
            *slot = b'-';
        } else {
            digit -= 1;
            *slot = DIGITS[(bits >> (4 * digit)) as usize & 0xf];
        }
    }
    std::str::from_utf8(buf).expect("ASCII")
}

impl EventId {
    pub fn new(text: &str) -> EventId {
        match parse_uuid(text) {
            Some((hi, lo)) => EventId(Repr::Uuid(hi, lo)),
            None => EventId(Repr::Text(ArcStr::from(text))),
        }
    }

    /// Calls `f` with the id's text (written into a buffer on the stack for a UUID).
    pub fn with_text<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match &self.0 {
            Repr::Uuid(hi, lo) => f(write_uuid(*hi, *lo, &mut [0; UUID_LEN])),
            Repr::Text(text) => f(text),
        }
    }

    /// A 64-bit hash of the id, the same in every process and run (for sharding by id).
    pub fn stable_hash(&self) -> u64 {
        match &self.0 {
            Repr::Uuid(hi, lo) => {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&hi.to_le_bytes());
                bytes[8..].copy_from_slice(&lo.to_le_bytes());
                xxhash_rust::xxh3::xxh3_64(&bytes)
            }
            Repr::Text(text) => xxhash_rust::xxh3::xxh3_64(text.as_bytes()),
        }
    }
}

impl Ord for EventId {
    fn cmp(&self, other: &EventId) -> Ordering {
        match (&self.0, &other.0) {
            // Fixed-width lower-case hex with hyphens in the same places orders as its value.
            (Repr::Uuid(a, b), Repr::Uuid(c, d)) => (a, b).cmp(&(c, d)),
            (Repr::Text(a), Repr::Text(b)) => a.cmp(b),
            _ => self.with_text(|a| other.with_text(|b| a.cmp(b))),
        }
    }
}

impl PartialOrd for EventId {
    fn partial_cmp(&self, other: &EventId) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq<str> for EventId {
    fn eq(&self, other: &str) -> bool {
        self.with_text(|text| text == other)
    }
}

impl PartialEq<&str> for EventId {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

impl From<&str> for EventId {
    fn from(text: &str) -> EventId {
        EventId::new(text)
    }
}

impl From<String> for EventId {
    fn from(text: String) -> EventId {
        EventId::new(&text)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_text(|text| f.write_str(text))
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_text(|text| fmt::Debug::fmt(text, f))
    }
}

impl serde::Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_text(|text| s.serialize_str(text))
    }
}

impl<'de> serde::Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<EventId, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = EventId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event id string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EventId, E> {
                Ok(EventId::new(v))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::EventId;
    use proptest::prelude::*;
    use std::hash::{BuildHasher, RandomState};

    /// Texts in and near the UUID form: lower and upper case digits, hyphens moved or missing,
    /// one character short or long, and other text.
    fn id_text() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            1 => "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-fg]{12}",
            1 => "[0-9a-f-]{35,37}",
            1 => "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{11}[ -~]",
            1 => "[ -~]{0,40}",
            1 => "h-[0-9a-f]{32}",
            1 => ".{0,8}",
        ]
    }

    fn hash(id: &EventId, state: &RandomState) -> u64 {
        state.hash_one(id)
    }

    proptest! {
        /// Equality, order, hashing, display and serialization are the text's.
        #[test]
        fn an_id_behaves_as_its_text(
            a in id_text(),
            other in id_text(),
            pick in 0u8..3,
            at in 0usize..40,
            digit in "[0-9a-f]",
        ) {
            // b is a itself, a with one character replaced (ids that differ late), or another text.
            let b = match pick {
                0 => a.clone(),
                1 if a.is_ascii() && at < a.len() => {
                    format!("{}{digit}{}", &a[..at], &a[at + 1..])
                }
                _ => other,
            };
            let (x, y) = (EventId::new(&a), EventId::new(&b));
            prop_assert_eq!(x.to_string(), a.clone());
            prop_assert_eq!(format!("{x:?}"), format!("{a:?}"));
            prop_assert_eq!(serde_json::to_string(&x).unwrap(), serde_json::to_string(&a).unwrap());
            let back: EventId = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
            prop_assert!(back == x);
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            prop_assert_eq!(x == y, a == b);
            prop_assert!(x == *a.as_str());
            let state = RandomState::new();
            if x == y {
                prop_assert_eq!(hash(&x, &state), hash(&y, &state));
                prop_assert_eq!(x.stable_hash(), y.stable_hash());
            }
        }
    }

    #[test]
    fn slack_uuids_are_held_inline_and_other_text_is_not() {
        let uuid = "9d9b76ce-47bb-4838-a96a-1b5fd4d1b564";
        assert!(matches!(EventId::new(uuid).0, super::Repr::Uuid(..)));
        for other in [
            "9D9B76CE-47bb-4838-a96a-1b5fd4d1b564",
            "9d9b76ce-47bb-4838-a96a-1b5fd4d1b56",
            "9d9b76ce47bb-4838-a96a-1b5fd4d1b5640",
            "h-0123456789abcdef0123456789abcdef",
            "attack-1",
        ] {
            assert!(
                matches!(EventId::new(other).0, super::Repr::Text(..)),
                "{other}"
            );
            assert_eq!(EventId::new(other).to_string(), other);
        }
        assert_eq!(std::mem::size_of::<EventId>(), 24);
    }
}
