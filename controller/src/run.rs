//! `spillway controller`: the shared index and its watches, a reflector of opted-in pods,
//! the operator config reloaded live, Lease leader election, the reconcile loop that plans
//! and executes a pass every few seconds while leading, and the embedded virtual nodes.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use clap::Args;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use prometheus::Registry;
use spillway_cluster::index::ClusterIndex;
use spillway_cluster::watch::{self, SharedIndex};
use spillway_common::admin::{self, AdminArgs, Readiness};
use spillway_common::config::{self, ConfigError, ConfigMetrics, OperatorConfig, SharedConfig};
use spillway_common::leader::LeaderElection;
use spillway_vk_node::run::EmbeddedNodesArgs;
use spillway_vk_node::workload_rules::ClusterView;
use tokio_util::sync::CancellationToken;

use crate::execute::{Executor, FIELD_MANAGER};
use crate::metrics::ControllerMetrics;
use crate::plan::{self, ControllerState, PlanInput};
use crate::pod_store::{OptedInPods, PodStore};
use crate::snapshot::PodView;
use crate::status;

/// Name of the controller's leader-election Lease.
pub const LEASE_NAME: &str = "spillway-controller";

/// Flags of the controller loops (shared by `spillway controller` and `spillway run`).
#[derive(Args, Clone, Debug)]
pub struct LoopArgs {
    /// Operator config (YAML: capacityThreshold, rebalance, pendingSpill, budget, pricing,
    /// …); reloaded when it changes. Defaults apply without it.
    #[arg(long, env = "SPILLWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// How often the config file is checked for changes, in seconds.
    #[arg(long, default_value_t = 5, env = "SPILLWAY_RELOAD_INTERVAL_SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub reload_interval_seconds: u64,
    /// Seconds between controller passes (deletion cost, rebalance, pending spill,
    /// overshoot, metrics).
    #[arg(long, default_value_t = 2, env = "SPILLWAY_RECONCILE_INTERVAL_SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub reconcile_interval_seconds: u64,
}

/// Flags of `spillway controller`.
#[derive(Args, Clone, Debug)]
pub struct ControllerArgs {
    #[command(flatten)]
    #[allow(missing_docs)] // flattened groups document their own flags
    pub loops: LoopArgs,
    #[command(flatten)]
    #[allow(missing_docs)] // flattened groups document their own flags
    pub nodes: EmbeddedNodesArgs,
    #[command(flatten)]
    #[allow(missing_docs)] // flattened groups document their own flags
    pub admin: AdminArgs,
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The operator config given at start was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No Kubernetes client.
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// An embedded virtual node stopped.
    #[error(transparent)]
    Node(#[from] spillway_vk_node::run::RunError),
}

/// Who this replica is and how often it acts.
#[derive(Clone, Debug)]
pub struct LoopSettings {
    /// Identity in leader election and Events.
    pub identity: String,
    /// Namespace of the controller's Lease.
    pub lease_namespace: String,
    /// Time between passes.
    pub interval: Duration,
}

/// Everything the loop needs once started.
pub struct Controller {
    client: Client,
    index: SharedIndex,
    pods: PodStore,
    pods_synced: tokio::sync::watch::Receiver<bool>,
    config: SharedConfig,
    metrics: ControllerMetrics,
    settings: LoopSettings,
    lifetimes: std::sync::Mutex<BurstLifetimes>,
}

/// What the cost and duration metrics integrate between passes.
#[derive(Debug, Default)]
struct BurstLifetimes {
    /// When the last pass sampled the burst cost.
    sampled_ms: Option<i64>,
    /// Live burst pods (UID) with their creation time.
    burst_pods: std::collections::HashMap<String, i64>,
}

/// Loads the initial config and starts watching it: a refused reload is logged with the
/// key at fault, counted, and reported as a Warning Event on the controller's Lease.
pub fn load_config(
    loops: &LoopArgs,
    client: &Client,
    lease_namespace: &str,
    registry: &Registry,
    shutdown: &CancellationToken,
) -> Result<SharedConfig, RunError> {
    let initial = match &loops.config {
        Some(path) => OperatorConfig::load(path)?,
        None => OperatorConfig::default(),
    };
    let shared: SharedConfig = Arc::new(ArcSwap::from_pointee(initial));
    let metrics = ConfigMetrics::register(registry)?;
    if let Some(path) = loops.config.clone() {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: None,
            },
        );
        let lease = ObjectReference {
            api_version: Some("coordination.k8s.io/v1".into()),
            kind: Some("Lease".into()),
            namespace: Some(lease_namespace.to_owned()),
            name: Some(LEASE_NAME.into()),
            ..ObjectReference::default()
        };
        tokio::spawn(config::watch_and_reload(
            path,
            shared.clone(),
            Duration::from_secs(loops.reload_interval_seconds.max(1)),
            metrics,
            move |error: &ConfigError| {
                let event = Event {
                    type_: EventType::Warning,
                    reason: "ConfigRefused".into(),
                    note: Some(format!("{error}; the last good config stays in force")),
                    action: "ReloadConfig".into(),
                    secondary: None,
                };
                let (recorder, lease) = (recorder.clone(), lease.clone());
                tokio::spawn(async move {
                    if let Err(error) = recorder.publish(&event, &lease).await {
                        tracing::warn!(%error, "could not publish the ConfigRefused event");
                    }
                });
            },
            shutdown.clone(),
        ));
    }
    Ok(shared)
}

