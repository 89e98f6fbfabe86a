//! The load generator: `c` workers, each with ONE HTTP/1.1 keep-alive connection of its own,
//! sending GETs back to back (closed loop) and recording every latency (request written → last
//! body byte read). Percentiles are exact, from the sorted samples (nearest rank).
//!
//! The HTTP/1.1 client is a minimal one written for this: a pooled client (reqwest/hyper-util)
//! opened a second connection now and then when the next request was sent before the previous
//! connection was back in its pool (seen with 1 MiB bodies), and the connection count is part of
//! what is measured. This one has exactly one connection per worker and reconnects only when the
//! server closes it or a request fails (counted).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest time one request may take before it counts as an error (Envoy's message_timeout is
/// 30 s, so a stuck scan has been answered by then).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest status or header line accepted.
const MAX_LINE: usize = 16 * 1024;

/// What a response was, as far as the benchmark cares.
pub struct Response {
    pub status: u16,
    pub body_len: usize,
    /// The `x-clamgate-verdict` header, if any.
    pub verdict: Option<String>,
    /// The origin's `x-received-sha256` (the SHA-256 of an upload as it arrived), if any.
    pub received_sha256: Option<String>,
}

/// One keep-alive HTTP/1.1 connection to `addr`, opened on first use and again after the server
/// closed it or a request failed.
pub struct Connection {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
    /// The last body (only its first `body_len` bytes are meaningful); reused between requests.
    body: Vec<u8>,
    /// Connections opened so far.
    pub connects: u64,
}

impl Connection {
    pub fn new(addr: SocketAddr) -> Connection {
        Connection { addr, stream: None, body: Vec::new(), connects: 0 }
    }

    /// The start of the last response's body, for error messages.
    pub fn body_start(&self, response: &Response) -> String {
        String::from_utf8_lossy(&self.body[..response.body_len.min(200).min(self.body.len())]).into_owned()
    }

    /// Ok if the last response to `GET path` was a 200 with a body of `size` bytes.
    pub fn expect_whole(&self, path: &str, response: &Response, size: usize) -> Result<(), String> {
        if response.status == 200 && response.body_len == size {
            return Ok(());
        }
        Err(format!(
            "GET {path}: status {}, {} bytes, expected 200 and {size}: {}",
            response.status,
            response.body_len,
            self.body_start(response)
        ))
    }

    /// A connection whose body buffer already holds `size` bytes, written once so that its pages
    /// are mapped: reading a body of up to that size then allocates and page-faults nothing while
    /// it is timed. (`vec![0; n]` would map zero pages lazily, on the first write.)
    pub fn with_body_capacity(addr: SocketAddr, size: usize) -> Connection {
        Connection { addr, stream: None, body: vec![0xa5; size], connects: 0 }
    }

    /// The body of the last response.
    pub fn body(&self, response: &Response) -> &[u8] {
        &self.body[..response.body_len.min(self.body.len())]
    }

    /// `GET path`, the whole body read, within 60 s.
    pub async fn get(&mut self, path: &str) -> Result<Response, String> {
        self.get_within(path, REQUEST_TIMEOUT).await
    }

    /// `GET path`, the whole body read, within `limit`.
    pub async fn get_within(&mut self, path: &str, limit: Duration) -> Result<Response, String> {
        self.request_within("GET", path, None, limit).await
    }

    /// `POST path` with `body` (`content-length`), the whole answer read, within `limit`.
    pub async fn post_within(
        &mut self,
        path: &str,
        body: &[u8],
        limit: Duration,
    ) -> Result<Response, String> {
        self.request_within("POST", path, Some(body), limit).await
    }

    async fn request_within(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        limit: Duration,
    ) -> Result<Response, String> {
        match tokio::time::timeout(limit, self.exchange(method, path, body)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => {
                self.stream = None;
                Err(format!("{method} {path}: {err}"))
            }
            Err(_) => {
                self.stream = None;
                Err(format!("{method} {path}: no complete answer within {limit:?}"))
            }
        }
    }

