//! The one scan path: hash the body, consult the verdict cache, scan with clamd within the
//! concurrency limit, write Clean and Infected verdicts back. ext_proc and the Scan API share it.
//!
//! Nothing here returns an error: every failure becomes `Verdict::Unscanned { reason }`, and the
//! policy decides what the client gets. A cache failure is a miss, never a verdict.
//!
//! - **Staleness.** A Clean entry written under an older signature database than the one clamd
//!   now reports, or under a lower `cache.signature_epoch` than this instance's, is stale: the
//!   body is scanned again and the entry overwritten. Infected entries stand until their TTL. The
//!   current database version comes from the health probe's `VERSION` and from a `VERSION` after a
//!   failed scan, never per request. An entry is stamped with the version known *before* its scan
//!   started: a scan that straddled a signature reload may have used the old signatures.
//! - **Unscanned, briefly.** An `Unscanned` verdict that depends only on the bytes
//!   (`limits_exceeded`, `too_large`, `unsupported_encoding`) is cached by content key for
//!   `cache.unscanned_ttl_secs`, so a replayed decompression bomb costs one decode; a hit answers
//!   the same reason, and the policy decides as before. Never under a resource key.
//! - **One scan per object at a time.** Concurrent scans of the same content wait for the first
//!   (in process); with Redis, instances take a short lock so only one of them scans, and a
//!   waiter scans itself if the holder dies (its lock expires).
//! - **Encoded bodies.** A body with a `Content-Encoding` is decoded ([`crate::decode`]) piece by
//!   piece on its way to clamd, so clamd sees what the client will see; the caller keeps (and
//!   delivers) the encoded bytes. Every received byte reaches clamd: the received bytes are
//!   scanned too, as they are (a file hidden where decoders do not look, an upload the
//!   application stores undecoded), and when gzip gives the content each of its members is
//!   scanned on its own as well (browsers read only the first). Its cache key is derived from the
//!   received bytes and the encodings ([`encoded_content_key`]), and covers all these scans.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha512_256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cache::{
    CacheEntry, CachedVerdict, ContentKey, KnownResource, LockAttempt, Resource, ResourceEntry,
    ResourceVersion, Tier, VaryRecord, VerdictCache, IMMUTABLE_VALIDATOR,
};
use crate::clamd::{ClamdClient, ClamdError, InstreamScan, PendingReply, ScanReply};
use crate::config::ScanMethod;
use crate::config::{CacheMode, Config};
use crate::decode::{BodyDecoder, DecodeError, DecodeLimits, Encoding};
use crate::metrics::{Metrics, Source};
use crate::offload::{off_worker, BLOCKING_HASH_BYTES};
use crate::single_flight::{self, Role, SingleFlight};
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
    /// SHA-256 of the body as received (what the client gets, still encoded if it has a
    /// `Content-Encoding`), lower-case hex: what anyone can check with `sha256sum`, the same for a
    /// fresh scan, a content-cache hit and a resource-cache hit. For a body without encoding it is
    /// also its content key; an encoded body's content key is derived from it
    /// ([`encoded_content_key`]) and not reported.
    pub sha256: String,
    /// Bytes in the body as received (encoded, if it is).
    pub body_bytes: u64,
    /// The engine and database that produced the verdict, when known.
    pub engine: Option<EngineVersion>,
    /// Whether the verdict came from the cache.
    pub cached: bool,
}

/// One part of a multipart body and its own report ([`Scanner::scan_parts`]).
#[derive(Debug, Clone)]
pub struct PartReport {
    pub field: Option<String>,
    pub filename: Option<String>,
    /// The part after its `Content-Transfer-Encoding` (the part as sent is reported just before).
    pub decoded: bool,
    pub report: ScanReport,
}

impl PartReport {
    /// The part named for people: `field "upload", file "a.exe"`.
    pub fn name(&self) -> String {
        crate::multipart::describe(self.field.as_deref(), self.filename.as_deref(), self.decoded)
    }
}

/// A multipart body's answer ([`Scanner::scan_multipart`]) and its parts' own reports (none when
/// it was not split).
#[derive(Debug)]
pub struct MultipartReport {
    pub report: ScanReport,
    pub parts: Vec<PartReport>,
    /// The part whose report is the answer, if a part decided.
    pub decided_by: Option<usize>,
}

impl MultipartReport {
    /// The part that decided, named for people.
    pub fn deciding_part(&self) -> Option<String> {
        self.decided_by.map(|index| self.parts[index].name())
    }
}

impl ScanReport {
    /// The report of a clean verdict found in the cache under a resource key, for content
    /// `content` (the entry holds no body size or engine).
    pub fn cached_clean(content: &ContentKey) -> ScanReport {
        ScanReport {
            verdict: Verdict::Clean,
            sha256: content.hex(),
            body_bytes: 0,
            engine: None,
            cached: true,
        }
    }
}

/// What the cache knows about a resource (scheme, host, port, path and query, and the request
/// headers its response varies on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceLookup {
    /// Known infected with no real validator (`immutable`): refuse before the upstream is
    /// contacted; no response could show that the object changed.
    Infected(ScanReport),
    /// Known infected under a real validator: refuse the response if it still carries `known`'s
    /// validator; scan it if it does not (the object changed).
    InfectedUnlessChanged { known: KnownResource, report: ScanReport },
    /// Known clean, valid while the response carries `known`'s validator.
    Clean { known: KnownResource },
    /// Not known (or stale, stored under other values of the `Vary` headers, or the cache failed).
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
    /// Most decoded bytes per encoded byte of a body with a `Content-Encoding`
    /// ([`DecodeLimits::max_ratio`]; `u64::MAX`: no limit). More is `Unscanned { limits_exceeded }`.
    pub max_decode_ratio: u64,
    /// Longest a clamd slot stays taken, once a body has been sent whole, waiting for clamd to
    /// reply or close after clamgate stopped waiting (clamd keeps scanning an abandoned body).
    pub abandoned_scan_max_hold: Duration,
    /// Most bytes the decoders may read without decoding them ([`DecodeLimits::max_skipped_bytes`]).
    /// More is `Unscanned { unsupported_encoding }`.
    pub max_skipped_encoding_bytes: u64,
    /// `clamd.scan_method`: whether a clamd on a unix socket scans held bodies by descriptor.
    pub scan_method: ScanMethod,
    /// `scan.multipart_max_parts` and `scan.multipart_max_depth`.
    pub multipart_limits: crate::multipart::Limits,
}

impl ScannerSettings {
    pub fn from_config(config: &Config) -> ScannerSettings {
        ScannerSettings {
            max_scan_bytes: config.scan.max_scan_bytes,
            max_concurrent_scans: config.clamd.max_concurrent_scans,
            slot_wait: config.clamd.reply_timeout(),
            scan_timeout: config.scan.timeout(),
            scan_timeout_per_mib: config.scan.timeout_per_mib(),
            lock_ttl: config.cache.lock_ttl(),
            max_decode_ratio: config.scan.decode_ratio_limit(),
            abandoned_scan_max_hold: config.clamd.abandoned_scan_max_hold(),
            max_skipped_encoding_bytes: config.scan.max_skipped_encoding_bytes,
            scan_method: config.clamd.scan_method,
            multipart_limits: crate::multipart::Limits {
                max_parts: usize::try_from(config.scan.multipart_max_parts).unwrap_or(usize::MAX),
                max_depth: usize::try_from(config.scan.multipart_max_depth).unwrap_or(usize::MAX),
            },
        }
    }
}

/// Scans bodies with clamd through the verdict cache.
pub struct Scanner {
    clamd: ClamdClient,
    cache: VerdictCache,
    settings: ScannerSettings,
    scan_slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    engine: RwLock<Option<EngineVersion>>,
    inflight: SingleFlight<ContentKey, ScanReport>,
    cache_error_log: Throttle,
    rejected_value_log: Throttle,
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
            inflight: SingleFlight::default(),
            cache_error_log: Throttle::new(Duration::from_secs(CACHE_ERROR_LOG_INTERVAL_SECS)),
            rejected_value_log: Throttle::new(Duration::from_secs(CACHE_ERROR_LOG_INTERVAL_SECS)),
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

