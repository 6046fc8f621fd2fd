//! How the node reports what its pods use, in the two shapes Kubernetes tools read: the
//! kubelet Summary API (`/stats/summary`) and the kubelet's resource-metrics Prometheus
//! text (`/metrics/resource`, which metrics-server scrapes). Pure: samples in, documents
//! out.

use std::collections::HashMap;
use std::fmt::Write;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::provider::{ContainerUsage, PodUsage};

/// One pod's usage with the pod it belongs to.
#[derive(Clone, Debug)]
pub struct PodSample {
    /// The pod as the node sees it.
    pub pod: Pod,
    /// What the provider measured.
    pub usage: PodUsage,
}

/// The node's totals at one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeTotals {
    /// When (ms since the epoch).
    pub sampled_at_ms: i64,
    /// CPU in use now, nanocores.
    pub cpu_nano_cores: u64,
    /// CPU used by every pod the node ever reported, core-nanoseconds (never decreases).
    pub cpu_core_nano_seconds: u64,
    /// Memory working set of the pods reported now, bytes.
    pub memory_working_set_bytes: u64,
}

/// Integrates a CPU rate that may change between samples into cumulative CPU time.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuMeter {
    /// Core-nanoseconds used up to `at_ms`.
    used: u64,
    /// Rate since `at_ms`, in nanocores.
    nano_cores: u64,
    /// Last sample (ms since the epoch); `None` before the first.
    at_ms: Option<i64>,
}

impl CpuMeter {
    /// Advances to `now_ms` (starting at `started_ms` on the first sample) and sets the
    /// rate from now on; returns the cumulative use at `now_ms`.
    pub fn sample(&mut self, started_ms: i64, now_ms: i64, nano_cores: u64) -> u64 {
        let (from, rate) = match self.at_ms {
            Some(at) => (at, self.nano_cores),
            None => (started_ms, nano_cores),
        };
        let elapsed_ms = u64::try_from(now_ms.saturating_sub(from)).unwrap_or(0);
        // nanocores × ms / 1000 = core-nanoseconds.
        let used = u128::from(rate) * u128::from(elapsed_ms) / 1000;
        self.used = self
            .used
            .saturating_add(u64::try_from(used).unwrap_or(u64::MAX));
        self.nano_cores = nano_cores;
        self.at_ms = Some(now_ms);
        self.used
    }
}

/// Keeps the node's cumulative CPU monotonic as pods come and go: each sample adds what
/// every pod used since its previous sample (a pod seen for the first time, or whose
/// counter went back because it restarted, adds its whole counter).
#[derive(Debug, Default)]
pub struct NodeCpuCounter {
    total: u64,
    last_by_pod: HashMap<String, u64>,
}

impl NodeCpuCounter {
    /// Advances the counter with `samples` and returns the node's totals, stamped with
    /// the newest pod sample's time (the instant its counters were read, so a scraper's
    /// rate from two node samples matches the pods'), or `now_ms` with no pods.
    pub fn advance(&mut self, samples: &[PodSample], now_ms: i64) -> NodeTotals {
        let sampled_at_ms = samples
            .iter()
            .map(|s| s.usage.sampled_at_ms)
            .max()
            .unwrap_or(now_ms);
        let mut seen = HashMap::with_capacity(samples.len());
        let (mut nano_cores, mut memory) = (0u64, 0u64);
        for sample in samples {
            let uid = sample.pod.metadata.uid.clone().unwrap_or_default();
            let used = pod_cpu_used(&sample.usage);
            let previous = self.last_by_pod.get(&uid).copied().unwrap_or(0);
            let delta = if used >= previous {
                used - previous
            } else {
                used
            };
            self.total = self.total.saturating_add(delta);
            seen.insert(uid, used);
            nano_cores = nano_cores.saturating_add(pod_cpu_now(&sample.usage));
            memory = memory.saturating_add(pod_memory(&sample.usage));
        }
        self.last_by_pod = seen;
        NodeTotals {
            sampled_at_ms,
            cpu_nano_cores: nano_cores,
            cpu_core_nano_seconds: self.total,
            memory_working_set_bytes: memory,
        }
    }
}

fn pod_cpu_used(usage: &PodUsage) -> u64 {
    usage
        .containers
        .iter()
        .fold(0u64, |sum, c| sum.saturating_add(c.cpu_core_nano_seconds))
}

fn pod_cpu_now(usage: &PodUsage) -> u64 {
    usage
        .containers
        .iter()
        .fold(0u64, |sum, c| sum.saturating_add(c.cpu_nano_cores))
}

fn pod_memory(usage: &PodUsage) -> u64 {
    usage.containers.iter().fold(0u64, |sum, c| {
        sum.saturating_add(c.memory_working_set_bytes)
    })
}

