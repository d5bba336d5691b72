//! The Kafka bus (rdkafka / librdkafka): works with Apache Kafka, Redpanda, MSK, Confluent Cloud
//! and tansu; any librdkafka property passes through from `[kafka.properties]`.
//!
//! # Fan-out and delivery
//! Every gateway node must see every domain event for the rooms its clients are in, so each
//! node assigns itself **all partitions** of the topics its plugins consume (manual assignment:
//! no consumer-group rebalances when nodes come and go; a new node simply reads everything).
//! Offsets are committed per node and subscriber under the group
//! `{group_prefix}.{node_id}.{subscriber}`, and stored only after the pipeline has applied a
//! record's actions (`enable.auto.offset.store=false`, `store_offset`, auto-commit): at least
//! once.
//!
//! # Start position (warm start)
//! A subscription that replays (`StartAt::Replay(n)`) starts each partition at
//! `min(last committed offset, high watermark - n)` (never below the low watermark): the node
//! rebuilds its snapshot cache from the latest records, and from everything it missed since
//! its last commit. Records below the high watermark seen at start are delivered as `replay`
//! (applied to the cache only, never sent to clients); the bus reports `caught_up` once every
//! partition has reached that mark. `StartAt::Committed` resumes where the subscriber left off,
//! else at the beginning (a service's command stream: nothing sent before it came up is missed).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::{Acknowledge, Bus, BusRecord, BusStatus, Delivery, PublishError, StartAt};
use crate::config::KafkaConfig;
use crate::logs::Throttle;
use crate::metrics::{self, Metrics};
use crate::telemetry::{InternalEvent, PublishUndelivered};

const SUBSCRIBER_QUEUE: usize = 4_096;
pub(crate) const BROKER_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Broker reachability and subscription progress, shared by the producer and the consumers.
#[derive(Default)]
struct Health {
    connected: AtomicBool,
    /// Subscriptions still replaying history.
    catching_up: AtomicUsize,
}

/// Tracks broker reachability from librdkafka's statistics and errors, and counts failed
/// deliveries.
struct ProducerEvents {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// The consumers' and admin client's context: the producer already tells the operator when
/// the brokers go and come back, so these only log at debug level.
pub(crate) struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _level: RDKafkaLogLevel, facility: &str, message: &str) {
        tracing::debug!("librdkafka {facility}: {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!("kafka: {error}: {reason}");
    }
}

impl ConsumerContext for Quiet {}

impl ClientContext for ProducerEvents {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let serious = (level as i32) <= (RDKafkaLogLevel::Warning as i32);
        // librdkafka repeats itself while brokers are away.
        static SERIOUS: Throttle = Throttle::every(Duration::from_secs(30));
        if serious && let Some(held_back) = SERIOUS.admit("librdkafka") {
            tracing::warn!(held_back, "librdkafka {facility}: {message}");
        } else {
            tracing::debug!("librdkafka {facility}: {message}");
        }
    }

    fn stats(&self, statistics: Statistics) {
        let up = statistics
            .brokers
            .values()
            .any(|broker| broker.state == "UP");
        if self.health.connected.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("kafka: connected to the brokers");
            } else {
                tracing::warn!("kafka: no broker is reachable");
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let down = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
        );
        if down && self.health.connected.swap(false, Ordering::Relaxed) {
            tracing::warn!("kafka: lost the brokers: {reason}");
        } else {
            tracing::debug!("kafka: {error}: {reason}");
        }
    }
}

impl ProducerContext for ProducerEvents {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            PublishUndelivered {
                topic: message.topic(),
                error,
            }
            .emit(&self.metrics);
        }
    }
}

