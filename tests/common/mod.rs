//! Stream generators shared by the oracle tests: small enterprises with bursts and quiet periods,
//! late and re-sent entries, and rule timelines that change mid-stream. Sized so that windows and
//! baselines turn over many times within a few hundred seconds.

#![allow(dead_code)]

use aer::dataflow::EngineInput;
use aer::io::sequencer::Sequencer;
use aer::model::decision::{Exclusion, LoopGuard, Mode, Policies, Policy};
use aer::model::{Eval, Event, GroupBy, Rule, Time};
use proptest::prelude::*;

pub const ACTIONS: [&str; 4] = [
    "file_downloaded",
    "file_shared",
    "user_login",
    "file_previewed",
];

/// One generated arrival: an event, possibly a re-send of an earlier one.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub event: Event,
}

pub const UAS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh) AppleWebKit/537.36 Slack/4.41.105 Chrome/128.0 Electron/32.2.2 Safari/537.36 Sonic Slack_SSB/4.41.105",
    "curl/8.5.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
];

/// How a burst looks on the network: user agent (index into [`UAS`], or none) and which of the
/// user's networks it comes from.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub ua: Option<usize>,
    pub net: u8,
}

fn event(
    i: usize,
    time: Time,
    ent: u8,
    user: u8,
    action: usize,
    session: u8,
    client: Client,
) -> Event {
    Event {
        // Half the ids in Slack's UUID form (held inline as bits), scrambled so that their
        // order is not the events' order, and half other text: sorting mixes the two forms.
        id: if i % 2 == 1 {
            format!(
                "{:08x}-7e57-4000-8000-{i:012x}",
                (i as u32).wrapping_mul(2_654_435_761)
            )
        } else {
            format!("ev{i:05}")
        }
        .into(),
        time,
        action: ACTIONS[action].into(),
        enterprise: format!("E{ent}").into(),
        user: format!("U{ent}{user}").into(),
        session: (session > 0).then(|| format!("s{ent}{user}{session}").into()),
        // Two users share an IP; net 2 is another /16, net 1 another /24 of the same /16.
        ip: match client.net {
            0 => Some(format!("10.0.{ent}.{}", user / 2).into()),
            1 => Some(format!("10.0.{}.{}", ent + 10, user / 2).into()),
            2 => Some(format!("10.9.{ent}.{}", user / 2).into()),
            _ => None, // some audit entries carry no IP
        },
        ua: client.ua.map(|u| UAS[u].into()),
        asn: (!user.is_multiple_of(3) && client.net < 3)
            .then_some(64_500 + u32::from(user % 3) + u32::from(client.net)),
    }
}

/// Bursty streams: each burst is a user doing one action many times around a moment.
pub fn arrivals(max_bursts: usize) -> impl Strategy<Value = Vec<Arrival>> {
    let burst = (
        (
            0u64..400,
            prop::sample::select(vec![0u64, 0, 0, 0, 3400, 7000]),
        ), // start, hour offset
        0u8..3,     // enterprise
        0u8..4,     // user
        0usize..6,  // action (4 and 5: downloads and shares interleaved)
        1usize..14, // events
        0u64..6,    // spacing
        0u8..3,     // session
        (
            prop::option::of(0usize..4),
            prop::sample::select(vec![0u8, 0, 0, 1, 2, 3]),
        ),
    );
    (
        prop::collection::vec(burst, 1..max_bursts),
        prop::collection::vec(any::<prop::sample::Index>(), 0..6), // re-sends
        prop::collection::vec((any::<prop::sample::Index>(), 0u64..12), 0..10), // late deliveries
    )
        .prop_map(|(bursts, resend, late)| {
            let mut events = Vec::new();
            for ((start, offset), ent, user, action, n, spacing, session, (ua, net)) in bursts {
                let start = start + offset;
                let client = Client { ua, net };
                for j in 0..n {
                    let i = events.len();
                    let (action, t) = match action {
                        // Both rules fire for one user in the same second.
                        4 | 5 => (j % 2, start + (j / 2) as u64 * spacing),
                        a => (a, start + j as u64 * spacing),
                    };
                    events.push(event(i, t, ent, user, action, session, client));
                }
            }
            events.sort_by_key(|e| e.time);
            // Delay some deliveries so that they arrive after newer events.
            let mut order: Vec<(u64, usize)> = events
                .iter()
                .enumerate()
                .map(|(i, e)| (e.time * 2, i))
                .collect();
            for (idx, delay) in late {
                let k = idx.index(order.len());
                order[k].0 += delay * 2 + 1;
            }
            order.sort();
            let mut out: Vec<Arrival> = order
                .into_iter()
                .map(|(_, i)| Arrival {
                    event: events[i].clone(),
                })
                .collect();
            for idx in resend {
                let k = idx.index(out.len());
                let again = out[k].clone();
                let at = (k + 3).min(out.len());
                out.insert(at, again);
            }
            out
        })
}

