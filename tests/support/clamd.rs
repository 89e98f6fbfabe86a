//! A real clamd per test: own temp dir, free port, the tiny signature database from
//! `testdata/clamav/`, ready when it answers `PING`, killed on drop.
//!
//! Everything here is blocking (clamd starts in tens of milliseconds with the test database). From
//! a tokio test, start it with `tokio::task::spawn_blocking(ClamdProcess::start)` or simply call
//! it: the short blocking calls do no harm in a test.
//!
//! The binaries come from `CLAMD_BIN` / `SIGTOOL_BIN`, else `/usr/sbin/clamd` / `/usr/bin/sigtool`,
//! else `PATH`.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::samples::daily_sample;

/// How long clamd may take to answer `PING` after it is spawned.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a reload may take before [`ClamdProcess::wait_for_daily_version`] gives up.
const RELOAD_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between readiness polls.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Fresh ports tried when clamd exits during start-up (another process took the port).
const START_ATTEMPTS: usize = 5;
/// Timeout for each harness command to clamd.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// The signature files copied into every clamd's database directory.
const SIGNATURE_FILES: [&str; 3] = ["test.ndb", "test.hdb", "test.ldb"];

/// How to start a [`ClamdProcess`] beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct ClamdOptions {
    /// Also listen on the unix socket `<dir>/clamd.sock` (see [`ClamdProcess::unix_address`]).
    pub unix_socket: bool,
    /// Build a `daily.cud` with this version into the database directory before start, so that
    /// `VERSION` reports `ClamAV 1.4.6/<version>/<date>` (see [`ClamdProcess::install_daily`]).
    pub daily_version: Option<u32>,
    /// `Directive value` lines for clamd.conf. Each replaces the template's line for the same
    /// directive: clamd silently keeps the *first* of two lines with the same directive.
    pub config_overrides: Vec<String>,
}

/// clamd limits for bodies of hundreds of MiB: INSTREAM accepts up to 600 MiB, and a file of that
/// size (plus what archives inside it expand to) is scanned whole rather than cut short.
pub const LARGE_BODY_LIMITS: [&str; 3] = ["StreamMaxLength 600M", "MaxFileSize 600M", "MaxScanSize 1200M"];

impl ClamdOptions {
    /// The defaults with [`LARGE_BODY_LIMITS`] replacing the template's 25M/30M/100M limits. Push
    /// more `config_overrides` (e.g. `MaxScanTime`) onto the result if a test needs them.
    pub fn large_bodies() -> ClamdOptions {
        let config_overrides = LARGE_BODY_LIMITS.iter().map(|line| line.to_string()).collect();
        ClamdOptions { config_overrides, ..ClamdOptions::default() }
    }
}

/// A clamd child process with its own directory (`clamd.conf`, `db/`, `tmp/`, `clamd.log`).
///
/// Dropping it kills clamd and waits for it, even when the test panics (its log is then
/// printed to stderr), and removes the directory.
pub struct ClamdProcess {
    child: Option<Child>,
    port: u16,
    options: ClamdOptions,
    // Last: dropped after `Drop::drop` has killed clamd.
    dir: tempfile::TempDir,
}

impl ClamdProcess {
    /// Starts clamd on a free TCP port on 127.0.0.1 with the test signatures; returns once it
    /// answers `PING`. Panics (after killing clamd) if it does not within 30 s.
    pub fn start() -> ClamdProcess {
        ClamdProcess::start_with(ClamdOptions::default())
    }

    /// [`start`](Self::start), with a `daily.cud` of version `version` loaded.
    pub fn start_with_daily(version: u32) -> ClamdProcess {
        ClamdProcess::start_with(ClamdOptions { daily_version: Some(version), ..ClamdOptions::default() })
    }

    /// [`start`](Self::start), with a unix socket as well as TCP.
    pub fn start_with_unix_socket() -> ClamdProcess {
        ClamdProcess::start_with(ClamdOptions { unix_socket: true, ..ClamdOptions::default() })
    }

