//! What the soak measured and whether it passed: answers by kind, each fault's window (the
//! fail-closed answers in it, and how long service took to come back), and the resources of each
//! clamgate before the load and after it settled. `docs/reliability.md` holds the 10-minute run.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::faults::Window;
use crate::load::{Tally, Verdict};
use crate::{Options, Stack};

/// Non-socket descriptors a clamgate may hold more after the run than before (its log, a pipe
/// or two of the runtime).
const FD_TOLERANCE: usize = 4;
/// Resident memory a clamgate may hold, idle after the run, more than idle before it. clamgate
/// hands freed heap memory back once a burst is over (`src/memory_trim.rs`); what stays is the
/// allocator's bookkeeping, connection buffers and caches warmed by the load.
const RSS_TOLERANCE_BYTES: u64 = 64 << 20;
/// How much clamgate 1's heap in use (`clamgate_heap_in_use_bytes`: bytes allocated and not
/// freed, which fragmentation does not raise) may grow, idle, per round from the end of the first
/// round to the end of the last: the leak check. The first round warms every cache and pool; later
/// rounds repeat the same load and faults, so a leak shows as growth round after round.
const HEAP_GROWTH_PER_ROUND_BYTES: u64 = 1 << 20;
/// ...and in all, whatever the number of rounds: the idle heap moves by up to about 2.7 MiB from
/// one round to another (connection buffers, pools' sizes, the cache tier's entries).
const HEAP_GROWTH_FLOOR_BYTES: u64 = 6 << 20;

/// How many more runtime tasks than sockets clamgate 1 may have, idle after the last round, than
/// after the first: each connection is served by a task of its own (and keep-alive pools change
/// size), so tasks are compared net of sockets; a task left behind by a stream, a scan or a fault
/// shows as growth.
const TASK_GROWTH: f64 = 4.0;
/// Fail-closed answers are attributed to a fault from its start to this long after it came back
/// (requests already waiting on the fault finish then).
const WINDOW_GRACE: Duration = Duration::from_secs(5);

/// One clamgate's resources at one moment.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub fds_other: usize,
    pub fds_sockets: usize,
    pub temp_files: usize,
    pub rss_bytes: u64,
    pub held_memory_bytes: f64,
    pub held_disk_bytes: f64,
    pub streams_open: f64,
    pub clamd_connections: usize,
    /// Peak resident memory (VmHWM) so far.
    pub peak_rss_bytes: u64,
    /// Bodies refused because the disk budget was full, and bodies moved to disk (counters).
    pub spool_full: f64,
    pub spilled: f64,
    /// Times freed memory was handed back, and the seconds it took in all (counters).
    pub memory_trims: f64,
    pub memory_trim_seconds: f64,
    /// Heap bytes allocated and not freed.
    pub heap_in_use_bytes: f64,
    /// Tasks alive in clamgate's runtime.
    pub tasks_alive: f64,
}

/// Every clamgate's resources, and clamd's busy threads.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub clamgates: Vec<Resources>,
    pub clamd_busy_threads: Option<u64>,
    /// Requests answered so far (set by the caller).
    pub requests: u64,
}

