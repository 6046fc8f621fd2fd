//! What the controller should do now (DESIGN §4), as a pure function of the index, the
//! opted-in pods, the operator config, the clock and what it remembers between passes:
//! repair burst pods' deletion cost, move burst pods back when capacity returns (checked
//! with the webhook's own decision first), let long-unschedulable pods spill, correct
//! overshoot of the caps, ask the autoscaler for real nodes for burst replicas (see
//! [`backfill`]), and say so in aggregated Events. The loop in `run` only executes the
//! actions and reports evictions back.

use std::collections::{BTreeMap, HashMap, VecDeque};

use k8s_openapi::api::core::v1::Toleration;
use spillway_cluster::decision::{
    self, BudgetFacts, Decision, Placement, PlacementCounts, PodFacts, ProviderAsk, ProviderPick,
    Reason, choose_provider,
};
use spillway_cluster::index::{ClusterIndex, WorkloadView};
use spillway_cluster::policy::{self, WorkloadPolicy};
use spillway_common::config::{OperatorConfig, Provider, ProviderChoice};
use spillway_common::cost;
use spillway_common::eligibility::Ineligible;
use spillway_common::keys;
use spillway_common::pod_resources::PodResources;

use crate::snapshot::PodView;

pub mod backfill;
mod failover;

pub use backfill::{BackfillKind, BackfillObserved};

/// How long a cap must stay exceeded before the surplus is evicted: long enough for a
/// ReplicaSet to finish a scale-in that removes the surplus by itself (it deletes burst
/// pods first), short enough to converge within a minute.
pub const OVERSHOOT_GRACE_MS: i64 = 10_000;
/// The window of `rebalance.maxEvictionsPerMinute`.
const MINUTE_MS: i64 = 60_000;
/// How long a pod whose eviction a PodDisruptionBudget refused (429) is left alone before
/// the next attempt.
pub const REFUSED_BACKOFF_MS: i64 = 10_000;

/// A pod an action is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (precondition of the eviction).
    pub uid: String,
}

impl PodRef {
    fn of(pod: &PodView) -> Self {
        Self {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
        }
    }
}

/// Why a pod is evicted; doubles as a log field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictionCause {
    /// Capacity returned: the pod moves back to a regular node.
    Rebalance,
    /// Concurrent admissions left the workload above a cap.
    Overshoot,
}

/// Events the controller writes on Deployments (DESIGN §6), aggregated per workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventReason {
    /// The workload went from 0 to at least 1 burst replica.
    BurstStarted,
    /// A cap or the budget held replicas local.
    BurstCapped,
    /// A burst pod was moved back.
    Rebalanced,
    /// Replicas may not burst.
    Ineligible,
    /// Real capacity was requested from the autoscaler for the burst replicas.
    BackfillRequested,
    /// Every burst replica came home; the request was withdrawn.
    BackfillSatisfied,
    /// A provider kept refusing the workload's pods; they are decided again without it.
    ProviderFailover,
    /// A `spillway.io/*` annotation of the workload has a value Spillway cannot read (it
    /// is ignored and the default applies).
    InvalidAnnotation,
}

