//! Multipart uploads through real Envoy and real clamd, each part scanned as its own file: a
//! file known only by its hash (`Test.HashOnly`, `testdata/clamav/test.hdb`) is found inside a
//! form, wherever it sits and however the body is cut into FULL_DUPLEX pieces; the 409 names the
//! part; a form that cannot be split is never passed.

mod support;

use serde_json::Value;
use support::samples;
use support::stack::Stack;

/// A multipart body with `boundary`: each part is (its header lines, its data).
fn form(boundary: &str, parts: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (headers, data) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n{headers}\r\n\r\n").as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

fn file_part(field: &str, filename: &str, data: Vec<u8>) -> (String, Vec<u8>) {
    let headers = format!(
        "Content-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream"
    );
    (headers, data)
}

fn text_part(field: &str, text: &str) -> (String, Vec<u8>) {
    (format!("Content-Disposition: form-data; name=\"{field}\""), text.as_bytes().to_vec())
}

/// POSTs `body` to `/upload/{name}` with `content_type`, sent in pieces of `piece_bytes` (so
/// that Envoy passes it on in many FULL_DUPLEX messages): the status and the answer's body.
async fn post(
    stack: &Stack,
    name: &str,
    content_type: &str,
    body: &[u8],
    piece_bytes: usize,
) -> (u16, Vec<u8>) {
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(piece_bytes.max(1)).map(|piece| Ok(piece.to_vec())).collect();
    let response = stack
        .http
        .post(stack.envoy.url(&format!("/upload/{name}")))
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)))
        .send()
        .await
        .expect("POST through Envoy");
    let status = response.status().as_u16();
    (status, response.bytes().await.expect("the answer").to_vec())
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|err| panic!("not JSON ({err}): {}", String::from_utf8_lossy(body)))
}

