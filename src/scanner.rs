//! The one scan path: hash the body, consult the verdict cache, scan with clamd within the
//! concurrency limit, write Clean and Infected verdicts back. ext_proc and the Scan API share it.
//!
//! Nothing here returns an error: every failure becomes `Verdict::Unscanned { reason }`, and the
//! policy decides what the client gets. A cache failure is a miss, never a verdict.
//!
//! - **Staleness.** A Clean entry written under an older signature database than the one clamd
//!   now reports is stale: the body is scanned again and the entry overwritten. Infected entries
//!   stand until their TTL. The current database version comes from the health probe's `VERSION`
//!   and from a `VERSION` after a failed scan, never per request.
//! - **One scan per object at a time.** Concurrent scans of the same content wait for the first
//!   (in process); with Redis, instances take a short lock so only one of them scans, and a
//!   waiter scans itself if the holder dies (its lock expires).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::cache::{
    CacheEntry, CachedVerdict, ContentKey, LockAttempt, ResourceEntry, ResourceKey, Tier, VerdictCache,
};
use crate::clamd::{ClamdClient, InstreamScan};
use crate::config::CacheMode;
use crate::ext_proc::state::Resource;
use crate::metrics::{Metrics, Source};
use crate::spool::HeldBody;
use crate::verdict::{EngineVersion, UnscannedReason, Verdict};

/// Bodies are sent to clamd in pieces of this size (clamd does not care; this bounds each write).
const CLAMD_CHUNK_BYTES: usize = 256 * 1024;

/// How often, at most, a failing cache is reported in the log.
const CACHE_ERROR_LOG_INTERVAL_SECS: u64 = 10;

/// How often, at most, a failed scan triggers a `VERSION` refresh.
const VERSION_REFRESH_MIN_INTERVAL_MS: u64 = 1_000;

/// How often a waiter checks whether another instance's scan has finished.
const SHARED_WAIT_POLL: Duration = Duration::from_millis(25);

/// The result of one scan, with what an answer or an audit line needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanReport {
    pub verdict: Verdict,
    /// SHA-256 of the body, lower-case hex (the content key).
    pub sha256: String,
    /// Bytes in the body.
    pub body_bytes: u64,
    /// The engine and database that produced the verdict, when known.
    pub engine: Option<EngineVersion>,
    /// Whether the verdict came from the cache.
    pub cached: bool,
}

/// What the cache knows about a resource (host + path + query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceLookup {
    /// Known infected: refuse before the upstream is contacted.
    Infected(ScanReport),
    /// Known clean, valid while the response carries this validator.
    Clean { validator: String },
    /// Not known (or stale, or the cache failed).
    Miss,
}

/// Limits for [`Scanner`].
#[derive(Debug, Clone)]
pub struct ScannerSettings {
    /// Bodies above this are `Unscanned { too_large }` without contacting clamd.
    pub max_scan_bytes: u64,
    /// Scans in flight to clamd at once.
    pub max_concurrent_scans: usize,
    /// How long a scan may wait for a free clamd slot before it is `Unscanned { timeout }`.
    pub slot_wait: Duration,
    /// Deadline for one whole scan (waiting for another scan of the same object, a clamd slot,
    /// sending, reply), plus `scan_timeout_per_mib` for every MiB of the body.
    pub scan_timeout: Duration,
    pub scan_timeout_per_mib: Duration,
    /// Life of the cross-instance scan lock.
    pub lock_ttl: Duration,
}

type Inflight = HashMap<ContentKey, watch::Receiver<Option<ScanReport>>>;

/// Scans bodies with clamd through the verdict cache.
pub struct Scanner {
    clamd: ClamdClient,
    cache: VerdictCache,
    settings: ScannerSettings,
    scan_slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    engine: RwLock<Option<EngineVersion>>,
    inflight: Mutex<Inflight>,
    cache_error_log: Throttle,
    version_refresh: Throttle,
}

