//! The Fargate provider: pods become ECS tasks. Task definitions are cached by content
//! hash, Secret-derived env goes to one Secrets Manager secret per pod, every task carries
//! the pod UID in tags and `clientToken`, and listing by `startedBy` finds what a previous
//! run of the node left, so nothing is duplicated or leaked.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use clap::Args;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use spillway_common::config::PricingConfig;
use spillway_common::keys;
use spillway_common::quantity;

use super::TAG_POD_UID;
use super::aws::{AwsApi, EcsApi, TaskInfo};
use super::translate::{self, EnvLookup, FargateSettings};
use crate::metrics::NodeMetrics;
use crate::provider::{
    LogLine, LogOptions, Provider, ProviderError, RemoteContainer, RemoteContainerState,
    RemotePhase, RemoteStatus,
};

/// DescribeTasks accepts at most this many tasks per call (ECS API reference).
pub const DESCRIBE_BATCH: usize = 100;

/// Fargate flags.
#[derive(Args, Clone, Debug)]
pub struct FargateArgs {
    /// ECS cluster to run tasks in.
    #[arg(long, default_value = "default", env = "SPILLWAY_ECS_CLUSTER")]
    pub ecs_cluster: String,
    /// Subnet ids for task ENIs (comma-separated).
    #[arg(long, value_delimiter = ',', env = "SPILLWAY_SUBNETS")]
    pub subnets: Vec<String>,
    /// Security group ids for task ENIs (comma-separated).
    #[arg(long, value_delimiter = ',', env = "SPILLWAY_SECURITY_GROUPS")]
    pub security_groups: Vec<String>,
    /// Give tasks a public IP (needed without a NAT gateway to pull public images).
    #[arg(long, env = "SPILLWAY_ASSIGN_PUBLIC_IP")]
    pub assign_public_ip: bool,
    /// Task execution role (image pulls, logs, secrets).
    #[arg(long, env = "SPILLWAY_EXECUTION_ROLE_ARN")]
    pub execution_role_arn: Option<String>,
    /// Task role the pods' code runs as.
    #[arg(long, env = "SPILLWAY_TASK_ROLE_ARN")]
    pub task_role_arn: Option<String>,
    /// CloudWatch Logs group for container output.
    #[arg(long, default_value = "/spillway/pods", env = "SPILLWAY_LOG_GROUP")]
    pub log_group: String,
    /// AWS region.
    #[arg(long, default_value = "us-east-1", env = "AWS_REGION")]
    pub aws_region: String,
    /// Override of the AWS endpoint (a local test endpoint); unset in production.
    #[arg(long, env = "SPILLWAY_AWS_ENDPOINT")]
    pub aws_endpoint: Option<String>,
    /// CPU for pods that request none.
    #[arg(long, default_value = "250m", env = "SPILLWAY_DEFAULT_CPU")]
    pub default_cpu: String,
    /// Memory for pods that request none.
    #[arg(long, default_value = "512Mi", env = "SPILLWAY_DEFAULT_MEMORY")]
    pub default_memory: String,
}

/// The provider, generic over the AWS calls so its logic is tested with a fake.
pub struct FargateProvider<E: EcsApi> {
    api: E,
    settings: FargateSettings,
    client: Option<kube::Client>,
    known_families: Mutex<HashSet<String>>,
    tasks: Mutex<HashMap<String, TaskRecord>>,
}

#[derive(Clone, Debug)]
struct TaskRecord {
    arn: String,
    launches: u32,
}

impl FargateProvider<AwsApi> {
    /// The real provider from flags.
    pub async fn from_args(
        args: &FargateArgs,
        node_name: &str,
        metrics: NodeMetrics,
    ) -> Result<Self, String> {
        let settings = settings_from_args(args, node_name)?;
        let api = AwsApi::new(&args.aws_region, args.aws_endpoint.as_deref(), metrics).await;
        let client = kube::Client::try_default()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self::new(api, settings, Some(client)))
    }
}

