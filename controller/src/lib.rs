//! The Spillway controller process (DESIGN §4). Today it runs the embedded virtual nodes
//! (`--vk-provider`), each leader-elected through its own Lease. The controller loops of
//! DESIGN §4 (scale-in order, rebalance back, pending spill, overshoot correction) are not
//! built yet; the process says so in its log rather than pretend.

use clap::Args;
use prometheus::Registry;
use spillway_common::admin::{self, AdminArgs, Readiness};
use spillway_vk_node::run::{EmbeddedNodesArgs, RunError};
use tokio_util::sync::CancellationToken;

/// What `spillway status` and `spillway run` say until they are built.
pub const NOT_IMPLEMENTED: &str = "not implemented yet: it comes with the controller issue (scale-in order, rebalance back, pending spill), after the webhook (issue 3) and the virtual node (issue 4)";

/// Flags of `spillway controller`.
#[derive(Args, Clone, Debug)]
pub struct ControllerArgs {
    #[command(flatten)]
    #[allow(missing_docs)] // flattened groups document their own flags
    pub nodes: EmbeddedNodesArgs,
    #[command(flatten)]
    #[allow(missing_docs)] // flattened groups document their own flags
    pub admin: AdminArgs,
}

/// Runs the controller process until `shutdown`.
pub async fn run(args: ControllerArgs, shutdown: CancellationToken) -> Result<(), RunError> {
    let registry = Registry::new();
    let readiness = Readiness::default();
    tokio::spawn(admin::serve(
        args.admin.admin_addr,
        registry.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
    tracing::warn!(
        "scale-in order, rebalance back and pending spill are not implemented yet; running the embedded virtual nodes only"
    );
    spillway_vk_node::run::run_embedded(args.nodes, &registry, readiness, shutdown).await
}
