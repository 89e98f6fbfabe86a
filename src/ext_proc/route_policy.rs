//! Which policy a route uses, as Envoy tells it: the route's metadata
//! `filter_metadata.clamgate.policy`, sent as the `xds.route_metadata` attribute, or the gRPC
//! metadata `x-clamgate-policy` of the stream (`ExtProcPerRoute.overrides.grpc_initial_metadata`).
//!
//! Both are Envoy configuration: nothing a client sends reaches either. Route metadata is the
//! cheaper of the two: it rides in the request-headers message Envoy sends anyway, while a
//! per-route `grpc_initial_metadata` makes Envoy set up the gRPC call differently for that route
//! (measured: about 0.4 ms more per request on the benchmark machine).
//!
//! Envoy 1.40 renders the route metadata attribute in protobuf text format, for example
//! `filter_metadata { key: "clamgate" value { fields { key: "policy" value { string_value:
//! "mirror" } } } }`. [`policy_in_route_metadata`] reads exactly that shape and nothing looser:
//! clamgate metadata it cannot read is an error (the stream fails closed), never the default.

use std::collections::HashMap;

use envoy_types::pb::google::protobuf::Struct;

/// The attribute namespace Envoy uses for `request_attributes`.
pub const ATTRIBUTE_NAMESPACE: &str = "envoy.filters.http.ext_proc";
/// The attribute that carries the route's metadata.
pub const ROUTE_METADATA_ATTRIBUTE: &str = "xds.route_metadata";
/// The `filter_metadata` namespace clamgate reads on a route.
pub const ROUTE_METADATA_NAMESPACE: &str = "clamgate";
/// The key, in that namespace, that names the policy.
pub const ROUTE_METADATA_POLICY_KEY: &str = "policy";

/// Why a route's clamgate metadata could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteMetadataError {
    #[error("route metadata is not protobuf text format: {0}")]
    Syntax(String),
    #[error("route metadata has filter_metadata \"clamgate\" without a string \"policy\"")]
    NoPolicy,
    #[error("route metadata and gRPC metadata name different policies ({route:?} and {grpc:?})")]
    Conflict { route: String, grpc: String },
    #[error("the route metadata attribute is not a string (it is {0})")]
    AttributeNotText(&'static str),
    #[error("the {0} names an empty policy")]
    EmptyName(&'static str),
    #[error("the {0} names a policy that is not printable ASCII")]
    NotAscii(&'static str),
    #[error("the {0} is sent more than once")]
    Repeated(&'static str),
}

/// Where a policy name came from, for errors.
const ROUTE_METADATA: &str = "route metadata";
const GRPC_METADATA: &str = "gRPC metadata x-clamgate-policy";

/// The gRPC metadata value `x-clamgate-policy` as Envoy sent it: absent, readable text, or bytes
/// that are not printable ASCII (an error once the stream starts, never the default policy).
pub type GrpcMetadataPolicy = Option<Result<String, RouteMetadataError>>;

/// Reads the `x-clamgate-policy` gRPC metadata values: one, in printable ASCII (what policy names
/// are made of, see `config::schema`); several, or other bytes, are an error.
pub fn grpc_metadata_policy(values: &[&[u8]]) -> GrpcMetadataPolicy {
    let value = match values {
        [] => return None,
        [value] => *value,
        _ => return Some(Err(RouteMetadataError::Repeated(GRPC_METADATA))),
    };
    Some(match std::str::from_utf8(value) {
        Ok(text) if text.chars().all(|c| c.is_ascii_graphic()) => Ok(text.to_string()),
        _ => Err(RouteMetadataError::NotAscii(GRPC_METADATA)),
    })
}

/// A named policy must have a name: an empty one (`Policies::named("")` is the default
/// policy) or one outside printable ASCII is an error, never the default.
fn checked_name(name: String, source: &'static str) -> Result<String, RouteMetadataError> {
    if name.is_empty() {
        return Err(RouteMetadataError::EmptyName(source));
    }
    if !name.chars().all(|c| c.is_ascii_graphic()) {
        return Err(RouteMetadataError::NotAscii(source));
    }
    Ok(name)
}

/// The policy name for a stream: from the route metadata attribute and/or the gRPC metadata.
/// `Ok(None)` means the route names none (the default policy applies).
/// A name that is empty or not printable ASCII, from either carrier, is an error.
pub fn select(
    attributes: &HashMap<String, Struct>,
    grpc_metadata_policy: Option<&str>,
) -> Result<Option<String>, RouteMetadataError> {
    let route = match route_metadata_text(attributes)? {
        Some(text) => policy_in_route_metadata(text)?,
        None => None,
    };
    let route = route.map(|name| checked_name(name, ROUTE_METADATA)).transpose()?;
    let grpc = grpc_metadata_policy.map(|name| checked_name(name.to_string(), GRPC_METADATA)).transpose()?;
    match (route, grpc) {
        (Some(route), Some(grpc)) if route != grpc => Err(RouteMetadataError::Conflict { route, grpc }),
        (Some(route), _) => Ok(Some(route)),
        (None, grpc) => Ok(grpc),
    }
}

/// The route metadata attribute's text; None when Envoy did not send it (or sent null). Any
/// other kind of value is an error: it may name a policy clamgate cannot read.
fn route_metadata_text(attributes: &HashMap<String, Struct>) -> Result<Option<&str>, RouteMetadataError> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let Some(value) =
        attributes.get(ATTRIBUTE_NAMESPACE).and_then(|ns| ns.fields.get(ROUTE_METADATA_ATTRIBUTE))
    else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(text)) => Ok(Some(text)),
        None | Some(Kind::NullValue(_)) => Ok(None),
        Some(Kind::NumberValue(_)) => Err(RouteMetadataError::AttributeNotText("a number")),
        Some(Kind::BoolValue(_)) => Err(RouteMetadataError::AttributeNotText("a bool")),
        Some(Kind::StructValue(_)) => Err(RouteMetadataError::AttributeNotText("a struct")),
        Some(Kind::ListValue(_)) => Err(RouteMetadataError::AttributeNotText("a list")),
    }
}

