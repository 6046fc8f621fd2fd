//! What a container group's instance view says, in the provider's terms: the group's
//! phase, each container's state with exit code and start/finish times, the group's IP;
//! and ACI's timestamped log text as log lines.

use serde::Deserialize;

use super::arm_types::ContainerGroup;
use crate::provider::{LogLine, RemoteContainer, RemoteContainerState, RemotePhase, RemoteStatus};

/// `ContainerPropertiesInstanceView`, as far as status needs it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerView {
    #[serde(default)]
    current_state: Option<ContainerState>,
    #[serde(default)]
    restart_count: Option<i32>,
}

/// `ContainerState`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerState {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    start_time: Option<String>,
    #[serde(default)]
    exit_code: Option<i32>,
    #[serde(default)]
    finish_time: Option<String>,
    #[serde(default)]
    detail_status: Option<String>,
}

/// The group's own instance view: `state` is `Pending`, `Running`, `Succeeded`, `Failed`
/// or `Stopped`.
#[derive(Debug, Default, Deserialize)]
struct GroupView {
    #[serde(default)]
    state: Option<String>,
}

/// How often ACI restarted the container in place (the group's restart policy).
fn container_restarts(view: Option<&serde_json::Value>) -> i32 {
    view.and_then(|v| serde_json::from_value::<ContainerView>(v.clone()).ok())
        .and_then(|v| v.restart_count)
        .unwrap_or(0)
        .max(0)
}

fn container_state(view: Option<&serde_json::Value>) -> RemoteContainerState {
    let view: ContainerView = view
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let Some(state) = view.current_state else {
        return RemoteContainerState::Waiting {
            reason: "ContainerCreating".into(),
        };
    };
    match state.state.as_deref() {
        Some("Running") => RemoteContainerState::Running {
            started_at: state.start_time,
        },
        Some("Terminated") => {
            let exit_code = state.exit_code.unwrap_or(-1);
            RemoteContainerState::Terminated {
                exit_code,
                reason: if exit_code == 0 { "Completed" } else { "Error" }.into(),
                started_at: state.start_time,
                finished_at: state.finish_time,
            }
        }
        _ => RemoteContainerState::Waiting {
            reason: state
                .detail_status
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "ContainerCreating".into()),
        },
    }
}

/// The status of the group that runs pod `pod_uid`.
pub fn remote_status(pod_uid: &str, group: &ContainerGroup) -> RemoteStatus {
    let props = &group.properties;
    let group_state = props
        .instance_view
        .as_ref()
        .and_then(|v| serde_json::from_value::<GroupView>(v.clone()).ok())
        .and_then(|v| v.state);
    let containers: Vec<RemoteContainer> = props
        .containers
        .iter()
        .map(|c| RemoteContainer {
            name: c.name.clone(),
            restarts: container_restarts(c.properties.instance_view.as_ref()),
            healthy: None,
            state: container_state(c.properties.instance_view.as_ref()),
        })
        .collect();
    let provisioning = props.provisioning_state.as_deref().unwrap_or("");
    let all_terminated = !containers.is_empty()
        && containers
            .iter()
            .all(|c| matches!(c.state, RemoteContainerState::Terminated { .. }));
    let phase = match (group_state.as_deref(), provisioning) {
        (Some("Stopped" | "Succeeded" | "Failed"), _) | (_, "Failed" | "Deleting") => {
            RemotePhase::Stopped
        }
        _ if all_terminated => RemotePhase::Stopped,
        (Some("Running"), _) => RemotePhase::Running,
        _ if containers
            .iter()
            .any(|c| matches!(c.state, RemoteContainerState::Running { .. })) =>
        {
            RemotePhase::Running
        }
        _ => RemotePhase::Pending,
    };
    let started_at = containers.iter().find_map(|c| match &c.state {
        RemoteContainerState::Running { started_at }
        | RemoteContainerState::Terminated { started_at, .. } => started_at.clone(),
        RemoteContainerState::Waiting { .. } => None,
    });
    let stopped_reason =
        (phase == RemotePhase::Stopped).then(|| match (group_state.as_deref(), provisioning) {
            (_, "Failed") => "container group provisioning failed".to_owned(),
            (Some(state), _) => format!("container group {}", state.to_ascii_lowercase()),
            _ => "containers exited".to_owned(),
        });
    RemoteStatus {
        pod_uid: pod_uid.to_owned(),
        phase,
        containers,
        pod_ip: props.ip_address.as_ref().and_then(|ip| ip.ip.clone()),
        started_at,
        stopped_reason,
    }
}

