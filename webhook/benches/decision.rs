//! Criterion benchmark of one admission decision against an index of 5,000 nodes and
//! 150,000 pods (issue 3 target: p99 ≤ 20 µs). `make bench` turns its figures into
//! BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use spillway_cluster::decision::PlacementCounts;
use spillway_common::config::OperatorConfig;
use spillway_webhook::admission;
use spillway_webhook::review;

fn bench(c: &mut Criterion) {
    let index = spillway_webhook::synthetic::cluster(5_000, 150_000, 500);
    let review = spillway_webhook::synthetic::review("bench-uid", 7);
    let (_, request) = review::parse(&review).expect("synthetic review parses");
    let config = OperatorConfig::default();
    let seal = spillway_webhook::decision_seal::DecisionSeal::random();
    c.bench_function(
        "decide (parse pod + decide + patch), 5k nodes, 150k pods",
        |b| {
            b.iter(|| {
                let evaluation = admission::evaluate(
                    black_box(&request),
                    &index,
                    |_| PlacementCounts::default(),
                    &config,
                    &seal,
                );
                black_box(evaluation.response)
            })
        },
    );
    c.bench_function(
        "parse AdmissionReview + decide + patch, 5k nodes, 150k pods",
        |b| {
            b.iter(|| {
                let (_, request) = review::parse(black_box(&review)).unwrap();
                black_box(
                    admission::evaluate(
                        &request,
                        &index,
                        |_| PlacementCounts::default(),
                        &config,
                        &seal,
                    )
                    .response,
                )
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
