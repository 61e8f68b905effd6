//! Errors. Each message says what failed and, where the host is the cause, how to fix it.

use std::io;
use std::path::PathBuf;

/// Why a session could not be prepared, started or waited for. Every variant means the
/// command did not run (or was stopped): the caller exits 125.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A layer of the boundary is not available on this host.
    #[error("sandbox preflight failed: {what}. {fix}")]
    Unsupported {
        /// What is missing.
        what: String,
        /// How to enable it.
        fix: String,
    },
    /// What the caller supplies late ([`crate::prepare_with_trust_bundle`]) could not be
    /// produced: the caller's own message.
    #[error("{0}")]
    Caller(String),
    /// The caller's spec is unusable.
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    /// Setting up the session failed in the init process (before the command ran).
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    /// The init process ended without reporting success or failure.
    #[error(
        "sandbox setup failed: the session init exited without a report{0}; the command did not run"
    )]
    NoReport(String),
    /// cgroup creation or configuration failed.
    #[error("cgroup setup failed at {path}: {source}. {fix}")]
    Cgroup {
        /// The cgroup file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
        /// How to fix it.
        fix: String,
    },
    /// A system call in the parent failed.
    #[error("{what} failed: {source}")]
    Os {
        /// What was attempted.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

impl SandboxError {
    pub(crate) fn os(what: &'static str, source: io::Error) -> SandboxError {
        SandboxError::Os { what, source }
    }
}