impl Resources {
    pub fn sample(stack: &Stack) -> Sample {
        tokio::task::block_in_place(|| {
            let clamd_port = stack.clamd.port();
            let clamgates = stack
                .clamgates
                .iter()
                .map(|clamgate| {
                    let fds = clamgate.open_fd_targets();
                    let sockets = fds.iter().filter(|target| target.starts_with("socket:")).count();
                    let temp_files = fds.iter().filter(|target| target.ends_with("(deleted)")).count();
                    Resources {
                        fds_other: fds.len() - sockets,
                        fds_sockets: sockets,
                        temp_files,
                        rss_bytes: clamgate.rss_bytes(),
                        held_memory_bytes: clamgate.metric("clamgate_held_body_memory_bytes"),
                        held_disk_bytes: clamgate.metric("clamgate_held_body_disk_bytes"),
                        streams_open: clamgate.metric("clamgate_ext_proc_streams_open"),
                        clamd_connections: clamgate.tcp_connections_to(clamd_port),
                        peak_rss_bytes: clamgate.peak_rss_bytes(),
                        spool_full: clamgate
                            .metric("clamgate_ext_proc_stream_errors_total{kind=\"spool_full\"}"),
                        spilled: clamgate.metric("clamgate_spilled_bodies_total"),
                        memory_trims: clamgate.metric("clamgate_memory_trims_total"),
                        memory_trim_seconds: clamgate.metric("clamgate_memory_trim_seconds_total"),
                        heap_in_use_bytes: clamgate.metric("clamgate_heap_in_use_bytes"),
                        tasks_alive: clamgate.metric("clamgate_runtime_tasks_alive"),
                    }
                })
                .collect();
            Sample { clamgates, clamd_busy_threads: busy_threads(&stack.clamd.stats()), requests: 0 }
        })
    }
}

impl Sample {
    /// One line for the log: each clamgate's RSS, descriptors and held bytes, and clamd's busy
    /// threads.
    pub fn summary(&self) -> String {
        let clamgates: Vec<String> = self
            .clamgates
            .iter()
            .enumerate()
            .map(|(i, r)| {
                format!(
                    "clamgate {}: heap {:.1} MiB, RSS {} MiB, {} tasks, {} fds + {} sockets, held {} B, {} streams",
                    i + 1,
                    mib(r.heap_in_use_bytes as u64),
                    r.rss_bytes >> 20,
                    r.tasks_alive,
                    r.fds_other,
                    r.fds_sockets,
                    r.held_memory_bytes + r.held_disk_bytes,
                    r.streams_open
                )
            })
            .collect();
        format!("{}; clamd busy threads {:?}", clamgates.join("; "), self.clamd_busy_threads)
    }
}

/// clamd's `STATS` line `THREADS: live N  idle M max K ...`: the threads at work (N - M).
fn busy_threads(stats: &str) -> Option<u64> {
    let line = stats.lines().find(|line| line.starts_with("THREADS:"))?;
    let mut words = line.split_whitespace();
    let mut value = |name: &str| {
        words.by_ref().skip_while(|word| *word != name).nth(1).and_then(|n| n.parse::<u64>().ok())
    };
    let live = value("live")?;
    let idle = value("idle")?;
    Some(live.saturating_sub(idle))
}

/// One fault's line of the report.
pub struct FaultLine {
    pub fault: &'static str,
    pub lasted: Duration,
    pub recovered_after: Option<Duration>,
    pub failed_closed: usize,
    /// The most common answers among them, with their counts.
    pub why: Vec<(String, usize)>,
}

