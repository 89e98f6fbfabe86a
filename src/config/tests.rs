//! Tests of loading, layering, checking and redacting the configuration.

use super::*;

const SAMPLE: &str = include_str!("../../clamgate.toml");
const DOCS: &str = include_str!("../../docs/configuration.md");

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
}

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    // As `Config::load` does, with the file's text given (its errors reported as `config`).
    load_layers(parse_toml(text, "config"), vars(env))
}

/// The `Display` lines of a load that must fail.
fn errors(text: &str, env: &[(&str, &str)]) -> Vec<String> {
    match load(text, env) {
        Ok(config) => panic!("expected errors, loaded {config:?}"),
        Err(errors) => errors.to_string().lines().map(str::to_string).collect(),
    }
}

fn error(text: &str, env: &[(&str, &str)]) -> String {
    let errors = errors(text, env);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors[0].clone()
}

// --- Loading -------------------------------------------------------------------------------

#[test]
fn defaults_load_from_nothing() {
    assert_eq!(load("", &[]).unwrap(), Config::default());
    assert_eq!(Config::load(None, vars(&[])).unwrap(), Config::default());
    assert_eq!(Config::default().validate(), Ok(()));
    assert!(Config::default().warnings().is_empty());
}

#[test]
fn a_full_valid_file_loads() {
    let text = r#"
        [listen]
        grpc_addr = "0.0.0.0:50052"
        admin_addr = "[::1]:9091"
        [clamd]
        address = "unix:///run/clamav/clamd.ctl"
        connect_timeout_ms = 2000
        write_timeout_ms = 3000
        reply_timeout_ms = 4000
        max_concurrent_scans = 16
        health_interval_ms = 6000
        [scan]
        max_scan_bytes = 104_857_600
        [cache]
        redis_url = "redis://clamgate:s3cret@redis:6379/2"
        redis_username = "scanner"
        redis_password = "s3cret2"
        redis_pool_size = 64
        ttl_secs = 3600
        memory_max_entries = 10
        memory_ttl_secs = 60
        lock_ttl_ms = 3600000
        redis_timeout_ms = 100
        key_prefix = "cg:"
        [ext_proc]
        max_message_bytes = 33554432
        [response]
        verdict_header = false
        expose_signature = false
        retry_after_secs = 60
        [policy]
        scan_requests = false
        scan_responses = true
        report_only = true
        cache_mode = "off"
        immutable = true
        [policy.on_unscanned]
        too_large = "allow"
        engine_unavailable = "deny"
        timeout = "allow"
        engine_error = "deny"
        limits_exceeded = "allow"
        encrypted = "deny"
        unsupported_encoding = "allow"
        partial_content = "deny"
        [policies.mirror]
        cache_mode = "resource"
        [policies.mirror.on_unscanned]
        partial_content = "allow"
        [log]
        level = "clamgate=debug,info"
        format = "text"
    "#;
    let config = load(text, &[]).unwrap();
    assert_eq!(config.listen.grpc_addr, "0.0.0.0:50052".parse().unwrap());
    assert_eq!(config.listen.admin_addr, "[::1]:9091".parse().unwrap());
    assert_eq!(config.clamd.address.to_string(), "unix:///run/clamav/clamd.ctl");
    assert_eq!(
        (config.clamd.connect_timeout_ms, config.clamd.write_timeout_ms, config.clamd.reply_timeout_ms),
        (2000, 3000, 4000)
    );
    assert_eq!((config.clamd.max_concurrent_scans, config.clamd.health_interval_ms), (16, 6000));
    assert_eq!(config.scan.max_scan_bytes, 100 * 1024 * 1024);
    assert_eq!(config.cache.redis_url.as_ref().unwrap(), "redis://clamgate:s3cret@redis:6379/2");
    assert_eq!(
        (config.cache.ttl_secs, config.cache.memory_max_entries, config.cache.redis_timeout_ms),
        (3600, 10, 100)
    );
    assert_eq!(config.cache.key_prefix, "cg:");
    assert_eq!(config.cache.redis_username.as_deref(), Some("scanner"));
    assert_eq!(config.cache.redis_password.as_deref(), Some("s3cret2"));
    assert_eq!(
        (config.cache.redis_pool_size, config.cache.memory_ttl_secs, config.cache.lock_ttl_ms),
        (64, 60, 3_600_000)
    );
    assert_eq!(config.ext_proc.max_message_bytes, 32 * 1024 * 1024);
    assert_eq!(
        config.response,
        ResponseConfig { verdict_header: false, expose_signature: false, retry_after_secs: 60 }
    );
    assert!(!config.policy.scan_requests && config.policy.scan_responses && config.policy.report_only);
    assert_eq!((config.policy.cache_mode, config.policy.immutable), (CacheMode::Off, true));
    let mirror = &config.policies["mirror"];
    assert_eq!((mirror.cache_mode, mirror.immutable, mirror.report_only), (CacheMode::Resource, true, true));
    assert_eq!(mirror.on_unscanned.partial_content, UnscannedAction::Allow);
    assert_eq!(mirror.on_unscanned.too_large, UnscannedAction::Allow);
    let actions = &config.policy.on_unscanned;
    assert_eq!(
        (actions.too_large, actions.engine_unavailable),
        (UnscannedAction::Allow, UnscannedAction::Deny)
    );
    assert_eq!((actions.timeout, actions.engine_error), (UnscannedAction::Allow, UnscannedAction::Deny));
    assert_eq!((actions.limits_exceeded, actions.encrypted), (UnscannedAction::Allow, UnscannedAction::Deny));
    assert_eq!(
        (actions.unsupported_encoding, actions.partial_content),
        (UnscannedAction::Allow, UnscannedAction::Deny)
    );
    assert_eq!(config.log, LogConfig { level: "clamgate=debug,info".to_string(), format: LogFormat::Text });
}

#[test]
fn load_reads_a_file_and_names_it_when_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clamgate.toml");
    std::fs::write(&path, "[clamd]\nmax_concurrent_scans = 2\n").unwrap();
    assert_eq!(Config::load(Some(&path), vars(&[])).unwrap().clamd.max_concurrent_scans, 2);

    let missing = dir.path().join("missing.toml");
    let err = Config::load(Some(&missing), vars(&[])).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: cannot read the config file: No such file or directory (os error 2)", missing.display())
    );
}

#[test]
fn a_syntax_error_names_line_and_column_and_env_is_still_checked() {
    assert_eq!(
        errors("[clamd]\naddress = \"tcp://x:1\nmax_concurrent_scans = 2\n", &[("CLAMGATE_NOPE", "1")]),
        [
            "config: TOML syntax error at line 2, column 21: invalid basic string, expected `\"`",
            "CLAMGATE_NOPE: unknown variable: it matches no config key",
        ]
    );
    assert_eq!(
        error("[clamd]\nmax_concurrent_scans = 1\nmax_concurrent_scans = 2\n", &[]),
        "config: TOML syntax error at line 3, column 1: duplicate key"
    );
}

// --- Pass 1: unknown keys and types ----------------------------------------------------------

#[test]
fn unknown_keys_are_reported_with_their_path_and_a_suggestion() {
    assert_eq!(
        error("[cache]\nredis_ur = \"redis://r\"\n", &[]),
        "cache.redis_ur: unknown key \"redis_ur\" in [cache]; did you mean \"redis_url\"?"
    );
    assert_eq!(
        error("lisen = 1\n", &[]),
        "lisen: unknown key \"lisen\" at the top level; did you mean \"listen\"?"
    );
    assert_eq!(
        error("[clamd]\nttl_secs = 5\n", &[]),
        "clamd.ttl_secs: unknown key \"ttl_secs\" in [clamd]; did you mean \"cache.ttl_secs\"?"
    );
    assert_eq!(error("[extra]\nx = 1\n", &[]), "extra: unknown key \"extra\" at the top level");
    assert_eq!(
        error("[policy.on_unscanned]\nzip_bomb = \"deny\"\n", &[]),
        "policy.on_unscanned.zip_bomb: unknown key \"zip_bomb\" in [policy.on_unscanned]"
    );
    // A quoted dotted key is one name, not a path, and is named as it is written.
    assert_eq!(
        error("\"clamd.address\" = \"tcp://x:1\"\n", &[]),
        "\"clamd.address\": unknown key \"clamd.address\" at the top level"
    );
    // Found by the config fuzz target: an empty key was reported under an empty name.
    assert_eq!(error("\"\" = 1\n", &[]), "\"\": unknown key \"\" at the top level");
    assert_eq!(error("[clamd]\n\"\" = 1\n", &[]), "clamd.\"\": unknown key \"\" in [clamd]");
}

#[test]
fn unknown_keys_in_a_named_policy_have_its_path() {
    assert_eq!(
        error("[policies.mirror]\ncache_mod = \"resource\"\n", &[]),
        "policies.mirror.cache_mod: unknown key \"cache_mod\" in [policies.mirror]; did you mean \"cache_mode\"?"
    );
    assert_eq!(
        error("[policies.mirror.on_unscanned]\nzip_bomb = \"deny\"\n", &[]),
        "policies.mirror.on_unscanned.zip_bomb: unknown key \"zip_bomb\" in [policies.mirror.on_unscanned]"
    );
    // The same name elsewhere in the policy is suggested at its place in this policy.
    assert_eq!(
        error("[policies.mirror]\ntimeout = \"allow\"\n", &[]),
        "policies.mirror.timeout: unknown key \"timeout\" in [policies.mirror]; did you mean \"policies.mirror.on_unscanned.timeout\"?"
    );
    assert_eq!(
        error("[policies.mirror]\nttl_secs = 1\n", &[]),
        "policies.mirror.ttl_secs: unknown key \"ttl_secs\" in [policies.mirror]; did you mean \"cache.ttl_secs\"?"
    );
    assert_eq!(
        error("[policies.mirror.on_unscanned]\nreport_only = true\n", &[]),
        "policies.mirror.on_unscanned.report_only: unknown key \"report_only\" in [policies.mirror.on_unscanned]; did you mean \"policies.mirror.report_only\"?"
    );
    // Policies nest only one level: `[policies.a.b]` is a key of `a`.
    assert_eq!(
        error("[policies.a.b]\ncache_mode = \"off\"\n", &[]),
        "policies.a.b: unknown key \"b\" in [policies.a]"
    );
    assert_eq!(
        error("[policys.mirror]\ncache_mode = \"off\"\n", &[]),
        "policys: unknown key \"policys\" at the top level; did you mean \"policy\"?"
    );
}

#[test]
fn every_unknown_key_is_reported_once() {
    // A whole unknown table is one error, not one per key inside it.
    assert_eq!(
        errors("[cach]\nttl_secs = 1\nkey_prefix = \"x\"\n[clamd]\nadress = \"x\"\ntimeout_ms = 1\n", &[]),
        [
            "cach: unknown key \"cach\" at the top level; did you mean \"cache\"?",
            "clamd.adress: unknown key \"adress\" in [clamd]; did you mean \"address\"?",
            "clamd.timeout_ms: unknown key \"timeout_ms\" in [clamd]; did you mean \"scan.timeout_ms\"?",
        ]
    );
}

