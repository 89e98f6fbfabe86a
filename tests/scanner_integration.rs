//! The scan path against real clamd and real Redis: verdicts for every sample kind, clamd down,
//! Redis down, a verdict shared between two instances through Redis; what the cache trusts:
//! entries stamped across a signature reload, signature epochs, briefly cached Unscanned
//! verdicts, and HMAC-authenticated Redis values.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clamgate::cache::{
    decode_entry, encode_entry, encode_resource, CacheEntry, CachedVerdict, ContentKey, ResourceEntry,
    ResourceId, VaryRecord, VerdictCache,
};
use clamgate::cache::{Resource, ResourceVersion};
use clamgate::config::{CacheMode, Config};
use clamgate::decode::Encoding;
use clamgate::metrics::{Metrics, Source};
use clamgate::scanner::{ResourceLookup, Scanner};
use clamgate::verdict::{UnscannedReason, Verdict};
use support::clamd::ClamdProcess;
use support::clamgate::{metric_value, test_config};
use support::redis::RedisProcess;
use support::samples;
use support::scan::ScanBytes;

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
        scanner.scan_body(&samples::clean_sample(50_000), &[], Source::Api, CacheMode::Content).await.verdict,
        Verdict::Clean
    );
    let cases = [
        (samples::eicar(), "Test.Eicar.Body"),
        (samples::eicar_zip(), "Test.Eicar.Body"),
        (samples::hash_only_sample(), "Test.HashOnly"),
        (samples::logical_sample(), "Test.Logical"),
    ];
    for (body, expected) in cases {
        let report = scanner.scan_body(&body, &[], Source::Api, CacheMode::Content).await;
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
        let report = scanner.scan_body(&body, &[], Source::Api, CacheMode::Content).await;
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
        scanner.scan_body(&body, &[], Source::Api, CacheMode::Content).await.verdict,
        Verdict::Unscanned { .. }
    ));
    // Nothing else runs on this runtime, so the blocking restart is harmless here.
    clamd.start_again();
    let report = scanner.scan_body(&body, &[], Source::Api, CacheMode::Content).await;
    assert_eq!(report.verdict, Verdict::Clean);
    assert!(!report.cached, "an Unscanned verdict must not have been cached");
}

