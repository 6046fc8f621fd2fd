//! Synthetic clusters and reviews of a chosen size, for benchmarks and load tests.

use serde_json::{Value, json};

use spillway_cluster::index::ClusterIndex;

fn uid(kind: u8, n: usize) -> String {
    format!("{kind:02x}000000-0000-4000-8000-{n:012x}")
}

/// A pod of Deployment `deployment` (named `web-<deployment>`), bound to `node` if given.
pub fn pod(n: usize, deployment: usize, node: Option<usize>) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("web-{deployment}-abc-{n}"), "namespace": "bench", "uid": uid(1, n),
            "labels": {"app": format!("web-{deployment}"), "pod-template-hash": "abc"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("web-{deployment}-abc"), "uid": uid(2, deployment), "controller": true}]
        },
        "spec": {
            "nodeName": node.map(|i| format!("node-{i}")),
            "containers": [{"name": "app", "image": "nginx:1.27", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]
        },
        "status": {"phase": if node.is_some() { "Running" } else { "Pending" }}
    })
}

/// An index of `nodes` 16-CPU nodes and `pods` pods spread over `deployments` opted-in
/// Deployments, at about 30 % CPU utilization.
pub fn cluster(nodes: usize, pods: usize, deployments: usize) -> ClusterIndex {
    let mut index = ClusterIndex::new();
    for i in 0..nodes {
        let node = json!({
            "metadata": {"name": format!("node-{i}"), "labels": {"kubernetes.io/os": "linux"}},
            "status": {"allocatable": {"cpu": "16", "memory": "64Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        });
        index.apply_node(&serde_json::from_value(node).expect("node"));
    }
    for d in 0..deployments {
        let deployment = json!({
            "metadata": {"name": format!("web-{d}"), "namespace": "bench", "uid": uid(3, d),
                         "annotations": {"spillway.io/burst": "true", "spillway.io/max-burst": "50%"}},
            "spec": {"replicas": pods / deployments.max(1), "selector": {}, "template": {}}
        });
        index.apply_deployment(&serde_json::from_value(deployment).expect("deployment"));
        let rs = json!({
            "metadata": {"name": format!("web-{d}-abc"), "namespace": "bench", "uid": uid(2, d),
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("web-{d}"), "uid": uid(3, d), "controller": true}]}
        });
        index.apply_replicaset(&serde_json::from_value(rs).expect("rs"));
    }
    for n in 0..pods {
        let pod = pod(n, n % deployments.max(1), Some(n % nodes.max(1)));
        index.apply_pod(&serde_json::from_value(pod).expect("pod"));
    }
    index
}

/// A CREATE review (about 2 kB) for a new pod of Deployment `deployment`.
pub fn review(request_uid: &str, deployment: usize) -> Vec<u8> {
    let mut object = pod(usize::MAX >> 16, deployment, None);
    object["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("uid");
    object["metadata"]["generateName"] = json!(format!("web-{deployment}-abc-"));
    object["metadata"]["annotations"] =
        json!({"kubectl.kubernetes.io/restartedAt": "2026-11-28T10:00:00Z"});
    object["spec"]["containers"][0]["env"] = json!([
        {"name": "LOG_LEVEL", "value": "info"}, {"name": "PORT", "value": "8080"},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    ]);
    object["spec"]["containers"][0]["ports"] = json!([{"containerPort": 8080, "protocol": "TCP"}]);
    object["spec"]["containers"][0]["readinessProbe"] =
        json!({"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5});
    object["spec"]["tolerations"] = json!([
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
    ]);
    object["spec"]["volumes"] = json!([{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}]);
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": request_uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "bench", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "uid": "u", "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]},
            "object": object, "oldObject": null, "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kube-controller-manager"}
        }
    }))
    .expect("review serializes")
}
