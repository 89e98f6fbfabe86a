//! The ext_proc stream as a pure state machine: `on_message` takes one message from Envoy and says
//! what to do, without gRPC or I/O, so every ordering rule is unit-tested.
//!
//! Envoy (outside FULL_DUPLEX mode) expects exactly one answer per message, in order. A message
//! that breaks that order, or a body mode clamgate cannot scan safely, ends the stream with an
//! error status: Envoy then answers `status_on_error` and the body never passes unscanned.

use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingRequest, ProcessingResponse};

use crate::policy::Direction;

use super::response;

/// Headers clamgate owns. Any a client or an upstream sends are removed.
pub const CONTROL_HEADER_PREFIX: &str = "x-clamgate-";

use super::route_policy::ATTRIBUTE_NAMESPACE;

/// What the stream task must do next.
// One short-lived Action per message; boxing the reply would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send this answer to Envoy.
    Reply(ProcessingResponse),
    /// Scan this body, then answer with [`response::body_decision`] for `direction`.
    Scan { direction: Direction, body: Vec<u8> },
    /// Pass this body without scanning (the policy does not scan this direction).
    PassBody { direction: Direction },
    /// Look up the resource key of this request; then send `answer` (or 409 on an infected hit,
    /// recording a clean hit with [`StreamState::record_clean_resource`]).
    LookupResource { resource: Resource, answer: ProcessingResponse },
    /// The response carries the validator of a resource known clean: let its body through
    /// unbuffered (mode_override to body mode NONE), removing these control headers.
    PassCachedResource { remove_headers: Vec<String> },
    /// End the stream with an error status: never answer, never end OK.
    Fail(StreamError),
}

/// Why a stream was ended with an error status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("message out of order: {0}")]
    OutOfOrder(String),
    #[error("empty ProcessingRequest (no request field)")]
    EmptyMessage,
    #[error("{direction:?} body mode {mode} cannot be scanned safely; use BUFFERED")]
    UnsupportedBodyMode { direction: Direction, mode: String },
    #[error("a {0:?} body arrived in pieces but the body mode is unknown; refusing to scan part of it")]
    PartialBody(Direction),
}

impl StreamError {
    /// The gRPC status Envoy sees (any non-OK status makes it answer `status_on_error`).
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::failed_precondition(self.to_string())
    }
}

/// Where one direction (request or response) is in its headers → body → trailers sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Headers not seen yet.
    AwaitingHeaders,
    /// Headers answered; a body (and maybe trailers) may follow.
    AwaitingBody,
    /// The body was answered, or the headers said no body follows; trailers may still come.
    Done,
}

/// The state of one ext_proc stream (one HTTP request).
#[derive(Debug, Clone)]
pub struct StreamState {
    request: Phase,
    response: Phase,
    /// Body modes Envoy reported in `protocol_config` (None: not reported).
    request_body_mode: Option<BodySendMode>,
    response_body_mode: Option<BodySendMode>,
    /// Envoy's request id (attribute `request.id`, else the `x-request-id` header).
    pub request_id: String,
    /// The request path without its query string (queries may carry secrets), for logs.
    pub path: String,
    /// What this stream's policy asks for.
    policy: StreamPolicy,
    /// The resource (host + path and query) of a GET or HEAD, when the policy uses resource keys.
    resource: Option<Resource>,
    /// The validator of a resource the cache knows clean, once looked up.
    clean_resource_validator: Option<String>,
    /// The response's status and validator, from its headers.
    response_status: u16,
    response_validator: Option<String>,
}

/// The parts of a policy the state machine needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPolicy {
    pub scan_requests: bool,
    pub scan_responses: bool,
    /// The policy's cache mode is `resource`.
    pub resource_keys: bool,
    /// The policy says the upstream never changes an object under a URL.
    pub immutable: bool,
}

impl StreamPolicy {
    pub fn from_config(policy: &crate::config::PolicyConfig) -> StreamPolicy {
        StreamPolicy {
            scan_requests: policy.scan_requests,
            scan_responses: policy.scan_responses,
            resource_keys: policy.cache_mode == crate::config::CacheMode::Resource,
            immutable: policy.immutable,
        }
    }
}

/// An object named by URL: the resource key's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// `:authority`, lower-case.
    pub host: String,
    /// `:path` with its query (a different query may be a different object).
    pub path_and_query: String,
}

