//! Turns one admission request into an answer: finds the pod's workload in the index,
//! reads its policy, decides, and builds the patch and warnings. Never fails: anything
//! unexpected is answered `allowed` with a warning.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use spillway_common::config::{Mode, OperatorConfig};
use spillway_common::eligibility::{self, Ineligible};
use spillway_common::keys;
use spillway_common::{cost, pod_resources};

use crate::decision_seal::{DecisionSeal, Sealed};
use crate::patch::{self, Mutation};
use crate::review::{AdmissionRequest, AdmissionResponse};
use spillway_cluster::constraints::NodeConstraints;
use spillway_cluster::decision::PlacementCounts;
use spillway_cluster::decision::{
    self, BudgetFacts, Decision, HpaFacts, Placement, PodFacts, ProviderAsk, Reason,
    choose_provider,
};
use spillway_cluster::index::ClusterIndex;
use spillway_cluster::policy;

/// The answer plus what the caller needs for metrics and in-flight tracking.
#[derive(Debug)]
pub struct Evaluation {
    /// What to send back.
    pub response: AdmissionResponse,
    /// The decision, for opted-in pods that got one now.
    pub decision: Option<Decision>,
    /// `namespace/name` of the Deployment, when known.
    pub workload: Option<String>,
    /// Why the pod may not burst.
    pub ineligible: Vec<Ineligible>,
}

impl Evaluation {
    fn plain(response: AdmissionResponse) -> Self {
        Self {
            response,
            decision: None,
            workload: None,
            ineligible: Vec::new(),
        }
    }
}

/// The ReplicaSet that controls a pod.
fn controlling_replicaset(pod: &Pod) -> Option<&OwnerReference> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "ReplicaSet" && o.controller == Some(true))
}

/// What the HPA asks of the Deployment, counting this pod as evidence: the pod exists
/// because its ReplicaSet was scaled to at least its own replicas, this one and the
/// decisions in flight, even when the watch has not yet shown the Deployment's new
/// replicas or the HPA's new status (both lag the pods they cause). Only the pod's own
/// ReplicaSet counts, so a rollout's surge pods are not taken for pressure.
fn hpa_with_this_pod(
    hpa: Option<HpaFacts>,
    pod: &Pod,
    index: &ClusterIndex,
    in_flight: PlacementCounts,
) -> Option<HpaFacts> {
    let mut hpa = hpa?;
    let own = controlling_replicaset(pod)
        .map(|owner| index.replicaset_counts(&owner.uid))
        .unwrap_or_default();
    let this_pod = own
        .local
        .saturating_add(own.burst)
        .saturating_add(in_flight.local)
        .saturating_add(in_flight.burst)
        .saturating_add(1);
    hpa.desired_replicas = hpa.desired_replicas.max(this_pod.min(hpa.max_replicas));
    Some(hpa)
}

/// The Deployment a pod belongs to, through its controlling ReplicaSet: the index's link
/// when it has one, else the ReplicaSet name less its `pod-template-hash` suffix.
fn workload_key(pod: &Pod, namespace: &str, index: &ClusterIndex) -> Option<String> {
    let owner = controlling_replicaset(pod)?;
    if let Some(key) = index.deployment_of_replicaset(&owner.uid) {
        return Some(key.to_owned());
    }
    let hash = pod.metadata.labels.as_ref()?.get("pod-template-hash")?;
    let name = owner.name.strip_suffix(hash.as_str())?.strip_suffix('-')?;
    Some(format!("{namespace}/{name}"))
}

/// The provider an earlier pass wrote into the pod's required node affinity.
fn affinity_provider(pod: &Pod) -> Option<spillway_common::config::Provider> {
    let required = pod
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?;
    required
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten())
        .filter(|e| e.key == keys::NODE_PROVIDER_LABEL && e.operator == "In")
        .find_map(|e| spillway_common::config::Provider::parse(e.values.as_ref()?.first()?))
}

/// A decision already written on the pod by an earlier pass (reinvocation). A burst
/// keeps the provider that pass chose (with `auto`, the usable nodes may have changed
/// since; a second provider would leave the pod matching no node).
///
/// Only a decision this webhook sealed moments ago, for this namespace and placement,
/// counts ([`DecisionSeal`]): a pod template carrying the annotation and the label gets a
/// decision of the webhook's own.
fn previous_decision(
    pod: &Pod,
    provider: spillway_common::config::Provider,
    seal: &DecisionSeal,
    namespace: &str,
    now_ms: i64,
) -> Option<Decision> {
    let value = pod.metadata.annotations.as_ref()?.get(keys::DECISION)?;
    let labels = pod.metadata.labels.as_ref()?;
    let placement = match labels.get(keys::PLACEMENT)?.as_str() {
        "burst" => Placement::Burst(affinity_provider(pod).unwrap_or(provider)),
        "local" => Placement::Local,
        _ => return None,
    };
    if !seal.opens(value, now_ms, sealed_about(pod, namespace, placement)) {
        return None;
    }
    let reason = labels
        .get(keys::REASON)
        .and_then(|r| Reason::parse(r))
        .unwrap_or(Reason::NoPressure);
    Some(Decision { placement, reason })
}

