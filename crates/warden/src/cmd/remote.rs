//! Commands that talk to a control plane with an API token: `warden policy
//! push|ls|history|rollback`, `warden token create`, `warden machines ls`,
//! `warden sessions ls`, `warden secret set|ls|rm --server`, `warden audit query
//! --server`. The server is `--server URL` or WARDEN_SERVER; the token WARDEN_TOKEN.

use anyhow::Context;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use warden_control::ControlError;
use warden_control::api::{MachineView, PolicySummary, SessionView, TokenCreated};
use warden_control::client::{Auth, Client, encode_component};

/// Where the control plane is and how to authenticate.
#[derive(clap::Args, Clone)]
pub struct Conn {
    /// The control plane, e.g. http://127.0.0.1:7070.
    #[arg(long, env = "WARDEN_SERVER")]
    pub server: String,
    /// An API token (admin, or auditor for reading).
    #[arg(long, env = "WARDEN_TOKEN", hide_env_values = true, hide = true)]
    pub token: String,
}

fn client(c: &Conn) -> anyhow::Result<Client> {
    Ok(Client::new(&c.server, Auth::Bearer(c.token.clone()))?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `warden policy push FILE [--target …]`.
#[derive(clap::Args)]
pub struct PushArgs {
    /// The policy file to publish.
    pub file: PathBuf,
    /// Which machines it applies to: all, label:K=V or machine:ID.
    #[arg(long, default_value = "all")]
    pub target: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// Publish a policy. Exit 1 when the server rejects it as invalid.
pub fn policy_push(a: PushArgs) -> anyhow::Result<ExitCode> {
    let source = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let origin = a.file.display().to_string();
    let c = client(&a.conn)?;
    let answer = runtime()?.block_on(c.post_json(
        "/api/v1/policies",
        &serde_json::json!({"source": source, "target": a.target, "origin": origin}),
    ))?;
    if answer.status.as_u16() == 422 {
        let v: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
        if a.json {
            println!("{v}");
        } else {
            let rendered = v.get("rendered").and_then(|r| r.as_str()).unwrap_or("");
            eprint!("{rendered}");
            if !rendered.ends_with('\n') {
                eprintln!();
            }
            eprintln!("warden: policy not pushed: it is invalid");
        }
        return Ok(ExitCode::from(1));
    }
    let p: PolicySummary = answer.json()?;
    if a.json {
        println!("{}", serde_json::to_string(&p)?);
    } else {
        println!(
            "{}@v{} ({}) pushed, target {}",
            p.name, p.version, p.id, p.target
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `warden policy ls` / `history NAME`.
#[derive(clap::Args)]
pub struct ListArgs {
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

fn print_policies(rows: &[PolicySummary], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>4}  {:<28} {:<24} {:<20} NOTE",
        "NAME", "VER", "TARGET", "CREATED", "BY"
    );
    for p in rows {
        println!(
            "{:<24} {:>4}  {:<28} {:<24} {:<20} {}",
            p.name, p.version, p.target, p.created_at, p.created_by, p.note
        );
    }
    Ok(())
}

pub fn policy_ls(a: ListArgs) -> anyhow::Result<ExitCode> {
    let c = client(&a.conn)?;
    let rows: Vec<PolicySummary> = runtime()?.block_on(c.get("/api/v1/policies"))?.json()?;
    print_policies(&rows, a.json)?;
    Ok(ExitCode::SUCCESS)
}

/// `warden policy history NAME`.
#[derive(clap::Args)]
pub struct HistoryArgs {
    pub name: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

pub fn policy_history(a: HistoryArgs) -> anyhow::Result<ExitCode> {
    let c = client(&a.conn)?;
    let path = format!("/api/v1/policies/{}", encode_component(&a.name));
    let rows: Vec<PolicySummary> = runtime()?.block_on(c.get(&path))?.json()?;
    print_policies(&rows, a.json)?;
    Ok(ExitCode::SUCCESS)
}

/// `warden policy rollback NAME VERSION`.
#[derive(clap::Args)]
pub struct RollbackArgs {
    /// The policy's name.
    pub name: String,
    /// The version to publish again. (Its clap id is not `version`, which is taken by
    /// `--version`: with it, `policy rollback` panicked in clap's argument checks.)
    #[arg(id = "policy_version", value_name = "VERSION")]
    pub version: i64,
    #[command(flatten)]
    pub conn: Conn,
}

pub fn policy_rollback(a: RollbackArgs) -> anyhow::Result<ExitCode> {
    let c = client(&a.conn)?;
    let path = format!("/api/v1/policies/{}/rollback", encode_component(&a.name));
    let p: PolicySummary = runtime()?
        .block_on(c.post_json(&path, &serde_json::json!({"version": a.version})))?
        .json()?;
    println!(
        "{}@v{} is now in force (same as v{}), target {}",
        p.name, p.version, a.version, p.target
    );
    Ok(ExitCode::SUCCESS)
}

/// `warden token …`.
#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (only its hash is kept on the server).
    Create(TokenCreateArgs),
}

#[derive(clap::Args)]
pub struct TokenCreateArgs {
    /// A one-time enrollment token for `warden enroll` (the default kind).
    #[arg(long, conflicts_with = "role")]
    pub enroll: bool,
    /// An API token instead: admin or auditor.
    #[arg(long)]
    pub role: Option<String>,
    /// Labels the enrolled machine gets: KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Lifetime in seconds (enrollment tokens: 24 hours unless given).
    #[arg(long, value_name = "SECS")]
    pub ttl: Option<i64>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

pub fn token(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let TokenCommand::Create(a) = cmd;
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("label {l:?}: expected KEY=VALUE"))?;
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    let role = a.role.clone().unwrap_or_else(|| "enroll".into());
    let c = client(&a.conn)?;
    let t: TokenCreated = runtime()?
        .block_on(c.post_json(
            "/api/v1/tokens",
            &serde_json::json!({"role": role, "labels": labels, "ttl_secs": a.ttl}),
        ))?
        .json()?;
    if a.json {
        println!("{}", serde_json::to_string(&t)?);
    } else {
        println!("{}", t.token);
    }
    Ok(ExitCode::SUCCESS)
}

/// `warden machines ls`.
#[derive(clap::Subcommand)]
pub enum MachinesCommand {
    /// Enrolled machines and the policy version each holds.
    Ls(ListArgs),
}

pub fn machines(cmd: MachinesCommand) -> anyhow::Result<ExitCode> {
    let MachinesCommand::Ls(a) = cmd;
    let c = client(&a.conn)?;
    let rows: Vec<MachineView> = runtime()?.block_on(c.get("/api/v1/machines"))?.json()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<36} {:<20} {:<24} {:<10} {:<24} LABELS",
        "ID", "HOST", "POLICY", "CONNECTED", "LAST SEEN"
    );
    for m in rows {
        let labels: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<36} {:<20} {:<24} {:<10} {:<24} {}{}",
            m.id,
            m.hostname,
            m.policy_held.unwrap_or_else(|| "-".into()),
            if m.connected { "yes" } else { "no" },
            m.last_seen.unwrap_or_else(|| "-".into()),
            labels.join(","),
            if m.revoked { " (revoked)" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `warden sessions ls`.
#[derive(clap::Subcommand)]
pub enum SessionsCommand {
    /// Sessions, newest first; running ones have no end time.
    Ls(ListArgs),
}

pub fn sessions(cmd: SessionsCommand) -> anyhow::Result<ExitCode> {
    let SessionsCommand::Ls(a) = cmd;
    let c = client(&a.conn)?;
    let rows: Vec<SessionView> = runtime()?.block_on(c.get("/api/v1/sessions"))?.json()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<36} {:<36} {:<12} {:<12} {:<8} POLICY",
        "SESSION", "MACHINE", "USER", "AGENT", "STATE"
    );
    for s in rows {
        println!(
            "{:<36} {:<36} {:<12} {:<12} {:<8} {}",
            s.id,
            s.machine,
            s.user,
            s.agent,
            if s.running { "running" } else { "ended" },
            s.policy
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `warden secret set NAME` against the control plane's vault: the value comes from
/// standard input, never from the command line.
pub fn secret_set(conn: &Conn, name: &str) -> anyhow::Result<ExitCode> {
    let mut value = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut value)
        .context("reading the secret from standard input")?;
    let trimmed = value.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        anyhow::bail!("no secret on standard input");
    }
    let c = client(conn)?;
    let path = format!("/api/v1/secrets/{}", encode_component(name));
    runtime()?
        .block_on(c.put_json(&path, &serde_json::json!({ "value": trimmed })))?
        .ok()?;
    println!("secret {name} stored in the control plane's vault");
    Ok(ExitCode::SUCCESS)
}

pub fn secret_ls(conn: &Conn, json: bool) -> anyhow::Result<ExitCode> {
    let c = client(conn)?;
    let rows: Vec<serde_json::Value> = runtime()?.block_on(c.get("/api/v1/secrets"))?.json()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for r in rows {
            println!("{}", r.get("name").and_then(|n| n.as_str()).unwrap_or(""));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn secret_rm(conn: &Conn, name: &str) -> anyhow::Result<ExitCode> {
    let c = client(conn)?;
    let path = format!("/api/v1/secrets/{}", encode_component(name));
    match runtime()?.block_on(c.delete(&path))?.ok() {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(ControlError::Status { status: 404, .. }) => {
            eprintln!("warden: no secret named {name}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

/// `warden audit query --server …`: the central log, same filters as locally.
/// Prints JSON lines, oldest first.
pub fn audit_query(
    conn: &Conn,
    filters: &warden_control::api::AuditParams,
) -> anyhow::Result<ExitCode> {
    let mut q = Vec::new();
    let mut add = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            q.push(format!("{k}={}", encode_component(v)));
        }
    };
    add("surface", &filters.surface);
    add("decision", &filters.decision);
    add("session", &filters.session);
    add("machine", &filters.machine);
    add("target", &filters.target);
    add("since", &filters.since);
    add("until", &filters.until);
    let path = if q.is_empty() {
        "/api/v1/audit/export".to_string()
    } else {
        format!("/api/v1/audit/export?{}", q.join("&"))
    };
    let c = client(conn)?;
    let answer = runtime()?.block_on(c.get(&path))?;
    answer.ok()?;
    use std::io::Write;
    std::io::stdout().write_all(&answer.body)?;
    Ok(ExitCode::SUCCESS)
}
