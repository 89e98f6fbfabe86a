//! The verdict cache against a real `redis-server`: round trips, the TTL, sharing between
//! instances, Redis going away, hanging and coming back without clamgate restarting; the memory
//! tier in front of Redis; resource entries; the cross-instance lock; ACL users; the pool; the v2
//! format (epochs, briefly cached Unscanned entries, v1 still read) and HMAC-sealed values.
//!
//! The tests of the Redis tier itself turn the memory tier off (`memory_ttl_secs = 0`), so that
//! every call reaches Redis.

mod support;

use clamgate::cache::{
    decode_entry, decode_resource, encode_entry, CacheEntry, CacheError, CachedVerdict, ContentKey,
    DecodeError, Hit, LockAttempt, Rejection, ResourceEntry, ResourceId, Tier, VaryRecord, VerdictCache,
};
use clamgate::config::CacheConfig;
use clamgate::verdict::UnscannedReason;
use std::time::{Duration, Instant};
use support::redis::RedisProcess;

/// The per-call budget the tests configure.
const REDIS_TIMEOUT_MS: u64 = 200;
/// A generous bound on any single failing call: far above the budget, far below a hang.
const FAIL_FAST: Duration = Duration::from_secs(5);
/// How long the cache may take to notice that Redis is back.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(10);
const TTL_SECS: u64 = 300;

/// Redis alone: the memory tier is off.
fn config(url: &str, key_prefix: &str) -> CacheConfig {
    CacheConfig {
        redis_url: Some(url.parse().expect("a Redis URL")),
        ttl_secs: TTL_SECS,
        memory_max_entries: 10,
        memory_ttl_secs: 0,
        redis_timeout_ms: REDIS_TIMEOUT_MS,
        key_prefix: key_prefix.to_string(),
        ..CacheConfig::default()
    }
}

