//! warden-sandbox: the session boundary of `warden run`.
//!
//! This crate owns everything that turns a command into a *governed session* on Linux:
//! the namespaces (user, mount, PID, network, IPC, UTS, cgroup), the session's root
//! filesystem (a fresh tmpfs with the system directories read-only, the approved mounts,
//! and `filesystem.deny` paths overmounted), the hardening of the agent process
//! (no_new_privs, no capabilities, seccomp, Landlock, closed descriptors, a new session or
//! a pty), resource limits through cgroups, and the terminal relay.
//!
//! It must never:
//! - run a command without the full boundary: every layer is set up (and verified by
//!   [`preflight`]) or the session fails with [`SandboxError`] and the caller exits 125;
//! - decide policy: the caller (the `warden` CLI, via `warden-policy`) says which paths are
//!   mounted or hidden and which limits apply; this crate only enforces;
//! - do complex work in a forked copy of a multi-threaded process: the session is started
//!   by executing a fresh init — the small `warden-init` program set with
//!   [`set_init_program`], or else the current binary again (`/proc/self/exe`) — with the
//!   hidden marker [`INIT_MARKER`] as `argv[1]`; that process calls [`init_main`], reads
//!   its [`SandboxSpec`] from a dedicated descriptor and sets the session up
//!   single-threaded.
//!
//! This is the only crate of the workspace allowed `unsafe`; every `unsafe` block carries a
//! `// SAFETY:` comment.
//!
//! Process tree of a session:
//! ```text
//! warden run (parent, may be multi-threaded)
//!   └─ init   = warden-init __warden-sandbox-init, PID 1 of the session's PID namespace,
//!      │        in new user/mount/net/IPC/UTS/cgroup namespaces. Builds the root, reaps,
//!      │        forwards signals, exits with the agent's status.
//!      └─ agent: hardened (setsid/pty, Landlock, no caps, no_new_privs, seccomp), execs CMD.
//! ```
#![allow(unsafe_code)]

mod cgroup;
mod env;
mod error;
mod gitwatch;
mod gvisor;
mod init;
mod landlock_layer;
mod mounts;
mod net;
mod preflight;
mod proto;
mod seccomp;
mod session;
mod sys;
mod unixsock;

use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::PathBuf;

pub use env::{DEFAULT_ENV_PASSTHROUGH, session_env};
pub use error::SandboxError;
pub use gitwatch::{GitWatch, GitWritten, git_written_during, watch_git};
pub use gvisor::{RUNSC_INSTALL_HINT, RUNSC_MIN_RELEASE, check_runsc_release, find_runsc};
pub use init::init_main;
pub use net::{
    DNS_ADDR, MCP_ADDR, NetworkFds, PROXY_ADDR, TUN_MTU, TUN_NAME, TUN_V4, TUN_V6,
    defer_tun_teardown,
};
pub use preflight::{Check, preflight, preflight_report};
pub use session::{
    Killer, Launch, Prepared, Session, SessionExit, launch, prepare, prepare_with_trust_bundle,
    spawn,
};

/// `argv[1]` of a process started as a session init: the program set with
/// [`set_init_program`], or else the current executable, which then checks it first thing
/// in `main` and calls [`init_main`].
pub const INIT_MARKER: &str = "__warden-sandbox-init";

/// Returns true when this process was started as a session init (see [`INIT_MARKER`]).
pub fn is_init_invocation() -> bool {
    std::env::args_os().nth(1).is_some_and(|a| a == INIT_MARKER)
}

/// The program set with [`set_init_program`].
static INIT_PROGRAM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Starts every later session's init as `program`, a small binary whose `main` only calls
/// [`init_main`] (`warden-init`), instead of re-executing the current executable with
/// [`INIT_MARKER`]: a session's start pays for loading, relocating and initialising its
/// init, which for a large program costs about a millisecond more. The path should be
/// absolute and as trusted as the caller itself (the caller's own directory). When it
/// cannot be executed, [`preflight`] and [`prepare`] fail, naming it; nothing falls back
/// to another program. Set once, before the first session; returns false (and changes
/// nothing) when it was set already.
pub fn set_init_program(program: PathBuf) -> bool {
    INIT_PROGRAM.set(program).is_ok()
}

