//! clamd's wire format as clamd 1.4 speaks it: INSTREAM framing and reply parsing, with no I/O.
//!
//! Commands use the `z` prefix (`zCMD\0`), so replies end in `\0`, except `COMMAND READ TIMED OUT`,
//! which clamd ends with `\n` even in z-mode. No `IDSESSION`: replies carry no `<id>: ` prefix.
//! An INSTREAM body is a sequence of chunks `<u32 big-endian length><bytes>` closed by a
//! zero-length chunk ([`INSTREAM_END`]). [`ScanReply`] lists every reply and what clamgate makes of it.

use crate::verdict::{EngineVersion, UnscannedReason, Verdict};

/// Starts an INSTREAM scan; chunks follow, then [`INSTREAM_END`].
pub const INSTREAM_COMMAND: &[u8] = b"zINSTREAM\0";

/// The zero-length chunk that ends an INSTREAM body and asks clamd for its verdict.
pub const INSTREAM_END: [u8; 4] = [0; 4];

/// `PING`; clamd answers `PONG`.
pub const PING_COMMAND: &[u8] = b"zPING\0";

/// Starts a FILDES scan: one byte carrying the file descriptor (`SCM_RIGHTS`) follows on the unix
/// socket, and clamd scans the whole file behind it (from offset 0, whatever the descriptor's
/// position; measured with clamd 1.4.6).
pub const FILDES_COMMAND: &[u8] = b"zFILDES\0";

/// `VERSION`; clamd answers `ClamAV <engine>[/<db version>/<db date>]`.
pub const VERSION_COMMAND: &[u8] = b"zVERSION\0";

/// The largest chunk one header can describe (the length is a `u32`).
///
/// Larger bodies must be split into several chunks; [`chunk_frames`] does that.
pub const MAX_CHUNK_BYTES: usize = u32::MAX as usize;

/// The signature prefix clamd reports when a scan stopped at one of its limits
/// (`MaxFileSize`, `MaxScanSize`, `MaxFiles`, `MaxRecursion`, `MaxScanTime`) with `AlertExceedsMax yes`.
pub const LIMITS_EXCEEDED_PREFIX: &str = "Heuristics.Limits.Exceeded";

/// The signature prefix clamd reports for content it cannot inspect, with `AlertEncrypted yes`.
pub const ENCRYPTED_PREFIX: &str = "Heuristics.Encrypted";

/// The header of one INSTREAM chunk of `len` bytes: the length as a big-endian `u32`.
///
/// `len` must be between 1 and [`MAX_CHUNK_BYTES`]: a zero length is [`INSTREAM_END`] and ends
/// the body, and a longer chunk cannot be described, so callers split first (see
/// [`chunk_frames`]). A `len` above the maximum is clamped to it (and debug builds panic), so the
/// caller must then send only `MAX_CHUNK_BYTES` bytes after this header.
pub fn chunk_header(len: usize) -> [u8; 4] {
    debug_assert!(len <= MAX_CHUNK_BYTES, "INSTREAM chunk of {len} bytes must be split");
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
}

/// Splits `data` into INSTREAM frames of at most `max_chunk_bytes` bytes each (capped at
/// [`MAX_CHUNK_BYTES`]), yielding each frame's header with its bytes.
///
/// Empty input yields nothing: a zero-length chunk would end the body early.
/// A `max_chunk_bytes` of 0 is treated as 1.
pub fn chunk_frames(data: &[u8], max_chunk_bytes: usize) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    let size = max_chunk_bytes.clamp(1, MAX_CHUNK_BYTES);
    data.chunks(size).map(|piece| (chunk_header(piece.len()), piece))
}

/// What clamd answered to an INSTREAM scan, before the verdict model is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanReply {
    /// `stream: OK`: the only reply that means clean.
    Clean,
    /// `stream: <signature> FOUND`. The signature may be a heuristic (see
    /// [`ScanReply::into_verdict`]); names from unofficial databases end in `.UNOFFICIAL`.
    Found { signature: String },
    /// `INSTREAM size limit exceeded. ERROR`: the body passed clamd's `StreamMaxLength`.
    SizeLimitExceeded,
    /// `stream: <message> ERROR` or `<message> ERROR`: clamd failed (memory, temp file, ...).
    Error { message: String },
    /// `COMMAND READ TIMED OUT`: clamgate sent too slowly for clamd's `ReadTimeout`.
    ReadTimedOut,
    /// Anything else, including `UNKNOWN COMMAND`, non-UTF-8 and truncated replies.
    Unknown { raw: String },
}

