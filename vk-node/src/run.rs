//! `spillway vk-node`: one leader-elected virtual node with its provider, pod controller,
//! Lease heartbeat, node status and kubelet API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clap::{Args, ValueEnum};
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use prometheus::Registry;
use spillway_common::admin::{self, AdminArgs, Readiness};
use spillway_common::config::{self, ConfigMetrics, OperatorConfig, SharedConfig};
use spillway_common::conn_limits::ConnLimits;
use spillway_common::leader::LeaderElection;
use spillway_common::tls::{ClientCerts, DEFAULT_RELOAD_INTERVAL, TlsFiles, TlsServer};
use tokio_util::sync::CancellationToken;

use crate::aci::provider::{AciArgs, AciProvider, settings_from_args as aci_settings_from_args};
use crate::fargate::provider::{FargateArgs, FargateProvider};
use crate::kubelet_api::{self, CallerChecks};
use crate::kubelet_authn::Authenticator;
use crate::kubelet_authz::Authorizer;
use crate::metrics::NodeMetrics;
use crate::mock::{MockBehaviour, MockProvider};
use crate::node::{self, NodeSpec};
use crate::pods::{ControllerSettings, PodController, PodDirectory};
use crate::provider::Provider;
use crate::workload_rules::ClusterView;

/// How long a kubelet API connection may stay silent: a follow stream of a quiet pod is
/// silent between its lines, so an hour rather than the admission server's two minutes.
const KUBELET_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Which backend runs the node's pods.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ProviderKind {
    /// AWS Fargate through ECS.
    Fargate,
    /// Azure Container Instances through ARM.
    Aci,
    /// In-memory, for demos and tests.
    Mock,
}

impl ProviderKind {
    fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Fargate => "fargate",
            ProviderKind::Aci => "aci",
            ProviderKind::Mock => "mock",
        }
    }
}

/// Mock provider flags.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Mock provider")]
pub struct MockArgs {
    /// Mock: milliseconds from create to Running.
    #[arg(long, default_value_t = 500, env = "SPILLWAY_MOCK_START_LATENCY_MS",
        value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub mock_start_latency_ms: u64,
    /// Mock: probability (0 to 1) that a create fails transiently.
    #[arg(long, default_value_t = 0.0, env = "SPILLWAY_MOCK_FAILURE_RATE")]
    pub mock_failure_rate: f64,
    /// Mock: containers exit this many seconds after starting (default: never).
    #[arg(long, env = "SPILLWAY_MOCK_RUN_SECONDS",
        value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub mock_run_seconds: Option<u64>,
    /// Mock: the first this many creates fail transiently, as in an outage that ends.
    #[arg(long, default_value_t = 0, env = "SPILLWAY_MOCK_FAIL_FIRST_CREATES")]
    pub mock_fail_first_creates: u32,
    /// Mock: exit code when they do.
    #[arg(long, default_value_t = 0, env = "SPILLWAY_MOCK_EXIT_CODE")]
    pub mock_exit_code: i32,
    /// Mock: what the injected create failures (--mock-failure-rate,
    /// --mock-fail-first-creates) say: `transient` (a network blip) or `unavailable`
    /// (no capacity or quota at the provider, what failover acts on).
    #[arg(long, default_value = "transient", env = "SPILLWAY_MOCK_FAILURE_KIND",
        value_parser = ["transient", "unavailable"])]
    pub mock_failure_kind: String,
    /// Mock: CPU a running pod reports using (a quantity such as 250m) unless its
    /// `spillway.io/mock-cpu-usage` annotation says otherwise; without either, a pod
    /// reports no usage at all.
    #[arg(long, env = "SPILLWAY_MOCK_CPU_USAGE", value_parser = parse_cpu_millis)]
    pub mock_cpu_usage: Option<u64>,
    /// Mock: memory a running pod reports using (a quantity such as 64Mi) unless its
    /// `spillway.io/mock-memory-usage` annotation says otherwise.
    #[arg(long, env = "SPILLWAY_MOCK_MEMORY_USAGE", value_parser = parse_bytes)]
    pub mock_memory_usage: Option<u64>,
    /// Mock: send the pods' probes to 127.0.0.1 (where a test serves them) instead of
    /// their made-up IPs in 10.253.0.0/16; without it their probes are not run and
    /// running containers are ready.
    #[arg(long, env = "SPILLWAY_MOCK_PROBE_LOOPBACK")]
    pub mock_probe_loopback: bool,
}

