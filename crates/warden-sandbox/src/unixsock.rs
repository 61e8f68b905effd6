//! Host Unix sockets are unreachable from a session, while sockets the session creates for
//! itself keep working.
//!
//! Abstract sockets are per network namespace, so the session's new netns already cuts the
//! host's (and Landlock ABI >= 6 scopes them too). Pathname sockets are looked up by inode,
//! across namespaces: a host daemon listening on a socket file inside the shared workspace
//! would be reachable, by `connect()` and — for datagram sockets — by a send that names
//! it. So every call that can name a socket (`connect`, `sendmsg`, `sendmmsg`, and `sendto`
//! with a destination; see `seccomp::unix_guard_program`) is handed to this supervisor
//! (seccomp `SECCOMP_RET_USER_NOTIF`), which performs it *itself*, race-free:
//!
//! 1. copy what the call reads out of the caller's memory once (`process_vm_readv`): the
//!    address, and for sends the `msghdr`, the data and the control messages;
//! 2. take the caller's socket object with `pidfd_getfd` (a socket keeps the network
//!    namespace it was created in, so using it from here is the same as from inside);
//! 3. for an `AF_UNIX` pathname, resolve the path under the caller's root
//!    (`openat2(/proc/<tid>/root, RESOLVE_IN_ROOT)`) to an `O_PATH` descriptor, and allow
//!    it only if that inode is bound by a socket *of the session's network namespace*
//!    (`sock_diag` `UNIX_DIAG_VFS`, queried through a netlink socket the init opened inside
//!    that namespace); then connect or send to `/proc/self/fd/<that descriptor>`, the very
//!    inode checked (an inode, once bound, never changes its socket);
//! 4. check the notification is still valid (so every pid-based step above was about the
//!    caller), then do the call on the socket object with our copies and answer with its
//!    result.
//!
//! Nothing is ever answered with `SECCOMP_USER_NOTIF_FLAG_CONTINUE`: a continued call would
//! re-read memory and the descriptor table that another thread of the agent can change
//! after the check. Sends are therefore performed here even when they name nothing (a
//! `sendmsg` on a TCP socket): see `send.rs` for how their semantics are kept.

mod send;

use crate::sys;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Whether sessions install the guard. Always on: it is part of the boundary.
pub(crate) fn enabled() -> bool {
    true
}

/// Calls that must wait (a blocking connect, a send into a full buffer) run on their own
/// thread, at most this many at once; past it the caller gets `EAGAIN`.
const MAX_WAITING: usize = 128;

struct Shared {
    listener: OwnedFd,
    diag: Mutex<OwnedFd>,
    waiting: AtomicUsize,
    /// Descriptors kept open by sends waiting on a thread.
    held_fds: Arc<AtomicUsize>,
}

/// `SECCOMP_IOCTL_NOTIF_SET_FLAGS` (`SECCOMP_IOW(4, __u64)`) and its one flag (Linux
/// 6.6): the kernel switches from the calling thread straight to the supervisor and back
/// on the same CPU instead of waking each through the scheduler.
const SECCOMP_IOCTL_NOTIF_SET_FLAGS: libc::c_ulong = 0x4008_2104;
const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;

/// Starts the supervisor thread; it ends when the session's last process exits.
pub(crate) fn start(listener: OwnedFd, diag: OwnedFd) -> std::thread::JoinHandle<()> {
    // Only a latency gain: older kernels answer EINVAL and work as before.
    // SAFETY: SET_FLAGS takes the flags by value.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            SECCOMP_IOCTL_NOTIF_SET_FLAGS as _,
            SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
        )
    };
    let shared = Arc::new(Shared {
        listener,
        diag: Mutex::new(diag),
        waiting: AtomicUsize::new(0),
        held_fds: Arc::new(AtomicUsize::new(0)),
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
        match i64::from(req.data.nr) {
            // A connect may block (a full backlog, a TCP handshake): always on a thread.
            libc::SYS_connect => {
                wait_on_thread(&shared, req, |s, req| handle_connect(s, req).map(|()| 0))
            }
            // Sends are tried here without waiting; only one that must wait moves on.
            libc::SYS_sendto | libc::SYS_sendmsg | libc::SYS_sendmmsg => {
                match send::begin(&shared, &req) {
                    send::Step::Done(r) => respond(&shared, req.id, r),
                    send::Step::Wait(job) => wait_on_thread(&shared, req, move |_, _| job.finish()),
                }
            }
            _ => respond(&shared, req.id, Err(libc::ENOSYS)),
        }
    }
}

