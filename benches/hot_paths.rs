//! Criterion benchmarks of the hot paths `aer bench` measures as a whole: decoding audit-log
//! lines, sequencing (dedup and sort), and the detection dataflow on a small generated workload.
//! Run with `cargo bench --bench hot_paths`.

use std::sync::Arc;

use aer::config::Config;
use aer::dataflow::{self, EngineInput};
use aer::generate::{generate, GenerateOptions};
use aer::io::codec::{decode_line, LineRef};
use aer::io::sequencer::Sequencer;
use aer::model::Event;
use aer::replay::heuristic_setup;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

/// A generated workload of about `events` benign events, as lines.
fn workload(events: u64) -> Vec<String> {
    let mut bytes = Vec::new();
    let options = GenerateOptions {
        events,
        days: 3,
        ..GenerateOptions::default()
    };
    generate(&options, &mut bytes).expect("generate");
    String::from_utf8(bytes)
        .expect("utf-8")
        .lines()
        .map(str::to_string)
        .collect()
}

fn decode_all(lines: &[String]) -> Vec<Event> {
    let (mut events, mut rejects) = (Vec::new(), Vec::new());
    for (i, line) in lines.iter().enumerate() {
        let at = LineRef {
            source: "bench",
            line: i as u64 + 1,
        };
        decode_line(line, at, &mut events, &mut rejects);
    }
    assert!(rejects.is_empty());
    events
}

fn hot_paths(c: &mut Criterion) {
    let lines = workload(20_000);
    let events = decode_all(&lines);
    let n = events.len() as u64;

    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(n));
    group.bench_function("decode_line", |b| b.iter(|| decode_all(&lines)));
    group.bench_function("sequence", |b| {
        b.iter_batched(
            || events.chunks(4096).map(<[Event]>::to_vec).collect(),
            |blocks| Sequencer::sort_all(blocks, 2),
            BatchSize::LargeInput,
        )
    });
    group.finish();

    let config = Config::default();
    let (sequenced, _) = Sequencer::sort_all(vec![events], 1);
    let mut input = EngineInput::new(
        sequenced,
        config.rules().expect("rules"),
        config.policies().expect("policies"),
    );
    // The heuristic detectors that need no table (all but asn and tor).
    input.heuristics = heuristic_setup(&config.detectors, false)
        .expect("detectors")
        .0;
    let input = Arc::new(input);
    let mut group = c.benchmark_group("dataflow");
    group.sample_size(10);
    group.throughput(Throughput::Elements(n));
    for workers in [1, 2] {
        group.bench_function(format!("detect_and_decide/{workers}_workers"), |b| {
            b.iter(|| dataflow::run(input.clone(), workers).expect("run"))
        });
    }
    group.finish();
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
