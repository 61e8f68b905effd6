//! The `gvisor` backend's own step (see docs/decisions/0004-backends.md).
//!
//! The session is built exactly as for the `namespaces` backend — namespaces, the session
//! root (pivoted, the host's root detached), hidden paths, cgroups, the network doors —
//! and then, instead of hardening itself and executing the command, the agent process
//! writes an OCI bundle and executes `runsc run` on it:
//!
//! - the bundle's root is the session root (`/`, read-only), served by gVisor's gofer;
//!   every mount of the spec is a recursive bind of its session path (so the overmounts
//!   hiding `filesystem.deny` paths come along), read-only or read-write as decided;
//! - `/proc`, `/dev`, `/sys`, `/tmp` and the home are gVisor's own (in the sandbox's
//!   memory): the command never sees the init's `/tmp`, where the bundle and runsc's
//!   state live ([`BUNDLE_DIR`]);
//! - `--network=host`: gVisor's sockets are host sockets of the *session's* network
//!   namespace, whose only ways out are Warden's doors (proxy, DNS, TUN);
//! - the command runs with no capabilities and `no_new_privs`, and under an OCI seccomp
//!   profile enforced by gVisor (`--oci-seccomp`) carrying the same deny-list as the
//!   `namespaces` backend's filter, so it gets the same answers (`EPERM`).
//!
//! `runsc` itself is not put under Warden's seccomp filter or Landlock: it must create
//! namespaces, mount, `pivot_root` and `ptrace` its stub processes, which both layers
//! forbid. Its sentry and gofer install gVisor's own allow-list filters before they
//! serve the command. The runsc processes stay in the session's user, mount, PID,
//! network, IPC, UTS and cgroup namespaces, see only the session root, and hold
//! capabilities only within the session's user namespace.

