//! The JSON Patch (RFC 6902) that carries a decision onto a pod (DESIGN §2–3). Only `add`
//! operations on what is missing: applying it twice changes nothing, and nothing the user
//! wrote is removed, replaced or reordered.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, Pod, Toleration};
use serde_json::{Value, json};
use spillway_common::config::Provider;
use spillway_common::keys;

use spillway_cluster::decision::{Placement, Reason};
use spillway_cluster::index::tolerates;

/// What to write on the pod.
#[derive(Clone, Copy, Debug)]
pub struct Mutation<'a> {
    /// Where it goes.
    pub placement: Placement,
    /// Why.
    pub reason: Reason,
    /// The `spillway.io/decision` value: the deciding review's UID, sealed
    /// ([`crate::decision_seal`]).
    pub decision: &'a str,
    /// For a burst: tolerations of the operator's own taints on the provider's virtual
    /// nodes ([`ClusterIndex::virtual_node_tolerations`]), added where the pod lacks them.
    ///
    /// [`ClusterIndex::virtual_node_tolerations`]: spillway_cluster::index::ClusterIndex::virtual_node_tolerations
    pub tolerations: &'a [Toleration],
}

/// Escapes one JSON Pointer token (RFC 6901).
fn token(raw: &str) -> String {
    raw.replace('~', "~0").replace('/', "~1")
}

fn add(path: String, value: Value) -> Value {
    json!({"op": "add", "path": path, "value": value})
}

/// Adds every `(key, value)` missing from `existing` under `/metadata/<field>`; Spillway's
/// own keys (`spillway.io/`) are set even when present with another value (a fresh
/// decision overwrites what a template carried; an `add` of an existing member replaces
/// it), while others the user set (a deletion cost) are kept.
fn add_map_entries(
    ops: &mut Vec<Value>,
    field: &str,
    existing: Option<&BTreeMap<String, String>>,
    wanted: &[(&str, &str)],
) {
    match existing {
        None => {
            let map: serde_json::Map<String, Value> = wanted
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
                .collect();
            ops.push(add(format!("/metadata/{field}"), Value::Object(map)));
        }
        Some(existing) => {
            for (key, value) in wanted {
                let stale = match existing.get(*key) {
                    None => true,
                    Some(current) => key.starts_with("spillway.io/") && current != value,
                };
                if stale {
                    ops.push(add(
                        format!("/metadata/{field}/{}", token(key)),
                        Value::from(*value),
                    ));
                }
            }
        }
    }
}

/// The toleration for a provider's virtual-node taint.
pub fn virtual_node_toleration(provider: Provider) -> Toleration {
    Toleration {
        key: Some(keys::VIRTUAL_NODE_TAINT.to_owned()),
        operator: Some("Equal".to_owned()),
        value: Some(provider.as_str().to_owned()),
        effect: Some("NoSchedule".to_owned()),
        ..Toleration::default()
    }
}

fn tolerates_virtual_node(t: &Toleration, provider: Provider) -> bool {
    let key_ok = t.key.as_deref() == Some(keys::VIRTUAL_NODE_TAINT)
        || (t.key.as_deref().unwrap_or("").is_empty() && t.operator.as_deref() == Some("Exists"));
    let value_ok =
        t.operator.as_deref() == Some("Exists") || t.value.as_deref() == Some(provider.as_str());
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == "NoSchedule");
    key_ok && value_ok && effect_ok
}