/// ACI's log text with `timestamps=true`: each line starts with an RFC 3339 timestamp and
/// a space. A line without one (a continuation) takes the previous line's time.
pub fn log_lines(content: &str) -> Vec<LogLine> {
    let mut last_ms = 0;
    content
        .lines()
        .map(|line| {
            let parsed = line.split_once(' ').and_then(|(stamp, rest)| {
                let at: k8s_openapi::jiff::Timestamp = stamp.parse().ok()?;
                Some((at.as_millisecond(), rest))
            });
            match parsed {
                Some((ms, rest)) => {
                    last_ms = ms;
                    LogLine {
                        timestamp_ms: ms,
                        message: rest.to_owned(),
                    }
                }
                None => LogLine {
                    timestamp_ms: last_ms,
                    message: line.to_owned(),
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn group(view: serde_json::Value, containers: serde_json::Value) -> ContainerGroup {
        serde_json::from_value(json!({
            "location": "westeurope",
            "properties": {
                "provisioningState": "Succeeded",
                "osType": "Linux",
                "containers": containers,
                "instanceView": view,
                "ipAddress": {"type": "Private", "ip": "10.1.0.7", "ports": [{"port": 80}]}
            }
        }))
        .unwrap()
    }

    fn container(name: &str, state: serde_json::Value) -> serde_json::Value {
        json!({"name": name, "properties": {"image": "nginx", "resources": {"requests": {"cpu": 1, "memoryInGB": 1}},
               "instanceView": {"restartCount": 2, "currentState": state}}})
    }

    #[test]
    fn a_running_group_reports_its_containers_and_ip() {
        let status = remote_status(
            "uid-1",
            &group(
                json!({"state": "Running"}),
                json!([
                    container(
                        "app",
                        json!({"state": "Running", "startTime": "2026-11-29T10:00:00Z"})
                    ),
                    container(
                        "side",
                        json!({"state": "Waiting", "detailStatus": "Pulling image"})
                    ),
                ]),
            ),
        );
        assert_eq!(status.phase, RemotePhase::Running);
        assert_eq!(status.pod_ip.as_deref(), Some("10.1.0.7"));
        assert_eq!(status.containers[0].restarts, 2, "ACI's in-place restarts");
        assert_eq!(status.started_at.as_deref(), Some("2026-11-29T10:00:00Z"));
        assert_eq!(
            status.containers[1].state,
            RemoteContainerState::Waiting {
                reason: "Pulling image".into()
            }
        );
    }

    #[test]
    fn exited_containers_carry_their_codes_and_stop_the_group() {
        let status = remote_status(
            "uid-1",
            &group(
                json!({"state": "Failed"}),
                json!([container(
                    "app",
                    json!({"state": "Terminated", "exitCode": 3,
                    "startTime": "2026-11-29T10:00:00Z", "finishTime": "2026-11-29T10:01:00Z"})
                )]),
            ),
        );
        assert_eq!(status.phase, RemotePhase::Stopped);
        assert_eq!(
            status.containers[0].state,
            RemoteContainerState::Terminated {
                exit_code: 3,
                reason: "Error".into(),
                started_at: Some("2026-11-29T10:00:00Z".into()),
                finished_at: Some("2026-11-29T10:01:00Z".into()),
            }
        );
        assert_eq!(
            status.stopped_reason.as_deref(),
            Some("container group failed")
        );
    }

    #[test]
    fn a_group_without_an_instance_view_is_pending() {
        let mut g = group(
            json!(null),
            json!([{"name": "app", "properties": {"image": "nginx",
            "resources": {"requests": {"cpu": 1, "memoryInGB": 1}}}}]),
        );
        g.properties.instance_view = None;
        g.properties.provisioning_state = Some("Creating".into());
        let status = remote_status("uid-1", &g);
        assert_eq!(status.phase, RemotePhase::Pending);
        assert_eq!(
            status.containers[0].state,
            RemoteContainerState::Waiting {
                reason: "ContainerCreating".into()
            }
        );
    }

    #[test]
    fn timestamped_log_text_becomes_lines() {
        let lines = log_lines(
            "2026-11-29T10:00:00.5Z hello world\n2026-11-29T10:00:01Z second\ncontinued\n",
        );
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].message, "hello world");
        assert_eq!(lines[0].timestamp_ms, 1_795_946_400_500);
        assert_eq!(lines[2].message, "continued");
        assert_eq!(lines[2].timestamp_ms, lines[1].timestamp_ms);
    }
}
