//! `cargo bench --bench proxy` (or `scripts/bench.sh`): request latency percentiles and throughput
//! through the real stack on loopback (clamd with the test signatures, the clamgate release
//! binary, a sample origin, Envoy 1.40 with the shipped `envoy/envoy.yaml` plus bench-only routes),
//! for a route without ext_proc, a content-key cache hit, a resource-key cache hit and a cache
//! miss; and (`--scenarios large`, `large.rs`) the time to scan bodies of 1 MiB to hundreds of MiB
//! through Envoy against a direct clamd INSTREAM. A benchmark, not a test: it never fails on a
//! number. `docs/benchmarks.md` says how to run and read it; `--write-report` rewrites that file's
//! sections for the scenarios that ran.
//!
//! Started by anything but `cargo bench` (no `--bench` argument: `cargo test --benches`, a test
//! lister's `--list`) it does nothing and exits 0.

#[path = "../../tests/support/mod.rs"]
mod support;

mod clamgate_bin;
mod direct;
mod envoy;
mod large;
mod load;
mod machine;
mod nginx;
mod noop;
mod peer;
mod report;
mod scenario;
mod upstream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;

use clamgate_bin::{ClamgateProcess, MIRROR_POLICY};
use envoy::BenchEnvoy;
use load::{Connection, PhaseResult};
use machine::CpuSample;
use nginx::BenchNginx;
use noop::{NoopAuth, NoopProcessor};
use peer::BenchPeer;
use scenario::{Scenario, Selection};
use support::clamd::{ClamdOptions, ClamdProcess};
use support::redis::RedisProcess;
use upstream::Origin;

/// Envoy's counter of downstream connections accepted (keep-alive check).
const DOWNSTREAM_CX: &str = "http.ingress_http.downstream_cx_total";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "proxy",
    about = "clamgate benchmark: latency and throughput through Envoy on loopback (see docs/benchmarks.md)"
)]
pub struct Options {
    /// Scenarios to run, comma-separated: baseline, content, resource, miss, noop, nginx, peer,
    /// large. `miss` includes `clamd-direct` (the same scans made straight to clamd). `noop`
    /// includes `echo-hit` (the floor of a content hit). `peer` (only when named) runs the
    /// incumbent, squid + c-icap on the same clamd, on bodies up to 63 KiB (`peer.rs`).
    /// `nginx` runs nginx alone, nginx with a do-nothing auth_request endpoint, nginx with
    /// clamgate's `/v1/auth` (cache hit) and fetch on a miss (`nginx.rs`). `resource`
    /// runs the `/mirror/` route and its copy without ext_proc; it is skipped (with a line saying
    /// why) while the shipped config or clamgate lacks resource-key support. `noop` runs the
    /// `/mirror/` and `/files/` routes through a second Envoy whose processor does nothing but
    /// what a processor must (the floors of a resource hit and of a content hit). `large` (only when named) times large bodies scanned through Envoy against a
    /// direct clamd INSTREAM and against Envoy without ext_proc (`--large-sizes`, `--large-reps`).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "baseline,content,resource,noop,miss,nginx"
    )]
    pub scenarios: Vec<Selection>,
    /// Body sizes of the latency scenarios, comma-separated: bytes, or with a k / m suffix (KiB,
    /// MiB), 64 bytes to 16 MiB.
    #[arg(long, value_delimiter = ',', default_value = "1k,16k,1m", value_parser = parse_size)]
    pub sizes: Vec<usize>,
    /// Body sizes of the `large` scenario, comma-separated, as --sizes but up to 600 MiB (the limits
    /// the bench gives clamd and clamgate for it).
    #[arg(long, value_delimiter = ',', default_value = "1m,16m,256m", value_parser = parse_large_size)]
    pub large_sizes: Vec<usize>,
    /// Repetitions of the `large` scenario: one number for every size, or one per size of
    /// --large-sizes, comma-separated. Default: 10 up to 1 MiB, 5 up to 16 MiB, 3 above.
    #[arg(long, value_delimiter = ',')]
    pub large_reps: Vec<usize>,
    /// Client concurrencies (workers, one keep-alive connection each), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub concurrency: Vec<usize>,
    /// Rounds per (size, concurrency): each runs every scenario once, in turn; the round with the
    /// median requests/s of each scenario is reported (the others' rates go to the notes).
    /// Several rounds separate an effect from the machine's run-to-run variance.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Multiplies every warm-up and measured request count (e.g. 0.1 for a quick look).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Time bound of each warm-up and each measured phase, in seconds: a phase stops there and
    /// reports what it completed.
    #[arg(long, default_value_t = 60)]
    pub phase_secs: u64,
    /// Time bound of the whole run, in seconds: cells not started by then are skipped.
    #[arg(long, default_value_t = 1800)]
    pub max_secs: u64,
    /// Envoy's worker threads (--concurrency); default: the number of CPUs.
    #[arg(long)]
    pub envoy_concurrency: Option<usize>,
    /// Give clamgate a Redis verdict cache (a real redis-server) behind its in-process tier.
    #[arg(long)]
    pub redis: bool,
    /// How clamgate reaches clamd: `tcp` (INSTREAM, as to a clamd on another host) or `unix`
    /// (the unix socket of a clamd on this host: clamgate then scans held bodies by descriptor,
    /// FILDES). The `large` scenario's direct INSTREAM baseline uses TCP either way.
    #[arg(long, value_enum, default_value = "tcp")]
    pub clamd_socket: ClamdSocket,
    /// Rewrite docs/benchmarks.md: its how-to and the results sections of the scenarios that ran
    /// (the other section is kept as it was).
    #[arg(long)]
    pub write_report: bool,
    /// A note for the report (e.g. what else ran on the machine).
    #[arg(long)]
    pub note: Option<String>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// `--clamd-socket`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum ClamdSocket {
    Tcp,
    Unix,
}

