//! The ext_proc stream as a pure state machine: `on_message` takes one message from Envoy and says
//! what to do, without gRPC or I/O, so every ordering rule is unit-tested.
//!
//! Envoy (outside FULL_DUPLEX mode) expects exactly one answer per message, in order. A message
//! that breaks that order, or a body mode clamgate cannot scan safely, ends the stream with an
//! error status: Envoy then answers `status_on_error` and the body never passes unscanned.
//!
//! Body modes (README, "Bodies of any size"): every scanned download switches to
//! FULL_DUPLEX_STREAMED with a `mode_override` in the answer to the request headers, before any
//! response byte exists. The response headers then wait, unanswered, while the body streams to
//! clamgate, so a block is still a clean 409. Uploads are FULL_DUPLEX by the route's config
//! (`ExtProcPerRoute` in the shipped `envoy/envoy.yaml`): their request headers are held the same
//! way, and the answer sent when they are released switches the response too. A BUFFERED upload
//! (a route without that setting) and its response get no override: an override at the request
//! headers raced with body bytes Envoy had already buffered (seen as 504s), so such uploads are
//! capped by Envoy's buffer limit (413, never a pass). Scanned responses never pass partial
//! content: `Range` is removed from requests, and a 206 is `Unscanned { partial_content }`, unless
//! the resource is known clean. A body in a `Content-Encoding` clamgate cannot decode is
//! `Unscanned { unsupported_encoding }` at its headers.

use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingRequest, ProcessingResponse};

use crate::cache::{vary_names, ContentKey, KnownResource, Resource, ResourceId, ResourceVersion};
use crate::decode::{parse_content_encoding, Encoding};
use crate::policy::{Decision, Direction};
use crate::scanner::{ResourceLookup, ScanReport};
use crate::skip::{starts_like, BodyHeaders, SkipRule, SNIFF_BYTES};
use crate::verdict::UnscannedReason;
use std::sync::Arc;

use super::error::StreamError;
use super::response;

/// Headers clamgate owns. Any a client or an upstream sends are removed.
pub const CONTROL_HEADER_PREFIX: &str = "x-clamgate-";

use super::route_policy::ATTRIBUTE_NAMESPACE;

/// One thing the stream task must do; [`on_message`] and the functions that take an outcome back
/// ([`on_resource_lookup`], [`decided`]) return them in order.
// Short-lived, one or two per message; boxing the reply would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Effect {
    /// Send this answer to Envoy.
    Reply(ProcessingResponse),
    /// Look up the resource key of this request, then hand the outcome to
    /// [`on_resource_lookup`].
    LookupResource { resource: Resource },
    /// The response carries the validator of a resource known clean: let its body through
    /// unbuffered (mode_override to body mode NONE), removing these control headers, with the
    /// clean verdict header.
    PassCachedResource { remove_headers: Vec<String> },
    /// The response carries the validator of a resource known clean and the policy verifies hits
    /// (its body was switched to FULL_DUPLEX): send `headers_answer` (with the clean verdict
    /// header) at once; the pieces come back as [`Effect::Reply`] or, with `verify`,
    /// [`Effect::VerifyPiece`] (a 206 part is not verified).
    EchoCachedResource { headers_answer: ProcessingResponse, verify: Option<ContentKey> },
    /// Let the policy decide on `report` (a cached verdict), then hand the decision to
    /// [`decided`] with `then`.
    Decide { direction: Direction, report: Box<ScanReport>, then: Then },
    /// Let the policy decide on a body that will not be scanned (`reason`, `bytes` seen), then
    /// hand the decision to [`decided`] with `then`.
    DecideUnscanned { direction: Direction, reason: UnscannedReason, bytes: u64, then: Then },
    /// Scan this BUFFERED body (held like any other while it is scanned), store the verdict
    /// under `store_as` too (a response known by its resource), then decide and hand the decision
    /// to [`decided`] with [`Then::AnswerBody`].
    ScanBody { direction: Direction, body: Vec<u8>, store_as: Option<ResourceVersion> },
    /// Hold this piece of `direction`'s FULL_DUPLEX body (nothing is answered yet).
    HoldPiece { direction: Direction, body: Vec<u8> },
    /// The held body of `direction` is whole: scan it (storing the verdict under `store_as` too),
    /// decide, and hand the decision to [`decided`] with [`Then::ReleaseHeld`] and these
    /// `trailers` (the names to remove from the trailers that ended it; None: its last piece
    /// ended it).
    ScanHeld { direction: Direction, trailers: Option<Vec<String>>, store_as: Option<ResourceVersion> },
    /// Send `headers_answer` (if the headers were held) and the held body of `direction` back in
    /// pieces, the last with `end_of_stream` when `complete`; the held body is then freed.
    SendHeld { direction: Direction, headers_answer: Option<ProcessingResponse>, complete: bool },
    /// Free the held body of `direction` (it was refused).
    DropHeld { direction: Direction },
    /// The first bytes of a body a skip rule matched by its headers were checked against
    /// `media_type`: count it (`skipped`: they matched, and the body goes back unscanned, marked
    /// `x-clamgate-verdict: skipped`; else it is scanned as usual).
    CountSkip { direction: Direction, media_type: &'static str, skipped: bool },
    /// A piece of a verified resource hit: hash it, compare the whole with the entry at
    /// `end_of_stream` (before the last piece goes), and send it straight back.
    VerifyPiece { body: Vec<u8>, end_of_stream: bool },
    /// Trailers end a verified resource hit: compare what passed with the entry.
    FinishVerification,
    /// End the stream with an error status: never answer, never end OK.
    Fail(StreamError),
}

/// What a decision is for, and so what follows it (see [`decided`]).
// Short-lived like Effect; boxing the pending answer would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Then {
    /// The request's resource is known infected without a real validator: refuse before the
    /// upstream is contacted, or (report only) answer the request headers as usual.
    AnswerRequestHeaders,
    /// The response is the version the cache knows infected: refuse it before any body byte
    /// passes, or (report only) carry on with `otherwise`, the usual effects for its headers.
    AnswerResponseHeaders { otherwise: Vec<Effect> },
    /// A body known from its headers not to be scanned: refuse, or send `if_allowed` (with the
    /// verdict header) and, if `echo`, every FULL_DUPLEX piece straight back.
    AnswerUnscannable { direction: Direction, if_allowed: ProcessingResponse, echo: bool },
    /// A BUFFERED body: answer it with the decision.
    AnswerBody { direction: Direction },
    /// A held body, whole: refuse, or send it back (and answer its `trailers`).
    ReleaseHeld { direction: Direction, trailers: Option<Vec<String>> },
    /// A held body grew past `max_scan_bytes` with `piece`: refuse, or send what was held, then
    /// `piece`, and every later piece straight back.
    ReleaseTooLarge { direction: Direction, piece: Vec<u8>, end_of_stream: bool },
}

/// What clamgate does with one direction's FULL_DUPLEX body.
// Two per stream, for its lifetime: the held headers' answer inline costs less than a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
enum Flow {
    /// No FULL_DUPLEX body announced: a piece that comes anyway (a body switched to FULL_DUPLEX
    /// by clamgate's override, whose headers were answered already) is held.
    Unset,
    /// Held whole until its end, then scanned and answered. `headers_answer`: the answer the held
    /// headers get when released (None: answered already). `bytes`: held so far. `sniff`: a body
    /// the policy's skip rule may skip, until its first bytes are checked.
    Holding { headers_answer: Option<ProcessingResponse>, bytes: u64, sniff: Option<Sniff> },
    /// Sent straight back piece by piece (not scanned by policy, or allowed unscanned).
    Echoing,
    /// A resource-cache hit sent straight back, hashed on the way and compared at its end.
    Verifying,
    /// Answered already (a block, or the whole body was sent back): later pieces are ignored.
    Answered,
}

/// A body that a skip rule matched by its headers: its first bytes, gathered until there are
/// [`SNIFF_BYTES`] of them (or the body ends), decide whether it starts like `media_type`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sniff {
    media_type: &'static str,
    first: Vec<u8>,
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
    /// The client's `Accept`, joined if sent several times: which refusal format it prefers.
    pub accept: Option<String>,
    /// What this stream's policy asks for.
    policy: StreamPolicy,
    /// The resource (scheme, host, port, path and query, request headers) of a GET or HEAD,
    /// when the policy uses resource keys.
    resource: Option<Resource>,
    /// What the cache knows clean about this stream's resource, once looked up.
    clean_resource: Option<KnownResource>,
    /// What the cache knows infected about it (under a real validator), with the cached report.
    infected_resource: Option<(KnownResource, ScanReport)>,
    /// The response's status and validator, from its headers.
    response_status: u16,
    response_validator: Option<String>,
    /// The response's `Vary` names (lower case, sorted); None for `Vary: *`.
    response_vary: Option<Vec<String>>,
    /// The request headers, kept until their answer is built ([`request_headers_answer`]).
    pending_request: Option<PendingRequest>,
    /// A direction whose body passes unscanned by policy (allowed `Unscannable`).
    pass_unscanned: [bool; 2],
    /// The upload's `multipart/*` boundary (None: not multipart; Err: multipart that cannot be
    /// split, why), from its `Content-Type`.
    request_multipart: Option<Result<String, String>>,
    /// Each direction's `Content-Encoding`, in the order applied (empty: not encoded).
    encodings: [Vec<Encoding>; 2],
    /// The media type by which the skip rule matched each direction's headers (its first bytes
    /// are still to be checked).
    skip_candidate: [Option<&'static str>; 2],
    /// What happens to each direction's FULL_DUPLEX body pieces.
    flow: [Flow; 2],
}

/// What the answer to the request headers depends on.
#[derive(Debug, Clone)]
struct PendingRequest {
    remove_headers: Vec<String>,
    /// The request carries a body (an upload).
    has_body: bool,
    method: String,
    has_range: bool,
}

/// The parts of a policy the state machine needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPolicy {
    pub scan_requests: bool,
    pub scan_responses: bool,
    /// The policy's cache mode is `resource`.
    pub resource_keys: bool,
    /// The policy says the upstream never changes an object under a URL.
    pub immutable: bool,
    /// Stream a resource-cache hit's body through clamgate and compare its SHA-256 with the
    /// entry's (`verify_resource_hits`).
    pub verify_resource_hits: bool,
    /// Bodies above this are not scanned (`Unscanned { too_large }`).
    pub max_scan_bytes: u64,
    /// Bodies this rule matches, by their headers and first bytes, are not scanned.
    pub skip: Option<Arc<SkipRule>>,
    /// Mark answers with `x-clamgate-verdict` (here: `skipped`).
    pub verdict_header: bool,
}

