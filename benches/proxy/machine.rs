//! What the numbers were measured on: the machine, the versions, and how busy the machine was
//! with OTHER work while the benchmark ran (the CPU time of the whole machine minus that of the
//! benchmark's own processes, from `/proc`).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// CPU counters at one instant: the whole machine (`/proc/stat`) and the benchmark's processes.
#[derive(Clone, Copy)]
pub struct CpuSample {
    busy: u64,
    total: u64,
    ours: u64,
}

/// CPU time (ticks) of the whole machine: (busy, total).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).filter_map(|field| field.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    Some((busy, busy + get(3) + get(4)))
}

/// utime + stime of one process, all its threads (ticks).
fn process_ticks(pid: u32) -> u64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the man page; utime and stime are fields 14 and 15.
    let get = |i: usize| fields.get(i - 3).and_then(|field| field.parse::<u64>().ok()).unwrap_or(0);
    get(14) + get(15)
}

impl CpuSample {
    pub fn take(pids: &[u32]) -> CpuSample {
        let (busy, total) = machine_ticks().unwrap_or((0, 0));
        CpuSample { busy, total, ours: pids.iter().map(|&pid| process_ticks(pid)).sum() }
    }

    /// Cores' worth of CPU used by other processes between `start` and `self` (0 to nproc).
    /// `None` when the interval is too short for the 10 ms accounting ticks to say anything.
    pub fn other_cores_since(&self, start: &CpuSample, cores: usize) -> Option<f64> {
        let total = self.total.checked_sub(start.total).filter(|&ticks| ticks >= 50)?;
        let busy = self.busy.saturating_sub(start.busy);
        let ours = self.ours.saturating_sub(start.ours);
        Some(busy.saturating_sub(ours) as f64 / total as f64 * cores as f64)
    }
}

/// The pids of processes whose command line mentions `needle` (e.g. a temp dir), for processes
/// started by the test harness that does not expose their pid.
pub fn pids_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

pub fn memory() -> String {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let kib: u64 = info.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "unknown".to_string())
}

pub fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// `/proc/loadavg`'s three load averages.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// The output of a command, trimmed, or `None`.
pub fn command_output(program: &str, args: &[&str], dir: &Path) -> Option<String> {
    let output = Command::new(program).args(args).current_dir(dir).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The git revision of the repository and the files under the built paths that differ from it.
pub fn git_revision(repo: &Path) -> String {
    let Some(rev) = command_output("git", &["rev-parse", "--short=12", "HEAD"], repo) else {
        return "unknown (no git)".to_string();
    };
    // Not trimmed: each porcelain line starts with a two-column status (` M path`).
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--"])
        .args(["src", "proto", "build.rs", "Cargo.toml", "Cargo.lock", "envoy/envoy.yaml", "benches"])
        .current_dir(repo)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    let files: Vec<&str> = dirty.lines().map(|line| line.get(3..).unwrap_or(line)).collect();
    if files.is_empty() {
        rev
    } else {
        format!("{rev} + uncommitted changes in {}", files.join(", "))
    }
}

/// Now, as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field) && line[field.len()..].starts_with(':'))?;
    let kib: u64 = line[field.len() + 1..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident set size of a process now, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS")
}

/// Peak resident set size of a process (`VmHWM`), in bytes: since it started, or since the last
/// [`reset_peak_rss`] that succeeded.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM")
}

/// Resets a process's peak RSS to its current RSS (`echo 5 > /proc/<pid>/clear_refs`, Linux 4.0
/// and later, own processes only). `false` when the kernel refused.
pub fn reset_peak_rss(pid: u32) -> bool {
    fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The file system type of the mount holding `path` (`/proc/mounts`, longest matching mount point).
pub fn filesystem_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, mount_point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(mount_point).then(|| (mount_point.len(), kind.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
}
