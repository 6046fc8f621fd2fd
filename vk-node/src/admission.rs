//! Node-side admission (DESIGN §5): a pod bound to the virtual node by hand skips the
//! webhook, so the node applies the same rules itself before anything reaches the
//! provider. A refused pod is marked Failed with a reason and an Event; nothing is created.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Pod, Toleration};
use spillway_common::config::Provider;
use spillway_common::eligibility::{self, Ineligible};
use spillway_common::keys;
use spillway_common::pod_resources::{self, PodResources};

/// Why the node refuses a pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// The pod does not tolerate the node's `virtual-kubelet.io/provider` taint.
    UntoleratedTaint {
        /// The taint, as `key=value:effect`.
        taint: String,
    },
    /// The provider may not run it (the webhook's eligibility rules).
    Ineligible(Vec<Ineligible>),
    /// Its namespace is not in `--allowed-namespaces`.
    NamespaceNotAllowed(String),
    /// Owned by a DaemonSet, whose pods serve the node they run on: a virtual node has
    /// no host for them. Such a pod is parked Pending rather than failed, since the
    /// DaemonSet controller replaces a failed pod at once, for ever.
    DaemonSet {
        /// The DaemonSet's name.
        name: String,
    },
    /// Its workload did not opt in (`spillway.io/burst`): only opted-in workloads burst.
    NotOptedIn {
        /// `Deployment ns/name`, `ReplicaSet name` or `pod name`.
        workload: String,
    },
    /// The node could not tell whether its workload opted in (its ReplicaSet or
    /// Deployment never reached the node's view of the cluster).
    WorkloadUnknown {
        /// What was missing.
        why: String,
    },
    /// Running it would take the burst spend past a budget.
    OverBudget {
        /// `cluster`, `workload ns/name` or `pod`.
        scope: String,
        /// The pod's estimated cost.
        pod_usd_per_hour: f64,
        /// What the other burst pods of the scope cost.
        spent_usd_per_hour: f64,
        /// The budget.
        limit_usd_per_hour: f64,
    },
    /// Its requests exceed what the node has left, as a kubelet refuses a pod bound past
    /// its allocatable (pods bound by hand skip the scheduler that would have checked).
    OutOf {
        /// `cpu` (millicores), `memory` (bytes) or `pods`.
        resource: &'static str,
        /// What the pod asks.
        requested: u64,
        /// What the node's admitted pods hold.
        used: u64,
        /// The node's allocatable.
        capacity: u64,
    },
}

impl Refusal {
    /// The pod status and Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::UntoleratedTaint { .. } => "TaintNotTolerated",
            Refusal::Ineligible(_) => "Ineligible",
            Refusal::NamespaceNotAllowed(_) => "NamespaceNotAllowed",
            Refusal::DaemonSet { .. } => DAEMONSET_REASON,
            Refusal::NotOptedIn { .. } => "NotOptedIn",
            Refusal::OverBudget { .. } => "OverBudget",
            Refusal::WorkloadUnknown { .. } => "WorkloadUnknown",
            Refusal::OutOf { resource, .. } => match *resource {
                "cpu" => "OutOfcpu",
                "memory" => "OutOfmemory",
                _ => "OutOfpods",
            },
        }
    }

    /// What the pod status and the Event say.
    pub fn message(&self, node: &str) -> String {
        match self {
            Refusal::UntoleratedTaint { taint } => format!(
                "pod bound to virtual node {node} does not tolerate its taint {taint}; \
                 it was not started"
            ),
            Refusal::Ineligible(reasons) => {
                let reasons: Vec<&str> = reasons.iter().map(|r| r.as_str()).collect();
                format!(
                    "pod may not run on virtual node {node} ({}); it was not started",
                    reasons.join(", ")
                )
            }
            Refusal::NamespaceNotAllowed(namespace) => format!(
                "namespace {namespace} is not allowed on virtual node {node} \
                 (--allowed-namespaces); the pod was not started"
            ),
            Refusal::DaemonSet { name } => format!(
                "DaemonSet {name} tolerates virtual node {node}'s taint, but a DaemonSet pod \
                 serves the host it runs on and a virtual node has none: the pod is not \
                 started and stays Pending (a failed one would be recreated at once). Keep \
                 the DaemonSet off virtual nodes with a required node affinity \
                 `type NotIn [virtual-kubelet]` (docs/providers.md, DaemonSets)"
            ),
            Refusal::NotOptedIn { workload } => format!(
                "{workload} is not opted in to bursting (annotation spillway.io/burst: \"true\" \
                 on the Deployment or its pod template); the pod bound to virtual node \
                 {node} was not started"
            ),
            Refusal::WorkloadUnknown { why } => format!(
                "virtual node {node} could not tell whether the pod's workload is opted in to \
                 bursting ({why}); it was not started"
            ),
            Refusal::OverBudget {
                scope,
                pod_usd_per_hour,
                spent_usd_per_hour,
                limit_usd_per_hour,
            } => format!(
                "running the pod on virtual node {node} would break the {scope} burst budget \
                 ({spent_usd_per_hour:.4} USD/h spent + {pod_usd_per_hour:.4} USD/h for this \
                 pod > {limit_usd_per_hour:.4} USD/h); it was not started"
            ),
            // The kubelet's own wording.
            Refusal::OutOf {
                resource,
                requested,
                used,
                capacity,
            } => format!(
                "Pod was rejected: Node didn't have enough resource: {resource}, requested: \
                 {requested}, used: {used}, capacity: {capacity}"
            ),
        }
    }
}

