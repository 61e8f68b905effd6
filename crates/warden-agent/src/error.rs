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
