//! Pass 3 of a load: what each value means (ranges, addresses, URLs, files), all errors at once.

use super::*;

/// Collects the errors of pass 3.
pub(super) struct Checker<'a> {
    pub(super) errors: Vec<ConfigError>,
    /// Keys already reported by pass 1 or 2: their value is a stand-in default.
    pub(super) rejected: &'a BTreeSet<String>,
    /// Keys set by the environment, and by which variable.
    pub(super) from_env: &'a BTreeMap<String, String>,
}

impl Checker<'_> {
    pub(super) fn check(&mut self, path: &str, result: Result<(), String>) {
        self.check_at(path, path.to_string(), result);
    }

    /// Checks element `index` of the array at `path`; the error names the element.
    pub(super) fn check_element(&mut self, path: &str, index: usize, result: Result<(), String>) {
        self.check_at(path, format!("{path}[{index}]"), result);
    }

    pub(super) fn check_at(&mut self, path: &str, key: String, result: Result<(), String>) {
        if let (Err(message), false) = (result, self.rejected.contains(path)) {
            let message = match self.from_env.get(path) {
                Some(var) => format!("{message} (set by {var})"),
                None => message,
            };
            self.errors.push(ConfigError::new(key, message));
        }
    }
}

/// Every check of a value's meaning, in schema order.
pub(super) fn check_values(config: &Config, checker: &mut Checker<'_>) {
    let Config { listen, clamd, scan, cache, ext_proc, fetch, bodies, response, policy, policies, log } =
        config;
    if !checker.rejected.contains("listen.grpc_addr") {
        checker.check(
            "listen.admin_addr",
            distinct_listeners("listen.grpc_addr", listen.grpc_addr, listen.admin_addr),
        );
    }
    if let Some(http) = listen.http_addr {
        for (key, other) in [("listen.grpc_addr", listen.grpc_addr), ("listen.admin_addr", listen.admin_addr)]
        {
            if !checker.rejected.contains(key) {
                checker.check("listen.http_addr", distinct_listeners(key, other, http));
            }
        }
    }
    if let Some(path) = &listen.http_token_file {
        checker.check("listen.http_token_file", crate::grpc_auth::SharedToken::from_file(path).map(|_| ()));
    }
    if let Some(path) = &listen.http_scan_token_file {
        checker
            .check("listen.http_scan_token_file", crate::grpc_auth::SharedToken::from_file(path).map(|_| ()));
    }
    check_fetch(fetch, checker);
    let named = policies.iter().map(|(name, policy)| (format!("policies.{name}"), policy));
    for (table, policy) in std::iter::once(("policy".to_string(), policy)).chain(named) {
        if policy.on_miss == OnMiss::Fetch
            && fetch.origins.is_empty()
            && !checker.rejected.contains("fetch.origins")
        {
            checker.check(
                &format!("{table}.on_miss"),
                Err("\"fetch\" needs fetch.origins: clamgate downloads only from origins its config names"
                    .to_string()),
            );
        }
    }
    // A named policy's table is checked where it differs from [policy]'s (what it inherits was
    // reported there).
    check_skip("policy", &policy.skip, checker);
    check_block("policy", &policy.block, checker);
    for (name, named) in policies {
        if named.skip != policy.skip {
            check_skip(&format!("policies.{name}"), &named.skip, checker);
        }
        if named.block != policy.block {
            check_block(&format!("policies.{name}"), &named.block, checker);
        }
    }
    check_grpc_auth(listen, checker);
    checker.check("clamd.connect_timeout_ms", within(clamd.connect_timeout_ms, 1, MAX_DURATION_MS));
    checker.check("clamd.write_timeout_ms", within(clamd.write_timeout_ms, 1, MAX_DURATION_MS));
    checker.check("clamd.reply_timeout_ms", within(clamd.reply_timeout_ms, 1, MAX_DURATION_MS));
    checker.check(
        "clamd.max_concurrent_scans",
        within(clamd.max_concurrent_scans as u64, 1, MAX_CONCURRENT_SCANS),
    );
    checker.check("clamd.health_interval_ms", within(clamd.health_interval_ms, 1, MAX_DURATION_MS));
    checker.check(
        "clamd.settings_check_interval_ms",
        within(clamd.settings_check_interval_ms, 1, MAX_DURATION_MS),
    );
    checker.check(
        "clamd.abandoned_scan_max_hold_ms",
        within(clamd.abandoned_scan_max_hold_ms, 1, MAX_DURATION_MS),
    );
    checker.check("scan.max_scan_bytes", within(scan.max_scan_bytes, 1, MAX_SCAN_BYTES));
    checker.check("scan.timeout_ms", within(scan.timeout_ms, 1, MAX_DURATION_MS));
    checker.check("scan.timeout_per_mib_ms", within(scan.timeout_per_mib_ms, 0, MAX_DURATION_MS));
    checker.check("scan.max_decode_ratio", within(scan.max_decode_ratio, 0, MAX_DECODE_RATIO));
    checker
        .check("scan.max_skipped_encoding_bytes", within(scan.max_skipped_encoding_bytes, 0, MAX_SCAN_BYTES));
    checker.check("scan.multipart_max_parts", within(scan.multipart_max_parts, 1, 100_000));
    checker.check("scan.multipart_max_depth", within(scan.multipart_max_depth, 1, 8));
    check_bodies(bodies, checker);
    check_cache(cache, checker);
    checker.check(
        "ext_proc.max_message_bytes",
        within(ext_proc.max_message_bytes as u64, MIN_MESSAGE_BYTES, u64::MAX),
    );
    checker.check("response.retry_after_secs", within(response.retry_after_secs, 0, MAX_RETRY_AFTER_SECS));
    // A loaded config has only allowed names (pass 1 and 2 drop the others); one built in code
    // may not.
    for name in policies.keys() {
        checker.check(&format!("policies.{name}"), policy_name(name).map_err(NameError::message));
    }
    checker.check("log.level", log_filter(&log.level));
}

