//! The built-in presets: the commented TOML that `warden policy init` writes, and
//! that [`crate::Policy::preset`] compiles, so what a user reads is what runs.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    Open,
    Balanced,
    Locked,
}

impl Preset {
    pub const ALL: [Preset; 3] = [Preset::Open, Preset::Balanced, Preset::Locked];

    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Open => "open",
            Preset::Balanced => "balanced",
            Preset::Locked => "locked",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown preset name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown preset `{0}` (expected open, balanced or locked)")]
pub struct UnknownPreset(pub String);

impl FromStr for Preset {
    type Err = UnknownPreset;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Preset::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPreset(s.to_owned()))
    }
}

const OPEN: &str = r#"# Warden policy: the "open" preset.
# Any host on any port; the session sees the workspace read-write and nothing of
# your home directory. Every decision is still recorded.
version = 1
name = "open"
mode = "enforce"              # "audit": block nothing, record what would be blocked

[network]
# "*:*" is any host *name* on any port. IP literals and names that resolve to
# loopback, private or cloud-metadata addresses still need an IP or CIDR entry.
allow = ["*:*"]
deny = []

[filesystem]
workspace = "rw"              # the --workspace directory, at the same path
# Home is hidden. A workspace under home stays visible: a deny pattern never hides
# the directory a session was given (only what lies inside it, if it matches).
deny = ["~"]
"#;

const BALANCED: &str = r#"# Warden policy: the "balanced" preset (the default of `warden run`).
# LLM provider APIs, package registries and source hosts; the workspace read-write;
# credentials and secrets directories hidden.
version = 1
name = "balanced"
mode = "enforce"              # "audit": block nothing, record what would be blocked

[network]
# Entries without a port allow 80 and 443. "*." is exactly one extra label.
allow = [
  # LLM provider APIs
  "api.anthropic.com",
  "statsig.anthropic.com",
  "api.openai.com",
  "chatgpt.com",
  "auth.openai.com",
  "generativelanguage.googleapis.com",
  "oauth2.googleapis.com",
  "cloudcode-pa.googleapis.com",
  "openrouter.ai",
  # Package registries
  "registry.npmjs.org",
  "registry.yarnpkg.com",
  "pypi.org",
  "files.pythonhosted.org",
  "crates.io",
  "index.crates.io",
  "static.crates.io",
  "static.rust-lang.org",
  "proxy.golang.org",
  "sum.golang.org",
  "rubygems.org",
  "repo.maven.apache.org",
  "repo1.maven.org",
  # Source hosts (git over HTTPS, and over SSH on port 22)
  "github.com",
  "api.github.com",
  "codeload.github.com",
  "*.githubusercontent.com",
  "gitlab.com",
  "bitbucket.org",
  "ssh.github.com:22",
  "github.com:22",
]
deny = []                     # deny always wins over allow

[filesystem]
workspace = "rw"              # the --workspace directory, at the same path
deny = [                      # never visible, even inside the workspace
  "~/.ssh",
  "~/.aws",
  "~/.gnupg",
  "~/.config/gcloud",
  "~/.azure",
  "~/.kube",
  "~/.docker",
  "~/.netrc",
  "~/.git-credentials",
  "~/.config/gh",               # GitHub CLI's tokens
  "~/.codex/auth.json",         # Codex CLI's sign-in
  "**/.credentials.json",       # Claude Code's sign-in, wherever CLAUDE_CONFIG_DIR is
  "**/.env",
  "**/.env.*",
  "**/*.pem",
  "**/*.key",
]

# No [limits]: they need cgroups (root, or a delegated cgroup for other users), and
# the default policy must work for everyone. Add them in your own policy, e.g.
# [limits]
# pids = 4096
# memory = "8GiB"

# Provider keys set in the environment `warden run` starts from. The session holds a
# placeholder in the same variable; the proxy puts the real key only into requests to
# `hosts` and refuses it (or its placeholder) anywhere else. `optional`: when the
# variable is not set, the session starts without it.

[[credentials]]
name = "anthropic"
source = "env:ANTHROPIC_API_KEY"
hosts = ["api.anthropic.com"]
env = "ANTHROPIC_API_KEY"
optional = true

[[credentials]]
name = "claude-oauth"                  # `claude setup-token` makes one
source = "env:CLAUDE_CODE_OAUTH_TOKEN"
hosts = ["api.anthropic.com"]
env = "CLAUDE_CODE_OAUTH_TOKEN"
optional = true

[[credentials]]
name = "openai"
source = "env:OPENAI_API_KEY"
hosts = ["api.openai.com"]
env = "OPENAI_API_KEY"
optional = true

[[credentials]]
name = "gemini"
source = "env:GEMINI_API_KEY"
hosts = ["generativelanguage.googleapis.com"]
env = "GEMINI_API_KEY"
optional = true

[[credentials]]
name = "google"
source = "env:GOOGLE_API_KEY"
hosts = ["generativelanguage.googleapis.com"]
env = "GOOGLE_API_KEY"
optional = true

[[credentials]]
name = "gh"
source = "env:GH_TOKEN"
hosts = ["api.github.com", "github.com"]
env = "GH_TOKEN"
optional = true

[[credentials]]
name = "github"
source = "env:GITHUB_TOKEN"
hosts = ["api.github.com", "github.com"]
env = "GITHUB_TOKEN"
optional = true

# MCP servers: list them here rather than in the agent's own configuration. A session
# then serves them through Warden's gateway at $WARDEN_MCP_URL (bearer $WARDEN_MCP_TOKEN):
# every tool call decided and recorded, each server in a sandbox of its own with its own
# network, filesystem and limits (docs/mcp.md, "Inside a session"). For example:
#
# [[mcp.servers]]
# name = "github"
# command = ["github-mcp-server", "stdio"]
# credentials = ["github"]            # the server gets the placeholder; its proxy swaps it
# tools.allow = ["get_*", "list_*", "search_*"]
# network.allow = ["api.github.com"]
"#;

const LOCKED: &str = r#"# Warden policy: the "locked" preset.
# No network at all; the workspace is visible read-only.
version = 1
name = "locked"
mode = "enforce"              # "audit": block nothing, record what would be blocked

[network]
allow = []                    # an empty list allows nothing

[filesystem]
workspace = "ro"
deny = ["**/.env", "**/.env.*", "**/*.pem", "**/*.key"]
"#;

/// The commented TOML `warden policy init --preset` writes.
pub fn preset_source(preset: Preset) -> &'static str {
    match preset {
        Preset::Open => OPEN,
        Preset::Balanced => BALANCED,
        Preset::Locked => LOCKED,
    }
}
