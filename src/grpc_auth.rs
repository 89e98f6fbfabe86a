//! Who may call the gRPC listener: a shared token that Envoy sends as gRPC initial metadata
//! (`authorization: Bearer TOKEN`), and TLS with client certificates (mTLS) on the listener.
//!
//! ext_proc and the Scan API write verdicts into the cache, so a caller posing as Envoy could
//! store a Clean entry for any URL or an Infected one (a denial of service for `cache.ttl_secs`).
//! With `listen.grpc_token_file` set, [`Authenticator`] refuses every call of those two services
//! that lacks the token with `UNAUTHENTICATED`, before a message is read or an answer written
//! (Envoy then answers its `status_on_error`: fail closed). grpc.health.v1 stays open: it writes
//! nothing and tells only SERVING or NOT_SERVING, and probes that cannot send metadata (the
//! kubelet's gRPC probe) must still reach it. With mTLS, every caller of every service, health
//! included, needs a certificate signed by `listen.grpc_tls_client_ca_file`.
//!
//! The config is checked with the same functions that build the listener ([`SharedToken::from_file`],
//! [`server_tls`]), so `check-config` reports what `serve` would fail on.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use crate::metrics::Metrics;

/// The gRPC metadata key that carries the token.
pub const TOKEN_METADATA_KEY: &str = "authorization";
/// The scheme before the token in [`TOKEN_METADATA_KEY`]: `Bearer TOKEN`.
pub const TOKEN_SCHEME: &str = "Bearer";
/// The shortest token accepted: shorter ones can be guessed.
pub const MIN_TOKEN_CHARS: usize = 16;
/// Time allowed for a client's TLS handshake; a client that stalls it is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared token, kept only as its SHA-256 so that comparisons take the same time whatever
/// the presented value (length included). `Debug` never shows it.
#[derive(Clone)]
pub struct SharedToken {
    digest: [u8; 32],
}

impl fmt::Debug for SharedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedToken(***)")
    }
}

impl SharedToken {
    /// Reads the token from `path`: the whole file, trailing `\n` and `\r` removed; at least
    /// [`MIN_TOKEN_CHARS`] visible ASCII characters (it travels in an HTTP/2 header and in
    /// Envoy's YAML). Errors never quote the file's contents.
    pub fn from_file(path: &str) -> Result<SharedToken, String> {
        if path.is_empty() {
            return Err("must not be empty; remove the key to accept gRPC calls without a token".to_string());
        }
        let bytes = std::fs::read(path).map_err(|err| format!("cannot read {path:?}: {err}"))?;
        SharedToken::from_bytes(&bytes).map_err(|problem| format!("{path:?}: {problem}"))
    }

    /// The token held in `bytes` (a token file's contents), as [`SharedToken::from_file`] reads it.
    pub fn from_bytes(bytes: &[u8]) -> Result<SharedToken, String> {
        let end = bytes.iter().rposition(|&b| b != b'\n' && b != b'\r').map_or(0, |i| i + 1);
        let token = &bytes[..end];
        if token.is_empty() {
            return Err("holds no token (the file is empty)".to_string());
        }
        if !token.iter().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the token must be printable ASCII without spaces (it is sent as an HTTP/2 header value)"
                    .to_string(),
            );
        }
        if token.len() < MIN_TOKEN_CHARS {
            return Err(format!(
                "the token has {} characters, fewer than {MIN_TOKEN_CHARS}: use a random one, such as \
                 `openssl rand -hex 32`",
                token.len()
            ));
        }
        Ok(SharedToken { digest: Sha256::digest(token).into() })
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented).into();
        self.digest.ct_eq(&presented).into()
    }
}

/// Why a call was refused: the `reason` label of `clamgate_grpc_unauthenticated_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `authorization` metadata.
    Missing,
    /// `authorization` is not `Bearer TOKEN` (another scheme, not ASCII).
    Malformed,
    /// A token that is not the configured one.
    Wrong,
}

impl Refusal {
    /// The metric label and log field: `missing`, `malformed` or `wrong`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Wrong => "wrong",
        }
    }
}

/// Checks the token in a call's metadata.
pub fn check_token(token: &SharedToken, metadata: &MetadataMap) -> Result<(), Refusal> {
    let value = metadata.get(TOKEN_METADATA_KEY).ok_or(Refusal::Missing)?;
    let value = value.to_str().map_err(|_| Refusal::Malformed)?;
    let (scheme, presented) = value.split_once(' ').ok_or(Refusal::Malformed)?;
    if !scheme.eq_ignore_ascii_case(TOKEN_SCHEME) {
        return Err(Refusal::Malformed);
    }
    if token.matches(presented.as_bytes()) {
        Ok(())
    } else {
        Err(Refusal::Wrong)
    }
}

