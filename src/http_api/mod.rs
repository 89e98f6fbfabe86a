//! The HTTP listener (`listen.http_addr`): `GET /v1/auth` for nginx's `auth_request`.
//!
//! Separate from the admin listener: this one drives downloads and writes verdicts, so it asks
//! for the shared token (`listen.http_token_file`, header `x-clamgate-token`) when one is set,
//! and answers 401 (counted, logged) without it.

pub mod auth;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::fetch::Fetcher;
use crate::grpc_auth::SharedToken;
use crate::metrics::Metrics;
use crate::policy::Policies;
use crate::scanner::Scanner;

/// The header nginx sends the shared token in (not `authorization`, which is the client's and
/// may be what the object's response varies on).
pub const TOKEN_HEADER: &str = "x-clamgate-token";

/// What every handler of the HTTP listener shares.
#[derive(Clone)]
pub struct HttpState {
    pub scanner: Arc<Scanner>,
    pub fetcher: Arc<Fetcher>,
    pub policies: Arc<Policies>,
    pub metrics: Arc<Metrics>,
    pub token: Option<Arc<SharedToken>>,
}

/// The HTTP routes, behind the token check.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/v1/auth", get(auth::auth))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
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

/// With a token configured, refuses a request without exactly one `x-clamgate-token` holding it.
async fn require_token(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let mut values = request.headers().get_all(TOKEN_HEADER).iter();
        let presented = match (values.next(), values.next()) {
            (Some(value), None) => Some(value.as_bytes()),
            _ => None,
        };
        if !presented.is_some_and(|presented| token.matches(presented)) {
            state.metrics.record_http_refused("unauthenticated");
            tracing::warn!(
                path = request.uri().path(),
                "HTTP API request without the shared token (x-clamgate-token); refused with 401"
            );
            return (StatusCode::UNAUTHORIZED, "x-clamgate-token is missing or wrong\n").into_response();
        }
    }
    next.run(request).await
}
