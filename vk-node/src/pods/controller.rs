//! The executor of the pod lifecycle: watches the pods bound to the node, runs the
//! rules of [`super::lifecycle`] on what happens to them, and carries their effects out
//! (provider calls in tasks of their own, status writes, Events).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use rand::Rng;
use serde_json::Value;
use spillway_common::{keys, pod_resources};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::admission::{self, NodeAdmission, Refusal};
use crate::env_refs::ObjectRef;
use crate::metrics::NodeMetrics;
use crate::node::{self, NodeSpec};
use crate::pod_objects::PodObjects;
use crate::provider::{Provider, ProviderError, RemoteStatus};
use crate::status::{self, TerminalPhase};

use super::health::ProviderHealth;
use super::lifecycle::{
    self, Effect, Now, PodRecord, Probing, Rules, Severity, Stage, StopFor, key,
};
use super::prober;
use super::probes::ProbeRun;
use crate::workload_rules::{ClusterView, Judgement};

/// Timing and limits of the pod controller.
#[derive(Clone, Debug)]
pub struct ControllerSettings {
    /// How often statuses are pulled from the provider.
    pub sync_interval: Duration,
    /// Invalid-request failures after which a pod is marked Failed.
    pub max_permanent_failures: u32,
    /// Creates in flight at once.
    pub create_concurrency: usize,
    /// Consecutive provider failures after which the degraded taint goes on.
    pub degraded_after: u32,
    /// Namespaces whose pods may run on the node (`--allowed-namespaces`); `None`: all.
    pub allowed_namespaces: Option<std::collections::BTreeSet<String>>,
    /// How often objects of pods that are gone (tasks, secrets) are looked for and removed.
    pub sweep_interval: Duration,
    /// Status syncs a launched pod may be missing from the provider's answer before it
    /// counts as lost.
    pub lost_after_syncs: u32,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        Self {
            sync_interval: Duration::from_secs(5),
            max_permanent_failures: 3,
            create_concurrency: 16,
            degraded_after: 5,
            allowed_namespaces: None,
            sweep_interval: Duration::from_secs(300),
            lost_after_syncs: 3,
        }
    }
}

/// Deadline of one apiserver write from the pod loop (status, Event): a stalled apiserver
/// connection delays the loop by at most this much per write.
const API_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// `namespace/name` → the pod as last seen, for each pod bound to this node, for the
/// kubelet API.
pub type PodDirectory = Arc<RwLock<HashMap<String, Pod>>>;

/// Back-off for `failures` with a random jitter.
fn backoff_with_jitter(failures: u32) -> Duration {
    lifecycle::backoff(failures, jitter())
}

/// A jitter factor in [0.5, 1) for [`lifecycle::backoff`].
fn jitter() -> f64 {
    rand::rng().random_range(0.5..1.0)
}

/// How long admission waits for a synced cluster view to learn a pod's workload (its
/// ReplicaSet and Deployment arrive on watches of their own) before refusing it.
const UNDECIDED_LIMIT: Duration = Duration::from_secs(30);

/// Whether an earlier process started the pod: it runs already, whatever the rules say
/// now.
fn started_before(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .is_some_and(|s| s.phase.as_deref() == Some("Running") || s.start_time.is_some())
}

fn uid(pod: &Pod) -> Option<String> {
    pod.metadata.uid.clone()
}

/// Drives the pods of one virtual node.
pub struct PodController<P: Provider> {
    client: Client,
    provider: Arc<P>,
    node: NodeSpec,
    settings: ControllerSettings,
    metrics: NodeMetrics,
    recorder: Recorder,
    admission: NodeAdmission,
    /// The cluster's view for the rules node-side admission cannot check alone (opt-in,
    /// budgets).
    view: ClusterView,
    directory: PodDirectory,
    tracked: HashMap<String, PodRecord>,
    synced: bool,
    /// The provider's health, behind the degraded taint.
    health: ProviderHealth,
    /// Provider objects of pods that are gone from the API whose stop failed: retried
    /// (pod UID → attempts, next try) until the provider confirms.
    stops_pending: HashMap<String, (u32, Instant)>,
    created_tx: tokio::sync::mpsc::UnboundedSender<CreateOutcome>,
    created_rx: Option<tokio::sync::mpsc::UnboundedReceiver<CreateOutcome>>,
    /// Provider calls run in tasks of their own and report here, so a slow or hung call
    /// never holds up the pod watch.
    stopped_tx: tokio::sync::mpsc::UnboundedSender<StopOutcome>,
    stopped_rx: Option<tokio::sync::mpsc::UnboundedReceiver<StopOutcome>>,
    synced_tx: tokio::sync::mpsc::UnboundedSender<SyncOutcome>,
    synced_rx: Option<tokio::sync::mpsc::UnboundedReceiver<SyncOutcome>>,
    probed_tx: tokio::sync::mpsc::UnboundedSender<ProbeOutcome>,
    probed_rx: Option<tokio::sync::mpsc::UnboundedReceiver<ProbeOutcome>>,
    /// The HTTP client probes share.
    probe_http: reqwest::Client,
    /// Probe runs in flight at once (each probe is in flight once at most, so the tasks
    /// waiting are bounded by the probes the node's pods have).
    probe_slots: Arc<tokio::sync::Semaphore>,
    /// Pod UIDs with a stop in flight.
    stopping: HashSet<String>,
    /// Whether a status pull is in flight.
    syncing: bool,
    create_slots: Arc<tokio::sync::Semaphore>,
}

