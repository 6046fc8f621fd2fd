//! Table-style tests of the controller's pass over a real (in-memory) index.

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::*;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const MIN: i64 = 60_000;

struct Cluster {
    index: ClusterIndex,
    pods: Vec<Pod>,
    config: OperatorConfig,
    backfill: BackfillObserved,
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
}

impl Cluster {
    /// One regular node of `cpu` cores and the virtual node, a Deployment `web` of
    /// `replicas` with `annotations`.
    fn new(cpu: &str, replicas: u32, annotations: Value) -> Self {
        let mut index = ClusterIndex::new();
        let node = |name: &str, cpu: &str, labels: Value| {
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "status": {"allocatable": {"cpu": cpu, "memory": "64Gi"},
                    "conditions": [{"type": "Ready", "status": "True"}]}
            }))
            .unwrap()
        };
        index.apply_node(&node("a", cpu, json!({})));
        index.apply_node(&node(
            "vk",
            "100",
            json!({"type": "virtual-kubelet", "spillway.io/provider": "fargate"}),
        ));
        let mut annotations = annotations;
        annotations["spillway.io/burst"] = json!("true");
        index.apply_deployment(
            &serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "ns", "uid": "d1", "annotations": annotations},
                "spec": {"replicas": replicas, "selector": {}, "template": {}}
            }))
            .unwrap(),
        );
        index.apply_replicaset(
            &serde_json::from_value(json!({
                "metadata": {"name": "web-1", "namespace": "ns", "uid": "rs1",
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d1", "controller": true}]}
            }))
            .unwrap(),
        );
        let config = OperatorConfig {
            rebalance: spillway_common::config::RebalanceConfig {
                cooldown_seconds: 60,
                ..Default::default()
            },
            ..OperatorConfig::default()
        };
        Self {
            index,
            pods: Vec::new(),
            config,
            backfill: BackfillObserved::default(),
        }
    }

    /// A Running, Ready pod of `web` requesting `cpu`, created at `created_ms`.
    fn pod(&mut self, name: &str, node: Option<&str>, cpu: &str, created_ms: i64, extra: Value) {
        let placement = if node == Some("vk") { "burst" } else { "local" };
        let mut pod = json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                "creationTimestamp": rfc3339(created_ms),
                "labels": {"spillway.io/placement": placement},
                "annotations": {},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "rs1", "controller": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        });
        if placement == "burst" {
            pod["metadata"]["annotations"][keys::POD_DELETION_COST] = json!("-1000");
        }
        merge(&mut pod, extra);
        // A null in `extra` removes the annotation or label.
        for map in ["annotations", "labels"] {
            if let Some(entries) = pod["metadata"][map].as_object_mut() {
                entries.retain(|_, v| !v.is_null());
            }
        }
        let pod: Pod = serde_json::from_value(pod).unwrap();
        self.index.apply_pod(&pod);
        self.pods.push(pod);
    }

    /// Adds (or replaces) a Ready regular node with `taints`.
    fn node(&mut self, name: &str, cpu: &str, memory: &str, taints: Value) {
        self.index.apply_node(
            &serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"taints": taints},
                "status": {"allocatable": {"cpu": cpu, "memory": memory},
                    "conditions": [{"type": "Ready", "status": "True"}]}
            }))
            .unwrap(),
        );
    }

    fn remove(&mut self, name: &str) {
        self.pods
            .retain(|p| p.metadata.name.as_deref() != Some(name));
        self.index.delete_pod(&format!("uid-{name}"));
    }

    fn plan(&self, state: &mut ControllerState, now_ms: i64) -> Vec<Action> {
        let views: Vec<PodView> = self
            .pods
            .iter()
            .filter_map(|p| PodView::from_pod(p, &self.index, ProviderChoice::Fargate))
            .collect();
        plan(
            &PlanInput {
                index: &self.index,
                pods: &views,
                config: &self.config,
                now_ms,
                backfill: &self.backfill,
            },
            state,
        )
    }
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

fn evictions(actions: &[Action]) -> Vec<(&str, EvictionCause)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Evict { pod, cause, .. } => Some((pod.name.as_str(), *cause)),
            _ => None,
        })
        .collect()
}

/// 2 local pods on an 8-core node, 2 burst pods; utilization 25 %.
fn idle_with_burst() -> Cluster {
    let mut cluster = Cluster::new("8", 4, json!({}));
    cluster.pod("l1", Some("a"), "1", T0, json!({}));
    cluster.pod("l2", Some("a"), "1", T0, json!({}));
    cluster.pod("b1", Some("vk"), "1", T0, json!({}));
    cluster.pod("b2", Some("vk"), "2", T0 + 1000, json!({}));
    cluster
}

#[test]
fn rebalance_waits_for_the_cooldown_then_evicts_the_costliest() {
    let cluster = idle_with_burst();
    let mut state = ControllerState::default();
    let start = T0 + 10 * MIN;
    assert!(evictions(&cluster.plan(&mut state, start)).is_empty());
    assert!(evictions(&cluster.plan(&mut state, start + 59_000)).is_empty());
    let actions = cluster.plan(&mut state, start + 60_000);
    assert_eq!(evictions(&actions), vec![("b2", EvictionCause::Rebalance)]);
}

