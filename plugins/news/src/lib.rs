//! News domain: the `news.global` room and its cached headline list.

use flux_plugin_sdk::{
    Action, BusRecord, ClientRequest, Describe, Plugin, PluginInfo, RequestError, cache_get, join,
    loading, parse, publish_once, reply, scoped_success, snapshot,
};
use serde::Deserialize;
use serde_json::{Value, json};

const ROOM: &str = "news.global";
const UPDATED_TOPIC: &str = "news.service.event.updated";
const REFRESH_TOPIC: &str = "news.service.command.refresh";
const CACHE_KEY: &str = "news.global";
const EVENT: &str = "newsUpdate";
const CACHE_TTL_MS: u64 = 15 * 60 * 1000;

/// The plugin (public so that the benchmarks can run its mapping natively; see `plugin!`).
pub struct News;

#[derive(Deserialize)]
struct NewsUpdated {
    articles: Vec<Value>,
}

impl Plugin for News {
    fn describe() -> PluginInfo {
        Describe::new("news", env!("CARGO_PKG_VERSION"))
            .consumes(&[UPDATED_TOPIC])
            .handles(&["userLocationUpdate", "topNewsRequest"])
            .rooms(&[ROOM])
            .publishes(&[REFRESH_TOPIC])
            .cache("news.", CACHE_TTL_MS)
            .build()
    }

    fn on_record(record: &BusRecord) -> Result<Vec<Action>, String> {
        let update: NewsUpdated = parse(&record.payload)?;
        let payload = scoped_success("global", &update.articles);
        Ok(snapshot(CACHE_KEY, ROOM, EVENT, payload))
    }

    fn on_request(request: &ClientRequest) -> Result<Vec<Action>, RequestError> {
        match request.event.as_str() {
            "userLocationUpdate" => Ok(vec![join(ROOM)]),
            "topNewsRequest" => Ok(match cache_get(CACHE_KEY) {
                Some(cached) => vec![reply(EVENT, cached)],
                None => vec![
                    reply(EVENT, loading("Fetching the latest news")),
                    join(ROOM),
                    publish_once(
                        REFRESH_TOPIC,
                        Some("global"),
                        json!({ "scope": "global" }).to_string(),
                        "global".into(),
                    ),
                ],
            }),
            other => Err(RequestError::Invalid(format!(
                "{other} is not a news event"
            ))),
        }
    }
}

flux_plugin_sdk::plugin!(News);
