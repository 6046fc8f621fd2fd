//! The Fargate provider: pods become ECS tasks. Task definitions are cached by content
//! hash, Secret-derived env goes to one Secrets Manager secret per pod, every task carries
//! the pod UID in tags and `clientToken`, and listing by `startedBy` finds what a previous
//! run of the node left, so nothing is duplicated or leaked.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use clap::Args;
use k8s_openapi::api::core::v1::Pod;
use spillway_common::config::PricingConfig;
use spillway_common::keys;
use spillway_common::quantity;

use super::aws::{
    AwsApi, ContainerMetricKey, ContainerMetrics, EcsApi, LogPageQuery, TaskInfo, task_id_of,
};
use super::region;
use super::setup_check::SetupTarget;
use super::translate::{self, FargateSettings};
use super::{TAG_CLUSTER, TAG_NODE, TAG_POD_UID};
use crate::metrics::NodeMetrics;
use crate::pod_objects::PodObjects;
use crate::provider::{
    ContainerUsage, ExecCommand, LOG_READ_CAP_BYTES, LogChunk, LogLine, LogOptions, PodUsage,
    Provider, ProviderError, RemoteContainer, RemoteContainerState, RemotePhase, RemoteStatus,
    SessionEnd, SessionIo,
};
use crate::resource_usage::CpuMeter;

/// Events asked per `GetLogEvents` page (CloudWatch also stops a page at 1 MB): what one
/// page of a log read holds in memory at most.
const LOG_PAGE_EVENTS: usize = 2_000;

/// The cluster's name in a cluster name or ARN (Container Insights' `ClusterName`).
fn cluster_name(cluster: &str) -> &str {
    cluster
        .rsplit_once(":cluster/")
        .map_or(cluster, |(_, name)| name)
}

/// When each container of `pod` started (ms since the epoch), from its status.
fn container_starts(pod: &Pod) -> HashMap<String, i64> {
    pod.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| {
            let started = c.state.as_ref()?.running.as_ref()?.started_at.as_ref()?;
            Some((c.name.clone(), started.0.as_millisecond()))
        })
        .collect()
}

/// Pod usage from Container Insights datapoints: CPU units (1024 per vCPU) become
/// nanocores, MiB become bytes, and each container's cumulative CPU is integrated from
/// the rates by `meters` (keyed `uid/container`; meters of pods not in `pods` are
/// dropped). Pods without any datapoint are left out.
fn usage_from_insights(
    pods: &[Pod],
    task_owners: &HashMap<String, String>,
    metrics: &[ContainerMetrics],
    meters: &mut HashMap<String, CpuMeter>,
    now_ms: i64,
) -> HashMap<String, PodUsage> {
    let mut by_pod: HashMap<&str, Vec<&ContainerMetrics>> = HashMap::new();
    for m in metrics {
        if let Some(uid) = task_owners.get(&m.key.task_id) {
            by_pod.entry(uid.as_str()).or_default().push(m);
        }
    }
    let mut usage = HashMap::new();
    let mut live_meters = HashMap::new();
    for pod in pods {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            continue;
        };
        let Some(found) = by_pod.get(uid) else {
            continue;
        };
        let starts = container_starts(pod);
        let containers: Vec<ContainerUsage> = found
            .iter()
            .map(|m| {
                let nano_cores = (m.cpu_units.max(0.0) / 1024.0 * 1e9) as u64;
                let started = starts.get(&m.key.container).copied();
                let meter_key = format!("{uid}/{}", m.key.container);
                let mut meter = meters.remove(&meter_key).unwrap_or_default();
                let used = meter.sample(started.unwrap_or(now_ms), now_ms, nano_cores);
                live_meters.insert(meter_key, meter);
                ContainerUsage {
                    name: m.key.container.clone(),
                    started_at_ms: started,
                    cpu_nano_cores: nano_cores,
                    cpu_core_nano_seconds: used,
                    memory_working_set_bytes: (m.memory_mib.max(0.0) * 1_048_576.0) as u64,
                }
            })
            .collect();
        usage.insert(
            uid.to_owned(),
            PodUsage {
                sampled_at_ms: now_ms,
                containers,
            },
        );
    }
    *meters = live_meters;
    usage
}

/// DescribeTasks accepts at most this many tasks per call (ECS API reference).
pub const DESCRIBE_BATCH: usize = 100;

