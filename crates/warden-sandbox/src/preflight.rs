//! Preflight: every layer of the boundary, checked on this host before a session starts.
//! Cheap (a few file reads and probing system calls); the session setup itself verifies
//! again and fails closed.

use crate::{Backend, SandboxError, SandboxSpec, cgroup, landlock_layer};
use std::fs;

/// One verified layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The layer (`user namespaces`, `seccomp`, ...).
    pub layer: &'static str,
    /// `None` when available; else what is missing and how to enable it.
    pub problem: Option<(String, String)>,
}

fn read_num(path: &str) -> Option<i64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// All checks for `spec`, passing or not.
pub fn preflight_report(spec: &SandboxSpec) -> Vec<Check> {
    let unpriv = !rustix::process::geteuid().is_root();
    let mut out = Vec::new();

    let mut userns = None;
    if read_num("/proc/sys/user/max_user_namespaces") == Some(0) {
        userns = Some((
            "user namespaces are disabled (user.max_user_namespaces = 0)".to_string(),
            "Enable them: `sysctl -w user.max_user_namespaces=15000`.".to_string(),
        ));
    } else if unpriv && read_num("/proc/sys/kernel/unprivileged_userns_clone") == Some(0) {
        userns = Some((
            "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)"
                .into(),
            "Enable them: `sysctl -w kernel.unprivileged_userns_clone=1`.".into(),
        ));
    } else if unpriv
        && read_num("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == Some(1)
    {
        userns = Some((
            "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1)".into(),
            "Allow them: `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`, or install an AppArmor profile granting `userns` to warden.".into(),
        ));
    }
    out.push(Check {
        layer: "user namespaces",
        problem: userns,
    });

    let actions = fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    let missing: Vec<&str> = ["kill_process", "errno", "user_notif"]
        .into_iter()
        .filter(|a| !actions.split_whitespace().any(|x| x == *a))
        .collect();
    out.push(Check {
        layer: "seccomp",
        problem: (!missing.is_empty()).then(|| {
            (
                format!("seccomp filter actions missing: {}", missing.join(", ")),
                "Use a kernel built with CONFIG_SECCOMP_FILTER (Linux >= 5.0).".to_string(),
            )
        }),
    });

    // gVisor's boundary replaces Landlock for the command (runsc cannot run under it).
    let abi = if spec.backend == Backend::Gvisor {
        1
    } else {
        landlock_layer::kernel_abi()
    };
    out.push(Check {
        layer: "landlock",
        problem: (abi < 1).then(|| {
            (
                "Landlock is not available in this kernel".to_string(),
                "Use Linux >= 5.13 with CONFIG_SECURITY_LANDLOCK=y and `landlock` in the `lsm=` boot parameter (e.g. lsm=landlock,lockdown,yama,apparmor,bpf).".to_string(),
            )
        }),
    });

    // mount_setattr (Linux 5.12) probes the descriptor-based mount API we rely on.
    // SAFETY: invalid descriptor and null attr: the call fails without side effects;
    // only the errno matters (ENOSYS when the kernel lacks it).
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            0u32,
            std::ptr::null::<u8>(),
            0usize,
        )
    };
    let enosys = r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS);
    out.push(Check {
        layer: "mount API",
        problem: enosys.then(|| {
            (
                "the kernel lacks mount_setattr/open_tree (Linux >= 5.12 needed)".to_string(),
                "Upgrade the kernel.".to_string(),
            )
        }),
    });

    let cg = if spec.limits.is_empty() {
        None
    } else {
        match cgroup::plan(&spec.limits).and_then(|p| cgroup::check_writable(&p).map(|()| p)) {
            Ok(_) => None,
            Err(SandboxError::Unsupported { what, fix }) => Some((what, fix)),
            Err(SandboxError::Cgroup { path, source, fix }) => Some((
                format!(
                    "the policy sets [limits] but {} is not writable ({source})",
                    path.display()
                ),
                fix,
            )),
            Err(e) => Some((e.to_string(), cgroup::delegate_fix())),
        }
    };
    out.push(Check {
        layer: "cgroups",
        problem: cg,
    });

    if crate::init_program().is_some() {
        out.push(Check {
            layer: "session init",
            problem: crate::init_program_problem(),
        });
    }

    if spec.backend == Backend::Gvisor {
        out.push(Check {
            layer: "gVisor",
            problem: if crate::gvisor::find_runsc().is_none() {
                Some((
                    format!(
                        "the policy or --backend asks for gVisor but runsc is not installed (looked for {})",
                        crate::gvisor::RUNSC_CANDIDATES.join(", ")
                    ),
                    format!("{}.", crate::gvisor::RUNSC_INSTALL_HINT),
                ))
            } else {
                None
            },
        });
    }

    out
}

/// Verifies every layer the session needs; the first problem is returned as
/// [`SandboxError::Unsupported`] naming what is missing and how to enable it.
pub fn preflight(spec: &SandboxSpec) -> Result<(), SandboxError> {
    for c in preflight_report(spec) {
        if let Some((what, fix)) = c.problem {
            return Err(SandboxError::Unsupported {
                what: format!("{}: {what}", c.layer),
                fix,
            });
        }
    }
    Ok(())
}
