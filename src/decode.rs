//! Streaming `Content-Encoding` decoding (gzip, deflate, br, zstd, stacked), so that clamd scans the
//! bytes a client will see, piece by piece and within limits against decompression bombs.
//!
//! [`parse_content_encoding`] turns the `content-encoding` header values into the [`Encoding`]s in
//! the order they were applied; a [`BodyDecoder`] undoes them, last applied first, as the encoded
//! body arrives. The decoder is pulled: [`BodyDecoder::push`] queues encoded bytes and
//! [`BodyDecoder::next_piece`] hands out at most [`PIECE_BYTES`] of decoded output per call, so the
//! caller can `.await` between pieces (sending each to clamd) and memory stays fixed, whatever the
//! body's size or ratio: one [`PIECE_BYTES`] buffer and one decoder state per encoding.
//!
//! ```
//! use std::io::Write;
//! use clamgate::decode::{parse_content_encoding, BodyDecoder, DecodeLimits};
//!
//! let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
//! gzip.write_all(b"hello, clamd")?;
//! let body = gzip.finish()?;
//!
//! let limits = DecodeLimits { max_output_bytes: 1 << 30, max_ratio: 100, max_skipped_bytes: 64 * 1024 };
//! let mut decoder = BodyDecoder::new(&parse_content_encoding(&["gzip"])?, limits);
//! let mut scanned = Vec::new();
//! for (chunk, end_of_stream) in [(&body[..7], false), (&body[7..], true)] {
//!     decoder.push(chunk.to_vec());
//!     if end_of_stream {
//!         decoder.finish();
//!     }
//!     while let Some(piece) = decoder.next_piece()? {
//!         scanned.extend_from_slice(piece); // in clamgate: `scan.push(piece).await`
//!     }
//! }
//! assert_eq!(scanned, b"hello, clamd");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Choices a reader would otherwise dig for:
//! - An empty body with a `Content-Encoding` is an empty decoded body, not an error: servers send
//!   that for 204s and answers to `HEAD`. The same holds for an inner encoding that gets no bytes.
//! - A body that ends inside a stream (a truncated gzip member, a zlib stream without its end,
//!   ...) is [`DecodeError::Corrupt`], reported once [`BodyDecoder::finish`] was called.
//! - Bytes after the end of a deflate or brotli stream, and bytes after a gzip member that do not
//!   start another member, are [`DecodeError::Corrupt`]: what a lenient client ignores, a scanner
//!   must not let through unscanned.
//! - HTTP's `deflate` is meant to be zlib (RFC 1950), but some servers send raw deflate (RFC 1951):
//!   the first two bytes decide, as browsers do.
//! - Windows are bounded so that a hostile stream header cannot make the decoder allocate much:
//!   brotli's large-window extension is refused (16 MiB at most, RFC 7932) and a zstd frame may
//!   ask for at most an 8 MiB window (the bound RFC 9659 sets for HTTP).
//! - Bytes a decoder reads without decoding them (gzip's `FEXTRA`, `FNAME` and `FCOMMENT`
//!   header fields, zstd skippable frames) are counted ([`BodyDecoder::skipped_bytes`]); past
//!   [`DecodeLimits::max_skipped_bytes`] for the body the decoding stops with
//!   [`DecodeError::SkippedTooMuch`]: a file hidden there is never clamd-scanned *decoded*, so
//!   clamgate refuses to call such a body clean on the strength of its decoding (the scanner also
//!   scans the received bytes as they are). brotli metadata meta-blocks cannot be counted:
//!   `brotli-decompressor` 6.2 skips them internally and its public API offers no callback (only
//!   its C FFI does); the scanner's scan of the received bytes covers them.
//! - gzip members are counted, at most [`MAX_GZIP_MEMBERS`] a layer ([`DecodeError::TooManyMembers`]
//!   past it). When gzip is the first encoding applied, its members are the files a client may
//!   see (a browser reads only the first, `zcat` all of them): [`BodyDecoder::gzip_member`] says
//!   which member each piece came from, so the scanner can scan each member on its own.

use std::collections::VecDeque;
use std::fmt;

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
use bytes::{Buf, Bytes};
use flate2::{Crc, Decompress, FlushDecompress, Status};
use zstd::stream::raw::{DParameter, Decoder as ZstdContext, Operation};

/// The largest piece [`BodyDecoder::next_piece`] hands out, and the size of each encoding's
/// output buffer.
pub const PIECE_BYTES: usize = 64 * 1024;

/// Decoded output up to which [`DecodeLimits::max_ratio`] is not checked: 1 MiB.
///
/// Small bodies often compress far better than any sane ratio limit (a 20 KiB JSON of repeated
/// keys, a page of whitespace), and decoding 1 MiB costs nothing worth defending against.
pub const RATIO_CHECK_FLOOR_BYTES: u64 = 1024 * 1024;

/// The most encodings [`parse_content_encoding`] accepts on one body. Real servers apply one;
/// each layer costs a [`PIECE_BYTES`] buffer and a decoder state, so a long list is refused.
pub const MAX_STACKED_ENCODINGS: usize = 4;

/// The most gzip members one gzip layer may hold; more is [`DecodeError::TooManyMembers`].
///
/// Real servers and tools write one member (`gzip`, `pigz`, nginx, every HTTP library);
/// concatenated files (`cat a.gz b.gz`) make a few. Each member of the content is scanned on its
/// own, a clamd scan each, so their number is bounded. (`bgzip` writes a member per 64 KiB: such a
/// file served with `Content-Encoding: gzip` is refused past 1 MiB.)
pub const MAX_GZIP_MEMBERS: u32 = 16;

/// log2 of the largest zstd window accepted: 8 MiB, as RFC 9659 requires of `zstd` in HTTP.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// A content coding clamgate can undo. `identity` is the absence of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `gzip` (RFC 1952), also spelled `x-gzip`; concatenated members are one body.
    Gzip,
    /// `deflate`: zlib-wrapped (RFC 1950) as HTTP says, or raw (RFC 1951) as some servers send.
    Deflate,
    /// `br` (RFC 7932).
    Brotli,
    /// `zstd` (RFC 8878); concatenated frames are one body.
    Zstd,
}

impl Encoding {
    /// The token naming this encoding in `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
        }
    }

    /// The encoding a `Content-Encoding` token names, whatever its case; `None` if unknown.
    fn from_token(token: &str) -> Option<Encoding> {
        [
            ("gzip", Encoding::Gzip),
            ("x-gzip", Encoding::Gzip),
            ("deflate", Encoding::Deflate),
            ("br", Encoding::Brotli),
            ("zstd", Encoding::Zstd),
        ]
        .into_iter()
        .find(|(name, _)| token.eq_ignore_ascii_case(name))
        .map(|(_, encoding)| encoding)
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

/// A `Content-Encoding` clamgate cannot undo. Holds the offending token, or says that more than
/// [`MAX_STACKED_ENCODINGS`] encodings were stacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported content-encoding: {0}")]
pub struct UnsupportedEncoding(pub String);

/// The encodings of a body, in the order they were applied, from every `content-encoding` header
/// value (a header may repeat, and each value is a comma-separated list).
///
/// Tokens are matched without regard to case and with surrounding whitespace trimmed; `identity`
/// and empty list elements are skipped, so an empty result means the body is not encoded.
/// `"gzip, br"` (or two headers `gzip` then `br`) gives `[Gzip, Brotli]`: gzip was applied first.
///
/// # Errors
/// An unknown token (named in the error), or more than [`MAX_STACKED_ENCODINGS`] encodings.
pub fn parse_content_encoding(values: &[&str]) -> Result<Vec<Encoding>, UnsupportedEncoding> {
    let mut encodings = Vec::new();
    for token in values.iter().flat_map(|value| value.split(',')).map(str::trim) {
        if token.is_empty() || token.eq_ignore_ascii_case("identity") {
            continue;
        }
        let encoding = Encoding::from_token(token).ok_or_else(|| UnsupportedEncoding(token.to_owned()))?;
        encodings.push(encoding);
    }
    if encodings.len() > MAX_STACKED_ENCODINGS {
        return Err(UnsupportedEncoding(format!(
            "{} stacked encodings (at most {MAX_STACKED_ENCODINGS})",
            encodings.len()
        )));
    }
    Ok(encodings)
}

/// Bounds on decoding one body, against decompression bombs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// The most decoded bytes handed out for one body; more is [`DecodeError::TooLarge`].
    pub max_output_bytes: u64,
    /// The most decoded bytes per encoded byte consumed so far; more is
    /// [`DecodeError::RatioExceeded`]. Checked only once the decoded output passes
    /// [`RATIO_CHECK_FLOOR_BYTES`]. `u64::MAX` turns the check off.
    pub max_ratio: u64,
    /// The most bytes, over the whole body and every layer, that the decoders may read without
    /// decoding them: gzip `FEXTRA` (with its length), `FNAME` and `FCOMMENT` (with their
    /// terminating zero) of every member, and whole zstd skippable frames (with their 8-byte
    /// header). More is [`DecodeError::SkippedTooMuch`]. `u64::MAX` turns the check off.
    pub max_skipped_bytes: u64,
}

/// Why a body could not be decoded. Once returned, [`BodyDecoder::next_piece`] keeps returning it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The decoded body would pass [`DecodeLimits::max_output_bytes`].
    #[error("decoded body exceeds {limit} bytes")]
    TooLarge {
        /// The limit, in decoded bytes.
        limit: u64,
    },
    /// The decoded body grew more than [`DecodeLimits::max_ratio`] times the encoded bytes read.
    #[error("decoded body is more than {ratio_limit} times its encoded size")]
    RatioExceeded {
        /// The limit, in decoded bytes per encoded byte.
        ratio_limit: u64,
    },
    /// The decoders read more than [`DecodeLimits::max_skipped_bytes`] bytes that carry no
    /// content (gzip header fields, zstd skippable frames): a place to hide a file from a scan of
    /// the decoded body.
    #[error(
        "the encoding carries more than {limit} bytes that are not content (gzip extra, name or \
         comment fields, zstd skippable frames)"
    )]
    SkippedTooMuch {
        /// The limit, in skipped bytes.
        limit: u64,
    },
    /// A gzip layer holds more than [`MAX_GZIP_MEMBERS`] members.
    #[error("more than {limit} concatenated gzip members")]
    TooManyMembers {
        /// The limit, in members.
        limit: u32,
    },
    /// The bytes are not valid in `encoding`: malformed, truncated, or followed by extra bytes.
    #[error("corrupt {encoding} body: {detail}")]
    Corrupt {
        /// The encoding whose decoder failed.
        encoding: Encoding,
        /// What was wrong, for logs.
        detail: String,
    },
}

