//! Pod → ACI container group, pure: one group per pod, named from its namespace, name
//! and UID within ACI's 63-character rule; each container's CPU in cores (0.01 steps)
//! and memory in GB (0.1 steps), rounded up; command and args as ACI's one command line;
//! literals, ConfigMap values and downward-API fields as `value`, Secret-derived env only
//! as `secureValue`; ports; restart policy; Linux; VNet subnets (the pod's IP is then a
//! private one in the cluster's network); registry credentials from `imagePullSecrets`;
//! emptyDir, Secret and ConfigMap volumes (ACI keeps secret volumes encrypted; ConfigMaps
//! go the same way, as ACI has no other file volume).

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Container as PodContainer, Pod};
use sha2::{Digest, Sha256};
use spillway_common::config::Price;
use spillway_common::cost::BilledSize;
use spillway_common::quantity;

use super::arm_types::*;
use super::{TAG_CLUSTER, TAG_NAMESPACE, TAG_NODE, TAG_POD_NAME, TAG_POD_UID};
use crate::env::{self, EnvContext, EnvError, EnvLookup, EnvValue, Placeholders, quantity_of};
use crate::provider::is_sidecar;

/// Where groups are created and how they are sized.
#[derive(Clone, Debug)]
pub struct AciSettings {
    /// Azure subscription id.
    pub subscription_id: String,
    /// Resource group the node's container groups live in.
    pub resource_group: String,
    /// Azure region (`westeurope`…).
    pub location: String,
    /// Subnet resource ids for VNet placement (delegated to ACI).
    pub subnet_ids: Vec<String>,
    /// The virtual node's name (tags, `spec.nodeName`).
    pub node_name: String,
    /// The Kubernetes cluster's id (tags).
    pub cluster_id: String,
    /// CPU for pods that name none, millicores.
    pub default_cpu_millis: u64,
    /// Memory for pods that name none, bytes.
    pub default_memory_bytes: u64,
    /// List prices.
    pub price: Price,
}

impl AciSettings {
    /// Settings for offline use (`explain-pod`): placeholder ids.
    pub fn offline(price: Price) -> Self {
        Self {
            subscription_id: "00000000-0000-0000-0000-000000000000".into(),
            resource_group: "spillway".into(),
            location: "westeurope".into(),
            subnet_ids: vec![
                "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/spillway/providers/Microsoft.Network/virtualNetworks/cluster/subnets/aci".into(),
            ],
            node_name: "spillway-aci".into(),
            cluster_id: "default".into(),
            default_cpu_millis: 250,
            default_memory_bytes: 512 << 20,
            price,
        }
    }
}

/// What the translation needs from the cluster beyond the pod: Secret values (for
/// `secureValue`), volume contents and registry credentials.
pub trait AciLookup: EnvLookup {
    /// One Secret key's value.
    fn secret_value(&self, name: &str, key: &str) -> Option<String>;
    /// The files of a ConfigMap or Secret volume.
    fn volume_files(&self, kind: VolumeKind, name: &str) -> VolumeFiles;
    /// The registries and credentials in a `kubernetes.io/dockerconfigjson` Secret.
    fn registry_credentials(&self, secret: &str) -> Option<Vec<ImageRegistryCredential>>;
}

/// What a lookup knows of a volume's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeFiles {
    /// Key → contents.
    Found(BTreeMap<String, Vec<u8>>),
    /// The object does not exist.
    Missing,
    /// Not known here (offline): filled in when the group is created.
    Unknown,
}

/// Which object a volume's files come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeKind {
    /// A ConfigMap.
    ConfigMap,
    /// A Secret.
    Secret,
}

impl AciLookup for Placeholders {
    fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        Some(format!("<secret {name} key {key}>"))
    }
    fn volume_files(&self, _: VolumeKind, _: &str) -> VolumeFiles {
        VolumeFiles::Unknown
    }
    fn registry_credentials(&self, secret: &str) -> Option<Vec<ImageRegistryCredential>> {
        Some(vec![ImageRegistryCredential {
            server: format!("<registry in secret {secret}>"),
            username: Some(format!("<username in secret {secret}>")),
            password: Some(format!("<password in secret {secret}>")),
            ..ImageRegistryCredential::default()
        }])
    }
}

/// The translation of one pod.
#[derive(Clone, Debug)]
pub struct AciRequest {
    /// The container group's name (the last segment of its resource id).
    pub name: String,
    /// The exact PUT body.
    pub group: ContainerGroup,
    /// What ACI bills: the containers' requests summed.
    pub size: BilledSize,
    /// Things that could not be carried over, for Events and `explain-pod`.
    pub notes: Vec<String>,
}