impl Scanner {
    pub fn new(
        clamd: ClamdClient,
        cache: VerdictCache,
        settings: ScannerSettings,
        metrics: Arc<Metrics>,
    ) -> Scanner {
        Scanner {
            clamd,
            cache,
            scan_slots: Arc::new(Semaphore::new(settings.max_concurrent_scans.max(1))),
            settings,
            metrics,
            engine: RwLock::new(None),
            inflight: Mutex::new(HashMap::new()),
            cache_error_log: Throttle::new(Duration::from_secs(CACHE_ERROR_LOG_INTERVAL_SECS)),
            version_refresh: Throttle::new(Duration::from_millis(VERSION_REFRESH_MIN_INTERVAL_MS)),
        }
    }

    /// The clamd client, for the health probe.
    pub fn clamd(&self) -> &ClamdClient {
        &self.clamd
    }

    /// Records the engine and database version clamd reports (learned by the health probe).
    pub fn set_engine_version(&self, version: EngineVersion) {
        if let Ok(mut engine) = self.engine.write() {
            if engine.as_ref() != Some(&version) {
                tracing::info!(
                    engine = %version.engine,
                    database_version = version.database_version.unwrap_or(0),
                    "clamd signature database in use"
                );
            }
            *engine = Some(version);
        }
    }

    /// The engine and database version clamd last reported.
    pub fn engine_version(&self) -> Option<EngineVersion> {
        self.engine.read().ok().and_then(|engine| engine.clone())
    }

    /// Scans a body that is already whole in memory (an Envoy BUFFERED body).
    ///
    /// The cache is consulted first (unless `cache_mode` is `off`), so a body seen before is
    /// answered without clamd; a scan of the same body already under way is waited for.
    pub async fn scan_body(&self, body: &[u8], source: Source, cache_mode: CacheMode) -> ScanReport {
        let key = content_key(body);
        self.scan(ScanInput::Memory(body), &key, source, cache_mode).await
    }

    /// Scans a body a stream has held whole (FULL_DUPLEX_STREAMED), whose SHA-256 the stream
    /// computed as the pieces arrived. Same cache and single-flight rules as [`Self::scan_body`].
    pub async fn scan_held(
        &self,
        body: &HeldBody,
        key: &ContentKey,
        source: Source,
        cache_mode: CacheMode,
    ) -> ScanReport {
        self.scan(ScanInput::Held(body), key, source, cache_mode).await
    }

    /// The report for a body that will not be scanned (the caller knows why: too large by its
    /// `content-length`, or partial content), counted like any verdict.
    pub fn report_unscanned(
        &self,
        sha256: &str,
        body_bytes: u64,
        reason: UnscannedReason,
        source: Source,
    ) -> ScanReport {
        let report = ScanReport {
            verdict: Verdict::Unscanned { reason },
            sha256: sha256.to_string(),
            body_bytes,
            engine: self.engine_version(),
            cached: false,
        };
        self.metrics.record_verdict(source, &report.verdict);
        report
    }

    /// Bodies above this are `Unscanned { too_large }`.
    pub fn max_scan_bytes(&self) -> u64 {
        self.settings.max_scan_bytes
    }

    async fn scan(
        &self,
        body: ScanInput<'_>,
        key: &ContentKey,
        source: Source,
        cache_mode: CacheMode,
    ) -> ScanReport {
        let body_bytes = body.len();
        let report = if body_bytes > self.settings.max_scan_bytes {
            self.unscanned(key, body_bytes, UnscannedReason::TooLarge)
        } else {
            let scan = async {
                match cache_mode {
                    CacheMode::Off => self.clamd_scan(key, body, false).await,
                    CacheMode::Content | CacheMode::Resource => self.scan_once(key, body).await,
                }
            };
            let deadline = self.deadline_for(body_bytes);
            match tokio::time::timeout(deadline, scan).await {
                Ok(report) => report,
                Err(_) => {
                    tracing::warn!(
                        timeout_ms = deadline.as_millis() as u64,
                        bytes = body_bytes,
                        "scan did not finish within scan.timeout_ms (+ scan.timeout_per_mib_ms per MiB)"
                    );
                    self.unscanned(key, body_bytes, UnscannedReason::Timeout)
                }
            }
        };
        self.metrics.record_verdict(source, &report.verdict);
        report
    }

