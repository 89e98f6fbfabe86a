//! The soak's load: a catalogue of objects the origin serves (clean and infected, 1 KiB up to
//! `--max-object-mib`, identity and gzip, one known only by its hash), clients that fetch and
//! upload them through Envoy (HTTP/1.1 and HTTP/2, content- and resource-policy routes) and nginx,
//! new objects and uploads made as they go, clients that abort mid-body and slow readers; and
//! the check of every answer against what the origin knows ([`judge`]).

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use crate::support::samples;
use crate::support::upstream::Upstream;
use crate::Options;

/// The Host every request carries: nginx's fetch origin for `/mirror/` is configured for it.
pub const HOST: &str = "mirror.test";

/// One object the origin serves under `/files/NAME` and `/mirror/NAME`.
pub struct Object {
    pub name: String,
    /// The bytes the origin sends (encoded, for a gzip object).
    pub bytes: Bytes,
    pub infected: bool,
}

pub struct Catalogue {
    pub objects: Vec<Object>,
}

/// A small xorshift generator: the load's choices, reproducible by `--seed`.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `len` bytes from `seed`, with EICAR at a seeded offset when `infected`.
pub fn body(len: usize, seed: u64, infected: bool) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    if infected {
        let eicar = samples::eicar();
        let at = rng.below((len.saturating_sub(eicar.len()) + 1) as u64) as usize;
        let end = (at + eicar.len()).min(len);
        bytes[at..end].copy_from_slice(&eicar[..end - at]);
        if bytes.len() < eicar.len() {
            bytes = eicar;
        }
    }
    bytes
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

/// Text that compresses, with EICAR in it when `infected` (random bytes would be stored as they
/// are by gzip, and EICAR found without decoding).
fn text(len: usize, seed: u64, infected: bool) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let words = ["scan ", "proxy ", "envoy ", "body ", "clamd ", "cache\n"];
    let mut out = Vec::with_capacity(len + 80);
    while out.len() < len {
        out.extend_from_slice(words[rng.below(words.len() as u64) as usize].as_bytes());
        if infected && out.len() >= len / 2 && out.len() < len / 2 + 8 {
            out.extend_from_slice(&samples::eicar());
        }
    }
    out
}

impl Catalogue {
    /// The objects, put on the origin with an ETag (and `content-encoding` where encoded).
    pub fn build(upstream: &Upstream, max_mib: usize, seed: u64) -> Catalogue {
        let mut objects = Vec::new();
        let mut add = |name: String, bytes: Vec<u8>, infected: bool, encoding: Option<&str>| {
            let etag = format!("\"{name}\"");
            let mut headers = vec![("etag", etag.as_str())];
            if let Some(encoding) = encoding {
                headers.push(("content-encoding", encoding));
            }
            upstream.put_file_with_headers(&name, bytes.clone(), &headers);
            objects.push(Object { name, bytes: Bytes::from(bytes), infected });
        };
        let sizes = [1 << 10, 64 << 10, 1 << 20, 8 << 20, 64 << 20];
        for (i, size) in sizes.into_iter().filter(|size| *size <= max_mib.max(1) << 20).enumerate() {
            for infected in [false, true] {
                let tag = if infected { "infected" } else { "clean" };
                add(
                    format!("{tag}-{size}"),
                    body(size, seed + i as u64 * 2 + infected as u64, infected),
                    infected,
                    None,
                );
                if size <= 1 << 20 {
                    let content = text(size, seed + 100 + i as u64, infected);
                    add(format!("{tag}-{size}.gz"), gzip(&content), infected, Some("gzip"));
                }
            }
        }
        add("hash-only.bin".into(), samples::hash_only_sample(), true, None);
        Catalogue { objects }
    }

    /// Objects a client may ask for (the largest only now and then).
    fn pick(&self, rng: &mut Rng) -> &Object {
        loop {
            let object = &self.objects[rng.below(self.objects.len() as u64) as usize];
            if object.bytes.len() < 32 << 20 || rng.below(8) == 0 {
                return object;
            }
        }
    }
}

/// Where the clients send requests.
#[derive(Clone)]
pub struct Urls {
    pub envoy: String,
    pub nginx: String,
}

/// What an answer was, judged against the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A clean object, byte-identical; an infected one refused (409); a clean upload stored.
    Right,
    /// A refusal that protects (502, 503, 504; 413 or 422 for an upload): right while a fault
    /// lasts, counted per fault window.
    FailedClosed,
    /// An infected body delivered, other bytes than the object's, a clean object refused as
    /// infected, or a status clamgate never gives.
    Wrong,
}

