//! `cargo bench --bench soak` (or `scripts/soak.sh`): a mixed load through the real stack on
//! loopback for a set time, with faults injected on a schedule, and every answer checked against
//! what the origin knows about the object. Not a benchmark: it fails (exit 1) on any wrong
//! answer (an infected body delivered, other bytes than the object's, a clean object refused as
//! infected) or on anything left behind afterwards (held bytes, open streams, temp files, busy
//! clamd threads, descriptors or memory past the stated tolerance). `docs/reliability.md` has the
//! 10-minute run's figures; `--write-report` rewrites them.
//!
//! The stack: real clamd (test signatures) and Redis, two clamgate release processes sharing the
//! Redis cache behind one Envoy cluster (the shipped `envoy/envoy.yaml`), real nginx (the
//! shipped `nginx/nginx.conf`, fetch on a miss under `/mirror/`), the test origin in process.
//!
//! Started by anything but `cargo bench` (no `--bench` argument) it does nothing and exits 0.

#[path = "../../tests/support/mod.rs"]
mod support;

mod faults;
mod load;
mod report;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use support::clamd::ClamdProcess;
use support::clamgate_process::{ClamgateOptions, ClamgateProcess};
use support::envoy::EnvoyProcess;
use support::nginx::{http_token_file, NginxProcess, NginxTargets};
use support::redis::RedisProcess;
use support::upstream::Upstream;

