//! Table-style tests of the pod lifecycle rules, one per rule, with injected time and
//! jitter (synchronous: no provider, no apiserver).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::*;
use crate::env_refs::RefKind;
use crate::pods::probes::ProbeRun;
use crate::provider::RemoteContainer;

const RULES: Rules<'static> = Rules {
    max_permanent_failures: 3,
    lost_after_syncs: 3,
    provider: "mock",
};

/// Jitter at its top: back-offs at (almost) their full length.
const FULL: f64 = 1.0;

/// The clock the tests run on: `t(s)` is `s` seconds after a fixed start.
struct Clock(Instant);

impl Clock {
    fn new() -> Self {
        Self(Instant::now())
    }

    fn t(&self, seconds: u64) -> Now {
        Now {
            at: self.0 + Duration::from_secs(seconds),
            wall: jiff::Timestamp::from_second(1_767_225_600 + seconds as i64).unwrap(),
        }
    }
}

fn pod(restart_policy: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
        "spec": {"restartPolicy": restart_policy, "terminationGracePeriodSeconds": 7,
            "containers": [{"name": "app", "image": "nginx:1.27"}, {"name": "side", "image": "busybox"}]}
    }))
    .unwrap()
}

fn new_record(restart_policy: &str, clock: &Clock) -> PodRecord {
    PodRecord::new(pod(restart_policy), clock.t(0).at)
}

fn launched(restart_policy: &str, clock: &Clock) -> PodRecord {
    let mut record = new_record(restart_policy, clock);
    record.created(&Ok(()), &[], RULES, clock.t(0), FULL, false);
    record
}

fn missing(kind: RefKind, name: &str, optional: bool) -> ObjectRef {
    ObjectRef {
        kind,
        name: name.into(),
        key: None,
        optional,
    }
}

fn remote(phase: RemotePhase, states: &[(&str, RemoteContainerState)]) -> RemoteStatus {
    RemoteStatus {
        pod_uid: "u1".into(),
        phase,
        containers: states
            .iter()
            .map(|(name, state)| RemoteContainer {
                name: (*name).into(),
                state: state.clone(),
                restarts: 0,
                healthy: None,
            })
            .collect(),
        pod_ip: Some("10.0.0.9".into()),
        started_at: Some("2026-01-01T00:00:00Z".into()),
        stopped_reason: None,
    }
}

fn running() -> RemoteContainerState {
    RemoteContainerState::Running {
        started_at: Some("2026-01-01T00:00:01Z".into()),
    }
}

fn exited(code: i32) -> RemoteContainerState {
    RemoteContainerState::Terminated {
        exit_code: code,
        reason: if code == 0 { "Completed" } else { "Error" }.into(),
        started_at: Some("2026-01-01T00:00:01Z".into()),
        finished_at: Some("2026-01-01T00:00:09Z".into()),
    }
}

/// The Event reasons among `effects`, in order.
fn reasons(effects: &[Effect]) -> Vec<&'static str> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

fn written_status(effects: &[Effect]) -> Option<&Value> {
    effects.iter().find_map(|e| match e {
        Effect::WriteStatus(v) | Effect::SyncStatus(v) => Some(v),
        _ => None,
    })
}

#[test]
fn a_created_pod_is_launched_watched_closely_and_pulls_each_image() {
    let clock = Clock::new();
    let mut record = new_record("Always", &clock);
    let effects = record.created(&Ok(()), &[], RULES, clock.t(0), FULL, false);
    assert_eq!(record.stage, Stage::Launched);
    assert!(record.fresh, "polled until it runs");
    assert_eq!(reasons(&effects), ["Pulling", "Pulling"]);
    assert!(
        matches!(&effects[0], Effect::Event { note, .. } if note == "Pulling image \"nginx:1.27\" (mock)")
    );
}

