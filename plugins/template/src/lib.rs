//! A starting point for a new domain: copy this crate, rename it, and replace the topics,
//! rooms and events. It relays `example.service.event.updated` records to `example.global`,
//! keeps the latest one for hydration, and answers `exampleRequest` from cache.

use flux_plugin_sdk::{
    Action, BusRecord, ClientRequest, Describe, Plugin, PluginInfo, RequestError, cache_get, join,
    loading, parse, reply, snapshot, success,
};
use serde_json::Value;

const ROOM: &str = "example.global";
const TOPIC: &str = "example.service.event.updated";
const CACHE_KEY: &str = "example.latest";
const EVENT: &str = "exampleUpdate";

/// The plugin (public so that the benchmarks can run its mapping natively; see `plugin!`).
pub struct Example;

impl Plugin for Example {
    fn describe() -> PluginInfo {
        Describe::new("example", env!("CARGO_PKG_VERSION"))
            .consumes(&[TOPIC])
            .handles(&["exampleRequest"])
            .rooms(&[ROOM])
            .cache("example.", 60_000)
            .build()
    }

    fn on_record(record: &BusRecord) -> Result<Vec<Action>, String> {
        let data: Value = parse(&record.payload)?;
        let payload = success(&data);
        Ok(snapshot(CACHE_KEY, ROOM, EVENT, payload))
    }

    fn on_request(_request: &ClientRequest) -> Result<Vec<Action>, RequestError> {
        Ok(match cache_get(CACHE_KEY) {
            Some(cached) => vec![reply(EVENT, cached)],
            None => vec![reply(EVENT, loading("No data yet")), join(ROOM)],
        })
    }
}

flux_plugin_sdk::plugin!(Example);

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use flux_plugin_sdk::testing::TestHost;

    #[test]
    fn a_record_is_relayed_and_kept_for_the_next_request() {
        let host = TestHost::new();
        let cold = host.request::<Example>("exampleRequest", "null").unwrap();
        assert_eq!(cold, vec![reply(EVENT, loading("No data yet")), join(ROOM)]);

        let actions = host
            .record::<Example>(TOPIC, None, r#"{"value":42}"#)
            .unwrap();
        let payload = success(&serde_json::json!({ "value": 42 }));
        assert_eq!(actions, snapshot(CACHE_KEY, ROOM, EVENT, payload.clone()));
        let warm = host.request::<Example>("exampleRequest", "null").unwrap();
        assert_eq!(warm, vec![reply(EVENT, payload)]);
        assert!(host.record::<Example>(TOPIC, None, "not json").is_err());
    }
}
