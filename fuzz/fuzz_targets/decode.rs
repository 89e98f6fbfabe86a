//! The Content-Encoding decoders on any bytes, cut anywhere, under any limits: never a panic,
//! never more output than the limit, and the same outcome (and, when it succeeds, the same
//! output) as the uncut body.
#![no_main]

use arbitrary::Arbitrary;
use clamgate::decode::{DecodeError, DecodeLimits, Encoding};
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/properties/decode_in_pieces.rs"]
mod decode_in_pieces;
use decode_in_pieces::decode_in_pieces;

#[derive(Debug, Arbitrary)]
struct Input {
    /// 1 to 3 layers, each picked by a byte.
    layers: Vec<u8>,
    max_output_kib: u16,
    max_ratio: u8,
    max_skipped: u16,
    cuts: Vec<u16>,
    body: Vec<u8>,
}

fn encodings(layers: &[u8]) -> Vec<Encoding> {
    let all = [Encoding::Gzip, Encoding::Deflate, Encoding::Brotli, Encoding::Zstd];
    let mut chosen: Vec<Encoding> = layers.iter().take(3).map(|b| all[*b as usize % 4]).collect();
    if chosen.is_empty() {
        chosen.push(Encoding::Gzip);
    }
    chosen
}

fuzz_target!(|input: Input| {
    let encodings = encodings(&input.layers);
    let limits = DecodeLimits {
        max_output_bytes: u64::from(input.max_output_kib) * 1024,
        max_ratio: u64::from(input.max_ratio.max(1)),
        max_skipped_bytes: u64::from(input.max_skipped),
    };
    let body = &input.body;
    let mut points: Vec<usize> = input.cuts.iter().map(|c| *c as usize % (body.len() + 1)).collect();
    points.extend([0, body.len()]);
    points.sort_unstable();
    let pieces: Vec<&[u8]> = points.windows(2).map(|w| &body[w[0]..w[1]]).collect();
    let whole = decode_in_pieces(&encodings, &[body], limits);
    let cut = decode_in_pieces(&encodings, &pieces, limits);
    for (out, _) in [&whole, &cut] {
        assert!(out.len() as u64 <= limits.max_output_bytes, "past the output limit");
    }
    // The ratio is checked against the encoded bytes read so far, which depend on the cutting:
    // only the other outcomes must agree.
    let ratio = |result: &Result<(), DecodeError>| matches!(result, Err(DecodeError::RatioExceeded { .. }));
    if !ratio(&whole.1) && !ratio(&cut.1) {
        assert_eq!(whole.1.is_ok(), cut.1.is_ok(), "{:?} vs {:?}", whole.1, cut.1);
        if whole.1.is_ok() {
            assert!(whole.0 == cut.0, "the output depends on the cutting");
        }
    }
});
