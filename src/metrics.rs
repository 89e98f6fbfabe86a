//! Prometheus metrics: one `Metrics` struct, registered once at start-up and passed down.
//!
//! Metric names end in their unit; every label has a small, fixed set of values.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::policy::Direction;
use crate::verdict::{UnscannedReason, Verdict};

/// Where a scanned body came from: the `source` label of the verdict counters.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Source {
    /// A body a proxy passed through clamgate: an upload (`request`) or a download (`response`).
    Proxied(Direction),
    /// A body sent to one of clamgate's scan APIs (gRPC `Scan`, the CLI): `api`.
    Api,
    /// An object clamgate downloaded from its origin for nginx (`on_miss = "fetch"`): `fetch`.
    Fetched,
}

impl Source {
    /// The label value: `request`, `response` or `api`.
    pub const fn label(self) -> &'static str {
        match self {
            Source::Proxied(Direction::Request) => "request",
            Source::Proxied(Direction::Response) => "response",
            Source::Api => "api",
            Source::Fetched => "fetch",
        }
    }
}

impl EncodeLabelValue for Source {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        self.label().encode(encoder)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    source: Source,
    verdict: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    key: &'static str,
    tier: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectedValueLabels {
    key: &'static str,
    reason: &'static str,
}

/// A skip rule's outcome: `rule` is the policy's name (a configured, bounded set), `content_type`
/// one of the rule's types.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SkipLabels {
    rule: String,
    direction: Source,
    content_type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaitLabels {
    scope: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheErrorLabels {
    backend: &'static str,
    operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamErrorLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerificationLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SettingLabels {
    setting: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SettingCheckLabels {
    setting: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AbandonLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecodeLabels {
    encoding: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnauthenticatedLabels {
    service: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthAnswerLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRefusalLabels {
    reason: &'static str,
}

/// Every metric clamgate exports.
pub struct Metrics {
    registry: Registry,
    verdicts: Family<VerdictLabels, Counter>,
    unscanned: Family<ReasonLabels, Counter>,
    scan_duration: Histogram,
    scanned_bytes: Counter,
    cache_lookups: Family<CacheLabels, Counter>,
    cache_errors: Family<CacheErrorLabels, Counter>,
    cache_rejected_values: Family<RejectedValueLabels, Counter>,
    scan_waits: Family<WaitLabels, Counter>,
    scan_wait_duration: Histogram,
    ext_proc_messages: Family<MessageLabels, Counter>,
    blocked: Family<DecisionLabels, Counter>,
    stream_errors: Family<StreamErrorLabels, Counter>,
    clamd_up: Gauge,
    clamd_probes: Family<ProbeLabels, Counter>,
    clamd_database_version: Gauge,
    held_memory: Gauge,
    held_memory_peak: Gauge,
    held_disk: Gauge,
    spilled_bodies: Counter,
    memory_trims: Counter,
    memory_trim_seconds: Counter<f64, AtomicU64>,
    heap_in_use: Gauge,
    tasks_alive: Gauge,
    streams_open: Gauge,
    decoded_bodies: Family<DecodeLabels, Counter>,
    resource_verifications: Family<VerificationLabels, Counter>,
    skipped_bodies: Family<SkipLabels, Counter>,
    skip_type_mismatches: Family<SkipLabels, Counter>,
    clamd_setting_enabled: Family<SettingLabels, Gauge>,
    clamd_settings_checks: Family<SettingCheckLabels, Counter>,
    clamd_abandoned_scans: Family<AbandonLabels, Counter>,
    grpc_unauthenticated: Family<UnauthenticatedLabels, Counter>,
    auth_answers: Family<AuthAnswerLabels, Counter>,
    clamd_scans_started: Family<MethodLabels, Counter>,
    http_refused: Family<HttpRefusalLabels, Counter>,
    fetches: Family<FetchLabels, Counter>,
    fetch_duration: Histogram,
}

impl Metrics {
    /// Builds and registers every metric under the `clamgate_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("clamgate");
        let verdicts = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "verdicts",
            "Verdicts reached, by body source and verdict (cache hits included)",
            verdicts.clone(),
        );
        let unscanned = Family::<ReasonLabels, Counter>::default();
        registry.register("unscanned", "Bodies that could not be scanned, by reason", unscanned.clone());
        // 1 ms .. ~65 s: a tiny body on a warm clamd up to a large archive under load.
        let scan_duration = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "clamd_scan_duration_seconds",
            "Time from the first byte sent to clamd to its reply",
            scan_duration.clone(),
        );
        let scanned_bytes = Counter::default();
        registry.register("clamd_scanned_bytes", "Bytes sent to clamd for scanning", scanned_bytes.clone());
        let cache_lookups = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Verdict cache lookups by key kind (content, resource), tier that answered (memory, redis) and result (hit, miss, stale, error)",
            cache_lookups.clone(),
        );
        let cache_errors = Family::<CacheErrorLabels, Counter>::default();
        registry.register(
            "cache_errors",
            "Verdict cache failures (each one treated as a miss or a skipped write)",
            cache_errors.clone(),
        );
        let cache_rejected_values = Family::<RejectedValueLabels, Counter>::default();
        registry.register(
            "cache_rejected_values",
            "Values read from Redis and refused because their HMAC tag is missing (missing_tag) or does not verify (bad_tag), by key kind (content, resource); each one a miss",
            cache_rejected_values.clone(),
        );
        let scan_waits = Family::<WaitLabels, Counter>::default();
        registry.register(
            "scan_waits",
            "Scans not started because the same object was already being scanned, by scope (local: this instance, shared: another instance holding the Redis lock)",
            scan_waits.clone(),
        );
        let scan_wait_duration = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "scan_wait_duration_seconds",
            "Time spent waiting for another scan of the same object",
            scan_wait_duration.clone(),
        );
        let ext_proc_messages = Family::<MessageLabels, Counter>::default();
        registry.register(
            "ext_proc_messages",
            "Messages received from Envoy, by kind (request_headers, request_body, response_headers, response_body, request_trailers, response_trailers)",
            ext_proc_messages.clone(),
        );
        let blocked = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "blocked",
            "Requests answered by clamgate instead of the upstream, by HTTP status",
            blocked.clone(),
        );
        let stream_errors = Family::<StreamErrorLabels, Counter>::default();
        registry.register(
            "ext_proc_stream_errors",
            "ext_proc streams ended with an error status (protocol violations, internal failures)",
            stream_errors.clone(),
        );
        let clamd_up = Gauge::default();
        registry.register(
            "clamd_up",
            "1 while clamd answers and detects the self-test sample",
            clamd_up.clone(),
        );
        let clamd_probes = Family::<ProbeLabels, Counter>::default();
        registry.register(
            "clamd_probes",
            "Health probes of clamd (PING, VERSION, EICAR self-test) by result (usable, failed)",
            clamd_probes.clone(),
        );
        let clamd_database_version = Gauge::default();
        registry.register(
            "clamd_database_version",
            "The signature database version clamd last reported (0 when none)",
            clamd_database_version.clone(),
        );
        let held_memory = Gauge::default();
        registry.register(
            "held_body_memory_bytes",
            "Body bytes held in memory by streams waiting for a verdict, and the decode buffers of BUFFERED bodies (bounded by bodies.memory_budget_bytes: past it, bodies go to temp files)",
            held_memory.clone(),
        );
        let held_memory_peak = Gauge::default();
        registry.register(
            "held_body_memory_peak_bytes",
            "The most body bytes ever held in memory at once since start",
            held_memory_peak.clone(),
        );
        let held_disk = Gauge::default();
        registry.register(
            "held_body_disk_bytes",
            "Body bytes held in unlinked temp files by streams waiting for a verdict",
            held_disk.clone(),
        );
        let spilled_bodies = Counter::default();
        registry.register(
            "spilled_bodies",
            "Bodies moved to a temp file (over bodies.stream_memory_bytes, or the memory budget full)",
            spilled_bodies.clone(),
        );
        let memory_trims = Counter::default();
        registry.register(
            "memory_trims",
            "Times freed heap memory was handed back to the operating system after held bodies were let go (glibc malloc_trim)",
            memory_trims.clone(),
        );
        let memory_trim_seconds = Counter::<f64, AtomicU64>::default();
        registry.register(
            "memory_trim_seconds",
            "Time spent handing freed heap memory back (on a blocking thread)",
            memory_trim_seconds.clone(),
        );
        let heap_in_use = Gauge::default();
        registry.register(
            "heap_in_use_bytes",
            "Heap bytes allocated and not freed (glibc mallinfo2), every 5 s: unlike RSS, not raised by fragmentation or by freed memory the allocator keeps",
            heap_in_use.clone(),
        );
        let tasks_alive = Gauge::default();
        registry.register(
            "runtime_tasks_alive",
            "Tasks alive in clamgate's async runtime when /metrics was read (streams, connections, background loops): back to its idle level when the traffic stops",
            tasks_alive.clone(),
        );
        let streams_open = Gauge::default();
        registry.register("ext_proc_streams_open", "ext_proc streams being served now", streams_open.clone());
        let decoded_bodies = Family::<DecodeLabels, Counter>::default();
        registry.register(
            "decoded_bodies",
            "Bodies with a Content-Encoding decoded for clamd, by encoding (gzip, deflate, br, zstd, stacked) and outcome (complete, too_large, ratio_exceeded, skipped_too_much, too_many_members, corrupt)",
            decoded_bodies.clone(),
        );
        let resource_verifications = Family::<VerificationLabels, Counter>::default();
        registry.register(
            "resource_hit_verifications",
            "Resource-cache hits streamed through clamgate and compared with the entry (verify_resource_hits), by result (match, mismatch, partial: a 206 part, not compared)",
            resource_verifications.clone(),
        );
        let skipped_bodies = Family::<SkipLabels, Counter>::default();
        registry.register(
            "skipped_bodies",
            "Bodies not scanned because a policy's skip rule matched their headers and their first bytes were those of the declared type, by rule (policy), direction and content type",
            skipped_bodies.clone(),
        );
        let skip_type_mismatches = Family::<SkipLabels, Counter>::default();
        registry.register(
            "skip_type_mismatches",
            "Bodies a skip rule matched by their headers whose first bytes were not those of the declared type: scanned, by rule (policy), direction and declared content type",
            skip_type_mismatches.clone(),
        );
        let clamd_setting_enabled = Family::<SettingLabels, Gauge>::default();
        registry.register(
            "clamd_setting_enabled",
            "1 when the last settings self-test found the clamd.conf setting (AlertEncrypted, AlertExceedsMax) on, 0 when clamd answered OK to its self-test body",
            clamd_setting_enabled.clone(),
        );
        let clamd_settings_checks = Family::<SettingCheckLabels, Counter>::default();
        registry.register(
            "clamd_settings_checks",
            "Settings self-tests of clamd by setting (AlertEncrypted, AlertExceedsMax) and result (enabled, missing, failed)",
            clamd_settings_checks.clone(),
        );
        let clamd_abandoned_scans = Family::<AbandonLabels, Counter>::default();
        registry.register(
            "clamd_abandoned_scans",
            "Scans clamgate stopped waiting for while clamd was still scanning; their clamd slot stayed taken until clamd replied, closed, or clamd.abandoned_scan_max_hold_ms passed (outcome: replied, closed, held_too_long)",
            clamd_abandoned_scans.clone(),
        );
        let grpc_unauthenticated = Family::<UnauthenticatedLabels, Counter>::default();
        registry.register(
            "grpc_unauthenticated",
            "gRPC calls refused with UNAUTHENTICATED before anything was read, by service (ext_proc, scan_api) and reason (missing, malformed, wrong)",
            grpc_unauthenticated.clone(),
        );
        let clamd_scans_started = Family::<MethodLabels, Counter>::default();
        registry.register(
            "clamd_scans_started",
            "clamd scans started, by method (instream: the body streamed over the socket; fildes: clamd on this host given the held body's file descriptor)",
            clamd_scans_started.clone(),
        );
        let auth_answers = Family::<AuthAnswerLabels, Counter>::default();
        registry.register(
            "auth_answers",
            "Answers to nginx's /v1/auth, by result (clean, infected, unscanned_allowed, unscanned_denied)",
            auth_answers.clone(),
        );
        let http_refused = Family::<HttpRefusalLabels, Counter>::default();
        registry.register(
            "http_refused",
            "HTTP API requests refused before any decision, by reason (unauthenticated: no or wrong x-clamgate-token, bad_request: a header nginx must set is missing or repeated)",
            http_refused.clone(),
        );
        let fetches = Family::<FetchLabels, Counter>::default();
        registry.register(
            "fetches",
            "Downloads from origins for on_miss = \"fetch\", by outcome (scanned, joined: another fetch of the object answered, no_origin, origin_error, timeout, too_large, spool_full)",
            fetches.clone(),
        );
        // 1 ms .. ~65 s.
        let fetch_duration = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "fetch_duration_seconds",
            "Time from the start of a download from an origin to its verdict (download and scan)",
            fetch_duration.clone(),
        );
        Metrics {
            clamd_scans_started,
            auth_answers,
            http_refused,
            fetches,
            fetch_duration,
            resource_verifications,
            skipped_bodies,
            skip_type_mismatches,
            grpc_unauthenticated,
            decoded_bodies,
            clamd_setting_enabled,
            clamd_settings_checks,
            clamd_abandoned_scans,
            registry,
            held_memory,
            held_memory_peak,
            held_disk,
            spilled_bodies,
            memory_trims,
            memory_trim_seconds,
            heap_in_use,
            tasks_alive,
            streams_open,
            verdicts,
            unscanned,
            scan_duration,
            scanned_bytes,
            cache_lookups,
            cache_errors,
            cache_rejected_values,
            scan_waits,
            scan_wait_duration,
            ext_proc_messages,
            blocked,
            stream_errors,
            clamd_up,
            clamd_probes,
            clamd_database_version,
        }
    }