pub fn rule(
    reason: &str,
    actions: &[&str],
    window: u64,
    history: u64,
    group_by: GroupBy,
    eval: Eval,
) -> Rule {
    Rule {
        reason: reason.to_string(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
        window,
        history,
        group_by,
        eval,
    }
}

pub fn eval_strategy() -> impl Strategy<Value = Eval> {
    (
        prop::sample::select(vec![500_000u32, 750_000, 900_000, 990_000, 1_000_000]),
        prop::sample::select(vec![1000u64, 1500, 2000, 2500, 3000]),
        0u64..4,
        1u64..6,
        2u64..9,
    )
        .prop_map(|(q, m, floor, min_samples, default_threshold)| Eval {
            quantile_ppm: q,
            multiplier_milli: m,
            floor,
            min_samples,
            default_threshold,
        })
}

/// A rule set: downloads per user, shares per user, and logins per IP, with small windows.
pub fn rules_strategy() -> impl Strategy<Value = Vec<Rule>> {
    (
        eval_strategy(),
        eval_strategy(),
        eval_strategy(),
        prop::sample::select(vec![5u64, 10, 20]),
        prop::sample::select(vec![20u64, 60, 120]),
        any::<bool>(),
    )
        .prop_map(|(a, b, c, w, h, extra_action)| {
            let mut share_actions = vec!["file_shared"];
            if extra_action {
                share_actions.push("file_previewed");
            }
            vec![
                rule(
                    "excessive_downloads",
                    &["file_downloaded"],
                    w,
                    h.max(w),
                    GroupBy::User,
                    a,
                ),
                rule(
                    "excessive_file_shares",
                    &share_actions,
                    10,
                    40,
                    GroupBy::User,
                    b,
                ),
                rule("login_burst", &["user_login"], w, h.max(w), GroupBy::Ip, c),
            ]
        })
}

/// A timeline: the first rule set from time 0, then up to two changes mid-stream (new
/// parameters, new actions, a changed window, or a rule dropped).
pub fn timeline_strategy() -> impl Strategy<Value = Vec<(Time, Vec<Rule>)>> {
    (
        rules_strategy(),
        prop::collection::vec((1u64..450, rules_strategy(), 0usize..4), 0..3),
    )
        .prop_map(|(first, changes)| {
            let mut timeline = vec![(0, first)];
            let mut changes = changes;
            changes.sort_by_key(|c| c.0);
            changes.dedup_by_key(|c| c.0);
            for (at, mut rules, drop) in changes {
                if drop < rules.len() && drop % 2 == 1 {
                    rules.remove(drop);
                }
                timeline.push((at, rules));
            }
            timeline
        })
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    let mode = prop::sample::select(vec![Mode::Off, Mode::Monitor, Mode::Respond, Mode::Respond]);
    (
        mode.clone(),
        mode.clone(),
        mode,
        prop::option::of((0u8..3, 0u8..4, any::<bool>())),
        prop::sample::select(vec![20u64, 60, 200]),
        prop::sample::select(vec![5u64, 15, 40]),
        1u64..4,
        prop::option::of((0u8..3, 0u8..3, any::<bool>())),
    )
        .prop_map(
            |(dl, sh, login, exclusion, window, cooldown, max_resets, allow)| {
                let mut policy = Policy::default();
                policy.modes.insert("excessive_downloads".into(), dl);
                policy.modes.insert("excessive_file_shares".into(), sh);
                policy.modes.insert("login_burst".into(), login);
                if let Some((ent, user, by_group)) = exclusion {
                    let user = format!("U{ent}{user}");
                    let mut ex = Exclusion::default();
                    if by_group {
                        policy
                            .groups
                            .insert("g".into(), [user].into_iter().collect());
                        ex.groups.insert("g".into());
                    } else {
                        ex.users.insert(user);
                    }
                    ex.reasons.insert("excessive_downloads".into());
                    policy.exclusions.push(ex);
                }
                if let Some((ent, host, by_asn)) = allow {
                    if by_asn {
                        policy.allow.asns.insert(64_500 + u32::from(host));
                    } else {
                        let net: ipnet::IpNet = format!("10.0.{ent}.{host}/32").parse().unwrap();
                        policy.allow.cidrs.insert(net);
                    }
                }
                policy.loop_guard = LoopGuard {
                    window,
                    cooldown,
                    max_resets,
                };
                policy
            },
        )
}

/// Policies: a default and sometimes one enterprise of its own, changing up to twice.
pub fn policies_strategy() -> impl Strategy<Value = Vec<(Time, Policies)>> {
    fn policies() -> impl Strategy<Value = Policies> {
        (policy_strategy(), prop::option::of(policy_strategy())).prop_map(|(d, e1)| Policies {
            default: d,
            enterprises: e1.into_iter().map(|p| ("E1".to_string(), p)).collect(),
        })
    }
    (
        policies(),
        prop::collection::vec((1u64..450, policies()), 0..3),
    )
        .prop_map(|(first, mut changes)| {
            changes.sort_by_key(|c| c.0);
            changes.dedup_by_key(|c| c.0);
            let mut timeline = vec![(0, first)];
            timeline.extend(changes);
            timeline
        })
}

/// Runs arrivals through the sequencer with the given lateness, as a live source would.
pub fn sequence(
    arrivals: &[Arrival],
    lateness: Option<u64>,
    timeline: Vec<(Time, Vec<Rule>)>,
) -> EngineInput {
    let mut seq = Sequencer::new(lateness, 1_000_000);
    let mut events = Vec::new();
    for a in arrivals {
        seq.push(a.event.clone(), &mut events);
    }
    let end = seq.finish(&mut events);
    EngineInput {
        events: events.into(),
        rules: timeline,
        policies: vec![(0, Policies::default())],
        session_expiry: 30,
        end,
        ..Default::default()
    }
}

/// Heuristic detectors all on, with a short history so that sessions and first-seen sets expire
/// within a generated stream, and a Tor list that changes mid-stream.
pub fn heuristics_strategy() -> impl Strategy<
    Value = (
        aer::model::HeuristicParams,
        Vec<(Time, std::collections::BTreeSet<String>)>,
    ),
> {
    (
        prop::sample::select(vec![30u64, 90, 300]),
        0u64..6,
        prop::collection::vec(
            (
                0u64..450,
                prop::collection::btree_set((0u8..3, 0u8..2), 0..3),
            ),
            0..3,
        ),
    )
        .prop_map(|(history, min_history, tor)| {
            let params = aer::model::HeuristicParams {
                enabled: aer::model::HEURISTICS
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                history,
                min_history,
                scripted_clients: aer::config::default_scripted_clients(),
            };
            let mut timeline: Vec<(Time, std::collections::BTreeSet<String>)> = tor
                .into_iter()
                .map(|(t, hosts)| {
                    (
                        t,
                        hosts
                            .into_iter()
                            .map(|(ent, h)| format!("10.0.{ent}.{h}"))
                            .collect(),
                    )
                })
                .collect();
            timeline.sort_by_key(|(t, _)| *t);
            timeline.dedup_by_key(|(t, _)| *t);
            (params, timeline)
        })
}

/// A whole engine input: arrivals sequenced with a random lateness (or sorted, as replay does),
/// a rule timeline, a policy timeline, heuristics and a Tor list timeline.
pub fn engine_input(max_bursts: usize) -> impl Strategy<Value = EngineInput> {
    (
        arrivals(max_bursts),
        timeline_strategy(),
        prop::option::of(0u64..8),
        policies_strategy(),
        heuristics_strategy(),
    )
        .prop_map(
            |(arrivals, timeline, lateness, policies, (heuristics, tor))| {
                let mut input = sequence(&arrivals, lateness, timeline);
                input.policies = policies;
                input.heuristics = heuristics;
                input.tor = tor;
                input
            },
        )
}
