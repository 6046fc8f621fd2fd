//! Container probes the way a kubelet runs them, as data: which probes a pod has, when
//! each is due, and what a run's result does (the readiness a container reports, an
//! `Unhealthy` Event, a container killed for failing its liveness or startup probe).
//! `startupProbe` gates the others; a container with a readiness probe is ready only once
//! it passed; `initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`,
//! `successThreshold` and `failureThreshold` are honoured with the kubelet's defaults.
//! The runs themselves (HTTP and TCP against the pod's IP) are the controller's.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// `startupProbe`: the others wait for it.
    Startup,
    /// `readinessProbe`: the container's (and so the pod's) Ready.
    Readiness,
    /// `livenessProbe`: failing it kills the container.
    Liveness,
}

impl ProbeKind {
    /// As the kubelet's Events name it.
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Liveness => "Liveness",
        }
    }
}

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeAction {
    /// `httpGet`: success is a status from 200 to 399.
    Http {
        /// The port.
        port: u16,
        /// The path (with its query).
        path: String,
        /// `HTTPS` (certificates are not verified, as the kubelet does not).
        https: bool,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
    /// `tcpSocket`: success is a connection.
    Tcp {
        /// The port.
        port: u16,
    },
    /// `exec`: run by the provider inside the container (an ECS health check); its
    /// verdict comes with the provider's status.
    Exec(Vec<String>),
    /// `grpc`, or a port that names nothing: not run.
    Unsupported(String),
}

/// One probe of one container, with the kubelet's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Which.
    pub kind: ProbeKind,
    /// The container it checks.
    pub container: String,
    /// What it does.
    pub action: ProbeAction,
    /// `initialDelaySeconds` (0).
    pub initial_delay: Duration,
    /// `periodSeconds` (10).
    pub period: Duration,
    /// `timeoutSeconds` (1).
    pub timeout: Duration,
    /// `successThreshold` (1).
    pub success_threshold: u32,
    /// `failureThreshold` (3).
    pub failure_threshold: u32,
}

fn seconds(value: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(value.map_or(default, |v| u64::try_from(v.max(0)).unwrap_or(default)))
}

fn count(value: Option<i32>, default: u32) -> u32 {
    value.map_or(default, |v| u32::try_from(v.max(1)).unwrap_or(default))
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(number) => u16::try_from(*number)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port {number} is out of range")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| {
                format!(
                    "port {name:?} names no port of container {}",
                    container.name
                )
            }),
    }
}

fn action(container: &Container, probe: &Probe) -> ProbeAction {
    if let Some(http) = &probe.http_get {
        return match port(container, &http.port) {
            Ok(port) => ProbeAction::Http {
                port,
                path: http.path.clone().unwrap_or_else(|| "/".into()),
                https: http.scheme.as_deref() == Some("HTTPS"),
                headers: http
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            },
            Err(why) => ProbeAction::Unsupported(why),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        return match port(container, &tcp.port) {
            Ok(port) => ProbeAction::Tcp { port },
            Err(why) => ProbeAction::Unsupported(why),
        };
    }
    if let Some(exec) = &probe.exec {
        return ProbeAction::Exec(exec.command.clone().unwrap_or_default());
    }
    ProbeAction::Unsupported("grpc probes are not supported on burst pods".into())
}

/// The probes of `pod`'s containers.
pub fn specs(pod: &Pod) -> Vec<ProbeSpec> {
    let mut specs = Vec::new();
    for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let probes = [
            (ProbeKind::Startup, &container.startup_probe),
            (ProbeKind::Readiness, &container.readiness_probe),
            (ProbeKind::Liveness, &container.liveness_probe),
        ];
        for (kind, probe) in probes {
            let Some(probe) = probe else { continue };
            specs.push(ProbeSpec {
                kind,
                container: container.name.clone(),
                action: action(container, probe),
                initial_delay: seconds(probe.initial_delay_seconds, 0),
                period: seconds(probe.period_seconds, 10).max(Duration::from_secs(1)),
                timeout: seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
                // Liveness and startup probes must succeed once to count.
                success_threshold: match kind {
                    ProbeKind::Readiness => count(probe.success_threshold, 1),
                    _ => 1,
                },
                failure_threshold: count(probe.failure_threshold, 3),
            });
        }
    }
    specs
}

/// What one run of a probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRun {
    /// It passed.
    pub ok: bool,
    /// The kubelet-style reason when it failed (`HTTP probe failed with statuscode:
    /// 500`, a connect error).
    pub message: String,
}

/// What follows a probe's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeEffect {
    /// `Unhealthy` Event: `<Kind> probe failed: <message>`.
    Unhealthy {
        /// Which probe.
        kind: ProbeKind,
        /// The container.
        container: String,
        /// What the run found.
        message: String,
    },
    /// Readiness (or a container's start) changed: write the status again.
    StatusChanged,
    /// The container failed its liveness or startup probe: kill it (and, per the
    /// restart policy, start it again).
    Kill {
        /// The container.
        container: String,
        /// Which probe it failed.
        kind: ProbeKind,
    },
}