#[test]
fn wrong_types_are_reported_with_what_was_expected() {
    let cases = [
        ("[clamd]\nconnect_timeout_ms = \"1s\"", "clamd.connect_timeout_ms: expected an integer, found a string"),
        ("[clamd]\nconnect_timeout_ms = 1.5", "clamd.connect_timeout_ms: expected an integer, found a float"),
        ("[clamd]\nmax_concurrent_scans = -1", "clamd.max_concurrent_scans: expected a non-negative integer, found -1"),
        ("[response]\nverdict_header = \"yes\"", "response.verdict_header: expected a boolean, found a string"),
        ("[clamd]\naddress = 3310", "clamd.address: expected \"tcp://HOST:PORT\" or \"unix:///absolute/path\", found an integer"),
        ("[clamd]\naddress = [\"tcp://a:1\"]", "clamd.address: expected \"tcp://HOST:PORT\" or \"unix:///absolute/path\", found an array"),
        ("[clamd.address]\nhost = \"a\"", "clamd.address: expected \"tcp://HOST:PORT\" or \"unix:///absolute/path\", found a table"),
        ("clamd = \"tcp://a:1\"", "clamd: expected a table, found a string"),
        ("[cache]\nredis_url = false", "cache.redis_url: expected a Redis URL such as \"redis://127.0.0.1:6379\", found a boolean"),
        (
            "[listen]\ngrpc_addr = \"localhost:50051\"",
            "listen.grpc_addr: expected an IP address and port such as \"127.0.0.1:9090\" or \"[::1]:9090\", found \"localhost:50051\"",
        ),
        (
            "[listen]\nadmin_addr = 9090",
            "listen.admin_addr: expected an IP address and port such as \"127.0.0.1:9090\" or \"[::1]:9090\", found an integer",
        ),
        (
            "[policy.on_unscanned]\ntimeout = \"block\"",
            "policy.on_unscanned.timeout: expected \"deny\" or \"allow\", found \"block\"",
        ),
        ("[log]\nformat = true", "log.format: expected \"json\" or \"text\", found a boolean"),
        (
            "[policy]\ncache_mode = \"url\"",
            "policy.cache_mode: expected \"content\", \"resource\" or \"off\", found \"url\"",
        ),
        (
            "[policies.mirror]\ncache_mode = 1",
            "policies.mirror.cache_mode: expected \"content\", \"resource\" or \"off\", found an integer",
        ),
        (
            "[policies.mirror.on_unscanned]\ntimeout = \"block\"",
            "policies.mirror.on_unscanned.timeout: expected \"deny\" or \"allow\", found \"block\"",
        ),
        ("[policies.mirror]\nimmutable = \"yes\"", "policies.mirror.immutable: expected a boolean, found a string"),
        ("[policies.mirror]\non_unscanned = 1", "policies.mirror.on_unscanned: expected a table, found an integer"),
        ("policies = 1", "policies: expected a table, found an integer"),
        ("[policies]\nmirror = \"resource\"", "policies.mirror: expected a table, found a string"),
        ("[cache]\nredis_password = 7", "cache.redis_password: expected a string, found an integer"),
        ("[log]\nformat = \"JSON\"", "log.format: expected \"json\" or \"text\", found \"JSON\""),
    ];
    for (text, expected) in cases {
        assert_eq!(error(text, &[]), expected, "for {text:?}");
    }
}

#[test]
fn a_rejected_value_causes_no_follow_on_errors() {
    // The default stands in for a rejected value, and is not checked against other keys.
    assert_eq!(
        errors("[listen]\ngrpc_addr = \"nope\"\nadmin_addr = \"127.0.0.1:50051\"\n", &[]),
        ["listen.grpc_addr: expected an IP address and port such as \"127.0.0.1:9090\" or \"[::1]:9090\", found \"nope\""]
    );
    assert_eq!(errors("cache = 1\n", &[]), ["cache: expected a table, found an integer"]);
}

// --- Pass 3: values ------------------------------------------------------------------------

#[test]
fn out_of_range_values_are_reported_with_their_bounds() {
    let cases = [
        (
            "[clamd]\nconnect_timeout_ms = 0",
            "clamd.connect_timeout_ms: must be between 1 and 3600000, found 0",
        ),
        ("[clamd]\nwrite_timeout_ms = 0", "clamd.write_timeout_ms: must be between 1 and 3600000, found 0"),
        (
            "[clamd]\nreply_timeout_ms = 3600001",
            "clamd.reply_timeout_ms: must be between 1 and 3600000, found 3600001",
        ),
        (
            "[clamd]\nhealth_interval_ms = 0",
            "clamd.health_interval_ms: must be between 1 and 3600000, found 0",
        ),
        (
            "[clamd]\nmax_concurrent_scans = 0",
            "clamd.max_concurrent_scans: must be between 1 and 1024, found 0",
        ),
        (
            "[clamd]\nmax_concurrent_scans = 1025",
            "clamd.max_concurrent_scans: must be between 1 and 1024, found 1025",
        ),
        ("[scan]\nmax_scan_bytes = 0", "scan.max_scan_bytes: must be between 1 and 4294967295, found 0"),
        (
            "[scan]\nmax_scan_bytes = 4294967296",
            "scan.max_scan_bytes: must be between 1 and 4294967295, found 4294967296",
        ),
        (
            "[scan]\nmax_decode_ratio = 4294967296",
            "scan.max_decode_ratio: must be at most 4294967295, found 4294967296",
        ),
        ("[cache]\nttl_secs = 0", "cache.ttl_secs: must be at least 1, found 0"),
        ("[cache]\nmemory_max_entries = 0", "cache.memory_max_entries: must be at least 1, found 0"),
        ("[cache]\nredis_pool_size = 0", "cache.redis_pool_size: must be between 1 and 64, found 0"),
        ("[cache]\nredis_pool_size = 65", "cache.redis_pool_size: must be between 1 and 64, found 65"),
        ("[cache]\nmemory_ttl_secs = 0", "cache.memory_ttl_secs: must be at least 1, found 0"),
        ("[cache]\nlock_ttl_ms = 0", "cache.lock_ttl_ms: must be between 1 and 3600000, found 0"),
        ("[cache]\nlock_ttl_ms = 3600001", "cache.lock_ttl_ms: must be between 1 and 3600000, found 3600001"),
        ("[cache]\nredis_timeout_ms = 0", "cache.redis_timeout_ms: must be between 1 and 3600000, found 0"),
        (
            "[ext_proc]\nmax_message_bytes = 1048575",
            "ext_proc.max_message_bytes: must be at least 1048576, found 1048575",
        ),
        (
            "[response]\nretry_after_secs = 86401",
            "response.retry_after_secs: must be at most 86400, found 86401",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(error(text, &[]), expected, "for {text:?}");
    }
    let bounds = "[clamd]\nconnect_timeout_ms = 1\nreply_timeout_ms = 3600000\nmax_concurrent_scans = 1024\n\
                  [scan]\nmax_scan_bytes = 4294967295\n[ext_proc]\nmax_message_bytes = 1048576\n\
                  [response]\nretry_after_secs = 0\n[cache]\nttl_secs = 1\nmemory_max_entries = 1\n\
                  redis_pool_size = 1\nmemory_ttl_secs = 1\nlock_ttl_ms = 1\n";
    assert!(load(bounds, &[]).is_ok());
}

#[test]
fn listeners_must_not_share_a_port() {
    assert_eq!(
        error("[listen]\ngrpc_addr = \"127.0.0.1:9090\"\n", &[]),
        "listen.admin_addr: conflicts with listen.grpc_addr (127.0.0.1:9090): both bind port 9090"
    );
    assert_eq!(
        error("[listen]\ngrpc_addr = \"0.0.0.0:7000\"\nadmin_addr = \"127.0.0.1:7000\"\n", &[]),
        "listen.admin_addr: conflicts with listen.grpc_addr (0.0.0.0:7000): both bind port 7000"
    );
    for ok in [
        "[listen]\ngrpc_addr = \"127.0.0.1:7000\"\nadmin_addr = \"127.0.0.2:7000\"\n",
        "[listen]\ngrpc_addr = \"127.0.0.1:0\"\nadmin_addr = \"127.0.0.1:0\"\n",
    ] {
        assert!(load(ok, &[]).is_ok(), "{ok}");
    }
}

#[test]
fn clamd_address_is_tcp_host_port_or_an_absolute_unix_path() {
    for ok in [
        "tcp://clamd:3310",
        "tcp://10.0.0.5:3310",
        "tcp://[::1]:3310",
        "tcp://clamd_1.svc-x:1",
        "unix:///run/clamd.ctl",
    ] {
        assert!(load(&format!("[clamd]\naddress = {ok:?}"), &[]).is_ok(), "{ok}");
    }
    let tcp = |found: &str| {
        format!("clamd.address: expected \"tcp://HOST:PORT\" with a port from 1 to 65535, found {found:?}")
    };
    for bad in [
        "tcp://clamd",
        "tcp://clamd:0",
        "tcp://clamd:65536",
        "tcp://:3310",
        "tcp://::1:3310",
        "tcp://clamd:3310/",
        "tcp://clamd:+1",
    ] {
        assert_eq!(error(&format!("[clamd]\naddress = {bad:?}"), &[]), tcp(bad));
    }
    assert_eq!(
        error("[clamd]\naddress = \"clamd:3310\"", &[]),
        "clamd.address: expected \"tcp://HOST:PORT\" or \"unix:///absolute/path\", found \"clamd:3310\""
    );
    assert_eq!(
        error("[clamd]\naddress = \"unix://run/clamd.ctl\"", &[]),
        "clamd.address: expected an absolute path after \"unix://\", as in \"unix:///run/clamav/clamd.ctl\", found \"unix://run/clamd.ctl\""
    );
}

#[test]
fn redis_url_must_be_a_usable_redis_url() {
    for ok in [
        "redis://127.0.0.1:6379/0",
        "redis://:pw@redis",
        "redis+unix:///run/redis.sock?db=1",
        "unix:///run/redis.sock",
        // Accepted whether or not this build of the redis crate has TLS.
        "rediss://:pw@redis:6380/1",
        "rediss://redis:6380/#insecure",
    ] {
        assert!(load(&format!("[cache]\nredis_url = {ok:?}"), &[]).is_ok(), "{ok}");
    }
    assert_eq!(
        error("[cache]\nredis_url = \"rediss://:hunter2@redis:6380/#nocheck\"", &[]),
        "cache.redis_url: only \"#insecure\" may end a rediss:// URL, found \"rediss://:***@redis:6380/#nocheck\""
    );
    assert_eq!(
        error("[cache]\nredis_url = \"rediss://:hunter2@redis:6380/x\"", &[]),
        "cache.redis_url: is not a usable Redis URL (Invalid database number), found \"rediss://:***@redis:6380/x\""
    );
    assert_eq!(
        error("[cache]\nredis_url = \"\"", &[]),
        "cache.redis_url: must not be empty; remove the key to use the in-process cache"
    );
    assert_eq!(
        error("[cache]\nredis_url = \"http://user:hunter2@redis:6379\"", &[]),
        "cache.redis_url: expected a URL starting with \"redis://\", \"rediss://\", \"redis+unix://\" or \"unix://\", found \"http://user:***@redis:6379\""
    );
    assert_eq!(
        error("[cache]\nredis_url = \"redis://:hunter2@redis:6379/zero\"", &[]),
        "cache.redis_url: is not a usable Redis URL (Invalid database number), found \"redis://:***@redis:6379/zero\""
    );
    assert_eq!(
        error("[cache]\nredis_url = \"redis://\"", &[]),
        "cache.redis_url: is not a usable Redis URL (Missing hostname), found \"redis://\""
    );
}

#[test]
fn key_prefix_and_log_level_are_checked() {
    assert_eq!(error("[cache]\nkey_prefix = \"\"", &[]), "cache.key_prefix: must not be empty");
    assert_eq!(
        error("[cache]\nkey_prefix = \"clam gate:\"", &[]),
        "cache.key_prefix: must not contain whitespace or control characters, found \"clam gate:\""
    );
    assert_eq!(
        error("[log]\nlevel = \" \"", &[]),
        "log.level: must not be empty; use a level such as \"info\""
    );
    assert_eq!(
        error("[log]\nlevel = \"clamgate=loud\"", &[]),
        "log.level: is not a valid tracing filter (error parsing level filter: expected one of \"off\", \"error\", \"warn\", \"info\", \"debug\", \"trace\", or a number 0-5), found \"clamgate=loud\""
    );
}

#[test]
fn validate_checks_a_config_built_in_code() {
    let mut config = Config::default();
    config.clamd.max_concurrent_scans = 0;
    config.cache.key_prefix = String::new();
    assert_eq!(
        config.validate().unwrap_err().to_string(),
        "clamd.max_concurrent_scans: must be between 1 and 1024, found 0\ncache.key_prefix: must not be empty"
    );
}

// --- All at once ---------------------------------------------------------------------------

#[test]
fn every_problem_is_reported_at_once() {
    let text = "[clamd]\nconnect_timeout_ms = \"1s\"\nmax_concurrent_scans = 0\n[cache]\nredis_ur = \"x\"\n";
    let err = load(text, &[]).unwrap_err();
    assert_eq!(err.0.len(), 3);
    assert_eq!(
        err.to_string(),
        "cache.redis_ur: unknown key \"redis_ur\" in [cache]; did you mean \"redis_url\"?\n\
         clamd.connect_timeout_ms: expected an integer, found a string\n\
         clamd.max_concurrent_scans: must be between 1 and 1024, found 0"
    );
    assert_eq!(err.0[1], ConfigError::new("clamd.connect_timeout_ms", "expected an integer, found a string"));
}

#[test]
fn file_environment_and_value_errors_come_together_in_order() {
    let text = "[log]\nformat = \"yaml\"\nlevel = \"\"\n[scan]\nmax_scan_bytes = 0\n";
    let env = [("CLAMGATE_CLAMD_ADRESS", "tcp://x:1"), ("CLAMGATE_RESPONSE_VERDICT_HEADER", "yes")];
    assert_eq!(
        errors(text, &env),
        [
            "log.format: expected \"json\" or \"text\", found \"yaml\"",
            "CLAMGATE_CLAMD_ADRESS: unknown variable: it matches no config key; did you mean CLAMGATE_CLAMD_ADDRESS?",
            "CLAMGATE_RESPONSE_VERDICT_HEADER: invalid value for response.verdict_header: expected true or false, found \"yes\"",
            "scan.max_scan_bytes: must be between 1 and 4294967295, found 0",
            "log.level: must not be empty; use a level such as \"info\"",
        ]
    );
}

// --- Environment ---------------------------------------------------------------------------

#[test]
fn env_overrides_every_kind_of_key() {
    let config = load(
        "",
        &[
            ("CLAMGATE_CLAMD_CONNECT_TIMEOUT_MS", "2500"),
            ("CLAMGATE_RESPONSE_EXPOSE_SIGNATURE", "false"),
            ("CLAMGATE_CLAMD_ADDRESS", "tcp://clamd:3310"),
            ("CLAMGATE_LISTEN_GRPC_ADDR", "0.0.0.0:50051"),
            ("CLAMGATE_LOG_FORMAT", "text"),
            ("CLAMGATE_POLICY_ON_UNSCANNED_TOO_LARGE", "allow"),
            ("CLAMGATE_CACHE_REDIS_URL", "redis://redis:6379"),
            ("CLAMGATE_CONFIG", "/etc/clamgate/clamgate.toml"),
            ("PATH", "/usr/bin"),
            ("clamgate_clamd_address", "ignored: not the prefix"),
        ],
    )
    .unwrap();
    assert_eq!(config.clamd.connect_timeout_ms, 2500);
    assert!(!config.response.expose_signature);
    assert_eq!(config.clamd.address.to_string(), "tcp://clamd:3310");
    assert_eq!(config.listen.grpc_addr, "0.0.0.0:50051".parse().unwrap());
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.policy.on_unscanned.too_large, UnscannedAction::Allow);
    assert_eq!(config.policy.on_unscanned.timeout, UnscannedAction::Deny);
    assert_eq!(config.cache.redis_url.as_ref().unwrap(), "redis://redis:6379");
}

