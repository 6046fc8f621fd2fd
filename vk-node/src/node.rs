//! The Node object of a virtual node: registration with the labels and taint of DESIGN §5
//! (again whenever someone deletes it), the Lease heartbeat (40 s, renewed every 10 s),
//! node status every minute, and the provider-degraded taint.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use spillway_common::keys;
use spillway_common::taint::NodeTaint;

/// Lease duration, as the kubelet uses (virtual-kubelet's documented constant).
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// Lease renewal period (a quarter of the duration, as the kubelet does).
pub const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// Node status period (virtual-kubelet's documented constant).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(60);

/// The feature the node declares in `status.declaredFeatures` so the apiserver proxies
/// exec and attach WebSockets to it as they are.
pub const EXTEND_WEBSOCKETS_TO_KUBELET: &str = "ExtendWebSocketsToKubelet";

/// What the Node says about itself.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Node name.
    pub name: String,
    /// `fargate`, `aci` or `mock`.
    pub provider: String,
    /// Allocatable vCPU.
    pub max_vcpu: u32,
    /// Allocatable memory, a Kubernetes quantity.
    pub max_memory: String,
    /// Allocatable pods.
    pub max_pods: u32,
    /// Address the kubelet API is reached on.
    pub address: String,
    /// Kubelet API port.
    pub kubelet_port: u16,
    /// The operator's own labels (`--node-label`), beside the ones Spillway sets.
    pub extra_labels: BTreeMap<String, String>,
    /// The operator's own taints (`--node-taint`), beside the virtual-node taint; burst
    /// pods are given tolerations for them by the webhook and the controller.
    pub extra_taints: Vec<NodeTaint>,
}

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Creating or reading the Node failed.
    #[error("register node: {0}")]
    Register(#[source] kube::Error),
    /// Writing node status failed.
    #[error("patch node status: {0}")]
    PatchStatus(#[source] kube::Error),
    /// Renewing the Lease failed.
    #[error("renew lease: {0}")]
    RenewLease(#[source] kube::Error),
    /// Changing taints failed.
    #[error("patch node taints: {0}")]
    PatchTaints(#[source] kube::Error),
}

fn now() -> String {
    spillway_common::time::rfc3339(SystemTime::now())
}

/// Annotation on the Node listing the operator taints it was last given (`key:effect`,
/// comma-separated), so one dropped from `--node-taint` is removed on the next start
/// while taints others set are left alone.
pub const OPERATOR_TAINTS_ANNOTATION: &str = "spillway.io/node-taints";

fn taint_value(taint: &NodeTaint) -> Value {
    if taint.value.is_empty() {
        json!({"key": taint.key, "effect": taint.effect})
    } else {
        json!({"key": taint.key, "value": taint.value, "effect": taint.effect})
    }
}

/// A taint's identity on a Node: its key and effect.
fn taint_identity(taint: &Value) -> String {
    format!(
        "{}:{}",
        taint["key"].as_str().unwrap_or(""),
        taint["effect"].as_str().unwrap_or("")
    )
}

fn operator_taint_list(spec: &NodeSpec) -> String {
    spec.extra_taints
        .iter()
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect::<Vec<_>>()
        .join(",")
}

fn taints(spec: &NodeSpec) -> Value {
    let mut taints = vec![
        json!({"key": keys::VIRTUAL_NODE_TAINT, "value": spec.provider, "effect": "NoSchedule"}),
    ];
    taints.extend(spec.extra_taints.iter().map(taint_value));
    Value::Array(taints)
}

/// The node's taints with the operator's as configured now: the ones it was given before
/// (`previous`, from [`OPERATOR_TAINTS_ANNOTATION`]) and no longer has are removed, the
/// configured ones added or given their new value, every other taint left as it was.
fn with_operator_taints(current: &[Value], previous: &str, spec: &NodeSpec) -> Vec<Value> {
    let configured: Vec<Value> = spec.extra_taints.iter().map(taint_value).collect();
    let configured_ids: Vec<String> = configured.iter().map(taint_identity).collect();
    let mut taints: Vec<Value> = current
        .iter()
        .filter(|t| {
            let id = taint_identity(t);
            !configured_ids.contains(&id) && !previous.split(',').any(|p| p == id)
        })
        .cloned()
        .collect();
    taints.extend(configured);
    taints
}

/// The node's taints with the degraded taint added or removed and every other taint as
/// it was (`spec.taints` is an atomic list: a patch naming it replaces all of it).
fn with_degraded_taint(current: &[Value], spec: &NodeSpec, degraded: bool) -> Vec<Value> {
    let mut taints: Vec<Value> = current
        .iter()
        .filter(|t| t["key"] != keys::PROVIDER_DEGRADED_TAINT)
        .cloned()
        .collect();
    if degraded {
        taints.push(json!({"key": keys::PROVIDER_DEGRADED_TAINT, "value": spec.provider, "effect": "NoSchedule"}));
    }
    taints
}

/// The label keys Spillway sets on every virtual node; `--node-label` may not name them.
pub const OWN_LABEL_KEYS: [&str; 7] = [
    keys::NODE_TYPE_LABEL,
    "kubernetes.io/role",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "kubernetes.io/hostname",
    keys::NODE_PROVIDER_LABEL,
    "node.kubernetes.io/exclude-from-external-load-balancers",
];

/// Every label of the node: the operator's, then Spillway's own.
fn labels(spec: &NodeSpec) -> BTreeMap<String, String> {
    let own = [
        keys::NODE_TYPE_VIRTUAL,
        "agent",
        "linux",
        "amd64",
        spec.name.as_str(),
        spec.provider.as_str(),
        "true",
    ];
    let mut labels = spec.extra_labels.clone();
    for (key, value) in OWN_LABEL_KEYS.into_iter().zip(own) {
        labels.insert(key.to_owned(), value.to_owned());
    }
    labels
}

/// The Node object as first registered.
pub fn node_object(spec: &NodeSpec) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": spec.name,
            "labels": labels(spec),
            "annotations": {OPERATOR_TAINTS_ANNOTATION: operator_taint_list(spec)},
        },
        "spec": {"taints": taints(spec)},
    })
}

