//! A real `redis-server` for integration tests: an ephemeral port, its own temp dir, no
//! persistence, killed on drop. It can be stopped, frozen and restarted on the same port to test
//! how clamgate behaves while Redis is away.
//!
//! Three shapes:
//! - [`RedisProcess::start`] / [`RedisProcess::start_with_args`]: a plain standalone server (an
//!   ACL user can be added with [`RedisProcess::add_acl_user`]);
//! - [`RedisProcess::start_tls`]: TLS only (`rediss://`), with a CA and a server certificate made
//!   by the `openssl` CLI in the temp dir; [`tls_available`] says whether this `redis-server` was
//!   built with TLS;
//! - [`RedisCluster::start`]: N masters joined by `redis-cli --cluster create`, no replicas.
//!
//! The binaries are `$REDIS_SERVER_BIN` and `$REDIS_CLI_BIN`, or `redis-server` and `redis-cli` on
//! `PATH`; `openssl` on `PATH`.

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

/// How long a cluster gets to agree that every slot is served.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(30);

/// A `redis-server` child process owned by one test.
pub struct RedisProcess {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    mode: Mode,
    extra_args: Vec<String>,
    /// The default user's password, from `--requirepass` in the extra arguments: the readiness
    /// probe and [`RedisProcess::cli`] authenticate with it.
    admin_password: Option<String>,
    child: Option<Child>,
}

/// What kind of server, and what it needs to be spawned and probed.
#[derive(Clone)]
enum Mode {
    Plain,
    /// TLS only: `port` is the TLS port; the plain port is off.
    Tls {
        ca_file: PathBuf,
    },
    /// A cluster node; its bus port is chosen like its port (port + 10000 may not exist).
    ClusterNode {
        bus_port: u16,
    },
}

impl RedisProcess {
    /// Starts a standalone server on a free loopback port and waits until it answers PING.
    /// Panics (this is test code) with the server's log when it cannot start.
    pub fn start() -> RedisProcess {
        RedisProcess::start_with_args(&[])
    }

    /// Like [`RedisProcess::start`], with extra `redis-server` arguments, kept for restarts.
    pub fn start_with_args(extra_args: &[&str]) -> RedisProcess {
        RedisProcess::start_in(new_dir(), Mode::Plain, extra_args)
    }

    /// A TLS-only server (`--port 0 --tls-port P`) with a certificate for `IP:127.0.0.1` and
    /// `DNS:localhost`, signed by a CA made for this server ([`RedisProcess::ca_file`]). Clients
    /// are not asked for certificates. Panics if this `redis-server` has no TLS: check
    /// [`tls_available`] first.
    pub fn start_tls() -> RedisProcess {
        let dir = new_dir();
        let ca_file = make_tls_files(dir.path());
        RedisProcess::start_in(dir, Mode::Tls { ca_file }, &[])
    }

