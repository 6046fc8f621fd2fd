//! The test bed's fake Session Manager endpoint (`spillway_e2e::fake_ssm`), checked with
//! the real client: AWS's session-manager-plugin, built from its Go module by the test
//! bed, runs an interactive session against it under a pseudo-terminal. If the plugin
//! completes the handshake, shows the output, sends the terminal's size and its resize,
//! acknowledges every message and leaves on `channel_closed`, the fake speaks the real
//! protocol, and the node's ECS Exec client can be tested against it.

use spillway_e2e::fake_ssm::FakeSessionManager;
use spillway_e2e::pty::{self, Step};
use spillway_e2e::repo_root;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test bed's tools (session-manager-plugin, built by e2e/testbed up): run `make test`"]
async fn the_real_session_manager_plugin_runs_a_shell_through_the_fake() -> anyhow::Result<()> {
    let fake = FakeSessionManager::start().await?;
    let grant = fake.grant("/bin/sh");
    let response = serde_json::json!({
        "SessionId": grant.session_id,
        "StreamUrl": grant.stream_url,
        "TokenValue": grant.token,
    })
    .to_string();
    let plugin = repo_root().join("e2e/.build/bin/session-manager-plugin");
    let target = r#"{"Target":"ecs:burst_0123456789abcdef_0123456789abcdef-1234567890"}"#;
    let session_id = grant.session_id.clone();
    let (code, screen) = tokio::task::spawn_blocking(move || {
        let args = [
            response.as_str(),
            "us-east-1",
            "StartSession",
            "",
            target,
            "https://127.0.0.1:9",
        ];
        pty::drive_with_env(
            &plugin,
            &args,
            (100, 30),
            &[
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ],
            &[
                Step::WaitFor("Starting session".into()),
                Step::Type("echo hello from fargate\r".into()),
                Step::WaitFor("hello from fargate".into()),
                Step::Type("stty size\r".into()),
                Step::WaitFor("30 100".into()),
                Step::Resize(120, 40),
                Step::Sleep(1500),
                Step::Type("stty size\r".into()),
                Step::WaitFor("40 120".into()),
                Step::Type("exit\r".into()),
                Step::WaitFor("Exiting session".into()),
            ],
        )
    })
    .await??;
    let log = fake.log(&session_id);
    assert!(log.opened && log.handshake_answered, "{log:?}\n{screen}");
    // The shell's answer on a line of its own (the typed command may be echoed too).
    assert!(
        screen
            .lines()
            .any(|line| line.trim() == "hello from fargate"),
        "{screen}"
    );
    assert!(screen.contains("30 100"), "the first size: {screen}");
    assert!(screen.contains("40 120"), "the resize: {screen}");
    assert!(screen.contains("Exiting session"), "{screen}");
    assert_eq!(code, Some(0), "{screen}");
    assert!(log.closed);
    assert!(
        log.sizes.contains(&(100, 30)) && log.sizes.contains(&(120, 40)),
        "{log:?}"
    );
    // Every stream message of the agent was acknowledged; the client numbered its own
    // from 0 without a gap.
    let mut acknowledged = log.acknowledged.clone();
    acknowledged.sort_unstable();
    acknowledged.dedup();
    assert!(acknowledged.starts_with(&[0, 1, 2]), "{log:?}");
    let mut sequence = log.input_sequence.clone();
    sequence.sort_unstable();
    sequence.dedup();
    assert_eq!(
        sequence,
        (0..sequence.len() as i64).collect::<Vec<_>>(),
        "{log:?}"
    );
    Ok(())
}
