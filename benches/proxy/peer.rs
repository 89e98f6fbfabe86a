//! The incumbent, for the `peer-repeat` and `peer-unique` scenarios: squid 5.7 as a reverse
//! proxy in front of the bench's origin, sending every response to c-icap's `virus_scan` service
//! (RESPMOD), which hands the body to the same clamd as clamgate through `clamd_mod` (its unix
//! socket: FILDES). All three from Debian 12's packages (`squid c-icap
//! libc-icap-mod-virus-scan`), started in a directory of their own and stopped on drop.
//!
//! Settings, chosen to be the incumbent at its fastest without changing what it guarantees:
//! squid caches nothing (`cache deny all`: every request reaches the origin and is scanned, as
//! every clamgate request is), keeps ICAP connections open, runs one worker per CPU (SMP, as
//! Envoy and nginx get); c-icap keeps its Debian defaults for processes and threads, scans every
//! type of body (`ScanFileTypes` includes DATA, the bench's bodies), never trickles data
//! (`SendPercentData 0`), and answers 204 for clean bodies. `bypass=0`: an ICAP failure is an
//! error, not a pass.
//!
//! Debian's squid 5.7 stalls on RESPMOD bodies over 64 KiB (squid bug 5352; a body of exactly
//! 64 KiB stalls about a second per response), so the bench gives it bodies up to 63 KiB only.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::machine;

/// The largest body the peer is measured with (squid bug 5352 above 64 KiB).
pub const MAX_BODY: usize = 63 * 1024;

const SQUID: &str = "/usr/sbin/squid";
const C_ICAP: &str = "/usr/bin/c-icap";
const C_ICAP_MODULES: &str = "/usr/lib/x86_64-linux-gnu/c_icap";
/// Where squid's SMP processes meet (compiled into Debian's squid); made if missing.
const SQUID_STATE_DIR: &str = "/run/squid";

/// squid + c-icap, running. Stopped on drop.
pub struct BenchPeer {
    dir: tempfile::TempDir,
    squid: Child,
    c_icap: Child,
    addr: SocketAddr,
}

