//! Provider status → Kubernetes pod status, and what `restartPolicy` says to do when a
//! pod's object stops. Pure functions; the pod controller applies their results.

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::pods::probes::PodProbes;
use crate::provider::{
    RemoteContainer, RemoteContainerState, RemotePhase, RemoteStatus, is_sidecar,
};

/// What to do with a pod whose provider object stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterStop {
    /// Launch it again (restartPolicy Always, or OnFailure after a failure).
    Restart,
    /// Leave it finished with this phase.
    Finish(TerminalPhase),
}

/// A final pod phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TerminalPhase {
    /// Every container exited 0.
    Succeeded,
    /// Some container failed.
    Failed,
}

impl TerminalPhase {
    fn as_str(self) -> &'static str {
        match self {
            TerminalPhase::Succeeded => "Succeeded",
            TerminalPhase::Failed => "Failed",
        }
    }
}

/// The app's containers among `remote`'s (not the native sidecars, which are stopped
/// when the app is done).
fn app_containers<'a>(
    pod: &'a Pod,
    remote: &'a RemoteStatus,
) -> impl Iterator<Item = &'a RemoteContainer> + 'a {
    let sidecar = |name: &str| {
        pod.spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .any(|c| c.name == name && is_sidecar(c))
    };
    remote.containers.iter().filter(move |c| !sidecar(&c.name))
}

fn all_succeeded(pod: &Pod, remote: &RemoteStatus) -> bool {
    let mut app = app_containers(pod, remote).peekable();
    app.peek().is_some()
        && app.all(|c| {
            matches!(
                c.state,
                RemoteContainerState::Terminated { exit_code: 0, .. }
            )
        })
}

/// Whether the app's containers all exited while native sidecars still run: the pod is
/// done (or due for a restart) whatever its sidecars do.
pub fn app_exited_beside_sidecars(pod: &Pod, remote: &RemoteStatus) -> bool {
    let has_sidecars = remote.containers.len() > app_containers(pod, remote).count();
    let mut app = app_containers(pod, remote).peekable();
    has_sidecars
        && app.peek().is_some()
        && app.all(|c| matches!(c.state, RemoteContainerState::Terminated { .. }))
}

/// Applies `restartPolicy` to a stopped object (or one whose app exited beside its
/// sidecars).
pub fn after_stop(pod: &Pod, remote: &RemoteStatus) -> AfterStop {
    let policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let succeeded = all_succeeded(pod, remote);
    match policy {
        "Never" if succeeded => AfterStop::Finish(TerminalPhase::Succeeded),
        "Never" => AfterStop::Finish(TerminalPhase::Failed),
        "OnFailure" if succeeded => AfterStop::Finish(TerminalPhase::Succeeded),
        _ => AfterStop::Restart,
    }
}

/// CrashLoop-style delay before relaunch number `restarts` (10 s doubling, capped at 5 min,
/// as the kubelet does).
pub fn restart_backoff(restarts: u32) -> std::time::Duration {
    let seconds = 10u64.saturating_mul(1 << restarts.min(5));
    std::time::Duration::from_secs(seconds.min(300))
}

fn container_state(state: &RemoteContainerState) -> Value {
    match state {
        RemoteContainerState::Waiting { reason } => json!({"waiting": {"reason": reason}}),
        RemoteContainerState::Running { started_at } => {
            json!({"running": {"startedAt": started_at}})
        }
        RemoteContainerState::Terminated {
            exit_code,
            reason,
            started_at,
            finished_at,
        } => json!({
            "terminated": {"exitCode": exit_code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at}
        }),
    }
}

fn condition(kind: &str, ok: bool, now: &str) -> Value {
    json!({"type": kind, "status": if ok { "True" } else { "False" }, "lastTransitionTime": now})
}

/// Inputs of a status besides the provider's view.
#[derive(Clone, Debug)]
pub struct StatusContext<'a> {
    /// Times the pod's object was relaunched.
    pub restarts: i32,
    /// A phase already decided (terminal), overriding the provider's.
    pub terminal: Option<TerminalPhase>,
    /// Waiting in back-off before a relaunch.
    pub crash_loop: bool,
    /// The node's address, reported as hostIP.
    pub host_ip: &'a str,
    /// RFC 3339 "now" for condition times.
    pub now: &'a str,
    /// The pod's probes: a running container is started once its startup probe passed
    /// and ready once its readiness probe passed (`None`: running means both).
    pub probes: Option<&'a PodProbes>,
}

