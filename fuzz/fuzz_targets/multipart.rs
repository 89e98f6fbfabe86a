//! The multipart parser on any body and boundary, in any pieces: never a panic, never more parts
//! than the limit, and the same parts (or failure) whatever the pieces.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use clamgate::metrics::Metrics;
use clamgate::multipart::{boundary, split, Limits};
use clamgate::spool::Spool;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    content_type: String,
    max_parts: u8,
    max_depth: u8,
    cuts: Vec<u16>,
    body: Vec<u8>,
}

/// Each part's field, file name and bytes; or the error's text.
type Split = Result<Vec<(Option<String>, Option<String>, Vec<u8>)>, String>;

async fn split_pieces(pieces: &[&[u8]], boundary: &str, limits: Limits) -> Split {
    let spool = Spool::new(1 << 24, 1 << 20, std::env::temp_dir(), Arc::new(Metrics::new()));
    let mut body = spool.hold();
    for piece in pieces {
        body.push(bytes::Bytes::copy_from_slice(piece)).await.expect("hold");
    }
    let parts = split(&body, boundary, &spool, limits).await.map_err(|err| err.to_string())?;
    assert!(parts.len() <= limits.max_parts, "more parts than the limit");
    let mut out = Vec::new();
    for part in parts {
        let mut bytes = Vec::new();
        while (bytes.len() as u64) < part.body.len() {
            bytes.extend_from_slice(&part.body.read_at(bytes.len() as u64, 1 << 16).await.expect("read"));
        }
        out.push((part.field, part.filename, bytes));
    }
    Ok(out)
}

fuzz_target!(|input: Input| {
    // Half the inputs get a usable boundary of their own, so that the parser goes deep.
    let boundary = match boundary(&input.content_type) {
        Some(Ok(boundary)) => boundary,
        _ => "fuzzBoundary".to_string(),
    };
    let limits = Limits {
        max_parts: usize::from(input.max_parts % 8) + 1,
        max_depth: usize::from(input.max_depth % 3) + 1,
    };
    let body = &input.body;
    let mut points: Vec<usize> = input.cuts.iter().map(|c| *c as usize % (body.len() + 1)).collect();
    points.extend([0, body.len()]);
    points.sort_unstable();
    let pieces: Vec<&[u8]> = points.windows(2).map(|w| &body[w[0]..w[1]]).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let whole = runtime.block_on(split_pieces(&[body], &boundary, limits));
    let cut = runtime.block_on(split_pieces(&pieces, &boundary, limits));
    assert_eq!(whole, cut, "the split depends on the pieces");
});
