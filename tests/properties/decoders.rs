//! The Content-Encoding decoders: every encoding and every pair of them round-trips whatever the
//! data and however the encoded bytes are cut; any bytes at all (garbage included) give the same
//! output and the same outcome whatever the cutting; the output limit always holds.

use std::io::Write as _;

use clamgate::decode::{DecodeError, DecodeLimits, Encoding};

use super::decode_in_pieces::decode_in_pieces;
use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use proptest::prelude::*;

const NO_LIMITS: DecodeLimits =
    DecodeLimits { max_output_bytes: u64::MAX, max_ratio: u64::MAX, max_skipped_bytes: u64::MAX };

fn encode(encoding: Encoding, data: &[u8]) -> Vec<u8> {
    match encoding {
        Encoding::Gzip => {
            let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
            encoder.write_all(data).unwrap();
            encoder.finish().unwrap()
        }
        Encoding::Deflate => {
            let mut encoder = ZlibEncoder::new(Vec::new(), Compression::fast());
            encoder.write_all(data).unwrap();
            encoder.finish().unwrap()
        }
        Encoding::Brotli => {
            let mut encoder = brotli::CompressorWriter::new(Vec::new(), 4096, 1, 18);
            encoder.write_all(data).unwrap();
            encoder.into_inner()
        }
        Encoding::Zstd => zstd::encode_all(data, 1).unwrap(),
    }
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::Gzip), Just(Encoding::Deflate), Just(Encoding::Brotli), Just(Encoding::Zstd)]
}

/// Cuts `bytes` at the given fractions of its length.
fn cut(bytes: &[u8], cuts: &[u16]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| *c as usize * bytes.len() / u16::MAX as usize).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

proptest! {
    #[test]
    fn every_encoding_round_trips_however_it_is_cut(
        data in prop::collection::vec(any::<u8>(), 0..3000),
        repeat in 1usize..40,
        encoding in encoding(),
        cuts in prop::collection::vec(any::<u16>(), 0..8),
    ) {
        // Repeated data compresses, so the decoders also produce more than they read.
        let data = data.repeat(repeat);
        let encoded = encode(encoding, &data);
        let (out, result) = decode_in_pieces(&[encoding], &cut(&encoded, &cuts), NO_LIMITS);
        prop_assert_eq!(result, Ok(()));
        prop_assert!(out == data, "{encoding:?}: {} bytes out, {} in", out.len(), data.len());
    }

    #[test]
    fn stacked_encodings_round_trip(
        data in prop::collection::vec(any::<u8>(), 0..2000),
        first in encoding(),
        second in encoding(),
        cuts in prop::collection::vec(any::<u16>(), 0..6),
    ) {
        let encoded = encode(second, &encode(first, &data));
        let (out, result) = decode_in_pieces(&[first, second], &cut(&encoded, &cuts), NO_LIMITS);
        prop_assert_eq!(result, Ok(()));
        prop_assert!(out == data);
    }

    #[test]
    fn any_bytes_decode_the_same_however_they_are_cut(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        prefix_valid in any::<bool>(),
        encoding in encoding(),
        cuts in prop::collection::vec(any::<u16>(), 1..8),
    ) {
        // Garbage, or a valid stream with garbage after it.
        let bytes = if prefix_valid { [encode(encoding, &bytes[..bytes.len() / 2]), bytes].concat() } else { bytes };
        let whole = decode_in_pieces(&[encoding], std::slice::from_ref(&bytes), NO_LIMITS);
        let pieces = decode_in_pieces(&[encoding], &cut(&bytes, &cuts), NO_LIMITS);
        // The same outcome; on success the same output. Before an error, a decoder may have
        // flushed more or fewer of the bytes it decoded (found: raw deflate garbage cut after two
        // bytes gave one byte before the same error), so one output is a prefix of the other;
        // the body is unscanned either way.
        prop_assert_eq!(&whole.1, &pieces.1);
        if whole.1.is_ok() {
            prop_assert!(whole.0 == pieces.0, "the output depends on the cutting");
        } else {
            let (short, long) = if whole.0.len() <= pieces.0.len() { (&whole.0, &pieces.0) } else { (&pieces.0, &whole.0) };
            prop_assert!(long.starts_with(short), "outputs before the error differ, not only in length");
        }
    }

    #[test]
    fn the_output_limit_always_holds(
        data in prop::collection::vec(any::<u8>(), 1..500),
        repeat in 1usize..200,
        limit in 0u64..20_000,
        encoding in encoding(),
        cuts in prop::collection::vec(any::<u16>(), 0..6),
    ) {
        let data = data.repeat(repeat);
        let limits = DecodeLimits { max_output_bytes: limit, ..NO_LIMITS };
        let (out, result) = decode_in_pieces(&[encoding], &cut(&encode(encoding, &data), &cuts), limits);
        prop_assert!(out.len() as u64 <= limit);
        if data.len() as u64 > limit {
            prop_assert_eq!(result, Err(DecodeError::TooLarge { limit }));
        } else {
            prop_assert_eq!(result, Ok(()));
            prop_assert!(out == data);
        }
    }
}
