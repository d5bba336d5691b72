//! A Python plugin against the same mapping in Rust: the shipped `fx` domain
//! (plugins/python/fx, built with componentize-py) and its line-for-line Rust twin
//! (tests/fixtures/fx), each called on this thread as a worker calls it — one FX record
//! mapped, one `fxRatesRequest` answered.
//!
//! Run: `scripts/build-plugins.sh && scripts/build-python-plugins.sh target/python-plugins &&
//! cargo bench -p flux-micro-bench --bench python_plugin`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use flux_gateway::plugin::ClientRequest;
use flux_gateway::sim::{FX_RATES, sample_records};

fn python_plugin(c: &mut Criterion) {
    let runtime = flux_micro_bench::runtime();
    let python = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/python-plugins/flux_fx.wasm"),
    )
    .expect("build it first: scripts/build-python-plugins.sh target/python-plugins");
    let record: Vec<_> = sample_records()
        .iter()
        .filter(|r| r.topic == FX_RATES)
        .map(flux_gateway::pipeline::to_wit)
        .collect();
    let request = ClientRequest {
        event: "fxRatesRequest".into(),
        payload: "null".into(),
        user_id: None,
    };
    for (language, wasm) in [
        ("rust", flux_tests::wasm("flux_fixture_fx")),
        ("python", python),
    ] {
        let mut instance = runtime.instance(&wasm).expect("the component loads");
        let mapped = instance.on_records(&record).expect("maps");
        assert!(matches!(mapped.as_slice(), [Ok(actions)] if actions.len() == 2));
        let mut group = c.benchmark_group(format!("fx/{language}"));
        group.bench_function("record", |b| {
            b.iter(|| black_box(instance.on_records(black_box(&record)).expect("maps")))
        });
        group.bench_function("request", |b| {
            b.iter(|| {
                black_box(
                    instance
                        .on_request(black_box(&request), None)
                        .expect("answers"),
                )
            })
        });
        group.finish();
    }
}

criterion_group!(benches, python_plugin);
criterion_main!(benches);