impl EventReason {
    /// The Event's `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventReason::BurstStarted => "BurstStarted",
            EventReason::BurstCapped => "BurstCapped",
            EventReason::Rebalanced => "Rebalanced",
            EventReason::Ineligible => "Ineligible",
            EventReason::BackfillRequested => "BackfillRequested",
            EventReason::BackfillSatisfied => "BackfillSatisfied",
            EventReason::ProviderFailover => "ProviderFailover",
            EventReason::InvalidAnnotation => "InvalidAnnotation",
        }
    }
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Give a burst pod the burst label and/or the low deletion cost it lacks.
    MarkBurst {
        /// The pod.
        pod: PodRef,
        /// Set `spillway.io/placement: burst`.
        label: bool,
        /// Set `controller.kubernetes.io/pod-deletion-cost: "-1000"`.
        deletion_cost: bool,
    },
    /// Evict through the Eviction API (PodDisruptionBudgets decide).
    Evict {
        /// The pod.
        pod: PodRef,
        /// `namespace/name` of its Deployment.
        workload: String,
        /// Why.
        cause: EvictionCause,
    },
    /// Label a pod the webhook never saw with where it is (`spillway.io/placement`),
    /// `spillway.io/reason: unadmitted` and the `spillway.io/unadmitted` mark, and, on a
    /// virtual node, the low deletion cost.
    AdoptUnadmitted {
        /// The pod.
        pod: PodRef,
        /// `namespace/name` of its Deployment.
        workload: String,
        /// On a virtual node.
        burst: bool,
    },
    /// Add the toleration of `provider`'s virtual node and `spillway.io/reason: pending`.
    Spill {
        /// The pod.
        pod: PodRef,
        /// `namespace/name` of its Deployment.
        workload: String,
        /// The provider whose node it may use: one it is eligible for and that can take
        /// it now.
        provider: Provider,
        /// Tolerations for the operator's own taints on that provider's virtual nodes.
        tolerations: Vec<Toleration>,
    },
    /// Make the workload's backfill request `replicas` pods of `needs` (creating,
    /// resizing or adopting it) and mark the Deployment `spillway.io/backfill`.
    RequestBackfill {
        /// `namespace/name` of the Deployment.
        workload: String,
        /// Its UID (the request's owner, so it goes with the Deployment).
        uid: String,
        /// Buffer or placeholders.
        kind: BackfillKind,
        /// Replicas to hold room for.
        replicas: u32,
        /// Requests of one replica.
        needs: PodResources,
        /// What placeholders run (`backfill.placeholderImage`).
        image: Option<String>,
    },
    /// Delete the workload's request of `kind` (buffer or every placeholder).
    WithdrawBackfill {
        /// `namespace/name` of the Deployment.
        workload: String,
        /// Which kind of request.
        kind: BackfillKind,
    },
    /// Remove the Deployment's `spillway.io/backfill` mark: every replica is home.
    UnmarkBackfill {
        /// `namespace/name` of the Deployment.
        workload: String,
    },
    /// Write `spillway.io/failover` on the Deployment: its new replicas avoid the
    /// providers in `value` until their cooldowns end.
    ExcludeProviders {
        /// `namespace/name` of the Deployment.
        workload: String,
        /// The annotation's value (see [`policy::format_failover`]).
        value: String,
    },
    /// Hand back a pod its provider keeps refusing: evict it (a Pending pod is deleted
    /// at once, whatever the PodDisruptionBudget) so its ReplicaSet's replacement is
    /// decided again, `from` excluded.
    FailOver {
        /// The pod.
        pod: PodRef,
        /// `namespace/name` of its Deployment.
        workload: String,
        /// The provider that refused it.
        from: Provider,
        /// Where its replacement goes: a provider's name or `local`.
        to: String,
    },
    /// Write an Event on the Deployment.
    Event {
        /// `namespace/name` of the Deployment.
        workload: String,
        /// Its UID.
        uid: String,
        /// Why.
        reason: EventReason,
        /// What happened, for people.
        note: String,
        /// Warning rather than Normal.
        warning: bool,
    },
}

impl Action {
    /// The action's kind, as metrics label it.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::MarkBurst { .. } => "mark_burst",
            Action::Evict { .. } => "evict",
            Action::AdoptUnadmitted { .. } => "adopt_unadmitted",
            Action::Spill { .. } => "spill",
            Action::RequestBackfill { .. } => "request_backfill",
            Action::WithdrawBackfill { .. } => "withdraw_backfill",
            Action::UnmarkBackfill { .. } => "unmark_backfill",
            Action::ExcludeProviders { .. } => "exclude_providers",
            Action::FailOver { .. } => "fail_over",
            Action::Event { .. } => "event",
        }
    }
}

