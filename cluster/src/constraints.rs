//! What a pod asks of the node it runs on (DESIGN §3 "Constraints"): its `nodeSelector`
//! and required node affinity, matched against a node's labels as the scheduler does, and
//! whether it carries rules a single virtual node cannot honour (required pod
//! anti-affinity, `DoNotSchedule` topology spread). Spillway's own pinning to a virtual
//! node is left out, so a burst pod's constraints are those of its template.

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, PodSpec};
use spillway_common::keys;

/// The label of a node's own name: a topology domain of one node.
const HOSTNAME: &str = "kubernetes.io/hostname";

/// A pod's own node constraints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeConstraints {
    /// `spec.nodeSelector`: every pair must be a label of the node.
    pub node_selector: Vec<(String, String)>,
    /// Required node affinity: the node must match one term (none: any node).
    pub required_terms: Vec<NodeSelectorTerm>,
    /// Topology keys of `DoNotSchedule` spread constraints: the scheduler places the
    /// pod only on nodes that carry every one as a label.
    pub topology_keys: Vec<String>,
    /// Required pod anti-affinity or a `DoNotSchedule` spread per host
    /// (`kubernetes.io/hostname`): one node, virtual ones included, holds at most one
    /// of these siblings (a conservative reading of a spread's skew).
    pub one_per_node: bool,
}

/// Whether `requirement` is one Spillway adds to pin a pod to a virtual node.
fn is_spillway_pin(requirement: &NodeSelectorRequirement) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    requirement.operator == "In"
        && (requirement.key == keys::NODE_PROVIDER_LABEL
            || (requirement.key == keys::NODE_TYPE_LABEL
                && values == [keys::NODE_TYPE_VIRTUAL.to_owned()]))
}

impl NodeConstraints {
    /// The constraints of `spec`, Spillway's virtual-node pin removed.
    pub fn of(spec: &PodSpec) -> Self {
        let node_selector = spec
            .node_selector
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut required_terms: Vec<NodeSelectorTerm> = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|r| r.node_selector_terms.clone())
            .unwrap_or_default();
        for term in &mut required_terms {
            if let Some(expressions) = term.match_expressions.as_mut() {
                expressions.retain(|e| !is_spillway_pin(e));
            }
        }
        // A term left empty held only Spillway's pin: the template asked for nothing.
        let term_is_empty = |t: &NodeSelectorTerm| {
            t.match_expressions
                .as_deref()
                .unwrap_or_default()
                .is_empty()
                && t.match_fields.as_deref().unwrap_or_default().is_empty()
        };
        if required_terms.iter().any(term_is_empty) {
            required_terms.clear();
        }
        let anti_affinity_on_host = spec
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_some_and(|terms| terms.iter().any(|t| t.topology_key == HOSTNAME));
        let strict: Vec<&str> = spec
            .topology_spread_constraints
            .iter()
            .flatten()
            .filter(|c| c.when_unsatisfiable == "DoNotSchedule")
            .map(|c| c.topology_key.as_str())
            .collect();
        Self {
            node_selector,
            required_terms,
            one_per_node: anti_affinity_on_host || strict.contains(&HOSTNAME),
            topology_keys: strict.into_iter().map(str::to_owned).collect(),
        }
    }

    /// Whether the pod asks nothing of its node.
    pub fn is_empty(&self) -> bool {
        self.node_selector.is_empty()
            && self.required_terms.is_empty()
            && self.topology_keys.is_empty()
            && !self.one_per_node
    }

    /// Whether a node named `name` whose label `key` is `label(key)` satisfies the
    /// selector, the required node affinity and carries the spread's topology keys (not
    /// how many siblings it may hold, which depends on other pods).
    pub fn admits<'a>(&self, name: &str, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        let selector_ok = self
            .node_selector
            .iter()
            .all(|(k, v)| label(k) == Some(v.as_str()));
        let topology_ok = self.topology_keys.iter().all(|k| label(k).is_some());
        selector_ok
            && topology_ok
            && (self.required_terms.is_empty()
                || self
                    .required_terms
                    .iter()
                    .any(|term| term_matches(term, name, &label)))
    }
}

/// A term matches when all its expressions and fields do; an empty term matches nothing
/// (as in the scheduler).
fn term_matches<'a>(
    term: &NodeSelectorTerm,
    name: &str,
    label: &impl Fn(&str) -> Option<&'a str>,
) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions
        .iter()
        .all(|e| requirement_matches(e, label(&e.key)))
        && fields.iter().all(|f| {
            let value = (f.key == "metadata.name").then_some(name);
            requirement_matches(f, value)
        })
}

