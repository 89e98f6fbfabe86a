//! The Redis tier of the verdict cache, shared by every clamgate instance: a standalone server
//! (`cache.redis_url`, a small pool of `redis::aio::ConnectionManager`s used round-robin) or a
//! Redis Cluster (`cache.redis_cluster_urls`, one `redis::cluster_async::ClusterConnection`),
//! over TCP or TLS (`rediss://`), with AUTH or an ACL user. Every call is bounded by
//! `cache.redis_timeout_ms`.
//!
//! Redis trouble is a cache miss, never a verdict, and never a reason not to start:
//! - Connections are made lazily, by the first call, so clamgate starts whether or not Redis is
//!   up. Standalone: each pooled manager is built with no connection retries of its own; it keeps
//!   at most one connection attempt in flight and reconnects when a call finds its connection
//!   dead. Cluster: the first call connects to the seed nodes and reads the slot map (one attempt
//!   at a time; the others wait for it within their own budget); the cluster connection then
//!   follows `MOVED`/`ASK`, refreshes the slot map and reconnects to nodes by itself, with at
//!   most [`CLUSTER_RETRIES`] quick retries per call.
//! - [`Backoff`] paces the attempts. After a connection-level failure (refused, dropped, timed
//!   out, cluster down), calls fail at once with [`CacheError::Unavailable`] for a short, doubling
//!   delay (50 ms up to 1 s); then a single call probes Redis while the others keep failing fast.
//!   One answer from Redis closes it again. So an outage costs each scan no Redis latency, Redis
//!   is not hammered, and the cache resumes by itself within a second or two of Redis coming back.
//!   For a cluster the breaker is shared by all nodes: a master down without a replica makes the
//!   whole tier answer `Unavailable` between probes (scans go on; the memory tier still answers).
//! - `tokio::time::timeout` bounds each whole call (waiting for a connection included); the
//!   clients' own connection and response timeouts are set to the same budget, so a connection
//!   attempt to a black-holed address does not outlive it either.
//! - An authentication failure drops the connections, so that the next probe authenticates anew
//!   (the managers would otherwise never retry it).
//!
//! Every operation is a single-key command (`GET`, `SET`, `EXISTS`, or `EVAL` with one key), so
//! the key layout works unchanged on a cluster. The commands a restricted ACL user needs:
//! `+get +set +exists +eval +del` (the unlock script calls `GET` and `DEL`), plus
//! `+cluster|slots` on a cluster, on keys `~{key_prefix}*`.
//!
//! Nothing here logs. Credentials (from the URLs or `cache.redis_username`/`redis_password`)
//! never leave [`RedisCache::from_config`]: [`RedisCache::endpoint`] and `Debug` describe the
//! servers without them.

use super::entry::{decode_entry, encode_entry, CacheEntry, ContentKey};
use super::redis_url::RedisUrl;
use super::resource::{decode_resource, encode_resource, ResourceEntry, ResourceKey};
use super::seal::{self, ValueKeys};
use super::{content_redis_key, lock_redis_key, resource_redis_key, CacheError, LockAttempt, LockToken};
use crate::config::CacheConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue, RedisError, ServerErrorKind,
    TlsCertificates,
};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// First back-off delay after Redis stops answering.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest back-off delay: a restarted Redis is back in use within about this long.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Retries the cluster connection may make within one call: enough to follow a `MOVED` and
/// reconnect to a node once; the call's timeout bounds them anyway.
const CLUSTER_RETRIES: u32 = 2;

/// Compare-and-delete: releases a lock only if it still holds the caller's token, so a holder
/// whose lock expired cannot release the lock another instance has taken since.
const UNLOCK_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// The Redis tier. Cheap to share behind an `Arc`; calls may run concurrently.
pub struct RedisCache {
    backend: Backend,
    endpoint: String,
    key_prefix: String,
    ttl_secs: u64,
    /// `cache.unscanned_ttl_secs`, for `Unscanned` entries.
    unscanned_ttl_secs: u64,
    timeout: Duration,
    backoff: Mutex<Backoff>,
    /// `cache.hmac_key_file` (and the previous key): values are sealed and checked with them.
    keys: Option<ValueKeys>,
}

/// Where the entries live.
// One per process, never moved after startup: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Standalone(Standalone),
    Cluster(Cluster),
}

/// A standalone server (or a primary behind a stable address), through a pool of managers.
struct Standalone {
    client: Client,
    pool_size: usize,
    /// Built by the first call (it must run inside the Tokio runtime), emptied after an
    /// authentication failure, which the managers themselves would never retry.
    pool: Mutex<Vec<ConnectionManager>>,
    next: AtomicUsize,
}

