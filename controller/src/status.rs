//! Where each opted-in workload stands: desired, local and burst replicas, the last
//! reason the webhook gave, the provider and the estimated burst cost, plus the cluster's
//! request utilization and budget. One pure computation feeds the controller's metrics
//! and `spillway status`, so both say the same thing.

use std::collections::HashMap;

use serde::Serialize;
use spillway_cluster::index::ClusterIndex;
use spillway_cluster::policy;
use spillway_common::config::{OperatorConfig, Provider};
use spillway_common::cost;
use spillway_common::keys;

use crate::snapshot::PodView;

/// One workload's row.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// Namespace.
    pub namespace: String,
    /// Deployment name.
    pub workload: String,
    /// `spec.replicas`.
    pub desired: u32,
    /// Local replicas (pending or running, not being deleted).
    pub local: u32,
    /// Burst replicas.
    pub burst: u32,
    /// burst / (local + burst), 0 when there are none.
    pub burst_ratio: f64,
    /// `spillway.io/reason` of the newest pod, if any.
    pub last_reason: Option<String>,
    /// Where it bursts to.
    pub provider: String,
    /// Estimated USD per hour of its burst pods.
    pub usd_per_hour: f64,
    /// Replicas Spillway has asked the cluster's autoscaler for (the Deployment's
    /// `spillway.io/backfill`); `None` while no backfill request stands.
    pub backfill: Option<u32>,
    /// Age in seconds of its oldest live burst replica; `None` without one.
    pub oldest_burst_seconds: Option<u64>,
    /// Live replicas the webhook never saw (it failed open).
    pub unadmitted: u32,
    /// Burst replicas in phase Pending (not yet started at the provider, or refused).
    pub pending_burst: u32,
    /// Burst pods in phase Failed (not yet deleted).
    pub failed_burst: u32,
    /// `spillway.io/max-local`: replicas beyond it burst by design.
    pub max_local: Option<u32>,
    /// `spillway.io/max-burst` resolved against `desired`.
    pub max_burst: Option<u32>,
}

/// One virtual node's health.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualNodeStatus {
    /// Node name.
    pub name: String,
    /// Its `spillway.io/provider` (absent when the label names none Spillway knows).
    pub provider: Option<String>,
    /// Its Ready condition is True.
    pub ready: bool,
    /// It carries the `spillway.io/provider-degraded` taint (calls failing or set-up not
    /// ready): new burst pods go elsewhere.
    pub degraded: bool,
}

/// The thresholds in force (the operator config's).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Thresholds {
    /// `capacityThreshold`: request utilization above which new replicas burst.
    pub capacity: f64,
    /// `hpaThreshold`: HPA replicas / maxReplicas above which they burst.
    pub hpa: f64,
    /// `rebalance.belowUtilization`: utilization under which burst replicas come home.
    pub rebalance_below: f64,
}

impl Thresholds {
    /// The thresholds of `config`.
    pub fn of(config: &OperatorConfig) -> Self {
        Self {
            capacity: config.capacity_threshold,
            hpa: config.hpa_threshold,
            rebalance_below: config.rebalance.below_utilization,
        }
    }
}

/// The cluster line.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// CPU requests / allocatable over Ready, schedulable, regular nodes.
    pub cpu_utilization: f64,
    /// Memory requests / allocatable over the same nodes.
    pub memory_utilization: f64,
    /// Estimated USD per hour of every burst pod.
    pub burst_usd_per_hour: f64,
    /// Whether the Nodes could be listed: without them (a namespace-only caller) the
    /// utilization and the virtual nodes are unknown.
    pub nodes_listed: bool,
    /// `budget.maxUsdPerHour`, if set.
    pub budget_usd_per_hour: Option<f64>,
}

/// What `spillway status -o json` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    /// One row per opted-in workload, sorted by namespace and name.
    pub workloads: Vec<WorkloadStatus>,
    /// The cluster line.
    pub cluster: ClusterStatus,
    /// The thresholds in force.
    pub thresholds: Thresholds,
    /// The virtual nodes, sorted by name.
    pub virtual_nodes: Vec<VirtualNodeStatus>,
}