/// The result of one provider stop, reported back to the controller loop.
struct StopOutcome {
    uid: String,
    why: StopFor,
    started: Instant,
    result: Result<(), ProviderError>,
}

/// The result of one probe run, reported back to the controller loop.
struct ProbeOutcome {
    uid: String,
    index: usize,
    run: ProbeRun,
}

/// The result of one status pull, reported back to the controller loop.
struct SyncOutcome {
    launched: Vec<String>,
    started: Instant,
    result: Result<HashMap<String, RemoteStatus>, ProviderError>,
}

/// The result of one create, reported back to the controller loop.
struct CreateOutcome {
    uid: String,
    pod: Pod,
    elapsed: Duration,
    attempt: CreateAttempt,
}

/// What became of one create.
enum CreateAttempt {
    /// The provider was asked (optional ConfigMaps and Secrets may be missing).
    Asked {
        optional_missing: Vec<ObjectRef>,
        result: Result<(), ProviderError>,
    },
    /// Required ConfigMaps or Secrets are missing: the provider was not asked.
    Held(Vec<ObjectRef>),
    /// The apiserver could not say what exists: the provider was not asked.
    Unchecked(String),
}

impl<P: Provider> PodController<P> {
    /// A controller for `node` backed by `provider`.
    pub fn new(
        client: Client,
        provider: Arc<P>,
        node: NodeSpec,
        settings: ControllerSettings,
        metrics: NodeMetrics,
        directory: PodDirectory,
        view: ClusterView,
    ) -> Self {
        let reporter = Reporter {
            controller: "spillway-vk-node".into(),
            instance: Some(node.name.clone()),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        let (created_tx, created_rx) = tokio::sync::mpsc::unbounded_channel();
        let (stopped_tx, stopped_rx) = tokio::sync::mpsc::unbounded_channel();
        let (synced_tx, synced_rx) = tokio::sync::mpsc::unbounded_channel();
        let (probed_tx, probed_rx) = tokio::sync::mpsc::unbounded_channel();
        let create_slots = Arc::new(tokio::sync::Semaphore::new(
            settings.create_concurrency.max(1),
        ));
        let health = ProviderHealth::new(settings.degraded_after);
        let admission = NodeAdmission {
            advertised: node.provider.clone(),
            allowed_namespaces: settings.allowed_namespaces.clone(),
        };
        Self {
            client,
            provider,
            admission,
            view,
            node,
            settings,
            metrics,
            recorder,
            directory,
            tracked: HashMap::new(),
            synced: false,
            health,
            stops_pending: HashMap::new(),
            created_tx,
            created_rx: Some(created_rx),
            stopped_tx,
            stopped_rx: Some(stopped_rx),
            synced_tx,
            synced_rx: Some(synced_rx),
            probed_tx,
            probed_rx: Some(probed_rx),
            probe_http: prober::http_client(),
            probe_slots: Arc::new(tokio::sync::Semaphore::new(PROBE_CONCURRENCY)),
            stopping: HashSet::new(),
            syncing: false,
            create_slots,
        }
    }

    /// Publishes an Event in the background: a slow or stalled apiserver must not hold up
    /// the pod loop (and with it the provider work) while an Event is written.
    async fn event(&self, pod: &Pod, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        let (recorder, reference) = (self.recorder.clone(), pod.object_ref(&()));
        tokio::spawn(async move {
            let published =
                tokio::time::timeout(API_CALL_TIMEOUT, recorder.publish(&event, &reference)).await;
            match published {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "event not recorded"),
                Err(_) => tracing::debug!("event not recorded: the apiserver did not answer"),
            }
        });
    }

    async fn provider_result<T>(
        &mut self,
        op: &str,
        started: Instant,
        result: &Result<T, ProviderError>,
    ) {
        self.metrics.observe(
            self.provider.name(),
            op,
            result,
            started.elapsed().as_secs_f64(),
        );
        if let Err(error) = result {
            self.metrics
                .errors
                .with_label_values(&[self.provider.name(), error.kind()])
                .inc();
        }
        // Both rules see the call; the taint follows the state after both.
        let _ = self.health.observe(ProviderHealth::answered(result));
        if let Some(degraded) = self.health.observe_denial(op, result) {
            self.set_degraded(degraded).await;
        }
    }

