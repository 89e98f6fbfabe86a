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
    /// The HTTP listener (`/v1/auth`), when the config sets `listen.http_addr`.
    pub http_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// The shared token of every clamgate the harness starts ([`test_config`], `ClamgateProcess`),
/// which the rendered envoy.yaml sends (`support::envoy::render_config`), so every suite runs
/// authenticated as production should. Tests of refusals use other values.
pub const TEST_GRPC_TOKEN: &str = "clamgate-test-token-7c1f9e2a4b6d8e0f";

/// A file holding [`TEST_GRPC_TOKEN`] (with a trailing newline, as `echo` writes it), for
/// `listen.grpc_token_file`. Under cargo's per-target temp dir, so nothing is left in /tmp;
/// written to a unique name and renamed over, so concurrent test processes never read it
/// half-written.
pub fn test_token_file() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join("clamgate-test-grpc-token");
        let staging = dir.join(format!("clamgate-test-grpc-token.{}", std::process::id()));
        std::fs::write(&staging, format!("{TEST_GRPC_TOKEN}\n")).expect("write the test token file");
        std::fs::rename(&staging, &path).expect("rename the test token file");
        path.to_string_lossy().into_owned()
    })
    .clone()
}

/// A client interceptor that sends [`TEST_GRPC_TOKEN`] as Envoy does
/// (`authorization: Bearer TOKEN`): `XClient::with_interceptor(channel, with_test_token)`.
pub fn with_test_token(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let value = format!("Bearer {TEST_GRPC_TOKEN}").parse().expect("the token is ASCII");
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// A plaintext channel to `url` (`http://IP:PORT`).
pub async fn channel(url: String) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(url)
        .expect("gRPC URL")
        .connect()
        .await
        .expect("connect to clamgate")
}

/// Defaults tuned for tests: a fast health probe, the given clamd, the in-process cache, the
/// `mirror` policy (resource keys) that the shipped envoy.yaml names for `/mirror/`, and the
/// harness's shared token ([`TEST_GRPC_TOKEN`]).
pub fn test_config(clamd_address: &str) -> Config {
    let mut config = Config::default();
    config.listen.grpc_token_file = Some(test_token_file());
    config.clamd.address = clamd_address.parse().expect("a clamd address");
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
        // An HTTP listener only when the test asks for one (any address: port 0 is bound here).
        let http = match config.listen.http_addr {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP listener")),
            None => None,
        };
        let http_addr = http.as_ref().map(|listener| listener.local_addr().expect("HTTP addr"));
        config.listen.http_addr = http_addr;
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let listeners = clamgate::app::Listeners { grpc, admin, http };
            let stopped = async move {
                let _ = stop.await;
            };
            if let Err(err) = clamgate::app::run(config, listeners, stopped).await {
                panic!("clamgate failed: {err}");
            }
        });
        ClamgateInstance { grpc_addr, admin_addr, http_addr, shutdown: Some(shutdown), task }
    }

    /// Shuts clamgate down (as SIGTERM would) and waits until it has stopped: its listeners are
    /// closed afterwards.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(40), &mut self.task).await;
        self.task.abort();
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
