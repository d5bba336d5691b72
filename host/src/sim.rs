//! Simulated upstream domain services, so the default run shows live data with no external
//! service. They play the weather, crypto, news and stock services: they only talk to the bus,
//! exactly as the real ones talk to Kafka, and are off unless `demo.enabled`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::bus::{Bus, BusRecord, StartAt, now_ms};
use crate::config::DemoConfig;

const COINS: [(&str, &str, f64); 6] = [
    ("BTC", "Bitcoin", 97_000.0),
    ("ETH", "Ethereum", 3_600.0),
    ("SOL", "Solana", 210.0),
    ("XRP", "XRP", 2.3),
    ("ADA", "Cardano", 1.05),
    ("DOGE", "Dogecoin", 0.41),
];
const STOCKS: [(&str, &str, f64); 5] = [
    ("RELIANCE", "Reliance Industries", 2_950.0),
    ("TCS", "Tata Consultancy Services", 4_100.0),
    ("INFY", "Infosys", 1_880.0),
    ("AAPL", "Apple", 232.0),
    ("NVDA", "NVIDIA", 140.0),
];
const HEADLINES: [&str; 5] = [
    "Monsoon arrives early over the western coast",
    "Central bank holds rates steady",
    "New metro line opens to commuters",
    "Tech stocks rally on earnings",
    "Record turnout at city marathon",
];
/// Foreign-exchange rates against the US dollar (the Python `fx` plugin's upstream).
const CURRENCIES: [(&str, f64); 4] = [("EUR", 0.92), ("GBP", 0.79), ("INR", 84.3), ("JPY", 151.0)];
const CONDITIONS: [&str; 5] = ["clear", "partly cloudy", "overcast", "light rain", "haze"];

/// Starts the simulated services as tasks in `tasks`.
pub fn start(bus: Arc<dyn Bus>, config: &DemoConfig, tasks: &mut JoinSet<()>) {
    let market = Arc::new(parking_lot::Mutex::new(Market::new()));
    let answer_after = Duration::from_millis(config.answer_after_ms);

    let (ticker_bus, ticker_market) = (bus.clone(), market.clone());
    let every = Duration::from_millis(config.ticker_every_ms.max(1));
    tasks.spawn(async move {
        let mut ticks = tokio::time::interval(every);
        let mut seq = 0u64;
        loop {
            ticks.tick().await;
            seq += 1;
            let (tick, rates) = {
                let mut market = ticker_market.lock();
                (market.tick(seq), market.fx_rates(seq))
            };
            let key = tick["symbol"].as_str().map(str::to_owned);
            publish(
                &*ticker_bus,
                "crypto.service.event.ticker",
                key.as_deref(),
                tick,
            );
            publish(&*ticker_bus, FX_RATES, Some("USD"), rates);
        }
    });

    let (snapshot_bus, snapshot_market) = (bus.clone(), market.clone());
    let every = Duration::from_millis(config.snapshot_every_ms.max(1));
    tasks.spawn(async move {
        // The first snapshots come one period in, as from a service that has just started:
        // until then, requests find the cache cold.
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            ticks.tick().await;
            let mut market = snapshot_market.lock();
            for name in ["top-movers", "top-coins", "news"] {
                if let Some((topic, key, payload)) = market.snapshot(name) {
                    publish(&*snapshot_bus, topic, Some(key), payload);
                }
            }
        }
    });

    let commands = bus.subscribe(
        "demo-services",
        &COMMAND_TOPICS.map(str::to_owned),
        StartAt::Committed,
    );
    tasks.spawn(async move {
        let mut commands = commands;
        while let Some(command) = commands.recv().await {
            // An answer published before the bus is connected would be refused; the command
            // waits (its offset is stored only once it is answered).
            while !bus.status().connected {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let (bus, market) = (bus.clone(), market.clone());
            tokio::spawn(async move {
                tokio::time::sleep(answer_after).await;
                let answer = market.lock().answer(&command.record);
                match answer {
                    Some((topic, key, payload)) => publish(&*bus, topic, key.as_deref(), payload),
                    None => tracing::warn!(position = %command.record.position(), "simulated service ignored a command it could not read"),
                }
                command.processed();
            });
        }
    });
}

