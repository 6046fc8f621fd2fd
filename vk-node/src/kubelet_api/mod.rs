//! The kubelet API of the virtual node, over HTTPS, for the apiserver (`kubectl logs`),
//! metrics-server (`kubectl top`, the HPA) and other kubelet clients:
//!
//! | path | subresource checked | what |
//! |---|---|---|
//! | `/containerLogs/{ns}/{pod}/{container}` | `proxy` | logs, with follow |
//! | `/pods` | `proxy` | `PodList` of the pods bound to the node, as it sees them |
//! | `/runningpods/` | `proxy` | `PodList` of what the provider actually runs |
//! | `/stats/summary` | `stats` | kubelet Summary API |
//! | `/metrics/resource` | `metrics` | resource metrics (Prometheus text) |
//! | `/exec/{ns}/{pod}/{container}`, `/attach/…` | `proxy` | WebSocket remote command (`v5.channel.k8s.io`), through the provider |
//! | `/portForward/{ns}/{pod}` | `proxy` | refused at once with a sentence (the ports are at the provider) |
//! | `/healthz` | none | liveness |
//!
//! Callers authenticate with a client certificate or a bearer token (TokenReview), and are
//! authorized with a SubjectAccessReview for `get nodes/<subresource>` of this node.

mod listing;
mod logs;
mod stats;
mod streaming;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Extension;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use spillway_common::tls::ClientIdentity;

pub use logs::{
    ByteBudget, FOLLOW_POLL_INTERVAL, FollowMark, LOG_READ_QUEUE_WAIT, LogQuery, MAX_FOLLOWERS,
    MAX_LOG_READS, render, unsent,
};
pub use stats::UsageSampler;
pub use streaming::{PROTOCOLS, StreamQuery, status_message};

use crate::kubelet_authn::{Authenticator, bearer_token};
use crate::kubelet_authz::Authorizer;
use crate::pods::PodDirectory;
use crate::provider::{Provider, ProviderError};

/// How the API checks its callers.
pub struct CallerChecks {
    /// Bearer tokens (client certificates need no lookup).
    pub authenticator: Authenticator,
    /// Whether an identity may use a subresource of this node.
    pub authorizer: Authorizer,
}

/// What the handlers share.
pub(crate) struct ApiState<P> {
    provider: Arc<P>,
    directory: PodDirectory,
    followers: Arc<tokio::sync::Semaphore>,
    log_reads: Arc<tokio::sync::Semaphore>,
    checks: Arc<CallerChecks>,
    usage: Arc<UsageSampler<P>>,
    sessions: Arc<tokio::sync::Semaphore>,
    session_gauge: prometheus::IntGauge,
}

impl<P> Clone for ApiState<P> {
    fn clone(&self) -> Self {
        Self {
            provider: self.provider.clone(),
            directory: self.directory.clone(),
            followers: self.followers.clone(),
            log_reads: self.log_reads.clone(),
            checks: self.checks.clone(),
            usage: self.usage.clone(),
            sessions: self.sessions.clone(),
            session_gauge: self.session_gauge.clone(),
        }
    }
}

/// How many exec and attach sessions the node serves at once, and the gauge counting them.
pub struct SessionLimit {
    /// At most this many; one more is answered 429.
    pub max: usize,
    /// `spillway_exec_sessions{provider}`.
    pub open: prometheus::IntGauge,
}

