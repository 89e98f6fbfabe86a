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

/// The attribute namespace Envoy uses for `request_attributes`.
const ATTRIBUTE_NAMESPACE: &str = "envoy.filters.http.ext_proc";

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
    /// Whether the policy scans uploads and downloads.
    scan_requests: bool,
    scan_responses: bool,
}

impl StreamState {
    pub fn new(scan_requests: bool, scan_responses: bool) -> StreamState {
        StreamState {
            request: Phase::AwaitingHeaders,
            response: Phase::AwaitingHeaders,
            request_body_mode: None,
            response_body_mode: None,
            request_id: String::new(),
            path: String::new(),
            scan_requests,
            scan_responses,
        }
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
            Direction::Request => self.scan_requests,
            Direction::Response => self.scan_responses,
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
    match request {
        Request::RequestHeaders(headers) => on_headers(state, Direction::Request, headers),
        Request::ResponseHeaders(headers) => on_headers(state, Direction::Response, headers),
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

fn on_headers(state: &mut StreamState, direction: Direction, headers: HttpHeaders) -> Action {
    if direction == Direction::Response && state.request == Phase::AwaitingHeaders {
        return Action::Fail(StreamError::OutOfOrder("response headers before request headers".into()));
    }
    if *state.phase_mut(direction) != Phase::AwaitingHeaders {
        return Action::Fail(StreamError::OutOfOrder(format!("{direction:?} headers twice")));
    }
    let map = headers.headers.unwrap_or_default();
    if direction == Direction::Request {
        state.request_id = attribute(&headers.attributes, "request.id")
            .or_else(|| header_value(&map, "x-request-id"))
            .unwrap_or_default();
        let path = attribute(&headers.attributes, "request.path")
            .or_else(|| header_value(&map, ":path"))
            .unwrap_or_default();
        state.path = path.split('?').next().unwrap_or_default().to_string();
    }
    // A request with headers only never sends its body; the request side is then finished.
    *state.phase_mut(direction) = if headers.end_of_stream { Phase::Done } else { Phase::AwaitingBody };
    Action::Reply(response::headers_continue(direction, control_headers(&map)))
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

fn attribute(
    attributes: &std::collections::HashMap<String, envoy_types::pb::google::protobuf::Struct>,
    name: &str,
) -> Option<String> {
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
        let mut state = StreamState::new(true, true);
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
        let mut state = StreamState::new(true, true);
        on_message(&mut state, buffered(Request::RequestHeaders(headers(&[(":method", "POST")], false))));
        let action = on_message(&mut state, message(Request::RequestBody(body(b"upload", true))));
        assert_eq!(action, Action::Scan { direction: Direction::Request, body: b"upload".to_vec() });
    }

    #[test]
    fn a_buffered_body_followed_by_trailers_is_whole() {
        let mut state = StreamState::new(true, true);
        on_message(&mut state, buffered(Request::RequestHeaders(headers(&[], false))));
        let action = on_message(&mut state, message(Request::RequestBody(body(b"grpc-web", false))));
        assert!(matches!(action, Action::Scan { .. }));
        let action = on_message(&mut state, message(Request::RequestTrailers(HttpTrailers::default())));
        assert!(matches!(action, Action::Reply(_)));
    }

    #[test]
    fn a_partial_body_with_unknown_mode_fails_the_stream() {
        let mut state = StreamState::new(true, true);
        on_message(&mut state, message(Request::RequestHeaders(headers(&[], false))));
        let action = on_message(&mut state, message(Request::RequestBody(body(b"first part", false))));
        assert_eq!(action, Action::Fail(StreamError::PartialBody(Direction::Request)));
    }

    #[test]
    fn streamed_and_partial_modes_are_refused_at_the_first_message() {
        for mode in [BodySendMode::Streamed, BodySendMode::BufferedPartial, BodySendMode::FullDuplexStreamed]
        {
            let mut state = StreamState::new(true, true);
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
        let mut state = StreamState::new(true, true);
        let action = on_message(&mut state, message(Request::ResponseBody(body(b"x", true))));
        assert!(matches!(action, Action::Fail(StreamError::OutOfOrder(_))), "{action:?}");

        let mut state = StreamState::new(true, true);
        let action = on_message(&mut state, message(Request::ResponseHeaders(headers(&[], false))));
        assert!(matches!(action, Action::Fail(StreamError::OutOfOrder(_))), "{action:?}");

        let mut state = StreamState::new(true, true);
        on_message(&mut state, buffered(Request::RequestHeaders(headers(&[], true))));
        let action = on_message(&mut state, message(Request::RequestHeaders(headers(&[], true))));
        assert!(matches!(action, Action::Fail(StreamError::OutOfOrder(_))), "{action:?}");

        // A body after a headers-only request.
        let action = on_message(&mut state, message(Request::RequestBody(body(b"x", true))));
        assert!(matches!(action, Action::Fail(StreamError::OutOfOrder(_))), "{action:?}");
    }

    #[test]
    fn an_empty_message_fails_the_stream() {
        let mut state = StreamState::new(true, true);
        assert_eq!(
            on_message(&mut state, ProcessingRequest::default()),
            Action::Fail(StreamError::EmptyMessage)
        );
    }

    #[test]
    fn client_and_upstream_control_headers_are_removed() {
        let mut state = StreamState::new(true, true);
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
        let mut state = StreamState::new(false, true);
        on_message(&mut state, buffered(Request::RequestHeaders(headers(&[], false))));
        let action = on_message(&mut state, message(Request::RequestBody(body(b"x", true))));
        assert_eq!(action, Action::PassBody { direction: Direction::Request });
    }

    #[test]
    fn the_request_id_attribute_wins_over_the_header() {
        use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
        let mut fields = std::collections::HashMap::new();
        fields.insert("request.id".to_string(), Value { kind: Some(Kind::StringValue("from-envoy".into())) });
        let mut request_headers = headers(&[("x-request-id", "from-client")], true);
        request_headers.attributes.insert(ATTRIBUTE_NAMESPACE.to_string(), Struct { fields });
        let mut state = StreamState::new(true, true);
        on_message(&mut state, buffered(Request::RequestHeaders(request_headers)));
        assert_eq!(state.request_id, "from-envoy");
    }
}