fn parse_size(text: &str) -> Result<usize, String> {
    let size = parse_bytes(text)?;
    if !(64..=16 * 1024 * 1024).contains(&size) {
        return Err(format!("{text}: sizes go from 64 bytes to 16 MiB (Envoy's buffer limit)"));
    }
    Ok(size)
}

fn parse_large_size(text: &str) -> Result<usize, String> {
    let size = parse_bytes(text)?;
    if !(64..=large::MAX_SCAN_BYTES).contains(&size) {
        return Err(format!(
            "{text}: large sizes go from 64 bytes to 600 MiB (the StreamMaxLength the bench gives clamd)"
        ));
    }
    Ok(size)
}

/// A byte count: digits, optionally with a k / m suffix (KiB, MiB).
fn parse_bytes(text: &str) -> Result<usize, String> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower.trim_end_matches("ib").trim_end_matches('b');
    let (digits, unit) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1024),
        Some('m') => (&lower[..lower.len() - 1], 1024 * 1024),
        _ => (lower, 1),
    };
    digits
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("not a size: {text:?} (e.g. 1k, 16k, 1m)"))
}

/// Warm-up and measured request counts for one cell.
fn counts(size: usize, concurrency: usize, scale: f64) -> (u64, u64) {
    let (warmup, measured) = match (size <= 64 * 1024, concurrency <= 1) {
        (true, true) => (200, 2000),
        (true, false) => (400, 4000),
        (false, _) => (50, 1000),
    };
    let scaled = |n: u64| ((n as f64 * scale).round() as u64).max(1);
    (scaled(warmup), scaled(measured).max(concurrency as u64))
}

/// One measured (scenario, size, concurrency).
pub struct Cell {
    pub scenario: Scenario,
    pub size: usize,
    pub concurrency: usize,
    pub warmup: PhaseResult,
    pub measured: PhaseResult,
    /// Non-zero changes of clamgate's counters during the measured phase.
    pub metrics: Vec<(String, f64)>,
    /// Downstream connections Envoy accepted during the cell (warm-up included).
    pub connections: Option<u64>,
    /// Connections the client opened during the cell (warm-up included).
    pub client_connects: u64,
    /// Cores' worth of CPU used by other processes during the measured phase.
    pub other_cores: Option<f64>,
}

