//! The controller's store of opted-in pods: a watch of the pods the webhook labelled
//! (`spillway.io/placement`), kept as compact [`PodRecord`]s by UID. A re-list is
//! collected aside and swapped in whole, so pods that vanished meanwhile drop out and
//! readers never see a half-listed store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use spillway_common::keys;
use tokio_util::sync::CancellationToken;

use crate::snapshot::PodRecord;

/// Opted-in pods by UID.
pub type PodStore = Arc<RwLock<HashMap<Box<str>, PodRecord>>>;

/// Applies one watch event to `store`; `relist` collects a re-list until it is done.
/// Returns true when a (re-)list completed.
pub fn apply(
    store: &PodStore,
    relist: &mut Option<HashMap<Box<str>, PodRecord>>,
    event: watcher::Event<Pod>,
) -> bool {
    match event {
        watcher::Event::Init => {
            *relist = Some(HashMap::new());
            false
        }
        watcher::Event::InitApply(pod) => {
            if let (Some(record), Some(fresh)) = (PodRecord::from_pod(&pod), relist.as_mut()) {
                fresh.insert(record.uid().into(), record);
            }
            false
        }
        watcher::Event::InitDone => {
            if let Some(fresh) = relist.take() {
                *store.write().unwrap_or_else(|p| p.into_inner()) = fresh;
            }
            true
        }
        watcher::Event::Apply(pod) => {
            if let Some(record) = PodRecord::from_pod(&pod) {
                store
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(record.uid().into(), record);
            }
            false
        }
        watcher::Event::Delete(pod) => {
            if let Some(uid) = pod.metadata.uid.as_deref() {
                store.write().unwrap_or_else(|p| p.into_inner()).remove(uid);
            }
            false
        }
    }
}

/// Starts the watch; `synced` turns true once the first list is in the store.
pub fn spawn(
    client: Client,
    store: PodStore,
    synced: tokio::sync::watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let opted_in = watcher::Config::default().labels(keys::PLACEMENT);
    let stream = watcher(Api::<Pod>::all(client), opted_in).default_backoff();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        let mut relist = None;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = stream.next() => match next {
                    Some(Ok(event)) => event,
                    Some(Err(error)) => {
                        tracing::warn!(%error, "opted-in pod watch failed; retrying");
                        continue;
                    }
                    None => return,
                },
            };
            if apply(&store, &mut relist, event) {
                synced.send_replace(true);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "ns", "uid": uid,
                "labels": {"spillway.io/placement": "local"}},
            "spec": {"containers": [{"name": "c"}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_relist_replaces_the_store_when_done() {
        let store = PodStore::default();
        let mut relist = None;
        assert!(!apply(&store, &mut relist, watcher::Event::Init));
        apply(&store, &mut relist, watcher::Event::InitApply(pod("a")));
        apply(&store, &mut relist, watcher::Event::InitApply(pod("b")));
        assert!(store.read().unwrap().is_empty(), "nothing half-listed");
        assert!(apply(&store, &mut relist, watcher::Event::InitDone));
        assert_eq!(store.read().unwrap().len(), 2);
        apply(&store, &mut relist, watcher::Event::Delete(pod("a")));
        apply(&store, &mut relist, watcher::Event::Apply(pod("c")));
        // A re-list after a watch gap: b vanished meanwhile.
        apply(&store, &mut relist, watcher::Event::Init);
        apply(&store, &mut relist, watcher::Event::InitApply(pod("c")));
        assert_eq!(
            store.read().unwrap().len(),
            2,
            "the old store stays until done"
        );
        apply(&store, &mut relist, watcher::Event::InitDone);
        let store = store.read().unwrap();
        assert_eq!(store.keys().map(|k| &**k).collect::<Vec<_>>(), vec!["c"]);
    }
}
