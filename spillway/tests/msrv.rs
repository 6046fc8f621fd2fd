//! The minimum Rust version is stated once, in the workspace's `rust-version`: it must
//! cover every locked dependency's own `rust-version`, and the Dockerfile's build stage must
//! use exactly that toolchain. A lockfile update that needs a newer compiler fails here,
//! not in somebody's image build.

use std::path::Path;
use std::process::Command;

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

fn parse_version(text: &str) -> Vec<u32> {
    text.split('.')
        .map(|part| {
            part.parse()
                .unwrap_or_else(|_| panic!("bad version {text:?}"))
        })
        .collect()
}

fn declared_rust_version() -> String {
    let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .map(|value| value.trim_matches('"').to_owned())
        .expect("Cargo.toml states [workspace.package] rust-version")
}

#[test]
fn rust_version_covers_every_locked_dependency() {
    // Not --offline: a build fetches only the host platform's crates, and the manifests of
    // the others (Windows-only ones, say) must be read too; cargo fetches them once.
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata --locked failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let declared = declared_rust_version();
    let too_new: Vec<String> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|package| {
            let needs = package["rust_version"].as_str()?;
            (parse_version(needs) > parse_version(&declared))
                .then(|| format!("{} {} needs {needs}", package["name"], package["version"]))
        })
        .collect();
    assert!(
        too_new.is_empty(),
        "rust-version {declared} in Cargo.toml is older than the lockfile needs: {too_new:?}"
    );
}

#[test]
fn dockerfile_builds_with_the_declared_toolchain() {
    let dockerfile = std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap();
    let declared = declared_rust_version();
    let builder = dockerfile
        .lines()
        .find(|line| line.starts_with("FROM ") && line.contains("rust:"))
        .expect("the Dockerfile has a rust build stage");
    assert!(
        builder.contains(&format!("rust:{declared}-")),
        "the Dockerfile builds with `{builder}`, Cargo.toml says rust-version {declared}"
    );
}
