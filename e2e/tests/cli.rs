//! `spillway` as a kubectl user expects it: `--kubeconfig` and `--context` on every
//! command (no `KUBECONFIG` needed), run as a kubectl plugin (`kubectl spillway …` through
//! a `kubectl-spillway` link on the PATH), `version` and shell `completion`.

use std::path::Path;
use std::process::Command;

use spillway_e2e::{kubeconfig_for_token, kubectl, repo_root, run_dir, spillway_binary};

/// Runs `program args…` without `KUBECONFIG` in its environment.
fn run_without_kubeconfig(program: &Path, args: &[&str], path: &str) -> std::process::Output {
    Command::new(program)
        .args(args)
        .env_remove("KUBECONFIG")
        .env("HOME", "/nonexistent")
        .env("PATH", path)
        .output()
        .expect("the command runs")
}

#[test]
#[ignore = "needs the test bed (e2e/testbed up) and target/debug/spillway"]
fn kubeconfig_and_context_flags_work_on_every_command_and_as_a_kubectl_plugin() {
    let binary = spillway_binary().expect("spillway is built");
    let kubeconfig = run_dir().join("kubeconfig").display().to_string();
    let path = std::env::var("PATH").unwrap_or_default();

    // Without the flag and without KUBECONFIG there is no cluster to read.
    let without = run_without_kubeconfig(&binary, &["status", "-o", "json"], &path);
    assert!(
        !without.status.success(),
        "status found a cluster with no kubeconfig"
    );

    let with = run_without_kubeconfig(
        &binary,
        &["status", "-o", "json", "--kubeconfig", &kubeconfig],
        &path,
    );
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    let status: serde_json::Value =
        serde_json::from_slice(&with.stdout).expect("status -o json prints JSON");
    assert!(status.get("workloads").is_some(), "{status}");

    // The flags are global: before the subcommand too, and --context picks a context.
    let named = run_without_kubeconfig(
        &binary,
        &[
            "--kubeconfig",
            &kubeconfig,
            "--context",
            "testbed",
            "status",
            "-o",
            "json",
        ],
        &path,
    );
    assert!(
        named.status.success(),
        "{}",
        String::from_utf8_lossy(&named.stderr)
    );
    let unknown = run_without_kubeconfig(
        &binary,
        &[
            "status",
            "--kubeconfig",
            &kubeconfig,
            "--context",
            "no-such-context",
        ],
        &path,
    );
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no-such-context"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );

    // kubectl finds the plugin by its name on the PATH.
    let plugins = tempfile::tempdir().expect("a temp dir");
    std::os::unix::fs::symlink(&binary, plugins.path().join("kubectl-spillway"))
        .expect("the plugin link");
    let plugin_path = format!(
        "{}:{}:{path}",
        plugins.path().display(),
        repo_root().join("e2e/.build/bin").display()
    );
    let kubectl_binary = repo_root().join("e2e/.build/bin/kubectl");
    let version = run_without_kubeconfig(&kubectl_binary, &["spillway", "version"], &plugin_path);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("spillway {}", env!("CARGO_PKG_VERSION"))
    );
    let through_kubectl = run_without_kubeconfig(
        &kubectl_binary,
        &[
            "spillway",
            "status",
            "-o",
            "json",
            "--kubeconfig",
            &kubeconfig,
        ],
        &plugin_path,
    );
    assert!(
        through_kubectl.status.success(),
        "{}",
        String::from_utf8_lossy(&through_kubectl.stderr)
    );

    // The config the cluster runs with: a ConfigMap named with --config-map.
    let namespace = format!("e2e-cli-{}", std::process::id());
    kubectl(&["create", "namespace", &namespace]).expect("a namespace");
    kubectl(&[
        "-n",
        &namespace,
        "create",
        "configmap",
        "spillway-config",
        "--from-literal=config.yaml=budget:\n  maxUsdPerHour: 7\n",
    ])
    .expect("the ConfigMap");
    let config_map = format!("{namespace}/spillway-config");
    let from_map = run_without_kubeconfig(
        &binary,
        &[
            "status",
            "-o",
            "json",
            "--kubeconfig",
            &kubeconfig,
            "--config-map",
            &config_map,
        ],
        &path,
    );
    let _ = kubectl(&["delete", "namespace", &namespace, "--wait=false"]);
    assert!(
        from_map.status.success(),
        "{}",
        String::from_utf8_lossy(&from_map.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&from_map.stdout).expect("JSON");
    assert_eq!(status["cluster"]["budgetUsdPerHour"], 7.0, "{status}");
    assert!(
        String::from_utf8_lossy(&from_map.stderr)
            .contains(&format!("config from ConfigMap {config_map}"))
    );

    // -w prints again every interval until interrupted, then exits 0.
    let watching = Command::new(&binary)
        .args([
            "status",
            "-o",
            "json",
            "-w",
            "--interval-seconds",
            "1",
            "--kubeconfig",
            &kubeconfig,
            "--config",
            "/dev/null",
        ])
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("status -w starts");
    std::thread::sleep(std::time::Duration::from_millis(3500));
    Command::new("kill")
        .args(["-INT", &watching.id().to_string()])
        .status()
        .expect("kill runs");
    let watched = watching.wait_with_output().expect("status -w ends");
    assert!(watched.status.success(), "{:?}", watched.status);
    let prints = String::from_utf8_lossy(&watched.stdout)
        .matches("\"workloads\"")
        .count();
    assert!(prints >= 2, "{prints} prints in 3.5 s at 1 s intervals");

    // Completion scripts for the shells people use.
    for (shell, marker) in [
        ("bash", "_spillway()"),
        ("zsh", "#compdef spillway"),
        ("fish", "complete -c spillway"),
    ] {
        let script = run_without_kubeconfig(&binary, &["completion", shell], &path);
        assert!(script.status.success());
        assert!(
            String::from_utf8_lossy(&script.stdout).contains(marker),
            "{shell} completion lacks {marker}"
        );
    }
}

