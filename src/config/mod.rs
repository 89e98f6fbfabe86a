//! Configuration: one TOML file, every key overridable by a `CLAMGATE_*` environment variable.
//!
//! The structs below are the schema. Keys carry their unit in the name (`_ms`, `_secs`,
//! `_bytes`); unknown keys are rejected; every problem is reported at once with its key path.
//!
//! # Loading
//! [`Config::load`] starts from the defaults, applies the file, then the environment, and checks
//! in three passes so that one run reports everything:
//! 1. structure: the parsed TOML table is walked against the schema (every unknown key, every
//!    value of the wrong type); a rejected value is dropped and its default stands in;
//! 2. environment: `CLAMGATE_<SECTION>_<KEY>` (nested tables joined with `_`, upper case;
//!    `CLAMGATE_POLICIES_<NAME>_<KEY>` for a named policy), each value parsed per its key's type
//!    (lists comma-separated); an unknown `CLAMGATE_*` variable is an error;
//! 3. meaning: ranges, addresses, URLs, files (skipping keys already rejected, so one mistake is
//!    one error).
//!
//! Named policies (`[policies.NAME]`) are checked against the keys of `[policy]`, every key
//! optional; between passes 2 and 3 each is laid over a copy of `[policy]` as the file and the
//! environment left it, so it inherits what it does not set.
//!
//! The schema (key paths and types) is derived from `Config::default()` serialized to TOML, plus
//! what serialization cannot show: `Option` keys, strings with a narrower type (socket addresses,
//! enums) and the tables of named tables (`policies`). Tests check all three against serde, so
//! they cannot drift.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use toml::{Table, Value};

use crate::cache::RedisUrl;
use crate::verdict::UnscannedReason;

mod checks;
mod layers;
mod schema;
mod sections;
#[cfg(test)]
mod tests;

use checks::*;
use layers::*;
use schema::*;
pub use sections::*;

/// The whole configuration of one clamgate instance.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: ListenConfig,
    pub clamd: ClamdConfig,
    pub scan: ScanConfig,
    pub cache: CacheConfig,
    pub ext_proc: ExtProcConfig,
    /// How clamgate downloads objects for nginx (`on_miss = "fetch"`).
    pub fetch: FetchConfig,
    pub bodies: BodiesConfig,
    pub response: ResponseConfig,
    /// The default policy: routes that name no policy use it.
    pub policy: PolicyConfig,
    /// Named policies, selected per route by Envoy (route metadata `clamgate.policy`, or gRPC
    /// metadata `x-clamgate-policy`). Each
    /// starts from `[policy]` and overrides what it sets. Names: lower-case letters and digits.
    /// [`crate::policy::Policies::named`] finds one.
    pub policies: BTreeMap<String, PolicyConfig>,
    pub log: LogConfig,
}

// ---------------------------------------------------------------------------------------------
// Loading

/// The environment variable that names the config file. `main` reads it; the loader skips it,
/// since it is not a key.
pub const CONFIG_PATH_ENV: &str = "CLAMGATE_CONFIG";

/// The prefix of every environment override: `CLAMGATE_<SECTION>_<KEY>`.
pub const ENV_PREFIX: &str = "CLAMGATE_";

/// Upper bound of every `_ms` duration: one hour.
const MAX_DURATION_MS: u64 = 60 * 60 * 1000;
/// Upper bound of `response.retry_after_secs`: one day.
const MAX_RETRY_AFTER_SECS: u64 = 24 * 60 * 60;
/// clamd reads the INSTREAM length as a 32-bit integer.
const MAX_SCAN_BYTES: u64 = u32::MAX as u64;
/// Upper bound of `scan.max_decode_ratio`; past `max_scan_bytes` / 1 MiB a ratio never trips.
const MAX_DECODE_RATIO: u64 = u32::MAX as u64;
const MAX_CONCURRENT_SCANS: u64 = 1024;
const MIN_MESSAGE_BYTES: u64 = 1024 * 1024;
const MAX_REDIS_POOL_SIZE: u64 = 64;
const MAX_CONCURRENT_FETCHES: u64 = 1024;
const MAX_REDIRECTS: u64 = 20;
/// Upper bound of `cache.unscanned_ttl_secs`: an hour is "briefly" (limits may change).
const MAX_UNSCANNED_TTL_SECS: u64 = 60 * 60;

/// The policy name that selects `[policy]`; no `[policies.NAME]` may take it.
pub const DEFAULT_POLICY_NAME: &str = "default";
/// The longest policy name. Names travel in gRPC metadata and in environment variable names.
const MAX_POLICY_NAME_CHARS: usize = 32;

/// One problem with the configuration. Its message never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// Where the problem is: a key path (`clamd.connect_timeout_ms`), an environment variable
    /// (`CLAMGATE_CLAMD_ADRESS`) or the config file's path.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { key: key.into(), message: message.into() }
    }
}