/// One answer that was not plainly right: when, what, why.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: Instant,
    /// The same moment on the wall clock (to match nginx's and Envoy's logs).
    pub wall: std::time::SystemTime,
    pub verdict: Verdict,
    pub what: String,
}

/// Every answer, counted.
#[derive(Default)]
pub struct Tally {
    pub requests: AtomicU64,
    pub right: AtomicU64,
    pub refused_infected: AtomicU64,
    pub failed_closed: AtomicU64,
    pub wrong: AtomicU64,
    pub aborted: AtomicU64,
    pub slow: AtomicU64,
    pub uploads: AtomicU64,
    pub http2: AtomicU64,
    pub via_nginx: AtomicU64,
    pub events: Mutex<Vec<Event>>,
}

impl Tally {
    pub fn record(&self, verdict: Verdict, infected: bool, what: impl FnOnce() -> String) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let counter = match verdict {
            Verdict::Right if infected => &self.refused_infected,
            Verdict::Right => &self.right,
            Verdict::FailedClosed => &self.failed_closed,
            Verdict::Wrong => &self.wrong,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if verdict != Verdict::Right {
            let event =
                Event { at: Instant::now(), wall: std::time::SystemTime::now(), verdict, what: what() };
            self.events.lock().expect("events").push(event);
        }
    }

