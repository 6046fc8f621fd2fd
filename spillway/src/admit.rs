//! `spillway admit`: the offline webhook. Bad input exits 2 with one line on stderr and
//! nothing on stdout.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use spillway_common::config::OperatorConfig;

/// Flags of `spillway admit`.
#[derive(Args, Debug)]
pub struct AdmitArgs {
    /// Cluster state to decide against: the output of `kubectl get
    /// nodes,pods,replicasets,deployments,horizontalpodautoscalers -A -o json`.
    #[arg(long, value_name = "FILE")]
    pub cluster_state: PathBuf,
    /// Operator config (YAML keys capacityThreshold, hpaThreshold, defaultProvider, …);
    /// defaults apply without it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

fn answer(args: &AdmitArgs) -> Result<Vec<u8>, String> {
    let config = match &args.config {
        Some(path) => OperatorConfig::load(path).map_err(|e| e.to_string())?,
        None => OperatorConfig::default(),
    };
    let state = std::fs::read(&args.cluster_state).map_err(|e| {
        format!(
            "cannot read cluster state {}: {e}",
            args.cluster_state.display()
        )
    })?;
    let mut review = Vec::new();
    std::io::stdin()
        .read_to_end(&mut review)
        .map_err(|e| format!("cannot read the AdmissionReview on stdin: {e}"))?;
    let response = spillway_webhook::admit(&review, &state, &config).map_err(|e| {
        // Name which input was at fault.
        match e {
            spillway_webhook::AdmitError::Review(e) => format!("stdin: {e}"),
            spillway_webhook::AdmitError::ClusterState(e) => {
                format!("{}: {e}", args.cluster_state.display())
            }
        }
    })?;
    let mut out = serde_json::to_vec_pretty(&response).map_err(|e| e.to_string())?;
    out.push(b'\n');
    Ok(out)
}

/// Runs `spillway admit`.
pub fn run(args: &AdmitArgs) -> ExitCode {
    match answer(args) {
        Ok(out) => {
            if std::io::stdout().write_all(&out).is_err() {
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("spillway admit: {}", message.replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
