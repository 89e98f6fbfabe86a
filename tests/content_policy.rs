//! Content policy through real Envoy and real clamd: skip rules that check the true type (a body
//! is skipped only when its first bytes are those of its declared type; EICAR declared
//! `image/png` is scanned and refused) and refusals shaped by the policy (status, an HTML page
//! from a template with every value escaped, a redirect, chosen by `Accept`).

mod support;

use clamgate::config::{Config, SkipConfig};
use support::samples;
use support::stack::Stack;

/// A PNG-looking body of `len` bytes: the PNG signature and an IHDR chunk, then filler.
fn png(len: usize) -> Vec<u8> {
    let mut body = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\x01\0\0\0\x01\0\x08\x06\0\0\0".to_vec();
    body.extend((0..len.saturating_sub(body.len())).map(|i| (i * 31 % 251) as u8));
    body
}

fn skip_png(config: &mut Config, directions: &[&str]) {
    config.policy.skip = SkipConfig {
        content_types: vec!["image/png".into(), "video/mp4".into()],
        directions: directions.iter().map(|d| d.to_string()).collect(),
        ..SkipConfig::default()
    };
}

fn skip_sample(kind: &str, direction: &str, content_type: &str) -> String {
    format!(
        "clamgate_{kind}_total{{rule=\"default\",direction=\"{direction}\",content_type=\"{content_type}\"}}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_starts_like_its_declared_type_is_skipped_and_eicar_declared_png_is_refused() {
    let stack = Stack::start_with(|config| skip_png(config, &["response"])).await;
    let image = png(2 * 1024 * 1024 + 17);
    stack.upstream.put_file_with_headers("cat.png", image.clone(), &[("content-type", "image/png")]);
    stack.upstream.put_file_with_headers("eicar.png", samples::eicar(), &[("content-type", "image/png")]);

    let scans_before = stack.clamd_scans().await;
    let response = stack.get("/files/cat.png").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-clamgate-verdict"], "skipped");
    assert!(response.bytes().await.unwrap() == image, "the skipped body must arrive byte-identical");
    assert_eq!(stack.clamd_scans().await, scans_before, "a skipped body must not reach clamd");
    assert_eq!(stack.clamgate.metric(&skip_sample("skipped_bodies", "response", "image/png")).await, 1.0);

    // EICAR declared image/png: its first bytes are not a PNG's, so it is scanned and refused.
    let response = stack.get("/files/eicar.png").await;
    assert_eq!(response.status(), 409);
    assert_eq!(response.headers()["x-clamgate-verdict"], "infected");
    assert_eq!(
        stack.clamgate.metric(&skip_sample("skip_type_mismatches", "response", "image/png")).await,
        1.0
    );
    assert_eq!(stack.clamd_scans().await, scans_before + 1.0);

    // The same PNG declared as something the rule does not name is scanned (and clean).
    stack.upstream.put_file_with_headers(
        "cat.bin",
        image.clone(),
        &[("content-type", "application/octet-stream")],
    );
    let response = stack.get("/files/cat.bin").await;
    assert_eq!(response.headers()["x-clamgate-verdict"], "clean");
    assert!(response.bytes().await.unwrap() == image);
    // Uploads are not skipped by a rule for responses: an EICAR upload declared image/png too.
    let response = stack
        .http
        .post(stack.envoy.url("/upload/up.png"))
        .header("content-type", "image/png")
        .body(image.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(stack.upstream.received_headers("/upload/up.png").unwrap()["x-clamgate-verdict"], "clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_rule_skips_true_pngs_and_scans_eicar_declared_png() {
    let stack = Stack::start_with(|config| skip_png(config, &["request"])).await;
    let image = png(300 * 1024);
    let post = |name: &'static str, body: Vec<u8>| {
        stack
            .http
            .post(stack.envoy.url(&format!("/upload/{name}")))
            .header("content-type", "image/png")
            .body(body)
            .send()
    };
    let response = post("a.png", image.clone()).await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(stack.upstream.received("a.png").as_deref(), Some(&image[..]));
    assert_eq!(stack.upstream.received_headers("/upload/a.png").unwrap()["x-clamgate-verdict"], "skipped");
    assert_eq!(stack.clamgate.metric(&skip_sample("skipped_bodies", "request", "image/png")).await, 1.0);

    let response = post("e.png", samples::eicar()).await.unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(stack.upstream.received("e.png"), None, "EICAR declared image/png reached the upstream");
    assert_eq!(
        stack.clamgate.metric(&skip_sample("skip_type_mismatches", "request", "image/png")).await,
        1.0
    );
}

/// Writes a block page template to a file of its own; the path.
fn template_file(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("clamgate-block-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("blocked.html");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_shapes_its_refusals_html_for_browsers_json_for_the_rest() {
    let template = template_file(
        "page",
        "<!doctype html><title>Blocked</title><p>{{verdict}}: {{signature}} in {{part}} ({{direction}}, {{status}}) id={{request_id}}</p>",
    );
    let stack = Stack::start_with(|config| {
        config.policy.block.status = 403;
        config.policy.block.html_template_file = Some(template);
    })
    .await;
    stack.upstream.put_file("eicar.com", samples::eicar());

    // A browser gets the page, with the configured status.
    let response = stack
        .http
        .get(stack.envoy.url("/files/eicar.com"))
        .header("accept", BROWSER_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(response.headers()["x-clamgate-verdict"], "infected");
    let page = response.text().await.unwrap();
    assert!(page.starts_with("<!doctype html><title>Blocked</title><p>infected: Test.Eicar"), "{page}");
    assert!(page.contains("(download, 403)"), "{page}");

    // curl and API clients get JSON, with the same status.
    for accept in [None, Some("*/*"), Some("application/json")] {
        let mut request = stack.http.get(stack.envoy.url("/files/eicar.com"));
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 403, "{accept:?}");
        assert_eq!(response.headers()["content-type"], "application/json", "{accept:?}");
        let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(body["verdict"], "infected");
    }

    // A hostile file name in a form is escaped in the page.
    let boundary = "XyZ";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"<script>alert('x')</script>.exe\"\r\n\r\n"
    )
    .into_bytes();
    form.extend(samples::eicar());
    form.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let response = stack
        .http
        .post(stack.envoy.url("/upload/form"))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .header("accept", BROWSER_ACCEPT)
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let page = response.text().await.unwrap();
    assert!(!page.contains("<script>"), "{page}");
    assert!(page.contains("file &quot;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;.exe&quot;"), "{page}");
    assert!(page.contains("(upload, 403)"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_can_redirect_every_refusal() {
    let stack = Stack::start_with(|config| {
        config.policy.block.json = false;
        config.policy.block.redirect_url =
            Some("https://intranet.example/blocked?id={{request_id}}&sig={{signature}}".into());
    })
    .await;
    stack.upstream.put_file("eicar.com", samples::eicar());
    let client =
        reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response =
        client.get(stack.envoy.url("/files/eicar.com")).header("x-request-id", "r <1>").send().await.unwrap();
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("https://intranet.example/blocked?id="), "{location}");
    assert!(location.contains("&sig=Test.Eicar"), "{location}");
    assert!(
        !location.contains(['<', '>', ' ']),
        "a request value reached the location unescaped: {location}"
    );
    assert_eq!(response.headers()["x-clamgate-verdict"], "infected");
}

/// `GET /v1/blocked`, as nginx's `@clamgate_denied` calls it: the token, then each header once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_blocked_shapes_what_v1_auth_said_and_refuses_anything_else() {
    let template =
        template_file("blocked-endpoint", "<p>{{verdict}} {{signature}} {{request_id}} {{direction}}</p>");
    let stack = Stack::start_with(|config| {
        config.listen.http_addr = Some("127.0.0.1:0".parse().unwrap());
        config.listen.http_token_file = Some(support::nginx::http_token_file());
        config.policy.block.html_template_file = Some(template);
    })
    .await;
    let url = format!("http://{}/v1/blocked", stack.clamgate.http_addr.unwrap());
    let body = r#"{"verdict":"infected","signature":"Sig<b>","request_id":"r\"1"}"#;
    let full = [
        ("x-clamgate-token", support::nginx::TEST_HTTP_TOKEN),
        ("x-clamgate-policy", "default"),
        ("x-clamgate-status", "409"),
        ("x-clamgate-body", body),
        ("x-clamgate-direction", "download"),
    ];
    let send = |headers: Vec<(&'static str, &'static str)>, accept: Option<&'static str>| {
        let mut request = stack.http.get(&url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        request.send()
    };
    let response = send(full.to_vec(), Some("text/html")).await.unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.text().await.unwrap(), "<p>infected Sig&lt;b&gt; r&quot;1 download</p>");
    let response = send(full.to_vec(), None).await.unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(response.text().await.unwrap(), body, "JSON passes as /v1/auth gave it");

    // Without the token: 401, before anything else is read.
    assert_eq!(send(full[1..].to_vec(), None).await.unwrap().status(), 401);
    // Each header missing, and values /v1/auth never gives: 400.
    for missing in 1..4 {
        let headers: Vec<_> =
            full.iter().enumerate().filter(|(i, _)| *i != missing).map(|(_, h)| *h).collect();
        assert_eq!(send(headers, None).await.unwrap().status(), 400, "without {}", full[missing].0);
    }
    for (name, value) in [
        ("x-clamgate-status", "200"),
        ("x-clamgate-status", "abc"),
        ("x-clamgate-body", "not json"),
        ("x-clamgate-body", r#"{"verdict":"clean"}"#),
        ("x-clamgate-policy", "nosuch"),
    ] {
        let headers: Vec<_> =
            full.iter().map(|(n, v)| if *n == name { (*n, value) } else { (*n, *v) }).collect();
        let response = send(headers, None).await.unwrap();
        assert_eq!(response.status(), 400, "{name}: {value}");
    }
    let mut twice = full.to_vec();
    twice.push(("x-clamgate-status", "502"));
    assert_eq!(send(twice, None).await.unwrap().status(), 400);
}
