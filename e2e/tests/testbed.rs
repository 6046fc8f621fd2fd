//! The test bed itself: the real control plane schedules a Deployment onto simulated nodes,
//! and the real apiserver calls a loopback mutating webhook over TLS.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use base64::Engine;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use spillway_common::tls::{TlsFiles, TlsServer};
use spillway_e2e::{
    TestNamespace, WebhookRegistration, client, deployment, register_webhook, scale, wait_until,
};
use tokio_util::sync::CancellationToken;

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn deployment_runs_on_simulated_nodes_and_scales_to_zero() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "e2e-deploy").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", 6, "100m", json!({}))?,
        )
        .await?;

    wait_until(
        "6 pods Running on simulated nodes",
        Duration::from_secs(60),
        || async {
            let list = pods.list(&ListParams::default().labels("app=web")).await?;
            let running = list
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .filter(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .is_some_and(|n| n.starts_with("kwok-node-"))
                })
                .count();
            Ok(running == 6)
        },
    )
    .await?;

    scale(&deployments, "web", 0).await?;
    wait_until(
        "all pods gone after scaling to 0",
        Duration::from_secs(60),
        || async {
            Ok(pods
                .list(&ListParams::default().labels("app=web"))
                .await?
                .items
                .is_empty())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed: run `make test`"]
async fn apiserver_calls_a_loopback_webhook_over_tls() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "e2e-hook").await?;

    let pki = spillway_common::pki::issue(&["127.0.0.1"]);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    std::fs::write(dir.join("tls.crt"), &pki.cert_pem)?;
    std::fs::write(dir.join("tls.key"), &pki.key_pem)?;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = Router::new().route(
        "/mutate",
        post(move |body: Bytes| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let review: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let uid = review["request"]["uid"].clone();
                let patch = json!([{"op": "add", "path": "/metadata/labels/e2e.spillway.io~1mutated", "value": "true"}]);
                let patch = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
                axum::Json(json!({
                    "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                    "response": {"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": patch}
                }))
            }
        }),
    );
    let files = TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        client_ca: None,
    };
    let server = TlsServer::bind("127.0.0.1:0".parse()?, files).await?;
    let url = format!("https://{}/mutate", server.local_addr()?);
    let shutdown = CancellationToken::new();
    tokio::spawn(server.serve(app, Duration::from_secs(60), shutdown.clone()));

    let _hook = register_webhook(
        &client,
        WebhookRegistration {
            name: &ns.name,
            url: &url,
            ca_pem: &pki.ca_pem,
            namespace: &ns.name,
            failure_policy: "Fail",
        },
    )
    .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let mut attempt = 0;
    // The apiserver picks new webhook configurations up within a second or so.
    wait_until(
        "a pod mutated by the loopback webhook",
        Duration::from_secs(30),
        || {
            attempt += 1;
            let pods = pods.clone();
            let name = format!("probe-{attempt}");
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"app": "probe"}},
                    "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}
                }))?;
                let created = pods.create(&PostParams::default(), &pod).await?;
                let labels = created.metadata.labels.unwrap_or_default();
                Ok(labels.get("e2e.spillway.io/mutated").map(String::as_str) == Some("true"))
            }
        },
    )
    .await?;
    assert!(
        calls.load(Ordering::SeqCst) >= 1,
        "the webhook was never called"
    );
    shutdown.cancel();
    Ok(())
}
