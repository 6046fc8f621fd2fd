//! Carries out a pass's actions against the apiserver: patches, evictions through the
//! Eviction API (a PodDisruptionBudget's 429 is "blocked", retried by a later pass,
//! never forced), and Events on Deployments through kube's recorder, which aggregates
//! repeats into series.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Toleration};
use kube::Client;
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder};
use serde_json::json;
use spillway_cluster::index::tolerates;
use spillway_common::config::Provider;
use spillway_common::keys;

use crate::backfill::{Backfill, BackfillError};
use crate::metrics::ControllerMetrics;
use crate::plan::{Action, ControllerState, EventReason, EvictionCause, PodRef};

/// Field manager of the controller's patches.
pub const FIELD_MANAGER: &str = "spillway-controller";
/// Deadline of one action: a pass never waits longer on the apiserver than this per
/// action (the next pass sees what is still to do).
pub const ACTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What failed, named after the action; doubles as the `action` metric label.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// Patching a burst pod's label or deletion cost.
    #[error("mark burst pod: {0}")]
    MarkBurst(kube::Error),
    /// Adding the toleration to a pending pod.
    #[error("spill pending pod: {0}")]
    Spill(kube::Error),
    /// Evicting a pod.
    #[error("evict: {0}")]
    Evict(kube::Error),
    /// Marking a Deployment to avoid a provider.
    #[error("fail over: {0}")]
    FailOver(kube::Error),
    /// Writing an Event.
    #[error("publish event: {0}")]
    PublishEvent(kube::Error),
    /// Requesting, resizing or withdrawing backfill.
    #[error("backfill: {0}")]
    Backfill(#[from] BackfillError),
    /// An action ran past [`ACTION_TIMEOUT`].
    #[error("no answer within {ACTION_TIMEOUT:?}")]
    Timeout,
}

impl ActionError {
    fn label(&self) -> &'static str {
        match self {
            ActionError::MarkBurst(_) => "mark_burst",
            ActionError::Spill(_) => "spill",
            ActionError::Evict(_) => "evict",
            ActionError::FailOver(_) => "fail_over",
            ActionError::PublishEvent(_) => "publish_event",
            ActionError::Backfill(_) => "backfill",
            ActionError::Timeout => "timeout",
        }
    }
}

/// Executes actions.
pub struct Executor {
    client: Client,
    /// For evictions: without the client's own retries, which would wait out a
    /// PodDisruptionBudget's 429 for minutes instead of letting a later pass try again.
    evictions: Client,
    recorder: Recorder,
    metrics: ControllerMetrics,
    backfill: Backfill,
}

/// A client for evictions: the inferred config without kube's default retry layer, so a
/// 429 comes back at once (it is counted as `blocked` and retried by a later pass).
pub async fn eviction_client() -> Result<Client, kube::Error> {
    let mut config = spillway_common::kube_access::config().await?;
    config.default_retry = false;
    Client::try_from(config)
}

fn deployment_reference(workload: &str, uid: &str) -> ObjectReference {
    let (namespace, name) = workload.split_once('/').unwrap_or(("", workload));
    ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some("Deployment".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        uid: (!uid.is_empty()).then(|| uid.to_owned()),
        ..ObjectReference::default()
    }
}

#[derive(PartialEq, Eq)]
enum Evicted {
    Yes,
    Blocked,
}

