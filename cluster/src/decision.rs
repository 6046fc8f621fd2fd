//! The burst decision (DESIGN §3): a pure function of the pod's facts, its workload's
//! policy and counts, and a read-only view of cluster capacity. It sits below the index:
//! it defines the small view it reads ([`CapacityView`] and the plain types here) and the
//! index implements it.

use k8s_openapi::api::core::v1::Toleration;
use spillway_common::config::{OperatorConfig, PricingConfig, Provider, ProviderChoice};
use spillway_common::cost;
use spillway_common::eligibility::{self, Ineligible};
use spillway_common::pod_resources::PodResources;

use crate::constraints::NodeConstraints;
use crate::policy::WorkloadPolicy;

/// Sums over Ready, schedulable, non-virtual nodes. Exact (128 bits hold any number of
/// `u64` requests), so one absurd request (`16Ei`) neither saturates a sum nor, once gone,
/// takes the other pods' requests away with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapacityTotals {
    /// Allocatable millicores.
    pub allocatable_cpu: u128,
    /// Allocatable bytes.
    pub allocatable_memory: u128,
    /// Millicores requested by pods bound to those nodes.
    pub requested_cpu: u128,
    /// Bytes requested by pods bound to those nodes.
    pub requested_memory: u128,
}

impl CapacityTotals {
    /// Request utilization of CPU and memory (0 when nothing is allocatable).
    pub fn utilization(&self) -> (f64, f64) {
        let ratio = |requested: u128, allocatable: u128| {
            if allocatable == 0 {
                0.0
            } else {
                requested as f64 / allocatable as f64
            }
        };
        (
            ratio(self.requested_cpu, self.allocatable_cpu),
            ratio(self.requested_memory, self.allocatable_memory),
        )
    }
}

/// What an HPA says about its Deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HpaFacts {
    /// `spec.minReplicas` (default 1).
    pub min_replicas: u32,
    /// `spec.maxReplicas`.
    pub max_replicas: u32,
    /// `status.desiredReplicas`.
    pub desired_replicas: u32,
}

/// Placement counts of a workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlacementCounts {
    /// Pods not on a virtual node and not labelled burst.
    pub local: u32,
    /// Pods on a virtual node or labelled burst.
    pub burst: u32,
}

/// The budgets that apply to a pod and what is already spent against them, in USD per
/// hour (estimated from billed sizes and `pricing.*`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BudgetFacts {
    /// The pod's own estimated cost at the provider it would burst to (`None`: unknown,
    /// e.g. too large for any size; the eligibility rules keep such pods local anyway).
    pub pod_usd_per_hour: Option<f64>,
    /// Running burst pods of the whole cluster.
    pub cluster_spent: f64,
    /// Running burst pods of this workload.
    pub workload_spent: f64,
    /// `budget.maxUsdPerHour` of the operator config.
    pub cluster_limit: Option<f64>,
}

/// Where a pod goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// A regular node.
    Local,
    /// The virtual node of a provider.
    Burst(Provider),
}

impl Placement {
    /// `local` or `burst`, the value of the `spillway.io/placement` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Local => "local",
            Placement::Burst(_) => "burst",
        }
    }
}

/// Why the decision went the way it did; doubles as the `reason` metric label and the
/// `spillway.io/reason` pod label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Request utilization including the pod reached the capacity threshold.
    Capacity,
    /// No regular node has room for the pod.
    NoFit,
    /// The HPA is near its ceiling and the workload is past its baseline.
    Hpa,
    /// The workload already has `max-local` local replicas.
    MaxLocal,
    /// No pressure: the pod stays local.
    NoPressure,
    /// Pressure, but the workload already has `max-burst` burst replicas.
    MaxBurst,
    /// Pressure, but the pod may not burst.
    Ineligible,
    /// Pressure, but bursting it would exceed the cluster or workload cost budget.
    Budget,
    /// The pod stayed unschedulable and the controller let it use the virtual node.
    Pending,
    /// Pressure, but no virtual node of a provider the workload allows can take the pod
    /// (missing, NotReady, degraded, full, or excluded after a failover).
    ProviderUnavailable,
    /// Pressure, but the pod's own node selector, node affinity, anti-affinity or
    /// topology spread rules out every virtual node it could go to.
    Constraints,
    /// The webhook never saw the pod (it failed open); the controller found it where it
    /// runs and labelled it so.
    Unadmitted,
}