/// Everything the report says about the run besides the cells.
pub struct RunInfo {
    pub date: String,
    pub command: String,
    pub cores: usize,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
    pub load_start: String,
    pub load_end: String,
    pub envoy_version: String,
    pub envoy_workers: usize,
    pub clamd_version: String,
    pub clamgate_version: String,
    pub git_revision: String,
    pub cache: String,
    /// The bench-only routes inserted into the shipped envoy.yaml.
    pub envoy_routes: String,
    pub duration: Duration,
    pub notes: Vec<String>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // A test lister (`--list`, e.g. nextest with --all-targets) must find no tests here, and
    // `cargo test --benches` (no `--bench`) must not start a benchmark.
    if args.iter().any(|arg| arg == "--list") {
        return ExitCode::SUCCESS;
    }
    if !args.iter().any(|arg| arg == "--bench") {
        eprintln!(
            "proxy: a benchmark, not a test; run it with `scripts/bench.sh` or `cargo bench --bench proxy`"
        );
        return ExitCode::SUCCESS;
    }
    let options = Options::parse_from(&args);
    let command = std::env::var("PROXY_BENCH_COMMAND").unwrap_or_else(|_| {
        let passed: Vec<String> =
            args.iter().skip(1).filter(|arg| *arg != "--bench").map(|arg| shell_quote(arg)).collect();
        format!("cargo bench --bench proxy -- {}", passed.join(" ")).trim_end().to_string()
    });
    match run(&options, command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("proxy bench: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `arg` as a POSIX shell word.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "_./,=:+-".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

fn run(options: &Options, command: String) -> Result<(), String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let started = Instant::now();
    let run_deadline = started + Duration::from_secs(options.max_secs);
    let phase_bound = Duration::from_secs(options.phase_secs);
    let cores = machine::cores();
    let envoy_workers = options.envoy_concurrency.unwrap_or(cores).max(1);
    let load_start = machine::loadavg();
    let date = machine::utc_now();
    let run_nonce = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let mut notes: Vec<String> = options.note.iter().cloned().collect();
    let mut scenarios: Vec<Scenario> =
        scenario::ALL.into_iter().filter(|scenario| scenario.selected_by(&options.scenarios)).collect();
    let latency_selected = !scenarios.is_empty();
    let large_plan = match options.scenarios.contains(&Selection::Large) {
        true => Some(large::plan(&options.large_sizes, &options.large_reps)?),
        false => None,
    };

    eprintln!(
        "proxy bench: starting clamd,{} clamgate, the origin and Envoy",
        if options.redis { " redis," } else { "" }
    );
    // Large bodies need clamd's and clamgate's size limits raised (to 600 MiB, both); the latency
    // scenarios' bodies are far below either limit, so they measure the same with them.
    let unix_socket = options.clamd_socket == ClamdSocket::Unix;
    // The peer reaches clamd over its unix socket whichever socket clamgate is given.
    let peer_selected = scenarios.iter().any(|scenario| scenario.through_peer());
    let clamd_has_unix_socket = unix_socket || peer_selected;
    let clamd = match large_plan {
        Some(_) => ClamdProcess::start_with(ClamdOptions {
            unix_socket: clamd_has_unix_socket,
            ..ClamdOptions::large_bodies()
        }),
        None => ClamdProcess::start_with(ClamdOptions {
            unix_socket: clamd_has_unix_socket,
            ..ClamdOptions::default()
        }),
    };
    // The address clamgate is given: the unix socket (FILDES) or TCP (INSTREAM).
    let gate_clamd = match unix_socket {
        true => clamd.unix_address().ok_or("clamd has no unix socket")?,
        false => clamd.address(),
    };
    let clamd_transport = format!(
        "clamgate reaches clamd over {} ({})",
        if unix_socket { "its unix socket" } else { "TCP" },
        if unix_socket {
            "clamd.scan_method = \"auto\": held bodies scanned by descriptor, FILDES"
        } else {
            "INSTREAM"
        }
    );
    notes.push(clamd_transport.clone());
    let arenas = std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "2".to_string());
    let arena_note = format!("clamgate runs with MALLOC_ARENA_MAX={arenas} (as the Dockerfile runs it)");
    notes.push(arena_note.clone());
    let redis = options.redis.then(RedisProcess::start);
    let mut extra = String::new();
    if large_plan.is_some() {
        extra.push_str(&large::clamgate_config());
    }
    if let Some(redis) = &redis {
        extra.push_str(&format!("[cache]\nredis_url = \"{}\"\n\n", redis.url()));
    }
    // Resource keys need clamgate's named policies; the config is accepted or not.
    let unbound = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    let policy_check = clamgate_bin::check_config(&clamgate_bin::config_text(
        unbound,
        std::net::SocketAddr::from(([127, 0, 0, 1], 2)),
        &gate_clamd,
        &format!("{extra}{MIRROR_POLICY}"),
    ));
    if policy_check.is_ok() {
        extra.push_str(MIRROR_POLICY);
    }
    // The origin first: clamgate's fetch (nginx, `on_miss = "fetch"`) names it.
    let origin = Origin::start(&options.sizes)?;
    let nginx_selected = scenarios.iter().any(|scenario| scenario.through_nginx());
    if nginx_selected && policy_check.is_ok() {
        extra.push_str(&format!(
            "on_miss = \"fetch\"\n\n[fetch]\norigins = [\"127.0.0.1 = http://{}\"]\n\n",
            origin.addr()
        ));
    }
    let gate = ClamgateProcess::start(&gate_clamd, &extra)?;
    let config = envoy::bench_config(gate.grpc_addr, origin.addr())?;
    let envoy = BenchEnvoy::start(&config.yaml, envoy_workers)?;
    // The noop-hit scenario: the same shipped config, its processor a do-nothing one.
    let noop = match scenarios.contains(&Scenario::NoopHit) {
        true => {
            let processor = NoopProcessor::start(cores)?;
            let noop_config = envoy::bench_config(processor.addr, origin.addr())?;
            let noop_envoy = BenchEnvoy::start(&noop_config.yaml, envoy_workers)?;
            Some((processor, noop_envoy))
        }
        false => None,
    };
    let envoy_of = |scenario: Scenario| match (&noop, scenario) {
        (Some((_, noop_envoy)), Scenario::NoopHit | Scenario::EchoHit) => noop_envoy,
        _ => &envoy,
    };
    // The incumbent: squid + c-icap on the same clamd's unix socket.
    let peer = match peer_selected {
        true => match clamd.unix_socket_path() {
            Some(socket) => match BenchPeer::start(&socket, origin.addr(), cores) {
                Ok(peer) => Some(peer),
                Err(err) => {
                    notes.push(format!("peer scenarios: skipped, the peer did not start: {err}"));
                    eprintln!("proxy bench: peer: {err}");
                    None
                }
            },
            None => None,
        },
        false => None,
    };
    if peer_selected && peer.is_none() {
        scenarios.retain(|scenario| !scenario.through_peer());
    }
    if peer.is_some() {
        notes.push(format!(
            "peer: squid 5.7 (`workers {cores}`, no squid cache, ICAP connections kept open, preview \
             1 KiB) and c-icap 0.5 `virus_scan` (Debian's process and thread defaults, `clamd_mod` on \
             clamd's unix socket, `SendPercentData 0`, 204 for clean bodies), both from Debian 12's \
             packages; bodies up to 63 KiB only (squid bug 5352)"
        ));
        if options.sizes.iter().any(|&size| size > peer::MAX_BODY) {
            notes.push(
                "peer scenarios: not run with bodies over 63 KiB (Debian's squid 5.7 stalls on RESPMOD \
                 bodies over 64 KiB, squid bug 5352)"
                    .to_string(),
            );
        }
    }
    // nginx: the shipped config, clamgate's HTTP listener, and a do-nothing auth endpoint.
    let nginx = match (nginx_selected, gate.http_addr) {
        (true, Some(http)) => {
            let noop_auth = NoopAuth::start(cores)?;
            let nginx = BenchNginx::start(http, origin.addr(), noop_auth.addr);
            Some((noop_auth, nginx))
        }
        _ => None,
    };
    if nginx.is_some() {
        notes.push(format!(
            "nginx: the shipped nginx/nginx.conf with `worker_processes auto` and bench-only locations: {}",
            nginx::INSERTED.replace('\n', " ")
        ));
    }
    if nginx_selected && nginx.is_none() {
        notes.push("nginx scenarios: skipped, this clamgate has no HTTP listener".to_string());
        scenarios.retain(|scenario| !scenario.through_nginx());
    }
    let addr_of = |scenario: Scenario| match (&nginx, &peer) {
        (Some((_, nginx)), _) if scenario.through_nginx() => nginx.addr(),
        (_, Some(peer)) if scenario.through_peer() => peer.addr(),
        _ => envoy_of(scenario).addr(),
    };

    let mut resource_unavailable = match (config.has_mirror, &policy_check) {
        (true, Ok(())) => None,
        (false, Ok(())) => Some("the shipped envoy/envoy.yaml has no `/mirror/` route".to_string()),
        (true, Err(err)) => {
            Some(format!("clamgate rejects `[policies.mirror] cache_mode = \"resource\"` ({err})"))
        }
        (false, Err(err)) => Some(format!(
            "the shipped envoy/envoy.yaml has no `/mirror/` route, and clamgate rejects \
             `[policies.mirror] cache_mode = \"resource\"` ({err})"
        )),
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("client runtime: {err}"))?;

    // One request per scenario through its route: the copies without ext_proc must answer without
    // a verdict header (the route matched and ext_proc was skipped), the scanned ones with one.
    let smallest = options.sizes.iter().copied().min().unwrap_or(1024);
    let listener = envoy.addr();
    if resource_unavailable.is_none() && scenarios.contains(&Scenario::ResourceHit) {
        resource_unavailable = runtime.block_on(check_resource_hits(listener, &gate, smallest)).err();
    }
    if let Some(reason) = &resource_unavailable {
        if scenarios.contains(&Scenario::ResourceHit) {
            println!("resource-hit: not available: {reason}. Skipped; re-run once resource keys work.\n");
            notes.push(format!("resource-hit and mirror-noscan: not available: {reason}."));
            let keep_noscan = scenarios.contains(&Scenario::NoopHit);
            scenarios.retain(|scenario| match scenario {
                Scenario::ResourceHit => false,
                Scenario::MirrorNoscan => keep_noscan,
                _ => true,
            });
        }
    }
    for scenario in [Scenario::Baseline, Scenario::ContentHit] {
        runtime
            .block_on(smoke(listener, scenario, smallest))
            .map_err(|err| format!("set-up check: {err}"))?;
    }
    if let Some(peer) = &peer {
        runtime
            .block_on(check_peer(peer, &origin, smallest))
            .map_err(|err| format!("set-up check: {err}"))?;
    }
    for scenario in [Scenario::NoopHit, Scenario::EchoHit, Scenario::PeerRepeat, Scenario::PeerUnique] {
        if scenarios.contains(&scenario) {
            runtime
                .block_on(smoke(addr_of(scenario), scenario, smallest))
                .map_err(|err| format!("set-up check: {err}"))?;
        }
    }
    // nginx: each route once, and every size of /mirror/ fetched and scanned, so that
    // nginx-hit measures cache hits.
    for scenario in [Scenario::NginxPlain, Scenario::NginxNoopAuth, Scenario::NginxHit] {
        if scenarios.contains(&scenario) {
            for &size in &options.sizes {
                runtime
                    .block_on(smoke(addr_of(scenario), scenario, size))
                    .map_err(|err| format!("set-up check: {err}"))?;
            }
        }
    }

    let mut pids = vec![std::process::id(), envoy.pid(), gate.pid()];
    pids.extend(noop.iter().map(|(_, noop_envoy)| noop_envoy.pid()));
    if let Some((_, nginx)) = &nginx {
        pids.extend(machine::pids_mentioning(nginx.dir()));
    }
    if let Some(peer) = &peer {
        pids.extend(machine::pids_mentioning(peer.dir()));
    }
    pids.extend(machine::pids_mentioning(clamd.dir()));
    if let Some(redis) = &redis {
        pids.extend(machine::pids_mentioning(redis.dir()));
    }

    let mut cells = Vec::new();
    let mut series = 0;
    let rounds = options.rounds.max(1);
    for &size in &options.sizes {
        for &concurrency in &options.concurrency {
            // Every round runs each scenario once, in turn, so that a slow spell of the machine
            // hits all of them; the median round of each is reported.
            let mut by_round: Vec<Vec<Cell>> = scenarios.iter().map(|_| Vec::new()).collect();
            for round in 0..rounds {
                for (index, &scenario) in scenarios.iter().enumerate() {
                    let round_label =
                        if rounds > 1 { format!(" (round {}/{rounds})", round + 1) } else { String::new() };
                    let label = format!(
                        "{} {} c={concurrency}{round_label}",
                        scenario.name(),
                        report::size_label(size)
                    );
                    if Instant::now() >= run_deadline {
                        notes.push(format!("{label}: skipped, the run reached its time bound (--max-secs)"));
                        continue;
                    }
                    if !scenario.runs_with(size) {
                        continue;
                    }
                    series += 1;
                    let (warmup, measured) = counts(size, concurrency.max(1), options.scale);
                    eprint!("proxy bench: {label}: {warmup} warm-up + {measured} measured ... ");
                    let envoy = envoy_of(scenario);
                    let through_envoy = scenario.through_envoy();
                    // Envoy's count of accepted connections; nginx and squid are not asked.
                    let connections_before = envoy.stat(DOWNSTREAM_CX).filter(|_| through_envoy);
                    let measure = Measure {
                        warmup,
                        measured,
                        phase_bound,
                        gate: &gate,
                        peer: peer.as_ref().filter(|_| scenario.through_peer()),
                        pids: &pids,
                    };
                    let phases = match scenario {
                        Scenario::ClamdDirect => {
                            let workers = direct::workers(&gate_clamd, size, concurrency, run_nonce, series)?;
                            runtime.block_on(measure.direct(workers))
                        }
                        _ => {
                            let target = addr_of(scenario);
                            let connections: Vec<Connection> =
                                (0..concurrency.max(1)).map(|_| Connection::new(target)).collect();
                            let path_of = |offset: u64| -> Arc<dyn Fn(u64) -> String + Send + Sync> {
                                Arc::new(move |i| scenario.path(run_nonce, series, size, offset + i))
                            };
                            runtime.block_on(measure.http(connections, path_of, size))
                        }
                    };
                    let connections_accepted = envoy
                        .stat(DOWNSTREAM_CX)
                        .filter(|_| through_envoy)
                        .zip(connections_before)
                        .map(|(a, b)| a.saturating_sub(b));
                    let Phases { warm, result, metrics, client_connects, other_cores } = phases;
                    let cell = Cell {
                        scenario,
                        size,
                        concurrency,
                        warmup: warm,
                        measured: result,
                        metrics,
                        connections: connections_accepted,
                        client_connects,
                        other_cores,
                    };
                    eprintln!("{}", report::one_line(&cell));
                    by_round[index].push(cell);
                }
            }
            for (scenario, mut runs) in scenarios.iter().zip(by_round) {
                if runs.is_empty() {
                    continue;
                }
                runs.sort_by(|a, b| a.measured.requests_per_sec().total_cmp(&b.measured.requests_per_sec()));
                if runs.len() > 1 {
                    let rates: Vec<String> =
                        runs.iter().map(|cell| format!("{:.0}", cell.measured.requests_per_sec())).collect();
                    notes.push(format!(
                        "{} {} c={concurrency}: req/s of the {} rounds {}; the median round is reported",
                        scenario.name(),
                        report::size_label(size),
                        runs.len(),
                        rates.join(", ")
                    ));
                }
                let median = runs.len() / 2;
                cells.push(runs.swap_remove(median));
            }
        }
    }

    if cells.iter().any(|cell| cell.scenario == Scenario::ResourceHit)
        && !cells
            .iter()
            .filter(|cell| cell.scenario == Scenario::ResourceHit)
            .any(|cell| cell.metrics.iter().any(|(sample, value)| *value > 0.0 && is_resource_hit(sample)))
    {
        notes.push(
            "resource-hit: clamgate's /metrics show no resource-key hit during the measured phases, so these \
             requests were not served from resource keys; check the /mirror/ route and policy."
                .to_string(),
        );
    }

    let large_run = match &large_plan {
        Some(plan) => {
            let stack = large::Stack {
                runtime: &runtime,
                envoy: &envoy,
                gate: &gate,
                origin: &origin,
                clamd_address: clamd.address(),
                pids: &pids,
                cores,
                run_nonce,
            };
            Some(large::run(&stack, plan, run_deadline)?)
        }
        None => None,
    };

    let info = RunInfo {
        date,
        command,
        cores,
        cpu_model: machine::cpu_model(),
        memory: machine::memory(),
        kernel: machine::kernel(),
        load_start,
        load_end: machine::loadavg(),
        envoy_version: envoy::envoy_version(&envoy.binary),
        envoy_workers,
        clamd_version: clamd.version_string(),
        clamgate_version: clamgate_bin::version(),
        git_revision: machine::git_revision(repo),
        cache: if redis.is_some() {
            "Redis (a local redis-server) behind the in-process tier".to_string()
        } else {
            "in-process (the default: no `cache.redis_url`)".to_string()
        },
        envoy_routes: config.inserted.clone(),
        duration: started.elapsed(),
        notes,
    };
    let mut sections = Vec::new();
    if latency_selected {
        sections.push((report::Section::Latency, report::results(&info, &cells)));
    }
    if let Some(large_run) = &large_run {
        let mut notes: Vec<String> = options.note.iter().cloned().collect();
        notes.push(clamd_transport.clone());
        notes.push(arena_note.clone());
        sections.push((report::Section::Large, report::large_results(&info, large_run, &notes)));
    }
    for (_, text) in &sections {
        println!("{text}");
    }
    if options.write_report {
        let path = repo.join("docs").join("benchmarks.md");
        let existing = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(err) => return Err(format!("read {}: {err}", path.display())),
        };
        let (text, kept) = report::compose(&existing, &sections);
        std::fs::write(&path, text).map_err(|err| format!("write {}: {err}", path.display()))?;
        let kept = match kept.is_empty() {
            true => String::new(),
            false => format!(" (kept its earlier {} section)", kept.join(" and ")),
        };
        eprintln!("proxy bench: wrote {}{kept}", path.display());
    }
    Ok(())
}

