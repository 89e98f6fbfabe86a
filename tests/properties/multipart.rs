//! The multipart parser: a form built from any parts splits back into exactly those parts
//! however the body arrived in pieces; any bytes at all split the same way (or fail the same way)
//! whatever the pieces, never panicking and never past the part limit.

use std::sync::Arc;

use clamgate::metrics::Metrics;
use clamgate::multipart::{split, Limits};
use clamgate::spool::{HeldBody, Spool};
use proptest::prelude::*;

fn spool() -> Spool {
    Spool::new(1 << 26, 1 << 20, std::env::temp_dir(), Arc::new(Metrics::new()))
}

async fn held(spool: &Spool, pieces: &[Vec<u8>]) -> HeldBody {
    let mut body = spool.hold();
    for piece in pieces {
        body.push(bytes::Bytes::from(piece.clone())).await.expect("hold");
    }
    body
}

async fn contents(body: &HeldBody) -> Vec<u8> {
    let mut out = Vec::new();
    while (out.len() as u64) < body.len() {
        let piece = body.read_at(out.len() as u64, 64 * 1024).await.expect("read back");
        assert!(!piece.is_empty());
        out.extend_from_slice(&piece);
    }
    out
}

/// A part as split: its field, its file name and its bytes.
type SplitPart = (Option<String>, Option<String>, Vec<u8>);

/// Splits `pieces` as one body: each part, or the error's text.
fn split_pieces(pieces: &[Vec<u8>], boundary: &str, limits: Limits) -> Result<Vec<SplitPart>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    runtime.block_on(async {
        let spool = spool();
        let body = held(&spool, pieces).await;
        let parts = split(&body, boundary, &spool, limits).await.map_err(|err| err.to_string())?;
        assert!(parts.len() <= limits.max_parts, "more parts than the limit");
        let mut out = Vec::new();
        for part in parts {
            let bytes = contents(&part.body).await;
            out.push((part.field, part.filename, bytes));
        }
        Ok(out)
    })
}

fn cut(bytes: &[u8], cuts: &[u16]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| *c as usize * bytes.len() / u16::MAX as usize).collect();
    points.extend([0, bytes.len()]);
    points.sort_unstable();
    points.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

const BOUNDARY: &str = "----propBoundary7MA4YWxk";

fn form(parts: &[(String, String, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, filename, data) in parts {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Part data: any bytes, with boundary-looking text mixed in (never a whole delimiter line).
fn data() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 0..40),
            1 => Just(b"--".to_vec()),
            1 => Just(BOUNDARY.as_bytes().to_vec()),
            1 => Just(b"\r\n".to_vec()),
        ],
        0..8,
    )
    .prop_map(|pieces| pieces.concat())
    .prop_filter("a delimiter line inside data ends the part", |data| {
        !data.windows(BOUNDARY.len() + 4).any(|w| w.starts_with(b"\r\n--") && &w[4..] == BOUNDARY.as_bytes())
            && !data.starts_with(format!("--{BOUNDARY}").as_bytes())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn a_form_splits_back_into_its_parts_however_it_arrives(
        parts in prop::collection::vec(("[a-z]{1,8}", "[a-z]{1,8}\\.bin", data()), 1..6),
        cuts in prop::collection::vec(any::<u16>(), 0..10),
    ) {
        let body = form(&parts);
        let split = split_pieces(&cut(&body, &cuts), BOUNDARY, Limits::default());
        let split = split.map_err(|err| TestCaseError::fail(format!("a valid form failed: {err}")))?;
        prop_assert_eq!(split.len(), parts.len());
        for ((field, filename, data), (got_field, got_filename, got)) in parts.iter().zip(split) {
            prop_assert_eq!(Some(field.clone()), got_field);
            prop_assert_eq!(Some(filename.clone()), got_filename);
            prop_assert!(data == &got, "part data changed");
        }
    }

    #[test]
    fn any_bytes_split_the_same_whatever_the_pieces(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        valid_start in any::<bool>(),
        cuts in prop::collection::vec(any::<u16>(), 1..8),
        max_parts in 1usize..4,
    ) {
        let bytes = if valid_start { [format!("--{BOUNDARY}\r\n").into_bytes(), bytes].concat() } else { bytes };
        let limits = Limits { max_parts, max_depth: 2 };
        let whole = split_pieces(std::slice::from_ref(&bytes), BOUNDARY, limits);
        let pieces = split_pieces(&cut(&bytes, &cuts), BOUNDARY, limits);
        prop_assert_eq!(whole, pieces);
    }
}
