//! The virtual node's Prometheus metrics (DESIGN §6).

use crate::provider::ProviderError;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Provider and node metrics, registered once per process.
#[derive(Clone, Debug)]
pub struct NodeMetrics {
    /// `spillway_provider_requests_total{provider,op,result}`.
    pub requests: IntCounterVec,
    /// `spillway_provider_calls_total{provider,op,outcome}`: `ok`, or the error's kind
    /// (`unavailable`, `throttled`, `transient`, `invalid`, `not-found`).
    pub calls: IntCounterVec,
    /// `spillway_provider_request_duration_seconds{provider,op}`.
    pub durations: HistogramVec,
    /// `spillway_vk_pods`: pods bound to the node and tracked.
    pub pods: IntGauge,
    /// `spillway_vk_provider_degraded{node,provider}`: 1 while the node's degraded taint
    /// is on (one series per embedded node, so one recovering never clears another).
    pub degraded: IntGaugeVec,
    /// `spillway_provider_ready{node,provider}`: 1 once the provider's set-up check found
    /// nothing wrong (credentials, the cluster, the log group, …); 0 while it did.
    pub ready: IntGaugeVec,
    /// `spillway_provider_errors_total{provider,class}`: failed provider calls by class
    /// (`unavailable`, `throttled`, `transient`, `invalid`, `not-found`).
    pub errors: IntCounterVec,
    /// `spillway_virtual_node_up{node,provider}`: 1 while this process drives the node
    /// (leader, registered, serving); 0 while it starts, waits for leadership, or failed
    /// and is retrying.
    pub up: IntGaugeVec,
    /// `spillway_exec_sessions{provider}`: `kubectl exec` and `attach` sessions open on
    /// the node's kubelet API now.
    pub exec_sessions: IntGaugeVec,
}

impl NodeMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "spillway_provider_requests_total",
                    "Calls to the provider API by operation and result",
                ),
                &["provider", "op", "result"],
            )?,
            calls: IntCounterVec::new(
                Opts::new(
                    "spillway_provider_calls_total",
                    "Calls to the provider API by operation and outcome: ok, or the error's kind (unavailable, throttled, transient, invalid, not-found)",
                ),
                &["provider", "op", "outcome"],
            )?,
            durations: HistogramVec::new(
                HistogramOpts::new(
                    "spillway_provider_request_duration_seconds",
                    "Duration of provider API calls",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["provider", "op"],
            )?,
            pods: IntGauge::new("spillway_vk_pods", "Pods bound to the virtual node")?,
            degraded: IntGaugeVec::new(
                Opts::new(
                    "spillway_vk_provider_degraded",
                    "1 while the node carries the provider-degraded taint (calls failing, or its set-up not ready)",
                ),
                &["node", "provider"],
            )?,
            ready: IntGaugeVec::new(
                Opts::new(
                    "spillway_provider_ready",
                    "1 once the provider's set-up check found nothing wrong (credentials, cluster, log group, resource group); 0 while it finds a problem (logged, one sentence each)",
                ),
                &["node", "provider"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "spillway_provider_errors_total",
                    "Failed provider calls by class: unavailable (capacity, quota, outage), throttled, transient, invalid, not-found",
                ),
                &["provider", "class"],
            )?,
            up: IntGaugeVec::new(
                Opts::new(
                    "spillway_virtual_node_up",
                    "1 while this process drives the virtual node (leader, registered, serving); 0 while it starts, waits for leadership, or failed and is retrying",
                ),
                &["node", "provider"],
            )?,
            exec_sessions: IntGaugeVec::new(
                Opts::new(
                    "spillway_exec_sessions",
                    "kubectl exec and attach sessions open on the virtual node's kubelet API",
                ),
                &["provider"],
            )?,
        };
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.calls.clone()))?;
        registry.register(Box::new(metrics.durations.clone()))?;
        registry.register(Box::new(metrics.pods.clone()))?;
        registry.register(Box::new(metrics.degraded.clone()))?;
        registry.register(Box::new(metrics.ready.clone()))?;
        registry.register(Box::new(metrics.errors.clone()))?;
        registry.register(Box::new(metrics.up.clone()))?;
        registry.register(Box::new(metrics.exec_sessions.clone()))?;
        Ok(metrics)
    }

    /// A set not registered anywhere (tests, offline use).
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).expect("fresh registry accepts every metric")
    }

    /// Records one call.
    pub fn observe<T>(
        &self,
        provider: &str,
        op: &str,
        result: &Result<T, ProviderError>,
        seconds: f64,
    ) {
        let (summary, outcome) = match result {
            Ok(_) => ("success", "ok"),
            Err(error) => ("error", error.kind()),
        };
        self.requests
            .with_label_values(&[provider, op, summary])
            .inc();
        self.calls.with_label_values(&[provider, op, outcome]).inc();
        self.durations
            .with_label_values(&[provider, op])
            .observe(seconds);
    }
}
