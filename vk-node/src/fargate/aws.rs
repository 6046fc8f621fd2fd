//! The thin AWS SDK layer behind [`EcsApi`]: each call rate-limited below the published
//! ECS quotas, retried by the SDK's standard mode on throttling (exponential backoff with
//! jitter), counted in metrics, and mapped to our typed errors. No logic lives here.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ecs::config::ProvideCredentials;
use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::types as ecs;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;

use super::ecs_json::{self, RegisterTaskDefinition, RunTask};
use super::setup_check::{self, SetupTarget};
use crate::metrics::NodeMetrics;
use crate::provider::{LogLine, ProviderError};

/// One ECS task as the provider sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    /// Task ARN.
    pub arn: String,
    /// `PROVISIONING` … `RUNNING` … `STOPPED`.
    pub last_status: String,
    /// Tags (only when described with tags).
    pub tags: BTreeMap<String, String>,
    /// Containers.
    pub containers: Vec<ContainerInfo>,
    /// Private IPv4 of the task's ENI.
    pub ip: Option<String>,
    /// RFC 3339.
    pub started_at: Option<String>,
    /// Epoch milliseconds of creation (orders duplicates).
    pub created_ms: i64,
    /// Why it stopped.
    pub stopped_reason: Option<String>,
    /// Family of the task's definition (Container Insights metrics carry it).
    pub family: Option<String>,
}

/// The family in a task definition ARN (`…:task-definition/<family>:<revision>`).
pub fn family_of(task_definition_arn: &str) -> Option<String> {
    let (_, tail) = task_definition_arn.rsplit_once("task-definition/")?;
    let family = tail.rsplit_once(':').map_or(tail, |(family, _)| family);
    (!family.is_empty()).then(|| family.to_owned())
}

/// The task ID in a task ARN (its last path segment), as Container Insights names tasks.
pub fn task_id_of(task_arn: &str) -> &str {
    task_arn.rsplit('/').next().unwrap_or(task_arn)
}

/// One container whose Container Insights metrics are wanted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerMetricKey {
    /// Task ID (not the ARN).
    pub task_id: String,
    /// Task definition family.
    pub family: String,
    /// Container name.
    pub container: String,
}

/// The newest Container Insights datapoints of one container.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerMetrics {
    /// Which container.
    pub key: ContainerMetricKey,
    /// `CpuUtilized`: CPU units in use (1024 per vCPU).
    pub cpu_units: f64,
    /// `MemoryUtilized`: MiB in use.
    pub memory_mib: f64,
    /// When the newer of the two datapoints was taken (ms since the epoch).
    pub at_ms: i64,
}

/// The Container Insights namespace ECS publishes task and container metrics to.
pub const CONTAINER_INSIGHTS_NAMESPACE: &str = "ECS/ContainerInsights";

/// One container of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Name.
    pub name: String,
    /// `PENDING`, `RUNNING`, `STOPPED`.
    pub last_status: String,
    /// Exit code once stopped.
    pub exit_code: Option<i32>,
    /// Why it stopped.
    pub reason: Option<String>,
    /// `HEALTHY`, `UNHEALTHY` or `UNKNOWN`: its health check's verdict.
    pub health_status: Option<String>,
}

