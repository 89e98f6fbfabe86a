//! Refusals operators can shape: an HTML page from a template, or a redirect, beside the JSON
//! body, chosen by the client's `Accept`. Every value filled in is escaped for where it goes
//! (HTML entities in a page, percent-encoding in a URL): part names and request ids come from the
//! request, and nothing from the request reaches the answer unescaped.

use std::fmt::Write as _;

use crate::config::BlockConfig;

/// The placeholders a template or a redirect URL may use, as `{{name}}`.
pub const FIELDS: [&str; 8] =
    ["verdict", "signature", "reason", "sha256", "part", "request_id", "status", "direction"];

/// Largest template file read.
pub const MAX_TEMPLATE_BYTES: u64 = 64 * 1024;

/// The values a refusal fills in (absent ones are empty).
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockFields<'a> {
    pub verdict: &'a str,
    pub signature: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub sha256: Option<&'a str>,
    pub part: Option<&'a str>,
    pub request_id: &'a str,
    pub status: u16,
    /// `upload` or `download`.
    pub direction: &'a str,
}

impl BlockFields<'_> {
    fn value(&self, field: usize) -> String {
        match FIELDS[field] {
            "verdict" => self.verdict.to_string(),
            "signature" => self.signature.unwrap_or_default().to_string(),
            "reason" => self.reason.unwrap_or_default().to_string(),
            "sha256" => self.sha256.unwrap_or_default().to_string(),
            "part" => self.part.unwrap_or_default().to_string(),
            "request_id" => self.request_id.to_string(),
            "status" => self.status.to_string(),
            _ => self.direction.to_string(),
        }
    }
}

/// A template: text with `{{field}}` placeholders, parsed once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// An index into [`FIELDS`].
    Field(usize),
}

impl Template {
    /// Parses `text`; an unknown or unterminated placeholder is an error.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| "a \"{{\" without its \"}}\"".to_string())?;
            let name = after[..end].trim();
            let field = FIELDS.iter().position(|field| *field == name).ok_or_else(|| {
                format!("unknown placeholder {{{{{name}}}}}; the fields are {}", FIELDS.join(", "))
            })?;
            pieces.push(Piece::Field(field));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template { pieces })
    }

    /// Fills the placeholders, each value passed through `escape`.
    fn render(&self, fields: &BlockFields<'_>, escape: fn(&str, &mut String)) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Field(field) => escape(&fields.value(*field), &mut out),
            }
        }
        out
    }
}

/// What a client that prefers HTML gets instead of JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HtmlAnswer {
    /// A page from `html_template_file`.
    Page(Template),
    /// `303 See Other` to `redirect_url`.
    Redirect(Template),
}

/// One refusal's body and headers, as rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// The `location` of a redirect.
    pub location: Option<String>,
}

impl HtmlAnswer {
    /// The HTML answer `block` configures (None: JSON only). Reads the template file.
    pub fn load(block: &BlockConfig) -> Result<Option<HtmlAnswer>, String> {
        if let Some(path) = &block.html_template_file {
            return read_template(path).map(|template| Some(HtmlAnswer::Page(template)));
        }
        if let Some(url) = &block.redirect_url {
            return redirect_template(url).map(|template| Some(HtmlAnswer::Redirect(template)));
        }
        Ok(None)
    }

    /// The answer for `fields` (its status is the refusal's, but a redirect's is 303).
    pub fn render(&self, fields: &BlockFields<'_>) -> Rendered {
        match self {
            HtmlAnswer::Page(template) => Rendered {
                status: fields.status,
                content_type: "text/html; charset=utf-8",
                body: template.render(fields, escape_html).into_bytes(),
                location: None,
            },
            HtmlAnswer::Redirect(template) => Rendered {
                status: 303,
                content_type: "text/plain; charset=utf-8",
                body: b"See Other\n".to_vec(),
                location: Some(template.render(fields, percent_encode)),
            },
        }
    }
}

fn read_template(path: &str) -> Result<Template, String> {
    let file = std::fs::File::open(path).map_err(|err| format!("cannot read {path:?}: {err}"))?;
    let mut text = String::new();
    use std::io::Read as _;
    file.take(MAX_TEMPLATE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|err| format!("cannot read {path:?} as UTF-8 text: {err}"))?;
    if text.len() as u64 > MAX_TEMPLATE_BYTES {
        return Err(format!("{path:?} is larger than {MAX_TEMPLATE_BYTES} bytes"));
    }
    Template::parse(&text).map_err(|err| format!("{path:?}: {err}"))
}

/// A redirect target: an absolute `http(s)://` URL or a path on the same site, without spaces or
/// control characters (a value filled in is percent-encoded, so it cannot add any).
fn redirect_template(url: &str) -> Result<Template, String> {
    let absolute = url.starts_with("https://") || url.starts_with("http://");
    let local = url.starts_with('/') && !url.starts_with("//");
    if !(absolute || local) {
        return Err(format!("{url:?} is neither an http(s):// URL nor a path starting with \"/\""));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("{url:?} holds spaces or control characters"));
    }
    Template::parse(url)
}

