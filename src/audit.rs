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
    /// The multipart part that decided, if a part did (field and file name).
    pub part: Option<&'a str>,
}

/// Logs the verdict `report` and the answer it got. `action` is `continue` or the status sent.
pub fn audit(context: AuditContext<'_>, report: &ScanReport, decision: &Decision) {
    let AuditContext { front_door, request_id, direction, path, part } = context;
    let part = part.unwrap_or("");
    // `delivered`: the body went on to the client or the application, whatever its verdict.
    let (action, delivered) = match decision {
        Decision::Continue { would_block: Some(status), .. } => {
            (format!("delivered: report_only (the policy would have answered {status})"), true)
        }
        Decision::Continue { would_block: None, .. } => ("continue".to_string(), true),
        Decision::Block(block) => (block.status.to_string(), false),
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
            part,
            sha256 = %report.sha256,
            signature = %signature,
            database_version,
            cached = report.cached,
            action = %action,
            delivered,
            "infected body"
        ),
        Verdict::Unscanned { reason } => tracing::warn!(
            target: "clamgate::audit",
            event = "unscanned",
            front_door,
            request_id = %request_id,
            direction = ?direction,
            path = %path,
            part,
            sha256 = %report.sha256,
            reason = %reason,
            bytes = report.body_bytes,
            action = %action,
            delivered,
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::{audit, AuditContext};
    use crate::config::{PolicyConfig, ResponseConfig};
    use crate::policy::{decide, DecisionContext, Direction, Policy};
    use crate::scanner::ScanReport;
    use crate::verdict::Verdict;

    /// Everything logged while `log` runs, as JSON lines.
    fn captured(log: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt().json().with_writer(move || writer.clone()).finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = lines.0.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("UTF-8 log")
    }

    fn line_for(policy: PolicyConfig, verdict: Verdict) -> serde_json::Value {
        let report = ScanReport {
            verdict: verdict.clone(),
            sha256: "ab".repeat(32),
            body_bytes: 68,
            engine: None,
            cached: false,
        };
        let context = DecisionContext {
            direction: Direction::Response,
            request_id: "req-1",
            sha256: None,
            part: None,
            accept: None,
        };
        let decision = decide(&verdict, &Policy::new(&policy, &ResponseConfig::default()), context);
        let audit_context = AuditContext {
            front_door: "ext_proc",
            request_id: "req-1",
            direction: Direction::Response,
            path: "/x",
            part: None,
        };
        let text = captured(|| audit(audit_context, &report, &decision));
        serde_json::from_str(text.lines().next().expect("one audit line")).expect("a JSON line")
    }

    #[test]
    fn a_report_only_detection_says_the_body_was_delivered_and_what_would_have_happened() {
        let infected = || Verdict::Infected { signature: "Test.Eicar".into() };
        let reported = line_for(PolicyConfig { report_only: true, ..PolicyConfig::default() }, infected());
        let fields = &reported["fields"];
        assert_eq!(fields["event"], "detection");
        assert_eq!(fields["delivered"], true);
        assert_eq!(fields["action"], "delivered: report_only (the policy would have answered 409)");
        let blocked = line_for(PolicyConfig::default(), infected());
        assert_eq!(blocked["fields"]["delivered"], false);
        assert_eq!(blocked["fields"]["action"], "409");
    }
}