    /// A cluster-enabled node, not yet part of any cluster.
    fn start_cluster_node() -> RedisProcess {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ];
        RedisProcess::start_in(new_dir(), Mode::ClusterNode { bus_port: 0 }, &args)
    }

    fn start_in(dir: tempfile::TempDir, mode: Mode, extra_args: &[&str]) -> RedisProcess {
        let bin = redis_server_bin();
        let admin_password =
            extra_args.windows(2).find(|pair| pair[0] == "--requirepass").map(|pair| pair[1].to_string());
        let mut process = RedisProcess {
            bin,
            dir,
            port: 0,
            mode,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            admin_password,
            child: None,
        };
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            process.port = free_port();
            if let Mode::ClusterNode { bus_port } = &mut process.mode {
                *bus_port = free_port();
            }
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

    /// `rediss://127.0.0.1:PORT/` for a server made by [`RedisProcess::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }

    /// The PEM file of the CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> &Path {
        match &self.mode {
            Mode::Tls { ca_file } => ca_file,
            _ => panic!("not a TLS server"),
        }
    }

    /// Runs `redis-cli` against this server (over TLS for a TLS server, as the default user with
    /// its `--requirepass` password if any) and returns its stdout; panics if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let password = self.admin_password.as_deref();
        let mut command = Command::new(redis_cli_bin());
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Mode::Tls { ca_file } = &self.mode {
            command.arg("--tls").arg("--cacert").arg(ca_file);
        }
        if let Some(password) = password {
            // Through the environment, so that it shows in no process list.
            command.env("REDISCLI_AUTH", password);
        }
        let output = command.args(args).stdin(Stdio::null()).output().expect("run redis-cli");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success() && !stdout.starts_with("ERR") && !stdout.starts_with("NOAUTH"),
            "redis-cli {args:?} failed: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// Adds an ACL user allowed `commands` (e.g. `+get +set`) on keys matching `key_pattern`
    /// (e.g. `clamgate:*`).
    pub fn add_acl_user(&self, user: &str, password: &str, key_pattern: &str, commands: &[&str]) {
        let pass = format!(">{password}");
        let keys = format!("~{key_pattern}");
        let mut args = vec!["ACL", "SETUSER", user, "reset", "on", pass.as_str(), keys.as_str()];
        args.extend_from_slice(commands);
        let reply = self.cli(&args);
        assert_eq!(reply.trim(), "OK", "ACL SETUSER: {reply}");
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
        let mut command = Command::new(&self.bin);
        match &self.mode {
            Mode::Plain => {
                command.arg("--port").arg(self.port.to_string());
            }
            Mode::Tls { ca_file } => {
                let dir = self.dir.path();
                command
                    .args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(dir.join("server.crt"))
                    .arg("--tls-key-file")
                    .arg(dir.join("server.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(ca_file)
                    .args(["--tls-auth-clients", "no"]);
            }
            Mode::ClusterNode { bus_port } => {
                command.args(["--port", &self.port.to_string(), "--cluster-port", &bus_port.to_string()]);
            }
        }
        let mut child = command
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
            let pid = match &self.mode {
                Mode::Tls { ca_file } => tls_server_pid(self.port, ca_file),
                Mode::Plain | Mode::ClusterNode { .. } => {
                    server_pid(self.port, self.admin_password.as_deref())
                }
            };
            if pid == Some(child.id()) {
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

fn redis_cli_bin() -> PathBuf {
    std::env::var_os("REDIS_CLI_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("redis-cli"))
}

fn new_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("clamgate-redis-").tempdir().expect("create a temp dir for redis-server")
}

/// Whether this `redis-server` was built with TLS: `Err` with the reason when it was not (or
/// `openssl` is missing), for the caller to print before skipping.
pub fn tls_available() -> Result<(), String> {
    let openssl = Command::new("openssl").arg("version").output();
    if !openssl.is_ok_and(|out| out.status.success()) {
        return Err("the openssl CLI is not available to make certificates".to_string());
    }
    // A TLS build complains about the missing key file; a build without TLS about the option.
    let output = Command::new(redis_server_bin())
        .args(["--port", "0", "--tls-port", "1", "--tls-cert-file", "/nonexistent", "--daemonize", "no"])
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run redis-server: {err}"))?;
    let log =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if log.contains("tls-key-file") || log.contains("Failed to configure TLS") {
        Ok(())
    } else {
        Err(format!("redis-server was built without TLS: {}", log.lines().last().unwrap_or_default()))
    }
}

/// Makes `ca.crt`/`ca.key` and a server certificate for `IP:127.0.0.1` and `DNS:localhost`
/// (`server.crt`/`server.key`) in `dir` with the openssl CLI; returns the CA file.
fn make_tls_files(dir: &Path) -> PathBuf {
    let ca_file = make_ca(dir, "ca");
    openssl(
        dir,
        &["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"],
        &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    openssl(
        dir,
        &["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key"],
        &["-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext"],
    );
    ca_file
}

/// Makes a self-signed CA, `{name}.crt` and `{name}.key`, in `dir`; returns the certificate's path.
/// A CA made this way trusts no server but those it signed: a "wrong CA" for another server.
pub fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
    let subject = format!("/CN=clamgate test CA {name}");
    openssl(
        dir,
        &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"],
        &[
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "2",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(crt)
}

fn openssl(dir: &Path, args: &[&str], more: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .args(more)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(output.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// The `process_id` a TLS server on `port` reports, through `redis-cli --tls`.
fn tls_server_pid(port: u16, ca_file: &Path) -> Option<u32> {
    let output = Command::new(redis_cli_bin())
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--tls", "--cacert"])
        .arg(ca_file)
        .args(["INFO", "server"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// A Redis Cluster of masters without replicas, each its own [`RedisProcess`]; killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisProcess>,
}

impl RedisCluster {
    /// Starts `masters` cluster-enabled servers (at least 3, as `redis-cli --cluster create`
    /// requires), joins them, spreading the slots evenly, and waits until every node reports
    /// `cluster_state:ok` and knows every other node. Panics (test code) on failure.
    pub fn start(masters: usize) -> RedisCluster {
        assert!(masters >= 3, "redis-cli --cluster create needs at least 3 masters");
        let nodes: Vec<RedisProcess> = (0..masters).map(|_| RedisProcess::start_cluster_node()).collect();
        let addresses: Vec<String> = nodes.iter().map(|node| format!("127.0.0.1:{}", node.port())).collect();
        let output = Command::new(redis_cli_bin())
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until_ok();
        cluster
    }

    /// `redis://127.0.0.1:PORT` of every node, for `cache.redis_cluster_urls`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|node| format!("redis://127.0.0.1:{}", node.port())).collect()
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[RedisProcess] {
        &self.nodes
    }

    /// Kills node `index` (like a crash). Its slots go unserved: there are no replicas.
    pub fn stop_node(&mut self, index: usize) {
        self.nodes[index].stop();
    }

    /// Restarts node `index` on its port from its `nodes.conf` (empty of data) and waits until the
    /// cluster is whole again.
    pub fn start_node(&mut self, index: usize) {
        self.nodes[index].start_again();
        self.wait_until_ok();
    }

    /// Polls `CLUSTER INFO` on every node until each says `cluster_state:ok` and knows them all.
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + CLUSTER_DEADLINE;
        let known = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let infos: Vec<String> = self.nodes.iter().map(|node| node.cli(&["CLUSTER", "INFO"])).collect();
            if infos.iter().all(|info| info.contains("cluster_state:ok") && info.contains(&known)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not ok within {CLUSTER_DEADLINE:?}:\n{}",
                infos.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node (index) serving the slot of `key`, from `CLUSTER KEYSLOT` and `CLUSTER SLOTS`.
    pub fn node_for_key(&self, key: &str) -> usize {
        let slot: u16 =
            self.nodes[0].cli(&["CLUSTER", "KEYSLOT", key]).trim().parse().expect("a slot number");
        let owner = self.nodes.iter().position(|node| {
            let (start, end) = owned_slots(node);
            (start..=end).contains(&slot)
        });
        owner.unwrap_or_else(|| panic!("no node serves slot {slot}"))
    }

    /// How many keys node `index` holds (`DBSIZE`).
    pub fn dbsize(&self, index: usize) -> usize {
        self.nodes[index].cli(&["DBSIZE"]).trim().parse().expect("a key count")
    }
}

/// The one slot range a node of a fresh `--cluster create` serves, from `CLUSTER NODES` (`myself`).
fn owned_slots(node: &RedisProcess) -> (u16, u16) {
    let nodes = node.cli(&["CLUSTER", "NODES"]);
    let line = nodes.lines().find(|line| line.contains("myself")).expect("a myself line in CLUSTER NODES");
    let range = line.split_whitespace().nth(8).expect("a slot range in CLUSTER NODES");
    let (start, end) = range.split_once('-').unwrap_or((range, range));
    (start.parse().expect("slot"), end.parse().expect("slot"))
}

/// A port that was free a moment ago: bind port 0, read it, release it.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral port")
}

/// The `process_id` the server on `port` reports (`INFO server`), if it answers at all;
/// authenticating first as the default user when `password` is given.
fn server_pid(port: u16, password: Option<&str>) -> Option<u32> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    stream.set_write_timeout(Some(Duration::from_millis(500))).ok()?;
    if let Some(password) = password {
        // RESP array form, so that any byte in the password is safe.
        let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len());
        stream.write_all(auth.as_bytes()).ok()?;
    }
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    if password.is_some() {
        reader.read_line(&mut header).ok()?;
        if header != "+OK\r\n" {
            return None;
        }
        header.clear();
    }
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