/// The commands the simulated services answer.
pub const COMMAND_TOPICS: [&str; 4] = [
    "weather.service.command.fetch",
    "crypto.service.command.refresh",
    "news.service.command.refresh",
    "stock.service.command.refresh",
];

/// The FX service's rates, one record per ticker tick, keyed by base currency.
pub const FX_RATES: &str = "fx.service.event.rates";

/// Every topic the simulated services read or write.
pub const TOPICS: [&str; 11] = [
    COMMAND_TOPICS[0],
    COMMAND_TOPICS[1],
    COMMAND_TOPICS[2],
    COMMAND_TOPICS[3],
    "weather.service.event.updated",
    "crypto.service.event.ticker",
    "crypto.service.event.top-movers",
    "crypto.service.event.top-coins",
    "news.service.event.updated",
    "stock.service.event.top-performers",
    FX_RATES,
];

/// One record of every kind the simulated services publish, as they publish it: realistic
/// input for the plugin benchmarks.
pub fn sample_records() -> Vec<BusRecord> {
    let mut market = Market::new();
    let mut records = vec![BusRecord::now(
        "crypto.service.event.ticker",
        Some("BTC-USD"),
        market.tick(0).to_string(),
    )];
    let fetch = json!({ "city": "New Delhi", "cityKey": "new-delhi", "country": "IN" });
    let weather = market.weather(&fetch).expect("a complete fetch command");
    records.push(BusRecord::now(
        "weather.service.event.updated",
        Some("new-delhi"),
        weather.to_string(),
    ));
    for name in ["top-movers", "top-coins", "news", "top-performers"] {
        let (topic, key, payload) = market.snapshot(name).expect("a known snapshot");
        records.push(BusRecord::now(topic, Some(key), payload.to_string()));
    }
    let rates = market.fx_rates(1).to_string();
    records.push(BusRecord::now(FX_RATES, Some("USD"), rates));
    records
}

fn publish(bus: &dyn Bus, topic: &str, key: Option<&str>, payload: Value) {
    // While the broker is away every tick would fail: not worth a warning each.
    if let Err(e) = bus.publish(BusRecord::now(topic, key, payload.to_string())) {
        tracing::debug!(topic, "simulated service could not publish: {e}");
    }
}

/// A random walk over coin and stock prices (xorshift: no need for a crypto-grade RNG).
struct Market {
    rng: u64,
    coins: Vec<f64>,
    stocks: Vec<f64>,
    fx: Vec<f64>,
    news_edition: u64,
}

impl Market {
    fn new() -> Self {
        Self {
            rng: now_ms() | 1,
            coins: COINS.iter().map(|c| c.2).collect(),
            stocks: STOCKS.iter().map(|s| s.2).collect(),
            fx: CURRENCIES.iter().map(|c| c.1).collect(),
            news_edition: 0,
        }
    }

    /// Every rate moves a little; `seq` numbers the stream.
    fn fx_rates(&mut self, seq: u64) -> Value {
        let mut rates = serde_json::Map::new();
        for (i, (currency, _)) in CURRENCIES.iter().enumerate() {
            self.fx[i] *= 1.0 + self.noise() * 0.0005;
            rates.insert(
                (*currency).to_owned(),
                json!((self.fx[i] * 1e4).round() / 1e4),
            );
        }
        json!({ "seq": seq, "base": "USD", "rates": rates, "ts": now_ms() })
    }

