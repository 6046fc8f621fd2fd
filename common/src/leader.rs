//! Leader election through a `coordination.k8s.io` Lease, so two replicas never drive the
//! same node or controller: acquire when the Lease is free or expired (by the candidate's
//! own observation, never by comparing clocks), renew while holding under a deadline,
//! step down before the Lease could expire, and release it on shutdown.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Lease duration; a new leader takes over at most this long after the old one vanished
/// (client-go's leader-election default is 15 s).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// Renewal period (client-go's retry period default is 2 s; we renew a third of the way).
pub const RENEW_INTERVAL: Duration = Duration::from_secs(5);
/// Margin kept between stepping down and the Lease's expiry, for the time it takes the
/// caller to stop acting after `lost` is cancelled.
pub const STEP_DOWN_MARGIN: Duration = Duration::from_secs(2);

/// What a candidate saw of a Lease held by someone else: the holder's record, and when it
/// last changed by the candidate's own monotonic clock (client-go's observed time). The
/// Lease has expired once the record stayed the same for its duration: the `renewTime`
/// written by another replica's clock is compared with nothing, so clock skew between
/// replicas cannot make a standby take over from a leader that still renews.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    last: Option<(LeaseRecord, tokio::time::Instant)>,
}

/// The parts of a Lease that change when its holder renews it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `holderIdentity`.
    pub holder: Option<String>,
    /// `renewTime`, as written (never compared with a clock).
    pub renew_time: Option<String>,
    /// `leaseDurationSeconds`.
    pub duration_seconds: Option<i32>,
}

impl Observation {
    /// Records `record` seen at `now`; true when the Lease is free to take: no holder,
    /// no duration, or unchanged for its whole duration as this replica measured it.
    pub fn expired(&mut self, record: LeaseRecord, now: tokio::time::Instant) -> bool {
        if record.holder.as_deref().is_none_or(str::is_empty) {
            return true;
        }
        let Some(seconds) = record.duration_seconds.filter(|s| *s > 0) else {
            return true;
        };
        let since = match &self.last {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                self.last = Some((record, now));
                now
            }
        };
        now.duration_since(since) >= Duration::from_secs(u64::from(seconds.unsigned_abs()))
    }
}

/// One election.
#[derive(Clone)]
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    observation: std::sync::Arc<std::sync::Mutex<Observation>>,
}