    /// The whole-scan deadline for a body of `body_bytes`.
    fn deadline_for(&self, body_bytes: u64) -> Duration {
        let mib = body_bytes.div_ceil(1024 * 1024) as u32;
        self.settings.scan_timeout + self.settings.scan_timeout_per_mib * mib
    }

    /// The cache, then one scan per content at a time: in process, then across instances.
    async fn scan_once(&self, key: &ContentKey, body: ScanInput<'_>) -> ScanReport {
        let body_bytes = body.len();
        loop {
            if let Some(cached) = self.cached_report(key, body_bytes).await {
                return cached;
            }
            let leader = match self.join_or_lead(key) {
                Role::Leader(leader) => leader,
                Role::Waiter(mut results) => {
                    let started = Instant::now();
                    let outcome =
                        results.wait_for(|result| result.is_some()).await.ok().and_then(|r| r.clone());
                    self.metrics.record_scan_wait("local", started.elapsed().as_secs_f64());
                    match outcome {
                        Some(report) => return report,
                        // The leader went away without a result (cancelled): try again.
                        None => continue,
                    }
                }
            };
            let report = self.scan_as_leader(key, body).await;
            leader.publish(report.clone());
            return report;
        }
    }

    /// Scans as this instance's leader for `key`, first taking the shared lock when the cache
    /// is shared, or waiting for the instance that holds it.
    async fn scan_as_leader(&self, key: &ContentKey, body: ScanInput<'_>) -> ScanReport {
        let object = format!("content:{}", key.hex());
        let token = match self.cache.try_lock(&object, self.settings.lock_ttl).await {
            Ok(LockAttempt::Acquired(token)) => Some(token),
            Ok(LockAttempt::Local) => None,
            Ok(LockAttempt::HeldElsewhere) => {
                if let Some(report) = self.wait_for_shared_scan(key, &object, body.len()).await {
                    return report;
                }
                None
            }
            Err(err) => {
                self.note_cache_error("lock", &err);
                None
            }
        };
        let report = self.clamd_scan(key, body, true).await;
        if let Some(token) = token {
            if let Err(err) = self.cache.unlock(&object, &token).await {
                self.note_cache_error("unlock", &err);
            }
        }
        report
    }

    /// Waits while another instance scans the same content; returns its verdict once cached, or
    /// None when its lock is gone without one (it died, or its scan did not complete).
    async fn wait_for_shared_scan(
        &self,
        key: &ContentKey,
        object: &str,
        body_bytes: u64,
    ) -> Option<ScanReport> {
        let started = Instant::now();
        let outcome = loop {
            tokio::time::sleep(SHARED_WAIT_POLL).await;
            if let Some(cached) = self.cached_report(key, body_bytes).await {
                break Some(cached);
            }
            match self.cache.lock_held(object).await {
                Ok(true) => continue,
                Ok(false) => break self.cached_report(key, body_bytes).await,
                Err(err) => {
                    self.note_cache_error("lock", &err);
                    break None;
                }
            }
        };
        self.metrics.record_scan_wait("shared", started.elapsed().as_secs_f64());
        outcome
    }

