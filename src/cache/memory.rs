//! The in-process verdict cache: the only tier when no Redis is configured, the first tier in
//! front of Redis otherwise. TTL expiry, least-recently-used eviction past `memory_max_entries`
//! (content and resource entries together), one `std::sync::Mutex` held only for map operations.
//!
//! Implemented on `HashMap` + `BTreeMap` rather than a crate such as `lru`: it is a few dozen
//! lines, and keeps the dependency list to what the README justifies.

use super::entry::{CacheEntry, ContentKey};
use super::resource::{ResourceEntry, ResourceKey};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Expired entries removed from the least recently used end on each put, at most: more than the
/// one a put adds, so a backlog (after a quiet spell) clears while the lock stays short.
const EXPIRED_REMOVED_PER_PUT: usize = 4;

/// An in-process, size-bounded, TTL-expiring verdict cache. Cheap to share behind an `Arc`.
///
/// A zero TTL turns it off: nothing is stored, every lookup misses.
pub struct MemoryCache {
    ttl: Duration,
    max_entries: usize,
    inner: Mutex<Lru>,
}

/// The entries and their recency order. `recency` maps each entry's last-use tick to its key, so
/// its first element is the least recently used entry.
#[derive(Default)]
struct Lru {
    slots: HashMap<Key, Slot>,
    recency: BTreeMap<u64, Key>,
    clock: u64,
}

/// Content and resource entries share one map, so `max_entries` bounds them together.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Content(ContentKey),
    Resource(ResourceKey),
}

#[derive(Clone)]
enum Value {
    Content(CacheEntry),
    Resource(ResourceEntry),
}

struct Slot {
    value: Value,
    /// `None` when `now + ttl` does not fit in an `Instant`: the entry then never expires.
    expires_at: Option<Instant>,
    last_used: u64,
}

impl MemoryCache {
    /// A cache holding at most `max_entries` entries (at least one), each for `ttl`.
    pub fn new(max_entries: usize, ttl: Duration) -> Self {
        MemoryCache { ttl, max_entries: max_entries.max(1), inner: Mutex::new(Lru::default()) }
    }

    /// The entry stored under `key`, if any and not expired. A hit makes it most recently used.
    pub fn get(&self, key: &ContentKey) -> Option<CacheEntry> {
        match self.get_at(&Key::Content(*key), Instant::now())? {
            Value::Content(entry) => Some(entry),
            Value::Resource(_) => None,
        }
    }

    /// Stores `entry` under `key` for the configured TTL, replacing any previous entry and
    /// evicting the least recently used entries beyond the size bound.
    pub fn put(&self, key: &ContentKey, entry: &CacheEntry) {
        self.put_at(Key::Content(*key), Value::Content(entry.clone()), Instant::now())
    }

    /// [`MemoryCache::put`] for at most `ttl` (never longer than the configured TTL; a zero
    /// `ttl` stores nothing): for entries that must not live as long as the others.
    pub fn put_for(&self, key: &ContentKey, entry: &CacheEntry, ttl: Duration) {
        self.put_until(Key::Content(*key), Value::Content(entry.clone()), Instant::now(), ttl.min(self.ttl))
    }

    /// The resource entry stored under `key`, like [`MemoryCache::get`].
    pub fn get_resource(&self, key: &ResourceKey) -> Option<ResourceEntry> {
        match self.get_at(&Key::Resource(*key), Instant::now())? {
            Value::Resource(entry) => Some(entry),
            Value::Content(_) => None,
        }
    }

    /// Stores a resource entry, like [`MemoryCache::put`].
    pub fn put_resource(&self, key: &ResourceKey, entry: &ResourceEntry) {
        self.put_at(Key::Resource(*key), Value::Resource(entry.clone()), Instant::now())
    }

    /// Removes the resource entry under `key`, if any.
    pub fn remove_resource(&self, key: &ResourceKey) {
        let mut lru = self.lock();
        if let Some(slot) = lru.slots.remove(&Key::Resource(*key)) {
            lru.recency.remove(&slot.last_used);
        }
    }

