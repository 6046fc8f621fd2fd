//! The operator's own virtual-node taints (`--node-taint KEY[=VALUE]:EFFECT`), checked as
//! the apiserver checks them, and which taints of a virtual node burst pods are given a
//! toleration for: the operator's, never the node's own (provider, degraded) nor the
//! `node.kubernetes.io/…` ones Kubernetes sets for a node's condition.

use crate::keys;
use crate::label;

/// The effects a taint may have.
pub const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// One taint the operator puts on the virtual nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTaint {
    /// A label-style key.
    pub key: String,
    /// A label-style value, possibly empty.
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// Whether the node or Kubernetes manages taints with `key` (so an operator may not set
/// them, and burst pods are not given a blanket toleration for them): the virtual-node
/// taint, the degraded taint, and the condition taints under `node.kubernetes.io/` and
/// `node.cloudprovider.kubernetes.io/`.
pub fn is_managed(key: &str) -> bool {
    key == keys::VIRTUAL_NODE_TAINT
        || key == keys::PROVIDER_DEGRADED_TAINT
        || key.starts_with("node.kubernetes.io/")
        || key.starts_with("node.cloudprovider.kubernetes.io/")
}

/// Parses `KEY[=VALUE]:EFFECT`, refusing with the rule it breaks.
pub fn parse(text: &str) -> Result<NodeTaint, String> {
    let (pair, effect) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?}: expected KEY[=VALUE]:EFFECT"))?;
    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
    if let Err(why) = label::check_key(key) {
        return Err(format!("{text:?}: taint key {key:?} {why}"));
    }
    if let Err(why) = label::check_value(value) {
        return Err(format!("{text:?}: taint value {value:?} {why}"));
    }
    if !EFFECTS.contains(&effect) {
        return Err(format!(
            "{text:?}: taint effect {effect:?} is none of {}",
            EFFECTS.join(", ")
        ));
    }
    if is_managed(key) {
        return Err(format!(
            "{text:?}: {key} is a taint the node or Kubernetes manages; choose a key of your own"
        ));
    }
    Ok(NodeTaint {
        key: key.to_owned(),
        value: value.to_owned(),
        effect: effect.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_are_parsed_with_or_without_a_value() {
        assert_eq!(
            parse("example.com/burst=only:NoSchedule").unwrap(),
            NodeTaint {
                key: "example.com/burst".into(),
                value: "only".into(),
                effect: "NoSchedule".into()
            }
        );
        assert_eq!(parse("dedicated:NoExecute").unwrap().value, "");
        assert_eq!(parse("team=:PreferNoSchedule").unwrap().value, "");
    }

    #[test]
    fn bad_taints_say_what_is_wrong() {
        for (text, says) in [
            ("dedicated", "expected KEY[=VALUE]:EFFECT"),
            (
                "dedicated=x:Sometimes",
                "taint effect \"Sometimes\" is none of",
            ),
            ("Bad Key:NoSchedule", "taint key \"Bad Key\""),
            ("team=has space:NoSchedule", "taint value \"has space\""),
            (
                "virtual-kubelet.io/provider=x:NoSchedule",
                "the node or Kubernetes manages",
            ),
            ("spillway.io/provider-degraded:NoSchedule", "manages"),
            ("node.kubernetes.io/unreachable:NoExecute", "manages"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn only_the_nodes_and_kubernetes_own_taints_are_managed() {
        assert!(is_managed(keys::VIRTUAL_NODE_TAINT));
        assert!(is_managed(keys::PROVIDER_DEGRADED_TAINT));
        assert!(is_managed("node.kubernetes.io/not-ready"));
        assert!(!is_managed("example.com/burst"));
        assert!(!is_managed("dedicated"));
    }
}
