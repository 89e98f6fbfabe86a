//! The clamgate.v1 Scan API against a real clamd: clean, EICAR, oversize, and a client that
//! breaks off mid-stream.

mod support;

use clamgate::proto::clamgate::v1::scanner_client::ScannerClient;
use clamgate::proto::clamgate::v1::{ScanChunk, ScanResult, Verdict};
use sha2::{Digest, Sha256};
use support::clamd::ClamdProcess;
use support::clamgate::{test_config, ClamgateInstance};
use support::samples;

async fn scan(instance: &ClamgateInstance, body: &[u8], chunk_bytes: usize) -> ScanResult {
    let channel = support::clamgate::channel(instance.grpc_url()).await;
    let mut client = ScannerClient::with_interceptor(channel, support::clamgate::with_test_token)
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
    // A streamed body's hash is known only at its end, so the same bytes are scanned again.
    let again = scan(&instance, &body, 64 * 1024).await;
    assert_eq!(again.verdict(), Verdict::Clean);
    assert_eq!(again.sha256, result.sha256);
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
