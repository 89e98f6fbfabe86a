//! Self-test bodies that check clamd's settings, generated at run time with no I/O: a
//! password-protected (ZipCrypto) zip for `AlertEncrypted`, and zips nested deeper than any
//! `MaxRecursion` for `AlertExceedsMax`. clamd answers `stream: OK` to both unless the setting is
//! on, and clamgate would then cache such bodies as clean.
//!
//! Why a zip writer of our own (stored members only, optional ZipCrypto) rather than the `zip`
//! crate: the probe needs ~100 lines of a well-specified format (PKWARE APPNOTE 4.3 and 6.1), and
//! a compression and crypto dependency tree in the server for a health probe is more code to trust
//! than what it replaces. Every body carries a caller-given nonce, so that no two probes send the
//! same bytes: clamd caches clean results by content, and a cached member would skip the check.

/// The deepest nesting clamd accepts for `MaxRecursion` (libclamav's `CLI_MAX_MAXRECLEVEL`: clamd
/// refuses to start with more). A body nested this deep exceeds every clamd's limit.
pub const MAX_CLAMD_RECURSION: usize = 100;

/// Levels of zip in [`nested_zip`]: one more than clamd can be told to open.
pub const NESTED_ZIP_DEPTH: usize = MAX_CLAMD_RECURSION + 1;

/// A zip with one member, encrypted with ZipCrypto under a password derived from `nonce`.
///
/// clamd cannot read it: with `AlertEncrypted yes` it answers `Heuristics.Encrypted.Zip FOUND`,
/// without it `stream: OK`.
pub fn encrypted_zip(nonce: [u8; 16]) -> Vec<u8> {
    let password = hex(&nonce);
    let mut header = [0u8; 11];
    header.copy_from_slice(&nonce[..11]);
    let member = member_text(&nonce);
    write_zip("clamgate-self-test.txt", &member, Some((password.as_bytes(), header)))
}

/// [`NESTED_ZIP_DEPTH`] zips, each the only (stored) member of the next, around a small text
/// that names `nonce`. With `AlertExceedsMax yes` clamd answers
/// `Heuristics.Limits.Exceeded.MaxRecursion FOUND`, without it `stream: OK`. About 11 KiB.
pub fn nested_zip(nonce: [u8; 16]) -> Vec<u8> {
    let mut body = write_zip("clamgate-self-test.txt", &member_text(&nonce), None);
    for level in 1..NESTED_ZIP_DEPTH {
        body = write_zip(&format!("level-{level}.zip"), &body, None);
    }
    body
}

fn member_text(nonce: &[u8; 16]) -> Vec<u8> {
    format!("clamgate clamd settings self-test {}\n", hex(nonce)).into_bytes()
}

