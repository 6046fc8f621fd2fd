//! What the webhook does as the shared watches change the index: resolve its in-flight
//! decisions as their pods appear, and keep the index-size gauge current.

use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use spillway_cluster::index::ClusterIndex;
use spillway_cluster::watch::WatchObserver;
use spillway_common::keys;

use crate::inflight::InFlight;
use crate::metrics::WebhookMetrics;

/// The webhook's [`WatchObserver`].
pub struct WebhookFeed {
    /// Decisions not yet seen in the watch.
    pub in_flight: Arc<Mutex<InFlight>>,
    /// Metrics (the index size).
    pub metrics: WebhookMetrics,
}

impl WatchObserver for WebhookFeed {
    fn pod_applied(&self, pod: &Pod, _: &ClusterIndex) {
        if let Some(uid) = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(keys::DECISION))
        {
            self.in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .resolve(crate::decision_seal::review_uid(uid));
        }
    }

    fn index_changed(&self, index: &ClusterIndex) {
        self.metrics.index_pods.set(index.pod_count() as i64);
    }
}
