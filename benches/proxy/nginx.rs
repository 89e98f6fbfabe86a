//! nginx for the benchmark: the shipped `nginx/nginx.conf` (rendered by the test harness with
//! this run's ports) with one worker per CPU, as Envoy gets, and two bench-only locations:
//! `/plain/` (no auth_request: nginx alone) and `/noop-auth/` (auth_request to a do-nothing
//! endpoint: the floor of any auth_request service). `/mirror/` is the shipped location, asking
//! clamgate's `/v1/auth`.

use std::net::SocketAddr;

use crate::support::nginx::{NginxProcess, NginxTargets};

/// The bench-only lines added to the shipped config, for the report.
pub const INSERTED: &str = "location /plain/ { proxy_pass http://origin; } \
location = /_noop_auth { the shipped /_clamgate/auth block, to the do-nothing endpoint } \
location /noop-auth/ { the shipped protected location (clamgate-verdict.conf), auth_request /_noop_auth }";

pub struct BenchNginx {
    process: NginxProcess,
}

impl BenchNginx {
    pub fn start(clamgate_http: SocketAddr, upstream: SocketAddr, noop_auth: SocketAddr) -> BenchNginx {
        let targets = NginxTargets { clamgate_http, upstream, envoy: None };
        let process = NginxProcess::start_with(targets, |config| edit(config, noop_auth));
        BenchNginx { process }
    }

    pub fn addr(&self) -> SocketAddr {
        self.process.addr()
    }

    /// nginx's prefix directory (its processes mention it: CPU accounting).
    pub fn dir(&self) -> &std::path::Path {
        self.process.dir()
    }
}

fn edit(config: String, noop_auth: SocketAddr) -> String {
    let upstream_block = format!(
        "    upstream noop_auth {{\n        server {noop_auth};\n        keepalive 16;\n    }}\n\n    server {{\n"
    );
    // The floor is the shipped protected location exactly, its auth subrequest sent to the
    // do-nothing endpoint instead of clamgate: the same nginx work, minus clamgate's.
    let shipped_auth = shipped_block("clamgate-server.conf", "location = /_clamgate/auth {");
    let noop_auth_location = shipped_auth
        .replacen("location = /_clamgate/auth {", "location = /_noop_auth {", 1)
        .replacen("proxy_pass http://clamgate_http/v1/auth;", "proxy_pass http://noop_auth/v1/auth;", 1);
    let locations = format!(
        "        location /plain/ {{\n            proxy_http_version 1.1;\n            \
         proxy_set_header Connection \"\";\n            proxy_pass http://origin;\n        }}\n\n\
         {noop_auth_location}\n\
         location /noop-auth/ {{\n            set $clamgate_policy mirror;\n            \
         set $clamgate_upstream http://origin;\n            auth_request /_noop_auth;\n            \
         include clamgate/clamgate-verdict.conf;\n            error_page 412 = @clamgate_recheck;\n            \
         proxy_pass $clamgate_upstream;\n        }}\n\n        location /files/ {{\n"
    );
    config
        .replacen("worker_processes 1;", "worker_processes auto;", 1)
        .replacen("    server {\n", &upstream_block, 1)
        .replacen("        location /files/ {\n", &locations, 1)
}

/// The block of the shipped `nginx/<file>` that starts with the line `first` and ends with the
/// first line that is `}` alone.
fn shipped_block(file: &str, first: &str) -> String {
    let text =
        std::fs::read_to_string(std::path::Path::new("nginx").join(file)).expect("read a shipped nginx file");
    let start = text.find(first).expect("the block in the shipped file");
    let end = start + text[start..].find("\n}\n").expect("the end of the block") + 3;
    text[start..end].to_string()
}
