//! The node-side admission rules that need the cluster's view (DESIGN §5): a pod bound
//! to the virtual node runs only when its workload opted in, and only while the burst
//! budgets hold it. Binding by hand must not bypass the webhook's rules.
//!
//! The view is the compact watch index the controller keeps (the node embedded in it
//! shares the controller's; `spillway vk-node` keeps its own) and the live operator
//! config.

use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use spillway_cluster::decision::{self, BudgetFacts};
use spillway_cluster::index::ClusterIndex;
use spillway_cluster::policy;
use spillway_cluster::watch::{self, SharedIndex, WatchObserver};
use spillway_common::admin::Readiness;
use spillway_common::config::{OperatorConfig, Provider, SharedConfig};
use spillway_common::{cost, pod_resources};

use tokio_util::sync::CancellationToken;

use crate::admission::Refusal;

/// What the rules say about one pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Judgement {
    /// It may run.
    Admit,
    /// It may not (opted out, or over a budget).
    Refuse(Refusal),
    /// The view does not know its workload yet (its ReplicaSet has not reached the
    /// index); ask again shortly.
    Undecided(String),
}

/// The cluster view the rules read.
#[derive(Clone)]
pub struct ClusterView {
    index: SharedIndex,
    config: SharedConfig,
    synced: tokio::sync::watch::Receiver<bool>,
}

impl ClusterView {
    /// Rules over `index` (complete once `synced` says true) and `config`.
    pub fn new(
        index: SharedIndex,
        config: SharedConfig,
        synced: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            index,
            config,
            synced,
        }
    }

    /// A view of its own, for a node that runs alone (`spillway vk-node`): the index is
    /// filled by watches started here.
    pub fn watched(
        client: kube::Client,
        config: SharedConfig,
        shutdown: CancellationToken,
    ) -> Self {
        let index: SharedIndex = Arc::new(RwLock::new(ClusterIndex::new()));
        let (synced_tx, synced) = tokio::sync::watch::channel(false);
        watch::spawn_all(
            client,
            index.clone(),
            Arc::new(SyncedSignal(synced_tx)),
            Readiness::default(),
            shutdown,
        );
        Self::new(index, config, synced)
    }

    /// Whether the index has listed every kind once (until then a workload it does not
    /// know may simply not have arrived).
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Judges `pod`, to run on a node whose provider prices it (`None`: the mock; the
    /// config's default provider prices it).
    pub fn judge(&self, pod: &Pod, provider: Option<Provider>) -> Judgement {
        let config = self.config.load();
        // A poisoned lock still holds a usable index (a writer panicked mid-update at
        // worst leaves one object stale).
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        judge(&index, &config, pod, provider)
    }
}

/// Says when the index has listed everything once.
struct SyncedSignal(tokio::sync::watch::Sender<bool>);

impl WatchObserver for SyncedSignal {
    fn index_synced(&self, _index: &ClusterIndex) {
        self.0.send_replace(true);
    }
}

/// The pod's workload, as the rules need it.
struct Workload {
    /// `namespace/name` of its Deployment; `None` for a pod of no ReplicaSet.
    key: Option<String>,
    policy: policy::WorkloadPolicy,
}

fn workload_of(index: &ClusterIndex, pod: &Pod) -> Result<Workload, Judgement> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "ReplicaSet" && o.controller == Some(true));
    let Some(owner) = owner else {
        // A pod of no ReplicaSet (bare, or of a Job or StatefulSet) opts in through its
        // own annotations, which are its template's.
        let (policy, _) = policy::read(None, pod.metadata.annotations.as_ref());
        return Ok(Workload { key: None, policy });
    };
    if !index.replicaset_exists(&owner.uid) {
        return Err(Judgement::Undecided(format!(
            "its ReplicaSet {} is not in the node's view of the cluster yet",
            owner.name
        )));
    }
    let Some(key) = index
        .deployment_of_replicaset(&owner.uid)
        .map(str::to_owned)
    else {
        return Err(Judgement::Refuse(Refusal::NotOptedIn {
            workload: format!("ReplicaSet {}", owner.name),
        }));
    };
    let view = key
        .split_once('/')
        .and_then(|(namespace, name)| index.workload(namespace, name));
    let Some(view) = view else {
        return Err(Judgement::Undecided(format!(
            "its Deployment {key} is not in the node's view of the cluster yet"
        )));
    };
    // The Deployment's own annotations and its template's, as the controller reads them
    // (never the pod's, which anyone creating a pod may write).
    let (policy, _) = policy::read(Some(view.annotations), Some(view.template_annotations));
    Ok(Workload {
        key: Some(key),
        policy,
    })
}

