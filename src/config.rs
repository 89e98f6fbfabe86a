//! Configuration: one TOML file, every key overridable by a `CLAMGATE_*` environment variable.
//!
//! The structs below are the schema. Keys carry their unit in the name (`_ms`, `_secs`,
//! `_bytes`); unknown keys are rejected; every problem is reported at once with its key path.
//!
//! # Loading
//! [`Config::load`] starts from the defaults, applies the file, then the environment, and checks
//! in three passes so that one run reports everything:
//! 1. structure: the parsed TOML table is walked against the schema (every unknown key, every
//!    value of the wrong type); a rejected value is dropped and its default stands in;
//! 2. environment: `CLAMGATE_<SECTION>_<KEY>` (nested tables joined with `_`, upper case;
//!    `CLAMGATE_POLICIES_<NAME>_<KEY>` for a named policy), each value parsed per its key's type
//!    (lists comma-separated); an unknown `CLAMGATE_*` variable is an error;
//! 3. meaning: ranges, addresses, URLs, files (skipping keys already rejected, so one mistake is
//!    one error).
//!
//! Named policies (`[policies.NAME]`) are checked against the keys of `[policy]`, every key
//! optional; between passes 2 and 3 each is laid over a copy of `[policy]` as the file and the
//! environment left it, so it inherits what it does not set.
//!
//! The schema (key paths and types) is derived from `Config::default()` serialized to TOML, plus
//! what serialization cannot show: `Option` keys, strings with a narrower type (socket addresses,
//! enums) and the tables of named tables (`policies`). Tests check all three against serde, so
//! they cannot drift.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use toml::{Table, Value};

use crate::verdict::UnscannedReason;

/// The whole configuration of one clamgate instance.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: ListenConfig,
    pub clamd: ClamdConfig,
    pub scan: ScanConfig,
    pub cache: CacheConfig,
    pub ext_proc: ExtProcConfig,
    pub bodies: BodiesConfig,
    pub response: ResponseConfig,
    /// The default policy: routes that name no policy use it.
    pub policy: PolicyConfig,
    /// Named policies, selected per route by Envoy (route metadata `clamgate.policy`, or gRPC
    /// metadata `x-clamgate-policy`). Each
    /// starts from `[policy]` and overrides what it sets. Names: lower-case letters and digits.
    /// [`Config::policy_named`] finds one.
    pub policies: BTreeMap<String, PolicyConfig>,
    pub log: LogConfig,
}

/// Where clamgate listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// gRPC listener: Envoy ext_proc, the clamgate.v1 Scan API and grpc.health.v1.
    pub grpc_addr: SocketAddr,
    /// Admin HTTP listener (`/healthz`, `/readyz`, `/metrics`). Loopback by default: it reveals
    /// counters and versions and must not be exposed.
    pub admin_addr: SocketAddr,
    /// File holding the shared token Envoy must send as gRPC metadata `authorization: Bearer
    /// TOKEN` (trailing newline ignored; at least 16 printable ASCII characters). When set,
    /// ext_proc and Scan API calls without it are refused with UNAUTHENTICATED; grpc.health.v1
    /// stays open. Unset: no token is asked for. The token itself is never logged.
    pub grpc_token_file: Option<String>,
    /// PEM certificate chain of the gRPC listener; with `grpc_tls_key_file`, the listener speaks
    /// TLS only.
    pub grpc_tls_cert_file: Option<String>,
    /// PEM private key of `grpc_tls_cert_file`.
    pub grpc_tls_key_file: Option<String>,
    /// PEM CA certificates for mTLS: every client (Envoy, health checks included) must present a
    /// certificate signed by one of them. Needs `grpc_tls_cert_file` and `grpc_tls_key_file`.
    pub grpc_tls_client_ca_file: Option<String>,
}

/// How to reach clamd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClamdConfig {
    /// `tcp://HOST:PORT` or `unix:///path/to/clamd.ctl`.
    pub address: String,
    /// Time allowed to open a connection to clamd.
    pub connect_timeout_ms: u64,
    /// Time allowed for any single write to clamd (a stalled clamd fails the scan, never passes it).
    pub write_timeout_ms: u64,
    /// Time allowed, after the last chunk, for clamd's reply (the scan itself).
    pub reply_timeout_ms: u64,
    /// Scans in flight to clamd at once; keep it at or below clamd's `MaxThreads`.
    pub max_concurrent_scans: usize,
    /// How often clamd is pinged to drive gRPC health and `/readyz`.
    pub health_interval_ms: u64,
    /// Whether clamgate is ready only when clamd reports encrypted archives and bodies past its
    /// scan limits (`AlertEncrypted yes`, `AlertExceedsMax yes`): without them clamd answers `OK`
    /// for bodies it did not scan, and clamgate would cache them clean. `false` only warns and
    /// counts (`clamgate_clamd_setting_enabled`).
    pub require_alert_settings: bool,
    /// How often clamd's `AlertEncrypted` and `AlertExceedsMax` are checked with self-test bodies
    /// while they pass (a failing check is repeated at every health probe).
    pub settings_check_interval_ms: u64,
    /// Longest a clamd slot stays taken after a body was sent, waiting for clamd's reply, when
    /// clamgate has stopped waiting (scan deadline, client gone): clamd keeps scanning such a body,
    /// so the slot is freed only when clamd replies or closes, or after this.
    pub abandoned_scan_max_hold_ms: u64,
}

/// Limits on what is scanned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanConfig {
    /// Largest body sent to clamd. Must not exceed clamd's `StreamMaxLength`; larger bodies are
    /// `Unscanned { too_large }` without contacting clamd.
    pub max_scan_bytes: u64,
    /// Deadline for one whole scan of a buffered body: the cache lookup, waiting for another
    /// scan of the same body, waiting for a free clamd slot, sending the body, and clamd's reply.
    /// Past it the body is `Unscanned { timeout }`. Keep it below Envoy's `message_timeout` so
    /// the client gets clamgate's 503 with `retry-after`, not 504.
    pub timeout_ms: u64,
    /// Added to `timeout_ms` for every MiB of the body, so a large body gets the time clamd needs
    /// for it (clamd scans ~70 MB/s with a small database, 3-10x slower with the official one).
    /// An encoded body gets the deadline of a `max_scan_bytes` body (its decoded size is unknown).
    pub timeout_per_mib_ms: u64,
    /// Most decoded bytes per encoded byte for a body with a `Content-Encoding`, checked once
    /// 1 MiB is decoded; more is `Unscanned { limits_exceeded }` (a decompression bomb). 0 turns the
    /// check off (`max_scan_bytes` still bounds the decoded size).
    pub max_decode_ratio: u64,
    /// Most bytes of a body with a `Content-Encoding` that its decoders may read without decoding
    /// them (gzip `FEXTRA`, `FNAME` and `FCOMMENT` fields of every member, zstd skippable frames);
    /// more is `Unscanned { unsupported_encoding }`. The received bytes are scanned as well, but a
    /// file hidden there is never scanned as a file.
    pub max_skipped_encoding_bytes: u64,
}

/// How bodies are held while they are scanned (see README, "Bodies of any size").
///
/// Scanned downloads use FULL_DUPLEX_STREAMED: Envoy streams the body to clamgate, which holds it
/// (in memory up to the budgets, in an unlinked temp file beyond), scans it whole, then answers
/// 409 or sends it back. Uploads too, on routes that send request bodies FULL_DUPLEX (the shipped
/// Envoy config does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BodiesConfig {
    /// Body bytes held in memory by all streams together; past it bodies go to temp files.
    pub memory_budget_bytes: u64,
    /// Body bytes one stream holds in memory before it moves its body to a temp file.
    pub stream_memory_bytes: u64,
    /// Directory for temp files (empty: the system's temp directory). Files are unlinked when
    /// created, so none outlives its stream, even if clamgate is killed.
    pub spool_dir: String,
    /// Body bytes in temp files by all streams together; a body that fits neither in memory nor
    /// here is refused (the stream fails: Envoy answers 503), so disk use is bounded too.
    pub disk_budget_bytes: u64,
}
/// The verdict cache. `Debug` redacts `redis_password` and the passwords in the URLs.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` (TLS) for a standalone Redis.
    /// When neither this nor `redis_cluster_urls` is set, only the in-process cache is used.
    pub redis_url: Option<String>,
    /// Seed nodes of a Redis Cluster (`redis://host:port` or `rediss://host:port` each).
    /// Mutually exclusive with `redis_url`. From the environment: comma-separated.
    pub redis_cluster_urls: Vec<String>,
    /// ACL user name for Redis; overrides a user name in the URLs.
    pub redis_username: Option<String>,
    /// Password for Redis (AUTH); overrides a password in the URLs. Never logged.
    pub redis_password: Option<String>,
    /// PEM file of CA certificates trusted for `rediss://` (absent: the system's roots).
    pub redis_tls_ca_file: Option<String>,
    /// Multiplexed connections to a standalone Redis, used round-robin.
    pub redis_pool_size: usize,
    /// How long a verdict is kept.
    pub ttl_secs: u64,
    /// Upper bound on entries held by the in-process cache (the only tier without Redis, the
    /// first tier in front of it otherwise).
    pub memory_max_entries: usize,
    /// How long the in-process tier keeps an entry read from or written to Redis. Without
    /// Redis, entries live `ttl_secs`.
    pub memory_ttl_secs: u64,
    /// Life of the Redis lock that lets one instance scan an object while others wait. If its
    /// holder dies, the lock expires and a waiter scans.
    pub lock_ttl_ms: u64,
    /// Time allowed for one Redis call; past it the lookup is a miss and the scan goes on.
    pub redis_timeout_ms: u64,
    /// Prefix of every Redis key clamgate writes.
    pub key_prefix: String,
    /// Raise it (by one) after adding your own signatures to clamd: every `Clean` entry written
    /// under a lower epoch is stale and rescanned. Stamped into every entry; an entry with a higher
    /// epoch than this instance's is used, so a rolling restart is safe.
    pub signature_epoch: u64,
    /// How long an `Unscanned` verdict that depends only on the bytes (`limits_exceeded`,
    /// `too_large`, `unsupported_encoding`) is cached by content key, so that a decompression bomb
    /// replayed is not decoded and scanned again each time. 0 turns it off. At most `ttl_secs`.
    pub unscanned_ttl_secs: u64,
    /// File holding the key (at least 32 bytes; surrounding whitespace ignored) with which every
    /// value written to Redis is authenticated (HMAC-SHA256 over the value and its key). When set,
    /// a value read from Redis without a valid tag is refused (a miss). Never logged.
    pub hmac_key_file: Option<String>,
    /// During a key rotation, the previous key's file: values tagged with it are still accepted
    /// for reads (never used for writes).
    pub hmac_previous_key_file: Option<String>,
}

/// The Envoy ext_proc server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtProcConfig {
    /// Largest gRPC message accepted from Envoy (and by the Scan API). A BUFFERED body arrives
    /// as one message, so this must be above Envoy's buffer limit (tonic's default is 4 MiB).
    pub max_message_bytes: usize,
}

/// What clients are told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseConfig {
    /// Add `x-clamgate-verdict: clean` to clean requests and responses.
    pub verdict_header: bool,
    /// Show the signature name in 409 bodies.
    pub expose_signature: bool,
    /// `retry-after` sent with 503 answers for engine trouble.
    pub retry_after_secs: u64,
}

/// What to do with each kind of verdict, and how to use the cache: `[policy]`, the default, and
/// each `[policies.NAME]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Scan request bodies (uploads).
    pub scan_requests: bool,
    /// Scan response bodies (downloads).
    pub scan_responses: bool,
    /// Scan, log and count, but never block. For roll-out only.
    pub report_only: bool,
    /// The action for each reason a body may go unscanned.
    pub on_unscanned: UnscannedActions,
    /// Which verdict cache keys this policy uses: `content` (SHA-256 of the body), `resource`
    /// (also scheme + host + port + path + Vary + validator, looked up at the request headers),
    /// or `off`.
    pub cache_mode: CacheMode,
    /// The upstream never changes an object under a URL (package mirrors): allow resource keys
    /// for responses without a validator. Only for upstreams that are really immutable.
    pub immutable: bool,
    /// With `cache_mode = "resource"`: a resource-cache hit's body streams through clamgate
    /// (FULL_DUPLEX, each piece sent straight back) and its SHA-256 is compared with the entry's
    /// at the end; a mismatch deletes the entry, is counted and audited. Detection after the
    /// fact: the bytes have reached the client by then.
    pub verify_resource_hits: bool,
}

/// The cache keys a policy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// Content keys only: a body's SHA-256.
    Content,
    /// Content keys and resource keys (scheme + host + port + path + Vary + validator), decided
    /// at the headers.
    Resource,
    /// No cache reads or writes.
    Off,
}

impl CacheMode {
    /// Every mode.
    pub const ALL: [CacheMode; 3] = [CacheMode::Content, CacheMode::Resource, CacheMode::Off];
    /// The names used in the config, in the order of [`CacheMode::ALL`].
    pub const NAMES: [&'static str; 3] =
        [CacheMode::Content.as_str(), CacheMode::Resource.as_str(), CacheMode::Off.as_str()];

    /// The name used in the config: `content`, `resource` or `off`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CacheMode::Content => "content",
            CacheMode::Resource => "resource",
            CacheMode::Off => "off",
        }
    }
}

/// `deny` or `allow`, per [`crate::verdict::UnscannedReason`]. All default to `deny`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnscannedActions {
    pub too_large: UnscannedAction,
    pub engine_unavailable: UnscannedAction,
    pub timeout: UnscannedAction,
    pub engine_error: UnscannedAction,
    pub limits_exceeded: UnscannedAction,
    pub encrypted: UnscannedAction,
    pub unsupported_encoding: UnscannedAction,
    pub partial_content: UnscannedAction,
}

/// A policy action for a body that could not be scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnscannedAction {
    Deny,
    Allow,
}

impl UnscannedAction {
    /// Every action.
    pub const ALL: [UnscannedAction; 2] = [UnscannedAction::Deny, UnscannedAction::Allow];
    /// The names used in the config, in the order of [`UnscannedAction::ALL`].
    pub const NAMES: [&'static str; 2] = [UnscannedAction::Deny.as_str(), UnscannedAction::Allow.as_str()];

    /// The name used in the config: `deny` or `allow`.
    pub const fn as_str(self) -> &'static str {
        match self {
            UnscannedAction::Deny => "deny",
            UnscannedAction::Allow => "allow",
        }
    }
}

impl UnscannedActions {
    /// The action configured for `reason`.
    pub fn action(&self, reason: UnscannedReason) -> UnscannedAction {
        match reason {
            UnscannedReason::TooLarge => self.too_large,
            UnscannedReason::EngineUnavailable => self.engine_unavailable,
            UnscannedReason::Timeout => self.timeout,
            UnscannedReason::EngineError => self.engine_error,
            UnscannedReason::LimitsExceeded => self.limits_exceeded,
            UnscannedReason::Encrypted => self.encrypted,
            UnscannedReason::UnsupportedEncoding => self.unsupported_encoding,
            UnscannedReason::PartialContent => self.partial_content,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `clamgate=debug,info`.
    pub level: String,
    /// `json` (one object per line) or `text`.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    /// Every format.
    pub const ALL: [LogFormat; 2] = [LogFormat::Json, LogFormat::Text];
    /// The names used in the config, in the order of [`LogFormat::ALL`].
    pub const NAMES: [&'static str; 2] = [LogFormat::Json.as_str(), LogFormat::Text.as_str()];

    /// The name used in the config: `json` or `text`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
            grpc_token_file: None,
            grpc_tls_cert_file: None,
            grpc_tls_key_file: None,
            grpc_tls_client_ca_file: None,
        }
    }
}

impl Default for ClamdConfig {
    fn default() -> Self {
        ClamdConfig {
            address: "tcp://127.0.0.1:3310".to_string(),
            connect_timeout_ms: 1_000,
            write_timeout_ms: 10_000,
            reply_timeout_ms: 60_000,
            max_concurrent_scans: 8,
            health_interval_ms: 5_000,
            require_alert_settings: true,
            settings_check_interval_ms: 60_000,
            // clamd's own default MaxScanTime: by then clamd has given up on the body itself.
            abandoned_scan_max_hold_ms: 120_000,
        }
    }
}

impl ListenConfig {
    /// Whether the gRPC listener authenticates its callers (a token, or client certificates).
    pub fn grpc_authenticated(&self) -> bool {
        self.grpc_token_file.is_some() || self.grpc_tls_client_ca_file.is_some()
    }

    /// How the gRPC listener authenticates callers, for the start-up log line.
    pub fn grpc_auth_description(&self) -> &'static str {
        match (self.grpc_token_file.is_some(), self.grpc_tls_client_ca_file.is_some()) {
            (true, true) => "token+mtls",
            (true, false) => "token",
            (false, true) => "mtls",
            (false, false) => "none",
        }
    }

    /// Warnings about a gRPC listener reachable from the network without authentication, or
    /// with a token that crosses the network in clear text.
    fn grpc_auth_warnings(&self) -> Vec<String> {
        let grpc = self.grpc_addr;
        if grpc.ip().is_loopback() {
            return Vec::new();
        }
        if !self.grpc_authenticated() {
            return vec![format!(
                "listen.grpc_addr: {grpc} is not a loopback address and the gRPC listener has no \
                 authentication (neither listen.grpc_token_file nor listen.grpc_tls_client_ca_file is \
                 set): anyone who can reach it can pose as Envoy and write verdicts (a Clean entry for \
                 any URL, an Infected one that refuses a download for cache.ttl_secs)"
            )];
        }
        if self.grpc_tls_cert_file.is_none() {
            return vec![format!(
                "listen.grpc_token_file: the gRPC listener {grpc} is not on loopback and has no TLS \
                 (listen.grpc_tls_cert_file): the token crosses the network in clear text, and anyone \
                 on the path can read and replay it"
            )];
        }
        Vec::new()
    }
}

impl ClamdConfig {
    /// `connect_timeout_ms`.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// `write_timeout_ms`.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// `reply_timeout_ms`.
    pub fn reply_timeout(&self) -> Duration {
        Duration::from_millis(self.reply_timeout_ms)
    }

    /// `abandoned_scan_max_hold_ms`.
    pub fn abandoned_scan_max_hold(&self) -> Duration {
        Duration::from_millis(self.abandoned_scan_max_hold_ms)
    }

    /// `health_interval_ms`.
    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms)
    }

    /// `settings_check_interval_ms`.
    pub fn settings_check_interval(&self) -> Duration {
        Duration::from_millis(self.settings_check_interval_ms)
    }
}

impl ScanConfig {
    /// `timeout_ms`: the base of the whole-scan deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// `timeout_per_mib_ms`: added to the deadline for every MiB.
    pub fn timeout_per_mib(&self) -> Duration {
        Duration::from_millis(self.timeout_per_mib_ms)
    }

    /// `max_decode_ratio` as [`crate::decode::DecodeLimits::max_ratio`] takes it: 0 (off) is
    /// `u64::MAX`.
    pub fn decode_ratio_limit(&self) -> u64 {
        match self.max_decode_ratio {
            0 => u64::MAX,
            ratio => ratio,
        }
    }
}

