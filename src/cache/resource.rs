//! Resource entries: the verdict for "this URL, as long as its validator still matches", so that
//! a request can be decided at its headers, before any body moves (DESIGN.md, cache by resource).
//!
//! Everything that decides which requests share a resource entry is here, in one place:
//! - the identity of the resource ([`ResourceId`]: scheme, host, port, path and query) and its
//!   key ([`ResourceKey`], a SHA-256 of that identity);
//! - the request headers the response varies on ([`VaryRecord`]): the entry records the names
//!   the response's `Vary` gave and a digest of the request's values for them, and a later request
//!   with other values does not match. A response with `Vary: *` is never stored ([`vary_names`]).
//!
//! The value, produced and read only by [`encode_resource`] and [`decode_resource`], is versioned
//! JSON like a content entry:
//! ```text
//! {"v":2,"validator":"etag:\"abc\"","vary":["accept-encoding"],"vary_sha256":"5e2b...","sha256":"ba78...15ad","verdict":"clean","engine_version":"1.4.6","database_version":27000,"signature_epoch":0,"scanned_at_unix_secs":1767225600}
//! ```
//! `sha256` is the [`ContentKey`] of the body that was scanned (64 lowercase hex digits);
//! `signature` follows `verdict` for infected entries, as in content entries. The same strictness
//! applies: another `v`, an unknown field or a contradiction is a [`DecodeError`], i.e. a miss.
//! Version 1 (no scheme, port, Vary or signature epoch) is never read: its entries are misses,
//! and live under keys this version does not compute anyway. A resource entry is only ever `clean`
//! or `infected`: an `unscanned` one is invalid.

use super::entry::{
    check_version, verdict_from_wire, verdict_to_wire, CacheEntry, ContentKey, DecodeError, WireVerdict,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// The version written into every encoded resource entry (`"v": 2`; 1 had no Vary record).
pub const RESOURCE_FORMAT_VERSION: u64 = 2;

/// What the key of a resource is computed from, so that keys of two key schemes never meet.
const KEY_SCHEME: &[u8] = b"clamgate-resource-v2";

/// A URL as the client asked for it: the identity of a resource. Two requests share a resource
/// entry only if scheme, host, port and path with query are all equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceId {
    scheme: String,
    host: String,
    port: u16,
    path_and_query: String,
}

impl ResourceId {
    /// The identity of `path_and_query` on `host`:`port` over `scheme`, all given apart. Scheme and
    /// host are compared in ASCII lower case (they are case-insensitive; the path is not).
    pub fn new(scheme: &str, host: &str, port: u16, path_and_query: &str) -> ResourceId {
        ResourceId {
            scheme: scheme.to_ascii_lowercase(),
            host: host.to_ascii_lowercase(),
            port,
            path_and_query: path_and_query.to_string(),
        }
    }

    /// The identity of a request from its `:scheme`, `:authority` and `:path`. The port is the
    /// one in the authority, else the scheme's default (80 for `http`, 443 for `https`), so
    /// `h` and `h:80` are one resource over `http`, and `h:8080` another.
    ///
    /// None (no resource key: the body is scanned as usual) for a scheme other than `http` or
    /// `https`, an empty host, user info, or a port that is not a number from 1 to 65535.
    pub fn from_request(scheme: &str, authority: &str, path_and_query: &str) -> Option<ResourceId> {
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        if authority.contains('@') {
            return None;
        }
        let (host, port) = split_authority(authority)?;
        if host.is_empty() {
            return None;
        }
        let port = match port {
            None | Some("") => default_port,
            Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => {
                digits.parse::<u16>().ok().filter(|port| *port != 0)?
            }
            Some(_) => return None,
        };
        Some(ResourceId::new(&scheme, host, port, path_and_query))
    }

