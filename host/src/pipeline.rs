//! Bus records and timers into plugins, plugin actions out to the dispatcher.
//!
//! Each plugin consumes its declared topics through its own subscription and processes them in
//! order, in batches of what has already arrived (up to `max_batch`): batching amortises the
//! crossing into the guest without adding latency. A record is acknowledged to the bus only
//! after its actions are applied or it was dead-lettered.
//!
//! The data path never changes which version runs: it reads the active version from a
//! [`watch`] the plugin set owns, and a version's failures are recorded by its own guard.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use serde::de::IgnoredAny;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::bus::{Bus, BusRecord, Delivery, StartAt};
use crate::dispatch::{Dispatcher, Origin};
use crate::metrics::{Counter, Metrics, PluginTopicLabels};
use crate::plugin::RecordOutcome;
use crate::plugin::{PluginHandle, WitRecord};
use crate::telemetry::RecordFailed;

/// How the pipeline treats records, from configuration.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub max_batch: usize,
    pub max_record_bytes: usize,
    pub dead_letter_topic: String,
    pub start: StartAt,
}

/// What every plugin's consumers and timers share.
#[derive(Clone)]
pub struct Pipeline {
    bus: Arc<dyn Bus>,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
    recent: Arc<RecentRecords>,
    config: PipelineConfig,
}

impl Pipeline {
    pub fn new(
        bus: Arc<dyn Bus>,
        dispatcher: Arc<Dispatcher>,
        metrics: Arc<Metrics>,
        config: PipelineConfig,
    ) -> Self {
        Self {
            bus,
            dispatcher,
            metrics,
            recent: Arc::default(),
            config,
        }
    }

    /// The latest records of `topics` that some plugin processed, oldest first: what a new
    /// version is canaried on.
    pub fn recent_records(&self, topics: &[String]) -> Vec<WitRecord> {
        self.recent.for_topics(topics)
    }

    /// Starts consuming the active version's declared topics and firing its timers, as tasks
    /// in `tasks`, until `stopped` turns true. Each batch and tick goes to the version active
    /// at that moment.
    pub fn start(
        &self,
        active: &watch::Receiver<PluginHandle>,
        stopped: &watch::Receiver<bool>,
        tasks: &mut JoinSet<()>,
    ) {
        let manifest = active.borrow().manifest.clone();
        let topics = manifest
            .consumes
            .iter()
            .chain(&manifest.publishes)
            .cloned()
            .collect();
        self.bus.prepare_topics(topics);
        if !manifest.consumes.is_empty() {
            let deliveries =
                self.bus
                    .subscribe(&manifest.name, &manifest.consumes, self.config.start);
            let consumer = Consumer {
                active: active.clone(),
                pipeline: self.clone(),
                probes: Mutex::default(),
            };
            tasks.spawn(consumer.run(deliveries, stopped.clone()));
        }
        for (name, every) in manifest.timers.clone() {
            let (active, mut stopped, pipeline) = (active.clone(), stopped.clone(), self.clone());
            tasks.spawn(async move {
                // A timer's commands would only be refused while the broker is unreachable.
                while !pipeline.bus.status().connected {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stopped.changed() => return,
                        _ = ticks.tick() => {}
                    }
                    let plugin = active.borrow().clone();
                    match plugin.on_timer(name.clone()).await {
                        Ok(actions) => {
                            pipeline.dispatcher.apply(&plugin, actions, Origin::Live);
                        }
                        // Counted by the version's guard; nothing to add per tick.
                        Err(failure) if failure.is_refusal() => {}
                        Err(failure) => {
                            tracing::warn!(plugin = %plugin.manifest.name, timer = %name, "timer failed: {failure}");
                        }
                    }
                }
            });
        }
    }
}

struct Consumer {
    active: watch::Receiver<PluginHandle>,
    pipeline: Pipeline,
    /// Per topic, this consumer's record counters: looked up once, not per record.
    probes: Mutex<HashMap<String, TopicProbes>>,
}

