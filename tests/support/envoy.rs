//! Real Envoy for integration tests, running the SHIPPED `envoy/envoy.yaml`.
//!
//! The shipped config is read and only its four addresses are replaced (listener and admin to
//! port 0, the `clamgate` and `upstream_http` endpoints to the given addresses), and its token
//! placeholder by the harness's token, so the tested config is the one we ship. Each replacement must match exactly once or the test panics.
//!
//! The harness is blocking (std processes, sockets and a minimal HTTP/1.1 client for the admin
//! API). From a tokio test whose in-process servers must keep running while it waits (for
//! instance a processor answering health checks during [`EnvoyProcess::wait_clamgate_healthy`]),
//! use `#[tokio::test(flavor = "multi_thread")]` or call it inside `spawn_blocking`.
//!
//! Envoy is spawned directly by the test process: started by a short-lived shell it gets SIGTERM
//! when the shell exits. It is killed on drop.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::clamgate::TEST_GRPC_TOKEN;

/// The config file Envoy ships with.
pub const SHIPPED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/envoy/envoy.yaml");

/// Time allowed for Envoy to start and bind its listener.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Admin API calls are local and quick; anything slower is a hang.
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A running Envoy with the shipped config. Killed on drop.
pub struct EnvoyProcess {
    child: Child,
    dir: tempfile::TempDir,
    admin: SocketAddr,
    listener: SocketAddr,
}

impl EnvoyProcess {
    /// Starts Envoy with the shipped config pointing at `clamgate_grpc` and `upstream`, and
    /// returns once its listener accepts connections. Does NOT wait for clamgate to be healthy
    /// (a test may run with clamgate down): see [`EnvoyProcess::wait_clamgate_healthy`].
    pub fn start(clamgate_grpc: SocketAddr, upstream: SocketAddr) -> EnvoyProcess {
        EnvoyProcess::start_with_config(render_config(clamgate_grpc, upstream))
    }

