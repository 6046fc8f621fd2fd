//! Failover (DESIGN §4 "Failover"): burst pods their provider keeps refusing to create
//! (capacity, quota, an outage: the virtual node's `spillway.io/ProviderRefused`
//! condition) are handed back, so their replacements go to the workload's next provider
//! or stay local. Pure: the Deployment mark and the evictions come out as actions.

use spillway_cluster::policy;
use spillway_common::config::Provider;
use spillway_common::keys;

use super::{Action, EventReason, PlanInput, PodRef, Workload};

/// Burst pods their provider has refused to create for `failover.afterSeconds` are
/// handed back, in two passes so the webhook has seen the first: the workload's
/// Deployment is marked to avoid that provider for `failover.cooldownSeconds` (one
/// `ProviderFailover` Event), then, with the mark in force, the pods are evicted and
/// their replacements decided without it (the next provider the workload allows, else
/// local).
pub(super) fn fail_over(
    input: &PlanInput<'_>,
    workloads: &[Workload<'_>],
    actions: &mut Vec<Action>,
) {
    let config = &input.config.failover;
    let after_ms = config.after_seconds as i64 * 1000;
    for workload in workloads {
        let excluded = workload.policy.excluded_at(input.now_ms);
        let mut exclude_now: Vec<Provider> = Vec::new();
        let refused = workload.live().filter(|p| {
            p.virtual_node.is_some()
                && p.provider_refused_since_ms
                    .is_some_and(|since| input.now_ms - since >= after_ms)
        });
        for pod in refused {
            let Some(from) = pod.provider else { continue };
            if !excluded.contains(&from) {
                if !exclude_now.contains(&from) {
                    exclude_now.push(from);
                }
                continue;
            }
            let pick = workload.provider_for(input, pod);
            let to = match pick.unusable {
                None => pick.provider.to_string(),
                Some(_) => "local".to_owned(),
            };
            actions.push(Action::FailOver {
                pod: PodRef::of(pod),
                workload: workload.key.to_owned(),
                from,
                to,
            });
        }
        if exclude_now.is_empty() {
            continue;
        }
        let until = input.now_ms + config.cooldown_seconds as i64 * 1000;
        let mut entries: Vec<(Provider, i64)> = workload
            .policy
            .failed_over
            .iter()
            .copied()
            .filter(|(p, until)| *until > input.now_ms && !exclude_now.contains(p))
            .collect();
        entries.extend(exclude_now.iter().map(|p| (*p, until)));
        actions.push(Action::ExcludeProviders {
            workload: workload.key.to_owned(),
            value: policy::format_failover(&entries),
        });
        let names: Vec<&str> = exclude_now.iter().map(|p| p.as_str()).collect();
        actions.push(Action::Event {
            workload: workload.key.to_owned(),
            uid: workload.view.uid.to_owned(),
            reason: EventReason::ProviderFailover,
            note: format!(
                "{} refused to create replicas for {}s or more (see the pods' {} condition); \
                 they are handed back and new replicas avoid it for {}s",
                names.join(" and "),
                config.after_seconds,
                keys::PROVIDER_REFUSED_CONDITION,
                config.cooldown_seconds
            ),
            warning: true,
        });
    }
}
