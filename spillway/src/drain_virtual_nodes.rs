//! `spillway drain-virtual-nodes`: what to do before Spillway goes (the chart runs it as a
//! pre-delete hook). Only a virtual node stops its pods' cloud tasks, so pods still on it
//! when the controller is gone keep running, and billing. This cordons the virtual nodes
//! (the webhook then sends no new replica there), evicts their pods through the Eviction
//! API (PodDisruptionBudgets are honoured; their workloads replace them on regular nodes)
//! and waits until the nodes have stopped them all.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, EvictParams, ListParams, Patch, PatchParams};
use spillway_common::keys;

/// Flags of `spillway drain-virtual-nodes`.
#[derive(Args, Clone, Debug)]
pub struct DrainArgs {
    /// A virtual node to drain (repeat for several). Without it, every virtual node named
    /// `<--node-name-prefix>-…`.
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
    /// The release's virtual node name prefix (the chart's
    /// `controller.virtualNode.namePrefix`), used when no `--node` is given.
    #[arg(long, default_value = "spillway")]
    pub node_name_prefix: String,
    /// How long to wait for the pods to go; then exit 1 naming those left (a
    /// PodDisruptionBudget that allows no disruption holds its pods).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout_seconds: u64,
    /// Seconds between two looks at the nodes' pods.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub interval_seconds: u64,
}

/// Runs the command: exit 0 once the nodes hold no pod, 1 on a timeout or an error.
pub fn run(args: &DrainArgs) -> ExitCode {
    spillway_common::tls::install_crypto_provider();
    let runtime = match crate::current_thread_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(drain(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("spillway drain-virtual-nodes: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `node` is one of the virtual nodes to drain.
fn chosen(node: &Node, args: &DrainArgs) -> bool {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let is_virtual = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(keys::NODE_TYPE_LABEL))
        .is_some_and(|v| v == keys::NODE_TYPE_VIRTUAL);
    let named = if args.nodes.is_empty() {
        name.starts_with(&format!("{}-", args.node_name_prefix))
    } else {
        args.nodes.iter().any(|n| n == name)
    };
    is_virtual && named
}

/// A pod the drain waits for: not finished, not a DaemonSet's (a virtual node never
/// starts those, and their controller would put them back).
fn holds_the_node(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let daemon = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet");
    !daemon && !matches!(phase, Some("Succeeded") | Some("Failed"))
}

async fn drain(args: &DrainArgs) -> anyhow::Result<()> {
    let client = spillway_common::kube_access::client().await?;
    // Without kube's own retries: they would wait out a PodDisruptionBudget's 429 for many
    // minutes, past the timeout, instead of reporting it and trying again next round.
    let evictions = spillway_controller::execute::eviction_client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let names: Vec<String> = nodes
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            keys::NODE_TYPE_LABEL,
            keys::NODE_TYPE_VIRTUAL
        )))
        .await?
        .items
        .iter()
        .filter(|n| chosen(n, args))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    if names.is_empty() {
        eprintln!("spillway drain-virtual-nodes: no such virtual node; nothing to drain");
        return Ok(());
    }
    for name in &names {
        nodes
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"unschedulable": true}})),
            )
            .await?;
        eprintln!("spillway drain-virtual-nodes: cordoned {name}");
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);
    // Why each pod is still there, from its last eviction.
    let mut held: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let left = pods_on(&client, &names).await?;
        if left.is_empty() {
            eprintln!(
                "spillway drain-virtual-nodes: {} hold no pod",
                names.join(", ")
            );
            return Ok(());
        }
        held.retain(|key, _| left.iter().any(|p| &key_of(p) == key));
        for pod in left
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            if let Some(why) = evict(&evictions, pod).await {
                held.insert(key_of(pod), why);
            }
        }
        if Instant::now() >= deadline {
            let named: Vec<String> = left
                .iter()
                .map(|p| {
                    let key = key_of(p);
                    match held.get(&key) {
                        Some(why) => format!("{key} ({why})"),
                        None => format!("{key} (stopping)"),
                    }
                })
                .collect();
            anyhow::bail!(
                "{} pod(s) still on {} after {} s: {}; their cloud tasks keep running until \
                 they go (raise --timeout-seconds, or fix what holds them, then run again)",
                left.len(),
                names.join(", "),
                args.timeout_seconds,
                named.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_secs(args.interval_seconds)).await;
    }
}

fn key_of(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The pods bound to `nodes` that the drain waits for.
async fn pods_on(client: &Client, nodes: &[String]) -> anyhow::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut found = Vec::new();
    for node in nodes {
        let bound = ListParams::default().fields(&format!("spec.nodeName={node}"));
        found.extend(
            pods.list(&bound)
                .await?
                .items
                .into_iter()
                .filter(holds_the_node),
        );
    }
    Ok(found)
}

/// Evicts `pod`; says why when it stays (a PodDisruptionBudget, an error).
async fn evict(client: &Client, pod: &Pod) -> Option<String> {
    let namespace = pod.metadata.namespace.as_deref()?;
    let name = pod.metadata.name.as_deref()?;
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match api.evict(name, &EvictParams::default()).await {
        Ok(_) => {
            eprintln!("spillway drain-virtual-nodes: evicted {namespace}/{name}");
            None
        }
        Err(kube::Error::Api(status)) if status.code == 404 => None,
        Err(kube::Error::Api(status)) if status.code == 429 => {
            Some("its PodDisruptionBudget allows no disruption now".into())
        }
        Err(error) => Some(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, virtual_node: bool) -> Node {
        let labels = if virtual_node {
            json!({"type": "virtual-kubelet"})
        } else {
            json!({})
        };
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn args(nodes: &[&str]) -> DrainArgs {
        DrainArgs {
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            node_name_prefix: "burst-eu".into(),
            timeout_seconds: 1,
            interval_seconds: 1,
        }
    }

    #[test]
    fn only_the_releases_virtual_nodes_are_drained() {
        let by_prefix = args(&[]);
        assert!(chosen(&node("burst-eu-fargate", true), &by_prefix));
        assert!(
            !chosen(&node("burst-eu-fargate", false), &by_prefix),
            "a real node"
        );
        assert!(
            !chosen(&node("spillway-fargate", true), &by_prefix),
            "another release"
        );
        assert!(
            !chosen(&node("burst-euro-aci", true), &by_prefix),
            "prefix, not a word of it"
        );
        let named = args(&["spillway-aci"]);
        assert!(chosen(&node("spillway-aci", true), &named));
        assert!(!chosen(&node("burst-eu-fargate", true), &named));
    }

    #[test]
    fn finished_and_daemonset_pods_do_not_hold_the_node() {
        let pod = |phase: &str, owner: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p", "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner, "name": "o", "uid": "u"}]},
                "status": {"phase": phase}
            }))
            .unwrap()
        };
        assert!(holds_the_node(&pod("Running", "ReplicaSet")));
        assert!(holds_the_node(&pod("Pending", "ReplicaSet")));
        assert!(!holds_the_node(&pod("Succeeded", "ReplicaSet")));
        assert!(!holds_the_node(&pod("Failed", "ReplicaSet")));
        assert!(!holds_the_node(&pod("Pending", "DaemonSet")));
    }
}
