//! The Markdown the benchmark prints (and `--write-report` puts in `docs/benchmarks.md`).

use std::fmt::Write as _;
use std::time::Duration;

use crate::scenario::{self, Scenario};
use crate::{Cell, RunInfo};

/// The top of `docs/benchmarks.md`: how to run the benchmark and how to read it. The results of
/// the last `--write-report` run follow it.
pub const HEADER: &str = r#"# Benchmarks: what clamgate adds to a request through Envoy

`benches/proxy` measures request latency percentiles and throughput through the real stack on
loopback, for the same Envoy, the same origin and the same objects, on routes with and without
clamgate. It is a benchmark, not a test: it never fails on a number (it exits non-zero only when
the stack cannot start).

```sh
scripts/bench.sh                                   # every scenario, 1 KiB / 16 KiB / 1 MiB, c=1 and c=8; prints the tables
scripts/bench.sh --write-report                    # the same, and rewrites this file with the results
scripts/bench.sh --scenarios baseline,content --sizes 1k --concurrency 1 --scale 0.2   # a quick subset
cargo bench --bench proxy -- --help                # every option
```

`scripts/bench.sh` sources `scripts/setup.sh` (installs clamd, Redis, Envoy 1.40 when missing),
then runs `cargo bench --bench proxy -- ARGS` (release build). `cargo test` and `cargo nextest run`
never run it: a `harness = false` bench is only built by `cargo bench` (or `--benches` /
`--all-targets`), and started without cargo bench's `--bench` argument, or with `--list`, it does
nothing.

| option | default | meaning |
|---|---|---|
| `--scenarios` | `baseline,content,resource,miss` | which scenarios (below) |
| `--sizes` | `1k,16k,1m` | body sizes (bytes, or `k` / `m` for KiB / MiB; 64 B to 16 MiB) |
| `--concurrency` | `1,8` | client workers, each with one HTTP/1.1 keep-alive connection |
| `--scale` | `1.0` | multiplies every request count |
| `--phase-secs` | `60` | time bound of each warm-up and each measured phase |
| `--max-secs` | `1800` | time bound of the whole run: cells not started by then are skipped |
| `--envoy-concurrency` | number of CPUs | Envoy's worker threads |
| `--redis` | off | clamgate with a Redis verdict cache (a local redis-server) behind its in-process tier |
| `--write-report` | off | rewrite this file |
| `--note TEXT` | none | a note for the report (e.g. what else ran on the machine) |

## The stack

