//! Flux Gateway: a Socket.IO backend-for-frontend whose domains are WebAssembly plugins.
//!
//! Browsers keep one Socket.IO connection; domain services speak only to the bus (Kafka in
//! production). Each domain — weather, crypto, news, stocks — is a component built against
//! `wit/flux-gateway.wit` that maps bus records and client requests to declarative actions
//! (emit to a room, reply, join, cache, publish), which the host validates and applies.
//!
//! # Layout
//! - [`config`]: TOML configuration with flag and environment overrides; unknown keys
//!   rejected.
//! - [`authoring`]: `plugin new` (a Rust or Python project from the in-repo templates) and
//!   `plugin check` (a component validated and exercised in the real runtime).
//! - [`auth`]: handshake authentication (JWT: HS256, RS256/ES256 PEM keys, JWKS) and principals.
//! - [`origins`]: the browser origin allowlist and CORS.
//! - [`bus`]: the bus seam (records as Kafka carries them), the embedded bus and the Kafka bus.
//! - [`plugin`]: the WIT bindings and manifests; loading ([`plugin::runtime`]), the worker
//!   per version ([`plugin::worker`]), the instance and host imports ([`plugin::instance`]),
//!   each version's circuit and CPU budget ([`plugin::circuit`]), precompiled artifacts.
//! - [`fleet`]: plugins shipped to every node over Kafka — signed releases, canaries,
//!   promotion, removal, the status each node reports, and the `plugin` commands.
//! - [`lifecycle`]: the live plugin set, the one owner of versions: load, canary, hot swap,
//!   unload, roll back.
//! - [`watch`]: the plugin-directory watcher that drives hot reload.
//! - [`pipeline`]: bus records and timers into plugins, in order and in batches.
//! - [`dispatch`]: validating and applying plugin actions; room emits and hydration ordering.
//! - [`cache`]: the snapshot cache (per-entry TTL) and the room index used for hydration.
//! - [`gateway`]: Socket.IO connections, `getUserId`, `refreshToken`, and client-event routing
//!   with per-plugin scopes.
//! - [`delivery`]: what a client must get, and the slow client that cannot take it.
//! - [`http`]: the public probes and demo page; the admin listener's `/metrics` and `/admin/*`.
//! - [`logs`]: rate-limited log lines for what clients and plugins can cause at any rate.
//! - [`pattern`]: names with a trailing `*`, for declared and allowed rooms and topics.
//! - [`metrics`]: the metric families (on `prometheus-client`) and their typed label sets.
//! - [`telemetry`]: operational events as typed values, each emitting its log line and metric.
//! - [`sim`]: simulated upstream services for the demo run (off by default).
//! - [`throttle`]: per-socket event rates and per-address connection caps.

