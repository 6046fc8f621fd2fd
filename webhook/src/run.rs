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
use spillway_common::config::{self, OperatorConfig};
use spillway_common::tls::{TlsFiles, TlsServer};
use tokio_util::sync::CancellationToken;

use crate::index::ClusterIndex;
use crate::inflight::{self, InFlight};
use crate::metrics::WebhookMetrics;
use crate::server::{self, WebhookState};

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
    #[arg(long, default_value_t = 5, env = "SPILLWAY_RELOAD_INTERVAL_SECONDS")]
    pub reload_interval_seconds: u64,
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
}

/// Runs the webhook until `shutdown`.
pub async fn run(args: WebhookArgs, shutdown: CancellationToken) -> Result<(), StartError> {
    let initial = match &args.config {
        Some(path) => OperatorConfig::load(path)?,
        None => OperatorConfig::default(),
    };
    let registry = Registry::new();
    let metrics = WebhookMetrics::register(&registry)?;
    let shared = Arc::new(ArcSwap::from_pointee(initial));
    let interval = Duration::from_secs(args.reload_interval_seconds.max(1));
    if let Some(path) = args.config.clone() {
        let failures = metrics.config_reload_failures.clone();
        tokio::spawn(config::watch_and_reload(
            path,
            shared.clone(),
            interval,
            move |_| failures.inc(),
            shutdown.clone(),
        ));
    }
    let state = WebhookState {
        index: Arc::new(RwLock::new(ClusterIndex::new())),
        in_flight: Arc::new(Mutex::new(InFlight::new(inflight::DEFAULT_TTL))),
        config: shared,
        metrics,
    };
    let client = kube::Client::try_default().await?;
    let readiness = Readiness::default();
    crate::watch::spawn_all(client, state.clone(), readiness.clone(), shutdown.clone());
    let files = TlsFiles {
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
        client_ca: None,
    };
    let tls = TlsServer::bind(args.listen, files).await?;
    tracing::info!(addr = %tls.local_addr().map_err(StartError::Admin)?, "webhook listening");
    let admin = tokio::spawn(admin::serve(
        args.admin.admin_addr,
        registry,
        readiness,
        shutdown.clone(),
    ));
    tls.serve(server::router(state), interval, shutdown.clone())
        .await;
    match admin.await {
        Ok(result) => result.map_err(StartError::Admin),
        Err(_) => Ok(()),
    }
}