impl AciRequest {
    /// List price per hour of the group's size.
    pub fn hourly_cost(&self, price: &Price) -> f64 {
        self.size.vcpu * price.vcpu_hour + self.size.gb * price.gb_hour
    }
}

/// What went wrong translating a pod.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    /// The pod has no spec or no containers.
    #[error("pod has no containers")]
    NoContainers,
    /// A required ConfigMap value is missing.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// A required Secret value is missing.
    #[error("secret {name} (key {key}) not found")]
    MissingSecret {
        /// Secret.
        name: String,
        /// Key.
        key: String,
    },
    /// A required ConfigMap or Secret volume's object is missing.
    #[error("{kind:?} {name} for volume {volume} not found")]
    MissingVolumeSource {
        /// ConfigMap or Secret.
        kind: VolumeKind,
        /// Its name.
        name: String,
        /// The volume.
        volume: String,
    },
}

/// ACI's rule for container group names: 1 to 63 characters, lowercase letters, digits
/// and single hyphens, starting and ending with a letter or digit.
pub const MAX_NAME_LENGTH: usize = 63;

/// The container group name of a pod: `<namespace>-<name>` made to fit ACI's rule, then
/// `-` and ten hex digits of the UID's hash, so two pods never share a name (nor does a
/// pod re-created under the same name) and the same pod always gets the same one.
pub fn group_name(namespace: &str, name: &str, uid: &str) -> String {
    let hash = hex::encode(Sha256::digest(uid.as_bytes()));
    let suffix = &hash[..10];
    let mut base = String::new();
    for c in format!("{namespace}-{name}").chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c == '-' && (base.is_empty() || base.ends_with('-')) {
            continue;
        }
        base.push(c);
    }
    base.truncate(MAX_NAME_LENGTH - suffix.len() - 1);
    let base = base.trim_end_matches('-');
    if base.is_empty() {
        format!("pod-{suffix}")
    } else {
        format!("{base}-{suffix}")
    }
}

