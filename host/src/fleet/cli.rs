//! `flux-gateway plugin …`: what a domain team (or its CI) runs to ship a plugin to every node
//! on the brokers (`--brokers`), through the topics of `[fleet]`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::node::{NodeStatus, short};
use super::{
    Headers, PublisherKey, Record, Release, Removal, Stage, chunk_headers, chunk_key, chunks,
    unsigned_release, unsigned_removal,
};
use crate::authoring::{self, Language};
use crate::bus::kafka::{BROKER_TIMEOUT, Quiet, client_config, plan_assignment};
use crate::bus::{StartAt, now_ms};
use crate::config::Config;
use crate::plugin::WIT_VERSION;
use crate::plugin::precompiled::content_digest;

#[derive(clap::Subcommand)]
pub enum PluginCommand {
    /// Scaffold a plugin project in DIR (default: ./NAME): builds, tests and loads as it comes.
    New {
        name: String,
        #[arg(long, value_enum, default_value = "rust")]
        lang: Language,
        dir: Option<PathBuf>,
        /// The SDK dependency of a Rust project: a path, or a Cargo spec (`"0.1"`,
        /// `{ git = "…" }`). Default: the SDK of the checkout this binary was built from.
        #[arg(long)]
        sdk: Option<String>,
    },
    /// Load a component in the real runtime with this configuration's limits, validate it
    /// as a hot reload would, and replay sample inputs (JSON lines) through it.
    Check {
        file: PathBuf,
        #[arg(long)]
        records: Option<PathBuf>,
    },
    /// Make a publisher key: its secret goes to FILE (keep it private), its public half is
    /// printed for every node's `[fleet] trusted_keys`.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Validate a component as a node would, then publish it to the fleet topic.
    Publish {
        file: PathBuf,
        #[command(flatten)]
        signing: Signing,
        /// Only this many nodes load it (chosen from the fleet's status); `promote` rolls it
        /// out to the rest.
        #[arg(long)]
        canary: Option<usize>,
        /// Largest record: components are split into chunks of this size.
        #[arg(long, default_value_t = 512 * 1024)]
        chunk_bytes: usize,
    },
    /// Roll the latest release of NAME out to every node; refused if a node rejected it or
    /// rolled it back.
    Promote {
        name: String,
        #[command(flatten)]
        signing: Signing,
    },
    /// Unload NAME on every node.
    Remove {
        name: String,
        #[command(flatten)]
        signing: Signing,
    },
    /// Print what every node runs: node × plugin.
    Status,
}

#[derive(clap::Args)]
pub struct Signing {
    /// The publisher key file made by `plugin keygen`.
    #[arg(long, conflicts_with = "unsigned")]
    key: Option<PathBuf>,
    /// Publish unsigned: only nodes with `[fleet] allow_unsigned = true` (development) load it.
    #[arg(long)]
    unsigned: bool,
}

impl Signing {
    fn key(&self) -> anyhow::Result<Option<PublisherKey>> {
        match (&self.key, self.unsigned) {
            (Some(file), _) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read the key {}", file.display()))?;
                Ok(Some(PublisherKey::from_file_text(&text)?))
            }
            (None, true) => Ok(None),
            (None, false) => {
                bail!("sign with --key FILE (see `plugin keygen`), or pass --unsigned")
            }
        }
    }
}

pub async fn run(command: PluginCommand, config: &Config) -> anyhow::Result<()> {
    match &command {
        PluginCommand::Keygen { out } => return keygen(out),
        PluginCommand::New {
            name,
            lang,
            dir,
            sdk,
        } => {
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from(name));
            return authoring::new_project(name, *lang, &dir, sdk.as_deref());
        }
        PluginCommand::Check { file, records } => {
            return authoring::check(file, records.as_deref(), config).await;
        }
        _ => {}
    }
    anyhow::ensure!(
        config.kafka.enabled(),
        "the fleet lives on Kafka: pass --brokers"
    );
    let fleet = Fleet { config };
    match command {
        PluginCommand::Keygen { .. } | PluginCommand::New { .. } | PluginCommand::Check { .. } => {
            unreachable!("handled above")
        }
        PluginCommand::Publish {
            file,
            signing,
            canary,
            chunk_bytes,
        } => fleet.publish(&file, &signing, canary, chunk_bytes).await,
        PluginCommand::Promote { name, signing } => fleet.promote(&name, &signing).await,
        PluginCommand::Remove { name, signing } => fleet.remove(&name, &signing).await,
        PluginCommand::Status => fleet.print_status().await,
    }
}

