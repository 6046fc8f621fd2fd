//! The controller's view of one opted-in pod: a compact record of the watched Pod (what
//! the store keeps) and, per pass, the view the loops read, which adds what the shared
//! index says (virtual node or regular, which Deployment, which provider). Pure: no I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Toleration};
use spillway_cluster::constraints::NodeConstraints;
use spillway_cluster::index::ClusterIndex;
use spillway_common::config::{Provider, ProviderChoice};
use spillway_common::eligibility::{self, Ineligible};
use spillway_common::keys;
use spillway_common::pod_resources::{self, PodResources};

/// The taint Karpenter puts on a node it is disrupting (consolidation, drift, expiry).
pub const KARPENTER_DISRUPTED_TAINT: &str = "karpenter.sh/disrupted";

/// Whether `toleration` lets a pod past the virtual node's `NoSchedule` taint (its key,
/// or every key).
pub fn tolerates_virtual_node_taint(toleration: &Toleration) -> bool {
    (toleration.key.as_deref() == Some(keys::VIRTUAL_NODE_TAINT)
        || (toleration.key.as_deref().unwrap_or("").is_empty()
            && toleration.operator.as_deref() == Some("Exists")))
        && toleration
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == "NoSchedule")
}

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
    /// What it asks of its node (its template's selector, affinity and sibling rules).
    pub constraints: NodeConstraints,
    /// Ineligible for a reason that holds for every provider (hostPath, GPU, …).
    pub ineligible_anywhere: bool,
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
    /// Phase Pending (bound or not).
    pub pending: bool,
    /// Phase Failed.
    pub failed: bool,
    /// Since when (ms) the scheduler reported it `Unschedulable`, while unbound.
    pub unschedulable_since_ms: Option<i64>,
    /// Since when (ms) its virtual node's provider refuses to create it (the
    /// `spillway.io/ProviderRefused` condition), while Pending.
    pub provider_refused_since_ms: Option<i64>,
    /// The webhook never saw it: no `spillway.io/placement`, or the controller's
    /// `spillway.io/unadmitted` mark from when it adopted it.
    pub unadmitted: bool,
    /// Its node carries Karpenter's `karpenter.sh/disrupted` taint: Karpenter is moving
    /// its pods, and Spillway leaves them to it.
    pub node_disrupted: bool,
}

/// What the controller keeps of one watched opted-in pod: the fields its loops read and
/// nothing else (a few hundred bytes, where the Pod object is several kilobytes), free of
/// anything the index decides, so it stays valid as the index changes.
#[derive(Clone, Debug, PartialEq)]
pub struct PodRecord {
    namespace: Box<str>,
    name: Box<str>,
    uid: Box<str>,
    owner_replicaset: Option<Box<str>>,
    node: Option<Box<str>>,
    placement_label: Option<Box<str>>,
    reason_label: Option<Box<str>>,
    deletion_cost: Option<Box<str>>,
    spillway_annotations: BTreeMap<String, String>,
    needs: PodResources,
    tolerations: Vec<Toleration>,
    /// Boxed and only when the pod has any: most have none.
    constraints: Option<Box<NodeConstraints>>,
    /// Ineligible for a reason that holds for every provider (hostPath, GPU, …).
    ineligible_anywhere: bool,
    created_ms: i64,
    ready: bool,
    deleting: bool,
    finished: bool,
    pending: bool,
    failed: bool,
    unschedulable_since_ms: Option<i64>,
    provider_refused_since_ms: Option<i64>,
}

impl PodRecord {
    /// Projects a watched Pod; `None` without namespace, name, UID or spec.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref()?;
        let status = pod.status.as_ref();
        let labels = meta.labels.as_ref();
        let annotations = meta.annotations.as_ref();
        let node = spec.node_name.as_deref().filter(|n| !n.is_empty());
        let phase = status.and_then(|s| s.phase.as_deref());
        let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
        let condition = |type_: &str| conditions.iter().find(|c| c.type_ == type_);
        let needs = pod_resources::effective(spec);
        let label = |key: &str| labels.and_then(|l| l.get(key)).map(|v| v.as_str().into());
        Some(Self {
            namespace: meta.namespace.as_deref()?.into(),
            name: meta.name.as_deref()?.into(),
            uid: meta.uid.as_deref()?.into(),
            owner_replicaset: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.kind == "ReplicaSet" && o.controller == Some(true))
                .map(|o| o.uid.as_str().into()),
            node: node.map(Into::into),
            placement_label: label(keys::PLACEMENT),
            reason_label: label(keys::REASON),
            deletion_cost: annotations
                .and_then(|a| a.get(keys::POD_DELETION_COST))
                .map(|v| v.as_str().into()),
            spillway_annotations: annotations
                .iter()
                .flat_map(|a| a.iter())
                .filter(|(k, _)| k.starts_with("spillway.io/") && k.as_str() != keys::DECISION)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            // Checked against the largest provider; the size is checked per provider later.
            ineligible_anywhere: eligibility::check(pod, &needs, Provider::Fargate)
                .iter()
                .any(|r| *r != Ineligible::TooLarge),
            needs,
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            constraints: Some(NodeConstraints::of(spec))
                .filter(|c| !c.is_empty())
                .map(Box::new),
            created_ms: meta
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_millisecond())
                .unwrap_or(0),
            ready: phase == Some("Running")
                && condition("Ready").is_some_and(|c| c.status == "True"),
            deleting: meta.deletion_timestamp.is_some(),
            finished: matches!(phase, Some("Succeeded") | Some("Failed")),
            pending: phase == Some("Pending"),
            failed: phase == Some("Failed"),
            provider_refused_since_ms: condition(keys::PROVIDER_REFUSED_CONDITION)
                .filter(|c| phase == Some("Pending") && c.status == "True")
                .map(|c| {
                    c.last_transition_time
                        .as_ref()
                        .map(|t| t.0.as_millisecond())
                        .unwrap_or(0)
                }),
            unschedulable_since_ms: condition("PodScheduled")
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
                }),
        })
    }

    /// The pod's UID.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// Whether the webhook decided it (it carries `spillway.io/placement`).
    pub fn admitted(&self) -> bool {
        self.placement_label.is_some()
    }

    /// The UID of its controlling ReplicaSet.
    pub fn owner_replicaset(&self) -> Option<&str> {
        self.owner_replicaset.as_deref()
    }

    /// Its `spillway.io/*` annotations.
    pub fn spillway_annotations(&self) -> &BTreeMap<String, String> {
        &self.spillway_annotations
    }
}

