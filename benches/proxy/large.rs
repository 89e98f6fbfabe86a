//! The `large` scenario: how long a large body (1 MiB to hundreds of MiB) takes to scan through
//! Envoy, downloaded and uploaded, next to a direct clamd INSTREAM from the bench and to the same
//! transfer with ext_proc disabled, one request at a time.
//!
//! For each size, each repetition measures, back to back:
//!
//! 1. **direct**: the bench connects to clamd itself (`clamgate::clamd::ClamdClient`, the client
//!    clamgate uses: `zINSTREAM\0`, chunks of 1 MiB, `\0\0\0\0`) and sends the body from memory;
//!    timed from connect to clamd's reply, which must be `stream: OK`.
//! 2. **baseline**: `GET /noscan/files/{name}` (the `/` route's copy with ext_proc disabled);
//!    timed from connect to the last body byte.
//! 3. **scanned**: `GET /files/{name}` on the shipped `/` route: clamgate switches the download to
//!    FULL_DUPLEX_STREAMED, holds the body, has clamd scan it once and sends it back; timed the
//!    same way. clamgate's `/metrics` must show exactly one clamd scan and no cache hit for it.
//! 4. **upload baseline**: `POST /noscan/files/{name}` with the body: timed from connect to the
//!    origin's answer (`201`, after it read the whole body).
//! 5. **upload scanned**: `POST /files/{name}`: clamgate holds the request body (FULL_DUPLEX), has
//!    clamd scan it once and sends it on to the origin; timed the same way. clamgate's `/metrics`
//!    must show a clamd scan of at least the body's bytes.
//!
//! Every download must answer 200 with the origin's bytes (SHA-256 compared after the clock
//! stopped), and `x-clamgate-verdict: clean` exactly when scanned; every upload must reach the
//! origin whole (the SHA-256 it reports equals the body's).
//!
//! Each of the five gets bytes of its own (same generator and size, a new seed): clamd keeps
//! an MD5 cache of clean files, so scanning bytes it has seen before only hashes them (a 16 MiB
//! body: 0.08 s again against 0.45 s the first time, measured with the test database), and
//! clamgate's verdict cache would answer a repeated body without clamd at all.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use clamgate::clamd::{ClamdAddress, ClamdClient, ClamdTimeouts, ScanReply};
use sha2::{Digest, Sha256};
use tokio::runtime::Runtime;

use crate::clamgate_bin::ClamgateProcess;
use crate::envoy::{BenchEnvoy, NOSCAN_PREFIX};
use crate::load::Connection;
use crate::machine::{self, CpuSample};
use crate::report::size_label;
use crate::upstream::{seeded_bytes, Origin};

const MIB: usize = 1024 * 1024;

/// clamd's and clamgate's size limits while this scenario runs: clamd's `StreamMaxLength` in
/// `support::clamd::LARGE_BODY_LIMITS` (600M), and clamgate's `scan.max_scan_bytes` set to the
/// same, as the README asks. Also the largest `--large-sizes` accepted.
pub const MAX_SCAN_BYTES: usize = 600 * MIB;

/// The clamgate config this scenario adds to the bench's (everything else stays default).
pub fn clamgate_config() -> String {
    format!("[scan]\nmax_scan_bytes = {MAX_SCAN_BYTES}\n\n")
}

/// Repetitions of a size when `--large-reps` does not say: 10 up to 1 MiB, 5 up to 16 MiB, 3 above.
pub fn default_reps(size: usize) -> usize {
    match size {
        s if s <= MIB => 10,
        s if s <= 16 * MIB => 5,
        _ => 3,
    }
}

