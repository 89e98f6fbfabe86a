//! Do-nothing processors, the floors clamgate is measured against: an ext_proc processor for the
//! resource-hit and content-hit paths, and an `auth_request` endpoint for the nginx path.
//!
//! The ext_proc one answers what clamgate answers, but looks nothing up, hashes nothing, scans
//! nothing and records no metric. On `/mirror/` (the `noop-hit` scenario) it answers as clamgate
//! does on a resource-key hit: request headers continue; response headers get the same
//! `response::response_headers_pass_unbuffered` answer (verdict header and `mode_override`).
//! On `/files/` (the `echo-hit` scenario) it does what clamgate does on a content-key hit minus
//! the lookup: switches the response body to FULL_DUPLEX_STREAMED at the request headers, holds
//! the response headers and every body piece in memory until the body ends, then answers the
//! headers (verdict header set) and sends the body back in 64 KiB pieces. Both run behind a
//! second Envoy with the same shipped config, so "noop-hit over mirror-noscan" and "echo-hit over
//! baseline" are the cost of Envoy's ext_proc round trips on this machine, and "resource-hit over
//! noop-hit", "content-hit over echo-hit" are clamgate's own share.

use std::net::SocketAddr;
use std::pin::Pin;
use std::thread::JoinHandle;

use clamgate::ext_proc::response::{
    headers_continue, response_headers_pass_unbuffered, streamed_body, trailers_continue, with_body_modes,
    with_verdict_header,
};
use clamgate::ext_proc::ExternalProcessorServer;
use clamgate::policy::Direction;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// The ext_proc service name Envoy's health check asks about (as for clamgate).
const HEALTH_SERVICE: &str = "envoy.service.ext_proc.v3.ExternalProcessor";

struct Noop;

type AnswerStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

/// The largest piece of a body sent back to Envoy (as clamgate's).
const PIECE_BYTES: usize = 64 * 1024;

#[tonic::async_trait]
impl ExternalProcessor for Noop {
    type ProcessStream = AnswerStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (answers, answered) = tokio::sync::mpsc::channel::<Result<ProcessingResponse, Status>>(16);
        tokio::spawn(async move {
            let mut stream = NoopStream::default();
            while let Some(message) = inbound.next().await {
                let Ok(message) = message else { return };
                for answer in stream.on_message(message) {
                    let failed = answer.is_err();
                    if answers.send(answer).await.is_err() || failed {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(answered))))
    }
}

/// One stream of the do-nothing processor.
#[derive(Default)]
struct NoopStream {
    /// The request's path is on `/files/`: hold and echo the response body.
    echo: bool,
    /// The response body so far (echo only), held until it ends.
    held: Vec<u8>,
    /// The held response headers have been answered.
    headers_answered: bool,
}

impl NoopStream {
    fn on_message(&mut self, message: ProcessingRequest) -> Vec<Result<ProcessingResponse, Status>> {
        match message.request {
            Some(Message::RequestHeaders(headers)) => {
                let path = headers
                    .headers
                    .iter()
                    .flat_map(|map| map.headers.iter())
                    .find(|header| header.key == ":path")
                    .map(|header| String::from_utf8_lossy(&header.raw_value).into_owned())
                    .unwrap_or_default();
                self.echo = path.starts_with("/files/");
                let answer = headers_continue(Direction::Request, Vec::new());
                match self.echo {
                    // clamgate's answer on a scanned download: both bodies FULL_DUPLEX_STREAMED.
                    true => vec![Ok(with_body_modes(
                        answer,
                        BodySendMode::FullDuplexStreamed,
                        BodySendMode::FullDuplexStreamed,
                    ))],
                    false => vec![Ok(answer)],
                }
            }
            Some(Message::ResponseHeaders(_)) if !self.echo => {
                vec![Ok(response_headers_pass_unbuffered(Vec::new(), Some("clean")))]
            }
            // Held, unanswered, until the body has ended.
            Some(Message::ResponseHeaders(_)) => Vec::new(),
            Some(Message::RequestBody(body)) => {
                vec![Ok(streamed_body(Direction::Request, body.body, body.end_of_stream))]
            }
            Some(Message::ResponseBody(body)) if self.echo => {
                self.held.extend_from_slice(&body.body);
                match body.end_of_stream {
                    true => self.release(true),
                    false => Vec::new(),
                }
            }
            Some(Message::ResponseTrailers(_)) if self.echo => {
                let mut answers = self.release(false);
                answers.push(Ok(trailers_continue(Direction::Response, Vec::new())));
                answers
            }
            Some(Message::RequestTrailers(_)) => {
                vec![Ok(trailers_continue(Direction::Request, Vec::new()))]
            }
            _ => vec![Err(Status::invalid_argument("the noop processor did not expect this message"))],
        }
    }