#[derive(Clone, Debug)]
struct ProbeState {
    spec: ProbeSpec,
    next_due: Instant,
    successes: u32,
    failures: u32,
    /// The probe's verdict so far: readiness and startup start failing (`false`),
    /// liveness passing.
    passing: bool,
    in_flight: bool,
}

/// The probes of one running pod.
#[derive(Clone, Debug)]
pub struct PodProbes {
    states: Vec<ProbeState>,
}

impl PodProbes {
    /// The probes of `pod`, whose containers started at `started`, that something runs:
    /// HTTP and TCP probes when the node reaches the pod (`node`), `exec` probes when the
    /// provider runs them (`provider_exec`). A probe nothing runs is left out, as if the
    /// container had none: it is ready when running.
    pub fn new(pod: &Pod, started: Instant, node: bool, provider_exec: bool) -> Self {
        let states = specs(pod)
            .into_iter()
            .filter(|spec| match spec.action {
                ProbeAction::Http { .. } | ProbeAction::Tcp { .. } => node,
                ProbeAction::Exec(_) => provider_exec,
                ProbeAction::Unsupported(_) => false,
            })
            .map(|spec| ProbeState {
                next_due: started + spec.initial_delay,
                successes: 0,
                failures: 0,
                passing: spec.kind == ProbeKind::Liveness,
                in_flight: false,
                spec,
            })
            .collect();
        Self { states }
    }

