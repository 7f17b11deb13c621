//! Decision scenarios (DESIGN 5), each a literal expectation checked against the dataflow (1 and
//! 2 workers) and the batch reference: an attacker who signs in again after a reset, a legitimate
//! heavy user who never gets a reset loop, late events from a killed session, monitor mode,
//! exclusions, a mode switched off, a policy changed mid-stream, and two anomalies in one second.
//!
//! The rule: more than 5 downloads (or shares) by a user in 60 s; baselines never reach
//! min_samples, so the threshold is always the default 5.

use aer::dataflow::{run, EngineInput};
use aer::model::decision::{Decision, Exclusion, Mode, Outcome, Policies, Policy};
use aer::model::{Eval, Event, GroupBy, Rule, Time};
use aer::reference::evaluate;
use std::sync::Arc;

fn rule(reason: &str, action: &str) -> Rule {
    Rule {
        reason: reason.into(),
        actions: [action.to_string()].into_iter().collect(),
        window: 60,
        history: 600,
        group_by: GroupBy::User,
        eval: Eval {
            quantile_ppm: 990_000,
            multiplier_milli: 3000,
            floor: 0,
            min_samples: 1_000_000,
            default_threshold: 5,
        },
    }
}

/// Six downloads in one session, one a second from `start`: an anomaly at `start + 5`.
fn burst(events: &mut Vec<Event>, user: &str, session: &str, start: Time, action: &str) {
    for i in 0..6 {
        events.push(Event {
            id: format!("{user}-{session}-{start}-{i}-{action}").into(),
            time: start + i,
            action: action.into(),
            enterprise: "E".into(),
            user: user.into(),
            session: Some(session.into()),
            ip: Some("10.0.0.1".into()),
            ua: None,
            asn: None,
        });
    }
}

fn respond() -> Policy {
    let mut p = Policy::default();
    p.modes.insert("excessive_downloads".into(), Mode::Respond);
    p.modes
        .insert("excessive_file_shares".into(), Mode::Respond);
    p
}

fn decide_all(mut events: Vec<Event>, policies: Vec<(Time, Policies)>) -> Vec<Decision> {
    events.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
    let end = events.last().map_or(0, |e| e.time);
    let input = EngineInput {
        events: events.into_iter().map(|e| (e.time, e)).collect(),
        rules: vec![(
            0,
            vec![
                rule("excessive_downloads", "file_downloaded"),
                rule("excessive_file_shares", "file_shared"),
            ],
        )],
        policies,
        session_expiry: 14 * 86_400,
        end,
        ..Default::default()
    };
    let reference = evaluate(&input);
    let input = Arc::new(input);
    for workers in [1, 2] {
        let engine = run(input.clone(), workers).unwrap();
        assert_eq!(
            engine, reference,
            "dataflow with {workers} workers vs reference"
        );
    }
    assert_eq!(reference.anomalies.len(), reference.decisions.len());
    reference.decisions
}

fn outcomes(decisions: &[Decision]) -> Vec<(Time, &str, Outcome)> {
    decisions
        .iter()
        .map(|d| (d.decided_at, d.user.as_str(), d.outcome))
        .collect()
}

fn only(policy: Policy) -> Vec<(Time, Policies)> {
    vec![(
        0,
        Policies {
            default: policy,
            ..Policies::default()
        },
    )]
}

#[test]
fn attacker_signing_in_again_after_a_reset_is_reset_again_and_escalated() {
    let mut events = Vec::new();
    burst(&mut events, "A", "stolen", 100, "file_downloaded");
    // After the reset at 105 the attacker signs in again: a new session, first seen at 200.
    burst(&mut events, "A", "fresh", 200, "file_downloaded");
    let d = decide_all(events, only(respond()));
    assert_eq!(
        outcomes(&d),
        vec![
            (105, "A", Outcome::Reset),
            (205, "A", Outcome::ResetPersisting)
        ]
    );
    assert!(d[1].escalate && d[1].resets_sessions);
    assert_eq!(d[1].last_reset, Some(105));
    assert_eq!(d[1].session_first_seen, Some(200));
    assert!(
        d[1].explanation.contains("the actor came back"),
        "{}",
        d[1].explanation
    );
}

