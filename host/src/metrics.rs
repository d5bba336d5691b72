//! A small Prometheus registry. Metric names are the constants below; labels stay
//! low-cardinality (plugin, topic, kind, outcome — never socket ids or city names).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

pub const BUS_PUBLISHED: &str = "flux_bus_published_total";
pub const BUS_DROPPED: &str = "flux_bus_dropped_total";
pub const BUS_PUBLISH_FAILED: &str = "flux_bus_publish_failed_total";
pub const DEAD_LETTERS: &str = "flux_dead_letters_total";
pub const PUBLISH_DEDUPLICATED: &str = "flux_publish_deduplicated_total";
pub const RECORDS: &str = "flux_records_total";
pub const RECORDS_FAILED: &str = "flux_records_failed_total";
pub const PLUGIN_CALLS: &str = "flux_plugin_calls_total";
pub const PLUGIN_ERRORS: &str = "flux_plugin_errors_total";
pub const PLUGIN_CALL_SECONDS: &str = "flux_plugin_call_seconds";
pub const PLUGIN_COMPILES: &str = "flux_plugin_compiles_total";
pub const PLUGIN_RELOADS: &str = "flux_plugin_reloads_total";
pub const PRECOMPILED_REFUSED: &str = "flux_precompiled_refused_total";
pub const PLUGIN_CALLS_REFUSED: &str = "flux_plugin_calls_refused_total";
pub const PLUGIN_CIRCUIT_STATE: &str = "flux_plugin_circuit_state";
pub const PLUGIN_CIRCUIT_OPENED: &str = "flux_plugin_circuit_opened_total";
pub const PLUGIN_CPU_THROTTLED: &str = "flux_plugin_cpu_throttled_total";
pub const PLUGIN_SLOW_CALLS: &str = "flux_plugin_slow_calls_total";
pub const PLUGIN_INSTANCES_REPLACED: &str = "flux_plugin_instances_replaced_total";
pub const ROOM_EMITS: &str = "flux_room_emits_total";
pub const ROOM_EMITS_CONFLATED: &str = "flux_room_emits_conflated_total";
pub const CACHE_EVICTIONS: &str = "flux_cache_evictions_total";
pub const HYDRATIONS: &str = "flux_hydrations_total";
pub const CLIENT_EVENTS: &str = "flux_client_events_total";
pub const SOCKETS_CONNECTED: &str = "flux_sockets_connected";
pub const DISCONNECTS: &str = "flux_disconnects_total";
pub const SLOW_CLIENT_DISCONNECTS: &str = "flux_slow_client_disconnects_total";
pub const EVENTS_REFUSED: &str = "flux_events_refused_total";
pub const COMMANDS_REFUSED: &str = "flux_commands_refused_total";
pub const JOINS_REFUSED: &str = "flux_joins_refused_total";
pub const ABUSE_DISCONNECTS: &str = "flux_abuse_disconnects_total";
pub const HANDSHAKES_REFUSED_ADDRESS: &str = "flux_handshakes_refused_address_total";
pub const AUTH_HANDSHAKES: &str = "flux_auth_handshakes_total";
pub const AUTH_REFRESHES: &str = "flux_auth_refreshes_total";
pub const AUTH_EXPIRED_DISCONNECTS: &str = "flux_auth_expired_disconnects_total";
pub const JWKS_FETCHES: &str = "flux_jwks_fetches_total";
pub const REQUESTS_FORBIDDEN: &str = "flux_requests_forbidden_total";
pub const ORIGIN_REFUSED: &str = "flux_origin_refused_total";
pub const ADMIN_UNAUTHORIZED: &str = "flux_admin_unauthorized_total";

const LATENCY_BUCKETS: [f64; 12] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1,
    1.0,
];

#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct HistogramCells {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

