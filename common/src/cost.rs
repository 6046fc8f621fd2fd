//! What a pod costs per hour at a provider: the size the provider would bill (Fargate's
//! cheapest valid task size, ACI's 0.01-core / 0.1-GB steps) at the configured list
//! prices. `explain-pod`, the budget rule, the cost metrics and `spillway status` all
//! price through here, so they agree.

use crate::config::{PricingConfig, Provider};
use crate::fargate_sizing;
use crate::pod_resources::PodResources;

/// CPU for a pod that requests none (the virtual node's `--default-cpu` default too).
pub const DEFAULT_CPU_MILLIS: u64 = 250;
/// Memory for a pod that requests none.
pub const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;

/// A billed size: vCPU and GB (GiB for Fargate, GB for ACI, as each bills).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BilledSize {
    /// vCPU (cores).
    pub vcpu: f64,
    /// Memory in the provider's billing unit.
    pub gb: f64,
}

/// The pod's needs with the defaults standing in for what it does not specify.
pub fn with_defaults(needs: &PodResources) -> (u64, u64) {
    let cpu = if needs.cpu_specified {
        needs.cpu_millis
    } else {
        DEFAULT_CPU_MILLIS
    };
    let memory = if needs.memory_specified {
        needs.memory_bytes
    } else {
        DEFAULT_MEMORY_BYTES
    };
    (cpu, memory)
}

/// ACI size: requests go in 0.01-core and 0.1-GB steps (ACI container group docs).
pub fn aci_size(cpu_millis: u64, memory_bytes: u64) -> BilledSize {
    BilledSize {
        vcpu: (cpu_millis as f64 / 10.0).ceil() / 100.0,
        gb: (memory_bytes as f64 / (1u64 << 30) as f64 * 10.0).ceil() / 10.0,
    }
}

/// The size `provider` would bill for `needs`; `None` when no Fargate size is big enough.
pub fn billed_size(
    needs: &PodResources,
    provider: Provider,
    pricing: &PricingConfig,
) -> Option<BilledSize> {
    let (cpu, memory) = with_defaults(needs);
    match provider {
        Provider::Fargate => {
            fargate_sizing::cheapest(cpu, memory, &pricing.fargate).map(|size| BilledSize {
                vcpu: f64::from(size.cpu_units) / 1024.0,
                gb: f64::from(size.memory_mib) / 1024.0,
            })
        }
        Provider::Aci => Some(aci_size(cpu, memory)),
    }
}

/// Estimated USD per hour of a pod of `needs` at `provider`; `None` when it fits no size.
pub fn hourly_usd(
    needs: &PodResources,
    provider: Provider,
    pricing: &PricingConfig,
) -> Option<f64> {
    let price = pricing.for_provider(provider);
    billed_size(needs, provider, pricing).map(|s| s.vcpu * price.vcpu_hour + s.gb * price.gb_hour)
}

/// Rounds to a micro-dollar so printed figures are stable (and never `-0`: an empty
/// `f64` sum is negative zero).
pub fn round_usd(cost: f64) -> f64 {
    (cost * 1e6).round() / 1e6 + 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(cpu_millis: u64, memory_bytes: u64) -> PodResources {
        PodResources {
            cpu_millis,
            memory_bytes,
            cpu_specified: true,
            memory_specified: true,
        }
    }

    #[test]
    fn fargate_bills_the_cheapest_task_size() {
        let pricing = PricingConfig::default();
        // 1 vCPU + 3 GiB → the 1 vCPU / 3 GiB task.
        let cost = hourly_usd(&needs(1000, 3 << 30), Provider::Fargate, &pricing).unwrap();
        assert!((cost - (0.04048 + 3.0 * 0.004445)).abs() < 1e-12, "{cost}");
        // Too big for any task.
        assert_eq!(
            hourly_usd(&needs(17_000, 1 << 30), Provider::Fargate, &pricing),
            None
        );
    }

    #[test]
    fn aci_rounds_up_to_its_steps() {
        let size = aci_size(1001, 1 << 30);
        assert_eq!(
            size,
            BilledSize {
                vcpu: 1.01,
                gb: 1.0
            }
        );
        let pricing = PricingConfig::default();
        let cost = hourly_usd(&needs(1000, 2 << 30), Provider::Aci, &pricing).unwrap();
        assert!((cost - (0.0486 + 2.0 * 0.0054)).abs() < 1e-12, "{cost}");
    }

    #[test]
    fn rounding_never_prints_negative_zero() {
        let empty: f64 = std::iter::empty::<f64>().sum();
        assert_eq!(round_usd(empty).to_string(), "0");
        assert_eq!(round_usd(0.0123424999), 0.012342);
    }

    #[test]
    fn unspecified_requests_take_the_defaults() {
        let pricing = PricingConfig::default();
        let none = PodResources::default();
        assert_eq!(
            hourly_usd(&none, Provider::Fargate, &pricing),
            hourly_usd(
                &needs(DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES),
                Provider::Fargate,
                &pricing
            )
        );
    }
}
