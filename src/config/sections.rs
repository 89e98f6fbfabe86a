//! The sections of the configuration file: one struct per `[table]`, its defaults, and the
//! settings each offers its subsystem (durations as `Duration`, never as a bare number).

use super::*;
use crate::cache::RedisUrl;
use crate::clamd::ClamdAddress;
use crate::fetch::Origin;

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
    /// HTTP listener for nginx (`GET /v1/auth`). Unset: off. Keep it on loopback or behind
    /// `http_token_file`: a caller of `/v1/auth` can make clamgate download and scan.
    pub http_addr: Option<SocketAddr>,
    /// File holding the shared token nginx must send as `x-clamgate-token` (same rules as
    /// `grpc_token_file`). When set, requests without it get 401 and are counted.
    pub http_token_file: Option<String>,
    /// File holding the token callers of `POST /v1/scan` send as `Authorization: Bearer TOKEN`
    /// (same rules as `grpc_token_file`). Unset: `/v1/scan` takes `http_token_file`'s token the
    /// same way; neither set: `/v1/scan` is open (loopback only, warned otherwise).
    pub http_scan_token_file: Option<String>,
}

/// How to reach clamd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClamdConfig {
    /// `tcp://HOST:PORT` or `unix:///path/to/clamd.ctl`, parsed as the file is loaded.
    pub address: ClamdAddress,
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
    /// How a body goes to clamd: `auto` gives a clamd on a unix socket (this host) the held
    /// body's file descriptor (FILDES: no copy through the socket, none by clamd), and streams
    /// it (INSTREAM) to a clamd over TCP and for decoded content; `instream` always streams.
    pub scan_method: ScanMethod,
}

/// `clamd.scan_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanMethod {
    Auto,
    Instream,
}

impl ScanMethod {
    /// The names used in the config.
    pub const NAMES: [&'static str; 2] = [ScanMethod::Auto.as_str(), ScanMethod::Instream.as_str()];

    /// The name used in the config: `auto` or `instream`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ScanMethod::Auto => "auto",
            ScanMethod::Instream => "instream",
        }
    }
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
    /// Most parts of an upload declared `multipart/*` (nested parts included), each scanned as a
    /// file of its own; more is `Unscanned { malformed_multipart }`. Bounds the clamd scans one
    /// request can cause.
    pub multipart_max_parts: u64,
    /// Levels of `multipart/*` a multipart body may hold (1: its parts may not be multipart
    /// themselves); deeper is `Unscanned { malformed_multipart }`.
    pub multipart_max_depth: u64,
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
    pub redis_url: Option<RedisUrl>,
    /// Seed nodes of a Redis Cluster (`redis://host:port` or `rediss://host:port` each).
    /// Mutually exclusive with `redis_url`. From the environment: comma-separated.
    pub redis_cluster_urls: Vec<RedisUrl>,
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
    /// nginx only (`/v1/auth`): what to do when the cache has no verdict for the object.
    /// `deny` (403, reason `not_cached`), `allow` (200, marked unscanned) or `fetch` (download
    /// it from its origin in `[fetch]`, scan it, cache it, then answer).
    pub on_miss: OnMiss,
    /// Bodies of some media types that are not scanned, when their first bytes prove the type.
    pub skip: SkipConfig,
    /// How this policy's refusals look to the client.
    pub block: BlockConfig,
}

/// A policy's skip rule: `[policy.skip]`. A body is skipped (not scanned, marked
/// `x-clamgate-verdict: skipped`) only when all of these hold: its direction is listed, it has
/// exactly one `Content-Type`, naming one of `content_types`, and no `Content-Encoding`; its
/// `Content-Length` is within the bounds (required when a bound is set); its path starts with one
/// of `path_prefixes` (when any are given); and its first bytes are those of the declared type.
/// Anything else is scanned as usual. See [`crate::skip`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SkipConfig {
    /// Media types that may be skipped, each one with a known signature (`crate::skip::SIGNATURES`).
    /// Empty: nothing is skipped.
    pub content_types: Vec<String>,
    /// `request` (uploads: the type is the client's word, checked all the same) and/or `response`.
    pub directions: Vec<String>,
    /// Skip only bodies whose `Content-Length` is at least this.
    pub min_bytes: u64,
    /// Skip only bodies whose `Content-Length` is at most this.
    pub max_bytes: Option<u64>,
    /// Skip only under these path prefixes (each starting with `/`); empty: any path.
    pub path_prefixes: Vec<String>,
}

/// How a policy's refusals look: `[policy.block]`. JSON is today's body; an HTML page (from a
/// template) or a redirect can be offered to clients that prefer `text/html`, or to all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlockConfig {
    /// The status of the answer to an infected body. Unscanned bodies keep theirs (503, 413,
    /// 422, 502).
    pub status: u64,
    /// Answer with the JSON body. With an HTML page or a redirect too, the client's `Accept`
    /// chooses; without JSON every client gets the page or the redirect.
    pub json: bool,
    /// An HTML page, with `{{verdict}}`, `{{signature}}`, `{{reason}}`, `{{sha256}}`,
    /// `{{part}}`, `{{request_id}}`, `{{status}}` and `{{direction}}` filled in (HTML-escaped).
    pub html_template_file: Option<String>,
    /// Instead of a page: a `303 See Other` to this URL, with the same placeholders filled in
    /// (percent-encoded).
    pub redirect_url: Option<String>,
}