pub struct Result {
    pub command: String,
    pub duration: Duration,
    pub clients: usize,
    pub max_object_mib: usize,
    pub counts: Vec<(&'static str, u64)>,
    pub wrong: Vec<String>,
    pub failed_closed_outside_faults: Vec<String>,
    pub faults: Vec<FaultLine>,
    pub before: Sample,
    /// Idle, after each round.
    pub rounds: Vec<Sample>,
    pub after: Sample,
    /// Instance 2 was restarted: its "before" is its predecessor's.
    pub restarted: bool,
}

impl Result {
    pub fn new(
        options: &Options,
        tally: &Tally,
        windows: &[Window],
        before: &Sample,
        rounds: &[Sample],
        elapsed: Duration,
    ) -> Result {
        let get = |counter: &AtomicU64| Tally::get(counter);
        let counts = vec![
            ("requests", get(&tally.requests)),
            ("right: clean and byte-identical, or stored", get(&tally.right)),
            ("right: infected and refused (409)", get(&tally.refused_infected)),
            ("failed closed (502, 503, 504, 413, no answer, a cut body)", get(&tally.failed_closed)),
            ("**wrong**", get(&tally.wrong)),
            ("of which uploads", get(&tally.uploads)),
            ("of which over HTTP/2", get(&tally.http2)),
            ("of which through nginx", get(&tally.via_nginx)),
            ("of which clients that left mid-body", get(&tally.aborted)),
            ("of which slow readers", get(&tally.slow)),
        ];
        let events = tally.events.lock().expect("events").clone();
        let wrong = events.iter().filter(|e| e.verdict == Verdict::Wrong).map(|e| e.what.clone()).collect();
        // Each answer belongs to the last fault started before it, if it came before that
        // fault's window closed: windows never share an answer.
        let in_window = |at: std::time::Instant, window: &Window| {
            let end =
                window.undone + window.recovered_after.unwrap_or(Duration::from_secs(60)) + WINDOW_GRACE;
            let latest = windows.iter().filter(|w| w.started <= at).max_by_key(|w| w.started);
            latest.is_some_and(|latest| std::ptr::eq(latest, window)) && at <= end
        };
        let failed: Vec<_> = events.iter().filter(|e| e.verdict == Verdict::FailedClosed).collect();
        let faults = windows
            .iter()
            .map(|window| {
                let inside: Vec<_> = failed.iter().filter(|e| in_window(e.at, window)).collect();
                let mut why = std::collections::BTreeMap::<String, usize>::new();
                for event in &inside {
                    *why.entry(reason_of(&event.what)).or_default() += 1;
                }
                let mut why: Vec<_> = why.into_iter().collect();
                why.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
                why.truncate(3);
                FaultLine {
                    fault: window.fault,
                    lasted: window.undone - window.started,
                    recovered_after: window.recovered_after,
                    failed_closed: inside.len(),
                    why,
                }
            })
            .collect();
        let failed_closed_outside_faults = failed
            .iter()
            .filter(|e| !windows.iter().any(|window| in_window(e.at, window)))
            .map(|e| e.what.clone())
            .collect();
        Result {
            command: std::env::var("SOAK_COMMAND").unwrap_or_else(|_| "cargo bench --bench soak".into()),
            duration: elapsed,
            clients: options.clients,
            max_object_mib: options.max_object_mib,
            counts,
            wrong,
            failed_closed_outside_faults,
            faults,
            before: before.clone(),
            rounds: rounds.to_vec(),
            after: rounds.last().cloned().unwrap_or_default(),
            restarted: windows.iter().any(|w| w.fault.starts_with("one clamgate")),
        }
    }

    /// Why the run failed: wrong answers, a fault not recovered from, or resources left behind.
    pub fn failures(&self) -> Vec<String> {
        let mut failures: Vec<String> =
            self.wrong.iter().take(20).map(|what| format!("wrong answer: {what}")).collect();
        for fault in &self.faults {
            if fault.recovered_after.is_none() {
                failures.push(format!("no recovery within 60 s after: {}", fault.fault));
            }
        }
        for (round, sample) in self.rounds.iter().enumerate() {
            for (i, after) in sample.clamgates.iter().enumerate() {
                let name = format!("after round {}, clamgate {}", round + 1, i + 1);
                if after.held_memory_bytes != 0.0 || after.held_disk_bytes != 0.0 {
                    failures.push(format!(
                        "{name} still holds {} + {} body bytes",
                        after.held_memory_bytes, after.held_disk_bytes
                    ));
                }
                if after.streams_open != 0.0 {
                    failures.push(format!("{name} has {} ext_proc streams open", after.streams_open));
                }
                if after.temp_files != 0 {
                    failures.push(format!("{name} has {} temp files open", after.temp_files));
                }
            }
        }
        if let Some(growth) = self.heap_growth() {
            if growth.grew > growth.allowed {
                failures.push(format!(
                    "clamgate 1: heap in use grew {:.1} MiB from round 1 to round {} (allowed {} MiB): a leak",
                    mib(growth.grew),
                    self.rounds.len(),
                    growth.allowed >> 20
                ));
            }
        }
        if let Some((first, last)) = self.tasks_net_of_sockets() {
            if last > first + TASK_GROWTH {
                failures.push(format!(
                    "clamgate 1: {last} tasks more than sockets after round {}, {first} after round 1: tasks left behind",
                    self.rounds.len()
                ));
            }
        }
        for (i, after) in self.after.clamgates.iter().enumerate() {
            let name = format!("clamgate {}", i + 1);
            let before = &self.before.clamgates[i.min(self.before.clamgates.len() - 1)];
            if after.fds_other > before.fds_other + FD_TOLERANCE {
                failures.push(format!(
                    "{name}: {} non-socket descriptors, {} before",
                    after.fds_other, before.fds_other
                ));
            }
            if after.rss_bytes > before.rss_bytes + RSS_TOLERANCE_BYTES {
                failures.push(format!(
                    "{name}: RSS {} MiB, {} MiB before",
                    after.rss_bytes >> 20,
                    before.rss_bytes >> 20
                ));
            }
        }
        for (i, after) in self.after.clamgates.iter().enumerate() {
            // Scans open a connection each and close it with the reply; the health probe's
            // may be caught open.
            if after.clamd_connections > 1 {
                failures.push(format!(
                    "clamgate {}: {} connections to clamd after the load",
                    i + 1,
                    after.clamd_connections
                ));
            }
        }
        if self.after.clamd_busy_threads.unwrap_or(0) > 1 {
            failures.push(format!("clamd still has {:?} threads at work", self.after.clamd_busy_threads));
        }
        failures
    }