/// Fargate flags.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "AWS Fargate")]
pub struct FargateArgs {
    /// ECS cluster to run tasks in.
    #[arg(long, default_value = "default", env = "SPILLWAY_ECS_CLUSTER")]
    pub ecs_cluster: String,
    /// This Kubernetes cluster's id, in every task's `startedBy` and tags, in secret names
    /// and in every ACI container group's tags: clusters sharing an ECS cluster, an account
    /// or an ACI resource group never adopt or stop each other's tasks or groups while
    /// their ids differ. Unset: derived from the kube-system namespace's UID
    /// (`k8s-<12 hex digits>`), unique to this cluster.
    #[arg(help_heading = "Every provider")]
    #[arg(long, env = "SPILLWAY_CLUSTER_ID", value_parser = cluster_id)]
    pub cluster_id: Option<String>,
    /// Accept `--cluster-id default`, the id every install once shared (only when the
    /// tasks and groups already running under it are this cluster's).
    #[arg(help_heading = "Every provider")]
    #[arg(long, env = "SPILLWAY_ALLOW_DEFAULT_CLUSTER_ID")]
    pub allow_default_cluster_id: bool,
    /// Subnet ids for task ENIs (comma-separated).
    #[arg(long, value_delimiter = ',', env = "SPILLWAY_SUBNETS")]
    pub subnets: Vec<String>,
    /// Security group ids for task ENIs (comma-separated).
    #[arg(long, value_delimiter = ',', env = "SPILLWAY_SECURITY_GROUPS")]
    pub security_groups: Vec<String>,
    /// Give tasks a public IP (needed without a NAT gateway to pull public images).
    #[arg(long, env = "SPILLWAY_ASSIGN_PUBLIC_IP")]
    pub assign_public_ip: bool,
    /// Run tasks with ECS Exec on (`enableExecuteCommand`): `kubectl exec` on Fargate burst
    /// pods goes through it (and `aws ecs execute-command` works too). Needs a task role
    /// (`--task-role-arn`) allowed the `ssmmessages` actions, the node's role allowed
    /// `ecs:ExecuteCommand` and, in private subnets, a VPC endpoint for `ssmmessages`
    /// (docs/eks.md).
    #[arg(long, env = "SPILLWAY_ENABLE_EXEC")]
    pub enable_exec: bool,
    /// Task execution role (image pulls, logs, secrets).
    #[arg(long, env = "SPILLWAY_EXECUTION_ROLE_ARN")]
    pub execution_role_arn: Option<String>,
    /// Task role the pods' code runs as.
    #[arg(long, env = "SPILLWAY_TASK_ROLE_ARN")]
    pub task_role_arn: Option<String>,
    /// CloudWatch Logs group for container output.
    #[arg(long, default_value = "/spillway/pods", env = "SPILLWAY_LOG_GROUP")]
    pub log_group: String,
    /// AWS region. Unset: the SDK's chain decides (`AWS_REGION`, `AWS_DEFAULT_REGION`,
    /// the profile, then the instance metadata), as EKS sets it for IRSA and Pod Identity.
    #[arg(long)]
    pub aws_region: Option<String>,
    /// Override of the AWS endpoint (a local test endpoint); unset in production.
    #[arg(long, env = "SPILLWAY_AWS_ENDPOINT")]
    pub aws_endpoint: Option<String>,
    /// CPU for pods that request none.
    #[arg(help_heading = "Every provider")]
    #[arg(long, default_value = "250m", env = "SPILLWAY_DEFAULT_CPU")]
    pub default_cpu: String,
    /// Memory for pods that request none.
    #[arg(help_heading = "Every provider")]
    #[arg(long, default_value = "512Mi", env = "SPILLWAY_DEFAULT_MEMORY")]
    pub default_memory: String,
}

/// The provider, generic over the AWS calls so its logic is tested with a fake.
pub struct FargateProvider<E: EcsApi> {
    api: E,
    settings: FargateSettings,
    /// Families known to exist; the async lock also makes registration single-flight,
    /// so concurrent creates of identical pods register one definition, not one each.
    known_families: tokio::sync::Mutex<HashSet<String>>,
    tasks: Mutex<HashMap<String, TaskRecord>>,
    /// Cumulative CPU of each pod, integrated from the Container Insights rates.
    cpu_meters: Mutex<HashMap<String, CpuMeter>>,
}

#[derive(Clone, Debug)]
struct TaskRecord {
    arn: String,
    launches: u32,
    /// Task definition family (Container Insights metrics are keyed by it).
    family: Option<String>,
}

impl FargateProvider<AwsApi> {
    /// The real provider from flags and the resolved cluster id.
    pub async fn from_args(
        args: &FargateArgs,
        node_name: &str,
        cluster_id: &str,
        metrics: NodeMetrics,
    ) -> Result<Self, String> {
        // The flags first: a missing one is said at once, before any region lookup
        // (which may wait on the instance metadata).
        required_flags(args)?;
        let region = region::resolve(args.aws_region.as_deref()).await?;
        let settings = settings_from_args(args, &region, node_name, cluster_id)?;
        let api = AwsApi::new(&region, args.aws_endpoint.as_deref(), metrics).await;
        Ok(Self::new(api, settings))
    }
}

/// A cluster id: 1 to 40 letters, digits, `-` or `_` (it goes into names ECS and Secrets
/// Manager restrict).
fn cluster_id(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 40
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!("{value:?}: 1 to 40 letters, digits, '-' or '_'"))
    }
}

/// Validated settings from flags and the resolved cluster id; errors name the flag.
pub fn settings_from_args(
    args: &FargateArgs,
    region: &str,
    node_name: &str,
    cluster_id: &str,
) -> Result<FargateSettings, String> {
    required_flags(args)?;
    let default_cpu_millis =
        quantity::cpu_millis(&args.default_cpu).map_err(|e| format!("--default-cpu: {e}"))?;
    let default_memory_bytes =
        quantity::bytes(&args.default_memory).map_err(|e| format!("--default-memory: {e}"))?;
    Ok(FargateSettings {
        cluster: args.ecs_cluster.clone(),
        subnets: args.subnets.clone(),
        security_groups: args.security_groups.clone(),
        assign_public_ip: args.assign_public_ip,
        enable_exec: args.enable_exec,
        execution_role_arn: args.execution_role_arn.clone(),
        task_role_arn: args.task_role_arn.clone(),
        log_group: args.log_group.clone(),
        region: region.to_owned(),
        node_name: node_name.to_owned(),
        cluster_id: cluster_id.to_owned(),
        default_cpu_millis,
        default_memory_bytes,
        price: PricingConfig::default().fargate,
    })
}

/// The command line ECS Exec runs for `argv`: ExecuteCommand takes one string the agent
/// splits at spaces, so an argv is carried faithfully only when no argument is empty or
/// holds a space or a quote; any other is refused rather than joined into something else.
pub fn ecs_command_line(argv: &[String]) -> Result<String, ProviderError> {
    let plain = |arg: &String| {
        !arg.is_empty()
            && !arg
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\'))
    };
    if !argv.is_empty() && argv.iter().all(plain) {
        Ok(argv.join(" "))
    } else {
        Err(ProviderError::Invalid(format!(
            "ECS Exec takes one command line that it splits at spaces, so {argv:?} cannot \
             be passed as given (an argument is empty or holds a space or a quote); run a \
             shell (kubectl exec -it POD -- /bin/sh) and type the command there"
        )))
    }
}

