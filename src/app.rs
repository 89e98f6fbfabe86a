//! Wires clamgate together on already-bound listeners: `main` and every test use this entry
//! point, tests with listeners on port 0.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::ServerTlsConfig;

use crate::cache::{CacheError, VerdictCache};
use crate::clamd::{ClamdClient, ClamdTimeouts};
use crate::config::Config;
use crate::ext_proc::{ExtProcService, ExternalProcessorServer};
use crate::fetch::Fetcher;
use crate::grpc_auth::{server_tls, Authenticator, SharedToken};
use crate::health::{self, Readiness};
use crate::heap;
use crate::http_api::HttpState;
use crate::metrics::Metrics;
use crate::policy::Policies;
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
    /// `/v1/auth` for nginx, when `listen.http_addr` is set.
    pub http: Option<TcpListener>,
}

/// Why clamgate could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cache: {0}")]
    Cache(#[from] CacheError),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("admin server: {0}")]
    Admin(#[from] std::io::Error),
    #[error("HTTP listener: {0}")]
    Http(std::io::Error),
    /// `[fetch]` could not be used (a CA file).
    #[error("{0}")]
    Fetch(String),
    /// The token or TLS files of the gRPC listener (`listen.grpc_*`) could not be used.
    #[error("{key}: {message}")]
    GrpcAuth { key: &'static str, message: String },
}

/// Builds the scan path (clamd client, cache, scanner) from the config.
pub fn build_scanner(config: &Config, metrics: Arc<Metrics>) -> Result<Scanner, AppError> {
    let cache = VerdictCache::from_config(&config.cache)?;
    let clamd = ClamdClient::new(config.clamd.address.clone(), ClamdTimeouts::from_config(&config.clamd));
    Ok(Scanner::new(clamd, cache, ScannerSettings::from_config(config), metrics))
}

/// The shared token of the gRPC listener, if `listen.grpc_token_file` is set.
fn grpc_token(config: &Config) -> Result<Option<Arc<SharedToken>>, AppError> {
    let Some(path) = &config.listen.grpc_token_file else { return Ok(None) };
    let token = SharedToken::from_file(path)
        .map_err(|message| AppError::GrpcAuth { key: "listen.grpc_token_file", message })?;
    Ok(Some(Arc::new(token)))
}

/// The shared token of the HTTP listener, if `listen.http_token_file` is set.
fn http_token(config: &Config) -> Result<Option<Arc<SharedToken>>, AppError> {
    let Some(path) = &config.listen.http_token_file else { return Ok(None) };
    let token = SharedToken::from_file(path)
        .map_err(|message| AppError::GrpcAuth { key: "listen.http_token_file", message })?;
    Ok(Some(Arc::new(token)))
}

/// The bearer token of `POST /v1/scan`: `listen.http_scan_token_file`, else the HTTP listener's.
fn http_scan_token(
    config: &Config,
    listener_token: &Option<Arc<SharedToken>>,
) -> Result<Option<Arc<SharedToken>>, AppError> {
    let Some(path) = &config.listen.http_scan_token_file else { return Ok(listener_token.clone()) };
    let token = SharedToken::from_file(path)
        .map_err(|message| AppError::GrpcAuth { key: "listen.http_scan_token_file", message })?;
    Ok(Some(Arc::new(token)))
}

/// The gRPC listener's TLS (and mTLS) settings, if `listen.grpc_tls_cert_file` is set.
fn grpc_tls(config: &Config) -> Result<Option<ServerTlsConfig>, AppError> {
    let listen = &config.listen;
    let (Some(cert), Some(key)) = (&listen.grpc_tls_cert_file, &listen.grpc_tls_key_file) else {
        return match (&listen.grpc_tls_cert_file, &listen.grpc_tls_key_file, &listen.grpc_tls_client_ca_file)
        {
            (None, None, None) => Ok(None),
            // `Config::validate` refuses these; a config built in code must not fall back to
            // plaintext when it asked for TLS.
            _ => Err(AppError::GrpcAuth {
                key: "listen.grpc_tls_cert_file",
                message: "listen.grpc_tls_cert_file and listen.grpc_tls_key_file must be set together \
                          (and with listen.grpc_tls_client_ca_file)"
                    .to_string(),
            }),
        };
    };
    let tls = server_tls(cert, key, listen.grpc_tls_client_ca_file.as_deref())
        .map_err(|message| AppError::GrpcAuth { key: "listen.grpc_tls_cert_file", message })?;
    Ok(Some(tls))
}

/// Runs clamgate until `shutdown` resolves, then reports NOT_SERVING, drains and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    // The listener's token and TLS files first: a failure here must leave nothing running.
    let token = grpc_token(&config)?;
    let tls = grpc_tls(&config)?;
    let http_token = http_token(&config)?;
    let http_scan_token = http_scan_token(&config, &http_token)?;
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
        config.clamd.health_interval(),
        health::SettingsCheck::new(
            config.clamd.require_alert_settings,
            config.clamd.settings_check_interval(),
        ),
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let ext_proc_service = ExtProcService::new(scanner.clone(), Arc::new(config.clone()), metrics.clone());
    let spool = ext_proc_service.spool();
    let heap_task = tokio::spawn(heap::run(spool.budget.clone(), metrics.clone()));
    let ext_proc = ExternalProcessorServer::new(ext_proc_service)
        .max_decoding_message_size(config.ext_proc.max_message_bytes);
    // Both services write verdicts: a call without the token is refused before its first
    // message is read. grpc.health.v1 stays open (see `grpc_auth`).
    let ext_proc =
        InterceptedService::new(ext_proc, Authenticator::new(token.clone(), "ext_proc", metrics.clone()));
    let http_state = match &listeners.http {
        None => None,
        Some(_) => {
            let fetcher =
                Fetcher::from_config(&config.fetch, scanner.clone(), spool.clone(), metrics.clone())
                    .map_err(AppError::Fetch)?;
            Some(HttpState {
                scanner: scanner.clone(),
                spool: spool.clone(),
                fetcher: Arc::new(fetcher),
                policies: Arc::new(Policies::from_config(&config)),
                metrics: metrics.clone(),
                token: http_token,
                scan_token: http_scan_token,
            })
        }
    };
    let scan_api = ScannerServer::new(ScanService::new(scanner.clone(), spool))
        .max_decoding_message_size(config.ext_proc.max_message_bytes);
    let scan_api = InterceptedService::new(scan_api, Authenticator::new(token, "scan_api", metrics.clone()));

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
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(|err| AppError::GrpcAuth {
            key: "listen.grpc_tls_cert_file",
            message: err.to_string(),
        })?;
    }
    let grpc = builder
        .initial_stream_window_size(stream_window)
        .initial_connection_window_size(stream_window.saturating_mul(4))
        .add_service(health_service)
        .add_service(ext_proc)
        .add_service(scan_api)
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
    let admin =
        crate::admin::serve(listeners.admin, metrics.clone(), readiness.clone(), stopped(stop_rx.clone()));
    let http = async {
        match (listeners.http, http_state) {
            (Some(listener), Some(state)) => {
                crate::http_api::serve(listener, state, stopped(stop_rx)).await.map_err(AppError::Http)
            }
            _ => Ok(()),
        }
    };

    let servers = async {
        tokio::try_join!(
            async { grpc.await.map_err(AppError::from) },
            async { admin.await.map_err(AppError::from) },
            http
        )
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
    heap_task.abort();
    result
}
