//! `spillway-bench`: benchmarks whose figures go to BENCHMARKS.md, each measured as a
//! ratio against a baseline run in the same invocation where one exists.

mod backfill;
mod controller;
mod report;
mod stats;
mod testbed;
mod webhook;

use clap::{Parser, Subcommand};

/// Spillway benchmarks.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decision latency (per-call p50/p99) against a synthetic 5,000-node, 150,000-pod index.
    Decision,
    /// HTTPS /mutate: p99 at a fixed 2,000 req/s, saturation throughput against a bare
    /// axum+rustls server (wrk, same run), and index memory per pod.
    WebhookLoad,
    /// Internal: serve the real webhook router or the bare baseline over TLS.
    Serve(webhook::ServeArgs),
    /// On the test bed: pod-create latency with and without the webhook (500 creates).
    PodCreate,
    /// On the test bed: 1,000 pods bound to a virtual node, with the mock provider and moto.
    VkNode(testbed::VkNodeArgs),
    /// On the test bed: capacity freed → first rebalance eviction and → zero burst, and
    /// Unschedulable → spill, with `spillway run`.
    ControllerLoop,
    /// On the test bed: 300 pods bound to an ACI virtual node through the fake ARM server,
    /// under the default create quota.
    AciNode(testbed::AciNodeArgs),
    /// On the test bed: controller RSS and pass time at 1,000 nodes and 30,000 pods, against
    /// the webhook's RSS over the same cluster.
    ControllerScale(controller::ScaleArgs),
    /// On the test bed with Karpenter: a sustained step of load with backfill on and off,
    /// time to zero burst replicas and burst USD over the same window.
    BackfillBridge,
}

fn main() -> anyhow::Result<()> {
    spillway_common::tls::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new()?;
    match Cli::parse().command {
        Command::Decision => webhook::decision(),
        Command::WebhookLoad => runtime.block_on(webhook::load()),
        Command::Serve(args) => runtime.block_on(webhook::serve(args)),
        Command::PodCreate => runtime.block_on(testbed::pod_create()),
        Command::VkNode(args) => runtime.block_on(testbed::vk_node(args)),
        Command::AciNode(args) => runtime.block_on(testbed::aci_node(args)),
        Command::ControllerLoop => runtime.block_on(controller::controller_loop()),
        Command::ControllerScale(args) => runtime.block_on(controller::controller_scale(args)),
        Command::BackfillBridge => runtime.block_on(backfill::backfill_bridge()),
    }
}