pub struct KafkaBus {
    config: KafkaConfig,
    node_id: String,
    producer: ThreadedProducer<ProducerEvents>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl KafkaBus {
    /// Creates the producer; consumers start with each subscription. Never waits for a
    /// broker: an absent broker is retried with backoff and reported by [`Bus::status`].
    pub fn new(
        config: &KafkaConfig,
        node_id: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KafkaError> {
        let health = Arc::new(Health::default());
        let producer = client_config(
            config,
            &[
                (
                    "queue.buffering.max.messages",
                    &config.produce_queue_max.to_string(),
                ),
                (
                    "queue.buffering.max.kbytes",
                    &config.produce_queue_max_kbytes.to_string(),
                ),
                ("linger.ms", "2"),
                ("statistics.interval.ms", "500"),
            ],
        )
        .create_with_context(ProducerEvents {
            health: health.clone(),
            metrics: metrics.clone(),
        })?;
        Ok(Self {
            config: config.clone(),
            node_id: node_id.to_owned(),
            producer,
            health,
            metrics,
        })
    }

    /// Creates `topics` that do not exist yet (when `create_topic_partitions` > 0), retrying
    /// until the broker answers. Run it in the background.
    pub async fn ensure_topics(config: KafkaConfig, topics: Vec<String>) {
        let partitions = config.create_topic_partitions;
        Self::ensure_topics_with(config, topics, partitions, &[]).await;
    }

    /// [`Self::ensure_topics`], with `partitions` and topic `settings` (`cleanup.policy`...).
    pub async fn ensure_topics_with(
        config: KafkaConfig,
        topics: Vec<String>,
        partitions: i32,
        settings: &[(&str, &str)],
    ) {
        if config.create_topic_partitions <= 0 || topics.is_empty() {
            return;
        }
        let admin: AdminClient<Quiet> = match client_config(&config, &[]).create_with_context(Quiet)
        {
            Ok(admin) => admin,
            Err(e) => return tracing::error!("kafka: cannot create an admin client: {e}"),
        };
        let wanted: Vec<NewTopic> = topics
            .iter()
            .map(|t| {
                settings.iter().fold(
                    NewTopic::new(t, partitions, TopicReplication::Fixed(1)),
                    |topic, (key, value)| topic.set(key, value),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(BROKER_TIMEOUT));
        let mut backoff = Backoff::default();
        loop {
            match admin.create_topics(&wanted, &options).await {
                Ok(results) => {
                    for result in results {
                        match result {
                            Ok(topic) => tracing::info!(topic, "kafka: created topic"),
                            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                            Err((topic, code)) => {
                                tracing::warn!(topic, "kafka: cannot create topic: {code}")
                            }
                        }
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!("kafka: topic creation waits for the broker: {e}");
                    backoff.wait().await;
                }
            }
        }
    }

    /// Waits until queued records are delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!("kafka: records left undelivered at shutdown: {e}");
        }
    }
}

pub(crate) fn client_config(config: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    for (key, value) in defaults {
        client.set(*key, *value);
    }
    // The operator's properties (security, client id, tuning) win over our defaults.
    for (key, value) in &config.properties {
        client.set(key, value.expose());
    }
    client
}

impl Bus for KafkaBus {
    fn publish(&self, record: BusRecord) -> Result<(), PublishError> {
        if !self.health.connected.load(Ordering::Relaxed) {
            return Err(PublishError::Unavailable);
        }
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut outgoing = BaseRecord::to(&record.topic)
            .payload(&record.payload)
            .timestamp(i64::try_from(record.timestamp_ms).unwrap_or(i64::MAX))
            .headers(headers);
        if let Some(key) = &record.key {
            outgoing = outgoing.key(key);
        }
        match self.producer.send(outgoing) {
            Ok(()) => {
                let topic = metrics::topic(&record.topic);
                self.metrics.bus_published.get_or_create(&topic).inc();
                Ok(())
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(PublishError::QueueFull)
            }
            Err((e, _)) => Err(PublishError::Rejected(e.to_string())),
        }
    }

    fn subscribe(&self, name: &str, topics: &[String], from: StartAt) -> mpsc::Receiver<Delivery> {
        let (deliveries, receiver) = mpsc::channel(SUBSCRIBER_QUEUE);
        if matches!(from, StartAt::Replay(_)) {
            self.health.catching_up.fetch_add(1, Ordering::Relaxed);
        }
        let subscription = Subscription {
            config: self.config.clone(),
            group: format!("{}.{}.{name}", self.config.group_prefix, self.node_id),
            topics: topics.to_vec(),
            from,
            health: self.health.clone(),
            deliveries,
        };
        tokio::spawn(subscription.run());
        receiver
    }

    fn prepare_topics(&self, topics: Vec<String>) {
        tokio::spawn(Self::ensure_topics(self.config.clone(), topics));
    }

    fn status(&self) -> BusStatus {
        BusStatus {
            connected: self.health.connected.load(Ordering::Relaxed),
            caught_up: self.health.catching_up.load(Ordering::Relaxed) == 0,
        }
    }
}

/// Stores a processed record's offset for the next auto-commit.
struct OffsetStore(Arc<StreamConsumer<Quiet>>);

impl Acknowledge for OffsetStore {
    fn processed(&self, record: &BusRecord) {
        if let Some((partition, offset)) = record.source
            && let Err(e) = self.0.store_offset(&record.topic, partition, offset)
        {
            tracing::debug!(position = %record.position(), "kafka: cannot store offset: {e}");
        }
    }
}

struct Subscription {
    config: KafkaConfig,
    group: String,
    topics: Vec<String>,
    from: StartAt,
    health: Arc<Health>,
    deliveries: mpsc::Sender<Delivery>,
}

/// Per partition, the high watermark seen at start: records below it are history.
type CatchUp = HashMap<(String, i32), i64>;

impl Subscription {
    async fn run(self) {
        let mut backoff = Backoff::default();
        let (consumer, mut catch_up) = loop {
            match self.start().await {
                Ok(started) => break started,
                Err(e) => {
                    tracing::debug!(group = %self.group, "kafka: subscription waits for the broker: {e}");
                    backoff.wait().await;
                }
            }
        };
        tracing::info!(group = %self.group, topics = ?self.topics, replaying = catch_up.len(), "kafka: consuming");
        let replaying = matches!(self.from, StartAt::Replay(_));
        if replaying && catch_up.is_empty() {
            self.health.catching_up.fetch_sub(1, Ordering::Relaxed);
        }
        let receipt: Arc<dyn Acknowledge> = Arc::new(OffsetStore(consumer.clone()));
        let mut failing = false;
        loop {
            let message = match consumer.recv().await {
                Ok(message) => message,
                Err(e) => {
                    // librdkafka reconnects by itself; say so once, not at every retry.
                    if !failing {
                        tracing::warn!(group = %self.group, "kafka: consumer error: {e}");
                    }
                    failing = true;
                    tokio::time::sleep(RETRY_MIN).await;
                    continue;
                }
            };
            failing = false;
            let (topic, partition, offset) = (
                message.topic().to_owned(),
                message.partition(),
                message.offset(),
            );
            let replay = match catch_up.get(&(topic.clone(), partition)) {
                Some(high) if offset < *high => {
                    if offset + 1 >= *high {
                        catch_up.remove(&(topic.clone(), partition));
                        if catch_up.is_empty() {
                            self.health.catching_up.fetch_sub(1, Ordering::Relaxed);
                            tracing::info!(group = %self.group, "kafka: caught up; live from here");
                        }
                    }
                    true
                }
                _ => false,
            };
            let payload = message.payload().unwrap_or_default();
            let record = BusRecord {
                topic,
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                // Invalid UTF-8 cannot be JSON: the pipeline dead-letters it as not JSON.
                payload: String::from_utf8_lossy(payload).into_owned(),
                timestamp_ms: message
                    .timestamp()
                    .to_millis()
                    .and_then(|ms| u64::try_from(ms).ok())
                    .unwrap_or(0),
                headers: message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                source: Some((partition, offset)),
            };
            drop(message);
            if self
                .deliveries
                .send(Delivery::with_receipt(
                    record,
                    replay && replaying,
                    receipt.clone(),
                ))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Creates the consumer, finds every partition, and assigns each at its start offset.
    async fn start(&self) -> Result<(Arc<StreamConsumer<Quiet>>, CatchUp), KafkaError> {
        let consumer: Arc<StreamConsumer<Quiet>> = Arc::new(
            client_config(
                &self.config,
                &[
                    ("group.id", &self.group),
                    ("enable.auto.commit", "true"),
                    ("auto.commit.interval.ms", "1000"),
                    ("enable.auto.offset.store", "false"),
                    ("auto.offset.reset", "latest"),
                    (
                        "queued.max.messages.kbytes",
                        &self.config.consume_queue_max_kbytes.to_string(),
                    ),
                ],
            )
            .create_with_context(Quiet)?,
        );
        let (topics, from, probe) = (self.topics.clone(), self.from, consumer.clone());
        let plan = tokio::task::spawn_blocking(move || plan_assignment(&probe, &topics, from))
            .await
            .map_err(|_| KafkaError::Canceled)??;
        let mut assignment = TopicPartitionList::new();
        let mut catch_up = CatchUp::new();
        for ((topic, partition), (start, high)) in plan {
            assignment.add_partition_offset(&topic, partition, Offset::Offset(start))?;
            if start < high {
                catch_up.insert((topic, partition), high);
            }
        }
        consumer.assign(&assignment)?;
        let kept = if matches!(self.from, StartAt::Replay(_)) {
            catch_up
        } else {
            CatchUp::new()
        };
        Ok((consumer, kept))
    }
}

/// For each (topic, partition): the offset to start at, and the high watermark now.
pub(crate) type Plan = BTreeMap<(String, i32), (i64, i64)>;

/// Plans where each partition of `topics` starts.
pub(crate) fn plan_assignment(
    consumer: &StreamConsumer<Quiet>,
    topics: &[String],
    from: StartAt,
) -> Result<Plan, KafkaError> {
    let mut partitions = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), BROKER_TIMEOUT)?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .ok_or(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ))?;
        for partition in found.partitions() {
            partitions.add_partition(topic, partition.id());
        }
    }
    // A log read whole has no group: nothing committed to ask the coordinator for.
    let committed = match from {
        StartAt::Beginning => TopicPartitionList::new(),
        _ => consumer.committed_offsets(partitions.clone(), BROKER_TIMEOUT)?,
    };
    let mut plan = BTreeMap::new();
    for element in partitions.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let (low, high) = consumer.fetch_watermarks(topic, partition, BROKER_TIMEOUT)?;
        let last_commit =
            committed
                .find_partition(topic, partition)
                .and_then(|p| match p.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                });
        plan.insert(
            (topic.to_owned(), partition),
            (start_offset(from, last_commit, low, high), high),
        );
    }
    Ok(plan)
}