use crate::proto::InitRequest;
use serde_json::{Value, json};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where `runsc` is looked for, on the host (preflight) and in the session root (which
/// holds `/usr` read-only): a `runsc` elsewhere would not be visible to the session.
pub const RUNSC_CANDIDATES: &[&str] =
    &["/usr/local/bin/runsc", "/usr/bin/runsc", "/usr/sbin/runsc"];

/// How to get `runsc`, for error messages.
pub const RUNSC_INSTALL_HINT: &str = "Install gVisor: `apt-get install runsc` (Debian, Ubuntu), or place the `runsc` binary in /usr/local/bin";

/// The bundle and runsc's state directory, on the init's side of the session: the
/// session's `/tmp` tmpfs, which the command never sees (gVisor mounts its own `/tmp`).
pub(crate) const BUNDLE_DIR: &str = "/tmp/.warden-gvisor";

/// The first executable `runsc` among [`RUNSC_CANDIDATES`].
pub fn find_runsc() -> Option<PathBuf> {
    RUNSC_CANDIDATES.iter().map(PathBuf::from).find(|p| {
        crate::sys::cstr(p)
            // SAFETY: access(2) on a valid NUL-terminated path.
            .map(|c| unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0)
            .unwrap_or(false)
    })
}

fn state_dir() -> String {
    format!("{BUNDLE_DIR}/state")
}

/// The global flags of every runsc invocation of a session.
fn global_flags() -> Vec<String> {
    vec![
        format!("--root={}", state_dir()),
        "--platform=ptrace".into(),
        // The session's network namespace, with Warden's doors, is the sandbox's network.
        "--network=host".into(),
        // The session's cgroup (limits) already holds every runsc process.
        "--ignore-cgroups".into(),
        // Enforce the profile of `config.json` on the command.
        "--oci-seccomp".into(),
        "--host-uds=none".into(),
        "--host-fifo=none".into(),
    ]
}

fn cstrings(v: impl IntoIterator<Item = String>) -> Result<Vec<CString>, String> {
    v.into_iter()
        .map(|s| CString::new(s).map_err(|_| "runsc argument contains NUL".to_string()))
        .collect()
}

/// `runsc ... run --bundle BUNDLE_DIR ID`: argv for `execve`.
pub(crate) fn run_argv(runsc: &Path, id: &str) -> Result<Vec<CString>, String> {
    let mut v = vec![runsc.display().to_string()];
    v.extend(global_flags());
    v.extend([
        "run".into(),
        "--bundle".into(),
        BUNDLE_DIR.into(),
        id.into(),
    ]);
    cstrings(v)
}

/// `runsc ... kill ID SIGNAL`: how the init forwards a signal to the command (runsc run
/// does not forward the signals it receives).
pub(crate) fn kill_argv(runsc: &Path, id: &str, sig: libc::c_int) -> Result<Vec<CString>, String> {
    let mut v = vec![runsc.display().to_string()];
    v.extend(global_flags());
    v.extend(["kill".into(), id.into(), sig.to_string()]);
    cstrings(v)
}

/// Writes `BUNDLE_DIR/config.json` for `req`.
pub(crate) fn write_bundle(req: &InitRequest) -> Result<(), String> {
    std::fs::create_dir_all(state_dir()).map_err(|e| format!("{BUNDLE_DIR}: {e}"))?;
    std::fs::set_permissions(
        BUNDLE_DIR,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .map_err(|e| format!("{BUNDLE_DIR}: {e}"))?;
    let config = oci_config(req);
    let body = serde_json::to_vec_pretty(&config).map_err(|e| format!("config.json: {e}"))?;
    std::fs::write(format!("{BUNDLE_DIR}/config.json"), body)
        .map_err(|e| format!("{BUNDLE_DIR}/config.json: {e}"))
}

fn lossy(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The OCI runtime spec of the session (see the module documentation).
pub(crate) fn oci_config(req: &InitRequest) -> Value {
    let spec = &req.spec;
    let env: Vec<String> = spec
        .env
        .iter()
        .map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            String::from_utf8_lossy(&b).into_owned()
        })
        .collect();
    let args: Vec<String> = spec
        .command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let depth = |p: &Path| p.components().count();
    // (depth, mount), sorted by depth so parents come before children.
    let mut mounts: Vec<(usize, Value)> = vec![
        (
            1,
            json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        ),
        (
            1,
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "mode=755"]}),
        ),
        (
            2,
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                   "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        ),
        (
            2,
            json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                   "options": ["nosuid", "nodev", "mode=1777"]}),
        ),
        (
            1,
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                   "options": ["nosuid", "noexec", "nodev", "ro"]}),
        ),
        (
            1,
            json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "nodev", "mode=1777"]}),
        ),
        (
            depth(&spec.home),
            json!({"destination": lossy(&spec.home), "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "nodev", "mode=0700",
                               format!("uid={}", req.uid), format!("gid={}", req.gid)]}),
        ),
    ];
    for m in &spec.mounts {
        // Same rule as the session root: a mount under a hidden path is not mounted.
        if spec.hide.iter().any(|h| m.source.starts_with(h)) {
            continue;
        }
        // The source is the *session* path: the mount as the init built it, with the
        // overmounts that hide `filesystem.deny` paths inside it (hence `rbind`).
        mounts.push((
            depth(&m.target),
            json!({"destination": lossy(&m.target), "type": "bind", "source": lossy(&m.target),
                   "options": ["rbind", "nosuid", "nodev", if m.writable { "rw" } else { "ro" }]}),
        ));
    }
    mounts.sort_by_key(|(d, _)| *d);
    let mounts: Vec<Value> = mounts.into_iter().map(|(_, m)| m).collect();
    let none: Vec<String> = Vec::new();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": req.use_pty,
            "user": {"uid": req.uid, "gid": req.gid},
            "args": args,
            "env": env,
            "cwd": lossy(&spec.cwd),
            "capabilities": {
                "bounding": none, "effective": none, "inheritable": none,
                "permitted": none, "ambient": none
            },
            "noNewPrivileges": true
        },
        "root": {"path": "/", "readonly": true},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "seccomp": seccomp_profile()
        }
    })
}

/// System calls denied to the command: the names of the `namespaces` backend's
/// deny-list (seccomp.rs). gVisor ignores names it does not know (it does not implement
/// those calls either: `ENOSYS`).
const DENIED: &[&str] = &[
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "setns",
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "syslog",
    "quotactl",
    "open_by_handle_at",
    "name_to_handle_at",
    "vhangup",
    "pidfd_getfd",
    "iopl",
    "ioperm",
    "uselib",
];

fn arg(index: u32, op: &str, value: u64) -> Value {
    json!({"index": index, "value": value, "valueTwo": 0, "op": op})
}

