//! Every place a container format can hide a file, generated rather than picked: for gzip
//! (members, stored and compressed blocks, header fields), deflate (raw and zlib, stored and
//! compressed), brotli (every quality class, small and large windows, uncompressed and metadata
//! meta-blocks), zstd (frames, checksums, levels from raw-block to best, skippable frames) and
//! every stack of two, a file placed at each position is scanned by the scanner against real
//! clamd and must be found: EICAR (a body signature) anywhere in the decoded content or in bytes
//! the decoders skip, and a file known only by its hash (`Test.HashOnly`) as the whole decoded
//! content, however it is cut across members, frames and blocks.

mod support;

use std::sync::Arc;

use clamgate::config::CacheMode;
use clamgate::decode::Encoding;
use clamgate::metrics::{Metrics, Source};
use clamgate::policy::Direction;
use clamgate::verdict::Verdict;
use support::clamd::ClamdProcess;
use support::clamgate::test_config;
use support::containers::{
    brotli, brotli_uncompressed, brotli_with_metadata, deflate, gzip_member, gzip_with_header,
    skippable_frame, zstd_frame,
};
use support::samples;
use support::scan::ScanBytes;

/// A body to hide and the signature that must be found.
struct Payload {
    name: &'static str,
    /// The decoded content.
    content: Vec<u8>,
    /// Where the hidden file sits in `content` (it is cut there too), as a range.
    file: std::ops::Range<usize>,
    signature: &'static str,
}

