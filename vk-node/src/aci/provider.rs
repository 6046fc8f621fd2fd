//! The ACI provider: one container group per pod, named from the pod's namespace, name and
//! UID (so a create retried after a crash finds the group it already made, and never makes
//! a second) and tagged with the pod UID, node and cluster id (so a restarted node adopts
//! its groups and deletes only its own orphans). Creates wait their turn under the
//! regional create quota; statuses come from one list call per sync.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::core::v1::Pod;

use super::arm::{ArmApi, ArmClient, DEFAULT_ENDPOINT, RetryPolicy};
use super::arm_types::ContainerGroup;
use super::credentials::{CredentialChain, TokenFile, Tokens};
use super::session_pump;
use super::status::{log_lines, remote_status};
use super::translate::{self, AciSettings, TranslateError};
use super::{TAG_CLUSTER, TAG_NODE, TAG_POD_UID};
use crate::pod_objects::PodObjects;
use crate::provider::{
    ExecCommand, LogChunk, LogOptions, Provider, ProviderError, RemotePhase, RemoteStatus,
    SessionEnd, SessionIo, first_terminal_size, pod_uid,
};
use crate::session_socket::Opening;

/// The one program ACI's exec can run: its command is a single string it does not
/// split, so an argv of more than one word is refused rather than joined.
pub fn single_program(argv: &[String]) -> Result<&str, ProviderError> {
    match argv {
        [program] if !program.is_empty() && !program.contains(char::is_whitespace) => Ok(program),
        _ => Err(ProviderError::Invalid(format!(
            "ACI's exec runs one program without arguments (it takes a single command \
             string and does not split it), so {argv:?} cannot be run as given; run a shell \
             (kubectl exec -it POD -- /bin/sh) and type the command there"
        ))),
    }
}

/// ACI flags (the cluster id and default sizes are shared with Fargate: `--cluster-id`,
/// `--default-cpu`, `--default-memory`).
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Azure Container Instances")]
pub struct AciArgs {
    /// Azure subscription the container groups are created in.
    #[arg(long, env = "AZURE_SUBSCRIPTION_ID")]
    pub aci_subscription_id: Option<String>,
    /// Resource group the node's container groups live in (the node lists it, and
    /// deletes the groups tagged with this node and cluster id whose pods are gone).
    #[arg(long, env = "SPILLWAY_ACI_RESOURCE_GROUP")]
    pub aci_resource_group: Option<String>,
    /// Azure region of the groups.
    #[arg(long, default_value = "westeurope", env = "SPILLWAY_ACI_LOCATION")]
    pub aci_location: String,
    /// Subnet resource ids (delegated to Microsoft.ContainerInstance/containerGroups) the
    /// groups join, comma-separated. Required to run pods: without them a group gets no
    /// address in the cluster's network (none public either), so the node stays tainted.
    #[arg(long, value_delimiter = ',', env = "SPILLWAY_ACI_SUBNET_IDS")]
    pub aci_subnet_ids: Vec<String>,
    /// Container group creates allowed per `--aci-create-quota-seconds` (ACI's regional
    /// quota is about 100 per 5 minutes); creates beyond it wait their turn, their pods
    /// Pending with a ProviderThrottled Event.
    #[arg(long, default_value_t = 100, env = "SPILLWAY_ACI_CREATE_QUOTA",
        value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub aci_create_quota: u32,
    /// The window of `--aci-create-quota`, seconds.
    #[arg(long, default_value_t = 300, env = "SPILLWAY_ACI_CREATE_QUOTA_SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub aci_create_quota_seconds: u64,
    /// ARM endpoint; unset in production (a local test endpoint otherwise).
    #[arg(long, env = "SPILLWAY_ARM_ENDPOINT")]
    pub arm_endpoint: Option<String>,
    /// A file holding an ARM bearer token that someone else keeps fresh, read at every
    /// request; without it tokens come from the Azure credential chain (workload
    /// identity, client secret from AZURE_CLIENT_SECRET, managed identity, Azure CLI).
    #[arg(long, env = "SPILLWAY_AZURE_TOKEN_FILE")]
    pub azure_token_file: Option<PathBuf>,
}