- **clamd** 1.4 with the test signatures (`testdata/clamav/`, the tests' `ClamdProcess`), TCP on
  loopback. The official database is 3-10× slower per byte: misses here are a lower bound.
- **clamgate**: the release binary cargo builds for the bench, as its own process, with its
  defaults except the listeners, clamd's address, `log.level = "warn"` and, when clamgate accepts
  it, `[policies.mirror] cache_mode = "resource"`.
- **origin**: an in-process HTTP/1.1 server (its own one-thread runtime) serving every object
  under any path prefix with `content-length` and an `ETag`: fixed pseudo-random objects
  (`obj-N.bin`) and, for misses, a new object per request (`u-…-N-i.bin`: the fixed bytes with
  the name written over their start, so a new SHA-256).
- **Envoy 1.40** with the shipped `envoy/envoy.yaml` (addresses substituted as in the tests, the
  access log on) plus bench-only routes inserted textually at the top of the route list: a copy
  of the `/` route as `/noscan/`, and a copy of the `/mirror/` route as `/mirror-noscan/`, each
  with `ExtProcPerRoute { disabled: true }` and nothing else changed. The shipped file is not
  modified. Each route is checked once before measuring (a route without ext_proc must answer
  without `x-clamgate-verdict`, a scanned one with it).
- **client**: in the bench process (its own one-thread runtime), a minimal HTTP/1.1 client
  (`benches/proxy/load.rs`). `c` workers, each with exactly one keep-alive connection of its own,
  sending GETs back to back (a closed loop: latency under load is the latency at the throughput
  the stack reached, not at a fixed arrival rate). A request's latency runs from writing it to
  reading the last body byte; a request that does not answer 200 with the expected length counts
  as an error and is not in the percentiles.

Why this client rather than `wrk`: every latency is kept and percentiles are exact (nearest rank
over the sorted samples), each response is checked (status and length: a fast 503 must not pass
as a fast request), the miss scenario needs a new path per request without a Lua script, and
nothing needs installing. Why not reqwest: its pool opened a second connection now and then (the
next request went out before the previous connection was back in the pool, seen with 1 MiB
bodies); here a worker's connection count is exact, and checked (**conns** below).

## Scenarios

| scenario | route and object | compared with |
|---|---|---|
| `baseline` | `/noscan/files/obj-N.bin`: the `/` route's copy without ext_proc | |
| `content-hit` | `/files/obj-N.bin`, the same object every time: a content-key (SHA-256) verdict-cache hit after the first scan, but the whole body still travels through ext_proc BUFFERED | `baseline` |
| `mirror-noscan` | `/mirror-noscan/obj-N.bin`: the `/mirror/` route's copy without ext_proc | |
| `resource-hit` | `/mirror/obj-N.bin` (policy `mirror`, `cache_mode = "resource"`), the same object and ETag every time: a resource-key hit answered at the response headers with a `mode_override`, the body streaming past ext_proc | `mirror-noscan` (issue target: under 1 ms added at p99) |
| `noop-hit` | `/mirror/obj-N.bin` through a second Envoy, same config, whose processor is a do-nothing one in the bench process (`benches/proxy/noop.rs`): it gives the same two answers clamgate gives on a resource-key hit, with no lookup, state, task or metric. The floor any processor pays for Envoy's two ext_proc round trips on this machine; resource-hit over noop-hit is clamgate's own share | `mirror-noscan` |
| `miss` | `/files/u-…-N-i.bin`, a new object every request: a real clamd scan each | `baseline` |

`--scenarios resource` runs `mirror-noscan` and `resource-hit`. Until the shipped config has the
`/mirror/` route and clamgate accepts `[policies.mirror]`, they are skipped with a line saying
which is missing; nothing else needs changing for them to run. `--scenarios noop` runs
`mirror-noscan` and `noop-hit` (it starts the second Envoy and the do-nothing processor).

Requests per cell (times `--scale`): bodies up to 64 KiB, 200 warm-up + 2000 measured at c=1 and
400 + 4000 at higher concurrency; larger bodies 50 + 1000. Warm-up requests use the same
connections and are not measured; for `content-hit` and `resource-hit` the first one is the scan
that fills the cache. Cells run size by size, concurrency by concurrency, and the scenarios of one
(size, concurrency) back to back, so that compared numbers are taken close together.

## Reading the numbers

- Everything (client, Envoy, clamgate, clamd, origin) shares the machine's cores: absolute
  numbers are those of this small machine, the differences between scenarios of one run are the
  point.
- **other load** is the CPU time used by processes other than the benchmark's own (client,
  Envoy, clamgate, clamd, Redis) during the measured phase, in cores, from `/proc`. Anything
  clearly above 0 means other work competed with the run, and its numbers (the tails most) are
  noisy. `–`: the phase was too short (under 0.25 s) for the kernel's 10 ms accounting.
- **clamd scans** and **cache hits** are clamgate's own counters (`/metrics`) over the measured
  phase; the full list of counters that moved follows the tables. **conns** is the number of
  client connections Envoy accepted in the cell: equal to `c` when keep-alive held.
- p99.9 needs more than 1000 samples to differ from the maximum.
- For numbers to publish, run on an otherwise idle machine (no builds or tests alongside) and
  check that **other load** stayed near 0; sub-millisecond latencies (the 1 KiB baseline) moved
  by 2-3× between runs on a shared machine.
"#;

pub fn size_label(size: usize) -> String {
    match size {
        s if s >= 1024 * 1024 && s % (1024 * 1024) == 0 => format!("{} MiB", s / (1024 * 1024)),
        s if s >= 1024 && s % 1024 == 0 => format!("{} KiB", s / 1024),
        s => format!("{s} B"),
    }
}

fn ms(duration: Option<Duration>) -> String {
    duration.map(|d| format!("{:.3}", d.as_secs_f64() * 1000.0)).unwrap_or_else(|| "–".to_string())
}

