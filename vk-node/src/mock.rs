//! The in-memory provider (`--vk-provider mock`): pods "run" after a configurable start
//! latency, creates fail at a configurable rate, and containers may exit after a while;
//! running pods report a synthetic resource usage (a default, or the pod's
//! `spillway.io/mock-cpu-usage` / `spillway.io/mock-memory-usage` annotations, read at each
//! sample so a test can raise and drop the load). For the demo and for tests of the node.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use rand::Rng;

use crate::pod_objects::PodObjects;
use crate::provider::{
    ContainerUsage, ExecCommand, LogChunk, LogLine, LogOptions, PodUsage, Provider, ProviderError,
    RemoteContainer, RemoteContainerState, RemotePhase, RemoteStatus, SessionEnd, SessionIo,
};
use crate::resource_usage::CpuMeter;

/// How the mock behaves.
#[derive(Clone, Debug)]
pub struct MockBehaviour {
    /// Time from create to Running.
    pub start_latency: Duration,
    /// Probability in [0, 1] that a create fails transiently.
    pub failure_rate: f64,
    /// When set, containers exit this long after starting.
    pub run_for: Option<Duration>,
    /// Exit code when they do.
    pub exit_code: i32,
    /// The first this many creates fail transiently (an outage that ends).
    pub fail_first_creates: u32,
    /// Injected create failures say the provider has no capacity
    /// ([`ProviderError::Unavailable`]) rather than a transient error.
    pub failures_unavailable: bool,
    /// CPU (millicores) a running pod uses when its annotation does not say.
    pub cpu_usage_millis: Option<u64>,
    /// Memory (bytes) a running pod uses when its annotation does not say.
    pub memory_usage_bytes: Option<u64>,
    /// Probes go to 127.0.0.1, where a test serves them; otherwise they are not run (a
    /// mock pod's IP is made up).
    pub probe_loopback: bool,
}

/// Pod annotation: the CPU a running mock pod uses (a quantity such as `250m`).
pub const CPU_USAGE_ANNOTATION: &str = "spillway.io/mock-cpu-usage";
/// Pod annotation: the memory a running mock pod uses (a quantity such as `64Mi`).
pub const MEMORY_USAGE_ANNOTATION: &str = "spillway.io/mock-memory-usage";

impl Default for MockBehaviour {
    fn default() -> Self {
        Self {
            start_latency: Duration::from_millis(500),
            failure_rate: 0.0,
            run_for: None,
            exit_code: 0,
            fail_first_creates: 0,
            failures_unavailable: false,
            cpu_usage_millis: None,
            memory_usage_bytes: None,
            probe_loopback: false,
        }
    }
}

#[derive(Debug)]
struct MockObject {
    containers: Vec<String>,
    /// Native sidecars: they keep running after the app's containers exit, until the
    /// object is stopped.
    sidecars: Vec<String>,
    created: Instant,
    created_wall: SystemTime,
    stopped: Option<Instant>,
    ip: String,
    launches: u32,
    cpu: CpuMeter,
}

/// The mock provider.
#[derive(Debug)]
pub struct MockProvider {
    behaviour: MockBehaviour,
    objects: Mutex<HashMap<String, MockObject>>,
    next_ip: Mutex<u32>,
    creates_attempted: std::sync::atomic::AtomicU32,
}

