//! Where a credential's real value comes from: `env:VAR`, `file:PATH`, `command:CMD`,
//! `vault:NAME` (SPEC §4 `[[credentials]] source`).
//!
//! Every error names the credential and the source (the variable, the path, the
//! command, the vault name) and never the value: a value is only ever held in a
//! [`Secret`]. A command's stdout is the secret and is never echoed; its stderr is
//! quoted (tail only, with any copy of the stdout removed) to say why it failed.

use crate::Secret;
use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The largest secret any source may yield. Tokens and keys are far smaller; a bigger
/// value is almost certainly the wrong file or command.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// How much of a failing command's stderr is quoted in the error.
const STDERR_QUOTE: usize = 400;

/// Default time a `command:` source may take (see [`LoadContext::command_timeout`]).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed `source = "..."` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `env:VAR`: the variable in the environment Warden was started with.
    Env(String),
    /// `file:PATH`: a file's contents, one trailing newline removed. `~/` is the
    /// user's home; a relative path is relative to the policy file's directory.
    File(PathBuf),
    /// `command:CMD`: `sh -c CMD` run on the host at session start; its stdout, one
    /// trailing newline removed.
    Command(String),
    /// `vault:NAME`: leased from the control plane when enrolled, else read from the
    /// local store (`warden secret set`).
    Vault(String),
}

impl Source {
    /// Parse `env:VAR`, `file:PATH`, `command:CMD` or `vault:NAME`.
    pub fn parse(spec: &str) -> Result<Self, SourceError> {
        let invalid = |reason: &'static str| SourceError::InvalidSpec {
            spec: spec.to_string(),
            reason,
        };
        let (kind, rest) = spec
            .split_once(':')
            .ok_or_else(|| invalid("missing the kind prefix"))?;
        if rest.is_empty() {
            return Err(invalid("nothing after the colon"));
        }
        match kind {
            "env" => {
                let ok = rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !rest.as_bytes()[0].is_ascii_digit();
                if !ok {
                    return Err(invalid(
                        "an environment variable name is letters, digits and '_', not starting with a digit",
                    ));
                }
                Ok(Self::Env(rest.to_string()))
            }
            "file" => Ok(Self::File(PathBuf::from(rest))),
            "command" => {
                if rest.trim().is_empty() {
                    return Err(invalid("empty command"));
                }
                Ok(Self::Command(rest.to_string()))
            }
            "vault" => {
                crate::store::validate_name(rest).map_err(|_| {
                    invalid("a vault name is 1-64 of A-Z a-z 0-9 _ . - (not '.' or '..')")
                })?;
                Ok(Self::Vault(rest.to_string()))
            }
            _ => Err(invalid("unknown kind")),
        }
    }
}

impl std::str::FromStr for Source {
    type Err = SourceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(v) => write!(f, "env:{v}"),
            Self::File(p) => write!(f, "file:{}", p.display()),
            Self::Command(c) => write!(f, "command:{c}"),
            Self::Vault(n) => write!(f, "vault:{n}"),
        }
    }
}

/// An opaque lease handle from a vault, to revoke when the session ends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseId(pub String);

/// A secret leased from a vault for one session.
#[derive(Debug)]
pub struct Lease {
    /// The value.
    pub secret: Secret,
    /// What to pass to [`VaultClient::revoke`] when the session ends.
    pub lease_id: LeaseId,
}

/// Why a vault could not lease or revoke.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VaultError {
    /// No secret of that name (for this machine).
    #[error("no secret named {name:?} in the vault")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The vault refused: this machine or session may not use that secret.
    #[error("the vault refused access to {name:?}")]
    Denied {
        /// The name asked for.
        name: String,
    },
    /// The vault could not be reached or failed.
    #[error("the vault is unavailable: {0}")]
    Unavailable(String),
}

/// A source of `vault:NAME` secrets. The control plane's client implements it for
/// enrolled machines; [`crate::store::LocalStore`] implements it for standalone ones.
///
/// Blocking by design: secrets are resolved once at session start, before the agent
/// runs. An async implementation can run its future to completion on its own runtime.
pub trait VaultClient: Send + Sync {
    /// Lease `name` for `session`. The lease lives until [`VaultClient::revoke`] (or the
    /// vault's own expiry).
    fn lease(&self, name: &str, session: &str) -> Result<Lease, VaultError>;
    /// End a lease (idempotent).
    fn revoke(&self, lease: &LeaseId) -> Result<(), VaultError>;
}