impl Default for ScanConfig {
    fn default() -> Self {
        // Matches `StreamMaxLength 25M` in the shipped clamd.conf.
        ScanConfig {
            max_scan_bytes: 25 * 1024 * 1024,
            timeout_ms: 25_000,
            timeout_per_mib_ms: 100,
            max_decode_ratio: 10_000,
            // pzstd adds 12 bytes a frame, a zstd seekable seek table 12 (or 16) bytes a frame,
            // gzip a file name: 64 KiB passes them all with room, and hides no file of note.
            max_skipped_encoding_bytes: 64 * 1024,
        }
    }
}

impl Default for BodiesConfig {
    fn default() -> Self {
        BodiesConfig {
            memory_budget_bytes: 256 * 1024 * 1024,
            stream_memory_bytes: 8 * 1024 * 1024,
            spool_dir: String::new(),
            disk_budget_bytes: 8 * 1024 * 1024 * 1024,
        }
    }
}

impl BodiesConfig {
    /// The directory for temp files.
    pub fn spool_dir(&self) -> std::path::PathBuf {
        if self.spool_dir.is_empty() {
            std::env::temp_dir()
        } else {
            std::path::PathBuf::from(&self.spool_dir)
        }
    }
}

impl CacheConfig {
    /// `lock_ttl_ms`: the life of the cross-instance scan lock.
    pub fn lock_ttl(&self) -> Duration {
        Duration::from_millis(self.lock_ttl_ms)
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            redis_url: None,
            redis_cluster_urls: Vec::new(),
            redis_username: None,
            redis_password: None,
            redis_tls_ca_file: None,
            redis_pool_size: 2,
            ttl_secs: 24 * 60 * 60,
            memory_max_entries: 100_000,
            memory_ttl_secs: 300,
            lock_ttl_ms: 30_000,
            redis_timeout_ms: 250,
            key_prefix: "clamgate:".to_string(),
            signature_epoch: 0,
            unscanned_ttl_secs: 300,
            hmac_key_file: None,
            hmac_previous_key_file: None,
        }
    }
}

impl Default for ExtProcConfig {
    fn default() -> Self {
        // Envoy's buffer limit in the shipped config is 16 MiB; leave room for headers.
        ExtProcConfig { max_message_bytes: 20 * 1024 * 1024 }
    }
}

impl Default for ResponseConfig {
    fn default() -> Self {
        ResponseConfig { verdict_header: true, expose_signature: true, retry_after_secs: 30 }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            scan_requests: true,
            scan_responses: true,
            report_only: false,
            on_unscanned: UnscannedActions::default(),
            cache_mode: CacheMode::Content,
            immutable: false,
            verify_resource_hits: false,
        }
    }
}

impl Default for UnscannedActions {
    fn default() -> Self {
        UnscannedActions {
            too_large: UnscannedAction::Deny,
            engine_unavailable: UnscannedAction::Deny,
            timeout: UnscannedAction::Deny,
            engine_error: UnscannedAction::Deny,
            limits_exceeded: UnscannedAction::Deny,
            encrypted: UnscannedAction::Deny,
            unsupported_encoding: UnscannedAction::Deny,
            partial_content: UnscannedAction::Deny,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".to_string(), format: LogFormat::Json }
    }
}

impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Configs get logged with `?config`; the Redis password must not go with them.
        let CacheConfig {
            redis_url,
            redis_cluster_urls,
            redis_username,
            redis_password,
            redis_tls_ca_file,
            redis_pool_size,
            ttl_secs,
            memory_max_entries,
            memory_ttl_secs,
            lock_ttl_ms,
            redis_timeout_ms,
            key_prefix,
            signature_epoch,
            unscanned_ttl_secs,
            hmac_key_file,
            hmac_previous_key_file,
        } = self;
        let cluster_urls: Vec<String> = redis_cluster_urls.iter().map(|url| redact_url(url)).collect();
        f.debug_struct("CacheConfig")
            .field("redis_url", &redis_url.as_deref().map(redact_url))
            .field("redis_cluster_urls", &cluster_urls)
            .field("redis_username", redis_username)
            .field("redis_password", &redis_password.as_ref().map(|_| "***"))
            .field("redis_tls_ca_file", redis_tls_ca_file)
            .field("redis_pool_size", redis_pool_size)
            .field("ttl_secs", ttl_secs)
            .field("memory_max_entries", memory_max_entries)
            .field("memory_ttl_secs", memory_ttl_secs)
            .field("lock_ttl_ms", lock_ttl_ms)
            .field("redis_timeout_ms", redis_timeout_ms)
            .field("key_prefix", key_prefix)
            .field("signature_epoch", signature_epoch)
            .field("unscanned_ttl_secs", unscanned_ttl_secs)
            .field("hmac_key_file", hmac_key_file)
            .field("hmac_previous_key_file", hmac_previous_key_file)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

/// The environment variable that names the config file. `main` reads it; the loader skips it,
/// since it is not a key.
pub const CONFIG_PATH_ENV: &str = "CLAMGATE_CONFIG";

/// The prefix of every environment override: `CLAMGATE_<SECTION>_<KEY>`.
pub const ENV_PREFIX: &str = "CLAMGATE_";

/// Upper bound of every `_ms` duration: one hour.
const MAX_DURATION_MS: u64 = 60 * 60 * 1000;
/// Upper bound of `response.retry_after_secs`: one day.
const MAX_RETRY_AFTER_SECS: u64 = 24 * 60 * 60;
/// clamd reads the INSTREAM length as a 32-bit integer.
const MAX_SCAN_BYTES: u64 = u32::MAX as u64;
/// Upper bound of `scan.max_decode_ratio`; past `max_scan_bytes` / 1 MiB a ratio never trips.
const MAX_DECODE_RATIO: u64 = u32::MAX as u64;
const MAX_CONCURRENT_SCANS: u64 = 1024;
const MIN_MESSAGE_BYTES: u64 = 1024 * 1024;
const MAX_REDIS_POOL_SIZE: u64 = 64;
/// Upper bound of `cache.unscanned_ttl_secs`: an hour is "briefly" (limits may change).
const MAX_UNSCANNED_TTL_SECS: u64 = 60 * 60;

/// The policy name that selects `[policy]`; no `[policies.NAME]` may take it.
pub const DEFAULT_POLICY_NAME: &str = "default";
/// The longest policy name. Names travel in gRPC metadata and in environment variable names.
const MAX_POLICY_NAME_CHARS: usize = 32;

/// One problem with the configuration. Its message never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// Where the problem is: a key path (`clamd.connect_timeout_ms`), an environment variable
    /// (`CLAMGATE_CLAMD_ADRESS`) or the config file's path.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { key: key.into(), message: message.into() }
    }
}

/// Every problem found by one load, never empty. The order is stable: the file (unreadable or
/// bad syntax, then unknown keys and wrong types, by key path), then the environment (by variable
/// name), then values that are out of range or malformed (in schema order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One line per error, `key: message`, without a trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Loads the configuration: the defaults, then the TOML file at `path` (none: defaults only),
    /// then every `CLAMGATE_*` variable in `env`, which win over the file. Variables without the
    /// prefix are ignored, and so is [`CONFIG_PATH_ENV`]. Every problem is returned at once.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let file = match path {
            None => Ok(Table::new()),
            Some(path) => {
                let source = path.display().to_string();
                match std::fs::read_to_string(path) {
                    Ok(text) => parse_toml(&text, &source),
                    Err(err) => Err(ConfigError::new(source, format!("cannot read the config file: {err}"))),
                }
            }
        };
        load_layers(file, env)
    }

    /// Checks the values of a config built in code (ranges, addresses, URLs), as `load` does.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let (rejected, from_env) = (BTreeSet::new(), BTreeMap::new());
        let mut checker = Checker { errors: Vec::new(), rejected: &rejected, from_env: &from_env };
        check_values(self, &mut checker);
        if checker.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(checker.errors))
        }
    }

    /// Settings that are valid but weaken security or fail open, one line each
    /// (`key: explanation`), for `main` to log at startup.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let admin = self.listen.admin_addr;
        if !admin.ip().is_loopback() {
            warnings.push(format!(
                "listen.admin_addr: {admin} is not a loopback address; the admin listener reveals \
                 counters and versions and should not be reachable from the network"
            ));
        }
        if !self.clamd.require_alert_settings {
            warnings.push(
                "clamd.require_alert_settings: false: clamgate serves even when clamd answers OK for \
                 encrypted archives or bodies past its scan limits (AlertEncrypted / AlertExceedsMax \
                 off), and such bodies are cached clean; it only warns and counts"
                    .to_string(),
            );
        }
        warnings.extend(self.listen.grpc_auth_warnings());
        let urls = self.cache.redis_url.iter().map(|url| ("cache.redis_url".to_string(), url));
        let cluster = self.cache.redis_cluster_urls.iter().enumerate();
        let urls = urls.chain(cluster.map(|(i, url)| (format!("cache.redis_cluster_urls[{i}]"), url)));
        let mut tls = false;
        let mut remote = None;
        for (key, url) in urls {
            tls |= url.starts_with("rediss://");
            if let Some((host, false)) = redis_tcp_host(url) {
                if url.starts_with("redis://") {
                    warnings.push(format!(
                        "{key}: redis:// to {host} is plaintext: anyone on the network path can read \
                         and rewrite verdicts (and the password); use rediss://"
                    ));
                }
                remote.get_or_insert(host);
            }
            if url.starts_with("rediss://") && url_fragment(url).as_deref() == Some("insecure") {
                warnings.push(format!(
                    "{key}: \"#insecure\" turns off the check of Redis's TLS certificate: anyone on the \
                     network path can pose as Redis and serve forged verdicts"
                ));
            }
        }
        match (&remote, &self.cache.hmac_key_file) {
            (Some(host), None) => warnings.push(format!(
                "cache.hmac_key_file: not set while Redis ({host}) is not on loopback: anyone who can \
                 write to that Redis can plant a Clean verdict for any body; set a key file shared by \
                 every instance"
            )),
            (_, Some(_)) if self.cache.redis_url.is_none() && self.cache.redis_cluster_urls.is_empty() => {
                warnings.push(
                    "cache.hmac_key_file: set, but no Redis is configured (the in-process cache needs no \
                     key), so it is not used"
                        .to_string(),
                )
            }
            _ => {}
        }
        if self.cache.redis_tls_ca_file.is_some() && !tls {
            warnings.push(
                "cache.redis_tls_ca_file: set, but neither cache.redis_url nor cache.redis_cluster_urls \
                 uses rediss://, so it is not used"
                    .to_string(),
            );
        }
        // A named policy is warned about only where it differs from `[policy]`: what it inherits
        // was warned about once, as `policy.*`.
        let default = policy_warnings(&self.policy, true);
        for (key, message) in &default {
            warnings.push(format!("{}: {message}", key_in("policy", key)));
        }
        for (name, policy) in &self.policies {
            for (key, message) in policy_warnings(policy, false) {
                if !default.contains(&(key.clone(), message.clone())) {
                    warnings.push(format!("{}: {message}", key_in(&format!("policies.{name}"), &key)));
                }
            }
        }
        warnings
    }

    /// The policy a route selects by name: `[policies.NAME]`, or `[policy]` for
    /// [`DEFAULT_POLICY_NAME`] and for the empty name. `None` for a name that is not configured,
    /// which the caller must treat as an error (fail closed), never as the default.
    pub fn policy_named(&self, name: &str) -> Option<&PolicyConfig> {
        match name {
            "" | DEFAULT_POLICY_NAME => Some(&self.policy),
            _ => self.policies.get(name),
        }
    }

    /// Every configured Redis endpoint with passwords replaced by `***`, for logs:
    /// `cache.redis_url`, or each of `cache.redis_cluster_urls`. Empty when only the in-process
    /// cache is used. `cache.redis_password` is never part of it.
    pub fn redacted_redis_endpoints(&self) -> Vec<String> {
        let urls = self.cache.redis_url.iter().chain(&self.cache.redis_cluster_urls);
        urls.map(|url| redact_url(url)).collect()
    }
}

/// `key` of the table at `table`; the empty key is the table itself.
fn key_in(table: &str, key: &str) -> String {
    match key {
        "" => table.to_string(),
        _ => format!("{table}.{key}"),
    }
}

/// The warnings about one policy, as `(key relative to the policy's table, message)`; the key is
/// empty for the table itself.
fn policy_warnings(policy: &PolicyConfig, default: bool) -> Vec<(String, String)> {
    let mut warnings = Vec::new();
    let mut warn = |key: &str, message: String| warnings.push((key.to_string(), message));
    if policy.report_only {
        warn("report_only", "true: infected bodies are logged and counted but delivered".to_string());
    }
    if !policy.scan_requests && !policy.scan_responses {
        warn("", "scan_requests and scan_responses are both false: nothing is scanned".to_string());
    }
    for reason in UnscannedReason::ALL {
        if policy.on_unscanned.action(reason) == UnscannedAction::Allow {
            warn(
                &format!("on_unscanned.{reason}"),
                "allow delivers bodies that were not scanned (fails open)".to_string(),
            );
        }
    }
    if default && policy.cache_mode == CacheMode::Resource {
        warn(
            "cache_mode",
            "\"resource\" on the default policy: every route that names no policy looks verdicts up by \
             URL as well as by content; set it per route, in a named policy, for upstreams whose URLs \
             name objects that do not change"
                .to_string(),
        );
    }
    if policy.immutable {
        let message = match policy.cache_mode {
            CacheMode::Resource => "true: responses without a validator (ETag or Last-Modified) get \
                resource keys, so an object changed under the same URL keeps its old verdict until \
                cache.ttl_secs; only for upstreams that never change an object under a URL (package \
                mirrors)"
                .to_string(),
            mode => format!(
                "true has no effect while cache_mode is {:?}: only resource keys use it",
                mode.as_str()
            ),
        };
        warn("immutable", message);
    }
    if policy.verify_resource_hits && policy.cache_mode != CacheMode::Resource {
        warn(
            "verify_resource_hits",
            format!(
                "true has no effect while cache_mode is {:?}: only resource-key hits are verified",
                policy.cache_mode.as_str()
            ),
        );
    }
    warnings
}

fn parse_toml(text: &str, source: &str) -> Result<Table, ConfigError> {
    toml::from_str::<Table>(text).map_err(|err| {
        // Only the message and position: toml's Display quotes the offending line, which may hold
        // a password.
        let message = match err.span() {
            Some(span) => {
                let (line, column) = line_column(text, span.start);
                format!("TOML syntax error at line {line}, column {column}: {}", err.message())
            }
            None => format!("TOML syntax error: {}", err.message()),
        };
        ConfigError::new(source, message)
    })
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Merges the file (or the error that replaced it) and the environment over the defaults and
/// runs the three checks.
fn load_layers(
    file: Result<Table, ConfigError>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    let schema = &*SCHEMA;
    let mut errors = Vec::new();
    // Keys whose given value was rejected: the default stands in, and pass 3 skips them.
    let mut rejected = BTreeSet::new();
    // Keys set by the environment, with the variable, so pass 3 can say where a value came from.
    let mut from_env = BTreeMap::new();

    let mut table = file.unwrap_or_else(|err| {
        errors.push(err);
        Table::new()
    });
    let mut structural = Vec::new();
    check_table(schema, &mut table, &Place::root(), &mut structural, &mut rejected);
    structural.sort_by(|a, b| a.key.cmp(&b.key));
    errors.extend(structural);

    apply_env(schema, &mut table, env, &mut errors, &mut rejected, &mut from_env);
    inherit_named_tables(schema, &mut table);

    let config = match Value::Table(table).try_into::<Config>() {
        Ok(config) => config,
        Err(err) => {
            // Unreachable while the schema matches the structs (the tests check that it does).
            errors.push(ConfigError::new("config", err.message()));
            return Err(ConfigErrors(errors));
        }
    };
    let mut checker = Checker { errors: Vec::new(), rejected: &rejected, from_env: &from_env };
    check_values(&config, &mut checker);
    errors.extend(checker.errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

// ---------------------------------------------------------------------------------------------
// The schema: every key path, its type and its environment variable

static SCHEMA: LazyLock<Schema> = LazyLock::new(Schema::build);

/// `Option` keys: a default of `None` is absent from the serialized defaults.
const OPTIONAL_KEYS: &[(&str, Kind)] = &[
    ("cache.redis_url", Kind::Str),
    ("cache.redis_username", Kind::Str),
    ("cache.redis_password", Kind::Str),
    ("cache.redis_tls_ca_file", Kind::Str),
    ("cache.hmac_key_file", Kind::Str),
    ("cache.hmac_previous_key_file", Kind::Str),
    ("listen.grpc_token_file", Kind::Str),
    ("listen.grpc_tls_cert_file", Kind::Str),
    ("listen.grpc_tls_key_file", Kind::Str),
    ("listen.grpc_tls_client_ca_file", Kind::Str),
];

/// Tables of named tables, each shaped like a template table: `[policies.NAME]` takes the keys
/// of `[policy]`. An empty map serializes to an empty table, which shows nothing of its shape.
const NAMED_TABLES: &[(&str, &str)] = &[("policies", "policy")];

/// Keys serialized as strings whose values are narrower than any string.
fn narrower_kind(path: &str) -> Option<Kind> {
    match path {
        "listen.grpc_addr" | "listen.admin_addr" => Some(Kind::SocketAddr),
        "log.format" => Some(Kind::Enum(&LogFormat::NAMES)),
        "policy.cache_mode" => Some(Kind::Enum(&CacheMode::NAMES)),
        _ if path.starts_with("policy.on_unscanned.") => Some(Kind::Enum(&UnscannedAction::NAMES)),
        _ => None,
    }
}

/// The type of a key, as the file and the environment may spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    /// Every integer key is unsigned.
    Int,
    Bool,
    /// A string holding `IP:PORT`.
    SocketAddr,
    /// A string, one of these names.
    Enum(&'static [&'static str]),
    /// An array of strings; in the environment, comma-separated.
    StrList,
}

impl Kind {
    /// What a value of this kind is, for "expected ..., found ..." messages.
    fn expected(self) -> String {
        match self {
            Kind::Str => "a string".to_string(),
            Kind::Int => "an integer".to_string(),
            Kind::Bool => "a boolean".to_string(),
            Kind::SocketAddr => {
                "an IP address and port such as \"127.0.0.1:9090\" or \"[::1]:9090\"".to_string()
            }
            Kind::Enum(names) => one_of(names),
            Kind::StrList => "an array of strings".to_string(),
        }
    }
}

#[derive(Debug)]
struct Key {
    kind: Kind,
    optional: bool,
}

#[derive(Debug, Default)]
struct Schema {
    /// Leaf keys by dotted path.
    keys: BTreeMap<String, Key>,
    /// Table paths (`policy`, `policy.on_unscanned`); the root is not listed.
    tables: BTreeSet<String>,
    /// Tables of named tables (`policies`), each with its template table (`policy`).
    named: BTreeMap<String, String>,
    /// Environment variable name to key path.
    env: BTreeMap<String, String>,
}

impl Schema {
    fn build() -> Schema {
        let defaults =
            Table::try_from(Config::default()).expect("the default config serializes to a TOML table");
        let mut schema = Schema::default();
        schema.add_table("", &defaults);
        for &(path, kind) in OPTIONAL_KEYS {
            schema.add_key(path, kind, true);
        }
        for &(path, template) in NAMED_TABLES {
            schema.named.insert(path.to_string(), template.to_string());
        }
        schema
    }

    fn add_table(&mut self, prefix: &str, table: &Table) {
        for (name, value) in table {
            let path = join(prefix, name);
            let kind = match value {
                Value::Table(inner) => {
                    self.add_table(&path, inner);
                    continue;
                }
                Value::String(_) => narrower_kind(&path).unwrap_or(Kind::Str),
                Value::Integer(_) => Kind::Int,
                Value::Boolean(_) => Kind::Bool,
                Value::Array(items) if items.iter().all(Value::is_str) => Kind::StrList,
                // A new field of another type needs a `Kind`; the schema tests fail until then.
                other => panic!("config key {path}: no loader support for TOML type {}", other.type_str()),
            };
            self.add_key(&path, kind, false);
        }
    }

    fn add_key(&mut self, path: &str, kind: Kind, optional: bool) {
        self.env.insert(env_name(path), path.to_string());
        self.keys.insert(path.to_string(), Key { kind, optional });
        let mut table = parent(path);
        while !table.is_empty() {
            self.tables.insert(table.to_string());
            table = parent(table);
        }
    }

    /// Paths of every leaf at or below `path`.
    fn leaves_under<'s>(&'s self, path: &'s str) -> impl Iterator<Item = &'s String> + 's {
        self.keys.keys().filter(move |key| {
            *key == path || key.strip_prefix(path).is_some_and(|rest| rest.starts_with('.'))
        })
    }

    /// The names directly inside table `prefix` ("" is the root).
    fn children<'s>(&'s self, prefix: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.keys
            .keys()
            .chain(&self.tables)
            .chain(self.named.keys())
            .filter(move |path| parent(path) == prefix)
            .map(|path| last_segment(path))
    }

    /// For an unknown key `name` in the table at `place`.
    fn unknown_key_message(&self, place: &Place, name: &str) -> String {
        let mut message = match place.shown.as_str() {
            "" => format!("unknown key {name:?} at the top level"),
            shown => format!("unknown key {name:?} in [{shown}]"),
        };
        // A typo of a neighbour, else the same name in another table.
        let suggestion = closest(name, self.children(&place.schema)).map(str::to_string).or_else(|| {
            self.keys
                .keys()
                .chain(&self.tables)
                .find(|path| last_segment(path) == name && parent(path) != place.schema)
                .map(|path| place.show(path))
        });
        if let Some(suggestion) = suggestion {
            message.push_str(&format!("; did you mean {suggestion:?}?"));
        }
        message
    }

    /// The key a `CLAMGATE_*` variable sets: its path as shown (`policies.mirror.cache_mode`) and
    /// its schema entry; `Ok(None)` when it names no key, `Err` when it names a key of a named
    /// table under a name that is not allowed.
    fn env_key(&self, var: &str) -> Result<Option<(String, &Key)>, String> {
        if let Some((path, key)) = self.env.get(var).and_then(|path| self.keys.get_key_value(path)) {
            return Ok(Some((path.clone(), key)));
        }
        for (table, template) in &self.named {
            // `CLAMGATE_POLICIES_<NAME>_<KEY>`: a name holds no `_`, so the first one ends it.
            let Some((name, rest)) =
                var.strip_prefix(&format!("{}_", env_name(table))).and_then(|rest| rest.split_once('_'))
            else {
                continue;
            };
            let template_var = format!("{}_{rest}", env_name(template));
            let Some((path, key)) =
                self.env.get(&template_var).and_then(|path| self.keys.get_key_value(path))
            else {
                continue;
            };
            let name = env_table_name(name).map_err(|message| match message {
                NameError::Reserved(message) => format!("{message}; set {template_var} instead"),
                NameError::Invalid(message) => message,
            })?;
            let shown = format!("{table}.{name}{}", &path[template.len()..]);
            return Ok(Some((shown, key)));
        }
        Ok(None)
    }

    /// Variables near `var`, for "did you mean": every variable of a key, and those of named
    /// tables under the `names` the file uses and under the name `var` itself seems to give.
    fn env_suggestion(&self, var: &str, names: &BTreeSet<String>) -> Option<String> {
        let mut candidates: Vec<String> = self.env.keys().cloned().collect();
        for (table, template) in &self.named {
            let prefix = format!("{}_", env_name(table));
            let own = var.strip_prefix(&prefix).and_then(|rest| rest.split_once('_')).map(|(name, _)| name);
            let names = names.iter().map(|name| name.to_ascii_uppercase()).chain(own.map(str::to_string));
            let template_prefix = format!("{}_", env_name(template));
            for name in names.collect::<BTreeSet<_>>() {
                for template_var in self.env.keys() {
                    if let Some(rest) = template_var.strip_prefix(&template_prefix) {
                        candidates.push(format!("{prefix}{name}_{rest}"));
                    }
                }
            }
        }
        closest(var, candidates.iter().map(String::as_str)).map(str::to_string)
    }
}

