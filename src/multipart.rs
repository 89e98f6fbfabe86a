//! Multipart bodies (`multipart/form-data`, `multipart/mixed`) split into their parts, so that
//! each file is scanned as itself: clamd hashes a whole body for its hash signatures, so a file
//! known by its hash passes when it is scanned inside the form that carries it.
//!
//! A held body is read back piece by piece through `multer` (the parser axum and warp use) and
//! every part is held on its own (the same spool: memory budget, then temp files). A part with a
//! `Content-Transfer-Encoding` of `base64` or `quoted-printable` is held twice, as sent and
//! decoded, since an application may store either. A part that is itself `multipart/*` is split
//! again, up to [`Limits::max_depth`] levels. Anything that is not a well-formed multipart body
//! within the limits is a [`MultipartError`], which the caller turns into `Unscanned`: never a
//! pass.

use std::fmt;

use bytes::Bytes;

use crate::spool::{HeldBody, Spool, READ_PIECE_BYTES};

/// Bounds on what a multipart body may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Parts in the whole body, nested parts included.
    pub max_parts: usize,
    /// Levels of `multipart/*` inside a part (1: parts may not be multipart themselves).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_parts: 1000, max_depth: 2 }
    }
}

/// Why a multipart body could not be split.
#[derive(Debug)]
pub enum MultipartError {
    /// `multipart/*` without a usable `boundary` parameter.
    NoBoundary,
    /// Not a multipart body as declared: no first boundary, a part cut short, no final boundary,
    /// a bad part header.
    Malformed(String),
    /// More than [`Limits::max_parts`] parts.
    TooManyParts(usize),
    /// A `multipart/*` part nested deeper than [`Limits::max_depth`].
    TooDeep(usize),
    /// A part's `Content-Transfer-Encoding` is unknown, or its content does not decode.
    BadTransferEncoding(String),
    /// A part could not be held (budgets full, temp file error).
    Holding(std::io::Error),
}

impl fmt::Display for MultipartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MultipartError::NoBoundary => write!(f, "multipart body without a boundary parameter"),
            MultipartError::Malformed(why) => write!(f, "malformed multipart body: {why}"),
            MultipartError::TooManyParts(max) => write!(f, "multipart body with more than {max} parts"),
            MultipartError::TooDeep(max) => write!(f, "multipart parts nested more than {max} levels deep"),
            MultipartError::BadTransferEncoding(why) => write!(f, "multipart part: {why}"),
            MultipartError::Holding(err) => write!(f, "cannot hold a multipart part: {err}"),
        }
    }
}

impl std::error::Error for MultipartError {}

/// One part, held.
pub struct Part {
    /// The form field's name (`Content-Disposition: form-data; name=...`), if any.
    pub field: Option<String>,
    /// The file name (`filename=`, or `filename*=` decoded), if any.
    pub filename: Option<String>,
    /// The part's own `Content-Type`, if any.
    pub content_type: Option<String>,
    /// `decoded`: this is the part's content after its `Content-Transfer-Encoding`; the part as
    /// sent is another [`Part`] just before it.
    pub decoded: bool,
    /// 1 for a part of the body, 2 for a part of a part, ...
    pub depth: usize,
    pub body: HeldBody,
}

impl Part {
    /// How the part is named to people: `field "upload", file "a.exe"`.
    pub fn describe(&self) -> String {
        describe(self.field.as_deref(), self.filename.as_deref(), self.decoded)
    }
}

/// A part named for people from its field and file names: `field "upload", file "a.exe"`, with
/// `decoded` for the decoded copy of a transfer-encoded part.
pub fn describe(field: Option<&str>, filename: Option<&str>, decoded: bool) -> String {
    let mut words = Vec::new();
    if let Some(field) = field {
        words.push(format!("field {field:?}"));
    }
    if let Some(filename) = filename {
        words.push(format!("file {filename:?}"));
    }
    if words.is_empty() {
        words.push("an unnamed part".to_string());
    }
    if decoded {
        words.push("decoded".to_string());
    }
    words.join(", ")
}