impl Reason {
    /// Kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Capacity => "capacity",
            Reason::NoFit => "no-fit",
            Reason::Hpa => "hpa",
            Reason::MaxLocal => "max-local",
            Reason::NoPressure => "no-pressure",
            Reason::MaxBurst => "max-burst",
            Reason::Ineligible => "ineligible",
            Reason::Budget => "budget",
            Reason::Pending => "pending",
            Reason::ProviderUnavailable => "provider-unavailable",
            Reason::Constraints => "constraints",
            Reason::Unadmitted => "unadmitted",
        }
    }

    /// Parses a `spillway.io/reason` label value.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "capacity" => Reason::Capacity,
            "no-fit" => Reason::NoFit,
            "hpa" => Reason::Hpa,
            "max-local" => Reason::MaxLocal,
            "no-pressure" => Reason::NoPressure,
            "max-burst" => Reason::MaxBurst,
            "ineligible" => Reason::Ineligible,
            "budget" => Reason::Budget,
            "pending" => Reason::Pending,
            "provider-unavailable" => Reason::ProviderUnavailable,
            "constraints" => Reason::Constraints,
            "unadmitted" => Reason::Unadmitted,
            _ => return None,
        })
    }

    /// Whether a local pod was held back by a cap or the budget (`BurstCapped`).
    pub fn is_cap(self) -> bool {
        matches!(self, Reason::MaxBurst | Reason::Budget)
    }
}

/// Whether a provider's virtual node can take a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderNode {
    /// One exists, Ready, not degraded, with room, and its labels satisfy the pod.
    Takes,
    /// None is usable: missing, NotReady, degraded or full.
    Unusable,
    /// A usable one exists, but the pod's node selector or affinity rules it out.
    Constrained,
}

/// What the decision needs to know about capacity; the index implements it, tests may
/// use any other.
pub trait CapacityView {
    /// Sums over Ready, schedulable, non-virtual nodes.
    fn totals(&self) -> CapacityTotals;
    /// Whether one such node, with taints the pod tolerates and labels its constraints
    /// accept, has room for `needs`.
    fn any_node_fits(
        &self,
        needs: &PodResources,
        tolerations: &[Toleration],
        constraints: &NodeConstraints,
    ) -> bool;
    /// Whether a virtual node of `provider` can take a pod of `needs` and `constraints`.
    fn provider_node(
        &self,
        provider: Provider,
        needs: &PodResources,
        constraints: &NodeConstraints,
    ) -> ProviderNode {
        let _ = (provider, needs, constraints);
        ProviderNode::Takes
    }
}

/// The provider a pod would burst to, and why it cannot, if it cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProviderPick {
    /// The provider chosen; when none can take the pod, the one its eligibility, price
    /// and warnings are read against (the first eligible one in order, else the first).
    pub provider: Provider,
    /// `None` when `provider` can take the pod; else [`Reason::Ineligible`],
    /// [`Reason::Constraints`] or [`Reason::ProviderUnavailable`].
    pub unusable: Option<Reason>,
}

/// The providers `choice` allows, in the order they are tried: the listed order, or for
/// `auto` cheapest first at `pricing` (those too large for a provider's sizes last;
/// Fargate first on a tie).
fn candidates(
    choice: ProviderChoice,
    needs: &PodResources,
    pricing: &PricingConfig,
) -> Vec<Provider> {
    if let Some(order) = choice.order() {
        return order.to_vec();
    }
    let mut all = vec![Provider::Fargate, Provider::Aci];
    let price = |p: Provider| {
        eligibility::within_largest_size(needs, p)
            .then(|| cost::hourly_usd(needs, p, pricing))
            .flatten()
            .unwrap_or(f64::INFINITY)
    };
    all.sort_by(|a, b| price(*a).total_cmp(&price(*b)));
    all
}

/// What the provider choice reads about one pod and its workload.
#[derive(Clone, Copy, Debug)]
pub struct ProviderAsk<'a> {
    /// The pod's effective requests.
    pub needs: &'a PodResources,
    /// What the pod asks of its node.
    pub constraints: &'a NodeConstraints,
    /// Replicas of its workload already burst (the pod itself not counted), for its
    /// one-per-node rules.
    pub burst_siblings: u32,
    /// Providers the workload was failed over from, still in their cooldown.
    pub excluded: &'a [Provider],
}

