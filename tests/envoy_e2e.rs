//! End to end through a real Envoy 1.40 running the shipped envoy/envoy.yaml: clean traffic passes
//! byte-identical, infected downloads and uploads get 409, and no failure lets a body through.

mod support;

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::samples;
use support::stack::Stack;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn json_body(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

fn verdict_header(response: &reqwest::Response) -> Option<String> {
    response.headers().get("x-clamgate-verdict").map(|v| v.to_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_download_passes_byte_identical() {
    let stack = Stack::start().await;
    let body = samples::clean_sample(3 * 1024 * 1024 + 17);
    stack.upstream.put_file("clean.bin", body.clone());
    let response = stack.get("/files/clean.bin").await;
    assert_eq!(response.status(), 200, "{}", stack.envoy.logs());
    assert_eq!(verdict_header(&response).as_deref(), Some("clean"));
    let received = response.bytes().await.expect("body");
    assert_eq!(
        sha256_hex(&received),
        sha256_hex(&body),
        "the client must get the upstream's bytes unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infected_download_is_409_with_json() {
    let stack = Stack::start().await;
    let eicar = samples::eicar();
    stack.upstream.put_file("eicar.com", eicar.clone());
    let response = stack.get("/files/eicar.com").await;
    assert_eq!(response.status(), 409);
    assert_eq!(response.headers().get("content-type").map(|v| v.as_bytes()), Some(&b"application/json"[..]));
    assert_eq!(verdict_header(&response).as_deref(), Some("infected"));
    let body = json_body(response).await;
    assert_eq!(body["verdict"], "infected");
    assert!(body["signature"].as_str().unwrap_or_default().starts_with("Test.Eicar.Body"), "{body}");
    assert_eq!(body["sha256"], sha256_hex(&eicar));
    assert!(!body["request_id"].as_str().unwrap_or_default().is_empty(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eicar_inside_a_zip_is_409() {
    let stack = Stack::start().await;
    stack.upstream.put_file("archive.zip", samples::eicar_zip());
    let response = stack.get("/files/archive.zip").await;
    assert_eq!(response.status(), 409);
    assert!(json_body(response).await["signature"]
        .as_str()
        .unwrap_or_default()
        .starts_with("Test.Eicar.Body"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_signature_download_is_409() {
    let stack = Stack::start().await;
    stack.upstream.put_file("hash.bin", samples::hash_only_sample());
    let response = stack.get("/files/hash.bin").await;
    assert_eq!(response.status(), 409);
    assert!(json_body(response).await["signature"].as_str().unwrap_or_default().starts_with("Test.HashOnly"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infected_upload_is_409_and_never_reaches_the_upstream() {
    let stack = Stack::start().await;
    let response = stack.post("/upload/eicar.com", samples::eicar()).await;
    assert_eq!(response.status(), 409);
    assert_eq!(json_body(response).await["verdict"], "infected");
    assert_eq!(stack.upstream.received("eicar.com"), None, "the upstream received the infected upload");
    assert_eq!(stack.upstream.hits("/upload/eicar.com"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_upload_reaches_the_upstream_unchanged() {
    let stack = Stack::start().await;
    let body = samples::clean_sample(200_000);
    let response = stack.post("/upload/data.bin", body.clone()).await;
    assert_eq!(response.status(), 201, "{}", stack.envoy.logs());
    assert_eq!(stack.upstream.received("data.bin").as_deref(), Some(&body[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamd_down_is_503_never_200() {
    let mut stack = Stack::start().await;
    stack.upstream.put_file("clean.bin", samples::clean_sample(10_000));
    stack.upstream.put_file("eicar.com", samples::eicar());
    stack.stop_clamd().await;
    for path in ["/files/clean.bin", "/files/eicar.com"] {
        let response = stack.get(path).await;
        assert_eq!(response.status(), 503, "{path} while clamd is down");
        assert!(response.headers().contains_key("retry-after"), "{path}: 503 without retry-after");
    }
    let response = stack.post("/upload/x.bin", samples::clean_sample(5_000)).await;
    assert_eq!(response.status(), 503);
    assert_eq!(stack.upstream.received("x.bin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_infected_content_is_refused_from_the_cache_while_clamd_is_down() {
    let mut stack = Stack::start().await;
    let eicar = samples::eicar();
    stack.upstream.put_file("first.com", eicar.clone());
    stack.upstream.put_file("second-name.com", eicar);
    assert_eq!(stack.get("/files/first.com").await.status(), 409);
    let hits_before = stack
        .clamgate
        .metric(r#"clamgate_cache_lookups_total{key="content",tier="memory",result="hit"}"#)
        .await;

    // With clamd gone, only the cache can know this content is infected.
    stack.stop_clamd().await;
    let response = stack.get("/files/second-name.com").await;
    assert_eq!(response.status(), 409);
    assert_eq!(json_body(response).await["verdict"], "infected");
    let hits_after = stack
        .clamgate
        .metric(r#"clamgate_cache_lookups_total{key="content",tier="memory",result="hit"}"#)
        .await;
    assert_eq!(hits_after, hits_before + 1.0, "the second answer must come from the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_control_headers_change_nothing() {
    let stack = Stack::start().await;
    stack.upstream.put_file("eicar.com", samples::eicar());
    let response = stack
        .http
        .get(stack.envoy.url("/files/eicar.com"))
        .header("x-clamgate-verdict", "clean")
        .header("x-clamgate-policy", "off")
        .header("x-clamgate-bypass", "1")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 409, "a client header must not bypass the scan");

    let response = stack
        .http
        .post(stack.envoy.url("/upload/eicar.com"))
        .header("x-clamgate-verdict", "clean")
        .body(samples::eicar())
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 409);
    assert_eq!(stack.upstream.received("eicar.com"), None);

    // On a clean upload the application sees only clamgate's own verdict header.
    let response = stack
        .http
        .post(stack.envoy.url("/upload/ok.bin"))
        .header("x-clamgate-verdict", "infected")
        .header("x-clamgate-anything", "spoofed")
        .body(samples::clean_sample(1000))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 201);
    let headers = stack.upstream.received_headers("/upload/ok.bin").expect("upstream saw the upload");
    let clamgate_headers: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-clamgate-"))
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or_default().to_string()))
        .collect();
    assert_eq!(clamgate_headers, vec![("x-clamgate-verdict".to_string(), "clean".to_string())]);
}

/// A body with EICAR as its last bytes, `len` bytes in all.
fn eicar_at_the_end(len: usize) -> Vec<u8> {
    let eicar = samples::eicar();
    let mut body = samples::clean_sample(len - eicar.len());
    body.extend_from_slice(&eicar);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_above_tonics_default_4_mib_limit_are_scanned() {
    // Rule 2: with tonic's default decode limit an 8 MiB body was delivered unscanned.
    let stack = Stack::start().await;
    let clean = samples::clean_sample(12 * 1024 * 1024);
    stack.upstream.put_file("big-clean.bin", clean.clone());
    stack.upstream.put_file("big-infected.bin", eicar_at_the_end(12 * 1024 * 1024));

    let response = stack.get("/files/big-clean.bin").await;
    assert_eq!(response.status(), 200, "{}", stack.envoy.logs());
    assert_eq!(sha256_hex(&response.bytes().await.expect("body")), sha256_hex(&clean));

    assert_eq!(stack.get("/files/big-infected.bin").await.status(), 409);

    let response = stack.post("/upload/big-infected.bin", eicar_at_the_end(10 * 1024 * 1024)).await;
    assert_eq!(response.status(), 409);
    assert_eq!(stack.upstream.received("big-infected.bin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_clamgate_cannot_read_is_never_delivered() {
    // clamgate's message limit set below Envoy's buffer limit: the message fails to decode, and
    // the stream must end with an error status (Envoy: 503), never OK (Envoy: body delivered).
    let stack = Stack::start_with(|config| config.ext_proc.max_message_bytes = 1024 * 1024).await;
    stack.upstream.put_file("two-mib.bin", eicar_at_the_end(2 * 1024 * 1024));
    let response = stack.get("/files/two-mib.bin").await;
    assert_eq!(response.status(), 503, "{}", stack.envoy.logs());

    let response = stack.post("/upload/two-mib.bin", eicar_at_the_end(2 * 1024 * 1024)).await;
    assert_eq!(response.status(), 503);
    assert_eq!(stack.upstream.received("two-mib.bin"), None);
    let errors = stack.clamgate.metric(r#"clamgate_ext_proc_stream_errors_total{kind="inbound"}"#).await;
    assert!(errors >= 2.0, "the failures must be counted, got {errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_envoys_buffer_limit_is_streamed_and_scanned_whole() {
    // BUFFERED mode caps bodies at Envoy's buffer limit (16 MiB in the shipped config). clamgate
    // switches downloads to FULL_DUPLEX_STREAMED, and the shipped routes send uploads that way,
    // so clamgate holds them itself: the whole body is scanned, and a clean one arrives whole.
    let stack = Stack::start().await;
    let clean = samples::clean_sample(17 * 1024 * 1024);
    stack.upstream.put_file("huge.bin", clean.clone());
    stack.upstream.put_file("huge-infected.bin", eicar_at_the_end(17 * 1024 * 1024));
    let response = stack.get("/files/huge.bin").await;
    assert_eq!(response.status(), 200, "{}", stack.envoy.logs());
    assert_eq!(verdict_header(&response).as_deref(), Some("clean"));
    assert_eq!(sha256_hex(&response.bytes().await.expect("body")), sha256_hex(&clean));
    assert_eq!(stack.get("/files/huge-infected.bin").await.status(), 409);

    let response = stack.post("/upload/huge.bin", clean.clone()).await;
    assert_eq!(response.status(), 201, "{}", stack.envoy.logs());
    let received = stack.upstream.received("huge.bin").expect("the clean upload arrived");
    assert_eq!(sha256_hex(&received), sha256_hex(&clean));
    let response = stack.post("/upload/huge-infected.bin", eicar_at_the_end(17 * 1024 * 1024)).await;
    assert_eq!(response.status(), 409, "{}", stack.envoy.logs());
    assert_eq!(stack.upstream.received("huge-infected.bin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_slower_than_scan_timeout_is_503_not_a_pass() {
    // A clamd that accepts the connection and then never answers. Real clamd cannot be made to
    // stall on demand, so this one fault uses a bare TCP listener standing in for it.
    let upstream = support::upstream::Upstream::start().await;
    upstream.put_file("clean.bin", samples::clean_sample(10_000));
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let mut config = support::clamgate::test_config(&format!("tcp://{silent_addr}"));
    config.scan.timeout_ms = 500;
    let stalled = support::clamgate::ClamgateInstance::start(config).await;
    let (grpc, upstream_addr) = (stalled.grpc_addr, upstream.addr());
    let envoy = tokio::task::spawn_blocking(move || support::envoy::EnvoyProcess::start(grpc, upstream_addr))
        .await
        .expect("envoy");
    let http = reqwest::Client::builder().no_proxy().build().expect("client");
    let started = std::time::Instant::now();
    let response = http.get(envoy.url("/files/clean.bin")).send().await.expect("GET");
    assert_eq!(response.status(), 503, "{}", envoy.logs());
    assert!(response.headers().contains_key("retry-after"), "clamgate's 503, not Envoy's");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "answered by clamgate's deadline");
    let body = json_body(response).await;
    assert_eq!(body["reason"], "timeout", "{body}");
    assert_eq!(upstream.hits("/files/clean.bin"), 1, "the upstream answered; its body was held");
    drop(silent);
}

// --- Envoy configurations under which clamgate cannot scan -------------------------------------

/// A route under `prefix` to the upstream (the prefix stripped) with its own ext_proc
/// `processing_mode` (`modes`: the six mode fields, YAML flow style).
fn route_with_modes(prefix: &str, modes: &str) -> String {
    format!(
        r#"              - match: {{prefix: "{prefix}"}}
                route: {{cluster: upstream_http, prefix_rewrite: "/", timeout: 60s}}
                typed_per_filter_config:
                  envoy.filters.http.ext_proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides:
                      processing_mode: {{{modes}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_sends_no_body_clamgate_scans_is_503_never_the_body() {
    // A route whose processing_mode turns off a body the policy scans: Envoy would deliver it
    // unscanned, without an error, a metric or a verdict header. clamgate fails the stream.
    let routes = [
        route_with_modes(
            "/no-response-body/",
            "request_header_mode: SEND, response_header_mode: SEND, request_body_mode: FULL_DUPLEX_STREAMED, \
             response_body_mode: NONE, request_trailer_mode: SEND, response_trailer_mode: SKIP",
        ),
        route_with_modes(
            "/no-request-body/",
            "request_header_mode: SEND, response_header_mode: SEND, request_body_mode: NONE, \
             response_body_mode: BUFFERED, request_trailer_mode: SKIP, response_trailer_mode: SKIP",
        ),
    ]
    .concat();
    let stack =
        Stack::start_with_envoy(|_| {}, move |config| support::envoy::add_routes(&config, &routes)).await;
    stack.upstream.put_file("eicar.com", samples::eicar());
    stack.upstream.put_file("clean.bin", samples::clean_sample(10_000));

    // Responses not sent to clamgate: refused at the request headers, the upstream never asked.
    for path in ["/no-response-body/files/eicar.com", "/no-response-body/files/clean.bin"] {
        let response = stack.get(path).await;
        assert_eq!(response.status(), 503, "{path}: {}", stack.envoy.logs());
    }
    assert_eq!(stack.upstream.hits_with_prefix("/files/"), 0);
    // A HEAD response has no body: nothing is left unscanned.
    let response =
        stack.http.head(stack.envoy.url("/no-response-body/files/clean.bin")).send().await.expect("HEAD");
    assert_eq!(response.status(), 200, "{}", stack.envoy.logs());

    // Requests not sent to clamgate: an upload is refused; a GET has no body and still works
    // (its response is scanned).
    let response = stack.post("/no-request-body/upload/eicar.com", samples::eicar()).await;
    assert_eq!(response.status(), 503, "{}", stack.envoy.logs());
    assert_eq!(stack.upstream.received("eicar.com"), None);
    let response = stack.get("/no-request-body/files/clean.bin").await;
    assert_eq!(response.status(), 200, "{}", stack.envoy.logs());
    assert_eq!(verdict_header(&response).as_deref(), Some("clean"));
    assert_eq!(stack.get("/no-request-body/files/eicar.com").await.status(), 409);

    let errors = stack.clamgate.metric(r#"clamgate_ext_proc_stream_errors_total{kind="body_mode"}"#).await;
    assert_eq!(errors, 3.0, "each refused stream is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ext_proc_filter_in_observability_mode_is_counted_as_a_stream_error() {
    // observability_mode: Envoy does not wait for clamgate, so nothing can be blocked. clamgate
    // cannot stop the body, but it must not look like a working scan: the stream fails and is
    // counted (kind body_mode) and logged.
    let stack = Stack::start_with_envoy(
        |_| {},
        |config| {
            let anchor = "              failure_mode_allow: false\n";
            assert_eq!(config.matches(anchor).count(), 1);
            config.replacen(anchor, &format!("{anchor}              observability_mode: true\n"), 1)
        },
    )
    .await;
    stack.upstream.put_file("clean.bin", samples::clean_sample(1_000));
    let response = stack.get("/files/clean.bin").await;
    assert_ne!(verdict_header(&response).as_deref(), Some("clean"), "{}", stack.envoy.logs());
    let metric = r#"clamgate_ext_proc_stream_errors_total{kind="body_mode"}"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stack.clamgate.metric(metric).await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no body_mode stream error counted\n{}",
            stack.envoy.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

// --- Policy names Envoy sends ------------------------------------------------------------------

/// A route under `prefix` to the upstream (the prefix stripped), with `extra` YAML (indented by
/// 16 spaces) for its metadata or its ExtProcPerRoute.
fn route_with(prefix: &str, extra: &str) -> String {
    format!(
        "              - match: {{prefix: \"{prefix}\"}}\n                route: {{cluster: upstream_http, prefix_rewrite: \"/\", timeout: 60s}}\n{extra}"
    )
}

fn route_metadata_policy(prefix: &str, value: &str) -> String {
    route_with(
        prefix,
        &format!("                metadata: {{filter_metadata: {{clamgate: {{policy: {value}}}}}}}\n"),
    )
}

fn grpc_metadata_policy(prefix: &str, value: &str) -> String {
    route_with(
        prefix,
        &format!(
            r#"                typed_per_filter_config:
                  envoy.filters.http.ext_proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides:
                      grpc_initial_metadata: [{{key: x-clamgate-policy, value: {value}}}]
"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_name_that_is_not_a_plain_name_fails_closed() {
    // Each would select the default [policy] if read loosely; each must be a 503 instead. (An
    // empty grpc_initial_metadata value is not sent at all by Envoy 1.40: see ext_proc_stream.rs.)
    let routes = [
        route_metadata_policy("/meta-number/", "3"),
        route_metadata_policy("/meta-bool/", "true"),
        route_metadata_policy("/meta-struct/", "{name: mirror}"),
        route_metadata_policy("/meta-empty/", "\"\""),
        grpc_metadata_policy("/grpc-utf8/", "\"mirr\u{f6}r\""),
        // Controls: a plain name works through either carrier.
        route_metadata_policy("/meta-mirror/", "mirror"),
        grpc_metadata_policy("/grpc-mirror/", "mirror"),
    ]
    .concat();
    let stack =
        Stack::start_with_envoy(|_| {}, move |config| support::envoy::add_routes(&config, &routes)).await;
    stack.upstream.put_file("clean.bin", samples::clean_sample(1_000));
    let mut statuses = Vec::new();
    for prefix in ["/meta-number/", "/meta-bool/", "/meta-struct/", "/meta-empty/", "/grpc-utf8/"] {
        let response = stack.get(&format!("{prefix}files/clean.bin")).await;
        statuses.push((prefix, response.status().as_u16()));
    }
    assert!(statuses.iter().all(|(_, status)| *status == 503), "{statuses:?}\n{}", stack.envoy.logs());
    assert_eq!(stack.upstream.hits("/files/clean.bin"), 0, "no request reached the upstream");
    for prefix in ["/meta-mirror/", "/grpc-mirror/"] {
        let response = stack.get(&format!("{prefix}files/clean.bin")).await;
        assert_eq!(response.status(), 200, "{prefix}: {}", stack.envoy.logs());
    }
}

// --- Answers at the headers ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_only_lets_a_known_infected_resource_through_and_says_so() {
    // Both kinds of resource entry: one tied to an ETag (checked at the response headers), and
    // one for an immutable upstream (no validator: decided at the request headers, where a body
    // answer was a spurious message to Envoy: 500).
    for (immutable, headers) in [(true, vec![]), (false, vec![("etag", "\"bad\"")])] {
        let stack = Stack::start_with(|config| {
            if let Some(mirror) = config.policies.get_mut("mirror") {
                mirror.report_only = true;
                mirror.immutable = immutable;
            }
        })
        .await;
        stack.upstream.put_file_with_headers("bad.exe", samples::eicar(), &headers);
        for attempt in ["scanned", "resource hit"] {
            let response = stack.get("/mirror/bad.exe").await;
            assert_eq!(response.status(), 200, "immutable {immutable}, {attempt}: {}", stack.envoy.logs());
            assert_eq!(verdict_header(&response).as_deref(), Some("infected"), "{attempt}");
            assert_eq!(response.bytes().await.expect("body"), samples::eicar(), "{attempt}");
        }
        let hits = r#"clamgate_cache_lookups_total{key="resource",tier="memory",result="hit"}"#;
        assert_eq!(stack.clamgate.metric(hits).await, 1.0, "the second request was a resource hit");
        assert_eq!(stack.upstream.hits("/mirror/bad.exe"), 2, "report_only: the request went on");
        // The body that went on was scanned (from the content cache): each delivery is counted.
        let infected = r#"clamgate_verdicts_total{source="response",verdict="infected"}"#;
        assert_eq!(stack.clamgate.metric(infected).await, 2.0, "immutable {immutable}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_allowed_unscanned_at_their_headers_carry_the_unscanned_verdict() {
    let stack = Stack::start_with(|config| {
        config.scan.max_scan_bytes = 100_000;
        config.policy.on_unscanned.too_large = clamgate::config::UnscannedAction::Allow;
    })
    .await;
    let big = samples::clean_sample(200_000);
    stack.upstream.put_file("big.bin", big.clone());
    let response = stack.get("/files/big.bin").await;
    assert_eq!(response.status(), 200, "{}", stack.envoy.logs());
    assert_eq!(verdict_header(&response).as_deref(), Some("unscanned"));
    assert_eq!(response.bytes().await.expect("body").len(), big.len());

    let response = stack.post("/upload/big.bin", big.clone()).await;
    assert_eq!(response.status(), 201, "{}", stack.envoy.logs());
    let headers = stack.upstream.received_headers("/upload/big.bin").expect("the upload arrived");
    assert_eq!(headers.get("x-clamgate-verdict").map(|v| v.as_bytes()), Some(&b"unscanned"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_bodies_count_against_the_memory_budget() {
    // A route that keeps uploads BUFFERED (one gRPC message): the body and tonic's decode buffer
    // for it are counted in bodies.memory_budget_bytes, so with a 1 MiB budget a 2 MiB body goes
    // to a temp file while it is scanned (before, it sat in memory, uncounted).
    let route = route_with_modes(
        "/buffered/",
        "request_header_mode: SEND, response_header_mode: SEND, request_body_mode: BUFFERED, \
         response_body_mode: BUFFERED, request_trailer_mode: SKIP, response_trailer_mode: SKIP",
    );
    let stack = Stack::start_with_envoy(
        |config| {
            config.bodies.memory_budget_bytes = 1024 * 1024;
            config.bodies.stream_memory_bytes = 1024 * 1024;
        },
        move |config| support::envoy::add_routes(&config, &route),
    )
    .await;
    let clean = samples::clean_sample(2 * 1024 * 1024);
    let response = stack.post("/buffered/upload/clean.bin", clean.clone()).await;
    assert_eq!(response.status(), 201, "{}", stack.envoy.logs());
    assert!(stack.upstream.received("clean.bin") == Some(clean), "the clean upload arrived unchanged");
    let response = stack.post("/buffered/upload/bad.bin", eicar_at_the_end(2 * 1024 * 1024)).await;
    assert_eq!(response.status(), 409, "{}", stack.envoy.logs());
    assert_eq!(stack.upstream.received("bad.bin"), None);

    // Both uploads went to disk (and the upstream's short answer to the clean one too: that
    // stream's decode buffer still holds the budget).
    let spilled = stack.clamgate.metric("clamgate_spilled_bodies_total").await;
    assert!(spilled >= 2.0, "both uploads went to disk: {spilled} spilled");
    let peak = stack.clamgate.metric("clamgate_held_body_memory_peak_bytes").await;
    assert!(peak >= 2.0 * 1024.0 * 1024.0, "the decode buffer of a 2 MiB message is counted: peak {peak}");
    // Everything is given back when the streams end.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stack.clamgate.metric("clamgate_held_body_memory_bytes").await != 0.0 {
        assert!(std::time::Instant::now() < deadline, "held memory never went back to 0");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