/// The flags a Fargate node cannot run without; the error names the flag.
fn required_flags(args: &FargateArgs) -> Result<(), String> {
    if args.subnets.is_empty() {
        return Err("--subnets: at least one subnet id is required for awsvpc tasks".into());
    }
    if args.security_groups.is_empty() {
        return Err("--security-groups: at least one security group id is required".into());
    }
    if args.enable_exec && args.task_role_arn.is_none() {
        return Err(
            "--enable-exec: ECS Exec needs a task role (--task-role-arn) allowed the \
             ssmmessages actions; the task's own code runs as it"
                .into(),
        );
    }
    Ok(())
}

/// Where this node's pod secrets live: `spillway/<cluster id>/<node>/`.
fn secret_prefix(settings: &FargateSettings) -> String {
    format!("spillway/{}/{}/", settings.cluster_id, settings.node_name)
}

/// The secret of one pod (one per pod, so a retried create overwrites rather than adds).
fn secret_name(settings: &FargateSettings, pod_uid: &str) -> String {
    format!("{}{pod_uid}", secret_prefix(settings))
}

fn remote_status(pod_uid: &str, task: &TaskInfo) -> RemoteStatus {
    let phase = match task.last_status.as_str() {
        "RUNNING" => RemotePhase::Running,
        "DEACTIVATING" | "STOPPING" | "DEPROVISIONING" | "STOPPED" => RemotePhase::Stopped,
        _ => RemotePhase::Pending,
    };
    let containers = task
        .containers
        .iter()
        .map(|c| RemoteContainer {
            name: c.name.clone(),
            restarts: 0,
            healthy: match c.health_status.as_deref() {
                Some("HEALTHY") => Some(true),
                Some("UNHEALTHY") => Some(false),
                _ => None,
            },
            state: match (c.last_status.as_str(), phase) {
                ("STOPPED", _) | (_, RemotePhase::Stopped) => RemoteContainerState::Terminated {
                    // A task stopped from outside reports no exit code: count it as killed.
                    exit_code: c.exit_code.unwrap_or(137),
                    reason: match c.exit_code {
                        Some(0) => "Completed".into(),
                        Some(_) => "Error".into(),
                        None => c.reason.clone().unwrap_or_else(|| "Stopped".into()),
                    },
                    started_at: task.started_at.clone(),
                    finished_at: None,
                },
                ("RUNNING", _) => RemoteContainerState::Running {
                    started_at: task.started_at.clone(),
                },
                _ => RemoteContainerState::Waiting {
                    reason: "ContainerCreating".into(),
                },
            },
        })
        .collect();
    RemoteStatus {
        pod_uid: pod_uid.to_owned(),
        phase,
        containers,
        pod_ip: task.ip.clone(),
        started_at: task.started_at.clone(),
        stopped_reason: task.stopped_reason.clone(),
    }
}

impl<E: EcsApi> FargateProvider<E> {
    /// A provider over `api`.
    pub fn new(api: E, settings: FargateSettings) -> Self {
        Self {
            api,
            settings,
            known_families: tokio::sync::Mutex::new(HashSet::new()),
            tasks: Mutex::new(HashMap::new()),
            cpu_meters: Mutex::new(HashMap::new()),
        }
    }

    /// Stores the pod's Secret-derived env in its own Secrets Manager secret.
    async fn store_secrets(
        &self,
        pod_uid: &str,
        refs: &[translate::SecretRef],
        objects: &PodObjects,
    ) -> Result<String, ProviderError> {
        let mut values = serde_json::Map::new();
        for r in refs {
            match objects.secret_text(&r.secret, &r.key) {
                Some(value) => {
                    values.insert(r.json_key.clone(), serde_json::Value::String(value));
                }
                None if r.optional => {}
                None => {
                    return Err(ProviderError::Invalid(format!(
                        "secret {} (key {}) not found",
                        r.secret, r.key
                    )));
                }
            }
        }
        let json = serde_json::Value::Object(values).to_string();
        let tags = [
            (TAG_POD_UID, pod_uid),
            (TAG_NODE, self.settings.node_name.as_str()),
            (TAG_CLUSTER, self.settings.cluster_id.as_str()),
        ];
        self.api
            .put_secret(&secret_name(&self.settings, pod_uid), &json, &tags)
            .await
    }

    async fn ensure_task_definition(
        &self,
        request: &translate::FargateRequest,
    ) -> Result<(), ProviderError> {
        let family = &request.register.family;
        let mut known = self.known_families.lock().await;
        if known.contains(family) {
            return Ok(());
        }
        if !self.api.task_definition_exists(family).await? {
            self.api.register_task_definition(&request.register).await?;
        }
        known.insert(family.clone());
        Ok(())
    }

    /// One page forward: from the head of the stream (after `start_ms`) when `token` is
    /// `None`, else from where `token` points.
    async fn log_forward(
        &self,
        mut query: LogPageQuery,
        token: Option<&str>,
    ) -> Result<LogChunk, ProviderError> {
        query.from_head = true;
        query.limit = Some(LOG_PAGE_EVENTS);
        query.token = token.map(str::to_owned);
        let page = self.api.log_page(&query).await?;
        // CloudWatch hands back the token it was given once the stream has no more.
        let advanced = page.forward_token.is_some() && page.forward_token != query.token;
        let more = if page.lines.is_empty() || !advanced {
            None
        } else {
            page.forward_token.clone()
        };
        Ok(LogChunk {
            lines: page.lines,
            more,
            resume: page.forward_token.or(query.token),
            cut: false,
        })
    }

