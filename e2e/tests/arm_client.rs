//! The ACI provider's ARM client against the fake ARM server over HTTP on loopback (no
//! test bed needed): `429`s are waited out by `Retry-After` within a call and surface as
//! `Throttled` once the attempts are spent, a PUT's `Azure-AsyncOperation` and a DELETE's
//! `Location` are followed to their end, lists follow `nextLink`, and a refused token
//! never fails a pod for good.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use spillway_e2e::fake_arm::{Behaviour, FakeArm};
use spillway_vk_node::aci::arm::{ArmApi, ArmClient, RetryPolicy};
use spillway_vk_node::aci::arm_types::ContainerGroup;
use spillway_vk_node::aci::credentials::TokenFile;
use spillway_vk_node::provider::ProviderError;

const TOKEN: &str = "client-test-token";

fn client(arm: &FakeArm, token: &str) -> (ArmClient<TokenFile>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("token");
    std::fs::write(&path, token).expect("token file");
    let policy = RetryPolicy {
        max_attempts: 4,
        base_backoff: Duration::from_millis(50),
        poll_interval: Duration::from_millis(100),
        ..RetryPolicy::default()
    };
    let client = ArmClient::new(&arm.url, "sub-1", "rg-1", Arc::new(TokenFile(path)), policy)
        .expect("client");
    (client, dir)
}

fn group(name: &str) -> ContainerGroup {
    serde_json::from_value(json!({
        "location": "westeurope",
        "tags": {"spillway.io-pod-uid": name},
        "properties": {"osType": "Linux", "containers": [{"name": "app",
            "properties": {"image": "nginx", "resources": {"requests": {"cpu": 0.25, "memoryInGB": 0.5}}}}]}
    }))
    .expect("a group")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_and_deletes_are_followed_to_their_end_and_lists_page() {
    let arm = FakeArm::start(TOKEN, Behaviour::default()).await.unwrap();
    let (client, _dir) = client(&arm, TOKEN);
    let created = client.put_group("g0", &group("g0")).await.unwrap();
    assert_eq!(
        created.properties.provisioning_state.as_deref(),
        Some("Succeeded"),
        "the PUT returns once its operation succeeded"
    );
    assert!(arm.counts().polls >= 1, "{:?}", arm.counts());
    for i in 1..12 {
        client
            .put_group(&format!("g{i}"), &group(&format!("g{i}")))
            .await
            .unwrap();
    }
    let listed = client.list_groups().await.unwrap();
    assert_eq!(listed.len(), 12, "every page (5 a page) followed");
    let lists_before = arm.counts().lists;
    assert_eq!(lists_before, 3);
    client.delete_group("g0").await.unwrap();
    assert!(client.get_group("g0").await.unwrap().is_none());
    assert!(matches!(
        client.delete_group("g0").await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(arm.refused().is_empty(), "{:?}", arm.refused());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_waited_out_within_a_call_until_the_attempts_are_spent() {
    let arm = FakeArm::start(TOKEN, Behaviour::default()).await.unwrap();
    let (client, _dir) = client(&arm, TOKEN);
    // Three 429s, then an answer: one call, no error.
    arm.throttle_next(3);
    assert!(client.list_groups().await.unwrap().is_empty());
    assert_eq!(arm.counts().throttled, 3);
    assert_eq!(arm.counts().lists, 1);
    // More 429s than attempts: Throttled, which the node retries without failing the pod.
    arm.throttle_next(10);
    let error = client.list_groups().await.unwrap_err();
    assert!(matches!(error, ProviderError::Throttled(_)), "{error}");
    assert_eq!(arm.counts().throttled, 3 + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_retryable_and_never_logged_in_the_error() {
    let arm = FakeArm::start(TOKEN, Behaviour::default()).await.unwrap();
    let (client, _dir) = client(&arm, "a-stale-token");
    let error = client.list_groups().await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(!error.to_string().contains("a-stale-token"), "{error}");
    assert_eq!(
        arm.counts().unauthorized,
        1,
        "a 401 is not retried in a loop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_spec_refuses_is_invalid_and_names_the_field() {
    let arm = FakeArm::start(TOKEN, Behaviour::default()).await.unwrap();
    let (client, _dir) = client(&arm, TOKEN);
    let mut bad = group("bad");
    bad.properties.sku = Some("Gigantic".into());
    let error = client.put_group("bad", &bad).await.unwrap_err();
    assert!(matches!(error, ProviderError::Invalid(_)), "{error}");
    assert!(error.to_string().contains("sku"), "{error}");
    assert_eq!(arm.refused().len(), 1);
}
