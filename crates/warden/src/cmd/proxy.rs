//! `warden proxy`: the egress proxy on its own, for agents that run outside a sandbox.
//!
//! Enforces `--policy` on an explicit HTTP proxy at `--listen`. The policy file is
//! watched and re-read on SIGHUP (see [`crate::reload`]).

use crate::home;
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use warden_egress::{Egress, EgressConfig, Identity, SystemResolver};
use warden_policy::{Policy, Principal};

/// Arguments of `warden proxy`.
#[derive(clap::Args)]
pub struct Args {
    /// The policy to enforce.
    #[arg(long)]
    pub policy: std::path::PathBuf,
    /// Address to listen on, e.g. 127.0.0.1:3128.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// Audit log file (default: audit.jsonl under WARDEN_HOME).
    #[arg(long)]
    pub audit: Option<PathBuf>,
}

pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let policy = Policy::load(&args.policy).map_err(|e| anyhow::anyhow!("{e}"))?;
    let audit_path = args.audit.clone().unwrap_or_else(home::default_audit_file);
    let audit = warden_audit::AuditLog::open(&audit_path)?;
    let identity = Identity {
        session: format!("proxy-{}", warden_audit::new_id()),
        machine: home::machine_id(),
        user: home::user_name(),
    };
    let principal = Principal {
        session: identity.session.clone(),
        user: identity.user.clone(),
        machine: identity.machine.clone(),
        ..Principal::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the proxy runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("could not listen on {}", args.listen))?;
        let local = listener.local_addr()?;
        let egress = Egress::new(
            policy,
            EgressConfig {
                identity,
                principal,
                policy_source: args.policy.display().to_string(),
                audit: audit.clone(),
                resolver: Arc::new(SystemResolver),
                connect_timeout: Duration::from_secs(10),
            },
        );
        eprintln!(
            "warden proxy: listening on {local} (policy {}, audit log {})",
            egress.policy_id(),
            audit_path.display()
        );
        tokio::spawn(crate::reload::watch_policy(
            egress.clone(),
            args.policy.clone(),
            crate::reload::whole_file(),
            true,
            "warden proxy",
        ));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = warden_egress::serve_proxy(egress, listener) => {
                r.context("the proxy stopped")?;
            }
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        audit.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}
