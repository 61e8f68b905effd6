//! `warden-mcp`: Warden's MCP gateway — one governed endpoint in front of many MCP
//! servers.
//!
//! What it owns: the client-facing MCP endpoints (stdio and Streamable HTTP with
//! bearer-token, Origin and Host checks), the connections to upstream servers (stdio
//! children and Streamable HTTP), aggregation under `SERVER__NAME`, per-call
//! authorization through an [`Authorizer`], tool-definition pins, secret scanning of
//! arguments and results, and one audit event per decision.
//!
//! What it must never do: forward a call the policy refused (outside audit mode);
//! forward the client's own bearer token upstream; put a secret value or raw
//! arguments (unless the policy opts in) in an audit event, log line or error; let
//! one server's tool shadow another's; start a server that is not in the policy.

#[macro_use]
mod say;
pub mod config;
mod error;
pub mod front;
mod http_client;
pub mod jsonrpc;
pub mod pins;
pub mod scan;
mod session;
pub mod upstream;

pub use config::{
    AuditConfig, Authorizer, CredentialHeader, DEFAULT_PAGE_SIZE, GatewayConfig, GatewayCredential,
    ServerConfig, ToolDecision, Transport,
};
pub use error::GatewayError;
pub use front::http::HttpOptions;
pub use say::messages_to;
pub use session::{Gateway, SEP, Session, valid_tool_name};
pub use upstream::{PlainLauncher, UpstreamLauncher};

/// Lock a mutex, recovering from poisoning (state here stays consistent per update).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
