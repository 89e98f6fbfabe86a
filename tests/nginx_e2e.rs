//! The shipped `nginx/nginx.conf` in front of the sample upstream, with clamgate deciding
//! downloads through `auth_request` (`GET /v1/auth`) and Envoy scanning uploads: real nginx,
//! real Envoy, real clamd, clamgate in process; ports substituted as the Envoy tests do.
//!
//! The nginx locations: `/files/` with the default policy (a miss is refused), `/mirror/` with
//! the policy `mirror` (resource keys, fetch on a miss from the origin `mirror.test`), `/upload/`
//! through Envoy. Requests carry `Host: mirror.test`, as they would in production with both
//! proxies serving one site, so Envoy and nginx compute the same resource keys.

mod support;

use clamgate::config::{Config, OnMiss, PolicyConfig};
use support::nginx::{http_token_file, NginxProcess, NginxTargets};
use support::samples;
use support::stack::Stack;

const HOST: &str = "mirror.test";

/// A stack with nginx beside Envoy.
struct NginxStack {
    stack: Stack,
    nginx: NginxProcess,
}

/// clamgate's config for these tests: the HTTP listener with the token, `mirror` fetching from
/// the upstream as the origin of `mirror.test`, and `open` allowing misses.
fn nginx_config(config: &mut Config) {
    config.listen.http_addr = Some("127.0.0.1:0".parse().unwrap());
    config.listen.http_token_file = Some(http_token_file());
    if let Some(mirror) = config.policies.get_mut("mirror") {
        mirror.on_miss = OnMiss::Fetch;
    }
    let open = PolicyConfig { on_miss: OnMiss::Allow, ..PolicyConfig::default() };
    config.policies.insert("open".to_string(), open);
}

impl NginxStack {
    async fn start() -> NginxStack {
        NginxStack::start_with(|_| {}, |config| config).await
    }

    async fn start_with(
        adjust: impl FnOnce(&mut Config),
        edit_nginx: impl FnOnce(String) -> String + Send + 'static,
    ) -> NginxStack {
        let stack = Stack::start_knowing_upstream(|config, upstream| {
            nginx_config(config);
            config.fetch.origins = vec![format!("{HOST} = http://{upstream}").parse().unwrap()];
            adjust(config);
        })
        .await;
        let targets = NginxTargets {
            clamgate_http: stack.clamgate.http_addr.expect("clamgate's HTTP listener"),
            upstream: stack.upstream.addr(),
            envoy: Some(stack.envoy.addr()),
        };
        let nginx = tokio::task::spawn_blocking(move || NginxProcess::start_with(targets, edit_nginx))
            .await
            .expect("start nginx");
        NginxStack { stack, nginx }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.stack
            .http
            .get(self.nginx.url(path))
            .header("host", HOST)
            .send()
            .await
            .expect("GET through nginx")
    }

    async fn get_through_envoy(&self, path: &str) -> reqwest::Response {
        self.stack
            .http
            .get(self.stack.envoy.url(path))
            .header("host", HOST)
            .send()
            .await
            .expect("GET through Envoy")
    }

    async fn metric(&self, sample: &str) -> f64 {
        self.stack.clamgate.metric(sample).await
    }
}

fn verdict(response: &reqwest::Response) -> Option<String> {
    response.headers().get("x-clamgate-verdict").map(|v| v.to_str().unwrap_or_default().to_string())
}

