//! `warden server`: the control plane — API, web console, signed bundles, audit store.

use crate::home::warden_home;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `warden server`.
#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: std::net::SocketAddr,
    /// Database URL: `postgres://…` for several replicas sharing one database;
    /// default SQLite under the data directory.
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Where the SQLite database and the master key file live
    /// (default: WARDEN_HOME/server).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Delete central audit events older than this many days (0 keeps them forever).
    #[arg(long, value_name = "DAYS", default_value_t = 0)]
    pub audit_retention_days: u32,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key). Clients trust the
    /// system roots plus the PEM file WARDEN_SERVER_CA names.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| warden_home().join("server"));
    let mut config = warden_control::Config::new(args.listen, data_dir);
    config.database = args.database;
    config.admin_token = std::env::var("WARDEN_ADMIN_TOKEN").ok();
    config.master_key = std::env::var("WARDEN_MASTER_KEY").ok();
    config.audit_retention_days = args.audit_retention_days;
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(warden_control::TlsFiles { cert, key });
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let running = warden_control::start(config).await?;
        if let Some(token) = &running.created_admin_token {
            // SPEC §3: created on first start and printed once; only its hash is kept.
            println!("warden server: first admin token (shown once, store it now): {token}");
        }
        eprintln!("warden server: listening on {scheme}://{}", running.addr);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("warden server: stopping");
        running.stop().await;
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
}
