//! The session's root filesystem, built by the init inside its new mount namespace.
//!
//! Layout: a fresh tmpfs root (read-only once built) holding
//! - `/usr`, `/bin`, `/sbin`, `/lib*` read-only (merged-/usr symlinks recreated as symlinks);
//! - `/etc`: a read-only tmpfs with only what programs need (copied small files, read-only
//!   binds of a few directories) and synthesized `passwd`, `group`, `hosts`, `hostname`,
//!   `resolv.conf`; never `shadow`, `gshadow`, `sudoers`, `ssl/private`;
//! - a fresh `/proc` of the session's PID namespace (`/proc/sys` and friends read-only);
//! - a minimal `/dev` (null, zero, full, random, urandom, tty, a private devpts, shm);
//! - a private `/tmp` and an empty writable home;
//! - the caller's mounts (the workspace among them), read-only or read-write;
//! - hidden paths overmounted by an empty read-only directory or file.
//!
//! Every host path is opened with `openat2(RESOLVE_IN_ROOT)` under the host's root and every
//! mount target is walked one component at a time with `O_NOFOLLOW` from the new root, so a
//! symlink planted in a shared directory cannot redirect a mount. Mounts are made with the
//! descriptor-based API (`open_tree` + `mount_setattr` + `move_mount`): no path is looked up
//! twice. All mounts are `nosuid,nodev` (device nodes in `/dev` excepted).

use crate::proto::InitRequest;
use crate::sys::{self, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use crate::{HIDE_WALK_MAX_DEPTH, HIDE_WALK_MAX_ENTRIES, HIDE_WALK_SKIP_DIRS, Mount};
use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

const STAGE: &str = "/tmp";
const OLD: &str = "/oldroot";
const NEW: &str = "/newroot";
const PROC: &str = "/oldroot/proc";
const EMPTY_FILE: &str = "/empty";

/// `/etc` entries copied (small regular files) or bound read-only (directories).
const ETC_ALLOW: &[&str] = &[
    "alternatives",
    "bash.bashrc",
    "ca-certificates.conf",
    "debian_version",
    "gai.conf",
    "host.conf",
    "inputrc",
    "ld.so.cache",
    "localtime",
    "nsswitch.conf",
    "os-release",
    "profile",
    "profile.d",
    "protocols",
    "services",
    "shells",
    "ssl/certs",
    "ssl/openssl.cnf",
    "timezone",
];

/// `/etc` entries never exposed, even if a later edit adds a parent to [`ETC_ALLOW`].
const ETC_NEVER: &[&str] = &[
    "shadow",
    "gshadow",
    "shadow-",
    "gshadow-",
    "sudoers",
    "sudoers.d",
    "ssl/private",
];

fn err(what: impl std::fmt::Display, e: io::Error) -> String {
    format!("{what}: {e}")
}

/// Owned descriptor of the path `p` relative to nothing (absolute, in the current root).
fn open_path(p: &str, flags: i32) -> Result<OwnedFd, String> {
    let c = sys::cstring(p).map_err(|e| err(p, e))?;
    sys::openat(libc::AT_FDCWD, &c, flags | libc::O_PATH, 0)
        .map_err(|e| err(format!("open {p}"), e))
}

fn fdp(fd: &impl AsRawFd) -> PathBuf {
    sys::fd_path(PROC, fd)
}

/// Mount a new filesystem on the object `target` refers to.
fn mount_fs(
    fstype: &str,
    target: &OwnedFd,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    sys::mount(Some(fstype), &fdp(target), Some(fstype), flags, Some(data))
        .map_err(|e| err(format!("mount {fstype}"), e))
}

/// Bind (recursive clone of) `src` onto `dst` with `attrs` added.
fn bind(src: &OwnedFd, dst: &OwnedFd, attrs: u64, what: &Path) -> Result<(), String> {
    let tree = sys::open_tree_clone(src.as_raw_fd())
        .map_err(|e| err(format!("open_tree {}", what.display()), e))?;
    if attrs != 0 {
        sys::mount_setattr_fd(tree.as_raw_fd(), attrs)
            .map_err(|e| err(format!("mount_setattr {}", what.display()), e))?;
    }
    sys::move_mount_fd(tree.as_raw_fd(), dst.as_raw_fd())
        .map_err(|e| err(format!("move_mount {}", what.display()), e))
}

fn name_c(name: &OsStr) -> Result<CString, String> {
    CString::new(name.as_bytes()).map_err(|_| "path component contains NUL".to_string())
}

/// Normal components of an absolute session path; rejects `..`.
fn components(p: &Path) -> Result<Vec<&OsStr>, String> {
    if !p.is_absolute() {
        return Err(format!("{}: session paths must be absolute", p.display()));
    }
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            _ => {
                return Err(format!(
                    "{}: `..` is not allowed in a session path",
                    p.display()
                ));
            }
        }
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

/// Walks `target` from the new root without following any symlink, creating missing
/// components (directories; the last one as `kind`). Returns an `O_PATH` descriptor.
fn ensure_target(root: &OwnedFd, target: &Path, kind: Kind) -> Result<OwnedFd, String> {
    let comps = components(target)?;
    let mut cur = root.try_clone().map_err(|e| err("dup", e))?;
    let n = comps.len();
    for (i, comp) in comps.into_iter().enumerate() {
        let last = i + 1 == n;
        let c = name_c(comp)?;
        let want_dir = !last || kind == Kind::Dir;
        let flags = libc::O_PATH | libc::O_NOFOLLOW | if want_dir { libc::O_DIRECTORY } else { 0 };
        let next = match sys::openat(cur.as_raw_fd(), &c, flags, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                if want_dir {
                    sys::mkdirat(cur.as_raw_fd(), &c, 0o755)
                        .map_err(|e| err(format!("mkdir {}", target.display()), e))?;
                } else {
                    let f = sys::openat(
                        cur.as_raw_fd(),
                        &c,
                        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                        0o644,
                    )
                    .map_err(|e| err(format!("create {}", target.display()), e))?;
                    drop(f);
                }
                sys::openat(cur.as_raw_fd(), &c, flags, 0)
                    .map_err(|e| err(format!("open {}", target.display()), e))?
            }
            Err(e)
                if e.raw_os_error() == Some(libc::ENOTDIR)
                    || e.raw_os_error() == Some(libc::ELOOP) =>
            {
                return Err(format!(
                    "{}: a component is a symlink or not a directory; mount targets never follow symlinks",
                    target.display()
                ));
            }
            Err(e) => return Err(err(format!("open {}", target.display()), e)),
        };
        if last && !want_dir {
            let m = sys::fstat_mode(next.as_raw_fd()).map_err(|e| err(target.display(), e))?;
            if m == libc::S_IFLNK || m == libc::S_IFDIR {
                return Err(format!("{}: expected a file", target.display()));
            }
        }
        cur = next;
    }
    Ok(cur)
}