/// How one cell is measured: its request counts and time bound, and what is sampled around the
/// measured phase.
struct Measure<'a> {
    warmup: u64,
    measured: u64,
    phase_bound: Duration,
    gate: &'a ClamgateProcess,
    /// The incumbent, when the cell measures it: its RESPMOD answers count as its scans.
    peer: Option<&'a BenchPeer>,
    pids: &'a [u32],
}

/// What one cell's two phases measured.
struct Phases {
    warm: PhaseResult,
    result: PhaseResult,
    metrics: Vec<(String, f64)>,
    client_connects: u64,
    other_cores: Option<f64>,
}

impl Measure<'_> {
    /// Warm-up, then the measured phase, through HTTP `connections` (`path_of(offset)` names
    /// the requests of a phase whose first request is number `offset`).
    async fn http(
        &self,
        connections: Vec<Connection>,
        path_of: impl Fn(u64) -> Arc<dyn Fn(u64) -> String + Send + Sync>,
        size: usize,
    ) -> Phases {
        let (connections, warm) =
            load::run_phase(connections, path_of(0), self.warmup, size, self.phase_bound).await;
        let sampled = self.sample();
        let (connections, result) =
            load::run_phase(connections, path_of(self.warmup), self.measured, size, self.phase_bound).await;
        let client_connects = connections.iter().map(|c| c.connects).sum();
        self.finish(sampled, warm, result, client_connects)
    }

    /// Warm-up, then the measured phase, of direct clamd scans.
    async fn direct(&self, workers: Vec<direct::ClamdWorker>) -> Phases {
        let (mut workers, warm) = load::run_workers(workers, self.warmup, self.phase_bound).await;
        for worker in &mut workers {
            worker.offset = self.warmup;
        }
        let sampled = self.sample();
        let (_, result) = load::run_workers(workers, self.measured, self.phase_bound).await;
        self.finish(sampled, warm, result, 0)
    }

    fn sample(&self) -> (String, CpuSample) {
        (self.counters(), CpuSample::take(self.pids))
    }

    /// clamgate's `/metrics`, or for a peer cell c-icap's RESPMOD answers as two samples.
    fn counters(&self) -> String {
        match self.peer {
            Some(peer) => {
                let (blocked, clean) = peer.respmod_answers();
                format!(
                    "c_icap_respmod_total{{icap_status=\"200\"}} {blocked}\n\
                     c_icap_respmod_total{{icap_status=\"204\"}} {clean}\n"
                )
            }
            None => self.gate.metrics().unwrap_or_default(),
        }
    }

    fn finish(
        &self,
        (metrics_before, cpu_before): (String, CpuSample),
        warm: PhaseResult,
        result: PhaseResult,
        client_connects: u64,
    ) -> Phases {
        let cpu_after = CpuSample::take(self.pids);
        let metrics_after = self.counters();
        Phases {
            warm,
            result,
            metrics: metric_deltas(&metrics_before, &metrics_after),
            client_connects,
            other_cores: cpu_after.other_cores_since(&cpu_before, machine::cores()),
        }
    }
}