impl StreamState {
    pub fn new(policy: StreamPolicy) -> StreamState {
        StreamState {
            request: Phase::AwaitingHeaders,
            response: Phase::AwaitingHeaders,
            request_body_mode: None,
            response_body_mode: None,
            request_id: String::new(),
            path: String::new(),
            policy,
            resource: None,
            clean_resource_validator: None,
            response_status: 0,
            response_validator: None,
        }
    }

    /// Records that the cache knows this stream's resource as clean under `validator`.
    pub fn record_clean_resource(&mut self, validator: String) {
        self.clean_resource_validator = Some(validator);
    }

    /// The resource and validator under which a verdict on the response body may be stored:
    /// only a whole (200) response to a GET under a resource-key policy, with a validator.
    pub fn resource_to_store(&self) -> Option<(&Resource, &str)> {
        let resource = self.resource.as_ref()?;
        let validator = self.response_validator.as_deref()?;
        (self.response_status == 200).then_some((resource, validator))
    }

    /// True once every message Envoy may send has been answered (nothing is pending).
    pub fn is_complete(&self) -> bool {
        self.request == Phase::Done && self.response == Phase::Done
    }

    fn phase_mut(&mut self, direction: Direction) -> &mut Phase {
        match direction {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        }
    }

    fn body_mode(&self, direction: Direction) -> Option<BodySendMode> {
        match direction {
            Direction::Request => self.request_body_mode,
            Direction::Response => self.response_body_mode,
        }
    }

    fn scans(&self, direction: Direction) -> bool {
        match direction {
            Direction::Request => self.policy.scan_requests,
            Direction::Response => self.policy.scan_responses,
        }
    }
}

/// Handles one message from Envoy.
pub fn on_message(state: &mut StreamState, message: ProcessingRequest) -> Action {
    if let Some(config) = &message.protocol_config {
        state.request_body_mode = BodySendMode::try_from(config.request_body_mode).ok();
        state.response_body_mode = BodySendMode::try_from(config.response_body_mode).ok();
        for direction in [Direction::Request, Direction::Response] {
            if let Some(error) = unsupported_mode(state, direction) {
                return Action::Fail(error);
            }
        }
    }
    let Some(request) = message.request else { return Action::Fail(StreamError::EmptyMessage) };
    let attributes = message.attributes;
    match request {
        Request::RequestHeaders(headers) => on_headers(state, Direction::Request, headers, &attributes),
        Request::ResponseHeaders(headers) => on_headers(state, Direction::Response, headers, &attributes),
        Request::RequestBody(body) => on_body(state, Direction::Request, body.body, body.end_of_stream),
        Request::ResponseBody(body) => on_body(state, Direction::Response, body.body, body.end_of_stream),
        Request::RequestTrailers(_) => on_trailers(state, Direction::Request),
        Request::ResponseTrailers(_) => on_trailers(state, Direction::Response),
    }
}

/// A body mode under which a scan cannot decide before bytes leave Envoy.
fn unsupported_mode(state: &StreamState, direction: Direction) -> Option<StreamError> {
    let mode = state.body_mode(direction)?;
    match mode {
        BodySendMode::None | BodySendMode::Buffered => None,
        // STREAMED releases headers and chunks before a verdict; BUFFERED_PARTIAL sends only the
        // first part of a body. FULL_DUPLEX_STREAMED and GRPC are not handled by this version.
        BodySendMode::Streamed
        | BodySendMode::BufferedPartial
        | BodySendMode::FullDuplexStreamed
        | BodySendMode::Grpc => {
            Some(StreamError::UnsupportedBodyMode { direction, mode: mode.as_str_name().to_string() })
        }
    }
}

