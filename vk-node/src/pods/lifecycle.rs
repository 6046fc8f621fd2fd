//! One pod's lifecycle on a virtual node, as data: its [`PodRecord`], and what each
//! thing that happens to it (a create answered, a create held back, a status pulled, the
//! pod missing from the provider, a stop finished) does to the record and which
//! [`Effect`]s follow. Time and jitter are passed in, so every rule is checked by a
//! synchronous table test; the pod controller carries the effects out.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use super::probes::{PodProbes, ProbeEffect, ProbeKind, ProbeRun};
use crate::env_refs::ObjectRef;
use crate::provider::{ProviderError, RemoteContainerState, RemotePhase, RemoteStatus};
use crate::status::{self, AfterStop, StatusContext, TerminalPhase};

/// Where a pod is in its life at the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for (another) create.
    NeedsCreate,
    /// A create is in flight.
    Creating,
    /// Created; status comes from the provider.
    Launched,
    /// Finished for good; nothing more to do.
    Terminal,
}

/// Why a provider object is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopFor {
    /// A pod being deleted: the Pod is removed once its object stopped.
    DeletedPod,
    /// A pod already gone from the API: only the object is left to stop.
    GonePod,
    /// A container failed its liveness or startup probe, or the app exited beside its
    /// sidecars: the object is stopped and, as the restart policy says, launched again.
    Restart,
}

/// Why a running pod's object is stopped to be launched again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillFor {
    /// A container failed this probe.
    Probe(ProbeKind),
    /// The app's containers exited while its native sidecars ran on.
    AppExited,
}

/// An Event's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// `Normal`.
    Normal,
    /// `Warning`.
    Warning,
}

/// What the controller does for a pod after a rule ran.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Publish an Event about the pod.
    Event {
        /// Normal or Warning.
        severity: Severity,
        /// The Event's reason.
        reason: &'static str,
        /// What it says.
        note: String,
    },
    /// Write a one-off status (a refusal, a failure), retried until it lands.
    WriteStatus(Value),
    /// Write the status a sync computed (batched with the others of the sync).
    SyncStatus(Value),
    /// Say on the pod that the provider refuses it (the `spillway.io/ProviderRefused`
    /// condition), since when and why.
    WriteRefusal {
        /// `Unavailable`, `Throttled` or `Transient`.
        reason: &'static str,
        /// The provider's answer.
        message: String,
        /// When the current run of refusals began.
        since: jiff::Timestamp,
    },
    /// Stop the pod's provider object, honouring `grace` seconds.
    Stop {
        /// Seconds the containers get to stop.
        grace: i64,
        /// What follows the stop.
        why: StopFor,
    },
    /// Remove the Pod (grace 0, UID precondition): its object is stopped.
    RemovePod,
}

impl Effect {
    fn event(severity: Severity, reason: &'static str, note: String) -> Self {
        Effect::Event {
            severity,
            reason,
            note,
        }
    }
}

/// Who can run a pod's probes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Probing {
    /// The node reaches the pod's IP: it runs the HTTP and TCP probes.
    pub node_reaches_pod: bool,
    /// The provider runs `exec` probes and reports their verdict.
    pub provider_exec: bool,
}

impl From<bool> for Probing {
    /// Whether the node reaches the pod; the provider runs no exec probe.
    fn from(node_reaches_pod: bool) -> Self {
        Self {
            node_reaches_pod,
            provider_exec: false,
        }
    }
}

/// The node-wide settings the rules read.
#[derive(Clone, Copy, Debug)]
pub struct Rules<'a> {
    /// Invalid-request failures after which a pod is marked Failed.
    pub max_permanent_failures: u32,
    /// Status syncs a launched pod may be missing from the provider's answer before it
    /// counts as lost.
    pub lost_after_syncs: u32,
    /// The provider's name, for Events.
    pub provider: &'a str,
}