impl MockProvider {
    /// A mock with `behaviour`.
    pub fn new(behaviour: MockBehaviour) -> Self {
        Self {
            behaviour,
            objects: Mutex::new(HashMap::new()),
            next_ip: Mutex::new(1),
            creates_attempted: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// How many objects exist (running or stopped), for tests.
    pub fn object_count(&self) -> usize {
        self.objects.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// How many times `pod_uid` was launched, for tests.
    pub fn launches(&self, pod_uid: &str) -> u32 {
        self.objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(pod_uid)
            .map(|o| o.launches)
            .unwrap_or(0)
    }

    /// `Ok` when `container` of `pod_uid` runs now, else why not.
    fn running(&self, pod_uid: &str, container: &str) -> Result<(), ProviderError> {
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let object = objects
            .get(pod_uid)
            .ok_or_else(|| ProviderError::NotFound(format!("no mock object for pod {pod_uid}")))?;
        let status = self.status_of(pod_uid, object, Instant::now());
        let state = status
            .containers
            .iter()
            .find(|c| c.name == container)
            .map(|c| &c.state);
        match state {
            Some(RemoteContainerState::Running { .. }) => Ok(()),
            Some(_) => Err(ProviderError::Invalid(format!(
                "container {container} is not running"
            ))),
            None => Err(ProviderError::NotFound(format!(
                "container {container} is not in the mock object"
            ))),
        }
    }

    fn status_of(&self, uid: &str, object: &MockObject, now: Instant) -> RemoteStatus {
        let started = object.created + self.behaviour.start_latency;
        let exited = self
            .behaviour
            .run_for
            .map(|d| started + d)
            .filter(|t| *t <= now);
        let stopped_at = object.stopped.or(exited);
        let rfc3339 =
            |offset: Duration| spillway_common::time::rfc3339(object.created_wall + offset);
        let started_at = (now >= started).then(|| rfc3339(self.behaviour.start_latency));
        let app_exited = object.stopped.is_none() && exited.is_some();
        let (phase, state) = match stopped_at {
            // The app exited; its sidecars run on until the node stops the object.
            Some(_) if app_exited && !object.sidecars.is_empty() => (
                RemotePhase::Running,
                RemoteContainerState::Terminated {
                    exit_code: self.behaviour.exit_code,
                    reason: if self.behaviour.exit_code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    }
                    .into(),
                    started_at: started_at.clone(),
                    finished_at: exited
                        .map(|at| rfc3339(at.saturating_duration_since(object.created))),
                },
            ),
            Some(at) => (
                RemotePhase::Stopped,
                RemoteContainerState::Terminated {
                    exit_code: if object.stopped.is_some() {
                        137
                    } else {
                        self.behaviour.exit_code
                    },
                    reason: if object.stopped.is_none() && self.behaviour.exit_code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    }
                    .into(),
                    started_at: started_at.clone(),
                    finished_at: Some(rfc3339(at.saturating_duration_since(object.created))),
                },
            ),
            None if now >= started => (
                RemotePhase::Running,
                RemoteContainerState::Running {
                    started_at: started_at.clone(),
                },
            ),
            None => (
                RemotePhase::Pending,
                RemoteContainerState::Waiting {
                    reason: "ContainerCreating".into(),
                },
            ),
        };
        RemoteStatus {
            pod_uid: uid.to_owned(),
            phase,
            containers: object
                .containers
                .iter()
                .map(|name| RemoteContainer {
                    name: name.clone(),
                    restarts: 0,
                    healthy: None,
                    state: state.clone(),
                })
                .chain(object.sidecars.iter().map(|name| RemoteContainer {
                    name: name.clone(),
                    restarts: 0,
                    healthy: None,
                    state: if phase == RemotePhase::Running {
                        RemoteContainerState::Running {
                            started_at: started_at.clone(),
                        }
                    } else {
                        state.clone()
                    },
                }))
                .collect(),
            pod_ip: Some(object.ip.clone()),
            stopped_reason: (phase == RemotePhase::Stopped)
                .then(|| "mock container exited".to_owned()),
            started_at,
        }
    }
}

impl MockProvider {
    /// The pod's synthetic CPU (millicores) and memory (bytes): its annotations, else the
    /// defaults; `None` when neither says anything (the pod then has no data).
    fn synthetic_usage(&self, pod: &Pod) -> Option<(u64, u64)> {
        let annotation = |key: &str| {
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .map(String::as_str)
        };
        let cpu = annotation(CPU_USAGE_ANNOTATION)
            .and_then(|v| spillway_common::quantity::cpu_millis(v).ok())
            .or(self.behaviour.cpu_usage_millis);
        let memory = annotation(MEMORY_USAGE_ANNOTATION)
            .and_then(|v| spillway_common::quantity::bytes(v).ok())
            .or(self.behaviour.memory_usage_bytes);
        match (cpu, memory) {
            (None, None) => None,
            (cpu, memory) => Some((cpu.unwrap_or(0), memory.unwrap_or(0))),
        }
    }
}

impl Provider for MockProvider {
    fn name(&self) -> &'static str {
        "mock"
    }