fn count_requests(cell: &Cell) -> String {
    let completed = cell.measured.completed();
    if cell.measured.time_bound_hit {
        format!("{completed} (time bound)")
    } else {
        completed.to_string()
    }
}

/// Sum of the changes of the samples named `name` whose labels contain `label`.
fn metric_sum(cell: &Cell, name: &str, label: &str) -> f64 {
    cell.metrics
        .iter()
        .filter(|(sample, _)| sample.split('{').next() == Some(name) && sample.contains(label))
        .fold(0.0, |sum, (_, value)| sum + value)
}

/// One progress line for stderr.
pub fn one_line(cell: &Cell) -> String {
    let m = &cell.measured;
    format!(
        "{} ok, {} errors, {:.0} req/s, p50 {} ms, p99 {} ms, max {} ms",
        m.latencies.len(),
        m.errors,
        m.requests_per_sec(),
        ms(m.percentile(50.0)),
        ms(m.percentile(99.0)),
        ms(m.latencies.last().copied())
    )
}

/// The results: the run's context, a table per scenario, the overheads, clamgate's counters.
pub fn results(info: &RunInfo, cells: &[Cell]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Results ({})\n", info.date);
    let _ = writeln!(out, "- Command: `{}`", info.command);
    let _ = writeln!(
        out,
        "- Machine: {} CPUs ({}), {} RAM, Linux {}; load average {} at the start, {} at the end",
        info.cores, info.cpu_model, info.memory, info.kernel, info.load_start, info.load_end
    );
    let _ = writeln!(out, "- Envoy {} (`--concurrency {}`)", info.envoy_version, info.envoy_workers);
    let _ = writeln!(out, "- clamd: {} with the test signatures", info.clamd_version);
    let _ = writeln!(
        out,
        "- {} at git {}; verdict cache: {}",
        info.clamgate_version, info.git_revision, info.cache
    );
    let _ = writeln!(out, "- Run time: {:.0} s", info.duration.as_secs_f64());
    let _ = writeln!(
        out,
        "\n<details><summary>Bench-only routes inserted at the top of the shipped route list</summary>\n\n```yaml\n{}\n```\n</details>",
        info.envoy_routes
    );
    if !info.notes.is_empty() {
        let _ = writeln!(out, "\nNotes:\n");
        for note in &info.notes {
            let _ = writeln!(out, "- {note}");
        }
    }

    for scenario in scenario::ALL {
        let rows: Vec<&Cell> = cells.iter().filter(|cell| cell.scenario == scenario).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n### {}\n\n{}\n", scenario.name(), scenario.description());
        let _ = writeln!(
            out,
            "| body | c | requests | errors | req/s | MiB/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | clamd scans | cache hits | conns | other load |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for cell in rows {
            let m = &cell.measured;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {} |",
                size_label(cell.size),
                cell.concurrency,
                count_requests(cell),
                m.errors,
                m.requests_per_sec(),
                m.mib_per_sec(),
                ms(m.percentile(50.0)),
                ms(m.percentile(90.0)),
                ms(m.percentile(99.0)),
                ms(m.percentile(99.9)),
                ms(m.latencies.last().copied()),
                metric_sum(cell, "clamgate_clamd_scan_duration_seconds_count", ""),
                metric_sum(cell, "clamgate_cache_lookups_total", "result=\"hit\""),
                match cell.connections {
                    Some(n) if n == cell.client_connects => n.to_string(),
                    Some(n) => format!("{n} (client: {})", cell.client_connects),
                    None => format!("? (client: {})", cell.client_connects),
                },
                cell.other_cores.map(|cores| format!("{cores:.2} cores")).unwrap_or_else(|| "–".to_string()),
            );
        }
    }

    let comparisons: Vec<(&Cell, &Cell)> = cells
        .iter()
        .filter_map(|cell| {
            let base = cell.scenario.compared_with()?;
            let base = cells.iter().find(|other| {
                other.scenario == base && other.size == cell.size && other.concurrency == cell.concurrency
            })?;
            Some((cell, base))
        })
        .collect();
    if !comparisons.is_empty() {
        let _ = writeln!(out, "\n### Overhead over baseline\n");
        for scenario in scenario::ALL {
            let rows: Vec<&(&Cell, &Cell)> =
                comparisons.iter().filter(|(cell, _)| cell.scenario == scenario).collect();
            let Some((_, first_base)) = rows.first() else { continue };
            let target = if scenario == Scenario::ResourceHit {
                " (issue target: under 1 ms added at p99)"
            } else {
                ""
            };
            let _ = writeln!(out, "{} over {}{target}:\n", scenario.name(), first_base.scenario.name());
            for (cell, base) in rows {
                let delta = |p: f64| {
                    let (a, b) = (cell.measured.percentile(p)?, base.measured.percentile(p)?);
                    Some((a.as_secs_f64() - b.as_secs_f64()) * 1000.0)
                };
                let shown = |value: Option<f64>| {
                    value.map(|ms| format!("{ms:+.3} ms")).unwrap_or_else(|| "–".to_string())
                };
                let verdict = match (scenario, delta(99.0)) {
                    (Scenario::ResourceHit, Some(ms)) if ms < 1.0 => " (under the target in this run)",
                    (Scenario::ResourceHit, Some(_)) => " (over the target in this run)",
                    _ => "",
                };
                let base_rate = base.measured.requests_per_sec();
                let _ = writeln!(
                    out,
                    "- {} c={}: {} at p50, {} at p99{verdict}; throughput {:.0} % of {}'s",
                    size_label(cell.size),
                    cell.concurrency,
                    shown(delta(50.0)),
                    shown(delta(99.0)),
                    if base_rate > 0.0 { cell.measured.requests_per_sec() / base_rate * 100.0 } else { 0.0 },
                    base.scenario.name(),
                );
            }
            let _ = writeln!(out);
        }
        clamgate_share(&mut out, cells);
    }

    let _ = writeln!(out, "\n### clamgate's counters during each measured phase\n");
    for cell in cells {
        let moved: Vec<String> = cell
            .metrics
            .iter()
            .map(|(sample, delta)| format!("`{}` +{delta:.0}", sample.trim_start_matches("clamgate_")))
            .collect();
        let moved = if moved.is_empty() { "none".to_string() } else { moved.join(", ") };
        let _ = writeln!(
            out,
            "- {} {} c={}: {moved}",
            cell.scenario.name(),
            size_label(cell.size),
            cell.concurrency
        );
    }

    let failing: Vec<&Cell> =
        cells.iter().filter(|cell| cell.measured.errors + cell.warmup.errors > 0).collect();
    if !failing.is_empty() {
        let _ = writeln!(out, "\n### Errors\n");
        for cell in failing {
            let samples: Vec<&String> =
                cell.warmup.error_samples.iter().chain(cell.measured.error_samples.iter()).take(3).collect();
            let _ = writeln!(
                out,
                "- {} {} c={}: {} in warm-up, {} measured; e.g. {}",
                cell.scenario.name(),
                size_label(cell.size),
                cell.concurrency,
                cell.warmup.errors,
                cell.measured.errors,
                samples.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join("; ")
            );
        }
    }
    out
}

