//! clamd's reply parser: only `stream: OK` is clean, whatever else arrives; every reply clamd
//! can give reads back as what it says; no bytes make it panic.

use clamgate::clamd::protocol::{parse_fildes_reply, parse_scan_reply, ScanReply};
use clamgate::verdict::Verdict;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn only_stream_ok_is_clean(raw in prop::collection::vec(any::<u8>(), 0..80)) {
        let trimmed: &[u8] = {
            let mut end = raw.len();
            while end > 0 && matches!(raw[end - 1], b'\0' | b'\n') {
                end -= 1;
            }
            &raw[..end]
        };
        let clean = parse_scan_reply(&raw).into_verdict() == Verdict::Clean;
        prop_assert_eq!(clean, trimmed == b"stream: OK");
        let fildes_clean = parse_fildes_reply(&raw).into_verdict() == Verdict::Clean;
        let fildes_ok = trimmed.strip_prefix(b"fd[").and_then(|rest| rest.strip_suffix(b"]: OK"))
            .is_some_and(|digits| !digits.is_empty() && digits.iter().all(u8::is_ascii_digit));
        prop_assert_eq!(fildes_clean, fildes_ok);
    }

    #[test]
    fn a_found_reply_reads_back_its_signature(
        name in "[A-Za-z0-9][A-Za-z0-9._-]{0,40}",
        terminator in prop_oneof![Just(&b"\0"[..]), Just(&b"\n"[..]), Just(&b""[..])],
        fd in 1u32..100_000,
    ) {
        let reply = [format!("stream: {name} FOUND").into_bytes(), terminator.to_vec()].concat();
        let parsed = parse_scan_reply(&reply);
        prop_assert_eq!(&parsed, &ScanReply::Found { signature: name.clone() });
        let fildes = [format!("fd[{fd}]: {name} FOUND").into_bytes(), terminator.to_vec()].concat();
        prop_assert_eq!(parse_fildes_reply(&fildes), parsed);
    }

    #[test]
    fn two_replies_in_one_are_never_read_as_one(first in "[A-Za-z.]{1,12}", second in "[A-Za-z.]{1,12}") {
        let reply = format!("stream: OK\0stream: {first} FOUND\0{second}");
        let two_in_one = matches!(parse_scan_reply(reply.as_bytes()), ScanReply::Unknown { .. });
        prop_assert!(two_in_one, "read as one reply: {reply:?}");
    }
}