/// Undoes a body's content encodings as its bytes arrive, handing out the decoded body in pieces
/// of at most [`PIECE_BYTES`], with [`DecodeLimits`] enforced before each piece is handed out.
///
/// The contract: [`push`](Self::push) encoded bytes as they come, call [`finish`](Self::finish)
/// once the body is complete, and after each of these drain [`next_piece`](Self::next_piece)
/// until it returns `Ok(None)`. Before `finish`, `Ok(None)` means "push more"; after it, `Ok(None)`
/// means the body decoded completely and every stream ended properly. With no encodings the
/// pushed bytes come back as they are, in the same pieces and within the same limits.
pub struct BodyDecoder {
    limits: DecodeLimits,
    /// Encoded bytes pushed and not yet read by the outermost layer, oldest first; never empty ones.
    queued: VecDeque<Bytes>,
    /// [`finish`](Self::finish) was called: no more bytes will be pushed.
    input_finished: bool,
    /// One per encoding, last applied first: layer 0 reads `queued`, layer k reads layer k-1's
    /// output, and the last layer's output is what [`next_piece`](Self::next_piece) hands out.
    layers: Vec<Layer>,
    /// Without encodings: the piece last handed out.
    identity_piece: Bytes,
    encoded_bytes: u64,
    decoded_bytes: u64,
    failure: Option<DecodeError>,
}

impl BodyDecoder {
    /// A decoder for a body with `encodings` in the order they were applied (as
    /// [`parse_content_encoding`] returns them); an empty slice passes the body through.
    ///
    /// Nothing is allocated for a layer until its first byte arrives.
    pub fn new(encodings: &[Encoding], limits: DecodeLimits) -> BodyDecoder {
        BodyDecoder {
            limits,
            queued: VecDeque::new(),
            input_finished: false,
            layers: encodings.iter().rev().map(|&encoding| Layer::new(encoding)).collect(),
            identity_piece: Bytes::new(),
            encoded_bytes: 0,
            decoded_bytes: 0,
            failure: None,
        }
    }

    /// Queues the next encoded bytes of the body (no copy for `Bytes` or `Vec<u8>`). Drain
    /// [`next_piece`](Self::next_piece) before pushing more, or the queue grows.
    pub fn push(&mut self, encoded: impl Into<Bytes>) {
        let encoded = encoded.into();
        if !encoded.is_empty() {
            self.queued.push_back(encoded);
        }
    }

    /// Marks the end of the body: once the queued bytes are decoded, [`next_piece`](Self::next_piece)
    /// checks that every stream ended properly. Bytes pushed after this are still decoded.
    pub fn finish(&mut self) {
        self.input_finished = true;
    }

