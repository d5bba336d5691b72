//! The embedded in-process bus used by the default run and the tests.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::mpsc;

use super::{Bus, BusRecord, BusStatus, Delivery, PublishError, StartAt};
use crate::metrics::{self, Metrics};

/// Capacity of one subscriber's queue on the embedded bus.
const SUBSCRIBER_QUEUE: usize = 16_384;

/// An in-process bus. Each subscriber gets its own bounded queue; a subscriber that falls a
/// whole queue behind loses records, which is counted (`flux_bus_dropped_total`).
pub struct EmbeddedBus {
    subscribers: RwLock<HashMap<String, Vec<mpsc::Sender<Delivery>>>>,
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
        let topic = metrics::topic(&record.topic);
        self.metrics.bus_published.get_or_create(&topic).inc();
        let mut closed = false;
        {
            let subscribers = self.subscribers.read();
            let Some(queues) = subscribers.get(&record.topic) else {
                return Ok(());
            };
            for queue in queues {
                match queue.try_send(Delivery::live(record.clone())) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.metrics.bus_dropped.get_or_create(&topic).inc();
                    }
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

    /// Records published from now on; there is no history to replay.
    fn subscribe(
        &self,
        _name: &str,
        topics: &[String],
        _from: StartAt,
    ) -> mpsc::Receiver<Delivery> {
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

    fn status(&self) -> BusStatus {
        BusStatus {
            connected: true,
            caught_up: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_only_their_topics_in_order() {
        let bus = EmbeddedBus::new(Arc::new(Metrics::default()));
        let mut weather = bus.subscribe("w", &["weather".into()], StartAt::Committed);
        let mut both = bus.subscribe(
            "b",
            &["weather".into(), "crypto".into()],
            StartAt::Committed,
        );
        for i in 0..3 {
            bus.publish(BusRecord::now("weather", None, i.to_string()))
                .unwrap();
        }
        bus.publish(BusRecord::now("crypto", Some("btc"), "9".into()))
            .unwrap();
        for i in 0..3 {
            assert_eq!(weather.recv().await.unwrap().record.payload, i.to_string());
            assert_eq!(both.recv().await.unwrap().record.payload, i.to_string());
        }
        assert_eq!(
            both.recv().await.unwrap().record.key.as_deref(),
            Some("btc")
        );
        assert!(weather.try_recv().is_err(), "no crypto record for weather");
    }

    #[tokio::test]
    async fn dropped_subscribers_are_forgotten() {
        let bus = EmbeddedBus::new(Arc::new(Metrics::default()));
        drop(bus.subscribe("t", &["t".into()], StartAt::Committed));
        bus.publish(BusRecord::now("t", None, "1".into())).unwrap();
        assert!(bus.subscribers.read()["t"].is_empty());
    }
}