    /// Loopback, where a test serves the probes, when asked; never the made-up address,
    /// which reaches nothing (or something else).
    fn probe_target(&self, _pod_ip: std::net::IpAddr) -> Option<std::net::IpAddr> {
        self.behaviour
            .probe_loopback
            .then_some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    }

    async fn exec(
        &self,
        pod_uid: &str,
        container: &str,
        command: &ExecCommand,
        io: SessionIo,
    ) -> Result<SessionEnd, ProviderError> {
        self.running(pod_uid, container)?;
        Ok(crate::mock_exec::run(command, io).await)
    }

    async fn attach(
        &self,
        pod_uid: &str,
        container: &str,
        _tty: bool,
        io: SessionIo,
    ) -> Result<SessionEnd, ProviderError> {
        self.running(pod_uid, container)?;
        Ok(crate::mock_exec::attach(container, io).await)
    }

    async fn create(&self, pod: &Pod, _objects: &PodObjects) -> Result<(), ProviderError> {
        let uid = crate::provider::pod_uid(pod)?;
        let attempt = self
            .creates_attempted
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let injected = |what: String| {
            if self.behaviour.failures_unavailable {
                ProviderError::Unavailable(format!("capacity unavailable ({what})"))
            } else {
                ProviderError::Transient(what)
            }
        };
        if attempt < self.behaviour.fail_first_creates {
            return Err(injected(format!("injected outage, create {}", attempt + 1)));
        }
        if self.behaviour.failure_rate > 0.0
            && rand::rng().random_bool(self.behaviour.failure_rate.min(1.0))
        {
            return Err(injected("injected failure".into()));
        }
        let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let launches = objects.get(&uid).map(|o| o.launches).unwrap_or(0);
        if objects
            .get(&uid)
            .is_some_and(|o| o.stopped.is_none() && self.behaviour.run_for.is_none())
        {
            return Ok(()); // idempotent for a live object
        }
        let ip = {
            let mut next = self.next_ip.lock().unwrap_or_else(|p| p.into_inner());
            *next += 1;
            format!("10.253.{}.{}", (*next >> 8) & 0xff, *next & 0xff)
        };
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        let sidecars = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .filter(|c| crate::provider::is_sidecar(c))
            .map(|c| c.name.clone())
            .collect();
        objects.insert(
            uid,
            MockObject {
                containers,
                sidecars,
                created: Instant::now(),
                created_wall: SystemTime::now(),
                stopped: None,
                ip,
                launches: launches + 1,
                cpu: CpuMeter::default(),
            },
        );
        Ok(())
    }

    async fn delete(&self, pod_uid: &str, _grace_seconds: i64) -> Result<(), ProviderError> {
        let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        match objects.remove(pod_uid) {
            Some(_) => Ok(()),
            None => Err(ProviderError::NotFound(pod_uid.to_owned())),
        }
    }

    async fn list(&self) -> Result<HashMap<String, RemoteStatus>, ProviderError> {
        let now = Instant::now();
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        Ok(objects
            .iter()
            .map(|(uid, o)| (uid.clone(), self.status_of(uid, o, now)))
            .collect())
    }

    async fn statuses(
        &self,
        pod_uids: &[String],
    ) -> Result<HashMap<String, RemoteStatus>, ProviderError> {
        let now = Instant::now();
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        Ok(pod_uids
            .iter()
            .filter_map(|uid| {
                objects
                    .get(uid)
                    .map(|o| (uid.clone(), self.status_of(uid, o, now)))
            })
            .collect())
    }

