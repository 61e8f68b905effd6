//! `warden agent`: the node daemon — holds the stream to the control plane, keeps the
//! signed policy bundle current and delivers the audit spool.

use crate::home::warden_home;
use std::process::ExitCode;

/// Arguments of `warden agent`.
#[derive(clap::Args)]
pub struct Args {
    /// Sync the bundle and deliver the spool once, then exit.
    #[arg(long)]
    pub once: bool,
}

pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let node = warden_agent::Node::new(&warden_home());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        if args.once {
            let client = node.client()?;
            let outcome = node.sync_bundle(&client).await;
            let upload = node.upload_spool(&client, 500).await;
            match outcome? {
                warden_agent::SyncOutcome::NotModified => println!("bundle: unchanged"),
                warden_agent::SyncOutcome::Updated(p) => println!(
                    "bundle: serial {} {}",
                    p.serial,
                    p.policy
                        .as_ref()
                        .map(|p| format!("{}@v{}", p.name, p.version))
                        .unwrap_or_else(|| "(no policy assigned)".into())
                ),
            }
            let r = upload?;
            println!("audit: {} events delivered ({} new)", r.events, r.stored);
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("warden agent: running for {}", node.home().display());
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        node.run(warden_agent::AgentOptions::default(), stop)
            .await?;
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
}