/// Every problem found by one load, never empty. The order is stable: the file (unreadable or
/// bad syntax, then unknown keys and wrong types, by key path), then the environment (by variable
/// name), then values that are out of range or malformed (in schema order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One line per error, `key: message`, without a trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Loads the configuration: the defaults, then the TOML file at `path` (none: defaults only),
    /// then every `CLAMGATE_*` variable in `env`, which win over the file. Variables without the
    /// prefix are ignored, and so is [`CONFIG_PATH_ENV`]. Every problem is returned at once.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let file = match path {
            None => Ok(Table::new()),
            Some(path) => {
                let source = path.display().to_string();
                match std::fs::read_to_string(path) {
                    Ok(text) => parse_toml(&text, &source),
                    Err(err) => Err(ConfigError::new(source, format!("cannot read the config file: {err}"))),
                }
            }
        };
        load_layers(file, env)
    }

    /// [`Config::load`] with the file's `text` given (its syntax errors reported under `source`):
    /// for the fuzz target and property tests, which feed it any text.
    pub fn load_text(
        text: &str,
        source: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        load_layers(parse_toml(text, source), env)
    }

    /// Checks the values of a config built in code (ranges, addresses, URLs), as `load` does.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let (rejected, from_env) = (BTreeSet::new(), BTreeMap::new());
        let mut checker = Checker { errors: Vec::new(), rejected: &rejected, from_env: &from_env };
        check_values(self, &mut checker);
        if checker.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(checker.errors))
        }
    }

    /// Settings that are valid but weaken security or fail open, one line each
    /// (`key: explanation`), for `main` to log at startup.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let admin = self.listen.admin_addr;
        if !admin.ip().is_loopback() {
            warnings.push(format!(
                "listen.admin_addr: {admin} is not a loopback address; the admin listener reveals \
                 counters and versions and should not be reachable from the network"
            ));
        }
        if !self.clamd.require_alert_settings {
            warnings.push(
                "clamd.require_alert_settings: false: clamgate serves even when clamd answers OK for \
                 encrypted archives or bodies past its scan limits (AlertEncrypted / AlertExceedsMax \
                 off), and such bodies are cached clean; it only warns and counts"
                    .to_string(),
            );
        }
        warnings.extend(self.listen.grpc_auth_warnings());
        if let Some(http) = self.listen.http_addr {
            if !http.ip().is_loopback() && self.listen.http_token_file.is_none() {
                warnings.push(format!(
                    "listen.http_addr: {http} is not a loopback address and listen.http_token_file is not \
                     set: anyone who can reach it can make clamgate download and scan objects from its \
                     origins, and read verdicts"
                ));
            }
            let scan_token =
                self.listen.http_scan_token_file.is_some() || self.listen.http_token_file.is_some();
            if !http.ip().is_loopback() && !scan_token {
                warnings.push(format!(
                    "listen.http_addr: {http} is not a loopback address and neither listen.http_scan_token_file \
                     nor listen.http_token_file is set: anyone who can reach it can have clamd scan bodies \
                     through POST /v1/scan"
                ));
            }
        }
        let urls = self.cache.redis_url.iter().map(|url| ("cache.redis_url".to_string(), url));
        let cluster = self.cache.redis_cluster_urls.iter().enumerate();
        let urls = urls.chain(cluster.map(|(i, url)| (format!("cache.redis_cluster_urls[{i}]"), url)));
        let mut tls = false;
        let mut remote = None;
        for (key, url) in urls {
            tls |= url.is_tls();
            if let Some((host, false)) = url.tcp_host() {
                if url.is_plain_tcp() {
                    warnings.push(format!(
                        "{key}: redis:// to {host} is plaintext: anyone on the network path can read \
                         and rewrite verdicts (and the password); use rediss://"
                    ));
                }
                remote.get_or_insert(host);
            }
            if url.skips_certificate_check() {
                warnings.push(format!(
                    "{key}: \"#insecure\" turns off the check of Redis's TLS certificate: anyone on the \
                     network path can pose as Redis and serve forged verdicts"
                ));
            }
        }
        match (&remote, &self.cache.hmac_key_file) {
            (Some(host), None) => warnings.push(format!(
                "cache.hmac_key_file: not set while Redis ({host}) is not on loopback: anyone who can \
                 write to that Redis can plant a Clean verdict for any body; set a key file shared by \
                 every instance"
            )),
            (_, Some(_)) if self.cache.redis_url.is_none() && self.cache.redis_cluster_urls.is_empty() => {
                warnings.push(
                    "cache.hmac_key_file: set, but no Redis is configured (the in-process cache needs no \
                     key), so it is not used"
                        .to_string(),
                )
            }
            _ => {}
        }
        if self.cache.redis_tls_ca_file.is_some() && !tls {
            warnings.push(
                "cache.redis_tls_ca_file: set, but neither cache.redis_url nor cache.redis_cluster_urls \
                 uses rediss://, so it is not used"
                    .to_string(),
            );
        }
        // A named policy is warned about only where it differs from `[policy]`: what it inherits
        // was warned about once, as `policy.*`.
        let default = policy_warnings(&self.policy, true);
        for (key, message) in &default {
            warnings.push(format!("{}: {message}", key_in("policy", key)));
        }
        for (name, policy) in &self.policies {
            for (key, message) in policy_warnings(policy, false) {
                if !default.contains(&(key.clone(), message.clone())) {
                    warnings.push(format!("{}: {message}", key_in(&format!("policies.{name}"), &key)));
                }
            }
        }
        warnings
    }

    /// Every configured Redis endpoint with passwords replaced by `***`, for logs:
    /// `cache.redis_url`, or each of `cache.redis_cluster_urls`. Empty when only the in-process
    /// cache is used. `cache.redis_password` is never part of it.
    pub fn redacted_redis_endpoints(&self) -> Vec<String> {
        let urls = self.cache.redis_url.iter().chain(&self.cache.redis_cluster_urls);
        urls.map(RedisUrl::redacted).collect()
    }
}

