//! The compact cluster index the decision reads (DESIGN §3 "State"): watched Nodes, Pods,
//! ReplicaSets, Deployments and HPAs projected into the few fields the decision needs,
//! with per-node and cluster request sums and per-ReplicaSet placement counts kept
//! up to date on every change, so a decision never scans pods. Slots of deleted Nodes,
//! ReplicaSets and Deployments are freed once nothing refers to them any more.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use spillway_common::config::{PricingConfig, Provider};
use spillway_common::keys;
use spillway_common::pod_resources::{self, PodResources};
use spillway_common::{cost, quantity};

use crate::constraints::NodeConstraints;
use crate::decision::{CapacityTotals, CapacityView, HpaFacts, PlacementCounts, ProviderNode};

const NO_SLOT: u32 = u32::MAX;
const POD_HOLDS_RESOURCES: u8 = 1;
const POD_COUNTED: u8 = 2;
const POD_BURST: u8 = 4;
const POD_CPU_SPECIFIED: u8 = 8;
const POD_MEMORY_SPECIFIED: u8 = 16;
/// Owned by no ReplicaSet and opted in by its own `spillway.io/burst` annotation (a bare
/// pod, or one of a Job or StatefulSet whose template carries it).
const POD_SELF_OPTED_IN: u8 = 32;

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
    /// `spillway.io/provider` of a virtual node.
    provider: Option<Provider>,
    /// Pods that refer to this slot (the slot is freed at 0 once the Node is gone).
    pods: u32,
    /// Pods bound here that hold resources (not finished).
    running_pods: u32,
    /// `status.allocatable.pods` (0: not stated).
    allocatable_pods: u64,
    /// Its labels, for the pods' node selectors and affinity.
    labels: Vec<(Box<str>, Box<str>)>,
    allocatable_cpu: u128,
    allocatable_memory: u128,
    requested_cpu: u128,
    requested_memory: u128,
    taints: Vec<CompactTaint>,
}