/// Opens a host path under the host root (`/oldroot`), resolving symlinks as the host
/// would but never outside the host root and never through magic links.
fn open_host(old: &OwnedFd, host: &Path) -> Result<OwnedFd, String> {
    let rel = host.strip_prefix("/").unwrap_or(host);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    sys::openat2(
        old.as_raw_fd(),
        rel,
        libc::O_PATH,
        0,
        sys::RESOLVE_IN_ROOT | sys::RESOLVE_NO_MAGICLINKS,
    )
    .map_err(|e| err(format!("host path {}", host.display()), e))
}

fn write_file(root: &OwnedFd, path: &str, content: &[u8], mode: u32) -> Result<(), String> {
    let fd = ensure_target(root, Path::new(path), Kind::File)?;
    drop(fd);
    let full = format!("{NEW}{path}");
    fs::write(&full, content).map_err(|e| err(&full, e))?;
    fs::set_permissions(&full, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(|e| err(&full, e))
}

/// Builds the new root and switches to it. On return the process's root is the session
/// root and the host's is gone from its view.
/// How the session root covers a path inside one of its mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cover {
    /// `filesystem.deny`: an empty read-only directory over it.
    HiddenDir,
    /// `filesystem.deny`: an empty read-only file over it.
    HiddenFile,
    /// The path itself, read-only (a repository's git configuration and hooks).
    ReadOnly,
    /// The path itself, as writable as before: a mount point cannot be renamed, removed
    /// or replaced (a repository's `.git`).
    Pinned,
}

/// A path the session root covers; the `gvisor` backend covers it again inside gVisor
/// (see gvisor.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overmount {
    pub path: PathBuf,
    pub cover: Cover,
}

