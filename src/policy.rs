//! Policy: the one place where a verdict becomes an answer (`decide`), for Envoy and nginx alike.
//!
//! | verdict | request (upload) | response (download) |
//! |---|---|---|
//! | Clean | continue, `x-clamgate-verdict: clean` | same |
//! | Infected | 409 + JSON | 409 + JSON |
//! | Unscanned, engine trouble (`engine_unavailable`, `timeout`, `engine_error`), denied | 503 + `retry-after` | 503 + `retry-after` |
//! | Unscanned, `too_large` / `limits_exceeded`, denied | 413 | 502 |
//! | Unscanned, other content reasons (`malformed_multipart` among them), denied | 422 | 502 |
//! | Unscanned under nginx (`not_cached`, `origin_error`, `no_validator`, `body_not_visible`), denied | 422 | 502 |
//! | Unscanned, allowed by policy | continue, `x-clamgate-verdict: unscanned` | same |
//!
//! `report_only` turns every block into a continue (the verdict header still tells the truth).

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::block_page::{prefers_html, BlockFields, HtmlAnswer};
use crate::config::{Config, PolicyConfig, ResponseConfig, UnscannedAction, DEFAULT_POLICY_NAME};
use crate::skip::SkipRule;
use crate::verdict::{UnscannedReason, Verdict};

/// Which way the body travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A request body: an upload on its way to the application.
    Request,
    /// A response body: a download on its way to the client.
    Response,
}

impl Direction {
    /// `upload` or `download`: how refusals name it (a block page's `{{direction}}`, nginx's
    /// `x-clamgate-direction`).
    pub const fn as_people_say(self) -> &'static str {
        match self {
            Direction::Request => "upload",
            Direction::Response => "download",
        }
    }
}

/// What the proxy should do with the message that was scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let the body through. `verdict_header` is the value of `x-clamgate-verdict` to set, if any.
    /// `would_block`: the status of the block `report_only` turned into this continue (the body
    /// is delivered all the same), for the audit line.
    Continue { verdict_header: Option<&'static str>, would_block: Option<u16> },
    /// Answer the client directly; the body never reaches its destination.
    Block(BlockResponse),
}

/// A response clamgate gives in place of the upstream's (or instead of forwarding an upload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockResponse {
    /// HTTP status: the policy's `block.status` (409) for infected bodies; 503, 413, 502 or 422
    /// for unscanned ones; 303 for a redirect.
    pub status: u16,
    /// The value of `x-clamgate-verdict`: `infected` or `unscanned`.
    pub verdict: &'static str,
    /// Seconds for `retry-after`, for engine trouble.
    pub retry_after_secs: Option<u64>,
    /// The body's `content-type`: JSON, or HTML from the policy's template.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// `location`, for a redirect.
    pub location: Option<String>,
    /// Short machine-readable cause for Envoy's response-code details, e.g. `clamgate_infected`.
    pub details: String,
}

/// A policy as decisions use it: one `[policy]` or `[policies.NAME]` section together with the
/// `[response]` settings every policy shares, built once at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// What to scan, what to do with unscanned bodies, how to use the cache.
    pub rules: PolicyConfig,
    /// How answers look.
    pub answers: ResponseConfig,
    /// The HTML page or redirect of `rules.block`, if any.
    pub html: Option<HtmlAnswer>,
    /// The skip rule of `rules.skip`, if it names any type.
    pub skip: Option<Arc<SkipRule>>,
}

impl Policy {
    /// A policy without a name (its skip rule is labelled `default`).
    pub fn new(rules: &PolicyConfig, answers: &ResponseConfig) -> Policy {
        Policy::named(DEFAULT_POLICY_NAME, rules, answers)
    }

    /// The policy `name`. Its block template was read by the config checks; a file that has
    /// become unreadable since is logged and the policy answers JSON (a refusal all the same).
    pub fn named(name: &str, rules: &PolicyConfig, answers: &ResponseConfig) -> Policy {
        let html = HtmlAnswer::load(&rules.block).unwrap_or_else(|err| {
            tracing::error!(policy = name, error = %err, "block page unusable; refusals answer JSON");
            None
        });
        let skip = SkipRule::of(name, &rules.skip).map(Arc::new);
        Policy { rules: rules.clone(), answers: answers.clone(), html, skip }
    }
}

/// Every configured policy, by the name a route gives it; shared by all streams.
#[derive(Debug, Clone)]
pub struct Policies {
    default: Arc<Policy>,
    named: BTreeMap<String, Arc<Policy>>,
}

impl Policies {
    pub fn from_config(config: &Config) -> Policies {
        let named = config
            .policies
            .iter()
            .map(|(name, section)| (name.clone(), Arc::new(Policy::named(name, section, &config.response))))
            .collect();
        Policies { default: Arc::new(Policy::new(&config.policy, &config.response)), named }
    }