/// What a source needs from the caller.
pub struct LoadContext<'a> {
    /// The environment `env:` reads and `command:` runs with (Warden's own host
    /// environment, not the session's).
    pub env: &'a HashMap<String, String>,
    /// Directory relative `file:` paths and `command:` run in (the policy file's).
    pub base_dir: Option<&'a Path>,
    /// Where `vault:` secrets come from; `None` makes them an error.
    pub vault: Option<&'a dyn VaultClient>,
    /// The session id passed to the vault.
    pub session: &'a str,
    /// How long a `command:` may run before it is killed (with its process group).
    pub command_timeout: Duration,
    /// This machine's placeholder key: a credential gets the same placeholder in every
    /// session ([`crate::PlaceholderKey`]). `None`: a fresh one each time.
    pub placeholders: Option<&'a crate::PlaceholderKey>,
}

impl fmt::Debug for LoadContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The environment holds other secrets: never print it.
        f.debug_struct("LoadContext")
            .field("base_dir", &self.base_dir)
            .field("vault", &self.vault.is_some())
            .field("session", &self.session)
            .field("command_timeout", &self.command_timeout)
            .finish_non_exhaustive()
    }
}

/// A loaded value and, for `vault:`, the lease to revoke at session end.
#[derive(Debug)]
pub struct Loaded {
    /// The real value.
    pub secret: Secret,
    /// Set for `vault:` sources.
    pub lease: Option<LeaseId>,
}

/// Why a credential could not be loaded. Never contains the value.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The `source` string itself is malformed.
    #[error(
        "credential source {spec:?} is invalid: {reason} (expected env:VAR, file:PATH, command:CMD or vault:NAME)"
    )]
    InvalidSpec {
        /// The string as written.
        spec: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The variable is not set (or is empty).
    #[error("credential {credential:?}: environment variable {var} is not set or empty")]
    EnvMissing {
        /// The credential's name.
        credential: String,
        /// The variable.
        var: String,
    },
    /// The source produced nothing (after removing one trailing newline).
    #[error("credential {credential:?}: {from} produced an empty value")]
    Empty {
        /// The credential's name.
        credential: String,
        /// The source, as written.
        from: String,
    },
    /// The source produced more than [`MAX_SECRET_BYTES`].
    #[error(
        "credential {credential:?}: {from} produced more than {MAX_SECRET_BYTES} bytes; is it the right source?"
    )]
    TooLarge {
        /// The credential's name.
        credential: String,
        /// The source, as written.
        from: String,
    },
    /// The file could not be opened or read, or is not a regular file.
    #[error("credential {credential:?}: file {path}: {reason}")]
    File {
        /// The credential's name.
        credential: String,
        /// The resolved path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The file is readable by everyone or writable by others.
    #[error(
        "credential {credential:?}: file {path} has mode {mode:04o}; a secret file must not be world-readable nor group/world-writable (chmod 600 {path})"
    )]
    FilePermissions {
        /// The credential's name.
        credential: String,
        /// The resolved path.
        path: PathBuf,
        /// The permission bits found.
        mode: u32,
    },
    /// The command could not start, or exited unsuccessfully.
    #[error("credential {credential:?}: command {command:?} {reason}")]
    Command {
        /// The credential's name.
        credential: String,
        /// The command as written.
        command: String,
        /// Exit status and the tail of its stderr.
        reason: String,
    },
    /// The command ran past its timeout and was killed.
    #[error("credential {credential:?}: command {command:?} did not finish within {}s and was killed", timeout.as_secs_f64())]
    CommandTimeout {
        /// The credential's name.
        credential: String,
        /// The command as written.
        command: String,
        /// The limit.
        timeout: Duration,
    },
    /// `vault:` used without a vault.
    #[error(
        "credential {credential:?}: vault:{name} needs the control plane (warden enroll) or the local store (warden secret set {name})"
    )]
    NoVault {
        /// The credential's name.
        credential: String,
        /// The vault name.
        name: String,
    },
    /// The vault failed.
    #[error("credential {credential:?}: vault:{name}: {error}")]
    Vault {
        /// The credential's name.
        credential: String,
        /// The vault name.
        name: String,
        /// The vault's error.
        error: VaultError,
    },
}