/// Builds the session root and pivots into it. Returns the paths it covered inside its
/// mounts, which the `gvisor` backend covers again inside gVisor (see gvisor.rs).
pub(crate) fn build_root(
    req: &InitRequest,
    warnings: &mut Vec<String>,
) -> Result<Vec<Overmount>, String> {
    let spec = &req.spec;
    sys::mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(|e| err("make / private", e))?;
    // Staging root: a tmpfs that becomes `/` while the host's root sits at /oldroot.
    sys::mount(
        Some("tmpfs"),
        Path::new(STAGE),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755,size=64k"),
    )
    .map_err(|e| err("mount staging tmpfs on /tmp", e))?;
    for d in ["newroot", "oldroot"] {
        fs::create_dir(format!("{STAGE}/{d}")).map_err(|e| err(d, e))?;
    }
    fs::write(format!("{STAGE}{EMPTY_FILE}"), b"").map_err(|e| err("empty file", e))?;
    fs::set_permissions(
        format!("{STAGE}{EMPTY_FILE}"),
        std::os::unix::fs::PermissionsExt::from_mode(0o444),
    )
    .map_err(|e| err("empty file", e))?;
    std::env::set_current_dir(STAGE).map_err(|e| err("chdir staging", e))?;
    sys::pivot_root(Path::new("."), Path::new("oldroot"))
        .map_err(|e| err("pivot_root to staging", e))?;
    std::env::set_current_dir("/").map_err(|e| err("chdir /", e))?;

    sys::mount(
        Some("tmpfs"),
        Path::new(NEW),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(|e| err("mount root tmpfs", e))?;
    let old = open_path(OLD, libc::O_DIRECTORY)?;
    let root = open_path(NEW, libc::O_DIRECTORY)?;
    let ro = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;

    // System directories.
    for name in ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let host = format!("{OLD}/{name}");
        let Ok(meta) = fs::symlink_metadata(&host) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let link = fs::read_link(&host).map_err(|e| err(&host, e))?;
            std::os::unix::fs::symlink(&link, format!("{NEW}/{name}")).map_err(|e| err(name, e))?;
        } else if meta.is_dir() {
            let src = open_host(&old, Path::new(&format!("/{name}")))?;
            let dst = ensure_target(&root, Path::new(&format!("/{name}")), Kind::Dir)?;
            bind(&src, &dst, ro, Path::new(name))?;
        }
    }

    build_etc(req, &old, &root)?;
    build_dev(&old, &root)?;

    // /proc of the session's PID namespace.
    let proc_fd = ensure_target(&root, Path::new("/proc"), Kind::Dir)?;
    mount_fs(
        "proc",
        &proc_fd,
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    )?;
    // The rest of /proc's writable knobs need capabilities of the host's namespaces,
    // which the agent never has; /proc/sys also holds namespaced ones.
    for p in ["sys"] {
        let path = format!("{NEW}/proc/{p}");
        let Ok(fd) = open_path(&path, libc::O_NOFOLLOW) else {
            continue;
        };
        bind(&fd, &fd, ro, Path::new(&path))?;
    }

    // Private /tmp, home, and the caller's mounts, parents before children.
    enum Entry<'a> {
        Tmpfs(&'a Path, &'static str),
        Bind(&'a Mount),
    }
    let tmp_path = Path::new("/tmp");
    let mut entries: Vec<(usize, Entry<'_>)> = vec![
        (1, Entry::Tmpfs(tmp_path, "mode=1777")),
        (
            components(&spec.home)?.len(),
            Entry::Tmpfs(&spec.home, "mode=0700"),
        ),
    ];
    for m in &spec.mounts {
        if spec.hide.iter().any(|h| m.source.starts_with(h)) {
            warnings.push(format!(
                "{} is hidden by filesystem.deny; not mounted",
                m.source.display()
            ));
            continue;
        }
        entries.push((components(&m.target)?.len(), Entry::Bind(m)));
    }
    entries.sort_by_key(|(d, _)| *d);
    let mut rw: Vec<PathBuf> = vec![PathBuf::from("/tmp"), spec.home.clone()];
    for (_, e) in &entries {
        match e {
            Entry::Tmpfs(path, mode) => {
                let dst = ensure_target(&root, path, Kind::Dir)?;
                let data = format!(
                    "{mode},uid={},gid={}",
                    if *path == tmp_path { 0 } else { req.uid },
                    if *path == tmp_path { 0 } else { req.gid }
                );
                let data = if *path == tmp_path {
                    mode.to_string()
                } else {
                    data
                };
                mount_fs("tmpfs", &dst, libc::MS_NOSUID | libc::MS_NODEV, &data)?;
            }
            Entry::Bind(m) => {
                let src = open_host(&old, &m.source)?;
                let is_dir = sys::fstat_mode(src.as_raw_fd())
                    .map_err(|e| err(m.source.display(), e))?
                    == libc::S_IFDIR;
                let dst = ensure_target(
                    &root,
                    &m.target,
                    if is_dir { Kind::Dir } else { Kind::File },
                )?;
                let attrs = MOUNT_ATTR_NOSUID
                    | MOUNT_ATTR_NODEV
                    | if m.writable { 0 } else { MOUNT_ATTR_RDONLY };
                bind(&src, &dst, attrs, &m.source)?;
                if m.writable {
                    rw.push(m.target.clone());
                }
            }
        }
    }

    let mut covered = guard_git(req, &root)?;
    covered.extend(read_only_paths(req, &root)?);
    covered.extend(hide_paths(req, &root, warnings)?);

    // The root tmpfs itself becomes read-only (all mount points exist now); only this
    // mount, not the writable ones below it.
    sys::mount_setattr_one(root.as_raw_fd(), MOUNT_ATTR_RDONLY)
        .map_err(|e| err("read-only root", e))?;
    let _ = rw;

    // Leave the staging root and the host's root behind: the host's root is a mount
    // below the staging root, so the one lazy detach of the staging root takes it along
    // (one RCU grace period instead of two: each detach waits for one, ~1-4 ms here).
    drop(old);
    drop(root);
    drop(proc_fd);
    std::env::set_current_dir(NEW).map_err(|e| err("chdir new root", e))?;
    sys::pivot_root(Path::new("."), Path::new("."))
        .map_err(|e| err("pivot_root to session root", e))?;
    sys::umount_detach(Path::new("."))
        .map_err(|e| err("detach the staging root and the host's root", e))?;
    std::env::set_current_dir("/").map_err(|e| err("chdir /", e))?;
    Ok(covered)
}

