//! The provider interface the node drives (virtual-kubelet's plain shape): create, delete,
//! list what exists, read status in batches, read logs. Errors are typed so the node can
//! tell a retry from a give-up.

use std::collections::HashMap;
use std::future::Future;

use k8s_openapi::api::core::v1::Pod;

use crate::pod_objects::PodObjects;

/// What went wrong at the provider.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProviderError {
    /// The object does not exist (any more).
    #[error("not found: {0}")]
    NotFound(String),
    /// The provider refused the request as invalid; retrying the same request won't help.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The provider asked us to slow down.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The provider has no room for the pod now: capacity, quota, or an outage of the
    /// service itself. It may pass; the controller fails such pods over to another
    /// provider once it has lasted `failover.afterSeconds`.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// Anything that may work on a retry.
    #[error("transient failure: {0}")]
    Transient(String),
    /// The provider refused the node's identity or a role it passes (AccessDenied, an
    /// execution role ECS cannot assume): nothing the pod did, and every pod gets the same
    /// until an operator fixes the set-up. Retried with back-off like an outage (the pod
    /// is never failed for it), and it counts toward the node's degraded taint.
    #[error("access denied: {0}")]
    Denied(String),
}

impl ProviderError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::Throttled(_)
                | ProviderError::Transient(_)
                | ProviderError::Unavailable(_)
                | ProviderError::Denied(_)
        )
    }

    /// Short name for metrics and Events.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::NotFound(_) => "not-found",
            ProviderError::Invalid(_) => "invalid",
            ProviderError::Throttled(_) => "throttled",
            ProviderError::Unavailable(_) => "unavailable",
            ProviderError::Transient(_) => "transient",
            ProviderError::Denied(_) => "denied",
        }
    }
}

/// A native sidecar: an init container with `restartPolicy: Always`, started in its turn
/// among the init containers and kept running beside the app.
pub fn is_sidecar(container: &k8s_openapi::api::core::v1::Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

/// The pod's UID, which every provider object is keyed by; a pod without one is refused.
pub fn pod_uid(pod: &Pod) -> Result<String, ProviderError> {
    pod.metadata
        .uid
        .clone()
        .ok_or_else(|| ProviderError::Invalid("pod has no uid".into()))
}

/// A container's state at the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteContainerState {
    /// Not started yet.
    Waiting {
        /// Why (`ContainerCreating`, `PodInitializing`, …).
        reason: String,
    },
    /// Running since `started_at`.
    Running {
        /// RFC 3339.
        started_at: Option<String>,
    },
    /// Finished.
    Terminated {
        /// Exit code.
        exit_code: i32,
        /// `Completed`, `Error`, or the provider's reason.
        reason: String,
        /// RFC 3339.
        started_at: Option<String>,
        /// RFC 3339.
        finished_at: Option<String>,
    },
}

/// A container at the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteContainer {
    /// Container name (as in the pod).
    pub name: String,
    /// Its state.
    pub state: RemoteContainerState,
    /// Times the provider itself restarted it in place (ACI under the group's restart
    /// policy); 0 where only the node relaunches.
    pub restarts: i32,
    /// The verdict of its `exec` probe, which the provider runs (ECS health check):
    /// `None` while unknown or when it has none.
    pub healthy: Option<bool>,
}

/// Where a provider object is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemotePhase {
    /// Accepted, not running yet.
    Pending,
    /// Running.
    Running,
    /// Stopped (or stopping) for good.
    Stopped,
}

/// What the provider says about one pod's object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteStatus {
    /// Pod UID the object belongs to.
    pub pod_uid: String,
    /// Phase.
    pub phase: RemotePhase,
    /// Containers.
    pub containers: Vec<RemoteContainer>,
    /// IP of the object's network interface.
    pub pod_ip: Option<String>,
    /// RFC 3339 start time.
    pub started_at: Option<String>,
    /// Provider's reason when stopped.
    pub stopped_reason: Option<String>,
}

/// Options of a log read (the kubelet API's query).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Last N lines.
    pub tail_lines: Option<usize>,
    /// Only lines newer than this many seconds.
    pub since_seconds: Option<i64>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
    /// Prefix lines with RFC 3339 timestamps.
    pub timestamps: bool,
}

