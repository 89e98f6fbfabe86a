//! `Content-Encoding` on the scan path: clamd scans the decoded body while the client gets the
//! encoded bytes. First the scanner against real clamd (every encoding, the cache key, what each
//! decoding failure becomes, a held body read back from its temp file), then the whole stack
//! through real Envoy (downloads and uploads in every encoding, bombs, unknown and corrupt
//! encodings, a body held on disk).
//!
//! clamd unpacks gzip itself, so only `br`, `zstd` and `deflate` prove that clamgate decodes.

mod support;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clamgate::cache::ContentKey;
use clamgate::config::{CacheMode, Config};
use clamgate::decode::Encoding;
use clamgate::metrics::{Metrics, Source};
use clamgate::policy::Direction;
use clamgate::scanner::{encoded_content_key, Scanner};
use clamgate::spool::Spool;
use clamgate::verdict::{UnscannedReason, Verdict};
use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
use flate2::Compression;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::clamd::ClamdProcess;
use support::clamgate::{metric_value, test_config};
use support::containers::{brotli_with_metadata, gzip_with_header, skippable_frame};
use support::samples;
use support::scan::ScanBytes;
use support::stack::Stack;

const MIB: usize = 1024 * 1024;

// --- Encoders (test side: the real libraries, never clamgate's decoder) -------------------------

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).expect("zlib");
    encoder.finish().expect("zlib")
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).expect("deflate");
    encoder.finish().expect("deflate")
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut encoder = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
    encoder.write_all(data).expect("brotli");
    encoder.into_inner()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

/// `data` with `encodings` applied in order, as a server sending `content-encoding: a, b` does.
fn encode(encodings: &[Encoding], data: &[u8]) -> Vec<u8> {
    encodings.iter().fold(data.to_vec(), |body, encoding| match encoding {
        Encoding::Gzip => gzip(&body),
        Encoding::Deflate => zlib(&body),
        Encoding::Brotli => brotli(&body),
        Encoding::Zstd => zstd(&body),
    })
}

/// `len` bytes of deterministic text (words and numbers) that compresses a few times over, as
/// bodies served with a `Content-Encoding` do. Random bytes would not do: compressors store them
/// as they are, and an EICAR among them would reach clamd verbatim, decoded or not.
fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 9] = ["clamd", "scan", "envoy", "body", "gzip", "verdict", "stream", "zstd", "\n"];
    fill(len, seed, |body, state| {
        body.extend_from_slice(WORDS[(state % WORDS.len() as u64) as usize].as_bytes());
        body.extend_from_slice(format!(" {} ", state % 1000).as_bytes());
    })
}

/// `len` pseudo-random hex digits: compresses to about half (4 bits a byte), no better.
fn hex_text(len: usize, seed: u64) -> Vec<u8> {
    fill(len, seed, |body, state| body.extend_from_slice(format!("{state:016x}").as_bytes()))
}

/// `len` bytes made by `append`ing for each step of a xorshift64 sequence started from `seed`.
fn fill(len: usize, seed: u64, mut append: impl FnMut(&mut Vec<u8>, u64)) -> Vec<u8> {
    let mut state = seed | 1;
    let mut body = Vec::with_capacity(len + 32);
    while body.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        append(&mut body, state);
    }
    body.truncate(len);
    body
}

/// EICAR inside some clean text.
fn infected_text() -> Vec<u8> {
    let mut body = text(20_000, 1);
    body.extend_from_slice(&samples::eicar());
    body.extend_from_slice(&text(3_000, 2));
    body
}

