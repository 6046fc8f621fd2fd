//! The controller's store of opted-in pods, fed by the shared index's pod watch (no watch
//! of its own): the pods the webhook labelled (`spillway.io/placement`) and the pods of
//! opted-in Deployments it never saw (it fails open), kept as compact [`PodRecord`]s by
//! [`compact_uid`]. While the watches first list, a pod whose Deployment the index does
//! not know yet is kept; once every kind has listed, those that turn out not to be opted
//! in are dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use spillway_cluster::index::{ClusterIndex, compact_uid};
use spillway_cluster::policy;
use spillway_cluster::watch::WatchObserver;
use spillway_common::keys;

use crate::snapshot::PodRecord;

/// Opted-in pods by [`compact_uid`].
pub type PodStore = Arc<RwLock<HashMap<u128, PodRecord>>>;

/// Whether the workload of a pod owned by ReplicaSet `owner`, with the pod's own
/// `spillway.io/*` annotations, is opted in: `Some(yes or no)`, or `None` while the
/// index does not know its Deployment.
fn workload_opted_in(
    owner: &str,
    annotations: Option<&std::collections::BTreeMap<String, String>>,
    index: &ClusterIndex,
) -> Option<bool> {
    let key = index.deployment_of_replicaset(owner)?;
    let (namespace, name) = key.split_once('/')?;
    let workload = index.workload(namespace, name)?;
    Some(
        policy::read(Some(workload.annotations), annotations)
            .0
            .opted_in,
    )
}

/// The controller's [`WatchObserver`]: keeps [`PodStore`] and says when it is complete.
pub struct OptedInPods {
    store: PodStore,
    listed: AtomicBool,
    synced: tokio::sync::watch::Sender<bool>,
}

impl OptedInPods {
    /// An observer filling `store`; `synced` turns true once the index has listed.
    pub fn new(store: PodStore, synced: tokio::sync::watch::Sender<bool>) -> Self {
        Self {
            store,
            listed: AtomicBool::new(false),
            synced,
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u128, PodRecord>> {
        self.store.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether the controller keeps `pod`: the webhook labelled it, or its Deployment is
/// opted in (or not known yet, before the first list completed).
pub fn wanted(pod: &Pod, index: &ClusterIndex, listed: bool) -> bool {
    let labels = pod.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(keys::PLACEMENT)) {
        return true;
    }
    if labels.is_some_and(|l| l.contains_key(keys::BACKFILL_FOR)) {
        return false; // Spillway's own placeholders
    }
    let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "ReplicaSet" && o.controller == Some(true))
    else {
        return false;
    };
    match workload_opted_in(&owner.uid, pod.metadata.annotations.as_ref(), index) {
        Some(opted_in) => opted_in,
        None => !listed,
    }
}

impl WatchObserver for OptedInPods {
    fn pod_applied(&self, pod: &Pod, index: &ClusterIndex) {
        let Some(uid) = pod.metadata.uid.as_deref().map(compact_uid) else {
            return;
        };
        let record = wanted(pod, index, self.listed.load(Ordering::Acquire))
            .then(|| PodRecord::from_pod(pod))
            .flatten();
        match record {
            Some(record) => self.write().insert(uid, record),
            None => self.write().remove(&uid),
        };
    }

    fn pod_removed(&self, uid: u128) {
        self.write().remove(&uid);
    }

    fn index_synced(&self, index: &ClusterIndex) {
        self.listed.store(true, Ordering::Release);
        self.write().retain(|_, record| {
            record.admitted()
                || record.owner_replicaset().is_some_and(|owner| {
                    workload_opted_in(owner, Some(record.spillway_annotations()), index)
                        .unwrap_or(false)
                })
        });
        self.synced.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(uid: &str, labels: Value, rs: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "ns", "uid": uid, "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": rs, "controller": true}]},
            "spec": {"containers": [{"name": "c"}]}
        }))
        .unwrap()
    }

    /// Deployments `web` (opted in) and `other` (not), one ReplicaSet each.
    fn index() -> ClusterIndex {
        let mut index = ClusterIndex::new();
        for (name, annotations) in [
            ("web", json!({"spillway.io/burst": "true"})),
            ("other", json!({})),
        ] {
            index.apply_deployment(
                &serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "ns", "uid": name, "annotations": annotations},
                    "spec": {"selector": {}, "template": {}}
                }))
                .unwrap(),
            );
            index.apply_replicaset(
                &serde_json::from_value(json!({
                    "metadata": {"name": format!("{name}-rs"), "namespace": "ns", "uid": format!("{name}-rs"),
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": name, "controller": true}]}
                }))
                .unwrap(),
            );
        }
        index
    }

    fn stored(store: &PodStore) -> Vec<String> {
        let mut uids: Vec<String> = store
            .read()
            .unwrap()
            .values()
            .map(|r| r.uid().to_owned())
            .collect();
        uids.sort();
        uids
    }

    #[test]
    fn labelled_pods_and_unlabelled_pods_of_opted_in_workloads_are_kept() {
        let store = PodStore::default();
        let (synced, ready) = tokio::sync::watch::channel(false);
        let observer = OptedInPods::new(store.clone(), synced);
        let empty = ClusterIndex::new();
        // While the watches list, the index may not know a pod's Deployment yet.
        observer.pod_applied(&pod("early-other", json!({}), "other-rs"), &empty);
        observer.pod_applied(&pod("early-web", json!({}), "web-rs"), &empty);
        let index = index();
        observer.pod_applied(
            &pod(
                "labelled",
                json!({"spillway.io/placement": "local"}),
                "other-rs",
            ),
            &index,
        );
        observer.pod_applied(&pod("unadmitted", json!({}), "web-rs"), &index);
        observer.pod_applied(&pod("not-opted-in", json!({}), "other-rs"), &index);
        observer.pod_applied(
            &pod(
                "placeholder",
                json!({"spillway.io/backfill-for": "web"}),
                "web-rs",
            ),
            &index,
        );
        assert!(!*ready.borrow());
        observer.index_synced(&index);
        assert!(*ready.borrow());
        assert_eq!(stored(&store), vec!["early-web", "labelled", "unadmitted"]);
        // After the first list, a pod of an unknown Deployment is not kept.
        observer.pod_applied(&pod("stray", json!({}), "unknown-rs"), &index);
        observer.pod_removed(compact_uid("labelled"));
        assert_eq!(stored(&store), vec!["early-web", "unadmitted"]);
    }
}