/// Validated settings from flags; errors name the flag.
pub fn settings_from_args(args: &FargateArgs, node_name: &str) -> Result<FargateSettings, String> {
    if args.subnets.is_empty() {
        return Err("--subnets: at least one subnet id is required for awsvpc tasks".into());
    }
    if args.security_groups.is_empty() {
        return Err("--security-groups: at least one security group id is required".into());
    }
    let default_cpu_millis =
        quantity::cpu_millis(&args.default_cpu).map_err(|e| format!("--default-cpu: {e}"))?;
    let default_memory_bytes =
        quantity::bytes(&args.default_memory).map_err(|e| format!("--default-memory: {e}"))?;
    Ok(FargateSettings {
        cluster: args.ecs_cluster.clone(),
        subnets: args.subnets.clone(),
        security_groups: args.security_groups.clone(),
        assign_public_ip: args.assign_public_ip,
        execution_role_arn: args.execution_role_arn.clone(),
        task_role_arn: args.task_role_arn.clone(),
        log_group: args.log_group.clone(),
        region: args.aws_region.clone(),
        node_name: node_name.to_owned(),
        default_cpu_millis,
        default_memory_bytes,
        price: PricingConfig::default().fargate,
    })
}

/// ConfigMaps and Secrets fetched for one pod.
#[derive(Default)]
struct Fetched {
    config_maps: HashMap<String, BTreeMap<String, String>>,
    secrets: HashMap<String, BTreeMap<String, String>>,
}

impl EnvLookup for Fetched {
    fn config_map_value(&self, name: &str, key: &str) -> Option<String> {
        self.config_maps.get(name)?.get(key).cloned()
    }
    fn config_map_entries(&self, name: &str) -> Option<Vec<(String, String)>> {
        Some(
            self.config_maps
                .get(name)?
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }
    fn secret_keys(&self, name: &str) -> Option<Vec<String>> {
        Some(self.secrets.get(name)?.keys().cloned().collect())
    }
}

fn secret_name(pod_uid: &str) -> String {
    format!("spillway/{pod_uid}")
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
    /// A provider over `api`; `client` reads ConfigMaps and Secrets (None: pods may not
    /// reference any).
    pub fn new(api: E, settings: FargateSettings, client: Option<kube::Client>) -> Self {
        Self {
            api,
            settings,
            client,
            known_families: Mutex::new(HashSet::new()),
            tasks: Mutex::new(HashMap::new()),
        }
    }

    async fn fetch_env_sources(&self, pod: &Pod) -> Result<Fetched, ProviderError> {
        let mut fetched = Fetched::default();
        let Some(spec) = pod.spec.as_ref() else {
            return Ok(fetched);
        };
        let mut config_maps = HashSet::new();
        let mut secrets = HashSet::new();
        for container in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            for var in container.env.iter().flatten() {
                if let Some(source) = &var.value_from {
                    if let Some(cm) = &source.config_map_key_ref {
                        config_maps.insert(cm.name.clone());
                    }
                    if let Some(secret) = &source.secret_key_ref {
                        secrets.insert(secret.name.clone());
                    }
                }
            }
            for from in container.env_from.iter().flatten() {
                if let Some(cm) = &from.config_map_ref {
                    config_maps.insert(cm.name.clone());
                }
                if let Some(secret) = &from.secret_ref {
                    secrets.insert(secret.name.clone());
                }
            }
        }
        if config_maps.is_empty() && secrets.is_empty() {
            return Ok(fetched);
        }
        let client = self.client.clone().ok_or_else(|| {
            ProviderError::Invalid(
                "pod references ConfigMaps or Secrets but no client is configured".into(),
            )
        })?;
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        for name in config_maps {
            if let Some(cm) = cm_api
                .get_opt(&name)
                .await
                .map_err(|e| ProviderError::Transient(e.to_string()))?
            {
                fetched
                    .config_maps
                    .insert(name, cm.data.unwrap_or_default());
            }
        }
        let secret_api: Api<Secret> = Api::namespaced(client, namespace);
        for name in secrets {
            if let Some(secret) = secret_api
                .get_opt(&name)
                .await
                .map_err(|e| ProviderError::Transient(e.to_string()))?
            {
                let mut values: BTreeMap<String, String> = BTreeMap::new();
                for (k, v) in secret.data.unwrap_or_default() {
                    values.insert(k, String::from_utf8_lossy(&v.0).into_owned());
                }
                for (k, v) in secret.string_data.unwrap_or_default() {
                    values.insert(k, v);
                }
                fetched.secrets.insert(name, values);
            }
        }
        Ok(fetched)
    }