/// (size, repetitions) for each of `sizes`: `reps` empty gives the defaults, one number applies
/// to every size, otherwise there must be one per size.
pub fn plan(sizes: &[usize], reps: &[usize]) -> Result<Vec<(usize, usize)>, String> {
    let reps_of = |i: usize, size: usize| match reps {
        [] => Ok(default_reps(size)),
        [all] => Ok(*all),
        per_size if per_size.len() == sizes.len() => Ok(per_size[i]),
        _ => Err(format!(
            "--large-reps: {} numbers for {} sizes; give one number, or one per size of --large-sizes",
            reps.len(),
            sizes.len()
        )),
    };
    sizes.iter().enumerate().map(|(i, &size)| Ok((size, reps_of(i, size)?.max(1)))).collect()
}

/// How one body travels in this scenario.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Way {
    /// The bench to clamd, INSTREAM, no Envoy, no clamgate.
    Direct,
    /// Through Envoy on a route with ext_proc disabled.
    Baseline,
    /// Through Envoy and clamgate: held, scanned, sent back.
    Scanned,
    /// An upload through Envoy on a route with ext_proc disabled.
    UploadBaseline,
    /// An upload through Envoy and clamgate: held, scanned, sent on to the origin.
    UploadScanned,
}

impl Way {
    pub const ALL: [Way; 5] =
        [Way::Direct, Way::Baseline, Way::Scanned, Way::UploadBaseline, Way::UploadScanned];

    pub fn name(self) -> &'static str {
        match self {
            Way::Direct => "direct INSTREAM",
            Way::Baseline => "Envoy without ext_proc",
            Way::Scanned => "Envoy scanned",
            Way::UploadBaseline => "upload, Envoy without ext_proc",
            Way::UploadScanned => "upload, Envoy scanned",
        }
    }
}

/// What one size measured.
pub struct SizeResult {
    pub size: usize,
    /// Repetitions asked for.
    pub reps: usize,
    /// The times of each [`Way`], in `Way::ALL` order.
    pub times: [Vec<Duration>; 5],
    /// Failed measurements (not in the times above), described.
    pub errors: Vec<String>,
    /// clamd scans clamgate made during the scanned requests (downloads and uploads), and their
    /// total time (its
    /// `clamgate_clamd_scan_duration_seconds`: first byte sent to clamd → reply).
    pub clamd_scans: f64,
    pub clamd_seconds: f64,
    /// Held bodies clamgate moved to a temp file during the scanned requests.
    pub spilled: f64,
    /// clamgate's RSS before the first scanned request of this size, and its highest peak
    /// during one of them.
    pub clamgate_rss_before: Option<u64>,
    pub clamgate_peak_rss: Option<u64>,
    /// Envoy's highest peak RSS during one of the scanned requests.
    pub envoy_peak_rss: Option<u64>,
    /// Cores' worth of CPU used by other processes while this size ran.
    pub other_cores: Option<f64>,
    /// Why fewer repetitions than asked ran, if so.
    pub cut_short: Option<String>,
}

impl SizeResult {
    pub fn times(&self, way: Way) -> &[Duration] {
        &self.times[way as usize]
    }
}

/// The whole scenario's results and the setup they were measured with.
pub struct LargeRun {
    pub sizes: Vec<SizeResult>,
    pub date: String,
    pub load_start: String,
    pub load_end: String,
    pub duration: Duration,
    /// Where clamgate's temp files go (its default `bodies.spool_dir`), with the file system type.
    pub spool: String,
    /// Whether peak RSS could be reset before each scanned request (else it is since start).
    pub peak_reset: bool,
}

/// The running stack this scenario measures.
pub struct Stack<'a> {
    pub runtime: &'a Runtime,
    pub envoy: &'a BenchEnvoy,
    pub gate: &'a ClamgateProcess,
    pub origin: &'a Origin,
    /// clamd's address as clamgate's config has it (`tcp://127.0.0.1:PORT`).
    pub clamd_address: String,
    /// The benchmark's own processes, for the "other load" figure.
    pub pids: &'a [u32],
    pub cores: usize,
    pub run_nonce: u64,
}

