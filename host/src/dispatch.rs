//! Applying plugin actions: every action is checked against the plugin's manifest, then
//! carried out on the sockets, the cache or the bus.
//!
//! Ordering: a room's live emits and a socket's join-and-hydrate for that room take the same
//! (striped) lock, and both write synchronously into the sockets' ordered queues. So a socket
//! either joins before a live event (and gets it live, after its snapshot) or after it (and
//! gets it as its snapshot): a stale snapshot never arrives after a newer live event.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::{Mutex, MutexGuard};
use serde_json::value::RawValue;
use socketioxide::extract::SocketRef;
use socketioxide::{BroadcastError, SocketError, SocketIo};

use crate::bus::{Bus, BusRecord, PublishError};
use crate::cache::{CacheKey, Entry, Hydration, SnapshotCache};
use crate::delivery::{MustDeliver, must_deliver};
use crate::metrics::{self, Counter, Metrics};
use crate::pattern::NamePattern;
use crate::plugin::bindings::flux::gateway::types::CachePut;
use crate::plugin::{Action, Manifest, PluginHandle};
use crate::telemetry::{InternalEvent, PluginActionRefused};
use crate::throttle::CommandBudget;

const ROOM_GATE_STRIPES: usize = 256;

/// Why an action was not carried out. Logged and counted against the plugin.
#[derive(Debug, thiserror::Error)]
pub enum ActionRefused {
    #[error("room {0:?} is not among the rooms it declared")]
    UndeclaredRoom(String),
    #[error("topic {0:?} is not among the topics it declared")]
    UndeclaredTopic(String),
    #[error("cache key {0:?} matches none of its cache policies")]
    UndeclaredCacheKey(String),
    #[error("{0} is only valid while answering a client request")]
    NeedsSocket(&'static str),
    #[error("{0} payload is not valid JSON")]
    InvalidJson(&'static str),
    #[error("over quota: {0}")]
    Quota(String),
    /// A publish over the plugin's publish rate.
    #[error("publish refused: {0}")]
    PublishQuota(String),
    /// A publish over the requesting socket's command budget: the client's doing, not the
    /// plugin's.
    #[error("the requesting client caused too many commands")]
    ClientCommands,
    /// A join past the socket's room limit: the client's doing too.
    #[error("the requesting client is in too many rooms")]
    ClientRooms,
    #[error("publish to {topic:?} failed: {source}")]
    Publish { topic: String, source: PublishError },
}

impl ActionRefused {
    /// The `kind` label of `flux_plugin_errors_total`.
    fn kind(&self) -> &'static str {
        match self {
            Self::Publish { .. } => "publish",
            Self::Quota(_) | Self::PublishQuota(_) | Self::ClientCommands | Self::ClientRooms => {
                "quota"
            }
            _ => "invalid_action",
        }
    }
}

/// Where the actions being applied come from.
pub enum Origin<'a> {
    /// A live record or a timer: everything applies.
    Live,
    /// A record replayed to rebuild state: only cache actions apply, so clients never get
    /// stale events and services never get repeated commands.
    Replay,
    /// A client request: replies and joins go to its socket.
    Request(&'a mut RequestContext),
}

/// What became of a list of actions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub refused: usize,
    /// A publish failed because the broker is unreachable or its queue is full.
    pub unavailable: bool,
    /// A publish was refused over a quota (the plugin's, or the socket's commands).
    pub throttled: bool,
    /// A join was refused: the socket is in as many rooms as it may be.
    pub too_many_rooms: bool,
}

/// The socket whose request a plugin is answering.
pub struct RequestContext {
    pub socket: SocketRef,
    /// The socket's own command budget, spent by each publish its request causes.
    pub commands: Option<Arc<CommandBudget>>,
    /// Most rooms the socket may be in.
    pub max_rooms: usize,
    /// The first reply's payload: what the client's acknowledgement callback receives.
    pub first_reply: Option<Box<RawValue>>,
}