    /// One clamd scan started, by `instream` or `fildes`.
    pub fn record_clamd_method(&self, method: &'static str) {
        self.clamd_scans_started.get_or_create(&MethodLabels { method }).inc();
    }

    /// One answer to `/v1/auth`.
    pub fn record_auth_answer(&self, result: &'static str) {
        self.auth_answers.get_or_create(&AuthAnswerLabels { result }).inc();
    }

    /// One HTTP API request refused before any decision.
    pub fn record_http_refused(&self, reason: &'static str) {
        self.http_refused.get_or_create(&HttpRefusalLabels { reason }).inc();
    }

    /// One download from an origin ended (`seconds`: None when no download happened).
    pub fn record_fetch(&self, outcome: &'static str, seconds: Option<f64>) {
        self.fetches.get_or_create(&FetchLabels { outcome }).inc();
        if let Some(seconds) = seconds {
            self.fetch_duration.observe(seconds);
        }
    }

    /// Body bytes held in memory now, across streams (and the peak so far).
    pub fn set_held_memory(&self, bytes: u64) {
        self.held_memory.set(bytes as i64);
        if bytes as i64 > self.held_memory_peak.get() {
            self.held_memory_peak.set(bytes as i64);
        }
    }

    /// Body bytes added to (or, negative, removed from) temp files.
    pub fn add_held_disk(&self, bytes: i64) {
        self.held_disk.inc_by(bytes);
    }

