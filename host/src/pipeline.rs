//! Bus records and timers into plugins, plugin actions out to the dispatcher.
//!
//! Each plugin consumes its declared topics through its own subscription and processes them in
//! order, in batches of what has already arrived (up to `max_batch`): batching amortises the
//! crossing into the guest without adding latency.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::bus::{Bus, BusRecord};
use crate::dispatch::Dispatcher;
use crate::metrics::{self, Metrics};
use crate::plugin::runtime::RecordOutcome;
use crate::plugin::{PluginHandle, WitRecord};

/// Starts consuming `plugin`'s topics and firing its timers, as tasks in `tasks`.
pub fn start(
    plugin: PluginHandle,
    bus: &dyn Bus,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
    max_batch: usize,
    tasks: &mut JoinSet<()>,
) {
    if !plugin.manifest.consumes.is_empty() {
        let records = bus.subscribe(&plugin.manifest.consumes);
        let consumer = Consumer {
            plugin: plugin.clone(),
            dispatcher: dispatcher.clone(),
            metrics,
            max_batch: max_batch.max(1),
        };
        tasks.spawn(consumer.run(records));
    }
    for (name, every) in plugin.manifest.timers.clone() {
        let (plugin, dispatcher) = (plugin.clone(), dispatcher.clone());
        tasks.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match plugin.on_timer(name.clone()).await {
                    Ok(actions) => {
                        dispatcher.apply(&plugin.manifest, actions, None);
                    }
                    Err(failure) => tracing::warn!(
                        plugin = %plugin.manifest.name, timer = %name, "timer failed: {failure}"
                    ),
                }
            }
        });
    }
}

struct Consumer {
    plugin: PluginHandle,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
    max_batch: usize,
}

impl Consumer {
    async fn run(self, mut records: mpsc::Receiver<BusRecord>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while records.recv_many(&mut batch, self.max_batch).await > 0 {
            self.process(std::mem::take(&mut batch)).await;
        }
    }

    async fn process(&self, batch: Vec<BusRecord>) {
        let topics: Vec<String> = batch.iter().map(|r| r.topic.clone()).collect();
        let records: Vec<WitRecord> = batch.into_iter().map(to_wit).collect();
        match self.plugin.on_records(records.clone()).await {
            Ok(outcomes) => self.apply(&topics, outcomes),
            // One bad record must not cost its neighbours: retry them one by one, each on a
            // fresh instance if the previous one trapped, to isolate the culprit.
            Err(_) if records.len() > 1 => {
                for (record, topic) in records.into_iter().zip(&topics) {
                    match self.plugin.on_records(vec![record]).await {
                        Ok(outcomes) => self.apply(std::slice::from_ref(topic), outcomes),
                        Err(failure) => self.failed(topic, &failure.to_string()),
                    }
                }
            }
            Err(failure) => self.failed(&topics[0], &failure.to_string()),
        }
    }

    fn apply(&self, topics: &[String], outcomes: Vec<RecordOutcome>) {
        let manifest = &self.plugin.manifest;
        if outcomes.len() != topics.len() {
            let reason = format!(
                "returned {} results for {} records",
                outcomes.len(),
                topics.len()
            );
            topics.iter().for_each(|topic| self.failed(topic, &reason));
            return;
        }
        for (topic, outcome) in topics.iter().zip(outcomes) {
            match outcome {
                Ok(actions) => {
                    self.metrics
                        .counter(
                            metrics::RECORDS,
                            &[("plugin", &manifest.name), ("topic", topic)],
                        )
                        .inc();
                    self.dispatcher.apply(manifest, actions, None);
                }
                Err(reason) => self.failed(topic, &reason),
            }
        }
    }

    fn failed(&self, topic: &str, reason: &str) {
        let plugin = &self.plugin.manifest.name;
        tracing::warn!(plugin = %plugin, topic, "record not processed: {reason}");
        self.metrics
            .counter(
                metrics::RECORDS_FAILED,
                &[("plugin", plugin), ("topic", topic)],
            )
            .inc();
    }
}

fn to_wit(record: BusRecord) -> WitRecord {
    WitRecord {
        topic: record.topic,
        key: record.key,
        payload: record.payload,
        timestamp_ms: record.timestamp_ms,
    }
}