/// The paths that stay writable for Landlock.
pub(crate) fn writable_paths(req: &InitRequest) -> Vec<PathBuf> {
    let mut rw = vec![
        PathBuf::from("/tmp"),
        PathBuf::from("/dev"),
        PathBuf::from("/proc"),
        req.spec.home.clone(),
    ];
    for m in &req.spec.mounts {
        if m.writable {
            rw.push(m.target.clone());
        }
    }
    rw
}

fn build_etc(req: &InitRequest, old: &OwnedFd, root: &OwnedFd) -> Result<(), String> {
    let etc = ensure_target(root, Path::new("/etc"), Kind::Dir)?;
    mount_fs("tmpfs", &etc, libc::MS_NOSUID | libc::MS_NODEV, "mode=0755")?;
    for name in ETC_ALLOW {
        if ETC_NEVER
            .iter()
            .any(|n| name == n || name.starts_with(&format!("{n}/")))
        {
            continue;
        }
        let host = format!("{OLD}/etc/{name}");
        let Ok(meta) = fs::symlink_metadata(&host) else {
            continue;
        };
        let session = PathBuf::from(format!("/etc/{name}"));
        if meta.file_type().is_symlink() {
            let link = fs::read_link(&host).map_err(|e| err(&host, e))?;
            if let Some(parent) = session.parent() {
                drop(ensure_target(root, parent, Kind::Dir)?);
            }
            std::os::unix::fs::symlink(&link, format!("{NEW}{}", session.display()))
                .map_err(|e| err(&host, e))?;
        } else if meta.is_file() && meta.len() <= 256 * 1024 {
            let content = fs::read(&host).map_err(|e| err(&host, e))?;
            write_file(root, &session.to_string_lossy(), &content, 0o644)?;
        } else if meta.is_dir() {
            let src = open_host(old, &Path::new("/etc").join(name))?;
            let dst = ensure_target(root, &session, Kind::Dir)?;
            bind(
                &src,
                &dst,
                MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                &session,
            )?;
        }
    }
    if let Some(bundle) = &req.spec.trust_bundle {
        // Staged on the /etc tmpfs, then bound read-only over the system bundle (which
        // may sit inside the read-only bind of the host's /etc/ssl/certs).
        const STAGED: &str = "/etc/ssl/warden-session-bundle.crt";
        write_file(root, STAGED, bundle.as_bytes(), 0o644)?;
        let src = open_path(&format!("{NEW}{STAGED}"), libc::O_NOFOLLOW)?;
        let target = Path::new(crate::SESSION_TRUST_BUNDLE);
        let dst = ensure_target(root, target, Kind::File)?;
        bind(
            &src,
            &dst,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            target,
        )?;
    }
    let (passwd, group) = synth_passwd(req);
    write_file(root, "/etc/passwd", passwd.as_bytes(), 0o644)?;
    write_file(root, "/etc/group", group.as_bytes(), 0o644)?;
    let host = &req.spec.hostname;
    write_file(root, "/etc/hostname", format!("{host}\n").as_bytes(), 0o644)?;
    write_file(
        root,
        "/etc/hosts",
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{host}\n"
        )
        .as_bytes(),
        0o644,
    )?;
    write_file(
        root,
        "/etc/resolv.conf",
        b"# Warden session: name resolution goes through the session's proxy (none configured yet).\nnameserver 127.0.0.1\noptions ndots:0\n",
        0o644,
    )?;
    // `etc` still names the directory under the mount; reopen to get the tmpfs itself.
    drop(etc);
    let etc = open_path(&format!("{NEW}/etc"), libc::O_DIRECTORY | libc::O_NOFOLLOW)?;
    sys::mount_setattr_fd(
        etc.as_raw_fd(),
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )
    .map_err(|e| err("read-only /etc", e))
}