/// The boundary of a body whose `Content-Type` is `content_type`: None when it is not
/// `multipart/*`; `Err(NoBoundary)` when it is but has no usable boundary.
pub fn boundary(content_type: &str) -> Option<Result<String, MultipartError>> {
    let mut params = content_type.split(';');
    let essence = params.next()?.trim().to_ascii_lowercase();
    if !essence.starts_with("multipart/") {
        return None;
    }
    let boundary = params.filter_map(|param| param.split_once('=')).find_map(|(name, value)| {
        name.trim().eq_ignore_ascii_case("boundary").then(|| value.trim().trim_matches('"').to_string())
    });
    // RFC 2046: 1 to 70 characters.
    Some(match boundary {
        Some(boundary) if (1..=70).contains(&boundary.len()) => Ok(boundary),
        _ => Err(MultipartError::NoBoundary),
    })
}

/// Splits `body` (a multipart body with `boundary`) into its parts, each held in `spool`.
pub async fn split(
    body: &HeldBody,
    boundary: &str,
    spool: &Spool,
    limits: Limits,
) -> Result<Vec<Part>, MultipartError> {
    let mut parts = Vec::new();
    split_into(body, boundary, spool, limits, 1, &mut parts).await?;
    Ok(parts)
}

async fn split_into(
    body: &HeldBody,
    boundary: &str,
    spool: &Spool,
    limits: Limits,
    depth: usize,
    parts: &mut Vec<Part>,
) -> Result<(), MultipartError> {
    let mut multipart = multer::Multipart::new(pieces_of(body), boundary.to_string());
    let mut found = 0;
    loop {
        let field = multipart.next_field().await.map_err(|err| MultipartError::Malformed(err.to_string()))?;
        let Some(mut field) = field else { break };
        found += 1;
        if parts.len() >= limits.max_parts {
            return Err(MultipartError::TooManyParts(limits.max_parts));
        }
        let headers = field.headers().clone();
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_string);
        let content_type = header("content-type");
        let disposition = header("content-disposition").unwrap_or_default();
        let filename = field.file_name().map(str::to_string).or_else(|| extended_filename(&disposition));
        let field_name = field.name().map(str::to_string);
        let transfer = header("content-transfer-encoding").map(|value| value.trim().to_ascii_lowercase());
        let mut decoder = match transfer.as_deref() {
            None | Some("7bit" | "8bit" | "binary") => None,
            Some("base64") => Some(TransferDecoder::Base64(Base64::default())),
            Some("quoted-printable") => Some(TransferDecoder::QuotedPrintable(QuotedPrintable::default())),
            Some(other) => {
                return Err(MultipartError::BadTransferEncoding(format!(
                    "unknown Content-Transfer-Encoding {other:?}"
                )))
            }
        };
        let mut raw = spool.hold();
        let mut decoded = decoder.as_ref().map(|_| spool.hold());
        while let Some(chunk) =
            field.chunk().await.map_err(|err| MultipartError::Malformed(err.to_string()))?
        {
            if let (Some(decoder), Some(decoded)) = (decoder.as_mut(), decoded.as_mut()) {
                let bytes = decoder.push(&chunk)?;
                if !bytes.is_empty() {
                    decoded.push(Bytes::from(bytes)).await.map_err(MultipartError::Holding)?;
                }
            }
            raw.push(chunk).await.map_err(MultipartError::Holding)?;
        }
        if let (Some(decoder), Some(decoded)) = (decoder.as_mut(), decoded.as_mut()) {
            let rest = decoder.finish()?;
            if !rest.is_empty() {
                decoded.push(Bytes::from(rest)).await.map_err(MultipartError::Holding)?;
            }
        }
        let nested = content_type.as_deref().and_then(self::boundary);
        let part = |body: HeldBody, decoded: bool| Part {
            field: field_name.clone(),
            filename: filename.clone(),
            content_type: content_type.clone(),
            decoded,
            depth,
            body,
        };
        parts.push(part(raw, false));
        if let Some(decoded) = decoded {
            parts.push(part(decoded, true));
        }
        if let Some(nested) = nested {
            let nested = nested?;
            if depth >= limits.max_depth {
                return Err(MultipartError::TooDeep(limits.max_depth));
            }
            // The part as the application gets it: decoded, if it had a transfer encoding.
            let index = parts.len() - 1;
            let inner = std::mem::replace(&mut parts[index].body, spool.hold());
            let result = Box::pin(split_into(&inner, &nested, spool, limits, depth + 1, parts)).await;
            parts[index].body = inner;
            result?;
        }
    }
    if found == 0 {
        return Err(MultipartError::Malformed("no part".to_string()));
    }
    Ok(())
}

