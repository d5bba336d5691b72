//! What counting one record costs: the family looked up by its label set at each record (what
//! a per-record lookup costs on `prometheus-client`), against the consumer's own map of handles
//! by topic (what `pipeline.rs` does), and a bare resolved handle.

use criterion::{Criterion, criterion_group, criterion_main};
use flux_gateway::metrics::{Metrics, PluginTopicLabels};

fn count_a_record(c: &mut Criterion) {
    let metrics = Metrics::default();
    let labels = |plugin: &str, topic: &str| PluginTopicLabels {
        plugin: plugin.to_owned(),
        topic: topic.to_owned(),
    };
    // A registry holding what a running gateway has: a few dozen series.
    for plugin in ["weather", "crypto", "news", "stocks"] {
        for topic in ["a", "b", "c", "d", "e"] {
            metrics.records.get_or_create(&labels(plugin, topic)).inc();
        }
    }
    let (plugin, topic) = ("crypto", "crypto.service.event.ticker");
    let mut group = c.benchmark_group("count a record");
    group.bench_function("looked up by its label set", |b| {
        b.iter(|| metrics.records.get_or_create(&labels(plugin, topic)).inc())
    });
    let by_topic = parking_lot::Mutex::new(std::collections::HashMap::from([(
        topic.to_owned(),
        metrics.records.get_or_create_owned(&labels(plugin, topic)),
    )]));
    let record_topic = String::from(topic);
    group.bench_function("consumer's handle by topic", |b| {
        b.iter(|| {
            if let Some(counter) = by_topic.lock().get(record_topic.as_str()) {
                counter.inc();
            }
        })
    });
    let handle = metrics.records.get_or_create_owned(&labels(plugin, topic));
    group.bench_function("resolved handle", |b| b.iter(|| handle.inc()));
    group.finish();
}

criterion_group!(benches, count_a_record);
criterion_main!(benches);