/// Computes the status; `namespace` filters the rows (not the cluster line).
pub fn compute(
    index: &ClusterIndex,
    pods: &[PodView],
    config: &OperatorConfig,
    namespace: Option<&str>,
    now_ms: i64,
) -> Status {
    let pricing = &config.pricing;
    let costs = index.burst_usd_by_workload(pricing, config.default_provider.for_pricing());
    let mut newest: HashMap<&str, &PodView> = HashMap::new();
    let mut oldest_burst_ms: HashMap<&str, i64> = HashMap::new();
    let mut unadmitted: HashMap<&str, u32> = HashMap::new();
    let mut pending_burst: HashMap<&str, u32> = HashMap::new();
    let mut failed_burst: HashMap<&str, u32> = HashMap::new();
    for pod in pods {
        if let Some(key) = pod.workload.as_deref() {
            if pod.is_live() && pod.unadmitted {
                *unadmitted.entry(key).or_default() += 1;
            }
            if pod.is_burst() && !pod.deleting {
                if pod.pending {
                    *pending_burst.entry(key).or_default() += 1;
                } else if pod.failed {
                    *failed_burst.entry(key).or_default() += 1;
                }
            }
            let entry = newest.entry(key).or_insert(pod);
            if pod.created_ms > entry.created_ms {
                *entry = pod;
            }
            if pod.is_live() && pod.is_burst() {
                let oldest = oldest_burst_ms.entry(key).or_insert(pod.created_ms);
                *oldest = (*oldest).min(pod.created_ms);
            }
        }
    }
    let mut workloads: Vec<WorkloadStatus> = index
        .workloads()
        .filter_map(|view| {
            let template = newest.get(view.key).map(|p| &p.spillway_annotations);
            let (policy, _) = policy::read(Some(view.annotations), template);
            if !policy.opted_in {
                return None;
            }
            let (ns, name) = view.key.split_once('/')?;
            if namespace.is_some_and(|wanted| wanted != ns) {
                return None;
            }
            let configured = policy.provider.unwrap_or(config.default_provider);
            let spent: Vec<(Provider, f64)> = costs
                .iter()
                .filter(|((key, _), _)| *key == view.key)
                .map(|((_, provider), usd)| (*provider, *usd))
                .collect();
            let provider = match spent.as_slice() {
                [(only, _)] => only.to_string(),
                [] => configured.to_string(),
                _ => "mixed".to_owned(),
            };
            let counts = view.counts;
            let total = counts.local + counts.burst;
            Some(WorkloadStatus {
                namespace: ns.to_owned(),
                workload: name.to_owned(),
                desired: view.replicas,
                local: counts.local,
                burst: counts.burst,
                burst_ratio: if total == 0 {
                    0.0
                } else {
                    f64::from(counts.burst) / f64::from(total)
                },
                last_reason: newest.get(view.key).and_then(|p| p.reason_label.clone()),
                provider,
                usd_per_hour: cost::round_usd(spent.iter().map(|(_, usd)| usd).sum()),
                backfill: view
                    .annotations
                    .get(keys::BACKFILL)
                    .and_then(|v| v.parse().ok()),
                oldest_burst_seconds: oldest_burst_ms
                    .get(view.key)
                    .map(|created| ((now_ms - created).max(0) / 1000) as u64),
                unadmitted: unadmitted.get(view.key).copied().unwrap_or(0),
                pending_burst: pending_burst.get(view.key).copied().unwrap_or(0),
                failed_burst: failed_burst.get(view.key).copied().unwrap_or(0),
                max_local: policy.max_local,
                max_burst: policy.max_burst.map(|cap| cap.resolve(view.replicas)),
            })
        })
        .collect();
    workloads.sort_by(|a, b| (&a.namespace, &a.workload).cmp(&(&b.namespace, &b.workload)));
    let (cpu, memory) = index.totals().utilization();
    Status {
        workloads,
        cluster: ClusterStatus {
            cpu_utilization: cpu,
            memory_utilization: memory,
            burst_usd_per_hour: cost::round_usd(index.burst_usd_per_hour(
                None,
                pricing,
                config.default_provider.for_pricing(),
            )),
            budget_usd_per_hour: config.budget.max_usd_per_hour,
            nodes_listed: true,
        },
        thresholds: Thresholds::of(config),
        virtual_nodes: virtual_nodes(index),
    }
}

