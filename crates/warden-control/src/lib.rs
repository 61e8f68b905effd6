//! `warden-control`: Warden's control plane — the server behind `warden server`.
//!
//! What it owns:
//! - the store ([`store`]): SQLite by default (WAL, embedded migrations), PostgreSQL for
//!   several replicas sharing one database, with policy changes fanned out over
//!   LISTEN/NOTIFY;
//! - the HTTP API under `/api/v1/` ([`api`]), its OpenAPI document ([`openapi`]),
//!   `/healthz`, `/metrics` and the web console ([`console`]);
//! - authentication ([`auth`]): hashed bearer tokens with roles `admin` and `auditor`,
//!   and ed25519-signed requests from enrolled machines;
//! - signed policy bundles, the audit store (each event id exactly once), session
//!   records and the vault (secrets AES-256-GCM encrypted at rest, leased per session);
//! - the wire protocol shared with the node agent ([`proto`]) and a small HTTP client
//!   ([`client`]) used by the agent and the CLI.
//!
//! What it must never do: return, log or put in an error message a secret value, a
//! token, or key material — the one exception is a vault lease answered to the machine
//! whose policy binds that credential; trust an audit event's `machine` field over the
//! request signature; serve a bundle it did not sign.

pub mod api;
pub mod auth;
pub mod client;
pub mod console;
pub mod crypto;
mod error;
pub mod metrics;
pub mod openapi;
pub mod proto;
pub mod server;
pub mod store;
pub mod tls;
pub mod validate;

pub use error::ControlError;
pub use server::{Config, Running, TlsFiles, start};
