//! What the verdict cache stores: the content key, the cached verdict, and the versioned value format.
//!
//! The value format is a pure function pair, [`encode_entry`] and [`decode_entry`], tested with byte
//! literals. Every value carries `"v": 1`; a reader that meets any other version, an unknown field,
//! or bytes that are not a well-formed v1 entry returns an error, which callers treat as a miss.
//! That is what makes a rolling upgrade safe: an old instance never misreads a newer entry, it
//! rescans. So any change to the format, even an added field, comes with a new version number.

use crate::verdict::Verdict;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// The version written into every encoded entry (`"v": 1`).
pub const ENTRY_FORMAT_VERSION: u64 = 1;

/// The content key: the SHA-256 of exactly the bytes that were scanned.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentKey([u8; 32]);

impl ContentKey {
    /// Wraps a SHA-256 digest computed elsewhere (for instance incrementally, while streaming).
    pub fn from_digest(digest: [u8; 32]) -> Self {
        ContentKey(digest)
    }

    /// The key of `bytes`: their SHA-256.
    pub fn of(bytes: &[u8]) -> Self {
        ContentKey(Sha256::digest(bytes).into())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest as 64 lowercase hex digits, as used in Redis keys, logs and 409 bodies.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The key written as [`ContentKey::hex`] writes it: exactly 64 lowercase hex digits.
    pub fn from_hex(digits: &str) -> Option<Self> {
        let lowercase = digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let mut digest = [0; 32];
        (digits.len() == 64 && lowercase && hex::decode_to_slice(digits, &mut digest).is_ok())
            .then_some(ContentKey(digest))
    }
}

impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentKey({})", self.hex())
    }
}

impl fmt::Display for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// A verdict that may be cached. There is deliberately no `Unscanned` variant: a scan that did not
/// happen is never remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedVerdict {
    /// clamd found nothing.
    Clean,
    /// clamd reported `signature`.
    Infected { signature: String },
}

impl CachedVerdict {
    /// The cacheable form of `verdict`: `None` for `Unscanned`, which must never be cached.
    pub fn from_verdict(verdict: &Verdict) -> Option<Self> {
        match verdict {
            Verdict::Clean => Some(CachedVerdict::Clean),
            Verdict::Infected { signature } => Some(CachedVerdict::Infected { signature: signature.clone() }),
            Verdict::Unscanned { .. } => None,
        }
    }

    /// The verdict this entry stands for.
    pub fn into_verdict(self) -> Verdict {
        match self {
            CachedVerdict::Clean => Verdict::Clean,
            CachedVerdict::Infected { signature } => Verdict::Infected { signature },
        }
    }
}

/// One cached verdict with the engine and signature database that produced it. Whether a `Clean`
/// entry from an older database may still be used is the reader's decision (DESIGN.md: rescan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The verdict.
    pub verdict: CachedVerdict,
    /// clamd's engine version, e.g. `1.4.6`.
    pub engine_version: String,
    /// The daily signature database version, e.g. `27000`; `None` when clamd reported none.
    pub database_version: Option<u64>,
    /// When the scan finished, in seconds since the Unix epoch.
    pub scanned_at_unix_secs: u64,
}

/// Why a stored value could not be read as a [`CacheEntry`]. Every case is a cache miss.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The value is not JSON, not an object, lacks `v`, or does not match the v1 schema.
    #[error("malformed cache entry: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The value was written in a format this build does not know (a newer clamgate, most likely).
    #[error("unsupported cache entry version {0}")]
    UnsupportedVersion(u64),
    /// The value is well-formed JSON but contradicts itself.
    #[error("invalid cache entry: {0}")]
    Invalid(&'static str),
}

/// The verdict names on the wire, shared by content and resource entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum WireVerdict {
    Clean,
    Infected,
}

/// Format v1 as written. Field order is the byte order of the encoding.
#[derive(Serialize)]
struct EntryV1Out<'a> {
    v: u64,
    verdict: WireVerdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<&'a str>,
    engine_version: &'a str,
    database_version: Option<u64>,
    scanned_at_unix_secs: u64,
}

/// Format v1 as read: strict, so that a field this build does not understand is a miss.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryV1In {
    #[allow(dead_code)] // checked by `VersionOnly` before this struct is parsed
    v: u64,
    verdict: WireVerdict,
    #[serde(default)]
    signature: Option<String>,
    engine_version: String,
    database_version: Option<u64>,
    scanned_at_unix_secs: u64,
}

/// The first pass of decoding: only the version, whatever else the object holds.
#[derive(Deserialize)]
struct VersionOnly {
    v: u64,
}

