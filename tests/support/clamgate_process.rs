//! clamgate as a child process (the `clamgate` binary cargo built for these tests), so a test can
//! watch it from the outside as production would: its memory, open files and connections in
//! `/proc`, its log, its `/metrics`. Own temp dir, free loopback ports, killed on drop.
//!
//! Everything here is blocking (start-up takes well under a second; `/proc` reads are instant).
//! Tests whose in-process servers must keep serving meanwhile (the upstream) should use
//! `#[tokio::test(flavor = "multi_thread")]`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::clamgate::{metric_value, test_token_file};
use super::envoy::http_get;

/// The clamgate binary cargo built for this test crate.
pub const BINARY: &str = env!("CARGO_BIN_EXE_clamgate");

/// How long clamgate may take to answer `/readyz` with 200.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between readiness polls.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Fresh port pairs tried when a listener could not be bound (another process took the port).
const START_ATTEMPTS: usize = 5;
/// clamgate's exit code when a listener cannot be bound (src/main.rs): worth another port.
const EXIT_UNAVAILABLE: i32 = 69;
/// Log lines printed when a test fails with clamgate running.
const LOG_TAIL_LINES: usize = 40;

/// How to start a [`ClamgateProcess`].
#[derive(Debug, Clone, Default)]
pub struct ClamgateOptions {
    /// `clamd.address`, e.g. [`ClamdProcess::address`](super::clamd::ClamdProcess::address).
    pub clamd_address: String,
    /// TOML merged over the harness's config (see [`config_text`]): its tables extend the
    /// harness's tables and its keys win, so `[clamd]\nreply_timeout_ms = 600000` or
    /// `[log]\nlevel = "debug"` work as expected.
    pub extra: String,
    /// Environment variables for clamgate (e.g. `CLAMGATE_...` overrides); the caller's own
    /// `CLAMGATE_*` variables are never passed on.
    pub env: Vec<(String, String)>,
}

/// A running clamgate child process with its directory (`clamgate.toml`, `clamgate.log`).
///
/// Dropping it kills clamgate and waits for it; when the test is panicking, the end of its log
/// is printed to stderr first.
pub struct ClamgateProcess {
    child: Child,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    // Last: removed after `Drop::drop` has killed clamgate.
    dir: tempfile::TempDir,
}

/// The config the harness writes: clamgate's defaults except for the listeners, the harness's
/// shared token ([`test_token_file`]), clamd, a fast clamd health probe, the `mirror` policy the
/// shipped envoy.yaml names, and `warn` logs; then `extra` merged over it. Panics if `extra` is
/// not TOML.
pub fn config_text(grpc: SocketAddr, admin: SocketAddr, clamd_address: &str, extra: &str) -> String {
    let token_file = test_token_file();
    let base = format!(
        "[listen]\ngrpc_addr = \"{grpc}\"\nadmin_addr = \"{admin}\"\ngrpc_token_file = {token_file:?}\n\n\
         [clamd]\naddress = \"{clamd_address}\"\nhealth_interval_ms = 200\n\n\
         [policies.mirror]\ncache_mode = \"resource\"\n\n\
         [log]\nlevel = \"warn\"\n"
    );
    let mut config: toml::Table = base.parse().expect("the harness's own config is TOML");
    let extra: toml::Table =
        extra.parse().unwrap_or_else(|err| panic!("ClamgateOptions::extra is not TOML: {err}\n{extra}"));
    merge_tables(&mut config, extra);
    format!("# Written by tests/support/clamgate_process.rs.\n{config}")
}

/// Starts `clamgate serve` with `dir/clamgate.toml`, its output to `dir/clamgate.log` (started
/// over), `options.env` set and the caller's own `CLAMGATE_*` variables removed.
fn spawn(dir: &Path, options: &ClamgateOptions) -> Child {
    let log = File::create(dir.join("clamgate.log")).expect("create clamgate.log");
    let mut command = Command::new(BINARY);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CLAMGATE_") {
            command.env_remove(key);
        }
    }
    command.envs(options.env.iter().map(|(key, value)| (key, value)));
    command
        .arg("serve")
        .arg("--config")
        .arg(dir.join("clamgate.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone clamgate.log"))
        // The tracing output.
        .stderr(log)
        .spawn()
        .unwrap_or_else(|err| panic!("spawn {BINARY}: {err}"))
}

