//! Fetch on a miss (nginx, `on_miss = "fetch"`): clamgate downloads the object itself from the
//! origin its config names for the request's host, scans it through the one scan path, and
//! stores the verdict under the resource key before it answers.
//!
//! - **Where from**: only `fetch.origins` ([`Origin`]); the request gives a path, never a host,
//!   and redirects are followed only within the origin (`fetch.max_redirects`).
//! - **What is scanned**: the body as the origin sends it, held like an Envoy body (memory
//!   budget, then a temp file), decoded per its `Content-Encoding`, through
//!   [`Scanner::scan_held`] (same size limit, deadline, cache and single-flight per content).
//! - **One download per object**: concurrent misses on one resource wait for the first one in
//!   this instance, and other instances wait on a Redis lock (`fetch:<resource key>`) for the
//!   verdict it stores.
//! - **Bounded**: at most `fetch.max_concurrent` downloads at once, each within
//!   `fetch.download_timeout_ms`. Every failure is `Unscanned` with its own reason (`origin_error`,
//!   `timeout`, `too_large`, `unsupported_encoding`), never `Clean`.

mod origin;

pub use origin::Origin;

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{redirect, Client, StatusCode};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::cache::{
    validator_of, vary_names, LockAttempt, Resource, ResourceId, ResourceKey, ResourceVersion,
};
use crate::config::{CacheMode, FetchConfig};
use crate::decode::{parse_content_encoding, Encoding};
use crate::metrics::{Metrics, Source};
use crate::scanner::{ResourceLookup, ScanReport, Scanner};
use crate::single_flight::{self, Role, SingleFlight};
use crate::spool::{HeldBody, Spool};
use crate::verdict::UnscannedReason;

/// The request headers sent on to the origin, so that the variant scanned is the one the client
/// gets (`Vary`). A response that varies on any other header is not stored by resource.
const FORWARDED_HEADERS: [&str; 3] = ["accept", "accept-encoding", "accept-language"];

/// How often an instance waiting for another instance's download looks for its verdict.
const SHARED_WAIT_POLL: Duration = Duration::from_millis(50);

/// The outcome of a fetch: the verdict on the object and the version it was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub report: ScanReport,
    /// The validator of the version scanned (`etag:"..."`, `lm:...`, `immutable`); None when the
    /// origin gave none (the verdict was then not stored by resource) or nothing was downloaded.
    pub validator: Option<String>,
}

/// What a policy says about fetching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchRules {
    pub cache_mode: CacheMode,
    /// The origin never changes an object under a URL: a response without validator is stored.
    pub immutable: bool,
}

/// Downloads from configured origins; see the module documentation.
pub struct Fetcher {
    client: Client,
    origins: Arc<Vec<Origin>>,
    slots: Semaphore,
    timeout: Duration,
    scanner: Arc<Scanner>,
    spool: Spool,
    metrics: Arc<Metrics>,
    inflight: SingleFlight<ResourceKey, Fetched>,
}

/// Why a download gave no body to scan.
#[derive(Debug, thiserror::Error)]
enum DownloadError {
    #[error("{0}")]
    Origin(String),
    #[error("the object is larger than scan.max_scan_bytes")]
    TooLarge,
    #[error("unsupported Content-Encoding")]
    UnsupportedEncoding,
    #[error("cannot hold the body: {0}")]
    Hold(std::io::Error),
}

/// A downloaded body, held, with what its response said about it.
struct Downloaded {
    body: HeldBody,
    encodings: Vec<Encoding>,
    validator: Option<String>,
    /// The response's `Vary` names; None for `Vary: *` or a header that was not forwarded.
    vary: Option<Vec<String>>,
}

