//! `GET /v1/blocked`: the refusal nginx gives the client, shaped by the policy. nginx cannot send
//! a status it does not name literally, nor an HTML page held in a header, so its `@clamgate_denied`
//! location hands clamgate's `/v1/auth` refusal back here and passes the answer on untouched:
//! the policy's status, and its JSON body, HTML page or redirect as the client's `Accept` chooses.
//!
//! nginx sends, each exactly once: `x-clamgate-policy`, and the `x-clamgate-status`,
//! `x-clamgate-body` (the JSON refusal), `x-clamgate-direction` and (engine trouble)
//! `x-clamgate-retry-after` that `/v1/auth` gave it; the client's `Accept` comes along. The token
//! is required like on `/v1/auth`. The values are clamgate's own, relayed; every one that reaches
//! a page is escaped all the same.

use axum::extract::State;
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::{optional, required, BadRequest};
use super::HttpState;
use crate::policy::{BlockResponse, Direction};

static POLICY: HeaderName = HeaderName::from_static("x-clamgate-policy");
static STATUS: HeaderName = HeaderName::from_static("x-clamgate-status");
static BODY: HeaderName = HeaderName::from_static("x-clamgate-body");
static DIRECTION: HeaderName = HeaderName::from_static("x-clamgate-direction");
static RETRY: HeaderName = HeaderName::from_static("x-clamgate-retry-after");

pub async fn blocked(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if let Some(refusal) = super::refused(&state, &headers, "/v1/blocked") {
        return refusal;
    }
    let block = match refusal_of(&state, &headers) {
        Ok(block) => block,
        Err(err) => {
            state.metrics.record_http_refused("bad_request");
            tracing::error!(error = %err, "/v1/blocked: a request the nginx config should not send; answered 400");
            return (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response();
        }
    };
    let mut answer = HeaderMap::new();
    answer.insert(CONTENT_TYPE, HeaderValue::from_static(block.content_type));
    answer.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(secs) = block.retry_after_secs {
        answer.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(location) = block.location.as_deref().and_then(|url| HeaderValue::from_str(url).ok()) {
        answer.insert(LOCATION, location);
    }
    let status = StatusCode::from_u16(block.status).unwrap_or(StatusCode::FORBIDDEN);
    (status, answer, block.body).into_response()
}

/// The refusal `/v1/auth` gave, shaped by its policy for this client.
fn refusal_of(state: &HttpState, headers: &HeaderMap) -> Result<BlockResponse, BadRequest> {
    let policy_name = required(headers, &POLICY)?;
    let policy = state.policies.named(&policy_name).ok_or(BadRequest::UnknownPolicy)?;
    let status = required(headers, &STATUS)?
        .parse::<u16>()
        .ok()
        .filter(|status| (400..=599).contains(status))
        .ok_or(BadRequest::NotFromAuth("x-clamgate-status"))?;
    let body = required(headers, &BODY)?;
    let verdict = match serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .as_ref()
        .and_then(|json| json["verdict"].as_str())
    {
        Some("infected") => "infected",
        Some("unscanned") => "unscanned",
        _ => return Err(BadRequest::NotFromAuth("x-clamgate-body")),
    };
    let direction = match optional(headers, &DIRECTION)?.as_deref() {
        Some("upload") => Direction::Request,
        _ => Direction::Response,
    };
    let retry_after_secs = optional(headers, &RETRY)?.and_then(|secs| secs.parse().ok());
    let accept =
        headers.get_all(ACCEPT).iter().filter_map(|value| value.to_str().ok()).collect::<Vec<_>>().join(", ");
    let block = BlockResponse {
        status,
        verdict,
        retry_after_secs,
        content_type: "application/json",
        body: body.into_bytes(),
        location: None,
        details: String::new(),
    };
    Ok(policy.shape(block, Some(accept.as_str()).filter(|accept| !accept.is_empty()), direction))
}
