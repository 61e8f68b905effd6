//! The typed tables of a policy file, as validated. Plain data: the runtime crates
//! read these (mounts, limits, credentials, MCP servers, TLS) to set a session up.
//! `line` fields are the 1-based line of the entry in the policy file, for rule refs.

use std::path::{Path, PathBuf};

use crate::host::HostPattern;

/// `mode = "enforce" | "audit"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Enforce,
    /// Nothing is blocked; everything that would be is recorded.
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PolicyDoc {
    pub version: u32,
    pub name: String,
    pub mode: Mode,
    pub network: Network,
    pub tls: Tls,
    pub filesystem: Filesystem,
    pub limits: Limits,
    pub sandbox: Sandbox,
    pub credentials: Vec<Credential>,
    pub mcp: Mcp,
    pub cedar: CedarFiles,
}

/// `[sandbox] backend`: the isolation a session of this policy needs at least.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxBackend {
    /// Any backend (the shared-kernel `namespaces` one is enough).
    #[default]
    Namespaces,
    /// An application kernel between the agent and the host's: gVisor.
    Gvisor,
}

impl SandboxBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxBackend::Namespaces => "namespaces",
            SandboxBackend::Gvisor => "gvisor",
        }
    }
}

/// `[sandbox]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sandbox {
    pub backend: SandboxBackend,
    /// Line of `backend = ...`; 0 when the default applies.
    pub backend_line: u32,
}

/// One host pattern as written, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub pattern: HostPattern,
    /// The entry exactly as written in the file.
    pub written: String,
    pub line: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Network {
    pub allow: Vec<HostEntry>,
    pub deny: Vec<HostEntry>,
    pub http: Vec<HttpRule>,
}

/// `[[network.http]]`: permits its host (ports 80/443 unless given) and restricts
/// HTTP requests to it to the listed methods and paths.
#[derive(Debug, Clone)]
pub struct HttpRule {
    pub host: HostPattern,
    pub host_written: String,
    /// Uppercase; empty = any method.
    pub methods: Vec<String>,
    /// Path globs (`*` one segment, `**` any depth); empty = any path.
    pub paths: Vec<String>,
    pub line: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Intercept {
    /// Terminate TLS only for credential hosts and `[[network.http]]` hosts.
    #[default]
    Needed,
    All,
}

#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// Resolved against the policy file's directory; each exists at load time.
    pub extra_roots: Vec<PathBuf>,
    pub intercept: Intercept,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkspaceMode {
    #[default]
    Rw,
    Ro,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountMode {
    Ro,
    Rw,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    /// As written; `~` is not expanded (see [`expand_home`]).
    pub host: PathBuf,
    /// Where it appears in the session; `None` = at the host path.
    pub path: Option<PathBuf>,
    pub mode: MountMode,
    pub line: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Filesystem {
    pub workspace: WorkspaceMode,
    /// Line of `workspace = ...`; 0 when the default applies.
    pub workspace_line: u32,
    /// Patterns as written (`**/.env`, `~/.ssh`, `/etc/shadow`).
    pub deny: Vec<String>,
    /// Line of each `deny` entry, same order.
    pub deny_lines: Vec<u32>,
    pub mounts: Vec<Mount>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Bytes.
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    Env(String),
    File(PathBuf),
    Command(String),
    Vault(String),
}

#[derive(Debug, Clone)]
pub struct Credential {
    pub name: String,
    pub source: CredentialSource,
    pub hosts: Vec<HostPattern>,
    pub env: Option<String>,
    pub header: Option<String>,
    pub format: Option<String>,
    /// `inject_body = true`: placeholders in request bodies sent to `hosts` (over
    /// intercepted TLS) are replaced by the real value too. Off by default: only
    /// header values and the URL are injected.
    pub inject_body: bool,
    /// `optional = true` (`env:` sources only): when the variable is unset or empty
    /// on the host, the session starts without this credential (its `env` variable is
    /// not set) instead of failing. The built-in presets bind the provider keys so.
    pub optional: bool,
    /// Line of the credential's `name`.
    pub line: u32,
    /// Line of each `hosts` entry, same order.
    pub host_lines: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Command(Vec<String>),
    Url(String),
}

#[derive(Debug, Clone)]
pub struct McpServer {
    pub name: String,
    pub transport: Transport,
    pub credentials: Vec<String>,
    /// `None` when `tools.allow` is not written: declaring the server grants its tools.
    /// `Some(vec![])` allows none.
    pub tools_allow: Option<Vec<String>>,
    pub tools_deny: Vec<String>,
    /// Lines of the `tools.allow` / `tools.deny` entries, same order.
    pub tools_allow_lines: Vec<u32>,
    pub tools_deny_lines: Vec<u32>,
    /// The server's own sandbox: its egress, what it sees (default: no workspace), its limits.
    pub network: Network,
    pub filesystem: Filesystem,
    pub limits: Limits,
    /// Line of the server's `name`.
    pub line: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Mcp {
    pub servers: Vec<McpServer>,
}

#[derive(Debug, Clone, Default)]
pub struct CedarFiles {
    /// Globs as written, relative to the policy file's directory.
    pub files: Vec<String>,
    /// The files they matched, sorted.
    pub resolved: Vec<PathBuf>,
    /// Where each glob looks (its literal prefix under the policy's directory: a
    /// directory, or the file itself for a glob without wildcards): whoever can write
    /// there can add or change rules the next load picks up.
    pub roots: Vec<PathBuf>,
}

/// `~` and `~/x` relative to `home`; every other path unchanged.
pub fn expand_home(p: &Path, home: &Path) -> PathBuf {
    match p.strip_prefix("~") {
        Ok(rest) if rest.as_os_str().is_empty() => home.to_path_buf(),
        Ok(rest) => home.join(rest),
        Err(_) => p.to_path_buf(),
    }
}
