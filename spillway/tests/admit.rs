//! `spillway admit` as a user runs it: stdin review, fixture cluster state, exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use base64::Engine;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../webhook/tests/fixtures")
        .join(name)
}

fn admit(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("admit")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spillway runs");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn patched_labels(output: &Output, review: &[u8]) -> Value {
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["allowed"], true);
    let patch = base64::engine::general_purpose::STANDARD
        .decode(
            answer["response"]["patch"]
                .as_str()
                .expect("patch is a base64 string"),
        )
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let review: Value = serde_json::from_slice(review).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod["metadata"]["labels"].clone()
}

#[test]
fn answers_like_the_webhook() {
    let review = std::fs::read(fixture("review-web.json")).unwrap();
    let state = fixture("cluster-full.json");
    let output = admit(&["--cluster-state", state.to_str().unwrap()], &review);
    let labels = patched_labels(&output, &review);
    assert_eq!(labels["spillway.io/placement"], "burst");
    assert_eq!(labels["spillway.io/reason"], "capacity");
}

#[test]
fn config_thresholds_apply() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "capacityThreshold: 1.0\ndefaultProvider: aci\n").unwrap();
    // 600m brings utilization to 95 %, under the threshold, but each node has only 500m free.
    let mut review: Value =
        serde_json::from_slice(&std::fs::read(fixture("review-web.json")).unwrap()).unwrap();
    review["request"]["object"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] =
        "600m".into();
    let review = serde_json::to_vec(&review).unwrap();
    let state = fixture("cluster-full.json");
    let output = admit(
        &[
            "--cluster-state",
            state.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &review,
    );
    // Under the raised threshold the pod still fits nowhere: no-fit, to the default provider.
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        base64::engine::general_purpose::STANDARD
            .decode(answer["response"]["patch"].as_str().unwrap())
            .map(|p| String::from_utf8_lossy(&p).contains("\"aci\""))
            .unwrap()
    );
    assert_eq!(
        patched_labels(&output, &review)["spillway.io/reason"],
        "no-fit"
    );
}

#[test]
fn bad_input_exits_2_with_one_line_and_no_stdout() {
    let state = fixture("cluster-full.json");
    let state = state.to_str().unwrap();
    let review = std::fs::read(fixture("review-web.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad_config = dir.path().join("bad.yaml");
    std::fs::write(&bad_config, "hpaThreshold: 3\n").unwrap();
    let not_a_list = dir.path().join("pod.json");
    std::fs::write(&not_a_list, r#"{"kind": "Pod", "metadata": {}}"#).unwrap();
    let cases: Vec<(Vec<&str>, Vec<u8>, &str)> = vec![
        (
            vec!["--cluster-state", state],
            b"{not json".to_vec(),
            "stdin",
        ),
        (
            vec!["--cluster-state", state],
            b"{\"kind\":\"AdmissionReview\"}".to_vec(),
            "no request",
        ),
        (
            vec!["--cluster-state", "/nonexistent/state.json"],
            review.clone(),
            "/nonexistent/state.json",
        ),
        (
            vec!["--cluster-state", not_a_list.to_str().unwrap()],
            review.clone(),
            "not a v1 List",
        ),
        (
            vec![
                "--cluster-state",
                state,
                "--config",
                bad_config.to_str().unwrap(),
            ],
            review.clone(),
            "hpaThreshold",
        ),
    ];
    for (args, stdin, expected) in cases {
        let output = admit(&args, &stdin);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?} wrote to stdout");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn run_without_a_way_to_serve_tls_says_what_to_give() {
    let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("run")
        .env_remove("SPILLWAY_WEBHOOK_URL")
        .env_remove("SPILLWAY_TLS_CERT")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--webhook-url"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["run", "--webhook-url", "http://127.0.0.1:8443/mutate"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("https://"), "{stderr}");
}

#[test]
fn status_without_a_cluster_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["status", "-o", "json"])
        .env("KUBECONFIG", dir.path().join("missing"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("spillway status: "), "{stderr}");
    assert!(output.stdout.is_empty());
}
