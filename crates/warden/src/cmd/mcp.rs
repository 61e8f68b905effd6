//! `warden mcp`: the MCP gateway (stdio, or Streamable HTTP with `--listen`), and
//! `warden mcp pins` to inspect and approve tool-definition pins.

use anyhow::Context;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use warden_audit::{AuditLog, Event, Stamp, Surface, Verdict};
use warden_mcp::pins::PinStore;
use warden_mcp::{
    AuditConfig, Authorizer, CredentialHeader, GatewayConfig, GatewayCredential, GatewayError,
    HttpOptions, ServerConfig, ToolDecision, Transport, UpstreamLauncher,
};
use warden_policy::{Mode, Policy, Principal, Request};
use warden_secrets::{LeaseId, LoadContext, VaultClient};

use crate::home;

/// Arguments of `warden mcp`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<PinsCommand>,
    /// The policy whose `[[mcp.servers]]` to serve (default: the built-in `balanced`).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Serve Streamable HTTP on ADDR (e.g. 127.0.0.1:7071) instead of stdio.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Audit log file (default: WARDEN_HOME/audit.jsonl).
    #[arg(long)]
    pub audit: Option<PathBuf>,
    /// Also accept this Host header value over HTTP (default: loopback names only).
    #[arg(long = "allow-host", value_name = "HOST")]
    pub allow_host: Vec<String>,
    /// Also accept this Origin over HTTP (default: loopback origins only).
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,
    /// Largest HTTP request body in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_body: usize,
    /// Per-request timeout towards an upstream server, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// `warden mcp pins ...`
#[derive(clap::Subcommand)]
pub enum PinsCommand {
    /// Tool-definition pins.
    #[command(subcommand)]
    Pins(Pins),
}

#[derive(clap::Subcommand)]
pub enum Pins {
    /// List pinned tools and which changed since.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Accept a changed tool definition.
    Approve {
        /// SERVER/TOOL
        tool: String,
    },
    /// Forget one pin, or all of them (they are pinned again when next seen).
    Reset {
        /// SERVER/TOOL (default: all)
        tool: Option<String>,
    },
}

/// Decides tool calls by the policy in force, which a live reload replaces (on an
/// enrolled machine, when the agent stores a new verified bundle): new calls follow it.
struct PolicyAuthorizer {
    policy: std::sync::RwLock<Arc<Policy>>,
    principal: Principal,
    /// Where a reload is recorded.
    audit: PathBuf,
    session: String,
}