/// The time a rule runs at: the monotonic clock for waits, the wall clock for what is
/// written on the pod.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// For waits and deadlines.
    pub at: Instant,
    /// For condition times.
    pub wall: jiff::Timestamp,
}

impl Now {
    /// The present.
    pub fn current() -> Self {
        Self {
            at: Instant::now(),
            wall: jiff::Timestamp::now(),
        }
    }
}

/// The longest wait between two looks for a pod's missing ConfigMaps and Secrets.
pub const HELD_RETRY_MAX: Duration = Duration::from_secs(15);

/// Exponential back-off (500 ms doubling, capped at 2 min) scaled by `jitter`, a factor
/// in [0.5, 1) the caller draws.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let base = Duration::from_millis(500)
        .saturating_mul(1 << failures.min(8))
        .min(Duration::from_secs(120));
    base.mul_f64(jitter.clamp(0.0, 1.0))
}

/// The condition reason for a retryable refusal: `Unavailable` (capacity, quota, outage),
/// `Throttled`, `Denied` (the node's identity or role refused) or `Transient`.
pub fn refusal_reason(error: &ProviderError) -> &'static str {
    match error {
        ProviderError::Unavailable(_) => "Unavailable",
        ProviderError::Denied(_) => "Denied",
        ProviderError::Throttled(_) => "Throttled",
        _ => "Transient",
    }
}

/// `namespace/name` of a pod.
pub fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// What the node keeps about one pod bound to it.
#[derive(Debug)]
pub struct PodRecord {
    /// The pod as last seen.
    pub pod: Pod,
    /// Where it is in its life.
    pub stage: Stage,
    /// When the next create may start.
    pub next_attempt: Instant,
    /// Retryable create refusals in a row.
    pub retryable_failures: u32,
    /// Permanent create refusals.
    pub permanent_failures: u32,
    /// Relaunches (the containers' restartCount).
    pub restarts: i32,
    /// Waiting in back-off before a relaunch.
    pub crash_loop: bool,
    /// A phase decided for good.
    pub terminal: Option<TerminalPhase>,
    /// The status last written from a sync.
    pub last_status: Option<Value>,
    /// Its deletion began.
    pub deleting: bool,
    /// When to (re)try stopping and removing a pod being deleted; `None` when no try is
    /// pending. A failed stop or removal is retried with back-off until it succeeds.
    pub delete_due: Option<Instant>,
    /// Failed stops or removals of a pod being deleted.
    pub delete_failures: u32,
    /// Consecutive status syncs that did not find the pod's object at the provider.
    pub missing_syncs: u32,
    /// Refused by node-side admission: never created; an object the provider runs for it
    /// (from before the refusal existed) is an orphan.
    pub refused: bool,
    /// Create attempts held back because a required ConfigMap or Secret is missing.
    pub held: u32,
    /// What was missing at the last hold (reported again when it changes).
    pub held_for: Vec<ObjectRef>,
    /// Missing optional ConfigMaps and Secrets were reported (once per pod).
    pub optional_reported: bool,
    /// Containers whose start was reported since the last launch.
    pub started_reported: HashSet<String>,
    /// When the provider first refused to create it, of the current run of retryable
    /// refusals (the `spillway.io/ProviderRefused` condition's transition time).
    pub refused_since: Option<jiff::Timestamp>,
    /// Admission waits for the cluster view to know its workload: nothing is created
    /// until it is admitted or refused.
    pub awaiting_admission: bool,
    /// Since when the (synced) view has not known its workload.
    pub undecided_since: Option<Instant>,
    /// Launched and not seen running yet: polled often, so it turns Running without
    /// waiting for the full sync.
    pub fresh: bool,
    /// Its probes, once its containers run (`None` before, or when the node cannot reach
    /// its IP).
    pub probes: Option<PodProbes>,
    /// The provider's last status of it, for a status written between syncs.
    pub last_remote: Option<RemoteStatus>,
    /// A stop before a relaunch is under way.
    pub killing: Option<KillFor>,
}