    async fn set_degraded(&mut self, degraded: bool) {
        match node::set_degraded(&self.client, &self.node, degraded).await {
            Ok(changed) => {
                self.health.taint_set(degraded);
                self.metrics
                    .degraded
                    .with_label_values(&[&self.node.name, self.provider.name()])
                    .set(i64::from(degraded));
                if changed {
                    tracing::warn!(degraded, node = %self.node.name, "provider-degraded taint changed");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot change the provider-degraded taint"),
        }
    }

    /// Asks the provider what keeps it from running pods, within [`SETUP_CHECK_TIMEOUT`];
    /// a check that does not answer is a problem of its own.
    async fn check_setup(provider: Arc<P>) -> Vec<String> {
        tokio::time::timeout(SETUP_CHECK_TIMEOUT, provider.setup_problems())
            .await
            .unwrap_or_else(|_| {
                vec![format!(
                    "the {} set-up check did not answer within {} s",
                    provider.name(),
                    SETUP_CHECK_TIMEOUT.as_secs()
                )]
            })
    }

    /// Records a set-up check: each problem logged as its sentence (when the set changes),
    /// `spillway_provider_ready`, and the degraded taint kept on while any remains.
    async fn record_setup(&mut self, problems: Vec<String>, last: &mut Option<Vec<String>>) {
        let ready = problems.is_empty();
        if last.as_ref() != Some(&problems) {
            for problem in &problems {
                tracing::error!(node = %self.node.name, provider = self.provider.name(), "{problem}");
            }
            if ready {
                tracing::info!(node = %self.node.name, provider = self.provider.name(), "provider set-up ready");
            } else {
                tracing::warn!(
                    node = %self.node.name,
                    retry_seconds = SETUP_RECHECK_INTERVAL.as_secs(),
                    "the node stays tainted provider-degraded until its set-up is ready"
                );
            }
        }
        *last = Some(problems);
        self.metrics
            .ready
            .with_label_values(&[&self.node.name, self.provider.name()])
            .set(i64::from(ready));
        if let Some(degraded) = self.health.setup_checked(ready) {
            self.set_degraded(degraded).await;
        }
    }

    /// Carries out what a rule decided for the pod `uid`.
    async fn apply(&mut self, uid: &str, effects: Vec<Effect>) {
        for effect in effects {
            let Some(pod) = self.tracked.get(uid).map(|t| t.pod.clone()) else {
                return;
            };
            match effect {
                Effect::Event {
                    severity,
                    reason,
                    note,
                } => {
                    let type_ = match severity {
                        Severity::Normal => EventType::Normal,
                        Severity::Warning => EventType::Warning,
                    };
                    self.event(&pod, type_, reason, note).await;
                }
                Effect::WriteStatus(status) | Effect::SyncStatus(status) => {
                    self.write_status(&pod, status).await;
                }
                Effect::WriteRefusal {
                    reason,
                    message,
                    since,
                } => self.write_refusal(&pod, reason, &message, since),
                Effect::Stop { grace, why } => self.start_stop(uid, grace, why),
                Effect::RemovePod => self.remove_pod(uid).await,
            }
        }
    }

    /// The node-wide settings the lifecycle rules read.
    fn rules(&self) -> Rules<'static> {
        Rules {
            max_permanent_failures: self.settings.max_permanent_failures,
            lost_after_syncs: self.settings.lost_after_syncs,
            provider: self.provider.name(),
        }
    }

    fn directory_insert(&self, pod: &Pod) {
        let mut directory = self.directory.write().unwrap_or_else(|p| p.into_inner());
        directory.insert(key(pod), pod.clone());
        self.metrics.pods.set(directory.len() as i64);
    }

    fn directory_remove(&self, pod: &Pod) {
        let mut directory = self.directory.write().unwrap_or_else(|p| p.into_inner());
        directory.remove(&key(pod));
        self.metrics.pods.set(directory.len() as i64);
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.node.name));
        let stream = watcher(pods, config).default_backoff();
        futures::pin_mut!(stream);
        let mut relisted: HashSet<String> = HashSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut last_sync = Instant::now();
        let mut last_fresh_sync = Instant::now();
        let (mut listed_once, mut last_adopt) = (false, Instant::now());
        let mut last_sweep = Instant::now();
        let mut outcomes = self.created_rx.take().expect("run is called once");
        let mut stops = self.stopped_rx.take().expect("run is called once");
        let mut syncs = self.synced_rx.take().expect("run is called once");
        let mut probe_runs = self.probed_rx.take().expect("run is called once");
        // A replica taking over starts from its own view of the provider: a degraded
        // taint the previous leader left is removed unless its set-up check finds a
        // problem, checked before the first pod is created and again until it is ready.
        let mut last_setup = None;
        let problems = Self::check_setup(self.provider.clone()).await;
        let mut setup_ready = problems.is_empty();
        self.record_setup(problems, &mut last_setup).await;
        if setup_ready {
            self.set_degraded(false).await;
        }
        let mut setup_recheck = tokio::time::interval_at(
            tokio::time::Instant::now() + SETUP_RECHECK_INTERVAL,
            SETUP_RECHECK_INTERVAL,
        );
        let (setup_tx, mut setup_rx) = tokio::sync::mpsc::channel::<Vec<String>>(1);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = setup_recheck.tick(), if !setup_ready => {
                    let (provider, tx) = (self.provider.clone(), setup_tx.clone());
                    tokio::spawn(async move {
                        let _ = tx.try_send(Self::check_setup(provider).await);
                    });
                }
                Some(problems) = setup_rx.recv() => {
                    setup_ready = problems.is_empty();
                    self.record_setup(problems, &mut last_setup).await;
                }
                Some(outcome) = outcomes.recv() => self.record_create(outcome).await,
                Some(outcome) = stops.recv() => self.record_stop(outcome).await,
                Some(outcome) = syncs.recv() => self.record_sync(outcome).await,
                Some(outcome) = probe_runs.recv() => self.record_probe(outcome).await,
                event = stream.next() => {
                    let Some(event) = event else { return };
                    match event {
                        Ok(watcher::Event::Init) => relisted.clear(),
                        Ok(watcher::Event::InitApply(pod)) => {
                            if let Some(uid) = uid(&pod) { relisted.insert(uid); }
                            self.observe(pod).await;
                        }
                        Ok(watcher::Event::InitDone) => {
                            let gone: Vec<String> = self.tracked.keys().filter(|u| !relisted.contains(*u)).cloned().collect();
                            for uid in gone { self.forget(&uid).await; }
                            if !self.synced {
                                listed_once = true;
                                last_adopt = Instant::now();
                                self.adopt().await;
                            }
                        }
                        Ok(watcher::Event::Apply(pod)) => self.observe(pod).await,
                        Ok(watcher::Event::Delete(pod)) => {
                            if let Some(uid) = uid(&pod) { self.forget(&uid).await; }
                        }
                        Err(error) => tracing::warn!(%error, "pod watch failed; retrying"),
                    }
                }
                _ = tick.tick() => {
                    if !self.synced {
                        // The first list of provider objects failed: try again, since nothing
                        // may be created before we know what exists.
                        if listed_once && last_adopt.elapsed() >= ADOPT_RETRY_INTERVAL {
                            last_adopt = Instant::now();
                            self.adopt().await;
                        }
                        continue;
                    }
                    self.readmit_awaiting().await;
                    self.launch_due().await;
                    self.start_due_probes();
                    self.retry_deletions().await;
                    if last_sweep.elapsed() >= self.settings.sweep_interval {
                        last_sweep = Instant::now();
                        self.sweep().await;
                    }
                    if last_sync.elapsed() >= self.settings.sync_interval {
                        last_sync = Instant::now();
                        last_fresh_sync = last_sync;
                        self.start_sync(false);
                    } else if self.tracked.values().any(|t| t.fresh) && last_fresh_sync.elapsed() >= FRESH_SYNC_INTERVAL {
                        last_fresh_sync = Instant::now();
                        self.start_sync(true);
                    }
                }
            }
        }
    }

    async fn observe(&mut self, pod: Pod) {
        let Some(uid) = uid(&pod) else { return };
        self.directory_insert(&pod);
        let deleting = pod.metadata.deletion_timestamp.is_some();
        if !self.tracked.contains_key(&uid) {
            let mut tracked = PodRecord::new(pod.clone(), Instant::now());
            if tracked.stage == Stage::NeedsCreate && !deleting {
                self.admit(&mut tracked).await;
            }
            self.tracked.insert(uid.clone(), tracked);
        }
        let Some(tracked) = self.tracked.get_mut(&uid) else {
            return;
        };
        tracked.pod = pod;
        if deleting && !tracked.deleting {
            tracked.deletion_seen(Instant::now());
            if self.synced {
                self.stop_and_remove(&uid).await;
            }
        }
    }

    /// Node-side admission of a newly seen pod: a refused one turns Failed with the
    /// reason (pod status and Event) and is never created at the provider.
    async fn admit(&self, tracked: &mut PodRecord) {
        let refusal = match self.judge(tracked) {
            Ok(()) => {
                tracked.awaiting_admission = false;
                return;
            }
            Err(None) => {
                tracked.awaiting_admission = true;
                return;
            }
            Err(Some(refusal)) => refusal,
        };
        tracked.awaiting_admission = false;
        tracked.refused = true;
        tracked.stage = Stage::Terminal;
        if matches!(refusal, Refusal::DaemonSet { .. }) {
            self.park(tracked, &refusal).await;
            return;
        }
        let message = refusal.message(&self.node.name);
        tracing::warn!(pod = %key(&tracked.pod), reason = refusal.reason(), "{message}");
        tracked.terminal = Some(TerminalPhase::Failed);
        self.event(
            &tracked.pod,
            EventType::Warning,
            refusal.reason(),
            message.clone(),
        )
        .await;
        self.write_status(
            &tracked.pod,
            status::provider_failed_status(refusal.reason(), &message),
        )
        .await;
    }

    /// The node-side admission rules in order: those of the pod alone (DaemonSet,
    /// namespace, taint, eligibility), then those of its workload (opt-in, budgets), then
    /// room. `Err(None)`: the cluster view does not know the pod's workload yet, ask again
    /// later; past [`UNDECIDED_LIMIT`] of a synced view that is a refusal. A pod an earlier
    /// process started runs already: only the first rules apply to it.
    fn judge(&self, tracked: &mut PodRecord) -> Result<(), Option<Refusal>> {
        let pod = &tracked.pod;
        self.admission.admit(pod).map_err(Some)?;
        if started_before(pod) {
            return Ok(());
        }
        let provider = spillway_common::config::Provider::parse(&self.node.provider);
        match self.view.judge(pod, provider) {
            Judgement::Admit => {}
            Judgement::Refuse(refusal) => return Err(Some(refusal)),
            Judgement::Undecided(why) => {
                if !self.view.is_synced() {
                    return Err(None);
                }
                let since = *tracked.undecided_since.get_or_insert_with(Instant::now);
                if since.elapsed() < UNDECIDED_LIMIT {
                    tracing::debug!(pod = %key(pod), %why, "admission waits for the cluster view");
                    return Err(None);
                }
                return Err(Some(Refusal::WorkloadUnknown {
                    why: format!("{why} after {} s", UNDECIDED_LIMIT.as_secs()),
                }));
            }
        }
        self.check_room(pod).map_err(Some)
    }

    /// Admits again the pods whose workload the cluster view did not know.
    async fn readmit_awaiting(&mut self) {
        let awaiting: Vec<String> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.awaiting_admission && !t.deleting)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in awaiting {
            let Some(mut tracked) = self.tracked.remove(&uid) else {
                continue;
            };
            self.admit(&mut tracked).await;
            self.tracked.insert(uid, tracked);
        }
    }

    /// Whether the pod fits what the node advertises beside the pods it admitted (not
    /// refused, not finished).
    fn check_room(&self, pod: &Pod) -> Result<(), Refusal> {
        let room = admission::NodeRoom {
            cpu_millis: u64::from(self.node.max_vcpu) * 1000,
            memory_bytes: spillway_common::quantity::bytes(&self.node.max_memory)
                .unwrap_or(u64::MAX),
            pods: u64::from(self.node.max_pods),
        };
        let mut used = admission::NodeUse::default();
        for other in self.tracked.values() {
            if other.refused || other.stage == Stage::Terminal {
                continue;
            }
            if let Some(spec) = other.pod.spec.as_ref() {
                used.add(&pod_resources::effective(spec));
            }
        }
        let needs = pod
            .spec
            .as_ref()
            .map(pod_resources::effective)
            .unwrap_or_default();
        admission::check_room(&needs, used, room)
    }

    /// A DaemonSet pod ends Pending for good: one Warning Event and a status that says
    /// why, written once (a pod parked by an earlier process is left as it is), and
    /// nothing at the provider. Failed, it would be replaced by the DaemonSet controller
    /// at once, again and again.
    async fn park(&self, tracked: &PodRecord, refusal: &Refusal) {
        let parked_before = tracked
            .pod
            .status
            .as_ref()
            .and_then(|s| s.reason.as_deref())
            == Some(admission::DAEMONSET_REASON);
        if parked_before {
            return;
        }
        let message = refusal.message(&self.node.name);
        tracing::warn!(pod = %key(&tracked.pod), reason = refusal.reason(), "{message}");
        self.event(
            &tracked.pod,
            EventType::Warning,
            refusal.reason(),
            message.clone(),
        )
        .await;
        self.write_status(
            &tracked.pod,
            status::parked_status(refusal.reason(), &message),
        )
        .await;
    }

    /// Says on the pod that the provider refuses to create it, since when and why (the
    /// `spillway.io/ProviderRefused` condition the controller fails pods over by). A
    /// strategic merge keeps the scheduler's conditions; once the pod runs, the node's
    /// status replaces the list without it.
    fn write_refusal(&self, pod: &Pod, reason: &str, message: &str, since: jiff::Timestamp) {
        let condition = serde_json::json!({
            "type": keys::PROVIDER_REFUSED_CONDITION,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": since.to_string(),
        });
        let (client, pod) = (self.client.clone(), pod.clone());
        tokio::spawn(async move {
            let Some(namespace) = pod.metadata.namespace.as_deref() else {
                return;
            };
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let pods: Api<Pod> = Api::namespaced(client, namespace);
            let patch =
                Patch::Strategic(serde_json::json!({"status": {"conditions": [condition]}}));
            let written = tokio::time::timeout(
                API_CALL_TIMEOUT,
                pods.patch_status(name, &PatchParams::default(), &patch),
            )
            .await;
            if !matches!(written, Ok(Ok(_))) {
                // The next refusal writes it again.
                tracing::warn!(pod = %key(&pod), "cannot write the ProviderRefused condition");
            }
        });
    }

    /// First full list: adopt provider objects of pods that exist, stop orphans.
    async fn adopt(&mut self) {
        let started = Instant::now();
        let remote = self.provider.list().await;
        self.provider_result("list", started, &remote).await;
        let remote = match remote {
            Ok(remote) => remote,
            Err(error) => {
                // Without knowing what exists we must not create anything: retry on the next relist.
                tracing::error!(%error, "cannot list provider objects; not adopting yet");
                return;
            }
        };
        let (mut adopted, mut orphans) = (0, 0);
        for (uid, remote_status) in &remote {
            match self.tracked.get_mut(uid) {
                Some(tracked) if !tracked.deleting && !tracked.refused => {
                    if tracked.stage == Stage::NeedsCreate {
                        tracked.stage = Stage::Launched;
                    }
                    adopted += 1;
                    let _ = remote_status;
                }
                _ => {
                    orphans += 1;
                    let started = Instant::now();
                    let result = self.provider.delete(uid, 0).await;
                    self.provider_result("delete", started, &result).await;
                    if let Err(error) = result {
                        tracing::warn!(%error, pod_uid = %uid, "cannot stop orphaned provider object");
                    }
                }
            }
        }
        tracing::info!(
            adopted,
            orphans,
            bound = self.tracked.len(),
            "provider state reconciled"
        );
        self.synced = true;
        let deleting: Vec<String> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.deleting)
            .map(|(u, _)| u.clone())
            .collect();
        for uid in deleting {
            self.stop_and_remove(&uid).await;
        }
        self.start_sync(false);
    }

    /// Starts a create for every pod that is due, each in a task of its own (bounded by
    /// `create_concurrency`), so events and status syncs go on while the provider works.
    async fn launch_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.create_due(now))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in due {
            let Some(tracked) = self.tracked.get_mut(&uid) else {
                continue;
            };
            tracked.stage = Stage::Creating;
            tracing::debug!(pod_uid = %uid, "create started");
            let pod = tracked.pod.clone();
            let (provider, slots, tx, client) = (
                self.provider.clone(),
                self.create_slots.clone(),
                self.created_tx.clone(),
                self.client.clone(),
            );
            let span = tracing::info_span!("create", pod = %key(&pod), pod_uid = %uid);
            tokio::spawn(
                async move {
                    let Ok(_permit) = slots.acquire_owned().await else {
                        return;
                    };
                    let started = Instant::now();
                    // The pod's ConfigMaps and Secrets, fetched once: what is missing holds
                    // the create back; the rest goes to the provider.
                    let fetched =
                        tokio::time::timeout(API_CALL_TIMEOUT, PodObjects::fetch(&client, &pod))
                            .await;
                    let attempt = match fetched {
                        Err(_) => CreateAttempt::Unchecked("the apiserver did not answer".into()),
                        Ok(Err(error)) => CreateAttempt::Unchecked(error.to_string()),
                        Ok(Ok(objects)) => {
                            let missing = objects.missing(&pod);
                            if missing.iter().any(|r| !r.optional) {
                                CreateAttempt::Held(missing)
                            } else {
                                let started = Instant::now();
                                let result = provider.create(&pod, &objects).await;
                                let _ = tx.send(CreateOutcome {
                                    uid,
                                    pod,
                                    elapsed: started.elapsed(),
                                    attempt: CreateAttempt::Asked {
                                        optional_missing: missing,
                                        result,
                                    },
                                });
                                return;
                            }
                        }
                    };
                    let _ = tx.send(CreateOutcome {
                        uid,
                        pod,
                        elapsed: started.elapsed(),
                        attempt,
                    });
                }
                .instrument(span),
            );
        }
    }

    async fn record_create(&mut self, outcome: CreateOutcome) {
        let CreateOutcome {
            uid,
            pod,
            elapsed,
            attempt,
        } = outcome;
        let (optional_missing, result) = match attempt {
            CreateAttempt::Asked {
                optional_missing,
                result,
            } => (optional_missing, result),
            CreateAttempt::Held(missing) => return self.hold(&uid, &pod, missing).await,
            CreateAttempt::Unchecked(error) => {
                tracing::warn!(%error, pod = %key(&pod), "cannot look up the pod's ConfigMaps and Secrets; retrying");
                return self.hold(&uid, &pod, Vec::new()).await;
            }
        };
        tracing::debug!(pod_uid = %uid, ok = result.is_ok(), "create finished");
        self.provider_result("create", Instant::now() - elapsed, &result)
            .await;
        let stop_in_flight = self.stopping.contains(&uid);
        let rules = self.rules();
        let Some(tracked) = self.tracked.get_mut(&uid) else {
            // The pod went away while it was being created: stop what was started.
            if result.is_ok() {
                self.start_stop(&uid, 0, StopFor::GonePod);
            }
            return;
        };
        let effects = tracked.created(
            &result,
            &optional_missing,
            rules,
            Now::current(),
            jitter(),
            stop_in_flight,
        );
        self.apply(&uid, effects).await;
    }

    /// A create held back (see [`PodRecord::held_back`]).
    async fn hold(&mut self, uid: &str, pod: &Pod, missing: Vec<ObjectRef>) {
        let stop_in_flight = self.stopping.contains(uid);
        let Some(tracked) = self.tracked.get_mut(uid) else {
            return;
        };
        let effects = tracked.held_back(missing, Now::current(), jitter(), stop_in_flight);
        for effect in &effects {
            if let Effect::Event { reason, .. } = effect {
                tracing::info!(pod = %key(pod), reason, "pod held back");
            }
        }
        self.apply(uid, effects).await;
    }

    /// Starts pulling the status of every launched pod (`only_fresh`: of those not seen
    /// running yet) in one batched provider call, unless a pull is in flight.
    fn start_sync(&mut self, only_fresh: bool) {
        if self.syncing {
            return;
        }
        let launched: Vec<String> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.wants_status(only_fresh))
            .map(|(uid, _)| uid.clone())
            .collect();
        if launched.is_empty() {
            return;
        }
        self.syncing = true;
        let (provider, tx) = (self.provider.clone(), self.synced_tx.clone());
        let span = tracing::info_span!("statuses", pods = launched.len());
        tokio::spawn(
            async move {
                let started = Instant::now();
                let result = provider.statuses(&launched).await;
                let _ = tx.send(SyncOutcome {
                    launched,
                    started,
                    result,
                });
            }
            .instrument(span),
        );
    }

    /// Applies a status pull: writes what changed, counts pods the provider lost.
    async fn record_sync(&mut self, outcome: SyncOutcome) {
        self.syncing = false;
        let SyncOutcome {
            launched,
            started,
            result,
        } = outcome;
        self.provider_result("statuses", started, &result).await;
        // Pods deleted or relaunched while the pull ran are no longer this pull's.
        let launched: Vec<String> = launched
            .into_iter()
            .filter(|uid| {
                self.tracked
                    .get(uid)
                    .is_some_and(|t| t.stage == Stage::Launched && !t.deleting)
            })
            .collect();
        let remote = match result {
            Ok(remote) => remote,
            Err(error) => {
                tracing::warn!(%error, "status sync failed");
                return;
            }
        };
        let now = Now::current();
        let now_rfc3339 = spillway_common::time::rfc3339(SystemTime::now());
        let rules = self.rules();
        let host_ip = self.node.address.clone();
        let mut writes = Vec::new();
        let mut other_effects = Vec::new();
        for uid in launched {
            let Some(tracked) = self.tracked.get_mut(&uid) else {
                continue;
            };
            tracing::debug!(pod_uid = %uid, restarts = tracked.restarts, "provider status");
            let effects = match remote.get(&uid) {
                // Created but not visible yet, or gone: after a few syncs it counts as lost.
                None => tracked.missing_from_provider(rules, now),
                Some(remote_status) => {
                    let probe = Probing {
                        node_reaches_pod: remote_status
                            .pod_ip
                            .as_deref()
                            .and_then(|ip| ip.parse().ok())
                            .and_then(|ip| self.provider.probe_target(ip))
                            .is_some(),
                        provider_exec: self.provider.runs_exec_probes(),
                    };
                    tracked.remote_status(remote_status, &host_ip, now, &now_rfc3339, probe)
                }
            };
            let pod = tracked.pod.clone();
            let (syncs, rest): (Vec<Effect>, Vec<Effect>) = effects
                .into_iter()
                .partition(|e| matches!(e, Effect::SyncStatus(_)));
            for effect in syncs {
                if let Effect::SyncStatus(status) = effect {
                    writes.push((uid.clone(), pod.clone(), status));
                }
            }
            other_effects.push((uid, rest));
        }
        for (uid, effects) in other_effects {
            self.apply(&uid, effects).await;
        }
        let client = self.client.clone();
        let failed: Vec<String> = futures::stream::iter(writes)
            .map(|(uid, pod, status)| {
                let client = client.clone();
                async move { (!write_pod_status(client, pod, status).await).then_some(uid) }
            })
            .buffer_unordered(STATUS_WRITE_CONCURRENCY)
            .filter_map(|failed| async move { failed })
            .collect()
            .await;
        // Written again on the next sync: a status write is never given up.
        for uid in failed {
            if let Some(tracked) = self.tracked.get_mut(&uid) {
                tracked.status_unwritten();
            }
        }
    }

    /// Starts every probe that is due, each in a task of its own against the pod's IP.
    fn start_due_probes(&mut self) {
        let now = Instant::now();
        for (uid, tracked) in &mut self.tracked {
            if !tracked.probing() {
                continue;
            }
            let ip = tracked
                .last_remote
                .as_ref()
                .and_then(|r| r.pod_ip.as_deref())
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
                .and_then(|ip| self.provider.probe_target(ip));
            let (Some(ip), Some(probes)) = (ip, tracked.probes.as_mut()) else {
                continue;
            };
            for (index, spec) in probes.take_due(now) {
                let (tx, http, uid) =
                    (self.probed_tx.clone(), self.probe_http.clone(), uid.clone());
                let slots = self.probe_slots.clone();
                let span = tracing::debug_span!("probe", pod_uid = %uid, container = %spec.container, kind = ?spec.kind);
                tokio::spawn(
                    async move {
                        let Ok(_permit) = slots.acquire_owned().await else {
                            return;
                        };
                        let run = prober::run(ip, &spec, &http).await;
                        let _ = tx.send(ProbeOutcome { uid, index, run });
                    }
                    .instrument(span),
                );
            }
        }
    }

    /// A probe run finished: its rules decide (see [`PodRecord::probe_finished`]).
    async fn record_probe(&mut self, outcome: ProbeOutcome) {
        let host_ip = self.node.address.clone();
        let Some(tracked) = self.tracked.get_mut(&outcome.uid) else {
            return;
        };
        let now_rfc3339 = spillway_common::time::rfc3339(SystemTime::now());
        let effects = tracked.probe_finished(
            outcome.index,
            &outcome.run,
            &host_ip,
            Now::current(),
            &now_rfc3339,
        );
        self.apply(&outcome.uid, effects).await;
    }

    /// Writes a one-off status (refusal, failure); a failed write is retried in the
    /// background until it lands or the pod is gone.
    async fn write_status(&self, pod: &Pod, status: Value) {
        let (client, pod) = (self.client.clone(), pod.clone());
        let span = tracing::debug_span!("write_status", pod = %key(&pod));
        tokio::spawn(
            async move {
                let mut attempt = 0;
                while !write_pod_status(client.clone(), pod.clone(), status.clone()).await {
                    attempt += 1;
                    tokio::time::sleep(backoff_with_jitter(attempt)).await;
                }
            }
            .instrument(span),
        );
    }

    /// Starts stopping a deleted pod's provider object (see
    /// [`PodRecord::stop_for_deletion`]); the Pod is removed once that succeeded (see
    /// [`Self::record_stop`]).
    async fn stop_and_remove(&mut self, uid: &str) {
        let Some(tracked) = self.tracked.get(uid) else {
            return;
        };
        let effects = tracked.stop_for_deletion(self.stopping.contains(uid));
        self.apply(uid, effects).await;
    }

    /// Stops the provider object of `uid` in a task of its own, unless a stop is in
    /// flight already.
    fn start_stop(&mut self, uid: &str, grace: i64, why: StopFor) {
        if !self.stopping.insert(uid.to_owned()) {
            return;
        }
        let (provider, tx, uid) = (
            self.provider.clone(),
            self.stopped_tx.clone(),
            uid.to_owned(),
        );
        let span = tracing::info_span!("stop", pod_uid = %uid, grace);
        tokio::spawn(
            async move {
                let started = Instant::now();
                let result = provider.delete(&uid, grace).await;
                let _ = tx.send(StopOutcome {
                    uid,
                    why,
                    started,
                    result,
                });
            }
            .instrument(span),
        );
    }

    /// A stop finished: a deleted pod's Pod goes now; a failure is retried with back-off.
    async fn record_stop(&mut self, outcome: StopOutcome) {
        let StopOutcome {
            uid,
            why,
            started,
            result,
        } = outcome;
        self.stopping.remove(&uid);
        self.provider_result("delete", started, &result).await;
        let stopped = matches!(result, Ok(()) | Err(ProviderError::NotFound(_)));
        match why {
            StopFor::GonePod if stopped => {
                self.stops_pending.remove(&uid);
            }
            StopFor::GonePod => {
                let attempts = self.stops_pending.get(&uid).map_or(1, |(a, _)| a + 1);
                self.stops_pending.insert(
                    uid.clone(),
                    (attempts, Instant::now() + backoff_with_jitter(attempts)),
                );
                if let Err(error) = result {
                    tracing::warn!(%error, pod_uid = %uid, "cannot stop the object of a deleted pod; retrying");
                }
            }
            StopFor::Restart => {
                if let Err(error) = &result
                    && !stopped
                {
                    tracing::warn!(%error, pod_uid = %uid, "cannot stop a container that failed its probe");
                }
                let Some(tracked) = self.tracked.get_mut(&uid) else {
                    return;
                };
                let now_rfc3339 = spillway_common::time::rfc3339(SystemTime::now());
                let effects = tracked.kill_finished(
                    stopped,
                    &self.node.address,
                    Now::current(),
                    &now_rfc3339,
                );
                self.apply(&uid, effects).await;
            }
            StopFor::DeletedPod => {
                // The Pod stays until its object is stopped: nothing is left running.
                if let Err(error) = &result
                    && !stopped
                {
                    tracing::warn!(%error, pod_uid = %uid, "cannot stop provider object; retrying");
                }
                let Some(tracked) = self.tracked.get_mut(&uid) else {
                    return;
                };
                let effects = tracked.deletion_stop_finished(stopped, Now::current(), jitter());
                self.apply(&uid, effects).await;
            }
        }
    }

    /// Removes a deleted pod's Pod (grace 0, UID precondition) once its object stopped.
    async fn remove_pod(&mut self, uid: &str) {
        let Some(tracked) = self.tracked.get(uid) else {
            return;
        };
        let pod = tracked.pod.clone();
        let Some(namespace) = pod.metadata.namespace.as_deref() else {
            return;
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let removal = tokio::time::timeout(
            API_CALL_TIMEOUT,
            pods.delete(pod.metadata.name.as_deref().unwrap_or_default(), &params),
        )
        .await;
        match removal {
            Ok(Ok(_)) => {}
            Ok(Err(kube::Error::Api(status))) if status.code == 404 || status.code == 409 => {}
            Ok(Err(error)) => {
                let wait = self.delete_failed(uid);
                tracing::warn!(%error, pod = %key(&pod), ?wait, "cannot remove pod; retrying");
                return;
            }
            Err(_) => {
                let wait = self.delete_failed(uid);
                tracing::warn!(pod = %key(&pod), ?wait, "removing the pod timed out; retrying");
                return;
            }
        }
        if let Some(t) = self.tracked.get_mut(uid) {
            t.removed();
        }
    }

    /// Schedules another try of a deletion that failed; returns the wait.
    fn delete_failed(&mut self, uid: &str) -> Duration {
        self.tracked.get_mut(uid).map_or(Duration::ZERO, |t| {
            t.deletion_failed(Now::current(), jitter())
        })
    }

    /// Retries deletions whose time came: pods being deleted whose stop or removal
    /// failed, and objects of pods already gone from the API.
    async fn retry_deletions(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.deletion_due(now))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in due {
            self.stop_and_remove(&uid).await;
        }
        let stops: Vec<String> = self
            .stops_pending
            .iter()
            .filter(|(_, (_, next))| *next <= now)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stops {
            self.start_stop(&uid, 0, StopFor::GonePod);
        }
    }

    /// Removes provider objects of pods this node no longer has (also those left by a
    /// crash at any point of a create, or by a stop that was lost).
    async fn sweep(&mut self) {
        let live: HashSet<String> = self.tracked.keys().cloned().collect();
        let started = Instant::now();
        let result = self.provider.sweep(&live).await;
        self.provider_result("sweep", started, &result).await;
        match result {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "orphaned provider objects removed"),
            Err(error) => tracing::warn!(%error, "sweep failed; trying again later"),
        }
    }

    /// The Pod is gone from the API: make sure its provider object is too.
    async fn forget(&mut self, uid: &str) {
        let Some(tracked) = self.tracked.remove(uid) else {
            return;
        };
        self.directory_remove(&tracked.pod);
        self.start_stop(uid, 0, StopFor::GonePod);
    }
}