/// Deterministic text that compresses, so that a file among it is not stored verbatim.
fn text(len: usize, seed: u64) -> Vec<u8> {
    let words = ["scan", "proxy", "envoy", "body", "clamd", "verdict", "cache", "policy"];
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.extend_from_slice(words[(state >> 33) as usize % words.len()].as_bytes());
        out.push(if state % 7 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

fn payloads() -> Vec<Payload> {
    let eicar = samples::eicar();
    let mut payloads = Vec::new();
    for (name, before, after) in
        [("eicar-first", 0, 5000), ("eicar-middle", 3000, 3000), ("eicar-last", 6000, 0)]
    {
        let content = [text(before, 1), eicar.clone(), text(after, 2)].concat();
        payloads.push(Payload { name, content, file: before..before + eicar.len(), signature: "Test.Eicar" });
    }
    let hashed = samples::hash_only_sample();
    let file = 0..hashed.len();
    payloads.push(Payload { name: "hash-file-whole", content: hashed, file, signature: "Test.HashOnly" });
    payloads
}

/// Points that cut `payload`'s content into `n` pieces, one of the cuts inside the hidden file.
fn cuts(payload: &Payload, n: usize) -> Vec<Vec<u8>> {
    let len = payload.content.len();
    let mut points = vec![0, payload.file.start + (payload.file.len() / 2).max(1).min(payload.file.len())];
    for i in 1..n.saturating_sub(1) {
        points.push(len * i / n);
    }
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| payload.content[w[0]..w[1]].to_vec()).collect()
}

/// One way to encode a content: its name, its `Content-Encoding` layers and the encoder.
type Container = (String, Vec<Encoding>, Box<dyn Fn(&Payload) -> Vec<u8>>);

fn containers() -> Vec<Container> {
    let mut all: Vec<Container> = Vec::new();
    let gz = vec![Encoding::Gzip];
    for level in [0, 1, 9] {
        all.push((
            format!("gzip level {level}"),
            gz.clone(),
            Box::new(move |p| gzip_member(&p.content, level)),
        ));
        for members in [2, 3] {
            all.push((
                format!("gzip {members} members level {level}"),
                gz.clone(),
                Box::new(move |p| {
                    cuts(p, members)
                        .iter()
                        .map(|piece| gzip_member(piece, level))
                        .collect::<Vec<_>>()
                        .concat()
                }),
            ));
        }
    }
    for zlib in [false, true] {
        for level in [0, 1, 9] {
            let name = format!("deflate {} level {level}", if zlib { "zlib" } else { "raw" });
            all.push((name, vec![Encoding::Deflate], Box::new(move |p| deflate(&p.content, level, zlib))));
        }
    }
    for quality in [0, 1, 5, 11] {
        for window in [10, 22] {
            all.push((
                format!("br quality {quality} window {window}"),
                vec![Encoding::Brotli],
                Box::new(move |p| brotli(&p.content, quality, window)),
            ));
        }
    }
    for block in [7, 1000, 65536] {
        all.push((
            format!("br uncompressed meta-blocks of {block}"),
            vec![Encoding::Brotli],
            Box::new(move |p| brotli_uncompressed(&p.content, block)),
        ));
    }
    for level in [-5, 1, 19] {
        for checksum in [false, true] {
            all.push((
                format!("zstd level {level} checksum {checksum}"),
                vec![Encoding::Zstd],
                Box::new(move |p| zstd_frame(&p.content, level, checksum)),
            ));
        }
        for frames in [2, 3] {
            all.push((
                format!("zstd {frames} frames level {level}"),
                vec![Encoding::Zstd],
                Box::new(move |p| {
                    cuts(p, frames)
                        .iter()
                        .map(|piece| zstd_frame(piece, level, true))
                        .collect::<Vec<_>>()
                        .concat()
                }),
            ));
        }
    }
    all.push((
        "zstd after an empty skippable frame".into(),
        vec![Encoding::Zstd],
        Box::new(|p| [skippable_frame(b"x"), zstd_frame(&p.content, 3, false)].concat()),
    ));
    // Every stack of two layers.
    let layers = [Encoding::Gzip, Encoding::Deflate, Encoding::Brotli, Encoding::Zstd];
    for inner in layers {
        for outer in layers {
            all.push((
                format!("{} then {}", inner.token(), outer.token()),
                vec![inner, outer],
                Box::new(move |p| encode_one(outer, &encode_one(inner, &p.content))),
            ));
        }
    }
    all
}

fn encode_one(encoding: Encoding, data: &[u8]) -> Vec<u8> {
    match encoding {
        Encoding::Gzip => gzip_member(data, 6),
        Encoding::Deflate => deflate(data, 6, true),
        Encoding::Brotli => brotli(data, 5, 22),
        Encoding::Zstd => zstd_frame(data, 3, true),
    }
}

/// Where decoders skip bytes without decoding them: the file is there, the content harmless.
fn skipped_places() -> Vec<(String, Encoding, Vec<u8>)> {
    let eicar = samples::eicar();
    let harmless = text(4000, 7);
    vec![
        ("gzip FEXTRA".into(), Encoding::Gzip, gzip_with_header(&harmless, Some(&eicar), None, None)),
        ("gzip FNAME".into(), Encoding::Gzip, gzip_with_header(&harmless, None, Some(&eicar), None)),
        ("gzip FCOMMENT".into(), Encoding::Gzip, gzip_with_header(&harmless, None, None, Some(&eicar))),
        (
            "gzip FEXTRA of member 2".into(),
            Encoding::Gzip,
            [gzip_member(&harmless, 6), gzip_with_header(&harmless, Some(&eicar), None, None)].concat(),
        ),
        (
            "zstd skippable frame first".into(),
            Encoding::Zstd,
            [skippable_frame(&eicar), zstd_frame(&harmless, 3, true)].concat(),
        ),
        (
            "zstd skippable frame last".into(),
            Encoding::Zstd,
            [zstd_frame(&harmless, 3, true), skippable_frame(&eicar)].concat(),
        ),
        (
            "zstd skippable frame between frames".into(),
            Encoding::Zstd,
            [zstd_frame(&harmless, 3, true), skippable_frame(&eicar), zstd_frame(&harmless, 3, false)]
                .concat(),
        ),
        ("br metadata meta-block".into(), Encoding::Brotli, brotli_with_metadata(&eicar, &harmless)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_in_any_member_frame_block_or_skipped_field_of_any_encoding_is_found() {
    let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("start clamd");
    let config = test_config(&clamd.address());
    let scanner = clamgate::app::build_scanner(&config, Arc::new(Metrics::new())).expect("scanner");
    let source = Source::Proxied(Direction::Response);
    let mut missed = Vec::new();
    let mut cases = 0;
    for payload in payloads() {
        for (name, encodings, encode) in containers() {
            let body = encode(&payload);
            let report = scanner.scan_body(&body, &encodings, source, CacheMode::Off).await;
            cases += 1;
            match &report.verdict {
                Verdict::Infected { signature } if signature.starts_with(payload.signature) => {}
                other => missed.push(format!("{} in {name}: {other:?}", payload.name)),
            }
        }
    }
    for (name, encoding, body) in skipped_places() {
        let report = scanner.scan_body(&body, &[encoding], source, CacheMode::Off).await;
        cases += 1;
        if !matches!(&report.verdict, Verdict::Infected { signature } if signature.starts_with("Test.Eicar"))
        {
            missed.push(format!("EICAR in {name}: {:?}", report.verdict));
        }
    }
    assert!(cases > 200, "only {cases} cases");
    assert!(missed.is_empty(), "{} of {cases} hidden files missed:\n{}", missed.len(), missed.join("\n"));
    eprintln!("{cases} hidden files found");
}