/// The tonic interceptor in front of one service: with a token configured, refuses calls
/// without it (`UNAUTHENTICATED`, counted and logged); without one, lets every call through.
#[derive(Clone)]
pub struct Authenticator {
    token: Option<Arc<SharedToken>>,
    /// The `service` label: `ext_proc` or `scan_api`.
    service: &'static str,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    /// Guards the service labelled `service` with `token` (None: lets every call through).
    pub fn new(token: Option<Arc<SharedToken>>, service: &'static str, metrics: Arc<Metrics>) -> Self {
        Authenticator { token, service, metrics }
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else { return Ok(request) };
        match check_token(token, request.metadata()) {
            Ok(()) => Ok(request),
            Err(refusal) => {
                UnauthenticatedCall { service: self.service, refusal, peer: request.remote_addr() }
                    .emit(&self.metrics);
                Err(Status::unauthenticated("missing or wrong token in the authorization metadata"))
            }
        }
    }
}

/// A call refused for lack of the token: logged and counted together. The presented value is
/// never logged.
struct UnauthenticatedCall {
    service: &'static str,
    refusal: Refusal,
    peer: Option<std::net::SocketAddr>,
}

impl UnauthenticatedCall {
    fn emit(&self, metrics: &Metrics) {
        metrics.record_grpc_unauthenticated(self.service, self.refusal.as_str());
        let peer = self.peer.map(|peer| peer.to_string()).unwrap_or_default();
        tracing::warn!(
            service = self.service,
            reason = self.refusal.as_str(),
            peer = %peer,
            "refused a gRPC call without the shared token (listen.grpc_token_file)"
        );
    }
}

/// The TLS settings of the gRPC listener: its certificate chain and key, and, for mTLS, the CA
/// that must have signed every client's certificate. Reads and checks the files (PEM, a key that
/// rustls accepts); errors name the file, never a key's contents.
pub fn server_tls(
    cert_file: &str,
    key_file: &str,
    client_ca_file: Option<&str>,
) -> Result<ServerTlsConfig, String> {
    let read = |path: &str| std::fs::read(path).map_err(|err| format!("cannot read {path:?}: {err}"));
    let cert = read(cert_file)?;
    let key = read(key_file)?;
    let mut config =
        ServerTlsConfig::new().identity(Identity::from_pem(cert, key)).timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Some(ca_file) = client_ca_file {
        config = config.client_ca_root(Certificate::from_pem(read(ca_file)?));
    }
    // Building the acceptor parses every PEM file and checks that the key fits rustls; the same
    // call in `app` then cannot fail on what `check-config` accepted.
    tonic::transport::Server::builder().tls_config(config.clone()).map_err(|err| {
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(inner) = source {
            message.push_str(&format!(": {inner}"));
            source = inner.source();
        }
        format!(
            "{message} (files {cert_file:?}, {key_file:?}{})",
            client_ca_file.map(|ca| format!(", {ca:?}")).unwrap_or_default()
        )
    })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    const TOKEN: &str = "0123456789abcdef0123";

    fn metadata(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert(TOKEN_METADATA_KEY, MetadataValue::try_from(value).expect("ASCII"));
        metadata
    }

    #[test]
    fn a_token_file_loses_its_trailing_newline_only() {
        let token = SharedToken::from_bytes(format!("{TOKEN}\r\n").as_bytes()).expect("token");
        assert_eq!(check_token(&token, &metadata(&format!("Bearer {TOKEN}"))), Ok(()));
        assert_eq!(check_token(&token, &metadata(&format!("bearer {TOKEN}"))), Ok(()));
        assert_eq!(check_token(&token, &metadata(&format!("Bearer {TOKEN}x"))), Err(Refusal::Wrong));
        assert_eq!(check_token(&token, &metadata(&format!("Bearer {}", &TOKEN[1..]))), Err(Refusal::Wrong));
        assert_eq!(check_token(&token, &metadata(&format!("Bearer  {TOKEN}"))), Err(Refusal::Wrong));
        assert_eq!(check_token(&token, &metadata(&format!("Basic {TOKEN}"))), Err(Refusal::Malformed));
        assert_eq!(check_token(&token, &metadata(TOKEN)), Err(Refusal::Malformed));
        assert_eq!(check_token(&token, &MetadataMap::new()), Err(Refusal::Missing));
    }

    #[test]
    fn bad_token_files_are_refused_without_quoting_them() {
        for (bytes, problem) in [
            (&b""[..], "holds no token"),
            (&b"\n\n"[..], "holds no token"),
            (&b"short-token\n"[..], "fewer than 16"),
            (&b"a token with spaces inside\n"[..], "printable ASCII without spaces"),
        ] {
            let err = SharedToken::from_bytes(bytes).expect_err("refused");
            assert!(err.contains(problem), "{err}");
            assert!(!err.contains("short-token") && !err.contains("spaces inside"), "{err}");
        }
        assert!(SharedToken::from_file("/nonexistent/token").expect_err("missing").contains("cannot read"));
    }

    #[test]
    fn debug_hides_the_token() {
        let token = SharedToken::from_bytes(TOKEN.as_bytes()).expect("token");
        assert_eq!(format!("{token:?}"), "SharedToken(***)");
    }
}
