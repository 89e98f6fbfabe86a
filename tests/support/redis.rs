//! A real `redis-server` for integration tests: an ephemeral port, its own temp dir, no
//! persistence, killed on drop. It can be stopped, frozen and restarted on the same port to test
//! how clamgate behaves while Redis is away.
//!
//! The binary is `$REDIS_SERVER_BIN`, or `redis-server` on `PATH`. Extra server arguments go through
//! [`RedisProcess::start_with_args`]; a Redis Cluster harness can start each master with
//! `--cluster-enabled yes --cluster-config-file nodes.conf` (each process has its own dir), then
//! join them with `redis-cli --cluster create`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server gets to answer PING after being spawned.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// Interval between readiness polls.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Ports tried before giving up (another process may take the port between probe and bind).
const PORT_ATTEMPTS: usize = 5;

/// A `redis-server` child process owned by one test.
pub struct RedisProcess {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl RedisProcess {
    /// Starts a standalone server on a free loopback port and waits until it answers PING.
    /// Panics (this is test code) with the server's log when it cannot start.
    pub fn start() -> RedisProcess {
        RedisProcess::start_with_args(&[])
    }

    /// Like [`RedisProcess::start`], with extra `redis-server` arguments, kept for restarts.
    pub fn start_with_args(extra_args: &[&str]) -> RedisProcess {
        let bin = redis_server_bin();
        let dir = tempfile::Builder::new()
            .prefix("clamgate-redis-")
            .tempdir()
            .expect("create a temp dir for redis-server");
        let mut process = RedisProcess {
            bin,
            dir,
            port: 0,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            child: None,
        };
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            process.port = free_port();
            match process.spawn_and_wait() {
                Ok(child) => {
                    process.child = Some(child);
                    return process;
                }
                Err(err) => failures.push(format!("port {}: {err}", process.port)),
            }
        }
        panic!("redis-server did not start:\n{}", failures.join("\n"));
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port the server listens on; it stays the same across [`RedisProcess::start_again`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory (its log is `redis.log` there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether a server process is currently running (possibly frozen).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to exit. No-op when stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and waits until it answers PING. It comes back
    /// empty: persistence is off.
    pub fn start_again(&mut self) {
        self.stop();
        let mut failures = Vec::new();
        // The port is normally free again at once; retry briefly in case the old socket lingers.
        for _ in 0..PORT_ATTEMPTS {
            match self.spawn_and_wait() {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(err) => failures.push(err),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}:\n{}", self.port, failures.join("\n"));
    }

    /// Suspends the server (SIGSTOP): connections stay open but nothing is answered, like a
    /// hung or black-holed Redis.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a server suspended by [`RedisProcess::freeze`].
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is not running");
        let status = Command::new("kill").arg(signal).arg(child.id().to_string()).status().expect("run kill");
        assert!(status.success(), "kill {signal} {} failed", child.id());
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Spawns the server on `self.port` and polls it until it answers, it exits, or the deadline.
    fn spawn_and_wait(&self) -> Result<Child, String> {
        let mut child = Command::new(&self.bin)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.extra_args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("cannot run {}: {err}", self.bin.display()))?;
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}; log:\n{}", self.log_tail()));
            }
            // Only our own server counts: another test's Redis may answer on a port we lost.
            if server_pid(self.port) == Some(child.id()) {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {READY_DEADLINE:?}; log:\n{}", self.log_tail()));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn redis_server_bin() -> PathBuf {
    std::env::var_os("REDIS_SERVER_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("redis-server"))
}

/// A port that was free a moment ago: bind port 0, read it, release it.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral port")
}

/// The `process_id` the server on `port` reports (`INFO server`), if it answers at all.
fn server_pid(port: u16) -> Option<u32> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    stream.set_write_timeout(Some(Duration::from_millis(500))).ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).ok()?;
    // A bulk string: `$<len>\r\n<payload>\r\n`. Anything else (`-LOADING ...`) is "not yet".
    let len: usize = header.strip_prefix('$')?.trim_end().parse().ok()?;
    let mut payload = vec![0; len];
    reader.read_exact(&mut payload).ok()?;
    String::from_utf8_lossy(&payload)
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}
