//! Warden's per-session TLS authority.
//!
//! This crate owns the certificates that let the egress proxy terminate TLS for a
//! session (SPEC §4 `[tls]`, issue 5 item 3):
//!
//! - [`SessionCa`]: a certificate authority generated in memory when a session starts
//!   (ECDSA P-256), which mints and caches a leaf certificate per intercepted host and
//!   hands out ready [`rustls::ServerConfig`]s ([`SessionCa::server_config_for`]).
//! - [`UpstreamTrust`] / [`upstream_client_config`]: the [`rustls::ClientConfig`] the
//!   proxy uses toward real servers, trusting the host's system roots plus
//!   `tls.extra_roots` — never the session CA.
//! - [`SessionCa::trust_bundle`] and [`ca_env`]: the PEM bundle the sandbox overlays at
//!   `/etc/ssl/certs/ca-certificates.crt` and the environment variables that point the
//!   usual clients (curl, Python, Node, git, pip, cargo, AWS, Deno …) at it.
//!
//! What it must never do: expose the CA's private key. There is no API that returns,
//! serializes or prints it — not even `Debug` — so it cannot reach a file, a log or the
//! session. The key lives inside [`SessionCa`] only, and its serialized form is zeroized
//! when the CA is dropped (the aws-lc key object frees its own memory). Leaf keys are
//! per host, live only inside rustls' signer, and are equally unreachable.
//!
//! One crypto backend: rustls and rcgen both use aws-lc-rs.

mod ca;
mod store;
mod trust;

/// The rustls this crate builds configs for; use it so versions always match.
pub use rustls;

pub use ca::{Alpn, CaOptions, SessionCa};
pub use trust::{UpstreamTrust, ca_env, upstream_client_config};

use std::path::PathBuf;

/// Why a TLS operation failed. Messages name the input (host, file) and never carry
/// key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Generating a key or signing a certificate failed.
    #[error("could not generate the session certificate for {what}: {source}")]
    Generate {
        /// What was being generated ("the session CA" or a host name).
        what: String,
        /// The underlying rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// The host name cannot be put in a certificate.
    #[error("cannot mint a certificate for {host:?}: {reason}")]
    InvalidHost {
        /// The host as given.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// rustls rejected a configuration (key, protocol versions).
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// An `extra_roots` file could not be read or holds no usable certificate.
    #[error("tls.extra_roots: {path}: {reason}")]
    ExtraRoot {
        /// The file.
        path: PathBuf,
        /// What went wrong; fix the file or remove it from `tls.extra_roots`.
        reason: String,
    },
    /// Neither the system store nor `extra_roots` provided a single trusted root, so
    /// every upstream would be refused.
    #[error(
        "no trusted root certificates: the system store is empty or unreadable ({detail}); install ca-certificates or set tls.extra_roots"
    )]
    NoRoots {
        /// What the system store loader reported.
        detail: String,
    },
    /// A load done once and reported to every use ([`UpstreamTrust::deferred`])
    /// failed: this is the error the load returned.
    #[error(transparent)]
    Shared(std::sync::Arc<TlsError>),
}
