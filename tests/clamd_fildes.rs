//! A clamd on this host scans held bodies by descriptor (FILDES over the unix socket): real clamd,
//! both ways a body is held (memory, a temp file), against INSTREAM, and failing closed both ways.

mod support;

use std::sync::Arc;
use std::time::Duration;

use clamgate::clamd::{ClamdAddress, ClamdClient, ClamdTimeouts, ScanReply};
use clamgate::config::{CacheMode, Config, ScanMethod};
use clamgate::metrics::{Metrics, Source};
use clamgate::scanner::Scanner;
use clamgate::spool::Spool;
use clamgate::verdict::{UnscannedReason, Verdict};
use support::clamd::ClamdProcess;
use support::clamgate::{metric_value, test_config};
use support::samples;

fn timeouts() -> ClamdTimeouts {
    ClamdTimeouts {
        connect: Duration::from_secs(2),
        write: Duration::from_secs(5),
        reply: Duration::from_secs(20),
    }
}

fn build(config: &Config) -> (Scanner, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    (clamgate::app::build_scanner(config, metrics.clone()).expect("scanner"), metrics)
}

/// `body` held in a spool that keeps at most `memory_bytes` of it in memory, then scanned.
async fn scan(scanner: &Scanner, body: &[u8], memory_bytes: u64) -> Verdict {
    let spool = Spool::new(1 << 30, memory_bytes, std::env::temp_dir(), Arc::new(Metrics::new()));
    let mut held = spool.hold();
    // Several pieces, some small, so that a body on disk still has bytes waiting in memory.
    for piece in body.chunks(3000) {
        held.push(bytes::Bytes::copy_from_slice(piece)).await.expect("hold");
    }
    assert_eq!(held.on_disk(), body.len() as u64 > memory_bytes, "where the body is held");
    scanner.scan_held(&held, &[], Source::Api, CacheMode::Off, None).await.verdict
}

fn fildes_scans(metrics: &Metrics) -> f64 {
    metric_value(&metrics.encode(), "clamgate_clamd_scans_started_total{method=\"fildes\"}")
}

fn instream_scans(metrics: &Metrics) -> f64 {
    metric_value(&metrics.encode(), "clamgate_clamd_scans_started_total{method=\"instream\"}")
}

#[tokio::test]
async fn the_client_scans_a_file_by_descriptor_over_the_unix_socket_only() {
    let clamd = ClamdProcess::start_with_unix_socket();
    let unix: ClamdAddress = clamd.unix_address().unwrap().parse().unwrap();
    let client = ClamdClient::new(unix, timeouts());
    assert!(client.can_scan_files());
    let file = |bytes: &[u8]| {
        let file = tempfile::tempfile().unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, bytes, 0).unwrap();
        file
    };
    let reply = |file: std::fs::File| {
        let client = client.clone();
        async move { client.start_file_scan(&file).await.expect("FILDES").read(Duration::from_secs(20)).await }
    };
    assert!(
        matches!(reply(file(&samples::eicar())).await, Ok(ScanReply::Found { signature }) if signature.starts_with("Test.Eicar.Body"))
    );
    assert_eq!(reply(file(&samples::clean_sample(100_000))).await.unwrap(), ScanReply::Clean);
    // The hash signature matches the whole file, as with INSTREAM.
    assert!(matches!(reply(file(&samples::hash_only_sample())).await, Ok(ScanReply::Found { .. })));

    let tcp = ClamdClient::new(clamd.address().parse().unwrap(), timeouts());
    assert!(!tcp.can_scan_files());
    assert!(tcp.start_file_scan(&file(b"x")).await.is_err(), "FILDES over TCP is refused");
}

