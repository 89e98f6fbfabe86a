//! `POST /v1/scan`: the HTTP scan API. The request body (raw bytes, any content type, streamed
//! or with a length) goes through the same path as the gRPC `clamgate.v1.Scanner/Scan`: held
//! (the shared memory budget, then a temp file) until it ends, then the verdict cache, one scan
//! per content, clamd, the same size limit and deadlines. The answer is `200` with the same
//! fields as the gRPC `ScanResult`, as JSON, for every verdict: the verdict is the result, and
//! `unscanned` is never `clean`. Described in docs/scan-api.md (OpenAPI).
//!
//! Who may call it: with a token configured (`listen.http_scan_token_file`, else
//! `listen.http_token_file`), only a request with exactly one `Authorization: Bearer TOKEN`;
//! others get `401` before a byte of the body is read.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;
use tokio_stream::StreamExt;

use crate::metrics::Source;
use crate::proto::clamgate::v1::{ScanResult, Verdict as ApiVerdict};
use crate::scan_api::scan_result;
use crate::scanner::{PartReport, ScanReport};
use crate::spool::SpoolFull;

use super::HttpState;

/// `POST /v1/scan`.
pub async fn scan(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    if let Some(refusal) = bearer_refused(&state, &headers) {
        return refusal;
    }
    let started = Instant::now();
    let mut pieces = body.into_data_stream();
    let mut scan = state.scanner.streaming(Source::Api, state.spool.hold());
    loop {
        let piece = match tokio::time::timeout_at(scan.receive_deadline(started), pieces.next()).await {
            Ok(Some(Ok(piece))) => piece,
            Ok(None) => break,
            Ok(Some(Err(err))) => {
                tracing::warn!(error = %err, bytes = scan.body_bytes(), "HTTP scan API body broke off");
                return problem(StatusCode::BAD_REQUEST, "the request body broke off before its end");
            }
            Err(_) => {
                tracing::warn!(
                    bytes = scan.body_bytes(),
                    "HTTP scan API client did not send its whole body within scan.timeout_ms (+ scan.timeout_per_mib_ms per MiB)"
                );
                return verdict(&scan.timed_out());
            }
        };
        if let Err(err) = scan.push(piece).await {
            tracing::warn!(error = %err, "cannot hold an HTTP scan API body");
            if SpoolFull::is(&err) {
                let mut response = problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "clamgate cannot hold more bodies now; retry later",
                );
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
            return problem(StatusCode::INTERNAL_SERVER_ERROR, "clamgate cannot hold the body");
        }
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
    match content_type.and_then(crate::multipart::boundary) {
        Some(boundary) => {
            let boundary = boundary.as_deref().map_err(|err| err.to_string());
            let scanned =
                scan.finish_multipart(boundary.as_deref().map_err(String::as_str), &state.spool).await;
            let mut json = result_json(&scan_result(&scanned.report));
            json["parts"] = scanned.parts.iter().map(part_json).collect();
            respond(json)
        }
        None => verdict(&scan.finish().await),
    }
}

/// One part's JSON: its names and its own result.
fn part_json(part: &PartReport) -> serde_json::Value {
    let mut json = result_json(&scan_result(&part.report));
    json["field"] = part.field.clone().into();
    json["filename"] = part.filename.clone().into();
    json["decoded"] = part.decoded.into();
    json
}

/// `200` and the report as JSON (the gRPC `ScanResult`'s fields and names).
fn verdict(report: &ScanReport) -> Response {
    respond(result_json(&scan_result(report)))
}

/// `200` and `json`.
fn respond(json: serde_json::Value) -> Response {
    let mut response = (StatusCode::OK, json.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The JSON form of a `ScanResult`: the verdict as `clean`, `infected` or `unscanned`.
pub fn result_json(result: &ScanResult) -> serde_json::Value {
    let verdict = match result.verdict() {
        ApiVerdict::Clean => "clean",
        ApiVerdict::Infected => "infected",
        // The proto's unspecified value is never sent; if it were, it is not a pass.
        _ => "unscanned",
    };
    serde_json::json!({
        "verdict": verdict,
        "signature": result.signature,
        "unscanned_reason": result.unscanned_reason,
        "sha256": result.sha256,
        "engine_version": result.engine_version,
        "database_version": result.database_version,
        "cached": result.cached,
    })
}

/// An error answer: `{"error": message}`.
fn problem(status: StatusCode, message: &str) -> Response {
    let mut response = (status, serde_json::json!({ "error": message }).to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// With a scan token configured, the `401` for a request without exactly one
/// `Authorization: Bearer TOKEN` holding it (counted and logged, without the presented value).
fn bearer_refused(state: &HttpState, headers: &HeaderMap) -> Option<Response> {
    let token = state.scan_token.as_ref()?;
    let presented = super::only_value(headers, &header::AUTHORIZATION).and_then(bearer);
    if presented.is_some_and(|presented| token.matches(presented)) {
        return None;
    }
    state.metrics.record_http_refused("unauthenticated");
    tracing::warn!(path = "/v1/scan", "HTTP scan API request without the bearer token; refused with 401");
    let mut response = problem(StatusCode::UNAUTHORIZED, "Authorization: Bearer TOKEN is missing or wrong");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"clamgate\""));
    Some(response)
}

/// The token of an `Authorization` value `Bearer TOKEN` (the scheme in any case, as RFC 7235
/// says), or None.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_takes_the_scheme_in_any_case_and_nothing_else() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearerabc"), None);
    }
}
