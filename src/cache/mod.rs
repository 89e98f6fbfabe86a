//! The verdict cache: remembers `Clean` and `Infected` verdicts by content and by resource, in
//! process and in Redis, and lends instances a Redis lock so that one of them scans an object
//! while the others wait.
//!
//! # What is cached
//! `Clean` and `Infected` verdicts, for `cache.ttl_secs`, and briefly (`cache.unscanned_ttl_secs`,
//! content keys only) `Unscanned` verdicts whose reason depends only on the bytes
//! ([`BRIEFLY_CACHED_REASONS`]: a decompression bomb replayed costs one decode, not one per request).
//! Each entry records the engine and signature-database versions and the signature epoch that
//! produced it ([`CacheEntry`]). Two kinds of key:
//! - the SHA-256 of the body as received, or for an encoded body a key derived from it and the
//!   encoding list (`scanner::encoded_content_key`) ([`ContentKey`]);
//! - a resource, scheme + host + port + path and query ([`ResourceId`], [`ResourceKey`]), whose
//!   [`ResourceEntry`] also holds the caller's validator (ETag, Last-Modified...), the request
//!   headers the response varied on ([`VaryRecord`]) and the content key of the body scanned.
//!
//! Deciding whether a `Clean` entry from an older database or signature epoch, or a resource entry
//! with another validator, is still good enough is the scanner's job, not the cache's. A resource
//! entry never holds `Unscanned` ([`VerdictCache::put_resource`] drops one).
//!
//! # Authenticated values
//! With `cache.hmac_key_file`, every value written to Redis carries an HMAC-SHA256 tag over the
//! value and its Redis key, and a value read without a valid tag is refused
//! ([`CacheError::Rejected`], a miss): see [`seal`]. The memory tier holds only what
//! this process wrote or verified.
//!
//! # Tiers
//! [`VerdictCache::from_config`] builds:
//! - without Redis: the in-process [`MemoryCache`] alone, entries kept `cache.ttl_secs`;
//! - with Redis (`cache.redis_url`, or `cache.redis_cluster_urls` for a Redis Cluster): the
//!   [`MemoryCache`] in front of [`RedisCache`]. The memory tier keeps entries
//!   `min(cache.memory_ttl_secs, cache.ttl_secs)` (0 turns it off), bounded by
//!   `cache.memory_max_entries`. A lookup asks memory first and Redis on a miss; a Redis hit fills
//!   the memory tier; a write goes to both. So another instance's newer verdict for the same key
//!   is seen within `memory_ttl_secs` at worst.
//!
//! [`VerdictCache::lookup`] and [`VerdictCache::lookup_resource`] report which tier answered
//! ([`Hit`], [`Tier`]).
//!
//! # Errors are misses
//! Calls return [`CacheError`] when Redis is unreachable, slow (each call is bounded by
//! `cache.redis_timeout_ms`) or holds a value this build cannot read. A lookup returns the error
//! only when the memory tier missed too; a write has already reached the memory tier when it
//! reports a Redis error. The caller counts the error as a miss and scans; a cache error never
//! becomes a verdict. Startup never waits for Redis, and the cache resumes by itself when Redis
//! comes back (`src/cache/redis.rs` says how).
//!
//! # Locks: one scan per object across instances
//! [`VerdictCache::try_lock`] takes a lock named after the object (`SET key token NX PX ttl`) so
//! that only one instance scans it; the others poll [`VerdictCache::lookup`] and
//! [`VerdictCache::lock_held`] until the verdict appears or the lock is gone. The holder releases
//! it with [`VerdictCache::unlock`], which deletes it only if it still holds the holder's token.
//! A holder that dies leaves the lock to expire after its TTL (`cache.lock_ttl_ms`); the waiters
//! then find it gone without a verdict and scan themselves. Without Redis there is no shared lock:
//! [`LockAttempt::Local`] tells the caller that its in-process single-flight is all there is.
//!
//! # Redis key format
//! ```text
//! {key_prefix}v1:content:{sha256 hex of the body}
//! {key_prefix}v2:resource:{sha256 hex of the resource identity, see ResourceKey}
//! {key_prefix}v1:lock:{object}
//! clamgate:v1:content:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
//! ```
//! `key_prefix` is `cache.key_prefix` (default `clamgate:`); hex digests are 64 lowercase digits;
//! `object` is the caller's name for what is being scanned (e.g. `content:{sha256 hex}`). `v1` is
//! the version of the key scheme (`v2` for resource keys, which gained scheme, port and Vary). Every operation touches a single key, so the layout works
//! unchanged on Redis Cluster. Entries are written with `SET key value EX cache.ttl_secs`; a lock's
//! value is a random token (32 hex digits).
//!
//! # Value format
//! JSON with a version field, produced and read only by pure functions:
//! [`encode_entry`]/[`decode_entry`] for content entries,
//! [`encode_resource`]/[`decode_resource`] for resource entries:
//! ```text
//! {"v":2,"verdict":"clean","engine_version":"1.4.6","database_version":27000,"signature_epoch":0,"scanned_at_unix_secs":1767225600}
//! {"v":2,"verdict":"infected","signature":"Eicar-Test-Signature","engine_version":"1.4.6","database_version":27000,"signature_epoch":0,"scanned_at_unix_secs":1767225600}
//! {"v":2,"verdict":"unscanned","reason":"limits_exceeded","engine_version":"1.4.6","database_version":27000,"signature_epoch":0,"scanned_at_unix_secs":1767225600}
//! {"v":2,"validator":"etag:\"abc\"","vary":[],"vary_sha256":"e3b0...b855","sha256":"ba78...15ad","verdict":"clean","engine_version":"1.4.6","database_version":27000,"signature_epoch":0,"scanned_at_unix_secs":1767225600}
//! ```
//! `database_version` may be `null`. This build writes `"v":2` (with `signature_epoch`, and
//! `"verdict":"unscanned","reason":...` entries) and still reads `"v":1` (as epoch 0). A value with
//! another `v`, an unknown field or any other defect fails to decode ([`CacheError::Decode`]), so
//! during a rolling upgrade an older instance treats a newer instance's entries as misses instead
//! of misreading them. With HMAC keys the value is prefixed `hmac-sha256:<tag>:`.