#[test]
fn env_wins_over_the_file() {
    let text = "[clamd]\naddress = \"tcp://file:3310\"\nmax_concurrent_scans = 4\n\
                [cache]\nredis_url = \"redis://file:6379\"\n[policy.on_unscanned]\ntimeout = \"allow\"\n";
    let config = load(
        text,
        &[("CLAMGATE_CLAMD_ADDRESS", "tcp://env:3310"), ("CLAMGATE_POLICY_ON_UNSCANNED_TIMEOUT", "deny")],
    )
    .unwrap();
    assert_eq!(config.clamd.address.to_string(), "tcp://env:3310");
    assert_eq!(config.clamd.max_concurrent_scans, 4);
    assert_eq!(config.policy.on_unscanned.timeout, UnscannedAction::Deny);
    // An empty value unsets an optional key, even one the file sets.
    let config = load(text, &[("CLAMGATE_CACHE_REDIS_URL", "")]).unwrap();
    assert_eq!(config.cache.redis_url, None);
}

#[test]
fn env_cannot_hide_a_bad_file() {
    // The file is still wrong; the environment's good value is still checked.
    assert_eq!(
        errors("[clamd]\nreply_timeout_ms = \"1m\"\n", &[("CLAMGATE_CLAMD_REPLY_TIMEOUT_MS", "0")]),
        [
            "clamd.reply_timeout_ms: expected an integer, found a string",
            "clamd.reply_timeout_ms: must be between 1 and 3600000, found 0 (set by CLAMGATE_CLAMD_REPLY_TIMEOUT_MS)",
        ]
    );
}

#[test]
fn bad_env_values_name_the_variable_and_the_key() {
    let cases = [
        (
            ("CLAMGATE_CLAMD_CONNECT_TIMEOUT_MS", "1s"),
            "CLAMGATE_CLAMD_CONNECT_TIMEOUT_MS: invalid value for clamd.connect_timeout_ms: expected an integer, found \"1s\"",
        ),
        (
            ("CLAMGATE_CLAMD_MAX_CONCURRENT_SCANS", "-4"),
            "CLAMGATE_CLAMD_MAX_CONCURRENT_SCANS: invalid value for clamd.max_concurrent_scans: expected a non-negative integer, found -4",
        ),
        (
            ("CLAMGATE_POLICY_REPORT_ONLY", "1"),
            "CLAMGATE_POLICY_REPORT_ONLY: invalid value for policy.report_only: expected true or false, found \"1\"",
        ),
        (
            ("CLAMGATE_LOG_FORMAT", "yaml"),
            "CLAMGATE_LOG_FORMAT: invalid value for log.format: expected \"json\" or \"text\", found \"yaml\"",
        ),
        (
            ("CLAMGATE_LISTEN_ADMIN_ADDR", ":9090"),
            "CLAMGATE_LISTEN_ADMIN_ADDR: invalid value for listen.admin_addr: expected an IP address and port such as \"127.0.0.1:9090\" or \"[::1]:9090\", found \":9090\"",
        ),
        (
            ("CLAMGATE_CLAMD_CONNECT_TIMEOUT_MS", ""),
            "CLAMGATE_CLAMD_CONNECT_TIMEOUT_MS: invalid value for clamd.connect_timeout_ms: expected an integer, found \"\"",
        ),
    ];
    for (var, expected) in cases {
        assert_eq!(error("", &[var]), expected);
    }
    // Values out of range name the key and the variable that set it.
    assert_eq!(
        error("", &[("CLAMGATE_CACHE_TTL_SECS", "0")]),
        "cache.ttl_secs: must be at least 1, found 0 (set by CLAMGATE_CACHE_TTL_SECS)"
    );
    assert_eq!(
        error("", &[("CLAMGATE_CACHE_KEY_PREFIX", "")]),
        "cache.key_prefix: must not be empty (set by CLAMGATE_CACHE_KEY_PREFIX)"
    );
}

#[test]
fn unknown_env_variables_are_errors() {
    assert_eq!(
        error("", &[("CLAMGATE_CACHE_REDIS_UR", "redis://x")]),
        "CLAMGATE_CACHE_REDIS_UR: unknown variable: it matches no config key; did you mean CLAMGATE_CACHE_REDIS_URL?"
    );
    assert_eq!(
        error("", &[("CLAMGATE_DEBUG", "1")]),
        "CLAMGATE_DEBUG: unknown variable: it matches no config key"
    );
    // A table is not a key.
    assert_eq!(
        error("", &[("CLAMGATE_CLAMD", "x")]),
        "CLAMGATE_CLAMD: unknown variable: it matches no config key"
    );
    assert_eq!(
        errors("", &[("CLAMGATE_B", "1"), ("CLAMGATE_A", "1")]),
        [
            "CLAMGATE_A: unknown variable: it matches no config key",
            "CLAMGATE_B: unknown variable: it matches no config key"
        ]
    );
}

// --- Lists ---------------------------------------------------------------------------------

#[test]
fn a_list_is_an_array_of_strings_in_the_file() {
    let text = "[cache]\nredis_cluster_urls = [\"redis://r1:7000\", \"redis://r2:7000\"]\n";
    assert_eq!(load(text, &[]).unwrap().cache.redis_cluster_urls, ["redis://r1:7000", "redis://r2:7000"]);
    assert_eq!(
        error("[cache]\nredis_cluster_urls = \"redis://r1:7000\"\n", &[]),
        "cache.redis_cluster_urls: expected an array of Redis URLs such as [\"redis://redis-1:6379\"], found a string"
    );
    assert_eq!(
        error("[cache.redis_cluster_urls]\nr1 = \"redis://r1:7000\"\n", &[]),
        "cache.redis_cluster_urls: expected an array of Redis URLs such as [\"redis://redis-1:6379\"], found a table"
    );
    // Every bad element, by index; the list is then dropped whole, so nothing follows on.
    assert_eq!(
        errors(
            "[cache]\nredis_cluster_urls = [\"redis://r1:7000\", 7000, \"redis://r3:7000\", [\"x\"]]\n",
            &[]
        ),
        [
            "cache.redis_cluster_urls[1]: expected a string, found an integer",
            "cache.redis_cluster_urls[3]: expected a string, found an array",
        ]
    );
}