struct TopicProbes {
    processed: Counter,
    failed: Counter,
    dead_lettered: Counter,
}

impl TopicProbes {
    fn new(metrics: &Metrics, plugin: &str, topic: &str) -> Self {
        let labels = PluginTopicLabels {
            plugin: plugin.to_owned(),
            topic: topic.to_owned(),
        };
        Self {
            processed: metrics.records.get_or_create_owned(&labels),
            failed: metrics.records_failed.get_or_create_owned(&labels),
            dead_lettered: metrics.dead_letters.get_or_create_owned(&labels),
        }
    }
}

impl Consumer {
    /// Processes batches until the deliveries end or this generation is stopped; a stop only
    /// takes effect between batches, so no batch is left half applied.
    async fn run(
        self,
        mut deliveries: mpsc::Receiver<Delivery>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let max_batch = self.pipeline.config.max_batch.max(1);
        let mut batch = Vec::with_capacity(max_batch);
        loop {
            tokio::select! {
                biased;
                _ = stopped.changed() => return,
                received = deliveries.recv_many(&mut batch, max_batch) => {
                    if received == 0 {
                        return;
                    }
                }
            }
            // The version to use is read once per batch: a swap takes effect between batches.
            let plugin = self.active.borrow().clone();
            self.process(&plugin, std::mem::take(&mut batch)).await;
        }
    }

    async fn process(&self, plugin: &PluginHandle, batch: Vec<Delivery>) {
        let mut accepted = Vec::with_capacity(batch.len());
        for delivery in batch {
            match self.defect(&delivery.record) {
                Some(reason) => self.dead_letter(plugin, delivery, &reason),
                None => accepted.push(delivery),
            }
        }
        if accepted.is_empty() {
            return;
        }
        let records: Vec<WitRecord> = accepted.iter().map(|d| to_wit(&d.record)).collect();
        match plugin.on_records(records).await {
            Ok(outcomes) if outcomes.len() == accepted.len() => {
                for (delivery, outcome) in accepted.into_iter().zip(outcomes) {
                    self.settle(plugin, delivery, outcome);
                }
            }
            Ok(outcomes) => {
                let reason = format!(
                    "returned {} results for {} records",
                    outcomes.len(),
                    accepted.len()
                );
                self.dead_letter_all(plugin, accepted, &reason);
            }
            // One bad record must not cost its neighbours: retry them one by one, each on a
            // fresh instance if the previous one trapped, to isolate the culprit.
            Err(failure) if accepted.len() > 1 && !failure.is_refusal() => {
                for delivery in accepted {
                    match plugin.on_records(vec![to_wit(&delivery.record)]).await {
                        Ok(mut outcomes) if outcomes.len() == 1 => {
                            let outcome = outcomes.pop().expect("one outcome");
                            self.settle(plugin, delivery, outcome);
                        }
                        Ok(_) => self.dead_letter(
                            plugin,
                            delivery,
                            "returned the wrong number of results",
                        ),
                        Err(failure) => {
                            self.dead_letter(plugin, delivery, &format!("plugin {failure}"));
                        }
                    }
                }
            }
            // An open circuit: the records are dead-lettered (and so committed) unprocessed.
            Err(failure) => {
                self.dead_letter_all(plugin, accepted, &format!("plugin {failure}"));
            }
        }
    }

    fn dead_letter_all(&self, plugin: &PluginHandle, deliveries: Vec<Delivery>, reason: &str) {
        for delivery in deliveries {
            self.dead_letter(plugin, delivery, reason);
        }
    }

    /// Why a record cannot be given to a plugin at all.
    fn defect(&self, record: &BusRecord) -> Option<String> {
        let limit = self.pipeline.config.max_record_bytes;
        if record.payload.len() > limit {
            return Some(format!(
                "oversized: {} bytes, the limit is {limit}",
                record.payload.len(),
            ));
        }
        serde_json::from_str::<IgnoredAny>(&record.payload)
            .err()
            .map(|e| format!("not JSON: {e}"))
    }

