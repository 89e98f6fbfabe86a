//! Streaming HTTP client helpers for large bodies: downloads hashed as they arrive, uploads of
//! generated bodies ([`super::gen`]) produced as they are sent, and clients that give up mid-way
//! (drop the connection) to test what a disconnect does. No helper holds a whole body.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH};
use reqwest::Method;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::gen::{chunks, GenSpec, DEFAULT_CHUNK_BYTES};

/// Overall limit for one exchange: hundreds of MiB through Envoy and clamd, in a debug build.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(300);

/// Bytes of the body kept in [`Download::body_prefix`].
pub const BODY_PREFIX_BYTES: usize = 4096;

/// What a streamed download received.
#[derive(Debug)]
pub struct Download {
    pub status: u16,
    pub headers: HeaderMap,
    /// Body bytes received (up to the error, if any).
    pub bytes: u64,
    /// SHA-256 (lower-case hex) of those bytes.
    pub sha256: String,
    /// The first 4 KiB of the body: an error page, a JSON answer, or the start of the body.
    pub body_prefix: Vec<u8>,
    /// A transport error after the headers (reset, truncated body, timeout), if the body did not
    /// end normally.
    pub error: Option<String>,
}

impl Download {
    /// [`body_prefix`](Self::body_prefix) as text, for assertion messages and JSON bodies.
    pub fn prefix_text(&self) -> String {
        String::from_utf8_lossy(&self.body_prefix).into_owned()
    }

    /// A header's value as text ("" when absent or not text).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or("")
    }
}

/// A client for one exchange: no connection reuse (each helper's connection is its own), no
/// proxy from the environment, and [`EXCHANGE_TIMEOUT`] as the only timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(EXCHANGE_TIMEOUT)
        .build()
        .expect("build reqwest client")
}