/// `passwd`/`group` with only root, the session user and nobody.
fn synth_passwd(req: &InitRequest) -> (String, String) {
    let home = req.spec.home.display().to_string();
    let host_passwd = fs::read_to_string(format!("{OLD}/etc/passwd")).unwrap_or_default();
    let mut passwd = String::new();
    let mut have_user = false;
    let mut have_root = false;
    let mut have_nobody = false;
    for line in host_passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 7 {
            continue;
        }
        let Ok(uid) = f[2].parse::<u32>() else {
            continue;
        };
        if uid == req.uid {
            passwd.push_str(&format!(
                "{}:x:{}:{}:{}:{}:{}\n",
                f[0], f[2], f[3], f[4], home, f[6]
            ));
            have_user = true;
            have_root |= uid == 0;
            have_nobody |= uid == 65534;
        } else if uid == 0 {
            passwd.push_str(&format!("{}:x:0:0:{}:/root:{}\n", f[0], f[4], f[6]));
            have_root = true;
        } else if uid == 65534 {
            passwd.push_str(&format!(
                "{}:x:65534:65534:{}:/nonexistent:/usr/sbin/nologin\n",
                f[0], f[4]
            ));
            have_nobody = true;
        }
    }
    if !have_root {
        passwd.push_str("root:x:0:0:root:/root:/bin/sh\n");
    }
    if !have_nobody {
        passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    }
    if !have_user {
        let name = req.spec.env.iter().find(|(k, _)| k == "USER").map_or_else(
            || "user".to_string(),
            |(_, v)| {
                v.to_string_lossy()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                    .collect()
            },
        );
        let name = if name.is_empty() {
            "user".to_string()
        } else {
            name
        };
        passwd.push_str(&format!(
            "{name}:x:{}:{}::{home}:/bin/sh\n",
            req.uid, req.gid
        ));
    }
    let host_group = fs::read_to_string(format!("{OLD}/etc/group")).unwrap_or_default();
    let mut group = String::new();
    let mut have_gid = false;
    let mut have_nogroup = false;
    for line in host_group.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 4 {
            continue;
        }
        let Ok(gid) = f[2].parse::<u32>() else {
            continue;
        };
        if gid == 0 || gid == req.gid || gid == 65534 {
            group.push_str(&format!("{}:x:{}:\n", f[0], gid));
            have_gid |= gid == req.gid;
            have_nogroup |= gid == 65534;
        }
    }
    if !have_gid {
        group.push_str(&format!("user:x:{}:\n", req.gid));
    }
    if !have_nogroup {
        group.push_str("nogroup:x:65534:\n");
    }
    (passwd, group)
}

fn build_dev(old: &OwnedFd, root: &OwnedFd) -> Result<(), String> {
    let dev = ensure_target(root, Path::new("/dev"), Kind::Dir)?;
    mount_fs(
        "tmpfs",
        &dev,
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "mode=0755",
    )?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let src = open_host(old, &Path::new("/dev").join(name))?;
        if sys::fstat_mode(src.as_raw_fd()).map_err(|e| err(name, e))? != libc::S_IFCHR {
            return Err(format!("/dev/{name} on the host is not a character device"));
        }
        let dst = ensure_target(root, &Path::new("/dev").join(name), Kind::File)?;
        bind(&src, &dst, MOUNT_ATTR_NOSUID, &Path::new("/dev").join(name))?;
    }
    let pts = ensure_target(root, Path::new("/dev/pts"), Kind::Dir)?;
    mount_fs(
        "devpts",
        &pts,
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    let shm = ensure_target(root, Path::new("/dev/shm"), Kind::Dir)?;
    mount_fs("tmpfs", &shm, libc::MS_NOSUID | libc::MS_NODEV, "mode=1777")?;
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, format!("{NEW}/dev/{name}"))
            .map_err(|e| err(name, e))?;
    }
    // Nothing new can be created in /dev itself (non-recursive: devpts and shm stay writable).
    drop(dev);
    let dev = open_path(&format!("{NEW}/dev"), libc::O_DIRECTORY | libc::O_NOFOLLOW)?;
    sys::mount_setattr_one(dev.as_raw_fd(), MOUNT_ATTR_RDONLY)
        .map_err(|e| err("read-only /dev", e))?;
    Ok(())
}

// ---- git guard ---------------------------------------------------------------------
//
// What an agent writes into a repository's `.git` runs on the host: the user's git (a
// shell prompt runs `git status` on every command, an IDE polls it) executes hooks and
// `core.fsmonitor`, `core.sshCommand`, `diff.*.textconv`, ... from the repository's
// configuration, outside any sandbox. In every repository at the top of a writable
// mount or up to two levels below it, the session root therefore pins `.git` (a mount
// point cannot be renamed or replaced)
// and lays read-only binds over the repository's configuration and hooks, also those of
// its submodules and a `core.hooksPath` inside the writable mounts. Commits, branches,
// fetches and the index stay writable. See docs/decisions/0002-sandbox.md ("Git
// repositories"), also for what this does not cover, and crate::gitwatch for the
// files that cannot be covered because they do not exist yet.

/// What in a git directory runs or redirects commands: configuration, hooks, and the
/// file that points a git directory at another one's configuration.
const GIT_GUARDED: &[&str] = &["config", "config.worktree", "commondir", "hooks"];
/// Nesting of `.git/modules/<name>/modules/...` followed, and entries read per level.
pub(crate) const GIT_MODULES_MAX_DEPTH: usize = 3;
pub(crate) const GIT_MODULES_MAX_ENTRIES: usize = 256;
/// Levels below the top of a writable mount searched for repositories, and entries read
/// per mount (session start must not become a tree walk).
const GIT_SCAN_DEPTH: usize = 2;
const GIT_SCAN_MAX_ENTRIES: usize = 5_000;