#[test]
fn late_events_from_a_killed_session_are_duplicates() {
    let mut events = Vec::new();
    burst(&mut events, "B", "s1", 100, "file_downloaded");
    // Queued requests of the session killed at 105 still arrive, within the cooldown.
    burst(&mut events, "B", "s1", 300, "file_downloaded");
    let d = decide_all(events, only(respond()));
    assert_eq!(
        outcomes(&d),
        vec![(105, "B", Outcome::Reset), (305, "B", Outcome::Duplicate)]
    );
    assert!(!d[1].resets_sessions && !d[1].escalate);
    assert_eq!(d[1].session_first_seen, Some(100));
}

#[test]
fn heavy_user_over_the_threshold_every_hour_never_loops() {
    // A legitimate heavy user crosses the threshold every hour for 30 hours, signing in again
    // (a new session) each time.
    let mut events = Vec::new();
    for hour in 0..30u64 {
        burst(
            &mut events,
            "C",
            &format!("s{hour}"),
            hour * 3600 + 100,
            "file_downloaded",
        );
    }
    let d = decide_all(events, only(respond()));
    let got: Vec<Outcome> = d.iter().map(|d| d.outcome).collect();
    let mut want = Vec::new();
    for hour in 0..30 {
        // At most 3 resets in any 24 h: hours 0-2 reset, 3-23 are suppressed and escalated,
        // then each day-old reset ages out of the window and allows one more.
        let reset = hour < 3 || (24..27).contains(&hour);
        want.push(if reset {
            Outcome::Reset
        } else {
            Outcome::LoopSuppressed
        });
    }
    assert_eq!(got, want);
    let suppressed = &d[3];
    assert!(suppressed.escalate && !suppressed.resets_sessions);
    assert_eq!(suppressed.recent_resets, 3);
    assert!(suppressed
        .explanation
        .starts_with("loop suppressed: 3 resets of C"));
    // Never more than max_resets resets within any loop window.
    let resets: Vec<Time> = d
        .iter()
        .filter(|d| d.resets_sessions)
        .map(|d| d.decided_at)
        .collect();
    for r in &resets {
        let within = resets
            .iter()
            .filter(|x| **x >= *r && **x < r + 86_400)
            .count();
        assert!(within <= 3, "{within} resets within a day from {r}");
    }
}

#[test]
fn monitor_mode_records_would_reset_and_resets_nothing() {
    let mut events = Vec::new();
    burst(&mut events, "D", "s1", 100, "file_downloaded");
    burst(&mut events, "D", "s2", 200, "file_downloaded");
    // The default policy: excessive_downloads monitors, as Slack ships it.
    let d = decide_all(events, only(Policy::default()));
    assert_eq!(
        outcomes(&d),
        vec![
            (105, "D", Outcome::Monitored),
            (205, "D", Outcome::Monitored)
        ]
    );
    assert!(d
        .iter()
        .all(|d| !d.resets_sessions && d.config.mode == Mode::Monitor));
    assert!(d[0]
        .explanation
        .starts_with("monitored: would reset D's sessions"));
    assert_eq!(
        d[1].recent_resets, 0,
        "monitoring does not count as a reset"
    );
}

#[test]
fn exclusions_and_modes_off_take_precedence() {
    let mut events = Vec::new();
    burst(&mut events, "X", "s", 100, "file_downloaded");
    burst(&mut events, "Y", "s", 100, "file_downloaded");
    burst(&mut events, "Z", "s", 100, "file_shared");
    let mut policy = respond();
    policy.groups.insert("vip".into(), ["Y".to_string()].into());
    policy.exclusions.push(Exclusion {
        users: ["X".to_string()].into(),
        ..Exclusion::default()
    });
    policy.exclusions.push(Exclusion {
        groups: ["vip".to_string()].into(),
        reasons: ["excessive_downloads".to_string()].into(),
        ..Exclusion::default()
    });
    policy
        .modes
        .insert("excessive_file_shares".into(), Mode::Off);
    let mut d = decide_all(events, only(policy));
    d.sort_by(|a, b| a.user.cmp(&b.user));
    assert_eq!(
        outcomes(&d),
        vec![
            (105, "X", Outcome::Excluded),
            (105, "Y", Outcome::Excluded),
            (105, "Z", Outcome::Ignored)
        ]
    );
    assert_eq!(d[1].config.excluded_by.as_deref(), Some("group:vip"));
}

