//! `spillway explain-pod` as a user runs it.

use std::process::{Command, Output};

use serde_json::Value;

fn explain(args: &[&str], manifest: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pod.yaml");
    std::fs::write(&path, manifest).unwrap();
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("explain-pod")
        .args(args)
        .arg(&path)
        .output()
        .unwrap()
}

fn json(args: &[&str], manifest: &str) -> Value {
    let output = explain(args, manifest);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, uid: 7d0c1a52-3b8e-4f7a-9e61-0c2d4b6a8f10}
spec:
  containers:
  - name: app
    image: nginx:1.27
    resources: {requests: {cpu: "1", memory: 3000Mi}}
"#;

#[test]
fn fargate_request_shape_size_and_cost() {
    let out = json(&["--provider", "fargate", "-o", "json"], WEB);
    assert_eq!(out["eligible"], true);
    assert_eq!(out["reasons"], serde_json::json!([]));
    let register = &out["request"]["registerTaskDefinition"];
    assert_eq!(register["cpu"], "1024");
    assert_eq!(register["memory"], "3072");
    assert_eq!(register["networkMode"], "awsvpc");
    assert_eq!(
        register["requiresCompatibilities"],
        serde_json::json!(["FARGATE"])
    );
    assert_eq!(register["containerDefinitions"][0]["image"], "nginx:1.27");
    let run = &out["request"]["runTask"];
    assert_eq!(run["taskDefinition"], register["family"]);
    assert_eq!(run["clientToken"], "7d0c1a52-3b8e-4f7a-9e61-0c2d4b6a8f10");
    assert_eq!(run["launchType"], "FARGATE");
    let cost = out["hourlyCostUsd"].as_f64().unwrap();
    assert!((cost - (0.04048 + 3.0 * 0.004445)).abs() < 1e-6, "{cost}");
}

#[test]
fn ineligible_and_too_large_pods_say_why() {
    let host = WEB.replace("  containers:", "  hostNetwork: true\n  containers:");
    let out = json(&["-o", "json"], &host);
    assert_eq!(out["eligible"], false);
    assert_eq!(out["reasons"], serde_json::json!(["host-network"]));
    let big = WEB.replace("cpu: \"1\"", "cpu: \"17\"");
    let out = json(&["-o", "json"], &big);
    assert_eq!(out["eligible"], false);
    assert_eq!(out["reasons"], serde_json::json!(["too-large"]));
    assert!(out["hourlyCostUsd"].is_null());
}

#[test]
fn readable_summary_without_json() {
    let output = explain(&[], WEB);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("eligible for fargate"), "{text}");
    assert!(text.contains("1 vCPU, 3 GiB"), "{text}");
}

#[test]
fn bad_manifests_exit_2() {
    for manifest in [
        "::: not yaml",
        "kind: Deployment\nspec: {}",
        "kind: Pod\nmetadata: {}",
    ] {
        let output = explain(&["-o", "json"], manifest);
        assert_eq!(output.status.code(), Some(2), "{manifest}");
        assert!(output.stdout.is_empty());
        assert!(String::from_utf8_lossy(&output.stderr).starts_with("spillway explain-pod:"));
    }
}

#[test]
fn aci_gives_eligibility_size_and_cost() {
    let out = json(&["--provider", "aci", "-o", "json"], WEB);
    assert_eq!(out["eligible"], true);
    assert_eq!(
        out["size"],
        serde_json::json!({"cpu": 1.0, "memoryInGB": 3.0})
    );
    let cost = out["hourlyCostUsd"].as_f64().unwrap();
    assert!((cost - (0.0486 + 3.0 * 0.0054)).abs() < 1e-6, "{cost}");
    // The exact PUT body and the group's name.
    let name = out["request"]["containerGroupName"].as_str().unwrap();
    assert!(name.starts_with("shop-web-") && name.len() <= 63, "{name}");
    let group = &out["request"]["containerGroup"];
    assert_eq!(group["properties"]["osType"], "Linux");
    assert_eq!(
        group["properties"]["containers"][0]["properties"]["resources"]["requests"],
        serde_json::json!({"cpu": 1.0, "memoryInGB": 3.0})
    );
    assert_eq!(
        group["tags"]["spillway.io-pod-uid"],
        "7d0c1a52-3b8e-4f7a-9e61-0c2d4b6a8f10"
    );
    let big = WEB.replace("cpu: \"1\"", "cpu: \"8\"");
    let out = json(&["--provider", "aci", "-o", "json"], &big);
    assert_eq!(out["reasons"], serde_json::json!(["too-large"]));
}

#[test]
fn a_deployment_is_explained_by_its_pod_template_with_dash_f() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deployment.yaml");
    std::fs::write(
        &path,
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: nginx:1.27
        resources: {requests: {cpu: "1", memory: 3000Mi}}
"#,
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["explain-pod", "--provider", "aci", "-o", "json", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(out["eligible"], true);
    assert_eq!(
        out["size"],
        serde_json::json!({"cpu": 1.0, "memoryInGB": 3.0})
    );
    // Named after the Deployment, in its namespace.
    let name = out["request"]["containerGroupName"].as_str().unwrap();
    assert!(name.starts_with("shop-web-"), "{name}");
    // A kind without a pod template is refused, naming what is accepted.
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n",
    )
    .unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["explain-pod", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Deployment"));
}