/// The gRPC listener's token and TLS files, read and parsed by the functions that build the
/// listener, so a config that passes here starts.
pub(super) fn check_grpc_auth(listen: &ListenConfig, checker: &mut Checker<'_>) {
    if let Some(path) = &listen.grpc_token_file {
        checker.check("listen.grpc_token_file", crate::grpc_auth::SharedToken::from_file(path).map(|_| ()));
    }
    let (cert, key, ca) =
        (&listen.grpc_tls_cert_file, &listen.grpc_tls_key_file, &listen.grpc_tls_client_ca_file);
    let tls_keys =
        ["listen.grpc_tls_cert_file", "listen.grpc_tls_key_file", "listen.grpc_tls_client_ca_file"];
    if tls_keys.iter().any(|key| checker.rejected.contains(*key)) {
        return;
    }
    match (cert, key) {
        (Some(cert), Some(key)) => checker.check(
            "listen.grpc_tls_cert_file",
            crate::grpc_auth::server_tls(cert, key, ca.as_deref()).map(|_| ()),
        ),
        (Some(_), None) => checker.check(
            "listen.grpc_tls_key_file",
            Err("must be set with listen.grpc_tls_cert_file (the certificate's private key)".to_string()),
        ),
        (None, Some(_)) => checker.check(
            "listen.grpc_tls_cert_file",
            Err("must be set with listen.grpc_tls_key_file (the key's certificate chain)".to_string()),
        ),
        (None, None) if ca.is_some() => checker.check(
            "listen.grpc_tls_client_ca_file",
            Err("needs listen.grpc_tls_cert_file and listen.grpc_tls_key_file: client certificates are \
                 checked in a TLS handshake"
                .to_string()),
        ),
        (None, None) => {}
    }
}

/// A policy's `[skip]`: only types whose first bytes clamgate can check, in known directions,
/// within sound bounds, under plain path prefixes.
pub(super) fn check_skip(table: &str, skip: &SkipConfig, checker: &mut Checker<'_>) {
    let key = |name: &str| format!("{table}.skip.{name}");
    for (i, declared) in skip.content_types.iter().enumerate() {
        if crate::skip::skippable(declared).is_none() {
            let known: Vec<&str> = crate::skip::SIGNATURES.iter().map(|(name, _)| *name).collect();
            checker.check_element(
                &key("content_types"),
                i,
                Err(format!(
                    "{declared:?} has no signature clamgate can check in a body's first bytes, so it cannot \
                     be skipped (never by its declared type alone); skippable: {}",
                    known.join(", ")
                )),
            );
        }
    }
    for (i, direction) in skip.directions.iter().enumerate() {
        if !matches!(direction.as_str(), "request" | "response") {
            checker.check_element(
                &key("directions"),
                i,
                Err(format!("{direction:?} is not a direction: expected \"request\" or \"response\"")),
            );
        }
    }
    if !skip.content_types.is_empty() && skip.directions.is_empty() {
        checker.check(&key("directions"), Err("is empty: name \"request\" and/or \"response\"".to_string()));
    }
    if let Some(max) = skip.max_bytes.filter(|max| *max < skip.min_bytes) {
        checker.check(&key("max_bytes"), Err(format!("{max} is below min_bytes ({})", skip.min_bytes)));
    }
    for (i, prefix) in skip.path_prefixes.iter().enumerate() {
        if !crate::skip::is_plain_path(prefix) {
            checker.check_element(
                &key("path_prefixes"),
                i,
                Err(format!(
                    "{prefix:?} must start with \"/\" and hold no \"..\" or \".\" segment, \"//\", \"%\" or \"\\\""
                )),
            );
        }
    }
}