#[test]
fn a_list_is_comma_separated_in_the_environment() {
    let urls = |value: &str| {
        load("", &[("CLAMGATE_CACHE_REDIS_CLUSTER_URLS", value)]).unwrap().cache.redis_cluster_urls
    };
    assert_eq!(urls("redis://r1:7000"), ["redis://r1:7000"]);
    assert_eq!(urls(" redis://r1:7000 ,redis://r2:7000\t"), ["redis://r1:7000", "redis://r2:7000"]);
    // An empty value is an empty list, also over a list in the file.
    assert!(urls("").is_empty());
    assert!(urls("  ").is_empty());
    let text = "[cache]\nredis_cluster_urls = [\"redis://file:7000\"]\n";
    assert!(load(text, &[("CLAMGATE_CACHE_REDIS_CLUSTER_URLS", "")])
        .unwrap()
        .cache
        .redis_cluster_urls
        .is_empty());
    // An empty element is checked as a URL, and named with its index and the variable.
    assert_eq!(
        error("", &[("CLAMGATE_CACHE_REDIS_CLUSTER_URLS", "redis://r1:7000,,redis://r3:7000")]),
        "CLAMGATE_CACHE_REDIS_CLUSTER_URLS: invalid value for cache.redis_cluster_urls[1]: must not be empty"
    );
}

// --- Named policies ------------------------------------------------------------------------

#[test]
fn a_named_policy_starts_from_the_default_policy() {
    let text = "[policy]\nreport_only = true\n[policy.on_unscanned]\ntimeout = \"allow\"\n\
                [policies.mirror]\ncache_mode = \"resource\"\n\
                [policies.mirror.on_unscanned]\ntoo_large = \"allow\"\n\
                [policies.strict]\nreport_only = false\n[policies.strict.on_unscanned]\ntimeout = \"deny\"\n";
    let config = load(text, &[]).unwrap();
    assert_eq!(config.policy.cache_mode, CacheMode::Content);
    let mirror = &config.policies["mirror"];
    assert!(mirror.report_only);
    assert_eq!(mirror.cache_mode, CacheMode::Resource);
    assert_eq!(mirror.on_unscanned.timeout, UnscannedAction::Allow, "inherited");
    assert_eq!(mirror.on_unscanned.too_large, UnscannedAction::Allow, "its own");
    assert_eq!(mirror.on_unscanned.encrypted, UnscannedAction::Deny, "the default's default");
    assert_eq!(
        config.policies["strict"],
        PolicyConfig { report_only: false, ..PolicyConfig::default() },
        "it overrides what it sets"
    );
    assert_eq!(config.policies.len(), 2);
    // `[policy]` as the environment leaves it.
    let config = load(text, &[("CLAMGATE_POLICY_SCAN_REQUESTS", "false")]).unwrap();
    assert!(!config.policies["mirror"].scan_requests && !config.policies["strict"].scan_requests);
    // An empty named policy is `[policy]`.
    let config = load("[policy]\nreport_only = true\n[policies.same]\n", &[]).unwrap();
    assert_eq!(config.policies["same"], config.policy);
}

#[test]
fn the_environment_sets_and_defines_named_policies() {
    let text = "[policy]\nreport_only = true\n[policies.mirror]\ncache_mode = \"resource\"\n";
    let config = load(
        text,
        &[
            ("CLAMGATE_POLICIES_MIRROR_CACHE_MODE", "off"),
            ("CLAMGATE_POLICIES_MIRROR_ON_UNSCANNED_TOO_LARGE", "allow"),
            ("CLAMGATE_POLICIES_UPLOADS2_SCAN_RESPONSES", "false"),
        ],
    )
    .unwrap();
    let mirror = &config.policies["mirror"];
    assert_eq!((mirror.cache_mode, mirror.on_unscanned.too_large), (CacheMode::Off, UnscannedAction::Allow));
    assert!(mirror.report_only);
    // A policy the file does not have, inheriting from `[policy]`.
    let uploads = &config.policies["uploads2"];
    assert!(!uploads.scan_responses && uploads.scan_requests && uploads.report_only);
    assert_eq!(config.policies.len(), 2);

    assert_eq!(
        error("", &[("CLAMGATE_POLICIES_MIRROR_CACHE_MODE", "url")]),
        "CLAMGATE_POLICIES_MIRROR_CACHE_MODE: invalid value for policies.mirror.cache_mode: expected \"content\", \"resource\" or \"off\", found \"url\""
    );
    // Suggestions for a variable of a named policy: under its own name, and under the names
    // the file uses.
    assert_eq!(
        error("", &[("CLAMGATE_POLICIES_MIRROR_CACHE_MOD", "off")]),
        "CLAMGATE_POLICIES_MIRROR_CACHE_MOD: unknown variable: it matches no config key; did you mean CLAMGATE_POLICIES_MIRROR_CACHE_MODE?"
    );
    assert_eq!(
        error(text, &[("CLAMGATE_POLICY_MIRROR_CACHE_MODE", "off")]),
        "CLAMGATE_POLICY_MIRROR_CACHE_MODE: unknown variable: it matches no config key; did you mean CLAMGATE_POLICIES_MIRROR_CACHE_MODE?"
    );
    for var in ["CLAMGATE_POLICIES", "CLAMGATE_POLICIES_MIRROR", "CLAMGATE_POLICIES_MIRROR_ON_UNSCANNED"] {
        assert_eq!(error("", &[(var, "x")]), format!("{var}: unknown variable: it matches no config key"));
    }
    // An empty value of a key that is not optional is a value, as elsewhere.
    assert_eq!(
        error("", &[("CLAMGATE_POLICIES_MIRROR_IMMUTABLE", "")]),
        "CLAMGATE_POLICIES_MIRROR_IMMUTABLE: invalid value for policies.mirror.immutable: expected true or false, found \"\""
    );
}

#[test]
fn policy_names_are_short_lower_case_and_not_default() {
    let invalid = |name: &str| {
        format!(
            "invalid policy name {name:?}: a name is 1 to 32 lower-case letters (a-z) and digits, \
             because it travels in Envoy's gRPC metadata (x-clamgate-policy) and in environment \
             variable names (CLAMGATE_POLICIES_<NAME>_<KEY>)"
        )
    };
    let long = "a".repeat(33);
    for name in ["Mirror", "mir-ror", "mir_ror", "", "naïve", long.as_str()] {
        assert_eq!(
            error(&format!("[policies.{name:?}]\ncache_mode = \"off\"\n"), &[]),
            format!("policies.{name}: {}", invalid(name))
        );
    }
    assert!(load(&format!("[policies.{}]\n[policies.v2]\n", "a".repeat(32)), &[]).is_ok());
    // A bad name and the problems inside its table are all reported.
    assert_eq!(
        errors("[policies.Mirror]\ncache_mod = \"off\"\n", &[]),
        [
            format!("policies.Mirror: {}", invalid("Mirror")),
            "policies.Mirror.cache_mod: unknown key \"cache_mod\" in [policies.Mirror]; did you mean \"cache_mode\"?"
                .to_string(),
        ]
    );
    assert_eq!(
        error("[policies.default]\nreport_only = true\n", &[]),
        "policies.default: the policy name \"default\" is reserved for [policy], the policy of routes that name none; set its keys there"
    );
    // In a variable, the name is written in upper case.
    assert_eq!(
        error("", &[("CLAMGATE_POLICIES_DEFAULT_REPORT_ONLY", "true")]),
        "CLAMGATE_POLICIES_DEFAULT_REPORT_ONLY: the policy name \"default\" is reserved for [policy], the policy of routes that name none; set CLAMGATE_POLICY_REPORT_ONLY instead"
    );
    assert_eq!(
        error("", &[("CLAMGATE_POLICIES_Mirror_CACHE_MODE", "off")]),
        "CLAMGATE_POLICIES_Mirror_CACHE_MODE: invalid policy name \"Mirror\": in a variable name, a policy name is written in upper case (CLAMGATE_POLICIES_MIRROR_CACHE_MODE sets cache_mode of [policies.mirror])"
    );
    let var = format!("CLAMGATE_POLICIES_{}_CACHE_MODE", "A".repeat(33));
    assert_eq!(error("", &[(&var, "off")]), format!("{var}: {}", invalid(&"a".repeat(33))));
    // A config built in code is checked too.
    let mut config = Config::default();
    config.policies.insert("Bad".to_string(), PolicyConfig::default());
    assert_eq!(config.validate().unwrap_err().to_string(), format!("policies.Bad: {}", invalid("Bad")));
}

// --- Redis ---------------------------------------------------------------------------------

#[test]
fn redis_url_and_cluster_urls_exclude_each_other() {
    let text = "[cache]\nredis_url = \"redis://redis:6379\"\nredis_cluster_urls = [\"redis://r1:7000\"]\n";
    let message = "cannot be set together with cache.redis_url: set redis_url for a standalone Redis or \
                   redis_cluster_urls for a Redis Cluster";
    assert_eq!(error(text, &[]), format!("cache.redis_cluster_urls: {message}"));
    assert_eq!(
        error(
            "[cache]\nredis_url = \"redis://redis:6379\"\n",
            &[("CLAMGATE_CACHE_REDIS_CLUSTER_URLS", "redis://r1:7000")]
        ),
        format!("cache.redis_cluster_urls: {message} (set by CLAMGATE_CACHE_REDIS_CLUSTER_URLS)")
    );
    // Unsetting either resolves it.
    assert!(load(text, &[("CLAMGATE_CACHE_REDIS_URL", "")]).is_ok());
    assert!(load(text, &[("CLAMGATE_CACHE_REDIS_CLUSTER_URLS", "")]).is_ok());
    // A rejected redis_url is one error, not two.
    let text = "[cache]\nredis_url = 1\nredis_cluster_urls = [\"redis://r1:7000\"]\n";
    assert_eq!(
        error(text, &[]),
        "cache.redis_url: expected a Redis URL such as \"redis://127.0.0.1:6379\", found an integer"
    );
}

#[test]
fn cluster_urls_are_redis_host_port_without_a_database() {
    let load_urls = |urls: &[&str]| load(&format!("[cache]\nredis_cluster_urls = {urls:?}\n"), &[]);
    for ok in [
        &["redis://r1:7000", "redis://10.0.0.2:7001", "redis://[::1]:7002"][..],
        &["rediss://:pw@r1:7000/", "rediss://user:pw@r2:7000/0"],
        &["rediss://r1:7000/#insecure"],
    ] {
        assert!(load_urls(ok).is_ok(), "{ok:?}");
    }
    let cases = [
        (
            "redis+unix:///run/redis.sock",
            "expected \"redis://HOST:PORT\" or \"rediss://HOST:PORT\" (Redis Cluster has no unix sockets), found \"redis+unix:///run/redis.sock\"",
        ),
        (
            "http://user:hunter2@r1:7000",
            "expected \"redis://HOST:PORT\" or \"rediss://HOST:PORT\" (Redis Cluster has no unix sockets), found \"http://user:***@r1:7000\"",
        ),
        ("redis://:hunter2@r1", "must name the port, as in \"redis://redis-1:6379\", found \"redis://:***@r1\""),
        (
            "rediss://:hunter2@r1:7000/2",
            "names database 2, but Redis Cluster has only database 0, found \"rediss://:***@r1:7000/2\"",
        ),
        ("redis://", "is not a usable Redis URL (Missing hostname), found \"redis://\""),
        ("redis://r1:7000/db", "is not a usable Redis URL (Invalid database number), found \"redis://r1:7000/db\""),
        ("", "must not be empty"),
    ];
    for (url, message) in cases {
        let ok = if url.starts_with("rediss://") { "rediss://ok:7000" } else { "redis://ok:7000" };
        assert_eq!(
            errors(&format!("[cache]\nredis_cluster_urls = [{ok:?}, {url:?}]\n"), &[]),
            [format!("cache.redis_cluster_urls[1]: {message}")],
            "{url}"
        );
    }
    assert_eq!(
        error("[cache]\nredis_cluster_urls = [\"redis://r1:7000\", \"rediss://r2:7000\"]\n", &[]),
        "cache.redis_cluster_urls: mixes redis:// and rediss://: the nodes of a cluster are all reached over TLS or none are"
    );
}