fn requirement_matches(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let contains = |v: &str| values.iter().any(|candidate| candidate == v);
    let compare = |ordering: std::cmp::Ordering| {
        let bound = values.first().and_then(|b| b.parse::<i64>().ok());
        let value = value.and_then(|v| v.parse::<i64>().ok());
        matches!((value, bound), (Some(v), Some(b)) if v.cmp(&b) == ordering)
    };
    match requirement.operator.as_str() {
        "In" => value.is_some_and(contains),
        "NotIn" => !value.is_some_and(contains),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => compare(std::cmp::Ordering::Greater),
        "Lt" => compare(std::cmp::Ordering::Less),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn constraints(spec: serde_json::Value) -> NodeConstraints {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "app"}]);
        NodeConstraints::of(&serde_json::from_value(spec).unwrap())
    }

    fn node(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn admits(c: &NodeConstraints, name: &str, labels: &BTreeMap<String, String>) -> bool {
        c.admits(name, |k| labels.get(k).map(String::as_str))
    }

    #[test]
    fn node_selector_needs_every_label() {
        let c = constraints(json!({"nodeSelector": {"disk": "ssd", "kubernetes.io/os": "linux"}}));
        assert!(admits(
            &c,
            "n",
            &node(&[("disk", "ssd"), ("kubernetes.io/os", "linux")])
        ));
        assert!(!admits(&c, "n", &node(&[("kubernetes.io/os", "linux")])));
        assert!(!admits(
            &c,
            "n",
            &node(&[("disk", "hdd"), ("kubernetes.io/os", "linux")])
        ));
    }

    #[test]
    fn required_affinity_is_an_or_of_ands() {
        let c = constraints(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [
                    {"key": "zone", "operator": "In", "values": ["a", "b"]},
                    {"key": "spot", "operator": "DoesNotExist"}
                ]},
                {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["8"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["special"]}]}
            ]}}}}),
        );
        assert!(admits(&c, "n", &node(&[("zone", "a")])));
        assert!(!admits(&c, "n", &node(&[("zone", "a"), ("spot", "true")])));
        assert!(!admits(&c, "n", &node(&[("zone", "c")])));
        assert!(admits(&c, "n", &node(&[("cores", "16")])));
        assert!(!admits(&c, "n", &node(&[("cores", "8")])));
        assert!(!admits(&c, "n", &node(&[("cores", "many")])));
        assert!(admits(&c, "special", &node(&[])));
        assert!(!admits(&c, "other", &node(&[])));
    }

    #[test]
    fn not_in_and_exists() {
        let c = constraints(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [
                    {"key": "type", "operator": "NotIn", "values": ["virtual-kubelet"]},
                    {"key": "pool", "operator": "Exists"}
                ]}
            ]}}}}),
        );
        assert!(admits(&c, "n", &node(&[("pool", "x")])));
        assert!(!admits(
            &c,
            "n",
            &node(&[("pool", "x"), ("type", "virtual-kubelet")])
        ));
        assert!(!admits(&c, "n", &node(&[])));
    }

    #[test]
    fn spillway_pin_is_not_the_pods_own() {
        let pinned_only = constraints(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [
                    {"key": "type", "operator": "In", "values": ["virtual-kubelet"]},
                    {"key": "spillway.io/provider", "operator": "In", "values": ["fargate"]}
                ]}
            ]}}}}),
        );
        assert!(pinned_only.is_empty());
        assert!(admits(&pinned_only, "worker-1", &node(&[])));
        let pinned_and_own = constraints(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [
                    {"key": "zone", "operator": "In", "values": ["a"]},
                    {"key": "type", "operator": "In", "values": ["virtual-kubelet"]},
                    {"key": "spillway.io/provider", "operator": "In", "values": ["fargate"]}
                ]}
            ]}}}}),
        );
        assert!(admits(&pinned_and_own, "worker-1", &node(&[("zone", "a")])));
        assert!(!admits(&pinned_and_own, "worker-1", &node(&[])));
    }

    #[test]
    fn sibling_rules() {
        let none = constraints(json!({}));
        assert!(!none.one_per_node && none.topology_keys.is_empty());
        let anti = |key: &str| {
            constraints(
                json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "x"}}, "topologyKey": key}
                ]}}}),
            )
        };
        assert!(anti("kubernetes.io/hostname").one_per_node);
        // Per zone: a node without a zone label is in no domain, so nothing to break.
        assert!(!anti("topology.kubernetes.io/zone").one_per_node);
        assert!(
            !constraints(json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "x"}}, "topologyKey": "kubernetes.io/hostname"}}
            ]}}}))
            .one_per_node
        );
        let spread = |key: &str, when: &str| {
            constraints(json!({"topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": when}
            ]}))
        };
        let zone = spread("topology.kubernetes.io/zone", "DoNotSchedule");
        assert_eq!(zone.topology_keys, vec!["topology.kubernetes.io/zone"]);
        assert!(!zone.one_per_node);
        // The scheduler puts such a pod only on nodes that carry the key.
        assert!(!admits(
            &zone,
            "vk",
            &node(&[("kubernetes.io/hostname", "vk")])
        ));
        assert!(admits(
            &zone,
            "n",
            &node(&[("topology.kubernetes.io/zone", "a")])
        ));
        assert!(spread("kubernetes.io/hostname", "DoNotSchedule").one_per_node);
        assert!(spread("topology.kubernetes.io/zone", "ScheduleAnyway").is_empty());
    }
}