impl StreamPolicy {
    pub fn of(policy: &crate::policy::Policy, max_scan_bytes: u64) -> StreamPolicy {
        let rules = &policy.rules;
        StreamPolicy {
            scan_requests: rules.scan_requests,
            scan_responses: rules.scan_responses,
            resource_keys: rules.cache_mode == crate::config::CacheMode::Resource,
            immutable: rules.immutable,
            verify_resource_hits: rules.verify_resource_hits,
            max_scan_bytes,
            skip: policy.skip.clone(),
            verdict_header: policy.answers.verdict_header,
        }
    }
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
            accept: None,
            policy,
            resource: None,
            request_multipart: None,
            clean_resource: None,
            infected_resource: None,
            response_status: 0,
            response_validator: None,
            response_vary: Some(Vec::new()),
            pending_request: None,
            pass_unscanned: [false; 2],
            encodings: [Vec::new(), Vec::new()],
            skip_candidate: [None, None],
            flow: [Flow::Unset, Flow::Unset],
        }
    }

    /// Ends holding `direction`'s body (its flow becomes `next`): the held headers' answer, if
    /// they were held, with the verdict header added.
    fn release_held(
        &mut self,
        direction: Direction,
        next: Flow,
        verdict_header: Option<&str>,
    ) -> Option<ProcessingResponse> {
        match std::mem::replace(&mut self.flow[direction as usize], next) {
            Flow::Holding { headers_answer, .. } => {
                headers_answer.map(|answer| response::with_verdict_header(answer, verdict_header))
            }
            _ => None,
        }
    }

    /// Whether a FULL_DUPLEX body of `direction` is being held (Envoy owes its end).
    pub fn is_holding(&self, direction: Direction) -> bool {
        matches!(self.flow[direction as usize], Flow::Holding { .. })
    }

    /// The `Content-Encoding` of `direction`'s body, in the order applied: what clamgate decodes
    /// before clamd sees the body (the client still gets the encoded bytes).
    pub fn encodings(&self, direction: Direction) -> &[Encoding] {
        &self.encodings[direction as usize]
    }

    /// For an upload declared `multipart/*`: its boundary, or why it cannot be split.
    pub fn multipart(&self, direction: Direction) -> Option<&Result<String, String>> {
        match direction {
            Direction::Request => self.request_multipart.as_ref(),
            Direction::Response => None,
        }
    }

    /// Whether clamgate holds `direction`'s FULL_DUPLEX headers and body (scanned, not finished).
    fn holds(&self, direction: Direction) -> bool {
        let phase = match direction {
            Direction::Request => self.request,
            Direction::Response => self.response,
        };
        phase == Phase::AwaitingBody && self.is_full_duplex(direction) && self.scans(direction)
    }

    /// The body mode in force for `direction` (after clamgate's own `mode_override`).
    pub fn is_full_duplex(&self, direction: Direction) -> bool {
        self.body_mode(direction) == Some(BodySendMode::FullDuplexStreamed)
    }

    /// This stream's resource (None unless the policy uses resource keys and the request is a
    /// GET or HEAD with a sound identity).
    pub fn resource(&self) -> Option<&Resource> {
        self.resource.as_ref()
    }

    /// The response's validator, once its headers were seen.
    pub fn response_validator(&self) -> Option<&str> {
        self.response_validator.as_deref()
    }

    /// The resource version under which a verdict on `direction`'s body is stored: only a whole
    /// (200) response to a GET under a resource-key policy, with a validator, and without
    /// `Vary: *`.
    fn store_as(&self, direction: Direction) -> Option<ResourceVersion> {
        let resource = self.resource.as_ref()?;
        let validator = self.response_validator.as_deref()?;
        let vary = self.response_vary.as_deref()?;
        (direction == Direction::Response && self.response_status == 200).then(|| ResourceVersion {
            resource: resource.clone(),
            validator: validator.to_string(),
            vary: vary.to_vec(),
        })
    }

    /// Whether the response (its headers seen) is the version `known` describes: the same
    /// validator and the same `Vary` names.
    fn response_is(&self, known: &KnownResource) -> bool {
        self.response_validator.as_deref() == Some(known.validator.as_str())
            && self.response_vary.as_deref() == Some(known.vary.as_slice())
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

    fn set_body_mode(&mut self, direction: Direction, mode: BodySendMode) {
        match direction {
            Direction::Request => self.request_body_mode = Some(mode),
            Direction::Response => self.response_body_mode = Some(mode),
        }
    }

    fn scans(&self, direction: Direction) -> bool {
        let by_policy = match direction {
            Direction::Request => self.policy.scan_requests,
            Direction::Response => self.policy.scan_responses,
        };
        by_policy && !self.pass_unscanned[direction as usize]
    }
}

/// Handles one message from Envoy: what to do, in order (nothing, while a FULL_DUPLEX body is
/// held).
pub fn on_message(state: &mut StreamState, message: ProcessingRequest) -> Vec<Effect> {
    if let Some(config) = &message.protocol_config {
        state.request_body_mode = BodySendMode::try_from(config.request_body_mode).ok();
        state.response_body_mode = BodySendMode::try_from(config.response_body_mode).ok();
        for direction in [Direction::Request, Direction::Response] {
            if let Some(error) = unsupported_mode(state, direction) {
                return vec![Effect::Fail(error)];
            }
        }
    }
    if message.observability_mode && (state.policy.scan_requests || state.policy.scan_responses) {
        // Envoy neither waits for nor applies an answer: a scan could never block anything.
        return vec![Effect::Fail(StreamError::ObservabilityMode)];
    }
    let Some(request) = message.request else { return vec![Effect::Fail(StreamError::EmptyMessage)] };
    let attributes = message.attributes;
    match request {
        Request::RequestHeaders(headers) => on_headers(state, Direction::Request, headers, &attributes),
        Request::ResponseHeaders(headers) => on_headers(state, Direction::Response, headers, &attributes),
        Request::RequestBody(body) => on_body(state, Direction::Request, body.body, body.end_of_stream),
        Request::ResponseBody(body) => on_body(state, Direction::Response, body.body, body.end_of_stream),
        Request::RequestTrailers(trailers) => on_trailers(state, Direction::Request, trailers.trailers),
        Request::ResponseTrailers(trailers) => on_trailers(state, Direction::Response, trailers.trailers),
    }
}

/// A body mode under which a scan cannot decide before bytes leave Envoy.
fn unsupported_mode(state: &StreamState, direction: Direction) -> Option<StreamError> {
    let mode = state.body_mode(direction)?;
    match mode {
        BodySendMode::None | BodySendMode::Buffered | BodySendMode::FullDuplexStreamed => None,
        // STREAMED releases headers and chunks before a verdict; BUFFERED_PARTIAL sends only the
        // first part of a body. GRPC (message by message) is not handled by this version.
        BodySendMode::Streamed | BodySendMode::BufferedPartial | BodySendMode::Grpc => {
            Some(StreamError::UnsupportedBodyMode { direction, mode: mode.as_str_name().to_string() })
        }
    }
}

fn on_headers(
    state: &mut StreamState,
    direction: Direction,
    headers: HttpHeaders,
    attributes: &Attributes,
) -> Vec<Effect> {
    if direction == Direction::Response && state.request == Phase::AwaitingHeaders {
        return vec![Effect::Fail(StreamError::OutOfOrder("response headers before request headers".into()))];
    }
    if direction == Direction::Response && state.holds(Direction::Request) {
        // The request headers are unanswered, so Envoy has not contacted the upstream.
        return vec![Effect::Fail(StreamError::OutOfOrder(
            "response headers while the request is held".into(),
        ))];
    }
    if *state.phase_mut(direction) != Phase::AwaitingHeaders {
        return vec![Effect::Fail(StreamError::OutOfOrder(format!("{direction:?} headers twice")))];
    }
    let map = headers.headers.unwrap_or_default();
    // A message with headers only never sends its body; that side is then finished.
    *state.phase_mut(direction) = if headers.end_of_stream { Phase::Done } else { Phase::AwaitingBody };
    let remove_headers = control_headers(&map);
    let encoding_values = header_values(&map, "content-encoding");
    let encoding_values: Vec<&str> = encoding_values.iter().map(String::as_str).collect();
    let encodings = parse_content_encoding(&encoding_values);
    state.encodings[direction as usize] = encodings.clone().unwrap_or_default();
    // Known from the headers: a body in an encoding clamgate cannot decode is never scanned.
    let undecodable = encodings.is_err() && state.scans(direction) && !headers.end_of_stream;
    let encoded = !matches!(&encodings, Ok(applied) if applied.is_empty());
    match direction {
        Direction::Request => {
            // Envoy 1.40 sends attributes on the ProcessingRequest; older ones on the headers.
            state.request_id = attribute(attributes, "request.id")
                .or_else(|| attribute(&headers.attributes, "request.id"))
                .or_else(|| header_value(&map, "x-request-id"))
                .unwrap_or_default();
            let path_and_query = header_value(&map, ":path").unwrap_or_default();
            state.path = path_and_query.split('?').next().unwrap_or_default().to_string();
            let accept = header_values(&map, "accept");
            state.accept = (!accept.is_empty()).then(|| accept.join(", "));
            let method = header_value(&map, ":method").unwrap_or_default();
            let scheme = header_value(&map, ":scheme").unwrap_or_default();
            let authority = header_value(&map, ":authority").unwrap_or_default();
            let content_length = content_length(&map);
            let has_body = !headers.end_of_stream && content_length != Some(0);
            state.skip_candidate[Direction::Request as usize] =
                skip_candidate(state, Direction::Request, &map, content_length, encoded);
            // Only an upload is split into parts.
            state.request_multipart = if has_body { request_multipart(&map) } else { None };
            // The request headers are the first message: the body modes are still the ones Envoy
            // reported (its configuration), not clamgate's override. NONE for a direction the
            // policy scans would pass that body unscanned without a word: the route or filter is
            // misconfigured. A request without a body has nothing to scan; a HEAD gets no
            // response body.
            if state.scans(Direction::Request)
                && has_body
                && state.request_body_mode == Some(BodySendMode::None)
            {
                return vec![Effect::Fail(StreamError::BodyModeNone(Direction::Request))];
            }
            if state.scans(Direction::Response)
                && method != "HEAD"
                && state.response_body_mode == Some(BodySendMode::None)
            {
                return vec![Effect::Fail(StreamError::BodyModeNone(Direction::Response))];
            }
            state.pending_request = Some(PendingRequest {
                remove_headers,
                has_body,
                method: method.clone(),
                has_range: header_value(&map, "range").is_some() || header_value(&map, "if-range").is_some(),
            });
            if state.is_full_duplex(Direction::Request) && has_body {
                // FULL_DUPLEX uploads (the shipped route config): the request headers wait too,
                // and are answered as usual once the body is scanned.
                let unscannable = undecodable.then_some(UnscannedReason::UnsupportedEncoding);
                let headers_answer = request_headers_answer(state);
                return duplex_headers(
                    state,
                    Direction::Request,
                    headers_answer,
                    unscannable,
                    content_length,
                );
            }
            if state.scans(Direction::Request) && has_body {
                let too_large = content_length.filter(|length| *length > state.policy.max_scan_bytes);
                let reason = match (undecodable, too_large) {
                    (true, _) => Some(UnscannedReason::UnsupportedEncoding),
                    (false, Some(_)) => Some(UnscannedReason::TooLarge),
                    (false, None) => None,
                };
                if let Some(reason) = reason {
                    // Known before any byte of the body moves.
                    let if_allowed = pass_request_unscanned(state);
                    let then =
                        Then::AnswerUnscannable { direction: Direction::Request, if_allowed, echo: false };
                    let bytes = content_length.unwrap_or(0);
                    return vec![Effect::DecideUnscanned {
                        direction: Direction::Request,
                        reason,
                        bytes,
                        then,
                    }];
                }
            }
            let id = (state.policy.resource_keys && (method == "GET" || method == "HEAD"))
                .then(|| ResourceId::from_request(&scheme, &authority, &path_and_query))
                .flatten();
            if let Some(id) = id {
                let resource = Resource { id, request_headers: request_headers(&map) };
                state.resource = Some(resource.clone());
                return vec![Effect::LookupResource { resource }];
            }
            vec![Effect::Reply(request_headers_answer(state))]
        }
        Direction::Response => {
            state.response_status =
                header_value(&map, ":status").and_then(|status| status.parse().ok()).unwrap_or(0);
            state.response_validator = validator(&map, state.policy.immutable);
            state.response_vary = vary_names(&header_values(&map, "vary"));
            state.skip_candidate[Direction::Response as usize] =
                skip_candidate(state, Direction::Response, &map, content_length(&map), encoded);
            let known_infected =
                state.infected_resource.as_ref().is_some_and(|(known, _)| state.response_is(known));
            let otherwise =
                on_response_headers(state, map, headers.end_of_stream, remove_headers, undecodable);
            match state.infected_resource.take() {
                // The same version the cache knows infected, whatever the status (a 206 is part of
                // it; a 304 confirms the client's copy is that version).
                Some((_, report)) if known_infected => vec![Effect::Decide {
                    direction: Direction::Response,
                    report: Box::new(report),
                    then: Then::AnswerResponseHeaders { otherwise },
                }],
                _ => otherwise,
            }
        }
    }
}