/// Measures every (size, repetitions) of `plan`; sizes and repetitions not started by `deadline`
/// are skipped (said in their result). `Err` only when the set-up check (one 1 MiB body each
/// way, not measured) fails: then something is wrong with the stack, not slow.
pub fn run(stack: &Stack, plan: &[(usize, usize)], deadline: Instant) -> Result<LargeRun, String> {
    let started = Instant::now();
    let date = machine::utc_now();
    let load_start = machine::loadavg();
    let address: ClamdAddress = stack.clamd_address.parse().map_err(|err| format!("clamd address: {err}"))?;
    let clamd = ClamdClient::new(
        address,
        ClamdTimeouts {
            connect: Duration::from_secs(5),
            write: Duration::from_secs(60),
            reply: Duration::from_secs(600),
        },
    );
    let mut objects = ObjectSource { stack, next: 0 };
    let peak_reset = machine::reset_peak_rss(stack.gate.pid());

    eprintln!("proxy bench: large: set-up check, 1 MiB each way (not measured) ... ");
    for way in Way::ALL {
        measure(stack, &clamd, &mut objects, way, MIB)
            .map_err(|err| format!("set-up check of the large scenario, {}: {err}", way.name()))?;
    }

    let mut sizes = Vec::new();
    for &(size, reps) in plan {
        let mut result = SizeResult {
            size,
            reps,
            times: Default::default(),
            errors: Vec::new(),
            clamd_scans: 0.0,
            clamd_seconds: 0.0,
            spilled: 0.0,
            clamgate_rss_before: machine::rss_bytes(stack.gate.pid()),
            clamgate_peak_rss: None,
            envoy_peak_rss: None,
            other_cores: None,
            cut_short: None,
        };
        let cpu_before = CpuSample::take(stack.pids);
        for rep in 1..=reps {
            if Instant::now() >= deadline {
                result.cut_short = Some(format!(
                    "{} of {reps} repetitions: the run reached its time bound (--max-secs)",
                    rep - 1
                ));
                break;
            }
            eprint!("proxy bench: large {} {rep}/{reps}:", size_label(size));
            for way in Way::ALL {
                match measure(stack, &clamd, &mut objects, way, size) {
                    Ok(measured) => {
                        eprint!(" {} {},", way.name(), seconds(measured.elapsed));
                        result.times[way as usize].push(measured.elapsed);
                        result.clamd_scans += measured.clamd_scans;
                        result.clamd_seconds += measured.clamd_seconds;
                        result.spilled += measured.spilled;
                        result.clamgate_peak_rss = result.clamgate_peak_rss.max(measured.clamgate_peak_rss);
                        result.envoy_peak_rss = result.envoy_peak_rss.max(measured.envoy_peak_rss);
                    }
                    Err(err) => {
                        eprint!(" {} FAILED,", way.name());
                        result.errors.push(format!(
                            "{} {rep}/{reps}, {}: {err}",
                            size_label(size),
                            way.name()
                        ));
                    }
                }
            }
            eprintln!();
        }
        result.other_cores = CpuSample::take(stack.pids).other_cores_since(&cpu_before, stack.cores);
        sizes.push(result);
    }

    let spool_dir = std::env::temp_dir();
    let spool = match machine::filesystem_type(&spool_dir) {
        Some(kind) => format!("{} ({kind})", spool_dir.display()),
        None => spool_dir.display().to_string(),
    };
    Ok(LargeRun {
        sizes,
        date,
        load_start,
        load_end: machine::loadavg(),
        duration: started.elapsed(),
        spool,
        peak_reset,
    })
}

/// New bodies, each with a seed of its own, served by the origin under a name of its own.
struct ObjectSource<'a, 'b> {
    stack: &'a Stack<'b>,
    next: u64,
}

impl ObjectSource<'_, '_> {
    /// A new body of `size` bytes and its name.
    fn make(&mut self, size: usize) -> (String, Bytes) {
        self.next += 1;
        // Seed 0 is the latency scenarios' fixed objects.
        let bytes = Bytes::from(seeded_bytes(size, self.next));
        (format!("big-{:x}-{}-{size}.bin", self.stack.run_nonce, self.next), bytes)
    }
}

