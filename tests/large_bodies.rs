//! Bodies of any size through real Envoy, the clamgate binary (its own process, so its memory
//! can be read from /proc) and real clamd: FULL_DUPLEX_STREAMED holding, the memory budget and
//! temp files, the size policy, Range, and clients that leave mid-body.

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use sha2::Digest;

use support::clamd::ClamdProcess;
use support::clamgate_process::ClamgateProcess;
use support::envoy::EnvoyProcess;
use support::gen::{self, EicarAt, GenSpec};
use support::http;
use support::upstream::Upstream;

const MIB: u64 = 1024 * 1024;
/// clamgate's `bodies.memory_budget_bytes` in these tests.
const MEMORY_BUDGET: u64 = 64 * MIB;
/// clamgate's `scan.max_scan_bytes` in these tests (clamd: `StreamMaxLength 600M`).
const MAX_SCAN: u64 = 300 * MIB;
/// The bound this suite holds clamgate's peak RSS to while it holds a 256 MiB body: the memory
/// budget, plus room for the runtime, gRPC buffers (Envoy sends pieces of up to 1 MiB, a few in
/// flight) and the allocator.
const PEAK_RSS_BOUND: u64 = MEMORY_BUDGET + 96 * MIB;

struct LargeStack {
    // Dropped in this order: Envoy first, clamgate, the upstream, then clamd.
    envoy: EnvoyProcess,
    clamgate: ClamgateProcess,
    upstream: Upstream,
    clamd: ClamdProcess,
    spool_dir: tempfile::TempDir,
}

impl LargeStack {
    async fn start() -> LargeStack {
        LargeStack::start_with(MAX_SCAN).await
    }

    /// With `scan.max_scan_bytes = max_scan`.
    async fn start_with(max_scan: u64) -> LargeStack {
        LargeStack::start_with_disk_budget(max_scan, 8 * 1024 * MIB).await
    }

    /// With `scan.max_scan_bytes = max_scan` and `bodies.disk_budget_bytes = disk_budget`.
    async fn start_with_disk_budget(max_scan: u64, disk_budget: u64) -> LargeStack {
        let clamd = tokio::task::spawn_blocking(ClamdProcess::start_for_large_bodies).await.expect("clamd");
        let spool_dir = tempfile::Builder::new().prefix("clamgate-spool-").tempdir().expect("spool dir");
        let config = format!(
            "[scan]\nmax_scan_bytes = {max_scan}\n\n\
             [bodies]\nmemory_budget_bytes = {MEMORY_BUDGET}\nstream_memory_bytes = {}\nspool_dir = \"{}\"\n\
             disk_budget_bytes = {disk_budget}\n",
            8 * MIB,
            spool_dir.path().display()
        );
        let address = clamd.address();
        let clamgate = tokio::task::spawn_blocking(move || ClamgateProcess::start(&address, &config))
            .await
            .expect("clamgate");
        let upstream = Upstream::start().await;
        let (grpc, upstream_addr) = (clamgate.grpc_addr(), upstream.addr());
        let envoy = tokio::task::spawn_blocking(move || {
            let envoy = EnvoyProcess::start(grpc, upstream_addr);
            envoy.wait_clamgate_healthy(Duration::from_secs(30));
            envoy
        })
        .await
        .expect("envoy");
        LargeStack { envoy, clamgate, upstream, clamd, spool_dir }
    }

    fn gen_url(&self, name: &str, spec: &GenSpec) -> String {
        self.envoy.url(&format!("/gen/{name}?{}", gen::query(spec)))
    }

    /// clamgate's file descriptors on temp files of the spool directory.
    fn spool_fds(&self) -> Vec<String> {
        let dir = self.spool_dir.path().display().to_string();
        self.clamgate.open_fd_targets().into_iter().filter(|target| target.starts_with(&dir)).collect()
    }