mod entry;
mod memory;
mod redis;
pub(crate) mod redis_url;
mod resource;
pub mod seal;

pub use self::entry::{
    decode_entry, encode_entry, CacheEntry, CachedVerdict, ContentKey, DecodeError, BRIEFLY_CACHED_REASONS,
    ENTRY_FORMAT_VERSION,
};
pub use self::memory::MemoryCache;
pub use self::redis::RedisCache;
pub use self::redis_url::RedisUrl;
pub use self::resource::{
    decode_resource, encode_resource, strong_etag, validator_of, vary_names, KnownResource, Resource,
    ResourceEntry, ResourceId, ResourceKey, ResourceVersion, VaryRecord, IMMUTABLE_VALIDATOR,
    RESOURCE_FORMAT_VERSION,
};
pub use self::seal::{Rejection, ValueKey, ValueKeys};

use crate::config::CacheConfig;
use sha2::{Digest, Sha256};
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Why a cache call failed. Every variant means "treat as a miss".
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache settings cannot work (bad Redis URL, zero TTL...). Reported at startup only.
    #[error("invalid cache configuration: {0}")]
    InvalidConfig(String),
    /// Redis failed the call: connection refused or dropped, TLS, authentication, or an error reply.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// Redis did not answer within `cache.redis_timeout_ms`.
    #[error("redis did not answer within cache.redis_timeout_ms")]
    Timeout,
    /// Redis failed recently and the back-off delay has not passed: the call was not attempted.
    #[error("redis unavailable; backing off before the next attempt")]
    Unavailable,
    /// The stored value is not an entry this build can read (garbage, or a newer format).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// HMAC keys are configured and the value read from Redis does not carry a valid tag: forged,
    /// tampered with, or written by an instance without the key. `key` is `content` or `resource`.
    #[error("{key} value refused: {reason}")]
    Rejected { key: &'static str, reason: Rejection },
}

impl CacheError {
    /// A metric label with a bounded set of values: `invalid_config`, `redis`, `timeout`,
    /// `unavailable`, `decode`, `rejected`.
    pub fn label(&self) -> &'static str {
        match self {
            CacheError::InvalidConfig(_) => "invalid_config",
            CacheError::Redis(_) => "redis",
            CacheError::Timeout => "timeout",
            CacheError::Unavailable => "unavailable",
            CacheError::Decode(_) => "decode",
            CacheError::Rejected { .. } => "rejected",
        }
    }

    /// Whether the error means Redis could not be used at all (down, unreachable, too slow,
    /// refusing the credentials), as opposed to an answer clamgate could not use.
    pub fn is_unavailability(&self) -> bool {
        match self {
            CacheError::Timeout | CacheError::Unavailable => true,
            CacheError::Redis(err) => self::redis::is_connection_failure(err),
            CacheError::InvalidConfig(_) | CacheError::Decode(_) | CacheError::Rejected { .. } => false,
        }
    }
}

/// The tier that answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// This process's memory.
    Memory,
    /// Redis (standalone or cluster): written by this instance or another.
    Redis,
}

impl Tier {
    /// `memory` or `redis`, for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Redis => "redis",
        }
    }
}

