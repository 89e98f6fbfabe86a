//! Authenticated Redis values: an HMAC-SHA256 tag over each value and the key it is stored under,
//! so that someone who can write to Redis (or sits on a plaintext link to it) cannot plant a
//! verdict, nor copy a genuine `Clean` value to another object's key.
//!
//! A sealed value is the entry with a prefix, readable in `redis-cli`:
//! ```text
//! hmac-sha256:<64 hex digits of the tag>:{"v":2,"verdict":"clean",...}
//! ```
//! The tag is `HMAC-SHA256(key, "clamgate cache value v1\n" || redis_key || "\n" || entry)`, where
//! `redis_key` is the full Redis key (`clamgate:v1:content:…`). A clamgate older than this prefix
//! reads a sealed value as malformed, i.e. a miss.
//!
//! With keys ([`ValueKeys`], from `cache.hmac_key_file` and optionally
//! `cache.hmac_previous_key_file`), every value is written sealed with the current key, and a value
//! is read only if its tag verifies under the current or the previous key; a value without a tag or
//! with a wrong one is [`Rejection`]. Without keys, values are written bare and read bare or
//! sealed (the tag cannot be checked and is ignored), so that keys can be rolled out one instance
//! at a time. These are pure functions over bytes; the caller counts and logs rejections.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// The prefix of a sealed value, before the hex tag.
const PREFIX: &[u8] = b"hmac-sha256:";
/// Hex digits of a SHA-256 tag.
const TAG_HEX: usize = 64;
/// Domain separation: these tags authenticate nothing but cache values of this layout.
const CONTEXT: &[u8] = b"clamgate cache value v1\n";
/// The shortest key accepted: 256 bits, the size of the hash.
pub const MIN_KEY_BYTES: usize = 32;

/// One HMAC key, ready to use. `Debug` never shows it.
#[derive(Clone)]
pub struct ValueKey(Hmac<Sha256>);

impl ValueKey {
    /// A key from the bytes of a key file, leading and trailing ASCII whitespace removed (a
    /// trailing newline is common); `None` when fewer than [`MIN_KEY_BYTES`] remain.
    pub fn from_file_bytes(bytes: &[u8]) -> Option<ValueKey> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_KEY_BYTES {
            return None;
        }
        // HMAC takes keys of any length, so this does not fail.
        Hmac::<Sha256>::new_from_slice(trimmed).ok().map(ValueKey)
    }

    fn mac(&self, redis_key: &str, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(CONTEXT);
        mac.update(redis_key.as_bytes());
        mac.update(b"\n");
        mac.update(payload);
        mac
    }
}

impl fmt::Debug for ValueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ValueKey(***)")
    }
}

/// The keys of one instance: values are sealed with `current`; `previous` (during a rotation) is
/// accepted for reads only.
#[derive(Debug, Clone)]
pub struct ValueKeys {
    pub current: ValueKey,
    pub previous: Option<ValueKey>,
}

/// The key in the file at `path` (`cache.hmac_key_file`, `cache.hmac_previous_key_file`): its
/// bytes, trimmed of surrounding ASCII whitespace, at least [`MIN_KEY_BYTES`] of them. The error
/// says why not, without any of the file's contents.
pub fn read_key_file(path: &str) -> Result<ValueKey, String> {
    let bytes = std::fs::read(path).map_err(|err| format!("cannot read {path}: {err}"))?;
    ValueKey::from_file_bytes(&bytes).ok_or_else(|| {
        format!(
            "{path} holds fewer than {MIN_KEY_BYTES} bytes (besides surrounding whitespace); \
             make one with `head -c 32 /dev/urandom | base64 > {path}`"
        )
    })
}