fn on_headers(
    state: &mut StreamState,
    direction: Direction,
    headers: HttpHeaders,
    attributes: &Attributes,
) -> Action {
    if direction == Direction::Response && state.request == Phase::AwaitingHeaders {
        return Action::Fail(StreamError::OutOfOrder("response headers before request headers".into()));
    }
    if *state.phase_mut(direction) != Phase::AwaitingHeaders {
        return Action::Fail(StreamError::OutOfOrder(format!("{direction:?} headers twice")));
    }
    let map = headers.headers.unwrap_or_default();
    // A message with headers only never sends its body; that side is then finished.
    *state.phase_mut(direction) = if headers.end_of_stream { Phase::Done } else { Phase::AwaitingBody };
    let remove_headers = control_headers(&map);
    match direction {
        Direction::Request => {
            // Envoy 1.40 sends attributes on the ProcessingRequest; older ones on the headers.
            state.request_id = attribute(attributes, "request.id")
                .or_else(|| attribute(&headers.attributes, "request.id"))
                .or_else(|| header_value(&map, "x-request-id"))
                .unwrap_or_default();
            let path_and_query = header_value(&map, ":path").unwrap_or_default();
            state.path = path_and_query.split('?').next().unwrap_or_default().to_string();
            let method = header_value(&map, ":method").unwrap_or_default();
            let host = header_value(&map, ":authority").unwrap_or_default().to_ascii_lowercase();
            let answer = response::headers_continue(direction, remove_headers);
            if state.policy.resource_keys && (method == "GET" || method == "HEAD") && !host.is_empty() {
                let resource = Resource { host, path_and_query };
                state.resource = Some(resource.clone());
                return Action::LookupResource { resource, answer };
            }
            Action::Reply(answer)
        }
        Direction::Response => {
            state.response_status =
                header_value(&map, ":status").and_then(|status| status.parse().ok()).unwrap_or(0);
            state.response_validator = validator(&map, state.policy.immutable);
            let known_clean = state.clean_resource_validator.is_some()
                && state.clean_resource_validator == state.response_validator
                && state.response_status == 200;
            if known_clean && !headers.end_of_stream {
                // The body will not be sent to clamgate at all.
                state.response = Phase::Done;
                return Action::PassCachedResource { remove_headers };
            }
            Action::Reply(response::headers_continue(direction, remove_headers))
        }
    }
}

/// The validator that ties a cached verdict to one version of a resource: a strong ETag, else
/// Last-Modified with Content-Length; else, only for an immutable upstream, the URL alone.
pub fn validator(headers: &HeaderMap, immutable: bool) -> Option<String> {
    if let Some(etag) = header_value(headers, "etag") {
        // A weak ETag promises equivalent content, not identical bytes.
        if !etag.starts_with("W/") && !etag.is_empty() {
            return Some(format!("etag:{etag}"));
        }
    }
    let last_modified = header_value(headers, "last-modified");
    let length = header_value(headers, "content-length");
    if let (Some(last_modified), Some(length)) = (last_modified, length) {
        return Some(format!("lm:{last_modified};len:{length}"));
    }
    immutable.then(|| "immutable".to_string())
}

fn on_body(state: &mut StreamState, direction: Direction, body: Vec<u8>, end_of_stream: bool) -> Action {
    if *state.phase_mut(direction) != Phase::AwaitingBody {
        return Action::Fail(StreamError::OutOfOrder(format!("{direction:?} body without pending headers")));
    }
    // BUFFERED sends the whole body in one message (end_of_stream is false only when trailers
    // follow). Without a reported mode, only a message that ends the stream is known to be whole.
    let whole = match state.body_mode(direction) {
        Some(BodySendMode::Buffered) => true,
        Some(_) => {
            return Action::Fail(
                unsupported_mode(state, direction).unwrap_or(StreamError::PartialBody(direction)),
            )
        }
        None => end_of_stream,
    };
    if !whole {
        return Action::Fail(StreamError::PartialBody(direction));
    }
    *state.phase_mut(direction) = Phase::Done;
    if state.scans(direction) {
        Action::Scan { direction, body }
    } else {
        Action::PassBody { direction }
    }
}

fn on_trailers(state: &mut StreamState, direction: Direction) -> Action {
    if *state.phase_mut(direction) == Phase::AwaitingHeaders {
        return Action::Fail(StreamError::OutOfOrder(format!("{direction:?} trailers before headers")));
    }
    // Trailers end the direction: with BUFFERED the body was answered before them.
    *state.phase_mut(direction) = Phase::Done;
    Action::Reply(response::trailers_continue(direction))
}

