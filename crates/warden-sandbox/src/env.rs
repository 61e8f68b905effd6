//! The session's environment: a short allow-list of the host's variables, plus what the
//! caller adds explicitly. Nothing else of the host environment reaches the command.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Host variables passed into a session by default. `LC_*` (any locale category) too.
pub const DEFAULT_ENV_PASSTHROUGH: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "SHELL",
    "TERM",
    "COLORTERM",
    "LANG",
    "TZ",
];

fn passes(key: &OsStr) -> bool {
    let k = key.as_bytes();
    DEFAULT_ENV_PASSTHROUGH.iter().any(|p| p.as_bytes() == k) || k.starts_with(b"LC_")
}

/// Builds a session environment from the host's `host` variables and the caller's
/// explicit `extra` ones (which win). `HOME` is set to `home`; `PATH` gets a standard
/// value when the host has none.
pub fn session_env(
    host: impl IntoIterator<Item = (OsString, OsString)>,
    extra: impl IntoIterator<Item = (OsString, OsString)>,
    home: &Path,
) -> Vec<(OsString, OsString)> {
    let mut out: Vec<(OsString, OsString)> = host.into_iter().filter(|(k, _)| passes(k)).collect();
    let mut set = |k: OsString, v: OsString| {
        if let Some(slot) = out.iter_mut().find(|(ek, _)| *ek == k) {
            slot.1 = v;
        } else {
            out.push((k, v));
        }
    };
    set("HOME".into(), home.as_os_str().to_owned());
    for (k, v) in extra {
        set(k, v);
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.push((
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_adds() {
        let host = vec![
            ("PATH".into(), "/usr/bin".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "x".into()),
            ("LC_ALL".into(), "C".into()),
            ("HOME".into(), "/root".into()),
            ("SSH_AUTH_SOCK".into(), "/tmp/ssh".into()),
        ];
        let env = session_env(
            host,
            vec![("FOO".into(), "bar".into())],
            Path::new("/home/u"),
        );
        let keys: Vec<_> = env
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(keys, ["PATH", "LC_ALL", "HOME", "FOO"]);
        assert_eq!(env[2].1, "/home/u");
    }
}
