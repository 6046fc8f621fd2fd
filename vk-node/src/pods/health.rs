//! Whether the provider behind a node is healthy, as data: every provider call's outcome
//! goes in; out comes whether the node's `spillway.io/provider-degraded` taint should
//! change. A node whose provider keeps failing is tainted rather than turned NotReady,
//! which would drop the endpoints of its healthy pods.

use crate::provider::ProviderError;

/// The provider's health as the node sees it.
#[derive(Clone, Copy, Debug)]
pub struct ProviderHealth {
    consecutive_failures: u32,
    degraded: bool,
    degraded_after: u32,
}

impl ProviderHealth {
    /// Healthy; degraded after `degraded_after` failed calls in a row.
    pub fn new(degraded_after: u32) -> Self {
        Self {
            consecutive_failures: 0,
            degraded: false,
            degraded_after,
        }
    }

    /// Whether a call's outcome shows the provider working: it answered, even "not
    /// found" or "invalid request" (the request was at fault, not the provider).
    pub fn answered<T>(result: &Result<T, ProviderError>) -> bool {
        matches!(
            result,
            Ok(_) | Err(ProviderError::NotFound(_)) | Err(ProviderError::Invalid(_))
        )
    }

    /// Counts one call; `Some(taint)` when the taint should change: off at the first
    /// answer while degraded, on at the `degraded_after`th failure in a row.
    pub fn observe(&mut self, answered: bool) -> Option<bool> {
        if answered {
            self.consecutive_failures = 0;
            return self.degraded.then_some(false);
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        (!self.degraded && self.consecutive_failures >= self.degraded_after).then_some(true)
    }

    /// The taint is now `degraded` (a change that failed to land is asked for again by
    /// the next call's outcome).
    pub fn taint_set(&mut self, degraded: bool) {
        self.degraded = degraded;
    }

    /// Whether the node is tainted degraded.
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_taint_goes_on_after_failures_in_a_row_and_off_at_the_first_answer() {
        // (call answered?, taint change expected)
        let table = [
            (false, None),
            (false, None),
            (true, None), // an answer resets the count
            (false, None),
            (false, None),
            (false, Some(true)), // third in a row
            (false, None),       // tainted already
            (true, Some(false)),
            (true, None),
        ];
        let mut health = ProviderHealth::new(3);
        for (step, (answered, expected)) in table.into_iter().enumerate() {
            let change = health.observe(answered);
            assert_eq!(change, expected, "step {step}");
            if let Some(taint) = change {
                health.taint_set(taint);
            }
        }
        assert!(!health.is_degraded());
    }

    #[test]
    fn a_taint_change_that_did_not_land_is_asked_for_again() {
        let mut health = ProviderHealth::new(1);
        assert_eq!(health.observe(false), Some(true));
        // The apiserver refused the patch: not recorded as set.
        assert_eq!(health.observe(false), Some(true));
        health.taint_set(true);
        assert_eq!(health.observe(false), None);
    }

    #[test]
    fn not_found_and_invalid_are_answers() {
        let answers: [Result<(), ProviderError>; 3] = [
            Ok(()),
            Err(ProviderError::NotFound("gone".into())),
            Err(ProviderError::Invalid("bad".into())),
        ];
        for answer in &answers {
            assert!(ProviderHealth::answered(answer), "{answer:?}");
        }
        for failure in [
            ProviderError::Throttled("slow down".into()),
            ProviderError::Unavailable("no capacity".into()),
        ] {
            assert!(!ProviderHealth::answered::<()>(&Err(failure)));
        }
    }
}