/// The node's `status`.
pub fn node_status(spec: &NodeSpec) -> Value {
    let now = now();
    let resources = json!({"cpu": spec.max_vcpu.to_string(), "memory": spec.max_memory, "pods": spec.max_pods.to_string()});
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("Ready", "True", "KubeletReady", "spillway virtual node is ready"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "budget-based capacity"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no local disk"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "no local processes"),
            condition("NetworkUnavailable", "False", "RouteCreated", "provider networking"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": spec.address},
            {"type": "Hostname", "address": spec.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": spec.kubelet_port}},
        // The apiserver (1.36+) then passes kubectl's exec and attach WebSockets through
        // to the kubelet API instead of translating them to SPDY, which it does not speak.
        "declaredFeatures": [EXTEND_WEBSOCKETS_TO_KUBELET],
        "nodeInfo": {
            "machineID": spec.name, "systemUUID": spec.name, "bootID": spec.name,
            "kernelVersion": "", "osImage": format!("spillway {}", spec.provider),
            "containerRuntimeVersion": format!("spillway://{}", spec.provider),
            "kubeletVersion": concat!("v1.37.2-spillway-", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
        },
    })
}

/// Creates the Node if it is missing, then writes its status.
pub async fn register(client: &Client, spec: &NodeSpec) -> Result<Node, NodeError> {
    let (node, _) = get_or_create(client, spec).await?;
    let node = add_missing_labels(client, spec, node).await?;
    let annotations = node.metadata.annotations.clone().unwrap_or_default();
    let previous = annotations
        .get(OPERATOR_TAINTS_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    let list = operator_taint_list(spec);
    let changed = change_taints(client, spec, |current| {
        with_operator_taints(current, &previous, spec)
    })
    .await?;
    if changed || annotations.get(OPERATOR_TAINTS_ANNOTATION) != Some(&list) {
        Api::<Node>::all(client.clone())
            .patch(
                &spec.name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {OPERATOR_TAINTS_ANNOTATION: list}}}),
                ),
            )
            .await
            .map_err(NodeError::PatchTaints)?;
    }
    write_status(client, spec).await?;
    Ok(node)
}