    /// The last `tail` lines, reading older pages until there are enough, within
    /// [`LOG_READ_CAP_BYTES`]; resumes after the newest line.
    async fn log_tail(
        &self,
        mut query: LogPageQuery,
        tail: usize,
    ) -> Result<LogChunk, ProviderError> {
        query.from_head = false;
        query.limit = Some(tail.clamp(1, LOG_PAGE_EVENTS));
        let mut newest_first: Vec<LogLine> = Vec::new();
        let (mut bytes, mut cut) = (0usize, false);
        let mut resume = None;
        loop {
            let page = self.api.log_page(&query).await?;
            if resume.is_none() {
                resume = page.forward_token.clone();
            }
            let empty = page.lines.is_empty();
            for line in page.lines.into_iter().rev() {
                if newest_first.len() == tail {
                    break;
                }
                let size = line.message.len() + 1;
                if bytes + size > LOG_READ_CAP_BYTES {
                    cut = true;
                    break;
                }
                bytes += size;
                newest_first.push(line);
            }
            let end = empty
                || cut
                || newest_first.len() >= tail
                || page.backward_token.is_none()
                || page.backward_token == query.token;
            if end {
                newest_first.reverse();
                return Ok(LogChunk {
                    lines: newest_first,
                    more: None,
                    resume,
                    cut,
                });
            }
            query.token = page.backward_token;
        }
    }

    async fn describe(&self, arns: &[String]) -> Result<Vec<TaskInfo>, ProviderError> {
        let mut tasks = Vec::with_capacity(arns.len());
        for chunk in arns.chunks(DESCRIBE_BATCH) {
            tasks.extend(
                self.api
                    .describe_tasks(&self.settings.cluster, chunk)
                    .await?,
            );
        }
        Ok(tasks)
    }
}