fn masked(index: u32, flag: u64) -> Value {
    json!({"index": index, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"})
}

/// The OCI seccomp profile enforced by gVisor on the command. Several conditions on the
/// *same* argument of one rule are alternatives (runc's legacy rule, which gVisor
/// follows); conditions on different arguments must all hold.
pub(crate) fn seccomp_profile() -> Value {
    let errno = |names: &[&str], args: Vec<Value>| json!({"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM, "args": args});
    let new_ns: Vec<u64> = [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWCGROUP,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        0x80, // CLONE_NEWTIME
    ]
    .iter()
    .map(|f| *f as u64)
    .collect();
    // socket(): only AF_UNIX (1), AF_INET (2), AF_INET6 (10), AF_NETLINK (16) with
    // NETLINK_ROUTE (0).
    let mut families: Vec<Value> = (0u64..=16)
        .filter(|f| ![1, 2, 10, 16].contains(f))
        .map(|f| arg(0, "SCMP_CMP_EQ", f))
        .collect();
    families.push(arg(0, "SCMP_CMP_GT", 16));
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
        "syscalls": [
            errno(DENIED, vec![]),
            errno(&["clone"], new_ns.iter().map(|f| masked(0, *f)).collect()),
            errno(&["unshare"], new_ns.iter().map(|f| masked(0, *f)).collect()),
            errno(&["socket"], families),
            errno(&["socket"], vec![arg(0, "SCMP_CMP_EQ", 16), arg(2, "SCMP_CMP_NE", 0)]),
            errno(&["socketpair"], vec![arg(0, "SCMP_CMP_NE", 1)]),
            errno(&["ioctl"], vec![arg(1, "SCMP_CMP_EQ", 0x5412), arg(1, "SCMP_CMP_EQ", 0x541c)]),
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, Limits, Mount, Network, SandboxSpec, TtyMode};

    fn req() -> InitRequest {
        InitRequest {
            spec: SandboxSpec {
                command: vec!["sh".into(), "-c".into(), "true".into()],
                cwd: "/ws".into(),
                env: vec![("PATH".into(), "/usr/bin".into())],
                mounts: vec![
                    Mount {
                        source: "/host/ws".into(),
                        target: "/ws".into(),
                        writable: true,
                    },
                    Mount {
                        source: "/host/secret/x".into(),
                        target: "/x".into(),
                        writable: false,
                    },
                    Mount {
                        source: "/host/data".into(),
                        target: "/ws/a/data".into(),
                        writable: false,
                    },
                ],
                hide: vec!["/host/secret".into()],
                hide_patterns: vec![],
                limits: Limits::default(),
                home: "/home/u".into(),
                hostname: "warden".into(),
                tty: TtyMode::Inherit,
                session_id: "abc".into(),
                network: Network::Egress,
                trust_bundle: None,
                backend: Backend::Gvisor,
            },
            uid: 1000,
            gid: 1000,
            use_pty: false,
            unix_guard: false,
            trust_bundle_follows: false,
        }
    }

    #[test]
    fn bundle_mirrors_the_session_root() {
        let c = oci_config(&req());
        assert_eq!(c["root"]["path"], "/");
        assert_eq!(c["root"]["readonly"], true);
        assert_eq!(c["process"]["user"]["uid"], 1000);
        assert_eq!(c["process"]["capabilities"]["bounding"], json!([]));
        let dests: Vec<&str> = c["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        // Parents before children; the hidden source is not mounted.
        assert!(!dests.contains(&"/x"), "{dests:?}");
        let ws = dests.iter().position(|d| *d == "/ws").unwrap();
        let data = dests.iter().position(|d| *d == "/ws/a/data").unwrap();
        assert!(ws < data);
        let m = &c["mounts"][ws];
        assert_eq!(m["source"], "/ws");
        assert_eq!(m["options"], json!(["rbind", "nosuid", "nodev", "rw"]));
        // No network namespace of gVisor's own: the session's, with Warden's doors.
        assert!(
            !c["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "network")
        );
    }

    #[test]
    fn seccomp_profile_denies_like_the_namespaces_filter() {
        let p = seccomp_profile();
        let rules = p["syscalls"].as_array().unwrap();
        assert!(
            rules[0]["names"]
                .as_array()
                .unwrap()
                .contains(&json!("ptrace"))
        );
        // The only multi-condition rule across arguments is netlink other than ROUTE.
        let nl = &rules[4]["args"];
        assert_eq!(nl[0]["index"], 0);
        assert_eq!(nl[1]["index"], 2);
    }
}
