//! The kubelet's streaming endpoints (`/exec`, `/attach`, `/portForward`), which the
//! apiserver calls for `kubectl exec`, `attach` and `port-forward`. None is served on a
//! burst pod yet: each answers at once with a sentence the apiserver passes on to kubectl,
//! rather than a bare 404 or a connection that never upgrades.

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use spillway_common::tls::ClientIdentity;

use super::ApiState;
use crate::provider::Provider;

/// What port-forward cannot do on a virtual node, whatever the provider.
pub(crate) fn port_forward_refusal(provider: &str) -> String {
    format!(
        "port-forward is not supported on Spillway burst pods ({provider}): the pod runs at \
         the provider, not on a host this node can open its ports from; reach it through a \
         Service or its pod IP instead"
    )
}

/// What exec and attach say until they are served.
pub(crate) fn exec_refusal(what: &str, provider: &str) -> String {
    format!(
        "kubectl {what} is not supported on Spillway burst pods ({provider}) yet; use \
         kubectl logs, or scale the workload so a replica runs on a regular node"
    )
}

/// Authenticates and authorizes the caller as for any `nodes/proxy` path, then refuses
/// with `sentence` (given the provider's name).
async fn refuse<P: Provider>(
    state: ApiState<P>,
    who: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
    sentence: impl FnOnce(&str) -> String,
) -> Response {
    if let Some(refused) = state.guard(who, &headers, "proxy").await {
        return refused;
    }
    (StatusCode::BAD_REQUEST, sentence(state.provider.name())).into_response()
}

pub(super) async fn port_forward<P: Provider>(
    State(state): State<ApiState<P>>,
    who: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
) -> Response {
    refuse(state, who, headers, port_forward_refusal).await
}

pub(super) async fn exec<P: Provider>(
    State(state): State<ApiState<P>>,
    who: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
) -> Response {
    refuse(state, who, headers, |provider| {
        exec_refusal("exec", provider)
    })
    .await
}

pub(super) async fn attach<P: Provider>(
    State(state): State<ApiState<P>>,
    who: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
) -> Response {
    refuse(state, who, headers, |provider| {
        exec_refusal("attach", provider)
    })
    .await
}
