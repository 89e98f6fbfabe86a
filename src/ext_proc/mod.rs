//! The Envoy ext_proc server: one task per stream drives the [`state`] machine, scans bodies
//! through the shared [`Scanner`], and answers from a [`Decision`].
//!
//! The policy comes from the route (see [`route_policy`]): its metadata, sent as the
//! `xds.route_metadata` attribute, or the gRPC metadata `x-clamgate-policy` that Envoy adds per
//! route (`ExtProcPerRoute.overrides.grpc_initial_metadata`); a client can set neither. None means
//! the default `[policy]`; an unknown name fails the stream (Envoy answers 503), so a typo in
//! either config fails closed.
//!
//! Envoy 1.40 delivers a body unscanned when the stream ends with grpc-status OK before clamgate
//! has answered (README, "No stream ends OK before a decision"). So the task ends the stream OK
//! only after Envoy has closed its side; every failure sends an error status: a protocol violation
//! through the channel, a panic or an abort of the task through `Answers`, which watches the task
//! itself (so the status never needs room in a full channel).

pub mod error;
pub mod response;
pub mod route_policy;
pub mod state;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};

use sha2::{Digest, Sha256};

use crate::audit::{audit, AuditContext};
use crate::cache::{ContentKey, ResourceVersion};
use crate::config::Config;
use crate::metrics::{Metrics, Source};
use crate::offload::hash_off_worker;
use crate::policy::{decide, Decision, DecisionContext, Direction, Policies, Policy};
use crate::scanner::{ScanReport, Scanner};
use crate::spool::{HeldBody, MemoryCharge, Spool, READ_PIECE_BYTES};
use crate::verdict::Verdict;
use error::StreamError;
use route_policy::GrpcMetadataPolicy;
use state::{on_message, Effect, StreamPolicy, StreamState, Then};

/// The gRPC metadata key that names the policy of a route.
pub const POLICY_METADATA_KEY: &str = "x-clamgate-policy";

pub use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;

/// Answers in flight per stream. Outside FULL_DUPLEX mode Envoy waits for each answer, so one
/// is pending at a time.
const STREAM_CHANNEL_CAPACITY: usize = 4;

/// The ext_proc gRPC service.
#[derive(Clone)]
pub struct ExtProcService {
    scanner: Arc<Scanner>,
    policies: Policies,
    metrics: Arc<Metrics>,
    spool: Spool,
}

impl ExtProcService {
    pub fn new(scanner: Arc<Scanner>, config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        let spool = Spool::from_config(&config.bodies, metrics.clone());
        ExtProcService { scanner, policies: Policies::from_config(&config), metrics, spool }
    }

    /// Where this service holds bodies: the Scan API shares it, so one memory and disk budget
    /// bounds both.
    pub fn spool(&self) -> Spool {
        self.spool.clone()
    }

    /// The policy Envoy named for this stream's route (route metadata or gRPC metadata).
    fn policy_for(
        &self,
        first: &ProcessingRequest,
        grpc_metadata_policy: &GrpcMetadataPolicy,
    ) -> Result<Arc<Policy>, StreamError> {
        let fail = StreamError::Policy;
        let grpc_metadata_policy = match grpc_metadata_policy {
            None => None,
            Some(Ok(name)) => Some(name.as_str()),
            Some(Err(err)) => return Err(fail(err.to_string())),
        };
        let name = route_policy::select(&first.attributes, grpc_metadata_policy)
            .map_err(|err| fail(err.to_string()))?;
        let Some(name) = name else { return Ok(self.policies.default_policy()) };
        self.policies
            .named(&name)
            .ok_or_else(|| fail(format!("Envoy named clamgate policy {name:?}, which is not configured")))
    }
}

/// One stream's context: its state machine, the policy in force and the answers it shapes, and
/// the I/O the state machine leaves to the driver (held bodies, a hit's running hash, the answers).
struct Stream<'a> {
    state: StreamState,
    policy: Arc<Policy>,
    /// tonic's decode buffer, counted in `bodies.memory_budget_bytes`: it grows to the largest
    /// message (a BUFFERED body) and keeps that size until the stream ends.
    decode_buffer: MemoryCharge,
    /// Each direction's FULL_DUPLEX body while it is held.
    held: [Option<HeldBody>; 2],
    /// A verified resource hit's running SHA-256 (the response's).
    verifying: Option<Verifying>,
    out: Outbox<'a>,
}

type AnswerStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = AnswerStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        // Read as bytes: a value that is not printable ASCII fails the stream (not the default).
        let values: Vec<&[u8]> =
            request.metadata().get_all(POLICY_METADATA_KEY).iter().map(|value| value.as_bytes()).collect();
        let grpc_metadata_policy = route_policy::grpc_metadata_policy(&values);
        let inbound = request.into_inner();
        let (answers, receiver) = mpsc::channel(STREAM_CHANNEL_CAPACITY);
        let task = tokio::spawn(self.clone().run_stream(grpc_metadata_policy, inbound, answers));
        Ok(Response::new(Box::pin(Answers::new(receiver, task, self.metrics.clone()))))
    }
}

impl ExtProcService {
    async fn run_stream(
        self,
        grpc_metadata_policy: GrpcMetadataPolicy,
        inbound: Streaming<ProcessingRequest>,
        answers: mpsc::Sender<Result<ProcessingResponse, Status>>,
    ) {
        let _open = OpenStream::count(self.metrics.clone());
        // A panic in here ends the task without a status: `Answers` adds it.
        let outcome = self.drive(grpc_metadata_policy, inbound, &answers).await;
        if let Err(status) = outcome {
            let _ = answers.send(Err(status)).await;
        }
    }

    /// Answers Envoy's messages in order. Ok: Envoy closed its side (or went away), nothing is
    /// waiting. Err: the status to end the stream with.
    async fn drive(
        &self,
        grpc_metadata_policy: GrpcMetadataPolicy,
        mut inbound: Streaming<ProcessingRequest>,
        answers: &mpsc::Sender<Result<ProcessingResponse, Status>>,
    ) -> Result<(), Status> {
        // The policy comes with the first message (its route metadata attribute).
        let before_headers = |error: StreamError| error.emit("", &self.metrics);
        let Some(first) = self.receive(&mut inbound, None).await.map_err(before_headers)? else {
            return Ok(());
        };
        let policy = self.policy_for(&first, &grpc_metadata_policy).map_err(before_headers)?;
        let mut stream = Stream {
            state: StreamState::new(StreamPolicy::of(&policy, self.scanner.max_scan_bytes())),
            policy,
            decode_buffer: self.spool.charge(),
            held: [None, None],
            verifying: None,
            out: Outbox { answers },
        };
        let mut next = Some(first);
        loop {
            let message = match next.take() {
                Some(message) => message,
                None => match self.receive(&mut inbound, Some(&stream.state)).await {
                    Ok(Some(message)) => message,
                    // Envoy closed its side with a body still held (it never sent the end):
                    // nothing was decided, so the stream must not end OK (rule 1).
                    Ok(None)
                        if [Direction::Request, Direction::Response]
                            .iter()
                            .any(|d| stream.state.is_holding(*d)) =>
                    {
                        return Err(
                            StreamError::HeldBodyCutShort.emit(&stream.state.request_id, &self.metrics)
                        );
                    }
                    Ok(None) => return Ok(()),
                    Err(error) => return Err(error.emit(&stream.state.request_id, &self.metrics)),
                },
            };
            if let Some(kind) = message_kind(&message) {
                self.metrics.record_ext_proc_message(kind);
            }
            let effects = on_message(&mut stream.state, message);
            match self.execute(&mut stream, effects).await {
                Ok(()) => {}
                // Envoy went away; nobody is left to answer.
                Err(Stop::Gone) => return Ok(()),
                Err(Stop::Fail(error)) => return Err(error.emit(&stream.state.request_id, &self.metrics)),
            }
        }
    }