/// The usual effects of the response headers (`state` has their status, validator and Vary).
fn on_response_headers(
    state: &mut StreamState,
    map: HeaderMap,
    end_of_stream: bool,
    remove_headers: Vec<String>,
    undecodable: bool,
) -> Vec<Effect> {
    let direction = Direction::Response;
    let known_clean = state.clean_resource.as_ref().is_some_and(|known| state.response_is(known))
        && matches!(state.response_status, 200 | 206);
    if known_clean && !end_of_stream && !state.is_full_duplex(direction) {
        // The body will not be sent to clamgate at all.
        state.response = Phase::Done;
        return vec![Effect::PassCachedResource { remove_headers }];
    }
    if known_clean && !end_of_stream && state.policy.verify_resource_hits {
        // A verified hit (`verify_resource_hits`): the body was switched to FULL_DUPLEX at the
        // request headers and streams back through clamgate as it arrives. A part (206) cannot
        // be compared with the whole object's digest.
        let verify =
            state.clean_resource.as_ref().map(|known| known.content).filter(|_| state.response_status == 200);
        state.flow[direction as usize] = if verify.is_some() { Flow::Verifying } else { Flow::Echoing };
        let headers_answer = response::headers_continue(direction, remove_headers);
        return vec![Effect::EchoCachedResource { headers_answer, verify }];
    }
    if end_of_stream {
        return vec![Effect::Reply(response::headers_continue(direction, remove_headers))];
    }
    let unscannable = if state.scans(direction) && state.response_status == 206 {
        // Part of an object is not the object: never scanned, never passed as scanned.
        Some(UnscannedReason::PartialContent)
    } else {
        undecodable.then_some(UnscannedReason::UnsupportedEncoding)
    };
    if let Some(reason) = unscannable {
        let echo = state.is_full_duplex(direction);
        let if_allowed = response::headers_continue(direction, remove_headers);
        let bytes = content_length(&map).unwrap_or(0);
        let then = Then::AnswerUnscannable { direction, if_allowed, echo };
        return vec![Effect::DecideUnscanned { direction, reason, bytes, then }];
    }
    if state.is_full_duplex(direction) {
        let headers_answer = response::headers_continue(direction, remove_headers);
        return duplex_headers(state, direction, headers_answer, None, content_length(&map));
    }
    vec![Effect::Reply(response::headers_continue(direction, remove_headers))]
}

/// Headers of a FULL_DUPLEX body: hold them (nothing is answered until the body's end), refuse
/// a body that cannot be scanned (`unscannable`, or too large by its `content-length`), or echo a
/// body the policy does not scan.
fn duplex_headers(
    state: &mut StreamState,
    direction: Direction,
    headers_answer: ProcessingResponse,
    unscannable: Option<UnscannedReason>,
    content_length: Option<u64>,
) -> Vec<Effect> {
    let scans = state.scans(direction);
    let too_large = content_length.filter(|length| *length > state.policy.max_scan_bytes);
    let sniff =
        state.skip_candidate[direction as usize].map(|media_type| Sniff { media_type, first: Vec::new() });
    // A body the skip rule may skip is held until its first bytes say (it is scanned, or found
    // too large, as usual if they do not match).
    let too_large = too_large.filter(|_| sniff.is_none());
    let reason = unscannable.or(too_large.map(|_| UnscannedReason::TooLarge));
    match reason {
        _ if !scans => {
            state.flow[direction as usize] = Flow::Echoing;
            vec![Effect::Reply(headers_answer)]
        }
        Some(reason) => {
            let then = Then::AnswerUnscannable { direction, if_allowed: headers_answer, echo: true };
            vec![Effect::DecideUnscanned { direction, reason, bytes: content_length.unwrap_or(0), then }]
        }
        None => {
            state.flow[direction as usize] =
                Flow::Holding { headers_answer: Some(headers_answer), bytes: 0, sniff };
            Vec::new()
        }
    }
}

/// The answer to the request headers, once the resource lookup (if any) is done: removes control
/// headers (and `Range` where the response is scanned), and switches every scanned download to
/// FULL_DUPLEX (its size is unknown yet, and no byte of it exists, so nothing is in flight).
pub fn request_headers_answer(state: &mut StreamState) -> ProcessingResponse {
    let pending = state.pending_request.take().unwrap_or(PendingRequest {
        remove_headers: Vec::new(),
        has_body: false,
        method: String::new(),
        has_range: false,
    });
    let known_clean = state.clean_resource.is_some();
    let mut remove_headers = pending.remove_headers;
    let scans_response = state.scans(Direction::Response) && !known_clean;
    if scans_response && pending.has_range {
        // The whole object is fetched and scanned; the client gets it whole (200).
        remove_headers.extend(["range".to_string(), "if-range".to_string()]);
    }
    // A known-clean object whose hits are verified streams through clamgate like a scanned one
    // (it keeps its Range: a part passes unverified, as the policy chose).
    let verifies_hit = known_clean && state.policy.verify_resource_hits && state.scans(Direction::Response);
    // Not for a BUFFERED request with a body: an override re-applies the request's mode while
    // Envoy is buffering it, and a body over Envoy's limit then stalled until message_timeout
    // (504) instead of Envoy's 413. A FULL_DUPLEX upload is held by clamgate, so its answer
    // (sent after the body) may switch the response too.
    let buffering_upload = pending.has_body && !state.is_full_duplex(Direction::Request);
    let stream_response = (scans_response || verifies_hit) && pending.method != "HEAD" && !buffering_upload;
    let request_mode = state.request_body_mode;
    let response_mode = if state.policy.scan_responses || buffering_upload {
        upgrade(state.response_body_mode, stream_response)
    } else {
        // Not scanned by policy: the body need not pass through clamgate at all (and BUFFERED
        // would cap it at Envoy's buffer limit).
        state.response_body_mode.map(|_| BodySendMode::None)
    };
    let answer = response::headers_continue(Direction::Request, remove_headers);
    match (request_mode, response_mode) {
        (Some(request), Some(response))
            if Some(request) != state.request_body_mode || Some(response) != state.response_body_mode =>
        {
            state.set_body_mode(Direction::Request, request);
            state.set_body_mode(Direction::Response, response);
            response::with_body_modes(answer, request, response)
        }
        _ => answer,
    }
}

/// The answer that lets an upload too large to scan through (the policy allows it): its body
/// goes to the upstream without passing through clamgate (body mode NONE).
fn pass_request_unscanned(state: &mut StreamState) -> ProcessingResponse {
    state.pass_unscanned[Direction::Request as usize] = true;
    let mut answer = request_headers_answer(state);
    let response_mode = state.response_body_mode;
    if let (Some(_), Some(response)) = (state.request_body_mode, response_mode) {
        state.set_body_mode(Direction::Request, BodySendMode::None);
        answer = response::with_body_modes(answer, BodySendMode::None, response);
    }
    answer
}

/// FULL_DUPLEX_STREAMED in place of a configured BUFFERED mode, when `wanted`. Other configured
/// modes (NONE: not sent; FULL_DUPLEX already) stay as they are.
fn upgrade(configured: Option<BodySendMode>, wanted: bool) -> Option<BodySendMode> {
    match configured {
        Some(BodySendMode::Buffered) if wanted => Some(BodySendMode::FullDuplexStreamed),
        other => other,
    }
}

/// The media type by which the policy's skip rule matches `direction`'s headers, if it does and
/// the body is scanned otherwise (its first bytes are checked next).
fn skip_candidate(
    state: &StreamState,
    direction: Direction,
    map: &HeaderMap,
    content_length: Option<u64>,
    encoded: bool,
) -> Option<&'static str> {
    let rule = state.policy.skip.as_ref().filter(|_| state.scans(direction))?;
    let content_types = header_values(map, "content-type");
    rule.candidate(BodyHeaders {
        direction,
        content_types: &content_types,
        path: &state.path,
        content_length,
        encoded,
    })
}

/// `content-length`, when present and a number.
fn content_length(map: &HeaderMap) -> Option<u64> {
    header_value(map, "content-length").and_then(|value| value.trim().parse().ok())
}

/// The validator that ties a cached verdict to one version of a resource: a strong ETag, else
/// Last-Modified with Content-Length; else, only for an immutable upstream, the URL alone.
pub fn validator(headers: &HeaderMap, immutable: bool) -> Option<String> {
    crate::cache::validator_of(|name| header_value(headers, name), immutable)
}

fn on_body(state: &mut StreamState, direction: Direction, body: Vec<u8>, end_of_stream: bool) -> Vec<Effect> {
    if *state.phase_mut(direction) != Phase::AwaitingBody {
        let error = StreamError::OutOfOrder(format!("{direction:?} body without pending headers"));
        return vec![Effect::Fail(error)];
    }
    if state.is_full_duplex(direction) {
        if end_of_stream {
            *state.phase_mut(direction) = Phase::Done;
        }
        return on_piece(state, direction, body, end_of_stream);
    }
    // BUFFERED sends the whole body in one message (end_of_stream is false only when trailers
    // follow). Without a reported mode, only a message that ends the stream is known to be whole.
    let whole = match state.body_mode(direction) {
        Some(BodySendMode::Buffered) => true,
        Some(_) => {
            let error = unsupported_mode(state, direction).unwrap_or(StreamError::PartialBody(direction));
            return vec![Effect::Fail(error)];
        }
        None => end_of_stream,
    };
    if !whole {
        return vec![Effect::Fail(StreamError::PartialBody(direction))];
    }
    *state.phase_mut(direction) = Phase::Done;
    if state.scans(direction) {
        vec![Effect::ScanBody { direction, body, store_as: state.store_as(direction) }]
    } else {
        vec![Effect::Reply(response::body_continue(direction, None))]
    }
}

/// One piece of a FULL_DUPLEX body (`end_of_stream` on the last, unless trailers end it): held,
/// sent straight back, or ignored after the body was answered.
fn on_piece(
    state: &mut StreamState,
    direction: Direction,
    body: Vec<u8>,
    end_of_stream: bool,
) -> Vec<Effect> {
    let max_scan_bytes = state.policy.max_scan_bytes;
    let flow = &mut state.flow[direction as usize];
    if *flow == Flow::Unset {
        // A body switched to FULL_DUPLEX by clamgate's override: its headers were answered with
        // the override, so only the body is owed.
        *flow = Flow::Holding { headers_answer: None, bytes: 0, sniff: None };
    }
    let mut effects = Vec::new();
    if let Flow::Holding { sniff, headers_answer, .. } = flow {
        if let Some((media_type, skipped)) = sniffed(sniff, &body, end_of_stream) {
            effects.push(Effect::CountSkip { direction, media_type, skipped });
            if skipped {
                // Sent back as it comes, unscanned: the held headers go with `skipped`.
                let verdict_header = state.policy.verdict_header.then_some("skipped");
                let headers_answer =
                    headers_answer.take().map(|answer| response::with_verdict_header(answer, verdict_header));
                *flow = Flow::Echoing;
                state.pass_unscanned[direction as usize] = true;
                effects.extend([
                    Effect::HoldPiece { direction, body },
                    Effect::SendHeld { direction, headers_answer, complete: end_of_stream },
                ]);
                return effects;
            }
        }
    }
    effects.extend(match flow {
        Flow::Holding { bytes, .. } if *bytes + body.len() as u64 > max_scan_bytes => {
            // Too large to scan mid-body: `Unscanned { too_large }` for what was held.
            let held = *bytes;
            let then = Then::ReleaseTooLarge { direction, piece: body, end_of_stream };
            vec![Effect::DecideUnscanned { direction, reason: UnscannedReason::TooLarge, bytes: held, then }]
        }
        Flow::Holding { bytes, .. } => {
            *bytes += body.len() as u64;
            let mut effects = vec![Effect::HoldPiece { direction, body }];
            if end_of_stream {
                let store_as = state.store_as(direction);
                effects.push(Effect::ScanHeld { direction, trailers: None, store_as });
            }
            effects
        }
        Flow::Echoing => vec![Effect::Reply(response::streamed_body(direction, body, end_of_stream))],
        Flow::Verifying => {
            if end_of_stream {
                *flow = Flow::Echoing;
            }
            vec![Effect::VerifyPiece { body, end_of_stream }]
        }
        Flow::Answered | Flow::Unset => Vec::new(),
    });
    effects
}

/// Adds `piece`'s first bytes to a pending sniff; once there are [`SNIFF_BYTES`] of them (or the
/// body ended), ends the sniff: the declared type, and whether the body starts like it. None
/// while there is no sniff or it needs more bytes.
fn sniffed(sniff: &mut Option<Sniff>, piece: &[u8], end_of_stream: bool) -> Option<(&'static str, bool)> {
    let pending = sniff.as_mut()?;
    let wanted = SNIFF_BYTES.saturating_sub(pending.first.len()).min(piece.len());
    pending.first.extend_from_slice(&piece[..wanted]);
    if pending.first.len() < SNIFF_BYTES && !end_of_stream {
        return None;
    }
    let done = sniff.take()?;
    Some((done.media_type, starts_like(done.media_type, &done.first)))
}

