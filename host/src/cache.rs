//! The snapshot cache: per-plugin keys with per-entry TTLs (moka), and an index from room to
//! the entries a socket joining that room is hydrated with.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::sync::Cache;
use parking_lot::Mutex;
use serde_json::value::RawValue;

use crate::metrics::Counter;

/// A cache key: the owning plugin and the plugin's own key.
pub type CacheKey = (Arc<str>, Arc<str>);

/// A room and the event its cached state is replayed under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hydration {
    pub room: String,
    pub event: String,
}

#[derive(Debug)]
pub struct Entry {
    pub payload: Box<RawValue>,
    pub ttl: Duration,
    pub hydrate: Option<Hydration>,
}

type RoomIndex = Arc<Mutex<HashMap<String, HashSet<CacheKey>>>>;

pub struct SnapshotCache {
    entries: Cache<CacheKey, Arc<Entry>>,
    rooms: RoomIndex,
}

struct PerEntryTtl;

impl moka::Expiry<CacheKey, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        entry: &Arc<Entry>,
        _: Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
    fn expire_after_update(
        &self,
        _: &CacheKey,
        entry: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// What one entry weighs against the cache's byte bound: its key and payload, plus a fixed
/// allowance for the entry's bookkeeping.
fn weight(key: &CacheKey, entry: &Arc<Entry>) -> u32 {
    const BOOKKEEPING: usize = 128;
    let bytes = key.0.len()
        + key.1.len()
        + entry.payload.get().len()
        + entry
            .hydrate
            .as_ref()
            .map_or(0, |h| h.room.len() + h.event.len())
        + BOOKKEEPING;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl SnapshotCache {
    /// A cache of at most `max_bytes` (keys, payloads and bookkeeping); the least recently
    /// used entries are evicted past it, each counted in `evictions`.
    pub fn new(max_bytes: u64, evictions: Counter) -> Self {
        let rooms = RoomIndex::default();
        let index = rooms.clone();
        // Never called while `rooms` is held: the cache is only touched outside that lock.
        let unindex = move |key: Arc<CacheKey>, entry: Arc<Entry>, cause: RemovalCause| {
            if cause == RemovalCause::Replaced {
                return;
            }
            if cause == RemovalCause::Size {
                evictions.inc();
            }
            if let Some(hydrate) = &entry.hydrate {
                let mut rooms = index.lock();
                if let Some(keys) = rooms.get_mut(&hydrate.room) {
                    keys.remove(&*key);
                    if keys.is_empty() {
                        rooms.remove(&hydrate.room);
                    }
                }
            }
        };
        Self {
            entries: Cache::builder()
                .weigher(weight)
                .max_capacity(max_bytes)
                .expire_after(PerEntryTtl)
                .eviction_listener(unindex)
                .support_invalidation_closures()
                .build(),
            rooms,
        }
    }

    pub fn put(&self, key: CacheKey, entry: Entry) {
        if let Some(hydrate) = &entry.hydrate {
            self.rooms
                .lock()
                .entry(hydrate.room.clone())
                .or_default()
                .insert(key.clone());
        }
        self.entries.insert(key, Arc::new(entry));
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.entries.get(key)
    }

    pub fn invalidate(&self, key: &CacheKey) {
        self.entries.invalidate(key);
    }

    /// Drops every entry of `plugin` (when it is unloaded).
    pub fn invalidate_plugin(&self, plugin: &str) {
        let plugin: Arc<str> = plugin.into();
        // Fails only without `support_invalidation_closures`, which `new` enables.
        let _ = self
            .entries
            .invalidate_entries_if(move |(owner, _), _| *owner == plugin);
    }

    /// The live entries a socket joining `room` is hydrated with.
    pub fn room_state(&self, room: &str) -> Vec<Arc<Entry>> {
        let keys: Vec<CacheKey> = match self.rooms.lock().get(room) {
            Some(keys) => keys.iter().cloned().collect(),
            None => return Vec::new(),
        };
        keys.iter()
            .filter_map(|key| self.entries.get(key))
            .filter(|entry| entry.hydrate.as_ref().is_some_and(|h| h.room == room))
            .collect()
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(plugin: &str, key: &str) -> CacheKey {
        (plugin.into(), key.into())
    }

    fn entry(payload: &str, ttl_ms: u64, room: Option<&str>) -> Entry {
        Entry {
            payload: RawValue::from_string(payload.to_owned()).unwrap(),
            ttl: Duration::from_millis(ttl_ms),
            hydrate: room.map(|room| Hydration {
                room: room.into(),
                event: format!("{room}.update"),
            }),
        }
    }

    #[test]
    fn memory_is_bounded_by_bytes_and_evictions_are_counted() {
        let evictions = Counter::default();
        let cache = SnapshotCache::new(64 * 1024, evictions.clone());
        let payload = format!("\"{}\"", "x".repeat(1_000));
        for i in 0..1_000 {
            cache.put(
                key("w", &format!("city-{i}")),
                entry(&payload, 60_000, Some(&format!("weather.city-{i}"))),
            );
        }
        cache.entries.run_pending_tasks();
        assert!(
            cache.entries.weighted_size() <= 64 * 1024,
            "{} bytes",
            cache.entries.weighted_size()
        );
        assert!(evictions.get() >= 900, "{} evictions", evictions.get());
        assert!(
            cache.rooms.lock().len() <= 100,
            "the room index follows evictions"
        );
    }

    #[test]
    fn keys_are_scoped_by_plugin() {
        let cache = SnapshotCache::new(1 << 20, Counter::default());
        cache.put(key("crypto", "k"), entry("1", 60_000, None));
        assert!(cache.get(&key("crypto", "k")).is_some());
        assert!(cache.get(&key("news", "k")).is_none());
    }

    #[test]
    fn room_state_follows_puts_and_expiry() {
        let cache = SnapshotCache::new(1 << 20, Counter::default());
        cache.put(
            key("w", "delhi"),
            entry("{\"t\":1}", 60_000, Some("weather.delhi")),
        );
        cache.put(
            key("w", "mumbai"),
            entry("{\"t\":2}", 30, Some("weather.mumbai")),
        );
        let delhi = cache.room_state("weather.delhi");
        assert_eq!(delhi.len(), 1);
        assert_eq!(delhi[0].payload.get(), "{\"t\":1}");
        assert_eq!(cache.room_state("weather.mumbai").len(), 1);
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.room_state("weather.mumbai").is_empty(), "expired");
        assert!(cache.room_state("weather.pune").is_empty());
    }

    #[test]
    fn replacing_keeps_the_newest_and_invalidate_plugin_clears() {
        let cache = SnapshotCache::new(1 << 20, Counter::default());
        cache.put(
            key("c", "movers"),
            entry("1", 60_000, Some("crypto.global")),
        );
        cache.put(
            key("c", "movers"),
            entry("2", 60_000, Some("crypto.global")),
        );
        let state = cache.room_state("crypto.global");
        assert_eq!(state.len(), 1);
        assert_eq!(state[0].payload.get(), "2");
        cache.invalidate_plugin("c");
        assert!(cache.room_state("crypto.global").is_empty());
    }
}
