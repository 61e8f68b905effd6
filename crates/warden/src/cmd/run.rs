//! `warden run`: one governed session (SPEC §3). Parses arguments, turns the policy into a
//! [`warden_sandbox::SandboxSpec`], records the session in the audit log, and exits with
//! the command's status. The boundary itself lives in `warden-sandbox`.

use crate::credentials::{CredentialLoader, Reloading};
use anyhow::{Context, bail};
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warden_audit::{AuditLog, Event, Stamp, Surface, Verdict};
use warden_egress::{Egress, EgressConfig, Identity, SystemResolver};
use warden_policy::{MountMode, Policy, Preset, Principal, Request, WorkspaceMode};
use warden_sandbox::{Limits, Mount, Network, NetworkFds, SandboxSpec, TtyMode};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// `namespaces`, unless the policy requires more (`[sandbox] backend`).
    Auto,
    /// Linux namespaces, seccomp, Landlock and cgroups.
    Namespaces,
    /// gVisor (`runsc`): the agent's system calls are served by an application kernel.
    Gvisor,
}

/// The backend of a session: `--backend` against what the policy requires at least.
fn choose_backend(flag: Backend, policy: &Policy) -> anyhow::Result<warden_sandbox::Backend> {
    use warden_policy::SandboxBackend;
    let need = policy.doc().sandbox;
    Ok(match (flag, need.backend) {
        (Backend::Gvisor, _) | (Backend::Auto, SandboxBackend::Gvisor) => {
            warden_sandbox::Backend::Gvisor
        }
        (Backend::Auto, SandboxBackend::Namespaces)
        | (Backend::Namespaces, SandboxBackend::Namespaces) => warden_sandbox::Backend::Namespaces,
        (Backend::Namespaces, SandboxBackend::Gvisor) => bail!(
            "--backend namespaces is weaker than the policy allows: {}:{} requires the gvisor backend \
             ([sandbox] backend = \"gvisor\"); run with --backend gvisor or --backend auto",
            policy.origin(),
            need.backend_line
        ),
    })
}

/// Arguments of `warden run`.
#[derive(clap::Args)]
pub struct Args {
    /// Policy file (default: the built-in `balanced` preset).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The workspace directory (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Sandbox backend.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Audit log file (default: audit.jsonl under WARDEN_HOME).
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    /// A label for this session, recorded in the audit log.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Pass an environment variable: KEY=VAL sets it, KEY copies it from the host.
    #[arg(long = "env", value_name = "KEY[=VAL]")]
    pub env: Vec<OsString>,
    /// Run under the own policy of this `[[mcp.servers]]` entry of the session's policy
    /// (--policy, or the enrolled machine's): how `warden mcp` sandboxes a stdio server.
    // Without `requires = "policy"`: on an enrolled machine the central policy is used.
    #[arg(long, value_name = "SERVER", hide = true)]
    pub mcp_server: Option<String>,
    /// NAME=PLACEHOLDER: use this placeholder for credential NAME (how `warden mcp`
    /// gives a server's session the placeholders the gateway already handed out).
    #[arg(
        long = "credential-placeholder",
        value_name = "NAME=VALUE",
        hide = true
    )]
    pub credential_placeholder: Vec<String>,
    /// The command to run, and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

/// The policy a session runs under: the enrolled machine's central policy (narrowed by
/// the local file, if any) or the local file (see `warden_agent::session_policy` for the
/// rule). `None`: not enrolled and no file (the preset).
fn session_policy(file: Option<&Path>) -> Result<Option<Policy>, String> {
    warden_agent::session_policy(&crate::home::warden_home(), file).map_err(|e| e.to_string())
}

/// `policy`, or with `--mcp-server` that server's own part of it.
fn for_server(policy: Option<Policy>, mcp_server: Option<&str>) -> Result<Option<Policy>, String> {
    match (policy, mcp_server) {
        (Some(p), Some(name)) => p.for_mcp_server(name).map(Some).ok_or_else(|| {
            format!(
                "the policy {} has no [[mcp.servers]] entry named {name:?}",
                p.id()
            )
        }),
        (None, Some(name)) => Err(format!(
            "--mcp-server {name} needs --policy (or an enrolled machine): a server runs \
             under its own part of a policy, never the built-in preset"
        )),
        (p, None) => Ok(p),
    }
}

/// How `--policy` is re-read for live reloads: the same rule as at the start.
fn loader(mcp_server: Option<String>) -> crate::reload::Loader {
    Box::new(move |path| {
        for_server(session_policy(Some(path))?, mcp_server.as_deref())?
            .ok_or_else(|| format!("{} gave no policy", path.display()))
    })
}

/// What a running session watches for live reloads: on an enrolled machine the
/// agent's verified bundle (each new central policy, narrowed by `local`: the local
/// policy the session started with), else the `--policy` file, if any.
fn reload_source(
    file: Option<PathBuf>,
    local: Option<Policy>,
    mcp_server: Option<String>,
) -> Option<(PathBuf, crate::reload::Loader)> {
    let home = crate::home::warden_home();
    let Some(bundle) = warden_agent::watched_bundle(&home) else {
        return file.map(|p| (p, loader(mcp_server)));
    };
    let load: crate::reload::Loader = Box::new(move |_| {
        let p = enrolled_reload(&home, local.as_ref(), "warden run")?;
        for_server(Some(p), mcp_server.as_deref())?.ok_or_else(|| "no policy".to_string())
    });
    Some((bundle, load))
}