/// Where a table of the file is: its path in the schema, and the path shown in messages. The two
/// differ inside a named table, which is checked against its template: `[policies.mirror]` is
/// shown, `[policy]` is looked up.
#[derive(Debug, Clone)]
struct Place {
    schema: String,
    shown: String,
    /// Inside a named table: the template's path and the named table's (`policy`,
    /// `policies.mirror`).
    instance: Option<(String, String)>,
}

impl Place {
    fn root() -> Place {
        Place { schema: String::new(), shown: String::new(), instance: None }
    }

    fn child(&self, name: &str) -> Place {
        Place {
            schema: join(&self.schema, name),
            shown: join(&self.shown, name),
            instance: self.instance.clone(),
        }
    }

    /// A schema path as shown from here: inside `[policies.mirror]`, `policy.x` is
    /// `policies.mirror.x`.
    fn show(&self, path: &str) -> String {
        match &self.instance {
            Some((template, named)) if path == template => named.clone(),
            Some((template, named)) => match path.strip_prefix(template.as_str()) {
                Some(rest) if rest.starts_with('.') => format!("{named}{rest}"),
                _ => path.to_string(),
            },
            None => path.to_string(),
        }
    }
}

/// Why a policy name is refused.
enum NameError {
    /// The name `default`.
    Reserved(String),
    Invalid(String),
}

impl NameError {
    fn message(self) -> String {
        match self {
            NameError::Reserved(message) | NameError::Invalid(message) => message,
        }
    }
}

/// A policy name: 1 to 32 lower-case ASCII letters and digits, not `default`.
fn policy_name(name: &str) -> Result<(), NameError> {
    if name == DEFAULT_POLICY_NAME {
        return Err(NameError::Reserved(format!(
            "the policy name {DEFAULT_POLICY_NAME:?} is reserved for [policy], the policy of routes that name none"
        )));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if (1..=MAX_POLICY_NAME_CHARS).contains(&name.len()) && name.chars().all(allowed) {
        return Ok(());
    }
    Err(NameError::Invalid(format!(
        "invalid policy name {name:?}: a name is 1 to {MAX_POLICY_NAME_CHARS} lower-case letters (a-z) \
         and digits, because it travels in Envoy's gRPC metadata (x-clamgate-policy) and in \
         environment variable names (CLAMGATE_POLICIES_<NAME>_<KEY>)"
    )))
}

/// The policy name written, in upper case, in a variable name: `MIRROR` is `mirror`.
fn env_table_name(written: &str) -> Result<String, NameError> {
    let allowed = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit();
    if !written.is_empty() && !written.chars().all(allowed) {
        return Err(NameError::Invalid(format!(
            "invalid policy name {written:?}: in a variable name, a policy name is written in upper \
             case (CLAMGATE_POLICIES_MIRROR_CACHE_MODE sets cache_mode of [policies.mirror])"
        )));
    }
    let name = written.to_ascii_lowercase();
    policy_name(&name)?;
    Ok(name)
}

fn join(prefix: &str, name: &str) -> String {
    match prefix {
        "" => name.to_string(),
        _ => format!("{prefix}.{name}"),
    }
}

fn parent(path: &str) -> &str {
    path.rsplit_once('.').map_or("", |(parent, _)| parent)
}

fn last_segment(path: &str) -> &str {
    path.rsplit_once('.').map_or(path, |(_, last)| last)
}

/// `clamd.connect_timeout_ms` → `CLAMGATE_CLAMD_CONNECT_TIMEOUT_MS`.
fn env_name(path: &str) -> String {
    format!("{ENV_PREFIX}{}", path.replace('.', "_").to_ascii_uppercase())
}

/// The candidate nearest to `name` by edit distance, if near enough to be a typo of it.
fn closest<'c>(name: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    candidates
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|&(distance, _)| distance <= limit)
        .min()
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("{name:?}")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// "a string", "an integer", ... for a TOML value.
fn a_type(value: &Value) -> String {
    let name = value.type_str();
    match name {
        "integer" | "array" => format!("an {name}"),
        _ => format!("a {name}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Pass 1: structure of the file

/// Walks `table`, at `place`, against the schema. Every unknown key and every value of the wrong
/// type is an error; either is removed from the table so that the rest can still be deserialized.
fn check_table(
    schema: &Schema,
    table: &mut Table,
    place: &Place,
    errors: &mut Vec<ConfigError>,
    rejected: &mut BTreeSet<String>,
) {
    let names: Vec<String> = table.keys().cloned().collect();
    for name in names {
        let here = place.child(&name);
        // A quoted key with a dot (`"clamd.address" = ...`) is one key, never a path.
        let plain = !name.contains('.');
        let is_table = plain && schema.tables.contains(&here.schema);
        let template = schema.named.get(&here.schema).filter(|_| plain && place.instance.is_none());
        // `(suffix of the key, message)`; the suffix is `[i]` for an element of an array.
        let problems = match table.get_mut(&name) {
            Some(Value::Table(inner)) if is_table => {
                check_table(schema, inner, &here, errors, rejected);
                Vec::new()
            }
            Some(Value::Table(inner)) if template.is_some() => {
                let template = template.map_or("", String::as_str);
                check_named_tables(schema, inner, &here, template, errors, rejected);
                Vec::new()
            }
            Some(other) if is_table || template.is_some() => {
                vec![(String::new(), format!("expected a table, found {}", a_type(other)))]
            }
            Some(value) if plain && schema.keys.contains_key(&here.schema) => {
                value_problems(schema.keys[&here.schema].kind, value)
            }
            _ => vec![(String::new(), schema.unknown_key_message(place, &name))],
        };
        if !problems.is_empty() {
            table.remove(&name);
            rejected.extend(schema.leaves_under(&here.schema).map(|leaf| here.show(leaf)));
            for (suffix, message) in problems {
                errors.push(ConfigError::new(format!("{}{suffix}", here.shown), message));
            }
        }
    }
}

/// Walks a table of named tables (`[policies]`, at `place`): each name must be allowed and each
/// value a table with keys of `template`. A bad name is an error, and so is every problem inside
/// its table; then the table is dropped.
fn check_named_tables(
    schema: &Schema,
    table: &mut Table,
    place: &Place,
    template: &str,
    errors: &mut Vec<ConfigError>,
    rejected: &mut BTreeSet<String>,
) {
    let names: Vec<String> = table.keys().cloned().collect();
    for name in names {
        let shown = join(&place.shown, &name);
        let mut problems = Vec::new();
        match policy_name(&name) {
            Ok(()) => {}
            Err(NameError::Reserved(message)) => problems.push(format!("{message}; set its keys there")),
            Err(NameError::Invalid(message)) => problems.push(message),
        }
        match table.get_mut(&name) {
            Some(Value::Table(inner)) => {
                let here = Place {
                    schema: template.to_string(),
                    shown: shown.clone(),
                    instance: Some((template.to_string(), shown.clone())),
                };
                check_table(schema, inner, &here, errors, rejected);
            }
            Some(other) => problems.push(format!("expected a table, found {}", a_type(other))),
            None => {}
        }
        if !problems.is_empty() {
            table.remove(&name);
            for message in problems {
                errors.push(ConfigError::new(shown.clone(), message));
            }
        }
    }
}

/// Why `value` may not be given for a key of `kind`, as `(suffix, message)`: the suffix is empty
/// for the value itself and `[i]` for element `i` of an array. No problems: it may.
fn value_problems(kind: Kind, value: &Value) -> Vec<(String, String)> {
    match (kind, value) {
        (Kind::StrList, Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter(|(_, item)| !item.is_str())
            .map(|(i, item)| (format!("[{i}]"), format!("expected a string, found {}", a_type(item))))
            .collect(),
        _ => check_value(kind, value).err().map(|message| (String::new(), message)).into_iter().collect(),
    }
}

/// Whether `value` may be given for a key of `kind`. Messages show the value only for kinds that
/// never hold a secret.
fn check_value(kind: Kind, value: &Value) -> Result<(), String> {
    match (kind, value) {
        (Kind::Str, Value::String(_)) | (Kind::Bool, Value::Boolean(_)) => Ok(()),
        (Kind::StrList, Value::Array(items)) if items.iter().all(Value::is_str) => Ok(()),
        (Kind::Int, Value::Integer(n)) if *n >= 0 => Ok(()),
        (Kind::Int, Value::Integer(n)) => Err(format!("expected a non-negative integer, found {n}")),
        (Kind::SocketAddr, Value::String(s)) if s.parse::<SocketAddr>().is_ok() => Ok(()),
        (Kind::Enum(names), Value::String(s)) if names.contains(&s.as_str()) => Ok(()),
        (Kind::SocketAddr | Kind::Enum(_), Value::String(s)) => {
            Err(format!("expected {}, found {s:?}", kind.expected()))
        }
        (kind, other) => Err(format!("expected {}, found {}", kind.expected(), a_type(other))),
    }
}

// ---------------------------------------------------------------------------------------------
// Pass 2: the environment

/// Applies every `CLAMGATE_*` variable over `table`. An empty value for an `Option` key unsets
/// it (so a deployment can turn off a Redis URL that the file sets). A variable for a key of a
/// named table (`CLAMGATE_POLICIES_MIRROR_CACHE_MODE`) may create the table.
fn apply_env(
    schema: &Schema,
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
    errors: &mut Vec<ConfigError>,
    rejected: &mut BTreeSet<String>,
    from_env: &mut BTreeMap<String, String>,
) {
    // Sorted for a stable error order; a repeated name keeps its last value, as a shell does.
    let vars: BTreeMap<String, String> =
        env.into_iter().filter(|(name, _)| name.starts_with(ENV_PREFIX) && name != CONFIG_PATH_ENV).collect();
    // The names the file gives named tables, for suggestions.
    let file_names: BTreeSet<String> = schema
        .named
        .keys()
        .filter_map(|path| table.get(path).and_then(Value::as_table))
        .flat_map(|named| named.keys().cloned())
        .collect();
    for (name, raw) in vars {
        let (path, key) = match schema.env_key(&name) {
            Ok(Some(found)) => found,
            Ok(None) => {
                let mut message = "unknown variable: it matches no config key".to_string();
                if let Some(suggestion) = schema.env_suggestion(&name, &file_names) {
                    message.push_str(&format!("; did you mean {suggestion}?"));
                }
                errors.push(ConfigError::new(name, message));
                continue;
            }
            Err(message) => {
                errors.push(ConfigError::new(name, message));
                continue;
            }
        };
        if key.optional && raw.is_empty() {
            remove_path(table, &path);
            rejected.remove(&path);
            from_env.insert(path, name);
            continue;
        }
        match env_value(key.kind, raw) {
            Ok(value) => {
                insert_path(table, &path, value);
                rejected.remove(&path);
                from_env.insert(path, name);
            }
            Err(message) => {
                rejected.insert(path.clone());
                errors.push(ConfigError::new(name, format!("invalid value for {path}: {message}")));
            }
        }
    }
}

/// The TOML value an environment variable stands for: strings as given, integers and booleans
/// parsed, lists split at commas (each element trimmed; an empty value is an empty list).
fn env_value(kind: Kind, raw: String) -> Result<Value, String> {
    let value = match kind {
        Kind::Int => match raw.parse::<i64>() {
            Ok(n) => Value::Integer(n),
            Err(_) => return Err(format!("expected an integer, found {raw:?}")),
        },
        Kind::Bool => match raw.as_str() {
            "true" => Value::Boolean(true),
            "false" => Value::Boolean(false),
            _ => return Err(format!("expected true or false, found {raw:?}")),
        },
        Kind::StrList if raw.trim().is_empty() => Value::Array(Vec::new()),
        Kind::StrList => {
            Value::Array(raw.split(',').map(|item| Value::String(item.trim().to_string())).collect())
        }
        Kind::Str | Kind::SocketAddr | Kind::Enum(_) => Value::String(raw),
    };
    check_value(kind, &value)?;
    Ok(value)
}

fn insert_path(table: &mut Table, path: &str, value: Value) {
    let (parents, name) = path.rsplit_once('.').map_or(("", path), |(parents, name)| (parents, name));
    let mut current = table;
    for segment in parents.split('.').filter(|segment| !segment.is_empty()) {
        let entry = current.entry(segment).or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            // Pass 1 already reported and removed a non-table here; this is defensive.
            *entry = Value::Table(Table::new());
        }
        let Value::Table(next) = entry else { return };
        current = next;
    }
    current.insert(name.to_string(), value);
}

/// Lays each named table over a copy of its template table (`[policies.mirror]` over `[policy]`),
/// once the file and the environment are applied, so that it inherits what it does not set.
fn inherit_named_tables(schema: &Schema, table: &mut Table) {
    for (path, template) in &schema.named {
        let base = get_path(table, template).and_then(Value::as_table).cloned().unwrap_or_default();
        if let Some(Value::Table(named)) = table.get_mut(path.as_str()) {
            for (_, value) in named.iter_mut() {
                if let Value::Table(own) = value {
                    let mut merged = base.clone();
                    merge_tables(&mut merged, std::mem::take(own));
                    *own = merged;
                }
            }
        }
    }
}

/// Writes every value of `over` into `into`, merging tables present in both.
fn merge_tables(into: &mut Table, over: Table) {
    for (name, value) in over {
        match (into.get_mut(&name), value) {
            (Some(Value::Table(below)), Value::Table(above)) => merge_tables(below, above),
            (_, value) => {
                into.insert(name, value);
            }
        }
    }
}

fn get_path<'t>(table: &'t Table, path: &str) -> Option<&'t Value> {
    let (parents, name) = path.rsplit_once('.').map_or(("", path), |(parents, name)| (parents, name));
    let mut current = table;
    for segment in parents.split('.').filter(|segment| !segment.is_empty()) {
        current = current.get(segment)?.as_table()?;
    }
    current.get(name)
}

fn remove_path(table: &mut Table, path: &str) {
    let (parents, name) = path.rsplit_once('.').map_or(("", path), |(parents, name)| (parents, name));
    let mut current = table;
    for segment in parents.split('.').filter(|segment| !segment.is_empty()) {
        match current.get_mut(segment) {
            Some(Value::Table(next)) => current = next,
            _ => return,
        }
    }
    current.remove(name);
}

// ---------------------------------------------------------------------------------------------
// Pass 3: the values

/// Collects the errors of pass 3.
struct Checker<'a> {
    errors: Vec<ConfigError>,
    /// Keys already reported by pass 1 or 2: their value is a stand-in default.
    rejected: &'a BTreeSet<String>,
    /// Keys set by the environment, and by which variable.
    from_env: &'a BTreeMap<String, String>,
}

