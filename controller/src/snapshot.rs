//! The controller's view of one opted-in pod: the few fields its loops read, projected
//! from the watched Pod and the shared index (which tells virtual nodes from regular ones
//! and pods from their Deployment). Pure: no I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Toleration};
use spillway_cluster::index::ClusterIndex;
use spillway_common::config::Provider;
use spillway_common::eligibility;
use spillway_common::keys;
use spillway_common::pod_resources::{self, PodResources};

/// One opted-in pod (a pod the webhook labelled with `spillway.io/placement`).
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (the eviction's precondition).
    pub uid: String,
    /// `namespace/name` of its Deployment, when the index knows it.
    pub workload: Option<String>,
    /// The virtual node it is bound to, if any.
    pub virtual_node: Option<String>,
    /// The provider of that virtual node.
    pub provider: Option<Provider>,
    /// Whether it is bound to any node.
    pub bound: bool,
    /// `spillway.io/placement`.
    pub placement_label: Option<String>,
    /// `spillway.io/reason`.
    pub reason_label: Option<String>,
    /// `controller.kubernetes.io/pod-deletion-cost`.
    pub deletion_cost: Option<String>,
    /// Its `spillway.io/*` annotations (from the pod template; they win over the
    /// Deployment's, as in the webhook).
    pub spillway_annotations: BTreeMap<String, String>,
    /// Effective requests.
    pub needs: PodResources,
    /// Its tolerations.
    pub tolerations: Vec<Toleration>,
    /// Whether it may burst at all (to its workload's provider, checked by the caller
    /// with the policy's provider: here, whether it failed any provider-neutral rule).
    pub eligible: bool,
    /// Creation time, milliseconds since the epoch.
    pub created_ms: i64,
    /// Running with every container ready.
    pub ready: bool,
    /// Has a deletion timestamp.
    pub deleting: bool,
    /// Succeeded or Failed.
    pub finished: bool,
    /// Since when (ms) the scheduler reported it `Unschedulable`, while unbound.
    pub unschedulable_since_ms: Option<i64>,
}

/// Drops what no controller loop reads from a watched pod before it is stored (managed
/// fields, foreign annotations such as `last-applied-configuration`, container env,
/// commands and probes, container statuses): the store holds every opted-in pod, so this
/// is most of the controller's memory. [`PodView::from_pod`] sees the same either way.
pub fn trim_for_store(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    if let Some(annotations) = pod.metadata.annotations.as_mut() {
        annotations.retain(|k, _| k.starts_with("spillway.io/") || k == keys::POD_DELETION_COST);
    }
    if let Some(spec) = pod.spec.as_mut() {
        for container in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            container.env = None;
            container.env_from = None;
            container.command = None;
            container.args = None;
            container.liveness_probe = None;
            container.readiness_probe = None;
            container.startup_probe = None;
            container.lifecycle = None;
            container.volume_mounts = None;
        }
    }
    if let Some(status) = pod.status.as_mut() {
        status.container_statuses = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
        if let Some(conditions) = status.conditions.as_mut() {
            conditions.retain(|c| c.type_ == "PodScheduled" || c.type_ == "Ready");
        }
    }
}

impl PodView {
    /// Projects `pod`; its eligibility is checked for the provider its annotations or its
    /// Deployment's name, else `default_provider`.
    pub fn from_pod(pod: &Pod, index: &ClusterIndex, default_provider: Provider) -> Option<Self> {
        let meta = &pod.metadata;
        let namespace = meta.namespace.clone()?;
        let name = meta.name.clone()?;
        let uid = meta.uid.clone()?;
        let spec = pod.spec.as_ref()?;
        let status = pod.status.as_ref();
        let labels = meta.labels.as_ref();
        let annotations = meta.annotations.as_ref();
        let node = spec.node_name.as_deref().filter(|n| !n.is_empty());
        let virtual_node = node.filter(|n| index.is_virtual_node(n));
        let workload = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "ReplicaSet" && o.controller == Some(true))
            .and_then(|o| index.deployment_of_replicaset(&o.uid))
            .map(str::to_owned);
        let provider = annotations
            .and_then(|a| a.get(keys::PROVIDER))
            .or_else(|| {
                let (ns, name) = workload.as_deref()?.split_once('/')?;
                index.workload(ns, name)?.annotations.get(keys::PROVIDER)
            })
            .and_then(|p| Provider::parse(p.trim()))
            .unwrap_or(default_provider);
        let phase = status.and_then(|s| s.phase.as_deref());
        let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
        let condition = |type_: &str| conditions.iter().find(|c| c.type_ == type_);
        let ready =
            phase == Some("Running") && condition("Ready").is_some_and(|c| c.status == "True");
        let unschedulable_since_ms = condition("PodScheduled")
            .filter(|c| {
                node.is_none()
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
            .map(|c| {
                c.last_transition_time
                    .as_ref()
                    .map(|t| t.0.as_millisecond())
                    .unwrap_or(0)
            });
        let needs = pod_resources::effective(spec);
        Some(Self {
            workload,
            provider: virtual_node.and_then(|n| index.node_provider(n)),
            virtual_node: virtual_node.map(str::to_owned),
            bound: node.is_some(),
            placement_label: labels.and_then(|l| l.get(keys::PLACEMENT)).cloned(),
            reason_label: labels.and_then(|l| l.get(keys::REASON)).cloned(),
            deletion_cost: annotations
                .and_then(|a| a.get(keys::POD_DELETION_COST))
                .cloned(),
            spillway_annotations: annotations
                .iter()
                .flat_map(|a| a.iter())
                .filter(|(k, _)| k.starts_with("spillway.io/") && k.as_str() != keys::DECISION)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            eligible: eligibility::check(pod, &needs, provider).is_empty(),
            needs,
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            created_ms: meta
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_millisecond())
                .unwrap_or(0),
            ready,
            deleting: meta.deletion_timestamp.is_some(),
            finished: matches!(phase, Some("Succeeded") | Some("Failed")),
            unschedulable_since_ms,
            namespace,
            name,
            uid,
        })
    }