#[tokio::test]
async fn redis_shares_verdicts_between_instances() {
    let mut clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let redis = tokio::task::spawn_blocking(RedisProcess::start).await.expect("redis");
    let mut config = test_config(&clamd.address());
    config.cache.redis_url = Some(redis.url().parse().expect("a Redis URL"));
    let (first, _) = scanner(&config);
    let (second, second_metrics) = scanner(&config);
    let eicar = samples::eicar();
    assert!(signature(&first.scan_body(&eicar, &[], Source::Api, CacheMode::Content).await.verdict)
        .starts_with("Test.Eicar.Body"));
    clamd.stop();
    let report = second.scan_body(&eicar, &[], Source::Api, CacheMode::Content).await;
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
    config.cache.redis_url = Some(redis.url().parse().expect("a Redis URL"));
    let (scanner, metrics) = scanner(&config);
    assert_eq!(
        scanner.scan_body(&samples::clean_sample(1000), &[], Source::Api, CacheMode::Content).await.verdict,
        Verdict::Clean
    );
    redis.stop();
    let report = scanner.scan_body(&samples::eicar(), &[], Source::Api, CacheMode::Content).await;
    assert!(signature(&report.verdict).starts_with("Test.Eicar.Body"));
    assert!(!report.cached);
    let report = scanner.scan_body(&samples::clean_sample(3000), &[], Source::Api, CacheMode::Content).await;
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
    config.cache.redis_url = Some(redis_url.parse().expect("a Redis URL"));
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
        instance.scan_body(&samples::marker_sample(), &[], Source::Api, CacheMode::Content).await;
    }
    let scans_before = clamd_scans(&first_metrics) + clamd_scans(&second_metrics);
    let body = samples::clean_sample(8 * 1024 * 1024);
    let (a, b) = tokio::join!(
        first.scan_body(&body, &[], Source::Api, CacheMode::Content),
        second.scan_body(&body, &[], Source::Api, CacheMode::Content)
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
    let report = scanner.scan_body(&body, &[], Source::Api, CacheMode::Content).await;
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
    config.cache.redis_cluster_urls =
        cluster.urls().iter().map(|url| url.parse().expect("a Redis URL")).collect();
    let (first, _) = scanner(&config);
    let (second, second_metrics) = scanner(&config);
    let bodies = [samples::eicar(), samples::eicar_zip(), samples::hash_only_sample()];
    for body in &bodies {
        assert!(matches!(
            first.scan_body(body, &[], Source::Api, CacheMode::Content).await.verdict,
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
        let report = second.scan_body(body, &[], Source::Api, CacheMode::Content).await;
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
    let first = scanner.scan_body(&samples::slow_scan_gzip(150, 1), &[], Source::Api, CacheMode::Off).await;
    assert_eq!(first.verdict, timeout);
    let deadline = Instant::now() + Duration::from_secs(10);
    while clamd_scans_running(&clamd) == 0 {
        assert!(Instant::now() < deadline, "clamd is not scanning the abandoned body");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The only slot is still taken by the abandoned scan: this one cannot reach clamd before
    // its own deadline.
    let second = scanner.scan_body(&samples::slow_scan_gzip(150, 2), &[], Source::Api, CacheMode::Off).await;
    assert_eq!(second.verdict, timeout);

    let deadline = Instant::now() + Duration::from_secs(60);
    let abandoned = r#"clamgate_clamd_abandoned_scans_total{outcome="replied"}"#;
    while clamd_scans_running(&clamd) > 0 || metric_value(&metrics.encode(), abandoned) < 1.0 {
        assert!(Instant::now() < deadline, "the abandoned scan did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The slot came back: nothing leaked.
    let third = scanner.scan_body(&samples::clean_sample(1000), &[], Source::Api, CacheMode::Off).await;
    assert_eq!(third.verdict, Verdict::Clean);
    done.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    assert_eq!(peak.load(Ordering::Relaxed), 1, "clamd ran more scans at once than max_concurrent_scans");
    assert_eq!(metric_value(&metrics.encode(), abandoned), 1.0);
}

// --- Staleness, signature epochs, briefly cached Unscanned verdicts, authenticated values --------

/// Tells the scanner what clamd now reports, as the health probe does.
async fn learn_version(scanner: &Scanner) {
    let version = scanner.clamd().version().await.expect("VERSION");
    scanner.set_engine_version(version);
}

/// Installs daily database `version` in `clamd` and waits until clamd uses it.
async fn reload_daily(clamd: &ClamdProcess, version: u32) {
    // Blocking, but short; nothing else on this runtime needs to run meanwhile.
    clamd.install_daily(version);
    clamd.reload();
    clamd.wait_for_daily_version(version);
}

fn stale_lookups(metrics: &Metrics, tier: &str) -> f64 {
    let sample = format!(r#"clamgate_cache_lookups_total{{key="content",tier="{tier}",result="stale"}}"#);
    metric_value(&metrics.encode(), &sample)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_waiting_for_a_slot_across_a_reload_is_stamped_with_the_older_database() {
    // A scan reads the database version before it waits for a clamd slot: if clamd reloads
    // meanwhile, the scan may still have started on the old signatures, so its Clean must be
    // stale under the new ones.
    let clamd =
        Arc::new(tokio::task::spawn_blocking(|| ClamdProcess::start_with_daily(1)).await.expect("clamd"));
    let mut config = test_config(&clamd.address());
    config.clamd.max_concurrent_scans = 1;
    config.scan.timeout_ms = 60_000;
    let (scanner, metrics) = scanner(&config);
    let scanner = Arc::new(scanner);
    learn_version(&scanner).await;
    let body = samples::clean_sample(200_000);

    // A slow scan (seconds of clamd work) takes the only clamd slot.
    let slow = tokio::spawn({
        let scanner = scanner.clone();
        async move { scanner.scan_body(&samples::slow_scan_gzip(150, 7), &[], Source::Api, CacheMode::Off).await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while clamd_scans_running(&clamd) == 0 {
        assert!(Instant::now() < deadline, "the slow scan did not reach clamd");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // This scan looks the cache up (a miss), reads the version and waits for the slot.
    let waiting = tokio::spawn({
        let (scanner, body) = (scanner.clone(), body.clone());
        async move { scanner.scan_body(&body, &[], Source::Api, CacheMode::Content).await }
    });
    let miss = r#"clamgate_cache_lookups_total{key="content",tier="memory",result="miss"}"#;
    while metric_value(&metrics.encode(), miss) < 1.0 {
        assert!(Instant::now() < deadline, "the second scan did not look the cache up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(clamd_scans_running(&clamd) > 0, "the slow scan must still hold the slot");
    reload_daily(&clamd, 2).await;
    learn_version(&scanner).await;

    let report = waiting.await.expect("waiting scan");
    assert_eq!(report.verdict, Verdict::Clean);
    assert_eq!(report.engine.and_then(|e| e.database_version), Some(1), "the version before the scan");
    slow.await.expect("slow scan");

    let again = scanner.scan_body(&body, &[], Source::Api, CacheMode::Content).await;
    assert!(!again.cached, "the scan started under database 1: its Clean is stale under database 2");
    assert_eq!(stale_lookups(&metrics, "memory"), 1.0);
    // The rescan was stamped with database 2: now it is a hit.
    assert!(scanner.scan_body(&body, &[], Source::Api, CacheMode::Content).await.cached);
}

/// A key file with `byte` repeated 32 times, in `dir`.
fn key_file(dir: &tempfile::TempDir, name: &str, byte: u8) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, [byte; 32]).expect("write key file");
    path.to_str().expect("UTF-8 path").to_string()
}

async fn raw_connection(redis: &RedisProcess) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis.url()).expect("URL");
    client.get_multiplexed_async_connection().await.expect("connect")
}

async fn raw_set(redis: &RedisProcess, name: &str, value: &[u8]) {
    let mut connection = raw_connection(redis).await;
    let _: () = redis::cmd("SET").arg(name).arg(value).query_async(&mut connection).await.expect("SET");
}

async fn raw_get(redis: &RedisProcess, name: &str) -> Option<Vec<u8>> {
    let mut connection = raw_connection(redis).await;
    redis::cmd("GET").arg(name).query_async(&mut connection).await.expect("GET")
}

fn content_redis_key(body: &[u8]) -> String {
    format!("clamgate:v1:content:{}", ContentKey::of(body).hex())
}

/// A Clean entry as anyone could write it: fresh for a scanner that knows no database yet.
fn forged_clean() -> Vec<u8> {
    encode_entry(&CacheEntry {
        verdict: CachedVerdict::Clean,
        engine_version: "1.4.6".to_string(),
        database_version: Some(u64::from(u32::MAX)),
        signature_epoch: u64::MAX,
        scanned_at_unix_secs: 1_767_225_600,
    })
}

fn rejected(metrics: &Metrics, key: &str, reason: &str) -> f64 {
    let sample = format!(r#"clamgate_cache_rejected_values_total{{key="{key}",reason="{reason}"}}"#);
    metric_value(&metrics.encode(), &sample)
}

#[tokio::test]
async fn without_an_hmac_key_a_forged_clean_entry_is_believed() {
    // The threat cache.hmac_key_file answers: behaviour without a key is unchanged.
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let redis = tokio::task::spawn_blocking(RedisProcess::start).await.expect("redis");
    let (scanner, _) = scanner(&shared_config(&clamd, &redis.url()));
    let eicar = samples::eicar();
    raw_set(&redis, &content_redis_key(&eicar), &forged_clean()).await;
    let report = scanner.scan_body(&eicar, &[], Source::Api, CacheMode::Content).await;
    assert_eq!((report.verdict, report.cached), (Verdict::Clean, true));
}

#[tokio::test]
async fn with_an_hmac_key_forged_and_unauthenticated_values_are_refused_and_the_body_is_scanned() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let redis = tokio::task::spawn_blocking(RedisProcess::start).await.expect("redis");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = shared_config(&clamd, &redis.url());
    config.cache.hmac_key_file = Some(key_file(&dir, "current.key", b'c'));
    let (scanner_with_key, metrics) = scanner(&config);
    let eicar = samples::eicar();
    let eicar_key = content_redis_key(&eicar);

    // A bare Clean entry for EICAR, as redis-cli could write it.
    raw_set(&redis, &eicar_key, &forged_clean()).await;
    let report = scanner_with_key.scan_body(&eicar, &[], Source::Api, CacheMode::Content).await;
    assert!(signature(&report.verdict).starts_with("Test.Eicar.Body"), "{:?}", report.verdict);
    assert!(!report.cached);
    assert_eq!(rejected(&metrics, "content", "missing_tag"), 1.0);
    // The scan's verdict replaced the forgery, sealed.
    let stored = raw_get(&redis, &eicar_key).await.expect("stored");
    assert!(stored.starts_with(b"hmac-sha256:"), "{}", String::from_utf8_lossy(&stored));

    // A genuine sealed Clean value copied onto EICAR's key does not verify there.
    let clean = samples::clean_sample(5_000);
    let _ = scanner_with_key.scan_body(&clean, &[], Source::Api, CacheMode::Content).await;
    let genuine = raw_get(&redis, &content_redis_key(&clean)).await.expect("stored");
    raw_set(&redis, &eicar_key, &genuine).await;
    let (other_instance, other_metrics) = scanner(&config);
    let report = other_instance.scan_body(&eicar, &[], Source::Api, CacheMode::Content).await;
    assert!(matches!(report.verdict, Verdict::Infected { .. }), "{:?}", report.verdict);
    assert_eq!(rejected(&other_metrics, "content", "bad_tag"), 1.0);

    // Tagged with another key: a forger with a key of their own, writing through the cache API.
    let mut wrong_key = config.cache.clone();
    wrong_key.hmac_key_file = Some(key_file(&dir, "wrong.key", b'w'));
    let forger = VerdictCache::from_config(&wrong_key).expect("cache");
    let forged_body = samples::eicar_zip();
    forger
        .put(&ContentKey::of(&forged_body), &decode_entry(&forged_clean()).expect("entry"))
        .await
        .expect("put");
    let stored = raw_get(&redis, &content_redis_key(&forged_body)).await.expect("stored");
    assert!(stored.starts_with(b"hmac-sha256:"));
    let report = other_instance.scan_body(&forged_body, &[], Source::Api, CacheMode::Content).await;
    assert!(matches!(report.verdict, Verdict::Infected { .. }), "{:?}", report.verdict);
    assert_eq!(rejected(&other_metrics, "content", "bad_tag"), 2.0);
}

#[tokio::test]
async fn with_an_hmac_key_values_written_without_it_are_refused_and_a_rotation_keeps_the_old_ones() {
    let mut clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let redis = tokio::task::spawn_blocking(RedisProcess::start).await.expect("redis");
    let dir = tempfile::tempdir().expect("temp dir");
    let keyless_config = shared_config(&clamd, &redis.url());
    let (keyless, keyless_metrics) = scanner(&keyless_config);
    let mut old_key = keyless_config.clone();
    old_key.cache.hmac_key_file = Some(key_file(&dir, "old.key", b'o'));
    let (old_instance, _) = scanner(&old_key);
    let mut rotated = keyless_config.clone();
    rotated.cache.hmac_key_file = Some(key_file(&dir, "new.key", b'n'));
    rotated.cache.hmac_previous_key_file = old_key.cache.hmac_key_file.clone();
    let (rotated_instance, rotated_metrics) = scanner(&rotated);

    let (bare, sealed) = (samples::clean_sample(7_000), samples::clean_sample(9_000));
    assert_eq!(keyless.scan_body(&bare, &[], Source::Api, CacheMode::Content).await.verdict, Verdict::Clean);
    assert_eq!(
        old_instance.scan_body(&sealed, &[], Source::Api, CacheMode::Content).await.verdict,
        Verdict::Clean
    );
    clamd = tokio::task::spawn_blocking(move || {
        clamd.stop();
        clamd
    })
    .await
    .expect("stop clamd");

    // The keyless instance's bare value is refused; with clamd down that is no verdict at all.
    let report = rotated_instance.scan_body(&bare, &[], Source::Api, CacheMode::Content).await;
    assert!(matches!(report.verdict, Verdict::Unscanned { .. }), "{:?}", report.verdict);
    assert_eq!(rejected(&rotated_metrics, "content", "missing_tag"), 1.0);
    // The previous key's value is accepted during the rotation.
    let report = rotated_instance.scan_body(&sealed, &[], Source::Api, CacheMode::Content).await;
    assert_eq!((report.verdict, report.cached), (Verdict::Clean, true));
    // An instance without a key reads sealed values (keys are rolled out one instance at a time).
    let report = keyless.scan_body(&sealed, &[], Source::Api, CacheMode::Content).await;
    assert_eq!((report.verdict, report.cached), (Verdict::Clean, true));
    assert_eq!(rejected(&keyless_metrics, "content", "missing_tag"), 0.0);
    drop(clamd);
}

#[tokio::test]
async fn with_an_hmac_key_a_forged_resource_entry_is_refused() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let redis = tokio::task::spawn_blocking(RedisProcess::start).await.expect("redis");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = shared_config(&clamd, &redis.url());
    config.cache.hmac_key_file = Some(key_file(&dir, "current.key", b'c'));
    let (scanner, metrics) = scanner(&config);
    let resource = url_resource("/tool.exe");
    let forged = ResourceEntry {
        validator: "etag:\"v1\"".to_string(),
        vary: VaryRecord::none(),
        content: ContentKey::of(&samples::eicar()),
        entry: decode_entry(&forged_clean()).expect("entry"),
    };
    let key = resource.id.key();
    raw_set(&redis, &format!("clamgate:v2:resource:{}", key.hex()), &encode_resource(&forged)).await;
    assert_eq!(scanner.lookup_resource(&resource).await, ResourceLookup::Miss);
    assert_eq!(rejected(&metrics, "resource", "missing_tag"), 1.0);

    // What this instance stores, it reads back.
    let report = scanner.scan_body(&samples::eicar(), &[], Source::Api, CacheMode::Resource).await;
    scanner.store_resource(&version(&resource, "etag:\"v1\""), &report).await;
    let (reader, _) = self::scanner(&config);
    assert!(matches!(reader.lookup_resource(&resource).await, ResourceLookup::InfectedUnlessChanged { .. }));
}

/// `resource` as a response with `validator` and no `Vary` names it.
fn version(resource: &Resource, validator: &str) -> ResourceVersion {
    ResourceVersion { resource: resource.clone(), validator: validator.to_string(), vary: Vec::new() }
}

/// `path` on the test mirror, requested without headers the response could vary on.
fn url_resource(path: &str) -> Resource {
    Resource { id: ResourceId::new("https", "mirror.example", 443, path), request_headers: Vec::new() }
}

fn epoch_config(clamd: &ClamdProcess, redis: &RedisProcess, epoch: u64) -> Config {
    let mut config = shared_config(clamd, &redis.url());
    config.cache.signature_epoch = epoch;
    config
}

#[tokio::test]
async fn a_higher_signature_epoch_makes_clean_entries_stale_and_leaves_infected_ones() {
    let mut clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let redis = tokio::task::spawn_blocking(RedisProcess::start).await.expect("redis");
    let (old, old_metrics) = scanner(&epoch_config(&clamd, &redis, 0));
    let (new, new_metrics) = scanner(&epoch_config(&clamd, &redis, 1));
    let clean = samples::clean_sample(11_000);
    let eicar = samples::eicar();
    for body in [&clean, &eicar] {
        assert!(!old.scan_body(body, &[], Source::Api, CacheMode::Content).await.cached);
    }
    let scans = clamd_scans(&new_metrics);

    // The restarted instance (epoch 1) rescans what epoch 0 found clean...
    let report = new.scan_body(&clean, &[], Source::Api, CacheMode::Content).await;
    assert_eq!((report.verdict, report.cached), (Verdict::Clean, false));
    assert_eq!(stale_lookups(&new_metrics, "redis"), 1.0);
    assert_eq!(clamd_scans(&new_metrics), scans + 1.0);
    // ...and from then on its own entry answers, from memory.
    assert!(new.scan_body(&clean, &[], Source::Api, CacheMode::Content).await.cached);

    clamd = tokio::task::spawn_blocking(move || {
        clamd.stop();
        clamd
    })
    .await
    .expect("stop clamd");
    // Infected stands whatever the epoch.
    let report = new.scan_body(&eicar, &[], Source::Api, CacheMode::Content).await;
    assert!(report.cached && signature(&report.verdict).starts_with("Test.Eicar.Body"));
    // An instance still on epoch 0 trusts epoch 1's entry (a rolling restart is safe).
    let (old_again, _) = scanner(&epoch_config(&clamd, &redis, 0));
    let report = old_again.scan_body(&clean, &[], Source::Api, CacheMode::Content).await;
    assert_eq!((report.verdict, report.cached), (Verdict::Clean, true));
    assert_eq!(stale_lookups(&old_metrics, "redis") + stale_lookups(&old_metrics, "memory"), 0.0);
    drop(clamd);
}

#[tokio::test]
async fn a_higher_signature_epoch_makes_clean_resource_entries_stale() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let redis = tokio::task::spawn_blocking(RedisProcess::start).await.expect("redis");
    let (old, _) = scanner(&epoch_config(&clamd, &redis, 0));
    let (new, new_metrics) = scanner(&epoch_config(&clamd, &redis, 1));
    let clean_url = url_resource("/a.bin");
    let infected_url = url_resource("/b.exe");
    for (resource, body) in [(&clean_url, samples::clean_sample(12_000)), (&infected_url, samples::eicar())] {
        let report = old.scan_body(&body, &[], Source::Api, CacheMode::Resource).await;
        old.store_resource(&version(resource, "etag:\"1\""), &report).await;
    }
    assert!(matches!(old.lookup_resource(&clean_url).await, ResourceLookup::Clean { .. }));
    assert_eq!(new.lookup_resource(&clean_url).await, ResourceLookup::Miss);
    let stale = r#"clamgate_cache_lookups_total{key="resource",tier="redis",result="stale"}"#;
    assert_eq!(metric_value(&new_metrics.encode(), stale), 1.0);
    assert!(matches!(new.lookup_resource(&infected_url).await, ResourceLookup::InfectedUnlessChanged { .. }));
}

/// A gzip body of `len` zeros: about a thousand times smaller than what it decodes to.
fn gzip_bomb(len: usize) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut encoder, &vec![0u8; len]).expect("gzip");
    encoder.finish().expect("gzip")
}

fn decoded_bodies(metrics: &Metrics) -> f64 {
    metrics
        .encode()
        .lines()
        .filter(|line| line.starts_with("clamgate_decoded_bodies_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Ratio 100: a gzip of zeros (about 1000:1) is a bomb past the first MiB.
fn bomb_config(clamd: &ClamdProcess) -> Config {
    let mut config = test_config(&clamd.address());
    config.scan.max_decode_ratio = 100;
    config
}

#[tokio::test]
async fn the_same_bomb_twice_is_decoded_and_scanned_once() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let (scanner, metrics) = scanner(&bomb_config(&clamd));
    let bomb = gzip_bomb(8 * 1024 * 1024);
    let limits = Verdict::Unscanned { reason: UnscannedReason::LimitsExceeded };
    let first = scanner.scan_body(&bomb, &[Encoding::Gzip], Source::Api, CacheMode::Content).await;
    assert_eq!((first.verdict, first.cached), (limits.clone(), false));
    let (decoded, scans) = (decoded_bodies(&metrics), clamd_scans(&metrics));
    assert_eq!(decoded, 1.0);

    let second = scanner.scan_body(&bomb, &[Encoding::Gzip], Source::Api, CacheMode::Content).await;
    assert_eq!((second.verdict, second.cached), (limits, true), "answered from the cache, same reason");
    assert_eq!(
        (decoded_bodies(&metrics), clamd_scans(&metrics)),
        (decoded, scans),
        "no second decode or scan"
    );
    let hits = r#"clamgate_cache_lookups_total{key="content",tier="memory",result="hit"}"#;
    assert_eq!(metric_value(&metrics.encode(), hits), 1.0, "counted as a cache hit");
    assert_eq!(metric_value(&metrics.encode(), r#"clamgate_unscanned_total{reason="limits_exceeded"}"#), 2.0);
}

#[tokio::test]
async fn with_unscanned_ttl_0_every_bomb_is_decoded_again() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let mut config = bomb_config(&clamd);
    config.cache.unscanned_ttl_secs = 0;
    let (scanner, metrics) = scanner(&config);
    let bomb = gzip_bomb(8 * 1024 * 1024);
    for _ in 0..2 {
        let report = scanner.scan_body(&bomb, &[Encoding::Gzip], Source::Api, CacheMode::Content).await;
        assert!(!report.cached);
    }
    assert_eq!(decoded_bodies(&metrics), 2.0);
}

#[tokio::test]
async fn a_bomb_is_shared_through_redis_briefly_and_engine_trouble_never_is() {
    let mut clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let redis = tokio::task::spawn_blocking(RedisProcess::start).await.expect("redis");
    let mut config = bomb_config(&clamd);
    config.cache.redis_url = Some(redis.url().parse().expect("a Redis URL"));
    config.cache.unscanned_ttl_secs = 120;
    let (first, _) = scanner(&config);
    let (second, second_metrics) = scanner(&config);
    let bomb = gzip_bomb(8 * 1024 * 1024);
    let _ = first.scan_body(&bomb, &[Encoding::Gzip], Source::Api, CacheMode::Content).await;
    let report = second.scan_body(&bomb, &[Encoding::Gzip], Source::Api, CacheMode::Content).await;
    assert_eq!(report.verdict, Verdict::Unscanned { reason: UnscannedReason::LimitsExceeded });
    assert!(report.cached);
    assert_eq!(decoded_bodies(&second_metrics), 0.0);
    let key = format!(
        "clamgate:v1:content:{}",
        clamgate::scanner::encoded_content_key(&ContentKey::of(&bomb), &[Encoding::Gzip]).hex()
    );
    let mut connection = raw_connection(&redis).await;
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut connection).await.expect("TTL");
    assert!((1..=120).contains(&ttl), "kept unscanned_ttl_secs, not ttl_secs: {ttl}");
    let stored = raw_get(&redis, &key).await.expect("stored");
    assert!(stored.starts_with(br#"{"v":2,"verdict":"unscanned","reason":"limits_exceeded""#));

    // clamd down: engine trouble, not remembered.
    let body = samples::clean_sample(4_000);
    clamd = tokio::task::spawn_blocking(move || {
        clamd.stop();
        clamd
    })
    .await
    .expect("stop clamd");
    let report = first.scan_body(&body, &[], Source::Api, CacheMode::Content).await;
    assert_eq!(report.verdict, Verdict::Unscanned { reason: UnscannedReason::EngineUnavailable });
    assert_eq!(raw_get(&redis, &content_redis_key(&body)).await, None);
    drop(clamd);
}
