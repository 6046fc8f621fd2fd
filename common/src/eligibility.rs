//! Which pods may never burst (DESIGN §3 "Eligibility"), each refusal with a reason that
//! doubles as a metric label.

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::config::Provider;
use crate::pod_resources::PodResources;

/// Largest Fargate task: 16 vCPU (AWS Fargate task size table).
pub const FARGATE_MAX_CPU_MILLIS: u64 = 16_000;
/// Largest Fargate task: 120 GiB.
pub const FARGATE_MAX_MEMORY_BYTES: u64 = 120 << 30;
/// Largest ACI container group in most regions: 4 vCPU (ACI "resource availability by region").
pub const ACI_MAX_CPU_MILLIS: u64 = 4_000;
/// Largest ACI container group in most regions: 16 GiB.
pub const ACI_MAX_MEMORY_BYTES: u64 = 16 << 30;

/// Why a pod may not burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ineligible {
    /// `hostNetwork: true`.
    HostNetwork,
    /// `hostPID: true`.
    HostPid,
    /// `hostIPC: true`.
    HostIpc,
    /// A `hostPath` volume.
    HostPath,
    /// A privileged container.
    Privileged,
    /// A container port with `hostPort`.
    HostPort,
    /// Owned by a DaemonSet.
    DaemonSet,
    /// A PersistentVolumeClaim volume.
    PersistentVolumeClaim,
    /// Asks for a GPU.
    Gpu,
    /// Larger than the provider's largest size.
    TooLarge,
}

impl Ineligible {
    /// Short kebab-case name, used as a metric label and in warnings.
    pub fn as_str(self) -> &'static str {
        match self {
            Ineligible::HostNetwork => "host-network",
            Ineligible::HostPid => "host-pid",
            Ineligible::HostIpc => "host-ipc",
            Ineligible::HostPath => "host-path",
            Ineligible::Privileged => "privileged",
            Ineligible::HostPort => "host-port",
            Ineligible::DaemonSet => "daemonset",
            Ineligible::PersistentVolumeClaim => "persistent-volume-claim",
            Ineligible::Gpu => "gpu",
            Ineligible::TooLarge => "too-large",
        }
    }
}

/// The largest pod `provider` can run: (millicores, bytes).
pub fn provider_max(provider: Provider) -> (u64, u64) {
    match provider {
        Provider::Fargate => (FARGATE_MAX_CPU_MILLIS, FARGATE_MAX_MEMORY_BYTES),
        Provider::Aci => (ACI_MAX_CPU_MILLIS, ACI_MAX_MEMORY_BYTES),
    }
}

fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.into_iter().flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    })
}

fn asks_for_gpu(container: &Container) -> bool {
    let Some(resources) = container.resources.as_ref() else {
        return false;
    };
    [resources.requests.as_ref(), resources.limits.as_ref()]
        .into_iter()
        .flatten()
        .flat_map(|m| m.keys())
        .any(|name| name.ends_with("/gpu") || name.contains("gpu"))
}

/// Every reason `pod` (needing `needs`) may not run on `provider`; empty when eligible.
pub fn check(pod: &Pod, needs: &PodResources, provider: Provider) -> Vec<Ineligible> {
    let mut reasons = Vec::new();
    if let Some(spec) = pod.spec.as_ref() {
        if spec.host_network == Some(true) {
            reasons.push(Ineligible::HostNetwork);
        }
        if spec.host_pid == Some(true) {
            reasons.push(Ineligible::HostPid);
        }
        if spec.host_ipc == Some(true) {
            reasons.push(Ineligible::HostIpc);
        }
        let volumes = spec.volumes.iter().flatten();
        if volumes.clone().any(|v| v.host_path.is_some()) {
            reasons.push(Ineligible::HostPath);
        }
        if all_containers(pod).any(|c| {
            c.security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false)
        }) {
            reasons.push(Ineligible::Privileged);
        }
        if all_containers(pod)
            .flat_map(|c| c.ports.iter().flatten())
            .any(|p| p.host_port.is_some_and(|port| port != 0))
        {
            reasons.push(Ineligible::HostPort);
        }
        if volumes
            .clone()
            .any(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some())
        {
            reasons.push(Ineligible::PersistentVolumeClaim);
        }
    }
    let owned_by_daemonset = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet");
    if owned_by_daemonset {
        reasons.push(Ineligible::DaemonSet);
    }
    if all_containers(pod).any(asks_for_gpu) {
        reasons.push(Ineligible::Gpu);
    }
    let (max_cpu, max_memory) = provider_max(provider);
    if needs.cpu_millis > max_cpu || needs.memory_bytes > max_memory {
        reasons.push(Ineligible::TooLarge);
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_resources;
    use serde_json::json;

    fn reasons(pod: serde_json::Value, provider: Provider) -> Vec<Ineligible> {
        let pod: Pod = serde_json::from_value(pod).unwrap();
        let needs = pod_resources::effective(pod.spec.as_ref().unwrap());
        check(&pod, &needs, provider)
    }

    #[test]
    fn table() {
        let plain = json!({"spec": {"containers": [{"name": "a", "image": "nginx"}]}});
        assert!(reasons(plain, Provider::Fargate).is_empty());
        let cases = [
            (
                json!({"spec": {"hostNetwork": true, "containers": [{"name": "a"}]}}),
                Ineligible::HostNetwork,
            ),
            (
                json!({"spec": {"hostPID": true, "containers": [{"name": "a"}]}}),
                Ineligible::HostPid,
            ),
            (
                json!({"spec": {"hostIPC": true, "containers": [{"name": "a"}]}}),
                Ineligible::HostIpc,
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "hostPath": {"path": "/"}}], "containers": [{"name": "a"}]}}),
                Ineligible::HostPath,
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "securityContext": {"privileged": true}}]}}),
                Ineligible::Privileged,
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}),
                Ineligible::HostPort,
            ),
            (
                json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "uid": "u"}]}, "spec": {"containers": [{"name": "a"}]}}),
                Ineligible::DaemonSet,
            ),
            (
                json!({"spec": {"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}], "containers": [{"name": "a"}]}}),
                Ineligible::PersistentVolumeClaim,
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}),
                Ineligible::Gpu,
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "17"}}}]}}),
                Ineligible::TooLarge,
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"memory": "121Gi"}}}]}}),
                Ineligible::TooLarge,
            ),
        ];
        for (pod, expected) in cases {
            assert_eq!(
                reasons(pod.clone(), Provider::Fargate),
                vec![expected],
                "{pod}"
            );
        }
    }

    #[test]
    fn size_limit_depends_on_provider() {
        let pod = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "8", "memory": "32Gi"}}}]}});
        assert!(reasons(pod.clone(), Provider::Fargate).is_empty());
        assert_eq!(reasons(pod, Provider::Aci), vec![Ineligible::TooLarge]);
    }
}
