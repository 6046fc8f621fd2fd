//! Which cluster the process talks to: the kubeconfig file and context the command line
//! names (`--kubeconfig`, `--context`, as kubectl takes them), else kube's inference (the
//! in-cluster ServiceAccount, then `KUBECONFIG` or `~/.kube/config`). Every component
//! builds its clients here, so the flags reach each of them.

use std::path::PathBuf;
use std::sync::OnceLock;

use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// `--kubeconfig` and `--context`, accepted by every command.
#[derive(Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeArgs {
    /// Kubeconfig file to use instead of the in-cluster account, `KUBECONFIG` or
    /// `~/.kube/config`.
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Context of the kubeconfig to use instead of its current context.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
}

static SELECTED: OnceLock<KubeArgs> = OnceLock::new();

/// Records the command line's choice for every client built afterwards; the first call
/// wins.
pub fn select(args: &KubeArgs) {
    let _ = SELECTED.set(args.clone());
}

/// The client configuration the command line chose.
pub async fn config() -> Result<kube::Config, kube::Error> {
    let selected = SELECTED.get().cloned().unwrap_or_default();
    if selected.kubeconfig.is_none() && selected.context.is_none() {
        return kube::Config::infer()
            .await
            .map_err(kube::Error::InferConfig);
    }
    let options = KubeConfigOptions {
        context: selected.context,
        ..KubeConfigOptions::default()
    };
    let config = match selected.kubeconfig {
        Some(path) => {
            kube::Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &options).await?
        }
        None => kube::Config::from_kubeconfig(&options).await?,
    };
    Ok(config)
}

/// A client for the cluster the command line chose.
pub async fn client() -> Result<kube::Client, kube::Error> {
    kube::Client::try_from(config().await?)
}
