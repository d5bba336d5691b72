//! Domain plugins: WebAssembly components built against `wit/flux-gateway.wit`.
//!
//! [`runtime`] compiles and runs them under limits; [`Manifest`] is a plugin's validated
//! `describe()` — the authority against which every action it returns is checked.

pub mod circuit;
pub mod instance;
pub mod precompiled;
pub mod runtime;
pub mod worker;

use std::collections::HashSet;
use std::time::Duration;

use crate::pattern::NamePattern;

pub use circuit::{CircuitState, GuardView, Tripped};
pub use instance::PluginInstance;
pub use precompiled::PrecompiledCache;
pub use runtime::{LoadError, PluginRuntime};
pub use worker::{Answer, CallFailure, Caller, PluginHandle, RecordOutcome};

/// Host bindings for the `plugin` world: the one place generated from `wit/`.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
    });
}

pub use bindings::flux::gateway::types::{
    Action, BusRecord as WitRecord, ClientRequest, PluginInfo, RequestError,
};

/// The WIT package version this host implements; plugins must be semver-compatible with it.
pub const WIT_PACKAGE: &str = "flux:gateway";
pub const WIT_VERSION: &str = "0.1.1";

/// Shortest timer interval a plugin may declare.
const MIN_TIMER_INTERVAL: Duration = Duration::from_millis(100);

/// A plugin's validated self-description.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub consumes: Vec<String>,
    pub handles: Vec<String>,
    pub rooms: Vec<NamePattern>,
    /// The room names and patterns as declared, for allowlist checks and display.
    pub declared_rooms: Vec<String>,
    pub publishes: HashSet<String>,
    pub caches: Vec<(String, Duration)>,
    pub timers: Vec<(String, Duration)>,
}

impl Manifest {
    /// Checks a plugin's `describe()` result; the error says what is wrong with it.
    pub fn from_info(info: PluginInfo) -> Result<Self, String> {
        let name_ok = !info.name.is_empty()
            && info.name.len() <= 64
            && info
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return Err(format!(
                "name {:?} must be 1-64 lowercase letters, digits or '-'",
                info.name
            ));
        }
        let all_names = info
            .consumes
            .iter()
            .chain(&info.handles)
            .chain(&info.publishes)
            .chain(&info.rooms);
        if let Some(bad) = all_names
            .into_iter()
            .find(|s| s.is_empty() || s.len() > 249)
        {
            return Err(format!("{bad:?} is not a usable topic, event or room name"));
        }
        if let Some(bad) = info
            .rooms
            .iter()
            .find(|r| r.trim_end_matches('*').is_empty())
        {
            return Err(format!("room pattern {bad:?} would match every room"));
        }
        let mut caches = Vec::new();
        for policy in &info.caches {
            if policy.key_prefix.is_empty() || policy.ttl_ms == 0 {
                return Err(format!(
                    "cache policy {:?} needs a key prefix and a positive TTL",
                    policy.key_prefix
                ));
            }
            caches.push((
                policy.key_prefix.clone(),
                Duration::from_millis(policy.ttl_ms),
            ));
        }
        // The longest prefix wins when policies overlap.
        caches.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        let mut timers = Vec::new();
        for timer in &info.timers {
            let every = Duration::from_millis(u64::from(timer.interval_ms));
            if every < MIN_TIMER_INTERVAL {
                return Err(format!(
                    "timer {:?} fires more often than every {MIN_TIMER_INTERVAL:?}",
                    timer.name
                ));
            }
            timers.push((timer.name.clone(), every));
        }
        Ok(Self {
            name: info.name,
            version: info.version,
            consumes: info.consumes,
            handles: info.handles,
            rooms: info.rooms.iter().map(|r| NamePattern::parse(r)).collect(),
            declared_rooms: info.rooms.clone(),
            publishes: info.publishes.into_iter().collect(),
            caches,
            timers,
        })
    }

    pub fn may_use_room(&self, room: &str) -> bool {
        self.rooms.iter().any(|pattern| pattern.matches(room))
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.publishes.contains(topic)
    }

    /// The TTL of `key`, or `None` when no declared cache policy covers it.
    pub fn cache_ttl(&self, key: &str) -> Option<Duration> {
        self.caches
            .iter()
            .find(|(prefix, _)| key.starts_with(prefix.as_str()))
            .map(|(_, ttl)| *ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bindings::flux::gateway::types::{CachePolicy, Timer};

    fn info() -> PluginInfo {
        PluginInfo {
            name: "weather".into(),
            version: "1.0.0".into(),
            consumes: vec!["weather.service.event.updated".into()],
            handles: vec!["userLocationUpdate".into()],
            rooms: vec!["weather.*".into(), "alerts".into()],
            publishes: vec!["weather.service.command.fetch".into()],
            caches: vec![
                CachePolicy {
                    key_prefix: "weather.".into(),
                    ttl_ms: 1_000,
                },
                CachePolicy {
                    key_prefix: "weather.long.".into(),
                    ttl_ms: 9_000,
                },
            ],
            timers: vec![Timer {
                name: "t".into(),
                interval_ms: 1_000,
            }],
        }
    }

    #[test]
    fn rooms_topics_and_caches_are_enforced() {
        let m = Manifest::from_info(info()).unwrap();
        assert!(m.may_use_room("weather.delhi"));
        assert!(m.may_use_room("alerts"));
        assert!(
            !m.may_use_room("weather."),
            "a prefix needs something after it"
        );
        assert!(!m.may_use_room("crypto.global"));
        assert!(!m.may_use_room("alerts.x"));
        assert!(m.may_publish("weather.service.command.fetch"));
        assert!(!m.may_publish("crypto.service.command.refresh"));
        assert_eq!(m.cache_ttl("weather.delhi"), Some(Duration::from_secs(1)));
        assert_eq!(m.cache_ttl("weather.long.x"), Some(Duration::from_secs(9)));
        assert_eq!(m.cache_ttl("crypto.x"), None);
    }

    #[test]
    fn bad_descriptions_are_explained() {
        let mut bad = info();
        bad.name = "Weather!".into();
        assert!(Manifest::from_info(bad).unwrap_err().contains("lowercase"));
        let mut bad = info();
        bad.rooms.push("*".into());
        assert!(Manifest::from_info(bad).unwrap_err().contains("every room"));
        let mut bad = info();
        bad.timers[0].interval_ms = 5;
        assert!(Manifest::from_info(bad).unwrap_err().contains("timer"));
        let mut bad = info();
        bad.caches[0].ttl_ms = 0;
        assert!(Manifest::from_info(bad).unwrap_err().contains("TTL"));
    }
}
