//! `GET /stats/summary` and `GET /metrics/resource`: the provider's usage of the node's
//! pods, sampled at most once per TTL whatever the number of callers (a provider such as
//! CloudWatch is paid and rate-limited per call).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

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

/// The longest one usage sample may take (metrics-server gives up on a kubelet after
/// 10 s by default; an answer after that helps nobody).
pub const USAGE_DEADLINE: Duration = Duration::from_secs(10);

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
        // A hung provider must not hold every scraper: they wait on this sample.
        let mut usage = tokio::time::timeout(USAGE_DEADLINE, self.provider.usage(&pods))
            .await
            .map_err(|_| {
                ProviderError::Transient(format!(
                    "no usage from the provider within {USAGE_DEADLINE:?}"
                ))
            })??;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use k8s_openapi::api::core::v1::Pod;

    use crate::provider::{ContainerUsage, LogChunk, LogOptions, PodUsage, RemoteStatus};

    /// A provider that only measures: one container at 0.5 cores, or never answers.
    #[derive(Default)]
    struct Measuring {
        calls: AtomicUsize,
        hang: bool,
    }

    impl Provider for Measuring {
        fn name(&self) -> &'static str {
            "measuring"
        }
        async fn create(
            &self,
            _: &Pod,
            _: &crate::pod_objects::PodObjects,
        ) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn delete(&self, _: &str, _: i64) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn list(&self) -> Result<HashMap<String, RemoteStatus>, ProviderError> {
            Ok(HashMap::new())
        }
        async fn statuses(
            &self,
            _: &[String],
        ) -> Result<HashMap<String, RemoteStatus>, ProviderError> {
            Ok(HashMap::new())
        }
        async fn logs(
            &self,
            _: &str,
            _: &str,
            _: &LogOptions,
            _: Option<&str>,
        ) -> Result<LogChunk, ProviderError> {
            Ok(LogChunk::default())
        }
        async fn usage(&self, pods: &[Pod]) -> Result<HashMap<String, PodUsage>, ProviderError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.hang {
                std::future::pending::<()>().await;
            }
            Ok(pods
                .iter()
                .filter_map(|p| p.metadata.uid.clone())
                .map(|uid| {
                    let usage = PodUsage {
                        sampled_at_ms: 1,
                        containers: vec![ContainerUsage {
                            name: "app".into(),
                            started_at_ms: None,
                            cpu_nano_cores: 500_000_000,
                            cpu_core_nano_seconds: 7,
                            memory_working_set_bytes: 1,
                        }],
                    };
                    (uid, usage)
                })
                .collect())
        }
    }

    fn directory() -> PodDirectory {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"}
        }))
        .unwrap();
        Arc::new(std::sync::RwLock::new(HashMap::from([(
            "shop/web".to_owned(),
            pod,
        )])))
    }

    #[tokio::test(start_paused = true)]
    async fn a_sample_is_reused_within_its_ttl_and_taken_again_after() {
        let provider = Arc::new(Measuring::default());
        let sampler =
            UsageSampler::new(provider.clone(), directory(), "n", Duration::from_secs(10));
        let first = sampler.sample().await.unwrap();
        assert_eq!(first.pods.len(), 1);
        assert_eq!(first.node.cpu_nano_cores, 500_000_000);
        sampler.sample().await.unwrap();
        assert_eq!(
            provider.calls.load(Ordering::SeqCst),
            1,
            "one provider call per TTL"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        sampler.sample().await.unwrap();
        assert_eq!(provider.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_that_never_answers_fails_the_sample_at_the_deadline() {
        let provider = Arc::new(Measuring {
            hang: true,
            ..Measuring::default()
        });
        let sampler = UsageSampler::new(provider, directory(), "n", Duration::from_secs(10));
        let error = sampler.sample().await.unwrap_err();
        assert!(matches!(error, ProviderError::Transient(_)), "{error}");
    }
}
