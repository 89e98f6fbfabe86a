//! The clamd client against a real clamd 1.4 with the test signature database.

mod support;

use std::time::Duration;

use clamgate::clamd::{ClamdAddress, ClamdClient, ClamdError, ClamdTimeouts, ScanReply};
use clamgate::verdict::{UnscannedReason, Verdict};
use support::clamd::{ClamdOptions, ClamdProcess};
use support::samples;

/// clamd's `StreamMaxLength 25M` in testdata/clamav/clamd.conf.
const STREAM_MAX_LENGTH: usize = 25 * 1024 * 1024;

fn timeouts() -> ClamdTimeouts {
    ClamdTimeouts {
        connect: Duration::from_secs(2),
        write: Duration::from_secs(10),
        reply: Duration::from_secs(30),
    }
}

fn client(address: &str) -> ClamdClient {
    ClamdClient::new(address.parse().expect("clamd address"), timeouts())
}

/// Asserts a `Found` reply whose signature starts with `prefix` (clamd appends `.UNOFFICIAL`).
#[track_caller]
fn assert_found(reply: &ScanReply, prefix: &str) {
    match reply {
        ScanReply::Found { signature } if signature.starts_with(prefix) => {}
        other => panic!("expected a {prefix}* detection, got {other:?}"),
    }
}

#[tokio::test]
async fn ping_and_version() {
    let clamd = ClamdProcess::start();
    let client = client(&clamd.address());
    client.ping().await.expect("PING");
    let version = client.version().await.expect("VERSION");
    assert_eq!(version.engine, "1.4.6");
    assert_eq!(version.database_version, None, "no daily.* database is loaded");
    assert_eq!(version.database_date, None);
}

#[tokio::test]
async fn clean_bodies_are_clean() {
    let clamd = ClamdProcess::start();
    let client = client(&clamd.address());
    assert_eq!(client.scan_bytes(&samples::clean_sample(100_000)).await.expect("scan"), ScanReply::Clean);
    assert_eq!(client.scan_bytes(b"").await.expect("scan of an empty body"), ScanReply::Clean);
    // One string of a logical signature is not enough.
    assert_eq!(
        client.scan_bytes(&samples::logical_part_a_only_sample()).await.expect("scan"),
        ScanReply::Clean
    );
    // A hash signature matches the exact file only.
    let mut longer = samples::hash_only_sample();
    longer.push(b'\n');
    assert_eq!(client.scan_bytes(&longer).await.expect("scan"), ScanReply::Clean);
}

#[tokio::test]
async fn test_signatures_are_detected() {
    let clamd = ClamdProcess::start();
    let client = client(&clamd.address());
    let cases = [
        ("eicar", samples::eicar(), "Test.Eicar.Body"),
        ("eicar in zip", samples::eicar_zip(), "Test.Eicar.Body"),
        ("hash only", samples::hash_only_sample(), "Test.HashOnly"),
        // The hash matches only the extracted member, so this proves the zip is readable.
        ("hash only in zip", samples::zip_of("sample.bin", &samples::hash_only_sample()), "Test.HashOnly"),
        ("logical", samples::logical_sample(), "Test.Logical"),
        ("marker", samples::marker_sample(), "Test.Marker"),
    ];
    for (name, body, prefix) in cases {
        let reply = client.scan_bytes(&body).await.unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_found(&reply, prefix);
        assert!(
            matches!(reply.into_verdict(), Verdict::Infected { signature } if signature.starts_with(prefix)),
            "{name}"
        );
    }
}

#[tokio::test]
async fn eicar_at_a_large_offset_in_many_small_chunks() {
    const CHUNK: usize = 4096;
    let clamd = ClamdProcess::start();
    // EICAR straddles the boundary between two chunks, 2.7 MiB into the body.
    let offset = 700 * CHUNK - 30;
    let mut body = samples::clean_sample(offset);
    body.extend_from_slice(&samples::eicar());
    body.extend_from_slice(&samples::clean_sample(50_000));

    let mut scan = client(&clamd.address()).start_scan().await.expect("start scan");
    for chunk in body.chunks(CHUNK) {
        scan.send(chunk).await.expect("send chunk");
    }
    assert_eq!(scan.bytes_sent(), body.len() as u64);
    assert!(!scan.clamd_stopped_reading());
    assert_found(&scan.finish().await.expect("finish"), "Test.Eicar.Body");
}

