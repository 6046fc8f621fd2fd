//! The container-group shapes of the ACI ARM API (2023-05-01) that the provider sends and
//! reads, field for field as the official spec names them. Parts the provider never sets
//! (identity, diagnostics, DNS, instance views…) are kept as raw JSON, so an ARM answer
//! parses and serializes back unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A container group: `Resource` (location, tags, zones) plus its properties.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerGroup {
    /// Resource id (read-only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Name (read-only in bodies; the URL names the group).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Resource type (read-only).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    /// Azure region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Resource tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// Availability zones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zones: Option<Vec<String>>,
    /// Managed identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Value>,
    /// The group.
    pub properties: ContainerGroupProperties,
}

/// `ContainerGroupPropertiesProperties`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerGroupProperties {
    /// Read-only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provisioning_state: Option<String>,
    /// The containers.
    pub containers: Vec<Container>,
    /// Private registry credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_registry_credentials: Option<Vec<ImageRegistryCredential>>,
    /// `Always`, `OnFailure` or `Never`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
    /// The group's IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<IpAddress>,
    /// `Linux` or `Windows`.
    pub os_type: String,
    /// Volumes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,
    /// Read-only state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_view: Option<Value>,
    /// Log Analytics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<Value>,
    /// VNet subnets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet_ids: Option<Vec<SubnetId>>,
    /// DNS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<Value>,
    /// `Standard`, `Dedicated` or `Confidential`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// Encryption.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_properties: Option<Value>,
    /// Init containers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_containers: Option<Vec<InitContainer>>,
    /// Extensions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Value>,
    /// Confidential compute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidential_compute_properties: Option<Value>,
    /// `Regular` or `Spot`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
}

/// A container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Name.
    pub name: String,
    /// Its properties.
    pub properties: ContainerProperties,
}

/// `ContainerProperties`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerProperties {
    /// Image.
    pub image: String,
    /// The whole command line (ACI has no separate args).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Exposed ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<ContainerPort>>,
    /// Environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment_variables: Option<Vec<EnvironmentVariable>>,
    /// Read-only state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_view: Option<Value>,
    /// Requests (and limits).
    pub resources: ResourceRequirements,
    /// Mounts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<VolumeMount>>,
    /// Liveness probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Value>,
    /// Readiness probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Value>,
    /// Security context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_context: Option<Value>,
}

/// An init container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitContainer {
    /// Name.
    pub name: String,
    /// Its properties.
    pub properties: InitContainerProperties,
}

/// `InitContainerPropertiesDefinition`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitContainerProperties {
    /// Image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The whole command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment_variables: Option<Vec<EnvironmentVariable>>,
    /// Read-only state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_view: Option<Value>,
    /// Mounts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<VolumeMount>>,
    /// Security context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_context: Option<Value>,
}

/// One variable: `value` in the clear, or `secureValue` (never shown back by ARM).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentVariable {
    /// Name.
    pub name: String,
    /// Plain value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Secure value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_value: Option<String>,
}

/// `ResourceRequirements`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequirements {
    /// What the container is given.
    pub requests: ResourceRequests,
    /// Caps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceLimits>,
}

/// `ResourceRequests`: cores and GB.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceRequests {
    /// Memory, GB.
    #[serde(rename = "memoryInGB")]
    pub memory_in_gb: f64,
    /// CPU cores.
    pub cpu: f64,
    /// GPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<Value>,
}

/// `ResourceLimits`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceLimits {
    /// Memory, GB.
    #[serde(rename = "memoryInGB", skip_serializing_if = "Option::is_none")]
    pub memory_in_gb: Option<f64>,
    /// CPU cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// GPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<Value>,
}

/// A container's port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerPort {
    /// `TCP` or `UDP`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Port.
    pub port: i32,
}

/// The group's IP address.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpAddress {
    /// Ports open on it.
    pub ports: Vec<Port>,
    /// `Public` or `Private`.
    #[serde(rename = "type")]
    pub address_type: String,
    /// The address (read back once assigned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// DNS label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_name_label: Option<String>,
    /// DNS label reuse scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_generated_domain_name_label_scope: Option<String>,
    /// Read-only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
}

/// A port of the group's IP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Port {
    /// `TCP` or `UDP`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Port.
    pub port: i32,
}

/// A volume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// Name.
    pub name: String,
    /// Azure Files share.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_file: Option<Value>,
    /// Scratch space.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<Value>,
    /// Files from base64 values (ACI keeps them encrypted at rest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<BTreeMap<String, String>>,
    /// A git checkout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_repo: Option<Value>,
}

/// A mount.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// Volume name.
    pub name: String,
    /// Path in the container.
    pub mount_path: String,
    /// Read-only mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// Registry credentials.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRegistryCredential {
    /// Registry host.
    pub server: String,
    /// User name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Managed identity to pull with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Identity URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_url: Option<String>,
}

/// A subnet the group joins.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SubnetId {
    /// Subnet resource id.
    pub id: String,
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}