    /// Uniform in [-1, 1).
    fn noise(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn tick(&mut self, seq: u64) -> Value {
        let i = (seq as usize) % COINS.len();
        self.coins[i] *= 1.0 + self.noise() * 0.002;
        json!({ "seq": seq, "symbol": COINS[i].0, "price": round2(self.coins[i]), "ts": now_ms() })
    }

    fn changes(&mut self) -> Vec<Value> {
        let mut coins: Vec<Value> = COINS
            .iter()
            .zip(self.coins.clone())
            .map(|((symbol, name, base), price)| {
                let change = (price / base - 1.0) * 100.0 + self.noise() * 3.0;
                json!({ "symbol": symbol, "name": name, "price": round2(price), "change24h": round2(change) })
            })
            .collect();
        coins.sort_by(|a, b| {
            b["change24h"]
                .as_f64()
                .partial_cmp(&a["change24h"].as_f64())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        coins
    }

    fn top_movers(&mut self) -> Value {
        let coins = self.changes();
        let losers: Vec<Value> = coins.iter().rev().take(3).cloned().collect();
        json!({ "topGainers": coins[..3], "topLosers": losers, "asOf": now_ms() })
    }

    fn top_coins(&mut self) -> Value {
        json!({ "topCoins": self.changes(), "asOf": now_ms() })
    }

    fn news(&mut self) -> Value {
        self.news_edition += 1;
        let edition = self.news_edition;
        let articles: Vec<Value> = (0..3)
            .map(|i| {
                let n = (edition as usize + i) % HEADLINES.len();
                json!({ "id": format!("{edition}-{i}"), "title": HEADLINES[n], "source": "Flux Wire", "publishedAt": now_ms() })
            })
            .collect();
        json!({ "scope": "global", "articles": articles })
    }

    fn top_performers(&mut self) -> Value {
        let mut performers: Vec<Value> = STOCKS
            .iter()
            .enumerate()
            .map(|(i, (symbol, name, base))| {
                self.stocks[i] *= 1.0 + self.noise() * 0.01;
                let change = (self.stocks[i] / base - 1.0) * 100.0;
                json!({ "symbol": symbol, "name": name, "price": round2(self.stocks[i]), "changePercent": round2(change) })
            })
            .collect();
        performers.sort_by(|a, b| {
            b["changePercent"]
                .as_f64()
                .partial_cmp(&a["changePercent"].as_f64())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        json!({ "performers": performers, "asOf": now_ms() })
    }

    fn weather(&mut self, command: &Value) -> Option<Value> {
        let city = command["city"].as_str()?;
        let key = command["cityKey"].as_str()?;
        let climate = key
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let base = 12.0 + (climate % 22) as f64;
        Some(json!({
            "city": city,
            "country": command["country"],
            "temperatureC": round2(base + self.noise() * 2.0),
            "humidity": 40 + (climate % 50),
            "windKph": round2(5.0 + self.noise().abs() * 20.0),
            "condition": CONDITIONS[(climate as usize) % CONDITIONS.len()],
            "observedAt": now_ms(),
        }))
    }

    /// A snapshot's topic, record key and current payload, by its name in refresh commands.
    fn snapshot(&mut self, name: &str) -> Option<(&'static str, &'static str, Value)> {
        Some(match name {
            "top-movers" => (
                "crypto.service.event.top-movers",
                "top-movers",
                self.top_movers(),
            ),
            "top-coins" => (
                "crypto.service.event.top-coins",
                "top-coins",
                self.top_coins(),
            ),
            "news" => ("news.service.event.updated", "global", self.news()),
            "top-performers" => (
                "stock.service.event.top-performers",
                "top-performers",
                self.top_performers(),
            ),
            _ => return None,
        })
    }

    /// The event a service publishes in answer to `command`.
    fn answer(&mut self, command: &BusRecord) -> Option<(&'static str, Option<String>, Value)> {
        let body: Value = serde_json::from_str(&command.payload).ok()?;
        let snapshot = |market: &mut Self, name: &str| {
            market
                .snapshot(name)
                .map(|(topic, key, payload)| (topic, Some(key.to_owned()), payload))
        };
        match command.topic.as_str() {
            "weather.service.command.fetch" => {
                let weather = self.weather(&body)?;
                Some((
                    "weather.service.event.updated",
                    command.key.clone(),
                    weather,
                ))
            }
            "crypto.service.command.refresh" => snapshot(self, body["snapshot"].as_str()?),
            "news.service.command.refresh" => snapshot(self, "news"),
            "stock.service.command.refresh" => snapshot(self, "top-performers"),
            _ => None,
        }
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
