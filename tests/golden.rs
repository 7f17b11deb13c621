//! A small hand-written stream whose anomalies are listed literally, with why. Both engines, the
//! dataflow (1 and 2 workers) and the batch reference, must produce exactly this list.
//!
//! Rule under test: downloads per user, W = 10 s, H = 100 s, q = 1.0 (the maximum), m = 2,
//! floor 3, min_samples 2, default threshold 5.

use aer::dataflow::{run, EngineInput};
use aer::model::{Anomaly, Baseline, Eval, Event, GroupBy, Rule};
use aer::reference::threshold_anomalies;
use std::sync::Arc;

fn ev(id: &str, time: u64, ent: &str, user: &str, action: &str, session: &str) -> Event {
    Event {
        id: id.into(),
        time,
        action: action.into(),
        enterprise: ent.into(),
        user: user.into(),
        session: Some(session.into()),
        ip: None,
        ua: None,
        asn: None,
    }
}

fn rule() -> Rule {
    Rule {
        reason: "excessive_downloads".into(),
        actions: ["file_downloaded".to_string()].into_iter().collect(),
        window: 10,
        history: 100,
        group_by: GroupBy::User,
        eval: Eval {
            quantile_ppm: 1_000_000,
            multiplier_milli: 2000,
            floor: 3,
            min_samples: 2,
            default_threshold: 5,
        },
    }
}

fn stream() -> Vec<Event> {
    let dl = "file_downloaded";
    let mut v = Vec::new();
    // E/A: 3 downloads in bucket [0,10) and a share that no rule counts.
    for t in 1..=3 {
        v.push(ev(&format!("a{t}"), t, "E", "A", dl, "sA"));
    }
    v.push(ev("a-share", 5, "E", "A", "file_shared", "sA"));
    // E/B: 6 downloads at 4..9. At 8 the count is 5, equal to the default threshold: not above.
    for t in 4..=9 {
        v.push(ev(&format!("b{t}"), t, "E", "B", dl, "sB"));
    }
    // E2/A: the same burst in another enterprise, then a second burst at 50..55.
    for t in 4..=9 {
        v.push(ev(&format!("x{t}"), t, "E2", "A", dl, "sX"));
    }
    for t in 50..=55 {
        v.push(ev(&format!("y{t}"), t, "E2", "A", dl, "sY"));
    }
    // E/C: 8 downloads at 101..108, under E's threshold of 12 while bucket 0 is in the baseline.
    for t in 101..=108 {
        v.push(ev(&format!("c{t}"), t, "E", "C", dl, "sC"));
    }
    // E/D: 7 downloads in one second; the greatest id d7 carries session sD2.
    for i in 1..=7 {
        let session = if i == 7 { "sD2" } else { "sD1" };
        v.push(ev(&format!("d{i}"), 120, "E", "D", dl, session));
    }
    v.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
    v
}

fn expected() -> Vec<(
    &'static str,
    &'static str,
    u64,
    &'static str,
    u64,
    u64,
    Baseline,
)> {
    let none = Baseline {
        samples: 0,
        quantile: None,
    };
    vec![
        // E/B at 9: 6 > default 5 (no bucket has closed yet, so no baseline).
        ("E", "B", 9, "sB", 6, 5, none.clone()),
        // E2/A at 9: the same in E2, whose baseline is its own.
        ("E2", "A", 9, "sX", 6, 5, none),
        // At 10 bucket 0 closes. E's samples {3, 6}: threshold max(3, 2 x 6) = 12 and B's
        // episode ends. E2's samples {6}: 1 < min_samples, so still 5, and A's episode goes on
        // (no second anomaly) until its events leave the window at 14.
        //
        // E2/A at 55: a new episode after the window expired: 6 > 5, baseline {6}.
        (
            "E2",
            "A",
            55,
            "sY",
            6,
            5,
            Baseline {
                samples: 1,
                quantile: Some(6),
            },
        ),
        // At 60 bucket 5 closes: E2's samples {6, 6}, threshold 12, the episode ends.
        //
        // E/C at 110, at a bucket boundary: bucket 0 expires (10 + 100) and bucket 10 (C: 8)
        // enters, so E's samples are {8}: 1 < min_samples, threshold back to 5, and C's count of
        // 8 (events 101..108 are all in (100, 110]) is now above it. C had no event at 110.
        (
            "E",
            "C",
            110,
            "sC",
            8,
            5,
            Baseline {
                samples: 1,
                quantile: Some(8),
            },
        ),
        // E/D at 120: 7 > 5 in one second; the session is that of the greatest id, d7.
        (
            "E",
            "D",
            120,
            "sD2",
            7,
            5,
            Baseline {
                samples: 1,
                quantile: Some(8),
            },
        ),
    ]
}

