//! Scanning bodies that a test has whole in memory, through the one scan path
//! (`Scanner::scan_held`): the body is held in a spool of its own first, as a front door would.

use std::sync::Arc;

use clamgate::config::CacheMode;
use clamgate::decode::Encoding;
use clamgate::metrics::{Metrics, Source};
use clamgate::scanner::{ScanReport, Scanner};
use clamgate::spool::Spool;

/// Room enough for any body a test scans, all in memory.
const TEST_SPOOL_BYTES: u64 = 1 << 30;

/// `scan_body` on a [`Scanner`]: holds `body`, then scans it with `Scanner::scan_held`.
#[allow(async_fn_in_trait)]
pub trait ScanBytes {
    async fn scan_body(
        &self,
        body: &[u8],
        encodings: &[Encoding],
        source: Source,
        mode: CacheMode,
    ) -> ScanReport;
}

impl ScanBytes for Scanner {
    async fn scan_body(
        &self,
        body: &[u8],
        encodings: &[Encoding],
        source: Source,
        mode: CacheMode,
    ) -> ScanReport {
        let spool =
            Spool::new(TEST_SPOOL_BYTES, TEST_SPOOL_BYTES, std::env::temp_dir(), Arc::new(Metrics::new()));
        let mut held = spool.hold();
        held.push(bytes::Bytes::copy_from_slice(body)).await.expect("a test body fits in memory");
        self.scan_held(&held, encodings, source, mode, None).await
    }
}
