//! Pod → ECS requests, pure: the task definition (shared by identical pods, cached by
//! content hash) and the `RunTask` call (per-pod values in overrides, tags and the pod UID
//! as idempotency token). Secret-derived env never appears in either: it is referenced
//! through `secrets` in the pod's own Secrets Manager secret.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use sha2::{Digest, Sha256};
use spillway_common::config::Price;
use spillway_common::pod_resources::{self, PodResources};
use spillway_common::quantity;

use super::ecs_json::*;
use crate::env::{self, EnvContext, EnvError, EnvValue, quantity_of};
use crate::provider::is_sidecar;
use spillway_common::fargate_sizing::{self as sizing, TaskSize};

/// Fargate's upper bound on `stopTimeout`, seconds (ECS ContainerDefinition docs).
pub const FARGATE_MAX_STOP_TIMEOUT: i64 = 120;
/// Smallest container memory ECS accepts, MiB (ECS ContainerDefinition docs).
const MIN_CONTAINER_MIB: i64 = 6;

/// Where tasks run and how they are named.
#[derive(Clone, Debug)]
pub struct FargateSettings {
    /// ECS cluster name or ARN.
    pub cluster: String,
    /// Subnet ids for awsvpc.
    pub subnets: Vec<String>,
    /// Security group ids for awsvpc.
    pub security_groups: Vec<String>,
    /// Whether tasks get a public IP.
    pub assign_public_ip: bool,
    /// Whether tasks run with ECS Exec on (`enableExecuteCommand`).
    pub enable_exec: bool,
    /// Role ECS uses to pull images, write logs and read secrets.
    pub execution_role_arn: Option<String>,
    /// Role the task's code runs as.
    pub task_role_arn: Option<String>,
    /// CloudWatch Logs group for container output.
    pub log_group: String,
    /// AWS region.
    pub region: String,
    /// The virtual node's name (tags, `startedBy`).
    pub node_name: String,
    /// The Kubernetes cluster's id (tags, `startedBy`, secret names).
    pub cluster_id: String,
    /// CPU for pods that name none, millicores.
    pub default_cpu_millis: u64,
    /// Memory for pods that name none, bytes.
    pub default_memory_bytes: u64,
    /// List prices.
    pub price: Price,
}

impl FargateSettings {
    /// Settings for offline use (`explain-pod`): placeholders for network ids.
    pub fn offline(price: Price) -> Self {
        Self {
            cluster: "spillway".into(),
            subnets: vec!["subnet-00000000".into()],
            security_groups: vec!["sg-00000000".into()],
            assign_public_ip: false,
            enable_exec: false,
            execution_role_arn: None,
            task_role_arn: None,
            log_group: "/spillway/pods".into(),
            region: "us-east-1".into(),
            node_name: "spillway-fargate".into(),
            cluster_id: "default".into(),
            default_cpu_millis: 250,
            default_memory_bytes: 512 << 20,
            price,
        }
    }

    /// `startedBy` of every task this node runs, `<cluster id>.<node>` with other
    /// characters as `_` (ECS allows letters, digits, `-`, `_` and 128 characters): what
    /// `ListTasks` filters on, so another cluster's node of the same name is never seen.
    pub fn started_by(&self) -> String {
        let mut value: String = format!("{}_{}", self.cluster_id, self.node_name)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        value.truncate(128);
        value
    }
}

pub use crate::env::{EnvLookup, Placeholders};

/// One Secret value a container's env needs; the node copies it into the pod's
/// Secrets Manager secret under `json_key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Key in the pod's Secrets Manager JSON secret: `<container>.<VAR>`.
    pub json_key: String,
    /// Kubernetes Secret name.
    pub secret: String,
    /// Key in that Secret.
    pub key: String,
    /// Whether a missing Secret or key is fine.
    pub optional: bool,
}

/// What went wrong translating a pod.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    /// Larger than the largest Fargate task.
    #[error(
        "pod needs {cpu_millis}m CPU and {memory_mib} MiB, above Fargate's largest task (16 vCPU / 120 GiB)"
    )]
    TooLarge {
        /// Millicores.
        cpu_millis: u64,
        /// MiB.
        memory_mib: u64,
    },
    /// A required ConfigMap or key is missing.
    #[error("configmap {name} (key {key}) not found")]
    MissingConfigMap {
        /// ConfigMap.
        name: String,
        /// Key.
        key: String,
    },
    /// A Secret used by `envFrom` is missing.
    #[error("secret {name} not found")]
    MissingSecret {
        /// Secret.
        name: String,
    },
    /// The pod has no spec or no containers.
    #[error("pod has no containers")]
    NoContainers,
}