#[tokio::test]
async fn body_at_stream_max_length_is_scanned() {
    let clamd = ClamdProcess::start();
    let mut body = samples::clean_sample(STREAM_MAX_LENGTH - 68);
    body.extend_from_slice(&samples::eicar());
    let reply = client(&clamd.address()).scan_bytes(&body).await.expect("scan");
    assert_found(&reply, "Test.Eicar.Body");
}

#[tokio::test]
async fn body_one_byte_over_stream_max_length_is_too_large() {
    let clamd = ClamdProcess::start();
    let body = samples::clean_sample(STREAM_MAX_LENGTH + 1);
    let reply = client(&clamd.address()).scan_bytes(&body).await.expect("scan");
    assert_eq!(reply, ScanReply::SizeLimitExceeded);
    assert_eq!(reply.into_verdict(), Verdict::Unscanned { reason: UnscannedReason::TooLarge });
}

/// Peers bug #1: clamd answers the size limit and closes; the writes after that fail with EPIPE
/// or ECONNRESET, and the reply must still be read rather than reported as "clamd down".
#[tokio::test]
async fn size_limit_reply_is_read_after_clamd_stops_reading() {
    const CHUNK: usize = 64 * 1024;
    let clamd = ClamdProcess::start();
    let mut scan = client(&clamd.address()).start_scan().await.expect("start scan");
    let piece = samples::clean_sample(CHUNK);
    let mut offered = 0;
    // Keep streaming past the limit until a write fails (the kernel buffers a few MiB first).
    while !scan.clamd_stopped_reading() && offered < STREAM_MAX_LENGTH + 64 * 1024 * 1024 {
        scan.send(&piece).await.expect("send never fails when clamd closes");
        offered += CHUNK;
    }
    assert!(scan.clamd_stopped_reading(), "no write failed after {offered} bytes");
    assert!(scan.bytes_sent() > STREAM_MAX_LENGTH as u64);
    // Later chunks are ignored, not an error and not a panic.
    scan.send(&piece).await.expect("send after clamd stopped reading");
    let reply = scan.finish().await.expect("the pending reply is read");
    assert_eq!(reply, ScanReply::SizeLimitExceeded);
}

#[tokio::test]
async fn stopped_clamd_is_engine_unavailable_never_clean() {
    let mut clamd = ClamdProcess::start();
    let client = client(&clamd.address());
    client.ping().await.expect("PING while running");
    clamd.stop();

    let err = client.ping().await.expect_err("PING after stop");
    assert!(matches!(err, ClamdError::Connect { .. }), "{err:?}");
    assert_eq!(err.unscanned_reason(), UnscannedReason::EngineUnavailable);
    let err = client.scan_bytes(&samples::clean_sample(1000)).await.expect_err("scan after stop");
    assert_eq!(err.unscanned_reason(), UnscannedReason::EngineUnavailable);
    let err = client.version().await.expect_err("VERSION after stop");
    assert_eq!(err.unscanned_reason(), UnscannedReason::EngineUnavailable);

    clamd.start_again();
    client.ping().await.expect("PING after start_again");
    assert_eq!(client.scan_bytes(&samples::clean_sample(1000)).await.expect("scan"), ScanReply::Clean);
}

