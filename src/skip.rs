//! Skip rules that check the true type: a policy may leave bodies of some media types unscanned
//! (large video, for example), but only when the body's first bytes are those of the type it
//! declares. A body that does not start like its declared type is scanned, and counted.
//!
//! Only types with a fixed signature at a fixed offset are skippable (the [`SIGNATURES`] table):
//! a rule that names any other type is a config error, so there is no skip by a declared type
//! alone, and none by file extension at all. Text types (HTML, SVG, JavaScript, JSON) have no
//! such signature and can never be skipped. The check proves a body starts like its type, not
//! that it is only that: a file crafted to start like a PNG and carry something else passes a
//! skip rule. Skipping is the operator's trade of scanning for speed, on routes they choose.

use crate::config::SkipConfig;
use crate::policy::Direction;

/// Bytes of a body needed to check any signature in [`SIGNATURES`].
pub const SNIFF_BYTES: usize = 12;

/// A signature: bytes at an offset, `None` standing for any byte.
type Pattern = &'static [Option<u8>];

/// Media types that may be skipped, each with the signatures its bodies start with (any one).
pub const SIGNATURES: &[(&str, &[(usize, Pattern)])] = &[
    ("image/png", &[(0, &bytes8(*b"\x89PNG\r\n\x1a\n"))]),
    ("image/jpeg", &[(0, &[Some(0xFF), Some(0xD8), Some(0xFF)])]),
    ("image/gif", &[(0, &bytes6(*b"GIF87a")), (0, &bytes6(*b"GIF89a"))]),
    ("image/webp", &[(0, &RIFF_WEBP)]),
    ("image/avif", &[(4, &bytes8(*b"ftypavif")), (4, &bytes8(*b"ftypavis"))]),
    ("image/heic", &[(4, &bytes8(*b"ftypheic")), (4, &bytes8(*b"ftypheix")), (4, &bytes8(*b"ftypmif1"))]),
    ("image/tiff", &[(0, &bytes4(*b"II*\0")), (0, &bytes4(*b"MM\0*"))]),
    ("video/mp4", &[(4, &bytes4(*b"ftyp"))]),
    ("video/quicktime", &[(4, &bytes4(*b"ftyp")), (4, &bytes4(*b"moov")), (4, &bytes4(*b"mdat"))]),
    ("video/webm", &[(0, &bytes4(*b"\x1a\x45\xdf\xa3"))]),
    ("video/x-matroska", &[(0, &bytes4(*b"\x1a\x45\xdf\xa3"))]),
    ("video/ogg", &[(0, &bytes4(*b"OggS"))]),
    ("video/x-msvideo", &[(0, &RIFF_AVI)]),
    ("audio/ogg", &[(0, &bytes4(*b"OggS"))]),
    ("audio/flac", &[(0, &bytes4(*b"fLaC"))]),
    ("audio/mp4", &[(4, &bytes4(*b"ftyp"))]),
    ("audio/mpeg", &[(0, &bytes3(*b"ID3")), (0, &[Some(0xFF), Some(0xFB)]), (0, &[Some(0xFF), Some(0xF3)])]),
    ("audio/wav", &[(0, &RIFF_WAVE)]),
    ("audio/x-wav", &[(0, &RIFF_WAVE)]),
];

const RIFF_WEBP: [Option<u8>; 12] = riff(*b"WEBP");
const RIFF_WAVE: [Option<u8>; 12] = riff(*b"WAVE");
const RIFF_AVI: [Option<u8>; 12] = riff(*b"AVI ");

/// `RIFF`, any four bytes of length, then `form`.
const fn riff(form: [u8; 4]) -> [Option<u8>; 12] {
    let mut pattern = [None; 12];
    let mut i = 0;
    while i < 4 {
        pattern[i] = Some(b"RIFF"[i]);
        pattern[8 + i] = Some(form[i]);
        i += 1;
    }
    pattern
}

macro_rules! exact {
    ($name:ident, $n:literal) => {
        const fn $name(bytes: [u8; $n]) -> [Option<u8>; $n] {
            let mut pattern = [None; $n];
            let mut i = 0;
            while i < $n {
                pattern[i] = Some(bytes[i]);
                i += 1;
            }
            pattern
        }
    };
}
exact!(bytes3, 3);
exact!(bytes4, 4);
exact!(bytes6, 6);
exact!(bytes8, 8);

/// The canonical name of a media type that has a signature (`None` for any other type).
pub fn skippable(media_type: &str) -> Option<&'static str> {
    SIGNATURES.iter().map(|(name, _)| *name).find(|name| name.eq_ignore_ascii_case(media_type))
}