/// Where a partition with watermarks `low..high` starts, given its last commit.
fn start_offset(from: StartAt, last_commit: Option<i64>, low: i64, high: i64) -> i64 {
    let start = match from {
        // No commit yet: from the beginning, so no command sent before this subscriber
        // first came up is missed (at least once).
        StartAt::Committed => last_commit.unwrap_or(low),
        StartAt::Beginning => low,
        // The last `records` (for the cache), or from the last commit if that is earlier.
        StartAt::Replay(records) => {
            let window = high.saturating_sub(i64::from(records));
            last_commit.map_or(window, |c| c.min(window))
        }
    };
    start.clamp(low, high.max(low))
}

/// Waits between attempts to reach a broker: doubling from `RETRY_MIN` up to `RETRY_MAX`.
pub(crate) struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(RETRY_MIN)
    }
}

impl Backoff {
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_without_a_commit_starts_at_the_beginning() {
        assert_eq!(start_offset(StartAt::Committed, None, 40, 100), 40);
        assert_eq!(start_offset(StartAt::Committed, Some(70), 40, 100), 70);
    }

    #[test]
    fn a_commit_below_the_low_watermark_starts_at_the_oldest_record_kept() {
        assert_eq!(start_offset(StartAt::Committed, Some(10), 40, 100), 40);
        assert_eq!(start_offset(StartAt::Replay(50), Some(10), 40, 100), 40);
    }

    #[test]
    fn a_warm_start_replays_the_last_records_or_from_an_earlier_commit() {
        // The window is the last 50 records...
        assert_eq!(start_offset(StartAt::Replay(50), None, 0, 100), 50);
        assert_eq!(start_offset(StartAt::Replay(50), Some(90), 0, 100), 50);
        // ...unless the last commit is earlier: nothing since it is skipped.
        assert_eq!(start_offset(StartAt::Replay(50), Some(20), 0, 100), 20);
        // A short partition replays all it has.
        assert_eq!(start_offset(StartAt::Replay(50), None, 0, 10), 0);
    }

    #[test]
    fn an_empty_partition_starts_at_its_end() {
        assert_eq!(start_offset(StartAt::Replay(50), None, 100, 100), 100);
        assert_eq!(start_offset(StartAt::Committed, None, 100, 100), 100);
    }
}