/// Adds the labels an existing Node lacks or has with another value (the operator changed
/// `--node-label` since it was created); labels others set are left alone.
async fn add_missing_labels(
    client: &Client,
    spec: &NodeSpec,
    node: Node,
) -> Result<Node, NodeError> {
    let current = node.metadata.labels.clone().unwrap_or_default();
    let missing: BTreeMap<String, String> = labels(spec)
        .into_iter()
        .filter(|(key, value)| current.get(key) != Some(value))
        .collect();
    if missing.is_empty() {
        return Ok(node);
    }
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            &spec.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": missing}})),
        )
        .await
        .map_err(NodeError::Register)
}

/// The Node, created (with its status written) when it is missing, as after someone
/// deleted it; the flag says whether it was.
pub async fn get_or_create(client: &Client, spec: &NodeSpec) -> Result<(Node, bool), NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    if let Some(node) = nodes
        .get_opt(&spec.name)
        .await
        .map_err(NodeError::Register)?
    {
        return Ok((node, false));
    }
    let object: Node = serde_json::from_value(node_object(spec)).expect("node object is valid");
    let node = match nodes.create(&PostParams::default(), &object).await {
        Ok(node) => node,
        // Created in between (by a previous attempt whose answer was lost).
        Err(kube::Error::Api(status)) if status.code == 409 => {
            nodes.get(&spec.name).await.map_err(NodeError::Register)?
        }
        Err(error) => return Err(NodeError::Register(error)),
    };
    write_status(client, spec).await?;
    Ok((node, true))
}

/// Writes the node status (heartbeat times included).
pub async fn write_status(client: &Client, spec: &NodeSpec) -> Result<(), NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(
            &spec.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": node_status(spec)})),
        )
        .await
        .map_err(NodeError::PatchStatus)?;
    Ok(())
}

/// Adds or removes the `spillway.io/provider-degraded` taint and leaves every other taint
/// alone. Returns whether the taints changed.
pub async fn set_degraded(
    client: &Client,
    spec: &NodeSpec,
    degraded: bool,
) -> Result<bool, NodeError> {
    change_taints(client, spec, |current| {
        with_degraded_taint(current, spec, degraded)
    })
    .await
}

/// Writes the Node's taints as `change` makes them from the current ones, unless that
/// changes nothing: read, change, write with the resourceVersion read as a precondition
/// so a taint someone adds in between is never overwritten (re-read and retried on
/// conflict). Returns whether the taints changed.
async fn change_taints(
    client: &Client,
    spec: &NodeSpec,
    change: impl Fn(&[Value]) -> Vec<Value>,
) -> Result<bool, NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let node = nodes
            .get(&spec.name)
            .await
            .map_err(NodeError::PatchTaints)?;
        let current: Vec<Value> = node
            .spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .iter()
            .filter_map(|t| serde_json::to_value(t).ok())
            .collect();
        let taints = change(&current);
        if taints == current {
            return Ok(false);
        }
        // The resourceVersion in the patch is a precondition: 409 if the Node changed.
        let patch = json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"taints": taints},
        });
        match nodes
            .patch(&spec.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => return Ok(true),
            // The Node changed since we read it: read it again.
            Err(kube::Error::Api(status)) if attempt < 5 && status.code == 409 => {}
            Err(error) => return Err(NodeError::PatchTaints(error)),
        }
    }
}