#[tokio::test]
async fn clamd_killed_mid_scan_is_never_clean() {
    let mut clamd = ClamdProcess::start();
    let mut scan = client(&clamd.address()).start_scan().await.expect("start scan");
    scan.send(&samples::clean_sample(100_000)).await.expect("send");
    clamd.stop();
    scan.send(&samples::clean_sample(100_000)).await.expect("send after clamd died");
    let err = scan.finish().await.expect_err("no reply from a killed clamd");
    assert!(matches!(err, ClamdError::ClosedWithoutReply), "{err:?}");
    assert_eq!(err.unscanned_reason(), UnscannedReason::EngineUnavailable);
}

#[tokio::test]
async fn slow_client_gets_read_timed_out() {
    let clamd = ClamdProcess::start_with(ClamdOptions {
        config_overrides: vec!["ReadTimeout 1".to_string()],
        ..ClamdOptions::default()
    });
    let mut scan = client(&clamd.address()).start_scan().await.expect("start scan");
    scan.send(&samples::clean_sample(1000)).await.expect("send");
    // The point of the test: stall longer than clamd's ReadTimeout of 1 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let reply = scan.finish().await.expect("finish");
    assert_eq!(reply, ScanReply::ReadTimedOut);
    assert_eq!(reply.into_verdict(), Verdict::Unscanned { reason: UnscannedReason::Timeout });
}

#[tokio::test]
async fn unix_socket() {
    let clamd = ClamdProcess::start_with_unix_socket();
    let address = clamd.unix_address().expect("unix socket enabled");
    assert!(matches!(address.parse(), Ok(ClamdAddress::Unix(_))));
    let client = client(&address);
    client.ping().await.expect("PING over the unix socket");
    assert_eq!(client.version().await.expect("VERSION").engine, "1.4.6");
    assert_found(&client.scan_bytes(&samples::eicar()).await.expect("scan"), "Test.Eicar.Body");
    assert_eq!(client.scan_bytes(&samples::clean_sample(10_000)).await.expect("scan"), ScanReply::Clean);
}

#[tokio::test]
async fn daily_database_version_and_reload() {
    let clamd = ClamdProcess::start_with_daily(27000);
    let client = client(&clamd.address());
    let version = client.version().await.expect("VERSION");
    assert_eq!(version.engine, "1.4.6");
    assert_eq!(version.database_version, Some(27000));
    let date = version.database_date.expect("database date");
    assert!(date.split_whitespace().count() == 5, "date as clamd prints it: {date:?}");
    assert_found(&client.scan_bytes(&samples::daily_sample(27000)).await.expect("scan"), "Test.Daily.V27000");
    assert_eq!(client.scan_bytes(&samples::daily_sample(27001)).await.expect("scan"), ScanReply::Clean);

    clamd.install_daily(27001);
    clamd.reload();
    clamd.wait_for_daily_version(27001);
    assert_eq!(client.version().await.expect("VERSION").database_version, Some(27001));
    assert_found(&client.scan_bytes(&samples::daily_sample(27001)).await.expect("scan"), "Test.Daily.V27001");
    // The test.* databases are still loaded next to the new daily.
    assert_found(&client.scan_bytes(&samples::eicar()).await.expect("scan"), "Test.Eicar.Body");
}

#[test]
fn samples_are_well_formed() {
    let eicar = samples::eicar();
    assert_eq!(eicar.len(), 68);
    assert!(eicar.starts_with(b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-"));
    assert_eq!(samples::crc32(b"123456789"), 0xcbf4_3926);
    assert_eq!(samples::hash_only_sample().len(), samples::HASH_ONLY_SAMPLE_BYTES);
    // The splitmix64 stream the MD5 in test.hdb was computed from.
    assert_eq!(samples::hash_only_sample()[..8], [0x37, 0xeb, 0xbd, 0xd3, 0xc8, 0xf8, 0x8b, 0x88]);
    assert_eq!(samples::clean_sample(10), samples::clean_sample(20)[..10]);
    let zip = samples::eicar_zip();
    assert!(zip.starts_with(b"PK\x03\x04") && zip.windows(4).any(|w| w == b"PK\x05\x06"));
    assert!(zip.windows(9).any(|w| w == b"eicar.com"));
}