/// The kubelet API router; serve it with optional client certificates (bearer tokens are
/// the other way in). Usage samples are reused for `usage_ttl`; exec and attach sessions
/// are held to `sessions`.
pub fn router<P: Provider>(
    provider: Arc<P>,
    directory: PodDirectory,
    checks: Arc<CallerChecks>,
    node_name: &str,
    usage_ttl: Duration,
    sessions: SessionLimit,
) -> Router {
    let usage = Arc::new(UsageSampler::new(
        provider.clone(),
        directory.clone(),
        node_name,
        usage_ttl,
    ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(logs::container_logs::<P>),
        )
        .route("/pods", get(listing::pods::<P>))
        .route("/pods/", get(listing::pods::<P>))
        .route("/runningpods", get(listing::running_pods::<P>))
        .route("/runningpods/", get(listing::running_pods::<P>))
        .route("/stats/summary", get(stats::summary::<P>))
        .route("/metrics/resource", get(stats::resource_metrics::<P>))
        // GET and POST, as a kubelet takes them.
        .route(
            "/exec/{namespace}/{pod}/{container}",
            any(streaming::exec::<P>),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            any(streaming::attach::<P>),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            any(streaming::port_forward::<P>),
        )
        .with_state(ApiState {
            provider,
            directory,
            followers: Arc::new(tokio::sync::Semaphore::new(MAX_FOLLOWERS)),
            log_reads: Arc::new(tokio::sync::Semaphore::new(MAX_LOG_READS)),
            checks,
            usage,
            sessions: Arc::new(tokio::sync::Semaphore::new(sessions.max)),
            session_gauge: sessions.open,
        })
}

/// Whether `container` is one of the pod's containers (init and ephemeral included).
fn has_container(pod: &k8s_openapi::api::core::v1::Pod, container: &str) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers.iter().any(|c| c.name == container)
            || spec
                .init_containers
                .iter()
                .flatten()
                .any(|c| c.name == container)
            || spec
                .ephemeral_containers
                .iter()
                .flatten()
                .any(|c| c.name == container)
    })
}

fn error_response(error: ProviderError) -> Response {
    let status = match error {
        ProviderError::NotFound(_) => StatusCode::NOT_FOUND,
        ProviderError::Invalid(_) => StatusCode::BAD_REQUEST,
        ProviderError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
        ProviderError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ProviderError::Transient(_) | ProviderError::Denied(_) => StatusCode::BAD_GATEWAY,
    };
    (status, error.to_string()).into_response()
}

fn unavailable(what: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{what} unavailable; try again"),
    )
        .into_response()
}

impl<P> ApiState<P> {
    /// The UID of pod `namespace/pod` on this node, which has `container`; `Err` with the
    /// 404 to send otherwise.
    fn container_pod_uid(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<String, (StatusCode, String)> {
        let found = self
            .directory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&format!("{namespace}/{pod}"))
            .map(|found| (found.metadata.uid.clone(), has_container(found, container)));
        match found {
            Some((Some(uid), true)) => Ok(uid),
            Some((Some(_), false)) => Err((
                StatusCode::NOT_FOUND,
                format!("container {container:?} is not in pod {namespace}/{pod}"),
            )),
            _ => Err((
                StatusCode::NOT_FOUND,
                format!("pod {namespace}/{pod} is not on this node"),
            )),
        }
    }

    /// Who the caller is: its verified client certificate, else its bearer token; `Err`
    /// with the answer to send when neither says.
    async fn authenticate(
        &self,
        certificate: Option<Extension<ClientIdentity>>,
        headers: &HeaderMap,
    ) -> Result<ClientIdentity, Response> {
        if let Some(Extension(who)) = certificate {
            return Ok(who);
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        let Some(token) = token else {
            return Err((
                StatusCode::UNAUTHORIZED,
                "Unauthorized: a client certificate or a bearer token is required",
            )
                .into_response());
        };
        match self.checks.authenticator.authenticate(token).await {
            Ok(Some(who)) => Ok(who),
            Ok(None) => Err((StatusCode::UNAUTHORIZED, "Unauthorized").into_response()),
            Err(error) => {
                tracing::warn!(%error, "cannot review a kubelet API caller's token");
                Err(unavailable("authentication"))
            }
        }
    }

    /// Refuses callers who are not authenticated, or whom the apiserver does not let
    /// `get nodes/<subresource>` of this node; `None` lets the request through.
    async fn guard(
        &self,
        certificate: Option<Extension<ClientIdentity>>,
        headers: &HeaderMap,
        subresource: &'static str,
    ) -> Option<Response> {
        let who = match self.authenticate(certificate, headers).await {
            Ok(who) => who,
            Err(refused) => return Some(refused),
        };
        match self.checks.authorizer.allowed(&who, subresource).await {
            Ok(true) => None,
            Ok(false) => Some(
                (
                    StatusCode::FORBIDDEN,
                    format!(
                        "Forbidden (user={}, verb=get, resource=nodes, subresource={subresource})",
                        who.name
                    ),
                )
                    .into_response(),
            ),
            Err(error) => {
                tracing::warn!(%error, caller = %who.name, "cannot authorize a kubelet API caller");
                Some(unavailable("authorization"))
            }
        }
    }
}
