//! A Redis endpoint as configured (`cache.redis_url`, `cache.redis_cluster_urls`): the one parser
//! of Redis URLs, used by the config loader and by the Redis client, and the only code that
//! knows how to show one without its password.

use std::fmt;
use std::str::FromStr;

use redis::{ConnectionInfo, IntoConnectionInfo, RedisResult};

/// A Redis URL the redis crate accepts, with one of the schemes clamgate documents:
/// `redis://`, `rediss://` (TLS), `redis+unix://` or `unix://`. It may hold a password:
/// `Debug` and [`RedisUrl::redacted`] hide it; only [`RedisUrl::connection_info`] uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    text: String,
}

const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];

impl FromStr for RedisUrl {
    type Err = String;

    /// Messages show the URL redacted, never its password.
    fn from_str(url: &str) -> Result<Self, String> {
        if url.is_empty() {
            return Err("must not be empty".to_string());
        }
        if !SCHEMES.iter().any(|scheme| url.starts_with(scheme)) {
            return Err(format!(
                "expected a URL starting with \"redis://\", \"rediss://\", \"redis+unix://\" or \"unix://\", found {:?}",
                redact_url(url)
            ));
        }
        crate_accepts(url)?;
        Ok(RedisUrl { text: url.to_string() })
    }
}

impl RedisUrl {
    /// What the redis crate connects with (credentials included).
    pub fn connection_info(&self) -> RedisResult<ConnectionInfo> {
        self.text.as_str().into_connection_info()
    }

    /// The URL with its password replaced by `***`, for logs and messages.
    pub fn redacted(&self) -> String {
        redact_url(&self.text)
    }

    /// Whether the URL asks for TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.text.starts_with("rediss://")
    }

    /// Whether it is plaintext TCP (`redis://`).
    pub fn is_plain_tcp(&self) -> bool {
        self.text.starts_with("redis://")
    }

    /// Whether a `rediss://` URL turns off the check of the server's certificate (`#insecure`).
    pub fn skips_certificate_check(&self) -> bool {
        self.is_tls() && self.fragment().as_deref() == Some("insecure")
    }

    /// The host of a `redis://` or `rediss://` URL (IPv6 in brackets) and whether it is a
    /// loopback address or `localhost`; `None` for a unix socket.
    pub fn tcp_host(&self) -> Option<(String, bool)> {
        let parsed = redis::parse_redis_url(&self.text)?;
        if !matches!(parsed.scheme(), "redis" | "rediss") {
            return None;
        }
        let host = parsed.host_str()?.to_string();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = bare.eq_ignore_ascii_case("localhost")
            || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        Some((host, loopback))
    }

    /// A seed node of a Redis Cluster: a URL [`RedisUrl::from_str`] accepts that
    /// [`RedisUrl::cluster_seed_problem`] finds nothing wrong with.
    pub fn parse_cluster_seed(text: &str) -> Result<RedisUrl, String> {
        if !text.is_empty() && !text.starts_with("redis://") && !text.starts_with("rediss://") {
            return Err(cluster_scheme_problem(text));
        }
        let url: RedisUrl = text.parse()?;
        match url.cluster_seed_problem() {
            Some(problem) => Err(problem),
            None => Ok(url),
        }
    }

    /// Why this URL cannot name a seed node of a Redis Cluster, if it cannot: a cluster is
    /// reached at `redis://HOST:PORT` or `rediss://HOST:PORT` and has only database 0.
    pub fn cluster_seed_problem(&self) -> Option<String> {
        let url = &self.text;
        if !url.starts_with("redis://") && !url.starts_with("rediss://") {
            return Some(cluster_scheme_problem(url));
        }
        // The crate has parsed it (`from_str`), so this parse succeeds.
        let parsed = redis::parse_redis_url(url)?;
        if parsed.port().is_none() {
            return Some(format!(
                "must name the port, as in \"redis://redis-1:6379\", found {:?}",
                self.redacted()
            ));
        }
        match parsed.path().trim_matches('/') {
            "" | "0" => None,
            db => Some(format!(
                "names database {db}, but Redis Cluster has only database 0, found {:?}",
                self.redacted()
            )),
        }
    }

    fn fragment(&self) -> Option<String> {
        url_fragment(&self.text)
    }
}