fn summarize(anomalies: &[Anomaly]) -> Vec<(String, String, u64, String, u64, u64, Baseline)> {
    let mut v: Vec<_> = anomalies
        .iter()
        .map(|a| {
            assert_eq!(a.reason, "excessive_downloads");
            assert_eq!(
                a.id,
                Anomaly::make_id(
                    &a.enterprise,
                    &a.user,
                    &a.reason,
                    a.detected_at,
                    a.session_id.as_deref()
                )
            );
            (
                a.enterprise.clone(),
                a.user.clone(),
                a.detected_at,
                a.session_id.clone().unwrap_or_default(),
                a.observed,
                a.threshold,
                a.baseline.clone(),
            )
        })
        .collect();
    v.sort_by(|a, b| (a.2, &a.0, &a.1).cmp(&(b.2, &b.0, &b.1)));
    v
}

#[test]
fn golden_stream_gives_exactly_the_listed_anomalies() {
    let events: Vec<_> = stream().into_iter().map(|e| (e.time, e)).collect();
    let input = EngineInput::new(events, vec![rule()], Default::default());
    let want: Vec<_> = expected()
        .into_iter()
        .map(|(e, u, t, s, o, th, b)| (e.to_string(), u.to_string(), t, s.to_string(), o, th, b))
        .collect();
    assert_eq!(summarize(&threshold_anomalies(&input)), want, "reference");
    let input = Arc::new(input);
    for workers in [1, 2] {
        let got = run(input.clone(), workers).unwrap().anomalies;
        assert_eq!(summarize(&got), want, "dataflow, {workers} workers");
        let d = got.iter().find(|a| a.user == "D").unwrap();
        assert_eq!(d.evidence.latest_event_id, "d7");
    }
}

#[test]
fn a_removed_rule_stops_firing_and_a_changed_one_applies_from_its_time() {
    // E/B's burst again, but the rule is only in force from 8 on, and removed at 9 for E2's
    // stream to show nothing fires without it.
    let events: Vec<_> = stream()
        .into_iter()
        .filter(|e| e.time <= 12)
        .map(|e| (e.time, e))
        .collect();
    let mut stricter = rule();
    stricter.eval.default_threshold = 6;
    let input = EngineInput {
        events: events.into(),
        rules: vec![(0, vec![rule()]), (9, vec![stricter])],
        end: 12,
        ..Default::default()
    };
    // At 9 the default threshold is 6: B and E2/A reach 6, which is not above it.
    assert!(threshold_anomalies(&input).is_empty());
    assert!(run(Arc::new(input.clone()), 1)
        .unwrap()
        .anomalies
        .is_empty());
    let removed = EngineInput {
        rules: vec![(0, vec![rule()]), (9, vec![])],
        ..input
    };
    assert!(threshold_anomalies(&removed).is_empty());
    assert!(run(Arc::new(removed), 2).unwrap().anomalies.is_empty());
}

#[test]
fn rules_grouped_by_ip_name_the_users_involved() {
    // Failed logins per source IP, W = 10 s, threshold 3. U1 fails at 1, then U2, U3 and U4.
    let failed = |id: &str, t: u64, user: &str| Event {
        ip: Some("203.0.113.9".into()),
        session: None,
        ..ev(id, t, "E", user, "user_login_failed", "")
    };
    let events: Vec<_> = vec![
        failed("f1", 1, "U1"),
        failed("f2", 5, "U2"),
        failed("f3", 8, "U3"),
        failed("f4", 11, "U2"),
        failed("f5", 11, "U4"),
        // Another IP with as many failures, all from one user, below the threshold per IP.
        Event {
            ip: Some("198.51.100.1".into()),
            ..failed("g1", 11, "U5")
        },
    ]
    .into_iter()
    .map(|e| (e.time, e))
    .collect();
    let mut by_ip = rule();
    by_ip.reason = "unexpected_credential_testing".into();
    by_ip.actions = ["user_login_failed".to_string()].into_iter().collect();
    by_ip.group_by = GroupBy::Ip;
    by_ip.eval.default_threshold = 3;
    by_ip.eval.min_samples = 1000;
    let input = EngineInput::new(events, vec![by_ip], Default::default());
    let reference = threshold_anomalies(&input);
    let engine = run(Arc::new(input), 2).unwrap().anomalies;
    assert_eq!(engine, reference);
    assert_eq!(reference.len(), 1);
    let a = &reference[0];
    // At 11 the window (1, 11] holds 4 failures; U1's at 1 is exactly one window old: not in it.
    assert_eq!(
        (a.user.as_str(), a.detected_at, a.observed),
        ("203.0.113.9", 11, 4)
    );
    assert_eq!(a.evidence.users, vec!["U2", "U3", "U4"]);
    assert_eq!(a.session_id, None);
}
