//! A sample upstream HTTP server, in-process: serves files, accepts uploads, and records what
//! reached it (per-path hit counts, bodies, headers), so a test can prove that a blocked body or a
//! client's `x-clamgate-*` header never arrived.
//!
//! Routes:
//! - `GET|HEAD /files/{name}` and `/mirror/{name}` (the same files, for routes with another
//!   policy): the bytes given to [`Upstream::put_file`], with
//!   `content-type: application/octet-stream` (or the type given) and `content-length`; 404 if none.
//! - `GET|HEAD /gen/{name}?size=N&seed=S[&eicar=start|middle|end|OFFSET][&chunked=1]`: a generated
//!   body ([`super::gen`]) streamed in 64 KiB pieces, never held whole, with
//!   `content-type: application/octet-stream`, `content-length` (none with `chunked=1`: then the
//!   body goes chunked) and `etag: "gen-<name>-<spec>"`; 400 for a bad query.
//! - a file put with an `x-upstream-status: NNN` header is answered with that status (and its
//!   headers, e.g. a `location`), before `If-Match` and `Range` are looked at.
//! - `If-Match` on `/files/`: 412 unless the file's `etag` (set with
//!   [`Upstream::put_file_with_headers`]) is listed (or `*` and it has one).
//! - `Range` on `/files/` and `/gen/`: one `bytes=A-B`, `bytes=A-` or `bytes=-N` gets
//!   `206 Partial Content` with `content-range` and only those bytes; a range starting past the end
//!   gets `416` with `content-range: bytes */TOTAL`; several ranges or an unparseable header are
//!   ignored (`200` with the whole body).
//! - `POST|PUT /upload/{name}`: stores the body (see [`Upstream::received`]) and answers
//!   `201 Created` with a short text body.
//! - `POST|PUT /upload-stream/{name}`: reads the body piece by piece without storing it, keeping
//!   an [`UploadSummary`] (bytes, SHA-256, complete) updated as bytes arrive (see
//!   [`Upstream::upload_summary`]), and answers `201 Created`.
//! - anything else: 404 (still counted).

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use super::gen::{parse_query, query_flag, range_chunks, DEFAULT_CHUNK_BYTES};

/// One file served under `/files/{name}`.
#[derive(Clone)]
struct ServedFile {
    bytes: Bytes,
    headers: HeaderMap,
}

#[derive(Default)]
struct Recorded {
    files: HashMap<String, ServedFile>,
    /// Upload bodies by name, the last one received.
    uploads: HashMap<String, Vec<u8>>,
    /// What arrived at `/upload-stream/{name}`, by name, the last upload (possibly still arriving).
    upload_summaries: HashMap<String, UploadSummary>,
    /// Requests that reached the server, by path (query excluded).
    hits: HashMap<String, usize>,
    /// Headers of the last request for each path.
    headers: HashMap<String, HeaderMap>,
}

type Shared = Arc<Mutex<Recorded>>;

/// What reached `/upload-stream/{name}`: kept up to date while the body arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSummary {
    /// Body bytes received so far.
    pub bytes: u64,
    /// SHA-256 (lower-case hex) of those bytes.
    pub sha256: String,
    /// The body ended normally, with as many bytes as its `content-length` said. `false` while
    /// it is still arriving and when it was cut (client gone, connection reset).
    pub complete: bool,
}

