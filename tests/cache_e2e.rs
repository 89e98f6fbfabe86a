//! The verdict cache through a real Envoy: resource keys decided at the headers, signature
//! updates, one scan for many concurrent requests, Redis failing and returning, the route
//! policy chosen by Envoy, a verdict forged in Redis refused, and a replayed bomb decoded once.

mod support;

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::clamd::ClamdProcess;
use support::redis::RedisProcess;
use support::samples;
use support::stack::Stack;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn verdict_header(response: &reqwest::Response) -> Option<String> {
    response.headers().get("x-clamgate-verdict").map(|v| v.to_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_clean_resource_streams_through_without_clamgate_seeing_the_body() {
    let mut stack = Stack::start().await;
    let body = samples::clean_sample(2 * 1024 * 1024);
    stack.upstream.put_file_with_headers("pkg.tar", body.clone(), &[("etag", "\"v1\"")]);

    let response = stack.get("/mirror/pkg.tar").await;
    assert_eq!(response.status(), 200, "{}", stack.envoy.logs());
    assert_eq!(response.bytes().await.expect("body").len(), body.len());
    // A scanned download streams to clamgate in pieces (FULL_DUPLEX_STREAMED): one or more.
    let (bodies, scans) = (stack.messages("response_body").await, stack.clamd_scans().await);
    assert!(
        bodies >= 1.0 && scans == 1.0,
        "the first download is scanned: {bodies} body messages, {scans} scans"
    );

    // clamd gone: only the cache can vouch for the object now.
    stack.stop_clamd().await;
    let response = stack.get("/mirror/pkg.tar").await;
    assert_eq!(response.status(), 200, "{}", stack.envoy.logs());
    assert_eq!(verdict_header(&response).as_deref(), Some("clean"));
    assert_eq!(sha256_hex(&response.bytes().await.expect("body")), sha256_hex(&body));
    assert_eq!(stack.messages("response_body").await, bodies, "no body message may reach clamgate on a hit");
    assert_eq!(stack.clamd_scans().await, 1.0);
    let hits = stack
        .clamgate
        .metric(r#"clamgate_cache_lookups_total{key="resource",tier="memory",result="hit"}"#)
        .await;
    assert_eq!(hits, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_infected_resource_is_refused_at_the_response_headers_while_its_etag_stands() {
    let stack = Stack::start().await;
    stack.upstream.put_file_with_headers("bad.exe", samples::eicar(), &[("etag", "\"bad\"")]);
    assert_eq!(stack.get("/mirror/bad.exe").await.status(), 409);
    let scans = stack.clamd_scans().await;

    // Same ETag: the upstream is asked, and its answer refused at the headers, before any body
    // byte reaches the client, whatever the bytes now are.
    stack.upstream.put_file_with_headers("bad.exe", samples::clean_sample(5_000), &[("etag", "\"bad\"")]);
    let response = stack.get("/mirror/bad.exe").await;
    assert_eq!(response.status(), 409);
    assert_eq!(verdict_header(&response).as_deref(), Some("infected"));
    let body: serde_json::Value = serde_json::from_str(&response.text().await.expect("text")).expect("JSON");
    assert_eq!(body["sha256"], sha256_hex(&samples::eicar()), "the cached verdict's digest");
    assert_eq!(stack.upstream.hits("/mirror/bad.exe"), 2, "the upstream is asked for its validator");
    // (Envoy may already have streamed body pieces to clamgate in FULL_DUPLEX; they are dropped.)
    assert_eq!(stack.clamd_scans().await, scans, "a refused version is not scanned");

    // The object was fixed (a new ETag): scanned, delivered, and remembered clean.
    let fixed = samples::clean_sample(6_000);
    stack.upstream.put_file_with_headers("bad.exe", fixed.clone(), &[("etag", "\"fixed\"")]);
    let response = stack.get("/mirror/bad.exe").await;
    assert_eq!(response.status(), 200, "{}", stack.envoy.logs());
    assert_eq!(verdict_header(&response).as_deref(), Some("clean"));
    assert_eq!(sha256_hex(&response.bytes().await.expect("body")), sha256_hex(&fixed));
    assert_eq!(stack.clamd_scans().await, scans + 1.0, "the new version was scanned");
    assert_eq!(stack.get("/mirror/bad.exe").await.status(), 200);
    assert_eq!(stack.clamd_scans().await, scans + 1.0, "and is now a clean resource hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_only_delivers_a_version_known_infected_and_scans_it_again() {
    let stack = Stack::start_with(|config| {
        if let Some(mirror) = config.policies.get_mut("mirror") {
            mirror.report_only = true;
        }
    })
    .await;
    stack.upstream.put_file_with_headers("bad.exe", samples::eicar(), &[("etag", "\"bad\"")]);
    for attempt in 0..2 {
        let response = stack.get("/mirror/bad.exe").await;
        assert_eq!(response.status(), 200, "attempt {attempt}: {}", stack.envoy.logs());
        assert_eq!(sha256_hex(&response.bytes().await.expect("body")), sha256_hex(&samples::eicar()));
    }
    assert_eq!(stack.upstream.hits("/mirror/bad.exe"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immutable_infected_resource_is_refused_before_the_upstream_is_contacted() {
    let stack = Stack::start_with(|config| {
        if let Some(mirror) = config.policies.get_mut("mirror") {
            mirror.immutable = true;
        }
    })
    .await;
    // No ETag, no Last-Modified: under `immutable` the URL alone is the validator.
    stack.upstream.put_file("bad.exe", samples::eicar());
    assert_eq!(stack.get("/mirror/bad.exe").await.status(), 409);
    assert_eq!(stack.upstream.hits("/mirror/bad.exe"), 1);

    let response = stack.get("/mirror/bad.exe").await;
    assert_eq!(response.status(), 409);
    assert_eq!(verdict_header(&response).as_deref(), Some("infected"));
    assert_eq!(stack.upstream.hits("/mirror/bad.exe"), 1, "the upstream must not be asked again");
}

/// GET through Envoy with one extra request header.
async fn get_with(stack: &Stack, path: &str, name: &str, value: &str) -> reqwest::Response {
    let request = stack.http.get(stack.envoy.url(path)).header(name, value);
    request.send().await.expect("GET through Envoy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_varies_is_a_hit_only_for_the_same_request_values() {
    let stack = Stack::start().await;
    let body = samples::clean_sample(30_000);
    let headers = [("etag", "\"v1\""), ("vary", "Accept-Encoding")];
    stack.upstream.put_file_with_headers("varies.bin", body.clone(), &headers);
    let get = |encoding: &'static str| get_with(&stack, "/mirror/varies.bin", "accept-encoding", encoding);

    assert_eq!(get("gzip").await.status(), 200);
    let bodies = stack.messages("response_body").await;
    assert!(bodies >= 1.0);
    assert_eq!(get("gzip").await.status(), 200);
    assert_eq!(stack.messages("response_body").await, bodies, "the same Accept-Encoding is a hit");

    let response = get("identity").await;
    assert_eq!(response.status(), 200);
    assert_eq!(sha256_hex(&response.bytes().await.expect("body")), sha256_hex(&body));
    assert!(
        stack.messages("response_body").await > bodies,
        "another Accept-Encoding must not be answered by the gzip request's entry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_vary_star_is_never_stored_by_resource() {
    let stack = Stack::start().await;
    let headers = [("etag", "\"v1\""), ("vary", "*")];
    stack.upstream.put_file_with_headers("star.bin", samples::clean_sample(20_000), &headers);
    let mut seen = 0.0;
    for _ in 0..2 {
        assert_eq!(stack.get("/mirror/star.bin").await.status(), 200);
        let now = stack.messages("response_body").await;
        assert!(now > seen, "each download carries its body to clamgate");
        seen = now;
    }
    let hits = r#"clamgate_cache_lookups_total{key="resource",tier="memory",result="hit"}"#;
    assert_eq!(stack.clamgate.metric(hits).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_hit_of_an_encoded_body_compares_the_bytes_as_received() {
    use std::io::Write;
    let stack = Stack::start_with(|config| {
        if let Some(mirror) = config.policies.get_mut("mirror") {
            mirror.verify_resource_hits = true;
        }
    })
    .await;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&samples::clean_sample(200_000)).expect("gzip");
    let gzipped = encoder.finish().expect("gzip");
    let headers = [("etag", "\"gz\""), ("content-encoding", "gzip")];
    stack.upstream.put_file_with_headers("tool.gz", gzipped.clone(), &headers);
    let mut scans_of_the_first = 0.0;
    for attempt in 0..2 {
        let response = stack.get("/mirror/tool.gz").await;
        assert_eq!(response.status(), 200, "{}", stack.envoy.logs());
        assert_eq!(sha256_hex(&response.bytes().await.expect("body")), sha256_hex(&gzipped));
        if attempt == 0 {
            // Decoded and as received: an encoded body gets both scans.
            scans_of_the_first = stack.clamd_scans().await;
        }
    }
    assert_eq!(stack.clamd_scans().await, scans_of_the_first, "the second download was a hit");
    let result = |result: &str| format!("clamgate_resource_hit_verifications_total{{result=\"{result}\"}}");
    assert_eq!(stack.clamgate.metric(&result("match")).await, 1.0, "the encoded bytes match the entry");
    assert_eq!(stack.clamgate.metric(&result("mismatch")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_hit_whose_bytes_changed_under_the_same_etag_invalidates_the_entry() {
    let stack = Stack::start_with(|config| {
        if let Some(mirror) = config.policies.get_mut("mirror") {
            mirror.verify_resource_hits = true;
        }
    })
    .await;
    let verifications =
        |result: &str| format!("clamgate_resource_hit_verifications_total{{result=\"{result}\"}}");
    let original = samples::clean_sample(300_000);
    stack.upstream.put_file_with_headers("tool.bin", original.clone(), &[("etag", "\"v1\"")]);
    assert_eq!(stack.get("/mirror/tool.bin").await.status(), 200);
    assert_eq!(stack.clamd_scans().await, 1.0);

    // A hit: the body streams back through clamgate, unscanned, and matches the entry.
    let response = stack.get("/mirror/tool.bin").await;
    assert_eq!(response.status(), 200, "{}", stack.envoy.logs());
    assert_eq!(verdict_header(&response).as_deref(), Some("clean"));
    assert_eq!(sha256_hex(&response.bytes().await.expect("body")), sha256_hex(&original));
    assert_eq!(stack.clamd_scans().await, 1.0, "a hit is not scanned");
    assert_eq!(stack.clamgate.metric(&verifications("match")).await, 1.0);

    // The origin now serves other bytes under the same ETag (a same-size replace within a second,
    // or a hostile origin). The first client gets them: detection, not prevention.
    stack.upstream.put_file_with_headers("tool.bin", samples::eicar(), &[("etag", "\"v1\"")]);
    let response = stack.get("/mirror/tool.bin").await;
    assert_eq!(response.status(), 200);
    assert_eq!(sha256_hex(&response.bytes().await.expect("body")), sha256_hex(&samples::eicar()));
    assert_eq!(stack.clamgate.metric(&verifications("mismatch")).await, 1.0);

    // The entry is gone: the next request is scanned, and blocked.
    let response = stack.get("/mirror/tool.bin").await;
    assert_eq!(response.status(), 409);
    assert_eq!(stack.clamd_scans().await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_etag_makes_clamgate_scan_again() {
    let stack = Stack::start().await;
    stack.upstream.put_file_with_headers("tool.bin", samples::clean_sample(50_000), &[("etag", "\"v1\"")]);
    assert_eq!(stack.get("/mirror/tool.bin").await.status(), 200);
    let first = stack.messages("response_body").await;
    assert!(first >= 1.0);
    assert_eq!(stack.get("/mirror/tool.bin").await.status(), 200);
    assert_eq!(stack.messages("response_body").await, first, "the second download was a resource hit");

    // The mirror now serves different bytes under a new ETag: the cached Clean does not apply.
    stack.upstream.put_file_with_headers("tool.bin", samples::eicar(), &[("etag", "\"v2\"")]);
    assert_eq!(stack.get("/mirror/tool.bin").await.status(), 409);
    assert!(stack.messages("response_body").await > first, "the new version was sent to clamgate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_validator_no_resource_key_is_used() {
    let stack = Stack::start().await;
    // No ETag, no Last-Modified: the policy does not say the upstream is immutable.
    stack.upstream.put_file("plain.bin", samples::clean_sample(10_000));
    let mut seen = 0.0;
    for _ in 0..2 {
        assert_eq!(stack.get("/mirror/plain.bin").await.status(), 200);
        let now = stack.messages("response_body").await;
        assert!(now > seen, "each download carries its body to clamgate");
        seen = now;
    }
    assert_eq!(stack.clamd_scans().await, 1.0, "the second is a content-key hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_update_refuses_a_file_cached_clean() {
    let clamd = tokio::task::spawn_blocking(|| ClamdProcess::start_with_daily(1)).await.expect("clamd");
    let stack = Stack::start_with_clamd(clamd, |_| {}).await;
    // Clean under database 1; database 2 will detect it.
    let file = samples::daily_sample(2);
    stack.upstream.put_file("update.txt", file.clone());
    stack.upstream.put_file_with_headers("update-mirror.txt", file, &[("etag", "\"same\"")]);
    assert_eq!(stack.get("/files/update.txt").await.status(), 200);
    assert_eq!(stack.get("/mirror/update-mirror.txt").await.status(), 200);
    assert_eq!(stack.get("/files/update.txt").await.status(), 200, "cached Clean under database 1");

    let clamd = &stack.clamd;
    clamd.install_daily(2);
    clamd.reload();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.clamgate.metric("clamgate_clamd_database_version").await != 2.0 {
        assert!(Instant::now() < deadline, "clamgate never learned database version 2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stack.get("/files/update.txt").await.status(), 409, "a stale Clean entry must be rescanned");
    assert_eq!(
        stack.get("/mirror/update-mirror.txt").await.status(),
        409,
        "by content key and by resource key"
    );
    let stale = stack
        .clamgate
        .metric(r#"clamgate_cache_lookups_total{key="content",tier="memory",result="stale"}"#)
        .await;
    assert!(stale >= 1.0, "stale entries are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_first_requests_make_one_clamd_scan() {
    let stack = Stack::start().await;
    let body = samples::clean_sample(8 * 1024 * 1024);
    stack.upstream.put_file("big.iso", body.clone());
    let requests = (0..20).map(|_| {
        let (http, url) = (stack.http.clone(), stack.envoy.url("/files/big.iso"));
        tokio::spawn(async move {
            let response = http.get(url).send().await.expect("GET");
            (response.status().as_u16(), response.bytes().await.expect("body").len())
        })
    });
    for request in requests.collect::<Vec<_>>() {
        assert_eq!(request.await.expect("task"), (200, body.len()));
    }
    assert_eq!(stack.clamd_scans().await, 1.0, "20 requests for one object must cost one scan");
    let waits = stack.clamgate.metric(r#"clamgate_scan_waits_total{scope="local"}"#).await;
    let hits = stack
        .clamgate
        .metric(r#"clamgate_cache_lookups_total{key="content",tier="memory",result="hit"}"#)
        .await;
    assert_eq!(waits + hits, 19.0, "the others waited for the scan or found its verdict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_test_scans_go_on_and_the_cache_resumes() {
    let mut redis = tokio::task::spawn_blocking(RedisProcess::start).await.expect("redis");
    let url = redis.url();
    let url_again = url.clone();
    let stack =
        Stack::start_with(|config| config.cache.redis_url = Some(url.parse().expect("a Redis URL"))).await;
    stack.upstream.put_file("eicar.com", samples::eicar());
    stack.upstream.put_file("clean.bin", samples::clean_sample(20_000));
    assert_eq!(stack.get("/files/eicar.com").await.status(), 409);
    assert_eq!(stack.get("/files/clean.bin").await.status(), 200);

    redis = tokio::task::spawn_blocking(move || {
        redis.stop();
        redis
    })
    .await
    .expect("stop redis");
    stack.upstream.put_file("other.com", samples::eicar_zip());
    stack.upstream.put_file("other.bin", samples::clean_sample(30_000));
    assert_eq!(stack.get("/files/other.com").await.status(), 409, "scans go on with Redis down");
    assert_eq!(stack.get("/files/other.bin").await.status(), 200);

    let _redis = tokio::task::spawn_blocking(move || {
        redis.start_again();
        redis
    })
    .await
    .expect("restart redis");
    // Once Redis is back (clamgate reconnects after its back-off), new verdicts land in it again.
    let client = redis::Client::open(url_again.as_str()).expect("redis URL");
    let deadline = Instant::now() + Duration::from_secs(20);
    for attempt in 0.. {
        let body = samples::clean_sample(40_000 + attempt);
        stack.upstream.put_file("fresh.bin", body.clone());
        assert_eq!(stack.get("/files/fresh.bin").await.status(), 200);
        let key = format!("clamgate:v1:content:{}", sha256_hex(&body));
        let stored: bool = match client.get_multiplexed_async_connection().await {
            Ok(mut connection) => {
                redis::cmd("EXISTS").arg(&key).query_async(&mut connection).await.unwrap_or(false)
            }
            Err(_) => false,
        };
        if stored {
            break;
        }
        assert!(Instant::now() < deadline, "verdicts never reached Redis again after its restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_clamgate_does_not_know_fails_closed() {
    // The shipped envoy.yaml names "mirror" for /mirror/; this clamgate has no such policy.
    let stack = Stack::start_with(|config| {
        config.policies.clear();
    })
    .await;
    stack.upstream.put_file("x.bin", samples::clean_sample(1_000));
    let response = stack.get("/mirror/x.bin").await;
    assert_eq!(response.status(), 503);
    assert_eq!(stack.upstream.hits("/mirror/x.bin"), 0);
    assert_eq!(stack.get("/files/x.bin").await.status(), 200, "other routes are unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_names_its_policy_and_request_ids_are_envoys() {
    let stack = Stack::start().await;
    stack.upstream.put_file_with_headers("a.bin", samples::eicar(), &[("etag", "\"a\"")]);
    // Only the /mirror/ route's metadata selects the resource-key policy.
    let response = stack.get("/mirror/a.bin").await;
    assert_eq!(response.status(), 409);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.expect("text")).expect("JSON");
    let request_id = body["request_id"].as_str().unwrap_or_default().to_string();
    assert_eq!(request_id.len(), 36, "Envoy's UUID request id, from the request.id attribute: {body}");
    let hits = r#"clamgate_cache_lookups_total{key="resource",tier="memory",result="miss"}"#;
    assert_eq!(stack.clamgate.metric(hits).await, 1.0, "the mirror policy looked the resource up");
    assert_eq!(stack.get("/files/a.bin").await.status(), 409);
    assert_eq!(stack.clamgate.metric(hits).await, 1.0, "the default policy uses no resource keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_hmac_key_a_clean_verdict_forged_in_redis_does_not_let_eicar_through() {
    let redis = tokio::task::spawn_blocking(RedisProcess::start).await.expect("redis");
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("cache-hmac.key");
    // As the docs suggest making one: base64 of 32 random bytes, with a newline.
    std::fs::write(&key_file, "c3VwZXItc2VjcmV0LWtleS1mb3ItY2xhbWdhdGUtdGVzdHM=\n").expect("key file");
    let (url, key_path) = (redis.url(), key_file.to_string_lossy().to_string());
    let stack = Stack::start_with(|config| {
        config.cache.redis_url = Some(url.parse().expect("a Redis URL"));
        config.cache.hmac_key_file = Some(key_path);
    })
    .await;
    let eicar = samples::eicar();
    stack.upstream.put_file("eicar.com", eicar.clone());

    // Someone with write access to Redis plants a Clean verdict for EICAR's content key.
    let forged = clamgate::cache::encode_entry(&clamgate::cache::CacheEntry {
        verdict: clamgate::cache::CachedVerdict::Clean,
        engine_version: "1.4.6".to_string(),
        database_version: Some(u64::from(u32::MAX)),
        signature_epoch: u64::MAX,
        scanned_at_unix_secs: 1_767_225_600,
    });
    let name = format!("clamgate:v1:content:{}", sha256_hex(&eicar));
    let client = redis::Client::open(redis.url()).expect("redis URL");
    let mut connection = client.get_multiplexed_async_connection().await.expect("connect");
    let _: () = redis::cmd("SET").arg(&name).arg(forged).query_async(&mut connection).await.expect("SET");

    let response = stack.get("/files/eicar.com").await;
    assert_eq!(response.status(), 409, "the forged entry must be refused and the body scanned");
    assert_eq!(stack.clamd_scans().await, 1.0);
    let rejected = r#"clamgate_cache_rejected_values_total{key="content",reason="missing_tag"}"#;
    assert_eq!(stack.clamgate.metric(rejected).await, 1.0);
    // clamgate's own verdict replaced it, authenticated.
    let stored: Vec<u8> = redis::cmd("GET").arg(&name).query_async(&mut connection).await.expect("GET");
    assert!(stored.starts_with(b"hmac-sha256:"), "{}", String::from_utf8_lossy(&stored));
    assert_eq!(stack.get("/files/eicar.com").await.status(), 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_fetched_twice_is_decoded_and_scanned_once() {
    let stack = Stack::start_with(|config| config.scan.max_decode_ratio = 100).await;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut encoder, &vec![0u8; 8 * 1024 * 1024]).expect("gzip");
    let bomb = encoder.finish().expect("gzip");
    stack.upstream.put_file_with_headers("bomb.gz", bomb, &[("content-encoding", "gzip")]);
    let mut scans_of_the_first = 0.0;
    for attempt in 0..2 {
        let response = stack.get("/files/bomb.gz").await;
        assert_eq!(response.status(), 502, "attempt {attempt}: {}", stack.envoy.logs());
        assert_eq!(verdict_header(&response).as_deref(), Some("unscanned"));
        let body: serde_json::Value =
            serde_json::from_str(&response.text().await.expect("text")).expect("JSON");
        assert_eq!(body["reason"], "limits_exceeded", "attempt {attempt}: the same reason from the cache");
        if attempt == 0 {
            // What was decoded, and the bytes as received: an encoded body gets both scans.
            scans_of_the_first = stack.clamd_scans().await;
            assert!(scans_of_the_first >= 1.0);
        }
    }
    let decoded = r#"clamgate_decoded_bodies_total{encoding="gzip",outcome="ratio_exceeded"}"#;
    assert_eq!(stack.clamgate.metric(decoded).await, 1.0, "one decode for two requests");
    assert_eq!(stack.clamd_scans().await, scans_of_the_first, "no clamd scan for the second request");
    let hits = r#"clamgate_cache_lookups_total{key="content",tier="memory",result="hit"}"#;
    assert_eq!(stack.clamgate.metric(hits).await, 1.0);
}
