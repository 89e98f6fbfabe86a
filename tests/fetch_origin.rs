//! clamgate's fetch on a miss against origins that misbehave: slow, too large, gone, cut short,
//! redirecting. Real clamd; the origins are small servers made here to misbehave on purpose
//! (a real web server cannot be told to cut a body short or stall on cue).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clamgate::cache::{Resource, ResourceId};
use clamgate::config::{CacheMode, Config};
use clamgate::fetch::{FetchRules, Fetcher};
use clamgate::metrics::Metrics;
use clamgate::spool::Spool;
use clamgate::verdict::{UnscannedReason, Verdict};
use support::clamd::ClamdProcess;
use support::clamgate::test_config;
use support::samples;

const HOST: &str = "origin.test";

/// An origin with one route per misbehaviour.
async fn start_origin() -> SocketAddr {
    let app = Router::new()
        .route("/ok.bin", get(|| async { ([(header::ETAG, "\"ok\"")], samples::clean_sample(10_000)) }))
        .route("/eicar.com", get(|| async { ([(header::ETAG, "\"e\"")], samples::eicar()) }))
        .route(
            "/slow.bin",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route(
            "/huge.bin",
            get(|| async {
                // Announces more than max_scan_bytes; the body is never read.
                Response::builder()
                    .header(header::CONTENT_LENGTH, (100u64 << 20).to_string())
                    .body(Body::from_stream(
                        futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>(),
                    ))
                    .unwrap()
            }),
        )
        .route(
            "/cut.bin",
            get(|| async {
                // Promises 1 MiB, sends a little, then breaks off.
                let pieces = futures_util::stream::iter(vec![
                    Ok(vec![b'x'; 1000]),
                    Err(std::io::Error::other("origin went away")),
                ]);
                Response::builder()
                    .header(header::CONTENT_LENGTH, (1u64 << 20).to_string())
                    .body(Body::from_stream(pieces))
                    .unwrap()
            }),
        )
        .route("/missing.bin", get(|| async { StatusCode::NOT_FOUND.into_response() }))
        .route(
            "/away.bin",
            get(|| async {
                (StatusCode::FOUND, [(header::LOCATION, "http://127.0.0.2:9/x")]).into_response()
            }),
        )
        .route(
            "/hop.bin",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/eicar.com")]).into_response() }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn fetcher(config: &Config) -> (Fetcher, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let scanner = Arc::new(clamgate::app::build_scanner(config, metrics.clone()).expect("scanner"));
    let spool = Spool::from_config(&config.bodies, metrics.clone());
    (Fetcher::from_config(&config.fetch, scanner, spool, metrics.clone()).expect("fetcher"), metrics)
}

fn resource(path: &str) -> Resource {
    Resource { id: ResourceId::new("http", HOST, 80, path), request_headers: Vec::new() }
}

const RULES: FetchRules = FetchRules { cache_mode: CacheMode::Resource, immutable: false };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_origins_are_unscanned_with_their_own_reason() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.unwrap();
    let origin = start_origin().await;
    let mut config = test_config(&clamd.address());
    config.fetch.origins = vec![format!("{HOST} = http://{origin}").parse().unwrap()];
    config.fetch.download_timeout_ms = 1_000;
    config.scan.max_scan_bytes = 50 << 20;
    let (fetcher, metrics) = fetcher(&config);

    let verdict = |path: &'static str| {
        let fetcher = &fetcher;
        async move { fetcher.fetch(&resource(path), RULES).await.report.verdict }
    };
    assert_eq!(verdict("/ok.bin").await, Verdict::Clean);
    assert!(matches!(verdict("/eicar.com").await, Verdict::Infected { .. }));
    let unscanned = |reason| Verdict::Unscanned { reason };
    assert_eq!(verdict("/slow.bin").await, unscanned(UnscannedReason::Timeout));
    assert_eq!(verdict("/huge.bin").await, unscanned(UnscannedReason::TooLarge));
    assert_eq!(verdict("/cut.bin").await, unscanned(UnscannedReason::OriginError));
    assert_eq!(verdict("/missing.bin").await, unscanned(UnscannedReason::OriginError));
    assert_eq!(verdict("/away.bin").await, unscanned(UnscannedReason::OriginError));
    // A redirect within the origin is followed, and what it leads to is scanned.
    assert!(matches!(verdict("/hop.bin").await, Verdict::Infected { .. }));

    let exposition = metrics.encode();
    let count = |outcome: &str| {
        support::clamgate::metric_value(
            &exposition,
            &format!("clamgate_fetches_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(
        (count("scanned"), count("timeout"), count("too_large"), count("origin_error")),
        (3.0, 1.0, 1.0, 3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_is_down_is_an_origin_error() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut config = test_config(&clamd.address());
    config.fetch.origins = vec![format!("{HOST} = http://{closed}").parse().unwrap()];
    let (fetcher, _) = fetcher(&config);
    let fetched = fetcher.fetch(&resource("/x.bin"), RULES).await;
    assert_eq!(fetched.report.verdict, Verdict::Unscanned { reason: UnscannedReason::OriginError });
    assert_eq!(fetched.validator, None);
}
