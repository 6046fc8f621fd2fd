//! The controller's Prometheus metrics (DESIGN §6): per-workload placement, burst ratio
//! and cost, cluster request utilization, rebalance evictions, the config in force and
//! leadership.

use prometheus::{
    CounterVec, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::status::Status;

/// Controller metrics, registered once per process.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    /// `spillway_workload_replicas{namespace,workload,placement}`.
    pub workload_replicas: IntGaugeVec,
    /// `spillway_burst_ratio{namespace,workload}`.
    pub burst_ratio: GaugeVec,
    /// `spillway_oldest_burst_seconds{namespace,workload}`: age of the workload's oldest
    /// burst replica (absent while none is burst).
    pub oldest_burst: IntGaugeVec,
    /// `spillway_burst_pods{namespace,workload,phase}`: burst pods in phase Pending or
    /// Failed (the running ones are `spillway_workload_replicas{placement="burst"}`).
    pub burst_pods: IntGaugeVec,
    /// `spillway_workload_max_local{namespace,workload}`: the workload's
    /// `spillway.io/max-local` (absent without one): replicas beyond it burst by design.
    pub max_local: IntGaugeVec,
    /// `spillway_config_threshold{name}`: the thresholds in force (`capacity`, `hpa`,
    /// `rebalance_below`), for the dashboard's threshold lines.
    pub config_threshold: GaugeVec,
    /// `spillway_cluster_request_utilization{resource}`.
    pub cluster_utilization: GaugeVec,
    /// `spillway_burst_cost_usd_per_hour{namespace,workload,provider}`.
    pub burst_cost: GaugeVec,
    /// `spillway_burst_budget_usd_per_hour{scope="cluster"}`: `budget.maxUsdPerHour`;
    /// no series when there is no budget.
    pub budget: GaugeVec,
    /// `spillway_rebalance_evictions_total{result}`: `evicted`, `blocked` (a
    /// PodDisruptionBudget said 429), `error`.
    pub rebalance_evictions: IntCounterVec,
    /// `spillway_overshoot_evictions_total{result}`.
    pub overshoot_evictions: IntCounterVec,
    /// `spillway_pending_spills_total`.
    pub pending_spills: IntCounter,
    /// `spillway_unadmitted_pods_total{namespace,workload}`: pods of opted-in workloads
    /// the webhook never saw (it failed open), found and labelled by the controller.
    pub unadmitted: IntCounterVec,
    /// `spillway_provider_failovers_total{from,to}`: pods handed back because their
    /// provider kept refusing them; `to` is a provider or `local`.
    pub failovers: IntCounterVec,
    /// `spillway_deletion_cost_repairs_total`.
    pub deletion_cost_repairs: IntCounter,
    /// `spillway_controller_actions_failed_total{action}`.
    pub actions_failed: IntCounterVec,
    /// `spillway_shadow_actions{action}`: in shadow mode, what the last pass would have
    /// done, by kind (nothing is done).
    pub shadow_actions: IntGaugeVec,
    /// `spillway_controller_leader`: 1 while this replica acts.
    pub leader: IntGauge,
    /// `spillway_controller_reconcile_duration_seconds`.
    pub reconcile_duration: prometheus::Histogram,
    /// `spillway_backfill_requested{resource}`: CPU cores and memory bytes the backfill
    /// requests hold.
    pub backfill_requested: GaugeVec,
    /// `spillway_burst_usd_total{namespace,workload,provider}`: estimated USD spent on
    /// burst pods, integrated over their lifetimes (while this replica leads).
    pub burst_usd: CounterVec,
    /// `spillway_burst_duration_seconds`: how long a pod stayed burst, from its creation to
    /// its going (home or scaled in).
    pub burst_duration: prometheus::Histogram,
}