/// Whether `first` (a body's first [`SNIFF_BYTES`], fewer only if the body is shorter) starts
/// like `media_type`.
pub fn starts_like(media_type: &str, first: &[u8]) -> bool {
    let Some((_, signatures)) = SIGNATURES.iter().find(|(name, _)| *name == media_type) else {
        return false;
    };
    signatures.iter().any(|(offset, pattern)| {
        first.get(*offset..*offset + pattern.len()).is_some_and(|bytes| {
            bytes.iter().zip(pattern.iter()).all(|(byte, expected)| expected.is_none_or(|e| e == *byte))
        })
    })
}

/// The media type of one `Content-Type` value: lower case, without parameters.
pub fn media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// A policy's skip rule, as streams use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkipRule {
    /// The policy's name: the rule's label in metrics.
    pub name: String,
    media_types: Vec<&'static str>,
    directions: [bool; 2],
    min_bytes: u64,
    max_bytes: Option<u64>,
    path_prefixes: Vec<String>,
}

/// What a body's headers say about it, for [`SkipRule::candidate`].
#[derive(Debug, Clone, Copy)]
pub struct BodyHeaders<'a> {
    pub direction: Direction,
    /// Every `Content-Type` value sent (a skip needs exactly one).
    pub content_types: &'a [String],
    /// The request's path, without its query.
    pub path: &'a str,
    pub content_length: Option<u64>,
    /// The body has a `Content-Encoding`: its first bytes are not the type's.
    pub encoded: bool,
}

impl SkipRule {
    /// The rule of a policy's `[skip]` table; None when it names no type (nothing is skipped).
    /// The config checks have refused types without a signature, so none is dropped here.
    pub fn of(name: &str, config: &SkipConfig) -> Option<SkipRule> {
        let media_types: Vec<&'static str> =
            config.content_types.iter().filter_map(|declared| skippable(declared)).collect();
        if media_types.is_empty() {
            return None;
        }
        let mut directions = [false; 2];
        for direction in &config.directions {
            match direction.as_str() {
                "request" => directions[Direction::Request as usize] = true,
                "response" => directions[Direction::Response as usize] = true,
                _ => {}
            }
        }
        Some(SkipRule {
            name: name.to_string(),
            media_types,
            directions,
            min_bytes: config.min_bytes,
            max_bytes: config.max_bytes,
            path_prefixes: config.path_prefixes.clone(),
        })
    }

    /// The declared media type when a body's headers match this rule: the body is then skipped
    /// if its first bytes start like that type. None: scanned as usual.
    pub fn candidate(&self, body: BodyHeaders<'_>) -> Option<&'static str> {
        if !self.directions[body.direction as usize] || body.encoded {
            return None;
        }
        let [content_type] = body.content_types else { return None };
        let declared = media_type(content_type);
        let media_type = *self.media_types.iter().find(|name| **name == declared)?;
        let sized = self.min_bytes > 0 || self.max_bytes.is_some();
        match body.content_length {
            Some(length) if length < self.min_bytes || self.max_bytes.is_some_and(|max| length > max) => {
                return None
            }
            None if sized => return None,
            _ => {}
        }
        let under_a_prefix = self.path_prefixes.is_empty()
            || (is_plain_path(body.path)
                && self.path_prefixes.iter().any(|prefix| body.path.starts_with(prefix)));
        if !under_a_prefix {
            return None;
        }
        Some(media_type)
    }
}

/// A path a prefix can be matched against as the upstream will read it: absolute, without dot
/// segments, empty segments, percent-encoded characters or backslashes (any of which could make
/// `/media/../upload` match `/media/`).
pub fn is_plain_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains(['%', '\\'])
        && !path.contains("//")
        && !path.split('/').any(|segment| segment == "." || segment == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(types: &[&str]) -> SkipConfig {
        SkipConfig { content_types: types.iter().map(|t| t.to_string()).collect(), ..SkipConfig::default() }
    }

    fn headers<'a>(content_types: &'a [String], path: &'a str, length: Option<u64>) -> BodyHeaders<'a> {
        BodyHeaders {
            direction: Direction::Response,
            content_types,
            path,
            content_length: length,
            encoded: false,
        }
    }

    #[test]
    fn every_listed_type_has_a_signature_that_fits_in_the_sniffed_bytes() {
        for (name, signatures) in SIGNATURES {
            assert!(!signatures.is_empty(), "{name}");
            for (offset, pattern) in *signatures {
                assert!(offset + pattern.len() <= SNIFF_BYTES, "{name}");
                assert!(pattern.iter().filter(|byte| byte.is_some()).count() >= 2, "{name}: too weak");
            }
            assert_eq!(skippable(&name.to_ascii_uppercase()), Some(*name));
        }
        for text in ["text/html", "image/svg+xml", "application/javascript", "application/pdf", ""] {
            assert_eq!(skippable(text), None, "{text}");
        }
    }

    #[test]
    fn real_headers_match_and_other_bytes_do_not() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert!(starts_like("image/png", png));
        assert!(starts_like("image/webp", b"RIFF\x24\0\0\0WEBPVP8 "));
        assert!(!starts_like("image/webp", b"RIFF\x24\0\0\0WAVEfmt "));
        assert!(starts_like("video/mp4", b"\0\0\0\x20ftypisom"));
        assert!(starts_like("audio/mpeg", b"ID3\x04\0\0\0\0\0\0"));
        let eicar_start = b"X5O!P%@AP[4\\";
        for (name, _) in SIGNATURES {
            assert!(!starts_like(name, eicar_start), "{name}");
            assert!(!starts_like(name, b""), "{name}");
        }
        // A body shorter than the signature never matches.
        assert!(!starts_like("image/png", &png[..7]));
        assert!(!starts_like("text/html", b"<html>"));
    }