impl Executor {
    /// An executor reporting as `instance` (the leader identity); `evictions` is a client
    /// without retries (see [`eviction_client`]).
    pub fn new(
        client: Client,
        evictions: Client,
        instance: &str,
        metrics: ControllerMetrics,
    ) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(instance.to_owned()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            backfill: Backfill::new(client.clone()),
            client,
            evictions,
            metrics,
        }
    }

    /// Backfill against the apiserver (what the pass reads before planning).
    pub fn backfill(&self) -> &Backfill {
        &self.backfill
    }

    fn pods(&self, pod: &PodRef) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &pod.namespace)
    }

    /// Runs `actions` in order, recording evictions in `state`; one failure does not stop
    /// the others (the next pass sees what is still to do). Stops as soon as `leading` is
    /// cancelled: a replica that lost its Lease acts no more.
    pub async fn run(
        &self,
        actions: Vec<Action>,
        state: &mut ControllerState,
        now_ms: i64,
        leading: &tokio_util::sync::CancellationToken,
    ) {
        for action in actions {
            if leading.is_cancelled() {
                return;
            }
            let result = tokio::time::timeout(ACTION_TIMEOUT, self.one(action, state, now_ms))
                .await
                .unwrap_or(Err(ActionError::Timeout));
            if let Err(error) = result {
                self.metrics
                    .actions_failed
                    .with_label_values(&[error.label()])
                    .inc();
                tracing::warn!(%error, "controller action failed; a later pass retries");
            }
        }
    }

    async fn one(
        &self,
        action: Action,
        state: &mut ControllerState,
        now_ms: i64,
    ) -> Result<(), ActionError> {
        match action {
            Action::MarkBurst {
                pod,
                label,
                deletion_cost,
            } => {
                let mut metadata = json!({});
                if label {
                    metadata["labels"] = json!({keys::PLACEMENT: "burst"});
                }
                if deletion_cost {
                    metadata["annotations"] =
                        json!({keys::POD_DELETION_COST: keys::BURST_DELETION_COST});
                }
                self.pods(&pod)
                    .patch(
                        &pod.name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": metadata})),
                    )
                    .await
                    .map_err(ActionError::MarkBurst)?;
                self.metrics.deletion_cost_repairs.inc();
                tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), label, deletion_cost, "burst pod marked");
            }
            Action::AdoptUnadmitted {
                pod,
                workload,
                burst,
            } => {
                let mut annotations = json!({keys::UNADMITTED: "true"});
                if burst {
                    annotations[keys::POD_DELETION_COST] = json!(keys::BURST_DELETION_COST);
                }
                let placement = if burst { "burst" } else { "local" };
                let patch = json!({"metadata": {
                    "labels": {keys::PLACEMENT: placement, keys::REASON: "unadmitted"},
                    "annotations": annotations
                }});
                self.pods(&pod)
                    .patch(&pod.name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(ActionError::MarkBurst)?;
                let (namespace, name) = workload.split_once('/').unwrap_or(("", &workload));
                self.metrics
                    .unadmitted
                    .with_label_values(&[namespace, name])
                    .inc();
                tracing::warn!(pod = %format!("{}/{}", pod.namespace, pod.name), %workload, placement, "pod the webhook never saw adopted (it failed open)");
            }
            Action::Spill {
                pod,
                workload,
                provider,
                tolerations,
            } => {
                self.spill(&pod, provider, &tolerations)
                    .await
                    .map_err(ActionError::Spill)?;
                self.metrics.pending_spills.inc();
                tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), %workload, %provider, "unschedulable pod may now use the provider's virtual node");
            }
            Action::Evict {
                pod,
                workload,
                cause,
            } => {
                let counter = match cause {
                    EvictionCause::Rebalance => &self.metrics.rebalance_evictions,
                    EvictionCause::Overshoot => &self.metrics.overshoot_evictions,
                };
                let result = self.evict(&pod).await;
                let label = match &result {
                    Ok(Evicted::Yes) => "evicted",
                    Ok(Evicted::Blocked) => "blocked",
                    Err(_) => "error",
                };
                counter.with_label_values(&[label]).inc();
                let pod_key = format!("{}/{}", pod.namespace, pod.name);
                match result? {
                    Evicted::Blocked => {
                        state.eviction_refused(&pod.uid, now_ms);
                        tracing::info!(pod = %pod_key, ?cause, "eviction refused by a PodDisruptionBudget; retried later");
                    }
                    Evicted::Yes => {
                        tracing::info!(pod = %pod_key, %workload, ?cause, "evicted");
                        state.evicted(&workload, &pod.uid, cause, now_ms);
                        if cause == EvictionCause::Rebalance {
                            let note = format!(
                                "evicted burst pod {} so its replacement runs on a regular node (capacity returned)",
                                pod.name
                            );
                            self.publish(&workload, "", EventReason::Rebalanced, note, false)
                                .await?;
                        }
                    }
                }
            }
            Action::RequestBackfill {
                workload,
                uid,
                kind,
                replicas,
                needs,
                image,
            } => {
                self.backfill
                    .request(&workload, &uid, kind, replicas, &needs, image.as_deref())
                    .await?;
                tracing::info!(%workload, kind = kind.as_str(), replicas, "backfill requested from the autoscaler");
            }
            Action::WithdrawBackfill { workload, kind } => {
                self.backfill.withdraw(&workload, kind).await?;
                tracing::info!(%workload, kind = kind.as_str(), "backfill withdrawn");
            }
            Action::ExcludeProviders { workload, value } => {
                let (namespace, name) = workload.split_once('/').unwrap_or(("", &workload));
                let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
                let patch = json!({"metadata": {"annotations": {keys::FAILOVER: value}}});
                deployments
                    .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(ActionError::FailOver)?;
                tracing::warn!(%workload, failover = %value, "providers refusing the workload's pods are avoided");
            }
            Action::FailOver {
                pod,
                workload,
                from,
                to,
            } => {
                // A Pending pod is deleted by the Eviction API without asking its
                // PodDisruptionBudget; the precondition keeps a newer pod of the name safe.
                let evicted = self.evict(&pod).await?;
                if evicted == Evicted::Yes {
                    self.metrics
                        .failovers
                        .with_label_values(&[from.as_str(), to.as_str()])
                        .inc();
                    tracing::warn!(pod = %format!("{}/{}", pod.namespace, pod.name), %workload, %from, %to, "pod failed over");
                }
            }
            Action::UnmarkBackfill { workload } => {
                self.backfill.unmark(&workload).await?;
                tracing::info!(%workload, "every burst replica is home; backfill mark removed");
            }
            Action::Event {
                workload,
                uid,
                reason,
                note,
                warning,
            } => self.publish(&workload, &uid, reason, note, warning).await?,
        }
        Ok(())
    }

    async fn spill(
        &self,
        pod: &PodRef,
        provider: Provider,
        operator_taints: &[Toleration],
    ) -> Result<(), kube::Error> {
        let api = self.pods(pod);
        // That provider's node only: a wildcard would let the pod land on a provider it
        // is not eligible for. (Node affinity cannot be added to a created pod.)
        let toleration = json!({
            "key": keys::VIRTUAL_NODE_TAINT,
            "operator": "Equal",
            "value": provider.as_str(),
            "effect": "NoSchedule"
        });
        // Tolerations may only be added to a live pod. The merge patch carries the whole
        // list (the existing ones first, unchanged) and the resourceVersion read, so a
        // concurrent change makes it fail with a conflict and a later pass retries.
        let current = api.get(&pod.name).await?;
        if current.metadata.uid.as_deref() != Some(pod.uid.as_str()) {
            return Ok(());
        }
        let existing: &[Toleration] = current
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or(&[]);
        let mut tolerations: Vec<serde_json::Value> = existing
            .iter()
            .map(|t| serde_json::to_value(t).unwrap_or_default())
            .collect();
        tolerations.push(toleration);
        // And the operator's own taints on that node (`--node-taint`) the pod lacks.
        for wanted in operator_taints {
            if !tolerates(existing, wanted) {
                tolerations.push(serde_json::to_value(wanted).unwrap_or_default());
            }
        }
        let patch = json!({
            "metadata": {
                "resourceVersion": current.metadata.resource_version,
                "labels": {keys::REASON: "pending"}
            },
            "spec": {"tolerations": tolerations}
        });
        api.patch(&pod.name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    async fn evict(&self, pod: &PodRef) -> Result<Evicted, ActionError> {
        let params = EvictParams {
            delete_options: Some(DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(pod.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            }),
            ..EvictParams::default()
        };
        let pods: Api<Pod> = Api::namespaced(self.evictions.clone(), &pod.namespace);
        match pods.evict(&pod.name, &params).await {
            Ok(_) => Ok(Evicted::Yes),
            Err(kube::Error::Api(status)) if status.code == 429 => Ok(Evicted::Blocked),
            Err(error) => Err(ActionError::Evict(error)),
        }
    }

    async fn publish(
        &self,
        workload: &str,
        uid: &str,
        reason: EventReason,
        note: String,
        warning: bool,
    ) -> Result<(), ActionError> {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.as_str().into(),
            note: Some(note),
            action: "Burst".into(),
            secondary: None,
        };
        self.recorder
            .publish(&event, &deployment_reference(workload, uid))
            .await
            .map_err(ActionError::PublishEvent)
    }
}
