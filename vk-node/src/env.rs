//! A container's environment resolved the way a kubelet resolves it, for any provider:
//! `envFrom` first, then `env` (a later name wins), literals and ConfigMap values as plain
//! values, downward-API fields from the pod, resource fields from the container (the
//! provider's size filling what it does not request), and Secret values kept as
//! references that only the provider's secret channel (ECS `secrets`, ACI `secureValue`)
//! ever carries. Pure: ConfigMap and Secret contents come through [`EnvLookup`].

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use spillway_common::quantity;

/// ConfigMap and Secret contents the env of a pod refers to.
pub trait EnvLookup {
    /// A ConfigMap key's value.
    fn config_map_value(&self, name: &str, key: &str) -> Option<String>;
    /// All entries of a ConfigMap (for `envFrom`).
    fn config_map_entries(&self, name: &str) -> Option<Vec<(String, String)>>;
    /// The keys of a Secret (for `envFrom`); values are never needed here.
    fn secret_keys(&self, name: &str) -> Option<Vec<String>>;
}

/// A lookup that knows nothing: ConfigMap values become visible placeholders (for
/// `explain-pod`, which sees only the pod).
pub struct Placeholders;

impl EnvLookup for Placeholders {
    fn config_map_value(&self, name: &str, key: &str) -> Option<String> {
        Some(format!("<configmap {name} key {key}>"))
    }
    fn config_map_entries(&self, _: &str) -> Option<Vec<(String, String)>> {
        None
    }
    fn secret_keys(&self, _: &str) -> Option<Vec<String>> {
        None
    }
}

/// Where one variable's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvValue {
    /// A literal, a ConfigMap value or a resource field: the same for identical pods.
    Fixed(String),
    /// A downward-API field of this pod (its name, UID, labels…).
    PerPod(String),
    /// A Secret's key: never written out as plain text.
    Secret {
        /// Secret name.
        secret: String,
        /// Key in it.
        key: String,
        /// Whether a missing Secret or key is fine.
        optional: bool,
    },
}

/// One resolved variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedVar {
    /// Variable name.
    pub name: String,
    /// Its value's source.
    pub value: EnvValue,
}

/// What the resolution needs to know besides the pod.
#[derive(Clone, Copy, Debug)]
pub struct EnvContext<'a> {
    /// The virtual node's name (`spec.nodeName`).
    pub node_name: &'a str,
    /// CPU the provider gives a container that requests none, millicores.
    pub default_cpu_millis: u64,
    /// Memory the provider gives a container that requests none, bytes.
    pub default_memory_bytes: u64,
}

/// Why an environment cannot be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    /// A required ConfigMap or key is missing.
    #[error("configmap {name} (key {key}) not found")]
    MissingConfigMap {
        /// ConfigMap.
        name: String,
        /// Key.
        key: String,
    },
}

/// A container's `requests` or `limits` quantity of `resource` (`cpu`, `memory`), as
/// written.
pub(crate) fn quantity_of(container: &Container, kind: &str, resource: &str) -> Option<String> {
    let requirements = container.resources.as_ref()?;
    let map = match kind {
        "requests" => requirements.requests.as_ref()?,
        "limits" => requirements.limits.as_ref()?,
        _ => return None,
    };
    map.get(resource).map(|q| q.0.clone())
}

fn field_ref_value(pod: &Pod, path: &str, node_name: &str) -> Option<String> {
    let meta = &pod.metadata;
    let bracketed = |prefix: &str| path.strip_prefix(prefix).and_then(|r| r.strip_suffix("']"));
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => Some(node_name.to_owned()),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone()),
        _ => {
            if let Some(key) = bracketed("metadata.labels['") {
                return meta.labels.as_ref()?.get(key).cloned();
            }
            if let Some(key) = bracketed("metadata.annotations['") {
                return meta.annotations.as_ref()?.get(key).cloned();
            }
            None
        }
    }
}

fn resource_field_value(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
    context: &EnvContext<'_>,
) -> Option<String> {
    let (kind, name) = resource.split_once('.')?;
    let value = quantity_of(container, kind, name);
    if name == "cpu" {
        let millis = match value {
            Some(q) => quantity::cpu_millis(&q).ok()?,
            None => context.default_cpu_millis,
        };
        let divisor = divisor
            .map(quantity::cpu_millis)
            .transpose()
            .ok()?
            .unwrap_or(1000)
            .max(1);
        Some(millis.div_ceil(divisor).to_string())
    } else {
        let bytes = match value {
            Some(q) => quantity::bytes(&q).ok()?,
            None => context.default_memory_bytes,
        };
        let divisor = divisor
            .map(quantity::bytes)
            .transpose()
            .ok()?
            .unwrap_or(1)
            .max(1);
        Some(bytes.div_ceil(divisor).to_string())
    }
}

