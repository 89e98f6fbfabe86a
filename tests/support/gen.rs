//! Deterministic generated bodies of any size (hundreds of MiB), produced piece by piece so that no
//! test holds a whole body: pseudo-random bytes from a seed, with the EICAR string written over them
//! at a chosen position, plus the query-string form the upstream's `/gen/` route takes.
//!
//! Byte `i` of a body depends only on the seed and `i` (a counter-based splitmix64), so any range
//! can be produced without producing what comes before it.

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::samples::eicar;

/// Length of the EICAR test string.
pub const EICAR_LEN: u64 = 68;

/// Chunk size used where the caller does not choose one (the upstream, the upload helpers).
pub const DEFAULT_CHUNK_BYTES: usize = 64 * 1024;

/// splitmix64's increment ("golden gamma").
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Where the EICAR string sits inside a generated body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EicarAt {
    /// At offset 0.
    Start,
    /// At offset `size / 2`.
    Middle,
    /// The last 68 bytes: offset `size - 68`.
    End,
    /// At this offset.
    Offset(u64),
}

/// A generated body: `size` pseudo-random bytes from `seed`, with EICAR at `eicar_at` if set.
/// The same spec always gives the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenSpec {
    pub size: u64,
    pub seed: u64,
    pub eicar_at: Option<EicarAt>,
}

impl GenSpec {
    /// A body without EICAR (clean for the test signatures).
    pub fn clean(size: u64, seed: u64) -> GenSpec {
        GenSpec { size, seed, eicar_at: None }
    }

    /// A body with EICAR at `at`.
    pub fn infected(size: u64, seed: u64, at: EicarAt) -> GenSpec {
        GenSpec { size, seed, eicar_at: Some(at) }
    }

    /// The offset of the EICAR string, if any. Panics if it does not fit inside the body (see
    /// [`validate`](Self::validate)).
    pub fn eicar_offset(&self) -> Option<u64> {
        if let Err(problem) = self.validate() {
            panic!("invalid GenSpec {self:?}: {problem}");
        }
        self.eicar_offset_unchecked()
    }

    /// `Err` when EICAR is requested but does not fit whole inside the body.
    pub fn validate(&self) -> Result<(), String> {
        match self.eicar_offset_unchecked() {
            Some(offset) if offset.checked_add(EICAR_LEN).is_none_or(|end| end > self.size) => Err(format!(
                "EICAR ({EICAR_LEN} bytes) at offset {offset} does not fit in a body of {} bytes",
                self.size
            )),
            _ => Ok(()),
        }
    }

    fn eicar_offset_unchecked(&self) -> Option<u64> {
        self.eicar_at.map(|at| match at {
            EicarAt::Start => 0,
            EicarAt::Middle => self.size / 2,
            // Too small a body wraps to a huge offset, which `validate` rejects.
            EicarAt::End => self.size.wrapping_sub(EICAR_LEN),
            EicarAt::Offset(offset) => offset,
        })
    }
}

/// The body of `spec` as consecutive pieces of `chunk` bytes (the last one shorter).
pub fn chunks(spec: &GenSpec, chunk: usize) -> GenChunks {
    range_chunks(spec, 0, spec.size, chunk)
}

/// Bytes `start..end` of the body of `spec` (end exclusive, clamped to the body's size), as pieces
/// of `chunk` bytes: what a `206 Partial Content` answer carries.
pub fn range_chunks(spec: &GenSpec, start: u64, end: u64, chunk: usize) -> GenChunks {
    assert!(chunk > 0, "range_chunks: chunk size must not be 0");
    let end = end.min(spec.size);
    // Panics here, in the caller, rather than in the middle of a streamed body.
    let eicar_offset = spec.eicar_offset();
    GenChunks { spec: *spec, eicar_offset, position: start.min(end), end, chunk }
}

/// Iterator over the pieces of a generated body; see [`chunks`] and [`range_chunks`].
#[derive(Debug, Clone)]
pub struct GenChunks {
    spec: GenSpec,
    eicar_offset: Option<u64>,
    position: u64,
    end: u64,
    chunk: usize,
}

impl GenChunks {
    /// Bytes still to come.
    pub fn remaining(&self) -> u64 {
        self.end - self.position
    }
}