fn virtual_nodes(index: &ClusterIndex) -> Vec<VirtualNodeStatus> {
    let mut nodes: Vec<VirtualNodeStatus> = index
        .virtual_nodes()
        .map(|name| VirtualNodeStatus {
            name: name.to_owned(),
            provider: index.node_provider(name).map(|p| p.to_string()),
            ready: index.node_ready(name),
            degraded: index.node_has_taint(name, keys::PROVIDER_DEGRADED_TAINT),
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

/// The status as a table for people.
pub fn table(status: &Status) -> String {
    let header = [
        "NAMESPACE",
        "WORKLOAD",
        "DESIRED",
        "LOCAL",
        "BURST",
        "RATIO",
        "PENDING/FAILED",
        "CAPS",
        "LAST REASON",
        "PROVIDER",
        "USD/HOUR",
        "OLDEST BURST",
        "BACKFILL",
        "UNADMITTED",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for w in &status.workloads {
        rows.push(vec![
            w.namespace.clone(),
            w.workload.clone(),
            w.desired.to_string(),
            w.local.to_string(),
            w.burst.to_string(),
            format!("{:.0}%", w.burst_ratio * 100.0),
            format!("{}/{}", w.pending_burst, w.failed_burst),
            caps(w),
            w.last_reason.clone().unwrap_or_else(|| "-".into()),
            w.provider.clone(),
            format!("{:.4}", w.usd_per_hour),
            w.oldest_burst_seconds
                .map_or("-".to_owned(), |s| format!("{s}s")),
            w.backfill
                .map_or("-".to_owned(), |n| format!("requested {n}")),
            w.unadmitted.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    if status.workloads.is_empty() {
        out.push_str(
            "no opted-in workloads (annotate a Deployment with spillway.io/burst: \"true\")\n",
        );
    } else {
        for row in &rows {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
    }
    let c = &status.cluster;
    let budget = c
        .budget_usd_per_hour
        .map_or("none".to_owned(), |b| format!("{b:.4} USD/hour"));
    if c.nodes_listed {
        out.push_str(&format!(
            "\ncluster: CPU requests {:.0}%, memory requests {:.0}% of regular nodes; burst {:.4} USD/hour; budget {budget}\n",
            c.cpu_utilization * 100.0,
            c.memory_utilization * 100.0,
            c.burst_usd_per_hour,
        ));
    } else {
        out.push_str(&format!(
            "\ncluster: utilization and burst cost unknown (your access cannot list nodes); budget {budget}\n"
        ));
    }
    let t = &status.thresholds;
    out.push_str(&format!(
        "thresholds: burst above {:.0}% requests or {:.0}% of HPA maxReplicas; home below {:.0}%\n",
        t.capacity * 100.0,
        t.hpa * 100.0,
        t.rebalance_below * 100.0,
    ));
    if c.nodes_listed {
        out.push_str(&virtual_nodes_line(&status.virtual_nodes));
    } else {
        out.push_str("virtual nodes: unknown (your access cannot list nodes)\n");
    }
    out
}

/// `max-local` and `max-burst` of a row, `-` without either.
fn caps(w: &WorkloadStatus) -> String {
    let caps: Vec<String> = [("local", w.max_local), ("burst", w.max_burst)]
        .into_iter()
        .filter_map(|(name, cap)| cap.map(|n| format!("{name}<={n}")))
        .collect();
    if caps.is_empty() {
        "-".to_owned()
    } else {
        caps.join(",")
    }
}

fn virtual_nodes_line(nodes: &[VirtualNodeStatus]) -> String {
    if nodes.is_empty() {
        return "virtual nodes: none registered (burst pods wait Pending)\n".to_owned();
    }
    let health: Vec<String> = nodes
        .iter()
        .map(|n| {
            let state = match (n.ready, n.degraded) {
                (false, _) => "NotReady",
                (true, true) => "degraded",
                (true, false) => "Ready",
            };
            format!(
                "{} ({}) {state}",
                n.name,
                n.provider.as_deref().unwrap_or("unknown provider")
            )
        })
        .collect();
    format!("virtual nodes: {}\n", health.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use spillway_common::config::ProviderChoice;

    #[test]
    fn rows_for_opted_in_workloads_only() {
        let mut index = ClusterIndex::new();
        index.apply_node(
            &serde_json::from_value(json!({"metadata": {"name": "a"},
                "status": {"allocatable": {"cpu": "4", "memory": "16Gi"}, "conditions": [{"type": "Ready", "status": "True"}]}}))
            .unwrap(),
        );
        index.apply_node(
            &serde_json::from_value(json!({"metadata": {"name": "vk", "labels": {"type": "virtual-kubelet", "spillway.io/provider": "fargate"}},
                "status": {"allocatable": {"cpu": "100", "memory": "400Gi"}, "conditions": [{"type": "Ready", "status": "True"}]}}))
            .unwrap(),
        );
        for (name, opted) in [("web", true), ("plain", false)] {
            let annotations = if opted {
                json!({"spillway.io/burst": "true", "spillway.io/max-local": "1"})
            } else {
                json!({})
            };
            index.apply_deployment(
                &serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns", "uid": name, "annotations": annotations},
                    "spec": {"replicas": 2, "selector": {}, "template": {}}}))
                .unwrap(),
            );
            index.apply_replicaset(
                &serde_json::from_value(json!({"metadata": {"name": format!("{name}-1"), "namespace": "ns", "uid": format!("rs-{name}"),
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": name, "controller": true}]}}))
                .unwrap(),
            );
        }
        let pod_in = |phase: &str,
                      name: &str,
                      node: &str,
                      reason: &str,
                      created: &str|
         -> k8s_openapi::api::core::v1::Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "uid": name, "creationTimestamp": created,
                    "labels": {"spillway.io/placement": if node == "vk" {"burst"} else {"local"}, "spillway.io/reason": reason},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "rs-web", "controller": true}]},
                "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}]},
                "status": {"phase": phase}
            }))
            .unwrap()
        };
        let pod = |name: &str, node: &str, reason: &str, created: &str| {
            pod_in("Running", name, node, reason, created)
        };
        let pods = [
            pod("p1", "a", "no-pressure", "2026-01-01T00:00:00Z"),
            pod("p2", "vk", "capacity", "2026-01-01T00:00:05Z"),
        ];
        for p in &pods {
            index.apply_pod(p);
        }
        let views: Vec<PodView> = pods
            .iter()
            .filter_map(|p| PodView::from_pod(p, &index, ProviderChoice::Fargate))
            .collect();
        let config = OperatorConfig::default();
        // Ten seconds after p2 (the burst one) was created.
        let now_ms = jiff::Timestamp::from_second(1_767_225_615)
            .unwrap()
            .as_millisecond();
        let status = compute(&index, &views, &config, None, now_ms);
        assert_eq!(status.workloads.len(), 1);
        let row = &status.workloads[0];
        assert_eq!((row.desired, row.local, row.burst), (2, 1, 1));
        assert_eq!(row.burst_ratio, 0.5);
        assert_eq!(row.last_reason.as_deref(), Some("capacity"));
        assert_eq!(row.provider, "fargate");
        // 1 vCPU / 2 GiB Fargate task.
        assert!(
            (row.usd_per_hour - 0.04937).abs() < 1e-6,
            "{}",
            row.usd_per_hour
        );
        assert_eq!(status.cluster.cpu_utilization, 0.25);
        assert_eq!(status.cluster.burst_usd_per_hour, row.usd_per_hour);
        assert!(
            compute(&index, &views, &config, Some("other"), now_ms)
                .workloads
                .is_empty()
        );
        let text = table(&status);
        assert!(
            text.contains("web") && text.contains("50%") && text.contains("budget none"),
            "{text}"
        );
        assert!(
            text.contains("thresholds: burst above 85% requests")
                && text.contains("virtual nodes: vk (fargate) Ready"),
            "{text}"
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["workloads"][0]["burstRatio"], 0.5);
        assert_eq!(json["workloads"][0]["usdPerHour"], row.usd_per_hour);
        assert!(json["cluster"]["budgetUsdPerHour"].is_null());
        assert_eq!(json["workloads"][0]["oldestBurstSeconds"], 10);
        assert!(json["workloads"][0]["backfill"].is_null());
        assert_eq!(json["workloads"][0]["maxLocal"], 1);
        assert!(text.contains("local<=1"), "{text}");

        // A burst pod the provider has not started, and one it failed.
        let stuck = [
            pod_in("Pending", "p3", "vk", "capacity", "2026-01-01T00:00:06Z"),
            pod_in("Failed", "p4", "vk", "capacity", "2026-01-01T00:00:07Z"),
        ];
        for p in &stuck {
            index.apply_pod(p);
        }
        let views: Vec<PodView> = pods
            .iter()
            .chain(&stuck)
            .filter_map(|p| PodView::from_pod(p, &index, ProviderChoice::Fargate))
            .collect();
        let status = compute(&index, &views, &config, None, now_ms);
        let row = &status.workloads[0];
        assert_eq!((row.pending_burst, row.failed_burst), (1, 1));
        assert!(table(&status).contains("1/1"), "{}", table(&status));
    }
}