/// The provider a pod bursts to for `choice`: the first of its candidates (see
/// [`candidates`]) that the pod is `eligible` for, that its workload was not failed over
/// from, and whose virtual node can take it. When none can, the pick names the first
/// eligible candidate and why it cannot: its node constraints, or its one-per-node
/// sibling rule with a sibling already burst ([`Reason::Constraints`]), or no usable node
/// ([`Reason::ProviderUnavailable`]); or, when the pod is eligible for none, the first
/// candidate and [`Reason::Ineligible`].
pub fn choose_provider(
    choice: ProviderChoice,
    ask: &ProviderAsk<'_>,
    pricing: &PricingConfig,
    capacity: &impl CapacityView,
    eligible: impl Fn(Provider) -> bool,
) -> ProviderPick {
    let order = candidates(choice, ask.needs, pricing);
    let mut fallback: Option<ProviderPick> = None;
    for provider in order.iter().copied().filter(|p| eligible(*p)) {
        let node = if ask.excluded.contains(&provider) {
            ProviderNode::Unusable
        } else if ask.constraints.one_per_node && ask.burst_siblings > 0 {
            ProviderNode::Constrained
        } else {
            capacity.provider_node(provider, ask.needs, ask.constraints)
        };
        let unusable = match node {
            ProviderNode::Takes => {
                return ProviderPick {
                    provider,
                    unusable: None,
                };
            }
            ProviderNode::Unusable => Reason::ProviderUnavailable,
            ProviderNode::Constrained => Reason::Constraints,
        };
        fallback.get_or_insert(ProviderPick {
            provider,
            unusable: Some(unusable),
        });
    }
    fallback.unwrap_or(ProviderPick {
        provider: order.first().copied().unwrap_or(Provider::Fargate),
        unusable: Some(Reason::Ineligible),
    })
}

/// Everything about one pod and its workload the decision reads.
#[derive(Clone, Debug)]
pub struct PodFacts<'a> {
    /// Effective requests.
    pub needs: PodResources,
    /// The pod's tolerations.
    pub tolerations: &'a [Toleration],
    /// What the pod asks of its node.
    pub constraints: &'a NodeConstraints,
    /// Where it would burst (see [`choose_provider`]).
    pub provider: ProviderPick,
    /// Why it may not burst (empty: eligible).
    pub ineligible: &'a [Ineligible],
    /// Local and burst replicas of the workload, in-flight decisions included.
    pub counts: PlacementCounts,
    /// The Deployment's `spec.replicas`.
    pub replicas: u32,
    /// The HPA targeting the Deployment, if any.
    pub hpa: Option<HpaFacts>,
    /// Cost budgets and what is spent against them.
    pub budget: BudgetFacts,
}

/// The outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Where the pod goes.
    pub placement: Placement,
    /// Why.
    pub reason: Reason,
}

/// Whether `(requested + needs) / allocatable ≥ threshold` for CPU or memory.
fn over_threshold(totals: CapacityTotals, needs: &PodResources, threshold: f64) -> bool {
    let ratio = |requested: u128, extra: u64, allocatable: u128| {
        (requested + u128::from(extra)) as f64 / allocatable as f64
    };
    ratio(
        totals.requested_cpu,
        needs.cpu_millis,
        totals.allocatable_cpu,
    ) >= threshold
        || ratio(
            totals.requested_memory,
            needs.memory_bytes,
            totals.allocatable_memory,
        ) >= threshold
}

