//! The verdict cache: remembers `Clean` and `Infected` verdicts by content, in Redis or in-process.
//!
//! # What is cached
//! Only `Clean` and `Infected` ([`CachedVerdict`] has no other variant), keyed by the SHA-256 of
//! the bytes that were scanned ([`ContentKey`]), with the engine and signature-database versions
//! that produced them ([`CacheEntry`]). Deciding whether a `Clean` entry from an older database is
//! still good enough is the scanner's job, not the cache's.
//!
//! # Backends
//! [`VerdictCache`] is one of two real implementations, chosen by [`VerdictCache::from_config`]:
//! - [`RedisCache`] when `cache.redis_url` is set: shared by every clamgate instance.
//! - [`MemoryCache`] otherwise: per process, TTL-expiring, bounded by `cache.memory_max_entries`.
//!
//! # Errors are misses
//! `get` and `put` return [`CacheError`] when Redis is unreachable, slow (each call is bounded by
//! `cache.redis_timeout_ms`) or holds a value this build cannot read. The caller counts it as a miss
//! and scans; a cache error never becomes a verdict. Startup never waits for Redis, and the cache
//! resumes by itself when Redis comes back (`src/cache/redis.rs` says how).
//!
//! # Redis key format
//! ```text
//! {key_prefix}v1:content:{sha256 hex}
//! clamgate:v1:content:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
//! ```
//! `key_prefix` is `cache.key_prefix` (default `clamgate:`); the hex digest is 64 lowercase digits.
//! `v1` is the version of the key scheme; every operation touches a single key, so the layout
//! works unchanged on Redis Cluster. Written with `SET key value EX cache.ttl_secs`.
//!
//! # Value format
//! JSON with a version field, produced and read only by [`encode_entry`] and [`decode_entry`]:
//! ```text
//! {"v":1,"verdict":"clean","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":1767225600}
//! {"v":1,"verdict":"infected","signature":"Eicar-Test-Signature","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":1767225600}
//! ```
//! `database_version` may be `null`. A value with another `v`, an unknown field or any other
//! defect fails to decode ([`CacheError::Decode`]), so during a rolling upgrade an older instance
//! treats a newer instance's entries as misses instead of misreading them.

mod entry;
mod memory;
mod redis;

pub use self::entry::{
    decode_entry, encode_entry, CacheEntry, CachedVerdict, ContentKey, DecodeError, ENTRY_FORMAT_VERSION,
};
pub use self::memory::MemoryCache;
pub use self::redis::RedisCache;

use crate::config::CacheConfig;
use std::time::Duration;

/// Why a cache call failed. Every variant means "treat as a miss".
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache settings cannot work (bad Redis URL, zero TTL...). Reported at startup only.
    #[error("invalid cache configuration: {0}")]
    InvalidConfig(String),
    /// Redis failed the call: connection refused or dropped, authentication, or an error reply.
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
}

impl CacheError {
    /// A metric label with a bounded set of values: `invalid_config`, `redis`, `timeout`,
    /// `unavailable`, `decode`.
    pub fn label(&self) -> &'static str {
        match self {
            CacheError::InvalidConfig(_) => "invalid_config",
            CacheError::Redis(_) => "redis",
            CacheError::Timeout => "timeout",
            CacheError::Unavailable => "unavailable",
            CacheError::Decode(_) => "decode",
        }
    }

    /// Whether the error means Redis could not be used at all (down, unreachable, too slow), as
    /// opposed to an answer clamgate could not use.
    pub fn is_unavailability(&self) -> bool {
        match self {
            CacheError::Timeout | CacheError::Unavailable => true,
            CacheError::Redis(err) => self::redis::is_connection_failure(err),
            CacheError::InvalidConfig(_) | CacheError::Decode(_) => false,
        }
    }
}

/// The verdict cache: one of its two real implementations.
#[derive(Debug)]
pub enum VerdictCache {
    /// In-process, for a single instance or when no Redis is configured.
    Memory(MemoryCache),
    /// Redis, shared by every instance.
    Redis(RedisCache),
}

impl VerdictCache {
    /// Redis when `cfg.redis_url` is set, in-process otherwise. Invalid settings are an error;
    /// an unreachable Redis is not (nothing is contacted here, and no Tokio runtime is needed).
    pub fn from_config(cfg: &CacheConfig) -> Result<VerdictCache, CacheError> {
        if cfg.redis_url.is_some() {
            return Ok(VerdictCache::Redis(RedisCache::from_config(cfg)?));
        }
        let mut problems = Vec::new();
        if cfg.ttl_secs == 0 {
            problems.push("cache.ttl_secs must be at least 1");
        }
        if cfg.memory_max_entries == 0 {
            problems.push("cache.memory_max_entries must be at least 1");
        }
        if !problems.is_empty() {
            return Err(CacheError::InvalidConfig(problems.join("; ")));
        }
        Ok(VerdictCache::Memory(MemoryCache::new(cfg.memory_max_entries, Duration::from_secs(cfg.ttl_secs))))
    }