    pub fn record_spilled_body(&self) {
        self.spilled_bodies.inc();
    }

    /// Freed heap memory was handed back, taking `took`.
    pub fn record_memory_trim(&self, took: std::time::Duration) {
        self.memory_trims.inc();
        self.memory_trim_seconds.inc_by(took.as_secs_f64());
    }

    pub fn set_heap_in_use(&self, bytes: u64) {
        self.heap_in_use.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn set_tasks_alive(&self, tasks: usize) {
        self.tasks_alive.set(i64::try_from(tasks).unwrap_or(i64::MAX));
    }

    /// Trims so far (for tests).
    pub fn memory_trims(&self) -> u64 {
        self.memory_trims.get()
    }

    /// An ext_proc stream opened (+1) or ended (-1).
    pub fn add_open_stream(&self, delta: i64) {
        self.streams_open.inc_by(delta);
    }

    /// Counts one verdict, and its reason when unscanned.
    pub fn record_verdict(&self, source: Source, verdict: &Verdict) {
        self.verdicts.get_or_create(&VerdictLabels { source, verdict: verdict.label() }).inc();
        if let Verdict::Unscanned { reason } = verdict {
            self.record_unscanned(*reason);
        }
    }

    fn record_unscanned(&self, reason: UnscannedReason) {
        self.unscanned.get_or_create(&ReasonLabels { reason: reason.as_str() }).inc();
    }

    /// Records one completed clamd scan.
    pub fn record_clamd_scan(&self, seconds: f64, bytes: u64) {
        self.scan_duration.observe(seconds);
        self.scanned_bytes.inc_by(bytes);
    }

    /// Counts a cache lookup: `key` is `content` or `resource`; `tier` the tier that answered
    /// (or the deepest one asked, for a miss); `result` is `hit`, `miss`, `stale` or `error`.
    pub fn record_cache_lookup(&self, key: &'static str, tier: &'static str, result: &'static str) {
        self.cache_lookups.get_or_create(&CacheLabels { key, tier, result }).inc();
    }

    /// Counts a wait for another scan of the same object; `scope` is `local` or `shared`.
    pub fn record_scan_wait(&self, scope: &'static str, seconds: f64) {
        self.scan_waits.get_or_create(&WaitLabels { scope }).inc();
        self.scan_wait_duration.observe(seconds);
    }

    /// Counts one message from Envoy.
    pub fn record_ext_proc_message(&self, kind: &'static str) {
        self.ext_proc_messages.get_or_create(&MessageLabels { kind }).inc();
    }

    /// Counts a value refused by its HMAC check: `key` is `content` or `resource`, `reason`
    /// `missing_tag` or `bad_tag`.
    pub fn record_cache_rejected_value(&self, key: &'static str, reason: &'static str) {
        self.cache_rejected_values.get_or_create(&RejectedValueLabels { key, reason }).inc();
    }

    /// Counts a failed cache call: `operation` is `get` or `put`.
    pub fn record_cache_error(&self, backend: &'static str, operation: &'static str) {
        self.cache_errors.get_or_create(&CacheErrorLabels { backend, operation }).inc();
    }

    /// Counts a request that clamgate answered itself (409, 503, 413, 502, 422).
    pub fn record_blocked(&self, status: u16) {
        self.blocked.get_or_create(&DecisionLabels { status }).inc();
    }

    /// Counts an ext_proc stream ended with an error status; `kind` is `protocol` (out-of-order or
    /// unsupported messages, a policy name that cannot be read), `body_mode` (Envoy's
    /// processing_mode or observability_mode would let a scanned body pass unscanned), `inbound`
    /// (a message Envoy sent could not be read), `spool` / `spool_full` (a body could not be
    /// held) or `internal` (the stream task panicked or was cancelled).
    pub fn record_stream_error(&self, kind: &'static str) {
        self.stream_errors.get_or_create(&StreamErrorLabels { kind }).inc();
    }

    /// Counts a gRPC call refused for lack of the shared token: `service` is `ext_proc` or
    /// `scan_api`; `reason` is `missing`, `malformed` or `wrong`.
    pub fn record_grpc_unauthenticated(&self, service: &'static str, reason: &'static str) {
        self.grpc_unauthenticated.get_or_create(&UnauthenticatedLabels { service, reason }).inc();
    }

    /// Counts a body decoded for clamd up to its end or a decoding error: `encoding` is `gzip`,
    /// `deflate`, `br`, `zstd` or `stacked` (more than one); `outcome` is `complete`, `too_large`,
    /// `ratio_exceeded`, `skipped_too_much` (more than `scan.max_skipped_encoding_bytes` skipped),
    /// `too_many_members` (gzip) or `corrupt`.
    pub fn record_decoded_body(&self, encoding: &'static str, outcome: &'static str) {
        self.decoded_bodies.get_or_create(&DecodeLabels { encoding, outcome }).inc();
    }

    /// Counts one verified resource-cache hit: `result` is `match`, `mismatch` or `partial`.
    /// A skip rule checked a body's first bytes: `skipped` (they matched) or a type mismatch.
    pub fn record_skip(&self, rule: &str, direction: Direction, content_type: &'static str, skipped: bool) {
        let labels =
            SkipLabels { rule: rule.to_string(), direction: Source::Proxied(direction), content_type };
        let family = if skipped { &self.skipped_bodies } else { &self.skip_type_mismatches };
        family.get_or_create(&labels).inc();
    }

    pub fn record_resource_verification(&self, result: &'static str) {
        self.resource_verifications.get_or_create(&VerificationLabels { result }).inc();
    }

    /// One settings self-test of clamd: `setting` is `AlertEncrypted` or `AlertExceedsMax`,
    /// `result` `enabled`, `missing` (clamd answered OK) or `failed` (no answer to judge by).
    pub fn record_settings_check(&self, setting: &'static str, result: &'static str) {
        self.clamd_settings_checks.get_or_create(&SettingCheckLabels { setting, result }).inc();
        match result {
            "enabled" => self.clamd_setting_enabled.get_or_create(&SettingLabels { setting }).set(1),
            "missing" => self.clamd_setting_enabled.get_or_create(&SettingLabels { setting }).set(0),
            _ => 0,
        };
    }

    /// A scan clamgate gave up on while clamd was scanning, once clamd is done with it (`outcome`:
    /// `replied`, `closed`) or the slot was taken back after the cap (`held_too_long`).
    pub fn record_abandoned_scan(&self, outcome: &'static str) {
        self.clamd_abandoned_scans.get_or_create(&AbandonLabels { outcome }).inc();
    }

    /// Publishes what one health probe learned about clamd.
    pub fn record_probe(&self, usable: bool, database_version: Option<u64>) {
        let result = if usable { "usable" } else { "failed" };
        self.clamd_probes.get_or_create(&ProbeLabels { result }).inc();
        self.clamd_up.set(i64::from(usable));
        if let Some(version) = database_version {
            self.clamd_database_version.set(i64::try_from(version).unwrap_or(i64::MAX));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_and_reasons_appear_in_the_exposition() {
        let metrics = Metrics::new();
        metrics.record_verdict(
            Source::Proxied(Direction::Response),
            &Verdict::Infected { signature: "X".into() },
        );
        metrics.record_verdict(
            Source::Proxied(Direction::Request),
            &Verdict::Unscanned { reason: UnscannedReason::EngineUnavailable },
        );
        metrics.record_cache_lookup("content", "memory", "hit");
        let text = metrics.encode();
        assert!(
            text.contains(r#"clamgate_verdicts_total{source="response",verdict="infected"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"clamgate_unscanned_total{reason="engine_unavailable"} 1"#), "{text}");
        assert!(
            text.contains(r#"clamgate_cache_lookups_total{key="content",tier="memory",result="hit"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn rejected_cache_values_are_counted_by_key_and_reason() {
        let metrics = Metrics::new();
        metrics.record_cache_rejected_value("content", "missing_tag");
        metrics.record_cache_rejected_value("content", "missing_tag");
        metrics.record_cache_rejected_value("resource", "bad_tag");
        let text = metrics.encode();
        for line in [
            r#"clamgate_cache_rejected_values_total{key="content",reason="missing_tag"} 2"#,
            r#"clamgate_cache_rejected_values_total{key="resource",reason="bad_tag"} 1"#,
        ] {
            assert!(text.contains(line), "{text}");
        }
    }
}
