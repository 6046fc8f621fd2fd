//! The HTTPS admission endpoint: `POST /mutate` answers AdmissionReviews from the index,
//! never blocking a pod. The router is public so tests drive it in-process.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use spillway_common::config::SharedConfig;

use crate::admission::{self, Evaluation};
use crate::decision_seal::DecisionSeal;
use crate::inflight::InFlight;
use crate::metrics::WebhookMetrics;
use crate::review::{self, AdmissionResponse, AdmissionReviewResponse};
use spillway_cluster::decision::Placement;
use spillway_cluster::index::ClusterIndex;

/// What the handler shares with the watchers.
#[derive(Clone)]
pub struct WebhookState {
    /// The watch-fed index.
    pub index: Arc<RwLock<ClusterIndex>>,
    /// Decisions not yet seen in the watch.
    pub in_flight: Arc<Mutex<InFlight>>,
    /// The operator config in force.
    pub config: SharedConfig,
    /// Metrics.
    pub metrics: WebhookMetrics,
    /// Seals decisions so a reinvocation keeps only this webhook's own.
    pub seal: DecisionSeal,
}

/// The largest AdmissionReview body accepted (413 above it, and the apiserver admits the
/// pod unchanged): above the apiserver's own 3 MiB request limit with room for the
/// review's envelope, and far below what would hurt memory.
pub const MAX_REVIEW_BYTES: usize = 6 << 20;

/// The admission router: `POST /mutate`.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .with_state(state)
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response()
}

/// Decodes the pod before taking any lock, evaluates under the index's read lock, and
/// takes the in-flight lock only for an opted-in pod that needs a new decision: from
/// reading the workload's pending counts to recording this decision, so concurrent
/// reviews of one workload see each other and caps hold. Other pods never wait on it.
fn decide(state: &WebhookState, request: &review::AdmissionRequest) -> Evaluation {
    let create = match admission::read_pod_create(request) {
        Ok(create) => create,
        Err(answer) => return *answer,
    };
    let config = state.config.load();
    let index = state
        .index
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let now = Instant::now();
    let mut in_flight: Option<MutexGuard<'_, InFlight>> = None;
    let mut lock_in_flight = || {
        let mut table = state
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        table.expire(now);
        table
    };
    let evaluation = admission::evaluate_pod(
        &create,
        &index,
        |key| {
            in_flight
                .get_or_insert_with(&mut lock_in_flight)
                .counts(key)
        },
        &config,
        &state.seal,
    );
    if let (Some(decision), Some(workload)) = (evaluation.decision, evaluation.workload.as_deref())
        && request.dry_run != Some(true)
    {
        let burst = matches!(decision.placement, Placement::Burst(_));
        in_flight.get_or_insert_with(&mut lock_in_flight).record(
            &request.uid,
            workload,
            burst,
            now,
        );
    }
    evaluation
}

async fn mutate(State(state): State<WebhookState>, body: Bytes) -> Response {
    let started = Instant::now();
    let (api_version, request) = match review::parse(&body) {
        Ok(parsed) => parsed,
        Err(error) => {
            state
                .metrics
                .errors
                .with_label_values(&["bad-request"])
                .inc();
            tracing::warn!(%error, "unparseable admission review");
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": error.to_string()}),
            );
        }
    };
    let span = tracing::debug_span!("admission", uid = %request.uid);
    let _entered = span.enter();
    let response = match std::panic::catch_unwind(AssertUnwindSafe(|| decide(&state, &request))) {
        Ok(evaluation) => {
            record_metrics(&state.metrics, &evaluation);
            evaluation.response
        }
        Err(_) => {
            state.metrics.errors.with_label_values(&["internal"]).inc();
            tracing::error!(uid = %request.uid, "internal error while deciding; pod admitted unchanged");
            AdmissionResponse::allow(&request.uid)
                .warn("spillway: internal error; pod admitted unchanged")
        }
    };
    state
        .metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    json(
        StatusCode::OK,
        &AdmissionReviewResponse::new(api_version.as_deref(), response),
    )
}

fn record_metrics(metrics: &WebhookMetrics, evaluation: &Evaluation) {
    if let Some(decision) = evaluation.decision {
        metrics
            .decisions
            .with_label_values(&[decision.placement.as_str(), decision.reason.as_str()])
            .inc();
        for reason in &evaluation.ineligible {
            metrics
                .ineligible
                .with_label_values(&[reason.as_str()])
                .inc();
        }
        tracing::debug!(
            placement = decision.placement.as_str(),
            reason = decision.reason.as_str(),
            workload = evaluation.workload.as_deref().unwrap_or(""),
            "decided"
        );
    }
}
