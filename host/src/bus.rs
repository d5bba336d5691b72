//! The bus seam: records keyed and shaped as Kafka carries them, and the embedded in-process
//! implementation used by the default run and the tests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use tokio::sync::mpsc;

use crate::metrics::{self, Metrics};

/// One record on a topic. `payload` is JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusRecord {
    pub topic: String,
    pub key: Option<String>,
    pub payload: String,
    /// Producer timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

impl BusRecord {
    /// A record stamped with the current time.
    pub fn now(topic: &str, key: Option<&str>, payload: String) -> Self {
        Self {
            topic: topic.to_owned(),
            key: key.map(str::to_owned),
            payload,
            timestamp_ms: now_ms(),
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the bus is closed")]
    Closed,
    #[error("the produce queue is full")]
    QueueFull,
}

/// Where records come from and go to. Publishing only enqueues; it never waits for a broker.
pub trait Bus: Send + Sync + 'static {
    fn publish(&self, record: BusRecord) -> Result<(), PublishError>;

    /// A stream of every record published to any of `topics` from now on.
    fn subscribe(&self, topics: &[String]) -> mpsc::Receiver<BusRecord>;
}

/// Capacity of one subscriber's queue on the embedded bus.
const SUBSCRIBER_QUEUE: usize = 16_384;

/// An in-process bus. Each subscriber gets its own bounded queue; a subscriber that falls a
/// whole queue behind loses records, which is counted (`flux_bus_dropped_total`).
pub struct EmbeddedBus {
    subscribers: RwLock<HashMap<String, Vec<mpsc::Sender<BusRecord>>>>,
    metrics: Arc<Metrics>,
}

impl EmbeddedBus {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            subscribers: RwLock::default(),
            metrics,
        }
    }
}

impl Bus for EmbeddedBus {
    fn publish(&self, record: BusRecord) -> Result<(), PublishError> {
        self.metrics
            .counter(metrics::BUS_PUBLISHED, &[("topic", &record.topic)])
            .inc();
        let mut closed = false;
        {
            let subscribers = self.subscribers.read();
            let Some(queues) = subscribers.get(&record.topic) else {
                return Ok(());
            };
            for queue in queues {
                match queue.try_send(record.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => self
                        .metrics
                        .counter(metrics::BUS_DROPPED, &[("topic", &record.topic)])
                        .inc(),
                    Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
                }
            }
        }
        if closed {
            self.subscribers
                .write()
                .values_mut()
                .for_each(|queues| queues.retain(|q| !q.is_closed()));
        }
        Ok(())
    }

    fn subscribe(&self, topics: &[String]) -> mpsc::Receiver<BusRecord> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let mut subscribers = self.subscribers.write();
        for topic in topics {
            subscribers
                .entry(topic.clone())
                .or_default()
                .push(tx.clone());
        }
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_only_their_topics_in_order() {
        let bus = EmbeddedBus::new(Arc::new(Metrics::default()));
        let mut weather = bus.subscribe(&["weather".into()]);
        let mut both = bus.subscribe(&["weather".into(), "crypto".into()]);
        for i in 0..3 {
            bus.publish(BusRecord::now("weather", None, i.to_string()))
                .unwrap();
        }
        bus.publish(BusRecord::now("crypto", Some("btc"), "9".into()))
            .unwrap();
        for i in 0..3 {
            assert_eq!(weather.recv().await.unwrap().payload, i.to_string());
            assert_eq!(both.recv().await.unwrap().payload, i.to_string());
        }
        assert_eq!(both.recv().await.unwrap().key.as_deref(), Some("btc"));
        assert!(weather.try_recv().is_err(), "no crypto record for weather");
    }

    #[tokio::test]
    async fn dropped_subscribers_are_forgotten() {
        let bus = EmbeddedBus::new(Arc::new(Metrics::default()));
        drop(bus.subscribe(&["t".into()]));
        bus.publish(BusRecord::now("t", None, "1".into())).unwrap();
        assert!(bus.subscribers.read()["t"].is_empty());
    }
}