    async fn exchange(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Response, String> {
        if self.stream.is_none() {
            let stream =
                TcpStream::connect(self.addr).await.map_err(|err| format!("connect {}: {err}", self.addr))?;
            stream.set_nodelay(true).map_err(|err| format!("TCP_NODELAY: {err}"))?;
            self.connects += 1;
            self.stream = Some(BufReader::with_capacity(64 * 1024, stream));
        }
        let Some(stream) = self.stream.as_mut() else { return Err("no connection".to_string()) };
        let length = body.map(|body| format!("content-length: {}\r\n", body.len())).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nuser-agent: clamgate-bench\r\n{length}\r\n",
            self.addr
        );
        stream.get_mut().write_all(request.as_bytes()).await.map_err(|err| format!("write: {err}"))?;
        if let Some(body) = body {
            stream.get_mut().write_all(body).await.map_err(|err| format!("write the body: {err}"))?;
        }

        let mut line = Vec::with_capacity(256);
        read_line(stream, &mut line).await?;
        let status_line = String::from_utf8_lossy(&line).into_owned();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let (mut length, mut chunked, mut close, mut verdict) = (None, false, false, None);
        let mut received_sha256 = None;
        loop {
            read_line(stream, &mut line).await?;
            if line.is_empty() {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            let Some((name, value)) = text.split_once(':') else { continue };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                "x-clamgate-verdict" => verdict = Some(value.to_string()),
                "x-received-sha256" => received_sha256 = Some(value.to_string()),
                _ => {}
            }
        }

        let body_len = if chunked {
            let mut total = 0;
            loop {
                read_line(stream, &mut line).await?;
                let size_text = String::from_utf8_lossy(&line);
                let size_text = size_text.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|_| format!("bad chunk size {size_text:?}"))?;
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        read_line(stream, &mut line).await?;
                        if line.is_empty() {
                            break;
                        }
                    }
                    break total;
                }
                if self.body.len() < total + size {
                    self.body.resize(total + size, 0);
                }
                stream
                    .read_exact(&mut self.body[total..total + size])
                    .await
                    .map_err(|err| format!("read body: {err}"))?;
                total += size;
                read_line(stream, &mut line).await?;
            }
        } else if let Some(length) = length {
            if self.body.len() < length {
                self.body.resize(length, 0);
            }
            stream.read_exact(&mut self.body[..length]).await.map_err(|err| format!("read body: {err}"))?;
            length
        } else {
            // No length: the body ends with the connection.
            self.body.clear();
            close = true;
            stream.read_to_end(&mut self.body).await.map_err(|err| format!("read body: {err}"))?
        };
        if close {
            self.stream = None;
        }
        Ok(Response { status, body_len, verdict, received_sha256 })
    }
}

