//! The `spillway` binary: parse the command line, hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    spillway::run(spillway::Cli::parse())
}
