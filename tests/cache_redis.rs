//! The Redis verdict cache against a real `redis-server`: round trips, the TTL, sharing between
//! instances, and Redis going away, hanging and coming back without clamgate restarting.

mod support;

use clamgate::cache::{
    decode_entry, CacheEntry, CacheError, CachedVerdict, ContentKey, DecodeError, VerdictCache,
};
use clamgate::config::CacheConfig;
use std::time::{Duration, Instant};
use support::redis::RedisProcess;

/// The per-call budget the tests configure.
const REDIS_TIMEOUT_MS: u64 = 200;
/// A generous bound on any single failing call: far above the budget, far below a hang.
const FAIL_FAST: Duration = Duration::from_secs(5);
/// How long the cache may take to notice that Redis is back.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(10);
const TTL_SECS: u64 = 300;

fn config(url: &str, key_prefix: &str) -> CacheConfig {
    CacheConfig {
        redis_url: Some(url.to_string()),
        ttl_secs: TTL_SECS,
        memory_max_entries: 10,
        redis_timeout_ms: REDIS_TIMEOUT_MS,
        key_prefix: key_prefix.to_string(),
    }
}

fn cache(redis: &RedisProcess) -> VerdictCache {
    let cache = VerdictCache::from_config(&config(&redis.url(), "clamgate-test:")).expect("from_config");
    assert_eq!(cache.kind(), "redis");
    cache
}

fn clean() -> CacheEntry {
    CacheEntry {
        verdict: CachedVerdict::Clean,
        engine_version: "1.4.6".to_string(),
        database_version: Some(27000),
        scanned_at_unix_secs: 1_767_225_600,
    }
}

fn infected() -> CacheEntry {
    CacheEntry {
        verdict: CachedVerdict::Infected { signature: "Eicar-Test-Signature".to_string() },
        database_version: None,
        ..clean()
    }
}

/// A raw connection, to look at what clamgate wrote the way an operator would.
async fn raw(redis: &RedisProcess) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