fn parse_cpu_millis(text: &str) -> Result<u64, String> {
    spillway_common::quantity::cpu_millis(text).map_err(|e| e.to_string())
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    spillway_common::quantity::bytes(text).map_err(|e| e.to_string())
}

/// Flags of `spillway vk-node`.
#[derive(Args, Clone, Debug)]
pub struct VkNodeArgs {
    /// Provider behind the node.
    #[arg(long, value_enum, env = "SPILLWAY_VK_PROVIDER")]
    pub vk_provider: ProviderKind,
    /// Operator config file (the controller's, the chart's ConfigMap): the node refuses
    /// a pod that would break its `budget.maxUsdPerHour`, and prices pods with its
    /// `pricing`. Reloaded when it changes. Without it only the workloads' own budgets
    /// (`spillway.io/max-usd-per-hour`) apply at the node.
    #[arg(long, env = "SPILLWAY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)] // flattened groups document their own flags
    pub node: NodeOptions,
    #[command(flatten)]
    #[allow(missing_docs)] // flattened groups document their own flags
    pub admin: AdminArgs,
}

/// Flags of `spillway controller` that concern its embedded virtual nodes.
#[derive(Args, Clone, Debug)]
pub struct EmbeddedNodesArgs {
    /// Providers to run a virtual node for (comma-separated; none: the controller loops
    /// only); each node is leader-elected on its own, and node N (from 0) serves its
    /// kubelet API on the listen port + N.
    #[arg(long, value_enum, value_delimiter = ',', env = "SPILLWAY_VK_PROVIDER")]
    pub vk_provider: Vec<ProviderKind>,
    #[command(flatten)]
    #[allow(missing_docs)] // flattened groups document their own flags
    pub node: NodeOptions,
}

