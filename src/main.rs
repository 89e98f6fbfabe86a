//! The `clamgate` binary: parse the command line, load config, start tracing, run, wait.
//!
//! Exit codes: 0 success; 64 bad configuration or usage (nothing was bound); 69 a listener could
//! not be bound; 1 a runtime failure. `clamgate scan`: 0 all clean, 1 something infected,
//! 2 something could not be scanned.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use clamgate::config::{Config, LogFormat};

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
        // Valid but weakening security or failing open: shown, not fatal.
        for warning in config.warnings() {
            eprintln!("clamgate: warning: {warning}");
        }
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
        Command::Scan { files, .. } => {
            match runtime.block_on(clamgate::scan_files::scan_files(&config, &files)) {
                Ok(outcome) => ExitCode::from(outcome.exit_code()),
                Err(err) => {
                    eprintln!("clamgate: {err}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
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
    let http = match config.listen.http_addr {
        None => None,
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(err) => {
                tracing::error!(addr = %addr, error = %err, "cannot bind listen.http_addr");
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        },
    };
    tracing::info!(
        grpc_addr = %config.listen.grpc_addr,
        http_addr = ?config.listen.http_addr,
        http_token = config.listen.http_token_file.is_some(),
        grpc_auth = config.listen.grpc_auth_description(),
        grpc_tls = config.listen.grpc_tls_cert_file.is_some(),
        admin_addr = %config.listen.admin_addr,
        clamd = %config.clamd.address,
        cache = %cache_description(&config),
        version = env!("CARGO_PKG_VERSION"),
        "clamgate starting"
    );
    match clamgate::app::run(config, clamgate::app::Listeners { grpc, admin, http }, shutdown_signal()).await
    {
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
