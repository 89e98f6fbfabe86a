//! Real Envoy for the benchmark: the SHIPPED `envoy/envoy.yaml`, plus bench-only routes.
//!
//! The shipped config is rendered by the test harness (`support::envoy::render_config`: its four
//! addresses replaced, nothing else), then copies of existing routes are inserted textually at the
//! top of the route list, each with a new prefix and `ExtProcPerRoute { disabled: true }`:
//!
//! - `/noscan/`: a copy of the catch-all `/` route (the scanned route), ext_proc disabled.
//! - `/mirror-noscan/`: a copy of the `/mirror/` route (resource-key policy), ext_proc disabled,
//!   when the shipped config has a `/mirror/` route.
//!
//! A copy keeps everything else of its route (cluster, timeouts, buffer limit, rewrites), so
//! "route X with ext_proc disabled" differs from route X only by ext_proc. The shipped file is
//! never written.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::envoy::{envoy_binary, http_get, listener_address, render_config};

/// The name of the ext_proc filter in the shipped `http_filters` (the per-route config key).
const EXT_PROC_FILTER: &str = "envoy.filters.http.ext_proc";
const EXT_PROC_PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute";

/// The prefix of the bench-only copy of the catch-all route.
pub const NOSCAN_PREFIX: &str = "/noscan/";
/// The prefix of the shipped resource-key route (added by the resource-key work).
pub const MIRROR_PREFIX: &str = "/mirror/";
/// The prefix of the bench-only copy of the `/mirror/` route.
pub const MIRROR_NOSCAN_PREFIX: &str = "/mirror-noscan/";

/// The bench config and what it contains.
pub struct BenchConfig {
    pub yaml: String,
    /// Whether the shipped config has a `/mirror/` route (and so the config a `/mirror-noscan/`).
    pub has_mirror: bool,
    /// The inserted routes, as inserted.
    pub inserted: String,
}

/// The shipped config with the bench-only routes inserted.
pub fn bench_config(clamgate_grpc: SocketAddr, upstream: SocketAddr) -> Result<BenchConfig, String> {
    let rendered = render_config(clamgate_grpc, upstream);
    if !rendered.contains(&format!("- name: {EXT_PROC_FILTER}")) {
        return Err(format!("the shipped envoy.yaml has no http filter named {EXT_PROC_FILTER}"));
    }
    let lines: Vec<&str> = rendered.lines().collect();
    let routes = route_blocks(&lines)?;
    let find = |prefix: &str| {
        routes.blocks.iter().find(|block| block_prefix(&lines[(*block).clone()]).as_deref() == Some(prefix))
    };
    let catch_all = find("/").ok_or("the shipped envoy.yaml has no route with prefix \"/\"")?;
    let mut inserted = disabled_copy(&lines[catch_all.clone()], routes.indent, "/", NOSCAN_PREFIX)?;
    let has_mirror = match find(MIRROR_PREFIX) {
        Some(mirror) => {
            inserted.extend(disabled_copy(
                &lines[mirror.clone()],
                routes.indent,
                MIRROR_PREFIX,
                MIRROR_NOSCAN_PREFIX,
            )?);
            true
        }
        None => false,
    };
    let first = routes.blocks[0].start;
    let mut out: Vec<String> = lines[..first].iter().map(|line| line.to_string()).collect();
    let indent = routes.indent;
    let shown: Vec<&str> =
        inserted.iter().map(|line| line.get(indent..).unwrap_or(line.trim_start())).collect();
    let shown = shown.join("\n");
    out.extend(inserted);
    out.extend(lines[first..].iter().map(|line| line.to_string()));
    let mut yaml = out.join("\n");
    yaml.push('\n');
    Ok(BenchConfig { yaml, has_mirror, inserted: shown })
}

