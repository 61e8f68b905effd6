//! Per-session cgroups for `[limits]`: v2 where the unified hierarchy has the controller
//! enabled, else the v1 hierarchy of that controller. The session's cgroup is created
//! under the caller's *current* cgroup of each hierarchy (read from `/proc/self/cgroup`),
//! named `warden-<session id>`, and removed when the session ends (also on failure: the
//! [`CgroupSet`] removes it on drop). The session never sees cgroupfs: `/sys` is not
//! mounted and the init enters a new cgroup namespace.

use crate::{Limits, SandboxError};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    pub controller: Controller,
    /// The caller's current cgroup directory in the hierarchy that has the controller.
    pub parent: PathBuf,
    pub v2: bool,
}

struct MountInfo {
    root: String,
    mountpoint: PathBuf,
    fstype: String,
    superopts: String,
}

fn mountinfo() -> io::Result<Vec<MountInfo>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        out.push(MountInfo {
            root: unescape(pre[3]),
            mountpoint: PathBuf::from(unescape(pre[4])),
            fstype: post[0].to_string(),
            superopts: post[2].to_string(),
        });
    }
    Ok(out)
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `hierarchy id -> (controllers, path)` from /proc/self/cgroup.
fn self_cgroups() -> io::Result<Vec<(String, String)>> {
    let text = fs::read_to_string("/proc/self/cgroup")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrl = it.next()?.to_string();
            let path = it.next()?.to_string();
            Some((ctrl, path))
        })
        .collect())
}

fn join_under(mount: &MountInfo, cg_path: &str) -> PathBuf {
    let rel = cg_path.strip_prefix(mount.root.as_str()).unwrap_or(cg_path);
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        mount.mountpoint.clone()
    } else {
        mount.mountpoint.join(rel)
    }
}

/// Where each needed controller lives. Errors name the missing controller.
pub(crate) fn plan(limits: &Limits) -> Result<Vec<Placement>, SandboxError> {
    let mut need = Vec::new();
    if limits.memory_bytes.is_some() {
        need.push(Controller::Memory);
    }
    if limits.pids.is_some() {
        need.push(Controller::Pids);
    }
    if limits.cpus.is_some() {
        need.push(Controller::Cpu);
    }
    if need.is_empty() {
        return Ok(Vec::new());
    }
    let mounts = mountinfo().map_err(|e| SandboxError::os("reading /proc/self/mountinfo", e))?;
    let cgs = self_cgroups().map_err(|e| SandboxError::os("reading /proc/self/cgroup", e))?;
    let v2_dir = mounts.iter().find(|m| m.fstype == "cgroup2").and_then(|m| {
        let (_, p) = cgs.iter().find(|(c, _)| c.is_empty())?;
        Some(join_under(m, p))
    });
    let v2_controllers = v2_dir
        .as_ref()
        .and_then(|d| fs::read_to_string(d.join("cgroup.controllers")).ok())
        .unwrap_or_default();
    let mut out = Vec::new();
    for c in need {
        if let Some(dir) = &v2_dir
            && v2_controllers.split_whitespace().any(|x| x == c.name())
        {
            out.push(Placement {
                controller: c,
                parent: dir.clone(),
                v2: true,
            });
            continue;
        }
        let v1 = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.superopts.split(',').any(|o| o == c.name()));
        let path = cgs
            .iter()
            .find(|(ctrls, _)| ctrls.split(',').any(|x| x == c.name()))
            .map(|(_, p)| p.clone());
        match (v1, path) {
            (Some(m), Some(p)) => out.push(Placement {
                controller: c,
                parent: join_under(m, &p),
                v2: false,
            }),
            _ => {
                return Err(SandboxError::Unsupported {
                    what: format!(
                        "the policy sets a {} limit but no cgroup hierarchy on this host offers the `{}` controller",
                        c.name(),
                        c.name()
                    ),
                    fix: format!(
                        "Enable it (cgroup v2: `echo +{} > <parent>/cgroup.subtree_control`; v1: mount the `{}` hierarchy), or remove the limit from [limits].",
                        c.name(),
                        c.name()
                    ),
                });
            }
        }
    }
    Ok(out)
}

pub(crate) fn delegate_fix() -> String {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    format!(
        "uid {uid} cannot create cgroups here. Delegate a cgroup subtree to this user (systemd: \
         `systemd-run --user --scope -p Delegate=yes warden run ...`; otherwise `mkdir` a cgroup in \
         each hierarchy, `chown -R {uid}` it, and start warden from inside it), run as root, or \
         remove [limits] from the policy"
    )
}