    /// [`start`](Self::start) with clamd's size limits raised for bodies of hundreds of MiB
    /// ([`ClamdOptions::large_bodies`]).
    pub fn start_for_large_bodies() -> ClamdProcess {
        ClamdProcess::start_with(ClamdOptions::large_bodies())
    }

    /// [`start`](Self::start) with `options`.
    pub fn start_with(options: ClamdOptions) -> ClamdProcess {
        let dir =
            tempfile::Builder::new().prefix("clamgate-clamd-").tempdir().expect("create clamd temp dir");
        let mut clamd = ClamdProcess { child: None, port: 0, options, dir };
        fs::create_dir(clamd.db_dir()).expect("create clamd db dir");
        fs::create_dir(clamd.dir().join("tmp")).expect("create clamd tmp dir");
        let testdata = testdata_dir();
        for name in SIGNATURE_FILES {
            fs::copy(testdata.join(name), clamd.db_dir().join(name))
                .unwrap_or_else(|err| panic!("copy {name} from {}: {err}", testdata.display()));
        }
        if let Some(version) = clamd.options.daily_version {
            clamd.install_daily(version);
        }
        if clamd.options.unix_socket {
            let socket = clamd.socket_path();
            // sun_path holds 108 bytes with the terminating NUL.
            assert!(socket.as_os_str().len() < 100, "unix socket path too long: {}", socket.display());
        }

        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            clamd.port = free_port();
            clamd.write_config();
            match clamd.spawn_and_wait() {
                Ok(()) => return clamd,
                // Most likely the port was taken between probing and binding: try another.
                Err(failure) => last_failure = failure,
            }
        }
        panic!("clamd did not start after {START_ATTEMPTS} attempts: {last_failure}");
    }

    /// `tcp://127.0.0.1:<port>`, as clamgate's `clamd.address` takes it.
    pub fn address(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// The TCP port clamd listens on (kept across [`stop`](Self::stop) and
    /// [`start_again`](Self::start_again)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The unix socket path, when started with [`ClamdOptions::unix_socket`].
    pub fn unix_socket_path(&self) -> Option<PathBuf> {
        self.options.unix_socket.then(|| self.socket_path())
    }

    /// `unix://<dir>/clamd.sock`, when started with [`ClamdOptions::unix_socket`].
    pub fn unix_address(&self) -> Option<String> {
        self.unix_socket_path().map(|path| format!("unix://{}", path.display()))
    }

    /// The directory clamd loads signatures from. Change files there, then [`reload`](Self::reload).
    pub fn db_dir(&self) -> PathBuf {
        self.dir().join("db")
    }

    /// This clamd's own directory (config, log, `db/`, `tmp/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// clamd's log so far (empty if there is none yet).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir().join("clamd.log")).unwrap_or_default()
    }

    /// clamd's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the clamd process is alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills clamd and waits for it to exit: connects to its port are refused from now on.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already exited is fine: either way it is gone after `wait`.
            let _ = child.kill();
            child.wait().expect("wait for clamd to exit");
        }
    }

    /// Starts clamd again after [`stop`](Self::stop), on the same port with the same directory
    /// (and whatever is now in `db/`). Stops it first if it is running. Panics if it does not
    /// answer `PING` in time, e.g. because another process took the port meanwhile.
    pub fn start_again(&mut self) {
        self.stop();
        if let Err(failure) = self.spawn_and_wait() {
            panic!("clamd did not start again on port {}: {failure}", self.port);
        }
    }

    /// Sends `RELOAD`. With `ConcurrentDatabaseReload yes` clamd keeps scanning with the old
    /// signatures and swaps when the new ones are loaded: wait with
    /// [`wait_for_daily_version`](Self::wait_for_daily_version), not a sleep.
    pub fn reload(&self) {
        let reply = self.command(b"zRELOAD\0").expect("send RELOAD to clamd");
        assert_eq!(reply, "RELOADING", "unexpected reply to RELOAD");
    }

    /// clamd's `STATS` report: threads, queue, and one tab-indented line per job
    /// (`\tINSTREAM 0.300425 instream(127.0.0.1@46784)` while a scan runs).
    pub fn stats(&self) -> String {
        self.command_until_end(b"zSTATS\0").expect("send STATS to clamd")
    }

    /// clamd's raw `VERSION` reply, without the terminator.
    pub fn version_string(&self) -> String {
        self.command(b"zVERSION\0").expect("send VERSION to clamd")
    }

    /// Builds `daily.cud` (unsigned, `--cvd-version=<version>`) and puts it in `db/`, replacing any
    /// previous one. It holds one signature, `Test.Daily.V<version>`, matching
    /// [`daily_sample`]`(version)`. Takes effect at start or after [`reload`](Self::reload).
    pub fn install_daily(&self, version: u32) {
        let build = self.dir().join("daily-build");
        let _ = fs::remove_dir_all(&build);
        fs::create_dir(&build).expect("create daily build dir");
        // sigtool packs every `daily.*` database in its working directory and needs a COPYING file.
        fs::write(build.join("COPYING"), "clamgate test signatures, not for distribution\n")
            .expect("write COPYING");
        fs::write(
            build.join("daily.ndb"),
            format!("Test.Daily.V{version}:0:*:{}\n", hex(&daily_sample(version))),
        )
        .expect("write daily.ndb");
        let mut sigtool = Command::new(binary("SIGTOOL_BIN", "/usr/bin/sigtool", "sigtool"))
            .arg("--build=daily.cud")
            .arg("--unsigned")
            .arg(format!("--cvd-version={version}"))
            // Otherwise sigtool compares with the system's /var/lib/clamav/daily.cud.
            .arg("--datadir=.")
            .current_dir(&build)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sigtool");
        // sigtool asks for the builder's name on stdin.
        sigtool.stdin.take().expect("sigtool stdin").write_all(b"clamgate-tests\n").expect("answer sigtool");
        let output = sigtool.wait_with_output().expect("wait for sigtool");
        let built = build.join("daily.cud");
        assert!(
            output.status.success() && built.exists(),
            "sigtool --build failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // Same filesystem: clamd never sees a half-written database.
        fs::rename(&built, self.db_dir().join("daily.cud")).expect("move daily.cud into db dir");
    }

    /// Polls `VERSION` until clamd reports daily database `version` (after a
    /// [`reload`](Self::reload)); panics after 30 s.
    pub fn wait_for_daily_version(&self, version: u32) {
        let wanted = format!("/{version}/");
        let deadline = Instant::now() + RELOAD_DEADLINE;
        loop {
            let reply = self.command(b"zVERSION\0").unwrap_or_default();
            if reply.contains(&wanted) {
                return;
            }
            assert!(Instant::now() < deadline, "clamd still reports {reply:?}, not daily version {version}");
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn socket_path(&self) -> PathBuf {
        self.dir().join("clamd.sock")
    }

    fn config_path(&self) -> PathBuf {
        self.dir().join("clamd.conf")
    }

    fn write_config(&self) {
        let template_path = testdata_dir().join("clamd.conf");
        let template = fs::read_to_string(&template_path)
            .unwrap_or_else(|err| panic!("read {}: {err}", template_path.display()));
        let dir = self.dir().to_str().expect("temp dir path is UTF-8");
        let rendered = template.replace("{{PORT}}", &self.port.to_string()).replace("{{DIR}}", dir);
        let mut overrides = self.options.config_overrides.clone();
        if self.options.unix_socket {
            overrides.push(format!("LocalSocket {}", self.socket_path().display()));
        }
        fs::write(self.config_path(), apply_overrides(&rendered, &overrides)).expect("write clamd.conf");
    }

    /// Spawns clamd and polls `PING` until it answers. On failure clamd is killed and the
    /// error says why (with its log).
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let output = fs::File::create(self.dir().join("clamd.stdout")).expect("create clamd.stdout");
        let errors = output.try_clone().expect("clone clamd.stdout");
        let child = Command::new(binary("CLAMD_BIN", "/usr/sbin/clamd", "clamd"))
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .spawn()
            .map_err(|err| format!("cannot run clamd: {err}"))?;
        // Owned by `self` from here on: a panic below still kills it in `Drop`.
        self.child = Some(child);

        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!("clamd exited with {status} during start-up:\n{}", self.diagnostics()));
            }
            if self.ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!(
                    "clamd did not answer PING within {START_DEADLINE:?}:\n{}",
                    self.diagnostics()
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn ready(&self) -> bool {
        let tcp = self.command(b"zPING\0").is_ok_and(|reply| reply == "PONG");
        #[cfg(unix)]
        let unix = !self.options.unix_socket
            || UnixStream::connect(self.socket_path())
                .and_then(|stream| exchange(stream, b"zPING\0"))
                .is_ok_and(|reply| reply == "PONG");
        #[cfg(not(unix))]
        let unix = true;
        tcp && unix
    }

    /// Sends one command over TCP and returns the reply without its terminator.
    fn command(&self, command: &[u8]) -> std::io::Result<String> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        exchange(TcpStream::connect_timeout(&address, COMMAND_TIMEOUT)?, command)
    }

    /// Sends one command over TCP and returns everything clamd sends until it closes (for
    /// multi-line replies such as `STATS`).
    fn command_until_end(&self, command: &[u8]) -> std::io::Result<String> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream = TcpStream::connect_timeout(&address, COMMAND_TIMEOUT)?;
        stream.set_timeouts(COMMAND_TIMEOUT)?;
        stream.write_all(command)?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply)?;
        Ok(String::from_utf8_lossy(&reply).into_owned())
    }

    fn diagnostics(&self) -> String {
        let stdout = fs::read_to_string(self.dir().join("clamd.stdout")).unwrap_or_default();
        format!("--- clamd.log ---\n{}--- stdout/stderr ---\n{stdout}", self.log())
    }
}