    fn join_or_lead(&self, key: &ContentKey) -> Role<'_> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(results) = inflight.get(key) {
            // A receiver whose sender is gone belongs to a leader that was cancelled.
            if results.has_changed().is_ok() {
                return Role::Waiter(results.clone());
            }
        }
        let (sender, receiver) = watch::channel(None);
        inflight.insert(*key, receiver);
        Role::Leader(Leader { scanner: self, key: *key, sender })
    }

    /// A clamd scan whose verdict is written to the cache (`store`) and whose failure refreshes
    /// the engine version. The caller bounds it by `scan.timeout_ms`.
    async fn clamd_scan(&self, key: &ContentKey, body: ScanInput<'_>, store: bool) -> ScanReport {
        let verdict = self.scan_with_clamd(body).await;
        if matches!(&verdict, Verdict::Unscanned { reason } if reason.is_engine_trouble()) {
            self.refresh_engine_version().await;
        }
        if store {
            self.store(key, &verdict).await;
        }
        ScanReport {
            verdict,
            sha256: key.hex(),
            body_bytes: body.len(),
            engine: self.engine_version(),
            cached: false,
        }
    }

    /// What the cache knows about a resource, for a decision at the request headers.
    pub async fn lookup_resource(&self, resource: &Resource) -> ResourceLookup {
        let key = ResourceKey::new(&resource.host, &resource.path_and_query);
        let hit = match self.cache.lookup_resource(&key).await {
            Ok(Some(hit)) => hit,
            Ok(None) => {
                self.metrics.record_cache_lookup("resource", self.deepest_tier(), "miss");
                return ResourceLookup::Miss;
            }
            Err(err) => {
                self.metrics.record_cache_lookup("resource", self.deepest_tier(), "error");
                self.note_cache_error("get", &err);
                return ResourceLookup::Miss;
            }
        };
        let tier = hit.tier.as_str();
        let ResourceEntry { validator, content, entry } = hit.value;
        if self.is_stale(&entry) {
            self.metrics.record_cache_lookup("resource", tier, "stale");
            return ResourceLookup::Miss;
        }
        self.metrics.record_cache_lookup("resource", tier, "hit");
        match entry.verdict {
            CachedVerdict::Clean => ResourceLookup::Clean { validator },
            CachedVerdict::Infected { signature } => ResourceLookup::Infected(ScanReport {
                verdict: Verdict::Infected { signature },
                sha256: content.hex(),
                body_bytes: 0,
                engine: Some(entry_engine(&entry.engine_version, entry.database_version)),
                cached: true,
            }),
        }
    }

    /// Stores a verdict under a resource key too, tied to the response's validator.
    pub async fn store_resource(&self, resource: &Resource, validator: &str, report: &ScanReport) {
        let Some(entry) = self.entry_for(&report.verdict) else { return };
        let Some(content) = ContentKey::from_hex(&report.sha256) else { return };
        let key = ResourceKey::new(&resource.host, &resource.path_and_query);
        let entry = ResourceEntry { validator: validator.to_string(), content, entry };
        if let Err(err) = self.cache.put_resource(&key, &entry).await {
            self.note_cache_error("put", &err);
        }
    }

    /// Starts a scan whose body arrives in pieces: each piece goes to clamd as it arrives.
    pub fn streaming(&self, source: Source) -> StreamingScan<'_> {
        StreamingScan {
            scanner: self,
            source,
            hasher: Sha256::new(),
            body_bytes: 0,
            state: StreamState::NotStarted,
        }
    }

    async fn scan_with_clamd(&self, body: ScanInput<'_>) -> Verdict {
        let mut session = match self.open_session().await {
            Ok(session) => session,
            Err(reason) => return Verdict::Unscanned { reason },
        };
        match body {
            ScanInput::Memory(bytes) => {
                for piece in bytes.chunks(CLAMD_CHUNK_BYTES) {
                    if let Err(reason) = session.send(piece).await {
                        return Verdict::Unscanned { reason };
                    }
                }
            }
            ScanInput::Held(held) => {
                let mut offset = 0u64;
                while offset < held.len() {
                    let piece = match held.read_at(offset, CLAMD_CHUNK_BYTES).await {
                        Ok(piece) if !piece.is_empty() => piece,
                        Ok(_) => break,
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot read a held body back from its temp file");
                            return Verdict::Unscanned { reason: UnscannedReason::EngineError };
                        }
                    };
                    offset += piece.len() as u64;
                    if let Err(reason) = session.send(&piece).await {
                        return Verdict::Unscanned { reason };
                    }
                }
            }
        }
        session.finish(&self.metrics).await
    }

    async fn open_session(&self) -> Result<ClamdSession, UnscannedReason> {
        let permit = tokio::time::timeout(self.settings.slot_wait, self.scan_slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                tracing::warn!(
                    wait_ms = self.settings.slot_wait.as_millis() as u64,
                    "no free clamd slot in time"
                );
                UnscannedReason::Timeout
            })?
            // The semaphore is never closed.
            .map_err(|_| UnscannedReason::EngineUnavailable)?;
        let scan = self.clamd.start_scan().await.map_err(|err| {
            tracing::warn!(error = %err, "cannot start a clamd scan");
            err.unscanned_reason()
        })?;
        Ok(ClamdSession { scan, _permit: permit, started: Instant::now(), sent_bytes: 0 })
    }

    /// A fresh cached verdict for this content, counting the lookup.
    async fn cached_report(&self, key: &ContentKey, body_bytes: u64) -> Option<ScanReport> {
        let hit = match self.cache.lookup(key).await {
            Ok(Some(hit)) => hit,
            Ok(None) => {
                self.metrics.record_cache_lookup("content", self.deepest_tier(), "miss");
                return None;
            }
            Err(err) => {
                self.metrics.record_cache_lookup("content", self.deepest_tier(), "error");
                self.note_cache_error("get", &err);
                return None;
            }
        };
        let tier = hit.tier.as_str();
        let entry = hit.value;
        if self.is_stale(&entry) {
            self.metrics.record_cache_lookup("content", tier, "stale");
            return None;
        }
        self.metrics.record_cache_lookup("content", tier, "hit");
        Some(ScanReport {
            engine: Some(entry_engine(&entry.engine_version, entry.database_version)),
            verdict: entry.verdict.into_verdict(),
            sha256: key.hex(),
            body_bytes,
            cached: true,
        })
    }

    /// The tier a miss or an error is counted against: the last one asked.
    fn deepest_tier(&self) -> &'static str {
        if self.cache.is_shared() {
            Tier::Redis.as_str()
        } else {
            Tier::Memory.as_str()
        }
    }

    /// A Clean entry from a signature database older than clamd's current one must be rescanned;
    /// an Infected entry stands until its TTL.
    fn is_stale(&self, entry: &CacheEntry) -> bool {
        if !matches!(entry.verdict, CachedVerdict::Clean) {
            return false;
        }
        let current = self.engine_version().and_then(|engine| engine.database_version);
        match (entry.database_version, current) {
            (Some(written), Some(current)) => written < current,
            // Written without a daily database, and clamd has one now.
            (None, Some(_)) => true,
            // clamd's version is not known (yet), or neither has a daily database.
            (_, None) => false,
        }
    }

    async fn store(&self, key: &ContentKey, verdict: &Verdict) {
        let Some(entry) = self.entry_for(verdict) else { return };
        if let Err(err) = self.cache.put(key, &entry).await {
            self.note_cache_error("put", &err);
        }
    }

    /// The cache entry for a verdict, recording the engine and database that produced it.
    fn entry_for(&self, verdict: &Verdict) -> Option<CacheEntry> {
        let cached = CachedVerdict::from_verdict(verdict)?;
        let engine = self.engine_version().unwrap_or_default();
        Some(CacheEntry {
            verdict: cached,
            engine_version: engine.engine,
            database_version: engine.database_version,
            scanned_at_unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        })
    }

    /// Asks clamd for its version after a failed scan (at most once a second): a failed scan is
    /// often clamd reloading its signatures.
    async fn refresh_engine_version(&self) {
        if !self.version_refresh.ready() {
            return;
        }
        if let Ok(version) = self.clamd.version().await {
            self.set_engine_version(version);
        }
    }

    fn unscanned(&self, key: &ContentKey, body_bytes: u64, reason: UnscannedReason) -> ScanReport {
        ScanReport {
            verdict: Verdict::Unscanned { reason },
            sha256: key.hex(),
            body_bytes,
            engine: self.engine_version(),
            cached: false,
        }
    }

    fn note_cache_error(&self, operation: &'static str, err: &crate::cache::CacheError) {
        self.metrics.record_cache_error(self.cache.kind(), operation);
        self.log_cache_error(operation, err);
    }

    /// Logs a cache failure at most once per interval: Redis down must not flood the log.
    fn log_cache_error(&self, operation: &'static str, err: &dyn std::fmt::Display) {
        if self.cache_error_log.ready() {
            tracing::warn!(
                backend = self.cache.kind(),
                operation,
                error = %err,
                "verdict cache unavailable; treating as a miss (logged at most every {CACHE_ERROR_LOG_INTERVAL_SECS} s)"
            );
        }
    }
}