    /// Whether the pod has any probe.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    fn passed(&self, container: &str, kind: ProbeKind) -> Option<bool> {
        self.states
            .iter()
            .find(|s| s.spec.container == container && s.spec.kind == kind)
            .map(|s| s.passing)
    }

    /// Whether `container` has started: its startup probe passed, or it has none.
    pub fn started(&self, container: &str) -> bool {
        self.passed(container, ProbeKind::Startup).unwrap_or(true)
    }

    /// Whether `container` (running) is ready: started, and its readiness probe passed
    /// (or it has none).
    pub fn ready(&self, container: &str) -> bool {
        self.started(container) && self.passed(container, ProbeKind::Readiness).unwrap_or(true)
    }

    /// The probes due at `now` (marked in flight until their result comes): a
    /// container's startup probe until it passed, then its readiness and liveness
    /// probes.
    pub fn take_due(&mut self, now: Instant) -> Vec<(usize, ProbeSpec)> {
        let started: Vec<bool> = self
            .states
            .iter()
            .map(|s| self.started(&s.spec.container))
            .collect();
        let mut due = Vec::new();
        for (index, state) in self.states.iter_mut().enumerate() {
            let gated = match state.spec.kind {
                ProbeKind::Startup => state.passing,
                _ => !started[index],
            };
            let by_provider = matches!(state.spec.action, ProbeAction::Exec(_));
            if by_provider || gated || state.in_flight || state.next_due > now {
                continue;
            }
            state.in_flight = true;
            due.push((index, state.spec.clone()));
        }
        due
    }

    /// Records the verdict of `container`'s `exec` probes, which the provider runs and
    /// thresholds itself: healthy passes them; unhealthy fails a readiness probe at once
    /// and kills the container for a liveness or startup probe (once per turn to
    /// unhealthy).
    pub fn record_verdict(&mut self, container: &str, healthy: bool) -> Vec<ProbeEffect> {
        let started = self.started(container);
        let mut effects = Vec::new();
        for state in &mut self.states {
            if state.spec.container != container
                || !matches!(state.spec.action, ProbeAction::Exec(_))
                || (state.spec.kind != ProbeKind::Startup && !started)
            {
                continue;
            }
            let before = state.passing;
            state.passing = healthy;
            if !healthy && before {
                effects.push(ProbeEffect::Unhealthy {
                    kind: state.spec.kind,
                    container: container.to_owned(),
                    message: "the provider's health check of the container reports UNHEALTHY"
                        .into(),
                });
                if state.spec.kind == ProbeKind::Liveness {
                    effects.push(ProbeEffect::Kill {
                        container: container.to_owned(),
                        kind: state.spec.kind,
                    });
                }
            }
            if state.passing != before {
                effects.push(ProbeEffect::StatusChanged);
            }
        }
        effects
    }

    /// Records the run of probe `index` that finished at `now`.
    pub fn record(&mut self, index: usize, run: &ProbeRun, now: Instant) -> Vec<ProbeEffect> {
        let Some(state) = self.states.get_mut(index) else {
            return Vec::new();
        };
        state.in_flight = false;
        state.next_due = now + state.spec.period;
        let mut effects = Vec::new();
        let before = state.passing;
        if run.ok {
            state.failures = 0;
            state.successes = state.successes.saturating_add(1);
            if state.successes >= state.spec.success_threshold {
                state.passing = true;
            }
        } else {
            state.successes = 0;
            state.failures = state.failures.saturating_add(1);
            effects.push(ProbeEffect::Unhealthy {
                kind: state.spec.kind,
                container: state.spec.container.clone(),
                message: run.message.clone(),
            });
            if state.failures >= state.spec.failure_threshold {
                match state.spec.kind {
                    ProbeKind::Readiness => state.passing = false,
                    ProbeKind::Liveness | ProbeKind::Startup => {
                        state.failures = 0;
                        effects.push(ProbeEffect::Kill {
                            container: state.spec.container.clone(),
                            kind: state.spec.kind,
                        });
                    }
                }
            }
        }
        if state.passing != before {
            effects.push(ProbeEffect::StatusChanged);
        }
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(container: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [container]}
        }))
        .unwrap()
    }

    fn fail(message: &str) -> ProbeRun {
        ProbeRun {
            ok: false,
            message: message.into(),
        }
    }

    fn pass() -> ProbeRun {
        ProbeRun {
            ok: true,
            message: String::new(),
        }
    }

    #[test]
    fn specs_take_the_kubelets_defaults_and_resolve_named_ports() {
        let pod = pod(json!({"name": "app", "image": "x",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"port": "http", "path": "/ready"}},
            "livenessProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 3, "failureThreshold": 2},
            "startupProbe": {"exec": {"command": ["true"]}}}));
        let found = specs(&pod);
        assert_eq!(found.len(), 3);
        let readiness = &found[1];
        assert_eq!(readiness.kind, ProbeKind::Readiness);
        assert_eq!(
            readiness.action,
            ProbeAction::Http {
                port: 8080,
                path: "/ready".into(),
                https: false,
                headers: vec![]
            }
        );
        assert_eq!(readiness.period, Duration::from_secs(10));
        assert_eq!(readiness.timeout, Duration::from_secs(1));
        assert_eq!(
            (readiness.success_threshold, readiness.failure_threshold),
            (1, 3)
        );
        let liveness = &found[2];
        assert_eq!(liveness.action, ProbeAction::Tcp { port: 9000 });
        assert_eq!(liveness.period, Duration::from_secs(3));
        assert_eq!(liveness.failure_threshold, 2);
        assert_eq!(found[0].action, ProbeAction::Exec(vec!["true".into()]));
        // A name that names no port cannot be run.
        let unnamed = pod_with_probe(json!({"tcpSocket": {"port": "nope"}}));
        assert!(matches!(
            specs(&unnamed)[0].action,
            ProbeAction::Unsupported(ref why) if why.contains("nope")
        ));
    }

    fn pod_with_probe(probe: serde_json::Value) -> Pod {
        pod(json!({"name": "app", "image": "x", "readinessProbe": probe}))
    }

    #[test]
    fn readiness_follows_the_thresholds_and_says_when_it_changes() {
        let t0 = Instant::now();
        let pod = pod_with_probe(json!({"tcpSocket": {"port": 80}, "successThreshold": 2,
            "failureThreshold": 2, "initialDelaySeconds": 5, "periodSeconds": 1}));
        let mut probes = PodProbes::new(&pod, t0, true, true);
        assert!(!probes.ready("app"), "not ready before the first pass");
        assert!(probes.take_due(t0).is_empty(), "the initial delay first");
        // (seconds, run passed?, ready after, status change said)
        let table = [
            (5, true, false, false), // one of two successes
            (6, true, true, true),   // ready
            (7, false, true, false), // one of two failures
            (8, false, false, true), // not ready
            (9, true, false, false),
            (10, true, true, true),
        ];
        for (at, ok, ready, changed) in table {
            let now = t0 + Duration::from_secs(at);
            let due = probes.take_due(now);
            assert_eq!(due.len(), 1, "t={at}: due");
            let run = if ok {
                pass()
            } else {
                fail("connection refused")
            };
            let effects = probes.record(due[0].0, &run, now);
            assert_eq!(probes.ready("app"), ready, "t={at}");
            assert_eq!(
                effects.contains(&ProbeEffect::StatusChanged),
                changed,
                "t={at}"
            );
            assert_eq!(
                effects
                    .iter()
                    .any(|e| matches!(e, ProbeEffect::Unhealthy { .. })),
                !ok,
                "t={at}: an Event per failure"
            );
        }
    }

    #[test]
    fn a_probe_is_not_run_again_while_in_flight_nor_before_its_period() {
        let t0 = Instant::now();
        let pod = pod_with_probe(json!({"tcpSocket": {"port": 80}, "periodSeconds": 4}));
        let mut probes = PodProbes::new(&pod, t0, true, true);
        let due = probes.take_due(t0);
        assert_eq!(due.len(), 1);
        assert!(
            probes.take_due(t0 + Duration::from_secs(9)).is_empty(),
            "in flight"
        );
        probes.record(due[0].0, &pass(), t0 + Duration::from_secs(1));
        assert!(probes.take_due(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(probes.take_due(t0 + Duration::from_secs(5)).len(), 1);
    }

    #[test]
    fn a_failed_liveness_probe_kills_the_container_at_the_threshold() {
        let t0 = Instant::now();
        let pod = pod(json!({"name": "app", "image": "x",
            "livenessProbe": {"httpGet": {"port": 80}, "periodSeconds": 1, "failureThreshold": 3}}));
        let mut probes = PodProbes::new(&pod, t0, true, true);
        assert!(
            probes.ready("app"),
            "no readiness probe: ready when running"
        );
        let mut kills = Vec::new();
        for at in 0..6 {
            let now = t0 + Duration::from_secs(at);
            for (index, _) in probes.take_due(now) {
                let effects =
                    probes.record(index, &fail("HTTP probe failed with statuscode: 500"), now);
                if effects
                    .iter()
                    .any(|e| matches!(e, ProbeEffect::Kill { .. }))
                {
                    kills.push(at);
                }
            }
        }
        assert_eq!(kills, [2, 5], "every third failure in a row");
    }

    #[test]
    fn the_startup_probe_gates_the_others_and_kills_at_its_threshold() {
        let t0 = Instant::now();
        let pod = pod(json!({"name": "app", "image": "x",
            "startupProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 1, "failureThreshold": 2},
            "readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 1},
            "livenessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 1}}));
        let mut probes = PodProbes::new(&pod, t0, true, true);
        assert!(!probes.started("app"));
        let due = probes.take_due(t0);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.kind, ProbeKind::Startup, "only the startup probe");
        let effects = probes.record(due[0].0, &fail("refused"), t0);
        assert!(
            !effects
                .iter()
                .any(|e| matches!(e, ProbeEffect::Kill { .. }))
        );
        let now = t0 + Duration::from_secs(1);
        let due = probes.take_due(now);
        let effects = probes.record(due[0].0, &fail("refused"), now);
        assert!(effects.contains(&ProbeEffect::Kill {
            container: "app".into(),
            kind: ProbeKind::Startup
        }));
        // Once it passes, the others run and it stops.
        let now = t0 + Duration::from_secs(2);
        let due = probes.take_due(now);
        let effects = probes.record(due[0].0, &pass(), now);
        assert!(effects.contains(&ProbeEffect::StatusChanged));
        assert!(probes.started("app"));
        let later = t0 + Duration::from_secs(3);
        let kinds: Vec<ProbeKind> = probes.take_due(later).iter().map(|d| d.1.kind).collect();
        assert_eq!(kinds, [ProbeKind::Readiness, ProbeKind::Liveness]);
    }

    #[test]
    fn exec_probes_follow_the_providers_verdict_and_are_never_run_by_the_node() {
        let t0 = Instant::now();
        let pod = pod(json!({"name": "app", "image": "x",
            "readinessProbe": {"exec": {"command": ["cat", "/ready"]}},
            "livenessProbe": {"exec": {"command": ["true"]}}}));
        let mut probes = PodProbes::new(&pod, t0, true, true);
        assert!(probes.take_due(t0 + Duration::from_secs(60)).is_empty());
        assert!(!probes.ready("app"), "not ready before a verdict");
        let healthy = probes.record_verdict("app", true);
        assert!(healthy.contains(&ProbeEffect::StatusChanged));
        assert!(probes.ready("app"));
        let unhealthy = probes.record_verdict("app", false);
        assert!(!probes.ready("app"));
        assert!(unhealthy.contains(&ProbeEffect::Kill {
            container: "app".into(),
            kind: ProbeKind::Liveness
        }));
        // Still unhealthy at the next sync: no second kill.
        assert!(probes.record_verdict("app", false).is_empty());
    }

    #[test]
    fn probes_nothing_runs_are_left_out_and_the_container_is_ready_when_running() {
        let t0 = Instant::now();
        let pod = pod(json!({"name": "app", "image": "x",
            "readinessProbe": {"exec": {"command": ["true"]}},
            "livenessProbe": {"grpc": {"port": 9000}}}));
        // A provider that runs no exec probe (ACI, the mock): nothing is left to run.
        let probes = PodProbes::new(&pod, t0, true, false);
        assert!(probes.is_empty());
        assert!(probes.ready("app"));
        // One that does (Fargate): readiness waits for its verdict.
        let probes = PodProbes::new(&pod, t0, true, true);
        assert!(!probes.is_empty());
        assert!(!probes.ready("app"));
    }
}
