//! `kubectl exec` and `attach` on a burst pod, with the real kubectl through the real
//! apiserver (which passes the WebSocket through, since the node declares
//! `ExtendWebSocketsToKubelet`), on the mock provider: output and exit codes, stdin, a
//! terminal whose resize reaches the provider, attach; sessions counted in
//! `spillway_exec_sessions` and capped (`--max-exec-sessions`); a caller without `nodes/proxy` refused by the node itself;
//! port-forward refused with a sentence.

use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use spillway_e2e::pty::{self, Step};
use spillway_e2e::{
    NodeFixture, admin_port, kubectl, kubectl_with_stdin, metrics_text, repo_root, run_dir,
    vk_node_args, wait_until,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn kubectl_exec_and_attach_reach_a_burst_pod_through_the_apiserver() -> anyhow::Result<()> {
    let fixture = NodeFixture::new("e2e-exec", "mock").await?;
    let (client, ns, node_name) = (&fixture.client, &fixture.ns, &fixture.node_name);
    let mut args = vk_node_args(node_name, "mock")?;
    // One session at a time: the cap is seen below.
    args.extend(["--max-exec-sessions", "1"].map(String::from));
    let admin = admin_port(&args)?;
    let kubelet = args[args.iter().position(|a| a == "--kubelet-listen").unwrap() + 1].clone();
    let _node = fixture.start_with_running_pod(&args, "web").await?;
    // What lets the apiserver pass the WebSocket through instead of translating to SPDY.
    let nodes: Api<Node> = Api::all(client.clone());
    let declared = nodes
        .get(node_name)
        .await?
        .status
        .and_then(|s| s.declared_features)
        .unwrap_or_default();
    assert!(
        declared.iter().any(|f| f == "ExtendWebSocketsToKubelet"),
        "{declared:?}"
    );
    let ns = ns.name.as_str();

    // Non-interactive: output, and the exit code.
    let out = kubectl_with_stdin(ns, &["exec", "web", "--", "echo", "hello", "world"], b"")?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello world\n");
    let out = kubectl_with_stdin(ns, &["exec", "web", "--", "sh", "-c", "exit 3"], b"")?;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = kubectl_with_stdin(
        ns,
        &["exec", "web", "--", "echo-stderr", "to", "stderr"],
        b"",
    )?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).contains("to stderr"),
        "{}",
        text(&out.stderr)
    );

    // stdin, to its end.
    let out = kubectl_with_stdin(
        ns,
        &["exec", "-i", "web", "--", "cat"],
        b"line one\nline two\n",
    )?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "line one\nline two\n");

    // A terminal: its size, then a resize, reach the provider; Ctrl-D ends it.
    let kubeconfig = run_dir().join("kubeconfig").display().to_string();
    let (code, screen) = pty::drive(
        &repo_root().join("e2e/.build/bin/kubectl"),
        &[
            "--kubeconfig",
            &kubeconfig,
            "-n",
            ns,
            "exec",
            "-it",
            "web",
            "--",
            "tty-size",
        ],
        (80, 24),
        &[
            Step::WaitFor("80x24".into()),
            Step::Resize(100, 30),
            Step::WaitFor("100x30".into()),
            Step::Type("\u{4}".into()),
        ],
    )?;
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("80x24"), "{screen}");
    assert!(screen.contains("100x30"), "the resize: {screen}");

    // attach, with stdin.
    let out = kubectl_with_stdin(ns, &["attach", "-i", "web"], b"typed\n")?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "attached to app\ntyped\n");

    // An open session is counted, and uncounted when it ends.
    let mut open = Command::new(repo_root().join("e2e/.build/bin/kubectl"))
        .arg("--kubeconfig")
        .arg(run_dir().join("kubeconfig"))
        .args(["-n", ns, "exec", "-i", "web", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let sessions = |n: u32| format!("spillway_exec_sessions{{provider=\"mock\"}} {n}");
    wait_until("one exec session open", Duration::from_secs(20), || async {
        Ok(metrics_text(admin)?.contains(&sessions(1)))
    })
    .await?;
    // A second one, past --max-exec-sessions, is told to try again.
    let refused = kubectl_with_stdin(ns, &["exec", "web", "--", "echo", "second"], b"")?;
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("try again when one ends"),
        "{}",
        text(&refused.stderr)
    );
    drop(open.stdin.take());
    open.wait()?;
    wait_until("no exec session open", Duration::from_secs(20), || async {
        Ok(metrics_text(admin)?.contains(&sessions(0)))
    })
    .await?;

    // port-forward: a sentence, at once.
    let out = kubectl_with_stdin(ns, &["port-forward", "pod/web", "18080:80"], b"")?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("port-forward is not supported on Spillway burst pods"),
        "{}",
        text(&out.stderr)
    );

    // The node's own check: a caller without nodes/proxy on this node is refused.
    kubectl(&["create", "serviceaccount", "nobody", "-n", ns])?;
    let token = kubectl(&["create", "token", "nobody", "-n", ns, "--duration=1h"])?;
    let ca = std::fs::read(run_dir().join("pki/ca.crt"))?;
    let response = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .timeout(Duration::from_secs(15))
        .build()?
        .get(format!(
            "https://{kubelet}/exec/{ns}/web/app?command=echo&command=hi&output=1"
        ))
        .bearer_auth(token.trim())
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 403);
    assert!(response.text().await?.contains("subresource=proxy"));
    Ok(())
}