/// Checks that `bytes` is a JSON object whose `v` is `expected`, before the strict second pass.
pub(super) fn check_version(bytes: &[u8], expected: u64) -> Result<(), DecodeError> {
    let VersionOnly { v } = serde_json::from_slice(bytes)?;
    if v != expected {
        return Err(DecodeError::UnsupportedVersion(v));
    }
    Ok(())
}

/// The wire form of a verdict: its name and, for `infected`, the signature.
pub(super) fn verdict_to_wire(verdict: &CachedVerdict) -> (WireVerdict, Option<&str>) {
    match verdict {
        CachedVerdict::Clean => (WireVerdict::Clean, None),
        CachedVerdict::Infected { signature } => (WireVerdict::Infected, Some(signature.as_str())),
    }
}

/// The verdict a wire name and signature stand for; a pair that contradicts itself is an error.
pub(super) fn verdict_from_wire(
    verdict: WireVerdict,
    signature: Option<String>,
) -> Result<CachedVerdict, DecodeError> {
    match (verdict, signature) {
        (WireVerdict::Clean, None) => Ok(CachedVerdict::Clean),
        (WireVerdict::Clean, Some(_)) => Err(DecodeError::Invalid("a clean entry carries a signature")),
        (WireVerdict::Infected, Some(signature)) if !signature.is_empty() => {
            Ok(CachedVerdict::Infected { signature })
        }
        (WireVerdict::Infected, _) => Err(DecodeError::Invalid("an infected entry has no signature")),
    }
}