/// What the controller remembers between passes (lost on restart or leader change,
/// which only delays a rebalance by one cooldown).
#[derive(Debug, Default)]
pub struct ControllerState {
    /// Since when utilization has been below `rebalance.belowUtilization`.
    below_since_ms: Option<i64>,
    /// When the rebalance evictions of the last minute happened.
    recent_evictions: VecDeque<i64>,
    /// Workloads with an eviction whose replacement is not Running and Ready yet, with
    /// the UID of the evicted pod.
    settling: HashMap<String, Vec<String>>,
    /// Since when a workload has been above a cap.
    overshoot_since: HashMap<String, i64>,
    /// Per workload: burst, capped and ineligible replicas seen in the last pass.
    seen: HashMap<String, Seen>,
    /// Whether a first pass set the baselines (no Events for what was already so).
    initialized: bool,
    /// Pods whose eviction was refused, with when they may be tried again.
    refused_until: HashMap<String, i64>,
    /// CPU millicores and memory bytes the last pass's backfill requests hold.
    backfill_requested: (u64, u64),
    /// Per workload, the annotation warnings last reported (an Event when they change).
    warned: HashMap<String, Vec<String>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Seen {
    burst: u32,
    capped: u32,
    ineligible: u32,
}

impl ControllerState {
    /// Records a successful eviction: the workload waits for its replacement, and the
    /// eviction counts against the per-minute limit (rebalance and overshoot share it).
    pub fn evicted(&mut self, workload: &str, uid: &str, cause: EvictionCause, now_ms: i64) {
        let _ = cause;
        self.settling
            .entry(workload.to_owned())
            .or_default()
            .push(uid.to_owned());
        self.recent_evictions.push_back(now_ms);
    }

    /// How many more evictions `rebalance.maxEvictionsPerMinute` allows now.
    fn evictions_left(&mut self, config: &OperatorConfig, now_ms: i64) -> usize {
        while self
            .recent_evictions
            .front()
            .is_some_and(|t| now_ms - t >= MINUTE_MS)
        {
            self.recent_evictions.pop_front();
        }
        (config.rebalance.max_evictions_per_minute as usize)
            .saturating_sub(self.recent_evictions.len())
    }

    /// Records that a PodDisruptionBudget refused evicting `uid`: it is left alone for
    /// [`REFUSED_BACKOFF_MS`].
    pub fn eviction_refused(&mut self, uid: &str, now_ms: i64) {
        self.refused_until
            .insert(uid.to_owned(), now_ms + REFUSED_BACKOFF_MS);
    }

    /// CPU millicores and memory bytes requested from the autoscaler (as of the last pass).
    pub fn backfill_requested(&self) -> (u64, u64) {
        self.backfill_requested
    }

    /// Whether utilization has stayed low for the whole cooldown (as of the last pass).
    pub fn cooled_down(&self, config: &OperatorConfig, now_ms: i64) -> bool {
        self.below_since_ms.is_some_and(|since| {
            now_ms - since >= (config.rebalance.cooldown_seconds as i64) * 1000
        })
    }
}

/// Everything one pass reads.
pub struct PlanInput<'a> {
    /// The shared index (capacity, workloads, counts).
    pub index: &'a ClusterIndex,
    /// Every opted-in pod.
    pub pods: &'a [PodView],
    /// The config in force.
    pub config: &'a OperatorConfig,
    /// Now, in milliseconds since the epoch.
    pub now_ms: i64,
    /// Spillway's backfill requests in the cluster.
    pub backfill: &'a BackfillObserved,
}

/// One opted-in workload and its pods.
struct Workload<'a> {
    key: &'a str,
    view: WorkloadView<'a>,
    policy: WorkloadPolicy,
    /// What its annotations hold that Spillway cannot read.
    warnings: Vec<String>,
    /// Where its burst pods go (`auto` is settled per pod, by its size).
    provider: ProviderChoice,
    pods: Vec<&'a PodView>,
}

impl Workload<'_> {
    /// The provider a replica like `pod` of this workload would burst to now, and why
    /// it cannot, if it cannot.
    fn provider_for(&self, input: &PlanInput<'_>, pod: &PodView) -> ProviderPick {
        let ask = ProviderAsk {
            needs: &pod.needs,
            constraints: &pod.constraints,
            // The pod itself does not count against its own rule.
            burst_siblings: self
                .view
                .counts
                .burst
                .saturating_sub(u32::from(pod.is_burst())),
            excluded: &self.policy.excluded_at(input.now_ms),
        };
        choose_provider(
            self.provider,
            &ask,
            &input.config.pricing,
            input.index,
            |p| pod.may_use(p),
        )
    }
}

impl Workload<'_> {
    fn live(&self) -> impl Iterator<Item = &&PodView> {
        self.pods.iter().filter(|p| p.is_live())
    }

    /// Every pod Running and Ready, as many as desired, and the evicted ones gone.
    fn settled(&self, evicted: &[String]) -> bool {
        let live: Vec<_> = self.live().collect();
        live.len() as u32 >= self.view.replicas
            && live.iter().all(|p| p.ready)
            && !live.iter().any(|p| evicted.contains(&p.uid))
    }
}