impl LeaderElection {
    /// An election for Lease `namespace/name`, as `identity`.
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            observation: Default::default(),
        }
    }

    /// One attempt: true when we hold the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = SystemTime::now();
        let spec = json!({
            "holderIdentity": self.identity,
            "leaseDurationSeconds": LEASE_DURATION.as_secs(),
            "renewTime": crate::time::rfc3339_micros(now),
        });
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let mut spec = spec;
            spec["acquireTime"] = json!(crate::time::rfc3339_micros(now));
            let lease: Lease =
                serde_json::from_value(json!({"metadata": {"name": self.name}, "spec": spec}))
                    .expect("lease object is valid");
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(error) => Err(error),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let ours = current.holder_identity.as_deref() == Some(self.identity.as_str());
        let record = LeaseRecord {
            holder: current.holder_identity.clone(),
            renew_time: current.renew_time.as_ref().map(|t| t.0.to_string()),
            duration_seconds: current.lease_duration_seconds,
        };
        let expired = !ours
            && self
                .observation
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .expired(record, tokio::time::Instant::now());
        if !ours && !expired {
            return Ok(false);
        }
        let mut new_spec: k8s_openapi::api::coordination::v1::LeaseSpec =
            serde_json::from_value(spec).expect("lease spec is valid");
        new_spec.acquire_time = if ours {
            current.acquire_time.clone()
        } else {
            new_spec.renew_time.clone()
        };
        new_spec.lease_transitions =
            Some(current.lease_transitions.unwrap_or(0) + i32::from(!ours));
        lease.spec = Some(new_spec);
        // replace() carries resourceVersion: a concurrent winner makes ours fail with 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Waits until this replica leads (or `shutdown`); returns whether it leads.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> bool {
        loop {
            let attempt = tokio::time::timeout(RENEW_INTERVAL, self.try_acquire_or_renew());
            match attempt.await.unwrap_or(Ok(false)) {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    return true;
                }
                Ok(false) => tracing::debug!(lease = %self.name, "another replica leads; waiting"),
                Err(error) => {
                    tracing::warn!(%error, lease = %self.name, "leader election failed; retrying")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(RENEW_INTERVAL) => {}
            }
        }
    }

    /// Renews until a renewal is refused or the Lease could expire unrenewed; then cancels
    /// `lost` so the caller stops acting as leader. Every attempt runs under a deadline
    /// that ends [`STEP_DOWN_MARGIN`] before the Lease could expire, so a stalled
    /// apiserver connection cannot keep a stale leader acting.
    pub async fn hold(self, lost: CancellationToken) {
        let mut last_renewal = tokio::time::Instant::now();
        let budget = LEASE_DURATION - STEP_DOWN_MARGIN;
        loop {
            tokio::select! {
                _ = lost.cancelled() => return,
                _ = tokio::time::sleep(RENEW_INTERVAL) => {}
            }
            let Some(remaining) = budget.checked_sub(last_renewal.elapsed()) else {
                tracing::error!(lease = %self.name, "could not renew before expiry; stepping down");
                lost.cancel();
                return;
            };
            let attempt = tokio::time::timeout(remaining, self.try_acquire_or_renew()).await;
            match attempt {
                Ok(Ok(true)) => last_renewal = tokio::time::Instant::now(),
                Ok(Ok(false)) => {
                    tracing::error!(lease = %self.name, "leadership lost to another replica");
                    lost.cancel();
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, lease = %self.name, "lease renewal failed")
                }
                Err(_) => tracing::warn!(lease = %self.name, "lease renewal timed out"),
            }
            if last_renewal.elapsed() + RENEW_INTERVAL >= budget {
                tracing::error!(lease = %self.name, "could not renew before expiry; stepping down");
                lost.cancel();
                return;
            }
        }
    }

    /// Gives the Lease up (on a clean shutdown) so a standby takes over at once instead
    /// of after the Lease expired; a failure only delays the takeover.
    pub async fn release(&self) {
        let attempt = async {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else {
                return Ok::<_, kube::Error>(());
            };
            let spec = lease.spec.get_or_insert_default();
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await?;
            Ok(())
        };
        match tokio::time::timeout(RENEW_INTERVAL, attempt).await {
            Ok(Ok(())) => tracing::info!(lease = %self.name, "leadership released"),
            Ok(Err(error)) => {
                tracing::warn!(%error, lease = %self.name, "could not release the lease")
            }
            Err(_) => tracing::warn!(lease = %self.name, "releasing the lease timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stalled apiserver: accepts connections and never answers.
    async fn stalled_apiserver() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        (addr, task)
    }

    fn record(holder: &str, renew: &str) -> LeaseRecord {
        LeaseRecord {
            holder: Some(holder.into()),
            renew_time: Some(renew.into()),
            duration_seconds: Some(15),
        }
    }

    #[test]
    fn a_lease_expires_after_its_duration_unchanged_by_the_observers_clock() {
        let t0 = tokio::time::Instant::now();
        let mut seen = Observation::default();
        // renewTime years in the future (a holder whose clock runs ahead) or in the past
        // does not matter: only how long the record stayed the same here.
        let stale = record("a", "1999-01-01T00:00:00Z");
        assert!(!seen.expired(stale.clone(), t0));
        assert!(!seen.expired(stale.clone(), t0 + Duration::from_secs(14)));
        assert!(seen.expired(stale, t0 + Duration::from_secs(15)));

        let mut seen = Observation::default();
        let ahead = record("a", "2999-01-01T00:00:00Z");
        assert!(!seen.expired(ahead.clone(), t0));
        assert!(seen.expired(ahead, t0 + Duration::from_secs(16)));
    }

    #[test]
    fn a_holder_that_keeps_renewing_never_expires_whatever_its_clock_says() {
        let t0 = tokio::time::Instant::now();
        let mut seen = Observation::default();
        // Renewals written by a clock an hour behind: the record changes every 5 s.
        for i in 0..20u64 {
            let renew = format!("2026-01-01T00:00:{:02}Z", i * 5 % 60);
            let at = t0 + Duration::from_secs(i * 5);
            assert!(!seen.expired(record("a", &renew), at), "renewal {i}");
        }
    }

    #[test]
    fn a_released_or_durationless_lease_is_free_at_once() {
        let now = tokio::time::Instant::now();
        let mut seen = Observation::default();
        let released = LeaseRecord {
            holder: None,
            renew_time: Some("2026-01-01T00:00:00Z".into()),
            duration_seconds: Some(1),
        };
        assert!(seen.expired(released, now));
        let no_duration = LeaseRecord {
            duration_seconds: None,
            ..record("a", "2026-01-01T00:00:00Z")
        };
        assert!(seen.expired(no_duration, now));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_renewal_steps_down_before_the_lease_expires() {
        crate::tls::install_crypto_provider();
        let (addr, _server) = stalled_apiserver().await;
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let election = LeaderElection::new(client, "default", "test", "me");
        let lost = CancellationToken::new();
        let started = tokio::time::Instant::now();
        tokio::spawn(election.hold(lost.clone()));
        let stepped_down = tokio::time::timeout(Duration::from_secs(120), lost.cancelled()).await;
        assert!(
            stepped_down.is_ok(),
            "a hanging renewal kept the replica leading"
        );
        assert!(
            started.elapsed() <= LEASE_DURATION - STEP_DOWN_MARGIN,
            "stepped down after {:?}",
            started.elapsed()
        );
    }
}