/// Reads `filter_metadata["clamgate"].policy` from route metadata in protobuf text format.
pub fn policy_in_route_metadata(text: &str) -> Result<Option<String>, RouteMetadataError> {
    let metadata = parse(text)?;
    for entry in metadata.messages("filter_metadata") {
        if entry.scalar("key") != Some(ROUTE_METADATA_NAMESPACE) {
            continue;
        }
        // A google.protobuf.Struct: repeated `fields { key: "..." value { string_value: "..." } }`.
        let policy = entry
            .messages("value")
            .flat_map(|value| value.messages("fields"))
            .find(|field| field.scalar("key") == Some(ROUTE_METADATA_POLICY_KEY))
            .and_then(|field| field.messages("value").next())
            .and_then(|value| value.scalar("string_value"));
        return match policy {
            Some(name) => Ok(Some(name.to_string())),
            None => Err(RouteMetadataError::NoPolicy),
        };
    }
    Ok(None)
}

/// A text-format message: its fields in order.
#[derive(Debug, Default, PartialEq)]
struct Message(Vec<(String, Field)>);

#[derive(Debug, PartialEq)]
enum Field {
    Scalar(String),
    Message(Message),
}

impl Message {
    fn messages<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Message> + 'a {
        self.0.iter().filter_map(move |(field, value)| match value {
            Field::Message(message) if field == name => Some(message),
            _ => None,
        })
    }

    fn scalar(&self, name: &str) -> Option<&str> {
        self.0.iter().find_map(|(field, value)| match value {
            Field::Scalar(text) if field == name => Some(text.as_str()),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Open,
    Close,
    Colon,
}

fn parse(text: &str) -> Result<Message, RouteMetadataError> {
    let tokens = tokenize(text)?;
    let mut position = 0;
    let message = parse_fields(&tokens, &mut position)?;
    if position != tokens.len() {
        return Err(RouteMetadataError::Syntax("unbalanced '}'".into()));
    }
    Ok(message)
}

fn parse_fields(tokens: &[Token], position: &mut usize) -> Result<Message, RouteMetadataError> {
    let mut fields = Vec::new();
    while let Some(token) = tokens.get(*position) {
        let name = match token {
            Token::Close => break,
            Token::Word(name) => name.clone(),
            other => {
                return Err(RouteMetadataError::Syntax(format!("expected a field name, found {other:?}")))
            }
        };
        *position += 1;
        if tokens.get(*position) == Some(&Token::Colon) {
            *position += 1;
        }
        let value = match tokens.get(*position) {
            Some(Token::Open) => {
                *position += 1;
                let message = parse_fields(tokens, position)?;
                if tokens.get(*position) != Some(&Token::Close) {
                    return Err(RouteMetadataError::Syntax(format!("'{{' of {name} is never closed")));
                }
                *position += 1;
                Field::Message(message)
            }
            Some(Token::Word(text)) | Some(Token::Text(text)) => {
                *position += 1;
                Field::Scalar(text.clone())
            }
            other => return Err(RouteMetadataError::Syntax(format!("{name} has no value ({other:?})"))),
        };
        fields.push((name, value));
    }
    Ok(Message(fields))
}

fn tokenize(text: &str) -> Result<Vec<Token>, RouteMetadataError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '{' | '<' => {
                chars.next();
                tokens.push(Token::Open);
            }
            '}' | '>' => {
                chars.next();
                tokens.push(Token::Close);
            }
            ':' => {
                chars.next();
                tokens.push(Token::Colon);
            }
            '"' | '\'' => {
                chars.next();
                tokens.push(Token::Text(quoted(&mut chars, c)?));
            }
            c if c.is_alphanumeric() || matches!(c, '_' | '-' | '+' | '.') => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if !(c.is_alphanumeric() || matches!(c, '_' | '-' | '+' | '.')) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
            other => return Err(RouteMetadataError::Syntax(format!("unexpected character {other:?}"))),
        }
    }
    Ok(tokens)
}

