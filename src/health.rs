//! The clamd probe: pings clamd, asks its version and scans a self-test sample on an interval,
//! and publishes the result to gRPC health, `/readyz` and metrics.
//!
//! "Ready" means a clamd answered *and* detected the EICAR test string: a clamd that answers
//! but has lost its signatures is not ready (peers bug #10). It also means clamd reports what it
//! could not scan: an encrypted archive and a body past its scan limits must not come back `OK`
//! (`AlertEncrypted yes`, `AlertExceedsMax yes` in clamd.conf; see [`SettingsCheck`]), unless
//! `clamd.require_alert_settings = false`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::clamd::{selftest, ClamdClient};
use crate::metrics::Metrics;
use crate::scanner::Scanner;
use crate::verdict::{UnscannedReason, Verdict};

/// The gRPC health service name Envoy checks (`grpc_health_check.service_name`).
pub const EXT_PROC_SERVICE_NAME: &str = "envoy.service.ext_proc.v3.ExternalProcessor";
/// The gRPC health service name of clamgate's own scan API.
pub const SCAN_API_SERVICE_NAME: &str = "clamgate.v1.Scanner";

/// Every gRPC health service name clamgate reports; `""` is the server as a whole.
const HEALTH_SERVICES: [&str; 3] = ["", EXT_PROC_SERVICE_NAME, SCAN_API_SERVICE_NAME];

/// Readiness shared with the admin listener.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// The EICAR anti-virus test string, assembled at run time so no file in the repository holds it.
pub fn eicar_test_string() -> Vec<u8> {
    let parts = ["X5O!P%@AP[4\\PZX54(P^)7CC)7}", "$EICAR-STANDARD-ANTIVIRUS", "-TEST-FILE!$H+H*"];
    parts.concat().into_bytes()
}

/// One probe: ping, version, self-test. Returns whether clamd is usable.
pub async fn probe_once(scanner: &Scanner, metrics: &Metrics) -> bool {
    let clamd: &ClamdClient = scanner.clamd();
    let version = match clamd.ping().await {
        Ok(()) => clamd.version().await,
        Err(err) => Err(err),
    };
    let version = match version {
        Ok(version) => version,
        Err(err) => {
            tracing::debug!(error = %err, "clamd did not answer PING or VERSION");
            metrics.record_probe(false, None);
            return false;
        }
    };
    let database_version = version.database_version;
    scanner.set_engine_version(version);
    let detects = match clamd.scan_bytes(&eicar_test_string()).await.map(|reply| reply.into_verdict()) {
        Ok(Verdict::Infected { .. }) => true,
        Ok(other) => {
            tracing::warn!(verdict = other.label(), "clamd did not detect the EICAR self-test sample");
            false
        }
        Err(err) => {
            tracing::debug!(error = %err, "clamd self-test scan failed");
            false
        }
    };
    metrics.record_probe(detects, database_version);
    detects
}

/// A clamd.conf setting that clamgate's fail-closed promise depends on: without it clamd answers
/// `stream: OK` for a body it did not scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertSetting {
    /// `AlertEncrypted yes`: encrypted archives and documents are `Heuristics.Encrypted.*`.
    Encrypted,
    /// `AlertExceedsMax yes`: bodies past `MaxRecursion`, `MaxFileSize`, `MaxScanSize`,
    /// `MaxFiles` or `MaxScanTime` are `Heuristics.Limits.Exceeded.*`.
    ExceedsMax,
}

impl AlertSetting {
    pub const ALL: [AlertSetting; 2] = [AlertSetting::Encrypted, AlertSetting::ExceedsMax];

    /// The clamd.conf directive, also the `setting` label of the metrics.
    pub fn directive(self) -> &'static str {
        match self {
            AlertSetting::Encrypted => "AlertEncrypted",
            AlertSetting::ExceedsMax => "AlertExceedsMax",
        }
    }

    /// The self-test body clamd must not call clean, unique per `nonce`.
    pub fn sample(self, nonce: [u8; 16]) -> Vec<u8> {
        match self {
            AlertSetting::Encrypted => selftest::encrypted_zip(nonce),
            AlertSetting::ExceedsMax => selftest::nested_zip(nonce),
        }
    }

    /// What clamd reports for the sample with the setting on.
    fn expected(self) -> UnscannedReason {
        match self {
            AlertSetting::Encrypted => UnscannedReason::Encrypted,
            AlertSetting::ExceedsMax => UnscannedReason::LimitsExceeded,
        }
    }

    /// What a body of this kind is, for the log.
    fn what(self) -> &'static str {
        match self {
            AlertSetting::Encrypted => "a password-protected zip",
            AlertSetting::ExceedsMax => "a zip nested deeper than its MaxRecursion",
        }
    }
}

/// What one settings self-test found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingState {
    /// clamd did not answer `OK` to the sample: the setting is on.
    Enabled,
    /// clamd answered `OK` to the sample: the setting is off.
    Missing,
    /// clamd did not answer; nothing is known.
    Failed,
}

impl SettingState {
    /// The `result` label of `clamgate_clamd_settings_checks_total`.
    pub fn label(self) -> &'static str {
        match self {
            SettingState::Enabled => "enabled",
            SettingState::Missing => "missing",
            SettingState::Failed => "failed",
        }
    }
}