/// How long a create waits in line for a quota slot before it hands the pod back to be
/// retried (a slot is about 3 s apart under the default quota).
const QUOTA_WAIT: Duration = Duration::from_secs(10);

/// The create quota: a burst of `creates`, refilled evenly over `window`.
pub struct CreateQuota {
    limiter: DefaultDirectRateLimiter,
    creates: u32,
    window: Duration,
}

impl CreateQuota {
    /// `creates` per `window`.
    pub fn new(creates: u32, window: Duration) -> Self {
        let creates = creates.max(1);
        let period = (window / creates).max(Duration::from_nanos(1));
        let burst = std::num::NonZeroU32::new(creates).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(burst))
            .allow_burst(burst);
        Self {
            limiter: RateLimiter::direct(quota),
            creates,
            window,
        }
    }

    /// Takes a slot, waiting up to `QUOTA_WAIT` for one; `Throttled` when the line is
    /// longer than that.
    pub async fn take(&self) -> Result<(), ProviderError> {
        use governor::clock::{Clock, DefaultClock};
        match self.limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                if wait > QUOTA_WAIT {
                    return Err(ProviderError::Throttled(format!(
                        "queued under the ACI create quota ({} per {}s): the next slot is in {}s",
                        self.creates,
                        self.window.as_secs(),
                        wait.as_secs().max(1)
                    )));
                }
                self.limiter.until_ready().await;
                Ok(())
            }
        }
    }
}

/// The provider, generic over the ARM calls so its logic is tested with a fake.
pub struct AciProvider<A: ArmApi> {
    api: A,
    settings: AciSettings,
    quota: CreateQuota,
    /// Pod UID → container group name, for the groups this node knows it owns.
    groups: Mutex<HashMap<String, String>>,
}

impl AciProvider<ArmClient<Tokens>> {
    /// The real provider from flags.
    pub async fn from_args(args: &AciArgs, settings: AciSettings) -> Result<Self, String> {
        let subscription = args
            .aci_subscription_id
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or("--aci-subscription-id (or AZURE_SUBSCRIPTION_ID) is required with --vk-provider aci")?;
        let resource_group = args
            .aci_resource_group
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or("--aci-resource-group is required with --vk-provider aci")?;
        let tokens = match &args.azure_token_file {
            Some(path) => Tokens::File(TokenFile(path.clone())),
            None => Tokens::Chain(CredentialChain::from_environment()?),
        };
        let endpoint = args.arm_endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT);
        let api = ArmClient::new(
            endpoint,
            &subscription,
            &resource_group,
            Arc::new(tokens),
            RetryPolicy::default(),
        )?;
        let quota = CreateQuota::new(
            args.aci_create_quota,
            Duration::from_secs(args.aci_create_quota_seconds),
        );
        Ok(Self::new(api, settings, quota))
    }
}

/// Validated settings from flags; errors name the flag.
pub fn settings_from_args(
    args: &AciArgs,
    fargate: &crate::fargate::provider::FargateArgs,
    node_name: &str,
    cluster_id: &str,
) -> Result<AciSettings, String> {
    use spillway_common::quantity;
    let default_cpu_millis =
        quantity::cpu_millis(&fargate.default_cpu).map_err(|e| format!("--default-cpu: {e}"))?;
    let default_memory_bytes =
        quantity::bytes(&fargate.default_memory).map_err(|e| format!("--default-memory: {e}"))?;
    if let Some(bad) = args
        .aci_subnet_ids
        .iter()
        .find(|id| !id.to_ascii_lowercase().contains("/subnets/"))
    {
        return Err(format!(
            "--aci-subnet-ids: {bad:?} is not a subnet resource id (/subscriptions/…/virtualNetworks/…/subnets/…)"
        ));
    }
    Ok(AciSettings {
        subscription_id: args.aci_subscription_id.clone().unwrap_or_default(),
        resource_group: args.aci_resource_group.clone().unwrap_or_default(),
        location: args.aci_location.clone(),
        subnet_ids: args.aci_subnet_ids.clone(),
        node_name: node_name.to_owned(),
        cluster_id: cluster_id.to_owned(),
        default_cpu_millis,
        default_memory_bytes,
        price: spillway_common::config::PricingConfig::default().aci,
    })
}