#[test]
fn a_create_held_for_a_missing_required_secret_says_so_when_it_changes_and_every_tenth_time() {
    let clock = Clock::new();
    let mut record = new_record("Always", &clock);
    let secret = || vec![missing(RefKind::Secret, "token", false)];
    // (hold number, what is missing, Events expected)
    let table: Vec<(u32, Vec<ObjectRef>, usize)> = vec![
        (1, secret(), 1),                                             // first: said
        (2, secret(), 0),                                             // unchanged: quiet
        (3, vec![], 0), // could not look: nothing new to say
        (4, vec![missing(RefKind::ConfigMap, "settings", false)], 1), // changed
        (5, vec![missing(RefKind::ConfigMap, "settings", true)], 0), // only optional ones
    ];
    for (hold, refs, events) in table {
        let effects = record.held_back(refs, clock.t(u64::from(hold)), FULL, false);
        assert_eq!(reasons(&effects).len(), events, "hold {hold}");
        assert_eq!(record.stage, Stage::NeedsCreate, "hold {hold}");
        assert_eq!(record.held, hold);
    }
    // The wait between looks is capped at 15 s whatever the count.
    record.held = 20;
    record.held_back(secret(), clock.t(100), FULL, false);
    assert_eq!(
        record.next_attempt,
        clock.t(100).at + HELD_RETRY_MAX,
        "capped wait"
    );
    // Every tenth hold repeats the Event although nothing changed.
    record.held = 29;
    record.held_for = secret();
    let effects = record.held_back(secret(), clock.t(101), FULL, false);
    assert_eq!(reasons(&effects), ["MandatorySecretNotFound"]);
}

#[test]
fn missing_optional_references_are_reported_once_and_do_not_hold_the_create() {
    let clock = Clock::new();
    let mut record = new_record("Always", &clock);
    let optional = [missing(RefKind::ConfigMap, "extra", true)];
    let first = record.created(
        &Err(ProviderError::Transient("blip".into())),
        &optional,
        RULES,
        clock.t(0),
        FULL,
        false,
    );
    assert_eq!(reasons(&first)[0], "OptionalConfigMapNotFound");
    let second = record.created(&Ok(()), &optional, RULES, clock.t(5), FULL, false);
    assert!(!reasons(&second).contains(&"OptionalConfigMapNotFound"));
    assert_eq!(record.stage, Stage::Launched);
}

#[test]
fn retryable_refusals_back_off_and_are_said_on_the_first_and_every_fifth() {
    let clock = Clock::new();
    let mut record = new_record("Always", &clock);
    let unavailable = Err(ProviderError::Unavailable("no capacity".into()));
    let mut said = Vec::new();
    for attempt in 1..=10u64 {
        let effects = record.created(&unavailable, &[], RULES, clock.t(attempt), FULL, false);
        assert_eq!(record.stage, Stage::NeedsCreate);
        assert!(record.next_attempt > clock.t(attempt).at, "waits");
        if effects
            .iter()
            .any(|e| matches!(e, Effect::WriteRefusal { .. }))
        {
            said.push(attempt);
        }
    }
    assert_eq!(said, [1, 5, 10]);
    // The condition's time is when the run of refusals began.
    record.retryable_failures = 14;
    let effects = record.created(&unavailable, &[], RULES, clock.t(61), FULL, false);
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::WriteRefusal { reason: "Unavailable", since, .. } if *since == clock.t(1).wall
    )));
    // Throttling is named as such.
    let mut fresh = new_record("Always", &clock);
    let throttled = fresh.created(
        &Err(ProviderError::Throttled("slow down".into())),
        &[],
        RULES,
        clock.t(0),
        FULL,
        false,
    );
    assert_eq!(reasons(&throttled), ["ProviderThrottled"]);
}

#[test]
fn a_denied_identity_or_role_never_fails_the_pod_and_is_named_as_such() {
    let clock = Clock::new();
    let mut record = new_record("Always", &clock);
    let denied = Err(ProviderError::Denied(
        "AccessDeniedException: not authorized to perform ecs:RunTask".into(),
    ));
    for attempt in 1..=6u64 {
        let effects = record.created(&denied, &[], RULES, clock.t(attempt), FULL, false);
        assert_eq!(record.stage, Stage::NeedsCreate, "attempt {attempt}");
        assert_eq!(record.terminal, None);
        if attempt == 1 {
            assert!(effects.iter().any(|e| matches!(
                e,
                Effect::WriteRefusal {
                    reason: "Denied",
                    ..
                }
            )));
        }
    }
    assert_eq!(record.permanent_failures, 0);
}