/// Checks that the caller could create the session's cgroups (writable parents).
pub(crate) fn check_writable(plan: &[Placement]) -> Result<(), SandboxError> {
    for p in plan {
        let c = sys_path(&p.parent)?;
        // SAFETY: `c` is a valid NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
            return Err(SandboxError::Cgroup {
                path: p.parent.clone(),
                source: io::Error::last_os_error(),
                fix: delegate_fix(),
            });
        }
    }
    Ok(())
}

fn sys_path(p: &Path) -> Result<std::ffi::CString, SandboxError> {
    crate::sys::cstr(p).map_err(|e| SandboxError::os("cgroup path", e))
}

/// The session's cgroups. Dropping it kills anything left in them and removes them.
#[derive(Debug, Default)]
pub(crate) struct CgroupSet {
    dirs: Vec<(PathBuf, bool)>,
}

fn write(path: &Path, value: &str) -> Result<(), SandboxError> {
    fs::write(path, value).map_err(|source| SandboxError::Cgroup {
        path: path.to_path_buf(),
        source,
        fix: "check that the controller is enabled and the value is valid for this kernel".into(),
    })
}

impl CgroupSet {
    /// Creates `warden-<id>` in every hierarchy the limits need and writes the limits.
    pub(crate) fn create(id: &str, limits: &Limits) -> Result<CgroupSet, SandboxError> {
        let plan = plan(limits)?;
        let mut set = CgroupSet::default();
        let name = format!("warden-{id}");
        for p in &plan {
            let dir = p.parent.join(&name);
            if set.dirs.iter().any(|(d, _)| *d == dir) {
                continue;
            }
            if p.v2 {
                enable_v2_controllers(&p.parent, &plan)?;
            }
            fs::create_dir(&dir).map_err(|source| SandboxError::Cgroup {
                path: dir.clone(),
                fix: if source.kind() == io::ErrorKind::PermissionDenied {
                    delegate_fix()
                } else {
                    "check the cgroup hierarchy is mounted read-write".into()
                },
                source,
            })?;
            set.dirs.push((dir, p.v2));
        }
        for p in &plan {
            let dir = p.parent.join(&name);
            match (p.controller, p.v2) {
                (Controller::Memory, true) => {
                    if let Some(m) = limits.memory_bytes {
                        write(&dir.join("memory.max"), &m.to_string())?;
                        // No swap beyond the limit; absent when swap accounting is off.
                        let _ = fs::write(dir.join("memory.swap.max"), "0");
                    }
                }
                (Controller::Memory, false) => {
                    if let Some(m) = limits.memory_bytes {
                        write(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
                        let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), m.to_string());
                    }
                }
                (Controller::Pids, _) => {
                    if let Some(n) = limits.pids {
                        write(&dir.join("pids.max"), &n.to_string())?;
                    }
                }
                (Controller::Cpu, v2) => {
                    if let Some(c) = limits.cpus {
                        let period: u64 = 100_000;
                        let quota = ((c * period as f64).round() as u64).max(1000);
                        if v2 {
                            write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
                        } else {
                            write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
                            write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                        }
                    }
                }
            }
        }
        Ok(set)
    }

    /// Moves `pid` into every session cgroup.
    pub(crate) fn add(&self, pid: i32) -> Result<(), SandboxError> {
        for (dir, _) in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Kills what is left and removes the directories (retrying while the kernel finishes
    /// tearing down exiting tasks).
    pub(crate) fn remove(&mut self) {
        for (dir, v2) in self.dirs.drain(..) {
            for attempt in 0..200 {
                if v2 {
                    let _ = fs::write(dir.join("cgroup.kill"), "1");
                }
                if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                    for pid in procs
                        .split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok())
                    {
                        // SAFETY: sending SIGKILL to a pid in our own session cgroup.
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                        }
                    }
                }
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(if attempt < 20 { 2 } else { 20 }))
                    }
                }
            }
        }
    }
}

impl Drop for CgroupSet {
    fn drop(&mut self) {
        self.remove();
    }
}

fn enable_v2_controllers(parent: &Path, plan: &[Placement]) -> Result<(), SandboxError> {
    let sub = parent.join("cgroup.subtree_control");
    let current = fs::read_to_string(&sub).unwrap_or_default();
    for p in plan.iter().filter(|p| p.v2) {
        let n = p.controller.name();
        if current.split_whitespace().any(|x| x == n) {
            continue;
        }
        fs::write(&sub, format!("+{n}")).map_err(|source| SandboxError::Cgroup {
            path: sub.clone(),
            source,
            fix: format!(
                "the `{n}` controller is not enabled for children of {} (cgroup v2 forbids enabling it \
                 in a cgroup that has processes). Start warden in a delegated cgroup whose \
                 subtree_control has +{n}, e.g. `systemd-run --scope -p Delegate=yes warden run ...`",
                parent.display()
            ),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn no_limits_no_plan() {
        assert!(plan(&Limits::default()).is_ok_and(|p| p.is_empty()));
    }
}
