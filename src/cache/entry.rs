//! What the verdict cache stores: the content key, the cached verdict, and the versioned value format.
//!
//! The value format is a pure function pair, [`encode_entry`] and [`decode_entry`], tested with byte
//! literals. Every value carries its format version `"v"`. This build writes `"v": 2` and reads
//! `"v": 1` and `"v": 2`; a reader that meets any other version, an unknown field, or bytes that
//! are not a well-formed entry returns an error, which callers treat as a miss. That is what makes
//! a rolling upgrade safe: an old instance never misreads a newer entry, it rescans. So any change
//! to the format, even an added field, comes with a new version number.
//!
//! - v1: `Clean` and `Infected` only, no signature epoch (read as epoch 0).
//! - v2: adds `signature_epoch`, and `Unscanned` entries (`"verdict":"unscanned","reason":...`)
//!   for the reasons that depend only on the bytes ([`BRIEFLY_CACHED_REASONS`]). A v1 reader meets
//!   `"v":2` and misses, so it can never take an unscanned entry for a clean one.

use crate::verdict::{UnscannedReason, Verdict};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// The version written into every encoded entry (`"v": 2`).
pub const ENTRY_FORMAT_VERSION: u64 = 2;

/// The `Unscanned` reasons that may be cached (briefly, `cache.unscanned_ttl_secs`, by content key
/// only): those that follow from the bytes themselves (a decompression bomb, a body that decodes
/// past `scan.max_scan_bytes`, bytes that do not decode), never engine trouble or a timeout.
pub const BRIEFLY_CACHED_REASONS: [UnscannedReason; 3] =
    [UnscannedReason::LimitsExceeded, UnscannedReason::TooLarge, UnscannedReason::UnsupportedEncoding];

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

/// A verdict that may be cached. `Clean` and `Infected` are kept `cache.ttl_secs` under content and
/// resource keys; `Unscanned` only for a [`BRIEFLY_CACHED_REASONS`] reason, only under a content
/// key, and only `cache.unscanned_ttl_secs`. A scan that did not happen because of the engine
/// (down, slow, failing) is never remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedVerdict {
    /// clamd found nothing.
    Clean,
    /// clamd reported `signature`.
    Infected { signature: String },
    /// The body cannot be scanned, for a reason that depends only on its bytes.
    Unscanned { reason: UnscannedReason },
}

impl CachedVerdict {
    /// The durable form of `verdict`, the only kind a resource entry holds: `Clean` or `Infected`;
    /// `None` for every `Unscanned`.
    pub fn from_verdict(verdict: &Verdict) -> Option<Self> {
        match verdict {
            Verdict::Clean => Some(CachedVerdict::Clean),
            Verdict::Infected { signature } => Some(CachedVerdict::Infected { signature: signature.clone() }),
            Verdict::Unscanned { .. } => None,
        }
    }

    /// The form of `verdict` a content entry may hold: as [`CachedVerdict::from_verdict`], plus
    /// `Unscanned` for the [`BRIEFLY_CACHED_REASONS`].
    pub fn from_content_verdict(verdict: &Verdict) -> Option<Self> {
        match verdict {
            Verdict::Unscanned { reason } if BRIEFLY_CACHED_REASONS.contains(reason) => {
                Some(CachedVerdict::Unscanned { reason: *reason })
            }
            other => CachedVerdict::from_verdict(other),
        }
    }

    /// Whether this is an `Unscanned` entry (kept briefly, never under a resource key).
    pub fn is_unscanned(&self) -> bool {
        matches!(self, CachedVerdict::Unscanned { .. })
    }

    /// The verdict this entry stands for.
    pub fn into_verdict(self) -> Verdict {
        match self {
            CachedVerdict::Clean => Verdict::Clean,
            CachedVerdict::Infected { signature } => Verdict::Infected { signature },
            CachedVerdict::Unscanned { reason } => Verdict::Unscanned { reason },
        }
    }
}

