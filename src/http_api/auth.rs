//! `GET /v1/auth`: nginx's `auth_request` subrequest, decided from the verdict cache (and on a
//! miss by the policy's `on_miss`: allow, deny, or fetch and scan).
//!
//! # What nginx sends
//! Headers its own config sets (`proxy_set_header` replaces a client's header of the same name,
//! so a client cannot forge them), each exactly once:
//! `x-clamgate-method`, `x-clamgate-scheme`, `x-clamgate-authority` (the request's Host),
//! `x-clamgate-uri` (the original URI with its query) and `x-clamgate-policy` (the clamgate policy
//! of that location); optionally `x-clamgate-request-id` and `x-clamgate-recheck: 1` (the
//! upstream answered 412 to the validator this endpoint gave: forget the entry, look again).
//! The client's other headers come along and are used only to match the `Vary` of a stored
//! response and to ask the origin for the same variant.
//!
//! # What it answers
//! - `200`: allowed. `x-clamgate-verdict` (`clean`, or `unscanned` when the policy allows it) and,
//!   for an object known by a strong ETag, `x-clamgate-if-match`: nginx sends it upstream as
//!   `If-Match`, so the client gets that version or a 412, never other bytes. A clean object
//!   without a strong ETag is allowed only under an `immutable` policy; otherwise it is
//!   `Unscanned { no_validator }` and its policy action.
//! - `403`: refused. The answer the Envoy path would give travels in headers for nginx to replay:
//!   `x-clamgate-status` (409, 502, 503...), `x-clamgate-verdict`, `x-clamgate-retry-after`
//!   (engine trouble), `x-clamgate-direction` (`upload` or `download`) and `x-clamgate-body` (the
//!   JSON body, also sent as this answer's body). nginx hands them to `GET /v1/blocked`
//!   ([`super::blocked`]), which shapes the refusal the client gets.
//! - `400`: a header nginx must set is missing or repeated, or names an unknown policy (a broken
//!   nginx config: nginx turns it into 500, which the shipped config answers 503).
//!
//! Only GET and HEAD are decided: nginx cannot show clamgate a request body, so any other method
//! is `Unscanned { body_not_visible }` on a policy that scans anything.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::HttpState;
use crate::audit::{audit, AuditContext};
use crate::cache::{strong_etag, Resource, ResourceId};
use crate::config::{CacheMode, OnMiss};
use crate::fetch::FetchRules;
use crate::metrics::Source;
use crate::policy::{decide_json, Decision, DecisionContext, Direction, Policy};
use crate::scanner::{ResourceLookup, ScanReport};
use crate::verdict::{UnscannedReason, Verdict};

/// The prefix of every header nginx sets for clamgate; none of them counts as a request header
/// of the client.
const CONTROL_PREFIX: &str = "x-clamgate-";

static METHOD: HeaderName = HeaderName::from_static("x-clamgate-method");
static SCHEME: HeaderName = HeaderName::from_static("x-clamgate-scheme");
static AUTHORITY: HeaderName = HeaderName::from_static("x-clamgate-authority");
static URI: HeaderName = HeaderName::from_static("x-clamgate-uri");
static POLICY: HeaderName = HeaderName::from_static("x-clamgate-policy");
static REQUEST_ID: HeaderName = HeaderName::from_static("x-clamgate-request-id");
static RECHECK: HeaderName = HeaderName::from_static("x-clamgate-recheck");

/// Headers of the subrequest that are nginx's, not the client's request.
const NOT_CLIENT_HEADERS: [&str; 5] = ["host", "connection", "content-length", "transfer-encoding", "te"];

/// The original request, as nginx describes it.
#[derive(Debug)]
struct AuthRequest {
    method: String,
    scheme: String,
    authority: String,
    uri: String,
    policy: String,
    request_id: String,
    recheck: bool,
    /// The client's headers (lower-case names), for `Vary`.
    client_headers: Vec<(String, String)>,
}

