//! What the plugin-path benchmarks (`benches/plugin_path.rs`) run: the four domain plugins,
//! once as the WebAssembly components the gateway loads and once as the very same Rust
//! mapping compiled natively, fed the records the simulated services publish.
//!
//! # Layout
//! - [`Domain`]: a domain plugin, its component and its native mapping.
//! - [`batch`]: `n` records for a domain, in both the host's and the guest's types.

use std::sync::Arc;

use flux_gateway::bus::BusRecord;
use flux_gateway::cache::SnapshotCache;
use flux_gateway::config::Policies;
use flux_gateway::metrics::Metrics;
use flux_gateway::plugin::{PluginRuntime, WitRecord};
use flux_plugin_sdk::{Action, Plugin};

// The domain plugins' own sources, compiled natively (`plugin!` exports nothing off wasm32):
// the baseline is the very code the components run. Included as modules rather than linked
// as crates because a plugin crate that is also an `rlib` no longer gets link-time
// optimisation as a component (40 % larger, slower to compile on every hot reload).
#[path = "../../../plugins/crypto/src/lib.rs"]
mod crypto;
#[path = "../../../plugins/news/src/lib.rs"]
mod news;
#[path = "../../../plugins/stocks/src/lib.rs"]
mod stocks;
#[path = "../../../plugins/weather/src/lib.rs"]
mod weather;

/// The mapping a plugin applies to a batch, natively: what the component's `on-records` does
/// inside the guest, without WebAssembly around it.
pub type NativeMapping = fn(&[flux_plugin_sdk::BusRecord]) -> Vec<Result<Vec<Action>, String>>;

pub struct Domain {
    pub name: &'static str,
    /// The component's file name, without `.wasm`.
    pub component: &'static str,
    pub topics: &'static [&'static str],
    pub native: NativeMapping,
}

fn native<P: Plugin>(records: &[flux_plugin_sdk::BusRecord]) -> Vec<Result<Vec<Action>, String>> {
    records.iter().map(P::on_record).collect()
}

pub const DOMAINS: [Domain; 4] = [
    Domain {
        name: "weather",
        component: "flux_weather",
        topics: &["weather.service.event.updated"],
        native: native::<weather::Weather>,
    },
    Domain {
        name: "crypto",
        component: "flux_crypto",
        topics: &[
            "crypto.service.event.ticker",
            "crypto.service.event.top-movers",
            "crypto.service.event.top-coins",
        ],
        native: native::<crypto::Crypto>,
    },
    Domain {
        name: "news",
        component: "flux_news",
        topics: &["news.service.event.updated"],
        native: native::<news::News>,
    },
    Domain {
        name: "stocks",
        component: "flux_stocks",
        topics: &["stock.service.event.top-performers"],
        native: native::<stocks::Stocks>,
    },
];

/// `n` records of `domain`'s topics (cycling through them), as the host hands them to a
/// component and as the native mapping takes them.
pub fn batch(domain: &Domain, n: usize) -> (Vec<WitRecord>, Vec<flux_plugin_sdk::BusRecord>) {
    let samples: Vec<BusRecord> = flux_gateway::sim::sample_records()
        .into_iter()
        .filter(|r| domain.topics.contains(&r.topic.as_str()))
        .collect();
    assert!(!samples.is_empty(), "no sample record for {}", domain.name);
    let host: Vec<WitRecord> = samples
        .iter()
        .cycle()
        .take(n)
        .map(flux_gateway::pipeline::to_wit)
        .collect();
    let guest = host
        .iter()
        .map(|r| flux_plugin_sdk::BusRecord {
            topic: r.topic.clone(),
            key: r.key.clone(),
            payload: r.payload.clone(),
            timestamp_ms: r.timestamp_ms,
        })
        .collect();
    (host, guest)
}

/// A runtime configured as the gateway's (default limits, no precompiled cache), except for
/// the CPU budget: a benchmark calls a plugin flat out, and the default budget (half a core)
/// would make the worker path wait for it half the time (about twice the cost per call, as
/// this benchmark once reported). The budget is a policy; these benchmarks measure the cost.
pub fn runtime() -> PluginRuntime {
    runtime_with(unbudgeted())
}

/// The same with a plugin's worker, and its callers, going to sleep at once when idle
/// (`limits.worker_spin_us = 0`): what a call costs when each side must be woken.
pub fn runtime_without_spin() -> PluginRuntime {
    let mut policies = unbudgeted();
    policies.defaults.worker_spin_us = 0;
    runtime_with(policies)
}

/// The default policies without a CPU budget (`limits.cpu_ms_per_sec = 0`).
fn unbudgeted() -> Policies {
    let mut policies = Policies::default();
    policies.defaults.cpu_ms_per_sec = 0;
    policies
}

fn runtime_with(policies: Policies) -> PluginRuntime {
    PluginRuntime::new(
        policies,
        None,
        Arc::new(SnapshotCache::new(1 << 20, Default::default())),
        Arc::new(Metrics::default()),
    )
    .expect("a plugin runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The comparison is only fair if both sides do the same work: same outcome, record by
    /// record (every sample maps to actions, none is refused).
    #[test]
    fn component_and_native_mapping_agree() {
        let runtime = runtime();
        for domain in &DOMAINS {
            let mut instance = runtime
                .instance(&flux_tests::wasm(domain.component))
                .expect("the component loads");
            let (host, guest) = batch(domain, 8);
            let from_component = instance.on_records(&host).expect("the call succeeds");
            let from_native = (domain.native)(&guest);
            assert_eq!(from_component.len(), from_native.len());
            for (component, native) in from_component.iter().zip(&from_native) {
                let component = component.as_ref().expect("the component maps the record");
                let native = native.as_ref().expect("the native mapping maps the record");
                assert!(!component.is_empty(), "{}: no actions", domain.name);
                assert_eq!(
                    format!("{component:?}"),
                    format!("{native:?}"),
                    "{}: the two mappings differ",
                    domain.name
                );
            }
        }
    }
}
