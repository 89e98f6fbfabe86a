//! How an ext_proc stream fails: one error type for every cause, and one [`StreamError::emit`]
//! that writes its log line, counts it in `clamgate_ext_proc_stream_errors_total` and gives the
//! gRPC status to end the stream with, so no failure is logged without being counted or the
//! other way round.
//!
//! Every status is an error: Envoy answers `status_on_error` and the body never passes unscanned
//! (rule 1 of the ext_proc notes in the README's "Security" section).

use tonic::Status;

use crate::metrics::Metrics;
use crate::policy::Direction;

/// Why a stream was ended with an error status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    // Envoy's messages break the protocol, or its config would let a body pass unscanned
    // (raised by the state machine).
    #[error("message out of order: {0}")]
    OutOfOrder(String),
    #[error("empty ProcessingRequest (no request field)")]
    EmptyMessage,
    #[error("{direction:?} body mode {mode} cannot be scanned safely; use BUFFERED")]
    UnsupportedBodyMode { direction: Direction, mode: String },
    #[error("a {0:?} body arrived in pieces but the body mode is unknown; refusing to scan part of it")]
    PartialBody(Direction),
    #[error(
        "Envoy's processing_mode sends no {0:?} body (body mode NONE) but the policy scans it: \
         fix the route's or the filter's processing_mode"
    )]
    BodyModeNone(Direction),
    #[error("Envoy runs ext_proc in observability_mode: it would not wait for a verdict")]
    ObservabilityMode,
    /// The route's policy cannot be told (unreadable metadata, or a name not configured).
    #[error("{0}")]
    Policy(String),

    // Envoy's side of the stream.
    /// Envoy closed its side while a body was held (it never sent the body's end).
    #[error("Envoy ended the stream before the end of a held body")]
    HeldBodyCutShort,
    /// A message could not be read before a decision (e.g. over `ext_proc.max_message_bytes`).
    #[error("inbound stream failed: {0}")]
    Inbound(String),
    /// The inbound stream ended in error after the decision, or Envoy cancelled it (normal after
    /// every finished request): nobody reads the status, so it is neither logged nor counted.
    #[error("inbound stream failed: {0}")]
    InboundAfterDecision(String),

    // Holding the body.
    /// No room to hold a body (`bodies.disk_budget_bytes`): capacity, not a fault.
    #[error("no room to hold a body: {0}")]
    SpoolFull(String),
    /// A body could not be held (the temp file failed).
    #[error("cannot hold a body: {0}")]
    Spool(String),
    /// A held body could not be read back to send it on.
    #[error("cannot read a held body back: {0}")]
    ReadBack(String),

    // clamgate itself.
    /// A state clamgate's own code should never reach (named by `0`).
    #[error("clamgate met {0}")]
    Internal(&'static str),
    /// The stream task panicked or was cancelled (`why`) before a decision.
    #[error("the ext_proc stream task {why}: {detail}")]
    TaskEnded { why: &'static str, detail: String },
}

impl StreamError {
    /// A failure to hold a body: [`StreamError::SpoolFull`] when the spool's budget is the cause.
    pub fn holding(err: &std::io::Error) -> StreamError {
        if crate::spool::SpoolFull::is(err) {
            StreamError::SpoolFull(err.to_string())
        } else {
            StreamError::Spool(err.to_string())
        }
    }

    /// The `kind` label of `clamgate_ext_proc_stream_errors_total` (None: not counted).
    pub fn kind(&self) -> Option<&'static str> {
        Some(match self {
            StreamError::UnsupportedBodyMode { .. }
            | StreamError::BodyModeNone(_)
            | StreamError::ObservabilityMode => "body_mode",
            StreamError::OutOfOrder(_)
            | StreamError::EmptyMessage
            | StreamError::PartialBody(_)
            | StreamError::Policy(_) => "protocol",
            StreamError::HeldBodyCutShort | StreamError::Inbound(_) => "inbound",
            StreamError::InboundAfterDecision(_) => return None,
            StreamError::SpoolFull(_) => "spool_full",
            StreamError::Spool(_) | StreamError::ReadBack(_) => "spool",
            StreamError::Internal(_) | StreamError::TaskEnded { .. } => "internal",
        })
    }

    /// The gRPC status Envoy sees (any non-OK status makes it answer `status_on_error`). Statuses
    /// name no path, body or secret.
    pub fn status(&self) -> Status {
        match self {
            StreamError::OutOfOrder(_)
            | StreamError::EmptyMessage
            | StreamError::UnsupportedBodyMode { .. }
            | StreamError::PartialBody(_)
            | StreamError::BodyModeNone(_)
            | StreamError::ObservabilityMode
            | StreamError::Policy(_) => Status::failed_precondition(self.to_string()),
            StreamError::HeldBodyCutShort
            | StreamError::Inbound(_)
            | StreamError::InboundAfterDecision(_) => Status::aborted(self.to_string()),
            StreamError::SpoolFull(_) => Status::resource_exhausted("clamgate has no room to hold the body"),
            StreamError::Spool(_) => Status::internal("clamgate could not hold the body"),
            StreamError::ReadBack(_) => Status::internal("clamgate could not read the held body back"),
            StreamError::Internal(_) => Status::internal(self.to_string()),
            StreamError::TaskEnded { .. } => Status::internal("clamgate ended the stream before a decision"),
        }
    }

    /// Logs the failure and counts it, as one event, and returns the status to end the stream
    /// with. `request_id` is empty before the request headers were read.
    pub fn emit(self, request_id: &str, metrics: &Metrics) -> Status {
        let Some(kind) = self.kind() else { return self.status() };
        metrics.record_stream_error(kind);
        match &self {
            StreamError::Policy(_) => {
                tracing::warn!(request_id = %request_id, error = %self, "cannot tell which policy the route uses; failing the stream")
            }
            StreamError::Inbound(_) => {
                tracing::warn!(request_id = %request_id, error = %self, "inbound ext_proc stream failed before a decision")
            }
            StreamError::SpoolFull(err) => {
                tracing::warn!(request_id = %request_id, error = %err, "no room to hold a body (bodies.disk_budget_bytes); failing the stream")
            }
            StreamError::Spool(err) => {
                tracing::error!(request_id = %request_id, error = %err, "cannot hold a body (temp file); failing the stream")
            }
            StreamError::ReadBack(err) => {
                tracing::error!(request_id = %request_id, error = %err, "cannot read a held body back; failing the stream")
            }
            StreamError::Internal(_) => {
                tracing::error!(request_id = %request_id, error = %self, "ending ext_proc stream with an error")
            }
            StreamError::TaskEnded { why, detail } => {
                tracing::error!(request_id = %request_id, error = %detail, "the ext_proc stream task {why}; ending the stream with an error")
            }
            _ => {
                tracing::warn!(request_id = %request_id, error = %self, "ending ext_proc stream with an error")
            }
        }
        self.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(message: &str) -> std::io::Error {
        std::io::Error::other(message.to_string())
    }

    #[test]
    fn every_failure_is_counted_under_its_kind_with_its_status_except_after_a_decision() {
        let cases = [
            (StreamError::OutOfOrder("x".into()), Some("protocol"), tonic::Code::FailedPrecondition),
            (StreamError::Policy("x".into()), Some("protocol"), tonic::Code::FailedPrecondition),
            (StreamError::ObservabilityMode, Some("body_mode"), tonic::Code::FailedPrecondition),
            (StreamError::HeldBodyCutShort, Some("inbound"), tonic::Code::Aborted),
            (StreamError::Inbound("x".into()), Some("inbound"), tonic::Code::Aborted),
            (StreamError::InboundAfterDecision("x".into()), None, tonic::Code::Aborted),
            (StreamError::Spool("disk".into()), Some("spool"), tonic::Code::Internal),
            (StreamError::ReadBack("disk".into()), Some("spool"), tonic::Code::Internal),
            (
                StreamError::TaskEnded { why: "panicked", detail: "x".into() },
                Some("internal"),
                tonic::Code::Internal,
            ),
        ];
        for (error, kind, code) in cases {
            let metrics = Metrics::new();
            assert_eq!(error.kind(), kind, "{error}");
            let status = error.emit("req-1", &metrics);
            assert_eq!(status.code(), code);
            let counted = metrics.encode().contains("clamgate_ext_proc_stream_errors_total{");
            assert_eq!(counted, kind.is_some(), "{status:?}");
        }
    }

    #[test]
    fn a_full_spool_is_told_apart_from_a_failing_temp_file() {
        assert!(matches!(StreamError::holding(&io("disk")), StreamError::Spool(_)));
    }
}
