//! The ext_proc state machine driven like Envoy drives it, with the effects carried out by a model
//! of the stream task: an upload (FULL_DUPLEX or BUFFERED) and a download in any pieces, any
//! verdicts, and then the same sequence broken (a message dropped, repeated or moved).
//!
//! What must hold for every sequence: the stream fails, or every byte sent back for a body is a
//! byte of that body that was scanned and decided clean (never before its decision); a body
//! decided infected or unscanned is answered with an immediate response and none of its bytes;
//! each body is decided at most once. For the unbroken sequence, the stream also completes: no
//! failure, nothing left held, and a clean body comes back exactly as it went in.

use std::collections::VecDeque;

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
use proptest::prelude::*;

use super::stream_model::{check_safety, envoy_headers, run, Outcome};

/// One request as Envoy would carry it.
#[derive(Debug, Clone)]
struct Exchange {
    /// Pieces of the upload (None: a GET without body).
    upload: Option<Vec<Vec<u8>>>,
    /// The upload's route streams it FULL_DUPLEX (else BUFFERED: one message).
    upload_duplex: bool,
    /// Pieces of the download.
    download: Vec<Vec<u8>>,
    /// Trailers end the download (else its last piece does).
    download_trailers: bool,
    upload_verdict: Verdict,
    download_verdict: Verdict,
}

/// How the sequence is broken, if it is.
#[derive(Debug, Clone)]
enum Break {
    None,
    Drop(usize),
    Repeat(usize),
    Move { from: usize, to: usize },
}

fn verdict() -> impl Strategy<Value = Verdict> {
    prop_oneof![
        3 => Just(Verdict::Clean),
        1 => Just(Verdict::Infected { signature: "Test.Sig".into() }),
        1 => Just(Verdict::Unscanned { reason: UnscannedReason::Timeout }),
    ]
}

fn pieces() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 0..5)
}

fn exchange() -> impl Strategy<Value = Exchange> {
    (prop::option::of(pieces()), any::<bool>(), pieces(), any::<bool>(), verdict(), verdict()).prop_map(
        |(upload, upload_duplex, download, download_trailers, upload_verdict, download_verdict)| Exchange {
            upload,
            upload_duplex,
            download,
            download_trailers,
            upload_verdict,
            download_verdict,
        },
    )
}

fn breaking() -> impl Strategy<Value = Break> {
    prop_oneof![
        Just(Break::None),
        (0usize..12).prop_map(Break::Drop),
        (0usize..12).prop_map(Break::Repeat),
        (0usize..12, 0usize..12).prop_map(|(from, to)| Break::Move { from, to }),
    ]
}

fn message(request: Request) -> ProcessingRequest {
    ProcessingRequest { request: Some(request), ..ProcessingRequest::default() }
}

fn body(bytes: Vec<u8>, end_of_stream: bool) -> HttpBody {
    HttpBody { body: bytes, end_of_stream, ..HttpBody::default() }
}

/// The request-side messages of an exchange, the first with Envoy's configured body modes.
fn request_messages(exchange: &Exchange) -> Vec<ProcessingRequest> {
    let has_body = exchange.upload.is_some();
    let method = if has_body { "POST" } else { "GET" };
    let request_mode =
        if exchange.upload_duplex { BodySendMode::FullDuplexStreamed } else { BodySendMode::Buffered };
    let first = ProcessingRequest {
        protocol_config: Some(ProtocolConfiguration {
            request_body_mode: request_mode as i32,
            response_body_mode: BodySendMode::Buffered as i32,
            ..ProtocolConfiguration::default()
        }),
        ..message(Request::RequestHeaders(envoy_headers(&[(":method", method), (":path", "/a")], !has_body)))
    };
    let mut messages = vec![first];
    if let Some(pieces) = &exchange.upload {
        messages.extend(body_messages(pieces, exchange.upload_duplex, false, Request::RequestBody));
    }
    messages
}

/// A body's messages: its pieces (FULL_DUPLEX) or one message (BUFFERED), ended by the last
/// piece or by trailers.
fn body_messages(
    pieces: &[Vec<u8>],
    duplex: bool,
    trailers: bool,
    kind: fn(HttpBody) -> Request,
) -> Vec<ProcessingRequest> {
    let mut pieces: Vec<Vec<u8>> = if duplex { pieces.to_vec() } else { vec![pieces.concat()] };
    if pieces.is_empty() {
        pieces.push(Vec::new());
    }
    let count = pieces.len();
    let mut messages: Vec<ProcessingRequest> = pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| message(kind(body(piece, i + 1 == count && !trailers))))
        .collect();
    if trailers {
        let end = |trailers| match kind(HttpBody::default()) {
            Request::RequestBody(_) => Request::RequestTrailers(trailers),
            _ => Request::ResponseTrailers(trailers),
        };
        messages.push(message(end(HttpTrailers { trailers: Some(HeaderMap::default()) })));
    }
    messages
}