/// One cached verdict with the engine, signature database and signature epoch that produced it.
/// Whether a `Clean` entry from an older database or epoch may still be used is the reader's
/// decision (DESIGN.md: rescan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The verdict.
    pub verdict: CachedVerdict,
    /// clamd's engine version, e.g. `1.4.6`.
    pub engine_version: String,
    /// The daily signature database version, e.g. `27000`, as known *before* the scan started;
    /// `None` when clamd reported none.
    pub database_version: Option<u64>,
    /// `cache.signature_epoch` of the instance that wrote the entry (0 for v1 entries).
    pub signature_epoch: u64,
    /// When the scan finished, in seconds since the Unix epoch.
    pub scanned_at_unix_secs: u64,
}

/// Why a stored value could not be read as a [`CacheEntry`]. Every case is a cache miss.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The value is not JSON, not an object, lacks `v`, or does not match its version's schema.
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
    Unscanned,
}

/// Format v2 as written. Field order is the byte order of the encoding.
#[derive(Serialize)]
struct EntryV2Out<'a> {
    v: u64,
    verdict: WireVerdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    engine_version: &'a str,
    database_version: Option<u64>,
    signature_epoch: u64,
    scanned_at_unix_secs: u64,
}

/// Format v2 as read: strict, so that a field this build does not understand is a miss.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryV2In {
    #[allow(dead_code)] // checked by `check_version` before this struct is parsed
    v: u64,
    verdict: WireVerdict,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    engine_version: String,
    database_version: Option<u64>,
    signature_epoch: u64,
    scanned_at_unix_secs: u64,
}

/// Format v1 as read (written by clamgate before signature epochs): no epoch, no reason.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryV1In {
    #[allow(dead_code)] // checked by `check_version` before this struct is parsed
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

/// The version of `bytes`, a JSON object with a `v` this build reads (one of `readable`), before
/// the strict second pass.
pub(super) fn check_version(bytes: &[u8], readable: &[u64]) -> Result<u64, DecodeError> {
    let VersionOnly { v } = serde_json::from_slice(bytes)?;
    if !readable.contains(&v) {
        return Err(DecodeError::UnsupportedVersion(v));
    }
    Ok(v)
}

/// The wire form of a verdict: its name, for `infected` the signature, for `unscanned` the reason.
pub(super) fn verdict_to_wire(verdict: &CachedVerdict) -> (WireVerdict, Option<&str>, Option<&'static str>) {
    match verdict {
        CachedVerdict::Clean => (WireVerdict::Clean, None, None),
        CachedVerdict::Infected { signature } => (WireVerdict::Infected, Some(signature.as_str()), None),
        CachedVerdict::Unscanned { reason } => (WireVerdict::Unscanned, None, Some(reason.as_str())),
    }
}

/// The verdict a wire name, signature and reason stand for; a triple that contradicts itself, or
/// an unscanned reason that is never cached, is an error.
pub(super) fn verdict_from_wire(
    verdict: WireVerdict,
    signature: Option<String>,
    reason: Option<String>,
) -> Result<CachedVerdict, DecodeError> {
    match (verdict, signature, reason) {
        (_, Some(_), Some(_)) => Err(DecodeError::Invalid("an entry carries a signature and a reason")),
        (WireVerdict::Clean, None, None) => Ok(CachedVerdict::Clean),
        (WireVerdict::Clean, _, _) => {
            Err(DecodeError::Invalid("a clean entry carries a signature or reason"))
        }
        (WireVerdict::Infected, Some(signature), None) if !signature.is_empty() => {
            Ok(CachedVerdict::Infected { signature })
        }
        (WireVerdict::Infected, _, _) => Err(DecodeError::Invalid("an infected entry has no signature")),
        (WireVerdict::Unscanned, None, Some(reason)) => BRIEFLY_CACHED_REASONS
            .into_iter()
            .find(|cached| cached.as_str() == reason)
            .map(|reason| CachedVerdict::Unscanned { reason })
            .ok_or(DecodeError::Invalid("an unscanned entry with a reason that is never cached")),
        (WireVerdict::Unscanned, _, _) => Err(DecodeError::Invalid("an unscanned entry has no reason")),
    }
}