impl From<EnvError> for TranslateError {
    fn from(error: EnvError) -> Self {
        match error {
            EnvError::MissingConfigMap { name, key } => Self::MissingConfigMap { name, key },
        }
    }
}

/// The translation of one pod.
#[derive(Clone, Debug)]
pub struct FargateRequest {
    /// The task size chosen.
    pub size: TaskSize,
    /// `RegisterTaskDefinition` input; `family` is its content hash.
    pub register: RegisterTaskDefinition,
    /// `RunTask` input.
    pub run: RunTask,
    /// Secret values to store in the pod's Secrets Manager secret.
    pub secret_refs: Vec<SecretRef>,
    /// Things that could not be carried over, for Events and `explain-pod`.
    pub notes: Vec<String>,
}

/// The task size for a pod's effective needs, defaults filling unspecified resources.
pub fn size_for(
    needs: &PodResources,
    settings: &FargateSettings,
) -> Result<TaskSize, TranslateError> {
    let cpu = if needs.cpu_specified {
        needs.cpu_millis
    } else {
        settings.default_cpu_millis
    };
    let memory = if needs.memory_specified {
        needs.memory_bytes
    } else {
        settings.default_memory_bytes
    };
    sizing::cheapest(cpu, memory, &settings.price).ok_or(TranslateError::TooLarge {
        cpu_millis: cpu,
        memory_mib: sizing::mebibytes(memory),
    })
}

fn container_memory_mib(container: &Container) -> (Option<i64>, Option<i64>) {
    let mib = |q: Option<String>| {
        q.and_then(|q| quantity::bytes(&q).ok())
            .map(|b| sizing::mebibytes(b) as i64)
    };
    (
        mib(quantity_of(container, "requests", "memory")),
        mib(quantity_of(container, "limits", "memory")),
    )
}

