//! A node's side of the fleet: read the plugin topic whole, load the latest trusted release of
//! each plugin meant for this node through the same path as a file (compiled off the runtime,
//! validated, canaried, swapped between batches), unload removed plugins, and report what
//! runs to the status topic.
//!
//! At start the node reads the topic up to the end it had when it started and only then
//! loads, the latest release of each plugin once (not every release in history); until then
//! `/readyz` says not ready.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::{Distrust, Headers, Record, Release, Removal, Trust, TrustError};
use crate::bus::kafka::{BROKER_TIMEOUT, Backoff, Quiet, client_config, plan_assignment};
use crate::bus::{KafkaBus, StartAt, now_ms};
use crate::config::{FleetConfig, KafkaConfig};
use crate::lifecycle::{PluginSet, SlotState};
use crate::metrics::Metrics;
use crate::plugin::precompiled::content_digest;
use crate::telemetry::{FleetRelease, InternalEvent};

/// What a node did with the latest release (or removal) of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Loaded,
    /// Did not load: invalid, failed its canary, misnamed, tampered.
    Rejected,
    /// Unsigned, or its signature matches no trusted key: never looked at further.
    Untrusted,
    /// A canary release for other nodes.
    Waiting,
    Removed,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Loaded => "loaded",
            Self::Rejected => "rejected",
            Self::Untrusted => "untrusted",
            Self::Waiting => "waiting",
            Self::Removed => "removed",
        }
    }
}

/// The latest release of a plugin this node has seen, and what it did with it.
#[derive(Debug, Clone)]
struct Seen {
    version: String,
    digest: String,
    stage: String,
    published_at_ms: u64,
    outcome: Outcome,
    reason: Option<String>,
}

/// What a node reports to the status topic, keyed by its id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub at_ms: u64,
    /// Whether it has read the plugin topic to the end it had at start.
    pub caught_up: bool,
    pub plugins: Vec<PluginStatus>,
}

/// One plugin on one node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PluginStatus {
    pub name: String,
    /// What serves now, if anything.
    pub running: Option<String>,
    pub running_digest: Option<String>,
    /// `file` or `topic`.
    pub source: Option<String>,
    /// `active`, `rolled_back`, or for the latest release: `rejected`, `untrusted`,
    /// `waiting`, `removed`.
    pub state: String,
    /// The latest release of the topic this node has seen.
    pub release: Option<ReleaseStatus>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseStatus {
    pub version: String,
    pub digest: String,
    pub stage: String,
}

/// A release (all of it) or a removal, ready to apply.
enum Ready {
    Release {
        release: Release,
        component: Vec<u8>,
    },
    Removal(Removal),
}

impl Ready {
    fn plugin(&self) -> &str {
        match self {
            Self::Release { release, .. } => &release.plugin,
            Self::Removal(removal) => &removal.plugin,
        }
    }
}

/// A release whose chunks are still arriving.
struct Assembly {
    release: Release,
    parts: Vec<Option<Vec<u8>>>,
}

pub struct FleetNode {
    node: String,
    config: FleetConfig,
    kafka: KafkaConfig,
    trust: Trust,
    plugins: Arc<PluginSet>,
    metrics: Arc<Metrics>,
    caught_up: watch::Sender<bool>,
    seen: Mutex<BTreeMap<String, Seen>>,
    changed: Notify,
}

impl FleetNode {
    pub fn new(
        config: &FleetConfig,
        kafka: &KafkaConfig,
        node: &str,
        plugins: Arc<PluginSet>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, TrustError> {
        Ok(Arc::new(Self {
            node: node.to_owned(),
            trust: Trust::new(&config.trusted_keys, config.allow_unsigned)?,
            config: config.clone(),
            kafka: kafka.clone(),
            plugins,
            metrics,
            caught_up: watch::channel(false).0,
            seen: Mutex::default(),
            changed: Notify::new(),
        }))
    }

    /// Whether the node has loaded what the topic held when it started.
    pub fn caught_up(&self) -> watch::Receiver<bool> {
        self.caught_up.subscribe()
    }

    /// Consumes the plugin topic and reports status, until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let topics = vec![self.config.topic.clone(), self.config.status_topic.clone()];
        // One partition keeps a release before its chunks; compaction keeps the latest per key.
        KafkaBus::ensure_topics_with(
            self.kafka.clone(),
            topics,
            1,
            &[("cleanup.policy", "compact")],
        )
        .await;
        tokio::join!(self.consume(), self.report());
    }