    /// `http` or `https` (lower case).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The host, lower case, without the port (`[…]` kept for an IPv6 literal).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, explicit or the scheme's default.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path with its query (a different query may be a different object).
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    /// The key of this resource: see [`ResourceKey`].
    pub fn key(&self) -> ResourceKey {
        let mut hasher = Sha256::new();
        for part in
            [KEY_SCHEME, self.scheme.as_bytes(), self.host.as_bytes(), self.port.to_string().as_bytes()]
        {
            hasher.update(part);
            hasher.update(b"\n");
        }
        hasher.update(self.path_and_query.as_bytes());
        ResourceKey(hasher.finalize().into())
    }
}

/// `host` and the text after its `:` (None: no port given). An IPv6 literal keeps its brackets.
fn split_authority(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        return match rest {
            "" => Some((host, None)),
            _ => Some((host, Some(rest.strip_prefix(':')?))),
        };
    }
    match authority.split_once(':') {
        Some((host, port)) if !port.contains(':') => Some((host, Some(port))),
        Some(_) => None,
        None => Some((authority, None)),
    }
}

/// The key of a resource: SHA-256 of `clamgate-resource-v2`, scheme, host, port (decimal), each
/// followed by `\n`, then the path and query ([`ResourceId::key`] computes it). The validator is
/// not part of the key: it is stored in the entry and compared by the caller, so that a changed
/// object replaces the stale entry instead of piling up beside it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResourceKey([u8; 32]);

impl ResourceKey {
    /// The key of `resource` (the same as [`ResourceId::key`]).
    pub fn of(resource: &ResourceId) -> Self {
        resource.key()
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

/// The request header names a response varies on, from its `Vary` header values: lower case,
/// sorted, without duplicates (empty: no `Vary`). None for `Vary: *` (the response varies on
/// things no header says): such a response is never stored by resource.
pub fn vary_names<S: AsRef<str>>(values: &[S]) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for name in values.iter().flat_map(|value| value.as_ref().split(',')) {
        let name = name.trim().to_ascii_lowercase();
        if name == "*" {
            return None;
        }
        if !name.is_empty() {
            names.push(name);
        }
    }
    names.sort();
    names.dedup();
    Some(names)
}

/// Which request headers an entry was stored under: the response's `Vary` names and a SHA-256
/// of the request's values for them. A request matches only if its values are the same, byte for
/// byte (an absent header differs from an empty one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaryRecord {
    names: Vec<String>,
    values_sha256: [u8; 32],
}

impl VaryRecord {
    /// The record of `request` (header names in lower case, values in the order received) for
    /// the Vary `names` given by [`vary_names`].
    pub fn of(names: Vec<String>, request: &[(String, String)]) -> VaryRecord {
        let values_sha256 = vary_digest(&names, request);
        VaryRecord { names, values_sha256 }
    }

    /// The record of a response without `Vary`: every request matches it.
    pub fn none() -> VaryRecord {
        VaryRecord::of(Vec::new(), &[])
    }

    /// The Vary names, lower case and sorted.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether `request` has the values this entry was stored under.
    pub fn matches(&self, request: &[(String, String)]) -> bool {
        vary_digest(&self.names, request) == self.values_sha256
    }
}

impl Default for VaryRecord {
    fn default() -> Self {
        VaryRecord::none()
    }
}

/// SHA-256 over each name in order: its length and bytes, then `0` for an absent header or `1`,
/// the length and the bytes of its values joined with `, ` (as a repeated header combines).
fn vary_digest(names: &[String], request: &[(String, String)]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for name in names {
        hasher.update((name.len() as u64).to_be_bytes());
        hasher.update(name.as_bytes());
        let values: Vec<&str> =
            request.iter().filter(|(key, _)| key == name).map(|(_, value)| value.as_str()).collect();
        if values.is_empty() {
            hasher.update([0]);
        } else {
            let joined = values.join(", ");
            hasher.update([1]);
            hasher.update((joined.len() as u64).to_be_bytes());
            hasher.update(joined.as_bytes());
        }
    }
    hasher.finalize().into()
}