/// A value found in the cache, and the tier it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit<T> {
    /// What was found.
    pub value: T,
    /// Where it was found.
    pub tier: Tier,
}

/// The outcome of [`VerdictCache::try_lock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockAttempt {
    /// This caller holds the lock until it calls [`VerdictCache::unlock`] with the token, or the
    /// TTL passes.
    Acquired(LockToken),
    /// Another caller (normally another instance) holds it: wait for its verdict.
    HeldElsewhere,
    /// There is no shared cache, hence no shared lock: the caller's in-process single-flight is
    /// all there is.
    Local,
}

/// Proof of holding a lock: the random value stored in it. Only [`VerdictCache::try_lock`] makes
/// one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockToken(String);

impl LockToken {
    /// A token unique across processes and calls: 128 bits of SHA-256 over two SipHash values keyed
    /// by the standard library from the OS's random source, a process-wide counter, the process id
    /// and the time. Uniqueness is what matters; the token guards against mistakes, not attackers
    /// (anyone who can write to Redis can delete any lock).
    fn random() -> LockToken {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut digest = Sha256::new();
        for _ in 0..2 {
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u64(count);
            digest.update(hasher.finish().to_le_bytes());
        }
        digest.update(count.to_le_bytes());
        digest.update(std::process::id().to_le_bytes());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        digest.update(now.as_nanos().to_le_bytes());
        LockToken(hex::encode(&digest.finalize()[..16]))
    }

    /// The token as stored in Redis: 32 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The verdict cache: an in-process tier, and Redis behind it when one is configured.
#[derive(Debug)]
pub struct VerdictCache {
    memory: MemoryCache,
    redis: Option<RedisCache>,
    /// `cache.signature_epoch`: stamped into every entry this instance writes.
    signature_epoch: u64,
    /// `cache.unscanned_ttl_secs`: how long an `Unscanned` entry lives (zero: never stored, never
    /// used).
    unscanned_ttl: Duration,
}

impl VerdictCache {
    /// The memory tier alone when neither `cfg.redis_url` nor `cfg.redis_cluster_urls` is set,
    /// both tiers otherwise. Invalid settings are an error, listing every problem; an unreachable
    /// Redis is not (nothing is contacted here, and no Tokio runtime is needed).
    pub fn from_config(cfg: &CacheConfig) -> Result<VerdictCache, CacheError> {
        let shared = cfg.redis_url.is_some() || !cfg.redis_cluster_urls.is_empty();
        let mut problems = Vec::new();
        let redis = if shared {
            match RedisCache::from_config(cfg) {
                Ok(redis) => Some(redis),
                Err(CacheError::InvalidConfig(message)) => {
                    problems.push(message);
                    None
                }
                Err(other) => return Err(other),
            }
        } else {
            if cfg.ttl_secs == 0 {
                problems.push("cache.ttl_secs must be at least 1".to_string());
            }
            None
        };
        if cfg.memory_max_entries == 0 {
            problems.push("cache.memory_max_entries must be at least 1".to_string());
        }
        if !problems.is_empty() {
            return Err(CacheError::InvalidConfig(problems.join("; ")));
        }
        let memory_ttl_secs = if shared { cfg.memory_ttl_secs.min(cfg.ttl_secs) } else { cfg.ttl_secs };
        let memory = MemoryCache::new(cfg.memory_max_entries, Duration::from_secs(memory_ttl_secs));
        Ok(VerdictCache {
            memory,
            redis,
            signature_epoch: cfg.signature_epoch,
            unscanned_ttl: Duration::from_secs(cfg.unscanned_ttl_secs.min(cfg.ttl_secs)),
        })
    }

    /// `cache.signature_epoch`: the epoch this instance stamps into its entries. A `Clean` entry
    /// with a lower one is stale (the scanner's rule).
    pub fn signature_epoch(&self) -> u64 {
        self.signature_epoch
    }

    /// How long an `Unscanned` entry lives; zero when they are off.
    pub fn unscanned_ttl(&self) -> Duration {
        self.unscanned_ttl
    }

    /// An `Unscanned` entry read while they are off (another instance wrote it) is not used.
    fn usable(&self, entry: &CacheEntry) -> bool {
        !entry.verdict.is_unscanned() || !self.unscanned_ttl.is_zero()
    }

    /// How long the memory tier keeps `entry`: its TTL, shorter for an `Unscanned` entry.
    fn memory_ttl_for(&self, entry: &CacheEntry) -> Duration {
        if entry.verdict.is_unscanned() {
            self.memory.ttl().min(self.unscanned_ttl)
        } else {
            self.memory.ttl()
        }
    }