impl PolicyAuthorizer {
    fn current(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Where a gateway's decisions come from: the policy in force, whoever holds it — the
/// gateway itself ([`PolicyAuthorizer`]) or, inside a `warden run` session, the session's
/// egress, so that both surfaces follow the same reloads.
trait PolicyInForce: Send + Sync + 'static {
    fn decision(&self, request: &Request<'_>) -> warden_policy::Decision;
    fn id(&self) -> String;
}

impl PolicyInForce for Arc<PolicyAuthorizer> {
    fn decision(&self, request: &Request<'_>) -> warden_policy::Decision {
        self.current().decide(&self.principal, request)
    }
    fn id(&self) -> String {
        self.current().id().to_string()
    }
}

impl PolicyInForce for warden_egress::Egress {
    fn decision(&self, request: &Request<'_>) -> warden_policy::Decision {
        self.decide(request)
    }
    fn id(&self) -> String {
        self.policy_id()
    }
}

/// The gateway's [`Authorizer`]: every tool, prompt and resource decided by a policy.
struct ByPolicy<P>(P);

impl<P: PolicyInForce> ByPolicy<P> {
    fn decide(&self, request: &Request<'_>) -> ToolDecision {
        let d = self.0.decision(request);
        ToolDecision {
            allow: d.allow,
            rule: d.rule.to_string(),
            reason: d.reason,
        }
    }
}

impl<P: PolicyInForce> Authorizer for ByPolicy<P> {
    fn decide_tool(&self, server: &str, tool: &str, args: &serde_json::Value) -> ToolDecision {
        self.decide(&Request::Tool { server, tool, args })
    }

    fn decide_prompt(&self, server: &str, prompt: &str, args: &serde_json::Value) -> ToolDecision {
        self.decide(&Request::Prompt {
            server,
            prompt,
            args,
        })
    }

    fn decide_resource(&self, server: &str, uri: &str) -> ToolDecision {
        self.decide(&Request::Resource { server, uri })
    }

    fn policy_id(&self) -> Option<String> {
        Some(self.0.id())
    }
}

/// The reload target of a running gateway.
struct McpReload(Arc<PolicyAuthorizer>);

impl crate::reload::Reload for McpReload {
    fn reload(&self, policy: Policy, source: String) {
        let id = policy.id().to_string();
        match self.0.policy.write() {
            Ok(mut p) => *p = Arc::new(policy),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(policy),
        }
        let recorded = AuditLog::open(&self.0.audit).and_then(|log| {
            log.record_durable(
                &stamp(&self.0.session, &id),
                Event::new(Surface::Session, "policy_reload", &source, Verdict::Allow)
                    .reason("policy changed; new tool calls follow it"),
            )
        });
        if let Err(e) = recorded {
            eprintln!("warden mcp: could not record the policy reload: {e}");
        }
    }
    fn policy_id(&self) -> String {
        self.0.current().id().to_string()
    }
}

/// What a `warden run` session's gateway is built from (see [`session_gateway`]).
pub(crate) struct SessionGateway<'a> {
    pub policy: &'a Policy,
    pub principal: &'a Principal,
    /// The session's egress: tool calls are decided by its policy in force.
    pub egress: warden_egress::Egress,
    /// The session's credentials (real values and placeholders), loaded once for both.
    pub credentials: &'a warden_egress::Credentials,
    pub stamp: Stamp,
    pub audit_file: PathBuf,
    /// `--policy` and `--audit` of `warden run`: the servers' own sessions take them too.
    pub policy_file: Option<PathBuf>,
    pub audit_flag: Option<PathBuf>,
}

/// The MCP gateway of a `warden run` session, served on the session's MCP door
/// (docs/mcp.md, "Inside a session"): the same gateway as `warden mcp` — the policy's
/// `[[mcp.servers]]`, each stdio server in a session of its own — recorded under the
/// session's id, deciding by the session's policy in force, scanning for the session's
/// own credentials and handing its servers the session's placeholders.
pub(crate) fn session_gateway(g: SessionGateway<'_>) -> anyhow::Result<Arc<warden_mcp::Gateway>> {
    let credentials = g
        .credentials
        .entries()
        .map(|(name, secret, placeholder, hosts)| GatewayCredential {
            name: name.to_string(),
            secret: secret.clone(),
            placeholder: Some(placeholder.clone()),
            hosts: hosts.to_vec(),
        })
        .collect();
    let enrolled = warden_agent::watched_bundle(&home::warden_home()).is_some();
    let cfg = GatewayConfig {
        servers: servers(g.policy, g.principal),
        enforce: g.policy.mode() == Mode::Enforce,
        credentials,
        extra_roots: g.policy.doc().tls.extra_roots.clone(),
        pins_file: pins_file(),
        audit: AuditConfig {
            file: g.audit_file,
            stamp: g.stamp,
            record_args: false,
        },
        request_timeout: Duration::from_secs(120),
        startup_timeout: Duration::from_secs(60),
        page_size: warden_mcp::DEFAULT_PAGE_SIZE,
        authorizer: Arc::new(ByPolicy(g.egress)),
    };
    // The servers' stderr and the gateway's own messages: not on the session's terminal,
    // where an agent's screen is.
    let log = home::warden_home().join("mcp-servers.log");
    match open_servers_log(&log) {
        Ok(file) => {
            warden_mcp::messages_to(file);
        }
        Err(e) => eprintln!(
            "warden: {}: {e}; the MCP gateway's messages go to this terminal",
            log.display()
        ),
    }
    let launcher: Arc<dyn UpstreamLauncher> = Arc::new(SandboxLauncher {
        exe: std::env::current_exe().context("locating the warden binary")?,
        policy: g.policy_file,
        enrolled,
        audit: g.audit_flag,
        stderr_log: Some(log),
    });
    Ok(warden_mcp::Gateway::new(cfg, launcher)?)
}

fn stamp(session: &str, policy: &str) -> Stamp {
    Stamp {
        session: session.into(),
        machine: home::machine_id(),
        user: home::user_name(),
        policy: policy.into(),
    }
}

fn pins_file() -> PathBuf {
    home::warden_home().join("mcp-pins.json")
}

pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(PinsCommand::Pins(p)) = args.command {
        return pins(p, args.audit);
    }
    // On an enrolled machine the control plane's policy is in force, narrowed by a
    // `--policy` file (the same rule as `warden run`), and the gateway follows the
    // bundles the agent stores, re-applying the same local policy to each.
    let wh = home::warden_home();
    let bundle = warden_agent::watched_bundle(&wh);
    let policy = match &args.policy {
        _ if bundle.is_some() => match warden_agent::session_policy(&wh, args.policy.as_deref()) {
            Ok(Some(p)) => p,
            Ok(None) => Policy::preset(warden_policy::Preset::Balanced),
            Err(e) => {
                eprintln!("warden mcp: {e}");
                return Ok(ExitCode::from(crate::EXIT_WARDEN_FAILED));
            }
        },
        Some(path) => match Policy::load(path) {
            Ok(p) => p,
            Err(e) => {
                eprint!("{e}");
                return Ok(ExitCode::from(crate::EXIT_WARDEN_FAILED));
            }
        },
        None => Policy::preset(warden_policy::Preset::Balanced),
    };
    let local = policy.narrowing().map(|(_, l)| l.clone());
    let session = format!("mcp-{}", hex_id());
    let principal = Principal {
        session: session.clone(),
        user: home::user_name(),
        machine: home::machine_id(),
        agent: "mcp".into(),
        labels: Default::default(),
    };
    let base_dir = args
        .policy
        .as_deref()
        .and_then(|p| p.parent())
        .map(std::path::Path::to_path_buf);
    // `vault:` sources: the control plane's vault when enrolled, else the local store
    // (chosen and opened only when a credential needs it).
    let vault = warden_agent::MachineVault::new(&home::warden_home());
    let (credentials, leases) =
        match load_credentials(&policy, base_dir.as_deref(), &vault, &session) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("warden mcp: {e}");
                return Ok(ExitCode::from(crate::EXIT_WARDEN_FAILED));
            }
        };
    let servers = servers(&policy, &principal);
    let extra_roots = policy.doc().tls.extra_roots.clone();
    let audit_file = args.audit.clone().unwrap_or_else(home::default_audit_file);
    let enforce = policy.mode() == Mode::Enforce;
    let policy_id = policy.id().to_string();
    let authorizer = Arc::new(PolicyAuthorizer {
        policy: std::sync::RwLock::new(Arc::new(policy)),
        principal,
        audit: audit_file.clone(),
        session: session.clone(),
    });
    let cfg = GatewayConfig {
        servers,
        enforce,
        credentials,
        extra_roots,
        pins_file: pins_file(),
        audit: AuditConfig {
            file: audit_file,
            stamp: stamp(&session, &policy_id),
            record_args: false,
        },
        request_timeout: Duration::from_secs(args.timeout.max(1)),
        startup_timeout: Duration::from_secs(60),
        page_size: warden_mcp::DEFAULT_PAGE_SIZE,
        authorizer: Arc::new(ByPolicy(authorizer.clone())),
    };
    // Every stdio server runs in its own Warden session under its own part of the
    // policy (docs/mcp.md, "Upstream sandboxing").
    let launcher: Arc<dyn UpstreamLauncher> = Arc::new(SandboxLauncher {
        exe: std::env::current_exe().context("locating the warden binary")?,
        policy: args.policy.clone(),
        enrolled: bundle.is_some(),
        audit: args.audit.clone(),
        stderr_log: None,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let served = rt.block_on(async move {
        // New tool rules apply to new calls at once; the upstream servers and their
        // credentials stay those of the start (docs/control-plane.md).
        if let Some(bundle) = bundle {
            let load: crate::reload::Loader = Box::new(move |_| {
                crate::cmd::run::enrolled_reload(&wh, local.as_ref(), "warden mcp")
            });
            tokio::spawn(crate::reload::watch_policy(
                McpReload(authorizer),
                bundle,
                load,
                false,
                "warden mcp",
            ));
        }
        let gw = match warden_mcp::Gateway::new(cfg, launcher) {
            Ok(gw) => gw,
            Err(e) => {
                // Fail closed: never serve with less than the policy says.
                eprintln!("warden mcp: {e}");
                return Ok(false);
            }
        };
        match args.listen {
            None => {
                warden_mcp::front::stdio::serve(gw, tokio::io::stdin(), tokio::io::stdout())
                    .await
                    .context("stdio front end")?;
            }
            Some(addr) => {
                let token = match std::env::var("WARDEN_MCP_TOKEN") {
                    Ok(t) if !t.is_empty() => t,
                    _ => {
                        let t = hex_id() + &hex_id();
                        eprintln!("warden mcp: bearer token (shown once): {t}");
                        t
                    }
                };
                let listener = tokio::net::TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                let local = listener.local_addr().context("listening address")?;
                if !local.ip().is_loopback() {
                    eprintln!(
                        "warden mcp: listening on a non-loopback address; only loopback Host/Origin values are accepted unless --allow-host/--allow-origin say otherwise"
                    );
                }
                eprintln!("warden mcp: listening on http://{local}/mcp");
                let mut opts = HttpOptions::new(token);
                opts.allowed_hosts = args.allow_host;
                opts.allowed_origins = args.allow_origin;
                opts.max_body = args.max_body;
                warden_mcp::front::http::serve(gw, listener, opts).await?;
            }
        }
        Ok::<bool, anyhow::Error>(true)
    });
    // The session is over: end its vault leases (a no-op for the local store).
    for lease in &leases {
        if let Err(e) = vault.revoke(lease) {
            eprintln!("warden mcp: could not end a credential lease: {e}");
        }
    }
    if !served? {
        return Ok(ExitCode::from(crate::EXIT_WARDEN_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

/// Load the policy's credentials with `warden_secrets::load` (`env:`, `file:`,
/// `command:`, and `vault:` from this machine's vault). A credential an MCP server uses
/// must load, or the gateway does not start; the others are loaded so that their
/// values are recognised in arguments and results, and skipped with a warning when
/// they cannot be (silently when `optional` and their variable is not set). Errors
/// name the credential and its source, never a value.
fn load_credentials(
    policy: &Policy,
    base_dir: Option<&std::path::Path>,
    vault: &dyn VaultClient,
    session: &str,
) -> anyhow::Result<(Vec<GatewayCredential>, Vec<LeaseId>)> {
    let doc = policy.doc();
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let placeholders = if doc.credentials.is_empty() {
        None
    } else {
        crate::credentials::placeholder_key()
    };
    let ctx = LoadContext {
        env: &env,
        base_dir,
        vault: Some(vault),
        session,
        command_timeout: warden_secrets::source::DEFAULT_COMMAND_TIMEOUT,
        placeholders: placeholders.as_ref(),
    };
    let mut out = Vec::new();
    let mut leases = Vec::new();
    for c in &doc.credentials {
        let required = doc
            .mcp
            .servers
            .iter()
            .any(|s| s.credentials.iter().any(|n| n == &c.name));
        let source = warden_egress::source_of(&c.source);
        // Not set on this host, and no server needs it: the gateway goes without it.
        let loaded =
            match warden_egress::load_declared(&c.name, &source, c.optional && !required, &ctx) {
                Ok(None) => continue,
                Ok(Some(l)) => Ok(l),
                Err(e) => Err(e),
            };
        let loaded = loaded
            .map_err(|e| e.to_string())
            .and_then(|l| {
                if l.secret.len() < warden_secrets::scan::MIN_SECRET_LEN {
                    Err(format!(
                        "credential {:?}: the value from {source} is shorter than {} bytes, too short to recognise safely",
                        c.name,
                        warden_secrets::scan::MIN_SECRET_LEN
                    ))
                } else {
                    Ok(l)
                }
            });
        match loaded {
            Ok(l) => {
                leases.extend(l.lease);
                out.push(GatewayCredential {
                    name: c.name.clone(),
                    placeholder: Some(warden_secrets::Placeholder::for_credential(
                        &c.name,
                        &l.secret,
                        placeholders.as_ref(),
                    )),
                    secret: l.secret,
                    hosts: c.hosts.iter().map(ToString::to_string).collect(),
                });
            }
            Err(e) if required => anyhow::bail!("{e} (an MCP server of the policy uses it)"),
            Err(e) => {
                eprintln!("warden mcp: {e}; its value is not scanned for (no MCP server uses it)")
            }
        }
    }
    Ok((out, leases))
}

pub(crate) fn hex_id() -> String {
    let b: [u8; 8] = rand_bytes();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn rand_bytes() -> [u8; 8] {
    let mut out = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut out);
    }
    out
}

/// The servers of the policy with their credentials: placeholders in the environment
/// of stdio servers; credential headers (rendered by the gateway from the real value)
/// only for HTTP servers whose host the credential is bound to.
fn servers(policy: &Policy, principal: &Principal) -> Vec<ServerConfig> {
    let doc = policy.doc();
    let mut servers = Vec::new();
    for s in &doc.mcp.servers {
        let transport = match &s.transport {
            warden_policy::Transport::Command(argv) => Transport::Command(argv.clone()),
            warden_policy::Transport::Url(u) => Transport::Url(u.clone()),
        };
        let mut sc = ServerConfig::new(s.name.clone(), transport.clone());
        sc.credentials = s.credentials.clone();
        for name in &s.credentials {
            let Some(cred) = doc.credentials.iter().find(|c| &c.name == name) else {
                continue;
            };
            if let Some(env) = &cred.env {
                sc.credential_env.push((env.clone(), name.clone()));
            }
            if let Transport::Url(url) = &transport {
                let host = url_host(url);
                let ok = policy
                    .decide(principal, &Request::Credential { name, host: &host })
                    .allow;
                if !ok {
                    eprintln!(
                        "warden mcp: credential {name:?} is not bound to {host}; not sent to server {:?}",
                        s.name
                    );
                    continue;
                }
                sc.credential_headers.push(CredentialHeader {
                    credential: name.clone(),
                    header: cred
                        .header
                        .clone()
                        .unwrap_or_else(|| "authorization".into()),
                    format: cred
                        .format
                        .clone()
                        .unwrap_or_else(|| "Bearer {secret}".into()),
                });
            }
        }
        servers.push(sc);
    }
    servers
}

fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let auth = rest.split('/').next().unwrap_or("");
    if let Some(v6) = auth.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("").to_string();
    }
    auth.split(':').next().unwrap_or("").to_string()
}

fn pins(cmd: Pins, audit: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let store = PinStore::new(pins_file());
    let record = |action: &str, target: &str, reason: &str| -> anyhow::Result<()> {
        let file = audit.clone().unwrap_or_else(home::default_audit_file);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        let log = AuditLog::open(&file)?;
        log.record_durable(
            &stamp(&format!("mcp-pins-{}", hex_id()), "-"),
            Event::new(Surface::Mcp, action, target, Verdict::Allow)
                .rule("warden mcp pins")
                .reason(reason),
        )?;
        Ok(())
    };
    match cmd {
        Pins::Ls { json } => {
            let list = store.list()?;
            if json {
                let out: Vec<_> = list
                    .iter()
                    .map(|(k, p)| {
                        json!({
                            "tool": k,
                            "status": if p.changed.is_some() { "changed" } else { "pinned" },
                            "digest": p.digest,
                            "first_seen": p.first_seen,
                            "approved": p.approved,
                            "changed_digest": p.changed.as_ref().map(|c| c.digest.clone()),
                            "changed_seen": p.changed.as_ref().map(|c| c.seen.clone()),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else if list.is_empty() {
                println!("no pinned tools ({})", store.path().display());
            } else {
                println!("{:<40} {:<8} {:<20} FIRST SEEN", "TOOL", "STATUS", "DIGEST");
                for (k, p) in list {
                    let status = if p.changed.is_some() {
                        "changed"
                    } else {
                        "pinned"
                    };
                    let short: String = p.digest.chars().take(19).collect();
                    println!("{k:<40} {status:<8} {short:<20} {}", p.first_seen);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Pins::Approve { tool } => match store.approve(&tool) {
            Ok((old, new)) if old == new => {
                println!("{tool}: unchanged, nothing to approve");
                Ok(ExitCode::SUCCESS)
            }
            Ok((_, new)) => {
                record("pin_approve", &tool, &format!("approved definition {new}"))?;
                println!("{tool}: approved");
                Ok(ExitCode::SUCCESS)
            }
            Err(e @ warden_mcp::GatewayError::UnknownPin { .. }) => {
                eprintln!("warden: {e}");
                Ok(ExitCode::from(1))
            }
            Err(e) => Err(e.into()),
        },
        Pins::Reset { tool } => match store.reset(tool.as_deref()) {
            Ok(n) => {
                record(
                    "pin_reset",
                    tool.as_deref().unwrap_or("*"),
                    &format!("{n} pin(s) removed"),
                )?;
                println!("{n} pin(s) removed");
                Ok(ExitCode::SUCCESS)
            }
            Err(e @ warden_mcp::GatewayError::UnknownPin { .. }) => {
                eprintln!("warden: {e}");
                Ok(ExitCode::from(1))
            }
            Err(e) => Err(e.into()),
        },
    }
}

/// Starts a stdio server as `warden run --mcp-server NAME --policy FILE -- COMMAND`: a
/// session of its own with the server's `network`, `filesystem` and `limits`, its own
/// egress proxy, and the same audit log. Its environment is a session's (the default
/// pass-through list) plus the server's variables (credential placeholders), given
/// with `--env`.
struct SandboxLauncher {
    exe: PathBuf,
    policy: Option<PathBuf>,
    /// This machine is enrolled: servers run under the central policy (narrowed by
    /// `policy`, if any).
    enrolled: bool,
    audit: Option<PathBuf>,
    /// Where the servers' stderr goes (appended); `None`: this process's stderr.
    stderr_log: Option<PathBuf>,
}

impl UpstreamLauncher for SandboxLauncher {
    fn command(
        &self,
        server: &ServerConfig,
        argv: &[String],
    ) -> Result<tokio::process::Command, GatewayError> {
        let bad = |reason: &str| GatewayError::BadTransport {
            name: server.name.clone(),
            reason: reason.into(),
        };
        // On an enrolled machine the server's session takes the control plane's policy
        // in force when it starts (and follows later pushes), narrowed by the same
        // `--policy` file as the gateway's, if any.
        let policy = match (&self.policy, self.enrolled) {
            (Some(p), _) => Some(p),
            (None, true) => None,
            (None, false) => return Err(bad("a stdio server needs a policy file (--policy)")),
        };
        if argv.is_empty() {
            return Err(bad("command is empty"));
        }
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("run");
        if let Some(p) = policy {
            cmd.arg("--policy").arg(p);
        }
        cmd.arg("--mcp-server")
            .arg(&server.name)
            .arg("--name")
            .arg(format!("mcp:{}", server.name));
        if let Some(a) = &self.audit {
            cmd.arg("--audit").arg(a);
        }
        // The server's session sets its credential variables itself, to the same
        // placeholders the gateway handed out (its own proxy swaps them).
        for (k, v) in &server.env {
            match server.credential_env.iter().find(|(var, _)| var == k) {
                Some((_, credential)) => cmd
                    .arg("--credential-placeholder")
                    .arg(format!("{credential}={v}")),
                None => cmd.arg("--env").arg(format!("{k}={v}")),
            };
        }
        cmd.arg("--").args(argv);
        if let Some(log) = &self.stderr_log {
            let file = open_servers_log(log).map_err(|e| GatewayError::Launch {
                name: server.name.clone(),
                source: std::io::Error::new(
                    e.kind(),
                    format!("opening {} for its stderr: {e}", log.display()),
                ),
            })?;
            cmd.stderr(file);
        }
        Ok(cmd)
    }
}

/// `log` opened for appending, its directory made first: where a session's MCP servers
/// and its gateway write what they have to say (`WARDEN_HOME/mcp-servers.log`).
fn open_servers_log(log: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = log.parent() {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
}