/// Sends one setting's self-test body and judges clamd's answer. Anything but `OK` means the
/// setting does its job (fail-closed holds for such bodies); the expected heuristic is the usual
/// answer, others are logged.
pub async fn check_setting(clamd: &ClamdClient, setting: AlertSetting) -> SettingState {
    match clamd.scan_bytes(&setting.sample(nonce())).await.map(|reply| reply.into_verdict()) {
        Ok(Verdict::Clean) => SettingState::Missing,
        Ok(Verdict::Unscanned { reason }) if reason == setting.expected() => SettingState::Enabled,
        Ok(other) => {
            tracing::debug!(
                setting = setting.directive(),
                verdict = other.label(),
                "unexpected answer to a clamd settings self-test (not OK: accepted)"
            );
            SettingState::Enabled
        }
        Err(err) => {
            tracing::debug!(setting = setting.directive(), error = %err, "clamd settings self-test scan failed");
            SettingState::Failed
        }
    }
}

/// Checks clamd's alert settings ([`AlertSetting`]) with self-test bodies: at the first probe,
/// then every `interval` while they pass, at every probe while they fail, and again as soon as
/// clamd is back after being unreachable (it may have restarted with another clamd.conf).
#[derive(Debug)]
pub struct SettingsCheck {
    /// `clamd.require_alert_settings`: a missing setting makes clamgate not ready.
    require: bool,
    interval: Duration,
    /// When the last complete check ran, and whether every setting was on.
    last: Option<(Instant, bool)>,
    /// Settings found missing by the last complete check (to log changes, not every check).
    missing: Vec<AlertSetting>,
}

impl SettingsCheck {
    pub fn new(require: bool, interval: Duration) -> SettingsCheck {
        SettingsCheck { require, interval, last: None, missing: Vec::new() }
    }

    /// clamd could not be reached: check its settings again as soon as it is back.
    pub fn forget(&mut self) {
        self.last = None;
    }

    /// Whether clamd's settings allow clamgate to serve; runs the self-tests when due. `false`
    /// when a required setting is missing or a self-test got no answer.
    pub async fn passes(&mut self, clamd: &ClamdClient, metrics: &Metrics) -> bool {
        let due = match self.last {
            None => true,
            Some((_, false)) if self.require => true,
            Some((at, _)) => at.elapsed() >= self.interval,
        };
        if !due {
            return self.missing.is_empty() || !self.require;
        }
        let mut missing = Vec::new();
        for setting in AlertSetting::ALL {
            let state = check_setting(clamd, setting).await;
            metrics.record_settings_check(setting.directive(), state.label());
            match state {
                SettingState::Enabled => {}
                SettingState::Missing => missing.push(setting),
                // No verdict on the settings this time: not usable until a check completes.
                SettingState::Failed => return false,
            }
        }
        for setting in &missing {
            if !self.missing.contains(setting) {
                let consequence = if self.require {
                    "not ready (clamd.require_alert_settings)"
                } else {
                    "serving anyway (clamd.require_alert_settings = false): such bodies come back clean"
                };
                tracing::warn!(
                    setting = setting.directive(),
                    "clamd answered OK to {}: set `{} yes` in clamd.conf; {consequence}",
                    setting.what(),
                    setting.directive(),
                );
            }
        }
        if missing.is_empty() && !self.missing.is_empty() {
            tracing::info!("clamd now reports encrypted archives and bodies past its limits");
        }
        self.last = Some((Instant::now(), missing.is_empty()));
        self.missing = missing;
        self.missing.is_empty() || !self.require
    }
}

/// 16 bytes that differ at every call (time, a counter, the process id), so that no two
/// self-test bodies are the same: clamd caches clean answers by content.
fn nonce() -> [u8; 16] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut digest = Sha256::new();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    digest.update(now.to_le_bytes());
    digest.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    digest.update(std::process::id().to_le_bytes());
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(&digest.finalize()[..16]);
    nonce
}

/// Probes forever on `interval`, publishing transitions. Stops when `shutdown` resolves.
pub async fn run_probe(
    scanner: Arc<Scanner>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    reporter: HealthReporter,
    interval: Duration,
    mut settings: SettingsCheck,
) {
    let mut previous: Option<bool> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let usable = if probe_once(&scanner, &metrics).await {
            settings.passes(scanner.clamd(), &metrics).await
        } else {
            settings.forget();
            false
        };
        readiness.set(usable);
        if previous != Some(usable) {
            let status = if usable { ServingStatus::Serving } else { ServingStatus::NotServing };
            for service in HEALTH_SERVICES {
                reporter.set_service_status(service, status).await;
            }
            if usable {
                let engine = scanner.engine_version().unwrap_or_default();
                tracing::info!(engine = %engine.engine, database_version = engine.database_version.unwrap_or(0), "clamd is usable; serving");
            } else {
                tracing::warn!("no usable clamd; reporting NOT_SERVING");
            }
            previous = Some(usable);
        }
    }
}

/// Marks every service NOT_SERVING (at shutdown, so Envoy drains this instance first).
pub async fn set_not_serving(reporter: &HealthReporter) {
    for service in HEALTH_SERVICES {
        reporter.set_service_status(service, ServingStatus::NotServing).await;
    }
}
