//! Errors of the gateway library. Messages say what failed and on which input; they
//! never contain a secret value or tool arguments.

use std::path::PathBuf;

/// Something the gateway could not set up or persist.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A server name that cannot be routed unambiguously.
    #[error(
        "MCP server name {name:?} is invalid: use letters, digits and '-', starting with a letter (no '_', so SERVER__TOOL splits unambiguously)"
    )]
    BadServerName { name: String },
    /// Two `[[mcp.servers]]` with the same name.
    #[error("MCP server name {name:?} is used twice; names must be unique")]
    DuplicateServer { name: String },
    /// A gateway setting out of range.
    #[error("gateway configuration: {0}")]
    Config(String),
    /// A server with neither a usable command nor a URL.
    #[error("MCP server {name:?}: {reason}")]
    BadTransport { name: String, reason: String },
    /// Starting an upstream server failed.
    #[error("MCP server {name:?} could not be started: {source}")]
    Launch {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// The pin store could not be read or written.
    #[error("pin store {path}: {reason}")]
    Pins { path: PathBuf, reason: String },
    /// A pin named on the command line does not exist.
    #[error("no pin for {key:?}; `warden mcp pins ls` lists the known tools")]
    UnknownPin { key: String },
    /// The session's credentials could not be prepared (too short, duplicate name,
    /// unknown credential named by a server, a header that cannot be rendered).
    #[error("credentials: {0}")]
    Credentials(String),
    /// The trust store for `https://` upstreams could not be loaded.
    #[error("TLS trust for https upstreams: {0}")]
    Tls(#[from] warden_tls::TlsError),
    /// The audit log failed; the gateway fails closed.
    #[error("audit log: {0}")]
    Audit(#[from] warden_audit::AuditError),
    /// The HTTP front end could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// Other I/O on the front end.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
