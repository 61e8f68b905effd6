use std::path::{Path, PathBuf};

/// Why the control plane could not do something. Messages never contain a token,
/// key or secret value.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The server's configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// A file the server owns could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A cryptographic operation failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// A stored record is not what this version expects.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The protocol layer rejected something.
    #[error(transparent)]
    Proto(#[from] crate::proto::ProtoError),
    /// An HTTP request to a server failed (client side).
    #[error("{0}")]
    Http(String),
    /// The server answered with an error (client side).
    #[error("server answered {status}: {message}")]
    Status { status: u16, message: String },
}

impl ControlError {
    pub fn io(path: &Path, source: std::io::Error) -> ControlError {
        ControlError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
