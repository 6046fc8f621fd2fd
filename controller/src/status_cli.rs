//! `spillway status`: lists the cluster live through the kubeconfig, builds the same index
//! the webhook and controller keep, and prints one row per opted-in workload plus the
//! cluster line (a table, or `-o json`).

use std::path::PathBuf;

use crate::pod_store;
use clap::{Args, ValueEnum};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, ListParams};
use spillway_cluster::index::ClusterIndex;
use spillway_common::config::{ConfigError, OperatorConfig};

use crate::snapshot::PodView;
use crate::status::{self, Status};

/// Output format.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// A table for people.
    Table,
    /// `{"workloads": […], "cluster": {…}}`.
    Json,
}

/// Flags of `spillway status`.
#[derive(Args, Clone, Debug)]
pub struct StatusArgs {
    /// Only workloads of this namespace, listed there alone: a Role in it that may list
    /// pods, replicasets, deployments and horizontalpodautoscalers is enough (the
    /// cluster line needs to list nodes, and says unknown without).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
    /// Operator config file for the default provider, prices and budget. Without it the
    /// config the cluster runs with is read: `--config-map`, else the one ConfigMap
    /// labelled `app.kubernetes.io/name=spillway` with a `config.yaml` (the chart's); the
    /// defaults when there is none or it cannot be read (said on stderr).
    #[arg(long, env = "SPILLWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// The ConfigMap holding the operator config, `NAMESPACE/NAME` (key `config.yaml`).
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with = "config")]
    pub config_map: Option<String>,
    /// Watch: print the status again every `--interval-seconds` until interrupted.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Seconds between two prints with `-w`.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval_seconds: u64,
}

/// Where the config in a status came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--config`.
    File(PathBuf),
    /// A ConfigMap, `namespace/name`.
    ConfigMap(String),
    /// None found: the defaults, and why.
    Defaults(String),
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::File(path) => write!(f, "config from {}", path.display()),
            ConfigSource::ConfigMap(name) => write!(f, "config from ConfigMap {name}"),
            ConfigSource::Defaults(why) => write!(f, "default config ({why})"),
        }
    }
}

/// The operator config the status is computed with, and where it came from.
pub async fn operator_config(
    args: &StatusArgs,
    client: &Client,
) -> Result<(OperatorConfig, ConfigSource), StatusError> {
    use k8s_openapi::api::core::v1::ConfigMap;
    if let Some(path) = &args.config {
        return Ok((
            OperatorConfig::load(path)?,
            ConfigSource::File(path.clone()),
        ));
    }
    let from_map =
        |map: &ConfigMap| -> Option<Result<(OperatorConfig, ConfigSource), StatusError>> {
            let text = map.data.as_ref()?.get("config.yaml")?;
            let name = format!(
                "{}/{}",
                map.metadata.namespace.as_deref().unwrap_or_default(),
                map.metadata.name.as_deref().unwrap_or_default()
            );
            Some(
                OperatorConfig::from_yaml(text, std::path::Path::new(&name))
                    .map(|config| (config, ConfigSource::ConfigMap(name)))
                    .map_err(StatusError::from),
            )
        };
    if let Some(wanted) = &args.config_map {
        let (namespace, name) = wanted.split_once('/').ok_or_else(|| {
            StatusError::ConfigMap(format!("--config-map {wanted:?}: expected NAMESPACE/NAME"))
        })?;
        let map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get(name)
            .await
            .map_err(|e| StatusError::ConfigMap(format!("--config-map {wanted}: {e}")))?;
        return from_map(&map).unwrap_or_else(|| {
            Err(StatusError::ConfigMap(format!(
                "--config-map {wanted}: no config.yaml key"
            )))
        });
    }
    let labelled = ListParams::default().labels("app.kubernetes.io/name=spillway");
    let maps = match Api::<ConfigMap>::all(client.clone()).list(&labelled).await {
        Ok(list) => list.items,
        Err(error) => {
            return Ok((
                OperatorConfig::default(),
                ConfigSource::Defaults(format!(
                    "cannot list Spillway's ConfigMaps: {error}; give --config-map or --config"
                )),
            ));
        }
    };
    let candidates: Vec<&ConfigMap> = maps
        .iter()
        .filter(|m| {
            m.data
                .as_ref()
                .is_some_and(|d| d.contains_key("config.yaml"))
        })
        .collect();
    match candidates.as_slice() {
        [one] => from_map(one).expect("it has config.yaml"),
        [] => Ok((
            OperatorConfig::default(),
            ConfigSource::Defaults("no Spillway ConfigMap in the cluster".into()),
        )),
        several => {
            let names: Vec<String> = several
                .iter()
                .map(|m| {
                    format!(
                        "{}/{}",
                        m.metadata.namespace.as_deref().unwrap_or_default(),
                        m.metadata.name.as_deref().unwrap_or_default()
                    )
                })
                .collect();
            Ok((
                OperatorConfig::default(),
                ConfigSource::Defaults(format!(
                    "several Spillway ConfigMaps ({}): name one with --config-map",
                    names.join(", ")
                )),
            ))
        }
    }
}

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The config was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The cluster could not be listed.
    #[error("listing the cluster: {0}")]
    List(#[from] kube::Error),
    /// The named ConfigMap could not be used.
    #[error("{0}")]
    ConfigMap(String),
    /// Listing every namespace was refused.
    #[error("listing the cluster: {0}; with access to one namespace only, give -n NAMESPACE")]
    Forbidden(#[source] kube::Error),
}

/// Every object of a kind, in `namespace` or cluster-wide, page by page.
async fn list_all<K>(
    client: &Client,
    namespace: Option<&str>,
    params: &ListParams,
) -> Result<Vec<K>, kube::Error>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    list_pages(api, params).await
}