    /// Stores the pod's Secret-derived env in its own Secrets Manager secret.
    async fn store_secrets(
        &self,
        pod_uid: &str,
        refs: &[translate::SecretRef],
        fetched: &Fetched,
    ) -> Result<String, ProviderError> {
        let mut values = serde_json::Map::new();
        for r in refs {
            match fetched.secrets.get(&r.secret).and_then(|s| s.get(&r.key)) {
                Some(value) => {
                    values.insert(r.json_key.clone(), serde_json::Value::String(value.clone()));
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
        self.api.put_secret(&secret_name(pod_uid), &json).await
    }

    async fn ensure_task_definition(
        &self,
        request: &translate::FargateRequest,
    ) -> Result<(), ProviderError> {
        let family = &request.register.family;
        if self
            .known_families
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(family)
        {
            return Ok(());
        }
        if !self.api.task_definition_exists(family).await? {
            self.api.register_task_definition(&request.register).await?;
        }
        self.known_families
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(family.clone());
        Ok(())
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

    async fn create(&self, pod: &Pod) -> Result<(), ProviderError> {
        let uid = pod
            .metadata
            .uid
            .clone()
            .ok_or_else(|| ProviderError::Invalid("pod has no uid".into()))?;
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
        let fetched = self.fetch_env_sources(pod).await?;
        let spot = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(keys::SPOT))
            .is_some_and(|v| v == "true");
        // A first pass tells which secrets the pod needs; only then is its secret written.
        let draft = translate::translate(pod, &self.settings, &fetched, None, spot)
            .map_err(|e| ProviderError::Invalid(e.to_string()))?;
        let secret_arn = if draft.secret_refs.is_empty() {
            None
        } else {
            Some(
                self.store_secrets(&uid, &draft.secret_refs, &fetched)
                    .await?,
            )
        };
        let mut request =
            translate::translate(pod, &self.settings, &fetched, secret_arn.as_deref(), spot)
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
            },
        );
        Ok(())
    }

    async fn delete(&self, pod_uid: &str, grace_seconds: i64) -> Result<(), ProviderError> {
        let record = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pod_uid);
        let secret_result = self.api.delete_secret(&secret_name(pod_uid)).await;
        if let Err(error) = secret_result
            && !matches!(error, ProviderError::NotFound(_))
        {
            tracing::warn!(%error, pod_uid, "cannot delete the pod's secret");
        }
        let Some(record) = record else {
            return Err(ProviderError::NotFound(pod_uid.to_owned()));
        };
        // The grace period travels as the container stopTimeout in the task definition;
        // StopTask sends SIGTERM and ECS waits that long before SIGKILL.
        let reason = format!("pod deleted (grace {grace_seconds}s)");
        self.api
            .stop_task(&self.settings.cluster, &record.arn, &reason)
            .await
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

    async fn logs(
        &self,
        pod_uid: &str,
        container: &str,
        options: &LogOptions,
    ) -> Result<Vec<LogLine>, ProviderError> {
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
        self.api
            .log_events(
                &self.settings.log_group,
                &stream,
                start_ms,
                options.tail_lines,
                options.tail_lines.is_some(),
            )
            .await
    }
}