#[test]
#[ignore = "needs the test bed (e2e/testbed up) and target/debug/spillway"]
fn status_under_namespace_only_access_lists_that_namespace_and_says_what_it_cannot_see() {
    let binary = spillway_binary().expect("spillway is built");
    let path = std::env::var("PATH").unwrap_or_default();
    let namespace = format!("e2e-cli-ns-{}", std::process::id());
    let manifest = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: viewer, namespace: {namespace}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: spillway-status, namespace: {namespace}}}\n\
         rules:\n- {{apiGroups: [''], resources: [pods], verbs: [list]}}\n\
         - {{apiGroups: [apps], resources: [replicasets, deployments], verbs: [list]}}\n\
         - {{apiGroups: [autoscaling], resources: [horizontalpodautoscalers], verbs: [list]}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: spillway-status, namespace: {namespace}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: spillway-status}}\n\
         subjects: [{{kind: ServiceAccount, name: viewer, namespace: {namespace}}}]\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {namespace}\n  annotations: {{spillway.io/burst: 'true', spillway.io/max-local: '2'}}\n\
         spec:\n  replicas: 0\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n\
         \x20   spec: {{containers: [{{name: c, image: web}}]}}\n"
    );
    let file = run_dir().join(format!("{namespace}.yaml"));
    std::fs::write(&file, manifest).expect("manifest written");
    kubectl(&["apply", "-f", &file.display().to_string()]).expect("namespace, role and workload");
    let token = kubectl(&[
        "create",
        "token",
        "viewer",
        "-n",
        &namespace,
        "--duration=10m",
    ])
    .expect("a token");
    let kubeconfig = kubeconfig_for_token(&format!("viewer-{namespace}"), token.trim())
        .expect("kubeconfig")
        .display()
        .to_string();
    let status = |args: &[&str]| {
        let mut all = vec![
            "status",
            "--kubeconfig",
            &kubeconfig,
            "--config",
            "/dev/null",
        ];
        all.extend(args);
        run_without_kubeconfig(&binary, &all, &path)
    };
    let json = status(&["-n", &namespace, "-o", "json"]);
    let table = status(&["-n", &namespace]);
    let everywhere = status(&["-o", "json"]);
    let _ = kubectl(&["delete", "namespace", &namespace, "--wait=false"]);

    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(status["workloads"][0]["workload"], "web", "{status}");
    assert_eq!(status["workloads"][0]["maxLocal"], 2, "{status}");
    assert_eq!(status["cluster"]["nodesListed"], false, "{status}");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    assert!(
        text.contains("web")
            && text.contains("local<=2")
            && text.contains("your access cannot list nodes"),
        "{text}"
    );
    // Without -n it must list every namespace, which this account may not: say how to
    // ask instead.
    assert!(!everywhere.status.success());
    let said = String::from_utf8_lossy(&everywhere.stderr);
    assert!(said.contains("give -n NAMESPACE"), "{said}");
}