/// Lets something happen at most once per interval, across threads, without a lock.
struct Throttle {
    interval_ms: u64,
    last_ms: AtomicU64,
}

impl Throttle {
    fn new(interval: Duration) -> Throttle {
        Throttle { interval_ms: interval.as_millis() as u64, last_ms: AtomicU64::new(0) }
    }

    /// True for the one caller that may act now.
    fn ready(&self) -> bool {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let last = self.last_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= self.interval_ms
            && self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// Bytes at least this many are hashed off the async worker (see [`hash_off_worker`]).
const BLOCKING_HASH_BYTES: usize = 256 * 1024;

/// Runs `hash`, which hashes `bytes` bytes. Hashing megabytes takes milliseconds; on the
/// multi-thread runtime a large input is hashed under `block_in_place`, so the worker's other
/// tasks (other streams, the Redis connection) move to another thread instead of waiting behind
/// it. (`block_in_place` would panic on a current-thread runtime: there it runs inline.)
pub(crate) fn hash_off_worker<R>(bytes: usize, hash: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi_thread =
        Handle::try_current().is_ok_and(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread);
    if bytes >= BLOCKING_HASH_BYTES && multi_thread {
        tokio::task::block_in_place(hash)
    } else {
        hash()
    }
}

/// The content key of a body, hashed off the worker when large.
fn content_key(body: &[u8]) -> ContentKey {
    hash_off_worker(body.len(), || ContentKey::of(body))
}

fn entry_engine(engine: &str, database_version: Option<u64>) -> EngineVersion {
    EngineVersion { engine: engine.to_string(), database_version, database_date: None }
}

/// A body to scan: whole in memory, or held by a stream (in memory or in a temp file).
#[derive(Clone, Copy)]
enum ScanInput<'a> {
    Memory(&'a [u8]),
    Held(&'a HeldBody),
}

impl ScanInput<'_> {
    fn len(&self) -> u64 {
        match self {
            ScanInput::Memory(bytes) => bytes.len() as u64,
            ScanInput::Held(held) => held.len(),
        }
    }
}

/// Whether this task scans an object, or waits for the task that does.
enum Role<'a> {
    Leader(Leader<'a>),
    Waiter(watch::Receiver<Option<ScanReport>>),
}

/// The task scanning one content key in this instance. Dropping it (after publishing, or when
/// cancelled) removes the key, so later requests find the cache or lead a new scan.
struct Leader<'a> {
    scanner: &'a Scanner,
    key: ContentKey,
    sender: watch::Sender<Option<ScanReport>>,
}

impl Leader<'_> {
    fn publish(self, report: ScanReport) {
        let _ = self.sender.send(Some(report));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut inflight = self.scanner.inflight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        inflight.remove(&self.key);
    }
}

