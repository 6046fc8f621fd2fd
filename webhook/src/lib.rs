//! The burst admission webhook (DESIGN §3): a compact watch-fed index of the cluster, the
//! pure burst decision, the JSON patch that carries it, and the HTTPS server.

pub mod admission;
pub mod decision_seal;
pub mod feed;
pub mod inflight;
pub mod metrics;
pub mod patch;
pub mod review;
pub mod run;
pub mod server;
pub mod synthetic;

use spillway_common::config::OperatorConfig;

/// Why `spillway admit` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// The review on stdin was unusable.
    #[error(transparent)]
    Review(#[from] review::ReviewError),
    /// The cluster state was unusable.
    #[error(transparent)]
    ClusterState(#[from] spillway_cluster::cluster_state::ClusterStateError),
}

/// Answers one review offline, as the webhook would against `cluster_state`, deciding
/// afresh (a decision the pod carries is not this process's own).
pub fn admit(
    review_json: &[u8],
    cluster_state: &[u8],
    config: &OperatorConfig,
) -> Result<review::AdmissionReviewResponse, AdmitError> {
    let index = spillway_cluster::cluster_state::load(cluster_state)?;
    let (api_version, request) = review::parse(review_json)?;
    let evaluation = admission::evaluate(
        &request,
        &index,
        |_| spillway_cluster::decision::PlacementCounts::default(),
        config,
        // Offline there is no serving key: a decision the review carries is never kept,
        // the pod is decided as on its first pass.
        &decision_seal::DecisionSeal::random(),
    );
    Ok(review::AdmissionReviewResponse::new(
        api_version.as_deref(),
        evaluation.response,
    ))
}