/// A Redis Cluster, through one cluster connection (itself one multiplexed connection per node).
struct Cluster {
    client: ClusterClient,
    /// Made by the first call; an async mutex so that a single connection attempt is in flight
    /// and the callers that arrive meanwhile wait for it (within their own timeout).
    connection: tokio::sync::Mutex<Option<ClusterConnection>>,
}

/// One connection, ready for a command.
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T, RedisError> {
        match self {
            Connection::Standalone(connection) => cmd.query_async(connection).await,
            Connection::Cluster(connection) => cmd.query_async(connection).await,
        }
    }
}

impl RedisCache {
    /// Validates the Redis settings of `cfg` without contacting Redis, reporting every problem at
    /// once: exactly one of `redis_url` and `redis_cluster_urls`, usable URLs (one TLS mode for
    /// all cluster seeds), a readable `redis_tls_ca_file` only with `rediss://`, non-zero
    /// `ttl_secs`, `redis_timeout_ms` and `redis_pool_size`. An unreachable Redis is not an
    /// error here; the first call finds it out. Needs no Tokio runtime. Messages never contain a
    /// credential.
    pub fn from_config(cfg: &CacheConfig) -> Result<Self, CacheError> {
        let mut problems = Vec::new();
        if cfg.ttl_secs == 0 {
            problems.push("cache.ttl_secs must be at least 1".to_string());
        }
        if cfg.redis_timeout_ms == 0 {
            problems.push("cache.redis_timeout_ms must be at least 1".to_string());
        }
        if cfg.redis_pool_size == 0 {
            problems.push("cache.redis_pool_size must be at least 1".to_string());
        }
        let timeout = Duration::from_millis(cfg.redis_timeout_ms);
        let root_cert = read_ca_file(cfg, &mut problems);
        let keys = seal::keys_from_config(cfg).unwrap_or_else(|key_problems| {
            problems.extend(key_problems);
            None
        });
        let built = match (cfg.redis_url.as_ref(), cfg.redis_cluster_urls.as_slice()) {
            (Some(_), [_, ..]) => {
                problems.push("set cache.redis_url or cache.redis_cluster_urls, not both".to_string());
                None
            }
            (Some(url), []) => standalone(url, cfg, root_cert, &mut problems),
            (None, [_, ..]) => cluster(&cfg.redis_cluster_urls, cfg, root_cert, timeout, &mut problems),
            (None, []) => {
                problems.push("neither cache.redis_url nor cache.redis_cluster_urls is set".to_string());
                None
            }
        };
        let Some((backend, endpoint)) = built.filter(|_| problems.is_empty()) else {
            return Err(CacheError::InvalidConfig(problems.join("; ")));
        };
        Ok(RedisCache {
            backend,
            endpoint,
            key_prefix: cfg.key_prefix.clone(),
            ttl_secs: cfg.ttl_secs,
            unscanned_ttl_secs: cfg.unscanned_ttl_secs.min(cfg.ttl_secs),
            timeout,
            backoff: Mutex::new(Backoff::default()),
            keys,
        })
    }

    /// The servers, without credentials, for logs: `redis://host:port/db`, `rediss://...`,
    /// `unix:///path?db=N`, or for a cluster its seeds, comma-separated.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// The entry under `key`, `Ok(None)` when Redis has none. An error (Redis unreachable, slow,
    /// holding a value this build cannot read, or, with HMAC keys, a value without a valid tag:
    /// [`CacheError::Rejected`]) is for the caller to count as a miss.
    pub async fn get(&self, key: &ContentKey) -> Result<Option<CacheEntry>, CacheError> {
        let name = content_redis_key(&self.key_prefix, key);
        let Some(value) = self.get_bytes(name.clone()).await? else { return Ok(None) };
        Ok(Some(decode_entry(self.open("content", &name, &value)?)?))
    }

    /// Writes `entry` under `key` with `SET key value EX ttl_secs` (`unscanned_ttl_secs` for an
    /// `Unscanned` entry), replacing any previous entry; sealed when HMAC keys are configured.
    pub async fn put(&self, key: &ContentKey, entry: &CacheEntry) -> Result<(), CacheError> {
        let name = content_redis_key(&self.key_prefix, key);
        let ttl_secs = if entry.verdict.is_unscanned() { self.unscanned_ttl_secs } else { self.ttl_secs };
        if ttl_secs == 0 {
            return Ok(());
        }
        let value = seal::seal(self.keys.as_ref(), &name, encode_entry(entry));
        self.set_bytes(name, value, ttl_secs).await
    }