/// What a node offers: its advertised allocatable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeRoom {
    /// Millicores.
    pub cpu_millis: u64,
    /// Bytes.
    pub memory_bytes: u64,
    /// Pods.
    pub pods: u64,
}

/// What the pods a node admitted hold (requests of those not finished).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeUse {
    /// Millicores.
    pub cpu_millis: u64,
    /// Bytes.
    pub memory_bytes: u64,
    /// Pods.
    pub pods: u64,
}

impl NodeUse {
    /// Adds one admitted pod's requests.
    pub fn add(&mut self, needs: &PodResources) {
        self.cpu_millis = self.cpu_millis.saturating_add(needs.cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_add(needs.memory_bytes);
        self.pods += 1;
    }
}

/// Whether a pod needing `needs` fits beside `used` within `room`, checked as a kubelet
/// does: pods, then CPU, then memory.
pub fn check_room(needs: &PodResources, used: NodeUse, room: NodeRoom) -> Result<(), Refusal> {
    let over = |resource, requested: u64, used: u64, capacity: u64| {
        (used.saturating_add(requested) > capacity).then_some(Refusal::OutOf {
            resource,
            requested,
            used,
            capacity,
        })
    };
    let refusal = over("pods", 1, used.pods, room.pods)
        .or_else(|| over("cpu", needs.cpu_millis, used.cpu_millis, room.cpu_millis))
        .or_else(|| {
            over(
                "memory",
                needs.memory_bytes,
                used.memory_bytes,
                room.memory_bytes,
            )
        });
    refusal.map_or(Ok(()), Err)
}

/// The pod status `reason` of a parked DaemonSet pod.
pub const DAEMONSET_REASON: &str = "DaemonSetNotSupported";

/// The rules one node applies.
#[derive(Clone, Debug)]
pub struct NodeAdmission {
    /// The provider in the node's label and taint value.
    pub advertised: String,
    /// Namespaces whose pods may run here; `None`: all.
    pub allowed_namespaces: Option<BTreeSet<String>>,
}

impl NodeAdmission {
    /// Admits `pod`, or says why not (checks in order: DaemonSet, namespace, taint,
    /// eligibility).
    pub fn admit(&self, pod: &Pod) -> Result<(), Refusal> {
        if let Some(owner) = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "DaemonSet")
        {
            return Err(Refusal::DaemonSet {
                name: owner.name.clone(),
            });
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        if let Some(allowed) = &self.allowed_namespaces
            && !allowed.contains(&namespace)
        {
            return Err(Refusal::NamespaceNotAllowed(namespace));
        }
        let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref());
        let tolerated = tolerations
            .into_iter()
            .flatten()
            .any(|t| tolerates(t, keys::VIRTUAL_NODE_TAINT, &self.advertised, "NoSchedule"));
        if !tolerated {
            return Err(Refusal::UntoleratedTaint {
                taint: format!(
                    "{}={}:NoSchedule",
                    keys::VIRTUAL_NODE_TAINT,
                    self.advertised
                ),
            });
        }
        // The mock stands in for whatever it advertises; an unknown name gets Fargate's
        // rules, the strictest.
        let provider = Provider::parse(&self.advertised).unwrap_or(Provider::Fargate);
        let needs = pod
            .spec
            .as_ref()
            .map(pod_resources::effective)
            .unwrap_or_default();
        let reasons = eligibility::check(pod, &needs, provider);
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(Refusal::Ineligible(reasons))
        }
    }
}