    #[test]
    fn a_candidate_needs_one_declared_skippable_type_unencoded_in_the_direction() {
        let rule = SkipRule::of("media", &rule(&["image/png", "Video/MP4"])).unwrap();
        let png = vec!["Image/PNG; charset=binary".to_string()];
        assert_eq!(rule.candidate(headers(&png, "/a", None)), Some("image/png"));
        let mp4 = vec!["video/mp4".to_string()];
        assert_eq!(rule.candidate(headers(&mp4, "/a", None)), Some("video/mp4"));
        let two = vec!["image/png".to_string(), "text/html".to_string()];
        assert_eq!(rule.candidate(headers(&two, "/a", None)), None);
        assert_eq!(rule.candidate(headers(&[], "/a", None)), None);
        let html = vec!["text/html".to_string()];
        assert_eq!(rule.candidate(headers(&html, "/a", None)), None);
        assert_eq!(rule.candidate(BodyHeaders { encoded: true, ..headers(&png, "/a", None) }), None);
        // Responses only, unless the rule names requests.
        let upload = BodyHeaders { direction: Direction::Request, ..headers(&png, "/a", None) };
        assert_eq!(rule.candidate(upload), None);
        let both = SkipConfig { directions: vec!["request".into(), "response".into()], ..rule_config() };
        assert_eq!(SkipRule::of("media", &both).unwrap().candidate(upload), Some("image/png"));
    }

    fn rule_config() -> SkipConfig {
        rule(&["image/png"])
    }

    #[test]
    fn size_bounds_need_a_content_length_within_them() {
        let config = SkipConfig { min_bytes: 100, max_bytes: Some(1000), ..rule_config() };
        let rule = SkipRule::of("media", &config).unwrap();
        let png = vec!["image/png".to_string()];
        assert_eq!(rule.candidate(headers(&png, "/a", Some(100))), Some("image/png"));
        assert_eq!(rule.candidate(headers(&png, "/a", Some(1000))), Some("image/png"));
        assert_eq!(rule.candidate(headers(&png, "/a", Some(99))), None);
        assert_eq!(rule.candidate(headers(&png, "/a", Some(1001))), None);
        assert_eq!(rule.candidate(headers(&png, "/a", None)), None);
        // Without bounds a length is not needed.
        let open = SkipRule::of("media", &rule_config()).unwrap();
        assert_eq!(open.candidate(headers(&png, "/a", None)), Some("image/png"));
    }

    #[test]
    fn path_prefixes_match_plain_paths_only() {
        let config = SkipConfig { path_prefixes: vec!["/media/".into()], ..rule_config() };
        let rule = SkipRule::of("media", &config).unwrap();
        let png = vec!["image/png".to_string()];
        assert_eq!(rule.candidate(headers(&png, "/media/cat.png", None)), Some("image/png"));
        for path in [
            "/api/cat.png",
            "/media/../api/x",
            "/media/%2e%2e/api",
            "/media//x",
            "/media/./x",
            "/media\\..\\x",
            "",
        ] {
            assert_eq!(rule.candidate(headers(&png, path, None)), None, "{path}");
        }
    }

    #[test]
    fn a_policy_without_types_has_no_rule() {
        assert_eq!(SkipRule::of("default", &SkipConfig::default()), None);
    }
}