/// The ECS, Secrets Manager and CloudWatch Logs calls the Fargate provider makes.
pub trait EcsApi: Send + Sync + 'static {
    /// `RegisterTaskDefinition`.
    fn register_task_definition(
        &self,
        request: &RegisterTaskDefinition,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Whether a family has an ACTIVE revision (`DescribeTaskDefinition`).
    fn task_definition_exists(
        &self,
        family: &str,
    ) -> impl Future<Output = Result<bool, ProviderError>> + Send;
    /// `RunTask`.
    fn run_task(
        &self,
        request: &RunTask,
    ) -> impl Future<Output = Result<TaskInfo, ProviderError>> + Send;
    /// `ListTasks` by `startedBy` (all pages; desired status RUNNING).
    fn list_tasks(
        &self,
        cluster: &str,
        started_by: &str,
    ) -> impl Future<Output = Result<Vec<String>, ProviderError>> + Send;
    /// `DescribeTasks` with tags, at most 100 ARNs.
    fn describe_tasks(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> impl Future<Output = Result<Vec<TaskInfo>, ProviderError>> + Send;
    /// `StopTask`.
    fn stop_task(
        &self,
        cluster: &str,
        arn: &str,
        reason: &str,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Creates (or overwrites) a JSON secret carrying `tags`; returns its ARN.
    fn put_secret(
        &self,
        name: &str,
        json: &str,
        tags: &[(&str, &str)],
    ) -> impl Future<Output = Result<String, ProviderError>> + Send;
    /// Names of the secrets whose name starts with `prefix`.
    fn list_secrets(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<String>, ProviderError>> + Send;
    /// Deletes a secret at once.
    fn delete_secret(&self, name: &str) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// One `GetLogEvents` page: from the head (after `start_ms`) or from the tail, or
    /// where `token` points; at most `limit` events (10,000 at most).
    fn log_page(
        &self,
        query: &LogPageQuery,
    ) -> impl Future<Output = Result<LogPage, ProviderError>> + Send;
    /// The newest Container Insights CPU and memory of each of `containers` in `cluster`
    /// (`GetMetricData`, batched); a container CloudWatch has no datapoints for yet is left
    /// out.
    fn container_metrics(
        &self,
        cluster: &str,
        containers: &[ContainerMetricKey],
    ) -> impl Future<Output = Result<Vec<ContainerMetrics>, ProviderError>> + Send;
    /// What keeps the node from running pods in `target`, one sentence each (see
    /// [`setup_check`](super::setup_check)); empty when it is ready.
    fn setup_problems(&self, target: &SetupTarget) -> impl Future<Output = Vec<String>> + Send;
    /// `ExecuteCommand` (interactive, as ECS Exec only is): the Session Manager session
    /// that runs `command` in `container` of task `arn`.
    fn execute_command(
        &self,
        cluster: &str,
        arn: &str,
        container: &str,
        command: &str,
    ) -> impl Future<Output = Result<ExecSession, ProviderError>> + Send {
        let _ = (cluster, arn, container, command);
        async {
            Err(ProviderError::Invalid(
                "this ECS serves no ExecuteCommand".into(),
            ))
        }
    }
}

/// The Session Manager session `ExecuteCommand` opened.
pub struct ExecSession {
    /// `sessionId`.
    pub session_id: String,
    /// `streamUrl`: the data channel's WebSocket.
    pub stream_url: String,
    /// `tokenValue`: what opens it (a secret).
    pub token: azure_core::credentials::Secret,
}

/// What one `GetLogEvents` call asks.
#[derive(Clone, Debug, Default)]
pub struct LogPageQuery {
    /// Log group.
    pub group: String,
    /// Log stream.
    pub stream: String,
    /// Events at or after this time (ms since the epoch).
    pub start_ms: Option<i64>,
    /// Events per page.
    pub limit: Option<usize>,
    /// From the oldest events (else the newest).
    pub from_head: bool,
    /// A `nextForwardToken` or `nextBackwardToken` of an earlier page.
    pub token: Option<String>,
}

/// One page of log events, oldest first, with the tokens to the pages around it.
#[derive(Clone, Debug, Default)]
pub struct LogPage {
    /// The events.
    pub lines: Vec<LogLine>,
    /// Token of the next (newer) page; the same token again means the end.
    pub forward_token: Option<String>,
    /// Token of the previous (older) page.
    pub backward_token: Option<String>,
}

/// Per-operation token buckets, set below the published ECS quotas (RunTask 20/s sustained,
/// DescribeTasks/ListTasks/StopTask 20/s, RegisterTaskDefinition ~1/s; Secrets Manager
/// and GetLogEvents have similar or higher limits).
struct Limits {
    run_task: Bucket,
    read: Bucket,
    stop_task: Bucket,
    register: Bucket,
    secrets: Bucket,
    logs: Bucket,
    metrics: Bucket,
}

/// One token bucket, and how long a call may wait for it (`None`: as long as it takes).
struct Bucket {
    limiter: DefaultDirectRateLimiter,
    max_wait: Option<Duration>,
}

impl Bucket {
    /// A call that cannot have a token within `wait` fails `Throttled` instead of queueing.
    fn within(self, wait: Duration) -> Self {
        Self {
            max_wait: Some(wait),
            ..self
        }
    }
}

fn per_second(n: u32) -> Bucket {
    Bucket {
        limiter: RateLimiter::direct(Quota::per_second(
            NonZeroU32::new(n).expect("quota above zero"),
        )),
        max_wait: None,
    }
}

/// The longest a log read waits for the node's `GetLogEvents` budget: log readers queue
/// behind each other, never without end (a caller sees 429 and tries again).
pub const LOG_BUDGET_WAIT: Duration = Duration::from_secs(10);

impl Limits {
    fn new() -> Self {
        Self {
            run_task: per_second(15),
            read: per_second(15),
            stop_task: per_second(15),
            register: per_second(1),
            secrets: per_second(10),
            logs: per_second(5).within(LOG_BUDGET_WAIT),
            // GetMetricData allows 50/s; a scrape needs one call per 250 containers.
            metrics: per_second(5),
        }
    }
}

/// The real thing.
#[derive(Clone)]
pub struct AwsApi {
    credentials: Option<aws_sdk_ecs::config::SharedCredentialsProvider>,
    sts: aws_sdk_sts::Client,
    ecs: aws_sdk_ecs::Client,
    secrets: aws_sdk_secretsmanager::Client,
    logs: aws_sdk_cloudwatchlogs::Client,
    cloudwatch: aws_sdk_cloudwatch::Client,
    ec2: super::ec2_query::Ec2Query,
    limits: Arc<Limits>,
    metrics: NodeMetrics,
}

fn map_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    error: SdkError<E, R>,
) -> ProviderError {
    match &error {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            let code = inner.code().unwrap_or("Unknown");
            let message = format!("{code}: {}", inner.message().unwrap_or(""));
            match code {
                "ThrottlingException"
                | "TooManyRequestsException"
                | "RequestLimitExceeded"
                | "Throttling" => ProviderError::Throttled(message),
                "ResourceNotFoundException" | "TaskNotFoundException" => {
                    ProviderError::NotFound(message)
                }
                // The node's identity, or a role it passes, refused: no pod's fault.
                "AccessDeniedException"
                | "AccessDenied"
                | "UnrecognizedClientException"
                | "InvalidClientTokenId"
                | "ExpiredTokenException"
                | "UnauthorizedOperation" => ProviderError::Denied(message),
                "ClientException" if denies_a_role(&message) => ProviderError::Denied(message),
                "ClientException"
                | "InvalidParameterException"
                | "InvalidRequestException"
                | "ValidationException"
                | "UnsupportedFeatureException" => ProviderError::Invalid(message),
                // The service itself failing, or out of room or quota: an outage.
                "ServerException" | "ServiceUnavailableException" | "LimitExceededException" => {
                    ProviderError::Unavailable(message)
                }
                _ => ProviderError::Transient(message),
            }
        }
        // The error and its sources as one sentence (a timeout, a refused connection, no
        // credentials), never the SDK's Debug dump.
        other => ProviderError::Transient(DisplayErrorContext(other).to_string()),
    }
}

/// Whether an ECS `ClientException` is about a role rather than the request: ECS cannot
/// assume the execution or task role, or the caller may not pass it.
fn denies_a_role(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("unable to assume")
        || lower.contains("not authorized to perform")
        || lower.contains("iam:passrole")
}

/// An SDK error as a sentence: the service's code and message, or the error and its
/// sources (a timeout, a refused connection), never a Debug dump.
fn aws_error_sentence<E, R>(error: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match error {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            format!(
                "{}: {}",
                inner.code().unwrap_or("Unknown"),
                inner.message().unwrap_or("no message")
            )
        }
        other => DisplayErrorContext(other).to_string(),
    }
}

