//! Where Warden keeps local state: `WARDEN_HOME`, else `/var/lib/warden` for root and
//! `~/.local/share/warden` for everyone else (SPEC §3). Several independent nodes can
//! share one host by giving each its own `WARDEN_HOME`.

use std::path::PathBuf;

/// The state directory. Not created here; callers create what they write.
pub fn warden_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("WARDEN_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/warden");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".local/share/warden")
}

/// The default audit log of standalone `warden run`, `warden mcp` and `warden proxy`.
pub fn default_audit_file() -> PathBuf {
    warden_home().join("audit.jsonl")
}

/// The name of the user Warden acts for: `$USER`, else the numeric uid.
pub fn user_name() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| rustix::process::getuid().as_raw().to_string())
}

/// This machine's identity for audit events: the enrolled id when there is one (later),
/// else `/etc/machine-id`, else the host name.
pub fn machine_id() -> String {
    if let Ok(id) = std::fs::read_to_string(warden_home().join("machine-id")) {
        let id = id.trim();
        if !id.is_empty() {
            return id.to_string();
        }
    }
    if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
        let id = id.trim();
        if !id.is_empty() {
            return id.to_string();
        }
    }
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}