/// Load `credential`'s value from `source`.
pub fn load(
    credential: &str,
    source: &Source,
    ctx: &LoadContext<'_>,
) -> Result<Loaded, SourceError> {
    let (secret, lease) = match source {
        Source::Env(var) => match ctx.env.get(var).filter(|v| !v.is_empty()) {
            Some(value) => (Secret::new(value.as_bytes().to_vec()), None),
            None => {
                return Err(SourceError::EnvMissing {
                    credential: credential.to_string(),
                    var: var.clone(),
                });
            }
        },
        Source::File(path) => (read_file(credential, path, ctx)?, None),
        Source::Command(cmd) => (run_command(credential, cmd, ctx)?, None),
        Source::Vault(name) => {
            let vault = ctx.vault.ok_or_else(|| SourceError::NoVault {
                credential: credential.to_string(),
                name: name.clone(),
            })?;
            let lease = vault
                .lease(name, ctx.session)
                .map_err(|error| SourceError::Vault {
                    credential: credential.to_string(),
                    name: name.clone(),
                    error,
                })?;
            (lease.secret, Some(lease.lease_id))
        }
    };
    if secret.is_empty() {
        return Err(SourceError::Empty {
            credential: credential.to_string(),
            from: source.to_string(),
        });
    }
    if secret.len() > MAX_SECRET_BYTES {
        return Err(SourceError::TooLarge {
            credential: credential.to_string(),
            from: source.to_string(),
        });
    }
    Ok(Loaded { secret, lease })
}

/// Where a `file:` source reads: `~/` under `HOME` of `ctx.env`, a relative path under
/// `ctx.base_dir`.
pub fn resolve_path(path: &Path, ctx: &LoadContext<'_>) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~")
        && let Some(home) = ctx.env.get("HOME").filter(|h| !h.is_empty())
    {
        return Path::new(home).join(rest);
    }
    match ctx.base_dir {
        Some(base) if path.is_relative() => base.join(path),
        _ => path.to_path_buf(),
    }
}

fn read_file(credential: &str, path: &Path, ctx: &LoadContext<'_>) -> Result<Secret, SourceError> {
    let path = resolve_path(path, ctx);
    let err = |reason: String| SourceError::File {
        credential: credential.to_string(),
        path: path.clone(),
        reason,
    };
    // O_NONBLOCK: a FIFO or device at that path must not hang session start; the
    // checks below run on the opened descriptor, so there is no check/use race.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(&path)
        .map_err(|e| err(e.to_string()))?;
    let meta = file.metadata().map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".to_string()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o004 != 0 || mode & 0o022 != 0 {
        return Err(SourceError::FilePermissions {
            credential: credential.to_string(),
            path: path.clone(),
            mode,
        });
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(256));
    file.take(MAX_SECRET_BYTES as u64 + 2)
        .read_to_end(&mut buf)
        .map_err(|e| err(e.to_string()))?;
    Ok(trim_one_newline(buf))
}

/// Remove one trailing `\n` (and a `\r` before it).
pub(crate) fn trim_one_newline(mut buf: Zeroizing<Vec<u8>>) -> Secret {
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Secret::new(std::mem::take(&mut *buf))
}