/// The identity of this replica in leader election and Events.
pub fn identity(explicit: Option<&str>) -> String {
    explicit.map(str::to_owned).unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

impl Controller {
    /// Starts the index watches and the opted-in pod store; `readiness` turns true when
    /// the index has synced.
    pub fn start(
        client: Client,
        config: SharedConfig,
        metrics: ControllerMetrics,
        settings: LoopSettings,
        readiness: Readiness,
        shutdown: &CancellationToken,
    ) -> Self {
        let index: SharedIndex = Arc::new(RwLock::new(ClusterIndex::new()));
        let pods = PodStore::default();
        let (synced, pods_synced) = tokio::sync::watch::channel(false);
        watch::spawn_all(
            client.clone(),
            index.clone(),
            Arc::new(OptedInPods::new(pods.clone(), synced)),
            readiness,
            shutdown.clone(),
        );
        Self {
            client,
            index,
            pods,
            pods_synced,
            config,
            metrics,
            settings,
            lifetimes: std::sync::Mutex::default(),
        }
    }

    /// Acts while leading; waits as a standby otherwise; returns at `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let election = LeaderElection::new(
            self.client.clone(),
            &self.settings.lease_namespace,
            LEASE_NAME,
            &self.settings.identity,
        );
        let mut synced = self.pods_synced.clone();
        if synced.wait_for(|synced| *synced).await.is_err() {
            return;
        }
        let evictions = match crate::execute::eviction_client().await {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "no client for evictions; the controller does not act");
                return;
            }
        };
        let executor = Executor::new(
            self.client.clone(),
            evictions,
            &self.settings.identity,
            self.metrics.clone(),
        );
        while election.acquire(&shutdown).await {
            let lost = shutdown.child_token();
            tokio::spawn(election.clone().hold(lost.clone()));
            self.metrics.leader.set(1);
            let mut state = ControllerState::default();
            let mut ticker = tokio::time::interval(self.settings.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = lost.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let config = self.config.load_full();
                let started = std::time::Instant::now();
                let now_ms = jiff::Timestamp::now().as_millisecond();
                // Without a reading of the backfill requests, this pass plans as if backfill
                // were off (it touches no request); every other rule still runs.
                let (config, backfill) = match executor.backfill().observe().await {
                    Ok(observed) => (config, observed),
                    Err(error) => {
                        tracing::warn!(%error, "could not read the backfill requests; this pass leaves them alone");
                        let mut off = (*config).clone();
                        off.backfill.mode = spillway_common::config::BackfillMode::Off;
                        (Arc::new(off), plan::BackfillObserved::default())
                    }
                };
                let mut actions = self.pass(&config, &mut state, now_ms, &backfill);
                if lost.is_cancelled() {
                    break;
                }
                self.metrics.shadow_actions.reset();
                if config.mode == spillway_common::config::Mode::Shadow {
                    // Shadow mode: what this pass would do is counted and logged, never done.
                    for action in actions.drain(..) {
                        self.metrics
                            .shadow_actions
                            .with_label_values(&[action.kind()])
                            .inc();
                        tracing::debug!(?action, "shadow mode: not done");
                    }
                }
                executor.run(actions, &mut state, now_ms, &lost).await;
                let (cpu_millis, memory_bytes) = state.backfill_requested();
                self.metrics
                    .backfill_requested
                    .with_label_values(&["cpu"])
                    .set(cpu_millis as f64 / 1000.0);
                self.metrics
                    .backfill_requested
                    .with_label_values(&["memory"])
                    .set(memory_bytes as f64);
                self.metrics
                    .reconcile_duration
                    .observe(started.elapsed().as_secs_f64());
            }
            self.metrics.forget_leader_state();
            if shutdown.is_cancelled() {
                election.release().await;
                break;
            }
            tracing::warn!("controller leadership lost; standing by");
        }
    }

    /// Plans one pass and refreshes the metrics, under the index's read lock.
    fn pass(
        &self,
        config: &OperatorConfig,
        state: &mut ControllerState,
        now_ms: i64,
        backfill: &plan::BackfillObserved,
    ) -> Vec<plan::Action> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let views: Vec<PodView> = self
            .pods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|record| PodView::from_record(record, &index, config.default_provider))
            .collect();
        let status = status::compute(&index, &views, config, None, now_ms);
        let costs: Vec<(String, String, String, f64)> = index
            .burst_usd_by_workload(&config.pricing, config.default_provider.for_pricing())
            .into_iter()
            .filter_map(|((key, provider), usd)| {
                let (ns, name) = key.split_once('/')?;
                Some((ns.to_owned(), name.to_owned(), provider.to_string(), usd))
            })
            .collect();
        self.metrics.observe(&status, &costs);
        self.integrate_burst(&views, &costs, now_ms);
        plan::plan(
            &PlanInput {
                index: &index,
                pods: &views,
                config,
                now_ms,
                backfill,
            },
            state,
        )
    }
}

