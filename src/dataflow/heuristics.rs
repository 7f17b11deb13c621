//! The heuristic detectors (DESIGN 4.2), per (enterprise, user): session fingerprints (the
//! stolen-cookie case), Tor exit nodes, scripted clients, and novelty of client family, ASN and
//! /16. They run inside the per-user stage of [`super::decide`], which routes events by user,
//! broadcasts the Tor exit list (so reloading it is a change of input) and hands a
//! [`Detector`] each second's events in id order once its inputs have passed that second.
//! Events from allow-listed networks only record their session's sighting, which the
//! decisions read; the detectors never see them.
//!
//! State is per user: sessions (a run of activity ends after H idle), and the last time each
//! client family, ASN and /16 was seen. Entries older than H are treated as absent and pruned as
//! the maps grow, and a user idle for H (plus an hour, for the activity count) and past the
//! session expiry is dropped, so memory follows recent activity, not the length of the stream.

use foldhash::{HashMap, HashMapExt};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::ops::Contents;
use crate::model::client::{client_family, fingerprint_net, novelty_prefix, Finding};
use crate::model::{Anomaly, ArcStr, Event, HeuristicParams, Time};

/// A session's run of activity as the detectors see it (events no allow-list trusts); it ends
/// after H idle.
#[derive(Default)]
struct Run {
    last: Time,
    ua: Option<ArcStr>,
    net: Option<ArcStr>,
    fingerprint_flagged: bool,
    tor_flagged: bool,
    client_flagged: bool,
}

/// A session of a user (events without a session id share one): its run, and its first and
/// last sighting in any event (allow-listed ones too) for the decisions' session age (DESIGN
/// 5). One entry for both, so an event costs one lookup of its session.
struct Session {
    /// `None` before the session's first event that no allow-list trusts, and after H idle
    /// (once pruned).
    run: Option<Run>,
    first_seen: Time,
    last_seen: Time,
}

impl Session {
    fn new(now: Time) -> Session {
        Session {
            run: None,
            first_seen: now,
            last_seen: now,
        }
    }

    /// Records a sighting at `now`: a session idle for longer than `expiry` is seen anew.
    fn sighted(&mut self, now: Time, expiry: u64) {
        if now - self.last_seen > expiry {
            self.first_seen = now;
        }
        self.last_seen = now;
    }
}

#[derive(Default)]
struct UserState {
    /// The user's last event that no allow-list trusts.
    last: Time,
    /// The user's last event with a session (allow-listed or not): its sessions' sightings
    /// matter until the session expiry after it.
    seen_last: Time,
    /// Events per hour bucket, for the activity count.
    hours: VecDeque<(u64, u64)>,
    /// The sum of `hours`' counts, kept as buckets come and go (summing them for every event
    /// walked up to H / 1 hour buckets: 336 for 14 days).
    active: u64,
    sessions: HashMap<Option<ArcStr>, Session>,
    families: HashMap<ArcStr, Time>,
    asns: HashMap<u32, Time>,
    prefixes: HashMap<ArcStr, Time>,
    /// Map sizes after the last prune, to prune again when they have doubled.
    pruned_at: usize,
}

impl UserState {
    fn size(&self) -> usize {
        self.hours.len()
            + self.sessions.len()
            + self.families.len()
            + self.asns.len()
            + self.prefixes.len()
    }

    /// Drops what is older than H, and sessions neither in a run within H nor sighted within
    /// the session expiry (events without a session id have no sighting the decisions read).
    fn prune(&mut self, now: Time, h: u64, expiry: u64) {
        self.sessions.retain(|id, s| {
            if s.run.as_ref().is_some_and(|r| now - r.last > h) {
                s.run = None;
            }
            s.run.is_some() || (id.is_some() && now - s.last_seen <= expiry)
        });
        self.families.retain(|_, t| now - *t <= h);
        self.asns.retain(|_, t| now - *t <= h);
        self.prefixes.retain(|_, t| now - *t <= h);
        self.pruned_at = self.size();
    }

    /// Records a sighting of `session` at `now` (an event that no detector sees).
    fn sighted(&mut self, session: &Option<ArcStr>, now: Time, expiry: u64) {
        match self.sessions.get_mut(session) {
            Some(known) => known.sighted(now, expiry),
            None => {
                self.sessions.insert(session.clone(), Session::new(now));
            }
        }
        self.seen_last = now;
    }

