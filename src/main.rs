//! The `clamgate` binary: parse the command line, load config, start tracing, run, wait.
//!
//! Exit codes: 0 success; 64 bad configuration or usage (nothing was bound); 69 a listener could
//! not be bound; 1 a runtime failure. `clamgate scan`: 0 all clean, 1 something infected,
//! 2 something could not be scanned.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio::io::AsyncReadExt;

use clamgate::config::{Config, LogFormat};
use clamgate::metrics::{Metrics, Source};
use clamgate::spool::Spool;
use clamgate::verdict::Verdict;

const EXIT_CONFIG: u8 = 64;
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(name = "clamgate", version, about = "ClamAV in the path of HTTP traffic (Envoy ext_proc)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ext_proc, the Scan API and gRPC health, plus the admin HTTP listener.
    Serve {
        /// TOML config file; every key can be overridden by a CLAMGATE_* variable.
        #[arg(long, env = "CLAMGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Load and validate the config, print every problem, and exit (64 when invalid).
    CheckConfig {
        #[arg(long, env = "CLAMGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Scan files with the configured clamd and verdict cache.
    Scan {
        #[arg(long, env = "CLAMGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Files to scan.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = match &cli.command {
        Command::Serve { config } | Command::CheckConfig { config } | Command::Scan { config, .. } => {
            config.clone()
        }
    };
    let config = match load_config(config_path.as_deref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Command::CheckConfig { .. } = cli.command {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    init_tracing(&config);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("clamgate: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve { .. } => runtime.block_on(serve(config)),
        Command::Scan { files, .. } => runtime.block_on(scan_files(config, files)),
        Command::CheckConfig { .. } => ExitCode::SUCCESS,
    }
}

fn load_config(path: Option<&Path>) -> Result<Config, ExitCode> {
    let mut env = Vec::new();
    for (key, value) in std::env::vars_os() {
        match (key.into_string(), value.into_string()) {
            (Ok(key), Ok(value)) => env.push((key, value)),
            // A setting that cannot be read must not be silently dropped.
            (Ok(key), Err(_)) if key.starts_with(clamgate::config::ENV_PREFIX) => {
                eprintln!("clamgate: invalid configuration:\n{key}: the value is not valid UTF-8");
                return Err(ExitCode::from(EXIT_CONFIG));
            }
            // Other variables are none of clamgate's business.
            _ => {}
        }
    }
    Config::load(path, env).map_err(|errors| {
        eprintln!("clamgate: invalid configuration:");
        eprintln!("{errors}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(config: Config) -> ExitCode {
    let grpc = match tokio::net::TcpListener::bind(config.listen.grpc_addr).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(addr = %config.listen.grpc_addr, error = %err, "cannot bind listen.grpc_addr");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let admin = match tokio::net::TcpListener::bind(config.listen.admin_addr).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(addr = %config.listen.admin_addr, error = %err, "cannot bind listen.admin_addr");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    tracing::info!(
        grpc_addr = %config.listen.grpc_addr,
        admin_addr = %config.listen.admin_addr,
        clamd = %config.clamd.address,
        cache = %cache_description(&config),
        version = env!("CARGO_PKG_VERSION"),
        "clamgate starting"
    );
    match clamgate::app::run(config, clamgate::app::Listeners { grpc, admin }, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("clamgate stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %err, "clamgate failed");
            ExitCode::FAILURE
        }
    }
}

/// The cache in use, for the start-up log line (passwords redacted).
fn cache_description(config: &Config) -> String {
    let endpoints = config.redacted_redis_endpoints();
    if endpoints.is_empty() {
        "memory".to_string()
    } else {
        format!("memory + {}", endpoints.join(","))
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

async fn scan_files(config: Config, files: Vec<PathBuf>) -> ExitCode {
    let metrics = Arc::new(Metrics::new());
    let scanner = match clamgate::app::build_scanner(&config, metrics.clone()) {
        Ok(scanner) => scanner,
        Err(err) => {
            eprintln!("clamgate: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Ok(version) = scanner.clamd().version().await {
        scanner.set_engine_version(version);
    }
    // Files are held like Scan API bodies (memory, then temp files) and scanned whole.
    let bodies = &config.bodies;
    let spool =
        Spool::new(bodies.memory_budget_bytes, bodies.stream_memory_bytes, bodies.spool_dir(), metrics)
            .with_disk_budget(bodies.disk_budget_bytes);
    let mut worst = 0u8;
    for path in files {
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(err) => {
                println!("{}: error: {err}", path.display());
                worst = worst.max(2);
                continue;
            }
        };
        let mut scan = scanner.streaming(Source::api, spool.hold());
        let mut buffer = vec![0u8; 256 * 1024];
        let mut read_error = None;
        loop {
            let held = match file.read(&mut buffer).await {
                Ok(0) => break,
                Ok(n) => scan.push(bytes::Bytes::copy_from_slice(&buffer[..n])).await,
                Err(err) => Err(err),
            };
            if let Err(err) = held {
                read_error = Some(err);
                break;
            }
        }
        if let Some(err) = read_error {
            println!("{}: error: {err}", path.display());
            worst = worst.max(2);
            continue;
        }
        let report = scan.finish().await;
        let (line, code) = match &report.verdict {
            Verdict::Clean => ("clean".to_string(), 0),
            Verdict::Infected { signature } => (format!("infected {signature}"), 1),
            Verdict::Unscanned { reason } => (format!("unscanned {reason}"), 2),
        };
        println!(
            "{}: {line} sha256={}{}",
            path.display(),
            report.sha256,
            if report.cached { " (cached)" } else { "" }
        );
        worst = if code == 1 || worst == 1 { 1 } else { worst.max(code) };
    }
    ExitCode::from(worst)
}