#[derive(Parser, Debug, Clone)]
#[command(name = "soak", about = "clamgate soak with chaos: mixed load, faults, every answer checked")]
pub struct Options {
    /// Rounds of load, each injecting every fault once (about a minute each), with the stack
    /// left to settle and measured after each: the leak check compares the rounds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..))]
    pub rounds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Largest object in the catalogue, MiB (64 for the report; CI keeps it smaller).
    #[arg(long, default_value_t = 8)]
    pub max_object_mib: usize,
    /// Seconds each fault lasts before it is undone.
    #[arg(long, default_value_t = 3)]
    pub fault_secs: u64,
    /// Seed of the load's choices (objects, sizes, paths).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Rewrite the results section of docs/reliability.md.
    #[arg(long)]
    pub write_report: bool,
    /// Keep the stack up this long after the warm-up, before the load (to look at it by hand).
    #[arg(long, default_value_t = 0, hide = true)]
    pub pause_secs: u64,
    /// Keep the stack up this long after the report (to look at it by hand).
    #[arg(long, default_value_t = 0, hide = true)]
    pub linger_secs: u64,
    /// Set by `cargo bench`.
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// The config both clamgate instances run with: the HTTP listener for nginx, the Redis cache
/// (its in-process tier keeping entries 30 s, so that the tier holds about the same number of
/// entries at the end of every round and the leak check compares like with like), budgets small
/// enough for the budget faults to bite, and the mirror policy fetching on a miss.
fn clamgate_extra(
    redis_url: &str,
    http_addr: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
) -> String {
    format!(
        "[listen]\nhttp_addr = \"{http_addr}\"\nhttp_token_file = {token:?}\n\n\
         [cache]\nredis_url = \"{redis_url}\"\nredis_timeout_ms = 300\nmemory_ttl_secs = 30\n\n\
         [scan]\nmax_scan_bytes = {max_scan}\n\n\
         [bodies]\nmemory_budget_bytes = {memory}\ndisk_budget_bytes = {disk}\n\n\
         [fetch]\norigins = [\"{host} = http://{upstream}\"]\n\n\
         [policies.mirror]\ncache_mode = \"resource\"\non_miss = \"fetch\"\n",
        token = http_token_file(),
        max_scan = 100 << 20,
        memory = 64 << 20,
        disk = 320 << 20,
        host = load::HOST,
    )
}

/// Everything the soak runs against.
pub struct Stack {
    pub clamd: ClamdProcess,
    pub redis: RedisProcess,
    pub clamgates: Vec<ClamgateProcess>,
    pub clamgate_options: Vec<ClamgateOptions>,
    pub envoy: EnvoyProcess,
    pub nginx: NginxProcess,
    pub upstream: Arc<Upstream>,
}

impl Stack {
    async fn start() -> Stack {
        let (clamd, redis) =
            tokio::task::spawn_blocking(|| (ClamdProcess::start_for_large_bodies(), RedisProcess::start()))
                .await
                .expect("start clamd and redis");
        let upstream = Upstream::start().await;
        let upstream_addr = upstream.addr();
        let mut clamgates = Vec::new();
        let mut clamgate_options = Vec::new();
        for _ in 0..2 {
            let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
            let options = ClamgateOptions {
                clamd_address: clamd.address(),
                extra: clamgate_extra(&redis.url(), http, upstream_addr),
                env: vec![("MALLOC_ARENA_MAX".into(), "2".into())],
            };
            let started = options.clone();
            clamgates.push(
                tokio::task::spawn_blocking(move || ClamgateProcess::start_with(started))
                    .await
                    .expect("clamgate"),
            );
            clamgate_options.push(options);
        }
        let grpc: Vec<_> = clamgates.iter().map(ClamgateProcess::grpc_addr).collect();
        let envoy = tokio::task::spawn_blocking(move || {
            let config = two_clamgates(&support::envoy::render_config(grpc[0], upstream_addr), grpc[1]);
            let envoy = EnvoyProcess::start_with_config(config);
            envoy.wait_clamgate_healthy(Duration::from_secs(20));
            envoy
        })
        .await
        .expect("start envoy");
        let http_addrs: Vec<_> =
            clamgate_options.iter().map(|options| http_addr_of(&options.extra)).collect();
        let targets =
            NginxTargets { clamgate_http: http_addrs[0], upstream: upstream_addr, envoy: Some(envoy.addr()) };
        let second = http_addrs[1];
        let nginx = tokio::task::spawn_blocking(move || {
            NginxProcess::start_with(targets, move |config| {
                let first = format!("server {};", targets.clamgate_http);
                config.replacen(&first, &format!("{first} server {second};"), 1)
            })
        })
        .await
        .expect("start nginx");
        Stack { clamd, redis, clamgates, clamgate_options, envoy, nginx, upstream: Arc::new(upstream) }
    }
}

/// The rendered Envoy config with a second clamgate endpoint in the clamgate cluster (a copy of
/// its one endpoint line with the other port).
fn two_clamgates(config: &str, second: std::net::SocketAddr) -> String {
    let cluster_start = config.find("\n  - name: clamgate\n").expect("the clamgate cluster in envoy.yaml");
    let endpoint_at = cluster_start + config[cluster_start..].find("- endpoint:").expect("its endpoint");
    let line_end = endpoint_at + config[endpoint_at..].find('\n').expect("end of line");
    let line_start = config[..endpoint_at].rfind('\n').map_or(0, |i| i + 1);
    let line = &config[line_start..line_end];
    let port_at = line.find("port_value: ").expect("a port") + "port_value: ".len();
    let port_end = port_at + line[port_at..].find('}').expect("end of the port");
    let mut copy = line.to_string();
    copy.replace_range(port_at..port_end, &second.port().to_string());
    format!("{}\n{copy}{}", &config[..line_end], &config[line_end..])
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn http_addr_of(extra: &str) -> std::net::SocketAddr {
    let table: toml::Table = extra.parse().expect("the soak's clamgate config");
    table["listen"]["http_addr"].as_str().expect("http_addr").parse().expect("an address")
}

/// Lets the stack go quiet after a round's load and measures it: long enough for answers in
/// flight and for two of clamgate's heap checks (`heap::CHECK_INTERVAL`, 5 s), then up to
/// 30 s more for scans that clients abandoned (they keep their clamd thread until clamd is done,
/// by design).
async fn settle(stack: &Stack) -> report::Sample {
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut sample = report::Resources::sample(stack);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sample.clamd_busy_threads.unwrap_or(0) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        sample = report::Resources::sample(stack);
    }
    sample
}

fn main() -> ExitCode {
    let options = Options::parse();
    if !options.bench {
        return ExitCode::SUCCESS;
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(run(options))
}

async fn run(options: Options) -> ExitCode {
    let started = Instant::now();
    eprintln!("soak: starting the stack");
    let mut stack = Stack::start().await;
    let catalogue = Arc::new(load::Catalogue::build(&stack.upstream, options.max_object_mib, options.seed));
    eprintln!("soak: {} objects; warming up", catalogue.objects.len());
    let urls = load::Urls { envoy: stack.envoy.url(""), nginx: stack.nginx.url("") };
    load::warm_up(&urls, &catalogue).await;
    if options.pause_secs > 0 {
        eprintln!("soak: pausing {} s: Envoy {} nginx {}", options.pause_secs, urls.envoy, urls.nginx);
        let _ = std::fs::write("target/soak/envoy.log", stack.envoy.logs());
        tokio::time::sleep(Duration::from_secs(options.pause_secs)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = report::Resources::sample(&stack);
    let tally = Arc::new(load::Tally::default());
    let mut windows = Vec::new();
    let mut rounds = Vec::new();
    let mut rng = load::Rng::new(options.seed ^ 0xfa17);
    for round in 0..options.rounds as usize {
        eprintln!("soak: round {} of {}", round + 1, options.rounds);
        let stop = Arc::new(AtomicBool::new(false));
        let clients = load::spawn_clients(&options, round, &urls, &catalogue, &tally, &stop, &stack.upstream);
        windows.extend(faults::run_round(&mut stack, &options, &urls, &tally, &mut rng).await);
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            let _ = client.await;
        }
        let mut settled = settle(&stack).await;
        settled.requests = load::Tally::get(&tally.requests);
        eprintln!("soak: round {} over: {}", round + 1, settled.summary());
        rounds.push(settled);
    }
    // Envoy's access log and errors, for a look at what failed closed.
    let _ = std::fs::create_dir_all("target/soak");
    let _ = std::fs::write("target/soak/envoy.log", stack.envoy.logs());
    let result = report::Result::new(&options, &tally, &windows, &before, &rounds, started.elapsed());
    let _ = std::fs::write("target/soak/failed-closed.log", tally.failed_closed_log());
    println!("{}", result.markdown());
    if options.linger_secs > 0 {
        let pids: Vec<_> = stack.clamgates.iter().map(ClamgateProcess::pid).collect();
        eprintln!("soak: lingering {} s; clamgate pids {pids:?}", options.linger_secs);
        tokio::time::sleep(Duration::from_secs(options.linger_secs)).await;
    }
    if options.write_report {
        if let Err(err) = result.write_report() {
            eprintln!("soak: cannot write docs/reliability.md: {err}");
            return ExitCode::FAILURE;
        }
    }
    if result.failures().is_empty() {
        ExitCode::SUCCESS
    } else {
        for failure in result.failures() {
            eprintln!("soak: FAILED: {failure}");
        }
        ExitCode::FAILURE
    }
}
