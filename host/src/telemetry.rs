//! Operational events as typed values. Each event's [`InternalEvent::emit`] writes its log
//! line and its metric together, so a site cannot log a failure and forget to count it (or
//! the reverse), and the wording of both lives in one place (vector's `internal_events`).
//!
//! Events that can come in floods (a client that will not read, a plugin failing every
//! record) log through a [`Throttle`]: the counter sees every one, the log a few per second.

use std::fmt::Display;

use crate::logs::Throttle;
use crate::metrics::{
    Counter, Metrics, MissedLabels, PluginErrorLabels, PluginReloadLabels, ReasonLabels,
};

pub trait InternalEvent {
    fn emit(self, metrics: &Metrics);
}

pub struct ClientConnected<'a> {
    pub socket: &'a dyn Display,
    pub transport: &'a dyn std::fmt::Debug,
    pub remote: &'a str,
    pub user_agent: &'a str,
}

impl InternalEvent for ClientConnected<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::info!(
            socket = %self.socket,
            transport = ?self.transport,
            remote = %self.remote,
            user_agent = self.user_agent,
            "client connected"
        );
        metrics.sockets_connected.inc();
    }
}

pub struct ClientDisconnected<'a> {
    pub socket: &'a dyn Display,
    pub reason: &'static str,
}

impl InternalEvent for ClientDisconnected<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::info!(socket = %self.socket, reason = self.reason, "client disconnected");
        metrics.sockets_connected.dec();
        metrics
            .disconnects
            .get_or_create(&ReasonLabels {
                reason: self.reason,
            })
            .inc();
    }
}

/// The gateway disconnecting a socket for what its client did, or failed to do.
pub struct ClientDropped<'a> {
    pub socket: &'a dyn Display,
    pub cause: DropCause,
}

pub enum DropCause {
    /// It kept sending past its event budget.
    Abuse,
    /// Its token expired and no `refreshToken` extended it.
    TokenExpired,
}

impl InternalEvent for ClientDropped<'_> {
    fn emit(self, metrics: &Metrics) {
        let (why, counter) = match self.cause {
            DropCause::Abuse => ("too many events", &metrics.abuse_disconnects),
            DropCause::TokenExpired => (
                "token expired and was not refreshed",
                &metrics.auth_expired_disconnects,
            ),
        };
        tracing::info!(socket = %self.socket, "{why}: disconnecting");
        counter.inc();
    }
}

/// A socket whose queue was full when it had to be sent an ack, a reply, a snapshot or an
/// error: it is disconnected rather than left waiting forever.
pub struct SlowClientDisconnected<'a> {
    pub socket: &'a dyn Display,
    pub missed: &'static str,
}

impl InternalEvent for SlowClientDisconnected<'_> {
    fn emit(self, metrics: &Metrics) {
        static LOG: Throttle = Throttle::new();
        if let Some(held_back) = LOG.admit("slow client") {
            tracing::info!(socket = %self.socket, missed = self.missed, held_back, "a client that does not read could not take a packet it must get: disconnecting");
        }
        metrics
            .slow_client_disconnects
            .get_or_create(&MissedLabels {
                missed: self.missed,
            })
            .inc();
    }
}

/// Kafka's delivery report for a record it could not deliver.
pub struct PublishUndelivered<'a> {
    pub topic: &'a str,
    pub error: &'a dyn Display,
}

impl InternalEvent for PublishUndelivered<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::warn!(
            topic = self.topic,
            "kafka: a published record was not delivered: {}",
            self.error
        );
        metrics
            .bus_publish_failed
            .get_or_create(&crate::metrics::topic(self.topic))
            .inc();
    }
}

pub struct JwksFetched<'a> {
    pub url: &'a str,
    /// The number of keys fetched, or why the fetch failed.
    pub outcome: Result<usize, &'a dyn Display>,
}

impl InternalEvent for JwksFetched<'_> {
    fn emit(self, metrics: &Metrics) {
        let outcome = match self.outcome {
            Ok(keys) => {
                tracing::info!(url = self.url, keys, "JWKS fetched");
                "ok"
            }
            Err(e) => {
                tracing::warn!(
                    url = self.url,
                    "JWKS fetch failed; keeping the known keys: {e}"
                );
                "error"
            }
        };
        metrics
            .jwks_fetches
            .get_or_create(&crate::metrics::OutcomeLabels { outcome })
            .inc();
    }
}

pub struct PrecompiledRefused<'a> {
    pub why: &'a dyn Display,
}

