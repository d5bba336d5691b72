//! Reads and writes Kafka records for the end-to-end tests, through librdkafka like the
//! gateway itself.
//!
//! - `kafka-probe produce BROKERS TOPIC KEY PAYLOAD`: one record (`-` as KEY for none).
//! - `kafka-probe dump BROKERS TOPIC`: every record now on the topic, one JSON line each:
//!   `{"partition", "offset", "key", "payload", "headers"}`.
//! - `kafka-probe tamper BROKERS TOPIC KEY`: the last record with KEY produced again with the
//!   same key and headers and one byte of its value flipped (a tampered plugin release).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["produce", brokers, topic, key, payload] => produce(brokers, topic, key, payload),
        ["dump", brokers, topic] => dump(brokers, topic, None),
        ["tamper", brokers, topic, key] => dump(brokers, topic, Some(key)),
        _ => Err(
            "usage: kafka-probe produce BROKERS TOPIC KEY PAYLOAD | dump BROKERS TOPIC \
             | tamper BROKERS TOPIC KEY"
                .into(),
        ),
    }
}

fn produce(
    brokers: &str,
    topic: &str,
    key: &str,
    payload: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let mut record = BaseRecord::to(topic).payload(payload);
    if key != "-" {
        record = record.key(key);
    }
    producer.send(record).map_err(|(e, _)| e)?;
    producer.flush(TIMEOUT)?;
    Ok(())
}

/// Prints every record on `topic`, or with `tamper`, produces the last one with that key again
/// with a byte of its value flipped.
fn dump(
    brokers: &str,
    topic: &str,
    tamper: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "kafka-probe")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = BTreeMap::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, partition.id(), TIMEOUT)?;
        if high > low {
            assignment.add_partition_offset(topic, partition.id(), Offset::Offset(low))?;
            remaining.insert(partition.id(), high);
        }
    }
    consumer.assign(&assignment)?;
    let mut last_with_key = None;
    while !remaining.is_empty() {
        let message = consumer
            .poll(TIMEOUT)
            .ok_or("timed out reading the topic")??;
        let headers: BTreeMap<String, String> = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let line = serde_json::json!({
            "partition": message.partition(),
            "offset": message.offset(),
            "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            "payload": String::from_utf8_lossy(message.payload().unwrap_or_default()),
            "headers": headers,
        });
        if tamper.is_some() && message.key() == tamper.map(str::as_bytes) {
            last_with_key = Some(message.detach());
        } else if tamper.is_none() {
            println!("{line}");
        }
        if remaining
            .get(&message.partition())
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            remaining.remove(&message.partition());
        }
    }
    if let Some(original) = last_with_key {
        let mut value = original.payload().unwrap_or_default().to_vec();
        let middle = value.len() / 2;
        *value.get_mut(middle).ok_or("the record has no value")? ^= 0x5a;
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()?;
        let mut record = BaseRecord::to(topic)
            .partition(original.partition())
            .key(original.key().unwrap_or_default())
            .payload(&value);
        if let Some(headers) = original.headers() {
            record = record.headers(headers.clone());
        }
        producer.send(record).map_err(|(e, _)| e)?;
        producer.flush(TIMEOUT)?;
    } else if let Some(key) = tamper {
        return Err(format!("no record with key {key} on {topic}").into());
    }
    Ok(())
}
