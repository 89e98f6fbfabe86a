//! Wires clamgate together on already-bound listeners: `main` and every test use this entry
//! point, tests with listeners on port 0.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use crate::cache::{CacheError, VerdictCache};
use crate::clamd::{ClamdAddress, ClamdClient, ClamdTimeouts};
use crate::config::Config;
use crate::ext_proc::{ExtProcService, ExternalProcessorServer};
use crate::health::{self, Readiness};
use crate::metrics::Metrics;
use crate::scan_api::{ScanService, ScannerServer};
use crate::scanner::{Scanner, ScannerSettings};

/// How long in-flight streams may take to finish after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The listeners clamgate serves on, bound by the caller.
pub struct Listeners {
    /// ext_proc, the Scan API and grpc.health.v1.
    pub grpc: TcpListener,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin: TcpListener,
}

/// Why clamgate could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("clamd.address: {0}")]
    ClamdAddress(String),
    #[error("cache: {0}")]
    Cache(#[from] CacheError),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("admin server: {0}")]
    Admin(#[from] std::io::Error),
}

/// Builds the scan path (clamd client, cache, scanner) from the config.
pub fn build_scanner(config: &Config, metrics: Arc<Metrics>) -> Result<Scanner, AppError> {
    let address: ClamdAddress =
        config.clamd.address.parse().map_err(|err| AppError::ClamdAddress(format!("{err}")))?;
    let timeouts = ClamdTimeouts {
        connect: Duration::from_millis(config.clamd.connect_timeout_ms),
        write: Duration::from_millis(config.clamd.write_timeout_ms),
        reply: Duration::from_millis(config.clamd.reply_timeout_ms),
    };
    let cache = VerdictCache::from_config(&config.cache)?;
    let settings = ScannerSettings {
        max_scan_bytes: config.scan.max_scan_bytes,
        max_concurrent_scans: config.clamd.max_concurrent_scans,
        slot_wait: timeouts.reply,
        scan_timeout: Duration::from_millis(config.scan.timeout_ms),
        scan_timeout_per_mib: Duration::from_millis(config.scan.timeout_per_mib_ms),
        lock_ttl: Duration::from_millis(config.cache.lock_ttl_ms),
        max_decode_ratio: config.scan.decode_ratio_limit(),
        abandoned_scan_max_hold: Duration::from_millis(config.clamd.abandoned_scan_max_hold_ms),
        max_skipped_encoding_bytes: config.scan.max_skipped_encoding_bytes,
    };
    Ok(Scanner::new(ClamdClient::new(address, timeouts), cache, settings, metrics))
}

/// Runs clamgate until `shutdown` resolves, then reports NOT_SERVING, drains and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let metrics = Arc::new(Metrics::new());
    let scanner = Arc::new(build_scanner(&config, metrics.clone())?);
    let readiness = Arc::new(Readiness::default());
    let (reporter, health_service) = tonic_health::server::health_reporter();
    health::set_not_serving(&reporter).await;

    let probe = tokio::spawn(health::run_probe(
        scanner.clone(),
        metrics.clone(),
        readiness.clone(),
        reporter.clone(),
        Duration::from_millis(config.clamd.health_interval_ms),
        health::SettingsCheck::new(
            config.clamd.require_alert_settings,
            Duration::from_millis(config.clamd.settings_check_interval_ms),
        ),
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let ext_proc_service = ExtProcService::new(scanner.clone(), Arc::new(config.clone()), metrics.clone());
    let spool = ext_proc_service.spool();
    let ext_proc = ExternalProcessorServer::new(ext_proc_service)
        .max_decoding_message_size(config.ext_proc.max_message_bytes);
    let scan_api = ScannerServer::new(ScanService::new(scanner.clone(), spool))
        .max_decoding_message_size(config.ext_proc.max_message_bytes);

    let incoming = TcpListenerStream::new(listeners.grpc).map(|stream| {
        if let Ok(stream) = &stream {
            // Small ext_proc answers must not wait for Nagle.
            let _ = stream.set_nodelay(true);
        }
        stream
    });
    // A BUFFERED body is one gRPC message from Envoy: with h2's default 64 KiB receive window it
    // needs a window update round trip every 64 KiB. Windows as large as the largest message let
    // a body arrive in one flight; memory stays bounded by Envoy's buffer limit per stream.
    let stream_window = u32::try_from(config.ext_proc.max_message_bytes).unwrap_or(u32::MAX);
    let grpc = tonic::transport::Server::builder()
        .initial_stream_window_size(stream_window)
        .initial_connection_window_size(stream_window.saturating_mul(4))
        .add_service(health_service)
        .add_service(ext_proc)
        .add_service(scan_api)
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
    let admin = crate::admin::serve(listeners.admin, metrics.clone(), readiness.clone(), stopped(stop_rx));

    let servers = async {
        tokio::try_join!(async { grpc.await.map_err(AppError::from) }, async {
            admin.await.map_err(AppError::from)
        })
    };
    tokio::pin!(servers);
    let result = tokio::select! {
        result = &mut servers => result.map(|_| ()),
        () = shutdown => {
            tracing::info!("shutting down: reporting NOT_SERVING and draining");
            probe.abort();
            health::set_not_serving(&reporter).await;
            let _ = stop_tx.send(true);
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut servers).await {
                Ok(result) => result.map(|_| ()),
                Err(_) => {
                    tracing::warn!(grace_secs = SHUTDOWN_GRACE.as_secs(), "streams still open after the grace period; exiting");
                    Ok(())
                }
            }
        }
    };
    probe.abort();
    result
}