impl Iterator for GenChunks {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        let remaining = self.remaining();
        if remaining == 0 {
            return None;
        }
        let len = usize::try_from(remaining).map_or(self.chunk, |remaining| remaining.min(self.chunk));
        let mut piece = BytesMut::zeroed(len);
        fill_at(&self.spec, self.eicar_offset, self.position, &mut piece);
        self.position += len as u64;
        Some(piece.freeze())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let pieces = usize::try_from(self.remaining().div_ceil(self.chunk as u64)).unwrap_or(usize::MAX);
        (pieces, Some(pieces))
    }
}

/// Writes bytes `offset..offset + buf.len()` of the body of `spec` into `buf`.
pub fn fill(spec: &GenSpec, offset: u64, buf: &mut [u8]) {
    fill_at(spec, spec.eicar_offset(), offset, buf);
}

fn fill_at(spec: &GenSpec, eicar_offset: Option<u64>, offset: u64, buf: &mut [u8]) {
    fill_random(spec.seed, offset, buf);
    if let Some(eicar_offset) = eicar_offset {
        overlay(&eicar(), eicar_offset, offset, buf);
    }
}

/// The pseudo-random bytes of `seed` at `offset..offset + buf.len()`. Written as plain index loops:
/// tests run unoptimised, where iterator adapters cost several times more.
fn fill_random(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut word_index = offset / 8;
    let mut written = 0;
    // A start inside a word: its tail.
    let skip = (offset % 8) as usize;
    if skip != 0 {
        let word = random_word(seed, word_index).to_le_bytes();
        let take = (8 - skip).min(buf.len());
        buf[..take].copy_from_slice(&word[skip..skip + take]);
        written = take;
        word_index += 1;
    }
    let mut state = seed.wrapping_add(word_index.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA));
    while written + 8 <= buf.len() {
        buf[written..written + 8].copy_from_slice(&mix(state).to_le_bytes());
        state = state.wrapping_add(GOLDEN_GAMMA);
        written += 8;
    }
    if written < buf.len() {
        let word = mix(state).to_le_bytes();
        let take = buf.len() - written;
        buf[written..].copy_from_slice(&word[..take]);
    }
}

/// Word `index` of the stream of `seed`: splitmix64's output for its `index + 1`-th state.
fn random_word(seed: u64, index: u64) -> u64 {
    mix(seed.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)))
}

/// splitmix64's output function. Inlined even in unoptimised test builds, where a call per 8 bytes
/// would halve the speed.
#[inline(always)]
fn mix(state: u64) -> u64 {
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Copies the part of `insert` (placed at body offset `insert_offset`) that falls inside `buf`
/// (which holds the body from `buf_offset`).
fn overlay(insert: &[u8], insert_offset: u64, buf_offset: u64, buf: &mut [u8]) {
    let start = insert_offset.max(buf_offset);
    let end = (insert_offset + insert.len() as u64).min(buf_offset + buf.len() as u64);
    if start >= end {
        return;
    }
    let (from, to) = ((start - buf_offset) as usize, (end - buf_offset) as usize);
    let source = (start - insert_offset) as usize;
    buf[from..to].copy_from_slice(&insert[source..source + (to - from)]);
}

/// SHA-256 of the whole body of `spec`, lower-case hex, computed piece by piece.
pub fn sha256_hex(spec: &GenSpec) -> String {
    let mut hasher = Sha256::new();
    for piece in chunks(spec, 1024 * 1024) {
        hasher.update(&piece);
    }
    hex::encode(hasher.finalize())
}

/// The query string for `spec`, e.g. `size=268435456&seed=7&eicar=end`: what the upstream's
/// `/gen/{name}?...` route reads with [`parse_query`]. `eicar` is `start`, `middle`, `end` or an
/// offset in bytes, and absent for a clean body.
pub fn query(spec: &GenSpec) -> String {
    let mut text = format!("size={}&seed={}", spec.size, spec.seed);
    if let Some(at) = spec.eicar_at {
        let at = match at {
            EicarAt::Start => "start".to_string(),
            EicarAt::Middle => "middle".to_string(),
            EicarAt::End => "end".to_string(),
            EicarAt::Offset(offset) => offset.to_string(),
        };
        text.push_str("&eicar=");
        text.push_str(&at);
    }
    text
}

/// Reads the [`GenSpec`] of a query string written by [`query`]. `size` is required, `seed`
/// defaults to 0, other keys (such as the upstream's `chunked`) are ignored. `Err` says what is
/// wrong, including an EICAR position that does not fit.
pub fn parse_query(query: &str) -> Result<GenSpec, String> {
    let mut spec = GenSpec { size: 0, seed: 0, eicar_at: None };
    let mut size_seen = false;
    let number = |key: &str, value: &str| {
        value.parse::<u64>().map_err(|_| format!("`{key}={value}`: not an unsigned integer"))
    };
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "size" => {
                spec.size = number(key, value)?;
                size_seen = true;
            }
            "seed" => spec.seed = number(key, value)?,
            "eicar" => {
                spec.eicar_at = Some(match value {
                    "start" => EicarAt::Start,
                    "middle" => EicarAt::Middle,
                    "end" => EicarAt::End,
                    offset => EicarAt::Offset(number(key, offset)?),
                })
            }
            _ => {}
        }
    }
    if !size_seen {
        return Err(format!("no `size=` in query {query:?}"));
    }
    spec.validate()?;
    Ok(spec)
}

