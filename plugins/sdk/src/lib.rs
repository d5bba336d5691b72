//! The Flux plugin SDK: everything a domain team needs to write a gateway plugin.
//!
//! A plugin is a type implementing [`Plugin`], exported with [`plugin!`]:
//!
//! ```ignore
//! use flux_plugin_sdk::{Plugin, PluginInfo, Action, BusRecord, ClientRequest, RequestError};
//!
//! struct Echo;
//! impl Plugin for Echo {
//!     fn describe() -> PluginInfo { /* name, topics, rooms, ... */ }
//!     fn on_record(record: &BusRecord) -> Result<Vec<Action>, String> { Ok(vec![]) }
//! }
//! flux_plugin_sdk::plugin!(Echo);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component the gateway loads. Test the mapping
//! natively with [`testing`] (plain `cargo test`).
//!
//! The SDK carries the WIT it binds (`wit/flux-gateway.wit`, the gateway's own); its version
//! is the WIT package's.

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

// The generated bindings name the SDK by its crate path, from inside it too.
extern crate self as flux_plugin_sdk;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// Raw bindings generated from `wit/`. Prefer the re-exports and helpers at the crate root.
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "flux_plugin_sdk::bindings",
        runtime_path: "flux_plugin_sdk::__wit_bindgen::rt",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::flux::gateway::caller::Principal;
pub use bindings::flux::gateway::host::LogLevel;
pub use bindings::flux::gateway::types::{
    Action, BusRecord, CachePolicy, CachePut, ClientRequest, Emit, PluginInfo, Publish, Reply,
    RequestError, RoomEvent, Timer,
};

/// A domain plugin. Only [`Plugin::describe`] is required; the other hooks default to doing
/// nothing, so a plugin implements the ones it declared in its [`PluginInfo`].
pub trait Plugin {
    /// Name, version, and everything the plugin may consume, handle, emit and publish.
    fn describe() -> PluginInfo;

    /// Map one bus record to actions; `Err` marks the record malformed, with the reason.
    fn on_record(record: &BusRecord) -> Result<Vec<Action>, String> {
        let _ = record;
        Ok(Vec::new())
    }

    /// Answer a client event listed in `handles`.
    fn on_request(request: &ClientRequest) -> Result<Vec<Action>, RequestError> {
        Err(RequestError::Invalid(format!(
            "{} is not handled",
            request.event
        )))
    }

    /// Run the periodic work `name` declared in `timers`.
    fn on_timer(name: &str) -> Vec<Action> {
        let _ = name;
        Vec::new()
    }
}

/// Export a [`Plugin`] implementation as the component's `plugin` world.
///
/// Only when building for WebAssembly: natively it exports nothing, so several plugins'
/// sources can be compiled into one native program (the benchmarks run each plugin's mapping
/// natively, against the same code as a component).
#[macro_export]
macro_rules! plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        struct __FluxPluginExport;
        #[cfg(target_arch = "wasm32")]
        impl $crate::bindings::Guest for __FluxPluginExport {
            fn describe() -> $crate::PluginInfo {
                $crate::install_panic_logger();
                <$plugin as $crate::Plugin>::describe()
            }
            fn on_records(
                records: ::std::vec::Vec<$crate::BusRecord>,
            ) -> ::std::vec::Vec<
                ::std::result::Result<::std::vec::Vec<$crate::Action>, ::std::string::String>,
            > {
                $crate::install_panic_logger();
                records
                    .iter()
                    .map(<$plugin as $crate::Plugin>::on_record)
                    .collect()
            }
            fn on_request(
                request: $crate::ClientRequest,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::Action>, $crate::RequestError> {
                $crate::install_panic_logger();
                <$plugin as $crate::Plugin>::on_request(&request)
            }
            fn on_timer(name: ::std::string::String) -> ::std::vec::Vec<$crate::Action> {
                $crate::install_panic_logger();
                <$plugin as $crate::Plugin>::on_timer(&name)
            }
        }
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_plugin_world!(__FluxPluginExport);
    };
}

/// Route panic messages to the gateway log: a guest has no stderr the operator would read.
#[doc(hidden)]
pub fn install_panic_logger() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            log(LogLevel::Error, &format!("panic: {info}"))
        }));
    });
}

/// The authenticated user behind the request being handled (its token's subject, scopes and
/// claims); `None` outside `on_request` and on a gateway that runs without authentication.
/// Refuse a request the caller may not make with `RequestError::Invalid`.
pub fn caller() -> Option<Principal> {
    #[cfg(target_arch = "wasm32")]
    return bindings::flux::gateway::caller::current();
    #[cfg(not(target_arch = "wasm32"))]
    return testing::caller();
}

/// Take the requesting socket out of its rooms matching `pattern` (`"weather.*"`), except the
/// rooms this same answer joins. Only in `on_request`.
pub fn leave_rooms(pattern: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::flux::gateway::caller::leave_rooms(pattern);
    #[cfg(not(target_arch = "wasm32"))]
    testing::leave_rooms(pattern);
}

/// Read this plugin's cache.
pub fn cache_get(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    return bindings::flux::gateway::host::cache_get(key);
    #[cfg(not(target_arch = "wasm32"))]
    return testing::cache_get(key);
}

/// Write to the gateway's log, tagged with this plugin's name and version.
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::flux::gateway::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    testing::log(level, message);
}

/// Parse a JSON payload, with a reason fit for a dead-letter header or a client message.
pub fn parse<T: DeserializeOwned>(payload: &str) -> Result<T, String> {
    serde_json::from_str(payload).map_err(|e| format!("invalid payload: {e}"))
}

