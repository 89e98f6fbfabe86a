//! The Envoy ext_proc server: one task per stream drives the [`state`] machine, scans bodies
//! through the shared [`Scanner`], and answers from a [`Decision`].
//!
//! The policy comes from the route (see [`route_policy`]): its metadata, sent as the
//! `xds.route_metadata` attribute, or the gRPC metadata `x-clamgate-policy` that Envoy adds per
//! route (`ExtProcPerRoute.overrides.grpc_initial_metadata`); a client can set neither. None means
//! the default `[policy]`; an unknown name fails the stream (Envoy answers 503), so a typo in
//! either config fails closed.
//!
//! Rule 1 of `docs/envoy-ext-proc.md`: a stream that ends with grpc-status OK before clamgate has
//! answered makes Envoy deliver the body unscanned. So the task ends the stream OK only after
//! Envoy has closed its side; every failure (a protocol violation, a panic) sends an error status.

pub mod response;
pub mod route_policy;
pub mod state;

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::{Config, PolicyConfig, ResponseConfig};
use crate::metrics::{Metrics, Source};
use crate::policy::{decide, Decision, DecisionContext, Direction};
use crate::scanner::{ResourceLookup, ScanReport, Scanner};
use crate::verdict::Verdict;
use state::{on_message, Action, StreamPolicy, StreamState};

/// The gRPC metadata key that names the policy of a route.
pub const POLICY_METADATA_KEY: &str = "x-clamgate-policy";

pub use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;

/// Answers in flight per stream. Outside FULL_DUPLEX mode Envoy waits for each answer, so one
/// is pending at a time; the room is for the error status that the guard may add.
const STREAM_CHANNEL_CAPACITY: usize = 4;

/// The ext_proc gRPC service.
#[derive(Clone)]
pub struct ExtProcService {
    scanner: Arc<Scanner>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
}

impl ExtProcService {
    pub fn new(scanner: Arc<Scanner>, config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        ExtProcService { scanner, config, metrics }
    }

    /// The policy Envoy named for this stream's route (route metadata or gRPC metadata).
    fn policy_for(
        &self,
        first: &ProcessingRequest,
        grpc_metadata_policy: Option<&str>,
    ) -> Result<PolicyConfig, Status> {
        let fail = |message: String| {
            tracing::warn!(error = %message, "cannot tell which policy the route uses; failing the stream");
            self.metrics.record_stream_error("protocol");
            Status::failed_precondition(message)
        };
        let name = route_policy::select(&first.attributes, grpc_metadata_policy)
            .map_err(|err| fail(err.to_string()))?;
        let Some(name) = name else { return Ok(self.config.policy.clone()) };
        self.config
            .policy_named(&name)
            .cloned()
            .ok_or_else(|| fail(format!("Envoy named clamgate policy {name:?}, which is not configured")))
    }
}

/// The per-stream context: the policy in force and the answers it shapes.
struct StreamContext {
    policy: PolicyConfig,
    response: ResponseConfig,
}

type AnswerStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = AnswerStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let grpc_metadata_policy = request
            .metadata()
            .get(POLICY_METADATA_KEY)
            .map(|value| value.to_str().map(str::to_string).unwrap_or_default());
        let inbound = request.into_inner();
        let (answers, receiver) = mpsc::channel(STREAM_CHANNEL_CAPACITY);
        tokio::spawn(self.clone().run_stream(grpc_metadata_policy, inbound, answers));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

impl ExtProcService {
    async fn run_stream(
        self,
        grpc_metadata_policy: Option<String>,
        inbound: Streaming<ProcessingRequest>,
        answers: mpsc::Sender<Result<ProcessingResponse, Status>>,
    ) {
        let mut guard =
            UnansweredGuard { answers: answers.clone(), metrics: self.metrics.clone(), armed: true };
        let outcome = self.drive(grpc_metadata_policy, inbound, &answers).await;
        guard.armed = false;
        if let Err(status) = outcome {
            let _ = answers.send(Err(status)).await;
        }
    }

    /// Answers Envoy's messages in order. Ok: Envoy closed its side (or went away), nothing is
    /// waiting. Err: the status to end the stream with.
    async fn drive(
        &self,
        grpc_metadata_policy: Option<String>,
        mut inbound: Streaming<ProcessingRequest>,
        answers: &mpsc::Sender<Result<ProcessingResponse, Status>>,
    ) -> Result<(), Status> {
        // The policy comes with the first message (its route metadata attribute).
        let Some(first) = self.receive(&mut inbound, None).await? else { return Ok(()) };
        let policy = self.policy_for(&first, grpc_metadata_policy.as_deref())?;
        let mut state = StreamState::new(StreamPolicy::from_config(&policy));
        let context = StreamContext { policy, response: self.config.response.clone() };
        let mut next = Some(first);
        loop {
            let message = match next.take() {
                Some(message) => message,
                None => match self.receive(&mut inbound, Some(&state)).await? {
                    Some(message) => message,
                    None => return Ok(()),
                },
            };
            let answer = self.answer(&context, &mut state, message).await?;
            if answers.send(Ok(answer)).await.is_err() {
                // Envoy went away; nobody is left to answer.
                return Ok(());
            }
        }
    }

