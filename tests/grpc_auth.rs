//! Only an authenticated caller drives ext_proc or the Scan API, the two services that write
//! verdicts: the shared token (`listen.grpc_token_file`), mTLS (`listen.grpc_tls_*`), the
//! shipped Envoy config sending both, and the warning for an open listener.
//!
//! A raw gRPC client stands in for an attacker posing as Envoy (real Envoy always sends the
//! token it is configured with); everything Envoy does is tested through real Envoy.

mod support;

use std::time::{Duration, Instant};

use clamgate::proto::clamgate::v1::scanner_client::ScannerClient;
use clamgate::proto::clamgate::v1::{ScanChunk, Verdict};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, ProcessingRequest, ProcessingResponse, ProtocolConfiguration,
};
use support::clamd::ClamdProcess;
use support::clamgate::{channel, test_config, ClamgateInstance, TEST_GRPC_TOKEN};
use support::clamgate_process::ClamgateProcess;
use support::envoy::{envoy_headers, render_config, EnvoyProcess};
use support::redis::RedisProcess;
use support::samples;
use support::stack::Stack;
use support::tls::{TestPki, SERVER_NAME};
use support::upstream::Upstream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How long clamgate may take to answer on a busy 2-core machine.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// An interceptor that sends `authorization` as given (None: not at all).
fn presenting(
    authorization: Option<String>,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone {
    move |mut request: tonic::Request<()>| {
        if let Some(value) = &authorization {
            request.metadata_mut().insert("authorization", value.parse().expect("ASCII"));
        }
        Ok(request)
    }
}

/// The messages of a clean FULL_DUPLEX upload, as Envoy sends them: a scan that, once allowed to
/// run, writes its Clean verdict into the cache.
fn clean_upload(body: &[u8]) -> Vec<ProcessingRequest> {
    let request_headers = ProcessingRequest {
        protocol_config: Some(ProtocolConfiguration {
            request_body_mode: BodySendMode::FullDuplexStreamed as i32,
            response_body_mode: BodySendMode::Buffered as i32,
            ..ProtocolConfiguration::default()
        }),
        request: Some(Request::RequestHeaders(envoy_headers(
            &[(":method", "POST"), (":path", "/upload/forged"), (":authority", "app.example")],
            false,
        ))),
        ..ProcessingRequest::default()
    };
    let body = HttpBody { body: body.to_vec(), end_of_stream: true, ..HttpBody::default() };
    let request_body =
        ProcessingRequest { request: Some(Request::RequestBody(body)), ..ProcessingRequest::default() };
    vec![request_headers, request_body]
}

/// Opens an ext_proc stream to `url` presenting `authorization`, sends `messages`, and returns
/// clamgate's first event: an answer, or the status that ended the RPC.
async fn ext_proc_first_event(
    url: String,
    authorization: Option<String>,
    messages: Vec<ProcessingRequest>,
) -> Result<ProcessingResponse, Status> {
    let mut client = ExternalProcessorClient::with_interceptor(channel(url).await, presenting(authorization));
    let (outbound, receiver) = mpsc::channel(16);
    for message in messages {
        outbound.send(message).await.expect("queue a message");
    }
    let call = async {
        let mut inbound = client.process(ReceiverStream::new(receiver)).await?.into_inner();
        match inbound.message().await? {
            Some(answer) => Ok(answer),
            None => Err(Status::ok("clamgate ended the stream OK without an answer")),
        }
    };
    let result = tokio::time::timeout(ANSWER_WITHIN, call).await.expect("clamgate answers in time");
    drop(outbound);
    result
}

/// Polls `condition` until it holds, or panics at the deadline with `what`.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + ANSWER_WITHIN;
    while !condition() {
        assert!(Instant::now() < deadline, "{what} did not happen within {ANSWER_WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn redis_keys(redis: &RedisProcess) -> usize {
    redis.cli(&["DBSIZE"]).trim().parse().expect("DBSIZE is a number")
}

/// A file holding `token`, for `listen.grpc_token_file`.
fn token_file(dir: &std::path::Path, token: &str) -> String {
    let path = dir.join("grpc-token");
    std::fs::write(&path, format!("{token}\n")).expect("write token file");
    path.to_string_lossy().into_owned()
}

// --- the shared token --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_ext_proc_stream_without_the_token_is_refused_and_writes_no_verdict() {
    let (clamd, redis) = tokio::task::spawn_blocking(|| (ClamdProcess::start(), RedisProcess::start()))
        .await
        .expect("start clamd and Redis");
    let (address, redis_url) = (clamd.address(), redis.url());
    // The real binary (its log is read below), with the harness's token and Redis.
    let clamgate = tokio::task::spawn_blocking(move || {
        ClamgateProcess::start(&address, &format!("[cache]\nredis_url = {redis_url:?}\n"))
    })
    .await
    .expect("start clamgate");
    let url = format!("http://{}", clamgate.grpc_addr());
    let body = samples::clean_sample(50_000);
    let forged_token = "forged-token-0123456789abcdef";

    for (authorization, reason) in [
        (None, "missing"),
        (Some(format!("Bearer {forged_token}")), "wrong"),
        (Some(TEST_GRPC_TOKEN.to_string()), "malformed"),
    ] {
        let status = ext_proc_first_event(url.clone(), authorization.clone(), clean_upload(&body))
            .await
            .expect_err("a stream without the token is refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{authorization:?}: {status:?}");
        let sample =
            format!("clamgate_grpc_unauthenticated_total{{service=\"ext_proc\",reason=\"{reason}\"}}");
        assert_eq!(clamgate.metric(&sample), 1.0, "{sample}");
    }
    // Nothing was read: no scan, no message counted, no verdict in Redis.
    assert_eq!(clamgate.metric("clamgate_clamd_scan_duration_seconds_count"), 0.0);
    assert_eq!(clamgate.metric("clamgate_ext_proc_messages_total{kind=\"request_headers\"}"), 0.0);
    assert_eq!(redis_keys(&redis), 0, "a refused stream wrote to the cache");
    // Logged, without the value presented.
    let log = clamgate.log();
    assert!(log.contains("refused a gRPC call without the shared token"), "{log}");
    assert!(!log.contains(forged_token) && !log.contains(TEST_GRPC_TOKEN), "{log}");

    // The same stream with the token is scanned and its verdict cached (so the checks above
    // would have seen a write).
    let answer = ext_proc_first_event(url, Some(format!("Bearer {TEST_GRPC_TOKEN}")), clean_upload(&body))
        .await
        .expect("the stream with the token is answered");
    assert!(answer.response.is_some(), "{answer:?}");
    eventually("a cache write", || redis_keys(&redis) > 0).await;
    drop(clamd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scan_api_without_the_token_is_unauthenticated() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let instance = ClamgateInstance::start_ready(test_config(&clamd.address())).await;
    let scan = |authorization: Option<String>| {
        let url = instance.grpc_url();
        async move {
            let mut client = ScannerClient::with_interceptor(channel(url).await, presenting(authorization));
            let chunks = vec![ScanChunk { data: samples::clean_sample(10_000) }];
            client.scan(tokio_stream::iter(chunks)).await.map(|response| response.into_inner())
        }
    };
    let refused = scan(None).await.expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let refused = scan(Some("Bearer not-the-token-0123456789".to_string())).await.expect_err("wrong token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(instance.metric("clamgate_clamd_scan_duration_seconds_count").await, 0.0);
    let sample = "clamgate_grpc_unauthenticated_total{service=\"scan_api\",reason=\"missing\"}";
    assert_eq!(instance.metric(sample).await, 1.0);

    let result = scan(Some(format!("Bearer {TEST_GRPC_TOKEN}"))).await.expect("with the token");
    assert_eq!(result.verdict(), Verdict::Clean);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_stays_open_with_a_token() {
    // Decision: health writes nothing and tells only SERVING / NOT_SERVING; probes that cannot
    // send metadata (the kubelet's gRPC probe) must reach it.
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let instance = ClamgateInstance::start_ready(test_config(&clamd.address())).await;
    let mut client = HealthClient::new(channel(instance.grpc_url()).await);
    let request = HealthCheckRequest { service: "envoy.service.ext_proc.v3.ExternalProcessor".to_string() };
    let status = client.check(request).await.expect("Health/Check without a token").into_inner().status();
    assert_eq!(status, ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_with_another_token_fails_closed() {
    // clamgate asks for a token that is not the one the rendered envoy.yaml sends.
    let dir = tempfile::tempdir().expect("tempdir");
    let other = token_file(dir.path(), "a-different-token-fedcba9876543210");
    let stack = Stack::start_with(|config| config.listen.grpc_token_file = Some(other)).await;
    stack.upstream.put_file("clean.txt", samples::clean_sample(1000));
    let response = stack.get("/files/clean.txt").await;
    assert_eq!(response.status(), 503, "Envoy's status_on_error, never the unscanned body");
    assert_eq!(stack.upstream.hits("/files/clean.txt"), 0, "the upstream was called");
    let sample = "clamgate_grpc_unauthenticated_total{service=\"ext_proc\",reason=\"wrong\"}";
    assert!(stack.clamgate.metric(sample).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_with_the_token_is_served() {
    // The default harness: clamgate asks for the token, the shipped envoy.yaml sends it.
    let stack = Stack::start().await;
    stack.upstream.put_file("clean.txt", samples::clean_sample(1000));
    stack.upstream.put_file("eicar.com", samples::eicar());
    let response = stack.get("/files/clean.txt").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-clamgate-verdict"], "clean");
    assert_eq!(stack.get("/files/eicar.com").await.status(), 409);
    let refused = stack.clamgate.metrics().await;
    assert!(!refused.contains("clamgate_grpc_unauthenticated_total{"), "{refused}");
}

// --- mTLS --------------------------------------------------------------------------------------

/// Config for TLS on the gRPC listener with client certificates required.
fn mtls_config(clamd: &ClamdProcess, pki: &TestPki) -> clamgate::config::Config {
    let mut config = test_config(&clamd.address());
    config.listen.grpc_tls_cert_file = Some(pki.file("server.pem"));
    config.listen.grpc_tls_key_file = Some(pki.file("server.key"));
    config.listen.grpc_tls_client_ca_file = Some(pki.file("ca.pem"));
    config
}

/// A Scan (with the token) over TLS, presenting the client certificate `client` if any.
async fn scan_over_tls(
    instance: &ClamgateInstance,
    pki: &TestPki,
    client: Option<&str>,
) -> Result<Verdict, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.read("ca.pem")))
        .domain_name(SERVER_NAME);
    if let Some(name) = client {
        tls = tls
            .identity(Identity::from_pem(pki.read(&format!("{name}.pem")), pki.read(&format!("{name}.key"))));
    }
    let endpoint = Endpoint::from_shared(format!("https://{}", instance.grpc_addr))
        .map_err(|err| err.to_string())?
        .tls_config(tls)
        .map_err(|err| err.to_string())?;
    // TLS 1.3 clients learn that their certificate was refused only at their first read.
    let channel = endpoint.connect().await.map_err(|err| format!("connect: {err:?}"))?;
    let mut scanner = ScannerClient::with_interceptor(channel, support::clamgate::with_test_token);
    let chunks = vec![ScanChunk { data: samples::clean_sample(10_000) }];
    let result =
        scanner.scan(tokio_stream::iter(chunks)).await.map_err(|status| format!("scan: {status:?}"))?;
    Ok(result.into_inner().verdict())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_clients_without_a_certificate_from_the_ca() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let pki = TestPki::generate();
    let instance = ClamgateInstance::start_ready(mtls_config(&clamd, &pki)).await;

    assert_eq!(scan_over_tls(&instance, &pki, Some("client")).await, Ok(Verdict::Clean));
    let without = scan_over_tls(&instance, &pki, None).await;
    assert!(without.is_err(), "a client without a certificate was served: {without:?}");
    let stranger = scan_over_tls(&instance, &pki, Some("stranger")).await;
    assert!(stranger.is_err(), "a client with another CA's certificate was served: {stranger:?}");
    // Plaintext gets nowhere either.
    let mut plain = ScannerClient::with_interceptor(
        channel_lazy(instance.grpc_url()),
        support::clamgate::with_test_token,
    );
    let chunks = vec![ScanChunk { data: b"plain".to_vec() }];
    assert!(plain.scan(tokio_stream::iter(chunks)).await.is_err(), "plaintext was served");
    assert_eq!(instance.metric("clamgate_clamd_scan_duration_seconds_count").await, 1.0);
}

fn channel_lazy(url: String) -> tonic::transport::Channel {
    Endpoint::from_shared(url).expect("URL").connect_lazy()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_envoy_mtls_block_reaches_clamgate_with_its_client_certificate() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let pki = TestPki::generate();
    let clamgate = ClamgateInstance::start_ready(mtls_config(&clamd, &pki)).await;
    let upstream = Upstream::start().await;
    upstream.put_file("clean.txt", samples::clean_sample(1000));
    upstream.put_file("eicar.com", samples::eicar());
    let config = with_mtls_block(render_config(clamgate.grpc_addr, upstream.addr()), &pki);
    let envoy = tokio::task::spawn_blocking(move || {
        let envoy = EnvoyProcess::start_with_config(config);
        envoy.wait_clamgate_healthy(Duration::from_secs(20));
        envoy
    })
    .await
    .expect("start envoy");
    let http = reqwest::Client::builder().no_proxy().build().expect("HTTP client");
    let clean = http.get(envoy.url("/files/clean.txt")).send().await.expect("GET clean");
    assert_eq!(clean.status(), 200, "{}", envoy.logs());
    assert_eq!(clean.headers()["x-clamgate-verdict"], "clean");
    let infected = http.get(envoy.url("/files/eicar.com")).send().await.expect("GET eicar");
    assert_eq!(infected.status(), 409);
}

/// The shipped envoy.yaml with its commented mTLS block turned on, pointing at the test PKI and
/// expecting the test server name.
fn with_mtls_block(config: String, pki: &TestPki) -> String {
    let mut inside = false;
    let mut seen = false;
    let lines: Vec<String> = config
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("# --- mTLS to clamgate") {
                inside = true;
                seen = true;
                return line.to_string();
            }
            if line.trim_start().starts_with("# --- end of mTLS to clamgate") {
                inside = false;
            }
            if !inside {
                return line.to_string();
            }
            line.replacen("# ", "", 1)
                .replace("/etc/envoy/clamgate-client.pem", &pki.file("client.pem"))
                .replace("/etc/envoy/clamgate-client.key", &pki.file("client.key"))
                .replace("/etc/envoy/clamgate-ca.pem", &pki.file("ca.pem"))
                .replace("clamgate.internal", SERVER_NAME)
        })
        .collect();
    assert!(seen, "the shipped envoy.yaml has no mTLS block");
    lines.join("\n")
}

// --- the warning for an open listener ----------------------------------------------------------

fn check_config(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("clamgate.toml");
    std::fs::write(&path, config.replace("TOKEN_FILE", &token_file(dir.path(), TEST_GRPC_TOKEN)))
        .expect("write config");
    let output = std::process::Command::new(support::clamgate_process::BINARY)
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("CLAMGATE_CONFIG")
        .output()
        .expect("run clamgate check-config");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn check_config_warns_about_an_open_listener_without_authentication() {
    let (ok, stderr) = check_config("[listen]\ngrpc_addr = \"0.0.0.0:50051\"\n");
    assert!(ok, "{stderr}");
    assert!(stderr.contains("listen.grpc_addr: 0.0.0.0:50051 is not a loopback address"), "{stderr}");
    assert!(stderr.contains("no authentication"), "{stderr}");

    let (ok, stderr) =
        check_config("[listen]\ngrpc_addr = \"0.0.0.0:50051\"\ngrpc_token_file = \"TOKEN_FILE\"\n");
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("no authentication"), "{stderr}");

    let (ok, stderr) = check_config("[listen]\ngrpc_addr = \"127.0.0.1:50051\"\n");
    assert!(ok && !stderr.contains("listen.grpc_addr"), "{stderr}");
}
