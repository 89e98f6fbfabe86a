//! The Redis verdict cache, shared by every clamgate instance: `GET` and `SET key value EX ttl`
//! through one `redis::aio::ConnectionManager`, every call bounded by `cache.redis_timeout_ms`.
//!
//! Redis trouble is a cache miss, never a verdict, and never a reason not to start:
//! - The connection is made lazily, by the first call, so clamgate starts whether or not Redis is
//!   up. The manager is built with no connection retries of its own: it keeps at most one
//!   connection attempt in flight (all callers share it) and reconnects when a call finds the
//!   connection dead.
//! - [`Backoff`] paces the attempts. After a connection-level failure (refused, dropped, timed
//!   out), calls fail at once with [`CacheError::Unavailable`] for a short, doubling delay (50 ms
//!   up to 1 s); then a single call probes Redis while the others keep failing fast. One answer
//!   from Redis closes it again. So an outage costs each scan no Redis latency, Redis is not
//!   hammered, and the cache resumes by itself within a second or two of Redis coming back.
//! - `tokio::time::timeout` bounds each whole call (waiting for the connection included); the
//!   manager's own connection and response timeouts are set to the same budget, so a connection
//!   attempt to a black-holed address does not outlive it either.
//!
//! Nothing here logs. The URL's credentials never leave [`RedisCache::from_config`]:
//! [`RedisCache::endpoint`] describes the server without them, for the caller's logs.

use super::entry::{decode_entry, encode_entry, CacheEntry, ContentKey};
use super::{content_redis_key, CacheError};
use crate::config::CacheConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, ConnectionAddr, ErrorKind, FromRedisValue, RedisError};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// First back-off delay after Redis stops answering.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest back-off delay: a restarted Redis is back in use within about this long.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The verdict cache in Redis. Cheap to share behind an `Arc`; calls may run concurrently.
pub struct RedisCache {
    client: Client,
    endpoint: String,
    key_prefix: String,
    ttl_secs: u64,
    timeout: Duration,
    /// Built by the first call (it must run inside the Tokio runtime), and rebuilt after an
    /// authentication failure, which the manager itself would never retry.
    connection: Mutex<Option<ConnectionManager>>,
    backoff: Mutex<Backoff>,
}

impl RedisCache {
    /// Validates `cfg.redis_url` and the other settings without contacting Redis: an invalid URL
    /// (including `rediss://` while no TLS feature of the redis crate is enabled) is an error; an
    /// unreachable Redis is not, and is found out by the first call. Needs no Tokio runtime.
    pub fn from_config(cfg: &CacheConfig) -> Result<Self, CacheError> {
        let url = cfg
            .redis_url
            .as_deref()
            .ok_or_else(|| CacheError::InvalidConfig("cache.redis_url is not set".to_string()))?;
        let mut problems = Vec::new();
        if cfg.ttl_secs == 0 {
            problems.push("cache.ttl_secs must be at least 1".to_string());
        }
        if cfg.redis_timeout_ms == 0 {
            problems.push("cache.redis_timeout_ms must be at least 1".to_string());
        }
        // The redis crate's errors do not echo the URL, so this cannot leak the password.
        let client = match Client::open(url) {
            Ok(client) => Some(client),
            Err(err) => {
                problems.push(format!("cache.redis_url is not a usable Redis URL: {err}"));
                None
            }
        };
        let Some(client) = client.filter(|_| problems.is_empty()) else {
            return Err(CacheError::InvalidConfig(problems.join("; ")));
        };
        Ok(RedisCache {
            endpoint: describe_endpoint(&client),
            client,
            key_prefix: cfg.key_prefix.clone(),
            ttl_secs: cfg.ttl_secs,
            timeout: Duration::from_millis(cfg.redis_timeout_ms),
            connection: Mutex::new(None),
            backoff: Mutex::new(Backoff::default()),
        })
    }

    /// The server, without credentials, for logs: `redis://host:port/db` or `unix:///path?db=N`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The entry under `key`, `Ok(None)` when Redis has none. An error (Redis unreachable, slow,
    /// or holding a value this build cannot read) is for the caller to count as a miss.
    pub async fn get(&self, key: &ContentKey) -> Result<Option<CacheEntry>, CacheError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(content_redis_key(&self.key_prefix, key));
        let value: Option<Vec<u8>> = self.call(&cmd).await?;
        Ok(value.map(|bytes| decode_entry(&bytes)).transpose()?)
    }

    /// Writes `entry` under `key` with `SET key value EX ttl_secs`, replacing any previous entry.
    pub async fn put(&self, key: &ContentKey, entry: &CacheEntry) -> Result<(), CacheError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(content_redis_key(&self.key_prefix, key))
            .arg(encode_entry(entry))
            .arg("EX")
            .arg(self.ttl_secs);
        self.call(&cmd).await
    }

    /// Runs one command under the back-off gate and the timeout.
    async fn call<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, CacheError> {
        let attempt = Attempt::admit(&self.backoff)?;
        let mut connection = match self.connection() {
            Ok(connection) => connection,
            Err(err) => {
                attempt.failed();
                return Err(err);
            }
        };
        let result = match tokio::time::timeout(self.timeout, cmd.query_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) if err.is_timeout() => Err(CacheError::Timeout),
            Ok(Err(err)) => Err(CacheError::Redis(err)),
            Err(_elapsed) => Err(CacheError::Timeout),
        };
        match &result {
            Err(err) if err.is_unavailability() => {
                if let CacheError::Redis(err) = err {
                    if err.kind() == ErrorKind::AuthenticationFailed {
                        *lock(&self.connection) = None;
                    }
                }
                attempt.failed();
            }
            // Redis answered, even if with an error reply.
            _ => attempt.answered(),
        }
        result
    }

    /// The shared connection manager, creating it (without connecting) on first use.
    fn connection(&self) -> Result<ConnectionManager, CacheError> {
        let mut slot = lock(&self.connection);
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            // Pacing is `Backoff`'s job; a retry loop in the manager would keep callers waiting.
            .set_number_of_retries(0);
        let connection = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        *slot = Some(connection.clone());
        Ok(connection)
    }
}