    /// [`start`](Self::start) with a config the test rendered itself (the shipped one changed
    /// further, e.g. with its mTLS block turned on). Its admin and listener must be on port 0.
    pub fn start_with_config(config: String) -> EnvoyProcess {
        let dir =
            tempfile::Builder::new().prefix("clamgate-envoy-").tempdir().expect("envoy: create temp dir");
        let config_path = dir.path().join("envoy.yaml");
        fs::write(&config_path, config).expect("envoy: write config");
        let admin_path = dir.path().join("admin-address");
        let bin = envoy_binary();

        let stdout = File::create(dir.path().join("stdout.log")).expect("envoy: stdout.log");
        let stderr = File::create(dir.path().join("stderr.log")).expect("envoy: stderr.log");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config_path)
            // Several Envoys may run at once (parallel tests): no shared base id, and no hot
            // restart shared memory (which Envoy leaves behind in /dev/shm when killed).
            .arg("--use-dynamic-base-id")
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["-l", "warning", "--concurrency", "1"])
            .arg("--log-path")
            .arg(dir.path().join("envoy.log"))
            .stdin(Stdio::null())
            // The access log goes to stdout.
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|err| panic!("envoy: spawn {}: {err}", bin.display()));

        let mut envoy = EnvoyProcess {
            child,
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let deadline = Instant::now() + START_TIMEOUT;

        // 1. The admin address file appears once the admin listener is bound.
        envoy.admin = envoy.poll_until(deadline, "the admin address file", |_| {
            let text = fs::read_to_string(&admin_path).ok()?;
            text.trim().parse::<SocketAddr>().ok()
        });
        // 2. /ready answers 200 once initialisation is over (clusters warmed, including the first
        //    health-check round) and the workers accept on the listener.
        envoy.poll_until(deadline, "admin /ready to answer 200", |envoy| {
            matches!(envoy.admin_get("/ready"), Ok((200, _))).then_some(())
        });
        // 3. The listener's real port.
        envoy.listener = envoy.poll_until(deadline, "the listener's port in /listeners", |envoy| {
            let (status, body) = envoy.admin_get("/listeners?format=json").ok()?;
            if status != 200 {
                return None;
            }
            listener_address(&body, "ingress")
        });
        envoy
    }

    /// Waits until Envoy's active gRPC health check marks the `clamgate` cluster's host healthy.
    /// Panics with the last health flags and Envoy's logs on timeout.
    pub fn wait_clamgate_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.clamgate_health_flags() {
                Ok(flags) if flags == "healthy" => return,
                Ok(flags) => flags,
                Err(err) => err,
            };
            if Instant::now() >= deadline {
                panic!(
                    "envoy: clamgate cluster not healthy after {timeout:?} (last health_flags: {last})\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The `health_flags` Envoy reports for the clamgate host: `healthy`, or flags such as
    /// `/failed_active_hc`.
    pub fn clamgate_health_flags(&self) -> Result<String, String> {
        let (status, body) = self.admin_get("/clusters")?;
        if status != 200 {
            return Err(format!("GET /clusters answered {status}"));
        }
        // Lines look like `clamgate::127.0.0.1:50051::health_flags::healthy`.
        body.lines()
            .filter_map(|line| line.strip_prefix("clamgate::"))
            .find_map(|rest| rest.split_once("::health_flags::").map(|(_, flags)| flags.to_string()))
            .ok_or_else(|| "no health_flags line for cluster clamgate in /clusters".to_string())
    }

    /// `http://127.0.0.1:PORT{path}` on Envoy's listener; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listener, path)
    }

    /// `http://127.0.0.1:PORT{path}` on Envoy's admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The address of Envoy's listener.
    pub fn addr(&self) -> SocketAddr {
        self.listener
    }

    /// The address of Envoy's admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// One admin counter or gauge (e.g. `http.ingress_http.downstream_rq_5xx`), from `/stats`.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let (_, body) = self.admin_get(&format!("/stats?filter=^{name}$")).ok()?;
        body.lines()
            .filter_map(|line| line.split_once(": "))
            .find(|(key, _)| *key == name)
            .and_then(|(_, value)| value.trim().parse().ok())
    }

    /// Envoy's own log, its stderr, and the access log (stdout), for assertion messages.
    pub fn logs(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- envoy log ---\n{}--- envoy stderr ---\n{}--- envoy access log ---\n{}",
            read("envoy.log"),
            read("stderr.log"),
            read("stdout.log")
        )
    }

    /// The temp dir holding the rendered config and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `GET path` on the admin listener: (status, body).
    pub fn admin_get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(self.admin, path)
    }

    /// Polls `check` until it returns a value, panicking with the logs at `deadline` or if Envoy
    /// exits meanwhile.
    fn poll_until<T>(
        &mut self,
        deadline: Instant,
        what: &str,
        mut check: impl FnMut(&EnvoyProcess) -> Option<T>,
    ) -> T {
        loop {
            if let Some(value) = check(self) {
                return value;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("envoy exited ({status}) while waiting for {what}\n{}", self.logs());
            }
            if Instant::now() >= deadline {
                panic!("envoy: timed out after {START_TIMEOUT:?} waiting for {what}\n{}", self.logs());
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Envoy binary: `$ENVOY_BIN`, else `envoy` on `PATH`, else `.tools/venv/bin/envoy` in the
/// repository (where `scripts/setup.sh` installs it).
pub fn envoy_binary() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|value| !value.is_empty()) {
        let bin = PathBuf::from(bin);
        // A relative ENVOY_BIN is taken from the repository root, whatever the test's cwd.
        let bin = if bin.is_relative() && !bin.exists() { manifest_dir.join(bin) } else { bin };
        assert!(bin.is_file(), "ENVOY_BIN={} is not a file", bin.display());
        return bin;
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(bin) = std::env::split_paths(&path).map(|dir| dir.join("envoy")).find(|p| p.is_file()) {
            return bin;
        }
    }
    let bin = manifest_dir.join(".tools/venv/bin/envoy");
    assert!(
        bin.is_file(),
        "no Envoy binary: set ENVOY_BIN, put `envoy` on PATH, or run scripts/setup.sh (installs {})",
        bin.display()
    );
    bin
}

/// The placeholder for clamgate's shared token in the shipped envoy.yaml
/// (`authorization: "Bearer <placeholder>"`).
pub const ENVOY_TOKEN_PLACEHOLDER: &str = "REPLACE_WITH_CLAMGATE_GRPC_TOKEN";

/// The shipped config with its listener and admin on port 0, its clamgate and upstream
/// endpoints at the given addresses, and the harness's token ([`TEST_GRPC_TOKEN`]) in place of
/// [`ENVOY_TOKEN_PLACEHOLDER`]. Panics if any replaced text is not found exactly once.
pub fn render_config(clamgate_grpc: SocketAddr, upstream: SocketAddr) -> String {
    let shipped = fs::read_to_string(SHIPPED_CONFIG)
        .unwrap_or_else(|err| panic!("envoy: read {SHIPPED_CONFIG}: {err}"));
    let endpoint = |addr: SocketAddr| {
        // Quoted so that an IPv6 address stays one YAML scalar.
        format!("{{address: \"{}\", port_value: {}}}", addr.ip(), addr.port())
    };
    let replacements = [
        (
            "admin address",
            "{address: 127.0.0.1, port_value: 9901}",
            endpoint(SocketAddr::from(([127, 0, 0, 1], 0))),
        ),
        (
            "listener address",
            "{address: 127.0.0.1, port_value: 10000}",
            endpoint(SocketAddr::from(([127, 0, 0, 1], 0))),
        ),
        ("clamgate endpoint address", "{address: 127.0.0.1, port_value: 50051}", endpoint(clamgate_grpc)),
        ("upstream endpoint address", "{address: 127.0.0.1, port_value: 8080}", endpoint(upstream)),
        // Envoy sends the harness's token, which every harness-started clamgate asks for.
        ("clamgate token placeholder", ENVOY_TOKEN_PLACEHOLDER, TEST_GRPC_TOKEN.to_string()),
    ];
    let mut config = shipped;
    for (what, from, to) in replacements {
        let count = config.matches(from).count();
        assert_eq!(
            count, 1,
            "envoy: the {what} `{from}` occurs {count} times in {SHIPPED_CONFIG}, expected \
             exactly once: the test harness replaces it textually (keep it on one line)"
        );
        config = config.replacen(from, &to, 1);
    }
    config
}

/// The line of the shipped config that starts its catch-all route; test routes go before it.
const DEFAULT_ROUTE: &str = "              - match: {prefix: \"/\"}\n";

/// `config` (a rendered shipped config) with `routes` (YAML list items indented by 14 spaces, as
/// the shipped routes are) inserted before the catch-all route, so they match first.
pub fn add_routes(config: &str, routes: &str) -> String {
    assert_eq!(
        config.matches(DEFAULT_ROUTE).count(),
        1,
        "envoy: the catch-all route `{}` must occur once in the config",
        DEFAULT_ROUTE.trim()
    );
    config.replacen(DEFAULT_ROUTE, &format!("{routes}{DEFAULT_ROUTE}"), 1)
}

/// The bound address of the listener called `name` in admin `/listeners?format=json`.
pub fn listener_address(json: &str, name: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let listener = value["listener_statuses"].as_array()?.iter().find(|listener| listener["name"] == name)?;
    let socket = &listener["local_address"]["socket_address"];
    let port = u16::try_from(socket["port_value"].as_u64()?).ok()?;
    let ip = socket["address"].as_str()?.parse().ok()?;
    (port != 0).then_some(SocketAddr::new(ip, port))
}

/// A minimal HTTP/1.1 `GET` (Envoy rejects HTTP/1.0 by default), `Connection: close`, handling
/// both content-length and chunked bodies. Enough for the admin API.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, ADMIN_IO_TIMEOUT)
        .map_err(|err| format!("connect {addr}: {err}"))?;
    stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT)).map_err(|err| err.to_string())?;
    stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT)).map_err(|err| err.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .map_err(|err| format!("write to {addr}: {err}"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|err| format!("read from {addr}: {err}"))?;

    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: no end of headers in the response"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = &raw[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("GET {path}: bad status line in {head:?}"))?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Decodes a chunked transfer-coded body.
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|window| window == b"\r\n")
            .ok_or("chunked body: missing chunk size line")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim().to_string();
        let size = usize::from_str_radix(&size_text, 16)
            .map_err(|_| format!("chunked body: bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("chunked body: truncated chunk".to_string());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// An ext_proc headers message as Envoy sends it: lower-case keys, values in `raw_value` (for
/// tests that drive clamgate's gRPC stream without Envoy).
pub fn envoy_headers(
    pairs: &[(&str, &str)],
    end_of_stream: bool,
) -> envoy_types::pb::envoy::service::ext_proc::v3::HttpHeaders {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    let headers = pairs
        .iter()
        .map(|(key, value)| HeaderValue {
            key: key.to_string(),
            raw_value: value.as_bytes().to_vec(),
            ..HeaderValue::default()
        })
        .collect();
    envoy_types::pb::envoy::service::ext_proc::v3::HttpHeaders {
        headers: Some(HeaderMap { headers }),
        end_of_stream,
        ..Default::default()
    }
}