/// One request through `scenario`'s route, checking the route is the one we think.
async fn smoke(listener: SocketAddr, scenario: Scenario, size: usize) -> Result<(), String> {
    let mut connection = Connection::new(listener);
    let path = scenario.path(0, 0, size, 0);
    let response = connection.get(&path).await?;
    connection.expect_whole(&path, &response, size)?;
    match (scenario.scanned(), response.verdict) {
        (true, None) => Err(format!("GET {path}: no x-clamgate-verdict header: ext_proc did not run")),
        (false, Some(verdict)) => Err(format!(
            "GET {path}: x-clamgate-verdict: {verdict}: ext_proc ran on a route where it is disabled"
        )),
        _ => Ok(()),
    }
}

/// Whether the peer scans: a clean object passes whole after a RESPMOD answered 204, and an
/// EICAR object is refused after one answered 200 (c-icap replaced the body with its block page).
async fn check_peer(peer: &BenchPeer, origin: &Origin, size: usize) -> Result<(), String> {
    let mut connection = Connection::new(peer.addr());
    let (blocked_before, clean_before) = peer.respmod_answers();
    let path = Scenario::PeerRepeat.path(0, 0, size, 0);
    let response = connection.get(&path).await?;
    connection.expect_whole(&path, &response, size)?;
    origin.put("peer-check-eicar.bin", support::samples::eicar().into());
    let infected = connection.get("/files/peer-check-eicar.bin").await;
    origin.remove("peer-check-eicar.bin");
    let infected = infected?;
    // c-icap writes its access log line after the answer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (blocked, clean) = peer.respmod_answers();
    if infected.status == 200 && connection.body_start(&infected).contains("EICAR") {
        return Err("the peer (squid + c-icap) let an EICAR body through".to_string());
    }
    if clean <= clean_before || blocked <= blocked_before {
        return Err(format!(
            "c-icap's access log does not show the two scans (RESPMOD 204: {clean_before} → {clean}, \
             200: {blocked_before} → {blocked}): is squid sending responses to it?"
        ));
    }
    Ok(())
}