fn self_bind(
    h: &Hidden,
    what: &Path,
    cover: Cover,
    out: &mut Vec<Overmount>,
) -> Result<(), String> {
    let attrs = MOUNT_ATTR_NOSUID
        | MOUNT_ATTR_NODEV
        | if cover == Cover::ReadOnly {
            MOUNT_ATTR_RDONLY
        } else {
            0
        };
    bind(&h.fd, &h.fd, attrs, what)?;
    out.push(Overmount {
        path: what.to_path_buf(),
        cover,
    });
    Ok(())
}

fn guard_git(req: &InitRequest, root: &OwnedFd) -> Result<Vec<Overmount>, String> {
    let spec = &req.spec;
    let writable: Vec<&Mount> = spec.writable_mounts().collect();
    // A path the policy itself mounts writable is left as the policy says.
    let chosen = |p: &Path| writable.iter().any(|m| m.target == p);
    let mut out = Vec::new();
    let mut repos = Vec::new();
    for m in &writable {
        let mut seen = 0;
        find_repos(root, PROC, &m.target, 0, &mut seen, &mut repos)?;
    }
    for repo in &repos {
        let git = repo.join(".git");
        let Some(h) = open_existing(root, &git)? else {
            continue;
        };
        if chosen(&git) {
            continue;
        }
        if !h.dir {
            // A linked worktree's or submodule's `gitdir:` pointer.
            self_bind(&h, &git, Cover::ReadOnly, &mut out)?;
            continue;
        }
        self_bind(&h, &git, Cover::Pinned, &mut out)?;
        guard_git_dir(root, &git, 0, &chosen, &mut out)?;
        if let Some(hooks) = hooks_path(root, &git, repo)?
            && writable.iter().any(|w| hooks.starts_with(&w.target))
            && !chosen(&hooks)
            && let Some(h) = open_existing(root, &hooks)?
        {
            self_bind(&h, &hooks, Cover::ReadOnly, &mut out)?;
        }
    }
    Ok(out)
}

/// Working trees (directories holding a `.git`) at `dir` and up to
/// [`GIT_SCAN_DEPTH`] levels below it, not inside the directories the pattern walk
/// skips either; at most [`GIT_SCAN_MAX_ENTRIES`] entries per mount are read. `dir` is
/// resolved beneath `root`; `proc` is where procfs is mounted.
pub(crate) fn find_repos(
    root: &OwnedFd,
    proc: &str,
    dir: &Path,
    depth: usize,
    seen: &mut usize,
    out: &mut Vec<PathBuf>,
) -> Result<(), String> {
    let Some(d) = open_existing(root, dir)? else {
        return Ok(());
    };
    if !d.dir {
        return Ok(());
    }
    let Ok(rd) = fs::read_dir(sys::fd_path(proc, &d.fd)) else {
        return Ok(());
    };
    let mut below = Vec::new();
    for ent in rd.flatten() {
        *seen += 1;
        if *seen > GIT_SCAN_MAX_ENTRIES {
            break;
        }
        let name = ent.file_name();
        if name == ".git" {
            out.push(dir.to_path_buf());
        } else if depth < GIT_SCAN_DEPTH
            && ent.file_type().is_ok_and(|t| t.is_dir())
            && !HIDE_WALK_SKIP_DIRS.iter().any(|s| OsStr::new(s) == name)
        {
            below.push(dir.join(name));
        }
    }
    for b in below {
        find_repos(root, proc, &b, depth + 1, seen, out)?;
    }
    Ok(())
}

/// Covers the guarded entries of one git directory and of its submodules' ones.
fn guard_git_dir(
    root: &OwnedFd,
    dir: &Path,
    depth: usize,
    chosen: &dyn Fn(&Path) -> bool,
    out: &mut Vec<Overmount>,
) -> Result<(), String> {
    for name in GIT_GUARDED {
        let path = dir.join(name);
        if chosen(&path) {
            continue;
        }
        let h = match open_existing(root, &path)? {
            Some(h) => h,
            // No hooks directory (git makes one, but it may have been removed): make an
            // empty one so that none can be made inside the session. If this fails the
            // agent, with the same credentials, cannot make it either.
            None if *name == "hooks" => {
                let Some(parent) = open_existing(root, dir)? else {
                    continue;
                };
                if sys::mkdirat(parent.fd.as_raw_fd(), c"hooks", 0o755).is_err() {
                    continue;
                }
                match open_existing(root, &path)? {
                    Some(h) => h,
                    None => continue,
                }
            }
            None => continue,
        };
        self_bind(&h, &path, Cover::ReadOnly, out)?;
    }
    if depth >= GIT_MODULES_MAX_DEPTH {
        return Ok(());
    }
    let modules = dir.join("modules");
    let Some(m) = open_existing(root, &modules)? else {
        return Ok(());
    };
    if !m.dir {
        return Ok(());
    }
    let Ok(rd) = fs::read_dir(fdp(&m.fd)) else {
        return Ok(());
    };
    for ent in rd.flatten().take(GIT_MODULES_MAX_ENTRIES) {
        if ent.file_type().is_ok_and(|t| t.is_dir()) {
            guard_git_dir(root, &modules.join(ent.file_name()), depth + 1, chosen, out)?;
        }
    }
    Ok(())
}