    /// The time after which forgetting the user changes nothing: no heuristic entry is within
    /// H and no hour bucket is left (an hour more), and no session is within the expiry.
    fn forgettable_after(&self, h: u64, expiry: u64) -> Time {
        (self.last + h + 3600).max(self.seen_last + expiry)
    }
}

/// What the detectors derive from a user agent (client family, scripted) and from an address
/// (fingerprint network, novelty prefix), computed once per distinct value instead of once per
/// event: parsing and formatting addresses and lower-casing user agents was a tenth of the
/// workers' time. Handed out by reference: cloning the derived texts and dropping the clones
/// cost two reference-count writes per text per event.
#[derive(Default)]
struct Derived {
    families: ByText<(ArcStr, bool)>,
    nets: ByText<Nets>,
}

/// One derived value per interned text, keyed by the text's address; each entry holds its text,
/// so that address cannot be reused while the entry lives. Text that was not shared (an
/// interning cache was full) only costs an extra entry. Cleared when it reaches
/// [`ByText::CAP`] entries.
struct ByText<V> {
    map: HashMap<usize, (ArcStr, V)>,
}

impl<V> Default for ByText<V> {
    fn default() -> Self {
        ByText {
            map: HashMap::new(),
        }
    }
}

impl<V> ByText<V> {
    const CAP: usize = 1 << 16;

    fn get(&mut self, text: &ArcStr, derive: impl FnOnce(&str) -> V) -> &V {
        if self.map.len() >= Self::CAP {
            self.map.clear();
        }
        let entry = self
            .map
            .entry(text.as_ptr() as usize)
            .or_insert_with(|| (text.clone(), derive(text)));
        &entry.1
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// An address's networks: the /24 (/64) of a session fingerprint and the /16 (/32) the
/// novelty detector learns.
struct Nets {
    fingerprint: Option<ArcStr>,
    novelty: Option<ArcStr>,
}

/// A user agent's client family, and whether it is a scripted client.
fn family_of(ua: &str, scripted: &[String]) -> (ArcStr, bool) {
    let (family, scripted) = client_family(ua, scripted);
    (ArcStr::from(family), scripted)
}

fn nets_of(ip: &str) -> Nets {
    Nets {
        fingerprint: fingerprint_net(Some(ip), None).map(ArcStr::from),
        novelty: novelty_prefix(ip).map(ArcStr::from),
    }
}

/// The parameters, with which detectors are on looked up once: `HeuristicParams::on` is a set
/// lookup by name, and `observe` asked it up to six times per event.
struct On {
    params: HeuristicParams,
    tor: bool,
    client: bool,
    fingerprint: bool,
    user_agent: bool,
    asn: bool,
    ip_address: bool,
    /// How long a session's sighting is kept for the decisions (`engine.session_expiry`).
    session_expiry: u64,
}

impl On {
    fn new(params: HeuristicParams, session_expiry: u64) -> On {
        On {
            session_expiry,
            tor: params.on("tor"),
            client: params.on("unexpected_client"),
            fingerprint: params.on("session_fingerprint"),
            user_agent: params.on("unexpected_user_agent"),
            asn: params.on("asn"),
            ip_address: params.on("ip_address"),
            params,
        }
    }
}

/// Records that `key` was seen at `now`; returns whether it had been seen within `h` before.
/// One lookup when the key is known (nearly always), and a copy of it only when it is new.
fn see<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Time>,
    key: &K,
    now: Time,
    h: u64,
) -> bool {
    match map.get_mut(key) {
        Some(last) => now - std::mem::replace(last, now) <= h,
        None => {
            map.insert(key.clone(), now);
            false
        }
    }
}

/// How many keys other than the one just seen at `now` were seen within `h` (after [`see`]:
/// the key seen counts itself, at `now`).
fn others_within<K>(map: &HashMap<K, Time>, now: Time, h: u64) -> usize {
    map.values().filter(|t| now - **t <= h).count() - 1
}

/// The heuristic detectors' state on one worker: the users routed to it, the Tor exit list in
/// force, and the values derived from texts. The decision stage ([`super::decide`]) owns one and
/// hands it each second's events in id order; it also keeps, per user, when each session was
/// first and last seen, for the decisions' session age.
pub struct Detector {
    on: On,
    tor: Contents<String>,
    users: HashMap<(ArcStr, ArcStr), UserState>,
    derived: Derived,
    /// When each remembered user is next checked for idleness (every user has one check).
    idle_at: BTreeMap<Time, Vec<(ArcStr, ArcStr)>>,
    /// The entries held (sessions kept only for their sightings included).
    size: usize,
    /// The largest state this worker has published to `state_size`.
    largest: usize,
    state_size: Arc<AtomicUsize>,
}

impl Detector {
    /// `state_size` records the largest state (heuristic entries and users) any worker held,
    /// for tests and metrics; `session_expiry` is how long a session's sighting is kept.
    pub fn new(params: HeuristicParams, session_expiry: u64, state_size: Arc<AtomicUsize>) -> Self {
        Detector {
            on: On::new(params, session_expiry),
            tor: Contents::default(),
            users: HashMap::new(),
            derived: Derived::default(),
            idle_at: BTreeMap::new(),
            size: 0,
            largest: 0,
            state_size,
        }
    }

