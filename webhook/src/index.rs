//! The compact cluster index the decision reads (DESIGN §3 "State"): watched Nodes, Pods,
//! ReplicaSets, Deployments and HPAs projected into the few fields the decision needs,
//! with per-node and cluster request sums and per-ReplicaSet placement counts kept
//! up to date on every change, so a decision never scans pods.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use spillway_common::keys;
use spillway_common::pod_resources::{self, PodResources};
use spillway_common::quantity;

const NO_SLOT: u32 = u32::MAX;
const POD_HOLDS_RESOURCES: u8 = 1;
const POD_COUNTED: u8 = 2;
const POD_BURST: u8 = 4;

/// A pod UID squeezed into 16 bytes (a UUID as-is; anything else hashed).
pub fn compact_uid(uid: &str) -> u128 {
    match uuid::Uuid::parse_str(uid) {
        Ok(parsed) => parsed.as_u128(),
        Err(_) => {
            let mut high = std::collections::hash_map::DefaultHasher::new();
            uid.hash(&mut high);
            let mut low = std::collections::hash_map::DefaultHasher::new();
            (uid, 1u8).hash(&mut low);
            (u128::from(high.finish()) << 64) | u128::from(low.finish())
        }
    }
}

/// A NoSchedule/NoExecute taint, the only effects that keep a pod off a node.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CompactTaint {
    key: Box<str>,
    value: Box<str>,
    effect: Box<str>,
}

#[derive(Clone, Debug, Default)]
struct NodeEntry {
    name: Box<str>,
    known: bool,
    ready: bool,
    schedulable: bool,
    is_virtual: bool,
    allocatable_cpu: u64,
    allocatable_memory: u64,
    requested_cpu: u64,
    requested_memory: u64,
    taints: Vec<CompactTaint>,
}

impl NodeEntry {
    /// Ready, schedulable and not virtual: counted in cluster capacity.
    fn is_regular_capacity(&self) -> bool {
        self.known && self.ready && self.schedulable && !self.is_virtual
    }
}

#[derive(Clone, Copy, Debug)]
struct PodEntry {
    node: u32,
    replicaset: u32,
    cpu_millis: u32,
    memory_bytes: u64,
    flags: u8,
}

#[derive(Clone, Debug, Default)]
struct ReplicaSetEntry {
    deployment: Option<u32>,
    local: u32,
    burst: u32,
}

/// What an HPA says about its Deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HpaFacts {
    /// `spec.minReplicas` (default 1).
    pub min_replicas: u32,
    /// `spec.maxReplicas`.
    pub max_replicas: u32,
    /// `status.desiredReplicas`.
    pub desired_replicas: u32,
}

#[derive(Clone, Debug, Default)]
struct DeploymentEntry {
    /// `namespace/name`.
    key: String,
    exists: bool,
    replicas: u32,
    /// Only the `spillway.io/*` annotations, to stay compact.
    annotations: BTreeMap<String, String>,
    replicasets: Vec<u32>,
    hpa: Option<HpaFacts>,
}

/// Sums over Ready, schedulable, non-virtual nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapacityTotals {
    /// Allocatable millicores.
    pub allocatable_cpu: u64,
    /// Allocatable bytes.
    pub allocatable_memory: u64,
    /// Millicores requested by pods bound to those nodes.
    pub requested_cpu: u64,
    /// Bytes requested by pods bound to those nodes.
    pub requested_memory: u64,
}

/// Placement counts of a workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlacementCounts {
    /// Pods not on a virtual node and not labelled burst.
    pub local: u32,
    /// Pods on a virtual node or labelled burst.
    pub burst: u32,
}

/// What the index knows about a Deployment.
#[derive(Clone, Debug)]
pub struct WorkloadView<'a> {
    /// Its `spillway.io/*` annotations.
    pub annotations: &'a BTreeMap<String, String>,
    /// `spec.replicas`.
    pub replicas: u32,
    /// Its HPA, when one targets it.
    pub hpa: Option<HpaFacts>,
    /// Its pods by placement, over all its ReplicaSets.
    pub counts: PlacementCounts,
}

