//! Backfill, the pass that makes a burst a bridge (DESIGN §4): a workload that has had
//! burst replicas for `backfill.afterSeconds` gets real capacity requested from the
//! cluster's autoscaler for exactly those replicas (a `CapacityBuffer` or placeholder
//! pods), the request shrinks as replicas come home, and it is withdrawn, with the
//! Deployment's `spillway.io/backfill` mark, once they are all home and settled. Pure:
//! what exists is read from [`BackfillObserved`], what to change comes out as actions.

use std::collections::{BTreeMap, BTreeSet};

use spillway_cluster::decision::Reason;
use spillway_common::config::{BackfillMode, OperatorConfig};
use spillway_common::pod_resources::PodResources;

use super::{Action, ControllerState, EventReason, PlanInput, Workload};
use crate::snapshot::PodView;

/// How capacity is requested for one workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackfillKind {
    /// A `CapacityBuffer` (`autoscaling.x-k8s.io`) naming the Deployment.
    CapacityBuffer,
    /// Low-priority placeholder pods.
    Placeholders,
}

impl BackfillKind {
    /// The config's name for it (`capacityBuffer`, `placeholders`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillKind::CapacityBuffer => BackfillMode::CapacityBuffer.as_str(),
            BackfillKind::Placeholders => BackfillMode::Placeholders.as_str(),
        }
    }
}

/// What the cluster holds of Spillway's backfill, read before each pass (so a restarted
/// controller adopts what its predecessor made).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackfillObserved {
    /// Whether the cluster serves `CapacityBuffer` (what `auto` chooses by).
    pub capacity_buffer_served: bool,
    /// Per workload (`namespace/name`) and kind: the replicas requested now (buffer
    /// replicas, or placeholder pods that are not being deleted).
    pub existing: BTreeMap<(String, BackfillKind), u32>,
}

impl BackfillObserved {
    /// The requests of `workload` (`namespace/name`): each kind with its replicas.
    fn of<'a>(&'a self, workload: &'a str) -> impl Iterator<Item = (BackfillKind, u32)> + 'a {
        self.existing
            .iter()
            .filter(move |((key, _), _)| key == workload)
            .map(|((_, kind), replicas)| (*kind, *replicas))
    }
}

/// The burst pods a request is made for: live burst pods a regular node could take,
/// burst for want of capacity (`capacity`, `no-fit`, `pending`). Pods burst by the
/// workload's own policy (`max-local`, HPA pressure) would burst again from any node,
/// so no node is bought for them.
pub(super) fn homeable<'a>(workload: &'a Workload<'_>) -> impl Iterator<Item = &'a PodView> {
    workload
        .live()
        .copied()
        .filter(|p| p.is_burst() && p.virtual_node.is_some())
        .filter(|p| {
            p.reason_label
                .as_deref()
                .and_then(Reason::parse)
                .is_none_or(|r| matches!(r, Reason::Capacity | Reason::NoFit | Reason::Pending))
        })
}

/// The kind `mode` resolves to on this cluster (`None`: off).
pub fn resolve_mode(mode: BackfillMode, observed: &BackfillObserved) -> Option<BackfillKind> {
    match mode {
        BackfillMode::Off => None,
        BackfillMode::CapacityBuffer => Some(BackfillKind::CapacityBuffer),
        BackfillMode::Placeholders => Some(BackfillKind::Placeholders),
        BackfillMode::Auto if observed.capacity_buffer_served => Some(BackfillKind::CapacityBuffer),
        BackfillMode::Auto => Some(BackfillKind::Placeholders),
    }
}

/// The largest requests among the pods (one shape per request: a Deployment's pods share
/// their template).
fn shape<'a>(pods: impl Iterator<Item = &'a PodView>) -> PodResources {
    pods.fold(PodResources::default(), |acc, p| PodResources {
        cpu_millis: acc.cpu_millis.max(p.needs.cpu_millis),
        memory_bytes: acc.memory_bytes.max(p.needs.memory_bytes),
        cpu_specified: acc.cpu_specified || p.needs.cpu_specified,
        memory_specified: acc.memory_specified || p.needs.memory_specified,
    })
}

/// What the backfill of one workload should be now.
#[derive(Clone, Debug, PartialEq)]
struct Want {
    replicas: u32,
    needs: PodResources,
    oldest_ms: i64,
}

/// The cluster-wide caps (`backfill.maxCpu`, `backfill.maxMemory`) as remaining room.
struct Caps {
    cpu: Option<u64>,
    memory: Option<u64>,
}

impl Caps {
    fn of(config: &OperatorConfig) -> Self {
        Self {
            cpu: config.backfill.max_cpu_millis(),
            memory: config.backfill.max_memory_bytes(),
        }
    }

