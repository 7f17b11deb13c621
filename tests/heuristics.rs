//! Golden tests for the heuristic detectors: a hand-written stream, and literally what each
//! detector must and must not flag, checked against the dataflow (1 and 2 workers) and the batch
//! reference. Then: memory stays bounded on an endless stream of short sessions.
//!
//! Parameters: H = 100 s, min_history = 3 events, Tor list {6.6.6.6} from 0 and {7.7.7.7} from
//! 100, allow-list 192.168.0.0/16, no threshold rules.

use aer::dataflow::{run, run_instrumented, EngineInput};
use aer::model::decision::{Policies, Policy};
use aer::model::{Event, HeuristicParams, Time, HEURISTICS};
use aer::reference::evaluate;
use std::sync::Arc;

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
const SAFARI: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15";
const CURL: &str = "curl/8.5.0";

fn ev(user: &str, t: Time, session: &str, ua: Option<&str>, ip: &str, asn: Option<u32>) -> Event {
    Event {
        id: format!("{user}-{t}-{session}").into(),
        time: t,
        action: "file_downloaded".into(),
        enterprise: "E".into(),
        user: user.into(),
        session: Some(session.into()),
        ip: Some(ip.into()),
        ua: ua.map(Into::into),
        asn,
    }
}

fn params(history: u64) -> HeuristicParams {
    HeuristicParams {
        enabled: HEURISTICS.iter().map(|s| s.to_string()).collect(),
        history,
        min_history: 3,
        scripted_clients: aer::config::default_scripted_clients(),
    }
}

fn input(mut events: Vec<Event>) -> EngineInput {
    events.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
    let mut policy = Policy::default();
    policy.allow.cidrs.insert("192.168.0.0/16".parse().unwrap());
    EngineInput {
        end: events.last().unwrap().time,
        events: events.into_iter().map(|e| (e.time, e)).collect(),
        policies: vec![(
            0,
            Policies {
                default: policy,
                ..Policies::default()
            },
        )],
        tor: vec![
            (0, ["6.6.6.6".to_string()].into()),
            (100, ["7.7.7.7".to_string()].into()),
        ],
        heuristics: params(100),
        session_expiry: 1000,
        ..Default::default()
    }
}

#[test]
fn each_detector_flags_exactly_what_it_must() {
    let (c, f, s) = (Some(CHROME), Some(FIREFOX), Some(SAFARI));
    let events = vec![
        // U1: same /24 is the same network; a new browser in the session is the stolen-cookie
        // case (once per session). At 40, with 3 earlier events, Safari and 9.9/16 are new.
        ev("U1", 10, "s1", c, "1.2.3.4", None),
        ev("U1", 20, "s1", c, "1.2.3.99", None),
        ev("U1", 30, "s1", f, "1.2.3.4", None),
        ev("U1", 40, "s1", s, "9.9.9.9", None),
        // U2 signs in again from a new place on a NEW session: not flagged.
        ev("U2", 10, "s1", c, "1.2.3.4", None),
        ev("U2", 50, "s2", f, "5.6.7.8", None),
        // U3: the user agent is learned when it first appears; then the network changes.
        ev("U3", 10, "s3", None, "1.2.3.4", None),
        ev("U3", 20, "s3", c, "1.2.3.4", None),
        ev("U3", 30, "s3", c, "8.8.8.8", None),
        // U4: the session idles for more than H, so its fingerprint is forgotten.
        ev("U4", 10, "s4", c, "1.2.3.4", None),
        ev("U4", 200, "s4", f, "1.2.3.4", None),
        // U5: Tor once per session; 6.6.6.6 leaves the list at 100.
        ev("U5", 10, "s5", c, "6.6.6.6", None),
        ev("U5", 11, "s5", c, "6.6.6.6", None),
        ev("U5", 12, "s6", c, "6.6.6.6", None),
        ev("U5", 105, "s7", c, "6.6.6.6", None),
        // U6: 7.7.7.7 joins the list at 100 (a reload).
        ev("U6", 10, "s8", c, "7.7.7.7", None),
        ev("U6", 110, "s8", c, "7.7.7.7", None),
        // U7: a scripted client, once per session; a browser in another session is fine.
        ev("U7", 10, "s9", Some(CURL), "1.1.1.1", None),
        ev("U7", 11, "s9", Some(CURL), "1.1.1.1", None),
        ev("U7", 12, "s10", c, "1.1.1.1", None),
        // U8: a new client family after 3 events; U9 has only 2 events of history.
        ev("U8", 10, "s11", c, "2.2.2.2", None),
        ev("U8", 11, "s11", c, "2.2.2.2", None),
        ev("U8", 12, "s11", c, "2.2.2.2", None),
        ev("U8", 13, "s12", f, "2.2.2.2", None),
        ev("U8", 14, "s12", f, "2.2.2.2", None),
        ev("U9", 10, "s13", c, "3.3.3.3", None),
        ev("U9", 11, "s13", c, "3.3.3.3", None),
        ev("U9", 12, "s14", f, "3.3.3.3", None),
        // U10: a new ASN (its /16 is known).
        ev("U10", 10, "s15", None, "4.4.4.4", Some(1)),
        ev("U10", 11, "s15", None, "4.4.4.4", Some(1)),
        ev("U10", 12, "s15", None, "4.4.4.4", Some(1)),
        ev("U10", 13, "s16", None, "4.4.4.5", Some(2)),
        // U11: a new /16, then a known one.
        ev("U11", 10, "s17", None, "10.1.0.1", None),
        ev("U11", 11, "s17", None, "10.1.0.2", None),
        ev("U11", 12, "s17", None, "10.1.0.3", None),
        ev("U11", 13, "s18", None, "10.2.0.1", None),
        ev("U11", 14, "s19", None, "10.1.9.9", None),
        // U12: curl from an allow-listed network: nothing at all.
        ev("U12", 10, "s20", Some(CURL), "192.168.6.6", None),
        ev("U12", 11, "s20", c, "192.168.6.7", None),
    ];
    let input = input(events);
    let expected = evaluate(&input).anomalies;
    let input = Arc::new(input);
    for workers in [1, 2] {
        assert_eq!(
            run(input.clone(), workers).unwrap().anomalies,
            expected,
            "{workers} workers"
        );
    }
    let mut got: Vec<(&str, &str, Time)> = expected
        .iter()
        .map(|a| (a.reason.as_str(), a.user.as_str(), a.detected_at))
        .collect();
    got.sort_by(|a, b| (a.1.len(), a.1, a.2, a.0).cmp(&(b.1.len(), b.1, b.2, b.0)));
    assert_eq!(
        got,
        vec![
            ("session_fingerprint", "U1", 30),
            ("ip_address", "U1", 40),
            ("unexpected_user_agent", "U1", 40),
            ("session_fingerprint", "U3", 30),
            ("tor", "U5", 10),
            ("tor", "U5", 12),
            ("tor", "U6", 110),
            ("unexpected_client", "U7", 10),
            ("unexpected_user_agent", "U8", 13),
            ("asn", "U10", 13),
            ("ip_address", "U11", 13),
        ]
    );
    let fp = expected
        .iter()
        .find(|a| a.reason == "session_fingerprint" && a.user == "U1")
        .unwrap();
    assert!(fp.evidence.details["first_fingerprint"].contains("Chrome/131"));
    assert!(fp.evidence.details["first_fingerprint"].ends_with("from 1.2.3.0/24"));
    assert!(fp.evidence.details["new_fingerprint"].contains("Firefox/133"));
    assert_eq!(fp.session_id.as_deref(), Some("s1"));
}

