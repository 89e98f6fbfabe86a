//! The verdict cache on a real 3-master Redis Cluster: two clamgate instances share content and
//! resource entries and locks through it, the keys really spread over the masters, and a master
//! going away costs bounded errors, not hangs, until it is back.

mod support;

use clamgate::cache::{
    decode_entry, decode_resource, CacheEntry, CacheError, CachedVerdict, ContentKey, Hit, LockAttempt,
    ResourceEntry, ResourceId, Tier, VaryRecord, VerdictCache,
};
use clamgate::config::CacheConfig;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::redis::RedisCluster;

const REDIS_TIMEOUT_MS: u64 = 300;
/// A generous bound on any single failing call: far above the budget, far below a hang.
const FAIL_FAST: Duration = Duration::from_secs(5);
/// How long the cache may take to use a master again once the cluster is whole.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(15);
const PREFIX: &str = "clamgate-test:";

fn config(urls: Vec<String>) -> CacheConfig {
    CacheConfig {
        redis_cluster_urls: urls.iter().map(|url| url.parse().expect("a Redis URL")).collect(),
        ttl_secs: 300,
        memory_max_entries: 1000,
        memory_ttl_secs: 300,
        redis_timeout_ms: REDIS_TIMEOUT_MS,
        key_prefix: PREFIX.to_string(),
        ..CacheConfig::default()
    }
}

fn instance(cluster: &RedisCluster) -> VerdictCache {
    let cache = VerdictCache::from_config(&config(cluster.urls())).expect("from_config");
    assert_eq!(cache.kind(), "redis_cluster");
    assert!(cache.is_shared());
    cache
}

fn entry(n: u64) -> CacheEntry {
    let verdict = if n % 2 == 0 {
        CachedVerdict::Clean
    } else {
        CachedVerdict::Infected { signature: format!("Test.Signature-{n}") }
    };
    CacheEntry {
        verdict,
        engine_version: "1.4.6".to_string(),
        database_version: Some(27000),
        signature_epoch: 0,
        scanned_at_unix_secs: n,
    }
}

fn content_key(n: u64) -> ContentKey {
    ContentKey::of(format!("body {n}").as_bytes())
}

/// Asserts that `call` fails as "Redis unavailable" within [`FAIL_FAST`].
async fn assert_fails_fast<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, CacheError>>,
) {
    let result = tokio::time::timeout(FAIL_FAST, call).await;
    let result = result.unwrap_or_else(|_| panic!("{what} hung for {FAIL_FAST:?}"));
    match result {
        Err(err) => assert!(err.is_unavailability(), "{what}: unexpected error kind: {err}"),
        Ok(value) => panic!("{what} succeeded with the cluster broken: {value:?}"),
    }
}

#[tokio::test]
async fn two_instances_share_content_entries_spread_over_every_master() {
    let cluster = RedisCluster::start(3);
    let (first, second) = (instance(&cluster), instance(&cluster));
    const N: u64 = 30;
    for n in 0..N {
        first.put(&content_key(n), &entry(n)).await.expect("put");
    }
    for n in 0..N {
        let hit = second.lookup(&content_key(n)).await.expect("lookup");
        assert_eq!(hit, Some(Hit { value: entry(n), tier: Tier::Redis }), "entry {n}");
        let again = second.lookup(&content_key(n)).await.expect("lookup");
        assert_eq!(again.map(|hit| hit.tier), Some(Tier::Memory));
    }
    assert_eq!(second.lookup(&content_key(N + 1)).await.expect("lookup"), None);

    // Really a cluster: the keys live on all three masters, each key where CLUSTER KEYSLOT says.
    let mut owners = BTreeSet::new();
    for n in 0..N {
        let name = format!("{PREFIX}v1:content:{}", content_key(n).hex());
        let owner = cluster.node_for_key(&name);
        owners.insert(owner);
        let value = cluster.nodes()[owner].cli(&["GET", &name]);
        assert_eq!(decode_entry(value.trim_end().as_bytes()).expect("decode"), entry(n));
    }
    assert_eq!(owners.len(), 3, "30 keys all on masters {owners:?}");
    let sizes: Vec<usize> = (0..3).map(|i| cluster.dbsize(i)).collect();
    assert_eq!(sizes.iter().sum::<usize>(), N as usize, "{sizes:?}");
    assert!(sizes.iter().all(|&size| size > 0), "{sizes:?}");
}