/// Whether `query` asks for the key `key` with the value `1`, e.g. the upstream's `chunked=1`.
pub fn query_flag(query: &str, key: &str) -> bool {
    query.split('&').any(|pair| pair.split_once('=') == Some((key, "1")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn collect(spec: &GenSpec, chunk: usize) -> Vec<u8> {
        chunks(spec, chunk).flat_map(|piece| piece.to_vec()).collect()
    }

    #[test]
    fn same_seed_same_bytes_whatever_the_chunking() {
        let spec = GenSpec::clean(MIB + 3, 7);
        let whole = collect(&spec, 64 * 1024);
        assert_eq!(whole.len() as u64, spec.size);
        assert_eq!(whole, collect(&spec, 1000), "chunk size changed the bytes");
        assert_ne!(whole, collect(&GenSpec::clean(MIB + 3, 8), 64 * 1024), "seed ignored");
        // Any range equals the same slice of the whole body.
        let range: Vec<u8> = range_chunks(&spec, 12_345, 500_001, 4096).flat_map(|p| p.to_vec()).collect();
        assert_eq!(range, whole[12_345..500_001]);
    }

    #[test]
    fn eicar_is_exactly_where_requested() {
        let eicar = eicar();
        for (at, offset) in [
            (EicarAt::Start, 0),
            (EicarAt::Middle, MIB / 2),
            (EicarAt::End, MIB - EICAR_LEN),
            (EicarAt::Offset(65_530), 65_530),
        ] {
            let body = collect(&GenSpec::infected(MIB, 7, at), 64 * 1024);
            assert_eq!(positions(&body, &eicar), vec![offset as usize], "EICAR at {at:?}");
        }
        assert_eq!(positions(&collect(&GenSpec::clean(MIB, 7), 64 * 1024), &eicar), Vec::<usize>::new());
    }

    #[test]
    fn streamed_sha256_equals_sha256_of_the_collected_body() {
        let spec = GenSpec::infected(MIB + 5, 3, EicarAt::Middle);
        assert_eq!(sha256_hex(&spec), hex::encode(Sha256::digest(collect(&spec, 64 * 1024))));
    }

    #[test]
    fn query_round_trips() {
        for spec in [
            GenSpec::clean(268_435_456, 7),
            GenSpec::infected(1000, 1, EicarAt::End),
            GenSpec::infected(1000, 1, EicarAt::Offset(10)),
        ] {
            assert_eq!(parse_query(&query(&spec)), Ok(spec));
        }
        assert_eq!(
            query(&GenSpec::infected(268_435_456, 7, EicarAt::End)),
            "size=268435456&seed=7&eicar=end"
        );
        assert!(parse_query("size=10&eicar=end").is_err(), "EICAR longer than the body");
        assert!(parse_query("seed=1").is_err(), "no size");
        assert!(query_flag("size=1&chunked=1", "chunked"));
    }

    /// Every offset where `needle` starts in `haystack`.
    fn positions(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
        haystack.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(at, _)| at).collect()
    }
}
