//! `warden policy`: init, check, explain (SPEC §3). Everything about what a policy
//! means lives in `warden-policy`; this module only reads arguments and prints.

use anyhow::{Context, bail};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use warden_policy::{Decision, Policy, Preset, Principal, Request};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write a starter policy from a preset.
    Init {
        /// The preset to start from.
        #[arg(long, default_value = "balanced", value_parser = parse_preset)]
        preset: Preset,
        /// Where to write it; `-` for standard output.
        #[arg(default_value = "warden.toml")]
        file: PathBuf,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Validate policy files; errors are printed as FILE:LINE:COL with a hint.
    Check {
        /// Policy files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Say whether a policy allows one request, and which rule decided.
    ///
    /// Exits 0 when allowed, 1 when denied.
    Explain(Box<ExplainArgs>),
    /// Validate and publish a policy on the control plane; prints the new version.
    Push(super::remote::PushArgs),
    /// List the policies on the control plane.
    Ls(super::remote::ListArgs),
    /// Show a policy's versions on the control plane.
    History(super::remote::HistoryArgs),
    /// Make an earlier version current again (recorded as a new version).
    Rollback(super::remote::RollbackArgs),
}

/// Arguments of `warden policy explain`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("request").required(true)
    .args(["net", "http", "path", "tool", "credential"])))]
pub struct ExplainArgs {
    /// The policy file (default: the built-in `balanced` preset).
    #[arg(long, conflicts_with = "preset")]
    pub policy: Option<PathBuf>,
    /// A built-in preset instead of a file.
    #[arg(long, value_parser = parse_preset)]
    pub preset: Option<Preset>,
    /// A connection: HOST[:PORT] (port 443 when omitted; names are not resolved).
    #[arg(long, value_name = "HOST[:PORT]", value_parser = split_host_port)]
    pub net: Option<(String, u16)>,
    /// An HTTP request: METHOD URL.
    #[arg(long, num_args = 2, value_names = ["METHOD", "URL"])]
    pub http: Option<Vec<String>>,
    /// A host path: is it visible in a session (and writable with --write)?
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// With --path: ask about writing.
    #[arg(long, requires = "path")]
    pub write: bool,
    /// With --path: the session's workspace (default: the current directory).
    #[arg(long, requires = "path")]
    pub workspace: Option<PathBuf>,
    /// An MCP tool call: SERVER/TOOL.
    #[arg(long, value_name = "SERVER/TOOL", value_parser = split_tool)]
    pub tool: Option<(String, String)>,
    /// With --tool: the call's arguments as a JSON object.
    #[arg(long, requires = "tool", default_value = "{}", value_parser = parse_args_json)]
    pub args: serde_json::Value,
    /// A credential use: NAME (with --host).
    #[arg(long, requires = "host")]
    pub credential: Option<String>,
    /// With --credential: the destination host.
    #[arg(long, requires = "credential")]
    pub host: Option<String>,
    /// Print the decision as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_preset(s: &str) -> Result<Preset, String> {
    s.parse::<Preset>()
        .map_err(|_| format!("unknown preset `{s}`; use one of: open, balanced, locked"))
}