impl ScanReply {
    /// Maps the reply onto the verdict model. Only [`ScanReply::Clean`] becomes `Verdict::Clean`.
    ///
    /// | reply | verdict |
    /// |---|---|
    /// | `Clean` | `Clean` |
    /// | `Found` `Heuristics.Limits.Exceeded*` | `Unscanned { limits_exceeded }` |
    /// | `Found` `Heuristics.Encrypted*` | `Unscanned { encrypted }` |
    /// | other `Found` | `Infected` |
    /// | `SizeLimitExceeded` | `Unscanned { too_large }` |
    /// | `Error`, `Unknown` | `Unscanned { engine_error }` |
    /// | `ReadTimedOut` | `Unscanned { timeout }` |
    pub fn into_verdict(self) -> Verdict {
        let unscanned = |reason| Verdict::Unscanned { reason };
        match self {
            ScanReply::Clean => Verdict::Clean,
            ScanReply::Found { signature } if signature.starts_with(LIMITS_EXCEEDED_PREFIX) => {
                unscanned(UnscannedReason::LimitsExceeded)
            }
            ScanReply::Found { signature } if signature.starts_with(ENCRYPTED_PREFIX) => {
                unscanned(UnscannedReason::Encrypted)
            }
            ScanReply::Found { signature } => Verdict::Infected { signature },
            ScanReply::SizeLimitExceeded => unscanned(UnscannedReason::TooLarge),
            ScanReply::Error { .. } | ScanReply::Unknown { .. } => unscanned(UnscannedReason::EngineError),
            ScanReply::ReadTimedOut => unscanned(UnscannedReason::Timeout),
        }
    }
}

/// A reply clamgate cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The `VERSION` reply does not look like `ClamAV <engine>[/<db version>/<db date>]`.
    #[error("malformed VERSION reply from clamd: {raw:?}")]
    MalformedVersion { raw: String },
    /// A command got a reply other than the one it expects (e.g. `PING` without `PONG`).
    #[error("unexpected reply to {command} from clamd: {raw:?}")]
    UnexpectedReply { command: &'static str, raw: String },
    /// clamd sent more than `limit` bytes without ending its reply.
    #[error("clamd reply exceeds {limit} bytes without a terminator")]
    ReplyTooLong { limit: usize },
}

/// Parses clamd's reply to INSTREAM. Trailing `\0` and `\n` are ignored; everything else must
/// match one of clamd's replies exactly, or the result is [`ScanReply::Unknown`].
pub fn parse_scan_reply(raw: &[u8]) -> ScanReply {
    let trimmed = trim_terminators(raw);
    let Ok(text) = std::str::from_utf8(trimmed) else {
        return ScanReply::Unknown { raw: String::from_utf8_lossy(trimmed).into_owned() };
    };
    let unknown = || ScanReply::Unknown { raw: text.to_string() };
    // A reply is one line: an inner terminator means two replies or garbage.
    if text.contains(['\0', '\n']) {
        return unknown();
    }
    match text {
        "stream: OK" => return ScanReply::Clean,
        "COMMAND READ TIMED OUT" => return ScanReply::ReadTimedOut,
        // clamd sends it without the `stream: ` prefix; accept it with one too.
        "INSTREAM size limit exceeded. ERROR" | "stream: INSTREAM size limit exceeded. ERROR" => {
            return ScanReply::SizeLimitExceeded
        }
        _ => {}
    }
    if let Some(rest) = text.strip_prefix("stream: ") {
        if let Some(signature) = rest.strip_suffix(" FOUND") {
            if is_signature_name(signature) {
                return ScanReply::Found { signature: signature.to_string() };
            }
            return unknown();
        }
        if let Some(message) = rest.strip_suffix(" ERROR") {
            return error_reply(message).unwrap_or_else(unknown);
        }
        return unknown();
    }
    // Errors outside the scan itself, e.g. `Error writing to temporary file ERROR`.
    if let Some(message) = text.strip_suffix(" ERROR") {
        return error_reply(message).unwrap_or_else(unknown);
    }
    unknown()
}