    /// How long an entry is kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The most entries held at once.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Entries currently held, including expired ones not yet removed.
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get_at(&self, key: &Key, now: Instant) -> Option<Value> {
        let mut lru = self.lock();
        let lru = &mut *lru;
        let slot = lru.slots.get_mut(key)?;
        if slot.expires_at.is_some_and(|at| at <= now) {
            let last_used = slot.last_used;
            lru.slots.remove(key);
            lru.recency.remove(&last_used);
            return None;
        }
        lru.clock += 1;
        lru.recency.remove(&slot.last_used);
        slot.last_used = lru.clock;
        lru.recency.insert(lru.clock, *key);
        Some(slot.value.clone())
    }

    /// `value` is cloned by the caller, so that the lock covers map operations only.
    fn put_at(&self, key: Key, value: Value, now: Instant) {
        self.put_until(key, value, now, self.ttl)
    }

    fn put_until(&self, key: Key, value: Value, now: Instant, ttl: Duration) {
        if ttl.is_zero() {
            // A replaced entry must not outlive its replacement's refusal.
            self.remove(&key);
            return;
        }
        let expires_at = now.checked_add(ttl);
        let mut lru = self.lock();
        lru.clock += 1;
        let tick = lru.clock;
        let slot = Slot { value, expires_at, last_used: tick };
        if let Some(previous) = lru.slots.insert(key, slot) {
            lru.recency.remove(&previous.last_used);
        }
        lru.recency.insert(tick, key);
        // With Redis behind it the TTL is short and most entries are never read again: left to
        // the size bound, up to `max_entries` dead entries would stay in memory.
        for _ in 0..EXPIRED_REMOVED_PER_PUT {
            let Some((&oldest_tick, &oldest)) = lru.recency.first_key_value() else { break };
            let expired = lru.slots.get(&oldest).and_then(|slot| slot.expires_at).is_some_and(|at| at <= now);
            if !expired {
                break;
            }
            lru.recency.remove(&oldest_tick);
            lru.slots.remove(&oldest);
        }
        while lru.slots.len() > self.max_entries {
            let Some((_, oldest)) = lru.recency.pop_first() else { break };
            lru.slots.remove(&oldest);
        }
    }

