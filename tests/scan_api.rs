//! The clamgate.v1 Scan API against a real clamd: clean, EICAR, oversize, a client that breaks
//! off mid-stream, and one that stalls (it must not hold a clamd slot, and gets a deadline).

mod support;

use clamgate::proto::clamgate::v1::scanner_client::ScannerClient;
use clamgate::proto::clamgate::v1::{ScanChunk, ScanResult, Verdict};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::clamd::ClamdProcess;
use support::clamgate::{test_config, ClamgateInstance};
use support::samples;

async fn scan(instance: &ClamgateInstance, body: &[u8], chunk_bytes: usize) -> ScanResult {
    let mut client = ScannerClient::connect(instance.grpc_url())
        .await
        .expect("connect")
        .max_encoding_message_size(64 * 1024 * 1024);
    let chunks: Vec<ScanChunk> =
        body.chunks(chunk_bytes.max(1)).map(|c| ScanChunk { data: c.to_vec() }).collect();
    client.scan(tokio_stream::iter(chunks)).await.expect("Scan").into_inner()
}

async fn start() -> (ClamdProcess, ClamgateInstance) {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let instance = ClamgateInstance::start_ready(test_config(&clamd.address())).await;
    (clamd, instance)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_body_is_clean_with_hash_and_versions() {
    let (_clamd, instance) = start().await;
    let body = samples::clean_sample(300_000);
    let result = scan(&instance, &body, 64 * 1024).await;
    assert_eq!(result.verdict(), Verdict::Clean);
    assert_eq!(result.sha256, hex::encode(Sha256::digest(&body)));
    assert_eq!(result.engine_version, "1.4.6");
    assert!(!result.cached);
    // The body is held whole before it is scanned, so the same bytes are a cache hit.
    let again = scan(&instance, &body, 64 * 1024).await;
    assert_eq!(again.verdict(), Verdict::Clean);
    assert_eq!(again.sha256, result.sha256);
    assert!(again.cached);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eicar_is_infected_even_split_into_tiny_chunks() {
    let (_clamd, instance) = start().await;
    let mut body = samples::clean_sample(100_000);
    body.extend_from_slice(&samples::eicar());
    let result = scan(&instance, &body, 7).await;
    assert_eq!(result.verdict(), Verdict::Infected);
    assert!(result.signature.starts_with("Test.Eicar.Body"), "{}", result.signature);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_scan_bytes_is_unscanned_too_large() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let mut config = test_config(&clamd.address());
    config.scan.max_scan_bytes = 1024 * 1024;
    let instance = ClamgateInstance::start_ready(config).await;
    let mut body = samples::clean_sample(1024 * 1024);
    body.extend_from_slice(&samples::eicar());
    let result = scan(&instance, &body, 256 * 1024).await;
    assert_eq!(result.verdict(), Verdict::Unscanned);
    assert_eq!(result.unscanned_reason, "too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamds_own_stream_limit_is_unscanned_too_large_not_engine_down() {
    // clamgate's limit set above clamd's StreamMaxLength (25 MiB): clamd cuts the stream and
    // clamgate must read its "size limit exceeded" reply after the broken pipe.
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let mut config = test_config(&clamd.address());
    config.scan.max_scan_bytes = 64 * 1024 * 1024;
    config.ext_proc.max_message_bytes = 64 * 1024 * 1024;
    let instance = ClamgateInstance::start_ready(config).await;
    let body = samples::clean_sample(26 * 1024 * 1024 + 1);
    let result = scan(&instance, &body, 1024 * 1024).await;
    assert_eq!(result.verdict(), Verdict::Unscanned);
    assert_eq!(result.unscanned_reason, "too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamd_down_is_unscanned_never_clean() {
    let (mut clamd, instance) = start().await;
    clamd.stop();
    let result = scan(&instance, &samples::clean_sample(1000), 1000).await;
    assert_eq!(result.verdict(), Verdict::Unscanned);
    assert_eq!(result.unscanned_reason, "engine_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_holds_no_clamd_slot_and_gets_unscanned_timeout() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let mut config = test_config(&clamd.address());
    // One clamd slot, waited for at most 5 s; bodies must arrive within 1.5 s (+ 0 per MiB).
    config.clamd.max_concurrent_scans = 1;
    config.clamd.reply_timeout_ms = 5_000;
    config.scan.timeout_ms = 1_500;
    config.scan.timeout_per_mib_ms = 0;
    let instance = ClamgateInstance::start_ready(config).await;

    // One chunk, then silence: the stream stays open while `_more` lives.
    let (_more, chunks) = tokio::sync::mpsc::channel::<ScanChunk>(1);
    _more.send(ScanChunk { data: samples::clean_sample(10_000) }).await.expect("queue the chunk");
    let mut client = ScannerClient::connect(instance.grpc_url()).await.expect("connect");
    let stalled =
        tokio::spawn(async move { client.scan(tokio_stream::wrappers::ReceiverStream::new(chunks)).await });
    // Held by clamgate (the shared memory budget counts it) before the next scan starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while instance.metric("clamgate_held_body_memory_bytes").await < 10_000.0 {
        assert!(Instant::now() < deadline, "clamgate did not take the stalled client's chunk");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The only clamd slot is free for another client meanwhile.
    let other = scan(&instance, &samples::eicar(), 1024).await;
    assert_eq!(other.verdict(), Verdict::Infected);

    // Past its deadline the stalled scan is answered, without waiting for the client.
    let result = tokio::time::timeout(Duration::from_secs(30), stalled)
        .await
        .expect("the stalled scan was never answered")
        .expect("task")
        .expect("Scan")
        .into_inner();
    assert_eq!(result.verdict(), Verdict::Unscanned);
    assert_eq!(result.unscanned_reason, "timeout");
    assert_eq!(result.sha256, hex::encode(Sha256::digest(samples::clean_sample(10_000))));
    assert_eq!(instance.metric(r#"clamgate_unscanned_total{reason="timeout"}"#).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_past_its_deadline_is_unscanned_timeout() {
    // clamd needs seconds for this body; the whole-scan deadline is 300 ms.
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start_for_large_bodies).await.expect("clamd");
    let mut config = test_config(&clamd.address());
    config.scan.timeout_ms = 300;
    config.scan.timeout_per_mib_ms = 0;
    let instance = ClamgateInstance::start_ready(config).await;
    let result = scan(&instance, &samples::slow_scan_gzip(150, 3), 256 * 1024).await;
    assert_eq!(result.verdict(), Verdict::Unscanned);
    assert_eq!(result.unscanned_reason, "timeout");
}