    /// The resource entry under `key`, like [`RedisCache::get`].
    pub async fn get_resource(&self, key: &ResourceKey) -> Result<Option<ResourceEntry>, CacheError> {
        let name = resource_redis_key(&self.key_prefix, key);
        let Some(value) = self.get_bytes(name.clone()).await? else { return Ok(None) };
        Ok(Some(decode_resource(self.open("resource", &name, &value)?)?))
    }

    /// Writes a resource entry, like [`RedisCache::put`].
    pub async fn put_resource(&self, key: &ResourceKey, entry: &ResourceEntry) -> Result<(), CacheError> {
        let name = resource_redis_key(&self.key_prefix, key);
        let value = seal::seal(self.keys.as_ref(), &name, encode_resource(entry));
        self.set_bytes(name, value, self.ttl_secs).await
    }

    /// The entry bytes of `value` read from `name`, checked against the HMAC keys if any.
    fn open<'v>(&self, kind: &'static str, name: &str, value: &'v [u8]) -> Result<&'v [u8], CacheError> {
        seal::open(self.keys.as_ref(), name, value)
            .map_err(|reason| CacheError::Rejected { key: kind, reason })
    }

    /// Deletes the resource entry under `key` (`DEL`); deleting an absent entry is not an error.
    pub async fn delete_resource(&self, key: &ResourceKey) -> Result<(), CacheError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(resource_redis_key(&self.key_prefix, key));
        let _deleted: i64 = self.call(&cmd).await?;
        Ok(())
    }

    /// `SET {prefix}v1:lock:{object} <token> NX PX <ttl ms>`: `Acquired` with a fresh random
    /// token, or `HeldElsewhere` when the key exists.
    pub async fn try_lock(&self, object: &str, ttl: Duration) -> Result<LockAttempt, CacheError> {
        let token = LockToken::random();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(lock_redis_key(&self.key_prefix, object)).arg(token.as_str()).arg("NX").arg("PX").arg(ttl_ms);
        let reply: Option<String> = self.call(&cmd).await?;
        Ok(match reply {
            Some(_) => LockAttempt::Acquired(token),
            None => LockAttempt::HeldElsewhere,
        })
    }

    /// Deletes the lock if it still holds `token` (compare-and-delete in one `EVAL`). Returns
    /// whether it did; `false` means the lock had expired, and perhaps been taken by another.
    pub async fn unlock(&self, object: &str, token: &LockToken) -> Result<bool, CacheError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(UNLOCK_SCRIPT).arg(1).arg(lock_redis_key(&self.key_prefix, object)).arg(token.as_str());
        let deleted: i64 = self.call(&cmd).await?;
        Ok(deleted > 0)
    }

    /// Whether the lock on `object` exists (`EXISTS`): taken by someone, and neither released
    /// nor expired.
    pub async fn lock_held(&self, object: &str) -> Result<bool, CacheError> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(lock_redis_key(&self.key_prefix, object));
        let count: i64 = self.call(&cmd).await?;
        Ok(count > 0)
    }

    async fn get_bytes(&self, key: String) -> Result<Option<Vec<u8>>, CacheError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        self.call(&cmd).await
    }

    async fn set_bytes(&self, key: String, value: Vec<u8>, ttl_secs: u64) -> Result<(), CacheError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("EX").arg(ttl_secs);
        self.call(&cmd).await
    }

    /// Runs one command under the back-off gate and the timeout.
    async fn call<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, CacheError> {
        let attempt = Attempt::admit(&self.backoff)?;
        let result = match tokio::time::timeout(self.timeout, self.query(cmd)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(CacheError::Timeout),
        };
        match &result {
            Err(err) if err.is_unavailability() => {
                if let CacheError::Redis(err) = err {
                    if err.kind() == ErrorKind::AuthenticationFailed {
                        self.drop_connections();
                    }
                }
                attempt.failed();
            }
            // Redis answered, even if with an error reply.
            _ => attempt.answered(),
        }
        result
    }

    /// Gets a connection (making it on first use) and runs `cmd` on it.
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, CacheError> {
        let mut connection = match &self.backend {
            Backend::Standalone(standalone) => Connection::Standalone(standalone.connection(self.timeout)?),
            Backend::Cluster(cluster) => Connection::Cluster(cluster.connection().await?),
        };
        connection
            .query(cmd)
            .await
            .map_err(|err| if err.is_timeout() { CacheError::Timeout } else { err.into() })
    }

    /// Forgets the connections, so that the next call connects (and authenticates) anew.
    fn drop_connections(&self) {
        match &self.backend {
            Backend::Standalone(standalone) => lock(&standalone.pool).clear(),
            // Never wait here, outside the call's budget: if another call holds the slot, it is
            // connecting anew already.
            Backend::Cluster(cluster) => {
                if let Ok(mut slot) = cluster.connection.try_lock() {
                    *slot = None;
                }
            }
        }
    }
}

