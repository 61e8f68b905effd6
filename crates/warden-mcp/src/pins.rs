//! Tool-definition pins (rug-pull defence). The first-seen sha256 of each tool's
//! name, description and input schema is stored under WARDEN_HOME; a tool whose
//! definition later differs is hidden and refused until approved.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::GatewayError;

/// One pinned tool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pin {
    /// The approved digest (`sha256:<hex>`).
    pub digest: String,
    pub first_seen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<String>,
    /// A different definition seen since, waiting for approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<Changed>,
}

/// A definition that differs from the pinned one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Changed {
    pub digest: String,
    pub seen: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    pins: BTreeMap<String, Pin>,
}

/// What the store says about a tool definition seen now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinCheck {
    /// Never seen before; now pinned.
    New,
    /// Matches the pin.
    Match,
    /// Differs from the pin. `first_report` is true the first time this digest is seen.
    Changed {
        pinned: String,
        seen: String,
        first_report: bool,
    },
}

/// The pin store: a JSON file, rewritten atomically on every change.
#[derive(Debug)]
pub struct PinStore {
    path: PathBuf,
    lock: Mutex<()>,
}

/// The pin key of a tool.
pub fn key(server: &str, tool: &str) -> String {
    format!("{server}/{tool}")
}

/// sha256 over the canonical JSON (sorted keys) of name, description and inputSchema.
pub fn digest(tool: &Value) -> String {
    let mut subset = serde_json::Map::new();
    for k in ["name", "description", "inputSchema"] {
        subset.insert(k.to_string(), tool.get(k).cloned().unwrap_or(Value::Null));
    }
    let mut out = String::new();
    canonical(&Value::Object(subset), &mut out);
    format!("sha256:{}", hex::encode(Sha256::digest(out.as_bytes())))
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(x) = m.get(*k) {
                    canonical(x, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn now() -> String {
    warden_audit::format_time(warden_audit::OffsetDateTime::now_utc())
}

impl PinStore {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, reason: impl std::fmt::Display) -> GatewayError {
        GatewayError::Pins {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    fn load(&self) -> Result<File, GatewayError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let f: File = serde_json::from_slice(&bytes)
                    .map_err(|e| self.err(format!("not a pin file ({e}); fix or remove it")))?;
                Ok(f)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File {
                version: 1,
                pins: BTreeMap::new(),
            }),
            Err(e) => Err(self.err(e)),
        }
    }

    fn save(&self, f: &File) -> Result<(), GatewayError> {
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&dir).map_err(|e| self.err(e))?;
        let tmp = dir.join(format!(
            ".mcp-pins.{}.{}.tmp",
            std::process::id(),
            rand::random::<u32>()
        ));
        let body = serde_json::to_vec_pretty(f).map_err(|e| self.err(e))?;
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&body)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(&dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.err(e)
        })
    }

    /// Check a definition seen now, pinning it if new and recording a change.
    pub fn check(&self, server: &str, tool: &str, digest: &str) -> Result<PinCheck, GatewayError> {
        let _g = self.lock.lock().map_err(|_| self.err("lock poisoned"))?;
        let mut f = self.load()?;
        let k = key(server, tool);
        let result = match f.pins.get_mut(&k) {
            None => {
                f.pins.insert(
                    k,
                    Pin {
                        digest: digest.to_string(),
                        first_seen: now(),
                        approved: None,
                        changed: None,
                    },
                );
                PinCheck::New
            }
            Some(p) if p.digest == digest => return Ok(PinCheck::Match),
            Some(p) => {
                let first_report = p.changed.as_ref().is_none_or(|c| c.digest != digest);
                if !first_report {
                    return Ok(PinCheck::Changed {
                        pinned: p.digest.clone(),
                        seen: digest.to_string(),
                        first_report,
                    });
                }
                p.changed = Some(Changed {
                    digest: digest.to_string(),
                    seen: now(),
                });
                PinCheck::Changed {
                    pinned: p.digest.clone(),
                    seen: digest.to_string(),
                    first_report,
                }
            }
        };
        self.save(&f)?;
        Ok(result)
    }

    /// Whether a definition matches its pin, without writing anything.
    pub fn matches(&self, server: &str, tool: &str, digest: &str) -> Result<bool, GatewayError> {
        let f = self.load()?;
        Ok(f.pins
            .get(&key(server, tool))
            .is_some_and(|p| p.digest == digest))
    }

    /// All pins, sorted by key.
    pub fn list(&self) -> Result<Vec<(String, Pin)>, GatewayError> {
        Ok(self.load()?.pins.into_iter().collect())
    }

    /// Accept a tool's changed definition as the new pin. Returns (old, new) digests.
    pub fn approve(&self, key: &str) -> Result<(String, String), GatewayError> {
        let _g = self.lock.lock().map_err(|_| self.err("lock poisoned"))?;
        let mut f = self.load()?;
        let pin = f
            .pins
            .get_mut(key)
            .ok_or_else(|| GatewayError::UnknownPin {
                key: key.to_string(),
            })?;
        let old = pin.digest.clone();
        if let Some(c) = pin.changed.take() {
            pin.digest = c.digest;
            pin.approved = Some(now());
        }
        let new = pin.digest.clone();
        self.save(&f)?;
        Ok((old, new))
    }

    /// Forget one pin (`Some(key)`) or all of them. Returns how many were removed.
    pub fn reset(&self, key: Option<&str>) -> Result<usize, GatewayError> {
        let _g = self.lock.lock().map_err(|_| self.err("lock poisoned"))?;
        let mut f = self.load()?;
        let n = match key {
            Some(k) => {
                if f.pins.remove(k).is_none() {
                    return Err(GatewayError::UnknownPin { key: k.to_string() });
                }
                1
            }
            None => {
                let n = f.pins.len();
                f.pins.clear();
                n
            }
        };
        self.save(&f)?;
        Ok(n)
    }
}