    /// The entry for `key`; `Ok(None)` is a miss. Errors are misses too, for the caller to count.
    pub async fn get(&self, key: &ContentKey) -> Result<Option<CacheEntry>, CacheError> {
        match self {
            VerdictCache::Memory(cache) => Ok(cache.get(key)),
            VerdictCache::Redis(cache) => cache.get(key).await,
        }
    }

    /// Stores `entry` under `key` for `cache.ttl_secs`, replacing any previous entry.
    pub async fn put(&self, key: &ContentKey, entry: &CacheEntry) -> Result<(), CacheError> {
        match self {
            VerdictCache::Memory(cache) => {
                cache.put(key, entry);
                Ok(())
            }
            VerdictCache::Redis(cache) => cache.put(key, entry).await,
        }
    }

    /// `memory` or `redis`, for metrics, logs and `/status`.
    pub fn kind(&self) -> &'static str {
        match self {
            VerdictCache::Memory(_) => "memory",
            VerdictCache::Redis(_) => "redis",
        }
    }
}

/// The Redis key of a content entry: `{key_prefix}v1:content:{sha256 hex}`.
pub(crate) fn content_redis_key(key_prefix: &str, key: &ContentKey) -> String {
    format!("{key_prefix}v1:content:{}", key.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> CacheEntry {
        CacheEntry {
            verdict: CachedVerdict::Infected { signature: "Eicar-Test-Signature".to_string() },
            engine_version: "1.4.6".to_string(),
            database_version: Some(27000),
            scanned_at_unix_secs: 1_767_225_600,
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
    fn picks_memory_without_a_redis_url() {
        let cache = VerdictCache::from_config(&CacheConfig::default());
        assert_eq!(cache.map(|c| c.kind()).ok(), Some("memory"));
    }

    #[test]
    fn picks_redis_with_a_url_without_contacting_it() {
        // Port 1 on loopback: nothing listens there; construction must not care, nor need Tokio.
        let cfg =
            CacheConfig { redis_url: Some("redis://127.0.0.1:1/".to_string()), ..CacheConfig::default() };
        assert_eq!(VerdictCache::from_config(&cfg).map(|c| c.kind()).ok(), Some("redis"));
    }

    #[test]
    fn rejects_invalid_settings() {
        let bad_url = CacheConfig { redis_url: Some("redis//nope".to_string()), ..CacheConfig::default() };
        assert!(matches!(VerdictCache::from_config(&bad_url), Err(CacheError::InvalidConfig(_))));
        let zero_ttl = CacheConfig { ttl_secs: 0, ..CacheConfig::default() };
        assert!(matches!(VerdictCache::from_config(&zero_ttl), Err(CacheError::InvalidConfig(_))));
        let zero_entries = CacheConfig { memory_max_entries: 0, ..CacheConfig::default() };
        assert!(matches!(VerdictCache::from_config(&zero_entries), Err(CacheError::InvalidConfig(_))));
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
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_an_error_not_a_hang() {
        let cfg = CacheConfig {
            redis_url: Some("redis://127.0.0.1:1/".to_string()),
            redis_timeout_ms: 200,
            ..CacheConfig::default()
        };
        let Ok(cache) = VerdictCache::from_config(&cfg) else { panic!("from_config") };
        let key = ContentKey::of(b"payload");
        let started = std::time::Instant::now();
        let got = cache.get(&key).await;
        assert!(got.as_ref().is_err_and(CacheError::is_unavailability), "{got:?}");
        // The next call normally falls inside the back-off delay and is refused without touching
        // the network; either way it must fail as unavailable.
        let put = cache.put(&key, &entry()).await;
        assert!(put.as_ref().is_err_and(CacheError::is_unavailability), "{put:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn error_labels_are_bounded() {
        let labels = [
            CacheError::InvalidConfig(String::new()).label(),
            CacheError::Timeout.label(),
            CacheError::Unavailable.label(),
            CacheError::Decode(DecodeError::UnsupportedVersion(2)).label(),
        ];
        assert_eq!(labels, ["invalid_config", "timeout", "unavailable", "decode"]);
        assert!(!CacheError::Decode(DecodeError::UnsupportedVersion(2)).is_unavailability());
    }
}