impl Controller {
    /// Adds the cost of the burst pods since the last pass to `spillway_burst_usd_total`
    /// and observes the lifetime of every burst pod that went since.
    fn integrate_burst(
        &self,
        views: &[PodView],
        costs: &[(String, String, String, f64)],
        now_ms: i64,
    ) {
        let mut lifetimes = self.lifetimes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = lifetimes.sampled_ms {
            let hours = (now_ms - since).max(0) as f64 / 3_600_000.0;
            for (namespace, workload, provider, usd) in costs {
                self.metrics
                    .burst_usd
                    .with_label_values(&[namespace, workload, provider])
                    .inc_by(usd * hours);
            }
        }
        lifetimes.sampled_ms = Some(now_ms);
        let live: std::collections::HashMap<String, i64> = views
            .iter()
            .filter(|p| p.is_live() && p.is_burst())
            .map(|p| (p.uid.clone(), p.created_ms))
            .collect();
        for (uid, created_ms) in &lifetimes.burst_pods {
            if !live.contains_key(uid) {
                self.metrics
                    .burst_duration
                    .observe((now_ms - created_ms).max(0) as f64 / 1000.0);
            }
        }
        lifetimes.burst_pods = live;
    }
}

/// Runs `spillway controller` until `shutdown`.
pub async fn run(args: ControllerArgs, shutdown: CancellationToken) -> Result<(), RunError> {
    let registry = Registry::new();
    let readiness = Readiness::default();
    let admin = tokio::spawn(admin::serve(
        args.admin.admin_addr,
        registry.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
    let result = run_with_registry(args.loops, args.nodes, &registry, readiness, shutdown).await;
    let _ = admin.await;
    result
}

/// The controller and its embedded nodes on an existing registry (`spillway run` shares
/// one with the webhook).
pub async fn run_with_registry(
    loops: LoopArgs,
    nodes: EmbeddedNodesArgs,
    registry: &Registry,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let client = spillway_common::kube_access::client().await?;
    let lease_namespace = nodes.node.leader_election_namespace.clone();
    let config = load_config(&loops, &client, &lease_namespace, registry, &shutdown)?;
    run_loops(client, loops, nodes, config, registry, readiness, shutdown).await
}

/// The controller loops and embedded nodes with an already loaded `config`.
pub async fn run_loops(
    client: Client,
    loops: LoopArgs,
    nodes: EmbeddedNodesArgs,
    config: SharedConfig,
    registry: &Registry,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let metrics = ControllerMetrics::register(registry)?;
    let settings = LoopSettings {
        identity: identity(nodes.node.identity.as_deref()),
        lease_namespace: nodes.node.leader_election_namespace.clone(),
        interval: Duration::from_secs(loops.reconcile_interval_seconds.max(1)),
    };
    let controller = Controller::start(
        client,
        config,
        metrics,
        settings,
        readiness.clone(),
        &shutdown,
    );
    // The embedded nodes judge hand-bound pods (opt-in, budgets) on the controller's own
    // view of the cluster.
    let view = ClusterView::new(
        controller.index.clone(),
        controller.config.clone(),
        controller.pods_synced.clone(),
    );
    let loop_task = tokio::spawn(controller.run(shutdown.clone()));
    let nodes_result = if nodes.vk_provider.is_empty() {
        shutdown.cancelled().await;
        Ok(())
    } else {
        spillway_vk_node::run::run_embedded(nodes, registry, readiness, view, shutdown.clone())
            .await
    };
    if nodes_result.is_err() {
        shutdown.cancel();
    }
    let _ = loop_task.await;
    Ok(nodes_result?)
}