/// Read everything from `r`, keeping at most `cap` bytes (the rest is drained and
/// counted so the writer never blocks on a full pipe).
fn read_capped(mut r: impl Read, cap: usize) -> (Zeroizing<Vec<u8>>, bool) {
    let mut kept = Zeroizing::new(Vec::new());
    let mut chunk = Zeroizing::new([0u8; 4096]);
    let mut overflow = false;
    loop {
        match r.read(&mut chunk[..]) {
            Ok(0) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
                overflow |= n > room;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (kept, overflow)
}

fn run_command(credential: &str, cmd: &str, ctx: &LoadContext<'_>) -> Result<Secret, SourceError> {
    let fail = |reason: String| SourceError::Command {
        credential: credential.to_string(),
        command: cmd.to_string(),
        reason,
    };
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(cmd)
        .env_clear()
        .envs(ctx.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills the helpers it started too.
        .process_group(0);
    if let Some(dir) = ctx.base_dir {
        command.current_dir(dir);
    }
    let mut child = command
        .spawn()
        .map_err(|e| fail(format!("could not start: {e}")))?;
    let pgid = rustix::process::Pid::from_child(&child);
    let (out_tx, out_rx) = mpsc::channel();
    let (err_tx, err_rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            let _ = out_tx.send(read_capped(stdout, MAX_SECRET_BYTES + 2));
        });
    }
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            let _ = err_tx.send(read_capped(stderr, 64 * 1024));
        });
    }
    let kill_group = || {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    };
    let deadline = Instant::now() + ctx.command_timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill_group();
                let _ = child.wait();
                return Err(SourceError::CommandTimeout {
                    credential: credential.to_string(),
                    command: cmd.to_string(),
                    timeout: ctx.command_timeout,
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                kill_group();
                return Err(fail(format!("could not be waited for: {e}")));
            }
        }
    };
    // The shell has exited; a helper it left behind may still hold the pipes open.
    // Give the readers until the deadline, then kill the group so they see EOF.
    let remaining = || deadline.saturating_duration_since(Instant::now());
    let stdout = match out_rx.recv_timeout(remaining()) {
        Ok(r) => Some(r),
        Err(_) => {
            kill_group();
            out_rx.recv_timeout(Duration::from_secs(1)).ok()
        }
    };
    let stderr = match err_rx.recv_timeout(remaining().max(Duration::from_millis(100))) {
        Ok((buf, _)) => buf,
        Err(_) => {
            kill_group();
            err_rx
                .recv_timeout(Duration::from_secs(1))
                .map(|(buf, _)| buf)
                .unwrap_or_default()
        }
    };
    let (stdout, overflow) = stdout.unwrap_or_default();
    if !status.success() {
        let how = match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_string(),
        };
        let quoted = quote_stderr(&stderr, &stdout);
        let reason = if quoted.is_empty() {
            how
        } else {
            format!("{how}: {quoted}")
        };
        return Err(fail(reason));
    }
    if overflow {
        return Err(SourceError::TooLarge {
            credential: credential.to_string(),
            from: format!("command:{cmd}"),
        });
    }
    Ok(trim_one_newline(stdout))
}