    /// The held headers' answer (verdict header set) and the held body in 64 KiB pieces, the last
    /// one ending the stream when `complete`.
    fn release(&mut self, complete: bool) -> Vec<Result<ProcessingResponse, Status>> {
        let mut answers = Vec::new();
        if !self.headers_answered {
            self.headers_answered = true;
            let headers = headers_continue(Direction::Response, Vec::new());
            answers.push(Ok(with_verdict_header(headers, Some("clean"))));
        }
        let body = std::mem::take(&mut self.held);
        if body.is_empty() {
            if complete {
                answers.push(Ok(streamed_body(Direction::Response, Vec::new(), true)));
            }
            return answers;
        }
        let pieces = body.len().div_ceil(PIECE_BYTES);
        for (index, piece) in body.chunks(PIECE_BYTES).enumerate() {
            let last = complete && index + 1 == pieces;
            answers.push(Ok(streamed_body(Direction::Response, piece.to_vec(), last)));
        }
        answers
    }
}

/// The noop processor on its own runtime and thread, listening on an ephemeral loopback port.
/// Stopped when dropped.
pub struct NoopProcessor {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NoopProcessor {
    /// `workers`: the runtime's worker threads (clamgate's runtime has one per CPU).
    pub fn start(workers: usize) -> Result<NoopProcessor, String> {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(|err| format!("noop bind: {err}"))?;
        let addr = listener.local_addr().map_err(|err| format!("noop address: {err}"))?;
        listener.set_nonblocking(true).map_err(|err| format!("noop listener: {err}"))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("noop-ext-proc".to_string())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers.max(1))
                    .enable_all()
                    .build()
                    .expect("noop processor runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("noop listener");
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|stream| {
                        stream.inspect(|stream| {
                            let _ = stream.set_nodelay(true);
                        })
                    });
                    let (health, health_service) = tonic_health::server::health_reporter();
                    health.set_service_status(HEALTH_SERVICE, tonic_health::ServingStatus::Serving).await;
                    let _ = tonic::transport::Server::builder()
                        .add_service(health_service)
                        .add_service(ExternalProcessorServer::new(Noop))
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .map_err(|err| format!("noop thread: {err}"))?;
        Ok(NoopProcessor { addr, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for NoopProcessor {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A do-nothing `auth_request` endpoint: every request gets `200` with `x-clamgate-verdict: clean`
/// and an `x-clamgate-if-match` at once. The `nginx-noop-auth` scenario puts it where clamgate's `/v1/auth` would be: the floor
/// of any auth_request service (one loopback HTTP round trip per request). Stopped when dropped.
pub struct NoopAuth {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NoopAuth {
    /// `workers`: the runtime's worker threads (as clamgate's: one per CPU).
    pub fn start(workers: usize) -> Result<NoopAuth, String> {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(|err| format!("noop auth bind: {err}"))?;
        let addr = listener.local_addr().map_err(|err| format!("noop auth address: {err}"))?;
        listener.set_nonblocking(true).map_err(|err| format!("noop auth listener: {err}"))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("noop-auth".to_string())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers.max(1))
                    .enable_all()
                    .build()
                    .expect("noop auth runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("noop auth listener");
                    // clamgate's answer on a hit, If-Match value included, so that nginx and the
                    // origin do the same work as behind clamgate.
                    let router = axum::Router::new().fallback(|| async {
                        ([("x-clamgate-verdict", "clean"), ("x-clamgate-if-match", "\"noop-v1\"")], "")
                    });
                    let _ = axum::serve(listener, router)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .map_err(|err| format!("noop auth thread: {err}"))?;
        Ok(NoopAuth { addr, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for NoopAuth {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