async fn list_pages<K>(api: Api<K>, params: &ListParams) -> Result<Vec<K>, kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = params.clone().limit(500);
    loop {
        let page = api.list(&params).await?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        out.extend(page.items);
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

fn forbidden(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 403)
}

/// Reads the cluster and computes the status, with where its config came from. With
/// `-n`, only that namespace's workloads are listed (a namespace-scoped Role is enough);
/// Nodes are cluster-scoped, and when the caller may not list them the cluster line and
/// the virtual nodes are shown as unknown instead of failing.
pub async fn read(args: &StatusArgs) -> Result<(Status, ConfigSource), StatusError> {
    let client = spillway_common::kube_access::client().await?;
    let (config, source) = operator_config(args, &client).await?;
    let all = ListParams::default();
    let namespace = args.namespace.as_deref();
    let listed = futures::try_join!(
        list_all::<Pod>(&client, namespace, &all),
        list_all::<ReplicaSet>(&client, namespace, &all),
        list_all::<Deployment>(&client, namespace, &all),
        list_all::<HorizontalPodAutoscaler>(&client, namespace, &all),
    );
    let (pods, replicasets, deployments, hpas) = match listed {
        Ok(listed) => listed,
        Err(error) if forbidden(&error) && namespace.is_none() => {
            return Err(StatusError::Forbidden(error));
        }
        Err(error) => return Err(error.into()),
    };
    let nodes = match list_pages(Api::<Node>::all(client.clone()), &all).await {
        Ok(nodes) => Some(nodes),
        Err(error) if forbidden(&error) && namespace.is_some() => None,
        Err(error) => return Err(error.into()),
    };
    let nodes_listed = nodes.is_some();
    let nodes = nodes.unwrap_or_default();
    let mut index = ClusterIndex::new();
    nodes.iter().for_each(|n| index.apply_node(n));
    deployments.iter().for_each(|d| index.apply_deployment(d));
    replicasets.iter().for_each(|r| index.apply_replicaset(r));
    hpas.iter().for_each(|h| index.apply_hpa(h));
    pods.iter().for_each(|p| index.apply_pod(p));
    let views: Vec<PodView> = pods
        .iter()
        .filter(|p| pod_store::wanted(p, &index, true))
        .filter_map(|p| PodView::from_pod(p, &index, config.default_provider))
        .collect();
    let mut status = status::compute(
        &index,
        &views,
        &config,
        namespace,
        jiff::Timestamp::now().as_millisecond(),
    );
    status.cluster.nodes_listed = nodes_listed;
    Ok((status, source))
}

/// Prints the status in the chosen format.
pub fn render(status: &Status, output: Output) -> String {
    match output {
        Output::Table => status::table(status),
        Output::Json => {
            let mut text = serde_json::to_string_pretty(status).expect("status serializes");
            text.push('\n');
            text
        }
    }
}
