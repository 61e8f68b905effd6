//! Thin wrappers over system calls that `rustix` does not cover (or covers differently
//! than we need). Each returns `io::Result` and keeps its `unsafe` local.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;
pub(crate) const OPEN_TREE_CLONE: u32 = 0x1;
pub(crate) const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
pub(crate) const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
pub(crate) const AT_RECURSIVE: u32 = 0x8000;
pub(crate) const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub(crate) const RESOLVE_NO_SYMLINKS: u64 = 0x04;
pub(crate) const RESOLVE_BENEATH: u64 = 0x08;
pub(crate) const RESOLVE_IN_ROOT: u64 = 0x10;
pub(crate) const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;

pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn cvt_l(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

pub(crate) fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte"))
}

/// `openat2(dirfd, path, flags, resolve)`; returns an owned descriptor.
pub(crate) fn openat2(
    dirfd: RawFd,
    path: &Path,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: mode as u64,
        resolve,
    };
    // SAFETY: `c` is a valid NUL-terminated string and `how` a valid open_how of the size
    // passed; the kernel only reads them.
    let fd = cvt_l(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })?;
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `openat(dirfd, name, flags)` for a single component.
pub(crate) fn openat(dirfd: RawFd, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the result is checked.
    let fd = cvt(unsafe { libc::openat(dirfd, name.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn mkdirat(dirfd: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    match cvt(unsafe { libc::mkdirat(dirfd, name.as_ptr(), mode) }) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Classic `mount(2)`.
pub(crate) fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src = source.map(cstring).transpose()?;
    let tgt = cstr(target)?;
    let fs = fstype.map(cstring).transpose()?;
    let dat = data.map(cstring).transpose()?;
    // SAFETY: every pointer is either null or a valid NUL-terminated string that outlives
    // the call.
    cvt(unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            tgt.as_ptr(),
            fs.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            dat.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr() as *const libc::c_void),
        )
    })?;
    Ok(())
}

/// Detached recursive copy of the mount tree at `fd` (`open_tree(OPEN_TREE_CLONE)`).
pub(crate) fn open_tree_clone(fd: RawFd) -> io::Result<OwnedFd> {
    let empty = c"";
    // SAFETY: `empty` is a valid string; flags are documented values.
    let r = cvt_l(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd,
            empty.as_ptr(),
            OPEN_TREE_CLONE | libc::AT_EMPTY_PATH as u32 | AT_RECURSIVE | libc::O_CLOEXEC as u32,
        )
    })?;
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH|AT_RECURSIVE, {attr_set})`: only adds flags, so
/// the locked flags of mounts inherited from the host stay as they are.
pub(crate) fn mount_setattr_fd(fd: RawFd, attr_set: u64) -> io::Result<()> {
    mount_setattr_flags(fd, attr_set, AT_RECURSIVE)
}

/// Same as [`mount_setattr_fd`] for the mount at `fd` only (not its children).
pub(crate) fn mount_setattr_one(fd: RawFd, attr_set: u64) -> io::Result<()> {
    mount_setattr_flags(fd, attr_set, 0)
}

fn mount_setattr_flags(fd: RawFd, attr_set: u64, recursive: u32) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: valid pointers of the documented size.
    cvt_l(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as u32 | recursive,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// Attach the detached tree `from` onto the object `to` refers to.
pub(crate) fn move_mount_fd(from: RawFd, to: RawFd) -> io::Result<()> {
    let empty = c"";
    // SAFETY: valid descriptors and empty paths with the EMPTY_PATH flags.
    cvt_l(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from,
            empty.as_ptr(),
            to,
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })?;
    Ok(())
}

pub(crate) fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let a = cstr(new_root)?;
    let b = cstr(put_old)?;
    // SAFETY: valid NUL-terminated paths.
    cvt_l(unsafe { libc::syscall(libc::SYS_pivot_root, a.as_ptr(), b.as_ptr()) })?;
    Ok(())
}

pub(crate) fn umount_detach(target: &Path) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: valid NUL-terminated path.
    cvt(unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) })?;
    Ok(())
}

/// Close every descriptor >= `from`.
pub(crate) fn close_from(from: u32) -> io::Result<()> {
    // SAFETY: close_range only closes descriptors; callers own none of those above `from`.
    cvt_l(unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) })?;
    Ok(())
}

/// Mark every descriptor >= `from` close-on-exec.
pub(crate) fn cloexec_from(from: u32) -> io::Result<()> {
    // SAFETY: only changes descriptor flags.
    cvt_l(unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, CLOSE_RANGE_CLOEXEC) })?;
    Ok(())
}

pub(crate) fn prctl(option: libc::c_int, arg2: libc::c_ulong) -> io::Result<()> {
    // SAFETY: prctl with integer arguments; unused args are zero.
    cvt(unsafe {
        libc::prctl(
            option,
            arg2,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })?;
    Ok(())
}

/// Path of a descriptor through a given procfs mount, for calls that only take paths.
pub(crate) fn fd_path(proc_root: &str, fd: &impl AsRawFd) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("{proc_root}/self/fd/{}", fd.as_raw_fd()))
}

pub(crate) fn isatty(fd: RawFd) -> bool {
    // SAFETY: isatty only queries the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Reset every signal disposition to default and unblock all signals (before exec, so the
/// command does not inherit Rust's ignored SIGPIPE or our blocked set).
pub(crate) fn reset_signals() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is always a valid disposition; errors for invalid numbers are
        // ignored on purpose.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    // SAFETY: an empty, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// `fstat` of a descriptor (works on `O_PATH` descriptors, and does not follow: an
/// `O_PATH|O_NOFOLLOW` descriptor of a symlink reports the symlink).
pub(crate) fn fstat_mode(fd: RawFd) -> io::Result<libc::mode_t> {
    // SAFETY: stat is plain data filled by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a stat buffer.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st.st_mode & libc::S_IFMT)
}