/// Attempts of one call (the first and the retries of throttling or transient errors).
const MAX_ATTEMPTS: u32 = 5;
/// The longest one attempt may take before it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// Wait before retry `attempt` (1-based): 100 ms doubling, up to 5 s, with full jitter.
fn retry_backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(100)
        .saturating_mul(1 << attempt.min(6))
        .min(Duration::from_secs(5));
    cap.mul_f64(rand::rng().random_range(0.0..1.0))
}

impl AwsApi {
    /// Clients from the standard AWS config chain; `endpoint` overrides the endpoint
    /// (a local test endpoint).
    pub async fn new(region: &str, endpoint: Option<&str>, metrics: NodeMetrics) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_owned()))
            .retry_config(aws_config::retry::RetryConfig::disabled());
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let config = loader.load().await;
        Self {
            credentials: config.credentials_provider(),
            sts: aws_sdk_sts::Client::new(&config),
            ecs: aws_sdk_ecs::Client::new(&config),
            secrets: aws_sdk_secretsmanager::Client::new(&config),
            logs: aws_sdk_cloudwatchlogs::Client::new(&config),
            cloudwatch: aws_sdk_cloudwatch::Client::new(&config),
            ec2: super::ec2_query::Ec2Query::new(region, endpoint, config.credentials_provider()),
            limits: Arc::new(Limits::new()),
            metrics,
        }
    }

    /// Runs one API call, retrying throttling and transient errors up to
    /// [`MAX_ATTEMPTS`] with jittered back-off. Every attempt waits for `limiter` first and
    /// is recorded as `op` (so a retry is counted and rate-limited like any call: the SDK's
    /// own retries are off, they would bypass the buckets).
    async fn call<T, F, Fut>(
        &self,
        op: &str,
        bucket: &Bucket,
        attempt: F,
    ) -> Result<T, ProviderError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match bucket.max_wait {
                None => bucket.limiter.until_ready().await,
                Some(wait) => {
                    if tokio::time::timeout(wait, bucket.limiter.until_ready())
                        .await
                        .is_err()
                    {
                        return Err(ProviderError::Throttled(format!(
                            "{op}: the node's own budget for it had no room within {wait:?}"
                        )));
                    }
                }
            }
            let started = Instant::now();
            // A hung connection counts as a transient failure, retried like one.
            let result = match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt()).await {
                Ok(result) => result,
                Err(_) => Err(ProviderError::Transient(format!(
                    "{op}: no answer within {ATTEMPT_TIMEOUT:?}"
                ))),
            };
            self.metrics
                .observe("fargate", op, &result, started.elapsed().as_secs_f64());
            match result {
                Err(error) if error.is_retryable() && attempts < MAX_ATTEMPTS => {
                    tracing::debug!(%error, op, attempts, "retrying");
                    tokio::time::sleep(retry_backoff(attempts)).await;
                }
                other => return other,
            }
        }
    }
}