/// A zip archive with one stored member; ZipCrypto-encrypted with `(password, header)` when
/// given, where `header` is the first 11 bytes of the 12-byte encryption header (the 12th is the
/// CRC's high byte, which a reader checks the password against).
fn write_zip(name: &str, data: &[u8], encryption: Option<(&[u8], [u8; 11])>) -> Vec<u8> {
    let crc = crc32(data);
    let (flags, version, stored) = match encryption {
        None => (0u16, 10u16, data.to_vec()),
        Some((password, header)) => {
            let mut keys = ZipCryptoKeys::new(password);
            let mut stored = Vec::with_capacity(12 + data.len());
            stored.extend_from_slice(&header);
            stored.push((crc >> 24) as u8);
            stored.extend_from_slice(data);
            keys.encrypt(&mut stored);
            // Bit 0: encrypted. Version 2.0 is the first with (traditional) encryption.
            (1u16, 20u16, stored)
        }
    };
    // Names and members here are small and fixed by this module: they fit the 16/32-bit fields.
    let name_len = name.len() as u16;
    let (size, compressed) = (data.len() as u32, stored.len() as u32);
    // 1980-01-01 00:00, the earliest DOS date.
    let (dos_time, dos_date) = (0u16, (1u16 << 5) | 1);

    let mut zip = Vec::with_capacity(stored.len() + 2 * name.len() + 100);
    let put16 = |zip: &mut Vec<u8>, v: u16| zip.extend_from_slice(&v.to_le_bytes());
    let put32 = |zip: &mut Vec<u8>, v: u32| zip.extend_from_slice(&v.to_le_bytes());
    // Local file header.
    put32(&mut zip, 0x0403_4b50);
    for v in [version, flags, 0, dos_time, dos_date] {
        put16(&mut zip, v);
    }
    for v in [crc, compressed, size] {
        put32(&mut zip, v);
    }
    put16(&mut zip, name_len);
    put16(&mut zip, 0);
    zip.extend_from_slice(name.as_bytes());
    zip.extend_from_slice(&stored);
    // Central directory.
    let central_offset = zip.len() as u32;
    put32(&mut zip, 0x0201_4b50);
    for v in [20, version, flags, 0, dos_time, dos_date] {
        put16(&mut zip, v);
    }
    for v in [crc, compressed, size] {
        put32(&mut zip, v);
    }
    // Name, extra and comment lengths, disk, internal attributes; external attributes, offset.
    for v in [name_len, 0, 0, 0, 0] {
        put16(&mut zip, v);
    }
    put32(&mut zip, 0);
    put32(&mut zip, 0);
    zip.extend_from_slice(name.as_bytes());
    let central_size = zip.len() as u32 - central_offset;
    // End of central directory: one entry on this (only) disk.
    put32(&mut zip, 0x0605_4b50);
    for v in [0, 0, 1, 1] {
        put16(&mut zip, v);
    }
    put32(&mut zip, central_size);
    put32(&mut zip, central_offset);
    put16(&mut zip, 0);
    zip
}

/// The three keys of PKWARE's traditional encryption (APPNOTE 6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ZipCryptoKeys([u32; 3]);

impl ZipCryptoKeys {
    fn new(password: &[u8]) -> ZipCryptoKeys {
        let mut keys = ZipCryptoKeys([0x1234_5678, 0x2345_6789, 0x3456_7890]);
        for &byte in password {
            keys.update(byte);
        }
        keys
    }

    fn update(&mut self, plain: u8) {
        let [k0, k1, k2] = &mut self.0;
        *k0 = crc32_byte(*k0, plain);
        *k1 = k1.wrapping_add(*k0 & 0xff).wrapping_mul(134_775_813).wrapping_add(1);
        *k2 = crc32_byte(*k2, (*k1 >> 24) as u8);
    }

    fn stream_byte(&self) -> u8 {
        let temp = (self.0[2] | 2) & 0xffff;
        (temp.wrapping_mul(temp ^ 1) >> 8) as u8
    }

    fn encrypt(&mut self, data: &mut [u8]) {
        for byte in data {
            let plain = *byte;
            *byte ^= self.stream_byte();
            self.update(plain);
        }
    }

    #[cfg(test)]
    fn decrypt(&mut self, data: &mut [u8]) {
        for byte in data {
            *byte ^= self.stream_byte();
            self.update(*byte);
        }
    }
}

/// CRC-32 as zip uses it (IEEE 802.3, reflected).
fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(0xffff_ffff, |crc, &byte| crc32_byte(crc, byte))
}

/// One byte of the CRC-32 register update (no pre- or post-inversion), as ZipCrypto's key
/// schedule uses it.
fn crc32_byte(crc: u32, byte: u8) -> u32 {
    CRC_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8)
}

