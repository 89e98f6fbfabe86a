//! Configuration: one TOML file, every key overridable by a `CLAMGATE_*` environment variable.
//!
//! The structs below are the schema. Keys carry their unit in the name (`_ms`, `_secs`,
//! `_bytes`); unknown keys are rejected; every problem is reported at once with its key path.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The whole configuration of one clamgate instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: ListenConfig,
    pub clamd: ClamdConfig,
    pub scan: ScanConfig,
    pub cache: CacheConfig,
    pub ext_proc: ExtProcConfig,
    pub response: ResponseConfig,
    pub policy: PolicyConfig,
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
}

/// Limits on what is scanned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanConfig {
    /// Largest body sent to clamd. Must not exceed clamd's `StreamMaxLength`; larger bodies are
    /// `Unscanned { too_large }` without contacting clamd.
    pub max_scan_bytes: u64,
}

/// The verdict cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `redis://[user:password@]host:port[/db]`. When absent, an in-process cache is used.
    pub redis_url: Option<String>,
    /// How long a verdict is kept.
    pub ttl_secs: u64,
    /// Upper bound on entries held by the in-process cache.
    pub memory_max_entries: usize,
    /// Time allowed for one Redis call; past it the lookup is a miss and the scan goes on.
    pub redis_timeout_ms: u64,
    /// Prefix of every Redis key clamgate writes.
    pub key_prefix: String,
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

/// What to do with each kind of verdict. (Named per-route policies come later; this is the policy
/// every route uses.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Scan request bodies (uploads).
    pub scan_requests: bool,
    /// Scan response bodies (downloads).
    pub scan_responses: bool,
    /// Scan, log and count, but never block. For roll-out only.
    pub report_only: bool,
    /// Action for each reason a body may go unscanned.
    pub on_unscanned: UnscannedActions,
}

/// `deny` or `allow`, per [`crate::verdict::UnscannedReason`]. All default to `deny`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnscannedActions {
    pub too_large: Action,
    pub engine_unavailable: Action,
    pub timeout: Action,
    pub engine_error: Action,
    pub limits_exceeded: Action,
    pub encrypted: Action,
    pub unsupported_encoding: Action,
    pub partial_content: Action,
}

/// A policy action for a body that could not be scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Deny,
    Allow,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Text,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: ListenConfig::default(),
            clamd: ClamdConfig::default(),
            scan: ScanConfig::default(),
            cache: CacheConfig::default(),
            ext_proc: ExtProcConfig::default(),
            response: ResponseConfig::default(),
            policy: PolicyConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
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
        }
    }
}

impl Default for ScanConfig {
    fn default() -> Self {
        // Matches `StreamMaxLength 25M` in the shipped clamd.conf.
        ScanConfig { max_scan_bytes: 25 * 1024 * 1024 }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            redis_url: None,
            ttl_secs: 24 * 60 * 60,
            memory_max_entries: 100_000,
            redis_timeout_ms: 250,
            key_prefix: "clamgate:".to_string(),
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
        }
    }
}

impl Default for UnscannedActions {
    fn default() -> Self {
        UnscannedActions {
            too_large: Action::Deny,
            engine_unavailable: Action::Deny,
            timeout: Action::Deny,
            engine_error: Action::Deny,
            limits_exceeded: Action::Deny,
            encrypted: Action::Deny,
            unsupported_encoding: Action::Deny,
            partial_content: Action::Deny,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".to_string(), format: LogFormat::Json }
    }
}
