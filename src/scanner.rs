//! The one scan path: hash the body, consult the verdict cache, scan with clamd within the
//! concurrency limit, write Clean and Infected verdicts back. ext_proc and the Scan API share it.
//!
//! Nothing here returns an error: every failure becomes `Verdict::Unscanned { reason }`, and the
//! policy decides what the client gets. A cache failure is a miss, never a verdict.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cache::{CacheEntry, CachedVerdict, ContentKey, VerdictCache};
use crate::clamd::{ClamdClient, InstreamScan};
use crate::metrics::{Metrics, Source};
use crate::verdict::{EngineVersion, UnscannedReason, Verdict};

/// Bodies are sent to clamd in pieces of this size (clamd does not care; this bounds each write).
const CLAMD_CHUNK_BYTES: usize = 256 * 1024;

/// How often, at most, a failing cache is reported in the log.
const CACHE_ERROR_LOG_INTERVAL_SECS: u64 = 10;

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

/// Limits for [`Scanner`].
#[derive(Debug, Clone)]
pub struct ScannerSettings {
    /// Bodies above this are `Unscanned { too_large }` without contacting clamd.
    pub max_scan_bytes: u64,
    /// Scans in flight to clamd at once.
    pub max_concurrent_scans: usize,
    /// How long a scan may wait for a free clamd slot before it is `Unscanned { timeout }`.
    pub slot_wait: Duration,
    /// Deadline for one whole buffered scan (slot wait, sending, reply).
    pub scan_timeout: Duration,
}

/// Scans bodies with clamd through the verdict cache.
pub struct Scanner {
    clamd: ClamdClient,
    cache: VerdictCache,
    settings: ScannerSettings,
    scan_slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    engine: RwLock<Option<EngineVersion>>,
    last_cache_error_log_secs: AtomicU64,
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
            last_cache_error_log_secs: AtomicU64::new(0),
        }
    }

    /// The clamd client, for the health probe.
    pub fn clamd(&self) -> &ClamdClient {
        &self.clamd
    }

    /// Records the engine and database version clamd reports (learned by the health probe).
    pub fn set_engine_version(&self, version: EngineVersion) {
        if let Ok(mut engine) = self.engine.write() {
            *engine = Some(version);
        }
    }

    /// The engine and database version clamd last reported.
    pub fn engine_version(&self) -> Option<EngineVersion> {
        self.engine.read().ok().and_then(|engine| engine.clone())
    }

    /// Scans a body that is already whole in memory (an Envoy BUFFERED body).
    ///
    /// The cache is consulted first, so a body seen before is answered without clamd.
    pub async fn scan_body(&self, body: &[u8], source: Source) -> ScanReport {
        let key = ContentKey::of(body);
        let body_bytes = body.len() as u64;
        let report = if body_bytes > self.settings.max_scan_bytes {
            self.unscanned(&key, body_bytes, UnscannedReason::TooLarge)
        } else if let Some(cached) = self.cached_report(&key, body_bytes).await {
            cached
        } else {
            let verdict =
                match tokio::time::timeout(self.settings.scan_timeout, self.scan_with_clamd(body)).await {
                    Ok(verdict) => verdict,
                    Err(_) => {
                        tracing::warn!(
                            timeout_ms = self.settings.scan_timeout.as_millis() as u64,
                            bytes = body_bytes,
                            "scan did not finish within scan.timeout_ms"
                        );
                        Verdict::Unscanned { reason: UnscannedReason::Timeout }
                    }
                };
            self.store(&key, &verdict).await;
            ScanReport {
                verdict,
                sha256: key.hex(),
                body_bytes,
                engine: self.engine_version(),
                cached: false,
            }
        };
        self.metrics.record_verdict(source, &report.verdict);
        report
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

    async fn scan_with_clamd(&self, body: &[u8]) -> Verdict {
        let mut session = match self.open_session().await {
            Ok(session) => session,
            Err(reason) => return Verdict::Unscanned { reason },
        };
        for piece in body.chunks(CLAMD_CHUNK_BYTES) {
            if let Err(reason) = session.send(piece).await {
                return Verdict::Unscanned { reason };
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

    async fn cached_report(&self, key: &ContentKey, body_bytes: u64) -> Option<ScanReport> {
        let backend = self.cache.kind();
        match self.cache.get(key).await {
            Ok(Some(entry)) => {
                self.metrics.record_cache_lookup(backend, "hit");
                Some(ScanReport {
                    verdict: entry.verdict.into_verdict(),
                    sha256: key.hex(),
                    body_bytes,
                    engine: Some(EngineVersion {
                        engine: entry.engine_version,
                        database_version: entry.database_version,
                        database_date: None,
                    }),
                    cached: true,
                })
            }
            Ok(None) => {
                self.metrics.record_cache_lookup(backend, "miss");
                None
            }
            Err(err) => {
                self.metrics.record_cache_lookup(backend, "error");
                self.metrics.record_cache_error(backend, "get");
                self.log_cache_error("get", &err);
                None
            }
        }
    }

    async fn store(&self, key: &ContentKey, verdict: &Verdict) {
        let Some(cached) = CachedVerdict::from_verdict(verdict) else { return };
        let engine = self.engine_version().unwrap_or_default();
        let entry = CacheEntry {
            verdict: cached,
            engine_version: engine.engine,
            database_version: engine.database_version,
            scanned_at_unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        if let Err(err) = self.cache.put(key, &entry).await {
            self.metrics.record_cache_error(self.cache.kind(), "put");
            self.log_cache_error("put", &err);
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

    /// Logs a cache failure at most once per interval: Redis down must not flood the log.
    fn log_cache_error(&self, operation: &'static str, err: &dyn std::fmt::Display) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let last = self.last_cache_error_log_secs.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= CACHE_ERROR_LOG_INTERVAL_SECS
            && self
                .last_cache_error_log_secs
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                backend = self.cache.kind(),
                operation,
                error = %err,
                "verdict cache unavailable; treating as a miss (logged at most every {CACHE_ERROR_LOG_INTERVAL_SECS} s)"
            );
        }
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
            StreamState::NotStarted => scanner.scan_with_clamd(&[]).await,
            StreamState::Failed(reason) => Verdict::Unscanned { reason },
        };
        let report = match verdict {
            Verdict::Unscanned { reason } if reason != UnscannedReason::TooLarge => {
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
