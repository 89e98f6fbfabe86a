//! Resource entries: the verdict for "this URL, as long as its validator still matches", so that
//! a request can be decided at its headers, before any body moves (DESIGN.md, cache by resource).
//!
//! The key is a SHA-256 of host and path ([`ResourceKey`]); the value, produced and read only by
//! [`encode_resource`] and [`decode_resource`], is versioned JSON like a content entry:
//! ```text
//! {"v":2,"validator":"etag:\"abc\"","sha256":"ba78...15ad","verdict":"clean","engine_version":"1.4.6","database_version":27000,"signature_epoch":0,"scanned_at_unix_secs":1767225600}
//! ```
//! `sha256` is the [`ContentKey`] of the body that was scanned (64 lowercase hex digits);
//! `signature` follows `verdict` for infected entries, as in content entries. The same strictness
//! applies: another `v`, an unknown field or a contradiction is a [`DecodeError`], i.e. a miss.
//! v1 (without `signature_epoch`) is still read, as epoch 0. A resource entry is only ever
//! `clean` or `infected`: an `unscanned` one is invalid.

use super::entry::{
    check_version, verdict_from_wire, verdict_to_wire, CacheEntry, ContentKey, DecodeError, WireVerdict,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// The version written into every encoded resource entry (`"v": 2`; `"v": 1` is still read).
pub const RESOURCE_FORMAT_VERSION: u64 = 2;

/// The key of a resource: SHA-256 of `host + "\n" + path_and_query`, the host in ASCII lower case
/// (host names are case-insensitive; the path is not). The validator is not part of the key: it
/// is stored in the entry and compared by the caller, so that a changed object replaces the
/// stale entry instead of piling up beside it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResourceKey([u8; 32]);

impl ResourceKey {
    /// The key of `path_and_query` (e.g. `/pool/main/x.deb?arch=amd64`) on `host` (e.g.
    /// `deb.example.org` or `deb.example.org:8443`, exactly as the caller's route knows it).
    pub fn new(host: &str, path_and_query: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(host.to_ascii_lowercase().as_bytes());
        hasher.update(b"\n");
        hasher.update(path_and_query.as_bytes());
        ResourceKey(hasher.finalize().into())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest as 64 lowercase hex digits, as used in Redis keys and logs.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResourceKey({})", self.hex())
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// What is known about a resource: which version of it was scanned (`validator`), the content
/// that version had, and the verdict on that content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceEntry {
    /// An opaque string built by the caller from the response's validators, e.g.
    /// `etag:"abc"`, `lm:Tue, 01 Jul 2025 00:00:00 GMT;len:1234` or `immutable`. The cache only
    /// stores it; the caller decides whether a request may be answered with it.
    pub validator: String,
    /// The content key of the body that was scanned.
    pub content: ContentKey,
    /// The verdict on that body, with the engine and database that produced it.
    pub entry: CacheEntry,
}

/// Format v2 as written. Field order is the byte order of the encoding.
#[derive(Serialize)]
struct ResourceV2Out<'a> {
    v: u64,
    validator: &'a str,
    sha256: String,
    verdict: WireVerdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<&'a str>,
    engine_version: &'a str,
    database_version: Option<u64>,
    signature_epoch: u64,
    scanned_at_unix_secs: u64,
}

/// Format v2 as read: strict, so that a field this build does not understand is a miss.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceV2In {
    #[allow(dead_code)] // checked by `check_version` before this struct is parsed
    v: u64,
    validator: String,
    sha256: String,
    verdict: WireVerdict,
    #[serde(default)]
    signature: Option<String>,
    engine_version: String,
    database_version: Option<u64>,
    signature_epoch: u64,
    scanned_at_unix_secs: u64,
}

/// Format v1 as read: v2 without `signature_epoch`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceV1In {
    #[allow(dead_code)] // checked by `check_version` before this struct is parsed
    v: u64,
    validator: String,
    sha256: String,
    verdict: WireVerdict,
    #[serde(default)]
    signature: Option<String>,
    engine_version: String,
    database_version: Option<u64>,
    scanned_at_unix_secs: u64,
}

