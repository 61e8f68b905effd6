//! The local secret store under `WARDEN_HOME/secrets/`, used by `warden secret` and by
//! `vault:NAME` sources on machines that are not enrolled.
//!
//! One file per secret, named after it, mode 0600, in a directory of mode 0700. The
//! store is protected by file permissions only: there is no master key, so root and
//! anything running as the same user can read it (docs/credentials.md says so).
//! Writes are atomic (temporary file, fsync, rename, fsync of the directory).

use crate::Secret;
use crate::source::{Lease, LeaseId, MAX_SECRET_BYTES, VaultClient, VaultError};
use rand::Rng;
use std::fs::{DirBuilder, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Why a store operation failed. Never contains a value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The name is not a valid secret name.
    #[error("invalid secret name {name:?}: use 1-64 of A-Z a-z 0-9 _ . - (not '.' or '..')")]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// No secret of that name.
    #[error("no secret named {name:?} in the local store ({dir})")]
    NotFound {
        /// The name.
        name: String,
        /// The store directory.
        dir: PathBuf,
    },
    /// An empty value was given.
    #[error("refusing to store an empty value for {name:?}")]
    Empty {
        /// The name.
        name: String,
    },
    /// The value is larger than any credential should be.
    #[error("the value for {name:?} is larger than {MAX_SECRET_BYTES} bytes")]
    TooLarge {
        /// The name.
        name: String,
    },
    /// A file or the directory has permissions that expose it, or is not what it
    /// should be (a symlink, not a directory).
    #[error("{path}: {reason}")]
    Unsafe {
        /// The offending path.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// An I/O error on a path.
    #[error("{path}: {error}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

/// Whether `name` is a valid secret name: `[A-Za-z0-9_.-]{1,64}`, and not `.`/`..`.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            name: name.to_string(),
        })
    }
}

/// The local store. Cheap to open; holds no values in memory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    /// Open (creating if needed) `home/secrets`, mode 0700. An existing directory
    /// with group/other permissions is tightened to 0700 if this user owns it, and
    /// refused otherwise; a symlink there is refused.
    pub fn open(home: &Path) -> Result<Self, StoreError> {
        let dir = home.join("secrets");
        let io = |path: &Path, error| StoreError::Io {
            path: path.to_path_buf(),
            error,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io(&dir, e))?;
        let meta = std::fs::symlink_metadata(&dir).map_err(|e| io(&dir, e))?;
        if !meta.is_dir() {
            return Err(StoreError::Unsafe {
                path: dir,
                reason: "not a directory (a symlink is not accepted)".to_string(),
            });
        }
        if meta.mode() & 0o077 != 0 {
            if meta.uid() != rustix::process::geteuid().as_raw() {
                return Err(StoreError::Unsafe {
                    path: dir,
                    reason: format!(
                        "mode {:04o} and owned by another user; it must be 0700 and yours",
                        meta.mode() & 0o7777
                    ),
                });
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io(&dir, e))?;
        }
        Ok(Self { dir })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Result<PathBuf, StoreError> {
        validate_name(name)?;
        Ok(self.dir.join(name))
    }

    /// Store `value` under `name`, replacing any previous value atomically.
    pub fn set(&self, name: &str, value: &Secret) -> Result<(), StoreError> {
        let path = self.path(name)?;
        if value.is_empty() {
            return Err(StoreError::Empty {
                name: name.to_string(),
            });
        }
        if value.len() > MAX_SECRET_BYTES {
            return Err(StoreError::TooLarge {
                name: name.to_string(),
            });
        }
        // '~' is not a valid name character, so a temporary file never lists as a secret.
        let tmp = self
            .dir
            .join(format!(".tmp~{name}~{:016x}", rand::rng().random::<u64>()));
        let io = |path: &Path, error| StoreError::Io {
            path: path.to_path_buf(),
            error,
        };
        let write = || -> Result<(), StoreError> {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&tmp)
                .map_err(|e| io(&tmp, e))?;
            file.write_all(value.expose()).map_err(|e| io(&tmp, e))?;
            file.sync_all().map_err(|e| io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io(&self.dir, e))
        };
        let result = write();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Read `name`'s value. The file must be a regular file (not a symlink) with no
    /// group or other permissions.
    pub fn get(&self, name: &str) -> Result<Secret, StoreError> {
        let path = self.path(name)?;
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(&path)
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => StoreError::NotFound {
                    name: name.to_string(),
                    dir: self.dir.clone(),
                },
                _ => StoreError::Io {
                    path: path.clone(),
                    error,
                },
            })?;
        let meta = file.metadata().map_err(|error| StoreError::Io {
            path: path.clone(),
            error,
        })?;
        if !meta.is_file() || meta.mode() & 0o077 != 0 {
            return Err(StoreError::Unsafe {
                path,
                reason: format!(
                    "must be a regular file of mode 0600 (found mode {:04o}); run `warden secret set {name}` again",
                    meta.mode() & 0o7777
                ),
            });
        }
        let mut buf = Zeroizing::new(Vec::new());
        file.take(MAX_SECRET_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|error| StoreError::Io {
                path: path.clone(),
                error,
            })?;
        if buf.len() > MAX_SECRET_BYTES {
            return Err(StoreError::TooLarge {
                name: name.to_string(),
            });
        }
        Ok(Secret::new(std::mem::take(&mut *buf)))
    }

    /// The names of the stored secrets, sorted. Never reads a value.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|error| StoreError::Io {
            path: self.dir.clone(),
            error,
        })?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| validate_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Delete `name`. `Ok(false)` if it did not exist.
    pub fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let path = self.path(name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(StoreError::Io { path, error }),
        }
    }
}

