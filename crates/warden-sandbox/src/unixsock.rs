//! Host Unix sockets are unreachable from a session, while sockets the session creates for
//! itself keep working.
//!
//! Abstract sockets are per network namespace, so the session's new netns already cuts the
//! host's (and Landlock ABI >= 6 scopes them too). Pathname sockets are looked up by inode,
//! across namespaces: a host daemon listening on a socket file inside the shared workspace
//! would be reachable. So every `connect()` of the agent is handed to this supervisor
//! (seccomp `SECCOMP_RET_USER_NOTIF`), which performs it *itself*, race-free:
//!
//! 1. copy the `sockaddr` out of the target's memory once (`/proc/<pid>/mem`);
//! 2. take the target's socket object with `pidfd_getfd` (a socket keeps the network
//!    namespace it was created in, so connecting it from here is the same as from inside);
//! 3. for an `AF_UNIX` pathname, resolve the path under the target's root
//!    (`openat2(/proc/<pid>/root, RESOLVE_IN_ROOT)`) to an `O_PATH` descriptor, and allow it
//!    only if that inode is bound by a socket *of the session's network namespace*
//!    (`sock_diag` `UNIX_DIAG_VFS`, queried through a netlink socket the init opened inside
//!    that namespace); then connect to `/proc/self/fd/<that descriptor>`, the very inode
//!    checked;
//! 4. answer the notification with the result.
//!
//! Nothing is ever answered with `SECCOMP_USER_NOTIF_FLAG_CONTINUE`: a continued call would
//! re-read memory and the descriptor table that another thread of the agent can change
//! after the check.
//!
//! Known gap (documented in docs/decisions/0002-sandbox.md): `sendto`/`sendmsg` with an
//! explicit destination on an unconnected `AF_UNIX` datagram socket are not mediated.

use crate::sys;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Whether sessions install the guard. Always on: it is part of the boundary.
pub(crate) fn enabled() -> bool {
    true
}

struct Shared {
    listener: OwnedFd,
    diag: Mutex<OwnedFd>,
}

/// Starts the supervisor thread; it ends when the session's last process exits.
pub(crate) fn start(listener: OwnedFd, diag: OwnedFd) -> std::thread::JoinHandle<()> {
    let shared = Arc::new(Shared {
        listener,
        diag: Mutex::new(diag),
    });
    std::thread::spawn(move || serve(shared))
}

fn serve(shared: Arc<Shared>) {
    loop {
        let mut pfd = libc::pollfd {
            fd: shared.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if pfd.revents & libc::POLLIN == 0
            && pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
        {
            return;
        }
        // SAFETY: seccomp_notif is plain data and must be zeroed before RECV.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: RECV fills the struct we own.
        let r = unsafe {
            libc::ioctl(
                shared.listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV as _,
                &mut req,
            )
        };
        if r != 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) | Some(libc::ENOENT) => continue,
                _ => return,
            }
        }
        let s = Arc::clone(&shared);
        // A blocking connect must not stall the other threads of the session.
        let spawned = std::thread::Builder::new().spawn(move || {
            let result = handle(&s, &req);
            respond(&s, req.id, result);
        });
        if spawned.is_err() {
            respond(&shared, req.id, Err(libc::EAGAIN));
        }
    }
}

fn respond(s: &Shared, id: u64, result: Result<(), i32>) {
    let resp = libc::seccomp_notif_resp {
        id,
        val: 0,
        error: match result {
            Ok(()) => 0,
            Err(e) => -e,
        },
        flags: 0,
    };
    // SAFETY: SEND reads the response we own; ENOENT (target gone or interrupted) is fine.
    unsafe {
        libc::ioctl(
            s.listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND as _,
            &resp,
        )
    };
}

fn still_valid(s: &Shared, id: u64) -> bool {
    // SAFETY: ID_VALID reads the id.
    unsafe {
        libc::ioctl(
            s.listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _,
            &id,
        ) == 0
    }
}

fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// `PIDFD_THREAD` (Linux 6.9): a pidfd for a thread that is not its group's leader.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// A pidfd for the calling thread `tid` of a notification (it is a thread id: calls from
/// any thread of a multi-threaded agent arrive here). Before Linux 6.9, `pidfd_open`
/// only takes thread-group leaders: then open the leader, whose descriptor table the
/// threads share.
fn thread_pidfd(tid: i32) -> io::Result<OwnedFd> {
    let open = |pid: i32, flags: u32| {
        // SAFETY: pidfd_open returns a new descriptor or an error.
        sys::cvt_l(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) })
            // SAFETY: a fresh descriptor we own.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    };
    match open(tid, PIDFD_THREAD) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let status = std::fs::read_to_string(format!("/proc/{tid}/status"))?;
            let tgid = status
                .lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
            open(tgid, 0)
        }
        r => r,
    }
}