/// One clamd INSTREAM connection holding a concurrency slot.
struct ClamdSession {
    scan: InstreamScan,
    _permit: OwnedSemaphorePermit,
    started: Instant,
    sent_bytes: u64,
}

impl ClamdSession {
    async fn send(&mut self, piece: &[u8]) -> Result<(), UnscannedReason> {
        self.sent_bytes += piece.len() as u64;
        self.scan.send(piece).await.map_err(|err| {
            tracing::warn!(error = %err, "clamd write failed");
            err.unscanned_reason()
        })
    }

    async fn finish(self, metrics: &Metrics) -> Verdict {
        let ClamdSession { scan, _permit, started, sent_bytes } = self;
        match scan.finish().await {
            Ok(reply) => {
                metrics.record_clamd_scan(started.elapsed().as_secs_f64(), sent_bytes);
                let verdict = reply.into_verdict();
                if let Verdict::Unscanned { reason } = &verdict {
                    tracing::warn!(reason = %reason, "clamd did not complete the scan");
                }
                verdict
            }
            Err(err) => {
                tracing::warn!(error = %err, "clamd scan failed");
                Verdict::Unscanned { reason: err.unscanned_reason() }
            }
        }
    }
}

enum StreamState {
    NotStarted,
    Sending(ClamdSession),
    Failed(UnscannedReason),
}