/// Whether `name` follows ACI's naming rule.
pub fn valid_group_name(name: &str) -> bool {
    (1..=MAX_NAME_LENGTH).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Cores in ACI's 0.01 steps, rounded up (at least one step).
pub fn cores(millis: u64) -> f64 {
    (millis.div_ceil(10).max(1)) as f64 / 100.0
}

/// GB in ACI's 0.1 steps, rounded up (at least one step).
pub fn gigabytes(bytes: u64) -> f64 {
    let tenths = (bytes as f64 / (1u64 << 30) as f64 * 10.0).ceil().max(1.0);
    tenths / 10.0
}

fn cpu_of(container: &PodContainer, kind: &str) -> Option<u64> {
    quantity::cpu_millis(&quantity_of(container, kind, "cpu")?).ok()
}

fn memory_of(container: &PodContainer, kind: &str) -> Option<u64> {
    quantity::bytes(&quantity_of(container, kind, "memory")?).ok()
}

/// Each app container's (millicores, bytes): its request, else its limit; a pod that names
/// no CPU (or memory) anywhere gets the default, shared by its containers; a container
/// that names none while others do gets ACI's smallest step.
fn container_sizes(containers: &[PodContainer], settings: &AciSettings) -> Vec<(u64, u64)> {
    let cpu: Vec<Option<u64>> = containers
        .iter()
        .map(|c| cpu_of(c, "requests").or_else(|| cpu_of(c, "limits")))
        .collect();
    let memory: Vec<Option<u64>> = containers
        .iter()
        .map(|c| memory_of(c, "requests").or_else(|| memory_of(c, "limits")))
        .collect();
    let n = containers.len().max(1) as u64;
    let cpu_default = if cpu.iter().all(Option::is_none) {
        settings.default_cpu_millis.div_ceil(n)
    } else {
        10
    };
    let memory_default = if memory.iter().all(Option::is_none) {
        settings.default_memory_bytes.div_ceil(n)
    } else {
        (1u64 << 30) / 10
    };
    cpu.iter()
        .zip(&memory)
        .map(|(c, m)| (c.unwrap_or(cpu_default), m.unwrap_or(memory_default)))
        .collect()
}

fn environment(
    pod: &Pod,
    container: &PodContainer,
    context: &EnvContext<'_>,
    lookup: &dyn AciLookup,
    notes: &mut Vec<String>,
) -> Result<Option<Vec<EnvironmentVariable>>, TranslateError> {
    let env_lookup: &dyn EnvLookup = lookup_as_env(lookup);
    let mut out = Vec::new();
    for var in env::resolve(pod, container, context, env_lookup, notes)? {
        match var.value {
            EnvValue::Fixed(value) | EnvValue::PerPod(value) => out.push(EnvironmentVariable {
                name: var.name,
                value: Some(value),
                secure_value: None,
            }),
            EnvValue::Secret {
                secret,
                key,
                optional,
            } => match lookup.secret_value(&secret, &key) {
                Some(value) => out.push(EnvironmentVariable {
                    name: var.name,
                    value: None,
                    secure_value: Some(value),
                }),
                None if optional => {}
                None => {
                    return Err(TranslateError::MissingSecret { name: secret, key });
                }
            },
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// `&dyn AciLookup` as `&dyn EnvLookup` (its supertrait).
fn lookup_as_env(lookup: &dyn AciLookup) -> &dyn EnvLookup {
    lookup
}

fn command_line(container: &PodContainer, notes: &mut Vec<String>) -> Option<Vec<String>> {
    let command = container.command.clone().unwrap_or_default();
    let args = container.args.clone().unwrap_or_default();
    if command.is_empty() && !args.is_empty() {
        notes.push(format!(
            "container {}: ACI takes one command line, so args without a command replace the image's entrypoint",
            container.name
        ));
    }
    let line: Vec<String> = command.into_iter().chain(args).collect();
    (!line.is_empty()).then_some(line)
}

/// The pod's volumes ACI can carry, by name.
fn volumes(
    pod: &Pod,
    lookup: &dyn AciLookup,
    notes: &mut Vec<String>,
) -> Result<Vec<Volume>, TranslateError> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let files = |kind: VolumeKind,
                     name: &str,
                     optional: Option<bool>,
                     items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>|
         -> Result<Option<BTreeMap<String, String>>, TranslateError> {
            let found = match lookup.volume_files(kind, name) {
                VolumeFiles::Found(found) => found,
                VolumeFiles::Unknown => return Ok(None),
                VolumeFiles::Missing if optional == Some(true) => return Ok(Some(BTreeMap::new())),
                VolumeFiles::Missing => {
                    return Err(TranslateError::MissingVolumeSource {
                        kind,
                        name: name.to_owned(),
                        volume: volume.name.clone(),
                    });
                }
            };
            let mut map = BTreeMap::new();
            match items {
                Some(items) => {
                    for item in items {
                        if let Some(contents) = found.get(&item.key) {
                            map.insert(item.path.clone(), engine.encode(contents));
                        }
                    }
                }
                None => {
                    for (key, contents) in &found {
                        map.insert(key.clone(), engine.encode(contents));
                    }
                }
            }
            Ok(Some(map))
        };
        if volume.empty_dir.is_some() {
            out.push(Volume {
                name: volume.name.clone(),
                empty_dir: Some(serde_json::json!({})),
                ..Volume::default()
            });
        } else if let Some(secret) = &volume.secret {
            let name = secret.secret_name.clone().unwrap_or_default();
            let contents = files(
                VolumeKind::Secret,
                &name,
                secret.optional,
                secret.items.as_ref(),
            )?;
            if contents.is_none() {
                notes.push(format!(
                    "volume {}: the files of secret {name} are filled in when the group is created",
                    volume.name
                ));
            }
            out.push(Volume {
                name: volume.name.clone(),
                secret: Some(contents.unwrap_or_default()),
                ..Volume::default()
            });
        } else if let Some(cm) = &volume.config_map {
            let contents = files(
                VolumeKind::ConfigMap,
                &cm.name,
                cm.optional,
                cm.items.as_ref(),
            )?;
            if contents.is_none() {
                notes.push(format!(
                    "volume {}: the files of configmap {} are filled in when the group is created",
                    volume.name, cm.name
                ));
            }
            out.push(Volume {
                name: volume.name.clone(),
                secret: Some(contents.unwrap_or_default()),
                ..Volume::default()
            });
        } else if volume.projected.is_some() {
            notes.push(format!(
                "volume {} (projected, such as the service account token) is not mounted: pods on ACI get no Kubernetes token",
                volume.name
            ));
        } else {
            notes.push(format!(
                "volume {} is not supported on ACI and is not mounted",
                volume.name
            ));
        }
    }
    Ok(out)
}

/// An `exec` probe as an ACI container probe, which ACI runs inside the container (a
/// failed liveness probe restarts it in place). HTTP and TCP probes are the node's.
fn exec_probe(probe: Option<&k8s_openapi::api::core::v1::Probe>) -> Option<serde_json::Value> {
    let probe = probe?;
    let command = probe.exec.as_ref()?.command.clone()?;
    let mut out = serde_json::json!({"exec": {"command": command}});
    for (key, value) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("periodSeconds", probe.period_seconds),
        ("failureThreshold", probe.failure_threshold),
        ("successThreshold", probe.success_threshold),
        ("timeoutSeconds", probe.timeout_seconds),
    ] {
        if let Some(value) = value {
            out[key] = serde_json::json!(value);
        }
    }
    Some(out)
}

fn mounts(container: &PodContainer, carried: &[Volume]) -> Option<Vec<VolumeMount>> {
    let mounts: Vec<VolumeMount> = container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| carried.iter().any(|v| v.name == m.name))
        .map(|m| VolumeMount {
            name: m.name.clone(),
            mount_path: m.mount_path.clone(),
            read_only: m.read_only,
        })
        .collect();
    (!mounts.is_empty()).then_some(mounts)
}

