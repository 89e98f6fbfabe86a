//! Decodes a body pushed in pieces, draining the decoder after each: what the decoder property
//! tests and the `decode` fuzz target both compare (the output, and how decoding ended). Shared by
//! `tests/properties/decoders.rs` and `fuzz/fuzz_targets/decode.rs`.

use clamgate::decode::{BodyDecoder, DecodeError, DecodeLimits, Encoding};

/// The decoded bytes of `pieces` under `encodings` (outermost first) and `limits`, up to the first
/// error, and that error if there was one.
pub fn decode_in_pieces(
    encodings: &[Encoding],
    pieces: &[impl AsRef<[u8]>],
    limits: DecodeLimits,
) -> (Vec<u8>, Result<(), DecodeError>) {
    let mut decoder = BodyDecoder::new(encodings, limits);
    let mut out = Vec::new();
    let drain = |decoder: &mut BodyDecoder, out: &mut Vec<u8>| -> Result<(), DecodeError> {
        while let Some(piece) = decoder.next_piece()? {
            assert!(!piece.is_empty(), "a decoded piece is never empty");
            out.extend_from_slice(piece);
        }
        Ok(())
    };
    for piece in pieces {
        decoder.push(piece.as_ref().to_vec());
        if let Err(err) = drain(&mut decoder, &mut out) {
            return (out, Err(err));
        }
    }
    decoder.finish();
    let result = drain(&mut decoder, &mut out);
    (out, result)
}