/// The workload's policy: the Deployment's annotations overlaid with its pod template's
/// (the template wins, as in the webhook). Never read from a pod: anyone who may create
/// pods could otherwise set a workload's policy with one labelled pod.
fn workload_policy(view: &WorkloadView<'_>) -> (WorkloadPolicy, Vec<String>) {
    policy::read(Some(view.annotations), Some(view.template_annotations))
}

fn group<'a>(input: &PlanInput<'a>) -> Vec<Workload<'a>> {
    let mut pods_by_workload: BTreeMap<&str, Vec<&PodView>> = BTreeMap::new();
    for pod in input.pods {
        if let Some(key) = pod.workload.as_deref() {
            pods_by_workload.entry(key).or_default().push(pod);
        }
    }
    let mut out = Vec::new();
    for view in input.index.workloads() {
        let pods = pods_by_workload.remove(view.key).unwrap_or_default();
        let (policy, warnings) = workload_policy(&view);
        if !policy.opted_in {
            continue;
        }
        out.push(Workload {
            key: view.key,
            provider: policy.provider.unwrap_or(input.config.default_provider),
            policy,
            warnings,
            view,
            pods,
        });
    }
    out
}

/// Runs one pass: updates `state` and returns what to do.
pub fn plan(input: &PlanInput<'_>, state: &mut ControllerState) -> Vec<Action> {
    let workloads = group(input);
    let mut actions = Vec::new();
    adopt_unadmitted(&workloads, &mut actions);
    repair_burst_pods(input, &mut actions);
    state.settling.retain(
        |key, evicted| match workloads.iter().find(|w| w.key == key) {
            Some(workload) => !workload.settled(evicted),
            None => false,
        },
    );
    failover::fail_over(input, &workloads, &mut actions);
    correct_overshoot(input, &workloads, state, &mut actions);
    rebalance(input, &workloads, state, &mut actions);
    spill_pending(input, &workloads, &mut actions);
    backfill::plan_backfill(input, &workloads, state, &mut actions);
    events(&workloads, state, &mut actions);
    actions
}