    /// Scans a body held whole (a FULL_DUPLEX or BUFFERED ext_proc body, a Scan API or CLI body),
    /// received with `encodings` (its `Content-Encoding`, in the order applied; empty: none). Its
    /// key is the SHA-256 the [`HeldBody`] computed as the pieces arrived.
    ///
    /// The cache is consulted first (unless `cache_mode` is `off`), so a body seen before is
    /// answered without clamd; a scan of the same body already under way is waited for.
    ///
    /// With `encodings`, clamd gets the decoded body, decoded piece by piece as it is sent (never
    /// whole in memory), within [`DecodeLimits`]: at most `max_scan_bytes` decoded
    /// (`Unscanned { too_large }` past it) and at most `max_decode_ratio` decoded bytes per
    /// encoded byte (`Unscanned { limits_exceeded }`); bytes that do not decode, more than
    /// `max_skipped_encoding_bytes` that the decoders skip (gzip header fields, zstd skippable
    /// frames) and more than [`crate::decode::MAX_GZIP_MEMBERS`] gzip members are
    /// `Unscanned { unsupported_encoding }`. What was decoded before such a stop is still scanned:
    /// if clamd finds a signature in it the body is `Infected`, never `Clean`.
    ///
    /// An encoded body gets more than one clamd scan, all within the one deadline: the decoded
    /// body, the body as received, and, when gzip gives the content and has several members, each
    /// member alone. It is `Infected` if any scan finds a signature (the first found is
    /// reported), `Clean` only if every scan is, and otherwise `Unscanned` for the first reason.
    ///
    /// With `store_as` (a response known by its resource), the verdict is stored under that
    /// resource version too, so a later request for it is answered from the cache.
    pub async fn scan_held(
        &self,
        body: &HeldBody,
        encodings: &[Encoding],
        source: Source,
        cache_mode: CacheMode,
        store_as: Option<&ResourceVersion>,
    ) -> ScanReport {
        let report = self.scan(Subject::new(body, encodings, body.content_key()), source, cache_mode).await;
        if let Some(version) = store_as {
            self.store_resource(version, &report).await;
        }
        report
    }

    /// An upload declared `multipart/*` (`boundary`: its boundary, or why it has none): the whole
    /// body as [`Self::scan_held`] scans it, then, unless that is unscanned, every part as a file
    /// of its own ([`Self::scan_parts`]), so that a file known by its hash is found inside the
    /// form that carries it. A body with a `Content-Encoding` is not split. The answer: the first
    /// infected part, else the whole if infected, else (a body that cannot be split)
    /// `Unscanned { malformed_multipart }`, else the first unscanned part, else the whole (clean).
    pub async fn scan_multipart(
        &self,
        body: &HeldBody,
        boundary: Result<&str, &str>,
        encodings: &[Encoding],
        spool: &crate::spool::Spool,
        source: Source,
        cache_mode: CacheMode,
    ) -> MultipartReport {
        let whole = self.scan_held(body, encodings, source, cache_mode, None).await;
        let unsplit = |report: ScanReport| MultipartReport { report, parts: Vec::new(), decided_by: None };
        if let Verdict::Unscanned { .. } = whole.verdict {
            return unsplit(whole);
        }
        let parts = match (encodings.is_empty(), boundary) {
            (false, _) => Err("a Content-Encoding over a multipart body".to_string()),
            (true, Err(why)) => Err(why.to_string()),
            (true, Ok(boundary)) => self
                .scan_parts(body, boundary, spool, source, cache_mode)
                .await
                .map_err(|err| err.to_string()),
        };
        let parts = match parts {
            Ok(parts) => parts,
            Err(_) if matches!(whole.verdict, Verdict::Infected { .. }) => return unsplit(whole),
            Err(why) => {
                tracing::warn!(reason = %why, bytes = whole.body_bytes, "cannot split a multipart body into its parts");
                let reason = UnscannedReason::MalformedMultipart;
                return unsplit(self.report_unscanned(&whole.sha256, whole.body_bytes, reason, source));
            }
        };
        let first = |infected: bool| {
            parts.iter().position(|part| match part.report.verdict {
                Verdict::Infected { .. } => infected,
                Verdict::Unscanned { .. } => !infected,
                Verdict::Clean => false,
            })
        };
        let decided_by = match first(true) {
            Some(index) => Some(index),
            None if matches!(whole.verdict, Verdict::Infected { .. }) => None,
            None => first(false),
        };
        let report = decided_by.map_or(whole, |index| parts[index].report.clone());
        MultipartReport { report, parts, decided_by }
    }