/// Creates or renews the node's Lease in `kube-node-lease`.
pub async fn renew_lease(
    client: &Client,
    spec: &NodeSpec,
    node_uid: &str,
) -> Result<(), NodeError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renew = spillway_common::time::rfc3339_micros(SystemTime::now());
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": spec.name,
            "namespace": "kube-node-lease",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": spec.name, "uid": node_uid}],
        },
        "spec": {"holderIdentity": spec.name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": renew},
    });
    leases
        .patch(
            &spec.name,
            &PatchParams::apply("spillway-vk-node").force(),
            &Patch::Apply(lease),
        )
        .await
        .map_err(NodeError::RenewLease)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_degraded_taint_comes_and_goes_leaving_other_taints() {
        let spec = NodeSpec {
            name: "n".into(),
            provider: "fargate".into(),
            max_vcpu: 1,
            max_memory: "1Gi".into(),
            max_pods: 1,
            address: "127.0.0.1".into(),
            kubelet_port: 10250,
            extra_labels: BTreeMap::new(),
            extra_taints: Vec::new(),
        };
        let other = json!({"key": "example.com/maintenance", "value": "soon", "effect": "PreferNoSchedule"});
        let provider = json!({"key": "virtual-kubelet.io/provider", "value": "fargate", "effect": "NoSchedule"});
        let degraded = json!({"key": "spillway.io/provider-degraded", "value": "fargate", "effect": "NoSchedule"});
        let before = vec![provider.clone(), other.clone()];
        let on = with_degraded_taint(&before, &spec, true);
        assert_eq!(on, vec![provider.clone(), other.clone(), degraded.clone()]);
        // Adding twice does not duplicate it.
        assert_eq!(with_degraded_taint(&on, &spec, true), on);
        assert_eq!(with_degraded_taint(&on, &spec, false), before);
    }

    #[test]
    fn node_object_has_virtual_labels_and_taint() {
        let spec = NodeSpec {
            name: "spillway-fargate".into(),
            provider: "fargate".into(),
            max_vcpu: 100,
            max_memory: "400Gi".into(),
            max_pods: 500,
            address: "127.0.0.1".into(),
            kubelet_port: 10250,
            extra_labels: BTreeMap::new(),
            extra_taints: Vec::new(),
        };
        let spec = NodeSpec {
            extra_labels: BTreeMap::from([
                (
                    "eks.amazonaws.com/compute-type".to_owned(),
                    "fargate".to_owned(),
                ),
                ("type".to_owned(), "not-virtual".to_owned()),
            ]),
            ..spec
        };
        let node: Node = serde_json::from_value(node_object(&spec)).unwrap();
        let labels = node.metadata.labels.unwrap();
        // The operator's labels are added; Spillway's own always win.
        assert_eq!(labels["eks.amazonaws.com/compute-type"], "fargate");
        assert_eq!(labels["type"], "virtual-kubelet");
        assert_eq!(labels["spillway.io/provider"], "fargate");
        assert_eq!(labels["kubernetes.io/role"], "agent");
        let taints = node.spec.unwrap().taints.unwrap();
        assert_eq!(taints[0].key, "virtual-kubelet.io/provider");
        assert_eq!(taints[0].value.as_deref(), Some("fargate"));
        let status: k8s_openapi::api::core::v1::NodeStatus =
            serde_json::from_value(node_status(&spec)).unwrap();
        assert_eq!(status.allocatable.unwrap()["pods"].0, "500");
    }

    #[test]
    fn operator_taints_are_added_changed_and_removed_leaving_others() {
        let taint = |text: &str| spillway_common::taint::parse(text).unwrap();
        let spec = NodeSpec {
            name: "n".into(),
            provider: "aci".into(),
            max_vcpu: 1,
            max_memory: "1Gi".into(),
            max_pods: 1,
            address: "127.0.0.1".into(),
            kubelet_port: 10250,
            extra_labels: BTreeMap::new(),
            extra_taints: vec![
                taint("example.com/burst=only:NoSchedule"),
                taint("dedicated:NoExecute"),
            ],
        };
        let provider =
            json!({"key": "virtual-kubelet.io/provider", "value": "aci", "effect": "NoSchedule"});
        let someone_elses = json!({"key": "example.com/maintenance", "effect": "NoSchedule"});
        let dropped = json!({"key": "example.com/old", "value": "x", "effect": "NoSchedule"});
        let stale_value =
            json!({"key": "example.com/burst", "value": "before", "effect": "NoSchedule"});
        let current = vec![
            provider.clone(),
            someone_elses.clone(),
            dropped,
            stale_value,
        ];
        let taints = with_operator_taints(
            &current,
            "example.com/old:NoSchedule,example.com/burst:NoSchedule",
            &spec,
        );
        assert_eq!(
            taints,
            vec![
                provider,
                someone_elses,
                json!({"key": "example.com/burst", "value": "only", "effect": "NoSchedule"}),
                json!({"key": "dedicated", "effect": "NoExecute"}),
            ]
        );
        // Applied again, nothing changes.
        assert_eq!(
            with_operator_taints(&taints, &operator_taint_list(&spec), &spec),
            taints
        );
        let node: Node = serde_json::from_value(node_object(&spec)).unwrap();
        assert_eq!(node.spec.unwrap().taints.unwrap().len(), 3);
        assert_eq!(
            node.metadata.annotations.unwrap()[OPERATOR_TAINTS_ANNOTATION],
            "example.com/burst:NoSchedule,dedicated:NoExecute"
        );
    }
}
