//! Structured logging set-up shared by every subcommand.

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default on a terminal).
    #[default]
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging flags shared by every long-running subcommand.
#[derive(Args, Clone, Debug)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Plain, env = "SPILLWAY_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,
    /// Log filter in `tracing` syntax, e.g. `info,spillway_webhook=debug`.
    #[arg(long, default_value = "info", env = "SPILLWAY_LOG", global = true)]
    pub log_filter: String,
}

/// Installs the global tracing subscriber; logs go to stderr so stdout stays clean for
/// commands whose output is data.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // A second init (tests, or an embedding binary) keeps the first subscriber.
    let _ = result;
}