#[test]
fn a_success_after_refusals_clears_the_refusal() {
    let clock = Clock::new();
    let mut record = new_record("Always", &clock);
    let refused = Err(ProviderError::Unavailable("no capacity".into()));
    record.created(&refused, &[], RULES, clock.t(0), FULL, false);
    assert!(record.refused_since.is_some());
    record.created(&Ok(()), &[], RULES, clock.t(3), FULL, false);
    assert_eq!(record.retryable_failures, 0);
    assert!(record.refused_since.is_none());
}

#[test]
fn three_permanent_refusals_fail_the_pod() {
    let clock = Clock::new();
    let mut record = new_record("Always", &clock);
    let invalid = Err(ProviderError::Invalid("bad image".into()));
    // (attempt, Event expected, stage after)
    let table = [
        (1, "ProviderCreateFailed", Stage::NeedsCreate),
        (2, "ProviderCreateFailed", Stage::NeedsCreate),
        (3, "ProviderFailed", Stage::Terminal),
    ];
    for (attempt, event, stage) in table {
        let effects = record.created(&invalid, &[], RULES, clock.t(attempt), FULL, false);
        assert_eq!(reasons(&effects), [event], "attempt {attempt}");
        assert_eq!(record.stage, stage, "attempt {attempt}");
        if stage == Stage::Terminal {
            let status = written_status(&effects).expect("a Failed status");
            assert_eq!(status["phase"], "Failed");
            assert_eq!(status["reason"], "ProviderFailed");
        }
    }
    assert_eq!(record.terminal, Some(TerminalPhase::Failed));
}

#[test]
fn a_create_answered_after_the_deletion_began_stops_the_object() {
    let clock = Clock::new();
    let mut record = new_record("Always", &clock);
    record.stage = Stage::Creating;
    record.deletion_seen(clock.t(0).at);
    let effects = record.created(&Ok(()), &[], RULES, clock.t(1), FULL, false);
    assert_eq!(record.stage, Stage::Launched);
    assert_eq!(reasons(&effects), ["Killing", "Killing"]);
    assert_eq!(
        effects.last(),
        Some(&Effect::Stop {
            grace: 7,
            why: StopFor::DeletedPod
        })
    );
    // With a stop in flight already, no second round of Killing.
    let mut again = new_record("Always", &clock);
    again.deletion_seen(clock.t(0).at);
    let effects = again.held_back(vec![], clock.t(1), FULL, true);
    assert!(reasons(&effects).is_empty());
    assert!(matches!(effects.last(), Some(Effect::Stop { .. })));
}

#[test]
fn the_deletion_grace_period_wins_over_the_specs() {
    let clock = Clock::new();
    let mut record = launched("Always", &clock);
    record.pod.metadata.deletion_grace_period_seconds = Some(2);
    record.deletion_seen(clock.t(0).at);
    assert!(record.deletion_due(clock.t(0).at));
    let effects = record.stop_for_deletion(false);
    assert_eq!(
        effects.last(),
        Some(&Effect::Stop {
            grace: 2,
            why: StopFor::DeletedPod
        })
    );
}

#[test]
fn the_pod_is_removed_only_after_its_object_stopped() {
    let clock = Clock::new();
    let mut record = launched("Always", &clock);
    record.deletion_seen(clock.t(0).at);
    // (stopped?, effects expected, retry due after)
    let failed = record.deletion_stop_finished(false, clock.t(1), FULL);
    assert!(failed.is_empty(), "the Pod stays while its object may run");
    assert_eq!(record.delete_failures, 1);
    let due = record.delete_due.expect("another try is due");
    assert!(due > clock.t(1).at);
    assert!(!record.deletion_due(clock.t(1).at));
    assert!(record.deletion_due(due));
    // The second round sends no Killing again.
    assert!(reasons(&record.stop_for_deletion(false)).is_empty());
    let stopped = record.deletion_stop_finished(true, clock.t(5), FULL);
    assert_eq!(stopped, [Effect::RemovePod]);
    record.removed();
    assert!(!record.deletion_due(clock.t(1000).at));
}