/// The most a log read holds or sends unasked (10 MiB): a tail is read into at most this
/// many bytes (older lines are left out), and a read that names neither `limitBytes` nor
/// `tailLines` stops here, saying so in its last line.
pub const LOG_READ_CAP_BYTES: usize = 10 * 1024 * 1024;

/// What one log read returns: some lines, and where to go on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogChunk {
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
    /// More of this read is there now: pass it back as `from` for the next page.
    pub more: Option<String>,
    /// Where lines written after these begin: pass it back as `from` to follow the log.
    /// `None` when the provider cannot resume a read (a follower then re-reads and skips
    /// what it sent).
    pub resume: Option<String>,
    /// Older lines of a tail were left out to stay within [`LOG_READ_CAP_BYTES`].
    pub cut: bool,
}

/// One log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// The text, without a trailing newline.
    pub message: String,
}

/// What one container used, as the provider measured it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerUsage {
    /// Container name (as in the pod).
    pub name: String,
    /// When the container started (ms since the epoch), if known.
    pub started_at_ms: Option<i64>,
    /// CPU in use now, in billionths of a core.
    pub cpu_nano_cores: u64,
    /// CPU used since the container started, in core-nanoseconds.
    pub cpu_core_nano_seconds: u64,
    /// Memory working set, in bytes.
    pub memory_working_set_bytes: u64,
}

/// What one pod's containers used at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodUsage {
    /// When the sample was taken (ms since the epoch).
    pub sampled_at_ms: i64,
    /// Per container; never empty.
    pub containers: Vec<ContainerUsage>,
}

/// What `kubectl exec` asked to run in a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecCommand {
    /// The argv, never empty.
    pub argv: Vec<String>,
    /// The caller sends stdin (`-i`).
    pub stdin: bool,
    /// The caller has a terminal (`-t`): one output stream, resizes.
    pub tty: bool,
}

/// A terminal's size, as the caller's resize messages carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The streams of one exec or attach session, from the provider's side. Dropping the
/// senders ends the output; stdin's receiver ends when the caller closes its stdin.
pub struct SessionIo {
    /// What the caller types (nothing unless it asked for stdin).
    pub stdin: tokio::sync::mpsc::Receiver<Vec<u8>>,
    /// Terminal resizes (TTY sessions), the first one soon after the start.
    pub resize: tokio::sync::mpsc::Receiver<TerminalSize>,
    /// Standard output (everything, with a terminal).
    pub stdout: tokio::sync::mpsc::Sender<Vec<u8>>,
    /// Standard error (unused with a terminal).
    pub stderr: tokio::sync::mpsc::Sender<Vec<u8>>,
}

/// The terminal size a provider is given when the caller has none, or sends none in time.
pub const DEFAULT_TERMINAL: TerminalSize = TerminalSize {
    width: 80,
    height: 24,
};

