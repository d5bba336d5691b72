//! What counting one record costs: the metric looked up by name and labels at each record (as
//! the pipeline did), against a handle resolved once per plugin and topic (as it does now).

use criterion::{Criterion, criterion_group, criterion_main};
use flux_gateway::metrics::{self, Metrics};

fn count_a_record(c: &mut Criterion) {
    let metrics = Metrics::default();
    // A registry holding what a running gateway has: a few dozen series.
    for plugin in ["weather", "crypto", "news", "stocks"] {
        for topic in ["a", "b", "c", "d", "e"] {
            metrics
                .counter(metrics::RECORDS, &[("plugin", plugin), ("topic", topic)])
                .inc();
        }
    }
    let labels = [
        ("plugin", "crypto"),
        ("topic", "crypto.service.event.ticker"),
    ];
    let mut group = c.benchmark_group("count a record");
    group.bench_function("looked up by name and labels", |b| {
        b.iter(|| metrics.counter(metrics::RECORDS, &labels).inc())
    });
    let handle = metrics.counter(metrics::RECORDS, &labels);
    group.bench_function("resolved handle", |b| b.iter(|| handle.inc()));
    group.finish();
}

criterion_group!(benches, count_a_record);
criterion_main!(benches);
