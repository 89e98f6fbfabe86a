//! The scan path against real clamd and real Redis: verdicts for every sample kind, clamd down,
//! Redis down, and a verdict shared between two instances through Redis.

mod support;

use std::sync::Arc;

use clamgate::config::{CacheMode, Config};
use clamgate::metrics::{Metrics, Source};
use clamgate::scanner::Scanner;
use clamgate::verdict::{UnscannedReason, Verdict};
use support::clamd::ClamdProcess;
use support::clamgate::{metric_value, test_config};
use support::redis::RedisProcess;
use support::samples;

fn scanner(config: &Config) -> (Scanner, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    (clamgate::app::build_scanner(config, metrics.clone()).expect("scanner"), metrics)
}

fn signature(verdict: &Verdict) -> &str {
    match verdict {
        Verdict::Infected { signature } => signature,
        other => panic!("expected infected, got {other:?}"),
    }
}

#[tokio::test]
async fn every_sample_kind_gets_the_right_verdict() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let (scanner, _) = scanner(&test_config(&clamd.address()));
    assert_eq!(scanner.scan_body(&samples::clean_sample(50_000), Source::api, CacheMode::Content).await.verdict, Verdict::Clean);
    let cases = [
        (samples::eicar(), "Test.Eicar.Body"),
        (samples::eicar_zip(), "Test.Eicar.Body"),
        (samples::hash_only_sample(), "Test.HashOnly"),
        (samples::logical_sample(), "Test.Logical"),
    ];
    for (body, expected) in cases {
        let report = scanner.scan_body(&body, Source::api, CacheMode::Content).await;
        assert!(signature(&report.verdict).starts_with(expected), "{:?}", report.verdict);
        assert!(!report.cached);
    }
}

#[tokio::test]
async fn clamd_stopped_is_unscanned_never_clean() {
    let mut clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let (scanner, _) = scanner(&test_config(&clamd.address()));
    clamd.stop();
    for body in [samples::clean_sample(1000), samples::eicar(), Vec::new()] {
        let report = scanner.scan_body(&body, Source::api, CacheMode::Content).await;
        assert_eq!(report.verdict, Verdict::Unscanned { reason: UnscannedReason::EngineUnavailable });
    }
}

#[tokio::test]
async fn unscanned_verdicts_are_never_cached() {
    let mut clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let (scanner, _) = scanner(&test_config(&clamd.address()));
    let body = samples::clean_sample(2000);
    clamd.stop();
    assert!(matches!(scanner.scan_body(&body, Source::api, CacheMode::Content).await.verdict, Verdict::Unscanned { .. }));
    // Nothing else runs on this runtime, so the blocking restart is harmless here.
    clamd.start_again();
    let report = scanner.scan_body(&body, Source::api, CacheMode::Content).await;
    assert_eq!(report.verdict, Verdict::Clean);
    assert!(!report.cached, "an Unscanned verdict must not have been cached");
}

#[tokio::test]
async fn redis_shares_verdicts_between_instances() {
    let mut clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let redis = tokio::task::spawn_blocking(RedisProcess::start).await.expect("redis");
    let mut config = test_config(&clamd.address());
    config.cache.redis_url = Some(redis.url());
    let (first, _) = scanner(&config);
    let (second, second_metrics) = scanner(&config);
    let eicar = samples::eicar();
    assert!(signature(&first.scan_body(&eicar, Source::api, CacheMode::Content).await.verdict).starts_with("Test.Eicar.Body"));
    clamd.stop();
    let report = second.scan_body(&eicar, Source::api, CacheMode::Content).await;
    assert!(report.cached, "the second instance must find the first one's verdict in Redis");
    assert!(signature(&report.verdict).starts_with("Test.Eicar.Body"));
    assert_eq!(
        metric_value(
            &second_metrics.encode(),
            r#"clamgate_cache_lookups_total{key="content",tier="redis",result="hit"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn redis_down_means_scans_go_on() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let mut redis = tokio::task::spawn_blocking(RedisProcess::start).await.expect("redis");
    let mut config = test_config(&clamd.address());
    config.cache.redis_url = Some(redis.url());
    let (scanner, metrics) = scanner(&config);
    assert_eq!(scanner.scan_body(&samples::clean_sample(1000), Source::api, CacheMode::Content).await.verdict, Verdict::Clean);
    redis.stop();
    let report = scanner.scan_body(&samples::eicar(), Source::api, CacheMode::Content).await;
    assert!(signature(&report.verdict).starts_with("Test.Eicar.Body"));
    assert!(!report.cached);
    let report = scanner.scan_body(&samples::clean_sample(3000), Source::api, CacheMode::Content).await;
    assert_eq!(report.verdict, Verdict::Clean);
    let text = metrics.encode();
    assert!(
        metric_value(&text, r#"clamgate_cache_lookups_total{key="content",tier="redis",result="error"}"#) >= 2.0,
        "{text}"
    );
}