    /// The next piece of decoded body, at most [`PIECE_BYTES`] and never empty.
    ///
    /// `Ok(None)` before [`finish`](Self::finish): every pushed byte is decoded, push more.
    /// `Ok(None)` after it: the body is complete and valid.
    ///
    /// # Errors
    /// [`DecodeError::TooLarge`] or [`DecodeError::RatioExceeded`] instead of the piece that would
    /// pass a limit; [`DecodeError::Corrupt`] for invalid or truncated input. After an error, every
    /// call returns it again.
    pub fn next_piece(&mut self) -> Result<Option<&[u8]>, DecodeError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        match self.ready_a_piece() {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(failure) => {
                self.failure = Some(failure.clone());
                return Err(failure);
            }
        }
        let piece: &[u8] = match self.layers.last_mut() {
            None => &self.identity_piece,
            Some(innermost) => innermost.take_output(),
        };
        self.decoded_bytes += piece.len() as u64;
        Ok(Some(piece))
    }

    /// Encoded bytes the decoder has read so far (all pushed bytes once drained).
    pub fn encoded_bytes(&self) -> u64 {
        self.encoded_bytes
    }

    /// Decoded bytes handed out so far; never more than [`DecodeLimits::max_output_bytes`].
    pub fn decoded_bytes(&self) -> u64 {
        self.decoded_bytes
    }

    /// Bytes the decoders have read without decoding them, over every layer (see
    /// [`DecodeLimits::max_skipped_bytes`]).
    pub fn skipped_bytes(&self) -> u64 {
        self.layers.iter().filter_map(|layer| layer.decoder.as_ref()).map(LayerDecoder::skipped_bytes).sum()
    }

    /// When gzip is the first encoding applied (the layer whose output is the content): the
    /// number, from 1, of the gzip member the piece last handed out by
    /// [`next_piece`](Self::next_piece) came from; once the body is decoded, how many members it
    /// has. A piece never spans two members. 0 for other encodings, and before gzip's first byte.
    pub fn gzip_member(&self) -> u32 {
        match self.layers.last().and_then(|innermost| innermost.decoder.as_ref()) {
            Some(LayerDecoder::Gzip(gzip)) => gzip.members,
            _ => 0,
        }
    }

    /// Gets the next piece ready and checks it against the limits; `false` if there is none yet.
    fn ready_a_piece(&mut self) -> Result<bool, DecodeError> {
        let ready = if self.layers.is_empty() { self.take_identity_piece() } else { self.decode_a_piece()? };
        if ready {
            self.check_limits()?;
        }
        Ok(ready)
    }

    /// Without encodings: moves the next piece of the queue to `identity_piece`.
    fn take_identity_piece(&mut self) -> bool {
        let Some(front) = self.queued.front_mut() else {
            // Let go of the last pushed buffer.
            self.identity_piece = Bytes::new();
            return false;
        };
        self.identity_piece = front.split_to(front.len().min(PIECE_BYTES));
        if front.is_empty() {
            self.queued.pop_front();
        }
        self.encoded_bytes += self.identity_piece.len() as u64;
        true
    }

    /// Runs layers until the innermost has output ready (`true`), or none can go on without more
    /// input (`false`; after [`finish`](Self::finish), only if every stream ended properly).
    fn decode_a_piece(&mut self) -> Result<bool, DecodeError> {
        loop {
            let innermost = self.layers.len() - 1;
            if self.layers[innermost].has_output() {
                return Ok(true);
            }
            // The innermost layer that can run: it has input, or may still hold output. Its own
            // output is empty (it is the input of a layer that cannot run, or was checked above),
            // so it has the whole buffer to write to.
            let runnable = (0..=innermost).rev().find(|&index| {
                let has_input = match index {
                    0 => !self.queued.is_empty(),
                    _ => self.layers[index - 1].has_output(),
                };
                has_input || self.layers[index].may_hold_output
            });
            match runnable {
                Some(index) => {
                    self.run_layer(index)?;
                    self.check_skipped(index)?;
                }
                None if self.input_finished => return self.check_streams_ended().map(|()| false),
                None => return Ok(false),
            }
        }
    }

    /// Runs layer `index` once on its input and takes what it read from that input.
    fn run_layer(&mut self, index: usize) -> Result<(), DecodeError> {
        let (outer, rest) = self.layers.split_at_mut(index);
        let layer = &mut rest[0];
        match outer.last_mut() {
            None => {
                let input: &[u8] = self.queued.front().map_or(&[], |front| front);
                let consumed = layer.run(input)?;
                self.encoded_bytes += consumed as u64;
                if let Some(front) = self.queued.front_mut() {
                    front.advance(consumed);
                    if front.is_empty() {
                        self.queued.pop_front();
                    }
                }
            }
            Some(previous) => {
                let consumed = layer.run(previous.output())?;
                previous.consume_output(consumed);
            }
        }
        Ok(())
    }

    /// After layer `index` ran: the body's skipped bytes and that layer's gzip members are within
    /// bounds. Checked after every run, which reads at most one input buffer, so a decoder never
    /// skips far past the bound.
    fn check_skipped(&self, index: usize) -> Result<(), DecodeError> {
        if self.skipped_bytes() > self.limits.max_skipped_bytes {
            return Err(DecodeError::SkippedTooMuch { limit: self.limits.max_skipped_bytes });
        }
        if let Some(LayerDecoder::Gzip(gzip)) = &self.layers[index].decoder {
            if gzip.members > MAX_GZIP_MEMBERS {
                return Err(DecodeError::TooManyMembers { limit: MAX_GZIP_MEMBERS });
            }
        }
        Ok(())
    }

    /// After the last input: every layer that got bytes must be at the end of its stream.
    fn check_streams_ended(&self) -> Result<(), DecodeError> {
        for layer in &self.layers {
            if layer.decoder.as_ref().is_some_and(|decoder| !decoder.is_complete()) {
                return Err(DecodeError::Corrupt {
                    encoding: layer.encoding,
                    detail: "the body ends inside the stream (truncated)".to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Whether handing out the ready piece keeps within the limits.
    fn check_limits(&self) -> Result<(), DecodeError> {
        let piece_bytes = match self.layers.last() {
            None => self.identity_piece.len(),
            Some(innermost) => innermost.output().len(),
        };
        let decoded_bytes = self.decoded_bytes + piece_bytes as u64;
        if decoded_bytes > self.limits.max_output_bytes {
            return Err(DecodeError::TooLarge { limit: self.limits.max_output_bytes });
        }
        if decoded_bytes > RATIO_CHECK_FLOOR_BYTES
            && decoded_bytes > self.encoded_bytes.saturating_mul(self.limits.max_ratio)
        {
            return Err(DecodeError::RatioExceeded { ratio_limit: self.limits.max_ratio });
        }
        Ok(())
    }
}

impl fmt::Debug for BodyDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let decode_order: Vec<Encoding> = self.layers.iter().map(|layer| layer.encoding).collect();
        f.debug_struct("BodyDecoder")
            .field("decode_order", &decode_order)
            .field("limits", &self.limits)
            .field("encoded_bytes", &self.encoded_bytes)
            .field("decoded_bytes", &self.decoded_bytes)
            .field("input_finished", &self.input_finished)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

/// One encoding being undone, with its output buffer.
struct Layer {
    encoding: Encoding,
    /// Created with the layer's first byte, so an encoding that gets no bytes costs nothing and
    /// counts as an empty stream.
    decoder: Option<LayerDecoder>,
    /// `buffer[start..end]` is decoded output not yet taken by the next layer or the caller.
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// The last run filled the buffer: the decoder may hold more output even without input.
    may_hold_output: bool,
}

impl Layer {
    fn new(encoding: Encoding) -> Layer {
        Layer { encoding, decoder: None, buffer: Vec::new(), start: 0, end: 0, may_hold_output: false }
    }

    fn has_output(&self) -> bool {
        self.start < self.end
    }

    fn output(&self) -> &[u8] {
        &self.buffer[self.start..self.end]
    }

    fn consume_output(&mut self, consumed: usize) {
        self.start += consumed;
    }

    /// Marks all the output taken and returns it; the bytes stay valid until the next run.
    fn take_output(&mut self) -> &[u8] {
        let output = self.start..self.end;
        self.start = self.end;
        &self.buffer[output]
    }

    /// Decodes `input` into the (empty) buffer; returns how many input bytes were read.
    fn run(&mut self, input: &[u8]) -> Result<usize, DecodeError> {
        debug_assert!(!self.has_output(), "a layer runs only once its output was taken");
        let encoding = self.encoding;
        let corrupt = |detail: String| DecodeError::Corrupt { encoding, detail };
        let decoder = match &mut self.decoder {
            Some(decoder) => decoder,
            None => self.decoder.insert(LayerDecoder::new(encoding).map_err(corrupt)?),
        };
        if self.buffer.is_empty() {
            self.buffer = vec![0; PIECE_BYTES];
        }
        let step = decoder.decode(input, &mut self.buffer).map_err(corrupt)?;
        if step.consumed == 0 && step.produced == 0 && !input.is_empty() {
            // Every decoder reads or writes something when given input and room; guard the loop
            // in `decode_a_piece` against one that would not.
            return Err(corrupt("the decoder stopped making progress".to_owned()));
        }
        self.start = 0;
        self.end = step.produced;
        self.may_hold_output = step.produced == self.buffer.len();
        Ok(step.consumed)
    }
}

/// What one decoder call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Step {
    /// Input bytes read.
    consumed: usize,
    /// Output bytes written at the start of the output buffer.
    produced: usize,
}

/// The decoder of one encoding. Each is called with its input (possibly empty, to flush) and an
/// empty output buffer, and fails with a detail for [`DecodeError::Corrupt`].
enum LayerDecoder {
    Gzip(GzipDecoder),
    Deflate(DeflateDecoder),
    Brotli(BrotliDecoder),
    Zstd(ZstdDecoder),
}

impl LayerDecoder {
    fn new(encoding: Encoding) -> Result<LayerDecoder, String> {
        Ok(match encoding {
            Encoding::Gzip => LayerDecoder::Gzip(GzipDecoder::new()),
            Encoding::Deflate => LayerDecoder::Deflate(DeflateDecoder::Sniffing { first_byte: None }),
            Encoding::Brotli => LayerDecoder::Brotli(BrotliDecoder::new()),
            Encoding::Zstd => LayerDecoder::Zstd(ZstdDecoder::new()?),
        })
    }

    fn decode(&mut self, input: &[u8], output: &mut [u8]) -> Result<Step, String> {
        match self {
            LayerDecoder::Gzip(decoder) => decoder.decode(input, output),
            LayerDecoder::Deflate(decoder) => decoder.decode(input, output),
            LayerDecoder::Brotli(decoder) => decoder.decode(input, output),
            LayerDecoder::Zstd(decoder) => decoder.decode(input, output),
        }
    }

    /// Input bytes read without being decoded (see [`DecodeLimits::max_skipped_bytes`]).
    fn skipped_bytes(&self) -> u64 {
        match self {
            LayerDecoder::Gzip(decoder) => decoder.skipped_bytes,
            LayerDecoder::Zstd(decoder) => decoder.skipped_bytes,
            // Every byte of a deflate stream is deflate; brotli's metadata cannot be seen (see the
            // module documentation).
            LayerDecoder::Deflate(_) | LayerDecoder::Brotli(_) => 0,
        }
    }

    /// The input so far is a complete stream: it may end here.
    fn is_complete(&self) -> bool {
        match self {
            LayerDecoder::Gzip(decoder) => matches!(decoder.part, GzipPart::BetweenMembers),
            LayerDecoder::Deflate(decoder) => {
                matches!(decoder, DeflateDecoder::Inflating { ended: true, .. })
            }
            LayerDecoder::Brotli(decoder) => decoder.ended,
            LayerDecoder::Zstd(decoder) => decoder.is_complete(),
        }
    }
}

/// What one [`Decompress`] call did.
struct InflateStep {
    consumed: usize,
    produced: usize,
    stream_ended: bool,
}

/// Inflates as much of `input` into `output` as fits.
fn inflate(inflater: &mut Decompress, input: &[u8], output: &mut [u8]) -> Result<InflateStep, String> {
    let (in_before, out_before) = (inflater.total_in(), inflater.total_out());
    let status = inflater.decompress(input, output, FlushDecompress::None).map_err(|err| err.to_string())?;
    Ok(InflateStep {
        // Both are bounded by the slices' lengths, so they fit a usize.
        consumed: (inflater.total_in() - in_before) as usize,
        produced: (inflater.total_out() - out_before) as usize,
        stream_ended: status == Status::StreamEnd,
    })
}

/// Copies from `input` into `bytes[*filled..]`; returns how many bytes it took.
fn fill(bytes: &mut [u8], filled: &mut usize, input: &[u8]) -> usize {
    let taken = (bytes.len() - *filled).min(input.len());
    bytes[*filled..*filled + taken].copy_from_slice(&input[..taken]);
    *filled += taken;
    taken
}

/// gzip header flag: a CRC-16 of the header precedes the compressed data.
const FHCRC: u8 = 0x02;
/// gzip header flag: an extra field (2-byte length, then data) follows the fixed header.
const FEXTRA: u8 = 0x04;
/// gzip header flag: a zero-terminated file name follows.
const FNAME: u8 = 0x08;
/// gzip header flag: a zero-terminated comment follows.
const FCOMMENT: u8 = 0x10;
/// gzip header flags RFC 1952 reserves; a decoder must refuse a member that sets them.
const RESERVED_FLAGS: u8 = 0xe0;

/// gzip (RFC 1952): members of header, raw deflate data and a CRC-32 and length trailer, one
/// after another. Browsers decode every member, so this does too.
struct GzipDecoder {
    part: GzipPart,
    inflater: Decompress,
    /// CRC-32 and length of the current member's decoded bytes, checked against its trailer.
    body_crc: Crc,
    /// CRC-32 of the current member's header so far, checked against the optional header CRC.
    header_crc: Crc,
    /// Members begun, counting the current one (a decoder exists once its first byte arrived).
    members: u32,
    /// Bytes of `FEXTRA` (with its length), `FNAME` and `FCOMMENT` read, over every member.
    skipped_bytes: u64,
}

/// Where in a gzip member the decoder is.
enum GzipPart {
    /// The 10 fixed header bytes: magic, method, flags, modification time, extra flags, OS.
    Fixed { bytes: [u8; 10], filled: usize },
    /// The length of the extra field.
    ExtraLength { flags: u8, bytes: [u8; 2], filled: usize },
    /// The extra field's data.
    Extra { flags: u8, remaining: usize },
    /// The zero-terminated file name.
    Name { flags: u8 },
    /// The zero-terminated comment.
    Comment { flags: u8 },
    /// The low 16 bits of the header's CRC-32.
    HeaderCrc { bytes: [u8; 2], filled: usize },
    /// The deflate data.
    Body,
    /// CRC-32 and length (mod 2^32) of the member's decoded bytes, little-endian.
    Trailer { bytes: [u8; 8], filled: usize },
    /// A member ended: the body may end here or go on with another member.
    BetweenMembers,
}

/// The header fields of a gzip member, in the order they appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum GzipHeaderField {
    Fixed,
    Extra,
    Name,
    Comment,
}

impl GzipPart {
    fn member_start() -> GzipPart {
        GzipPart::Fixed { bytes: [0; 10], filled: 0 }
    }

    /// The part after header field `done` in a member whose header has `flags`.
    fn after(done: GzipHeaderField, flags: u8) -> GzipPart {
        if done < GzipHeaderField::Extra && flags & FEXTRA != 0 {
            GzipPart::ExtraLength { flags, bytes: [0; 2], filled: 0 }
        } else if done < GzipHeaderField::Name && flags & FNAME != 0 {
            GzipPart::Name { flags }
        } else if done < GzipHeaderField::Comment && flags & FCOMMENT != 0 {
            GzipPart::Comment { flags }
        } else if flags & FHCRC != 0 {
            GzipPart::HeaderCrc { bytes: [0; 2], filled: 0 }
        } else {
            GzipPart::Body
        }
    }
}

impl GzipDecoder {
    fn new() -> GzipDecoder {
        GzipDecoder {
            part: GzipPart::member_start(),
            inflater: Decompress::new(false),
            body_crc: Crc::new(),
            header_crc: Crc::new(),
            members: 1,
            skipped_bytes: 0,
        }
    }

    fn decode(&mut self, input: &[u8], output: &mut [u8]) -> Result<Step, String> {
        let mut consumed = 0;
        loop {
            let rest = &input[consumed..];
            // Header bytes read in this round, which the optional header CRC covers.
            let mut header_bytes = 0;
            // Whether they are the optional fields, read but never decoded.
            let mut skipped = false;
            match &mut self.part {
                GzipPart::Body => {
                    let step = inflate(&mut self.inflater, rest, output)?;
                    consumed += step.consumed;
                    self.body_crc.update(&output[..step.produced]);
                    if step.stream_ended {
                        self.part = GzipPart::Trailer { bytes: [0; 8], filled: 0 };
                    }
                    // Output goes back at once; a member that ended with no new output goes on to
                    // its trailer in this call.
                    if step.produced > 0 || !step.stream_ended {
                        return Ok(Step { consumed, produced: step.produced });
                    }
                    continue;
                }
                _ if rest.is_empty() => return Ok(Step { consumed, produced: 0 }),
                GzipPart::Fixed { bytes, filled } => {
                    header_bytes = fill(bytes, filled, rest);
                    if *filled == bytes.len() {
                        let flags = check_fixed_header(bytes)?;
                        self.part = GzipPart::after(GzipHeaderField::Fixed, flags);
                    }
                }
                GzipPart::ExtraLength { flags, bytes, filled } => {
                    header_bytes = fill(bytes, filled, rest);
                    skipped = true;
                    if *filled == bytes.len() {
                        let (flags, remaining) = (*flags, usize::from(u16::from_le_bytes(*bytes)));
                        self.part = match remaining {
                            0 => GzipPart::after(GzipHeaderField::Extra, flags),
                            _ => GzipPart::Extra { flags, remaining },
                        };
                    }
                }
                GzipPart::Extra { flags, remaining } => {
                    header_bytes = (*remaining).min(rest.len());
                    skipped = true;
                    *remaining -= header_bytes;
                    if *remaining == 0 {
                        self.part = GzipPart::after(GzipHeaderField::Extra, *flags);
                    }
                }
                GzipPart::Name { flags } => {
                    let (taken, terminated) = through_zero_byte(rest);
                    header_bytes = taken;
                    skipped = true;
                    if terminated {
                        self.part = GzipPart::after(GzipHeaderField::Name, *flags);
                    }
                }
                GzipPart::Comment { flags } => {
                    let (taken, terminated) = through_zero_byte(rest);
                    header_bytes = taken;
                    skipped = true;
                    if terminated {
                        self.part = GzipPart::after(GzipHeaderField::Comment, *flags);
                    }
                }
                GzipPart::HeaderCrc { bytes, filled } => {
                    consumed += fill(bytes, filled, rest);
                    if *filled == bytes.len() {
                        // The header CRC is the low 16 bits of the CRC-32 of the header before it.
                        if u16::from_le_bytes(*bytes) != self.header_crc.sum() as u16 {
                            return Err("gzip header CRC mismatch".to_owned());
                        }
                        self.part = GzipPart::Body;
                    }
                }
                GzipPart::Trailer { bytes, filled } => {
                    consumed += fill(bytes, filled, rest);
                    if *filled == bytes.len() {
                        let expected_crc = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                        let expected_len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
                        if expected_crc != self.body_crc.sum() {
                            return Err("gzip member CRC-32 mismatch".to_owned());
                        }
                        if expected_len != self.body_crc.amount() {
                            return Err("gzip member length mismatch".to_owned());
                        }
                        self.part = GzipPart::BetweenMembers;
                    }
                }
                GzipPart::BetweenMembers => {
                    // More bytes after a member: they must be another member.
                    self.inflater.reset(false);
                    self.body_crc.reset();
                    self.header_crc.reset();
                    self.part = GzipPart::member_start();
                    // The caller checks the count against MAX_GZIP_MEMBERS after this call.
                    self.members += 1;
                }
            }
            self.header_crc.update(&rest[..header_bytes]);
            if skipped {
                self.skipped_bytes += header_bytes as u64;
            }
            consumed += header_bytes;
        }
    }
}

/// How many bytes of `input` belong to a zero-terminated field, and whether its end is among them.
fn through_zero_byte(input: &[u8]) -> (usize, bool) {
    match input.iter().position(|&byte| byte == 0) {
        Some(terminator) => (terminator + 1, true),
        None => (input.len(), false),
    }
}

/// Checks the fixed gzip header and returns its flags.
fn check_fixed_header(bytes: &[u8; 10]) -> Result<u8, String> {
    if bytes[..2] != [0x1f, 0x8b] {
        return Err("not a gzip member (wrong magic bytes)".to_owned());
    }
    if bytes[2] != 8 {
        return Err(format!("unknown gzip compression method {}", bytes[2]));
    }
    let flags = bytes[3];
    if flags & RESERVED_FLAGS != 0 {
        return Err(format!("reserved gzip header flags set ({flags:#04x})"));
    }
    Ok(flags)
}

/// Whether two bytes open a zlib stream (RFC 1950): method 8 (deflate), a window of at most
/// 32 KiB, and a header check that makes them a multiple of 31.
fn is_zlib_header(first: u8, second: u8) -> bool {
    first & 0x0f == 8 && first >> 4 <= 7 && (u16::from(first) << 8 | u16::from(second)) % 31 == 0
}

/// HTTP's `deflate`: zlib or raw deflate, told apart by the first two bytes.
enum DeflateDecoder {
    /// Before the first two bytes; holds the first if it came alone.
    Sniffing {
        first_byte: Option<u8>,
    },
    Inflating {
        inflater: Decompress,
        ended: bool,
    },
}

impl DeflateDecoder {
    fn decode(&mut self, input: &[u8], output: &mut [u8]) -> Result<Step, String> {
        match self {
            DeflateDecoder::Sniffing { first_byte } => {
                let (first, second, held_first) = match (*first_byte, input) {
                    (_, []) => return Ok(Step { consumed: 0, produced: 0 }),
                    (None, [first]) => {
                        *first_byte = Some(*first);
                        return Ok(Step { consumed: 1, produced: 0 });
                    }
                    (None, [first, second, ..]) => (*first, *second, None),
                    (Some(first), [second, ..]) => (first, *second, Some(first)),
                };
                let mut inflater = Decompress::new(is_zlib_header(first, second));
                let mut produced = 0;
                if let Some(first) = held_first {
                    let step = inflate(&mut inflater, &[first], output)?;
                    if step.consumed != 1 || step.stream_ended {
                        return Err("could not start inflating after the first byte".to_owned());
                    }
                    produced = step.produced;
                }
                *self = DeflateDecoder::Inflating { inflater, ended: false };
                let step = self.decode(input, &mut output[produced..])?;
                Ok(Step { consumed: step.consumed, produced: produced + step.produced })
            }
            DeflateDecoder::Inflating { inflater, ended } => {
                if *ended {
                    return match input {
                        [] => Ok(Step { consumed: 0, produced: 0 }),
                        _ => Err("bytes after the end of the deflate stream".to_owned()),
                    };
                }
                let step = inflate(inflater, input, output)?;
                // Bytes left after the end fail the next call: this call's output goes out first,
                // so that what did decode is scanned.
                *ended = step.stream_ended;
                Ok(Step { consumed: step.consumed, produced: step.produced })
            }
        }
    }
}

/// brotli (RFC 7932), without the large-window extension, so a window is 16 MiB at most.
struct BrotliDecoder {
    state: Box<BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>>,
    ended: bool,
}

impl BrotliDecoder {
    fn new() -> BrotliDecoder {
        let state = BrotliState::new_strict(
            StandardAlloc::default(),
            StandardAlloc::default(),
            StandardAlloc::default(),
        );
        BrotliDecoder { state: Box::new(state), ended: false }
    }

    fn decode(&mut self, input: &[u8], output: &mut [u8]) -> Result<Step, String> {
        if self.ended {
            return match input {
                [] => Ok(Step { consumed: 0, produced: 0 }),
                _ => Err("bytes after the end of the brotli stream".to_owned()),
            };
        }
        let (mut available_in, mut input_offset) = (input.len(), 0);
        let (mut available_out, mut output_offset, mut total_out) = (output.len(), 0, 0);
        let result = BrotliDecompressStream(
            &mut available_in,
            &mut input_offset,
            input,
            &mut available_out,
            &mut output_offset,
            output,
            &mut total_out,
            &mut *self.state,
        );
        match result {
            BrotliResult::ResultFailure => return Err(format!("{:?}", self.state.error_code)),
            // Bytes left after the end fail the next call: this call's output goes out first, so
            // that what did decode is scanned.
            BrotliResult::ResultSuccess => self.ended = true,
            BrotliResult::NeedsMoreInput | BrotliResult::NeedsMoreOutput => {}
        }
        Ok(Step { consumed: input_offset, produced: output_offset })
    }
}

/// zstd (RFC 8878): frames one after another, each window at most 8 MiB. Skippable frames are
/// read here, counted and never given to zstd (which would skip them unseen).
struct ZstdDecoder {
    context: ZstdContext<'static>,
    part: ZstdPart,
    /// Bytes of skippable frames read, headers included.
    skipped_bytes: u64,
}

/// Where in a zstd body the decoder is.
enum ZstdPart {
    /// Between frames (or before the first): the next frame's magic number.
    Magic { bytes: [u8; 4], filled: usize },
    /// The frame size of a skippable frame, after its magic number.
    SkippableSize { bytes: [u8; 4], filled: usize },
    /// The data of a skippable frame.
    Skipping { remaining: u32 },
    /// A zstd frame, decoded by zstd, which gets the magic number read here first.
    Frame { magic: [u8; 4], fed: usize },
}

impl ZstdPart {
    fn frame_start() -> ZstdPart {
        ZstdPart::Magic { bytes: [0; 4], filled: 0 }
    }
}

/// Whether a frame's magic number (little-endian) is one of the 16 of skippable frames,
/// 0x184D2A50 to 0x184D2A5F (RFC 8878, section 3.1.2).
fn is_skippable_magic(magic: [u8; 4]) -> bool {
    u32::from_le_bytes(magic) & 0xffff_fff0 == 0x184d_2a50
}

impl ZstdDecoder {
    fn new() -> Result<ZstdDecoder, String> {
        let mut context = ZstdContext::new().map_err(|err| err.to_string())?;
        context
            .set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
            .map_err(|err| err.to_string())?;
        Ok(ZstdDecoder { context, part: ZstdPart::frame_start(), skipped_bytes: 0 })
    }

    /// Every frame begun has ended: the body may end here.
    fn is_complete(&self) -> bool {
        matches!(self.part, ZstdPart::Magic { filled: 0, .. })
    }

    fn decode(&mut self, input: &[u8], output: &mut [u8]) -> Result<Step, String> {
        let mut consumed = 0;
        loop {
            let rest = &input[consumed..];
            match &mut self.part {
                ZstdPart::Frame { magic, fed } => {
                    let from_magic = *fed < magic.len();
                    let frame_input: &[u8] = if from_magic { &magic[*fed..] } else { rest };
                    let status =
                        self.context.run_on_buffers(frame_input, output).map_err(|err| err.to_string())?;
                    if from_magic {
                        *fed += status.bytes_read;
                    } else {
                        consumed += status.bytes_read;
                    }
                    // zstd returns 0 once the frame is decoded and flushed, and stops there.
                    let frame_ended = status.remaining == 0;
                    if frame_ended {
                        self.part = ZstdPart::frame_start();
                    }
                    // Output goes back at once; bytes after a frame are read in the next call.
                    if status.bytes_written > 0 {
                        return Ok(Step { consumed, produced: status.bytes_written });
                    }
                    if status.bytes_read == 0 && !frame_ended {
                        // zstd needs more input than this call has.
                        return Ok(Step { consumed, produced: 0 });
                    }
                    continue;
                }
                _ if rest.is_empty() => return Ok(Step { consumed, produced: 0 }),
                ZstdPart::Magic { bytes, filled } => {
                    consumed += fill(bytes, filled, rest);
                    if *filled == bytes.len() {
                        let magic = *bytes;
                        self.part = if is_skippable_magic(magic) {
                            self.skipped_bytes += magic.len() as u64;
                            ZstdPart::SkippableSize { bytes: [0; 4], filled: 0 }
                        } else {
                            ZstdPart::Frame { magic, fed: 0 }
                        };
                    }
                }
                ZstdPart::SkippableSize { bytes, filled } => {
                    let taken = fill(bytes, filled, rest);
                    consumed += taken;
                    self.skipped_bytes += taken as u64;
                    if *filled == bytes.len() {
                        self.part = match u32::from_le_bytes(*bytes) {
                            0 => ZstdPart::frame_start(),
                            remaining => ZstdPart::Skipping { remaining },
                        };
                    }
                }
                ZstdPart::Skipping { remaining } => {
                    let taken = rest.len().min(*remaining as usize);
                    consumed += taken;
                    self.skipped_bytes += taken as u64;
                    // `taken` is at most `remaining`, a u32.
                    *remaining -= taken as u32;
                    if *remaining == 0 {
                        self.part = ZstdPart::frame_start();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;

    use super::*;

    const NO_LIMITS: DecodeLimits =
        DecodeLimits { max_output_bytes: u64::MAX, max_ratio: u64::MAX, max_skipped_bytes: u64::MAX };

    /// About 160 KiB of text that compresses a few times over, so every encoding spans many
    /// pieces and buffers.
    fn sample_body() -> &'static [u8] {
        static BODY: OnceLock<Vec<u8>> = OnceLock::new();
        BODY.get_or_init(|| {
            let words = ["clamd", "scan", "envoy", "body", "gzip", "verdict", "stream", "zstd", "\n"];
            let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut body = Vec::new();
            while body.len() < 160 * 1024 {
                // xorshift64: deterministic, no dependency.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                body.extend_from_slice(words[(state % words.len() as u64) as usize].as_bytes());
                body.push(b' ');
                body.extend_from_slice(format!("{}", state % 1000).as_bytes());
            }
            body
        })
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn brotli(data: &[u8]) -> Vec<u8> {
        let mut encoder = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
        encoder.write_all(data).unwrap();
        encoder.into_inner()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::encode_all(data, 3).unwrap()
    }

    fn encode(encoding: Encoding, data: &[u8]) -> Vec<u8> {
        match encoding {
            Encoding::Gzip => gzip(data),
            Encoding::Deflate => zlib(data),
            Encoding::Brotli => brotli(data),
            Encoding::Zstd => zstd(data),
        }
    }

    /// Drains every ready piece into `decoded`, checking each piece's size.
    fn drain(decoder: &mut BodyDecoder, decoded: &mut Vec<u8>) -> Result<(), DecodeError> {
        while let Some(piece) = decoder.next_piece()? {
            assert!(!piece.is_empty() && piece.len() <= PIECE_BYTES, "piece of {} bytes", piece.len());
            decoded.extend_from_slice(piece);
        }
        Ok(())
    }

    /// Pushes `encoded` in chunks of `chunk_bytes`, draining after each, then finishes.
    fn decode_in_chunks(
        encodings: &[Encoding],
        encoded: &[u8],
        chunk_bytes: usize,
        limits: DecodeLimits,
    ) -> Result<Vec<u8>, DecodeError> {
        let mut decoder = BodyDecoder::new(encodings, limits);
        let mut decoded = Vec::new();
        for chunk in encoded.chunks(chunk_bytes) {
            decoder.push(Bytes::copy_from_slice(chunk));
            drain(&mut decoder, &mut decoded)?;
        }
        decoder.finish();
        drain(&mut decoder, &mut decoded)?;
        assert_eq!(decoder.encoded_bytes(), encoded.len() as u64);
        assert_eq!(decoder.decoded_bytes(), decoded.len() as u64);
        Ok(decoded)
    }

    fn decode_whole(encodings: &[Encoding], encoded: &[u8]) -> Result<Vec<u8>, DecodeError> {
        decode_whole_with(encodings, encoded, NO_LIMITS)
    }

    fn decode_whole_with(
        encodings: &[Encoding],
        encoded: &[u8],
        limits: DecodeLimits,
    ) -> Result<Vec<u8>, DecodeError> {
        decode_in_chunks(encodings, encoded, encoded.len().max(1), limits)
    }

    fn assert_corrupt(result: Result<Vec<u8>, DecodeError>, expected: Encoding) {
        match result {
            Err(DecodeError::Corrupt { encoding, .. }) if encoding == expected => {}
            other => panic!("expected Corrupt {{ encoding: {expected} }}, got {other:?}"),
        }
    }

    #[test]
    fn parses_single_stacked_and_repeated_headers_in_applied_order() {
        use Encoding::*;
        assert_eq!(parse_content_encoding(&["gzip"]), Ok(vec![Gzip]));
        assert_eq!(parse_content_encoding(&["gzip, br"]), Ok(vec![Gzip, Brotli]));
        assert_eq!(parse_content_encoding(&["gzip", "br"]), Ok(vec![Gzip, Brotli]));
        assert_eq!(parse_content_encoding(&["deflate,zstd", "x-gzip"]), Ok(vec![Deflate, Zstd, Gzip]));
    }

    #[test]
    fn parsing_ignores_case_whitespace_identity_and_empty_elements() {
        use Encoding::*;
        assert_eq!(parse_content_encoding(&["  GZip ,\tBR  "]), Ok(vec![Gzip, Brotli]));
        assert_eq!(parse_content_encoding(&["X-GZIP", "ZSTD"]), Ok(vec![Gzip, Zstd]));
        assert_eq!(parse_content_encoding(&["identity"]), Ok(vec![]));
        assert_eq!(parse_content_encoding(&["Identity, gzip, identity"]), Ok(vec![Gzip]));
        assert_eq!(parse_content_encoding(&["gzip,, ,br,"]), Ok(vec![Gzip, Brotli]));
        assert_eq!(parse_content_encoding(&[]), Ok(vec![]));
        assert_eq!(parse_content_encoding(&[""]), Ok(vec![]));
    }

    #[test]
    fn parsing_names_an_unknown_token() {
        assert_eq!(parse_content_encoding(&["compress"]), Err(UnsupportedEncoding("compress".to_owned())));
        assert_eq!(
            parse_content_encoding(&["gzip", " br , Foo "]),
            Err(UnsupportedEncoding("Foo".to_owned()))
        );
        assert_eq!(
            parse_content_encoding(&["gzip;q=1"]).unwrap_err().to_string(),
            "unsupported content-encoding: gzip;q=1"
        );
    }

    #[test]
    fn parsing_refuses_too_many_stacked_encodings() {
        assert_eq!(parse_content_encoding(&["gzip, gzip, gzip, gzip"]).map(|list| list.len()), Ok(4));
        let error = parse_content_encoding(&["gzip, gzip, gzip, gzip, gzip"]).unwrap_err();
        assert_eq!(error.to_string(), "unsupported content-encoding: 5 stacked encodings (at most 4)");
    }

    #[test]
    fn every_encoding_round_trips() {
        for encoding in [Encoding::Gzip, Encoding::Deflate, Encoding::Brotli, Encoding::Zstd] {
            let encoded = encode(encoding, sample_body());
            assert_eq!(decode_whole(&[encoding], &encoded).as_deref(), Ok(sample_body()), "{encoding}");
        }
    }

    #[test]
    fn chunking_does_not_change_the_output() {
        let stacked = brotli(&gzip(sample_body()));
        let cases = [
            (vec![Encoding::Gzip], gzip(sample_body())),
            (vec![Encoding::Deflate], zlib(sample_body())),
            (vec![Encoding::Deflate], raw_deflate(sample_body())),
            (vec![Encoding::Brotli], brotli(sample_body())),
            (vec![Encoding::Zstd], zstd(sample_body())),
            (vec![Encoding::Gzip, Encoding::Brotli], stacked),
            (vec![], sample_body().to_vec()),
        ];
        for (encodings, encoded) in &cases {
            for chunk_bytes in [1, 7, 4093, PIECE_BYTES + 1, encoded.len()] {
                let decoded = decode_in_chunks(encodings, encoded, chunk_bytes, NO_LIMITS);
                assert_eq!(decoded.as_deref(), Ok(sample_body()), "{encodings:?} in chunks of {chunk_bytes}");
            }
        }
    }

    #[test]
    fn stacked_gzip_then_br_decodes_br_first() {
        let encodings = parse_content_encoding(&["gzip, br"]).unwrap();
        let encoded = brotli(&gzip(sample_body()));
        assert_eq!(decode_whole(&encodings, &encoded).as_deref(), Ok(sample_body()));
        // The other order is not the same body: br's decoder sees gzip bytes.
        assert_corrupt(decode_whole(&[Encoding::Brotli, Encoding::Gzip], &encoded), Encoding::Gzip);
    }

    #[test]
    fn all_four_stacked_round_trip() {
        let encoded = zstd(&brotli(&zlib(&gzip(sample_body()))));
        let encodings = [Encoding::Gzip, Encoding::Deflate, Encoding::Brotli, Encoding::Zstd];
        for chunk_bytes in [3, 1000, encoded.len()] {
            assert_eq!(
                decode_in_chunks(&encodings, &encoded, chunk_bytes, NO_LIMITS).as_deref(),
                Ok(sample_body())
            );
        }
    }

    #[test]
    fn deflate_accepts_zlib_and_raw() {
        for data in [sample_body(), b"a", b""] {
            assert_eq!(decode_whole(&[Encoding::Deflate], &zlib(data)).as_deref(), Ok(data));
            assert_eq!(decode_whole(&[Encoding::Deflate], &raw_deflate(data)).as_deref(), Ok(data));
            let one_byte_chunks = decode_in_chunks(&[Encoding::Deflate], &raw_deflate(data), 1, NO_LIMITS);
            assert_eq!(one_byte_chunks.as_deref(), Ok(data));
        }
        assert!(is_zlib_header(0x78, 0x9c) && is_zlib_header(0x78, 0x01) && is_zlib_header(0x78, 0xda));
        assert!(!is_zlib_header(0x78, 0x9d), "header check fails");
        assert!(!is_zlib_header(0x8b, 0x1d), "method is not deflate");
    }

    #[test]
    fn multi_member_gzip_decodes_every_member() {
        let (first, second) = sample_body().split_at(50_000);
        let mut encoded = gzip(first);
        encoded.extend_from_slice(&gzip(second));
        encoded.extend_from_slice(&gzip(b""));
        for chunk_bytes in [1, 5000, encoded.len()] {
            assert_eq!(
                decode_in_chunks(&[Encoding::Gzip], &encoded, chunk_bytes, NO_LIMITS).as_deref(),
                Ok(sample_body())
            );
        }
    }

    #[test]
    fn gzip_header_fields_are_skipped_and_the_header_crc_checked() {
        let body = b"optional header fields";
        // FHCRC | FEXTRA | FNAME | FCOMMENT, then the fields in order.
        let mut header = vec![0x1f, 0x8b, 8, FHCRC | FEXTRA | FNAME | FCOMMENT, 0, 0, 0, 0, 0, 255];
        header.extend_from_slice(&[3, 0, b'a', b'b', b'c']);
        header.extend_from_slice(b"name.txt\0comment\0");
        let mut crc = Crc::new();
        crc.update(&header);
        let mut good = header.clone();
        good.extend_from_slice(&(crc.sum() as u16).to_le_bytes());
        good.extend_from_slice(&raw_deflate(body));
        let mut body_crc = Crc::new();
        body_crc.update(body);
        good.extend_from_slice(&body_crc.sum().to_le_bytes());
        good.extend_from_slice(&body_crc.amount().to_le_bytes());
        for chunk_bytes in [1, 3, good.len()] {
            assert_eq!(
                decode_in_chunks(&[Encoding::Gzip], &good, chunk_bytes, NO_LIMITS).as_deref(),
                Ok(&body[..])
            );
        }

        let mut bad_header_crc = good.clone();
        bad_header_crc[header.len()] ^= 1;
        assert_corrupt(decode_whole(&[Encoding::Gzip], &bad_header_crc), Encoding::Gzip);

        let mut reserved_flag = good;
        reserved_flag[3] |= 0x20;
        assert_corrupt(decode_whole(&[Encoding::Gzip], &reserved_flag), Encoding::Gzip);
    }

    #[test]
    fn checksum_mismatches_are_corrupt() {
        let encoded = gzip(sample_body());
        // The gzip trailer: CRC-32, then length.
        for flipped in [encoded.len() - 8, encoded.len() - 1] {
            let mut damaged = encoded.clone();
            damaged[flipped] ^= 0x40;
            assert_corrupt(decode_whole(&[Encoding::Gzip], &damaged), Encoding::Gzip);
        }
        // The zlib trailer: Adler-32.
        let mut damaged = zlib(sample_body());
        *damaged.last_mut().unwrap() ^= 0x40;
        assert_corrupt(decode_whole(&[Encoding::Deflate], &damaged), Encoding::Deflate);
    }

    #[test]
    fn truncated_streams_are_corrupt_at_finish() {
        for encoding in [Encoding::Gzip, Encoding::Deflate, Encoding::Brotli, Encoding::Zstd] {
            let encoded = encode(encoding, sample_body());
            for cut in [1, 4, encoded.len() / 2, encoded.len() - 1] {
                let truncated = &encoded[..cut];
                let mut decoder = BodyDecoder::new(&[encoding], NO_LIMITS);
                decoder.push(truncated.to_vec());
                let mut decoded = Vec::new();
                // Everything up to the cut decodes; only the end of the body reveals the truncation.
                assert_eq!(drain(&mut decoder, &mut decoded), Ok(()), "{encoding} cut at {cut}");
                decoder.finish();
                let error = drain(&mut decoder, &mut decoded).unwrap_err();
                assert!(
                    matches!(&error, DecodeError::Corrupt { encoding: failed, .. } if *failed == encoding),
                    "{encoding} cut at {cut}: {error:?}"
                );
                assert_eq!(decoder.next_piece(), Err(error), "the error sticks");
            }
        }
    }

    #[test]
    fn bytes_after_the_end_of_a_stream_are_corrupt() {
        for encoding in [Encoding::Gzip, Encoding::Deflate, Encoding::Brotli, Encoding::Zstd] {
            let mut encoded = encode(encoding, b"payload");
            encoded.extend_from_slice(b"trailing junk");
            assert_corrupt(decode_whole(&[encoding], &encoded), encoding);
            assert_corrupt(decode_in_chunks(&[encoding], &encoded, 1, NO_LIMITS), encoding);
        }
    }

    #[test]
    fn what_decoded_before_trailing_bytes_is_handed_out_before_the_error() {
        for encoding in [Encoding::Gzip, Encoding::Deflate, Encoding::Brotli, Encoding::Zstd] {
            let mut encoded = encode(encoding, sample_body());
            encoded.extend_from_slice(b"trailing junk");
            let mut decoder = BodyDecoder::new(&[encoding], NO_LIMITS);
            decoder.push(encoded);
            decoder.finish();
            let mut decoded = Vec::new();
            let err = drain(&mut decoder, &mut decoded).expect_err("trailing bytes are corrupt");
            assert!(matches!(err, DecodeError::Corrupt { .. }), "{encoding}: {err:?}");
            assert_eq!(decoded, sample_body(), "{encoding}: every decoded byte before the error");
        }
    }

    #[test]
    fn bodies_ending_on_a_piece_boundary_decode_and_meet_an_exact_limit() {
        for decoded_bytes in [PIECE_BYTES - 1, PIECE_BYTES, PIECE_BYTES + 1, 2 * PIECE_BYTES] {
            let body = &sample_body()[..decoded_bytes];
            for encoding in [Encoding::Gzip, Encoding::Deflate, Encoding::Brotli, Encoding::Zstd] {
                let encoded = encode(encoding, body);
                let exact = DecodeLimits { max_output_bytes: decoded_bytes as u64, ..NO_LIMITS };
                for chunk_bytes in [7, 1000, encoded.len()] {
                    let decoded = decode_in_chunks(&[encoding], &encoded, chunk_bytes, exact);
                    assert_eq!(decoded.as_deref(), Ok(body), "{encoding}, {decoded_bytes} bytes");
                }
                let one_short = DecodeLimits { max_output_bytes: decoded_bytes as u64 - 1, ..exact };
                let limit = one_short.max_output_bytes;
                assert_eq!(
                    decode_whole_with(&[encoding], &encoded, one_short),
                    Err(DecodeError::TooLarge { limit })
                );
            }
            let raw = raw_deflate(body);
            assert_eq!(decode_in_chunks(&[Encoding::Deflate], &raw, 1, NO_LIMITS).as_deref(), Ok(body));
        }
    }

    #[test]
    fn concatenated_zstd_frames_decode_as_one_body() {
        let (first, second) = sample_body().split_at(70_001);
        let mut encoded = zstd(first);
        encoded.extend_from_slice(&zstd(second));
        assert_eq!(
            decode_in_chunks(&[Encoding::Zstd], &encoded, 999, NO_LIMITS).as_deref(),
            Ok(sample_body())
        );
    }

    #[test]
    fn zstd_windows_over_8_mib_are_refused() {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder.window_log(24).unwrap();
        encoder.write_all(b"a window of 16 MiB declared in the frame header").unwrap();
        let encoded = encoder.finish().unwrap();
        assert_corrupt(decode_whole(&[Encoding::Zstd], &encoded), Encoding::Zstd);
    }

    #[test]
    fn brotli_large_window_streams_are_refused() {
        let params = brotli::enc::BrotliEncoderParams {
            large_window: true,
            lgwin: 26,
            quality: 1,
            ..Default::default()
        };
        let mut encoded = Vec::new();
        brotli::BrotliCompress(&mut &b"a stream declaring a 64 MiB window"[..], &mut encoded, &params)
            .unwrap();
        assert_corrupt(decode_whole(&[Encoding::Brotli], &encoded), Encoding::Brotli);
    }

    #[test]
    fn an_empty_body_with_an_encoding_is_an_empty_body() {
        for encodings in
            [&[Encoding::Gzip][..], &[Encoding::Deflate], &[Encoding::Brotli], &[Encoding::Zstd], &[]]
        {
            let mut decoder = BodyDecoder::new(encodings, NO_LIMITS);
            decoder.push(Vec::new());
            assert_eq!(decoder.next_piece(), Ok(None));
            decoder.finish();
            assert_eq!(decoder.next_piece(), Ok(None), "{encodings:?}");
            assert_eq!((decoder.encoded_bytes(), decoder.decoded_bytes()), (0, 0));
        }
    }

    #[test]
    fn encoded_empty_content_decodes_to_nothing() {
        for encoding in [Encoding::Gzip, Encoding::Deflate, Encoding::Brotli, Encoding::Zstd] {
            assert_eq!(decode_whole(&[encoding], &encode(encoding, b"")), Ok(Vec::new()), "{encoding}");
        }
    }

    #[test]
    fn identity_passes_bytes_through_in_bounded_pieces() {
        let body = sample_body();
        let mut decoder = BodyDecoder::new(&[], NO_LIMITS);
        decoder.push(body.to_vec());
        let mut pieces = 0;
        let mut decoded = Vec::new();
        while let Some(piece) = decoder.next_piece().unwrap() {
            assert!(piece.len() <= PIECE_BYTES);
            decoded.extend_from_slice(piece);
            pieces += 1;
        }
        assert_eq!(decoded, body);
        assert_eq!(pieces, body.len().div_ceil(PIECE_BYTES));

        let limits = DecodeLimits { max_output_bytes: 100_000, max_ratio: 1, ..NO_LIMITS };
        assert_eq!(decode_in_chunks(&[], body, 4096, limits), Err(DecodeError::TooLarge { limit: 100_000 }));
    }

    /// Feeds `encoded` in 64 KiB chunks until the first error; returns it with the decoder.
    fn feed_until_error(
        encodings: &[Encoding],
        encoded: &[u8],
        limits: DecodeLimits,
    ) -> (DecodeError, BodyDecoder) {
        let mut decoder = BodyDecoder::new(encodings, limits);
        let mut decoded = Vec::new();
        for chunk in encoded.chunks(64 * 1024) {
            decoder.push(Bytes::copy_from_slice(chunk));
            if let Err(error) = drain(&mut decoder, &mut decoded) {
                assert_eq!(decoded.len() as u64, decoder.decoded_bytes());
                return (error, decoder);
            }
        }
        decoder.finish();
        let error = drain(&mut decoder, &mut decoded).expect_err("the bomb must trip a limit");
        (error, decoder)
    }

    // One test for the three limits, because building the bomb takes seconds in a debug build.
    #[test]
    fn a_gzip_bomb_stops_at_each_limit_without_being_decoded_whole() {
        // 64 MiB of zeros, gzipped: about 64 KiB.
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        let zeros = vec![0; 1024 * 1024];
        for _ in 0..64 {
            encoder.write_all(&zeros).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 128 * 1024, "bomb is {} bytes", bomb.len());

        // The ratio limit trips as soon as the output passes the floor.
        let started = Instant::now();
        let limits = DecodeLimits { max_output_bytes: 1 << 30, max_ratio: 100, ..NO_LIMITS };
        let (error, decoder) = feed_until_error(&[Encoding::Gzip], &bomb, limits);
        assert_eq!(error, DecodeError::RatioExceeded { ratio_limit: 100 });
        assert!(decoder.decoded_bytes() <= RATIO_CHECK_FLOOR_BYTES, "{decoder:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());

        // The size limit trips with the output at most one piece short of it, never past it, and
        // early in the input.
        let limits = DecodeLimits { max_output_bytes: 8 * 1024 * 1024, max_ratio: u64::MAX, ..NO_LIMITS };
        let (error, decoder) = feed_until_error(&[Encoding::Gzip], &bomb, limits);
        assert_eq!(error, DecodeError::TooLarge { limit: 8 * 1024 * 1024 });
        assert!(decoder.decoded_bytes() <= limits.max_output_bytes, "{decoder:?}");
        assert!(decoder.decoded_bytes() > limits.max_output_bytes - PIECE_BYTES as u64, "{decoder:?}");
        assert!(decoder.encoded_bytes() < bomb.len() as u64 / 4, "{decoder:?}");

        // Stacked: a few hundred bytes that decode to the 64 KiB bomb, that decodes to 64 MiB.
        let double_bomb = gzip(&bomb);
        let limits = DecodeLimits { max_output_bytes: 1 << 30, max_ratio: 1000, ..NO_LIMITS };
        let (error, decoder) = feed_until_error(&[Encoding::Gzip, Encoding::Gzip], &double_bomb, limits);
        assert_eq!(error, DecodeError::RatioExceeded { ratio_limit: 1000 });
        assert!(decoder.decoded_bytes() <= RATIO_CHECK_FLOOR_BYTES, "{decoder:?}");
    }

    #[test]
    fn small_bodies_may_exceed_the_ratio() {
        let zeros = vec![0; RATIO_CHECK_FLOOR_BYTES as usize];
        let limits = DecodeLimits { max_output_bytes: u64::MAX, max_ratio: 2, ..NO_LIMITS };
        assert_eq!(decode_in_chunks(&[Encoding::Gzip], &gzip(&zeros), 100, limits), Ok(zeros));
    }

    /// A gzip member of `data` whose header carries the optional fields given.
    fn gzip_with_fields(
        data: &[u8],
        extra: Option<&[u8]>,
        name: Option<&[u8]>,
        comment: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut builder = flate2::GzBuilder::new();
        if let Some(extra) = extra {
            builder = builder.extra(extra);
        }
        if let Some(name) = name {
            builder = builder.filename(name);
        }
        if let Some(comment) = comment {
            builder = builder.comment(comment);
        }
        let mut encoder = builder.write(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// A zstd skippable frame with magic number 0x184D2A50 + `variant` holding `data`.
    fn skippable_frame(variant: u8, data: &[u8]) -> Vec<u8> {
        let mut frame = (0x184d_2a50u32 | u32::from(variant & 0x0f)).to_le_bytes().to_vec();
        frame.extend_from_slice(&(data.len() as u32).to_le_bytes());
        frame.extend_from_slice(data);
        frame
    }

    fn with_skip_limit(max_skipped_bytes: u64) -> DecodeLimits {
        DecodeLimits { max_skipped_bytes, ..NO_LIMITS }
    }

    /// Decodes `encoded` whole and returns the skipped bytes counted.
    fn skipped_after_decoding(encodings: &[Encoding], encoded: &[u8], chunk_bytes: usize) -> u64 {
        let mut decoder = BodyDecoder::new(encodings, NO_LIMITS);
        let mut decoded = Vec::new();
        for chunk in encoded.chunks(chunk_bytes) {
            decoder.push(Bytes::copy_from_slice(chunk));
            drain(&mut decoder, &mut decoded).unwrap();
        }
        decoder.finish();
        drain(&mut decoder, &mut decoded).unwrap();
        decoder.skipped_bytes()
    }

    #[test]
    fn gzip_extra_name_and_comment_count_as_skipped_in_every_member() {
        let body = b"the content";
        let plain = gzip(body);
        // FEXTRA: its 2-byte length and 5 bytes; FNAME and FCOMMENT with their terminating zero.
        let fields = gzip_with_fields(body, Some(b"extra"), Some(b"name.txt"), Some(b"a comment"));
        let only_name = gzip_with_fields(body, None, Some(b"name.txt"), None);
        for chunk_bytes in [1, 3, 4096] {
            assert_eq!(skipped_after_decoding(&[Encoding::Gzip], &plain, chunk_bytes), 0);
            assert_eq!(skipped_after_decoding(&[Encoding::Gzip], &fields, chunk_bytes), 7 + 9 + 10);
            assert_eq!(skipped_after_decoding(&[Encoding::Gzip], &only_name, chunk_bytes), 9);
            let two_members = [fields.clone(), only_name.clone()].concat();
            assert_eq!(skipped_after_decoding(&[Encoding::Gzip], &two_members, chunk_bytes), 26 + 9);
        }
        assert_eq!(decode_whole(&[Encoding::Gzip], &fields).as_deref(), Ok(&body[..]));
    }

    #[test]
    fn zstd_skippable_frames_are_counted_and_never_decoded() {
        let (first, second) = sample_body().split_at(40_000);
        // pzstd writes a 12-byte skippable frame (the frame's compressed size) before each frame.
        let pzstd_like = [
            skippable_frame(0, &(zstd(first).len() as u32).to_le_bytes()),
            zstd(first),
            skippable_frame(0, &(zstd(second).len() as u32).to_le_bytes()),
            zstd(second),
        ]
        .concat();
        let hidden = b"a file hidden where no decoder looks";
        let everywhere = [
            skippable_frame(0xf, hidden),
            zstd(first),
            skippable_frame(3, b""),
            zstd(second),
            skippable_frame(7, hidden),
        ]
        .concat();
        for chunk_bytes in [1, 5, 999, everywhere.len()] {
            for (encoded, skipped) in [(&pzstd_like, 24), (&everywhere, 3 * 8 + 2 * hidden.len() as u64)] {
                let decoded = decode_in_chunks(&[Encoding::Zstd], encoded, chunk_bytes, NO_LIMITS);
                assert_eq!(decoded.as_deref(), Ok(sample_body()), "in chunks of {chunk_bytes}");
                assert_eq!(skipped_after_decoding(&[Encoding::Zstd], encoded, chunk_bytes), skipped);
            }
        }
        // A body of skippable frames alone is an empty body; one cut short is truncated.
        assert_eq!(decode_whole(&[Encoding::Zstd], &skippable_frame(1, hidden)), Ok(Vec::new()));
        let frame = skippable_frame(1, hidden);
        for cut in [2, 4, 6, 8, frame.len() - 1] {
            assert_corrupt(decode_whole(&[Encoding::Zstd], &frame[..cut]), Encoding::Zstd);
        }
        // A frame that is neither zstd nor skippable is corrupt, as before.
        let mut not_a_frame = zstd(first);
        not_a_frame.extend_from_slice(&[0x51, 0x2a, 0x4d, 0x19, 0, 0, 0, 0]);
        assert_corrupt(decode_whole(&[Encoding::Zstd], &not_a_frame), Encoding::Zstd);
    }

    #[test]
    fn skipped_bytes_past_the_limit_stop_the_decoding() {
        let hidden = vec![b'h'; 10_000];
        let cases = [
            (vec![Encoding::Zstd], [skippable_frame(0, &hidden), zstd(sample_body())].concat(), 10_008),
            (vec![Encoding::Gzip], gzip_with_fields(sample_body(), Some(&hidden), None, None), 10_002),
            (vec![Encoding::Gzip], gzip_with_fields(sample_body(), None, None, Some(&hidden)), 10_001),
            // Stacked: the count is over every layer (a gzip name under a zstd skippable frame).
            (
                vec![Encoding::Gzip, Encoding::Zstd],
                [
                    skippable_frame(0, &hidden),
                    zstd(&gzip_with_fields(sample_body(), None, Some(&hidden), None)),
                ]
                .concat(),
                20_009,
            ),
        ];
        for (encodings, encoded, skipped) in &cases {
            for chunk_bytes in [1, 4096, encoded.len()] {
                let at_the_limit =
                    decode_in_chunks(encodings, encoded, chunk_bytes, with_skip_limit(*skipped));
                assert_eq!(at_the_limit.as_deref(), Ok(sample_body()), "{encodings:?}");
                let one_over =
                    decode_in_chunks(encodings, encoded, chunk_bytes, with_skip_limit(skipped - 1));
                assert_eq!(
                    one_over,
                    Err(DecodeError::SkippedTooMuch { limit: skipped - 1 }),
                    "{encodings:?}"
                );
            }
        }
        // The bound holds however long the field: a gzip name that never ends is stopped early.
        let mut endless_name = vec![0x1f, 0x8b, 8, FNAME, 0, 0, 0, 0, 0, 255];
        endless_name.resize(4 * 1024 * 1024, b'n');
        let mut decoder = BodyDecoder::new(&[Encoding::Gzip], with_skip_limit(64 * 1024));
        let mut decoded = Vec::new();
        let mut error = None;
        for chunk in endless_name.chunks(64 * 1024) {
            decoder.push(Bytes::copy_from_slice(chunk));
            if let Err(err) = drain(&mut decoder, &mut decoded) {
                error = Some(err);
                break;
            }
        }
        assert_eq!(error, Some(DecodeError::SkippedTooMuch { limit: 64 * 1024 }));
        assert!(decoder.encoded_bytes() <= 2 * 64 * 1024 + 10, "{decoder:?}");
    }

    #[test]
    fn gzip_members_of_the_content_are_numbered_piece_by_piece() {
        let members: [&[u8]; 4] = [&sample_body()[..100_000], b"", b"second", &sample_body()[100_000..]];
        let encoded: Vec<u8> = members.iter().flat_map(|member| gzip(member)).collect();
        for chunk_bytes in [1, 777, encoded.len()] {
            let mut decoder = BodyDecoder::new(&[Encoding::Gzip], NO_LIMITS);
            assert_eq!(decoder.gzip_member(), 0);
            let mut by_member: Vec<Vec<u8>> = vec![Vec::new(); members.len()];
            let mut take = |decoder: &mut BodyDecoder| {
                while let Some(piece) = decoder.next_piece().unwrap() {
                    let piece = piece.to_vec();
                    by_member[decoder.gzip_member() as usize - 1].extend_from_slice(&piece);
                }
            };
            for chunk in encoded.chunks(chunk_bytes) {
                decoder.push(Bytes::copy_from_slice(chunk));
                take(&mut decoder);
            }
            decoder.finish();
            take(&mut decoder);
            assert_eq!(decoder.gzip_member(), 4, "in chunks of {chunk_bytes}");
            assert_eq!(by_member, members.map(<[u8]>::to_vec), "in chunks of {chunk_bytes}");
        }
        // gzip applied first (the content) under br: its members count. gzip applied last (over
        // brotli bytes): they do not, the content is brotli's.
        let inner = brotli(&[gzip(b"one"), gzip(b"two")].concat());
        let mut decoder = BodyDecoder::new(&[Encoding::Gzip, Encoding::Brotli], NO_LIMITS);
        decoder.push(inner);
        decoder.finish();
        let mut decoded = Vec::new();
        drain(&mut decoder, &mut decoded).unwrap();
        assert_eq!((decoded.as_slice(), decoder.gzip_member()), (&b"onetwo"[..], 2));
        let outer = [gzip(&brotli(b"one")[..5]), gzip(&brotli(b"one")[5..])].concat();
        let mut decoder = BodyDecoder::new(&[Encoding::Brotli, Encoding::Gzip], NO_LIMITS);
        decoder.push(outer);
        decoder.finish();
        let mut decoded = Vec::new();
        drain(&mut decoder, &mut decoded).unwrap();
        assert_eq!((decoded.as_slice(), decoder.gzip_member()), (&b"one"[..], 0));
        assert_eq!(BodyDecoder::new(&[Encoding::Zstd], NO_LIMITS).gzip_member(), 0);
    }

    #[test]
    fn more_than_16_gzip_members_are_refused() {
        let members =
            |count: usize| -> Vec<u8> { (0..count).flat_map(|n| gzip(format!("{n}").as_bytes())).collect() };
        let sixteen = decode_whole(&[Encoding::Gzip], &members(16)).unwrap();
        assert_eq!(sixteen, (0..16).map(|n| n.to_string()).collect::<String>().into_bytes());
        for encodings in [&[Encoding::Gzip][..], &[Encoding::Gzip, Encoding::Zstd]] {
            let encoded = match encodings {
                [_, Encoding::Zstd] => zstd(&members(17)),
                _ => members(17),
            };
            assert_eq!(
                decode_whole(encodings, &encoded),
                Err(DecodeError::TooManyMembers { limit: MAX_GZIP_MEMBERS })
            );
        }
        // An outer gzip layer is bounded too.
        let inner = zstd(&sample_body()[..100]);
        assert!(inner.len() > 16);
        let outer: Vec<u8> = inner.chunks(1).flat_map(gzip).collect();
        assert_eq!(
            decode_whole(&[Encoding::Zstd, Encoding::Gzip], &outer),
            Err(DecodeError::TooManyMembers { limit: MAX_GZIP_MEMBERS })
        );
    }

    /// A brotli stream (16 KiB window) of a metadata meta-block holding `metadata`, then
    /// `content` in one uncompressed meta-block (RFC 7932, 9.2), written bit by bit, least
    /// significant bit first: the brotli encoder cannot write metadata.
    fn brotli_with_metadata(metadata: &[u8], content: &[u8]) -> Vec<u8> {
        assert!((1..=256).contains(&metadata.len()) && (1..=16 * 1024).contains(&content.len()));
        struct Bits {
            out: Vec<u8>,
            used: u32,
        }
        impl Bits {
            fn put(&mut self, fields: &[(usize, u32)]) {
                for &(value, count) in fields {
                    for bit in 0..count {
                        if self.used == 0 {
                            self.out.push(0);
                        }
                        *self.out.last_mut().unwrap() |= (((value >> bit) & 1) as u8) << self.used;
                        self.used = (self.used + 1) % 8;
                    }
                }
            }
            /// Pads to a byte boundary, then appends `bytes`.
            fn put_aligned(&mut self, bytes: &[u8]) {
                self.used = 0;
                self.out.extend_from_slice(bytes);
            }
        }
        let mut bits = Bits { out: Vec::new(), used: 0 };
        // WBITS 16; ISLAST 0, MNIBBLES 0 (coded 3), reserved 0, MSKIPBYTES 1, MSKIPLEN - 1.
        bits.put(&[(0, 1), (0, 1), (3, 2), (0, 1), (1, 2), (metadata.len() - 1, 8)]);
        bits.put_aligned(metadata);
        // ISLAST 0, MNIBBLES 4 (coded 0), MLEN - 1, ISUNCOMPRESSED 1.
        bits.put(&[(0, 1), (0, 2), (content.len() - 1, 16), (1, 1)]);
        bits.put_aligned(content);
        // ISLAST 1, ISLASTEMPTY 1.
        bits.put(&[(1, 1), (1, 1)]);
        bits.out
    }

    #[test]
    fn brotli_metadata_is_skipped_and_cannot_be_counted() {
        // Documents the limit the scanner's scan of the received bytes makes up for:
        // brotli-decompressor skips metadata meta-blocks without a way to see them.
        let encoded = brotli_with_metadata(b"hidden in a metadata block", b"the content");
        for chunk_bytes in [1, 5, encoded.len()] {
            let decoded = decode_in_chunks(&[Encoding::Brotli], &encoded, chunk_bytes, with_skip_limit(0));
            assert_eq!(decoded.as_deref(), Ok(&b"the content"[..]));
        }
        assert_eq!(skipped_after_decoding(&[Encoding::Brotli], &encoded, 7), 0);
    }

    #[test]
    fn the_decoder_can_cross_await_points() {
        fn assert_send<T: Send>() {}
        assert_send::<BodyDecoder>();
    }
}