impl Checker<'_> {
    fn check(&mut self, path: &str, result: Result<(), String>) {
        self.check_at(path, path.to_string(), result);
    }

    /// Checks element `index` of the array at `path`; the error names the element.
    fn check_element(&mut self, path: &str, index: usize, result: Result<(), String>) {
        self.check_at(path, format!("{path}[{index}]"), result);
    }

    fn check_at(&mut self, path: &str, key: String, result: Result<(), String>) {
        if let (Err(message), false) = (result, self.rejected.contains(path)) {
            let message = match self.from_env.get(path) {
                Some(var) => format!("{message} (set by {var})"),
                None => message,
            };
            self.errors.push(ConfigError::new(key, message));
        }
    }
}

/// Every check of a value's meaning, in schema order.
fn check_values(config: &Config, checker: &mut Checker<'_>) {
    let Config { listen, clamd, scan, cache, ext_proc, bodies, response, policy: _, policies, log } = config;
    if !checker.rejected.contains("listen.grpc_addr") {
        checker.check("listen.admin_addr", distinct_listeners(listen.grpc_addr, listen.admin_addr));
    }
    check_grpc_auth(listen, checker);
    checker.check("clamd.address", clamd_address(&clamd.address));
    checker.check("clamd.connect_timeout_ms", within(clamd.connect_timeout_ms, 1, MAX_DURATION_MS));
    checker.check("clamd.write_timeout_ms", within(clamd.write_timeout_ms, 1, MAX_DURATION_MS));
    checker.check("clamd.reply_timeout_ms", within(clamd.reply_timeout_ms, 1, MAX_DURATION_MS));
    checker.check(
        "clamd.max_concurrent_scans",
        within(clamd.max_concurrent_scans as u64, 1, MAX_CONCURRENT_SCANS),
    );
    checker.check("clamd.health_interval_ms", within(clamd.health_interval_ms, 1, MAX_DURATION_MS));
    checker.check(
        "clamd.settings_check_interval_ms",
        within(clamd.settings_check_interval_ms, 1, MAX_DURATION_MS),
    );
    checker.check(
        "clamd.abandoned_scan_max_hold_ms",
        within(clamd.abandoned_scan_max_hold_ms, 1, MAX_DURATION_MS),
    );
    checker.check("scan.max_scan_bytes", within(scan.max_scan_bytes, 1, MAX_SCAN_BYTES));
    checker.check("scan.timeout_ms", within(scan.timeout_ms, 1, MAX_DURATION_MS));
    checker.check("scan.timeout_per_mib_ms", within(scan.timeout_per_mib_ms, 0, MAX_DURATION_MS));
    checker.check("scan.max_decode_ratio", within(scan.max_decode_ratio, 0, MAX_DECODE_RATIO));
    checker
        .check("scan.max_skipped_encoding_bytes", within(scan.max_skipped_encoding_bytes, 0, MAX_SCAN_BYTES));
    check_bodies(bodies, checker);
    check_cache(cache, checker);
    checker.check(
        "ext_proc.max_message_bytes",
        within(ext_proc.max_message_bytes as u64, MIN_MESSAGE_BYTES, u64::MAX),
    );
    checker.check("response.retry_after_secs", within(response.retry_after_secs, 0, MAX_RETRY_AFTER_SECS));
    // A loaded config has only allowed names (pass 1 and 2 drop the others); one built in code
    // may not.
    for name in policies.keys() {
        checker.check(&format!("policies.{name}"), policy_name(name).map_err(NameError::message));
    }
    checker.check("log.level", log_filter(&log.level));
}

/// The gRPC listener's token and TLS files, read and parsed by the functions that build the
/// listener, so a config that passes here starts.
fn check_grpc_auth(listen: &ListenConfig, checker: &mut Checker<'_>) {
    if let Some(path) = &listen.grpc_token_file {
        checker.check("listen.grpc_token_file", crate::grpc_auth::GrpcToken::from_file(path).map(|_| ()));
    }
    let (cert, key, ca) =
        (&listen.grpc_tls_cert_file, &listen.grpc_tls_key_file, &listen.grpc_tls_client_ca_file);
    let tls_keys =
        ["listen.grpc_tls_cert_file", "listen.grpc_tls_key_file", "listen.grpc_tls_client_ca_file"];
    if tls_keys.iter().any(|key| checker.rejected.contains(*key)) {
        return;
    }
    match (cert, key) {
        (Some(cert), Some(key)) => checker.check(
            "listen.grpc_tls_cert_file",
            crate::grpc_auth::server_tls(cert, key, ca.as_deref()).map(|_| ()),
        ),
        (Some(_), None) => checker.check(
            "listen.grpc_tls_key_file",
            Err("must be set with listen.grpc_tls_cert_file (the certificate's private key)".to_string()),
        ),
        (None, Some(_)) => checker.check(
            "listen.grpc_tls_cert_file",
            Err("must be set with listen.grpc_tls_key_file (the key's certificate chain)".to_string()),
        ),
        (None, None) if ca.is_some() => checker.check(
            "listen.grpc_tls_client_ca_file",
            Err("needs listen.grpc_tls_cert_file and listen.grpc_tls_key_file: client certificates are \
                 checked in a TLS handshake"
                .to_string()),
        ),
        (None, None) => {}
    }
}

fn check_bodies(bodies: &BodiesConfig, checker: &mut Checker<'_>) {
    checker.check(
        "bodies.stream_memory_bytes",
        within(bodies.stream_memory_bytes, 0, bodies.memory_budget_bytes)
            .map_err(|err| format!("{err} (one stream cannot hold more than bodies.memory_budget_bytes)")),
    );
    if !bodies.spool_dir.is_empty() {
        let dir = std::path::Path::new(&bodies.spool_dir);
        let problem = match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => None,
            Ok(_) => Some("is not a directory".to_string()),
            Err(err) => Some(format!("cannot be used: {err}")),
        };
        if let Some(problem) = problem {
            checker.check("bodies.spool_dir", Err(format!("{:?} {problem}", bodies.spool_dir)));
        }
    }
}

fn check_cache(cache: &CacheConfig, checker: &mut Checker<'_>) {
    let CacheConfig {
        redis_url,
        redis_cluster_urls,
        redis_username,
        redis_password,
        redis_tls_ca_file,
        redis_pool_size,
        ttl_secs,
        memory_max_entries,
        memory_ttl_secs,
        lock_ttl_ms,
        redis_timeout_ms,
        key_prefix: prefix,
        signature_epoch: _,
        unscanned_ttl_secs,
        hmac_key_file,
        hmac_previous_key_file,
    } = cache;
    if let Some(url) = redis_url {
        checker.check("cache.redis_url", self::redis_url(url));
    }
    for (i, url) in redis_cluster_urls.iter().enumerate() {
        checker.check_element("cache.redis_cluster_urls", i, redis_cluster_url(url));
    }
    if redis_url.is_some() && !redis_cluster_urls.is_empty() && !checker.rejected.contains("cache.redis_url")
    {
        checker.check(
            "cache.redis_cluster_urls",
            Err("cannot be set together with cache.redis_url: set redis_url for a standalone Redis or \
                 redis_cluster_urls for a Redis Cluster"
                .to_string()),
        );
    }
    let tls = redis_cluster_urls.iter().filter(|url| url.starts_with("rediss://")).count();
    if tls != 0 && tls != redis_cluster_urls.len() {
        checker.check(
            "cache.redis_cluster_urls",
            Err("mixes redis:// and rediss://: the nodes of a cluster are all reached over TLS or none are"
                .to_string()),
        );
    }
    if let Some(username) = redis_username {
        checker.check("cache.redis_username", not_empty(username, "the user name in the URL"));
    }
    if let Some(password) = redis_password {
        checker.check("cache.redis_password", not_empty(password, "the password in the URL"));
    }
    if let Some(path) = redis_tls_ca_file {
        checker.check("cache.redis_tls_ca_file", ca_file(path));
    }
    checker.check("cache.redis_pool_size", within(*redis_pool_size as u64, 1, MAX_REDIS_POOL_SIZE));
    checker.check("cache.ttl_secs", within(*ttl_secs, 1, u64::MAX));
    checker.check("cache.memory_max_entries", within(*memory_max_entries as u64, 1, u64::MAX));
    checker.check("cache.memory_ttl_secs", within(*memory_ttl_secs, 1, u64::MAX));
    checker.check("cache.lock_ttl_ms", within(*lock_ttl_ms, 1, MAX_DURATION_MS));
    checker.check("cache.redis_timeout_ms", within(*redis_timeout_ms, 1, MAX_DURATION_MS));
    checker.check("cache.key_prefix", key_prefix(prefix));
    checker.check("cache.unscanned_ttl_secs", within(*unscanned_ttl_secs, 0, MAX_UNSCANNED_TTL_SECS));
    for (key, path) in
        [("cache.hmac_key_file", hmac_key_file), ("cache.hmac_previous_key_file", hmac_previous_key_file)]
    {
        if let Some(path) = path {
            checker.check(key, crate::cache::seal::read_key_file(path).map(|_| ()));
        }
    }
    if hmac_previous_key_file.is_some() && hmac_key_file.is_none() {
        checker.check(
            "cache.hmac_previous_key_file",
            Err("set without cache.hmac_key_file: during a rotation the new key goes in hmac_key_file \
                 and the old one here"
                .to_string()),
        );
    }
}

fn within(value: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(match (min, max) {
        (_, u64::MAX) => format!("must be at least {min}, found {value}"),
        (0, _) => format!("must be at most {max}, found {value}"),
        _ => format!("must be between {min} and {max}, found {value}"),
    })
}

/// The two listeners must not bind the same port on overlapping addresses (port 0 picks a free
/// port, so never collides).
fn distinct_listeners(grpc: SocketAddr, admin: SocketAddr) -> Result<(), String> {
    let overlapping_ip = grpc.ip() == admin.ip() || grpc.ip().is_unspecified() || admin.ip().is_unspecified();
    if grpc.port() == admin.port() && grpc.port() != 0 && overlapping_ip {
        return Err(format!("conflicts with listen.grpc_addr ({grpc}): both bind port {}", admin.port()));
    }
    Ok(())
}

/// `clamd.address`, by the one parser the clamd client uses ([`crate::clamd::ClamdAddress`]).
fn clamd_address(address: &str) -> Result<(), String> {
    address.parse::<crate::clamd::ClamdAddress>().map(|_| ()).map_err(|err| err.to_string())
}

/// A URL the redis crate accepts, with one of the schemes clamgate documents.
fn redis_url(url: &str) -> Result<(), String> {
    const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];
    if url.is_empty() {
        return Err("must not be empty; remove the key to use the in-process cache".to_string());
    }
    if !SCHEMES.iter().any(|scheme| url.starts_with(scheme)) {
        return Err(format!(
            "expected a URL starting with \"redis://\", \"rediss://\", \"redis+unix://\" or \"unix://\", found {:?}",
            redact_url(url)
        ));
    }
    redis_crate_accepts(url)
}

/// A seed node of a Redis Cluster: `redis://` or `rediss://` with a host and a port, and nothing
/// a cluster cannot have (a unix socket, a database other than 0).
fn redis_cluster_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("must not be empty".to_string());
    }
    if !url.starts_with("redis://") && !url.starts_with("rediss://") {
        return Err(format!(
            "expected \"redis://HOST:PORT\" or \"rediss://HOST:PORT\" (Redis Cluster has no unix sockets), found {:?}",
            redact_url(url)
        ));
    }
    redis_crate_accepts(url)?;
    // The crate has parsed it above, so this parse succeeds.
    let Some(parsed) = redis::parse_redis_url(url) else { return Ok(()) };
    if parsed.port().is_none() {
        return Err(format!(
            "must name the port, as in \"redis://redis-1:6379\", found {:?}",
            redact_url(url)
        ));
    }
    match parsed.path().trim_matches('/') {
        "" | "0" => Ok(()),
        db => Err(format!(
            "names database {db}, but Redis Cluster has only database 0, found {:?}",
            redact_url(url)
        )),
    }
}

/// Whether the redis crate can read `url`. A `rediss://` URL is read as `redis://` apart from
/// its fragment (only `#insecure` is allowed): the rest means the same under both schemes, and
/// the crate rejects every `rediss://` URL when it is built without TLS.
fn redis_crate_accepts(url: &str) -> Result<(), String> {
    let plain = match url.strip_prefix("rediss://") {
        Some(rest) => {
            if url_fragment(url).is_some_and(|fragment| fragment != "insecure") {
                return Err(format!(
                    "only \"#insecure\" may end a rediss:// URL, found {:?}",
                    redact_url(url)
                ));
            }
            format!("redis://{rest}")
        }
        None => url.to_string(),
    };
    match redis::IntoConnectionInfo::into_connection_info(plain.as_str()) {
        Ok(_) => Ok(()),
        Err(err) => {
            // The crate's text is "<reason> - <Kind>[: detail]"; the reason is what helps, and
            // none of its reasons quote the URL.
            let text = err.to_string();
            let reason = text.split(" - ").next().unwrap_or(&text);
            Err(format!("is not a usable Redis URL ({reason}), found {:?}", redact_url(url)))
        }
    }
}

/// The host of a `redis://` or `rediss://` URL (IPv6 in brackets) and whether it is a loopback
/// address or `localhost`; `None` for a unix socket or a URL that does not parse.
fn redis_tcp_host(url: &str) -> Option<(String, bool)> {
    let parsed = redis::parse_redis_url(url)?;
    if !matches!(parsed.scheme(), "redis" | "rediss") {
        return None;
    }
    let host = parsed.host_str()?.to_string();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    Some((host, loopback))
}

/// The fragment of a Redis URL (`insecure` in `rediss://host:6380/#insecure`), if it parses.
fn url_fragment(url: &str) -> Option<String> {
    redis::parse_redis_url(url)?.fragment().map(str::to_string)
}

/// An optional string that, when set, is not empty; removing the key falls back to `fallback`.
fn not_empty(value: &str, fallback: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("must not be empty; remove the key to use {fallback}"));
    }
    Ok(())
}

/// A readable file with at least one PEM certificate.
fn ca_file(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty; remove the key to trust the system's roots".to_string());
    }
    match std::fs::read(path) {
        Err(err) => Err(format!("cannot read {path:?}: {err}")),
        Ok(bytes) if !bytes.windows(PEM_CERTIFICATE.len()).any(|window| window == PEM_CERTIFICATE) => {
            Err(format!("{path:?} holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\" line)"))
        }
        Ok(_) => Ok(()),
    }
}

const PEM_CERTIFICATE: &[u8] = b"-----BEGIN CERTIFICATE-----";

fn key_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("must not be empty".to_string());
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("must not contain whitespace or control characters, found {prefix:?}"));
    }
    Ok(())
}

fn log_filter(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        return Err("must not be empty; use a level such as \"info\"".to_string());
    }
    match tracing_subscriber::EnvFilter::try_new(level) {
        Ok(_) => Ok(()),
        Err(err) => Err(format!("is not a valid tracing filter ({err}), found {level:?}")),
    }
}