impl InternalEvent for PrecompiledRefused<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::warn!(
            "not loading a precompiled plugin, compiling instead: {}",
            self.why
        );
        metrics.precompiled_refused.inc();
    }
}

/// An action a plugin returned that the host would not apply.
pub struct PluginActionRefused<'a> {
    pub plugin: &'a str,
    pub version: &'a str,
    pub why: &'a dyn Display,
    /// The `kind` label of `flux_plugin_errors_total`.
    pub kind: &'static str,
}

impl InternalEvent for PluginActionRefused<'_> {
    fn emit(self, metrics: &Metrics) {
        static LOG: Throttle = Throttle::new();
        if let Some(held_back) = LOG.admit(self.plugin) {
            tracing::warn!(
                plugin = self.plugin,
                version = self.version,
                held_back,
                "action refused: {}",
                self.why
            );
        }
        metrics
            .plugin_errors
            .get_or_create(&PluginErrorLabels {
                plugin: self.plugin.to_owned(),
                kind: self.kind,
            })
            .inc();
    }
}

/// A record no plugin could process. Its counter is resolved by the consumer once per topic:
/// a plugin failing every record must not pay a lookup per record.
pub struct RecordFailed<'a> {
    pub plugin: &'a str,
    pub position: &'a dyn Display,
    pub reason: &'a str,
    pub failed: &'a Counter,
}

impl RecordFailed<'_> {
    pub fn emit(self) {
        static LOG: Throttle = Throttle::new();
        if let Some(held_back) = LOG.admit(self.plugin) {
            tracing::warn!(plugin = self.plugin, position = %self.position, held_back, "record dead-lettered: {}", self.reason);
        }
        self.failed.inc();
    }
}

/// A change of a plugin's live version: `flux_plugin_reloads_total{outcome}` and its log line.
pub enum PluginReload<'a> {
    Added {
        plugin: &'a str,
        source: &'a dyn Display,
        took: std::time::Duration,
    },
    Swapped {
        plugin: &'a str,
        from: &'a str,
        to: &'a str,
        took: std::time::Duration,
    },
    Rejected {
        plugin: Option<&'a str>,
        source: &'a dyn Display,
        why: &'a dyn Display,
    },
    RolledBack {
        plugin: &'a str,
        message: &'a str,
    },
    Unloaded {
        plugin: &'a str,
        source: &'a dyn Display,
    },
}

impl InternalEvent for PluginReload<'_> {
    fn emit(self, metrics: &Metrics) {
        let (plugin, outcome) = match self {
            Self::Added {
                plugin,
                source,
                took,
            } => {
                tracing::info!(plugin, %source, ?took, "plugin loaded");
                (plugin, "loaded")
            }
            Self::Swapped {
                plugin,
                from,
                to,
                took,
            } => {
                tracing::info!(plugin, from, to, ?took, "plugin swapped");
                (plugin, "loaded")
            }
            Self::Rejected {
                plugin,
                source,
                why,
            } => {
                tracing::error!(%source, "plugin rejected: {why}");
                (plugin.unwrap_or("unknown"), "rejected")
            }
            Self::RolledBack { plugin, message } => {
                tracing::error!(plugin, "{message}");
                (plugin, "rolled_back")
            }
            Self::Unloaded { plugin, source } => {
                tracing::info!(plugin, %source, "plugin unloaded");
                (plugin, "unloaded")
            }
        };
        metrics
            .plugin_reloads
            .get_or_create(&PluginReloadLabels {
                plugin: plugin.to_owned(),
                outcome,
            })
            .inc();
    }
}

/// What a node did with a release or removal of the fleet topic.
pub struct FleetRelease<'a> {
    pub plugin: &'a str,
    pub version: Option<&'a str>,
    pub digest: Option<&'a str>,
    /// `loaded`, `rejected`, `untrusted`, `waiting`, `removed`, `stale`.
    pub outcome: &'static str,
    pub reason: Option<&'a str>,
}

impl InternalEvent for FleetRelease<'_> {
    fn emit(self, metrics: &Metrics) {
        let (plugin, version, digest) = (self.plugin, self.version, self.digest);
        match (self.outcome, self.reason) {
            ("loaded" | "waiting" | "removed", _) => {
                tracing::info!(
                    plugin,
                    version,
                    digest,
                    outcome = self.outcome,
                    "fleet release"
                );
            }
            (outcome, reason) => {
                tracing::error!(
                    plugin,
                    version,
                    digest,
                    outcome,
                    reason,
                    "fleet release not loaded"
                );
            }
        }
        metrics
            .fleet_releases
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: self.outcome,
            })
            .inc();
    }
}