/// `core.hooksPath` of the repository whose git directory is `git` (session path), as
/// a session path: relative values are relative to the working tree `worktree`.
fn hooks_path(root: &OwnedFd, git: &Path, worktree: &Path) -> Result<Option<PathBuf>, String> {
    let Some(cfg) = open_existing(root, &git.join("config"))? else {
        return Ok(None);
    };
    // Read through the descriptor's /proc link: the path may hold a symlink, cfg not.
    let Ok(text) = fs::read_to_string(fdp(&cfg.fd)) else {
        return Ok(None);
    };
    Ok(git_config_value(&text, "core", "hookspath").map(|v| worktree.join(v)))
}

/// The last value of `section.key` (both lowercase, no subsection) in git config text.
/// Enough for `core.hooksPath`: a value git reads from an include is not seen here.
fn git_config_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.split([']', ' ', '"']).next().unwrap_or_default();
            current = name.to_ascii_lowercase();
            continue;
        }
        if current != section {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case(key) {
            let v = v.split([';', '#']).next().unwrap_or_default().trim();
            found = Some(v.trim_matches('"').to_string());
        }
    }
    found.filter(|v| !v.is_empty())
}

/// A match found by the walk: the entry's `O_PATH|O_NOFOLLOW` descriptor and its kind.
struct Hidden {
    fd: OwnedFd,
    dir: bool,
}

fn hide_one(h: &Hidden, what: &Path, hidden: &mut Vec<Overmount>) -> Result<(), String> {
    hidden.push(Overmount {
        path: what.to_path_buf(),
        cover: if h.dir {
            Cover::HiddenDir
        } else {
            Cover::HiddenFile
        },
    });
    if h.dir {
        mount_fs(
            "tmpfs",
            &h.fd,
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "size=4k,nr_inodes=1,mode=0555",
        )
        .map_err(|e| format!("hiding {}: {e}", what.display()))
    } else {
        let empty = open_path(EMPTY_FILE, 0)?;
        bind(
            &empty,
            &h.fd,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            what,
        )
    }
}

/// Opens an existing session path without following symlinks; `None` when it does not
/// exist, or runs through a symlink (then it is not where the hidden path would be).
fn open_existing(root: &OwnedFd, session: &Path) -> Result<Option<Hidden>, String> {
    let rel = session.strip_prefix("/").unwrap_or(session);
    match sys::openat2(
        root.as_raw_fd(),
        rel,
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
        sys::RESOLVE_BENEATH | sys::RESOLVE_NO_SYMLINKS,
    ) {
        Ok(fd) => {
            let m = sys::fstat_mode(fd.as_raw_fd()).map_err(|e| err(session.display(), e))?;
            if m == libc::S_IFLNK {
                return Ok(None);
            }
            Ok(Some(Hidden {
                fd,
                dir: m == libc::S_IFDIR,
            }))
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ELOOP) | Some(libc::ENOTDIR)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(err(format!("hide {}", session.display()), e)),
    }
}

/// [`crate::SandboxSpec::read_only`]: each path, where a writable mount shows it, bound
/// read-only over itself, and each directory between the mount and it pinned (bound
/// over itself as it is), so that the path cannot be replaced by renaming a parent
/// away either.
fn read_only_paths(req: &InitRequest, root: &OwnedFd) -> Result<Vec<Overmount>, String> {
    let spec = &req.spec;
    let mut out: Vec<Overmount> = Vec::new();
    for p in &spec.read_only {
        for m in spec.writable_mounts() {
            let Ok(rel) = p.strip_prefix(&m.source) else {
                continue;
            };
            let session = m.target.join(rel);
            if open_existing(root, &session)?.is_none() {
                continue;
            }
            let mut dir = m.target.clone();
            let parents = rel.parent().map(Path::components).into_iter().flatten();
            for c in parents {
                dir.push(c);
                // Once per directory (`warden` and `warden-init` share theirs).
                if out.iter().any(|o| o.path == dir) {
                    continue;
                }
                if let Some(d) = open_existing(root, &dir)? {
                    self_bind(&d, &dir, Cover::Pinned, &mut out)?;
                }
            }
            // Opened after the pins: a pin is a new mount over the path to it.
            if let Some(h) = open_existing(root, &session)? {
                self_bind(&h, &session, Cover::ReadOnly, &mut out)?;
            }
        }
    }
    Ok(out)
}

