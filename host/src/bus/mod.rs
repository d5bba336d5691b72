//! The bus seam: records keyed and shaped as Kafka carries them, delivered with a receipt that
//! the pipeline hands back once the record's actions are applied.
//!
//! [`embedded`] is the in-process bus of the default run; [`kafka`] is the production bus.

pub mod embedded;
pub mod kafka;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

pub use embedded::EmbeddedBus;
pub use kafka::KafkaBus;

/// One record on a topic. `payload` is JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusRecord {
    pub topic: String,
    pub key: Option<String>,
    pub payload: String,
    /// Producer timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub headers: Vec<(String, String)>,
    /// Where a consumed record came from (Kafka partition and offset), for logs and receipts.
    pub source: Option<(i32, i64)>,
}

impl BusRecord {
    /// A record to publish, stamped with the current time.
    pub fn now(topic: &str, key: Option<&str>, payload: String) -> Self {
        Self {
            topic: topic.to_owned(),
            key: key.map(str::to_owned),
            payload,
            timestamp_ms: now_ms(),
            headers: Vec::new(),
            source: None,
        }
    }

    /// `topic/partition@offset`, or just the topic for records without a source.
    pub fn position(&self) -> String {
        match self.source {
            Some((partition, offset)) => format!("{}/{partition}@{offset}", self.topic),
            None => self.topic.clone(),
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Marks consumed records as processed (Kafka: stores the offset for the next commit).
pub trait Acknowledge: Send + Sync {
    fn processed(&self, record: &BusRecord);
}

/// A consumed record, and whether it is history replayed to rebuild state rather than news.
pub struct Delivery {
    pub record: BusRecord,
    /// Replayed records rebuild the cache only: clients are never sent stale events.
    pub replay: bool,
    receipt: Option<Arc<dyn Acknowledge>>,
}

impl Delivery {
    pub fn live(record: BusRecord) -> Self {
        Self {
            record,
            replay: false,
            receipt: None,
        }
    }

    pub fn with_receipt(record: BusRecord, replay: bool, receipt: Arc<dyn Acknowledge>) -> Self {
        Self {
            record,
            replay,
            receipt: Some(receipt),
        }
    }

    /// Call once the record's actions are applied (or it was dead-lettered): at-least-once.
    pub fn processed(&self) {
        if let Some(receipt) = &self.receipt {
            receipt.processed(&self.record);
        }
    }
}

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Where this subscriber last committed, else the beginning (a service's command stream:
    /// nothing sent while it was down, or before it first came up, is missed).
    Committed,
    /// Replay up to this many of the latest records per partition (and anything since this
    /// node's last committed offset) before going live: a warm start.
    Replay(u32),
    /// Every record the topic keeps, whatever was committed: a log read whole (the fleet's
    /// plugin topic).
    Beginning,
}

/// What `/readyz` reports about the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusStatus {
    pub connected: bool,
    /// Every subscription has replayed its history and is live.
    pub caught_up: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the bus is closed")]
    Closed,
    #[error("the produce queue is full")]
    QueueFull,
    #[error("the broker is unreachable")]
    Unavailable,
    #[error("{0}")]
    Rejected(String),
}

/// Where records come from and go to. Publishing only enqueues; it never waits for a broker.
pub trait Bus: Send + Sync + 'static {
    fn publish(&self, record: BusRecord) -> Result<(), PublishError>;

    /// Deliveries from `topics`, in order per partition. `name` identifies the subscriber
    /// (Kafka: part of the group id under which its offsets are committed).
    fn subscribe(&self, name: &str, topics: &[String], from: StartAt) -> mpsc::Receiver<Delivery>;

    fn status(&self) -> BusStatus;

    /// Makes sure `topics` exist, in the background, where the bus needs that (Kafka).
    fn prepare_topics(&self, topics: Vec<String>) {
        let _ = topics;
    }
}
