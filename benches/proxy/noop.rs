//! A do-nothing ext_proc processor: the floor of what any processor adds on the resource-hit path.
//!
//! It answers exactly what clamgate answers on a resource-key hit (request headers: continue;
//! response headers: the same `response::response_headers_pass_unbuffered` answer, verdict header
//! and `mode_override` included) but looks nothing up, keeps no state, records no metric and
//! answers inline in the response stream. The `noop-hit` scenario puts it behind a second Envoy
//! with the same shipped config, so "noop-hit over mirror-noscan" is the cost of Envoy's ext_proc
//! round trips and the machine, and "resource-hit over noop-hit" is clamgate's own share.

use std::net::SocketAddr;
use std::pin::Pin;
use std::thread::JoinHandle;

use clamgate::ext_proc::response::response_headers_pass_unbuffered;
use clamgate::ext_proc::ExternalProcessorServer;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Answer;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    CommonResponse, HeadersResponse, ProcessingRequest, ProcessingResponse,
};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// The ext_proc service name Envoy's health check asks about (as for clamgate).
const HEALTH_SERVICE: &str = "envoy.service.ext_proc.v3.ExternalProcessor";

struct Noop;

type AnswerStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for Noop {
    type ProcessStream = AnswerStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let answers = request.into_inner().map(|message| message.and_then(answer));
        Ok(Response::new(Box::pin(answers)))
    }
}

fn answer(message: ProcessingRequest) -> Result<ProcessingResponse, Status> {
    match message.request {
        Some(Message::RequestHeaders(_)) => Ok(ProcessingResponse {
            response: Some(Answer::RequestHeaders(HeadersResponse {
                response: Some(CommonResponse::default()),
            })),
            ..ProcessingResponse::default()
        }),
        Some(Message::ResponseHeaders(_)) => Ok(response_headers_pass_unbuffered(Vec::new(), Some("clean"))),
        _ => Err(Status::invalid_argument("the noop processor answers headers only")),
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
