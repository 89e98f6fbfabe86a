//! The `clamd-direct` scenario: the bench scans a new body of each size with clamd itself, the
//! floor of a miss. Each worker holds one body and stamps a new name into its first bytes before
//! every scan (clamd keeps an MD5 cache of clean files: a body it has seen would only be hashed),
//! then sends it with `clamgate::clamd::ClamdClient` (`zINSTREAM\0`, a new connection per scan,
//! over the same socket clamgate is given: TCP, or clamd's unix socket); only `stream: OK` counts.

use std::sync::Arc;
use std::time::Duration;

use clamgate::clamd::{ClamdAddress, ClamdClient, ClamdTimeouts, ScanReply};

use crate::load::Worker;
use crate::upstream::{seeded_bytes, unique_name};

/// One client of clamd with a body of its own.
pub struct ClamdWorker {
    clamd: Arc<ClamdClient>,
    body: Vec<u8>,
    run: u64,
    series: usize,
    /// Added to each request's number (the measured phase follows the warm-up's numbers).
    pub offset: u64,
}

impl Worker for ClamdWorker {
    async fn one(&mut self, i: u64) -> Result<u64, String> {
        let size = self.body.len();
        let stamp = unique_name(self.run, self.series, size, self.offset + i);
        let len = stamp.len().min(size);
        self.body[..len].copy_from_slice(&stamp.as_bytes()[..len]);
        match self.clamd.scan_bytes(&self.body).await {
            Ok(ScanReply::Clean) => Ok(size as u64),
            Ok(other) => Err(format!("clamd answered {other:?}, expected stream: OK")),
            Err(err) => Err(format!("clamd: {err}")),
        }
    }
}

/// `concurrency` workers scanning `size`-byte bodies of series `series` with the clamd at
/// `address` (as clamgate's config names it).
pub fn workers(
    address: &str,
    size: usize,
    concurrency: usize,
    run: u64,
    series: usize,
) -> Result<Vec<ClamdWorker>, String> {
    let address: ClamdAddress = address.parse().map_err(|err| format!("clamd address: {err}"))?;
    let timeouts = ClamdTimeouts {
        connect: Duration::from_secs(5),
        write: Duration::from_secs(30),
        reply: Duration::from_secs(60),
    };
    let clamd = Arc::new(ClamdClient::new(address, timeouts));
    Ok((0..concurrency.max(1))
        .map(|worker| ClamdWorker {
            clamd: clamd.clone(),
            body: seeded_bytes(size, 1 + worker as u64),
            run,
            series,
            offset: 0,
        })
        .collect())
}