#[test]
fn rebalance_forgets_the_cooldown_when_utilization_rises() {
    let mut cluster = idle_with_burst();
    let mut state = ControllerState::default();
    let start = T0 + 10 * MIN;
    cluster.plan(&mut state, start);
    // Utilization above 0.6 for one pass restarts the cooldown.
    cluster.pod("hog", Some("a"), "4", T0, json!({}));
    cluster.plan(&mut state, start + 30_000);
    cluster.remove("hog");
    assert!(evictions(&cluster.plan(&mut state, start + 61_000)).is_empty());
    assert!(evictions(&cluster.plan(&mut state, start + 120_000)).is_empty());
    let later = cluster.plan(&mut state, start + 121_000);
    assert_eq!(evictions(&later).len(), 1);
}

#[test]
fn rebalance_skips_young_pods_and_pods_whose_replacement_would_burst() {
    // Utilization has been low for ten minutes, but the burst pod is 30 s old.
    let mut young = Cluster::new("8", 2, json!({}));
    young.pod("l1", Some("a"), "1", T0, json!({}));
    young.pod("b1", Some("vk"), "1", T0 + 10 * MIN, json!({}));
    let mut state = ControllerState::default();
    young.plan(&mut state, T0);
    assert!(evictions(&young.plan(&mut state, T0 + 10 * MIN + 30_000)).is_empty());
    assert_eq!(evictions(&young.plan(&mut state, T0 + 11 * MIN)).len(), 1);

    // max-local 2: a replacement would burst again, so nothing moves.
    let mut capped = Cluster::new("8", 4, json!({"spillway.io/max-local": "2"}));
    capped.pod("l1", Some("a"), "1", T0, json!({}));
    capped.pod("l2", Some("a"), "1", T0, json!({}));
    capped.pod("b1", Some("vk"), "1", T0, json!({}));
    let mut state = ControllerState::default();
    capped.plan(&mut state, T0 + 10 * MIN);
    assert!(evictions(&capped.plan(&mut state, T0 + 20 * MIN)).is_empty());
}

#[test]
fn rebalance_needs_a_node_with_room_and_no_pressure_with_the_pod() {
    // 4-core node, 2 cores used (50 % < 0.6): a 2-core pod fits but would bring the
    // cluster to 100 % ≥ 0.85, so the decision says capacity: no eviction.
    let mut cluster = Cluster::new("4", 3, json!({}));
    cluster.pod("l1", Some("a"), "2", T0, json!({}));
    cluster.pod("b1", Some("vk"), "2", T0, json!({}));
    let mut state = ControllerState::default();
    cluster.plan(&mut state, T0 + 10 * MIN);
    assert!(evictions(&cluster.plan(&mut state, T0 + 20 * MIN)).is_empty());
    // A node tainted against the pod has no room for it either.
    let mut tainted = Cluster::new("8", 3, json!({}));
    tainted.node(
        "a",
        "8",
        "64Gi",
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
    );
    tainted.pod("b1", Some("vk"), "1", T0, json!({}));
    let mut state = ControllerState::default();
    tainted.plan(&mut state, T0 + 10 * MIN);
    assert!(evictions(&tainted.plan(&mut state, T0 + 20 * MIN)).is_empty());
}

#[test]
fn one_workload_step_at_a_time_and_the_rate_limit() {
    let mut cluster = idle_with_burst();
    let mut state = ControllerState::default();
    let start = T0 + 10 * MIN;
    cluster.plan(&mut state, start);
    let first = cluster.plan(&mut state, start + MIN);
    assert_eq!(evictions(&first), vec![("b2", EvictionCause::Rebalance)]);
    state.evicted("ns/web", "uid-b2", EvictionCause::Rebalance, start + MIN);
    // Until b2 is gone and its replacement runs Ready, b1 waits.
    assert!(evictions(&cluster.plan(&mut state, start + MIN + 5000)).is_empty());
    cluster.remove("b2");
    cluster.pod(
        "r1",
        Some("a"),
        "2",
        start + MIN + 6000,
        json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
    );
    assert!(evictions(&cluster.plan(&mut state, start + MIN + 7000)).is_empty());
    cluster.remove("r1");
    cluster.pod("r1", Some("a"), "2", start + MIN + 6000, json!({}));
    let next = cluster.plan(&mut state, start + MIN + 8000);
    assert_eq!(evictions(&next), vec![("b1", EvictionCause::Rebalance)]);

    // maxEvictionsPerMinute: 1 holds the next eviction for a minute.
    let mut limited = idle_with_burst();
    limited.config.rebalance.max_evictions_per_minute = 1;
    let mut state = ControllerState::default();
    limited.plan(&mut state, start);
    state.evicted("ns/other", "x", EvictionCause::Rebalance, start + MIN);
    assert!(evictions(&limited.plan(&mut state, start + MIN + 1000)).is_empty());
    assert_eq!(
        evictions(&limited.plan(&mut state, start + 2 * MIN)).len(),
        1
    );
}

