//! The core correctness proof: on generated streams (several enterprises, bursts and quiet
//! periods, late and duplicate events, rules and decision policies changed mid-stream) the
//! incremental dataflow's anomalies and decisions equal the batch reference's, for 1, 2 and 4
//! workers.

mod common;

use aer::dataflow::run;
use aer::reference::{evaluate, threshold_anomalies};
use proptest::prelude::*;
use std::sync::Arc;

fn check(input: aer::dataflow::EngineInput, workers: &[usize]) -> Result<(), TestCaseError> {
    let expected = evaluate(&input);
    prop_assert_eq!(expected.anomalies.len(), expected.decisions.len());
    let input = Arc::new(input);
    for &w in workers {
        let actual = run(input.clone(), w).expect("dataflow runs");
        prop_assert_eq!(
            &actual.anomalies,
            &expected.anomalies,
            "anomalies, workers = {}",
            w
        );
        prop_assert_eq!(
            &actual.decisions,
            &expected.decisions,
            "decisions, workers = {}",
            w
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn dataflow_equals_reference_one_and_two_workers(
        arrivals in common::arrivals(40),
        timeline in common::timeline_strategy(),
        lateness in prop::option::of(0u64..8),
        policies in common::policies_strategy(),
        (heuristics, tor) in common::heuristics_strategy(),
    ) {
        let mut input = common::sequence(&arrivals, lateness, timeline);
        input.policies = policies;
        input.heuristics = heuristics;
        input.tor = tor;
        check(input, &[1, 2])?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn dataflow_equals_reference_four_workers(
        arrivals in common::arrivals(40),
        timeline in common::timeline_strategy(),
        lateness in prop::option::of(0u64..8),
        policies in common::policies_strategy(),
        (heuristics, tor) in common::heuristics_strategy(),
    ) {
        let mut input = common::sequence(&arrivals, lateness, timeline);
        input.policies = policies;
        input.heuristics = heuristics;
        input.tor = tor;
        check(input, &[4])?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// The soak: many more and longer cases. `cargo test --release --test oracle -- --ignored`.
    #[test]
    #[ignore]
    fn soak_dataflow_equals_reference(
        arrivals in common::arrivals(120),
        timeline in common::timeline_strategy(),
        lateness in prop::option::of(0u64..8),
        workers in 1usize..4,
        policies in common::policies_strategy(),
        (heuristics, tor) in common::heuristics_strategy(),
    ) {
        let mut input = common::sequence(&arrivals, lateness, timeline);
        input.policies = policies;
        input.heuristics = heuristics;
        input.tor = tor;
        check(input, &[workers])?;
    }
}

/// The generated streams must actually produce anomalies, or the comparison proves little.
#[test]
fn generated_streams_do_produce_anomalies() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut with_anomalies = 0;
    let mut late = 0;
    for _ in 0..30 {
        let arrivals = common::arrivals(40)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let timeline = common::timeline_strategy()
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let input = common::sequence(&arrivals, Some(3), timeline);
        late += input.events.iter().filter(|(t, e)| *t != e.time).count();
        if !threshold_anomalies(&input).is_empty() {
            with_anomalies += 1;
        }
    }
    assert!(
        with_anomalies >= 15,
        "only {with_anomalies} of 30 streams had anomalies"
    );
    assert!(late > 0, "no late events generated");
}
