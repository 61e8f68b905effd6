//! `warden proxy`: the egress proxy on its own, for agents that run outside a sandbox.
//!
//! Enforces `--policy` on an explicit HTTP proxy at `--listen`. The policy file is
//! watched and re-read on SIGHUP (see [`crate::reload`]).
//!
//! When the policy needs TLS interception (`[[credentials]]`, `[[network.http]]`
//! rules, or `[tls] intercept = "all"`), the proxy makes a session CA, loads the
//! credentials (`env:`, `file:`, `command:`, and `vault:` from the local store),
//! writes the CA bundle the client must trust to `--ca-bundle` (default:
//! `WARDEN_HOME/proxy/<session>/ca-bundle.pem`) and prints the environment the agent
//! needs: the CA variables and each credential's placeholder. Credentials are loaded
//! once at start; a reloaded policy can narrow their bindings, not add new ones.

use crate::credentials::{CredentialLoader, Reloading};
use crate::home;
use anyhow::Context as _;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use warden_egress::{Egress, EgressConfig, Identity, Interception, SystemResolver};
use warden_policy::{Intercept, Policy, Principal};

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
    /// Where to write the CA bundle clients must trust when the policy needs TLS
    /// interception (default: WARDEN_HOME/proxy/<session>/ca-bundle.pem).
    #[arg(long)]
    pub ca_bundle: Option<PathBuf>,
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
    let (interception, loader) = match interception_for(&policy, &args, &identity.session)? {
        Some((i, l)) => (Some(i), Some(l)),
        None => (None, None),
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
                interception,
            },
        );
        eprintln!(
            "warden proxy: listening on {local} (policy {}, audit log {})",
            egress.policy_id(),
            audit_path.display()
        );
        let watch = crate::reload::whole_file();
        match loader {
            Some(loader) => tokio::spawn(crate::reload::watch_policy(
                Reloading {
                    egress: egress.clone(),
                    loader,
                    who: "warden proxy",
                },
                args.policy.clone(),
                watch,
                true,
                "warden proxy",
            )),
            None => tokio::spawn(crate::reload::watch_policy(
                egress.clone(),
                args.policy.clone(),
                watch,
                true,
                "warden proxy",
            )),
        };
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

/// Does the policy need TLS terminated anywhere?
fn needs_interception(policy: &Policy) -> bool {
    let doc = policy.doc();
    !doc.credentials.is_empty()
        || !doc.network.http.is_empty()
        || doc.tls.intercept == Intercept::All
}

/// Set up interception when the policy needs it: load the credentials, write the CA
/// bundle, and tell the user what the agent's environment needs.
fn interception_for(
    policy: &Policy,
    args: &Args,
    session: &str,
) -> anyhow::Result<Option<(Arc<Interception>, Arc<CredentialLoader>)>> {
    if !needs_interception(policy) {
        return Ok(None);
    }
    let loader = Arc::new(CredentialLoader::new(Some(&args.policy), session));
    let icpt = loader
        .start(policy, &HashMap::new())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("setting up TLS interception for {}", args.policy.display()))?;
    let bundle = args.ca_bundle.clone().unwrap_or_else(|| {
        home::warden_home()
            .join("proxy")
            .join(session)
            .join("ca-bundle.pem")
    });
    if let Some(dir) = bundle.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
    }
    let pem = icpt
        .session_bundle()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("setting up TLS interception for {}", args.policy.display()))?;
    std::fs::write(&bundle, pem)
        .with_context(|| format!("could not write the CA bundle to {}", bundle.display()))?;
    eprintln!(
        "warden proxy: intercepting TLS with session CA {}; clients must trust {}. Environment for the agent:",
        icpt.ca().id(),
        bundle.display()
    );
    for (k, v) in icpt.session_env(&bundle) {
        eprintln!("  export {k}={v}");
    }
    Ok(Some((Arc::new(icpt), loader)))
}