fn build_error(e: aws_sdk_ecs::error::BuildError) -> ProviderError {
    ProviderError::Invalid(e.to_string())
}

fn container(
    definition: &ecs_json::ContainerDefinition,
) -> Result<ecs::ContainerDefinition, ProviderError> {
    let mut builder = ecs::ContainerDefinition::builder()
        .name(&definition.name)
        .image(&definition.image)
        .essential(definition.essential)
        .set_entry_point(definition.entry_point.clone())
        .set_command(definition.command.clone())
        .set_working_directory(definition.working_directory.clone())
        .set_cpu(definition.cpu)
        .memory(definition.memory)
        .set_memory_reservation(definition.memory_reservation)
        .set_stop_timeout(definition.stop_timeout);
    for env in &definition.environment {
        builder = builder.environment(
            ecs::KeyValuePair::builder()
                .name(&env.name)
                .value(&env.value)
                .build(),
        );
    }
    for secret in &definition.secrets {
        builder = builder.secrets(
            ecs::Secret::builder()
                .name(&secret.name)
                .value_from(&secret.value_from)
                .build()
                .map_err(build_error)?,
        );
    }
    for port in &definition.port_mappings {
        builder = builder.port_mappings(
            ecs::PortMapping::builder()
                .container_port(port.container_port)
                .protocol(ecs::TransportProtocol::from(port.protocol.as_str()))
                .build(),
        );
    }
    for dependency in &definition.depends_on {
        builder = builder.depends_on(
            ecs::ContainerDependency::builder()
                .container_name(&dependency.container_name)
                .condition(ecs::ContainerCondition::from(dependency.condition.as_str()))
                .build()
                .map_err(build_error)?,
        );
    }
    for mount in &definition.mount_points {
        builder = builder.mount_points(
            ecs::MountPoint::builder()
                .source_volume(&mount.source_volume)
                .container_path(&mount.container_path)
                .read_only(mount.read_only)
                .build(),
        );
    }
    if let Some(check) = &definition.health_check {
        builder = builder.health_check(
            ecs::HealthCheck::builder()
                .set_command(Some(check.command.clone()))
                .interval(check.interval)
                .timeout(check.timeout)
                .retries(check.retries)
                .start_period(check.start_period)
                .build()
                .map_err(build_error)?,
        );
    }
    if let Some(logs) = &definition.log_configuration {
        let options: HashMap<String, String> = logs.options.clone().into_iter().collect();
        builder = builder.log_configuration(
            ecs::LogConfiguration::builder()
                .log_driver(ecs::LogDriver::from(logs.log_driver.as_str()))
                .set_options(Some(options))
                .build()
                .map_err(build_error)?,
        );
    }
    Ok(builder.build())
}

fn tags(tags: &[ecs_json::Tag]) -> Vec<ecs::Tag> {
    tags.iter()
        .map(|t| ecs::Tag::builder().key(&t.key).value(&t.value).build())
        .collect()
}

fn rfc3339(time: &aws_sdk_ecs::primitives::DateTime) -> Option<String> {
    time.fmt(aws_sdk_ecs::primitives::DateTimeFormat::DateTime)
        .ok()
}

fn task_info(task: &ecs::Task) -> TaskInfo {
    let ip = task
        .attachments()
        .iter()
        .flat_map(|a| a.details())
        .find(|d| d.name() == Some("privateIPv4Address"))
        .and_then(|d| d.value().map(str::to_owned));
    TaskInfo {
        arn: task.task_arn().unwrap_or_default().to_owned(),
        last_status: task.last_status().unwrap_or("PENDING").to_owned(),
        tags: task
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
            .collect(),
        containers: task
            .containers()
            .iter()
            .map(|c| ContainerInfo {
                name: c.name().unwrap_or_default().to_owned(),
                last_status: c.last_status().unwrap_or("PENDING").to_owned(),
                exit_code: c.exit_code(),
                reason: c.reason().map(str::to_owned),
                health_status: c.health_status().map(|h| h.as_str().to_owned()),
            })
            .collect(),
        ip,
        started_at: task.started_at().and_then(rfc3339),
        created_ms: task
            .created_at()
            .map(|t| t.to_millis().unwrap_or(0))
            .unwrap_or(0),
        stopped_reason: task.stopped_reason().map(str::to_owned),
        family: task.task_definition_arn().and_then(family_of),
    }
}