/// `GET url` with `headers`, the body hashed and counted as it arrives. Panics only if no
/// response (status and headers) arrives at all; an error mid-body is in [`Download::error`].
pub async fn download(url: &str, headers: &[(&str, &str)]) -> Download {
    let mut request = client().get(url);
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("download: header name");
        let value = HeaderValue::from_str(value).expect("download: header value");
        request = request.header(name, value);
    }
    let mut response = request.send().await.unwrap_or_else(|err| panic!("GET {url}: {err:?}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut body_prefix = Vec::new();
    let error = loop {
        match response.chunk().await {
            Ok(Some(piece)) => {
                hasher.update(&piece);
                bytes += piece.len() as u64;
                let room = BODY_PREFIX_BYTES - body_prefix.len();
                body_prefix.extend_from_slice(&piece[..room.min(piece.len())]);
            }
            Ok(None) => break None,
            Err(err) => break Some(format!("{err:?}")),
        }
    };
    Download { status, headers, bytes, sha256: hex::encode(hasher.finalize()), body_prefix, error }
}

/// Sends the body of `spec` with `method`, produced piece by piece as it is sent: with
/// `content-length`, or chunked if `chunked`. `Ok` holds the status and response body; `Err` a
/// transport error (e.g. the server answered and closed before taking the whole body).
pub async fn upload(
    url: &str,
    method: Method,
    spec: &GenSpec,
    chunked: bool,
) -> Result<(u16, Vec<u8>), String> {
    let pieces = chunks(spec, DEFAULT_CHUNK_BYTES).map(Ok::<Bytes, Infallible>);
    let mut request =
        client().request(method.clone(), url).body(reqwest::Body::wrap_stream(tokio_stream::iter(pieces)));
    if !chunked {
        // A streamed body has no length of its own: without this header it goes chunked.
        request = request.header(CONTENT_LENGTH, spec.size);
    }
    let response = request.send().await.map_err(|err| format!("{method} {url}: {err:?}"))?;
    let status = response.status().as_u16();
    let body =
        response.bytes().await.map_err(|err| format!("{method} {url}: reading the answer: {err:?}"))?;
    Ok((status, body.to_vec()))
}

/// `GET url`, then drops the connection once `after_bytes` body bytes arrived (right after the
/// headers if 0). Returns the status, or `Err` if the exchange failed before that point (no
/// headers, or the body ended or broke first: then the byte count is in the message).
///
/// A body clamgate holds for scanning sends no byte before the verdict: to disconnect while a
/// scan runs, use [`request_then_drop`].
pub async fn download_then_drop(url: &str, after_bytes: u64) -> Result<u16, String> {
    let mut response = client().get(url).send().await.map_err(|err| format!("GET {url}: {err:?}"))?;
    let status = response.status().as_u16();
    let mut received = 0u64;
    while received < after_bytes {
        match response.chunk().await {
            Ok(Some(piece)) => received += piece.len() as u64,
            Ok(None) => return Err(format!("GET {url}: body ended after {received} of {after_bytes} bytes")),
            Err(err) => return Err(format!("GET {url}: body broke after {received} bytes: {err:?}")),
        }
    }
    // Dropping a response whose body is unfinished closes its connection (it cannot be reused).
    drop(response);
    Ok(status)
}

/// Sends `GET url` on a fresh TCP connection and closes it after `after`, whether or not an
/// answer came. Returns whatever bytes of the answer arrived meanwhile (raw HTTP/1.1: status
/// line, headers, maybe part of the body; empty if none).
///
/// Raw TCP rather than reqwest, so that the close happens exactly then, on exactly this
/// connection.
pub async fn request_then_drop(url: &str, after: Duration) -> Vec<u8> {
    let target = HttpTarget::parse(url);
    let mut stream = TcpStream::connect(&target.authority)
        .await
        .unwrap_or_else(|err| panic!("connect to {}: {err}", target.authority));
    let head = format!("GET {} HTTP/1.1\r\nhost: {}\r\n\r\n", target.path_and_query, target.authority);
    stream.write_all(head.as_bytes()).await.unwrap_or_else(|err| panic!("send GET {url}: {err}"));
    let mut answer = Vec::new();
    let reading = async {
        let mut buffer = vec![0u8; 64 * 1024];
        // Until the peer closes or errs; the timeout below ends it otherwise.
        while let Ok(read @ 1..) = stream.read(&mut buffer).await {
            answer.extend_from_slice(&buffer[..read]);
        }
    };
    let _ = tokio::time::timeout(after, reading).await;
    drop(stream);
    answer
}

/// Starts `POST url` with the body of `spec` (`content-length: spec.size`) on a fresh TCP
/// connection, writes the headers and the first `after_bytes` body bytes, then closes the
/// connection: a client that vanishes mid-upload. Returns whatever bytes of an answer had
/// arrived by then (an early `413`, say; usually empty).
///
/// Raw TCP rather than reqwest, so that "sent" means handed to the kernel, not buffered in the
/// client.
pub async fn upload_then_drop(url: &str, spec: &GenSpec, after_bytes: u64) -> Vec<u8> {
    assert!(after_bytes < spec.size, "upload_then_drop: {after_bytes} bytes is the whole body or more");
    let target = HttpTarget::parse(url);
    let mut stream = TcpStream::connect(&target.authority)
        .await
        .unwrap_or_else(|err| panic!("connect to {}: {err}", target.authority));
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/octet-stream\r\n\
         content-length: {}\r\n\r\n",
        target.path_and_query, target.authority, spec.size
    );
    stream.write_all(head.as_bytes()).await.unwrap_or_else(|err| panic!("send POST {url}: {err}"));
    let mut sent = 0u64;
    for piece in chunks(spec, DEFAULT_CHUNK_BYTES) {
        let take = usize::try_from(after_bytes - sent).map_or(piece.len(), |left| left.min(piece.len()));
        if stream.write_all(&piece[..take]).await.is_err() {
            // The server closed first (e.g. answered 413 and hung up): the upload is cut anyway.
            break;
        }
        sent += take as u64;
        if sent == after_bytes {
            break;
        }
    }
    let _ = stream.flush().await;
    // Whatever answer is already here; never wait for one.
    let mut answer = vec![0u8; 64 * 1024];
    let read = stream.try_read(&mut answer).unwrap_or(0);
    answer.truncate(read);
    drop(stream);
    answer
}

/// The parts of an `http://HOST:PORT/path?query` URL a raw HTTP/1.1 request needs.
struct HttpTarget {
    /// `HOST:PORT`, for connecting and for the `host` header.
    authority: String,
    /// `/path?query`.
    path_and_query: String,
}

impl HttpTarget {
    fn parse(url: &str) -> HttpTarget {
        let parsed = reqwest::Url::parse(url).unwrap_or_else(|err| panic!("bad URL {url:?}: {err}"));
        assert_eq!(parsed.scheme(), "http", "only http:// URLs: {url}");
        let host = parsed.host_str().unwrap_or_else(|| panic!("no host in {url}"));
        let port = parsed.port_or_known_default().unwrap_or(80);
        let mut path_and_query = parsed.path().to_string();
        if let Some(query) = parsed.query() {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        HttpTarget { authority: format!("{host}:{port}"), path_and_query }
    }
}