fn on_trailers(state: &mut StreamState, direction: Direction, trailers: Option<HeaderMap>) -> Vec<Effect> {
    if *state.phase_mut(direction) == Phase::AwaitingHeaders {
        let error = StreamError::OutOfOrder(format!("{direction:?} trailers before headers"));
        return vec![Effect::Fail(error)];
    }
    let was_streaming = *state.phase_mut(direction) == Phase::AwaitingBody && state.is_full_duplex(direction);
    // Trailers end the direction: with BUFFERED the body was answered before them.
    *state.phase_mut(direction) = Phase::Done;
    // A client's or upstream's `x-clamgate-*` trailer is removed like such a header.
    let remove_trailers = trailers.as_ref().map(control_headers).unwrap_or_default();
    if !was_streaming {
        return vec![Effect::Reply(response::trailers_continue(direction, remove_trailers))];
    }
    // The FULL_DUPLEX body of `direction` is complete: its trailers are answered after it.
    let flow = &mut state.flow[direction as usize];
    match flow {
        Flow::Holding { .. } => {
            let store_as = state.store_as(direction);
            vec![Effect::ScanHeld { direction, trailers: Some(remove_trailers), store_as }]
        }
        Flow::Answered => Vec::new(),
        Flow::Verifying => {
            *flow = Flow::Echoing;
            vec![
                Effect::FinishVerification,
                Effect::Reply(response::trailers_continue(direction, remove_trailers)),
            ]
        }
        Flow::Echoing | Flow::Unset => {
            vec![Effect::Reply(response::trailers_continue(direction, remove_trailers))]
        }
    }
}

/// The outcome of [`Effect::LookupResource`]: what follows for the request headers.
pub fn on_resource_lookup(state: &mut StreamState, lookup: ResourceLookup) -> Vec<Effect> {
    match lookup {
        // Refused before the upstream is contacted; under report_only the request goes on (a
        // body answer here would be a spurious message to Envoy) and the response is scanned.
        ResourceLookup::Infected(report) => {
            let report = Box::new(report);
            vec![Effect::Decide { direction: Direction::Response, report, then: Then::AnswerRequestHeaders }]
        }
        // Decided at the response headers, by the validator the upstream sends then.
        ResourceLookup::InfectedUnlessChanged { known, report } => {
            state.infected_resource = Some((known, report));
            vec![Effect::Reply(request_headers_answer(state))]
        }
        ResourceLookup::Clean { known } => {
            state.clean_resource = Some(known);
            vec![Effect::Reply(request_headers_answer(state))]
        }
        ResourceLookup::Miss => vec![Effect::Reply(request_headers_answer(state))],
    }
}