impl Standalone {
    /// The next pooled manager, round-robin, building the pool (without connecting) on first use.
    fn connection(&self, timeout: Duration) -> Result<ConnectionManager, CacheError> {
        let mut pool = lock(&self.pool);
        if pool.is_empty() {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                // Pacing is `Backoff`'s job; a retry loop in the manager would keep callers waiting.
                .set_number_of_retries(0);
            let managers = (0..self.pool_size)
                .map(|_| ConnectionManager::new_lazy_with_config(self.client.clone(), config.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            *pool = managers;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % pool.len().max(1);
        pool.get(index).cloned().ok_or(CacheError::Unavailable)
    }
}

impl Cluster {
    /// The cluster connection, connecting to the seeds and reading the slot map on first use.
    async fn connection(&self) -> Result<ClusterConnection, CacheError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self.client.get_async_connection().await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }
}

impl fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mode, pool_size) = match &self.backend {
            Backend::Standalone(standalone) => ("standalone", Some(standalone.pool_size)),
            Backend::Cluster(_) => ("cluster", None),
        };
        f.debug_struct("RedisCache")
            .field("mode", &mode)
            .field("endpoint", &self.endpoint)
            .field("pool_size", &pool_size)
            .field("key_prefix", &self.key_prefix)
            .field("ttl_secs", &self.ttl_secs)
            .field("unscanned_ttl_secs", &self.unscanned_ttl_secs)
            .field("hmac", &self.keys.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The contents of `cache.redis_tls_ca_file`, if set and readable (a problem otherwise).
fn read_ca_file(cfg: &CacheConfig, problems: &mut Vec<String>) -> Option<Vec<u8>> {
    let path = cfg.redis_tls_ca_file.as_deref()?;
    match std::fs::read(path) {
        Ok(pem) if pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => Some(pem),
        Ok(_) => {
            problems.push(format!("cache.redis_tls_ca_file: {path} holds no PEM certificate"));
            None
        }
        Err(err) => {
            problems.push(format!("cache.redis_tls_ca_file: cannot read {path}: {err}"));
            None
        }
    }
}

/// The certificates for a TLS connection that trusts only the configured CA.
fn ca_only(root_cert: Vec<u8>) -> TlsCertificates {
    TlsCertificates { client_tls: None, root_cert: Some(root_cert) }
}

/// `info` with `cache.redis_username` / `cache.redis_password`, when set, in place of the URL's.
fn with_credentials(info: ConnectionInfo, cfg: &CacheConfig) -> ConnectionInfo {
    let mut redis = info.redis_settings().clone();
    if let Some(username) = &cfg.redis_username {
        redis = redis.set_username(username);
    }
    if let Some(password) = &cfg.redis_password {
        redis = redis.set_password(password);
    }
    info.set_redis_settings(redis)
}

fn is_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr(), ConnectionAddr::TcpTls { .. })
}

/// The standalone backend and its endpoint, or `None` with the problems recorded.
fn standalone(
    url: &RedisUrl,
    cfg: &CacheConfig,
    root_cert: Option<Vec<u8>>,
    problems: &mut Vec<String>,
) -> Option<(Backend, String)> {
    // The redis crate's errors do not echo the URL, so these messages cannot leak the password.
    let info = match url.connection_info() {
        Ok(info) => with_credentials(info, cfg),
        Err(err) => {
            problems.push(format!("cache.redis_url is not a usable Redis URL: {err}"));
            return None;
        }
    };
    if info.redis_settings().username().is_some() && info.redis_settings().password().is_none() {
        problems.push("cache.redis_username is set but no password (cache.redis_password)".to_string());
    }
    let client = match root_cert {
        Some(_) if !is_tls(&info) => {
            problems.push("cache.redis_tls_ca_file is set but cache.redis_url is not rediss://".to_string());
            return None;
        }
        Some(root_cert) => Client::build_with_tls(info, ca_only(root_cert)),
        None => Client::open(info),
    };
    let client = match client {
        Ok(client) => client,
        Err(err) => {
            problems.push(format!("cache.redis_url cannot be used: {err}"));
            return None;
        }
    };
    let endpoint = describe_endpoint(client.get_connection_info());
    let pool_size = cfg.redis_pool_size.max(1);
    let standalone =
        Standalone { client, pool_size, pool: Mutex::new(Vec::new()), next: AtomicUsize::new(0) };
    Some((Backend::Standalone(standalone), endpoint))
}