fn handle(s: &Shared, req: &libc::seccomp_notif) -> Result<(), i32> {
    let pid = req.pid as i32;
    let fd = req.data.args[0] as i32;
    let addr = req.data.args[1];
    let len = (req.data.args[2] as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    if len < 2 {
        return Err(libc::EINVAL);
    }
    // 1. Our copy of the address.
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).map_err(errno)?;
    let mut buf = vec![0u8; len];
    mem.read_exact_at(&mut buf, addr)
        .map_err(|_| libc::EFAULT)?;
    // 2. The socket object itself.
    let pidfd = thread_pidfd(pid).map_err(errno)?;
    // SAFETY: pidfd_getfd duplicates the target's descriptor into ours.
    let sock =
        sys::cvt_l(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0u32) })
            .map_err(errno)?;
    // SAFETY: fresh descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(sock as RawFd) };
    if !still_valid(s, req.id) {
        return Err(libc::EINTR);
    }
    let family = u16::from_ne_bytes([buf[0], buf[1]]) as i32;
    if family == libc::AF_UNIX && len > 2 && buf[2] != 0 {
        let end = buf[2..].iter().position(|b| *b == 0).map_or(len, |p| p + 2);
        let path = Path::new(std::ffi::OsStr::from_bytes_compat(&buf[2..end]));
        let target = resolve_in_session(pid, path).map_err(errno)?;
        if !still_valid(s, req.id) {
            return Err(libc::EINTR);
        }
        // SAFETY: stat buffer is plain data; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor and buffer.
        sys::cvt(unsafe { libc::fstat(target.as_raw_fd(), &mut st) }).map_err(errno)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(libc::ECONNREFUSED);
        }
        let bound = {
            let diag = s.diag.lock().map_err(|_| libc::EIO)?;
            bound_in_session(
                diag.as_raw_fd(),
                libc::major(st.st_dev),
                libc::minor(st.st_dev),
                st.st_ino,
            )
            .map_err(errno)?
        };
        if !bound {
            // A socket of the host (or of nobody): as if nothing listened there.
            return Err(libc::ECONNREFUSED);
        }
        let via = format!("/proc/self/fd/{}", target.as_raw_fd());
        return connect_unix(sock.as_raw_fd(), via.as_bytes());
    }
    // Every other address: connect our copy on the session's own socket.
    // SAFETY: buf holds `len` bytes of a sockaddr.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            len as libc::socklen_t,
        )
    };
    if r != 0 {
        Err(errno(io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr;
}

impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}

fn connect_unix(sock: RawFd, path: &[u8]) -> Result<(), i32> {
    // SAFETY: sockaddr_un is plain data.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.len() >= sa.sun_path.len() {
        return Err(libc::ENAMETOOLONG);
    }
    for (i, b) in path.iter().enumerate() {
        sa.sun_path[i] = *b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + path.len() + 1;
    // SAFETY: `sa` is a valid sockaddr_un of at least `len` bytes.
    let r = unsafe {
        libc::connect(
            sock,
            (&sa as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if r != 0 {
        Err(errno(io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// Resolves `path` as the target process would, but never outside its root.
fn resolve_in_session(pid: i32, path: &Path) -> io::Result<OwnedFd> {
    let base = if path.is_absolute() { "root" } else { "cwd" };
    let dir = sys::openat2(
        libc::AT_FDCWD,
        Path::new(&format!("/proc/{pid}/{base}")),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        0,
    )?;
    let rel = path.strip_prefix("/").unwrap_or(path);
    sys::openat2(
        dir.as_raw_fd(),
        rel,
        libc::O_PATH,
        0,
        sys::RESOLVE_IN_ROOT | sys::RESOLVE_NO_MAGICLINKS,
    )
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const UDIAG_SHOW_VFS: u32 = 0x2;
const UNIX_DIAG_VFS: u16 = 1;

/// Is a unix socket of the diag socket's network namespace bound to inode (dev, ino)?
fn bound_in_session(diag: RawFd, major: u32, minor: u32, ino: u64) -> io::Result<bool> {
    // nlmsghdr (16) + unix_diag_req (24)
    let mut req = [0u8; 40];
    req[0..4].copy_from_slice(&40u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_UNIX as u8; // sdiag_family
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // udiag_states: all
    req[28..32].copy_from_slice(&UDIAG_SHOW_VFS.to_ne_bytes());
    // SAFETY: sending a buffer we own on a netlink socket (kernel is the default peer).
    if unsafe { libc::send(diag, req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 32768];
    let mut found = false;
    loop {
        // SAFETY: receiving into a buffer we own.
        let n = unsafe { libc::recv(diag, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        let mut off = 0;
        while off + 16 <= n {
            let mlen =
                u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
            let mtype = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            if mlen < 16 || off + mlen > n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bad netlink message",
                ));
            }
            if mtype == NLMSG_DONE {
                return Ok(found);
            }
            if mtype == NLMSG_ERROR {
                return Err(io::Error::other("sock_diag returned an error"));
            }
            // unix_diag_msg (16 bytes) then attributes.
            let mut a = off + 16 + 16;
            while a + 4 <= off + mlen {
                let alen = u16::from_ne_bytes([buf[a], buf[a + 1]]) as usize;
                let atype = u16::from_ne_bytes([buf[a + 2], buf[a + 3]]);
                if alen < 4 || a + alen > off + mlen {
                    break;
                }
                if atype == UNIX_DIAG_VFS && alen >= 12 {
                    let vino = u32::from_ne_bytes([buf[a + 4], buf[a + 5], buf[a + 6], buf[a + 7]]);
                    let vdev =
                        u32::from_ne_bytes([buf[a + 8], buf[a + 9], buf[a + 10], buf[a + 11]]);
                    // The kernel's dev_t: major in the top 12 bits, minor in the low 20.
                    if vino == ino as u32 && vdev >> 20 == major && vdev & 0xfffff == minor {
                        found = true;
                    }
                }
                a += (alen + 3) & !3;
            }
            off += (mlen + 3) & !3;
        }
    }
}