    /// Applies one time's updates of the Tor exit list.
    pub fn apply_tor(&mut self, updates: impl IntoIterator<Item = (String, isize)>) {
        self.tor.apply(updates);
    }

    /// Applies one event at `now` (a second's events come in id order), emitting what it
    /// reveals. Every event records its session's sighting; an event from a network an
    /// allow-list trusts (`trusted`) goes no further.
    pub fn event(&mut self, event: &Event, now: Time, trusted: bool, emit: impl FnMut(Anomaly)) {
        let h = self.on.params.history;
        if trusted && event.session.is_none() {
            tracing::trace!(id = %event.id, "event from an allow-listed network");
            return;
        }
        let key = (event.enterprise.clone(), event.user.clone());
        let user = match self.users.entry(key) {
            Entry::Occupied(user) => user.into_mut(),
            Entry::Vacant(new) => {
                // Every remembered user has exactly one pending idle check: first the earliest
                // it could be forgotten, then as [`Detector::end_second`] finds.
                self.idle_at
                    .entry(now + (h + 3600).min(self.on.session_expiry) + 1)
                    .or_default()
                    .push(new.key().clone());
                new.insert(UserState::default())
            }
        };
        self.size -= user.size();
        if trusted {
            tracing::trace!(id = %event.id, "event from an allow-listed network");
            user.sighted(&event.session, now, self.on.session_expiry);
        } else {
            observe(
                user,
                event,
                now,
                &self.on,
                &self.tor,
                &mut self.derived,
                emit,
            );
        }
        if user.size() > 2 * user.pruned_at.max(8) {
            user.prune(now, h, self.on.session_expiry);
        }
        self.size += user.size();
    }

    /// When `session` of `user` in `enterprise` was first seen, if it was seen within the
    /// session expiry before `now`.
    pub fn first_seen(
        &self,
        enterprise: &str,
        user: &str,
        session: &str,
        now: Time,
    ) -> Option<Time> {
        let user = self
            .users
            .get(&(ArcStr::from(enterprise), ArcStr::from(user)))?;
        let seen = user.sessions.get(&Some(ArcStr::from(session)))?;
        (now - seen.last_seen <= self.on.session_expiry).then_some(seen.first_seen)
    }