    /// The entry for `key` and the tier that had it; `Ok(None)` is a miss. Memory is asked
    /// first; on a miss there, Redis, whose hit then fills the memory tier. An error (Redis
    /// unreachable, slow, or holding an unreadable value) comes only after a memory miss, and is
    /// a miss for the caller to count.
    pub async fn lookup(&self, key: &ContentKey) -> Result<Option<Hit<CacheEntry>>, CacheError> {
        if let Some(value) = self.memory.get(key) {
            return Ok(Some(Hit { value, tier: Tier::Memory }));
        }
        let Some(redis) = &self.redis else { return Ok(None) };
        let found = redis.get(key).await?.filter(|entry| self.usable(entry));
        if let Some(entry) = &found {
            self.memory.put_for(key, entry, self.memory_ttl_for(entry));
        }
        Ok(found.map(|value| Hit { value, tier: Tier::Redis }))
    }

    /// [`VerdictCache::lookup`] without the tier.
    pub async fn get(&self, key: &ContentKey) -> Result<Option<CacheEntry>, CacheError> {
        Ok(self.lookup(key).await?.map(|hit| hit.value))
    }

    /// Stores `entry` under `key` in both tiers, replacing any previous entry: in memory at once,
    /// then in Redis for `cache.ttl_secs` (`cache.unscanned_ttl_secs` for an `Unscanned` entry,
    /// which is not stored at all when that is 0). An error means Redis did not take it (this
    /// instance still remembers it).
    pub async fn put(&self, key: &ContentKey, entry: &CacheEntry) -> Result<(), CacheError> {
        if !self.usable(entry) {
            return Ok(());
        }
        self.memory.put_for(key, entry, self.memory_ttl_for(entry));
        match &self.redis {
            Some(redis) => redis.put(key, entry).await,
            None => Ok(()),
        }
    }

    /// The resource entry for `key` and the tier that had it, like [`VerdictCache::lookup`].
    pub async fn lookup_resource(&self, key: &ResourceKey) -> Result<Option<Hit<ResourceEntry>>, CacheError> {
        if let Some(value) = self.memory.get_resource(key) {
            return Ok(Some(Hit { value, tier: Tier::Memory }));
        }
        let Some(redis) = &self.redis else { return Ok(None) };
        let found = redis.get_resource(key).await?;
        if let Some(entry) = &found {
            self.memory.put_resource(key, entry);
        }
        Ok(found.map(|value| Hit { value, tier: Tier::Redis }))
    }

    /// Stores a resource entry in both tiers, like [`VerdictCache::put`]. An `Unscanned` verdict
    /// is never stored under a resource key: it is dropped here.
    pub async fn put_resource(&self, key: &ResourceKey, entry: &ResourceEntry) -> Result<(), CacheError> {
        if entry.entry.verdict.is_unscanned() {
            return Ok(());
        }
        self.memory.put_resource(key, entry);
        match &self.redis {
            Some(redis) => redis.put_resource(key, entry).await,
            None => Ok(()),
        }
    }

    /// Removes the resource entry under `key` from both tiers (a verified hit whose bytes did not
    /// match it). An error means Redis did not take the delete: its entry may live on until its
    /// TTL, and another instance's memory tier keeps its copy up to `cache.memory_ttl_secs`.
    pub async fn delete_resource(&self, key: &ResourceKey) -> Result<(), CacheError> {
        self.memory.remove_resource(key);
        match &self.redis {
            Some(redis) => redis.delete_resource(key).await,
            None => Ok(()),
        }
    }

    /// Tries to take the cross-instance lock on `object` for `ttl` (at least 1 ms): `Acquired`
    /// with the token to unlock it, `HeldElsewhere` if another holds it, `Local` without Redis.
    /// An error (Redis away or slow, within `cache.redis_timeout_ms`) means nobody can say: the
    /// caller scans by itself.
    pub async fn try_lock(&self, object: &str, ttl: Duration) -> Result<LockAttempt, CacheError> {
        match &self.redis {
            Some(redis) => redis.try_lock(object, ttl).await,
            None => Ok(LockAttempt::Local),
        }
    }

    /// Releases the lock on `object` if it still holds `token`. A lock that expired, and perhaps
    /// was taken by another caller since, is left alone; that is not an error.
    pub async fn unlock(&self, object: &str, token: &LockToken) -> Result<(), CacheError> {
        match &self.redis {
            Some(redis) => redis.unlock(object, token).await.map(|_released| ()),
            None => Ok(()),
        }
    }

    /// Whether someone holds the lock on `object`: `false` once it was released or expired (its
    /// holder finished or died), and always `false` without Redis.
    pub async fn lock_held(&self, object: &str) -> Result<bool, CacheError> {
        match &self.redis {
            Some(redis) => redis.lock_held(object).await,
            None => Ok(false),
        }
    }

