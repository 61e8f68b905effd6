use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong while writing or reading an audit log. Messages name
/// the file and never contain event contents.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Could not create or open the log file or its directory.
    #[error("could not open audit log {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The write or fsync failed. Shared (`Arc`) because every waiter of the failed
    /// batch, and every later caller, gets the same error.
    #[error("audit log {path} failed; events are no longer being persisted: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// The writer thread is gone (the log was shut down or its thread died).
    #[error("audit log {path} is closed; the event was not persisted")]
    Closed { path: PathBuf },
    /// Could not start the writer thread.
    #[error("could not start the writer thread for audit log {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Could not encode an event (not expected: every field is a string or JSON value).
    #[error("could not encode an audit event: {0}")]
    Encode(#[source] serde_json::Error),
    /// Could not read the audit log.
    #[error("could not read audit log {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A filter value that does not parse (`--surface bogus`, `--since yesterday`). The
/// message names the value and lists what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{value}`: expected {expected}")]
pub struct ParseValueError {
    pub what: &'static str,
    pub value: String,
    pub expected: String,
}
