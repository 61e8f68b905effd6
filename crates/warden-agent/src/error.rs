use std::path::{Path, PathBuf};

/// Why the node agent could not do something. Never carries key material or a
/// secret value.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// This machine is not enrolled.
    #[error(
        "this machine is not enrolled (no {0}); run `warden enroll --server URL --token TOKEN`"
    )]
    NotEnrolled(PathBuf),
    /// Already enrolled; enrolling again would replace the identity.
    #[error("this machine is already enrolled as {0}; remove {1} first to enroll it again")]
    AlreadyEnrolled(String, PathBuf),
    /// Enrolled, but there is no verified bundle: nothing may run (fail closed).
    #[error(
        "no verified policy bundle from the control plane yet ({0}); start `warden agent` \
         and check that it reaches the server"
    )]
    NoBundle(String),
    /// The bundle was rejected; the last good one stays in force.
    #[error("rejected policy bundle: {0}")]
    Rejected(String),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A local file is not what this version wrote.
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    /// A policy could not be used for a session.
    #[error("{0}")]
    Policy(String),
    /// The undelivered audit spool reached its cap: sessions must not start.
    #[error(
        "the audit spool {} holds {pending} bytes not yet delivered to the control plane, \
         at or over its cap of {cap} bytes; new sessions are refused so that no audit event \
         is lost. Start `warden agent` (or check that it reaches the server) to deliver it, \
         or raise WARDEN_SPOOL_CAP",
        spool.display()
    )]
    SpoolFull {
        spool: PathBuf,
        pending: u64,
        cap: u64,
    },
    /// A setting is malformed.
    #[error("{0}")]
    Config(String),
    /// The server or the connection failed.
    #[error(transparent)]
    Control(#[from] warden_control::ControlError),
}

impl AgentError {
    pub fn io(path: &Path, source: std::io::Error) -> AgentError {
        AgentError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn corrupt(path: &Path, message: impl Into<String>) -> AgentError {
        AgentError::Corrupt {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}
