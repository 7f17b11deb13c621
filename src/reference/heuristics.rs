//! The batch reference for the heuristic detectors: for each event, look back over the user's
//! whole earlier history, no state carried. Same definitions as the engine: a session's run of
//! activity ends after more than H idle; a value is known when seen within H; a user is
//! experienced with at least `min_history` earlier events in hour buckets ending after now - H.

use std::collections::{BTreeMap, BTreeSet};

use crate::dataflow::EngineInput;
use crate::model::client::{client_family, fingerprint_net, novelty_prefix};
use crate::model::decision::Policy;
use crate::model::{Anomaly, Event, Time};

#[derive(Clone, Copy, Default)]
struct Flags {
    tor: bool,
    client: bool,
    fingerprint: bool,
}

fn tor_at(input: &EngineInput, time: Time) -> Option<&BTreeSet<String>> {
    input
        .tor
        .iter()
        .rev()
        .find(|(from, _)| *from <= time)
        .map(|(_, ips)| ips)
}

/// All heuristic anomalies up to `input.end`, sorted.
pub fn heuristic_anomalies(input: &EngineInput) -> Vec<Anomaly> {
    let params = &input.heuristics;
    let h = params.history;
    let fallback = Policy::default();
    let mut by_user: BTreeMap<(&str, &str), Vec<(Time, &Event)>> = BTreeMap::new();
    for (time, event) in &input.events {
        let policy =
            super::decisions::policy_at(&input.policies, &event.enterprise, *time, &fallback);
        if !policy.allow.allows(event.ip.as_deref(), event.asn) {
            by_user
                .entry((&event.enterprise, &event.user))
                .or_default()
                .push((*time, event));
        }
    }
    let family = |e: &Event| {
        e.ua.as_deref()
            .map(|ua| client_family(ua, &params.scripted_clients))
    };
    let mut out = Vec::new();
    for events in by_user.values_mut() {
        events.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
        let mut flags: Vec<Flags> = Vec::with_capacity(events.len());
        for (i, &(now, event)) in events.iter().enumerate() {
            let prior = &events[..i];
            let active = prior
                .iter()
                .filter(|(t, _)| (t / 3600 + 1) * 3600 > now.saturating_sub(h))
                .count() as u64;
            let experienced = active >= params.min_history;
            // The current run of this session: earlier events of it with no gap over H since.
            let mut run: Vec<usize> = Vec::new();
            let mut last: Option<Time> = None;
            for (j, (t, e)) in prior.iter().enumerate() {
                if e.session != event.session {
                    continue;
                }
                if last.is_some_and(|l| t - l > h) {
                    run.clear();
                }
                run.push(j);
                last = Some(*t);
            }
            if last.is_some_and(|l| now - l > h) {
                run.clear();
            }
            let mut mine = Flags::default();
            let fam = family(event);
            if params.on("tor") && !run.iter().any(|j| flags[*j].tor) {
                let listed = tor_at(input, now);
                if let Some(ip) = event
                    .ip
                    .as_deref()
                    .filter(|ip| listed.is_some_and(|l| l.contains(*ip)))
                {
                    mine.tor = true;
                    out.push(Anomaly::heuristic(
                        event,
                        now,
                        "tor",
                        vec![("ip", ip.to_string())],
                        0,
                        h,
                        format!("{} used a Tor exit node ({ip})", event.user),
                    ));
                }
            }
            if let Some((name, true)) = &fam {
                if params.on("unexpected_client") && !run.iter().any(|j| flags[*j].client) {
                    mine.client = true;
                    out.push(Anomaly::heuristic(
                        event,
                        now,
                        "unexpected_client",
                        vec![
                            ("client", name.clone()),
                            ("ua", event.ua.clone().unwrap_or_default()),
                        ],
                        0,
                        h,
                        format!("{} used a scripted client ({name})", event.user),
                    ));
                }
            }
            if event.session.is_some() {
                let first_ua = run.iter().find_map(|j| prior[*j].1.ua.clone());
                let first_net = run
                    .iter()
                    .find_map(|j| fingerprint_net(prior[*j].1.ip.as_deref(), prior[*j].1.asn));
                let net = fingerprint_net(event.ip.as_deref(), event.asn);
                let changed = matches!((&first_ua, &event.ua), (Some(a), Some(b)) if a != b)
                    || matches!((&first_net, &net), (Some(a), Some(b)) if a != b);
                if changed
                    && params.on("session_fingerprint")
                    && !run.iter().any(|j| flags[*j].fingerprint)
                {
                    mine.fingerprint = true;
                    let first = format!(
                        "{} from {}",
                        first_ua.as_deref().unwrap_or("?"),
                        first_net.as_deref().unwrap_or("?")
                    );
                    let now_fp = format!(
                        "{} from {}",
                        event.ua.as_deref().unwrap_or("?"),
                        net.as_deref().unwrap_or("?")
                    );
                    out.push(Anomaly::heuristic(
                        event,
                        now,
                        "session_fingerprint",
                        vec![
                            ("first_fingerprint", first.clone()),
                            ("new_fingerprint", now_fp.clone()),
                        ],
                        0,
                        h,
                        format!(
                            "session {} of {} began as [{first}] and is now used as [{now_fp}]",
                            event.session.as_deref().unwrap_or(""),
                            event.user
                        ),
                    ));
                }
            }
            let recent: Vec<&Event> = prior
                .iter()
                .filter(|(t, _)| now - t <= h)
                .map(|(_, e)| *e)
                .collect();
            if let Some((name, scripted)) = &fam {
                let known: BTreeSet<String> = recent
                    .iter()
                    .filter_map(|e| family(e))
                    .map(|f| f.0)
                    .collect();
                if experienced
                    && !scripted
                    && params.on("unexpected_user_agent")
                    && !known.contains(name)
                {
                    out.push(Anomaly::heuristic(
                        event,
                        now,
                        "unexpected_user_agent",
                        vec![
                            ("family", name.clone()),
                            ("ua", event.ua.clone().unwrap_or_default()),
                        ],
                        known.len(),
                        h,
                        format!(
                            "{} used {name} for the first time in {} ({active} events)",
                            event.user,
                            crate::model::human_secs(h)
                        ),
                    ));
                }
            }
            if let Some(asn) = event.asn {
                let known: BTreeSet<u32> = recent.iter().filter_map(|e| e.asn).collect();
                if experienced && params.on("asn") && !known.contains(&asn) {
                    out.push(Anomaly::heuristic(
                        event,
                        now,
                        "asn",
                        vec![("asn", format!("AS{asn}"))],
                        known.len(),
                        h,
                        format!(
                            "{} connected from AS{asn} for the first time in {}",
                            event.user,
                            crate::model::human_secs(h)
                        ),
                    ));
                }
            }
            if let Some(prefix) = event.ip.as_deref().and_then(novelty_prefix) {
                let known: BTreeSet<String> = recent
                    .iter()
                    .filter_map(|e| e.ip.as_deref().and_then(novelty_prefix))
                    .collect();
                if experienced && params.on("ip_address") && !known.contains(&prefix) {
                    out.push(Anomaly::heuristic(
                        event,
                        now,
                        "ip_address",
                        vec![("prefix", prefix.clone())],
                        known.len(),
                        h,
                        format!(
                            "{} connected from {prefix} for the first time in {}",
                            event.user,
                            crate::model::human_secs(h)
                        ),
                    ));
                }
            }
            flags.push(mine);
        }
    }
    out.retain(|a| a.detected_at <= input.end);
    out.sort();
    out
}