fn keygen(out: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = PublisherKey::generate().map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {} (it must not exist)", out.display()))?;
    writeln!(file, "{}", key.to_file_text())?;
    println!("{}", key.public());
    Ok(())
}

/// The latest release of a plugin on the topic, whole.
struct Published {
    release: Release,
    component: Vec<u8>,
}

struct Fleet<'a> {
    config: &'a Config,
}

impl Fleet<'_> {
    async fn publish(
        &self,
        file: &std::path::Path,
        signing: &Signing,
        canary: Option<usize>,
        chunk_bytes: usize,
    ) -> anyhow::Result<()> {
        let key = signing.key()?;
        let component =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let (name, version) = self.validate(component.clone()).await?;
        let digest = content_digest(&component);
        let stage = match canary {
            None => Stage::All,
            Some(count) => Stage::Canary(self.choose_canaries(count, &digest).await?),
        };
        let release = Release {
            plugin: name,
            version,
            wit: WIT_VERSION.to_owned(),
            digest,
            size: component.len() as u64,
            chunks: chunks(&component, chunk_bytes).len() as u32,
            stage,
            published_at_ms: now_ms(),
        };
        let previous = self.published(&release.plugin).await?;
        self.send(&release, key.as_ref(), &component, chunk_bytes)
            .await?;
        if let Some(previous) = previous {
            self.forget_chunks(&previous.release).await?;
        }
        println!(
            "published {} {} ({}, {} bytes in {} record(s)) to {}: stage {}",
            release.plugin,
            release.version,
            short(&release.digest),
            release.size,
            release.chunks,
            self.config.fleet.topic,
            release.stage
        );
        Ok(())
    }

    async fn promote(&self, name: &str, signing: &Signing) -> anyhow::Result<()> {
        let key = signing.key()?;
        let Some(published) = self.published(name).await? else {
            bail!("{name} is not published on {}", self.config.fleet.topic);
        };
        let digest = &published.release.digest;
        anyhow::ensure!(
            content_digest(&published.component) == *digest,
            "the topic holds an incomplete or altered {name} ({}): publish it again",
            short(digest)
        );
        for node in self.statuses().await? {
            let Some(plugin) = node.plugins.iter().find(|p| p.name == name) else {
                continue;
            };
            let about_this = plugin.release.as_ref().is_some_and(|r| &r.digest == digest);
            if about_this
                && ["rejected", "untrusted", "rolled_back"].contains(&plugin.state.as_str())
            {
                bail!(
                    "refusing to promote {name} {} ({}): it was {} on node {}: {}",
                    published.release.version,
                    short(digest),
                    plugin.state.replace('_', " "),
                    node.node,
                    plugin.error.as_deref().unwrap_or("no reason given")
                );
            }
        }
        let release = Release {
            stage: Stage::All,
            published_at_ms: now_ms(),
            ..published.release
        };
        let chunk_bytes = published.component.len().div_ceil(release.chunks as usize);
        self.send(&release, key.as_ref(), &published.component, chunk_bytes)
            .await?;
        println!(
            "promoted {name} {} ({}) to every node",
            release.version,
            short(&release.digest)
        );
        Ok(())
    }

    async fn remove(&self, name: &str, signing: &Signing) -> anyhow::Result<()> {
        let key = signing.key()?;
        let removal = Removal {
            plugin: name.to_owned(),
            removed_at_ms: now_ms(),
        };
        let headers = match &key {
            Some(key) => key.sign_removal(&removal),
            None => unsigned_removal(&removal),
        };
        let previous = self.published(name).await?;
        let producer = self.producer(0)?;
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.config.fleet.topic)
            .partition(0)
            .key(name)
            .headers(owned(&headers));
        producer
            .send(record, BROKER_TIMEOUT)
            .await
            .map_err(|(e, _)| e)?;
        if let Some(previous) = previous {
            self.forget_chunks(&previous.release).await?;
        }
        println!("removed {name} from every node");
        Ok(())
    }

    async fn print_status(&self) -> anyhow::Result<()> {
        let statuses = self.statuses().await?;
        print!("{}", status_table(&statuses, now_ms()));
        Ok(())
    }

    /// Loads the component in the real runtime with this configuration's limits, exactly as a
    /// node would: a component, a compatible WIT, a sane `describe`, the allowlists.
    async fn validate(&self, component: Vec<u8>) -> anyhow::Result<(String, String)> {
        let (runtime, _) = authoring::runtime(self.config)?;
        let handle = tokio::task::spawn_blocking(move || runtime.load(&component))
            .await?
            .context("the component is not a valid plugin")?;
        Ok((
            handle.manifest.name.clone(),
            handle.manifest.version.clone(),
        ))
    }

    /// `count` live nodes, chosen by a hash of their id and the digest: deterministic, and a
    /// different subset for each release.
    async fn choose_canaries(&self, count: usize, digest: &str) -> anyhow::Result<Vec<String>> {
        let fresh_within = 3 * self.config.fleet.status_every_ms;
        let now = now_ms();
        let mut live: Vec<String> = self
            .statuses()
            .await?
            .into_iter()
            .filter(|s| s.caught_up && now.saturating_sub(s.at_ms) <= fresh_within)
            .map(|s| s.node)
            .collect();
        anyhow::ensure!(
            count > 0 && live.len() >= count,
            "a canary of {count} node(s) needs that many live nodes; the status topic shows {}",
            live.len()
        );
        live.sort_by_cached_key(|node| content_digest(format!("{node}/{digest}").as_bytes()));
        live.truncate(count);
        Ok(live)
    }

    /// Produces the release record (with the first chunk) and then the other chunks, all to
    /// partition 0 so that nodes read them in order, and waits until the broker has them.
    async fn send(
        &self,
        release: &Release,
        key: Option<&PublisherKey>,
        component: &[u8],
        chunk_bytes: usize,
    ) -> anyhow::Result<()> {
        let headers = match key {
            Some(key) => key.sign_release(release),
            None => unsigned_release(release),
        };
        let producer = self.producer(chunk_bytes)?;
        let topic = &self.config.fleet.topic;
        let parts = chunks(component, chunk_bytes);
        let mut deliveries = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let (record_key, record_headers) = if index == 0 {
                (release.plugin.clone(), owned(&headers))
            } else {
                let key = chunk_key(&release.plugin, &release.digest, index as u32);
                (key, owned(&chunk_headers()))
            };
            let record = FutureRecord::to(topic)
                .partition(0)
                .key(&record_key)
                .payload(*part)
                .headers(record_headers);
            deliveries.push(producer.send(record, BROKER_TIMEOUT).await);
        }
        for delivery in deliveries {
            delivery.map_err(|(e, _)| e).with_context(|| {
                format!("the broker did not take a record of {}", release.plugin)
            })?;
        }
        Ok(())
    }

    /// Tombstones the chunks (beyond the first) of a release no longer current, so that
    /// compaction can drop them.
    async fn forget_chunks(&self, release: &Release) -> anyhow::Result<()> {
        let producer = self.producer(0)?;
        for index in 1..release.chunks {
            let key = chunk_key(&release.plugin, &release.digest, index);
            let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.config.fleet.topic)
                .partition(0)
                .key(&key);
            producer
                .send(record, BROKER_TIMEOUT)
                .await
                .map_err(|(e, _)| e)?;
        }
        Ok(())
    }

    fn producer(&self, chunk_bytes: usize) -> anyhow::Result<FutureProducer<Quiet>> {
        let max = (chunk_bytes + 64 * 1024).max(1_000_000).to_string();
        Ok(
            client_config(&self.config.kafka, &[("message.max.bytes", &max)])
                .create_with_context(Quiet)?,
        )
    }

    /// The latest release of `name` on the topic (none if removed), with its component as
    /// the topic holds it (not checked against the digest).
    async fn published(&self, name: &str) -> anyhow::Result<Option<Published>> {
        let messages = read_topic(self.config, &self.config.fleet.topic).await?;
        let mut latest: Option<Published> = None;
        for message in &messages {
            let key = std::str::from_utf8(message.key().unwrap_or_default()).unwrap_or_default();
            let headers = Headers::of(message);
            match Record::parse(key, message.payload(), &headers) {
                Ok(Record::Release {
                    release,
                    first_chunk,
                    ..
                }) if release.plugin == name => {
                    latest = Some(Published {
                        release,
                        component: first_chunk.to_vec(),
                    });
                }
                Ok(Record::Chunk {
                    plugin,
                    digest,
                    bytes,
                    ..
                }) if plugin == name => {
                    if let Some(latest) = &mut latest
                        && latest.release.digest == digest
                    {
                        latest.component.extend_from_slice(bytes);
                    }
                }
                Ok(Record::Removal { removal, .. }) if removal.plugin == name => latest = None,
                _ => {}
            }
        }
        Ok(latest)
    }

    /// The latest status of every node that ever reported.
    async fn statuses(&self) -> anyhow::Result<Vec<NodeStatus>> {
        let messages = read_topic(self.config, &self.config.fleet.status_topic).await?;
        let mut latest = BTreeMap::new();
        for message in messages {
            if let Some(Ok(status)) = message.payload().map(serde_json::from_slice::<NodeStatus>) {
                latest.insert(status.node.clone(), status);
            }
        }
        Ok(latest.into_values().collect())
    }
}