    fn remove(&self, key: &Key) {
        let mut lru = self.lock();
        if let Some(slot) = lru.slots.remove(key) {
            lru.recency.remove(&slot.last_used);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lru> {
        match self.inner.lock() {
            Ok(guard) => guard,
            // A panic while the lock was held may have left the map and the order out of step.
            // A cache can always start empty, so do that rather than trust them.
            Err(poisoned) => {
                let mut guard = poisoned.into_inner();
                *guard = Lru::default();
                self.inner.clear_poison();
                guard
            }
        }
    }
}

impl fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCache")
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CachedVerdict;

    const TTL: Duration = Duration::from_secs(60);

    fn entry(n: u64) -> CacheEntry {
        CacheEntry {
            verdict: CachedVerdict::Clean,
            engine_version: "1.4.6".to_string(),
            database_version: Some(27000),
            signature_epoch: 0,
            scanned_at_unix_secs: n,
        }
    }

    fn key(n: u8) -> ContentKey {
        ContentKey::of(&[n])
    }

    fn put_at(cache: &MemoryCache, key: ContentKey, entry: CacheEntry, now: Instant) {
        cache.put_at(Key::Content(key), Value::Content(entry), now);
    }

    fn get_at(cache: &MemoryCache, key: ContentKey, now: Instant) -> Option<CacheEntry> {
        match cache.get_at(&Key::Content(key), now)? {
            Value::Content(entry) => Some(entry),
            Value::Resource(_) => panic!("a resource entry under a content key"),
        }
    }

    fn rkey(host: &str, path: &str) -> ResourceKey {
        crate::cache::ResourceId::new("http", host, 80, path).key()
    }

    fn resource(n: u8) -> ResourceEntry {
        ResourceEntry {
            validator: format!("etag:\"{n}\""),
            vary: crate::cache::VaryRecord::none(),
            content: key(n),
            entry: entry(u64::from(n)),
        }
    }

    #[test]
    fn stores_and_returns_entries() {
        let cache = MemoryCache::new(10, TTL);
        assert!(cache.is_empty());
        assert_eq!(cache.get(&key(1)), None);
        cache.put(&key(1), &entry(1));
        assert_eq!(cache.get(&key(1)), Some(entry(1)));
        assert_eq!(cache.get(&key(2)), None);
        cache.put(&key(1), &entry(2));
        assert_eq!(cache.get(&key(1)), Some(entry(2)));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = MemoryCache::new(10, TTL);
        let t0 = Instant::now();
        put_at(&cache, key(1), entry(1), t0);
        assert_eq!(get_at(&cache, key(1), t0 + TTL - Duration::from_millis(1)), Some(entry(1)));
        assert_eq!(get_at(&cache, key(1), t0 + TTL), None);
        // The expired entry is gone, not merely hidden.
        assert_eq!(cache.len(), 0);
        assert_eq!(get_at(&cache, key(1), t0), None);
    }

    #[test]
    fn puts_remove_expired_entries_without_waiting_for_the_size_bound() {
        let cache = MemoryCache::new(1000, TTL);
        let t0 = Instant::now();
        for n in 0..100u8 {
            put_at(&cache, key(n), entry(u64::from(n)), t0);
        }
        assert_eq!(cache.len(), 100);
        // Later puts, after the first hundred expired, take them away a few at a time.
        for n in 100..110u8 {
            put_at(&cache, key(n), entry(u64::from(n)), t0 + TTL);
        }
        assert_eq!(cache.len(), 100 - 10 * EXPIRED_REMOVED_PER_PUT + 10);
        for n in 110..125u8 {
            put_at(&cache, key(n), entry(u64::from(n)), t0 + TTL);
        }
        assert_eq!(cache.len(), 25, "only the live entries are left");
        // A live entry at the old end stops the sweep: nothing live is removed.
        assert!(get_at(&cache, key(100), t0 + TTL).is_some());
    }

    #[test]
    fn a_new_put_restarts_the_ttl_and_a_get_does_not() {
        let cache = MemoryCache::new(10, TTL);
        let t0 = Instant::now();
        put_at(&cache, key(1), entry(1), t0);
        assert!(get_at(&cache, key(1), t0 + TTL / 2).is_some());
        assert_eq!(get_at(&cache, key(1), t0 + TTL), None, "a hit must not extend the TTL");
        put_at(&cache, key(2), entry(2), t0);
        put_at(&cache, key(2), entry(3), t0 + TTL / 2);
        assert_eq!(get_at(&cache, key(2), t0 + TTL), Some(entry(3)));
    }

    #[test]
    fn holds_at_most_max_entries_evicting_the_oldest() {
        let cache = MemoryCache::new(3, TTL);
        for n in 1..=5 {
            cache.put(&key(n), &entry(u64::from(n)));
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&key(1)), None);
        assert_eq!(cache.get(&key(2)), None);
        for n in 3..=5 {
            assert_eq!(cache.get(&key(n)), Some(entry(u64::from(n))));
        }
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let cache = MemoryCache::new(2, TTL);
        cache.put(&key(1), &entry(1));
        cache.put(&key(2), &entry(2));
        assert!(cache.get(&key(1)).is_some()); // 2 is now the least recently used
        cache.put(&key(3), &entry(3));
        assert_eq!(cache.get(&key(2)), None);
        assert_eq!(cache.get(&key(1)), Some(entry(1)));
        assert_eq!(cache.get(&key(3)), Some(entry(3)));
    }

