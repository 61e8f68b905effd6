//! `warden status`: which policy is in force on this machine, its version and where
//! it came from.

use crate::home::warden_home;
use std::process::ExitCode;
use warden_agent::PolicyInForce;

/// Arguments of `warden status`.
#[derive(clap::Args)]
pub struct Args {
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let node = warden_agent::Node::new(&warden_home());
    let status = node.status()?;
    if args.json {
        let mut v = serde_json::to_value(&status)?;
        // The policy text is long; `warden status` shows what and where, not the source.
        if let Some(p) = v.get_mut("policy").and_then(|p| p.as_object_mut()) {
            p.remove("source");
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        match &status.identity {
            Some(id) => println!("enrolled:  {} with {}", id.machine_id, id.server),
            None => println!("enrolled:  no (standalone)"),
        }
        match &status.policy {
            PolicyInForce::Standalone => {
                println!("policy:    local (--policy FILE, else the built-in balanced preset)")
            }
            PolicyInForce::Central(p) => {
                println!("policy:    {}@v{} ({})", p.name, p.version, p.id);
                println!("from:      {}", p.origin());
                println!("received:  {}", p.received_at);
            }
            PolicyInForce::Unassigned { serial } => println!(
                "policy:    none assigned by the control plane (serial {serial}); sessions \
                 will not start"
            ),
            PolicyInForce::None { reason } => {
                println!("policy:    none in force — sessions will not start ({reason})")
            }
        }
        if status.identity.is_some() {
            println!(
                "spool:     {} bytes not yet delivered",
                status.spool_pending_bytes
            );
        }
    }
    Ok(match status.policy {
        PolicyInForce::Standalone | PolicyInForce::Central(_) => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}
