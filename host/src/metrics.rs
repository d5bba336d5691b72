//! The process's metrics, on `prometheus-client` (the Prometheus project's Rust client).
//!
//! Every family is a typed field of [`Metrics`], registered once under its documented name;
//! its labels are a typed set, all low-cardinality (plugin, topic, kind, outcome — never socket
//! ids or city names). A counter named `flux_x` here is exposed as `flux_x_total`. A hot path
//! resolves its handle once (`family.get_or_create_owned(&labels)`) and keeps it: a handle is an
//! `Arc` of an atomic, and counting through it takes no lock.
//!
//! Operational events that are logged as well as counted are typed values in
//! [`crate::telemetry`]; their `emit` writes both.

use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::registry::Registry;

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Guest calls take microseconds; a bucket past a second would only count deadline hits.
const CALL_SECONDS_BUCKETS: [f64; 12] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1,
    1.0,
];

/// Declares label sets: each field is a label, named as the field.
macro_rules! label_sets {
    ($($(#[$doc:meta])* $name:ident { $($label:ident: $value:ty),+ })*) => {$(
        $(#[$doc])*
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        pub struct $name { $(pub $label: $value),+ }
    )*};
}

label_sets! {
    TopicLabels { topic: String }
    PluginLabels { plugin: String }
    PluginTopicLabels { plugin: String, topic: String }
    /// `kind`: what went wrong in or around a guest call (`trap`, `timeout`, `quota`, …).
    PluginErrorLabels { plugin: String, kind: &'static str }
    /// `reason`: why a call was not run (`circuit_open`, `cpu_budget`).
    PluginRefusalLabels { plugin: String, reason: &'static str }
    /// `outcome`: `loaded`, `rejected`, `rolled_back` or `unloaded`.
    PluginReloadLabels { plugin: String, outcome: &'static str }
    /// `source`: `compiled`, or `cache` when the precompiled cache held the component.
    CompileLabels { source: &'static str }
    OutcomeLabels { outcome: &'static str }
    ReasonLabels { reason: &'static str }
    /// `kind`: a `known` or `unknown` client event.
    ClientEventLabels { kind: &'static str }
    /// `missed`: what a slow client could not be sent (`ack`, `reply`, `hydration`, `error`).
    MissedLabels { missed: &'static str }
}

/// Makes each plugin's call-latency histogram.
#[derive(Clone, Default)]
pub struct CallSecondsBuckets;

impl MetricConstructor<Histogram> for CallSecondsBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(CALL_SECONDS_BUCKETS)
    }
}

/// Declares [`Metrics`] from one table: each family's field, type, name and help (and how it
/// is made, where not by `Default`), registered once when the metrics are built.
macro_rules! families {
    (@make) => { Default::default() };
    (@make $make:expr) => { $make };
    ($($field:ident: $family:ty = $name:literal, $help:literal $(, $make:expr)?;)*) => {
        /// The process's metric families. Build one per gateway (tests build several in one
        /// process).
        pub struct Metrics {
            registry: Registry,
            $(pub $field: $family,)*
        }

        impl Default for Metrics {
            fn default() -> Self {
                let mut registry = Registry::default();
                $(
                    let $field: $family = families!(@make $($make)?);
                    registry.register($name, $help, $field.clone());
                )*
                Self { registry, $($field),* }
            }
        }
    };
}

families! {
    // The bus.
    bus_published: Family<TopicLabels, Counter> = "flux_bus_published", "Records published to the bus";
    bus_dropped: Family<TopicLabels, Counter> = "flux_bus_dropped", "Embedded-bus records dropped for a full subscriber queue";
    bus_publish_failed: Family<TopicLabels, Counter> = "flux_bus_publish_failed", "Published records Kafka did not deliver";
    publish_deduplicated: Family<TopicLabels, Counter> = "flux_publish_deduplicated", "Publishes suppressed by their dedupe key";
    // Records through plugins.
    records: Family<PluginTopicLabels, Counter> = "flux_records", "Records handled by a plugin";
    records_failed: Family<PluginTopicLabels, Counter> = "flux_records_failed", "Records a plugin failed on";
    dead_letters: Family<PluginTopicLabels, Counter> = "flux_dead_letters", "Records sent to the dead-letter topic";
    // Plugins.
    plugin_calls: Family<PluginLabels, Counter> = "flux_plugin_calls", "Guest calls";
    plugin_errors: Family<PluginErrorLabels, Counter> = "flux_plugin_errors", "Guest call failures and refused actions, by kind";
    plugin_call_seconds: Family<PluginLabels, Histogram, CallSecondsBuckets> = "flux_plugin_call_seconds", "Guest call latency", Family::new_with_constructor(CallSecondsBuckets);
    plugin_compiles: Family<CompileLabels, Counter> = "flux_plugin_compiles", "Components made ready, compiled or from the precompiled cache";
    plugin_reloads: Family<PluginReloadLabels, Counter> = "flux_plugin_reloads", "Plugin version changes, by outcome";
    precompiled_refused: Counter = "flux_precompiled_refused", "Precompiled artifacts refused (unauthenticated or incompatible)";
    plugin_calls_refused: Family<PluginRefusalLabels, Counter> = "flux_plugin_calls_refused", "Guest calls not run, by reason";
    plugin_circuit_state: Family<PluginLabels, Gauge> = "flux_plugin_circuit_state", "Circuit of the live version: 0 closed, 1 open, 2 half-open";
    plugin_circuit_opened: Family<PluginLabels, Counter> = "flux_plugin_circuit_opened", "Times a plugin's circuit opened";
    plugin_cpu_throttled: Family<PluginLabels, Counter> = "flux_plugin_cpu_throttled", "Times a plugin waited for its CPU budget";
    plugin_slow_calls: Family<PluginLabels, Counter> = "flux_plugin_slow_calls", "Guest calls past half their deadline";
    plugin_instances_replaced: Family<PluginLabels, Counter> = "flux_plugin_instances_replaced", "Guest instances replaced after a trap";
    fleet_releases: Family<OutcomeLabels, Counter> = "flux_fleet_releases", "Releases and removals read from the fleet topic, by what this node did with them";
    // Rooms and the cache.
    room_emits: Counter = "flux_room_emits", "Events emitted to rooms";
    room_emits_conflated: Counter = "flux_room_emits_conflated", "Room events conflated for a lagging client";
    cache_evictions: Counter = "flux_cache_evictions", "Cache entries evicted for size";
    hydrations: Counter = "flux_hydrations", "Cached snapshots sent to a joining socket";
    // Clients.
    client_events: Family<ClientEventLabels, Counter> = "flux_client_events", "Client request events, by kind";
    sockets_connected: Gauge = "flux_sockets_connected", "Connected sockets";
    disconnects: Family<ReasonLabels, Counter> = "flux_disconnects", "Socket disconnects, by reason";
    slow_client_disconnects: Family<MissedLabels, Counter> = "flux_slow_client_disconnects", "Sockets disconnected for not taking what they must be sent";
    events_refused: Counter = "flux_events_refused", "Client events refused by the per-socket rate limit";
    commands_refused: Counter = "flux_commands_refused", "Upstream commands refused by the per-socket budget";
    joins_refused: Counter = "flux_joins_refused", "Room joins refused by the per-socket room limit";
    abuse_disconnects: Counter = "flux_abuse_disconnects", "Sockets disconnected for sustained abuse";
    handshakes_refused_address: Counter = "flux_handshakes_refused_address", "Handshakes refused by the per-address limit";
    origin_refused: Counter = "flux_origin_refused", "Requests refused for their Origin";
    // Authentication and authorization.
    auth_handshakes: Family<OutcomeLabels, Counter> = "flux_auth_handshakes", "Handshake authentications, by outcome";
    auth_refreshes: Family<OutcomeLabels, Counter> = "flux_auth_refreshes", "Token refreshes, by outcome";
    auth_expired_disconnects: Counter = "flux_auth_expired_disconnects", "Sockets disconnected when their token expired";
    jwks_fetches: Family<OutcomeLabels, Counter> = "flux_jwks_fetches", "JWKS fetches, by outcome";
    requests_forbidden: Family<PluginLabels, Counter> = "flux_requests_forbidden", "Requests refused for a missing scope";
    admin_unauthorized: Counter = "flux_admin_unauthorized", "Admin requests without the admin token";
}

impl Metrics {
    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The label set of a plugin's families.
pub fn plugin(name: &str) -> PluginLabels {
    PluginLabels {
        plugin: name.to_owned(),
    }
}

/// The label set of a topic's families.
pub fn topic(name: &str) -> TopicLabels {
    TopicLabels {
        topic: name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_under_the_documented_names() {
        let metrics = Metrics::default();
        metrics
            .plugin_calls
            .get_or_create(&plugin("weather"))
            .inc_by(3);
        let handle = metrics.plugin_calls.get_or_create_owned(&plugin("weather"));
        handle.inc();
        metrics.sockets_connected.inc();
        metrics
            .plugin_call_seconds
            .get_or_create(&plugin("w"))
            .observe(0.000_007);
        let _ = metrics.plugin_errors.get_or_create(&PluginErrorLabels {
            plugin: "relay".into(),
            kind: "trap",
        });
        let text = metrics.render();
        assert!(text.contains("# TYPE flux_plugin_calls_total counter"));
        assert!(text.contains("flux_plugin_calls_total{plugin=\"weather\"} 4"));
        assert!(text.contains("flux_sockets_connected 1"));
        assert!(text.contains("flux_plugin_call_seconds_bucket{plugin=\"w\",le=\"1e-05\"} 1"));
        assert!(text.contains("flux_plugin_call_seconds_count{plugin=\"w\"} 1"));
        assert!(text.contains("flux_plugin_errors_total{plugin=\"relay\",kind=\"trap\"} 0"));
    }
}
