//! `warden proxy`: the egress proxy on its own.

use std::process::ExitCode;

/// Arguments of `warden proxy`.
#[derive(clap::Args)]
pub struct Args {
    /// The policy to enforce.
    #[arg(long)]
    pub policy: std::path::PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:3128.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
}

pub fn main(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("warden proxy is not implemented yet")
}