/// What is known about a resource: which version of it was scanned (`validator`) under which
/// request headers (`vary`), the content that version had, and the verdict on that content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceEntry {
    /// An opaque string built by the caller from the response's validators, e.g.
    /// `etag:"abc"`, `lm:Tue, 01 Jul 2025 00:00:00 GMT;len:1234` or `immutable`. The cache only
    /// stores it; the caller decides whether a request may be answered with it.
    pub validator: String,
    /// The request headers the response varied on, and their values when it was stored.
    pub vary: VaryRecord,
    /// The content key of the body that was scanned.
    pub content: ContentKey,
    /// The verdict on that body, with the engine and database that produced it.
    pub entry: CacheEntry,
}

/// The format as written. Field order is the byte order of the encoding.
#[derive(Serialize)]
struct ResourceV2Out<'a> {
    v: u64,
    validator: &'a str,
    vary: &'a [String],
    vary_sha256: String,
    sha256: String,
    verdict: WireVerdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<&'a str>,
    engine_version: &'a str,
    database_version: Option<u64>,
    signature_epoch: u64,
    scanned_at_unix_secs: u64,
}

/// The format as read: strict, so that a field this build does not understand is a miss.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceV2In {
    #[allow(dead_code)] // checked by `check_version` before this struct is parsed
    v: u64,
    validator: String,
    vary: Vec<String>,
    vary_sha256: String,
    sha256: String,
    verdict: WireVerdict,
    #[serde(default)]
    signature: Option<String>,
    engine_version: String,
    database_version: Option<u64>,
    signature_epoch: u64,
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
        vary: &resource.vary.names,
        vary_sha256: hex::encode(resource.vary.values_sha256),
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

/// Decodes a value written by [`encode_resource`]. Any other version, an unknown or missing field,
/// a digest that is not 64 lowercase hex digits, Vary names that are not as [`vary_names`] makes
/// them, a self-contradicting verdict or an `unscanned` one is an error.
pub fn decode_resource(bytes: &[u8]) -> Result<ResourceEntry, DecodeError> {
    check_version(bytes, &[RESOURCE_FORMAT_VERSION])?;
    let wire: ResourceV2In = serde_json::from_slice(bytes)?;
    let content = ContentKey::from_hex(&wire.sha256)
        .ok_or(DecodeError::Invalid("sha256 is not 64 lowercase hex digits"))?;
    let values_sha256 = ContentKey::from_hex(&wire.vary_sha256)
        .ok_or(DecodeError::Invalid("vary_sha256 is not 64 lowercase hex digits"))?;
    if vary_names(&wire.vary).as_ref() != Some(&wire.vary) {
        return Err(DecodeError::Invalid("vary is not a sorted list of distinct lower-case names"));
    }
    if wire.verdict == WireVerdict::Unscanned {
        return Err(DecodeError::Invalid("a resource entry is never unscanned"));
    }
    let verdict = verdict_from_wire(wire.verdict, wire.signature, None)?;
    Ok(ResourceEntry {
        validator: wire.validator,
        vary: VaryRecord { names: wire.vary, values_sha256: *values_sha256.as_bytes() },
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

/// The validator of a response without a real one, under an `immutable` policy: the URL alone
/// names the bytes.
pub const IMMUTABLE_VALIDATOR: &str = "immutable";

/// The validator that ties a cached verdict to one version of a resource, from a response's
/// headers (`header` finds one by lower-case name): a strong ETag (`etag:"abc"`), else
/// Last-Modified with the object's length (`lm:DATE;len:N`); else, only for an immutable upstream,
/// the URL alone ([`IMMUTABLE_VALIDATOR`]). None: the response cannot be stored by resource.
/// Envoy's responses and clamgate's own downloads go through this one function, so both front
/// doors write the same entries.
pub fn validator_of(header: impl Fn(&str) -> Option<String>, immutable: bool) -> Option<String> {
    if let Some(etag) = header("etag") {
        // A weak ETag promises equivalent content, not identical bytes.
        if !etag.starts_with("W/") && !etag.is_empty() {
            return Some(format!("etag:{etag}"));
        }
    }
    let last_modified = header("last-modified");
    // A 206 carries the length of its part; the object's is after the `/` of Content-Range.
    let length = header("content-range")
        .and_then(|range| range.rsplit_once('/').map(|(_, total)| total.trim().to_string()))
        .filter(|total| total != "*")
        .or_else(|| header("content-length"));
    if let (Some(last_modified), Some(length)) = (last_modified, length) {
        return Some(format!("lm:{last_modified};len:{length}"));
    }
    immutable.then(|| IMMUTABLE_VALIDATOR.to_string())
}

/// The strong ETag a validator from [`validator_of`] holds (`"abc"` of `etag:"abc"`), if any:
/// what nginx sends upstream as `If-Match`.
pub fn strong_etag(validator: &str) -> Option<&str> {
    validator.strip_prefix("etag:")
}

/// An object named by URL, and the request that asked for it: the resource key's input.
#[derive(Clone, PartialEq, Eq)]
pub struct Resource {
    /// Scheme, host, port and path with query (`:scheme`, `:authority`, `:path`).
    pub id: ResourceId,
    /// The request's headers (names in lower case, pseudo-headers left out), for the response's
    /// `Vary` (see [`crate::cache::VaryRecord`]).
    pub request_headers: Vec<(String, String)>,
}

/// Header values may be secrets (`authorization`, `cookie`): only their names are shown.
impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.request_headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Resource").field("id", &self.id).field("request_header_names", &names).finish()
    }
}

/// One version of a resource, as a response names it: the object, its validator and its `Vary`
/// names. A verdict on the response's body is stored under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceVersion {
    pub resource: Resource,
    pub validator: String,
    /// The response's `Vary` names (lower case, sorted).
    pub vary: Vec<String>,
}