    /// clamgate 1's heap in use from the end of round 1 to the end of the last round, and what is
    /// allowed (clamgate 2 is restarted in every round, so only clamgate 1 lives through them).
    pub fn heap_growth(&self) -> Option<Growth> {
        let heap = |sample: &Sample| sample.clamgates.first().map(|one| one.heap_in_use_bytes as u64);
        let first = heap(self.rounds.first()?)?;
        let last = heap(self.rounds.last()?)?;
        let later_rounds = self.rounds.len().saturating_sub(1) as u64;
        let allowed = HEAP_GROWTH_FLOOR_BYTES.max(HEAP_GROWTH_PER_ROUND_BYTES * later_rounds);
        Some(Growth { grew: last.saturating_sub(first), allowed })
    }

    /// clamgate 1's tasks alive minus its sockets, after round 1 and after the last round.
    fn tasks_net_of_sockets(&self) -> Option<(f64, f64)> {
        let net =
            |sample: &Sample| sample.clamgates.first().map(|one| one.tasks_alive - one.fds_sockets as f64);
        Some((net(self.rounds.first()?)?, net(self.rounds.last()?)?))
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let pass = if self.failures().is_empty() { "passed" } else { "FAILED" };
        out.push_str(&format!(
            "Command: `{}` ({} rounds, {:.0} s in all, {} clients, objects up to {} MiB): **{pass}**.\n\n",
            self.command,
            self.rounds.len(),
            self.duration.as_secs_f64(),
            self.clients,
            self.max_object_mib
        ));
        out.push_str("| answers | count |\n|---|---|\n");
        for (what, count) in &self.counts {
            out.push_str(&format!("| {what} | {count} |\n"));
        }
        out.push_str(&format!(
            "| failed closed outside any fault window (+{} s) | {} |\n\n",
            WINDOW_GRACE.as_secs(),
            self.failed_closed_outside_faults.len()
        ));
        out.push_str(
            "| fault | injected | lasted (s, longest) | failed-closed answers (all) | most common | service back after (s, median / longest) |\n|---|---|---|---|---|---|\n",
        );
        for name in crate::faults::FAULTS {
            let lines: Vec<&FaultLine> = self.faults.iter().filter(|line| line.fault == name).collect();
            if lines.is_empty() {
                continue;
            }
            let lasted = lines.iter().map(|line| line.lasted).max().unwrap_or_default();
            let failed: usize = lines.iter().map(|line| line.failed_closed).sum();
            let mut why = std::collections::BTreeMap::<&str, usize>::new();
            for line in &lines {
                for (reason, n) in &line.why {
                    *why.entry(reason.as_str()).or_default() += n;
                }
            }
            let mut why: Vec<_> = why.into_iter().collect();
            why.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
            let why: Vec<String> = why.iter().take(3).map(|(reason, n)| format!("{n} × {reason}")).collect();
            let mut back: Vec<Option<Duration>> = lines.iter().map(|line| line.recovered_after).collect();
            back.sort();
            let back = if back.contains(&None) {
                "not within 60 s".to_string()
            } else {
                let seconds = |d: Option<Duration>| d.unwrap_or_default().as_secs_f64();
                format!("{:.2} / {:.2}", seconds(back[back.len() / 2]), seconds(back[back.len() - 1]))
            };
            out.push_str(&format!(
                "| {name} | {} | {:.1} | {failed} | {} | {back} |\n",
                lines.len(),
                lasted.as_secs_f64(),
                why.join("; ")
            ));
        }
        out.push_str("\n| resource | before | after | allowed |\n|---|---|---|---|\n");
        for (i, (before, after)) in self.before.clamgates.iter().zip(&self.after.clamgates).enumerate() {
            let n = i + 1;
            let note =
                if self.restarted && i == 1 { " (restarted: before is its predecessor's)" } else { "" };
            out.push_str(&format!(
                "| clamgate {n}{note}: descriptors other than sockets | {} | {} | +{FD_TOLERANCE} |\n",
                before.fds_other, after.fds_other
            ));
            out.push_str(&format!("| clamgate {n}: sockets (keep-alive from Envoy, nginx, Redis, clamd) | {} | {} | (reported) |\n", before.fds_sockets, after.fds_sockets));
            out.push_str(&format!(
                "| clamgate {n}: RSS (MiB) | {} | {} | +{} |\n",
                before.rss_bytes >> 20,
                after.rss_bytes >> 20,
                RSS_TOLERANCE_BYTES >> 20
            ));
            out.push_str(&format!(
                "| clamgate {n}: peak RSS during the run (MiB) | | {} | (reported) |\n",
                after.peak_rss_bytes >> 20
            ));
            out.push_str(&format!("| clamgate {n}: bodies moved to disk / refused with the disk budget full (counters) | | {} / {} | (reported) |\n", after.spilled, after.spool_full));
            out.push_str(&format!(
                "| clamgate {n}: held body bytes (memory + disk) | {} | {} | 0 |\n",
                before.held_memory_bytes + before.held_disk_bytes,
                after.held_memory_bytes + after.held_disk_bytes
            ));
            out.push_str(&format!(
                "| clamgate {n}: temp files open | {} | {} | 0 |\n",
                before.temp_files, after.temp_files
            ));
            out.push_str(&format!(
                "| clamgate {n}: ext_proc streams open | {} | {} | 0 |\n",
                before.streams_open, after.streams_open
            ));
            out.push_str(&format!(
                "| clamgate {n}: connections to clamd | {} | {} | ≤ 1 (a health probe) |\n",
                before.clamd_connections, after.clamd_connections
            ));
        }
        out.push_str(&format!(
            "| clamd threads at work | {} | {} | ≤ 1 (the STATS command itself) |\n",
            self.before.clamd_busy_threads.map_or("?".into(), |n| n.to_string()),
            self.after.clamd_busy_threads.map_or("?".into(), |n| n.to_string())
        ));
        out.push_str(&self.rounds_table());
        if !self.wrong.is_empty() {
            out.push_str("\nWrong answers (first 20):\n\n");
            for what in self.wrong.iter().take(20) {
                out.push_str(&format!("- {what}\n"));
            }
        }
        if !self.failed_closed_outside_faults.is_empty() {
            out.push_str("\nFailed closed outside fault windows (first 10):\n\n");
            for what in self.failed_closed_outside_faults.iter().take(10) {
                out.push_str(&format!("- {what}\n"));
            }
        }
        out
    }