#[test]
fn a_pod_missing_from_the_provider_is_lost_after_three_syncs_and_restarted_or_failed() {
    let clock = Clock::new();
    // (restartPolicy, stage after the third sync, Event, status written)
    let table = [
        ("Always", Stage::NeedsCreate, "ProviderLost", false),
        ("OnFailure", Stage::NeedsCreate, "ProviderLost", false),
        ("Never", Stage::Terminal, "ProviderLost", true),
    ];
    for (policy, stage, event, status) in table {
        let mut record = launched(policy, &clock);
        for sync in 1..=2 {
            assert!(
                record
                    .missing_from_provider(RULES, clock.t(sync))
                    .is_empty(),
                "{policy}: sync {sync} is too early"
            );
        }
        let effects = record.missing_from_provider(RULES, clock.t(3));
        assert_eq!(record.stage, stage, "{policy}");
        assert_eq!(reasons(&effects), [event], "{policy}");
        assert_eq!(written_status(&effects).is_some(), status, "{policy}");
        assert!(!record.fresh);
        if stage == Stage::NeedsCreate {
            assert_eq!(record.restarts, 1, "{policy}: counts as a restart");
            assert!(
                record.create_due(clock.t(3).at),
                "{policy}: relaunched at once"
            );
        }
    }
}

#[test]
fn a_status_that_finds_the_object_again_resets_the_missing_count() {
    let clock = Clock::new();
    let mut record = launched("Never", &clock);
    record.missing_from_provider(RULES, clock.t(1));
    record.missing_from_provider(RULES, clock.t(2));
    record.remote_status(
        &remote(RemotePhase::Running, &[("app", running())]),
        "10.1.1.1",
        clock.t(3),
        "2026-01-01T00:00:03Z",
        false,
    );
    assert!(record.missing_from_provider(RULES, clock.t(4)).is_empty());
    assert_eq!(record.stage, Stage::Launched);
}

#[test]
fn containers_first_seen_running_are_created_and_started_once() {
    let clock = Clock::new();
    let mut record = launched("Always", &clock);
    let status = remote(
        RemotePhase::Running,
        &[("app", running()), ("side", running())],
    );
    let first = record.remote_status(&status, "10.1.1.1", clock.t(1), "t1", false);
    assert_eq!(
        reasons(&first),
        ["Created", "Started", "Created", "Started"]
    );
    assert!(!record.fresh, "running: no longer polled closely");
    let second = record.remote_status(&status, "10.1.1.1", clock.t(2), "t2", false);
    assert!(reasons(&second).is_empty());
}

#[test]
fn a_status_is_written_only_when_it_changed() {
    let clock = Clock::new();
    let mut record = launched("Always", &clock);
    let status = remote(RemotePhase::Running, &[("app", running())]);
    let first = record.remote_status(
        &status,
        "10.1.1.1",
        clock.t(1),
        "2026-01-01T00:00:01Z",
        false,
    );
    assert!(written_status(&first).is_some());
    // Only the conditions' times differ: nothing to write.
    let same = record.remote_status(
        &status,
        "10.1.1.1",
        clock.t(2),
        "2026-01-01T00:00:02Z",
        false,
    );
    assert!(written_status(&same).is_none());
    // A write that failed is made again at the next sync.
    record.status_unwritten();
    let again = record.remote_status(
        &status,
        "10.1.1.1",
        clock.t(3),
        "2026-01-01T00:00:03Z",
        false,
    );
    assert!(written_status(&again).is_some());
}

#[test]
fn a_stopped_object_restarts_with_the_crash_loop_back_off_or_finishes_per_restart_policy() {
    let clock = Clock::new();
    // (restartPolicy, exit code, restarted?, final phase)
    let table = [
        ("Always", 0, true, None),
        ("Always", 1, true, None),
        ("OnFailure", 1, true, None),
        ("OnFailure", 0, false, Some(TerminalPhase::Succeeded)),
        ("Never", 0, false, Some(TerminalPhase::Succeeded)),
        ("Never", 2, false, Some(TerminalPhase::Failed)),
    ];
    for (policy, code, restarted, phase) in table {
        let mut record = launched(policy, &clock);
        let stopped = remote(
            RemotePhase::Stopped,
            &[("app", exited(code)), ("side", exited(code))],
        );
        let effects = record.remote_status(&stopped, "10.1.1.1", clock.t(10), "t", false);
        assert_eq!(
            reasons(&effects).contains(&"BackOff"),
            restarted,
            "{policy} {code}"
        );
        assert_eq!(record.terminal, phase, "{policy} {code}");
        if restarted {
            assert_eq!(record.stage, Stage::NeedsCreate);
            assert_eq!(record.restarts, 1);
            assert!(record.crash_loop);
            // The first relaunch waits 10 s, as a kubelet's back-off does.
            assert_eq!(record.next_attempt, clock.t(20).at, "{policy} {code}");
            assert!(!record.create_due(clock.t(19).at));
        } else {
            assert_eq!(record.stage, Stage::Terminal);
        }
    }
}