/// The warning for a Redis off loopback without an HMAC key, for host `HOST`.
const NO_HMAC_KEY_WARNING: &str = "cache.hmac_key_file: not set while Redis (HOST) is not on loopback: \
    anyone who can write to that Redis can plant a Clean verdict for any body; set a key file shared \
    by every instance";

fn plaintext_warning(key: &str, host: &str) -> String {
    format!(
        "{key}: redis:// to {host} is plaintext: anyone on the network path can read and rewrite \
         verdicts (and the password); use rediss://"
    )
}

#[test]
fn plaintext_or_unauthenticated_remote_redis_is_warned_about() {
    let warnings = |text: &str, env: &[(&str, &str)]| load(text, env).unwrap().warnings();
    for local in [
        "redis://127.0.0.1:6379/0",
        "redis://localhost:6379",
        "redis://:pw@127.0.0.2:6379",
        "redis://[::1]:6379",
        "unix:///run/redis.sock",
        "redis+unix:///run/redis.sock",
    ] {
        assert!(warnings(&format!("[cache]\nredis_url = {local:?}\n"), &[]).is_empty(), "{local}");
    }
    assert_eq!(
        warnings("[cache]\nredis_url = \"redis://:pw@10.0.0.7:6379/0\"\n", &[]),
        [plaintext_warning("cache.redis_url", "10.0.0.7"), NO_HMAC_KEY_WARNING.replace("HOST", "10.0.0.7")]
    );
    assert_eq!(
        warnings("[cache]\nredis_cluster_urls = [\"redis://r1:7000\", \"redis://[fd00::2]:7000\"]\n", &[]),
        [
            plaintext_warning("cache.redis_cluster_urls[0]", "r1"),
            plaintext_warning("cache.redis_cluster_urls[1]", "[fd00::2]"),
            NO_HMAC_KEY_WARNING.replace("HOST", "r1"),
        ]
    );
    // TLS and a key: nothing to say. TLS without a key: the key is still missing.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("hmac.key");
    std::fs::write(&key, format!("{}\n", "k".repeat(40))).unwrap();
    let key = key.to_str().unwrap();
    let tls = "[cache]\nredis_url = \"rediss://redis.internal:6380\"\n";
    assert!(warnings(tls, &[("CLAMGATE_CACHE_HMAC_KEY_FILE", key)]).is_empty());
    assert_eq!(warnings(tls, &[]), [NO_HMAC_KEY_WARNING.replace("HOST", "redis.internal")]);
    // Plaintext with a key: values cannot be forged, but the link is still readable.
    assert_eq!(
        warnings("[cache]\nredis_url = \"redis://10.0.0.7\"\n", &[("CLAMGATE_CACHE_HMAC_KEY_FILE", key)]),
        [plaintext_warning("cache.redis_url", "10.0.0.7")]
    );
    assert_eq!(
        warnings("", &[("CLAMGATE_CACHE_HMAC_KEY_FILE", key)]),
        ["cache.hmac_key_file: set, but no Redis is configured (the in-process cache needs no key), so it is not used"]
    );
}

#[test]
fn hmac_key_files_must_hold_a_long_enough_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.key");
    std::fs::write(&good, "k".repeat(32)).unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, format!("  {}\n\n", "k".repeat(31))).unwrap();
    let missing = dir.path().join("missing.key");
    let (good, short, missing) = (good.to_str().unwrap(), short.to_str().unwrap(), missing.to_str().unwrap());
    let config =
        load(&format!("[cache]\nhmac_key_file = {good:?}\nhmac_previous_key_file = {good:?}\n"), &[])
            .unwrap();
    assert_eq!(config.cache.hmac_key_file.as_deref(), Some(good));
    let errors =
        errors(&format!("[cache]\nhmac_key_file = {short:?}\nhmac_previous_key_file = {missing:?}\n"), &[]);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].starts_with("cache.hmac_key_file: ") && errors[0].contains("fewer than 32 bytes"),
        "{errors:#?}"
    );
    assert!(!errors[0].contains("kkkk"), "no key material in errors: {errors:#?}");
    assert!(errors[1].starts_with("cache.hmac_previous_key_file: cannot read "), "{errors:#?}");
    assert!(error(&format!("[cache]\nhmac_previous_key_file = {good:?}\n"), &[])
        .starts_with("cache.hmac_previous_key_file: set without cache.hmac_key_file"),);
    // An empty variable unsets the key.
    let unset =
        load(&format!("[cache]\nhmac_key_file = {good:?}\n"), &[("CLAMGATE_CACHE_HMAC_KEY_FILE", "")]);
    assert_eq!(unset.unwrap().cache.hmac_key_file, None);
}

#[test]
fn signature_epoch_and_unscanned_ttl_have_their_ranges() {
    let config = load("[cache]\nsignature_epoch = 3\nunscanned_ttl_secs = 0\n", &[]).unwrap();
    assert_eq!((config.cache.signature_epoch, config.cache.unscanned_ttl_secs), (3, 0));
    assert_eq!(CacheConfig::default().unscanned_ttl_secs, 300);
    assert_eq!(
        error("", &[("CLAMGATE_CACHE_UNSCANNED_TTL_SECS", "3601")]),
        "cache.unscanned_ttl_secs: must be at most 3600, found 3601 (set by CLAMGATE_CACHE_UNSCANNED_TTL_SECS)"
    );
}

#[test]
fn the_tls_ca_file_must_be_a_readable_pem_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
    let not_pem = dir.path().join("ca.der");
    std::fs::write(&not_pem, [0x30, 0x82, 0x01]).unwrap();
    let missing = dir.path().join("missing.pem");
    let with_ca = |path: &Path| {
        format!(
            "[cache]\nredis_url = \"rediss://redis:6380\"\nredis_tls_ca_file = {:?}\n",
            path.display().to_string()
        )
    };
    let config = load(&with_ca(&ca), &[]).unwrap();
    assert_eq!(config.cache.redis_tls_ca_file.as_deref(), ca.to_str());
    assert_eq!(config.warnings(), [NO_HMAC_KEY_WARNING.replace("HOST", "redis")]);
    assert_eq!(
        error(&with_ca(&missing), &[]),
        format!(
            "cache.redis_tls_ca_file: cannot read {:?}: No such file or directory (os error 2)",
            missing.display().to_string()
        )
    );
    assert_eq!(
        error("", &[("CLAMGATE_CACHE_REDIS_TLS_CA_FILE", missing.to_str().unwrap())]),
        format!(
            "cache.redis_tls_ca_file: cannot read {:?}: No such file or directory (os error 2) (set by CLAMGATE_CACHE_REDIS_TLS_CA_FILE)",
            missing.display().to_string()
        )
    );
    assert_eq!(
        error(&with_ca(dir.path()), &[]),
        format!(
            "cache.redis_tls_ca_file: cannot read {:?}: Is a directory (os error 21)",
            dir.path().display().to_string()
        )
    );
    assert_eq!(
        error(&with_ca(&not_pem), &[]),
        format!(
            "cache.redis_tls_ca_file: {:?} holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\" line)",
            not_pem.display().to_string()
        )
    );
    assert_eq!(
        error("[cache]\nredis_tls_ca_file = \"\"\n", &[]),
        "cache.redis_tls_ca_file: must not be empty; remove the key to trust the system's roots"
    );
    // An empty variable unsets it.
    assert_eq!(
        load(&with_ca(&missing), &[("CLAMGATE_CACHE_REDIS_TLS_CA_FILE", "")])
            .unwrap()
            .cache
            .redis_tls_ca_file,
        None
    );
    // Without a rediss:// URL it is not used: a warning.
    let text = format!(
        "[cache]\nredis_cluster_urls = [\"redis://127.0.0.1:7000\"]\nredis_tls_ca_file = {:?}\n",
        ca.display().to_string()
    );
    assert_eq!(
        load(&text, &[]).unwrap().warnings(),
        ["cache.redis_tls_ca_file: set, but neither cache.redis_url nor cache.redis_cluster_urls uses rediss://, so it is not used"]
    );
}

#[test]
fn redis_credentials_are_checked_without_showing_the_password() {
    assert_eq!(
        error("[cache]\nredis_username = \"\"\n", &[]),
        "cache.redis_username: must not be empty; remove the key to use the user name in the URL"
    );
    assert_eq!(
        error("[cache]\nredis_password = \"\"\n", &[]),
        "cache.redis_password: must not be empty; remove the key to use the password in the URL"
    );
    let config = load(
        "[cache]\nredis_username = \"file\"\nredis_password = \"file\"\n",
        &[("CLAMGATE_CACHE_REDIS_USERNAME", ""), ("CLAMGATE_CACHE_REDIS_PASSWORD", "hunter2")],
    )
    .unwrap();
    assert_eq!(
        (config.cache.redis_username, config.cache.redis_password.as_deref()),
        (None, Some("hunter2"))
    );
}

// --- Secrets, warnings ---------------------------------------------------------------------