/// How long a terminal session waits for the caller's first size (kubectl sends it as the
/// session opens) before it starts with [`DEFAULT_TERMINAL`].
pub const FIRST_SIZE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The size a session's terminal starts with: the caller's first resize when it has a
/// terminal (waited for up to [`FIRST_SIZE_WAIT`]), else [`DEFAULT_TERMINAL`].
pub async fn first_terminal_size(io: &mut SessionIo, tty: bool) -> TerminalSize {
    if !tty {
        return DEFAULT_TERMINAL;
    }
    tokio::time::timeout(FIRST_SIZE_WAIT, io.resize.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or(DEFAULT_TERMINAL)
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The process exited with this code.
    Exited(i32),
    /// The stream ended; the provider does not say how the process exited (ACI).
    Closed,
}

/// A backend that runs pods.
pub trait Provider: Send + Sync + 'static {
    /// Provider name for metrics (`fargate`, `aci`, `mock`).
    fn name(&self) -> &'static str;

    /// Where the node sends the probes of a pod at `pod_ip`: the pod's IP (the node runs
    /// in the cluster's network, as a kubelet does); `None`: nowhere, its probes are not
    /// run (the mock's made-up addresses).
    fn probe_target(&self, pod_ip: std::net::IpAddr) -> Option<std::net::IpAddr> {
        Some(pod_ip)
    }

    /// Whether it runs `exec` probes itself and reports their verdict in
    /// [`RemoteContainer::healthy`] (ECS health checks).
    fn runs_exec_probes(&self) -> bool {
        false
    }

    /// What keeps the provider from running pods (no credentials, a missing cluster or
    /// log group, …), one sentence each for the operator; empty when it is ready. The node
    /// asks at start and again until it is ready, and stays tainted meanwhile.
    fn setup_problems(&self) -> impl Future<Output = Vec<String>> + Send {
        async { Vec::new() }
    }

    /// Starts `pod` with the ConfigMaps and Secrets it names, which the node fetched
    /// (the provider fetches nothing itself). Must be idempotent for the same pod UID.
    fn create(
        &self,
        pod: &Pod,
        objects: &PodObjects,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Stops the object of `pod_uid`, giving containers `grace_seconds` to exit.
    fn delete(
        &self,
        pod_uid: &str,
        grace_seconds: i64,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Every object this node owns, running or not, keyed by pod UID.
    fn list(
        &self,
    ) -> impl Future<Output = Result<HashMap<String, RemoteStatus>, ProviderError>> + Send;

    /// Statuses of the given pods (missing ones are absent from the map).
    fn statuses(
        &self,
        pod_uids: &[String],
    ) -> impl Future<Output = Result<HashMap<String, RemoteStatus>, ProviderError>> + Send;

    /// One read of a container's log: the first page of what `options` ask when `from`
    /// is `None`, else the page at `from` (a [`LogChunk::more`] or [`LogChunk::resume`] of
    /// an earlier chunk). A page is bounded (a provider never gathers a whole log in
    /// memory); `limit_bytes` is the caller's business.
    fn logs(
        &self,
        pod_uid: &str,
        container: &str,
        options: &LogOptions,
        from: Option<&str>,
    ) -> impl Future<Output = Result<LogChunk, ProviderError>> + Send;

    /// Resource usage of the given pods (keyed by pod UID). A pod the provider has no data
    /// for yet is absent from the map, never reported as zero. Providers that measure
    /// nothing report nothing, hence the default.
    fn usage(
        &self,
        pods: &[Pod],
    ) -> impl Future<Output = Result<HashMap<String, PodUsage>, ProviderError>> + Send {
        let _ = pods;
        async { Ok(HashMap::new()) }
    }

    /// Runs `command` in `container` of the pod's object and streams it through `io`
    /// until it ends. Providers that cannot refuse with a sentence the caller sees.
    fn exec(
        &self,
        pod_uid: &str,
        container: &str,
        command: &ExecCommand,
        io: SessionIo,
    ) -> impl Future<Output = Result<SessionEnd, ProviderError>> + Send {
        let _ = (pod_uid, container, command, io);
        let provider = self.name();
        async move {
            Err(ProviderError::Invalid(format!(
                "kubectl exec is not supported on Spillway burst pods ({provider}) yet; use \
                 kubectl logs, or scale the workload so a replica runs on a regular node"
            )))
        }
    }

    /// Attaches to the main process of `container`: its output, and its stdin when the
    /// caller sends one, until the caller leaves or the process ends.
    fn attach(
        &self,
        pod_uid: &str,
        container: &str,
        tty: bool,
        io: SessionIo,
    ) -> impl Future<Output = Result<SessionEnd, ProviderError>> + Send {
        let _ = (pod_uid, container, tty, io);
        let provider = self.name();
        async move {
            Err(ProviderError::Invalid(format!(
                "kubectl attach is not supported on Spillway burst pods ({provider}) yet; use \
                 kubectl logs -f"
            )))
        }
    }

    /// Removes what this node owns at the provider for pods not in `live` (tasks, and
    /// anything kept beside them such as per-pod secrets); returns for how many pods
    /// something was removed.
    /// Providers whose `list` covers everything they own need nothing more than the
    /// start-up adoption, hence the default.
    fn sweep(
        &self,
        live: &std::collections::HashSet<String>,
    ) -> impl Future<Output = Result<usize, ProviderError>> + Send {
        let _ = live;
        async { Ok(0) }
    }
}
