//! Shared helpers of the `warden run` integration tests: a temporary WARDEN_HOME,
//! workspace, fake home and policy per test, the built `warden`, and the audit log.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub const WARDEN: &str = env!("CARGO_BIN_EXE_warden");
/// The session init `warden run` starts from its own directory.
pub const WARDEN_INIT: &str = env!("CARGO_BIN_EXE_warden-init");
pub const NOBODY: u32 = 65534;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub ws: PathBuf,
    pub home: PathBuf,
    pub warden_home: PathBuf,
    pub policy: PathBuf,
    pub unpriv: bool,
    /// The `warden` binary this environment runs.
    pub warden: PathBuf,
    /// The sandbox backend sessions of this environment run under.
    pub backend: B,
}

/// A sandbox backend, for tests that run under each (see [`per_backend!`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum B {
    Namespaces,
    Gvisor,
}

impl B {
    pub fn flag(self) -> &'static str {
        match self {
            B::Namespaces => "namespaces",
            B::Gvisor => "gvisor",
        }
    }
}

/// Whether gVisor's `runsc` is installed. Missing in CI (where scripts/test installs it)
/// is a failure; elsewhere the gVisor variants are skipped, loudly.
pub fn gvisor_available() -> bool {
    let found = ["/usr/local/bin/runsc", "/usr/bin/runsc", "/usr/sbin/runsc"]
        .iter()
        .any(|p| Path::new(p).exists());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "runsc is not installed (scripts/install-gvisor): the gVisor backend cannot be tested"
        );
        eprintln!(
            "\n!!!!! SKIPPING the gVisor variant: runsc is not installed (scripts/install-gvisor) !!!!!\n"
        );
    }
    found
}

/// Turns test functions taking a [`B`] into one `#[test]` per backend:
/// `namespaces::NAME` and `gvisor::NAME`.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod namespaces {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::run_common::B::Namespaces)
                }
            )*
        }
        mod gvisor {
            $(
                #[test]
                fn $name() {
                    if $crate::run_common::gvisor_available() {
                        super::$name($crate::run_common::B::Gvisor)
                    }
                }
            )*
        }
    };
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn chown_r(p: &Path, uid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{uid}"))
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

impl Env {
    /// A fresh environment; `policy` is the TOML body (`version = 1` is prepended).
    pub fn new(policy: &str) -> Env {
        Env::with(B::Namespaces, policy, false)
    }

    /// Same, for the unprivileged user `nobody` (65534).
    pub fn unprivileged(policy: &str) -> Env {
        Env::with(B::Namespaces, policy, true)
    }

    /// A fresh environment whose sessions run under `backend`.
    pub fn new_for(backend: B, policy: &str) -> Env {
        Env::with(backend, policy, false)
    }

    /// Same, for the unprivileged user `nobody` (65534).
    pub fn unprivileged_for(backend: B, policy: &str) -> Env {
        Env::with(backend, policy, true)
    }

    fn with(backend: B, policy: &str, unpriv: bool) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("warden-run-test-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().canonicalize().unwrap();
        let ws = root.join("ws");
        let home = root.join("home");
        let warden_home = root.join("warden-home");
        for d in [&ws, &home, &warden_home] {
            std::fs::create_dir_all(d).unwrap();
        }
        let policy_path = root.join("policy.toml");
        std::fs::write(
            &policy_path,
            format!("version = 1\nname = \"test\"\n{policy}"),
        )
        .unwrap();
        let mut warden = PathBuf::from(WARDEN);
        if unpriv {
            for d in [&ws, &home, &warden_home] {
                chown_r(d, NOBODY);
            }
            // The build directory may not be reachable by `nobody` (a checkout under /root):
            // run a link (or copy) of the binaries that lives in this world-readable dir.
            for (bin, name) in [(WARDEN, "warden"), (WARDEN_INIT, "warden-init")] {
                let link = root.join(name);
                if std::fs::hard_link(bin, &link).is_err() {
                    std::fs::copy(bin, &link).unwrap();
                }
            }
            warden = root.join("warden");
        }
        Env {
            dir,
            ws,
            home,
            warden_home,
            policy: policy_path,
            unpriv,
            warden,
            backend,
        }
    }

    pub fn audit(&self) -> PathBuf {
        self.warden_home.join("audit.jsonl")
    }

    /// `warden run --policy P --workspace WS [extra] -- cmd...` as a Command.
    pub fn cmd(&self, extra: &[&str], cmd: &[&str]) -> Command {
        let mut c = if self.unpriv {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(&self.warden);
            c
        } else {
            Command::new(WARDEN)
        };
        if self.unpriv {
            c.env("USER", "nobody");
        }
        c.arg("run")
            .arg("--policy")
            .arg(&self.policy)
            .arg("--workspace")
            .arg(&self.ws);
        if self.backend != B::Namespaces {
            c.args(["--backend", self.backend.flag()]);
        }
        c.args(extra).arg("--").args(cmd);
        c.env("WARDEN_HOME", &self.warden_home)
            .env("HOME", &self.home)
            .current_dir(&self.ws);
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, cmd: &[&str]) -> Output {
        self.cmd(&[], cmd).output().unwrap()
    }

    pub fn sh(&self, script: &str) -> Output {
        self.run(&["/bin/sh", "-c", script])
    }

    /// Copies the attack program into the workspace; returns its session path.
    pub fn attack_bin(&self) -> Option<PathBuf> {
        let src = attack_binary()?;
        let dst = self.ws.join("attack");
        std::fs::copy(src, &dst).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
        Some(dst)
    }

    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.audit())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
pub fn assert_code(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "{}", text(o));
}

/// The attack program, compiled once per test binary with `cc` (None, loudly, if no cc).
pub fn attack_binary() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        // Under target/ (not /tmp): nothing is left behind outside the build directory.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let out = dir.join("warden-attack");
        let tmp = dir.join(format!("warden-attack.{}", std::process::id()));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/run_common/attack.c");
        match Command::new("cc").arg("-O1").arg("-o").arg(&tmp).arg(&src).status() {
            Ok(s) if s.success() && std::fs::rename(&tmp, &out).is_ok() => Some(out),
            other => {
                eprintln!("\n!!!!! SKIPPING syscall attacks: cannot compile {} with cc: {other:?} !!!!!\n", src.display());
                None
            }
        }
    })
    .as_deref()
}

/// A host process to attack; killed on drop.
pub struct HostChild(pub std::process::Child);

impl HostChild {
    pub fn sleep() -> HostChild {
        HostChild(Command::new("sleep").arg("300").spawn().unwrap())
    }
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
    pub fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for HostChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub const BASE: &str = r#"
[filesystem]
workspace = "rw"
deny = ["**/.env", "~/.ssh", "**/*.pem"]
"#;
