//! A workload's burst policy read from its annotations (DESIGN §2), with a warning for
//! every value that could not be used; an invalid value acts as if it were absent.

use std::collections::BTreeMap;

use spillway_common::config::{Provider, ProviderChoice};
use spillway_common::keys;

/// A cap on burst replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxBurst {
    /// At most this many.
    Count(u32),
    /// At most this percentage of `spec.replicas`, rounded up.
    Percent(u32),
}

impl MaxBurst {
    /// The cap in replicas for a Deployment of `replicas`.
    pub fn resolve(self, replicas: u32) -> u32 {
        match self {
            MaxBurst::Count(n) => n,
            MaxBurst::Percent(p) => (u64::from(replicas) * u64::from(p)).div_ceil(100) as u32,
        }
    }
}

/// What the annotations of a workload ask for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkloadPolicy {
    /// `spillway.io/burst: "true"`.
    pub opted_in: bool,
    /// `spillway.io/provider` (`fargate`, `aci`, `auto` or an ordered list).
    pub provider: Option<ProviderChoice>,
    /// `spillway.io/max-local`.
    pub max_local: Option<u32>,
    /// `spillway.io/max-burst`.
    pub max_burst: Option<MaxBurst>,
    /// `spillway.io/capacity-threshold`.
    pub capacity_threshold: Option<f64>,
    /// `spillway.io/hpa-threshold`.
    pub hpa_threshold: Option<f64>,
    /// `spillway.io/spot: "true"`.
    pub spot: bool,
    /// `spillway.io/max-usd-per-hour`: budget of this workload's burst pods.
    pub max_usd_per_hour: Option<f64>,
    /// `spillway.io/backfill` on the Deployment: the controller has asked the autoscaler
    /// for real nodes for this workload's burst replicas (only the Deployment's own
    /// annotation counts: the controller writes it there).
    pub backfilling: bool,
    /// `spillway.io/failover` on the Deployment: providers the controller failed this
    /// workload's pods over from, each with the end of its cooldown (ms since the epoch).
    pub failed_over: Vec<(Provider, i64)>,
}

impl WorkloadPolicy {
    /// The providers the workload's new replicas avoid at `now_ms`.
    pub fn excluded_at(&self, now_ms: i64) -> Vec<Provider> {
        self.failed_over
            .iter()
            .filter(|(_, until)| *until > now_ms)
            .map(|(p, _)| *p)
            .collect()
    }
}

/// Reads `spillway.io/failover` (`provider=<unix seconds>` pairs, comma-separated);
/// entries that do not parse are skipped: the controller writes the value.
pub fn parse_failover(value: &str) -> Vec<(Provider, i64)> {
    value
        .split(',')
        .filter_map(|entry| {
            let (provider, until) = entry.trim().split_once('=')?;
            let provider = Provider::parse(provider.trim())?;
            let until: i64 = until.trim().parse().ok()?;
            Some((provider, until.saturating_mul(1000)))
        })
        .collect()
}

/// Writes the value of `spillway.io/failover` for `entries` (ms since the epoch).
pub fn format_failover(entries: &[(Provider, i64)]) -> String {
    entries
        .iter()
        .map(|(p, until_ms)| format!("{p}={}", until_ms.div_euclid(1000)))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_bool(key: &str, value: &str, warnings: &mut Vec<String>) -> bool {
    match value {
        "true" => true,
        "false" => false,
        _ => {
            warnings.push(format!(
                "spillway: annotation {key}={value:?} ignored: expected \"true\" or \"false\""
            ));
            false
        }
    }
}

fn parse_count(key: &str, value: &str, warnings: &mut Vec<String>) -> Option<u32> {
    match value.trim().parse::<u32>() {
        Ok(n) => Some(n),
        Err(_) => {
            warnings.push(format!(
                "spillway: annotation {key}={value:?} ignored: expected a non-negative integer"
            ));
            None
        }
    }
}

fn parse_max_burst(value: &str, warnings: &mut Vec<String>) -> Option<MaxBurst> {
    let trimmed = value.trim();
    let parsed = match trimmed.strip_suffix('%') {
        Some(percent) => percent
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|p| *p <= 100)
            .map(MaxBurst::Percent),
        None => trimmed.parse::<u32>().ok().map(MaxBurst::Count),
    };
    if parsed.is_none() {
        warnings.push(format!(
            "spillway: annotation {}={value:?} ignored: expected an integer or a percentage from 0% to 100%",
            keys::MAX_BURST
        ));
    }
    parsed
}

fn parse_threshold(key: &str, value: &str, warnings: &mut Vec<String>) -> Option<f64> {
    match value.trim().parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Some(x),
        _ => {
            warnings.push(format!(
                "spillway: annotation {key}={value:?} ignored: expected a number greater than 0 and at most 1"
            ));
            None
        }
    }
}

fn parse_usd(value: &str, warnings: &mut Vec<String>) -> Option<f64> {
    match value.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Some(x),
        _ => {
            warnings.push(format!(
                "spillway: annotation {}={value:?} ignored: expected a number of USD per hour, 0 or more",
                keys::MAX_USD_PER_HOUR
            ));
            None
        }
    }
}

/// Whether a pod opts in by its own annotations (a pod's annotations are its template's,
/// so this is the template's say, which wins over its Deployment's).
pub fn pod_opted_in(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(keys::BURST))
        .is_some_and(|v| v == "true")
}

