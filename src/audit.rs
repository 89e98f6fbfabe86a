//! The audit line: one log line per verdict, the same from every front door (Envoy, nginx),
//! detections and unscanned bodies at `warn` with target `clamgate::audit`.

use crate::policy::{Decision, Direction};
use crate::scanner::ScanReport;
use crate::verdict::Verdict;

/// Where a verdict was asked for, for the audit line.
#[derive(Debug, Clone, Copy)]
pub struct AuditContext<'a> {
    /// `ext_proc` or `nginx`.
    pub front_door: &'static str,
    /// The proxy's request id (Envoy's `x-request-id`, nginx's `$request_id`).
    pub request_id: &'a str,
    pub direction: Direction,
    /// The request's path (without its query).
    pub path: &'a str,
}

/// Logs the verdict `report` and the answer it got. `action` is `continue` or the status sent.
pub fn audit(context: AuditContext<'_>, report: &ScanReport, decision: &Decision) {
    let AuditContext { front_door, request_id, direction, path } = context;
    let action = match decision {
        Decision::Continue { .. } => "continue".to_string(),
        Decision::Block(block) => block.status.to_string(),
    };
    let database_version = report.engine.as_ref().and_then(|e| e.database_version).unwrap_or(0);
    match &report.verdict {
        Verdict::Infected { signature } => tracing::warn!(
            target: "clamgate::audit",
            event = "detection",
            front_door,
            request_id = %request_id,
            direction = ?direction,
            path = %path,
            sha256 = %report.sha256,
            signature = %signature,
            database_version,
            cached = report.cached,
            action = %action,
            "infected body"
        ),
        Verdict::Unscanned { reason } => tracing::warn!(
            target: "clamgate::audit",
            event = "unscanned",
            front_door,
            request_id = %request_id,
            direction = ?direction,
            path = %path,
            sha256 = %report.sha256,
            reason = %reason,
            bytes = report.body_bytes,
            action = %action,
            "body not scanned"
        ),
        Verdict::Clean => tracing::debug!(
            front_door,
            request_id = %request_id,
            direction = ?direction,
            sha256 = %report.sha256,
            bytes = report.body_bytes,
            cached = report.cached,
            "clean body"
        ),
    }
}