/// Striped locks that serialise, per room, live emits against join-and-hydrate.
struct RoomGates {
    stripes: Vec<Mutex<()>>,
    hasher: RandomState,
}

impl RoomGates {
    fn new() -> Self {
        Self {
            stripes: (0..ROOM_GATE_STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn lock(&self, room: &str) -> MutexGuard<'_, ()> {
        let stripe = self.hasher.hash_one(room) as usize % self.stripes.len();
        self.stripes[stripe].lock()
    }
}

pub struct Dispatcher {
    io: SocketIo,
    bus: Arc<dyn Bus>,
    cache: Arc<SnapshotCache>,
    metrics: Arc<Metrics>,
    gates: RoomGates,
    room_emits: Counter,
    room_emits_conflated: Counter,
    hydrations: Counter,
    recent_publishes: RecentPublishes,
    /// Per plugin name (so it survives a reload): publishes per second, bursts of one
    /// second's worth.
    publish_budgets: Mutex<HashMap<String, PublishBudget>>,
}

/// Publishes sent within the dedupe window, by topic and dedupe key: a command that many
/// sockets (or nodes' plugins) ask for at once leaves once per window. Bounded in bytes.
struct RecentPublishes(moka::sync::Cache<(String, String), ()>);

/// A publish's hold on its `(topic, key)` for the window; released if it never left.
struct PublishClaim<'a> {
    recent: &'a RecentPublishes,
    seen: (String, String),
}

impl RecentPublishes {
    fn new(window: Duration, max_bytes: u64) -> Self {
        Self(
            moka::sync::Cache::builder()
                .weigher(|(topic, key): &(String, String), ()| {
                    u32::try_from(topic.len() + key.len() + 64).unwrap_or(u32::MAX)
                })
                .max_capacity(max_bytes)
                .time_to_live(window)
                .build(),
        )
    }

    /// Claims `(topic, key)` for this window; `None` if it was claimed within the window.
    fn claim(&self, topic: &str, key: String) -> Option<PublishClaim<'_>> {
        let seen = (topic.to_owned(), key);
        // `or_insert_with` coalesces concurrent callers: exactly one runs it and sees a fresh entry
        // (`or_insert` does not: two concurrent requests could both publish).
        let fresh = self.0.entry(seen.clone()).or_insert_with(|| ()).is_fresh();
        fresh.then_some(PublishClaim { recent: self, seen })
    }
}

impl PublishClaim<'_> {
    fn release(&self) {
        self.recent.0.invalidate(&self.seen);
    }
}

/// A plugin's publish rate, and the limiter that enforces it.
struct PublishBudget {
    rate: NonZeroU32,
    limiter: DefaultDirectRateLimiter,
}

impl PublishBudget {
    fn new(rate: NonZeroU32) -> Self {
        Self {
            rate,
            limiter: RateLimiter::direct(Quota::per_second(rate)),
        }
    }
}

impl Dispatcher {
    pub fn new(
        io: SocketIo,
        bus: Arc<dyn Bus>,
        cache: Arc<SnapshotCache>,
        metrics: Arc<Metrics>,
        dedupe_window: Duration,
        dedupe_max_bytes: u64,
    ) -> Self {
        Self {
            io,
            bus,
            cache,
            room_emits: metrics.room_emits.clone(),
            room_emits_conflated: metrics.room_emits_conflated.clone(),
            hydrations: metrics.hydrations.clone(),
            metrics,
            gates: RoomGates::new(),
            recent_publishes: RecentPublishes::new(dedupe_window, dedupe_max_bytes),
            publish_budgets: Mutex::default(),
        }
    }

