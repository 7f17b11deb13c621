//! The core correctness proof: on generated streams (several enterprises, bursts and quiet
//! periods, late and duplicate events, rules, policies, allow-lists and Tor lists changed
//! mid-stream, heuristics with short histories) the incremental dataflow's anomalies and
//! decisions equal the batch reference's, for 1, 2 and 4 workers.

mod common;

use aer::dataflow::{run, EngineInput};
use aer::reference::{evaluate, threshold_anomalies};
use proptest::prelude::*;
use std::sync::Arc;

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
