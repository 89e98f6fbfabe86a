//! clamgate for the benchmark: the binary cargo built for this bench (release profile), run as
//! its own process with its own runtime, as in production. Killed on drop.

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::envoy::http_get;

/// The clamgate binary built with this bench (`cargo bench` builds it with the bench profile).
pub const BINARY: &str = env!("CARGO_BIN_EXE_clamgate");

/// The named policy the shipped `/mirror/` route selects (gRPC metadata `x-clamgate-policy`).
pub const MIRROR_POLICY: &str = "[policies.mirror]\ncache_mode = \"resource\"\n";

pub struct ClamgateProcess {
    child: Child,
    dir: tempfile::TempDir,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The HTTP listener for nginx (`/v1/auth`), with the harness's HTTP token.
    pub http_addr: Option<SocketAddr>,
}

/// Whether this clamgate accepts `config` (`clamgate check-config`): `Err` holds its message.
pub fn check_config(config: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|err| format!("temp dir: {err}"))?;
    let path = dir.path().join("clamgate.toml");
    fs::write(&path, config).map_err(|err| format!("write config: {err}"))?;
    let output = clean_command()
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .map_err(|err| format!("run {BINARY}: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let text =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        Err(text.trim().replace('\n', "; "))
    }
}

/// `clamgate --version`.
pub fn version() -> String {
    clean_command()
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_else(|err| format!("unknown ({err})"))
}

/// The clamgate binary without any `CLAMGATE_*` variable of the caller's environment: the
/// benchmark's config is the file it writes, nothing else. Run as the Dockerfile runs it, with
/// two glibc malloc arenas (`MALLOC_ARENA_MAX=2`, README "Running it"), unless the caller sets
/// `MALLOC_ARENA_MAX` itself.
fn clean_command() -> Command {
    let mut command = Command::new(BINARY);
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        command.env("MALLOC_ARENA_MAX", "2");
    }
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CLAMGATE_") {
            command.env_remove(key);
        }
    }
    command
}

/// The config the benchmark runs: clamgate's defaults, the given clamd and listeners, the test
/// harness's shared token (which the rendered envoy.yaml sends, so every stream is checked as in
/// production), warnings only in the log, and `extra` (a named policy, a Redis URL).
pub fn config_text(grpc: SocketAddr, admin: SocketAddr, clamd: &str, extra: &str) -> String {
    config_with_http(grpc, admin, None, clamd, extra)
}

/// As [`config_text`], with the HTTP listener on `http` (and the harness's HTTP token) if given.
fn config_with_http(
    grpc: SocketAddr,
    admin: SocketAddr,
    http: Option<SocketAddr>,
    clamd: &str,
    extra: &str,
) -> String {
    let token_file = crate::support::clamgate::test_token_file();
    let http = match http {
        Some(addr) => format!(
            "http_addr = \"{addr}\"\nhttp_token_file = {:?}\n",
            crate::support::nginx::http_token_file()
        ),
        None => String::new(),
    };
    format!(
        "# Written by benches/proxy: clamgate's defaults except for these keys.\n\
         [listen]\ngrpc_addr = \"{grpc}\"\nadmin_addr = \"{admin}\"\ngrpc_token_file = {token_file:?}\n{http}\n\
         [clamd]\naddress = \"{clamd}\"\n\n\
         [log]\nlevel = \"warn\"\n\n{extra}"
    )
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|err| format!("bind: {err}"))?;
    Ok(listener.local_addr().map_err(|err| format!("local_addr: {err}"))?.port())
}

impl ClamgateProcess {
    /// Starts `clamgate serve` on free loopback ports and waits for `/readyz` to answer 200.
    /// `extra` is appended to the config (see [`config_text`]).
    pub fn start(clamd: &str, extra: &str) -> Result<ClamgateProcess, String> {
        let mut last = String::new();
        // A port found free may be taken before clamgate binds it: try a few.
        for _ in 0..5 {
            let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
            let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
            let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
            if grpc == admin || http == grpc || http == admin {
                continue;
            }
            match ClamgateProcess::spawn(grpc, admin, http, clamd, extra) {
                Ok(process) => return Ok(process),
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    fn spawn(
        grpc: SocketAddr,
        admin: SocketAddr,
        http: SocketAddr,
        clamd: &str,
        extra: &str,
    ) -> Result<ClamgateProcess, String> {
        let dir = tempfile::Builder::new()
            .prefix("clamgate-bench-")
            .tempdir()
            .map_err(|err| format!("clamgate temp dir: {err}"))?;
        let config = dir.path().join("clamgate.toml");
        fs::write(&config, config_with_http(grpc, admin, Some(http), clamd, extra))
            .map_err(|err| format!("write config: {err}"))?;
        let log =
            File::create(dir.path().join("clamgate.log")).map_err(|err| format!("clamgate.log: {err}"))?;
        let child = clean_command()
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|err| format!("spawn {BINARY}: {err}"))?;
        let mut process =
            ClamgateProcess { child, dir, grpc_addr: grpc, admin_addr: admin, http_addr: Some(http) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(http_get(admin, "/readyz"), Ok((200, _))) {
                return Ok(process);
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                return Err(format!("clamgate exited ({status}) during start-up:\n{}", process.log_tail()));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "clamgate /readyz did not answer 200 within 30 s:\n{}",
                    process.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The Prometheus exposition from `/metrics`.
    pub fn metrics(&self) -> Result<String, String> {
        match http_get(self.admin_addr, "/metrics")? {
            (200, body) => Ok(body),
            (status, _) => Err(format!("GET /metrics answered {status}")),
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("clamgate.log")
    }

    fn log_tail(&self) -> String {
        tail(&self.log_path(), 30)
    }
}

impl Drop for ClamgateProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