const FORM: &str = "multipart/form-data; boundary=----clamgateFormBoundary7MA4YWxkTrZu0gW";
const BOUNDARY: &str = "----clamgateFormBoundary7MA4YWxkTrZu0gW";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_known_by_its_hash_is_found_inside_a_form_and_the_409_names_it() {
    let stack = Stack::start().await;
    let body = form(
        BOUNDARY,
        &[text_part("title", "holiday"), file_part("upload", "invoice.exe", samples::hash_only_sample())],
    );
    let (status, answer) = post(&stack, "form-hash", FORM, &body, 64 * 1024).await;
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&answer));
    let answer = json(&answer);
    assert_eq!(answer["verdict"], "infected");
    assert!(answer["signature"].as_str().unwrap_or_default().starts_with("Test.HashOnly"), "{answer}");
    assert_eq!(answer["part"], "field \"upload\", file \"invoice.exe\"");
    assert_eq!(stack.upstream.received("form-hash"), None, "the upstream received the infected form");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eicar_in_the_last_of_many_parts_is_found() {
    let stack = Stack::start().await;
    let mut parts: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| file_part(&format!("f{i}"), &format!("{i}.bin"), samples::clean_sample(2_000 + i)))
        .collect();
    parts.push(file_part("last", "last.com", samples::eicar()));
    let (status, answer) = post(&stack, "form-eicar", FORM, &form(BOUNDARY, &parts), 4096).await;
    assert_eq!(status, 409);
    let answer = json(&answer);
    assert!(answer["signature"].as_str().unwrap_or_default().starts_with("Test.Eicar"), "{answer}");
    assert_eq!(answer["part"], "field \"last\", file \"last.com\"");
    assert_eq!(stack.upstream.received("form-eicar"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_cut_across_many_pieces_is_found_whole() {
    let stack = Stack::start().await;
    // Clean parts around it push the hash-signed file across piece boundaries; 997-byte pieces
    // cut the boundary lines and the file itself at many offsets.
    let body = form(
        BOUNDARY,
        &[
            file_part("a", "a.bin", samples::clean_sample(100_000)),
            file_part("b", "b.bin", samples::hash_only_sample()),
            file_part("c", "c.bin", samples::clean_sample(70_001)),
        ],
    );
    let (status, answer) = post(&stack, "form-split", FORM, &body, 997).await;
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(json(&answer)["part"], "field \"b\", file \"b.bin\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoded_file_name_is_named_decoded() {
    let stack = Stack::start().await;
    let headers =
        "Content-Disposition: form-data; name=\"doc\"; filename*=UTF-8''r%C3%A9sum%C3%A9.exe".to_string();
    let body = form(BOUNDARY, &[(headers, samples::hash_only_sample())]);
    let (status, answer) = post(&stack, "form-name", FORM, &body, 64 * 1024).await;
    assert_eq!(status, 409);
    assert_eq!(json(&answer)["part"], "field \"doc\", file \"résumé.exe\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_form_with_its_boundary_inside_a_part_reaches_the_upstream_unchanged() {
    let stack = Stack::start().await;
    let mut tricky = samples::clean_sample(10_000);
    tricky.extend_from_slice(format!("--{BOUNDARY} inside the data, not at a line start").as_bytes());
    tricky.extend_from_slice(&samples::clean_sample(5_000));
    let body = form(BOUNDARY, &[text_part("t", "x"), file_part("f", "f.bin", tricky)]);
    let (status, answer) = post(&stack, "form-clean", FORM, &body, 3000).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(stack.upstream.received("form-clean").as_deref(), Some(&body[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base64_part_is_scanned_decoded_too() {
    use base64::Engine as _;
    let stack = Stack::start().await;
    let encoded = base64::engine::general_purpose::STANDARD.encode(samples::hash_only_sample());
    let lines: Vec<&[u8]> = encoded.as_bytes().chunks(76).collect();
    let headers =
        "Content-Disposition: form-data; name=\"f\"; filename=\"x.exe\"\r\nContent-Transfer-Encoding: base64";
    let body = form(BOUNDARY, &[(headers.to_string(), lines.join(&b"\r\n"[..]))]);
    let (status, answer) = post(&stack, "form-b64", FORM, &body, 1000).await;
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(json(&answer)["part"], "field \"f\", file \"x.exe\", decoded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_that_cannot_be_split_is_refused_unscanned_never_passed() {
    let stack = Stack::start().await;
    let good = form(BOUNDARY, &[file_part("f", "f.bin", samples::clean_sample(3_000))]);
    let too_many: Vec<(String, Vec<u8>)> = (0..1001).map(|i| text_part(&format!("f{i}"), "x")).collect();
    let inner = form("inner", &[file_part("g", "g.bin", b"x".to_vec())]);
    let middle = form(
        "middle",
        &[(
            "Content-Disposition: form-data; name=\"m\"\r\nContent-Type: multipart/mixed; boundary=inner"
                .to_string(),
            inner,
        )],
    );
    let too_deep = form(
        BOUNDARY,
        &[(
            "Content-Disposition: form-data; name=\"d\"\r\nContent-Type: multipart/mixed; boundary=middle"
                .to_string(),
            middle,
        )],
    );
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("truncated", FORM, good[..good.len() - 12].to_vec()),
        ("no boundary parameter", "multipart/form-data", good.clone()),
        ("another boundary", "multipart/form-data; boundary=not-the-one", good.clone()),
        ("more than 1000 parts", FORM, form(BOUNDARY, &too_many)),
        ("nested three levels", FORM, too_deep),
        ("not multipart at all", FORM, samples::clean_sample(2_000)),
    ];
    for (i, (case, content_type, body)) in cases.iter().enumerate() {
        let name = format!("form-bad-{i}");
        let (status, answer) = post(&stack, &name, content_type, body, 8192).await;
        assert_eq!(status, 422, "{case}: {}", String::from_utf8_lossy(&answer));
        let answer = json(&answer);
        assert_eq!(answer["verdict"], "unscanned", "{case}");
        assert_eq!(answer["reason"], "malformed_multipart", "{case}");
        assert_eq!(stack.upstream.received(&name), None, "{case}: the upstream received it");
    }
    assert_eq!(
        stack.clamgate.metric(r#"clamgate_unscanned_total{reason="malformed_multipart"}"#).await,
        cases.len() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_part_limit_applies() {
    let stack = Stack::start_with(|config| config.scan.multipart_max_parts = 3).await;
    let three: Vec<(String, Vec<u8>)> = (0..3).map(|i| text_part(&format!("f{i}"), "x")).collect();
    let (status, _) = post(&stack, "form-three", FORM, &form(BOUNDARY, &three), 4096).await;
    assert_eq!(status, 201);
    let four: Vec<(String, Vec<u8>)> = (0..4).map(|i| text_part(&format!("f{i}"), "x")).collect();
    let (status, answer) = post(&stack, "form-four", FORM, &form(BOUNDARY, &four), 4096).await;
    assert_eq!(status, 422);
    assert_eq!(json(&answer)["reason"], "malformed_multipart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_under_two_content_types_or_a_content_encoding_is_refused_unscanned() {
    use std::io::Write as _;
    let stack = Stack::start().await;
    let body = form(BOUNDARY, &[file_part("f", "f.bin", samples::hash_only_sample())]);
    // Which Content-Type would the application read? Neither is trusted.
    let response = stack
        .http
        .post(stack.envoy.url("/upload/form-two-types"))
        .header("content-type", FORM)
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 422);
    assert_eq!(json(&response.bytes().await.expect("answer"))["reason"], "malformed_multipart");
    assert_eq!(stack.upstream.received("form-two-types"), None);
    // A gzip-encoded form: its parts are not split after decoding.
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&body).expect("gzip");
    let response = stack
        .http
        .post(stack.envoy.url("/upload/form-gzip"))
        .header("content-type", FORM)
        .header("content-encoding", "gzip")
        .body(gzip.finish().expect("gzip"))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 422);
    assert_eq!(json(&response.bytes().await.expect("answer"))["reason"], "malformed_multipart");
    assert_eq!(stack.upstream.received("form-gzip"), None);
}
