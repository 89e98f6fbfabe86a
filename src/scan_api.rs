//! clamgate's own gRPC scan API (`clamgate.v1.Scanner/Scan`): chunks in, verdict out, through
//! the same scan path and verdict cache as ext_proc.
//!
//! The body is held (memory within `bodies.memory_budget_bytes`, shared with ext_proc, then a
//! temp file) until the client ends its stream, and only then scanned: a slow or stalled client
//! never holds a clamd slot. Receiving is bounded like a scan: the client must have sent the
//! whole body within `scan.timeout_ms` plus `scan.timeout_per_mib_ms` per MiB received (up to
//! `scan.max_scan_bytes`), counted from the call's start; past that the answer is
//! `Unscanned { timeout }`. The scan of the complete body then has the same whole-scan deadline
//! as an ext_proc scan.

use std::sync::Arc;

use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::Source;
use crate::proto::clamgate::v1::scanner_server::Scanner as ScannerApi;
use crate::proto::clamgate::v1::{ScanChunk, ScanResult, Verdict as ApiVerdict};
use crate::scanner::{ScanReport, Scanner};
use crate::spool::{Spool, SpoolFull};
use crate::verdict::Verdict;

pub use crate::proto::clamgate::v1::scanner_server::ScannerServer;

/// The `clamgate.v1.Scanner` service.
#[derive(Clone)]
pub struct ScanService {
    scanner: Arc<Scanner>,
    spool: Spool,
}

impl ScanService {
    /// The service, holding bodies in `spool` (share ext_proc's, so one memory budget bounds both).
    pub fn new(scanner: Arc<Scanner>, spool: Spool) -> ScanService {
        ScanService { scanner, spool }
    }
}

#[tonic::async_trait]
impl ScannerApi for ScanService {
    async fn scan(&self, request: Request<Streaming<ScanChunk>>) -> Result<Response<ScanResult>, Status> {
        let started = Instant::now();
        let mut chunks = request.into_inner();
        let mut scan = self.scanner.streaming(Source::Api, self.spool.hold());
        // A client that breaks off mid-body gets its error back and no verdict is reached; the
        // held body is dropped with the scan.
        loop {
            let chunk = match tokio::time::timeout_at(scan.receive_deadline(started), chunks.message()).await
            {
                Ok(chunk) => chunk?,
                Err(_) => {
                    tracing::warn!(
                        bytes = scan.body_bytes(),
                        "Scan API client did not send its whole body within scan.timeout_ms (+ scan.timeout_per_mib_ms per MiB)"
                    );
                    return Ok(Response::new(scan_result(&scan.timed_out())));
                }
            };
            let Some(chunk) = chunk else { break };
            scan.push(chunk.data.into()).await.map_err(|err| {
                tracing::warn!(error = %err, "cannot hold a Scan API body");
                if SpoolFull::is(&err) {
                    Status::resource_exhausted("clamgate cannot hold more bodies now; retry later")
                } else {
                    Status::internal("clamgate cannot hold the body")
                }
            })?;
        }
        Ok(Response::new(scan_result(&scan.finish().await)))
    }
}

/// The API's view of a scan report.
pub fn scan_result(report: &ScanReport) -> ScanResult {
    let (verdict, signature, unscanned_reason) = match &report.verdict {
        Verdict::Clean => (ApiVerdict::Clean, String::new(), String::new()),
        Verdict::Infected { signature } => (ApiVerdict::Infected, signature.clone(), String::new()),
        Verdict::Unscanned { reason } => (ApiVerdict::Unscanned, String::new(), reason.as_str().to_string()),
    };
    let engine = report.engine.clone().unwrap_or_default();
    ScanResult {
        verdict: verdict as i32,
        signature,
        sha256: report.sha256.clone(),
        database_version: engine.database_version.map(|v| v.to_string()).unwrap_or_default(),
        unscanned_reason,
        engine_version: engine.engine,
        cached: report.cached,
    }
}
