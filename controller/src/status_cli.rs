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
    /// Only workloads of this namespace (the cluster line stays cluster-wide).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
    /// Operator config for the default provider, prices and budget (the one the
    /// controller runs with); defaults apply without it.
    #[arg(long, env = "SPILLWAY_CONFIG")]
    pub config: Option<PathBuf>,
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
}

async fn list_all<K>(client: &Client, params: &ListParams) -> Result<Vec<K>, kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
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

/// Reads the cluster and computes the status.
pub async fn read(args: &StatusArgs) -> Result<Status, StatusError> {
    let config = match &args.config {
        Some(path) => OperatorConfig::load(path)?,
        None => OperatorConfig::default(),
    };
    let client = spillway_common::kube_access::client().await?;
    let all = ListParams::default();
    let (nodes, pods, replicasets, deployments, hpas) = futures::try_join!(
        list_all::<Node>(&client, &all),
        list_all::<Pod>(&client, &all),
        list_all::<ReplicaSet>(&client, &all),
        list_all::<Deployment>(&client, &all),
        list_all::<HorizontalPodAutoscaler>(&client, &all),
    )?;
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
    Ok(status::compute(
        &index,
        &views,
        &config,
        args.namespace.as_deref(),
        jiff::Timestamp::now().as_millisecond(),
    ))
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