/// Everything about a virtual node but its provider kind.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Virtual node")]
pub struct NodeOptions {
    /// Provider named in the node's `spillway.io/provider` label and taint (default: the
    /// provider itself); lets the mock stand in for `fargate` or `aci` in demos and tests.
    #[arg(long, env = "SPILLWAY_ADVERTISE_PROVIDER")]
    pub advertise_provider: Option<String>,
    /// Node name (default `<--node-name-prefix>-<provider>`).
    #[arg(long, env = "SPILLWAY_NODE_NAME")]
    pub node_name: Option<String>,
    /// Prefix of the node names `<prefix>-<provider>` when `--node-name` is not given:
    /// two installs in one cluster (two releases) need different ones.
    #[arg(long, default_value = "spillway", env = "SPILLWAY_NODE_NAME_PREFIX",
        value_parser = node_name_prefix)]
    pub node_name_prefix: String,
    /// A label of the node's own, `KEY=VALUE` (repeat, or comma-separate in the env), e.g.
    /// `eks.amazonaws.com/compute-type=fargate` so the DaemonSets that stay off Fargate
    /// nodes stay off this one. The labels Spillway sets (type, kubernetes.io/*,
    /// spillway.io/provider) cannot be replaced.
    #[arg(long = "node-label", value_name = "KEY=VALUE", env = "SPILLWAY_NODE_LABELS",
        value_delimiter = ',', value_parser = node_label)]
    pub node_labels: Vec<(String, String)>,
    /// A taint of the node's own, `KEY[=VALUE]:EFFECT` (repeat, or comma-separate in the
    /// env), e.g. `example.com/burst=only:NoSchedule` to keep off pods that tolerate every
    /// `virtual-kubelet.io/provider` taint. Burst pods get a toleration for it from the
    /// webhook and the controller. One dropped from the list is removed at the next start.
    #[arg(long = "node-taint", value_name = "KEY[=VALUE]:EFFECT", env = "SPILLWAY_NODE_TAINTS",
        value_delimiter = ',', value_parser = spillway_common::taint::parse)]
    pub node_taints: Vec<spillway_common::taint::NodeTaint>,
    /// Allocatable vCPU the node advertises: the budget, never "infinite".
    #[arg(long, default_value_t = 100, env = "SPILLWAY_MAX_VCPU")]
    pub max_vcpu: u32,
    /// Allocatable memory the node advertises (a Kubernetes quantity).
    #[arg(long, default_value = "400Gi", env = "SPILLWAY_MAX_MEMORY")]
    pub max_memory: String,
    /// Allocatable pods the node advertises.
    #[arg(long, default_value_t = 500, env = "SPILLWAY_MAX_PODS")]
    pub max_pods: u32,
    /// Address the apiserver reaches the kubelet API on (the pod IP in a cluster).
    #[arg(long, default_value = "127.0.0.1", env = "SPILLWAY_NODE_ADDRESS")]
    pub node_address: String,
    /// Kubelet API listen address (HTTPS). It serves /containerLogs, /pods, /runningpods/,
    /// /stats/summary, /metrics/resource and /healthz; callers authenticate with a client
    /// certificate or a bearer token (TokenReview) and are authorized with a
    /// SubjectAccessReview for `get nodes/<proxy|stats|metrics>` of the node.
    #[arg(long, default_value = "0.0.0.0:10250", env = "SPILLWAY_KUBELET_LISTEN")]
    pub kubelet_listen: SocketAddr,
    /// Kubelet API serving certificate (PEM); required for a virtual node (`spillway run`
    /// makes one when it is missing, which the apiserver accepts unless it verifies kubelet
    /// certificates with --kubelet-certificate-authority).
    #[arg(long, env = "SPILLWAY_KUBELET_TLS_CERT")]
    pub kubelet_tls_cert: Option<PathBuf>,
    /// Kubelet API serving key (PEM); required for a virtual node.
    #[arg(long, env = "SPILLWAY_KUBELET_TLS_KEY")]
    pub kubelet_tls_key: Option<PathBuf>,
    /// CA that signed the apiserver's kubelet client certificate; a client certificate it
    /// did not sign is refused (clients without one must send a bearer token). Required for
    /// a virtual node (`spillway run` trusts the kubeconfig's cluster CA when it is missing).
    #[arg(long, env = "SPILLWAY_KUBELET_CLIENT_CA")]
    pub kubelet_client_ca: Option<PathBuf>,
    /// Namespace of the leader-election Lease.
    #[arg(
        long,
        default_value = "kube-system",
        env = "SPILLWAY_LEADER_ELECTION_NAMESPACE"
    )]
    pub leader_election_namespace: String,
    /// Identity in leader election (default: host name and pid).
    #[arg(long, env = "SPILLWAY_IDENTITY")]
    pub identity: Option<String>,
    /// Seconds a sample of the pods' resource usage is reused by /stats/summary and
    /// /metrics/resource (one provider call per interval, whatever the number of scrapers).
    #[arg(long, default_value_t = 10, env = "SPILLWAY_USAGE_CACHE_SECONDS",
        value_parser = clap::value_parser!(u64).range(0..=600))]
    pub usage_cache_seconds: u64,
    /// `kubectl exec` and `attach` sessions the node serves at once; one more is answered
    /// "try again" (each holds a WebSocket to the provider).
    #[arg(long, default_value_t = 32, env = "SPILLWAY_MAX_EXEC_SESSIONS",
        value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_exec_sessions: u32,
    /// Seconds between status pulls from the provider.
    #[arg(long, default_value_t = 5, env = "SPILLWAY_SYNC_INTERVAL_SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub sync_interval_seconds: u64,
    /// Namespaces whose pods the node runs (comma-separated; default: every namespace).
    /// A pod bound to the node from any other namespace is refused: marked Failed with
    /// reason NamespaceNotAllowed and an Event, never started. Pods that do not tolerate
    /// the node's taint, or that the webhook's eligibility rules refuse, are refused the
    /// same way whatever this says.
    #[arg(long, value_delimiter = ',', env = "SPILLWAY_ALLOWED_NAMESPACES")]
    pub allowed_namespaces: Option<Vec<String>>,
    /// Seconds between sweeps for provider objects (tasks, per-pod secrets) of pods that
    /// are gone, such as those a crash or a lost stop left behind.
    #[arg(long, default_value_t = 300, env = "SPILLWAY_SWEEP_INTERVAL_SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub sweep_interval_seconds: u64,
    #[command(flatten)]
    #[allow(missing_docs)] // flattened groups document their own flags
    pub mock: MockArgs,
    #[command(flatten)]
    #[allow(missing_docs)] // flattened groups document their own flags
    pub fargate: FargateArgs,
    #[command(flatten)]
    #[allow(missing_docs)] // flattened groups document their own flags
    pub aci: AciArgs,
}