impl PodView {
    /// Projects `pod` (see [`Self::from_record`]).
    pub fn from_pod(
        pod: &Pod,
        index: &ClusterIndex,
        default_provider: ProviderChoice,
    ) -> Option<Self> {
        Some(Self::from_record(
            &PodRecord::from_pod(pod)?,
            index,
            default_provider,
        ))
    }

    /// The view of a stored pod as the index sees it now: its workload, whether its node
    /// is virtual, and its eligibility for the provider its annotations or its
    /// Deployment's name (else `default_provider`; for `auto`, either provider will do).
    pub fn from_record(
        record: &PodRecord,
        index: &ClusterIndex,
        default_provider: ProviderChoice,
    ) -> Self {
        let node = record.node.as_deref();
        let virtual_node = node.filter(|n| index.is_virtual_node(n));
        let workload = record
            .owner_replicaset
            .as_deref()
            .and_then(|uid| index.deployment_of_replicaset(uid))
            .map(str::to_owned);
        let provider = record
            .spillway_annotations
            .get(keys::PROVIDER)
            .or_else(|| {
                let (ns, name) = workload.as_deref()?.split_once('/')?;
                index.workload(ns, name)?.annotations.get(keys::PROVIDER)
            })
            .and_then(|p| ProviderChoice::parse(p.trim()))
            .unwrap_or(default_provider);
        let fits = [Provider::Fargate, Provider::Aci]
            .into_iter()
            .any(|p| provider.allows(p) && eligibility::within_largest_size(&record.needs, p));
        Self {
            namespace: record.namespace.to_string(),
            name: record.name.to_string(),
            uid: record.uid.to_string(),
            workload,
            provider: virtual_node.and_then(|n| index.node_provider(n)),
            virtual_node: virtual_node.map(str::to_owned),
            bound: node.is_some(),
            placement_label: record.placement_label.as_deref().map(str::to_owned),
            reason_label: record.reason_label.as_deref().map(str::to_owned),
            deletion_cost: record.deletion_cost.as_deref().map(str::to_owned),
            spillway_annotations: record.spillway_annotations.clone(),
            needs: record.needs,
            tolerations: record.tolerations.clone(),
            constraints: record.constraints.as_deref().cloned().unwrap_or_default(),
            ineligible_anywhere: record.ineligible_anywhere,
            eligible: !record.ineligible_anywhere && fits,
            created_ms: record.created_ms,
            ready: record.ready,
            deleting: record.deleting,
            finished: record.finished,
            pending: record.pending,
            failed: record.failed,
            unschedulable_since_ms: record.unschedulable_since_ms,
            provider_refused_since_ms: record.provider_refused_since_ms,
            unadmitted: record.placement_label.is_none()
                || record.spillway_annotations.contains_key(keys::UNADMITTED),
            node_disrupted: node
                .is_some_and(|n| index.node_has_taint(n, KARPENTER_DISRUPTED_TAINT)),
        }
    }

    /// Whether it may burst to `provider` (the rules the controller can check: those
    /// that hold everywhere, and the provider's largest size).
    pub fn may_use(&self, provider: Provider) -> bool {
        !self.ineligible_anywhere && eligibility::within_largest_size(&self.needs, provider)
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
        self.tolerations.iter().any(tolerates_virtual_node_taint)
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
            ProviderChoice::Fargate,
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
            ProviderChoice::Fargate,
        )
        .unwrap();
        assert_eq!(view.unschedulable_since_ms, Some(1_767_225_660_000));
        assert!(!view.is_burst() && !view.bound && !view.tolerates_virtual_node());
    }

    #[test]
    fn size_is_checked_for_the_workload_provider() {
        // 8 vCPU: fits Fargate (16), not ACI (4).
        let big = pod(json!({"spec": {"containers": [{"name": "c",
            "resources": {"requests": {"cpu": "8", "memory": "1Gi"}}}]}}));
        assert!(
            PodView::from_pod(&big, &index(), ProviderChoice::Fargate)
                .unwrap()
                .eligible
        );
        assert!(
            !PodView::from_pod(&big, &index(), ProviderChoice::Aci)
                .unwrap()
                .eligible
        );
        let mut on_aci = big.clone();
        on_aci
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(keys::PROVIDER.into(), "aci".into());
        assert!(
            !PodView::from_pod(&on_aci, &index(), ProviderChoice::Fargate)
                .unwrap()
                .eligible
        );
        let host = pod(json!({"spec": {"hostNetwork": true}}));
        assert!(
            !PodView::from_pod(&host, &index(), ProviderChoice::Fargate)
                .unwrap()
                .eligible
        );
    }

    #[test]
    fn tolerations_of_the_virtual_taint() {
        let with = |t: serde_json::Value| {
            PodView::from_pod(
                &pod(json!({"spec": {"tolerations": [t]}})),
                &index(),
                ProviderChoice::Fargate,
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
