//! Keys and tokens: the master key that encrypts secrets at rest (AES-256-GCM), API
//! token generation and hashing, and random identifiers.

use crate::error::ControlError;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use zeroize::Zeroizing;

/// `n` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], ControlError> {
    let mut buf = [0u8; N];
    rand::rngs::OsRng
        .try_fill_bytes(&mut buf)
        .map_err(|e| ControlError::Crypto(format!("no randomness from the OS: {e}")))?;
    Ok(buf)
}

/// A random identifier with a readable prefix, e.g. `m-3f2a…` (16 random bytes).
pub fn random_id(prefix: &str) -> Result<String, ControlError> {
    Ok(format!("{prefix}{}", hex::encode(random_bytes::<16>()?)))
}

/// A new bearer token: 256 random bits. Only its hash is stored.
pub fn new_token() -> Result<String, ControlError> {
    Ok(format!("wdn_{}", hex::encode(random_bytes::<32>()?)))
}

/// How a token is stored and looked up.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// The key that encrypts secret values and the server's signing key at rest.
pub struct MasterKey {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

fn parse_key(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let t = text.trim();
    if let Ok(b) = hex::decode(t)
        && b.len() == 32
    {
        return Some(Zeroizing::new(b));
    }
    match B64.decode(t) {
        Ok(b) if b.len() == 32 => Some(Zeroizing::new(b)),
        _ => None,
    }
}

impl MasterKey {
    /// From `WARDEN_MASTER_KEY` (64 hex digits or base64 of 32 bytes) when given,
    /// else from `key_file`, which is created with mode 0600 on first start.
    pub fn load(env_value: Option<&str>, key_file: &Path) -> Result<MasterKey, ControlError> {
        if let Some(v) = env_value.filter(|v| !v.trim().is_empty()) {
            let key = parse_key(v).ok_or_else(|| {
                ControlError::Config(
                    "WARDEN_MASTER_KEY must be 32 bytes as 64 hex digits or base64".into(),
                )
            })?;
            return Self::from_bytes(&key);
        }
        match std::fs::read_to_string(key_file) {
            Ok(text) => {
                let key = parse_key(&text).ok_or_else(|| {
                    ControlError::Config(format!(
                        "{}: not a 32-byte key (64 hex digits); restore it from backup or \
                         set WARDEN_MASTER_KEY",
                        key_file.display()
                    ))
                })?;
                Self::from_bytes(&key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Zeroizing::new(random_bytes::<32>()?.to_vec());
                if let Some(parent) = key_file.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| ControlError::io(parent, e))?;
                }
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(key_file)
                    .map_err(|e| ControlError::io(key_file, e))?;
                let text = Zeroizing::new(hex::encode(&*key));
                f.write_all(text.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| ControlError::io(key_file, e))?;
                Self::from_bytes(&key)
            }
            Err(e) => Err(ControlError::io(key_file, e)),
        }
    }

    pub fn from_bytes(key: &[u8]) -> Result<MasterKey, ControlError> {
        let cipher = Aes256Gcm::new_from_slice(key)
            .map_err(|_| ControlError::Crypto("master key must be 32 bytes".into()))?;
        Ok(MasterKey { cipher })
    }

    /// Encrypt `plain`, bound to `context` (the secret's name) as associated data, so
    /// a ciphertext moved to another name does not decrypt.
    pub fn seal(&self, context: &str, plain: &[u8]) -> Result<String, ControlError> {
        let nonce = random_bytes::<12>()?;
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| ControlError::Crypto("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!("v1:{}", B64.encode(out)))
    }

    /// Decrypt what [`MasterKey::seal`] produced for the same context.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, ControlError> {
        let bad = || {
            ControlError::Crypto(format!(
                "stored value for {context:?} does not decrypt: wrong master key or corrupted"
            ))
        };
        let data = sealed
            .strip_prefix("v1:")
            .and_then(|b| B64.decode(b).ok())
            .ok_or_else(bad)?;
        if data.len() < 12 {
            return Err(bad());
        }
        let (nonce, ct) = data.split_at(12);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| bad())?;
        Ok(Zeroizing::new(plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_context_binding() {
        let k = MasterKey::from_bytes(&[7u8; 32]).unwrap();
        let s = k.seal("a", b"hello").unwrap();
        assert_eq!(&*k.open("a", &s).unwrap(), b"hello");
        assert!(k.open("b", &s).is_err());
    }

    #[test]
    fn key_file_created_0600() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("master.key");
        let k1 = MasterKey::load(None, &p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let s = k1.seal("x", b"v").unwrap();
        let k2 = MasterKey::load(None, &p).unwrap();
        assert_eq!(&*k2.open("x", &s).unwrap(), b"v");
    }
}