/// The environment of `container` of `pod`, in order; what cannot be carried over is
/// said in `notes`.
pub fn resolve(
    pod: &Pod,
    container: &Container,
    context: &EnvContext<'_>,
    lookup: &dyn EnvLookup,
    notes: &mut Vec<String>,
) -> Result<Vec<ResolvedVar>, EnvError> {
    let mut vars: Vec<ResolvedVar> = Vec::new();
    let mut set = |name: String, value: EnvValue| {
        vars.retain(|v| v.name != name);
        vars.push(ResolvedVar { name, value });
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        if let Some(cm) = &from.config_map_ref {
            match lookup.config_map_entries(&cm.name) {
                Some(entries) => {
                    for (key, value) in entries {
                        set(format!("{prefix}{key}"), EnvValue::Fixed(value));
                    }
                }
                None if cm.optional == Some(true) => {}
                None => notes.push(format!("envFrom configmap {} not expanded here", cm.name)),
            }
        }
        if let Some(secret) = &from.secret_ref {
            match lookup.secret_keys(&secret.name) {
                Some(keys) => {
                    for key in keys {
                        let value = EnvValue::Secret {
                            secret: secret.name.clone(),
                            key: key.clone(),
                            optional: secret.optional == Some(true),
                        };
                        set(format!("{prefix}{key}"), value);
                    }
                }
                None if secret.optional == Some(true) => {}
                None => notes.push(format!("envFrom secret {} not expanded here", secret.name)),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let EnvVar {
            name,
            value,
            value_from,
        } = var;
        let Some(source) = value_from else {
            set(
                name.clone(),
                EnvValue::Fixed(value.clone().unwrap_or_default()),
            );
            continue;
        };
        if let Some(cm) = &source.config_map_key_ref {
            match lookup.config_map_value(&cm.name, &cm.key) {
                Some(value) => set(name.clone(), EnvValue::Fixed(value)),
                None if cm.optional == Some(true) => {}
                None => {
                    return Err(EnvError::MissingConfigMap {
                        name: cm.name.clone(),
                        key: cm.key.clone(),
                    });
                }
            }
        } else if let Some(secret) = &source.secret_key_ref {
            let value = EnvValue::Secret {
                secret: secret.name.clone(),
                key: secret.key.clone(),
                optional: secret.optional == Some(true),
            };
            set(name.clone(), value);
        } else if let Some(field) = &source.field_ref {
            match field_ref_value(pod, &field.field_path, context.node_name) {
                Some(value) => set(name.clone(), EnvValue::PerPod(value)),
                None => notes.push(format!(
                    "env {name} ({}) is not known when the pod starts and is left unset",
                    field.field_path
                )),
            }
        } else if let Some(resource) = &source.resource_field_ref {
            let target = resource
                .container_name
                .as_deref()
                .and_then(|n| pod.spec.as_ref()?.containers.iter().find(|c| c.name == n))
                .unwrap_or(container);
            let divisor = resource.divisor.as_ref().map(|d| d.0.as_str());
            if let Some(value) = resource_field_value(target, &resource.resource, divisor, context)
            {
                set(name.clone(), EnvValue::Fixed(value));
            }
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Known;

    impl EnvLookup for Known {
        fn config_map_value(&self, name: &str, key: &str) -> Option<String> {
            (name == "settings" && key == "mode").then(|| "fast".to_owned())
        }
        fn config_map_entries(&self, name: &str) -> Option<Vec<(String, String)>> {
            (name == "settings")
                .then(|| vec![("mode".into(), "fast".into()), ("LEVEL".into(), "2".into())])
        }
        fn secret_keys(&self, name: &str) -> Option<Vec<String>> {
            (name == "db").then(|| vec!["password".into()])
        }
    }

    fn pod(container: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"containers": [container]}
        }))
        .unwrap()
    }

    const CONTEXT: EnvContext<'static> = EnvContext {
        node_name: "spillway-aci",
        default_cpu_millis: 250,
        default_memory_bytes: 512 << 20,
    };

    #[test]
    fn every_source_resolves_and_later_names_win() {
        let pod = pod(json!({"name": "app", "image": "nginx",
        "envFrom": [{"configMapRef": {"name": "settings"}}, {"prefix": "DB_", "secretRef": {"name": "db"}}],
        "env": [
            {"name": "LEVEL", "value": "3"},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
        ]}));
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let mut notes = Vec::new();
        let vars = resolve(&pod, container, &CONTEXT, &Known, &mut notes).unwrap();
        let get = |name: &str| {
            vars.iter()
                .find(|v| v.name == name)
                .map(|v| v.value.clone())
        };
        assert_eq!(
            get("LEVEL"),
            Some(EnvValue::Fixed("3".into())),
            "env wins over envFrom"
        );
        assert_eq!(vars.iter().filter(|v| v.name == "LEVEL").count(), 1);
        assert_eq!(get("MODE"), Some(EnvValue::Fixed("fast".into())));
        assert_eq!(
            get("DB_password"),
            Some(EnvValue::Secret {
                secret: "db".into(),
                key: "password".into(),
                optional: false
            })
        );
        assert!(matches!(get("TOKEN"), Some(EnvValue::Secret { .. })));
        assert_eq!(get("POD"), Some(EnvValue::PerPod("web-1".into())));
        assert_eq!(get("APP"), Some(EnvValue::PerPod("web".into())));
        assert_eq!(
            get("CPU"),
            Some(EnvValue::Fixed("250".into())),
            "the provider's default"
        );
        assert_eq!(get("IP"), None);
        assert!(
            notes.iter().any(|n| n.contains("status.podIP")),
            "{notes:?}"
        );
    }

    #[test]
    fn a_missing_required_configmap_key_is_an_error() {
        let pod = pod(json!({"name": "app", "image": "nginx", "env": [
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "nope"}}},
        ]}));
        let container = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            resolve(&pod, container, &CONTEXT, &Known, &mut Vec::new()),
            Err(EnvError::MissingConfigMap {
                name: "settings".into(),
                key: "nope".into()
            })
        );
    }
}