/// The keys `cache.hmac_key_file` and `cache.hmac_previous_key_file` name: `Ok(None)` when
/// neither is set; every problem otherwise, as `key: message` lines.
pub fn keys_from_config(cfg: &crate::config::CacheConfig) -> Result<Option<ValueKeys>, Vec<String>> {
    let mut problems = Vec::new();
    let mut read = |name: &str, path: Option<&str>| {
        let path = path?;
        read_key_file(path).map_err(|message| problems.push(format!("cache.{name}: {message}"))).ok()
    };
    let current = read("hmac_key_file", cfg.hmac_key_file.as_deref());
    let previous = read("hmac_previous_key_file", cfg.hmac_previous_key_file.as_deref());
    if cfg.hmac_key_file.is_none() && cfg.hmac_previous_key_file.is_some() {
        problems.push(
            "cache.hmac_previous_key_file: set without cache.hmac_key_file; during a rotation the new \
             key goes in hmac_key_file and the old one here"
                .to_string(),
        );
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(current.map(|current| ValueKeys { current, previous }))
}

/// Why a value was refused: a bounded set, for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The value has no `hmac-sha256:` tag (written without a key, or forged).
    MissingTag,
    /// The tag does not verify under any configured key (forged, copied from another key, or
    /// written with a key no longer configured).
    BadTag,
}

impl Rejection {
    /// `missing_tag` or `bad_tag`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::MissingTag => "missing_tag",
            Rejection::BadTag => "bad_tag",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rejection::MissingTag => "the value carries no HMAC tag",
            Rejection::BadTag => "the value's HMAC tag does not verify",
        })
    }
}

/// The value to store under `redis_key`: `payload` sealed with the current key, or `payload`
/// itself without keys.
pub fn seal(keys: Option<&ValueKeys>, redis_key: &str, payload: Vec<u8>) -> Vec<u8> {
    let Some(keys) = keys else { return payload };
    let tag = keys.current.mac(redis_key, &payload).finalize().into_bytes();
    let mut value = Vec::with_capacity(PREFIX.len() + TAG_HEX + 1 + payload.len());
    value.extend_from_slice(PREFIX);
    value.extend_from_slice(hex::encode(tag).as_bytes());
    value.push(b':');
    value.extend_from_slice(&payload);
    value
}

/// The entry bytes of a value read from `redis_key`. With keys, only a value whose tag verifies
/// under the current or previous key (compared in constant time); without keys, the value with
/// any seal removed unchecked.
pub fn open<'v>(keys: Option<&ValueKeys>, redis_key: &str, value: &'v [u8]) -> Result<&'v [u8], Rejection> {
    let sealed = split(value);
    let Some(keys) = keys else {
        return Ok(sealed.map_or(value, |(_, payload)| payload));
    };
    let (tag, payload) = sealed.ok_or(Rejection::MissingTag)?;
    let mut raw = [0u8; TAG_HEX / 2];
    hex::decode_to_slice(tag, &mut raw).map_err(|_| Rejection::BadTag)?;
    let verifies = |key: &ValueKey| key.mac(redis_key, payload).verify_slice(&raw).is_ok();
    if verifies(&keys.current) || keys.previous.as_ref().is_some_and(verifies) {
        Ok(payload)
    } else {
        Err(Rejection::BadTag)
    }
}

