//! The core correctness proof: on generated streams (several enterprises, bursts and quiet
//! periods, late and duplicate events, rules, policies, allow-lists and Tor lists changed
//! mid-stream, heuristics with short histories) the incremental dataflow's anomalies and
//! decisions equal the batch reference's, for 1, 2 and 4 workers, and through the live driver.

mod common;

use aer::dataflow::live::{Command, Live, LiveSettings, LiveState, Output};
use aer::dataflow::{run, EngineInput, EngineOutput};
use aer::reference::{evaluate, threshold_anomalies, threshold_state};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Runs `input` through the live driver: events, configuration changes and watermark advances
/// as commands, in the order the batch driver applies them; gathers the final outputs.
fn live(input: &EngineInput, workers: usize) -> (EngineOutput, LiveState) {
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = Live::start(
        LiveSettings {
            workers,
            heuristics: input.heuristics.clone(),
            session_expiry: input.session_expiry,
        },
        tx,
    )
    .expect("live dataflow starts");
    let mut changes: Vec<(u64, Command)> = input
        .rules
        .iter()
        .map(|(t, r)| (*t, Command::Rules(r.clone())))
        .chain(
            input
                .policies
                .iter()
                .map(|(t, p)| (*t, Command::Policies(p.clone()))),
        )
        .chain(
            input
                .tor
                .iter()
                .map(|(t, ips)| (*t, Command::Tor(ips.clone()))),
        )
        .filter(|(t, _)| *t <= input.end)
        .collect();
    changes.sort_by_key(|(t, _)| *t);
    let mut changes = changes.into_iter().peekable();
    let mut events = input.events.iter().peekable();
    loop {
        let change_first = match (events.peek(), changes.peek()) {
            (None, None) => break,
            (Some((te, _)), Some((tc, _))) => tc <= te,
            (None, Some(_)) => true,
            (Some(_), None) => false,
        };
        if change_first {
            let (at, change) = changes.next().unwrap();
            assert!(engine.send(Command::Advance(at)));
            assert!(engine.send(change));
        } else {
            assert!(engine.send(Command::Event(events.next().unwrap().clone())));
        }
    }
    assert!(engine.send(Command::Advance(input.end)));
    let state = engine.state();
    engine.finish().expect("live dataflow stops");
    let state = state.lock().unwrap().clone();
    let mut output = EngineOutput::default();
    let mut last = 0;
    for o in rx.iter() {
        match o {
            Output::Anomaly(a) => output.anomalies.push(a),
            Output::Final(t) => assert!(t >= last, "progress never goes back"),
            Output::Decision(d) => {
                assert!(d.decided_at >= last, "decisions leave in time order");
                last = d.decided_at;
                output.decisions.push(d)
            }
        }
    }
    output.anomalies.sort();
    (output, state)
}