#[tokio::test]
async fn auto_scans_held_bodies_by_descriptor_in_memory_and_on_disk() {
    let clamd = ClamdProcess::start_with_unix_socket();
    let mut config = test_config(&clamd.unix_address().unwrap());
    assert_eq!(config.clamd.scan_method, ScanMethod::Auto, "the default");
    config.clamd.health_interval_ms = 60_000;
    let (scanner, metrics) = build(&config);
    let eicar_late = [samples::clean_sample(200_000), samples::eicar()].concat();
    for memory_bytes in [1 << 30, 10_000] {
        assert!(matches!(scan(&scanner, &samples::eicar(), memory_bytes).await, Verdict::Infected { .. }));
        assert!(matches!(scan(&scanner, &eicar_late, memory_bytes).await, Verdict::Infected { .. }));
        assert_eq!(scan(&scanner, &samples::clean_sample(300_000), memory_bytes).await, Verdict::Clean);
        assert!(matches!(
            scan(&scanner, &samples::hash_only_sample(), memory_bytes).await,
            Verdict::Infected { .. }
        ));
    }
    assert_eq!(fildes_scans(&metrics), 8.0);
    assert_eq!(instream_scans(&metrics), 0.0);
}

#[tokio::test]
async fn instream_is_used_when_configured_or_over_tcp() {
    let clamd = ClamdProcess::start_with_unix_socket();
    let mut config = test_config(&clamd.unix_address().unwrap());
    config.clamd.scan_method = ScanMethod::Instream;
    let (scanner, metrics) = build(&config);
    assert!(matches!(scan(&scanner, &samples::eicar(), 10_000).await, Verdict::Infected { .. }));
    assert_eq!((fildes_scans(&metrics), instream_scans(&metrics)), (0.0, 1.0));

    let (scanner, metrics) = build(&test_config(&clamd.address()));
    assert!(matches!(scan(&scanner, &samples::eicar(), 1 << 30).await, Verdict::Infected { .. }));
    assert_eq!((fildes_scans(&metrics), instream_scans(&metrics)), (0.0, 1.0));
}

#[tokio::test]
async fn no_clamd_is_unscanned_both_ways() {
    let mut clamd = ClamdProcess::start_with_unix_socket();
    let unix = clamd.unix_address().unwrap();
    clamd.stop();
    for method in [ScanMethod::Auto, ScanMethod::Instream] {
        let mut config = test_config(&unix);
        config.clamd.scan_method = method;
        let (scanner, _) = build(&config);
        for memory_bytes in [1 << 30, 1_000] {
            assert_eq!(
                scan(&scanner, &samples::clean_sample(5_000), memory_bytes).await,
                Verdict::Unscanned { reason: UnscannedReason::EngineUnavailable },
                "{method:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_and_uploads_through_envoy_are_scanned_by_descriptor() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start_with_unix_socket).await.unwrap();
    let unix = clamd.unix_address().unwrap();
    let stack = support::stack::Stack::start_with_clamd(clamd, |config| {
        config.clamd.address = unix.parse().unwrap();
        // Small bodies in memory, larger ones in temp files: both go by descriptor.
        config.bodies.stream_memory_bytes = 64 * 1024;
    })
    .await;
    let clean = samples::clean_sample(1024 * 1024);
    stack.upstream.put_file("clean.bin", clean.clone());
    stack.upstream.put_file("eicar.com", samples::eicar());
    let big_eicar = [samples::clean_sample(500_000), samples::eicar()].concat();
    stack.upstream.put_file("late.bin", big_eicar.clone());
    let response = stack.get("/files/clean.bin").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), clean.as_slice());
    assert_eq!(stack.get("/files/eicar.com").await.status(), 409);
    assert_eq!(stack.get("/files/late.bin").await.status(), 409);
    assert_eq!(stack.post("/upload/late.bin", big_eicar).await.status(), 409);
    assert_eq!(stack.upstream.received("late.bin"), None);
    let metrics = stack.clamgate.metrics().await;
    // The upload has the bytes of late.bin: a content-cache hit, not a fourth scan.
    assert_eq!(metric_value(&metrics, "clamgate_clamd_scans_started_total{method=\"fildes\"}"), 3.0);
    assert_eq!(metric_value(&metrics, "clamgate_clamd_scans_started_total{method=\"instream\"}"), 0.0);
}