/// Env of one container, split into static (task definition), per-pod (overrides) and
/// secret parts.
struct ContainerEnv {
    fixed: Vec<KeyValuePair>,
    per_pod: Vec<KeyValuePair>,
    secrets: Vec<Secret>,
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
fn translate_env(
    pod: &Pod,
    container: &Container,
    size: TaskSize,
    settings: &FargateSettings,
    lookup: &dyn EnvLookup,
    secret_arn: &str,
    secret_refs: &mut Vec<SecretRef>,
    notes: &mut Vec<String>,
) -> Result<ContainerEnv, TranslateError> {
    let context = EnvContext {
        node_name: &settings.node_name,
        default_cpu_millis: u64::from(size.cpu_units) * 1000 / 1024,
        default_memory_bytes: u64::from(size.memory_mib) << 20,
    };
    let mut env = ContainerEnv {
        fixed: Vec::new(),
        per_pod: Vec::new(),
        secrets: Vec::new(),
    };
    for var in env::resolve(pod, container, &context, lookup, notes)? {
        match var.value {
            EnvValue::Fixed(value) => env.fixed.push(KeyValuePair {
                name: var.name,
                value,
            }),
            EnvValue::PerPod(value) => env.per_pod.push(KeyValuePair {
                name: var.name,
                value,
            }),
            EnvValue::Secret {
                secret,
                key,
                optional,
            } => {
                let json_key = format!("{}.{}", container.name, var.name);
                env.secrets.push(Secret {
                    name: var.name,
                    value_from: format!("{secret_arn}:{json_key}::"),
                });
                secret_refs.push(SecretRef {
                    json_key,
                    secret,
                    key,
                    optional,
                });
            }
        }
    }
    Ok(env)
}

/// The container's `exec` probe as an ECS health check, which ECS runs inside the
/// container (one per container: the liveness probe's, else the readiness or startup
/// probe's). Its timings are clamped to what ECS accepts.
fn health_check(container: &Container) -> Option<HealthCheck> {
    let probe = [
        &container.liveness_probe,
        &container.readiness_probe,
        &container.startup_probe,
    ]
    .into_iter()
    .flatten()
    .find(|p| p.exec.is_some())?;
    let command = probe.exec.as_ref()?.command.clone()?;
    let seconds = |value: Option<i32>, default: i32, low: i32, high: i32| {
        value.unwrap_or(default).clamp(low, high)
    };
    Some(HealthCheck {
        command: std::iter::once("CMD".to_owned()).chain(command).collect(),
        interval: seconds(probe.period_seconds, 10, 5, 300),
        timeout: seconds(probe.timeout_seconds, 1, 2, 60),
        retries: seconds(probe.failure_threshold, 3, 1, 10),
        start_period: seconds(probe.initial_delay_seconds, 0, 0, 300),
    })
}

/// Translates `pod` for `settings`. `secret_arn` is the ARN of the pod's Secrets Manager
/// secret (a placeholder offline).
pub fn translate(
    pod: &Pod,
    settings: &FargateSettings,
    lookup: &dyn EnvLookup,
    secret_arn: Option<&str>,
    spot: bool,
) -> Result<FargateRequest, TranslateError> {
    let spec = pod.spec.as_ref().ok_or(TranslateError::NoContainers)?;
    if spec.containers.is_empty() {
        return Err(TranslateError::NoContainers);
    }
    let needs = pod_resources::effective(spec);
    let size = size_for(&needs, settings)?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let placeholder_arn = format!(
        "arn:aws:secretsmanager:{}:000000000000:secret:spillway/{uid}",
        settings.region
    );
    let secret_arn = secret_arn.unwrap_or(&placeholder_arn);
    let mut notes = Vec::new();
    let mut secret_refs = Vec::new();

    let empty_dirs: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.empty_dir.is_some())
        .map(|v| v.name.as_str())
        .collect();
    for volume in spec.volumes.iter().flatten() {
        let is_token = volume.projected.as_ref().is_some_and(|p| {
            p.sources
                .iter()
                .flatten()
                .any(|s| s.service_account_token.is_some())
        });
        if volume.empty_dir.is_none() && !is_token {
            notes.push(format!(
                "volume {} is not supported on Fargate and is not mounted",
                volume.name
            ));
        }
    }

    // Init containers run in order; native sidecars (`restartPolicy: Always`) among them
    // start in their turn and keep running beside the app, so for memory they count
    // with it.
    let init: Vec<&Container> = spec.init_containers.iter().flatten().collect();
    let sidecars: Vec<&Container> = init.iter().copied().filter(|c| is_sidecar(c)).collect();
    let app: Vec<&Container> = sidecars
        .iter()
        .copied()
        .chain(spec.containers.iter())
        .collect();
    let task_mib = i64::from(size.memory_mib);
    let specified_app: i64 = app
        .iter()
        .filter_map(|c| {
            let (request, limit) = container_memory_mib(c);
            limit.or(request)
        })
        .sum();
    let unspecified_app = app
        .iter()
        .filter(|c| {
            let (r, l) = container_memory_mib(c);
            r.or(l).is_none()
        })
        .count() as i64;
    let share = if unspecified_app > 0 {
        ((task_mib - specified_app) / unspecified_app).max(MIN_CONTAINER_MIB)
    } else {
        MIN_CONTAINER_MIB
    };
    let stop_timeout = spec
        .termination_grace_period_seconds
        .unwrap_or(30)
        .clamp(0, FARGATE_MAX_STOP_TIMEOUT) as i32;