pub mod auth;
pub mod authoring;
pub mod bus;
pub mod cache;
pub mod config;
mod delivery;
pub mod dispatch;
pub mod fleet;
mod gateway;
mod http;
pub mod lifecycle;
mod logs;
pub mod metrics;
mod origins;
mod pattern;
pub mod pipeline;
pub mod plugin;
pub mod sim;
mod telemetry;
mod throttle;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socketioxide::{ParserConfig, SocketIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::auth::Authenticator;
use crate::config::AuthMode;
use crate::origins::{OriginGuard, OriginPolicy};

use crate::bus::{Bus, EmbeddedBus, KafkaBus, StartAt};
use crate::cache::SnapshotCache;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::fleet::node::FleetNode;
use crate::gateway::Gateway;
use crate::lifecycle::PluginSet;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::plugin::{PluginRuntime, PrecompiledCache};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start the plugin runtime: {0}")]
    Runtime(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot read the plugin directory {dir}: {source}")]
    PluginDir { dir: String, source: std::io::Error },
    #[error("cannot open the precompiled plugin directory {dir}: {source}")]
    Precompiled { dir: String, source: std::io::Error },
    #[error("cannot create the Kafka bus: {0}")]
    Bus(#[from] rdkafka::error::KafkaError),
    #[error("invalid [fleet] configuration: {0}")]
    Fleet(#[from] fleet::TrustError),
    #[error("invalid [auth] configuration: {0}")]
    Auth(#[from] auth::AuthSetupError),
    #[error("server error: {0}")]
    Serve(#[from] std::io::Error),
}

/// Where the gateway serves: the public listener (Socket.IO, probes, demo page) and the
/// private admin listener (`/metrics`, `/admin/*`, probes), if any.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: Option<TcpListener>,
}

/// Serves the gateway on `listeners` until `shutdown` completes, then closes every socket.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let Listeners {
        public: listener,
        admin,
    } = listeners;
    logs::set_interval(Duration::from_millis(config.log_interval_ms));
    let metrics = Arc::new(Metrics::default());
    let auth = Arc::new(Authenticator::new(&config.auth, metrics.clone())?);
    auth.prefetch();
    if config.auth.mode == AuthMode::None
        && listener
            .local_addr()
            .is_ok_and(|address| !address.ip().is_loopback())
    {
        tracing::warn!(
            "listening on a non-loopback address without authentication: anyone who reaches \
             this port can connect and act as any user; set [auth] mode = \"jwt\""
        );
    }
    let cache = Arc::new(SnapshotCache::new(
        config.cache.max_bytes,
        metrics.cache_evictions.clone(),
    ));
    let precompiled_dir = config.precompiled_dir();
    let precompiled = PrecompiledCache::open(
        precompiled_dir.clone(),
        config.reload.precompiled_key.as_ref(),
    )
    .map_err(|source| RunError::Precompiled {
        dir: precompiled_dir.display().to_string(),
        source,
    })?;
    let runtime = Arc::new(
        PluginRuntime::new(
            config.policies(),
            Some(precompiled),
            cache.clone(),
            metrics.clone(),
        )
        .map_err(|e| RunError::Runtime(e.into()))?,
    );

    let mut tasks = JoinSet::new();
    let node_id = config
        .kafka
        .node_id
        .clone()
        .unwrap_or_else(|| default_node_id(listener.local_addr().ok()));
    let (bus, kafka, start): (Arc<dyn Bus>, _, _) = if config.kafka.enabled() {
        let kafka = Arc::new(KafkaBus::new(&config.kafka, &node_id, metrics.clone())?);
        kafka.prepare_topics(vec![config.dead_letter_topic.clone()]);
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

    let max_message = usize::try_from(config.socket.max_payload_bytes).unwrap_or(usize::MAX);
    let (layer, io) = SocketIo::builder()
        .ping_interval(Duration::from_millis(config.socket.ping_interval_ms))
        .ping_timeout(Duration::from_millis(config.socket.ping_timeout_ms))
        .max_buffer_size(config.socket.max_buffer)
        .max_payload(config.socket.max_payload_bytes)
        .ws_max_message_size(max_message)
        .ws_max_frame_size(max_message)
        .with_parser(
            ParserConfig::common()
                .max_incoming_binaries(config.socket.max_binary_attachments)
                .max_incoming_binary_buf_size(max_message)
                .packet_completion_timeout(Duration::from_millis(
                    config.socket.attachment_timeout_ms,
                )),
        )
        .ws_read_buffer_size(config.socket.ws_read_buffer_bytes)
        .build_layer();
    let dispatcher = Arc::new(Dispatcher::new(
        io.clone(),
        bus.clone(),
        cache.clone(),
        metrics.clone(),
        config.dedupe_window(),
        config.cache.dedupe_max_bytes,
    ));

    let pipeline = Pipeline::new(
        bus.clone(),
        dispatcher.clone(),
        metrics.clone(),
        PipelineConfig {
            max_batch: config.limits.max_batch,
            max_record_bytes: config.limits.max_record_bytes,
            dead_letter_topic: config.dead_letter_topic.clone(),
            start,
        },
    );
    let plugins = Arc::new(PluginSet::new(
        runtime,
        pipeline,
        cache,
        metrics.clone(),
        config.circuit.rollback_within(),
    ));
    tasks.spawn(plugins.clone().supervise());
    // The upstream services exist before the gateway: a plugin's first command finds them.
    if config.demo.enabled {
        sim::start(bus.clone(), &config.demo, &mut tasks);
        tracing::info!("simulated upstream services are running on the gateway's bus");
    }
    plugins
        .load_dir(&config.plugin_dir)
        .await
        .map_err(|source| RunError::PluginDir {
            dir: config.plugin_dir.display().to_string(),
            source,
        })?;
    let fleet_caught_up = if config.kafka.enabled() && !config.fleet.topic.is_empty() {
        let node = FleetNode::new(
            &config.fleet,
            &config.kafka,
            &node_id,
            plugins.clone(),
            metrics.clone(),
        )?;
        let caught_up = node.caught_up();
        tasks.spawn(node.run());
        caught_up
    } else {
        tokio::sync::watch::channel(true).1
    };
    if config.reload.watch {
        tasks.spawn(watch::watch_plugins(
            config.plugin_dir.clone(),
            Duration::from_millis(config.reload.debounce_ms),
            plugins.clone(),
        ));
    }

    let required_scopes = config
        .plugins
        .iter()
        .filter_map(|(name, policy)| Some((name.clone(), policy.required_scope.clone()?)))
        .collect();
    let gateway = Arc::new(Gateway {
        plugins: plugins.clone(),
        dispatcher,
        metrics: metrics.clone(),
        bus,
        auth,
        required_scopes,
        address_limits: throttle::AddressLimits::new(&config.socket),
        socket_config: config.socket.clone(),
        fleet_caught_up,
    });
    gateway.attach(&io);
    let origins = OriginPolicy::new(config.socket.allowed_origins.as_deref());
    // Socket.IO wraps the router rather than being layered inside it: the router would first
    // put a copy of the request's URI in its extensions, and a socket keeps those for its
    // whole life — with them the connection's whole read buffer.
    let app = tower::ServiceBuilder::new()
        .layer(origins.cors(config.socket.cors_credentials))
        .layer(axum::middleware::from_fn_with_state(
            OriginGuard::new(origins.clone(), &metrics),
            origins::check_origin,
        ))
        .layer(layer)
        .service(http::public_router(gateway.clone(), config.demo.enabled));

    let (stopping, mut stopped) = tokio::sync::watch::channel(false);
    if let Some(admin) = admin {
        let app = http::admin_router(gateway, config.admin.token.clone());
        tasks.spawn(async move {
            let serving = axum::serve(admin, app).with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            });
            if let Err(e) = serving.await {
                tracing::error!("the admin listener failed: {e}");
            }
        });
    }
    let closing = io.clone();
    axum::serve(
        listener,
        axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
            SocketAddr,
        >(app),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: closing client connections");
        let _ = stopping.send(true);
        closing.close().await;
    })
    .await?;
    tasks.shutdown().await;
    plugins.shutdown().await;
    if let Some(kafka) = kafka {
        kafka.flush(Duration::from_secs(5));
    }
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
