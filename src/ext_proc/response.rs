//! Renders clamgate's answers as ext_proc `ProcessingResponse` messages (prost structs; the
//! envoy-types crate has helpers only for ext_authz).

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse,
    ProcessingResponse, StreamedBodyResponse, TrailersResponse,
};

use crate::policy::{BlockResponse, Direction};

/// The header that tells the client (or the application, for uploads) what clamgate decided.
pub const VERDICT_HEADER: &str = "x-clamgate-verdict";

/// Continue after headers, removing the named headers (client- or upstream-sent control headers).
pub fn headers_continue(direction: Direction, remove_headers: Vec<String>) -> ProcessingResponse {
    let header_mutation =
        (!remove_headers.is_empty()).then(|| HeaderMutation { remove_headers, set_headers: Vec::new() });
    let answer =
        HeadersResponse { response: Some(CommonResponse { header_mutation, ..CommonResponse::default() }) };
    reply(match direction {
        Direction::Request => Response::RequestHeaders(answer),
        Direction::Response => Response::ResponseHeaders(answer),
    })
}

/// A headers answer (of held FULL_DUPLEX headers, once the body is decided) that also sets
/// `x-clamgate-verdict` when `verdict_header` is given. Other answers are returned unchanged.
pub fn with_verdict_header(
    mut answer: ProcessingResponse,
    verdict_header: Option<&str>,
) -> ProcessingResponse {
    let Some(value) = verdict_header else { return answer };
    let headers = match answer.response.as_mut() {
        Some(Response::RequestHeaders(headers)) | Some(Response::ResponseHeaders(headers)) => headers,
        _ => return answer,
    };
    let common = headers.response.get_or_insert_with(CommonResponse::default);
    common
        .header_mutation
        .get_or_insert_with(HeaderMutation::default)
        .set_headers
        .push(set_header(VERDICT_HEADER, value));
    answer
}

/// Continue after the response headers of a resource the cache knows clean, and let its body
/// through without sending it to clamgate: a `mode_override` to response body mode NONE.
///
/// `mode_override` has no "unchanged" value for body modes (0 is NONE), so every mode is restated;
/// the request side is over by now, but a bare override would still say NONE for it.
pub fn response_headers_pass_unbuffered(
    remove_headers: Vec<String>,
    verdict_header: Option<&str>,
) -> ProcessingResponse {
    let header_mutation = HeaderMutation {
        set_headers: verdict_header.map(|value| set_header(VERDICT_HEADER, value)).into_iter().collect(),
        remove_headers,
    };
    let answer = HeadersResponse {
        response: Some(CommonResponse {
            header_mutation: Some(header_mutation),
            ..CommonResponse::default()
        }),
    };
    ProcessingResponse {
        mode_override: Some(ProcessingMode {
            request_header_mode: HeaderSendMode::Send as i32,
            response_header_mode: HeaderSendMode::Send as i32,
            request_body_mode: BodySendMode::Buffered as i32,
            response_body_mode: BodySendMode::None as i32,
            request_trailer_mode: HeaderSendMode::Skip as i32,
            response_trailer_mode: HeaderSendMode::Skip as i32,
        }),
        ..reply(Response::ResponseHeaders(answer))
    }
}

/// `answer` with a `mode_override` that sets both body modes. `mode_override` has no
/// "unchanged" value (rule 5), so every mode is restated: headers SEND; trailers SEND for a
/// FULL_DUPLEX_STREAMED direction (Envoy requires it), SKIP otherwise (the shipped config's).
pub fn with_body_modes(
    answer: ProcessingResponse,
    request_body: BodySendMode,
    response_body: BodySendMode,
) -> ProcessingResponse {
    let trailers = |mode: BodySendMode| match mode {
        BodySendMode::FullDuplexStreamed => HeaderSendMode::Send as i32,
        _ => HeaderSendMode::Skip as i32,
    };
    ProcessingResponse {
        mode_override: Some(ProcessingMode {
            request_header_mode: HeaderSendMode::Send as i32,
            response_header_mode: HeaderSendMode::Send as i32,
            request_body_mode: request_body as i32,
            response_body_mode: response_body as i32,
            request_trailer_mode: trailers(request_body),
            response_trailer_mode: trailers(response_body),
        }),
        ..answer
    }
}

/// One piece of a FULL_DUPLEX body sent back to Envoy (at most 64 KiB), `end_of_stream` on the
/// last.
pub fn streamed_body(direction: Direction, body: Vec<u8>, end_of_stream: bool) -> ProcessingResponse {
    let answer = BodyResponse {
        response: Some(CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(Mutation::StreamedResponse(StreamedBodyResponse {
                    body,
                    end_of_stream,
                    ..StreamedBodyResponse::default()
                })),
            }),
            ..CommonResponse::default()
        }),
    };
    reply(match direction {
        Direction::Request => Response::RequestBody(answer),
        Direction::Response => Response::ResponseBody(answer),
    })
}

/// Continue after trailers, removing the named trailers (client- or upstream-sent control names).
pub fn trailers_continue(direction: Direction, remove_trailers: Vec<String>) -> ProcessingResponse {
    let header_mutation = (!remove_trailers.is_empty())
        .then(|| HeaderMutation { remove_headers: remove_trailers, set_headers: Vec::new() });
    let answer = TrailersResponse { header_mutation };
    reply(match direction {
        Direction::Request => Response::RequestTrailers(answer),
        Direction::Response => Response::ResponseTrailers(answer),
    })
}

