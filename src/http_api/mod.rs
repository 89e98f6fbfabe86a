//! The HTTP listener (`listen.http_addr`): `GET /v1/auth` for nginx's `auth_request`,
//! `GET /v1/blocked` for the refusal nginx then gives, and `POST /v1/scan`, the HTTP scan API
//! (docs/scan-api.md).
//!
//! Separate from the admin listener: this one drives downloads, scans and writes verdicts, so it
//! asks for a token when one is set and answers 401 (counted, logged) without it: nginx's shared
//! token (`listen.http_token_file`, header `x-clamgate-token`) for `/v1/auth`, a bearer token
//! (`listen.http_scan_token_file`, else the same shared token) for `/v1/scan`.

pub mod auth;
pub mod blocked;
pub mod scan;

use std::future::Future;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::fetch::Fetcher;
use crate::grpc_auth::SharedToken;
use crate::metrics::Metrics;
use crate::policy::Policies;
use crate::scanner::Scanner;
use crate::spool::Spool;

/// The header nginx sends the shared token in (not `authorization`, which is the client's and
/// may be what the object's response varies on).
pub const TOKEN_HEADER: &str = "x-clamgate-token";

/// What every handler of the HTTP listener shares.
#[derive(Clone)]
pub struct HttpState {
    pub scanner: Arc<Scanner>,
    /// Where `/v1/scan` holds bodies: ext_proc's, so one memory budget bounds both.
    pub spool: Spool,
    pub fetcher: Arc<Fetcher>,
    pub policies: Arc<Policies>,
    pub metrics: Arc<Metrics>,
    pub token: Option<Arc<SharedToken>>,
    /// The bearer token `POST /v1/scan` asks for, if any.
    pub scan_token: Option<Arc<SharedToken>>,
}

/// The HTTP routes. Each handler checks the token first ([`refused`]).
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/v1/auth", get(auth::auth))
        .route("/v1/blocked", get(blocked::blocked))
        .route("/v1/scan", post(scan::scan))
        .with_state(state)
}

/// Serves the HTTP routes on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

/// With a token configured, the 401 for a request without exactly one `x-clamgate-token` holding
/// it (counted and logged, without the presented value); None when the request may go on. Every
/// handler calls it before it reads anything else (a function, not a middleware layer: it costs
/// nothing per request beyond the comparison).
pub fn refused(state: &HttpState, headers: &HeaderMap, path: &str) -> Option<Response> {
    let token = state.token.as_ref()?;
    if only_value(headers, &TOKEN).is_some_and(|presented| token.matches(presented)) {
        return None;
    }
    state.metrics.record_http_refused("unauthenticated");
    tracing::warn!(path, "HTTP API request without the shared token (x-clamgate-token); refused with 401");
    Some((StatusCode::UNAUTHORIZED, "x-clamgate-token is missing or wrong\n").into_response())
}

/// The value of header `name` when the request has exactly one; None when it has none or several
/// (a credential sent twice is refused, whichever copy a later hop would read).
pub fn only_value<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h [u8]> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => Some(value.as_bytes()),
        _ => None,
    }
}

static TOKEN: HeaderName = HeaderName::from_static(TOKEN_HEADER);
