//! What the gateway is told: the servers to front, how to decide, what to audit.
//! The CLI builds this from a `warden_policy::Policy`; the library does not parse
//! policy files itself (data flows policy → decision → enforcement → audit).

use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use warden_secrets::{Placeholder, Secret};

use crate::GatewayError;

/// How to reach one upstream server.
#[derive(Debug, Clone)]
pub enum Transport {
    /// A stdio server: argv of the command to start.
    Command(Vec<String>),
    /// A Streamable HTTP server.
    Url(String),
}

/// One `[[mcp.servers]]` entry.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The name tools are prefixed with (`NAME__tool`).
    pub name: String,
    pub transport: Transport,
    /// Names of the credentials this server is bound to.
    pub credentials: Vec<String>,
    /// Environment for a stdio server besides PATH/HOME/LANG.
    pub env: Vec<(String, String)>,
    /// `(VARIABLE, credential)`: the gateway sets VARIABLE to the credential's
    /// placeholder (never the real value) in a stdio server's environment.
    pub credential_env: Vec<(String, String)>,
    /// Headers the gateway adds to requests to an HTTP server, already rendered. The
    /// client's own `Authorization` header is never forwarded.
    pub headers: Vec<(String, Secret)>,
    /// Credential headers the gateway renders from the credential's real value
    /// (`warden_secrets::scan::render_header`). The caller adds one only when the
    /// credential's `hosts` allow the server's URL.
    pub credential_headers: Vec<CredentialHeader>,
}

/// A header carrying a credential to an HTTP upstream.
#[derive(Debug, Clone)]
pub struct CredentialHeader {
    /// The credential's name.
    pub credential: String,
    /// Header name (`authorization` unless the credential says otherwise).
    pub header: String,
    /// `{secret}` exactly once (`Bearer {secret}` by default).
    pub format: String,
}

impl ServerConfig {
    /// A server with no credentials.
    pub fn new(name: impl Into<String>, transport: Transport) -> Self {
        Self {
            name: name.into(),
            transport,
            credentials: Vec::new(),
            env: Vec::new(),
            credential_env: Vec::new(),
            headers: Vec::new(),
            credential_headers: Vec::new(),
        }
    }
}

/// Check that a server name can be routed: `[A-Za-z][A-Za-z0-9-]*`. No `_`, so the
/// first `__` in `SERVER__TOOL` is always the separator; no `+`, so `SERVER+uri`
/// resource URIs split unambiguously.
pub fn validate_server_name(name: &str) -> Result<(), GatewayError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
        && name.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(GatewayError::BadServerName {
            name: name.to_string(),
        })
    }
}

/// The policy's answer for one tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolDecision {
    pub allow: bool,
    /// Where the decision came from: `policy.toml:12`, `rules/x.cedar:3`, `default deny`.
    pub rule: String,
    pub reason: String,
}

/// Decides tool calls. Implemented by the CLI over `warden_policy::Policy`, so this
/// crate does not depend on the policy crate's internals.
pub trait Authorizer: Send + Sync {
    /// Decide a call of `tool` on `server` with these arguments.
    fn decide_tool(&self, server: &str, tool: &str, args: &Value) -> ToolDecision;

    /// Whether `tools/list` shows the tool. Default: a call with empty arguments would
    /// be allowed. Per-argument rules can still refuse a listed tool's call.
    fn tool_listed(&self, server: &str, tool: &str) -> ToolDecision {
        self.decide_tool(server, tool, &Value::Object(Default::default()))
    }

    /// Decide `prompts/get` of `prompt` (the server's own name) with these arguments;
    /// `prompts/list` asks with empty arguments.
    fn decide_prompt(&self, server: &str, prompt: &str, args: &Value) -> ToolDecision;

    /// Decide `resources/read` or `resources/subscribe` of `uri` (the server's own
    /// URI); `resources/list` asks per URI, `resources/templates/list` with the template.
    fn decide_resource(&self, server: &str, uri: &str) -> ToolDecision;

    /// The id of the policy deciding now, when it can change while the gateway runs
    /// (a live reload): events carry it instead of the id the gateway started with.
    fn policy_id(&self) -> Option<String> {
        None
    }
}

/// One credential of the session (loaded by the caller with `warden_secrets::load`).
#[derive(Debug, Clone)]
pub struct GatewayCredential {
    /// The credential's name in the policy.
    pub name: String,
    /// The real value.
    pub secret: Secret,
    /// The session's placeholder when one exists already (a `warden run` session
    /// handing its own to the gateway); `None`: the gateway makes a fresh one.
    pub placeholder: Option<Placeholder>,
    /// The host patterns it is bound to, as written in the policy (opaque here).
    pub hosts: Vec<String>,
}

/// Audit identity of the gateway's events.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub file: PathBuf,
    pub stamp: warden_audit::Stamp,
    /// Record argument values in events (the policy opted in); else only a digest.
    pub record_args: bool,
}

/// Everything a gateway needs.
#[derive(Clone)]
pub struct GatewayConfig {
    pub servers: Vec<ServerConfig>,
    pub authorizer: Arc<dyn Authorizer>,
    /// `false` in the policy's audit mode: decisions are recorded, nothing is blocked.
    pub enforce: bool,
    /// The session's credentials: scanned for in arguments (real values and
    /// placeholders, every encoding) and scrubbed from results.
    pub credentials: Vec<GatewayCredential>,
    /// `tls.extra_roots`: trusted for `https://` upstreams besides the system roots.
    pub extra_roots: Vec<PathBuf>,
    /// Pin store file (`WARDEN_HOME/mcp-pins.json`).
    pub pins_file: PathBuf,
    pub audit: AuditConfig,
    /// Per-request timeout towards an upstream.
    pub request_timeout: Duration,
    /// How long an upstream may take to start and answer `initialize`.
    pub startup_timeout: Duration,
    /// Most items per page of a list the gateway answers (`tools/list`, `prompts/list`,
    /// `resources/list`, `resources/templates/list`); the rest follow by `nextCursor`.
    pub page_size: usize,
}

/// The page size `warden mcp` uses: large enough that a typical merged list is one page
/// (clients that ignore `nextCursor` still see it all), small enough to bound a message.
pub const DEFAULT_PAGE_SIZE: usize = 500;

impl GatewayConfig {
    /// Validate names: unique and routable.
    pub fn validate(&self) -> Result<(), GatewayError> {
        if self.page_size == 0 {
            return Err(GatewayError::Config(
                "page_size is 0: use at least 1 (warden_mcp::DEFAULT_PAGE_SIZE is the default)"
                    .into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.servers {
            validate_server_name(&s.name)?;
            if !seen.insert(s.name.as_str()) {
                return Err(GatewayError::DuplicateServer {
                    name: s.name.clone(),
                });
            }
            match &s.transport {
                Transport::Command(argv) if argv.is_empty() => {
                    return Err(GatewayError::BadTransport {
                        name: s.name.clone(),
                        reason: "command is empty".into(),
                    });
                }
                Transport::Url(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                    return Err(GatewayError::BadTransport {
                        name: s.name.clone(),
                        reason: format!("url {u:?} is not http:// or https://"),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }
}