    /// Every failed-closed answer, a line each with its UTC time of day, for tracing one back to
    /// its cause in nginx's or Envoy's log (the soak writes it to `target/soak/failed-closed.log`).
    pub fn failed_closed_log(&self) -> String {
        let events = self.events.lock().expect("events");
        events
            .iter()
            .filter(|event| event.verdict == Verdict::FailedClosed)
            .map(|event| {
                let since_epoch = event.wall.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let (secs, millis) = (since_epoch.as_secs() % 86_400, since_epoch.subsec_millis());
                let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
                format!("{h:02}:{m:02}:{s:02}.{millis:03} {}\n", event.what)
            })
            .collect()
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Judges a download of `object` answered `status`, `x-clamgate-verdict: verdict_header`, with
/// `body` (None: the body was not read whole, e.g. an aborted client: only its status and the
/// bytes read count). Every policy of the soak scans (none lets a body pass unscanned), so a 200
/// must say `clean`: the bytes were scanned, now or when the cached verdict was made.
pub fn judge(
    infected: bool,
    expected: &[u8],
    status: u16,
    verdict_header: Option<&str>,
    body: Option<&[u8]>,
) -> (Verdict, String) {
    match status {
        200 if infected => (Verdict::Wrong, "an infected object delivered (200)".into()),
        200 if verdict_header != Some("clean") => {
            (Verdict::Wrong, format!("delivered with x-clamgate-verdict {verdict_header:?}, not clean"))
        }
        200 => match body {
            Some(body) if body == expected => (Verdict::Right, String::new()),
            Some(body) => {
                (Verdict::Wrong, format!("other bytes delivered ({} of {})", body.len(), expected.len()))
            }
            None => (Verdict::Right, String::new()),
        },
        409 if infected => (Verdict::Right, String::new()),
        409 => (Verdict::Wrong, "a clean object refused as infected".into()),
        500 | 502 | 503 | 504 => (Verdict::FailedClosed, format!("{status}")),
        other => (Verdict::Wrong, format!("status {other}")),
    }
}

fn clients() -> (reqwest::Client, reqwest::Client) {
    let base = || reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(180));
    (base().build().expect("client"), base().http2_prior_knowledge().build().expect("h2 client"))
}

/// Fetches every object once through each path, so the run starts from a warm cache.
pub async fn warm_up(urls: &Urls, catalogue: &Catalogue) {
    let (http1, _) = clients();
    for object in &catalogue.objects {
        for url in [
            format!("{}/files/{}", urls.envoy, object.name),
            format!("{}/mirror/{}", urls.envoy, object.name),
            format!("{}/mirror/{}", urls.nginx, object.name),
        ] {
            if let Ok(response) = http1.get(&url).header("host", HOST).send().await {
                let _ = response.bytes().await;
            }
        }
    }
}

/// Starts `--clients` clients for round `round`, each running its mix until `stop` is set.
pub fn spawn_clients(
    options: &Options,
    round: usize,
    urls: &Urls,
    catalogue: &Arc<Catalogue>,
    tally: &Arc<Tally>,
    stop: &Arc<AtomicBool>,
    upstream: &Arc<Upstream>,
) -> Vec<JoinHandle<()>> {
    (0..options.clients)
        .map(|client| {
            let (urls, catalogue, tally, upstream, stop) =
                (urls.clone(), catalogue.clone(), tally.clone(), upstream.clone(), stop.clone());
            let mut rng = Rng::new((options.seed * 1000 + client as u64) * 1000 + round as u64);
            tokio::spawn(async move {
                let (http1, http2) = clients();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let which = rng.below(100);
                    let http = if rng.below(2) == 0 { &http1 } else { &http2 };
                    if std::ptr::eq(http, &http2) {
                        tally.http2.fetch_add(1, Ordering::Relaxed);
                    }
                    match which {
                        0..=29 => {
                            let object = catalogue.pick(&mut rng);
                            download(http, &format!("{}/files/{}", urls.envoy, object.name), object, &tally)
                                .await;
                        }
                        30..=44 => {
                            let object = catalogue.pick(&mut rng);
                            download(http, &format!("{}/mirror/{}", urls.envoy, object.name), object, &tally)
                                .await;
                        }
                        45..=59 => {
                            tally.via_nginx.fetch_add(1, Ordering::Relaxed);
                            let object = catalogue.pick(&mut rng);
                            download(
                                &http1,
                                &format!("{}/mirror/{}", urls.nginx, object.name),
                                object,
                                &tally,
                            )
                            .await;
                        }
                        60..=74 => {
                            let infected = rng.below(4) == 0;
                            let size = [1 << 10, 64 << 10, 1 << 20, 4 << 20][rng.below(4) as usize];
                            let bytes = body(size, rng.next(), infected);
                            let name = format!("up-{round}-{client}-{n}");
                            upload(http, &urls, &name, bytes, infected, &tally, &upstream).await;
                        }
                        75..=86 => {
                            // A new object: never seen by any cache.
                            let infected = rng.below(4) == 0;
                            let size = [1 << 10, 64 << 10, 1 << 20][rng.below(3) as usize];
                            let name = format!("new-{round}-{client}-{n}");
                            let bytes = body(size, rng.next(), infected);
                            upstream.put_file_with_headers(
                                &name,
                                bytes.clone(),
                                &[("etag", &format!("\"{name}\""))],
                            );
                            let object = Object { name, bytes: Bytes::from(bytes), infected };
                            if rng.below(2) == 0 {
                                let url = format!("{}/files/{}", urls.envoy, object.name);
                                download(http, &url, &object, &tally).await;
                            } else {
                                // nginx speaks HTTP/1.1 here.
                                tally.via_nginx.fetch_add(1, Ordering::Relaxed);
                                let url = format!("{}/mirror/{}", urls.nginx, object.name);
                                download(&http1, &url, &object, &tally).await;
                            }
                            upstream.remove_file(&object.name);
                        }
                        87..=93 => {
                            tally.aborted.fetch_add(1, Ordering::Relaxed);
                            let object = catalogue.pick(&mut rng);
                            abort_mid_body(
                                http,
                                &format!("{}/files/{}", urls.envoy, object.name),
                                object,
                                &tally,
                            )
                            .await;
                        }
                        _ => {
                            tally.slow.fetch_add(1, Ordering::Relaxed);
                            let object = catalogue.pick(&mut rng);
                            let url = format!("{}/files/{}", urls.envoy, object.name);
                            slow_read(http, &url, object, &tally).await;
                        }
                    }
                }
            })
        })
        .collect()
}

pub async fn download(http: &reqwest::Client, url: &str, object: &Object, tally: &Tally) -> Verdict {
    let response = match http.get(url).header("host", HOST).send().await {
        Ok(response) => response,
        Err(err) => {
            // No answer at all (a connection reset while a fault lasts): nothing was delivered.
            tally.record(Verdict::FailedClosed, object.infected, || format!("GET {url}: {err}"));
            return Verdict::FailedClosed;
        }
    };
    let status = response.status().as_u16();
    let version = response.version();
    let verdict_header = verdict_header(&response);
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(err) => {
            // Cut mid-body: judged on the bytes that came, which must be a prefix of the object's.
            let verdict =
                if object.infected && status == 200 { Verdict::Wrong } else { Verdict::FailedClosed };
            tally.record(verdict, object.infected, || format!("GET {url}: {status}, body cut: {err}"));
            return verdict;
        }
    };
    let (verdict, why) =
        judge(object.infected, &object.bytes, status, verdict_header.as_deref(), Some(&body));
    tally.record(verdict, object.infected, || format!("GET {url} ({version:?}): {why} {}", snippet(&body)));
    verdict
}