/// What `/v1/auth` does on a cache miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMiss {
    Deny,
    Allow,
    Fetch,
}

impl OnMiss {
    /// The names used in the config.
    pub const NAMES: [&'static str; 3] =
        [OnMiss::Deny.as_str(), OnMiss::Allow.as_str(), OnMiss::Fetch.as_str()];

    /// The name used in the config: `deny`, `allow` or `fetch`.
    pub const fn as_str(self) -> &'static str {
        match self {
            OnMiss::Deny => "deny",
            OnMiss::Allow => "allow",
            OnMiss::Fetch => "fetch",
        }
    }
}

impl PolicyConfig {
    /// The action for a body that went unscanned for `reason`: `on_miss` for `not_cached`
    /// (`fetch` never gets here: a fetched object has a verdict), `on_unscanned` otherwise.
    pub fn unscanned_action(&self, reason: UnscannedReason) -> UnscannedAction {
        match (reason, self.on_miss) {
            (UnscannedReason::NotCached, OnMiss::Allow) => UnscannedAction::Allow,
            (UnscannedReason::NotCached, _) => UnscannedAction::Deny,
            _ => self.on_unscanned.action(reason),
        }
    }
}

/// How clamgate downloads objects itself, for policies with `on_miss = "fetch"` (nginx).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// The only places clamgate downloads from: `"HOST = URL"` each, e.g.
    /// `"downloads.example.com = http://10.0.0.5:8080"`. A request for HOST (any port, or only
    /// `HOST:PORT` if written so) is fetched from URL followed by the request's path and query.
    /// Never taken from a request. From the environment: comma-separated.
    pub origins: Vec<Origin>,
    /// Time allowed to connect to an origin.
    pub connect_timeout_ms: u64,
    /// Time allowed for one whole download (headers and body); past it the object is
    /// `Unscanned { timeout }`. The scan has its own deadline after it.
    pub download_timeout_ms: u64,
    /// Downloads in flight at once; more wait for a free one (within `download_timeout_ms`).
    pub max_concurrent: usize,
    /// Redirects followed, and only to the same origin (scheme, host, port and path prefix).
    pub max_redirects: u64,
    /// PEM CA certificates trusted for `https://` origins, on top of the system's roots.
    pub tls_ca_file: Option<String>,
}

impl FetchConfig {
    /// `connect_timeout_ms`.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// `download_timeout_ms`.
    pub fn download_timeout(&self) -> Duration {
        Duration::from_millis(self.download_timeout_ms)
    }
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            origins: Vec::new(),
            connect_timeout_ms: 2_000,
            download_timeout_ms: 60_000,
            max_concurrent: 16,
            max_redirects: 5,
            tls_ca_file: None,
        }
    }
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

/// `deny` or `allow`, per [`crate::verdict::UnscannedReason`] (but `not_cached`, which is the
/// policy's `on_miss`). All default to `deny`.
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
    pub origin_error: UnscannedAction,
    pub no_validator: UnscannedAction,
    pub body_not_visible: UnscannedAction,
    pub malformed_multipart: UnscannedAction,
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
            UnscannedReason::OriginError => self.origin_error,
            UnscannedReason::NoValidator => self.no_validator,
            UnscannedReason::BodyNotVisible => self.body_not_visible,
            UnscannedReason::MalformedMultipart => self.malformed_multipart,
            // Decided by the policy's `on_miss` (see `PolicyConfig::unscanned_action`).
            UnscannedReason::NotCached => UnscannedAction::Deny,
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
            http_addr: None,
            http_token_file: None,
            http_scan_token_file: None,
        }
    }
}

impl Default for ClamdConfig {
    fn default() -> Self {
        ClamdConfig {
            address: ClamdAddress::Tcp("127.0.0.1:3310".to_string()),
            connect_timeout_ms: 1_000,
            write_timeout_ms: 10_000,
            reply_timeout_ms: 60_000,
            max_concurrent_scans: 8,
            health_interval_ms: 5_000,
            require_alert_settings: true,
            settings_check_interval_ms: 60_000,
            // clamd's own default MaxScanTime: by then clamd has given up on the body itself.
            abandoned_scan_max_hold_ms: 120_000,
            scan_method: ScanMethod::Auto,
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
    pub(super) fn grpc_auth_warnings(&self) -> Vec<String> {
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
            multipart_max_parts: 1000,
            multipart_max_depth: 2,
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
            on_miss: OnMiss::Deny,
            skip: SkipConfig::default(),
            block: BlockConfig::default(),
        }
    }
}

impl Default for SkipConfig {
    fn default() -> Self {
        SkipConfig {
            content_types: Vec::new(),
            directions: vec!["response".to_string()],
            min_bytes: 0,
            max_bytes: None,
            path_prefixes: Vec::new(),
        }
    }
}

impl Default for BlockConfig {
    fn default() -> Self {
        BlockConfig { status: 409, json: true, html_template_file: None, redirect_url: None }
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
            origin_error: UnscannedAction::Deny,
            no_validator: UnscannedAction::Deny,
            body_not_visible: UnscannedAction::Deny,
            malformed_multipart: UnscannedAction::Deny,
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
        f.debug_struct("CacheConfig")
            .field("redis_url", redis_url)
            .field("redis_cluster_urls", redis_cluster_urls)
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