/// The cluster backend and its endpoint, or `None` with the problems recorded.
fn cluster(
    urls: &[RedisUrl],
    cfg: &CacheConfig,
    root_cert: Option<Vec<u8>>,
    timeout: Duration,
    problems: &mut Vec<String>,
) -> Option<(Backend, String)> {
    let before = problems.len();
    let mut seeds = Vec::new();
    for (index, url) in urls.iter().enumerate() {
        if let Some(problem) = url.cluster_seed_problem() {
            problems.push(format!("cache.redis_cluster_urls[{index}]: {problem}"));
            continue;
        }
        match url.connection_info() {
            Ok(info) => seeds.push(with_credentials(info, cfg)),
            Err(err) => {
                problems.push(format!("cache.redis_cluster_urls[{index}] is not a usable Redis URL: {err}"))
            }
        }
    }
    let tls = seeds.iter().any(is_tls);
    if tls && !seeds.iter().all(is_tls) {
        problems.push("cache.redis_cluster_urls mixes redis:// and rediss://".to_string());
    }
    if root_cert.is_some() && !tls {
        problems.push(
            "cache.redis_tls_ca_file is set but cache.redis_cluster_urls are not rediss://".to_string(),
        );
    }
    if problems.len() > before {
        return None;
    }
    let endpoint = seeds.iter().map(describe_endpoint).collect::<Vec<_>>().join(",");
    let mut builder = ClusterClientBuilder::new(seeds)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .overall_response_timeout(Some(timeout))
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(5)
        .max_retry_wait(50);
    if let Some(username) = &cfg.redis_username {
        builder = builder.username(username);
    }
    if let Some(password) = &cfg.redis_password {
        builder = builder.password(password);
    }
    if let Some(root_cert) = root_cert {
        builder = builder.certs(ca_only(root_cert));
    }
    match builder.build() {
        Ok(client) => {
            let cluster = Cluster { client, connection: tokio::sync::Mutex::new(None) };
            Some((Backend::Cluster(cluster), endpoint))
        }
        Err(err) => {
            problems.push(format!("cache.redis_cluster_urls cannot be used: {err}"));
            None
        }
    }
}

/// `redis://host:port/db`, built from the parsed address so that no credential can appear.
fn describe_endpoint(info: &ConnectionInfo) -> String {
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
///
/// Cluster redirections count: the cluster connection follows `MOVED` and `ASK` itself, so one
/// that reaches us means the slot's master could not be reached within the call's retries (it is
/// down, and the others still point to it).
pub(super) fn is_connection_failure(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_unrecoverable_error()
        || err.is_cluster_error()
        || matches!(err.kind(), ErrorKind::Server(ServerErrorKind::BusyLoading | ServerErrorKind::MasterDown))
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
        CacheConfig { redis_url: Some(url.parse().expect("a Redis URL")), ..CacheConfig::default() }
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
        let no_perm = RedisError::from((ErrorKind::Server(ServerErrorKind::NoPerm), "no permission"));
        for kind in [ServerErrorKind::ClusterDown, ServerErrorKind::Moved, ServerErrorKind::TryAgain] {
            assert!(
                is_connection_failure(&RedisError::from((ErrorKind::Server(kind), "cluster"))),
                "{kind:?}"
            );
        }
        assert!(!is_connection_failure(&no_perm));
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
        let cfg = CacheConfig { ttl_secs: 0, redis_timeout_ms: 0, ..config("redis://127.0.0.1:6379/") };
        match RedisCache::from_config(&cfg) {
            Err(CacheError::InvalidConfig(msg)) => {
                assert!(msg.contains("cache.ttl_secs"), "{msg}");
                assert!(msg.contains("cache.redis_timeout_ms"), "{msg}");
            }
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn invalid_urls_are_errors() {
        for url in
            ["", "not a url", "http://127.0.0.1:6379", "redis://0.0.0.0:6379", "redis://127.0.0.1:6379/x"]
        {
            // Refused by the parser, or else by the client built from it.
            let Ok(parsed) = url.parse::<RedisUrl>() else { continue };
            let cfg = CacheConfig { redis_url: Some(parsed), ..CacheConfig::default() };
            assert!(
                matches!(RedisCache::from_config(&cfg), Err(CacheError::InvalidConfig(_))),
                "{url:?} accepted"
            );
        }
    }
}