impl EcsApi for AwsApi {
    async fn register_task_definition(
        &self,
        request: &RegisterTaskDefinition,
    ) -> Result<(), ProviderError> {
        let containers = request
            .container_definitions
            .iter()
            .map(container)
            .collect::<Result<Vec<_>, _>>()?;
        let compatibilities = request
            .requires_compatibilities
            .iter()
            .map(|c| ecs::Compatibility::from(c.as_str()))
            .collect();
        let volumes = request
            .volumes
            .iter()
            .map(|v| ecs::Volume::builder().name(&v.name).build())
            .collect();
        let request = self
            .ecs
            .register_task_definition()
            .family(&request.family)
            .network_mode(ecs::NetworkMode::from(request.network_mode.as_str()))
            .set_requires_compatibilities(Some(compatibilities))
            .cpu(&request.cpu)
            .memory(&request.memory)
            .set_execution_role_arn(request.execution_role_arn.clone())
            .set_task_role_arn(request.task_role_arn.clone())
            .set_container_definitions(Some(containers))
            .set_volumes(Some(volumes))
            .set_tags(Some(tags(&request.tags)));
        self.call("RegisterTaskDefinition", &self.limits.register, || {
            let send = request.clone().send();
            async move { send.await.map(|_| ()).map_err(map_error) }
        })
        .await
    }

    async fn task_definition_exists(&self, family: &str) -> Result<bool, ProviderError> {
        let request = self.ecs.describe_task_definition().task_definition(family);
        self.call("DescribeTaskDefinition", &self.limits.read, || {
            let send = request.clone().send();
            async move {
                match send.await {
                    Ok(output) => Ok(output.task_definition().is_some()),
                    Err(error) => match map_error(error) {
                        ProviderError::Invalid(_) | ProviderError::NotFound(_) => Ok(false),
                        other => Err(other),
                    },
                }
            }
        })
        .await
    }

    async fn run_task(&self, request: &RunTask) -> Result<TaskInfo, ProviderError> {
        let vpc = &request.network_configuration.awsvpc_configuration;
        let network = ecs::NetworkConfiguration::builder()
            .awsvpc_configuration(
                ecs::AwsVpcConfiguration::builder()
                    .set_subnets(Some(vpc.subnets.clone()))
                    .set_security_groups(Some(vpc.security_groups.clone()))
                    .assign_public_ip(ecs::AssignPublicIp::from(vpc.assign_public_ip.as_str()))
                    .build()
                    .map_err(build_error)?,
            )
            .build();
        let container_overrides = request
            .overrides
            .container_overrides
            .iter()
            .map(|o| {
                let environment = o.environment.iter().map(|e| {
                    ecs::KeyValuePair::builder()
                        .name(&e.name)
                        .value(&e.value)
                        .build()
                });
                ecs::ContainerOverride::builder()
                    .name(&o.name)
                    .set_environment(Some(environment.collect()))
                    .build()
            })
            .collect();
        let overrides = ecs::TaskOverride::builder()
            .set_container_overrides(Some(container_overrides))
            .build();
        let strategy = request
            .capacity_provider_strategy
            .iter()
            .map(|s| {
                ecs::CapacityProviderStrategyItem::builder()
                    .capacity_provider(&s.capacity_provider)
                    .weight(s.weight)
                    .build()
                    .map_err(build_error)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let request = self
            .ecs
            .run_task()
            .cluster(&request.cluster)
            .task_definition(&request.task_definition)
            .set_launch_type(request.launch_type.as_deref().map(ecs::LaunchType::from))
            .set_capacity_provider_strategy((!strategy.is_empty()).then_some(strategy))
            .count(request.count)
            .network_configuration(network)
            .overrides(overrides)
            .started_by(&request.started_by)
            .enable_execute_command(request.enable_execute_command)
            .client_token(&request.client_token)
            .set_tags(Some(tags(&request.tags)));
        self.call("RunTask", &self.limits.run_task, || {
            let send = request.clone().send();
            async move {
                let output = send.await.map_err(map_error)?;
                if let Some(failure) = output.failures().first() {
                    // RunTask's own failures are ECS saying it cannot place the task
                    // now (capacity, the account's task limit): the request stands.
                    let reason = format!(
                        "{}: {}",
                        failure.reason().unwrap_or(""),
                        failure.detail().unwrap_or("")
                    );
                    return Err(ProviderError::Unavailable(reason));
                }
                output
                    .tasks()
                    .first()
                    .map(task_info)
                    .ok_or_else(|| ProviderError::Transient("RunTask returned no task".into()))
            }
        })
        .await
    }

    async fn list_tasks(
        &self,
        cluster: &str,
        started_by: &str,
    ) -> Result<Vec<String>, ProviderError> {
        let mut arns = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let request = self
                .ecs
                .list_tasks()
                .cluster(cluster)
                .started_by(started_by)
                .set_next_token(token.clone());
            let output = self
                .call("ListTasks", &self.limits.read, || {
                    let send = request.clone().send();
                    async move { send.await.map_err(map_error) }
                })
                .await?;
            arns.extend(output.task_arns().iter().cloned());
            token = output.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(arns);
            }
        }
    }