/// Compares with the URL as written (password included).
impl PartialEq<str> for RedisUrl {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for RedisUrl {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

/// Written as the string it was read from (password included: this is the config file's form).
impl serde::Serialize for RedisUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

/// Read by [`RedisUrl::from_str`]: the config is typed as it is loaded.
impl<'de> serde::Deserialize<'de> for RedisUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn cluster_scheme_problem(url: &str) -> String {
    format!(
        "expected \"redis://HOST:PORT\" or \"rediss://HOST:PORT\" (Redis Cluster has no unix sockets), found {:?}",
        redact_url(url)
    )
}

/// Whether the redis crate can read `url`. A `rediss://` URL is read as `redis://` apart from
/// its fragment (only `#insecure` is allowed): the rest means the same under both schemes, and
/// the crate rejects every `rediss://` URL when it is built without TLS.
fn crate_accepts(url: &str) -> Result<(), String> {
    let plain = match url.strip_prefix("rediss://") {
        Some(rest) => {
            if url_fragment(url).is_some_and(|fragment| fragment != "insecure") {
                return Err(format!(
                    "only \"#insecure\" may end a rediss:// URL, found {:?}",
                    redact_url(url)
                ));
            }
            format!("redis://{rest}")
        }
        None => url.to_string(),
    };
    match plain.as_str().into_connection_info() {
        Ok(_) => Ok(()),
        Err(err) => {
            // The crate's text is "<reason> - <Kind>[: detail]"; the reason is what helps, and
            // none of its reasons quote the URL.
            let text = err.to_string();
            let reason = text.split(" - ").next().unwrap_or(&text);
            Err(format!("is not a usable Redis URL ({reason}), found {:?}", redact_url(url)))
        }
    }
}

/// The fragment of a Redis URL (`insecure` in `rediss://host:6380/#insecure`), if it parses.
fn url_fragment(url: &str) -> Option<String> {
    redis::parse_redis_url(url)?.fragment().map(str::to_string)
}

/// `url` with its password replaced by `***`: in the userinfo of `scheme://user:password@host`
/// (a userinfo without `:` is hidden whole) and in `pass=`/`password=` query parameters. Works on
/// any text, so that a URL that failed to parse is still shown safely.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    // The last `@` ends the userinfo even if the password holds an unencoded `/`, `?` or `@`:
    // better to hide too much than too little.
    let (userinfo, host_and_rest) = match rest.rfind('@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    let mut redacted = scheme.to_string();
    if let Some(userinfo) = userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) if !user.contains(['/', '?', '#']) => redacted.push_str(&format!("{user}:***@")),
            _ => redacted.push_str("***@"),
        }
    }
    match host_and_rest.split_once('?') {
        None => redacted.push_str(host_and_rest),
        Some((before, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _))
                        if name.eq_ignore_ascii_case("pass") || name.eq_ignore_ascii_case("password") =>
                    {
                        format!("{name}=***")
                    }
                    _ => param.to_string(),
                })
                .collect();
            redacted.push_str(&format!("{before}?{}", params.join("&")));
        }
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parsed_url_never_shows_its_password() {
        let url: RedisUrl = "rediss://user:hunter2@redis:6380/1".parse().unwrap();
        assert_eq!(url.redacted(), "rediss://user:***@redis:6380/1");
        assert_eq!(format!("{url:?}"), "\"rediss://user:***@redis:6380/1\"");
        let err = "htp://user:hunter2@redis".parse::<RedisUrl>().unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        // Written back as read: the config file's form.
        assert_eq!(toml::Value::try_from(&url).unwrap().as_str(), Some("rediss://user:hunter2@redis:6380/1"));
    }

    #[test]
    fn hosts_and_tls_are_read_from_the_parsed_url() {
        let url = |text: &str| text.parse::<RedisUrl>().unwrap();
        assert_eq!(url("redis://10.0.0.7:6379").tcp_host(), Some(("10.0.0.7".to_string(), false)));
        assert_eq!(url("redis://[::1]:6379").tcp_host(), Some(("[::1]".to_string(), true)));
        assert_eq!(url("redis://LocalHost:6379").tcp_host(), Some(("LocalHost".to_string(), true)));
        assert_eq!(url("unix:///run/redis.sock").tcp_host(), None);
        assert!(url("rediss://r:6380/#insecure").skips_certificate_check());
        assert!(!url("rediss://r:6380/").skips_certificate_check());
        assert!(url("redis://r:6379").is_plain_tcp() && !url("redis://r:6379").is_tls());
    }

    #[test]
    fn a_cluster_seed_is_tcp_with_a_port_and_database_0() {
        assert!(RedisUrl::parse_cluster_seed("redis://r1:7000/0").is_ok());
        for (text, problem) in [
            ("unix:///run/redis.sock", "no unix sockets"),
            ("redis://r1", "must name the port"),
            ("redis://r1:7000/2", "only database 0"),
            ("", "must not be empty"),
        ] {
            let err = RedisUrl::parse_cluster_seed(text).unwrap_err();
            assert!(err.contains(problem), "{text}: {err}");
        }
    }
}