/// Reads the policy from the Deployment's annotations overlaid with the pod's own
/// (the pod template wins key by key). Warnings name each ignored value.
pub fn read(
    deployment: Option<&BTreeMap<String, String>>,
    pod: Option<&BTreeMap<String, String>>,
) -> (WorkloadPolicy, Vec<String>) {
    let get = |key: &str| -> Option<&str> {
        pod.and_then(|a| a.get(key))
            .or_else(|| deployment.and_then(|a| a.get(key)))
            .map(String::as_str)
    };
    let mut warnings = Vec::new();
    let mut policy = WorkloadPolicy {
        opted_in: get(keys::BURST).is_some_and(|v| parse_bool(keys::BURST, v, &mut warnings)),
        ..WorkloadPolicy::default()
    };
    if !policy.opted_in {
        // Nothing else matters, and nobody asked to hear about it.
        return (policy, warnings);
    }
    if let Some(value) = get(keys::PROVIDER) {
        policy.provider = ProviderChoice::parse(value.trim());
        if policy.provider.is_none() {
            warnings.push(format!(
                "spillway: annotation {}={value:?} ignored: expected \"fargate\", \"aci\", \"auto\" or an ordered list such as \"fargate,aci\"",
                keys::PROVIDER
            ));
        }
    }
    policy.max_local =
        get(keys::MAX_LOCAL).and_then(|v| parse_count(keys::MAX_LOCAL, v, &mut warnings));
    policy.max_burst = get(keys::MAX_BURST).and_then(|v| parse_max_burst(v, &mut warnings));
    policy.capacity_threshold = get(keys::CAPACITY_THRESHOLD)
        .and_then(|v| parse_threshold(keys::CAPACITY_THRESHOLD, v, &mut warnings));
    policy.hpa_threshold = get(keys::HPA_THRESHOLD)
        .and_then(|v| parse_threshold(keys::HPA_THRESHOLD, v, &mut warnings));
    policy.spot = get(keys::SPOT).is_some_and(|v| parse_bool(keys::SPOT, v, &mut warnings));
    policy.max_usd_per_hour = get(keys::MAX_USD_PER_HOUR).and_then(|v| parse_usd(v, &mut warnings));
    policy.backfilling = deployment.is_some_and(|a| a.contains_key(keys::BACKFILL));
    policy.failed_over = deployment
        .and_then(|a| a.get(keys::FAILOVER))
        .map(|v| parse_failover(v))
        .unwrap_or_default();
    (policy, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn failover_exclusions_hold_until_their_cooldown_ends() {
        let deployment = map(&[
            (keys::BURST, "true"),
            (keys::FAILOVER, "fargate=1000, aci=2000,gcp=5,aci=x"),
        ]);
        let (policy, warnings) = read(Some(&deployment), None);
        assert!(warnings.is_empty());
        assert_eq!(
            policy.failed_over,
            vec![(Provider::Fargate, 1_000_000), (Provider::Aci, 2_000_000)]
        );
        assert_eq!(
            policy.excluded_at(999_999),
            vec![Provider::Fargate, Provider::Aci]
        );
        assert_eq!(policy.excluded_at(1_000_000), vec![Provider::Aci]);
        assert!(policy.excluded_at(2_000_000).is_empty());
        assert_eq!(
            format_failover(&policy.failed_over),
            "fargate=1000,aci=2000"
        );
        // Only the Deployment's own annotation counts (the controller writes it there).
        let pod = map(&[(keys::FAILOVER, "fargate=9999999999")]);
        let (from_template, _) = read(Some(&map(&[(keys::BURST, "true")])), Some(&pod));
        assert!(from_template.failed_over.is_empty());
    }

    #[test]
    fn pod_template_wins() {
        let deployment = map(&[
            (keys::BURST, "true"),
            (keys::MAX_LOCAL, "3"),
            (keys::PROVIDER, "aci"),
        ]);
        let pod = map(&[(keys::MAX_LOCAL, "5")]);
        let (policy, warnings) = read(Some(&deployment), Some(&pod));
        assert!(warnings.is_empty());
        assert!(policy.opted_in);
        assert_eq!(policy.max_local, Some(5));
        assert_eq!(policy.provider, Some(ProviderChoice::Aci));
    }

    #[test]
    fn invalid_values_warn_and_act_absent() {
        let pod = map(&[
            (keys::BURST, "true"),
            (keys::MAX_LOCAL, "-1"),
            (keys::MAX_BURST, "150%"),
            (keys::CAPACITY_THRESHOLD, "1.5"),
            (keys::HPA_THRESHOLD, "zero"),
            (keys::PROVIDER, "gcp"),
            (keys::MAX_USD_PER_HOUR, "-2"),
        ]);
        let (policy, warnings) = read(None, Some(&pod));
        assert_eq!(warnings.len(), 6, "{warnings:?}");
        assert_eq!(
            policy,
            WorkloadPolicy {
                opted_in: true,
                ..WorkloadPolicy::default()
            }
        );
    }

    #[test]
    fn max_burst_forms() {
        assert_eq!(MaxBurst::Percent(50).resolve(5), 3);
        assert_eq!(MaxBurst::Percent(10).resolve(1), 1);
        assert_eq!(MaxBurst::Percent(0).resolve(10), 0);
        assert_eq!(MaxBurst::Count(4).resolve(100), 4);
        let pod = map(&[(keys::BURST, "true"), (keys::MAX_BURST, " 25% ")]);
        assert_eq!(
            read(None, Some(&pod)).0.max_burst,
            Some(MaxBurst::Percent(25))
        );
    }

    #[test]
    fn workload_budget() {
        let pod = map(&[(keys::BURST, "true"), (keys::MAX_USD_PER_HOUR, "2.5")]);
        assert_eq!(read(None, Some(&pod)).0.max_usd_per_hour, Some(2.5));
    }

    #[test]
    fn not_opted_in() {
        let pod = map(&[(keys::BURST, "false"), (keys::MAX_LOCAL, "x")]);
        let (policy, warnings) = read(None, Some(&pod));
        assert!(!policy.opted_in);
        assert!(warnings.is_empty());
    }
}
