//! clamd's reply parsers on any bytes: never a panic, and only `stream: OK` (`fd[N]: OK`) is
//! clean.
#![no_main]

use clamgate::clamd::protocol::{parse_fildes_reply, parse_scan_reply};
use clamgate::verdict::Verdict;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &[u8]| {
    let mut end = raw.len();
    while end > 0 && matches!(raw[end - 1], b'\0' | b'\n') {
        end -= 1;
    }
    let trimmed = &raw[..end];
    let clean = parse_scan_reply(raw).into_verdict() == Verdict::Clean;
    assert_eq!(clean, trimmed == b"stream: OK", "{raw:?}");
    let fildes_ok = trimmed
        .strip_prefix(b"fd[")
        .and_then(|rest| rest.strip_suffix(b"]: OK"))
        .is_some_and(|digits| !digits.is_empty() && digits.iter().all(u8::is_ascii_digit));
    assert_eq!(parse_fildes_reply(raw).into_verdict() == Verdict::Clean, fildes_ok, "{raw:?}");
});