/// Encodes `entry` as the current format, e.g.
/// `{"v":2,"verdict":"infected","signature":"Eicar-Test-Signature","engine_version":"1.4.6","database_version":27000,"signature_epoch":0,"scanned_at_unix_secs":1767225600}`.
pub fn encode_entry(entry: &CacheEntry) -> Vec<u8> {
    let (verdict, signature, reason) = verdict_to_wire(&entry.verdict);
    let wire = EntryV2Out {
        v: ENTRY_FORMAT_VERSION,
        verdict,
        signature,
        reason,
        engine_version: &entry.engine_version,
        database_version: entry.database_version,
        signature_epoch: entry.signature_epoch,
        scanned_at_unix_secs: entry.scanned_at_unix_secs,
    };
    // Serializing a struct of strings and integers cannot fail. Were it ever to, the empty value
    // decodes as malformed, i.e. a miss, which is the safe direction.
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// Decodes a value written by [`encode_entry`], or by a clamgate that wrote v1 (read as signature
/// epoch 0). Any other version, an unknown field, a missing field, or an entry that contradicts
/// itself is an error; callers treat it as a miss.
pub fn decode_entry(bytes: &[u8]) -> Result<CacheEntry, DecodeError> {
    match check_version(bytes, &[1, ENTRY_FORMAT_VERSION])? {
        1 => {
            let wire: EntryV1In = serde_json::from_slice(bytes)?;
            Ok(CacheEntry {
                verdict: verdict_from_wire(wire.verdict, wire.signature, None)?,
                engine_version: wire.engine_version,
                database_version: wire.database_version,
                signature_epoch: 0,
                scanned_at_unix_secs: wire.scanned_at_unix_secs,
            })
        }
        _ => {
            let wire: EntryV2In = serde_json::from_slice(bytes)?;
            Ok(CacheEntry {
                verdict: verdict_from_wire(wire.verdict, wire.signature, wire.reason)?,
                engine_version: wire.engine_version,
                database_version: wire.database_version,
                signature_epoch: wire.signature_epoch,
                scanned_at_unix_secs: wire.scanned_at_unix_secs,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN_V2: &[u8] = br#"{"v":2,"verdict":"clean","engine_version":"1.4.6","database_version":27000,"signature_epoch":0,"scanned_at_unix_secs":1767225600}"#;
    const INFECTED_V2: &[u8] = br#"{"v":2,"verdict":"infected","signature":"Eicar-Test-Signature","engine_version":"1.4.6","database_version":27000,"signature_epoch":0,"scanned_at_unix_secs":1767225600}"#;
    const UNSCANNED_V2: &[u8] = br#"{"v":2,"verdict":"unscanned","reason":"limits_exceeded","engine_version":"1.4.6","database_version":27000,"signature_epoch":3,"scanned_at_unix_secs":1767225600}"#;
    const CLEAN_V1: &[u8] = br#"{"v":1,"verdict":"clean","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":1767225600}"#;
    const INFECTED_V1: &[u8] = br#"{"v":1,"verdict":"infected","signature":"Eicar-Test-Signature","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":1767225600}"#;

    fn clean() -> CacheEntry {
        CacheEntry {
            verdict: CachedVerdict::Clean,
            engine_version: "1.4.6".to_string(),
            database_version: Some(27000),
            signature_epoch: 0,
            scanned_at_unix_secs: 1_767_225_600,
        }
    }

    fn infected() -> CacheEntry {
        CacheEntry {
            verdict: CachedVerdict::Infected { signature: "Eicar-Test-Signature".to_string() },
            ..clean()
        }
    }

    fn unscanned() -> CacheEntry {
        CacheEntry {
            verdict: CachedVerdict::Unscanned { reason: UnscannedReason::LimitsExceeded },
            signature_epoch: 3,
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
    fn encodes_v2_bytes() {
        assert_eq!(encode_entry(&clean()), CLEAN_V2);
        assert_eq!(encode_entry(&infected()), INFECTED_V2);
        assert_eq!(encode_entry(&unscanned()), UNSCANNED_V2);
    }

    #[test]
    fn encodes_missing_database_version_as_null() {
        let entry = CacheEntry { database_version: None, ..clean() };
        assert_eq!(
            encode_entry(&entry),
            br#"{"v":2,"verdict":"clean","engine_version":"1.4.6","database_version":null,"signature_epoch":0,"scanned_at_unix_secs":1767225600}"#
        );
    }

    #[test]
    fn decodes_v2_bytes() {
        assert_eq!(decode_entry(CLEAN_V2).ok(), Some(clean()));
        assert_eq!(decode_entry(INFECTED_V2).ok(), Some(infected()));
        assert_eq!(decode_entry(UNSCANNED_V2).ok(), Some(unscanned()));
        let epoch = br#"{"v":2,"verdict":"clean","engine_version":"1.4.6","database_version":null,"signature_epoch":7,"scanned_at_unix_secs":1767225600}"#;
        assert_eq!(
            decode_entry(epoch).ok(),
            Some(CacheEntry { database_version: None, signature_epoch: 7, ..clean() })
        );
    }

    #[test]
    fn decodes_v1_bytes_as_signature_epoch_0() {
        // Written by clamgate before signature epochs: still read, as epoch 0.
        assert_eq!(decode_entry(CLEAN_V1).ok(), Some(clean()));
        assert_eq!(decode_entry(INFECTED_V1).ok(), Some(infected()));
        let no_db = br#"{"v":1,"verdict":"clean","engine_version":"1.4.6","database_version":null,"scanned_at_unix_secs":1767225600}"#;
        assert_eq!(decode_entry(no_db).ok(), Some(CacheEntry { database_version: None, ..clean() }));
        // v1 had no epoch field: one is an unknown field there, i.e. a miss.
        let v1_with_epoch = br#"{"v":1,"verdict":"clean","engine_version":"1.4.6","database_version":1,"signature_epoch":0,"scanned_at_unix_secs":1}"#;
        assert!(matches!(decode_entry(v1_with_epoch), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn round_trips() {
        for entry in [
            clean(),
            infected(),
            unscanned(),
            CacheEntry { database_version: None, signature_epoch: u64::MAX, ..infected() },
        ] {
            assert_eq!(decode_entry(&encode_entry(&entry)).ok(), Some(entry));
        }
        for reason in BRIEFLY_CACHED_REASONS {
            let entry = CacheEntry { verdict: CachedVerdict::Unscanned { reason }, ..clean() };
            assert_eq!(decode_entry(&encode_entry(&entry)).ok(), Some(entry));
        }
    }

    #[test]
    fn rejects_unknown_versions() {
        let v3 = br#"{"v":3,"verdict":"clean","engine_version":"1.4.6","database_version":27000,"signature_epoch":0,"scanned_at_unix_secs":1767225600}"#;
        assert!(matches!(decode_entry(v3), Err(DecodeError::UnsupportedVersion(3))));
        let v0 = br#"{"v":0,"verdict":"clean"}"#;
        assert!(matches!(decode_entry(v0), Err(DecodeError::UnsupportedVersion(0))));
        // A future format that looks nothing like v2 is still only a version error.
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
            br#"{"v":2}"#,
            // v2 without its epoch
            br#"{"v":2,"verdict":"clean","engine_version":"1.4.6","database_version":1,"scanned_at_unix_secs":1}"#,
            // truncated
            br#"{"v":2,"verdict":"clean","engine_version":"1.4.6","database_version":27000,"signature_epoch":0,"scanned_at_unix_secs":17"#,
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
        let extra = br#"{"v":2,"verdict":"clean","engine_version":"1.4.6","database_version":27000,"signature_epoch":0,"scanned_at_unix_secs":1767225600,"stale":true}"#;
        assert!(matches!(decode_entry(extra), Err(DecodeError::Malformed(_))));
        let unknown = br#"{"v":2,"verdict":"suspicious","engine_version":"1.4.6","database_version":27000,"signature_epoch":0,"scanned_at_unix_secs":1767225600}"#;
        assert!(matches!(decode_entry(unknown), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn a_v1_unscanned_value_is_never_an_entry() {
        // v1 never held unscanned entries: whatever wrote this, it is not one to trust.
        let unscanned = br#"{"v":1,"verdict":"unscanned","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":1767225600}"#;
        assert!(decode_entry(unscanned).is_err());
        let with_reason = br#"{"v":1,"verdict":"unscanned","reason":"too_large","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":1767225600}"#;
        assert!(decode_entry(with_reason).is_err());
    }

    #[test]
    fn rejects_self_contradicting_entries() {
        for bytes in [
            &br#"{"v":2,"verdict":"clean","signature":"X","engine_version":"1.4.6","database_version":1,"signature_epoch":0,"scanned_at_unix_secs":1}"#[..],
            br#"{"v":2,"verdict":"clean","reason":"too_large","engine_version":"1.4.6","database_version":1,"signature_epoch":0,"scanned_at_unix_secs":1}"#,
            br#"{"v":2,"verdict":"infected","engine_version":"1.4.6","database_version":1,"signature_epoch":0,"scanned_at_unix_secs":1}"#,
            br#"{"v":2,"verdict":"infected","signature":"","engine_version":"1.4.6","database_version":1,"signature_epoch":0,"scanned_at_unix_secs":1}"#,
            br#"{"v":2,"verdict":"infected","signature":"X","reason":"too_large","engine_version":"1.4.6","database_version":1,"signature_epoch":0,"scanned_at_unix_secs":1}"#,
            br#"{"v":2,"verdict":"unscanned","engine_version":"1.4.6","database_version":1,"signature_epoch":0,"scanned_at_unix_secs":1}"#,
            br#"{"v":2,"verdict":"unscanned","signature":"X","engine_version":"1.4.6","database_version":1,"signature_epoch":0,"scanned_at_unix_secs":1}"#,
            // Engine trouble is never cached, so no entry may claim it.
            br#"{"v":2,"verdict":"unscanned","reason":"engine_unavailable","engine_version":"1.4.6","database_version":1,"signature_epoch":0,"scanned_at_unix_secs":1}"#,
            br#"{"v":2,"verdict":"unscanned","reason":"timeout","engine_version":"1.4.6","database_version":1,"signature_epoch":0,"scanned_at_unix_secs":1}"#,
            br#"{"v":2,"verdict":"unscanned","reason":"nonsense","engine_version":"1.4.6","database_version":1,"signature_epoch":0,"scanned_at_unix_secs":1}"#,
        ] {
            assert!(
                matches!(decode_entry(bytes), Err(DecodeError::Invalid(_))),
                "{:?} decoded",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn only_clean_and_infected_are_durable() {
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
    fn content_entries_also_hold_unscanned_reasons_that_depend_only_on_the_bytes() {
        assert_eq!(CachedVerdict::from_content_verdict(&Verdict::Clean), Some(CachedVerdict::Clean));
        for reason in UnscannedReason::ALL {
            let cached = CachedVerdict::from_content_verdict(&Verdict::Unscanned { reason });
            if BRIEFLY_CACHED_REASONS.contains(&reason) {
                assert_eq!(cached, Some(CachedVerdict::Unscanned { reason }));
            } else {
                assert_eq!(cached, None, "{reason} must never be cached");
            }
            assert!(!(reason.is_engine_trouble() && BRIEFLY_CACHED_REASONS.contains(&reason)));
        }
        // Partial content and encryption are not facts about the bytes alone either.
        for reason in [UnscannedReason::PartialContent, UnscannedReason::Encrypted] {
            assert!(!BRIEFLY_CACHED_REASONS.contains(&reason));
        }
    }

    #[test]
    fn cached_verdicts_convert_back() {
        for verdict in [
            Verdict::Clean,
            Verdict::Infected { signature: "Win.Test.EICAR_HDB-1".to_string() },
            Verdict::Unscanned { reason: UnscannedReason::UnsupportedEncoding },
        ] {
            let cached = CachedVerdict::from_content_verdict(&verdict);
            assert_eq!(cached.map(CachedVerdict::into_verdict), Some(verdict));
        }
    }
}