/// Pods of opted-in workloads the webhook never saw (it fails open) are labelled with
/// where they are, so caps, budgets, status and metrics count them; a pending one is
/// then spilled like any other.
fn adopt_unadmitted(workloads: &[Workload<'_>], actions: &mut Vec<Action>) {
    for workload in workloads {
        for pod in workload.live().filter(|p| p.placement_label.is_none()) {
            actions.push(Action::AdoptUnadmitted {
                pod: PodRef::of(pod),
                workload: workload.key.to_owned(),
                burst: pod.virtual_node.is_some(),
            });
        }
    }
}

/// Every burst pod carries the burst label and the low deletion cost, so ReplicaSets
/// remove burst replicas first on scale-in; local pods are left as their owners wrote them.
fn repair_burst_pods(input: &PlanInput<'_>, actions: &mut Vec<Action>) {
    for pod in input
        .pods
        .iter()
        .filter(|p| p.is_live() && p.is_burst() && p.placement_label.is_some())
    {
        let label = pod.virtual_node.is_some() && pod.placement_label.as_deref() != Some("burst");
        let deletion_cost = pod.deletion_cost.as_deref() != Some(keys::BURST_DELETION_COST);
        if label || deletion_cost {
            actions.push(Action::MarkBurst {
                pod: PodRef::of(pod),
                label,
                deletion_cost,
            });
        }
    }
}

/// The webhook's decision for a new replica of `workload` if the counts were `counts`.
fn decide_replacement(
    input: &PlanInput<'_>,
    workload: &Workload<'_>,
    pod: &PodView,
    counts: PlacementCounts,
) -> Decision {
    let pricing = &input.config.pricing;
    let pick = workload.provider_for(input, pod);
    let budget = BudgetFacts {
        pod_usd_per_hour: cost::hourly_usd(&pod.needs, pick.provider, pricing),
        cluster_spent: input.index.burst_usd_per_hour(
            None,
            pricing,
            input.config.default_provider.for_pricing(),
        ),
        workload_spent: input.index.burst_usd_per_hour(
            Some(workload.key),
            pricing,
            input.config.default_provider.for_pricing(),
        ),
        cluster_limit: input.config.budget.max_usd_per_hour,
    };
    // The decision only asks whether the pod may burst at all (an empty list); the view
    // keeps a yes/no, so any reason stands for "no".
    let ineligible: &[Ineligible] = if pod.eligible {
        &[]
    } else {
        &[Ineligible::TooLarge]
    };
    let facts = PodFacts {
        needs: pod.needs,
        tolerations: &pod.tolerations,
        constraints: &pod.constraints,
        provider: pick,
        ineligible,
        counts,
        replicas: workload.view.replicas,
        hpa: workload.view.hpa,
        budget,
    };
    decision::decide(&facts, &workload.policy, input.config, input.index)
}

/// Concurrent admissions (several webhook replicas) can leave a workload above
/// `max-local` or `max-burst`: once that has lasted [`OVERSHOOT_GRACE_MS`] with the
/// workload at its desired size, the newest surplus pod is evicted, with the rebalance's
/// manners: only if the decision puts its replacement on the other side *and* it could
/// run there (a regular node fits it, or a usable provider takes it), one pod per
/// workload until its replacement is Running and Ready, and within
/// `rebalance.maxEvictionsPerMinute` (shared with the rebalance).
fn correct_overshoot(
    input: &PlanInput<'_>,
    workloads: &[Workload<'_>],
    state: &mut ControllerState,
    actions: &mut Vec<Action>,
) {
    let mut left = state.evictions_left(input.config, input.now_ms);
    for workload in workloads {
        let counts = workload.view.counts;
        let cap_burst = workload
            .policy
            .max_burst
            .map(|cap| cap.resolve(workload.view.replicas));
        let surplus_burst = cap_burst.map_or(0, |cap| counts.burst.saturating_sub(cap));
        let surplus_local = workload
            .policy
            .max_local
            .map_or(0, |cap| counts.local.saturating_sub(cap));
        let at_size = counts.local + counts.burst == workload.view.replicas;
        if (surplus_burst == 0 && surplus_local == 0)
            || !at_size
            || state.settling.contains_key(workload.key)
        {
            state.overshoot_since.remove(workload.key);
            continue;
        }
        let since = *state
            .overshoot_since
            .entry(workload.key.to_owned())
            .or_insert(input.now_ms);
        if input.now_ms - since < OVERSHOOT_GRACE_MS || left == 0 {
            continue;
        }
        let mut newest: Vec<&&PodView> = workload.live().collect();
        newest.sort_by_key(|p| std::cmp::Reverse(p.created_ms));
        let burst_surplus = newest
            .iter()
            .filter(|p| p.is_burst())
            .take(surplus_burst as usize)
            .find(|pod| {
                let after = PlacementCounts {
                    burst: counts.burst - 1,
                    ..counts
                };
                decide_replacement(input, workload, pod, after).placement == Placement::Local
                    && input
                        .index
                        .any_node_fits(&pod.needs, &pod.tolerations, &pod.constraints)
            });
        let local_surplus = || {
            newest
                .iter()
                .filter(|p| !p.is_burst() && !p.node_disrupted)
                .take(surplus_local as usize)
                .find(|pod| {
                    let after = PlacementCounts {
                        local: counts.local - 1,
                        ..counts
                    };
                    // A burst decision names a provider that can take the pod.
                    matches!(
                        decide_replacement(input, workload, pod, after).placement,
                        Placement::Burst(_)
                    )
                })
        };
        if let Some(pod) = burst_surplus.or_else(local_surplus) {
            state.overshoot_since.remove(workload.key);
            actions.push(Action::Evict {
                pod: PodRef::of(pod),
                workload: workload.key.to_owned(),
                cause: EvictionCause::Overshoot,
            });
            left -= 1;
        }
    }
}

/// Moves burst pods back: those of a backfilled workload (its request made, so the
/// autoscaler is adding room for them) as soon as a regular node fits them; any other
/// once utilization has stayed below `rebalance.belowUtilization` for the cooldown and it
/// is older than the cooldown. Either way costliest first, at most one per pass and
/// `rebalance.maxEvictionsPerMinute`, one per workload until its replacement is Running
/// and Ready, and only when a regular node has room for it *and* the webhook's decision
/// would admit its replacement local without pressure, so a move never loops.
fn rebalance(
    input: &PlanInput<'_>,
    workloads: &[Workload<'_>],
    state: &mut ControllerState,
    actions: &mut Vec<Action>,
) {
    let config = &input.config.rebalance;
    let (cpu, memory) = input.index.totals().utilization();
    if cpu.max(memory) >= config.below_utilization || input.index.totals().allocatable_cpu == 0 {
        state.below_since_ms = None;
    } else {
        state.below_since_ms.get_or_insert(input.now_ms);
    }
    let cooled_down = state.cooled_down(input.config, input.now_ms);
    let backfilled = |w: &Workload<'_>| input.config.backfill.enabled() && w.policy.backfilling;
    if !config.enabled || !(cooled_down || workloads.iter().any(backfilled)) {
        return;
    }
    let planned = actions
        .iter()
        .filter(|a| matches!(a, Action::Evict { .. }))
        .count();
    if state.evictions_left(input.config, input.now_ms) <= planned {
        return;
    }
    tracing::debug!(
        utilization = cpu.max(memory),
        cooled_down,
        "looking for burst pods to move back"
    );
    let cooldown_ms = config.cooldown_seconds as i64 * 1000;
    state.refused_until.retain(|_, until| *until > input.now_ms);
    let refused = &state.refused_until;
    let mut candidates: Vec<(f64, &Workload<'_>, &PodView)> = workloads
        .iter()
        .filter(|w| !state.settling.contains_key(w.key))
        .flat_map(|w| {
            let pods: Vec<&PodView> = if backfilled(w) {
                backfill::homeable(w).collect()
            } else if cooled_down {
                w.live()
                    .copied()
                    .filter(|p| input.now_ms - p.created_ms >= cooldown_ms)
                    .collect()
            } else {
                Vec::new()
            };
            pods.into_iter().map(move |p| (w, p))
        })
        .filter(|(_, p)| p.virtual_node.is_some())
        .filter(|(_, p)| !refused.contains_key(&p.uid))
        .map(|(w, p)| {
            let provider = p
                .provider
                .unwrap_or_else(|| w.provider_for(input, p).provider);
            let usd = cost::hourly_usd(&p.needs, provider, &input.config.pricing).unwrap_or(0.0);
            (usd, w, p)
        })
        .collect();
    candidates.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.2.created_ms.cmp(&b.2.created_ms))
    });
    for (_, workload, pod) in candidates {
        if !input
            .index
            .any_node_fits(&pod.needs, &pod.tolerations, &pod.constraints)
        {
            tracing::debug!(pod = %pod.key(), "not moved back: no regular node has room for it");
            continue;
        }
        let counts = workload.view.counts;
        let after = PlacementCounts {
            burst: counts.burst.saturating_sub(1),
            ..counts
        };
        let decision = decide_replacement(input, workload, pod, after);
        tracing::debug!(pod = %pod.key(), ?decision, "replacement would be admitted so");
        if decision.placement == Placement::Local && decision.reason == Reason::NoPressure {
            actions.push(Action::Evict {
                pod: PodRef::of(pod),
                workload: workload.key.to_owned(),
                cause: EvictionCause::Rebalance,
            });
            return;
        }
    }
}

/// An opted-in pod unschedulable for `pendingSpill.afterSeconds` may use the virtual
/// node: within `max-burst` (spills already under way count) and the budgets.
fn spill_pending(input: &PlanInput<'_>, workloads: &[Workload<'_>], actions: &mut Vec<Action>) {
    let after_ms = input.config.pending_spill.after_seconds as i64 * 1000;
    for workload in workloads {
        let cap = workload
            .policy
            .max_burst
            .map(|cap| cap.resolve(workload.view.replicas));
        let spilling = workload
            .live()
            .filter(|p| !p.bound && p.reason_label.as_deref() == Some(Reason::Pending.as_str()))
            .count() as u32;
        let mut spent = input.index.burst_usd_per_hour(
            Some(workload.key),
            &input.config.pricing,
            input.config.default_provider.for_pricing(),
        );
        let mut cluster_spent = input.index.burst_usd_per_hour(
            None,
            &input.config.pricing,
            input.config.default_provider.for_pricing(),
        );
        let mut waiting: Vec<&&PodView> = workload
            .live()
            .filter(|p| {
                p.eligible
                    && !p.tolerates_virtual_node()
                    && p.unschedulable_since_ms
                        .is_some_and(|since| input.now_ms - since >= after_ms)
            })
            .collect();
        waiting.sort_by_key(|p| p.unschedulable_since_ms);
        let mut burst = workload.view.counts.burst + spilling;
        for pod in waiting {
            if cap.is_some_and(|cap| burst >= cap) {
                break;
            }
            let pick = workload.provider_for(input, pod);
            if let Some(why) = pick.unusable {
                tracing::debug!(pod = %pod.key(), reason = why.as_str(), "not spilled: no virtual node it may use can take it");
                continue;
            }
            let provider = pick.provider;
            let usd = cost::hourly_usd(&pod.needs, provider, &input.config.pricing);
            let budget = BudgetFacts {
                pod_usd_per_hour: usd,
                cluster_spent,
                workload_spent: spent,
                cluster_limit: input.config.budget.max_usd_per_hour,
            };
            if decision::over_budget(&budget, &workload.policy) {
                break;
            }
            actions.push(Action::Spill {
                pod: PodRef::of(pod),
                workload: workload.key.to_owned(),
                provider,
                tolerations: input.index.virtual_node_tolerations(provider),
            });
            burst += 1;
            spent += usd.unwrap_or(0.0);
            cluster_spent += usd.unwrap_or(0.0);
        }
    }
}

