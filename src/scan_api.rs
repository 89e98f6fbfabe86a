//! clamgate's own gRPC scan API (`clamgate.v1.Scanner/Scan`): chunks in, verdict out, through
//! the same scan path and verdict cache as ext_proc.

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use crate::metrics::Source;
use crate::proto::clamgate::v1::scanner_server::Scanner as ScannerApi;
use crate::proto::clamgate::v1::{ScanChunk, ScanResult, Verdict as ApiVerdict};
use crate::scanner::{ScanReport, Scanner};
use crate::verdict::Verdict;

pub use crate::proto::clamgate::v1::scanner_server::ScannerServer;

/// The `clamgate.v1.Scanner` service.
#[derive(Clone)]
pub struct ScanService {
    scanner: Arc<Scanner>,
}

impl ScanService {
    pub fn new(scanner: Arc<Scanner>) -> ScanService {
        ScanService { scanner }
    }
}

#[tonic::async_trait]
impl ScannerApi for ScanService {
    async fn scan(&self, request: Request<Streaming<ScanChunk>>) -> Result<Response<ScanResult>, Status> {
        let mut chunks = request.into_inner();
        let mut scan = self.scanner.streaming(Source::api);
        // A client that breaks off mid-body gets its error back and no verdict is reached; the
        // partial scan is dropped (its clamd connection closes with it).
        while let Some(chunk) = chunks.message().await? {
            scan.push(&chunk.data).await;
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