/// The policy a running session on an enrolled machine moves to after a push: the new
/// central policy narrowed by the session's `local` policy. When the local policy no
/// longer fits, that is a policy denying everything; `who` says so on stderr.
pub(crate) fn enrolled_reload(
    home: &Path,
    local: Option<&Policy>,
    who: &str,
) -> Result<Policy, String> {
    let p = warden_agent::reloaded_session_policy(home, local).map_err(|e| e.to_string())?;
    if let Some(why) = p.refusal() {
        eprintln!("{who}: {why}\r");
    }
    Ok(p)
}

/// Dispatch to the sandbox init when this process was started as one (sessions start
/// `warden-init` instead, see [`use_init_program`]; a `warden` binary still works as one).
pub fn maybe_sandbox_init() {
    if warden_sandbox::is_init_invocation() {
        warden_sandbox::init_main();
    }
}

/// Sessions start `warden-init` from the directory this `warden` is in (`cargo build`
/// and `cargo install` put both there): a small program starts faster than this one. A
/// missing or unusable one fails the session's preflight, naming it (no fallback).
fn use_init_program() -> anyhow::Result<()> {
    let exe = std::env::current_exe()
        .context("locating the warden binary (its directory holds warden-init)")?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    warden_sandbox::set_init_program(dir.join("warden-init"));
    Ok(())
}

const EXIT_FAILED: u8 = crate::EXIT_WARDEN_FAILED;

fn session_id() -> String {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The host's home (`$HOME`); the session gets an empty tmpfs at the same path. When
/// `$HOME` is unset, relative or `/`, the session's home is `/home/<uid>` instead.
fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| Path::new(h).is_absolute() && Path::new(h) != Path::new("/"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/home/{}", rustix::process::getuid().as_raw())))
}

/// `p` made absolute, with the symlinks of its longest existing part resolved: the
/// sandbox compares host paths with the canonical sources of its mounts, also for
/// paths that do not exist yet.
fn canonical(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut existing = abs.as_path();
    let mut missing = Vec::new();
    loop {
        if let Ok(mut c) = existing.canonicalize() {
            c.extend(missing.iter().rev());
            return c;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name);
                existing = parent;
            }
            _ => return abs,
        }
    }
}

/// Where the directory entry `p` names is, its directory's symlinks resolved but not
/// `p` itself: whoever can write there can replace what `p` points to.
fn entry(p: &Path) -> PathBuf {
    let dir = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match p.file_name() {
        Some(name) => canonical(dir).join(name),
        None => canonical(p),
    }
}

/// Warden's own files as a session's mounts would show them, and how each is kept from
/// the session (docs/decisions/0002-sandbox.md, "Warden's own state and configuration").
struct OwnFiles {
    /// Hidden like `filesystem.deny` paths, with what each is (for its `hide` event):
    /// `WARDEN_HOME`, the audit log, the files of `file:` credentials.
    hide: Vec<(PathBuf, &'static str)>,
    /// Visible but read-only: the `--policy` file, its Cedar rules, the files named on a
    /// `command:` credential's command line or an MCP server's, `tls.extra_roots`,
    /// `warden` and `warden-init`. Run or read at the next start or reload, they must not
    /// be the agent's.
    read_only: Vec<PathBuf>,
    /// The `--policy` file is writable from the session: not reloaded.
    policy_in_reach: bool,
}

/// [`OwnFiles`] of a session with `mounts` and `hidden` paths. `WARDEN_HOME` and the
/// audit log are created first when a mount shows where they go, so that the session
/// cannot create them for the next run.
fn own_files(
    mounts: &[Mount],
    hidden: &[PathBuf],
    warden_home: &Path,
    audit_path: &Path,
    policy_path: Option<&Path>,
    loader: &CredentialLoader,
    policy: &Policy,
) -> Result<OwnFiles, String> {
    let mut hidden = hidden.to_vec();
    let mut hide = Vec::new();
    let audit_path = canonical(audit_path);
    let mut state = vec![
        (
            warden_home.to_path_buf(),
            "Warden's own directory (WARDEN_HOME: local secrets, enrollment keys, audit log)",
        ),
        (audit_path.clone(), "the audit log"),
    ];
    for f in loader.source_files(policy) {
        state.push((canonical(&f), "the file a credential is read from"));
    }
    let dir = |p: &Path| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)
    };
    for (path, what) in state {
        let shown = mounts.iter().any(|m| path.starts_with(&m.source))
            && !hidden.iter().any(|h| path.starts_with(h));
        if !shown {
            continue;
        }
        let created = if path == warden_home {
            dir(&path)
        } else if path == audit_path {
            dir(path.parent().unwrap_or(Path::new("/"))).and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&path)
                    .map(drop)
            })
        } else {
            Ok(())
        };
        created.map_err(|e| format!("creating {}: {e}", path.display()))?;
        hidden.push(path.clone());
        hide.push((path, what));
    }

    let writable = |p: &Path| {
        mounts
            .iter()
            .any(|m| m.writable && p.starts_with(&m.source))
            && !hidden.iter().any(|h| p.starts_with(h))
    };
    // The policy named through a link the session could re-point: the next session
    // would run under whatever file the agent points it at.
    if let Some((p, link)) =
        policy_path.and_then(|p| link_in_reach(p, &writable).map(|link| (p, link)))
    {
        return Err(format!(
            "the policy file {} is reached through {}, a link the session could re-point (it is \
             in a writable mount); name the policy by its real path",
            p.display(),
            link.display()
        ));
    }
    let policy_file = policy_path.map(canonical).filter(|p| writable(p));
    let policy_in_reach = policy_file.is_some();
    let mut read_only: Vec<PathBuf> = policy_file.into_iter().collect();
    read_only.extend(cedar_rules(policy, mounts, &writable)?);
    let mut inputs = loader.command_files(policy);
    inputs.extend(policy.doc().tls.extra_roots.iter().cloned());
    // The programs the policy's MCP servers run: changed by the agent, a server started
    // for its next client would run the agent's code with the server's own network and
    // credentials.
    for server in &policy.doc().mcp.servers {
        if let warden_policy::Transport::Command(argv) = &server.transport {
            inputs.extend(
                argv.iter()
                    .map(PathBuf::from)
                    .filter(|p| p.is_absolute() && p.is_file()),
            );
        }
    }
    if let Ok(exe) = std::env::current_exe() {
        inputs.push(exe.with_file_name("warden-init"));
        inputs.push(exe);
    }
    let credential_files = loader.source_files(policy);
    if let Some((input, link)) = inputs
        .iter()
        .chain(&credential_files)
        .find_map(|p| link_in_reach(p, &writable).map(|l| (p, l)))
    {
        return Err(format!(
            "{} (which Warden reads or runs for the session) is reached through {}, a link the \
             session could re-point (it is in a writable mount); name it by its real path in \
             the policy, or keep it outside the session's writable mounts",
            input.display(),
            link.display()
        ));
    }
    read_only.extend(inputs.iter().map(|p| canonical(p)).filter(|p| writable(p)));
    Ok(OwnFiles {
        hide,
        read_only,
        policy_in_reach,
    })
}

