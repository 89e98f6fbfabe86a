//! The benchmark's origin server: the same objects under every path prefix, with an ETag.
//!
//! The object is named by the LAST path segment, whatever comes before it, so that every route of
//! the benchmark (`/files/…`, `/noscan/files/…`, `/mirror/…`, `/mirror-noscan/…`, with or without
//! a `prefix_rewrite`) reaches the same bytes with the same headers:
//!
//! - `obj-{size}.bin`: one fixed object of `size` bytes (pseudo-random, so clamd cannot shortcut
//!   it), `etag: "obj-{size}-v1"`. The same `Bytes` is served every time.
//! - `u-{run}s{series}-{size}-{n}.bin`: a unique object of `size` bytes (the fixed one with its name
//!   written over its first bytes, so its SHA-256 is new), `etag: "{name}"`.
//! - any name the bench [put](Origin::put) there (the `large` scenario: one object per request,
//!   made before the request is timed and served without a copy), `etag: "{name}"`, until it is
//!   [removed](Origin::remove).
//! - anything else: 404.
//!
//! A `POST` or `PUT` (the `large` scenario's uploads) is read to its end and answered `201` with
//! no body and the SHA-256 and length of what arrived (`x-received-sha256`, `x-received-bytes`),
//! hashed as it streams in: nothing is kept.
//!
//! It runs on its own tokio runtime (one worker thread), apart from the load generator.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::Router;
use tokio::runtime::Runtime;

/// The running origin. Its runtime (and the server) stop on drop.
pub struct Origin {
    addr: SocketAddr,
    runtime: Option<Runtime>,
    named: Arc<RwLock<HashMap<String, Bytes>>>,
}

/// What the origin serves: the fixed objects by size, and the objects put there by name.
#[derive(Clone)]
struct Objects {
    fixed: Arc<HashMap<usize, Bytes>>,
    named: Arc<RwLock<HashMap<String, Bytes>>>,
}

impl Origin {
    /// Starts the origin on `127.0.0.1:0` with one fixed object per size in `sizes`.
    pub fn start(sizes: &[usize]) -> Result<Origin, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-origin")
            .enable_all()
            .build()
            .map_err(|err| format!("origin runtime: {err}"))?;
        let named = Arc::new(RwLock::new(HashMap::new()));
        let objects = Objects {
            fixed: Arc::new(sizes.iter().map(|&size| (size, Bytes::from(object_bytes(size)))).collect()),
            named: named.clone(),
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(|err| format!("origin: bind 127.0.0.1:0: {err}"))?;
        let addr = listener.local_addr().map_err(|err| format!("origin: local_addr: {err}"))?;
        // Envoy keeps its upstream connections: no Nagle delay on small responses.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let app = Router::new().fallback(serve_object).with_state(objects);
        runtime.spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("bench origin: server error: {err}");
            }
        });
        Ok(Origin { addr, runtime: Some(runtime), named })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `bytes` as `…/{name}` (any prefix) from now on.
    pub fn put(&self, name: &str, bytes: Bytes) {
        if let Ok(mut named) = self.named.write() {
            named.insert(name.to_string(), bytes);
        }
    }

    /// Stops serving `name` and frees its bytes (once no response holds them).
    pub fn remove(&self, name: &str) {
        if let Ok(mut named) = self.named.write() {
            named.remove(name);
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// An upload, hashed as it arrives: `201` with its SHA-256 and length.
async fn receive_upload(request: Request) -> Response {
    use sha2::{Digest, Sha256};
    use tokio_stream::StreamExt;
    let mut body = request.into_body().into_data_stream();
    let (mut hasher, mut received) = (Sha256::new(), 0u64);
    while let Some(data) = body.next().await {
        let Ok(data) = data else {
            return (StatusCode::BAD_REQUEST, "the upload broke off\n").into_response();
        };
        hasher.update(&data);
        received += data.len() as u64;
    }
    let digest = hex::encode(hasher.finalize());
    let mut response = StatusCode::CREATED.into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&digest) {
        headers.insert("x-received-sha256", value);
    }
    headers.insert("x-received-bytes", HeaderValue::from(received));
    response
}

/// The name of the fixed object of `size` bytes.
pub fn fixed_name(size: usize) -> String {
    format!("obj-{size}.bin")
}

/// The name of unique object number `n` of series `series` (one per measured cell) with `size`
/// bytes, in run `run` (a nonce: no two runs share a name).
pub fn unique_name(run: u64, series: usize, size: usize, n: u64) -> String {
    format!("u-{run:x}s{series}-{size}-{n}.bin")
}

/// `size` pseudo-random bytes (xorshift64*, fixed seed): incompressible, and no signature of
/// the test database can match them.
fn object_bytes(size: usize) -> Vec<u8> {
    seeded_bytes(size, 0)
}

/// `size` pseudo-random bytes (xorshift64*) from `seed`: seed 0 gives the fixed objects, any
/// other seed other bytes of the same kind.
pub fn seeded_bytes(size: usize, seed: u64) -> Vec<u8> {
    // xorshift's state must not be 0; the odd constant keeps it so for any seed but one.
    let mut state: u64 =
        (0x9e37_79b9_7f4a_7c15 ^ size as u64 ^ seed.wrapping_mul(0xbf58_476d_1ce4_e5b9)).max(1);
    let mut bytes = Vec::with_capacity(size + 8);
    while bytes.len() < size {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    bytes.truncate(size);
    bytes
}

async fn serve_object(State(objects): State<Objects>, request: Request) -> Response {
    if request.method() == axum::http::Method::POST || request.method() == axum::http::Method::PUT {
        return receive_upload(request).await;
    }
    let name = request.uri().path().rsplit('/').next().unwrap_or_default().to_string();
    let named = objects.named.read().ok().and_then(|named| named.get(&name).cloned());
    let object = if let Some(bytes) = named {
        Some((bytes, format!("\"{name}\"")))
    } else if let Some(size) = name.strip_prefix("obj-").and_then(|rest| rest.strip_suffix(".bin")) {
        size.parse().ok().and_then(|size: usize| objects.fixed.get(&size)).map(|bytes| {
            let size = bytes.len();
            (bytes.clone(), format!("\"obj-{size}-v1\""))
        })
    } else if name.starts_with("u-") {
        // u-{run}s{series}-{size}-{n}.bin
        name.split('-').nth(2).and_then(|size| size.parse().ok()).and_then(|size: usize| {
            let base = objects.fixed.get(&size)?;
            let mut bytes = base.to_vec();
            let stamp = name.as_bytes();
            let len = stamp.len().min(bytes.len());
            bytes[..len].copy_from_slice(&stamp[..len]);
            Some((Bytes::from(bytes), format!("\"{name}\"")))
        })
    } else {
        None
    };
    match object {
        Some((bytes, etag)) => {
            let mut response = Body::from(bytes).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            if let Ok(etag) = HeaderValue::from_str(&etag) {
                headers.insert(header::ETAG, etag);
            }
            response
        }
        None => (StatusCode::NOT_FOUND, "no such object\n").into_response(),
    }
}