async fn json(response: reqwest::Response) -> serde_json::Value {
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_written_by_envoy_is_answered_by_nginx() {
    let env = NginxStack::start().await;
    let clean = samples::clean_sample(10_000);
    env.stack.upstream.put_file_with_headers("clean.bin", clean.clone(), &[("etag", "\"v1\"")]);
    env.stack.upstream.put_file_with_headers("eicar.com", samples::eicar(), &[("etag", "\"e1\"")]);

    // Envoy's /mirror/ route scans both and stores them by resource.
    assert_eq!(env.get_through_envoy("/mirror/clean.bin").await.status(), 200);
    assert_eq!(env.get_through_envoy("/mirror/eicar.com").await.status(), 409);
    let scans = env.stack.clamd_scans().await;
    let upstream_hits = env.stack.upstream.hits("/mirror/eicar.com");

    // nginx's /mirror/ gets clamgate's verdicts from the cache: no new scan, no fetch.
    let response = env.get("/mirror/clean.bin").await;
    assert_eq!(response.status(), 200);
    assert_eq!(verdict(&response).as_deref(), Some("clean"));
    assert_eq!(response.bytes().await.unwrap().as_ref(), clean.as_slice(), "byte-identical");
    // nginx sent the scanned version's ETag upstream.
    let sent = env.stack.upstream.received_headers("/mirror/clean.bin").unwrap();
    assert_eq!(sent.get("if-match").map(|v| v.to_str().unwrap()), Some("\"v1\""));

    let response = env.get("/mirror/eicar.com").await;
    assert_eq!(response.status(), 409);
    assert_eq!(verdict(&response).as_deref(), Some("infected"));
    assert_eq!(response.headers().get("content-type").unwrap(), "application/json");
    let body = json(response).await;
    assert_eq!(body["verdict"], "infected");
    assert!(body["signature"].as_str().unwrap().contains("Eicar"), "{body}");
    assert_eq!(
        env.stack.upstream.hits("/mirror/eicar.com"),
        upstream_hits,
        "the infected object was not fetched"
    );
    assert_eq!(env.stack.clamd_scans().await, scans, "answered from the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_fetched_for_nginx_is_honoured_by_envoy() {
    let env = NginxStack::start().await;
    env.stack.upstream.put_file_with_headers("eicar.com", samples::eicar(), &[("etag", "\"e1\"")]);
    let clean = samples::clean_sample(5_000);
    env.stack.upstream.put_file_with_headers("clean.bin", clean.clone(), &[("etag", "\"c1\"")]);

    // A miss under `mirror`: clamgate fetches, scans, caches, then answers.
    let response = env.get("/mirror/eicar.com").await;
    assert_eq!(response.status(), 409);
    assert_eq!(json(response).await["verdict"], "infected");
    let response = env.get("/mirror/clean.bin").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), clean.as_slice());
    assert_eq!(env.metric("clamgate_fetches_total{outcome=\"scanned\"}").await, 2.0);
    let scans = env.stack.clamd_scans().await;

    // Envoy finds both by resource: no new scan.
    assert_eq!(env.get_through_envoy("/mirror/eicar.com").await.status(), 409);
    let response = env.get_through_envoy("/mirror/clean.bin").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), clean.as_slice());
    assert_eq!(env.stack.clamd_scans().await, scans, "Envoy used the fetched verdicts");
    assert!(
        env.metric("clamgate_cache_lookups_total{key=\"resource\",tier=\"memory\",result=\"hit\"}").await
            >= 2.0
    );

    // And nginx again: cached, so no second fetch.
    assert_eq!(env.get("/mirror/eicar.com").await.status(), 409);
    assert_eq!(env.metric("clamgate_fetches_total{outcome=\"scanned\"}").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_gets_the_policy_answer_deny_allow_or_fetch() {
    // /files/ under the default policy (deny); /open/ a copy of it under `open` (allow).
    let env = NginxStack::start_with(
        |_| {},
        |config| {
            let files = config.find("        location /files/ {").expect("the /files/ location");
            let end = files + config[files..].find("        }\n").unwrap() + "        }\n".len();
            let open = config[files..end].replace("/files/", "/open/").replace("default", "open");
            let proxied = open.replace(
                "proxy_pass $clamgate_upstream;",
                "rewrite ^/open/(.*)$ /files/$1 break;\n            proxy_pass $clamgate_upstream;",
            );
            format!("{}{}{}", &config[..end], proxied, &config[end..])
        },
    )
    .await;
    let bytes = samples::clean_sample(2_000);
    env.stack.upstream.put_file_with_headers("new.bin", bytes.clone(), &[("etag", "\"n1\"")]);

    // deny: refused, never fetched from the upstream.
    let response = env.get("/files/new.bin").await;
    assert_eq!(response.status(), 502);
    assert_eq!(verdict(&response).as_deref(), Some("unscanned"));
    let body = json(response).await;
    assert_eq!((body["verdict"].as_str(), body["reason"].as_str()), (Some("unscanned"), Some("not_cached")));
    assert_eq!(env.stack.upstream.hits("/files/new.bin"), 0);

    // allow: served, marked unscanned, counted.
    let response = env.get("/open/new.bin").await;
    assert_eq!(response.status(), 200);
    assert_eq!(verdict(&response).as_deref(), Some("unscanned"));
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());
    assert_eq!(env.metric("clamgate_auth_answers_total{result=\"unscanned_allowed\"}").await, 1.0);

    // fetch: scanned, then served.
    env.stack.upstream.put_file_with_headers("new.bin", bytes.clone(), &[("etag", "\"n1\"")]);
    let response = env.get("/mirror/new.bin").await;
    assert_eq!(response.status(), 200);
    assert_eq!(verdict(&response).as_deref(), Some("clean"));
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_archives_and_encoded_objects_are_scanned_inside() {
    let env = NginxStack::start().await;
    env.stack.upstream.put_file_with_headers("eicar.zip", samples::eicar_zip(), &[("etag", "\"z1\"")]);
    let gzipped = {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&samples::eicar()).unwrap();
        encoder.finish().unwrap()
    };
    env.stack.upstream.put_file_with_headers(
        "eicar.txt",
        gzipped,
        &[("etag", "\"g1\""), ("content-encoding", "gzip")],
    );
    for path in ["/mirror/eicar.zip", "/mirror/eicar.txt"] {
        let response = env.get(path).await;
        assert_eq!(response.status(), 409, "{path}");
        assert_eq!(json(response).await["verdict"], "infected", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_swapped_after_the_check_never_reaches_the_client() {
    let env = NginxStack::start().await;
    let v1 = samples::clean_sample(3_000);
    env.stack.upstream.put_file_with_headers("pkg.bin", v1.clone(), &[("etag", "\"v1\"")]);
    assert_eq!(env.get("/mirror/pkg.bin").await.status(), 200);

    // The origin now serves an infected object under the same URL. clamgate's entry still says
    // v1 is clean; nginx asks the upstream for v1 only (If-Match), gets 412, and clamgate
    // rechecks: the new object is scanned before anything is sent.
    env.stack.upstream.put_file_with_headers("pkg.bin", samples::eicar(), &[("etag", "\"v2\"")]);
    let response = env.get("/mirror/pkg.bin").await;
    assert_eq!(response.status(), 409);
    let body = response.text().await.unwrap();
    assert!(!body.contains("EICAR-STANDARD"), "infected bytes reached the client: {body}");
    // v1 and then v2 were fetched and scanned; the upstream saw nginx ask for v1 only.
    assert_eq!(env.metric("clamgate_fetches_total{outcome=\"scanned\"}").await, 2.0);

    // A clean v3: rechecked, scanned, served whole.
    let v3 = samples::clean_sample(4_000);
    env.stack.upstream.put_file_with_headers("pkg.bin", v3.clone(), &[("etag", "\"v3\"")]);
    // The infected v2 entry stands until it expires or is rechecked: still refused.
    assert_eq!(env.get("/mirror/pkg.bin").await.status(), 409);

    // A clean object swapped for another clean one: rechecked and served, the new bytes whole.
    let w1 = samples::clean_sample(6_000);
    env.stack.upstream.put_file_with_headers("lib.bin", w1.clone(), &[("etag", "\"w1\"")]);
    assert_eq!(env.get("/mirror/lib.bin").await.bytes().await.unwrap().as_ref(), w1.as_slice());
    let w2 = samples::clean_sample(7_000);
    env.stack.upstream.put_file_with_headers("lib.bin", w2.clone(), &[("etag", "\"w2\"")]);
    let response = env.get("/mirror/lib.bin").await;
    assert_eq!(response.status(), 200);
    assert_eq!(verdict(&response).as_deref(), Some("clean"));
    assert_eq!(response.bytes().await.unwrap().as_ref(), w2.as_slice());
    let sent = env.stack.upstream.received_headers("/mirror/lib.bin").unwrap();
    assert_eq!(sent.get("if-match").map(|v| v.to_str().unwrap()), Some("\"w2\""));
    assert_eq!(env.metric("clamgate_fetches_total{outcome=\"scanned\"}").await, 4.0);

    // Without a strong ETag (and not immutable), a clean object cannot be pinned: refused.
    env.stack.upstream.put_file_with_headers("weak.bin", v1.clone(), &[("etag", "W/\"w1\"")]);
    let response = env.get("/mirror/weak.bin").await;
    assert_eq!(response.status(), 502);
    assert_eq!(json(response).await["reason"], "no_validator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_headers_change_nothing_and_no_request_picks_the_origin() {
    let env = NginxStack::start().await;
    env.stack.upstream.put_file_with_headers("eicar.com", samples::eicar(), &[("etag", "\"e1\"")]);
    let forged = env
        .stack
        .http
        .get(env.nginx.url("/files/eicar.com"))
        .header("host", HOST)
        .header("x-clamgate-policy", "open")
        .header("x-clamgate-uri", "/files/clean.bin")
        .header("x-clamgate-method", "POST")
        .header("x-clamgate-verdict", "clean")
        .header("x-clamgate-token", "guess")
        .header("x-original-uri", "/files/clean.bin")
        .send()
        .await
        .unwrap();
    // The default policy (deny) still decides, about the real URI.
    assert_eq!(forged.status(), 502);
    assert_eq!(json(forged).await["reason"], "not_cached");
    assert_eq!(env.stack.upstream.hits("/files/eicar.com"), 0);

    // A host with no origin in fetch.origins: nothing is fetched from anywhere.
    let response = env
        .stack
        .http
        .get(env.nginx.url("/mirror/eicar.com"))
        .header("host", "evil.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(json(response).await["reason"], "origin_error");
    assert_eq!(env.metric("clamgate_fetches_total{outcome=\"no_origin\"}").await, 1.0);
    assert_eq!(env.stack.upstream.total_hits(), 0, "nothing was fetched");

    // A redirect from the origin to another host is not followed: nothing is fetched from there.
    env.stack.upstream.put_file_with_headers(
        "moved.bin",
        Vec::new(),
        &[("x-upstream-status", "302"), ("location", "http://127.0.0.2:1/elsewhere.bin")],
    );
    let response = env.get("/mirror/moved.bin").await;
    assert_eq!(response.status(), 502);
    assert_eq!(json(response).await["reason"], "origin_error");
    assert_eq!(env.metric("clamgate_fetches_total{outcome=\"origin_error\"}").await, 1.0);
    // A path that climbs out of the origin's base is refused before any request.
    let hits = env.stack.upstream.total_hits();
    let response = env
        .stack
        .http
        .get(format!("{}/mirror/%2e%2e/%2e%2e/secret", env.nginx.url("")))
        .header("host", HOST)
        .send()
        .await
        .unwrap();
    assert_ne!(response.status(), 200);
    assert_eq!(env.stack.upstream.total_hits(), hits);

    // /v1/auth itself without the token: 401, counted.
    let addr = env.stack.clamgate.http_addr.unwrap();
    let direct = env
        .stack
        .http
        .get(format!("http://{addr}/v1/auth"))
        .header("x-clamgate-method", "GET")
        .header("x-clamgate-scheme", "http")
        .header("x-clamgate-authority", HOST)
        .header("x-clamgate-uri", "/mirror/eicar.com")
        .header("x-clamgate-policy", "mirror")
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 401);
    assert_eq!(env.metric("clamgate_http_refused_total{reason=\"unauthenticated\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_misses_make_one_download_and_one_scan() {
    let env = NginxStack::start().await;
    let bytes = samples::clean_sample(200_000);
    env.stack.upstream.put_file_with_headers("big.bin", bytes.clone(), &[("etag", "\"b1\"")]);
    let scans = env.stack.clamd_scans().await;
    let requests = (0..20).map(|_| env.get("/mirror/big.bin"));
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.unwrap().len(), bytes.len());
    }
    assert_eq!(env.metric("clamgate_fetches_total{outcome=\"scanned\"}").await, 1.0, "one download");
    assert_eq!(env.stack.clamd_scans().await - scans, 1.0, "one scan");
    // 20 requests by nginx, 1 by clamgate's fetch.
    assert_eq!(env.stack.upstream.hits("/mirror/big.bin"), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_through_nginx_are_scanned_by_envoy() {
    let env = NginxStack::start().await;
    let response = env
        .stack
        .http
        .post(env.nginx.url("/upload/eicar.com"))
        .header("host", HOST)
        .body(samples::eicar())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(env.stack.upstream.received("eicar.com"), None, "the infected upload never arrived");
    let clean = samples::clean_sample(50_000);
    let response = env
        .stack
        .http
        .post(env.nginx.url("/upload/clean.bin"))
        .header("host", HOST)
        .body(clean.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(env.stack.upstream.received("clean.bin"), Some(clean));

    // Under nginx alone (no Envoy), a body auth_request cannot see is refused on a scanning policy.
    let response = env
        .stack
        .http
        .post(env.nginx.url("/files/x"))
        .header("host", HOST)
        .body("data")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    assert_eq!(json(response).await["reason"], "body_not_visible");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstreams_own_statuses_pass_through_once_clamgate_allowed_the_request() {
    let env = NginxStack::start().await;
    env.stack.upstream.put_file_with_headers(
        "private.bin",
        samples::clean_sample(100),
        &[("etag", "\"p1\"")],
    );
    assert_eq!(env.get("/mirror/private.bin").await.status(), 200);
    // clamgate's verdict stands (clean, "p1"); the application now asks for credentials, or has
    // lost the object: the client gets the application's answer, headers and body.
    env.stack.upstream.put_file_with_headers(
        "private.bin",
        b"log in first\n".to_vec(),
        &[("etag", "\"p1\""), ("x-upstream-status", "401"), ("www-authenticate", "Basic realm=\"x\"")],
    );
    let response = env.get("/mirror/private.bin").await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers().get("www-authenticate").unwrap(), "Basic realm=\"x\"");
    assert_eq!(response.text().await.unwrap(), "log in first\n");
    env.stack.upstream.put_file_with_headers(
        "private.bin",
        b"gone\n".to_vec(),
        &[("etag", "\"p1\""), ("x-upstream-status", "404")],
    );
    assert_eq!(env.get("/mirror/private.bin").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_refuses_when_clamgate_is_down() {
    let mut env = NginxStack::start().await;
    env.stack.upstream.put_file_with_headers("clean.bin", samples::clean_sample(100), &[("etag", "\"c\"")]);
    assert_eq!(env.get("/mirror/clean.bin").await.status(), 200);
    env.stack.clamgate.stop().await;
    for path in ["/mirror/clean.bin", "/files/clean.bin"] {
        let response = env.get(path).await;
        assert_eq!(response.status(), 503, "{path}");
        assert!(response.headers().contains_key("retry-after"));
        assert_ne!(verdict(&response).as_deref(), Some("clean"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_config_caches_objects_and_still_asks_clamgate_every_time() {
    let mut env = NginxStack::start().await;
    let targets = NginxTargets {
        clamgate_http: env.stack.clamgate.http_addr.unwrap(),
        upstream: env.stack.upstream.addr(),
        envoy: None,
    };
    let mirror =
        tokio::task::spawn_blocking(move || NginxProcess::start_shipped("mirror.conf", targets, |c| c))
            .await
            .unwrap();
    let bytes = samples::clean_sample(20_000);
    env.stack.upstream.put_file_with_headers("pool/a.deb", bytes.clone(), &[("etag", "\"a1\"")]);
    env.stack.upstream.put_file_with_headers("pool/eicar.deb", samples::eicar(), &[("etag", "\"e1\"")]);
    let get = |path: &'static str| {
        let (client, url) = (env.stack.http.clone(), mirror.url(path));
        async move { client.get(url).header("host", HOST).send().await.unwrap() }
    };
    let first = get("/files/pool/a.deb").await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers().get("x-cache-status").unwrap(), "MISS");
    assert_eq!(first.bytes().await.unwrap().as_ref(), bytes.as_slice());
    let second = get("/files/pool/a.deb").await;
    assert_eq!(second.headers().get("x-cache-status").unwrap(), "HIT");
    assert_eq!(verdict(&second).as_deref(), Some("clean"));
    assert_eq!(second.bytes().await.unwrap().as_ref(), bytes.as_slice());
    // One fetch by clamgate, one request by nginx to fill its cache.
    assert_eq!(env.stack.upstream.hits("/files/pool/a.deb"), 2);
    assert_eq!(get("/files/pool/eicar.deb").await.status(), 409);

    // clamgate down: even a cached object is refused.
    env.stack.clamgate.stop().await;
    let response = get("/files/pool/a.deb").await;
    assert_eq!(response.status(), 503);
    drop(mirror);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immutable_policy_serves_objects_without_a_validator() {
    let env = NginxStack::start_with(
        |config| {
            if let Some(mirror) = config.policies.get_mut("mirror") {
                mirror.immutable = true;
            }
        },
        |config| config,
    )
    .await;
    let bytes = samples::clean_sample(8_000);
    env.stack.upstream.put_file("plain.bin", bytes.clone());
    let response = env.get("/mirror/plain.bin").await;
    assert_eq!(response.status(), 200);
    assert_eq!(verdict(&response).as_deref(), Some("clean"));
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());
    // No ETag to pin: nginx sends no If-Match.
    assert!(env.stack.upstream.received_headers("/mirror/plain.bin").unwrap().get("if-match").is_none());
    // Cached under `immutable`: no second fetch.
    assert_eq!(env.get("/mirror/plain.bin").await.status(), 200);
    assert_eq!(env.metric("clamgate_fetches_total{outcome=\"scanned\"}").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_gives_the_refusal_the_policy_shapes_and_an_upstreams_own_403_stays_one() {
    let dir = std::env::temp_dir().join(format!("clamgate-nginx-block-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let template = dir.join("blocked.html");
    std::fs::write(&template, "<h1>Blocked</h1><p>{{verdict}} {{signature}} {{direction}} {{status}}</p>\n")
        .unwrap();
    let template = template.display().to_string();
    let env = NginxStack::start_with(
        |config| {
            let mirror = config.policies.get_mut("mirror").expect("the mirror policy");
            mirror.block.status = 423;
            mirror.block.html_template_file = Some(template);
        },
        |config| config,
    )
    .await;
    env.stack.upstream.put_file_with_headers("eicar.com", samples::eicar(), &[("etag", "\"e1\"")]);
    let get = |accept: Option<&'static str>| {
        let mut request = env.stack.http.get(env.nginx.url("/mirror/eicar.com")).header("host", HOST);
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        request.send()
    };
    // A browser: the page, with the policy's status (a status nginx does not name anywhere).
    let response = get(Some("text/html,*/*;q=0.8")).await.unwrap();
    assert_eq!(response.status(), 423);
    assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8");
    let verdicts: Vec<_> = response.headers().get_all("x-clamgate-verdict").iter().collect();
    assert_eq!(verdicts, ["infected"], "one verdict header");
    let page = response.text().await.unwrap();
    assert!(page.starts_with("<h1>Blocked</h1><p>infected Test.Eicar"), "{page}");
    assert!(page.contains("download 423"), "{page}");
    // An API client: JSON, same status.
    let response = get(Some("application/json")).await.unwrap();
    assert_eq!(response.status(), 423);
    assert_eq!(json(response).await["verdict"], "infected");
    let response = get(None).await.unwrap();
    assert_eq!(response.status(), 423);
    assert_eq!(response.headers()["content-type"], "application/json");

    // The default policy (no page) answers JSON whatever the client accepts: here a miss it
    // refuses (not_cached, 502).
    let response = env
        .stack
        .http
        .get(env.nginx.url("/files/eicar.com"))
        .header("host", HOST)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(json(response).await["reason"], "not_cached");

    // An upstream's own 403, after clamgate allowed the request: a 403, not a clamgate refusal.
    env.stack.upstream.put_file_with_headers("secret.bin", samples::clean_sample(100), &[("etag", "\"s1\"")]);
    assert_eq!(env.get("/mirror/secret.bin").await.status(), 200);
    env.stack.upstream.put_file_with_headers(
        "secret.bin",
        b"no\n".to_vec(),
        &[("etag", "\"s1\""), ("x-upstream-status", "403")],
    );
    let response = env.get("/mirror/secret.bin").await;
    assert_eq!(response.status(), 403);
    assert_eq!(verdict(&response).as_deref(), Some("clean"));
}
