//! Every command the README and `docs/` show runs on the test bed, file by file, in the
//! order written (see `spillway_e2e::doc_commands` for the markers). Each file starts
//! from a clean slate: what the previous one installed or started is removed first.

use std::path::PathBuf;
use std::process::Command;

use spillway_e2e::doc_commands::script_for;
use spillway_e2e::{remove_node_and_its_pods, repo_root, run_dir, testbed_env};

/// What the docs' commands may leave behind, removed before and after each file.
fn clean_slate() {
    let helm = repo_root().join("e2e/.build/bin/helm");
    let kubectl = repo_root().join("e2e/.build/bin/kubectl");
    let kubeconfig = run_dir().join("kubeconfig");
    let _ = Command::new(helm)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "uninstall",
            "spillway",
            "--namespace",
            "spillway-system",
            "--wait",
            "--ignore-not-found",
        ])
        .output();
    let _ = Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "delete",
            "namespace",
            "shop",
            "spillway-system",
            "--ignore-not-found",
            "--wait",
            "--timeout=90s",
        ])
        .output();
    let _ = Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "delete",
            "mutatingwebhookconfiguration",
            "spillway",
            "--ignore-not-found",
        ])
        .output();
    // The RBAC tests' deploy/ objects carry the names the chart's release "spillway"
    // makes, and Helm will not adopt them.
    let _ = Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("delete")
        .arg("-f")
        .arg(repo_root().join("deploy/virtual-node-policy.yaml"))
        .arg("-f")
        .arg(repo_root().join("deploy/controller-policy.yaml"))
        .arg("-f")
        .arg(repo_root().join("deploy/rbac.yaml"))
        .args(["--ignore-not-found", "--wait", "--timeout=90s"])
        .output();
    for node in ["spillway-mock", "spillway-fargate"] {
        remove_node_and_its_pods(node);
    }
}

struct CleanSlate;

impl Drop for CleanSlate {
    fn drop(&mut self) {
        clean_slate();
    }
}

fn doc_files() -> anyhow::Result<Vec<PathBuf>> {
    let root = repo_root();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    let mut files = vec![root.join("README.md")];
    files.extend(docs);
    Ok(files)
}

#[test]
#[ignore = "needs the test bed (e2e/testbed up) and target/debug/spillway"]
fn every_command_in_the_readme_and_docs_runs() -> anyhow::Result<()> {
    let root = repo_root();
    let env = testbed_env()?;
    let path = format!(
        "{}:{}:{}",
        root.join("target/debug").display(),
        root.join("e2e/.build/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    let mut blocks = 0;
    for file in doc_files()? {
        let name = file.strip_prefix(&root)?.display().to_string();
        let text = std::fs::read_to_string(&file)?;
        let script = script_for(&name, &text).map_err(anyhow::Error::msg)?;
        blocks += script.blocks;
        skipped.extend(script.skipped.iter().cloned());
        if script.blocks == 0 {
            continue;
        }
        clean_slate();
        let _cleanup = CleanSlate;
        // The commands run where a reader would, at the top of a checkout, but in a
        // scratch directory that links to it so files they write go nowhere.
        let dir = tempfile::tempdir()?;
        for entry in ["charts", "e2e", "Dockerfile"] {
            std::os::unix::fs::symlink(root.join(entry), dir.path().join(entry))?;
        }
        let output = Command::new("bash")
            .arg("-c")
            .arg(&script.script)
            .current_dir(dir.path())
            .envs(&env)
            .env("PATH", &path)
            .env("KUBECONFIG", run_dir().join("kubeconfig"))
            .output()?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            failures.push(format!(
                "{name} (exit {:?}); last lines:\n{}",
                output.status.code(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
    }
    println!("doc commands: {blocks} blocks run; not run: {skipped:#?}");
    assert!(blocks >= 10, "only {blocks} command blocks found");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}
