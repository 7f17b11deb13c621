//! The heuristic detectors (DESIGN 4.2) as one deterministic stage keyed by (enterprise, user):
//! session fingerprints (the stolen-cookie case), Tor exit nodes, scripted clients, and novelty
//! of client family, ASN and /16. Events arrive screened of allow-listed networks and routed by
//! user; the Tor exit list is a broadcast collection, so reloading it is a change of input. Each
//! second is processed once both inputs have passed it, its events in id order.
//!
//! State is per user: sessions (a run of activity ends after H idle), and the last time each
//! client family, ASN and /16 was seen. Entries older than H are treated as absent and pruned as
//! the maps grow, and a user idle for H (plus an hour, for the activity count) is dropped, so
//! memory follows recent activity, not the length of the stream.

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use foldhash::{HashMap, HashMapExt};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Broadcast;

use super::ops::{ordered_binary, Contents};
use crate::model::client::{client_family, fingerprint_net, novelty_prefix, Finding};
use crate::model::{Anomaly, ArcStr, Event, HeuristicParams, SharedEvent, Time};

#[derive(Default)]
struct Run {
    last: Time,
    ua: Option<ArcStr>,
    net: Option<ArcStr>,
    fingerprint_flagged: bool,
    tor_flagged: bool,
    client_flagged: bool,
}

#[derive(Default)]
struct UserState {
    last: Time,
    /// Events per hour bucket, for the activity count.
    hours: VecDeque<(u64, u64)>,
    /// The sum of `hours`' counts, kept as buckets come and go (summing them for every event
    /// walked up to H / 1 hour buckets: 336 for 14 days).
    active: u64,
    sessions: HashMap<Option<ArcStr>, Run>,
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

    fn prune(&mut self, now: Time, h: u64) {
        self.sessions.retain(|_, r| now - r.last <= h);
        self.families.retain(|_, t| now - *t <= h);
        self.asns.retain(|_, t| now - *t <= h);
        self.prefixes.retain(|_, t| now - *t <= h);
        self.pruned_at = self.size();
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
}

impl On {
    fn new(params: HeuristicParams) -> On {
        On {
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

/// Builds the heuristic detectors. `state_size` records the largest state (entries) any worker
/// held, for tests and metrics.
pub fn detect<'s>(
    events: VecCollection<'s, Time, SharedEvent, isize>,
    tor: VecCollection<'s, Time, String, isize>,
    params: HeuristicParams,
    state_size: Arc<AtomicUsize>,
) -> VecCollection<'s, Time, Anomaly, isize> {
    let mut tor_set: Contents<String> = Contents::default();
    let mut users: HashMap<(ArcStr, ArcStr), UserState> = HashMap::new();
    let mut derived = Derived::default();
    let mut idle_at: BTreeMap<Time, Vec<(ArcStr, ArcStr)>> = BTreeMap::new();
    let mut size = 0usize;
    // The largest state this worker has published to `state_size`.
    let mut largest = 0usize;
    let h = params.history;
    let on = On::new(params);
    // One second's events, in id order (reused from one second to the next).
    let mut batch: Vec<SharedEvent> = Vec::new();
    ordered_binary(
        events.inner,
        tor.inner.broadcast(),
        Exchange::new(|(e, _, _): &(SharedEvent, Time, isize)| (&e.enterprise, &e.user).hashed()),
        Pipeline,
        "Heuristics",
        move |at, out| {
            let now = at.time;
            tor_set.apply(at.right.drain(..));
            batch.extend(at.left.drain(..).filter(|(_, d)| *d > 0).map(|(e, _)| e));
            batch.sort_by(|a, b| a.id.cmp(&b.id));
            for event in batch.drain(..) {
                let key = (event.enterprise.clone(), event.user.clone());
                // Every remembered user has exactly one pending idle check.
                let user = users.entry(key.clone()).or_insert_with(|| {
                    idle_at
                        .entry(now + h + 3600 + 1)
                        .or_default()
                        .push(key.clone());
                    UserState::default()
                });
                size -= user.size();
                observe(user, &event, now, &on, &tor_set, &mut derived, |a| {
                    out.push((a, now, 1))
                });
                if user.size() > 2 * user.pruned_at.max(8) {
                    user.prune(now, h);
                }
                size += user.size();
            }
            while let Some(entry) = idle_at.first_entry() {
                if *entry.key() > now {
                    break;
                }
                for key in entry.remove() {
                    match users.get(&key) {
                        Some(u) if now - u.last > h + 3600 => {
                            size -= users.remove(&key).map_or(0, |u| u.size());
                        }
                        Some(u) => {
                            let at = u.last + h + 3600 + 1;
                            idle_at.entry(at).or_default().push(key);
                        }
                        None => {}
                    }
                }
            }
            // Published only when this worker's own largest grows: a write per second to a
            // counter both workers share would move its cache line between their cores.
            if size + users.len() > largest {
                largest = size + users.len();
                state_size.fetch_max(largest, Ordering::Relaxed);
            }
        },
    )
    .as_collection()
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
    let run = match user.sessions.get_mut(&event.session) {
        Some(run) if now - run.last <= h => run,
        _ => {
            user.sessions.insert(event.session.clone(), Run::default());
            user.sessions.get_mut(&event.session).expect("inserted")
        }
    };
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
