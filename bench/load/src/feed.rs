//! The bus source both servers consume: records produced to Kafka at a fixed rate, each
//! stamped with the time it was handed to the producer (`sentAtUs`, µs since the epoch) so a
//! client can tell how long it took to reach it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::time::{Instant, MissedTickBehavior};

/// One record to produce.
pub struct Record {
    pub topic: &'static str,
    pub key: String,
    /// The JSON payload with `sentAtUs` still to be added: an object's fields, no braces.
    pub fields: String,
}

pub struct Feed {
    producer: FutureProducer,
    brokers: String,
    failed: Arc<AtomicU64>,
}

impl Feed {
    pub fn new(brokers: &str) -> anyhow::Result<Self> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            // Measure the servers, not the producer's batching.
            .set("linger.ms", "0")
            .set("message.timeout.ms", "15000")
            .create()?;
        Ok(Self {
            producer,
            brokers: brokers.to_owned(),
            failed: Arc::default(),
        })
    }

    /// Creates `topics` (3 partitions) unless they exist, so either server can subscribe first.
    pub async fn prepare(&self, topics: &[&str]) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()?;
        let new: Vec<_> = topics
            .iter()
            .map(|topic| NewTopic::new(topic, 3, TopicReplication::Fixed(1)))
            .collect();
        for outcome in admin.create_topics(&new, &AdminOptions::new()).await? {
            match outcome {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => anyhow::bail!("creating {topic}: {code}"),
            }
        }
        Ok(())
    }

    /// Produces the records `next(n)` for n = 0, 1, ... at `rate` per second for `duration`;
    /// returns how many were handed to the producer, each with the `n` it was made from.
    pub async fn run(
        &self,
        rate: f64,
        duration: Duration,
        mut next: impl FnMut(u64) -> Record,
    ) -> Vec<u64> {
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let end = Instant::now() + duration;
        let mut sent = Vec::new();
        let mut n = 0;
        while Instant::now() < end {
            ticks.tick().await;
            if self.send(next(n)) {
                sent.push(n);
            }
            n += 1;
        }
        sent
    }

    /// Hands one record to the producer; false when it could not even be queued.
    pub fn send(&self, record: Record) -> bool {
        let separator = if record.fields.is_empty() { "" } else { "," };
        let payload = format!(
            "{{{}{separator}\"sentAtUs\":{}}}",
            record.fields,
            now_micros()
        );
        let queued = self.producer.send_result(
            FutureRecord::to(record.topic)
                .key(&record.key)
                .payload(&payload),
        );
        match queued {
            Ok(delivery) => {
                let failed = self.failed.clone();
                tokio::spawn(async move {
                    if !matches!(delivery.await, Ok(Ok(_))) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                });
                true
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Records the broker did not take (so no server could deliver them).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_micros() as u64
}