fn owned(headers: &[(&'static str, String)]) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |all, (key, value)| {
            all.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        },
    )
}

/// Every record `topic` holds now, in order.
async fn read_topic(config: &Config, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    let group = format!("flux-cli-{}", uuid::Uuid::new_v4());
    let consumer: Arc<StreamConsumer<Quiet>> = Arc::new(
        client_config(
            &config.kafka,
            &[("group.id", &group), ("enable.auto.commit", "false")],
        )
        .create_with_context(Quiet)?,
    );
    let (probe, topics) = (consumer.clone(), vec![topic.to_owned()]);
    let plan = match tokio::task::spawn_blocking(move || {
        plan_assignment(&probe, &topics, StartAt::Beginning)
    })
    .await?
    {
        Ok(plan) => plan,
        // A topic nobody has created yet holds nothing.
        Err(rdkafka::error::KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
        )) => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {topic}")),
    };
    let mut assignment = TopicPartitionList::new();
    let mut behind = BTreeMap::new();
    for ((topic, partition), (start, high)) in plan {
        assignment.add_partition_offset(&topic, partition, Offset::Offset(start))?;
        if start < high {
            behind.insert(partition, high);
        }
    }
    consumer.assign(&assignment)?;
    let mut messages = Vec::new();
    while !behind.is_empty() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .with_context(|| format!("{topic} stopped answering"))??;
        let (partition, offset) = (message.partition(), message.offset());
        messages.push(message.detach());
        if behind
            .get(&partition)
            .is_some_and(|high| offset + 1 >= *high)
        {
            behind.remove(&partition);
        }
    }
    Ok(messages)
}