/// The index itself. Not thread-safe; the server wraps it in a lock.
#[derive(Debug, Default)]
pub struct ClusterIndex {
    node_slots: HashMap<Box<str>, u32>,
    nodes: Vec<NodeEntry>,
    pods: HashMap<u128, PodEntry>,
    replicaset_slots: HashMap<u128, u32>,
    replicasets: Vec<ReplicaSetEntry>,
    deployment_slots: HashMap<String, u32>,
    deployments: Vec<DeploymentEntry>,
    hpa_targets: HashMap<String, String>,
    totals: CapacityTotals,
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn quantity_of(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    name: &str,
    parse: fn(&str) -> Result<u64, quantity::InvalidQuantity>,
) -> u64 {
    map.and_then(|m| m.get(name))
        .and_then(|q| parse(&q.0).ok())
        .unwrap_or(0)
}

impl ClusterIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of pods indexed.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Number of nodes indexed.
    pub fn node_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.known).count()
    }

    fn node_slot(&mut self, name: &str) -> u32 {
        if let Some(slot) = self.node_slots.get(name) {
            return *slot;
        }
        let slot = self.nodes.len() as u32;
        self.nodes.push(NodeEntry {
            name: name.into(),
            ..NodeEntry::default()
        });
        self.node_slots.insert(name.into(), slot);
        slot
    }

    fn replicaset_slot(&mut self, uid: u128) -> u32 {
        if let Some(slot) = self.replicaset_slots.get(&uid) {
            return *slot;
        }
        let slot = self.replicasets.len() as u32;
        self.replicasets.push(ReplicaSetEntry::default());
        self.replicaset_slots.insert(uid, slot);
        slot
    }

    fn deployment_slot(&mut self, key: String) -> u32 {
        if let Some(slot) = self.deployment_slots.get(&key) {
            return *slot;
        }
        let slot = self.deployments.len() as u32;
        self.deployments.push(DeploymentEntry {
            key: key.clone(),
            ..DeploymentEntry::default()
        });
        self.deployment_slots.insert(key, slot);
        slot
    }

    fn add_node_to_totals(&mut self, slot: u32, sign: i8) {
        let node = &self.nodes[slot as usize];
        if !node.is_regular_capacity() {
            return;
        }
        let (cpu, mem, rcpu, rmem) = (
            node.allocatable_cpu,
            node.allocatable_memory,
            node.requested_cpu,
            node.requested_memory,
        );
        let t = &mut self.totals;
        if sign > 0 {
            t.allocatable_cpu += cpu;
            t.allocatable_memory += mem;
            t.requested_cpu += rcpu;
            t.requested_memory += rmem;
        } else {
            t.allocatable_cpu -= cpu;
            t.allocatable_memory -= mem;
            t.requested_cpu -= rcpu;
            t.requested_memory -= rmem;
        }
    }

    /// Adds or updates a Node.
    pub fn apply_node(&mut self, node: &Node) {
        let Some(name) = node.metadata.name.as_deref() else {
            return;
        };
        let slot = self.node_slot(name);
        self.add_node_to_totals(slot, -1);
        let labels = node.metadata.labels.as_ref();
        let status = node.status.as_ref();
        let allocatable = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        let spec = node.spec.as_ref();
        let taints = spec
            .and_then(|s| s.taints.as_ref())
            .map(|taints| {
                taints
                    .iter()
                    .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                    .map(|t: &Taint| CompactTaint {
                        key: t.key.as_str().into(),
                        value: t.value.as_deref().unwrap_or("").into(),
                        effect: t.effect.as_str().into(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let entry = &mut self.nodes[slot as usize];
        entry.known = true;
        entry.ready = ready;
        entry.schedulable = !spec.and_then(|s| s.unschedulable).unwrap_or(false);
        entry.is_virtual = labels
            .and_then(|l| l.get(keys::NODE_TYPE_LABEL))
            .is_some_and(|v| v == keys::NODE_TYPE_VIRTUAL);
        entry.allocatable_cpu = quantity_of(allocatable, "cpu", quantity::cpu_millis);
        entry.allocatable_memory = quantity_of(allocatable, "memory", quantity::bytes);
        entry.taints = taints;
        self.add_node_to_totals(slot, 1);
    }

    /// Removes a Node; pods still bound to it keep their slot until they go.
    pub fn delete_node(&mut self, name: &str) {
        if let Some(&slot) = self.node_slots.get(name) {
            self.add_node_to_totals(slot, -1);
            let entry = &mut self.nodes[slot as usize];
            entry.known = false;
            entry.taints.clear();
        }
    }

    fn account_pod(&mut self, entry: PodEntry, sign: i8) {
        let delta = |value: &mut u64, by: u64| {
            if sign > 0 { *value += by } else { *value -= by }
        };
        if entry.flags & POD_HOLDS_RESOURCES != 0 && entry.node != NO_SLOT {
            let regular = self.nodes[entry.node as usize].is_regular_capacity();
            let node = &mut self.nodes[entry.node as usize];
            delta(&mut node.requested_cpu, u64::from(entry.cpu_millis));
            delta(&mut node.requested_memory, entry.memory_bytes);
            if regular {
                delta(&mut self.totals.requested_cpu, u64::from(entry.cpu_millis));
                delta(&mut self.totals.requested_memory, entry.memory_bytes);
            }
        }
        if entry.flags & POD_COUNTED != 0 && entry.replicaset != NO_SLOT {
            let rs = &mut self.replicasets[entry.replicaset as usize];
            let counter = if entry.flags & POD_BURST != 0 {
                &mut rs.burst
            } else {
                &mut rs.local
            };
            if sign > 0 {
                *counter += 1
            } else {
                *counter -= 1
            }
        }
    }

    /// Adds or updates a Pod.
    pub fn apply_pod(&mut self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return;
        };
        let uid = compact_uid(uid);
        if let Some(old) = self.pods.remove(&uid) {
            self.account_pod(old, -1);
        }
        let spec = pod.spec.as_ref();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let finished = matches!(phase, Some("Succeeded") | Some("Failed"));
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let needs = spec.map(pod_resources::effective).unwrap_or_default();
        let node = match spec.and_then(|s| s.node_name.as_deref()) {
            Some(name) if !name.is_empty() => self.node_slot(name),
            _ => NO_SLOT,
        };
        let replicaset = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "ReplicaSet" && o.controller == Some(true))
            .map(|o| self.replicaset_slot(compact_uid(&o.uid)))
            .unwrap_or(NO_SLOT);
        let labelled_burst = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(keys::PLACEMENT))
            .is_some_and(|v| v == "burst");
        let on_virtual = node != NO_SLOT && self.nodes[node as usize].is_virtual;
        let mut flags = 0;
        if !finished {
            flags |= POD_HOLDS_RESOURCES;
            if !deleting {
                flags |= POD_COUNTED;
            }
        }
        if labelled_burst || on_virtual {
            flags |= POD_BURST;
        }
        let entry = PodEntry {
            node,
            replicaset,
            cpu_millis: u32::try_from(needs.cpu_millis).unwrap_or(u32::MAX),
            memory_bytes: needs.memory_bytes,
            flags,
        };
        self.account_pod(entry, 1);
        self.pods.insert(uid, entry);
    }

    /// Removes a Pod.
    pub fn delete_pod(&mut self, uid: &str) {
        self.delete_pod_compact(compact_uid(uid));
    }

    /// Removes a Pod by its [`compact_uid`].
    pub fn delete_pod_compact(&mut self, uid: u128) {
        if let Some(old) = self.pods.remove(&uid) {
            self.account_pod(old, -1);
        }
    }

    /// Adds or updates a ReplicaSet (only its owning Deployment matters).
    pub fn apply_replicaset(&mut self, rs: &ReplicaSet) {
        let (Some(uid), Some(namespace)) =
            (rs.metadata.uid.as_deref(), rs.metadata.namespace.as_deref())
        else {
            return;
        };
        let slot = self.replicaset_slot(compact_uid(uid));
        let owner = rs
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "Deployment" && o.controller == Some(true))
            .map(|o| key(namespace, &o.name));
        self.link_replicaset(slot, owner);
    }

    fn link_replicaset(&mut self, slot: u32, owner: Option<String>) {
        let new = owner.map(|k| self.deployment_slot(k));
        let old = self.replicasets[slot as usize].deployment;
        if old == new {
            return;
        }
        if let Some(old) = old {
            self.deployments[old as usize]
                .replicasets
                .retain(|s| *s != slot);
        }
        if let Some(new) = new {
            self.deployments[new as usize].replicasets.push(slot);
        }
        self.replicasets[slot as usize].deployment = new;
    }

    /// Removes a ReplicaSet's link to its Deployment.
    pub fn delete_replicaset(&mut self, uid: &str) {
        if let Some(&slot) = self.replicaset_slots.get(&compact_uid(uid)) {
            self.link_replicaset(slot, None);
        }
    }

    /// Adds or updates a Deployment.
    pub fn apply_deployment(&mut self, deployment: &Deployment) {
        let (Some(namespace), Some(name)) = (
            deployment.metadata.namespace.as_deref(),
            deployment.metadata.name.as_deref(),
        ) else {
            return;
        };
        let slot = self.deployment_slot(key(namespace, name));
        let entry = &mut self.deployments[slot as usize];
        entry.exists = true;
        entry.replicas = deployment
            .spec
            .replicas
            .map(|r| r.max(0) as u32)
            .unwrap_or(1);
        entry.annotations = deployment
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("spillway.io/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }

    /// Forgets a Deployment (its slot stays for ReplicaSets that still point at it).
    pub fn delete_deployment(&mut self, namespace: &str, name: &str) {
        if let Some(&slot) = self.deployment_slots.get(&key(namespace, name)) {
            let entry = &mut self.deployments[slot as usize];
            entry.exists = false;
            entry.annotations.clear();
        }
    }

    /// Adds or updates an HPA; only those targeting a Deployment matter.
    pub fn apply_hpa(&mut self, hpa: &HorizontalPodAutoscaler) {
        let (Some(namespace), Some(name)) = (
            hpa.metadata.namespace.as_deref(),
            hpa.metadata.name.as_deref(),
        ) else {
            return;
        };
        let hpa_key = key(namespace, name);
        self.delete_hpa(namespace, name);
        let spec = &hpa.spec;
        if spec.scale_target_ref.kind != "Deployment" {
            return;
        }
        let target = key(namespace, &spec.scale_target_ref.name);
        let facts = HpaFacts {
            min_replicas: spec.min_replicas.unwrap_or(1).max(0) as u32,
            max_replicas: spec.max_replicas.max(0) as u32,
            desired_replicas: hpa
                .status
                .as_ref()
                .map(|s| s.desired_replicas.max(0) as u32)
                .unwrap_or(0),
        };
        let slot = self.deployment_slot(target.clone());
        self.deployments[slot as usize].hpa = Some(facts);
        self.hpa_targets.insert(hpa_key, target);
    }

    /// Removes an HPA.
    pub fn delete_hpa(&mut self, namespace: &str, name: &str) {
        if let Some(target) = self.hpa_targets.remove(&key(namespace, name))
            && let Some(&slot) = self.deployment_slots.get(&target)
        {
            self.deployments[slot as usize].hpa = None;
        }
    }

    /// Resolves the Deployment `namespace/name` (only if it is known to exist).
    pub fn workload(&self, namespace: &str, name: &str) -> Option<WorkloadView<'_>> {
        let slot = *self.deployment_slots.get(&key(namespace, name))?;
        self.workload_at(slot)
    }

    fn workload_at(&self, slot: u32) -> Option<WorkloadView<'_>> {
        let entry = &self.deployments[slot as usize];
        if !entry.exists {
            return None;
        }
        let mut counts = PlacementCounts::default();
        for rs in &entry.replicasets {
            let rs = &self.replicasets[*rs as usize];
            counts.local += rs.local;
            counts.burst += rs.burst;
        }
        Some(WorkloadView {
            annotations: &entry.annotations,
            replicas: entry.replicas,
            hpa: entry.hpa,
            counts,
        })
    }

    /// The Deployment owning the ReplicaSet with `uid`, when the index knows the link,
    /// as (namespace/name key).
    pub fn deployment_of_replicaset(&self, uid: &str) -> Option<&str> {
        let slot = *self.replicaset_slots.get(&compact_uid(uid))?;
        let deployment = self.replicasets[slot as usize].deployment?;
        Some(self.deployments[deployment as usize].key.as_str())
    }

    /// Sums over Ready, schedulable, non-virtual nodes.
    pub fn totals(&self) -> CapacityTotals {
        self.totals
    }

    /// Whether some Ready, schedulable, non-virtual node whose NoSchedule/NoExecute
    /// taints `tolerations` tolerate has free allocatable for `needs`.
    pub fn any_node_fits(&self, needs: &PodResources, tolerations: &[Toleration]) -> bool {
        self.nodes.iter().any(|node| {
            node.is_regular_capacity()
                && node.allocatable_cpu.saturating_sub(node.requested_cpu) >= needs.cpu_millis
                && node
                    .allocatable_memory
                    .saturating_sub(node.requested_memory)
                    >= needs.memory_bytes
                && node.taints.iter().all(|t| tolerated(t, tolerations))
        })
    }

    /// Names of known virtual nodes (for diagnostics).
    pub fn virtual_nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes
            .iter()
            .filter(|n| n.known && n.is_virtual)
            .map(|n| &*n.name)
    }
}

