//! An origin from `fetch.origins`: which host it serves and the base URL clamgate downloads
//! from. The only way a URL clamgate fetches is made: the request gives a path, never a host.

use std::fmt;
use std::str::FromStr;

use reqwest::Url;

use crate::cache::ResourceId;

/// `"HOST = URL"`: requests for HOST (any port, or only PORT when written `HOST:PORT`) are
/// fetched from URL followed by their path and query.
#[derive(Clone, PartialEq, Eq)]
pub struct Origin {
    /// Lower case; an IPv6 literal keeps its brackets.
    host: String,
    port: Option<u16>,
    /// `http` or `https`, a host, no credentials, no query or fragment; the path without its
    /// trailing `/` (empty for the root).
    base: Url,
    text: String,
}

impl FromStr for Origin {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let Some((host_port, url)) = text.split_once('=') else {
            return Err(format!(
                "expected \"HOST = URL\", as in \"downloads.example.com = http://10.0.0.5:8080\", found {text:?}"
            ));
        };
        let (host, port) = parse_host_port(host_port.trim()).ok_or_else(|| {
            format!("expected a host name or IP address before \"=\", found {:?}", host_port.trim())
        })?;
        let base = parse_base(url.trim())?;
        Ok(Origin { host, port, base, text: text.to_string() })
    }
}

fn parse_host_port(text: &str) -> Option<(String, Option<u16>)> {
    let text = text.to_ascii_lowercase();
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        (format!("[{v6}]"), after.strip_prefix(':'))
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (text.clone(), None),
        }
    };
    let name_ok = host.starts_with('[')
        || (!host.is_empty()
            && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
    if !name_ok {
        return None;
    }
    let port = match port {
        None => None,
        Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some(digits.parse::<u16>().ok().filter(|port| *port != 0)?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

fn parse_base(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text).map_err(|err| format!("is not a URL ({err}): {text:?}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("expected an http:// or https:// URL after \"=\", found {text:?}"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("the URL after \"=\" has no host: {text:?}"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL after \"=\" must not hold credentials".to_string());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("the URL after \"=\" must not have a query or a fragment: {text:?}"));
    }
    let path = url.path().trim_end_matches('/').to_string();
    url.set_path(&path);
    Ok(url)
}

impl Origin {
    /// `host` or `host:port`, as written: two origins must not share one.
    pub fn host_pattern(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }

    /// Whether this origin serves `id`'s host (and port, if the origin names one).
    pub fn serves(&self, id: &ResourceId) -> bool {
        id.host() == self.host && self.port.is_none_or(|port| port == id.port())
    }

    /// The URL to download `path_and_query` from: the base URL's path followed by it. None when
    /// it does not start with `/`, or when its dot segments (`..`, `%2e%2e`) would leave the base
    /// path: the request names an object under the origin, nothing else.
    pub fn url_for(&self, path_and_query: &str) -> Option<Url> {
        if !path_and_query.starts_with('/') {
            return None;
        }
        let url = Url::parse(&format!(
            "{}{}{path_and_query}",
            self.base_origin(),
            self.base.path().trim_end_matches('/')
        ))
        .ok()?;
        self.contains(&url).then_some(url)
    }

    /// Whether `url` is on this origin: the same scheme, host and port, and a path under the base
    /// path. Redirects are followed only to such URLs.
    pub fn contains(&self, url: &Url) -> bool {
        let base_path = self.base.path().trim_end_matches('/');
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
            && url.path().strip_prefix(base_path).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// `scheme://host[:port]` of the base URL.
    fn base_origin(&self) -> String {
        self.base.origin().ascii_serialization()
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

/// Written as read, so `fetch.origins` stays a list of strings in the config file.
impl serde::Serialize for Origin {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

/// Read by [`Origin::from_str`]: the config is typed as it is loaded.
impl<'de> serde::Deserialize<'de> for Origin {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(text: &str) -> Origin {
        text.parse().unwrap()
    }

    #[test]
    fn an_origin_serves_its_host_and_maps_paths_under_its_base() {
        let o = origin("Downloads.Example.com = http://10.0.0.5:8080/mirror/");
        let id = |host: &str, port: u16| ResourceId::new("https", host, port, "/");
        assert!(o.serves(&id("downloads.example.com", 443)) && o.serves(&id("downloads.example.com", 8443)));
        assert!(!o.serves(&id("evil.example.com", 443)));
        assert_eq!(o.url_for("/a/b.zip?x=1").unwrap().as_str(), "http://10.0.0.5:8080/mirror/a/b.zip?x=1");
        // A path that climbs out of the base, plainly or percent-encoded, is refused.
        for escape in ["/../secret", "/a/../../secret", "/%2e%2e/secret", "/.%2E/secret", "a/b"] {
            assert_eq!(o.url_for(escape), None, "{escape}");
        }
        // A path that looks like an authority stays on the origin.
        let url = o.url_for("//evil.example.com/x").unwrap();
        assert_eq!(url.host_str(), Some("10.0.0.5"));
        let with_port = origin("h:8443=https://o.internal");
        assert!(with_port.serves(&id("h", 8443)) && !with_port.serves(&id("h", 443)));
        assert_eq!(with_port.host_pattern(), "h:8443");
        assert_eq!(with_port.url_for("/x").unwrap().as_str(), "https://o.internal/x");
    }

    #[test]
    fn redirects_stay_on_the_origin() {
        let o = origin("h = http://o.internal:8080/base");
        let url = |text: &str| Url::parse(text).unwrap();
        assert!(o.contains(&url("http://o.internal:8080/base/other")));
        assert!(!o.contains(&url("http://o.internal:8080/based/other")));
        assert!(!o.contains(&url("http://o.internal:8081/base/x")));
        assert!(!o.contains(&url("https://o.internal:8080/base/x")));
        assert!(!o.contains(&url("http://evil.internal:8080/base/x")));
    }

    #[test]
    fn bad_origins_say_what_is_wrong() {
        for (text, problem) in [
            ("http://o.internal", "expected \"HOST = URL\""),
            ("h = ftp://o.internal", "http:// or https://"),
            ("h = http://user:pw@o.internal", "credentials"),
            ("h = http://o.internal/?q=1", "query"),
            ("h = not a url", "is not a URL"),
            ("h:0 = http://o.internal", "host name"),
            ("h h = http://o.internal", "host name"),
            (" = http://o.internal", "host name"),
        ] {
            let err = text.parse::<Origin>().unwrap_err();
            assert!(err.contains(problem), "{text}: {err}");
            assert!(!err.contains("pw"), "{err}");
        }
    }
}