/// `url` with its password replaced by `***`: in the userinfo of `scheme://user:password@host`
/// (a userinfo without `:` is hidden whole) and in `pass=`/`password=` query parameters.
fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    // The last `@` ends the userinfo even if the password holds an unencoded `/`, `?` or `@`:
    // better to hide too much than too little.
    let (userinfo, host_and_rest) = match rest.rfind('@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    let mut redacted = scheme.to_string();
    if let Some(userinfo) = userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) if !user.contains(['/', '?', '#']) => redacted.push_str(&format!("{user}:***@")),
            _ => redacted.push_str("***@"),
        }
    }
    match host_and_rest.split_once('?') {
        None => redacted.push_str(host_and_rest),
        Some((before, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _))
                        if name.eq_ignore_ascii_case("pass") || name.eq_ignore_ascii_case("password") =>
                    {
                        format!("{name}=***")
                    }
                    _ => param.to_string(),
                })
                .collect();
            redacted.push_str(&format!("{before}?{}", params.join("&")));
        }
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../clamgate.toml");
    const DOCS: &str = include_str!("../docs/configuration.md");

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
    }

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        // As `Config::load` does, with the file's text given (its errors reported as `config`).
        load_layers(parse_toml(text, "config"), vars(env))
    }

    /// The `Display` lines of a load that must fail.
    fn errors(text: &str, env: &[(&str, &str)]) -> Vec<String> {
        match load(text, env) {
            Ok(config) => panic!("expected errors, loaded {config:?}"),
            Err(errors) => errors.to_string().lines().map(str::to_string).collect(),
        }
    }

    fn error(text: &str, env: &[(&str, &str)]) -> String {
        let errors = errors(text, env);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors[0].clone()
    }

    // --- Loading -------------------------------------------------------------------------------

    #[test]
    fn defaults_load_from_nothing() {
        assert_eq!(load("", &[]).unwrap(), Config::default());
        assert_eq!(Config::load(None, vars(&[])).unwrap(), Config::default());
        assert_eq!(Config::default().validate(), Ok(()));
        assert!(Config::default().warnings().is_empty());
    }

    #[test]
    fn a_full_valid_file_loads() {
        let text = r#"
            [listen]
            grpc_addr = "0.0.0.0:50052"
            admin_addr = "[::1]:9091"
            [clamd]
            address = "unix:///run/clamav/clamd.ctl"
            connect_timeout_ms = 2000
            write_timeout_ms = 3000
            reply_timeout_ms = 4000
            max_concurrent_scans = 16
            health_interval_ms = 6000
            [scan]
            max_scan_bytes = 104_857_600
            [cache]
            redis_url = "redis://clamgate:s3cret@redis:6379/2"
            redis_username = "scanner"
            redis_password = "s3cret2"
            redis_pool_size = 64
            ttl_secs = 3600
            memory_max_entries = 10
            memory_ttl_secs = 60
            lock_ttl_ms = 3600000
            redis_timeout_ms = 100
            key_prefix = "cg:"
            [ext_proc]
            max_message_bytes = 33554432
            [response]
            verdict_header = false
            expose_signature = false
            retry_after_secs = 60
            [policy]
            scan_requests = false
            scan_responses = true
            report_only = true
            cache_mode = "off"
            immutable = true
            [policy.on_unscanned]
            too_large = "allow"
            engine_unavailable = "deny"
            timeout = "allow"
            engine_error = "deny"
            limits_exceeded = "allow"
            encrypted = "deny"
            unsupported_encoding = "allow"
            partial_content = "deny"
            [policies.mirror]
            cache_mode = "resource"
            [policies.mirror.on_unscanned]
            partial_content = "allow"
            [log]
            level = "clamgate=debug,info"
            format = "text"
        "#;
        let config = load(text, &[]).unwrap();
        assert_eq!(config.listen.grpc_addr, "0.0.0.0:50052".parse().unwrap());
        assert_eq!(config.listen.admin_addr, "[::1]:9091".parse().unwrap());
        assert_eq!(config.clamd.address, "unix:///run/clamav/clamd.ctl");
        assert_eq!(
            (config.clamd.connect_timeout_ms, config.clamd.write_timeout_ms, config.clamd.reply_timeout_ms),
            (2000, 3000, 4000)
        );
        assert_eq!((config.clamd.max_concurrent_scans, config.clamd.health_interval_ms), (16, 6000));
        assert_eq!(config.scan.max_scan_bytes, 100 * 1024 * 1024);
        assert_eq!(config.cache.redis_url.as_deref(), Some("redis://clamgate:s3cret@redis:6379/2"));
        assert_eq!(
            (config.cache.ttl_secs, config.cache.memory_max_entries, config.cache.redis_timeout_ms),
            (3600, 10, 100)
        );
        assert_eq!(config.cache.key_prefix, "cg:");
        assert_eq!(config.cache.redis_username.as_deref(), Some("scanner"));
        assert_eq!(config.cache.redis_password.as_deref(), Some("s3cret2"));
        assert_eq!(
            (config.cache.redis_pool_size, config.cache.memory_ttl_secs, config.cache.lock_ttl_ms),
            (64, 60, 3_600_000)
        );
        assert_eq!(config.ext_proc.max_message_bytes, 32 * 1024 * 1024);
        assert_eq!(
            config.response,
            ResponseConfig { verdict_header: false, expose_signature: false, retry_after_secs: 60 }
        );
        assert!(!config.policy.scan_requests && config.policy.scan_responses && config.policy.report_only);
        assert_eq!((config.policy.cache_mode, config.policy.immutable), (CacheMode::Off, true));
        let mirror = &config.policies["mirror"];
        assert_eq!(
            (mirror.cache_mode, mirror.immutable, mirror.report_only),
            (CacheMode::Resource, true, true)
        );
        assert_eq!(mirror.on_unscanned.partial_content, UnscannedAction::Allow);
        assert_eq!(mirror.on_unscanned.too_large, UnscannedAction::Allow);
        let actions = &config.policy.on_unscanned;
        assert_eq!(
            (actions.too_large, actions.engine_unavailable),
            (UnscannedAction::Allow, UnscannedAction::Deny)
        );
        assert_eq!((actions.timeout, actions.engine_error), (UnscannedAction::Allow, UnscannedAction::Deny));
        assert_eq!(
            (actions.limits_exceeded, actions.encrypted),
            (UnscannedAction::Allow, UnscannedAction::Deny)
        );
        assert_eq!(
            (actions.unsupported_encoding, actions.partial_content),
            (UnscannedAction::Allow, UnscannedAction::Deny)
        );
        assert_eq!(
            config.log,
            LogConfig { level: "clamgate=debug,info".to_string(), format: LogFormat::Text }
        );
    }

    #[test]
    fn load_reads_a_file_and_names_it_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clamgate.toml");
        std::fs::write(&path, "[clamd]\nmax_concurrent_scans = 2\n").unwrap();
        assert_eq!(Config::load(Some(&path), vars(&[])).unwrap().clamd.max_concurrent_scans, 2);

        let missing = dir.path().join("missing.toml");
        let err = Config::load(Some(&missing), vars(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: cannot read the config file: No such file or directory (os error 2)",
                missing.display()
            )
        );
    }

    #[test]
    fn a_syntax_error_names_line_and_column_and_env_is_still_checked() {
        assert_eq!(
            errors("[clamd]\naddress = \"tcp://x:1\nmax_concurrent_scans = 2\n", &[("CLAMGATE_NOPE", "1")]),
            [
                "config: TOML syntax error at line 2, column 21: invalid basic string, expected `\"`",
                "CLAMGATE_NOPE: unknown variable: it matches no config key",
            ]
        );
        assert_eq!(
            error("[clamd]\nmax_concurrent_scans = 1\nmax_concurrent_scans = 2\n", &[]),
            "config: TOML syntax error at line 3, column 1: duplicate key"
        );
    }

    // --- Pass 1: unknown keys and types ----------------------------------------------------------

    #[test]
    fn unknown_keys_are_reported_with_their_path_and_a_suggestion() {
        assert_eq!(
            error("[cache]\nredis_ur = \"redis://r\"\n", &[]),
            "cache.redis_ur: unknown key \"redis_ur\" in [cache]; did you mean \"redis_url\"?"
        );
        assert_eq!(
            error("lisen = 1\n", &[]),
            "lisen: unknown key \"lisen\" at the top level; did you mean \"listen\"?"
        );
        assert_eq!(
            error("[clamd]\nttl_secs = 5\n", &[]),
            "clamd.ttl_secs: unknown key \"ttl_secs\" in [clamd]; did you mean \"cache.ttl_secs\"?"
        );
        assert_eq!(error("[extra]\nx = 1\n", &[]), "extra: unknown key \"extra\" at the top level");
        assert_eq!(
            error("[policy.on_unscanned]\nzip_bomb = \"deny\"\n", &[]),
            "policy.on_unscanned.zip_bomb: unknown key \"zip_bomb\" in [policy.on_unscanned]"
        );
        // A quoted dotted key is one name, not a path.
        assert_eq!(
            error("\"clamd.address\" = \"tcp://x:1\"\n", &[]),
            "clamd.address: unknown key \"clamd.address\" at the top level"
        );
    }

    #[test]
    fn unknown_keys_in_a_named_policy_have_its_path() {
        assert_eq!(
            error("[policies.mirror]\ncache_mod = \"resource\"\n", &[]),
            "policies.mirror.cache_mod: unknown key \"cache_mod\" in [policies.mirror]; did you mean \"cache_mode\"?"
        );
        assert_eq!(
            error("[policies.mirror.on_unscanned]\nzip_bomb = \"deny\"\n", &[]),
            "policies.mirror.on_unscanned.zip_bomb: unknown key \"zip_bomb\" in [policies.mirror.on_unscanned]"
        );
        // The same name elsewhere in the policy is suggested at its place in this policy.
        assert_eq!(
            error("[policies.mirror]\ntimeout = \"allow\"\n", &[]),
            "policies.mirror.timeout: unknown key \"timeout\" in [policies.mirror]; did you mean \"policies.mirror.on_unscanned.timeout\"?"
        );
        assert_eq!(
            error("[policies.mirror]\nttl_secs = 1\n", &[]),
            "policies.mirror.ttl_secs: unknown key \"ttl_secs\" in [policies.mirror]; did you mean \"cache.ttl_secs\"?"
        );
        assert_eq!(
            error("[policies.mirror.on_unscanned]\nreport_only = true\n", &[]),
            "policies.mirror.on_unscanned.report_only: unknown key \"report_only\" in [policies.mirror.on_unscanned]; did you mean \"policies.mirror.report_only\"?"
        );
        // Policies nest only one level: `[policies.a.b]` is a key of `a`.
        assert_eq!(
            error("[policies.a.b]\ncache_mode = \"off\"\n", &[]),
            "policies.a.b: unknown key \"b\" in [policies.a]"
        );
        assert_eq!(
            error("[policys.mirror]\ncache_mode = \"off\"\n", &[]),
            "policys: unknown key \"policys\" at the top level; did you mean \"policy\"?"
        );
    }

    #[test]
    fn every_unknown_key_is_reported_once() {
        // A whole unknown table is one error, not one per key inside it.
        assert_eq!(
            errors(
                "[cach]\nttl_secs = 1\nkey_prefix = \"x\"\n[clamd]\nadress = \"x\"\ntimeout_ms = 1\n",
                &[]
            ),
            [
                "cach: unknown key \"cach\" at the top level; did you mean \"cache\"?",
                "clamd.adress: unknown key \"adress\" in [clamd]; did you mean \"address\"?",
                "clamd.timeout_ms: unknown key \"timeout_ms\" in [clamd]; did you mean \"scan.timeout_ms\"?",
            ]
        );
    }

    #[test]
    fn wrong_types_are_reported_with_what_was_expected() {
        let cases = [
            ("[clamd]\nconnect_timeout_ms = \"1s\"", "clamd.connect_timeout_ms: expected an integer, found a string"),
            ("[clamd]\nconnect_timeout_ms = 1.5", "clamd.connect_timeout_ms: expected an integer, found a float"),
            ("[clamd]\nmax_concurrent_scans = -1", "clamd.max_concurrent_scans: expected a non-negative integer, found -1"),
            ("[response]\nverdict_header = \"yes\"", "response.verdict_header: expected a boolean, found a string"),
            ("[clamd]\naddress = 3310", "clamd.address: expected a string, found an integer"),
            ("[clamd]\naddress = [\"tcp://a:1\"]", "clamd.address: expected a string, found an array"),
            ("[clamd.address]\nhost = \"a\"", "clamd.address: expected a string, found a table"),
            ("clamd = \"tcp://a:1\"", "clamd: expected a table, found a string"),
            ("[cache]\nredis_url = false", "cache.redis_url: expected a string, found a boolean"),
            (
                "[listen]\ngrpc_addr = \"localhost:50051\"",
                "listen.grpc_addr: expected an IP address and port such as \"127.0.0.1:9090\" or \"[::1]:9090\", found \"localhost:50051\"",
            ),
            (
                "[listen]\nadmin_addr = 9090",
                "listen.admin_addr: expected an IP address and port such as \"127.0.0.1:9090\" or \"[::1]:9090\", found an integer",
            ),
            (
                "[policy.on_unscanned]\ntimeout = \"block\"",
                "policy.on_unscanned.timeout: expected \"deny\" or \"allow\", found \"block\"",
            ),
            ("[log]\nformat = true", "log.format: expected \"json\" or \"text\", found a boolean"),
            (
                "[policy]\ncache_mode = \"url\"",
                "policy.cache_mode: expected \"content\", \"resource\" or \"off\", found \"url\"",
            ),
            (
                "[policies.mirror]\ncache_mode = 1",
                "policies.mirror.cache_mode: expected \"content\", \"resource\" or \"off\", found an integer",
            ),
            (
                "[policies.mirror.on_unscanned]\ntimeout = \"block\"",
                "policies.mirror.on_unscanned.timeout: expected \"deny\" or \"allow\", found \"block\"",
            ),
            ("[policies.mirror]\nimmutable = \"yes\"", "policies.mirror.immutable: expected a boolean, found a string"),
            ("[policies.mirror]\non_unscanned = 1", "policies.mirror.on_unscanned: expected a table, found an integer"),
            ("policies = 1", "policies: expected a table, found an integer"),
            ("[policies]\nmirror = \"resource\"", "policies.mirror: expected a table, found a string"),
            ("[cache]\nredis_password = 7", "cache.redis_password: expected a string, found an integer"),
            ("[log]\nformat = \"JSON\"", "log.format: expected \"json\" or \"text\", found \"JSON\""),
        ];
        for (text, expected) in cases {
            assert_eq!(error(text, &[]), expected, "for {text:?}");
        }
    }

    #[test]
    fn a_rejected_value_causes_no_follow_on_errors() {
        // The default stands in for a rejected value, and is not checked against other keys.
        assert_eq!(
            errors("[listen]\ngrpc_addr = \"nope\"\nadmin_addr = \"127.0.0.1:50051\"\n", &[]),
            ["listen.grpc_addr: expected an IP address and port such as \"127.0.0.1:9090\" or \"[::1]:9090\", found \"nope\""]
        );
        assert_eq!(errors("cache = 1\n", &[]), ["cache: expected a table, found an integer"]);
    }

    // --- Pass 3: values ------------------------------------------------------------------------

    #[test]
    fn out_of_range_values_are_reported_with_their_bounds() {
        let cases = [
            (
                "[clamd]\nconnect_timeout_ms = 0",
                "clamd.connect_timeout_ms: must be between 1 and 3600000, found 0",
            ),
            (
                "[clamd]\nwrite_timeout_ms = 0",
                "clamd.write_timeout_ms: must be between 1 and 3600000, found 0",
            ),
            (
                "[clamd]\nreply_timeout_ms = 3600001",
                "clamd.reply_timeout_ms: must be between 1 and 3600000, found 3600001",
            ),
            (
                "[clamd]\nhealth_interval_ms = 0",
                "clamd.health_interval_ms: must be between 1 and 3600000, found 0",
            ),
            (
                "[clamd]\nmax_concurrent_scans = 0",
                "clamd.max_concurrent_scans: must be between 1 and 1024, found 0",
            ),
            (
                "[clamd]\nmax_concurrent_scans = 1025",
                "clamd.max_concurrent_scans: must be between 1 and 1024, found 1025",
            ),
            ("[scan]\nmax_scan_bytes = 0", "scan.max_scan_bytes: must be between 1 and 4294967295, found 0"),
            (
                "[scan]\nmax_scan_bytes = 4294967296",
                "scan.max_scan_bytes: must be between 1 and 4294967295, found 4294967296",
            ),
            (
                "[scan]\nmax_decode_ratio = 4294967296",
                "scan.max_decode_ratio: must be at most 4294967295, found 4294967296",
            ),
            ("[cache]\nttl_secs = 0", "cache.ttl_secs: must be at least 1, found 0"),
            ("[cache]\nmemory_max_entries = 0", "cache.memory_max_entries: must be at least 1, found 0"),
            ("[cache]\nredis_pool_size = 0", "cache.redis_pool_size: must be between 1 and 64, found 0"),
            ("[cache]\nredis_pool_size = 65", "cache.redis_pool_size: must be between 1 and 64, found 65"),
            ("[cache]\nmemory_ttl_secs = 0", "cache.memory_ttl_secs: must be at least 1, found 0"),
            ("[cache]\nlock_ttl_ms = 0", "cache.lock_ttl_ms: must be between 1 and 3600000, found 0"),
            (
                "[cache]\nlock_ttl_ms = 3600001",
                "cache.lock_ttl_ms: must be between 1 and 3600000, found 3600001",
            ),
            (
                "[cache]\nredis_timeout_ms = 0",
                "cache.redis_timeout_ms: must be between 1 and 3600000, found 0",
            ),
            (
                "[ext_proc]\nmax_message_bytes = 1048575",
                "ext_proc.max_message_bytes: must be at least 1048576, found 1048575",
            ),
            (
                "[response]\nretry_after_secs = 86401",
                "response.retry_after_secs: must be at most 86400, found 86401",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(error(text, &[]), expected, "for {text:?}");
        }
        let bounds =
            "[clamd]\nconnect_timeout_ms = 1\nreply_timeout_ms = 3600000\nmax_concurrent_scans = 1024\n\
                      [scan]\nmax_scan_bytes = 4294967295\n[ext_proc]\nmax_message_bytes = 1048576\n\
                      [response]\nretry_after_secs = 0\n[cache]\nttl_secs = 1\nmemory_max_entries = 1\n\
                      redis_pool_size = 1\nmemory_ttl_secs = 1\nlock_ttl_ms = 1\n";
        assert!(load(bounds, &[]).is_ok());
    }

    #[test]
    fn listeners_must_not_share_a_port() {
        assert_eq!(
            error("[listen]\ngrpc_addr = \"127.0.0.1:9090\"\n", &[]),
            "listen.admin_addr: conflicts with listen.grpc_addr (127.0.0.1:9090): both bind port 9090"
        );
        assert_eq!(
            error("[listen]\ngrpc_addr = \"0.0.0.0:7000\"\nadmin_addr = \"127.0.0.1:7000\"\n", &[]),
            "listen.admin_addr: conflicts with listen.grpc_addr (0.0.0.0:7000): both bind port 7000"
        );
        for ok in [
            "[listen]\ngrpc_addr = \"127.0.0.1:7000\"\nadmin_addr = \"127.0.0.2:7000\"\n",
            "[listen]\ngrpc_addr = \"127.0.0.1:0\"\nadmin_addr = \"127.0.0.1:0\"\n",
        ] {
            assert!(load(ok, &[]).is_ok(), "{ok}");
        }
    }

    #[test]
    fn clamd_address_is_tcp_host_port_or_an_absolute_unix_path() {
        for ok in [
            "tcp://clamd:3310",
            "tcp://10.0.0.5:3310",
            "tcp://[::1]:3310",
            "tcp://clamd_1.svc-x:1",
            "unix:///run/clamd.ctl",
        ] {
            assert!(load(&format!("[clamd]\naddress = {ok:?}"), &[]).is_ok(), "{ok}");
        }
        let tcp = |found: &str| {
            format!(
                "clamd.address: expected \"tcp://HOST:PORT\" with a port from 1 to 65535, found {found:?}"
            )
        };
        for bad in [
            "tcp://clamd",
            "tcp://clamd:0",
            "tcp://clamd:65536",
            "tcp://:3310",
            "tcp://::1:3310",
            "tcp://clamd:3310/",
            "tcp://clamd:+1",
        ] {
            assert_eq!(error(&format!("[clamd]\naddress = {bad:?}"), &[]), tcp(bad));
        }
        assert_eq!(
            error("[clamd]\naddress = \"clamd:3310\"", &[]),
            "clamd.address: expected \"tcp://HOST:PORT\" or \"unix:///absolute/path\", found \"clamd:3310\""
        );
        assert_eq!(
            error("[clamd]\naddress = \"unix://run/clamd.ctl\"", &[]),
            "clamd.address: expected an absolute path after \"unix://\", as in \"unix:///run/clamav/clamd.ctl\", found \"unix://run/clamd.ctl\""
        );
    }

    #[test]
    fn redis_url_must_be_a_usable_redis_url() {
        for ok in [
            "redis://127.0.0.1:6379/0",
            "redis://:pw@redis",
            "redis+unix:///run/redis.sock?db=1",
            "unix:///run/redis.sock",
            // Accepted whether or not this build of the redis crate has TLS.
            "rediss://:pw@redis:6380/1",
            "rediss://redis:6380/#insecure",
        ] {
            assert!(load(&format!("[cache]\nredis_url = {ok:?}"), &[]).is_ok(), "{ok}");
        }
        assert_eq!(
            error("[cache]\nredis_url = \"rediss://:hunter2@redis:6380/#nocheck\"", &[]),
            "cache.redis_url: only \"#insecure\" may end a rediss:// URL, found \"rediss://:***@redis:6380/#nocheck\""
        );
        assert_eq!(
            error("[cache]\nredis_url = \"rediss://:hunter2@redis:6380/x\"", &[]),
            "cache.redis_url: is not a usable Redis URL (Invalid database number), found \"rediss://:***@redis:6380/x\""
        );
        assert_eq!(
            error("[cache]\nredis_url = \"\"", &[]),
            "cache.redis_url: must not be empty; remove the key to use the in-process cache"
        );
        assert_eq!(
            error("[cache]\nredis_url = \"http://user:hunter2@redis:6379\"", &[]),
            "cache.redis_url: expected a URL starting with \"redis://\", \"rediss://\", \"redis+unix://\" or \"unix://\", found \"http://user:***@redis:6379\""
        );
        assert_eq!(
            error("[cache]\nredis_url = \"redis://:hunter2@redis:6379/zero\"", &[]),
            "cache.redis_url: is not a usable Redis URL (Invalid database number), found \"redis://:***@redis:6379/zero\""
        );
        assert_eq!(
            error("[cache]\nredis_url = \"redis://\"", &[]),
            "cache.redis_url: is not a usable Redis URL (Missing hostname), found \"redis://\""
        );
    }

    #[test]
    fn key_prefix_and_log_level_are_checked() {
        assert_eq!(error("[cache]\nkey_prefix = \"\"", &[]), "cache.key_prefix: must not be empty");
        assert_eq!(
            error("[cache]\nkey_prefix = \"clam gate:\"", &[]),
            "cache.key_prefix: must not contain whitespace or control characters, found \"clam gate:\""
        );
        assert_eq!(
            error("[log]\nlevel = \" \"", &[]),
            "log.level: must not be empty; use a level such as \"info\""
        );
        assert_eq!(
            error("[log]\nlevel = \"clamgate=loud\"", &[]),
            "log.level: is not a valid tracing filter (error parsing level filter: expected one of \"off\", \"error\", \"warn\", \"info\", \"debug\", \"trace\", or a number 0-5), found \"clamgate=loud\""
        );
    }

    #[test]
    fn validate_checks_a_config_built_in_code() {
        let mut config = Config::default();
        config.clamd.max_concurrent_scans = 0;
        config.cache.key_prefix = String::new();
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "clamd.max_concurrent_scans: must be between 1 and 1024, found 0\ncache.key_prefix: must not be empty"
        );
    }

    // --- All at once ---------------------------------------------------------------------------

    #[test]
    fn every_problem_is_reported_at_once() {
        let text =
            "[clamd]\nconnect_timeout_ms = \"1s\"\nmax_concurrent_scans = 0\n[cache]\nredis_ur = \"x\"\n";
        let err = load(text, &[]).unwrap_err();
        assert_eq!(err.0.len(), 3);
        assert_eq!(
            err.to_string(),
            "cache.redis_ur: unknown key \"redis_ur\" in [cache]; did you mean \"redis_url\"?\n\
             clamd.connect_timeout_ms: expected an integer, found a string\n\
             clamd.max_concurrent_scans: must be between 1 and 1024, found 0"
        );
        assert_eq!(
            err.0[1],
            ConfigError::new("clamd.connect_timeout_ms", "expected an integer, found a string")
        );
    }

    #[test]
    fn file_environment_and_value_errors_come_together_in_order() {
        let text = "[log]\nformat = \"yaml\"\nlevel = \"\"\n[scan]\nmax_scan_bytes = 0\n";
        let env = [("CLAMGATE_CLAMD_ADRESS", "tcp://x:1"), ("CLAMGATE_RESPONSE_VERDICT_HEADER", "yes")];
        assert_eq!(
            errors(text, &env),
            [
                "log.format: expected \"json\" or \"text\", found \"yaml\"",
                "CLAMGATE_CLAMD_ADRESS: unknown variable: it matches no config key; did you mean CLAMGATE_CLAMD_ADDRESS?",
                "CLAMGATE_RESPONSE_VERDICT_HEADER: invalid value for response.verdict_header: expected true or false, found \"yes\"",
                "scan.max_scan_bytes: must be between 1 and 4294967295, found 0",
                "log.level: must not be empty; use a level such as \"info\"",
            ]
        );
    }

    // --- Environment ---------------------------------------------------------------------------

    #[test]
    fn env_overrides_every_kind_of_key() {
        let config = load(
            "",
            &[
                ("CLAMGATE_CLAMD_CONNECT_TIMEOUT_MS", "2500"),
                ("CLAMGATE_RESPONSE_EXPOSE_SIGNATURE", "false"),
                ("CLAMGATE_CLAMD_ADDRESS", "tcp://clamd:3310"),
                ("CLAMGATE_LISTEN_GRPC_ADDR", "0.0.0.0:50051"),
                ("CLAMGATE_LOG_FORMAT", "text"),
                ("CLAMGATE_POLICY_ON_UNSCANNED_TOO_LARGE", "allow"),
                ("CLAMGATE_CACHE_REDIS_URL", "redis://redis:6379"),
                ("CLAMGATE_CONFIG", "/etc/clamgate/clamgate.toml"),
                ("PATH", "/usr/bin"),
                ("clamgate_clamd_address", "ignored: not the prefix"),
            ],
        )
        .unwrap();
        assert_eq!(config.clamd.connect_timeout_ms, 2500);
        assert!(!config.response.expose_signature);
        assert_eq!(config.clamd.address, "tcp://clamd:3310");
        assert_eq!(config.listen.grpc_addr, "0.0.0.0:50051".parse().unwrap());
        assert_eq!(config.log.format, LogFormat::Text);
        assert_eq!(config.policy.on_unscanned.too_large, UnscannedAction::Allow);
        assert_eq!(config.policy.on_unscanned.timeout, UnscannedAction::Deny);
        assert_eq!(config.cache.redis_url.as_deref(), Some("redis://redis:6379"));
    }

    #[test]
    fn env_wins_over_the_file() {
        let text = "[clamd]\naddress = \"tcp://file:3310\"\nmax_concurrent_scans = 4\n\
                    [cache]\nredis_url = \"redis://file:6379\"\n[policy.on_unscanned]\ntimeout = \"allow\"\n";
        let config = load(
            text,
            &[("CLAMGATE_CLAMD_ADDRESS", "tcp://env:3310"), ("CLAMGATE_POLICY_ON_UNSCANNED_TIMEOUT", "deny")],
        )
        .unwrap();
        assert_eq!(config.clamd.address, "tcp://env:3310");
        assert_eq!(config.clamd.max_concurrent_scans, 4);
        assert_eq!(config.policy.on_unscanned.timeout, UnscannedAction::Deny);
        // An empty value unsets an optional key, even one the file sets.
        let config = load(text, &[("CLAMGATE_CACHE_REDIS_URL", "")]).unwrap();
        assert_eq!(config.cache.redis_url, None);
    }

    #[test]
    fn env_cannot_hide_a_bad_file() {
        // The file is still wrong; the environment's good value is still checked.
        assert_eq!(
            errors("[clamd]\nreply_timeout_ms = \"1m\"\n", &[("CLAMGATE_CLAMD_REPLY_TIMEOUT_MS", "0")]),
            [
                "clamd.reply_timeout_ms: expected an integer, found a string",
                "clamd.reply_timeout_ms: must be between 1 and 3600000, found 0 (set by CLAMGATE_CLAMD_REPLY_TIMEOUT_MS)",
            ]
        );
    }

    #[test]
    fn bad_env_values_name_the_variable_and_the_key() {
        let cases = [
            (
                ("CLAMGATE_CLAMD_CONNECT_TIMEOUT_MS", "1s"),
                "CLAMGATE_CLAMD_CONNECT_TIMEOUT_MS: invalid value for clamd.connect_timeout_ms: expected an integer, found \"1s\"",
            ),
            (
                ("CLAMGATE_CLAMD_MAX_CONCURRENT_SCANS", "-4"),
                "CLAMGATE_CLAMD_MAX_CONCURRENT_SCANS: invalid value for clamd.max_concurrent_scans: expected a non-negative integer, found -4",
            ),
            (
                ("CLAMGATE_POLICY_REPORT_ONLY", "1"),
                "CLAMGATE_POLICY_REPORT_ONLY: invalid value for policy.report_only: expected true or false, found \"1\"",
            ),
            (
                ("CLAMGATE_LOG_FORMAT", "yaml"),
                "CLAMGATE_LOG_FORMAT: invalid value for log.format: expected \"json\" or \"text\", found \"yaml\"",
            ),
            (
                ("CLAMGATE_LISTEN_ADMIN_ADDR", ":9090"),
                "CLAMGATE_LISTEN_ADMIN_ADDR: invalid value for listen.admin_addr: expected an IP address and port such as \"127.0.0.1:9090\" or \"[::1]:9090\", found \":9090\"",
            ),
            (
                ("CLAMGATE_CLAMD_CONNECT_TIMEOUT_MS", ""),
                "CLAMGATE_CLAMD_CONNECT_TIMEOUT_MS: invalid value for clamd.connect_timeout_ms: expected an integer, found \"\"",
            ),
        ];
        for (var, expected) in cases {
            assert_eq!(error("", &[var]), expected);
        }
        // Values out of range name the key and the variable that set it.
        assert_eq!(
            error("", &[("CLAMGATE_CACHE_TTL_SECS", "0")]),
            "cache.ttl_secs: must be at least 1, found 0 (set by CLAMGATE_CACHE_TTL_SECS)"
        );
        assert_eq!(
            error("", &[("CLAMGATE_CACHE_KEY_PREFIX", "")]),
            "cache.key_prefix: must not be empty (set by CLAMGATE_CACHE_KEY_PREFIX)"
        );
    }

    #[test]
    fn unknown_env_variables_are_errors() {
        assert_eq!(
            error("", &[("CLAMGATE_CACHE_REDIS_UR", "redis://x")]),
            "CLAMGATE_CACHE_REDIS_UR: unknown variable: it matches no config key; did you mean CLAMGATE_CACHE_REDIS_URL?"
        );
        assert_eq!(
            error("", &[("CLAMGATE_DEBUG", "1")]),
            "CLAMGATE_DEBUG: unknown variable: it matches no config key"
        );
        // A table is not a key.
        assert_eq!(
            error("", &[("CLAMGATE_CLAMD", "x")]),
            "CLAMGATE_CLAMD: unknown variable: it matches no config key"
        );
        assert_eq!(
            errors("", &[("CLAMGATE_B", "1"), ("CLAMGATE_A", "1")]),
            [
                "CLAMGATE_A: unknown variable: it matches no config key",
                "CLAMGATE_B: unknown variable: it matches no config key"
            ]
        );
    }

    // --- Lists ---------------------------------------------------------------------------------

    #[test]
    fn a_list_is_an_array_of_strings_in_the_file() {
        let text = "[cache]\nredis_cluster_urls = [\"redis://r1:7000\", \"redis://r2:7000\"]\n";
        assert_eq!(load(text, &[]).unwrap().cache.redis_cluster_urls, ["redis://r1:7000", "redis://r2:7000"]);
        assert_eq!(
            error("[cache]\nredis_cluster_urls = \"redis://r1:7000\"\n", &[]),
            "cache.redis_cluster_urls: expected an array of strings, found a string"
        );
        assert_eq!(
            error("[cache.redis_cluster_urls]\nr1 = \"redis://r1:7000\"\n", &[]),
            "cache.redis_cluster_urls: expected an array of strings, found a table"
        );
        // Every bad element, by index; the list is then dropped whole, so nothing follows on.
        assert_eq!(
            errors(
                "[cache]\nredis_cluster_urls = [\"redis://r1:7000\", 7000, \"redis://r3:7000\", [\"x\"]]\n",
                &[]
            ),
            [
                "cache.redis_cluster_urls[1]: expected a string, found an integer",
                "cache.redis_cluster_urls[3]: expected a string, found an array",
            ]
        );
    }

    #[test]
    fn a_list_is_comma_separated_in_the_environment() {
        let urls = |value: &str| {
            load("", &[("CLAMGATE_CACHE_REDIS_CLUSTER_URLS", value)]).unwrap().cache.redis_cluster_urls
        };
        assert_eq!(urls("redis://r1:7000"), ["redis://r1:7000"]);
        assert_eq!(urls(" redis://r1:7000 ,redis://r2:7000\t"), ["redis://r1:7000", "redis://r2:7000"]);
        // An empty value is an empty list, also over a list in the file.
        assert_eq!(urls(""), Vec::<String>::new());
        assert_eq!(urls("  "), Vec::<String>::new());
        let text = "[cache]\nredis_cluster_urls = [\"redis://file:7000\"]\n";
        assert!(load(text, &[("CLAMGATE_CACHE_REDIS_CLUSTER_URLS", "")])
            .unwrap()
            .cache
            .redis_cluster_urls
            .is_empty());
        // An empty element is checked as a URL, and named with its index and the variable.
        assert_eq!(
            error("", &[("CLAMGATE_CACHE_REDIS_CLUSTER_URLS", "redis://r1:7000,,redis://r3:7000")]),
            "cache.redis_cluster_urls[1]: must not be empty (set by CLAMGATE_CACHE_REDIS_CLUSTER_URLS)"
        );
    }

    // --- Named policies ------------------------------------------------------------------------

    #[test]
    fn a_named_policy_starts_from_the_default_policy() {
        let text = "[policy]\nreport_only = true\n[policy.on_unscanned]\ntimeout = \"allow\"\n\
                    [policies.mirror]\ncache_mode = \"resource\"\n\
                    [policies.mirror.on_unscanned]\ntoo_large = \"allow\"\n\
                    [policies.strict]\nreport_only = false\n[policies.strict.on_unscanned]\ntimeout = \"deny\"\n";
        let config = load(text, &[]).unwrap();
        assert_eq!(config.policy.cache_mode, CacheMode::Content);
        let mirror = &config.policies["mirror"];
        assert!(mirror.report_only);
        assert_eq!(mirror.cache_mode, CacheMode::Resource);
        assert_eq!(mirror.on_unscanned.timeout, UnscannedAction::Allow, "inherited");
        assert_eq!(mirror.on_unscanned.too_large, UnscannedAction::Allow, "its own");
        assert_eq!(mirror.on_unscanned.encrypted, UnscannedAction::Deny, "the default's default");
        assert_eq!(
            config.policies["strict"],
            PolicyConfig { report_only: false, ..PolicyConfig::default() },
            "it overrides what it sets"
        );
        assert_eq!(config.policies.len(), 2);
        // `[policy]` as the environment leaves it.
        let config = load(text, &[("CLAMGATE_POLICY_SCAN_REQUESTS", "false")]).unwrap();
        assert!(!config.policies["mirror"].scan_requests && !config.policies["strict"].scan_requests);
        // An empty named policy is `[policy]`.
        let config = load("[policy]\nreport_only = true\n[policies.same]\n", &[]).unwrap();
        assert_eq!(config.policies["same"], config.policy);
    }

    #[test]
    fn the_environment_sets_and_defines_named_policies() {
        let text = "[policy]\nreport_only = true\n[policies.mirror]\ncache_mode = \"resource\"\n";
        let config = load(
            text,
            &[
                ("CLAMGATE_POLICIES_MIRROR_CACHE_MODE", "off"),
                ("CLAMGATE_POLICIES_MIRROR_ON_UNSCANNED_TOO_LARGE", "allow"),
                ("CLAMGATE_POLICIES_UPLOADS2_SCAN_RESPONSES", "false"),
            ],
        )
        .unwrap();
        let mirror = &config.policies["mirror"];
        assert_eq!(
            (mirror.cache_mode, mirror.on_unscanned.too_large),
            (CacheMode::Off, UnscannedAction::Allow)
        );
        assert!(mirror.report_only);
        // A policy the file does not have, inheriting from `[policy]`.
        let uploads = &config.policies["uploads2"];
        assert!(!uploads.scan_responses && uploads.scan_requests && uploads.report_only);
        assert_eq!(config.policies.len(), 2);

        assert_eq!(
            error("", &[("CLAMGATE_POLICIES_MIRROR_CACHE_MODE", "url")]),
            "CLAMGATE_POLICIES_MIRROR_CACHE_MODE: invalid value for policies.mirror.cache_mode: expected \"content\", \"resource\" or \"off\", found \"url\""
        );
        // Suggestions for a variable of a named policy: under its own name, and under the names
        // the file uses.
        assert_eq!(
            error("", &[("CLAMGATE_POLICIES_MIRROR_CACHE_MOD", "off")]),
            "CLAMGATE_POLICIES_MIRROR_CACHE_MOD: unknown variable: it matches no config key; did you mean CLAMGATE_POLICIES_MIRROR_CACHE_MODE?"
        );
        assert_eq!(
            error(text, &[("CLAMGATE_POLICY_MIRROR_CACHE_MODE", "off")]),
            "CLAMGATE_POLICY_MIRROR_CACHE_MODE: unknown variable: it matches no config key; did you mean CLAMGATE_POLICIES_MIRROR_CACHE_MODE?"
        );
        for var in ["CLAMGATE_POLICIES", "CLAMGATE_POLICIES_MIRROR", "CLAMGATE_POLICIES_MIRROR_ON_UNSCANNED"]
        {
            assert_eq!(
                error("", &[(var, "x")]),
                format!("{var}: unknown variable: it matches no config key")
            );
        }
        // An empty value of a key that is not optional is a value, as elsewhere.
        assert_eq!(
            error("", &[("CLAMGATE_POLICIES_MIRROR_IMMUTABLE", "")]),
            "CLAMGATE_POLICIES_MIRROR_IMMUTABLE: invalid value for policies.mirror.immutable: expected true or false, found \"\""
        );
    }

    #[test]
    fn policy_names_are_short_lower_case_and_not_default() {
        let invalid = |name: &str| {
            format!(
                "invalid policy name {name:?}: a name is 1 to 32 lower-case letters (a-z) and digits, \
                 because it travels in Envoy's gRPC metadata (x-clamgate-policy) and in environment \
                 variable names (CLAMGATE_POLICIES_<NAME>_<KEY>)"
            )
        };
        let long = "a".repeat(33);
        for name in ["Mirror", "mir-ror", "mir_ror", "", "naïve", long.as_str()] {
            assert_eq!(
                error(&format!("[policies.{name:?}]\ncache_mode = \"off\"\n"), &[]),
                format!("policies.{name}: {}", invalid(name))
            );
        }
        assert!(load(&format!("[policies.{}]\n[policies.v2]\n", "a".repeat(32)), &[]).is_ok());
        // A bad name and the problems inside its table are all reported.
        assert_eq!(
            errors("[policies.Mirror]\ncache_mod = \"off\"\n", &[]),
            [
                format!("policies.Mirror: {}", invalid("Mirror")),
                "policies.Mirror.cache_mod: unknown key \"cache_mod\" in [policies.Mirror]; did you mean \"cache_mode\"?"
                    .to_string(),
            ]
        );
        assert_eq!(
            error("[policies.default]\nreport_only = true\n", &[]),
            "policies.default: the policy name \"default\" is reserved for [policy], the policy of routes that name none; set its keys there"
        );
        // In a variable, the name is written in upper case.
        assert_eq!(
            error("", &[("CLAMGATE_POLICIES_DEFAULT_REPORT_ONLY", "true")]),
            "CLAMGATE_POLICIES_DEFAULT_REPORT_ONLY: the policy name \"default\" is reserved for [policy], the policy of routes that name none; set CLAMGATE_POLICY_REPORT_ONLY instead"
        );
        assert_eq!(
            error("", &[("CLAMGATE_POLICIES_Mirror_CACHE_MODE", "off")]),
            "CLAMGATE_POLICIES_Mirror_CACHE_MODE: invalid policy name \"Mirror\": in a variable name, a policy name is written in upper case (CLAMGATE_POLICIES_MIRROR_CACHE_MODE sets cache_mode of [policies.mirror])"
        );
        let var = format!("CLAMGATE_POLICIES_{}_CACHE_MODE", "A".repeat(33));
        assert_eq!(error("", &[(&var, "off")]), format!("{var}: {}", invalid(&"a".repeat(33))));
        // A config built in code is checked too.
        let mut config = Config::default();
        config.policies.insert("Bad".to_string(), PolicyConfig::default());
        assert_eq!(config.validate().unwrap_err().to_string(), format!("policies.Bad: {}", invalid("Bad")));
    }

    #[test]
    fn policy_named_finds_default_and_named_policies() {
        let config = load("[policies.mirror]\ncache_mode = \"resource\"\n", &[]).unwrap();
        assert_eq!(config.policy_named("default"), Some(&config.policy));
        assert_eq!(config.policy_named(""), Some(&config.policy));
        assert_eq!(config.policy_named("mirror").map(|policy| policy.cache_mode), Some(CacheMode::Resource));
        assert_eq!(config.policy_named("mirorr"), None);
        assert_eq!(config.policy_named("Mirror"), None);
    }

    // --- Redis ---------------------------------------------------------------------------------

    #[test]
    fn redis_url_and_cluster_urls_exclude_each_other() {
        let text =
            "[cache]\nredis_url = \"redis://redis:6379\"\nredis_cluster_urls = [\"redis://r1:7000\"]\n";
        let message = "cannot be set together with cache.redis_url: set redis_url for a standalone Redis or \
                       redis_cluster_urls for a Redis Cluster";
        assert_eq!(error(text, &[]), format!("cache.redis_cluster_urls: {message}"));
        assert_eq!(
            error(
                "[cache]\nredis_url = \"redis://redis:6379\"\n",
                &[("CLAMGATE_CACHE_REDIS_CLUSTER_URLS", "redis://r1:7000")]
            ),
            format!("cache.redis_cluster_urls: {message} (set by CLAMGATE_CACHE_REDIS_CLUSTER_URLS)")
        );
        // Unsetting either resolves it.
        assert!(load(text, &[("CLAMGATE_CACHE_REDIS_URL", "")]).is_ok());
        assert!(load(text, &[("CLAMGATE_CACHE_REDIS_CLUSTER_URLS", "")]).is_ok());
        // A rejected redis_url is one error, not two.
        let text = "[cache]\nredis_url = 1\nredis_cluster_urls = [\"redis://r1:7000\"]\n";
        assert_eq!(error(text, &[]), "cache.redis_url: expected a string, found an integer");
    }

    #[test]
    fn cluster_urls_are_redis_host_port_without_a_database() {
        let load_urls = |urls: &[&str]| load(&format!("[cache]\nredis_cluster_urls = {urls:?}\n"), &[]);
        for ok in [
            &["redis://r1:7000", "redis://10.0.0.2:7001", "redis://[::1]:7002"][..],
            &["rediss://:pw@r1:7000/", "rediss://user:pw@r2:7000/0"],
            &["rediss://r1:7000/#insecure"],
        ] {
            assert!(load_urls(ok).is_ok(), "{ok:?}");
        }
        let cases = [
            (
                "redis+unix:///run/redis.sock",
                "expected \"redis://HOST:PORT\" or \"rediss://HOST:PORT\" (Redis Cluster has no unix sockets), found \"redis+unix:///run/redis.sock\"",
            ),
            (
                "http://user:hunter2@r1:7000",
                "expected \"redis://HOST:PORT\" or \"rediss://HOST:PORT\" (Redis Cluster has no unix sockets), found \"http://user:***@r1:7000\"",
            ),
            ("redis://:hunter2@r1", "must name the port, as in \"redis://redis-1:6379\", found \"redis://:***@r1\""),
            (
                "rediss://:hunter2@r1:7000/2",
                "names database 2, but Redis Cluster has only database 0, found \"rediss://:***@r1:7000/2\"",
            ),
            ("redis://", "is not a usable Redis URL (Missing hostname), found \"redis://\""),
            ("redis://r1:7000/db", "is not a usable Redis URL (Invalid database number), found \"redis://r1:7000/db\""),
            ("", "must not be empty"),
        ];
        for (url, message) in cases {
            let ok = if url.starts_with("rediss://") { "rediss://ok:7000" } else { "redis://ok:7000" };
            assert_eq!(
                errors(&format!("[cache]\nredis_cluster_urls = [{ok:?}, {url:?}]\n"), &[]),
                [format!("cache.redis_cluster_urls[1]: {message}")],
                "{url}"
            );
        }
        assert_eq!(
            error("[cache]\nredis_cluster_urls = [\"redis://r1:7000\", \"rediss://r2:7000\"]\n", &[]),
            "cache.redis_cluster_urls: mixes redis:// and rediss://: the nodes of a cluster are all reached over TLS or none are"
        );
    }

    /// The warning for a Redis off loopback without an HMAC key, for host `HOST`.
    const NO_HMAC_KEY_WARNING: &str = "cache.hmac_key_file: not set while Redis (HOST) is not on loopback: \
        anyone who can write to that Redis can plant a Clean verdict for any body; set a key file shared \
        by every instance";

    fn plaintext_warning(key: &str, host: &str) -> String {
        format!(
            "{key}: redis:// to {host} is plaintext: anyone on the network path can read and rewrite \
             verdicts (and the password); use rediss://"
        )
    }

    #[test]
    fn plaintext_or_unauthenticated_remote_redis_is_warned_about() {
        let warnings = |text: &str, env: &[(&str, &str)]| load(text, env).unwrap().warnings();
        for local in [
            "redis://127.0.0.1:6379/0",
            "redis://localhost:6379",
            "redis://:pw@127.0.0.2:6379",
            "redis://[::1]:6379",
            "unix:///run/redis.sock",
            "redis+unix:///run/redis.sock",
        ] {
            assert!(warnings(&format!("[cache]\nredis_url = {local:?}\n"), &[]).is_empty(), "{local}");
        }
        assert_eq!(
            warnings("[cache]\nredis_url = \"redis://:pw@10.0.0.7:6379/0\"\n", &[]),
            [
                plaintext_warning("cache.redis_url", "10.0.0.7"),
                NO_HMAC_KEY_WARNING.replace("HOST", "10.0.0.7")
            ]
        );
        assert_eq!(
            warnings(
                "[cache]\nredis_cluster_urls = [\"redis://r1:7000\", \"redis://[fd00::2]:7000\"]\n",
                &[]
            ),
            [
                plaintext_warning("cache.redis_cluster_urls[0]", "r1"),
                plaintext_warning("cache.redis_cluster_urls[1]", "[fd00::2]"),
                NO_HMAC_KEY_WARNING.replace("HOST", "r1"),
            ]
        );
        // TLS and a key: nothing to say. TLS without a key: the key is still missing.
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("hmac.key");
        std::fs::write(&key, format!("{}\n", "k".repeat(40))).unwrap();
        let key = key.to_str().unwrap();
        let tls = "[cache]\nredis_url = \"rediss://redis.internal:6380\"\n";
        assert!(warnings(tls, &[("CLAMGATE_CACHE_HMAC_KEY_FILE", key)]).is_empty());
        assert_eq!(warnings(tls, &[]), [NO_HMAC_KEY_WARNING.replace("HOST", "redis.internal")]);
        // Plaintext with a key: values cannot be forged, but the link is still readable.
        assert_eq!(
            warnings("[cache]\nredis_url = \"redis://10.0.0.7\"\n", &[("CLAMGATE_CACHE_HMAC_KEY_FILE", key)]),
            [plaintext_warning("cache.redis_url", "10.0.0.7")]
        );
        assert_eq!(
            warnings("", &[("CLAMGATE_CACHE_HMAC_KEY_FILE", key)]),
            ["cache.hmac_key_file: set, but no Redis is configured (the in-process cache needs no key), so it is not used"]
        );
    }

    #[test]
    fn hmac_key_files_must_hold_a_long_enough_key() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.key");
        std::fs::write(&good, "k".repeat(32)).unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, format!("  {}\n\n", "k".repeat(31))).unwrap();
        let missing = dir.path().join("missing.key");
        let (good, short, missing) =
            (good.to_str().unwrap(), short.to_str().unwrap(), missing.to_str().unwrap());
        let config =
            load(&format!("[cache]\nhmac_key_file = {good:?}\nhmac_previous_key_file = {good:?}\n"), &[])
                .unwrap();
        assert_eq!(config.cache.hmac_key_file.as_deref(), Some(good));
        let errors = errors(
            &format!("[cache]\nhmac_key_file = {short:?}\nhmac_previous_key_file = {missing:?}\n"),
            &[],
        );
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(
            errors[0].starts_with("cache.hmac_key_file: ") && errors[0].contains("fewer than 32 bytes"),
            "{errors:#?}"
        );
        assert!(!errors[0].contains("kkkk"), "no key material in errors: {errors:#?}");
        assert!(errors[1].starts_with("cache.hmac_previous_key_file: cannot read "), "{errors:#?}");
        assert!(error(&format!("[cache]\nhmac_previous_key_file = {good:?}\n"), &[])
            .starts_with("cache.hmac_previous_key_file: set without cache.hmac_key_file"),);
        // An empty variable unsets the key.
        let unset =
            load(&format!("[cache]\nhmac_key_file = {good:?}\n"), &[("CLAMGATE_CACHE_HMAC_KEY_FILE", "")]);
        assert_eq!(unset.unwrap().cache.hmac_key_file, None);
    }

    #[test]
    fn signature_epoch_and_unscanned_ttl_have_their_ranges() {
        let config = load("[cache]\nsignature_epoch = 3\nunscanned_ttl_secs = 0\n", &[]).unwrap();
        assert_eq!((config.cache.signature_epoch, config.cache.unscanned_ttl_secs), (3, 0));
        assert_eq!(CacheConfig::default().unscanned_ttl_secs, 300);
        assert_eq!(
            error("", &[("CLAMGATE_CACHE_UNSCANNED_TTL_SECS", "3601")]),
            "cache.unscanned_ttl_secs: must be at most 3600, found 3601 (set by CLAMGATE_CACHE_UNSCANNED_TTL_SECS)"
        );
    }

    #[test]
    fn the_tls_ca_file_must_be_a_readable_pem_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
        let not_pem = dir.path().join("ca.der");
        std::fs::write(&not_pem, [0x30, 0x82, 0x01]).unwrap();
        let missing = dir.path().join("missing.pem");
        let with_ca = |path: &Path| {
            format!(
                "[cache]\nredis_url = \"rediss://redis:6380\"\nredis_tls_ca_file = {:?}\n",
                path.display().to_string()
            )
        };
        let config = load(&with_ca(&ca), &[]).unwrap();
        assert_eq!(config.cache.redis_tls_ca_file.as_deref(), ca.to_str());
        assert_eq!(config.warnings(), [NO_HMAC_KEY_WARNING.replace("HOST", "redis")]);
        assert_eq!(
            error(&with_ca(&missing), &[]),
            format!(
                "cache.redis_tls_ca_file: cannot read {:?}: No such file or directory (os error 2)",
                missing.display().to_string()
            )
        );
        assert_eq!(
            error("", &[("CLAMGATE_CACHE_REDIS_TLS_CA_FILE", missing.to_str().unwrap())]),
            format!(
                "cache.redis_tls_ca_file: cannot read {:?}: No such file or directory (os error 2) (set by CLAMGATE_CACHE_REDIS_TLS_CA_FILE)",
                missing.display().to_string()
            )
        );
        assert_eq!(
            error(&with_ca(dir.path()), &[]),
            format!(
                "cache.redis_tls_ca_file: cannot read {:?}: Is a directory (os error 21)",
                dir.path().display().to_string()
            )
        );
        assert_eq!(
            error(&with_ca(&not_pem), &[]),
            format!(
                "cache.redis_tls_ca_file: {:?} holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\" line)",
                not_pem.display().to_string()
            )
        );
        assert_eq!(
            error("[cache]\nredis_tls_ca_file = \"\"\n", &[]),
            "cache.redis_tls_ca_file: must not be empty; remove the key to trust the system's roots"
        );
        // An empty variable unsets it.
        assert_eq!(
            load(&with_ca(&missing), &[("CLAMGATE_CACHE_REDIS_TLS_CA_FILE", "")])
                .unwrap()
                .cache
                .redis_tls_ca_file,
            None
        );
        // Without a rediss:// URL it is not used: a warning.
        let text = format!(
            "[cache]\nredis_cluster_urls = [\"redis://127.0.0.1:7000\"]\nredis_tls_ca_file = {:?}\n",
            ca.display().to_string()
        );
        assert_eq!(
            load(&text, &[]).unwrap().warnings(),
            ["cache.redis_tls_ca_file: set, but neither cache.redis_url nor cache.redis_cluster_urls uses rediss://, so it is not used"]
        );
    }

    #[test]
    fn redis_credentials_are_checked_without_showing_the_password() {
        assert_eq!(
            error("[cache]\nredis_username = \"\"\n", &[]),
            "cache.redis_username: must not be empty; remove the key to use the user name in the URL"
        );
        assert_eq!(
            error("[cache]\nredis_password = \"\"\n", &[]),
            "cache.redis_password: must not be empty; remove the key to use the password in the URL"
        );
        let config = load(
            "[cache]\nredis_username = \"file\"\nredis_password = \"file\"\n",
            &[("CLAMGATE_CACHE_REDIS_USERNAME", ""), ("CLAMGATE_CACHE_REDIS_PASSWORD", "hunter2")],
        )
        .unwrap();
        assert_eq!(
            (config.cache.redis_username, config.cache.redis_password.as_deref()),
            (None, Some("hunter2"))
        );
    }

    // --- Secrets, warnings ---------------------------------------------------------------------

    #[test]
    fn passwords_are_redacted() {
        let cases = [
            ("redis://user:hunter2@redis:6379/0", "redis://user:***@redis:6379/0"),
            ("redis://:hunter2@redis:6379", "redis://:***@redis:6379"),
            ("rediss://hunter2@redis", "rediss://***@redis"),
            ("redis://redis:6379", "redis://redis:6379"),
            ("redis://:hun/ter@2@redis", "redis://:***@redis"),
            ("redis+unix:///run/redis.sock?db=1&pass=hunter2", "redis+unix:///run/redis.sock?db=1&pass=***"),
            ("user:hunter2@redis", "user:***@redis"),
        ];
        for (url, redacted) in cases {
            assert_eq!(redact_url(url), redacted);
        }
        let mut config = Config::default();
        assert!(config.redacted_redis_endpoints().is_empty());
        config.cache.redis_url = Some("redis://user:hunter2@redis:6379".to_string());
        assert_eq!(config.redacted_redis_endpoints(), ["redis://user:***@redis:6379"]);
        assert!(!format!("{config:?}").contains("hunter2"));

        let err = load("", &[("CLAMGATE_CACHE_REDIS_URL", "htp://user:hunter2@redis")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");

        // The password key, the cluster URLs, and every way to get them wrong.
        config.cache.redis_url = None;
        config.cache.redis_password = Some("hunter2".to_string());
        config.cache.redis_cluster_urls =
            vec!["rediss://u:hunter2@r1:7000".to_string(), "redis://:hunter2@r2:7000".to_string()];
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("redis_password: Some(\"***\")"), "{debug}");
        assert!(debug.contains("\"rediss://u:***@r1:7000\""), "{debug}");
        assert!(format!("{:?}", CacheConfig::default()).contains("redis_password: None"));
        assert_eq!(config.redacted_redis_endpoints(), ["rediss://u:***@r1:7000", "redis://:***@r2:7000"]);
        config.cache.redis_url = Some("redis://:hunter2@redis:6379".to_string());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("cache.redis_cluster_urls: mixes") && !err.contains("hunter2"), "{err}");
        for (text, env) in [
            ("[cache]\nredis_password = 1\n", vec![]),
            ("", vec![("CLAMGATE_CACHE_REDIS_PASSWRD", "hunter2")]),
            ("[cache]\nredis_pasword = \"hunter2\"\n", vec![]),
            (
                "[cache]\nredis_cluster_urls = [\"http://:hunter2@r1:7000\", \"redis://:hunter2@r2\"]\n",
                vec![],
            ),
            // A `#` in the password is not taken for the start of a fragment.
            ("[cache]\nredis_cluster_urls = [\"rediss://:hun#ter2@r1:7000/3\"]\n", vec![]),
            ("[cache]\nredis_url = \"rediss://:hun#ter2@r1:7000/x\"\n", vec![]),
            ("", vec![("CLAMGATE_CACHE_REDIS_CLUSTER_URLS", "redis://:hunter2@r1:7000/3,redis://r2")]),
            (
                "[cache]\nredis_password = \"hunter2\"\nredis_pool_size = 0\n",
                vec![("CLAMGATE_CACHE_REDIS_PASSWORD", "hunter2")],
            ),
        ] {
            let err = load(text, &env).unwrap_err().to_string();
            assert!(!err.contains("hunter2") && !err.contains("ter2"), "{err}");
        }
        // A syntax error never quotes the line it is on.
        let err = load("[cache]\nredis_url = \"redis://:hunter2@redis\n", &[]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn weakening_settings_are_warned_about() {
        let text = "[listen]\nadmin_addr = \"0.0.0.0:9090\"\n[policy]\nreport_only = true\n\
                    scan_requests = false\nscan_responses = false\n[policy.on_unscanned]\ntimeout = \"allow\"\n";
        assert_eq!(
            load(text, &[]).unwrap().warnings(),
            [
                "listen.admin_addr: 0.0.0.0:9090 is not a loopback address; the admin listener reveals counters and versions and should not be reachable from the network",
                "policy.report_only: true: infected bodies are logged and counted but delivered",
                "policy: scan_requests and scan_responses are both false: nothing is scanned",
                "policy.on_unscanned.timeout: allow delivers bodies that were not scanned (fails open)",
            ]
        );
        assert!(load("[listen]\nadmin_addr = \"[::1]:9090\"", &[]).unwrap().warnings().is_empty());
    }

    #[test]
    fn clamd_settings_keys_are_checked_and_warn_only_is_warned_about() {
        let warnings = load("[clamd]\nrequire_alert_settings = false\n", &[]).unwrap().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("clamd.require_alert_settings: false: "), "{warnings:?}");
        let config = load("", &[("CLAMGATE_CLAMD_REQUIRE_ALERT_SETTINGS", "false")]).unwrap();
        assert!(!config.clamd.require_alert_settings);
        assert_eq!(
            errors("[clamd]\nsettings_check_interval_ms = 0\nabandoned_scan_max_hold_ms = 0\n", &[]),
            [
                "clamd.settings_check_interval_ms: must be between 1 and 3600000, found 0",
                "clamd.abandoned_scan_max_hold_ms: must be between 1 and 3600000, found 0",
            ]
        );
    }

    #[test]
    fn cache_modes_and_named_policies_are_warned_about() {
        let immutable = "true: responses without a validator (ETag or Last-Modified) get resource keys, so an \
                         object changed under the same URL keeps its old verdict until cache.ttl_secs; only for \
                         upstreams that never change an object under a URL (package mirrors)";
        let resource = "\"resource\" on the default policy: every route that names no policy looks verdicts up \
                        by URL as well as by content; set it per route, in a named policy, for upstreams whose \
                        URLs name objects that do not change";
        assert_eq!(
            load("[policy]\ncache_mode = \"resource\"\nimmutable = true\n", &[]).unwrap().warnings(),
            [format!("policy.cache_mode: {resource}"), format!("policy.immutable: {immutable}")]
        );
        assert_eq!(
            load("[policy]\nimmutable = true\n", &[]).unwrap().warnings(),
            ["policy.immutable: true has no effect while cache_mode is \"content\": only resource keys use it"]
        );
        // A named policy is warned about where it differs from `[policy]`, not for what it inherits.
        let text = "[policy]\nreport_only = true\nimmutable = true\n\
                    [policies.mirror]\ncache_mode = \"resource\"\n\
                    [policies.lax]\nscan_requests = false\nscan_responses = false\n[policies.lax.on_unscanned]\ntimeout = \"allow\"\n\
                    [policies.quiet]\nreport_only = false\nimmutable = false\n";
        assert_eq!(
            load(text, &[]).unwrap().warnings(),
            [
                "policy.report_only: true: infected bodies are logged and counted but delivered".to_string(),
                "policy.immutable: true has no effect while cache_mode is \"content\": only resource keys use it"
                    .to_string(),
                "policies.lax: scan_requests and scan_responses are both false: nothing is scanned".to_string(),
                "policies.lax.on_unscanned.timeout: allow delivers bodies that were not scanned (fails open)"
                    .to_string(),
                format!("policies.mirror.immutable: {immutable}"),
            ]
        );
        // The sample's mirror policy sets only what needs no warning.
        assert!(load(SAMPLE, &[]).unwrap().warnings().is_empty());
        assert_eq!(
            load("[cache]\nredis_cluster_urls = [\"rediss://:pw@r1:7000/#insecure\"]\n", &[]).unwrap().warnings(),
            [
                "cache.redis_cluster_urls[0]: \"#insecure\" turns off the check of Redis's TLS certificate: anyone on the network path can pose as Redis and serve forged verdicts".to_string(),
                NO_HMAC_KEY_WARNING.replace("HOST", "r1"),
            ]
        );
    }

    // --- The sample file and the docs ------------------------------------------------------------

    /// The sample with every commented-out assignment (`# key = value`) made live.
    fn sample_uncommented() -> String {
        SAMPLE
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(key, _)| {
                        !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
                {
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_sample_config_loads_as_the_defaults_and_the_mirror_policy() {
        // The shipped Envoy config routes /mirror/ with the policy `mirror`.
        let mirror = PolicyConfig { cache_mode: CacheMode::Resource, ..PolicyConfig::default() };
        let expected =
            Config { policies: BTreeMap::from([("mirror".to_string(), mirror)]), ..Config::default() };
        assert_eq!(load(SAMPLE, &[]).unwrap(), expected);
    }

    #[test]
    fn a_decode_ratio_of_zero_turns_the_check_off() {
        let scan = |max_decode_ratio| ScanConfig { max_decode_ratio, ..ScanConfig::default() };
        assert_eq!(ScanConfig::default().decode_ratio_limit(), 10_000);
        assert_eq!(scan(0).decode_ratio_limit(), u64::MAX);
        assert_eq!(load("[scan]\nmax_decode_ratio = 0\n", &[]).unwrap().scan.decode_ratio_limit(), u64::MAX);
        let env = [("CLAMGATE_SCAN_MAX_DECODE_RATIO", "2000")];
        assert_eq!(load("", &env).unwrap().scan, scan(2000));
    }

    #[test]
    fn the_skipped_encoding_bytes_are_bounded_and_overridable() {
        assert_eq!(ScanConfig::default().max_skipped_encoding_bytes, 65_536);
        let env = [("CLAMGATE_SCAN_MAX_SKIPPED_ENCODING_BYTES", "0")];
        assert_eq!(load("", &env).unwrap().scan.max_skipped_encoding_bytes, 0);
        let err = load("[scan]\nmax_skipped_encoding_bytes = 4294967296\n", &[]).unwrap_err().to_string();
        assert!(err.contains("scan.max_skipped_encoding_bytes: must be at most 4294967295"), "{err}");
    }

    #[test]
    fn the_sample_config_lists_every_key() {
        let text = sample_uncommented();
        let table = toml::from_str::<Table>(&text).unwrap();
        // And a named policy, to show the form.
        for (path, _) in NAMED_TABLES {
            let named = table.get(*path).and_then(Value::as_table);
            assert!(named.is_some_and(|named| !named.is_empty()), "clamgate.toml has no [{path}.NAME]");
        }
        for path in SCHEMA.keys.keys() {
            let mut value = Some(&table);
            let (parents, name) = path.rsplit_once('.').unwrap();
            for segment in parents.split('.') {
                value = value.and_then(|t| t.get(segment)).and_then(Value::as_table);
            }
            assert!(value.and_then(|t| t.get(name)).is_some(), "clamgate.toml does not list {path}");
        }
        // And the commented-out examples are valid, given a CA file that exists here.
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let hmac_key = dir.path().join("hmac.key");
        std::fs::write(&hmac_key, "k".repeat(32)).unwrap();
        // And a token and a TLS certificate and key for the gRPC listener.
        let token = dir.path().join("grpc-token");
        std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
        let (cert, key) = grpc_tls_files(dir.path());
        let env = [
            ("CLAMGATE_CACHE_REDIS_TLS_CA_FILE", ca.to_str().unwrap()),
            ("CLAMGATE_CACHE_HMAC_KEY_FILE", hmac_key.to_str().unwrap()),
            ("CLAMGATE_CACHE_HMAC_PREVIOUS_KEY_FILE", hmac_key.to_str().unwrap()),
            ("CLAMGATE_LISTEN_GRPC_TOKEN_FILE", token.to_str().unwrap()),
            ("CLAMGATE_LISTEN_GRPC_TLS_CERT_FILE", cert.as_str()),
            ("CLAMGATE_LISTEN_GRPC_TLS_KEY_FILE", key.as_str()),
            // A self-signed certificate is its own CA.
            ("CLAMGATE_LISTEN_GRPC_TLS_CLIENT_CA_FILE", cert.as_str()),
        ];
        if let Err(err) = load(&text, &env) {
            panic!("the uncommented clamgate.toml is invalid:\n{err}");
        }
    }

    /// A self-signed certificate for `localhost` and its key, as PEM files in `dir`.
    fn grpc_tls_files(dir: &Path) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
        let (cert_path, key_path) = (dir.join("grpc.pem"), dir.join("grpc.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path.to_string_lossy().into_owned(), key_path.to_string_lossy().into_owned())
    }

    #[test]
    fn grpc_token_and_tls_files_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = grpc_tls_files(dir.path());
        let token = dir.path().join("token");
        std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
        let listen = |extra: &str| format!("[listen]\n{extra}");
        let ok = load(
            &listen(&format!(
                "grpc_token_file = {token:?}\ngrpc_tls_cert_file = {cert:?}\ngrpc_tls_key_file = {key:?}\n\
                 grpc_tls_client_ca_file = {cert:?}\n"
            )),
            &[],
        )
        .unwrap();
        assert_eq!(ok.listen.grpc_token_file.as_deref(), token.to_str());
        assert_eq!(ok.listen.grpc_auth_description(), "token+mtls");

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let missing = dir.path().join("missing");
        assert_eq!(
            error(&listen(&format!("grpc_token_file = {empty:?}\n")), &[]),
            format!("listen.grpc_token_file: {empty:?}: holds no token (the file is empty)")
        );
        assert_eq!(
            error(&listen(""), &[("CLAMGATE_LISTEN_GRPC_TOKEN_FILE", missing.to_str().unwrap())]),
            format!(
                "listen.grpc_token_file: cannot read {missing:?}: No such file or directory (os error 2) \
                 (set by CLAMGATE_LISTEN_GRPC_TOKEN_FILE)"
            )
        );
        assert_eq!(
            error(&listen(&format!("grpc_tls_cert_file = {cert:?}\n")), &[]),
            "listen.grpc_tls_key_file: must be set with listen.grpc_tls_cert_file (the certificate's private key)"
        );
        assert!(error(&listen(&format!("grpc_tls_client_ca_file = {cert:?}\n")), &[])
            .starts_with("listen.grpc_tls_client_ca_file: needs listen.grpc_tls_cert_file"));
        // A key that is not the certificate's, or not a key at all: refused at load, not at bind.
        let bad =
            error(&listen(&format!("grpc_tls_cert_file = {cert:?}\ngrpc_tls_key_file = {cert:?}\n")), &[]);
        assert!(bad.starts_with("listen.grpc_tls_cert_file: "), "{bad}");
        // Every problem at once.
        let both = load(&listen(&format!("grpc_token_file = {empty:?}\ngrpc_tls_key_file = {key:?}\n")), &[])
            .unwrap_err();
        assert_eq!(both.0.len(), 2, "{both}");
    }

    #[test]
    fn an_open_grpc_listener_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "0123456789abcdef0123").unwrap();
        let (cert, key) = grpc_tls_files(dir.path());
        let warnings = |text: &str| load(text, &[]).unwrap().warnings();
        let open = warnings("[listen]\ngrpc_addr = \"0.0.0.0:50051\"\n");
        assert!(
            open.iter().any(|w| w.starts_with(
                "listen.grpc_addr: 0.0.0.0:50051 is not a loopback address \
             and the gRPC listener has no authentication"
            )),
            "{open:?}"
        );
        let clear =
            warnings(&format!("[listen]\ngrpc_addr = \"10.0.0.5:50051\"\ngrpc_token_file = {token:?}\n"));
        assert_eq!(clear.len(), 1, "{clear:?}");
        assert!(
            clear[0].starts_with("listen.grpc_token_file: the gRPC listener 10.0.0.5:50051"),
            "{clear:?}"
        );
        let safe = warnings(&format!(
            "[listen]\ngrpc_addr = \"0.0.0.0:50051\"\ngrpc_token_file = {token:?}\n\
             grpc_tls_cert_file = {cert:?}\ngrpc_tls_key_file = {key:?}\n"
        ));
        assert!(safe.is_empty(), "{safe:?}");
        let mtls_only = warnings(&format!(
            "[listen]\ngrpc_addr = \"0.0.0.0:50051\"\ngrpc_tls_cert_file = {cert:?}\n\
             grpc_tls_key_file = {key:?}\ngrpc_tls_client_ca_file = {cert:?}\n"
        ));
        assert!(mtls_only.is_empty(), "{mtls_only:?}");
        assert!(warnings("[listen]\ngrpc_addr = \"127.0.0.1:50051\"\n").is_empty());
        assert!(warnings("[listen]\ngrpc_addr = \"[::1]:50051\"\n").is_empty());
    }

    #[test]
    fn the_docs_list_every_key_and_variable() {
        for path in SCHEMA.keys.keys() {
            assert!(DOCS.contains(&format!("`{path}`")), "docs/configuration.md does not list {path}");
            let env = env_name(path);
            assert!(DOCS.contains(&format!("`{env}`")), "docs/configuration.md does not list {env}");
        }
        for (path, template) in NAMED_TABLES {
            for needed in [
                format!("`{path}.NAME.*`"),
                format!("`{}_<NAME>_<KEY>`", env_name(path)),
                format!("[{path}.NAME]"),
                format!("`[{template}]`"),
            ] {
                assert!(DOCS.contains(&needed), "docs/configuration.md does not mention {needed}");
            }
        }
        for needed in
            ["## Named policies", "xds.route_metadata", "x-clamgate-policy", "grpc_initial_metadata", "503"]
        {
            assert!(DOCS.contains(needed), "docs/configuration.md does not mention {needed}");
        }
        for mode in CacheMode::NAMES {
            assert!(
                DOCS.contains(&format!("- `{mode}`")),
                "docs/configuration.md does not explain cache_mode {mode}"
            );
        }
    }

    #[test]
    fn the_docs_example_is_what_clamgate_reports() {
        let text = "[clamd]\nconnect_timeout_ms = \"1s\"\nmax_concurrent_scans = 0\n\n[cache]\nredis_ur = \"redis://redis:6379\"\n";
        assert!(DOCS.contains(text), "the example file changed in docs/configuration.md");
        let env = [("CLAMGATE_CLAMD_ADRESS", "tcp://clamd:3310"), ("CLAMGATE_CACHE_TTL_SECS", "1d")];
        let report = load(text, &env).unwrap_err().to_string();
        assert!(DOCS.contains(&format!("clamgate: invalid configuration:\n{report}\n```")), "{report}");
    }

    #[test]
    fn the_docs_named_policy_example_and_messages_are_what_clamgate_does() {
        let text = "[policy]\nreport_only = true\n\n[policies.mirror]\ncache_mode = \"resource\"\n\n\
                    [policies.mirror.on_unscanned]\ntoo_large = \"allow\"\n";
        assert!(DOCS.contains(&format!("```toml\n{text}```")), "the named policy example changed");
        let mirror = load(text, &[]).unwrap().policies.remove("mirror").unwrap();
        let expected = PolicyConfig {
            report_only: true,
            cache_mode: CacheMode::Resource,
            on_unscanned: UnscannedActions {
                too_large: UnscannedAction::Allow,
                ..UnscannedActions::default()
            },
            ..PolicyConfig::default()
        };
        assert_eq!(mirror, expected);
        for (text, row) in [
            ("[cache]\nredis_cluster_urls = \"redis://r1:7000\"\n", "not a list"),
            ("[cache]\nredis_cluster_urls = [\"redis://r1:7000\", 7000]\n", "bad list element"),
            ("[policies.mirror]\ncache_mod = \"off\"\n", "unknown key in a named policy"),
            ("[policies.Mirror]\n", "bad policy name"),
            ("[policies.default]\n", "reserved policy name"),
        ] {
            let row = format!("| {row} | `{}` |", error(text, &[]));
            assert!(DOCS.contains(&row), "docs/configuration.md lacks the row {row}");
        }
    }

    // --- The schema cannot drift from the structs ------------------------------------------------

    /// The names serde lists after "expected" in an unknown field or variant error.
    fn serde_expected_names(message: &str) -> BTreeSet<String> {
        let (_, list) =
            message.split_once("expected").unwrap_or_else(|| panic!("unexpected message {message:?}"));
        list.split('`').skip(1).step_by(2).map(str::to_string).collect()
    }

    fn defaults_with(path: &str, value: Value) -> Result<Config, toml::de::Error> {
        let mut table = Table::try_from(Config::default()).unwrap();
        insert_path(&mut table, path, value);
        Value::Table(table).try_into::<Config>()
    }

    /// `policy.x` as the same key of a named policy, `policies.zz.x`; `None` outside a template.
    fn in_named_table(path: &str) -> Option<String> {
        NAMED_TABLES.iter().find_map(|(named, template)| {
            let rest = path.strip_prefix(template)?;
            (rest.is_empty() || rest.starts_with('.')).then(|| format!("{named}.zz{rest}"))
        })
    }

    #[test]
    fn every_table_has_exactly_the_fields_of_its_struct() {
        for table in std::iter::once("").chain(SCHEMA.tables.iter().map(String::as_str)) {
            let children: BTreeSet<String> = SCHEMA.children(table).map(str::to_string).collect();
            // A table of a named policy has the fields of the same table of `[policy]`.
            for at in std::iter::once(table.to_string()).chain(in_named_table(table)) {
                let err = defaults_with(&join(&at, "zz_not_a_key"), Value::Integer(1)).unwrap_err();
                assert_eq!(
                    children,
                    serde_expected_names(err.message()),
                    "the schema of [{at}] differs from its struct; an Option key missing from OPTIONAL_KEYS?"
                );
            }
        }
        // Every map of the config is a table of named tables.
        let defaults = Table::try_from(Config::default()).unwrap();
        let maps: BTreeSet<&str> = defaults
            .iter()
            .filter(|(_, value)| value.as_table().is_some_and(Table::is_empty))
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            maps,
            NAMED_TABLES.iter().map(|(path, _)| *path).collect(),
            "a map missing from NAMED_TABLES?"
        );
    }

    #[test]
    fn every_key_kind_matches_serde() {
        let named = SCHEMA.keys.iter().filter_map(|(path, key)| Some((in_named_table(path)?, key)));
        let keys: Vec<(String, &Key)> =
            SCHEMA.keys.iter().map(|(path, key)| (path.clone(), key)).chain(named).collect();
        for (path, key) in &keys {
            let accepts = |value: Value| defaults_with(path, value).is_ok();
            match key.kind {
                // A plain string key takes any string; one that does not needs a narrower kind.
                Kind::Str => {
                    assert!(accepts(Value::String("any text".into())), "{path} needs a narrower Kind")
                }
                Kind::Int => {
                    assert!(accepts(Value::Integer(7)), "{path}");
                    assert!(!accepts(Value::Integer(-1)), "{path} is signed; Kind::Int assumes unsigned");
                }
                Kind::Bool => assert!(accepts(Value::Boolean(true)), "{path}"),
                Kind::SocketAddr => {
                    assert!(accepts(Value::String("[::1]:1".into())), "{path}");
                    assert!(!accepts(Value::String("x".into())), "{path} is not a socket address");
                }
                Kind::Enum(names) => {
                    for name in names {
                        assert!(accepts(Value::String(name.to_string())), "{path} = {name}");
                    }
                    let err = defaults_with(path, Value::String("zz".into())).unwrap_err();
                    let expected: BTreeSet<String> = names.iter().map(|name| name.to_string()).collect();
                    assert_eq!(serde_expected_names(err.message()), expected, "{path}");
                }
                Kind::StrList => {
                    assert!(accepts(Value::Array(vec!["a".into(), "b".into()])), "{path}");
                    assert!(
                        !accepts(Value::Array(vec![Value::Integer(1)])),
                        "{path} is not a list of strings"
                    );
                    assert!(!accepts(Value::String("a".into())), "{path} is not a list");
                }
            }
        }
        for (path, _) in OPTIONAL_KEYS {
            assert!(SCHEMA.keys[*path].optional);
        }
    }

    #[test]
    fn env_names_are_unique_and_not_reserved() {
        assert_eq!(SCHEMA.env.len(), SCHEMA.keys.len());
        assert!(!SCHEMA.env.contains_key(CONFIG_PATH_ENV));
        assert_eq!(SCHEMA.env["CLAMGATE_POLICY_ON_UNSCANNED_TOO_LARGE"], "policy.on_unscanned.too_large");
        // No key's variable looks like one of a named policy's.
        for (path, _) in NAMED_TABLES {
            let prefix = format!("{}_", env_name(path));
            assert!(SCHEMA.env.keys().all(|var| !var.starts_with(&prefix)), "{prefix}");
        }
    }

    #[test]
    fn every_unscanned_reason_has_a_policy_key() {
        for reason in UnscannedReason::ALL {
            let key = format!("policy.on_unscanned.{reason}");
            assert!(SCHEMA.keys.contains_key(&key), "{key}");
            // `UnscannedActions::action` reads the field of that name and no other.
            let actions = defaults_with(&key, Value::String("allow".into())).unwrap().policy.on_unscanned;
            for other in UnscannedReason::ALL {
                assert_eq!(
                    actions.action(other) == UnscannedAction::Allow,
                    other == reason,
                    "{key} read as {other}"
                );
            }
        }
        for (action, name) in UnscannedAction::ALL.into_iter().zip(UnscannedAction::NAMES) {
            assert_eq!(toml::Value::try_from(action).unwrap().as_str(), Some(name));
        }
        for (format, name) in LogFormat::ALL.into_iter().zip(LogFormat::NAMES) {
            assert_eq!(toml::Value::try_from(format).unwrap().as_str(), Some(name));
        }
        for (mode, name) in CacheMode::ALL.into_iter().zip(CacheMode::NAMES) {
            assert_eq!(toml::Value::try_from(mode).unwrap().as_str(), Some(name));
        }
    }

    #[test]
    fn edit_distance_counts_characters() {
        assert_eq!(edit_distance("redis_ur", "redis_url"), 1);
        assert_eq!(edit_distance("adress", "address"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(closest("xyz", ["listen", "clamd"].into_iter()), None);
    }
}