/// A scan fed piece by piece; see [`Scanner::streaming`].
pub struct StreamingScan<'a> {
    scanner: &'a Scanner,
    source: Source,
    hasher: Sha256,
    body_bytes: u64,
    state: StreamState,
}

impl StreamingScan<'_> {
    /// Hashes the piece and sends it to clamd. Once the body passes `max_scan_bytes`, or clamd
    /// fails, nothing more is sent; the pieces are still hashed so the report names the content.
    pub async fn push(&mut self, piece: &[u8]) {
        self.hasher.update(piece);
        self.body_bytes += piece.len() as u64;
        if self.body_bytes > self.scanner.settings.max_scan_bytes {
            // Dropping the session closes the connection and frees the slot at once.
            self.state = StreamState::Failed(UnscannedReason::TooLarge);
            return;
        }
        if matches!(self.state, StreamState::NotStarted) {
            self.state = match self.scanner.open_session().await {
                Ok(session) => StreamState::Sending(session),
                Err(reason) => StreamState::Failed(reason),
            };
        }
        if let StreamState::Sending(session) = &mut self.state {
            for part in piece.chunks(CLAMD_CHUNK_BYTES) {
                if let Err(reason) = session.send(part).await {
                    self.state = StreamState::Failed(reason);
                    break;
                }
            }
        }
    }

    /// Ends the body and returns the verdict. When clamd could not scan, a cached verdict for the
    /// same content still counts (a known-infected body stays refused while clamd is down).
    pub async fn finish(self) -> ScanReport {
        let StreamingScan { scanner, source, hasher, body_bytes, state } = self;
        let key = ContentKey::from_digest(hasher.finalize().into());
        let verdict = match state {
            StreamState::Sending(session) => session.finish(&scanner.metrics).await,
            // An empty body still gets a real scan, so that no path reports Clean unscanned.
            StreamState::NotStarted => scanner.scan_with_clamd(ScanInput::Memory(&[])).await,
            StreamState::Failed(reason) => Verdict::Unscanned { reason },
        };
        let report = match verdict {
            Verdict::Unscanned { reason } if reason != UnscannedReason::TooLarge => {
                if reason.is_engine_trouble() {
                    scanner.refresh_engine_version().await;
                }
                match scanner.cached_report(&key, body_bytes).await {
                    Some(cached) => cached,
                    None => scanner.unscanned(&key, body_bytes, reason),
                }
            }
            Verdict::Unscanned { reason } => scanner.unscanned(&key, body_bytes, reason),
            verdict => {
                scanner.store(&key, &verdict).await;
                ScanReport {
                    verdict,
                    sha256: key.hex(),
                    body_bytes,
                    engine: scanner.engine_version(),
                    cached: false,
                }
            }
        };
        scanner.metrics.record_verdict(source, &report.verdict);
        report
    }
}