/// What a seal covers of a decision about `pod` in `namespace`.
fn sealed_about<'a>(pod: &'a Pod, namespace: &'a str, placement: Placement) -> Sealed<'a> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map_or("", |o| o.uid.as_str());
    Sealed {
        namespace,
        owner,
        placement: placement.as_str(),
        provider: match placement {
            Placement::Burst(provider) => provider.as_str(),
            Placement::Local => "",
        },
    }
}

/// The budgets that apply to a pod of `workload` and what is spent against them; the
/// sums are only computed when a budget is set. In-flight burst decisions of the workload
/// count at this pod's price (its siblings share its template).
pub fn budget_facts(
    index: &ClusterIndex,
    workload: Option<&str>,
    needs: &spillway_common::pod_resources::PodResources,
    provider: spillway_common::config::Provider,
    policy: &policy::WorkloadPolicy,
    config: &OperatorConfig,
    burst_in_flight: u32,
) -> BudgetFacts {
    let cluster_limit = config.budget.max_usd_per_hour;
    if cluster_limit.is_none() && policy.max_usd_per_hour.is_none() {
        return BudgetFacts::default();
    }
    let pod_usd_per_hour = cost::hourly_usd(needs, provider, &config.pricing);
    let in_flight = f64::from(burst_in_flight) * pod_usd_per_hour.unwrap_or(0.0);
    let spent = |workload| {
        index.burst_usd_per_hour(
            workload,
            &config.pricing,
            config.default_provider.for_pricing(),
        )
    };
    BudgetFacts {
        pod_usd_per_hour,
        cluster_spent: if cluster_limit.is_some() {
            spent(None) + in_flight
        } else {
            0.0
        },
        workload_spent: match (policy.max_usd_per_hour, workload) {
            (Some(_), Some(key)) => spent(Some(key)) + in_flight,
            _ => 0.0,
        },
        cluster_limit,
    }
}

/// A pod creation read from its review, before any lock is taken: the kind and operation
/// checked and the pod decoded (the costliest step of a review).
pub struct PodCreate<'a> {
    request: &'a AdmissionRequest,
    pod: Pod,
}

/// Reads a pod creation out of `request`; anything else gets its final answer as `Err`.
pub fn read_pod_create(request: &AdmissionRequest) -> Result<PodCreate<'_>, Box<Evaluation>> {
    let allow = || AdmissionResponse::allow(&request.uid);
    let kind = &request.kind;
    if kind.kind != "Pod" || !kind.group.is_empty() || request.sub_resource.is_some() {
        let what = format!("{}/{} {}", kind.group, kind.version, kind.kind);
        return Err(Box::new(Evaluation::plain(allow().warn(format!(
            "spillway: only Pod creations are mutated; {what} admitted unchanged"
        )))));
    }
    if request.operation != "CREATE" {
        return Err(Box::new(Evaluation::plain(allow())));
    }
    let Some(object) = request.object.as_ref() else {
        return Err(Box::new(Evaluation::plain(
            allow().warn("spillway: request has no object; pod admitted unchanged"),
        )));
    };
    match serde_json::from_str::<Pod>(object.get()) {
        Ok(pod) => Ok(PodCreate { request, pod }),
        Err(error) => Err(Box::new(Evaluation::plain(allow().warn(format!(
            "spillway: object is not a valid Pod ({error}); admitted unchanged"
        ))))),
    }
}

/// Evaluates `request` against `index`; `in_flight` adds the workload's decisions that
/// have not shown up in the index yet.
pub fn evaluate(
    request: &AdmissionRequest,
    index: &ClusterIndex,
    in_flight: impl FnMut(&str) -> PlacementCounts,
    config: &OperatorConfig,
    seal: &DecisionSeal,
) -> Evaluation {
    match read_pod_create(request) {
        Ok(create) => evaluate_pod(&create, index, in_flight, config, seal),
        Err(answer) => *answer,
    }
}

