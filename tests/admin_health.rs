//! gRPC health and the admin listener follow clamd: SERVING and ready only while a clamd answers
//! and detects the self-test sample.

mod support;

use std::time::{Duration, Instant};

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use support::clamd::{ClamdOptions, ClamdProcess};
use support::clamgate::{test_config, ClamgateInstance};

async fn grpc_status(instance: &ClamgateInstance, service: &str) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(instance.grpc_url())
        .expect("URL")
        .connect()
        .await
        .expect("connect");
    let mut client = HealthClient::new(channel);
    let request = HealthCheckRequest { service: service.to_string() };
    client.check(request).await.expect("Health/Check").into_inner().status()
}

async fn wait_grpc_status(instance: &ClamgateInstance, service: &str, wanted: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = grpc_status(instance, service).await;
        if status == wanted {
            return;
        }
        assert!(Instant::now() < deadline, "{service}: still {status:?}, wanted {wanted:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const EXT_PROC: &str = "envoy.service.ext_proc.v3.ExternalProcessor";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_clamd_down_and_back() {
    let mut clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("clamd");
    let instance = ClamgateInstance::start_ready(test_config(&clamd.address())).await;
    for service in [EXT_PROC, "clamgate.v1.Scanner", ""] {
        assert_eq!(grpc_status(&instance, service).await, ServingStatus::Serving, "{service}");
    }
    assert_eq!(instance.admin_status("/healthz").await, Some(200));

    clamd = tokio::task::spawn_blocking(move || {
        clamd.stop();
        clamd
    })
    .await
    .expect("stop clamd");
    wait_grpc_status(&instance, EXT_PROC, ServingStatus::NotServing).await;
    instance.wait_readyz(503, Duration::from_secs(20)).await;
    // Alive, just not ready.
    assert_eq!(instance.admin_status("/healthz").await, Some(200));
    assert_eq!(instance.metric("clamgate_clamd_up").await, 0.0);

    let _clamd = tokio::task::spawn_blocking(move || {
        clamd.start_again();
        clamd
    })
    .await
    .expect("restart clamd");
    wait_grpc_status(&instance, EXT_PROC, ServingStatus::Serving).await;
    instance.wait_ready(Duration::from_secs(20)).await;
    assert_eq!(instance.metric("clamgate_clamd_up").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clamd_that_detects_nothing_is_not_ready() {
    // A clamd that answers PING but has no EICAR signature cannot protect anyone.
    let clamd = tokio::task::spawn_blocking(|| {
        let clamd = ClamdProcess::start();
        std::fs::remove_file(clamd.db_dir().join("test.ndb")).expect("remove test.ndb");
        clamd.reload();
        clamd
    })
    .await
    .expect("clamd");
    // RELOAD is asynchronous: wait until clamd itself has dropped the EICAR signature.
    let client = clamgate::clamd::ClamdClient::new(
        clamd.address().parse().expect("address"),
        clamgate::clamd::ClamdTimeouts {
            connect: Duration::from_secs(2),
            write: Duration::from_secs(2),
            reply: Duration::from_secs(5),
        },
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while matches!(
        client.scan_bytes(&support::samples::eicar()).await.map(|reply| reply.into_verdict()),
        Ok(clamgate::verdict::Verdict::Infected { .. })
    ) {
        assert!(Instant::now() < deadline, "clamd kept detecting EICAR after the reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let instance = ClamgateInstance::start(test_config(&clamd.address())).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while instance.metric(r#"clamgate_clamd_probes_total{result="failed"}"#).await < 3.0 {
        assert!(Instant::now() < deadline, "the probe did not run three times");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(instance.metric(r#"clamgate_clamd_probes_total{result="usable"}"#).await, 0.0);
    assert_eq!(instance.admin_status("/readyz").await, Some(503));
    assert_eq!(grpc_status(&instance, EXT_PROC).await, ServingStatus::NotServing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_verdicts_and_clamd_versions() {
    let clamd = tokio::task::spawn_blocking(|| ClamdProcess::start_with_daily(27001)).await.expect("clamd");
    let instance = ClamgateInstance::start_ready(test_config(&clamd.address())).await;
    let text = instance.metrics().await;
    assert!(text.contains("# TYPE clamgate_clamd_scan_duration_seconds histogram"), "{text}");
    assert_eq!(support::clamgate::metric_value(&text, "clamgate_clamd_database_version"), 27001.0, "{text}");
    // The runtime's tasks are counted when /metrics is read (this request's own among them), and
    // the heap check ran at start (glibc: the heap in use is known).
    assert!(support::clamgate::metric_value(&text, "clamgate_runtime_tasks_alive") >= 1.0, "{text}");
    assert!(support::clamgate::metric_value(&text, "clamgate_heap_in_use_bytes") > 0.0, "{text}");
    assert_eq!(instance.admin_status("/nope").await, Some(404));
}

/// Starts clamd with `overrides` in its clamd.conf, then clamgate with `require_alert_settings`.
async fn start_with_clamd_settings(
    overrides: &[&str],
    require_alert_settings: bool,
) -> (ClamdProcess, ClamgateInstance) {
    let config_overrides = overrides.iter().map(|line| line.to_string()).collect();
    let options = ClamdOptions { config_overrides, ..ClamdOptions::default() };
    let clamd = tokio::task::spawn_blocking(move || ClamdProcess::start_with(options)).await.expect("clamd");
    let mut config = test_config(&clamd.address());
    config.clamd.require_alert_settings = require_alert_settings;
    (clamd, ClamgateInstance::start(config).await)
}

/// Waits until the settings self-test has judged `setting` `result` at least `times` times.
async fn wait_settings_checks(instance: &ClamgateInstance, setting: &str, result: &str, times: f64) {
    let sample = format!(r#"clamgate_clamd_settings_checks_total{{setting="{setting}",result="{result}"}}"#);
    let deadline = Instant::now() + Duration::from_secs(20);
    while instance.metric(&sample).await < times {
        assert!(Instant::now() < deadline, "{sample} did not reach {times}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn setting_enabled(instance: &ClamgateInstance, setting: &str) -> f64 {
    instance.metric(&format!(r#"clamgate_clamd_setting_enabled{{setting="{setting}"}}"#)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clamd_without_alert_encrypted_is_not_ready() {
    // It answers OK for a password-protected zip: such a body would be cached clean.
    let (_clamd, instance) = start_with_clamd_settings(&["AlertEncrypted no"], true).await;
    // Twice: the first check's result has been published to readiness by the second.
    wait_settings_checks(&instance, "AlertEncrypted", "missing", 2.0).await;
    assert!(
        instance.metric(r#"clamgate_clamd_probes_total{result="usable"}"#).await >= 2.0,
        "EICAR is detected"
    );
    assert_eq!(instance.admin_status("/readyz").await, Some(503));
    assert_eq!(grpc_status(&instance, EXT_PROC).await, ServingStatus::NotServing);
    assert_eq!(grpc_status(&instance, "").await, ServingStatus::NotServing);
    assert_eq!(setting_enabled(&instance, "AlertEncrypted").await, 0.0);
    assert_eq!(setting_enabled(&instance, "AlertExceedsMax").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clamd_without_alert_exceeds_max_is_not_ready() {
    // It answers OK for a zip nested past MaxRecursion, whatever is inside.
    let (_clamd, instance) = start_with_clamd_settings(&["AlertExceedsMax no"], true).await;
    wait_settings_checks(&instance, "AlertExceedsMax", "missing", 2.0).await;
    assert!(
        instance.metric(r#"clamgate_clamd_probes_total{result="usable"}"#).await >= 2.0,
        "EICAR is detected"
    );
    assert_eq!(instance.admin_status("/readyz").await, Some(503));
    assert_eq!(grpc_status(&instance, EXT_PROC).await, ServingStatus::NotServing);
    assert_eq!(setting_enabled(&instance, "AlertEncrypted").await, 1.0);
    assert_eq!(setting_enabled(&instance, "AlertExceedsMax").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clamd_with_both_alert_settings_is_ready_even_at_the_largest_max_recursion() {
    // MaxRecursion 100 is the most clamd accepts: the nested self-test body still exceeds it.
    let (_clamd, instance) = start_with_clamd_settings(&["MaxRecursion 100"], true).await;
    instance.wait_ready(Duration::from_secs(20)).await;
    assert_eq!(grpc_status(&instance, EXT_PROC).await, ServingStatus::Serving);
    for setting in ["AlertEncrypted", "AlertExceedsMax"] {
        assert_eq!(setting_enabled(&instance, setting).await, 1.0, "{setting}");
        let missing =
            format!(r#"clamgate_clamd_settings_checks_total{{setting="{setting}",result="missing"}}"#);
        assert_eq!(instance.metric(&missing).await, 0.0, "{setting}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_only_serves_without_the_alert_settings_and_counts_them() {
    let (_clamd, instance) =
        start_with_clamd_settings(&["AlertEncrypted no", "AlertExceedsMax no"], false).await;
    instance.wait_ready(Duration::from_secs(20)).await;
    assert_eq!(grpc_status(&instance, EXT_PROC).await, ServingStatus::Serving);
    wait_settings_checks(&instance, "AlertEncrypted", "missing", 1.0).await;
    wait_settings_checks(&instance, "AlertExceedsMax", "missing", 1.0).await;
    assert_eq!(setting_enabled(&instance, "AlertEncrypted").await, 0.0);
    assert_eq!(setting_enabled(&instance, "AlertExceedsMax").await, 0.0);
}