/// One user opening a new short session every 10 s from a new network, for `sessions` sessions.
fn short_sessions(sessions: u64) -> EngineInput {
    let mut events = Vec::new();
    for i in 0..sessions {
        let ip = format!("10.{}.{}.1", (i / 256) % 256, i % 256);
        for j in 0..2 {
            events.push(ev(
                "U",
                i * 10 + j,
                &format!("s{i}"),
                Some(CHROME),
                &ip,
                None,
            ));
        }
    }
    let mut input = input(events);
    input.tor.clear();
    // Sessions are also kept for the decisions' session age until they expire: as long as H
    // here, so that what is bounded is the detectors' own state.
    input.session_expiry = 100;
    input
}

#[test]
fn memory_does_not_grow_with_an_endless_stream_of_short_sessions() {
    let (_, small) = run_instrumented(Arc::new(short_sessions(2_000)), 1, false).unwrap();
    let (out, large) = run_instrumented(Arc::new(short_sessions(20_000)), 1, false).unwrap();
    // With H (and the session expiry) at 100 s only ~10 sessions and /16s are live at once;
    // pruning keeps at most about twice that, whatever the length of the stream.
    assert!(small.heuristic_state_max > 0);
    assert!(
        large.heuristic_state_max <= small.heuristic_state_max + 4,
        "state grew: {} entries for 2k sessions, {} for 20k",
        small.heuristic_state_max,
        large.heuristic_state_max
    );
    assert!(
        large.heuristic_state_max < 100,
        "{}",
        large.heuristic_state_max
    );
    // The stream did exercise the detectors: each new /16 after the first is reported.
    assert!(out.anomalies.iter().any(|a| a.reason == "ip_address"));
}

#[test]
fn history_counts_whole_hour_buckets_ending_after_now_minus_h() {
    // H = 1000 s, min_history 3. Both users have 3 events in hour bucket [0, 3600), then use a
    // new browser from a new /16. At 4599, now - H = 3599 < 3600: the bucket still counts, so
    // the user is experienced and both novelties fire. At 4600, now - H = 3600: the bucket has
    // ended and no longer counts, so nothing fires.
    let mut events = Vec::new();
    for user in ["A", "B"] {
        for t in 100..103 {
            events.push(ev(user, t, "s1", Some(CHROME), "1.2.3.4", None));
        }
    }
    events.push(ev("A", 4599, "s2", Some(FIREFOX), "9.9.9.9", None));
    events.push(ev("B", 4600, "s2", Some(FIREFOX), "9.9.9.9", None));
    let mut input = input(events);
    input.heuristics = params(1000);
    input.tor.clear();
    let expected = evaluate(&input).anomalies;
    assert_eq!(run(Arc::new(input), 1).unwrap().anomalies, expected);
    let mut got: Vec<(&str, &str)> = expected
        .iter()
        .map(|a| (a.user.as_str(), a.reason.as_str()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![("A", "ip_address"), ("A", "unexpected_user_agent")]
    );
}