/// A policy's `[block]`: a status Envoy can send, and an HTML page or a redirect that can be
/// used (the template file is read and parsed here, as start-up will).
pub(super) fn check_block(table: &str, block: &BlockConfig, checker: &mut Checker<'_>) {
    use envoy_types::pb::envoy::r#type::v3::StatusCode;
    let key = |name: &str| format!("{table}.block.{name}");
    let defined = i32::try_from(block.status).ok().and_then(|code| StatusCode::try_from(code).ok()).is_some();
    if !(400..=599).contains(&block.status) || !defined {
        checker.check(
            &key("status"),
            Err(format!(
                "{} is not an HTTP error status Envoy can send (400 to 599, e.g. 403 or 409)",
                block.status
            )),
        );
    }
    match (&block.html_template_file, &block.redirect_url) {
        (Some(_), Some(_)) => checker.check(
            &key("redirect_url"),
            Err("cannot be set with html_template_file: choose a page or a redirect".to_string()),
        ),
        (Some(_), None) => {
            checker.check(&key("html_template_file"), crate::block_page::HtmlAnswer::load(block).map(|_| ()))
        }
        (None, Some(_)) => {
            checker.check(&key("redirect_url"), crate::block_page::HtmlAnswer::load(block).map(|_| ()))
        }
        (None, None) if !block.json => checker.check(
            &key("json"),
            Err("false needs html_template_file or redirect_url: a refusal needs a body".to_string()),
        ),
        (None, None) => {}
    }
}

pub(super) fn check_bodies(bodies: &BodiesConfig, checker: &mut Checker<'_>) {
    checker.check(
        "bodies.stream_memory_bytes",
        within(bodies.stream_memory_bytes, 0, bodies.memory_budget_bytes)
            .map_err(|err| format!("{err} (one stream cannot hold more than bodies.memory_budget_bytes)")),
    );
    if !bodies.spool_dir.is_empty() {
        let dir = std::path::Path::new(&bodies.spool_dir);
        let problem = match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => None,
            Ok(_) => Some("is not a directory".to_string()),
            Err(err) => Some(format!("cannot be used: {err}")),
        };
        if let Some(problem) = problem {
            checker.check("bodies.spool_dir", Err(format!("{:?} {problem}", bodies.spool_dir)));
        }
    }
}

pub(super) fn check_cache(cache: &CacheConfig, checker: &mut Checker<'_>) {
    let CacheConfig {
        redis_url,
        redis_cluster_urls,
        redis_username,
        redis_password,
        redis_tls_ca_file,
        redis_pool_size,
        ttl_secs,
        memory_max_entries,
        memory_ttl_secs,
        lock_ttl_ms,
        redis_timeout_ms,
        key_prefix: prefix,
        signature_epoch: _,
        unscanned_ttl_secs,
        hmac_key_file,
        hmac_previous_key_file,
    } = cache;
    // Each URL was parsed as it was loaded (pass 1), a cluster seed checked as one too; a URL
    // set in code is checked here by the same function.
    for (i, url) in redis_cluster_urls.iter().enumerate() {
        checker.check_element("cache.redis_cluster_urls", i, url.cluster_seed_problem().map_or(Ok(()), Err));
    }
    if redis_url.is_some() && !redis_cluster_urls.is_empty() && !checker.rejected.contains("cache.redis_url")
    {
        checker.check(
            "cache.redis_cluster_urls",
            Err("cannot be set together with cache.redis_url: set redis_url for a standalone Redis or \
                 redis_cluster_urls for a Redis Cluster"
                .to_string()),
        );
    }
    let tls = redis_cluster_urls.iter().filter(|url| url.is_tls()).count();
    if tls != 0 && tls != redis_cluster_urls.len() {
        checker.check(
            "cache.redis_cluster_urls",
            Err("mixes redis:// and rediss://: the nodes of a cluster are all reached over TLS or none are"
                .to_string()),
        );
    }
    if let Some(username) = redis_username {
        checker.check("cache.redis_username", not_empty(username, "the user name in the URL"));
    }
    if let Some(password) = redis_password {
        checker.check("cache.redis_password", not_empty(password, "the password in the URL"));
    }
    if let Some(path) = redis_tls_ca_file {
        checker.check("cache.redis_tls_ca_file", ca_file(path));
    }
    checker.check("cache.redis_pool_size", within(*redis_pool_size as u64, 1, MAX_REDIS_POOL_SIZE));
    checker.check("cache.ttl_secs", within(*ttl_secs, 1, u64::MAX));
    checker.check("cache.memory_max_entries", within(*memory_max_entries as u64, 1, u64::MAX));
    checker.check("cache.memory_ttl_secs", within(*memory_ttl_secs, 1, u64::MAX));
    checker.check("cache.lock_ttl_ms", within(*lock_ttl_ms, 1, MAX_DURATION_MS));
    checker.check("cache.redis_timeout_ms", within(*redis_timeout_ms, 1, MAX_DURATION_MS));
    checker.check("cache.key_prefix", key_prefix(prefix));
    checker.check("cache.unscanned_ttl_secs", within(*unscanned_ttl_secs, 0, MAX_UNSCANNED_TTL_SECS));
    for (key, path) in
        [("cache.hmac_key_file", hmac_key_file), ("cache.hmac_previous_key_file", hmac_previous_key_file)]
    {
        if let Some(path) = path {
            checker.check(key, crate::cache::seal::read_key_file(path).map(|_| ()));
        }
    }
    if hmac_previous_key_file.is_some() && hmac_key_file.is_none() {
        checker.check(
            "cache.hmac_previous_key_file",
            Err("set without cache.hmac_key_file: during a rotation the new key goes in hmac_key_file \
                 and the old one here"
                .to_string()),
        );
    }
}

