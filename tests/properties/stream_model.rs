//! A model of the ext_proc stream task for the state machine's property tests and fuzz target:
//! it carries out the effects `on_message` returns (holding, scanning with a given verdict,
//! sending back) and records what reached each side, so that the safety of any sequence can be
//! checked ([`check_safety`]). Shared by `tests/properties/state_machine.rs` and
//! `fuzz/fuzz_targets/state_machine.rs`.

use std::collections::VecDeque;

use clamgate::config::{PolicyConfig, ResponseConfig};
use clamgate::ext_proc::state::{decided, on_resource_lookup, Effect, StreamState, Then};
use clamgate::policy::{decide, Decision, DecisionContext, Direction, Policy};
use clamgate::scanner::ResourceLookup;
use clamgate::verdict::Verdict;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingResponse};

/// A headers message as Envoy sends it: lower-case keys, values in `raw_value`.
pub fn envoy_headers(pairs: &[(&str, &str)], end_of_stream: bool) -> HttpHeaders {
    let headers = pairs
        .iter()
        .map(|(key, value)| HeaderValue {
            key: key.to_string(),
            raw_value: value.as_bytes().to_vec(),
            ..HeaderValue::default()
        })
        .collect();
    HttpHeaders { headers: Some(HeaderMap { headers }), end_of_stream, ..HttpHeaders::default() }
}

/// What the model of the stream task saw happen.
#[derive(Debug, Default)]
pub struct Outcome {
    pub failed: bool,
    /// An immediate response was sent (a refusal); Envoy sends nothing more.
    pub refused: bool,
    /// Bytes held per direction, not yet scanned.
    pub held: [Vec<u8>; 2],
    /// The bytes each direction's scan saw, and how often a body was scanned or decided.
    pub scanned: [Option<Vec<u8>>; 2],
    pub decisions: [usize; 2],
    /// Each direction's decision let its body through.
    pub allowed: [bool; 2],
    /// Bytes sent back (or let through unchanged, BUFFERED) per direction.
    pub delivered: [Vec<u8>; 2],
    /// Bytes sent back before the direction was decided.
    pub early: [usize; 2],
    /// A body message of the direction reached the state machine.
    pub body_seen: [bool; 2],
}

/// Carries out effects as the stream task does, deciding with the default policy: each
/// direction's scan gives `verdicts[direction]`.
pub fn run(state: &mut StreamState, effects: Vec<Effect>, verdicts: [&Verdict; 2], outcome: &mut Outcome) {
    let policy = Policy::new(&PolicyConfig::default(), &ResponseConfig::default());
    let verdict_of = |direction: Direction| verdicts[direction as usize].clone();
    let mut queue: VecDeque<Effect> = effects.into();
    while let Some(effect) = queue.pop_front() {
        if outcome.failed {
            return;
        }
        let decide_on = |verdict: &Verdict, direction| {
            let context =
                DecisionContext { direction, request_id: "r", sha256: None, part: None, accept: None };
            decide(verdict, &policy, context)
        };
        let next = match effect {
            Effect::Reply(answer) => {
                record_reply(&answer, outcome);
                Vec::new()
            }
            Effect::Fail(_) => {
                outcome.failed = true;
                Vec::new()
            }
            Effect::LookupResource { .. } => on_resource_lookup(state, ResourceLookup::Miss),
            Effect::HoldPiece { direction, body } => {
                outcome.held[direction as usize].extend(body);
                Vec::new()
            }
            Effect::ScanHeld { direction, trailers, .. } => {
                let d = direction as usize;
                outcome.scanned[d] = Some(outcome.held[d].clone());
                outcome.decisions[d] += 1;
                let decision = decide_on(&verdict_of(direction), direction);
                outcome.allowed[d] = matches!(decision, Decision::Continue { .. });
                decided(state, Then::ReleaseHeld { direction, trailers }, &decision)
            }
            Effect::ScanBody { direction, body, .. } => {
                let d = direction as usize;
                outcome.scanned[d] = Some(body.clone());
                outcome.decisions[d] += 1;
                let decision = decide_on(&verdict_of(direction), direction);
                if matches!(decision, Decision::Continue { .. }) {
                    outcome.allowed[d] = true;
                    // A BUFFERED body answered "continue" goes on as Envoy holds it.
                    outcome.delivered[d].extend(&body);
                }
                decided(state, Then::AnswerBody { direction }, &decision)
            }
            Effect::DecideUnscanned { direction, reason, then, .. } => {
                outcome.decisions[direction as usize] += 1;
                decided(state, then, &decide_on(&Verdict::Unscanned { reason }, direction))
            }
            Effect::Decide { direction, report, then } => {
                outcome.decisions[direction as usize] += 1;
                decided(state, then, &decide_on(&report.verdict, direction))
            }
            Effect::SendHeld { direction, headers_answer, .. } => {
                if let Some(answer) = headers_answer {
                    record_reply(&answer, outcome);
                }
                let d = direction as usize;
                if outcome.decisions[d] == 0 {
                    outcome.early[d] += outcome.held[d].len();
                }
                let held = std::mem::take(&mut outcome.held[d]);
                outcome.delivered[d].extend(held);
                Vec::new()
            }
            Effect::DropHeld { direction } => {
                outcome.held[direction as usize].clear();
                Vec::new()
            }
            // Not reached without a resource cache or a skip rule; harmless if they were.
            Effect::PassCachedResource { .. }
            | Effect::EchoCachedResource { .. }
            | Effect::VerifyPiece { .. }
            | Effect::FinishVerification
            | Effect::CountSkip { .. } => Vec::new(),
        };
        for effect in next.into_iter().rev() {
            queue.push_front(effect);
        }
    }
}

/// A reply's effect on the outcome: a refusal, or body bytes sent back.
fn record_reply(answer: &ProcessingResponse, outcome: &mut Outcome) {
    let (direction, response) = match &answer.response {
        Some(Response::ImmediateResponse(_)) => {
            outcome.refused = true;
            return;
        }
        Some(Response::RequestBody(body)) => (Direction::Request, body),
        Some(Response::ResponseBody(body)) => (Direction::Response, body),
        _ => return,
    };
    let streamed =
        response.response.as_ref().and_then(|common| common.body_mutation.as_ref()).and_then(|m| {
            match &m.mutation {
                Some(Mutation::StreamedResponse(streamed)) => Some(&streamed.body),
                _ => None,
            }
        });
    if let Some(bytes) = streamed {
        let d = direction as usize;
        if outcome.decisions[d] == 0 {
            outcome.early[d] += bytes.len();
        }
        outcome.delivered[d].extend(bytes);
    }
}

/// What must hold whatever the sequence: each body decided at most once, nothing sent back
/// before its decision, and only bytes that were scanned and allowed.
pub fn check_safety(outcome: &Outcome) -> Result<(), String> {
    for d in [0, 1] {
        if outcome.decisions[d] > 1 {
            return Err(format!("direction {d} decided {} times", outcome.decisions[d]));
        }
        if outcome.early[d] != 0 {
            return Err(format!("direction {d} sent {} bytes back before its decision", outcome.early[d]));
        }
        if !outcome.delivered[d].is_empty() {
            if !outcome.allowed[d] {
                return Err(format!("direction {d} delivered bytes it was not allowed to"));
            }
            if outcome.delivered[d] != outcome.scanned[d].as_deref().unwrap_or_default() {
                return Err(format!("direction {d} delivered other bytes than it scanned"));
            }
        }
    }
    Ok(())
}