    /// Every part of a multipart body (`crate::multipart::split`), each scanned as a file of its
    /// own through the cache and clamd, in order.
    pub async fn scan_parts(
        &self,
        body: &HeldBody,
        boundary: &str,
        spool: &crate::spool::Spool,
        source: Source,
        cache_mode: CacheMode,
    ) -> Result<Vec<PartReport>, crate::multipart::MultipartError> {
        let parts = crate::multipart::split(body, boundary, spool, self.settings.multipart_limits).await?;
        let mut reports = Vec::with_capacity(parts.len());
        for part in parts {
            let report = self.scan_held(&part.body, &[], source, cache_mode, None).await;
            reports.push(PartReport {
                field: part.field,
                filename: part.filename,
                decoded: part.decoded,
                report,
            });
        }
        Ok(reports)
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

    async fn scan(&self, subject: Subject<'_>, source: Source, cache_mode: CacheMode) -> ScanReport {
        let body_bytes = subject.input.len();
        let report = if body_bytes > self.settings.max_scan_bytes {
            self.unscanned(&subject.received, body_bytes, UnscannedReason::TooLarge)
        } else {
            let scan = async {
                match cache_mode {
                    CacheMode::Off => self.clamd_scan(&subject, false).await,
                    CacheMode::Content | CacheMode::Resource => self.scan_once(&subject).await,
                }
            };
            let deadline = self.deadline_for(&subject);
            match tokio::time::timeout(deadline, scan).await {
                Ok(report) => report,
                Err(_) => {
                    tracing::warn!(
                        timeout_ms = deadline.as_millis() as u64,
                        bytes = body_bytes,
                        encoded = !subject.encodings.is_empty(),
                        "scan did not finish within scan.timeout_ms (+ scan.timeout_per_mib_ms per MiB)"
                    );
                    self.unscanned(&subject.received, body_bytes, UnscannedReason::Timeout)
                }
            }
        };
        self.metrics.record_verdict(source, &report.verdict);
        report
    }

    /// The whole-scan deadline: `scan_timeout` + `scan_timeout_per_mib` for every MiB clamd may
    /// get. That is the body's size without an encoding. An encoded body's decoded size is known
    /// only once it is decoded, and decoding stops at `max_scan_bytes`: it gets the deadline of a
    /// `max_scan_bytes` body (27.5 s with the defaults), so a well-compressed body is not cut short
    /// by the deadline of its encoded size, and a stuck scan still ends. The scans of an encoded
    /// body ([`Self::scan_encoded`]) share it: the decoded body and the received bytes are each at
    /// most `max_scan_bytes`, and clamd scans that well within the 25 s base.
    fn deadline_for(&self, subject: &Subject<'_>) -> Duration {
        let bytes = if subject.encodings.is_empty() {
            subject.input.len()
        } else {
            subject.input.len().max(self.settings.max_scan_bytes)
        };
        self.scan_deadline(bytes)
    }

    /// The cache, then one scan per content at a time: in process, then across instances.
    async fn scan_once(&self, subject: &Subject<'_>) -> ScanReport {
        loop {
            if let Some(cached) = self.cached_report(subject).await {
                return cached;
            }
            let leader = match self.inflight.join_or_lead(subject.key) {
                Role::Leader(leader) => leader,
                Role::Waiter(results) => {
                    let started = Instant::now();
                    let outcome = single_flight::wait(results).await;
                    self.metrics.record_scan_wait("local", started.elapsed().as_secs_f64());
                    match outcome {
                        Some(report) => return report,
                        // The leader went away without a result (cancelled): try again.
                        None => continue,
                    }
                }
            };
            let report = self.scan_as_leader(subject).await;
            leader.publish(report.clone());
            return report;
        }
    }

    /// Scans as this instance's leader for the subject's key, first taking the shared lock when
    /// the cache is shared, or waiting for the instance that holds it.
    async fn scan_as_leader(&self, subject: &Subject<'_>) -> ScanReport {
        let object = format!("content:{}", subject.key.hex());
        let token = match self.cache.try_lock(&object, self.settings.lock_ttl).await {
            Ok(LockAttempt::Acquired(token)) => Some(token),
            Ok(LockAttempt::Local) => None,
            Ok(LockAttempt::HeldElsewhere) => {
                if let Some(report) = self.wait_for_shared_scan(subject, &object).await {
                    return report;
                }
                None
            }
            Err(err) => {
                self.note_cache_error("lock", &err);
                None
            }
        };
        let report = self.clamd_scan(subject, true).await;
        if let Some(token) = token {
            if let Err(err) = self.cache.unlock(&object, &token).await {
                self.note_cache_error("unlock", &err);
            }
        }
        report
    }

    /// Waits while another instance scans the same content; returns its verdict once cached, or
    /// None when its lock is gone without one (it died, or its scan did not complete).
    async fn wait_for_shared_scan(&self, subject: &Subject<'_>, object: &str) -> Option<ScanReport> {
        let started = Instant::now();
        let outcome = loop {
            tokio::time::sleep(SHARED_WAIT_POLL).await;
            if let Some(cached) = self.cached_report(subject).await {
                break Some(cached);
            }
            match self.cache.lock_held(object).await {
                Ok(true) => continue,
                Ok(false) => break self.cached_report(subject).await,
                Err(err) => {
                    self.note_cache_error("lock", &err);
                    break None;
                }
            }
        };
        self.metrics.record_scan_wait("shared", started.elapsed().as_secs_f64());
        outcome
    }

    /// A clamd scan whose verdict is written to the cache (`store`, under the subject's key) and
    /// whose failure refreshes the engine version. The caller bounds it by `scan.timeout_ms`.
    ///
    /// The verdict is stamped with the engine version known before the scan: should clamd reload
    /// its signatures meanwhile, the scan may have used the old ones, so its `Clean` must be stale
    /// for the new database.
    async fn clamd_scan(&self, subject: &Subject<'_>, store: bool) -> ScanReport {
        let engine = self.engine_version();
        let verdict = self.scan_with_clamd(subject.input, subject.encodings).await;
        if matches!(&verdict, Verdict::Unscanned { reason } if reason.is_engine_trouble()) {
            self.refresh_engine_version().await;
        }
        if store {
            self.store(&subject.key, &verdict, engine.as_ref()).await;
        }
        ScanReport {
            verdict,
            sha256: subject.received.hex(),
            body_bytes: subject.input.len(),
            engine,
            cached: false,
        }
    }

    /// What the cache knows about a resource, for a decision at the request headers. An entry
    /// stored under other values of the request headers its response varied on is a miss.
    pub async fn lookup_resource(&self, resource: &Resource) -> ResourceLookup {
        let key = resource.id.key();
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
        let ResourceEntry { validator, vary, content, entry } = hit.value;
        if !vary.matches(&resource.request_headers) {
            self.metrics.record_cache_lookup("resource", tier, "miss");
            return ResourceLookup::Miss;
        }
        if self.is_stale(&entry) {
            self.metrics.record_cache_lookup("resource", tier, "stale");
            return ResourceLookup::Miss;
        }
        self.metrics.record_cache_lookup("resource", tier, "hit");
        let known = KnownResource { validator, vary: vary.names().to_vec(), content };
        match entry.verdict {
            CachedVerdict::Clean => ResourceLookup::Clean { known },
            CachedVerdict::Infected { signature } => {
                let report = ScanReport {
                    verdict: Verdict::Infected { signature },
                    sha256: content.hex(),
                    body_bytes: 0,
                    engine: Some(entry_engine(&entry.engine_version, entry.database_version)),
                    cached: true,
                };
                if known.validator == IMMUTABLE_VALIDATOR {
                    ResourceLookup::Infected(report)
                } else {
                    ResourceLookup::InfectedUnlessChanged { known, report }
                }
            }
            // Never stored under a resource key (`VerdictCache::put_resource` drops it).
            CachedVerdict::Unscanned { .. } => ResourceLookup::Miss,
        }
    }

    /// Stores a verdict under a resource key too, tied to the response's validator and to the
    /// request's values of the headers named by the response's `Vary` (`version.vary`).
    ///
    /// The entry records `report.sha256`, the SHA-256 of the body as received, so that a later
    /// resource hit reports the same `sha256` as the scan did, and a verified hit can be compared
    /// with it. For a body without encoding that is its content key; for an encoded body it is not
    /// (the resource entry's digest is never looked up as a content key).
    pub async fn store_resource(&self, version: &ResourceVersion, report: &ScanReport) {
        let Some(entry) = self.entry_for(&report.verdict, report.engine.as_ref()) else { return };
        let Some(content) = ContentKey::from_hex(&report.sha256) else { return };
        let ResourceVersion { resource, validator, vary } = version;
        let vary = VaryRecord::of(vary.clone(), &resource.request_headers);
        let entry = ResourceEntry { validator: validator.clone(), vary, content, entry };
        if let Err(err) = self.cache.put_resource(&resource.id.key(), &entry).await {
            self.note_cache_error("put", &err);
        }
    }

    /// Removes the resource entry of `resource` (a verified hit whose bytes did not match it), so
    /// that the next request for it is scanned.
    pub async fn forget_resource(&self, resource: &Resource) {
        if let Err(err) = self.cache.delete_resource(&resource.id.key()).await {
            self.note_cache_error("delete", &err);
        }
    }

    /// Takes the cross-instance lock on `object` (for `cache.lock_ttl_ms`), so that one instance
    /// does a piece of work (a download) while the others wait for its result in the cache.
    /// `Local` when there is no shared cache, or when Redis fails (the work then goes on here:
    /// doing it twice is safe, waiting forever is not).
    pub async fn lock_shared(&self, object: &str) -> LockAttempt {
        match self.cache.try_lock(object, self.settings.lock_ttl).await {
            Ok(attempt) => attempt,
            Err(err) => {
                self.note_cache_error("lock", &err);
                LockAttempt::Local
            }
        }
    }

    /// Releases a lock taken by [`Self::lock_shared`].
    pub async fn unlock_shared(&self, object: &str, token: &crate::cache::LockToken) {
        if let Err(err) = self.cache.unlock(object, token).await {
            self.note_cache_error("unlock", &err);
        }
    }

    /// Whether another instance still holds the lock on `object` (false when Redis fails).
    pub async fn shared_lock_held(&self, object: &str) -> bool {
        match self.cache.lock_held(object).await {
            Ok(held) => held,
            Err(err) => {
                self.note_cache_error("lock", &err);
                false
            }
        }
    }

    /// Starts a scan whose body arrives in pieces, held in `body` (an empty body from a
    /// [`crate::spool::Spool`]) until it is complete: no clamd slot is taken while the pieces
    /// trickle in, so a slow sender cannot hold a clamd thread.
    pub fn streaming(&self, source: Source, body: HeldBody) -> StreamingScan<'_> {
        StreamingScan { scanner: self, source, body }
    }

    /// The whole-scan deadline of a body of `bytes` bytes without encoding: `scan.timeout_ms`
    /// plus `scan.timeout_per_mib_ms` for every MiB (rounded up).
    pub fn scan_deadline(&self, bytes: u64) -> Duration {
        let mib = u32::try_from(bytes.div_ceil(1024 * 1024)).unwrap_or(u32::MAX);
        self.settings.scan_timeout + self.settings.scan_timeout_per_mib.saturating_mul(mib)
    }

    /// The clamd verdict on `body`: one scan of the bytes as they are, and for a body with
    /// `encodings` the scans [`Self::scan_encoded`] makes.
    async fn scan_with_clamd(&self, body: &HeldBody, encodings: &[Encoding]) -> Verdict {
        if encodings.is_empty() {
            self.scan_received(body).await
        } else {
            self.scan_encoded(body, encodings).await
        }
    }

    /// One clamd scan of the bytes as received: by descriptor (FILDES) when clamd is on this
    /// host and `clamd.scan_method` allows it, else streamed (INSTREAM).
    async fn scan_received(&self, body: &HeldBody) -> Verdict {
        if self.settings.scan_method == ScanMethod::Auto && self.clamd.can_scan_files() {
            return match self.open_file_session(body).await {
                Ok(session) => session.finish(&self.metrics).await,
                Err(reason) => Verdict::Unscanned { reason },
            };
        }
        let mut session = match self.open_session().await {
            Ok(session) => session,
            Err(reason) => return Verdict::Unscanned { reason },
        };
        match send_body(&mut session, body).await {
            Ok(()) => session.finish(&self.metrics).await,
            Err(reason) => Verdict::Unscanned { reason },
        }
    }