    /// Ends second `now`: forgets the users idle long enough that forgetting them changes
    /// nothing (no heuristic entry within H, no hour bucket left, no session within the
    /// expiry), and publishes the state's size.
    pub fn end_second(&mut self, now: Time) {
        let h = self.on.params.history;
        while let Some(entry) = self.idle_at.first_entry() {
            if *entry.key() > now {
                break;
            }
            for key in entry.remove() {
                match self.users.get(&key) {
                    Some(u) if now > u.forgettable_after(h, self.on.session_expiry) => {
                        self.size -= self.users.remove(&key).map_or(0, |u| u.size());
                    }
                    Some(u) => {
                        let at = u.forgettable_after(h, self.on.session_expiry) + 1;
                        self.idle_at.entry(at).or_default().push(key);
                    }
                    None => {}
                }
            }
        }
        // Published only when this worker's own largest grows: a write per second to a
        // counter both workers share would move its cache line between their cores.
        if self.size + self.users.len() > self.largest {
            self.largest = self.size + self.users.len();
            self.state_size.fetch_max(self.largest, Ordering::Relaxed);
        }
    }
}

/// Applies one event to a user's state, emitting what it reveals.
fn observe(
    user: &mut UserState,
    event: &Event,
    now: Time,
    on: &On,
    tor: &Contents<String>,
    derived: &mut Derived,
    mut emit: impl FnMut(Anomaly),
) {
    let params = &on.params;
    let h = params.history;
    // Activity in H: events in hour buckets that end after now - H.
    while let Some((_, gone)) = user
        .hours
        .pop_front_if(|(b, _)| (*b + 1) * 3600 <= now.saturating_sub(h))
    {
        user.active -= gone;
    }
    let active = user.active;
    debug_assert_eq!(active, user.hours.iter().map(|(_, c)| c).sum::<u64>());
    let experienced = active >= params.min_history;
    // The event's session: sighted, and its run started anew after H idle (one lookup when
    // the session is known).
    let session = match user.sessions.get_mut(&event.session) {
        Some(session) => {
            session.sighted(now, on.session_expiry);
            session
        }
        None => {
            user.sessions
                .insert(event.session.clone(), Session::new(now));
            user.sessions.get_mut(&event.session).expect("inserted")
        }
    };
    if event.session.is_some() {
        user.seen_last = now;
    }
    if session.run.as_ref().is_none_or(|run| now - run.last > h) {
        session.run = Some(Run::default());
    }
    let run = session.run.as_mut().expect("a run");
    let mut found = |finding: Finding, known: usize| emit(finding.anomaly(event, now, known, h));
    let family = event.ua.as_ref().map(|ua| {
        derived
            .families
            .get(ua, |ua| family_of(ua, &params.scripted_clients))
    });
    let nets = event.ip.as_ref().map(|ip| derived.nets.get(ip, nets_of));
    // Tor exit nodes: once per (user, session run).
    if on.tor && !run.tor_flagged {
        if let Some(ip) = event.ip.as_deref().filter(|ip| tor.contains(*ip)) {
            run.tor_flagged = true;
            found(Finding::Tor { ip: ip.to_string() }, 0);
        }
    }
    // Scripted clients: once per (user, session run).
    if let Some((client, true)) = family {
        if on.client && !run.client_flagged {
            run.client_flagged = true;
            found(
                Finding::ScriptedClient {
                    client: client.to_string(),
                },
                0,
            );
        }
    }
    // Session fingerprint: the session's first user agent and network, learned as they appear.
    if event.session.is_some() {
        let asn_net;
        let net = match event.asn {
            Some(asn) => {
                asn_net = fingerprint_net(None, Some(asn)).map(ArcStr::from);
                asn_net.as_ref()
            }
            None => nets.and_then(|n| n.fingerprint.as_ref()),
        };
        let ua_changed = matches!((&run.ua, &event.ua), (Some(a), Some(b)) if a != b);
        let net_changed = matches!((&run.net, net), (Some(a), Some(b)) if a != b);
        if (ua_changed || net_changed) && on.fingerprint && !run.fingerprint_flagged {
            run.fingerprint_flagged = true;
            let finding = Finding::Fingerprint {
                first_ua: run.ua.clone(),
                first_net: run.net.as_ref().map(|n| n.to_string()),
                net: net.map(|n| n.to_string()),
            };
            found(finding, 0);
        }
        if run.ua.is_none() {
            run.ua = event.ua.clone();
        }
        if run.net.is_none() {
            run.net = net.cloned();
        }
    }
    run.last = now;
    // Novelty, for users with enough recent history.
    // Each is recorded as seen in one lookup; the count of the others known is taken after.
    if let Some((family, scripted)) = family {
        let seen = see(&mut user.families, family, now, h);
        if experienced && !*scripted && on.user_agent && !seen {
            let known = others_within(&user.families, now, h);
            let finding = Finding::NewFamily {
                family: family.to_string(),
                active,
            };
            found(finding, known);
        }
    }
    if let Some(asn) = event.asn {
        let seen = see(&mut user.asns, &asn, now, h);
        if experienced && on.asn && !seen {
            found(Finding::NewAsn { asn }, others_within(&user.asns, now, h));
        }
    }
    if let Some(prefix) = nets.and_then(|n| n.novelty.as_ref()) {
        let seen = see(&mut user.prefixes, prefix, now, h);
        if experienced && on.ip_address && !seen {
            let finding = Finding::NewPrefix {
                prefix: prefix.to_string(),
            };
            found(finding, others_within(&user.prefixes, now, h));
        }
    }
    let bucket = now / 3600;
    match user.hours.back_mut() {
        Some((b, c)) if *b == bucket => *c += 1,
        _ => user.hours.push_back((bucket, 1)),
    }
    user.active += 1;
    user.last = now;
}

/// Loads a Tor exit-node list: one IP per line, `#` comments and blank lines ignored; lines that
/// are not IPs are reported.
pub fn parse_tor_list(text: &str) -> (BTreeSet<String>, Vec<(usize, String)>) {
    let mut ips = BTreeSet::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        // Tor's own bulk list prefixes lines with "ExitAddress"; accept either form.
        let ip = line.strip_prefix("ExitAddress ").unwrap_or(line);
        let ip = ip.split_whitespace().next().unwrap_or("");
        match ip.parse::<std::net::IpAddr>() {
            Ok(addr) => {
                ips.insert(addr.to_string());
            }
            Err(_) => bad.push((i + 1, line.to_string())),
        }
    }
    (ips, bad)
}

