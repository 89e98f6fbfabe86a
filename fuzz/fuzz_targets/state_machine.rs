//! The ext_proc state machine on any sequence of Envoy messages (any kind, order, body bytes and
//! end flags, any body modes), with the effects carried out by the model the property tests use:
//! never a panic, each body decided at most once, nothing sent back before its decision, and only
//! bytes that were scanned and allowed; a stream that ends without failing decided every body.
#![no_main]

use arbitrary::Arbitrary;
use clamgate::config::{PolicyConfig, ResponseConfig};
use clamgate::ext_proc::state::{on_message, StreamPolicy, StreamState};
use clamgate::policy::{Direction, Policy};
use clamgate::verdict::{UnscannedReason, Verdict};
use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpTrailers, ProcessingRequest, ProtocolConfiguration,
};
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/properties/stream_model.rs"]
mod stream_model;
use stream_model::envoy_headers;

#[derive(Debug, Arbitrary)]
enum Message {
    RequestHeaders { post: bool, end_of_stream: bool, range: bool, content_type: u8 },
    RequestBody { bytes: Vec<u8>, end_of_stream: bool },
    RequestTrailers,
    ResponseHeaders { status: u8, end_of_stream: bool, encoding: bool },
    ResponseBody { bytes: Vec<u8>, end_of_stream: bool },
    ResponseTrailers,
}

#[derive(Debug, Arbitrary)]
struct Input {
    request_mode: u8,
    response_mode: u8,
    modes_on_every_message: bool,
    verdicts: [u8; 2],
    messages: Vec<Message>,
}

fn mode(byte: u8) -> BodySendMode {
    match byte % 4 {
        0 => BodySendMode::Buffered,
        1 => BodySendMode::FullDuplexStreamed,
        2 => BodySendMode::None,
        _ => BodySendMode::Streamed,
    }
}

fn verdict(byte: u8) -> Verdict {
    match byte % 3 {
        0 => Verdict::Clean,
        1 => Verdict::Infected { signature: "Fuzz.Sig".into() },
        _ => Verdict::Unscanned { reason: UnscannedReason::Timeout },
    }
}

fn request(message: &Message) -> Request {
    let body = |bytes: &Vec<u8>, end_of_stream| HttpBody {
        body: bytes.clone(),
        end_of_stream,
        ..HttpBody::default()
    };
    match message {
        Message::RequestHeaders { post, end_of_stream, range, content_type } => {
            let mut pairs = vec![(":method", if *post { "POST" } else { "GET" }), (":path", "/a")];
            if *range {
                pairs.push(("range", "bytes=0-1"));
            }
            match content_type % 3 {
                0 => pairs.push(("content-type", "multipart/form-data; boundary=b")),
                1 => pairs.push(("content-type", "image/png")),
                _ => {}
            }
            Request::RequestHeaders(envoy_headers(&pairs, *end_of_stream))
        }
        Message::RequestBody { bytes, end_of_stream } => Request::RequestBody(body(bytes, *end_of_stream)),
        Message::RequestTrailers => {
            Request::RequestTrailers(HttpTrailers { trailers: Some(HeaderMap::default()) })
        }
        Message::ResponseHeaders { status, end_of_stream, encoding } => {
            let status = ["200", "206", "304", "404"][*status as usize % 4];
            let mut pairs = vec![(":status", status)];
            if *encoding {
                pairs.push(("content-encoding", "gzip"));
            }
            Request::ResponseHeaders(envoy_headers(&pairs, *end_of_stream))
        }
        Message::ResponseBody { bytes, end_of_stream } => Request::ResponseBody(body(bytes, *end_of_stream)),
        Message::ResponseTrailers => {
            Request::ResponseTrailers(HttpTrailers { trailers: Some(HeaderMap::default()) })
        }
    }
}

fuzz_target!(|input: Input| {
    let policy =
        StreamPolicy::of(&Policy::new(&PolicyConfig::default(), &ResponseConfig::default()), 1 << 12);
    let mut state = StreamState::new(policy);
    let mut outcome = stream_model::Outcome::default();
    let verdicts = [verdict(input.verdicts[0]), verdict(input.verdicts[1])];
    for (i, message) in input.messages.iter().take(64).enumerate() {
        let protocol_config = (i == 0 || input.modes_on_every_message).then(|| ProtocolConfiguration {
            request_body_mode: mode(input.request_mode) as i32,
            response_body_mode: mode(input.response_mode) as i32,
            ..ProtocolConfiguration::default()
        });
        match message {
            Message::RequestBody { .. } => outcome.body_seen[0] = true,
            Message::ResponseBody { .. } => outcome.body_seen[1] = true,
            _ => {}
        }
        let message = ProcessingRequest {
            request: Some(request(message)),
            protocol_config,
            ..ProcessingRequest::default()
        };
        let effects = on_message(&mut state, message);
        stream_model::run(&mut state, effects, [&verdicts[0], &verdicts[1]], &mut outcome);
        if let Err(broken) = stream_model::check_safety(&outcome) {
            panic!("{broken}: {input:?}");
        }
        if outcome.failed || outcome.refused {
            return;
        }
    }
    // Never OK before a decision: a stream that ends neither failed nor refused, holding nothing
    // (the stream task fails one that still holds a body), decided every body it was sent.
    let holding = [Direction::Request, Direction::Response].iter().any(|d| state.is_holding(*d));
    if !holding {
        for d in [0, 1] {
            assert!(
                !outcome.body_seen[d] || outcome.decisions[d] == 1,
                "direction {d} ended undecided: {input:?}"
            );
        }
    }
});
