//! clamgate itself for tests: `app::run` in-process on 127.0.0.1:0, stopped on drop.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clamgate::config::{CacheMode, Config, PolicyConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running clamgate.
pub struct ClamgateInstance {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// Defaults tuned for tests: a fast health probe, the given clamd, the in-process cache, and
/// the `mirror` policy (resource keys) that the shipped envoy.yaml names for `/mirror/`.
pub fn test_config(clamd_address: &str) -> Config {
    let mut config = Config::default();
    config.clamd.address = clamd_address.to_string();
    config.clamd.health_interval_ms = 200;
    config.clamd.reply_timeout_ms = 20_000;
    let mirror = PolicyConfig { cache_mode: CacheMode::Resource, ..PolicyConfig::default() };
    config.policies.insert("mirror".to_string(), mirror);
    config
}

impl ClamgateInstance {
    /// Binds both listeners on ephemeral ports and runs clamgate on the current runtime.
    pub async fn start(mut config: Config) -> ClamgateInstance {
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC listener");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin listener");
        let grpc_addr = grpc.local_addr().expect("gRPC addr");
        let admin_addr = admin.local_addr().expect("admin addr");
        config.listen.grpc_addr = grpc_addr;
        config.listen.admin_addr = admin_addr;
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let listeners = clamgate::app::Listeners { grpc, admin };
            let stopped = async move {
                let _ = stop.await;
            };
            if let Err(err) = clamgate::app::run(config, listeners, stopped).await {
                panic!("clamgate failed: {err}");
            }
        });
        ClamgateInstance { grpc_addr, admin_addr, shutdown: Some(shutdown), task }
    }

    /// Starts clamgate and waits until `/readyz` says a clamd answered and detected EICAR.
    pub async fn start_ready(config: Config) -> ClamgateInstance {
        let instance = ClamgateInstance::start(config).await;
        instance.wait_ready(Duration::from_secs(20)).await;
        instance
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// The status of an admin endpoint, or None when it does not answer.
    pub async fn admin_status(&self, path: &str) -> Option<u16> {
        reqwest::get(self.admin_url(path)).await.ok().map(|r| r.status().as_u16())
    }

    /// Polls `/readyz` until it answers 200, or panics at the deadline.
    pub async fn wait_ready(&self, timeout: Duration) {
        self.wait_readyz(200, timeout).await;
    }

    /// Polls `/readyz` until it answers `status`, or panics at the deadline.
    pub async fn wait_readyz(&self, status: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.admin_status("/readyz").await == Some(status) {
                return;
            }
            assert!(Instant::now() < deadline, "clamgate /readyz did not answer {status} within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Prometheus exposition.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of one sample line (`name{labels}`) in `/metrics`, 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }
}

/// The value of one sample in a Prometheus exposition, 0 when absent.
pub fn metric_value(exposition: &str, sample: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

impl Drop for ClamgateInstance {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.abort();
    }
}