/// The tail of stderr, printable, with any copy of stdout's value cut out (a helper
/// that prints the token to both streams must not leak it through the error).
fn quote_stderr(stderr: &[u8], stdout: &[u8]) -> String {
    let mut text = stderr.to_vec();
    let value = stdout.strip_suffix(b"\n").unwrap_or(stdout);
    let value = value.strip_suffix(b"\r").unwrap_or(value);
    if value.len() >= 4 {
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            if text[i..].starts_with(value) {
                out.extend_from_slice(b"<redacted>");
                i += value.len();
            } else {
                out.push(text[i]);
                i += 1;
            }
        }
        text = out;
    }
    let lossy = String::from_utf8_lossy(&text);
    let cleaned: String = lossy
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let count = cleaned.chars().count();
    if count > STDERR_QUOTE {
        let tail: String = cleaned.chars().skip(count - STDERR_QUOTE).collect();
        format!("...{tail}")
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn ctx<'a>(env: &'a HashMap<String, String>, dir: Option<&'a Path>) -> LoadContext<'a> {
        LoadContext {
            env,
            base_dir: dir,
            vault: None,
            session: "s1",
            command_timeout: Duration::from_secs(5),
            placeholders: None,
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn parses_every_kind_and_rejects_the_rest() {
        assert!(
            Source::parse("env:ANTHROPIC_API_KEY") == Ok(Source::Env("ANTHROPIC_API_KEY".into()))
        );
        assert!(matches!(Source::parse("file:~/.tok"), Ok(Source::File(_))));
        assert!(matches!(
            Source::parse("command:gh auth token"),
            Ok(Source::Command(_))
        ));
        assert!(matches!(
            Source::parse("vault:anthropic-prod"),
            Ok(Source::Vault(_))
        ));
        for bad in [
            "",
            "env",
            "env:",
            "env:1X",
            "env:A-B",
            "http:x",
            "command:  ",
            "vault:..",
            "vault:a/b",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            Source::parse("command:echo a:b")
                .map(|s| s.to_string())
                .ok()
                .as_deref()
                == Some("command:echo a:b")
        );
    }

    impl PartialEq for SourceError {
        fn eq(&self, other: &Self) -> bool {
            self.to_string() == other.to_string()
        }
    }

    #[test]
    fn env_reads_the_given_map_not_the_process() {
        let e = env(&[("TOKEN_X", "sk-value-123")]);
        let got = load("x", &Source::Env("TOKEN_X".into()), &ctx(&e, None));
        assert!(got.is_ok_and(|l| l.secret.expose() == b"sk-value-123"));
        let missing = load("x", &Source::Env("PATH_NOT_IN_MAP".into()), &ctx(&e, None));
        let msg = missing.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("PATH_NOT_IN_MAP") && msg.contains("\"x\""));
    }

    #[test]
    fn file_trims_one_newline_and_checks_permissions() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tok");
        std::fs::write(&path, b"file-secret-value\n\n")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let e = env(&[("HOME", "/nonexistent")]);
        let c = ctx(&e, Some(dir.path()));
        let got = load("f", &Source::File("tok".into()), &c)?;
        assert!(got.secret.expose() == b"file-secret-value\n");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640))?;
        assert!(
            load("f", &Source::File(path.clone()), &c).is_ok(),
            "group-readable is allowed"
        );
        for mode in [0o644, 0o604, 0o620, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            let err = load("f", &Source::File(path.clone()), &c).err();
            assert!(
                matches!(err, Some(SourceError::FilePermissions { .. })),
                "mode {mode:o}"
            );
        }
        let err = load("f", &Source::File(dir.path().into()), &c).err();
        assert!(matches!(err, Some(SourceError::File { .. })));
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("not a regular file"));
        Ok(())
    }

    #[test]
    fn file_expands_home_from_the_given_environment() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("k"), b"home-secret")?;
        std::fs::set_permissions(dir.path().join("k"), std::fs::Permissions::from_mode(0o600))?;
        let home = dir.path().display().to_string();
        let e = env(&[("HOME", &home)]);
        let got = load("h", &Source::File("~/k".into()), &ctx(&e, None))?;
        assert!(got.secret.expose() == b"home-secret");
        Ok(())
    }

    #[test]
    fn command_stdout_is_the_secret_and_never_in_errors() {
        let e = env(&[
            ("PATH", "/usr/bin:/bin"),
            ("GREETING", "cmd-secret"),
            ("TOK", "leaked-token-value"),
        ]);
        let c = ctx(&e, None);
        let ok = load(
            "c",
            &Source::Command("printf '%s\\n' \"$GREETING\"".into()),
            &c,
        );
        assert!(ok.is_ok_and(|l| l.secret.expose() == b"cmd-secret"));

        let failing = Source::Command(
            "echo \"$TOK\"; echo \"$TOK\" >&2; echo 'auth failed' >&2; exit 3".into(),
        );
        let msg = load("c", &failing, &c)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("status 3") && msg.contains("auth failed"));
        assert!(
            !msg.contains("leaked-token-value"),
            "stdout copy leaked through stderr"
        );

        let empty = load("c", &Source::Command("true".into()), &c).err();
        assert!(matches!(empty, Some(SourceError::Empty { .. })));
    }

    #[test]
    fn command_is_killed_at_its_timeout_with_its_children() {
        let e = env(&[("PATH", "/usr/bin:/bin")]);
        let mut c = ctx(&e, None);
        c.command_timeout = Duration::from_millis(300);
        let started = Instant::now();
        let err = load("t", &Source::Command("sleep 30 & sleep 30".into()), &c).err();
        assert!(matches!(err, Some(SourceError::CommandTimeout { .. })));
        assert!(started.elapsed() < Duration::from_secs(10));
        // A background helper holding stdout must not hang a successful command.
        let started = Instant::now();
        let got = load("t", &Source::Command("echo bg-ok; sleep 30 &".into()), &c);
        assert!(got.is_ok_and(|l| l.secret.expose() == b"bg-ok"));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    struct FakeVault;
    impl VaultClient for FakeVault {
        fn lease(&self, name: &str, session: &str) -> Result<Lease, VaultError> {
            if name == "known" {
                Ok(Lease {
                    secret: Secret::new(b"vault-value".to_vec()),
                    lease_id: LeaseId(format!("{session}/{name}")),
                })
            } else {
                Err(VaultError::NotFound { name: name.into() })
            }
        }
        fn revoke(&self, _: &LeaseId) -> Result<(), VaultError> {
            Ok(())
        }
    }

    #[test]
    fn vault_leases_through_the_trait() {
        let e = env(&[]);
        let mut c = ctx(&e, None);
        let none = load("v", &Source::Vault("known".into()), &c).err();
        assert!(matches!(none, Some(SourceError::NoVault { .. })));
        c.vault = Some(&FakeVault);
        let got = load("v", &Source::Vault("known".into()), &c);
        assert!(
            got.is_ok_and(|l| l.secret.expose() == b"vault-value"
                && l.lease == Some(LeaseId("s1/known".into())))
        );
        let missing = load("v", &Source::Vault("other".into()), &c).err();
        assert!(matches!(missing, Some(SourceError::Vault { .. })));
    }
}