    /// Takes as many of `replicas` pods of `needs` as the caps still hold.
    fn take(&mut self, replicas: u32, needs: &PodResources) -> u32 {
        let fit = |left: Option<u64>, each: u64| match (left, each) {
            (None, _) | (_, 0) => u64::from(replicas),
            (Some(left), each) => left / each,
        };
        let n = fit(self.cpu, needs.cpu_millis)
            .min(fit(self.memory, needs.memory_bytes))
            .min(u64::from(replicas)) as u32;
        if let Some(cpu) = &mut self.cpu {
            *cpu -= u64::from(n) * needs.cpu_millis;
        }
        if let Some(memory) = &mut self.memory {
            *memory -= u64::from(n) * needs.memory_bytes;
        }
        n
    }
}

/// Plans the backfill requests: oldest burst first under the cluster caps.
pub(super) fn plan_backfill(
    input: &PlanInput<'_>,
    workloads: &[Workload<'_>],
    state: &mut ControllerState,
    actions: &mut Vec<Action>,
) {
    let observed = input.backfill;
    let kind = resolve_mode(input.config.backfill.mode, observed);
    let after_ms = input.config.backfill.after_seconds as i64 * 1000;
    let mut wants: Vec<(&Workload<'_>, Want)> = workloads
        .iter()
        .filter_map(|w| {
            let pods: Vec<&PodView> = homeable(w).collect();
            let oldest_ms = pods.iter().map(|p| p.created_ms).min()?;
            let requested = observed.of(w.key).next().is_some();
            // A request already made shrinks with its workload's burst; a new one waits
            // for the burst to last `afterSeconds`.
            if !requested && !w.policy.backfilling && input.now_ms - oldest_ms < after_ms {
                return None;
            }
            Some((
                w,
                Want {
                    replicas: pods.len() as u32,
                    needs: shape(pods.into_iter()),
                    oldest_ms,
                },
            ))
        })
        .collect();
    wants.sort_by_key(|(w, want)| (want.oldest_ms, w.key));
    let mut caps = Caps::of(input.config);
    let mut granted: BTreeMap<&str, (u32, PodResources)> = BTreeMap::new();
    if kind.is_some() {
        for (workload, want) in &wants {
            let replicas = caps.take(want.replicas, &want.needs);
            if replicas < want.replicas {
                tracing::debug!(
                    workload = workload.key,
                    want = want.replicas,
                    replicas,
                    "backfill capped by backfill.maxCpu/maxMemory"
                );
            }
            granted.insert(workload.key, (replicas, want.needs));
        }
    }
    let mut requested_now = (0u64, 0u64);
    for workload in workloads {
        let (replicas, needs) = granted.get(workload.key).copied().unwrap_or_default();
        requested_now.0 += u64::from(replicas) * needs.cpu_millis;
        requested_now.1 += u64::from(replicas) * needs.memory_bytes;
        let had: u32 = observed.of(workload.key).map(|(_, n)| n).sum();
        for (existing_kind, _) in observed.of(workload.key) {
            if Some(existing_kind) != kind || replicas == 0 {
                actions.push(Action::WithdrawBackfill {
                    workload: workload.key.to_owned(),
                    kind: existing_kind,
                });
            }
        }
        if let Some(kind) = kind
            && replicas > 0
        {
            let current = observed
                .of(workload.key)
                .find_map(|(k, n)| (k == kind).then_some(n));
            if current != Some(replicas) || !workload.policy.backfilling {
                actions.push(Action::RequestBackfill {
                    workload: workload.key.to_owned(),
                    uid: workload.view.uid.to_owned(),
                    kind,
                    replicas,
                    needs,
                    image: input.config.backfill.placeholder_image.clone(),
                });
            }
            if had == 0 && !workload.policy.backfilling {
                actions.push(Action::Event {
                    workload: workload.key.to_owned(),
                    uid: workload.view.uid.to_owned(),
                    reason: EventReason::BackfillRequested,
                    note: format!(
                        "asked the autoscaler ({}) for room for {replicas} burst replicas so they can come home",
                        kind.as_str()
                    ),
                    warning: false,
                });
            }
            continue;
        }
        // Nothing to request: the mark goes once every replica is home and the last
        // replacement is Running and Ready (until then, the bought room stays its own).
        let bursting = workload.live().any(|p| p.is_burst());
        if workload.policy.backfilling && !bursting && !state.settling.contains_key(workload.key) {
            actions.push(Action::UnmarkBackfill {
                workload: workload.key.to_owned(),
            });
            actions.push(Action::Event {
                workload: workload.key.to_owned(),
                uid: workload.view.uid.to_owned(),
                reason: EventReason::BackfillSatisfied,
                note: "every burst replica is home on a regular node; the backfill request is withdrawn".into(),
                warning: false,
            });
        }
    }
    // Requests of workloads that are gone or no longer opted in (e.g. after a restart).
    let known: BTreeSet<&str> = workloads.iter().map(|w| w.key).collect();
    for (key, kind) in observed.existing.keys() {
        if !known.contains(key.as_str()) {
            actions.push(Action::WithdrawBackfill {
                workload: key.clone(),
                kind: *kind,
            });
        }
    }
    state.backfill_requested = requested_now;
}
