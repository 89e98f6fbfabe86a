//! The `clamgate` binary: exit 64 with every config error at once, `check-config`, `scan` exit
//! codes against a real clamd, and `serve` shutting down cleanly on SIGTERM.

mod support;

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::clamd::ClamdProcess;
use support::samples;

fn clamgate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_clamgate"));
    // The tests' own environment must not leak CLAMGATE_* settings into the binary.
    for (key, _) in std::env::vars() {
        if key.starts_with("CLAMGATE_") {
            command.env_remove(key);
        }
    }
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run clamgate")
}

fn write_file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::File::create(&path).and_then(|mut f| f.write_all(bytes)).expect("write file");
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

#[test]
fn bad_config_exits_64_listing_every_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_file(
        &dir,
        "bad.toml",
        b"[clamd]\nconnect_timeout_ms = \"soon\"\naddress = \"clamd:3310\"\n[cache]\nredis_ur = \"redis://x\"\n",
    );
    let output =
        run(clamgate().args(["serve", "--config"]).arg(&config).env("CLAMGATE_POLICY_REPORT_ONLY", "maybe"));
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "cache.redis_ur: unknown key \"redis_ur\" in [cache]; did you mean \"redis_url\"?",
        "clamd.connect_timeout_ms: expected an integer, found a string",
        "CLAMGATE_POLICY_REPORT_ONLY: invalid value for policy.report_only: expected true or false, found \"maybe\"",
        "clamd.address: expected \"tcp://HOST:PORT\" or \"unix:///absolute/path\", found \"clamd:3310\"",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}

#[test]
fn bad_config_exits_before_binding_anything() {
    // The port is held here: a clamgate that bound before validating would fail with 69.
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = format!("[listen]\ngrpc_addr = \"127.0.0.1:{port}\"\n");
    let bad = write_file(&dir, "bad.toml", format!("{listen}[scan]\nmax_scan_bytes = 0\n").as_bytes());
    let output = run(clamgate().args(["serve", "--config"]).arg(&bad));
    assert_eq!(output.status.code(), Some(64), "{}", String::from_utf8_lossy(&output.stderr));

    // The same config without the error reaches the bind and reports the busy port with 69.
    let good = write_file(&dir, "good.toml", listen.as_bytes());
    let output = run(clamgate().args(["serve", "--config"]).arg(&good));
    assert_eq!(output.status.code(), Some(69), "{}", String::from_utf8_lossy(&output.stderr));
    drop(held);
}

#[test]
fn unknown_environment_variable_is_an_error() {
    let output = run(clamgate().args(["check-config"]).env("CLAMGATE_CLAMD_ADRESS", "tcp://127.0.0.1:1"));
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("did you mean CLAMGATE_CLAMD_ADDRESS?"));
}

#[test]
fn the_shipped_sample_config_is_valid() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/clamgate.toml");
    let output = run(clamgate().args(["check-config", "--config", sample]));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn scan_exit_codes_follow_the_verdicts() {
    let mut clamd = ClamdProcess::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let clean = write_file(&dir, "clean.bin", &samples::clean_sample(100_000));
    let infected = write_file(&dir, "eicar.zip", &samples::eicar_zip());
    let address = clamd.address();
    let scan = |files: &[&std::path::Path]| {
        let output = run(clamgate().arg("scan").args(files).env("CLAMGATE_CLAMD_ADDRESS", &address));
        (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let (code, stdout) = scan(&[&clean]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("clean.bin: clean sha256="), "{stdout}");
    let (code, stdout) = scan(&[&clean, &infected]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("eicar.zip: infected Test.Eicar.Body"), "{stdout}");
    clamd.stop();
    let (code, stdout) = scan(&[&clean]);
    assert_eq!(code, Some(2), "{stdout}");
    assert!(stdout.contains("clean.bin: unscanned engine_unavailable"), "{stdout}");
}

#[test]
fn serve_reports_ready_and_exits_cleanly_on_sigterm() {
    let clamd = ClamdProcess::start();
    let (grpc, admin) = (free_port(), free_port());
    let mut child = clamgate()
        .arg("serve")
        .env("CLAMGATE_CLAMD_ADDRESS", clamd.address())
        .env("CLAMGATE_LISTEN_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("CLAMGATE_LISTEN_ADMIN_ADDR", format!("127.0.0.1:{admin}"))
        .env("CLAMGATE_CLAMD_HEALTH_INTERVAL_MS", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn clamgate serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if http_status(admin, "/readyz") == Some(200) {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("clamgate serve never became ready");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The kill command keeps this test free of a libc dependency.
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "clamgate did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(exit.code(), Some(0), "{stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
}

/// A minimal HTTP/1.0 GET, to keep this test free of an async runtime.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}