/// The running server. Stops accepting connections on drop.
pub struct Upstream {
    addr: SocketAddr,
    state: Shared,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Binds `127.0.0.1:0` and serves on a spawned task of the current tokio runtime.
    pub async fn start() -> Upstream {
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("upstream: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("upstream: local_addr");
        let state: Shared = Arc::default();
        // One handler for every request, so every request that reaches the upstream is
        // counted, whatever its method or path.
        let app = Router::new().fallback(handle).with_state(state.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("upstream: server error: {err}");
            }
        });
        Upstream { addr, state, task }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR{path}`, for requests that bypass Envoy.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Serves `bytes` at `GET /files/{name}` as `application/octet-stream`.
    pub fn put_file(&self, name: &str, bytes: impl Into<Bytes>) {
        self.put_file_with_headers(name, bytes, &[]);
    }

    /// Serves `bytes` at `GET /files/{name}` with extra response headers (e.g. a
    /// `content-type`, which replaces the default, or a header the upstream should not be able
    /// to pass to the client).
    pub fn put_file_with_headers(&self, name: &str, bytes: impl Into<Bytes>, extra: &[(&str, &str)]) {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        for (key, value) in extra {
            let key = HeaderName::from_bytes(key.as_bytes()).expect("upstream: header name");
            let value = HeaderValue::from_str(value).expect("upstream: header value");
            headers.insert(key, value);
        }
        let file = ServedFile { bytes: bytes.into(), headers };
        self.lock().files.insert(name.to_string(), file);
    }

    /// The last body uploaded to `/upload/{name}`, if any reached the upstream.
    pub fn received(&self, name: &str) -> Option<Vec<u8>> {
        self.lock().uploads.get(name).cloned()
    }

    /// Like `received`, and forgets the body (a long run's uploads would otherwise pile up).
    pub fn take_received(&self, name: &str) -> Option<Vec<u8>> {
        self.lock().uploads.remove(name)
    }

    /// Stops serving `GET /files/{name}` (404 from now on).
    pub fn remove_file(&self, name: &str) {
        self.lock().files.remove(name);
    }

    /// How many requests for `path` (e.g. `/files/eicar.com`) reached the upstream.
    pub fn hits(&self, path: &str) -> usize {
        self.lock().hits.get(path).copied().unwrap_or(0)
    }

    /// Requests that reached the upstream for paths starting with `prefix` (e.g. `/gen/`).
    pub fn hits_with_prefix(&self, prefix: &str) -> usize {
        self.lock().hits.iter().filter(|(path, _)| path.starts_with(prefix)).map(|(_, hits)| hits).sum()
    }

    /// What the last upload to `/upload-stream/{name}` delivered so far: `None` until its first
    /// body byte arrived or its body ended (normally, or cut with nothing received).
    pub fn upload_summary(&self, name: &str) -> Option<UploadSummary> {
        self.lock().upload_summaries.get(name).cloned()
    }

    /// Requests that reached the upstream, all paths together.
    pub fn total_hits(&self) -> usize {
        self.lock().hits.values().sum()
    }

    /// The headers of the last request for `path` that reached the upstream.
    pub fn received_headers(&self, path: &str) -> Option<HeaderMap> {
        self.lock().headers.get(path).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        // A panicking handler must not hide the recorded state from the test's assertions.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(state): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    {
        let mut recorded = state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *recorded.hits.entry(path.clone()).or_default() += 1;
        recorded.headers.insert(path.clone(), parts.headers.clone());
    }

    if let Some(name) = path.strip_prefix("/files/").or_else(|| path.strip_prefix("/mirror/")) {
        if parts.method != Method::GET && parts.method != Method::HEAD {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
        let file = state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).files.get(name).cloned();
        let Some(file) = file else {
            return (StatusCode::NOT_FOUND, "no such file\n").into_response();
        };
        // If-Match (RFC 9110 13.1.1): a file whose ETag is not among the listed ones gets 412,
        // as a real origin would after the object changed; a file without an ETag fails any list
        // but `*`.
        if let Some(wanted) = parts.headers.get(header::IF_MATCH).and_then(|value| value.to_str().ok()) {
            let etag = file.headers.get(header::ETAG).and_then(|value| value.to_str().ok());
            let matches = wanted.trim() == "*" && etag.is_some()
                || etag.is_some_and(|etag| {
                    !etag.starts_with("W/") && wanted.split(',').any(|w| w.trim() == etag)
                });
            if !matches {
                return (StatusCode::PRECONDITION_FAILED, "if-match failed\n").into_response();
            }
        }
        // A file put with `x-upstream-status` is answered with that status (a redirect, an error).
        if let Some(status) = file
            .headers
            .get("x-upstream-status")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u16>().ok())
            .and_then(|code| StatusCode::from_u16(code).ok())
        {
            return (status, file.headers, Body::from(file.bytes)).into_response();
        }
        let total = file.bytes.len() as u64;
        // axum sets content-length from the body (and keeps it, bodiless, for HEAD).
        return match requested_range(&parts.headers, total) {
            RangeRequest::Whole => (file.headers, Body::from(file.bytes)).into_response(),
            RangeRequest::Partial { first, last } => {
                let part = file.bytes.slice(first as usize..=last as usize);
                let content_range = content_range(first, last, total);
                (StatusCode::PARTIAL_CONTENT, file.headers, [content_range], Body::from(part)).into_response()
            }
            RangeRequest::Unsatisfiable => range_not_satisfiable(total),
        };
    }

    if let Some(name) = path.strip_prefix("/gen/") {
        // POST too: a request with a body whose response is a large download.
        if parts.method != Method::GET && parts.method != Method::HEAD && parts.method != Method::POST {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
        // Read a request body first, as an application would: answering with it unread makes
        // hyper close the connection with bytes still arriving (a reset Envoy sees as a protocol
        // error on the upstream, failing the request with a 502 now and then under load).
        if axum::body::to_bytes(body, 64 << 20).await.is_err() {
            return (StatusCode::BAD_REQUEST, "upstream: reading body failed\n").into_response();
        }
        return generated_body(name, parts.uri.query().unwrap_or(""), &parts.method, &parts.headers);
    }

    if let Some(name) = path.strip_prefix("/upload-stream/") {
        if parts.method != Method::POST && parts.method != Method::PUT {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
        let declared_bytes = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        return receive_streamed_upload(&state, name, declared_bytes, body).await;
    }

    if let Some(name) = path.strip_prefix("/upload/") {
        if parts.method != Method::POST && parts.method != Method::PUT {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
        // No size limit here: the limits under test are Envoy's and clamgate's.
        let bytes = match to_bytes(body, usize::MAX).await {
            Ok(bytes) => bytes,
            Err(err) => {
                return (StatusCode::BAD_REQUEST, format!("upstream: reading body: {err}\n")).into_response()
            }
        };
        let len = bytes.len();
        state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .uploads
            .insert(name.to_string(), bytes.to_vec());
        return (StatusCode::CREATED, format!("stored {name} ({len} bytes)\n")).into_response();
    }

    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// `GET|HEAD /gen/{name}?{query}`: the generated body of the query's spec, streamed.
fn generated_body(name: &str, query: &str, method: &Method, request_headers: &HeaderMap) -> Response {
    let spec = match parse_query(query) {
        Ok(spec) => spec,
        Err(problem) => {
            return (StatusCode::BAD_REQUEST, format!("bad /gen/ query: {problem}\n")).into_response()
        }
    };
    let chunked = query_flag(query, "chunked");
    let (status, first, end) = match requested_range(request_headers, spec.size) {
        RangeRequest::Whole => (StatusCode::OK, 0, spec.size),
        RangeRequest::Partial { first, last } => (StatusCode::PARTIAL_CONTENT, first, last + 1),
        RangeRequest::Unsatisfiable => return range_not_satisfiable(spec.size),
    };

    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    // Names the body, cheaply: the spec decides every byte.
    let etag = format!("\"gen-{}-{}\"", etag_safe(name), etag_safe(&super::gen::query(&spec)));
    headers
        .insert(header::ETAG, HeaderValue::from_str(&etag).expect("etag_safe leaves a valid header value"));
    if status == StatusCode::PARTIAL_CONTENT {
        let (name, value) = content_range(first, end - 1, spec.size);
        headers.insert(name, value);
    }
    if !chunked {
        // Without it hyper would send the stream chunked: its length is unknown to hyper.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - first));
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        let pieces = range_chunks(&spec, first, end, DEFAULT_CHUNK_BYTES).map(Ok::<Bytes, Infallible>);
        Body::from_stream(tokio_stream::iter(pieces))
    };
    (status, headers, body).into_response()
}

/// `text` with everything but ASCII letters, digits, `.` and `_` turned into `-`: fit for an ETag.
fn etag_safe(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '-' }).collect()
}

/// `POST|PUT /upload-stream/{name}`: hashes and counts the body as it arrives, never storing it,
/// and keeps `upload_summaries[name]` up to date.
async fn receive_streamed_upload(
    state: &Shared,
    name: &str,
    declared_bytes: Option<u64>,
    body: Body,
) -> Response {
    let record = |summary: UploadSummary| {
        state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .upload_summaries
            .insert(name.to_string(), summary);
    };
    let mut hasher = Sha256::new();
    let mut received_bytes = 0u64;
    let mut pieces = body.into_data_stream();
    // If the connection dies, hyper may drop this future without a body error: the summary
    // recorded after the last piece then stays, with `complete: false`.
    loop {
        match pieces.next().await {
            Some(Ok(piece)) => {
                if piece.is_empty() {
                    continue;
                }
                hasher.update(&piece);
                received_bytes += piece.len() as u64;
                let sha256 = hex::encode(hasher.clone().finalize());
                record(UploadSummary { bytes: received_bytes, sha256, complete: false });
            }
            Some(Err(err)) => {
                let sha256 = hex::encode(hasher.finalize());
                record(UploadSummary { bytes: received_bytes, sha256, complete: false });
                let message = format!("upstream: body of {name} cut after {received_bytes} bytes: {err}\n");
                return (StatusCode::BAD_REQUEST, message).into_response();
            }
            None => break,
        }
    }
    // A body that ends early without an error (the sender vanished) is not complete either.
    let complete = declared_bytes.is_none_or(|declared| declared == received_bytes);
    record(UploadSummary { bytes: received_bytes, sha256: hex::encode(hasher.finalize()), complete });
    (StatusCode::CREATED, format!("received {name} ({received_bytes} bytes, not stored)\n")).into_response()
}

/// What a request's `Range` header asks of a body of `total` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeRequest {
    /// No range, several ranges, or one that cannot be parsed: the whole body, `200`.
    Whole,
    /// Bytes `first..=last`, within the body: `206`.
    Partial { first: u64, last: u64 },
    /// A well-formed single range that selects nothing: `416`.
    Unsatisfiable,
}

fn requested_range(headers: &HeaderMap, total: u64) -> RangeRequest {
    match headers.get(header::RANGE).map(HeaderValue::to_str) {
        Some(Ok(range)) => parse_range(range, total),
        _ => RangeRequest::Whole,
    }
}

/// Reads `bytes=A-B`, `bytes=A-` or `bytes=-N` (RFC 9110 section 14.1.2) for a body of `total`
/// bytes. Anything else, several ranges included, is [`RangeRequest::Whole`].
fn parse_range(range: &str, total: u64) -> RangeRequest {
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return RangeRequest::Whole;
    };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let number = |text: &str| text.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // `-N`: the last N bytes.
        (true, false) => match number(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if total == 0 => RangeRequest::Unsatisfiable,
            Some(suffix) => RangeRequest::Partial { first: total.saturating_sub(suffix), last: total - 1 },
            None => RangeRequest::Whole,
        },
        // `A-`: from A to the end.
        (false, true) => match number(first) {
            Some(first) if first < total => RangeRequest::Partial { first, last: total - 1 },
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Whole,
        },
        // `A-B`.
        (false, false) => match (number(first), number(last)) {
            (Some(first), Some(last)) if first <= last && first < total => {
                RangeRequest::Partial { first, last: last.min(total - 1) }
            }
            (Some(first), Some(last)) if first <= last => RangeRequest::Unsatisfiable,
            _ => RangeRequest::Whole,
        },
        (true, true) => RangeRequest::Whole,
    }
}

fn content_range(first: u64, last: u64, total: u64) -> (HeaderName, HeaderValue) {
    let value =
        HeaderValue::from_str(&format!("bytes {first}-{last}/{total}")).expect("digits are a header value");
    (header::CONTENT_RANGE, value)
}

fn range_not_satisfiable(total: u64) -> Response {
    let value = HeaderValue::from_str(&format!("bytes */{total}")).expect("digits are a header value");
    (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, value)], "range not satisfiable\n")
        .into_response()
}

#[cfg(test)]
mod tests {
    // Imports inside the test: benches/proxy compiles this module (cfg(test)) without its tests.
    #[test]
    fn single_ranges_are_read_and_anything_else_means_the_whole_body() {
        use super::{parse_range, RangeRequest};
        let partial = |first, last| RangeRequest::Partial { first, last };
        assert_eq!(parse_range("bytes=0-99", 1000), partial(0, 99));
        assert_eq!(parse_range("bytes=900-", 1000), partial(900, 999));
        assert_eq!(parse_range("bytes=-100", 1000), partial(900, 999));
        assert_eq!(parse_range("bytes=-5000", 1000), partial(0, 999));
        assert_eq!(parse_range("bytes=990-5000", 1000), partial(990, 999));
        assert_eq!(parse_range("bytes=1000-", 1000), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), RangeRequest::Unsatisfiable);
        for ignored in ["bytes=0-1,5-6", "bytes=5-1", "items=0-1", "bytes=a-b", "bytes=-", "0-1"] {
            assert_eq!(parse_range(ignored, 1000), RangeRequest::Whole, "{ignored}");
        }
    }
}
