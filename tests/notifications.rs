//! Notification routing and coalescing: a worked scenario with every rule of DESIGN 6 (first
//! alert at once, later ones within `group_interval` as one digest, no repeat of a (user, reason)
//! within `repeat_interval`, per (enterprise, recipient)), a property test of the coalescer's
//! invariants over random decision streams, and configuration validation.

mod support;

use std::collections::BTreeMap;

use aer::config::Config;
use aer::model::decision::{Decision, Outcome};
use aer::model::GroupBy;
use aer::response::config::NotificationsConfig;
use aer::response::notify::{Coalescer, MessageKind, Notification, Role};
use proptest::prelude::*;
use support::tor_decision;

const GROUP: u64 = 300;
const REPEAT: u64 = 4 * 3600;

fn coalescer() -> Coalescer {
    Coalescer::new(
        NotificationsConfig::default().routing().unwrap(),
        GROUP,
        REPEAT,
    )
}

fn to(
    messages: &[Notification],
    role: Role,
    address: &str,
) -> Vec<(u64, MessageKind, Vec<String>, u64)> {
    messages
        .iter()
        .filter(|n| n.recipient.role == role && n.recipient.address == address)
        .map(|n| {
            (
                n.send_at,
                n.kind,
                n.items.iter().map(|i| i.user.clone()).collect(),
                n.repeats_suppressed,
            )
        })
        .collect()
}

#[test]
fn first_alert_at_once_then_digests_and_no_repeats() {
    let decisions = vec![
        tor_decision("A", 1_000, Outcome::Reset),
        tor_decision("B", 1_100, Outcome::Reset),
        tor_decision("C", 1_200, Outcome::Monitored),
        // The same (user, reason) again: not repeated to anyone who was told.
        tor_decision("A", 1_250, Outcome::Reset),
        tor_decision("D", 1_400, Outcome::LoopSuppressed),
        // Past repeat_interval, A is news again.
        tor_decision("A", 1_000 + REPEAT, Outcome::Reset),
    ];
    let (messages, suppressed) = coalescer().run(&decisions);
    use MessageKind::*;
    assert_eq!(
        to(&messages, Role::SecurityAdmin, "security-admins"),
        vec![
            (1_000, Alert, vec!["A".into()], 0),
            // Held from 1 100 and 1 200, sent when group_interval after the alert ended, with
            // the one repeat left out.
            (1_300, Digest, vec!["B".into(), "C".into()], 1),
            // D came 100 s after that digest: held for the next.
            (1_600, Digest, vec!["D".into()], 0),
            (1_000 + REPEAT, Alert, vec!["A".into()], 0),
        ]
    );
    // Each user is a recipient of their own: told at once about resets, not about monitoring.
    assert_eq!(
        to(&messages, Role::User, "A"),
        vec![
            (1_000, Alert, vec!["A".into()], 0),
            (1_000 + REPEAT, Alert, vec!["A".into()], 1),
        ]
    );
    assert_eq!(
        to(&messages, Role::User, "B"),
        vec![(1_100, Alert, vec!["B".into()], 0)]
    );
    assert!(to(&messages, Role::User, "C").is_empty());
    // The Org Primary Owner hears of escalations only.
    assert_eq!(
        to(&messages, Role::OrgPrimaryOwner, "org-primary-owner"),
        vec![(1_400, Alert, vec!["D".into()], 0)]
    );
    assert_eq!(suppressed, 2);
    // notifications.jsonl order, and ids are a function of the content.
    assert!(messages
        .windows(2)
        .all(|w| (w[0].send_at, &w[0].id) <= (w[1].send_at, &w[1].id)));
    let (again, _) = coalescer().run(&decisions);
    assert_eq!(messages, again);
    let digest = messages.iter().find(|n| n.items.len() == 2).unwrap();
    assert!(digest.text.contains("1 repeated alerts"), "{}", digest.text);
    assert_eq!(digest.subject, "aer: 2 alerts in E");
}

