//! Encoded bodies built piece by piece, for tests of what decoders read and skip: gzip members
//! with header fields, zstd frames (skippable ones too) with a chosen block kind, brotli streams
//! with metadata and uncompressed meta-blocks (which no encoder writes on request), deflate in
//! stored or compressed blocks. Built with the real libraries where they can, bit by bit where
//! they cannot; never with clamgate's decoder.

use std::io::Write;

use flate2::Compression;

/// `data` as one gzip member whose header carries an extra field, a file name or a comment.
pub fn gzip_with_header(
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
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

/// A zstd skippable frame (magic number 0x184D2A50) holding `data`: decoders skip it unread.
pub fn skippable_frame(data: &[u8]) -> Vec<u8> {
    let mut frame = 0x184d_2a50u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&u32::try_from(data.len()).expect("frame size").to_le_bytes());
    frame.extend_from_slice(data);
    frame
}

/// Bits written least significant first, as brotli reads them (RFC 7932, section 2).
#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Bits used in the last byte; 0: the next bit starts a new byte.
    used: u32,
}

impl BitWriter {
    fn bits(&mut self, value: u64, count: u32) {
        for bit in 0..count {
            if self.used == 0 {
                self.bytes.push(0);
            }
            if let Some(last) = self.bytes.last_mut() {
                *last |= (((value >> bit) & 1) as u8) << self.used;
            }
            self.used = (self.used + 1) % 8;
        }
    }

    /// Pads to a byte boundary with zero bits, then appends `data` as it is.
    fn aligned_bytes(&mut self, data: &[u8]) {
        self.used = 0;
        self.bytes.extend_from_slice(data);
    }
}

/// A brotli stream (16 KiB window) that opens with a metadata meta-block holding `metadata`,
/// which decoders skip, then carries `content` in uncompressed meta-blocks (RFC 7932, 9.2).
/// The brotli encoder cannot write metadata, so this is built bit by bit.
pub fn brotli_with_metadata(metadata: &[u8], content: &[u8]) -> Vec<u8> {
    assert!(!metadata.is_empty() && metadata.len() <= 1 << 24);
    let mut out = BitWriter::default();
    out.bits(0, 1); // WBITS: 16
                    // ISLAST = 0, MNIBBLES = 0 (coded 3): metadata; a reserved 0 bit; MSKIPBYTES; MSKIPLEN - 1.
    out.bits(0, 1);
    out.bits(3, 2);
    out.bits(0, 1);
    let skip_len = metadata.len() as u64 - 1;
    let skip_bytes = (1..=3).find(|bytes| skip_len < 1 << (8 * bytes)).expect("at most 16 MiB");
    out.bits(skip_bytes, 2);
    out.bits(skip_len, 8 * skip_bytes as u32);
    out.aligned_bytes(metadata);
    uncompressed_meta_blocks(out, content, 16 * 1024)
}

/// Appends `content` in uncompressed meta-blocks of at most `block` bytes, then the last, empty
/// meta-block: the stream's end.
fn uncompressed_meta_blocks(mut out: BitWriter, content: &[u8], block: usize) -> Vec<u8> {
    for chunk in content.chunks(block.clamp(1, 1 << 16)) {
        // ISLAST = 0, MNIBBLES = 4 (coded 0), MLEN - 1 in 16 bits, ISUNCOMPRESSED = 1.
        out.bits(0, 1);
        out.bits(0, 2);
        out.bits(chunk.len() as u64 - 1, 16);
        out.bits(1, 1);
        out.aligned_bytes(chunk);
    }
    out.bits(1, 1); // ISLAST
    out.bits(1, 1); // ISLASTEMPTY
    out.bytes
}

/// `data` as deflate with `level` (0: stored blocks only), raw (RFC 1951) or zlib-wrapped.
pub fn deflate(data: &[u8], level: u32, zlib: bool) -> Vec<u8> {
    let compression = Compression::new(level);
    if zlib {
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), compression);
        encoder.write_all(data).expect("zlib");
        encoder.finish().expect("zlib")
    } else {
        let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), compression);
        encoder.write_all(data).expect("deflate");
        encoder.finish().expect("deflate")
    }
}

/// `data` as one gzip member compressed at `level` (0: stored blocks).
pub fn gzip_member(data: &[u8], level: u32) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), Compression::new(level));
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

/// `data` as one zstd frame at `level`, with or without its content checksum.
pub fn zstd_frame(data: &[u8], level: i32, checksum: bool) -> Vec<u8> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), level).expect("zstd");
    encoder.include_checksum(checksum).expect("zstd checksum flag");
    encoder.write_all(data).expect("zstd");
    encoder.finish().expect("zstd")
}

/// `data` as brotli at `quality` (0 and 1 use encoders of their own) with a `window_bits` window.
pub fn brotli(data: &[u8], quality: u32, window_bits: u32) -> Vec<u8> {
    let mut encoder = brotli::CompressorWriter::new(Vec::new(), 4096, quality, window_bits);
    encoder.write_all(data).expect("brotli");
    encoder.into_inner()
}

/// `content` as brotli in uncompressed meta-blocks only (at most `block` bytes each).
pub fn brotli_uncompressed(content: &[u8], block: usize) -> Vec<u8> {
    let mut out = BitWriter::default();
    out.bits(0, 1); // WBITS: 16
    uncompressed_meta_blocks(out, content, block)
}