#[test]
fn a_refused_eviction_leaves_the_pod_alone_for_a_while() {
    let cluster = idle_with_burst();
    let mut state = ControllerState::default();
    let start = T0 + 10 * MIN;
    cluster.plan(&mut state, start);
    assert_eq!(
        evictions(&cluster.plan(&mut state, start + MIN)),
        vec![("b2", EvictionCause::Rebalance)]
    );
    state.eviction_refused("uid-b2", start + MIN);
    // The next candidate is tried instead, and b2 again once the back-off ran out.
    assert_eq!(
        evictions(&cluster.plan(&mut state, start + MIN + 1000)),
        vec![("b1", EvictionCause::Rebalance)]
    );
    state.eviction_refused("uid-b1", start + MIN + 1000);
    assert!(evictions(&cluster.plan(&mut state, start + MIN + 2000)).is_empty());
    assert_eq!(
        evictions(&cluster.plan(&mut state, start + MIN + REFUSED_BACKOFF_MS)),
        vec![("b2", EvictionCause::Rebalance)]
    );
}

#[test]
fn burst_pods_get_the_low_deletion_cost_and_local_pods_keep_theirs() {
    let mut cluster = Cluster::new("8", 3, json!({}));
    cluster.pod(
        "l1",
        Some("a"),
        "1",
        T0,
        json!({"metadata": {"annotations": {keys::POD_DELETION_COST: "50"}}}),
    );
    cluster.pod(
        "b1",
        Some("vk"),
        "1",
        T0,
        json!({"metadata": {"annotations": {keys::POD_DELETION_COST: null}}}),
    );
    // Bound to the virtual node by hand or by a pending spill: labelled local.
    cluster.pod(
        "b2",
        Some("vk"),
        "1",
        T0,
        json!({"metadata": {"labels": {"spillway.io/placement": "local"}}}),
    );
    let mut state = ControllerState::default();
    let repairs: Vec<_> = cluster
        .plan(&mut state, T0)
        .into_iter()
        .filter_map(|a| match a {
            Action::MarkBurst {
                pod,
                label,
                deletion_cost,
            } => Some((pod.name, label, deletion_cost)),
            _ => None,
        })
        .collect();
    assert_eq!(
        repairs,
        vec![
            ("b1".to_string(), false, true),
            ("b2".to_string(), true, false)
        ]
    );
}

#[test]
fn overshoot_of_max_burst_evicts_the_newest_surplus_after_the_grace() {
    let mut cluster = Cluster::new("4", 4, json!({"spillway.io/max-burst": "1"}));
    cluster.pod("l1", Some("a"), "1", T0, json!({}));
    cluster.pod("l2", Some("a"), "1", T0, json!({}));
    cluster.pod("b1", Some("vk"), "1", T0, json!({}));
    cluster.pod("b2", Some("vk"), "1", T0 + 500, json!({}));
    let mut state = ControllerState::default();
    assert!(evictions(&cluster.plan(&mut state, T0 + 1000)).is_empty());
    let actions = cluster.plan(&mut state, T0 + 1000 + OVERSHOOT_GRACE_MS);
    assert_eq!(evictions(&actions), vec![("b2", EvictionCause::Overshoot)]);
}

#[test]
fn overshoot_of_max_local_evicts_only_when_the_replacement_would_burst() {
    let mut cluster = Cluster::new("16", 3, json!({"spillway.io/max-local": "1"}));
    cluster.pod("l1", Some("a"), "1", T0, json!({}));
    cluster.pod("l2", Some("a"), "1", T0 + 100, json!({}));
    cluster.pod("l3", Some("a"), "1", T0 + 200, json!({}));
    let mut state = ControllerState::default();
    cluster.plan(&mut state, T0 + 1000);
    let actions = cluster.plan(&mut state, T0 + 1000 + OVERSHOOT_GRACE_MS);
    // One pod per workload until its replacement is Ready, the newest first.
    assert_eq!(evictions(&actions), vec![("l3", EvictionCause::Overshoot)]);
    state.evicted("ns/web", "uid-l3", EvictionCause::Overshoot, T0 + 11_000);
    assert!(evictions(&cluster.plan(&mut state, T0 + 30_000)).is_empty());
    // With max-burst 0 the replacement would stay local: nothing to gain.
    let mut capped = Cluster::new(
        "16",
        3,
        json!({"spillway.io/max-local": "1", "spillway.io/max-burst": "0"}),
    );
    capped.pod("l1", Some("a"), "1", T0, json!({}));
    capped.pod("l2", Some("a"), "1", T0 + 100, json!({}));
    capped.pod("l3", Some("a"), "1", T0 + 200, json!({}));
    let mut state = ControllerState::default();
    capped.plan(&mut state, T0 + 1000);
    assert!(evictions(&capped.plan(&mut state, T0 + 1000 + OVERSHOOT_GRACE_MS)).is_empty());
}