/// The first rule that puts the pod under pressure, in order of how cheap it is to check.
fn pressure(
    facts: &PodFacts<'_>,
    policy: &WorkloadPolicy,
    config: &OperatorConfig,
    capacity: &impl CapacityView,
) -> Option<Reason> {
    let local = facts.counts.local;
    if policy.max_local.is_some_and(|max| local >= max) {
        return Some(Reason::MaxLocal);
    }
    if let Some(hpa) = facts.hpa
        && hpa.max_replicas > 0
    {
        let threshold = policy.hpa_threshold.unwrap_or(config.hpa_threshold);
        let baseline = policy.max_local.unwrap_or(hpa.min_replicas);
        let ratio = f64::from(hpa.desired_replicas) / f64::from(hpa.max_replicas);
        if ratio >= threshold && local >= baseline {
            return Some(Reason::Hpa);
        }
    }
    let totals = capacity.totals();
    if totals.allocatable_cpu == 0 || totals.allocatable_memory == 0 {
        return Some(Reason::NoFit);
    }
    let threshold = policy
        .capacity_threshold
        .unwrap_or(config.capacity_threshold);
    // Room the autoscaler added because Spillway asked for it is the workload's own: while
    // its backfill is outstanding, a pod that a regular node fits goes there, whatever the
    // cluster's utilization (else the new node would look full and the replica would burst
    // again).
    let bought_room = config.backfill.enabled() && policy.backfilling;
    if !bought_room && over_threshold(totals, &facts.needs, threshold) {
        return Some(Reason::Capacity);
    }
    if !capacity.any_node_fits(&facts.needs, facts.tolerations, facts.constraints) {
        return Some(Reason::NoFit);
    }
    None
}

/// Decides where a pod of an opted-in workload goes.
pub fn decide(
    facts: &PodFacts<'_>,
    policy: &WorkloadPolicy,
    config: &OperatorConfig,
    capacity: &impl CapacityView,
) -> Decision {
    let local = |reason| Decision {
        placement: Placement::Local,
        reason,
    };
    let Some(reason) = pressure(facts, policy, config, capacity) else {
        return local(Reason::NoPressure);
    };
    if !facts.ineligible.is_empty() {
        return local(Reason::Ineligible);
    }
    if let Some(cap) = policy.max_burst
        && facts.counts.burst >= cap.resolve(facts.replicas)
    {
        return local(Reason::MaxBurst);
    }
    if over_budget(&facts.budget, policy) {
        return local(Reason::Budget);
    }
    if let Some(unusable) = facts.provider.unusable {
        return local(unusable);
    }
    Decision {
        placement: Placement::Burst(facts.provider.provider),
        reason,
    }
}