/// `key` of the table at `table`; the empty key is the table itself.
fn key_in(table: &str, key: &str) -> String {
    match key {
        "" => table.to_string(),
        _ => format!("{table}.{key}"),
    }
}

/// The warnings about one policy, as `(key relative to the policy's table, message)`; the key is
/// empty for the table itself.
fn policy_warnings(policy: &PolicyConfig, default: bool) -> Vec<(String, String)> {
    let mut warnings = Vec::new();
    let mut warn = |key: &str, message: String| warnings.push((key.to_string(), message));
    if policy.report_only {
        warn("report_only", "true: infected bodies are logged and counted but delivered".to_string());
    }
    if !policy.scan_requests && !policy.scan_responses {
        warn("", "scan_requests and scan_responses are both false: nothing is scanned".to_string());
    }
    if policy.on_miss == OnMiss::Allow {
        warn(
            "on_miss",
            "allow lets nginx serve objects the cache has no verdict for, unscanned (fails open)".to_string(),
        );
    }
    for reason in UnscannedReason::ALL {
        if reason != UnscannedReason::NotCached
            && policy.on_unscanned.action(reason) == UnscannedAction::Allow
        {
            warn(
                &format!("on_unscanned.{reason}"),
                "allow delivers bodies that were not scanned (fails open)".to_string(),
            );
        }
    }
    if default && policy.cache_mode == CacheMode::Resource {
        warn(
            "cache_mode",
            "\"resource\" on the default policy: every route that names no policy looks verdicts up by \
             URL as well as by content; set it per route, in a named policy, for upstreams whose URLs \
             name objects that do not change"
                .to_string(),
        );
    }
    if policy.immutable {
        let message = match policy.cache_mode {
            CacheMode::Resource => "true: responses without a validator (ETag or Last-Modified) get \
                resource keys, so an object changed under the same URL keeps its old verdict until \
                cache.ttl_secs; only for upstreams that never change an object under a URL (package \
                mirrors)"
                .to_string(),
            mode => format!(
                "true has no effect while cache_mode is {:?}: only resource keys use it",
                mode.as_str()
            ),
        };
        warn("immutable", message);
    }
    if policy.verify_resource_hits && policy.cache_mode != CacheMode::Resource {
        warn(
            "verify_resource_hits",
            format!(
                "true has no effect while cache_mode is {:?}: only resource-key hits are verified",
                policy.cache_mode.as_str()
            ),
        );
    }
    warnings
}

fn parse_toml(text: &str, source: &str) -> Result<Table, ConfigError> {
    toml::from_str::<Table>(text).map_err(|err| {
        // Only the message and position: toml's Display quotes the offending line, which may hold
        // a password.
        let message = match err.span() {
            Some(span) => {
                let (line, column) = line_column(text, span.start);
                format!("TOML syntax error at line {line}, column {column}: {}", err.message())
            }
            None => format!("TOML syntax error: {}", err.message()),
        };
        ConfigError::new(source, message)
    })
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Merges the file (or the error that replaced it) and the environment over the defaults and
/// runs the three checks.
fn load_layers(
    file: Result<Table, ConfigError>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    let schema = &*SCHEMA;
    let mut errors = Vec::new();
    // Keys whose given value was rejected: the default stands in, and pass 3 skips them.
    let mut rejected = BTreeSet::new();
    // Keys set by the environment, with the variable, so pass 3 can say where a value came from.
    let mut from_env = BTreeMap::new();

    let mut table = file.unwrap_or_else(|err| {
        errors.push(err);
        Table::new()
    });
    let mut structural = Vec::new();
    check_table(schema, &mut table, &Place::root(), &mut structural, &mut rejected);
    structural.sort_by(|a, b| a.key.cmp(&b.key));
    errors.extend(structural);

    apply_env(schema, &mut table, env, &mut errors, &mut rejected, &mut from_env);
    inherit_named_tables(schema, &mut table);

    let config = match Value::Table(table).try_into::<Config>() {
        Ok(config) => config,
        Err(err) => {
            // Unreachable while the schema matches the structs (the tests check that it does).
            errors.push(ConfigError::new("config", err.message()));
            return Err(ConfigErrors(errors));
        }
    };
    let mut checker = Checker { errors: Vec::new(), rejected: &rejected, from_env: &from_env };
    check_values(&config, &mut checker);
    errors.extend(checker.errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}
