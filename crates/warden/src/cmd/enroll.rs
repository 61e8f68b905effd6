//! `warden enroll`: join a control plane.

use crate::home::warden_home;
use std::process::ExitCode;

/// Arguments of `warden enroll`.
#[derive(clap::Args)]
pub struct Args {
    /// The control plane, e.g. http://warden.internal:7070.
    #[arg(long, env = "WARDEN_SERVER")]
    pub server: String,
    /// A one-time enrollment token (`warden token create --enroll`).
    #[arg(long, env = "WARDEN_ENROLL_TOKEN", hide_env_values = true)]
    pub token: String,
}

pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let node = warden_agent::Node::new(&warden_home());
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let id = rt.block_on(node.enroll(&args.server, &args.token, &host))?;
    println!("enrolled as {} with {}", id.machine_id, id.server);
    if !id.labels.is_empty() {
        let labels: Vec<String> = id.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("labels: {}", labels.join(", "));
    }
    println!("server key pinned; run `warden agent` to receive the policy");
    Ok(ExitCode::SUCCESS)
}
