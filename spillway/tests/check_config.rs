//! `spillway check-config` as an operator runs it before shipping a config.

use std::process::{Command, Output};

fn check(text: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spillway.yaml");
    std::fs::write(&path, text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("spillway runs")
}

#[test]
fn a_valid_file_prints_the_config_in_force() {
    let output = check("capacityThreshold: 0.7\nbudget:\n  maxUsdPerHour: 5\n");
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("capacityThreshold: 0.7"), "{stdout}");
    assert!(stdout.contains("maxUsdPerHour: 5"), "{stdout}");
    // Defaults are filled in.
    assert!(stdout.contains("hpaThreshold: 0.8"), "{stdout}");
}

#[test]
fn an_invalid_file_names_the_key_and_exits_2() {
    for (text, key) in [
        ("capacityThreshold: 1.5\n", "capacityThreshold"),
        ("rebalance:\n  cooldown: 5\n", "cooldown"),
        ("defaultProvider: gcp\n", "gcp"),
    ] {
        let output = check(text);
        assert_eq!(output.status.code(), Some(2), "{text}");
        assert!(output.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{text}: {stderr}");
        assert!(stderr.contains("spillway.yaml"), "names the file: {stderr}");
    }
}
