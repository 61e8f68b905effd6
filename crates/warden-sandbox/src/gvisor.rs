//! The `gvisor` backend's own step (see docs/decisions/0004-backends.md).
//!
//! The session is built exactly as for the `namespaces` backend — namespaces, the session
//! root (pivoted, the host's root detached), hidden paths, cgroups, the network doors —
//! and then, instead of hardening itself and executing the command, the agent process
//! writes an OCI bundle and executes `runsc run` on it:
//!
//! - the bundle's root is the session root (`/`, read-only), served by gVisor's gofer;
//!   every mount of the spec is a recursive bind of its session path, read-only or
//!   read-write as decided;
//! - every path the session root hides (`filesystem.deny`) is hidden again by a mount
//!   *of gVisor's own* (an empty read-only tmpfs over a directory, a read-only bind of
//!   an empty file over a file). The host overmounts alone are not enough: gVisor
//!   releases that open host files directly (directfs) do not see the session's
//!   overmounts when they `unlink`, and the kernel lets a mount point of another mount
//!   namespace be unlinked — `rm` of a hidden file deleted the host's file. With
//!   gVisor's own mount there, the path resolves to it inside the sandbox: reads see it
//!   empty, writes get `EROFS`, `unlink`/`rename` get `EBUSY`, and the host file is
//!   never looked up. The git guard's covers (mounts.rs) are laid again the same way:
//!   a repository's configuration and hooks read-only, its `.git` pinned;
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
//! serve the command. The runsc processes stay in the session's PID, network, IPC,
//! UTS and cgroup namespaces and see only the session root; they run in a user and mount
//! namespace nested in the session's ([`enter_nested_namespaces`]), so their
//! capabilities count only there and the session root's mounts are locked to them.

use crate::mounts::{Cover, Overmount};
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
pub const RUNSC_INSTALL_HINT: &str = "Install gVisor release-20240729 or newer as /usr/local/bin/runsc: `sudo scripts/install-gvisor` from Warden's repository (Debian 13's build; Debian 12's `apt-get install runsc` is older and breaks `ls -l` inside sessions), or see https://gvisor.dev/docs/user_guide/install/";

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

/// The oldest gVisor release the backend runs: older releases fail `statx` with
/// `AT_NO_AUTOMOUNT` (`ls -l` breaks) and cannot start in the nested user namespace
/// (see docs/decisions/0004-backends.md, "gVisor versions").
pub const RUNSC_MIN_RELEASE: u32 = 20240729;

/// The release date in `runsc --version`'s first line (`runsc version 0.0~20240729.0`,
/// `runsc version release-20240729.0`), if it has one.
fn release_of(version: &str) -> Option<u32> {
    let line = version.lines().next()?;
    line.split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 8 && w.starts_with("20"))
        .and_then(|w| w.parse().ok())
}

/// Checks that `runsc` is release [`RUNSC_MIN_RELEASE`] or newer. `runsc --version`
/// costs about 50 ms, so its answer is remembered in `cache` (a small text file) under
/// the binary's device, inode, size and modification time; a replaced binary is asked
/// again. A version without a release date (a development build) is accepted.
pub fn check_runsc_release(runsc: &Path, cache: &Path) -> Result<(), crate::SandboxError> {
    use std::os::unix::fs::MetadataExt;
    let unsupported = |what: String| crate::SandboxError::Unsupported {
        what,
        fix: format!("{RUNSC_INSTALL_HINT}."),
    };
    let meta = std::fs::metadata(runsc)
        .map_err(|e| unsupported(format!("gVisor: {}: {e}", runsc.display())))?;
    let key = format!(
        "{} {} {} {} {}",
        runsc.display(),
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime_nsec() + meta.mtime() * 1_000_000_000
    );
    let cached = std::fs::read_to_string(cache).ok().and_then(|c| {
        let (k, v) = c.split_once('\n')?;
        (k == key).then(|| v.to_string())
    });
    let version = match cached {
        Some(v) => v,
        None => {
            let out = std::process::Command::new(runsc)
                .arg("--version")
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
                .map_err(|e| unsupported(format!("gVisor: {} --version: {e}", runsc.display())))?;
            let v = String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            // Best effort: without the cache the next session asks again.
            let _ = std::fs::write(cache, format!("{key}\n{v}"));
            v
        }
    };
    match release_of(&version) {
        Some(r) if r < RUNSC_MIN_RELEASE => Err(unsupported(format!(
            "gVisor: {} is release-{r} ({version:?}); Warden needs release-{RUNSC_MIN_RELEASE} or newer",
            runsc.display()
        ))),
        _ => Ok(()),
    }
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

/// Moves the calling process (the agent, about to execute runsc) into a new user and
/// mount namespace nested in the session's, where the caller's uid and gid (its only
/// ones in the session) are root. runsc keeps every capability it needs (they are full
/// in the new user namespace, and runsc runs only as root there), but the session
/// root's mounts, copied into a mount namespace of a less privileged user namespace,
/// become locked together: neither runsc nor a process that escaped gVisor can unmount
/// one of them alone (a hiding overmount, or the read-only root) to uncover what it
/// covers. For root nothing else changes; for an unprivileged caller the command runs
/// as root inside gVisor, with no capability (see [`oci_config`]).
pub(crate) fn enter_nested_namespaces(uid: u32, gid: u32) -> Result<(), String> {
    // SAFETY: unshare has no memory effects; the agent is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) } != 0 {
        return Err(format!(
            "a nested user namespace for runsc: {}",
            std::io::Error::last_os_error()
        ));
    }
    let write = |file: &str, body: String| {
        std::fs::write(format!("/proc/self/{file}"), body)
            .map_err(|e| format!("/proc/self/{file} of runsc's user namespace: {e}"))
    };
    write("uid_map", format!("0 {uid} 1\n"))?;
    write("setgroups", "deny".into())?;
    write("gid_map", format!("0 {gid} 1\n"))
}

