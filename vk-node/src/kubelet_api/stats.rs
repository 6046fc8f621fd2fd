//! `GET /stats/summary` and `GET /metrics/resource`: the provider's usage of the node's
//! pods, sampled at most once per TTL whatever the number of callers (a provider such as
//! CloudWatch is paid and rate-limited per call).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use spillway_common::tls::ClientIdentity;

use super::{ApiState, error_response};
use crate::pods::PodDirectory;
use crate::provider::{Provider, ProviderError};
use crate::resource_usage::{self, NodeCpuCounter, NodeTotals, PodSample};

/// One sample of every pod's usage.
#[derive(Clone, Debug)]
pub struct UsageSample {
    /// The node's totals.
    pub node: NodeTotals,
    /// Pods with data, by namespace and name.
    pub pods: Vec<PodSample>,
}

struct Cached {
    at: Instant,
    sample: Arc<UsageSample>,
}

/// Samples the provider's usage of the node's pods, reusing a sample for `ttl`.
pub struct UsageSampler<P> {
    provider: Arc<P>,
    directory: PodDirectory,
    node_name: String,
    node_started_ms: i64,
    ttl: Duration,
    state: tokio::sync::Mutex<(Option<Cached>, NodeCpuCounter)>,
}

impl<P: Provider> UsageSampler<P> {
    /// A sampler for the pods in `directory`.
    pub fn new(provider: Arc<P>, directory: PodDirectory, node_name: &str, ttl: Duration) -> Self {
        Self {
            provider,
            directory,
            node_name: node_name.to_owned(),
            node_started_ms: spillway_common::time::now_millis(),
            ttl,
            state: tokio::sync::Mutex::new((None, NodeCpuCounter::default())),
        }
    }

    /// The current sample: the cached one while it is fresh, else a new one (callers at
    /// the same moment share one provider call).
    pub async fn sample(&self) -> Result<Arc<UsageSample>, ProviderError> {
        let mut state = self.state.lock().await;
        if let Some(cached) = &state.0
            && cached.at.elapsed() < self.ttl
        {
            return Ok(cached.sample.clone());
        }
        let pods: Vec<k8s_openapi::api::core::v1::Pod> = {
            let directory = self.directory.read().unwrap_or_else(|p| p.into_inner());
            directory.values().cloned().collect()
        };
        let mut usage = self.provider.usage(&pods).await?;
        let mut samples: Vec<PodSample> = pods
            .into_iter()
            .filter_map(|pod| {
                let usage = usage.remove(pod.metadata.uid.as_deref()?)?;
                (!usage.containers.is_empty()).then_some(PodSample { pod, usage })
            })
            .collect();
        samples.sort_by(|a, b| {
            (&a.pod.metadata.namespace, &a.pod.metadata.name)
                .cmp(&(&b.pod.metadata.namespace, &b.pod.metadata.name))
        });
        let node = state
            .1
            .advance(&samples, spillway_common::time::now_millis());
        let sample = Arc::new(UsageSample {
            node,
            pods: samples,
        });
        state.0 = Some(Cached {
            at: Instant::now(),
            sample: sample.clone(),
        });
        Ok(sample)
    }

    fn summary(&self, sample: &UsageSample) -> serde_json::Value {
        resource_usage::summary(
            &self.node_name,
            self.node_started_ms,
            sample.node,
            &sample.pods,
        )
    }
}

pub(super) async fn summary<P: Provider>(
    State(state): State<ApiState<P>>,
    who: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = state.guard(who, &headers, "stats").await {
        return refused;
    }
    match state.usage.sample().await {
        Ok(sample) => Json(state.usage.summary(&sample)).into_response(),
        Err(error) => error_response(error),
    }
}

pub(super) async fn resource_metrics<P: Provider>(
    State(state): State<ApiState<P>>,
    who: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = state.guard(who, &headers, "metrics").await {
        return refused;
    }
    match state.usage.sample().await {
        Ok(sample) => (
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            resource_usage::resource_metrics(sample.node, &sample.pods),
        )
            .into_response(),
        Err(error) => error_response(error),
    }
}