fn translate_error(error: TranslateError) -> ProviderError {
    match error {
        // The node checked before creating; an object gone since may come back.
        TranslateError::Env(_)
        | TranslateError::MissingSecret { .. }
        | TranslateError::MissingVolumeSource { .. } => ProviderError::Transient(error.to_string()),
        TranslateError::NoContainers => ProviderError::Invalid(error.to_string()),
    }
}

impl<A: ArmApi> AciProvider<A> {
    /// A provider over `api`.
    pub fn new(api: A, settings: AciSettings, quota: CreateQuota) -> Self {
        Self {
            api,
            settings,
            quota,
            groups: Mutex::new(HashMap::new()),
        }
    }

    fn recorded(&self, uid: &str) -> Option<String> {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .cloned()
    }

    fn record(&self, uid: &str, name: &str) {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.to_owned(), name.to_owned());
    }

    fn forget(&self, uid: &str) {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }

    /// Whether a listed group is this node's, and for which pod.
    fn owned_pod<'g>(&self, group: &'g ContainerGroup) -> Option<&'g str> {
        let tags = group.tags.as_ref()?;
        let ours = tags.get(TAG_CLUSTER)? == &self.settings.cluster_id
            && tags.get(TAG_NODE)? == &self.settings.node_name;
        ours.then(|| tags.get(TAG_POD_UID).map(String::as_str))?
    }

    /// This node's groups, by pod UID; records each.
    async fn owned_groups(&self) -> Result<HashMap<String, ContainerGroup>, ProviderError> {
        let mut owned = HashMap::new();
        for group in self.api.list_groups().await? {
            let (Some(uid), Some(name)) = (self.owned_pod(&group), group.name.clone()) else {
                continue;
            };
            self.record(uid, &name);
            owned.insert(uid.to_owned(), group);
        }
        Ok(owned)
    }
}

