//! The plugin path, per record: record → plugin → actions, for each domain at batch 1 and
//! batch 64, three ways:
//! - `native`: the plugin's own Rust mapping compiled natively (the baseline);
//! - `component`: the WebAssembly component called on this thread (lowering the records,
//!   the guest's work, lifting the actions), as a plugin's worker thread calls it;
//! - `worker`: the whole production path, through the plugin's job queue to its worker
//!   thread and back;
//! - `hop`: a job that runs nothing through the same queue and back: the worker hop alone;
//! - `worker-nospin`, `hop-nospin`: the same with `limits.worker_spin_us = 0`, each side
//!   sleeping as soon as it waits (what every call paid before the spin).
//!
//! And what replacing an instance after a trap costs.
//!
//! Run: `cargo bench -p flux-micro-bench` (after `scripts/build-plugins.sh`).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use flux_gateway::plugin::WitRecord;
use flux_micro_bench::{DOMAINS, batch, runtime, runtime_without_spin};

const BATCHES: [usize; 2] = [1, 64];

fn plugin_path(c: &mut Criterion) {
    let runtime = runtime();
    let sleepy = runtime_without_spin();
    let async_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    for domain in &DOMAINS {
        let wasm = flux_tests::wasm(domain.component);
        let mut instance = runtime.instance(&wasm).expect("the component loads");
        let worker = runtime.load(&wasm).expect("the component loads");
        let sleepy_worker = sleepy.load(&wasm).expect("the component loads");
        let mut group = c.benchmark_group(format!("plugin_path/{}", domain.name));
        for (name, worker) in [("hop", &worker), ("hop-nospin", &sleepy_worker)] {
            group.bench_function(name, |b| {
                b.iter(|| {
                    async_runtime
                        .block_on(worker.round_trip())
                        .expect("answers")
                })
            });
        }
        for size in BATCHES {
            let (host, guest) = batch(domain, size);
            group.throughput(Throughput::Elements(size as u64));
            group.bench_function(format!("native/batch-{size}"), |b| {
                b.iter(|| black_box((domain.native)(black_box(&guest))))
            });
            group.bench_function(format!("component/batch-{size}"), |b| {
                b.iter(|| black_box(instance.on_records(black_box(&host)).expect("maps")))
            });
            // The worker takes its batch by value, as the pipeline hands it over.
            for (name, worker) in [("worker", &worker), ("worker-nospin", &sleepy_worker)] {
                group.bench_function(format!("{name}/batch-{size}"), |b| {
                    b.iter_batched(
                        || host.clone(),
                        |records| {
                            async_runtime
                                .block_on(worker.on_records(records))
                                .expect("maps")
                        },
                        BatchSize::SmallInput,
                    )
                });
            }
        }
        group.finish();
    }
}

/// A trap discards the instance; the next call instantiates a fresh one from the pre-linked
/// template. `call` is a normal call on a warm instance; `trap_then_call` is a trapping call
/// followed by a normal one, so the difference is what the trap and the replacement cost.
fn instance_replacement(c: &mut Criterion) {
    let runtime = runtime();
    let mut instance = runtime
        .instance(&flux_tests::wasm("flux_fixture_misbehave"))
        .expect("the fixture loads");
    let record = |command: &str| WitRecord {
        topic: "fixture.commands".into(),
        key: Some(command.into()),
        payload: format!("\"{command}\""),
        timestamp_ms: 0,
    };
    let (ok, trap) = ([record("ok")], [record("panic")]);
    let mut group = c.benchmark_group("instance_replacement");
    group.bench_function("call", |b| {
        b.iter(|| instance.on_records(&ok).expect("the ok command maps"))
    });
    group.bench_function("trap_then_call", |b| {
        b.iter(|| {
            instance
                .on_records(&trap)
                .expect_err("the panic command traps");
            instance.on_records(&ok).expect("a fresh instance serves")
        })
    });
    group.finish();
}

criterion_group!(benches, plugin_path, instance_replacement);
criterion_main!(benches);