impl Drop for ClamdProcess {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("clamd on port {} (test failed), last log lines:\n{}", self.port, tail.join("\n"));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `testdata/clamav/` in this crate.
pub fn testdata_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join("clamav")
}

/// Replaces the template's line for each override's directive, or appends the override.
fn apply_overrides(config: &str, overrides: &[String]) -> String {
    let directive = |line: &str| line.split_whitespace().next().map(str::to_ascii_lowercase);
    let overridden: Vec<String> = overrides.iter().filter_map(|line| directive(line)).collect();
    let mut out: String = config
        .lines()
        .filter(|line| {
            line.trim_start().starts_with('#') || !directive(line).is_some_and(|d| overridden.contains(&d))
        })
        .flat_map(|line| [line, "\n"])
        .collect();
    if !overrides.is_empty() {
        out.push_str("\n# Overrides from the test harness.\n");
        for line in overrides {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A port that was free a moment ago on 127.0.0.1 (clamd binds it itself; the start-up retries
/// cover the race).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
    listener.local_addr().expect("ephemeral port address").port()
}

/// Writes `command` and reads the reply to its terminator (or end of file).
fn exchange<S: Read + Write + SetTimeouts>(mut stream: S, command: &[u8]) -> std::io::Result<String> {
    stream.set_timeouts(COMMAND_TIMEOUT)?;
    stream.write_all(command)?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte)? == 1 {
        if byte[0] == b'\0' || byte[0] == b'\n' {
            break;
        }
        reply.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

trait SetTimeouts {
    fn set_timeouts(&self, timeout: Duration) -> std::io::Result<()>;
}

impl SetTimeouts for TcpStream {
    fn set_timeouts(&self, timeout: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

#[cfg(unix)]
impl SetTimeouts for UnixStream {
    fn set_timeouts(&self, timeout: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

fn binary(env: &str, default: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    if Path::new(default).exists() {
        return PathBuf::from(default);
    }
    PathBuf::from(name)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