    /// Applies `actions` in order. A refused action is logged and counted, and the rest still
    /// apply.
    pub fn apply(
        &self,
        plugin: &PluginHandle,
        mut actions: Vec<Action>,
        mut origin: Origin<'_>,
    ) -> Applied {
        let manifest = &plugin.manifest;
        let limits = &plugin.limits;
        let mut refusals = Vec::new();
        if actions.len() > limits.max_actions {
            refusals.push(ActionRefused::Quota(format!(
                "returned {} actions; its quota is {}",
                actions.len(),
                limits.max_actions
            )));
            actions.truncate(limits.max_actions);
        }
        for action in actions {
            let outcome = match payload_len(&action) {
                Some(len) if len > limits.max_payload_bytes => Err(ActionRefused::Quota(format!(
                    "a {len}-byte payload; its quota is {}",
                    limits.max_payload_bytes
                ))),
                _ => self.apply_one(plugin, action, &mut origin),
            };
            if let Err(why) = outcome {
                refusals.push(why);
            }
        }
        let mut applied = Applied::default();
        for why in refusals {
            applied.refused += 1;
            applied.unavailable |= matches!(
                why,
                ActionRefused::Publish {
                    source: PublishError::Unavailable | PublishError::QueueFull,
                    ..
                }
            );
            applied.throttled |= matches!(
                why,
                ActionRefused::PublishQuota(_) | ActionRefused::ClientCommands
            );
            applied.too_many_rooms |= matches!(why, ActionRefused::ClientRooms);
            match why {
                ActionRefused::ClientCommands => {
                    self.metrics.commands_refused.inc();
                    continue;
                }
                ActionRefused::ClientRooms => {
                    self.metrics.joins_refused.inc();
                    continue;
                }
                _ => {}
            }
            PluginActionRefused {
                plugin: &manifest.name,
                version: &manifest.version,
                why: &why,
                kind: why.kind(),
            }
            .emit(&self.metrics);
        }
        applied
    }

    fn apply_one(
        &self,
        plugin: &PluginHandle,
        action: Action,
        origin: &mut Origin<'_>,
    ) -> Result<(), ActionRefused> {
        let manifest = &plugin.manifest;
        let replay = matches!(origin, Origin::Replay);
        match action {
            Action::Emit(emit) => {
                if !manifest.may_use_room(&emit.room) {
                    return Err(ActionRefused::UndeclaredRoom(emit.room));
                }
                let payload = json(emit.payload, "emit")?;
                if !replay {
                    self.emit_to_room(&emit.room, &emit.event, &payload);
                }
                Ok(())
            }
            Action::Reply(reply) => {
                let Origin::Request(request) = origin else {
                    return Err(ActionRefused::NeedsSocket("reply"));
                };
                let payload = json(reply.payload, "reply")?;
                // A closed or saturated socket is the client's problem, not the plugin's.
                let sent = request.socket.emit(&reply.event, &*payload);
                must_deliver(&request.socket, MustDeliver::Reply, sent);
                request.first_reply.get_or_insert(payload);
                Ok(())
            }
            Action::Join(room) => {
                let Origin::Request(request) = origin else {
                    return Err(ActionRefused::NeedsSocket("join"));
                };
                if !manifest.may_use_room(&room) {
                    return Err(ActionRefused::UndeclaredRoom(room));
                }
                let rooms = request.socket.rooms();
                if !rooms.iter().any(|joined| *joined == room) && rooms.len() >= request.max_rooms {
                    return Err(ActionRefused::ClientRooms);
                }
                self.join_and_hydrate(&request.socket, room);
                Ok(())
            }
            Action::CachePut(put) => {
                let (key, entry) = cache_entry(manifest, put)?;
                let _gate = entry.hydrate.as_ref().map(|h| self.gates.lock(&h.room));
                self.cache.put(key, entry);
                Ok(())
            }
            Action::CacheInvalidate(key) => {
                self.cache.invalidate(&cache_key(manifest, key)?);
                Ok(())
            }
            Action::Publish(publish) => {
                if !manifest.may_publish(&publish.topic) {
                    return Err(ActionRefused::UndeclaredTopic(publish.topic));
                }
                let payload = json(publish.payload, "publish")?;
                if replay {
                    // History already had its commands answered.
                    return Ok(());
                }
                // Deduplicated first: a dropped duplicate spends no publish quota.
                let claim = match publish.dedupe_key {
                    Some(key) => match self.recent_publishes.claim(&publish.topic, key) {
                        Some(claim) => Some(claim),
                        None => {
                            self.metrics
                                .publish_deduplicated
                                .get_or_create(&metrics::topic(&publish.topic))
                                .inc();
                            return Ok(());
                        }
                    },
                    None => None,
                };
                // A command that never left must not block the next attempt.
                let forget = || {
                    if let Some(claim) = &claim {
                        claim.release();
                    }
                };
                if let Origin::Request(request) = origin
                    && let Some(commands) = &request.commands
                    && !commands.spend()
                {
                    forget();
                    return Err(ActionRefused::ClientCommands);
                }
                if !self.publish_allowed(&manifest.name, plugin.limits.publishes_per_sec) {
                    forget();
                    return Err(ActionRefused::PublishQuota(format!(
                        "more than {} publishes per second",
                        plugin.limits.publishes_per_sec
                    )));
                }
                let record = BusRecord::now(
                    &publish.topic,
                    publish.key.as_deref(),
                    payload.get().to_owned(),
                );
                self.bus.publish(record).map_err(|source| {
                    forget();
                    ActionRefused::Publish {
                        topic: publish.topic,
                        source,
                    }
                })
            }
        }
    }