#[test]
fn overshoot_correction_keeps_the_rebalance_limits_and_checks_the_replacement_can_run() {
    // Two surplus burst pods, but no regular node has room for a replacement: evicting
    // would only make a pod pend (or burst again).
    let mut full = Cluster::new("2", 3, json!({"spillway.io/max-burst": "1"}));
    full.pod("l1", Some("a"), "2", T0, json!({}));
    full.pod("b1", Some("vk"), "1", T0, json!({}));
    full.pod("b2", Some("vk"), "1", T0 + 500, json!({}));
    let mut state = ControllerState::default();
    full.plan(&mut state, T0 + 1000);
    assert!(evictions(&full.plan(&mut state, T0 + 1000 + OVERSHOOT_GRACE_MS)).is_empty());
    // Room, but the minute's evictions are spent (rebalance.maxEvictionsPerMinute 1).
    let mut cluster = Cluster::new("8", 3, json!({"spillway.io/max-burst": "1"}));
    cluster.config.rebalance.max_evictions_per_minute = 1;
    cluster.pod("l1", Some("a"), "1", T0, json!({}));
    cluster.pod("b1", Some("vk"), "1", T0, json!({}));
    cluster.pod("b2", Some("vk"), "1", T0 + 500, json!({}));
    let mut state = ControllerState::default();
    state.evicted("ns/other", "uid-x", EvictionCause::Rebalance, T0);
    state.settling.clear();
    cluster.plan(&mut state, T0 + 1000);
    assert!(evictions(&cluster.plan(&mut state, T0 + 1000 + OVERSHOOT_GRACE_MS)).is_empty());
    assert_eq!(
        evictions(&cluster.plan(&mut state, T0 + MIN + 1000)),
        vec![("b2", EvictionCause::Overshoot)]
    );
}

#[test]
fn no_overshoot_correction_in_the_middle_of_a_scale() {
    // 3 pods but the Deployment wants 2 with at most 1 burst: the ReplicaSet is about
    // to remove a burst pod by itself.
    let mut cluster = Cluster::new("8", 2, json!({"spillway.io/max-burst": "1"}));
    cluster.pod("l1", Some("a"), "1", T0, json!({}));
    cluster.pod("b1", Some("vk"), "1", T0, json!({}));
    cluster.pod("b2", Some("vk"), "1", T0, json!({}));
    let mut state = ControllerState::default();
    cluster.plan(&mut state, T0);
    assert!(evictions(&cluster.plan(&mut state, T0 + 5 * OVERSHOOT_GRACE_MS)).is_empty());
}