    /// The leak check's table: each clamgate idle after each round.
    fn rounds_table(&self) -> String {
        let mut out = String::from(
            "\n| idle after | requests so far | clamgate 1: heap in use (MiB) | clamgate 1: RSS (MiB) | clamgate 1: tasks alive | clamgate 1: descriptors other than sockets / sockets | clamgate 1: memory trims so far (ms in all) | clamgate 2 (restarted in each round): heap in use / RSS (MiB) |\n|---|---|---|---|---|---|---|---|\n",
        );
        let row = |label: String, sample: &Sample| {
            let one = sample.clamgates.first().cloned().unwrap_or_default();
            let two = sample.clamgates.get(1).cloned().unwrap_or_default();
            format!(
                "| {label} | {} | {:.1} | {} | {} | {} / {} | {} ({:.0}) | {:.1} / {} |\n",
                sample.requests,
                mib(one.heap_in_use_bytes as u64),
                one.rss_bytes >> 20,
                one.tasks_alive,
                one.fds_other,
                one.fds_sockets,
                one.memory_trims,
                one.memory_trim_seconds * 1000.0,
                mib(two.heap_in_use_bytes as u64),
                two.rss_bytes >> 20,
            )
        };
        out.push_str(&row("the warm-up (before the load)".into(), &self.before));
        for (round, sample) in self.rounds.iter().enumerate() {
            out.push_str(&row(format!("round {}", round + 1), sample));
        }
        if let Some(growth) = self.heap_growth() {
            out.push_str(&format!(
                "\nclamgate 1's heap in use grew {:.1} MiB from the end of round 1 to the end of round {} \
                 (allowed: {} MiB, {} MiB per round after the first, at least {} MiB).\n",
                mib(growth.grew),
                self.rounds.len(),
                growth.allowed >> 20,
                HEAP_GROWTH_PER_ROUND_BYTES >> 20,
                HEAP_GROWTH_FLOOR_BYTES >> 20
            ));
        }
        if let Some((first, last)) = self.tasks_net_of_sockets() {
            out.push_str(&format!(
                "Its tasks alive net of sockets: {first} after round 1, {last} after round {} (allowed: +{TASK_GROWTH}).\n",
                self.rounds.len()
            ));
        }
        out
    }