impl fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCache")
            .field("endpoint", &self.endpoint)
            .field("key_prefix", &self.key_prefix)
            .field("ttl_secs", &self.ttl_secs)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// `redis://host:port/db`, built from the parsed address so that no credential can appear.
fn describe_endpoint(client: &Client) -> String {
    let info = client.get_connection_info();
    let db = info.redis_settings().db();
    match info.addr() {
        ConnectionAddr::Tcp(..) => format!("redis://{}/{db}", info.addr()),
        ConnectionAddr::TcpTls { .. } => format!("rediss://{}/{db}", info.addr()),
        ConnectionAddr::Unix(path) => format!("unix://{}?db={db}", path.display()),
        // A kind of address added by a later redis release: its `Display` has no credentials.
        other => format!("{other}/{db}"),
    }
}

/// Whether `err` means Redis could not be reached or used at all, as opposed to an answer.
pub(super) fn is_connection_failure(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_unrecoverable_error()
        || matches!(err.kind(), ErrorKind::Server(redis::ServerErrorKind::BusyLoading))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Both guarded values are valid in any state a panic could leave them in.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Pacing of calls while Redis is unreachable: a small circuit breaker.
///
/// `Closed`: calls go through. A connection-level failure opens it for a delay that doubles with
/// each failed probe (from `BACKOFF_MIN` to `BACKOFF_MAX`). `Open`: calls fail at once. When the
/// delay has passed, the next call becomes the single probe (`Probing`) while the others keep
/// failing; its success closes the breaker, its failure reopens it for longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Backoff {
    #[default]
    Closed,
    Open {
        until: Instant,
        failures: u32,
    },
    Probing {
        failures: u32,
    },
}

/// How a call was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Normal,
    Probe,
}

impl Backoff {
    fn admit(&mut self, now: Instant) -> Option<Admission> {
        match *self {
            Backoff::Closed => Some(Admission::Normal),
            Backoff::Open { until, failures } if now >= until => {
                *self = Backoff::Probing { failures };
                Some(Admission::Probe)
            }
            Backoff::Open { .. } | Backoff::Probing { .. } => None,
        }
    }

    fn answered(&mut self) {
        *self = Backoff::Closed;
    }

    fn failed(&mut self, now: Instant) {
        let failures = match *self {
            Backoff::Closed => 1,
            Backoff::Probing { failures } => failures.saturating_add(1),
            // Already backing off: this is a call admitted before the breaker opened.
            Backoff::Open { .. } => return,
        };
        *self = Backoff::Open { until: now + delay_after(failures), failures };
    }

    /// The probe was cancelled before Redis answered: let the next call probe at once.
    fn abandoned(&mut self, admission: Admission, now: Instant) {
        if let (Admission::Probe, Backoff::Probing { failures }) = (admission, *self) {
            *self = Backoff::Open { until: now, failures };
        }
    }
}

fn delay_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_MIN.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

/// One admitted call. Dropping it unsettled (the caller's future was cancelled) releases a probe.
struct Attempt<'a> {
    backoff: &'a Mutex<Backoff>,
    admission: Admission,
    settled: bool,
}

impl<'a> Attempt<'a> {
    fn admit(backoff: &'a Mutex<Backoff>) -> Result<Self, CacheError> {
        let admission = lock(backoff).admit(Instant::now()).ok_or(CacheError::Unavailable)?;
        Ok(Attempt { backoff, admission, settled: false })
    }

    fn answered(mut self) {
        self.settled = true;
        lock(self.backoff).answered();
    }