/// The pod `status` to write for `remote`.
pub fn pod_status(pod: &Pod, remote: &RemoteStatus, context: &StatusContext<'_>) -> Value {
    let spec_containers: Vec<(&str, &str)> = pod
        .spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .map(|c| (c.name.as_str(), c.image.as_deref().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    let mut statuses = Vec::new();
    for (name, image) in &spec_containers {
        let remote_container = remote.containers.iter().find(|c| c.name == *name);
        let remote_state = remote_container.map(|c| &c.state);
        let in_place = remote_container.map_or(0, |c| c.restarts);
        let state = if context.crash_loop {
            RemoteContainerState::Waiting {
                reason: "CrashLoopBackOff".into(),
            }
        } else {
            remote_state
                .cloned()
                .unwrap_or(RemoteContainerState::Waiting {
                    reason: "ContainerCreating".into(),
                })
        };
        let running = matches!(state, RemoteContainerState::Running { .. });
        let started = running && context.probes.is_none_or(|p| p.started(name));
        let ready = running && context.probes.is_none_or(|p| p.ready(name));
        statuses.push(json!({
            "name": name,
            "image": image,
            "imageID": "",
            "containerID": format!("spillway://{}/{}", remote.pod_uid, name),
            "ready": ready,
            "started": started,
            "restartCount": context.restarts.saturating_add(in_place),
            "state": container_state(&state),
        }));
    }
    // Native sidecars are init containers: their statuses go there, started and ready as
    // they run.
    let sidecar_statuses: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| is_sidecar(c))
        .map(|c| {
            let state = remote
                .containers
                .iter()
                .find(|r| r.name == c.name)
                .map(|r| r.state.clone())
                .unwrap_or(RemoteContainerState::Waiting {
                    reason: "PodInitializing".into(),
                });
            let running = matches!(state, RemoteContainerState::Running { .. });
            json!({
                "name": c.name,
                "image": c.image.as_deref().unwrap_or(""),
                "imageID": "",
                "containerID": format!("spillway://{}/{}", remote.pod_uid, c.name),
                "ready": running,
                "started": running,
                "restartCount": context.restarts,
                "state": container_state(&state),
            })
        })
        .collect();
    let phase = match (context.terminal, remote.phase) {
        (Some(terminal), _) => terminal.as_str(),
        (None, RemotePhase::Pending) => "Pending",
        (None, RemotePhase::Running) => "Running",
        // Stopped but about to be relaunched: Kubernetes keeps such pods Running.
        (None, RemotePhase::Stopped) if context.restarts > 0 || context.crash_loop => "Running",
        (None, RemotePhase::Stopped) => "Pending",
    };
    let all_ready = !statuses.is_empty() && statuses.iter().all(|s| s["ready"] == true);
    let initialized = remote.phase != RemotePhase::Pending || context.restarts > 0;
    let mut status = json!({
        "phase": phase,
        "hostIP": context.host_ip,
        "hostIPs": [{"ip": context.host_ip}],
        "conditions": [
            condition("PodScheduled", true, context.now),
            condition("Initialized", initialized, context.now),
            condition("ContainersReady", all_ready, context.now),
            condition("Ready", all_ready && context.terminal.is_none(), context.now),
        ],
        "containerStatuses": statuses,
    });
    if !sidecar_statuses.is_empty() {
        status["initContainerStatuses"] = json!(sidecar_statuses);
    }
    if let Some(ip) = &remote.pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    if let Some(started) = &remote.started_at {
        status["startTime"] = json!(started);
    }
    if let (Some(TerminalPhase::Failed), Some(reason)) = (context.terminal, &remote.stopped_reason)
    {
        status["reason"] = json!("ProviderStopped");
        status["message"] = json!(reason);
    }
    status
}

/// Status for a pod the node gave up on after repeated provider failures.
pub fn provider_failed_status(reason: &str, message: &str) -> Value {
    json!({"phase": "Failed", "reason": reason, "message": message})
}

/// The status of a pod the node keeps Pending for good (a DaemonSet's): scheduled, not
/// Ready, with the reason on the pod and its Ready condition.
pub fn parked_status(reason: &str, message: &str) -> Value {
    json!({
        "phase": "Pending",
        "reason": reason,
        "message": message,
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "False", "reason": reason, "message": message}
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::RemoteContainer;

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {"restartPolicy": policy, "containers": [{"name": "a", "image": "img"}, {"name": "b", "image": "img"}]}
        }))
        .unwrap()
    }

    fn stopped(codes: &[i32]) -> RemoteStatus {
        RemoteStatus {
            pod_uid: "u".into(),
            phase: RemotePhase::Stopped,
            containers: codes
                .iter()
                .zip(["a", "b"])
                .map(|(code, name)| RemoteContainer {
                    name: name.into(),
                    restarts: 0,
                    healthy: None,
                    state: RemoteContainerState::Terminated {
                        exit_code: *code,
                        reason: if *code == 0 {
                            "Completed".into()
                        } else {
                            "Error".into()
                        },
                        started_at: None,
                        finished_at: None,
                    },
                })
                .collect(),
            pod_ip: Some("10.0.0.7".into()),
            started_at: None,
            stopped_reason: Some("Essential container in task exited".into()),
        }
    }

    #[test]
    fn restart_policy_table() {
        let cases = [
            ("Always", vec![0, 0], AfterStop::Restart),
            ("Always", vec![1, 0], AfterStop::Restart),
            (
                "OnFailure",
                vec![0, 0],
                AfterStop::Finish(TerminalPhase::Succeeded),
            ),
            ("OnFailure", vec![0, 2], AfterStop::Restart),
            (
                "Never",
                vec![0, 0],
                AfterStop::Finish(TerminalPhase::Succeeded),
            ),
            (
                "Never",
                vec![137, 0],
                AfterStop::Finish(TerminalPhase::Failed),
            ),
        ];
        for (policy, codes, expected) in cases {
            assert_eq!(
                after_stop(&pod(policy), &stopped(&codes)),
                expected,
                "{policy} {codes:?}"
            );
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(restart_backoff(0).as_secs(), 10);
        assert_eq!(restart_backoff(1).as_secs(), 20);
        assert_eq!(restart_backoff(4).as_secs(), 160);
        assert_eq!(restart_backoff(9).as_secs(), 300);
    }

    #[test]
    fn running_status_reports_ip_and_ready() {
        let mut remote = stopped(&[0, 0]);
        remote.phase = RemotePhase::Running;
        remote.containers = vec![
            RemoteContainer {
                name: "a".into(),
                restarts: 0,
                healthy: None,
                state: RemoteContainerState::Running {
                    started_at: Some("2026-11-28T10:00:00Z".into()),
                },
            },
            RemoteContainer {
                name: "b".into(),
                // Restarted in place by the provider (ACI), on top of the node's relaunch.
                restarts: 3,
                healthy: None,
                state: RemoteContainerState::Running { started_at: None },
            },
        ];
        let context = StatusContext {
            restarts: 1,
            terminal: None,
            crash_loop: false,
            host_ip: "127.0.0.1",
            now: "2026-11-28T10:00:01Z",
            probes: None,
        };
        let status = pod_status(&pod("Always"), &remote, &context);
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["podIP"], "10.0.0.7");
        assert_eq!(status["containerStatuses"][0]["ready"], true);
        assert_eq!(status["containerStatuses"][0]["restartCount"], 1);
        assert_eq!(status["containerStatuses"][1]["restartCount"], 4);
        assert_eq!(status["conditions"][3]["status"], "True");
    }

    #[test]
    fn failed_status_keeps_exit_codes() {
        let context = StatusContext {
            restarts: 0,
            terminal: Some(TerminalPhase::Failed),
            crash_loop: false,
            host_ip: "127.0.0.1",
            now: "t",
            probes: None,
        };
        let status = pod_status(&pod("Never"), &stopped(&[3, 0]), &context);
        assert_eq!(status["phase"], "Failed");
        assert_eq!(
            status["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            3
        );
        assert_eq!(status["conditions"][3]["status"], "False");
    }
}