impl ControllerMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            workload_replicas: IntGaugeVec::new(
                Opts::new(
                    "spillway_workload_replicas",
                    "Replicas of opted-in workloads by placement",
                ),
                &["namespace", "workload", "placement"],
            )?,
            burst_ratio: GaugeVec::new(
                Opts::new(
                    "spillway_burst_ratio",
                    "Burst replicas / all replicas of a workload",
                ),
                &["namespace", "workload"],
            )?,
            burst_pods: IntGaugeVec::new(
                Opts::new(
                    "spillway_burst_pods",
                    "Burst pods in phase Pending or Failed, by workload and phase",
                ),
                &["namespace", "workload", "phase"],
            )?,
            max_local: IntGaugeVec::new(
                Opts::new(
                    "spillway_workload_max_local",
                    "The workload's spillway.io/max-local: replicas beyond it burst by design (absent without one)",
                ),
                &["namespace", "workload"],
            )?,
            config_threshold: GaugeVec::new(
                Opts::new(
                    "spillway_config_threshold",
                    "Thresholds in force: capacity (requests ratio to burst above), hpa (HPA replicas / maxReplicas to burst above), rebalance_below (requests ratio to bring burst replicas home under)",
                ),
                &["name"],
            )?,
            cluster_utilization: GaugeVec::new(
                Opts::new(
                    "spillway_cluster_request_utilization",
                    "Requests / allocatable over Ready, schedulable, regular nodes",
                ),
                &["resource"],
            )?,
            burst_cost: GaugeVec::new(
                Opts::new(
                    "spillway_burst_cost_usd_per_hour",
                    "Estimated USD per hour of a workload's burst pods",
                ),
                &["namespace", "workload", "provider"],
            )?,
            budget: GaugeVec::new(
                Opts::new(
                    "spillway_burst_budget_usd_per_hour",
                    "Configured budget for burst pods (budget.maxUsdPerHour); absent when none",
                ),
                &["scope"],
            )?,
            rebalance_evictions: IntCounterVec::new(
                Opts::new(
                    "spillway_rebalance_evictions_total",
                    "Rebalance evictions by result",
                ),
                &["result"],
            )?,
            overshoot_evictions: IntCounterVec::new(
                Opts::new(
                    "spillway_overshoot_evictions_total",
                    "Overshoot-correction evictions by result",
                ),
                &["result"],
            )?,
            pending_spills: IntCounter::new(
                "spillway_pending_spills_total",
                "Unschedulable pods allowed onto the virtual node",
            )?,
            unadmitted: IntCounterVec::new(
                Opts::new(
                    "spillway_unadmitted_pods_total",
                    "Pods of opted-in workloads created without the webhook's decision (it failed open: down, unreachable, slow or not registered), found and labelled by the controller",
                ),
                &["namespace", "workload"],
            )?,
            failovers: IntCounterVec::new(
                Opts::new(
                    "spillway_provider_failovers_total",
                    "Burst pods handed back because their provider kept refusing to create them, by the provider they left and where their replacement goes (a provider or local)",
                ),
                &["from", "to"],
            )?,
            deletion_cost_repairs: IntCounter::new(
                "spillway_deletion_cost_repairs_total",
                "Burst pods given their missing label or deletion cost",
            )?,
            actions_failed: IntCounterVec::new(
                Opts::new(
                    "spillway_controller_actions_failed_total",
                    "Controller API calls that failed, by action",
                ),
                &["action"],
            )?,
            oldest_burst: IntGaugeVec::new(
                Opts::new(
                    "spillway_oldest_burst_seconds",
                    "Age of the workload's oldest burst replica, seconds (absent while none is burst)",
                ),
                &["namespace", "workload"],
            )?,
            shadow_actions: IntGaugeVec::new(
                Opts::new(
                    "spillway_shadow_actions",
                    "In shadow mode: the actions the last controller pass would have taken, by kind (none is taken)",
                ),
                &["action"],
            )?,
            leader: IntGauge::new(
                "spillway_controller_leader",
                "1 while this replica is the acting controller",
            )?,
            reconcile_duration: prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(
                "spillway_controller_reconcile_duration_seconds",
                "Time of one controller pass",
            ))?,
            backfill_requested: GaugeVec::new(
                Opts::new(
                    "spillway_backfill_requested",
                    "Capacity requested from the cluster autoscaler for burst replicas (cpu in cores, memory in bytes)",
                ),
                &["resource"],
            )?,
            burst_usd: CounterVec::new(
                Opts::new(
                    "spillway_burst_usd_total",
                    "Estimated USD spent on burst pods, integrated over their lifetimes",
                ),
                &["namespace", "workload", "provider"],
            )?,
            burst_duration: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "spillway_burst_duration_seconds",
                    "Lifetime of a burst pod, from creation to going home or away",
                )
                .buckets(vec![
                    30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
                ]),
            )?,
        };
        registry.register(Box::new(metrics.backfill_requested.clone()))?;
        registry.register(Box::new(metrics.burst_usd.clone()))?;
        registry.register(Box::new(metrics.burst_duration.clone()))?;
        registry.register(Box::new(metrics.workload_replicas.clone()))?;
        registry.register(Box::new(metrics.burst_ratio.clone()))?;
        registry.register(Box::new(metrics.cluster_utilization.clone()))?;
        registry.register(Box::new(metrics.burst_cost.clone()))?;
        registry.register(Box::new(metrics.budget.clone()))?;
        registry.register(Box::new(metrics.rebalance_evictions.clone()))?;
        registry.register(Box::new(metrics.overshoot_evictions.clone()))?;
        registry.register(Box::new(metrics.pending_spills.clone()))?;
        registry.register(Box::new(metrics.failovers.clone()))?;
        registry.register(Box::new(metrics.unadmitted.clone()))?;
        registry.register(Box::new(metrics.deletion_cost_repairs.clone()))?;
        registry.register(Box::new(metrics.actions_failed.clone()))?;
        registry.register(Box::new(metrics.leader.clone()))?;
        registry.register(Box::new(metrics.reconcile_duration.clone()))?;
        registry.register(Box::new(metrics.shadow_actions.clone()))?;
        registry.register(Box::new(metrics.oldest_burst.clone()))?;
        registry.register(Box::new(metrics.burst_pods.clone()))?;
        registry.register(Box::new(metrics.max_local.clone()))?;
        registry.register(Box::new(metrics.config_threshold.clone()))?;
        for resource in ["cpu", "memory"] {
            metrics
                .backfill_requested
                .with_label_values(&[resource])
                .set(0.0);
        }
        for result in ["evicted", "blocked", "error"] {
            metrics.rebalance_evictions.with_label_values(&[result]);
            metrics.overshoot_evictions.with_label_values(&[result]);
        }
        // Every kind the executor reports, at 0, so rates and alerts see them from start.
        for action in [
            "mark_burst",
            "spill",
            "evict",
            "fail_over",
            "publish_event",
            "backfill",
            "timeout",
        ] {
            metrics.actions_failed.with_label_values(&[action]);
        }
        Ok(metrics)
    }

    /// Drops every gauge only the leader sets (the workloads, their costs and caps, the
    /// thresholds, the backfill requests, what shadow mode would do), so a replica that
    /// lost its lease never exports stale figures beside the new leader's.
    pub fn forget_leader_state(&self) {
        self.leader.set(0);
        self.shadow_actions.reset();
        self.clear_workloads();
        self.budget.reset();
        self.config_threshold.reset();
        for resource in ["cpu", "memory"] {
            self.backfill_requested
                .with_label_values(&[resource])
                .set(0.0);
        }
    }

    fn clear_workloads(&self) {
        self.workload_replicas.reset();
        self.burst_ratio.reset();
        self.burst_cost.reset();
        self.oldest_burst.reset();
        self.burst_pods.reset();
        self.max_local.reset();
    }

    /// Sets the gauges from a freshly computed status; workloads that went away drop out.
    pub fn observe(&self, status: &Status, costs_by_provider: &[(String, String, String, f64)]) {
        self.clear_workloads();
        for w in &status.workloads {
            let key = [w.namespace.as_str(), w.workload.as_str()];
            for (phase, count) in [("Pending", w.pending_burst), ("Failed", w.failed_burst)] {
                self.burst_pods
                    .with_label_values(&[key[0], key[1], phase])
                    .set(i64::from(count));
            }
            if let Some(cap) = w.max_local {
                self.max_local.with_label_values(&key).set(i64::from(cap));
            }
            if let Some(seconds) = w.oldest_burst_seconds {
                self.oldest_burst
                    .with_label_values(&[w.namespace.as_str(), w.workload.as_str()])
                    .set(i64::try_from(seconds).unwrap_or(i64::MAX));
            }
            let labels = [w.namespace.as_str(), w.workload.as_str()];
            self.workload_replicas
                .with_label_values(&[labels[0], labels[1], "local"])
                .set(i64::from(w.local));
            self.workload_replicas
                .with_label_values(&[labels[0], labels[1], "burst"])
                .set(i64::from(w.burst));
            self.burst_ratio
                .with_label_values(&labels)
                .set(w.burst_ratio);
        }
        for (namespace, workload, provider, usd) in costs_by_provider {
            self.burst_cost
                .with_label_values(&[namespace, workload, provider])
                .set(*usd);
        }
        let cluster = &status.cluster;
        self.cluster_utilization
            .with_label_values(&["cpu"])
            .set(cluster.cpu_utilization);
        self.cluster_utilization
            .with_label_values(&["memory"])
            .set(cluster.memory_utilization);
        self.budget.reset();
        if let Some(budget) = cluster.budget_usd_per_hour {
            self.budget.with_label_values(&["cluster"]).set(budget);
        }
        let t = &status.thresholds;
        for (name, value) in [
            ("capacity", t.capacity),
            ("hpa", t.hpa),
            ("rebalance_below", t.rebalance_below),
        ] {
            self.config_threshold.with_label_values(&[name]).set(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ClusterStatus, Thresholds, WorkloadStatus};

    fn samples(registry: &Registry, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
        registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric().iter())
            .map(|m| {
                let labels = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_owned(), l.value().to_owned()))
                    .collect();
                (labels, m.get_gauge().get_value())
            })
            .collect()
    }

    fn status() -> Status {
        Status {
            workloads: vec![WorkloadStatus {
                namespace: "shop".into(),
                workload: "web".into(),
                desired: 6,
                local: 2,
                burst: 4,
                burst_ratio: 4.0 / 6.0,
                last_reason: Some("max-local".into()),
                provider: "fargate".into(),
                usd_per_hour: 0.2,
                backfill: None,
                oldest_burst_seconds: Some(60),
                unadmitted: 0,
                pending_burst: 1,
                failed_burst: 2,
                max_local: Some(2),
                max_burst: None,
            }],
            cluster: ClusterStatus {
                cpu_utilization: 0.5,
                memory_utilization: 0.4,
                burst_usd_per_hour: 0.2,
                budget_usd_per_hour: Some(5.0),
                nodes_listed: true,
            },
            thresholds: Thresholds {
                capacity: 0.85,
                hpa: 0.8,
                rebalance_below: 0.6,
            },
            virtual_nodes: Vec::new(),
        }
    }

    #[test]
    fn a_replica_that_loses_the_lease_exports_none_of_the_leaders_gauges() {
        let registry = Registry::new();
        let metrics = ControllerMetrics::register(&registry).unwrap();
        metrics.leader.set(1);
        metrics.observe(
            &status(),
            &[("shop".into(), "web".into(), "fargate".into(), 0.2)],
        );
        metrics
            .backfill_requested
            .with_label_values(&["cpu"])
            .set(2.0);
        let web = |extra: &[(&str, &str)]| {
            let mut labels: Vec<(String, String)> = extra
                .iter()
                .chain(&[("namespace", "shop"), ("workload", "web")])
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            labels.sort();
            labels
        };
        let pods = samples(&registry, "spillway_burst_pods");
        assert!(
            pods.contains(&(web(&[("phase", "Pending")]), 1.0)),
            "{pods:?}"
        );
        assert!(
            pods.contains(&(web(&[("phase", "Failed")]), 2.0)),
            "{pods:?}"
        );
        assert_eq!(
            samples(&registry, "spillway_workload_max_local"),
            vec![(web(&[]), 2.0)]
        );
        let thresholds = samples(&registry, "spillway_config_threshold");
        assert!(
            thresholds.contains(&(vec![("name".into(), "capacity".into())], 0.85)),
            "{thresholds:?}"
        );
        let leader_only = [
            "spillway_workload_replicas",
            "spillway_burst_ratio",
            "spillway_burst_cost_usd_per_hour",
            "spillway_oldest_burst_seconds",
            "spillway_burst_pods",
            "spillway_workload_max_local",
            "spillway_config_threshold",
            "spillway_burst_budget_usd_per_hour",
        ];
        for name in leader_only {
            assert!(
                !samples(&registry, name).is_empty(),
                "{name} set while leading"
            );
        }

        metrics.forget_leader_state();
        for name in leader_only {
            assert!(
                samples(&registry, name).is_empty(),
                "{name} kept after the lease went"
            );
        }
        assert_eq!(samples(&registry, "spillway_controller_leader")[0].1, 0.0);
        assert!(
            samples(&registry, "spillway_backfill_requested")
                .iter()
                .all(|(_, value)| *value == 0.0)
        );
    }
}
