//! Secret values and the credential plumbing around them.
//!
//! This crate owns:
//!
//! - [`Secret`]: the type that carries a real credential value through Warden's
//!   memory. It must never be possible to log, display, serialize or format a secret
//!   by accident, so `Secret` implements none of `Display`, `Serialize` or
//!   `AsRef<str>`, its `Debug` prints only `Secret(<redacted>)`, and its bytes are
//!   zeroized when it is dropped. The only way to read the value is
//!   [`Secret::expose`], whose name makes every use easy to find in review.
//! - [`source`]: loading a value from `env:`, `file:`, `command:` or `vault:`.
//! - [`store`]: the local secret store under `WARDEN_HOME/secrets/`.
//! - [`placeholder`]: the random, same-shaped stand-in the session sees.
//! - [`patterns`]: well-known token formats (AWS, GitHub, Anthropic, OpenAI, Slack, PEM
//!   private keys), recognised without knowing a value.
//! - [`scan`]: finding and rewriting real values and placeholders, in every encoding,
//!   in one pass and in bounded-memory streams.
//!
//! What it must never do: put a value in an error, a log line, a `Debug` string or a
//! file other than the local store. Errors name credentials and sources, never values.
//! It does no networking, no policy matching (host patterns are opaque strings here;
//! callers decide with warden-policy) and no auditing.
//!
//! Other crates (audit, egress, MCP) accept `&str`/`String` for anything they record;
//! a `Secret` does not convert into either, so putting one in an audit event is a type
//! error:
//!
//! ```compile_fail
//! let secret = warden_secrets::Secret::new(b"sk-live".to_vec());
//! let s: String = secret.into();
//! ```
//!
//! ```compile_fail
//! let secret = warden_secrets::Secret::new(b"sk-live".to_vec());
//! let s = format!("{secret}");
//! ```

pub mod patterns;
pub mod placeholder;
pub mod scan;
pub mod source;
pub mod store;

pub use placeholder::{Placeholder, PlaceholderKey};
pub use scan::{
    Credential, Detector, Finding, Form, Rewrite, Rewritten, ScanError, SecretSet, StreamGuard,
    StreamRewriter, StreamScanner, Which,
};
pub use source::{
    Lease, LeaseId, LoadContext, Loaded, Source, SourceError, VaultClient, VaultError, load,
};
pub use store::{LocalStore, StoreError};
/// Buffers that may hold values are `Zeroizing`; re-exported so callers need no
/// direct dependency to name the type.
pub use zeroize::Zeroizing;

use std::fmt;
use zeroize::Zeroize;

/// A credential's real value. Zeroized on drop; never printed. Equality takes the
/// same time whatever the contents (for values of equal length).
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(other.0.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl Eq for Secret {}

impl Secret {
    /// Wrap a value. The vector is moved in, not copied, so no stray copy remains.
    pub fn new(value: Vec<u8>) -> Self {
        Self(Zeroizing::new(value))
    }

    /// Wrap a string value, zeroizing the string's buffer.
    pub fn from_string(value: String) -> Self {
        Self::new(value.into_bytes())
    }

    /// The raw bytes, for the one place that must put the value on the wire.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (safe to reveal: placeholders copy it).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty (an empty secret is a configuration error upstream).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Trim trailing ASCII whitespace and newlines in place, as `command:`/`file:`
    /// sources usually end with a newline that is not part of the token.
    pub fn trim_end(mut self) -> Self {
        while self.0.last().is_some_and(|b| b.is_ascii_whitespace()) {
            if let Some(b) = self.0.last_mut() {
                b.zeroize();
            }
            self.0.pop();
        }
        self
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new(b"sk-ant-api03-verysecret".to_vec());
        let shown = format!("{s:?}");
        assert!(!shown.contains("verysecret"), "{shown}");
        assert_eq!(shown, "Secret(<redacted>)");
    }

    #[test]
    fn trim_end_drops_trailing_newline_only() {
        let s = Secret::new(b"  tok en\n\r\n".to_vec()).trim_end();
        assert_eq!(s.expose(), b"  tok en");
    }
}