#[test]
fn the_crash_loop_back_off_doubles_to_five_minutes() {
    let clock = Clock::new();
    let mut record = launched("Always", &clock);
    let stopped = remote(RemotePhase::Stopped, &[("app", exited(1))]);
    let mut waits = Vec::new();
    for _ in 0..7 {
        let start = clock.t(1000);
        record.remote_status(&stopped, "10.1.1.1", start, "t", false);
        waits.push((record.next_attempt - start.at).as_secs());
        record.stage = Stage::Launched;
    }
    assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
    assert_eq!(record.restarts, 7);
}

#[test]
fn back_offs_grow_cap_and_follow_the_jitter() {
    // (failures, jitter, wait)
    let table = [
        (1, 1.0, Duration::from_secs(1)),
        (2, 1.0, Duration::from_secs(2)),
        (2, 0.5, Duration::from_secs(1)),
        (8, 1.0, Duration::from_secs(120)),
        (30, 1.0, Duration::from_secs(120)),
    ];
    for (failures, jitter, wait) in table {
        assert_eq!(backoff(failures, jitter), wait, "{failures} × {jitter}");
    }
}

#[test]
fn what_is_due_follows_the_stage_deletion_and_admission() {
    let clock = Clock::new();
    let mut record = new_record("Always", &clock);
    assert!(record.create_due(clock.t(0).at));
    record.awaiting_admission = true;
    assert!(!record.create_due(clock.t(0).at), "admission first");
    record.awaiting_admission = false;
    record.next_attempt = clock.t(5).at;
    assert!(!record.create_due(clock.t(4).at));
    assert!(record.create_due(clock.t(5).at));
    record.created(&Ok(()), &[], RULES, clock.t(5), FULL, false);
    assert!(record.wants_status(true), "fresh: in the quick polls");
    assert!(record.wants_status(false));
    record.deletion_seen(clock.t(6).at);
    assert!(
        !record.wants_status(false),
        "being deleted: no status pulls"
    );
    assert!(!record.create_due(clock.t(6).at));
}

#[test]
fn a_finished_pod_seen_again_stays_finished() {
    let clock = Clock::new();
    let mut pod = pod("Never");
    pod.status = Some(
        serde_json::from_value(json!({"phase": "Succeeded",
            "containerStatuses": [{"name": "app", "image": "x", "imageID": "", "ready": false, "restartCount": 4}]}))
        .unwrap(),
    );
    let record = PodRecord::new(pod, clock.t(0).at);
    assert_eq!(record.stage, Stage::Terminal);
    assert_eq!(record.restarts, 4, "the restart count carries over");
    assert!(!record.create_due(clock.t(0).at));
}

fn probed_pod(restart_policy: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
        "spec": {"restartPolicy": restart_policy, "terminationGracePeriodSeconds": 7,
            "containers": [{"name": "app", "image": "nginx:1.27",
                "readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 1},
                "livenessProbe": {"httpGet": {"port": 80}, "periodSeconds": 1, "failureThreshold": 2}}]}
    }))
    .unwrap()
}

fn probed_record(restart_policy: &str, clock: &Clock) -> PodRecord {
    let mut record = PodRecord::new(probed_pod(restart_policy), clock.t(0).at);
    record.created(&Ok(()), &[], RULES, clock.t(0), FULL, false);
    record
}

/// Runs every probe due at `at` with `outcome(kind)` and returns the effects.
fn run_probes(
    record: &mut PodRecord,
    clock: &Clock,
    at: u64,
    outcome: impl Fn(crate::pods::probes::ProbeKind) -> bool,
) -> Vec<Effect> {
    let due = record
        .probes
        .as_mut()
        .map(|p| p.take_due(clock.t(at).at))
        .unwrap_or_default();
    let mut effects = Vec::new();
    for (index, spec) in due {
        let run = ProbeRun {
            ok: outcome(spec.kind),
            message: "HTTP probe failed with statuscode: 500".into(),
        };
        effects.extend(record.probe_finished(index, &run, "10.1.1.1", clock.t(at), "t"));
    }
    effects
}