    async fn consume(&self) {
        let mut backoff = Backoff::default();
        let (consumer, mut behind) = loop {
            match self.start().await {
                Ok(started) => break started,
                Err(e) => {
                    tracing::debug!("fleet: waiting for the plugin topic: {e}");
                    backoff.wait().await;
                }
            }
        };
        let mut pending = BTreeMap::new();
        // While catching up: the latest of each plugin, applied once at the end.
        let mut latest: Option<BTreeMap<String, Ready>> = Some(BTreeMap::new());
        if behind.is_empty() {
            self.caught_up_with(latest.take().unwrap_or_default()).await;
        }
        loop {
            let message = match consumer.recv().await {
                Ok(message) => message,
                Err(e) => {
                    tracing::debug!("fleet: consumer error: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let (partition, offset) = (message.partition(), message.offset());
            let ready = self.read(&message, &mut pending);
            drop(message);
            match (ready, &mut latest) {
                (Some(ready), Some(latest)) => {
                    latest.insert(ready.plugin().to_owned(), ready);
                }
                (Some(ready), None) => self.apply(ready).await,
                (None, _) => {}
            }
            if latest.is_some()
                && behind
                    .get(&partition)
                    .is_some_and(|high| offset + 1 >= *high)
            {
                behind.remove(&partition);
                if behind.is_empty() {
                    self.caught_up_with(latest.take().unwrap_or_default()).await;
                }
            }
        }
    }

    /// The consumer, assigned every partition from its beginning, and each partition's end
    /// at start.
    async fn start(&self) -> Result<(StreamConsumer<Quiet>, BTreeMap<i32, i64>), String> {
        let group = format!("{}-fleet-{}", self.kafka.group_prefix, self.node);
        let consumer: Arc<StreamConsumer<Quiet>> = Arc::new(
            client_config(
                &self.kafka,
                &[
                    ("group.id", &group),
                    ("enable.auto.commit", "false"),
                    ("auto.offset.reset", "earliest"),
                ],
            )
            .create_with_context(Quiet)
            .map_err(|e| e.to_string())?,
        );
        let (probe, topics) = (consumer.clone(), vec![self.config.topic.clone()]);
        let plan = tokio::task::spawn_blocking(move || {
            plan_assignment(&probe, &topics, StartAt::Beginning)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let mut assignment = TopicPartitionList::new();
        let mut behind = BTreeMap::new();
        for ((topic, partition), (start, high)) in plan {
            assignment
                .add_partition_offset(&topic, partition, Offset::Offset(start))
                .map_err(|e| e.to_string())?;
            if start < high {
                behind.insert(partition, high);
            }
        }
        consumer.assign(&assignment).map_err(|e| e.to_string())?;
        let consumer = Arc::into_inner(consumer).ok_or("the consumer is still shared")?;
        Ok((consumer, behind))
    }

    /// Reads one record; a release is ready once all its chunks are in.
    fn read(
        &self,
        message: &rdkafka::message::BorrowedMessage<'_>,
        pending: &mut BTreeMap<String, Assembly>,
    ) -> Option<Ready> {
        let key = std::str::from_utf8(message.key().unwrap_or_default()).ok()?;
        let headers = Headers::of(message);
        let record = match Record::parse(key, message.payload(), &headers) {
            Ok(record) => record,
            Err(e) => {
                self.note(
                    key,
                    None,
                    Outcome::Rejected,
                    Some(format!("malformed record: {e}")),
                );
                return None;
            }
        };
        match record {
            Record::Release {
                release,
                signature,
                first_chunk,
            } => {
                pending.remove(&release.plugin);
                if let Err(distrust) = self.trust.release(&release, signature.as_ref()) {
                    self.distrust(&release.plugin, Some(&release), distrust);
                    return None;
                }
                if self.is_stale(&release) {
                    return None;
                }
                if let Some(reason) = self.misshapen(&release, first_chunk.len()) {
                    self.note(
                        &release.plugin,
                        Some(&release),
                        Outcome::Rejected,
                        Some(reason),
                    );
                    return None;
                }
                let mut assembly = Assembly {
                    parts: vec![None; release.chunks as usize],
                    release,
                };
                assembly.parts[0] = Some(first_chunk.to_vec());
                finish(assembly, pending)
            }
            Record::Chunk {
                plugin,
                digest,
                index,
                bytes,
            } => {
                let mut assembly = pending.remove(plugin)?;
                let held: usize = assembly.parts.iter().flatten().map(Vec::len).sum();
                if (held + bytes.len()) as u64 > assembly.release.size {
                    let reason = format!("its chunks exceed its {} bytes", assembly.release.size);
                    self.note(
                        plugin,
                        Some(&assembly.release),
                        Outcome::Rejected,
                        Some(reason),
                    );
                    return None;
                }
                if assembly.release.digest == digest
                    && let Some(part @ None) = assembly.parts.get_mut(index as usize)
                {
                    *part = Some(bytes.to_vec());
                }
                finish(assembly, pending)
            }
            Record::Removal { removal, signature } => {
                pending.remove(&removal.plugin);
                if let Err(distrust) = self.trust.removal(&removal, signature.as_ref()) {
                    self.distrust(&removal.plugin, None, distrust);
                    return None;
                }
                Some(Ready::Removal(removal))
            }
        }
    }

    async fn caught_up_with(&self, latest: BTreeMap<String, Ready>) {
        for ready in latest.into_values() {
            self.apply(ready).await;
        }
        tracing::info!(node = %self.node, plugins = self.seen.lock().len(), "fleet: caught up with the plugin topic");
        self.caught_up.send_replace(true);
        self.changed.notify_one();
    }

    async fn apply(&self, ready: Ready) {
        match ready {
            Ready::Release { release, component } => {
                let digest = content_digest(&component);
                let (outcome, reason) = if digest != release.digest {
                    let reason = format!(
                        "tampered: the component's digest is {}, the signed one {}",
                        short(&digest),
                        short(&release.digest)
                    );
                    (Outcome::Rejected, Some(reason))
                } else if !release.stage.includes(&self.node) {
                    (Outcome::Waiting, None)
                } else {
                    let stage = release.stage.to_string();
                    match self
                        .plugins
                        .load_published(&release.plugin, stage, component)
                        .await
                    {
                        // Added, swapped in, or already running: this node runs it.
                        Ok(_) => (Outcome::Loaded, None),
                        Err(reason) => (Outcome::Rejected, Some(reason)),
                    }
                };
                self.note(&release.plugin, Some(&release), outcome, reason);
            }
            Ready::Removal(removal) => {
                self.plugins.unload_published(&removal.plugin).await;
                self.note(&removal.plugin, None, Outcome::Removed, None);
            }
        }
    }

    /// Why a release is not assembled at all: too large for this node, or its chunks cannot
    /// add up to its size.
    fn misshapen(&self, release: &Release, first_chunk: usize) -> Option<String> {
        if release.size > self.config.max_component_bytes {
            return Some(format!(
                "{} bytes, more than [fleet] max_component_bytes ({})",
                release.size, self.config.max_component_bytes
            ));
        }
        (u64::from(release.chunks) > release.size.max(1) || first_chunk as u64 > release.size).then(
            || {
                format!(
                    "{} chunks, {first_chunk} bytes in the first, for {} bytes",
                    release.chunks, release.size
                )
            },
        )
    }

    /// A signed release older than the one applied (a replay): ignored, logged and counted.
    fn is_stale(&self, release: &Release) -> bool {
        let newer = self
            .seen
            .lock()
            .get(&release.plugin)
            .map(|seen| seen.published_at_ms)
            .filter(|&applied| applied > release.published_at_ms);
        if let Some(applied) = newer {
            let reason = format!(
                "published at {}, before the release applied ({applied})",
                release.published_at_ms
            );
            FleetRelease {
                plugin: &release.plugin,
                version: Some(&release.version),
                digest: Some(short(&release.digest)),
                outcome: "stale",
                reason: Some(&reason),
            }
            .emit(&self.metrics);
        }
        newer.is_some()
    }

    fn distrust(&self, plugin: &str, release: Option<&Release>, why: Distrust) {
        self.note(plugin, release, Outcome::Untrusted, Some(why.to_string()));
    }

    /// Keeps what this node did with a plugin's latest release, logs and counts it, and has
    /// the status reported.
    fn note(
        &self,
        plugin: &str,
        release: Option<&Release>,
        outcome: Outcome,
        reason: Option<String>,
    ) {
        FleetRelease {
            plugin,
            version: release.map(|r| r.version.as_str()),
            digest: release.map(|r| short(&r.digest)),
            outcome: outcome.label(),
            reason: reason.as_deref(),
        }
        .emit(&self.metrics);
        let seen = Seen {
            version: release.map(|r| r.version.clone()).unwrap_or_default(),
            digest: release.map(|r| r.digest.clone()).unwrap_or_default(),
            stage: release.map(|r| r.stage.to_string()).unwrap_or_default(),
            published_at_ms: release.map_or(0, |r| r.published_at_ms),
            outcome,
            reason,
        };
        self.seen.lock().insert(plugin.to_owned(), seen);
        self.changed.notify_one();
    }

    /// What runs here, and what became of each plugin's latest release.
    pub fn status(&self) -> NodeStatus {
        let mut plugins: BTreeMap<String, PluginStatus> = BTreeMap::new();
        let (views, _) = self.plugins.views();
        for view in views {
            let state = match view.state {
                SlotState::Active => "active",
                SlotState::RolledBack => "rolled_back",
            };
            plugins.insert(
                view.name.clone(),
                PluginStatus {
                    name: view.name,
                    running: Some(view.version),
                    running_digest: Some(view.digest),
                    source: Some(view.source.to_owned()),
                    state: state.to_owned(),
                    release: None,
                    error: view.last_error,
                },
            );
        }
        for (name, seen) in self.seen.lock().iter() {
            let status = plugins.entry(name.clone()).or_insert_with(|| PluginStatus {
                name: name.clone(),
                ..PluginStatus::default()
            });
            if !seen.digest.is_empty() {
                status.release = Some(ReleaseStatus {
                    version: seen.version.clone(),
                    digest: seen.digest.clone(),
                    stage: seen.stage.clone(),
                });
            }
            let runs_it = status.running_digest.as_deref() == Some(seen.digest.as_str());
            match seen.outcome {
                // A loaded release that no longer runs was rolled back: the slot says so.
                Outcome::Loaded if runs_it || status.state == "rolled_back" => {}
                Outcome::Loaded => status.state = "replaced".into(),
                outcome => {
                    if !(outcome == Outcome::Removed && status.running.is_some()) {
                        status.state = outcome.label().into();
                    }
                    if seen.reason.is_some() {
                        status.error = seen.reason.clone();
                    }
                }
            }
        }
        NodeStatus {
            node: self.node.clone(),
            at_ms: now_ms(),
            caught_up: *self.caught_up.borrow(),
            plugins: plugins.into_values().collect(),
        }
    }

    /// Reports the status on every change, and every `status_every_ms` as a heartbeat.
    async fn report(&self) {
        let producer: FutureProducer<Quiet> =
            match client_config(&self.kafka, &[]).create_with_context(Quiet) {
                Ok(producer) => producer,
                Err(e) => return tracing::error!("fleet: cannot create a producer: {e}"),
            };
        let every = Duration::from_millis(self.config.status_every_ms.max(100));
        loop {
            let status = self.status();
            match serde_json::to_vec(&status) {
                Ok(payload) => {
                    let record = FutureRecord::to(&self.config.status_topic)
                        .key(&self.node)
                        .payload(&payload);
                    if let Err((e, _)) = producer.send(record, BROKER_TIMEOUT).await {
                        tracing::debug!("fleet: status not reported: {e}");
                    }
                }
                Err(e) => tracing::error!("fleet: cannot encode the status: {e}"),
            }
            tokio::select! {
                () = self.changed.notified() => {}
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// The release, once its last chunk is in; until then it waits in `pending`.
fn finish(assembly: Assembly, pending: &mut BTreeMap<String, Assembly>) -> Option<Ready> {
    if assembly.parts.iter().any(Option::is_none) {
        pending.insert(assembly.release.plugin.clone(), assembly);
        return None;
    }
    let component = assembly.parts.into_iter().flatten().flatten().collect();
    Some(Ready::Release {
        release: assembly.release,
        component,
    })
}

pub fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}