/// Whether the client's `Accept` prefers `text/html` to `application/json`: each gets the q of
/// the most specific range that matches it; a tie (`*/*`, or no `Accept`) goes to JSON.
pub fn prefers_html(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let (html_q, html_specificity) = quality(accept, "text", "html");
    let (json_q, json_specificity) = quality(accept, "application", "json");
    html_q > json_q || (html_q == json_q && html_q > 0 && html_specificity > json_specificity)
}

/// The q (in thousandths) and specificity (3 exact, 2 `type/*`, 1 `*/*`, 0 none) that `accept`
/// gives `kind/subtype`.
fn quality(accept: &str, kind: &str, subtype: &str) -> (u16, u8) {
    let mut best = (0u16, 0u8);
    for range in accept.split(',') {
        let mut params = range.split(';');
        let media = params.next().unwrap_or_default().trim();
        let Some((range_kind, range_subtype)) = media.split_once('/') else { continue };
        let specificity = match (range_kind.trim(), range_subtype.trim()) {
            (k, s) if k.eq_ignore_ascii_case(kind) && s.eq_ignore_ascii_case(subtype) => 3,
            (k, "*") if k.eq_ignore_ascii_case(kind) => 2,
            ("*", "*") => 1,
            _ => continue,
        };
        let q = params
            .filter_map(|param| param.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .map_or(1000, |(_, value)| parse_q(value.trim()));
        if specificity > best.1 || (specificity == best.1 && q > best.0) {
            best = (q, specificity);
        }
    }
    best
}

/// A q-value (`0`, `0.8`, `1.000`) in thousandths; anything unreadable counts as 0.
fn parse_q(value: &str) -> u16 {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let digits: String = fraction.chars().chain("000".chars()).take(3).collect();
    match (whole, digits.parse::<u16>()) {
        ("1", Ok(_)) => 1000,
        ("0", Ok(thousandths)) if fraction.chars().all(|c| c.is_ascii_digit()) => thousandths,
        _ => 0,
    }
}

/// HTML-escapes `value` into `out` (text and attribute values alike).
pub fn escape_html(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(value: &str, out: &mut String) {
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> BlockFields<'static> {
        BlockFields {
            verdict: "infected",
            signature: Some("Test.Eicar"),
            reason: None,
            sha256: Some("ab12"),
            part: Some("field \"f\", file \"<script>alert('x')</script>.exe\""),
            request_id: "r&1",
            status: 409,
            direction: "upload",
        }
    }

    #[test]
    fn a_page_fills_every_field_escaped() {
        let template =
            Template::parse("<p>{{verdict}} {{ signature }} [{{reason}}] {{part}} {{request_id}} {{status}} {{direction}} {{sha256}}</p>")
                .unwrap();
        let page = HtmlAnswer::Page(template).render(&fields());
        assert_eq!(page.status, 409);
        assert_eq!(page.content_type, "text/html; charset=utf-8");
        assert_eq!(
            String::from_utf8(page.body).unwrap(),
            "<p>infected Test.Eicar [] field &quot;f&quot;, file &quot;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;.exe&quot; r&amp;1 409 upload ab12</p>"
        );
    }

    #[test]
    fn a_redirect_percent_encodes_what_it_fills_in() {
        let template =
            redirect_template("https://intranet.example/blocked?id={{request_id}}&part={{part}}").unwrap();
        let answer = HtmlAnswer::Redirect(template).render(&fields());
        assert_eq!(answer.status, 303);
        let location = answer.location.unwrap();
        assert!(location.starts_with(
            "https://intranet.example/blocked?id=r%261&part=field%20%22f%22%2C%20file%20%22%3Cscript%3E"
        ));
        assert!(!location.chars().any(|c| c.is_whitespace() || c == '<' || c == '"'));
    }

    #[test]
    fn bad_templates_and_urls_are_refused() {
        assert!(Template::parse("{{verdict").unwrap_err().contains("without"));
        assert!(Template::parse("{{body}}").unwrap_err().contains("unknown placeholder {{body}}"));
        for url in ["javascript:alert(1)", "//evil.example/", "intranet/blocked", "/a b", "/a\r\nx: y"] {
            assert!(redirect_template(url).is_err(), "{url}");
        }
        assert!(redirect_template("/blocked?sig={{signature}}").is_ok());
    }

    #[test]
    fn accept_chooses_html_only_when_the_client_prefers_it() {
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8";
        assert!(prefers_html(Some(browser)));
        assert!(prefers_html(Some("text/*")));
        assert!(prefers_html(Some("text/html;q=0.9, application/json;q=0.5")));
        for accept in [
            None,
            Some("*/*"),
            Some("application/json"),
            Some("application/json, text/html"),
            Some("text/html;q=0.5, application/json"),
            Some("text/html;q=0"),
            Some("image/png"),
            Some(""),
            Some("text/html;q=abc, */*"),
        ] {
            assert!(!prefers_html(accept), "{accept:?}");
        }
        // Equal q: the more specific range wins.
        assert!(prefers_html(Some("text/html, */*")));
    }

    #[test]
    fn q_values_are_read_in_thousandths() {
        assert_eq!(parse_q("1"), 1000);
        assert_eq!(parse_q("1.000"), 1000);
        assert_eq!(parse_q("0.8"), 800);
        assert_eq!(parse_q("0.125"), 125);
        assert_eq!(parse_q("0"), 0);
        assert_eq!(parse_q("2"), 0);
        assert_eq!(parse_q("0.x"), 0);
    }
}