    async fn describe_tasks(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<Vec<TaskInfo>, ProviderError> {
        if arns.is_empty() {
            return Ok(Vec::new());
        }
        let request = self
            .ecs
            .describe_tasks()
            .cluster(cluster)
            .set_tasks(Some(arns.to_vec()))
            .include(ecs::TaskField::Tags);
        self.call("DescribeTasks", &self.limits.read, || {
            let send = request.clone().send();
            async move {
                send.await
                    .map(|output| output.tasks().iter().map(task_info).collect())
                    .map_err(map_error)
            }
        })
        .await
    }

    async fn stop_task(&self, cluster: &str, arn: &str, reason: &str) -> Result<(), ProviderError> {
        let request = self
            .ecs
            .stop_task()
            .cluster(cluster)
            .task(arn)
            .reason(reason);
        self.call("StopTask", &self.limits.stop_task, || {
            let send = request.clone().send();
            async move { send.await.map(|_| ()).map_err(map_error) }
        })
        .await
    }

    async fn execute_command(
        &self,
        cluster: &str,
        arn: &str,
        container: &str,
        command: &str,
    ) -> Result<ExecSession, ProviderError> {
        let request = self
            .ecs
            .execute_command()
            .cluster(cluster)
            .task(arn)
            .container(container)
            .command(command)
            .interactive(true);
        self.call("ExecuteCommand", &self.limits.stop_task, || {
            let send = request.clone().send();
            async move {
                let output = send.await.map_err(map_error)?;
                let session = output.session().ok_or_else(|| {
                    ProviderError::Transient("ExecuteCommand answered without a session".into())
                })?;
                Ok(ExecSession {
                    session_id: session.session_id().unwrap_or_default().to_owned(),
                    stream_url: session.stream_url().unwrap_or_default().to_owned(),
                    token: azure_core::credentials::Secret::new(
                        session.token_value().unwrap_or_default().to_owned(),
                    ),
                })
            }
        })
        .await
    }

    async fn put_secret(
        &self,
        name: &str,
        json: &str,
        tags: &[(&str, &str)],
    ) -> Result<String, ProviderError> {
        let tags: Vec<aws_sdk_secretsmanager::types::Tag> = tags
            .iter()
            .map(|(key, value)| {
                aws_sdk_secretsmanager::types::Tag::builder()
                    .key(*key)
                    .value(*value)
                    .build()
            })
            .collect();
        self.call("PutSecret", &self.limits.secrets, || async {
            let created = self
                .secrets
                .create_secret()
                .name(name)
                .secret_string(json)
                .description("Secret-derived env of one Spillway burst pod; deleted with the pod")
                .set_tags(Some(tags.clone()))
                .send()
                .await;
            let exists = |e: &SdkError<_, _>| {
                e.as_service_error()
                    .map(aws_sdk_secretsmanager::operation::create_secret::CreateSecretError::is_resource_exists_exception)
                    .unwrap_or(false)
            };
            let arn = match created {
                Ok(output) => output.arn().map(str::to_owned),
                // Left by an earlier attempt for the same pod: overwrite it.
                Err(error) if exists(&error) => self
                    .secrets
                    .put_secret_value()
                    .secret_id(name)
                    .secret_string(json)
                    .send()
                    .await
                    .map_err(map_error)?
                    .arn()
                    .map(str::to_owned),
                Err(error) => return Err(map_error(error)),
            };
            arn.ok_or_else(|| ProviderError::Transient("Secrets Manager returned no ARN".into()))
        })
        .await
    }

    async fn list_secrets(&self, prefix: &str) -> Result<Vec<String>, ProviderError> {
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let filter = aws_sdk_secretsmanager::types::Filter::builder()
                .key(aws_sdk_secretsmanager::types::FilterNameStringType::Name)
                .values(prefix)
                .build();
            let request = self
                .secrets
                .list_secrets()
                .filters(filter)
                .set_next_token(token.clone());
            let output = self
                .call("ListSecrets", &self.limits.secrets, || {
                    let send = request.clone().send();
                    async move { send.await.map_err(map_error) }
                })
                .await?;
            names.extend(
                output
                    .secret_list()
                    .iter()
                    .filter_map(|s| s.name())
                    // The name filter matches prefixes of words; keep exact prefixes only.
                    .filter(|n| n.starts_with(prefix))
                    .map(str::to_owned),
            );
            token = output.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(names);
            }
        }
    }

    async fn delete_secret(&self, name: &str) -> Result<(), ProviderError> {
        let request = self
            .secrets
            .delete_secret()
            .secret_id(name)
            .force_delete_without_recovery(true);
        self.call("DeleteSecret", &self.limits.secrets, || {
            let send = request.clone().send();
            async move { send.await.map(|_| ()).map_err(map_error) }
        })
        .await
    }

    async fn log_page(&self, query: &LogPageQuery) -> Result<LogPage, ProviderError> {
        let request = self
            .logs
            .get_log_events()
            .log_group_name(&query.group)
            .log_stream_name(&query.stream)
            .set_start_time(query.start_ms)
            .set_limit(query.limit.map(|l| l.min(10_000) as i32))
            .start_from_head(query.from_head)
            .set_next_token(query.token.clone());
        self.call("GetLogEvents", &self.limits.logs, || {
            let send = request.clone().send();
            async move {
                let output = send.await.map_err(map_error)?;
                Ok(LogPage {
                    lines: output
                        .events()
                        .iter()
                        .map(|e| LogLine {
                            timestamp_ms: e.timestamp().unwrap_or(0),
                            message: e.message().unwrap_or("").to_owned(),
                        })
                        .collect(),
                    forward_token: output.next_forward_token().map(str::to_owned),
                    backward_token: output.next_backward_token().map(str::to_owned),
                })
            }
        })
        .await
    }

    async fn container_metrics(
        &self,
        cluster: &str,
        containers: &[ContainerMetricKey],
    ) -> Result<Vec<ContainerMetrics>, ProviderError> {
        let mut found = Vec::new();
        for batch in containers.chunks(METRIC_QUERIES_PER_CALL / 2) {
            let queries = batch
                .iter()
                .enumerate()
                .flat_map(|(i, key)| {
                    [("c", "CpuUtilized"), ("m", "MemoryUtilized")].map(|(prefix, metric)| {
                        metric_query(&format!("{prefix}{i}"), metric, cluster, key)
                    })
                })
                .collect::<Vec<_>>();
            // Whole periods (as CloudWatch recommends), up to the end of the current one.
            let (start, end) = metric_window(spillway_common::time::now_millis() / 1000);
            let (start, end) = (
                aws_sdk_cloudwatch::primitives::DateTime::from_secs(start),
                aws_sdk_cloudwatch::primitives::DateTime::from_secs(end),
            );
            let mut newest: HashMap<String, (f64, i64)> = HashMap::new();
            let mut token: Option<String> = None;
            loop {
                let request = self
                    .cloudwatch
                    .get_metric_data()
                    .set_metric_data_queries(Some(queries.clone()))
                    .start_time(start)
                    .end_time(end)
                    .scan_by(aws_sdk_cloudwatch::types::ScanBy::TimestampDescending)
                    .set_next_token(token.clone());
                let page = self
                    .call("GetMetricData", &self.limits.metrics, || {
                        let send = request.clone().send();
                        async move { send.await.map_err(map_error) }
                    })
                    .await?;
                for result in page.metric_data_results() {
                    let (Some(id), Some(value), Some(at)) = (
                        result.id(),
                        result.values().first(),
                        result.timestamps().first(),
                    ) else {
                        continue;
                    };
                    newest
                        .entry(id.to_owned())
                        .or_insert((*value, at.to_millis().unwrap_or(0)));
                }
                token = page.next_token().map(str::to_owned);
                if token.is_none() {
                    break;
                }
            }
            for (i, key) in batch.iter().enumerate() {
                if let (Some(cpu), Some(memory)) =
                    (newest.get(&format!("c{i}")), newest.get(&format!("m{i}")))
                {
                    found.push(ContainerMetrics {
                        key: key.clone(),
                        cpu_units: cpu.0,
                        memory_mib: memory.0,
                        at_ms: cpu.1.max(memory.1),
                    });
                }
            }
        }
        Ok(found)
    }

    async fn setup_problems(&self, target: &SetupTarget) -> Vec<String> {
        let mut problems: Vec<String> = setup_check::execution_role_problem(target)
            .into_iter()
            .collect();
        let Some(credentials) = &self.credentials else {
            problems.push("no AWS credentials: the SDK found no credentials provider".into());
            return problems;
        };
        if let Err(error) = credentials.provide_credentials().await {
            problems.push(format!(
                "no AWS credentials: {} (EKS: annotate the controller's ServiceAccount with \
                 eks.amazonaws.com/role-arn, or give it a Pod Identity association)",
                DisplayErrorContext(&error)
            ));
            return problems;
        }
        let region = &target.region;
        match self.sts.get_caller_identity().send().await {
            Ok(identity) => tracing::info!(
                arn = identity.arn().unwrap_or("unknown"),
                region = %region,
                "AWS identity"
            ),
            Err(error) => {
                problems.push(format!(
                    "AWS refused the node's credentials in {region}: {}",
                    aws_error_sentence(&error)
                ));
                return problems;
            }
        }
        let cluster = self
            .ecs
            .describe_clusters()
            .clusters(&target.cluster)
            .send()
            .await;
        match cluster {
            Ok(out) => {
                let answer = match (out.clusters().first(), out.failures().first()) {
                    (Some(found), _) => setup_check::ClusterAnswer::Found(
                        found.status().unwrap_or("UNKNOWN").to_owned(),
                    ),
                    (None, Some(failure)) => setup_check::ClusterAnswer::Failed(
                        failure.reason().unwrap_or("MISSING").to_owned(),
                    ),
                    (None, None) => setup_check::ClusterAnswer::Failed("MISSING".into()),
                };
                problems.extend(setup_check::cluster_problem(target, &answer));
            }
            Err(error) => problems.push(format!(
                "cannot describe ECS cluster {} in {region}: {}",
                target.cluster,
                aws_error_sentence(&error)
            )),
        }
        let groups = self
            .logs
            .describe_log_groups()
            .log_group_name_prefix(&target.log_group)
            .limit(50)
            .send()
            .await;
        match groups {
            Ok(out) => {
                let listed: Vec<String> = out
                    .log_groups()
                    .iter()
                    .filter_map(|g| g.log_group_name().map(str::to_owned))
                    .collect();
                problems.extend(setup_check::log_group_problem(target, &listed));
            }
            Err(error) => problems.push(format!(
                "cannot describe CloudWatch Logs group {} in {region}: {}",
                target.log_group,
                aws_error_sentence(&error)
            )),
        }
        let (subnets, security_groups) = tokio::join!(
            self.ec2.subnets(&target.subnets),
            self.ec2.security_groups(&target.security_groups)
        );
        let network = setup_check::NetworkAnswer {
            subnets,
            security_groups,
        };
        let unchecked = setup_check::unchecked(&network);
        if !unchecked.is_empty() {
            tracing::warn!(
                permissions = %unchecked.join(", "),
                "the node may not describe its subnets or security groups: they are not checked (docs/eks.md lists the permissions)"
            );
        }
        problems.extend(setup_check::network_problems(target, &network));
        problems
    }
}

