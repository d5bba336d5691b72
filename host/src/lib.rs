//! Flux Gateway: a Socket.IO backend-for-frontend whose domains are WebAssembly plugins.
//!
//! Browsers keep one Socket.IO connection; domain services speak only to the bus (Kafka in
//! production). Each domain — weather, crypto, news, stocks — is a component built against
//! `wit/flux-gateway.wit` that maps bus records and client requests to declarative actions
//! (emit to a room, reply, join, cache, publish), which the host validates and applies.
//!
//! # Layout
//! - [`config`]: TOML configuration with environment overrides; unknown keys rejected.
//! - [`bus`]: the bus seam (records as Kafka carries them), the embedded bus and the Kafka bus.
//! - [`plugin`]: the WIT bindings, manifests, and the wasmtime runtime with per-call limits.
//! - [`pipeline`]: bus records and timers into plugins, in order and in batches.
//! - [`dispatch`]: validating and applying plugin actions; room emits and hydration ordering.
//! - [`cache`]: the snapshot cache (per-entry TTL) and the room index used for hydration.
//! - [`gateway`]: Socket.IO connections, `getUserId`, and client-event routing.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`, `/admin/plugins`.
//! - [`metrics`]: the Prometheus registry and metric names.
//! - [`sim`]: simulated upstream services for the demo run (off by default).

pub mod bus;
pub mod cache;
pub mod config;
pub mod dispatch;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod sim;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::bus::{Bus, EmbeddedBus, KafkaBus, StartAt};
use crate::cache::SnapshotCache;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::gateway::{Gateway, Registry, Rejected};
use crate::metrics::Metrics;
use crate::pipeline::PipelineConfig;
use crate::plugin::{PluginHandle, PluginRuntime};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start the plugin runtime: {0}")]
    Runtime(String),
    #[error("cannot read the plugin directory {dir}: {source}")]
    PluginDir { dir: String, source: std::io::Error },
    #[error("cannot create the Kafka bus: {0}")]
    Bus(String),
    #[error("server error: {0}")]
    Serve(#[from] std::io::Error),
}

/// Serves the gateway on `listener` until `shutdown` completes, then closes every socket.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    let cache = Arc::new(SnapshotCache::new(config.cache.max_entries));
    let runtime = Arc::new(
        PluginRuntime::new(config.limits.clone(), cache.clone(), metrics.clone())
            .map_err(|e| RunError::Runtime(format!("{e:#}")))?,
    );
    let (plugins, rejected) = load_plugins(&runtime, &config.plugin_dir).await?;

    let mut tasks = JoinSet::new();
    let (bus, kafka, start): (Arc<dyn Bus>, _, _) = if config.kafka.enabled() {
        let node_id = config
            .kafka
            .node_id
            .clone()
            .unwrap_or_else(|| default_node_id(listener.local_addr().ok()));
        let kafka = Arc::new(
            KafkaBus::new(&config.kafka, &node_id, metrics.clone())
                .map_err(|e| RunError::Bus(e.to_string()))?,
        );
        let topics = plugins
            .iter()
            .flat_map(|p| p.manifest.consumes.iter().chain(&p.manifest.publishes))
            .cloned()
            .chain([config.dead_letter_topic.clone()])
            .collect::<std::collections::BTreeSet<_>>();
        tasks.spawn(KafkaBus::ensure_topics(
            config.kafka.clone(),
            topics.into_iter().collect(),
        ));
        tracing::info!(node = %node_id, brokers = %config.kafka.brokers, "using the Kafka bus");
        let start = StartAt::Replay(config.kafka.warm_start_records);
        (kafka.clone() as Arc<dyn Bus>, Some(kafka), start)
    } else {
        (
            Arc::new(EmbeddedBus::new(metrics.clone())) as Arc<dyn Bus>,
            None,
            StartAt::Committed,
        )
    };

    let (layer, io) = SocketIo::builder()
        .ping_interval(Duration::from_millis(config.socket.ping_interval_ms))
        .ping_timeout(Duration::from_millis(config.socket.ping_timeout_ms))
        .max_buffer_size(config.socket.max_buffer)
        .max_payload(config.socket.max_payload_bytes)
        .build_layer();
    let dispatcher = Arc::new(Dispatcher::new(
        io.clone(),
        bus.clone(),
        cache,
        metrics.clone(),
        config.dedupe_window(),
    ));

    let pipeline_config = PipelineConfig {
        max_batch: config.limits.max_batch,
        max_record_bytes: config.limits.max_record_bytes,
        dead_letter_topic: config.dead_letter_topic.clone(),
        start,
    };
    for plugin in &plugins {
        pipeline::start(
            plugin.clone(),
            bus.clone(),
            dispatcher.clone(),
            metrics.clone(),
            &pipeline_config,
            &mut tasks,
        );
    }
    if config.demo.enabled {
        sim::start(bus.clone(), &config.demo, &mut tasks);
        tracing::info!("simulated upstream services are running on the gateway's bus");
    }

    let gateway = Arc::new(Gateway {
        registry: Registry::new(plugins, rejected),
        dispatcher,
        metrics,
        bus,
    });
    gateway.attach(&io);
    let app = http::router(gateway).layer(layer);

    let closing = io.clone();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: closing client connections");
        closing.close().await;
    })
    .await?;
    tasks.shutdown().await;
    if let Some(kafka) = kafka {
        kafka.flush(Duration::from_secs(5));
    }
    drop(runtime);
    Ok(())
}

/// `{hostname}-{port}`: unique per node, stable across restarts of the same node.
fn default_node_id(address: Option<SocketAddr>) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    match address {
        Some(address) => format!("{host}-{}", address.port()),
        None => host,
    }
}

/// Loads every `*.wasm` in `dir` (sorted by name). A file that fails to load is logged and
/// reported, and the others still load; so is a second plugin claiming a name already taken.
pub async fn load_plugins(
    runtime: &Arc<PluginRuntime>,
    dir: &Path,
) -> Result<(Vec<PluginHandle>, Vec<Rejected>), RunError> {
    let entries = std::fs::read_dir(dir).map_err(|source| RunError::PluginDir {
        dir: dir.display().to_string(),
        source,
    })?;
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
        .collect();
    files.sort();

    let (mut plugins, mut rejected) = (Vec::<PluginHandle>::new(), Vec::new());
    for file in files {
        let shown = file.display().to_string();
        let loading = runtime.clone();
        let path = file.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path).map_err(|e| format!("cannot read: {e}"))?;
            loading.load(&bytes).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("loader crashed: {e}")));
        let outcome = outcome.and_then(|plugin| {
            match plugins
                .iter()
                .find(|p| p.manifest.name == plugin.manifest.name)
            {
                Some(_) => Err(format!(
                    "a plugin named {:?} is already loaded",
                    plugin.manifest.name
                )),
                None => Ok(plugin),
            }
        });
        match outcome {
            Ok(plugin) => {
                let m = &plugin.manifest;
                tracing::info!(plugin = %m.name, version = %m.version, file = %shown, "plugin loaded");
                plugins.push(plugin);
            }
            Err(reason) => {
                tracing::error!(file = %shown, "plugin rejected: {reason}");
                rejected.push(Rejected {
                    file: shown,
                    reason,
                });
            }
        }
    }
    Ok((plugins, rejected))
}