/// The node-selector requirements that pin a pod to a provider's virtual node.
pub fn virtual_node_requirements(provider: Provider) -> [NodeSelectorRequirement; 2] {
    [
        NodeSelectorRequirement {
            key: keys::NODE_TYPE_LABEL.to_owned(),
            operator: "In".to_owned(),
            values: Some(vec![keys::NODE_TYPE_VIRTUAL.to_owned()]),
        },
        NodeSelectorRequirement {
            key: keys::NODE_PROVIDER_LABEL.to_owned(),
            operator: "In".to_owned(),
            values: Some(vec![provider.as_str().to_owned()]),
        },
    ]
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn affinity_ops(ops: &mut Vec<Value>, pod: &Pod, provider: Provider) {
    let wanted = virtual_node_requirements(provider);
    let fresh_term = || json!({"matchExpressions": to_value(&wanted)});
    let spec = pod.spec.as_ref();
    let Some(affinity) = spec.and_then(|s| s.affinity.as_ref()) else {
        ops.push(add(
            "/spec/affinity".into(),
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [fresh_term()]}}}),
        ));
        return;
    };
    let Some(node_affinity) = affinity.node_affinity.as_ref() else {
        ops.push(add(
            "/spec/affinity/nodeAffinity".into(),
            json!({"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [fresh_term()]}}),
        ));
        return;
    };
    let base = "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution";
    let Some(required) = node_affinity
        .required_during_scheduling_ignored_during_execution
        .as_ref()
    else {
        ops.push(add(
            base.into(),
            json!({"nodeSelectorTerms": [fresh_term()]}),
        ));
        return;
    };
    if required.node_selector_terms.is_empty() {
        ops.push(add(format!("{base}/nodeSelectorTerms/-"), fresh_term()));
        return;
    }
    // Terms are ORed, so every one of them must pin the pod to the virtual node.
    for (i, term) in required.node_selector_terms.iter().enumerate() {
        let term_path = format!("{base}/nodeSelectorTerms/{i}/matchExpressions");
        match term.match_expressions.as_ref() {
            None => ops.push(add(term_path, to_value(&wanted))),
            Some(existing) => {
                for requirement in &wanted {
                    if !existing.contains(requirement) {
                        ops.push(add(format!("{term_path}/-"), to_value(requirement)));
                    }
                }
            }
        }
    }
}

/// The shadow-mode patch: on a pod the webhook would burst, only the
/// `spillway.io/would-burst` annotation (`<provider>: <reason>`); nothing on a pod it
/// would keep local. Placement, tolerations and affinity are left alone.
pub fn shadow(pod: &Pod, placement: Placement, reason: Reason) -> Vec<Value> {
    let Placement::Burst(provider) = placement else {
        return Vec::new();
    };
    let value = format!("{provider}: {}", reason.as_str());
    let mut ops = Vec::new();
    add_map_entries(
        &mut ops,
        "annotations",
        pod.metadata.annotations.as_ref(),
        &[(keys::WOULD_BURST, &value)],
    );
    ops
}

/// Builds the patch for `pod`.
pub fn build(pod: &Pod, mutation: &Mutation<'_>) -> Vec<Value> {
    let mut ops = Vec::new();
    add_map_entries(
        &mut ops,
        "labels",
        pod.metadata.labels.as_ref(),
        &[
            (keys::PLACEMENT, mutation.placement.as_str()),
            (keys::REASON, mutation.reason.as_str()),
        ],
    );
    let mut annotations = vec![(keys::DECISION, mutation.decision)];
    if let Placement::Burst(_) = mutation.placement {
        annotations.push((keys::POD_DELETION_COST, keys::BURST_DELETION_COST));
    }
    add_map_entries(
        &mut ops,
        "annotations",
        pod.metadata.annotations.as_ref(),
        &annotations,
    );
    if let Placement::Burst(provider) = mutation.placement {
        let existing: &[Toleration] = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or(&[]);
        let mut missing = Vec::new();
        if !existing.iter().any(|t| tolerates_virtual_node(t, provider)) {
            missing.push(to_value(&virtual_node_toleration(provider)));
        }
        for wanted in mutation.tolerations {
            if !tolerates(existing, wanted) {
                missing.push(to_value(wanted));
            }
        }
        let has_list = pod.spec.as_ref().is_some_and(|s| s.tolerations.is_some());
        if !has_list && !missing.is_empty() {
            ops.push(add("/spec/tolerations".into(), Value::Array(missing)));
        } else {
            for toleration in missing {
                ops.push(add("/spec/tolerations/-".into(), toleration));
            }
        }
        affinity_ops(&mut ops, pod, provider);
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(pod: &Value, ops: &[Value]) -> Value {
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.to_vec())).unwrap();
        let mut out = pod.clone();
        json_patch::patch(&mut out, &patch).unwrap();
        out
    }

    const BURST: Mutation<'static> = Mutation {
        placement: Placement::Burst(Provider::Fargate),
        reason: Reason::Capacity,
        decision: "req-1",
        tolerations: &[],
    };

    fn patch_twice(pod: Value, mutation: &Mutation<'_>) -> Value {
        let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
        let once = apply(&pod, &build(&typed, mutation));
        let typed_once: Pod = serde_json::from_value(once.clone()).unwrap();
        assert!(
            build(&typed_once, mutation).is_empty(),
            "second pass must add nothing"
        );
        once
    }

    #[test]
    fn shadow_mode_only_annotates_a_pod_it_would_burst() {
        let pod = json!({"metadata": {"name": "p", "annotations": {"team": "a"}},
                         "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
        let out = apply(
            &pod,
            &shadow(
                &typed,
                Placement::Burst(Provider::Fargate),
                Reason::Capacity,
            ),
        );
        assert_eq!(
            out,
            json!({"metadata": {"name": "p", "annotations": {"team": "a", "spillway.io/would-burst": "fargate: capacity"}},
                   "spec": {"containers": [{"name": "c", "image": "nginx"}]}})
        );
        assert!(shadow(&typed, Placement::Local, Reason::NoPressure).is_empty());
    }

    #[test]
    fn burst_on_bare_pod() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        let out = patch_twice(pod, &BURST);
        assert_eq!(
            out,
            json!({
                "metadata": {
                    "name": "p",
                    "labels": {"spillway.io/placement": "burst", "spillway.io/reason": "capacity"},
                    "annotations": {"spillway.io/decision": "req-1", "controller.kubernetes.io/pod-deletion-cost": "-1000"}
                },
                "spec": {
                    "containers": [{"name": "c", "image": "nginx"}],
                    "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Equal", "value": "fargate", "effect": "NoSchedule"}],
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [
                            {"key": "type", "operator": "In", "values": ["virtual-kubelet"]},
                            {"key": "spillway.io/provider", "operator": "In", "values": ["fargate"]}
                        ]}
                    ]}}}
                }
            })
        );
    }

    #[test]
    fn merges_into_every_term_and_keeps_user_content() {
        let pod = json!({
            "metadata": {"name": "p", "labels": {"app": "web"}, "annotations": {"note": "x"}},
            "spec": {
                "containers": [{"name": "c"}],
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                "affinity": {
                    "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []},
                    "nodeAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}],
                        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "arch", "operator": "In", "values": ["amd64"]}]},
                            {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}
                        ]}
                    }
                }
            }
        });
        let out = patch_twice(pod, &BURST);
        assert_eq!(out["metadata"]["labels"]["app"], "web");
        assert_eq!(out["metadata"]["annotations"]["note"], "x");
        assert_eq!(out["spec"]["tolerations"][0]["key"], "dedicated");
        assert_eq!(
            out["spec"]["tolerations"][1]["key"],
            "virtual-kubelet.io/provider"
        );
        let terms = &out["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"];
        assert_eq!(terms[0]["matchExpressions"][0]["key"], "arch");
        assert_eq!(terms[0]["matchExpressions"][1]["key"], "type");
        assert_eq!(
            terms[0]["matchExpressions"][2]["key"],
            "spillway.io/provider"
        );
        assert_eq!(terms[1]["matchFields"][0]["key"], "metadata.name");
        assert_eq!(terms[1]["matchExpressions"][0]["key"], "type");
        assert_eq!(
            out["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
                [0]["weight"],
            1
        );
        assert!(out["spec"]["affinity"]["podAntiAffinity"].is_object());
    }

    #[test]
    fn burst_pods_tolerate_the_operators_virtual_node_taints_once() {
        let operator_taints: Vec<Toleration> = serde_json::from_value(json!([
            {"key": "example.com/burst", "operator": "Equal", "value": "only", "effect": "NoSchedule"},
            {"key": "dedicated", "operator": "Equal", "value": "", "effect": "NoExecute"}
        ]))
        .unwrap();
        let mutation = Mutation {
            tolerations: &operator_taints,
            ..BURST
        };
        let bare = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
        let out = patch_twice(bare, &mutation);
        let keys: Vec<&str> = out["spec"]["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["key"].as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "virtual-kubelet.io/provider",
                "example.com/burst",
                "dedicated"
            ]
        );
        // A toleration the pod has already covers its taint: nothing twice.
        let tolerant = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}],
            "tolerations": [{"key": "dedicated", "operator": "Exists"}]}});
        let out = patch_twice(tolerant, &mutation);
        let keys: Vec<&str> = out["spec"]["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["key"].as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "dedicated",
                "virtual-kubelet.io/provider",
                "example.com/burst"
            ]
        );
    }

    #[test]
    fn local_pod_only_gets_labels() {
        let pod = json!({"metadata": {"name": "p", "labels": {"a/b~c": "1"}}, "spec": {"containers": [{"name": "c"}]}});
        let local = Mutation {
            placement: Placement::Local,
            reason: Reason::NoPressure,
            decision: "req-2",
            tolerations: &[],
        };
        let out = patch_twice(pod, &local);
        assert_eq!(out["metadata"]["labels"]["spillway.io/placement"], "local");
        assert_eq!(
            out["metadata"]["annotations"],
            json!({"spillway.io/decision": "req-2"})
        );
        assert!(out["spec"].get("tolerations").is_none());
        assert!(out["spec"].get("affinity").is_none());
    }

    #[test]
    fn existing_user_deletion_cost_is_kept() {
        let pod = json!({"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "5"}}, "spec": {"containers": []}});
        let out = patch_twice(pod, &BURST);
        assert_eq!(
            out["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"],
            "5"
        );
    }
}