fn rfc3339_ms(ms: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn cpu_stats(at: &str, nano_cores: u64, core_nano_seconds: u64) -> Value {
    json!({"time": at, "usageNanoCores": nano_cores, "usageCoreNanoSeconds": core_nano_seconds})
}

fn memory_stats(at: &str, working_set: u64) -> Value {
    json!({"time": at, "workingSetBytes": working_set, "usageBytes": working_set})
}

fn container_stats(container: &ContainerUsage, at: &str) -> Value {
    let mut stats = json!({
        "name": container.name,
        "cpu": cpu_stats(at, container.cpu_nano_cores, container.cpu_core_nano_seconds),
        "memory": memory_stats(at, container.memory_working_set_bytes),
    });
    if let Some(started) = container.started_at_ms {
        stats["startTime"] = json!(rfc3339_ms(started));
    }
    stats
}

/// The kubelet Summary API document (`stats/v1alpha1` `Summary`).
pub fn summary(
    node_name: &str,
    node_started_ms: i64,
    node: NodeTotals,
    pods: &[PodSample],
) -> Value {
    let node_at = rfc3339_ms(node.sampled_at_ms);
    let pods: Vec<Value> = pods
        .iter()
        .map(|sample| {
            let at = rfc3339_ms(sample.usage.sampled_at_ms);
            let meta = &sample.pod.metadata;
            let mut pod = json!({
                "podRef": {
                    "name": meta.name.as_deref().unwrap_or_default(),
                    "namespace": meta.namespace.as_deref().unwrap_or_default(),
                    "uid": meta.uid.as_deref().unwrap_or_default(),
                },
                "containers": sample.usage.containers.iter().map(|c| container_stats(c, &at)).collect::<Vec<_>>(),
                "cpu": cpu_stats(&at, pod_cpu_now(&sample.usage), pod_cpu_used(&sample.usage)),
                "memory": memory_stats(&at, pod_memory(&sample.usage)),
            });
            if let Some(started) = sample.pod.status.as_ref().and_then(|s| s.start_time.as_ref()) {
                pod["startTime"] = json!(started.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
            }
            pod
        })
        .collect();
    json!({
        "node": {
            "nodeName": node_name,
            "startTime": rfc3339_ms(node_started_ms),
            "cpu": cpu_stats(&node_at, node.cpu_nano_cores, node.cpu_core_nano_seconds),
            "memory": memory_stats(&node_at, node.memory_working_set_bytes),
        },
        "pods": pods,
    })
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn seconds(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

/// One metric family: its help and type lines, then its series.
fn family(out: &mut String, name: &str, kind: &str, help: &str, series: &[(String, f64, i64)]) {
    let _ = writeln!(out, "# HELP {name} [STABLE] {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value, at_ms) in series {
        let _ = writeln!(out, "{name}{labels} {value} {at_ms}");
    }
}

/// The kubelet's `/metrics/resource` text: node, pod and container CPU and working set,
/// container start times, each series with its sample's timestamp (ms), as metrics-server
/// reads them.
pub fn resource_metrics(node: NodeTotals, pods: &[PodSample]) -> String {
    let mut container_cpu = Vec::new();
    let mut container_memory = Vec::new();
    let mut container_start = Vec::new();
    let mut pod_cpu = Vec::new();
    let mut pod_memory_series = Vec::new();
    for sample in pods {
        let namespace = label(sample.pod.metadata.namespace.as_deref().unwrap_or_default());
        let name = label(sample.pod.metadata.name.as_deref().unwrap_or_default());
        let at = sample.usage.sampled_at_ms;
        for container in &sample.usage.containers {
            let labels = format!(
                "{{container=\"{}\",namespace=\"{namespace}\",pod=\"{name}\"}}",
                label(&container.name)
            );
            container_cpu.push((labels.clone(), seconds(container.cpu_core_nano_seconds), at));
            container_memory.push((
                labels.clone(),
                container.memory_working_set_bytes as f64,
                at,
            ));
            if let Some(started) = container.started_at_ms {
                container_start.push((labels, started as f64 / 1000.0, at));
            }
        }
        let labels = format!("{{namespace=\"{namespace}\",pod=\"{name}\"}}");
        pod_cpu.push((labels.clone(), seconds(pod_cpu_used(&sample.usage)), at));
        pod_memory_series.push((labels, pod_memory(&sample.usage) as f64, at));
    }
    let node_at = node.sampled_at_ms;
    let mut out = String::new();
    family(
        &mut out,
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
        &container_cpu,
    );
    family(
        &mut out,
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
        &container_memory,
    );
    family(
        &mut out,
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
        &container_start,
    );
    family(
        &mut out,
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
        &[(String::new(), seconds(node.cpu_core_nano_seconds), node_at)],
    );
    family(
        &mut out,
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
        &[(String::new(), node.memory_working_set_bytes as f64, node_at)],
    );
    family(
        &mut out,
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
        &pod_cpu,
    );
    family(
        &mut out,
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
        &pod_memory_series,
    );
    let _ = writeln!(
        out,
        "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise"
    );
    let _ = writeln!(out, "# TYPE resource_scrape_error gauge");
    let _ = writeln!(out, "resource_scrape_error 0");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn sample(uid: &str, used: u64, now: u64, memory: u64, at_ms: i64) -> PodSample {
        PodSample {
            pod: Pod {
                metadata: ObjectMeta {
                    name: Some(format!("web-{uid}")),
                    namespace: Some("shop".into()),
                    uid: Some(uid.into()),
                    ..ObjectMeta::default()
                },
                ..Pod::default()
            },
            usage: PodUsage {
                sampled_at_ms: at_ms,
                containers: vec![ContainerUsage {
                    name: "app".into(),
                    started_at_ms: Some(1_700_000_000_000),
                    cpu_nano_cores: now,
                    cpu_core_nano_seconds: used,
                    memory_working_set_bytes: memory,
                }],
            },
        }
    }

    #[test]
    fn the_cpu_meter_integrates_each_rate_over_the_time_it_held() {
        let mut meter = CpuMeter::default();
        // Started at 0 and first sampled at 2 s with 0.5 cores: 1 core-second.
        assert_eq!(meter.sample(0, 2_000, 500_000_000), 1_000_000_000);
        // The rate drops to 0.1 cores; the 0.5 held until now, so 1 s more adds 0.5.
        assert_eq!(meter.sample(0, 3_000, 100_000_000), 1_500_000_000);
        assert_eq!(meter.sample(0, 4_000, 100_000_000), 1_600_000_000);
    }

    #[test]
    fn the_node_counter_never_goes_back_when_pods_leave_or_restart() {
        let mut counter = NodeCpuCounter::default();
        let first = counter.advance(&[sample("a", 100, 5, 10, 1), sample("b", 50, 5, 20, 1)], 1);
        assert_eq!(first.cpu_core_nano_seconds, 150);
        assert_eq!(first.memory_working_set_bytes, 30);
        // b is gone and a used 30 more: 180, not 130.
        let second = counter.advance(&[sample("a", 130, 5, 10, 2)], 2);
        assert_eq!(second.cpu_core_nano_seconds, 180);
        // a restarted (its counter went back to 7): 7 is new use.
        let third = counter.advance(&[sample("a", 7, 5, 10, 3)], 3);
        assert_eq!(third.cpu_core_nano_seconds, 187);
        assert_eq!(third.cpu_nano_cores, 5);
    }

    #[test]
    fn node_totals_carry_the_time_the_pod_counters_were_read() {
        // Stamping the node with the time of the scrape instead (later than the read)
        // made metrics-server's node rate drift from the pods' sum (701m for 700m).
        let mut counter = NodeCpuCounter::default();
        let read = counter.advance(&[sample("a", 1, 1, 1, 40), sample("b", 1, 1, 1, 42)], 45);
        assert_eq!(read.sampled_at_ms, 42);
        assert_eq!(counter.advance(&[], 45).sampled_at_ms, 45);
    }

    #[test]
    fn resource_metrics_use_the_kubelets_names_labels_and_timestamps() {
        let pods = [sample(
            "a",
            2_500_000_000,
            250_000_000,
            64 << 20,
            1_700_000_100_000,
        )];
        let node = NodeCpuCounter::default().advance(&pods, 1_700_000_100_500);
        let text = resource_metrics(node, &pods);
        for line in [
            "container_cpu_usage_seconds_total{container=\"app\",namespace=\"shop\",pod=\"web-a\"} 2.5 1700000100000",
            "container_memory_working_set_bytes{container=\"app\",namespace=\"shop\",pod=\"web-a\"} 67108864 1700000100000",
            "container_start_time_seconds{container=\"app\",namespace=\"shop\",pod=\"web-a\"} 1700000000 1700000100000",
            "pod_cpu_usage_seconds_total{namespace=\"shop\",pod=\"web-a\"} 2.5 1700000100000",
            "pod_memory_working_set_bytes{namespace=\"shop\",pod=\"web-a\"} 67108864 1700000100000",
            "node_cpu_usage_seconds_total 2.5 1700000100000",
            "node_memory_working_set_bytes 67108864 1700000100000",
            "# TYPE container_cpu_usage_seconds_total counter",
            "resource_scrape_error 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn the_summary_has_the_kubelet_shape() {
        let pods = [sample(
            "a",
            2_500_000_000,
            250_000_000,
            64 << 20,
            1_700_000_100_000,
        )];
        let node = NodeCpuCounter::default().advance(&pods, 1_700_000_100_000);
        let doc = summary("spillway-mock", 1_700_000_000_000, node, &pods);
        assert_eq!(doc["node"]["nodeName"], "spillway-mock");
        assert_eq!(doc["node"]["cpu"]["usageNanoCores"], 250_000_000);
        assert_eq!(doc["node"]["memory"]["workingSetBytes"], 64 << 20);
        let pod = &doc["pods"][0];
        assert_eq!(pod["podRef"]["uid"], "a");
        assert_eq!(pod["cpu"]["usageCoreNanoSeconds"], 2_500_000_000u64);
        assert_eq!(pod["containers"][0]["name"], "app");
        assert_eq!(pod["containers"][0]["startTime"], "2023-11-14T22:13:20Z");
        assert_eq!(
            pod["containers"][0]["memory"]["time"],
            "2023-11-14T22:15:00Z"
        );
    }
}