/// `vault:NAME` on a machine that is not enrolled: the local store. Leases are
/// nominal (`local:NAME`) and revoking is a no-op.
impl VaultClient for LocalStore {
    fn lease(&self, name: &str, _session: &str) -> Result<Lease, VaultError> {
        match self.get(name) {
            Ok(secret) => Ok(Lease {
                secret,
                lease_id: LeaseId(format!("local:{name}")),
            }),
            Err(StoreError::NotFound { .. } | StoreError::InvalidName { .. }) => {
                Err(VaultError::NotFound {
                    name: name.to_string(),
                })
            }
            Err(other) => Err(VaultError::Unavailable(other.to_string())),
        }
    }

    fn revoke(&self, _lease: &LeaseId) -> Result<(), VaultError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for ok in ["a", "anthropic", "GH_TOKEN", "x.y-z_1", &"a".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "ä",
            "tmp~x",
            &"a".repeat(65),
            "a\0",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn set_get_list_rm_with_tight_permissions() -> Result<(), Box<dyn std::error::Error>> {
        let home = tempfile::tempdir()?;
        let store = LocalStore::open(home.path())?;
        assert!(std::fs::metadata(store.dir())?.mode() & 0o777 == 0o700);
        store.set("b-key", &Secret::new(b"value-b".to_vec()))?;
        store.set("a-key", &Secret::new(b"value-a".to_vec()))?;
        store.set("a-key", &Secret::new(b"value-a2".to_vec()))?;
        assert!(std::fs::metadata(store.dir().join("a-key"))?.mode() & 0o777 == 0o600);
        assert!(store.list()? == vec!["a-key".to_string(), "b-key".to_string()]);
        assert!(store.get("a-key")?.expose() == b"value-a2");
        assert!(store.remove("a-key")?);
        assert!(!store.remove("a-key")?);
        assert!(matches!(
            store.get("a-key"),
            Err(StoreError::NotFound { .. })
        ));
        assert!(store.set("bad/name", &Secret::new(b"v".to_vec())).is_err());
        assert!(matches!(
            store.set("e", &Secret::new(Vec::new())),
            Err(StoreError::Empty { .. })
        ));
        // Leases for vault:NAME sources.
        let lease = store.lease("b-key", "s")?;
        assert!(lease.secret.expose() == b"value-b");
        assert!(matches!(
            store.lease("nope", "s"),
            Err(VaultError::NotFound { .. })
        ));
        Ok(())
    }

    #[test]
    fn loose_permissions_are_tightened_or_refused() -> Result<(), Box<dyn std::error::Error>> {
        let home = tempfile::tempdir()?;
        let dir = home.path().join("secrets");
        std::fs::create_dir(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let store = LocalStore::open(home.path())?;
        assert!(std::fs::metadata(&dir)?.mode() & 0o777 == 0o700);
        std::fs::write(dir.join("loose"), b"v")?;
        std::fs::set_permissions(dir.join("loose"), std::fs::Permissions::from_mode(0o644))?;
        assert!(matches!(store.get("loose"), Err(StoreError::Unsafe { .. })));
        std::os::unix::fs::symlink(dir.join("loose"), dir.join("link"))?;
        assert!(store.get("link").is_err(), "symlinks are not followed");
        Ok(())
    }
}