    let mut definitions = Vec::new();
    let mut overrides = Vec::new();
    for (position, (container, is_init)) in init
        .iter()
        .map(|c| (*c, true))
        .chain(spec.containers.iter().map(|c| (c, false)))
        .enumerate()
    {
        let sidecar = is_init && is_sidecar(container);
        // A classic init container runs to completion; a sidecar runs beside the app.
        let runs_to_completion = is_init && !sidecar;
        let env = translate_env(
            pod,
            container,
            size,
            settings,
            lookup,
            secret_arn,
            &mut secret_refs,
            &mut notes,
        )?;
        let (request, limit) = container_memory_mib(container);
        let memory = limit
            .or(request)
            .unwrap_or(if runs_to_completion { task_mib } else { share })
            .clamp(MIN_CONTAINER_MIB, task_mib);
        let reservation = match (request, limit) {
            (Some(r), Some(l)) if r < l => Some(r as i32),
            _ => None,
        };
        let cpu = quantity_of(container, "requests", "cpu")
            .or_else(|| quantity_of(container, "limits", "cpu"))
            .and_then(|q| quantity::cpu_millis(&q).ok())
            .map(|m| sizing::cpu_units(m) as i32);
        // What an init container waits for: a classic one to succeed, a sidecar to
        // start.
        let after = |c: &Container| ContainerDependency {
            container_name: c.name.clone(),
            condition: if is_sidecar(c) { "START" } else { "SUCCESS" }.into(),
        };
        let depends_on = if is_init {
            // Init containers (sidecars among them) start one after another.
            init[..position]
                .last()
                .map(|prev| vec![after(prev)])
                .unwrap_or_default()
        } else {
            init.iter().map(|i| after(i)).collect()
        };
        let mount_points = container
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| empty_dirs.contains(&m.name.as_str()))
            .map(|m| MountPoint {
                source_volume: m.name.clone(),
                container_path: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(false),
            })
            .collect();
        let port_mappings = container
            .ports
            .iter()
            .flatten()
            .map(|p| PortMapping {
                container_port: p.container_port,
                protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
            })
            .collect();
        let log_configuration = LogConfiguration {
            log_driver: "awslogs".into(),
            options: BTreeMap::from([
                ("awslogs-group".to_owned(), settings.log_group.clone()),
                ("awslogs-region".to_owned(), settings.region.clone()),
                ("awslogs-stream-prefix".to_owned(), "spillway".to_owned()),
            ]),
        };
        if !env.per_pod.is_empty() {
            overrides.push(ContainerOverride {
                name: container.name.clone(),
                environment: env.per_pod,
            });
        }
        definitions.push(ContainerDefinition {
            name: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            essential: !is_init,
            entry_point: container.command.clone(),
            command: container.args.clone(),
            working_directory: container.working_dir.clone(),
            cpu,
            memory: memory as i32,
            memory_reservation: reservation,
            environment: env.fixed,
            secrets: env.secrets,
            port_mappings,
            depends_on,
            mount_points,
            stop_timeout: (!runs_to_completion).then_some(stop_timeout),
            log_configuration: Some(log_configuration),
            health_check: health_check(container),
        });
    }

    let mut register = RegisterTaskDefinition {
        family: String::new(),
        network_mode: "awsvpc".into(),
        requires_compatibilities: vec!["FARGATE".into()],
        cpu: size.cpu_units.to_string(),
        memory: size.memory_mib.to_string(),
        execution_role_arn: settings.execution_role_arn.clone(),
        task_role_arn: settings.task_role_arn.clone(),
        container_definitions: definitions,
        volumes: empty_dirs
            .iter()
            .map(|name| Volume {
                name: (*name).to_owned(),
            })
            .collect(),
        tags: vec![Tag {
            key: "spillway.io/managed-by".into(),
            value: "spillway".into(),
        }],
    };
    register.family = family_for(&register);

    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let run = RunTask {
        cluster: settings.cluster.clone(),
        task_definition: register.family.clone(),
        launch_type: (!spot).then(|| "FARGATE".to_owned()),
        capacity_provider_strategy: if spot {
            vec![CapacityProviderStrategyItem {
                capacity_provider: "FARGATE_SPOT".into(),
                weight: 1,
            }]
        } else {
            Vec::new()
        },
        count: 1,
        network_configuration: NetworkConfiguration {
            awsvpc_configuration: AwsVpcConfiguration {
                subnets: settings.subnets.clone(),
                security_groups: settings.security_groups.clone(),
                assign_public_ip: if settings.assign_public_ip {
                    "ENABLED"
                } else {
                    "DISABLED"
                }
                .into(),
            },
        },
        overrides: TaskOverride {
            container_overrides: overrides,
        },
        started_by: settings.started_by(),
        enable_execute_command: settings.enable_exec,
        client_token: uid.clone(),
        tags: vec![
            Tag {
                key: super::TAG_POD_UID.into(),
                value: uid,
            },
            Tag {
                key: super::TAG_POD.into(),
                value: format!("{namespace}/{name}"),
            },
            Tag {
                key: super::TAG_NODE.into(),
                value: settings.node_name.clone(),
            },
            Tag {
                key: super::TAG_CLUSTER.into(),
                value: settings.cluster_id.clone(),
            },
        ],
    };
    Ok(FargateRequest {
        size,
        register,
        run,
        secret_refs,
        notes,
    })
}