/// Evaluates a pod creation against `index`. `in_flight` is called only for an opted-in
/// pod that needs a new decision (at most once), so a caller may take its in-flight lock
/// lazily there and hold it until the decision is recorded.
pub fn evaluate_pod(
    create: &PodCreate<'_>,
    index: &ClusterIndex,
    mut in_flight: impl FnMut(&str) -> PlacementCounts,
    config: &OperatorConfig,
    seal: &DecisionSeal,
) -> Evaluation {
    let (request, pod) = (create.request, &create.pod);
    let allow = || AdmissionResponse::allow(&request.uid);
    let namespace = request
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or("default");
    let workload = workload_key(pod, namespace, index);
    let view = workload.as_deref().and_then(|key| {
        let (ns, name) = key.split_once('/')?;
        index.workload(ns, name)
    });
    let (policy, mut warnings) = policy::read(
        view.as_ref().map(|v| v.annotations),
        pod.metadata.annotations.as_ref(),
    );
    if !policy.opted_in {
        let mut response = allow();
        response.warnings = warnings;
        return Evaluation {
            workload,
            ..Evaluation::plain(response)
        };
    }
    let needs = pod
        .spec
        .as_ref()
        .map(pod_resources::effective)
        .unwrap_or_default();
    let constraints = pod
        .spec
        .as_ref()
        .map(NodeConstraints::of)
        .unwrap_or_default();
    // The provider is settled here, once, so eligibility, budget and placement agree;
    // a provider the controller failed the workload over from is avoided until then.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let ask = ProviderAsk {
        needs: &needs,
        constraints: &constraints,
        burst_siblings: view.as_ref().map_or(0, |v| v.counts.burst),
        excluded: &policy.excluded_at(now_ms),
    };
    let pick = choose_provider(
        policy.provider.unwrap_or(config.default_provider),
        &ask,
        &config.pricing,
        index,
        |p| eligibility::check(pod, &needs, p).is_empty(),
    );
    let provider = pick.provider;
    let policy = policy::WorkloadPolicy {
        provider: Some(provider.into()),
        ..policy
    };
    let ineligible = eligibility::check(pod, &needs, provider);
    let previous = previous_decision(pod, provider, seal, namespace, now_ms);
    let carried = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(keys::DECISION));
    if previous.is_none() && carried.is_some() {
        warnings.push(format!(
            "spillway: the pod's {} annotation is not a decision of this webhook's (copied \
             from another pod into its template?); it was decided afresh",
            keys::DECISION
        ));
    }
    let decision = previous.unwrap_or_else(|| {
        let mut counts = view.as_ref().map(|v| v.counts).unwrap_or_default();
        let mut pending = PlacementCounts::default();
        if let Some(key) = workload.as_deref() {
            pending = in_flight(key);
            counts.local += pending.local;
            counts.burst += pending.burst;
        }
        let burst_in_flight = pending.burst;
        let budget = budget_facts(
            index,
            workload.as_deref(),
            &needs,
            provider,
            &policy,
            config,
            burst_in_flight,
        );
        let facts = PodFacts {
            needs,
            tolerations: pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.as_deref())
                .unwrap_or(&[]),
            constraints: &constraints,
            provider: pick,
            ineligible: &ineligible,
            counts,
            replicas: view.as_ref().map(|v| v.replicas).unwrap_or(1),
            hpa: hpa_with_this_pod(view.as_ref().and_then(|v| v.hpa), pod, index, pending),
            budget,
        };
        decision::decide(&facts, &policy, config, index)
    });
    if !ineligible.is_empty() {
        let reasons: Vec<&str> = ineligible.iter().map(|r| r.as_str()).collect();
        warnings.push(format!(
            "spillway: pod may not burst to {provider} ({}); it stays on regular nodes",
            reasons.join(", ")
        ));
    }
    // A kept decision keeps its sealed value; a new one is sealed now.
    let sealed = match (previous, carried) {
        (Some(_), Some(value)) => value.clone(),
        _ => seal.seal(
            &request.uid,
            now_ms,
            sealed_about(pod, namespace, decision.placement),
        ),
    };
    let burst_tolerations = match decision.placement {
        Placement::Burst(provider) => index.virtual_node_tolerations(provider),
        Placement::Local => Vec::new(),
    };
    let ops = match config.mode {
        Mode::Enforce => patch::build(
            pod,
            &Mutation {
                placement: decision.placement,
                reason: decision.reason,
                decision: &sealed,
                tolerations: &burst_tolerations,
            },
        ),
        Mode::Shadow => patch::shadow(pod, decision.placement, decision.reason),
    };
    let mut response = allow().with_patch(&ops);
    response.warnings = warnings;
    Evaluation {
        response,
        // A reinvocation re-applies an old decision; it is not a new one to count.
        decision: previous.is_none().then_some(decision),
        workload,
        ineligible,
    }
}