/// `(hex tag, payload)` of a sealed value; `None` when the value does not start with the prefix.
/// A prefix followed by anything but 64 hex digits and `:` is a seal with a bad tag.
fn split(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = value.strip_prefix(PREFIX)?;
    match (rest.get(..TAG_HEX), rest.get(TAG_HEX)) {
        (Some(tag), Some(b':')) => Some((tag, &rest[TAG_HEX + 1..])),
        // Not a well-formed tag: hand back something that will not verify (nor parse as JSON).
        _ => Some((&rest[..0], rest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "clamgate:v1:content:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const PAYLOAD: &[u8] = br#"{"v":2,"verdict":"clean"}"#;

    fn key(byte: u8) -> ValueKey {
        ValueKey::from_file_bytes(&[byte; 32]).expect("a 32-byte key")
    }

    fn keys(current: u8, previous: Option<u8>) -> ValueKeys {
        ValueKeys { current: key(current), previous: previous.map(key) }
    }

    #[test]
    fn sealed_values_have_the_documented_layout() {
        let sealed = seal(Some(&keys(1, None)), KEY, PAYLOAD.to_vec());
        let text = String::from_utf8(sealed.clone()).expect("ASCII");
        assert!(text.starts_with("hmac-sha256:"), "{text}");
        assert!(text.ends_with(r#":{"v":2,"verdict":"clean"}"#), "{text}");
        // HMAC-SHA256 over the context, key and payload, as documented (checked against the
        // construction, not against itself: the tag is recomputed by hand here).
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[1u8; 32]).expect("key");
        mac.update(b"clamgate cache value v1\n");
        mac.update(KEY.as_bytes());
        mac.update(b"\n");
        mac.update(PAYLOAD);
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(&text[12..76], expected);
    }

    #[test]
    fn opens_what_it_sealed_with_the_current_or_previous_key() {
        let old = seal(Some(&keys(1, None)), KEY, PAYLOAD.to_vec());
        assert_eq!(open(Some(&keys(1, None)), KEY, &old), Ok(PAYLOAD));
        // Rotation: the new key is current, the old one still accepted for reads.
        assert_eq!(open(Some(&keys(2, Some(1))), KEY, &old), Ok(PAYLOAD));
        // Once the old key is dropped, its values are rejected.
        assert_eq!(open(Some(&keys(2, None)), KEY, &old), Err(Rejection::BadTag));
    }

    #[test]
    fn rejects_bare_forged_tampered_and_moved_values() {
        let keys = keys(1, None);
        assert_eq!(open(Some(&keys), KEY, PAYLOAD), Err(Rejection::MissingTag));
        let forged = seal(Some(&self::keys(0x99, None)), KEY, PAYLOAD.to_vec());
        assert_eq!(open(Some(&keys), KEY, &forged), Err(Rejection::BadTag));
        let mut tampered = seal(Some(&keys), KEY, PAYLOAD.to_vec());
        let last = tampered.len() - 2;
        tampered[last] ^= 1;
        assert_eq!(open(Some(&keys), KEY, &tampered), Err(Rejection::BadTag));
        // A genuine value copied under another key (a clean file's verdict onto EICAR's key).
        let genuine = seal(Some(&keys), KEY, PAYLOAD.to_vec());
        assert_eq!(open(Some(&keys), "clamgate:v1:content:00", &genuine), Err(Rejection::BadTag));
        for malformed in [&b"hmac-sha256:"[..], b"hmac-sha256:abc:{}", b"hmac-sha256:"] {
            assert_eq!(open(Some(&keys), KEY, malformed), Err(Rejection::BadTag));
        }
        let mut not_hex = seal(Some(&keys), KEY, PAYLOAD.to_vec());
        not_hex[12] = b'z';
        assert_eq!(open(Some(&keys), KEY, &not_hex), Err(Rejection::BadTag));
    }

    #[test]
    fn without_keys_values_are_bare_and_seals_are_ignored() {
        assert_eq!(seal(None, KEY, PAYLOAD.to_vec()), PAYLOAD);
        assert_eq!(open(None, KEY, PAYLOAD), Ok(PAYLOAD));
        let sealed = seal(Some(&keys(1, None)), KEY, PAYLOAD.to_vec());
        assert_eq!(open(None, KEY, &sealed), Ok(PAYLOAD));
    }

    #[test]
    fn key_files_are_trimmed_and_must_hold_32_bytes() {
        assert!(ValueKey::from_file_bytes(&[b'k'; 31]).is_none());
        assert!(ValueKey::from_file_bytes(b"  \n").is_none());
        let padded = ValueKey::from_file_bytes(format!(" {}\n", "k".repeat(32)).as_bytes());
        assert_eq!(format!("{padded:?}"), "Some(ValueKey(***))");
        // Trimmed: the same key as without the whitespace.
        let bare = ValueKeys { current: key(b'k'), previous: None };
        let sealed =
            seal(padded.map(|current| ValueKeys { current, previous: None }).as_ref(), KEY, b"x".to_vec());
        assert_eq!(open(Some(&bare), KEY, &sealed), Ok(&b"x"[..]));
    }
}