fn tolerated(taint: &CompactTaint, tolerations: &[Toleration]) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == &*taint.effect);
        let key = t.key.as_deref().unwrap_or("");
        let exists = t.operator.as_deref() == Some("Exists");
        if key.is_empty() {
            return exists && effect_ok;
        }
        let key_ok = key == &*taint.key;
        let value_ok = exists || t.value.as_deref().unwrap_or("") == &*taint.value;
        key_ok && value_ok && effect_ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn node(name: &str, cpu: &str, memory: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {
                "allocatable": {"cpu": cpu, "memory": memory},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }))
        .unwrap()
    }

    fn pod(uid: &str, node: Option<&str>, rs: &str, cpu: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "ns", "uid": uid,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": rs, "controller": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]},
            "status": {"phase": "Running"}
        }))
        .unwrap()
    }

    fn deployment() -> (Deployment, ReplicaSet) {
        let d = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "d1", "annotations": {"spillway.io/burst": "true", "other": "x"}},
            "spec": {"replicas": 4, "selector": {}, "template": {}}
        }))
        .unwrap();
        let rs = serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "ns", "uid": "rs1",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d1", "controller": true}]}
        }))
        .unwrap();
        (d, rs)
    }

    #[test]
    fn totals_follow_pods_and_nodes() {
        let mut index = ClusterIndex::new();
        index.apply_node(&node("a", "4", "16Gi"));
        index.apply_pod(&pod("p1", Some("a"), "rs1", "1"));
        index.apply_pod(&pod("p2", Some("a"), "rs1", "500m"));
        let t = index.totals();
        assert_eq!((t.allocatable_cpu, t.requested_cpu), (4000, 1500));
        assert_eq!(t.requested_memory, 2 << 30);
        index.delete_pod("p1");
        assert_eq!(index.totals().requested_cpu, 500);
        // Updating the same pod does not double count.
        index.apply_pod(&pod("p2", Some("a"), "rs1", "500m"));
        assert_eq!(index.totals().requested_cpu, 500);
        index.delete_node("a");
        assert_eq!(index.totals(), CapacityTotals::default());
    }

    #[test]
    fn counts_reach_deployment_whatever_the_arrival_order() {
        let mut index = ClusterIndex::new();
        index.apply_pod(&pod("p1", None, "rs1", "1"));
        let (d, rs) = deployment();
        index.apply_deployment(&d);
        assert_eq!(index.workload("ns", "web").unwrap().counts.local, 0);
        index.apply_replicaset(&rs);
        index.apply_pod(&pod("p2", None, "rs1", "1"));
        let view = index.workload("ns", "web").unwrap();
        assert_eq!(view.counts, PlacementCounts { local: 2, burst: 0 });
        assert_eq!(view.replicas, 4);
        assert_eq!(view.annotations.len(), 1);
    }

    #[test]
    fn virtual_nodes_count_as_burst_not_capacity() {
        let mut index = ClusterIndex::new();
        let mut vnode = node("vk", "100", "1Ti");
        vnode.metadata.labels = Some([("type".to_string(), "virtual-kubelet".to_string())].into());
        index.apply_node(&vnode);
        let (d, rs) = deployment();
        index.apply_deployment(&d);
        index.apply_replicaset(&rs);
        index.apply_pod(&pod("p1", Some("vk"), "rs1", "1"));
        assert_eq!(index.totals(), CapacityTotals::default());
        assert_eq!(
            index.workload("ns", "web").unwrap().counts,
            PlacementCounts { local: 0, burst: 1 }
        );
    }

    #[test]
    fn taints_keep_pods_off_unless_tolerated() {
        let mut index = ClusterIndex::new();
        let mut tainted = node("a", "4", "16Gi");
        tainted.spec = Some(
            serde_json::from_value(
                json!({"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}),
            )
            .unwrap(),
        );
        index.apply_node(&tainted);
        let needs = PodResources {
            cpu_millis: 100,
            memory_bytes: 1,
            ..Default::default()
        };
        assert!(!index.any_node_fits(&needs, &[]));
        let tol: Toleration = serde_json::from_value(
            json!({"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}),
        )
        .unwrap();
        assert!(index.any_node_fits(&needs, &[tol]));
        let all: Toleration = serde_json::from_value(json!({"operator": "Exists"})).unwrap();
        assert!(index.any_node_fits(&needs, &[all]));
    }
}