#[test]
fn routing_follows_the_enterprise_configuration() {
    let config: Config = toml::from_str(
        r##"
        [notifications.channels.secops]
        kind = "webhook"
        url = "http://127.0.0.1:9/hook"

        [notifications.routes.security_admins]
        channel = "secops"
        addresses = ["#secops"]

        [notifications.enterprises.E.user]
        on = []
        [notifications.enterprises.E.org_primary_owner]
        addresses = ["owner@e.example"]
        on = ["reset"]
        "##,
    )
    .unwrap();
    let routing = config.notifications.routing().unwrap();
    let recipients = |d: &Decision| {
        routing
            .recipients(d)
            .into_iter()
            .map(|r| (r.role, r.address, r.channel))
            .collect::<Vec<_>>()
    };
    let reset = tor_decision("A", 100, Outcome::Reset);
    assert_eq!(
        recipients(&reset),
        vec![
            (
                Role::OrgPrimaryOwner,
                "owner@e.example".into(),
                "log".into()
            ),
            (Role::SecurityAdmin, "#secops".into(), "secops".into()),
        ],
        "E's user route is off; its owner route is merged over the default"
    );
    // Another enterprise uses the default routes.
    let mut elsewhere = reset.clone();
    elsewhere.enterprise = "F".into();
    assert_eq!(recipients(&elsewhere).len(), 2);
    assert_eq!(
        recipients(&elsewhere)[0],
        (Role::User, "A".into(), "log".into())
    );
    // A rule keyed by IP names no user to tell.
    let mut by_ip = elsewhere.clone();
    by_ip.anomaly.evidence.group_by = GroupBy::Ip;
    assert!(recipients(&by_ip).iter().all(|r| r.0 != Role::User));
    // Quiet outcomes notify nobody.
    assert!(recipients(&tor_decision("A", 100, Outcome::Duplicate)).is_empty());
}

#[test]
fn bad_notification_configuration_is_refused_with_the_section_named() {
    let error = |text: &str| {
        let config: Config = toml::from_str(text).unwrap();
        config.notifications.routing().unwrap_err().to_string()
    };
    let e = error("[notifications.routes.security_admins]\nchannel = \"pager\"");
    assert!(
        e.contains("notifications.routes.security_admins") && e.contains("pager"),
        "{e}"
    );
    let e = error(
        "[notifications.channels.mail]\nkind = \"email\"\nhost = \"smtp\"\nfrom = \"a@b.c\"\n\
         [notifications.routes.user]\nchannel = \"mail\"",
    );
    assert!(e.contains("user ids"), "{e}");
    let e = error("[notifications.channels.hook]\nkind = \"webhook\"");
    assert!(e.contains("url"), "{e}");
    let e = error(
        "[notifications.channels.hook]\nkind = \"webhook\"\nurl = \"http://x\"\nhost = \"smtp\"",
    );
    assert!(e.contains("host") && e.contains("webhook"), "{e}");
    let e = error("[notifications.routes.org_primary_owner]\naddresses = []");
    assert!(e.contains("nobody"), "{e}");
    let e = error("[notifications]\ngroup_interval = \"0s\"");
    assert!(e.contains("group_interval"), "{e}");
    let e = error(
        "[notifications.channels.mail]\nkind = \"email\"\nhost = \"smtp\"\nfrom = \"a@b.c\"\n\
         [notifications.routes.security_admins]\nchannel = \"mail\"\naddresses = [\"not mail\"]",
    );
    assert!(e.contains("not mail"), "{e}");
    // Unknown fields are errors, not ignored settings.
    assert!(toml::from_str::<Config>("[notifications]\ngroup_intervall = \"1m\"").is_err());
    assert!(toml::from_str::<Config>("[response]\nbackend = \"pagerduty\"").is_err());
    // A slack backend without its token fails before anything runs.
    let config: Config = toml::from_str(
        "[response]\nbackend = \"slack\"\n[response.slack]\ntoken_env = \"AER_TEST_TOKEN_THAT_IS_NOT_SET\"",
    )
    .unwrap();
    let e = config.response.backend().err().unwrap().to_string();
    assert!(e.contains("AER_TEST_TOKEN_THAT_IS_NOT_SET"), "{e}");
}