/// Whether the `/mirror/` routes work and clamgate answers repeated requests from resource keys:
/// the copy without ext_proc answers without a verdict header, the first `/mirror/` request is
/// scanned, and the next ones show up in `/metrics` as resource-key hits.
async fn check_resource_hits(
    listener: SocketAddr,
    gate: &ClamgateProcess,
    size: usize,
) -> Result<(), String> {
    smoke(listener, Scenario::MirrorNoscan, size).await?;
    smoke(listener, Scenario::ResourceHit, size).await?;
    let before = gate.metrics()?;
    let mut connection = Connection::new(listener);
    let path = Scenario::ResourceHit.path(0, 0, size, 0);
    for _ in 0..3 {
        let response = connection.get(&path).await?;
        if response.status != 200 || response.body_len != size {
            return Err(format!("GET {path}: status {}, {} bytes", response.status, response.body_len));
        }
    }
    let moved = metric_deltas(&before, &gate.metrics()?);
    if moved.iter().any(|(sample, _)| is_resource_hit(sample)) {
        Ok(())
    } else {
        Err(format!(
            "clamgate accepts the `mirror` policy, but 3 repeated GETs of {path} made no resource-key hit \
             in /metrics (counters that moved: {})",
            moved.iter().map(|(sample, delta)| format!("{sample} +{delta}")).collect::<Vec<_>>().join(", ")
        ))
    }
}

/// A `/metrics` sample counting resource-key cache hits.
pub fn is_resource_hit(sample: &str) -> bool {
    sample.contains("resource") && sample.contains("\"hit\"")
}

/// Counter samples (`…_total`, histogram `…_count`) of a Prometheus exposition, clamd health
/// probes left out.
fn counter_samples(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            let name = sample.split('{').next()?;
            let counter =
                name.ends_with("_total") || name.ends_with("_count") || name.ends_with("_seconds_sum");
            if !counter || name == "clamgate_clamd_probes_total" {
                return None;
            }
            Some((sample.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The counters that changed between two expositions, and by how much.
fn metric_deltas(before: &str, after: &str) -> Vec<(String, f64)> {
    let before = counter_samples(before);
    counter_samples(after)
        .into_iter()
        .map(|(sample, value)| {
            let delta = value - before.get(&sample).copied().unwrap_or(0.0);
            (sample, delta)
        })
        .filter(|(_, delta)| *delta != 0.0)
        .collect()
}