    fn publish_allowed(&self, plugin: &str, rate: u32) -> bool {
        let Some(rate) = NonZeroU32::new(rate) else {
            return true;
        };
        let mut budgets = self.publish_budgets.lock();
        let budget = budgets
            .entry(plugin.to_owned())
            .or_insert_with(|| PublishBudget::new(rate));
        // A reloaded version with another rate gets a fresh budget at that rate.
        if budget.rate != rate {
            *budget = PublishBudget::new(rate);
        }
        budget.limiter.check().is_ok()
    }

    fn emit_to_room(&self, room: &str, event: &str, payload: &RawValue) {
        // `io.to` panics while no namespace is attached; a record must never take its
        // consumer down, so look the namespace up instead.
        let Some(namespace) = self.io.of("/") else {
            return;
        };
        let _gate = self.gates.lock(room);
        // The local adapter broadcasts synchronously: the future is ready on its first poll.
        let sent = namespace
            .to(room.to_owned())
            .emit(event, payload)
            .now_or_never();
        match sent {
            // Sockets whose queue is full (clients that stopped reading) get the event in their
            // latest-wins slot instead: conflated, not queued behind what they have not read.
            Some(Err(BroadcastError::Socket(errors))) => {
                let lagging = errors
                    .iter()
                    .filter(|e| matches!(e, SocketError::InternalChannelFull))
                    .count();
                self.room_emits_conflated.inc_by(lagging as u64);
            }
            Some(Err(e)) => tracing::debug!(room, event, "a room event was not sent: {e}"),
            _ => {}
        }
        self.room_emits.inc();
    }

    /// Takes `socket` out of its rooms matching `patterns` that `plugin` declared, except the
    /// rooms `actions` join (a socket staying in a room never misses its events).
    pub fn leave_rooms(
        &self,
        plugin: &PluginHandle,
        socket: &SocketRef,
        patterns: &[String],
        actions: &[Action],
    ) {
        if patterns.is_empty() {
            return;
        }
        let patterns: Vec<NamePattern> = patterns.iter().map(|p| NamePattern::parse(p)).collect();
        let joining: Vec<&str> = actions
            .iter()
            .filter_map(|action| match action {
                Action::Join(room) => Some(room.as_str()),
                _ => None,
            })
            .collect();
        for room in socket.rooms() {
            if plugin.manifest.may_use_room(&room)
                && patterns.iter().any(|pattern| pattern.matches(&room))
                && !joining.contains(&&*room)
            {
                socket.leave(room);
            }
        }
    }

