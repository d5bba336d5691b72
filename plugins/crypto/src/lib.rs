//! Crypto domain: the `crypto.global` room, a relayed ticker (never cached), and cached
//! top-movers / top-coins snapshots.

use flux_plugin_sdk::{
    Action, BusRecord, ClientRequest, Describe, Plugin, PluginInfo, RequestError, cache_get, emit,
    join, loading, parse, publish_once, reply, snapshot, success, success_relayed,
};
use serde_json::{Map, Value, json};

const ROOM: &str = "crypto.global";
const TICKER_TOPIC: &str = "crypto.service.event.ticker";
const TOP_MOVERS_TOPIC: &str = "crypto.service.event.top-movers";
const TOP_COINS_TOPIC: &str = "crypto.service.event.top-coins";
const REFRESH_TOPIC: &str = "crypto.service.command.refresh";
const TOP_MOVERS_KEY: &str = "crypto.top-movers";
const TOP_COINS_KEY: &str = "crypto.top-coins";
const TOP_MOVERS_EVENT: &str = "cryptoTopMoversResponse";
const TOP_COINS_EVENT: &str = "cryptoTopCoinsResponse";
const TICKER_EVENT: &str = "cryptoTickerResponse";
const CACHE_TTL_MS: u64 = 5 * 60 * 1000;

/// The plugin (public so that the benchmarks can run its mapping natively; see `plugin!`).
pub struct Crypto;

impl Plugin for Crypto {
    fn describe() -> PluginInfo {
        Describe::new("crypto", env!("CARGO_PKG_VERSION"))
            .consumes(&[TICKER_TOPIC, TOP_MOVERS_TOPIC, TOP_COINS_TOPIC])
            .handles(&[
                "userLocationUpdate",
                "cryptoTopMoversRequest",
                "cryptoTopCoinsRequest",
            ])
            .rooms(&[ROOM])
            .publishes(&[REFRESH_TOPIC])
            .cache("crypto.", CACHE_TTL_MS)
            .build()
    }

    fn on_record(record: &BusRecord) -> Result<Vec<Action>, String> {
        match record.topic.as_str() {
            // Relayed as it came: checked, not rebuilt.
            TICKER_TOPIC => Ok(vec![emit(
                ROOM,
                TICKER_EVENT,
                success_relayed(&record.payload)?,
            )]),
            TOP_MOVERS_TOPIC => {
                let data = parse_snapshot(&record.payload, &["topGainers", "topLosers"])?;
                Ok(snapshot(
                    TOP_MOVERS_KEY,
                    ROOM,
                    TOP_MOVERS_EVENT,
                    success(&data),
                ))
            }
            TOP_COINS_TOPIC => {
                let data = parse_snapshot(&record.payload, &["topCoins"])?;
                Ok(snapshot(
                    TOP_COINS_KEY,
                    ROOM,
                    TOP_COINS_EVENT,
                    success(&data),
                ))
            }
            other => Err(format!("unexpected topic {other}")),
        }
    }

    fn on_request(request: &ClientRequest) -> Result<Vec<Action>, RequestError> {
        match request.event.as_str() {
            "userLocationUpdate" => Ok(vec![join(ROOM)]),
            "cryptoTopMoversRequest" => Ok(match cache_get(TOP_MOVERS_KEY) {
                Some(cached) => vec![reply(TOP_MOVERS_EVENT, cached)],
                None => vec![
                    reply(TOP_MOVERS_EVENT, loading("Fetching the latest top movers")),
                    join(ROOM),
                    publish_once(
                        REFRESH_TOPIC,
                        Some("top-movers"),
                        json!({ "snapshot": "top-movers" }).to_string(),
                        "top-movers".into(),
                    ),
                ],
            }),
            "cryptoTopCoinsRequest" => Ok(match cache_get(TOP_COINS_KEY) {
                Some(cached) => vec![reply(TOP_COINS_EVENT, cached)],
                // The next top-coins event answers: the socket is in the room for it.
                None => vec![
                    reply(
                        TOP_COINS_EVENT,
                        loading("Waiting for the next top coins update"),
                    ),
                    join(ROOM),
                ],
            }),
            other => Err(RequestError::Invalid(format!(
                "{other} is not a crypto event"
            ))),
        }
    }
}

flux_plugin_sdk::plugin!(Crypto);

/// A snapshot object that must carry each of `lists` as an array.
fn parse_snapshot(payload: &str, lists: &[&str]) -> Result<Map<String, Value>, String> {
    let data: Map<String, Value> = parse(payload)?;
    for list in lists {
        if !data.get(*list).is_some_and(Value::is_array) {
            return Err(format!("snapshot without a {list} array"));
        }
    }
    Ok(data)
}