    /// `[policy]`, for a route that names none.
    pub fn default_policy(&self) -> Arc<Policy> {
        self.default.clone()
    }

    /// The policy a route selects by name: `[policies.NAME]`, or `[policy]` for
    /// [`DEFAULT_POLICY_NAME`] and for the empty name. `None` for a name that is not configured,
    /// which the caller must treat as an error (fail closed), never as the default.
    pub fn named(&self, name: &str) -> Option<Arc<Policy>> {
        match name {
            "" | DEFAULT_POLICY_NAME => Some(self.default.clone()),
            _ => self.named.get(name).cloned(),
        }
    }
}

/// Context for one decision that is not part of the verdict.
#[derive(Debug, Clone, Copy)]
pub struct DecisionContext<'a> {
    pub direction: Direction,
    /// Envoy's request id, echoed in JSON bodies so operators can find the audit line.
    pub request_id: &'a str,
    /// SHA-256 of the scanned bytes, when known.
    pub sha256: Option<&'a str>,
    /// The part of a multipart upload that decided, named for people (field and file name).
    pub part: Option<&'a str>,
    /// The client's `Accept`: chooses the HTML page over JSON when the policy has both.
    pub accept: Option<&'a str>,
}

#[derive(Serialize)]
struct BlockBody<'a> {
    verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<&'a str>,
    /// The multipart part that decided (its field and file name).
    #[serde(skip_serializing_if = "Option::is_none")]
    part: Option<&'a str>,
    request_id: &'a str,
}

/// Decides the answer to a verdict under a policy.
pub fn decide(verdict: &Verdict, policy: &Policy, context: DecisionContext<'_>) -> Decision {
    match decide_json(verdict, policy, context) {
        Decision::Block(block) => Decision::Block(policy.shape(block, context.accept, context.direction)),
        continued => continued,
    }
}

/// [`decide`] without the policy's HTML page or redirect: every block as JSON. nginx's
/// `/v1/auth` answers this way, and `/v1/blocked` shapes it for the client.
pub fn decide_json(verdict: &Verdict, policy: &Policy, context: DecisionContext<'_>) -> Decision {
    let (rules, response) = (&policy.rules, &policy.answers);
    let verdict_header = |value: &'static str| response.verdict_header.then_some(value);
    let (name, status, signature, reason) = match verdict {
        Verdict::Clean => {
            return Decision::Continue { verdict_header: verdict_header("clean"), would_block: None }
        }
        Verdict::Infected { signature } => {
            let shown = response.expose_signature.then_some(signature.as_str());
            ("infected", rules.block.status as u16, shown, None)
        }
        Verdict::Unscanned { reason } => {
            if rules.unscanned_action(*reason) == UnscannedAction::Allow {
                return Decision::Continue { verdict_header: verdict_header("unscanned"), would_block: None };
            }
            ("unscanned", unscanned_status(*reason, context.direction), None, Some(reason.as_str()))
        }
    };
    if rules.report_only {
        return Decision::Continue { verdict_header: verdict_header(name), would_block: Some(status) };
    }
    let details = match reason {
        Some(reason) => format!("clamgate_unscanned_{reason}"),
        None => "clamgate_infected".to_string(),
    };
    let retry_after_secs = match verdict {
        Verdict::Unscanned { reason } if reason.is_engine_trouble() => Some(response.retry_after_secs),
        _ => None,
    };
    let block = BlockResponse {
        status,
        verdict: name,
        retry_after_secs,
        content_type: "application/json",
        body: render_body(BlockBody {
            verdict: name,
            signature,
            reason,
            sha256: context.sha256,
            part: context.part,
            request_id: context.request_id,
        }),
        location: None,
        details,
    };
    Decision::Block(block)
}

/// The fields of a JSON refusal body, read back to fill a page.
#[derive(Debug, Deserialize)]
struct BlockJson {
    verdict: String,
    signature: Option<String>,
    reason: Option<String>,
    sha256: Option<String>,
    part: Option<String>,
    #[serde(default)]
    request_id: String,
}

impl Policy {
    /// A JSON refusal as this client should get it: unchanged, or the policy's HTML page or
    /// redirect (when the policy has one and the client's `accept` prefers HTML, or the policy
    /// offers no JSON), filled from the JSON body's fields.
    pub fn shape(&self, block: BlockResponse, accept: Option<&str>, direction: Direction) -> BlockResponse {
        let Some(html) = &self.html else { return block };
        if self.rules.block.json && !prefers_html(accept) {
            return block;
        }
        let Ok(json) = serde_json::from_slice::<BlockJson>(&block.body) else { return block };
        let fields = BlockFields {
            verdict: &json.verdict,
            signature: json.signature.as_deref(),
            reason: json.reason.as_deref(),
            sha256: json.sha256.as_deref(),
            part: json.part.as_deref(),
            request_id: &json.request_id,
            status: block.status,
            direction: direction.as_people_say(),
        };
        let rendered = html.render(&fields);
        BlockResponse {
            status: rendered.status,
            content_type: rendered.content_type,
            body: rendered.body,
            location: rendered.location,
            ..block
        }
    }
}