    /// Carries out `effects` in order; an effect that waits for an outcome (a lookup, a scan, a
    /// decision) hands it back to the state machine, whose effects come next.
    async fn execute(&self, stream: &mut Stream<'_>, effects: Vec<Effect>) -> Result<(), Stop> {
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            let next = self.execute_one(stream, effect).await?;
            for effect in next.into_iter().rev() {
                queue.push_front(effect);
            }
        }
        Ok(())
    }

    /// Carries out one effect: I/O only (answers, the spool, scans, the cache); what follows is
    /// the state machine's to say.
    async fn execute_one(&self, stream: &mut Stream<'_>, effect: Effect) -> Result<Vec<Effect>, Stop> {
        let state = &mut stream.state;
        Ok(match effect {
            Effect::Reply(answer) => {
                stream.out.send(answer).await?;
                Vec::new()
            }
            Effect::Fail(error) => return Err(Stop::Fail(error)),
            Effect::LookupResource { resource } => {
                let lookup = self.scanner.lookup_resource(&resource).await;
                state::on_resource_lookup(state, lookup)
            }
            Effect::PassCachedResource { remove_headers } => {
                let verdict_header = self.clean_verdict_header(stream);
                tracing::debug!(request_id = %stream.state.request_id, path = %stream.state.path, "resource known clean; body passes unbuffered");
                stream
                    .out
                    .send(response::response_headers_pass_unbuffered(remove_headers, verdict_header))
                    .await?;
                Vec::new()
            }
            Effect::EchoCachedResource { headers_answer, verify } => {
                match verify {
                    Some(expected) => stream.verifying = Some(Verifying::new(expected)),
                    None => self.metrics.record_resource_verification("partial"),
                }
                let verdict_header = self.clean_verdict_header(stream);
                stream.out.send(response::with_verdict_header(headers_answer, verdict_header)).await?;
                Vec::new()
            }
            Effect::Decide { direction, report, then } => {
                let decision = self.decide(stream, direction, &report);
                state::decided(&mut stream.state, then, &decision)
            }
            Effect::DecideUnscanned { direction, reason, bytes, then } => {
                let report = self.scanner.report_unscanned("", bytes, reason, Source::Proxied(direction));
                let decision = self.decide(stream, direction, &report);
                state::decided(&mut stream.state, then, &decision)
            }
            Effect::ScanBody { direction, body, store_as } => {
                // A BUFFERED body, one message: tonic's decode buffer keeps room for the largest
                // message for the rest of the stream, and the body itself is held like a
                // FULL_DUPLEX one (memory within the budget, else a temp file) while it is scanned.
                stream.decode_buffer.raise_to(body.len() as u64);
                let mut held = self.spool.hold();
                held.push(bytes::Bytes::from(body))
                    .await
                    .map_err(|err| Stop::Fail(StreamError::holding(&err)))?;
                let (report, part) = self.scan(stream, direction, &held, store_as.as_ref()).await;
                drop(held);
                let decision = self.decide_part(stream, direction, &report, part.as_deref());
                state::decided(&mut stream.state, Then::AnswerBody { direction }, &decision)
            }
            Effect::HoldPiece { direction, body } => {
                let held = stream.held[direction as usize].get_or_insert_with(|| self.spool.hold());
                held.push(bytes::Bytes::from(body))
                    .await
                    .map_err(|err| Stop::Fail(StreamError::holding(&err)))?;
                Vec::new()
            }
            Effect::ScanHeld { direction, trailers, store_as } => {
                let held = stream.held[direction as usize].take().unwrap_or_else(|| self.spool.hold());
                let scan = self.scan(stream, direction, &held, store_as.as_ref());
                // A client that goes away (Envoy resets the stream) ends the scan and frees clamd.
                let (report, part) = tokio::select! {
                    scanned = scan => scanned,
                    _ = stream.out.answers.closed() => return Err(Stop::Gone),
                };
                stream.held[direction as usize] = Some(held);
                let decision = self.decide_part(stream, direction, &report, part.as_deref());
                state::decided(&mut stream.state, Then::ReleaseHeld { direction, trailers }, &decision)
            }
            Effect::SendHeld { direction, headers_answer, complete } => {
                if let Some(answer) = headers_answer {
                    stream.out.send(answer).await?;
                }
                let held = stream.held[direction as usize].take();
                stream.out.send_back(direction, held, complete).await?;
                Vec::new()
            }
            Effect::CountSkip { direction, media_type, skipped } => {
                let rule = stream.policy.skip.as_ref().map_or("", |rule| rule.name.as_str());
                self.metrics.record_skip(rule, direction, media_type, skipped);
                let outcome = if skipped { "skipped: not scanned" } else { "type mismatch: scanned" };
                tracing::debug!(request_id = %stream.state.request_id, path = %stream.state.path, rule, content_type = media_type, ?direction, "skip rule: {outcome}");
                Vec::new()
            }
            Effect::DropHeld { direction } => {
                stream.held[direction as usize] = None;
                Vec::new()
            }
            Effect::VerifyPiece { body, end_of_stream } => {
                if let Some(verifying) = stream.verifying.as_mut() {
                    verifying.push(&body);
                }
                if end_of_stream {
                    // Compared before the last piece goes out, so that a mismatching entry is gone
                    // by the time the client has the whole body and may ask again.
                    self.finish_verification(stream).await;
                }
                stream.out.send(response::streamed_body(Direction::Response, body, end_of_stream)).await?;
                Vec::new()
            }
            Effect::FinishVerification => {
                self.finish_verification(stream).await;
                Vec::new()
            }
        })
    }

    /// The end of a verified resource hit's body: the bytes that passed are compared with the
    /// entry's content key. A mismatch (the upstream served other bytes under the same validator)
    /// deletes the entry, so that the next request is scanned; these bytes have reached the
    /// client already.
    async fn finish_verification(&self, stream: &mut Stream<'_>) {
        let Some(verifying) = stream.verifying.take() else { return };
        let state = &stream.state;
        let received = ContentKey::from_digest(verifying.hasher.finalize().into());
        if received == verifying.expected {
            self.metrics.record_resource_verification("match");
            return;
        }
        if let Some(resource) = state.resource() {
            self.scanner.forget_resource(resource).await;
        }
        ResourceMismatch {
            request_id: &state.request_id,
            path: &state.path,
            validator: state.response_validator().unwrap_or_default(),
            expected: &verifying.expected,
            received: &received,
            bytes: verifying.bytes,
        }
        .emit(&self.metrics);
    }

    /// Scans a held body of `direction`: an upload declared multipart part by part
    /// ([`Scanner::scan_multipart`]: the report, and the part that decided, named), anything else
    /// whole.
    async fn scan(
        &self,
        stream: &Stream<'_>,
        direction: Direction,
        held: &HeldBody,
        store_as: Option<&ResourceVersion>,
    ) -> (ScanReport, Option<String>) {
        let state = &stream.state;
        let (encodings, source, cache_mode) =
            (state.encodings(direction), Source::Proxied(direction), stream.policy.rules.cache_mode);
        match state.multipart(direction) {
            Some(boundary) => {
                let boundary = boundary.as_ref().map(String::as_str).map_err(String::as_str);
                let scanned = self
                    .scanner
                    .scan_multipart(held, boundary, encodings, &self.spool, source, cache_mode)
                    .await;
                let part = scanned.deciding_part();
                (scanned.report, part)
            }
            None => (self.scanner.scan_held(held, encodings, source, cache_mode, store_as).await, None),
        }
    }

    /// The verdict header for a body passed as clean (none if the config turns it off).
    fn clean_verdict_header(&self, stream: &Stream<'_>) -> Option<&'static str> {
        let decision_context = DecisionContext {
            direction: Direction::Response,
            request_id: &stream.state.request_id,
            sha256: None,
            part: None,
            accept: None,
        };
        match decide(&Verdict::Clean, &stream.policy, decision_context) {
            Decision::Continue { verdict_header, .. } => verdict_header,
            Decision::Block(_) => None,
        }
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
    ) -> Result<Option<ProcessingRequest>, StreamError> {
        inbound.message().await.map_err(|status| {
            let finished = state.is_some_and(StreamState::is_complete);
            let message = status.message().to_string();
            if finished || status.code() == tonic::Code::Cancelled {
                StreamError::InboundAfterDecision(message)
            } else {
                StreamError::Inbound(message)
            }
        })
    }

    /// The policy's decision on `report`, logged on the audit target and counted.
    fn decide(&self, stream: &Stream<'_>, direction: Direction, report: &ScanReport) -> Decision {
        self.decide_part(stream, direction, report, None)
    }

    /// [`Self::decide`] for a multipart upload whose `part` decided: its answer names the part.
    fn decide_part(
        &self,
        stream: &Stream<'_>,
        direction: Direction,
        report: &ScanReport,
        part: Option<&str>,
    ) -> Decision {
        let state = &stream.state;
        let decision_context = DecisionContext {
            direction,
            request_id: &state.request_id,
            sha256: Some(&report.sha256),
            part,
            accept: state.accept.as_deref(),
        };
        let decision = decide(&report.verdict, &stream.policy, decision_context);
        let context = AuditContext {
            front_door: "ext_proc",
            request_id: &state.request_id,
            direction,
            path: &state.path,
            part,
        };
        audit(context, report, &decision);
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

/// A verified resource hit whose bytes were not the ones the entry was scanned with: logged on
/// the audit target and counted by one call.
struct ResourceMismatch<'a> {
    request_id: &'a str,
    path: &'a str,
    validator: &'a str,
    expected: &'a ContentKey,
    received: &'a ContentKey,
    bytes: u64,
}

impl ResourceMismatch<'_> {
    fn emit(&self, metrics: &Metrics) {
        metrics.record_resource_verification("mismatch");
        tracing::warn!(
            target: "clamgate::audit",
            event = "resource_mismatch",
            request_id = %self.request_id,
            path = %self.path,
            validator = %self.validator,
            expected_sha256 = %self.expected,
            sha256 = %self.received,
            bytes = self.bytes,
            action = "entry_deleted",
            "a resource-cache hit delivered other bytes than the entry's under the same validator; entry deleted"
        );
    }
}