/// The held body as a stream of pieces, for `multer`.
fn pieces_of(body: &HeldBody) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + '_ {
    futures_util::stream::unfold(0u64, move |offset| async move {
        if offset >= body.len() {
            return None;
        }
        match body.read_at(offset, READ_PIECE_BYTES).await {
            Ok(piece) if piece.is_empty() => None,
            Ok(piece) => Some((Ok(piece.clone()), offset + piece.len() as u64)),
            Err(err) => Some((Err(err), u64::MAX)),
        }
    })
}

/// `filename*=UTF-8''name%20with%20spaces` (RFC 6266 / 8187) from a `Content-Disposition`.
fn extended_filename(disposition: &str) -> Option<String> {
    let value =
        disposition.split(';').filter_map(|param| param.split_once('=')).find_map(|(name, value)| {
            name.trim().eq_ignore_ascii_case("filename*").then(|| value.trim().trim_matches('"').to_string())
        })?;
    let (charset, rest) = value.split_once('\'')?;
    let (_language, encoded) = rest.split_once('\'')?;
    let bytes = percent_decode(encoded)?;
    match charset.to_ascii_lowercase().as_str() {
        "utf-8" => String::from_utf8(bytes).ok(),
        // ISO-8859-1: each byte is the code point.
        "iso-8859-1" => Some(bytes.iter().map(|&b| b as char).collect()),
        _ => None,
    }
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A part's `Content-Transfer-Encoding` decoder, fed the part in pieces.
enum TransferDecoder {
    Base64(Base64),
    QuotedPrintable(QuotedPrintable),
}

impl TransferDecoder {
    fn push(&mut self, piece: &[u8]) -> Result<Vec<u8>, MultipartError> {
        match self {
            TransferDecoder::Base64(decoder) => decoder.push(piece),
            TransferDecoder::QuotedPrintable(decoder) => Ok(decoder.push(piece)),
        }
    }

    fn finish(&mut self) -> Result<Vec<u8>, MultipartError> {
        match self {
            TransferDecoder::Base64(decoder) => decoder.finish(),
            TransferDecoder::QuotedPrintable(decoder) => Ok(decoder.finish()),
        }
    }
}

/// Base64 in pieces: whitespace and line breaks skipped, groups of 4 decoded as they complete.
#[derive(Default)]
struct Base64 {
    pending: Vec<u8>,
    ended: bool,
}

impl Base64 {
    fn push(&mut self, piece: &[u8]) -> Result<Vec<u8>, MultipartError> {
        use base64::Engine as _;
        self.pending.extend(piece.iter().copied().filter(|b| !b.is_ascii_whitespace()));
        let whole = self.pending.len() / 4 * 4;
        if whole == 0 {
            return Ok(Vec::new());
        }
        if self.ended {
            return Err(MultipartError::BadTransferEncoding("base64 content after its padding".to_string()));
        }
        let group: Vec<u8> = self.pending.drain(..whole).collect();
        self.ended = group.ends_with(b"=");
        base64::engine::general_purpose::STANDARD
            .decode(&group)
            .map_err(|err| MultipartError::BadTransferEncoding(format!("bad base64: {err}")))
    }

    fn finish(&mut self) -> Result<Vec<u8>, MultipartError> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        Err(MultipartError::BadTransferEncoding(format!(
            "base64 content cut short ({} characters left over)",
            self.pending.len()
        )))
    }
}

/// Quoted-printable in pieces: `=XX` escapes and `=` soft line breaks, even when split between
/// pieces. A `=` not followed by two hex digits or a line break is kept as is (RFC 2045's
/// advice for robust decoders).
#[derive(Default)]
struct QuotedPrintable {
    pending: Vec<u8>,
}

impl QuotedPrintable {
    fn push(&mut self, piece: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(piece);
        self.decode(false)
    }

    fn finish(&mut self) -> Vec<u8> {
        self.decode(true)
    }