/// Node × plugin: what runs, in what state, and what each node made of the latest release.
pub fn status_table(statuses: &[NodeStatus], now_ms: u64) -> String {
    let plugins: std::collections::BTreeSet<&str> = statuses
        .iter()
        .flat_map(|s| s.plugins.iter().map(|p| p.name.as_str()))
        .collect();
    let mut rows = vec![
        ["NODE", "SEEN", "READY"]
            .into_iter()
            .map(str::to_owned)
            .chain(plugins.iter().map(|p| p.to_string()))
            .collect::<Vec<_>>(),
    ];
    let mut notes = Vec::new();
    for status in statuses {
        let mut row = vec![
            status.node.clone(),
            format!("{}s ago", now_ms.saturating_sub(status.at_ms) / 1000),
            if status.caught_up { "yes" } else { "no" }.to_owned(),
        ];
        for plugin in &plugins {
            let cell = match status.plugins.iter().find(|p| p.name == *plugin) {
                None => "-".to_owned(),
                Some(p) => {
                    if let Some(error) = &p.error {
                        notes.push(format!("{} {}: {error}", status.node, p.name));
                    }
                    let running = p.running.as_deref().unwrap_or("-");
                    let source = p.source.as_deref().unwrap_or("");
                    match &p.release {
                        Some(r) if p.running_digest.as_deref() != Some(r.digest.as_str()) => {
                            format!(
                                "{running} {} (release {} {})",
                                p.state,
                                r.version,
                                short(&r.digest)
                            )
                        }
                        _ => format!("{running} {} {source}", p.state)
                            .trim_end()
                            .to_owned(),
                    }
                }
            };
            row.push(cell);
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for note in notes {
        out.push_str(&note);
        out.push('\n');
    }
    out
}