/// Encodes `resource` as the current format (see the module documentation for an example).
/// An `Unscanned` verdict is encoded too, but [`decode_resource`] rejects it: callers never store
/// one (`VerdictCache::put_resource` drops it).
pub fn encode_resource(resource: &ResourceEntry) -> Vec<u8> {
    let (verdict, signature, _reason) = verdict_to_wire(&resource.entry.verdict);
    let wire = ResourceV2Out {
        v: RESOURCE_FORMAT_VERSION,
        validator: &resource.validator,
        sha256: resource.content.hex(),
        verdict,
        signature,
        engine_version: &resource.entry.engine_version,
        database_version: resource.entry.database_version,
        signature_epoch: resource.entry.signature_epoch,
        scanned_at_unix_secs: resource.entry.scanned_at_unix_secs,
    };
    // As for content entries: cannot fail, and an empty value would decode as a miss.
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// Decodes a value written by [`encode_resource`] (v2) or by an older clamgate (v1, read as
/// signature epoch 0). Any other version, an unknown or missing field, a `sha256` that is not 64
/// lowercase hex digits, a self-contradicting verdict or an `unscanned` one is an error.
pub fn decode_resource(bytes: &[u8]) -> Result<ResourceEntry, DecodeError> {
    let wire: ResourceV2In = match check_version(bytes, &[1, RESOURCE_FORMAT_VERSION])? {
        1 => serde_json::from_slice::<ResourceV1In>(bytes)?.into(),
        _ => serde_json::from_slice(bytes)?,
    };
    let content = ContentKey::from_hex(&wire.sha256)
        .ok_or(DecodeError::Invalid("sha256 is not 64 lowercase hex digits"))?;
    if wire.verdict == WireVerdict::Unscanned {
        return Err(DecodeError::Invalid("a resource entry is never unscanned"));
    }
    let verdict = verdict_from_wire(wire.verdict, wire.signature, None)?;
    Ok(ResourceEntry {
        validator: wire.validator,
        content,
        entry: CacheEntry {
            verdict,
            engine_version: wire.engine_version,
            database_version: wire.database_version,
            signature_epoch: wire.signature_epoch,
            scanned_at_unix_secs: wire.scanned_at_unix_secs,
        },
    })
}

impl From<ResourceV1In> for ResourceV2In {
    /// A v1 entry predates signature epochs: epoch 0.
    fn from(v1: ResourceV1In) -> Self {
        ResourceV2In {
            v: v1.v,
            validator: v1.validator,
            sha256: v1.sha256,
            verdict: v1.verdict,
            signature: v1.signature,
            engine_version: v1.engine_version,
            database_version: v1.database_version,
            signature_epoch: 0,
            scanned_at_unix_secs: v1.scanned_at_unix_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CachedVerdict;

    const CLEAN_V1: &[u8] = br#"{"v":1,"validator":"etag:\"abc\"","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","verdict":"clean","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":1767225600}"#;
    const INFECTED_V1: &[u8] = br#"{"v":1,"validator":"immutable","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","verdict":"infected","signature":"Eicar-Test-Signature","engine_version":"1.4.6","database_version":null,"scanned_at_unix_secs":1767225600}"#;
    const CLEAN_V2: &[u8] = br#"{"v":2,"validator":"etag:\"abc\"","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","verdict":"clean","engine_version":"1.4.6","database_version":27000,"signature_epoch":0,"scanned_at_unix_secs":1767225600}"#;
    const INFECTED_V2: &[u8] = br#"{"v":2,"validator":"immutable","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","verdict":"infected","signature":"Eicar-Test-Signature","engine_version":"1.4.6","database_version":null,"signature_epoch":0,"scanned_at_unix_secs":1767225600}"#;

    fn clean() -> ResourceEntry {
        ResourceEntry {
            validator: "etag:\"abc\"".to_string(),
            content: ContentKey::of(b"abc"),
            entry: CacheEntry {
                verdict: CachedVerdict::Clean,
                engine_version: "1.4.6".to_string(),
                database_version: Some(27000),
                signature_epoch: 0,
                scanned_at_unix_secs: 1_767_225_600,
            },
        }
    }

    fn infected() -> ResourceEntry {
        let base = clean();
        ResourceEntry {
            validator: "immutable".to_string(),
            entry: CacheEntry {
                verdict: CachedVerdict::Infected { signature: "Eicar-Test-Signature".to_string() },
                database_version: None,
                ..base.entry
            },
            ..base
        }
    }

    #[test]
    fn key_is_sha256_of_host_newline_path() {
        // printf 'example.org\n/a?b=1' | sha256sum
        let key = ResourceKey::new("example.org", "/a?b=1");
        assert_eq!(key.hex(), "99f102d50edb1f4627ce22f2458c2c90678fa1ef34451266400d99bb79c6ac0f");
        assert_eq!(key.to_string(), key.hex());
        assert_eq!(hex::encode(key.as_bytes()), key.hex());
    }

    #[test]
    fn host_case_does_not_matter_and_path_case_does() {
        let key = ResourceKey::new("Example.ORG", "/a?b=1");
        assert_eq!(key, ResourceKey::new("example.org", "/a?b=1"));
        assert_ne!(key, ResourceKey::new("example.org", "/A?b=1"));
        assert_ne!(key, ResourceKey::new("example.org", "/a?b=2"));
        assert_ne!(key, ResourceKey::new("example.org:8443", "/a?b=1"));
        // The separator keeps host and path apart: "a" + "b/c" is not "ab" + "/c".
        assert_ne!(ResourceKey::new("a", "b/c"), ResourceKey::new("ab", "/c"));
    }

    #[test]
    fn encodes_v2_bytes() {
        assert_eq!(encode_resource(&clean()), CLEAN_V2);
        assert_eq!(encode_resource(&infected()), INFECTED_V2);
    }

    #[test]
    fn decodes_v2_bytes_and_v1_bytes_as_signature_epoch_0() {
        assert_eq!(decode_resource(CLEAN_V2).ok(), Some(clean()));
        assert_eq!(decode_resource(INFECTED_V2).ok(), Some(infected()));
        let epoch_9 = ResourceEntry { entry: CacheEntry { signature_epoch: 9, ..clean().entry }, ..clean() };
        assert_eq!(decode_resource(&encode_resource(&epoch_9)).ok(), Some(epoch_9));
        assert_eq!(decode_resource(CLEAN_V1).ok(), Some(clean()));
        assert_eq!(decode_resource(INFECTED_V1).ok(), Some(infected()));
    }

    #[test]
    fn an_unscanned_resource_entry_is_invalid() {
        let unscanned = br#"{"v":2,"validator":"immutable","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","verdict":"unscanned","engine_version":"1.4.6","database_version":1,"signature_epoch":0,"scanned_at_unix_secs":1}"#;
        assert!(matches!(decode_resource(unscanned), Err(DecodeError::Invalid(_))));
        let entry = ResourceEntry {
            entry: CacheEntry {
                verdict: CachedVerdict::Unscanned { reason: crate::verdict::UnscannedReason::TooLarge },
                ..clean().entry
            },
            ..clean()
        };
        assert!(matches!(decode_resource(&encode_resource(&entry)), Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn round_trips() {
        let odd_validator =
            ResourceEntry { validator: "lm:Tue, 01 Jul 2025;len:12 \u{e9}\"\\".to_string(), ..clean() };
        for entry in [clean(), infected(), odd_validator] {
            assert_eq!(decode_resource(&encode_resource(&entry)).ok(), Some(entry));
        }
    }

    #[test]
    fn rejects_other_versions_and_content_entries() {
        let v3 = br#"{"v":3,"validator":"immutable"}"#;
        assert!(matches!(decode_resource(v3), Err(DecodeError::UnsupportedVersion(3))));
        // A content entry is not a resource entry.
        let content = br#"{"v":1,"verdict":"clean","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":1767225600}"#;
        assert!(matches!(decode_resource(content), Err(DecodeError::Malformed(_))));
        let content = br#"{"v":2,"verdict":"clean","engine_version":"1.4.6","database_version":27000,"signature_epoch":0,"scanned_at_unix_secs":1767225600}"#;
        assert!(matches!(decode_resource(content), Err(DecodeError::Malformed(_))));
        for bytes in [&b""[..], b"garbage", b"{}", b"[1]"] {
            assert!(matches!(decode_resource(bytes), Err(DecodeError::Malformed(_))));
        }
    }

    #[test]
    fn rejects_unknown_fields() {
        let extra = br#"{"v":1,"validator":"immutable","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","verdict":"clean","engine_version":"1.4.6","database_version":1,"scanned_at_unix_secs":1,"etag":"x"}"#;
        assert!(matches!(decode_resource(extra), Err(DecodeError::Malformed(_))));
        let extra = br#"{"v":2,"validator":"immutable","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","verdict":"clean","engine_version":"1.4.6","database_version":1,"signature_epoch":0,"scanned_at_unix_secs":1,"etag":"x"}"#;
        assert!(matches!(decode_resource(extra), Err(DecodeError::Malformed(_))));
        // v1 had no epoch.
        let v1_epoch = br#"{"v":1,"validator":"immutable","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","verdict":"clean","engine_version":"1.4.6","database_version":1,"signature_epoch":0,"scanned_at_unix_secs":1}"#;
        assert!(matches!(decode_resource(v1_epoch), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn rejects_bad_digests_and_contradictions() {
        for sha in ["BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD", "ba78", ""] {
            let bytes = format!(
                r#"{{"v":1,"validator":"immutable","sha256":"{sha}","verdict":"clean","engine_version":"1.4.6","database_version":1,"scanned_at_unix_secs":1}}"#
            );
            assert!(matches!(decode_resource(bytes.as_bytes()), Err(DecodeError::Invalid(_))), "{sha:?}");
        }
        let infected_without = br#"{"v":1,"validator":"immutable","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","verdict":"infected","engine_version":"1.4.6","database_version":1,"scanned_at_unix_secs":1}"#;
        assert!(matches!(decode_resource(infected_without), Err(DecodeError::Invalid(_))));
        let clean_with = br#"{"v":1,"validator":"immutable","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","verdict":"clean","signature":"X","engine_version":"1.4.6","database_version":1,"scanned_at_unix_secs":1}"#;
        assert!(matches!(decode_resource(clean_with), Err(DecodeError::Invalid(_))));
    }
}