#[cfg(test)]
mod tests {
    use super::{family_of, nets_of, parse_tor_list, ByText, Derived, Nets};
    use crate::model::client::{client_family, fingerprint_net, novelty_prefix};
    use crate::model::ArcStr;

    #[test]
    fn derived_values_match_the_helpers_whatever_the_sharing() {
        let scripted = crate::config::default_scripted_clients();
        let mut derived = Derived::default();
        let ua = ArcStr::from("curl/8.5.0");
        let copy = ArcStr::from("curl/8.5.0");
        assert!(!ArcStr::ptr_eq(&ua, &copy));
        for u in [&ua, &copy, &ua] {
            let (family, is_scripted) = derived.families.get(u, |u| family_of(u, &scripted));
            assert_eq!(
                (family.to_string(), *is_scripted),
                client_family(u, &scripted)
            );
        }
        assert_eq!(derived.families.len(), 2, "one entry per allocation");
        for text in ["1.2.3.4", "2001:db8:1:2::5", "not an address"] {
            let nets = derived.nets.get(&ArcStr::from(text), nets_of);
            assert_eq!(
                nets.fingerprint.as_deref(),
                fingerprint_net(Some(text), None).as_deref()
            );
            assert_eq!(nets.novelty.as_deref(), novelty_prefix(text).as_deref());
        }
        // The cache starts over at its bound instead of growing.
        let kept: Vec<ArcStr> = (0..ByText::<Nets>::CAP + 10)
            .map(|i| ArcStr::from(format!("10.0.{}.{}", i / 256 % 256, i % 256)))
            .collect();
        for ip in &kept {
            derived.nets.get(ip, nets_of);
        }
        assert!(derived.nets.len() <= ByText::<Nets>::CAP);
        assert_eq!(
            derived.nets.get(&kept[5], nets_of).fingerprint.as_deref(),
            Some("10.0.0.0/24")
        );
    }

    #[test]
    fn tor_lists_allow_comments_and_report_bad_lines() {
        let text = "# exit nodes\n185.220.101.1\n\n2001:db8::1  # v6\nExitAddress 204.8.156.142 2024-01-01 00:00:00\nnot-an-ip\n";
        let (ips, bad) = parse_tor_list(text);
        assert_eq!(
            ips.into_iter().collect::<Vec<_>>(),
            vec!["185.220.101.1", "2001:db8::1", "204.8.156.142"]
        );
        assert_eq!(bad, vec![(6, "not-an-ip".to_string())]);
    }
}