impl Fetcher {
    /// The fetcher of `config`. Errors name the key (a CA file that cannot be read).
    pub fn from_config(
        config: &FetchConfig,
        scanner: Arc<Scanner>,
        spool: Spool,
        metrics: Arc<Metrics>,
    ) -> Result<Fetcher, String> {
        let origins = Arc::new(config.origins.clone());
        let redirect_origins = origins.clone();
        let max_redirects = config.max_redirects as usize;
        let redirects = redirect::Policy::custom(move |attempt| {
            let first = attempt.previous().first().cloned();
            let on_origin = first.is_some_and(|first| {
                redirect_origins
                    .iter()
                    .any(|origin| origin.contains(&first) && origin.contains(attempt.url()))
            });
            if on_origin && attempt.previous().len() <= max_redirects {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let mut builder = Client::builder()
            .redirect(redirects)
            .no_proxy()
            .connect_timeout(config.connect_timeout())
            .user_agent(concat!("clamgate/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.tls_ca_file {
            let pem = std::fs::read(path)
                .map_err(|err| format!("fetch.tls_ca_file: cannot read {path:?}: {err}"))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|err| format!("fetch.tls_ca_file: {path:?} is not a PEM bundle: {err}"))?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().map_err(|err| format!("fetch: cannot build the HTTP client: {err}"))?;
        Ok(Fetcher {
            client,
            origins,
            slots: Semaphore::new(config.max_concurrent.max(1)),
            timeout: config.download_timeout(),
            scanner,
            spool,
            metrics,
            inflight: SingleFlight::default(),
        })
    }

    fn origin_for(&self, id: &ResourceId) -> Option<&Origin> {
        self.origins.iter().find(|origin| origin.serves(id))
    }

    /// Downloads and scans `resource` (or waits for the download of it already under way here
    /// or in another instance) and returns the verdict, stored under the resource key when the
    /// response allows it.
    pub async fn fetch(&self, resource: &Resource, rules: FetchRules) -> Fetched {
        let key = resource.id.key();
        loop {
            let leader = match self.inflight.join_or_lead(key) {
                Role::Leader(leader) => leader,
                Role::Waiter(results) => {
                    match single_flight::wait(results).await {
                        Some(fetched) => {
                            self.metrics.record_fetch("joined", None);
                            return fetched;
                        }
                        // The leader was cancelled (its caller went away): lead a new one.
                        None => continue,
                    }
                }
            };
            let fetched = self.fetch_as_leader(resource, &key, rules).await;
            leader.publish(fetched.clone());
            return fetched;
        }
    }

    async fn fetch_as_leader(&self, resource: &Resource, key: &ResourceKey, rules: FetchRules) -> Fetched {
        let object = format!("fetch:{}", key.hex());
        let token = match self.scanner.lock_shared(&object).await {
            LockAttempt::Acquired(token) => Some(token),
            LockAttempt::Local => None,
            LockAttempt::HeldElsewhere => {
                if let Some(fetched) = self.wait_for_shared_fetch(resource, &object).await {
                    self.metrics.record_fetch("joined", None);
                    return fetched;
                }
                None
            }
        };
        let fetched = self.download_and_scan(resource, rules).await;
        if let Some(token) = token {
            self.scanner.unlock_shared(&object, &token).await;
        }
        fetched
    }

    /// Waits while another instance downloads the object: its verdict once stored, or None when
    /// its lock is gone without one (or this takes longer than a download and a scan may).
    async fn wait_for_shared_fetch(&self, resource: &Resource, object: &str) -> Option<Fetched> {
        let deadline =
            Instant::now() + self.timeout + self.scanner.scan_deadline(self.scanner.max_scan_bytes());
        while Instant::now() < deadline {
            tokio::time::sleep(SHARED_WAIT_POLL).await;
            if let Some(fetched) = self.stored(resource).await {
                return Some(fetched);
            }
            if !self.scanner.shared_lock_held(object).await {
                return self.stored(resource).await;
            }
        }
        None
    }

    /// The verdict another fetch stored for `resource`, if any.
    async fn stored(&self, resource: &Resource) -> Option<Fetched> {
        let (report, known) = match self.scanner.lookup_resource(resource).await {
            ResourceLookup::Clean { known } => (ScanReport::cached_clean(&known.content), known),
            ResourceLookup::InfectedUnlessChanged { known, report } => (report, known),
            ResourceLookup::Infected(report) => {
                return Some(Fetched {
                    report,
                    validator: Some(crate::cache::IMMUTABLE_VALIDATOR.to_string()),
                })
            }
            ResourceLookup::Miss => return None,
        };
        Some(Fetched { report, validator: Some(known.validator) })
    }

    async fn download_and_scan(&self, resource: &Resource, rules: FetchRules) -> Fetched {
        let started = Instant::now();
        let unscanned = |reason: UnscannedReason, outcome: &'static str, downloaded: bool| {
            self.metrics.record_fetch(outcome, downloaded.then(|| started.elapsed().as_secs_f64()));
            let report = self.scanner.report_unscanned("", 0, reason, Source::Fetched);
            Fetched { report, validator: None }
        };
        let Some(origin) = self.origin_for(&resource.id) else {
            tracing::warn!(host = resource.id.host(), "fetch: no origin in fetch.origins serves this host");
            return unscanned(UnscannedReason::OriginError, "no_origin", false);
        };
        let Some(url) = origin.url_for(resource.id.path_and_query()) else {
            tracing::warn!(origin = %origin, "fetch: the request's path leaves the origin's base path; refused");
            return unscanned(UnscannedReason::OriginError, "origin_error", false);
        };
        let deadline = started + self.timeout;
        let download = async {
            let _slot =
                self.slots.acquire().await.map_err(|_| DownloadError::Origin("closed".to_string()))?;
            self.download(url.clone(), resource, rules.immutable).await
        };
        let downloaded = match tokio::time::timeout_at(deadline, download).await {
            Ok(Ok(downloaded)) => downloaded,
            Ok(Err(err)) => {
                let (reason, outcome) = match &err {
                    DownloadError::Origin(_) => (UnscannedReason::OriginError, "origin_error"),
                    DownloadError::TooLarge => (UnscannedReason::TooLarge, "too_large"),
                    DownloadError::UnsupportedEncoding => {
                        (UnscannedReason::UnsupportedEncoding, "origin_error")
                    }
                    // clamgate cannot take the body now: engine trouble for the answer (503 + retry-after).
                    DownloadError::Hold(_) => (UnscannedReason::EngineUnavailable, "spool_full"),
                };
                tracing::warn!(origin = %origin, path = url.path(), error = %err, "fetch failed");
                return unscanned(reason, outcome, true);
            }
            Err(_) => {
                tracing::warn!(origin = %origin, path = url.path(), timeout_ms = self.timeout.as_millis() as u64, "fetch did not finish within fetch.download_timeout_ms");
                return unscanned(UnscannedReason::Timeout, "timeout", true);
            }
        };
        let Downloaded { body, encodings, validator, vary } = downloaded;
        let store_as = match (&validator, vary) {
            (Some(validator), Some(vary)) if rules.cache_mode != CacheMode::Off => {
                Some(ResourceVersion { resource: resource.clone(), validator: validator.clone(), vary })
            }
            _ => None,
        };
        let report = self
            .scanner
            .scan_held(&body, &encodings, Source::Fetched, rules.cache_mode, store_as.as_ref())
            .await;
        self.metrics.record_fetch("scanned", Some(started.elapsed().as_secs_f64()));
        Fetched { report, validator: store_as.map(|version| version.validator) }
    }

    async fn download(
        &self,
        url: reqwest::Url,
        resource: &Resource,
        immutable: bool,
    ) -> Result<Downloaded, DownloadError> {
        let mut request = self.client.get(url);
        for (name, value) in &resource.request_headers {
            if FORWARDED_HEADERS.contains(&name.as_str()) {
                request = request.header(name.as_str(), value.as_str());
            }
        }
        let mut response = request.send().await.map_err(|err| DownloadError::Origin(describe(&err)))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(DownloadError::Origin(format!(
                "the origin answered {status}: a redirect outside the origin, or more than fetch.max_redirects"
            )));
        }
        if status != StatusCode::OK {
            return Err(DownloadError::Origin(format!("the origin answered {status}")));
        }
        let headers = response.headers();
        let encodings = {
            let values: Vec<&str> =
                headers.get_all("content-encoding").iter().filter_map(|value| value.to_str().ok()).collect();
            parse_content_encoding(&values).map_err(|_| DownloadError::UnsupportedEncoding)?
        };
        let max = self.scanner.max_scan_bytes();
        if response.content_length().is_some_and(|length| length > max) {
            return Err(DownloadError::TooLarge);
        }
        let validator = validator_of(|name| header_text(headers, name), immutable);
        let vary = {
            let values: Vec<String> =
                headers.get_all("vary").iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect();
            vary_names(&values)
                .filter(|names| names.iter().all(|name| FORWARDED_HEADERS.contains(&name.as_str())))
        };
        let mut body = self.spool.hold();
        while let Some(chunk) = response.chunk().await.map_err(|err| DownloadError::Origin(describe(&err)))? {
            if body.received() + chunk.len() as u64 > max {
                return Err(DownloadError::TooLarge);
            }
            body.push(chunk).await.map_err(DownloadError::Hold)?;
        }
        Ok(Downloaded { body, encodings, validator, vary })
    }
}

/// A response header as text (the first, if repeated).
fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_string)
}

/// A reqwest error without its URL (which names the origin's address; logged apart).
fn describe(err: &reqwest::Error) -> String {
    let kind = if err.is_connect() {
        "cannot connect to the origin"
    } else if err.is_timeout() {
        "the origin timed out"
    } else if err.is_body() || err.is_decode() {
        "the origin's body broke off"
    } else {
        "the request to the origin failed"
    };
    let mut source = std::error::Error::source(err);
    let mut detail = String::new();
    while let Some(inner) = source {
        detail = inner.to_string();
        source = inner.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}
