//! The scan path against real clamd and real Redis: verdicts for every sample kind, clamd down,
//! Redis down, and a verdict shared between two instances through Redis.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    assert_eq!(
        scanner.scan_body(&samples::clean_sample(50_000), &[], Source::api, CacheMode::Content).await.verdict,
        Verdict::Clean
    );
    let cases = [
        (samples::eicar(), "Test.Eicar.Body"),
        (samples::eicar_zip(), "Test.Eicar.Body"),
        (samples::hash_only_sample(), "Test.HashOnly"),
        (samples::logical_sample(), "Test.Logical"),
    ];
    for (body, expected) in cases {
        let report = scanner.scan_body(&body, &[], Source::api, CacheMode::Content).await;
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
        let report = scanner.scan_body(&body, &[], Source::api, CacheMode::Content).await;
        assert_eq!(report.verdict, Verdict::Unscanned { reason: UnscannedReason::EngineUnavailable });
    }
}

#[tokio::test]
async fn unscanned_verdicts_are_never_cached() {
    let mut clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let (scanner, _) = scanner(&test_config(&clamd.address()));
    let body = samples::clean_sample(2000);
    clamd.stop();
    assert!(matches!(
        scanner.scan_body(&body, &[], Source::api, CacheMode::Content).await.verdict,
        Verdict::Unscanned { .. }
    ));
    // Nothing else runs on this runtime, so the blocking restart is harmless here.
    clamd.start_again();
    let report = scanner.scan_body(&body, &[], Source::api, CacheMode::Content).await;
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
    assert!(signature(&first.scan_body(&eicar, &[], Source::api, CacheMode::Content).await.verdict)
        .starts_with("Test.Eicar.Body"));
    clamd.stop();
    let report = second.scan_body(&eicar, &[], Source::api, CacheMode::Content).await;
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
    assert_eq!(
        scanner.scan_body(&samples::clean_sample(1000), &[], Source::api, CacheMode::Content).await.verdict,
        Verdict::Clean
    );
    redis.stop();
    let report = scanner.scan_body(&samples::eicar(), &[], Source::api, CacheMode::Content).await;
    assert!(signature(&report.verdict).starts_with("Test.Eicar.Body"));
    assert!(!report.cached);
    let report = scanner.scan_body(&samples::clean_sample(3000), &[], Source::api, CacheMode::Content).await;
    assert_eq!(report.verdict, Verdict::Clean);
    let text = metrics.encode();
    assert!(
        metric_value(&text, r#"clamgate_cache_lookups_total{key="content",tier="redis",result="error"}"#)
            >= 2.0,
        "{text}"
    );
}

fn shared_config(clamd: &ClamdProcess, redis_url: &str) -> Config {
    let mut config = test_config(&clamd.address());
    config.cache.redis_url = Some(redis_url.to_string());
    config
}

fn clamd_scans(metrics: &Metrics) -> f64 {
    metric_value(&metrics.encode(), "clamgate_clamd_scan_duration_seconds_count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_scan_the_same_body_once() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let redis = tokio::task::spawn_blocking(RedisProcess::start).await.expect("redis");
    let mut config = shared_config(&clamd, &redis.url());
    // This test is about the lock, not about slow Redis answers (those are misses by design).
    config.cache.redis_timeout_ms = 5_000;
    let (first, first_metrics) = scanner(&config);
    let (second, second_metrics) = scanner(&config);
    // Open both instances' lazy Redis connections before the race.
    for instance in [&first, &second] {
        instance.scan_body(&samples::marker_sample(), &[], Source::api, CacheMode::Content).await;
    }
    let scans_before = clamd_scans(&first_metrics) + clamd_scans(&second_metrics);
    let body = samples::clean_sample(8 * 1024 * 1024);
    let (a, b) = tokio::join!(
        first.scan_body(&body, &[], Source::api, CacheMode::Content),
        second.scan_body(&body, &[], Source::api, CacheMode::Content)
    );
    assert_eq!((a.verdict, b.verdict), (Verdict::Clean, Verdict::Clean));
    let scans = clamd_scans(&first_metrics) + clamd_scans(&second_metrics) - scans_before;
    assert_eq!(
        scans,
        1.0,
        "one scan across two instances\n{}\n{}",
        first_metrics.encode(),
        second_metrics.encode()
    );
    let shared_waits = r#"clamgate_scan_waits_total{scope="shared"}"#;
    let redis_hits = r#"clamgate_cache_lookups_total{key="content",tier="redis",result="hit"}"#;
    let waited = metric_value(&first_metrics.encode(), shared_waits)
        + metric_value(&second_metrics.encode(), shared_waits);
    let hits = metric_value(&first_metrics.encode(), redis_hits)
        + metric_value(&second_metrics.encode(), redis_hits);
    assert!(waited + hits >= 1.0, "the other instance waited for the lock holder or found its verdict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lock_holder_only_delays_the_scan() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let redis = tokio::task::spawn_blocking(RedisProcess::start).await.expect("redis");
    let mut config = shared_config(&clamd, &redis.url());
    config.cache.redis_timeout_ms = 5_000;
    let (scanner, metrics) = scanner(&config);
    let body = samples::eicar_zip();
    // Another instance took the lock for this content and died: nobody will release it.
    let key =
        format!("clamgate:v1:lock:content:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body)));
    let client = redis::Client::open(redis.url()).expect("URL");
    let mut connection = client.get_multiplexed_async_connection().await.expect("connect");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("dead-holder")
        .arg("PX")
        .arg(1500)
        .query_async(&mut connection)
        .await
        .expect("SET");

    let started = std::time::Instant::now();
    let report = scanner.scan_body(&body, &[], Source::api, CacheMode::Content).await;
    assert!(signature(&report.verdict).starts_with("Test.Eicar.Body"), "{:?}", report.verdict);
    assert!(started.elapsed() >= std::time::Duration::from_millis(1000), "it waited for the lock to expire");
    assert_eq!(metric_value(&metrics.encode(), r#"clamgate_scan_waits_total{scope="shared"}"#), 1.0);
    assert_eq!(clamd_scans(&metrics), 1.0, "then it scanned itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_verdicts_through_a_redis_cluster() {
    let mut clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let cluster =
        tokio::task::spawn_blocking(|| support::redis::RedisCluster::start(3)).await.expect("cluster");
    let mut config = test_config(&clamd.address());
    config.cache.redis_cluster_urls = cluster.urls();
    let (first, _) = scanner(&config);
    let (second, second_metrics) = scanner(&config);
    let bodies = [samples::eicar(), samples::eicar_zip(), samples::hash_only_sample()];
    for body in &bodies {
        assert!(matches!(
            first.scan_body(body, &[], Source::api, CacheMode::Content).await.verdict,
            Verdict::Infected { .. }
        ));
    }
    clamd = tokio::task::spawn_blocking(move || {
        clamd.stop();
        clamd
    })
    .await
    .expect("stop clamd");
    for body in &bodies {
        let report = second.scan_body(body, &[], Source::api, CacheMode::Content).await;
        assert!(report.cached, "found through the cluster with clamd stopped");
        assert!(matches!(report.verdict, Verdict::Infected { .. }));
    }
    let text = second_metrics.encode();
    assert_eq!(
        metric_value(&text, r#"clamgate_cache_lookups_total{key="content",tier="redis",result="hit"}"#),
        3.0,
        "{text}"
    );
    drop(clamd);
}

/// INSTREAM scans clamd is running now, from its `STATS` report (a tab-indented line per job).
fn clamd_scans_running(clamd: &ClamdProcess) -> usize {
    clamd.stats().lines().filter(|line| line.starts_with("\tINSTREAM")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_scan_keeps_its_clamd_slot_until_clamd_is_done() {
    // clamd goes on scanning a body after its client has gone: the slot must stay taken, or
    // clamgate runs more scans in clamd than clamd.max_concurrent_scans.
    let clamd =
        Arc::new(tokio::task::spawn_blocking(ClamdProcess::start_for_large_bodies).await.expect("clamd"));
    let mut config = test_config(&clamd.address());
    config.clamd.max_concurrent_scans = 1;
    config.scan.timeout_ms = 300;
    config.scan.timeout_per_mib_ms = 0;
    let (scanner, metrics) = scanner(&config);

    // The most scans clamd ran at once, sampled until the test ends.
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (clamd, peak, done) = (clamd.clone(), peak.clone(), done.clone());
        tokio::task::spawn_blocking(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(clamd_scans_running(&clamd), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let timeout = Verdict::Unscanned { reason: UnscannedReason::Timeout };

    // Seconds of clamd work in a ~1 MiB body: clamgate gives up after 300 ms.
    let first = scanner.scan_body(&samples::slow_scan_gzip(150, 1), &[], Source::api, CacheMode::Off).await;
    assert_eq!(first.verdict, timeout);
    let deadline = Instant::now() + Duration::from_secs(10);
    while clamd_scans_running(&clamd) == 0 {
        assert!(Instant::now() < deadline, "clamd is not scanning the abandoned body");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The only slot is still taken by the abandoned scan: this one cannot reach clamd before
    // its own deadline.
    let second = scanner.scan_body(&samples::slow_scan_gzip(150, 2), &[], Source::api, CacheMode::Off).await;
    assert_eq!(second.verdict, timeout);

    let deadline = Instant::now() + Duration::from_secs(60);
    let abandoned = r#"clamgate_clamd_abandoned_scans_total{outcome="replied"}"#;
    while clamd_scans_running(&clamd) > 0 || metric_value(&metrics.encode(), abandoned) < 1.0 {
        assert!(Instant::now() < deadline, "the abandoned scan did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The slot came back: nothing leaked.
    let third = scanner.scan_body(&samples::clean_sample(1000), &[], Source::api, CacheMode::Off).await;
    assert_eq!(third.verdict, Verdict::Clean);
    done.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    assert_eq!(peak.load(Ordering::Relaxed), 1, "clamd ran more scans at once than max_concurrent_scans");
    assert_eq!(metric_value(&metrics.encode(), abandoned), 1.0);
}