/// Puts every key of `overrides` into `base`, merging tables key by key.
fn merge_tables(base: &mut toml::Table, overrides: toml::Table) {
    for (key, value) in overrides {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(table)) => {
                merge_tables(base_table, table)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

impl ClamgateProcess {
    /// Starts `clamgate serve` against the clamd at `clamd_address`, with `extra` TOML merged into
    /// the config ([`config_text`]); returns once `/readyz` answers 200. Panics with clamgate's
    /// log if it exits or is not ready within 30 s.
    pub fn start(clamd_address: &str, extra: &str) -> ClamgateProcess {
        ClamgateProcess::start_with(ClamgateOptions {
            clamd_address: clamd_address.to_string(),
            extra: extra.to_string(),
            ..ClamgateOptions::default()
        })
    }

    /// [`start`](Self::start) with `options`.
    pub fn start_with(options: ClamgateOptions) -> ClamgateProcess {
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            if grpc == admin {
                continue;
            }
            match ClamgateProcess::spawn_and_wait(grpc, admin, &options) {
                Ok(process) => return process,
                Err(StartFailure::PortTaken(failure)) => last_failure = failure,
                Err(StartFailure::Fatal(failure)) => panic!("{failure}"),
            }
        }
        panic!("clamgate did not start after {START_ATTEMPTS} attempts: {last_failure}");
    }

    fn spawn_and_wait(
        grpc: SocketAddr,
        admin: SocketAddr,
        options: &ClamgateOptions,
    ) -> Result<ClamgateProcess, StartFailure> {
        let dir =
            tempfile::Builder::new().prefix("clamgate-process-").tempdir().expect("create clamgate temp dir");
        let config_path = dir.path().join("clamgate.toml");
        fs::write(&config_path, config_text(grpc, admin, &options.clamd_address, &options.extra))
            .expect("write clamgate.toml");
        let child = spawn(dir.path(), options);
        // Owned from here on: a panic below still kills it in `Drop`.
        let mut process = ClamgateProcess { child, grpc_addr: grpc, admin_addr: admin, dir };

        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if matches!(http_get(admin, "/readyz"), Ok((200, _))) {
                return Ok(process);
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                let failure = format!("clamgate exited ({status}) during start-up:\n{}", process.log());
                return Err(if status.code() == Some(EXIT_UNAVAILABLE) {
                    StartFailure::PortTaken(failure)
                } else {
                    StartFailure::Fatal(failure)
                });
            }
            if Instant::now() >= deadline {
                let last = http_get(admin, "/readyz").map(|(status, body)| format!("{status} {body}"));
                return Err(StartFailure::Fatal(format!(
                    "clamgate /readyz did not answer 200 within {START_DEADLINE:?} (last: {last:?}):\n{}",
                    process.log()
                )));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The gRPC listener (ext_proc), for [`EnvoyProcess::start`](super::envoy::EnvoyProcess::start).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// `http://ADMIN{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    /// The Prometheus exposition from `/metrics`. Panics if it does not answer 200.
    pub fn metrics(&self) -> String {
        match http_get(self.admin_addr, "/metrics") {
            Ok((200, body)) => body,
            other => panic!("clamgate GET /metrics: {other:?}"),
        }
    }

    /// The value of one sample (`name{labels}`) in `/metrics`, 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics(), sample)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills clamgate (SIGKILL, like a crash) and starts it again with the same config, on the
    /// same ports; returns once `/readyz` answers 200. Its log starts over. Panics if it does not
    /// come back.
    pub fn restart(&mut self, options: &ClamgateOptions) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self.dir(), options);
        let deadline = Instant::now() + START_DEADLINE;
        while !matches!(http_get(self.admin_addr, "/readyz"), Ok((200, _))) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("clamgate exited ({status}) on restart:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "clamgate not ready {START_DEADLINE:?} after a restart:\n{}",
                self.log()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Whether clamgate is still alive (it did not crash or exit).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Peak resident memory since start or the last [`reset_peak_rss`](Self::reset_peak_rss),
    /// in bytes (`VmHWM` in `/proc/PID/status`).
    pub fn peak_rss_bytes(&self) -> u64 {
        self.status_kib("VmHWM") * 1024
    }

    /// Resident memory now, in bytes (`VmRSS` in `/proc/PID/status`).
    pub fn rss_bytes(&self) -> u64 {
        self.status_kib("VmRSS") * 1024
    }

    /// Resets the peak ([`peak_rss_bytes`](Self::peak_rss_bytes)) to the current resident memory
    /// (writes `5` to `/proc/PID/clear_refs`), to measure the peak of one phase of a test.
    pub fn reset_peak_rss(&self) {
        let path = self.proc_path("clear_refs");
        fs::write(&path, "5").unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    }

    /// Where each open file descriptor points (`readlink /proc/PID/fd/*`): paths (a deleted temp
    /// file reads `/path (deleted)`), `socket:[INODE]`, `pipe:[INODE]`, `anon_inode:...`.
    pub fn open_fd_targets(&self) -> Vec<String> {
        let dir = self.proc_path("fd");
        let entries = fs::read_dir(&dir).unwrap_or_else(|err| panic!("read {}: {err}", dir.display()));
        // A descriptor closed between listing and reading is simply gone.
        entries
            .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
            .map(|target| target.to_string_lossy().into_owned())
            .collect()
    }

    /// Established TCP connections from this process to `127.0.0.1:port` (e.g. clamd's port):
    /// its socket inodes from `/proc/PID/fd` matched against `/proc/PID/net/tcp` and `tcp6`.
    pub fn tcp_connections_to(&self, port: u16) -> usize {
        let own_sockets: HashSet<u64> = self
            .open_fd_targets()
            .iter()
            .filter_map(|target| target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
            .collect();
        ["net/tcp", "net/tcp6"]
            .iter()
            .map(|table| fs::read_to_string(self.proc_path(table)).unwrap_or_default())
            .map(|table| {
                table
                    .lines()
                    .skip(1)
                    .filter_map(TcpTableEntry::parse)
                    .filter(|entry| {
                        entry.established
                            && entry.remote_is_ipv4_loopback
                            && entry.remote_port == port
                            && own_sockets.contains(&entry.inode)
                    })
                    .count()
            })
            .sum()
    }

    /// clamgate's log so far (its stdout and stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir().join("clamgate.log")).unwrap_or_default()
    }

    /// The config file clamgate was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("clamgate.toml")
    }

    /// This clamgate's own directory (config and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn proc_path(&self, name: &str) -> PathBuf {
        Path::new("/proc").join(self.pid().to_string()).join(name)
    }

    /// A `kB` field of `/proc/PID/status`, in KiB.
    fn status_kib(&self, field: &str) -> u64 {
        let path = self.proc_path("status");
        let status = fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().strip_suffix("kB")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{field}: N kB` line in {}", path.display()))
    }
}

impl Drop for ClamgateProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
            eprintln!("clamgate pid {} (test failed), last log lines:\n{tail}", self.child.id());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum StartFailure {
    /// A listener's port was taken: another pair of ports may work.
    PortTaken(String),
    Fatal(String),
}

/// One line of `/proc/PID/net/tcp` or `tcp6`:
/// `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...`.
struct TcpTableEntry {
    remote_port: u16,
    /// `127.0.0.1`, or `::ffff:127.0.0.1` in `tcp6`.
    remote_is_ipv4_loopback: bool,
    /// State `01`.
    established: bool,
    inode: u64,
}

impl TcpTableEntry {
    fn parse(line: &str) -> Option<TcpTableEntry> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (remote_address, remote_port) = fields.get(2)?.split_once(':')?;
        Some(TcpTableEntry {
            remote_port: u16::from_str_radix(remote_port, 16).ok()?,
            // Addresses are 32-bit words in host (little-endian) order.
            remote_is_ipv4_loopback: remote_address == "0100007F"
                || remote_address == "0000000000000000FFFF00000100007F",
            established: *fields.get(3)? == "01",
            inode: fields.get(9)?.parse().ok()?,
        })
    }
}

/// A port that was free a moment ago on 127.0.0.1 (clamgate binds it itself; the start-up
/// retries cover the race).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
    listener.local_addr().expect("ephemeral port address").port()
}

#[cfg(test)]
mod tests {
    // Imports inside the tests: benches/proxy compiles this module (cfg(test)) without its tests.
    #[test]
    fn extra_toml_extends_and_overrides_the_harness_config() {
        use super::{config_text, Ipv4Addr, SocketAddr};
        let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, 2));
        let text = config_text(
            grpc,
            admin,
            "tcp://127.0.0.1:3",
            "[clamd]\nreply_timeout_ms = 9\n[log]\nlevel = \"info\"",
        );
        let config: toml::Table = text.parse().expect("config is TOML");
        assert_eq!(config["clamd"]["address"].as_str(), Some("tcp://127.0.0.1:3"));
        assert_eq!(config["clamd"]["reply_timeout_ms"].as_integer(), Some(9));
        assert_eq!(config["log"]["level"].as_str(), Some("info"));
        assert_eq!(config["listen"]["admin_addr"].as_str(), Some("127.0.0.1:2"));
    }

    #[test]
    fn tcp_table_lines_are_read() {
        use super::TcpTableEntry;
        let v4 = "   1: 0100007F:A1B2 0100007F:0CEA 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0";
        let entry = TcpTableEntry::parse(v4).expect("parsed");
        assert_eq!(
            (entry.remote_port, entry.remote_is_ipv4_loopback, entry.established, entry.inode),
            (3306, true, true, 4242)
        );
        let listening = "   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 7 1 0";
        assert!(!TcpTableEntry::parse(listening).expect("parsed").established);
    }
}