/// Kubernetes' toleration matching: an empty effect matches every effect; `Exists` with
/// an empty key matches every taint; `Equal` (the default) needs key and value equal.
fn tolerates(toleration: &Toleration, key: &str, value: &str, effect: &str) -> bool {
    if toleration
        .effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != effect)
    {
        return false;
    }
    let toleration_key = toleration.key.as_deref().unwrap_or("");
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => toleration_key.is_empty() || toleration_key == key,
        "Equal" => toleration_key == key && toleration.value.as_deref().unwrap_or("") == value,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn admission(allowed: Option<&[&str]>) -> NodeAdmission {
        NodeAdmission {
            advertised: "fargate".into(),
            allowed_namespaces: allowed.map(|a| a.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn pod(namespace: &str, tolerations: serde_json::Value, extra: serde_json::Value) -> Pod {
        let mut spec =
            json!({"tolerations": tolerations, "containers": [{"name": "a", "image": "nginx"}]});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": namespace}, "spec": spec}),
        )
        .unwrap()
    }

    const TOLERATES: &str =
        r#"[{"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}]"#;

    #[test]
    fn a_pod_the_webhook_would_send_is_admitted() {
        let tolerations: serde_json::Value = serde_json::from_str(TOLERATES).unwrap();
        assert_eq!(
            admission(None).admit(&pod("shop", tolerations, json!({}))),
            Ok(())
        );
    }

    #[test]
    fn toleration_matching_follows_kubernetes() {
        let cases = [
            (
                json!([{"key": "virtual-kubelet.io/provider", "operator": "Equal", "value": "fargate"}]),
                true,
            ),
            (
                json!([{"key": "virtual-kubelet.io/provider", "value": "fargate", "effect": "NoSchedule"}]),
                true,
            ),
            (json!([{"operator": "Exists"}]), true),
            (
                json!([{"key": "virtual-kubelet.io/provider", "operator": "Equal", "value": "aci"}]),
                false,
            ),
            (
                json!([{"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoExecute"}]),
                false,
            ),
            (json!([{"key": "other", "operator": "Exists"}]), false),
            (json!([]), false),
        ];
        for (tolerations, admitted) in cases {
            let result = admission(None).admit(&pod("shop", tolerations.clone(), json!({})));
            assert_eq!(result.is_ok(), admitted, "{tolerations}: {result:?}");
            if !admitted {
                assert_eq!(result.unwrap_err().reason(), "TaintNotTolerated");
            }
        }
    }

    #[test]
    fn ineligible_pods_are_refused_with_every_reason() {
        let tolerations: serde_json::Value = serde_json::from_str(TOLERATES).unwrap();
        let refusal = admission(None)
            .admit(&pod(
                "shop",
                tolerations,
                json!({"hostNetwork": true, "volumes": [{"name": "c", "configMap": {"name": "c"}}]}),
            ))
            .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::Ineligible(vec![Ineligible::HostNetwork, Ineligible::UnsupportedVolume])
        );
        assert!(
            refusal
                .message("spillway-fargate")
                .contains("host-network, unsupported-volume")
        );
    }

    #[test]
    fn daemonset_pods_are_parked_whatever_they_tolerate() {
        let mut daemon = pod("kube-system", json!([{"operator": "Exists"}]), json!({}));
        daemon.metadata.owner_references = Some(vec![
            serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "node-exporter", "uid": "d", "controller": true}))
                .unwrap(),
        ]);
        let refusal = admission(Some(&["shop"])).admit(&daemon).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::DaemonSet {
                name: "node-exporter".into()
            }
        );
        assert_eq!(refusal.reason(), DAEMONSET_REASON);
        let message = refusal.message("spillway-fargate");
        assert!(message.contains("stays Pending"), "{message}");
        assert!(
            message.contains("type NotIn [virtual-kubelet]"),
            "{message}"
        );
    }

    #[test]
    fn a_pod_beyond_the_nodes_room_is_refused_as_a_kubelet_would() {
        let room = NodeRoom {
            cpu_millis: 100_000,
            memory_bytes: 400 << 30,
            pods: 500,
        };
        let sixteen = PodResources {
            cpu_millis: 16_000,
            memory_bytes: 32 << 30,
            ..PodResources::default()
        };
        let mut used = NodeUse::default();
        let mut admitted = 0;
        for _ in 0..200 {
            if check_room(&sixteen, used, room).is_ok() {
                used.add(&sixteen);
                admitted += 1;
            }
        }
        assert_eq!(admitted, 6, "100 vCPU hold six pods of 16");
        let refusal = check_room(&sixteen, used, room).unwrap_err();
        assert_eq!(refusal.reason(), "OutOfcpu");
        assert_eq!(
            refusal.message("n"),
            "Pod was rejected: Node didn't have enough resource: cpu, requested: 16000, \
             used: 96000, capacity: 100000"
        );
        let big_memory = PodResources {
            cpu_millis: 1,
            memory_bytes: 500 << 30,
            ..PodResources::default()
        };
        assert_eq!(
            check_room(&big_memory, NodeUse::default(), room)
                .unwrap_err()
                .reason(),
            "OutOfmemory"
        );
        let full = NodeUse {
            pods: 500,
            ..NodeUse::default()
        };
        assert_eq!(
            check_room(&PodResources::default(), full, room)
                .unwrap_err()
                .reason(),
            "OutOfpods"
        );
    }

    #[test]
    fn namespaces_outside_the_allowed_list_are_refused() {
        let tolerations: serde_json::Value = serde_json::from_str(TOLERATES).unwrap();
        let only_shop = admission(Some(&["shop"]));
        assert_eq!(
            only_shop.admit(&pod("shop", tolerations.clone(), json!({}))),
            Ok(())
        );
        assert_eq!(
            only_shop.admit(&pod("kube-system", tolerations, json!({}))),
            Err(Refusal::NamespaceNotAllowed("kube-system".into()))
        );
    }
}