    /// Scans an encoded body so that every byte received reaches clamd in some form, one clamd
    /// scan after the other (one slot at a time, each streamed from the held body):
    /// 1. the decoded body, what a client that decodes sees;
    /// 2. the body as received: bytes the decoders skip (gzip header fields, zstd skippable
    ///    frames, brotli metadata), and what an application that stores an upload undecoded keeps;
    /// 3. when gzip gives the content (it was applied first) and the body has several members,
    ///    each member alone: a browser reads only the first, and a hash signature matches only a
    ///    whole file. A gzip applied over another encoding is not split: its members are pieces
    ///    of that encoding's stream, not files.
    ///
    /// A signature found stops the scans; so does clamd being unable to scan, since no later scan
    /// could make the body `Clean`.
    async fn scan_encoded(&self, body: &HeldBody, encodings: &[Encoding]) -> Verdict {
        let (mut verdict, members) = self.scan_decoded(body, encodings).await;
        if is_settled(&verdict) {
            return verdict;
        }
        verdict = combine_verdicts(verdict, self.scan_received(body).await);
        if members > 1 && !is_settled(&verdict) {
            verdict = combine_verdicts(verdict, self.scan_gzip_members(body, encodings).await);
        }
        verdict
    }

    /// One clamd scan of the decoding of `body`, and the number of gzip members of its content
    /// ([`BodyDecoder::gzip_member`]: 0 unless gzip gives the content).
    async fn scan_decoded(&self, body: &HeldBody, encodings: &[Encoding]) -> (Verdict, u32) {
        let mut session = match self.open_session().await {
            Ok(session) => session,
            Err(reason) => return (Verdict::Unscanned { reason }, 0),
        };
        let (sent, members) = self.send_decoded(&mut session, body, encodings).await;
        let verdict = match sent {
            Ok(()) => session.finish(&self.metrics).await,
            Err(SendFailure::Unscanned(reason)) => Verdict::Unscanned { reason },
            Err(SendFailure::Decode(err)) => self.finish_undecodable(session, encodings, &err).await,
        };
        (verdict, members)
    }

