//! The verdict cache over TLS (`rediss://`) against a real TLS-only `redis-server` whose
//! certificate is signed by a CA made for the test: entries and locks round trip when
//! `cache.redis_tls_ca_file` names that CA; another CA, the system's roots, or plain TCP to the
//! TLS port all fail quickly, as errors, never as verdicts.
//!
//! If this `redis-server` was built without TLS the tests say so on stderr and skip.

mod support;

use clamgate::cache::{
    CacheEntry, CacheError, CachedVerdict, ContentKey, Hit, LockAttempt, ResourceEntry, ResourceId, Tier,
    VaryRecord, VerdictCache,
};
use clamgate::config::CacheConfig;
use std::time::{Duration, Instant};
use support::redis::{make_ca, tls_available, RedisProcess};

const REDIS_TIMEOUT_MS: u64 = 500;
/// A generous bound on any single failing call: far above the budget, far below a hang.
const FAIL_FAST: Duration = Duration::from_secs(5);

/// Whether to go on: false (after saying why) when this Redis cannot do TLS.
fn tls_or_skip(test: &str) -> bool {
    match tls_available() {
        Ok(()) => true,
        Err(reason) => {
            eprintln!("SKIPPED {test}: {reason}");
            false
        }
    }
}

fn config(url: String, ca_file: Option<&std::path::Path>) -> CacheConfig {
    CacheConfig {
        redis_url: Some(url.parse().expect("a Redis URL")),
        redis_tls_ca_file: ca_file.map(|path| path.to_string_lossy().to_string()),
        ttl_secs: 300,
        memory_max_entries: 100,
        memory_ttl_secs: 300,
        redis_timeout_ms: REDIS_TIMEOUT_MS,
        key_prefix: "clamgate-test:".to_string(),
        ..CacheConfig::default()
    }
}

fn infected() -> CacheEntry {
    CacheEntry {
        verdict: CachedVerdict::Infected { signature: "Eicar-Test-Signature".to_string() },
        engine_version: "1.4.6".to_string(),
        database_version: Some(27000),
        signature_epoch: 0,
        scanned_at_unix_secs: 1_767_225_600,
    }
}

/// Asserts that a lookup fails, as an error and within [`FAIL_FAST`]; returns the error.
async fn assert_lookup_fails_fast(what: &str, cache: &VerdictCache) -> CacheError {
    let started = Instant::now();
    let result = tokio::time::timeout(FAIL_FAST, cache.lookup(&ContentKey::of(b"abc"))).await;
    let result = result.unwrap_or_else(|_| panic!("{what}: lookup hung for {FAIL_FAST:?}"));
    assert!(started.elapsed() < FAIL_FAST, "{what}: took {:?}", started.elapsed());
    match result {
        Err(err) => {
            assert!(err.is_unavailability(), "{what}: unexpected error kind: {err}");
            err
        }
        Ok(found) => panic!("{what}: answered {found:?}"),
    }
}

#[tokio::test]
async fn entries_and_locks_round_trip_over_tls_with_the_configured_ca() {
    if !tls_or_skip("entries_and_locks_round_trip_over_tls_with_the_configured_ca") {
        return;
    }
    let redis = RedisProcess::start_tls();
    let cfg = config(redis.tls_url(), Some(redis.ca_file()));
    let (writer, reader) = (
        VerdictCache::from_config(&cfg).expect("from_config"),
        VerdictCache::from_config(&cfg).expect("from_config"),
    );
    assert_eq!(writer.kind(), "redis");

    let key = ContentKey::of(b"abc");
    assert_eq!(reader.lookup(&key).await.expect("lookup over TLS"), None);
    writer.put(&key, &infected()).await.expect("put over TLS");
    assert_eq!(
        reader.lookup(&key).await.expect("lookup"),
        Some(Hit { value: infected(), tier: Tier::Redis })
    );

    let resource_key = ResourceId::new("https", "example.org", 443, "/x.iso").key();
    let resource = ResourceEntry {
        validator: "immutable".to_string(),
        vary: VaryRecord::none(),
        content: key,
        entry: infected(),
    };
    writer.put_resource(&resource_key, &resource).await.expect("put_resource");
    let hit = reader.lookup_resource(&resource_key).await.expect("lookup_resource");
    assert_eq!(hit, Some(Hit { value: resource, tier: Tier::Redis }));

    let LockAttempt::Acquired(token) =
        writer.try_lock("content:x", Duration::from_secs(5)).await.expect("try_lock")
    else {
        panic!("acquire")
    };
    assert_eq!(
        reader.try_lock("content:x", Duration::from_secs(5)).await.expect("try_lock"),
        LockAttempt::HeldElsewhere
    );
    writer.unlock("content:x", &token).await.expect("unlock");
    assert!(!reader.lock_held("content:x").await.expect("lock_held"));

    // What was written is really there, as seen by redis-cli over TLS.
    let stored = redis.cli(&["GET", &format!("clamgate-test:v1:content:{}", key.hex())]);
    assert!(stored.starts_with(r#"{"v":2,"verdict":"infected""#), "{stored}");
}

#[tokio::test]
async fn a_wrong_ca_or_the_system_roots_fail_quickly() {
    if !tls_or_skip("a_wrong_ca_or_the_system_roots_fail_quickly") {
        return;
    }
    let redis = RedisProcess::start_tls();
    let other_dir = tempfile::tempdir().expect("temp dir");
    let wrong_ca = make_ca(other_dir.path(), "unrelated");

    let wrong = VerdictCache::from_config(&config(redis.tls_url(), Some(&wrong_ca))).expect("from_config");
    let err = assert_lookup_fails_fast("a CA that did not sign the server's certificate", &wrong).await;
    assert!(err.to_string().contains("UnknownIssuer"), "not a certificate error: {err}");
    let put = tokio::time::timeout(FAIL_FAST, wrong.put(&ContentKey::of(b"abc"), &infected())).await;
    assert!(put.expect("no hang").is_err());

    // Without redis_tls_ca_file the system's roots are used; they do not know the test CA.
    let system = VerdictCache::from_config(&config(redis.tls_url(), None)).expect("from_config");
    let err = assert_lookup_fails_fast("the system roots", &system).await;
    assert!(err.to_string().contains("UnknownIssuer"), "not a certificate error: {err}");

    // Plain TCP to the TLS port is no better.
    let plain = VerdictCache::from_config(&config(format!("redis://127.0.0.1:{}/", redis.port()), None))
        .expect("from_config");
    assert_lookup_fails_fast("plain TCP to the TLS port", &plain).await;

    // Nothing failed for lack of a server: the right CA works on the same server.
    let right =
        VerdictCache::from_config(&config(redis.tls_url(), Some(redis.ca_file()))).expect("from_config");
    assert_eq!(right.lookup(&ContentKey::of(b"abc")).await.expect("lookup"), None);
}
