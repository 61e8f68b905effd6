//! `warden mcp`: the MCP gateway.

use std::process::ExitCode;

/// Arguments of `warden mcp`.
#[derive(clap::Args)]
pub struct Args {
    /// The policy whose `[[mcp.servers]]` to serve.
    #[arg(long)]
    pub policy: Option<std::path::PathBuf>,
}

pub fn main(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("warden mcp is not implemented yet")
}