    async fn usage(&self, pods: &[Pod]) -> Result<HashMap<String, PodUsage>, ProviderError> {
        let (now, now_wall) = (Instant::now(), SystemTime::now());
        let now_ms = spillway_common::time::millis(now_wall);
        let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let mut usage = HashMap::new();
        for pod in pods {
            let Some(uid) = pod.metadata.uid.as_deref() else {
                continue;
            };
            let Some(object) = objects.get_mut(uid) else {
                continue;
            };
            if self.status_of(uid, object, now).phase != RemotePhase::Running {
                continue;
            }
            let Some((cpu_millis, memory_bytes)) = self.synthetic_usage(pod) else {
                continue;
            };
            let started_ms =
                spillway_common::time::millis(object.created_wall + self.behaviour.start_latency);
            let nano_cores = cpu_millis.saturating_mul(1_000_000);
            let used = object.cpu.sample(started_ms, now_ms, nano_cores);
            let share = object.containers.len().max(1) as u64;
            let containers = object
                .containers
                .iter()
                .map(|name| ContainerUsage {
                    name: name.clone(),
                    started_at_ms: Some(started_ms),
                    cpu_nano_cores: nano_cores / share,
                    cpu_core_nano_seconds: used / share,
                    memory_working_set_bytes: memory_bytes / share,
                })
                .collect::<Vec<_>>();
            if !containers.is_empty() {
                usage.insert(
                    uid.to_owned(),
                    PodUsage {
                        sampled_at_ms: now_ms,
                        containers,
                    },
                );
            }
        }
        Ok(usage)
    }

    async fn logs(
        &self,
        pod_uid: &str,
        container: &str,
        options: &LogOptions,
        _from: Option<&str>,
    ) -> Result<LogChunk, ProviderError> {
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let object = objects
            .get(pod_uid)
            .ok_or_else(|| ProviderError::NotFound(pod_uid.to_owned()))?;
        if !object.containers.iter().any(|c| c == container) {
            return Err(ProviderError::NotFound(format!("container {container}")));
        }
        let start = object
            .created_wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let lines: Vec<LogLine> = (0..3)
            .map(|i| LogLine {
                timestamp_ms: start + i,
                message: format!("mock {container} line {i}"),
            })
            .collect();
        let tail = options.tail_lines.unwrap_or(lines.len()).min(lines.len());
        Ok(LogChunk {
            lines: lines[lines.len() - tail..].to_vec(),
            ..LogChunk::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use kube::api::ObjectMeta;

    fn pod(uid: &str, annotations: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(uid.into()),
                namespace: Some("shop".into()),
                uid: Some(uid.into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![
                    Container {
                        name: "app".into(),
                        ..Container::default()
                    },
                    Container {
                        name: "sidecar".into(),
                        ..Container::default()
                    },
                ],
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[tokio::test]
    async fn running_pods_report_their_annotated_usage_and_pods_without_any_report_nothing() {
        let mock = MockProvider::new(MockBehaviour {
            start_latency: Duration::ZERO,
            ..MockBehaviour::default()
        });
        let loaded = pod(
            "loaded",
            &[
                (CPU_USAGE_ANNOTATION, "500m"),
                (MEMORY_USAGE_ANNOTATION, "64Mi"),
            ],
        );
        let silent = pod("silent", &[]);
        mock.create(&loaded, &PodObjects::default()).await.unwrap();
        mock.create(&silent, &PodObjects::default()).await.unwrap();
        let usage = mock.usage(&[loaded, silent]).await.unwrap();
        assert!(
            !usage.contains_key("silent"),
            "no data must not read as zero"
        );
        let loaded = &usage["loaded"];
        assert_eq!(loaded.containers.len(), 2);
        assert!(
            loaded
                .containers
                .iter()
                .all(|c| c.cpu_nano_cores == 250_000_000
                    && c.memory_working_set_bytes == 32 * 1024 * 1024)
        );

        // A default from the flags covers pods without annotations; unknown pods are left out.
        let mock = MockProvider::new(MockBehaviour {
            start_latency: Duration::ZERO,
            cpu_usage_millis: Some(100),
            ..MockBehaviour::default()
        });
        let plain = pod("plain", &[]);
        mock.create(&plain, &PodObjects::default()).await.unwrap();
        let usage = mock.usage(&[plain, pod("elsewhere", &[])]).await.unwrap();
        assert_eq!(usage.len(), 1);
        assert_eq!(usage["plain"].containers[0].cpu_nano_cores, 50_000_000);
    }
}
