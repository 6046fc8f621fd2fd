//! The webhook's Prometheus metrics (DESIGN §6).

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

/// The `kind` label values of `spillway_admission_errors_total`.
pub const ERROR_KINDS: [&str; 2] = ["bad-request", "internal"];

/// Admission metrics, registered once per process.
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    /// `spillway_admission_decisions_total{decision,reason}`.
    pub decisions: IntCounterVec,
    /// `spillway_admission_duration_seconds`.
    pub duration: Histogram,
    /// `spillway_ineligible_pods_total{reason}`.
    pub ineligible: IntCounterVec,
    /// `spillway_admission_errors_total{kind}`: requests answered without a decision
    /// because something was wrong with them or with us.
    pub errors: IntCounterVec,
    /// `spillway_index_pods`: pods in the watch index.
    pub index_pods: IntGauge,
}

impl WebhookMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            decisions: IntCounterVec::new(
                Opts::new(
                    "spillway_admission_decisions_total",
                    "Pod admission decisions by placement and reason",
                ),
                &["decision", "reason"],
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new(
                    "spillway_admission_duration_seconds",
                    "Time to answer one admission review",
                )
                .buckets(vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
                ]),
            )?,
            ineligible: IntCounterVec::new(
                Opts::new(
                    "spillway_ineligible_pods_total",
                    "Opted-in pods that may not burst, by reason",
                ),
                &["reason"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "spillway_admission_errors_total",
                    "Reviews answered without a decision, by kind",
                ),
                &["kind"],
            )?,
            index_pods: IntGauge::new(
                "spillway_index_pods",
                "Pods held in the webhook's watch index",
            )?,
        };
        registry.register(Box::new(metrics.decisions.clone()))?;
        registry.register(Box::new(metrics.duration.clone()))?;
        registry.register(Box::new(metrics.ineligible.clone()))?;
        registry.register(Box::new(metrics.errors.clone()))?;
        registry.register(Box::new(metrics.index_pods.clone()))?;
        // Zero series from the start, so the error alert's rate() has something to read
        // before the first error.
        for kind in ERROR_KINDS {
            metrics.errors.with_label_values(&[kind]);
        }
        Ok(metrics)
    }
}