#[test]
fn passwords_are_redacted() {
    let cases = [
        ("redis://user:hunter2@redis:6379/0", "redis://user:***@redis:6379/0"),
        ("redis://:hunter2@redis:6379", "redis://:***@redis:6379"),
        ("rediss://hunter2@redis", "rediss://***@redis"),
        ("redis://redis:6379", "redis://redis:6379"),
        ("redis://:hun/ter@2@redis", "redis://:***@redis"),
        ("redis+unix:///run/redis.sock?db=1&pass=hunter2", "redis+unix:///run/redis.sock?db=1&pass=***"),
        ("user:hunter2@redis", "user:***@redis"),
    ];
    for (url, redacted) in cases {
        assert_eq!(crate::cache::redis_url::redact_url(url), redacted);
    }
    let mut config = Config::default();
    assert!(config.redacted_redis_endpoints().is_empty());
    config.cache.redis_url = Some("redis://user:hunter2@redis:6379".parse().expect("a Redis URL"));
    assert_eq!(config.redacted_redis_endpoints(), ["redis://user:***@redis:6379"]);
    assert!(!format!("{config:?}").contains("hunter2"));

    let err = load("", &[("CLAMGATE_CACHE_REDIS_URL", "htp://user:hunter2@redis")]).unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");

    // The password key, the cluster URLs, and every way to get them wrong.
    config.cache.redis_url = None;
    config.cache.redis_password = Some("hunter2".to_string());
    config.cache.redis_cluster_urls = vec![
        "rediss://u:hunter2@r1:7000".parse().expect("a Redis URL"),
        "redis://:hunter2@r2:7000".parse().expect("a Redis URL"),
    ];
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("redis_password: Some(\"***\")"), "{debug}");
    assert!(debug.contains("\"rediss://u:***@r1:7000\""), "{debug}");
    assert!(format!("{:?}", CacheConfig::default()).contains("redis_password: None"));
    assert_eq!(config.redacted_redis_endpoints(), ["rediss://u:***@r1:7000", "redis://:***@r2:7000"]);
    config.cache.redis_url = Some("redis://:hunter2@redis:6379".parse().expect("a Redis URL"));
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("cache.redis_cluster_urls: mixes") && !err.contains("hunter2"), "{err}");
    for (text, env) in [
        ("[cache]\nredis_password = 1\n", vec![]),
        ("", vec![("CLAMGATE_CACHE_REDIS_PASSWRD", "hunter2")]),
        ("[cache]\nredis_pasword = \"hunter2\"\n", vec![]),
        ("[cache]\nredis_cluster_urls = [\"http://:hunter2@r1:7000\", \"redis://:hunter2@r2\"]\n", vec![]),
        // A `#` in the password is not taken for the start of a fragment.
        ("[cache]\nredis_cluster_urls = [\"rediss://:hun#ter2@r1:7000/3\"]\n", vec![]),
        ("[cache]\nredis_url = \"rediss://:hun#ter2@r1:7000/x\"\n", vec![]),
        ("", vec![("CLAMGATE_CACHE_REDIS_CLUSTER_URLS", "redis://:hunter2@r1:7000/3,redis://r2")]),
        (
            "[cache]\nredis_password = \"hunter2\"\nredis_pool_size = 0\n",
            vec![("CLAMGATE_CACHE_REDIS_PASSWORD", "hunter2")],
        ),
    ] {
        let err = load(text, &env).unwrap_err().to_string();
        assert!(!err.contains("hunter2") && !err.contains("ter2"), "{err}");
    }
    // A syntax error never quotes the line it is on.
    let err = load("[cache]\nredis_url = \"redis://:hunter2@redis\n", &[]).unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn weakening_settings_are_warned_about() {
    let text = "[listen]\nadmin_addr = \"0.0.0.0:9090\"\n[policy]\nreport_only = true\n\
                scan_requests = false\nscan_responses = false\n[policy.on_unscanned]\ntimeout = \"allow\"\n";
    assert_eq!(
        load(text, &[]).unwrap().warnings(),
        [
            "listen.admin_addr: 0.0.0.0:9090 is not a loopback address; the admin listener reveals counters and versions and should not be reachable from the network",
            "policy.report_only: true: infected bodies are logged and counted but delivered",
            "policy: scan_requests and scan_responses are both false: nothing is scanned",
            "policy.on_unscanned.timeout: allow delivers bodies that were not scanned (fails open)",
        ]
    );
    assert!(load("[listen]\nadmin_addr = \"[::1]:9090\"", &[]).unwrap().warnings().is_empty());
}

#[test]
fn clamd_settings_keys_are_checked_and_warn_only_is_warned_about() {
    let warnings = load("[clamd]\nrequire_alert_settings = false\n", &[]).unwrap().warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("clamd.require_alert_settings: false: "), "{warnings:?}");
    let config = load("", &[("CLAMGATE_CLAMD_REQUIRE_ALERT_SETTINGS", "false")]).unwrap();
    assert!(!config.clamd.require_alert_settings);
    assert_eq!(
        errors("[clamd]\nsettings_check_interval_ms = 0\nabandoned_scan_max_hold_ms = 0\n", &[]),
        [
            "clamd.settings_check_interval_ms: must be between 1 and 3600000, found 0",
            "clamd.abandoned_scan_max_hold_ms: must be between 1 and 3600000, found 0",
        ]
    );
}

#[test]
fn cache_modes_and_named_policies_are_warned_about() {
    let immutable = "true: responses without a validator (ETag or Last-Modified) get resource keys, so an \
                     object changed under the same URL keeps its old verdict until cache.ttl_secs; only for \
                     upstreams that never change an object under a URL (package mirrors)";
    let resource = "\"resource\" on the default policy: every route that names no policy looks verdicts up \
                    by URL as well as by content; set it per route, in a named policy, for upstreams whose \
                    URLs name objects that do not change";
    assert_eq!(
        load("[policy]\ncache_mode = \"resource\"\nimmutable = true\n", &[]).unwrap().warnings(),
        [format!("policy.cache_mode: {resource}"), format!("policy.immutable: {immutable}")]
    );
    assert_eq!(
        load("[policy]\nimmutable = true\n", &[]).unwrap().warnings(),
        ["policy.immutable: true has no effect while cache_mode is \"content\": only resource keys use it"]
    );
    // A named policy is warned about where it differs from `[policy]`, not for what it inherits.
    let text = "[policy]\nreport_only = true\nimmutable = true\n\
                [policies.mirror]\ncache_mode = \"resource\"\n\
                [policies.lax]\nscan_requests = false\nscan_responses = false\n[policies.lax.on_unscanned]\ntimeout = \"allow\"\n\
                [policies.quiet]\nreport_only = false\nimmutable = false\n";
    assert_eq!(
        load(text, &[]).unwrap().warnings(),
        [
            "policy.report_only: true: infected bodies are logged and counted but delivered".to_string(),
            "policy.immutable: true has no effect while cache_mode is \"content\": only resource keys use it"
                .to_string(),
            "policies.lax: scan_requests and scan_responses are both false: nothing is scanned".to_string(),
            "policies.lax.on_unscanned.timeout: allow delivers bodies that were not scanned (fails open)"
                .to_string(),
            format!("policies.mirror.immutable: {immutable}"),
        ]
    );
    // The sample's mirror policy sets only what needs no warning.
    assert!(load(SAMPLE, &[]).unwrap().warnings().is_empty());
    assert_eq!(
        load("[cache]\nredis_cluster_urls = [\"rediss://:pw@r1:7000/#insecure\"]\n", &[]).unwrap().warnings(),
        [
            "cache.redis_cluster_urls[0]: \"#insecure\" turns off the check of Redis's TLS certificate: anyone on the network path can pose as Redis and serve forged verdicts".to_string(),
            NO_HMAC_KEY_WARNING.replace("HOST", "r1"),
        ]
    );
}

// --- The sample file and the docs ------------------------------------------------------------

/// The sample with every commented-out assignment (`# key = value`) made live.
fn sample_uncommented() -> String {
    SAMPLE
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(key, _)| {
                    !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                }) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_sample_config_loads_as_the_defaults_and_the_mirror_policy() {
    // The shipped Envoy config routes /mirror/ with the policy `mirror`.
    let mirror = PolicyConfig { cache_mode: CacheMode::Resource, ..PolicyConfig::default() };
    let expected = Config { policies: BTreeMap::from([("mirror".to_string(), mirror)]), ..Config::default() };
    assert_eq!(load(SAMPLE, &[]).unwrap(), expected);
}

#[test]
fn a_decode_ratio_of_zero_turns_the_check_off() {
    let scan = |max_decode_ratio| ScanConfig { max_decode_ratio, ..ScanConfig::default() };
    assert_eq!(ScanConfig::default().decode_ratio_limit(), 10_000);
    assert_eq!(scan(0).decode_ratio_limit(), u64::MAX);
    assert_eq!(load("[scan]\nmax_decode_ratio = 0\n", &[]).unwrap().scan.decode_ratio_limit(), u64::MAX);
    let env = [("CLAMGATE_SCAN_MAX_DECODE_RATIO", "2000")];
    assert_eq!(load("", &env).unwrap().scan, scan(2000));
}

#[test]
fn the_skipped_encoding_bytes_are_bounded_and_overridable() {
    assert_eq!(ScanConfig::default().max_skipped_encoding_bytes, 65_536);
    let env = [("CLAMGATE_SCAN_MAX_SKIPPED_ENCODING_BYTES", "0")];
    assert_eq!(load("", &env).unwrap().scan.max_skipped_encoding_bytes, 0);
    let err = load("[scan]\nmax_skipped_encoding_bytes = 4294967296\n", &[]).unwrap_err().to_string();
    assert!(err.contains("scan.max_skipped_encoding_bytes: must be at most 4294967295"), "{err}");
}

#[test]
fn the_sample_config_lists_every_key() {
    let text = sample_uncommented();
    let table = toml::from_str::<Table>(&text).unwrap();
    // And a named policy, to show the form.
    for (path, _) in NAMED_TABLES {
        let named = table.get(*path).and_then(Value::as_table);
        assert!(named.is_some_and(|named| !named.is_empty()), "clamgate.toml has no [{path}.NAME]");
    }
    for path in SCHEMA.keys.keys() {
        let mut value = Some(&table);
        let (parents, name) = path.rsplit_once('.').unwrap();
        for segment in parents.split('.') {
            value = value.and_then(|t| t.get(segment)).and_then(Value::as_table);
        }
        assert!(value.and_then(|t| t.get(name)).is_some(), "clamgate.toml does not list {path}");
    }
    // And the commented-out examples are valid, given a CA file that exists here.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let hmac_key = dir.path().join("hmac.key");
    std::fs::write(&hmac_key, "k".repeat(32)).unwrap();
    // And a token and a TLS certificate and key for the gRPC listener.
    let token = dir.path().join("grpc-token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    let (cert, key) = grpc_tls_files(dir.path());
    let env = [
        ("CLAMGATE_CACHE_REDIS_TLS_CA_FILE", ca.to_str().unwrap()),
        ("CLAMGATE_CACHE_HMAC_KEY_FILE", hmac_key.to_str().unwrap()),
        ("CLAMGATE_CACHE_HMAC_PREVIOUS_KEY_FILE", hmac_key.to_str().unwrap()),
        ("CLAMGATE_LISTEN_GRPC_TOKEN_FILE", token.to_str().unwrap()),
        ("CLAMGATE_LISTEN_GRPC_TLS_CERT_FILE", cert.as_str()),
        ("CLAMGATE_LISTEN_GRPC_TLS_KEY_FILE", key.as_str()),
        // A self-signed certificate is its own CA.
        ("CLAMGATE_LISTEN_GRPC_TLS_CLIENT_CA_FILE", cert.as_str()),
        ("CLAMGATE_LISTEN_HTTP_TOKEN_FILE", token.to_str().unwrap()),
        ("CLAMGATE_LISTEN_HTTP_SCAN_TOKEN_FILE", token.to_str().unwrap()),
        ("CLAMGATE_FETCH_TLS_CA_FILE", ca.to_str().unwrap()),
    ];
    // A block page and a redirect exclude each other: each example is checked without the other.
    let without =
        |key: &str| text.lines().filter(|line| !line.starts_with(key)).collect::<Vec<_>>().join("\n");
    if let Err(err) = load(&without("html_template_file"), &env) {
        panic!("the uncommented clamgate.toml is invalid:\n{err}");
    }
    let page = dir.path().join("blocked.html");
    std::fs::write(&page, "<p>{{verdict}}</p>").unwrap();
    let mut env = env.to_vec();
    env.push(("CLAMGATE_POLICY_BLOCK_HTML_TEMPLATE_FILE", page.to_str().unwrap()));
    if let Err(err) = load(&without("redirect_url"), &env) {
        panic!("the uncommented clamgate.toml is invalid:\n{err}");
    }
}

/// A self-signed certificate for `localhost` and its key, as PEM files in `dir`.
fn grpc_tls_files(dir: &Path) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("grpc.pem"), dir.join("grpc.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path.to_string_lossy().into_owned(), key_path.to_string_lossy().into_owned())
}

#[test]
fn grpc_token_and_tls_files_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = grpc_tls_files(dir.path());
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
    let listen = |extra: &str| format!("[listen]\n{extra}");
    let ok = load(
        &listen(&format!(
            "grpc_token_file = {token:?}\ngrpc_tls_cert_file = {cert:?}\ngrpc_tls_key_file = {key:?}\n\
             grpc_tls_client_ca_file = {cert:?}\n"
        )),
        &[],
    )
    .unwrap();
    assert_eq!(ok.listen.grpc_token_file.as_deref(), token.to_str());
    assert_eq!(ok.listen.grpc_auth_description(), "token+mtls");

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let missing = dir.path().join("missing");
    assert_eq!(
        error(&listen(&format!("grpc_token_file = {empty:?}\n")), &[]),
        format!("listen.grpc_token_file: {empty:?}: holds no token (the file is empty)")
    );
    assert_eq!(
        error(&listen(""), &[("CLAMGATE_LISTEN_GRPC_TOKEN_FILE", missing.to_str().unwrap())]),
        format!(
            "listen.grpc_token_file: cannot read {missing:?}: No such file or directory (os error 2) \
             (set by CLAMGATE_LISTEN_GRPC_TOKEN_FILE)"
        )
    );
    assert_eq!(
        error(&listen(&format!("grpc_tls_cert_file = {cert:?}\n")), &[]),
        "listen.grpc_tls_key_file: must be set with listen.grpc_tls_cert_file (the certificate's private key)"
    );
    assert!(error(&listen(&format!("grpc_tls_client_ca_file = {cert:?}\n")), &[])
        .starts_with("listen.grpc_tls_client_ca_file: needs listen.grpc_tls_cert_file"));
    // A key that is not the certificate's, or not a key at all: refused at load, not at bind.
    let bad = error(&listen(&format!("grpc_tls_cert_file = {cert:?}\ngrpc_tls_key_file = {cert:?}\n")), &[]);
    assert!(bad.starts_with("listen.grpc_tls_cert_file: "), "{bad}");
    // Every problem at once.
    let both = load(&listen(&format!("grpc_token_file = {empty:?}\ngrpc_tls_key_file = {key:?}\n")), &[])
        .unwrap_err();
    assert_eq!(both.0.len(), 2, "{both}");
}