#[test]
fn a_policy_change_applies_from_its_time_and_never_rewrites() {
    let mut events = Vec::new();
    burst(&mut events, "P", "s1", 100, "file_downloaded");
    burst(&mut events, "P", "s2", 2000, "file_downloaded");
    let policies = vec![
        (0, Policies::default()),
        (
            1000,
            Policies {
                enterprises: [("E".to_string(), respond())].into(),
                ..Policies::default()
            },
        ),
    ];
    let d = decide_all(events, policies);
    assert_eq!(
        outcomes(&d),
        vec![(105, "P", Outcome::Monitored), (2005, "P", Outcome::Reset)]
    );
    assert_ne!(d[0].config.policy_version, d[1].config.policy_version);
}

#[test]
fn two_anomalies_in_one_second_fold_in_id_order() {
    let mut events = Vec::new();
    burst(&mut events, "Q", "s1", 100, "file_downloaded");
    burst(&mut events, "Q", "s1", 100, "file_shared");
    let d = decide_all(events, only(respond()));
    assert_eq!(d.len(), 2);
    let mut by_anomaly: Vec<&Decision> = d.iter().collect();
    by_anomaly.sort_by(|a, b| a.anomaly.id.cmp(&b.anomaly.id));
    assert_eq!(by_anomaly[0].outcome, Outcome::Reset);
    assert_eq!(by_anomaly[1].outcome, Outcome::Duplicate);
}

#[test]
fn fold_state_evicted_after_the_loop_horizon_changes_nothing() {
    // Resets on day 0; the user's fold state is dropped after 7 days of no resets; an anomaly on
    // day 8 is decided exactly as if the state had been kept (the resets are outside every window).
    let mut events = Vec::new();
    burst(&mut events, "R", "s1", 100, "file_downloaded");
    burst(&mut events, "R", "s2", 4000, "file_downloaded");
    burst(&mut events, "R", "s3", 8 * 86_400, "file_downloaded");
    let d = decide_all(events, only(respond()));
    assert_eq!(
        outcomes(&d),
        vec![
            (105, "R", Outcome::Reset),
            (4005, "R", Outcome::Reset),
            (8 * 86_400 + 5, "R", Outcome::Reset)
        ]
    );
    assert_eq!(d[2].recent_resets, 0);
    assert_eq!(d[2].last_reset, None);
}

/// One event of `user` in `session` at `time` from `ip` (not an action any rule counts).
fn sighting(user: &str, session: &str, time: Time, ip: &str) -> Event {
    Event {
        id: format!("{user}-{session}-{time}-seen").into(),
        time,
        action: "file_accessed".into(),
        enterprise: "E".into(),
        user: user.into(),
        session: Some(session.into()),
        ip: Some(ip.into()),
        ua: None,
        asn: None,
    }
}

#[test]
fn a_session_keeps_its_first_sighting_through_allow_lists_and_pruning() {
    // Session "old" of user C is first seen at 10 from an allow-listed network (an event no
    // detector sees). C then opens 40 other sessions, one event each: enough for the user's
    // state to be pruned several times (H is 0 here). At 2,000 "old" returns from elsewhere
    // and its burst is an anomaly. The session's age counts from 10: a session's sightings are
    // kept for the session expiry (14 days), whatever H and the allow-lists.
    let mut events = vec![sighting("C", "old", 10, "192.168.1.1")];
    for i in 0..40 {
        events.push(sighting(
            "C",
            &format!("short{i}"),
            100 + i * 10,
            "10.0.0.1",
        ));
    }
    burst(&mut events, "C", "old", 2_000, "file_downloaded");
    let mut policy = respond();
    policy.allow.cidrs.insert("192.168.0.0/16".parse().unwrap());
    let d = decide_all(events, only(policy));
    assert_eq!(outcomes(&d), vec![(2_005, "C", Outcome::Reset)]);
    assert_eq!(d[0].session_first_seen, Some(10));
}