/// Translates `pod` for `settings`; `lookup` supplies Secret values, volume files and
/// registry credentials ([`Placeholders`] offline).
pub fn translate(
    pod: &Pod,
    settings: &AciSettings,
    lookup: &dyn AciLookup,
) -> Result<AciRequest, TranslateError> {
    let spec = pod.spec.as_ref().ok_or(TranslateError::NoContainers)?;
    if spec.containers.is_empty() {
        return Err(TranslateError::NoContainers);
    }
    let meta = &pod.metadata;
    let (namespace, pod_name, uid) = (
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default(),
        meta.uid.as_deref().unwrap_or_default(),
    );
    let mut notes = Vec::new();
    // Native sidecars run beside the app for the pod's whole life: on ACI they are
    // regular containers of the group (after the app's); classic init containers stay
    // init containers.
    let running: Vec<PodContainer> = spec
        .containers
        .iter()
        .chain(
            spec.init_containers
                .iter()
                .flatten()
                .filter(|c| is_sidecar(c)),
        )
        .cloned()
        .collect();
    let sizes = container_sizes(&running, settings);
    let context = EnvContext {
        node_name: &settings.node_name,
        default_cpu_millis: sizes.first().map_or(settings.default_cpu_millis, |s| s.0),
        default_memory_bytes: sizes.first().map_or(settings.default_memory_bytes, |s| s.1),
    };
    let carried = volumes(pod, lookup, &mut notes)?;

    let mut containers = Vec::new();
    let mut group_ports = Vec::new();
    let (mut total_cores, mut total_gb) = (0.0, 0.0);
    for (container, (cpu_millis, memory_bytes)) in running.iter().zip(&sizes) {
        let requests = ResourceRequests {
            cpu: cores(*cpu_millis),
            memory_in_gb: gigabytes(*memory_bytes),
            gpu: None,
        };
        total_cores += requests.cpu;
        total_gb += requests.memory_in_gb;
        let limits = (cpu_of(container, "limits").is_some()
            || memory_of(container, "limits").is_some())
        .then(|| ResourceLimits {
            cpu: cpu_of(container, "limits").map(|m| cores(m).max(requests.cpu)),
            memory_in_gb: memory_of(container, "limits")
                .map(|b| gigabytes(b).max(requests.memory_in_gb)),
            gpu: None,
        });
        let mut ports = Vec::new();
        for port in container.ports.iter().flatten() {
            let protocol = port
                .protocol
                .as_deref()
                .unwrap_or("TCP")
                .to_ascii_uppercase();
            if protocol != "TCP" && protocol != "UDP" {
                notes.push(format!(
                    "container {}: {protocol} port {} is not supported on ACI",
                    container.name, port.container_port
                ));
                continue;
            }
            ports.push(ContainerPort {
                protocol: Some(protocol.clone()),
                port: port.container_port,
            });
            if !group_ports.iter().any(|p: &Port| {
                p.port == port.container_port && p.protocol.as_deref() == Some(protocol.as_str())
            }) {
                group_ports.push(Port {
                    protocol: Some(protocol),
                    port: port.container_port,
                });
            }
        }
        containers.push(Container {
            name: container.name.clone(),
            properties: ContainerProperties {
                image: container.image.clone().unwrap_or_default(),
                command: command_line(container, &mut notes),
                ports: (!ports.is_empty()).then_some(ports),
                environment_variables: environment(pod, container, &context, lookup, &mut notes)?,
                resources: ResourceRequirements { requests, limits },
                volume_mounts: mounts(container, &carried),
                liveness_probe: exec_probe(container.liveness_probe.as_ref()),
                readiness_probe: exec_probe(container.readiness_probe.as_ref()),
                ..ContainerProperties::default()
            },
        });
    }
    let mut init_containers = Vec::new();
    for container in spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| !is_sidecar(c))
    {
        init_containers.push(InitContainer {
            name: container.name.clone(),
            properties: InitContainerProperties {
                image: container.image.clone(),
                command: command_line(container, &mut notes),
                environment_variables: environment(pod, container, &context, lookup, &mut notes)?,
                volume_mounts: mounts(container, &carried),
                ..InitContainerProperties::default()
            },
        });
    }
    let mut credentials = Vec::new();
    for secret in spec.image_pull_secrets.iter().flatten() {
        match lookup.registry_credentials(&secret.name) {
            Some(found) => credentials.extend(found),
            None => notes.push(format!(
                "imagePullSecret {} not found; images are pulled without it",
                secret.name
            )),
        }
    }
    let subnet_ids: Vec<SubnetId> = settings
        .subnet_ids
        .iter()
        .map(|id| SubnetId {
            id: id.clone(),
            name: None,
        })
        .collect();
    let ip_address = if subnet_ids.is_empty() {
        notes.push(
            "no subnet configured: the group gets no address in the cluster's network".into(),
        );
        None
    } else {
        (!group_ports.is_empty()).then(|| IpAddress {
            ports: group_ports,
            address_type: "Private".into(),
            ..IpAddress::default()
        })
    };
    let restart_policy = match spec.restart_policy.as_deref() {
        Some("Never") => "Never",
        Some("OnFailure") => "OnFailure",
        _ => "Always",
    };
    let tags = BTreeMap::from([
        (TAG_POD_UID.to_owned(), uid.to_owned()),
        (TAG_NAMESPACE.to_owned(), namespace.to_owned()),
        (TAG_POD_NAME.to_owned(), pod_name.to_owned()),
        (TAG_NODE.to_owned(), settings.node_name.clone()),
        (TAG_CLUSTER.to_owned(), settings.cluster_id.clone()),
    ]);
    let group = ContainerGroup {
        location: Some(settings.location.clone()),
        tags: Some(tags),
        properties: ContainerGroupProperties {
            containers,
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            image_registry_credentials: (!credentials.is_empty()).then_some(credentials),
            restart_policy: Some(restart_policy.into()),
            ip_address,
            os_type: "Linux".into(),
            volumes: (!carried.is_empty()).then_some(carried),
            subnet_ids: (!subnet_ids.is_empty()).then_some(subnet_ids),
            ..ContainerGroupProperties::default()
        },
        ..ContainerGroup::default()
    };
    Ok(AciRequest {
        name: group_name(namespace, pod_name, uid),
        group,
        size: BilledSize {
            vcpu: (total_cores * 100.0).round() / 100.0,
            gb: (total_gb * 10.0).round() / 10.0,
        },
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_fit_acis_rule_are_stable_and_never_shared() {
        let uid = "0f8e1f52-3b1c-4a7e-9d55-2f0b8c1e9a10";
        let name = group_name("shop", "web-7d9f8b6c5-x2x4q", uid);
        assert!(name.starts_with("shop-web-7d9f8b6c5-x2x4q-"), "{name}");
        assert_eq!(name, group_name("shop", "web-7d9f8b6c5-x2x4q", uid));
        assert_ne!(
            name,
            group_name("shop", "web-7d9f8b6c5-x2x4q", "another-uid")
        );
        let long = "a".repeat(253);
        for (namespace, pod) in [
            ("shop", long.as_str()),
            ("Team.A", "Web..Server--1"),
            ("-", "-"),
            ("x", "ünïcode-pod-"),
        ] {
            let name = group_name(namespace, pod, uid);
            assert!(valid_group_name(&name), "{namespace}/{pod} → {name}");
        }
        assert_eq!(group_name("-", "-", uid).len(), "pod-".len() + 10);
        assert!(!valid_group_name("a--b") && !valid_group_name("-a") && !valid_group_name("A"));
    }

    #[test]
    fn sizes_round_up_to_acis_steps() {
        assert_eq!(cores(333), 0.34);
        assert_eq!(cores(1000), 1.0);
        assert_eq!(cores(1), 0.01);
        assert_eq!(cores(0), 0.01);
        assert_eq!(gigabytes(1 << 30), 1.0);
        assert_eq!(gigabytes((1 << 30) + 1), 1.1);
        assert_eq!(gigabytes(64 << 20), 0.1);
        assert_eq!(gigabytes(3 << 29), 1.5);
    }
}