#[test]
fn an_open_grpc_listener_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123").unwrap();
    let (cert, key) = grpc_tls_files(dir.path());
    let warnings = |text: &str| load(text, &[]).unwrap().warnings();
    let open = warnings("[listen]\ngrpc_addr = \"0.0.0.0:50051\"\n");
    assert!(
        open.iter().any(|w| w.starts_with(
            "listen.grpc_addr: 0.0.0.0:50051 is not a loopback address \
         and the gRPC listener has no authentication"
        )),
        "{open:?}"
    );
    let clear = warnings(&format!("[listen]\ngrpc_addr = \"10.0.0.5:50051\"\ngrpc_token_file = {token:?}\n"));
    assert_eq!(clear.len(), 1, "{clear:?}");
    assert!(clear[0].starts_with("listen.grpc_token_file: the gRPC listener 10.0.0.5:50051"), "{clear:?}");
    let safe = warnings(&format!(
        "[listen]\ngrpc_addr = \"0.0.0.0:50051\"\ngrpc_token_file = {token:?}\n\
         grpc_tls_cert_file = {cert:?}\ngrpc_tls_key_file = {key:?}\n"
    ));
    assert!(safe.is_empty(), "{safe:?}");
    let mtls_only = warnings(&format!(
        "[listen]\ngrpc_addr = \"0.0.0.0:50051\"\ngrpc_tls_cert_file = {cert:?}\n\
         grpc_tls_key_file = {key:?}\ngrpc_tls_client_ca_file = {cert:?}\n"
    ));
    assert!(mtls_only.is_empty(), "{mtls_only:?}");
    assert!(warnings("[listen]\ngrpc_addr = \"127.0.0.1:50051\"\n").is_empty());
    assert!(warnings("[listen]\ngrpc_addr = \"[::1]:50051\"\n").is_empty());
}

#[test]
fn the_docs_list_every_key_and_variable() {
    for path in SCHEMA.keys.keys() {
        assert!(DOCS.contains(&format!("`{path}`")), "docs/configuration.md does not list {path}");
        let env = env_name(path);
        assert!(DOCS.contains(&format!("`{env}`")), "docs/configuration.md does not list {env}");
    }
    for (path, template) in NAMED_TABLES {
        for needed in [
            format!("`{path}.NAME.*`"),
            format!("`{}_<NAME>_<KEY>`", env_name(path)),
            format!("[{path}.NAME]"),
            format!("`[{template}]`"),
        ] {
            assert!(DOCS.contains(&needed), "docs/configuration.md does not mention {needed}");
        }
    }
    for needed in
        ["## Named policies", "xds.route_metadata", "x-clamgate-policy", "grpc_initial_metadata", "503"]
    {
        assert!(DOCS.contains(needed), "docs/configuration.md does not mention {needed}");
    }
    for mode in CacheMode::NAMES {
        assert!(
            DOCS.contains(&format!("- `{mode}`")),
            "docs/configuration.md does not explain cache_mode {mode}"
        );
    }
}

#[test]
fn the_docs_example_is_what_clamgate_reports() {
    let text = "[clamd]\nconnect_timeout_ms = \"1s\"\nmax_concurrent_scans = 0\n\n[cache]\nredis_ur = \"redis://redis:6379\"\n";
    assert!(DOCS.contains(text), "the example file changed in docs/configuration.md");
    let env = [("CLAMGATE_CLAMD_ADRESS", "tcp://clamd:3310"), ("CLAMGATE_CACHE_TTL_SECS", "1d")];
    let report = load(text, &env).unwrap_err().to_string();
    assert!(DOCS.contains(&format!("clamgate: invalid configuration:\n{report}\n```")), "{report}");
}

#[test]
fn the_docs_named_policy_example_and_messages_are_what_clamgate_does() {
    let text = "[policy]\nreport_only = true\n\n[policies.mirror]\ncache_mode = \"resource\"\n\n\
                [policies.mirror.on_unscanned]\ntoo_large = \"allow\"\n";
    assert!(DOCS.contains(&format!("```toml\n{text}```")), "the named policy example changed");
    let mirror = load(text, &[]).unwrap().policies.remove("mirror").unwrap();
    let expected = PolicyConfig {
        report_only: true,
        cache_mode: CacheMode::Resource,
        on_unscanned: UnscannedActions { too_large: UnscannedAction::Allow, ..UnscannedActions::default() },
        ..PolicyConfig::default()
    };
    assert_eq!(mirror, expected);
    for (text, row) in [
        ("[cache]\nredis_cluster_urls = \"redis://r1:7000\"\n", "not a list"),
        ("[cache]\nredis_cluster_urls = [\"redis://r1:7000\", 7000]\n", "bad list element"),
        ("[policies.mirror]\ncache_mod = \"off\"\n", "unknown key in a named policy"),
        ("[policies.Mirror]\n", "bad policy name"),
        ("[policies.default]\n", "reserved policy name"),
    ] {
        let row = format!("| {row} | `{}` |", error(text, &[]));
        assert!(DOCS.contains(&row), "docs/configuration.md lacks the row {row}");
    }
}

// --- The schema cannot drift from the structs ------------------------------------------------

/// The names serde lists after "expected" in an unknown field or variant error.
fn serde_expected_names(message: &str) -> BTreeSet<String> {
    let (_, list) =
        message.split_once("expected").unwrap_or_else(|| panic!("unexpected message {message:?}"));
    list.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

fn defaults_with(path: &str, value: Value) -> Result<Config, toml::de::Error> {
    let mut table = Table::try_from(Config::default()).unwrap();
    insert_path(&mut table, path, value);
    Value::Table(table).try_into::<Config>()
}

/// `policy.x` as the same key of a named policy, `policies.zz.x`; `None` outside a template.
fn in_named_table(path: &str) -> Option<String> {
    NAMED_TABLES.iter().find_map(|(named, template)| {
        let rest = path.strip_prefix(template)?;
        (rest.is_empty() || rest.starts_with('.')).then(|| format!("{named}.zz{rest}"))
    })
}

#[test]
fn every_table_has_exactly_the_fields_of_its_struct() {
    for table in std::iter::once("").chain(SCHEMA.tables.iter().map(String::as_str)) {
        let children: BTreeSet<String> = SCHEMA.children(table).map(str::to_string).collect();
        // A table of a named policy has the fields of the same table of `[policy]`.
        for at in std::iter::once(table.to_string()).chain(in_named_table(table)) {
            let err = defaults_with(&join(&at, "zz_not_a_key"), Value::Integer(1)).unwrap_err();
            assert_eq!(
                children,
                serde_expected_names(err.message()),
                "the schema of [{at}] differs from its struct; an Option key missing from OPTIONAL_KEYS?"
            );
        }
    }
    // Every map of the config is a table of named tables.
    let defaults = Table::try_from(Config::default()).unwrap();
    let maps: BTreeSet<&str> = defaults
        .iter()
        .filter(|(_, value)| value.as_table().is_some_and(Table::is_empty))
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        maps,
        NAMED_TABLES.iter().map(|(path, _)| *path).collect(),
        "a map missing from NAMED_TABLES?"
    );
}

#[test]
fn every_key_kind_matches_serde() {
    let named = SCHEMA.keys.iter().filter_map(|(path, key)| Some((in_named_table(path)?, key)));
    let keys: Vec<(String, &Key)> =
        SCHEMA.keys.iter().map(|(path, key)| (path.clone(), key)).chain(named).collect();
    for (path, key) in &keys {
        let accepts = |value: Value| defaults_with(path, value).is_ok();
        match key.kind {
            // A plain string key takes any string; one that does not needs a narrower kind.
            Kind::Str => {
                assert!(accepts(Value::String("any text".into())), "{path} needs a narrower Kind")
            }
            Kind::Int => {
                assert!(accepts(Value::Integer(7)), "{path}");
                assert!(!accepts(Value::Integer(-1)), "{path} is signed; Kind::Int assumes unsigned");
            }
            Kind::Bool => assert!(accepts(Value::Boolean(true)), "{path}"),
            Kind::SocketAddr => {
                assert!(accepts(Value::String("[::1]:1".into())), "{path}");
                assert!(!accepts(Value::String("x".into())), "{path} is not a socket address");
            }
            Kind::RedisUrl => {
                assert!(accepts(Value::String("redis://127.0.0.1:6379".into())), "{path}");
                assert!(!accepts(Value::String("http://x".into())), "{path} is not a Redis URL");
            }
            Kind::Origins => {
                assert!(accepts(Value::Array(vec!["h = http://o.internal".into()])), "{path}");
                assert!(!accepts(Value::Array(vec!["x".into()])), "{path} is not a list of origins");
            }
            Kind::RedisClusterSeeds => {
                assert!(accepts(Value::Array(vec!["redis://r1:7000".into()])), "{path}");
                assert!(!accepts(Value::Array(vec!["x".into()])), "{path} is not a list of Redis URLs");
                assert!(!accepts(Value::String("redis://r1:7000".into())), "{path} is not a list");
            }
            Kind::ClamdAddress => {
                assert!(accepts(Value::String("unix:///run/clamd.ctl".into())), "{path}");
                assert!(!accepts(Value::String("tcp://x".into())), "{path} is not a clamd address");
            }
            Kind::Enum(names) => {
                for name in names {
                    assert!(accepts(Value::String(name.to_string())), "{path} = {name}");
                }
                let err = defaults_with(path, Value::String("zz".into())).unwrap_err();
                let expected: BTreeSet<String> = names.iter().map(|name| name.to_string()).collect();
                assert_eq!(serde_expected_names(err.message()), expected, "{path}");
            }
            Kind::StrList => {
                assert!(accepts(Value::Array(vec!["a".into(), "b".into()])), "{path}");
                assert!(!accepts(Value::Array(vec![Value::Integer(1)])), "{path} is not a list of strings");
                assert!(!accepts(Value::String("a".into())), "{path} is not a list");
            }
        }
    }
    for (path, _) in OPTIONAL_KEYS {
        assert!(SCHEMA.keys[*path].optional);
    }
}

