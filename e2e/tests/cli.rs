//! `spillway` as a kubectl user expects it: `--kubeconfig` and `--context` on every
//! command (no `KUBECONFIG` needed), run as a kubectl plugin (`kubectl spillway …` through
//! a `kubectl-spillway` link on the PATH), `version` and shell `completion`.

use std::path::Path;
use std::process::Command;

use spillway_e2e::{kubectl, repo_root, run_dir, spillway_binary};

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
