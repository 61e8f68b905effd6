//! `warden server`: the control plane.

use std::process::ExitCode;

/// Arguments of `warden server`.
#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: std::net::SocketAddr,
}

pub fn main(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("warden server is not implemented yet")
}