/// Why a subrequest is not one the shipped nginx config sends.
#[derive(Debug, thiserror::Error)]
pub(super) enum BadRequest {
    #[error("{0} is missing (set it with proxy_set_header in the auth location)")]
    Missing(&'static str),
    #[error("{0} is repeated")]
    Repeated(&'static str),
    #[error("{0} is not ASCII text")]
    NotText(&'static str),
    #[error("{0} is not a value /v1/auth gives")]
    NotFromAuth(&'static str),
    #[error("x-clamgate-policy names no configured policy")]
    UnknownPolicy,
    #[error("x-clamgate-scheme, x-clamgate-authority and x-clamgate-uri do not make an http(s) URL")]
    NotAResource,
}

pub async fn auth(State(state): State<super::HttpState>, headers: HeaderMap) -> Response {
    if let Some(refusal) = super::refused(&state, &headers, "/v1/auth") {
        return refusal;
    }
    let mut request = match AuthRequest::from_headers(&headers) {
        Ok(request) => request,
        Err(err) => return bad_request(&state, &err),
    };
    let Some(policy) = state.policies.named(&request.policy) else {
        return bad_request(&state, &BadRequest::UnknownPolicy);
    };
    match verdict_for(&state, &mut request, &policy).await {
        Ok(Found::NothingToScan) => {
            state.metrics.record_auth_answer("not_scanned");
            StatusCode::OK.into_response()
        }
        Ok(Found::Verdict { report, validator }) => {
            answer(&state, &request, &policy, &report, validator.as_deref())
        }
        Err(err) => bad_request(&state, &err),
    }
}

/// What `/v1/auth` found out about the request.
enum Found {
    /// The policy scans neither way: allowed, with no verdict to tell.
    NothingToScan,
    /// The verdict on the object, and the validator of the version it is about.
    Verdict { report: ScanReport, validator: Option<String> },
}

impl AuthRequest {
    fn from_headers(headers: &HeaderMap) -> Result<AuthRequest, BadRequest> {
        let recheck = optional(headers, &RECHECK)?.is_some_and(|value| value == "1");
        let client_headers = headers
            .iter()
            .filter(|(name, _)| {
                !name.as_str().starts_with(CONTROL_PREFIX) && !NOT_CLIENT_HEADERS.contains(&name.as_str())
            })
            .map(|(name, value)| {
                (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned())
            })
            .collect();
        Ok(AuthRequest {
            method: required(headers, &METHOD)?,
            scheme: required(headers, &SCHEME)?,
            authority: required(headers, &AUTHORITY)?,
            uri: required(headers, &URI)?,
            policy: required(headers, &POLICY)?,
            request_id: optional(headers, &REQUEST_ID)?.unwrap_or_default(),
            recheck,
            client_headers,
        })
    }

    /// GET and HEAD ask for a download; any other method sends a body nginx cannot show.
    fn direction(&self) -> Direction {
        if matches!(self.method.as_str(), "GET" | "HEAD") {
            Direction::Response
        } else {
            Direction::Request
        }
    }

    fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or(&self.uri)
    }
}

pub(super) fn optional(headers: &HeaderMap, name: &'static HeaderName) -> Result<Option<String>, BadRequest> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(BadRequest::Repeated(name.as_str())),
        (Some(value), None) => {
            value.to_str().map(|text| Some(text.to_string())).map_err(|_| BadRequest::NotText(name.as_str()))
        }
    }
}

pub(super) fn required(headers: &HeaderMap, name: &'static HeaderName) -> Result<String, BadRequest> {
    optional(headers, name)?.filter(|value| !value.is_empty()).ok_or(BadRequest::Missing(name.as_str()))
}

fn bad_request(state: &HttpState, err: &BadRequest) -> Response {
    state.metrics.record_http_refused("bad_request");
    tracing::error!(error = %err, "/v1/auth: a subrequest the nginx config should not send; answered 400");
    (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response()
}

/// The verdict for the request's object, from the cache or a fetch.
/// The client's headers move into the resource: nothing later reads them.
async fn verdict_for(
    state: &HttpState,
    request: &mut AuthRequest,
    policy: &Policy,
) -> Result<Found, BadRequest> {
    let rules = &policy.rules;
    let direction = request.direction();
    let not_cached = |reason| Found::Verdict { report: unscanned(state, reason, direction), validator: None };
    if direction == Direction::Request {
        if !rules.scan_requests && !rules.scan_responses {
            return Ok(Found::NothingToScan);
        }
        return Ok(not_cached(UnscannedReason::BodyNotVisible));
    }
    if !rules.scan_responses {
        return Ok(Found::NothingToScan);
    }
    let id = ResourceId::from_request(&request.scheme, &request.authority, &request.uri)
        .ok_or(BadRequest::NotAResource)?;
    let resource = Resource { id, request_headers: std::mem::take(&mut request.client_headers) };
    if request.recheck {
        // The upstream refused the validator this endpoint gave: that entry is stale.
        state.scanner.forget_resource(&resource).await;
    } else if rules.cache_mode != CacheMode::Off {
        match state.scanner.lookup_resource(&resource).await {
            ResourceLookup::Clean { known } => {
                let report = ScanReport::cached_clean(&known.content);
                return Ok(Found::Verdict { report, validator: Some(known.validator) });
            }
            ResourceLookup::Infected(report) | ResourceLookup::InfectedUnlessChanged { report, .. } => {
                return Ok(Found::Verdict { report, validator: None });
            }
            ResourceLookup::Miss => {}
        }
    }
    match rules.on_miss {
        OnMiss::Allow | OnMiss::Deny => Ok(not_cached(UnscannedReason::NotCached)),
        OnMiss::Fetch => {
            let fetch_rules = FetchRules { cache_mode: rules.cache_mode, immutable: rules.immutable };
            let fetched = state.fetcher.fetch(&resource, fetch_rules).await;
            Ok(Found::Verdict { report: fetched.report, validator: fetched.validator })
        }
    }
}

/// The report for a request that got no scan, counted as a verdict on a proxied body.
fn unscanned(state: &HttpState, reason: UnscannedReason, direction: Direction) -> ScanReport {
    state.scanner.report_unscanned("", 0, reason, Source::Proxied(direction))
}

/// Turns the verdict into `/v1/auth`'s answer (see the module documentation).
fn answer(
    state: &HttpState,
    request: &AuthRequest,
    policy: &Policy,
    report: &ScanReport,
    validator: Option<&str>,
) -> Response {
    let if_match = validator.and_then(strong_etag);
    // A clean verdict that nginx cannot tie to the bytes it will fetch is no verdict on them.
    let bound = if_match.is_some() || policy.rules.immutable;
    let unbound;
    let report = if report.verdict == Verdict::Clean && !bound {
        unbound = ScanReport {
            verdict: Verdict::Unscanned { reason: UnscannedReason::NoValidator },
            ..report.clone()
        };
        &unbound
    } else {
        report
    };
    let direction = request.direction();
    let sha256 = Some(report.sha256.as_str()).filter(|sha256| !sha256.is_empty());
    let context =
        DecisionContext { direction, request_id: &request.request_id, sha256, part: None, accept: None };
    // JSON here: the headers below carry it, and `/v1/blocked` shapes it for the client.
    let decision = decide_json(&report.verdict, policy, context);
    let audit_context = AuditContext {
        front_door: "nginx",
        request_id: &request.request_id,
        direction,
        path: request.path(),
        part: None,
    };
    audit(audit_context, report, &decision);
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    match decision {
        Decision::Continue { verdict_header, .. } => {
            let result = match &report.verdict {
                Verdict::Clean => "clean",
                Verdict::Infected { .. } => "infected_reported",
                Verdict::Unscanned { .. } => "unscanned_allowed",
            };
            state.metrics.record_auth_answer(result);
            if let Some(verdict) = verdict_header {
                set("x-clamgate-verdict", verdict);
            }
            // No strong ETag (an immutable policy): nothing to pin, no If-Match.
            if let Some(etag) = if_match {
                set("x-clamgate-if-match", etag);
            }
            (StatusCode::OK, headers).into_response()
        }
        Decision::Block(block) => {
            let result = if block.verdict == "infected" { "infected" } else { "unscanned_denied" };
            state.metrics.record_auth_answer(result);
            state.metrics.record_blocked(block.status);
            set("x-clamgate-status", &block.status.to_string());
            set("x-clamgate-verdict", block.verdict);
            set("x-clamgate-direction", direction.as_people_say());
            if let Some(secs) = block.retry_after_secs {
                set("x-clamgate-retry-after", &secs.to_string());
            }
            let body = String::from_utf8_lossy(&block.body).into_owned();
            set("x-clamgate-body", &body);
            (StatusCode::FORBIDDEN, headers, body).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        map
    }

    const NGINX: [(&str, &str); 5] = [
        ("x-clamgate-method", "GET"),
        ("x-clamgate-scheme", "https"),
        ("x-clamgate-authority", "example.com"),
        ("x-clamgate-uri", "/a/b.zip?x=1"),
        ("x-clamgate-policy", "mirror"),
    ];

    #[test]
    fn the_request_is_read_from_the_headers_nginx_sets_and_the_rest_is_the_clients() {
        let mut pairs = NGINX.to_vec();
        pairs.extend([("accept-encoding", "gzip"), ("host", "clamgate_http"), ("x-clamgate-other", "1")]);
        let request = AuthRequest::from_headers(&headers(&pairs)).unwrap();
        assert_eq!(
            (request.method.as_str(), request.uri.as_str(), request.policy.as_str()),
            ("GET", "/a/b.zip?x=1", "mirror")
        );
        assert_eq!(request.path(), "/a/b.zip");
        assert!(!request.recheck);
        assert_eq!(request.client_headers, [("accept-encoding".to_string(), "gzip".to_string())]);
        assert_eq!(request.direction(), Direction::Response);
    }

    #[test]
    fn a_missing_empty_or_repeated_header_is_a_bad_request() {
        for (index, (name, _)) in NGINX.iter().enumerate() {
            let mut pairs = NGINX.to_vec();
            pairs.remove(index);
            assert!(
                matches!(AuthRequest::from_headers(&headers(&pairs)), Err(BadRequest::Missing(n)) if n == *name)
            );
            let mut pairs = NGINX.to_vec();
            pairs[index].1 = "";
            assert!(matches!(AuthRequest::from_headers(&headers(&pairs)), Err(BadRequest::Missing(_))));
            let mut pairs = NGINX.to_vec();
            pairs.push(NGINX[index]);
            assert!(
                matches!(AuthRequest::from_headers(&headers(&pairs)), Err(BadRequest::Repeated(n)) if n == *name)
            );
        }
        let mut pairs = NGINX.to_vec();
        pairs[0].1 = "POST";
        pairs.push(("x-clamgate-recheck", "1"));
        let request = AuthRequest::from_headers(&headers(&pairs)).unwrap();
        assert_eq!(request.direction(), Direction::Request);
        assert!(request.recheck);
    }
}