/// What of the policy's `[cedar] files` the session must see read-only: each glob's
/// root (where a new matching file would be picked up) and each file loaded, where the
/// session could write them. Rules the agent added or changed would be the next
/// session's (or this one's, at a reload). `Err` when that cannot be done without
/// making a writable mount read-only (a glob's root at or above one), or when the path
/// to a root runs through a link the session could re-point.
fn cedar_rules(
    policy: &Policy,
    mounts: &[Mount],
    writable: &dyn Fn(&Path) -> bool,
) -> Result<Vec<PathBuf>, String> {
    let fix = "keep the Cedar files in a directory of their own (e.g. `files = [\"rules/*.cedar\"]`), \
               outside the session's writable mounts or below them";
    let mut out = Vec::new();
    for root in policy.cedar_roots() {
        if let Some(link) = link_in_reach(root, writable) {
            return Err(format!(
                "the policy's [cedar] files are found through {}, a link the session could re-point \
                 (it is in a writable mount); {fix}",
                link.display()
            ));
        }
        let root = canonical(root);
        if let Some(m) = mounts
            .iter()
            .find(|m| m.writable && m.source.starts_with(&root))
        {
            return Err(format!(
                "the policy's [cedar] files are looked for in {}, which is or contains the session's writable \
                 mount {}: the agent could add rules to its next session; {fix}",
                root.display(),
                m.source.display()
            ));
        }
        if writable(&root) {
            // Only what exists can be covered: gone since the policy was read, the
            // session could create it.
            if !root.exists() {
                return Err(format!(
                    "{} (where the policy's [cedar] files are looked for) is gone since the \
                     policy was read; start the session again",
                    root.display()
                ));
            }
            out.push(root);
        }
    }
    // A loaded file may be a link (in a covered root: the session cannot change it) to
    // anywhere: the links after it must not be the session's either.
    let covered = out.clone();
    let writable_now = |p: &Path| writable(p) && !covered.iter().any(|r| p.starts_with(r));
    for file in policy.cedar_files() {
        if let Some(link) = link_in_reach(file, &writable_now) {
            return Err(format!(
                "the policy's Cedar file {} is found through {}, a link the session could \
                 re-point (it is in a writable mount); {fix}",
                file.display(),
                link.display()
            ));
        }
        let file = canonical(file);
        if writable(&file) && !out.iter().any(|r| file.starts_with(r)) {
            out.push(file);
        }
    }
    Ok(out)
}

/// The first symbolic link on the way to `p`, following links, that sits in a directory
/// the session can write (it could point it elsewhere before the next start), if any.
fn link_in_reach(p: &Path, writable: &dyn Fn(&Path) -> bool) -> Option<PathBuf> {
    let mut path = std::path::absolute(p).ok()?;
    // As the kernel does: a bounded number of links, then give up (nothing to protect
    // then: the file cannot be opened either).
    for _ in 0..40 {
        let comps: Vec<_> = path.components().collect();
        let mut prefix = PathBuf::new();
        let mut next = None;
        for (i, c) in comps.iter().enumerate() {
            prefix.push(c);
            let is_link =
                std::fs::symlink_metadata(&prefix).is_ok_and(|m| m.file_type().is_symlink());
            if !is_link {
                continue;
            }
            if writable(&entry(&prefix)) {
                return Some(prefix);
            }
            let target = std::fs::read_link(&prefix).ok()?;
            let mut resolved = prefix.parent().unwrap_or(Path::new("/")).join(target);
            resolved.extend(&comps[i + 1..]);
            next = Some(resolved);
            break;
        }
        path = next?;
    }
    None
}

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '[', '{'])
}

