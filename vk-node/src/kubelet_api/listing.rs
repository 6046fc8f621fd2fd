//! `GET /pods` (the pods bound to the node, as the node sees them) and `GET /runningpods/`
//! (what the provider actually runs), both as v1 `PodList`s.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use spillway_common::tls::ClientIdentity;

use super::{ApiState, error_response};
use crate::provider::{Provider, RemotePhase, RemoteStatus};

fn pod_list(items: Vec<Value>) -> Json<Value> {
    Json(json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}))
}

pub(super) async fn pods<P: Provider>(
    State(state): State<ApiState<P>>,
    who: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = state.guard(who, &headers, "proxy").await {
        return refused;
    }
    let mut pods: Vec<Value> = {
        let directory = state.directory.read().unwrap_or_else(|p| p.into_inner());
        directory
            .values()
            .filter_map(|pod| serde_json::to_value(pod).ok())
            .collect()
    };
    pods.sort_by(|a, b| {
        let key = |v: &Value| {
            (
                v["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        };
        key(a).cmp(&key(b))
    });
    pod_list(pods).into_response()
}

/// A running pod as the kubelet lists it: name, namespace, UID and containers.
fn running_pod(
    uid: &str,
    remote: &RemoteStatus,
    known: Option<&k8s_openapi::api::core::v1::Pod>,
) -> Value {
    let images: std::collections::HashMap<&str, &str> = known
        .and_then(|p| p.spec.as_ref())
        .map(|spec| {
            spec.containers
                .iter()
                .map(|c| (c.name.as_str(), c.image.as_deref().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let containers: Vec<Value> = remote
        .containers
        .iter()
        .map(|c| json!({"name": c.name, "image": images.get(c.name.as_str()).copied().unwrap_or_default()}))
        .collect();
    let meta = known.map(|p| &p.metadata);
    json!({
        "metadata": {
            "name": meta.and_then(|m| m.name.as_deref()).unwrap_or_default(),
            "namespace": meta.and_then(|m| m.namespace.as_deref()).unwrap_or_default(),
            "uid": uid,
        },
        "spec": {"containers": containers},
        "status": {},
    })
}

pub(super) async fn running_pods<P: Provider>(
    State(state): State<ApiState<P>>,
    who: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = state.guard(who, &headers, "proxy").await {
        return refused;
    }
    let remote = match state.provider.list().await {
        Ok(remote) => remote,
        Err(error) => return error_response(error),
    };
    let by_uid: std::collections::HashMap<String, k8s_openapi::api::core::v1::Pod> = {
        let directory = state.directory.read().unwrap_or_else(|p| p.into_inner());
        directory
            .values()
            .filter_map(|pod| Some((pod.metadata.uid.clone()?, pod.clone())))
            .collect()
    };
    let mut running: Vec<(&String, &RemoteStatus)> = remote
        .iter()
        .filter(|(_, status)| status.phase != RemotePhase::Stopped)
        .collect();
    running.sort_by_key(|(uid, _)| *uid);
    let items = running
        .into_iter()
        .map(|(uid, status)| running_pod(uid, status, by_uid.get(uid)))
        .collect();
    pod_list(items).into_response()
}