/// `BurstStarted` when a workload goes from 0 to ≥ 1 burst replicas, `BurstCapped` and
/// `Ineligible` when more replicas than in the last pass were held local for that
/// reason: one Event per change of a workload, never one per pod.
fn events(workloads: &[Workload<'_>], state: &mut ControllerState, actions: &mut Vec<Action>) {
    let mut seen = HashMap::new();
    let mut warned = HashMap::new();
    for workload in workloads {
        // Annotations it cannot read: said once per change, from the first pass on (a
        // restart says them again: they are still wrong).
        if !workload.warnings.is_empty() {
            if state.warned.get(workload.key) != Some(&workload.warnings) {
                actions.push(Action::Event {
                    workload: workload.key.to_owned(),
                    uid: workload.view.uid.to_owned(),
                    reason: EventReason::InvalidAnnotation,
                    note: workload.warnings.join("; "),
                    warning: true,
                });
            }
            warned.insert(workload.key.to_owned(), workload.warnings.clone());
        }
        let live_local_with = |reasons: &[Reason]| {
            workload
                .live()
                .filter(|p| !p.is_burst())
                .filter(|p| {
                    p.reason_label
                        .as_deref()
                        .and_then(Reason::parse)
                        .is_some_and(|r| reasons.contains(&r))
                })
                .count() as u32
        };
        let now = Seen {
            burst: workload.view.counts.burst,
            capped: live_local_with(&[Reason::MaxBurst, Reason::Budget]),
            ineligible: live_local_with(&[Reason::Ineligible]),
        };
        let before = state.seen.get(workload.key).copied().unwrap_or_default();
        seen.insert(workload.key.to_owned(), now);
        if !state.initialized {
            continue;
        }
        let mut event = |reason, note: String, warning| {
            actions.push(Action::Event {
                workload: workload.key.to_owned(),
                uid: workload.view.uid.to_owned(),
                reason,
                note,
                warning,
            })
        };
        if before.burst == 0 && now.burst > 0 {
            event(
                EventReason::BurstStarted,
                format!(
                    "{} of {} replicas burst to {}",
                    now.burst, workload.view.replicas, workload.provider
                ),
                false,
            );
        }
        if now.capped > before.capped {
            event(
                EventReason::BurstCapped,
                format!(
                    "{} replicas held local by max-burst or the cost budget although the cluster is under pressure",
                    now.capped
                ),
                true,
            );
        }
        if now.ineligible > before.ineligible {
            event(
                EventReason::Ineligible,
                format!(
                    "{} replicas may not burst to {} (see the admission warnings on the pods); they stay on regular nodes",
                    now.ineligible, workload.provider
                ),
                true,
            );
        }
    }
    state.seen = seen;
    state.warned = warned;
    state.initialized = true;
}

#[cfg(test)]
mod tests;