/// The HTTP status for a denied unscanned body.
fn unscanned_status(reason: UnscannedReason, direction: Direction) -> u16 {
    if reason.is_engine_trouble() {
        return 503;
    }
    match (direction, reason) {
        (Direction::Request, UnscannedReason::TooLarge | UnscannedReason::LimitsExceeded) => 413,
        (Direction::Request, _) => 422,
        (Direction::Response, _) => 502,
    }
}

fn render_body(body: BlockBody<'_>) -> Vec<u8> {
    // Serializing a struct of strings cannot fail; fall back to a fixed body all the same.
    serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"verdict":"unscanned"}"#.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheMode;

    fn context(direction: Direction) -> DecisionContext<'static> {
        DecisionContext { direction, request_id: "req-1", sha256: Some("ab12"), part: None, accept: None }
    }

    fn blocked(decision: Decision) -> BlockResponse {
        match decision {
            Decision::Block(block) => block,
            other => panic!("expected a block, got {other:?}"),
        }
    }

    #[test]
    fn named_finds_default_and_named_policies_and_nothing_else() {
        let mut config = Config::default();
        let mirror = PolicyConfig { cache_mode: CacheMode::Resource, ..PolicyConfig::default() };
        config.policies.insert("mirror".to_string(), mirror);
        let policies = Policies::from_config(&config);
        for name in ["default", ""] {
            assert!(policies
                .named(name)
                .is_some_and(|policy| Arc::ptr_eq(&policy, &policies.default_policy())));
        }
        assert_eq!(policies.named("mirror").map(|policy| policy.rules.cache_mode), Some(CacheMode::Resource));
        assert!(policies.named("mirorr").is_none());
        assert!(policies.named("Mirror").is_none());
    }

    #[test]
    fn clean_continues_with_the_verdict_header() {
        let decision = decide(
            &Verdict::Clean,
            &Policy::new(&PolicyConfig::default(), &ResponseConfig::default()),
            context(Direction::Response),
        );
        assert_eq!(decision, Decision::Continue { verdict_header: Some("clean"), would_block: None });
    }

    #[test]
    fn verdict_header_can_be_turned_off() {
        let response = ResponseConfig { verdict_header: false, ..ResponseConfig::default() };
        let decision = decide(
            &Verdict::Clean,
            &Policy::new(&PolicyConfig::default(), &response),
            context(Direction::Request),
        );
        assert_eq!(decision, Decision::Continue { verdict_header: None, would_block: None });
    }

    #[test]
    fn infected_is_409_with_the_documented_json() {
        let verdict = Verdict::Infected { signature: "Test.Eicar.Body.UNOFFICIAL".into() };
        let block = blocked(decide(
            &verdict,
            &Policy::new(&PolicyConfig::default(), &ResponseConfig::default()),
            context(Direction::Response),
        ));
        assert_eq!(block.status, 409);
        assert_eq!(block.verdict, "infected");
        assert_eq!(block.retry_after_secs, None);
        assert_eq!(
            String::from_utf8(block.body).unwrap(),
            r#"{"verdict":"infected","signature":"Test.Eicar.Body.UNOFFICIAL","sha256":"ab12","request_id":"req-1"}"#
        );
    }

    #[test]
    fn signature_can_be_hidden() {
        let response = ResponseConfig { expose_signature: false, ..ResponseConfig::default() };
        let verdict = Verdict::Infected { signature: "Secret.Name".into() };
        let block = blocked(decide(
            &verdict,
            &Policy::new(&PolicyConfig::default(), &response),
            context(Direction::Request),
        ));
        assert!(!String::from_utf8(block.body).unwrap().contains("Secret.Name"));
    }

    #[test]
    fn engine_trouble_is_503_with_retry_after_both_ways() {
        for reason in
            [UnscannedReason::EngineUnavailable, UnscannedReason::Timeout, UnscannedReason::EngineError]
        {
            for direction in [Direction::Request, Direction::Response] {
                let block = blocked(decide(
                    &Verdict::Unscanned { reason },
                    &Policy::new(&PolicyConfig::default(), &ResponseConfig::default()),
                    context(direction),
                ));
                assert_eq!(block.status, 503, "{reason}");
                assert_eq!(block.retry_after_secs, Some(30));
            }
        }
    }

    #[test]
    fn content_reasons_map_to_413_422_and_502() {
        let cases = [
            (UnscannedReason::TooLarge, Direction::Request, 413),
            (UnscannedReason::TooLarge, Direction::Response, 502),
            (UnscannedReason::LimitsExceeded, Direction::Request, 413),
            (UnscannedReason::LimitsExceeded, Direction::Response, 502),
            (UnscannedReason::Encrypted, Direction::Request, 422),
            (UnscannedReason::UnsupportedEncoding, Direction::Response, 502),
            (UnscannedReason::PartialContent, Direction::Response, 502),
        ];
        for (reason, direction, status) in cases {
            let block = blocked(decide(
                &Verdict::Unscanned { reason },
                &Policy::new(&PolicyConfig::default(), &ResponseConfig::default()),
                context(direction),
            ));
            assert_eq!(block.status, status, "{reason} {direction:?}");
            assert_eq!(block.retry_after_secs, None);
            assert_eq!(block.details, format!("clamgate_unscanned_{reason}"));
        }
    }

    #[test]
    fn allowed_unscanned_continues_marked_unscanned() {
        let mut policy = PolicyConfig::default();
        policy.on_unscanned.too_large = UnscannedAction::Allow;
        let decision = decide(
            &Verdict::Unscanned { reason: UnscannedReason::TooLarge },
            &Policy::new(&policy, &ResponseConfig::default()),
            context(Direction::Response),
        );
        assert_eq!(decision, Decision::Continue { verdict_header: Some("unscanned"), would_block: None });
        // Only that reason was relaxed.
        let other = decide(
            &Verdict::Unscanned { reason: UnscannedReason::Timeout },
            &Policy::new(&policy, &ResponseConfig::default()),
            context(Direction::Response),
        );
        assert!(matches!(other, Decision::Block(_)));
    }

    #[test]
    fn report_only_never_blocks_but_tells_the_truth() {
        let policy = PolicyConfig { report_only: true, ..PolicyConfig::default() };
        let decision = decide(
            &Verdict::Infected { signature: "X".into() },
            &Policy::new(&policy, &ResponseConfig::default()),
            context(Direction::Response),
        );
        assert_eq!(decision, Decision::Continue { verdict_header: Some("infected"), would_block: Some(409) });
    }

    /// A policy whose infected answers are 403, with an HTML page (and JSON unless `json` is off).
    fn with_page(json: bool) -> Policy {
        let mut policy = Policy::new(&PolicyConfig::default(), &ResponseConfig::default());
        policy.rules.block.status = 403;
        policy.rules.block.json = json;
        let page =
            crate::block_page::Template::parse("<b>{{verdict}} {{signature}} {{status}} {{direction}}</b>")
                .unwrap();
        policy.html = Some(HtmlAnswer::Page(page));
        policy
    }

    #[test]
    fn the_policy_status_and_page_shape_infected_answers_by_accept() {
        let verdict = Verdict::Infected { signature: "Sig<1>".into() };
        let browser = DecisionContext { accept: Some("text/html,*/*;q=0.8"), ..context(Direction::Response) };
        let block = blocked(decide(&verdict, &with_page(true), browser));
        assert_eq!((block.status, block.content_type), (403, "text/html; charset=utf-8"));
        assert_eq!(String::from_utf8(block.body).unwrap(), "<b>infected Sig&lt;1&gt; 403 download</b>");
        assert_eq!(block.verdict, "infected");
        let block = blocked(decide(&verdict, &with_page(true), context(Direction::Response)));
        assert_eq!((block.status, block.content_type), (403, "application/json"));
        // Without JSON every client gets the page; decide_json (nginx's /v1/auth) never does.
        let block = blocked(decide(&verdict, &with_page(false), context(Direction::Request)));
        assert!(String::from_utf8(block.body).unwrap().ends_with("upload</b>"));
        let block = blocked(decide_json(&verdict, &with_page(false), browser));
        assert_eq!(block.content_type, "application/json");
        assert!(String::from_utf8(block.body).unwrap().contains(r#""signature":"Sig<1>""#));
    }

    #[test]
    fn unscanned_refusals_keep_their_status_and_get_the_page() {
        let browser = DecisionContext { accept: Some("text/html"), ..context(Direction::Response) };
        let verdict = Verdict::Unscanned { reason: UnscannedReason::Timeout };
        let block = blocked(decide(&verdict, &with_page(true), browser));
        assert_eq!((block.status, block.retry_after_secs), (503, Some(30)));
        assert_eq!(String::from_utf8(block.body).unwrap(), "<b>unscanned  503 download</b>");
    }

    #[test]
    fn report_only_reports_the_policy_status() {
        let mut policy = with_page(true);
        policy.rules.report_only = true;
        let decision =
            decide(&Verdict::Infected { signature: "X".into() }, &policy, context(Direction::Response));
        assert_eq!(decision, Decision::Continue { verdict_header: Some("infected"), would_block: Some(403) });
    }
}
