//! `warden audit`: tail and query the audit log.

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the newest events and follow new ones.
    Tail,
}

pub fn main(_cmd: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