pub fn main(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Init {
            preset,
            file,
            force,
        } => init(preset, &file, force),
        Command::Check { files, json } => check(&files, json),
        Command::Push(a) => super::remote::policy_push(a),
        Command::Ls(a) => super::remote::policy_ls(a),
        Command::History(a) => super::remote::policy_history(a),
        Command::Rollback(a) => super::remote::policy_rollback(a),
        Command::Explain(args) => {
            let ExplainArgs {
                policy,
                preset,
                net,
                http,
                path,
                write,
                workspace,
                tool,
                args,
                credential,
                host,
                json,
            } = *args;
            let policy = match (policy, preset) {
                (Some(file), _) => match Policy::load(&file) {
                    Ok(p) => p,
                    Err(err) => {
                        eprint!("{err}");
                        return Ok(ExitCode::from(crate::EXIT_WARDEN_FAILED));
                    }
                },
                (None, Some(preset)) => Policy::preset(preset),
                (None, None) => Policy::preset(Preset::Balanced),
            };
            let cwd = std::env::current_dir().context("reading the current directory")?;
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            let workspace = workspace.unwrap_or_else(|| cwd.clone());
            let principal = Principal {
                user: crate::home::user_name(),
                machine: crate::home::machine_id(),
                agent: "explain".into(),
                ..Principal::default()
            };
            let decision = if let Some((host, port)) = net {
                policy.decide(&principal, &Request::Connect { host: &host, port })
            } else if let Some(http) = http {
                let [method, url] = http.as_slice() else {
                    bail!("--http takes METHOD URL, e.g. --http GET https://api.github.com/");
                };
                policy.decide(&principal, &Request::Http { method, url })
            } else if let Some(path) = path {
                let path = if path.is_absolute() {
                    path
                } else {
                    cwd.join(path)
                };
                policy.decide(
                    &principal,
                    &Request::Path {
                        path: &path,
                        write,
                        workspace: &workspace,
                        home: &home,
                    },
                )
            } else if let Some((server, tool)) = tool {
                policy.decide(
                    &principal,
                    &Request::Tool {
                        server: &server,
                        tool: &tool,
                        args: &args,
                    },
                )
            } else if let (Some(name), Some(host)) = (credential, host) {
                policy.decide(
                    &principal,
                    &Request::Credential {
                        name: &name,
                        host: &host,
                    },
                )
            } else {
                bail!("say what to explain: --net, --http, --path, --tool or --credential");
            };
            print_decision(&decision, json)?;
            Ok(if decision.allow {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn init(preset: Preset, file: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let text = warden_policy::preset_source(preset);
    if file == Path::new("-") {
        std::io::stdout().write_all(text.as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    if file.exists() && !force {
        eprintln!(
            "warden: {} already exists; pass --force to overwrite it, or name another file",
            file.display()
        );
        return Ok(ExitCode::from(1));
    }
    std::fs::write(file, text).with_context(|| format!("writing {}", file.display()))?;
    println!("wrote {} (preset {preset})", file.display());
    Ok(ExitCode::SUCCESS)
}

fn check(files: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    let mut all_ok = true;
    let mut report = Vec::new();
    for file in files {
        match Policy::load(file) {
            Ok(policy) => {
                if json {
                    report.push(json!({"file": file, "ok": true, "policy": policy.id()}));
                } else {
                    println!("{}: ok ({})", file.display(), policy.id());
                }
            }
            Err(err) => {
                all_ok = false;
                if json {
                    let diags: Vec<_> = err
                        .diagnostics()
                        .iter()
                        .map(|d| {
                            json!({"file": d.file, "line": d.line, "col": d.col,
                                   "message": d.message, "hint": d.hint})
                        })
                        .collect();
                    report.push(json!({"file": file, "ok": false, "errors": diags}));
                } else {
                    eprint!("{err}");
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_decision(d: &Decision, json: bool) -> anyhow::Result<()> {
    let verdict = if d.allow { "allow" } else { "deny" };
    if json {
        println!(
            "{}",
            json!({"decision": verdict, "rule": d.rule.to_string(), "reason": d.reason})
        );
    } else {
        println!("{verdict}  {}  ({})", d.rule, d.reason);
    }
    Ok(())
}

fn split_tool(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((server, tool)) if !server.is_empty() && !tool.is_empty() => {
            Ok((server.to_string(), tool.to_string()))
        }
        _ => Err(format!("`{s}` is not SERVER/TOOL, e.g. github/get_issue")),
    }
}

fn parse_args_json(s: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => {
            Err("the tool arguments must be a JSON object, e.g. '{\"path\": \"/tmp\"}'".into())
        }
        Err(e) => Err(format!("not valid JSON ({e})")),
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 literal; port 443 by default.
fn split_host_port(s: &str) -> anyhow::Result<(String, u16)> {
    let bad_port =
        |p: &str| anyhow::anyhow!("`{p}` is not a port (1-65535); write HOST or HOST:PORT");
    if let Some(rest) = s.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            bail!("missing `]` after the IPv6 address; write [2001:db8::1]:443");
        };
        let port = match after.strip_prefix(':') {
            Some(p) => p
                .parse()
                .ok()
                .filter(|&n| n != 0)
                .ok_or_else(|| bad_port(p))?,
            None if after.is_empty() => 443,
            None => bail!("unexpected `{after}` after `]`"),
        };
        return Ok((addr.to_string(), port));
    }
    if s.matches(':').count() > 1 {
        return Ok((s.to_string(), 443)); // a bare IPv6 literal
    }
    match s.rsplit_once(':') {
        Some((host, p)) => Ok((
            host.to_string(),
            p.parse()
                .ok()
                .filter(|&n| n != 0)
                .ok_or_else(|| bad_port(p))?,
        )),
        None => Ok((s.to_string(), 443)),
    }
}

#[cfg(test)]
mod tests {
    use super::split_host_port;

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("a.b").unwrap(), ("a.b".into(), 443));
        assert_eq!(split_host_port("a.b:22").unwrap(), ("a.b".into(), 22));
        assert_eq!(split_host_port("[::1]:80").unwrap(), ("::1".into(), 80));
        assert_eq!(split_host_port("[::1]").unwrap(), ("::1".into(), 443));
        assert_eq!(
            split_host_port("2001:db8::1").unwrap(),
            ("2001:db8::1".into(), 443)
        );
        assert!(split_host_port("a.b:0").is_err());
        assert!(split_host_port("a.b:x").is_err());
        assert!(split_host_port("[::1").is_err());
    }
}
