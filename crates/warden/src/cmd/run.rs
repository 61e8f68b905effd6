//! `warden run`: one governed session.

use std::process::ExitCode;

/// Arguments of `warden run`.
#[derive(clap::Args)]
pub struct Args {
    /// The command to run, and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<std::ffi::OsString>,
}

/// Dispatch to the sandbox init when this process was started as one.
pub fn maybe_sandbox_init() {}

pub fn main(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("warden run is not implemented yet")
}