/// One measured body.
struct Measured {
    elapsed: Duration,
    clamd_scans: f64,
    clamd_seconds: f64,
    spilled: f64,
    clamgate_peak_rss: Option<u64>,
    envoy_peak_rss: Option<u64>,
}

impl Measured {
    fn time_only(elapsed: Duration) -> Measured {
        Measured {
            elapsed,
            clamd_scans: 0.0,
            clamd_seconds: 0.0,
            spilled: 0.0,
            clamgate_peak_rss: None,
            envoy_peak_rss: None,
        }
    }
}

/// Makes a new body of `size` bytes and sends it `way`, checking the outcome.
fn measure(
    stack: &Stack,
    clamd: &ClamdClient,
    objects: &mut ObjectSource,
    way: Way,
    size: usize,
) -> Result<Measured, String> {
    let (name, bytes) = objects.make(size);
    if way == Way::Direct {
        return stack.runtime.block_on(direct_instream(clamd, &bytes)).map(Measured::time_only);
    }
    let expected: [u8; 32] = Sha256::digest(&bytes).into();
    let noscan_path = format!("{}files/{name}", NOSCAN_PREFIX);
    let scanned_path = format!("/files/{name}");
    match way {
        Way::Direct => unreachable!("measured above"),
        Way::UploadBaseline => upload(stack, &noscan_path, &bytes, &expected).map(Measured::time_only),
        Way::UploadScanned => {
            scanned(stack, |stack| upload(stack, &scanned_path, &bytes, &expected), size as f64)
        }
        Way::Baseline | Way::Scanned => {
            stack.origin.put(&name, bytes);
            let result = match way {
                Way::Baseline => {
                    download(stack, &noscan_path, size, &expected, false).map(Measured::time_only)
                }
                _ => scanned(stack, |stack| download(stack, &scanned_path, size, &expected, true), 0.0),
            };
            stack.origin.remove(&name);
            result
        }
    }
}

/// The bench's own INSTREAM of `body`: connect, stream, reply. Only `stream: OK` counts.
async fn direct_instream(clamd: &ClamdClient, body: &[u8]) -> Result<Duration, String> {
    let started = Instant::now();
    let reply = clamd.scan_bytes(body).await.map_err(|err| format!("clamd: {err}"))?;
    let elapsed = started.elapsed();
    match reply {
        ScanReply::Clean => Ok(elapsed),
        other => Err(format!("clamd answered {other:?}, expected stream: OK")),
    }
}

/// A scanned transfer (`transfer`: a download, or an upload of `upload_bytes`), with clamgate's
/// counters and the peak RSS of clamgate and Envoy around it. A download must have made exactly
/// one clamd scan and no cache hit; an upload a clamd scan of at least its bytes (its `201`
/// without a body is not scanned) and no cache hit.
fn scanned(
    stack: &Stack,
    transfer: impl FnOnce(&Stack) -> Result<Duration, String>,
    upload_bytes: f64,
) -> Result<Measured, String> {
    let before = stack.gate.metrics()?;
    machine::reset_peak_rss(stack.gate.pid());
    machine::reset_peak_rss(stack.envoy.pid());
    let elapsed = transfer(stack)?;
    let clamgate_peak_rss = machine::peak_rss_bytes(stack.gate.pid());
    let envoy_peak_rss = machine::peak_rss_bytes(stack.envoy.pid());
    let after = stack.gate.metrics()?;
    let moved = |name: &str, label: &str| metric(&after, name, label) - metric(&before, name, label);
    let clamd_scans = moved("clamgate_clamd_scan_duration_seconds_count", "");
    let cache_hits = moved("clamgate_cache_lookups_total", "result=\"hit\"");
    let scanned_bytes = moved("clamgate_clamd_scanned_bytes_total", "");
    if clamd_scans != 1.0 || cache_hits != 0.0 || scanned_bytes < upload_bytes {
        return Err(format!(
            "clamgate's /metrics show {clamd_scans} clamd scans of {scanned_bytes} bytes and {cache_hits} cache \
             hits for this request, expected 1 scan (of at least {upload_bytes} bytes for an upload) and no \
             hit: not one real scan"
        ));
    }
    Ok(Measured {
        elapsed,
        clamd_scans,
        clamd_seconds: moved("clamgate_clamd_scan_duration_seconds_sum", ""),
        spilled: moved("clamgate_spilled_bodies_total", ""),
        clamgate_peak_rss,
        envoy_peak_rss,
    })
}