#[derive(Clone, Default)]
pub struct Histogram(Arc<HistogramCells>);

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| seconds <= *b) {
            self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.0.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

#[derive(Clone)]
enum Metric {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

/// The process's metrics. Handles are cheap clones; look one up once and keep it where a path
/// is hot.
#[derive(Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(&'static str, String), Metric>>,
}

impl Metrics {
    pub fn counter(&self, name: &'static str, labels: &[(&str, &str)]) -> Counter {
        match self.series(name, labels, || Metric::Counter(Counter::default())) {
            Metric::Counter(c) => c,
            _ => panic!("{name} is registered as another metric type"),
        }
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&str, &str)]) -> Gauge {
        match self.series(name, labels, || Metric::Gauge(Gauge::default())) {
            Metric::Gauge(g) => g,
            _ => panic!("{name} is registered as another metric type"),
        }
    }

    pub fn histogram(&self, name: &'static str, labels: &[(&str, &str)]) -> Histogram {
        match self.series(name, labels, || Metric::Histogram(Histogram::default())) {
            Metric::Histogram(h) => h,
            _ => panic!("{name} is registered as another metric type"),
        }
    }

    fn series(
        &self,
        name: &'static str,
        labels: &[(&str, &str)],
        make: impl FnOnce() -> Metric,
    ) -> Metric {
        let mut rendered = String::new();
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                rendered.push(',');
            }
            let value = value.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = write!(rendered, "{key}=\"{value}\"");
        }
        self.series
            .lock()
            .entry((name, rendered))
            .or_insert_with(make)
            .clone()
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let series = self.series.lock();
        let mut out = String::new();
        let mut last_name = "";
        for ((name, labels), metric) in series.iter() {
            if *name != last_name {
                let kind = match metric {
                    Metric::Counter(_) => "counter",
                    Metric::Gauge(_) => "gauge",
                    Metric::Histogram(_) => "histogram",
                };
                let _ = writeln!(out, "# TYPE {name} {kind}");
                last_name = name;
            }
            let braced = |extra: &str| match (labels.is_empty(), extra.is_empty()) {
                (true, true) => String::new(),
                (true, false) => format!("{{{extra}}}"),
                (false, true) => format!("{{{labels}}}"),
                (false, false) => format!("{{{labels},{extra}}}"),
            };
            match metric {
                Metric::Counter(c) => {
                    let _ = writeln!(out, "{name}{} {}", braced(""), c.get());
                }
                Metric::Gauge(g) => {
                    let _ = writeln!(out, "{name}{} {}", braced(""), g.get());
                }
                Metric::Histogram(h) => {
                    let mut cumulative = 0;
                    for (bound, cell) in LATENCY_BUCKETS.iter().zip(&h.0.buckets) {
                        cumulative += cell.load(Ordering::Relaxed);
                        let le = format!("le=\"{bound}\"");
                        let _ = writeln!(out, "{name}_bucket{} {cumulative}", braced(&le));
                    }
                    let count = h.0.count.load(Ordering::Relaxed);
                    let sum = h.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
                    let _ = writeln!(out, "{name}_bucket{} {count}", braced("le=\"+Inf\""));
                    let _ = writeln!(out, "{name}_sum{} {sum}", braced(""));
                    let _ = writeln!(out, "{name}_count{} {count}", braced(""));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics
            .counter(PLUGIN_CALLS, &[("plugin", "weather")])
            .add(3);
        metrics
            .counter(PLUGIN_CALLS, &[("plugin", "weather")])
            .inc();
        metrics.gauge(SOCKETS_CONNECTED, &[]).inc();
        metrics
            .histogram(PLUGIN_CALL_SECONDS, &[("plugin", "w")])
            .observe(Duration::from_micros(7));
        let text = metrics.render();
        assert!(text.contains("# TYPE flux_plugin_calls_total counter"));
        assert!(text.contains("flux_plugin_calls_total{plugin=\"weather\"} 4"));
        assert!(text.contains("flux_sockets_connected 1"));
        assert!(text.contains("flux_plugin_call_seconds_bucket{plugin=\"w\",le=\"0.00001\"} 1"));
        assert!(text.contains("flux_plugin_call_seconds_count{plugin=\"w\"} 1"));
    }
}