/// The policy's `decision` on what `then` was for: the answers that follow, in order.
pub fn decided(state: &mut StreamState, then: Then, decision: &Decision) -> Vec<Effect> {
    let verdict_header = match decision {
        Decision::Continue { verdict_header, .. } => *verdict_header,
        Decision::Block(block) => {
            let refusal = Effect::Reply(response::immediate(block));
            return match then {
                Then::AnswerRequestHeaders | Then::AnswerBody { .. } => vec![refusal],
                Then::AnswerResponseHeaders { .. } => {
                    state.flow[Direction::Response as usize] = Flow::Answered;
                    vec![refusal]
                }
                Then::AnswerUnscannable { direction, .. } => {
                    state.flow[direction as usize] = Flow::Answered;
                    vec![refusal]
                }
                Then::ReleaseHeld { direction, .. } | Then::ReleaseTooLarge { direction, .. } => {
                    state.flow[direction as usize] = Flow::Answered;
                    vec![Effect::DropHeld { direction }, refusal]
                }
            };
        }
    };
    match then {
        Then::AnswerRequestHeaders => vec![Effect::Reply(request_headers_answer(state))],
        Then::AnswerResponseHeaders { otherwise } => otherwise,
        Then::AnswerUnscannable { direction, if_allowed, echo } => {
            state.pass_unscanned[direction as usize] = true;
            if echo {
                state.flow[direction as usize] = Flow::Echoing;
            }
            // The headers go on now: they carry `x-clamgate-verdict: unscanned`.
            vec![Effect::Reply(response::with_verdict_header(if_allowed, verdict_header))]
        }
        Then::AnswerBody { direction } => {
            vec![Effect::Reply(response::body_continue(direction, verdict_header))]
        }
        Then::ReleaseHeld { direction, trailers } => {
            let headers_answer = state.release_held(direction, Flow::Answered, verdict_header);
            // A body that trailers end gets no end_of_stream on its last piece: the trailers'
            // answer ends it (Envoy closes the side stream after an end_of_stream piece).
            let complete = trailers.is_none();
            let mut effects = vec![Effect::SendHeld { direction, headers_answer, complete }];
            if let Some(remove_trailers) = trailers {
                effects.push(Effect::Reply(response::trailers_continue(direction, remove_trailers)));
            }
            effects
        }
        Then::ReleaseTooLarge { direction, piece, end_of_stream } => {
            state.pass_unscanned[direction as usize] = true;
            let headers_answer = state.release_held(direction, Flow::Echoing, verdict_header);
            vec![
                Effect::SendHeld { direction, headers_answer, complete: false },
                Effect::Reply(response::streamed_body(direction, piece, end_of_stream)),
            ]
        }
    }
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

/// The request's headers for `Vary`: names in lower case, pseudo-headers (`:path`...) left out.
fn request_headers(map: &HeaderMap) -> Vec<(String, String)> {
    map.headers
        .iter()
        .filter(|header| !header.key.starts_with(':'))
        .map(|header| {
            let value = if header.raw_value.is_empty() {
                header.value.clone()
            } else {
                String::from_utf8_lossy(&header.raw_value).into_owned()
            };
            (header.key.to_ascii_lowercase(), value)
        })
        .collect()
}

/// Every value of a header that may repeat, in order.
/// The multipart boundary of a request's `Content-Type` (see [`StreamState::multipart`]). More
/// than one `Content-Type`, one of them multipart, cannot be split: which one would the
/// application read?
fn request_multipart(map: &HeaderMap) -> Option<Result<String, String>> {
    let types = header_values(map, "content-type");
    let found: Vec<_> = types.iter().filter_map(|value| crate::multipart::boundary(value)).collect();
    match (found.len(), types.len()) {
        (0, _) => None,
        (1, 1) => Some(found.into_iter().next()?.map_err(|err| err.to_string())),
        _ => Some(Err("several Content-Type headers, one of them multipart".to_string())),
    }
}

fn header_values(map: &HeaderMap, name: &str) -> Vec<String> {
    map.headers
        .iter()
        .filter(|header| header.key.eq_ignore_ascii_case(name))
        .map(|header| {
            if header.raw_value.is_empty() {
                header.value.clone()
            } else {
                String::from_utf8_lossy(&header.raw_value).into_owned()
            }
        })
        .collect()
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

    /// A policy (without a skip rule) from the flags that vary between tests.
    const fn policy(resource_keys: bool, verify_resource_hits: bool, max_scan_bytes: u64) -> StreamPolicy {
        StreamPolicy {
            scan_requests: true,
            scan_responses: true,
            resource_keys,
            immutable: false,
            verify_resource_hits,
            max_scan_bytes,
            skip: None,
            verdict_header: true,
        }
    }
    const SCAN_BOTH: StreamPolicy = policy(false, false, 1 << 20);
    const RESOURCE_KEYS: StreamPolicy = policy(true, false, 1 << 20);

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

    /// The first message of a stream, with the body modes Envoy reports in force.
    fn with_modes(
        request: Request,
        request_mode: BodySendMode,
        response_mode: BodySendMode,
    ) -> ProcessingRequest {
        ProcessingRequest {
            protocol_config: Some(ProtocolConfiguration {
                request_body_mode: request_mode as i32,
                response_body_mode: response_mode as i32,
                ..ProtocolConfiguration::default()
            }),
            ..message(request)
        }
    }

    fn buffered(request: Request) -> ProcessingRequest {
        with_modes(request, BodySendMode::Buffered, BodySendMode::Buffered)
    }

    /// The shipped route config: uploads FULL_DUPLEX, responses BUFFERED (clamgate may switch them).
    fn duplex_uploads(request: Request) -> ProcessingRequest {
        with_modes(request, BodySendMode::FullDuplexStreamed, BodySendMode::Buffered)
    }

    /// The one effect of a message (most messages have exactly one).
    fn on_message(state: &mut StreamState, message: ProcessingRequest) -> Effect {
        let mut effects = super::on_message(state, message);
        assert_eq!(effects.len(), 1, "expected one effect, got {effects:?}");
        effects.remove(0)
    }

    /// The answer a message's headers get once the body they announce is released: they are
    /// held (the message has no effect yet).
    fn hold(state: &mut StreamState, message: ProcessingRequest) -> Option<ProcessingResponse> {
        let effects = super::on_message(state, message);
        assert_eq!(effects, vec![], "expected the headers held");
        [Direction::Request, Direction::Response].into_iter().find_map(|direction| {
            match &state.flow[direction as usize] {
                Flow::Holding { headers_answer, .. } => headers_answer.clone(),
                _ => None,
            }
        })
    }

    /// Every effect of a message, in order.
    fn effects_of(state: &mut StreamState, message: ProcessingRequest) -> Vec<Effect> {
        super::on_message(state, message)
    }

    fn body(bytes: &[u8], end_of_stream: bool) -> HttpBody {
        HttpBody { body: bytes.to_vec(), end_of_stream, ..HttpBody::default() }
    }

    fn removed_headers(action: &Effect) -> Vec<String> {
        let Effect::Reply(reply) = action else { panic!("expected a reply, got {action:?}") };
        let common = match &reply.response {
            Some(Response::RequestHeaders(h)) | Some(Response::ResponseHeaders(h)) => h.response.clone(),
            other => panic!("expected a headers response, got {other:?}"),
        };
        common.and_then(|c| c.header_mutation).map(|m| m.remove_headers).unwrap_or_default()
    }

    fn modes_of(action: &Effect) -> Option<(BodySendMode, BodySendMode, i32, i32)> {
        let Effect::Reply(reply) = action else { panic!("expected a reply, got {action:?}") };
        let mode = reply.mode_override.as_ref()?;
        Some((
            BodySendMode::try_from(mode.request_body_mode).unwrap(),
            BodySendMode::try_from(mode.response_body_mode).unwrap(),
            mode.request_trailer_mode,
            mode.response_trailer_mode,
        ))
    }

    const SEND: i32 =
        envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::HeaderSendMode::Send
            as i32;
    const SKIP: i32 =
        envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::HeaderSendMode::Skip
            as i32;

    #[test]
    fn a_download_is_switched_to_full_duplex_and_held_until_its_end() {
        let mut state = StreamState::new(SCAN_BOTH);
        let action = on_message(
            &mut state,
            buffered(Request::RequestHeaders(headers(
                &[(":method", "GET"), (":path", "/a?token=secret"), ("x-request-id", "r1")],
                true,
            ))),
        );
        assert_eq!(
            modes_of(&action),
            Some((BodySendMode::Buffered, BodySendMode::FullDuplexStreamed, SKIP, SEND)),
            "every mode restated; trailers sent for the streamed direction (Envoy requires it)"
        );
        assert_eq!(state.request_id, "r1");
        assert_eq!(state.path, "/a", "the query string must not reach logs");
        assert!(!state.is_complete());
        let answer =
            hold(&mut state, message(Request::ResponseHeaders(headers(&[(":status", "200")], false))));
        assert_eq!(answer, Some(response::headers_continue(Direction::Response, vec![])));
        let action = on_message(&mut state, message(Request::ResponseBody(body(b"pay", false))));
        assert_eq!(action, Effect::HoldPiece { direction: Direction::Response, body: b"pay".to_vec() });
        assert!(!state.is_complete());
        let effects = effects_of(&mut state, message(Request::ResponseBody(body(b"load", true))));
        assert_eq!(
            effects,
            vec![
                Effect::HoldPiece { direction: Direction::Response, body: b"load".to_vec() },
                Effect::ScanHeld { direction: Direction::Response, trailers: None, store_as: None },
            ]
        );
        assert!(state.is_complete());
    }

    #[test]
    fn a_head_request_is_not_switched() {
        let mut state = StreamState::new(SCAN_BOTH);
        let head = buffered(Request::RequestHeaders(headers(&[(":method", "HEAD")], true)));
        assert_eq!(modes_of(&on_message(&mut state, head)), None);
    }

    #[test]
    fn a_full_duplex_upload_holds_its_headers_and_their_answer_switches_the_response() {
        let mut state = StreamState::new(SCAN_BOTH);
        let pairs = [(":method", "POST"), ("x-clamgate-verdict", "clean"), ("range", "bytes=0-1")];
        let headers_answer =
            hold(&mut state, duplex_uploads(Request::RequestHeaders(headers(&pairs, false))));
        let answer = Effect::Reply(headers_answer.expect("the upload's headers are held"));
        assert_eq!(removed_headers(&answer), vec!["x-clamgate-verdict", "range", "if-range"]);
        assert_eq!(
            modes_of(&answer),
            Some((BodySendMode::FullDuplexStreamed, BodySendMode::FullDuplexStreamed, SEND, SEND)),
            "the upload's response is switched too, its request mode restated"
        );
        let effects = effects_of(&mut state, message(Request::RequestBody(body(b"up", true))));
        assert_eq!(
            effects,
            vec![
                Effect::HoldPiece { direction: Direction::Request, body: b"up".to_vec() },
                Effect::ScanHeld { direction: Direction::Request, trailers: None, store_as: None },
            ]
        );
        let answer =
            hold(&mut state, message(Request::ResponseHeaders(headers(&[(":status", "200")], false))));
        assert!(answer.is_some() && state.is_holding(Direction::Response));
    }

    #[test]
    fn response_headers_while_an_upload_is_held_are_out_of_order() {
        let mut state = StreamState::new(SCAN_BOTH);
        let upload = duplex_uploads(Request::RequestHeaders(headers(&[(":method", "POST")], false)));
        assert!(hold(&mut state, upload).is_some());
        effects_of(&mut state, message(Request::RequestBody(body(b"up", false))));
        let action =
            on_message(&mut state, message(Request::ResponseHeaders(headers(&[(":status", "200")], false))));
        assert!(matches!(action, Effect::Fail(StreamError::OutOfOrder(_))), "{action:?}");
        // An upload the policy does not scan is sent straight back: the upstream may answer early.
        let mut state = StreamState::new(StreamPolicy { scan_requests: false, ..SCAN_BOTH });
        let upload = duplex_uploads(Request::RequestHeaders(headers(&[(":method", "POST")], false)));
        assert!(matches!(on_message(&mut state, upload), Effect::Reply(_)));
        let action =
            on_message(&mut state, message(Request::ResponseHeaders(headers(&[(":status", "413")], true))));
        assert!(matches!(action, Effect::Reply(_)), "{action:?}");
    }

    #[test]
    fn a_full_duplex_upload_too_large_or_undecodable_is_unscannable_at_its_headers() {
        let too_large = (SCAN_BOTH.max_scan_bytes + 1).to_string();
        for (pairs, reason) in [
            (vec![(":method", "PUT"), ("content-length", too_large.as_str())], UnscannedReason::TooLarge),
            (
                vec![(":method", "PUT"), ("content-encoding", "compress")],
                UnscannedReason::UnsupportedEncoding,
            ),
        ] {
            let mut state = StreamState::new(SCAN_BOTH);
            let action =
                on_message(&mut state, duplex_uploads(Request::RequestHeaders(headers(&pairs, false))));
            let Effect::DecideUnscanned {
                direction,
                reason: got,
                then: Then::AnswerUnscannable { echo, .. },
                ..
            } = action
            else {
                panic!("expected unscannable, got {action:?}")
            };
            assert_eq!((direction, got, echo), (Direction::Request, reason, true));
        }
    }

    #[test]
    fn content_encodings_are_recorded_and_an_unknown_one_is_unscannable() {
        let mut state = StreamState::new(SCAN_BOTH);
        effects_of(&mut state, buffered(Request::RequestHeaders(headers(&[(":method", "GET")], true))));
        let pairs = [(":status", "200"), ("content-encoding", "gzip"), ("content-encoding", "br")];
        assert!(hold(&mut state, message(Request::ResponseHeaders(headers(&pairs, false)))).is_some());
        assert_eq!(state.encodings(Direction::Response), &[Encoding::Gzip, Encoding::Brotli]);
        assert!(state.encodings(Direction::Request).is_empty());

        let mut state = StreamState::new(SCAN_BOTH);
        effects_of(&mut state, buffered(Request::RequestHeaders(headers(&[(":method", "GET")], true))));
        let pairs = [(":status", "200"), ("content-encoding", "gzip, x-unknown")];
        let action = on_message(&mut state, message(Request::ResponseHeaders(headers(&pairs, false))));
        assert!(
            matches!(
                action,
                Effect::DecideUnscanned {
                    reason: UnscannedReason::UnsupportedEncoding,
                    then: Then::AnswerUnscannable { echo: true, .. },
                    ..
                }
            ),
            "{action:?}"
        );
        // Without a body there is nothing to decode.
        let mut state = StreamState::new(SCAN_BOTH);
        effects_of(&mut state, buffered(Request::RequestHeaders(headers(&[(":method", "HEAD")], true))));
        let pairs = [(":status", "200"), ("content-encoding", "x-unknown")];
        let action = on_message(&mut state, message(Request::ResponseHeaders(headers(&pairs, true))));
        assert!(matches!(action, Effect::Reply(_)), "{action:?}");
    }

    #[test]
    fn a_response_the_policy_does_not_scan_bypasses_clamgate() {
        let mut state = StreamState::new(StreamPolicy { scan_responses: false, ..SCAN_BOTH });
        let action =
            on_message(&mut state, buffered(Request::RequestHeaders(headers(&[(":method", "GET")], true))));
        assert_eq!(modes_of(&action), Some((BodySendMode::Buffered, BodySendMode::None, SKIP, SKIP)));
    }

    #[test]
    fn buffered_uploads_stay_buffered_whatever_their_size() {
        for length in [Some("1000000"), None] {
            let mut state = StreamState::new(StreamPolicy { scan_responses: false, ..SCAN_BOTH });
            let mut pairs = vec![(":method", "PUT")];
            pairs.extend(length.map(|length| ("content-length", length)));
            let action = on_message(&mut state, buffered(Request::RequestHeaders(headers(&pairs, false))));
            assert_eq!(modes_of(&action), None, "content-length {length:?}");
            let action = on_message(&mut state, message(Request::RequestBody(body(b"x", true))));
            assert!(matches!(action, Effect::ScanBody { .. }), "{action:?}");
        }
    }

    #[test]
    fn an_upload_too_large_to_scan_is_unscannable_at_its_headers() {
        let mut state = StreamState::new(SCAN_BOTH);
        let too_large = (SCAN_BOTH.max_scan_bytes + 1).to_string();
        let pairs = [(":method", "PUT"), ("content-length", too_large.as_str())];
        let action = on_message(&mut state, buffered(Request::RequestHeaders(headers(&pairs, false))));
        let Effect::DecideUnscanned {
            direction,
            reason,
            bytes,
            then: Then::AnswerUnscannable { if_allowed, echo, .. },
        } = action
        else {
            panic!("expected unscannable, got {action:?}")
        };
        assert_eq!(
            (direction, reason, bytes, echo),
            (Direction::Request, UnscannedReason::TooLarge, SCAN_BOTH.max_scan_bytes + 1, false)
        );
        let mode = if_allowed.mode_override.expect("allowed: the body bypasses clamgate");
        assert_eq!(mode.request_body_mode, BodySendMode::None as i32);
        assert_eq!(
            mode.response_body_mode,
            BodySendMode::Buffered as i32,
            "an upload's response stays BUFFERED"
        );
    }

    #[test]
    fn range_is_removed_unless_the_resource_is_known_clean() {
        let ranged = |state: &mut StreamState| {
            on_message(
                state,
                buffered(Request::RequestHeaders(headers(
                    &[
                        (":method", "GET"),
                        (":scheme", "http"),
                        (":authority", "h"),
                        (":path", "/a"),
                        ("range", "bytes=0-9"),
                    ],
                    true,
                ))),
            )
        };
        let mut state = StreamState::new(SCAN_BOTH);
        assert_eq!(removed_headers(&ranged(&mut state)), vec!["range", "if-range"]);
        let mut state = StreamState::new(RESOURCE_KEYS);
        assert!(matches!(ranged(&mut state), Effect::LookupResource { .. }));
        state.clean_resource = Some(known("etag:\"v1\""));
        let answer = Effect::Reply(request_headers_answer(&mut state));
        assert!(removed_headers(&answer).is_empty(), "a known-clean object may be fetched in parts");
        assert_eq!(modes_of(&answer), None, "a known-clean download stays BUFFERED, for the validator check");
    }

    #[test]
    fn a_partial_response_to_scan_is_unscannable() {
        let mut state = StreamState::new(SCAN_BOTH);
        effects_of(&mut state, get("/a"));
        let action =
            on_message(&mut state, response_headers(&[(":status", "206"), ("content-length", "10")]));
        assert!(
            matches!(
                action,
                Effect::DecideUnscanned {
                    reason: UnscannedReason::PartialContent,
                    then: Then::AnswerUnscannable { echo: true, .. },
                    ..
                }
            ),
            "{action:?}"
        );
    }

    #[test]
    fn trailers_end_a_streamed_body() {
        let mut state = StreamState::new(SCAN_BOTH);
        effects_of(&mut state, get("/a"));
        effects_of(&mut state, response_headers(&[(":status", "200")]));
        effects_of(&mut state, message(Request::ResponseBody(body(b"x", false))));
        let action = on_message(&mut state, message(Request::ResponseTrailers(HttpTrailers::default())));
        assert_eq!(
            action,
            Effect::ScanHeld { direction: Direction::Response, trailers: Some(vec![]), store_as: None }
        );
        assert!(state.is_complete());
    }

    #[test]
    fn a_response_too_large_to_scan_is_unscannable_at_its_headers() {
        let mut state = StreamState::new(SCAN_BOTH);
        effects_of(&mut state, get("/a"));
        let too_large = (SCAN_BOTH.max_scan_bytes + 1).to_string();
        let action = on_message(
            &mut state,
            response_headers(&[(":status", "200"), ("content-length", too_large.as_str())]),
        );
        assert!(
            matches!(
                action,
                Effect::DecideUnscanned {
                    reason: UnscannedReason::TooLarge,
                    then: Then::AnswerUnscannable { echo: true, .. },
                    ..
                }
            ),
            "{action:?}"
        );
    }

    #[test]
    fn an_upload_body_is_scanned() {
        let mut state = StreamState::new(SCAN_BOTH);
        let pairs = [(":method", "POST"), ("content-length", "6")];
        effects_of(&mut state, buffered(Request::RequestHeaders(headers(&pairs, false))));
        let action = on_message(&mut state, message(Request::RequestBody(body(b"upload", true))));
        assert_eq!(
            action,
            Effect::ScanBody { direction: Direction::Request, body: b"upload".to_vec(), store_as: None }
        );
    }

    #[test]
    fn a_buffered_body_followed_by_trailers_is_whole() {
        let mut state = StreamState::new(SCAN_BOTH);
        effects_of(&mut state, buffered(Request::RequestHeaders(headers(&[("content-length", "8")], false))));
        let action = on_message(&mut state, message(Request::RequestBody(body(b"grpc-web", false))));
        assert!(matches!(action, Effect::ScanBody { .. }));
        let action = on_message(&mut state, message(Request::RequestTrailers(HttpTrailers::default())));
        assert!(matches!(action, Effect::Reply(_)));
    }

    #[test]
    fn a_partial_body_with_unknown_mode_fails_the_stream() {
        let mut state = StreamState::new(SCAN_BOTH);
        effects_of(&mut state, message(Request::RequestHeaders(headers(&[], false))));
        let action = on_message(&mut state, message(Request::RequestBody(body(b"first part", false))));
        assert_eq!(action, Effect::Fail(StreamError::PartialBody(Direction::Request)));
    }

    #[test]
    fn streamed_and_partial_modes_are_refused_at_the_first_message() {
        for mode in [BodySendMode::Streamed, BodySendMode::BufferedPartial, BodySendMode::Grpc] {
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
                    Effect::Fail(StreamError::UnsupportedBodyMode { direction: Direction::Response, .. })
                ),
                "{mode:?}: {action:?}"
            );
        }
    }

    #[test]
    fn envoy_sending_no_body_of_a_scanned_direction_fails_the_stream() {
        let upload = [(":method", "POST"), ("content-length", "5")];
        // Request body mode NONE: an upload fails; a request without a body has nothing to scan.
        let mut state = StreamState::new(StreamPolicy { scan_responses: false, ..SCAN_BOTH });
        let first = with_modes(
            Request::RequestHeaders(headers(&upload, false)),
            BodySendMode::None,
            BodySendMode::Buffered,
        );
        assert_eq!(
            on_message(&mut state, first),
            Effect::Fail(StreamError::BodyModeNone(Direction::Request))
        );
        for (pairs, end_of_stream) in
            [(vec![(":method", "GET")], true), (vec![(":method", "POST"), ("content-length", "0")], false)]
        {
            let mut state = StreamState::new(SCAN_BOTH);
            let first = with_modes(
                Request::RequestHeaders(headers(&pairs, end_of_stream)),
                BodySendMode::None,
                BodySendMode::Buffered,
            );
            assert!(matches!(on_message(&mut state, first), Effect::Reply(_)), "{pairs:?}");
        }
        // Response body mode NONE: every request but a HEAD fails at its headers.
        let mut state = StreamState::new(SCAN_BOTH);
        let first = with_modes(get_headers_only("GET"), BodySendMode::Buffered, BodySendMode::None);
        assert_eq!(
            on_message(&mut state, first),
            Effect::Fail(StreamError::BodyModeNone(Direction::Response))
        );
        let mut state = StreamState::new(SCAN_BOTH);
        let first = with_modes(get_headers_only("HEAD"), BodySendMode::Buffered, BodySendMode::None);
        assert!(matches!(on_message(&mut state, first), Effect::Reply(_)));
        // A direction the policy does not scan may be NONE.
        let mut state = StreamState::new(StreamPolicy { scan_responses: false, ..SCAN_BOTH });
        let first = with_modes(get_headers_only("GET"), BodySendMode::Buffered, BodySendMode::None);
        assert!(matches!(on_message(&mut state, first), Effect::Reply(_)));
        assert_eq!(StreamError::BodyModeNone(Direction::Response).kind(), Some("body_mode"));
    }

    #[test]
    fn observability_mode_fails_the_stream() {
        let mut state = StreamState::new(SCAN_BOTH);
        let first = ProcessingRequest { observability_mode: true, ..buffered(get_headers_only("GET")) };
        assert_eq!(on_message(&mut state, first), Effect::Fail(StreamError::ObservabilityMode));
    }

    #[test]
    fn control_trailers_are_removed() {
        let trailers = |pairs: &[(&str, &str)]| HttpTrailers { trailers: headers(pairs, true).headers };
        // BUFFERED: the body was answered, the trailers' answer removes them.
        let mut state = StreamState::new(SCAN_BOTH);
        effects_of(&mut state, buffered(Request::RequestHeaders(headers(&[(":method", "POST")], false))));
        effects_of(&mut state, message(Request::RequestBody(body(b"x", false))));
        let action = on_message(
            &mut state,
            message(Request::RequestTrailers(trailers(&[
                ("X-Clamgate-Verdict", "clean"),
                ("grpc-status", "0"),
            ]))),
        );
        assert_eq!(
            action,
            Effect::Reply(response::trailers_continue(Direction::Request, vec!["x-clamgate-verdict".into()]))
        );
        // FULL_DUPLEX: the names go with the trailers' answer sent after the body.
        let mut state = StreamState::new(SCAN_BOTH);
        effects_of(&mut state, get("/a"));
        effects_of(&mut state, response_headers(&[(":status", "200")]));
        effects_of(&mut state, message(Request::ResponseBody(body(b"x", false))));
        let action = on_message(
            &mut state,
            message(Request::ResponseTrailers(trailers(&[("x-clamgate-verdict", "clean")]))),
        );
        assert_eq!(
            action,
            Effect::ScanHeld {
                direction: Direction::Response,
                trailers: Some(vec!["x-clamgate-verdict".into()]),
                store_as: None,
            }
        );
    }

    fn get_headers_only(method: &str) -> Request {
        Request::RequestHeaders(headers(&[(":method", method), (":path", "/a")], true))
    }

    #[test]
    fn out_of_order_messages_fail_the_stream() {
        let mut state = StreamState::new(SCAN_BOTH);
        let action = on_message(&mut state, message(Request::ResponseBody(body(b"x", true))));
        assert!(matches!(action, Effect::Fail(StreamError::OutOfOrder(_))), "{action:?}");

        let mut state = StreamState::new(SCAN_BOTH);
        let action = on_message(&mut state, message(Request::ResponseHeaders(headers(&[], false))));
        assert!(matches!(action, Effect::Fail(StreamError::OutOfOrder(_))), "{action:?}");

        let mut state = StreamState::new(SCAN_BOTH);
        effects_of(&mut state, buffered(Request::RequestHeaders(headers(&[], true))));
        let action = on_message(&mut state, message(Request::RequestHeaders(headers(&[], true))));
        assert!(matches!(action, Effect::Fail(StreamError::OutOfOrder(_))), "{action:?}");

        // A body after a headers-only request.
        let action = on_message(&mut state, message(Request::RequestBody(body(b"x", true))));
        assert!(matches!(action, Effect::Fail(StreamError::OutOfOrder(_))), "{action:?}");
    }

    #[test]
    fn an_empty_message_fails_the_stream() {
        let mut state = StreamState::new(SCAN_BOTH);
        assert_eq!(
            on_message(&mut state, ProcessingRequest::default()),
            Effect::Fail(StreamError::EmptyMessage)
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
        let headers_answer = hold(
            &mut state,
            message(Request::ResponseHeaders(headers(&[("x-clamgate-verdict", "clean")], false))),
        );
        let headers_answer = headers_answer.expect("the response headers are held");
        assert_eq!(removed_headers(&Effect::Reply(headers_answer)), vec!["x-clamgate-verdict"]);
    }

    #[test]
    fn a_direction_the_policy_skips_passes_without_scan() {
        let mut state = StreamState::new(StreamPolicy { scan_requests: false, ..SCAN_BOTH });
        effects_of(&mut state, buffered(Request::RequestHeaders(headers(&[], false))));
        let action = on_message(&mut state, message(Request::RequestBody(body(b"x", true))));
        assert_eq!(action, Effect::Reply(response::body_continue(Direction::Request, None)));
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
        effects_of(&mut state, first);
        assert_eq!(state.request_id, "from-envoy");
    }

    fn get(path: &str) -> ProcessingRequest {
        get_with(&[(":authority", "Mirror.Example"), (":path", path)])
    }

    /// A GET over http with these extra headers (`:authority`, `:path`, others).
    fn get_with(pairs: &[(&str, &str)]) -> ProcessingRequest {
        let mut all = vec![(":method", "GET"), (":scheme", "http")];
        all.extend_from_slice(pairs);
        buffered(Request::RequestHeaders(headers(&all, true)))
    }

    /// An entry known under `validator`, without Vary, for the body `b"abc"`.
    fn known(validator: &str) -> KnownResource {
        KnownResource { validator: validator.to_string(), vary: Vec::new(), content: ContentKey::of(b"abc") }
    }

    fn infected_report() -> ScanReport {
        ScanReport {
            verdict: crate::verdict::Verdict::Infected { signature: "Eicar-Test-Signature".into() },
            sha256: ContentKey::of(b"abc").hex(),
            body_bytes: 0,
            engine: None,
            cached: true,
        }
    }

    fn response_headers(pairs: &[(&str, &str)]) -> ProcessingRequest {
        message(Request::ResponseHeaders(headers(pairs, false)))
    }

    #[test]
    fn a_get_under_a_resource_policy_is_looked_up_by_host_and_path() {
        let mut state = StreamState::new(RESOURCE_KEYS);
        let action = on_message(&mut state, get("/pkg/a.tar.gz?v=2"));
        let Effect::LookupResource { resource, .. } = action else {
            panic!("expected a lookup, got {action:?}")
        };
        assert_eq!(resource.id, ResourceId::new("http", "mirror.example", 80, "/pkg/a.tar.gz?v=2"));
        assert!(resource.request_headers.is_empty(), "pseudo-headers are not request headers");
    }

    #[test]
    fn no_lookup_without_a_resource_policy_or_for_other_methods() {
        let mut state = StreamState::new(SCAN_BOTH);
        assert!(matches!(on_message(&mut state, get("/a")), Effect::Reply(_)));
        let mut state = StreamState::new(RESOURCE_KEYS);
        let post = buffered(Request::RequestHeaders(headers(
            &[(":method", "POST"), (":authority", "h"), (":path", "/a")],
            false,
        )));
        assert!(matches!(on_message(&mut state, post), Effect::Reply(_)));
    }

    #[test]
    fn a_known_clean_resource_with_the_same_validator_passes_unbuffered() {
        let mut state = StreamState::new(RESOURCE_KEYS);
        effects_of(&mut state, get("/a"));
        state.clean_resource = Some(known("etag:\"v1\""));
        let action = on_message(
            &mut state,
            response_headers(&[(":status", "200"), ("etag", "\"v1\""), ("x-clamgate-verdict", "x")]),
        );
        assert_eq!(action, Effect::PassCachedResource { remove_headers: vec!["x-clamgate-verdict".into()] });
        assert!(state.is_complete(), "no body message may follow");
    }

    #[test]
    fn a_known_clean_resource_may_answer_in_parts() {
        let mut state = StreamState::new(RESOURCE_KEYS);
        effects_of(&mut state, get("/a"));
        state.clean_resource = Some(known("etag:\"v1\""));
        let action = on_message(&mut state, response_headers(&[(":status", "206"), ("etag", "\"v1\"")]));
        assert!(matches!(action, Effect::PassCachedResource { .. }), "{action:?}");
    }

    #[test]
    fn a_changed_validator_is_scanned() {
        for response in [vec![(":status", "200"), ("etag", "\"v2\"")], vec![(":status", "200")]] {
            let mut state = StreamState::new(RESOURCE_KEYS);
            effects_of(&mut state, get("/a"));
            state.clean_resource = Some(known("etag:\"v1\""));
            request_headers_answer(&mut state);
            assert!(
                matches!(on_message(&mut state, response_headers(&response)), Effect::Reply(_)),
                "{response:?}"
            );
            let action = on_message(&mut state, message(Request::ResponseBody(body(b"new", true))));
            assert!(matches!(action, Effect::ScanBody { .. }), "{response:?}: {action:?}");
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
        effects_of(&mut state, get("/a"));
        effects_of(&mut state, response_headers(&[(":status", "200"), ("etag", "\"v1\"")]));
        let version = state.store_as(Direction::Response).expect("storable");
        assert_eq!(
            (version.resource.id.path_and_query(), version.validator.as_str(), version.vary.as_slice()),
            ("/a", "etag:\"v1\"", &[][..])
        );
        assert_eq!(state.store_as(Direction::Request), None, "only responses are stored by resource");

        let mut state = StreamState::new(RESOURCE_KEYS);
        effects_of(&mut state, get("/a"));
        effects_of(&mut state, response_headers(&[(":status", "206"), ("etag", "\"v1\"")]));
        assert!(state.store_as(Direction::Response).is_none());
    }

    fn resource_of(action: Effect) -> Resource {
        match action {
            Effect::LookupResource { resource } => resource,
            other => panic!("expected a lookup, got {other:?}"),
        }
    }

    #[test]
    fn scheme_and_port_are_part_of_the_resource() {
        let lookup = |pairs: &[(&str, &str)]| {
            let mut state = StreamState::new(RESOURCE_KEYS);
            let mut all = vec![(":method", "GET"), (":path", "/a")];
            all.extend_from_slice(pairs);
            resource_of(on_message(&mut state, buffered(Request::RequestHeaders(headers(&all, true)))))
                .id
                .key()
        };
        let http = lookup(&[(":scheme", "http"), (":authority", "h")]);
        assert_ne!(lookup(&[(":scheme", "https"), (":authority", "h")]), http, "http and https do not share");
        assert_ne!(lookup(&[(":scheme", "http"), (":authority", "h:8080")]), http, ":8080 is not :80");
        assert_eq!(
            lookup(&[(":scheme", "http"), (":authority", "H:80")]),
            http,
            "the default port is the same"
        );
    }

    #[test]
    fn a_request_without_a_sound_identity_is_not_looked_up() {
        for pairs in [
            vec![(":scheme", "http"), (":authority", "")],
            vec![(":authority", "h")],
            vec![(":scheme", "http"), (":authority", "h:99999")],
        ] {
            let mut state = StreamState::new(RESOURCE_KEYS);
            let mut all = vec![(":method", "GET"), (":path", "/a")];
            all.extend_from_slice(&pairs);
            let action = on_message(&mut state, buffered(Request::RequestHeaders(headers(&all, true))));
            assert!(matches!(action, Effect::Reply(_)), "{pairs:?}: {action:?}");
            effects_of(&mut state, response_headers(&[(":status", "200"), ("etag", "\"v1\"")]));
            assert!(state.store_as(Direction::Response).is_none(), "{pairs:?}: nothing stored either");
        }
    }

    #[test]
    fn the_request_headers_and_the_response_vary_are_kept_for_the_entry() {
        let mut state = StreamState::new(RESOURCE_KEYS);
        let resource = resource_of(on_message(
            &mut state,
            get_with(&[(":authority", "h"), (":path", "/a"), ("Accept-Encoding", "gzip")]),
        ));
        assert_eq!(resource.request_headers, vec![("accept-encoding".to_string(), "gzip".to_string())]);
        assert!(!format!("{resource:?}").contains("gzip"), "header values are not shown: {resource:?}");
        on_message(
            &mut state,
            response_headers(&[(":status", "200"), ("etag", "\"v1\""), ("vary", "Accept-Encoding, Origin")]),
        );
        let version = state.store_as(Direction::Response).expect("storable");
        assert_eq!(version.vary, ["accept-encoding".to_string(), "origin".to_string()]);
    }

    #[test]
    fn a_response_with_vary_star_is_not_stored() {
        let mut state = StreamState::new(RESOURCE_KEYS);
        effects_of(&mut state, get("/a"));
        effects_of(&mut state, response_headers(&[(":status", "200"), ("etag", "\"v1\""), ("vary", "*")]));
        assert!(state.store_as(Direction::Response).is_none());
    }

    #[test]
    fn a_known_clean_validator_with_other_vary_names_is_scanned() {
        let mut state = StreamState::new(RESOURCE_KEYS);
        effects_of(&mut state, get("/a"));
        state.clean_resource = Some(known("etag:\"v1\""));
        request_headers_answer(&mut state);
        let action = on_message(
            &mut state,
            response_headers(&[(":status", "200"), ("etag", "\"v1\""), ("vary", "origin")]),
        );
        assert!(matches!(action, Effect::Reply(_)), "{action:?}");
        let action = on_message(&mut state, message(Request::ResponseBody(body(b"new", true))));
        assert!(matches!(action, Effect::ScanBody { .. }), "{action:?}");
    }

    const VERIFY: StreamPolicy = policy(true, true, 1 << 20);

    #[test]
    fn a_verified_hit_streams_through_and_is_compared_with_the_entry() {
        let mut state = StreamState::new(VERIFY);
        effects_of(&mut state, get("/a"));
        state.clean_resource = Some(known("etag:\"v1\""));
        let answer = Effect::Reply(request_headers_answer(&mut state));
        assert_eq!(
            modes_of(&answer),
            Some((BodySendMode::Buffered, BodySendMode::FullDuplexStreamed, SKIP, SEND)),
            "a verified hit streams through clamgate"
        );
        let action = on_message(&mut state, response_headers(&[(":status", "200"), ("etag", "\"v1\"")]));
        let Effect::EchoCachedResource { verify, .. } = action else {
            panic!("expected an echo, got {action:?}")
        };
        assert_eq!(verify, Some(ContentKey::of(b"abc")));
        let action = on_message(&mut state, message(Request::ResponseBody(body(b"abc", true))));
        assert_eq!(action, Effect::VerifyPiece { body: b"abc".to_vec(), end_of_stream: true });
    }

    #[test]
    fn a_hit_on_a_route_that_streams_responses_is_scanned_unless_hits_are_verified() {
        for (policy, echoed) in [(RESOURCE_KEYS, false), (VERIFY, true)] {
            let mut state = StreamState::new(policy);
            let first = with_modes(
                Request::RequestHeaders(headers(
                    &[(":method", "GET"), (":scheme", "http"), (":authority", "h"), (":path", "/a")],
                    true,
                )),
                BodySendMode::Buffered,
                BodySendMode::FullDuplexStreamed,
            );
            effects_of(&mut state, first);
            state.clean_resource = Some(known("etag:\"v1\""));
            request_headers_answer(&mut state);
            let effects = effects_of(&mut state, response_headers(&[(":status", "200"), ("etag", "\"v1\"")]));
            match effects.as_slice() {
                [Effect::EchoCachedResource { .. }] => assert!(echoed),
                [] if state.is_holding(Direction::Response) => {
                    assert!(!echoed, "without verification the body is scanned, as before")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_verified_hit_in_parts_passes_unverified_and_a_changed_one_is_held() {
        let mut state = StreamState::new(VERIFY);
        effects_of(&mut state, get("/a"));
        state.clean_resource = Some(known("etag:\"v1\""));
        request_headers_answer(&mut state);
        let action = on_message(&mut state, response_headers(&[(":status", "206"), ("etag", "\"v1\"")]));
        assert!(matches!(action, Effect::EchoCachedResource { verify: None, .. }), "{action:?}");

        let mut state = StreamState::new(VERIFY);
        effects_of(&mut state, get("/a"));
        state.clean_resource = Some(known("etag:\"v1\""));
        request_headers_answer(&mut state);
        assert!(hold(&mut state, response_headers(&[(":status", "200"), ("etag", "\"v2\"")])).is_some());
    }

    #[test]
    fn an_infected_entry_refuses_only_the_same_validator() {
        for (etag, refused) in [("\"bad\"", true), ("\"fixed\"", false)] {
            let mut state = StreamState::new(RESOURCE_KEYS);
            effects_of(&mut state, get_with(&[(":authority", "h"), (":path", "/a"), ("range", "bytes=0-1")]));
            state.infected_resource = Some((known("etag:\"bad\""), infected_report()));
            let answer = Effect::Reply(request_headers_answer(&mut state));
            assert_eq!(removed_headers(&answer), vec!["range", "if-range"], "the whole object is fetched");
            assert_eq!(
                modes_of(&answer),
                Some((BodySendMode::Buffered, BodySendMode::FullDuplexStreamed, SKIP, SEND))
            );
            let effects = effects_of(&mut state, response_headers(&[(":status", "200"), ("etag", etag)]));
            match effects.as_slice() {
                [Effect::Decide { report, then: Then::AnswerResponseHeaders { otherwise }, .. }] => {
                    assert!(refused, "{etag}");
                    assert_eq!(**report, infected_report());
                    assert!(otherwise.is_empty(), "report only: scanned as usual");
                    assert!(state.is_holding(Direction::Response), "report only: held to be scanned");
                }
                [] => assert!(
                    !refused && state.is_holding(Direction::Response),
                    "{etag}: the changed object is scanned"
                ),
                other => panic!("{etag}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_infected_entry_refuses_a_head_and_a_not_modified_with_its_validator() {
        for (status, end_of_stream) in [("200", true), ("304", true), ("206", false)] {
            let mut state = StreamState::new(RESOURCE_KEYS);
            effects_of(&mut state, get("/a"));
            state.infected_resource = Some((known("etag:\"bad\""), infected_report()));
            request_headers_answer(&mut state);
            let action = on_message(
                &mut state,
                message(Request::ResponseHeaders(headers(
                    &[(":status", status), ("etag", "\"bad\"")],
                    end_of_stream,
                ))),
            );
            assert!(
                matches!(action, Effect::Decide { then: Then::AnswerResponseHeaders { .. }, .. }),
                "{status}: {action:?}"
            );
        }
    }

    // Held FULL_DUPLEX bodies and what follows their decision: every ordering rule of the driver,
    // without gRPC.

    /// A policy that scans bodies of at most 4 bytes.
    const SMALL: StreamPolicy = policy(false, false, 4);

    fn allow(verdict_header: Option<&'static str>) -> Decision {
        Decision::Continue { verdict_header, would_block: None }
    }

    fn refuse() -> Decision {
        Decision::Block(crate::policy::BlockResponse {
            status: 409,
            verdict: "infected",
            retry_after_secs: None,
            content_type: "application/json",
            body: b"{}".to_vec(),
            location: None,
            details: "clamgate_infected".into(),
        })
    }

    /// A download whose response headers are held, with `pieces` of its body held too.
    fn held_download(policy: StreamPolicy, pieces: &[&[u8]]) -> StreamState {
        let mut state = StreamState::new(policy);
        effects_of(&mut state, get("/a"));
        assert!(hold(&mut state, response_headers(&[(":status", "200")])).is_some());
        for piece in pieces {
            let effects = effects_of(&mut state, message(Request::ResponseBody(body(piece, false))));
            assert_eq!(
                effects,
                vec![Effect::HoldPiece { direction: Direction::Response, body: piece.to_vec() }]
            );
        }
        state
    }

    /// The `then` of the one decision among `effects`.
    fn then_of(mut effects: Vec<Effect>) -> Then {
        assert_eq!(effects.len(), 1, "expected one decision, got {effects:?}");
        match effects.remove(0) {
            Effect::Decide { then, .. } | Effect::DecideUnscanned { then, .. } => then,
            other => panic!("expected a decision, got {other:?}"),
        }
    }

    #[test]
    fn a_held_body_growing_past_the_limit_is_decided_unscanned_with_what_was_held() {
        let mut state = held_download(SMALL, &[b"abc"]);
        let effects = effects_of(&mut state, message(Request::ResponseBody(body(b"de", false))));
        assert_eq!(
            effects,
            vec![Effect::DecideUnscanned {
                direction: Direction::Response,
                reason: UnscannedReason::TooLarge,
                bytes: 3,
                then: Then::ReleaseTooLarge {
                    direction: Direction::Response,
                    piece: b"de".to_vec(),
                    end_of_stream: false
                },
            }]
        );
    }

    #[test]
    fn an_allowed_too_large_body_sends_what_was_held_then_the_piece_then_echoes() {
        let mut state = held_download(SMALL, &[b"abc"]);
        let then = then_of(effects_of(&mut state, message(Request::ResponseBody(body(b"de", false)))));
        let effects = decided(&mut state, then, &allow(Some("unscanned")));
        let headers_answer = response::with_verdict_header(
            response::headers_continue(Direction::Response, vec![]),
            Some("unscanned"),
        );
        assert_eq!(
            effects,
            vec![
                Effect::SendHeld {
                    direction: Direction::Response,
                    headers_answer: Some(headers_answer),
                    complete: false
                },
                Effect::Reply(response::streamed_body(Direction::Response, b"de".to_vec(), false)),
            ],
            "the held headers carry the verdict header; the held bytes go before the piece"
        );
        assert!(!state.is_holding(Direction::Response));
        let action = on_message(&mut state, message(Request::ResponseBody(body(b"fg", true))));
        assert_eq!(action, Effect::Reply(response::streamed_body(Direction::Response, b"fg".to_vec(), true)));
        assert!(state.is_complete());
    }

    #[test]
    fn a_refused_too_large_body_drops_what_was_held_and_ignores_later_pieces() {
        let mut state = held_download(SMALL, &[b"abc"]);
        let then = then_of(effects_of(&mut state, message(Request::ResponseBody(body(b"de", false)))));
        let block = refuse();
        let Decision::Block(response_block) = &block else { unreachable!() };
        assert_eq!(
            decided(&mut state, then, &block),
            vec![
                Effect::DropHeld { direction: Direction::Response },
                Effect::Reply(response::immediate(response_block)),
            ]
        );
        assert_eq!(effects_of(&mut state, message(Request::ResponseBody(body(b"fg", false)))), vec![]);
        assert_eq!(
            effects_of(&mut state, message(Request::ResponseTrailers(HttpTrailers::default()))),
            vec![]
        );
        assert!(state.is_complete());
    }

    #[test]
    fn a_whole_held_body_is_sent_back_complete_or_dropped() {
        let mut state = held_download(SCAN_BOTH, &[b"ab"]);
        let effects = effects_of(&mut state, message(Request::ResponseBody(body(b"c", true))));
        assert_eq!(
            effects.last(),
            Some(&Effect::ScanHeld { direction: Direction::Response, trailers: None, store_as: None })
        );
        let then = Then::ReleaseHeld { direction: Direction::Response, trailers: None };
        let effects = decided(&mut state, then, &allow(Some("clean")));
        let headers_answer = response::with_verdict_header(
            response::headers_continue(Direction::Response, vec![]),
            Some("clean"),
        );
        assert_eq!(
            effects,
            vec![Effect::SendHeld {
                direction: Direction::Response,
                headers_answer: Some(headers_answer),
                complete: true
            }]
        );

        let mut state = held_download(SCAN_BOTH, &[b"ab"]);
        effects_of(&mut state, message(Request::ResponseBody(body(b"c", true))));
        let then = Then::ReleaseHeld { direction: Direction::Response, trailers: None };
        let effects = decided(&mut state, then, &refuse());
        assert_eq!(effects.first(), Some(&Effect::DropHeld { direction: Direction::Response }));
        assert!(matches!(effects.as_slice(), [_, Effect::Reply(_)]), "{effects:?}");
    }

    #[test]
    fn trailers_that_end_a_held_body_are_answered_after_it_and_its_last_piece_does_not_end_it() {
        let mut state = held_download(SCAN_BOTH, &[b"ab"]);
        let trailers = HttpTrailers {
            trailers: Some(headers(&[("x-clamgate-verdict", "clean")], true).headers.unwrap()),
        };
        let action = on_message(&mut state, message(Request::ResponseTrailers(trailers)));
        let names = vec!["x-clamgate-verdict".to_string()];
        assert_eq!(
            action,
            Effect::ScanHeld {
                direction: Direction::Response,
                trailers: Some(names.clone()),
                store_as: None
            }
        );
        let then = Then::ReleaseHeld { direction: Direction::Response, trailers: Some(names.clone()) };
        let effects = decided(&mut state, then, &allow(None));
        assert_eq!(
            effects,
            vec![
                Effect::SendHeld {
                    direction: Direction::Response,
                    headers_answer: Some(response::headers_continue(Direction::Response, vec![])),
                    complete: false,
                },
                Effect::Reply(response::trailers_continue(Direction::Response, names)),
            ]
        );
        assert!(state.is_complete());
    }

    #[test]
    fn a_piece_after_the_end_of_a_held_body_fails_the_stream() {
        let mut state = held_download(SCAN_BOTH, &[b"ab"]);
        effects_of(&mut state, message(Request::ResponseBody(body(b"c", true))));
        decided(
            &mut state,
            Then::ReleaseHeld { direction: Direction::Response, trailers: None },
            &allow(None),
        );
        // Envoy sends nothing after end_of_stream; a piece that comes anyway is never answered.
        let action = on_message(&mut state, message(Request::ResponseBody(body(b"d", false))));
        assert!(matches!(action, Effect::Fail(StreamError::OutOfOrder(_))), "{action:?}");
    }

    #[test]
    fn an_allowed_unscannable_body_echoes_every_piece_and_a_refused_one_ignores_them() {
        let too_large = (SCAN_BOTH.max_scan_bytes + 1).to_string();
        let pairs = [(":method", "PUT"), ("content-length", too_large.as_str())];
        for (decision, echoed) in [(allow(Some("unscanned")), true), (refuse(), false)] {
            let mut state = StreamState::new(SCAN_BOTH);
            let then = then_of(effects_of(
                &mut state,
                duplex_uploads(Request::RequestHeaders(headers(&pairs, false))),
            ));
            let effects = decided(&mut state, then, &decision);
            assert!(matches!(effects.as_slice(), [Effect::Reply(_)]), "{effects:?}");
            let effects = effects_of(&mut state, message(Request::RequestBody(body(b"up", true))));
            if echoed {
                assert_eq!(
                    effects,
                    vec![Effect::Reply(response::streamed_body(Direction::Request, b"up".to_vec(), true))]
                );
            } else {
                assert_eq!(effects, vec![], "a refused upload's pieces are never answered");
            }
        }
    }

    #[test]
    fn a_verified_hit_ended_by_trailers_is_compared_before_the_trailers_are_answered() {
        let mut state = StreamState::new(VERIFY);
        effects_of(&mut state, get("/a"));
        state.clean_resource = Some(known("etag:\"v1\""));
        request_headers_answer(&mut state);
        effects_of(&mut state, response_headers(&[(":status", "200"), ("etag", "\"v1\"")]));
        let action = on_message(&mut state, message(Request::ResponseBody(body(b"abc", false))));
        assert_eq!(action, Effect::VerifyPiece { body: b"abc".to_vec(), end_of_stream: false });
        let effects = effects_of(&mut state, message(Request::ResponseTrailers(HttpTrailers::default())));
        assert_eq!(
            effects,
            vec![
                Effect::FinishVerification,
                Effect::Reply(response::trailers_continue(Direction::Response, vec![])),
            ]
        );
    }

    #[test]
    fn each_resource_lookup_outcome_answers_the_request_headers_or_decides() {
        let mut state = StreamState::new(RESOURCE_KEYS);
        on_message(&mut state, get("/a"));
        let then = then_of(on_resource_lookup(&mut state, ResourceLookup::Infected(infected_report())));
        assert_eq!(then, Then::AnswerRequestHeaders);
        // Report only: the request goes on with the usual answer (the download switched).
        let effects = decided(&mut state, then, &allow(None));
        assert!(
            matches!(effects.as_slice(), [Effect::Reply(answer)] if answer.mode_override.is_some()),
            "{effects:?}"
        );

        for lookup in [
            ResourceLookup::Miss,
            ResourceLookup::Clean { known: known("etag:\"v1\"") },
            ResourceLookup::InfectedUnlessChanged { known: known("etag:\"v1\""), report: infected_report() },
        ] {
            let mut state = StreamState::new(RESOURCE_KEYS);
            on_message(&mut state, get("/a"));
            let effects = on_resource_lookup(&mut state, lookup);
            assert!(matches!(effects.as_slice(), [Effect::Reply(_)]), "{effects:?}");
        }
    }

    #[test]
    fn a_blocked_buffered_body_or_request_is_answered_with_the_refusal_alone() {
        for then in [Then::AnswerRequestHeaders, Then::AnswerBody { direction: Direction::Request }] {
            let mut state = StreamState::new(SCAN_BOTH);
            let effects = decided(&mut state, then, &refuse());
            assert!(matches!(effects.as_slice(), [Effect::Reply(answer)] if answer.mode_override.is_none()));
        }
        let mut state = StreamState::new(SCAN_BOTH);
        let effects =
            decided(&mut state, Then::AnswerBody { direction: Direction::Request }, &allow(Some("clean")));
        assert_eq!(effects, vec![Effect::Reply(response::body_continue(Direction::Request, Some("clean")))]);
    }

    /// A policy whose skip rule skips PNG responses (any size, any path) and, with `uploads`,
    /// PNG uploads.
    fn skipping_png(uploads: bool) -> StreamPolicy {
        let mut directions = vec!["response".to_string()];
        if uploads {
            directions.push("request".to_string());
        }
        let config = crate::config::SkipConfig {
            content_types: vec!["image/png".into()],
            directions,
            ..crate::config::SkipConfig::default()
        };
        StreamPolicy { skip: crate::skip::SkipRule::of("media", &config).map(Arc::new), ..SCAN_BOTH }
    }

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn a_body_that_starts_like_its_declared_type_is_skipped_once_its_first_bytes_are_in() {
        let mut state = StreamState::new(skipping_png(false));
        effects_of(&mut state, get("/a.png"));
        let answer = hold(&mut state, response_headers(&[(":status", "200"), ("content-type", "image/png")]));
        // The signature comes in two pieces: the first is held, the second decides.
        let effects = effects_of(&mut state, message(Request::ResponseBody(body(&PNG[..5], false))));
        assert_eq!(
            effects,
            vec![Effect::HoldPiece { direction: Direction::Response, body: PNG[..5].to_vec() }]
        );
        let effects = effects_of(&mut state, message(Request::ResponseBody(body(&PNG[5..], false))));
        let skipped_answer = answer.map(|answer| response::with_verdict_header(answer, Some("skipped")));
        assert_eq!(
            effects,
            vec![
                Effect::CountSkip { direction: Direction::Response, media_type: "image/png", skipped: true },
                Effect::HoldPiece { direction: Direction::Response, body: PNG[5..].to_vec() },
                Effect::SendHeld {
                    direction: Direction::Response,
                    headers_answer: skipped_answer,
                    complete: false
                },
            ]
        );
        // The rest streams straight back.
        let effects = effects_of(&mut state, message(Request::ResponseBody(body(b"rest", true))));
        assert_eq!(
            effects,
            vec![Effect::Reply(response::streamed_body(Direction::Response, b"rest".to_vec(), true))]
        );
        assert!(state.is_complete());
    }

    #[test]
    fn eicar_declared_png_is_counted_and_scanned() {
        let mut state = StreamState::new(skipping_png(false));
        effects_of(&mut state, get("/a.png"));
        hold(&mut state, response_headers(&[(":status", "200"), ("content-type", "image/png")]));
        let eicar_start = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}";
        let effects = effects_of(&mut state, message(Request::ResponseBody(body(eicar_start, true))));
        assert_eq!(
            effects,
            vec![
                Effect::CountSkip { direction: Direction::Response, media_type: "image/png", skipped: false },
                Effect::HoldPiece { direction: Direction::Response, body: eicar_start.to_vec() },
                Effect::ScanHeld { direction: Direction::Response, trailers: None, store_as: None },
            ]
        );
    }

    #[test]
    fn a_body_shorter_than_the_signature_is_scanned() {
        let mut state = StreamState::new(skipping_png(false));
        effects_of(&mut state, get("/a.png"));
        hold(&mut state, response_headers(&[(":status", "200"), ("content-type", "image/png")]));
        let effects = effects_of(&mut state, message(Request::ResponseBody(body(&PNG[..7], true))));
        assert_eq!(
            effects[0],
            Effect::CountSkip { direction: Direction::Response, media_type: "image/png", skipped: false }
        );
        assert!(matches!(effects[2], Effect::ScanHeld { .. }));
    }

    #[test]
    fn a_skip_candidate_too_large_to_scan_is_held_until_its_type_is_known() {
        let policy = StreamPolicy { max_scan_bytes: 16, ..skipping_png(false) };
        // Skipped although larger than the scan limit.
        let mut state = StreamState::new(policy.clone());
        effects_of(&mut state, get("/a.png"));
        let headers = [(":status", "200"), ("content-type", "image/png"), ("content-length", "100")];
        assert!(hold(&mut state, response_headers(&headers)).is_some());
        let effects = effects_of(&mut state, message(Request::ResponseBody(body(PNG, false))));
        assert!(matches!(effects[0], Effect::CountSkip { skipped: true, .. }), "{effects:?}");
        // Not a PNG: too large, decided as such mid-body.
        let mut state = StreamState::new(policy);
        effects_of(&mut state, get("/a.png"));
        assert!(hold(&mut state, response_headers(&headers)).is_some());
        let effects = effects_of(&mut state, message(Request::ResponseBody(body(&[b'X'; 12], false))));
        assert!(matches!(effects[0], Effect::CountSkip { skipped: false, .. }), "{effects:?}");
        let effects = effects_of(&mut state, message(Request::ResponseBody(body(&[b'X'; 12], false))));
        assert!(
            matches!(effects[..], [Effect::DecideUnscanned { reason: UnscannedReason::TooLarge, .. }]),
            "{effects:?}"
        );
    }

    #[test]
    fn encoded_partial_or_other_typed_bodies_are_not_skip_candidates() {
        for response in [
            vec![(":status", "200"), ("content-type", "image/png"), ("content-encoding", "gzip")],
            vec![(":status", "200"), ("content-type", "text/html")],
            vec![(":status", "200"), ("content-type", "image/png"), ("content-type", "text/html")],
            vec![(":status", "200")],
        ] {
            let mut state = StreamState::new(skipping_png(false));
            effects_of(&mut state, get("/a.png"));
            hold(&mut state, response_headers(&response));
            let effects = effects_of(&mut state, message(Request::ResponseBody(body(PNG, false))));
            assert_eq!(
                effects,
                vec![Effect::HoldPiece { direction: Direction::Response, body: PNG.to_vec() }],
                "{response:?}"
            );
        }
        // A 206 is never skipped (its first bytes are not the object's).
        let mut state = StreamState::new(skipping_png(false));
        effects_of(&mut state, get("/a.png"));
        let effects =
            effects_of(&mut state, response_headers(&[(":status", "206"), ("content-type", "image/png")]));
        assert!(
            matches!(effects[..], [Effect::DecideUnscanned { reason: UnscannedReason::PartialContent, .. }]),
            "{effects:?}"
        );
    }

    #[test]
    fn an_upload_is_skipped_only_when_the_rule_names_requests() {
        let upload = |policy: StreamPolicy| {
            let mut state = StreamState::new(policy);
            let request =
                headers(&[(":method", "POST"), (":path", "/up"), ("content-type", "image/png")], false);
            assert!(hold(&mut state, duplex_uploads(Request::RequestHeaders(request))).is_some());
            effects_of(&mut state, duplex_uploads(Request::RequestBody(body(PNG, true))))
        };
        let effects = upload(skipping_png(false));
        assert!(matches!(effects[..], [Effect::HoldPiece { .. }, Effect::ScanHeld { .. }]), "{effects:?}");
        let effects = upload(skipping_png(true));
        assert!(
            matches!(
                effects[..],
                [
                    Effect::CountSkip { skipped: true, .. },
                    Effect::HoldPiece { .. },
                    Effect::SendHeld { complete: true, .. }
                ]
            ),
            "{effects:?}"
        );
    }
}