/// Whether bursting one more pod would take the cluster or its workload past a budget.
pub fn over_budget(budget: &BudgetFacts, policy: &WorkloadPolicy) -> bool {
    let Some(cost) = budget.pod_usd_per_hour else {
        return false;
    };
    let exceeds = |spent: f64, limit: Option<f64>| limit.is_some_and(|l| spent + cost > l);
    exceeds(budget.cluster_spent, budget.cluster_limit)
        || exceeds(budget.workload_spent, policy.max_usd_per_hour)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::MaxBurst;

    struct FakeCapacity {
        totals: CapacityTotals,
        fits: bool,
    }

    impl CapacityView for FakeCapacity {
        fn totals(&self) -> CapacityTotals {
            self.totals
        }
        fn any_node_fits(&self, _: &PodResources, _: &[Toleration], _: &NodeConstraints) -> bool {
            self.fits
        }
    }

    fn cluster(requested_cpu: u64, fits: bool) -> FakeCapacity {
        FakeCapacity {
            totals: CapacityTotals {
                allocatable_cpu: 10_000,
                allocatable_memory: 100 << 30,
                requested_cpu: requested_cpu.into(),
                requested_memory: 0,
            },
            fits,
        }
    }

    fn facts(local: u32, burst: u32) -> PodFacts<'static> {
        PodFacts {
            needs: PodResources {
                cpu_millis: 500,
                memory_bytes: 1 << 30,
                cpu_specified: true,
                memory_specified: true,
            },
            tolerations: &[],
            constraints: &NO_CONSTRAINTS,
            provider: ProviderPick {
                provider: Provider::Fargate,
                unusable: None,
            },
            ineligible: &[],
            counts: PlacementCounts { local, burst },
            replicas: 10,
            hpa: None,
            budget: BudgetFacts::default(),
        }
    }

    fn opted_in() -> WorkloadPolicy {
        WorkloadPolicy {
            opted_in: true,
            ..WorkloadPolicy::default()
        }
    }

    const BURST: Placement = Placement::Burst(Provider::Fargate);
    static NO_CONSTRAINTS: NodeConstraints = NodeConstraints {
        node_selector: Vec::new(),
        required_terms: Vec::new(),
        topology_keys: Vec::new(),
        one_per_node: false,
    };

    #[test]
    fn table() {
        let config = OperatorConfig::default();
        let hpa = |desired| {
            Some(HpaFacts {
                min_replicas: 2,
                max_replicas: 10,
                desired_replicas: desired,
            })
        };
        struct Case {
            name: &'static str,
            facts: PodFacts<'static>,
            policy: WorkloadPolicy,
            capacity: FakeCapacity,
            expected: (Placement, Reason),
        }
        let cases = vec![
            Case {
                name: "idle cluster stays local",
                facts: facts(0, 0),
                policy: opted_in(),
                capacity: cluster(1000, true),
                expected: (Placement::Local, Reason::NoPressure),
            },
            Case {
                name: "just under threshold",
                facts: facts(0, 0),
                policy: opted_in(),
                capacity: cluster(7_999, true),
                expected: (Placement::Local, Reason::NoPressure),
            },
            Case {
                name: "pod pushes utilization to threshold",
                facts: facts(0, 0),
                policy: opted_in(),
                capacity: cluster(8_000, true),
                expected: (BURST, Reason::Capacity),
            },
            Case {
                name: "workload threshold override",
                facts: facts(0, 0),
                policy: WorkloadPolicy {
                    capacity_threshold: Some(0.2),
                    ..opted_in()
                },
                capacity: cluster(1_500, true),
                expected: (BURST, Reason::Capacity),
            },
            Case {
                name: "backfilled workload: the threshold yields when a node fits",
                facts: facts(0, 2),
                policy: WorkloadPolicy {
                    backfilling: true,
                    ..opted_in()
                },
                capacity: cluster(9_000, true),
                expected: (Placement::Local, Reason::NoPressure),
            },
            Case {
                name: "backfilled workload: no node fits yet, it still bursts",
                facts: facts(0, 2),
                policy: WorkloadPolicy {
                    backfilling: true,
                    ..opted_in()
                },
                capacity: cluster(9_000, false),
                expected: (BURST, Reason::NoFit),
            },
            Case {
                name: "no node fits",
                facts: facts(0, 0),
                policy: opted_in(),
                capacity: cluster(1000, false),
                expected: (BURST, Reason::NoFit),
            },
            Case {
                name: "no regular nodes at all",
                facts: facts(0, 0),
                policy: opted_in(),
                capacity: FakeCapacity {
                    totals: CapacityTotals::default(),
                    fits: false,
                },
                expected: (BURST, Reason::NoFit),
            },
            Case {
                name: "max-local reached",
                facts: facts(3, 0),
                policy: WorkloadPolicy {
                    max_local: Some(3),
                    ..opted_in()
                },
                capacity: cluster(0, true),
                expected: (BURST, Reason::MaxLocal),
            },
            Case {
                name: "below max-local",
                facts: facts(2, 0),
                policy: WorkloadPolicy {
                    max_local: Some(3),
                    ..opted_in()
                },
                capacity: cluster(0, true),
                expected: (Placement::Local, Reason::NoPressure),
            },
            Case {
                name: "hpa pressure past minReplicas",
                facts: PodFacts {
                    hpa: hpa(8),
                    ..facts(2, 0)
                },
                policy: opted_in(),
                capacity: cluster(0, true),
                expected: (BURST, Reason::Hpa),
            },
            Case {
                name: "hpa pressure within baseline",
                facts: PodFacts {
                    hpa: hpa(8),
                    ..facts(1, 0)
                },
                policy: opted_in(),
                capacity: cluster(0, true),
                expected: (Placement::Local, Reason::NoPressure),
            },
            Case {
                name: "hpa below threshold",
                facts: PodFacts {
                    hpa: hpa(7),
                    ..facts(5, 0)
                },
                policy: opted_in(),
                capacity: cluster(0, true),
                expected: (Placement::Local, Reason::NoPressure),
            },
            Case {
                name: "hpa threshold override",
                facts: PodFacts {
                    hpa: hpa(5),
                    ..facts(5, 0)
                },
                policy: WorkloadPolicy {
                    hpa_threshold: Some(0.5),
                    ..opted_in()
                },
                capacity: cluster(0, true),
                expected: (BURST, Reason::Hpa),
            },
            Case {
                name: "hpa baseline is max-local when set",
                facts: PodFacts {
                    hpa: hpa(9),
                    ..facts(3, 0)
                },
                policy: WorkloadPolicy {
                    max_local: Some(4),
                    ..opted_in()
                },
                capacity: cluster(0, true),
                expected: (Placement::Local, Reason::NoPressure),
            },
            Case {
                name: "max-burst count reached",
                facts: facts(0, 2),
                policy: WorkloadPolicy {
                    max_burst: Some(MaxBurst::Count(2)),
                    ..opted_in()
                },
                capacity: cluster(9_000, true),
                expected: (Placement::Local, Reason::MaxBurst),
            },
            Case {
                name: "max-burst percent rounds up",
                facts: facts(0, 1),
                policy: WorkloadPolicy {
                    max_burst: Some(MaxBurst::Percent(11)),
                    ..opted_in()
                },
                capacity: cluster(9_000, true),
                expected: (BURST, Reason::Capacity),
            },
            Case {
                name: "bursts to the provider picked",
                facts: PodFacts {
                    provider: ProviderPick {
                        provider: Provider::Aci,
                        unusable: None,
                    },
                    ..facts(0, 0)
                },
                policy: opted_in(),
                capacity: cluster(9_000, true),
                expected: (Placement::Burst(Provider::Aci), Reason::Capacity),
            },
            Case {
                name: "no usable provider: stays local, so an autoscaler may act",
                facts: PodFacts {
                    provider: ProviderPick {
                        provider: Provider::Fargate,
                        unusable: Some(Reason::ProviderUnavailable),
                    },
                    ..facts(0, 0)
                },
                policy: opted_in(),
                capacity: cluster(9_000, true),
                expected: (Placement::Local, Reason::ProviderUnavailable),
            },
            Case {
                name: "the pod's constraints rule out every virtual node",
                facts: PodFacts {
                    provider: ProviderPick {
                        provider: Provider::Fargate,
                        unusable: Some(Reason::Constraints),
                    },
                    ..facts(0, 0)
                },
                policy: opted_in(),
                capacity: cluster(9_000, true),
                expected: (Placement::Local, Reason::Constraints),
            },
            Case {
                name: "no provider needed without pressure",
                facts: PodFacts {
                    provider: ProviderPick {
                        provider: Provider::Fargate,
                        unusable: Some(Reason::ProviderUnavailable),
                    },
                    ..facts(0, 0)
                },
                policy: opted_in(),
                capacity: cluster(1_000, true),
                expected: (Placement::Local, Reason::NoPressure),
            },
            Case {
                name: "ineligible stays local",
                facts: PodFacts {
                    ineligible: &[Ineligible::HostPath],
                    ..facts(0, 0)
                },
                policy: opted_in(),
                capacity: cluster(9_000, true),
                expected: (Placement::Local, Reason::Ineligible),
            },
            Case {
                name: "cluster budget would be exceeded",
                facts: PodFacts {
                    budget: BudgetFacts {
                        pod_usd_per_hour: Some(0.05),
                        cluster_spent: 0.96,
                        cluster_limit: Some(1.0),
                        ..BudgetFacts::default()
                    },
                    ..facts(0, 0)
                },
                policy: opted_in(),
                capacity: cluster(9_000, true),
                expected: (Placement::Local, Reason::Budget),
            },
            Case {
                name: "cluster budget still covers the pod",
                facts: PodFacts {
                    budget: BudgetFacts {
                        pod_usd_per_hour: Some(0.05),
                        cluster_spent: 0.95,
                        cluster_limit: Some(1.0),
                        ..BudgetFacts::default()
                    },
                    ..facts(0, 0)
                },
                policy: opted_in(),
                capacity: cluster(9_000, true),
                expected: (BURST, Reason::Capacity),
            },
            Case {
                name: "workload budget would be exceeded",
                facts: PodFacts {
                    budget: BudgetFacts {
                        pod_usd_per_hour: Some(0.05),
                        workload_spent: 0.1,
                        ..BudgetFacts::default()
                    },
                    ..facts(0, 2)
                },
                policy: WorkloadPolicy {
                    max_usd_per_hour: Some(0.12),
                    ..opted_in()
                },
                capacity: cluster(9_000, true),
                expected: (Placement::Local, Reason::Budget),
            },
            Case {
                name: "budget does not matter without pressure",
                facts: PodFacts {
                    budget: BudgetFacts {
                        pod_usd_per_hour: Some(5.0),
                        cluster_spent: 10.0,
                        cluster_limit: Some(1.0),
                        ..BudgetFacts::default()
                    },
                    ..facts(0, 0)
                },
                policy: opted_in(),
                capacity: cluster(0, true),
                expected: (Placement::Local, Reason::NoPressure),
            },
            Case {
                name: "ineligible without pressure is plain local",
                facts: PodFacts {
                    ineligible: &[Ineligible::HostPath],
                    ..facts(0, 0)
                },
                policy: opted_in(),
                capacity: cluster(0, true),
                expected: (Placement::Local, Reason::NoPressure),
            },
        ];
        for case in cases {
            let decision = decide(&case.facts, &case.policy, &config, &case.capacity);
            if case.policy.backfilling {
                // With backfill off, the annotation left behind changes nothing.
                let mut off = config.clone();
                off.backfill.mode = spillway_common::config::BackfillMode::Off;
                let without = decide(&case.facts, &case.policy, &off, &case.capacity);
                assert_eq!(without.placement, BURST, "{} (backfill off)", case.name);
            }
            assert_eq!(
                (decision.placement, decision.reason),
                case.expected,
                "{}",
                case.name
            );
        }
    }

    /// Virtual nodes by provider: usable, or usable but ruling the pod out.
    struct VirtualNodes {
        usable: Vec<Provider>,
        constrained: Vec<Provider>,
    }

    fn usable(providers: &[Provider]) -> VirtualNodes {
        VirtualNodes {
            usable: providers.to_vec(),
            constrained: Vec::new(),
        }
    }

    impl CapacityView for VirtualNodes {
        fn totals(&self) -> CapacityTotals {
            CapacityTotals::default()
        }
        fn any_node_fits(&self, _: &PodResources, _: &[Toleration], _: &NodeConstraints) -> bool {
            false
        }
        fn provider_node(
            &self,
            p: Provider,
            _: &PodResources,
            _: &NodeConstraints,
        ) -> ProviderNode {
            if self.constrained.contains(&p) {
                ProviderNode::Constrained
            } else if self.usable.contains(&p) {
                ProviderNode::Takes
            } else {
                ProviderNode::Unusable
            }
        }
    }

    fn sized(cpu_millis: u64, memory_bytes: u64) -> PodResources {
        PodResources {
            cpu_millis,
            memory_bytes,
            cpu_specified: true,
            memory_specified: true,
        }
    }

    fn pick(
        choice: ProviderChoice,
        needs: &PodResources,
        capacity: &VirtualNodes,
    ) -> (Provider, Option<Reason>) {
        let pricing = PricingConfig::default();
        let ask = ProviderAsk {
            needs,
            constraints: &NO_CONSTRAINTS,
            burst_siblings: 0,
            excluded: &[],
        };
        let pick = choose_provider(choice, &ask, &pricing, capacity, |_| true);
        (pick.provider, pick.unusable)
    }

    #[test]
    fn auto_picks_the_provider_that_runs_the_pod_cheaper_among_usable_ones() {
        let pricing = PricingConfig::default();
        let both = usable(&[Provider::Fargate, Provider::Aci]);
        // 1 vCPU / 2 GiB: Fargate's list price is lower.
        let even = sized(1000, 2 << 30);
        assert_eq!(
            pick(ProviderChoice::Auto, &even, &both),
            (Provider::Fargate, None)
        );
        // 0.25 vCPU / 3 GiB: Fargate must round up to 0.5 vCPU, ACI bills what is asked.
        let lopsided = sized(250, 3 << 30);
        let fargate = cost::hourly_usd(&lopsided, Provider::Fargate, &pricing).unwrap();
        let aci = cost::hourly_usd(&lopsided, Provider::Aci, &pricing).unwrap();
        assert!(aci < fargate, "{aci} < {fargate}");
        assert_eq!(
            pick(ProviderChoice::Auto, &lopsided, &both),
            (Provider::Aci, None)
        );
        // A degraded, missing or full Fargate node is skipped even where Fargate is cheaper.
        let aci_only = usable(&[Provider::Aci]);
        assert_eq!(
            pick(ProviderChoice::Auto, &even, &aci_only),
            (Provider::Aci, None)
        );
        // No usable node at all: none is chosen; the cheaper one is named.
        let none = usable(&[]);
        assert_eq!(
            pick(ProviderChoice::Auto, &lopsided, &none),
            (Provider::Aci, Some(Reason::ProviderUnavailable))
        );
        // Too big for ACI's largest group (4 vCPU): Fargate, which is usable.
        assert_eq!(
            pick(ProviderChoice::Auto, &sized(8_000, 1 << 30), &both),
            (Provider::Fargate, None)
        );
    }

    #[test]
    fn an_ordered_list_takes_the_first_provider_that_can_take_the_pod() {
        let even = sized(1000, 2 << 30);
        let both = usable(&[Provider::Fargate, Provider::Aci]);
        assert_eq!(
            pick(ProviderChoice::AciThenFargate, &even, &both),
            (Provider::Aci, None)
        );
        let fargate_only = usable(&[Provider::Fargate]);
        assert_eq!(
            pick(ProviderChoice::AciThenFargate, &even, &fargate_only),
            (Provider::Fargate, None)
        );
        // A fixed provider whose node cannot take the pod is not used.
        assert_eq!(
            pick(ProviderChoice::Aci, &even, &fargate_only),
            (Provider::Aci, Some(Reason::ProviderUnavailable))
        );
        assert_eq!(
            pick(ProviderChoice::Fargate, &even, &usable(&[])),
            (Provider::Fargate, Some(Reason::ProviderUnavailable))
        );
        // The first provider's node rules the pod out: the second takes it.
        let constrained_fargate = VirtualNodes {
            usable: vec![Provider::Fargate, Provider::Aci],
            constrained: vec![Provider::Fargate],
        };
        assert_eq!(
            pick(ProviderChoice::FargateThenAci, &even, &constrained_fargate),
            (Provider::Aci, None)
        );
        assert_eq!(
            pick(ProviderChoice::Fargate, &even, &constrained_fargate),
            (Provider::Fargate, Some(Reason::Constraints))
        );
    }

    #[test]
    fn excluded_ineligible_and_sibling_bound_pods() {
        let pricing = PricingConfig::default();
        let even = sized(1000, 2 << 30);
        let both = usable(&[Provider::Fargate, Provider::Aci]);
        let choose = |excluded: &[Provider],
                      constraints: &NodeConstraints,
                      eligible: &dyn Fn(Provider) -> bool| {
            let ask = ProviderAsk {
                needs: &even,
                constraints,
                burst_siblings: 1,
                excluded,
            };
            let p = choose_provider(
                ProviderChoice::FargateThenAci,
                &ask,
                &pricing,
                &both,
                eligible,
            );
            (p.provider, p.unusable)
        };
        // Failed over from Fargate: ACI; from both: none.
        assert_eq!(
            choose(&[Provider::Fargate], &NO_CONSTRAINTS, &|_| true),
            (Provider::Aci, None)
        );
        assert_eq!(
            choose(
                &[Provider::Fargate, Provider::Aci],
                &NO_CONSTRAINTS,
                &|_| true
            ),
            (Provider::Fargate, Some(Reason::ProviderUnavailable))
        );
        // Ineligible for Fargate (say, too many containers elsewhere): ACI.
        assert_eq!(
            choose(&[], &NO_CONSTRAINTS, &|p| p == Provider::Aci),
            (Provider::Aci, None)
        );
        assert_eq!(
            choose(&[], &NO_CONSTRAINTS, &|_| false),
            (Provider::Fargate, Some(Reason::Ineligible))
        );
        // One per node, and a sibling is burst already: the virtual node holds no more.
        let bound = NodeConstraints {
            one_per_node: true,
            ..NodeConstraints::default()
        };
        assert_eq!(
            choose(&[], &bound, &|_| true),
            (Provider::Fargate, Some(Reason::Constraints))
        );
        // The first of them may go.
        let alone = ProviderAsk {
            needs: &even,
            constraints: &bound,
            burst_siblings: 0,
            excluded: &[],
        };
        let first = choose_provider(
            ProviderChoice::FargateThenAci,
            &alone,
            &pricing,
            &both,
            |_| true,
        );
        assert_eq!((first.provider, first.unusable), (Provider::Fargate, None));
    }
}