/// Polls `get` until Redis answers (a hit or a miss), or panics at the deadline.
async fn wait_until_answering(cache: &VerdictCache, key: &ContentKey) -> Option<CacheEntry> {
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    loop {
        let answer = tokio::time::timeout(FAIL_FAST, cache.get(key)).await;
        let answer = answer.unwrap_or_else(|_| panic!("get hung for {FAIL_FAST:?}"));
        match answer {
            Ok(found) => return found,
            Err(err) if Instant::now() < deadline => {
                assert!(err.is_unavailability(), "unexpected error while waiting: {err}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => panic!("cache did not recover within {RECOVERY_DEADLINE:?}: {err}"),
        }
    }
}

/// Asserts that `call` fails as "Redis unavailable" and within [`FAIL_FAST`].
async fn assert_fails_fast<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, CacheError>>,
) -> CacheError {
    let started = Instant::now();
    // Bounded here too, so that a hang fails the test instead of stalling it.
    let result = tokio::time::timeout(FAIL_FAST, call).await;
    let elapsed = started.elapsed();
    let result = result.unwrap_or_else(|_| panic!("{what} hung for {FAIL_FAST:?}"));
    assert!(elapsed < FAIL_FAST, "{what} took {elapsed:?}");
    match result {
        Err(err) => {
            assert!(err.is_unavailability(), "{what}: unexpected error kind: {err}");
            err
        }
        Ok(value) => panic!("{what} succeeded with Redis away: {value:?}"),
    }
}

#[tokio::test]
async fn round_trips_clean_and_infected_entries() {
    let redis = RedisProcess::start();
    let cache = cache(&redis);
    let (a, b) = (ContentKey::of(b"clean body"), ContentKey::of(b"infected body"));

    assert_eq!(cache.get(&a).await.expect("get"), None);
    cache.put(&a, &clean()).await.expect("put clean");
    cache.put(&b, &infected()).await.expect("put infected");
    assert_eq!(cache.get(&a).await.expect("get"), Some(clean()));
    assert_eq!(cache.get(&b).await.expect("get"), Some(infected()));
    assert_eq!(cache.get(&ContentKey::of(b"never seen")).await.expect("get"), None);

    // A later verdict for the same content replaces the earlier one.
    cache.put(&a, &infected()).await.expect("overwrite");
    assert_eq!(cache.get(&a).await.expect("get"), Some(infected()));
}

#[tokio::test]
async fn writes_the_documented_key_and_value_with_the_ttl() {
    let redis = RedisProcess::start();
    let cache = cache(&redis);
    let key = ContentKey::of(b"abc");
    cache.put(&key, &infected()).await.expect("put");

    let name = "clamgate-test:v1:content:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let mut raw = raw(&redis).await;
    let ttl: i64 = redis::cmd("TTL").arg(name).query_async(&mut raw).await.expect("TTL");
    assert!((TTL_SECS as i64 - 10..=TTL_SECS as i64).contains(&ttl), "TTL {ttl}, expected about {TTL_SECS}");
    let value: Vec<u8> = redis::cmd("GET").arg(name).query_async(&mut raw).await.expect("GET");
    assert!(value.starts_with(br#"{"v":1,"#), "{}", String::from_utf8_lossy(&value));
    assert_eq!(decode_entry(&value).expect("decode"), infected());
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut raw).await.expect("KEYS");
    assert_eq!(keys, vec![name.to_string()]);
}

#[tokio::test]
async fn unreadable_values_are_decode_errors_not_entries() {
    let redis = RedisProcess::start();
    let cache = cache(&redis);
    let key = ContentKey::of(b"written by someone else");
    let name = format!("clamgate-test:v1:content:{}", key.hex());
    let mut raw = raw(&redis).await;

    let _: () = redis::cmd("SET").arg(&name).arg("garbage").query_async(&mut raw).await.expect("SET");
    let got = cache.get(&key).await;
    assert!(matches!(got, Err(CacheError::Decode(DecodeError::Malformed(_)))), "{got:?}");

    let newer =
        r#"{"v":2,"verdict":"clean","engine_version":"9","database_version":1,"scanned_at_unix_secs":1}"#;
    let _: () = redis::cmd("SET").arg(&name).arg(newer).query_async(&mut raw).await.expect("SET");
    let got = cache.get(&key).await;
    assert!(matches!(got, Err(CacheError::Decode(DecodeError::UnsupportedVersion(2)))), "{got:?}");

    // A decode error is an answer, not an outage: the next write and read work at once.
    cache.put(&key, &clean()).await.expect("put");
    assert_eq!(cache.get(&key).await.expect("get"), Some(clean()));
}

#[tokio::test]
async fn instances_share_entries_and_prefixes_separate_them() {
    let redis = RedisProcess::start();
    let first = cache(&redis);
    let second = cache(&redis);
    let key = ContentKey::of(b"uploaded once");

    first.put(&key, &infected()).await.expect("put");
    assert_eq!(second.get(&key).await.expect("get"), Some(infected()));

    let other_deployment =
        VerdictCache::from_config(&config(&redis.url(), "elsewhere:")).expect("from_config");
    assert_eq!(other_deployment.get(&key).await.expect("get"), None);
}

#[tokio::test]
async fn a_stopped_redis_fails_fast_and_the_cache_recovers_by_itself() {
    let mut redis = RedisProcess::start();
    let cache = cache(&redis);
    let key = ContentKey::of(b"body");
    cache.put(&key, &clean()).await.expect("put");
    assert_eq!(cache.get(&key).await.expect("get"), Some(clean()));

    redis.stop();
    for _ in 0..5 {
        assert_fails_fast("get", cache.get(&key)).await;
        assert_fails_fast("put", cache.put(&key, &clean())).await;
    }

    redis.start_again();
    // The restarted server is empty (no persistence): the first answer is a miss.
    assert_eq!(wait_until_answering(&cache, &key).await, None);
    cache.put(&key, &infected()).await.expect("put after recovery");
    assert_eq!(cache.get(&key).await.expect("get after recovery"), Some(infected()));
}

#[tokio::test]
async fn a_hung_redis_times_out_and_the_cache_recovers_by_itself() {
    let redis = RedisProcess::start();
    let cache = cache(&redis);
    let key = ContentKey::of(b"body");
    cache.put(&key, &clean()).await.expect("put");

    redis.freeze();
    let started = Instant::now();
    let err = assert_fails_fast("get", cache.get(&key)).await;
    assert!(matches!(err, CacheError::Timeout), "{err}");
    // The budget was spent waiting, not skipped.
    assert!(started.elapsed() >= Duration::from_millis(REDIS_TIMEOUT_MS) / 2);
    assert_fails_fast("put", cache.put(&key, &infected())).await;

    redis.thaw();
    // The entry survived: the server was only paused. The write made while it was frozen may
    // or may not have been applied when it resumed, so either verdict is a correct answer.
    let found = wait_until_answering(&cache, &key).await;
    assert!(matches!(found, Some(ref e) if *e == clean() || *e == infected()), "{found:?}");
    cache.put(&key, &clean()).await.expect("put after recovery");
    assert_eq!(cache.get(&key).await.expect("get after recovery"), Some(clean()));
}

#[tokio::test]
async fn starts_without_redis_and_uses_it_once_it_appears() {
    let mut redis = RedisProcess::start();
    redis.stop();
    let started = Instant::now();
    let cache = cache(&redis);
    assert!(started.elapsed() < Duration::from_secs(1), "from_config waited for Redis");
    let key = ContentKey::of(b"body");

    assert_fails_fast("get", cache.get(&key)).await;
    assert_fails_fast("put", cache.put(&key, &clean())).await;

    redis.start_again();
    assert_eq!(wait_until_answering(&cache, &key).await, None);
    cache.put(&key, &clean()).await.expect("put");
    assert_eq!(cache.get(&key).await.expect("get"), Some(clean()));
}
