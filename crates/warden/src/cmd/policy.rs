//! `warden policy`: init, check, explain.

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Validate policy files.
    Check {
        /// Policy files to check.
        files: Vec<std::path::PathBuf>,
    },
}

pub fn main(_cmd: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