struct Routes {
    /// Column of the `-` of each route item.
    indent: usize,
    /// Line ranges of each route item, in order.
    blocks: Vec<std::ops::Range<usize>>,
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_blank_or_comment(line: &str) -> bool {
    let trimmed = line.trim_start();
    trimmed.is_empty() || trimmed.starts_with('#')
}

/// The items of the first `routes:` list (block style, one `- ` item per route).
fn route_blocks(lines: &[&str]) -> Result<Routes, String> {
    let header = lines
        .iter()
        .position(|line| line.trim() == "routes:")
        .ok_or("no block-style `routes:` list in the shipped envoy.yaml")?;
    let first = (header + 1..lines.len())
        .find(|&i| !is_blank_or_comment(lines[i]))
        .ok_or("empty `routes:` list in the shipped envoy.yaml")?;
    if !lines[first].trim_start().starts_with("- ") {
        return Err(format!("unexpected first line of `routes:`: {:?}", lines[first]));
    }
    let indent = indent_of(lines[first]);
    let mut blocks = Vec::new();
    let (mut start, mut last_content) = (first, first);
    for i in first + 1..=lines.len() {
        if i < lines.len() && is_blank_or_comment(lines[i]) {
            continue;
        }
        let line = lines.get(i).copied().unwrap_or_default();
        let ends_list = i == lines.len()
            || indent_of(line) < indent
            || (indent_of(line) == indent && !line.trim_start().starts_with("- "));
        if ends_list || indent_of(line) == indent {
            // Trailing comments belong to the next item (or to nothing).
            blocks.push(start..last_content + 1);
            if ends_list {
                break;
            }
            start = i;
        }
        last_content = i;
    }
    Ok(Routes { indent, blocks })
}

/// Where the first `prefix:` value of a line is (byte range, quotes included) and its value.
/// `prefix_rewrite:` and comments do not count.
fn prefix_value(line: &str) -> Option<(std::ops::Range<usize>, String)> {
    let code = line.split(" #").next().unwrap_or_default();
    let at = code.find("prefix:")?;
    let rest = &code[at + "prefix:".len()..];
    let skipped = rest.len() - rest.trim_start().len();
    let start = at + "prefix:".len() + skipped;
    let value_text = &code[start..];
    let (len, value) = match value_text.chars().next()? {
        quote @ ('"' | '\'') => {
            let close = value_text[1..].find(quote)?;
            (close + 2, value_text[1..close + 1].to_string())
        }
        _ => {
            let len = value_text.find([',', '}', ' ']).unwrap_or(value_text.len());
            (len, value_text[..len].to_string())
        }
    };
    Some((start..start + len, value))
}

/// The `prefix` a route item matches: the first `prefix:` in the item (its `match` comes first).
fn block_prefix(block: &[&str]) -> Option<String> {
    block.iter().find_map(|line| prefix_value(line)).map(|(_, value)| value)
}

/// A copy of one route item with its match prefix changed to `to` and ext_proc disabled.
fn disabled_copy(block: &[&str], indent: usize, from: &str, to: &str) -> Result<Vec<String>, String> {
    let pad = |n: usize| " ".repeat(n);
    let per_route = |key_indent: usize| {
        vec![
            format!("{}{EXT_PROC_FILTER}:", pad(key_indent)),
            format!("{}\"@type\": {EXT_PROC_PER_ROUTE}", pad(key_indent + 2)),
            format!("{}disabled: true", pad(key_indent + 2)),
        ]
    };
    let mut out =
        vec![format!("{}# bench-only (benches/proxy): the {from:?} route, ext_proc disabled", pad(indent))];
    let mut prefix_done = false;
    let mut ext_proc_done = false;
    let mut typed_per_filter_at: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < block.len() {
        let line = block[i];
        if !prefix_done {
            if let Some((span, value)) = prefix_value(line) {
                if value != from {
                    return Err(format!("the route's first prefix is {value:?}, expected {from:?}"));
                }
                out.push(format!("{}\"{to}\"{}", &line[..span.start], &line[span.end..]));
                prefix_done = true;
                i += 1;
                continue;
            }
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("typed_per_filter_config:") {
            typed_per_filter_at = Some((out.len(), indent_of(line)));
        }
        if trimmed.starts_with(&format!("{EXT_PROC_FILTER}:"))
            || trimmed.starts_with(&format!("\"{EXT_PROC_FILTER}\":"))
        {
            // Replace the route's whole ext_proc config (everything indented under the key).
            let key_indent = indent_of(line);
            out.extend(per_route(key_indent));
            i += 1;
            while i < block.len() && (is_blank_or_comment(block[i]) || indent_of(block[i]) > key_indent) {
                i += 1;
            }
            ext_proc_done = true;
            continue;
        }
        out.push(line.to_string());
        i += 1;
    }
    if !prefix_done {
        return Err(format!("no `prefix: {from:?}` in the route to copy"));
    }
    if !ext_proc_done {
        match typed_per_filter_at {
            Some((at, key_indent)) => {
                out.splice(at + 1..at + 1, per_route(key_indent + 2));
            }
            None => {
                out.push(format!("{}typed_per_filter_config:", pad(indent + 2)));
                out.extend(per_route(indent + 4));
            }
        }
    }
    Ok(out)
}

/// A running Envoy with the bench config. Killed on drop.
pub struct BenchEnvoy {
    child: Child,
    dir: tempfile::TempDir,
    admin: SocketAddr,
    listener: SocketAddr,
    pub binary: PathBuf,
}

impl BenchEnvoy {
    /// Starts Envoy with `yaml` and `--concurrency workers`, and waits until it is ready, its
    /// listener bound, and the clamgate cluster healthy.
    pub fn start(yaml: &str, workers: usize) -> Result<BenchEnvoy, String> {
        let dir = tempfile::Builder::new()
            .prefix("clamgate-bench-envoy-")
            .tempdir()
            .map_err(|err| format!("envoy temp dir: {err}"))?;
        let config_path = dir.path().join("envoy.yaml");
        fs::write(&config_path, yaml).map_err(|err| format!("write envoy config: {err}"))?;
        let admin_path = dir.path().join("admin-address");
        let binary = envoy_binary();
        let file =
            |name: &str| File::create(dir.path().join(name)).map_err(|err| format!("envoy {name}: {err}"));
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config_path)
            .args(["--use-dynamic-base-id", "--disable-hot-restart", "-l", "warning"])
            .arg("--concurrency")
            .arg(workers.to_string())
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(dir.path().join("envoy.log"))
            .stdin(Stdio::null())
            // The shipped access log writes to stdout: one line per request, as in production.
            .stdout(file("access.log")?)
            .stderr(file("stderr.log")?)
            .spawn()
            .map_err(|err| format!("spawn {}: {err}", binary.display()))?;
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut envoy = BenchEnvoy { child, dir, admin: unbound, listener: unbound, binary };
        let deadline = Instant::now() + Duration::from_secs(30);
        envoy.admin = envoy.poll(deadline, "the admin address file", |_| {
            fs::read_to_string(&admin_path).ok()?.trim().parse().ok()
        })?;
        envoy.poll(deadline, "admin /ready", |envoy| {
            matches!(envoy.admin_get("/ready"), Ok((200, _))).then_some(())
        })?;
        envoy.listener = envoy.poll(deadline, "the ingress listener's port", |envoy| {
            let (_, body) = envoy.admin_get("/listeners?format=json").ok()?;
            listener_address(&body, "ingress")
        })?;
        envoy.poll(deadline, "the clamgate cluster to be healthy", |envoy| {
            let (_, body) = envoy.admin_get("/clusters").ok()?;
            body.lines()
                .filter_map(|line| line.strip_prefix("clamgate::"))
                .any(|rest| rest.ends_with("::health_flags::healthy"))
                .then_some(())
        })?;
        Ok(envoy)
    }

    /// The ingress listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.listener
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn admin_get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(self.admin, path)
    }

    /// One counter from admin `/stats`.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let (_, body) = self.admin_get(&format!("/stats?filter=^{name}$")).ok()?;
        body.lines()
            .filter_map(|line| line.split_once(": "))
            .find(|(key, _)| *key == name)?
            .1
            .trim()
            .parse()
            .ok()
    }

    /// The last lines of Envoy's own log and stderr, for error messages.
    pub fn log_tail(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let text = format!("{}{}", read("envoy.log"), read("stderr.log"));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn poll<T>(
        &mut self,
        deadline: Instant,
        what: &str,
        mut check: impl FnMut(&BenchEnvoy) -> Option<T>,
    ) -> Result<T, String> {
        loop {
            if let Some(value) = check(self) {
                return Ok(value);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "envoy exited ({status}) while waiting for {what}:\n{}",
                    self.log_tail()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("envoy: timed out waiting for {what}:\n{}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BenchEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `envoy --version`: the part after `version: `.
pub fn envoy_version(binary: &PathBuf) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .and_then(|text| text.split("version:").nth(1).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".to_string())
}