fn unschedulable(since_ms: i64) -> Value {
    json!({"spec": {"nodeName": null}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastTransitionTime": rfc3339(since_ms)}]}})
}

fn spills(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spill { pod, .. } => Some(pod.name.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn pending_pods_spill_after_the_delay_within_max_burst() {
    let mut cluster = Cluster::new("2", 4, json!({"spillway.io/max-burst": "2"}));
    cluster.pod("b1", Some("vk"), "1", T0, json!({}));
    cluster.pod("p1", None, "1", T0, unschedulable(T0 + 1000));
    cluster.pod("p2", None, "1", T0, unschedulable(T0 + 2000));
    let mut state = ControllerState::default();
    assert!(spills(&cluster.plan(&mut state, T0 + 30_000)).is_empty());
    // afterSeconds is 60: both waited long enough, but max-burst 2 leaves room for one.
    assert_eq!(spills(&cluster.plan(&mut state, T0 + 62_000)), vec!["p1"]);
    // Once p1 carries the pending reason it counts against the cap.
    cluster.remove("p1");
    let mut spilled = unschedulable(T0 + 1000);
    merge(
        &mut spilled,
        json!({"metadata": {"labels": {"spillway.io/reason": "pending"}},
            "spec": {"tolerations": [{"key": keys::VIRTUAL_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}]}}),
    );
    cluster.pod("p1", None, "1", T0, spilled);
    assert!(spills(&cluster.plan(&mut state, T0 + 64_000)).is_empty());
}

#[test]
fn pending_spill_respects_the_budget_and_eligibility() {
    let mut cluster = Cluster::new("2", 4, json!({"spillway.io/max-usd-per-hour": "0.01"}));
    cluster.pod("p1", None, "1", T0, unschedulable(T0));
    let mut state = ControllerState::default();
    assert!(spills(&cluster.plan(&mut state, T0 + 5 * MIN)).is_empty());

    let mut cluster = Cluster::new("2", 4, json!({}));
    let mut host = unschedulable(T0);
    merge(&mut host, json!({"spec": {"hostNetwork": true}}));
    cluster.pod("p1", None, "1", T0, host);
    let mut state = ControllerState::default();
    assert!(spills(&cluster.plan(&mut state, T0 + 5 * MIN)).is_empty());
}

fn spill_providers(actions: &[Action]) -> Vec<(&str, Provider)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spill { pod, provider, .. } => Some((pod.name.as_str(), *provider)),
            _ => None,
        })
        .collect()
}

#[test]
fn pending_pods_spill_only_to_a_provider_that_can_take_them() {
    // The only virtual node (Fargate) is degraded: nothing spills, the pod stays
    // pending where an autoscaler can see it.
    let mut cluster = Cluster::new("2", 2, json!({"spillway.io/provider": "fargate,aci"}));
    let vnode = |name: &str, provider: &str, degraded: bool| {
        let taints = if degraded {
            json!([{"key": "spillway.io/provider-degraded", "value": provider, "effect": "NoSchedule"}])
        } else {
            json!([])
        };
        serde_json::from_value::<k8s_openapi::api::core::v1::Node>(json!({
            "metadata": {"name": name, "labels": {"type": "virtual-kubelet", "spillway.io/provider": provider}},
            "spec": {"taints": taints},
            "status": {"allocatable": {"cpu": "100", "memory": "400Gi", "pods": "100"},
                "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    };
    cluster.index.apply_node(&vnode("vk", "fargate", true));
    cluster.pod("p1", None, "1", T0, unschedulable(T0));
    let mut state = ControllerState::default();
    assert!(spills(&cluster.plan(&mut state, T0 + 5 * MIN)).is_empty());
    // The next provider in the workload's list has a usable node: the pod may use that
    // one (and only that one).
    cluster.index.apply_node(&vnode("vk-aci", "aci", false));
    assert_eq!(
        spill_providers(&cluster.plan(&mut state, T0 + 6 * MIN)),
        vec![("p1", Provider::Aci)]
    );
    // A pod whose own selector no virtual node meets never spills.
    let mut cluster = Cluster::new("2", 2, json!({}));
    let mut picky = unschedulable(T0);
    merge(
        &mut picky,
        json!({"spec": {"nodeSelector": {"disk": "ssd"}}}),
    );
    cluster.pod("p1", None, "1", T0, picky);
    let mut state = ControllerState::default();
    assert!(spills(&cluster.plan(&mut state, T0 + 5 * MIN)).is_empty());
}

#[test]
fn rebalance_leaves_a_burst_pod_no_regular_node_would_accept() {
    // Idle cluster, old burst pods, but the template asks for `disk: ssd` and node `a`
    // has no such label: evicting would only re-burst it.
    let mut cluster = Cluster::new("8", 2, json!({}));
    let ssd = json!({"spec": {"nodeSelector": {"disk": "ssd"}}});
    cluster.pod("l1", Some("a"), "1", T0, ssd.clone());
    cluster.pod("b1", Some("vk"), "1", T0, ssd);
    let mut state = ControllerState::default();
    cluster.plan(&mut state, T0 + 10 * MIN);
    assert!(evictions(&cluster.plan(&mut state, T0 + 12 * MIN)).is_empty());
    // A labelled node arrives: now it goes home.
    cluster.index.apply_node(
        &serde_json::from_value(json!({
            "metadata": {"name": "ssd-1", "labels": {"disk": "ssd"}},
            "status": {"allocatable": {"cpu": "8", "memory": "64Gi"},
                "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap(),
    );
    assert_eq!(
        evictions(&cluster.plan(&mut state, T0 + 13 * MIN)),
        vec![("b1", EvictionCause::Rebalance)]
    );
}

fn refused_since(ms: i64) -> Value {
    json!({"status": {"phase": "Pending", "conditions": [
        {"type": "spillway.io/ProviderRefused", "status": "True", "reason": "Unavailable",
         "lastTransitionTime": rfc3339(ms)}
    ]}})
}

fn failover_actions(actions: &[Action]) -> Vec<Action> {
    actions
        .iter()
        .filter(|a| {
            matches!(a, Action::ExcludeProviders { .. } | Action::FailOver { .. })
                || matches!(
                    a,
                    Action::Event {
                        reason: EventReason::ProviderFailover,
                        ..
                    }
                )
        })
        .cloned()
        .collect()
}

#[test]
fn a_pod_its_provider_keeps_refusing_is_failed_over_after_the_mark() {
    let mut cluster = Cluster::new("8", 3, json!({"spillway.io/provider": "fargate,aci"}));
    cluster.pod("l1", Some("a"), "1", T0, json!({}));
    cluster.pod("b1", Some("vk"), "1", T0, refused_since(T0));
    cluster.pod("b2", Some("vk"), "1", T0, refused_since(T0 + 20_000));
    let mut state = ControllerState::default();
    // Refused for 10 s: within failover.afterSeconds (30).
    assert!(failover_actions(&cluster.plan(&mut state, T0 + 10_000)).is_empty());
    // 31 s: the Deployment is marked first (one Event), nothing evicted yet, so the
    // webhook knows before any replacement is created.
    let now = T0 + 31_000;
    let actions = failover_actions(&cluster.plan(&mut state, now));
    let until_s = (now + 300_000) / 1000;
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(
        actions[0],
        Action::ExcludeProviders {
            workload: "ns/web".into(),
            value: format!("fargate={until_s}"),
        }
    );
    assert!(
        matches!(&actions[1], Action::Event { reason: EventReason::ProviderFailover, warning: true, note, .. } if note.contains("fargate"))
    );
    // The mark is in force: the pod refused long enough goes; its replacement goes to
    // ACI where a node can take it, else local. The younger one waits its turn.
    cluster.index.apply_deployment(
        &serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "d1", "annotations": {
                "spillway.io/burst": "true", "spillway.io/provider": "fargate,aci",
                "spillway.io/failover": format!("fargate={until_s}")}},
            "spec": {"replicas": 3, "selector": {}, "template": {}}
        }))
        .unwrap(),
    );
    let fail_over = |actions: Vec<Action>| -> Vec<(String, Provider, String)> {
        actions
            .into_iter()
            .filter_map(|a| match a {
                Action::FailOver { pod, from, to, .. } => Some((pod.name, from, to)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        fail_over(cluster.plan(&mut state, T0 + 33_000)),
        vec![("b1".into(), Provider::Fargate, "local".into())]
    );
    cluster.index.apply_node(
        &serde_json::from_value(json!({
            "metadata": {"name": "vk-aci", "labels": {"type": "virtual-kubelet", "spillway.io/provider": "aci"}},
            "status": {"allocatable": {"cpu": "100", "memory": "400Gi", "pods": "100"},
                "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap(),
    );
    assert_eq!(
        fail_over(cluster.plan(&mut state, T0 + 51_000)),
        vec![
            ("b1".into(), Provider::Fargate, "aci".into()),
            ("b2".into(), Provider::Fargate, "aci".into())
        ]
    );
    // A running burst pod is never failed over, whatever its old conditions said.
    let mut running = Cluster::new("8", 1, json!({}));
    running.pod("b1", Some("vk"), "1", T0, json!({}));
    assert!(failover_actions(&running.plan(&mut ControllerState::default(), T0 + MIN)).is_empty());
}

#[test]
fn pods_the_webhook_never_saw_are_adopted_where_they_are_and_a_pending_one_spills() {
    let mut cluster = Cluster::new("2", 4, json!({}));
    let unlabelled = json!({"metadata": {"labels": {"spillway.io/placement": null}}});
    cluster.pod("running", Some("a"), "1", T0, unlabelled.clone());
    cluster.pod("on-vk", Some("vk"), "1", T0, unlabelled.clone());
    let mut pending = unschedulable(T0);
    merge(&mut pending, unlabelled);
    cluster.pod("pending", None, "1", T0, pending);
    cluster.pod("decided", Some("a"), "1", T0, json!({}));
    let mut state = ControllerState::default();
    let actions = cluster.plan(&mut state, T0 + 5 * MIN);
    let mut adopted: Vec<(&str, bool)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::AdoptUnadmitted { pod, burst, .. } => Some((pod.name.as_str(), *burst)),
            _ => None,
        })
        .collect();
    adopted.sort();
    assert_eq!(
        adopted,
        vec![("on-vk", true), ("pending", false), ("running", false)]
    );
    // The pending one, unschedulable past pendingSpill.afterSeconds, spills in the same
    // pass (after its adoption); the burst one gets its deletion cost from the adoption,
    // not a second patch.
    assert_eq!(spills(&actions), vec!["pending"]);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::MarkBurst { pod, .. } if pod.name == "on-vk"))
    );
    let adopt_at = actions
        .iter()
        .position(|a| matches!(a, Action::AdoptUnadmitted { pod, .. } if pod.name == "pending"));
    let spill_at = actions
        .iter()
        .position(|a| matches!(a, Action::Spill { .. }));
    assert!(adopt_at < spill_at);
}

#[test]
fn events_follow_changes_not_pods() {
    let mut cluster = Cluster::new("8", 4, json!({}));
    cluster.pod("l1", Some("a"), "1", T0, json!({}));
    let mut state = ControllerState::default();
    let reasons = |actions: Vec<Action>| -> Vec<EventReason> {
        actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Event { reason, .. } => Some(reason),
                _ => None,
            })
            .collect()
    };
    assert!(reasons(cluster.plan(&mut state, T0)).is_empty());
    cluster.pod("b1", Some("vk"), "1", T0, json!({}));
    cluster.pod("b2", Some("vk"), "1", T0, json!({}));
    assert_eq!(
        reasons(cluster.plan(&mut state, T0 + 1000)),
        vec![EventReason::BurstStarted]
    );
    // Still bursting: nothing new to say.
    assert!(reasons(cluster.plan(&mut state, T0 + 2000)).is_empty());
    cluster.pod(
        "l2",
        Some("a"),
        "1",
        T0,
        json!({"metadata": {"labels": {"spillway.io/reason": "max-burst"}}}),
    );
    assert_eq!(
        reasons(cluster.plan(&mut state, T0 + 3000)),
        vec![EventReason::BurstCapped]
    );
}

#[test]
fn an_annotation_spillway_cannot_read_is_an_event_once_per_change() {
    let mut cluster = Cluster::new("8", 2, json!({"spillway.io/max-burst": "lots"}));
    cluster.pod("l1", Some("a"), "1", T0, json!({}));
    let mut state = ControllerState::default();
    let first = cluster.plan(&mut state, T0);
    let notes: Vec<&str> = first
        .iter()
        .filter_map(|a| match a {
            Action::Event {
                reason: EventReason::InvalidAnnotation,
                note,
                warning: true,
                ..
            } => Some(note.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(notes.len(), 1, "{first:?}");
    assert!(notes[0].contains("spillway.io/max-burst"), "{}", notes[0]);
    assert!(event_reasons(&cluster.plan(&mut state, T0 + 1000)).is_empty());
}

#[test]
fn a_workload_entirely_on_the_virtual_node_comes_back_too() {
    let mut cluster = Cluster::new("8", 3, json!({}));
    for name in ["b1", "b2", "b3"] {
        cluster.pod(name, Some("vk"), "100m", T0, json!({}));
    }
    let mut state = ControllerState::default();
    cluster.plan(&mut state, T0 + MIN);
    assert_eq!(evictions(&cluster.plan(&mut state, T0 + 3 * MIN)).len(), 1);
}

// Backfill: burst is a bridge.

/// A full 2-core node (two local 1-core pods) and two burst pods of `web` burst for
/// `reason`, created at T0.
fn full_with_burst(annotations: Value, reason: &str) -> Cluster {
    let mut cluster = Cluster::new("2", 4, annotations);
    cluster.pod("l1", Some("a"), "1", T0, json!({}));
    cluster.pod("l2", Some("a"), "1", T0, json!({}));
    let labels = json!({"metadata": {"labels": {"spillway.io/reason": reason}}});
    cluster.pod("b1", Some("vk"), "1", T0, labels.clone());
    cluster.pod("b2", Some("vk"), "1", T0 + 1000, labels);
    cluster
}

/// [`full_with_burst`] whose request for both burst replicas stands: two placeholders,
/// and the Deployment's mark.
fn backfilled() -> Cluster {
    let mut cluster = full_with_burst(json!({"spillway.io/backfill": "2"}), "capacity");
    cluster
        .backfill
        .existing
        .insert(("ns/web".into(), BackfillKind::Placeholders), 2);
    cluster
}

fn backfill_requests(actions: &[Action]) -> Vec<(BackfillKind, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::RequestBackfill { kind, replicas, .. } => Some((*kind, *replicas)),
            _ => None,
        })
        .collect()
}

fn withdrawals(actions: &[Action]) -> Vec<BackfillKind> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::WithdrawBackfill { kind, .. } => Some(*kind),
            _ => None,
        })
        .collect()
}

fn event_reasons(actions: &[Action]) -> Vec<EventReason> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

#[test]
fn backfill_is_requested_once_the_burst_has_lasted_after_seconds() {
    let cluster = full_with_burst(json!({}), "capacity");
    let mut state = ControllerState::default();
    // 59 s into the burst: a short spike buys nothing.
    assert!(backfill_requests(&cluster.plan(&mut state, T0 + 59_000)).is_empty());
    let actions = cluster.plan(&mut state, T0 + 60_000);
    // No CapacityBuffer CRD served: `auto` falls back to placeholders, one per replica.
    assert_eq!(
        backfill_requests(&actions),
        vec![(BackfillKind::Placeholders, 2)]
    );
    assert!(event_reasons(&actions).contains(&EventReason::BackfillRequested));
    let Some(Action::RequestBackfill { needs, uid, .. }) = actions
        .iter()
        .find(|a| matches!(a, Action::RequestBackfill { .. }))
    else {
        unreachable!()
    };
    assert_eq!((needs.cpu_millis, uid.as_str()), (1000, "d1"));
    assert_eq!(state.backfill_requested(), (2000, 2 << 30));

    let mut served = full_with_burst(json!({}), "no-fit");
    served.backfill.capacity_buffer_served = true;
    let actions = served.plan(&mut ControllerState::default(), T0 + 61_000);
    assert_eq!(
        backfill_requests(&actions),
        vec![(BackfillKind::CapacityBuffer, 2)]
    );
}

#[test]
fn no_backfill_for_pods_burst_by_policy_or_with_backfill_off() {
    for reason in ["max-local", "hpa"] {
        let cluster = full_with_burst(json!({}), reason);
        let actions = cluster.plan(&mut ControllerState::default(), T0 + 10 * MIN);
        assert!(backfill_requests(&actions).is_empty(), "{reason}");
    }
    let mut off = full_with_burst(json!({}), "capacity");
    off.config.backfill.mode = spillway_common::config::BackfillMode::Off;
    off.backfill
        .existing
        .insert(("ns/web".into(), BackfillKind::Placeholders), 2);
    let actions = off.plan(&mut ControllerState::default(), T0 + 10 * MIN);
    assert!(backfill_requests(&actions).is_empty());
    // Turned off while a request stood: it is withdrawn.
    assert_eq!(withdrawals(&actions), vec![BackfillKind::Placeholders]);
}

#[test]
fn backfill_is_capped_across_the_cluster() {
    let mut cluster = full_with_burst(json!({}), "capacity");
    cluster.config.backfill.max_cpu = Some("1500m".into());
    let actions = cluster.plan(&mut ControllerState::default(), T0 + 2 * MIN);
    assert_eq!(
        backfill_requests(&actions),
        vec![(BackfillKind::Placeholders, 1)]
    );
    cluster.config.backfill.max_cpu = None;
    cluster.config.backfill.max_memory = Some("1Gi".into());
    cluster.config.backfill.max_cpu = Some("10".into());
    let actions = cluster.plan(&mut ControllerState::default(), T0 + 2 * MIN);
    assert_eq!(
        backfill_requests(&actions),
        vec![(BackfillKind::Placeholders, 1)]
    );
}

#[test]
fn a_backfilled_burst_pod_comes_home_as_soon_as_a_node_fits_it() {
    // The Deployment carries the mark: its request stands.
    let mut cluster = backfilled();
    let mut state = ControllerState::default();
    // Still full: nothing moves, and the request is left as it is.
    let actions = cluster.plan(&mut state, T0 + 2 * MIN);
    assert!(evictions(&actions).is_empty());
    assert!(backfill_requests(&actions).is_empty(), "{actions:?}");
    // The autoscaler's node arrives (empty: placeholders hold no room). Utilization is
    // 2/4 cores; no cooldown of low utilization is waited for.
    cluster.node("karpenter-1", "2", "8Gi", json!([]));
    let actions = cluster.plan(&mut state, T0 + 2 * MIN + 2000);
    // Same cost: the oldest first.
    assert_eq!(evictions(&actions), vec![("b1", EvictionCause::Rebalance)]);
}

#[test]
fn the_request_shrinks_as_replicas_come_home_and_the_mark_goes_when_settled() {
    let mut cluster = backfilled();
    cluster.remove("b2");
    let mut state = ControllerState::default();
    let actions = cluster.plan(&mut state, T0 + 3 * MIN);
    assert_eq!(
        backfill_requests(&actions),
        vec![(BackfillKind::Placeholders, 1)]
    );
    // The last one was evicted; its replacement is not Ready yet: the request goes, the
    // mark stays so the replacement is admitted local.
    state.evicted("ns/web", "uid-b1", EvictionCause::Rebalance, T0 + 3 * MIN);
    cluster.remove("b1");
    cluster.pod(
        "home",
        Some("a"),
        "1",
        T0 + 3 * MIN,
        json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
    );
    let actions = cluster.plan(&mut state, T0 + 3 * MIN + 2000);
    assert_eq!(withdrawals(&actions), vec![BackfillKind::Placeholders]);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::UnmarkBackfill { .. }))
    );
    // Ready: the mark goes, with one BackfillSatisfied.
    cluster.backfill.existing.clear();
    cluster.remove("home");
    cluster.pod("home", Some("a"), "1", T0 + 3 * MIN, json!({}));
    cluster.pod("l3", Some("a"), "0", T0, json!({}));
    let actions = cluster.plan(&mut state, T0 + 4 * MIN);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::UnmarkBackfill { .. }))
    );
    assert!(event_reasons(&actions).contains(&EventReason::BackfillSatisfied));
}