    fn failed(mut self) {
        self.settled = true;
        lock(self.backoff).failed(Instant::now());
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            lock(self.backoff).abandoned(self.admission, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> CacheConfig {
        CacheConfig { redis_url: Some(url.to_string()), ..CacheConfig::default() }
    }

    #[test]
    fn backoff_lets_calls_through_until_a_failure() {
        let mut backoff = Backoff::default();
        let t0 = Instant::now();
        assert_eq!(backoff.admit(t0), Some(Admission::Normal));
        assert_eq!(backoff.admit(t0), Some(Admission::Normal));
        backoff.failed(t0);
        assert_eq!(backoff.admit(t0), None);
        assert_eq!(backoff.admit(t0 + BACKOFF_MIN - Duration::from_millis(1)), None);
    }

    #[test]
    fn backoff_admits_one_probe_at_a_time_once_the_delay_passes() {
        let mut backoff = Backoff::default();
        let t0 = Instant::now();
        backoff.failed(t0);
        let t1 = t0 + BACKOFF_MIN;
        assert_eq!(backoff.admit(t1), Some(Admission::Probe));
        assert_eq!(backoff.admit(t1), None, "a second call must not probe while one is out");
        backoff.answered();
        assert_eq!(backoff.admit(t1), Some(Admission::Normal));
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let mut backoff = Backoff::default();
        let mut now = Instant::now();
        backoff.failed(now);
        let (mut expected, mut failures) = (BACKOFF_MIN, 1);
        for _ in 0..10 {
            assert_eq!(backoff, Backoff::Open { until: now + expected, failures });
            now += expected;
            assert_eq!(backoff.admit(now), Some(Admission::Probe));
            backoff.failed(now);
            failures += 1;
            expected = (expected * 2).min(BACKOFF_MAX);
        }
        assert_eq!(backoff, Backoff::Open { until: now + BACKOFF_MAX, failures: 11 });
        assert_eq!(delay_after(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn failures_of_calls_admitted_earlier_do_not_extend_the_delay() {
        let mut backoff = Backoff::default();
        let t0 = Instant::now();
        backoff.failed(t0);
        let opened = backoff;
        backoff.failed(t0 + Duration::from_millis(10));
        backoff.failed(t0 + Duration::from_millis(20));
        assert_eq!(backoff, opened);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_call_probe() {
        let mut backoff = Backoff::default();
        let t0 = Instant::now();
        backoff.failed(t0);
        let t1 = t0 + BACKOFF_MIN;
        assert_eq!(backoff.admit(t1), Some(Admission::Probe));
        backoff.abandoned(Admission::Probe, t1);
        assert_eq!(backoff.admit(t1), Some(Admission::Probe));
        // A normal call abandoned while a probe is out changes nothing.
        backoff.abandoned(Admission::Normal, t1);
        assert_eq!(backoff.admit(t1), None);
    }

    #[test]
    fn a_dropped_attempt_releases_its_probe() {
        let backoff = Mutex::new(Backoff::Open { until: Instant::now(), failures: 3 });
        let attempt = Attempt::admit(&backoff).ok();
        assert_eq!(attempt.as_ref().map(|a| a.admission), Some(Admission::Probe));
        assert!(Attempt::admit(&backoff).is_err());
        drop(attempt);
        assert!(matches!(*lock(&backoff), Backoff::Open { failures: 3, .. }));
        assert!(Attempt::admit(&backoff).is_ok());
    }

    #[test]
    fn connection_failures_are_told_from_answers() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let timed_out = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        let auth = RedisError::from((ErrorKind::AuthenticationFailed, "Password authentication failed"));
        let wrong_type = RedisError::from((ErrorKind::UnexpectedReturnType, "not bytes"));
        let client = RedisError::from((ErrorKind::Client, "bad"));
        assert!(is_connection_failure(&refused));
        assert!(is_connection_failure(&timed_out));
        assert!(is_connection_failure(&auth));
        assert!(!is_connection_failure(&wrong_type));
        assert!(!is_connection_failure(&client));
    }

    #[test]
    fn endpoint_never_shows_credentials() {
        let cache = RedisCache::from_config(&config("redis://clamgate:s3cret-pw@10.0.0.7:6380/2"));
        let cache = cache.ok();
        assert_eq!(cache.as_ref().map(RedisCache::endpoint), Some("redis://10.0.0.7:6380/2"));
        let debug = format!("{cache:?}");
        assert!(debug.contains("10.0.0.7:6380"), "{debug}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(!debug.contains("clamgate:s3"), "{debug}");

        let unix = RedisCache::from_config(&config("redis+unix:///run/redis.sock?db=3&pass=s3cret"));
        assert_eq!(
            unix.ok().map(|c| c.endpoint().to_string()).as_deref(),
            Some("unix:///run/redis.sock?db=3")
        );
    }

    #[test]
    fn rejects_bad_settings_all_at_once() {
        let cfg = CacheConfig { ttl_secs: 0, redis_timeout_ms: 0, ..config("not a url") };
        match RedisCache::from_config(&cfg) {
            Err(CacheError::InvalidConfig(msg)) => {
                assert!(msg.contains("cache.ttl_secs"), "{msg}");
                assert!(msg.contains("cache.redis_timeout_ms"), "{msg}");
                assert!(msg.contains("cache.redis_url"), "{msg}");
            }
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn invalid_urls_are_errors() {
        for url in
            ["", "not a url", "http://127.0.0.1:6379", "redis://0.0.0.0:6379", "redis://127.0.0.1:6379/x"]
        {
            assert!(
                matches!(RedisCache::from_config(&config(url)), Err(CacheError::InvalidConfig(_))),
                "{url:?} accepted"
            );
        }
    }
}
