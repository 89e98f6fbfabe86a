//! The shipped Envoy config (`envoy/envoy.yaml`), run by the real Envoy binary without clamgate:
//! it validates, it fails closed when no processor answers, and, with a stub processor that lets
//! everything through, it strips `x-clamgate-*` headers, keeps the processor's own 409, sends
//! request bodies FULL_DUPLEX (any size, in pieces), and enforces the 16 MiB buffer limit on
//! BUFFERED responses (bodies within it reach the processor in one message).
//!
//! Envoy comes from `ENVOY_BIN`, `PATH` or `.tools/venv/bin/envoy` (see `scripts/setup.sh`).

mod support;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode as EnvoyStatusCode};
use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as ProcessingRequestKind;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as ProcessingResponseKind;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders,
    ImmediateResponse, ProcessingRequest, ProcessingResponse, StreamedBodyResponse, TrailersResponse,
};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::envoy::{envoy_binary, EnvoyProcess, SHIPPED_CONFIG};
use support::upstream::Upstream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;

/// Envoy's buffer limit in the shipped config (listener and route).
const ENVOY_BUFFER_LIMIT_BYTES: usize = 16 * 1024 * 1024;
/// The stub's gRPC decode limit: above Envoy's buffer limit, as clamgate's must be.
const STUB_MAX_MESSAGE_BYTES: usize = 20 * 1024 * 1024;
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(20);

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("reqwest client")
}

/// An address nothing listens on: bound, then released.
fn unused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local_addr")
}

#[test]
fn shipped_config_validates() {
    let output = Command::new(envoy_binary())
        .args(["--mode", "validate", "-l", "warning", "-c", SHIPPED_CONFIG])
        .output()
        .expect("run envoy --mode validate");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "envoy --mode validate failed:\n{text}");
    assert!(text.contains("OK"), "no OK from envoy --mode validate:\n{text}");
}