/// Whether `body` holds the EICAR string as it is (clamd would then find it without decoding).
fn holds_eicar_verbatim(body: &[u8]) -> bool {
    body.windows(68).any(|window| window == samples::eicar().as_slice())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn signature(verdict: &Verdict) -> &str {
    match verdict {
        Verdict::Infected { signature } => signature,
        other => panic!("expected infected, got {other:?}"),
    }
}

fn unscanned(reason: UnscannedReason) -> Verdict {
    Verdict::Unscanned { reason }
}

// --- The scanner against real clamd --------------------------------------------------------------

fn scanner(config: &Config) -> (Scanner, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    (clamgate::app::build_scanner(config, metrics.clone()).expect("scanner"), metrics)
}

async fn start_clamd() -> ClamdProcess {
    tokio::task::spawn_blocking(ClamdProcess::start).await.expect("start clamd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scanner_decodes_every_encoding_and_keys_it_apart_from_identity() {
    let clamd = start_clamd().await;
    let (scanner, metrics) = scanner(&test_config(&clamd.address()));
    let infected = infected_text();
    let cases: [(&str, Vec<Encoding>, Vec<u8>); 7] = [
        ("gzip", vec![Encoding::Gzip], gzip(&infected)),
        ("deflate", vec![Encoding::Deflate], zlib(&infected)),
        ("deflate", vec![Encoding::Deflate], raw_deflate(&infected)),
        ("br", vec![Encoding::Brotli], brotli(&infected)),
        ("zstd", vec![Encoding::Zstd], zstd(&infected)),
        (
            "stacked",
            vec![Encoding::Gzip, Encoding::Brotli],
            encode(&[Encoding::Gzip, Encoding::Brotli], &infected),
        ),
        (
            "stacked",
            vec![Encoding::Zstd, Encoding::Deflate],
            encode(&[Encoding::Zstd, Encoding::Deflate], &infected),
        ),
    ];
    for (label, encodings, body) in &cases {
        assert!(!holds_eicar_verbatim(body), "{encodings:?}: EICAR is readable without decoding");
        // Sent as identity first: clamd cannot read br, zstd or deflate, so these are Clean, and
        // that verdict is cached under the bytes' SHA-256...
        let as_identity = scanner.scan_body(body, &[], Source::Api, CacheMode::Content).await;
        if *label != "gzip" {
            assert_eq!(as_identity.verdict, Verdict::Clean, "{encodings:?} as identity");
        }
        // ...and must not answer for the same bytes with their encoding.
        let report = scanner.scan_body(body, encodings, Source::Api, CacheMode::Content).await;
        assert!(signature(&report.verdict).starts_with("Test.Eicar.Body"), "{encodings:?}: {report:?}");
        assert!(!report.cached, "{encodings:?}: an identity verdict answered for an encoded body");
        assert_eq!(report.sha256, sha256_hex(body), "sha256 names the received bytes");
        assert_eq!(report.body_bytes, body.len() as u64);
        let sample = format!(r#"clamgate_decoded_bodies_total{{encoding="{label}",outcome="complete"}}"#);
        assert!(metric_value(&metrics.encode(), &sample) >= 1.0, "{sample}");

        // The encoded verdict is cached under the derived key.
        let again = scanner.scan_body(body, encodings, Source::Api, CacheMode::Content).await;
        assert!(again.cached, "{encodings:?}: second scan not from the cache");
        assert_eq!(again.verdict, report.verdict);
    }
    // A held body (FULL_DUPLEX) with the same bytes shares the key of the in-memory one.
    let (_, encodings, body) = &cases[3];
    let spool = Spool::new(64 * MIB as u64, 0, std::env::temp_dir(), metrics.clone());
    let mut held = spool.hold();
    held.push(body.clone().into()).await.expect("hold");
    let received = ContentKey::of(body);
    assert_eq!(held.content_key(), received);
    let report = scanner
        .scan_held(&held, encodings, Source::Proxied(Direction::Response), CacheMode::Content, None)
        .await;
    assert!(report.cached, "{report:?}");
    assert_ne!(encoded_content_key(&received, encodings), received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoding_failures_are_unscanned_never_clean_and_a_decoded_signature_still_counts() {
    let clamd = start_clamd().await;
    let (scanner, metrics) = scanner(&test_config(&clamd.address()));
    let scan = |body: Vec<u8>, encodings: Vec<Encoding>| {
        let scanner = &scanner;
        async move { scanner.scan_body(&body, &encodings, Source::Api, CacheMode::Content).await.verdict }
    };

    // A bomb: 16 MiB of zeros is ~500 bytes of zstd (32000:1, over the default 10000).
    let zeros = vec![0u8; 16 * MIB];
    assert_eq!(scan(zstd(&zeros), vec![Encoding::Zstd]).await, unscanned(UnscannedReason::LimitsExceeded));
    // Stacked encodings multiply their ratios: gzip (1030:1) under deflate.
    let stacked = encode(&[Encoding::Gzip, Encoding::Deflate], &zeros);
    assert_eq!(
        scan(stacked, vec![Encoding::Gzip, Encoding::Deflate]).await,
        unscanned(UnscannedReason::LimitsExceeded)
    );
    // gzip cannot pass 1032:1: 40 MiB of zeros decodes up to max_scan_bytes (25 MiB), no further.
    let big = vec![0u8; 40 * MIB];
    assert_eq!(scan(gzip(&big), vec![Encoding::Gzip]).await, unscanned(UnscannedReason::TooLarge));
    drop(big);

    // Corrupt, truncated, or with bytes after the end: unsupported_encoding.
    let clean = text(300_000, 6);
    let truncated = brotli(&clean)[..1000].to_vec();
    assert_eq!(
        scan(truncated, vec![Encoding::Brotli]).await,
        unscanned(UnscannedReason::UnsupportedEncoding)
    );
    let mut trailing = zstd(&clean);
    trailing.extend_from_slice(b"not zstd");
    assert_eq!(scan(trailing, vec![Encoding::Zstd]).await, unscanned(UnscannedReason::UnsupportedEncoding));
    let not_brotli = samples::clean_sample(5_000);
    assert_eq!(
        scan(not_brotli, vec![Encoding::Brotli]).await,
        unscanned(UnscannedReason::UnsupportedEncoding)
    );

    // What decoded before the failure was scanned: EICAR there makes the body Infected.
    let mut infected_then_garbage = brotli(&infected_text());
    infected_then_garbage.extend_from_slice(b"garbage after the stream");
    let verdict = scan(infected_then_garbage, vec![Encoding::Brotli]).await;
    assert!(signature(&verdict).starts_with("Test.Eicar.Body"), "{verdict:?}");
    let mut eicar_then_bomb = samples::eicar();
    eicar_then_bomb.extend_from_slice(&zeros);
    let verdict = scan(zstd(&eicar_then_bomb), vec![Encoding::Zstd]).await;
    assert!(signature(&verdict).starts_with("Test.Eicar.Body"), "{verdict:?}");

    // An empty body with an encoding is an empty body: scanned, Clean.
    assert_eq!(scan(Vec::new(), vec![Encoding::Gzip]).await, Verdict::Clean);

    let exposition = metrics.encode();
    for (encoding, outcome, expected) in [
        ("zstd", "ratio_exceeded", 2.0),
        ("stacked", "ratio_exceeded", 1.0),
        ("gzip", "too_large", 1.0),
        ("br", "corrupt", 3.0),
        ("zstd", "corrupt", 1.0),
    ] {
        let sample = format!(r#"clamgate_decoded_bodies_total{{encoding="{encoding}",outcome="{outcome}"}}"#);
        assert_eq!(metric_value(&exposition, &sample), expected, "{sample}\n{exposition}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ratio_limit_is_configurable() {
    let clamd = start_clamd().await;
    let zeros_in_gzip = gzip(&vec![0u8; 4 * MIB]);
    let scan = |config: Config| {
        let body = zeros_in_gzip.clone();
        async move {
            let (scanner, _) = scanner(&config);
            scanner.scan_body(&body, &[Encoding::Gzip], Source::Api, CacheMode::Off).await.verdict
        }
    };
    let mut config = test_config(&clamd.address());
    assert_eq!(scan(config.clone()).await, Verdict::Clean, "gzip stays under the default 10000");
    config.scan.max_decode_ratio = 500;
    assert_eq!(scan(config.clone()).await, unscanned(UnscannedReason::LimitsExceeded));
    config.scan.max_decode_ratio = 0;
    config.scan.max_scan_bytes = 2 * MIB as u64;
    assert_eq!(scan(config).await, unscanned(UnscannedReason::TooLarge), "0: no ratio, the size still holds");
}

// --- Through Envoy --------------------------------------------------------------------------------

/// A client that never decodes: it must see the bytes as they travelled.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .no_brotli()
        .no_deflate()
        .no_zstd()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client")
}

async fn get(stack: &Stack, path: &str) -> reqwest::Response {
    raw_client().get(stack.envoy.url(path)).send().await.expect("GET through Envoy")
}

async fn json_body(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers().get(name).and_then(|value| value.to_str().ok()).unwrap_or_default()
}

/// Asserts the documented deny of an unscanned download: 502 with a JSON `reason`.
async fn assert_unscanned_502(stack: &Stack, path: &str, reason: &str) {
    let response = get(stack, path).await;
    assert_eq!(response.status(), 502, "{path}\n{}", stack.envoy.logs());
    assert_eq!(header(&response, "x-clamgate-verdict"), "unscanned", "{path}");
    let body = json_body(response).await;
    assert_eq!(
        (body["verdict"].as_str(), body["reason"].as_str()),
        (Some("unscanned"), Some(reason)),
        "{path}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infected_download_is_409_in_every_encoding() {
    let stack = Stack::start().await;
    let infected = infected_text();
    let cases = [
        ("gzip", gzip(&infected)),
        ("x-gzip", gzip(&infected)),
        ("deflate", zlib(&infected)),
        ("deflate", raw_deflate(&infected)),
        ("br", brotli(&infected)),
        ("zstd", zstd(&infected)),
        ("gzip, br", encode(&[Encoding::Gzip, Encoding::Brotli], &infected)),
        ("br, zstd", encode(&[Encoding::Brotli, Encoding::Zstd], &infected)),
    ];
    for (n, (content_encoding, body)) in cases.into_iter().enumerate() {
        assert!(!holds_eicar_verbatim(&body), "{content_encoding}: EICAR is readable without decoding");
        let name = format!("infected-{n}");
        stack.upstream.put_file_with_headers(&name, body.clone(), &[("content-encoding", content_encoding)]);
        let response = get(&stack, &format!("/files/{name}")).await;
        assert_eq!(response.status(), 409, "content-encoding: {content_encoding}\n{}", stack.envoy.logs());
        let json = json_body(response).await;
        assert_eq!(json["verdict"], "infected", "{content_encoding}: {json}");
        assert!(json["signature"].as_str().unwrap_or_default().starts_with("Test.Eicar.Body"), "{json}");
        assert_eq!(json["sha256"], sha256_hex(&body), "{content_encoding}: sha256 of the received bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_encoded_download_reaches_the_client_as_the_encoded_bytes() {
    let stack = Stack::start().await;
    let clean = text(2 * MIB + 17, 4);
    for (name, content_encoding, body) in [
        ("clean.br", "br", brotli(&clean)),
        ("clean.zst", "zstd", zstd(&clean)),
        ("clean.gz.br", "gzip, br", encode(&[Encoding::Gzip, Encoding::Brotli], &clean)),
    ] {
        assert_ne!(body, clean);
        stack.upstream.put_file_with_headers(name, body.clone(), &[("content-encoding", content_encoding)]);
        let response = get(&stack, &format!("/files/{name}")).await;
        assert_eq!(response.status(), 200, "{name}\n{}", stack.envoy.logs());
        assert_eq!(header(&response, "x-clamgate-verdict"), "clean", "{name}");
        assert_eq!(header(&response, "content-encoding"), content_encoding, "{name}");
        let received = response.bytes().await.expect("body");
        assert_eq!(received.len(), body.len(), "{name}: the client must get the encoded bytes");
        assert_eq!(sha256_hex(&received), sha256_hex(&body), "{name}: the client must get the encoded bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_is_denied_and_clamgate_serves_the_next_request() {
    let stack = Stack::start().await;
    let zeros = vec![0u8; 40 * MIB];
    // zstd: ~32000:1, over scan.max_decode_ratio (10000): refused after its first MiB.
    stack.upstream.put_file_with_headers("bomb.zst", zstd(&zeros), &[("content-encoding", "zstd")]);
    // gzip: 1030:1 at most, under the ratio; its 40 MiB pass scan.max_scan_bytes (25 MiB).
    stack.upstream.put_file_with_headers("bomb.gz", gzip(&zeros), &[("content-encoding", "gzip")]);
    // brotli, nested in gzip.
    let nested = encode(&[Encoding::Brotli, Encoding::Gzip], &zeros[..16 * MIB]);
    stack.upstream.put_file_with_headers("bomb.br.gz", nested, &[("content-encoding", "br, gzip")]);
    drop(zeros);
    assert_unscanned_502(&stack, "/files/bomb.zst", "limits_exceeded").await;
    assert_unscanned_502(&stack, "/files/bomb.gz", "too_large").await;
    assert_unscanned_502(&stack, "/files/bomb.br.gz", "limits_exceeded").await;

    // Still serving, and still scanning.
    let clean = text(100_000, 3);
    stack.upstream.put_file_with_headers("after.zst", zstd(&clean), &[("content-encoding", "zstd")]);
    let response = get(&stack, "/files/after.zst").await;
    assert_eq!(response.status(), 200, "{}", stack.envoy.logs());
    assert_eq!(response.bytes().await.expect("body").as_ref(), zstd(&clean).as_slice());
    stack.upstream.put_file_with_headers("after.br", brotli(&infected_text()), &[("content-encoding", "br")]);
    assert_eq!(get(&stack, "/files/after.br").await.status(), 409);

    let exposition = stack.clamgate.metrics().await;
    for sample in [
        r#"clamgate_decoded_bodies_total{encoding="zstd",outcome="ratio_exceeded"}"#,
        r#"clamgate_decoded_bodies_total{encoding="gzip",outcome="too_large"}"#,
        r#"clamgate_decoded_bodies_total{encoding="stacked",outcome="ratio_exceeded"}"#,
    ] {
        assert_eq!(metric_value(&exposition, sample), 1.0, "{sample}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_corrupt_encoding_is_502_unsupported_encoding() {
    let stack = Stack::start().await;
    let clean = samples::clean_sample(50_000);
    // Unknown: refused at the response headers.
    stack.upstream.put_file_with_headers("unknown", clean.clone(), &[("content-encoding", "x-unknown")]);
    assert_unscanned_502(&stack, "/files/unknown", "unsupported_encoding").await;
    // Known, but the bytes are not brotli: refused once decoding fails.
    stack.upstream.put_file_with_headers("corrupt", clean, &[("content-encoding", "br")]);
    assert_unscanned_502(&stack, "/files/corrupt", "unsupported_encoding").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infected_upload_in_br_is_409_and_never_reaches_the_upstream() {
    let stack = Stack::start().await;
    let upload = |name: &str, body: Vec<u8>| {
        raw_client()
            .post(stack.envoy.url(&format!("/upload/{name}")))
            .header("content-encoding", "br")
            .body(body)
            .send()
    };
    let response = upload("eicar.br", brotli(&infected_text())).await.expect("POST through Envoy");
    assert_eq!(response.status(), 409, "{}", stack.envoy.logs());
    assert_eq!(json_body(response).await["verdict"], "infected");
    assert_eq!(stack.upstream.received("eicar.br"), None, "the upstream received the infected upload");
    assert_eq!(stack.upstream.hits("/upload/eicar.br"), 0);

    // A clean one goes through, still encoded.
    let clean = brotli(&text(300_000, 5));
    let response = upload("clean.br", clean.clone()).await.expect("POST through Envoy");
    assert_eq!(response.status(), 201, "{}", stack.envoy.logs());
    assert_eq!(stack.upstream.received("clean.br").as_deref(), Some(&clean[..]));
    let headers = stack.upstream.received_headers("/upload/clean.br").expect("headers");
    assert_eq!(headers.get("content-encoding").map(|v| v.as_bytes()), Some(&b"br"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_encoded_download_held_on_disk_is_decoded_from_the_held_copy() {
    let stack = Stack::start().await;
    // 20 MiB of hex digits with EICAR 100 KiB before the end; zstd halves it, no more, so the
    // encoded body is over bodies.stream_memory_bytes (8 MiB) and clamgate holds it in a temp file.
    let mut decoded = hex_text(20 * MIB, 7);
    let at = decoded.len() - 100 * 1024;
    decoded[at..at + 68].copy_from_slice(&samples::eicar());
    let body = zstd::encode_all(decoded.as_slice(), 1).expect("zstd");
    drop(decoded);
    assert!(body.len() > 9 * MIB, "{} bytes: not enough to leave memory", body.len());
    assert!(!holds_eicar_verbatim(&body), "EICAR is readable without decoding");
    stack.upstream.put_file_with_headers("large.zst", body, &[("content-encoding", "zstd")]);
    let spilled_before = stack.clamgate.metric("clamgate_spilled_bodies_total").await;

    let response = get(&stack, "/files/large.zst").await;
    assert_eq!(response.status(), 409, "{}", stack.envoy.logs());
    assert!(json_body(response).await["signature"]
        .as_str()
        .unwrap_or_default()
        .starts_with("Test.Eicar.Body"));
    assert_eq!(stack.clamgate.metric("clamgate_spilled_bodies_total").await, spilled_before + 1.0);
    let complete = r#"clamgate_decoded_bodies_total{encoding="zstd",outcome="complete"}"#;
    assert_eq!(stack.clamgate.metric(complete).await, 1.0);
}

// --- What decoders skip, and gzip members: every received byte reaches clamd -------------------

/// Decodes with the real libraries (not clamgate's decoder): what a client would read.
fn client_decodes(content_encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut decoded = Vec::new();
    match content_encoding {
        "gzip" => {
            std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(body), &mut decoded)
                .expect("gzip");
        }
        "zstd" => decoded = zstd::decode_all(body).expect("zstd"),
        "br" => {
            brotli::BrotliDecompress(&mut &body[..], &mut decoded).expect("brotli");
        }
        other => panic!("no client decoder for {other}"),
    }
    decoded
}

/// Asserts a 409 naming a signature that starts with `signature`.
async fn assert_infected_409(stack: &Stack, path: &str, signature: &str) {
    let response = get(stack, path).await;
    assert_eq!(response.status(), 409, "{path}\n{}", stack.envoy.logs());
    let json = json_body(response).await;
    assert!(json["signature"].as_str().unwrap_or_default().starts_with(signature), "{path}: {json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_hidden_where_decoders_do_not_look_is_found_in_the_received_bytes() {
    let stack = Stack::start().await;
    let eicar = samples::eicar();
    let harmless = text(30_000, 8);
    // EICAR over the skip bound: the decoding is refused, but the signature found wins.
    let mut big_hidden = text(70 * 1024, 9);
    big_hidden.extend_from_slice(&eicar);
    let cases = [
        ("gzip-extra", "gzip", gzip_with_header(&harmless, Some(&eicar), None, None)),
        ("gzip-name", "gzip", gzip_with_header(&harmless, None, Some(&eicar), None)),
        ("gzip-comment", "gzip", gzip_with_header(&harmless, None, None, Some(&eicar))),
        ("zstd-skippable", "zstd", [skippable_frame(&eicar), zstd(&harmless)].concat()),
        ("zstd-skippable-over-the-bound", "zstd", [skippable_frame(&big_hidden), zstd(&harmless)].concat()),
        ("br-metadata", "br", brotli_with_metadata(&eicar, &harmless)),
    ];
    for (name, content_encoding, body) in cases {
        // A client that decodes gets the harmless text: the EICAR is only where decoders skip.
        assert_eq!(client_decodes(content_encoding, &body), harmless, "{name}");
        stack.upstream.put_file_with_headers(name, body, &[("content-encoding", content_encoding)]);
        assert_infected_409(&stack, &format!("/files/{name}"), "Test.Eicar.Body").await;
    }

    // An upload the application would store as received never reaches it.
    let upload = [skippable_frame(&eicar), zstd(&harmless)].concat();
    let response = raw_client()
        .post(stack.envoy.url("/upload/hidden.zst"))
        .header("content-encoding", "zstd")
        .body(upload)
        .send()
        .await
        .expect("POST through Envoy");
    assert_eq!(response.status(), 409, "{}", stack.envoy.logs());
    assert_eq!(stack.upstream.received("hidden.zst"), None, "the upstream received the infected upload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_gzip_member_of_the_content_is_scanned_as_a_file() {
    let stack = Stack::start().await;
    let sample = samples::hash_only_sample();
    let harmless = text(10_000, 10);
    let members = [gzip(&sample), gzip(&harmless)].concat();
    // zcat sees the sample and more: no hash signature matches the concatenation.
    assert_eq!(client_decodes("gzip", &members), [sample.clone(), harmless.clone()].concat());
    let cases = [
        // A browser reads only the first member: exactly the file test.hdb names.
        ("first.gz", "gzip", members.clone()),
        // ...and zcat every member: the second as well.
        ("second.gz", "gzip", [gzip(&harmless), gzip(&sample)].concat()),
        // Under br, where clamd cannot see the gzip members in the received bytes.
        ("first.gz.br", "gzip, br", brotli(&members)),
    ];
    for (name, content_encoding, body) in cases {
        stack.upstream.put_file_with_headers(name, body, &[("content-encoding", content_encoding)]);
        assert_infected_409(&stack, &format!("/files/{name}"), "Test.HashOnly").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_decoders_skip_is_bounded_and_clean_encoded_bodies_arrive_unchanged() {
    const BOUND: usize = 64 * 1024;
    let stack = Stack::start().await;
    let harmless = text(300_000, 11);
    let (first, second) = harmless.split_at(100_000);
    let frame_size = |frame: &[u8]| skippable_frame(&u32::try_from(frame.len()).expect("size").to_le_bytes());
    // Real encoders' skipped bytes, under the bound: pzstd's 12-byte frames, a gzip file name,
    // several members; and exactly the bound (8 header bytes and the rest data).
    let clean = [
        (
            "pzstd.zst",
            "zstd",
            [frame_size(&zstd(first)), zstd(first), frame_size(&zstd(second)), zstd(second)].concat(),
        ),
        ("named.gz", "gzip", gzip_with_header(&harmless, None, Some(b"report.txt"), Some(b"made by gzip"))),
        ("members.gz", "gzip", [gzip(first), gzip(second)].concat()),
        ("at-the-bound.zst", "zstd", [skippable_frame(&text(BOUND - 8, 12)), zstd(&harmless)].concat()),
        ("metadata.br", "br", brotli_with_metadata(&text(BOUND, 13), &harmless)),
    ];
    for (name, content_encoding, body) in clean {
        assert_eq!(client_decodes(content_encoding, &body), harmless, "{name}");
        stack.upstream.put_file_with_headers(name, body.clone(), &[("content-encoding", content_encoding)]);
        let response = get(&stack, &format!("/files/{name}")).await;
        assert_eq!(response.status(), 200, "{name}\n{}", stack.envoy.logs());
        assert_eq!(header(&response, "x-clamgate-verdict"), "clean", "{name}");
        let received = response.bytes().await.expect("body");
        assert_eq!(sha256_hex(&received), sha256_hex(&body), "{name}: the client must get the bytes as sent");
    }

    // One byte over the bound, or too many members: refused, not called clean.
    let over = [
        ("over-the-bound.zst", "zstd", [skippable_frame(&text(BOUND - 7, 12)), zstd(&harmless)].concat()),
        // Over the bound together (a field over 64 KiB is one flate2 refuses to read).
        (
            "long-name-and-comment.gz",
            "gzip",
            gzip_with_header(&harmless, None, Some(&text(BOUND / 2, 14)), Some(&text(BOUND / 2, 15))),
        ),
        (
            "17-members.gz",
            "gzip",
            harmless.chunks(harmless.len().div_ceil(17)).flat_map(gzip).collect::<Vec<u8>>(),
        ),
    ];
    for (name, content_encoding, body) in over {
        assert_eq!(client_decodes(content_encoding, &body), harmless, "{name}");
        stack.upstream.put_file_with_headers(name, body, &[("content-encoding", content_encoding)]);
        assert_unscanned_502(&stack, &format!("/files/{name}"), "unsupported_encoding").await;
    }
    let exposition = stack.clamgate.metrics().await;
    for (sample, expected) in [
        (r#"clamgate_decoded_bodies_total{encoding="zstd",outcome="skipped_too_much"}"#, 1.0),
        (r#"clamgate_decoded_bodies_total{encoding="gzip",outcome="skipped_too_much"}"#, 1.0),
        (r#"clamgate_decoded_bodies_total{encoding="gzip",outcome="too_many_members"}"#, 1.0),
    ] {
        assert_eq!(metric_value(&exposition, sample), expected, "{sample}");
    }
}