    /// Decodes `body` again and scans each member of the gzip layer that gives the content as a
    /// file of its own, one clamd scan per non-empty member, one after the other. Decoding stops
    /// where the first decoding did (the verdict on the decoded body already says why); the member
    /// it stopped in is scanned as far as it decoded.
    async fn scan_gzip_members(&self, body: &HeldBody, encodings: &[Encoding]) -> Verdict {
        let mut decoder = BodyDecoder::new(encodings, self.decode_limits());
        let mut piece = Vec::new();
        let large_body = body.len() >= BLOCKING_HASH_BYTES as u64;
        let mut verdict = Verdict::Clean;
        // The member being scanned, and its clamd session.
        let mut current: Option<(u32, ClamdSession)> = None;
        let mut offset = 0u64;
        'input: loop {
            let input = match read_held(body, offset).await {
                Ok(input) => input,
                Err(reason) => return combine_verdicts(verdict, Verdict::Unscanned { reason }),
            };
            offset += input.len() as u64;
            let end = input.is_empty() || offset >= body.len();
            decoder.push(input);
            if end {
                decoder.finish();
            }
            loop {
                let next = off_worker(large_body, || {
                    let decoded = decoder.next_piece()?.map(|decoded| {
                        piece.clear();
                        piece.extend_from_slice(decoded);
                    });
                    Ok::<_, DecodeError>(decoded.map(|()| decoder.gzip_member()))
                });
                let member = match next {
                    Ok(Some(member)) => member,
                    Ok(None) => break,
                    // Decoding stopped: the decoded scan has counted and reported why.
                    Err(_) => break 'input,
                };
                if current.as_ref().is_none_or(|(scanning, _)| *scanning != member) {
                    if let Some((_, session)) = current.take() {
                        verdict = combine_verdicts(verdict, session.finish(&self.metrics).await);
                        if is_settled(&verdict) {
                            return verdict;
                        }
                    }
                    match self.open_session().await {
                        Ok(session) => current = Some((member, session)),
                        Err(reason) => return combine_verdicts(verdict, Verdict::Unscanned { reason }),
                    }
                }
                if let Some((_, session)) = current.as_mut() {
                    if let Err(reason) = session.send(&piece).await {
                        return combine_verdicts(verdict, Verdict::Unscanned { reason });
                    }
                }
            }
            if end {
                break;
            }
        }
        if let Some((_, session)) = current {
            verdict = combine_verdicts(verdict, session.finish(&self.metrics).await);
        }
        verdict
    }

    /// The bounds on decoding one body.
    fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_output_bytes: self.settings.max_scan_bytes,
            max_ratio: self.settings.max_decode_ratio,
            max_skipped_bytes: self.settings.max_skipped_encoding_bytes,
        }
    }

    /// Sends the decoding of `body` to clamd, piece by piece as it is decoded: memory holds one
    /// encoded piece, one batch of decoded output and the decoders' state, whatever the body. That
    /// state is bounded by the stream's window (at most 16 MiB for brotli, 8 MiB for zstd, 32 KiB
    /// for gzip and deflate) and exists only while the scan holds a clamd slot, so at most
    /// `clamd.max_concurrent_scans` at once.
    ///
    /// Decoding is CPU work: a body of [`BLOCKING_HASH_BYTES`] or more, and any body once its
    /// output passed one batch, is decoded under `block_in_place` (see [`off_worker`]), so the
    /// worker's other tasks move to another thread instead of waiting behind it.
    ///
    /// Returns, with the outcome, the number of gzip members of the content decoded
    /// ([`BodyDecoder::gzip_member`]).
    async fn send_decoded(
        &self,
        session: &mut ClamdSession,
        body: &HeldBody,
        encodings: &[Encoding],
    ) -> (Result<(), SendFailure>, u32) {
        let mut decoder = BodyDecoder::new(encodings, self.decode_limits());
        let mut batch = Vec::with_capacity(CLAMD_CHUNK_BYTES + crate::decode::PIECE_BYTES);
        let large_body = body.len() >= BLOCKING_HASH_BYTES as u64;
        let mut offset = 0u64;
        let result = loop {
            let input = match read_held(body, offset).await {
                Ok(input) => input,
                Err(reason) => return (Err(SendFailure::Unscanned(reason)), decoder.gzip_member()),
            };
            offset += input.len() as u64;
            let end = input.is_empty() || offset >= body.len();
            decoder.push(input);
            if end {
                decoder.finish();
            }
            if let Err(failure) = drain_decoder(session, &mut decoder, &mut batch, large_body).await {
                break Err(failure);
            }
            if end {
                break Ok(());
            }
        };
        let members = decoder.gzip_member();
        let outcome = match &result {
            Ok(()) => "complete",
            Err(SendFailure::Decode(err)) => decode_outcome(err),
            // clamd failed: the decoding did not reach an end.
            Err(SendFailure::Unscanned(_)) => return (result, members),
        };
        self.metrics.record_decoded_body(encoding_label(encodings), outcome);
        (result, members)
    }

    /// The verdict on a body whose decoding stopped (`err`): what was decoded and sent is
    /// scanned all the same, and a signature found in it makes the body `Infected`; otherwise it
    /// is `Unscanned` for the decoding's reason, never `Clean`.
    async fn finish_undecodable(
        &self,
        session: ClamdSession,
        encodings: &[Encoding],
        err: &DecodeError,
    ) -> Verdict {
        let reason = unscanned_reason_for(err);
        tracing::warn!(
            encodings = %encoding_list(encodings),
            error = %err,
            reason = %reason,
            decoded_bytes = session.sent_bytes,
            "cannot decode the whole body for clamd; scanning what was decoded"
        );
        if session.sent_bytes == 0 {
            return Verdict::Unscanned { reason };
        }
        match session.finish(&self.metrics).await {
            infected @ Verdict::Infected { .. } => infected,
            _ => Verdict::Unscanned { reason },
        }
    }

    /// A clamd slot, and clamd scanning `body` by descriptor: the held temp file, or a memfd
    /// copy of a body held in memory. Any failure is `Unscanned`, never a fallback to `Clean`.
    async fn open_file_session(&self, body: &HeldBody) -> Result<ClamdSession, UnscannedReason> {
        let permit = self.scan_slot().await?;
        let file = body.scan_file().await.map_err(|err| {
            tracing::warn!(error = %err, "cannot give clamd the held body as a file");
            UnscannedReason::EngineError
        })?;
        let pending = self.clamd.start_file_scan(&file).await.map_err(|err| {
            tracing::warn!(error = %err, "cannot start a clamd FILDES scan");
            err.unscanned_reason()
        })?;
        self.metrics.record_clamd_method("fildes");
        Ok(ClamdSession {
            stage: Stage::Sent(pending),
            permit,
            started: Instant::now(),
            sent_bytes: body.len(),
            reply_timeout: self.clamd.timeouts().reply,
            max_hold: self.settings.abandoned_scan_max_hold,
        })
    }

    /// A free clamd slot, waited for at most `slot_wait`.
    async fn scan_slot(&self) -> Result<OwnedSemaphorePermit, UnscannedReason> {
        tokio::time::timeout(self.settings.slot_wait, self.scan_slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                tracing::warn!(
                    wait_ms = self.settings.slot_wait.as_millis() as u64,
                    "no free clamd slot in time"
                );
                UnscannedReason::Timeout
            })?
            // The semaphore is never closed.
            .map_err(|_| UnscannedReason::EngineUnavailable)
    }

    async fn open_session(&self) -> Result<ClamdSession, UnscannedReason> {
        let permit = self.scan_slot().await?;
        let scan = self.clamd.start_scan().await.map_err(|err| {
            tracing::warn!(error = %err, "cannot start a clamd scan");
            err.unscanned_reason()
        })?;
        self.metrics.record_clamd_method("instream");
        Ok(ClamdSession {
            stage: Stage::Streaming(scan),
            permit,
            started: Instant::now(),
            sent_bytes: 0,
            reply_timeout: self.clamd.timeouts().reply,
            max_hold: self.settings.abandoned_scan_max_hold,
        })
    }

    /// A fresh cached verdict for the subject's key, counting the lookup.
    async fn cached_report(&self, subject: &Subject<'_>) -> Option<ScanReport> {
        self.cached_report_for(&subject.key, &subject.received, subject.input.len()).await
    }

    /// A fresh cached verdict under `key`, reported for the body received as `received`.
    async fn cached_report_for(
        &self,
        key: &ContentKey,
        received: &ContentKey,
        body_bytes: u64,
    ) -> Option<ScanReport> {
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
            sha256: received.hex(),
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

    /// A Clean entry from a signature database older than clamd's current one, or from a lower
    /// `cache.signature_epoch` than this instance's, must be rescanned (a higher epoch is an
    /// instance already restarted with new custom signatures: fresh). An Infected entry stands
    /// until its TTL, an Unscanned one until its short TTL.
    fn is_stale(&self, entry: &CacheEntry) -> bool {
        if !matches!(entry.verdict, CachedVerdict::Clean) {
            return false;
        }
        if entry.signature_epoch < self.cache.signature_epoch() {
            return true;
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

    /// Writes a verdict under a content key: `Clean` and `Infected`, and briefly the `Unscanned`
    /// reasons that depend only on the bytes. `engine` is the version known before the scan.
    async fn store(&self, key: &ContentKey, verdict: &Verdict, engine: Option<&EngineVersion>) {
        let Some(cached) = CachedVerdict::from_content_verdict(verdict) else { return };
        let entry = self.stamp(cached, engine);
        if let Err(err) = self.cache.put(key, &entry).await {
            self.note_cache_error("put", &err);
        }
    }

    /// The resource-key entry for a verdict (`Clean` or `Infected` only), stamped with `engine`,
    /// the engine and database known before the scan (the report's).
    fn entry_for(&self, verdict: &Verdict, engine: Option<&EngineVersion>) -> Option<CacheEntry> {
        Some(self.stamp(CachedVerdict::from_verdict(verdict)?, engine))
    }

    /// An entry recording the engine and database that produced `verdict` and this instance's
    /// signature epoch.
    fn stamp(&self, verdict: CachedVerdict, engine: Option<&EngineVersion>) -> CacheEntry {
        let engine = engine.cloned().unwrap_or_default();
        CacheEntry {
            verdict,
            engine_version: engine.engine,
            database_version: engine.database_version,
            signature_epoch: self.cache.signature_epoch(),
            scanned_at_unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
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

    /// An `Unscanned` report for the body received as `received`.
    fn unscanned(&self, received: &ContentKey, body_bytes: u64, reason: UnscannedReason) -> ScanReport {
        ScanReport {
            verdict: Verdict::Unscanned { reason },
            sha256: received.hex(),
            body_bytes,
            engine: self.engine_version(),
            cached: false,
        }
    }

    fn note_cache_error(&self, operation: &'static str, err: &crate::cache::CacheError) {
        self.metrics.record_cache_error(self.cache.kind(), operation);
        if let crate::cache::CacheError::Rejected { key, reason } = err {
            self.note_rejected_value(key, *reason);
            return;
        }
        self.log_cache_error(operation, err);
    }

    /// A value read from Redis failed its HMAC check: counted every time, logged at most once per
    /// interval (without the value or any key material). Either someone wrote to Redis who should
    /// not, or an instance writes without (or with another) `cache.hmac_key_file`.
    fn note_rejected_value(&self, key: &'static str, reason: crate::cache::Rejection) {
        self.metrics.record_cache_rejected_value(key, reason.as_str());
        if self.rejected_value_log.ready() {
            tracing::warn!(
                key,
                reason = reason.as_str(),
                "verdict cache value refused: {reason}; treated as a miss and scanned. Forged, or written \
                 by an instance without this cache.hmac_key_file (logged at most every \
                 {CACHE_ERROR_LOG_INTERVAL_SECS} s; see clamgate_cache_rejected_values_total)"
            );
        }
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

/// The cache (and single-flight) key of a body received as the bytes whose SHA-256 is
/// `received`, with `encodings` (its `Content-Encoding`, in the order applied).
///
/// - No encoding: `received` itself, the SHA-256 of the bytes (the key clamgate always used).
/// - Encoded: `SHA-512/256("clamgate content-encoding v1\n" || tokens || "\n" || received)`,
///   where `tokens` are the encodings' names in the order applied joined by `,` (`gzip,br`) and
///   `received` the 32 raw bytes of the SHA-256. The verdict on encoded bytes is a verdict on their
///   decoding, so the same bytes served as identity or under another encoding get another key.
///
/// Why SHA-512/256 and not SHA-256: an identity key is the SHA-256 of whatever bytes a client
/// sends, so a SHA-256 of the string above would also be the identity key of a body made of that
/// string, and a harmless body could plant a `Clean` verdict under an infected encoded body's
/// key. SHA-512/256 (its own initial values, not a truncated SHA-256) shares the 32-byte space
/// but no construction with SHA-256; matching one with the other is a 2^128 search.
pub fn encoded_content_key(received: &ContentKey, encodings: &[Encoding]) -> ContentKey {
    if encodings.is_empty() {
        return *received;
    }
    let mut digest = Sha512_256::new();
    digest.update(b"clamgate content-encoding v1\n");
    digest.update(encoding_list(encodings).as_bytes());
    digest.update(b"\n");
    digest.update(received.as_bytes());
    ContentKey::from_digest(digest.finalize().into())
}

/// The encodings' names in the order applied, joined by `,` (e.g. `gzip,br`).
fn encoding_list(encodings: &[Encoding]) -> String {
    encodings.iter().map(|encoding| encoding.token()).collect::<Vec<_>>().join(",")
}

/// The `encoding` label of `clamgate_decoded_bodies_total`: the encoding's name, or `stacked`.
fn encoding_label(encodings: &[Encoding]) -> &'static str {
    match encodings {
        [one] => one.token(),
        _ => "stacked",
    }
}

/// The `outcome` label of `clamgate_decoded_bodies_total` for a decoding that stopped.
fn decode_outcome(err: &DecodeError) -> &'static str {
    match err {
        DecodeError::TooLarge { .. } => "too_large",
        DecodeError::RatioExceeded { .. } => "ratio_exceeded",
        DecodeError::SkippedTooMuch { .. } => "skipped_too_much",
        DecodeError::TooManyMembers { .. } => "too_many_members",
        DecodeError::Corrupt { .. } => "corrupt",
    }
}

/// Why a body whose decoding stopped is unscanned: decoded output over `max_scan_bytes` is
/// `too_large`, a decompression bomb (ratio) `limits_exceeded`; undecodable bytes, too many
/// skipped bytes or gzip members `unsupported_encoding`.
fn unscanned_reason_for(err: &DecodeError) -> UnscannedReason {
    match err {
        DecodeError::TooLarge { .. } => UnscannedReason::TooLarge,
        DecodeError::RatioExceeded { .. } => UnscannedReason::LimitsExceeded,
        DecodeError::SkippedTooMuch { .. }
        | DecodeError::TooManyMembers { .. }
        | DecodeError::Corrupt { .. } => UnscannedReason::UnsupportedEncoding,
    }
}

/// The verdict on a body from two scans of it, `first` the earlier: a signature either found
/// (the first one's, if both did); otherwise the first reason one of them was not scanned;
/// `Clean` only if both are.
fn combine_verdicts(first: Verdict, second: Verdict) -> Verdict {
    match (first, second) {
        (infected @ Verdict::Infected { .. }, _) | (_, infected @ Verdict::Infected { .. }) => infected,
        (unscanned @ Verdict::Unscanned { .. }, _) => unscanned,
        (Verdict::Clean, second) => second,
    }
}

/// Whether no further scan of the body can change `verdict`: it is `Infected`, or clamd could
/// not scan (a further scan would not find it able either, and could not make the body `Clean`).
fn is_settled(verdict: &Verdict) -> bool {
    match verdict {
        Verdict::Infected { .. } => true,
        Verdict::Unscanned { reason } => reason.is_engine_trouble(),
        Verdict::Clean => false,
    }
}

/// Why sending a body to clamd stopped before its end.
enum SendFailure {
    /// clamd, or reading the held body back, failed: the scan is over.
    Unscanned(UnscannedReason),
    /// The body could not be decoded (further): what was sent can still be scanned.
    Decode(DecodeError),
}

/// Sends `body` to clamd as it is.
async fn send_body(session: &mut ClamdSession, body: &HeldBody) -> Result<(), UnscannedReason> {
    let mut offset = 0u64;
    while offset < body.len() {
        let piece = read_held(body, offset).await?;
        if piece.is_empty() {
            break;
        }
        offset += piece.len() as u64;
        session.send(&piece).await?;
    }
    Ok(())
}

/// Sends what `decoder` can decode from the input pushed so far (all of it, once finished), in
/// batches of about [`CLAMD_CHUNK_BYTES`]. A batch cut short by a decoding error is sent before
/// the error is returned, so clamd sees every byte that did decode.
async fn drain_decoder(
    session: &mut ClamdSession,
    decoder: &mut BodyDecoder,
    batch: &mut Vec<u8>,
    large_body: bool,
) -> Result<(), SendFailure> {
    loop {
        let heavy = large_body || decoder.decoded_bytes() >= BLOCKING_HASH_BYTES as u64;
        let decoded = off_worker(heavy, || decode_batch(decoder, batch));
        if !batch.is_empty() {
            session.send(batch).await.map_err(SendFailure::Unscanned)?;
        }
        match decoded {
            Ok(Batch::Full) => continue,
            Ok(Batch::Drained) => return Ok(()),
            Err(err) => return Err(SendFailure::Decode(err)),
        }
    }
}

/// How [`decode_batch`] ended without an error.
enum Batch {
    /// The batch is full; the decoder may have more.
    Full,
    /// The decoder has nothing more until more input is pushed (or, once finished, at all).
    Drained,
}

/// Replaces `batch` with the decoder's next pieces, up to [`CLAMD_CHUNK_BYTES`] (one piece more at
/// most). On an error, `batch` keeps the pieces decoded before it.
fn decode_batch(decoder: &mut BodyDecoder, batch: &mut Vec<u8>) -> Result<Batch, DecodeError> {
    batch.clear();
    while batch.len() < CLAMD_CHUNK_BYTES {
        match decoder.next_piece()? {
            Some(piece) => batch.extend_from_slice(piece),
            None => return Ok(Batch::Drained),
        }
    }
    Ok(Batch::Full)
}

fn entry_engine(engine: &str, database_version: Option<u64>) -> EngineVersion {
    EngineVersion { engine: engine.to_string(), database_version, database_date: None }
}

/// Up to [`CLAMD_CHUNK_BYTES`] of a held body from `offset` (empty at the end).
async fn read_held(body: &HeldBody, offset: u64) -> Result<bytes::Bytes, UnscannedReason> {
    body.read_at(offset, CLAMD_CHUNK_BYTES).await.map_err(|err| {
        tracing::warn!(error = %err, "cannot read a held body back from its temp file");
        UnscannedReason::EngineError
    })
}

/// What one scan is about: the body, how it is encoded, and what it is known by.
#[derive(Clone, Copy)]
struct Subject<'a> {
    input: &'a HeldBody,
    /// The body's `Content-Encoding`, in the order applied (empty: none).
    encodings: &'a [Encoding],
    /// SHA-256 of the bytes received: reported as [`ScanReport::sha256`].
    received: ContentKey,
    /// The cache and single-flight key ([`encoded_content_key`]).
    key: ContentKey,
}

impl<'a> Subject<'a> {
    fn new(input: &'a HeldBody, encodings: &'a [Encoding], received: ContentKey) -> Subject<'a> {
        Subject { input, encodings, received, key: encoded_content_key(&received, encodings) }
    }
}

/// One clamd INSTREAM connection holding a concurrency slot.
///
/// The slot is held while clamd may be scanning: dropped before the body ends, the connection
/// closes and clamd discards the body, so the slot is free at once. Once the body has ended,
/// clamd scans it to its end even if clamgate stops waiting (scan deadline, client gone): the
/// reply is then read by a task of its own that keeps the slot until clamd replies or closes, at
/// most `max_hold`, so that clamd never runs more of clamgate's scans than
/// `clamd.max_concurrent_scans` (measured with clamd 1.4.6: an abandoned 1.2 s scan kept its
/// thread for the whole 1.2 s, however the connection was closed).
struct ClamdSession {
    stage: Stage,
    permit: OwnedSemaphorePermit,
    started: Instant,
    sent_bytes: u64,
    /// How long the caller waits for the reply (`clamd.reply_timeout_ms`).
    reply_timeout: Duration,
    /// How long the slot stays taken waiting for the reply (`clamd.abandoned_scan_max_hold_ms`,
    /// at least `reply_timeout`).
    max_hold: Duration,
}

/// How far a session's body has gone to clamd.
enum Stage {
    /// INSTREAM: the body is being streamed.
    Streaming(InstreamScan),
    /// clamd has the whole body (a FILDES descriptor) and is scanning it.
    Sent(PendingReply),
}

impl ClamdSession {
    async fn send(&mut self, piece: &[u8]) -> Result<(), UnscannedReason> {
        let Stage::Streaming(scan) = &mut self.stage else {
            // A FILDES session has nothing more to send: a caller bug, never a verdict.
            return Err(UnscannedReason::EngineError);
        };
        self.sent_bytes += piece.len() as u64;
        scan.send(piece).await.map_err(|err| {
            tracing::warn!(error = %err, "clamd write failed");
            err.unscanned_reason()
        })
    }

    async fn finish(self, metrics: &Arc<Metrics>) -> Verdict {
        let ClamdSession { stage, permit, started, sent_bytes, reply_timeout, max_hold } = self;
        let pending = match stage {
            Stage::Streaming(scan) => scan.end().await,
            Stage::Sent(pending) => Ok(pending),
        };
        let reply = match pending {
            Ok(pending) => {
                // Read in this task (no hop to another one on the common path); if the wait
                // ends first, the read goes on in a task of its own and keeps the slot until
                // clamd is done (`ReplyReader`'s drop).
                let hold = max_hold.max(reply_timeout);
                let mut reader = ReplyReader::new(pending, hold, permit, started, metrics.clone());
                match tokio::time::timeout(reply_timeout, &mut reader).await {
                    Ok(reply) => reply,
                    Err(_) => Err(ClamdError::Timeout { phase: "reply" }),
                }
            }
            // The body did not end: clamd is not scanning it, and the slot is free now.
            Err(err) => {
                drop(permit);
                Err(err)
            }
        };
        match reply {
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

/// clamd's reply being read (`PendingReply::read`).
type ReadingReply = Pin<Box<dyn Future<Output = Result<ScanReply, ClamdError>> + Send>>;

/// The read of clamd's reply to a scan, holding the scan's clamd slot. Awaited by the scan's
/// own task; dropped before the reply came (the scan's deadline, the reply timeout, or the
/// client went away), it moves the read to a task of its own, which gives the slot back once
/// clamd has answered or closed, or after `hold` (`clamd.abandoned_scan_max_hold_ms`), so that
/// clamgate never has more scans running in clamd than slots.
struct ReplyReader {
    read: Option<ReadingReply>,
    permit: Option<OwnedSemaphorePermit>,
    started: Instant,
    metrics: Arc<Metrics>,
}

impl ReplyReader {
    fn new(
        pending: PendingReply,
        hold: Duration,
        permit: OwnedSemaphorePermit,
        started: Instant,
        metrics: Arc<Metrics>,
    ) -> ReplyReader {
        ReplyReader { read: Some(Box::pin(pending.read(hold))), permit: Some(permit), started, metrics }
    }
}

impl Future for ReplyReader {
    type Output = Result<ScanReply, ClamdError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let Some(read) = self.read.as_mut() else {
            return Poll::Ready(Err(ClamdError::ClosedWithoutReply));
        };
        let reply = std::task::ready!(read.as_mut().poll(cx));
        self.read = None;
        self.permit = None;
        Poll::Ready(reply)
    }
}

impl Drop for ReplyReader {
    fn drop(&mut self) {
        let (Some(read), Some(permit)) = (self.read.take(), self.permit.take()) else { return };
        // Outside a runtime (it is shutting down) nothing is left to wait for.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (started, metrics) = (self.started, self.metrics.clone());
        runtime.spawn(async move {
            let reply = read.await;
            AbandonedScan::new(&reply, started.elapsed()).emit(&metrics);
            drop(permit);
        });
    }
}

/// A scan clamgate stopped waiting for while clamd was scanning, once its slot is given back.
struct AbandonedScan {
    /// `replied` or `closed`: clamd is done with it; `held_too_long`: it was not, after
    /// `clamd.abandoned_scan_max_hold_ms`, and the slot is given back anyway.
    outcome: &'static str,
    held_for: Duration,
}

impl AbandonedScan {
    fn new(reply: &Result<ScanReply, ClamdError>, held_for: Duration) -> AbandonedScan {
        let outcome = match reply {
            Ok(_) => "replied",
            Err(ClamdError::Timeout { .. }) => "held_too_long",
            Err(_) => "closed",
        };
        AbandonedScan { outcome, held_for }
    }

    fn emit(&self, metrics: &Metrics) {
        metrics.record_abandoned_scan(self.outcome);
        let held_ms = self.held_for.as_millis() as u64;
        if self.outcome == "held_too_long" {
            tracing::warn!(
                held_ms,
                "clamd did not finish an abandoned scan within clamd.abandoned_scan_max_hold_ms; \
                 its slot is given back, so clamd may now run more scans than clamd.max_concurrent_scans"
            );
        } else {
            tracing::debug!(
                outcome = self.outcome,
                held_ms,
                "clamd finished a scan clamgate had stopped waiting for"
            );
        }
    }
}

/// A scan fed piece by piece; see [`Scanner::streaming`].
///
/// The pieces are held (in memory within `bodies.memory_budget_bytes`, then in a temp file) and
/// hashed as they arrive; [`finish`](Self::finish) scans the whole body through
/// [`Scanner::scan_held`]: the cache, one scan per content, the whole-scan deadline, a clamd slot
/// only for the scan itself.
pub struct StreamingScan<'a> {
    scanner: &'a Scanner,
    source: Source,
    /// Held and hashed as it arrives; past `max_scan_bytes`, only hashed.
    body: HeldBody,
}

impl StreamingScan<'_> {
    /// Hashes the piece and holds it. Once the body passes `max_scan_bytes` nothing more is held
    /// (what was held is freed) and the verdict will be `Unscanned { too_large }`; the pieces are
    /// still hashed so the report names the content.
    ///
    /// An error means the piece could not be held (the spool's disk budget is full, see
    /// [`crate::spool::SpoolFull`], or the temp file failed): the scan cannot reach a verdict.
    pub async fn push(&mut self, piece: bytes::Bytes) -> std::io::Result<()> {
        if self.body.received() + piece.len() as u64 > self.scanner.settings.max_scan_bytes {
            self.body.stop_holding();
        }
        self.body.push(piece).await
    }

    /// Bytes pushed so far.
    pub fn body_bytes(&self) -> u64 {
        self.body.received()
    }

    /// When the whole body must have arrived, for a call that started at `started`:
    /// `scan.timeout_ms` plus `scan.timeout_per_mib_ms` per MiB received so far (bytes past
    /// `max_scan_bytes` are only hashed: they earn no more time).
    pub fn receive_deadline(&self, started: tokio::time::Instant) -> tokio::time::Instant {
        let counted = self.body_bytes().min(self.scanner.settings.max_scan_bytes);
        started + self.scanner.scan_deadline(counted)
    }

    /// Ends the body and scans it (see [`Scanner::scan_held`]); counted like any verdict.
    pub async fn finish(self) -> ScanReport {
        let StreamingScan { scanner, source, body } = self;
        if body.is_holding() {
            return scanner.scan_held(&body, &[], source, CacheMode::Content, None).await;
        }
        scanner.report_unscanned(
            &body.content_key().hex(),
            body.received(),
            UnscannedReason::TooLarge,
            source,
        )
    }

    /// Ends a body declared `multipart/*` (`boundary`: its boundary, or why it has none) and
    /// scans it whole and part by part ([`Scanner::scan_multipart`]).
    pub async fn finish_multipart(
        self,
        boundary: Result<&str, &str>,
        spool: &crate::spool::Spool,
    ) -> MultipartReport {
        let StreamingScan { scanner, source, body } = self;
        if !body.is_holding() {
            let key = body.content_key().hex();
            let report = scanner.report_unscanned(&key, body.received(), UnscannedReason::TooLarge, source);
            return MultipartReport { report, parts: Vec::new(), decided_by: None };
        }
        scanner.scan_multipart(&body, boundary, &[], spool, source, CacheMode::Content).await
    }

    /// The body did not arrive in time: `Unscanned { timeout }` for the bytes received so far
    /// (the report's `sha256` is theirs), counted like any verdict.
    pub fn timed_out(self) -> ScanReport {
        let key = self.body.content_key();
        self.scanner.report_unscanned(&key.hex(), self.body.received(), UnscannedReason::Timeout, self.source)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::config::Config;
    use crate::decode::PIECE_BYTES;

    fn scanner(config: &Config) -> Scanner {
        crate::app::build_scanner(config, Arc::new(Metrics::new())).expect("scanner")
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).expect("gzip");
        encoder.finish().expect("gzip")
    }

    fn limits(max_output_bytes: u64) -> DecodeLimits {
        DecodeLimits { max_output_bytes, max_ratio: u64::MAX, max_skipped_bytes: u64::MAX }
    }

    #[test]
    fn an_identity_body_keeps_its_sha256_as_key() {
        let received = ContentKey::of(b"body");
        assert_eq!(encoded_content_key(&received, &[]), received);
    }

    #[test]
    fn encoded_keys_depend_on_the_bytes_the_encodings_and_their_order() {
        let received = ContentKey::of(b"body");
        let keys = [
            received,
            encoded_content_key(&received, &[Encoding::Gzip]),
            encoded_content_key(&received, &[Encoding::Brotli]),
            encoded_content_key(&received, &[Encoding::Gzip, Encoding::Brotli]),
            encoded_content_key(&received, &[Encoding::Brotli, Encoding::Gzip]),
            encoded_content_key(&ContentKey::of(b"other"), &[Encoding::Gzip]),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Stable across runs and instances (Redis is shared): the documented derivation.
        let mut preimage = b"clamgate content-encoding v1\ngzip,br\n".to_vec();
        preimage.extend_from_slice(received.as_bytes());
        let expected = ContentKey::from_digest(Sha512_256::digest(&preimage).into());
        assert_eq!(encoded_content_key(&received, &[Encoding::Gzip, Encoding::Brotli]), expected);
    }

    #[test]
    fn no_identity_body_has_an_encoded_key() {
        // The body made of the derivation's input, sent as identity, must not share the key.
        let received = ContentKey::of(b"infected, encoded");
        let mut preimage = b"clamgate content-encoding v1\ngzip\n".to_vec();
        preimage.extend_from_slice(received.as_bytes());
        let encoded = encoded_content_key(&received, &[Encoding::Gzip]);
        assert_ne!(ContentKey::of(&preimage), encoded);
        assert_ne!(ContentKey::of(encoded.as_bytes()), encoded);
    }

    #[test]
    fn decoding_failures_map_to_their_unscanned_reasons_and_labels() {
        let corrupt = DecodeError::Corrupt { encoding: Encoding::Zstd, detail: "bad".into() };
        for (err, reason, outcome) in [
            (DecodeError::TooLarge { limit: 1 }, UnscannedReason::TooLarge, "too_large"),
            (
                DecodeError::RatioExceeded { ratio_limit: 1 },
                UnscannedReason::LimitsExceeded,
                "ratio_exceeded",
            ),
            (corrupt, UnscannedReason::UnsupportedEncoding, "corrupt"),
            (
                DecodeError::SkippedTooMuch { limit: 1 },
                UnscannedReason::UnsupportedEncoding,
                "skipped_too_much",
            ),
            (
                DecodeError::TooManyMembers { limit: 1 },
                UnscannedReason::UnsupportedEncoding,
                "too_many_members",
            ),
        ] {
            assert_eq!((unscanned_reason_for(&err), decode_outcome(&err)), (reason, outcome));
        }
        assert_eq!(encoding_label(&[Encoding::Brotli]), "br");
        assert_eq!(encoding_label(&[Encoding::Gzip, Encoding::Zstd]), "stacked");
        assert_eq!(encoding_list(&[Encoding::Gzip, Encoding::Zstd]), "gzip,zstd");
    }

    #[test]
    fn scans_of_one_body_combine_infected_first_then_the_first_reason_then_clean() {
        let infected = |signature: &str| Verdict::Infected { signature: signature.to_string() };
        let unscanned = |reason| Verdict::Unscanned { reason };
        let (too_large, timeout) = (UnscannedReason::TooLarge, UnscannedReason::Timeout);
        for (first, second, combined) in [
            (Verdict::Clean, Verdict::Clean, Verdict::Clean),
            (Verdict::Clean, infected("b"), infected("b")),
            (infected("a"), Verdict::Clean, infected("a")),
            (infected("a"), infected("b"), infected("a")),
            (unscanned(too_large), infected("b"), infected("b")),
            (infected("a"), unscanned(too_large), infected("a")),
            (unscanned(too_large), Verdict::Clean, unscanned(too_large)),
            (Verdict::Clean, unscanned(timeout), unscanned(timeout)),
            (unscanned(too_large), unscanned(timeout), unscanned(too_large)),
        ] {
            assert_eq!(
                combine_verdicts(first.clone(), second.clone()),
                combined,
                "{first:?} then {second:?}"
            );
        }
        assert!(is_settled(&infected("a")) && is_settled(&unscanned(timeout)));
        assert!(!is_settled(&Verdict::Clean) && !is_settled(&unscanned(too_large)));
        assert!(!is_settled(&unscanned(UnscannedReason::UnsupportedEncoding)));
    }

    #[test]
    fn batches_are_bounded_and_carry_every_decoded_byte() {
        let data: Vec<u8> = (0..3 * CLAMD_CHUNK_BYTES + 12_345).map(|i| (i * 7 % 251) as u8).collect();
        let mut decoder = BodyDecoder::new(&[Encoding::Gzip], limits(u64::MAX));
        decoder.push(gzip(&data));
        decoder.finish();
        let (mut batch, mut decoded) = (Vec::new(), Vec::new());
        loop {
            let outcome = decode_batch(&mut decoder, &mut batch).expect("decodes");
            assert!(batch.len() < CLAMD_CHUNK_BYTES + PIECE_BYTES, "{}", batch.len());
            decoded.extend_from_slice(&batch);
            if matches!(outcome, Batch::Drained) {
                break;
            }
        }
        assert_eq!(decoded, data);
    }

    #[test]
    fn a_batch_cut_by_a_limit_keeps_what_decoded_before_it() {
        let data = vec![b'a'; 3 * PIECE_BYTES];
        let mut decoder = BodyDecoder::new(&[Encoding::Gzip], limits(2 * PIECE_BYTES as u64 + 1));
        decoder.push(gzip(&data));
        decoder.finish();
        let mut batch = Vec::new();
        let err = decode_batch(&mut decoder, &mut batch).err();
        assert!(matches!(err, Some(DecodeError::TooLarge { .. })), "{err:?}");
        assert_eq!(batch, vec![b'a'; 2 * PIECE_BYTES]);
    }

    #[test]
    fn clean_entries_are_stale_under_a_newer_database_or_a_higher_epoch() {
        let mut config = Config::default();
        config.cache.signature_epoch = 2;
        let scanner = scanner(&config);
        let engine = |database_version| EngineVersion { database_version, ..EngineVersion::default() };
        scanner.set_engine_version(engine(Some(100)));
        let clean = |database_version, signature_epoch| CacheEntry {
            verdict: CachedVerdict::Clean,
            engine_version: "1.4.6".to_string(),
            database_version,
            signature_epoch,
            scanned_at_unix_secs: 0,
        };
        assert!(!scanner.is_stale(&clean(Some(100), 2)));
        assert!(scanner.is_stale(&clean(Some(99), 2)), "older database");
        assert!(scanner.is_stale(&clean(None, 2)), "no database then, one now");
        assert!(scanner.is_stale(&clean(Some(100), 1)), "lower epoch");
        assert!(scanner.is_stale(&clean(Some(100), 0)), "written before epochs (v1)");
        assert!(!scanner.is_stale(&clean(Some(100), 3)), "a higher epoch: an instance already restarted");
        assert!(!scanner.is_stale(&clean(Some(101), 2)));
        for verdict in [
            CachedVerdict::Infected { signature: "X".to_string() },
            CachedVerdict::Unscanned { reason: UnscannedReason::LimitsExceeded },
        ] {
            assert!(!scanner.is_stale(&CacheEntry { verdict, ..clean(Some(1), 0) }), "only Clean goes stale");
        }
    }

    #[test]
    fn entries_are_stamped_with_the_given_engine_and_this_instances_epoch() {
        let mut config = Config::default();
        config.cache.signature_epoch = 7;
        let scanner = scanner(&config);
        scanner.set_engine_version(EngineVersion { database_version: Some(200), ..EngineVersion::default() });
        let before =
            EngineVersion { engine: "1.4.6".to_string(), database_version: Some(199), database_date: None };
        let entry = scanner.entry_for(&Verdict::Clean, Some(&before)).expect("Clean is cacheable");
        assert_eq!((entry.database_version, entry.signature_epoch), (Some(199), 7));
        let unscanned = Verdict::Unscanned { reason: UnscannedReason::LimitsExceeded };
        assert_eq!(scanner.entry_for(&unscanned, Some(&before)), None, "never under a resource key");
    }

    #[tokio::test]
    async fn an_encoded_body_gets_the_deadline_of_the_largest_decoded_body() {
        let config = Config::default();
        let scanner = scanner(&config);
        let spool =
            crate::spool::Spool::new(1 << 30, 1 << 30, std::env::temp_dir(), Arc::new(Metrics::new()));
        let mut body = spool.hold();
        body.push(vec![0u8; 3 * 1024 * 1024].into()).await.expect("held in memory");
        let received = body.content_key();
        let identity = Subject::new(&body, &[], received);
        let encoded = Subject::new(&body, &[Encoding::Zstd], received);
        let (base, per_mib) = (config.scan.timeout(), config.scan.timeout_per_mib());
        assert_eq!(scanner.deadline_for(&identity), base + per_mib * 3);
        assert_eq!(scanner.deadline_for(&encoded), base + per_mib * 25, "25 MiB: max_scan_bytes");
    }
}