    /// Waits until clamgate holds nothing: no stream open, no body in memory or on disk, no temp
    /// file open, no connection to clamd. Panics with what is left after `within`.
    async fn wait_until_idle(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "clamgate still holds resources after {within:?}: {left:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let metrics = self.clamgate.metrics();
        for (sample, name) in [
            ("clamgate_ext_proc_streams_open", "streams open"),
            ("clamgate_held_body_memory_bytes", "bytes held in memory"),
            ("clamgate_held_body_disk_bytes", "bytes held on disk"),
        ] {
            let value = support::clamgate::metric_value(&metrics, sample);
            if value != 0.0 {
                left.push(format!("{name}: {value}"));
            }
        }
        let fds = self.spool_fds();
        if !fds.is_empty() {
            left.push(format!("temp files open: {fds:?}"));
        }
        let clamd_connections = self.clamgate.tcp_connections_to(self.clamd.port());
        if clamd_connections != 0 {
            left.push(format!("connections to clamd: {clamd_connections}"));
        }
        left
    }
}

fn verdict(download: &http::Download) -> &str {
    download.header("x-clamgate-verdict")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_download_arrives_whole_and_byte_identical_within_the_memory_bound() {
    let stack = LargeStack::start().await;
    stack.clamgate.reset_peak_rss();
    let spec = GenSpec::clean(256 * MIB, 256);
    let download = http::download(&stack.gen_url("big.bin", &spec), &[]).await;
    assert_eq!(download.status, 200, "{}\n{}", download.prefix_text(), stack.envoy.logs());
    assert_eq!(download.error, None);
    assert_eq!(download.bytes, spec.size);
    assert_eq!(download.sha256, gen::sha256_hex(&spec), "the client must get the upstream's bytes");
    assert_eq!(verdict(&download), "clean");
    let peak = stack.clamgate.peak_rss_bytes();
    eprintln!("clamgate peak RSS while holding a 256 MiB body: {} MiB", peak / MIB);
    assert!(
        peak < PEAK_RSS_BOUND,
        "peak RSS {} MiB over the bound of {} MiB",
        peak / MIB,
        PEAK_RSS_BOUND / MIB
    );
    assert!(stack.clamgate.metric("clamgate_spilled_bodies_total") >= 1.0, "a body this large goes to disk");
    let peak_held = stack.clamgate.metric("clamgate_held_body_memory_peak_bytes");
    assert!(peak_held <= MEMORY_BUDGET as f64, "held {peak_held} bytes in memory, budget {MEMORY_BUDGET}");
    stack.wait_until_idle(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eicar_at_the_very_end_of_a_64_mib_download_is_409() {
    let stack = LargeStack::start().await;
    for (name, chunked) in [("end.bin", ""), ("end-chunked.bin", "&chunked=1")] {
        let spec = GenSpec::infected(64 * MIB, 64, EicarAt::End);
        let url = format!("{}{chunked}", stack.gen_url(name, &spec));
        let download = http::download(&url, &[]).await;
        assert_eq!(download.status, 409, "{name}: {}", download.prefix_text());
        assert!(download.prefix_text().contains("\"verdict\":\"infected\""), "{}", download.prefix_text());
        assert_eq!(verdict(&download), "infected");
    }
    stack.wait_until_idle(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_of_any_size_are_held_and_scanned_whole_and_infected_ones_never_reach_the_upstream() {
    // The shipped route config sends request bodies FULL_DUPLEX: clamgate holds the request
    // headers and the whole body, so Envoy's 16 MiB buffer limit does not apply, and the upstream
    // is not contacted before the verdict.
    let stack = LargeStack::start().await;
    for (name, spec, chunked) in [
        ("mid-12.bin", GenSpec::infected(12 * MIB, 6, EicarAt::Middle), false),
        ("mid-64.bin", GenSpec::infected(64 * MIB, 7, EicarAt::Middle), false),
        ("chunked.bin", GenSpec::infected(24 * MIB, 5, EicarAt::Middle), true),
    ] {
        let url = stack.envoy.url(&format!("/upload-stream/{name}"));
        let (status, body) = http::upload(&url, Method::PUT, &spec, chunked).await.expect("upload");
        assert_eq!(status, 409, "{name}: {}", String::from_utf8_lossy(&body));
        assert_eq!(stack.upstream.upload_summary(name), None, "{name}: the upstream was contacted");
        assert_eq!(stack.upstream.hits(&format!("/upload-stream/{name}")), 0, "{name}");
    }
    // Clean ones, under and over Envoy's buffer limit, arrive whole and unchanged.
    for (name, clean, chunked) in [
        ("clean-12.bin", GenSpec::clean(12 * MIB, 8), false),
        ("clean-64.bin", GenSpec::clean(64 * MIB, 9), true),
    ] {
        let url = stack.envoy.url(&format!("/upload-stream/{name}"));
        let (status, _) = http::upload(&url, Method::PUT, &clean, chunked).await.expect("upload");
        assert_eq!(status, 201, "{name}");
        let summary = stack.upstream.upload_summary(name).expect("the clean upload arrived");
        assert_eq!(
            (summary.bytes, summary.sha256.as_str(), summary.complete),
            (clean.size, gen::sha256_hex(&clean).as_str(), true),
            "{name}"
        );
    }
    stack.wait_until_idle(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_to_an_upload_is_scanned_whatever_its_size() {
    // The answer to held upload headers switches the response to FULL_DUPLEX as well, so a large
    // response to a POST is not capped by Envoy's buffer limit (it would be a 500).
    let stack = LargeStack::start().await;
    let request_body = GenSpec::clean(64 * 1024, 30);
    let clean = GenSpec::clean(32 * MIB, 31);
    let url = stack.gen_url("post-clean.bin", &clean);
    let (status, body) = http::upload(&url, Method::POST, &request_body, false).await.expect("POST");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body[..body.len().min(300)]));
    assert_eq!(
        (body.len() as u64, format!("{:x}", sha2::Sha256::digest(&body))),
        (clean.size, gen::sha256_hex(&clean))
    );
    let infected = GenSpec::infected(32 * MIB, 32, EicarAt::End);
    let url = stack.gen_url("post-infected.bin", &infected);
    let (status, body) = http::upload(&url, Method::POST, &request_body, false).await.expect("POST");
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body[..body.len().min(300)]));
    stack.wait_until_idle(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_just_over_max_scan_bytes_is_denied_never_200() {
    let stack = LargeStack::start_with(4 * MIB).await;
    let over = GenSpec::clean(4 * MIB + 1, 9);
    // Known from content-length at the response headers: refused before the body moves.
    let download = http::download(&stack.gen_url("over.bin", &over), &[]).await;
    assert_eq!(download.status, 502, "{}", download.prefix_text());
    assert!(download.prefix_text().contains("too_large"), "{}", download.prefix_text());
    // Chunked: found out while holding it.
    let url = format!("{}&chunked=1", stack.gen_url("over-chunked.bin", &over));
    let download = http::download(&url, &[]).await;
    assert_eq!(download.status, 502, "{}", download.prefix_text());
    // Exactly at the limit is scanned and passes.
    let at = GenSpec::clean(4 * MIB, 9);
    let download = http::download(&stack.gen_url("at.bin", &at), &[]).await;
    assert_eq!((download.status, download.bytes), (200, at.size));
    // Uploads: 413, by content-length and chunked; the upstream gets nothing.
    for (name, chunked) in [("up.bin", false), ("up-chunked.bin", true)] {
        let url = stack.envoy.url(&format!("/upload-stream/{name}"));
        let result = http::upload(&url, Method::PUT, &over, chunked).await;
        let status = result.as_ref().map(|(status, _)| *status);
        assert!(
            matches!(status, Ok(413)) || result.is_err(),
            "{name}: expected 413 (or the connection closed while sending), got {result:?}"
        );
        let received = stack.upstream.upload_summary(name);
        assert!(received.as_ref().is_none_or(|summary| !summary.complete), "{name}: {received:?}");
    }
    stack.wait_until_idle(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_request_never_yields_part_of_an_infected_file_and_gets_a_clean_one_whole() {
    let stack = LargeStack::start().await;
    let infected = GenSpec::infected(2 * MIB, 11, EicarAt::Start);
    let download =
        http::download(&stack.gen_url("r-infected.bin", &infected), &[("range", "bytes=1000-1999")]).await;
    assert_eq!(
        download.status,
        409,
        "the Range is removed, the whole object scanned: {}",
        download.prefix_text()
    );
    let seen = stack.upstream.received_headers("/gen/r-infected.bin").expect("reached the upstream");
    assert!(seen.get("range").is_none(), "the upstream must not see the client's Range");

    let clean = GenSpec::clean(2 * MIB, 12);
    let download = http::download(&stack.gen_url("r-clean.bin", &clean), &[("range", "bytes=0-99")]).await;
    assert_eq!(download.status, 200, "documented: the whole object, scanned, not a 206");
    assert_eq!((download.bytes, download.sha256), (clean.size, gen::sha256_hex(&clean)));
    stack.wait_until_idle(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_32_mib_downloads_are_correct_within_the_memory_budget() {
    let stack = LargeStack::start().await;
    let specs: Vec<GenSpec> = (0..32).map(|i| GenSpec::clean(32 * MIB, 100 + i)).collect();
    let downloads = specs.iter().enumerate().map(|(i, spec)| {
        let url = stack.gen_url(&format!("c{i}.bin"), spec);
        async move { http::download(&url, &[]).await }
    });
    let results = futures_join_all(downloads).await;
    for (spec, download) in specs.iter().zip(&results) {
        assert_eq!(download.status, 200, "{}", download.prefix_text());
        assert_eq!((download.bytes, &download.sha256), (spec.size, &gen::sha256_hex(spec)));
    }
    let peak_held = stack.clamgate.metric("clamgate_held_body_memory_peak_bytes");
    eprintln!(
        "32 x 32 MiB: peak held in memory {} MiB, peak RSS {} MiB, spilled {}",
        peak_held as u64 / MIB,
        stack.clamgate.peak_rss_bytes() / MIB,
        stack.clamgate.metric("clamgate_spilled_bodies_total")
    );
    assert!(peak_held <= MEMORY_BUDGET as f64, "held {peak_held} bytes in memory, budget {MEMORY_BUDGET}");
    assert!(stack.clamgate.peak_rss_bytes() < PEAK_RSS_BOUND + 64 * MIB, "32 streams in flight");
    stack.wait_until_idle(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_fits_neither_memory_nor_the_disk_budget_is_refused_never_passed() {
    let stack = LargeStack::start_with_disk_budget(MAX_SCAN, 24 * MIB).await;
    // 32 MiB: over the 8 MiB a stream may hold in memory, and over the 24 MiB disk budget.
    let infected = GenSpec::infected(32 * MIB, 40, EicarAt::End);
    let download = http::download(&stack.gen_url("full.bin", &infected), &[]).await;
    assert_eq!(download.status, 503, "{}", download.prefix_text());
    assert!(stack.clamgate.metric(r#"clamgate_ext_proc_stream_errors_total{kind="spool_full"}"#) >= 1.0);
    let upload = GenSpec::infected(32 * MIB, 41, EicarAt::Start);
    let url = stack.envoy.url("/upload-stream/full.bin");
    let status = http::upload(&url, Method::PUT, &upload, false).await.map(|(status, _)| status);
    assert!(matches!(status, Ok(503)) || status.is_err(), "{status:?}");
    assert_eq!(stack.upstream.upload_summary("full.bin"), None, "the upstream was contacted");
    // The budget is given back: a body that fits goes through.
    let clean = GenSpec::clean(20 * MIB, 42);
    let download = http::download(&stack.gen_url("fits.bin", &clean), &[]).await;
    assert_eq!((download.status, download.bytes), (200, clean.size));
    stack.wait_until_idle(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_body_leaves_no_temp_file_task_or_clamd_connection() {
    let stack = LargeStack::start().await;
    let spec = GenSpec::clean(200 * MIB, 21);
    // Leaves while clamgate holds the body (or scans it): no byte has reached the client yet.
    http::request_then_drop(&stack.gen_url("leave.bin", &spec), Duration::from_millis(700)).await;
    let upload = GenSpec::infected(96 * MIB, 22, EicarAt::End);
    http::upload_then_drop(&stack.envoy.url("/upload-stream/leave.bin"), &upload, 40 * MIB).await;
    stack.wait_until_idle(Duration::from_secs(30)).await;
    let received = stack.upstream.upload_summary("leave.bin");
    assert!(received.as_ref().is_none_or(|summary| summary.bytes == 0), "{received:?}");
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for future in futures {
        set.push(Box::pin(future));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in set.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|output| output.expect("every future finished")).collect()
}