    /// Replaces the part of docs/reliability.md between its result markers.
    pub fn write_report(&self) -> std::io::Result<()> {
        const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reliability.md");
        const BEGIN: &str = "<!-- soak results: begin (written by scripts/soak.sh --write-report) -->";
        const END: &str = "<!-- soak results: end -->";
        let text = std::fs::read_to_string(PATH)?;
        let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) else {
            return Err(std::io::Error::other("docs/reliability.md has no result markers"));
        };
        let updated = format!("{}{BEGIN}\n\n{}\n{}", &text[..begin], self.markdown(), &text[end..]);
        std::fs::write(PATH, updated)
    }
}

/// clamgate 1's heap growth across the rounds.
pub struct Growth {
    pub grew: u64,
    pub allowed: u64,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// A failed-closed answer's kind, for grouping: its status and the refusal's reason, without
/// the URL.
fn reason_of(what: &str) -> String {
    let after_url = what.split_once(": ").map_or(what, |(_, rest)| rest);
    let status = after_url.split_whitespace().next().unwrap_or("?");
    let reason = after_url
        .split("\"reason\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(str::to_string)
        .or_else(|| after_url.contains("no answer").then(|| "no answer".to_string()))
        .or_else(|| after_url.contains("body cut").then(|| "body cut".to_string()))
        .or_else(|| after_url.contains("error sending").then(|| "connection failed".to_string()))
        .unwrap_or_else(|| {
            // A local reply of Envoy's: its text says what failed.
            let text = after_url.split_once(' ').map_or("", |(_, text)| text).trim();
            text.chars().take(48).collect()
        });
    format!("{status} {reason}").trim().to_string()
}