/// Parses clamd's reply to FILDES: `fd[N]: OK`, `fd[N]: <Name> FOUND`, `fd[N]: <text> ERROR`, or
/// an error without the prefix (`No file descriptor received. ERROR`). The `fd[N]: ` prefix is
/// read as INSTREAM's `stream: `, and the rest by [`parse_scan_reply`], with the same strictness.
pub fn parse_fildes_reply(raw: &[u8]) -> ScanReply {
    let prefix_end = raw
        .strip_prefix(b"fd[")
        .and_then(|rest| rest.iter().position(|&b| b == b']').map(|digits| (rest, digits)))
        .filter(|(rest, digits)| *digits > 0 && rest[..*digits].iter().all(u8::is_ascii_digit))
        .and_then(|(rest, digits)| rest[digits..].strip_prefix(b"]: ").map(|after| raw.len() - after.len()));
    match prefix_end {
        Some(end) => {
            let mut normalized = b"stream: ".to_vec();
            normalized.extend_from_slice(&raw[end..]);
            parse_scan_reply(&normalized)
        }
        // Only an error may come without the prefix; `OK` or `FOUND` without it is not clamd's.
        None if trim_terminators(raw).ends_with(b" ERROR") => parse_scan_reply(raw),
        None => ScanReply::Unknown { raw: String::from_utf8_lossy(trim_terminators(raw)).into_owned() },
    }
}

/// Parses clamd's reply to `VERSION`: `ClamAV 1.4.6`, or `ClamAV 1.4.6/27000/Sat Nov 21 14:40:36 2026`
/// when a `daily.*` database is loaded.
pub fn parse_version(raw: &[u8]) -> Result<EngineVersion, ProtocolError> {
    let malformed = || ProtocolError::MalformedVersion { raw: String::from_utf8_lossy(raw).into_owned() };
    let text = std::str::from_utf8(trim_terminators(raw)).map_err(|_| malformed())?;
    let rest = text.strip_prefix("ClamAV ").ok_or_else(malformed)?;
    let mut parts = rest.splitn(3, '/');
    let engine = parts.next().unwrap_or_default();
    let engine_ok = engine.starts_with(|c: char| c.is_ascii_digit())
        && engine.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
    if !engine_ok {
        return Err(malformed());
    }
    let (database_version, database_date) = match (parts.next(), parts.next()) {
        (None, _) => (None, None),
        (Some(version), Some(date)) => {
            let version = version.parse::<u64>().map_err(|_| malformed())?;
            let date = date.trim();
            if date.is_empty() || date.contains(['\0', '\n']) {
                return Err(malformed());
            }
            (Some(version), Some(date.to_string()))
        }
        (Some(_), None) => return Err(malformed()),
    };
    Ok(EngineVersion { engine: engine.to_string(), database_version, database_date })
}

/// Whether `raw` is clamd's answer to `PING`.
pub fn is_pong(raw: &[u8]) -> bool {
    trim_terminators(raw) == b"PONG"
}

/// Strips the trailing `\0` and `\n` bytes that end clamd's replies.
fn trim_terminators(raw: &[u8]) -> &[u8] {
    let end = raw.iter().rposition(|&b| b != b'\0' && b != b'\n').map_or(0, |i| i + 1);
    &raw[..end]
}

/// A signature name is one non-empty word of printable ASCII.
fn is_signature_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic())
}

