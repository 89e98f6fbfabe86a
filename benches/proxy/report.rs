//! The Markdown the benchmark prints, and `docs/benchmarks.md` as `--write-report` writes it: the
//! how-to ([`HEADER`]), then one results section per kind of scenario, each kept from the file
//! when this run did not produce it ([`compose`]).

use std::fmt::Write as _;
use std::time::Duration;

use crate::large::{self, LargeRun, Way};
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
scripts/bench.sh                                   # the latency scenarios, 1 KiB / 16 KiB / 1 MiB, c=1 and c=8; prints the tables
scripts/bench.sh --write-report                    # the same, and replaces their section of this file
scripts/bench.sh --scenarios baseline,content --sizes 1k --concurrency 1 --scale 0.2   # a quick subset
scripts/bench.sh --scenarios large --write-report  # large bodies (1 / 16 / 256 MiB): scan time through Envoy vs direct INSTREAM
scripts/bench.sh --scenarios large --large-sizes 1m,16m --large-reps 2   # a quick look at it
scripts/bench.sh --scenarios baseline,content,noop,miss,peer --sizes 1k,63k   # beside the incumbent (squid + c-icap)
cargo bench --bench proxy -- --help                # every option
```

`scripts/bench.sh` sources `scripts/setup.sh` (installs clamd, Redis, nginx, Envoy 1.40 when
missing; squid, c-icap and `libc-icap-mod-virus-scan` too when `peer` is asked for), then runs `cargo bench --bench proxy -- ARGS` (release build). `cargo test` and `cargo nextest run`
never run it: a `harness = false` bench is only built by `cargo bench` (or `--benches` /
`--all-targets`), and started without cargo bench's `--bench` argument, or with `--list`, it does
nothing.

| option | default | meaning |
|---|---|---|
| `--scenarios` | `baseline,content,resource,noop,miss,nginx` | which scenarios (below); `peer` and `large` only when named |
| `--sizes` | `1k,16k,1m` | body sizes of the latency scenarios (bytes, or `k` / `m` for KiB / MiB; 64 B to 16 MiB) |
| `--concurrency` | `1,8` | client workers, each with one HTTP/1.1 keep-alive connection |
| `--scale` | `1.0` | multiplies every request count |
| `--rounds` | `1` | runs every scenario of a (size, concurrency) this many times, in turn, and reports each one's median round (the other rounds' req/s go to the notes): an effect smaller than the machine's run-to-run variance shows as overlapping rounds |
| `--phase-secs` | `60` | time bound of each warm-up and each measured phase |
| `--max-secs` | `1800` | time bound of the whole run: cells not started by then are skipped |
| `--envoy-concurrency` | number of CPUs | Envoy's worker threads |
| `--redis` | off | clamgate with a Redis verdict cache (a local redis-server) behind its in-process tier |
| `--clamd-socket` | `tcp` | how clamgate reaches clamd: `tcp` (INSTREAM) or `unix` (a clamd on this host: held bodies scanned by descriptor, FILDES); the `large` scenario's direct INSTREAM baseline uses TCP either way |
| `--large-sizes` | `1m,16m,256m` | body sizes of `large` (64 B to 600 MiB) |
| `--large-reps` | 10 up to 1 MiB, 5 up to 16 MiB, 3 above | repetitions of `large`: one number for every size, or one per size |
| `--write-report` | off | rewrite this file: this text, and the results sections of the scenarios that ran (below) |
| `--note TEXT` | none | a note for the report (e.g. what else ran on the machine) |

The results below come in two sections, **latency and throughput** (`baseline`, `content`,
`resource`, `noop`, `miss`, `nginx`, `peer`) and **large bodies** (`large`). `--write-report` replaces the section
of each kind of scenario that ran and keeps the other section as the file had it, from its own
earlier run (each section names its date and command): `--scenarios large --write-report` leaves
the latency tables alone, and the reverse. Each section starts with an HTML comment line naming
it (invisible when rendered); leave those lines in place.

## The stack

- **clamd** 1.4 with the test signatures (`testdata/clamav/`, the tests' `ClamdProcess`), TCP on
  loopback. The official database is 3-10× slower per byte: misses here are a lower bound. When
  `large` runs, with its size limits raised (below).
- **clamgate**: the release binary cargo builds for the bench, as its own process, with its
  defaults except the listeners, clamd's address, `log.level = "warn"`, when clamgate accepts
  it `[policies.mirror] cache_mode = "resource"`, and when `large` runs `scan.max_scan_bytes`
  (below).
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
- **nginx 1.22** (Debian) with the shipped `nginx/nginx.conf` and its `clamgate-*.conf` snippets
  (ports substituted as in the tests, `worker_processes auto`), when `nginx` runs, plus two
  bench-only locations: `/plain/` (no auth_request) and `/noop-auth/` (the shipped protected
  location, its auth subrequest sent to a do-nothing endpoint). clamgate's HTTP listener gets the
  harness's token, and `[policies.mirror]` gets `on_miss = "fetch"` with the origin as
  `fetch.origins` for `127.0.0.1`.
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
| `content-hit` | `/files/obj-N.bin`, the same object every time: a content-key (SHA-256) verdict-cache hit after the first scan, but the whole body still travels through ext_proc (FULL_DUPLEX: held by clamgate, hashed, sent back) | `baseline` |
| `mirror-noscan` | `/mirror-noscan/obj-N.bin`: the `/mirror/` route's copy without ext_proc | |
| `resource-hit` | `/mirror/obj-N.bin` (policy `mirror`, `cache_mode = "resource"`), the same object and ETag every time: a resource-key hit answered at the response headers with a `mode_override`, the body streaming past ext_proc | `mirror-noscan` (issue target: under 1 ms added at p99) |
| `noop-hit` | `/mirror/obj-N.bin` through a second Envoy, same config, whose processor is a do-nothing one in the bench process (`benches/proxy/noop.rs`): it gives the same two answers clamgate gives on a resource-key hit, with no lookup, state, task or metric. The floor any processor pays for Envoy's two ext_proc round trips on this machine; resource-hit over noop-hit is clamgate's own share | `mirror-noscan` |
| `echo-hit` | `/files/obj-N.bin` through the second Envoy, whose do-nothing processor does what clamgate does on a content-key hit minus the lookup and the hash: it switches the download to FULL_DUPLEX_STREAMED, holds the headers and the whole body in memory, then answers the headers and sends the body back in 64 KiB pieces. The floor of any processor that holds a body before it passes; content-hit over echo-hit is clamgate's own share | `baseline` |
| `miss` | `/files/u-…-N-i.bin`, a new object every request: a real clamd scan each | `baseline` |
| `clamd-direct` | no HTTP: the bench's workers scan a new body of the same size each time straight with clamd (`zINSTREAM`, a new connection per scan, over the socket clamgate is given; `benches/proxy/direct.rs`). clamd alone: the floor of a miss | |
| `peer-repeat` | the incumbent: squid 5.7 as a reverse proxy (no squid cache) sending each response to c-icap's `virus_scan` (RESPMOD), which has the same clamd scan it by descriptor over its unix socket (`benches/proxy/peer.rs`); `/files/obj-N.bin`, the same object every time (clamd answers from its own cache of clean files) | `content-hit`, in "The incumbent, side by side" |
| `peer-unique` | the incumbent, `/files/u-…-N-i.bin`, a new object every request: a clamd scan each | `miss`, in "The incumbent, side by side" |
| `nginx-plain` | nginx `/plain/obj-N.bin`: nginx and the origin, no auth_request | |
| `nginx-noop-auth` | nginx `/noop-auth/obj-N.bin`: the shipped protected location with `auth_request` to a do-nothing endpoint that answers what clamgate answers on a hit (`x-clamgate-verdict`, `x-clamgate-if-match`) at once: the floor of any auth_request service | `nginx-plain` |
| `nginx-hit` | nginx `/mirror/obj-N.bin`: `auth_request` to clamgate's `/v1/auth`, a resource-key hit (fetched and scanned before measuring), then the origin with `If-Match` | `nginx-noop-auth` (issue target: at least 90 % of its req/s at c=8, at most 0.1 ms added at p50) |
| `nginx-fetch` | nginx `/mirror/u-…-N-i.bin`, a new object every request: clamgate misses, downloads it from the origin, scans it, caches the verdict, answers; nginx then gets it from the origin | `nginx-plain` |

`large` is not a latency scenario: see "Large bodies" below.

`--scenarios resource` runs `mirror-noscan` and `resource-hit`. Until the shipped config has the
`/mirror/` route and clamgate accepts `[policies.mirror]`, they are skipped with a line saying
which is missing; nothing else needs changing for them to run. `--scenarios noop` runs
`mirror-noscan`, `noop-hit` and `echo-hit` (it starts the second Envoy and the do-nothing
processor). `--scenarios miss` runs `miss` and `clamd-direct`. `--scenarios peer` runs
`peer-repeat` and `peer-unique`, only for bodies up to 63 KiB: Debian's squid 5.7 stalls on
RESPMOD bodies over 64 KiB (squid bug 5352, fixed in squid 6.9; a body of exactly 64 KiB already
stalls about a second per response), so the bench leaves the peer out of larger sizes and says so.
The peer gets clamd's unix socket whichever `--clamd-socket` clamgate gets, as Debian's c-icap is
meant to run (on TCP its clamd module copies each body through the socket). squid runs one worker
per CPU, as Envoy and nginx do; c-icap keeps Debian's process and thread defaults. Before
measuring, the bench checks that the peer really scans: a clean object passes whole and an EICAR
object is refused, each after a RESPMOD answer in c-icap's access log (the **clamd scans** column
shows c-icap's RESPMOD answers for the peer).

After the tables, **The incumbent, side by side** puts the peer beside clamgate (same body, new
body, and clamd alone), and **Targets** lists the performance targets this run can check: a
content hit at least 90 % of echo-hit's req/s at c=8; a resource hit at least 95 % of noop-hit's
at c=8; a miss at least 1.3× the peer's req/s on new bodies and at least 80 % of clamd-direct's;
a miss's p50 at c=1 within 0.3 ms of baseline's p50 plus clamd-direct's.

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

## Large bodies (`--scenarios large`)

How long one large download takes to scan through Envoy, next to clamd scanning the same amount
of the same kind of bytes with nothing in between, and next to the same download through Envoy
without ext_proc. For each size of `--large-sizes` (default 1 MiB, 16 MiB, 256 MiB), each
repetition (`--large-reps`, default 10 / 5 / 3) measures three things back to back, one request
at a time:

| measurement | what is timed |
|---|---|
| **direct INSTREAM** | the bench process connects to clamd itself (clamgate's own client code, `clamgate::clamd`: `zINSTREAM\0`, chunks of 1 MiB, `\0\0\0\0`) and sends the body from memory: connect to clamd's reply, which must be `stream: OK` |
| **through Envoy, scanned** | `GET /files/{name}` on the shipped `/` route: Envoy streams the download to clamgate (FULL_DUPLEX_STREAMED, README "Bodies of any size"), which holds it (in memory up to `bodies.stream_memory_bytes`, 8 MiB, else in an unlinked temp file), sends it to clamd once it is whole, and sends it back: connect to the last body byte. clamgate's `/metrics` must show exactly one clamd scan and no cache hit for the request |
| **Envoy without ext_proc** | `GET /noscan/files/{name}`, the `/` route's bench-only copy with ext_proc disabled: the transfer through Envoy alone |

Every download must answer 200, carry `x-clamgate-verdict: clean` exactly when scanned, and
deliver the origin's bytes (SHA-256 compared after the clock stopped).

- **Bodies**: pseudo-random bytes (xorshift64*, as the latency scenarios' objects), clean for the
  test signatures. **Each of the three measurements of each repetition gets new bytes** (same
  generator and size, a new seed), made before the clock starts and served by the origin from
  memory without a copy. The same bytes twice would not measure a scan: clamgate's verdict cache
  would answer the second request, and clamd itself keeps an MD5 cache of clean files (a 16 MiB
  body it had seen took 0.08 s, against 0.45 s the first time).
- **Limits**: for this scenario the bench starts clamd with `StreamMaxLength 600M`,
  `MaxFileSize 600M`, `MaxScanSize 1200M` (the tests' `LARGE_BODY_LIMITS`) and gives clamgate
  `scan.max_scan_bytes = 629145600` (600 MiB, the same); every other clamgate key keeps its
  default, the memory settings included (`bodies.memory_budget_bytes` 256 MiB,
  `bodies.stream_memory_bytes` 8 MiB). The other scenarios of the same run see the same limits,
  which do not change what they measure.
- **Overhead** = median(scanned) − median(direct INSTREAM) − median(without ext_proc): what the
  scanned path adds beyond clamd's own time for the bytes and their transfer through Envoy
  (ext_proc messages both ways, holding the body in memory or a temp file, reading it back for
  clamd and for Envoy). **MB/s** = body bytes / median time, in 10^6 bytes per second.
- **RSS**: clamgate's and Envoy's peak resident memory (`VmHWM` in `/proc`, reset through
  `/proc/PID/clear_refs` before each scanned request), the highest over the repetitions.
- clamd's time grows with the signature database: these are the project's tiny test signatures,
  the official database is 3-10× slower per byte (README, "clamd"). The scenario takes about a
  minute with the defaults on a 2-core machine. The bench process peaks near twice the largest
  body (the origin's copy and the client's buffer: 518 MiB with 256 MiB), and clamd and clamgate
  each write the body to a temp file (page cache).
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

/// The **clamd scans** column: clamgate's scans; for the peer, c-icap's RESPMOD answers (clamd
/// may answer a repeated body from its own cache); for clamd-direct, the scans made.
fn scans_column(cell: &Cell) -> String {
    match cell.scenario {
        Scenario::PeerRepeat | Scenario::PeerUnique => {
            format!("{:.0} RESPMOD", metric_sum(cell, "c_icap_respmod_total", ""))
        }
        Scenario::ClamdDirect => cell.measured.latencies.len().to_string(),
        _ => format!("{:.0}", metric_sum(cell, "clamgate_clamd_scan_duration_seconds_count", "")),
    }
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
    let _ = writeln!(out, "## Results: latency and throughput ({})\n", info.date);
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
                "| {} | {} | {} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} |",
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
                scans_column(cell),
                metric_sum(cell, "clamgate_cache_lookups_total", "result=\"hit\""),
                match cell.connections {
                    Some(n) if n == cell.client_connects => n.to_string(),
                    Some(n) => format!("{n} (client: {})", cell.client_connects),
                    None if cell.scenario == Scenario::ClamdDirect => "–".to_string(),
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
    side_by_side(&mut out, cells);
    targets(&mut out, cells);

    let _ = writeln!(out, "\n### clamgate's counters during each measured phase\n");
    for cell in cells {
        let moved: Vec<String> = cell
            .metrics
            .iter()
            .map(|(sample, delta)| {
                let name = sample.trim_start_matches("clamgate_");
                match delta.fract() == 0.0 {
                    true => format!("`{name}` +{delta:.0}"),
                    false => format!("`{name}` +{delta:.3}"),
                }
            })
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

/// The cell of `scenario` with the same body size and concurrency as `like`.
fn cell_like(cells: &[Cell], scenario: Scenario, size: usize, concurrency: usize) -> Option<&Cell> {
    cells
        .iter()
        .find(|cell| cell.scenario == scenario && cell.size == size && cell.concurrency == concurrency)
}

fn ratio(a: &Cell, b: &Cell) -> Option<f64> {
    let base = b.measured.requests_per_sec();
    (base > 0.0).then(|| a.measured.requests_per_sec() / base)
}

/// The incumbent beside clamgate: repeated bodies (clamd's own cache for the peer, clamgate's
/// verdict cache) and new bodies (a clamd scan each for both).
fn side_by_side(out: &mut String, cells: &[Cell]) {
    let rows: Vec<&Cell> = cells.iter().filter(|cell| cell.scenario == Scenario::PeerUnique).collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n### The incumbent, side by side\n");
    let _ = writeln!(
        out,
        "squid 5.7 + c-icap `virus_scan` (peer) and clamgate, the same clamd, origin and objects, in the \
         same run: behind Envoy (the body through ext_proc), and behind nginx (fetch on a miss: clamgate \
         downloads the object itself, scans it, and nginx then fetches it from the origin). req/s, then \
         p50 / p99 in ms; **×** is clamgate's req/s over the peer's.\n"
    );
    let _ = writeln!(
        out,
        "| body | c | peer, same body | clamgate content-hit | × | peer, new body | clamgate miss (Envoy) | × | clamgate fetch on a miss (nginx) | × | clamd alone (clamd-direct) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let shown = |cell: Option<&Cell>| match cell {
        Some(cell) => format!(
            "{:.0} ({} / {})",
            cell.measured.requests_per_sec(),
            ms(cell.measured.percentile(50.0)),
            ms(cell.measured.percentile(99.0))
        ),
        None => "–".to_string(),
    };
    let times = |a: Option<&Cell>, b: Option<&Cell>| match a.zip(b).and_then(|(a, b)| ratio(a, b)) {
        Some(x) => format!("{x:.2}×"),
        None => "–".to_string(),
    };
    for unique in rows {
        let (size, c) = (unique.size, unique.concurrency);
        let repeat = cell_like(cells, Scenario::PeerRepeat, size, c);
        let hit = cell_like(cells, Scenario::ContentHit, size, c);
        let miss = cell_like(cells, Scenario::Miss, size, c);
        let fetch = cell_like(cells, Scenario::NginxFetch, size, c);
        let _ = writeln!(
            out,
            "| {} | {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            size_label(size),
            shown(repeat),
            shown(hit),
            times(hit, repeat),
            shown(Some(unique)),
            shown(miss),
            times(miss, Some(unique)),
            shown(fetch),
            times(fetch, Some(unique)),
            shown(cell_like(cells, Scenario::ClamdDirect, size, c)),
        );
    }
}

/// Each performance target this run can check, with this run's figure.
fn targets(out: &mut String, cells: &[Cell]) {
    let mut rows: Vec<(String, String, String, bool)> = Vec::new();
    let mut rate_target = |scenario: Scenario, floor: Scenario, at_least: f64, only_c8: bool, what: &str| {
        for cell in cells.iter().filter(|cell| cell.scenario == scenario) {
            if only_c8 && cell.concurrency != 8 {
                continue;
            }
            let Some(base) = cell_like(cells, floor, cell.size, cell.concurrency) else { continue };
            let Some(x) = ratio(cell, base) else { continue };
            rows.push((
                what.to_string(),
                format!("{} c={}", size_label(cell.size), cell.concurrency),
                format!(
                    "{:.0} / {:.0} req/s = {:.0} %",
                    cell.measured.requests_per_sec(),
                    base.measured.requests_per_sec(),
                    x * 100.0
                ),
                x >= at_least,
            ));
        }
    };
    rate_target(Scenario::ContentHit, Scenario::EchoHit, 0.90, true, "content-hit ≥ 90 % of echo-hit");
    rate_target(Scenario::ResourceHit, Scenario::NoopHit, 0.95, true, "resource-hit ≥ 95 % of noop-hit");
    rate_target(Scenario::Miss, Scenario::PeerUnique, 1.30, false, "miss ≥ 130 % of peer-unique");
    rate_target(
        Scenario::NginxFetch,
        Scenario::PeerUnique,
        1.30,
        false,
        "nginx-fetch (a miss through nginx) ≥ 130 % of peer-unique",
    );
    rate_target(Scenario::Miss, Scenario::ClamdDirect, 0.80, false, "miss ≥ 80 % of clamd-direct");
    for miss in cells.iter().filter(|cell| cell.scenario == Scenario::Miss && cell.concurrency == 1) {
        let base = cell_like(cells, Scenario::Baseline, miss.size, 1);
        let direct = cell_like(cells, Scenario::ClamdDirect, miss.size, 1);
        let p50 = |cell: &Cell| cell.measured.percentile(50.0).map(|d| d.as_secs_f64() * 1000.0);
        let (Some(m), Some(b), Some(d)) = (p50(miss), base.and_then(p50), direct.and_then(p50)) else {
            continue;
        };
        let over = m - b - d;
        rows.push((
            "miss p50 ≤ baseline p50 + clamd-direct p50 + 0.3 ms".to_string(),
            format!("{} c=1", size_label(miss.size)),
            format!("{m:.3} ms against {b:.3} + {d:.3} ms: {over:+.3} ms"),
            over <= 0.3,
        ));
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n### Targets\n");
    let _ = writeln!(out, "Each figure from this run's cells (the median round of each with `--rounds`).\n");
    let _ = writeln!(out, "| target | cell | this run | met |");
    let _ = writeln!(out, "|---|---|---|---|");
    for (what, cell, figure, met) in rows {
        let _ = writeln!(out, "| {what} | {cell} | {figure} | {} |", if met { "yes" } else { "**no**" });
    }
}

/// The line that opens each results section of `docs/benchmarks.md`, before its name.
const SECTION_MARK: &str = "<!-- benches/proxy section: ";

/// The results sections of `docs/benchmarks.md`, in their order in the file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Section {
    /// The latency scenarios (`report::results`).
    Latency,
    /// The `large` scenario (`report::large_results`).
    Large,
}

impl Section {
    const ALL: [Section; 2] = [Section::Latency, Section::Large];

    fn name(self) -> &'static str {
        match self {
            Section::Latency => "latency",
            Section::Large => "large",
        }
    }

    fn mark(self) -> String {
        let scenarios = match self {
            Section::Latency => "baseline, content, resource, noop, miss, nginx",
            Section::Large => "large",
        };
        format!("{SECTION_MARK}{} (replaced by --write-report runs of {scenarios}) -->", self.name())
    }
}

/// The results sections of an existing `docs/benchmarks.md`: each runs from its mark (a line of
/// its own) to the next mark or the end. A file from before the sections were marked holds one
/// results section, the latency one, from its `## Results` heading on.
fn existing_sections(text: &str) -> Vec<(Section, String)> {
    let is_mark = |line: &str| line.starts_with(SECTION_MARK);
    if !text.lines().any(is_mark) {
        return text
            .find("\n## Results")
            .map(|at| vec![(Section::Latency, text[at + 1..].trim_end().to_string())])
            .unwrap_or_default();
    }
    let mut found: Vec<(Section, String)> = Vec::new();
    let mut current: Option<(Section, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(SECTION_MARK) {
            found.extend(current.take());
            let name = rest.split_whitespace().next().unwrap_or_default();
            // An unknown section (from a newer bench) is dropped, not merged into another one.
            current = Section::ALL
                .into_iter()
                .find(|section| section.name() == name)
                .map(|section| (section, String::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    found.extend(current);
    found
}

/// The whole `docs/benchmarks.md`: [`HEADER`], then each section, from `fresh` (this run) when
/// it has it, else from `existing` (the file as it was). Also returns the sections kept.
pub fn compose(existing: &str, fresh: &[(Section, String)]) -> (String, Vec<&'static str>) {
    let old = existing_sections(existing);
    let mut out = String::from(HEADER);
    let mut kept = Vec::new();
    for section in Section::ALL {
        let text = match fresh.iter().find(|(s, _)| *s == section) {
            Some((_, text)) => text.trim(),
            None => match old.iter().find(|(s, _)| *s == section) {
                Some((_, text)) => {
                    kept.push(section.name());
                    text.trim()
                }
                None => continue,
            },
        };
        let _ = write!(out, "\n{}\n\n{text}\n", section.mark());
    }
    (out, kept)
}

/// Milliseconds with the precision that matters at their size.
fn ms_adaptive(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    match ms {
        ms if ms < 10.0 => format!("{ms:.2}"),
        ms if ms < 1000.0 => format!("{ms:.1}"),
        ms => format!("{ms:.0}"),
    }
}

/// Repetitions measured: one number when every way has it, else one per way in `Way::ALL` order.
fn completed(size: &large::SizeResult) -> String {
    let counts: Vec<usize> = Way::ALL.iter().map(|&way| size.times(way).len()).collect();
    if counts.iter().all(|&n| n == counts[0]) {
        counts[0].to_string()
    } else {
        counts.iter().map(usize::to_string).collect::<Vec<_>>().join(" / ")
    }
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map(|b| format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0))).unwrap_or_else(|| "–".to_string())
}

/// The `large` scenario's section: its setup, the comparison table, the details, every time.
pub fn large_results(info: &RunInfo, run: &LargeRun, notes: &[String]) -> String {
    let mut out = String::new();
    let _ =
        writeln!(out, "## Large bodies: scan time through Envoy vs direct clamd INSTREAM ({})\n", run.date);
    let _ = writeln!(out, "- Command: `{}`", info.command);
    let _ = writeln!(
        out,
        "- Machine: {} CPUs ({}), {} RAM, Linux {}; load average {} at the start of this scenario, {} at its end",
        info.cores, info.cpu_model, info.memory, info.kernel, run.load_start, run.load_end
    );
    let _ = writeln!(
        out,
        "- Envoy {} (`--concurrency {}`), the shipped `envoy/envoy.yaml`: the `/` route, and its bench-only copy \
         `/noscan/` without ext_proc",
        info.envoy_version, info.envoy_workers
    );
    let _ = writeln!(
        out,
        "- clamd: {} with the project's test signature database (`testdata/clamav/`: a few text signatures); \
         the direct INSTREAM over TCP on loopback; `StreamMaxLength 600M`, `MaxFileSize 600M`, `MaxScanSize 1200M`",
        info.clamd_version
    );
    let _ = writeln!(
        out,
        "- {} at git {}: defaults except the listeners, clamd's address, `log.level = \"warn\"` and \
         `scan.max_scan_bytes = {}`; memory settings default (`bodies.stream_memory_bytes` 8 MiB, \
         `bodies.memory_budget_bytes` 256 MiB), so bodies over 8 MiB are held in an unlinked temp file in {}; \
         verdict cache: {}",
        info.clamgate_version,
        info.git_revision,
        large::MAX_SCAN_BYTES,
        run.spool,
        info.cache
    );
    let reps: Vec<String> =
        run.sizes.iter().map(|size| format!("{} × {}", size_label(size.size), size.reps)).collect();
    let _ = writeln!(
        out,
        "- Repetitions: {}; each one direct INSTREAM, then a download without ext_proc and scanned, then an \
         upload (`POST`) without ext_proc and scanned, each with new pseudo-random clean bytes, one request at \
         a time on a new connection",
        reps.join(", ")
    );
    let _ = writeln!(out, "- Run time of this scenario: {:.0} s", run.duration.as_secs_f64());
    let mut all_notes: Vec<String> = notes.to_vec();
    if !run.peak_reset {
        all_notes.push(
            "Peak RSS could not be reset (`/proc/PID/clear_refs`): the RSS figures are peaks since each process \
             started."
                .to_string(),
        );
    }
    for size in &run.sizes {
        if let Some(why) = &size.cut_short {
            all_notes.push(format!("{}: {why}", size_label(size.size)));
        }
    }
    if !all_notes.is_empty() {
        let _ = writeln!(out, "\nNotes:\n");
        for note in &all_notes {
            let _ = writeln!(out, "- {note}");
        }
    }

    let cell = |times: &[Duration]| match large::summary(times) {
        Some((median, min, max)) => {
            format!("{} / {} / {}", ms_adaptive(median), ms_adaptive(min), ms_adaptive(max))
        }
        None => "–".to_string(),
    };
    let median = |times: &[Duration]| large::summary(times).map(|(median, _, _)| median);
    let rate = |size: usize, time: Option<Duration>| {
        time.map(|t| format!("{:.1}", size as f64 / 1e6 / t.as_secs_f64().max(1e-9)))
            .unwrap_or_else(|| "–".to_string())
    };
    let _ = writeln!(
        out,
        "\nTimes in ms, median / min / max over the repetitions; overhead from the medians (scanned − direct \
         INSTREAM − without ext_proc), and the same as a ratio (the target: at most 1.05×); MB/s = 10^6 bytes \
         per second at the median. An upload is timed from connect to the origin's `201`, sent once the origin \
         has read the whole body.\n"
    );
    let _ = writeln!(
        out,
        "| body | way | reps | direct INSTREAM | through Envoy, scanned | Envoy without ext_proc | overhead | scanned ÷ (direct + without) | MB/s scanned through Envoy | MB/s direct INSTREAM |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for size in &run.sizes {
        let direct = median(size.times(Way::Direct));
        for (label, scanned_way, baseline_way) in
            [("download", Way::Scanned, Way::Baseline), ("upload", Way::UploadScanned, Way::UploadBaseline)]
        {
            let (scanned, baseline) = (median(size.times(scanned_way)), median(size.times(baseline_way)));
            let (overhead, ratio) = match (scanned, direct, baseline) {
                (Some(s), Some(d), Some(b)) => (
                    format!("{:+.1} ms", (s.as_secs_f64() - d.as_secs_f64() - b.as_secs_f64()) * 1000.0),
                    format!("{:.2}×", s.as_secs_f64() / (d.as_secs_f64() + b.as_secs_f64()).max(1e-9)),
                ),
                _ => ("–".to_string(), "–".to_string()),
            };
            let _ = writeln!(
                out,
                "| {} | {label} | {} | {} | {} | {} | {overhead} | {ratio} | {} | {} |",
                size_label(size.size),
                completed(size),
                cell(size.times(Way::Direct)),
                cell(size.times(scanned_way)),
                cell(size.times(baseline_way)),
                rate(size.size, scanned),
                rate(size.size, direct),
            );
        }
    }

    let _ = writeln!(
        out,
        "\nDuring the scanned requests (downloads and uploads): the clamd scans clamgate made and their mean time in its own `/metrics` \
         (first byte sent to clamd, or the descriptor with FILDES → reply: clamgate's own clamd scan, to compare with the direct INSTREAM), where clamgate \
         held the bodies, and the peak RSS of clamgate and Envoy. **other load**: CPU used by processes other \
         than the benchmark's while the size ran.\n"
    );
    let _ = writeln!(
        out,
        "| body | clamd scans by clamgate | clamgate's clamd scan, mean | held in | clamgate RSS before → peak | Envoy peak RSS | other load |"
    );
    let _ = writeln!(out, "|---|---:|---:|---|---:|---:|---:|");
    for size in &run.sizes {
        let scans = size.clamd_scans;
        let instream = if scans > 0.0 {
            format!("{} ms", ms_adaptive(Duration::from_secs_f64(size.clamd_seconds / scans)))
        } else {
            "–".to_string()
        };
        let held = if scans == 0.0 {
            "–".to_string()
        } else if size.spilled == 0.0 {
            "memory".to_string()
        } else if size.spilled == scans {
            "temp file".to_string()
        } else {
            format!("temp file {:.0} of {scans:.0} times", size.spilled)
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {instream} | {held} | {} → {} | {} | {} |",
            size_label(size.size),
            size.clamd_scans,
            mib(size.clamgate_rss_before),
            mib(size.clamgate_peak_rss),
            mib(size.envoy_peak_rss),
            size.other_cores.map(|cores| format!("{cores:.2} cores")).unwrap_or_else(|| "–".to_string()),
        );
    }

    let _ = writeln!(out, "\nEvery time, in ms, in the order measured:\n");
    for size in &run.sizes {
        for way in Way::ALL {
            let times: Vec<String> = size.times(way).iter().map(|t| ms_adaptive(*t)).collect();
            let _ = writeln!(out, "- {} {}: {}", size_label(size.size), way.name(), times.join(", "));
        }
    }

    let errors: Vec<&String> = run.sizes.iter().flat_map(|size| size.errors.iter()).collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\n### Errors (not in the times above)\n");
        for error in errors {
            let _ = writeln!(out, "- `{error}`");
        }
    }
    out
}