    /// `memory`, `redis` or `redis_cluster`, for metrics, logs and `/status`.
    pub fn kind(&self) -> &'static str {
        match &self.redis {
            None => "memory",
            Some(redis) if redis.is_cluster() => "redis_cluster",
            Some(_) => "redis",
        }
    }

    /// Whether entries and locks are shared with other instances (Redis is configured).
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }
}

/// The Redis key of a content entry: `{key_prefix}v1:content:{sha256 hex}`.
pub(crate) fn content_redis_key(key_prefix: &str, key: &ContentKey) -> String {
    format!("{key_prefix}v1:content:{}", key.hex())
}

/// The Redis key of a resource entry: `{key_prefix}v2:resource:{sha256 hex}` (v1 keys hashed host
/// and path only; they are never read).
pub(crate) fn resource_redis_key(key_prefix: &str, key: &ResourceKey) -> String {
    format!("{key_prefix}v2:resource:{}", key.hex())
}

/// The Redis key of the lock on `object`: `{key_prefix}v1:lock:{object}`.
pub(crate) fn lock_redis_key(key_prefix: &str, object: &str) -> String {
    format!("{key_prefix}v1:lock:{object}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> CacheEntry {
        CacheEntry {
            verdict: CachedVerdict::Infected { signature: "Eicar-Test-Signature".to_string() },
            engine_version: "1.4.6".to_string(),
            database_version: Some(27000),
            signature_epoch: 0,
            scanned_at_unix_secs: 1_767_225_600,
        }
    }

    fn unscanned() -> CacheEntry {
        CacheEntry {
            verdict: CachedVerdict::Unscanned { reason: crate::verdict::UnscannedReason::LimitsExceeded },
            ..entry()
        }
    }

    fn resource() -> ResourceEntry {
        ResourceEntry {
            validator: "etag:\"v1\"".to_string(),
            vary: VaryRecord::none(),
            content: ContentKey::of(b"abc"),
            entry: entry(),
        }
    }

    /// Port 1 on loopback: nothing listens there.
    fn unreachable(timeout_ms: u64) -> CacheConfig {
        CacheConfig {
            redis_url: Some("redis://127.0.0.1:1/".parse().expect("a Redis URL")),
            redis_timeout_ms: timeout_ms,
            ..CacheConfig::default()
        }
    }

    fn invalid_config_message(cfg: &CacheConfig) -> String {
        match VerdictCache::from_config(cfg) {
            Err(CacheError::InvalidConfig(message)) => message,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn redis_key_format() {
        let key = ContentKey::of(b"abc");
        assert_eq!(
            content_redis_key("clamgate:", &key),
            "clamgate:v1:content:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            content_redis_key("", &key),
            "v1:content:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(CacheConfig::default().key_prefix, "clamgate:");
    }

    #[test]
    fn resource_and_lock_key_formats() {
        // printf 'clamgate-resource-v2\nhttps\nexample.org\n443\n/a?b=1' | sha256sum
        let key = ResourceId::new("https", "example.org", 443, "/a?b=1").key();
        assert_eq!(
            resource_redis_key("clamgate:", &key),
            "clamgate:v2:resource:83da673cd5487561aa378b6b0436afb9c6a8848e3ee630974720df90c671d334"
        );
        assert_eq!(lock_redis_key("clamgate:", "content:ab12"), "clamgate:v1:lock:content:ab12");
    }

    #[test]
    fn picks_memory_without_a_redis_url() {
        let cache = VerdictCache::from_config(&CacheConfig::default());
        assert_eq!(cache.as_ref().map(|c| c.kind()).ok(), Some("memory"));
        assert_eq!(cache.as_ref().map(|c| c.is_shared()).ok(), Some(false));
        assert_eq!(cache.as_ref().ok().and_then(|c| c.redis.as_ref().map(RedisCache::endpoint)), None);
    }

    #[test]
    fn picks_redis_with_a_url_without_contacting_it() {
        // Nothing listens on port 1; construction must not care, nor need Tokio.
        let cache = VerdictCache::from_config(&unreachable(250));
        assert_eq!(cache.as_ref().map(|c| c.kind()).ok(), Some("redis"));
        assert_eq!(cache.as_ref().map(|c| c.is_shared()).ok(), Some(true));
        assert_eq!(
            cache.as_ref().ok().and_then(|c| c.redis.as_ref().map(RedisCache::endpoint)),
            Some("redis://127.0.0.1:1/0")
        );
    }

    #[test]
    fn picks_redis_cluster_with_cluster_urls_without_contacting_them() {
        let cfg = CacheConfig {
            redis_cluster_urls: vec![
                "redis://127.0.0.1:1".parse().expect("a Redis URL"),
                "redis://127.0.0.1:2".parse().expect("a Redis URL"),
            ],
            redis_password: Some("s3cret-pw".to_string()),
            ..CacheConfig::default()
        };
        let cache = VerdictCache::from_config(&cfg);
        assert_eq!(cache.as_ref().map(|c| c.kind()).ok(), Some("redis_cluster"));
        assert_eq!(cache.as_ref().map(|c| c.is_shared()).ok(), Some(true));
        assert_eq!(
            cache.as_ref().ok().and_then(|c| c.redis.as_ref().map(RedisCache::endpoint)),
            Some("redis://127.0.0.1:1/0,redis://127.0.0.1:2/0")
        );
        let debug = format!("{cache:?}");
        assert!(debug.contains("cluster"), "{debug}");
        assert!(!debug.contains("s3cret"), "{debug}");
    }

    #[test]
    fn credentials_never_show_in_debug_or_endpoint() {
        let cfg = CacheConfig {
            redis_url: Some("redis://urluser:url-pw-1@10.0.0.7:6380/2".parse().expect("a Redis URL")),
            redis_username: Some("clamgate".to_string()),
            redis_password: Some("cfg-pw-2".to_string()),
            ..CacheConfig::default()
        };
        let cache = VerdictCache::from_config(&cfg);
        let debug = format!("{cache:?}");
        assert!(debug.contains("redis://10.0.0.7:6380/2"), "{debug}");
        for secret in ["url-pw-1", "cfg-pw-2", "urluser"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }

    #[test]
    fn the_memory_tier_keeps_entries_the_shorter_of_its_ttl_and_the_cache_ttl() {
        let alone = CacheConfig { ttl_secs: 60, memory_ttl_secs: 5, ..CacheConfig::default() };
        let ttl = |cfg: &CacheConfig| VerdictCache::from_config(cfg).map(|c| c.memory.ttl()).ok();
        assert_eq!(ttl(&alone), Some(Duration::from_secs(60)), "without Redis, entries live ttl_secs");
        let tiered = CacheConfig { ttl_secs: 60, memory_ttl_secs: 5, ..unreachable(250) };
        assert_eq!(ttl(&tiered), Some(Duration::from_secs(5)));
        let short = CacheConfig { ttl_secs: 3, memory_ttl_secs: 5, ..unreachable(250) };
        assert_eq!(ttl(&short), Some(Duration::from_secs(3)));
        let off = CacheConfig { memory_ttl_secs: 0, ..unreachable(250) };
        assert_eq!(ttl(&off), Some(Duration::ZERO));
        let bounded = CacheConfig { memory_max_entries: 7, ..unreachable(250) };
        assert_eq!(VerdictCache::from_config(&bounded).map(|c| c.memory.max_entries()).ok(), Some(7));
    }

    #[test]
    fn rejects_invalid_settings() {
        let zero_ttl = CacheConfig { ttl_secs: 0, ..CacheConfig::default() };
        assert!(matches!(VerdictCache::from_config(&zero_ttl), Err(CacheError::InvalidConfig(_))));
        let zero_entries = CacheConfig { memory_max_entries: 0, ..CacheConfig::default() };
        assert!(matches!(VerdictCache::from_config(&zero_entries), Err(CacheError::InvalidConfig(_))));
    }

    #[test]
    fn reports_every_redis_problem_at_once() {
        let cfg = CacheConfig {
            ttl_secs: 0,
            redis_pool_size: 0,
            memory_max_entries: 0,
            redis_tls_ca_file: Some("/nonexistent/clamgate-ca.pem".to_string()),
            hmac_previous_key_file: Some("/nonexistent/clamgate-hmac.key".to_string()),
            ..unreachable(0)
        };
        let message = invalid_config_message(&cfg);
        for key in [
            "cache.ttl_secs",
            "cache.redis_timeout_ms",
            "cache.redis_pool_size",
            "cache.memory_max_entries",
            "cache.redis_tls_ca_file",
            "cache.hmac_previous_key_file: cannot read",
            "cache.hmac_previous_key_file: set without cache.hmac_key_file",
        ] {
            assert!(message.contains(key), "{key} missing from {message}");
        }
    }

    #[test]
    fn rejects_contradicting_redis_settings() {
        let both = CacheConfig {
            redis_cluster_urls: vec!["redis://127.0.0.1:2".parse().expect("a Redis URL")],
            ..unreachable(250)
        };
        assert!(invalid_config_message(&both).contains("not both"));

        let ca = tempfile_with(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
        let ca_path = ca.to_string_lossy().to_string();
        let ca_without_tls = CacheConfig { redis_tls_ca_file: Some(ca_path.clone()), ..unreachable(250) };
        assert!(invalid_config_message(&ca_without_tls).contains("not rediss://"));
        let cluster_ca_without_tls = CacheConfig {
            redis_cluster_urls: vec!["redis://127.0.0.1:2".parse().expect("a Redis URL")],
            redis_tls_ca_file: Some(ca_path),
            ..CacheConfig::default()
        };
        assert!(invalid_config_message(&cluster_ca_without_tls).contains("not rediss://"));

        let not_pem = tempfile_with(b"hello");
        let garbage_ca = CacheConfig {
            redis_url: Some("rediss://127.0.0.1:1/".parse().expect("a Redis URL")),
            redis_tls_ca_file: Some(not_pem.to_string_lossy().to_string()),
            ..CacheConfig::default()
        };
        assert!(invalid_config_message(&garbage_ca).contains("no PEM certificate"));

        let mixed = CacheConfig {
            redis_cluster_urls: vec![
                "redis://127.0.0.1:2".parse().expect("a Redis URL"),
                "rediss://127.0.0.1:3".parse().expect("a Redis URL"),
            ],
            ..CacheConfig::default()
        };
        assert!(invalid_config_message(&mixed).contains("mixes"));
        let unix = CacheConfig {
            redis_cluster_urls: vec!["redis+unix:///run/redis.sock".parse().expect("a Redis URL")],
            ..CacheConfig::default()
        };
        assert!(invalid_config_message(&unix).contains("unix socket"));
        let bad_seed = CacheConfig {
            redis_cluster_urls: vec![
                "redis://127.0.0.1:2".parse().expect("a Redis URL"),
                "redis://r1:7000/3".parse().expect("a Redis URL"),
            ],
            ..CacheConfig::default()
        };
        assert!(invalid_config_message(&bad_seed).contains("cache.redis_cluster_urls[1]: names database 3"));
        let user_without_password =
            CacheConfig { redis_username: Some("clamgate".to_string()), ..unreachable(250) };
        assert!(invalid_config_message(&user_without_password).contains("no password"));
        std::fs::remove_file(ca).ok();
        std::fs::remove_file(not_pem).ok();
    }

    /// A file with `contents` in the temp dir (unit tests have no `tempfile`).
    fn tempfile_with(contents: &[u8]) -> std::path::PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "clamgate-cache-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).expect("write a temp file");
        path
    }

    #[tokio::test]
    async fn memory_cache_round_trips_through_the_enum() {
        let cache = VerdictCache::from_config(&CacheConfig::default()).ok();
        let Some(cache) = cache else { panic!("memory cache") };
        let key = ContentKey::of(b"payload");
        assert_eq!(cache.get(&key).await.ok(), Some(None));
        assert!(cache.put(&key, &entry()).await.is_ok());
        assert_eq!(cache.get(&key).await.ok(), Some(Some(entry())));
        assert_eq!(cache.get(&ContentKey::of(b"other")).await.ok(), Some(None));
        let hit = cache.lookup(&key).await.ok().flatten();
        assert_eq!(hit, Some(Hit { value: entry(), tier: Tier::Memory }));
    }

    #[tokio::test]
    async fn unscanned_entries_live_unscanned_ttl_secs_and_never_under_resource_keys() {
        let cfg = CacheConfig { unscanned_ttl_secs: 7, signature_epoch: 4, ..CacheConfig::default() };
        let Ok(cache) = VerdictCache::from_config(&cfg) else { panic!("memory cache") };
        assert_eq!((cache.unscanned_ttl(), cache.signature_epoch()), (Duration::from_secs(7), 4));
        let key = ContentKey::of(b"bomb");
        assert!(cache.put(&key, &unscanned()).await.is_ok());
        assert_eq!(cache.get(&key).await.ok(), Some(Some(unscanned())));

        let resource_key = ResourceId::new("http", "example.org", 80, "/bomb.gz").key();
        let resource = ResourceEntry { entry: unscanned(), ..resource() };
        assert!(cache.put_resource(&resource_key, &resource).await.is_ok());
        assert_eq!(cache.lookup_resource(&resource_key).await.ok(), Some(None), "dropped");

        // Capped by ttl_secs; 0 turns them off: neither stored nor used.
        let short = CacheConfig { ttl_secs: 3, unscanned_ttl_secs: 300, ..CacheConfig::default() };
        assert_eq!(
            VerdictCache::from_config(&short).map(|c| c.unscanned_ttl()).ok(),
            Some(Duration::from_secs(3))
        );
        let off = CacheConfig { unscanned_ttl_secs: 0, ..CacheConfig::default() };
        let Ok(off) = VerdictCache::from_config(&off) else { panic!("memory cache") };
        assert!(off.put(&key, &unscanned()).await.is_ok());
        assert_eq!(off.get(&key).await.ok(), Some(None));
        assert!(off.put(&key, &entry()).await.is_ok());
        assert_eq!(off.get(&key).await.ok(), Some(Some(entry())), "other entries are unaffected");
    }

    #[tokio::test]
    async fn memory_only_resource_entries_and_local_locks() {
        let Ok(cache) = VerdictCache::from_config(&CacheConfig::default()) else { panic!("memory cache") };
        let key = ResourceId::new("http", "example.org", 80, "/file.iso").key();
        assert_eq!(cache.lookup_resource(&key).await.ok(), Some(None));
        assert!(cache.put_resource(&key, &resource()).await.is_ok());
        let hit = cache.lookup_resource(&key).await.ok().flatten();
        assert_eq!(hit, Some(Hit { value: resource(), tier: Tier::Memory }));
        assert!(cache.delete_resource(&key).await.is_ok());
        assert_eq!(cache.lookup_resource(&key).await.ok(), Some(None), "deleted");

        let attempt = cache.try_lock("content:x", Duration::from_secs(30)).await.ok();
        assert_eq!(attempt, Some(LockAttempt::Local));
        assert_eq!(cache.lock_held("content:x").await.ok(), Some(false));
        // A second attempt is Local too: there is nothing shared to hold.
        assert_eq!(cache.try_lock("content:x", Duration::from_secs(30)).await.ok(), Some(LockAttempt::Local));
        assert!(cache.unlock("content:x", &LockToken::random()).await.is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_an_error_not_a_hang() {
        let Ok(cache) = VerdictCache::from_config(&unreachable(200)) else { panic!("from_config") };
        let key = ContentKey::of(b"payload");
        let started = std::time::Instant::now();
        let got = cache.get(&key).await;
        assert!(got.as_ref().is_err_and(CacheError::is_unavailability), "{got:?}");
        // The next call normally falls inside the back-off delay and is refused without touching
        // the network; either way it must fail as unavailable.
        let put = cache.put(&key, &entry()).await;
        assert!(put.as_ref().is_err_and(CacheError::is_unavailability), "{put:?}");
        let lock = cache.try_lock("content:x", Duration::from_secs(1)).await;
        assert!(lock.as_ref().is_err_and(CacheError::is_unavailability), "{lock:?}");
        let held = cache.lock_held("content:x").await;
        assert!(held.as_ref().is_err_and(CacheError::is_unavailability), "{held:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn the_memory_tier_answers_while_redis_is_unreachable() {
        let Ok(cache) = VerdictCache::from_config(&unreachable(200)) else { panic!("from_config") };
        let key = ContentKey::of(b"payload");
        // The write reaches memory and reports that Redis did not take it.
        let put = cache.put(&key, &entry()).await;
        assert!(put.as_ref().is_err_and(CacheError::is_unavailability), "{put:?}");
        let hit = cache.lookup(&key).await;
        assert_eq!(hit.ok().flatten(), Some(Hit { value: entry(), tier: Tier::Memory }));
        let resource_key = ResourceId::new("http", "example.org", 80, "/a").key();
        assert!(cache.put_resource(&resource_key, &resource()).await.is_err());
        let hit = cache.lookup_resource(&resource_key).await;
        assert_eq!(hit.ok().flatten(), Some(Hit { value: resource(), tier: Tier::Memory }));
        // A key memory does not have goes to Redis, and its failure is reported.
        let miss = cache.lookup(&ContentKey::of(b"other")).await;
        assert!(miss.as_ref().is_err_and(CacheError::is_unavailability), "{miss:?}");
    }

    #[test]
    fn lock_tokens_are_32_hex_digits_and_unique() {
        let tokens: std::collections::HashSet<String> =
            (0..1000).map(|_| LockToken::random().as_str().to_string()).collect();
        assert_eq!(tokens.len(), 1000);
        for token in tokens.iter().take(10) {
            assert_eq!(token.len(), 32, "{token}");
            assert!(token.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{token}");
        }
    }

    #[test]
    fn tiers_have_stable_names() {
        assert_eq!([Tier::Memory.as_str(), Tier::Redis.as_str()], ["memory", "redis"]);
    }

    #[test]
    fn error_labels_are_bounded() {
        let labels = [
            CacheError::InvalidConfig(String::new()).label(),
            CacheError::Timeout.label(),
            CacheError::Unavailable.label(),
            CacheError::Decode(DecodeError::UnsupportedVersion(2)).label(),
            CacheError::Rejected { key: "content", reason: Rejection::BadTag }.label(),
        ];
        assert_eq!(labels, ["invalid_config", "timeout", "unavailable", "decode", "rejected"]);
        assert!(!CacheError::Rejected { key: "content", reason: Rejection::MissingTag }.is_unavailability());
        assert!(!CacheError::Decode(DecodeError::UnsupportedVersion(2)).is_unavailability());
    }
}
