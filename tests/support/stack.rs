//! The whole stack for end-to-end tests: real clamd, clamgate in-process, a sample upstream and a
//! real Envoy running the shipped `envoy/envoy.yaml`.

use std::time::Duration;

use clamgate::config::Config;

use super::clamd::ClamdProcess;
use super::clamgate::{test_config, ClamgateInstance};
use super::envoy::EnvoyProcess;
use super::upstream::Upstream;

pub struct Stack {
    pub clamd: ClamdProcess,
    pub clamgate: ClamgateInstance,
    pub upstream: Upstream,
    pub envoy: EnvoyProcess,
    pub http: reqwest::Client,
}

impl Stack {
    /// Starts everything with clamgate's test defaults.
    pub async fn start() -> Stack {
        Stack::start_with(|_| {}).await
    }

    /// Starts everything, letting the test adjust clamgate's config first.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Stack {
        let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("start clamd");
        Stack::start_with_clamd(clamd, adjust).await
    }

    /// Starts everything around a clamd the test started (e.g. with a daily database).
    pub async fn start_with_clamd(clamd: ClamdProcess, adjust: impl FnOnce(&mut Config)) -> Stack {
        Stack::start_edited(clamd, |config, _| adjust(config), |config| config).await
    }

    /// Starts everything, letting the test adjust clamgate's config knowing the upstream's
    /// address (e.g. to name it as a fetch origin).
    pub async fn start_knowing_upstream(adjust: impl FnOnce(&mut Config, std::net::SocketAddr)) -> Stack {
        let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("start clamd");
        Stack::start_edited(clamd, adjust, |config| config).await
    }

    /// Starts everything with Envoy's config (the shipped one, rendered) changed by `edit_envoy`
    /// first, e.g. with [`super::envoy::add_routes`].
    pub async fn start_with_envoy(
        adjust: impl FnOnce(&mut Config),
        edit_envoy: impl FnOnce(String) -> String + Send + 'static,
    ) -> Stack {
        let clamd = tokio::task::spawn_blocking(ClamdProcess::start).await.expect("start clamd");
        Stack::start_edited(clamd, |config, _| adjust(config), edit_envoy).await
    }

    async fn start_edited(
        clamd: ClamdProcess,
        adjust: impl FnOnce(&mut Config, std::net::SocketAddr),
        edit_envoy: impl FnOnce(String) -> String + Send + 'static,
    ) -> Stack {
        let upstream = Upstream::start().await;
        let mut config = test_config(&clamd.address());
        adjust(&mut config, upstream.addr());
        let clamgate = ClamgateInstance::start_ready(config).await;
        let (grpc, upstream_addr) = (clamgate.grpc_addr, upstream.addr());
        let envoy = tokio::task::spawn_blocking(move || {
            let config = edit_envoy(super::envoy::render_config(grpc, upstream_addr));
            let envoy = EnvoyProcess::start_with_config(config);
            envoy.wait_clamgate_healthy(Duration::from_secs(20));
            envoy
        })
        .await
        .expect("start envoy");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("HTTP client");
        Stack { clamd, clamgate, upstream, envoy, http }
    }

    /// GET through Envoy.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.envoy.url(path)).send().await.expect("GET through Envoy")
    }

    /// POST a body through Envoy.
    pub async fn post(&self, path: &str, body: Vec<u8>) -> reqwest::Response {
        self.http.post(self.envoy.url(path)).body(body).send().await.expect("POST through Envoy")
    }

    /// clamd scans clamgate has completed so far (the scan-duration histogram's count).
    pub async fn clamd_scans(&self) -> f64 {
        self.clamgate.metric("clamgate_clamd_scan_duration_seconds_count").await
    }

    /// ext_proc messages of one kind clamgate has received (e.g. `response_body`).
    pub async fn messages(&self, kind: &str) -> f64 {
        self.clamgate.metric(&format!("clamgate_ext_proc_messages_total{{kind=\"{kind}\"}}")).await
    }

    /// Stops clamd (later scans cannot happen) and waits until clamgate has noticed.
    pub async fn stop_clamd(&mut self) {
        let clamd = &mut self.clamd;
        clamd.stop();
        self.clamgate.wait_readyz(503, Duration::from_secs(20)).await;
    }
}