#[test]
fn rendered_config_validates() {
    // The config the harness runs (ports substituted) is still valid.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("envoy.yaml");
    let addr = SocketAddr::from(([127, 0, 0, 1], 1));
    std::fs::write(&path, support::envoy::render_config(addr, addr)).expect("write config");
    let output = Command::new(envoy_binary())
        .args(["--mode", "validate", "-l", "warning", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy --mode validate");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_starts_envoy_with_the_shipped_config() {
    let upstream = Upstream::start().await;
    let envoy = EnvoyProcess::start(unused_addr(), upstream.addr());
    assert_ne!(envoy.addr().port(), 0);
    let (status, body) = envoy.admin_get("/ready").expect("admin /ready");
    assert_eq!((status, body.trim()), (200, "LIVE"));
    let flags = envoy.clamgate_health_flags().expect("clamgate health flags");
    assert_ne!(flags, "healthy", "nothing listens on the clamgate address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_clamgate_nothing_passes() {
    let upstream = Upstream::start().await;
    upstream.put_file("clean.txt", &b"hello, world\n"[..]);
    let envoy = EnvoyProcess::start(unused_addr(), upstream.addr());
    let client = client();

    let download = client.get(envoy.url("/files/clean.txt")).send().await.expect("GET via envoy");
    let status = download.status();
    assert!(
        [500, 503, 504].contains(&status.as_u16()),
        "GET with clamgate down: expected a 5xx from Envoy, got {status}\n{}",
        envoy.logs()
    );
    // status_on_error in the shipped config.
    assert_eq!(status.as_u16(), 503, "{}", envoy.logs());

    let upload =
        client.post(envoy.url("/upload/doc.bin")).body(vec![7u8; 4096]).send().await.expect("POST via envoy");
    assert!(!upload.status().is_success(), "upload passed with clamgate down: {}", upload.status());

    // The request-headers message fails first, so the upstream is never called at all.
    assert_eq!(upstream.total_hits(), 0, "the upstream was reached with clamgate down");
    assert_eq!(upstream.received("doc.bin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_started_after_envoy_is_used_within_seconds() {
    // Health checks run every 2 s even while the cluster has no traffic (no_traffic_interval;
    // Envoy's default would be 60 s), so clamgate may start after Envoy.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = Upstream::start().await;
    upstream.put_file("late.txt", &b"late\n"[..]);
    let envoy = EnvoyProcess::start(listener.local_addr().expect("addr"), upstream.addr());
    // Bound but not served yet: connections wait in the backlog and the checks time out.
    assert_ne!(envoy.clamgate_health_flags().as_deref(), Ok("healthy"));

    let _stub = StubProcessor::serve(listener).await;
    envoy.wait_clamgate_healthy(Duration::from_secs(10));
    let response = client().get(envoy.url("/files/late.txt")).send().await.expect("GET");
    assert_eq!(response.status(), 200, "{}", envoy.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_upstream_clamgate_headers_are_stripped() {
    let stub = StubProcessor::start().await;
    let upstream = Upstream::start().await;
    upstream.put_file_with_headers(
        "clean.txt",
        &b"clean bytes\n"[..],
        &[("x-clamgate-verdict", "clean"), ("X-Clamgate-From-Upstream", "lie")],
    );
    let envoy = EnvoyProcess::start(stub.addr, upstream.addr());
    envoy.wait_clamgate_healthy(HEALTHY_TIMEOUT);

    let response = client()
        .get(envoy.url("/files/clean.txt"))
        .header("x-clamgate-verdict", "clean")
        .header("X-ClamGate-Policy", "off")
        .header("x-clamgate-signature", "none")
        .header("x_clamgate_verdict", "clean")
        .header("x-clamgateish", "kept: no dash after the prefix")
        .header("x-request-id", "client-chosen-id")
        .send()
        .await
        .expect("GET via envoy");
    assert_eq!(response.status(), 200, "{}", envoy.logs());
    let headers = response.headers().clone();
    assert_eq!(response.bytes().await.expect("body").as_ref(), b"clean bytes\n");

    // Neither the processor nor the upstream saw a client x-clamgate-* (or x_clamgate_*) header.
    let seen = stub.request_header_names();
    assert!(!seen.is_empty(), "the stub saw no request");
    for names in [seen, header_names(&upstream.received_headers("/files/clean.txt").expect("upstream hit"))] {
        let leaked: Vec<_> = names
            .iter()
            .filter(|name| name.contains("clamgate_") || name.starts_with("x-clamgate-"))
            .collect();
        assert!(leaked.is_empty(), "client control headers leaked: {leaked:?} (all: {names:?})");
        assert!(names.iter().any(|name| name == "x-clamgateish"), "unrelated header dropped: {names:?}");
    }

    // Envoy replaced the client's request id (clamgate logs it as request.id).
    let upstream_headers = upstream.received_headers("/files/clean.txt").expect("upstream hit");
    let request_id = upstream_headers.get("x-request-id").expect("x-request-id");
    assert_ne!(request_id.as_bytes(), b"client-chosen-id");

    // The upstream's x-clamgate-* headers were stripped before the processor and the client; the
    // processor's own verdict header reached the client.
    let stub_saw = stub.response_header_names();
    assert!(
        !stub_saw.iter().any(|name| name.starts_with("x-clamgate-")),
        "upstream x-clamgate-* headers reached the processor: {stub_saw:?}"
    );
    assert_eq!(headers.get("x-clamgate-verdict").map(|v| v.as_bytes()), Some(&b"stub-clean"[..]));
    assert!(headers.get("x-clamgate-from-upstream").is_none(), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_409_reaches_the_client_with_its_verdict_header() {
    let stub = StubProcessor::start().await;
    let upstream = Upstream::start().await;
    upstream.put_file("infected.bin", &b"pretend this is EICAR"[..]);
    let envoy = EnvoyProcess::start(stub.addr, upstream.addr());
    envoy.wait_clamgate_healthy(HEALTHY_TIMEOUT);

    let response = client().get(envoy.url("/files/infected.bin")).send().await.expect("GET");
    assert_eq!(response.status(), 409, "{}", envoy.logs());
    // Local replies run the whole encoder chain: a downstream strip filter would remove this.
    assert_eq!(
        response.headers().get("x-clamgate-verdict").map(|v| v.as_bytes()),
        Some(&b"infected"[..]),
        "{:?}",
        response.headers()
    );
    assert_eq!(response.text().await.expect("body"), "{\"verdict\":\"infected\"}");
    // BUFFERED response: the upstream was called, but its body never reached the client.
    assert_eq!(upstream.hits("/files/infected.bin"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_full_duplex_and_downloads_are_buffered_up_to_the_limit() {
    let stub = StubProcessor::start().await;
    let upstream = Upstream::start().await;
    let envoy = EnvoyProcess::start(stub.addr, upstream.addr());
    envoy.wait_clamgate_healthy(HEALTHY_TIMEOUT);
    let client = client();

    // Uploads of any size: the route sends request bodies FULL_DUPLEX (trailers too), in
    // pieces; the stub sends each piece straight back and the upstream gets the body unchanged.
    for size in [ENVOY_BUFFER_LIMIT_BYTES - 64 * 1024, ENVOY_BUFFER_LIMIT_BYTES + 4 * 1024 * 1024] {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let name = format!("up-{size}.bin");
        let response =
            client.put(envoy.url(&format!("/upload/{name}"))).body(body.clone()).send().await.expect("PUT");
        assert_eq!(response.status(), 201, "{}", envoy.logs());
        assert!(upstream.received(&name).as_deref() == Some(&body[..]), "upload altered");
    }
    let modes = stub.modes();
    assert!(!modes.is_empty());
    for mode in modes {
        assert_eq!(
            mode,
            (BodySendMode::FullDuplexStreamed as i32, BodySendMode::Buffered as i32),
            "every route: uploads FULL_DUPLEX, responses BUFFERED (clamgate switches them)"
        );
    }
    // Pieces are what Envoy has buffered when it sends: up to its buffer limit, which is why
    // clamgate's ext_proc.max_message_bytes must stay above it.
    let pieces = stub.request_pieces();
    assert!(pieces.len() > 2, "request bodies arrive in pieces: {pieces:?}");
    assert!(pieces.iter().all(|&n| n <= ENVOY_BUFFER_LIMIT_BYTES), "request body pieces: {pieces:?}");
    let streamed: usize = pieces.iter().sum();
    assert_eq!(streamed, 2 * ENVOY_BUFFER_LIMIT_BYTES + 4 * 1024 * 1024 - 64 * 1024);

    // A download just under the limit reaches the processor in one message.
    let under: Vec<u8> = (0..ENVOY_BUFFER_LIMIT_BYTES - 64 * 1024).map(|i| (i % 251) as u8).collect();
    upstream.put_file("under.bin", under.clone());
    let response = client.get(envoy.url("/files/under.bin")).send().await.expect("GET");
    assert_eq!(response.status(), 200, "{}", envoy.logs());
    assert!(response.bytes().await.expect("body").as_ref() == &under[..], "download altered");
    assert_eq!(stub.body_sizes().iter().filter(|&&n| n == under.len()).count(), 1, "{:?}", stub.body_sizes());

    // A BUFFERED download over the limit: Envoy refuses it by itself (500); nothing passes.
    // (clamgate itself switches downloads to FULL_DUPLEX; this stub does not.)
    let over = vec![0x5a_u8; ENVOY_BUFFER_LIMIT_BYTES + 64 * 1024];
    upstream.put_file("over.bin", over);
    let response = client.get(envoy.url("/files/over.bin")).send().await.expect("GET");
    assert_eq!(response.status(), 500, "{}", envoy.logs());
    assert!(response.bytes().await.expect("body").len() < 1024);
    assert!(!stub.body_sizes().iter().any(|&n| n > ENVOY_BUFFER_LIMIT_BYTES));
}

fn header_names(map: &axum::http::HeaderMap) -> Vec<String> {
    map.keys().map(|name| name.as_str().to_string()).collect()
}

fn names_of(headers: &Option<HttpHeaders>) -> Vec<String> {
    headers
        .as_ref()
        .and_then(|h| h.headers.as_ref())
        .map(|map| map.headers.iter().map(|h| h.key.to_ascii_lowercase()).collect())
        .unwrap_or_default()
}

fn header_value(headers: &Option<HttpHeaders>, key: &str) -> Option<String> {
    let map = headers.as_ref()?.headers.as_ref()?;
    let header = map.headers.iter().find(|h| h.key == key)?;
    let raw = if header.raw_value.is_empty() { header.value.as_bytes() } else { &header.raw_value[..] };
    Some(String::from_utf8_lossy(raw).into_owned())
}

/// What the stub saw, across all streams.
#[derive(Default)]
struct Seen {
    request_header_names: Vec<String>,
    response_header_names: Vec<String>,
    /// Sizes of BUFFERED body messages.
    body_sizes: Vec<usize>,
    /// Sizes of FULL_DUPLEX request body pieces.
    request_pieces: Vec<usize>,
    /// (request body mode, response body mode) of each stream.
    modes: Vec<(i32, i32)>,
}

/// A stand-in ext_proc processor (not clamgate): lets every request through (a FULL_DUPLEX
/// request body is sent straight back piece by piece), adds `x-clamgate-verdict: stub-clean` to
/// responses, answers 409 for paths containing "infected", and records what Envoy sent it.
/// Serves grpc.health.v1 as SERVING for the ext_proc service.
#[derive(Clone, Default)]
struct StubProcessor {
    seen: Arc<Mutex<Seen>>,
}

struct RunningStub {
    addr: SocketAddr,
    stub: StubProcessor,
    task: tokio::task::JoinHandle<()>,
}

impl StubProcessor {
    async fn start() -> RunningStub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind stub");
        StubProcessor::serve(listener).await
    }

    /// Serves on an already-bound listener (connections made before are answered from then on).
    async fn serve(listener: tokio::net::TcpListener) -> RunningStub {
        let addr = listener.local_addr().expect("stub addr");
        let stub = StubProcessor::default();
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<ExternalProcessorServer<StubProcessor>>().await;
        let service =
            ExternalProcessorServer::new(stub.clone()).max_decoding_message_size(STUB_MAX_MESSAGE_BYTES);
        let task = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
            if let Err(err) = result {
                eprintln!("stub processor: {err}");
            }
        });
        RunningStub { addr, stub, task }
    }

    fn answer(&self, path: &mut String, request: ProcessingRequest) -> ProcessingResponse {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = &request.protocol_config {
            seen.modes.push((config.request_body_mode, config.response_body_mode));
        }
        let continue_ = || Some(CommonResponse::default());
        let response = match request.request {
            Some(ProcessingRequestKind::RequestHeaders(headers)) => {
                let headers = Some(headers);
                seen.request_header_names.extend(names_of(&headers));
                *path = header_value(&headers, ":path").unwrap_or_default();
                ProcessingResponseKind::RequestHeaders(HeadersResponse { response: continue_() })
            }
            Some(ProcessingRequestKind::RequestBody(body)) => {
                // FULL_DUPLEX (the shipped routes): each piece goes straight back.
                seen.request_pieces.push(body.body.len());
                let mutation = BodyMutation {
                    mutation: Some(Mutation::StreamedResponse(StreamedBodyResponse {
                        body: body.body,
                        end_of_stream: body.end_of_stream,
                        ..Default::default()
                    })),
                };
                ProcessingResponseKind::RequestBody(BodyResponse {
                    response: Some(CommonResponse { body_mutation: Some(mutation), ..Default::default() }),
                })
            }
            Some(ProcessingRequestKind::ResponseHeaders(headers)) => {
                let headers = Some(headers);
                seen.response_header_names.extend(names_of(&headers));
                if path.contains("infected") {
                    return immediate_409();
                }
                let mutation = HeaderMutation {
                    set_headers: vec![HeaderValueOption {
                        header: Some(HeaderValue {
                            key: "x-clamgate-verdict".to_string(),
                            raw_value: b"stub-clean".to_vec(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                ProcessingResponseKind::ResponseHeaders(HeadersResponse {
                    response: Some(CommonResponse { header_mutation: Some(mutation), ..Default::default() }),
                })
            }
            Some(ProcessingRequestKind::ResponseBody(body)) => {
                seen.body_sizes.push(body.body.len());
                ProcessingResponseKind::ResponseBody(BodyResponse { response: continue_() })
            }
            Some(ProcessingRequestKind::RequestTrailers(_)) => {
                ProcessingResponseKind::RequestTrailers(TrailersResponse::default())
            }
            Some(ProcessingRequestKind::ResponseTrailers(_)) | None => {
                // The shipped config skips response trailers; anything else is a test failure
                // Envoy will report as a spurious/unanswered message.
                return ProcessingResponse::default();
            }
        };
        ProcessingResponse { response: Some(response), ..Default::default() }
    }

    fn request_header_names(&self) -> Vec<String> {
        self.seen.lock().unwrap().request_header_names.clone()
    }
    fn response_header_names(&self) -> Vec<String> {
        self.seen.lock().unwrap().response_header_names.clone()
    }
    fn body_sizes(&self) -> Vec<usize> {
        self.seen.lock().unwrap().body_sizes.clone()
    }
    fn request_pieces(&self) -> Vec<usize> {
        self.seen.lock().unwrap().request_pieces.clone()
    }
    fn modes(&self) -> Vec<(i32, i32)> {
        self.seen.lock().unwrap().modes.clone()
    }
}

fn immediate_409() -> ProcessingResponse {
    let headers = HeaderMutation {
        set_headers: vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-clamgate-verdict".to_string(),
                raw_value: b"infected".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    ProcessingResponse {
        response: Some(ProcessingResponseKind::ImmediateResponse(ImmediateResponse {
            status: Some(HttpStatus { code: EnvoyStatusCode::Conflict as i32 }),
            headers: Some(headers),
            body: b"{\"verdict\":\"infected\"}".to_vec(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

impl std::ops::Deref for RunningStub {
    type Target = StubProcessor;
    fn deref(&self) -> &StubProcessor {
        &self.stub
    }
}

impl Drop for RunningStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for StubProcessor {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<ResponseStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stub = self.clone();
        tokio::spawn(async move {
            let mut path = String::new();
            // Envoy resets the stream after each request; an error here ends the stream.
            while let Ok(Some(message)) = inbound.message().await {
                let answer = stub.answer(&mut path, message);
                let immediate = matches!(answer.response, Some(ProcessingResponseKind::ImmediateResponse(_)));
                if tx.send(Ok(answer)).await.is_err() || immediate {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