impl BenchPeer {
    /// Whether the Debian packages are installed (`scripts/bench.sh` installs them when the
    /// `peer` scenarios are asked for).
    pub fn available() -> Result<(), String> {
        let needed = [
            SQUID.to_string(),
            C_ICAP.to_string(),
            format!("{C_ICAP_MODULES}/virus_scan.so"),
            format!("{C_ICAP_MODULES}/clamd_mod.so"),
        ];
        let missing: Vec<&str> =
            needed.iter().map(String::as_str).filter(|path| !Path::new(path).exists()).collect();
        match missing.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "not installed: {} (apt-get install squid c-icap libc-icap-mod-virus-scan)",
                missing.join(", ")
            )),
        }
    }

    /// Starts c-icap on `clamd_socket` and squid in front of `origin`, with `workers` squid
    /// workers, and waits until a request through squid is answered.
    pub fn start(clamd_socket: &Path, origin: SocketAddr, workers: usize) -> Result<BenchPeer, String> {
        BenchPeer::available()?;
        let dir = tempfile::Builder::new()
            .prefix("clamgate-bench-peer-")
            .tempdir()
            .map_err(|err| format!("peer temp dir: {err}"))?;
        // squid drops to its own user (proxy) when started as root: its files must be writable.
        set_mode(dir.path(), 0o777)?;
        if !Path::new(SQUID_STATE_DIR).exists() {
            let _ =
                Command::new("install").args(["-d", "-o", "proxy", "-g", "proxy", SQUID_STATE_DIR]).status();
        }
        let icap_port = free_port()?;
        let http_port = free_port()?;
        let path = |name: &str| dir.path().join(name);
        fs::write(path("c-icap.conf"), c_icap_config(dir.path(), icap_port, clamd_socket))
            .map_err(|err| format!("write c-icap.conf: {err}"))?;
        fs::write(path("squid.conf"), squid_config(dir.path(), http_port, icap_port, origin, workers))
            .map_err(|err| format!("write squid.conf: {err}"))?;
        let log = |name: &str| File::create(path(name)).map_err(|err| format!("peer {name}: {err}"));
        let c_icap = Command::new(C_ICAP)
            .args(["-N", "-f"])
            .arg(path("c-icap.conf"))
            .stdin(Stdio::null())
            .stdout(log("c-icap.out")?)
            .stderr(log("c-icap.err")?)
            .spawn()
            .map_err(|err| format!("spawn {C_ICAP}: {err}"))?;
        // --foreground: squid's master stays this child (SMP needs squid's daemon mode, which -N
        // turns off).
        let squid = Command::new(SQUID)
            .args(["--foreground", "-f"])
            .arg(path("squid.conf"))
            .stdin(Stdio::null())
            .stdout(log("squid.out")?)
            .stderr(log("squid.err")?)
            .spawn()
            .map_err(|err| format!("spawn {SQUID}: {err}"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], http_port));
        let mut peer = BenchPeer { dir, squid, c_icap, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        for (what, port) in [("c-icap", icap_port), ("squid", http_port)] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "{what} did not listen on port {port} within 30 s:\n{}",
                        peer.log_tail()
                    ));
                }
                if let Ok(Some(status)) = peer.squid.try_wait() {
                    return Err(format!("squid exited ({status}):\n{}", peer.log_tail()));
                }
                if let Ok(Some(status)) = peer.c_icap.try_wait() {
                    return Err(format!("c-icap exited ({status}):\n{}", peer.log_tail()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(peer)
    }

    /// squid's HTTP port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer's directory (its processes mention it: CPU accounting).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// c-icap's RESPMOD answers so far, by ICAP status (`200`: the body was changed, i.e.
    /// blocked; `204`: clean, passed unchanged), from its access log.
    pub fn respmod_answers(&self) -> (u64, u64) {
        let log = fs::read_to_string(self.dir.path().join("c-icap-access.log")).unwrap_or_default();
        let count = |status: &str| {
            log.lines().filter(|line| line.contains("RESPMOD") && line.trim_end().ends_with(status)).count()
                as u64
        };
        (count(" 200"), count(" 204"))
    }

    fn log_tail(&self) -> String {
        ["squid-cache.log", "squid.err", "c-icap-server.log", "c-icap.err"]
            .iter()
            .map(|name| {
                let text = fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {name}\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for BenchPeer {
    fn drop(&mut self) {
        for child in [&mut self.squid, &mut self.c_icap] {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in [&mut self.squid, &mut self.c_icap] {
            while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Workers and c-icap's children that outlived their parent.
        for pid in machine::pids_mentioning(self.dir.path()) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

fn c_icap_config(dir: &Path, port: u16, clamd_socket: &Path) -> String {
    let dir = dir.display();
    format!(
        "PidFile {dir}/c-icap.pid\n\
         CommandsSocket {dir}/c-icap.ctl\n\
         Port 127.0.0.1:{port}\n\
         TmpDir {dir}\n\
         Timeout 300\n\
         MaxKeepAliveRequests 100\n\
         KeepAliveTimeout 600\n\
         StartServers 3\n\
         MaxServers 10\n\
         MinSpareThreads 10\n\
         MaxSpareThreads 20\n\
         ThreadsPerChild 10\n\
         MaxRequestsPerChild 0\n\
         MaxMemObject 131072\n\
         DebugLevel 0\n\
         Pipelining on\n\
         ModulesDir {C_ICAP_MODULES}\n\
         ServicesDir {C_ICAP_MODULES}\n\
         TemplateDir /usr/share/c_icap/templates/\n\
         TemplateDefaultLanguage en\n\
         LoadMagicFile /etc/c-icap/c-icap.magic\n\
         ServerLog {dir}/c-icap-server.log\n\
         AccessLog {dir}/c-icap-access.log\n\
         Module common clamd_mod.so\n\
         clamd_mod.ClamdSocket {clamd}\n\
         Service virus_scan virus_scan.so\n\
         virus_scan.DefaultEngine clamd\n\
         virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE GIF JPEG MSOFFICE\n\
         virus_scan.SendPercentData 0\n\
         virus_scan.StartSendPercentDataAfter 2M\n\
         virus_scan.MaxObjectSize 100M\n\
         virus_scan.Allow204Responces on\n",
        clamd = clamd_socket.display()
    )
}

fn squid_config(dir: &Path, http_port: u16, icap_port: u16, origin: SocketAddr, workers: usize) -> String {
    let dir = dir.display();
    format!(
        "http_port 127.0.0.1:{http_port} accel defaultsite=origin no-vhost\n\
         cache_peer {origin_ip} parent {origin_port} 0 no-query originserver name=origin\n\
         cache_peer_access origin allow all\n\
         http_access allow all\n\
         cache deny all\n\
         cache_mem 0 MB\n\
         workers {workers}\n\
         pid_filename {dir}/squid.pid\n\
         cache_log {dir}/squid-cache.log\n\
         access_log none\n\
         coredump_dir {dir}\n\
         icap_enable on\n\
         icap_preview_enable on\n\
         icap_preview_size 1024\n\
         icap_persistent_connections on\n\
         icap_service clamav_respmod respmod_precache bypass=0 icap://127.0.0.1:{icap_port}/virus_scan\n\
         adaptation_access clamav_respmod allow all\n\
         shutdown_lifetime 1 seconds\n",
        origin_ip = origin.ip(),
        origin_port = origin.port(),
        workers = workers.max(1),
    )
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|err| format!("chmod {}: {err}", path.display()))
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|err| format!("free port: {err}"))?;
    listener.local_addr().map(|addr| addr.port()).map_err(|err| format!("free port: {err}"))
}