/// Why the stream task stops answering.
enum Stop {
    /// Envoy went away (the client left, or the stream was reset): nobody is waiting.
    Gone,
    /// End the stream with this error.
    Fail(StreamError),
}

/// Where answers go, in order.
struct Outbox<'a> {
    answers: &'a mpsc::Sender<Result<ProcessingResponse, Status>>,
}

impl Outbox<'_> {
    async fn send(&self, answer: ProcessingResponse) -> Result<(), Stop> {
        self.answers.send(Ok(answer)).await.map_err(|_| Stop::Gone)
    }

    /// Sends a held body (None: nothing was held) back in pieces of at most 64 KiB; the last
    /// carries `end_of_stream` when `complete` (the whole body is here and no trailers follow).
    async fn send_back(
        &self,
        direction: Direction,
        body: Option<HeldBody>,
        complete: bool,
    ) -> Result<(), Stop> {
        let total = body.as_ref().map_or(0, HeldBody::len);
        if total == 0 {
            if complete {
                self.send(response::streamed_body(direction, Vec::new(), true)).await?;
            }
            return Ok(());
        }
        let Some(body) = body else { return Ok(()) };
        let mut offset = 0;
        while offset < total {
            let piece = body
                .read_at(offset, READ_PIECE_BYTES)
                .await
                .map_err(|err| Stop::Fail(StreamError::ReadBack(err.to_string())))?;
            if piece.is_empty() {
                break;
            }
            offset += piece.len() as u64;
            let last = complete && offset >= total;
            self.send(response::streamed_body(direction, piece.to_vec(), last)).await?;
        }
        Ok(())
    }
}

