//! `spillway webhook`: wires the index, watches, config reload, admin server and the
//! HTTPS admission server together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use clap::Args;
use prometheus::Registry;
use spillway_common::admin::{self, AdminArgs, Readiness};
use spillway_common::config::{self, ConfigMetrics, OperatorConfig, SharedConfig};
use spillway_common::conn_limits::ConnLimits;
use spillway_common::tls::{TlsFiles, TlsServer};
use tokio_util::sync::CancellationToken;

use crate::decision_seal::DecisionSeal;
use crate::feed::WebhookFeed;
use crate::inflight::{self, InFlight};
use crate::metrics::WebhookMetrics;
use crate::server::{self, WebhookState};
use spillway_cluster::index::ClusterIndex;

/// Flags of `spillway webhook`.
#[derive(Args, Clone, Debug)]
pub struct WebhookArgs {
    /// HTTPS address the apiserver calls (`POST /mutate`).
    #[arg(long, default_value = "0.0.0.0:8443", env = "SPILLWAY_WEBHOOK_ADDR")]
    pub listen: SocketAddr,
    /// PEM certificate chain served on the HTTPS port; reloaded when the file changes.
    #[arg(long, env = "SPILLWAY_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key of the serving certificate; reloaded when the file changes.
    #[arg(long, env = "SPILLWAY_TLS_KEY")]
    pub tls_key: PathBuf,
    /// Operator config (YAML: capacityThreshold, hpaThreshold, defaultProvider, …);
    /// reloaded when it changes. Defaults apply without it.
    #[arg(long, env = "SPILLWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// How often the certificate and config files are checked for changes, in seconds.
    #[arg(long, default_value_t = 5, env = "SPILLWAY_RELOAD_INTERVAL_SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub reload_interval_seconds: u64,
    /// CA whose client certificates may call the webhook (the apiserver's, from its
    /// admission-control kubeconfig); without it any client that completes TLS may.
    #[arg(long, env = "SPILLWAY_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Connections held at once; more clients wait in the listen backlog. Idle ones close
    /// after 120 s, slow TLS handshakes and request headers after 10 s.
    #[arg(long, default_value_t = 4096, env = "SPILLWAY_MAX_CONNECTIONS",
        value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// Connections one source address may hold at once (a further one is closed at once),
    /// so one client cannot take every slot; a connection must send its first request
    /// within 10 s.
    #[arg(long, default_value_t = 1024, env = "SPILLWAY_MAX_CONNECTIONS_PER_SOURCE",
        value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections_per_source: u64,
    /// On SIGTERM, seconds the webhook keeps answering after /readyz turned false (so the
    /// Service stops sending it reviews first); then in-flight reviews finish and it exits.
    #[arg(long, default_value_t = 5, env = "SPILLWAY_SHUTDOWN_DELAY_SECONDS",
        value_parser = clap::value_parser!(u64).range(0..=300))]
    pub shutdown_delay_seconds: u64,
    #[command(flatten)]
    #[allow(missing_docs)] // flattened groups document their own flags
    pub admin: AdminArgs,
}

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The operator config was invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The TLS server could not start.
    #[error("TLS server: {0}")]
    Tls(#[from] spillway_common::tls::TlsBindError),
    /// No Kubernetes client could be built.
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The admin server failed.
    #[error("admin server: {0}")]
    Admin(std::io::Error),
    /// The serving key could not be read (it also keys the decision seal).
    #[error("TLS key {}: {source}", path.display())]
    TlsKey {
        /// `--tls-key`.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Where and how the admission server listens.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// HTTPS address.
    pub listen: SocketAddr,
    /// Serving certificate and key, reloaded when they change.
    pub tls: TlsFiles,
    /// How often the certificate files are checked.
    pub reload_interval: Duration,
    /// What one client may hold.
    pub limits: ConnLimits,
    /// On shutdown, how long it keeps answering after readiness went false.
    pub shutdown_delay: Duration,
}

/// Runs the webhook until `shutdown`.
pub async fn run(args: WebhookArgs, shutdown: CancellationToken) -> Result<(), StartError> {
    let initial = match &args.config {
        Some(path) => OperatorConfig::load(path)?,
        None => OperatorConfig::default(),
    };
    let registry = Registry::new();
    let config_metrics = ConfigMetrics::register(&registry)?;
    let shared = Arc::new(ArcSwap::from_pointee(initial));
    let interval = Duration::from_secs(args.reload_interval_seconds.max(1));
    if let Some(path) = args.config.clone() {
        tokio::spawn(config::watch_and_reload(
            path,
            shared.clone(),
            interval,
            config_metrics,
            |_| {},
            shutdown.clone(),
        ));
    }
    let readiness = Readiness::default();
    // The admin server outlives the shutdown delay, so /readyz answers "not ready" while
    // the webhook still drains.
    let admin_stop = CancellationToken::new();
    let admin = tokio::spawn(admin::serve(
        args.admin.admin_addr,
        registry.clone(),
        readiness.clone(),
        admin_stop.clone(),
    ));
    let options = ServeOptions {
        listen: args.listen,
        tls: TlsFiles {
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
            client_ca: args.client_ca.clone(),
        },
        reload_interval: interval,
        limits: ConnLimits {
            max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
            max_connections_per_source: usize::try_from(args.max_connections_per_source)
                .unwrap_or(usize::MAX),
            ..ConnLimits::default()
        },
        shutdown_delay: Duration::from_secs(args.shutdown_delay_seconds),
    };
    let served = serve(options, shared, &registry, readiness, shutdown).await;
    admin_stop.cancel();
    served?;
    match admin.await {
        Ok(result) => result.map_err(StartError::Admin),
        Err(_) => Ok(()),
    }
}

/// Serves admissions with `config` until `shutdown`, registering the webhook's metrics
/// in `registry` and turning `readiness` on once the index has synced (`spillway run`
/// shares the registry, readiness and config with the controller).
pub async fn serve(
    options: ServeOptions,
    config: SharedConfig,
    registry: &Registry,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let metrics = WebhookMetrics::register(registry)?;
    // Every replica serves with the same key, so each opens the others' seals.
    let key = std::fs::read(&options.tls.key).map_err(|source| StartError::TlsKey {
        path: options.tls.key.clone(),
        source,
    })?;
    let state = WebhookState {
        seal: DecisionSeal::from_secret(&key),
        index: Arc::new(RwLock::new(ClusterIndex::new())),
        in_flight: Arc::new(Mutex::new(InFlight::new(inflight::DEFAULT_TTL))),
        config,
        metrics,
    };
    let client = spillway_common::kube_access::client().await?;
    let feed = Arc::new(WebhookFeed {
        in_flight: state.in_flight.clone(),
        metrics: state.metrics.clone(),
    });
    spillway_cluster::watch::spawn_all(
        client,
        state.index.clone(),
        feed,
        readiness.clone(),
        shutdown.clone(),
    );
    let tls = TlsServer::bind(options.listen, options.tls)
        .await?
        .with_limits(options.limits);
    tracing::info!(addr = %tls.local_addr().map_err(StartError::Admin)?, "webhook listening");
    // On shutdown: not ready first, keep answering while the Service catches up, then stop
    // accepting and let the reviews in flight finish.
    let stop_serving = CancellationToken::new();
    tokio::spawn({
        let (stop_serving, delay) = (stop_serving.clone(), options.shutdown_delay);
        async move {
            shutdown.cancelled().await;
            readiness.set(false);
            tracing::info!(?delay, "shutting down: not ready, still answering");
            tokio::time::sleep(delay).await;
            stop_serving.cancel();
        }
    });
    tls.serve(server::router(state), options.reload_interval, stop_serving)
        .await;
    Ok(())
}