/// resource-hit over noop-hit: what clamgate itself adds to a resource-key hit, beyond what any
/// processor answering the same messages costs.
fn clamgate_share(out: &mut String, cells: &[Cell]) {
    let pairs: Vec<(&Cell, &Cell)> = cells
        .iter()
        .filter(|cell| cell.scenario == Scenario::ResourceHit)
        .filter_map(|cell| {
            let noop = cells.iter().find(|other| {
                other.scenario == Scenario::NoopHit
                    && other.size == cell.size
                    && other.concurrency == cell.concurrency
            })?;
            Some((cell, noop))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    let _ = writeln!(out, "resource-hit over noop-hit (clamgate's own share of a resource-key hit):\n");
    for (cell, noop) in pairs {
        let delta = |p: f64| {
            let (a, b) = (cell.measured.percentile(p)?, noop.measured.percentile(p)?);
            Some(format!("{:+.3} ms", (a.as_secs_f64() - b.as_secs_f64()) * 1000.0))
        };
        let _ = writeln!(
            out,
            "- {} c={}: {} at p50, {} at p99",
            size_label(cell.size),
            cell.concurrency,
            delta(50.0).unwrap_or_else(|| "–".to_string()),
            delta(99.0).unwrap_or_else(|| "–".to_string()),
        );
    }
    let _ = writeln!(out);
}