#[test]
fn env_names_are_unique_and_not_reserved() {
    assert_eq!(SCHEMA.env.len(), SCHEMA.keys.len());
    assert!(!SCHEMA.env.contains_key(CONFIG_PATH_ENV));
    assert_eq!(SCHEMA.env["CLAMGATE_POLICY_ON_UNSCANNED_TOO_LARGE"], "policy.on_unscanned.too_large");
    // No key's variable looks like one of a named policy's.
    for (path, _) in NAMED_TABLES {
        let prefix = format!("{}_", env_name(path));
        assert!(SCHEMA.env.keys().all(|var| !var.starts_with(&prefix)), "{prefix}");
    }
}

#[test]
fn every_unscanned_reason_has_a_policy_key() {
    for reason in UnscannedReason::ALL {
        if reason == UnscannedReason::NotCached {
            // Its action is the policy's `on_miss` (see `PolicyConfig::unscanned_action`).
            assert!(SCHEMA.keys.contains_key("policy.on_miss"));
            continue;
        }
        let key = format!("policy.on_unscanned.{reason}");
        assert!(SCHEMA.keys.contains_key(&key), "{key}");
        // `UnscannedActions::action` reads the field of that name and no other.
        let actions = defaults_with(&key, Value::String("allow".into())).unwrap().policy.on_unscanned;
        for other in UnscannedReason::ALL {
            assert_eq!(
                actions.action(other) == UnscannedAction::Allow,
                other == reason,
                "{key} read as {other}"
            );
        }
    }
    for (action, name) in UnscannedAction::ALL.into_iter().zip(UnscannedAction::NAMES) {
        assert_eq!(toml::Value::try_from(action).unwrap().as_str(), Some(name));
    }
    for (format, name) in LogFormat::ALL.into_iter().zip(LogFormat::NAMES) {
        assert_eq!(toml::Value::try_from(format).unwrap().as_str(), Some(name));
    }
    for (mode, name) in CacheMode::ALL.into_iter().zip(CacheMode::NAMES) {
        assert_eq!(toml::Value::try_from(mode).unwrap().as_str(), Some(name));
    }
}

#[test]
fn edit_distance_counts_characters() {
    assert_eq!(edit_distance("redis_ur", "redis_url"), 1);
    assert_eq!(edit_distance("adress", "address"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(closest("xyz", ["listen", "clamd"].into_iter()), None);
}

// --- nginx: the HTTP listener, fetch, on_miss ----------------------------------------------

#[test]
fn fetch_needs_origins_and_origins_are_parsed_at_load() {
    assert_eq!(
        error("[policies.mirror]\non_miss = \"fetch\"\n", &[]),
        "policies.mirror.on_miss: \"fetch\" needs fetch.origins: clamgate downloads only from origins its config names"
    );
    let config = load(
        "[fetch]\norigins = [\"a.example = http://10.0.0.5:8080/base\", \"b.example:8443 = https://o\"]\n\
         [policies.mirror]\non_miss = \"fetch\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(config.fetch.origins.len(), 2);
    assert_eq!(config.fetch.origins[1].host_pattern(), "b.example:8443");
    assert_eq!(
        error("[fetch]\norigins = [\"a = http://x\", \"nope\"]\n", &[]),
        "fetch.origins[1]: expected \"HOST = URL\", as in \"downloads.example.com = http://10.0.0.5:8080\", found \"nope\""
    );
    assert_eq!(
        error("[fetch]\norigins = [\"a = http://x\", \"A = http://y\"]\n", &[]),
        "fetch.origins[1]: a is named twice: one origin per host"
    );
    let from_env = load("", &[("CLAMGATE_FETCH_ORIGINS", "a = http://x, b = http://y")]).unwrap();
    assert_eq!(from_env.fetch.origins.len(), 2);
}

#[test]
fn the_http_listener_is_off_by_default_and_checked_when_on() {
    assert_eq!(Config::default().listen.http_addr, None);
    assert_eq!(
        error("[listen]\nhttp_addr = \"127.0.0.1:9090\"\n", &[]),
        "listen.http_addr: conflicts with listen.admin_addr (127.0.0.1:9090): both bind port 9090"
    );
    let open = load("[listen]\nhttp_addr = \"0.0.0.0:8181\"\n", &[]).unwrap();
    assert!(open
        .warnings()
        .iter()
        .any(|w| w.starts_with("listen.http_addr: 0.0.0.0:8181 is not a loopback")));
    let allow = load("[policy]\non_miss = \"allow\"\n", &[]).unwrap();
    assert!(
        allow.warnings().iter().any(|w| w.starts_with("policy.on_miss: allow")),
        "{:?}",
        allow.warnings()
    );
    assert!(error("[listen]\nhttp_token_file = \"/nonexistent/token\"\n", &[])
        .starts_with("listen.http_token_file: cannot read"));
}

#[test]
fn the_scan_api_token_is_read_at_load_and_an_open_scan_api_is_warned_about() {
    assert_eq!(Config::default().listen.http_scan_token_file, None);
    assert!(error("[listen]\nhttp_scan_token_file = \"/nonexistent/token\"\n", &[])
        .starts_with("listen.http_scan_token_file: cannot read"));
    assert!(error("", &[("CLAMGATE_LISTEN_HTTP_SCAN_TOKEN_FILE", "/nonexistent/token")])
        .starts_with("listen.http_scan_token_file: cannot read"));
    let open = load("[listen]\nhttp_addr = \"0.0.0.0:8181\"\n", &[]).unwrap();
    assert!(open.warnings().iter().any(|w| w.contains("POST /v1/scan")), "{:?}", open.warnings());
    let dir = std::env::temp_dir().join(format!("clamgate-scan-token-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "scan-token-0123456789abcdef\n").unwrap();
    let guarded = load(
        &format!("[listen]\nhttp_addr = \"0.0.0.0:8181\"\nhttp_scan_token_file = \"{}\"\n", token.display()),
        &[],
    )
    .unwrap();
    assert!(!guarded.warnings().iter().any(|w| w.contains("POST /v1/scan")), "{:?}", guarded.warnings());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn multipart_limits_have_defaults_and_ranges() {
    let scan = Config::default().scan;
    assert_eq!((scan.multipart_max_parts, scan.multipart_max_depth), (1000, 2));
    let set = load("[scan]\nmultipart_max_parts = 5\nmultipart_max_depth = 1\n", &[]).unwrap();
    assert_eq!((set.scan.multipart_max_parts, set.scan.multipart_max_depth), (5, 1));
    let err =
        load("[scan]\nmultipart_max_parts = 0\nmultipart_max_depth = 9\n", &[]).unwrap_err().to_string();
    assert!(err.contains("scan.multipart_max_parts: must be between 1 and 100000, found 0"), "{err}");
    assert!(err.contains("scan.multipart_max_depth: must be between 1 and 8, found 9"), "{err}");
    let env = load("", &[("CLAMGATE_SCAN_MULTIPART_MAX_PARTS", "7")]).unwrap();
    assert_eq!(env.scan.multipart_max_parts, 7);
}

#[test]
fn skip_rules_name_only_types_with_a_signature_and_sound_bounds_all_errors_at_once() {
    let text = r#"
[policy.skip]
content_types = ["image/png", "text/html", "application/octet-stream"]
directions = ["response", "sideways"]
min_bytes = 100
max_bytes = 10
path_prefixes = ["/media/", "media", "/a/../b"]

[policies.media.skip]
content_types = ["image/svg+xml"]
"#;
    let errors = errors(text, &[]);
    let expected = [
        "policy.skip.content_types[1]: \"text/html\" has no signature",
        "policy.skip.content_types[2]: \"application/octet-stream\" has no signature",
        "policy.skip.directions[1]: \"sideways\" is not a direction",
        "policy.skip.max_bytes: 10 is below min_bytes (100)",
        "policy.skip.path_prefixes[1]: \"media\" must start with \"/\"",
        "policy.skip.path_prefixes[2]: \"/a/../b\" must start with \"/\"",
        "policies.media.skip.content_types[0]: \"image/svg+xml\" has no signature",
    ];
    for line in expected {
        assert!(errors.iter().any(|error| error.starts_with(line)), "{line}\nin {errors:#?}");
    }
    // Set from the environment, the list is comma-separated.
    let config = load("", &[("CLAMGATE_POLICY_SKIP_CONTENT_TYPES", "video/mp4,image/PNG")]).unwrap();
    assert_eq!(config.policy.skip.content_types, ["video/mp4", "image/PNG"]);
    assert_eq!(config.policy.skip.directions, ["response"]);
}

#[test]
fn block_settings_are_checked_with_their_template_read_and_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.html");
    std::fs::write(&bad, "<p>{{body}}</p>").unwrap();
    let text = format!(
        r#"
[policy.block]
status = 299

[policies.a.block]
status = 409
json = false

[policies.b.block]
status = 409
redirect_url = "javascript:alert(1)"

[policies.c.block]
status = 499
html_template_file = "{}"
redirect_url = "/blocked"

[policies.d.block]
status = 409
html_template_file = "{}"
"#,
        dir.path().join("missing.html").display(),
        bad.display(),
    );
    let errors = errors(&text, &[]);
    let expected = [
        "policy.block.status: 299 is not an HTTP error status",
        "policies.d.block.html_template_file: ",
        "policies.a.block.json: false needs html_template_file or redirect_url",
        "policies.b.block.redirect_url: \"javascript:alert(1)\" is neither",
        "policies.c.block.status: 499 is not an HTTP error status",
        "policies.c.block.redirect_url: cannot be set with html_template_file",
    ];
    for line in expected {
        assert!(errors.iter().any(|error| error.starts_with(line)), "{line}\nin {errors:#?}");
    }
    assert!(errors.iter().any(|error| error.contains("unknown placeholder {{body}}")), "{errors:#?}");
    let good = dir.path().join("good.html");
    std::fs::write(&good, "<p>{{verdict}}</p>").unwrap();
    let config =
        load(&format!("[policy.block]\nstatus = 403\nhtml_template_file = \"{}\"\n", good.display()), &[])
            .unwrap();
    assert_eq!(config.policy.block.status, 403);
    // A named policy inherits the page.
    let config = load(
        &format!(
            "[policy.block]\nhtml_template_file = \"{}\"\n[policies.a]\nscan_requests = false\n",
            good.display()
        ),
        &[],
    )
    .unwrap();
    assert_eq!(config.policies["a"].block.html_template_file, config.policy.block.html_template_file);
}
