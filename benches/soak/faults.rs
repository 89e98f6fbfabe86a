//! The faults, injected one after another while the load runs: each is done, lasts
//! `--fault-secs` (or as long as it takes), is undone, and then the time until service is back
//! (a new clean object fetched right through Envoy and through nginx) is measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::load::{self, Object, Rng, Tally, Urls, Verdict};
use crate::{Options, Stack};

/// One fault as it happened.
#[derive(Debug, Clone)]
pub struct Window {
    pub fault: &'static str,
    pub started: Instant,
    pub undone: Instant,
    /// From undone to the first right answer through both front doors; None: not within 60 s.
    pub recovered_after: Option<Duration>,
}

/// The faults, in the order each round injects them.
pub const FAULTS: [&str; 8] = [
    "clamd killed, then restarted",
    "clamd frozen (SIGSTOP), then resumed",
    "clamd reloads its database",
    "Redis killed, then restarted",
    "Redis slow (CLIENT PAUSE)",
    "one clamgate of two killed and restarted",
    "temp-file disk budget exhausted (a burst of 32 MiB uploads)",
    "memory budget exhausted (a burst of 4 MiB new downloads)",
];

/// Longest wait for service to come back after a fault.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
/// Quiet time between one fault's recovery and the next fault.
const GAP: Duration = Duration::from_secs(2);

/// One round: every fault once, in `FAULTS` order, with a quiet gap before each and after the
/// last; the load runs throughout.
pub async fn run_round(
    stack: &mut Stack,
    options: &Options,
    urls: &Urls,
    tally: &Arc<Tally>,
    rng: &mut Rng,
) -> Vec<Window> {
    let mut windows = Vec::new();
    let hold = Duration::from_secs(options.fault_secs);
    for fault in FAULTS {
        tokio::time::sleep(GAP).await;
        eprintln!("soak: fault: {fault}");
        let started = Instant::now();
        inject(stack, fault, hold, urls, tally, rng).await;
        let undone = Instant::now();
        let recovered_after = recovery(stack, urls, tally, rng).await;
        eprintln!(
            "soak:   undone after {:.1} s; back after {recovered_after:?}",
            (undone - started).as_secs_f64()
        );
        windows.push(Window { fault, started, undone, recovered_after });
    }
    tokio::time::sleep(GAP).await;
    windows
}

/// Does `fault`, waits while it lasts, and undoes it.
async fn inject(
    stack: &mut Stack,
    fault: &str,
    hold: Duration,
    urls: &Urls,
    tally: &Arc<Tally>,
    rng: &mut Rng,
) {
    match fault {
        "clamd killed, then restarted" => {
            stack.clamd.stop();
            tokio::time::sleep(hold).await;
            tokio::task::block_in_place(|| stack.clamd.start_again());
        }
        "clamd frozen (SIGSTOP), then resumed" => {
            let pid = stack.clamd.pid().expect("clamd runs");
            signal(pid, "-STOP");
            tokio::time::sleep(hold).await;
            signal(pid, "-CONT");
        }
        "clamd reloads its database" => {
            tokio::task::block_in_place(|| stack.clamd.reload());
            tokio::time::sleep(hold).await;
        }
        "Redis killed, then restarted" => {
            stack.redis.stop();
            tokio::time::sleep(hold).await;
            tokio::task::block_in_place(|| stack.redis.start_again());
        }
        "Redis slow (CLIENT PAUSE)" => {
            let millis = hold.as_millis().to_string();
            tokio::task::block_in_place(|| stack.redis.cli(&["CLIENT", "PAUSE", &millis]));
            tokio::time::sleep(hold).await;
        }
        "one clamgate of two killed and restarted" => {
            let options = stack.clamgate_options[1].clone();
            tokio::task::block_in_place(|| stack.clamgates[1].restart(&options));
        }
        "temp-file disk budget exhausted (a burst of 32 MiB uploads)" => {
            burst(40, 32 << 20, true, urls, tally, stack, rng).await;
        }
        _ => {
            burst(32, 4 << 20, false, urls, tally, stack, rng).await;
        }
    }
}

/// `count` requests at once of `size` bytes each: uploads of new bodies, or downloads of new
/// objects; every answer judged like the load's.
async fn burst(
    count: usize,
    size: usize,
    uploads: bool,
    urls: &Urls,
    tally: &Arc<Tally>,
    stack: &Stack,
    rng: &mut Rng,
) {
    let http =
        reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(180)).build().expect("client");
    let mut tasks = Vec::new();
    for i in 0..count {
        let infected = i % 5 == 4;
        let bytes = load::body(size, rng.next(), infected);
        let name = format!("burst-{}-{i}", rng.next());
        let (http, urls, tally, upstream) =
            (http.clone(), urls.clone(), tally.clone(), stack.upstream.clone());
        tasks.push(tokio::spawn(async move {
            if uploads {
                let url = format!("{}/upload/{name}", urls.envoy);
                let status = match http.post(&url).body(bytes.clone()).send().await {
                    Ok(response) => response.status().as_u16(),
                    Err(_) => 0,
                };
                let received = upstream.take_received(&name);
                let verdict = match (status, infected, received) {
                    (_, true, Some(_)) => Verdict::Wrong,
                    (201, false, Some(stored)) if stored == bytes => Verdict::Right,
                    (409, true, None) => Verdict::Right,
                    (0 | 413 | 422 | 500 | 502 | 503 | 504, _, _) => Verdict::FailedClosed,
                    _ => Verdict::Wrong,
                };
                tally.record(verdict, infected, || format!("burst POST {url}: {status}"));
            } else {
                upstream.put_file_with_headers(&name, bytes.clone(), &[]);
                let object = Object { name, bytes: bytes.into(), infected };
                load::download(&http, &format!("{}/files/{}", urls.envoy, object.name), &object, &tally)
                    .await;
                upstream.remove_file(&object.name);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// Seconds from now until a new clean object comes back right through Envoy and through nginx.
async fn recovery(stack: &Stack, urls: &Urls, tally: &Tally, rng: &mut Rng) -> Option<Duration> {
    let started = Instant::now();
    let http =
        reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("client");
    for door in [&urls.envoy, &urls.nginx] {
        loop {
            let name = format!("probe-{}", rng.next());
            let bytes = load::body(1024, rng.next(), false);
            stack.upstream.put_file_with_headers(&name, bytes.clone(), &[("etag", &format!("\"{name}\""))]);
            let object = Object { name, bytes: bytes.into(), infected: false };
            let path = if door == &urls.envoy { "files" } else { "mirror" };
            let url = format!("{door}/{path}/{}", object.name);
            if load::download(&http, &url, &object, tally).await == Verdict::Right {
                break;
            }
            if started.elapsed() > RECOVERY_LIMIT {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Some(started.elapsed())
}

fn signal(pid: u32, signal: &str) {
    let status =
        std::process::Command::new("kill").arg(signal).arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}
