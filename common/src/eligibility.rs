//! Which pods may never burst (DESIGN §3 "Eligibility"), each refusal with a reason that
//! doubles as a metric label.

use k8s_openapi::api::core::v1::{Container, Pod, Volume};

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
/// Containers (init containers included) an ACI container group holds at most (ACI
/// service quotas).
pub const ACI_MAX_CONTAINERS: usize = 60;
/// Volumes an ACI container group holds at most (ACI service quotas).
pub const ACI_MAX_VOLUMES: usize = 20;
/// Ports an ACI container group's IP opens at most (ACI service quotas).
pub const ACI_MAX_GROUP_PORTS: usize = 5;

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
    /// A volume the provider cannot mount (it would be silently missing).
    UnsupportedVolume,
    /// More containers, volumes or ports than one provider object holds (ACI's
    /// per-group limits).
    ProviderLimits,
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
            Ineligible::UnsupportedVolume => "unsupported-volume",
            Ineligible::ProviderLimits => "provider-limits",
        }
    }
}

/// Whether a pod of `needs` is within `provider`'s largest size.
pub fn within_largest_size(needs: &PodResources, provider: Provider) -> bool {
    let (max_cpu, max_memory) = provider_max(provider);
    needs.cpu_millis <= max_cpu && needs.memory_bytes <= max_memory
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

/// Whether `provider` runs pods with `volume`. hostPath and PersistentVolumeClaims have
/// reasons of their own. The API-access volume the ServiceAccount admission plugin adds
/// to every pod (projected, with a token source) is accepted and not mounted: a burst pod
/// does not reach the apiserver.
pub fn volume_supported(volume: &Volume, provider: Provider) -> bool {
    let api_access = volume.projected.as_ref().is_some_and(|p| {
        p.sources
            .iter()
            .flatten()
            .any(|s| s.service_account_token.is_some())
    });
    let other_reason = volume.host_path.is_some()
        || volume.persistent_volume_claim.is_some()
        || volume.ephemeral.is_some();
    if volume.empty_dir.is_some() || api_access || other_reason {
        return true;
    }
    match provider {
        // The task definition carries emptyDir (bind-mount) volumes only.
        Provider::Fargate => false,
        // ACI container groups mount secret volumes (ConfigMaps go the same way).
        Provider::Aci => volume.secret.is_some() || volume.config_map.is_some(),
    }
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
        if volumes.clone().any(|v| !volume_supported(v, provider)) {
            reasons.push(Ineligible::UnsupportedVolume);
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
    if !within_largest_size(needs, provider) {
        reasons.push(Ineligible::TooLarge);
    }
    if provider == Provider::Aci && beyond_aci_group_limits(pod) {
        reasons.push(Ineligible::ProviderLimits);
    }
    reasons
}

/// Whether `pod` needs more containers, volumes or distinct ports than one ACI container
/// group holds.
fn beyond_aci_group_limits(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let containers = all_containers(pod).count();
    let volumes = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.empty_dir.is_some() || v.secret.is_some() || v.config_map.is_some())
        .count();
    let ports: std::collections::BTreeSet<(i32, &str)> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| (p.container_port, p.protocol.as_deref().unwrap_or("TCP")))
        .collect();
    containers > ACI_MAX_CONTAINERS
        || volumes > ACI_MAX_VOLUMES
        || ports.len() > ACI_MAX_GROUP_PORTS
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
    fn aci_refuses_pods_beyond_one_groups_limits() {
        let containers: Vec<_> = (0..61).map(|i| json!({"name": format!("c{i}")})).collect();
        let many = json!({"spec": {"containers": containers}});
        assert_eq!(
            reasons(many.clone(), Provider::Aci),
            vec![Ineligible::ProviderLimits]
        );
        assert!(reasons(many, Provider::Fargate).is_empty());
        let ports: Vec<_> = (0..6).map(|i| json!({"containerPort": 8000 + i})).collect();
        let open = json!({"spec": {"containers": [{"name": "a", "ports": ports}]}});
        assert_eq!(
            reasons(open, Provider::Aci),
            vec![Ineligible::ProviderLimits]
        );
        let volumes: Vec<_> = (0..21)
            .map(|i| json!({"name": format!("v{i}"), "emptyDir": {}}))
            .collect();
        let mounted = json!({"spec": {"containers": [{"name": "a"}], "volumes": volumes}});
        assert_eq!(
            reasons(mounted, Provider::Aci),
            vec![Ineligible::ProviderLimits]
        );
        let five: Vec<_> = (0..5).map(|i| json!({"containerPort": 8000 + i})).collect();
        let fits = json!({"spec": {"containers": [{"name": "a", "ports": five}]}});
        assert!(reasons(fits, Provider::Aci).is_empty());
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
    fn volumes_the_provider_cannot_mount_make_a_pod_ineligible() {
        let with = |volume: serde_json::Value| json!({"spec": {"volumes": [volume], "containers": [{"name": "a"}]}});
        let config_map = with(json!({"name": "v", "configMap": {"name": "c"}}));
        assert_eq!(
            reasons(config_map.clone(), Provider::Fargate),
            vec![Ineligible::UnsupportedVolume]
        );
        assert!(reasons(config_map, Provider::Aci).is_empty());
        for volume in [
            json!({"name": "v", "secret": {"secretName": "s"}}),
            json!({"name": "v", "downwardAPI": {"items": []}}),
            json!({"name": "v", "nfs": {"server": "n", "path": "/"}}),
            json!({"name": "v", "projected": {"sources": [{"configMap": {"name": "c"}}]}}),
        ] {
            assert_eq!(
                reasons(with(volume.clone()), Provider::Fargate),
                vec![Ineligible::UnsupportedVolume],
                "{volume}"
            );
        }
        // emptyDir and the API-access volume every pod gets are fine.
        let api_access = json!({"name": "kube-api-access-x", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
        ]}});
        assert!(reasons(with(api_access), Provider::Fargate).is_empty());
        assert!(
            reasons(
                with(json!({"name": "v", "emptyDir": {}})),
                Provider::Fargate
            )
            .is_empty()
        );
        // hostPath keeps its own reason, not a second one.
        assert_eq!(
            reasons(
                with(json!({"name": "v", "hostPath": {"path": "/"}})),
                Provider::Fargate
            ),
            vec![Ineligible::HostPath]
        );
    }

    #[test]
    fn size_limit_depends_on_provider() {
        let pod = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "8", "memory": "32Gi"}}}]}});
        assert!(reasons(pod.clone(), Provider::Fargate).is_empty());
        assert_eq!(reasons(pod, Provider::Aci), vec![Ineligible::TooLarge]);
    }
}
