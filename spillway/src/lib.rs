//! The `spillway` command line: one binary for every component (DESIGN §1).

mod admit;
mod check_config;
mod drain_virtual_nodes;
mod explain_pod;
pub mod run_all;
pub mod run_registration;

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
    #[command(flatten)]
    #[allow(missing_docs)] // the flattened group documents its own flags
    pub kube: spillway_common::kube_access::KubeArgs,
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
    /// Run the controller: while it leads (Lease election) it gives burst pods the low
    /// deletion cost, asks the cluster autoscaler for real nodes for them (backfill), moves
    /// them back when capacity returns, lets long-unschedulable pods
    /// spill, corrects cap overshoot, exports the burst metrics and writes Events; it also
    /// runs the embedded virtual node(s) (`--vk-provider fargate,mock`).
    Controller(Box<spillway_controller::ControllerArgs>),
    /// Run one virtual node: registers a Node and runs the pods bound to it at a provider
    /// (AWS Fargate, Azure Container Instances, or the in-memory mock), leader-elected per
    /// node name.
    VkNode(Box<spillway_vk_node::run::VkNodeArgs>),
    /// Run the webhook, controller and virtual node(s) in one process (small clusters,
    /// the demo); `--webhook-url` makes its own certificate and registers the webhook.
    Run(Box<run_all::RunArgs>),
    /// Offline: answer one AdmissionReview (JSON on stdin) as the webhook would against a
    /// saved cluster state, and print the AdmissionReview response on stdout.
    Admit(admit::AdmitArgs),
    /// Offline: say whether a pod may burst to a provider, its task size, hourly cost and
    /// the exact provider requests (ECS RegisterTaskDefinition and RunTask for Fargate).
    ExplainPod(explain_pod::ExplainArgs),
    /// Live, from the kubeconfig: per opted-in workload the desired, local and burst
    /// replicas, burst ratio, last reason, provider and estimated USD/hour, and a cluster
    /// line (request utilization, burst cost, budget). `-o json` for scripts.
    Status(spillway_controller::status_cli::StatusArgs),
    /// Offline: check an operator config file as the webhook and controller would on
    /// reload; prints the config in force (defaults filled in), or the key at fault
    /// (exit 2).
    CheckConfig(check_config::CheckConfigArgs),
    /// Before Spillway goes (the chart's pre-delete hook runs it): cordon the virtual
    /// nodes, evict their pods (PodDisruptionBudgets honoured) and wait until the nodes
    /// have stopped every cloud task; exit 1 naming the pods left at the timeout.
    DrainVirtualNodes(drain_virtual_nodes::DrainArgs),
    /// Sleep until SIGTERM or SIGINT: what backfill placeholder pods run (they only hold
    /// room on a node, so the image needs nothing but this binary).
    Pause,
    /// Print the version (also `--version`).
    Version,
    /// Print a shell completion script: `source <(spillway completion bash)`; zsh, fish,
    /// powershell and elvish too. As a kubectl plugin, link the binary as
    /// `kubectl-spillway` on the PATH and run `kubectl spillway status`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// A single-threaded runtime for the short commands; on failure the reason is printed
/// and the exit code returned.
fn current_thread_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("spillway: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        })
}

/// `spillway status`: prints the table or JSON; exit 1 with the reason when the cluster
/// cannot be read.
fn status(args: &spillway_controller::status_cli::StatusArgs) -> ExitCode {
    spillway_common::tls::install_crypto_provider();
    let runtime = match current_thread_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let stop = spillway_common::shutdown::on_signal();
        loop {
            match spillway_controller::status_cli::read(args).await {
                Ok((status, source)) => {
                    if args.watch
                        && args.output == spillway_controller::status_cli::Output::Table
                        && std::io::IsTerminal::is_terminal(&std::io::stdout())
                    {
                        // A table on a terminal: clear it and print from the top, as `watch`
                        // does (JSON and pipes get the prints one after another).
                        print!("\x1b[2J\x1b[H");
                    }
                    eprintln!("spillway status: {source}");
                    print!(
                        "{}",
                        spillway_controller::status_cli::render(&status, args.output)
                    );
                }
                Err(error) => {
                    eprintln!("spillway status: {error}");
                    if !args.watch {
                        return ExitCode::FAILURE;
                    }
                }
            }
            if !args.watch {
                return ExitCode::SUCCESS;
            }
            tokio::select! {
                _ = stop.cancelled() => return ExitCode::SUCCESS,
                _ = tokio::time::sleep(std::time::Duration::from_secs(args.interval_seconds)) => {}
            }
        }
    })
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    spillway_common::kube_access::select(&cli.kube);
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
        Command::Run(args) => serve(&cli.log, async move |shutdown| {
            run_all::run(*args, shutdown).await
        }),
        Command::VkNode(args) => serve(&cli.log, async move |shutdown| {
            spillway_vk_node::run::run(*args, shutdown)
                .await
                .map_err(anyhow::Error::from)
        }),
        Command::ExplainPod(args) => explain_pod::run(&args),
        Command::Status(args) => status(&args),
        Command::CheckConfig(args) => check_config::run(&args),
        Command::DrainVirtualNodes(args) => drain_virtual_nodes::run(&args),
        Command::Pause => pause(),
        Command::Version => {
            println!("spillway {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "spillway", &mut script);
            // A reader that stops early (`| head`) is no failure.
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("spillway completion: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `spillway pause`: waits for SIGTERM or SIGINT and exits 0.
fn pause() -> ExitCode {
    let runtime = match current_thread_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        spillway_common::shutdown::on_signal().cancelled().await;
    });
    ExitCode::SUCCESS
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