#[tokio::test]
async fn two_instances_share_resource_entries_and_locks() {
    let cluster = RedisCluster::start(3);
    let (first, second) = (instance(&cluster), instance(&cluster));

    let mut owners = BTreeSet::new();
    for n in 0..12u64 {
        let key = ResourceId::new("https", "mirror.example.org", 443, &format!("/pool/main/p{n}.deb")).key();
        let resource = ResourceEntry {
            validator: format!("etag:\"{n}\""),
            vary: VaryRecord::none(),
            content: content_key(n),
            entry: entry(n),
        };
        first.put_resource(&key, &resource).await.expect("put_resource");
        let hit = second.lookup_resource(&key).await.expect("lookup_resource");
        assert_eq!(hit, Some(Hit { value: resource.clone(), tier: Tier::Redis }));
        let name = format!("{PREFIX}v2:resource:{}", key.hex());
        let owner = cluster.node_for_key(&name);
        owners.insert(owner);
        let stored = cluster.nodes()[owner].cli(&["GET", &name]);
        assert_eq!(decode_resource(stored.trim_end().as_bytes()).expect("decode"), resource);
    }
    assert!(owners.len() >= 2, "12 resource keys all on masters {owners:?}");

    // Locks: exclusive across instances, released only by their holder, whatever master holds them.
    let mut lock_owners = BTreeSet::new();
    for n in 0..6u64 {
        let object = format!("content:{}", content_key(n).hex());
        lock_owners.insert(cluster.node_for_key(&format!("{PREFIX}v1:lock:{object}")));
        let ttl = Duration::from_secs(30);
        let LockAttempt::Acquired(token) = first.try_lock(&object, ttl).await.expect("try_lock") else {
            panic!("acquire {object}")
        };
        assert_eq!(second.try_lock(&object, ttl).await.expect("try_lock"), LockAttempt::HeldElsewhere);
        assert!(second.lock_held(&object).await.expect("lock_held"));
        first.unlock(&object, &token).await.expect("unlock");
        assert!(!second.lock_held(&object).await.expect("lock_held"));
        let LockAttempt::Acquired(second_token) = second.try_lock(&object, ttl).await.expect("try_lock")
        else {
            panic!("take the released lock {object}")
        };
        // A stale token does not release the new holder's lock.
        first.unlock(&object, &token).await.expect("stale unlock");
        assert!(first.lock_held(&object).await.expect("lock_held"));
        second.unlock(&object, &second_token).await.expect("unlock");
        assert!(!first.lock_held(&object).await.expect("lock_held"));
    }
    assert!(lock_owners.len() >= 2, "lock keys all on masters {lock_owners:?}");

    // A lock expires by itself.
    let LockAttempt::Acquired(_) =
        first.try_lock("content:short", Duration::from_millis(200)).await.expect("try_lock")
    else {
        panic!("acquire")
    };
    let started = Instant::now();
    while second.lock_held("content:short").await.expect("lock_held") {
        assert!(started.elapsed() < FAIL_FAST, "the lock did not expire");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        second.try_lock("content:short", Duration::from_secs(5)).await,
        Ok(LockAttempt::Acquired(_))
    ));
}

#[tokio::test]
async fn a_master_going_away_costs_bounded_errors_and_the_cache_recovers() {
    let mut cluster = RedisCluster::start(3);
    let cache = instance(&cluster);
    // A cache without the memory tier, so that every lookup goes to the cluster.
    let cfg = CacheConfig { memory_ttl_secs: 0, ..config(cluster.urls()) };
    let direct = VerdictCache::from_config(&cfg).expect("from_config");

    // One key on node 0, one elsewhere.
    let on = |node: usize| {
        (0..1000u64)
            .find(|&n| cluster.node_for_key(&format!("{PREFIX}v1:content:{}", content_key(n).hex())) == node)
            .expect("a key on that node")
    };
    let (lost, kept) = (on(0), on(1));
    for n in [lost, kept] {
        cache.put(&content_key(n), &entry(n)).await.expect("put");
    }

    cluster.stop_node(0);
    for _ in 0..3 {
        assert_fails_fast("get on the stopped master", direct.get(&content_key(lost))).await;
    }
    assert_fails_fast("put on the stopped master", direct.put(&content_key(lost), &entry(lost))).await;
    // The memory tier still answers what it has.
    let hit = cache.lookup(&content_key(lost)).await.expect("memory hit");
    assert_eq!(hit, Some(Hit { value: entry(lost), tier: Tier::Memory }));

    cluster.start_node(0);
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    let found = loop {
        match tokio::time::timeout(FAIL_FAST, direct.get(&content_key(kept))).await.expect("no hang") {
            Ok(found) => break found,
            Err(err) if Instant::now() < deadline => {
                assert!(err.is_unavailability(), "{err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("no recovery within {RECOVERY_DEADLINE:?}: {err}"),
        }
    };
    assert_eq!(found, Some(entry(kept)), "the other masters kept their entries");
    // The restarted master came back empty (no persistence) and takes writes again.
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    loop {
        match direct.put(&content_key(lost), &entry(lost)).await {
            Ok(()) => break,
            Err(err) if Instant::now() < deadline => {
                assert!(err.is_unavailability(), "{err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("the restarted master takes no writes: {err}"),
        }
    }
    assert_eq!(direct.get(&content_key(lost)).await.expect("get"), Some(entry(lost)));
}

#[tokio::test]
async fn an_unreachable_cluster_is_a_quick_error_and_startup_does_not_wait() {
    let started = Instant::now();
    let cfg = config(vec!["redis://127.0.0.1:1".to_string(), "redis://127.0.0.1:2".to_string()]);
    let cache = VerdictCache::from_config(&cfg).expect("from_config does not contact the cluster");
    assert!(started.elapsed() < Duration::from_secs(1));
    let key = content_key(1);
    assert_fails_fast("get", cache.get(&key)).await;
    assert_fails_fast("try_lock", cache.try_lock("content:x", Duration::from_secs(5))).await;
    // The write still reaches the memory tier.
    assert_fails_fast("put", cache.put(&key, &entry(1))).await;
    assert_eq!(
        cache.lookup(&key).await.expect("memory hit"),
        Some(Hit { value: entry(1), tier: Tier::Memory })
    );
}
