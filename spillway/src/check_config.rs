//! `spillway check-config`: validates an operator config file as the webhook and the
//! controller would on (re)load, before it reaches them. Exit 0 and the config in force
//! (defaults filled in) on stdout; exit 2 with the key at fault on stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use spillway_common::config::OperatorConfig;

/// Flags of `spillway check-config`.
#[derive(Args, Debug)]
pub struct CheckConfigArgs {
    /// The operator config file (YAML) to check.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Prints the effective config, or the reason it would be refused.
pub fn run(args: &CheckConfigArgs) -> ExitCode {
    match OperatorConfig::load(&args.file) {
        Ok(config) => match serde_yaml_ng::to_string(&config) {
            Ok(yaml) => {
                println!(
                    "# {}: valid; in force with the defaults filled in:",
                    args.file.display()
                );
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("spillway check-config: cannot print the config: {error}");
                ExitCode::FAILURE
            }
        },
        Err(error) => {
            eprintln!("spillway check-config: {error}");
            ExitCode::from(2)
        }
    }
}