/// `POST path` with `body` through Envoy on a new connection, timed from connect to the origin's
/// answer; then checks `201` and that the origin received exactly `expected` (its SHA-256).
fn upload(stack: &Stack, path: &str, body: &[u8], expected: &[u8; 32]) -> Result<Duration, String> {
    let limit = Duration::from_secs(60 + (body.len() / MIB) as u64);
    let mut connection = Connection::new(stack.envoy.addr());
    let (response, elapsed) = stack.runtime.block_on(async {
        let started = Instant::now();
        let response = connection.post_within(path, body, limit).await;
        (response, started.elapsed())
    });
    let response = response?;
    if response.status != 201 {
        return Err(format!(
            "POST {path}: status {}, expected 201: {}",
            response.status,
            connection.body_start(&response)
        ));
    }
    if response.received_sha256.as_deref() != Some(hex::encode(expected).as_str()) {
        return Err(format!("POST {path}: the origin received other bytes than were sent"));
    }
    Ok(elapsed)
}

/// `GET path` through Envoy on a new connection, timed from connect to the last body byte; then
/// checks status 200, the verdict header (present and `clean` exactly when `scanned`) and the
/// SHA-256 of the body against `expected`.
fn download(
    stack: &Stack,
    path: &str,
    size: usize,
    expected: &[u8; 32],
    scanned: bool,
) -> Result<Duration, String> {
    let listener: SocketAddr = stack.envoy.addr();
    // Room for a slow scan of a large body (Envoy's own timeouts are longer still).
    let limit = Duration::from_secs(60 + (size / MIB) as u64);
    let mut connection = Connection::with_body_capacity(listener, size);
    let (response, elapsed) = stack.runtime.block_on(async {
        let started = Instant::now();
        let response = connection.get_within(path, limit).await;
        (response, started.elapsed())
    });
    let response = response?;
    connection.expect_whole(path, &response, size)?;
    match (scanned, response.verdict.as_deref()) {
        (true, Some("clean")) | (false, None) => {}
        (true, verdict) => {
            return Err(format!("GET {path}: x-clamgate-verdict {verdict:?}, expected \"clean\""));
        }
        (false, Some(verdict)) => {
            return Err(format!("GET {path}: x-clamgate-verdict: {verdict} on a route without ext_proc"));
        }
    }
    let received: [u8; 32] = Sha256::digest(connection.body(&response)).into();
    if &received != expected {
        return Err(format!("GET {path}: the body's SHA-256 differs from the origin's"));
    }
    Ok(elapsed)
}

/// The sum of the samples named `name` (labels ignored) whose labels contain `label`.
fn metric(exposition: &str, name: &str, label: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(sample, _)| sample.split('{').next() == Some(name) && sample.contains(label))
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum()
}

/// A duration for progress lines: `12.3 ms` or `4.56 s`.
pub fn seconds(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 1.0 {
        format!("{:.1} ms", secs * 1000.0)
    } else {
        format!("{secs:.2} s")
    }
}

/// Median (the mean of the middle two for an even count), min and max.
pub fn summary(times: &[Duration]) -> Option<(Duration, Duration, Duration)> {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let (min, max) = (*sorted.first()?, *sorted.last()?);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 0 { (sorted[mid - 1] + sorted[mid]) / 2 } else { sorted[mid] };
    Some((median, min, max))
}