fn response_messages(exchange: &Exchange, duplex: bool) -> Vec<ProcessingRequest> {
    let no_body = exchange.download.is_empty() && !exchange.download_trailers;
    let mut messages = vec![message(Request::ResponseHeaders(envoy_headers(&[(":status", "200")], no_body)))];
    if !no_body {
        messages.extend(body_messages(
            &exchange.download,
            duplex,
            exchange.download_trailers,
            Request::ResponseBody,
        ));
    }
    messages
}

/// Feeds the exchange's messages (broken by `breaking`) as Envoy would: the response only once
/// the request went on, nothing after a refusal or a failure.
fn drive(exchange: &Exchange, breaking: &Break) -> (Outcome, StreamState) {
    let policy =
        StreamPolicy::of(&Policy::new(&PolicyConfig::default(), &ResponseConfig::default()), 1 << 20);
    let mut state = StreamState::new(policy);
    let mut outcome = Outcome::default();
    // The response's mode is known once the request headers are answered; build its messages
    // then, and break the whole sequence as one.
    let mut messages: VecDeque<ProcessingRequest> = request_messages(exchange).into();
    let mut response_added = false;
    let mut index = 0;
    let mut broken = false;
    loop {
        if !response_added && messages.is_empty() {
            response_added = true;
            let duplex = state.is_full_duplex(Direction::Response);
            messages.extend(response_messages(exchange, duplex));
        }
        let Some(mut message) = messages.pop_front() else { break };
        if !broken {
            match *breaking {
                Break::Drop(at) if at == index => {
                    broken = true;
                    index += 1;
                    continue;
                }
                Break::Repeat(at) if at == index => {
                    broken = true;
                    messages.push_front(message.clone());
                }
                Break::Move { from, to } if from == index && to > from => {
                    broken = true;
                    let position = (to - from).min(messages.len());
                    messages.insert(position, message);
                    index += 1;
                    continue;
                }
                _ => {}
            }
        }
        index += 1;
        match &message.request {
            Some(Request::RequestBody(_)) => outcome.body_seen[0] = true,
            Some(Request::ResponseBody(_)) => outcome.body_seen[1] = true,
            _ => {}
        }
        let effects = on_message(&mut state, std::mem::take(&mut message));
        run(&mut state, effects, [&exchange.upload_verdict, &exchange.download_verdict], &mut outcome);
        if outcome.failed || outcome.refused {
            break;
        }
    }
    (outcome, state)
}

fn upload_bytes(exchange: &Exchange) -> Vec<u8> {
    exchange.upload.as_ref().map(|pieces| pieces.concat()).unwrap_or_default()
}

proptest! {
    #[test]
    fn an_unbroken_exchange_completes_and_every_byte_delivered_was_scanned_clean(exchange in exchange()) {
        let (outcome, state) = drive(&exchange, &Break::None);
        check_safety(&outcome).map_err(TestCaseError::fail)?;
        prop_assert!(!outcome.failed, "an exchange as Envoy sends it failed: {outcome:?}");
        for direction in [Direction::Request, Direction::Response] {
            prop_assert!(!state.is_holding(direction), "{direction:?} still held");
        }
        let upload_refused = exchange.upload.is_some() && exchange.upload_verdict != Verdict::Clean;
        if upload_refused {
            prop_assert!(outcome.refused);
            prop_assert!(outcome.delivered[0].is_empty());
            prop_assert!(outcome.delivered[1].is_empty());
            return Ok(());
        }
        prop_assert_eq!(&outcome.delivered[0], &upload_bytes(&exchange));
        let has_download = !exchange.download.is_empty() || exchange.download_trailers;
        if has_download && exchange.download_verdict != Verdict::Clean {
            prop_assert!(outcome.refused);
            prop_assert!(outcome.delivered[1].is_empty());
        } else {
            prop_assert!(!outcome.refused);
            prop_assert_eq!(&outcome.delivered[1], &exchange.download.concat());
        }
    }

    #[test]
    fn a_broken_exchange_fails_or_delivers_only_scanned_clean_bytes(exchange in exchange(), breaking in breaking()) {
        let (outcome, state) = drive(&exchange, &breaking);
        check_safety(&outcome).map_err(TestCaseError::fail)?;
        // Never OK before a decision: a stream that neither failed nor refused, and holds nothing
        // (the stream task ends one that still holds a body with an error), decided every body
        // it was sent.
        let holding = [Direction::Request, Direction::Response].iter().any(|d| state.is_holding(*d));
        if !outcome.failed && !outcome.refused && !holding {
            for d in [0, 1] {
                if outcome.body_seen[d] {
                    prop_assert_eq!(outcome.decisions[d], 1, "direction {} ended undecided", d);
                }
            }
        }
    }
}
