//! `POST /v1/scan`, the HTTP scan API, against a real clamd: clean, EICAR streamed in tiny
//! pieces, a hash signature, over the size limit, clamd down, a stalled client, a client that
//! breaks off, and who may call it (the bearer token, its fallback, every wrong way to send it).

mod support;

use std::time::{Duration, Instant};

use clamgate::config::Config;
use sha2::{Digest, Sha256};
use support::clamd::ClamdProcess;
use support::clamgate::{test_config, ClamgateInstance};
use support::samples;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SCAN_TOKEN: &str = "scan-api-test-token-5d0c8a1e3f7b9264";

/// A file under cargo's per-target temp dir holding `token`.
fn token_file(name: &str, token: &str) -> String {
    let path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.{}", std::process::id()));
    std::fs::write(&path, format!("{token}\n")).expect("write a token file");
    path.to_string_lossy().into_owned()
}

/// The test config with the HTTP listener on, `/v1/scan` asking for [`SCAN_TOKEN`].
fn config_with_scan_token(clamd: &ClamdProcess) -> Config {
    let mut config = test_config(&clamd.address());
    config.listen.http_addr = Some("127.0.0.1:0".parse().expect("address"));
    config.listen.http_scan_token_file = Some(token_file("clamgate-scan-token", SCAN_TOKEN));
    config
}

async fn start_with(config: impl FnOnce(&ClamdProcess) -> Config) -> (ClamdProcess, ClamgateInstance) {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let instance = ClamgateInstance::start_ready(config(&clamd)).await;
    (clamd, instance)
}

fn scan_url(instance: &ClamgateInstance) -> String {
    format!("http://{}/v1/scan", instance.http_addr.expect("the HTTP listener"))
}