    /// The answer to one message; an error is the status to end the stream with.
    async fn answer(
        &self,
        context: &StreamContext,
        state: &mut StreamState,
        message: ProcessingRequest,
    ) -> Result<ProcessingResponse, Status> {
        if let Some(kind) = message_kind(&message) {
            self.metrics.record_ext_proc_message(kind);
        }
        let answer = match on_message(state, message) {
            Action::Reply(answer) => answer,
            Action::PassBody { direction } => response::body_continue(direction, None),
            Action::LookupResource { resource, answer } => {
                match self.scanner.lookup_resource(&resource).await {
                    ResourceLookup::Infected(report) => {
                        // Known infected: refused before the upstream is contacted.
                        let decision = self.decide(context, state, Direction::Response, &report);
                        response::body_decision(Direction::Response, &decision)
                    }
                    ResourceLookup::Clean { validator } => {
                        state.record_clean_resource(validator);
                        answer
                    }
                    ResourceLookup::Miss => answer,
                }
            }
            Action::PassCachedResource { remove_headers } => {
                let verdict_header = match decide(
                    &Verdict::Clean,
                    &context.policy,
                    &context.response,
                    DecisionContext {
                        direction: Direction::Response,
                        request_id: &state.request_id,
                        sha256: None,
                    },
                ) {
                    Decision::Continue { verdict_header } => verdict_header,
                    Decision::Block(_) => None,
                };
                tracing::debug!(request_id = %state.request_id, path = %state.path, "resource known clean; body passes unbuffered");
                response::response_headers_pass_unbuffered(remove_headers, verdict_header)
            }
            Action::Scan { direction, body } => {
                let report =
                    self.scanner.scan_body(&body, source(direction), context.policy.cache_mode).await;
                drop(body);
                if direction == Direction::Response {
                    if let Some((resource, validator)) = state.resource_to_store() {
                        self.scanner.store_resource(resource, validator, &report).await;
                    }
                }
                let decision = self.decide(context, state, direction, &report);
                response::body_decision(direction, &decision)
            }
            Action::Fail(error) => {
                tracing::warn!(request_id = %state.request_id, error = %error, "ending ext_proc stream with an error");
                self.metrics.record_stream_error("protocol");
                return Err(error.to_status());
            }
        };
        Ok(answer)
    }

    /// The next message from Envoy; an inbound failure becomes the error status to end with.
    ///
    /// Either Envoy reset the stream (normal after every finished request: then nobody reads what
    /// follows) or a message could not be decoded, e.g. a body over `ext_proc.max_message_bytes`.
    /// Ending OK then would let Envoy deliver that body unscanned, so the stream always ends with
    /// an error status.
    async fn receive(
        &self,
        inbound: &mut Streaming<ProcessingRequest>,
        state: Option<&StreamState>,
    ) -> Result<Option<ProcessingRequest>, Status> {
        inbound.message().await.map_err(|status| {
            let finished = state.is_some_and(StreamState::is_complete);
            if !finished && status.code() != tonic::Code::Cancelled {
                let request_id = state.map(|state| state.request_id.as_str()).unwrap_or_default();
                tracing::warn!(request_id = %request_id, error = %status.message(), "inbound ext_proc stream failed before a decision");
                self.metrics.record_stream_error("inbound");
            }
            Status::aborted(format!("inbound stream failed: {}", status.message()))
        })
    }

    fn decide(
        &self,
        context: &StreamContext,
        state: &StreamState,
        direction: Direction,
        report: &ScanReport,
    ) -> Decision {
        let decision_context =
            DecisionContext { direction, request_id: &state.request_id, sha256: Some(&report.sha256) };
        let decision = decide(&report.verdict, &context.policy, &context.response, decision_context);
        audit(state, direction, report, &decision);
        if let Decision::Block(block) = &decision {
            self.metrics.record_blocked(block.status);
        }
        decision
    }
}

fn message_kind(message: &ProcessingRequest) -> Option<&'static str> {
    use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
    Some(match message.request.as_ref()? {
        Message::RequestHeaders(_) => "request_headers",
        Message::RequestBody(_) => "request_body",
        Message::RequestTrailers(_) => "request_trailers",
        Message::ResponseHeaders(_) => "response_headers",
        Message::ResponseBody(_) => "response_body",
        Message::ResponseTrailers(_) => "response_trailers",
    })
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