/// Names of `x-clamgate-*` headers present, to be removed.
fn control_headers(map: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = map
        .headers
        .iter()
        .map(|header| header.key.to_ascii_lowercase())
        .filter(|key| key.starts_with(CONTROL_HEADER_PREFIX))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A header's value; Envoy sends `raw_value` and leaves `value` empty, so read both.
fn header_value(map: &HeaderMap, name: &str) -> Option<String> {
    map.headers.iter().find(|header| header.key.eq_ignore_ascii_case(name)).map(|header| {
        if header.raw_value.is_empty() {
            header.value.clone()
        } else {
            String::from_utf8_lossy(&header.raw_value).into_owned()
        }
    })
}

type Attributes = std::collections::HashMap<String, envoy_types::pb::google::protobuf::Struct>;

fn attribute(attributes: &Attributes, name: &str) -> Option<String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let value = attributes.get(ATTRIBUTE_NAMESPACE)?.fields.get(name)?;
    match &value.kind {
        Some(Kind::StringValue(text)) if !text.is_empty() => Some(text.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderValue;
    use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
    use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpTrailers, ProtocolConfiguration};

    const SCAN_BOTH: StreamPolicy =
        StreamPolicy { scan_requests: true, scan_responses: true, resource_keys: false, immutable: false };
    const RESOURCE_KEYS: StreamPolicy = StreamPolicy { resource_keys: true, ..SCAN_BOTH };

    fn headers(pairs: &[(&str, &str)], end_of_stream: bool) -> HttpHeaders {
        HttpHeaders {
            headers: Some(HeaderMap {
                headers: pairs
                    .iter()
                    .map(|(key, value)| HeaderValue {
                        key: key.to_string(),
                        raw_value: value.as_bytes().to_vec(),
                        ..HeaderValue::default()
                    })
                    .collect(),
            }),
            end_of_stream,
            ..HttpHeaders::default()
        }
    }

    fn message(request: Request) -> ProcessingRequest {
        ProcessingRequest { request: Some(request), ..ProcessingRequest::default() }
    }

    fn buffered(request: Request) -> ProcessingRequest {
        ProcessingRequest {
            protocol_config: Some(ProtocolConfiguration {
                request_body_mode: BodySendMode::Buffered as i32,
                response_body_mode: BodySendMode::Buffered as i32,
                ..ProtocolConfiguration::default()
            }),
            ..message(request)
        }
    }

    fn body(bytes: &[u8], end_of_stream: bool) -> HttpBody {
        HttpBody { body: bytes.to_vec(), end_of_stream, ..HttpBody::default() }
    }

    fn removed_headers(action: &Action) -> Vec<String> {
        let Action::Reply(reply) = action else { panic!("expected a reply, got {action:?}") };
        let common = match &reply.response {
            Some(Response::RequestHeaders(h)) | Some(Response::ResponseHeaders(h)) => h.response.clone(),
            other => panic!("expected a headers response, got {other:?}"),
        };
        common.and_then(|c| c.header_mutation).map(|m| m.remove_headers).unwrap_or_default()
    }

    #[test]
    fn a_download_is_headers_then_scan() {
        let mut state = StreamState::new(SCAN_BOTH);
        let action = on_message(
            &mut state,
            buffered(Request::RequestHeaders(headers(
                &[(":path", "/a?token=secret"), ("x-request-id", "r1")],
                true,
            ))),
        );
        assert!(matches!(action, Action::Reply(_)));
        assert_eq!(state.request_id, "r1");
        assert_eq!(state.path, "/a", "the query string must not reach logs");
        assert!(!state.is_complete());
        let action =
            on_message(&mut state, message(Request::ResponseHeaders(headers(&[(":status", "200")], false))));
        assert!(matches!(action, Action::Reply(_)));
        let action = on_message(&mut state, message(Request::ResponseBody(body(b"payload", true))));
        assert_eq!(action, Action::Scan { direction: Direction::Response, body: b"payload".to_vec() });
        assert!(state.is_complete());
    }

    #[test]
    fn an_upload_body_is_scanned() {
        let mut state = StreamState::new(SCAN_BOTH);
        on_message(&mut state, buffered(Request::RequestHeaders(headers(&[(":method", "POST")], false))));
        let action = on_message(&mut state, message(Request::RequestBody(body(b"upload", true))));
        assert_eq!(action, Action::Scan { direction: Direction::Request, body: b"upload".to_vec() });
    }

    #[test]
    fn a_buffered_body_followed_by_trailers_is_whole() {
        let mut state = StreamState::new(SCAN_BOTH);
        on_message(&mut state, buffered(Request::RequestHeaders(headers(&[], false))));
        let action = on_message(&mut state, message(Request::RequestBody(body(b"grpc-web", false))));
        assert!(matches!(action, Action::Scan { .. }));
        let action = on_message(&mut state, message(Request::RequestTrailers(HttpTrailers::default())));
        assert!(matches!(action, Action::Reply(_)));
    }

    #[test]
    fn a_partial_body_with_unknown_mode_fails_the_stream() {
        let mut state = StreamState::new(SCAN_BOTH);
        on_message(&mut state, message(Request::RequestHeaders(headers(&[], false))));
        let action = on_message(&mut state, message(Request::RequestBody(body(b"first part", false))));
        assert_eq!(action, Action::Fail(StreamError::PartialBody(Direction::Request)));
    }

    #[test]
    fn streamed_and_partial_modes_are_refused_at_the_first_message() {
        for mode in [BodySendMode::Streamed, BodySendMode::BufferedPartial, BodySendMode::FullDuplexStreamed]
        {
            let mut state = StreamState::new(SCAN_BOTH);
            let first = ProcessingRequest {
                protocol_config: Some(ProtocolConfiguration {
                    request_body_mode: BodySendMode::Buffered as i32,
                    response_body_mode: mode as i32,
                    ..ProtocolConfiguration::default()
                }),
                ..message(Request::RequestHeaders(headers(&[], true)))
            };
            let action = on_message(&mut state, first);
            assert!(
                matches!(
                    action,
                    Action::Fail(StreamError::UnsupportedBodyMode { direction: Direction::Response, .. })
                ),
                "{mode:?}: {action:?}"
            );
        }
    }

    #[test]
    fn out_of_order_messages_fail_the_stream() {
        let mut state = StreamState::new(SCAN_BOTH);
        let action = on_message(&mut state, message(Request::ResponseBody(body(b"x", true))));
        assert!(matches!(action, Action::Fail(StreamError::OutOfOrder(_))), "{action:?}");

        let mut state = StreamState::new(SCAN_BOTH);
        let action = on_message(&mut state, message(Request::ResponseHeaders(headers(&[], false))));
        assert!(matches!(action, Action::Fail(StreamError::OutOfOrder(_))), "{action:?}");

        let mut state = StreamState::new(SCAN_BOTH);
        on_message(&mut state, buffered(Request::RequestHeaders(headers(&[], true))));
        let action = on_message(&mut state, message(Request::RequestHeaders(headers(&[], true))));
        assert!(matches!(action, Action::Fail(StreamError::OutOfOrder(_))), "{action:?}");

        // A body after a headers-only request.
        let action = on_message(&mut state, message(Request::RequestBody(body(b"x", true))));
        assert!(matches!(action, Action::Fail(StreamError::OutOfOrder(_))), "{action:?}");
    }

    #[test]
    fn an_empty_message_fails_the_stream() {
        let mut state = StreamState::new(SCAN_BOTH);
        assert_eq!(
            on_message(&mut state, ProcessingRequest::default()),
            Action::Fail(StreamError::EmptyMessage)
        );
    }

    #[test]
    fn client_and_upstream_control_headers_are_removed() {
        let mut state = StreamState::new(SCAN_BOTH);
        let action = on_message(
            &mut state,
            buffered(Request::RequestHeaders(headers(
                &[("x-clamgate-verdict", "clean"), ("X-Clamgate-Policy", "off"), ("accept", "*/*")],
                true,
            ))),
        );
        assert_eq!(removed_headers(&action), vec!["x-clamgate-policy", "x-clamgate-verdict"]);
        let action = on_message(
            &mut state,
            message(Request::ResponseHeaders(headers(&[("x-clamgate-verdict", "clean")], false))),
        );
        assert_eq!(removed_headers(&action), vec!["x-clamgate-verdict"]);
    }

    #[test]
    fn a_direction_the_policy_skips_passes_without_scan() {
        let mut state = StreamState::new(StreamPolicy { scan_requests: false, ..SCAN_BOTH });
        on_message(&mut state, buffered(Request::RequestHeaders(headers(&[], false))));
        let action = on_message(&mut state, message(Request::RequestBody(body(b"x", true))));
        assert_eq!(action, Action::PassBody { direction: Direction::Request });
    }

    #[test]
    fn the_request_id_attribute_wins_over_the_header() {
        use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
        let mut fields = std::collections::HashMap::new();
        fields.insert("request.id".to_string(), Value { kind: Some(Kind::StringValue("from-envoy".into())) });
        let request_headers = headers(&[("x-request-id", "from-client")], true);
        let mut first = buffered(Request::RequestHeaders(request_headers));
        first.attributes.insert(ATTRIBUTE_NAMESPACE.to_string(), Struct { fields });
        let mut state = StreamState::new(SCAN_BOTH);
        on_message(&mut state, first);
        assert_eq!(state.request_id, "from-envoy");
    }

    fn get(path: &str) -> ProcessingRequest {
        buffered(Request::RequestHeaders(headers(
            &[(":method", "GET"), (":authority", "Mirror.Example"), (":path", path)],
            true,
        )))
    }

    fn response_headers(pairs: &[(&str, &str)]) -> ProcessingRequest {
        message(Request::ResponseHeaders(headers(pairs, false)))
    }

    #[test]
    fn a_get_under_a_resource_policy_is_looked_up_by_host_and_path() {
        let mut state = StreamState::new(RESOURCE_KEYS);
        let action = on_message(&mut state, get("/pkg/a.tar.gz?v=2"));
        let Action::LookupResource { resource, .. } = action else {
            panic!("expected a lookup, got {action:?}")
        };
        assert_eq!(
            resource,
            Resource { host: "mirror.example".into(), path_and_query: "/pkg/a.tar.gz?v=2".into() }
        );
    }

    #[test]
    fn no_lookup_without_a_resource_policy_or_for_other_methods() {
        let mut state = StreamState::new(SCAN_BOTH);
        assert!(matches!(on_message(&mut state, get("/a")), Action::Reply(_)));
        let mut state = StreamState::new(RESOURCE_KEYS);
        let post = buffered(Request::RequestHeaders(headers(
            &[(":method", "POST"), (":authority", "h"), (":path", "/a")],
            false,
        )));
        assert!(matches!(on_message(&mut state, post), Action::Reply(_)));
    }

    #[test]
    fn a_known_clean_resource_with_the_same_validator_passes_unbuffered() {
        let mut state = StreamState::new(RESOURCE_KEYS);
        on_message(&mut state, get("/a"));
        state.record_clean_resource("etag:\"v1\"".into());
        let action = on_message(
            &mut state,
            response_headers(&[(":status", "200"), ("etag", "\"v1\""), ("x-clamgate-verdict", "x")]),
        );
        assert_eq!(action, Action::PassCachedResource { remove_headers: vec!["x-clamgate-verdict".into()] });
        assert!(state.is_complete(), "no body message may follow");
    }

    #[test]
    fn a_changed_validator_or_a_partial_response_is_scanned() {
        for response in [
            vec![(":status", "200"), ("etag", "\"v2\"")],
            vec![(":status", "206"), ("etag", "\"v1\"")],
            vec![(":status", "200")],
        ] {
            let mut state = StreamState::new(RESOURCE_KEYS);
            on_message(&mut state, get("/a"));
            state.record_clean_resource("etag:\"v1\"".into());
            assert!(
                matches!(on_message(&mut state, response_headers(&response)), Action::Reply(_)),
                "{response:?}"
            );
            let action = on_message(&mut state, message(Request::ResponseBody(body(b"new", true))));
            assert!(matches!(action, Action::Scan { .. }), "{response:?}: {action:?}");
        }
    }

    #[test]
    fn validators_prefer_a_strong_etag_then_last_modified_and_length() {
        let map = |pairs: &[(&str, &str)]| headers(pairs, false).headers.unwrap();
        assert_eq!(validator(&map(&[("etag", "\"abc\"")]), false), Some("etag:\"abc\"".into()));
        assert_eq!(validator(&map(&[("etag", "W/\"abc\"")]), false), None, "a weak ETag is no validator");
        assert_eq!(
            validator(
                &map(&[
                    ("etag", "W/\"x\""),
                    ("last-modified", "Sat, 21 Nov 2026 10:00:00 GMT"),
                    ("content-length", "5")
                ]),
                false
            ),
            Some("lm:Sat, 21 Nov 2026 10:00:00 GMT;len:5".into())
        );
        assert_eq!(
            validator(&map(&[("last-modified", "x")]), false),
            None,
            "Last-Modified alone is not enough"
        );
        assert_eq!(validator(&map(&[]), true), Some("immutable".into()));
        assert_eq!(validator(&map(&[]), false), None);
    }

    #[test]
    fn only_whole_responses_with_a_validator_are_stored_by_resource() {
        let mut state = StreamState::new(RESOURCE_KEYS);
        on_message(&mut state, get("/a"));
        on_message(&mut state, response_headers(&[(":status", "200"), ("etag", "\"v1\"")]));
        let (resource, validator) = state.resource_to_store().expect("storable");
        assert_eq!((resource.path_and_query.as_str(), validator), ("/a", "etag:\"v1\""));

        let mut state = StreamState::new(RESOURCE_KEYS);
        on_message(&mut state, get("/a"));
        on_message(&mut state, response_headers(&[(":status", "206"), ("etag", "\"v1\"")]));
        assert!(state.resource_to_store().is_none());
    }
}
