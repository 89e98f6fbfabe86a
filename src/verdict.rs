//! The verdict model: what a scan concluded, and why a body went unscanned.

use std::fmt;

/// What clamgate knows about a body after trying to scan it.
///
/// There are three outcomes, never two: a scan that did not happen is `Unscanned`, never `Clean`.
/// `Clean` and `Infected` are cached for `cache.ttl_secs`; an `Unscanned` verdict only briefly, and
/// only when its reason depends on the bytes alone (`cache::BRIEFLY_CACHED_REASONS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// clamd answered `stream: OK`.
    Clean,
    /// clamd answered `stream: <signature> FOUND` with a real detection.
    Infected { signature: String },
    /// No complete scan happened; the policy decides what the client gets.
    Unscanned { reason: UnscannedReason },
}

impl Verdict {
    /// The label used in headers, JSON bodies and metrics: `clean`, `infected`, `unscanned`.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Infected { .. } => "infected",
            Verdict::Unscanned { .. } => "unscanned",
        }
    }
}

/// Why a body was not scanned. Each reason has its own policy action and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnscannedReason {
    /// The body is larger than `scan.max_scan_bytes` or clamd's `StreamMaxLength`.
    TooLarge,
    /// No clamd could be reached (connect refused, closed without a reply, not ready).
    EngineUnavailable,
    /// clamd did not answer within the configured timeouts.
    Timeout,
    /// clamd answered with an error, or with something clamgate cannot parse.
    EngineError,
    /// clamd hit one of its own scan limits (`Heuristics.Limits.Exceeded.*`).
    LimitsExceeded,
    /// The content is encrypted and could not be inspected (`Heuristics.Encrypted.*`).
    Encrypted,
    /// The body uses a `Content-Encoding` clamgate cannot decode.
    UnsupportedEncoding,
    /// Only part of the object was seen (Range requests, 206 responses).
    PartialContent,
    /// nginx asked about an object the cache has no verdict for, and the policy does not fetch
    /// it (`on_miss` is `allow` or `deny`, which is also this reason's action).
    NotCached,
    /// clamgate could not download the object from its configured origin (connection refused,
    /// an error status, a redirect outside the origin, a body cut short).
    OriginError,
    /// The object has no strong validator (ETag) that nginx could send upstream as `If-Match`,
    /// and the policy is not `immutable`: nothing would ensure that the client gets the bytes
    /// that were scanned.
    NoValidator,
    /// A request with a body (any method but GET and HEAD) under nginx, whose `auth_request`
    /// cannot show clamgate the body, on a policy that scans uploads.
    BodyNotVisible,
    /// An upload declared `multipart/*` that cannot be split into its parts (no boundary, cut
    /// short, too many parts, nested too deep, a part's transfer encoding unknown or broken, or
    /// a `Content-Encoding` over it): its files cannot each be scanned as themselves.
    MalformedMultipart,
}

impl UnscannedReason {
    /// Every reason, for metrics registration and documentation.
    pub const ALL: [UnscannedReason; 13] = [
        UnscannedReason::TooLarge,
        UnscannedReason::EngineUnavailable,
        UnscannedReason::Timeout,
        UnscannedReason::EngineError,
        UnscannedReason::LimitsExceeded,
        UnscannedReason::Encrypted,
        UnscannedReason::UnsupportedEncoding,
        UnscannedReason::PartialContent,
        UnscannedReason::NotCached,
        UnscannedReason::OriginError,
        UnscannedReason::NoValidator,
        UnscannedReason::BodyNotVisible,
        UnscannedReason::MalformedMultipart,
    ];

    /// The snake_case name used in config keys, JSON bodies and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            UnscannedReason::TooLarge => "too_large",
            UnscannedReason::EngineUnavailable => "engine_unavailable",
            UnscannedReason::Timeout => "timeout",
            UnscannedReason::EngineError => "engine_error",
            UnscannedReason::LimitsExceeded => "limits_exceeded",
            UnscannedReason::Encrypted => "encrypted",
            UnscannedReason::UnsupportedEncoding => "unsupported_encoding",
            UnscannedReason::PartialContent => "partial_content",
            UnscannedReason::NotCached => "not_cached",
            UnscannedReason::OriginError => "origin_error",
            UnscannedReason::NoValidator => "no_validator",
            UnscannedReason::BodyNotVisible => "body_not_visible",
            UnscannedReason::MalformedMultipart => "malformed_multipart",
        }
    }

    /// Whether the reason is trouble with the engine (retryable) rather than with the content.
    pub fn is_engine_trouble(self) -> bool {
        matches!(
            self,
            UnscannedReason::EngineUnavailable | UnscannedReason::Timeout | UnscannedReason::EngineError
        )
    }
}

impl fmt::Display for UnscannedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The clamd engine and signature database that produced a verdict, as `VERSION` reports them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EngineVersion {
    /// The engine version, e.g. `1.4.6`.
    pub engine: String,
    /// The daily database version, e.g. `27000`; `None` when clamd loaded no `daily.*` database.
    pub database_version: Option<u64>,
    /// The daily database's build date as clamd prints it, e.g. `Sat Nov 21 14:40:36 2026`.
    pub database_date: Option<String>,
}