    /// Joins `socket` to `room` and sends it the room's cached state, atomically with respect
    /// to the room's live emits.
    pub fn join_and_hydrate(&self, socket: &SocketRef, room: String) {
        let _gate = self.gates.lock(&room);
        let state = self.cache.room_state(&room);
        socket.join(room);
        for entry in state {
            if let Some(hydrate) = &entry.hydrate {
                let sent = socket.emit(&hydrate.event, &*entry.payload);
                must_deliver(socket, MustDeliver::Hydration, sent);
                self.hydrations.inc();
            }
        }
    }
}

/// The cache entry a plugin's `cache-put` makes, if its manifest allows it.
pub fn cache_entry(manifest: &Manifest, put: CachePut) -> Result<(CacheKey, Entry), ActionRefused> {
    let ttl = manifest
        .cache_ttl(&put.key)
        .ok_or_else(|| ActionRefused::UndeclaredCacheKey(put.key.clone()))?;
    if let Some(hydrate) = &put.hydrate
        && !manifest.may_use_room(&hydrate.room)
    {
        return Err(ActionRefused::UndeclaredRoom(hydrate.room.clone()));
    }
    let entry = Entry {
        payload: json(put.payload, "cache-put")?,
        ttl,
        hydrate: put.hydrate.map(|h| Hydration {
            room: h.room,
            event: h.event,
        }),
    };
    Ok(((manifest.name.as_str().into(), put.key.into()), entry))
}

/// The cache key a plugin's `cache-invalidate` names, if its manifest declares it.
pub fn cache_key(manifest: &Manifest, key: String) -> Result<CacheKey, ActionRefused> {
    if manifest.cache_ttl(&key).is_none() {
        return Err(ActionRefused::UndeclaredCacheKey(key));
    }
    Ok((manifest.name.as_str().into(), key.into()))
}

/// The size of the payload an action carries, if it carries one.
fn payload_len(action: &Action) -> Option<usize> {
    match action {
        Action::Emit(emit) => Some(emit.payload.len()),
        Action::Reply(reply) => Some(reply.payload.len()),
        Action::CachePut(put) => Some(put.payload.len()),
        Action::Publish(publish) => Some(publish.payload.len()),
        Action::Join(_) | Action::CacheInvalidate(_) => None,
    }
}

fn json(payload: String, what: &'static str) -> Result<Box<RawValue>, ActionRefused> {
    RawValue::from_string(payload).map_err(|_| ActionRefused::InvalidJson(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dedupe_key_publishes_once_per_window_per_topic_and_a_released_claim_frees_it() {
        let recent = RecentPublishes::new(Duration::from_millis(200), 1 << 20);
        let first = recent.claim("weather.fetch", "delhi".into());
        assert!(first.is_some());
        assert!(recent.claim("weather.fetch", "delhi".into()).is_none());
        assert!(
            recent.claim("weather.fetch", "mumbai".into()).is_some(),
            "another key"
        );
        assert!(
            recent.claim("news.fetch", "delhi".into()).is_some(),
            "the same key on another topic"
        );
        // A publish that never left gives its key back at once.
        first.unwrap().release();
        assert!(recent.claim("weather.fetch", "delhi".into()).is_some());
        assert!(recent.claim("weather.fetch", "delhi".into()).is_none());
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            recent.claim("weather.fetch", "delhi".into()).is_some(),
            "the window passed"
        );
    }

    #[test]
    fn of_many_concurrent_claims_of_one_key_exactly_one_wins() {
        for _ in 0..200 {
            let recent = RecentPublishes::new(Duration::from_secs(2), 1 << 20);
            let start = std::sync::Barrier::new(8);
            let wins = std::thread::scope(|scope| {
                let claims: Vec<_> = (0..8)
                    .map(|_| {
                        scope.spawn(|| {
                            start.wait();
                            recent
                                .claim("crypto.refresh", "top-movers".into())
                                .is_some()
                        })
                    })
                    .collect();
                claims
                    .into_iter()
                    .map(|claim| claim.join().unwrap())
                    .filter(|won| *won)
                    .count()
            });
            assert_eq!(wins, 1);
        }
    }
}