/// The program set with [`set_init_program`], if any.
pub(crate) fn init_program() -> Option<&'static std::path::Path> {
    INIT_PROGRAM.get().map(PathBuf::as_path)
}

/// Why the init program set with [`set_init_program`] cannot be started, if it cannot:
/// `(what, fix)`.
pub(crate) fn init_program_problem() -> Option<(String, String)> {
    let program = init_program()?;
    let c =
        std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(program.as_os_str())).ok()?;
    // SAFETY: access(2) on a valid NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
        return None;
    }
    let e = std::io::Error::last_os_error();
    Some((
        format!(
            "the session init program {} cannot be executed ({e})",
            program.display()
        ),
        "It is built and installed together with the program that starts sessions, and          must stay in the same directory: for warden, `cargo build --release -p warden`          builds both `warden` and `warden-init`, and `cargo install --path crates/warden`          installs both."
            .to_string(),
    ))
}

/// A directory or file of the host made visible in the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Host path. Should be canonical (the caller resolves symlinks it trusts); the sandbox
    /// resolves it again with the host's `/` as root and never through the session's view.
    pub source: PathBuf,
    /// Absolute path inside the session.
    pub target: PathBuf,
    /// Read-write when true, read-only otherwise.
    pub writable: bool,
}

/// Resource limits applied through a per-session cgroup. `None` means no limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory (and, where the kernel accounts it, memory+swap) in bytes.
    pub memory_bytes: Option<u64>,
    /// Maximum number of tasks (processes and threads).
    pub pids: Option<u64>,
    /// CPU bandwidth in CPUs (1.5 = one and a half cores).
    pub cpus: Option<f64>,
}

impl Limits {
    /// True when no limit is set (no cgroup is needed).
    pub fn is_empty(&self) -> bool {
        self.memory_bytes.is_none() && self.pids.is_none() && self.cpus.is_none()
    }
}

/// How the session's standard streams are connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TtyMode {
    /// A pty when both stdin and stdout are terminals, else inherited descriptors.
    #[default]
    Auto,
    /// Always allocate a pty. When stdin is not a terminal the relay still works, but the
    /// host side is not put in raw mode and resizes are not followed.
    Pty,
    /// Never allocate a pty; the session inherits stdin/stdout/stderr.
    Inherit,
}

/// Everything the sandbox needs to build one session. Sent to the init as JSON over a
/// dedicated descriptor, never through argv or the environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The command and its arguments. `command[0]` is looked up in the session's `PATH`
    /// unless it contains a `/`.
    pub command: Vec<OsString>,
    /// Working directory inside the session.
    pub cwd: PathBuf,
    /// The complete environment of the command (see [`session_env`]).
    pub env: Vec<(OsString, OsString)>,
    /// Host directories and files visible in the session; the workspace is one of them.
    pub mounts: Vec<Mount>,
    /// Concrete host paths to hide (files or directories), e.g. `~/.ssh` expanded. Hidden
    /// where they are visible through a mount: an empty read-only directory or file.
    pub hide: Vec<PathBuf>,
    /// Concrete host files or directories that stay visible but read-only where they are
    /// visible through a writable mount (Warden's own configuration inside a workspace,
    /// e.g. the session's policy file): the path is bound read-only over itself, so it can
    /// be neither changed, nor removed, nor renamed away from inside the session.
    #[serde(default)]
    pub read_only: Vec<PathBuf>,
    /// Glob patterns (`**/.env`, `**/*.pem`) hidden inside the mounts. Matched against both
    /// the host path and the session path of each entry. The walk is bounded, see
    /// [`HIDE_WALK_MAX_ENTRIES`] and [`HIDE_WALK_MAX_DEPTH`].
    pub hide_patterns: Vec<String>,
    /// cgroup limits.
    pub limits: Limits,
    /// The session's home directory: an empty writable tmpfs at this path.
    pub home: PathBuf,
    /// The session's host name (UTS namespace).
    pub hostname: String,
    /// Terminal handling.
    pub tty: TtyMode,
    /// Unique session id; names the cgroup (`warden-<id>`). Letters, digits, `-`, `_`.
    pub session_id: String,
    /// What the session's network namespace holds besides `lo`.
    pub network: Network,
    /// Also a listening socket at [`MCP_ADDR`], handed over in [`NetworkFds::mcp`], for
    /// the caller's MCP gateway (only with [`Network::Egress`]).
    #[serde(default)]
    pub mcp_door: bool,
    /// PEM certificates the session trusts instead of the host's bundle: shown at
    /// [`SESSION_TRUST_BUNDLE`] (the system bundle's path, overlaid read-only), e.g. the
    /// host's roots plus the session CA of an intercepting proxy. `None`: the host's.
    pub trust_bundle: Option<String>,
    /// Which isolation backend runs the command (see [`Backend`]).
    #[serde(default)]
    pub backend: Backend,
}