pub(super) fn within(value: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(match (min, max) {
        (_, u64::MAX) => format!("must be at least {min}, found {value}"),
        (0, _) => format!("must be at most {max}, found {value}"),
        _ => format!("must be between {min} and {max}, found {value}"),
    })
}

/// The two listeners must not bind the same port on overlapping addresses (port 0 picks a free
/// port, so never collides).
pub(super) fn distinct_listeners(other_key: &str, other: SocketAddr, this: SocketAddr) -> Result<(), String> {
    let overlapping_ip = other.ip() == this.ip() || other.ip().is_unspecified() || this.ip().is_unspecified();
    if other.port() == this.port() && other.port() != 0 && overlapping_ip {
        return Err(format!("conflicts with {other_key} ({other}): both bind port {}", this.port()));
    }
    Ok(())
}

/// `[fetch]`: timeouts, the concurrency bound, the CA file, and one origin per host.
fn check_fetch(fetch: &FetchConfig, checker: &mut Checker<'_>) {
    let FetchConfig {
        origins,
        connect_timeout_ms,
        download_timeout_ms,
        max_concurrent,
        max_redirects,
        tls_ca_file,
    } = fetch;
    let mut seen = BTreeSet::new();
    for (i, origin) in origins.iter().enumerate() {
        if !seen.insert(origin.host_pattern()) {
            checker.check_element(
                "fetch.origins",
                i,
                Err(format!("{} is named twice: one origin per host", origin.host_pattern())),
            );
        }
    }
    checker.check("fetch.connect_timeout_ms", within(*connect_timeout_ms, 1, MAX_DURATION_MS));
    checker.check("fetch.download_timeout_ms", within(*download_timeout_ms, 1, MAX_DURATION_MS));
    checker.check("fetch.max_concurrent", within(*max_concurrent as u64, 1, MAX_CONCURRENT_FETCHES));
    checker.check("fetch.max_redirects", within(*max_redirects, 0, MAX_REDIRECTS));
    if let Some(path) = tls_ca_file {
        checker.check("fetch.tls_ca_file", ca_file(path));
    }
}

/// An optional string that, when set, is not empty; removing the key falls back to `fallback`.
pub(super) fn not_empty(value: &str, fallback: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("must not be empty; remove the key to use {fallback}"));
    }
    Ok(())
}

/// A readable file with at least one PEM certificate.
pub(super) fn ca_file(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty; remove the key to trust the system's roots".to_string());
    }
    match std::fs::read(path) {
        Err(err) => Err(format!("cannot read {path:?}: {err}")),
        Ok(bytes) if !bytes.windows(PEM_CERTIFICATE.len()).any(|window| window == PEM_CERTIFICATE) => {
            Err(format!("{path:?} holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\" line)"))
        }
        Ok(_) => Ok(()),
    }
}

pub(super) const PEM_CERTIFICATE: &[u8] = b"-----BEGIN CERTIFICATE-----";

pub(super) fn key_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("must not be empty".to_string());
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("must not contain whitespace or control characters, found {prefix:?}"));
    }
    Ok(())
}

pub(super) fn log_filter(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        return Err("must not be empty; use a level such as \"info\"".to_string());
    }
    match tracing_subscriber::EnvFilter::try_new(level) {
        Ok(_) => Ok(()),
        Err(err) => Err(format!("is not a valid tracing filter ({err}), found {level:?}")),
    }
}
