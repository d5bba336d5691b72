//! Stocks domain: the `stock.global` room and its cached top performers. Requests are served
//! from cache only; a timer asks the stock service for a refresh in the background.

use flux_plugin_sdk::{
    Action, BusRecord, ClientRequest, Describe, Plugin, PluginInfo, RequestError, cache_get, join,
    loading, parse, publish_once, reply, snapshot, success,
};
use serde::Deserialize;
use serde_json::{Value, json};

const ROOM: &str = "stock.global";
const PERFORMERS_TOPIC: &str = "stock.service.event.top-performers";
const REFRESH_TOPIC: &str = "stock.service.command.refresh";
const CACHE_KEY: &str = "stock.top-performers";
const EVENT: &str = "stockTopPerformersResponse";
const CACHE_TTL_MS: u64 = 10 * 60 * 1000;
const REFRESH_TIMER: &str = "refresh";
const REFRESH_EVERY_MS: u32 = 30_000;

/// The plugin (public so that the benchmarks can run its mapping natively; see `plugin!`).
pub struct Stocks;

#[derive(Deserialize)]
struct TopPerformers {
    performers: Vec<Value>,
}

impl Plugin for Stocks {
    fn describe() -> PluginInfo {
        Describe::new("stocks", env!("CARGO_PKG_VERSION"))
            .consumes(&[PERFORMERS_TOPIC])
            .handles(&["userLocationUpdate", "stockTopPerformersRequest"])
            .rooms(&[ROOM])
            .publishes(&[REFRESH_TOPIC])
            .cache("stock.", CACHE_TTL_MS)
            .timer(REFRESH_TIMER, REFRESH_EVERY_MS)
            .build()
    }

    fn on_record(record: &BusRecord) -> Result<Vec<Action>, String> {
        let update: TopPerformers = parse(&record.payload)?;
        let payload = success(&update.performers);
        Ok(snapshot(CACHE_KEY, ROOM, EVENT, payload))
    }

    fn on_request(request: &ClientRequest) -> Result<Vec<Action>, RequestError> {
        match request.event.as_str() {
            "userLocationUpdate" => Ok(vec![join(ROOM)]),
            // Never a synchronous refresh: the timer keeps the cache warm.
            "stockTopPerformersRequest" => Ok(match cache_get(CACHE_KEY) {
                Some(cached) => vec![reply(EVENT, cached)],
                None => vec![
                    reply(EVENT, loading("Top performers are being refreshed")),
                    join(ROOM),
                ],
            }),
            other => Err(RequestError::Invalid(format!(
                "{other} is not a stock event"
            ))),
        }
    }

    fn on_timer(name: &str) -> Vec<Action> {
        if name != REFRESH_TIMER {
            return Vec::new();
        }
        vec![publish_once(
            REFRESH_TOPIC,
            Some("top-performers"),
            json!({ "snapshot": "top-performers" }).to_string(),
            "top-performers".into(),
        )]
    }
}

flux_plugin_sdk::plugin!(Stocks);
