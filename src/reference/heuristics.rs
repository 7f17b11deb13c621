//! The batch reference for the heuristic detectors: for each event, look back over the user's
//! whole earlier history, no state carried. Same definitions as the engine: a session's run of
//! activity ends after more than H idle; a value is known when seen within H; a user is
//! experienced with at least `min_history` earlier events in hour buckets ending after now - H.

use std::collections::{BTreeMap, BTreeSet};

use crate::dataflow::EngineInput;
use crate::model::client::{client_family, fingerprint_net, novelty_prefix, Finding};
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
        // By the ids' text: the oracle does not lean on `EventId`'s order.
        events.sort_by_cached_key(|(time, event)| (*time, event.id.to_string()));
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
            let mut found = |finding: Finding, known: usize| {
                out.push(finding.anomaly(event, now, known, h));
            };
            if params.on("tor") && !run.iter().any(|j| flags[*j].tor) {
                let listed = tor_at(input, now);
                let on_list = |ip: &&str| listed.is_some_and(|l| l.contains(*ip));
                if let Some(ip) = event.ip.as_deref().filter(on_list) {
                    mine.tor = true;
                    found(Finding::Tor { ip: ip.to_string() }, 0);
                }
            }
            if let Some((client, true)) = &fam {
                if params.on("unexpected_client") && !run.iter().any(|j| flags[*j].client) {
                    mine.client = true;
                    found(
                        Finding::ScriptedClient {
                            client: client.clone(),
                        },
                        0,
                    );
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
                    found(
                        Finding::Fingerprint {
                            first_ua,
                            first_net,
                            net,
                        },
                        0,
                    );
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
                    let finding = Finding::NewFamily {
                        family: name.clone(),
                        active,
                    };
                    found(finding, known.len());
                }
            }
            if let Some(asn) = event.asn {
                let known: BTreeSet<u32> = recent.iter().filter_map(|e| e.asn).collect();
                if experienced && params.on("asn") && !known.contains(&asn) {
                    found(Finding::NewAsn { asn }, known.len());
                }
            }
            if let Some(prefix) = event.ip.as_deref().and_then(novelty_prefix) {
                let known: BTreeSet<String> = recent
                    .iter()
                    .filter_map(|e| e.ip.as_deref().and_then(novelty_prefix))
                    .collect();
                if experienced && params.on("ip_address") && !known.contains(&prefix) {
                    let len = known.len();
                    found(Finding::NewPrefix { prefix }, len);
                }
            }
            flags.push(mine);
        }
    }
    out.retain(|a| a.detected_at <= input.end);
    out.sort();
    out
}
