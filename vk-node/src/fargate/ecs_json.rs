//! ECS API request bodies in ECS's own JSON field names: what `explain-pod` prints and
//! what the SDK wrapper turns into calls, so both say the same thing.

use serde::{Deserialize, Serialize};

/// A name/value pair (`environment`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyValuePair {
    /// Variable name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// A secret reference (`secrets`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    /// Variable name.
    pub name: String,
    /// Secrets Manager ARN, with a JSON key.
    pub value_from: String,
}

/// A container port.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Container port.
    pub container_port: i32,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// A container start-order dependency.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDependency {
    /// The container depended on.
    pub container_name: String,
    /// `START`, `COMPLETE`, `SUCCESS` or `HEALTHY`.
    pub condition: String,
}

/// Log driver configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct LogConfiguration {
    /// `awslogs`.
    pub log_driver: String,
    /// Driver options.
    pub options: std::collections::BTreeMap<String, String>,
}

/// A mount of a task volume.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct MountPoint {
    /// Task volume name.
    pub source_volume: String,
    /// Path in the container.
    pub container_path: String,
    /// Read-only mount.
    pub read_only: bool,
}

/// A task volume (Fargate ephemeral storage when it has no host).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct Volume {
    /// Name.
    pub name: String,
}

/// One container of a task definition.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDefinition {
    /// Container name (the pod's container name).
    pub name: String,
    /// Image.
    pub image: String,
    /// Whether the task stops when this container stops.
    pub essential: bool,
    /// Kubernetes `command`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_point: Option<Vec<String>>,
    /// Kubernetes `args`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    /// CPU units reserved for this container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<i32>,
    /// Hard memory limit, MiB.
    pub memory: i32,
    /// Soft memory reservation, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<i32>,
    /// Plain environment.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub environment: Vec<KeyValuePair>,
    /// Secret environment.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub secrets: Vec<Secret>,
    /// Ports.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub port_mappings: Vec<PortMapping>,
    /// Start order.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub depends_on: Vec<ContainerDependency>,
    /// Volume mounts.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub mount_points: Vec<MountPoint>,
    /// Seconds between SIGTERM and SIGKILL (Fargate caps it at 120).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i32>,
    /// Logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_configuration: Option<LogConfiguration>,
    /// The container's `exec` probe, run by ECS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// A container health check (ECS runs it inside the container).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// `["CMD", argv...]`.
    pub command: Vec<String>,
    /// Seconds between runs (5 to 300).
    pub interval: i32,
    /// Seconds a run may take (2 to 60).
    pub timeout: i32,
    /// Failures in a row before UNHEALTHY (1 to 10).
    pub retries: i32,
    /// Seconds of grace after start (0 to 300).
    pub start_period: i32,
}

/// A tag.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct Tag {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

/// `RegisterTaskDefinition` input.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RegisterTaskDefinition {
    /// `spillway-<content hash>`.
    pub family: String,
    /// Always `awsvpc` on Fargate.
    pub network_mode: String,
    /// `["FARGATE"]`.
    pub requires_compatibilities: Vec<String>,
    /// Task CPU units, as a string.
    pub cpu: String,
    /// Task memory MiB, as a string.
    pub memory: String,
    /// Role ECS uses to pull images, write logs and read secrets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_role_arn: Option<String>,
    /// Role the task's code runs as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_role_arn: Option<String>,
    /// Containers, init containers first.
    pub container_definitions: Vec<ContainerDefinition>,
    /// Task volumes.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub volumes: Vec<Volume>,
    /// Tags.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub tags: Vec<Tag>,
}

/// Per-container overrides of a `RunTask`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerOverride {
    /// Container name.
    pub name: String,
    /// Extra environment for this pod only.
    pub environment: Vec<KeyValuePair>,
}

/// `RunTask` overrides.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TaskOverride {
    /// Container overrides.
    pub container_overrides: Vec<ContainerOverride>,
}

/// awsvpc settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AwsVpcConfiguration {
    /// Subnet ids.
    pub subnets: Vec<String>,
    /// Security group ids.
    pub security_groups: Vec<String>,
    /// `ENABLED` or `DISABLED`.
    pub assign_public_ip: String,
}

/// Network configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfiguration {
    /// awsvpc settings.
    pub awsvpc_configuration: AwsVpcConfiguration,
}

/// One capacity provider weight.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CapacityProviderStrategyItem {
    /// `FARGATE_SPOT`.
    pub capacity_provider: String,
    /// Weight.
    pub weight: i32,
}

/// `RunTask` input.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RunTask {
    /// Cluster name or ARN.
    pub cluster: String,
    /// `family` of the registered definition (latest revision).
    pub task_definition: String,
    /// `FARGATE`, unless a capacity provider strategy asks for Spot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_type: Option<String>,
    /// Spot strategy.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub capacity_provider_strategy: Vec<CapacityProviderStrategyItem>,
    /// Always 1.
    pub count: i32,
    /// Subnets and security groups.
    pub network_configuration: NetworkConfiguration,
    /// Per-pod environment.
    pub overrides: TaskOverride,
    /// Identifies the node that started the task.
    pub started_by: String,
    /// ECS Exec on (`--enable-exec`).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub enable_execute_command: bool,
    /// Idempotency token: the pod UID.
    pub client_token: String,
    /// Pod UID, pod and node tags.
    pub tags: Vec<Tag>,
}