/// Runs `f` for `req` on a thread of its own and answers with its result.
fn wait_on_thread<F>(shared: &Arc<Shared>, req: libc::seccomp_notif, f: F)
where
    F: FnOnce(&Shared, &libc::seccomp_notif) -> Result<i64, i32> + Send + 'static,
{
    if shared.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING {
        shared.waiting.fetch_sub(1, Ordering::SeqCst);
        respond(shared, req.id, Err(libc::EAGAIN));
        return;
    }
    let s = Arc::clone(shared);
    let spawned = std::thread::Builder::new().spawn(move || {
        let result = f(&s, &req);
        respond(&s, req.id, result);
        s.waiting.fetch_sub(1, Ordering::SeqCst);
    });
    if spawned.is_err() {
        shared.waiting.fetch_sub(1, Ordering::SeqCst);
        respond(shared, req.id, Err(libc::EAGAIN));
    }
}

/// Answers a notification: `Ok(v)` is the call's return value, `Err(e)` fails it with `e`.
fn respond(s: &Shared, id: u64, result: Result<i64, i32>) {
    let (val, error) = match result {
        Ok(v) => (v, 0),
        Err(e) => (0, -e),
    };
    let resp = libc::seccomp_notif_resp {
        id,
        val,
        error,
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

/// Whether the caller still waits on notification `id`. While it does, its thread id
/// cannot have been reused: every step keyed on the tid before a `true` here was about
/// the caller. After it, only descriptors (pidfd, socket, `O_PATH`, `/proc/<tid>/mem`)
/// may be used.
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

/// The thread that made a notified call.
struct Caller {
    tid: i32,
    pidfd: OwnedFd,
}

impl Caller {
    fn new(req: &libc::seccomp_notif) -> Result<Caller, i32> {
        let tid = req.pid as i32;
        Ok(Caller {
            tid,
            pidfd: thread_pidfd(tid).map_err(errno)?,
        })
    }

    /// Our own reference to the caller's descriptor `fd` (`EBADF` if it has none).
    fn take_fd(&self, fd: i32) -> Result<OwnedFd, i32> {
        // SAFETY: pidfd_getfd duplicates the target's descriptor into ours.
        let r = sys::cvt_l(unsafe {
            libc::syscall(libc::SYS_pidfd_getfd, self.pidfd.as_raw_fd(), fd, 0u32)
        })
        .map_err(errno)?;
        // SAFETY: a fresh descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
    }

    /// Copies the caller's memory described by `remote` into `into` (exactly its length).
    fn read_vectored(&self, remote: &[libc::iovec], into: &mut [u8]) -> Result<(), i32> {
        if into.is_empty() {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: into.as_mut_ptr().cast(),
            iov_len: into.len(),
        };
        // SAFETY: `local` covers `into`, which we own; the kernel validates `remote`
        // against the caller's address space, not ours.
        let n = unsafe {
            libc::process_vm_readv(
                self.tid,
                &local,
                1,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        if n < 0 {
            return Err(errno(io::Error::last_os_error()));
        }
        if n as usize != into.len() {
            return Err(libc::EFAULT);
        }
        Ok(())
    }

    fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, i32> {
        let mut buf = vec![0u8; len];
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        };
        self.read_vectored(&[remote], &mut buf)?;
        Ok(buf)
    }
}

/// Where a call that names `addr` goes.
enum Dest {
    /// Our copy of the address as given: an abstract or unnamed `AF_UNIX` address (looked
    /// up in the socket's own network namespace, the session's) or another family.
    AsGiven,
    /// An `AF_UNIX` pathname, resolved in the caller's root: the inode, still to be
    /// admitted by [`admit`].
    Inode(OwnedFd),
}

/// Resolves a pathname `AF_UNIX` address the way the caller would (keyed on its tid:
/// before [`still_valid`]).
fn resolve_dest(caller: &Caller, addr: &[u8]) -> Result<Dest, i32> {
    let family = match addr {
        [a, b, ..] => i32::from(u16::from_ne_bytes([*a, *b])),
        _ => return Ok(Dest::AsGiven),
    };
    if family != libc::AF_UNIX || addr.len() < 3 || addr[2] == 0 {
        return Ok(Dest::AsGiven);
    }
    // The kernel ends the path at the first NUL or at the address length.
    let path = &addr[2..];
    let path = &path[..path.iter().position(|b| *b == 0).unwrap_or(path.len())];
    let path = Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path));
    resolve_in_session(caller.tid, path)
        .map(Dest::Inode)
        .map_err(errno)
}

/// The decision: a resolved pathname must be a socket bound inside the session.
/// Refused is `ECONNREFUSED`, what the kernel answers when nothing listens there.
fn admit(s: &Shared, inode: &OwnedFd) -> Result<(), i32> {
    // SAFETY: stat buffer is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and buffer.
    sys::cvt(unsafe { libc::fstat(inode.as_raw_fd(), &mut st) }).map_err(errno)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(libc::ECONNREFUSED);
    }
    let diag = s.diag.lock().map_err(|_| libc::EIO)?;
    let bound = bound_in_session(
        diag.as_raw_fd(),
        libc::major(st.st_dev),
        libc::minor(st.st_dev),
        st.st_ino,
    )
    .map_err(errno)?;
    if bound {
        Ok(())
    } else {
        // A socket of the host (or of nobody): as if nothing listened there.
        Err(libc::ECONNREFUSED)
    }
}

