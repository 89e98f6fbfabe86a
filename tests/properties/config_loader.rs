//! The config loader: any TOML text and any `CLAMGATE_*` variables load or fail with errors,
//! never a panic, and every error names where it is (a key, a variable or the file).

use clamgate::config::Config;
use proptest::prelude::*;

/// Keys of every section with values of every TOML kind, so most cases pass the syntax check
/// and reach the type and range checks.
fn line() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "listen.grpc_addr",
        "listen.http_addr",
        "clamd.address",
        "clamd.max_concurrent_scans",
        "scan.max_scan_bytes",
        "scan.timeout_ms",
        "cache.redis_url",
        "cache.redis_cluster_urls",
        "cache.ttl_secs",
        "bodies.memory_budget_bytes",
        "policy.cache_mode",
        "policy.skip.content_types",
        "policy.skip.max_bytes",
        "policy.block.status",
        "policy.block.redirect_url",
        "policies.a.report_only",
        "policies.Bad.cache_mode",
        "policies.default.x",
        "policy.on_unscanned.timeout",
        "fetch.origins",
        "log.level",
        "nosuch.key",
        "response.retry_after_secs",
    ]);
    let values = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-z0-9:/._ =-]{0,20}".prop_map(|s| format!("{s:?}")),
        prop::collection::vec("[a-z0-9:/.=-]{0,12}", 0..3).prop_map(|v| format!("{v:?}")),
        Just("{ a = 1 }".to_string()),
        Just("1.5".to_string()),
    ];
    (keys, values).prop_map(|(key, value)| format!("{key} = {value}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_file_and_environment_load_or_fail_naming_a_key(
        lines in prop::collection::vec(line(), 0..8),
        garbage in prop::option::of("[\\[\\]=\"a-z \n]{0,30}"),
        env in prop::collection::vec(("CLAMGATE_[A-Z_]{1,30}", "[a-z0-9,:/.]{0,16}"), 0..4),
    ) {
        let mut text = lines.join("\n");
        if let Some(garbage) = garbage {
            text.push('\n');
            text.push_str(&garbage);
        }
        let result = Config::load_text(&text, "config", env.clone());
        if let Err(errors) = result {
            prop_assert!(!errors.0.is_empty());
            for error in &errors.0 {
                prop_assert!(!error.key.is_empty(), "an error without a place: {error:?}");
                prop_assert!(!error.message.is_empty(), "an error without a message: {error:?}");
            }
        }
    }
}