/// A resource-cache hit's body on its way through: its running SHA-256 and the digest to match.
struct Verifying {
    hasher: Sha256,
    expected: ContentKey,
    bytes: u64,
}

impl Verifying {
    fn new(expected: ContentKey) -> Verifying {
        Verifying { hasher: Sha256::new(), expected, bytes: 0 }
    }

    fn push(&mut self, piece: &[u8]) {
        hash_off_worker(piece.len(), || self.hasher.update(piece));
        self.bytes += piece.len() as u64;
    }
}

/// Counts the stream in `ext_proc_streams_open` while it lives (panics included).
struct OpenStream(Arc<Metrics>);

impl OpenStream {
    fn count(metrics: Arc<Metrics>) -> OpenStream {
        metrics.add_open_stream(1);
        OpenStream(metrics)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.add_open_stream(-1);
    }
}

/// The answer stream of one ext_proc stream: what the stream task sends, then, if the task
/// ended without returning (a panic, or an abort), an error status.
///
/// The task's own answers (an error status included) come through the channel, in order. The
/// channel closes when the task ends, however it ends; only then is the task's outcome read, and a
/// task that did not return gets `internal`. This needs no room in the channel: a panic while
/// the channel is full (Envoy slow to read a FULL_DUPLEX body sent back) still ends the RPC with
/// an error, never OK (rule 1).
struct Answers {
    receiver: mpsc::Receiver<Result<ProcessingResponse, Status>>,
    /// None once the task's outcome has been read.
    task: Option<JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

impl Answers {
    fn new(
        receiver: mpsc::Receiver<Result<ProcessingResponse, Status>>,
        task: JoinHandle<()>,
        metrics: Arc<Metrics>,
    ) -> Answers {
        Answers { receiver, task: Some(task), metrics }
    }
}

impl tokio_stream::Stream for Answers {
    type Item = Result<ProcessingResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(answer) = ready!(this.receiver.poll_recv(cx)) {
            return Poll::Ready(Some(answer));
        }
        // Every sender is gone: the task has ended (or is ending: its future is being dropped).
        let Some(task) = this.task.as_mut() else { return Poll::Ready(None) };
        let outcome = ready!(Pin::new(task).poll(cx));
        this.task = None;
        match outcome {
            Ok(()) => Poll::Ready(None),
            Err(err) => {
                let why = if err.is_panic() { "panicked" } else { "was cancelled" };
                let error = StreamError::TaskEnded { why, detail: err.to_string() };
                Poll::Ready(Some(Err(error.emit("", &this.metrics))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    /// A stand-in for the stream task: it fills the channel, then `end`s (a panic, or waiting to
    /// be aborted). A mock, because no real input makes clamgate's task panic (that is the bug
    /// this guards against), and the channel is full only while Envoy is slow to read.
    async fn answers_of_a_task_that_fills_the_channel(
        abort: bool,
    ) -> Vec<Result<ProcessingResponse, Status>> {
        let metrics = Arc::new(Metrics::new());
        let (answers, receiver) = mpsc::channel(1);
        let (full, channel_is_full) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            answers.send(Ok(ProcessingResponse::default())).await.expect("room for one answer");
            assert!(answers.try_send(Ok(ProcessingResponse::default())).is_err(), "the channel is full");
            let _ = full.send(());
            if abort {
                std::future::pending::<()>().await;
            }
            panic!("fault injected while the answer channel is full");
        });
        channel_is_full.await.expect("the task filled the channel");
        if abort {
            task.abort();
        }
        Answers::new(receiver, task, metrics).collect().await
    }

    #[tokio::test]
    async fn a_task_that_panics_or_is_aborted_with_the_channel_full_ends_the_stream_with_an_error() {
        for abort in [false, true] {
            let items = answers_of_a_task_that_fills_the_channel(abort).await;
            let statuses: Vec<Option<tonic::Code>> =
                items.iter().map(|item| item.as_ref().err().map(Status::code)).collect();
            assert_eq!(statuses, vec![None, Some(tonic::Code::Internal)], "abort: {abort}");
        }
    }

    #[tokio::test]
    async fn a_task_that_returns_ends_the_stream_after_its_answers() {
        let (answers, receiver) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            let _ = answers.send(Err(Status::aborted("the task's own status"))).await;
        });
        let items: Vec<_> = Answers::new(receiver, task, Arc::new(Metrics::new())).collect().await;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].as_ref().err().map(Status::code), Some(tonic::Code::Aborted));
    }
}
