//! The Envoy ext_proc server: one task per stream drives the [`state`] machine, scans bodies
//! through the shared [`Scanner`], and answers from a [`Decision`].
//!
//! Rule 1 of `docs/envoy-ext-proc.md`: a stream that ends with grpc-status OK before clamgate has
//! answered makes Envoy deliver the body unscanned. So the task ends the stream OK only after
//! Envoy has closed its side; every failure (a protocol violation, a panic) sends an error status.

pub mod response;
pub mod state;

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::{PolicyConfig, ResponseConfig};
use crate::metrics::{Metrics, Source};
use crate::policy::{decide, Decision, DecisionContext, Direction};
use crate::scanner::{ScanReport, Scanner};
use state::{on_message, Action, StreamState};

pub use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;

/// Answers in flight per stream. Outside FULL_DUPLEX mode Envoy waits for each answer, so one
/// is pending at a time; the room is for the error status that the guard may add.
const STREAM_CHANNEL_CAPACITY: usize = 4;

/// The ext_proc gRPC service.
#[derive(Clone)]
pub struct ExtProcService {
    scanner: Arc<Scanner>,
    policy: Arc<PolicyConfig>,
    response: Arc<ResponseConfig>,
    metrics: Arc<Metrics>,
}

impl ExtProcService {
    pub fn new(
        scanner: Arc<Scanner>,
        policy: PolicyConfig,
        response: ResponseConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        ExtProcService { scanner, policy: Arc::new(policy), response: Arc::new(response), metrics }
    }
}

type AnswerStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = AnswerStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let inbound = request.into_inner();
        let (answers, receiver) = mpsc::channel(STREAM_CHANNEL_CAPACITY);
        tokio::spawn(self.clone().run_stream(inbound, answers));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

impl ExtProcService {
    async fn run_stream(
        self,
        mut inbound: Streaming<ProcessingRequest>,
        answers: mpsc::Sender<Result<ProcessingResponse, Status>>,
    ) {
        let mut guard =
            UnansweredGuard { answers: answers.clone(), metrics: self.metrics.clone(), armed: true };
        let mut state = StreamState::new(self.policy.scan_requests, self.policy.scan_responses);
        loop {
            let message = match inbound.message().await {
                Ok(Some(message)) => message,
                // Envoy closed its side: nothing is waiting for an answer.
                Ok(None) => break,
                Err(status) => {
                    // Either Envoy reset the stream (normal after every finished request: then
                    // nobody reads what follows) or a message could not be decoded, e.g. a body
                    // over `ext_proc.max_message_bytes`. Ending OK here would let Envoy deliver
                    // that body unscanned, so the stream always ends with an error status.
                    if !state.is_complete() && status.code() != tonic::Code::Cancelled {
                        tracing::warn!(request_id = %state.request_id, error = %status.message(), "inbound ext_proc stream failed before a decision");
                        self.metrics.record_stream_error("inbound");
                    }
                    guard.armed = false;
                    let _ = answers
                        .send(Err(Status::aborted(format!("inbound stream failed: {}", status.message()))))
                        .await;
                    return;
                }
            };
            let answer = match on_message(&mut state, message) {
                Action::Reply(answer) => answer,
                Action::PassBody { direction } => response::body_continue(direction, None),
                Action::Scan { direction, body } => {
                    let report = self.scanner.scan_body(&body, source(direction)).await;
                    drop(body);
                    let decision = self.decide(&state, direction, &report);
                    response::body_decision(direction, &decision)
                }
                Action::Fail(error) => {
                    tracing::warn!(request_id = %state.request_id, error = %error, "ending ext_proc stream with an error");
                    self.metrics.record_stream_error("protocol");
                    guard.armed = false;
                    let _ = answers.send(Err(error.to_status())).await;
                    return;
                }
            };
            if answers.send(Ok(answer)).await.is_err() {
                // Envoy went away; nobody is left to answer.
                break;
            }
        }
        guard.armed = false;
    }

    fn decide(&self, state: &StreamState, direction: Direction, report: &ScanReport) -> Decision {
        let context =
            DecisionContext { direction, request_id: &state.request_id, sha256: Some(&report.sha256) };
        let decision = decide(&report.verdict, &self.policy, &self.response, context);
        audit(state, direction, report, &decision);
        if let Decision::Block(block) = &decision {
            self.metrics.record_blocked(block.status);
        }
        decision
    }
}

fn source(direction: Direction) -> Source {
    match direction {
        Direction::Request => Source::request,
        Direction::Response => Source::response,
    }
}

/// One log line per verdict; detections at `warn` with target `clamgate::audit`.
fn audit(state: &StreamState, direction: Direction, report: &ScanReport, decision: &Decision) {
    let action = match decision {
        Decision::Continue { .. } => "continue".to_string(),
        Decision::Block(block) => block.status.to_string(),
    };
    let database_version = report.engine.as_ref().and_then(|e| e.database_version).unwrap_or(0);
    match &report.verdict {
        crate::verdict::Verdict::Infected { signature } => tracing::warn!(
            target: "clamgate::audit",
            event = "detection",
            request_id = %state.request_id,
            direction = ?direction,
            path = %state.path,
            sha256 = %report.sha256,
            signature = %signature,
            database_version,
            cached = report.cached,
            action = %action,
            "infected body"
        ),
        crate::verdict::Verdict::Unscanned { reason } => tracing::warn!(
            target: "clamgate::audit",
            event = "unscanned",
            request_id = %state.request_id,
            direction = ?direction,
            path = %state.path,
            sha256 = %report.sha256,
            reason = %reason,
            bytes = report.body_bytes,
            action = %action,
            "body not scanned"
        ),
        crate::verdict::Verdict::Clean => tracing::debug!(
            request_id = %state.request_id,
            direction = ?direction,
            sha256 = %report.sha256,
            bytes = report.body_bytes,
            cached = report.cached,
            "clean body"
        ),
    }
}

/// Sends an error status if the stream task ends (or panics) while it is still armed, so that no
/// path ends the RPC OK before a decision.
struct UnansweredGuard {
    answers: mpsc::Sender<Result<ProcessingResponse, Status>>,
    metrics: Arc<Metrics>,
    armed: bool,
}

impl Drop for UnansweredGuard {
    fn drop(&mut self) {
        if self.armed {
            self.metrics.record_stream_error("internal");
            let _ =
                self.answers.try_send(Err(Status::internal("clamgate ended the stream before a decision")));
        }
    }
}