/// Queries per `GetMetricData` call (the API's limit).
const METRIC_QUERIES_PER_CALL: usize = 500;
/// How far back a datapoint may be and still count as current.
const METRIC_LOOKBACK: Duration = Duration::from_secs(300);

/// The query window for `now` (seconds since the epoch): [`METRIC_LOOKBACK`] of whole
/// one-minute periods, ending where the current minute ends.
fn metric_window(now: i64) -> (i64, i64) {
    let end = (now / 60 + 1) * 60;
    (end - METRIC_LOOKBACK.as_secs() as i64, end)
}

/// One metric query: the one-minute average of `metric` for one container.
fn metric_query(
    id: &str,
    metric: &str,
    cluster: &str,
    key: &ContainerMetricKey,
) -> aws_sdk_cloudwatch::types::MetricDataQuery {
    use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
    let dimension = |name: &str, value: &str| Dimension::builder().name(name).value(value).build();
    let metric = Metric::builder()
        .namespace(CONTAINER_INSIGHTS_NAMESPACE)
        .metric_name(metric)
        .dimensions(dimension("ClusterName", cluster))
        .dimensions(dimension("TaskDefinitionFamily", &key.family))
        .dimensions(dimension("TaskId", &key.task_id))
        .dimensions(dimension("ContainerName", &key.container))
        .build();
    MetricDataQuery::builder()
        .id(id)
        .metric_stat(
            MetricStat::builder()
                .metric(metric)
                .period(60)
                .stat("Average")
                .build(),
        )
        .return_data(true)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metric_window_is_whole_minutes_and_covers_now() {
        let now = 1_795_949_519; // 10:51:59
        let (start, end) = metric_window(now);
        assert_eq!((start % 60, end % 60), (0, 0));
        assert!(start < now && now < end);
        assert_eq!(end - start, 300);
    }

    #[test]
    fn families_and_task_ids_come_from_their_arns() {
        assert_eq!(
            family_of("arn:aws:ecs:us-east-1:123456789012:task-definition/spillway-ab12:3")
                .as_deref(),
            Some("spillway-ab12")
        );
        assert_eq!(family_of("spillway-ab12"), None);
        assert_eq!(
            task_id_of("arn:aws:ecs:us-east-1:123456789012:task/my-cluster/0f1e2d3c4b5a"),
            "0f1e2d3c4b5a"
        );
    }
}