    #[test]
    fn replacing_an_entry_does_not_count_twice() {
        let cache = MemoryCache::new(2, TTL);
        cache.put(&key(1), &entry(1));
        cache.put(&key(2), &entry(2));
        cache.put(&key(2), &entry(3));
        cache.put(&key(2), &entry(4));
        assert_eq!(cache.get(&key(1)), Some(entry(1)));
        assert_eq!(cache.get(&key(2)), Some(entry(4)));
    }

    #[test]
    fn a_huge_ttl_does_not_overflow() {
        let cache = MemoryCache::new(2, Duration::MAX);
        cache.put(&key(1), &entry(1));
        assert_eq!(cache.get(&key(1)), Some(entry(1)));
    }

    #[test]
    fn resource_entries_live_beside_content_entries() {
        let cache = MemoryCache::new(10, TTL);
        let resource_key = rkey("example.org", "/a");
        assert_eq!(cache.get_resource(&resource_key), None);
        cache.put_resource(&resource_key, &resource(1));
        cache.put(&key(1), &entry(7));
        assert_eq!(cache.get_resource(&resource_key), Some(resource(1)));
        assert_eq!(cache.get(&key(1)), Some(entry(7)));
        assert_eq!(cache.get_resource(&rkey("example.org", "/b")), None);
        cache.put_resource(&resource_key, &resource(2));
        assert_eq!(cache.get_resource(&resource_key), Some(resource(2)));
        assert_eq!(cache.len(), 2);
        cache.remove_resource(&resource_key);
        cache.remove_resource(&rkey("example.org", "/b"));
        assert_eq!(cache.get_resource(&resource_key), None, "removed");
        assert_eq!((cache.get(&key(1)), cache.len()), (Some(entry(7)), 1), "content entries stay");
    }

    #[test]
    fn resource_and_content_entries_share_the_bound() {
        let cache = MemoryCache::new(2, TTL);
        cache.put(&key(1), &entry(1));
        cache.put_resource(&rkey("h", "/1"), &resource(1));
        cache.put_resource(&rkey("h", "/2"), &resource(2));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&key(1)), None, "the oldest entry, of either kind, is evicted");
        assert_eq!(cache.get_resource(&rkey("h", "/2")), Some(resource(2)));
    }

    #[test]
    fn resource_entries_expire_too() {
        let cache = MemoryCache::new(10, TTL);
        let t0 = Instant::now();
        let resource_key = rkey("h", "/x");
        cache.put_at(Key::Resource(resource_key), Value::Resource(resource(1)), t0);
        assert!(cache.get_at(&Key::Resource(resource_key), t0 + TTL - Duration::from_millis(1)).is_some());
        assert!(cache.get_at(&Key::Resource(resource_key), t0 + TTL).is_none());
    }

    #[test]
    fn put_for_keeps_an_entry_the_shorter_of_its_ttl_and_the_cache_ttl() {
        let cache = MemoryCache::new(10, TTL);
        let t0 = Instant::now();
        let short = Duration::from_secs(5);
        cache.put_until(Key::Content(key(1)), Value::Content(entry(1)), t0, short);
        assert_eq!(get_at(&cache, key(1), t0 + short - Duration::from_millis(1)), Some(entry(1)));
        assert_eq!(get_at(&cache, key(1), t0 + short), None);
        // Longer than the cache's TTL: capped.
        cache.put_for(&key(2), &entry(2), Duration::MAX);
        assert!(cache.get(&key(2)).is_some());
        assert_eq!(get_at(&cache, key(2), Instant::now() + TTL), None);
        // Zero: nothing stored, and what was there is gone.
        cache.put_for(&key(2), &entry(3), Duration::ZERO);
        assert_eq!(cache.get(&key(2)), None);
    }

    #[test]
    fn a_zero_ttl_stores_nothing() {
        let cache = MemoryCache::new(10, Duration::ZERO);
        cache.put(&key(1), &entry(1));
        cache.put_resource(&rkey("h", "/x"), &resource(1));
        assert!(cache.is_empty());
        assert_eq!(cache.get(&key(1)), None);
    }
}