impl<E: EcsApi> Provider for FargateProvider<E> {
    fn name(&self) -> &'static str {
        "fargate"
    }

    /// A pod's `exec` probe becomes its container's ECS health check.
    fn runs_exec_probes(&self) -> bool {
        true
    }

    async fn setup_problems(&self) -> Vec<String> {
        let target = SetupTarget {
            cluster: self.settings.cluster.clone(),
            log_group: self.settings.log_group.clone(),
            region: self.settings.region.clone(),
            has_execution_role: self.settings.execution_role_arn.is_some(),
            subnets: self.settings.subnets.clone(),
            security_groups: self.settings.security_groups.clone(),
        };
        self.api.setup_problems(&target).await
    }

    async fn create(&self, pod: &Pod, objects: &PodObjects) -> Result<(), ProviderError> {
        let uid = crate::provider::pod_uid(pod)?;
        let previous = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&uid)
            .cloned();
        if let Some(record) = &previous {
            // Idempotent: a live task for this pod means there is nothing to do.
            let live = self
                .api
                .describe_tasks(&self.settings.cluster, std::slice::from_ref(&record.arn))
                .await?;
            if live
                .iter()
                .any(|t| t.last_status != "STOPPED" && t.last_status != "DEPROVISIONING")
            {
                return Ok(());
            }
        }
        let spot = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(keys::SPOT))
            .is_some_and(|v| v == "true");
        // A first pass tells which secrets the pod needs; only then is its secret written.
        let draft = translate::translate(pod, &self.settings, objects, None, spot)
            .map_err(|e| ProviderError::Invalid(e.to_string()))?;
        let secret_arn = if draft.secret_refs.is_empty() {
            None
        } else {
            Some(
                self.store_secrets(&uid, &draft.secret_refs, objects)
                    .await?,
            )
        };
        let mut request =
            translate::translate(pod, &self.settings, objects, secret_arn.as_deref(), spot)
                .map_err(|e| ProviderError::Invalid(e.to_string()))?;
        self.ensure_task_definition(&request).await?;
        let launches = previous.map(|r| r.launches).unwrap_or(0) + 1;
        if launches > 1 {
            // A relaunch needs a token of its own: ECS would answer the old one with the old task.
            request.run.client_token = format!("{uid}-r{launches}");
        }
        let task = self.api.run_task(&request.run).await?;
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).insert(
            uid,
            TaskRecord {
                arn: task.arn,
                launches,
                family: Some(request.run.task_definition.clone()),
            },
        );
        Ok(())
    }

    async fn delete(&self, pod_uid: &str, grace_seconds: i64) -> Result<(), ProviderError> {
        let record = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(pod_uid)
            .cloned();
        // The task first: its record goes only once ECS took the StopTask, so a failed
        // (throttled) stop is retried against the same task instead of being forgotten.
        if let Some(record) = &record {
            // The grace period travels as the container stopTimeout in the task
            // definition; StopTask sends SIGTERM and ECS waits that long before SIGKILL.
            let reason = format!("pod deleted (grace {grace_seconds}s)");
            match self
                .api
                .stop_task(&self.settings.cluster, &record.arn, &reason)
                .await
            {
                Ok(()) | Err(ProviderError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
            self.tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(pod_uid);
        }
        match self
            .api
            .delete_secret(&secret_name(&self.settings, pod_uid))
            .await
        {
            Ok(()) | Err(ProviderError::NotFound(_)) => {}
            Err(error) => return Err(error),
        }
        match record {
            Some(_) => Ok(()),
            None => Err(ProviderError::NotFound(pod_uid.to_owned())),
        }
    }

    async fn sweep(&self, live: &HashSet<String>) -> Result<usize, ProviderError> {
        // Tasks of this cluster's node for pods that are gone (the node was down when
        // they were deleted, or a stop was lost).
        let mut removed = 0;
        for (uid, _) in self.list().await? {
            if !live.contains(&uid) {
                tracing::warn!(pod_uid = %uid, "orphaned task; stopping it");
                match self.delete(&uid, 0).await {
                    Ok(()) | Err(ProviderError::NotFound(_)) => removed += 1,
                    Err(error) => return Err(error),
                }
            }
        }
        // Secrets of pods that are gone: a crash between writing the secret and RunTask
        // leaves one with no task to find it by.
        let prefix = secret_prefix(&self.settings);
        for name in self.api.list_secrets(&prefix).await? {
            let Some(uid) = name.strip_prefix(&prefix) else {
                continue;
            };
            if !live.contains(uid) {
                tracing::warn!(pod_uid = %uid, "orphaned secret; deleting it");
                match self.api.delete_secret(&name).await {
                    Ok(()) | Err(ProviderError::NotFound(_)) => removed += 1,
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(removed)
    }

    async fn list(&self) -> Result<HashMap<String, RemoteStatus>, ProviderError> {
        let arns = self
            .api
            .list_tasks(&self.settings.cluster, &self.settings.started_by())
            .await?;
        let tasks = self.describe(&arns).await?;
        let mut by_pod: HashMap<String, Vec<TaskInfo>> = HashMap::new();
        for task in tasks {
            let live = task.last_status != "STOPPED";
            if let (Some(uid), true) = (task.tags.get(TAG_POD_UID), live) {
                by_pod.entry(uid.clone()).or_default().push(task);
            }
        }
        let mut out = HashMap::new();
        let mut records = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (uid, mut tasks) in by_pod {
            // Should a crash ever have left two tasks for one pod, keep the oldest.
            tasks.sort_by_key(|t| t.created_ms);
            for extra in &tasks[1..] {
                tracing::warn!(pod_uid = %uid, task = %extra.arn, "duplicate task for one pod; stopping it");
                self.api
                    .stop_task(
                        &self.settings.cluster,
                        &extra.arn,
                        "duplicate task for one pod",
                    )
                    .await?;
            }
            let keep = &tasks[0];
            records
                .entry(uid.clone())
                .or_insert(TaskRecord {
                    arn: keep.arn.clone(),
                    launches: 1,
                    family: keep.family.clone(),
                })
                .arn = keep.arn.clone();
            out.insert(uid.clone(), remote_status(&uid, keep));
        }
        *self.tasks.lock().unwrap_or_else(|p| p.into_inner()) = records;
        Ok(out)
    }

    async fn statuses(
        &self,
        pod_uids: &[String],
    ) -> Result<HashMap<String, RemoteStatus>, ProviderError> {
        let records = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let wanted: HashMap<String, String> = pod_uids
            .iter()
            .filter_map(|uid| records.get(uid).map(|r| (r.arn.clone(), uid.clone())))
            .collect();
        let arns: Vec<String> = wanted.keys().cloned().collect();
        let tasks = self.describe(&arns).await?;
        Ok(tasks
            .iter()
            .filter_map(|task| {
                wanted
                    .get(&task.arn)
                    .map(|uid| (uid.clone(), remote_status(uid, task)))
            })
            .collect())
    }

    async fn usage(&self, pods: &[Pod]) -> Result<HashMap<String, PodUsage>, ProviderError> {
        let records = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut keys = Vec::new();
        for pod in pods {
            let Some(record) = pod.metadata.uid.as_ref().and_then(|uid| records.get(uid)) else {
                continue;
            };
            let Some(family) = &record.family else {
                continue;
            };
            for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
                keys.push(ContainerMetricKey {
                    task_id: task_id_of(&record.arn).to_owned(),
                    family: family.clone(),
                    container: container.name.clone(),
                });
            }
        }
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let metrics = self
            .api
            .container_metrics(cluster_name(&self.settings.cluster), &keys)
            .await?;
        let tasks: HashMap<String, String> = records
            .iter()
            .map(|(uid, r)| (task_id_of(&r.arn).to_owned(), uid.clone()))
            .collect();
        let mut meters = self.cpu_meters.lock().unwrap_or_else(|p| p.into_inner());
        Ok(usage_from_insights(
            pods,
            &tasks,
            &metrics,
            &mut meters,
            spillway_common::time::now_millis(),
        ))
    }

    async fn exec(
        &self,
        pod_uid: &str,
        container: &str,
        command: &ExecCommand,
        io: SessionIo,
    ) -> Result<SessionEnd, ProviderError> {
        if !self.settings.enable_exec {
            return Err(ProviderError::Invalid(
                "kubectl exec on Fargate burst pods needs ECS Exec, which this node runs \
                 tasks without: turn on --enable-exec (controller.fargate.enableExec; it needs \
                 a task role with the ssmmessages actions, docs/eks.md); tasks started before \
                 keep it off until they are replaced"
                    .into(),
            ));
        }
        let line = ecs_command_line(&command.argv)?;
        let arn = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(pod_uid)
            .map(|record| record.arn.clone())
            .ok_or_else(|| ProviderError::NotFound(format!("no task for pod {pod_uid}")))?;
        let session = self
            .api
            .execute_command(&self.settings.cluster, &arn, container, &line)
            .await?;
        tracing::info!(pod_uid, container, session = %session.session_id, "ECS Exec session opened");
        super::exec_session::run(&session.stream_url, &session.token, io, command.tty).await
    }

    async fn attach(
        &self,
        _pod_uid: &str,
        _container: &str,
        _tty: bool,
        _io: SessionIo,
    ) -> Result<SessionEnd, ProviderError> {
        Err(ProviderError::Invalid(
            "kubectl attach is not supported on Fargate burst pods: ECS offers no way to \
             attach to a task's main process; use kubectl logs -f, or kubectl exec"
                .into(),
        ))
    }

    async fn logs(
        &self,
        pod_uid: &str,
        container: &str,
        options: &LogOptions,
        from: Option<&str>,
    ) -> Result<LogChunk, ProviderError> {
        let record = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(pod_uid)
            .cloned()
            .ok_or_else(|| ProviderError::NotFound(format!("no task for pod {pod_uid}")))?;
        let task_id = record.arn.rsplit('/').next().unwrap_or_default();
        // awslogs names streams <prefix>/<container>/<task id>.
        let stream = format!("spillway/{container}/{task_id}");
        let start_ms = options.since_seconds.map(|s| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            now - s * 1000
        });
        let query = LogPageQuery {
            group: self.settings.log_group.clone(),
            stream,
            start_ms,
            ..LogPageQuery::default()
        };
        match (from, options.tail_lines) {
            (Some(token), _) => self.log_forward(query, Some(token)).await,
            (None, Some(tail)) => self.log_tail(query, tail).await,
            (None, None) => self.log_forward(query, None).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::fargate::aws::LogPage;
    use crate::fargate::ecs_json::{RegisterTaskDefinition, RunTask};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An in-memory stand-in for the AWS calls, recording what was asked.
    #[derive(Default)]
    struct FakeEcs {
        tasks: Mutex<Vec<TaskInfo>>,
        registered: Mutex<Vec<String>>,
        run_calls: Mutex<Vec<RunTask>>,
        stopped: Mutex<Vec<String>>,
        next: AtomicUsize,
        /// StopTask calls still to answer with throttling.
        throttled_stops: AtomicUsize,
        log_lines: Mutex<Vec<LogLine>>,
        secrets: Mutex<Vec<String>>,
        /// Container Insights datapoints by container, and the keys asked for.
        insights: Mutex<Vec<ContainerMetrics>>,
        insights_asked: Mutex<Vec<ContainerMetricKey>>,
    }

    impl FakeEcs {
        fn add_task(&self, uid: &str, created_ms: i64) -> String {
            let arn = format!(
                "arn:aws:ecs:us-east-1:0:task/c/{}",
                self.next.fetch_add(1, Ordering::SeqCst)
            );
            self.tasks.lock().unwrap().push(TaskInfo {
                arn: arn.clone(),
                last_status: "RUNNING".into(),
                tags: BTreeMap::from([(TAG_POD_UID.to_owned(), uid.to_owned())]),
                containers: vec![],
                ip: Some("10.0.0.1".into()),
                started_at: None,
                created_ms,
                stopped_reason: None,
                family: None,
            });
            arn
        }
    }

    impl EcsApi for FakeEcs {
        async fn setup_problems(&self, target: &SetupTarget) -> Vec<String> {
            crate::fargate::setup_check::execution_role_problem(target)
                .into_iter()
                .collect()
        }
        async fn register_task_definition(
            &self,
            request: &RegisterTaskDefinition,
        ) -> Result<(), ProviderError> {
            self.registered.lock().unwrap().push(request.family.clone());
            Ok(())
        }
        async fn task_definition_exists(&self, family: &str) -> Result<bool, ProviderError> {
            Ok(self.registered.lock().unwrap().iter().any(|f| f == family))
        }
        async fn run_task(&self, request: &RunTask) -> Result<TaskInfo, ProviderError> {
            self.run_calls.lock().unwrap().push(request.clone());
            let uid = request
                .tags
                .iter()
                .find(|t| t.key == TAG_POD_UID)
                .map(|t| t.value.clone())
                .unwrap_or_default();
            let arn = self.add_task(&uid, 0);
            Ok(self
                .tasks
                .lock()
                .unwrap()
                .iter()
                .find(|t| t.arn == arn)
                .cloned()
                .unwrap())
        }
        async fn list_tasks(&self, _: &str, _: &str) -> Result<Vec<String>, ProviderError> {
            Ok(self
                .tasks
                .lock()
                .unwrap()
                .iter()
                .filter(|t| t.last_status != "STOPPED")
                .map(|t| t.arn.clone())
                .collect())
        }
        async fn describe_tasks(
            &self,
            _: &str,
            arns: &[String],
        ) -> Result<Vec<TaskInfo>, ProviderError> {
            assert!(
                arns.len() <= DESCRIBE_BATCH,
                "DescribeTasks takes at most 100 tasks"
            );
            Ok(self
                .tasks
                .lock()
                .unwrap()
                .iter()
                .filter(|t| arns.contains(&t.arn))
                .cloned()
                .collect())
        }
        async fn stop_task(&self, _: &str, arn: &str, _: &str) -> Result<(), ProviderError> {
            let throttled = self
                .throttled_stops
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if throttled {
                return Err(ProviderError::Throttled("Rate exceeded".into()));
            }
            self.stopped.lock().unwrap().push(arn.to_owned());
            for task in self
                .tasks
                .lock()
                .unwrap()
                .iter_mut()
                .filter(|t| t.arn == arn)
            {
                task.last_status = "STOPPED".into();
            }
            Ok(())
        }
        async fn put_secret(
            &self,
            name: &str,
            _: &str,
            _: &[(&str, &str)],
        ) -> Result<String, ProviderError> {
            let mut secrets = self.secrets.lock().unwrap();
            if !secrets.iter().any(|s| s == name) {
                secrets.push(name.to_owned());
            }
            Ok(format!(
                "arn:aws:secretsmanager:us-east-1:0:secret:{name}-AbCdEf"
            ))
        }
        async fn list_secrets(&self, prefix: &str) -> Result<Vec<String>, ProviderError> {
            Ok(self
                .secrets
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.starts_with(prefix))
                .cloned()
                .collect())
        }
        async fn delete_secret(&self, name: &str) -> Result<(), ProviderError> {
            self.secrets.lock().unwrap().retain(|s| s != name);
            Ok(())
        }
        /// Pages of 3 over `log_lines`; tokens are indices as text.
        async fn container_metrics(
            &self,
            _: &str,
            containers: &[ContainerMetricKey],
        ) -> Result<Vec<ContainerMetrics>, ProviderError> {
            self.insights(containers).await
        }
        async fn log_page(&self, query: &LogPageQuery) -> Result<LogPage, ProviderError> {
            let all = self.log_lines.lock().unwrap().clone();
            let size = query.limit.unwrap_or(3).min(3);
            let (start, end) = match (&query.token, query.from_head) {
                (Some(token), _) => {
                    let (dir, at) = token.split_once(':').unwrap();
                    let at: usize = at.parse().unwrap();
                    if dir == "f" {
                        (at, (at + size).min(all.len()))
                    } else {
                        (at.saturating_sub(size), at)
                    }
                }
                (None, true) => (0, size.min(all.len())),
                (None, false) => (all.len().saturating_sub(size), all.len()),
            };
            Ok(LogPage {
                lines: all[start..end].to_vec(),
                forward_token: Some(format!("f:{end}")),
                backward_token: Some(format!("b:{start}")),
            })
        }
    }

    impl FakeEcs {
        async fn insights(
            &self,
            containers: &[ContainerMetricKey],
        ) -> Result<Vec<ContainerMetrics>, ProviderError> {
            self.insights_asked
                .lock()
                .unwrap()
                .extend(containers.iter().cloned());
            Ok(self
                .insights
                .lock()
                .unwrap()
                .iter()
                .filter(|m| containers.contains(&m.key))
                .cloned()
                .collect())
        }
    }

    fn provider() -> FargateProvider<FakeEcs> {
        FargateProvider::new(
            FakeEcs::default(),
            FargateSettings::offline(PricingConfig::default().fargate),
        )
    }

    fn pod(uid: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("p-{uid}"), "namespace": "ns", "uid": uid},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn usage_comes_from_container_insights_for_the_pods_tasks_only() {
        let provider = provider();
        let (mut a, b) = (pod("a"), pod("b"));
        provider.create(&a, &PodObjects::default()).await.unwrap();
        provider.create(&b, &PodObjects::default()).await.unwrap();
        a.status = Some(
            serde_json::from_value(
                json!({"containerStatuses": [{"name": "app", "image": "nginx",
                "imageID": "", "ready": true, "restartCount": 0,
                "state": {"running": {"startedAt": "2026-11-29T10:00:00Z"}}}]}),
            )
            .unwrap(),
        );
        let record = provider.tasks.lock().unwrap()["a"].clone();
        let key = ContainerMetricKey {
            task_id: task_id_of(&record.arn).to_owned(),
            family: record.family.clone().unwrap(),
            container: "app".into(),
        };
        // 512 CPU units (half a vCPU) and 96 MiB for a's container; nothing for b yet.
        provider
            .api
            .insights
            .lock()
            .unwrap()
            .push(ContainerMetrics {
                key: key.clone(),
                cpu_units: 512.0,
                memory_mib: 96.0,
                at_ms: 1,
            });
        let usage = provider.usage(&[a, b]).await.unwrap();
        assert!(
            !usage.contains_key("b"),
            "no datapoints must not read as zero"
        );
        let app = &usage["a"].containers[0];
        assert_eq!(app.cpu_nano_cores, 500_000_000);
        assert_eq!(app.memory_working_set_bytes, 96 << 20);
        assert_eq!(app.started_at_ms, Some(1_795_946_400_000));
        assert!(
            app.cpu_core_nano_seconds > 0,
            "integrated since the container started"
        );
        // Asked by task id, family and container name, as Container Insights keys them.
        let asked = provider.api.insights_asked.lock().unwrap().clone();
        assert!(asked.contains(&key), "{asked:?}");
        assert_eq!(asked.len(), 2);
    }

    #[test]
    fn the_cluster_name_dimension_comes_from_a_name_or_an_arn() {
        assert_eq!(cluster_name("spillway"), "spillway");
        assert_eq!(
            cluster_name("arn:aws:ecs:us-east-1:123456789012:cluster/spillway"),
            "spillway"
        );
    }

    #[tokio::test]
    async fn identical_pods_register_one_definition_and_create_is_idempotent() {
        let provider = provider();
        for uid in ["a", "b", "c"] {
            provider
                .create(&pod(uid), &PodObjects::default())
                .await
                .unwrap();
        }
        provider
            .create(&pod("a"), &PodObjects::default())
            .await
            .unwrap();
        assert_eq!(provider.api.registered.lock().unwrap().len(), 1);
        assert_eq!(
            provider.api.run_calls.lock().unwrap().len(),
            3,
            "a live task is not started twice"
        );
    }

    #[tokio::test]
    async fn a_throttled_stop_keeps_the_task_to_stop_it_on_the_retry() {
        let provider = provider();
        provider
            .create(&pod("a"), &PodObjects::default())
            .await
            .unwrap();
        let arn = provider.tasks.lock().unwrap()["a"].arn.clone();
        provider.api.throttled_stops.store(1, Ordering::SeqCst);
        assert!(matches!(
            provider.delete("a", 30).await,
            Err(ProviderError::Throttled(_))
        ));
        // The retry stops the same task (not "not found", which would drop the pod with
        // its task still running).
        provider.delete("a", 30).await.unwrap();
        assert_eq!(*provider.api.stopped.lock().unwrap(), vec![arn]);
        assert!(matches!(
            provider.delete("a", 30).await,
            Err(ProviderError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn the_sweep_removes_tasks_and_secrets_of_pods_that_are_gone() {
        let provider = provider();
        provider.api.add_task("gone", 1);
        provider.api.add_task("live", 1);
        let settings = &provider.settings;
        for uid in ["gone", "crashed-before-run-task", "live"] {
            provider
                .api
                .put_secret(&secret_name(settings, uid), "{}", &[])
                .await
                .unwrap();
        }
        // Another node's (or cluster's) secret is not ours to touch.
        let foreign = "spillway/other-cluster/spillway-fargate/gone".to_owned();
        provider.api.put_secret(&foreign, "{}", &[]).await.unwrap();
        let live: HashSet<String> = ["live".to_owned()].into();
        let removed = provider.sweep(&live).await.unwrap();
        // `gone` (its task, with its secret) and the crash's lone secret.
        assert_eq!(removed, 2);
        let secrets = provider.api.secrets.lock().unwrap().clone();
        assert_eq!(secrets, vec![secret_name(settings, "live"), foreign]);
        assert_eq!(provider.api.stopped.lock().unwrap().len(), 1);
    }

    #[test]
    fn ecs_exec_carries_an_argv_only_when_splitting_at_spaces_gives_it_back() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ecs_command_line(&argv(&["ls", "-la", "/tmp"])).unwrap(),
            "ls -la /tmp"
        );
        for refused in [
            &["sh", "-c", "echo hi"][..],
            &["echo", ""][..],
            &["echo", "it's"][..],
            &[][..],
        ] {
            let error = ecs_command_line(&argv(refused)).unwrap_err();
            assert!(
                error.to_string().contains("splits at spaces"),
                "{refused:?}"
            );
        }
    }

    #[tokio::test]
    async fn logs_longer_than_a_page_are_read_whole_and_tails_are_exact() {
        let provider = provider();
        provider
            .create(&pod("a"), &PodObjects::default())
            .await
            .unwrap();
        // Many lines share a timestamp: paging by token drops none of them.
        let lines: Vec<LogLine> = (0..10)
            .map(|i| LogLine {
                timestamp_ms: 1000 + i / 4,
                message: format!("line {i}"),
            })
            .collect();
        *provider.api.log_lines.lock().unwrap() = lines.clone();
        // A whole read, page after page; how many pages it took.
        let read = |tail: Option<usize>| {
            let provider = &provider;
            async move {
                let options = LogOptions {
                    tail_lines: tail,
                    ..LogOptions::default()
                };
                let mut chunk = provider.logs("a", "app", &options, None).await.unwrap();
                let (mut all, mut pages) = (Vec::new(), 1);
                loop {
                    all.append(&mut chunk.lines);
                    let Some(more) = chunk.more.take() else {
                        return (all, pages, chunk.resume);
                    };
                    chunk = provider
                        .logs("a", "app", &options, Some(&more))
                        .await
                        .unwrap();
                    pages += 1;
                }
            }
        };
        let (all, pages, resume) = read(None).await;
        assert_eq!(all, lines, "all four pages, in order");
        assert!(pages >= 4, "one page at a time, never all at once: {pages}");
        assert_eq!(read(Some(5)).await.0, lines[5..].to_vec());
        let (tail, _, tail_resume) = read(Some(50)).await;
        assert_eq!(tail, lines);
        // Following resumes after the newest line: only lines written later come.
        assert_eq!(resume.as_deref(), Some("f:10"));
        assert_eq!(tail_resume.as_deref(), Some("f:10"));
        provider.api.log_lines.lock().unwrap().push(LogLine {
            timestamp_ms: 2000,
            message: "new".into(),
        });
        let followed = provider
            .logs("a", "app", &LogOptions::default(), resume.as_deref())
            .await
            .unwrap();
        assert_eq!(followed.lines.len(), 1);
        assert_eq!(followed.lines[0].message, "new");
    }

    #[tokio::test]
    async fn a_tail_is_held_within_the_read_cap() {
        let provider = provider();
        provider
            .create(&pod("a"), &PodObjects::default())
            .await
            .unwrap();
        // Four lines of a third of the cap each: only the newest two fit.
        let big = "x".repeat(LOG_READ_CAP_BYTES / 3);
        *provider.api.log_lines.lock().unwrap() = (0..4)
            .map(|i| LogLine {
                timestamp_ms: i,
                message: format!("{i}{big}"),
            })
            .collect();
        let options = LogOptions {
            tail_lines: Some(4),
            ..LogOptions::default()
        };
        let chunk = provider.logs("a", "app", &options, None).await.unwrap();
        assert!(chunk.cut);
        let firsts: Vec<char> = chunk
            .lines
            .iter()
            .filter_map(|l| l.message.chars().next())
            .collect();
        assert_eq!(firsts, vec!['2', '3'], "the newest lines, oldest first");
    }

    #[tokio::test]
    async fn relaunch_uses_a_token_of_its_own() {
        let provider = provider();
        provider
            .create(&pod("a"), &PodObjects::default())
            .await
            .unwrap();
        let arn = provider.api.run_calls.lock().unwrap().len();
        assert_eq!(arn, 1);
        let first = provider.tasks.lock().unwrap()["a"].arn.clone();
        provider.api.stop_task("c", &first, "exited").await.unwrap();
        provider
            .create(&pod("a"), &PodObjects::default())
            .await
            .unwrap();
        let calls = provider.api.run_calls.lock().unwrap();
        assert_eq!(calls[0].client_token, "a");
        assert_eq!(calls[1].client_token, "a-r2");
    }

    #[tokio::test]
    async fn list_adopts_by_tag_and_stops_duplicates() {
        let provider = provider();
        let oldest = provider.api.add_task("a", 1);
        let duplicate = provider.api.add_task("a", 2);
        provider.api.add_task("b", 1);
        let listed = provider.list().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(*provider.api.stopped.lock().unwrap(), vec![duplicate]);
        assert_eq!(provider.tasks.lock().unwrap()["a"].arn, oldest);
        // Adopted: a create for the same pod starts nothing.
        provider
            .create(&pod("a"), &PodObjects::default())
            .await
            .unwrap();
        assert!(provider.api.run_calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn statuses_are_read_in_batches_of_100() {
        let provider = provider();
        let uids: Vec<String> = (0..250).map(|i| format!("u{i}")).collect();
        for uid in &uids {
            provider.api.add_task(uid, 0);
        }
        provider.list().await.unwrap();
        let statuses = provider.statuses(&uids).await.unwrap();
        assert_eq!(statuses.len(), 250);
        assert!(statuses.values().all(|s| s.phase == RemotePhase::Running && s.pod_ip.as_deref() == Some("10.0.0.1")));
    }

    #[tokio::test]
    async fn delete_without_a_task_is_not_found() {
        let provider = provider();
        assert!(matches!(
            provider.delete("nope", 30).await,
            Err(ProviderError::NotFound(_))
        ));
        provider
            .create(&pod("a"), &PodObjects::default())
            .await
            .unwrap();
        provider.delete("a", 30).await.unwrap();
        assert_eq!(provider.api.stopped.lock().unwrap().len(), 1);
    }
}