/// Continue after a body, optionally setting `x-clamgate-verdict`.
///
/// In BUFFERED mode the headers are still held, so a header set here reaches the client (or the
/// upstream, for a request).
pub fn body_continue(direction: Direction, verdict_header: Option<&str>) -> ProcessingResponse {
    let header_mutation = verdict_header.map(|value| HeaderMutation {
        set_headers: vec![set_header(VERDICT_HEADER, value)],
        ..HeaderMutation::default()
    });
    let answer =
        BodyResponse { response: Some(CommonResponse { header_mutation, ..CommonResponse::default() }) };
    reply(match direction {
        Direction::Request => Response::RequestBody(answer),
        Direction::Response => Response::ResponseBody(answer),
    })
}

/// Replace the response with clamgate's own (409, 503, ...).
pub fn immediate(block: &BlockResponse) -> ProcessingResponse {
    let mut set_headers = vec![
        set_header("content-type", block.content_type),
        set_header(VERDICT_HEADER, block.verdict),
        set_header("cache-control", "no-store"),
    ];
    if let Some(location) = &block.location {
        set_headers.push(set_header("location", location));
    }
    if let Some(secs) = block.retry_after_secs {
        set_headers.push(set_header("retry-after", &secs.to_string()));
    }
    reply(Response::ImmediateResponse(ImmediateResponse {
        // Envoy's StatusCode enum values are the HTTP status codes themselves.
        status: Some(HttpStatus { code: i32::from(block.status) }),
        headers: Some(HeaderMutation { set_headers, ..HeaderMutation::default() }),
        body: block.body.clone(),
        grpc_status: None,
        details: block.details.clone(),
    }))
}

fn reply(response: Response) -> ProcessingResponse {
    ProcessingResponse { response: Some(response), ..ProcessingResponse::default() }
}

fn set_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            raw_value: value.as_bytes().to_vec(),
            ..HeaderValue::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The headers an immediate response sets, as (name, value).
    fn set_headers(answer: ImmediateResponse) -> Vec<(String, Vec<u8>)> {
        let mutation = answer.headers.unwrap_or_default();
        mutation.set_headers.into_iter().filter_map(|h| h.header).map(|h| (h.key, h.raw_value)).collect()
    }

    #[test]
    fn a_block_becomes_an_immediate_response_with_headers_and_body() {
        let block = BlockResponse {
            status: 503,
            verdict: "unscanned",
            retry_after_secs: Some(30),
            content_type: "application/json",
            body: b"{}".to_vec(),
            location: None,
            details: "clamgate_unscanned_timeout".into(),
        };
        let Some(Response::ImmediateResponse(answer)) = immediate(&block).response else {
            panic!("not immediate")
        };
        assert_eq!(answer.status.map(|s| s.code), Some(503));
        assert_eq!(answer.body, b"{}");
        let headers = set_headers(answer);
        assert!(headers.contains(&("retry-after".into(), b"30".to_vec())), "{headers:?}");
        assert!(headers.contains(&(VERDICT_HEADER.into(), b"unscanned".to_vec())), "{headers:?}");
        assert!(headers.contains(&("content-type".into(), b"application/json".to_vec())), "{headers:?}");
        assert!(!headers.iter().any(|(name, _)| name == "location"), "{headers:?}");
    }

    #[test]
    fn a_redirect_carries_its_location() {
        let block = BlockResponse {
            status: 303,
            verdict: "infected",
            retry_after_secs: None,
            content_type: "text/plain; charset=utf-8",
            body: b"See Other\n".to_vec(),
            location: Some("/blocked?id=r1".into()),
            details: "clamgate_infected".into(),
        };
        let Some(Response::ImmediateResponse(answer)) = immediate(&block).response else {
            panic!("not immediate")
        };
        assert_eq!(answer.status.map(|s| s.code), Some(303));
        let headers = set_headers(answer);
        assert!(headers.contains(&("location".into(), b"/blocked?id=r1".to_vec())), "{headers:?}");
        assert!(
            headers.contains(&("content-type".into(), b"text/plain; charset=utf-8".to_vec())),
            "{headers:?}"
        );
    }

    #[test]
    fn a_clean_body_sets_the_verdict_header_on_the_right_direction() {
        let answer = body_continue(Direction::Request, Some("clean"));
        let Some(Response::RequestBody(body)) = answer.response else { panic!("not a request body answer") };
        let mutation = body.response.unwrap().header_mutation.unwrap();
        assert_eq!(mutation.set_headers[0].header.as_ref().unwrap().raw_value, b"clean");
        let answer = body_continue(Direction::Response, None);
        let Some(Response::ResponseBody(body)) = answer.response else {
            panic!("not a response body answer")
        };
        assert!(body.response.unwrap().header_mutation.is_none());
    }

    #[test]
    fn a_cached_clean_resource_restates_every_mode_and_turns_only_the_response_body_off() {
        let answer = response_headers_pass_unbuffered(vec!["x-clamgate-x".into()], Some("clean"));
        let mode = answer.mode_override.expect("mode_override");
        assert_eq!(mode.response_body_mode, BodySendMode::None as i32);
        assert_eq!(
            mode.request_body_mode,
            BodySendMode::Buffered as i32,
            "rule 5: never leave a body mode at 0"
        );
        assert_eq!(mode.response_header_mode, HeaderSendMode::Send as i32);
        let Some(Response::ResponseHeaders(headers)) = answer.response else {
            panic!("not a headers answer")
        };
        let mutation = headers.response.unwrap().header_mutation.unwrap();
        assert_eq!(mutation.remove_headers, vec!["x-clamgate-x"]);
        assert_eq!(mutation.set_headers[0].header.as_ref().unwrap().raw_value, b"clean");
    }
}