/// `{"status":"success","data":…}`: the envelope of every state event in the client contract.
pub fn success<T: Serialize + ?Sized>(data: &T) -> String {
    envelope(&Envelope {
        status: "success",
        scope: None,
        data: Some(data),
        message: None,
    })
}

/// `{"status":"success","scope":…,"data":…}`, for events the contract scopes (`newsUpdate`).
pub fn scoped_success<T: Serialize + ?Sized>(scope: &str, data: &T) -> String {
    envelope(&Envelope {
        status: "success",
        scope: Some(scope),
        data: Some(data),
        message: None,
    })
}

/// `{"status":"success","data":…}` around `data`, a JSON object passed through as it is: a
/// relay checks that the record is one well-formed object, but neither builds it nor writes
/// it again.
pub fn success_relayed(data: &str) -> Result<String, String> {
    let object = data.trim();
    if !object.starts_with('{') {
        return Err("invalid payload: not a JSON object".into());
    }
    serde_json::from_str::<serde::de::IgnoredAny>(object)
        .map_err(|e| format!("invalid payload: {e}"))?;
    Ok(format!(r#"{{"status":"success","data":{object}}}"#))
}

/// `{"status":"loading","message":…}`.
pub fn loading(message: &str) -> String {
    envelope::<()>(&Envelope {
        status: "loading",
        scope: None,
        data: None,
        message: Some(message),
    })
}

/// `{"status":"error","message":…}`.
pub fn error(message: &str) -> String {
    envelope::<()>(&Envelope {
        status: "error",
        scope: None,
        data: None,
        message: Some(message),
    })
}

/// Every envelope of the contract, written straight from the caller's data (no copy of it
/// into a `serde_json::Value` first).
#[derive(Serialize)]
struct Envelope<'a, T: ?Sized> {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

fn envelope<T: Serialize + ?Sized>(envelope: &Envelope<'_, T>) -> String {
    serde_json::to_string(envelope).expect("an envelope of JSON values serialises")
}

/// Broadcast `payload` as `event` to `room`.
pub fn emit(room: &str, event: &str, payload: String) -> Action {
    Action::Emit(Emit {
        room: room.to_owned(),
        event: event.to_owned(),
        payload,
    })
}

/// Answer the requesting socket with `event`.
pub fn reply(event: &str, payload: String) -> Action {
    Action::Reply(Reply {
        event: event.to_owned(),
        payload,
    })
}

/// Join the requesting socket to `room` (it is hydrated from the room's cached state).
pub fn join(room: &str) -> Action {
    Action::Join(room.to_owned())
}

/// Cache `payload` under `key`; a socket joining `room` is sent it as `event`.
pub fn cache_for_room(key: &str, room: &str, event: &str, payload: String) -> Action {
    Action::CachePut(CachePut {
        key: key.to_owned(),
        payload,
        hydrate: Some(RoomEvent {
            room: room.to_owned(),
            event: event.to_owned(),
        }),
    })
}

/// Cache `payload` under `key` for the plugin's own reads (`cache_get`); no room is hydrated
/// from it.
pub fn cache_put(key: &str, payload: String) -> Action {
    Action::CachePut(CachePut {
        key: key.to_owned(),
        payload,
        hydrate: None,
    })
}

/// A room's new state: cached under `key` (so a socket joining `room` is hydrated with it)
/// and pushed live to the room, as `event`.
pub fn snapshot(key: &str, room: &str, event: &str, payload: String) -> Vec<Action> {
    vec![
        cache_for_room(key, room, event, payload.clone()),
        emit(room, event, payload),
    ]
}

/// Produce a record to `topic`.
pub fn publish(topic: &str, key: Option<&str>, payload: String) -> Action {
    Action::Publish(Publish {
        topic: topic.to_owned(),
        key: key.map(str::to_owned),
        payload,
        dedupe_key: None,
    })
}

/// Produce a record to `topic` unless the same `dedupe_key` was published there within the
/// gateway's dedupe window.
pub fn publish_once(topic: &str, key: Option<&str>, payload: String, dedupe_key: String) -> Action {
    Action::Publish(Publish {
        topic: topic.to_owned(),
        key: key.map(str::to_owned),
        payload,
        dedupe_key: Some(dedupe_key),
    })
}

/// Build a [`PluginInfo`] from string slices.
pub struct Describe {
    info: PluginInfo,
}

impl Describe {
    pub fn new(name: &str, version: &str) -> Self {
        Self {
            info: PluginInfo {
                name: name.to_owned(),
                version: version.to_owned(),
                consumes: Vec::new(),
                handles: Vec::new(),
                rooms: Vec::new(),
                publishes: Vec::new(),
                caches: Vec::new(),
                timers: Vec::new(),
            },
        }
    }
    pub fn consumes(mut self, topics: &[&str]) -> Self {
        self.info.consumes = owned(topics);
        self
    }
    pub fn handles(mut self, events: &[&str]) -> Self {
        self.info.handles = owned(events);
        self
    }
    pub fn rooms(mut self, rooms: &[&str]) -> Self {
        self.info.rooms = owned(rooms);
        self
    }
    pub fn publishes(mut self, topics: &[&str]) -> Self {
        self.info.publishes = owned(topics);
        self
    }
    pub fn cache(mut self, key_prefix: &str, ttl_ms: u64) -> Self {
        self.info.caches.push(CachePolicy {
            key_prefix: key_prefix.to_owned(),
            ttl_ms,
        });
        self
    }
    pub fn timer(mut self, name: &str, interval_ms: u32) -> Self {
        self.info.timers.push(Timer {
            name: name.to_owned(),
            interval_ms,
        });
        self
    }
    pub fn build(self) -> PluginInfo {
        self.info
    }
}

fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}