fn container_ready(effects: &[Effect]) -> Option<bool> {
    written_status(effects).and_then(|s| s["containerStatuses"][0]["ready"].as_bool())
}

#[test]
fn a_container_with_a_readiness_probe_is_ready_only_once_it_passed() {
    let clock = Clock::new();
    let mut record = probed_record("Always", &clock);
    let status = remote(RemotePhase::Running, &[("app", running())]);
    // Running, but not ready: its probes start now.
    let first = record.remote_status(&status, "10.1.1.1", clock.t(1), "t", true);
    assert_eq!(container_ready(&first), Some(false));
    assert!(record.probes.is_some());
    // Failing: an Unhealthy Event with the kubelet's wording, still not ready.
    let failing = run_probes(&mut record, &clock, 1, |kind| {
        kind != crate::pods::probes::ProbeKind::Readiness
    });
    assert!(failing.iter().any(|e| matches!(e,
        Effect::Event { reason: "Unhealthy", note, .. }
            if note == "Readiness probe failed: HTTP probe failed with statuscode: 500")));
    assert_eq!(container_ready(&failing), None, "nothing changed to write");
    // Passing: the status says ready at once, without waiting for a sync.
    let passing = run_probes(&mut record, &clock, 2, |_| true);
    assert_eq!(container_ready(&passing), Some(true));
    assert_eq!(
        written_status(&passing).unwrap()["conditions"][3]["status"],
        "True"
    );
    // Without a reachable IP no probe runs and running means ready, as before.
    let mut unprobed = probed_record("Always", &clock);
    let effects = unprobed.remote_status(&status, "10.1.1.1", clock.t(1), "t", false);
    assert_eq!(container_ready(&effects), Some(true));
    assert!(unprobed.probes.is_none());
}

#[test]
fn a_failed_liveness_probe_kills_the_pods_object_and_relaunches_it_counting_a_restart() {
    let clock = Clock::new();
    let mut record = probed_record("Always", &clock);
    let status = remote(RemotePhase::Running, &[("app", running())]);
    record.remote_status(&status, "10.1.1.1", clock.t(1), "t", true);
    let liveness_fails = |kind| kind != crate::pods::probes::ProbeKind::Liveness;
    let first = run_probes(&mut record, &clock, 1, liveness_fails);
    assert!(!first.iter().any(|e| matches!(e, Effect::Stop { .. })));
    let second = run_probes(&mut record, &clock, 2, liveness_fails);
    assert!(second.iter().any(|e| matches!(e,
        Effect::Event { reason: "Killing", note, .. }
            if note == "Container app failed liveness probe, will be restarted")));
    assert!(second.contains(&Effect::Stop {
        grace: 7,
        why: StopFor::Restart
    }));
    assert!(
        !record.wants_status(false),
        "no status pulls while it is killed"
    );
    assert!(run_probes(&mut record, &clock, 3, liveness_fails).is_empty());
    let killed = record.kill_finished(true, "10.1.1.1", clock.t(4), "t");
    // Out of its Services' endpoints at once, the restart counted.
    assert_eq!(container_ready(&killed), Some(false));
    assert_eq!(
        written_status(&killed).unwrap()["containerStatuses"][0]["restartCount"],
        1
    );
    assert_eq!(record.stage, Stage::NeedsCreate);
    assert_eq!(record.restarts, 1, "counted in restartCount");
    assert!(record.crash_loop);
    assert!(record.probes.is_none());
    // With restartPolicy Never the pod fails instead.
    let mut never = probed_record("Never", &clock);
    never.remote_status(&status, "10.1.1.1", clock.t(1), "t", true);
    run_probes(&mut never, &clock, 1, liveness_fails);
    run_probes(&mut never, &clock, 2, liveness_fails);
    let effects = never.kill_finished(true, "10.1.1.1", clock.t(4), "t");
    assert_eq!(never.stage, Stage::Terminal);
    assert_eq!(written_status(&effects).unwrap()["reason"], "ProbeFailed");
}