/// The answer's `x-clamgate-verdict`, if it has one.
fn verdict_header(response: &reqwest::Response) -> Option<String> {
    response.headers().get("x-clamgate-verdict").and_then(|value| value.to_str().ok()).map(str::to_string)
}

/// The start of an answer's body, for the report (a refusal's JSON says why).
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(160)]).replace('\n', " ");
    if body.len() > 1024 {
        String::new()
    } else {
        text
    }
}

async fn upload(
    http: &reqwest::Client,
    urls: &Urls,
    name: &str,
    bytes: Vec<u8>,
    infected: bool,
    tally: &Tally,
    upstream: &Upstream,
) {
    tally.uploads.fetch_add(1, Ordering::Relaxed);
    let url = format!("{}/upload/{name}", urls.envoy);
    let sent = bytes.clone();
    let (status, answer) = match http.post(&url).header("host", HOST).body(bytes).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.bytes().await.map(|b| snippet(&b)).unwrap_or_default())
        }
        Err(err) => (0, err.to_string()),
    };
    let received = upstream.take_received(name);
    let (verdict, why) = match (status, infected, received) {
        (_, true, Some(_)) => (Verdict::Wrong, "an infected upload reached the origin".to_string()),
        (201, false, Some(stored)) if stored == sent => (Verdict::Right, String::new()),
        (201, false, _) => (Verdict::Wrong, "the origin stored other bytes".to_string()),
        (409, true, None) => (Verdict::Right, String::new()),
        (409, false, _) => (Verdict::Wrong, "a clean upload refused as infected".to_string()),
        (0 | 413 | 422 | 500 | 502 | 503 | 504, _, _) => (Verdict::FailedClosed, format!("{status}")),
        (other, _, _) => (Verdict::Wrong, format!("status {other}")),
    };
    tally.record(verdict, infected, || format!("POST {url}: {why} {answer}"));
}

/// Reads the first piece of a body, then goes away.
async fn abort_mid_body(http: &reqwest::Client, url: &str, object: &Object, tally: &Tally) {
    let Ok(response) = http.get(url).header("host", HOST).send().await else {
        tally.record(Verdict::FailedClosed, object.infected, || format!("GET {url} (abort): no answer"));
        return;
    };
    let status = response.status().as_u16();
    let verdict_header = verdict_header(&response);
    let mut stream = response.bytes_stream();
    let first = stream.next().await.and_then(Result::ok).unwrap_or_default();
    drop(stream);
    let verdict = if status == 200 && !object.bytes.starts_with(&first) {
        Verdict::Wrong
    } else {
        judge(object.infected, &object.bytes, status, verdict_header.as_deref(), None).0
    };
    tally.record(verdict, object.infected, || format!("GET {url} (abort): {status}"));
}

/// Reads a body slowly (a pause after every piece), checking it whole at the end.
async fn slow_read(http: &reqwest::Client, url: &str, object: &Object, tally: &Tally) {
    let Ok(response) = http.get(url).header("host", HOST).send().await else {
        tally.record(Verdict::FailedClosed, object.infected, || format!("GET {url} (slow): no answer"));
        return;
    };
    let status = response.status().as_u16();
    let verdict_header = verdict_header(&response);
    let mut stream = response.bytes_stream();
    let mut body = Vec::new();
    let started = Instant::now();
    let mut cut = false;
    while let Some(piece) = stream.next().await {
        match piece {
            Ok(piece) => body.extend_from_slice(&piece),
            Err(_) => {
                cut = true;
                break;
            }
        }
        if started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (verdict, why) = if cut && !(object.infected && status == 200) && object.bytes.starts_with(&body) {
        // Cut while a fault lasts: what came is the start of the object, and the rest never did.
        (Verdict::FailedClosed, format!("{status}, body cut after {} bytes", body.len()))
    } else {
        judge(object.infected, &object.bytes, status, verdict_header.as_deref(), Some(&body))
    };
    tally.record(verdict, object.infected, || format!("GET {url} (slow): {why}"));
}