impl NodeEntry {
    /// Ready, schedulable and not virtual: counted in cluster capacity.
    fn is_regular_capacity(&self) -> bool {
        self.known && self.ready && self.schedulable && !self.is_virtual
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| &**v)
    }

    /// Free allocatable holds `needs`, and a pod more fits its pod count.
    fn has_room_for(&self, needs: &PodResources) -> bool {
        self.allocatable_cpu.saturating_sub(self.requested_cpu) >= u128::from(needs.cpu_millis)
            && self
                .allocatable_memory
                .saturating_sub(self.requested_memory)
                >= u128::from(needs.memory_bytes)
            && (self.allocatable_pods == 0 || u64::from(self.running_pods) < self.allocatable_pods)
    }

    fn tolerated_by(&self, tolerations: &[Toleration]) -> bool {
        self.taints.iter().all(|t| tolerated(t, tolerations))
    }

    fn admits(&self, constraints: &NodeConstraints) -> bool {
        constraints.is_empty() || constraints.admits(&self.name, |k| self.label(k))
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

impl PodEntry {
    fn needs(&self) -> PodResources {
        PodResources {
            cpu_millis: u64::from(self.cpu_millis),
            memory_bytes: self.memory_bytes,
            cpu_specified: self.flags & POD_CPU_SPECIFIED != 0,
            memory_specified: self.flags & POD_MEMORY_SPECIFIED != 0,
        }
    }

    fn counted_burst(&self) -> bool {
        self.flags & (POD_COUNTED | POD_BURST) == POD_COUNTED | POD_BURST
    }
}

#[derive(Clone, Debug, Default)]
struct ReplicaSetEntry {
    uid: u128,
    exists: bool,
    deployment: Option<u32>,
    local: u32,
    burst: u32,
    /// Pods that refer to this slot.
    pods: u32,
}

#[derive(Clone, Debug, Default)]
struct DeploymentEntry {
    /// `namespace/name`.
    key: String,
    /// `metadata.uid` (for Events about it).
    uid: String,
    exists: bool,
    replicas: u32,
    /// Only the `spillway.io/*` annotations, to stay compact.
    annotations: BTreeMap<String, String>,
    /// The pod template's `spillway.io/*` annotations (they win over the Deployment's).
    template_annotations: BTreeMap<String, String>,
    /// Its policy opts it in (read from both sets of annotations).
    opted_in: bool,
    replicasets: Vec<u32>,
    hpa: Option<HpaFacts>,
}

/// What the index knows about a Deployment.
#[derive(Clone, Debug)]
pub struct WorkloadView<'a> {
    /// `namespace/name`.
    pub key: &'a str,
    /// `metadata.uid`.
    pub uid: &'a str,
    /// Its `spillway.io/*` annotations.
    pub annotations: &'a BTreeMap<String, String>,
    /// Its pod template's `spillway.io/*` annotations (they win over its own).
    pub template_annotations: &'a BTreeMap<String, String>,
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
    free_nodes: Vec<u32>,
    pods: HashMap<u128, PodEntry>,
    /// Counted burst pods, so costs are summed without scanning every pod.
    burst_pods: HashSet<u128>,
    replicaset_slots: HashMap<u128, u32>,
    replicasets: Vec<ReplicaSetEntry>,
    free_replicasets: Vec<u32>,
    deployment_slots: HashMap<String, u32>,
    deployments: Vec<DeploymentEntry>,
    free_deployments: Vec<u32>,
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

    /// Slots in use (live or still referred to): nodes, ReplicaSets, Deployments. Slots
    /// of deleted objects come back once nothing refers to them.
    pub fn slots_in_use(&self) -> (usize, usize, usize) {
        (
            self.node_slots.len(),
            self.replicaset_slots.len(),
            self.deployment_slots.len(),
        )
    }

    fn node_slot(&mut self, name: &str) -> u32 {
        if let Some(slot) = self.node_slots.get(name) {
            return *slot;
        }
        let entry = NodeEntry {
            name: name.into(),
            ..NodeEntry::default()
        };
        let slot = reuse_or_push(&mut self.nodes, &mut self.free_nodes, entry);
        self.node_slots.insert(name.into(), slot);
        slot
    }

    fn replicaset_slot(&mut self, uid: u128) -> u32 {
        if let Some(slot) = self.replicaset_slots.get(&uid) {
            return *slot;
        }
        let entry = ReplicaSetEntry {
            uid,
            ..ReplicaSetEntry::default()
        };
        let slot = reuse_or_push(&mut self.replicasets, &mut self.free_replicasets, entry);
        self.replicaset_slots.insert(uid, slot);
        slot
    }

    fn deployment_slot(&mut self, key: String) -> u32 {
        if let Some(slot) = self.deployment_slots.get(&key) {
            return *slot;
        }
        let entry = DeploymentEntry {
            key: key.clone(),
            ..DeploymentEntry::default()
        };
        let slot = reuse_or_push(&mut self.deployments, &mut self.free_deployments, entry);
        self.deployment_slots.insert(key, slot);
        slot
    }

    /// Frees a node slot when the Node is gone and no pod refers to it.
    fn release_node(&mut self, slot: u32) {
        let entry = &self.nodes[slot as usize];
        if entry.known || entry.pods > 0 {
            return;
        }
        self.node_slots.remove(&entry.name);
        self.nodes[slot as usize] = NodeEntry::default();
        self.free_nodes.push(slot);
    }

    /// Frees a ReplicaSet slot when it is gone and no pod refers to it.
    fn release_replicaset(&mut self, slot: u32) {
        let entry = &self.replicasets[slot as usize];
        if entry.exists || entry.pods > 0 {
            return;
        }
        let uid = entry.uid;
        self.link_replicaset(slot, None);
        self.replicaset_slots.remove(&uid);
        self.replicasets[slot as usize] = ReplicaSetEntry::default();
        self.free_replicasets.push(slot);
    }

    /// Frees a Deployment slot when it is gone and neither a ReplicaSet nor an HPA
    /// refers to it.
    fn release_deployment(&mut self, slot: u32) {
        let entry = &self.deployments[slot as usize];
        if entry.exists || !entry.replicasets.is_empty() || entry.hpa.is_some() {
            return;
        }
        self.deployment_slots.remove(&entry.key);
        self.deployments[slot as usize] = DeploymentEntry::default();
        self.free_deployments.push(slot);
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
            t.allocatable_cpu = t.allocatable_cpu.saturating_add(cpu);
            t.allocatable_memory = t.allocatable_memory.saturating_add(mem);
            t.requested_cpu = t.requested_cpu.saturating_add(rcpu);
            t.requested_memory = t.requested_memory.saturating_add(rmem);
        } else {
            t.allocatable_cpu = t.allocatable_cpu.saturating_sub(cpu);
            t.allocatable_memory = t.allocatable_memory.saturating_sub(mem);
            t.requested_cpu = t.requested_cpu.saturating_sub(rcpu);
            t.requested_memory = t.requested_memory.saturating_sub(rmem);
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
        entry.provider = labels
            .and_then(|l| l.get(keys::NODE_PROVIDER_LABEL))
            .and_then(|v| Provider::parse(v));
        entry.labels = labels
            .iter()
            .flat_map(|l| l.iter())
            .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
            .collect();
        entry.allocatable_pods = quantity_of(allocatable, "pods", quantity::count);
        entry.allocatable_cpu = quantity_of(allocatable, "cpu", quantity::cpu_millis).into();
        entry.allocatable_memory = quantity_of(allocatable, "memory", quantity::bytes).into();
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
            entry.labels.clear();
            self.release_node(slot);
        }
    }

    fn account_pod(&mut self, uid: u128, entry: PodEntry, sign: i8) {
        // Exact in 128 bits: a hostile request near u64::MAX neither saturates a sum nor
        // takes other pods' requests with it when it goes.
        let delta = |value: &mut u128, by: u64| {
            *value = if sign > 0 {
                *value + u128::from(by)
            } else {
                value.saturating_sub(u128::from(by))
            }
        };
        let count = |value: &mut u32| {
            if sign > 0 { *value += 1 } else { *value -= 1 }
        };
        if entry.node != NO_SLOT {
            count(&mut self.nodes[entry.node as usize].pods);
        }
        if entry.replicaset != NO_SLOT {
            count(&mut self.replicasets[entry.replicaset as usize].pods);
        }
        if entry.counted_burst() {
            if sign > 0 {
                self.burst_pods.insert(uid);
            } else {
                self.burst_pods.remove(&uid);
            }
        }
        if entry.flags & POD_HOLDS_RESOURCES != 0 && entry.node != NO_SLOT {
            let regular = self.nodes[entry.node as usize].is_regular_capacity();
            let node = &mut self.nodes[entry.node as usize];
            count(&mut node.running_pods);
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
        let old = self.pods.remove(&uid);
        if let Some(old) = old {
            self.account_pod(uid, old, -1);
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
        // Room held by Spillway's placeholder pods counts as free: any real pod preempts
        // them, and the workload they hold it for must see the node it asked for as empty.
        let placeholder = pod
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(keys::BACKFILL_FOR));
        let mut flags = 0;
        if !finished && !placeholder {
            flags |= POD_HOLDS_RESOURCES;
            if !deleting {
                flags |= POD_COUNTED;
            }
        }
        if labelled_burst || on_virtual {
            flags |= POD_BURST;
        }
        if needs.cpu_specified {
            flags |= POD_CPU_SPECIFIED;
        }
        if needs.memory_specified {
            flags |= POD_MEMORY_SPECIFIED;
        }
        if replicaset == NO_SLOT && crate::policy::pod_opted_in(pod) {
            flags |= POD_SELF_OPTED_IN;
        }
        let entry = PodEntry {
            node,
            replicaset,
            cpu_millis: u32::try_from(needs.cpu_millis).unwrap_or(u32::MAX),
            memory_bytes: needs.memory_bytes,
            flags,
        };
        self.account_pod(uid, entry, 1);
        self.pods.insert(uid, entry);
        if let Some(old) = old {
            self.release_pod_references(old);
        }
    }

    /// Frees the node and ReplicaSet slots a pod no longer refers to, if they are gone.
    fn release_pod_references(&mut self, old: PodEntry) {
        if old.node != NO_SLOT {
            self.release_node(old.node);
        }
        if old.replicaset != NO_SLOT {
            self.release_replicaset(old.replicaset);
        }
    }

    /// Removes a Pod.
    pub fn delete_pod(&mut self, uid: &str) {
        self.delete_pod_compact(compact_uid(uid));
    }

    /// Removes a Pod by its [`compact_uid`].
    pub fn delete_pod_compact(&mut self, uid: u128) {
        if let Some(old) = self.pods.remove(&uid) {
            self.account_pod(uid, old, -1);
            self.release_pod_references(old);
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
        self.replicasets[slot as usize].exists = true;
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
        if let Some(new) = new {
            self.deployments[new as usize].replicasets.push(slot);
        }
        self.replicasets[slot as usize].deployment = new;
        if let Some(old) = old {
            self.deployments[old as usize]
                .replicasets
                .retain(|s| *s != slot);
            self.release_deployment(old);
        }
    }

    /// Removes a ReplicaSet (its slot goes once its pods are gone too).
    pub fn delete_replicaset(&mut self, uid: &str) {
        if let Some(&slot) = self.replicaset_slots.get(&compact_uid(uid)) {
            self.replicasets[slot as usize].exists = false;
            self.release_replicaset(slot);
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
        entry.uid = deployment.metadata.uid.clone().unwrap_or_default();
        entry.replicas = deployment
            .spec
            .replicas
            .map(|r| r.max(0) as u32)
            .unwrap_or(1);
        let ours = |annotations: Option<&BTreeMap<String, String>>| {
            annotations
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("spillway.io/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        entry.annotations = ours(deployment.metadata.annotations.as_ref());
        entry.template_annotations = ours(
            deployment
                .spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref()),
        );
        entry.opted_in =
            crate::policy::read(Some(&entry.annotations), Some(&entry.template_annotations))
                .0
                .opted_in;
    }

    /// Forgets a Deployment (its slot stays while ReplicaSets or an HPA point at it).
    pub fn delete_deployment(&mut self, namespace: &str, name: &str) {
        if let Some(&slot) = self.deployment_slots.get(&key(namespace, name)) {
            let entry = &mut self.deployments[slot as usize];
            entry.exists = false;
            entry.annotations.clear();
            entry.template_annotations.clear();
            entry.opted_in = false;
            self.release_deployment(slot);
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
            self.release_deployment(slot);
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
        // The HPA controller scales the Deployment first and writes its own status
        // after: the replicas it just set are its newest decision, so the pods they
        // create already see the pressure that created them.
        let hpa = entry.hpa.map(|hpa| HpaFacts {
            desired_replicas: hpa
                .desired_replicas
                .max(entry.replicas.min(hpa.max_replicas)),
            ..hpa
        });
        Some(WorkloadView {
            key: &entry.key,
            uid: &entry.uid,
            annotations: &entry.annotations,
            template_annotations: &entry.template_annotations,
            replicas: entry.replicas,
            hpa,
            counts,
        })
    }

    /// Every Deployment known to exist.
    pub fn workloads(&self) -> impl Iterator<Item = WorkloadView<'_>> {
        (0..self.deployments.len() as u32).filter_map(|slot| self.workload_at(slot))
    }

    /// Whether a burst pod is spend: owned (through its ReplicaSet) by a Deployment that
    /// exists and is opted in, and bound to a virtual node or not bound yet (a decision
    /// in flight, about to bill). A `placement: burst` label on any other pod (a pod of
    /// no opted-in workload, or one running on a regular node) spends nothing, so no one
    /// can exhaust the budget by labelling pods.
    ///
    /// A pod of no ReplicaSet that opted in by its own annotation bills once it is bound
    /// to a virtual node (the node admits it); unbound, it spends nothing.
    fn bills(&self, pod: &PodEntry) -> bool {
        let opted_in = self
            .deployment_of(pod)
            .map(|slot| &self.deployments[slot as usize])
            .is_some_and(|d| d.exists && d.opted_in);
        let bound_virtual = pod.node != NO_SLOT && self.nodes[pod.node as usize].is_virtual;
        let on_virtual = pod.node == NO_SLOT || bound_virtual;
        (opted_in && on_virtual) || (pod.flags & POD_SELF_OPTED_IN != 0 && bound_virtual)
    }

    /// What the pod with `uid` adds to [`Self::burst_usd_per_hour`] (0 when it does not
    /// bill or is unknown), so a check can leave the pod itself out of the sum.
    pub fn pod_burst_usd_per_hour(
        &self,
        uid: &str,
        pricing: &PricingConfig,
        default_provider: Provider,
    ) -> f64 {
        let uid = compact_uid(uid);
        if !self.burst_pods.contains(&uid) {
            return 0.0;
        }
        self.pods
            .get(&uid)
            .filter(|pod| self.bills(pod))
            .and_then(|pod| {
                cost::hourly_usd(
                    &pod.needs(),
                    self.provider_of(pod, default_provider),
                    pricing,
                )
            })
            .unwrap_or(0.0)
    }

    /// Estimated USD per hour of the burst pods that bill ([`Self::bills`]), of one
    /// workload (`namespace/name`) or of the whole cluster (`None`), priced at the
    /// provider of the virtual node each runs on (`default_provider` while unbound).
    pub fn burst_usd_per_hour(
        &self,
        workload: Option<&str>,
        pricing: &PricingConfig,
        default_provider: Provider,
    ) -> f64 {
        let slot = match workload {
            Some(key) => match self.deployment_slots.get(key) {
                Some(slot) => Some(*slot),
                None => return 0.0,
            },
            None => None,
        };
        self.burst_pods
            .iter()
            .filter_map(|uid| self.pods.get(uid))
            .filter(|pod| self.bills(pod))
            .filter(|pod| slot.is_none() || self.deployment_of(pod) == slot)
            .filter_map(|pod| {
                cost::hourly_usd(
                    &pod.needs(),
                    self.provider_of(pod, default_provider),
                    pricing,
                )
            })
            .sum()
    }

    /// Estimated USD per hour of each workload's burst pods by provider.
    pub fn burst_usd_by_workload(
        &self,
        pricing: &PricingConfig,
        default_provider: Provider,
    ) -> HashMap<(&str, Provider), f64> {
        let mut out = HashMap::new();
        for pod in self
            .burst_pods
            .iter()
            .filter_map(|uid| self.pods.get(uid))
            .filter(|pod| self.bills(pod))
        {
            let Some(slot) = self.deployment_of(pod) else {
                continue;
            };
            let provider = self.provider_of(pod, default_provider);
            let cost = cost::hourly_usd(&pod.needs(), provider, pricing).unwrap_or(0.0);
            *out.entry((self.deployments[slot as usize].key.as_str(), provider))
                .or_insert(0.0) += cost;
        }
        out
    }

    fn deployment_of(&self, pod: &PodEntry) -> Option<u32> {
        if pod.replicaset == NO_SLOT {
            return None;
        }
        self.replicasets[pod.replicaset as usize].deployment
    }

    fn provider_of(&self, pod: &PodEntry, default_provider: Provider) -> Provider {
        if pod.node == NO_SLOT {
            return default_provider;
        }
        self.nodes[pod.node as usize]
            .provider
            .unwrap_or(default_provider)
    }

    /// The pods of ReplicaSet `uid` that count as its replicas (pending or running, not
    /// being deleted), local and burst; none when the index does not know it.
    pub fn replicaset_counts(&self, uid: &str) -> PlacementCounts {
        self.replicaset_slots
            .get(&compact_uid(uid))
            .map(|&slot| {
                let rs = &self.replicasets[slot as usize];
                PlacementCounts {
                    local: rs.local,
                    burst: rs.burst,
                }
            })
            .unwrap_or_default()
    }

    /// Whether the index has seen the ReplicaSet with `uid` (and not its deletion).
    pub fn replicaset_exists(&self, uid: &str) -> bool {
        self.replicaset_slots
            .get(&compact_uid(uid))
            .is_some_and(|&slot| self.replicasets[slot as usize].exists)
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
    /// taints `tolerations` tolerate and whose labels `constraints` accept has room for
    /// `needs`.
    pub fn any_node_fits(
        &self,
        needs: &PodResources,
        tolerations: &[Toleration],
        constraints: &NodeConstraints,
    ) -> bool {
        self.nodes.iter().any(|node| {
            node.is_regular_capacity()
                && node.has_room_for(needs)
                && node.tolerated_by(tolerations)
                && node.admits(constraints)
        })
    }

    /// Whether a virtual node of `provider` can take a pod: Ready, not cordoned (as before
    /// an uninstall drains it), without the degraded taint, with room for `needs`, and
    /// with labels `constraints` accept.
    pub fn provider_node(
        &self,
        provider: Provider,
        needs: &PodResources,
        constraints: &NodeConstraints,
    ) -> ProviderNode {
        let mut constrained = false;
        for node in &self.nodes {
            let usable = node.known
                && node.ready
                && node.schedulable
                && node.is_virtual
                && node.provider == Some(provider)
                && !node
                    .taints
                    .iter()
                    .any(|t| &*t.key == keys::PROVIDER_DEGRADED_TAINT)
                && node.has_room_for(needs);
            if !usable {
                continue;
            }
            if node.admits(constraints) {
                return ProviderNode::Takes;
            }
            constrained = true;
        }
        if constrained {
            ProviderNode::Constrained
        } else {
            ProviderNode::Unusable
        }
    }

    /// The tolerations a pod needs for the operator's own taints on `provider`'s virtual
    /// nodes (`--node-taint`), beside the virtual-node toleration every burst pod gets:
    /// each NoSchedule/NoExecute taint whose key the node or Kubernetes does not manage
    /// ([`spillway_common::taint::is_managed`]), once, as an exact (`Equal`) toleration.
    pub fn virtual_node_tolerations(&self, provider: Provider) -> Vec<Toleration> {
        let mut tolerations: Vec<Toleration> = Vec::new();
        let taints = self
            .nodes
            .iter()
            .filter(|n| n.known && n.is_virtual && n.provider == Some(provider))
            .flat_map(|n| n.taints.iter())
            .filter(|t| !spillway_common::taint::is_managed(&t.key));
        for taint in taints {
            let toleration = Toleration {
                key: Some(taint.key.to_string()),
                operator: Some("Equal".to_owned()),
                value: Some(taint.value.to_string()),
                effect: Some(taint.effect.to_string()),
                ..Toleration::default()
            };
            if !tolerations.contains(&toleration) {
                tolerations.push(toleration);
            }
        }
        tolerations
    }

    /// Whether `name` is a known virtual node.
    pub fn is_virtual_node(&self, name: &str) -> bool {
        self.node_slots
            .get(name)
            .is_some_and(|slot| self.nodes[*slot as usize].is_virtual)
    }

    /// Whether node `name` carries a NoSchedule/NoExecute taint with `key`.
    pub fn node_has_taint(&self, name: &str, key: &str) -> bool {
        self.node_slots.get(name).is_some_and(|slot| {
            self.nodes[*slot as usize]
                .taints
                .iter()
                .any(|t| &*t.key == key)
        })
    }

    /// Whether node `name` is known and its Ready condition is True.
    pub fn node_ready(&self, name: &str) -> bool {
        self.node_slots.get(name).is_some_and(|slot| {
            let node = &self.nodes[*slot as usize];
            node.known && node.ready
        })
    }

    /// The `spillway.io/provider` of virtual node `name`.
    pub fn node_provider(&self, name: &str) -> Option<Provider> {
        self.nodes[*self.node_slots.get(name)? as usize].provider
    }

    /// Names of known virtual nodes (for diagnostics).
    pub fn virtual_nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes
            .iter()
            .filter(|n| n.known && n.is_virtual)
            .map(|n| &*n.name)
    }
}

fn reuse_or_push<T>(entries: &mut Vec<T>, free: &mut Vec<u32>, entry: T) -> u32 {
    match free.pop() {
        Some(slot) => {
            entries[slot as usize] = entry;
            slot
        }
        None => {
            entries.push(entry);
            (entries.len() - 1) as u32
        }
    }
}

impl CapacityView for ClusterIndex {
    fn totals(&self) -> CapacityTotals {
        ClusterIndex::totals(self)
    }
    fn any_node_fits(
        &self,
        needs: &PodResources,
        tolerations: &[Toleration],
        constraints: &NodeConstraints,
    ) -> bool {
        ClusterIndex::any_node_fits(self, needs, tolerations, constraints)
    }
    fn provider_node(
        &self,
        provider: Provider,
        needs: &PodResources,
        constraints: &NodeConstraints,
    ) -> ProviderNode {
        ClusterIndex::provider_node(self, provider, needs, constraints)
    }
}

/// Whether `tolerations` tolerate the taint that `wanted` (an exact toleration, as from
/// [`ClusterIndex::virtual_node_tolerations`]) is for.
pub fn tolerates(tolerations: &[Toleration], wanted: &Toleration) -> bool {
    let taint = CompactTaint {
        key: wanted.key.as_deref().unwrap_or("").into(),
        value: wanted.value.as_deref().unwrap_or("").into(),
        effect: wanted.effect.as_deref().unwrap_or("").into(),
    };
    tolerated(&taint, tolerations)
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
    fn placeholder_pods_hold_no_room_in_the_sums_or_the_fit_scan() {
        let mut index = ClusterIndex::new();
        index.apply_node(&node("new", "2", "8Gi"));
        let mut placeholder = pod("ph1", Some("new"), "rs1", "1500m");
        placeholder.metadata.labels =
            Some([(keys::BACKFILL_FOR.to_owned(), "web".to_owned())].into());
        placeholder.metadata.owner_references = None;
        index.apply_pod(&placeholder);
        let needs = PodResources {
            cpu_millis: 1500,
            memory_bytes: 1 << 30,
            cpu_specified: true,
            memory_specified: true,
        };
        assert_eq!(index.totals().requested_cpu, 0);
        assert!(
            index.any_node_fits(&needs, &[], &NodeConstraints::default()),
            "the placeholder's room is free"
        );
        // A real pod of the same size does hold its room.
        index.apply_pod(&pod("real", Some("new"), "rs1", "1500m"));
        assert_eq!(index.totals().requested_cpu, 1500);
        assert!(!index.any_node_fits(&needs, &[], &NodeConstraints::default()));
    }

    #[test]
    fn hostile_requests_keep_the_sums_exact_and_take_nothing_with_them() {
        let mut index = ClusterIndex::new();
        index.apply_node(&node("a", "4", "16Gi"));
        let huge = |uid: &str| {
            let mut p = pod(uid, Some("a"), "rs1", "1");
            let requests = p.spec.as_mut().unwrap().containers[0]
                .resources
                .as_mut()
                .unwrap()
                .requests
                .as_mut()
                .unwrap();
            requests.insert(
                "memory".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("10Ei".into()),
            );
            p
        };
        let mut ordinary = pod("p3", Some("a"), "rs1", "1");
        ordinary.spec.as_mut().unwrap().containers[0]
            .resources
            .as_mut()
            .unwrap()
            .requests
            .as_mut()
            .unwrap()
            .insert(
                "memory".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("8Gi".into()),
            );
        index.apply_pod(&ordinary);
        index.apply_pod(&huge("p1"));
        index.apply_pod(&huge("p2"));
        // 20 EiB does not fit in u64: the sum is exact, never wrapped nor stuck at the top.
        assert_eq!(
            index.totals().requested_memory,
            (8u128 << 30) + 2 * (10u128 << 60)
        );
        assert!(index.totals().utilization().1 >= 1.0);
        index.delete_pod("p1");
        index.delete_pod("p2");
        // The ordinary pod's request is still there: memory pressure did not vanish.
        assert_eq!(index.totals().requested_memory, 8u128 << 30);
        assert!((index.totals().utilization().1 - 0.5).abs() < 1e-9);
    }

    #[test]
    fn hpa_pressure_counts_the_replicas_the_hpa_set_before_its_status_says_so() {
        let mut index = ClusterIndex::new();
        let (d, _) = deployment();
        index.apply_deployment(&d);
        let hpa = |desired: i32| -> HorizontalPodAutoscaler {
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "ns"},
                "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 2, "maxReplicas": 5},
                "status": {"desiredReplicas": desired, "currentReplicas": desired}
            }))
            .unwrap()
        };
        let desired = |index: &ClusterIndex| {
            index
                .workload("ns", "web")
                .unwrap()
                .hpa
                .unwrap()
                .desired_replicas
        };
        // The Deployment already has the 4 replicas the HPA set; its status still says 3.
        index.apply_hpa(&hpa(3));
        assert_eq!(desired(&index), 4);
        // A newer status wins when it is higher; never more than maxReplicas.
        index.apply_hpa(&hpa(5));
        assert_eq!(desired(&index), 5);
        let mut big = d.clone();
        big.spec.replicas = Some(9);
        index.apply_deployment(&big);
        assert_eq!(desired(&index), 5);
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
    fn burst_pods_are_given_tolerations_for_the_operators_taints_only() {
        let mut index = ClusterIndex::new();
        let mut vnode = node("vk-fargate", "100", "1Ti");
        vnode.metadata.labels = Some(
            [
                ("type".to_string(), "virtual-kubelet".to_string()),
                ("spillway.io/provider".to_string(), "fargate".to_string()),
            ]
            .into(),
        );
        vnode.spec = Some(
            serde_json::from_value(json!({"taints": [
                {"key": "virtual-kubelet.io/provider", "value": "fargate", "effect": "NoSchedule"},
                {"key": "spillway.io/provider-degraded", "value": "fargate", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
                {"key": "example.com/burst", "value": "only", "effect": "NoSchedule"},
                {"key": "dedicated", "effect": "NoExecute"},
                {"key": "soft", "value": "x", "effect": "PreferNoSchedule"}
            ]}))
            .unwrap(),
        );
        index.apply_node(&vnode);
        let tolerations = index.virtual_node_tolerations(Provider::Fargate);
        let keys: Vec<(&str, &str, &str)> = tolerations
            .iter()
            .map(|t| {
                (
                    t.key.as_deref().unwrap(),
                    t.value.as_deref().unwrap(),
                    t.effect.as_deref().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("example.com/burst", "only", "NoSchedule"),
                ("dedicated", "", "NoExecute")
            ]
        );
        assert!(index.virtual_node_tolerations(Provider::Aci).is_empty());
        assert!(tolerates(&tolerations, &tolerations[0]));
        let anything: Toleration = serde_json::from_value(json!({"operator": "Exists"})).unwrap();
        assert!(tolerates(&[anything], &tolerations[1]));
        let other_value: Toleration = serde_json::from_value(
            json!({"key": "example.com/burst", "operator": "Equal", "value": "never"}),
        )
        .unwrap();
        assert!(!tolerates(&[other_value], &tolerations[0]));
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
    fn a_provider_takes_a_pod_on_a_ready_virtual_node_not_degraded_with_room() {
        let mut index = ClusterIndex::new();
        let virtual_node = |name: &str, provider: &str, degraded: bool, pods: &str| {
            let mut vnode = node(name, "100", "1Ti");
            vnode.metadata.labels = Some(
                [
                    ("type", "virtual-kubelet"),
                    ("spillway.io/provider", provider),
                    ("kubernetes.io/os", "linux"),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
            );
            if degraded {
                vnode.spec = Some(serde_json::from_value(json!({"taints": [
                    {"key": "spillway.io/provider-degraded", "value": provider, "effect": "NoSchedule"}
                ]})).unwrap());
            }
            let status = vnode.status.as_mut().unwrap();
            status.allocatable.as_mut().unwrap().insert(
                "pods".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity(pods.into()),
            );
            vnode
        };
        let needs = PodResources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            cpu_specified: true,
            memory_specified: true,
        };
        let none = NodeConstraints::default();
        let takes = |index: &ClusterIndex, p| index.provider_node(p, &needs, &none);
        assert_eq!(
            takes(&index, Provider::Aci),
            ProviderNode::Unusable,
            "missing"
        );
        index.apply_node(&virtual_node("spillway-aci", "aci", false, "2"));
        index.apply_node(&virtual_node("spillway-fargate", "fargate", true, "500"));
        assert_eq!(takes(&index, Provider::Aci), ProviderNode::Takes);
        assert_eq!(
            takes(&index, Provider::Fargate),
            ProviderNode::Unusable,
            "degraded"
        );
        index.apply_node(&virtual_node("spillway-fargate", "fargate", false, "500"));
        assert_eq!(
            takes(&index, Provider::Fargate),
            ProviderNode::Takes,
            "recovered"
        );
        let mut cordoned = virtual_node("spillway-fargate", "fargate", false, "500");
        cordoned.spec.get_or_insert_default().unschedulable = Some(true);
        index.apply_node(&cordoned);
        assert_eq!(
            takes(&index, Provider::Fargate),
            ProviderNode::Unusable,
            "cordoned"
        );
        index.apply_node(&virtual_node("spillway-fargate", "fargate", false, "500"));
        // Full: as many pods bound as it takes; a finished one frees its place.
        index.apply_pod(&pod("a1", Some("spillway-aci"), "rs1", "100m"));
        index.apply_pod(&pod("a2", Some("spillway-aci"), "rs1", "100m"));
        assert_eq!(takes(&index, Provider::Aci), ProviderNode::Unusable, "full");
        let mut done = pod("a2", Some("spillway-aci"), "rs1", "100m");
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        index.apply_pod(&done);
        assert_eq!(
            takes(&index, Provider::Aci),
            ProviderNode::Takes,
            "room again"
        );
        // Too large for what it has left.
        let huge = PodResources {
            cpu_millis: 200_000,
            ..needs
        };
        assert_eq!(
            index.provider_node(Provider::Aci, &huge, &none),
            ProviderNode::Unusable
        );
        // The pod's own selector: met by the node's labels, or not.
        let linux = NodeConstraints {
            node_selector: vec![("kubernetes.io/os".into(), "linux".into())],
            ..NodeConstraints::default()
        };
        let gpu = NodeConstraints {
            node_selector: vec![("accelerator".into(), "a100".into())],
            ..NodeConstraints::default()
        };
        assert_eq!(
            index.provider_node(Provider::Aci, &needs, &linux),
            ProviderNode::Takes
        );
        assert_eq!(
            index.provider_node(Provider::Aci, &needs, &gpu),
            ProviderNode::Constrained
        );
        // NotReady, then gone.
        let mut not_ready = virtual_node("spillway-aci", "aci", false, "2");
        not_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        index.apply_node(&not_ready);
        assert_eq!(
            takes(&index, Provider::Aci),
            ProviderNode::Unusable,
            "NotReady"
        );
        index.delete_node("spillway-aci");
        assert_eq!(takes(&index, Provider::Aci), ProviderNode::Unusable, "gone");
    }

    #[test]
    fn the_fit_scan_reads_the_pods_selector_and_affinity() {
        let mut index = ClusterIndex::new();
        let mut ssd = node("ssd-1", "4", "16Gi");
        ssd.metadata.labels = Some([("disk".to_owned(), "ssd".to_owned())].into());
        index.apply_node(&ssd);
        index.apply_node(&node("plain-1", "1", "16Gi"));
        let needs = PodResources {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            cpu_specified: true,
            memory_specified: true,
        };
        let wants = |disk: &str| NodeConstraints {
            node_selector: vec![("disk".into(), disk.into())],
            ..NodeConstraints::default()
        };
        assert!(index.any_node_fits(&needs, &[], &wants("ssd")));
        assert!(!index.any_node_fits(&needs, &[], &wants("hdd")));
        // Only the plain node is free enough for a second pod.
        index.apply_pod(&pod("p1", Some("ssd-1"), "rs1", "3"));
        assert!(!index.any_node_fits(&needs, &[], &wants("ssd")));
    }

    #[test]
    fn deleted_objects_free_their_slots() {
        let mut index = ClusterIndex::new();
        index.apply_node(&node("a", "4", "16Gi"));
        let (d, rs) = deployment();
        index.apply_deployment(&d);
        index.apply_replicaset(&rs);
        index.apply_pod(&pod("p1", Some("a"), "rs1", "1"));
        assert_eq!(index.slots_in_use(), (1, 1, 1));
        // Gone from the API, but a pod still refers to the node and the ReplicaSet (which
        // still links the Deployment): the slots stay.
        index.delete_node("a");
        index.delete_replicaset("rs1");
        index.delete_deployment("ns", "web");
        assert_eq!(index.slots_in_use(), (1, 1, 1));
        assert!(index.workload("ns", "web").is_none());
        index.delete_pod("p1");
        assert_eq!(index.slots_in_use(), (0, 0, 0));
        // Freed slots are reused, and what is new starts clean.
        index.apply_node(&node("b", "2", "8Gi"));
        index.apply_deployment(&d);
        index.apply_replicaset(&rs);
        index.apply_pod(&pod("p2", Some("b"), "rs1", "500m"));
        assert_eq!(index.nodes.len(), 1);
        assert_eq!(index.replicasets.len(), 1);
        assert_eq!(index.deployments.len(), 1);
        let view = index.workload("ns", "web").unwrap();
        assert_eq!(view.counts, PlacementCounts { local: 1, burst: 0 });
        assert_eq!(index.totals().requested_cpu, 500);
    }

    #[test]
    fn churn_does_not_grow_the_index() {
        let mut index = ClusterIndex::new();
        for round in 0..50 {
            let name = format!("node-{round}");
            index.apply_node(&node(&name, "4", "16Gi"));
            let mut rs: ReplicaSet = deployment().1;
            rs.metadata.uid = Some(format!("rs-{round}"));
            index.apply_replicaset(&rs);
            index.apply_pod(&pod(
                &format!("p-{round}"),
                Some(&name),
                &format!("rs-{round}"),
                "1",
            ));
            index.delete_pod(&format!("p-{round}"));
            index.delete_replicaset(&format!("rs-{round}"));
            index.delete_node(&name);
        }
        assert_eq!(index.slots_in_use(), (0, 0, 0));
        assert!(index.nodes.len() <= 1 && index.replicasets.len() <= 1);
        assert!(index.deployments.len() <= 1);
    }

    #[test]
    fn only_burst_pods_that_bill_spend_the_budget() {
        let mut index = ClusterIndex::new();
        let mut vnode = node("vk", "100", "1Ti");
        vnode.metadata.labels = Some(
            [
                ("type".to_string(), "virtual-kubelet".to_string()),
                ("spillway.io/provider".to_string(), "fargate".to_string()),
            ]
            .into(),
        );
        index.apply_node(&vnode);
        index.apply_node(&node("a", "4", "16Gi"));
        let (d, rs) = deployment();
        index.apply_deployment(&d);
        index.apply_replicaset(&rs);
        let labelled = |mut pod: Pod| {
            pod.metadata.labels =
                Some([("spillway.io/placement".to_string(), "burst".to_string())].into());
            pod
        };
        let pricing = PricingConfig::default();
        let spent =
            |index: &ClusterIndex| index.burst_usd_per_hour(None, &pricing, Provider::Fargate);
        // The opted-in workload's pods on the virtual node, and one not bound yet, bill.
        index.apply_pod(&pod("on-vk", Some("vk"), "rs1", "1"));
        index.apply_pod(&labelled(pod("pending", None, "rs1", "1")));
        let billing = spent(&index);
        assert!(billing > 0.0);
        // A labelled pod on a regular node, one of no workload, and one of a workload
        // that is not opted in spend nothing.
        index.apply_pod(&labelled(pod("on-a", Some("a"), "rs1", "1")));
        let mut stray: Pod = labelled(pod("stray", None, "rs-none", "4"));
        stray.metadata.namespace = Some("elsewhere".into());
        stray.metadata.owner_references = None;
        index.apply_pod(&stray);
        let (mut quiet, mut quiet_rs) = deployment();
        quiet.metadata.name = Some("quiet".into());
        quiet.metadata.uid = Some("d2".into());
        quiet.metadata.annotations = None;
        quiet_rs.metadata.uid = Some("rs2".into());
        quiet_rs.metadata.name = Some("quiet-abc".into());
        quiet_rs.metadata.owner_references.as_mut().unwrap()[0].name = "quiet".into();
        quiet_rs.metadata.owner_references.as_mut().unwrap()[0].uid = "d2".into();
        index.apply_deployment(&quiet);
        index.apply_replicaset(&quiet_rs);
        index.apply_pod(&pod("quiet-on-vk", Some("vk"), "rs2", "4"));
        assert!((spent(&index) - billing).abs() < 1e-12, "{}", spent(&index));
        // Opting in through the pod template counts it.
        quiet.spec.template.metadata = Some(
            serde_json::from_value(json!({"annotations": {"spillway.io/burst": "true"}})).unwrap(),
        );
        index.apply_deployment(&quiet);
        assert!(spent(&index) > billing);
        assert!(
            index
                .workload("ns", "quiet")
                .unwrap()
                .template_annotations
                .contains_key("spillway.io/burst")
        );
    }

    #[test]
    fn a_bare_pod_that_opts_itself_in_bills_once_bound_to_a_virtual_node() {
        let mut index = ClusterIndex::new();
        let mut vnode = node("vk", "100", "1Ti");
        vnode.metadata.labels = Some(
            [
                ("type".to_string(), "virtual-kubelet".to_string()),
                ("spillway.io/provider".to_string(), "fargate".to_string()),
            ]
            .into(),
        );
        index.apply_node(&vnode);
        let pricing = PricingConfig::default();
        let spent =
            |index: &ClusterIndex| index.burst_usd_per_hour(None, &pricing, Provider::Fargate);
        let bare = |uid: &str, node: Option<&str>, opted_in: bool| {
            let mut pod = pod(uid, node, "none", "1");
            pod.metadata.owner_references = None;
            pod.metadata.labels =
                Some([("spillway.io/placement".to_string(), "burst".to_string())].into());
            if opted_in {
                pod.metadata.annotations =
                    Some([("spillway.io/burst".to_string(), "true".to_string())].into());
            }
            pod
        };
        // Unbound, or not opted in, it spends nothing: labels alone cannot spend the
        // budget.
        index.apply_pod(&bare("waiting", None, true));
        index.apply_pod(&bare("quiet", Some("vk"), false));
        assert_eq!(spent(&index), 0.0);
        assert_eq!(
            index.pod_burst_usd_per_hour("waiting", &pricing, Provider::Fargate),
            0.0
        );
        index.apply_pod(&bare("bound", Some("vk"), true));
        let own = index.pod_burst_usd_per_hour("bound", &pricing, Provider::Fargate);
        assert!(own > 0.0);
        assert!((spent(&index) - own).abs() < 1e-12);
        assert_eq!(
            index.pod_burst_usd_per_hour("unknown", &pricing, Provider::Fargate),
            0.0
        );
    }

    #[test]
    fn burst_cost_is_priced_at_the_node_provider() {
        let mut index = ClusterIndex::new();
        let mut vnode = node("vk", "100", "1Ti");
        vnode.metadata.labels = Some(
            [
                ("type".to_string(), "virtual-kubelet".to_string()),
                ("spillway.io/provider".to_string(), "aci".to_string()),
            ]
            .into(),
        );
        index.apply_node(&vnode);
        let (d, rs) = deployment();
        index.apply_deployment(&d);
        index.apply_replicaset(&rs);
        index.apply_pod(&pod("p1", Some("vk"), "rs1", "1"));
        index.apply_pod(&pod("p2", Some("vk"), "rs1", "1"));
        let pricing = PricingConfig::default();
        let one = cost::hourly_usd(
            &PodResources {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                cpu_specified: true,
                memory_specified: true,
            },
            Provider::Aci,
            &pricing,
        )
        .unwrap();
        let total = index.burst_usd_per_hour(None, &pricing, Provider::Fargate);
        assert!((total - 2.0 * one).abs() < 1e-9, "{total}");
        let web = index.burst_usd_per_hour(Some("ns/web"), &pricing, Provider::Fargate);
        assert!((web - total).abs() < 1e-12);
        assert_eq!(
            index.burst_usd_per_hour(Some("ns/other"), &pricing, Provider::Fargate),
            0.0
        );
        index.delete_pod("p1");
        let by = index.burst_usd_by_workload(&pricing, Provider::Fargate);
        assert!((by[&("ns/web", Provider::Aci)] - one).abs() < 1e-9);
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
        assert!(!index.any_node_fits(&needs, &[], &NodeConstraints::default()));
        let tol: Toleration = serde_json::from_value(
            json!({"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}),
        )
        .unwrap();
        assert!(index.any_node_fits(&needs, &[tol], &NodeConstraints::default()));
        let all: Toleration = serde_json::from_value(json!({"operator": "Exists"})).unwrap();
        assert!(index.any_node_fits(&needs, &[all], &NodeConstraints::default()));
    }
}