const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; 16] = *b"0123456789abcdef";

    fn u16_at(zip: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([zip[at], zip[at + 1]])
    }

    fn u32_at(zip: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([zip[at], zip[at + 1], zip[at + 2], zip[at + 3]])
    }

    /// The one member of a zip written by [`write_zip`]: (name, flags, stored bytes, crc, size).
    fn member(zip: &[u8]) -> (String, u16, Vec<u8>, u32, u32) {
        assert_eq!(u32_at(zip, 0), 0x0403_4b50);
        let flags = u16_at(zip, 6);
        let (crc, compressed, size) = (u32_at(zip, 14), u32_at(zip, 18) as usize, u32_at(zip, 22));
        let name_len = u16_at(zip, 26) as usize;
        let name = String::from_utf8(zip[30..30 + name_len].to_vec()).unwrap();
        let start = 30 + name_len + u16_at(zip, 28) as usize;
        (name, flags, zip[start..start + compressed].to_vec(), crc, size)
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn zipcrypto_matches_a_known_vector() {
        // Checked against two independent ZipCrypto readers: this zip opens with Python's zipfile
        // (`setpassword(b"pw")`) and `unzip -P pw`, and reads back "hello".
        let zip = write_zip("a.txt", b"hello", Some((b"pw", [0; 11])));
        let (_, flags, stored, crc, size) = member(&zip);
        assert_eq!((flags, crc, size), (1, 0x3610_a686, 5));
        assert_eq!(stored, [227, 193, 173, 208, 144, 193, 200, 23, 194, 140, 243, 7, 60, 186, 68, 143, 128]);
    }

    #[test]
    fn encrypted_zip_decrypts_with_the_nonce_password() {
        let zip = encrypted_zip(NONCE);
        let (name, flags, mut stored, crc, size) = member(&zip);
        assert_eq!(name, "clamgate-self-test.txt");
        assert_eq!(flags & 1, 1, "encrypted flag");
        assert_eq!(stored.len(), size as usize + 12);
        ZipCryptoKeys::new(hex(&NONCE).as_bytes()).decrypt(&mut stored);
        assert_eq!(stored[11], (crc >> 24) as u8, "password check byte");
        assert_eq!(&stored[..11], &NONCE[..11]);
        let plain = &stored[12..];
        assert_eq!(crc32(plain), crc);
        assert_eq!(plain, member_text(&NONCE).as_slice());
        assert!(String::from_utf8_lossy(plain).contains("30313233343536373839616263646566"));
        // The member is not readable without the password.
        assert!(!zip.windows(plain.len()).any(|w| w == plain));
    }

    #[test]
    fn a_wrong_password_fails_the_check_byte() {
        let zip = encrypted_zip(NONCE);
        let (_, _, mut stored, crc, _) = member(&zip);
        ZipCryptoKeys::new(b"not the password").decrypt(&mut stored);
        assert_ne!(stored[11], (crc >> 24) as u8);
    }

    #[test]
    fn nested_zip_unwraps_level_by_level_to_the_text() {
        let mut body = nested_zip(NONCE);
        assert!(body.len() < 16 * 1024, "{} bytes", body.len());
        for level in (1..NESTED_ZIP_DEPTH).rev() {
            let (name, flags, stored, crc, size) = member(&body);
            assert_eq!((name, flags), (format!("level-{level}.zip"), 0));
            assert_eq!((crc32(&stored), stored.len()), (crc, size as usize));
            body = stored;
        }
        let (name, _, stored, _, _) = member(&body);
        assert_eq!(name, "clamgate-self-test.txt");
        assert_eq!(stored, member_text(&NONCE));
    }

    #[test]
    fn bodies_differ_with_the_nonce() {
        let other = *b"fedcba9876543210";
        assert_ne!(encrypted_zip(NONCE), encrypted_zip(other));
        assert_ne!(nested_zip(NONCE), nested_zip(other));
        assert_eq!(nested_zip(NONCE), nested_zip(NONCE));
    }

    #[test]
    fn central_directory_points_at_the_member() {
        let zip = write_zip("a.txt", b"hello", None);
        let end = zip.len() - 22;
        assert_eq!(u32_at(&zip, end), 0x0605_4b50);
        let (size, offset) = (u32_at(&zip, end + 12) as usize, u32_at(&zip, end + 16) as usize);
        assert_eq!(offset + size, end);
        assert_eq!(u32_at(&zip, offset), 0x0201_4b50);
        assert_eq!(u32_at(&zip, offset + 42), 0, "local header offset");
    }
}
