//! A sample upstream HTTP server, in-process: serves files, accepts uploads, and records what
//! reached it (per-path hit counts, bodies, headers), so a test can prove that a blocked body or a
//! client's `x-clamgate-*` header never arrived.
//!
//! Routes:
//! - `GET|HEAD /files/{name}` and `/mirror/{name}` (the same files, for routes with another
//!   policy): the bytes given to [`Upstream::put_file`], with
//!   `content-type: application/octet-stream` (or the type given) and `content-length`; 404 if none.
//! - `POST|PUT /upload/{name}`: stores the body (see [`Upstream::received`]) and answers
//!   `201 Created` with a short text body.
//! - anything else: 404 (still counted).

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

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
    /// Requests that reached the server, by path (query excluded).
    hits: HashMap<String, usize>,
    /// Headers of the last request for each path.
    headers: HashMap<String, HeaderMap>,
}

type Shared = Arc<Mutex<Recorded>>;

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

    /// How many requests for `path` (e.g. `/files/eicar.com`) reached the upstream.
    pub fn hits(&self, path: &str) -> usize {
        self.lock().hits.get(path).copied().unwrap_or(0)
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
        return match file {
            // axum sets content-length from the full body (and keeps it, bodiless, for HEAD).
            Some(file) => (file.headers, Body::from(file.bytes)).into_response(),
            None => (StatusCode::NOT_FOUND, "no such file\n").into_response(),
        };
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
