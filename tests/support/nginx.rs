//! A real nginx running the shipped `nginx/nginx.conf`: its listener on a free port, its
//! clamgate, upstream and Envoy addresses replaced by the test's, the harness's HTTP token in place
//! of the placeholder; its own prefix directory; killed on drop.
//!
//! The binary is `$NGINX_BIN`, else `/usr/sbin/nginx`, else `nginx` on `PATH`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The HTTP token every harness-started clamgate with an HTTP listener asks for
/// ([`http_token_file`]), and which the rendered nginx config sends.
pub const TEST_HTTP_TOKEN: &str = "nginx-test-token-0123456789abcdef";

/// The placeholder of the token in the shipped `nginx/clamgate-server.conf`.
pub const NGINX_TOKEN_PLACEHOLDER: &str = "REPLACE_WITH_CLAMGATE_HTTP_TOKEN";

const SHIPPED_DIR: &str = "nginx";
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// A file holding [`TEST_HTTP_TOKEN`], for `listen.http_token_file`.
pub fn http_token_file() -> String {
    let path = std::env::temp_dir().join(format!("clamgate-test-http-token-{}", std::process::id()));
    std::fs::write(&path, format!("{TEST_HTTP_TOKEN}\n")).expect("write the HTTP token file");
    path.to_string_lossy().into_owned()
}

/// Where the rendered nginx sends what.
#[derive(Debug, Clone, Copy)]
pub struct NginxTargets {
    /// clamgate's HTTP listener.
    pub clamgate_http: SocketAddr,
    /// The application.
    pub upstream: SocketAddr,
    /// Envoy's listener, for `/upload/` (None: a closed port).
    pub envoy: Option<SocketAddr>,
}

pub struct NginxProcess {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl NginxProcess {
    /// Renders the shipped config for `targets` and starts nginx; waits until it accepts.
    pub fn start(targets: NginxTargets) -> NginxProcess {
        NginxProcess::start_with(targets, |config| config)
    }

    /// As [`NginxProcess::start`], with `edit` applied to the rendered `nginx.conf`.
    pub fn start_with(targets: NginxTargets, edit: impl FnOnce(String) -> String) -> NginxProcess {
        NginxProcess::start_shipped("nginx.conf", targets, edit)
    }

    /// Renders the shipped `nginx/<file>` (`nginx.conf` or `mirror.conf`) and starts nginx.
    pub fn start_shipped(
        file: &str,
        targets: NginxTargets,
        edit: impl FnOnce(String) -> String,
    ) -> NginxProcess {
        let dir = tempfile::tempdir().expect("nginx: temp dir");
        let port = free_port();
        let config = edit(render_config(file, port, targets));
        std::fs::write(dir.path().join("nginx.conf"), config).expect("nginx: write nginx.conf");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("nginx: tmp dir");
        let include_dir = dir.path().join("clamgate");
        std::fs::create_dir_all(&include_dir).expect("nginx: include dir");
        for name in ["clamgate-server.conf", "clamgate-location.conf", "clamgate-verdict.conf"] {
            let text = std::fs::read_to_string(Path::new(SHIPPED_DIR).join(name))
                .unwrap_or_else(|err| panic!("nginx: read {SHIPPED_DIR}/{name}: {err}"));
            let text = text.replace(NGINX_TOKEN_PLACEHOLDER, TEST_HTTP_TOKEN);
            std::fs::write(include_dir.join(name), text).expect("nginx: write include");
        }
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| panic!("nginx: spawn {}: {err}", nginx_bin().display()));
        let mut nginx = NginxProcess { child, dir, port };
        nginx.wait_accepting();
        nginx
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The prefix directory (config, pid, temp files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn wait_accepting(&mut self) {
        let deadline = Instant::now() + READY_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited at start ({status}); its errors are above");
            }
            if TcpStream::connect(self.addr()).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nginx did not accept connections within {READY_DEADLINE:?}");
    }
}

impl Drop for NginxProcess {
    /// SIGTERM, so the master stops its workers too (SIGKILL would orphan them); SIGKILL after 5 s.
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped `nginx/<file>` with its listener on `port` and its upstreams at `targets`. Panics
/// if a replaced line is not found exactly once (the Envoy line: at most once).
pub fn render_config(file: &str, port: u16, targets: NginxTargets) -> String {
    let shipped = std::fs::read_to_string(Path::new(SHIPPED_DIR).join(file))
        .unwrap_or_else(|err| panic!("nginx: read {SHIPPED_DIR}/{file}: {err}"));
    let envoy = targets.envoy.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], closed_port())));
    let listen = if file == "mirror.conf" { "listen 127.0.0.1:8089;" } else { "listen 127.0.0.1:8088;" };
    let replacements = [
        ("listener", listen.to_string(), format!("listen 127.0.0.1:{port};")),
        ("clamgate", "server 127.0.0.1:8181;".to_string(), format!("server {};", targets.clamgate_http)),
        ("upstream", "server 127.0.0.1:8080;".to_string(), format!("server {};", targets.upstream)),
        ("envoy", "server 127.0.0.1:10000;".to_string(), format!("server {envoy};")),
    ];
    let mut config = shipped;
    for (what, from, to) in replacements {
        let count = config.matches(&from).count();
        if what == "envoy" && count == 0 {
            continue;
        }
        assert_eq!(count, 1, "nginx: the {what} line `{from}` occurs {count} times in nginx/{file}");
        config = config.replacen(&from, &to, 1);
    }
    config
}

fn nginx_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NGINX_BIN") {
        return PathBuf::from(bin);
    }
    let debian = PathBuf::from("/usr/sbin/nginx");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("nginx")
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port")
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    free_port()
}