#[test]
fn a_restart_adopts_standing_requests_and_removes_orphans() {
    let mut cluster = backfilled();
    cluster
        .backfill
        .existing
        .insert(("ns/gone".into(), BackfillKind::CapacityBuffer), 3);
    // A new leader's first pass: web's request is adopted as it is (no request, no
    // Event), the one of a Deployment that no longer exists is withdrawn.
    let actions = cluster.plan(&mut ControllerState::default(), T0 + 5_000);
    assert!(backfill_requests(&actions).is_empty(), "{actions:?}");
    assert!(!event_reasons(&actions).contains(&EventReason::BackfillRequested));
    assert_eq!(
        actions
            .iter()
            .filter_map(|a| match a {
                Action::WithdrawBackfill { workload, kind } => Some((workload.as_str(), *kind)),
                _ => None,
            })
            .collect::<Vec<_>>(),
        vec![("ns/gone", BackfillKind::CapacityBuffer)]
    );
}

#[test]
fn overshoot_never_evicts_a_pod_karpenter_is_disrupting() {
    let mut cluster = Cluster::new("8", 2, json!({"spillway.io/max-local": "1"}));
    cluster.node(
        "a",
        "8",
        "64Gi",
        json!([{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]),
    );
    cluster.pod("l1", Some("a"), "1", T0, json!({}));
    cluster.pod("l2", Some("a"), "1", T0 + 1000, json!({}));
    let mut state = ControllerState::default();
    cluster.plan(&mut state, T0 + MIN);
    assert!(evictions(&cluster.plan(&mut state, T0 + 2 * MIN)).is_empty());
}

#[test]
fn a_pods_own_annotations_never_set_its_workloads_policy() {
    // The Deployment (and its template) set no cap; the newest pod says max-burst 0.
    let mut cluster = Cluster::new("2", 4, json!({}));
    let mut says_no_burst = unschedulable(T0);
    merge(
        &mut says_no_burst,
        json!({"metadata": {"annotations": {"spillway.io/max-burst": "0"}}}),
    );
    cluster.pod("p1", None, "1", T0, says_no_burst);
    let mut state = ControllerState::default();
    assert_eq!(spills(&cluster.plan(&mut state, T0 + 62_000)), vec!["p1"]);
}