/// The rules themselves, over one consistent view.
pub fn judge(
    index: &ClusterIndex,
    config: &OperatorConfig,
    pod: &Pod,
    provider: Option<Provider>,
) -> Judgement {
    let workload = match workload_of(index, pod) {
        Ok(workload) => workload,
        Err(judgement) => return judgement,
    };
    if !workload.policy.opted_in {
        let name = pod.metadata.name.as_deref().unwrap_or("");
        return Judgement::Refuse(Refusal::NotOptedIn {
            workload: match &workload.key {
                Some(key) => format!("Deployment {key}"),
                None => format!("pod {name}"),
            },
        });
    }
    let default_provider = config.default_provider.for_pricing();
    let provider = provider.unwrap_or(default_provider);
    let needs = pod
        .spec
        .as_ref()
        .map(pod_resources::effective)
        .unwrap_or_default();
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    // The index may count the pod already (bound, or pending as a burst): leave it out,
    // so it is judged on what it adds.
    let own = index.pod_burst_usd_per_hour(uid, &config.pricing, default_provider);
    let spent = |workload: Option<&str>| {
        (index.burst_usd_per_hour(workload, &config.pricing, default_provider) - own).max(0.0)
    };
    let budget = BudgetFacts {
        pod_usd_per_hour: cost::hourly_usd(&needs, provider, &config.pricing),
        cluster_spent: spent(None),
        workload_spent: workload.key.as_deref().map_or(0.0, |key| spent(Some(key))),
        cluster_limit: config.budget.max_usd_per_hour,
    };
    if decision::over_budget(&budget, &workload.policy) {
        let cost = budget.pod_usd_per_hour.unwrap_or(0.0);
        let cluster_over = budget
            .cluster_limit
            .is_some_and(|limit| budget.cluster_spent + cost > limit);
        let (scope, spent, limit) = if cluster_over {
            (
                "cluster".to_owned(),
                budget.cluster_spent,
                budget.cluster_limit.unwrap_or(0.0),
            )
        } else {
            (
                workload
                    .key
                    .map_or_else(|| "pod".to_owned(), |key| format!("workload {key}")),
                budget.workload_spent,
                workload.policy.max_usd_per_hour.unwrap_or(0.0),
            )
        };
        return Judgement::Refuse(Refusal::OverBudget {
            scope,
            pod_usd_per_hour: cost,
            spent_usd_per_hour: spent,
            limit_usd_per_hour: limit,
        });
    }
    Judgement::Admit
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    fn virtual_node() -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "vk", "labels": {"type": "virtual-kubelet", "spillway.io/provider": "fargate"}},
            "status": {"allocatable": {"cpu": "100", "memory": "400Gi", "pods": "500"}}
        }))
        .unwrap()
    }

    fn deployment(name: &str, annotations: serde_json::Value) -> (Deployment, ReplicaSet) {
        let deployment = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("d-{name}"), "annotations": annotations},
            "spec": {"replicas": 3, "selector": {}, "template": {}}
        }))
        .unwrap();
        let rs = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-abc"), "namespace": "ns", "uid": format!("rs-{name}"),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                    "uid": format!("d-{name}"), "controller": true}]}
        }))
        .unwrap();
        (deployment, rs)
    }

    fn pod(uid: &str, rs: Option<&str>, annotations: serde_json::Value) -> Pod {
        let owners = rs.map(|rs| {
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{rs}-abc"),
                "uid": format!("rs-{rs}"), "controller": true}])
        });
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "ns", "uid": uid, "annotations": annotations,
                "ownerReferences": owners},
            "spec": {"nodeName": "vk", "containers": [{"name": "app", "image": "x",
                "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}]}
        }))
        .unwrap()
    }

    fn index_with(workloads: &[(&str, serde_json::Value)]) -> ClusterIndex {
        let mut index = ClusterIndex::new();
        index.apply_node(&virtual_node());
        for (name, annotations) in workloads {
            let (d, rs) = deployment(name, annotations.clone());
            index.apply_deployment(&d);
            index.apply_replicaset(&rs);
        }
        index
    }

    fn opted_in() -> serde_json::Value {
        json!({"spillway.io/burst": "true"})
    }

    fn refusal(judgement: Judgement) -> Refusal {
        match judgement {
            Judgement::Refuse(refusal) => refusal,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_pod_of_an_opted_in_deployment_is_admitted() {
        let index = index_with(&[("web", opted_in())]);
        let judgement = judge(
            &index,
            &OperatorConfig::default(),
            &pod("p1", Some("web"), json!({})),
            Some(Provider::Fargate),
        );
        assert_eq!(judgement, Judgement::Admit);
    }

    #[test]
    fn a_pod_of_a_deployment_not_opted_in_is_refused_whatever_the_pod_says() {
        let index = index_with(&[("quiet", json!({}))]);
        // The pod's own annotation does not opt its Deployment in.
        let pod = pod("p1", Some("quiet"), opted_in());
        let refusal = refusal(judge(
            &index,
            &OperatorConfig::default(),
            &pod,
            Some(Provider::Fargate),
        ));
        assert_eq!(refusal.reason(), "NotOptedIn");
        assert!(
            refusal.message("vk").contains("Deployment ns/quiet"),
            "{}",
            refusal.message("vk")
        );
    }

    #[test]
    fn a_bare_pod_runs_only_when_it_opts_itself_in() {
        let index = index_with(&[]);
        let config = OperatorConfig::default();
        let quiet = refusal(judge(&index, &config, &pod("bare", None, json!({})), None));
        assert_eq!(quiet.reason(), "NotOptedIn");
        let opted = judge(&index, &config, &pod("bare", None, opted_in()), None);
        assert_eq!(opted, Judgement::Admit);
    }

    #[test]
    fn a_pod_whose_replicaset_the_index_has_not_seen_waits() {
        let index = index_with(&[]);
        let judgement = judge(
            &index,
            &OperatorConfig::default(),
            &pod("p1", Some("web"), json!({})),
            None,
        );
        assert!(matches!(judgement, Judgement::Undecided(ref why) if why.contains("web-abc")));
    }

    #[test]
    fn the_cluster_budget_refuses_what_would_break_it_and_leaves_the_pod_out_of_the_sum() {
        let mut index = index_with(&[("web", opted_in())]);
        let mut config = OperatorConfig::default();
        let price = cost::hourly_usd(
            &pod_resources::effective(pod("x", None, json!({})).spec.as_ref().unwrap()),
            Provider::Fargate,
            &config.pricing,
        )
        .unwrap();
        // Room for two such pods.
        config.budget.max_usd_per_hour = Some(price * 2.5);
        for uid in ["p1", "p2"] {
            let pod = pod(uid, Some("web"), json!({}));
            assert_eq!(
                judge(&index, &config, &pod, Some(Provider::Fargate)),
                Judgement::Admit
            );
            index.apply_pod(&pod);
        }
        // Judged again once the index counts it, an admitted pod still fits.
        let p2 = pod("p2", Some("web"), json!({}));
        assert_eq!(
            judge(&index, &config, &p2, Some(Provider::Fargate)),
            Judgement::Admit
        );
        let third = refusal(judge(
            &index,
            &config,
            &pod("p3", Some("web"), json!({})),
            Some(Provider::Fargate),
        ));
        assert_eq!(third.reason(), "OverBudget");
        assert!(third.message("vk").contains("cluster"), "{third:?}");
    }

    #[test]
    fn a_workload_budget_refuses_past_its_own_cap() {
        let config = OperatorConfig::default();
        let index = index_with(&[(
            "web",
            json!({"spillway.io/burst": "true", "spillway.io/max-usd-per-hour": "0.001"}),
        )]);
        let refused = refusal(judge(
            &index,
            &config,
            &pod("p1", Some("web"), json!({})),
            Some(Provider::Fargate),
        ));
        assert!(
            matches!(&refused, Refusal::OverBudget { scope, .. } if scope == "workload ns/web"),
            "{refused:?}"
        );
    }
}