/// Why the node stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Kubernetes client.
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    /// Node registration.
    #[error(transparent)]
    Node(#[from] node::NodeError),
    /// Kubelet API server.
    #[error("kubelet API: {0}")]
    KubeletApi(#[from] spillway_common::tls::TlsBindError),
    /// Provider set-up.
    #[error("provider: {0}")]
    Provider(String),
    /// Metrics.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The operator config file.
    #[error("operator config: {0}")]
    Config(String),
    /// Leadership was lost; the process must stop so a new leader can take over.
    #[error("leadership lost")]
    LeadershipLost,
}

fn identity(options: &NodeOptions) -> String {
    options.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

/// Runs `spillway vk-node` until `shutdown` (or until leadership is lost).
pub async fn run(args: VkNodeArgs, shutdown: CancellationToken) -> Result<(), RunError> {
    let registry = Registry::new();
    let metrics = NodeMetrics::register(&registry)?;
    let readiness = Readiness::default();
    tokio::spawn(admin::serve(
        args.admin.admin_addr,
        registry.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
    let config = node_config(args.config, &registry, &shutdown)?;
    let client = spillway_common::kube_access::client().await?;
    let view = ClusterView::watched(client, config, shutdown.clone());
    run_node(
        args.vk_provider,
        args.node,
        metrics,
        readiness,
        view,
        shutdown,
    )
    .await
}

/// The operator config of a node that runs alone, reloaded as the file changes.
fn node_config(
    path: Option<PathBuf>,
    registry: &Registry,
    shutdown: &CancellationToken,
) -> Result<SharedConfig, RunError> {
    let Some(path) = path else {
        return Ok(Arc::new(arc_swap::ArcSwap::from_pointee(
            OperatorConfig::default(),
        )));
    };
    let initial = OperatorConfig::load(&path).map_err(|e| RunError::Config(e.to_string()))?;
    let shared: SharedConfig = Arc::new(arc_swap::ArcSwap::from_pointee(initial));
    let metrics = ConfigMetrics::register(registry)?;
    tokio::spawn(config::watch_and_reload(
        path,
        shared.clone(),
        DEFAULT_RELOAD_INTERVAL,
        metrics,
        |_| {},
        shutdown.clone(),
    ));
    Ok(shared)
}

/// Runs the virtual nodes embedded in `spillway controller`, sharing its metrics registry;
/// returns when all stop, with the first error.
pub async fn run_embedded(
    args: EmbeddedNodesArgs,
    registry: &Registry,
    readiness: Readiness,
    view: ClusterView,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    if args.vk_provider.len() > 1 && args.node.node_name.is_some() {
        return Err(RunError::Provider(
            "--node-name names one node; leave it out with several --vk-provider values".into(),
        ));
    }
    let metrics = NodeMetrics::register(registry)?;
    let nodes = args.vk_provider.iter().enumerate().map(|(i, kind)| {
        let mut options = args.node.clone();
        options
            .kubelet_listen
            .set_port(options.kubelet_listen.port() + i as u16);
        supervise(
            *kind,
            options,
            metrics.clone(),
            readiness.clone(),
            view.clone(),
            shutdown.clone(),
        )
    });
    let results = futures::future::join_all(nodes).await;
    results
        .into_iter()
        .collect::<Result<Vec<()>, _>>()
        .map(|_| ())
}

/// The first wait before an embedded node that failed is started again; doubled after
/// each failure up to [`NODE_RESTART_MAX`].
const NODE_RESTART_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between starts of a failing embedded node.
const NODE_RESTART_MAX: Duration = Duration::from_secs(300);

/// Runs one embedded node, starting it again with back-off whenever it fails (its
/// siblings and the controller go on): the failure is logged when it happens and
/// `spillway_virtual_node_up` says 0 meanwhile. Leadership lost still ends the process.
async fn supervise(
    kind: ProviderKind,
    options: NodeOptions,
    metrics: NodeMetrics,
    readiness: Readiness,
    view: ClusterView,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let name = node_name(kind, &options);
    let up = metrics.up.with_label_values(&[&name, kind.as_str()]);
    let mut wait = NODE_RESTART_FIRST;
    loop {
        up.set(0);
        let started = tokio::time::Instant::now();
        let result = run_node(
            kind,
            options.clone(),
            metrics.clone(),
            readiness.clone(),
            view.clone(),
            shutdown.clone(),
        )
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(RunError::LeadershipLost) => return Err(RunError::LeadershipLost),
            Err(error) => {
                up.set(0);
                tracing::error!(
                    node = %name,
                    provider = kind.as_str(),
                    %error,
                    retry_in = ?wait,
                    "virtual node failed; starting it again after the wait"
                );
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        // A node that ran long before failing starts over from the first wait.
        wait = if started.elapsed() > NODE_RESTART_MAX {
            NODE_RESTART_FIRST
        } else {
            (wait * 2).min(NODE_RESTART_MAX)
        };
    }
}

async fn run_node(
    kind: ProviderKind,
    options: NodeOptions,
    metrics: NodeMetrics,
    readiness: Readiness,
    view: ClusterView,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let name = node_name(kind, &options);
    match kind {
        ProviderKind::Mock => {
            let rate = options.mock.mock_failure_rate;
            if !(0.0..=1.0).contains(&rate) {
                return Err(RunError::Provider(format!(
                    "--mock-failure-rate: must be from 0 to 1, got {rate}"
                )));
            }
            let behaviour = MockBehaviour {
                start_latency: Duration::from_millis(options.mock.mock_start_latency_ms),
                failure_rate: options.mock.mock_failure_rate,
                run_for: options.mock.mock_run_seconds.map(Duration::from_secs),
                exit_code: options.mock.mock_exit_code,
                failures_unavailable: options.mock.mock_failure_kind == "unavailable",
                fail_first_creates: options.mock.mock_fail_first_creates,
                cpu_usage_millis: options.mock.mock_cpu_usage,
                memory_usage_bytes: options.mock.mock_memory_usage,
                probe_loopback: options.mock.mock_probe_loopback,
            };
            run_with(
                Arc::new(MockProvider::new(behaviour)),
                kind,
                &options,
                metrics,
                readiness,
                view,
                shutdown,
            )
            .await
        }
        ProviderKind::Aci => {
            let cluster_id = cluster_id(kind, &options, &name).await?;
            let settings =
                aci_settings_from_args(&options.aci, &options.fargate, &name, &cluster_id)
                    .map_err(RunError::Provider)?;
            let provider = AciProvider::from_args(&options.aci, settings)
                .await
                .map_err(RunError::Provider)?;
            run_with(
                Arc::new(provider),
                kind,
                &options,
                metrics,
                readiness,
                view,
                shutdown,
            )
            .await
        }
        ProviderKind::Fargate => {
            let cluster_id = cluster_id(kind, &options, &name).await?;
            let provider =
                FargateProvider::from_args(&options.fargate, &name, &cluster_id, metrics.clone())
                    .await
                    .map_err(RunError::Provider)?;
            run_with(
                Arc::new(provider),
                kind,
                &options,
                metrics,
                readiness,
                view,
                shutdown,
            )
            .await
        }
    }
}

/// This cluster's id at a cloud provider: `--cluster-id` (checked), else derived from the
/// kube-system namespace's UID.
async fn cluster_id(
    kind: ProviderKind,
    options: &NodeOptions,
    node: &str,
) -> Result<String, RunError> {
    let client = spillway_common::kube_access::client().await?;
    let id = crate::cluster_id::resolve(
        options.fargate.cluster_id.as_deref(),
        options.fargate.allow_default_cluster_id,
        &client,
    )
    .await
    .map_err(RunError::Provider)?;
    tracing::info!(node, provider = kind.as_str(), cluster_id = %id, "cluster id at the provider");
    Ok(id)
}

fn node_name(kind: ProviderKind, options: &NodeOptions) -> String {
    options
        .node_name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", options.node_name_prefix, kind.as_str()))
}

/// A node name prefix: a DNS label of at most 50 characters (the provider is appended).
fn node_name_prefix(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 50
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?}: lowercase letters, digits and '-', at most 50, not starting or ending with '-'"
        ))
    }
}

/// A node label `KEY=VALUE`: a Kubernetes label key and value, not one Spillway sets.
fn node_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))?;
    if let Err(why) = spillway_common::label::check_key(key) {
        return Err(format!("{text:?}: label key {key:?} {why}"));
    }
    if let Err(why) = spillway_common::label::check_value(value) {
        return Err(format!("{text:?}: label value {value:?} {why}"));
    }
    if crate::node::OWN_LABEL_KEYS.contains(&key) {
        return Err(format!(
            "{text:?}: {key} is set by Spillway on every virtual node and cannot be replaced"
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

async fn run_with<P: Provider>(
    provider: Arc<P>,
    kind: ProviderKind,
    args: &NodeOptions,
    metrics: NodeMetrics,
    readiness: Readiness,
    view: ClusterView,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let files = kubelet_tls_files(args)?;
    let client = spillway_common::kube_access::client().await?;
    let spec = NodeSpec {
        name: node_name(kind, args),
        provider: args
            .advertise_provider
            .clone()
            .unwrap_or_else(|| kind.as_str().to_owned()),
        max_vcpu: args.max_vcpu,
        max_memory: args.max_memory.clone(),
        max_pods: args.max_pods,
        address: args.node_address.clone(),
        kubelet_port: args.kubelet_listen.port(),
        extra_labels: args.node_labels.iter().cloned().collect(),
        extra_taints: args.node_taints.clone(),
    };
    let election = LeaderElection::new(
        client.clone(),
        &args.leader_election_namespace,
        &format!("spillway-vk-{}", spec.name),
        &identity(args),
    );
    if !election.acquire(&shutdown).await {
        return Ok(());
    }
    let lost = shutdown.child_token();
    tokio::spawn(election.hold(lost.clone()));

    let node = node::register(&client, &spec).await?;
    let node_uid = node.metadata.uid.clone().unwrap_or_default();
    tokio::spawn(heartbeat(
        client.clone(),
        spec.clone(),
        node_uid,
        lost.clone(),
    ));

    let directory: PodDirectory = Arc::new(RwLock::new(HashMap::new()));
    // `kubectl logs -f` of a quiet pod sends nothing for long stretches: the idle limit
    // that suits admission traffic would cut it after two minutes.
    // Client certificates are optional: metrics-server calls kubelets with a bearer token.
    let kubelet = TlsServer::bind_with(args.kubelet_listen, files, ClientCerts::Optional)
        .await?
        .with_limits(ConnLimits {
            idle_timeout: KUBELET_IDLE_TIMEOUT,
            ..ConnLimits::default()
        });
    tracing::info!(addr = ?kubelet.local_addr().ok(), node = %spec.name, "kubelet API listening");
    tokio::spawn(kubelet.serve(
        kubelet_api::router(
            provider.clone(),
            directory.clone(),
            Arc::new(CallerChecks {
                authenticator: Authenticator::new(client.clone()),
                authorizer: Authorizer::new(client.clone(), &spec.name),
            }),
            &spec.name,
            Duration::from_secs(args.usage_cache_seconds),
            kubelet_api::SessionLimit {
                max: args.max_exec_sessions as usize,
                open: metrics.exec_sessions.with_label_values(&[kind.as_str()]),
            },
        ),
        DEFAULT_RELOAD_INTERVAL,
        lost.clone(),
    ));

    let settings = ControllerSettings {
        sync_interval: Duration::from_secs(args.sync_interval_seconds.max(1)),
        allowed_namespaces: args
            .allowed_namespaces
            .as_ref()
            .map(|namespaces| namespaces.iter().map(|n| n.trim().to_owned()).collect()),
        sweep_interval: Duration::from_secs(args.sweep_interval_seconds),
        ..ControllerSettings::default()
    };
    readiness.set(true);
    let up = metrics.up.with_label_values(&[&spec.name, kind.as_str()]);
    up.set(1);
    PodController::new(client, provider, spec, settings, metrics, directory, view)
        .run(lost.clone())
        .await;
    up.set(0);
    readiness.set(false);
    if lost.is_cancelled() && !shutdown.is_cancelled() {
        return Err(RunError::LeadershipLost);
    }
    Ok(())
}

/// The kubelet API's TLS files; a virtual node refuses to start without them, so its
/// logs are never served to unauthenticated callers.
fn kubelet_tls_files(args: &NodeOptions) -> Result<TlsFiles, RunError> {
    let missing = |flag: &str| {
        RunError::Provider(format!(
            "{flag} is required to run a virtual node (its kubelet API serves TLS and authenticates callers)"
        ))
    };
    Ok(TlsFiles {
        cert: args
            .kubelet_tls_cert
            .clone()
            .ok_or_else(|| missing("--kubelet-tls-cert"))?,
        key: args
            .kubelet_tls_key
            .clone()
            .ok_or_else(|| missing("--kubelet-tls-key"))?,
        client_ca: Some(
            args.kubelet_client_ca
                .clone()
                .ok_or_else(|| missing("--kubelet-client-ca"))?,
        ),
    })
}

/// Renews the node's Lease and writes its status; a Node someone deleted is registered
/// again at the next renewal (its pods keep running: they are still bound to its name).
async fn heartbeat(
    client: kube::Client,
    spec: NodeSpec,
    mut node_uid: String,
    stop: CancellationToken,
) {
    let mut lease_tick = tokio::time::interval(node::LEASE_RENEW_INTERVAL);
    let mut status_tick = tokio::time::interval(node::STATUS_INTERVAL);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "spillway-vk-node".into(),
            instance: Some(spec.name.clone()),
        },
    );
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = lease_tick.tick() => {
                match node::get_or_create(&client, &spec).await {
                    Ok((node, recreated)) => {
                        node_uid = node.metadata.uid.clone().unwrap_or_default();
                        if recreated {
                            tracing::warn!(node = %spec.name, "the Node was deleted; registered it again");
                            let event = Event {
                                type_: EventType::Warning,
                                reason: "RegisteredNode".into(),
                                note: Some(format!("Node {} was deleted; the virtual node registered it again and keeps running its pods", spec.name)),
                                action: "Register".into(),
                                secondary: None,
                            };
                            if let Err(error) = recorder.publish(&event, &node.object_ref(&())).await {
                                tracing::debug!(%error, "event not recorded");
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot read the Node"),
                }
                if let Err(error) = node::renew_lease(&client, &spec, &node_uid).await {
                    tracing::warn!(%error, "node lease renewal failed");
                }
            }
            _ = status_tick.tick() => {
                if let Err(error) = node::write_status(&client, &spec).await {
                    tracing::warn!(%error, "node status update failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_labels_are_checked_and_spillways_own_cannot_be_replaced() {
        assert_eq!(
            node_label("eks.amazonaws.com/compute-type=fargate"),
            Ok(("eks.amazonaws.com/compute-type".into(), "fargate".into()))
        );
        assert_eq!(
            node_label("example.com/empty="),
            Ok(("example.com/empty".into(), String::new()))
        );
        for (text, says) in [
            ("no-equals", "expected KEY=VALUE"),
            ("Bad_Prefix.com/x=y", "label key"),
            ("team=has space", "label value"),
            ("type=real", "set by Spillway"),
            ("spillway.io/provider=aci", "set by Spillway"),
        ] {
            let error = node_label(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
