//! Weather domain: city rooms, location updates, fetch commands, per-city cached state.
//!
//! City names become room names by [`city_key`]: lowercase, every run of characters other than
//! letters and digits turned into one `-`, trimmed (`"New Delhi"` → `new-delhi`, room
//! `weather.new-delhi`, event `weather.new-delhi.update`).
//!
//! Fetches are single-flight per city: however many users in a city move, the weather service
//! gets at most one fetch command per city per dedupe window, and none while the city's weather
//! is fresh (updated within the last minute; a joining socket is hydrated from the cache).

use flux_plugin_sdk::{
    Action, BusRecord, ClientRequest, Describe, Plugin, PluginInfo, RequestError, cache_get,
    cache_put, join, leave_rooms, parse, publish_once, snapshot, success,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

const FETCH_TOPIC: &str = "weather.service.command.fetch";
const UPDATED_TOPIC: &str = "weather.service.event.updated";
const CACHE_TTL_MS: u64 = 10 * 60 * 1000;
/// Cached weather younger than this is answered from the cache, without a fetch.
const FRESH_FOR_MS: u64 = 60 * 1000;
const FRESH_PREFIX: &str = "weather.fresh.";
const MAX_CITY_CHARS: usize = 64;

/// The plugin (public so that the benchmarks can run its mapping natively; see `plugin!`).
pub struct Weather;

impl Plugin for Weather {
    fn describe() -> PluginInfo {
        Describe::new("weather", env!("CARGO_PKG_VERSION"))
            .consumes(&[UPDATED_TOPIC])
            .handles(&["userLocationUpdate"])
            .rooms(&["weather.*"])
            .publishes(&[FETCH_TOPIC])
            .cache("weather.", CACHE_TTL_MS)
            .cache(FRESH_PREFIX, FRESH_FOR_MS)
            .build()
    }

    fn on_record(record: &BusRecord) -> Result<Vec<Action>, String> {
        let mut data: Map<String, Value> = parse(&record.payload)?;
        let city = match (&record.key, data.get("city")) {
            (Some(key), _) if !key.is_empty() => key.clone(),
            (_, Some(Value::String(city))) => city.clone(),
            _ => return Err("weather update without a city".into()),
        };
        let key = city_key(&city).ok_or("weather update with an unusable city")?;
        data.insert("cityKey".into(), Value::String(key.clone()));
        let room = format!("weather.{key}");
        let event = format!("{room}.update");
        let payload = success(&data);
        let mut actions = snapshot(&room, &room, &event, payload);
        actions.push(cache_put(&format!("{FRESH_PREFIX}{key}"), "true".into()));
        Ok(actions)
    }

    fn on_request(request: &ClientRequest) -> Result<Vec<Action>, RequestError> {
        let location: Location = parse(&request.payload)
            .map_err(|_| RequestError::Invalid("expected a location object with a city".into()))?;
        let key = city_key(&location.city).ok_or_else(|| {
            RequestError::Invalid(format!(
                "city must have 1 to {MAX_CITY_CHARS} letters or digits"
            ))
        })?;
        let lat = coordinate(location.lat.as_ref(), 90.0, "lat")?;
        let lon = coordinate(location.lon.as_ref(), 180.0, "lon")?;
        // A socket follows its user: one city at a time.
        leave_rooms("weather.*");
        let room = format!("weather.{key}");
        if cache_get(&format!("{FRESH_PREFIX}{key}")).is_some() {
            return Ok(vec![join(&room)]);
        }
        let command = json!({
            "city": location.city.trim(),
            "cityKey": key,
            "region": location.region,
            "country": location.country,
            "lat": lat,
            "lon": lon,
            "userId": request.user_id,
        });
        Ok(vec![
            join(&room),
            publish_once(
                FETCH_TOPIC,
                Some(&key),
                command.to_string(),
                format!("city|{key}"),
            ),
        ])
    }
}

flux_plugin_sdk::plugin!(Weather);

#[derive(Deserialize)]
struct Location {
    city: String,
    region: Option<String>,
    country: Option<String>,
    lat: Option<Value>,
    lon: Option<Value>,
}

/// The canonical room-name form of a city, or `None` when nothing usable is left.
fn city_key(city: &str) -> Option<String> {
    let mut key = String::with_capacity(city.len());
    for c in city.chars() {
        if c.is_alphanumeric() {
            key.extend(c.to_lowercase());
        } else if !key.is_empty() && !key.ends_with('-') {
            key.push('-');
        }
    }
    while key.ends_with('-') {
        key.pop();
    }
    let chars = key.chars().count();
    (1..=MAX_CITY_CHARS).contains(&chars).then_some(key)
}

/// Coordinates arrive as strings (`"28.61"`) or numbers; both are accepted, within range.
fn coordinate(value: Option<&Value>, bound: f64, name: &str) -> Result<Option<f64>, RequestError> {
    let parsed = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    match parsed {
        Some(v) if v.is_finite() && v.abs() <= bound => Ok(Some(v)),
        _ => Err(RequestError::Invalid(format!(
            "{name} must be a number between -{bound} and {bound}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::city_key;

    #[test]
    fn city_keys_are_canonical() {
        assert_eq!(city_key("Delhi").as_deref(), Some("delhi"));
        assert_eq!(city_key("  New   Delhi ").as_deref(), Some("new-delhi"));
        assert_eq!(city_key("St. Louis").as_deref(), Some("st-louis"));
        assert_eq!(city_key("São Paulo").as_deref(), Some("são-paulo"));
        assert_eq!(city_key(" -- "), None);
        assert_eq!(city_key(&"x".repeat(65)), None);
    }
}