fn with_sidecar(restart_policy: &str) -> PodRecord {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "job", "namespace": "ns", "uid": "u1"},
        "spec": {"restartPolicy": restart_policy, "terminationGracePeriodSeconds": 7,
            "initContainers": [{"name": "proxy", "image": "envoy", "restartPolicy": "Always"}],
            "containers": [{"name": "app", "image": "batch"}]}
    }))
    .unwrap();
    let mut record = PodRecord::new(pod, Instant::now());
    record.created(&Ok(()), &[], RULES, Now::current(), FULL, false);
    record
}

#[test]
fn a_native_sidecar_does_not_keep_a_finished_pod_alive() {
    let clock = Clock::new();
    // (restartPolicy, app exit code, final phase, what stops the object)
    let table = [
        ("Never", 0, Some(TerminalPhase::Succeeded), StopFor::GonePod),
        ("Never", 3, Some(TerminalPhase::Failed), StopFor::GonePod),
        (
            "OnFailure",
            0,
            Some(TerminalPhase::Succeeded),
            StopFor::GonePod,
        ),
        ("OnFailure", 3, None, StopFor::Restart),
        ("Always", 0, None, StopFor::Restart),
    ];
    for (policy, code, phase, stop) in table {
        let mut record = with_sidecar(policy);
        let both_run = remote(
            RemotePhase::Running,
            &[("app", running()), ("proxy", running())],
        );
        let first = record.remote_status(&both_run, "10.1.1.1", clock.t(1), "t", false);
        let status = written_status(&first).unwrap();
        assert_eq!(status["initContainerStatuses"][0]["name"], "proxy");
        assert_eq!(status["initContainerStatuses"][0]["ready"], true);
        assert_eq!(status["containerStatuses"].as_array().unwrap().len(), 1);
        // The app exits; the sidecar runs on.
        let exited = remote(
            RemotePhase::Running,
            &[("app", exited(code)), ("proxy", running())],
        );
        let effects = record.remote_status(&exited, "10.1.1.1", clock.t(9), "t", false);
        assert_eq!(record.terminal, phase, "{policy} {code}");
        assert!(
            effects.contains(&Effect::Stop {
                grace: 7,
                why: stop
            }),
            "{policy} {code}: {effects:?}"
        );
        if stop == StopFor::Restart {
            assert_eq!(record.killing, Some(KillFor::AppExited));
            record.kill_finished(true, "10.1.1.1", clock.t(10), "t");
            assert_eq!(record.stage, Stage::NeedsCreate, "{policy} {code}");
            assert_eq!(record.restarts, 1);
        } else {
            assert_eq!(record.stage, Stage::Terminal);
            assert_eq!(
                written_status(&effects).unwrap()["phase"],
                if code == 0 { "Succeeded" } else { "Failed" }
            );
        }
    }
}

#[test]
fn the_providers_health_check_verdict_drives_exec_probes() {
    let clock = Clock::new();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
        "spec": {"terminationGracePeriodSeconds": 7, "containers": [{"name": "app", "image": "x",
            "livenessProbe": {"exec": {"command": ["true"]}}}]}
    }))
    .unwrap();
    let mut record = PodRecord::new(pod, clock.t(0).at);
    record.created(&Ok(()), &[], RULES, clock.t(0), FULL, false);
    let verdict = |healthy: Option<bool>| {
        let mut status = remote(RemotePhase::Running, &[("app", running())]);
        status.containers[0].healthy = healthy;
        status
    };
    let fargate = Probing {
        node_reaches_pod: true,
        provider_exec: true,
    };
    let first = record.remote_status(&verdict(Some(true)), "10.1.1.1", clock.t(1), "t", fargate);
    assert_eq!(container_ready(&first), Some(true));
    // UNHEALTHY: the kubelet's Events and the object stopped to be launched again.
    let sick = record.remote_status(&verdict(Some(false)), "10.1.1.1", clock.t(2), "t", fargate);
    assert!(sick.iter().any(|e| matches!(e,
        Effect::Event { reason: "Unhealthy", note, .. } if note.starts_with("Liveness probe failed"))));
    assert!(sick.contains(&Effect::Stop {
        grace: 7,
        why: StopFor::Restart
    }));
    assert_eq!(
        record.killing,
        Some(KillFor::Probe(crate::pods::probes::ProbeKind::Liveness))
    );
}
