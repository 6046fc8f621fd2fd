//! Whether the provider behind a node is healthy, as data: every provider call's outcome
//! goes in; out comes whether the node's `spillway.io/provider-degraded` taint should
//! change. A node whose provider keeps failing is tainted rather than turned NotReady,
//! which would drop the endpoints of its healthy pods.

use crate::provider::ProviderError;

/// The provider's health as the node sees it: the taint is wanted while calls keep
/// failing or while the provider's set-up is not ready (no credentials, a missing
/// cluster, …).
#[derive(Clone, Debug)]
pub struct ProviderHealth {
    consecutive_failures: u32,
    /// Per operation, access denials since its last success: reads that still answer do
    /// not hide a create every pod is denied.
    denials: std::collections::HashMap<String, u32>,
    degraded_after: u32,
    setup_ready: bool,
    /// Whether the taint is set.
    degraded: bool,
}

impl ProviderHealth {
    /// Healthy; degraded after `degraded_after` failed calls in a row.
    pub fn new(degraded_after: u32) -> Self {
        Self {
            consecutive_failures: 0,
            denials: std::collections::HashMap::new(),
            degraded_after,
            setup_ready: true,
            degraded: false,
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

    fn wanted(&self) -> bool {
        !self.setup_ready
            || self.consecutive_failures >= self.degraded_after
            || self.denials.values().any(|&n| n >= self.degraded_after)
    }

    fn change(&self) -> Option<bool> {
        (self.wanted() != self.degraded).then_some(self.wanted())
    }

    /// Counts one call; `Some(taint)` when the taint should change: off at the first
    /// answer while degraded (unless the set-up is not ready), on at the
    /// `degraded_after`th failure in a row.
    pub fn observe(&mut self, answered: bool) -> Option<bool> {
        if answered {
            self.consecutive_failures = 0;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        }
        self.change()
    }

    /// Counts one call of `op` toward the denial rule; `Some(taint)` when the taint
    /// should change: on once `op` was denied (the node's identity or role refused)
    /// `degraded_after` times without a success in between, whatever other calls answer;
    /// off at its next success.
    pub fn observe_denial<T>(
        &mut self,
        op: &str,
        result: &Result<T, ProviderError>,
    ) -> Option<bool> {
        match result {
            Err(ProviderError::Denied(_)) => {
                *self.denials.entry(op.to_owned()).or_default() += 1;
            }
            Ok(_) => {
                self.denials.remove(op);
            }
            Err(_) => {}
        }
        self.change()
    }

    /// Records a set-up check; `Some(taint)` when the taint should change: on while the
    /// set-up is not ready, off once it is (unless calls keep failing).
    pub fn setup_checked(&mut self, ready: bool) -> Option<bool> {
        self.setup_ready = ready;
        self.change()
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
    fn the_taint_stays_on_until_the_set_up_is_ready_whatever_calls_answer() {
        let mut health = ProviderHealth::new(3);
        assert_eq!(health.setup_checked(false), Some(true));
        health.taint_set(true);
        // Calls that answer do not lift it while the set-up is not ready.
        assert_eq!(health.observe(true), None);
        assert_eq!(health.setup_checked(false), None);
        assert_eq!(health.setup_checked(true), Some(false));
        health.taint_set(false);
        // Ready again but failing: the failures keep their own rule.
        for _ in 0..2 {
            assert_eq!(health.observe(false), None);
        }
        assert_eq!(health.observe(false), Some(true));
    }

    #[test]
    fn denials_of_one_call_taint_the_node_although_other_calls_answer() {
        let mut health = ProviderHealth::new(3);
        let denied: Result<(), ProviderError> = Err(ProviderError::Denied("AccessDenied".into()));
        for _ in 0..2 {
            assert_eq!(health.observe_denial("create", &denied), None);
            // A status read answering in between does not reset the denials.
            assert_eq!(health.observe(true), None);
            assert_eq!(health.observe_denial("status", &Ok(())), None);
        }
        assert_eq!(health.observe_denial("create", &denied), Some(true));
        health.taint_set(true);
        assert_eq!(health.observe(true), None, "reads answering keep it on");
        assert_eq!(health.observe_denial("create", &Ok(())), Some(false));
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