/// Sets `O_APPEND` on those of `fds` that are regular files. gVisor keeps its own offset
/// for every host descriptor it imports, so stdout and stderr redirected to one file
/// (`>out 2>&1`, one open file description) would overwrite each other from offset 0;
/// appending, every write lands at the end, which is where the shared offset of
/// sequential writers would have put it. The flag stays on the caller's open file
/// description after the session (it only matters to a writer that seeks).
pub(crate) fn append_to_regular_files(fds: &[libc::c_int]) {
    for &fd in fds {
        // SAFETY: fstat into a zeroed stat, fcntl on a descriptor we hold; errors are
        // ignored (the descriptor is then left as it is).
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) != 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
                continue;
            }
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 && flags & libc::O_APPEND == 0 {
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_APPEND);
            }
        }
    }
}

/// The empty read-only file bound over hidden files inside gVisor.
fn empty_file() -> String {
    format!("{BUNDLE_DIR}/empty")
}

/// Writes `BUNDLE_DIR/config.json` for `req`; `covered` are the paths the session root
/// covered inside its mounts.
pub(crate) fn write_bundle(req: &InitRequest, covered: &[Overmount]) -> Result<(), String> {
    std::fs::create_dir_all(state_dir()).map_err(|e| format!("{BUNDLE_DIR}: {e}"))?;
    std::fs::set_permissions(
        BUNDLE_DIR,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .map_err(|e| format!("{BUNDLE_DIR}: {e}"))?;
    if covered.iter().any(|c| c.cover == Cover::HiddenFile) {
        let empty = empty_file();
        std::fs::write(&empty, b"").map_err(|e| format!("{empty}: {e}"))?;
        std::fs::set_permissions(&empty, std::os::unix::fs::PermissionsExt::from_mode(0o444))
            .map_err(|e| format!("{empty}: {e}"))?;
    }
    let config = oci_config(req, covered);
    let body = serde_json::to_vec_pretty(&config).map_err(|e| format!("config.json: {e}"))?;
    std::fs::write(format!("{BUNDLE_DIR}/config.json"), body)
        .map_err(|e| format!("{BUNDLE_DIR}/config.json: {e}"))
}

fn lossy(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The OCI runtime spec of the session (see the module documentation).
pub(crate) fn oci_config(req: &InitRequest, covered: &[Overmount]) -> Value {
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
                   "options": ["nosuid", "nodev", "mode=0700", "uid=0", "gid=0"]}),
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
    // After the mounts that hold them (the sort below is stable, and a covered path is
    // never shallower than its mount).
    for c in covered {
        let path = lossy(&c.path);
        let m = match c.cover {
            Cover::HiddenDir => json!({"destination": path, "type": "tmpfs", "source": "tmpfs",
                "options": ["ro", "nosuid", "nodev", "noexec", "size=4k", "mode=0555"]}),
            Cover::HiddenFile => {
                json!({"destination": path, "type": "bind", "source": empty_file(),
                "options": ["bind", "ro", "nosuid", "nodev", "noexec"]})
            }
            Cover::ReadOnly => json!({"destination": path, "type": "bind", "source": path,
                "options": ["rbind", "ro", "nosuid", "nodev"]}),
            Cover::Pinned => json!({"destination": path, "type": "bind", "source": path,
                "options": ["rbind", "rw", "nosuid", "nodev"]}),
        };
        mounts.push((depth(&c.path), m));
    }
    mounts.sort_by_key(|(d, _)| *d);
    let mounts: Vec<Value> = mounts.into_iter().map(|(_, m)| m).collect();
    let none: Vec<String> = Vec::new();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": req.use_pty,
            // The caller's uid is root in runsc's user namespace (see
            // `enter_nested_namespaces`): the command runs as that uid, without any
            // capability, so the workspace's files are its own.
            "user": {"uid": 0, "gid": 0},
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
    // `clone3` takes its flags through memory that seccomp cannot read, so it is refused
    // whole, with `ENOSYS` as in the `namespaces` backend: C libraries then fall back to
    // `clone`, whose namespace flags the rules below refuse. `SCMP_ACT_ERRNO` cannot say
    // `ENOSYS` here (gVisor releases up to at least 20240729 ignore `errnoRet` and answer
    // `EPERM`, on which glibc does not fall back, so threads fail); `SCMP_ACT_TRACE` with
    // no tracer is answered `ENOSYS` by gVisor as by Linux, and the command cannot
    // become a tracer (`ptrace` is refused).
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
            {"names": ["clone3"], "action": "SCMP_ACT_TRACE", "args": []},
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
                read_only: Vec::new(),
                hide_patterns: vec![],
                limits: Limits::default(),
                home: "/home/u".into(),
                hostname: "warden".into(),
                tty: TtyMode::Inherit,
                session_id: "abc".into(),
                network: Network::Egress,
                mcp_door: false,
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
        let c = oci_config(&req(), &[]);
        assert_eq!(c["root"]["path"], "/");
        assert_eq!(c["root"]["readonly"], true);
        assert_eq!(c["process"]["user"]["uid"], 0);
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
        let nl = &rules[5]["args"];
        assert_eq!(nl[0]["index"], 0);
        assert_eq!(nl[1]["index"], 2);
        // clone3 as a whole: ENOSYS (a trace rule with no tracer), so libc falls back
        // to clone, whose namespace flags are refused.
        assert_eq!(rules[1]["names"], json!(["clone3"]));
        assert_eq!(rules[1]["action"], "SCMP_ACT_TRACE");
    }

    #[test]
    fn release_dates_are_read_from_runsc_versions() {
        assert_eq!(
            release_of("runsc version 0.0~20221219.0\nspec: 1.0.2-dev"),
            Some(20221219)
        );
        assert_eq!(
            release_of("runsc version release-20240729.0\n"),
            Some(20240729)
        );
        assert_eq!(release_of("runsc version 0.0.0"), None);
        assert_eq!(release_of(""), None);
    }

    #[test]
    fn an_old_runsc_is_refused_and_the_answer_is_cached() {
        let dir = std::env::temp_dir().join(format!("warden-runsc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("runsc");
        let cache = dir.join("cache");
        let write = |body: &str| {
            std::fs::write(&fake, body).unwrap();
            std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        };
        write("#!/bin/sh\necho 'runsc version 0.0~20221219.0'\n");
        let e = check_runsc_release(&fake, &cache).unwrap_err().to_string();
        assert!(
            e.contains("release-20221219") && e.contains("install-gvisor"),
            "{e}"
        );
        // Cached: the same answer without running the binary (it can no longer run;
        // its modification time is unchanged by chmod).
        let before = std::fs::metadata(&fake).unwrap().modified().unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o000))
            .unwrap();
        let again = check_runsc_release(&fake, &cache).unwrap_err().to_string();
        assert!(again.contains("release-20221219"), "{again}");
        // A new binary (other size and time) is asked again.
        std::thread::sleep(std::time::Duration::from_millis(10));
        write("#!/bin/sh\necho 'runsc version 0.0~20240729.0'   \n");
        assert_ne!(
            std::fs::metadata(&fake).unwrap().modified().unwrap(),
            before
        );
        check_runsc_release(&fake, &cache).unwrap();
        assert!(
            std::fs::read_to_string(&cache)
                .unwrap()
                .contains("20240729")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hidden_paths_are_gvisor_mounts_after_their_mount() {
        let hidden = [
            Overmount {
                path: "/ws/.env".into(),
                cover: Cover::HiddenFile,
            },
            Overmount {
                path: "/ws/a/data".into(),
                cover: Cover::HiddenDir,
            },
        ];
        let c = oci_config(&req(), &hidden);
        let mounts = c["mounts"].as_array().unwrap();
        let at = |d: &str| {
            mounts
                .iter()
                .rposition(|m| m["destination"] == d)
                .unwrap_or_else(|| panic!("{d} not mounted: {mounts:?}"))
        };
        let file = &mounts[at("/ws/.env")];
        assert_eq!(file["type"], "bind");
        assert_eq!(file["source"], format!("{BUNDLE_DIR}/empty"));
        assert!(file["options"].as_array().unwrap().contains(&json!("ro")));
        let dir = &mounts[at("/ws/a/data")];
        assert_eq!(dir["type"], "tmpfs");
        assert!(dir["options"].as_array().unwrap().contains(&json!("ro")));
        // The hiding mount comes after the mount it hides something in, also when
        // both are at the same path.
        assert!(at("/ws") < at("/ws/.env"));
        assert_eq!(mounts[at("/ws/a/data")]["type"], "tmpfs");
        let first_data = mounts
            .iter()
            .position(|m| m["destination"] == "/ws/a/data")
            .unwrap();
        assert_eq!(mounts[first_data]["type"], "bind");
    }
}