/// `POST /v1/scan` with `body` sent in `piece_bytes` pieces (chunked: no content-length), and
/// `authorization` if given: the status and the JSON answer.
async fn post(
    instance: &ClamgateInstance,
    body: &[u8],
    piece_bytes: usize,
    authorization: Option<&str>,
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(piece_bytes.max(1)).map(|piece| Ok(piece.to_vec())).collect();
    let mut request = support::http::client()
        .post(scan_url(instance))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.expect("POST /v1/scan");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("the answer");
    let json = serde_json::from_str(&text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"));
    (status, json, headers)
}

/// A `POST /v1/scan` announcing a 100,000-byte body, of which only `sent` is written: the
/// connection, left open.
async fn start_upload(instance: &ClamgateInstance, sent: &[u8]) -> tokio::net::TcpStream {
    let addr = instance.http_addr.expect("the HTTP listener");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/scan HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {SCAN_TOKEN}\r\ncontent-length: 100000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write the head");
    stream.write_all(sent).await.expect("write a part of the body");
    stream
}

async fn scan(instance: &ClamgateInstance, body: &[u8], piece_bytes: usize) -> serde_json::Value {
    let (status, json, _) = post(instance, body, piece_bytes, Some(&format!("Bearer {SCAN_TOKEN}"))).await;
    assert_eq!(status, 200, "{json}");
    json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_body_is_clean_with_hash_and_versions_and_then_cached() {
    let (_clamd, instance) = start_with(config_with_scan_token).await;
    let body = samples::clean_sample(300_000);
    let result = scan(&instance, &body, 64 * 1024).await;
    assert_eq!(result["verdict"], "clean");
    assert_eq!(result["sha256"], hex::encode(Sha256::digest(&body)));
    assert_eq!(result["engine_version"], "1.4.6");
    assert_eq!(result["signature"], "");
    assert_eq!(result["unscanned_reason"], "");
    assert_eq!(result["cached"], false);
    let again = scan(&instance, &body, 64 * 1024).await;
    assert_eq!(again["verdict"], "clean");
    assert_eq!(again["cached"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eicar_streamed_in_tiny_pieces_is_infected() {
    let (_clamd, instance) = start_with(config_with_scan_token).await;
    let mut body = samples::clean_sample(100_000);
    body.extend_from_slice(&samples::eicar());
    let result = scan(&instance, &body, 7).await;
    assert_eq!(result["verdict"], "infected");
    let signature = result["signature"].as_str().expect("a signature");
    assert!(signature.starts_with("Test.Eicar.Body"), "{signature}");
    assert_eq!(instance.metric(r#"clamgate_verdicts_total{source="api",verdict="infected"}"#).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_known_by_its_hash_is_infected_when_sent_raw() {
    let (_clamd, instance) = start_with(config_with_scan_token).await;
    let result = scan(&instance, &samples::hash_only_sample(), 500).await;
    assert_eq!(result["verdict"], "infected");
    assert!(result["signature"].as_str().unwrap_or_default().starts_with("Test.HashOnly"), "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_scan_bytes_is_unscanned_too_large_never_clean() {
    let (_clamd, instance) = start_with(|clamd| {
        let mut config = config_with_scan_token(clamd);
        config.scan.max_scan_bytes = 1024 * 1024;
        config
    })
    .await;
    let mut body = samples::clean_sample(1024 * 1024);
    body.extend_from_slice(&samples::eicar());
    let result = scan(&instance, &body, 256 * 1024).await;
    assert_eq!(result["verdict"], "unscanned");
    assert_eq!(result["unscanned_reason"], "too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamd_down_is_unscanned_never_clean() {
    let (mut clamd, instance) = start_with(config_with_scan_token).await;
    clamd.stop();
    let result = scan(&instance, &samples::clean_sample(1000), 1000).await;
    assert_eq!(result["verdict"], "unscanned");
    assert_eq!(result["unscanned_reason"], "engine_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_bearer_token_is_accepted() {
    let (_clamd, instance) = start_with(config_with_scan_token).await;
    let eicar = samples::eicar();
    let refused = r#"clamgate_http_refused_total{reason="unauthenticated"}"#;
    let wrong_ways: [Option<String>; 5] = [
        None,
        Some("Bearer not-the-token".to_string()),
        Some(format!("Basic {SCAN_TOKEN}")),
        Some(SCAN_TOKEN.to_string()),
        Some("Bearer".to_string()),
    ];
    for (i, authorization) in wrong_ways.iter().enumerate() {
        let (status, json, headers) = post(&instance, &eicar, 1024, authorization.as_deref()).await;
        assert_eq!(status, 401, "{authorization:?}: {json}");
        assert_eq!(headers["www-authenticate"], "Bearer realm=\"clamgate\"");
        assert_eq!(instance.metric(refused).await, (i + 1) as f64);
    }
    // The token in nginx's header is not a bearer token.
    let response = support::http::client()
        .post(scan_url(&instance))
        .header("x-clamgate-token", SCAN_TOKEN)
        .body(eicar.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 401);
    // Twice, even with the right value once: refused.
    let response = support::http::client()
        .post(scan_url(&instance))
        .header("authorization", format!("Bearer {SCAN_TOKEN}"))
        .header("authorization", "Bearer other")
        .body(eicar.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 401);
    // Nothing was scanned for any of them.
    assert_eq!(instance.metric("clamgate_clamd_scan_duration_seconds_count").await, 0.0);
    // The scheme in any case.
    let (status, json, _) = post(&instance, &eicar, 1024, Some(&format!("bearer {SCAN_TOKEN}"))).await;
    assert_eq!(status, 200);
    assert_eq!(json["verdict"], "infected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_scan_token_the_listeners_token_is_the_bearer_token() {
    const LISTENER_TOKEN: &str = "listener-test-token-a1b2c3d4e5f60718";
    let (_clamd, instance) = start_with(|clamd| {
        let mut config = test_config(&clamd.address());
        config.listen.http_addr = Some("127.0.0.1:0".parse().expect("address"));
        config.listen.http_token_file = Some(token_file("clamgate-listener-token", LISTENER_TOKEN));
        config
    })
    .await;
    let body = samples::eicar();
    let (status, _, _) = post(&instance, &body, 1024, None).await;
    assert_eq!(status, 401);
    let (status, json, _) = post(&instance, &body, 1024, Some(&format!("Bearer {LISTENER_TOKEN}"))).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["verdict"], "infected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_gets_unscanned_timeout_and_holds_no_clamd_slot() {
    let (_clamd, instance) = start_with(|clamd| {
        let mut config = config_with_scan_token(clamd);
        config.clamd.max_concurrent_scans = 1;
        config.scan.timeout_ms = 1_500;
        config.scan.timeout_per_mib_ms = 0;
        config
    })
    .await;
    // A body announced as 100,000 bytes, 10,000 sent, then silence.
    let mut stalled = start_upload(&instance, &samples::clean_sample(10_000)).await;
    let started = Instant::now();
    // The only clamd slot is free for another caller meanwhile.
    let other = scan(&instance, &samples::eicar(), 1024).await;
    assert_eq!(other["verdict"], "infected");
    // Past its deadline the stalled request is answered, without the rest of its body.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buffer = [0u8; 4096];
        loop {
            let n = stalled.read(&mut buffer).await.expect("read the answer");
            answer.extend_from_slice(&buffer[..n]);
            if n == 0 || answer.windows(2).any(|w| w == b"}\n") || answer.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the stalled request was never answered");
    assert!(started.elapsed() >= Duration::from_millis(1_000), "answered before its deadline");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(r#""verdict":"unscanned""#), "{text}");
    assert!(text.contains(r#""unscanned_reason":"timeout""#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_breaks_off_leaves_nothing_held_and_no_verdict() {
    let (_clamd, instance) = start_with(config_with_scan_token).await;
    let client = start_upload(&instance, &samples::clean_sample(50_000)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while instance.metric("clamgate_held_body_memory_bytes").await < 50_000.0 {
        assert!(Instant::now() < deadline, "clamgate did not take the body's first half");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while instance.metric("clamgate_held_body_memory_bytes").await > 0.0 {
        assert!(Instant::now() < deadline, "the broken-off body is still held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(instance.metric("clamgate_clamd_scan_duration_seconds_count").await, 0.0);
    assert_eq!(instance.metric(r#"clamgate_verdicts_total{source="api",verdict="clean"}"#).await, 0.0);
}

/// `POST /v1/scan` with `body` and `content_type`: the JSON answer (status 200 asserted).
async fn scan_typed(instance: &ClamgateInstance, content_type: &str, body: Vec<u8>) -> serde_json::Value {
    let response = support::http::client()
        .post(scan_url(instance))
        .header("authorization", format!("Bearer {SCAN_TOKEN}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST /v1/scan");
    assert_eq!(response.status().as_u16(), 200);
    serde_json::from_str(&response.text().await.expect("the answer")).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_body_gets_one_verdict_per_file() {
    let (_clamd, instance) = start_with(config_with_scan_token).await;
    let mut body = Vec::new();
    body.extend_from_slice(b"--sep\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n");
    body.extend_from_slice(
        b"--sep\r\nContent-Disposition: form-data; name=\"f\"; filename=\"known.exe\"\r\n\r\n",
    );
    body.extend_from_slice(&samples::hash_only_sample());
    body.extend_from_slice(b"\r\n--sep--\r\n");
    let result = scan_typed(&instance, "multipart/form-data; boundary=sep", body).await;
    // Whole, the form matches no signature: only the part shows the file known by its hash.
    assert_eq!(result["verdict"], "infected", "{result}");
    let parts = result["parts"].as_array().expect("parts");
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["field"], "note");
    assert_eq!(parts[0]["verdict"], "clean");
    assert_eq!(parts[1]["filename"], "known.exe");
    assert_eq!(parts[1]["verdict"], "infected");
    assert!(parts[1]["signature"].as_str().unwrap_or_default().starts_with("Test.HashOnly"), "{result}");
    assert_eq!(parts[1]["sha256"], hex::encode(Sha256::digest(samples::hash_only_sample())));
    assert_eq!(result["sha256"], parts[1]["sha256"]);

    let cut = scan_typed(
        &instance,
        "multipart/form-data; boundary=sep",
        b"--sep\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nabc".to_vec(),
    )
    .await;
    assert_eq!(cut["verdict"], "unscanned");
    assert_eq!(cut["unscanned_reason"], "malformed_multipart");
    assert_eq!(cut["parts"].as_array().map(Vec::len), Some(0));
    let no_boundary = scan_typed(&instance, "multipart/form-data", b"--sep--\r\n".to_vec()).await;
    assert_eq!(no_boundary["unscanned_reason"], "malformed_multipart");
}