/// The address that reaches exactly the admitted inode.
fn inode_addr(inode: &OwnedFd) -> Result<Vec<u8>, i32> {
    let path = format!("/proc/self/fd/{}", inode.as_raw_fd());
    // SAFETY: sockaddr_un is plain data (only its size is used here).
    let max = unsafe { std::mem::zeroed::<libc::sockaddr_un>() }
        .sun_path
        .len();
    if path.len() >= max {
        return Err(libc::ENAMETOOLONG);
    }
    let mut a = (libc::AF_UNIX as libc::sa_family_t).to_ne_bytes().to_vec();
    a.extend_from_slice(path.as_bytes());
    a.push(0);
    Ok(a)
}

fn handle_connect(s: &Shared, req: &libc::seccomp_notif) -> Result<(), i32> {
    let fd = req.data.args[0] as i32;
    let len = (req.data.args[2] as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    if len < 2 {
        return Err(libc::EINVAL);
    }
    let caller = Caller::new(req)?;
    // 1. Our copy of the address.
    let addr = caller
        .read(req.data.args[1], len)
        .map_err(|_| libc::EFAULT)?;
    // 2. The socket object itself.
    let sock = caller.take_fd(fd)?;
    // 3. Where it goes.
    let dest = resolve_dest(&caller, &addr)?;
    if !still_valid(s, req.id) {
        return Err(libc::EINTR);
    }
    let addr = match &dest {
        Dest::AsGiven => addr,
        Dest::Inode(inode) => {
            admit(s, inode)?;
            inode_addr(inode)?
        }
    };
    // 4. Connect our copy on the session's own socket.
    // SAFETY: `addr` holds a sockaddr of `addr.len()` bytes.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            addr.as_ptr().cast(),
            addr.len() as libc::socklen_t,
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
