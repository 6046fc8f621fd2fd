//! The `spillway` command line: one binary for every component (DESIGN §1).

mod admit;
mod explain_pod;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spillway_common::telemetry::{self, LogArgs};

/// Spillway bursts opted-in Kubernetes Deployments onto serverless containers (AWS
/// Fargate, Azure Container Instances) when the cluster runs short of capacity or an HPA
/// nears its ceiling, and brings them back when capacity returns.
#[derive(Parser, Debug)]
#[command(name = "spillway", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    #[allow(missing_docs)] // the flattened group documents its own flags
    pub log: LogArgs,
    #[command(subcommand)]
    #[allow(missing_docs)] // each subcommand documents itself
    pub command: Command,
}

/// What to run.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the mutating admission webhook (HTTPS `POST /mutate`) that sends overflow
    /// replicas of opted-in Deployments to a virtual node.
    Webhook(spillway_webhook::run::WebhookArgs),
    /// Run the controller process with its embedded, leader-elected virtual node(s)
    /// (`--vk-provider fargate,mock`). Its scale-in, rebalance and pending-spill loops
    /// are not built yet.
    Controller(Box<spillway_controller::ControllerArgs>),
    /// Run one virtual node: registers a Node and runs the pods bound to it at a provider
    /// (AWS Fargate, or the in-memory mock), leader-elected per node name.
    VkNode(Box<spillway_vk_node::run::VkNodeArgs>),
    /// Run the webhook, controller and virtual node in one process (small clusters, demo).
    Run,
    /// Offline: answer one AdmissionReview (JSON on stdin) as the webhook would against a
    /// saved cluster state, and print the AdmissionReview response on stdout.
    Admit(admit::AdmitArgs),
    /// Offline: say whether a pod may burst to a provider, its task size, hourly cost and
    /// the exact provider requests (ECS RegisterTaskDefinition and RunTask for Fargate).
    ExplainPod(explain_pod::ExplainArgs),
    /// Live: per-workload table of local and burst replicas, reasons and cost.
    Status,
}

fn not_implemented(what: &str) -> ExitCode {
    eprintln!("spillway: {what}");
    ExitCode::from(2)
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Admit(args) => admit::run(&args),
        Command::Webhook(args) => serve(&cli.log, async move |shutdown| {
            spillway_webhook::run::run(args, shutdown)
                .await
                .map_err(anyhow::Error::from)
        }),
        Command::Controller(args) => serve(&cli.log, async move |shutdown| {
            spillway_controller::run(*args, shutdown)
                .await
                .map_err(anyhow::Error::from)
        }),
        Command::Run => not_implemented(spillway_controller::NOT_IMPLEMENTED),
        Command::VkNode(args) => serve(&cli.log, async move |shutdown| {
            spillway_vk_node::run::run(*args, shutdown)
                .await
                .map_err(anyhow::Error::from)
        }),
        Command::ExplainPod(args) => explain_pod::run(&args),
        Command::Status => not_implemented(spillway_controller::NOT_IMPLEMENTED),
    }
}

/// Runs a long-lived component on a multi-threaded runtime until SIGTERM/SIGINT.
fn serve<F>(log: &LogArgs, component: F) -> ExitCode
where
    F: AsyncFnOnce(tokio_util::sync::CancellationToken) -> anyhow::Result<()>,
{
    telemetry::init(log);
    spillway_common::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("spillway: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = spillway_common::shutdown::on_signal();
        match component(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "exiting");
                eprintln!("spillway: {error:#}");
                ExitCode::FAILURE
            }
        }
    })
}
