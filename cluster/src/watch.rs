//! Feeds the index from watches of Nodes, Pods, ReplicaSets, Deployments and HPAs, and
//! tells an observer (the webhook resolves its in-flight decisions there) what changed.
//! Objects that vanished while a watch was re-listing are removed when the re-list
//! completes.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use spillway_common::admin::Readiness;
use tokio_util::sync::CancellationToken;

use crate::index::{ClusterIndex, compact_uid};

/// The index shared by the watches (writers) and its readers.
pub type SharedIndex = Arc<RwLock<ClusterIndex>>;

/// What else should happen as the watches change the index. Called under the index's
/// write lock: keep it short.
pub trait WatchObserver: Send + Sync + 'static {
    /// A pod was added or updated in the index (`index` already has it).
    fn pod_applied(&self, _pod: &Pod, _index: &ClusterIndex) {}
    /// A pod left the index (deleted, or gone in a re-list), by its [`compact_uid`].
    fn pod_removed(&self, _uid: u128) {}
    /// Every watched kind has listed once: `index` holds the whole cluster.
    fn index_synced(&self, _index: &ClusterIndex) {}
    /// The index changed.
    fn index_changed(&self, _index: &ClusterIndex) {}
}

/// An observer that does nothing.
pub struct NoObserver;

impl WatchObserver for NoObserver {}

/// One watched kind and how it enters and leaves the index.
trait IndexedKind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
    type Key: Hash + Eq + Clone + Send;
    fn key(&self) -> Option<Self::Key>;
    fn apply(&self, observer: &dyn WatchObserver, index: &mut ClusterIndex);
    fn remove(key: &Self::Key, observer: &dyn WatchObserver, index: &mut ClusterIndex);
}

fn ns_name(meta: &kube::api::ObjectMeta) -> Option<String> {
    Some(format!(
        "{}/{}",
        meta.namespace.as_deref()?,
        meta.name.as_deref()?
    ))
}

impl IndexedKind for Node {
    type Key = String;
    fn key(&self) -> Option<String> {
        self.metadata.name.clone()
    }
    fn apply(&self, _: &dyn WatchObserver, index: &mut ClusterIndex) {
        index.apply_node(self);
    }
    fn remove(key: &String, _: &dyn WatchObserver, index: &mut ClusterIndex) {
        index.delete_node(key);
    }
}

impl IndexedKind for Pod {
    type Key = u128;
    fn key(&self) -> Option<u128> {
        self.metadata.uid.as_deref().map(compact_uid)
    }
    fn apply(&self, observer: &dyn WatchObserver, index: &mut ClusterIndex) {
        index.apply_pod(self);
        observer.pod_applied(self, index);
    }
    fn remove(key: &u128, observer: &dyn WatchObserver, index: &mut ClusterIndex) {
        index.delete_pod_compact(*key);
        observer.pod_removed(*key);
    }
}

impl IndexedKind for ReplicaSet {
    type Key = String;
    fn key(&self) -> Option<String> {
        self.metadata.uid.clone()
    }
    fn apply(&self, _: &dyn WatchObserver, index: &mut ClusterIndex) {
        index.apply_replicaset(self);
    }
    fn remove(key: &String, _: &dyn WatchObserver, index: &mut ClusterIndex) {
        index.delete_replicaset(key);
    }
}

impl IndexedKind for Deployment {
    type Key = String;
    fn key(&self) -> Option<String> {
        ns_name(&self.metadata)
    }
    fn apply(&self, _: &dyn WatchObserver, index: &mut ClusterIndex) {
        index.apply_deployment(self);
    }
    fn remove(key: &String, _: &dyn WatchObserver, index: &mut ClusterIndex) {
        if let Some((ns, name)) = key.split_once('/') {
            index.delete_deployment(ns, name);
        }
    }
}

impl IndexedKind for HorizontalPodAutoscaler {
    type Key = String;
    fn key(&self) -> Option<String> {
        ns_name(&self.metadata)
    }
    fn apply(&self, _: &dyn WatchObserver, index: &mut ClusterIndex) {
        index.apply_hpa(self);
    }
    fn remove(key: &String, _: &dyn WatchObserver, index: &mut ClusterIndex) {
        if let Some((ns, name)) = key.split_once('/') {
            index.delete_hpa(ns, name);
        }
    }
}

async fn run<K: IndexedKind>(
    api: Api<K>,
    shared: SharedIndex,
    observer: Arc<dyn WatchObserver>,
    synced: Arc<AtomicUsize>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let mut known: HashSet<K::Key> = HashSet::new();
    let mut relisted: HashSet<K::Key> = HashSet::new();
    let mut first_sync = true;
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = stream.next() => match next {
                Some(event) => event,
                None => return,
            },
        };
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, kind = %K::kind(&()), "watch failed; retrying");
                continue;
            }
        };
        let mut index = shared.write().unwrap_or_else(|p| p.into_inner());
        match event {
            watcher::Event::Init => relisted.clear(),
            watcher::Event::InitApply(object) => {
                if let Some(key) = object.key() {
                    relisted.insert(key);
                }
                object.apply(observer.as_ref(), &mut index);
            }
            watcher::Event::InitDone => {
                for gone in known.difference(&relisted) {
                    K::remove(gone, observer.as_ref(), &mut index);
                }
                known = std::mem::take(&mut relisted);
                if first_sync {
                    first_sync = false;
                    if synced.fetch_add(1, Ordering::AcqRel) + 1 == WATCHED_KINDS {
                        readiness.set(true);
                        observer.index_synced(&index);
                        tracing::info!(
                            pods = index.pod_count(),
                            nodes = index.node_count(),
                            "index synced"
                        );
                    }
                }
            }
            watcher::Event::Apply(object) => {
                if let Some(key) = object.key() {
                    known.insert(key);
                }
                object.apply(observer.as_ref(), &mut index);
            }
            watcher::Event::Delete(object) => {
                if let Some(key) = object.key() {
                    K::remove(&key, observer.as_ref(), &mut index);
                    known.remove(&key);
                }
            }
        }
        observer.index_changed(&index);
    }
}

/// Number of kinds watched; the index is ready when all have listed once.
const WATCHED_KINDS: usize = 5;

/// Starts the five watches; `readiness` turns true once each has listed.
pub fn spawn_all(
    client: Client,
    index: SharedIndex,
    observer: Arc<dyn WatchObserver>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let synced = Arc::new(AtomicUsize::new(0));
    macro_rules! start {
        ($kind:ty) => {
            tokio::spawn(run::<$kind>(
                Api::all(client.clone()),
                index.clone(),
                observer.clone(),
                synced.clone(),
                readiness.clone(),
                shutdown.clone(),
            ));
        };
    }
    start!(Node);
    start!(Pod);
    start!(ReplicaSet);
    start!(Deployment);
    start!(HorizontalPodAutoscaler);
}