impl SandboxSpec {
    /// The writable mounts that are not hidden as a whole: where the session can change
    /// what the host later reads (git directories, Warden's own files).
    pub(crate) fn writable_mounts(&self) -> impl Iterator<Item = &Mount> {
        self.mounts
            .iter()
            .filter(|m| m.writable && !self.hide.iter().any(|h| m.source.starts_with(h)))
    }
}

/// The isolation backend of a session: what stands between the command and the host
/// kernel. Everything else of a session — the namespaces, the root built from `mounts`
/// and `hide`, the cgroup limits, the network doors, the terminal, the handshake with
/// the caller — is common to all backends; only the last step of the session init, how
/// the command is started on that root, differs (see docs/decisions/0004-backends.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    /// The command runs directly on the host kernel, hardened: no capabilities,
    /// `no_new_privs`, a seccomp deny-list, Landlock, the unix-socket guard.
    #[default]
    Namespaces,
    /// The command runs under gVisor (`runsc`, ptrace platform): its system calls are
    /// served by gVisor's application kernel, which alone talks to the host kernel under
    /// gVisor's own seccomp filters. Built on the same session root and network doors.
    Gvisor,
}

impl Backend {
    /// The name used on the command line, in policies and in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Namespaces => "namespaces",
            Backend::Gvisor => "gvisor",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the session's CA bundle is (Debian's system bundle path; see
/// [`SandboxSpec::trust_bundle`]).
pub const SESSION_TRUST_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The session's network. Either way the session has its own network namespace with
/// no interface of the host in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// Loopback only: nothing leaves the session.
    #[default]
    Loopback,
    /// Loopback plus the doors to an egress proxy run by the caller: a TUN device with
    /// the default routes, a proxy listener and a DNS socket inside the namespace, handed
    /// to the caller as [`NetworkFds`] by [`Prepared::take_network`]. Serve them before
    /// [`Prepared::start`]; when they are closed the session has no route out.
    Egress,
}

/// Bound on the number of directory entries examined per mount when looking for
/// `hide_patterns` matches. Past it the walk stops and the session reports a warning (see
/// [`Session::warnings`]); the remaining tree is mounted without pattern hiding.
pub const HIDE_WALK_MAX_ENTRIES: usize = 200_000;
/// Depth bound of the same walk (directories deeper than this are not examined).
pub const HIDE_WALK_MAX_DEPTH: usize = 24;
/// Directory names the pattern walk does not descend into: tool caches that hold
/// third-party code, not the user's secrets, and dominate the size of most workspaces.
/// Patterns still match these directories' own names.
pub const HIDE_WALK_SKIP_DIRS: &[&str] =
    &[".git", "node_modules", "target", ".venv", "__pycache__"];