    fn decode(&mut self, last: bool) -> Vec<u8> {
        let input = std::mem::take(&mut self.pending);
        let mut out = Vec::with_capacity(input.len());
        let mut i = 0;
        while i < input.len() {
            if input[i] != b'=' {
                out.push(input[i]);
                i += 1;
                continue;
            }
            let rest = &input[i + 1..];
            if rest.len() < 2 && !last {
                // The escape may go on in the next piece.
                self.pending = input[i..].to_vec();
                return out;
            }
            match rest {
                [b'\r', b'\n', ..] => i += 3,
                [b'\n', ..] => i += 2,
                [a, b, ..] if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => {
                    let hex = [*a, *b];
                    let text = std::str::from_utf8(&hex).unwrap_or("00");
                    out.push(u8::from_str_radix(text, 16).unwrap_or(0));
                    i += 3;
                }
                _ => {
                    out.push(b'=');
                    i += 1;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::sync::Arc;

    fn spool() -> Spool {
        Spool::new(1 << 30, 1 << 20, std::env::temp_dir(), Arc::new(Metrics::new()))
    }

    async fn held(spool: &Spool, body: &[u8], piece: usize) -> HeldBody {
        let mut held = spool.hold();
        for chunk in body.chunks(piece.max(1)) {
            held.push(Bytes::copy_from_slice(chunk)).await.expect("hold");
        }
        held
    }

    async fn contents(part: &Part) -> Vec<u8> {
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < part.body.len() {
            let piece = part.body.read_at(offset, 4096).await.expect("read");
            offset += piece.len() as u64;
            out.extend_from_slice(&piece);
        }
        out
    }

    fn form(boundary: &str, parts: &[(&str, &str, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (headers, _, data) in parts {
            body.extend_from_slice(format!("--{boundary}\r\n{headers}\r\n\r\n").as_bytes());
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        body
    }

    async fn split_bytes(
        body: &[u8],
        boundary: &str,
        piece: usize,
    ) -> Result<Vec<(Part, Vec<u8>)>, MultipartError> {
        let spool = spool();
        let held = held(&spool, body, piece).await;
        let parts = split(&held, boundary, &spool, Limits::default()).await?;
        let mut out = Vec::new();
        for part in parts {
            let bytes = contents(&part).await;
            out.push((part, bytes));
        }
        Ok(out)
    }

    #[test]
    fn the_boundary_comes_from_a_multipart_content_type_only() {
        assert_eq!(boundary("multipart/form-data; boundary=abc").unwrap().unwrap(), "abc");
        assert_eq!(boundary("Multipart/Mixed; charset=x; BOUNDARY=\"a b\"").unwrap().unwrap(), "a b");
        assert!(boundary("application/octet-stream").is_none());
        assert!(matches!(boundary("multipart/form-data"), Some(Err(MultipartError::NoBoundary))));
        assert!(matches!(boundary("multipart/form-data; boundary="), Some(Err(MultipartError::NoBoundary))));
        let long = format!("multipart/form-data; boundary={}", "x".repeat(71));
        assert!(matches!(boundary(&long), Some(Err(MultipartError::NoBoundary))));
    }

    #[tokio::test]
    async fn every_part_is_held_byte_for_byte_whatever_the_pieces() {
        let file: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let body = form(
            "XyZ",
            &[
                ("Content-Disposition: form-data; name=\"note\"", "", b"hello"),
                (
                    "Content-Disposition: form-data; name=\"upload\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream",
                    "",
                    &file,
                ),
            ],
        );
        for piece in [1, 7, 64, 100_000] {
            let parts = split_bytes(&body, "XyZ", piece).await.expect("split");
            assert_eq!(parts.len(), 2, "pieces of {piece}");
            assert_eq!(parts[0].0.field.as_deref(), Some("note"));
            assert_eq!(parts[0].1, b"hello");
            assert_eq!(parts[1].0.filename.as_deref(), Some("a.bin"));
            assert_eq!(parts[1].0.content_type.as_deref(), Some("application/octet-stream"));
            assert_eq!(parts[1].1, file, "pieces of {piece}");
            assert_eq!(parts[1].0.describe(), "field \"upload\", file \"a.bin\"");
        }
    }

    #[tokio::test]
    async fn a_boundary_inside_a_parts_data_does_not_split_it() {
        // The boundary string, but not at the start of a line after CRLF: data.
        let data = b"before --XyZ after, and XyZ--";
        let body = form("XyZ", &[("Content-Disposition: form-data; name=\"f\"", "", data)]);
        let parts = split_bytes(&body, "XyZ", 5).await.expect("split");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].1, data);
    }

    #[tokio::test]
    async fn an_encoded_filename_is_decoded() {
        let body = form(
            "b",
            &[(
                "Content-Disposition: form-data; name=\"f\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20v2.pdf",
                "",
                b"x",
            )],
        );
        let parts = split_bytes(&body, "b", 3).await.expect("split");
        assert_eq!(parts[0].0.filename.as_deref(), Some("résumé v2.pdf"));
    }

    #[tokio::test]
    async fn transfer_encoded_parts_are_held_as_sent_and_decoded() {
        let body = form(
            "b",
            &[
                ("Content-Disposition: form-data; name=\"a\"\r\nContent-Transfer-Encoding: base64", "", b"aGVs\r\nbG8g\r\nd29y\r\nbGQ="),
                ("Content-Disposition: form-data; name=\"q\"\r\nContent-Transfer-Encoding: quoted-printable", "", b"caf=C3=A9 =\r\nau lait=3D"),
            ],
        );
        for piece in [1, 2, 3, 1000] {
            let parts = split_bytes(&body, "b", piece).await.expect("split");
            assert_eq!(parts.len(), 4, "pieces of {piece}");
            assert!(!parts[0].0.decoded && parts[1].0.decoded);
            assert_eq!(parts[0].1, b"aGVs\r\nbG8g\r\nd29y\r\nbGQ=");
            assert_eq!(parts[1].1, b"hello world");
            assert_eq!(parts[3].1, "café au lait=".as_bytes(), "pieces of {piece}");
        }
    }

    #[tokio::test]
    async fn nested_multipart_is_split_within_the_depth_limit() {
        let inner = form("in", &[("Content-Disposition: attachment; filename=\"x.txt\"", "", b"inner file")]);
        let outer = form(
            "out",
            &[("Content-Disposition: form-data; name=\"files\"\r\nContent-Type: multipart/mixed; boundary=in", "", &inner)],
        );
        let parts = split_bytes(&outer, "out", 9).await.expect("split");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].1, inner);
        assert_eq!(parts[1].0.depth, 2);
        assert_eq!(parts[1].1, b"inner file");

        let deeper = form(
            "top",
            &[(
                "Content-Disposition: form-data; name=\"n\"\r\nContent-Type: multipart/mixed; boundary=out",
                "",
                &outer,
            )],
        );
        let spool = spool();
        let held = held(&spool, &deeper, 100).await;
        assert!(matches!(
            split(&held, "top", &spool, Limits::default()).await,
            Err(MultipartError::TooDeep(2))
        ));
    }

    #[tokio::test]
    async fn malformed_bodies_are_errors_never_parts() {
        let good = form("b", &[("Content-Disposition: form-data; name=\"f\"", "", b"data")]);
        // Cut before its final boundary.
        let truncated = &good[..good.len() - 10];
        assert!(matches!(split_bytes(truncated, "b", 4).await, Err(MultipartError::Malformed(_))));
        // Another boundary than the body's.
        assert!(matches!(split_bytes(&good, "other", 4).await, Err(MultipartError::Malformed(_))));
        // Not multipart at all.
        assert!(matches!(split_bytes(b"just bytes", "b", 4).await, Err(MultipartError::Malformed(_))));
        // An unknown transfer encoding, and base64 that is not.
        let unknown = form(
            "b",
            &[("Content-Disposition: form-data; name=\"f\"\r\nContent-Transfer-Encoding: x-uue", "", b"d")],
        );
        assert!(matches!(split_bytes(&unknown, "b", 4).await, Err(MultipartError::BadTransferEncoding(_))));
        let bad64 = form(
            "b",
            &[(
                "Content-Disposition: form-data; name=\"f\"\r\nContent-Transfer-Encoding: base64",
                "",
                b"@@@@",
            )],
        );
        assert!(matches!(split_bytes(&bad64, "b", 4).await, Err(MultipartError::BadTransferEncoding(_))));
        let cut64 = form(
            "b",
            &[(
                "Content-Disposition: form-data; name=\"f\"\r\nContent-Transfer-Encoding: base64",
                "",
                b"aGVsbG",
            )],
        );
        assert!(matches!(split_bytes(&cut64, "b", 4).await, Err(MultipartError::BadTransferEncoding(_))));
    }

    #[tokio::test]
    async fn more_parts_than_the_limit_is_an_error() {
        let many: Vec<(&str, &str, &[u8])> =
            (0..5).map(|_| ("Content-Disposition: form-data; name=\"f\"", "", &b"x"[..])).collect();
        let body = form("b", &many);
        let spool = spool();
        let held = held(&spool, &body, 50).await;
        let limits = Limits { max_parts: 4, ..Limits::default() };
        assert!(matches!(split(&held, "b", &spool, limits).await, Err(MultipartError::TooManyParts(4))));
        let limits = Limits { max_parts: 5, ..Limits::default() };
        assert_eq!(split(&held, "b", &spool, limits).await.expect("split").len(), 5);
    }
}
