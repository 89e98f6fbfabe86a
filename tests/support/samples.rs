//! Test bodies matched by the signatures in `testdata/clamav/` (and clean ones that match nothing),
//! all generated at run time. The EICAR string is assembled from pieces: it is never stored whole.

/// The 68-byte EICAR anti-virus test file, matched by `Test.Eicar.Body`.
pub fn eicar() -> Vec<u8> {
    // Four pieces so that no file in the repository holds the whole string.
    const PIECES: [&[u8]; 4] =
        [b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$", b"EICAR-STANDARD-", b"ANTIVIRUS-", b"TEST-FILE!$H+H*"];
    let body = PIECES.concat();
    debug_assert_eq!(body.len(), 68);
    body
}

/// A zip archive holding `eicar.com`: detected only if clamd can read the archive.
pub fn eicar_zip() -> Vec<u8> {
    zip_of("eicar.com", &eicar())
}

/// A valid zip archive with one STORED (uncompressed) member `name` holding `data`.
pub fn zip_of(name: &str, data: &[u8]) -> Vec<u8> {
    let name = name.as_bytes();
    let crc = crc32(data);
    let size = u32::try_from(data.len()).expect("zip_of: member larger than 4 GiB");
    let name_len = u16::try_from(name.len()).expect("zip_of: name longer than 64 KiB");
    // 1980-01-01 00:00, the earliest DOS date.
    let (dos_time, dos_date): (u16, u16) = (0, (1 << 5) | 1);

    let mut zip = Vec::with_capacity(data.len() + 2 * name.len() + 100);
    // Local file header.
    zip.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    zip.extend_from_slice(&10u16.to_le_bytes()); // version needed: 1.0
    zip.extend_from_slice(&0u16.to_le_bytes()); // flags
    zip.extend_from_slice(&0u16.to_le_bytes()); // method: stored
    zip.extend_from_slice(&dos_time.to_le_bytes());
    zip.extend_from_slice(&dos_date.to_le_bytes());
    zip.extend_from_slice(&crc.to_le_bytes());
    zip.extend_from_slice(&size.to_le_bytes()); // compressed size
    zip.extend_from_slice(&size.to_le_bytes()); // uncompressed size
    zip.extend_from_slice(&name_len.to_le_bytes());
    zip.extend_from_slice(&0u16.to_le_bytes()); // extra field length
    zip.extend_from_slice(name);
    zip.extend_from_slice(data);

    let central_offset = u32::try_from(zip.len()).expect("zip_of: archive larger than 4 GiB");
    // Central directory header.
    zip.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    zip.extend_from_slice(&20u16.to_le_bytes()); // version made by: 2.0, MS-DOS
    zip.extend_from_slice(&10u16.to_le_bytes()); // version needed
    zip.extend_from_slice(&0u16.to_le_bytes()); // flags
    zip.extend_from_slice(&0u16.to_le_bytes()); // method
    zip.extend_from_slice(&dos_time.to_le_bytes());
    zip.extend_from_slice(&dos_date.to_le_bytes());
    zip.extend_from_slice(&crc.to_le_bytes());
    zip.extend_from_slice(&size.to_le_bytes());
    zip.extend_from_slice(&size.to_le_bytes());
    zip.extend_from_slice(&name_len.to_le_bytes());
    zip.extend_from_slice(&0u16.to_le_bytes()); // extra field length
    zip.extend_from_slice(&0u16.to_le_bytes()); // comment length
    zip.extend_from_slice(&0u16.to_le_bytes()); // disk number start
    zip.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
    zip.extend_from_slice(&0u32.to_le_bytes()); // external attributes
    zip.extend_from_slice(&0u32.to_le_bytes()); // offset of the local header
    zip.extend_from_slice(name);
    let central_size = u32::try_from(zip.len()).expect("zip_of: archive larger than 4 GiB") - central_offset;

    // End of central directory.
    zip.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    zip.extend_from_slice(&0u16.to_le_bytes()); // this disk
    zip.extend_from_slice(&0u16.to_le_bytes()); // disk with the central directory
    zip.extend_from_slice(&1u16.to_le_bytes()); // entries on this disk
    zip.extend_from_slice(&1u16.to_le_bytes()); // entries in total
    zip.extend_from_slice(&central_size.to_le_bytes());
    zip.extend_from_slice(&central_offset.to_le_bytes());
    zip.extend_from_slice(&0u16.to_le_bytes()); // comment length
    zip
}

/// CRC-32 (IEEE 802.3, reflected, as zip uses it).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

/// Size of [`hash_only_sample`]; `testdata/clamav/test.hdb` names it next to the MD5.
pub const HASH_ONLY_SAMPLE_BYTES: usize = 2048;

/// The exact 2048-byte file whose MD5 is in `test.hdb` (`Test.HashOnly`). It matches only whole:
/// any byte more or less (a multipart part split wrongly) and it is clean.
pub fn hash_only_sample() -> Vec<u8> {
    // "HASHONLY"; test.hdb holds md5 da0795efe1fd122659fd87840a259a64 of these bytes.
    pseudo_random(0x4841_5348_4f4e_4c59, HASH_ONLY_SAMPLE_BYTES)
}

/// The first string of `Test.Logical` in `test.ldb`.
pub const LOGICAL_PART_A: &[u8] = b"CLAMGATE-LOGICAL-PART-A-91c2";
/// The second string of `Test.Logical` in `test.ldb`.
pub const LOGICAL_PART_B: &[u8] = b"CLAMGATE-LOGICAL-PART-B-4e7d";
/// The string `Test.Marker` in `test.ndb` matches anywhere.
pub const MARKER: &[u8] = b"CLAMGATE-TEST-MARKER-7f3a";

/// A text holding both strings of `Test.Logical` (`0&1`): detected as `Test.Logical`.
pub fn logical_sample() -> Vec<u8> {
    let mut body = b"clamgate logical signature sample\nfirst: ".to_vec();
    body.extend_from_slice(LOGICAL_PART_A);
    body.extend_from_slice(b"\nsome filler text between the two parts\nsecond: ");
    body.extend_from_slice(LOGICAL_PART_B);
    body.extend_from_slice(b"\n");
    body
}

/// Only the first string of `Test.Logical`: clean, which shows the signature needs both.
pub fn logical_part_a_only_sample() -> Vec<u8> {
    let mut body = b"clamgate logical signature sample, first part only: ".to_vec();
    body.extend_from_slice(LOGICAL_PART_A);
    body.extend_from_slice(b"\n");
    body
}

/// A harmless text with the `Test.Marker` string inside: detected as `Test.Marker`.
pub fn marker_sample() -> Vec<u8> {
    let mut body = b"harmless text carrying the clamgate test marker: ".to_vec();
    body.extend_from_slice(MARKER);
    body.extend_from_slice(b" (end)\n");
    body
}

/// The text `Test.Daily.V<version>` detects: that signature is the only one in the `daily.cud`
/// [`ClamdProcess::install_daily`](super::clamd::ClamdProcess::install_daily) builds for `version`.
pub fn daily_sample(version: u32) -> Vec<u8> {
    format!("clamgate daily signature sample: CLAMGATE-DAILY-V{version}-SIGNATURE\n").into_bytes()
}

/// `len` deterministic pseudo-random bytes that match no signature (the same `len` always gives
/// the same bytes, and shorter samples are prefixes of longer ones).
pub fn clean_sample(len: usize) -> Vec<u8> {
    pseudo_random(0x434c_4541_4e00_0001, len)
}

/// splitmix64 output as little-endian bytes: deterministic, fast, and with no structure a
/// signature could match.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A gzip of a line naming `nonce` and then `zeros_mib` MiB of zero bytes: a few KiB to send that
/// keep clamd busy for seconds (it inflates and scans every byte; ~70 MB/s with the test
/// database on this machine), unique per `nonce` so that clamd's cache of clean results does not
/// answer it at once. clamd's `MaxFileSize` and `MaxScanSize` must exceed the inflated size
/// (`ClamdOptions::large_bodies()`), or it stops early.
///
/// The deflate stream is written by hand with fixed Huffman codes (one literal zero, then
/// length-258 distance-1 copies): compressing hundreds of MiB with `flate2` takes seconds in a
/// debug build.
pub fn slow_scan_gzip(zeros_mib: usize, nonce: u64) -> Vec<u8> {
    let line = format!("clamgate slow scan {nonce:016x}\n");
    let copies = (zeros_mib * 1024 * 1024 - 1) / 258;
    let zeros = 1 + copies * 258;
    let mut bits = BitWriter::default();
    bits.put(1, 1); // BFINAL
    bits.put(1, 2); // BTYPE 01: fixed Huffman codes
    for &byte in line.as_bytes().iter().chain(&[0u8]) {
        assert!(byte < 144, "literals 0-143 have 8-bit codes 0x30-0xbf");
        bits.code(0x30 + u32::from(byte), 8);
    }
    for _ in 0..copies {
        bits.code(0xc5, 8); // length code 285: 258 bytes, no extra bits
        bits.code(0, 5); // distance code 0: distance 1
    }
    bits.code(0, 7); // end of block (256)
    let deflate = bits.finish();

    let mut crc = flate2::Crc::new();
    crc.update(line.as_bytes());
    let block = vec![0u8; 1024 * 1024];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(block.len());
        crc.update(&block[..n]);
        left -= n;
    }
    let size = line.len() + zeros;
    let mut gzip = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    gzip.extend_from_slice(&deflate);
    gzip.extend_from_slice(&crc.sum().to_le_bytes());
    gzip.extend_from_slice(&(size as u32).to_le_bytes());
    gzip
}

/// Bits for a deflate stream: values least significant bit first, Huffman codes most
/// significant bit first (RFC 1951, 3.1.1).
#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    len: u32,
}

impl BitWriter {
    fn put(&mut self, value: u32, bits: u32) {
        self.acc |= u64::from(value) << self.len;
        self.len += bits;
        while self.len >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.len -= 8;
        }
    }

    fn code(&mut self, code: u32, bits: u32) {
        self.put(code.reverse_bits() >> (32 - bits), bits);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.len > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}