    fn settle(&self, plugin: &PluginHandle, delivery: Delivery, outcome: RecordOutcome) {
        let manifest = &plugin.manifest;
        match outcome {
            Ok(actions) => {
                if !delivery.replay {
                    self.pipeline.recent.remember(&delivery.record);
                }
                let origin = if delivery.replay {
                    Origin::Replay
                } else {
                    Origin::Live
                };
                self.pipeline.dispatcher.apply(plugin, actions, origin);
                self.count(&manifest.name, &delivery.record.topic, |p| {
                    p.processed.inc();
                });
                delivery.processed();
            }
            Err(reason) => self.dead_letter(plugin, delivery, &reason),
        }
    }

    /// Runs `count` with the topic's counters, resolved on the topic's first record.
    fn count(&self, plugin: &str, topic: &str, count: impl FnOnce(&TopicProbes)) {
        let mut probes = self.probes.lock();
        if !probes.contains_key(topic) {
            let fresh = TopicProbes::new(&self.pipeline.metrics, plugin, topic);
            probes.insert(topic.to_owned(), fresh);
        }
        count(&probes[topic]);
    }

    /// Counts, logs and forwards a record no plugin could process, with the reason in headers.
    fn dead_letter(&self, plugin: &PluginHandle, delivery: Delivery, reason: &str) {
        let plugin = &plugin.manifest.name;
        let record = &delivery.record;
        self.count(plugin, &record.topic, |probes| {
            RecordFailed {
                plugin,
                position: &record.position(),
                reason,
                failed: &probes.failed,
            }
            .emit();
        });
        let pipeline = &self.pipeline;
        let mut letter = BusRecord::now(
            &pipeline.config.dead_letter_topic,
            record.key.as_deref(),
            record.payload.clone(),
        );
        letter.headers = vec![
            ("x-flux-reason".into(), reason.chars().take(512).collect()),
            ("x-flux-plugin".into(), plugin.clone()),
            ("x-flux-source-topic".into(), record.topic.clone()),
        ];
        if let Some((partition, offset)) = record.source {
            letter
                .headers
                .push(("x-flux-source-partition".into(), partition.to_string()));
            letter
                .headers
                .push(("x-flux-source-offset".into(), offset.to_string()));
        }
        match pipeline.bus.publish(letter) {
            Ok(()) => self.count(plugin, &record.topic, |p| {
                p.dead_lettered.inc();
            }),
            Err(e) => tracing::error!(position = %record.position(), "cannot dead-letter: {e}"),
        }
        delivery.processed();
    }
}

pub fn to_wit(record: &BusRecord) -> WitRecord {
    WitRecord {
        topic: record.topic.clone(),
        key: record.key.clone(),
        payload: record.payload.clone(),
        timestamp_ms: record.timestamp_ms,
    }
}

/// The latest records per topic, replayed through a new version before it goes live.
#[derive(Default)]
struct RecentRecords {
    by_topic: Mutex<HashMap<String, VecDeque<BusRecord>>>,
}

const CANARY_RECORDS_PER_TOPIC: usize = 16;

impl RecentRecords {
    fn remember(&self, record: &BusRecord) {
        let mut by_topic = self.by_topic.lock();
        let recent = by_topic.entry(record.topic.clone()).or_default();
        if recent.len() == CANARY_RECORDS_PER_TOPIC {
            recent.pop_front();
        }
        recent.push_back(record.clone());
    }

    fn for_topics(&self, topics: &[String]) -> Vec<WitRecord> {
        let by_topic = self.by_topic.lock();
        topics
            .iter()
            .filter_map(|topic| by_topic.get(topic))
            .flatten()
            .map(to_wit)
            .collect()
    }
}