fn stream() -> impl Strategy<Value = Vec<Decision>> {
    let step = (
        0u64..400,
        0usize..4,
        0usize..2,
        prop::sample::select(vec![
            Outcome::Reset,
            Outcome::ResetPersisting,
            Outcome::Monitored,
            Outcome::LoopSuppressed,
            Outcome::Duplicate,
        ]),
    );
    prop::collection::vec(step, 1..60).prop_map(|steps| {
        let mut t = 10_000;
        steps
            .into_iter()
            .enumerate()
            .map(|(i, (gap, user, reason, outcome))| {
                t += gap;
                let mut d = tor_decision(&format!("U{user}"), t, outcome);
                d.anomaly.reason = ["tor", "session_fingerprint"][reason].into();
                d.id = format!("d{i:03}");
                d
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the stream: every routed alert is in exactly one message or was a justified
    /// repeat; messages to a recipient are at least group_interval apart; nothing waits longer
    /// than group_interval; no (user, reason) reaches a recipient twice within repeat_interval.
    #[test]
    fn the_coalescer_keeps_its_promises(decisions in stream()) {
        let (group, repeat) = (300u64, 1_800u64);
        let routing = NotificationsConfig::default().routing().unwrap();
        let (messages, suppressed) =
            Coalescer::new(routing.clone(), group, repeat).run(&decisions);
        let mut delivered: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut by_recipient: BTreeMap<String, Vec<&Notification>> = BTreeMap::new();
        for n in &messages {
            by_recipient.entry(format!("{:?}/{}", n.recipient.role, n.recipient.address)).or_default().push(n);
            for item in &n.items {
                let key = (item.decision_id.clone(), format!("{:?}/{}", n.recipient.role, n.recipient.address));
                *delivered.entry(key).or_default() += 1;
                prop_assert!(item.decided_at <= n.send_at && n.send_at - item.decided_at <= group);
                if n.kind == MessageKind::Alert {
                    prop_assert_eq!(n.send_at, item.decided_at);
                }
            }
        }
        prop_assert!(delivered.values().all(|c| *c == 1), "an alert in two messages");
        let mut repeats = 0;
        for d in &decisions {
            for r in routing.recipients(d) {
                let who = format!("{:?}/{}", r.role, r.address);
                if delivered.contains_key(&(d.id.clone(), who.clone())) {
                    continue;
                }
                repeats += 1;
                // A repeat: the same (user, reason) went to this recipient shortly before.
                let justified = messages.iter().any(|n| {
                    format!("{:?}/{}", n.recipient.role, n.recipient.address) == who
                        && n.items.iter().any(|i| {
                            i.user == d.user
                                && i.reason == d.anomaly.reason
                                && i.decided_at <= d.decided_at
                                && d.decided_at - i.decided_at < repeat
                        })
                });
                prop_assert!(justified, "{} to {} dropped without cause", d.id, who);
            }
        }
        prop_assert_eq!(repeats, suppressed);
        let counted: u64 = messages.iter().map(|n| n.repeats_suppressed).sum();
        prop_assert!(counted <= suppressed);
        for list in by_recipient.values() {
            for w in list.windows(2) {
                prop_assert!(w[1].send_at >= w[0].send_at + group, "messages closer than group_interval");
            }
            let mut seen: BTreeMap<(String, String), u64> = BTreeMap::new();
            for n in list {
                for i in &n.items {
                    if let Some(prev) = seen.insert((i.user.clone(), i.reason.clone()), i.decided_at) {
                        prop_assert!(i.decided_at - prev >= repeat, "repeated within repeat_interval");
                    }
                }
            }
        }
    }
}
