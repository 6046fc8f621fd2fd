//! Fargate task sizes: the cheapest valid CPU/memory combination covering a pod's needs
//! (AWS "Task CPU and memory" table for Linux Fargate tasks).

use crate::config::Price;

/// One Fargate task size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskSize {
    /// CPU units (1024 = 1 vCPU).
    pub cpu_units: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
}

impl TaskSize {
    /// USD per hour at `price`.
    pub fn hourly_cost(self, price: &Price) -> f64 {
        let vcpu = f64::from(self.cpu_units) / 1024.0;
        let gb = f64::from(self.memory_mib) / 1024.0;
        vcpu * price.vcpu_hour + gb * price.gb_hour
    }
}

/// (CPU units, smallest MiB, largest MiB, step MiB), from the AWS table; 0.25 vCPU has
/// the irregular 0.5/1/2 GiB set, handled separately.
const RANGES: [(u32, u32, u32, u32); 6] = [
    (512, 1024, 4096, 1024),
    (1024, 2048, 8192, 1024),
    (2048, 4096, 16384, 1024),
    (4096, 8192, 30720, 1024),
    (8192, 16384, 61440, 4096),
    (16384, 32768, 122880, 8192),
];

/// Every valid Linux Fargate size.
pub fn all_sizes() -> impl Iterator<Item = TaskSize> {
    let quarter = [512, 1024, 2048].into_iter().map(|memory_mib| TaskSize {
        cpu_units: 256,
        memory_mib,
    });
    let ranges = RANGES.into_iter().flat_map(|(cpu_units, low, high, step)| {
        (low..=high)
            .step_by(step as usize)
            .map(move |memory_mib| TaskSize {
                cpu_units,
                memory_mib,
            })
    });
    quarter.chain(ranges)
}

/// CPU units for millicores, rounded up (1000m = 1024 units).
pub fn cpu_units(millis: u64) -> u64 {
    (millis * 1024).div_ceil(1000)
}

/// MiB for bytes, rounded up.
pub fn mebibytes(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// The cheapest size with at least `millis` CPU and `bytes` memory, or `None` when the pod
/// exceeds the largest size (16 vCPU / 120 GiB).
pub fn cheapest(millis: u64, bytes: u64, price: &Price) -> Option<TaskSize> {
    let (units, mib) = (cpu_units(millis), mebibytes(bytes));
    all_sizes()
        .filter(|s| u64::from(s.cpu_units) >= units && u64::from(s.memory_mib) >= mib)
        .min_by(|a, b| {
            a.hourly_cost(price)
                .total_cmp(&b.hourly_cost(price))
                .then(a.cpu_units.cmp(&b.cpu_units))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PricingConfig;

    fn size(millis: u64, mib: u64) -> Option<(u32, u32)> {
        cheapest(millis, mib << 20, &PricingConfig::default().fargate)
            .map(|s| (s.cpu_units, s.memory_mib))
    }

    #[test]
    fn table() {
        let cases = [
            ((0, 0), Some((256, 512))),
            ((100, 128), Some((256, 512))),
            ((250, 512), Some((256, 512))),
            ((250, 513), Some((256, 1024))),
            ((250, 2048), Some((256, 2048))),
            ((250, 2049), Some((512, 3072))),
            ((251, 512), Some((512, 1024))),
            ((500, 4096), Some((512, 4096))),
            ((500, 4097), Some((1024, 5120))),
            ((1000, 3000), Some((1024, 3072))),
            ((1001, 1024), Some((2048, 4096))),
            ((2000, 16384), Some((2048, 16384))),
            ((2000, 16385), Some((4096, 17408))),
            ((4000, 30720), Some((4096, 30720))),
            ((4000, 30721), Some((8192, 32768))),
            ((8000, 61440), Some((8192, 61440))),
            ((8000, 61441), Some((16384, 65536))),
            ((16000, 122880), Some((16384, 122880))),
            ((16000, 122881), None),
            ((16001, 1024), None),
        ];
        for ((millis, mib), expected) in cases {
            assert_eq!(size(millis, mib), expected, "{millis}m / {mib} MiB");
        }
    }

    #[test]
    fn units_round_up() {
        assert_eq!(cpu_units(1000), 1024);
        assert_eq!(cpu_units(1), 2);
        assert_eq!(mebibytes(1), 1);
        assert_eq!(mebibytes(128_974_848), 123);
    }

    #[test]
    fn cost_of_one_vcpu_two_gib() {
        let s = TaskSize {
            cpu_units: 1024,
            memory_mib: 2048,
        };
        let cost = s.hourly_cost(&PricingConfig::default().fargate);
        assert!((cost - (0.04048 + 2.0 * 0.004445)).abs() < 1e-12);
    }
}