/// Encodes `entry` as the current format, e.g.
/// `{"v":1,"verdict":"infected","signature":"Eicar-Test-Signature","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":1767225600}`.
pub fn encode_entry(entry: &CacheEntry) -> Vec<u8> {
    let (verdict, signature) = verdict_to_wire(&entry.verdict);
    let wire = EntryV1Out {
        v: ENTRY_FORMAT_VERSION,
        verdict,
        signature,
        engine_version: &entry.engine_version,
        database_version: entry.database_version,
        scanned_at_unix_secs: entry.scanned_at_unix_secs,
    };
    // Serializing a struct of strings and integers cannot fail. Were it ever to, the empty value
    // decodes as malformed, i.e. a miss, which is the safe direction.
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// Decodes a value written by [`encode_entry`]. Any other version, an unknown field, a missing
/// field, or an entry that contradicts itself is an error; callers treat it as a miss.
pub fn decode_entry(bytes: &[u8]) -> Result<CacheEntry, DecodeError> {
    check_version(bytes, ENTRY_FORMAT_VERSION)?;
    let wire: EntryV1In = serde_json::from_slice(bytes)?;
    let verdict = verdict_from_wire(wire.verdict, wire.signature)?;
    Ok(CacheEntry {
        verdict,
        engine_version: wire.engine_version,
        database_version: wire.database_version,
        scanned_at_unix_secs: wire.scanned_at_unix_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::UnscannedReason;

    const CLEAN_V1: &[u8] = br#"{"v":1,"verdict":"clean","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":1767225600}"#;
    const INFECTED_V1: &[u8] = br#"{"v":1,"verdict":"infected","signature":"Eicar-Test-Signature","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":1767225600}"#;

    fn clean() -> CacheEntry {
        CacheEntry {
            verdict: CachedVerdict::Clean,
            engine_version: "1.4.6".to_string(),
            database_version: Some(27000),
            scanned_at_unix_secs: 1_767_225_600,
        }
    }

    fn infected() -> CacheEntry {
        CacheEntry {
            verdict: CachedVerdict::Infected { signature: "Eicar-Test-Signature".to_string() },
            ..clean()
        }
    }

    #[test]
    fn content_key_is_sha256_of_the_bytes() {
        // FIPS 180-2 test vector for "abc".
        let key = ContentKey::of(b"abc");
        assert_eq!(key.hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(key.to_string(), key.hex());
        assert_eq!(ContentKey::from_digest(*key.as_bytes()), key);
        assert_ne!(ContentKey::of(b"abd"), key);
    }

    #[test]
    fn content_key_parses_only_its_own_hex_form() {
        let key = ContentKey::of(b"abc");
        assert_eq!(ContentKey::from_hex(&key.hex()), Some(key));
        let upper = key.hex().to_uppercase();
        for bad in [&upper[..], &key.hex()[1..], "", "zz", &format!("{}0", key.hex())] {
            assert_eq!(ContentKey::from_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn encodes_clean_as_v1_bytes() {
        assert_eq!(encode_entry(&clean()), CLEAN_V1);
    }

    #[test]
    fn encodes_infected_as_v1_bytes() {
        assert_eq!(encode_entry(&infected()), INFECTED_V1);
    }

    #[test]
    fn encodes_missing_database_version_as_null() {
        let entry = CacheEntry { database_version: None, ..clean() };
        assert_eq!(
            encode_entry(&entry),
            br#"{"v":1,"verdict":"clean","engine_version":"1.4.6","database_version":null,"scanned_at_unix_secs":1767225600}"#
        );
    }

    #[test]
    fn decodes_v1_bytes() {
        assert_eq!(decode_entry(CLEAN_V1).ok(), Some(clean()));
        assert_eq!(decode_entry(INFECTED_V1).ok(), Some(infected()));
        let no_db = br#"{"v":1,"verdict":"clean","engine_version":"1.4.6","database_version":null,"scanned_at_unix_secs":1767225600}"#;
        assert_eq!(decode_entry(no_db).ok(), Some(CacheEntry { database_version: None, ..clean() }));
    }

    #[test]
    fn round_trips() {
        for entry in [clean(), infected(), CacheEntry { database_version: None, ..infected() }] {
            assert_eq!(decode_entry(&encode_entry(&entry)).ok(), Some(entry));
        }
    }

    #[test]
    fn rejects_unknown_versions() {
        let v2 = br#"{"v":2,"verdict":"clean","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":1767225600}"#;
        assert!(matches!(decode_entry(v2), Err(DecodeError::UnsupportedVersion(2))));
        let v0 = br#"{"v":0,"verdict":"clean"}"#;
        assert!(matches!(decode_entry(v0), Err(DecodeError::UnsupportedVersion(0))));
        // A future format that looks nothing like v1 is still only a version error.
        assert!(matches!(decode_entry(br#"{"v":7,"x":[1]}"#), Err(DecodeError::UnsupportedVersion(7))));
    }

    #[test]
    fn rejects_garbage() {
        for bytes in [
            &b""[..],
            b"\xff\xfe\x00",
            b"clean",
            b"null",
            b"[1]",
            b"{}",
            br#"{"v":"1","verdict":"clean","engine_version":"1.4.6","database_version":1,"scanned_at_unix_secs":1}"#,
            br#"{"v":1}"#,
            // truncated
            br#"{"v":1,"verdict":"clean","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":17"#,
        ] {
            assert!(
                matches!(decode_entry(bytes), Err(DecodeError::Malformed(_))),
                "{:?} decoded",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn rejects_unknown_fields_and_verdicts() {
        let extra = br#"{"v":1,"verdict":"clean","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":1767225600,"stale":true}"#;
        assert!(matches!(decode_entry(extra), Err(DecodeError::Malformed(_))));
        let unscanned = br#"{"v":1,"verdict":"unscanned","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":1767225600}"#;
        assert!(matches!(decode_entry(unscanned), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn rejects_self_contradicting_entries() {
        let clean_with_signature = br#"{"v":1,"verdict":"clean","signature":"X","engine_version":"1.4.6","database_version":1,"scanned_at_unix_secs":1}"#;
        assert!(matches!(decode_entry(clean_with_signature), Err(DecodeError::Invalid(_))));
        let infected_without = br#"{"v":1,"verdict":"infected","engine_version":"1.4.6","database_version":1,"scanned_at_unix_secs":1}"#;
        assert!(matches!(decode_entry(infected_without), Err(DecodeError::Invalid(_))));
        let infected_empty = br#"{"v":1,"verdict":"infected","signature":"","engine_version":"1.4.6","database_version":1,"scanned_at_unix_secs":1}"#;
        assert!(matches!(decode_entry(infected_empty), Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn only_clean_and_infected_are_cacheable() {
        assert_eq!(CachedVerdict::from_verdict(&Verdict::Clean), Some(CachedVerdict::Clean));
        let infected = Verdict::Infected { signature: "Eicar-Test-Signature".to_string() };
        assert_eq!(
            CachedVerdict::from_verdict(&infected),
            Some(CachedVerdict::Infected { signature: "Eicar-Test-Signature".to_string() })
        );
        for reason in UnscannedReason::ALL {
            assert_eq!(CachedVerdict::from_verdict(&Verdict::Unscanned { reason }), None, "{reason}");
        }
    }

    #[test]
    fn cached_verdicts_convert_back() {
        for verdict in [Verdict::Clean, Verdict::Infected { signature: "Win.Test.EICAR_HDB-1".to_string() }] {
            let cached = CachedVerdict::from_verdict(&verdict);
            assert_eq!(cached.map(CachedVerdict::into_verdict), Some(verdict));
        }
    }
}