/// A quoted string with C-style escapes (`\"`, `\\`, `\n`, `\t`, octal `\ooo`).
fn quoted(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    quote: char,
) -> Result<String, RouteMetadataError> {
    let mut bytes = Vec::new();
    loop {
        let c = chars.next().ok_or_else(|| RouteMetadataError::Syntax("unterminated string".into()))?;
        if c == quote {
            break;
        }
        if c != '\\' {
            let mut buffer = [0u8; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
            continue;
        }
        let escaped = chars.next().ok_or_else(|| RouteMetadataError::Syntax("unterminated escape".into()))?;
        match escaped {
            'n' => bytes.push(b'\n'),
            't' => bytes.push(b'\t'),
            'r' => bytes.push(b'\r'),
            '0'..='7' => {
                let mut value = escaped.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match chars.peek().and_then(|c| c.to_digit(8)) {
                        Some(digit) => {
                            value = value * 8 + digit;
                            chars.next();
                        }
                        None => break,
                    }
                }
                bytes.push(
                    u8::try_from(value)
                        .map_err(|_| RouteMetadataError::Syntax("octal escape over 255".into()))?,
                );
            }
            other => {
                let mut buffer = [0u8; 4];
                bytes.extend_from_slice(other.encode_utf8(&mut buffer).as_bytes());
            }
        }
    }
    String::from_utf8(bytes).map_err(|_| RouteMetadataError::Syntax("a string is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{value::Kind, Value};

    /// Exactly what Envoy 1.40 sent for `metadata: {filter_metadata: {clamgate: {policy: mirror}}}`.
    const OBSERVED: &str = "filter_metadata { key: \"clamgate\" value { fields { key: \"policy\" value { string_value: \"mirror\" } } } } ";

    fn attributes(route_metadata: &str) -> HashMap<String, Struct> {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(
            ROUTE_METADATA_ATTRIBUTE.to_string(),
            Value { kind: Some(Kind::StringValue(route_metadata.to_string())) },
        );
        let mut map = HashMap::new();
        map.insert(ATTRIBUTE_NAMESPACE.to_string(), Struct { fields: fields.into_iter().collect() });
        map
    }

    #[test]
    fn reads_the_policy_envoy_sends() {
        assert_eq!(policy_in_route_metadata(OBSERVED), Ok(Some("mirror".into())));
    }

    #[test]
    fn other_namespaces_and_fields_are_ignored() {
        let text = "filter_metadata { key: \"envoy.lb\" value { fields { key: \"policy\" value { string_value: \"x\" } } } } \
                    filter_metadata { key: \"clamgate\" value { fields { key: \"owner\" value { string_value: \"sec\" } } \
                    fields { key: \"policy\" value { string_value: \"pkgs2\" } } } }";
        assert_eq!(policy_in_route_metadata(text), Ok(Some("pkgs2".into())));
        let elsewhere = "filter_metadata { key: \"envoy.lb\" value { fields { key: \"policy\" value { string_value: \"x\" } } } }";
        assert_eq!(policy_in_route_metadata(elsewhere), Ok(None));
        assert_eq!(policy_in_route_metadata(""), Ok(None));
    }

    #[test]
    fn unreadable_clamgate_metadata_is_an_error_not_the_default() {
        let number = "filter_metadata { key: \"clamgate\" value { fields { key: \"policy\" value { number_value: 3 } } } }";
        assert_eq!(policy_in_route_metadata(number), Err(RouteMetadataError::NoPolicy));
        assert!(matches!(
            policy_in_route_metadata("filter_metadata { key: \"clamgate\""),
            Err(RouteMetadataError::Syntax(_))
        ));
        assert!(matches!(policy_in_route_metadata("a { b: \"c } }"), Err(RouteMetadataError::Syntax(_))));
        assert!(matches!(policy_in_route_metadata("a } b"), Err(RouteMetadataError::Syntax(_))));
    }

    #[test]
    fn empty_or_non_ascii_names_and_non_text_attributes_are_errors_not_the_default() {
        let named = |name: &str| {
            format!("filter_metadata {{ key: \"clamgate\" value {{ fields {{ key: \"policy\" value {{ string_value: \"{name}\" }} }} }} }}")
        };
        assert_eq!(select(&attributes(&named("")), None), Err(RouteMetadataError::EmptyName(ROUTE_METADATA)));
        assert_eq!(
            select(&attributes(&named("mirr\\303\\266r")), None),
            Err(RouteMetadataError::NotAscii(ROUTE_METADATA))
        );
        assert_eq!(select(&HashMap::new(), Some("")), Err(RouteMetadataError::EmptyName(GRPC_METADATA)));
        assert_eq!(select(&HashMap::new(), Some("a b")), Err(RouteMetadataError::NotAscii(GRPC_METADATA)));
        for kind in [Kind::NumberValue(3.0), Kind::BoolValue(true), Kind::StructValue(Struct::default())] {
            let mut fields = std::collections::BTreeMap::new();
            fields.insert(ROUTE_METADATA_ATTRIBUTE.to_string(), Value { kind: Some(kind.clone()) });
            let mut map = HashMap::new();
            map.insert(ATTRIBUTE_NAMESPACE.to_string(), Struct { fields: fields.into_iter().collect() });
            assert!(matches!(select(&map, None), Err(RouteMetadataError::AttributeNotText(_))), "{kind:?}");
        }
        // gRPC metadata bytes: one value, printable ASCII.
        assert_eq!(grpc_metadata_policy(&[]), None);
        assert_eq!(grpc_metadata_policy(&[b"mirror"]), Some(Ok("mirror".into())));
        let not_ascii = Some(Err(RouteMetadataError::NotAscii(GRPC_METADATA)));
        assert_eq!(grpc_metadata_policy(&["mirr\u{f6}r".as_bytes()]), not_ascii);
        assert_eq!(grpc_metadata_policy(&[b"\xff"]), not_ascii);
        let repeated = Some(Err(RouteMetadataError::Repeated(GRPC_METADATA)));
        assert_eq!(grpc_metadata_policy(&[b"mirror", b"other"]), repeated);
    }

    #[test]
    fn escapes_are_decoded() {
        let text = r#"filter_metadata { key: "clamgate" value { fields { key: "policy" value { string_value: "a\"b\\c\101" } } } }"#;
        assert_eq!(policy_in_route_metadata(text), Ok(Some("a\"b\\cA".into())));
    }

    #[test]
    fn the_two_carriers_must_agree() {
        assert_eq!(select(&attributes(OBSERVED), None), Ok(Some("mirror".into())));
        assert_eq!(select(&attributes(OBSERVED), Some("mirror")), Ok(Some("mirror".into())));
        assert_eq!(select(&HashMap::new(), Some("mirror")), Ok(Some("mirror".into())));
        assert_eq!(select(&HashMap::new(), None), Ok(None));
        assert!(matches!(
            select(&attributes(OBSERVED), Some("other")),
            Err(RouteMetadataError::Conflict { .. })
        ));
    }
}
