//! What counting one record costs: the metric looked up by name and labels at each record (as
//! the pipeline did), against the consumer's own map of handles by topic (as it does now, see
//! `pipeline.rs`), and a bare resolved handle.

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
    let by_topic = parking_lot::Mutex::new(std::collections::HashMap::from([(
        "crypto.service.event.ticker".to_owned(),
        metrics.counter(metrics::RECORDS, &labels),
    )]));
    let topic = String::from("crypto.service.event.ticker");
    group.bench_function("consumer's handle by topic", |b| {
        b.iter(|| {
            if let Some(counter) = by_topic.lock().get(topic.as_str()) {
                counter.inc();
            }
        })
    });
    let handle = metrics.counter(metrics::RECORDS, &labels);
    group.bench_function("resolved handle", |b| b.iter(|| handle.inc()));
    group.finish();
}

criterion_group!(benches, count_a_record);
criterion_main!(benches);
