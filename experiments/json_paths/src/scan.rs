//! A hand-written scanner for the common subset of Slack audit entries, written only to measure
//! what skipping serde's machinery could give: an object whose strings hold no escape (`\`)
//! and no control character, each field of interest a string at most once (`date_create` a
//! non-negative integer), no `entries`. Everything it does not decline is valid JSON, walked
//! completely; what it declines (`None`) a real decoder would hand to serde_json. aer does not
//! use it: the brief asks for crates where crates do the job, and the gain measured here
//! (README, "Performance") does not reach the target on its own.

pub struct Fields<'a> {
    pub id: Option<&'a str>,
    pub date: Option<u64>,
    pub action: Option<&'a str>,
    pub user: Option<&'a str>,
    pub enterprise: Option<&'a str>,
    pub session: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub ua: Option<&'a str>,
}

/// Nesting deeper than this is declined.
const MAX_DEPTH: usize = 100;

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.at += 1)
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let rest = &self.bytes[self.at..];
        let end = memchr::memchr2(b'"', b'\\', rest)?;
        // No early exit, so that the check vectorises.
        let control = rest[..end].iter().fold(false, |any, &c| any | (c < 0x20));
        if rest[end] != b'"' || control {
            return None;
        }
        let text = &self.text[self.at..self.at + end];
        self.at += end + 1;
        Some(text)
    }

    /// A number as JSON writes them.
    fn number(&mut self) -> Option<&'a str> {
        self.skip_space();
        let (b, start) = (self.bytes, self.at);
        let mut i = start;
        let digits = |i: &mut usize| {
            let from = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > from
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => {
                digits(&mut i);
            }
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i).then_some(())?;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            digits(&mut i).then_some(())?;
        }
        self.at = i;
        Some(&self.text[start..i])
    }

    /// Walks any value, checking it.
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(|_, s| s.skip(depth + 1)),
            b'[' => self.items(b'[', b']', |s| s.skip(depth + 1)),
            b't' => self.word("true"),
            b'f' => self.word("false"),
            b'n' => self.word("null"),
            _ => self.number().map(drop),
        }
    }

    fn word(&mut self, word: &str) -> Option<()> {
        self.bytes[self.at..]
            .starts_with(word.as_bytes())
            .then(|| self.at += word.len())
    }

    /// Walks an object, handing each key to `field`, which must walk its value.
    fn object(&mut self, mut field: impl FnMut(&'a str, &mut Self) -> Option<()>) -> Option<()> {
        self.items(b'{', b'}', |s| {
            let key = s.string()?;
            s.eat(b':')?;
            field(key, s)
        })
    }

    /// Walks `open`, items separated by commas (each walked by `item`), and `close`.
    fn items(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        if self.peek()? == close {
            self.at += 1;
            return Some(());
        }
        loop {
            item(self)?;
            match self.peek()? {
                b',' => self.at += 1,
                c if c == close => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string field, declined when repeated (serde_json rejects a repeated known field).
    fn once(&mut self, slot: &mut Option<&'a str>) -> Option<()> {
        if slot.is_some() || self.peek()? != b'"' {
            return None;
        }
        *slot = Some(self.string()?);
        Some(())
    }

    /// An object field seen for the first time, walked with `field`.
    fn nested(
        &mut self,
        seen: &mut bool,
        field: impl FnMut(&'a str, &mut Self) -> Option<()>,
    ) -> Option<()> {
        if std::mem::replace(seen, true) {
            return None;
        }
        self.object(field)
    }
}

pub fn scan(line: &str) -> Option<Fields<'_>> {
    let mut s = Scanner {
        text: line,
        bytes: line.as_bytes(),
        at: 0,
    };
    let mut f = Fields {
        id: None,
        date: None,
        action: None,
        user: None,
        enterprise: None,
        session: None,
        ip: None,
        ua: None,
    };
    let (mut actor, mut user, mut context, mut location) = (false, false, false, false);
    s.object(|key, s| match key {
        "id" => s.once(&mut f.id),
        "action" => s.once(&mut f.action),
        "date_create" if f.date.is_none() => {
            f.date = Some(s.number()?.parse().ok()?);
            Some(())
        }
        "actor" => s.nested(&mut actor, |key, s| match key {
            "user" => s.nested(&mut user, |key, s| match key {
                "id" => s.once(&mut f.user),
                _ => s.skip(3),
            }),
            _ => s.skip(2),
        }),
        "context" => s.nested(&mut context, |key, s| match key {
            "location" => s.nested(&mut location, |key, s| match key {
                "id" => s.once(&mut f.enterprise),
                _ => s.skip(3),
            }),
            "session_id" => s.once(&mut f.session),
            "ip_address" => s.once(&mut f.ip),
            "ua" => s.once(&mut f.ua),
            _ => s.skip(2),
        }),
        "date_create" | "entries" => None,
        _ => s.skip(1),
    })?;
    s.skip_space();
    (s.at == s.bytes.len()).then_some(f)
}