    /// Counts towards its workload: not finished and not being deleted.
    pub fn is_live(&self) -> bool {
        !self.deleting && !self.finished
    }

    /// A burst pod: on a virtual node or labelled burst (the index's rule).
    pub fn is_burst(&self) -> bool {
        self.virtual_node.is_some() || self.placement_label.as_deref() == Some("burst")
    }

    /// Already tolerates the virtual node's taint.
    pub fn tolerates_virtual_node(&self) -> bool {
        self.tolerations.iter().any(|t| {
            (t.key.as_deref() == Some(keys::VIRTUAL_NODE_TAINT)
                || (t.key.as_deref().unwrap_or("").is_empty()
                    && t.operator.as_deref() == Some("Exists")))
                && t.effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == "NoSchedule")
        })
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn index() -> ClusterIndex {
        let mut index = ClusterIndex::new();
        let vnode = serde_json::from_value(json!({
            "metadata": {"name": "vk", "labels": {"type": "virtual-kubelet", "spillway.io/provider": "fargate"}},
            "status": {"allocatable": {"cpu": "100", "memory": "400Gi"}, "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        index.apply_node(&vnode);
        let rs = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "ns", "uid": "rs1",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d1", "controller": true}]}
        }))
        .unwrap();
        index.apply_replicaset(&rs);
        index
    }

    fn pod(extra: serde_json::Value) -> Pod {
        let mut base = json!({
            "metadata": {"name": "web-1-a", "namespace": "ns", "uid": "u1",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"spillway.io/placement": "local"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "rs1", "controller": true}]},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}}]},
            "status": {"phase": "Pending"}
        });
        merge(&mut base, extra);
        serde_json::from_value(base).unwrap()
    }

    fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
        match (base, extra) {
            (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    #[test]
    fn burst_pod_on_the_virtual_node() {
        let view = PodView::from_pod(
            &pod(
                json!({"spec": {"nodeName": "vk"}, "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}]}}),
            ),
            &index(),
            Provider::Fargate,
        )
        .unwrap();
        assert_eq!(view.workload.as_deref(), Some("ns/web"));
        assert_eq!(view.virtual_node.as_deref(), Some("vk"));
        assert_eq!(view.provider, Some(Provider::Fargate));
        assert!(view.is_burst() && view.ready && view.is_live());
        assert_eq!(view.created_ms, 1_767_225_600_000);
    }

    #[test]
    fn unschedulable_pending_pod() {
        let view = PodView::from_pod(
            &pod(
                json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "lastTransitionTime": "2026-01-01T00:01:00Z"}]}}),
            ),
            &index(),
            Provider::Fargate,
        )
        .unwrap();
        assert_eq!(view.unschedulable_since_ms, Some(1_767_225_660_000));
        assert!(!view.is_burst() && !view.bound && !view.tolerates_virtual_node());
    }

    #[test]
    fn trimming_keeps_what_the_view_reads() {
        let full = pod(json!({
            "metadata": {"annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}",
                "spillway.io/max-burst": "2",
                "controller.kubernetes.io/pod-deletion-cost": "-1000"}},
            "spec": {"nodeName": "vk", "hostNetwork": true,
                "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
                "containers": [{"name": "c", "command": ["run"], "env": [{"name": "A", "value": "b"}],
                    "ports": [{"containerPort": 80, "hostPort": 80}],
                    "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}}]},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "Initialized", "status": "True"}],
                "containerStatuses": [{"name": "c", "image": "x", "imageID": "", "ready": true, "restartCount": 0}]}
        }));
        let mut trimmed = full.clone();
        trim_for_store(&mut trimmed);
        let index = index();
        assert_eq!(
            PodView::from_pod(&trimmed, &index, Provider::Fargate),
            PodView::from_pod(&full, &index, Provider::Fargate)
        );
        let annotations = trimmed.metadata.annotations.unwrap();
        assert_eq!(annotations.len(), 2, "{annotations:?}");
        assert!(trimmed.spec.unwrap().containers[0].env.is_none());
    }

    #[test]
    fn tolerations_of_the_virtual_taint() {
        let with = |t: serde_json::Value| {
            PodView::from_pod(
                &pod(json!({"spec": {"tolerations": [t]}})),
                &index(),
                Provider::Fargate,
            )
            .unwrap()
            .tolerates_virtual_node()
        };
        assert!(with(
            json!({"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"})
        ));
        assert!(with(json!({"operator": "Exists"})));
        assert!(!with(json!({"key": "other", "operator": "Exists"})));
    }
}
