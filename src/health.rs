//! The clamd probe: pings clamd, asks its version and scans a self-test sample on an interval,
//! and publishes the result to gRPC health, `/readyz` and metrics.
//!
//! "Ready" means a clamd answered *and* detected the EICAR test string: a clamd that answers
//! but has lost its signatures is not ready (peers bug #10).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::clamd::ClamdClient;
use crate::metrics::Metrics;
use crate::scanner::Scanner;
use crate::verdict::Verdict;

/// The gRPC health service name Envoy checks (`grpc_health_check.service_name`).
pub const EXT_PROC_SERVICE_NAME: &str = "envoy.service.ext_proc.v3.ExternalProcessor";
/// The gRPC health service name of clamgate's own scan API.
pub const SCAN_API_SERVICE_NAME: &str = "clamgate.v1.Scanner";

/// Every gRPC health service name clamgate reports; `""` is the server as a whole.
const HEALTH_SERVICES: [&str; 3] = ["", EXT_PROC_SERVICE_NAME, SCAN_API_SERVICE_NAME];

/// Readiness shared with the admin listener.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// The EICAR anti-virus test string, assembled at run time so no file in the repository holds it.
pub fn eicar_test_string() -> Vec<u8> {
    let parts = ["X5O!P%@AP[4\\PZX54(P^)7CC)7}", "$EICAR-STANDARD-ANTIVIRUS", "-TEST-FILE!$H+H*"];
    parts.concat().into_bytes()
}

/// One probe: ping, version, self-test. Returns whether clamd is usable.
pub async fn probe_once(scanner: &Scanner, metrics: &Metrics) -> bool {
    let clamd: &ClamdClient = scanner.clamd();
    let version = match clamd.ping().await {
        Ok(()) => clamd.version().await,
        Err(err) => Err(err),
    };
    let version = match version {
        Ok(version) => version,
        Err(err) => {
            tracing::debug!(error = %err, "clamd did not answer PING or VERSION");
            metrics.record_probe(false, None);
            return false;
        }
    };
    let database_version = version.database_version;
    scanner.set_engine_version(version);
    let detects = match clamd.scan_bytes(&eicar_test_string()).await.map(|reply| reply.into_verdict()) {
        Ok(Verdict::Infected { .. }) => true,
        Ok(other) => {
            tracing::warn!(verdict = other.label(), "clamd did not detect the EICAR self-test sample");
            false
        }
        Err(err) => {
            tracing::debug!(error = %err, "clamd self-test scan failed");
            false
        }
    };
    metrics.record_probe(detects, database_version);
    detects
}

/// Probes forever on `interval`, publishing transitions. Stops when `shutdown` resolves.
pub async fn run_probe(
    scanner: Arc<Scanner>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    reporter: HealthReporter,
    interval: Duration,
) {
    let mut previous: Option<bool> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let usable = probe_once(&scanner, &metrics).await;
        readiness.set(usable);
        if previous != Some(usable) {
            let status = if usable { ServingStatus::Serving } else { ServingStatus::NotServing };
            for service in HEALTH_SERVICES {
                reporter.set_service_status(service, status).await;
            }
            if usable {
                let engine = scanner.engine_version().unwrap_or_default();
                tracing::info!(engine = %engine.engine, database_version = engine.database_version.unwrap_or(0), "clamd is usable; serving");
            } else {
                tracing::warn!("no usable clamd; reporting NOT_SERVING");
            }
            previous = Some(usable);
        }
    }
}

/// Marks every service NOT_SERVING (at shutdown, so Envoy drains this instance first).
pub async fn set_not_serving(reporter: &HealthReporter) {
    for service in HEALTH_SERVICES {
        reporter.set_service_status(service, ServingStatus::NotServing).await;
    }
}