/// Both tiers: memory (for `memory_ttl_secs`) in front of Redis.
fn tiered_config(url: &str, memory_ttl_secs: u64) -> CacheConfig {
    CacheConfig { memory_ttl_secs, ..config(url, "clamgate-test:") }
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
        signature_epoch: 0,
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
    assert!(value.starts_with(br#"{"v":2,"#), "{}", String::from_utf8_lossy(&value));
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
        r#"{"v":3,"verdict":"clean","engine_version":"9","database_version":1,"scanned_at_unix_secs":1}"#;
    let _: () = redis::cmd("SET").arg(&name).arg(newer).query_async(&mut raw).await.expect("SET");
    let got = cache.get(&key).await;
    assert!(matches!(got, Err(CacheError::Decode(DecodeError::UnsupportedVersion(3)))), "{got:?}");

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

fn resource(validator: &str, entry: CacheEntry) -> ResourceEntry {
    ResourceEntry {
        validator: validator.to_string(),
        vary: VaryRecord::none(),
        content: ContentKey::of(b"abc"),
        entry,
    }
}

async fn raw_get(redis: &RedisProcess, name: &str) -> Option<Vec<u8>> {
    let mut raw = raw(redis).await;
    redis::cmd("GET").arg(name).query_async(&mut raw).await.expect("GET")
}

async fn raw_set(redis: &RedisProcess, name: &str, value: &[u8]) {
    let mut raw = raw(redis).await;
    let _: () = redis::cmd("SET").arg(name).arg(value).query_async(&mut raw).await.expect("SET");
}

async fn raw_del(redis: &RedisProcess, name: &str) {
    let mut raw = raw(redis).await;
    let _: i64 = redis::cmd("DEL").arg(name).query_async(&mut raw).await.expect("DEL");
}

fn tiered(redis: &RedisProcess, memory_ttl_secs: u64) -> VerdictCache {
    let cache =
        VerdictCache::from_config(&tiered_config(&redis.url(), memory_ttl_secs)).expect("from_config");
    assert_eq!(cache.kind(), "redis");
    assert!(cache.is_shared());
    cache
}

const ABC_CONTENT_KEY: &str =
    "clamgate-test:v1:content:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

#[tokio::test]
async fn a_redis_hit_fills_the_memory_tier_and_the_next_hit_comes_from_memory() {
    let redis = RedisProcess::start();
    let writer = tiered(&redis, 300);
    let reader = tiered(&redis, 300);
    let key = ContentKey::of(b"abc");

    assert_eq!(reader.lookup(&key).await.expect("lookup"), None);
    writer.put(&key, &infected()).await.expect("put");
    // The writer has it in memory; the other instance finds it in Redis, then in its memory.
    assert_eq!(
        writer.lookup(&key).await.expect("lookup"),
        Some(Hit { value: infected(), tier: Tier::Memory })
    );
    assert_eq!(
        reader.lookup(&key).await.expect("lookup"),
        Some(Hit { value: infected(), tier: Tier::Redis })
    );
    assert_eq!(
        reader.lookup(&key).await.expect("lookup"),
        Some(Hit { value: infected(), tier: Tier::Memory })
    );

    // Served from memory indeed: Redis no longer has it, the reader still answers.
    raw_del(&redis, ABC_CONTENT_KEY).await;
    assert_eq!(
        reader.lookup(&key).await.expect("lookup"),
        Some(Hit { value: infected(), tier: Tier::Memory })
    );
    assert_eq!(reader.get(&key).await.expect("get"), Some(infected()), "get is lookup without the tier");
    let third = tiered(&redis, 300);
    assert_eq!(third.lookup(&key).await.expect("lookup"), None);
}

#[tokio::test]
async fn a_write_goes_to_both_tiers() {
    let redis = RedisProcess::start();
    let cache = tiered(&redis, 300);
    let key = ContentKey::of(b"abc");
    cache.put(&key, &clean()).await.expect("put");
    let stored = raw_get(&redis, ABC_CONTENT_KEY).await.expect("the entry is in Redis");
    assert_eq!(decode_entry(&stored).expect("decode"), clean());
    // And in memory: with Redis gone, the entry is still answered, from memory.
    raw_del(&redis, ABC_CONTENT_KEY).await;
    assert_eq!(cache.lookup(&key).await.expect("lookup"), Some(Hit { value: clean(), tier: Tier::Memory }));
}

#[tokio::test]
async fn the_memory_tier_keeps_entries_only_memory_ttl_secs() {
    let redis = RedisProcess::start();
    let cache = tiered(&redis, 1);
    let key = ContentKey::of(b"abc");
    cache.put(&key, &clean()).await.expect("put");
    // Another instance replaces the verdict in Redis; this one keeps its memory hit for now...
    raw_set(&redis, ABC_CONTENT_KEY, &clamgate::cache::encode_entry(&infected())).await;
    assert_eq!(cache.lookup(&key).await.expect("lookup"), Some(Hit { value: clean(), tier: Tier::Memory }));
    // ...and sees the new one once its memory entry expires (the only sleep here: it is the TTL
    // under test).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(cache.lookup(&key).await.expect("lookup"), Some(Hit { value: infected(), tier: Tier::Redis }));
    assert_eq!(
        cache.lookup(&key).await.expect("lookup"),
        Some(Hit { value: infected(), tier: Tier::Memory })
    );
}

#[tokio::test]
async fn with_redis_stopped_the_memory_tier_still_answers_what_it_has() {
    let mut redis = RedisProcess::start();
    let cache = tiered(&redis, 300);
    let (known, unknown) = (ContentKey::of(b"seen before"), ContentKey::of(b"never seen"));
    let resource_key = ResourceId::new("http", "example.org", 80, "/seen").key();
    cache.put(&known, &infected()).await.expect("put");
    cache.put_resource(&resource_key, &resource("immutable", clean())).await.expect("put_resource");

    redis.stop();
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(
            cache.lookup(&known).await.expect("memory hit"),
            Some(Hit { value: infected(), tier: Tier::Memory })
        );
        let hit = cache.lookup_resource(&resource_key).await.expect("memory hit");
        assert_eq!(hit, Some(Hit { value: resource("immutable", clean()), tier: Tier::Memory }));
        assert!(
            started.elapsed() < Duration::from_millis(REDIS_TIMEOUT_MS),
            "memory hits must not wait for Redis"
        );
        // What memory lacks is a bounded error, for the caller to count as a miss.
        assert_fails_fast("lookup", cache.lookup(&unknown)).await;
    }
    // A write while Redis is away still lands in memory, and reports that Redis did not take it.
    assert_fails_fast("put", cache.put(&unknown, &clean())).await;
    assert_eq!(
        cache.lookup(&unknown).await.expect("memory hit"),
        Some(Hit { value: clean(), tier: Tier::Memory })
    );
}

#[tokio::test]
async fn resource_entries_round_trip_with_the_documented_key_and_value() {
    let redis = RedisProcess::start();
    let writer = VerdictCache::from_config(&config(&redis.url(), "clamgate-test:")).expect("from_config");
    let reader = tiered(&redis, 300);
    let key = ResourceId::from_request("https", "Example.ORG", "/a?b=1").expect("identity").key();
    let entry = resource("etag:\"abc\"", infected());

    assert_eq!(reader.lookup_resource(&key).await.expect("lookup"), None);
    writer.put_resource(&key, &entry).await.expect("put_resource");

    // printf 'clamgate-resource-v2\nhttps\nexample.org\n443\n/a?b=1' | sha256sum
    let name = "clamgate-test:v2:resource:83da673cd5487561aa378b6b0436afb9c6a8848e3ee630974720df90c671d334";
    let value = raw_get(&redis, name).await.expect("the resource entry is in Redis");
    assert_eq!(
        String::from_utf8_lossy(&value),
        r#"{"v":2,"validator":"etag:\"abc\"","vary":[],"vary_sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","verdict":"infected","signature":"Eicar-Test-Signature","engine_version":"1.4.6","database_version":null,"signature_epoch":0,"scanned_at_unix_secs":1767225600}"#
    );
    assert_eq!(decode_resource(&value).expect("decode"), entry);
    let mut raw_connection = raw(&redis).await;
    let ttl: i64 = redis::cmd("TTL").arg(name).query_async(&mut raw_connection).await.expect("TTL");
    assert!((TTL_SECS as i64 - 10..=TTL_SECS as i64).contains(&ttl), "TTL {ttl}");

    assert_eq!(
        reader.lookup_resource(&key).await.expect("lookup"),
        Some(Hit { value: entry.clone(), tier: Tier::Redis })
    );
    assert_eq!(
        reader.lookup_resource(&key).await.expect("lookup"),
        Some(Hit { value: entry, tier: Tier::Memory })
    );
    // A newer version of the object replaces the entry.
    let newer = resource("etag:\"def\"", clean());
    writer.put_resource(&key, &newer).await.expect("put_resource");
    assert_eq!(
        writer.lookup_resource(&key).await.expect("lookup"),
        Some(Hit { value: newer, tier: Tier::Redis })
    );
    // A verified hit that did not match deletes the entry from both tiers.
    writer.delete_resource(&key).await.expect("delete_resource");
    assert_eq!(raw_get(&redis, name).await, None, "deleted from Redis");
    assert_eq!(writer.lookup_resource(&key).await.expect("lookup"), None, "and from memory");
    writer.delete_resource(&key).await.expect("deleting an absent entry is no error");
    // A content entry and a resource entry never read each other's values.
    raw_set(&redis, name, &clamgate::cache::encode_entry(&clean())).await;
    assert!(matches!(writer.lookup_resource(&key).await, Err(CacheError::Decode(_))));
}

#[tokio::test]
async fn locks_are_exclusive_and_only_their_holder_releases_them() {
    let redis = RedisProcess::start();
    let first = tiered(&redis, 300);
    let second = tiered(&redis, 300);
    let object = "content:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let name = format!("clamgate-test:v1:lock:{object}");
    let ttl = Duration::from_secs(30);

    assert!(!first.lock_held(object).await.expect("lock_held"));
    let LockAttempt::Acquired(token) = first.try_lock(object, ttl).await.expect("try_lock") else {
        panic!("the first attempt must acquire the lock")
    };
    assert_eq!(token.as_str().len(), 32);
    let stored = raw_get(&redis, &name).await.expect("the lock key exists");
    assert_eq!(stored, token.as_str().as_bytes());
    let mut raw_connection = raw(&redis).await;
    let pttl: i64 = redis::cmd("PTTL").arg(&name).query_async(&mut raw_connection).await.expect("PTTL");
    assert!((25_000..=30_000).contains(&pttl), "PTTL {pttl}");

    assert_eq!(second.try_lock(object, ttl).await.expect("try_lock"), LockAttempt::HeldElsewhere);
    assert_eq!(
        first.try_lock(object, ttl).await.expect("try_lock"),
        LockAttempt::HeldElsewhere,
        "not reentrant"
    );
    assert!(second.lock_held(object).await.expect("lock_held"));
    // Other objects are not affected.
    assert!(matches!(second.try_lock("content:other", ttl).await, Ok(LockAttempt::Acquired(_))));

    first.unlock(object, &token).await.expect("unlock");
    assert!(!second.lock_held(object).await.expect("lock_held"));
    assert_eq!(raw_get(&redis, &name).await, None);
    let LockAttempt::Acquired(second_token) = second.try_lock(object, ttl).await.expect("try_lock") else {
        panic!("a released lock can be taken")
    };
    assert_ne!(second_token, token);
    // The first holder, late, unlocking with its old token must not release the second's lock.
    first.unlock(object, &token).await.expect("a stale unlock is not an error");
    assert!(first.lock_held(object).await.expect("lock_held"));
    assert_eq!(raw_get(&redis, &name).await.as_deref(), Some(second_token.as_str().as_bytes()));
    second.unlock(object, &second_token).await.expect("unlock");
    assert!(!first.lock_held(object).await.expect("lock_held"));
}

#[tokio::test]
async fn a_lock_whose_holder_dies_expires_after_its_ttl() {
    let redis = RedisProcess::start();
    let dead_holder = tiered(&redis, 300);
    let waiter = tiered(&redis, 300);
    let object = "content:dead-holder";
    let ttl = Duration::from_millis(300);
    let LockAttempt::Acquired(stale_token) = dead_holder.try_lock(object, ttl).await.expect("try_lock")
    else {
        panic!("acquire")
    };
    drop(dead_holder); // never unlocks
    assert_eq!(waiter.try_lock(object, ttl).await.expect("try_lock"), LockAttempt::HeldElsewhere);
    let started = Instant::now();
    while waiter.lock_held(object).await.expect("lock_held") {
        assert!(started.elapsed() < Duration::from_secs(5), "the lock did not expire");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(150), "expired too early: {:?}", started.elapsed());
    let LockAttempt::Acquired(token) =
        waiter.try_lock(object, Duration::from_secs(30)).await.expect("try_lock")
    else {
        panic!("an expired lock can be taken")
    };
    assert_ne!(token, stale_token);
}

#[tokio::test]
async fn lock_calls_fail_fast_while_redis_is_away() {
    let mut redis = RedisProcess::start();
    let cache = tiered(&redis, 300);
    redis.stop();
    assert_fails_fast("try_lock", cache.try_lock("content:x", Duration::from_secs(30))).await;
    assert_fails_fast("lock_held", cache.lock_held("content:x")).await;
    redis.start_again();
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    loop {
        match cache.try_lock("content:x", Duration::from_secs(30)).await {
            Ok(attempt) => break assert!(matches!(attempt, LockAttempt::Acquired(_)), "{attempt:?}"),
            Err(err) => {
                assert!(err.is_unavailability() && Instant::now() < deadline, "no recovery: {err}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn acl_user_and_password_from_the_config_override_the_url() {
    let redis = RedisProcess::start_with_args(&["--requirepass", "admin-pw"]);
    // Exactly the commands the cache documents, on its own keys only.
    redis.add_acl_user(
        "clamgate",
        "user-pw",
        "clamgate-test:*",
        &["+get", "+set", "+exists", "+eval", "+del"],
    );
    let url_with_wrong_credentials = format!("redis://nobody:wrong@127.0.0.1:{}/", redis.port());
    let cfg = CacheConfig {
        redis_username: Some("clamgate".to_string()),
        redis_password: Some("user-pw".to_string()),
        ..config(&url_with_wrong_credentials, "clamgate-test:")
    };
    let cache = VerdictCache::from_config(&cfg).expect("from_config");
    let debug = format!("{cache:?}");
    assert!(!debug.contains("user-pw") && !debug.contains("wrong"), "{debug}");
    let key = ContentKey::of(b"abc");
    assert_eq!(cache.get(&key).await.expect("get as the ACL user"), None);
    cache.put(&key, &infected()).await.expect("put");
    assert_eq!(cache.get(&key).await.expect("get"), Some(infected()));
    let resource_key = ResourceId::new("http", "example.org", 80, "/x").key();
    cache.put_resource(&resource_key, &resource("immutable", clean())).await.expect("put_resource");
    let LockAttempt::Acquired(token) =
        cache.try_lock("content:x", Duration::from_secs(5)).await.expect("try_lock")
    else {
        panic!("acquire")
    };
    assert!(cache.lock_held("content:x").await.expect("lock_held"));
    cache.unlock("content:x", &token).await.expect("unlock (EVAL with GET and DEL)");
    assert!(!cache.lock_held("content:x").await.expect("lock_held"));
    // Written as that user: the default user sees them with its own password.
    let keys = redis.cli(&["KEYS", "clamgate-test:*"]);
    assert!(keys.contains(ABC_CONTENT_KEY), "{keys}");

    // The URL's password alone is used when the config sets none.
    let url_password = CacheConfig {
        redis_url: Some(
            format!("redis://clamgate:user-pw@127.0.0.1:{}/", redis.port()).parse().expect("a Redis URL"),
        ),
        ..config(&redis.url(), "clamgate-test:")
    };
    let by_url = VerdictCache::from_config(&url_password).expect("from_config");
    assert_eq!(by_url.get(&key).await.expect("get with the URL's credentials"), Some(infected()));
}

#[tokio::test]
async fn a_wrong_password_is_a_quick_error_never_a_verdict() {
    let redis = RedisProcess::start_with_args(&["--requirepass", "admin-pw"]);
    redis.add_acl_user("clamgate", "user-pw", "clamgate-test:*", &["+@all"]);
    let key = ContentKey::of(b"abc");
    for (username, password) in [(Some("clamgate"), "not-it"), (None, "not-the-admin-pw")] {
        let cfg = CacheConfig {
            redis_username: username.map(str::to_string),
            redis_password: Some(password.to_string()),
            ..config(&redis.url(), "clamgate-test:")
        };
        let cache = VerdictCache::from_config(&cfg).expect("from_config");
        let err = assert_fails_fast("get", cache.get(&key)).await;
        assert!(!err.to_string().contains(password), "the error shows the password: {err}");
        assert_fails_fast("put", cache.put(&key, &clean())).await;
        assert_fails_fast("try_lock", cache.try_lock("content:x", Duration::from_secs(5))).await;
    }
    // No password at all: NOAUTH, an error too.
    let cache = VerdictCache::from_config(&config(&redis.url(), "clamgate-test:")).expect("from_config");
    let got = tokio::time::timeout(FAIL_FAST, cache.get(&key)).await.expect("no hang");
    assert!(got.is_err(), "{got:?}");
}

#[tokio::test]
async fn a_pool_of_four_uses_four_connections_and_stays_correct_under_concurrency() {
    let redis = RedisProcess::start();
    let cfg = CacheConfig { redis_pool_size: 4, ..config(&redis.url(), "clamgate-test:") };
    let cache = std::sync::Arc::new(VerdictCache::from_config(&cfg).expect("from_config"));
    let mut tasks = Vec::new();
    for n in 0..64u32 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            let key = ContentKey::of(&n.to_le_bytes());
            let entry = CacheEntry { scanned_at_unix_secs: u64::from(n), ..clean() };
            cache.put(&key, &entry).await.expect("put");
            assert_eq!(cache.get(&key).await.expect("get"), Some(entry));
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let mut raw_connection = raw(&redis).await;
    let own_id: i64 =
        redis::cmd("CLIENT").arg("ID").query_async(&mut raw_connection).await.expect("CLIENT ID");
    let list: String =
        redis::cmd("CLIENT").arg("LIST").query_async(&mut raw_connection).await.expect("CLIENT LIST");
    let others = list.lines().filter(|line| !line.starts_with(&format!("id={own_id} "))).count();
    assert_eq!(others, 4, "the cache should hold exactly its 4 pooled connections:\n{list}");
    let size: i64 = redis::cmd("DBSIZE").query_async(&mut raw_connection).await.expect("DBSIZE");
    assert_eq!(size, 64);
}

// --- Format v2: epochs, briefly cached Unscanned entries, authenticated values ------------------

fn bomb() -> CacheEntry {
    CacheEntry { verdict: CachedVerdict::Unscanned { reason: UnscannedReason::LimitsExceeded }, ..clean() }
}

async fn ttl_of(redis: &RedisProcess, name: &str) -> i64 {
    let mut raw = raw(redis).await;
    redis::cmd("TTL").arg(name).query_async(&mut raw).await.expect("TTL")
}

#[tokio::test]
async fn entries_written_by_an_older_clamgate_still_read_as_signature_epoch_0() {
    let redis = RedisProcess::start();
    let cache = cache(&redis);
    let v1 = br#"{"v":1,"verdict":"clean","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":1767225600}"#;
    raw_set(&redis, ABC_CONTENT_KEY, v1).await;
    assert_eq!(cache.get(&ContentKey::of(b"abc")).await.expect("get"), Some(clean()));
    // (Resource entries of v1 live under keys this version never computes: scheme, port and Vary
    // joined the identity in v2.)

    // What this build writes carries its epoch.
    let epoch_5 = CacheEntry { signature_epoch: 5, ..clean() };
    cache.put(&ContentKey::of(b"abc"), &epoch_5).await.expect("put");
    let stored = raw_get(&redis, ABC_CONTENT_KEY).await.expect("stored");
    assert!(String::from_utf8_lossy(&stored).contains(r#""signature_epoch":5"#));
    assert_eq!(cache.get(&ContentKey::of(b"abc")).await.expect("get"), Some(epoch_5));
}

#[tokio::test]
async fn unscanned_entries_live_unscanned_ttl_secs_and_never_under_resource_keys() {
    let redis = RedisProcess::start();
    let cfg = CacheConfig { unscanned_ttl_secs: 60, ..config(&redis.url(), "clamgate-test:") };
    let cache = VerdictCache::from_config(&cfg).expect("from_config");
    let key = ContentKey::of(b"abc");
    cache.put(&key, &bomb()).await.expect("put");
    let ttl = ttl_of(&redis, ABC_CONTENT_KEY).await;
    assert!((50..=60).contains(&ttl), "TTL {ttl}: unscanned_ttl_secs, not ttl_secs");
    assert_eq!(cache.get(&key).await.expect("get"), Some(bomb()));
    let stored = raw_get(&redis, ABC_CONTENT_KEY).await.expect("stored");
    assert!(stored.starts_with(br#"{"v":2,"verdict":"unscanned","reason":"limits_exceeded","#));

    let resource_key = ResourceId::new("http", "example.org", 80, "/bomb.gz").key();
    cache.put_resource(&resource_key, &resource("immutable", bomb())).await.expect("put_resource");
    let mut raw_connection = raw(&redis).await;
    let keys: Vec<String> =
        redis::cmd("KEYS").arg("*resource*").query_async(&mut raw_connection).await.expect("KEYS");
    assert!(keys.is_empty(), "an unscanned verdict under a resource key: {keys:?}");

    // An instance with them off neither writes nor uses them.
    let off = CacheConfig { unscanned_ttl_secs: 0, ..cfg };
    let off = VerdictCache::from_config(&off).expect("from_config");
    assert_eq!(off.get(&key).await.expect("get"), None);
    let other = ContentKey::of(b"other bomb");
    off.put(&other, &bomb()).await.expect("put");
    assert_eq!(cache.get(&other).await.expect("get"), None);
}

/// A cache of Redis alone with the key in `current` (and `previous`), files in `dir`.
fn keyed(
    redis: &RedisProcess,
    dir: &tempfile::TempDir,
    current: &str,
    previous: Option<&str>,
) -> VerdictCache {
    let file = |key: &str| {
        let path = dir.path().join(format!("{}.key", &key[..1]));
        std::fs::write(&path, format!("{key}\n")).expect("key file");
        Some(path.to_string_lossy().to_string())
    };
    let cfg = CacheConfig {
        hmac_key_file: file(current),
        hmac_previous_key_file: previous.and_then(file),
        ..config(&redis.url(), "clamgate-test:")
    };
    VerdictCache::from_config(&cfg).expect("from_config")
}

const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const KEY_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn is_rejected(result: Result<impl std::fmt::Debug, CacheError>, key: &str, reason: Rejection) -> bool {
    matches!(result, Err(CacheError::Rejected { key: k, reason: r }) if k == key && r == reason)
}

#[tokio::test]
async fn with_an_hmac_key_values_are_sealed_and_anything_else_is_rejected() {
    let redis = RedisProcess::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = keyed(&redis, &dir, KEY_A, None);
    let key = ContentKey::of(b"abc");
    cache.put(&key, &infected()).await.expect("put");
    let stored = raw_get(&redis, ABC_CONTENT_KEY).await.expect("stored");
    let text = String::from_utf8_lossy(&stored).to_string();
    assert!(
        text.starts_with("hmac-sha256:") && text[12..76].bytes().all(|b| b.is_ascii_hexdigit()),
        "{text}"
    );
    assert_eq!(&text[76..77], ":");
    assert_eq!(decode_entry(&stored[77..]).expect("the entry after the tag"), infected());
    assert_eq!(cache.get(&key).await.expect("get"), Some(infected()));

    // Bare, as redis-cli or an instance without the key writes it.
    raw_set(&redis, ABC_CONTENT_KEY, &encode_entry(&clean())).await;
    assert!(is_rejected(cache.get(&key).await, "content", Rejection::MissingTag));
    // Tampered: the verdict changed after sealing.
    let tampered =
        text.replace(r#""verdict":"infected","signature":"Eicar-Test-Signature""#, r#""verdict":"clean""#);
    raw_set(&redis, ABC_CONTENT_KEY, tampered.as_bytes()).await;
    assert!(is_rejected(cache.get(&key).await, "content", Rejection::BadTag));
    // A genuine value moved to another key.
    let other = ContentKey::of(b"clean file");
    cache.put(&other, &clean()).await.expect("put");
    let genuine =
        raw_get(&redis, &format!("clamgate-test:v1:content:{}", other.hex())).await.expect("stored");
    raw_set(&redis, ABC_CONTENT_KEY, &genuine).await;
    assert!(is_rejected(cache.get(&key).await, "content", Rejection::BadTag));
    // Sealed with another key.
    keyed(&redis, &dir, KEY_B, None).put(&key, &clean()).await.expect("put");
    assert!(is_rejected(cache.get(&key).await, "content", Rejection::BadTag));

    // Resource entries too.
    // printf 'clamgate-resource-v2\nhttps\nexample.org\n443\n/a?b=1' | sha256sum
    let resource_key = ResourceId::new("https", "Example.ORG", 443, "/a?b=1").key();
    let name = "clamgate-test:v2:resource:83da673cd5487561aa378b6b0436afb9c6a8848e3ee630974720df90c671d334";
    cache.put_resource(&resource_key, &resource("immutable", clean())).await.expect("put_resource");
    assert!(raw_get(&redis, name).await.expect("stored").starts_with(b"hmac-sha256:"));
    assert!(cache.lookup_resource(&resource_key).await.expect("lookup").is_some());
    raw_set(&redis, name, &clamgate::cache::encode_resource(&resource("immutable", clean()))).await;
    assert!(is_rejected(cache.lookup_resource(&resource_key).await, "resource", Rejection::MissingTag));
}

#[tokio::test]
async fn a_rejected_value_never_reaches_the_memory_tier() {
    let redis = RedisProcess::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = CacheConfig { memory_ttl_secs: 300, ..config(&redis.url(), "clamgate-test:") };
    let path = dir.path().join("key");
    std::fs::write(&path, KEY_A).expect("key file");
    let cfg = CacheConfig { hmac_key_file: Some(path.to_string_lossy().to_string()), ..cfg };
    let cache = VerdictCache::from_config(&cfg).expect("from_config");
    let key = ContentKey::of(b"abc");
    raw_set(&redis, ABC_CONTENT_KEY, &encode_entry(&clean())).await;
    for _ in 0..2 {
        assert!(is_rejected(cache.lookup(&key).await, "content", Rejection::MissingTag));
    }
}

#[tokio::test]
async fn a_key_rotation_reads_the_previous_key_and_writes_the_new_one() {
    let redis = RedisProcess::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let old = keyed(&redis, &dir, KEY_A, None);
    let key = ContentKey::of(b"abc");
    old.put(&key, &infected()).await.expect("put");

    let rotating = keyed(&redis, &dir, KEY_B, Some(KEY_A));
    assert_eq!(rotating.get(&key).await.expect("get with the previous key"), Some(infected()));
    rotating.put(&key, &clean()).await.expect("put");
    // Written with the new key: the old instance no longer reads it, a finished rotation does.
    assert!(is_rejected(old.get(&key).await, "content", Rejection::BadTag));
    assert_eq!(keyed(&redis, &dir, KEY_B, None).get(&key).await.expect("get"), Some(clean()));

    // An instance without a key reads sealed values unchecked and writes bare ones.
    let keyless = cache(&redis);
    assert_eq!(keyless.get(&key).await.expect("get"), Some(clean()));
    keyless.put(&key, &infected()).await.expect("put");
    assert!(is_rejected(rotating.get(&key).await, "content", Rejection::MissingTag));
}
