//! `warden proxy`: the egress proxy on its own, for agents that run outside a sandbox.
//!
//! Enforces `--policy` on an explicit HTTP proxy at `--listen`. The policy file is
//! watched (size, mtime and contents, every 500 ms) and re-read on SIGHUP; a valid new
//! policy applies to new connections at once, an invalid one is reported on stderr
//! with its diagnostics and the old one stays in force.

use crate::home;
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
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

/// How often the policy file is checked for changes.
const POLL: Duration = Duration::from_millis(500);

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
        tokio::spawn(watch_policy(egress.clone(), args.policy.clone()));
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

/// What identifies a version of the policy file: size, mtime and contents.
#[derive(PartialEq, Eq)]
struct Seen {
    len: u64,
    mtime: Option<SystemTime>,
    contents: Vec<u8>,
}

fn seen(path: &Path) -> Option<Seen> {
    let meta = std::fs::metadata(path).ok()?;
    let contents = std::fs::read(path).ok()?;
    Some(Seen {
        len: meta.len(),
        mtime: meta.modified().ok(),
        contents,
    })
}

async fn watch_policy(egress: Egress, path: PathBuf) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("warden proxy: SIGHUP reloads are unavailable: {e}");
            None
        }
    };
    let mut last = seen(&path);
    let mut tick = tokio::time::interval(POLL);
    loop {
        let why = tokio::select! {
            _ = tick.tick() => "file changed",
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
        };
        let now = seen(&path);
        if why != "SIGHUP" && now == last {
            continue;
        }
        last = now;
        match Policy::load(&path) {
            Ok(p) => {
                egress.reload(p, path.display().to_string());
                eprintln!(
                    "warden proxy: reloaded {} ({why}); now enforcing {}",
                    path.display(),
                    egress.policy_id()
                );
            }
            Err(e) => eprintln!(
                "warden proxy: {} is invalid ({why}); keeping {} in force:\n{e}",
                path.display(),
                egress.policy_id()
            ),
        }
    }
}