/// `spillway-<first 32 hex digits of the SHA-256 of the definition>`, family excluded.
pub fn family_for(definition: &RegisterTaskDefinition) -> String {
    let mut unnamed = definition.clone();
    unnamed.family.clear();
    let bytes = serde_json::to_vec(&unnamed).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    format!("spillway-{}", &hex::encode(digest)[..32])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use spillway_common::config::PricingConfig;

    fn settings() -> FargateSettings {
        FargateSettings::offline(PricingConfig::default().fargate)
    }

    fn pod(name: &str, uid: &str, container: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "uid": uid},
            "spec": {"containers": [container], "terminationGracePeriodSeconds": 600}
        }))
        .unwrap()
    }

    fn web(name: &str, uid: &str) -> Pod {
        pod(
            name,
            uid,
            json!({
                "name": "app", "image": "nginx",
                "env": [
                    {"name": "MODE", "value": "prod"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}},
                    {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}}
                ],
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
            }),
        )
    }

    #[test]
    fn native_sidecars_start_in_order_and_run_beside_the_app_without_keeping_the_task() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "job", "namespace": "shop", "uid": "uid-j"},
            "spec": {"restartPolicy": "Never", "initContainers": [
                {"name": "migrate", "image": "tool"},
                {"name": "proxy", "image": "envoy", "restartPolicy": "Always",
                    "resources": {"requests": {"memory": "256Mi"}}},
                {"name": "warm", "image": "tool"}
            ], "containers": [{"name": "app", "image": "batch"}]}
        }))
        .unwrap();
        let request = translate(&pod, &settings(), &Placeholders, None, false).unwrap();
        let defs = &request.register.container_definitions;
        // (name, essential, dependsOn, has a stop timeout)
        type Shape<'a> = (&'a str, bool, Vec<(&'a str, &'a str)>, bool);
        let view: Vec<Shape<'_>> = defs
            .iter()
            .map(|d| {
                (
                    d.name.as_str(),
                    d.essential,
                    d.depends_on
                        .iter()
                        .map(|p| (p.container_name.as_str(), p.condition.as_str()))
                        .collect(),
                    d.stop_timeout.is_some(),
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                ("migrate", false, vec![], false),
                // The sidecar waits for the init container before it, runs on (a stop
                // timeout of its own) and is not essential: the task ends with the app.
                ("proxy", false, vec![("migrate", "SUCCESS")], true),
                ("warm", false, vec![("proxy", "START")], false),
                (
                    "app",
                    true,
                    vec![
                        ("migrate", "SUCCESS"),
                        ("proxy", "START"),
                        ("warm", "SUCCESS")
                    ],
                    true
                ),
            ]
        );
        assert_eq!(defs[1].memory, 256, "its own memory, beside the app's");
    }

    #[test]
    fn ecs_exec_is_asked_for_only_when_the_operator_turned_it_on() {
        let off = translate(&web("web", "u1"), &settings(), &Placeholders, None, false).unwrap();
        assert!(!off.run.enable_execute_command);
        let body = serde_json::to_value(&off.run).unwrap();
        assert!(body.get("enableExecuteCommand").is_none(), "{body}");
        let on_settings = FargateSettings {
            enable_exec: true,
            ..settings()
        };
        let on = translate(&web("web", "u1"), &on_settings, &Placeholders, None, false).unwrap();
        assert_eq!(
            serde_json::to_value(&on.run).unwrap()["enableExecuteCommand"],
            true
        );
    }

    #[test]
    fn identical_pods_share_a_task_definition() {
        let a = translate(
            &web("web-a", "uid-a"),
            &settings(),
            &Placeholders,
            Some("arn:x:secret:shared"),
            false,
        )
        .unwrap();
        let b = translate(
            &web("web-b", "uid-b"),
            &settings(),
            &Placeholders,
            Some("arn:x:secret:shared"),
            false,
        )
        .unwrap();
        assert_eq!(a.register, b.register);
        assert_ne!(a.run.overrides, b.run.overrides);
        assert_eq!(a.run.client_token, "uid-a");
        assert_eq!(a.run.task_definition, a.register.family);
        assert!(a.register.family.starts_with("spillway-") && a.register.family.len() == 9 + 32);
    }

    #[test]
    fn secrets_travel_by_reference_only() {
        let request = translate(
            &web("web-a", "uid-a"),
            &settings(),
            &Placeholders,
            Some("arn:aws:secretsmanager:r:1:secret:spillway/uid-a-AbCdEf"),
            false,
        )
        .unwrap();
        let container = &request.register.container_definitions[0];
        assert!(container.environment.iter().all(|e| e.name != "TOKEN"));
        assert_eq!(
            container.secrets,
            vec![Secret {
                name: "TOKEN".into(),
                value_from: "arn:aws:secretsmanager:r:1:secret:spillway/uid-a-AbCdEf:app.TOKEN::"
                    .into(),
            }]
        );
        assert_eq!(
            request.secret_refs,
            vec![SecretRef {
                json_key: "app.TOKEN".into(),
                secret: "api".into(),
                key: "token".into(),
                optional: false
            }]
        );
        assert_eq!(
            request.run.overrides.container_overrides[0].environment,
            vec![KeyValuePair {
                name: "ME".into(),
                value: "web-a".into()
            }]
        );
        assert!(container.environment.contains(&KeyValuePair {
            name: "CPU".into(),
            value: "1000".into()
        }));
    }

    #[test]
    fn sizes_memory_and_stop_timeout() {
        let request = translate(&web("w", "u"), &settings(), &Placeholders, None, false).unwrap();
        // requests 500m / 1Gi: the cheapest covering size is 0.5 vCPU / 1 GiB.
        assert_eq!(
            (
                request.register.cpu.as_str(),
                request.register.memory.as_str()
            ),
            ("512", "1024")
        );
        let container = &request.register.container_definitions[0];
        assert_eq!(
            container.memory, 1024,
            "the 2Gi limit is capped at the task memory"
        );
        assert_eq!(
            container.stop_timeout,
            Some(120),
            "Fargate caps stopTimeout at 120 s"
        );
        assert_eq!(request.run.launch_type.as_deref(), Some("FARGATE"));
    }

    #[test]
    fn defaults_apply_when_nothing_is_requested() {
        let bare = pod("p", "u", json!({"name": "app", "image": "busybox"}));
        let request = translate(&bare, &settings(), &Placeholders, None, true).unwrap();
        assert_eq!(
            (
                request.register.cpu.as_str(),
                request.register.memory.as_str()
            ),
            ("256", "512")
        );
        assert_eq!(request.register.container_definitions[0].memory, 512);
        assert!(request.run.launch_type.is_none());
        assert_eq!(
            request.run.capacity_provider_strategy[0].capacity_provider,
            "FARGATE_SPOT"
        );
    }

    #[test]
    fn too_large_is_refused() {
        let big = pod(
            "p",
            "u",
            json!({"name": "app", "image": "x", "resources": {"requests": {"cpu": "16", "memory": "121Gi"}}}),
        );
        assert!(matches!(
            translate(&big, &settings(), &Placeholders, None, false),
            Err(TranslateError::TooLarge { .. })
        ));
    }

    #[test]
    fn missing_required_configmap_is_an_error() {
        struct Empty;
        impl EnvLookup for Empty {
            fn config_map_value(&self, _: &str, _: &str) -> Option<String> {
                None
            }
            fn config_map_entries(&self, _: &str) -> Option<Vec<(String, String)>> {
                None
            }
            fn secret_keys(&self, _: &str) -> Option<Vec<String>> {
                None
            }
        }
        let p = pod(
            "p",
            "u",
            json!({"name": "app", "image": "x", "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "a"}}}]}),
        );
        assert_eq!(
            translate(&p, &settings(), &Empty, None, false).unwrap_err(),
            TranslateError::MissingConfigMap {
                name: "cfg".into(),
                key: "a".into()
            }
        );
    }
}
