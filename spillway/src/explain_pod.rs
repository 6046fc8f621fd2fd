//! `spillway explain-pod`: eligibility, size, hourly cost and provider requests for a pod.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use spillway_common::config::{OperatorConfig, Provider};
use spillway_vk_node::explain;

/// Output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    /// `{"eligible", "reasons", "hourlyCostUsd", "size", "request", "notes"}`.
    Json,
}

/// Which provider to explain for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ProviderArg {
    /// AWS Fargate (ECS).
    Fargate,
    /// Azure Container Instances.
    Aci,
}

/// Flags of `spillway explain-pod`.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// Provider the pod would burst to.
    #[arg(long, value_enum, default_value_t = ProviderArg::Fargate)]
    pub provider: ProviderArg,
    /// Print JSON instead of a readable summary.
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Output>,
    /// Operator config whose `pricing` is used; list prices without it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Pod manifest, or a workload whose pod template is explained (Deployment,
    /// ReplicaSet, StatefulSet, DaemonSet, Job, CronJob); YAML or JSON, `-` for stdin.
    #[arg(
        value_name = "FILE",
        required_unless_present = "filename",
        conflicts_with = "filename"
    )]
    pub file: Option<PathBuf>,
    /// The manifest, as kubectl takes it (`-f deployment.yaml`).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub filename: Option<PathBuf>,
}

fn answer(args: &ExplainArgs) -> Result<String, String> {
    let config = match &args.config {
        Some(path) => OperatorConfig::load(path).map_err(|e| e.to_string())?,
        None => OperatorConfig::default(),
    };
    let file = args
        .filename
        .clone()
        .or_else(|| args.file.clone())
        .ok_or("a manifest is required (FILE or -f FILE)")?;
    let text = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("stdin: {e}"))?;
        text
    } else {
        std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?
    };
    let pod = explain::parse_pod(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let provider = match args.provider {
        ProviderArg::Fargate => Provider::Fargate,
        ProviderArg::Aci => Provider::Aci,
    };
    let explanation =
        explain::explain(&pod, provider, &config.pricing).map_err(|e| e.to_string())?;
    Ok(match args.output {
        Some(Output::Json) => {
            serde_json::to_string_pretty(&explanation).map_err(|e| e.to_string())? + "\n"
        }
        None => explain::summary(&explanation, provider),
    })
}

/// Runs `spillway explain-pod`.
pub fn run(args: &ExplainArgs) -> ExitCode {
    match answer(args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("spillway explain-pod: {}", message.replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