fn hide_paths(
    req: &InitRequest,
    root: &OwnedFd,
    warnings: &mut Vec<String>,
) -> Result<Vec<Overmount>, String> {
    let spec = &req.spec;
    let mut hidden = Vec::new();
    let mounts: Vec<&Mount> = spec
        .mounts
        .iter()
        .filter(|m| !spec.hide.iter().any(|h| m.source.starts_with(h)))
        .collect();
    // Concrete paths.
    for h in &spec.hide {
        for m in &mounts {
            if let Ok(rel) = h.strip_prefix(&m.source) {
                let session = m.target.join(rel);
                if let Some(x) = open_existing(root, &session)? {
                    hide_one(&x, &session, &mut hidden)?;
                }
            }
        }
    }
    if spec.hide_patterns.is_empty() {
        return Ok(hidden);
    }
    let mut b = globset::GlobSetBuilder::new();
    for p in &spec.hide_patterns {
        let g = globset::GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("hide pattern {p:?}: {e}"))?;
        b.add(g);
    }
    let set = b.build().map_err(|e| format!("hide patterns: {e}"))?;
    for m in &mounts {
        let Some(top) = open_existing(root, &m.target)? else {
            continue;
        };
        if set.is_match(&m.source) || set.is_match(&m.target) {
            hide_one(&top, &m.target, &mut hidden)?;
            continue;
        }
        if !top.dir {
            continue;
        }
        let mut found = Vec::new();
        let mut entries = 0usize;
        let complete = walk(
            &top.fd,
            &m.source,
            &m.target,
            0,
            &set,
            &mut found,
            &mut entries,
        )?;
        if !complete {
            warnings.push(format!(
                "{}: more than {HIDE_WALK_MAX_ENTRIES} entries or deeper than {HIDE_WALK_MAX_DEPTH} levels; \
                 filesystem.deny patterns were applied only to the part examined",
                m.source.display()
            ));
        }
        for (h, path) in &found {
            hide_one(h, path, &mut hidden)?;
        }
    }
    Ok(hidden)
}

/// Depth-first walk of an `O_PATH` directory descriptor. Returns false when a bound was hit.
fn walk(
    dir: &OwnedFd,
    host: &Path,
    session: &Path,
    depth: usize,
    set: &globset::GlobSet,
    found: &mut Vec<(Hidden, PathBuf)>,
    entries: &mut usize,
) -> Result<bool, String> {
    if depth > HIDE_WALK_MAX_DEPTH {
        return Ok(false);
    }
    let Ok(rd) = fs::read_dir(fdp(dir)) else {
        return Ok(true);
    };
    let mut complete = true;
    for ent in rd {
        let Ok(ent) = ent else { continue };
        *entries += 1;
        if *entries > HIDE_WALK_MAX_ENTRIES {
            return Ok(false);
        }
        let name = ent.file_name();
        let Ok(ft) = ent.file_type() else { continue };
        if ft.is_symlink() {
            continue;
        }
        let h = host.join(&name);
        let s = session.join(&name);
        let c = name_c(&name)?;
        let matched = set.is_match(&h) || set.is_match(&s);
        if !matched && (!ft.is_dir() || HIDE_WALK_SKIP_DIRS.iter().any(|d| OsStr::new(d) == name)) {
            continue;
        }
        let Ok(fd) = sys::openat(dir.as_raw_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0) else {
            continue;
        };
        let Ok(m) = sys::fstat_mode(fd.as_raw_fd()) else {
            continue;
        };
        if m == libc::S_IFLNK {
            continue;
        }
        if matched {
            found.push((
                Hidden {
                    fd,
                    dir: m == libc::S_IFDIR,
                },
                s,
            ));
        } else if m == libc::S_IFDIR {
            complete &= walk(&fd, &h, &s, depth + 1, set, found, entries)?;
            if *entries > HIDE_WALK_MAX_ENTRIES {
                return Ok(false);
            }
        }
    }
    Ok(complete)
}

#[cfg(test)]
mod tests {
    #[test]
    fn git_config_values_are_read_case_insensitively() {
        let cfg = "[core]\n\trepositoryformatversion = 0\n[remote \"origin\"]\n\thooksPath = no\n[Core]\n\tHooksPath = \".husky\" ; set by husky\n";
        assert_eq!(
            super::git_config_value(cfg, "core", "hookspath").as_deref(),
            Some(".husky")
        );
        assert_eq!(
            super::git_config_value("[core]\n", "core", "hookspath"),
            None
        );
    }

    #[test]
    fn glob_matches_absolute_paths() {
        let g = globset::GlobBuilder::new("**/.env")
            .literal_separator(true)
            .build()
            .unwrap()
            .compile_matcher();
        assert!(g.is_match("/tmp/ws/.env"));
        assert!(g.is_match("/tmp/ws/a/b/.env"));
        assert!(!g.is_match("/tmp/ws/.envrc"));
        let g = globset::GlobBuilder::new("**/*.pem")
            .literal_separator(true)
            .build()
            .unwrap()
            .compile_matcher();
        assert!(g.is_match("/x/key.pem"));
    }
}