/// How often a failed first list of provider objects is retried.
pub const ADOPT_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// How often pods launched but not yet running are polled, between full syncs.
pub const FRESH_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Probe runs in flight at once.
const PROBE_CONCURRENCY: usize = 64;
/// The longest the provider's set-up check may take.
const SETUP_CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a set-up that was not ready is checked again.
const SETUP_RECHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Status patches in flight at once during a sync.
const STATUS_WRITE_CONCURRENCY: usize = 16;

/// Writes a pod's status; false when it was not written.
async fn write_pod_status(client: Client, pod: Pod, status: Value) -> bool {
    let Some(namespace) = pod.metadata.namespace.as_deref() else {
        return true;
    };
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let patch = Patch::Merge(serde_json::json!({"status": status}));
    let params = PatchParams::default();
    match tokio::time::timeout(API_CALL_TIMEOUT, pods.patch_status(name, &params, &patch)).await {
        Ok(Ok(_)) => true,
        // Gone: nothing left to write to.
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => true,
        Ok(Err(error)) => {
            tracing::warn!(%error, pod = %key(&pod), "cannot write pod status; retrying");
            false
        }
        Err(_) => {
            tracing::warn!(pod = %key(&pod), "cannot write pod status: the apiserver did not answer; retrying");
            false
        }
    }
}