fn check(input: EngineInput, workers: &[usize]) -> Result<(), TestCaseError> {
    let expected = evaluate(&input);
    prop_assert_eq!(expected.anomalies.len(), expected.decisions.len());
    let input = Arc::new(input);
    for &w in workers {
        let actual = run(input.clone(), w).expect("dataflow runs");
        prop_assert_eq!(
            &actual.anomalies,
            &expected.anomalies,
            "anomalies, {} workers",
            w
        );
        prop_assert_eq!(
            &actual.decisions,
            &expected.decisions,
            "decisions, {} workers",
            w
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn dataflow_equals_reference_one_and_two_workers(input in common::engine_input(40)) {
        check(input, &[1, 2])?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Workers that feed a few events at a time, with batches in flight ahead of the dataflow
    /// (`BATCHES_IN_FLIGHT`), as a large replay's workers do with 8,192 at a time.
    #[test]
    fn dataflow_equals_reference_in_small_batches(
        input in common::engine_input(40),
        batch in 1usize..6,
    ) {
        check(EngineInput { worker_batch: Some(batch), ..input }, &[1, 2, 4])?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn dataflow_equals_reference_four_workers(input in common::engine_input(40)) {
        check(input, &[4])?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// The soak: many more and longer cases. `cargo test --release --test oracle -- --ignored`.
    #[test]
    #[ignore]
    fn soak_dataflow_equals_reference(input in common::engine_input(120), workers in 1usize..4) {
        check(input, &[workers])?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The live driver (commands through a channel while the workers run) gives exactly the
    /// reference's results too.
    #[test]
    fn live_dataflow_equals_reference(input in common::engine_input(40), workers in 1usize..3) {
        let expected = evaluate(&input);
        let (actual, state) = live(&input, workers);
        prop_assert_eq!(&actual.anomalies, &expected.anomalies, "anomalies, {} workers", workers);
        prop_assert_eq!(&actual.decisions, &expected.decisions, "decisions, {} workers", workers);
        // The live counts and baselines the API serves equal the plain computation at as_of.
        prop_assert_eq!(state.as_of, Some(input.end));
        let (counts, baselines) = threshold_state(&input, input.end);
        let live_counts: BTreeMap<_, _> = state
            .counts
            .iter()
            .flat_map(|(e, m)| m.iter().map(move |((shape, key), n)| ((e.to_string(), *shape, key.to_string()), *n)))
            .collect();
        let live_baselines: BTreeMap<_, _> = state
            .baselines
            .iter()
            .flat_map(|(e, m)| m.iter().map(move |(shape, rb)| ((e.to_string(), *shape), ((*rb.0).clone(), rb.1.clone()))))
            .collect();
        prop_assert_eq!(live_counts, counts);
        prop_assert_eq!(live_baselines, baselines);
    }
}

/// The generated streams must exercise what they are meant to, or the comparison proves little.
#[test]
fn generated_streams_do_produce_anomalies() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut with_anomalies, mut late) = (0, 0);
    let mut outcomes = std::collections::BTreeSet::new();
    let mut reasons = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let input = common::engine_input(40)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        late += input.events.iter().filter(|(t, e)| *t != e.time).count();
        if !threshold_anomalies(&input).is_empty() {
            with_anomalies += 1;
        }
        for d in evaluate(&input).decisions {
            outcomes.insert(d.outcome);
            reasons.insert(d.anomaly.reason);
        }
    }
    assert!(
        with_anomalies >= 100,
        "only {with_anomalies} of 200 streams had threshold anomalies"
    );
    assert!(late > 0, "no late events generated");
    assert_eq!(
        outcomes.len(),
        7,
        "every decision outcome occurs: {outcomes:?}"
    );
    for reason in aer::model::HEURISTICS {
        assert!(
            reasons.contains(reason),
            "{reason} never fires: {reasons:?}"
        );
    }
}

/// The episode detector forgets keys whose window has passed in a sweep when its map has
/// doubled, and prunes a key's users when their list has doubled: both must leave every
/// anomaly as the reference reports it (its latest event, session and users counted in the
/// window). Hundreds of user keys come and go (so the map is swept many times) while a few
/// addresses are each used by many users within the window (so their users are pruned between
/// anomalies); the generated streams above hold too few keys to reach either.
#[test]
fn sweeping_and_pruning_the_episode_state_changes_no_anomaly() {
    use aer::model::{Event, GroupBy, Time};
    let eval = aer::model::Eval {
        quantile_ppm: 500_000,
        multiplier_milli: 1000,
        floor: 0,
        min_samples: 1_000_000,
        default_threshold: 3,
    };
    // An address goes over its threshold once nine users have failed to log in from it.
    let logins = aer::model::Eval {
        default_threshold: 8,
        ..eval.clone()
    };
    let rules = vec![
        common::rule(
            "downloads",
            &["file_downloaded"],
            20,
            100,
            GroupBy::User,
            eval,
        ),
        common::rule(
            "logins",
            &["user_login_failed"],
            60,
            300,
            GroupBy::Ip,
            logins,
        ),
    ];
    let event = |t: Time, n: u64, action: &str, user: String, ip: String| Event {
        id: format!("ev-{t:05}-{n}").into(),
        time: t,
        action: action.into(),
        enterprise: "E".into(),
        user: user.as_str().into(),
        session: Some(format!("s-{user}-{}", t / 50).as_str().into()),
        ip: Some(ip.as_str().into()),
        ua: None,
        asn: None,
    };
    let mut events = Vec::new();
    for t in 0..900u64 {
        // Five downloads a second by users that change every five seconds: 300 keys in all,
        // some of them over the threshold for a while.
        for n in 0..5 {
            let user = format!("U{:03}", (t / 5 + n * 7) % 300);
            events.push(event(t, n, "file_downloaded", user, format!("10.1.0.{n}")));
        }
        // Failed logins from three addresses in turn, each by one of many users, in spells of
        // a minute with 40 s between them: each spell starts a new episode whose window still
        // holds users of the spell before.
        if t % 4 == 0 && t % 100 < 60 {
            let user = format!("V{:02}", (t * 7) % 41);
            events.push(event(
                t,
                9,
                "user_login_failed",
                user,
                format!("10.2.0.{}", t / 300),
            ));
        }
    }
    let input = EngineInput {
        end: events.last().unwrap().time,
        events: events.into_iter().map(|e| (e.time, e)).collect(),
        rules: vec![(0, rules)],
        policies: vec![(0, aer::model::decision::Policies::default())],
        session_expiry: 1000,
        ..Default::default()
    };
    let expected = evaluate(&input);
    assert!(
        expected
            .anomalies
            .iter()
            .any(|a| a.evidence.users.len() >= 9),
        "some address anomaly lists many users"
    );
    assert!(
        expected
            .anomalies
            .iter()
            .filter(|a| a.reason == "downloads")
            .count()
            >= 20
    );
    let input = Arc::new(input);
    for workers in [1, 2] {
        let actual = run(input.clone(), workers).expect("dataflow runs");
        assert_eq!(actual.anomalies, expected.anomalies, "{workers} workers");
        assert_eq!(actual.decisions, expected.decisions, "{workers} workers");
    }
}