impl PodRecord {
    /// The record of a pod first seen at `now` (a finished pod stays finished).
    pub fn new(pod: Pod, now: Instant) -> Self {
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        );
        let restarts = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.iter().map(|c| c.restart_count).max())
            .unwrap_or(0);
        Self {
            pod,
            stage: if finished {
                Stage::Terminal
            } else {
                Stage::NeedsCreate
            },
            next_attempt: now,
            retryable_failures: 0,
            permanent_failures: 0,
            restarts,
            crash_loop: false,
            terminal: None,
            last_status: None,
            deleting: false,
            delete_due: None,
            delete_failures: 0,
            missing_syncs: 0,
            refused: false,
            held: 0,
            held_for: Vec::new(),
            optional_reported: false,
            started_reported: HashSet::new(),
            refused_since: None,
            awaiting_admission: false,
            undecided_since: None,
            fresh: false,
            probes: None,
            last_remote: None,
            killing: None,
        }
    }

    /// Whether a create should start now.
    pub fn create_due(&self, now: Instant) -> bool {
        self.stage == Stage::NeedsCreate
            && !self.deleting
            && !self.awaiting_admission
            && self.next_attempt <= now
    }

    /// Whether a failed stop or removal of a pod being deleted is due again.
    pub fn deletion_due(&self, now: Instant) -> bool {
        self.deleting && self.delete_due.is_some_and(|due| due <= now)
    }

    /// Whether a status pull should include it (`only_fresh`: only if not seen running).
    pub fn wants_status(&self, only_fresh: bool) -> bool {
        self.stage == Stage::Launched
            && !self.deleting
            && self.killing.is_none()
            && (!only_fresh || self.fresh)
    }

    /// Whether its probes may run now.
    pub fn probing(&self) -> bool {
        self.stage == Stage::Launched && !self.deleting && self.killing.is_none()
    }

    /// The pod's deletion was seen: its stop is due now.
    pub fn deletion_seen(&mut self, now: Instant) {
        self.deleting = true;
        self.delete_due = Some(now);
    }

    /// Stops the pod's object for its deletion: `Killing` per container the first time
    /// (when its object runs and no stop is in flight), then the stop with the pod's
    /// grace period (the deletion's, else the spec's, else 30 s).
    pub fn stop_for_deletion(&self, stop_in_flight: bool) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.delete_failures == 0 && self.stage == Stage::Launched && !stop_in_flight {
            for container in self.pod.spec.iter().flat_map(|s| s.containers.iter()) {
                effects.push(Effect::event(
                    Severity::Normal,
                    "Killing",
                    format!("Stopping container {}", container.name),
                ));
            }
        }
        effects.push(Effect::Stop {
            grace: self.grace_seconds(),
            why: StopFor::DeletedPod,
        });
        effects
    }

    /// A create was answered. Optional ConfigMaps and Secrets that were missing are
    /// reported once; success launches it (`Pulling` per container); a retryable refusal
    /// waits with back-off and says so on the first and every fifth; a permanent one
    /// fails the pod after `max_permanent_failures`.
    ///
    /// A pod whose deletion began meanwhile is stopped instead (`stop_in_flight`: a stop
    /// of its object is under way already).
    pub fn created(
        &mut self,
        result: &Result<(), ProviderError>,
        optional_missing: &[ObjectRef],
        rules: Rules<'_>,
        now: Now,
        jitter: f64,
        stop_in_flight: bool,
    ) -> Vec<Effect> {
        if self.deleting {
            self.stage = Stage::Launched;
            return self.stop_for_deletion(stop_in_flight);
        }
        self.held = 0;
        self.held_for.clear();
        let mut effects = Vec::new();
        if !optional_missing.is_empty() && !self.optional_reported {
            self.optional_reported = true;
            let namespace = self.pod.metadata.namespace.clone().unwrap_or_default();
            for missing in optional_missing {
                effects.push(Effect::event(
                    Severity::Warning,
                    missing.reason(),
                    missing.message(&namespace),
                ));
            }
        }
        match result {
            Ok(()) => {
                self.stage = Stage::Launched;
                self.retryable_failures = 0;
                self.refused_since = None;
                self.crash_loop = false;
                self.started_reported.clear();
                self.fresh = true;
                self.probes = None;
                self.last_remote = None;
                self.killing = None;
                for container in self.pod.spec.iter().flat_map(|s| s.containers.iter()) {
                    let image = container.image.as_deref().unwrap_or_default();
                    effects.push(Effect::event(
                        Severity::Normal,
                        "Pulling",
                        format!("Pulling image {image:?} ({})", rules.provider),
                    ));
                }
            }
            Err(error) if error.is_retryable() => {
                self.stage = Stage::NeedsCreate;
                self.retryable_failures += 1;
                self.next_attempt = now.at + backoff(self.retryable_failures, jitter);
                let failures = self.retryable_failures;
                let since = *self.refused_since.get_or_insert(now.wall);
                if failures == 1 || failures.is_multiple_of(5) {
                    effects.push(Effect::WriteRefusal {
                        reason: refusal_reason(error),
                        message: error.to_string(),
                        since,
                    });
                    let reason = if matches!(error, ProviderError::Throttled(_)) {
                        "ProviderThrottled"
                    } else {
                        "ProviderCreateRetrying"
                    };
                    effects.push(Effect::event(
                        Severity::Warning,
                        reason,
                        format!("attempt {failures}: {error}; retrying"),
                    ));
                }
            }
            Err(error) => {
                self.stage = Stage::NeedsCreate;
                self.permanent_failures += 1;
                self.next_attempt = now.at + backoff(self.permanent_failures, jitter);
                let failures = self.permanent_failures;
                if failures >= rules.max_permanent_failures {
                    self.stage = Stage::Terminal;
                    self.terminal = Some(TerminalPhase::Failed);
                    let message = format!("the provider refused the pod {failures} times: {error}");
                    effects.push(Effect::event(
                        Severity::Warning,
                        "ProviderFailed",
                        message.clone(),
                    ));
                    effects.push(Effect::WriteStatus(status::provider_failed_status(
                        "ProviderFailed",
                        &message,
                    )));
                } else {
                    effects.push(Effect::event(
                        Severity::Warning,
                        "ProviderCreateFailed",
                        format!("attempt {failures}: {error}"),
                    ));
                }
            }
        }
        effects
    }

    /// A create held back: required ConfigMaps or Secrets are missing (an Event names
    /// each, when what is missing changes and every tenth hold) or could not be looked
    /// up (`missing` empty). The pod stays Pending and is looked at again soon.
    /// A pod whose deletion began meanwhile is stopped instead.
    pub fn held_back(
        &mut self,
        missing: Vec<ObjectRef>,
        now: Now,
        jitter: f64,
        stop_in_flight: bool,
    ) -> Vec<Effect> {
        self.stage = Stage::NeedsCreate;
        self.held += 1;
        self.next_attempt = now.at + backoff(self.held, jitter).min(HELD_RETRY_MAX);
        if self.deleting {
            self.stage = Stage::Launched;
            return self.stop_for_deletion(stop_in_flight);
        }
        let required: Vec<ObjectRef> = missing.into_iter().filter(|r| !r.optional).collect();
        if required.is_empty() {
            return Vec::new(); // not looked up: nothing new to say
        }
        let changed = self.held_for != required;
        self.held_for = required.clone();
        if !changed && !self.held.is_multiple_of(10) {
            return Vec::new();
        }
        let namespace = self.pod.metadata.namespace.clone().unwrap_or_default();
        required
            .iter()
            .map(|missing| {
                Effect::event(
                    Severity::Warning,
                    missing.reason(),
                    missing.message(&namespace),
                )
            })
            .collect()
    }

    /// A status pull did not find the pod's object: after `lost_after_syncs` syncs it is
    /// relaunched when its restart policy allows, else it fails with reason ProviderLost.
    pub fn missing_from_provider(&mut self, rules: Rules<'_>, now: Now) -> Vec<Effect> {
        self.missing_syncs += 1;
        if self.missing_syncs < rules.lost_after_syncs {
            return Vec::new();
        }
        self.missing_syncs = 0;
        self.fresh = false;
        let never = self.restart_policy_never();
        if never {
            self.stage = Stage::Terminal;
            self.terminal = Some(TerminalPhase::Failed);
            let message = format!(
                "the provider no longer has this pod's object ({} status syncs)",
                rules.lost_after_syncs
            );
            vec![
                Effect::event(Severity::Warning, "ProviderLost", message.clone()),
                Effect::WriteStatus(status::provider_failed_status("ProviderLost", &message)),
            ]
        } else {
            self.stage = Stage::NeedsCreate;
            self.restarts += 1;
            self.next_attempt = now.at;
            vec![Effect::event(
                Severity::Warning,
                "ProviderLost",
                "the provider no longer has this pod's object; starting it again".into(),
            )]
        }
    }

    /// The provider's status of the pod's object: `Created` and `Started` when a
    /// container is first seen running; a stopped object restarts after the crash-loop
    /// back-off (`BackOff`) or finishes, as `restartPolicy` says; the status to write
    /// when it changed (`now_rfc3339` stamps new conditions).
    ///
    /// Once the object runs, its probes start (those `probing` says something runs);
    /// until a container passed its readiness probe it is not ready.
    pub fn remote_status(
        &mut self,
        remote: &RemoteStatus,
        host_ip: &str,
        now: Now,
        now_rfc3339: &str,
        probing: impl Into<Probing>,
    ) -> Vec<Effect> {
        let probing = probing.into();
        let mut effects = Vec::new();
        self.last_remote = Some(remote.clone());
        let any = probing.node_reaches_pod || probing.provider_exec;
        if remote.phase == RemotePhase::Running && any && self.probes.is_none() {
            let probes = PodProbes::new(
                &self.pod,
                now.at,
                probing.node_reaches_pod,
                probing.provider_exec,
            );
            self.probes = (!probes.is_empty()).then_some(probes);
        } else if remote.phase != RemotePhase::Running {
            self.probes = None;
        }
        // The verdicts of the exec probes the provider runs (the status below shows
        // their readiness).
        if let Some(probes) = self.probes.as_mut() {
            let outcomes: Vec<ProbeEffect> = remote
                .containers
                .iter()
                .filter_map(|c| Some((c.name.as_str(), c.healthy?)))
                .flat_map(|(name, healthy)| probes.record_verdict(name, healthy))
                .collect();
            let (probe_effects, _) = self.probe_outcomes(outcomes);
            effects.extend(probe_effects);
        }
        if remote.phase != RemotePhase::Pending {
            self.fresh = false;
        }
        self.missing_syncs = 0;
        for container in &remote.containers {
            if matches!(container.state, RemoteContainerState::Running { .. })
                && self.started_reported.insert(container.name.clone())
            {
                for (reason, verb) in [("Created", "Created"), ("Started", "Started")] {
                    effects.push(Effect::event(
                        Severity::Normal,
                        reason,
                        format!("{verb} container {}", container.name),
                    ));
                }
            }
        }
        // The app exited while native sidecars run on: done (or due for a restart) as if
        // the object stopped; the sidecars are stopped with it.
        let app_exited = remote.phase == RemotePhase::Running
            && status::app_exited_beside_sidecars(&self.pod, remote);
        if app_exited {
            match status::after_stop(&self.pod, remote) {
                AfterStop::Finish(phase) => {
                    self.stage = Stage::Terminal;
                    self.terminal = Some(phase);
                    self.probes = None;
                    effects.push(Effect::Stop {
                        grace: self.grace_seconds(),
                        why: StopFor::GonePod,
                    });
                }
                AfterStop::Restart if self.killing.is_none() => {
                    self.killing = Some(KillFor::AppExited);
                    effects.push(Effect::Stop {
                        grace: self.grace_seconds(),
                        why: StopFor::Restart,
                    });
                }
                AfterStop::Restart => {}
            }
        } else if remote.phase == RemotePhase::Stopped {
            match status::after_stop(&self.pod, remote) {
                AfterStop::Restart => {
                    let wait = status::restart_backoff(self.restarts.max(0) as u32);
                    self.stage = Stage::NeedsCreate;
                    self.next_attempt = now.at + wait;
                    self.restarts += 1;
                    self.crash_loop = true;
                    let names: Vec<&str> =
                        remote.containers.iter().map(|c| c.name.as_str()).collect();
                    effects.push(Effect::event(
                        Severity::Warning,
                        "BackOff",
                        format!(
                            "Back-off {}s restarting failed container(s) {} in pod {}",
                            wait.as_secs(),
                            names.join(", "),
                            key(&self.pod)
                        ),
                    ));
                }
                AfterStop::Finish(phase) => {
                    self.stage = Stage::Terminal;
                    self.terminal = Some(phase);
                }
            }
        }
        effects.extend(self.status_if_changed(remote, host_ip, now_rfc3339));
        effects
    }

    /// The status of `remote` as the record sees it, when it differs from the last one.
    fn status_if_changed(
        &mut self,
        remote: &RemoteStatus,
        host_ip: &str,
        now_rfc3339: &str,
    ) -> Option<Effect> {
        let context = StatusContext {
            restarts: self.restarts,
            terminal: self.terminal,
            crash_loop: self.crash_loop,
            host_ip,
            now: now_rfc3339,
            probes: self.probes.as_ref(),
        };
        let new_status = status::pod_status(&self.pod, remote, &context);
        let unchanged = self
            .last_status
            .as_ref()
            .is_some_and(|old| same_status(old, &new_status));
        if unchanged {
            return None;
        }
        self.last_status = Some(new_status.clone());
        Some(Effect::SyncStatus(new_status))
    }

    /// A run of probe `index` finished: `Unhealthy` when it failed (the kubelet's
    /// wording), the status again when readiness changed, and a container that failed
    /// its liveness or startup probe killed (`Killing`, then its object stopped).
    pub fn probe_finished(
        &mut self,
        index: usize,
        run: &ProbeRun,
        host_ip: &str,
        now: Now,
        now_rfc3339: &str,
    ) -> Vec<Effect> {
        if !self.probing() {
            return Vec::new();
        }
        let Some(probes) = self.probes.as_mut() else {
            return Vec::new();
        };
        let outcomes = probes.record(index, run, now.at);
        let (mut effects, status_changed) = self.probe_outcomes(outcomes);
        if status_changed
            && self.killing.is_none()
            && let Some(remote) = self.last_remote.clone()
        {
            effects.extend(self.status_if_changed(&remote, host_ip, now_rfc3339));
        }
        effects
    }

    /// What probe results do: `Unhealthy` Events in the kubelet's wording, and a
    /// container that failed its liveness or startup probe killed (`Killing`, then its
    /// object stopped); also whether readiness changed.
    fn probe_outcomes(&mut self, outcomes: Vec<ProbeEffect>) -> (Vec<Effect>, bool) {
        let mut effects = Vec::new();
        let mut status_changed = false;
        for outcome in outcomes {
            match outcome {
                ProbeEffect::Unhealthy { kind, message, .. } => effects.push(Effect::event(
                    Severity::Warning,
                    "Unhealthy",
                    format!("{} probe failed: {message}", kind.title()),
                )),
                ProbeEffect::StatusChanged => status_changed = true,
                ProbeEffect::Kill { container, kind } if self.killing.is_none() => {
                    self.killing = Some(KillFor::Probe(kind));
                    effects.push(Effect::event(
                        Severity::Normal,
                        "Killing",
                        format!(
                            "Container {container} failed {} probe, will be restarted",
                            kind.title().to_lowercase()
                        ),
                    ));
                    effects.push(Effect::Stop {
                        grace: self.grace_seconds(),
                        why: StopFor::Restart,
                    });
                }
                ProbeEffect::Kill { .. } => {}
            }
        }
        (effects, status_changed)
    }

    /// The stop of a container killed for a failed probe finished: it is launched again
    /// after the crash-loop back-off (counted in restartCount), or, with `restartPolicy:
    /// Never`, the pod fails. Meanwhile its status says so at once (waiting in
    /// CrashLoopBackOff, not ready, the restart counted), so it leaves its Services'
    /// endpoints. A stop that failed leaves the pod as it was; the probe fails again and
    /// asks again.
    pub fn kill_finished(
        &mut self,
        stopped: bool,
        host_ip: &str,
        now: Now,
        now_rfc3339: &str,
    ) -> Vec<Effect> {
        let Some(kind) = self.killing.take() else {
            return Vec::new();
        };
        if !stopped || self.deleting {
            return Vec::new();
        }
        self.probes = None;
        self.fresh = false;
        let never = self.restart_policy_never();
        if never {
            self.stage = Stage::Terminal;
            self.terminal = Some(TerminalPhase::Failed);
            let message = match kind {
                KillFor::Probe(probe) => format!(
                    "a container failed its {} probe",
                    probe.title().to_lowercase()
                ),
                KillFor::AppExited => "the app's containers exited".to_owned(),
            };
            return vec![Effect::WriteStatus(status::provider_failed_status(
                "ProbeFailed",
                &message,
            ))];
        }
        let wait = status::restart_backoff(self.restarts.max(0) as u32);
        self.stage = Stage::NeedsCreate;
        self.restarts += 1;
        self.crash_loop = true;
        self.next_attempt = now.at + wait;
        self.last_remote
            .clone()
            .and_then(|remote| self.status_if_changed(&remote, host_ip, now_rfc3339))
            .into_iter()
            .collect()
    }

    /// Whether its `restartPolicy` is `Never`.
    fn restart_policy_never(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("Never")
    }

    /// Seconds its containers get to stop: the deletion's, else the spec's, else 30.
    fn grace_seconds(&self) -> i64 {
        self.pod
            .metadata
            .deletion_grace_period_seconds
            .or(self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
    }

    /// A synced status could not be written: it is written again on the next sync.
    pub fn status_unwritten(&mut self) {
        self.last_status = None;
    }

    /// The stop for its deletion finished: the Pod goes once its object stopped, else
    /// the stop is tried again after a back-off (nothing is left running).
    pub fn deletion_stop_finished(&mut self, stopped: bool, now: Now, jitter: f64) -> Vec<Effect> {
        if stopped {
            return vec![Effect::RemovePod];
        }
        self.deletion_failed(now, jitter);
        Vec::new()
    }

    /// A stop or removal of the pod being deleted failed: another try after a back-off
    /// (returned).
    pub fn deletion_failed(&mut self, now: Now, jitter: f64) -> Duration {
        self.delete_failures += 1;
        let wait = backoff(self.delete_failures, jitter);
        self.delete_due = Some(now.at + wait);
        wait
    }

    /// The Pod was removed (or was gone): no try is pending.
    pub fn removed(&mut self) {
        self.delete_due = None;
    }
}

/// Compares statuses ignoring condition timestamps, which change every sync.
pub fn same_status(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(conditions) = v.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in conditions {
                if let Some(c) = c.as_object_mut() {
                    c.remove("lastTransitionTime");
                }
            }
        }
        v
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests;