/// `filesystem.deny` patterns as the sandbox takes them: concrete paths and globs, `~`
/// expanded. A bare `~` is left out: home is never mounted (the session's home is an
/// empty tmpfs), and a workspace under home must stay visible.
fn hide_lists(deny: &[String], home: &Path) -> (Vec<PathBuf>, Vec<String>) {
    let mut paths = Vec::new();
    let mut globs = Vec::new();
    for p in deny {
        let p = p.trim_end_matches('/');
        if p == "~" || p.is_empty() {
            continue;
        }
        let expanded = match p.strip_prefix("~/") {
            Some(rest) => format!("{}/{rest}", home.display()),
            None => p.to_string(),
        };
        if is_glob(&expanded) {
            globs.push(expanded);
        } else {
            paths.push(PathBuf::from(expanded));
        }
    }
    (paths, globs)
}

pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // The session's init starts now, in its namespaces, while the policy is read and
    // the spec is built; it waits for the spec (see `warden_sandbox::launch`).
    use_init_program()?;
    let launch = warden_sandbox::launch(TtyMode::Auto);
    // What the session writes into git directories it could not guard is reported by
    // its change time against this (warden_sandbox::git_written_during).
    let began = std::time::SystemTime::now();
    let full = session_policy(args.policy.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    // On an enrolled machine, the local policy a reload re-applies to each new central one.
    let local = full
        .as_ref()
        .and_then(Policy::narrowing)
        .map(|(_, l)| l.clone());
    let policy = for_server(full, args.mcp_server.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .unwrap_or_else(|| Policy::preset(Preset::Balanced));
    let backend = choose_backend(args.backend, &policy)?;
    let home = home_dir();
    let workspace = match &args.workspace {
        Some(w) => w.clone(),
        None => std::env::current_dir().context("reading the current directory")?,
    };
    let workspace = workspace
        .canonicalize()
        .with_context(|| format!("workspace {}", workspace.display()))?;
    if !workspace.is_dir() {
        bail!("workspace {} is not a directory", workspace.display());
    }
    let warden_home = canonical(&crate::home::warden_home());
    if workspace.starts_with(&warden_home) {
        bail!(
            "workspace {} is inside Warden's own directory {} (WARDEN_HOME), which no session may see; \
             run from another directory or pass --workspace DIR",
            workspace.display(),
            warden_home.display()
        );
    }
    let fs = &policy.doc().filesystem;
    if fs.workspace != WorkspaceMode::None {
        policy
            .check_workspace(&workspace, &home)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let enforce = policy.mode() == warden_policy::Mode::Enforce;
    // The policy's MCP servers are served to the session by a gateway at its MCP door;
    // not in the sessions that gateways start for those servers themselves.
    let mcp_token = (args.mcp_server.is_none() && !policy.doc().mcp.servers.is_empty())
        .then(|| crate::cmd::mcp::hex_id() + &crate::cmd::mcp::hex_id());
    let session = session_id();
    let stamp = Stamp {
        session: session.clone(),
        machine: crate::home::machine_id(),
        user: crate::home::user_name(),
        policy: policy.id().to_string(),
    };
    let audit_path = args
        .audit
        .clone()
        .unwrap_or_else(crate::home::default_audit_file);
    let open_log = {
        let audit_path = audit_path.clone();
        move || {
            AuditLog::open(&audit_path)
                .with_context(|| format!("opening the audit log {}", audit_path.display()))
        }
    };
    let agent = args
        .command
        .first()
        .map(|c| {
            Path::new(c)
                .file_name()
                .map_or_else(|| c.to_string_lossy(), |n| n.to_string_lossy())
                .into_owned()
        })
        .unwrap_or_default();
    let principal = Principal {
        session: session.clone(),
        user: stamp.user.clone(),
        machine: stamp.machine.clone(),
        agent,
        labels: args
            .name
            .iter()
            .map(|n| ("name".to_string(), n.clone()))
            .collect(),
    };

    // Redacted once the credentials are loaded (below); `fail` records the latest.
    let command_line = std::cell::RefCell::new(
        args.command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    );
    let fail = |log: &AuditLog, why: String| -> anyhow::Result<ExitCode> {
        let _ = log.record_durable(
            &stamp,
            Event::new(
                Surface::Session,
                "end",
                &command_line.borrow(),
                Verdict::Deny,
            )
            .reason(&why)
            .field("exit_status", i64::from(EXIT_FAILED))
            .field("duration_ms", started.elapsed().as_millis() as u64),
        );
        eprintln!("warden: {why}");
        Ok(ExitCode::from(EXIT_FAILED))
    };
    // Mounts, each decided by the policy and recorded.
    let mut wanted: Vec<(PathBuf, PathBuf, bool)> = Vec::new();
    match fs.workspace {
        WorkspaceMode::Rw => wanted.push((workspace.clone(), workspace.clone(), true)),
        WorkspaceMode::Ro => wanted.push((workspace.clone(), workspace.clone(), false)),
        WorkspaceMode::None => {}
    }
    let mut events = Vec::new();
    for m in &fs.mounts {
        let host = warden_policy::expand_home(&m.host, &home);
        let target = m
            .path
            .as_ref()
            .map(|p| warden_policy::expand_home(p, &home))
            .unwrap_or_else(|| host.clone());
        match host.canonicalize() {
            Ok(src) => {
                let target = if m.path.is_some() {
                    target
                } else {
                    src.clone()
                };
                wanted.push((src, target, m.mode == MountMode::Rw));
            }
            Err(e) => {
                eprintln!(
                    "warden: {}:{}: [[filesystem.mounts]] {}: {e}; the session runs without it \
                     (create it, or remove the entry)",
                    policy.origin(),
                    m.line,
                    host.display()
                );
                events.push(
                    Event::new(
                        Surface::Filesystem,
                        "mount",
                        &host.to_string_lossy(),
                        Verdict::Deny,
                    )
                    .rule(&format!("{}:{}", policy.origin(), m.line))
                    .reason(&format!("not mounted: {e}")),
                );
            }
        }
    }
    let mut mounts = Vec::new();
    for (source, target, writable) in wanted {
        let d = policy.decide(
            &principal,
            &Request::Path {
                path: &source,
                write: writable,
                workspace: &workspace,
                home: &home,
            },
        );
        let mode = if writable { "rw" } else { "ro" };
        events.push(
            Event::new(
                Surface::Filesystem,
                "mount",
                &source.to_string_lossy(),
                if d.allow {
                    Verdict::Allow
                } else {
                    Verdict::Deny
                },
            )
            .rule(&d.rule.to_string())
            .reason(&d.reason)
            .enforced(enforce || d.allow)
            .field("mode", mode)
            .field("path", target.to_string_lossy().into_owned()),
        );
        if d.allow || !enforce {
            mounts.push(Mount {
                source,
                target,
                writable,
            });
        }
    }
    let (hide, hide_patterns) = hide_lists(&fs.deny, &home);
    for (i, p) in fs.deny.iter().enumerate() {
        let line = fs.deny_lines.get(i).copied().unwrap_or(0);
        events.push(
            Event::new(Surface::Filesystem, "hide", p, Verdict::Deny)
                .rule(&format!("{}:{line}", policy.origin()))
                .reason("filesystem.deny: never visible in the session"),
        );
    }

    // Working directory: where the caller is, if that is visible, else the workspace.
    let here = std::env::current_dir()
        .ok()
        .and_then(|d| d.canonicalize().ok());
    let cwd = here
        .as_ref()
        .and_then(|h| {
            mounts
                .iter()
                .find_map(|m| h.strip_prefix(&m.source).ok().map(|rel| m.target.join(rel)))
        })
        .or_else(|| mounts.first().map(|m| m.target.clone()))
        .unwrap_or_else(|| home.clone());

    let mut extra = Vec::new();
    for e in &args.env {
        let b = e.as_bytes();
        match b.iter().position(|c| *c == b'=') {
            Some(i) => extra.push((
                OsString::from(std::ffi::OsStr::from_bytes(&b[..i])),
                OsString::from(std::ffi::OsStr::from_bytes(&b[i + 1..])),
            )),
            None => {
                if let Some(v) = std::env::var_os(e) {
                    extra.push((e.clone(), v));
                }
            }
        }
    }
    // Proxy variables first, so that an explicit `--env` still wins; programs that
    // ignore them are captured by the session's TUN device all the same.
    let proxy_url = format!("http://{}", warden_sandbox::PROXY_ADDR);
    let mut vars: Vec<(OsString, OsString)> = Vec::new();
    for k in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        vars.push((k.into(), proxy_url.clone().into()));
        vars.push((k.to_ascii_lowercase().into(), proxy_url.clone().into()));
    }
    for k in ["NO_PROXY", "no_proxy"] {
        vars.push((k.into(), "localhost,127.0.0.1,::1".into()));
    }
    // Tell tools they run in a sandbox: Claude Code refuses
    // `--dangerously-skip-permissions` as root (root in a session is not root on the
    // host) unless IS_SANDBOX=1 says the boundary is elsewhere, which it is.
    vars.push(("IS_SANDBOX".into(), "1".into()));
    if let Some(token) = &mcp_token {
        let url = format!("http://{}/mcp", warden_sandbox::MCP_ADDR);
        vars.push(("WARDEN_MCP_URL".into(), url.into()));
        vars.push(("WARDEN_MCP_TOKEN".into(), token.into()));
    }
    // Credentials and TLS: a session CA for the proxy's interception, the session's
    // trust bundle (the host's roots plus that CA) overlaid at the system bundle path,
    // and every loaded credential as a placeholder (the real value stays here).
    let given: HashMap<String, String> = args
        .credential_placeholder
        .iter()
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Loads them again on each reload; ends their vault leases when the session ends.
    let loader = Arc::new(CredentialLoader::new(args.policy.as_deref(), &session));
    let icpt = match loader.start(&policy, &given) {
        Ok(c) => c,
        Err(e) => return fail(&open_log()?, e),
    };
    // The command line is recorded: never with a credential's real value in it.
    let redacted = icpt.redact(&command_line.borrow());
    *command_line.borrow_mut() = redacted;
    let bundle_path = Path::new(warden_sandbox::SESSION_TRUST_BUNDLE);
    // Clients that ship their own trust store (Node, pip, requests, ...) are pointed at
    // the session bundle too: every runtime trusts the same CAs.
    for (k, v) in warden_tls::ca_env(bundle_path) {
        vars.push((k.into(), v.into()));
    }
    vars.extend(extra);
    // Placeholders last: `--env` cannot hand the agent a real credential the policy binds.
    let ca_len = warden_tls::ca_env(bundle_path).len();
    for (k, v) in icpt.session_env(bundle_path).into_iter().skip(ca_len) {
        if vars
            .iter()
            .any(|(ek, _)| ek.as_os_str() == std::ffi::OsStr::new(&k))
        {
            eprintln!(
                "warden: --env {k}: the session gets a placeholder instead; the proxy adds the real value on requests to the credential's hosts"
            );
        }
        vars.push((k.into(), v.into()));
    }
    let env = warden_sandbox::session_env(std::env::vars_os(), vars, &home);
    // Warden's own files, wherever the workspace is: hidden (state, secrets) or
    // read-only (configuration, programs it runs on the host).
    let own = match own_files(
        &mounts,
        &hide,
        &warden_home,
        &audit_path,
        args.policy.as_deref(),
        &loader,
        &policy,
    ) {
        Ok(own) => own,
        Err(e) => return fail(&open_log()?, e),
    };
    let mut hide = hide;
    for (path, what) in own.hide {
        events.push(
            Event::new(
                Surface::Filesystem,
                "hide",
                &path.to_string_lossy(),
                Verdict::Deny,
            )
            .reason(&format!("{what}: never visible in a session")),
        );
        hide.push(path);
    }
    if let (true, Some(p)) = (own.policy_in_reach, &args.policy) {
        eprintln!(
            "warden: the policy file {} can be reached from the session's writable workspace: \
             this session does not reload it live and shows it read-only (a session must not \
             rewrite its own policy); keep the policy outside the workspace to edit it during a \
             session",
            p.display()
        );
    }
    let lim = &policy.doc().limits;
    let spec = SandboxSpec {
        command: args.command.clone(),
        cwd,
        env,
        mounts,
        hide,
        read_only: own.read_only,
        hide_patterns,
        limits: Limits {
            memory_bytes: lim.memory,
            pids: lim.pids,
            cpus: lim.cpus,
        },
        home: home.clone(),
        hostname: "warden".into(),
        tty: TtyMode::Auto,
        session_id: session.clone(),
        network: Network::Egress,
        mcp_door: mcp_token.is_some(),
        // Supplied late (below): the host's CA roots are read once the spec is sent.
        trust_bundle: None,
        backend,
    };

    if let Err(e) = warden_sandbox::preflight(&spec) {
        return fail(&open_log()?, e.to_string());
    }
    if backend == warden_sandbox::Backend::Gvisor
        && let Some(runsc) = warden_sandbox::find_runsc()
        && let Err(e) = warden_sandbox::check_runsc_release(
            &runsc,
            &crate::home::warden_home().join("runsc-release"),
        )
    {
        return fail(&open_log()?, e.to_string());
    }

    // The audit log is opened, and the decisions and the session start recorded durably,
    // on a helper thread while the sandbox is being built; the command only runs once
    // both are done (`Prepared::start`).
    let start_event = Event::new(
        Surface::Session,
        "start",
        &command_line.borrow(),
        Verdict::Allow,
    )
    .field("backend", backend.as_str())
    .field("workspace", workspace.to_string_lossy().into_owned())
    .field("name", args.name.clone().unwrap_or_default())
    .field("mode", policy.mode().as_str());
    let recorder = {
        let stamp = stamp.clone();
        std::thread::spawn(move || -> anyhow::Result<AuditLog> {
            let log = open_log()?;
            // One fsync covers them all: the log commits in order and the start waits.
            for ev in events {
                drop(
                    log.record(&stamp, ev)
                        .context("recording a filesystem decision")?,
                );
            }
            log.record_durable(&stamp, start_event)
                .context("recording the session start in the audit log")?;
            Ok(log)
        })
    };
    // The session's trust bundle (the host's roots plus the session CA) is read and sent
    // right after the spec, while the init builds its namespaces and network.
    let prepared = warden_sandbox::prepare_with_trust_bundle(launch, &spec, || {
        icpt.session_bundle()
            .map_err(|e| format!("credentials: TLS interception: {e}"))
    });
    let recorded = recorder
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the audit recorder panicked")));
    let log = match recorded {
        Ok(log) => log,
        Err(e) => {
            drop(prepared); // kills the session: nothing runs unrecorded
            return Err(e);
        }
    };
    let mut prepared = match prepared {
        Ok(p) => p,
        Err(e) => return fail(&log, e.to_string()),
    };
    // The session's only way out: the egress proxy serving the doors the sandbox built
    // in its network namespace. It runs until the session has ended.
    let Some(fds) = prepared.take_network() else {
        return fail(&log, "the session's network was not set up".into());
    };
    let credentials = icpt.credentials().clone();
    let gateway_policy = mcp_token.as_ref().map(|_| policy.clone());
    let egress = Egress::new(
        policy,
        EgressConfig {
            identity: Identity {
                session: session.clone(),
                machine: stamp.machine.clone(),
                user: stamp.user.clone(),
            },
            principal: principal.clone(),
            policy_source: args.policy.as_ref().map_or_else(
                || "a policy file (--policy)".to_string(),
                |p| p.display().to_string(),
            ),
            audit: log.clone(),
            resolver: Arc::new(SystemResolver),
            connect_timeout: Duration::from_secs(10),
            interception: Some(Arc::new(icpt)),
        },
    );
    let gateway = match (gateway_policy, mcp_token) {
        (Some(gateway_policy), Some(token)) => {
            let built = crate::cmd::mcp::session_gateway(crate::cmd::mcp::SessionGateway {
                policy: &gateway_policy,
                principal: &principal,
                egress: egress.clone(),
                credentials: &credentials,
                stamp: stamp.clone(),
                audit_file: audit_path.clone(),
                policy_file: args.policy.clone(),
                audit_flag: args.audit.clone(),
            });
            match built {
                Ok(gw) => Some((gw, token)),
                Err(e) => return fail(&log, format!("starting the session's MCP gateway: {e:#}")),
            }
        }
        _ => None,
    };
    let reload_file = args.policy.clone().filter(|_| !own.policy_in_reach);
    let reload = reload_source(reload_file, local, args.mcp_server.clone());
    let egress = Reloading {
        egress,
        loader: loader.clone(),
        who: "warden run",
    };
    let net = match SessionEgress::start(fds, egress, reload, gateway) {
        Ok(n) => n,
        Err(e) => return fail(&log, format!("starting the session's egress proxy: {e:#}")),
    };
    // An MCP server's session is its gateway's: it ends when the gateway's process does.
    if args.mcp_server.is_some()
        && let Err(e) = prepared.killer().and_then(|k| k.kill_when_parent_exits())
    {
        return fail(
            &log,
            format!("watching the MCP gateway that started this server: {e}"),
        );
    }
    // A file that would point the host's git at the agent's configuration cannot be
    // covered before it exists: one appearing in a guarded `.git` is removed and ends
    // the session (warden_sandbox::watch_git).
    let killer = match prepared.killer() {
        Ok(k) => k,
        Err(e) => return fail(&log, format!("preparing the git guard: {e}")),
    };
    let (plant_log, plant_stamp) = (log.clone(), stamp.clone());
    let _git_watch = match warden_sandbox::watch_git(&spec, move |path| {
        killer.kill();
        let what = path.display().to_string();
        eprintln!(
            "warden: the session created {what}, which would make git on this machine read \
             a configuration or hooks the agent wrote; it was removed and the session ended\r"
        );
        let ev = Event::new(Surface::Filesystem, "git_plant", &what, Verdict::Deny)
            .reason("a file that redirects git's configuration appeared in a guarded git directory; removed, session ended")
            .enforced(true);
        if let Err(e) = plant_log.record_durable(&plant_stamp, ev) {
            eprintln!("warden: could not record it in the audit log: {e}");
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            return fail(
                &log,
                format!("watching the workspace's git directories: {e}"),
            );
        }
    };
    let sess = match prepared.start() {
        Ok(s) => s,
        Err(e) => return fail(&log, e.to_string()),
    };
    for w in sess.warnings() {
        eprintln!("warden: warning: {w}");
    }
    let exit = sess.wait();
    drop(net);
    let exit = match exit {
        Ok(x) => x,
        Err(e) => return fail(&log, e.to_string()),
    };
    if let Some(m) = &exit.message {
        eprintln!("warden: {m}");
    }
    // Repositories the agent created (or deeper than the guard looks) got no read-only
    // covers: say which ones it wrote configuration or hooks into, for the user to
    // review before their git runs them, and record each as a deny that was not
    // enforced.
    for w in warden_sandbox::git_written_during(&spec, began) {
        let what = w.written.join(", ");
        let repo = w.repo.display();
        eprintln!(
            "warden: the session wrote git configuration Warden does not guard, in {repo} ({what}); \
             git on this machine runs what it says (hooks, core.fsmonitor, ...): review it before \
             running git there"
        );
        let ev = Event::new(
            Surface::Filesystem,
            "git_unguarded",
            &w.repo.to_string_lossy(),
            Verdict::Deny,
        )
        .reason("git configuration or hooks written in a repository the session root did not guard (created in the session, or deeper than two levels)")
        .enforced(false)
        .field("written", what);
        if let Err(e) = log.record(&stamp, ev) {
            eprintln!("warden: could not record it in the audit log: {e}");
        }
    }
    let _ = log.record_durable(
        &stamp,
        Event::new(
            Surface::Session,
            "end",
            &command_line.borrow(),
            Verdict::Allow,
        )
        .field("exit_status", i64::from(exit.code))
        .field("duration_ms", started.elapsed().as_millis() as u64),
    );
    loader.end_leases();
    Ok(ExitCode::from(
        u8::try_from(exit.code).unwrap_or(EXIT_FAILED),
    ))
}

/// The egress proxy of one session, on a runtime of its own: the explicit proxy, the
/// DNS front end and the TUN stack serve the descriptors the sandbox handed over, and
/// the policy file (if any) is watched for live reloads. Dropping it ends every flow and
/// then the runtime; the session, if still running, is left without a route.
struct SessionEgress {
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    tun: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Set once the session has ended and the proxy is being stopped.
    stopping: Arc<AtomicBool>,
    /// A descriptor of the session's TUN device (see `Drop`).
    tun_keep: Arc<Mutex<Option<OwnedFd>>>,
    /// The session serves an MCP gateway, whose servers end with the runtime's tasks.
    gateway: bool,
}

impl SessionEgress {
    fn start(
        fds: NetworkFds,
        reloading: Reloading,
        reload: Option<(PathBuf, crate::reload::Loader)>,
        gateway: Option<(Arc<warden_mcp::Gateway>, String)>,
    ) -> anyhow::Result<SessionEgress> {
        let egress = reloading.egress.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("warden-egress")
            .build()
            .context("starting the proxy runtime")?;
        let _entered = runtime.enter();
        let proxy = std::net::TcpListener::from(fds.proxy);
        proxy.set_nonblocking(true)?;
        let proxy = tokio::net::TcpListener::from_std(proxy)?;
        let dns = std::net::UdpSocket::from(fds.dns);
        dns.set_nonblocking(true)?;
        let dns = tokio::net::UdpSocket::from_std(dns)?;
        runtime.spawn(report_end(
            "proxy",
            warden_egress::serve_proxy(egress.clone(), proxy),
        ));
        runtime.spawn(report_end(
            "DNS",
            warden_egress::serve_dns(egress.clone(), dns),
        ));
        let serves_gateway = gateway.is_some();
        if let Some((gw, token)) = gateway {
            let Some(door) = fds.mcp else {
                anyhow::bail!("the sandbox did not hand over the session's MCP door");
            };
            let door = std::net::TcpListener::from(door);
            door.set_nonblocking(true)?;
            let door = tokio::net::TcpListener::from_std(door)?;
            runtime.spawn(report_end("MCP gateway", async move {
                warden_mcp::front::http::serve(gw, door, warden_mcp::HttpOptions::new(token))
                    .await
                    .map_err(std::io::Error::other)
            }));
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopping = Arc::new(AtomicBool::new(false));
        let tun_keep = Arc::new(Mutex::new(None::<OwnedFd>));
        let tun = fds.tun.map(|tun| {
            // A second descriptor of the device, to leave its deletion to the kernel's
            // teardown of the namespace once the session has ended (see `Drop`).
            if let Ok(mut keep) = tun_keep.lock() {
                *keep = tun.try_clone().ok();
            }
            let (egress, stopping, keep) = (egress.clone(), stopping.clone(), tun_keep.clone());
            runtime.spawn(async move {
                let served =
                    warden_egress::serve_tun_until(egress, tun, warden_sandbox::TUN_MTU, async {
                        let _ = stopped.await;
                    })
                    .await;
                if !stopping.load(Ordering::SeqCst) {
                    // Ended while the session may still run: the device goes now, and
                    // its routes with it (no route out).
                    drop(keep.lock().ok().and_then(|mut k| k.take()));
                }
                served
            })
        });
        if let Some((path, load)) = reload {
            runtime.spawn(crate::reload::watch_policy(
                reloading,
                path,
                load,
                false,
                "warden run",
            ));
        }
        drop(_entered);
        Ok(SessionEgress {
            runtime: Some(runtime),
            stop: Some(stop),
            tun,
            stopping,
            tun_keep,
            gateway: serves_gateway,
        })
    }
}

/// A front end that stops while the session runs leaves that door closed (fail
/// closed); say so.
async fn report_end(what: &str, f: impl std::future::Future<Output = std::io::Result<()>>) {
    if let Err(e) = f.await {
        eprintln!("warden: the session's {what} front end stopped: {e}\r");
    }
}

impl Drop for SessionEgress {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.runtime.take() {
            if let Some(tun) = self.tun.take() {
                // The TUN stack must end its flows while the runtime still runs
                // (see `warden_egress::serve_tun_until`).
                let _ =
                    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), tun).await });
            }
            // The session is gone (this is dropped once it has ended): its TUN device is
            // deleted with its network namespace, in the background, rather than by the
            // close of the last descriptor, which would hold up this process's exit.
            if let Some(keep) = self.tun_keep.lock().ok().and_then(|mut k| k.take())
                && let Err(e) = warden_sandbox::defer_tun_teardown(keep.as_fd())
            {
                eprintln!(
                    "warden: could not hand the session's TUN device to the namespace teardown: {e}"
                );
            }
            if self.gateway {
                // Dropping the gateway's tasks kills its servers' sessions (their
                // children are killed on drop): wait for that rather than leave them.
                rt.shutdown_timeout(Duration::from_secs(2));
            } else {
                // Nothing left to wait for: flows ended above, the session is gone.
                rt.shutdown_background();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hide_lists_split_paths_and_globs() {
        let (p, g) = hide_lists(
            &[
                "~/.ssh".into(),
                "**/.env".into(),
                "~".into(),
                "/etc/shadow".into(),
                "~/.aws/".into(),
            ],
            Path::new("/home/u"),
        );
        assert_eq!(
            p,
            [
                PathBuf::from("/home/u/.ssh"),
                "/etc/shadow".into(),
                "/home/u/.aws".into()
            ]
        );
        assert_eq!(g, ["**/.env"]);
    }
}