impl<A: ArmApi> Provider for AciProvider<A> {
    fn name(&self) -> &'static str {
        "aci"
    }

    async fn setup_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.settings.subnet_ids.is_empty() {
            problems.push(
                "no --aci-subnet-ids: a container group needs a subnet delegated to \
                 Microsoft.ContainerInstance/containerGroups in the cluster's VNet to get an \
                 address pods and Services can reach (docs/aks.md)"
                    .to_owned(),
            );
        }
        problems.extend(self.api.setup_problems(&self.settings.location).await);
        problems
    }

    async fn create(&self, pod: &Pod, objects: &PodObjects) -> Result<(), ProviderError> {
        let uid = pod_uid(pod)?;
        let meta = &pod.metadata;
        let name = translate::group_name(
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or_default(),
            &uid,
        );
        // Idempotent: the name is the pod's, so a group by it is this pod's group.
        if let Some(existing) = self.api.get_group(&name).await? {
            if remote_status(&uid, &existing).phase != RemotePhase::Stopped {
                self.record(&uid, &name);
                return Ok(());
            }
            // A relaunch (restartPolicy): the stopped group goes, a fresh one comes.
            match self.api.delete_group(&name).await {
                Ok(()) | Err(ProviderError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        let request =
            translate::translate(pod, &self.settings, objects).map_err(translate_error)?;
        self.quota.take().await?;
        self.api.put_group(&request.name, &request.group).await?;
        self.record(&uid, &request.name);
        Ok(())
    }

    async fn delete(&self, pod_uid: &str, _grace_seconds: i64) -> Result<(), ProviderError> {
        // ACI has no grace period: deleting a group stops its containers.
        let name = match self.recorded(pod_uid) {
            Some(name) => name,
            None => match self.owned_groups().await?.get(pod_uid) {
                Some(group) => group.name.clone().unwrap_or_default(),
                None => return Err(ProviderError::NotFound(pod_uid.to_owned())),
            },
        };
        // The record goes only once ARM took the delete, so a failed one is retried.
        let result = self.api.delete_group(&name).await;
        match result {
            Ok(()) => {
                self.forget(pod_uid);
                Ok(())
            }
            Err(ProviderError::NotFound(message)) => {
                self.forget(pod_uid);
                Err(ProviderError::NotFound(message))
            }
            Err(error) => Err(error),
        }
    }

    async fn sweep(&self, live: &HashSet<String>) -> Result<usize, ProviderError> {
        let mut removed = 0;
        for (uid, group) in self.owned_groups().await? {
            if live.contains(&uid) {
                continue;
            }
            let name = group.name.unwrap_or_default();
            tracing::warn!(pod_uid = %uid, group = %name, "orphaned container group; deleting it");
            match self.api.delete_group(&name).await {
                Ok(()) | Err(ProviderError::NotFound(_)) => {
                    self.forget(&uid);
                    removed += 1;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(removed)
    }

    async fn list(&self) -> Result<HashMap<String, RemoteStatus>, ProviderError> {
        Ok(self
            .owned_groups()
            .await?
            .iter()
            .map(|(uid, group)| (uid.clone(), remote_status(uid, group)))
            .collect())
    }

    async fn statuses(
        &self,
        pod_uids: &[String],
    ) -> Result<HashMap<String, RemoteStatus>, ProviderError> {
        let wanted: HashSet<&String> = pod_uids.iter().collect();
        Ok(self
            .owned_groups()
            .await?
            .iter()
            .filter(|(uid, _)| wanted.contains(uid))
            .map(|(uid, group)| (uid.clone(), remote_status(uid, group)))
            .collect())
    }

    async fn exec(
        &self,
        pod_uid: &str,
        container: &str,
        command: &ExecCommand,
        mut io: SessionIo,
    ) -> Result<SessionEnd, ProviderError> {
        let program = single_program(&command.argv)?;
        let name = self.recorded(pod_uid).ok_or_else(|| {
            ProviderError::NotFound(format!("no container group for pod {pod_uid}"))
        })?;
        let size = first_terminal_size(&mut io, command.tty).await;
        let grant = self
            .api
            .exec_command(&name, container, program, size)
            .await?;
        let socket =
            crate::session_socket::open(&grant.uri, Opening::FirstMessage(&grant.password)).await?;
        Ok(session_pump::pump(socket, io, true).await)
    }

    async fn attach(
        &self,
        pod_uid: &str,
        container: &str,
        _tty: bool,
        io: SessionIo,
    ) -> Result<SessionEnd, ProviderError> {
        let name = self.recorded(pod_uid).ok_or_else(|| {
            ProviderError::NotFound(format!("no container group for pod {pod_uid}"))
        })?;
        let grant = self.api.attach(&name, container).await?;
        let socket =
            crate::session_socket::open(&grant.uri, Opening::AuthorizationHeader(&grant.password))
                .await?;
        Ok(session_pump::pump(socket, io, false).await)
    }

    async fn logs(
        &self,
        pod_uid: &str,
        container: &str,
        options: &LogOptions,
        _from: Option<&str>,
    ) -> Result<LogChunk, ProviderError> {
        let name = self.recorded(pod_uid).ok_or_else(|| {
            ProviderError::NotFound(format!("no container group for pod {pod_uid}"))
        })?;
        let content = self
            .api
            .container_logs(&name, container, options.tail_lines)
            .await?;
        // ARM serves a container's log whole (bounded by ACI itself) and has no cursor:
        // one chunk, which a follower re-reads.
        let mut lines = log_lines(&content);
        if let Some(since) = options.since_seconds {
            let from = spillway_common::time::now_millis() - since.saturating_mul(1000);
            lines.retain(|l| l.timestamp_ms >= from);
        }
        if let Some(limit) = options.limit_bytes {
            let mut bytes = 0usize;
            lines.retain(|l| {
                bytes = bytes.saturating_add(l.message.len() + 1);
                bytes <= limit
            });
        }
        Ok(LogChunk {
            lines,
            ..LogChunk::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aci::arm_types::ContainerGroup;
    use serde_json::json;
    use spillway_common::config::PricingConfig;

    /// Container groups in memory, counting the calls that matter.
    #[derive(Default)]
    struct FakeArm {
        groups: Mutex<HashMap<String, ContainerGroup>>,
        puts: Mutex<u32>,
        fail_deletes: Mutex<u32>,
    }

    impl ArmApi for FakeArm {
        async fn setup_problems(&self, _location: &str) -> Vec<String> {
            Vec::new()
        }
        async fn put_group(
            &self,
            name: &str,
            group: &ContainerGroup,
        ) -> Result<ContainerGroup, ProviderError> {
            *self.puts.lock().unwrap() += 1;
            let mut stored = group.clone();
            stored.name = Some(name.to_owned());
            stored.properties.instance_view = Some(json!({"state": "Running"}));
            self.groups
                .lock()
                .unwrap()
                .insert(name.to_owned(), stored.clone());
            Ok(stored)
        }
        async fn get_group(&self, name: &str) -> Result<Option<ContainerGroup>, ProviderError> {
            Ok(self.groups.lock().unwrap().get(name).cloned())
        }
        async fn list_groups(&self) -> Result<Vec<ContainerGroup>, ProviderError> {
            Ok(self.groups.lock().unwrap().values().cloned().collect())
        }
        async fn delete_group(&self, name: &str) -> Result<(), ProviderError> {
            let mut failing = self.fail_deletes.lock().unwrap();
            if *failing > 0 {
                *failing -= 1;
                return Err(ProviderError::Throttled("429".into()));
            }
            match self.groups.lock().unwrap().remove(name) {
                Some(_) => Ok(()),
                None => Err(ProviderError::NotFound(name.into())),
            }
        }
        async fn container_logs(
            &self,
            _: &str,
            _: &str,
            _: Option<usize>,
        ) -> Result<String, ProviderError> {
            Ok("2026-11-29T10:00:00Z one\n2026-11-29T10:00:01Z two\n".into())
        }
    }

    fn settings(node: &str, cluster: &str) -> AciSettings {
        AciSettings {
            node_name: node.into(),
            cluster_id: cluster.into(),
            ..AciSettings::offline(PricingConfig::default().aci)
        }
    }

    fn provider(api: FakeArm, node: &str, cluster: &str) -> AciProvider<FakeArm> {
        AciProvider::new(
            api,
            settings(node, cluster),
            CreateQuota::new(100, Duration::from_secs(300)),
        )
    }

    fn pod(uid: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("web-{uid}"), "namespace": "shop", "uid": uid},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn create_is_idempotent_and_a_restarted_node_adopts_its_groups() {
        let node = provider(FakeArm::default(), "spillway-aci", "prod");
        node.create(&pod("u1"), &PodObjects::default())
            .await
            .unwrap();
        node.create(&pod("u1"), &PodObjects::default())
            .await
            .unwrap();
        assert_eq!(*node.api.puts.lock().unwrap(), 1, "one group per pod");
        // A new process over the same ARM state: list adopts, create adds nothing.
        let restarted = AciProvider::new(
            node.api,
            settings("spillway-aci", "prod"),
            CreateQuota::new(100, Duration::from_secs(300)),
        );
        let listed = restarted.list().await.unwrap();
        assert_eq!(listed["u1"].phase, RemotePhase::Running);
        restarted
            .create(&pod("u1"), &PodObjects::default())
            .await
            .unwrap();
        assert_eq!(*restarted.api.puts.lock().unwrap(), 1);
        restarted.delete("u1", 30).await.unwrap();
        assert!(restarted.api.groups.lock().unwrap().is_empty());
        assert!(matches!(
            restarted.delete("u1", 30).await,
            Err(ProviderError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn the_sweep_deletes_only_this_clusters_and_nodes_orphans() {
        let api = FakeArm::default();
        let other_cluster = provider(FakeArm::default(), "spillway-aci", "staging");
        other_cluster
            .create(&pod("theirs"), &PodObjects::default())
            .await
            .unwrap();
        api.groups
            .lock()
            .unwrap()
            .extend(other_cluster.api.groups.lock().unwrap().drain());
        let node = provider(api, "spillway-aci", "prod");
        node.create(&pod("live"), &PodObjects::default())
            .await
            .unwrap();
        node.create(&pod("gone"), &PodObjects::default())
            .await
            .unwrap();
        let live = HashSet::from(["live".to_owned()]);
        assert_eq!(node.sweep(&live).await.unwrap(), 1);
        let mut left: Vec<String> = node.api.groups.lock().unwrap().keys().cloned().collect();
        left.sort();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.iter().any(|n| n.contains("theirs")));
        assert!(left.iter().any(|n| n.contains("web-live")));
    }

    #[tokio::test]
    async fn a_failed_delete_keeps_the_record_so_the_retry_finds_the_group() {
        let api = FakeArm::default();
        *api.fail_deletes.lock().unwrap() = 1;
        let node = provider(api, "spillway-aci", "prod");
        node.create(&pod("u1"), &PodObjects::default())
            .await
            .unwrap();
        assert!(node.delete("u1", 0).await.unwrap_err().is_retryable());
        assert!(node.recorded("u1").is_some());
        node.delete("u1", 0).await.unwrap();
        assert!(node.api.groups.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn creates_beyond_the_quota_wait_or_are_handed_back_throttled() {
        let quota = CreateQuota::new(2, Duration::from_secs(300));
        quota.take().await.unwrap();
        quota.take().await.unwrap();
        // The next slot is 150 s away: far beyond the wait, so the pod is handed back.
        let error = quota.take().await.unwrap_err();
        assert!(matches!(error, ProviderError::Throttled(_)), "{error}");
        assert!(error.to_string().contains("2 per 300s"), "{error}");
    }

    #[test]
    fn exec_runs_one_program_and_refuses_arguments_rather_than_joining_them() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(single_program(&argv(&["/bin/sh"])).unwrap(), "/bin/sh");
        for refused in [&["ls", "/tmp"][..], &["echo hi"][..], &[][..]] {
            let error = single_program(&argv(refused)).unwrap_err();
            assert!(matches!(error, ProviderError::Invalid(_)));
            assert!(error.to_string().contains("one program without arguments"));
        }
    }

    #[tokio::test]
    async fn logs_keep_their_timestamps_and_honour_limit_bytes() {
        let node = provider(FakeArm::default(), "spillway-aci", "prod");
        node.create(&pod("u1"), &PodObjects::default())
            .await
            .unwrap();
        let all = node
            .logs("u1", "app", &LogOptions::default(), None)
            .await
            .unwrap()
            .lines;
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].message, "two");
        let limited = node
            .logs(
                "u1",
                "app",
                &LogOptions {
                    limit_bytes: Some(4),
                    ..LogOptions::default()
                },
                None,
            )
            .await
            .unwrap()
            .lines;
        assert_eq!(limited.len(), 1);
    }
}