/// One CRLF-terminated line into `line`, without its terminator.
async fn read_line(stream: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> Result<(), String> {
    line.clear();
    let read = (&mut *stream)
        .take(MAX_LINE as u64)
        .read_until(b'\n', line)
        .await
        .map_err(|err| format!("read: {err}"))?;
    if read == 0 || line.last() != Some(&b'\n') {
        return Err("connection closed mid-response".to_string());
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(())
}

/// What a phase measured.
#[derive(Default)]
pub struct PhaseResult {
    /// Latencies of the successful requests, sorted.
    pub latencies: Vec<Duration>,
    /// Requests that failed: wrong status, wrong length, or a transport error.
    pub errors: u64,
    /// The first few error descriptions.
    pub error_samples: Vec<String>,
    /// From the first request sent to the last answer read.
    pub elapsed: Duration,
    /// Body bytes received by successful requests.
    pub bytes: u64,
    /// The phase stopped at its time bound before its request count.
    pub time_bound_hit: bool,
}

impl PhaseResult {
    pub fn completed(&self) -> u64 {
        self.latencies.len() as u64 + self.errors
    }

    /// Nearest-rank percentile `p` (0 < p ≤ 100) of the successful requests.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        Some(self.latencies[rank.clamp(1, self.latencies.len()) - 1])
    }

    pub fn requests_per_sec(&self) -> f64 {
        self.completed() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One closed-loop client worker: does request `i` and says how many body bytes it got.
pub trait Worker: Send + 'static {
    fn one(&mut self, i: u64) -> impl std::future::Future<Output = Result<u64, String>> + Send;
}

/// An HTTP worker: `GET path_of(i)` on its own connection, expecting 200 and `expected_len`
/// body bytes.
struct HttpWorker {
    connection: Connection,
    path_of: Arc<dyn Fn(u64) -> String + Send + Sync>,
    expected_len: usize,
}

impl Worker for HttpWorker {
    async fn one(&mut self, i: u64) -> Result<u64, String> {
        let path = (self.path_of)(i);
        let response = self.connection.get(&path).await?;
        if response.status == 200 && response.body_len == self.expected_len {
            return Ok(response.body_len as u64);
        }
        Err(format!(
            "GET {path}: status {}, {} bytes (expected 200, {}): {}",
            response.status,
            response.body_len,
            self.expected_len,
            self.connection.body_start(&response)
        ))
    }
}

/// Sends `count` GETs of `path_of(i)` (i = 0, 1, …) through `connections` (one worker each),
/// each expecting 200 and `expected_len` body bytes, and stops early at `time_bound`. Returns the
/// connections for the next phase.
pub async fn run_phase(
    connections: Vec<Connection>,
    path_of: Arc<dyn Fn(u64) -> String + Send + Sync>,
    count: u64,
    expected_len: usize,
    time_bound: Duration,
) -> (Vec<Connection>, PhaseResult) {
    let workers = connections
        .into_iter()
        .map(|connection| HttpWorker { connection, path_of: path_of.clone(), expected_len })
        .collect();
    let (workers, result) = run_workers(workers, count, time_bound).await;
    (workers.into_iter().map(|worker| worker.connection).collect(), result)
}

/// Runs requests 0 to `count` - 1 through `workers`, each taking the next number when it is
/// free, and stops early at `time_bound`. Returns the workers for the next phase.
pub async fn run_workers<W: Worker>(
    workers: Vec<W>,
    count: u64,
    time_bound: Duration,
) -> (Vec<W>, PhaseResult) {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + time_bound;
    let mut running = tokio::task::JoinSet::new();
    for mut worker in workers {
        let next = next.clone();
        running.spawn(async move {
            let mut mine = PhaseResult::default();
            loop {
                if Instant::now() >= deadline {
                    mine.time_bound_hit = true;
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let sent = Instant::now();
                let outcome = worker.one(i).await;
                let latency = sent.elapsed();
                match outcome {
                    Ok(bytes) => {
                        mine.latencies.push(latency);
                        mine.bytes += bytes;
                    }
                    Err(error) => {
                        mine.errors += 1;
                        if mine.error_samples.len() < 3 {
                            mine.error_samples.push(error);
                        }
                    }
                }
            }
            (worker, mine)
        });
    }
    let mut workers = Vec::new();
    let mut all = PhaseResult::default();
    while let Some(joined) = running.join_next().await {
        let Ok((worker, mine)) = joined else {
            all.errors += 1;
            all.error_samples.push("a client worker panicked".to_string());
            continue;
        };
        workers.push(worker);
        all.latencies.extend(mine.latencies);
        all.errors += mine.errors;
        all.bytes += mine.bytes;
        all.time_bound_hit |= mine.time_bound_hit;
        for sample in mine.error_samples {
            if all.error_samples.len() < 5 {
                all.error_samples.push(sample);
            }
        }
    }
    all.elapsed = started.elapsed();
    all.latencies.sort_unstable();
    (workers, all)
}