fn error_reply(message: &str) -> Option<ScanReply> {
    let message = message.trim();
    (!message.is_empty()).then(|| ScanReply::Error { message: message.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fildes_replies_read_like_instream_ones() {
        assert_eq!(parse_fildes_reply(b"fd[12]: OK\0"), ScanReply::Clean);
        assert_eq!(
            parse_fildes_reply(b"fd[7]: Test.Eicar.Body.UNOFFICIAL FOUND\0"),
            ScanReply::Found { signature: "Test.Eicar.Body.UNOFFICIAL".to_string() }
        );
        assert!(matches!(
            parse_fildes_reply(b"No file descriptor received. ERROR\0"),
            ScanReply::Error { .. }
        ));
        for garbage in [
            &b"OK\0"[..],
            b"fd[]: OK\0",
            b"fd[x]: OK\0",
            b"fd[1]:OK\0",
            b"stream: OK\0",
            b"fd[1]: OK\0fd[1]: OK\0",
        ] {
            assert!(matches!(parse_fildes_reply(garbage), ScanReply::Unknown { .. }), "{garbage:?}");
        }
    }

    fn found(signature: &str) -> ScanReply {
        ScanReply::Found { signature: signature.to_string() }
    }

    fn unknown(raw: &str) -> ScanReply {
        ScanReply::Unknown { raw: raw.to_string() }
    }

    #[test]
    fn command_and_terminator_bytes() {
        assert_eq!(INSTREAM_COMMAND, b"zINSTREAM\0");
        assert_eq!(INSTREAM_END, [0, 0, 0, 0]);
        assert_eq!(PING_COMMAND, b"zPING\0");
        assert_eq!(VERSION_COMMAND, b"zVERSION\0");
    }

    #[test]
    fn chunk_header_is_u32_big_endian() {
        assert_eq!(chunk_header(1), [0, 0, 0, 1]);
        assert_eq!(chunk_header(0x0102_0304), [1, 2, 3, 4]);
        assert_eq!(chunk_header(65_536), [0, 1, 0, 0]);
        assert_eq!(chunk_header(MAX_CHUNK_BYTES), [0xff; 4]);
    }

    #[test]
    fn chunk_frames_split_and_never_emit_an_empty_chunk() {
        let frames: Vec<_> = chunk_frames(b"abcdefg", 3).collect();
        assert_eq!(
            frames,
            vec![([0, 0, 0, 3], &b"abc"[..]), ([0, 0, 0, 3], &b"def"[..]), ([0, 0, 0, 1], &b"g"[..])]
        );
        assert_eq!(chunk_frames(b"", 3).count(), 0);
        assert_eq!(chunk_frames(b"ab", 0).count(), 2);
        assert_eq!(chunk_frames(b"ab", usize::MAX).collect::<Vec<_>>(), vec![([0, 0, 0, 2], &b"ab"[..])]);
    }

    #[test]
    fn clean_reply() {
        assert_eq!(parse_scan_reply(b"stream: OK\0"), ScanReply::Clean);
        assert_eq!(parse_scan_reply(b"stream: OK\n"), ScanReply::Clean);
        assert_eq!(parse_scan_reply(b"stream: OK"), ScanReply::Clean);
        assert_eq!(parse_scan_reply(b"stream: OK\0\0\n"), ScanReply::Clean);
    }

    #[test]
    fn found_reply() {
        assert_eq!(parse_scan_reply(b"stream: Eicar-Test-Signature FOUND\0"), found("Eicar-Test-Signature"));
        assert_eq!(
            parse_scan_reply(b"stream: Test.Eicar.Body.UNOFFICIAL FOUND\0"),
            found("Test.Eicar.Body.UNOFFICIAL")
        );
        assert_eq!(
            parse_scan_reply(b"stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND\0"),
            found("Heuristics.Limits.Exceeded.MaxFileSize")
        );
    }

    #[test]
    fn settings_self_test_replies_are_unscanned_not_infected() {
        // clamd 1.4.6's answers to the health probe's self-test bodies (src/clamd/selftest.rs)
        // with `AlertEncrypted yes` and `AlertExceedsMax yes`, byte for byte.
        let encrypted = parse_scan_reply(b"stream: Heuristics.Encrypted.Zip FOUND\0");
        assert_eq!(encrypted, found("Heuristics.Encrypted.Zip"));
        assert_eq!(encrypted.into_verdict(), Verdict::Unscanned { reason: UnscannedReason::Encrypted });
        let nested = parse_scan_reply(b"stream: Heuristics.Limits.Exceeded.MaxRecursion FOUND\0");
        assert_eq!(nested, found("Heuristics.Limits.Exceeded.MaxRecursion"));
        assert_eq!(nested.into_verdict(), Verdict::Unscanned { reason: UnscannedReason::LimitsExceeded });
        // Without the settings, clamd answers plain OK to both: the only reply that is clean.
        assert_eq!(parse_scan_reply(b"stream: OK\0").into_verdict(), Verdict::Clean);
    }

    #[test]
    fn size_limit_reply() {
        assert_eq!(parse_scan_reply(b"INSTREAM size limit exceeded. ERROR\0"), ScanReply::SizeLimitExceeded);
        assert_eq!(parse_scan_reply(b"INSTREAM size limit exceeded. ERROR\n"), ScanReply::SizeLimitExceeded);
        assert_eq!(
            parse_scan_reply(b"stream: INSTREAM size limit exceeded. ERROR\0"),
            ScanReply::SizeLimitExceeded
        );
    }

    #[test]
    fn error_replies() {
        assert_eq!(
            parse_scan_reply(b"stream: Can't allocate memory ERROR\0"),
            ScanReply::Error { message: "Can't allocate memory".to_string() }
        );
        assert_eq!(
            parse_scan_reply(b"Error writing to temporary file ERROR\0"),
            ScanReply::Error { message: "Error writing to temporary file".to_string() }
        );
        assert_eq!(parse_scan_reply(b"stream:  ERROR\0"), unknown("stream:  ERROR"));
        assert_eq!(parse_scan_reply(b"ERROR\0"), unknown("ERROR"));
    }

    #[test]
    fn read_timeout_reply_ends_in_newline_even_in_z_mode() {
        assert_eq!(parse_scan_reply(b"COMMAND READ TIMED OUT\n"), ScanReply::ReadTimedOut);
        assert_eq!(parse_scan_reply(b"COMMAND READ TIMED OUT\0"), ScanReply::ReadTimedOut);
    }

    #[test]
    fn unknown_replies() {
        assert_eq!(parse_scan_reply(b"UNKNOWN COMMAND\0"), unknown("UNKNOWN COMMAND"));
        assert_eq!(parse_scan_reply(b""), unknown(""));
        assert_eq!(parse_scan_reply(b"\0"), unknown(""));
        assert_eq!(parse_scan_reply(b"PONG\0"), unknown("PONG"));
        assert_eq!(parse_scan_reply(b"stream: ok\0"), unknown("stream: ok"));
        assert_eq!(parse_scan_reply(b"stream: OK \0"), unknown("stream: OK "));
        assert_eq!(parse_scan_reply(b" stream: OK\0"), unknown(" stream: OK"));
        assert_eq!(parse_scan_reply(b"stream: OK garbage\0"), unknown("stream: OK garbage"));
        assert_eq!(parse_scan_reply(b"stream: FOUND\0"), unknown("stream: FOUND"));
        assert_eq!(parse_scan_reply(b"stream:  FOUND\0"), unknown("stream:  FOUND"));
        assert_eq!(parse_scan_reply(b"stream: Two Words FOUND\0"), unknown("stream: Two Words FOUND"));
        // An IDSESSION-style prefix is not part of the protocol clamgate speaks.
        assert_eq!(parse_scan_reply(b"1: stream: OK\0"), unknown("1: stream: OK"));
        // Two replies in one read: never take the first as the answer.
        assert_eq!(
            parse_scan_reply(b"stream: OK\0stream: X FOUND\0"),
            unknown("stream: OK\0stream: X FOUND")
        );
        assert_eq!(parse_scan_reply(b"stream: OK\nmore\n"), unknown("stream: OK\nmore"));
    }

    #[test]
    fn non_utf8_reply_is_unknown() {
        assert!(matches!(parse_scan_reply(b"stream: \xff\xfe FOUND\0"), ScanReply::Unknown { .. }));
        assert!(matches!(parse_scan_reply(b"stream: OK\xff\0"), ScanReply::Unknown { .. }));
    }

    #[test]
    fn only_stream_ok_is_clean() {
        let replies: [&[u8]; 12] = [
            b"stream: OK\0",
            b"stream: Test.Eicar.Body.UNOFFICIAL FOUND\0",
            b"stream: Heuristics.Limits.Exceeded.MaxScanSize FOUND\0",
            b"stream: Heuristics.Encrypted.Zip FOUND\0",
            b"INSTREAM size limit exceeded. ERROR\0",
            b"stream: Can't allocate memory ERROR\0",
            b"Error writing to temporary file ERROR\0",
            b"COMMAND READ TIMED OUT\n",
            b"UNKNOWN COMMAND\0",
            b"",
            b"stream: OK\0stream: OK\0",
            b"\xff\xff",
        ];
        let clean: Vec<_> =
            replies.iter().filter(|raw| parse_scan_reply(raw).into_verdict() == Verdict::Clean).collect();
        assert_eq!(clean, vec![&&b"stream: OK\0"[..]]);
    }

    #[test]
    fn verdict_mapping() {
        let unscanned = |reason| Verdict::Unscanned { reason };
        assert_eq!(ScanReply::Clean.into_verdict(), Verdict::Clean);
        assert_eq!(
            found("Test.Eicar.Body.UNOFFICIAL").into_verdict(),
            Verdict::Infected { signature: "Test.Eicar.Body.UNOFFICIAL".to_string() }
        );
        assert_eq!(
            found("Heuristics.Limits.Exceeded.MaxFileSize").into_verdict(),
            unscanned(UnscannedReason::LimitsExceeded)
        );
        assert_eq!(found("Heuristics.Encrypted.Zip").into_verdict(), unscanned(UnscannedReason::Encrypted));
        assert_eq!(found("Heuristics.Encrypted.PDF").into_verdict(), unscanned(UnscannedReason::Encrypted));
        // Other heuristics are detections.
        assert_eq!(
            found("Heuristics.Broken.Executable").into_verdict(),
            Verdict::Infected { signature: "Heuristics.Broken.Executable".to_string() }
        );
        assert_eq!(ScanReply::SizeLimitExceeded.into_verdict(), unscanned(UnscannedReason::TooLarge));
        assert_eq!(
            ScanReply::Error { message: "Can't allocate memory".to_string() }.into_verdict(),
            unscanned(UnscannedReason::EngineError)
        );
        assert_eq!(ScanReply::ReadTimedOut.into_verdict(), unscanned(UnscannedReason::Timeout));
        assert_eq!(unknown("UNKNOWN COMMAND").into_verdict(), unscanned(UnscannedReason::EngineError));
    }

    #[test]
    fn version_without_daily_database() {
        let version = parse_version(b"ClamAV 1.4.6\0").unwrap();
        assert_eq!(
            version,
            EngineVersion { engine: "1.4.6".to_string(), database_version: None, database_date: None }
        );
        assert_eq!(parse_version(b"ClamAV 1.4.6\n").unwrap().engine, "1.4.6");
        assert_eq!(parse_version(b"ClamAV 0.103.12").unwrap().engine, "0.103.12");
        assert_eq!(parse_version(b"ClamAV 1.5.0-rc\0").unwrap().engine, "1.5.0-rc");
    }

    #[test]
    fn version_with_daily_database() {
        let version = parse_version(b"ClamAV 1.4.6/27000/Sat Nov 21 14:40:36 2026\0").unwrap();
        assert_eq!(
            version,
            EngineVersion {
                engine: "1.4.6".to_string(),
                database_version: Some(27000),
                database_date: Some("Sat Nov 21 14:40:36 2026".to_string()),
            }
        );
    }

    #[test]
    fn malformed_versions_are_errors() {
        let bad: [&[u8]; 13] = [
            b"",
            b"\0",
            b"PONG\0",
            b"ClamAV\0",
            b"ClamAV \0",
            b"clamav 1.4.6\0",
            b"ClamAV x.y\0",
            b"ClamAV 1.4.6/27000\0",
            b"ClamAV 1.4.6/abc/Sat Nov 21 14:40:36 2026\0",
            b"ClamAV 1.4.6/-1/Sat Nov 21 14:40:36 2026\0",
            b"ClamAV 1.4.6/27000/\0",
            b"ClamAV 1.4.6 extra\0",
            b"ClamAV 1.4.\xff\0",
        ];
        for raw in bad {
            assert!(
                matches!(parse_version(raw), Err(ProtocolError::MalformedVersion { .. })),
                "{raw:?} parsed as {:?}",
                parse_version(raw)
            );
        }
    }

    #[test]
    fn pong() {
        assert!(is_pong(b"PONG\0"));
        assert!(is_pong(b"PONG\n"));
        assert!(is_pong(b"PONG"));
        assert!(!is_pong(b"PONG!\0"));
        assert!(!is_pong(b"UNKNOWN COMMAND\0"));
        assert!(!is_pong(b""));
    }
}
