//! Secret values for Warden.
//!
//! This crate owns one thing: the [`Secret`] type that carries a real credential value
//! through Warden's memory. It must never be possible to log, display, serialize or
//! format a secret by accident, so `Secret` implements none of `Display`, `Serialize`
//! or `AsRef<str>`, its `Debug` prints only `Secret(<redacted>)`, and its bytes are
//! zeroized when it is dropped. The only way to read the value is [`Secret::expose`],
//! whose name makes every use easy to find in review.
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

use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// A credential's real value. Zeroized on drop; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

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
