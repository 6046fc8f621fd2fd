//! A pod's effective resource requests: what the scheduler reserves and what a provider
//! must size for (the sum over containers, or the largest init container if bigger).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity;

/// CPU and memory a pod needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodResources {
    /// Millicores.
    pub cpu_millis: u64,
    /// Bytes.
    pub memory_bytes: u64,
    /// Whether any container named a CPU request or limit.
    pub cpu_specified: bool,
    /// Whether any container named a memory request or limit.
    pub memory_specified: bool,
}

fn lookup<'a>(resources: Option<&'a ResourceRequirements>, name: &str) -> Option<&'a Quantity> {
    let resources = resources?;
    resources
        .requests
        .as_ref()
        .and_then(|r| r.get(name))
        .or_else(|| resources.limits.as_ref().and_then(|l| l.get(name)))
}

fn container_needs(container: &Container) -> PodResources {
    let resources = container.resources.as_ref();
    let cpu = lookup(resources, "cpu");
    let memory = lookup(resources, "memory");
    // The apiserver validated the quantities; one this parser cannot read counts as too
    // large to place anywhere, never as nothing.
    PodResources {
        cpu_millis: cpu.map_or(0, |q| quantity::cpu_millis(&q.0).unwrap_or(u64::MAX)),
        memory_bytes: memory.map_or(0, |q| quantity::bytes(&q.0).unwrap_or(u64::MAX)),
        cpu_specified: cpu.is_some(),
        memory_specified: memory.is_some(),
    }
}

fn overhead<'a>(
    overhead: Option<&'a BTreeMap<String, Quantity>>,
    name: &str,
) -> Option<&'a Quantity> {
    overhead.and_then(|o| o.get(name))
}

/// The pod's effective needs: per resource, the larger of the sum over app containers and
/// the largest init container (limits standing in for absent requests), plus pod overhead.
pub fn effective(spec: &PodSpec) -> PodResources {
    let mut sum = PodResources::default();
    for needs in spec.containers.iter().map(container_needs) {
        sum.cpu_millis = sum.cpu_millis.saturating_add(needs.cpu_millis);
        sum.memory_bytes = sum.memory_bytes.saturating_add(needs.memory_bytes);
        sum.cpu_specified |= needs.cpu_specified;
        sum.memory_specified |= needs.memory_specified;
    }
    for needs in spec.init_containers.iter().flatten().map(container_needs) {
        sum.cpu_millis = sum.cpu_millis.max(needs.cpu_millis);
        sum.memory_bytes = sum.memory_bytes.max(needs.memory_bytes);
        sum.cpu_specified |= needs.cpu_specified;
        sum.memory_specified |= needs.memory_specified;
    }
    let extra = spec.overhead.as_ref();
    if let Some(cpu) = overhead(extra, "cpu") {
        let cpu = quantity::cpu_millis(&cpu.0).unwrap_or(u64::MAX);
        sum.cpu_millis = sum.cpu_millis.saturating_add(cpu);
    }
    if let Some(memory) = overhead(extra, "memory") {
        let memory = quantity::bytes(&memory.0).unwrap_or(u64::MAX);
        sum.memory_bytes = sum.memory_bytes.saturating_add(memory);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> PodSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn huge_requests_saturate_instead_of_wrapping_to_a_small_pod() {
        // 2^64 - 1 bytes plus 2 bytes wraps to 1 byte without saturation.
        let needs = effective(&spec(json!({"containers": [
            {"name": "a", "resources": {"requests": {"memory": "18446744073709551615", "cpu": "9E"}}},
            {"name": "b", "resources": {"requests": {"memory": "2", "cpu": "9E"}}}
        ], "overhead": {"cpu": "1", "memory": "1"}})));
        assert_eq!(needs.memory_bytes, u64::MAX);
        assert_eq!(needs.cpu_millis, u64::MAX);
    }

    #[test]
    fn sums_containers_and_takes_larger_init() {
        let s = spec(json!({
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}}}
            ],
            "initContainers": [
                {"name": "i", "resources": {"requests": {"cpu": "2", "memory": "64Mi"}}}
            ]
        }));
        let r = effective(&s);
        assert_eq!(r.cpu_millis, 2000);
        assert_eq!(r.memory_bytes, (256 << 20) + (1 << 30));
        assert!(r.cpu_specified && r.memory_specified);
    }

    #[test]
    fn nothing_specified() {
        let r = effective(&spec(json!({"containers": [{"name": "a"}]})));
        assert_eq!(r, PodResources::default());
    }
}