/// A resource entry found for this stream's request: the response is compared with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownResource {
    /// The validator the entry was stored under.
    pub validator: String,
    /// The `Vary` names the stored response had (lower case, sorted).
    pub vary: Vec<String>,
    /// The SHA-256 of the body as it was received then (what a verified hit is compared with).
    pub content: ContentKey,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CachedVerdict;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const CLEAN_V2: &[u8] = br#"{"v":2,"validator":"etag:\"abc\"","vary":[],"vary_sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","verdict":"clean","engine_version":"1.4.6","database_version":27000,"signature_epoch":0,"scanned_at_unix_secs":1767225600}"#;
    const INFECTED_V2: &[u8] = br#"{"v":2,"validator":"immutable","vary":["accept-encoding"],"vary_sha256":"c5497af5e816d1c7e0d4f4a713b374da9436163f06bb8ad8ebb70bd5c6a683c8","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","verdict":"infected","signature":"Eicar-Test-Signature","engine_version":"1.4.6","database_version":null,"signature_epoch":0,"scanned_at_unix_secs":1767225600}"#;

    fn request(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
    }

    fn clean() -> ResourceEntry {
        ResourceEntry {
            validator: "etag:\"abc\"".to_string(),
            vary: VaryRecord::none(),
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
            vary: VaryRecord::of(vec!["accept-encoding".into()], &request(&[("accept-encoding", "gzip")])),
            entry: CacheEntry {
                verdict: CachedVerdict::Infected { signature: "Eicar-Test-Signature".to_string() },
                database_version: None,
                ..base.entry
            },
            ..base
        }
    }

    fn id(scheme: &str, authority: &str, path: &str) -> ResourceId {
        ResourceId::from_request(scheme, authority, path).expect("a resource identity")
    }

    #[test]
    fn key_is_sha256_of_scheme_host_port_and_path() {
        // printf 'clamgate-resource-v2\nhttps\nexample.org\n443\n/a?b=1' | sha256sum
        let key = id("https", "example.org", "/a?b=1").key();
        assert_eq!(key.hex(), "83da673cd5487561aa378b6b0436afb9c6a8848e3ee630974720df90c671d334");
        assert_eq!(ResourceKey::of(&id("https", "example.org", "/a?b=1")), key);
        assert_eq!(key.to_string(), key.hex());
        assert_eq!(hex::encode(key.as_bytes()), key.hex());
    }

    #[test]
    fn scheme_and_port_are_part_of_the_identity() {
        let https = id("https", "example.org", "/a").key();
        assert_ne!(id("http", "example.org", "/a").key(), https, "http and https do not share");
        assert_ne!(id("https", "example.org:8443", "/a").key(), https, "another port is another resource");
        assert_ne!(id("http", "example.org:8080", "/a").key(), id("http", "example.org", "/a").key());
        // The default port, spelt out or not, is the same resource.
        assert_eq!(id("https", "example.org:443", "/a").key(), https);
        assert_eq!(id("HTTP", "Example.ORG:80", "/a").key(), id("http", "example.org", "/a").key());
        // https on port 80 is not http on port 80.
        assert_ne!(id("https", "example.org:80", "/a").key(), id("http", "example.org", "/a").key());
        let v6 = id("http", "[::1]:8080", "/a");
        assert_eq!((v6.host(), v6.port()), ("[::1]", 8080));
        assert_eq!(id("https", "[::1]", "/a").port(), 443);
    }

    #[test]
    fn host_case_does_not_matter_and_path_case_does() {
        let key = id("http", "Example.ORG", "/a?b=1").key();
        assert_eq!(key, id("http", "example.org", "/a?b=1").key());
        assert_ne!(key, id("http", "example.org", "/A?b=1").key());
        assert_ne!(key, id("http", "example.org", "/a?b=2").key());
        // The separator keeps host and path apart: "a" + "b/c" is not "ab" + "/c".
        assert_ne!(
            ResourceId::new("http", "a", 80, "b/c").key(),
            ResourceId::new("http", "ab", 80, "/c").key()
        );
    }

    #[test]
    fn requests_without_a_sound_identity_get_no_key() {
        for (scheme, authority) in [
            ("ftp", "example.org"),
            ("", "example.org"),
            ("http", ""),
            ("http", ":80"),
            ("http", "user@example.org"),
            ("http", "example.org:0"),
            ("http", "example.org:65536"),
            ("http", "example.org:8o"),
            ("http", "example.org:+80"),
            ("http", "a:1:2"),
            ("http", "[::1"),
            ("http", "[::1]x"),
        ] {
            assert_eq!(ResourceId::from_request(scheme, authority, "/a"), None, "{scheme} {authority}");
        }
    }

    #[test]
    fn vary_names_are_sorted_lower_case_and_star_is_none() {
        assert_eq!(vary_names::<&str>(&[]), Some(vec![]));
        assert_eq!(
            vary_names(&["Accept-Encoding, accept-language", " ACCEPT-ENCODING ,"]),
            Some(vec!["accept-encoding".to_string(), "accept-language".to_string()])
        );
        assert_eq!(vary_names(&["accept-encoding", "*"]), None);
        assert_eq!(vary_names(&["Origin, *"]), None);
    }

    #[test]
    fn a_vary_record_matches_only_the_same_request_values() {
        let names = vec!["accept-encoding".to_string()];
        let gzip =
            VaryRecord::of(names.clone(), &request(&[("accept-encoding", "gzip"), ("user-agent", "a")]));
        assert!(gzip.matches(&request(&[("user-agent", "b"), ("accept-encoding", "gzip")])));
        assert!(!gzip.matches(&request(&[("accept-encoding", "identity")])));
        assert!(!gzip.matches(&request(&[])), "absent is not gzip");
        let absent = VaryRecord::of(names.clone(), &[]);
        assert!(!absent.matches(&request(&[("accept-encoding", "")])), "absent is not empty");
        // A repeated header is its values joined, as HTTP combines them.
        let two = VaryRecord::of(names, &request(&[("accept-encoding", "gzip"), ("accept-encoding", "br")]));
        assert!(two.matches(&request(&[("accept-encoding", "gzip, br")])));
        // No Vary: every request matches.
        assert!(VaryRecord::none().matches(&request(&[("accept-encoding", "br")])));
        assert_eq!(hex::encode(VaryRecord::none().values_sha256), EMPTY_SHA256);
    }

    #[test]
    fn encodes_v2_bytes() {
        assert_eq!(String::from_utf8_lossy(&encode_resource(&clean())), String::from_utf8_lossy(CLEAN_V2));
        assert_eq!(
            String::from_utf8_lossy(&encode_resource(&infected())),
            String::from_utf8_lossy(INFECTED_V2)
        );
    }

    #[test]
    fn decodes_v2_bytes() {
        assert_eq!(decode_resource(CLEAN_V2).ok(), Some(clean()));
        assert_eq!(decode_resource(INFECTED_V2).ok(), Some(infected()));
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
        // Version 1 had no scheme, port or Vary: never trusted.
        let v1 = br#"{"v":1,"validator":"etag:\"abc\"","sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","verdict":"clean","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":1767225600}"#;
        assert!(matches!(decode_resource(v1), Err(DecodeError::UnsupportedVersion(1))));
        let v3 = br#"{"v":3,"validator":"immutable"}"#;
        assert!(matches!(decode_resource(v3), Err(DecodeError::UnsupportedVersion(3))));
        // A content entry is not a resource entry.
        let content = br#"{"v":2,"verdict":"clean","engine_version":"1.4.6","database_version":27000,"scanned_at_unix_secs":1767225600}"#;
        assert!(matches!(decode_resource(content), Err(DecodeError::Malformed(_))));
        for bytes in [&b""[..], b"garbage", b"{}", b"[2]"] {
            assert!(matches!(decode_resource(bytes), Err(DecodeError::Malformed(_))));
        }
    }

    #[test]
    fn rejects_unknown_fields() {
        let extra = String::from_utf8_lossy(CLEAN_V2).replace(r#""v":2,"#, r#""v":2,"etag":"x","#);
        assert!(matches!(decode_resource(extra.as_bytes()), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn rejects_bad_digests_bad_vary_and_contradictions() {
        let clean = String::from_utf8_lossy(CLEAN_V2).into_owned();
        for sha in ["BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD", "ba78", ""] {
            let bytes =
                clean.replace("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", sha);
            assert!(matches!(decode_resource(bytes.as_bytes()), Err(DecodeError::Invalid(_))), "{sha:?}");
            let bytes = clean.replace(EMPTY_SHA256, sha);
            assert!(matches!(decode_resource(bytes.as_bytes()), Err(DecodeError::Invalid(_))), "{sha:?}");
        }
        for vary in [r#"["b","a"]"#, r#"["A"]"#, r#"["a","a"]"#, r#"["*"]"#, r#"[""]"#] {
            let bytes = clean.replace(r#""vary":[]"#, &format!(r#""vary":{vary}"#));
            assert!(matches!(decode_resource(bytes.as_bytes()), Err(DecodeError::Invalid(_))), "{vary}");
        }
        let infected_without = clean.replace(r#""verdict":"clean""#, r#""verdict":"infected""#);
        assert!(matches!(decode_resource(infected_without.as_bytes()), Err(DecodeError::Invalid(_))));
        let clean_with = clean.replace(r#""verdict":"clean""#, r#""verdict":"clean","signature":"X""#);
        assert!(matches!(decode_resource(clean_with.as_bytes()), Err(DecodeError::Invalid(_))));
    }
}
