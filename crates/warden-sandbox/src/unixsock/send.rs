//! Sends performed for the agent: `sendto` with a destination, `sendmsg`, `sendmmsg`.
//!
//! Only an `AF_UNIX` datagram send that names a pathname is a decision (the same one as
//! `connect`, see the parent module); every other send is performed unchanged. But all
//! of them are performed *here*, on the agent's socket object with our copies, because
//! answering "continue" would let another thread swap the address or the descriptor
//! after the check. What this keeps, and what it costs:
//!
//! - **Data** is copied once (`process_vm_readv`), at most [`MAX_COPY`] bytes per call:
//!   a stream send then returns a short count (callers loop, as for any stream send), a
//!   larger datagram fails with `EMSGSIZE` (beyond the default `wmem_max` anyway).
//! - **Blocking**: first tried with `MSG_DONTWAIT` on the supervisor thread; if that would
//!   block and the caller's call blocks (no `MSG_DONTWAIT`, no `O_NONBLOCK`), a thread of
//!   its own finishes it, honouring `SO_SNDTIMEO` (the same socket). A stream send that
//!   went out in part continues from where it stopped. The caller waits killable only
//!   (`SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`), so a handler of a non-fatal signal runs
//!   when the send ends, and nothing is sent twice by a restart.
//! - **Control messages**: `SCM_RIGHTS` are translated (`pidfd_getfd` of each descriptor
//!   the caller names); `SCM_CREDENTIALS` are checked against the caller (the kernel's
//!   rule: its own pid, one of its uids and gids) and then sent with the supervisor's pid,
//!   the only one the kernel lets us claim. The IP, IPv6 and UDP messages that need no
//!   privilege pass as they are; any other is `EPERM`: performed here it would be judged
//!   with the supervisor's privileges over the session's network namespace (it owns the
//!   session's user namespace), not the agent's.
//! - **Signals**: our sends use `MSG_NOSIGNAL`; a stream send failing with `EPIPE` sends
//!   `SIGPIPE` to the calling thread unless it passed `MSG_NOSIGNAL` itself.
//! - `MSG_ZEROCOPY` is dropped (the pages would be ours, freed after the call), so no
//!   completion reaches the caller's error queue.
//! - A receiver with `SO_PASSCRED` sees the supervisor's credentials: pid 0 inside the
//!   session (the supervisor is outside its PID namespace), the same uid and gid.
//! - `sendmmsg` writes each `msg_len` back through `/proc/<tid>/mem`, opened before the
//!   validity check so it is the caller's memory.

use super::{Caller, Dest, Shared, admit, errno, inode_addr, resolve_dest, still_valid};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most bytes copied per call, over all its messages.
const MAX_COPY: usize = 512 << 10;
/// Most control bytes per message (the kernel's default `optmem_max` is 20480).
const MAX_CONTROL: usize = 64 << 10;
/// The kernel's bound on `msg_iovlen` and on a `sendmmsg` batch.
const UIO_MAXIOV: usize = 1024;
/// The kernel's bound on descriptors in one message; also ours per call.
const SCM_MAX_FD: usize = 253;
/// Descriptors held at once by sends waiting on a thread (each keeps the caller's
/// descriptors open in this process until its send ends).
const MAX_HELD_FDS: usize = 512;
/// The kernel's bound on one read or write (`MAX_RW_COUNT`).
const MAX_RW_COUNT: usize = (i32::MAX as usize) & !4095;
const SOCKADDR_MAX: usize = std::mem::size_of::<libc::sockaddr_storage>();
const MSGHDR: usize = std::mem::size_of::<libc::msghdr>();
const MMSGHDR: usize = std::mem::size_of::<libc::mmsghdr>();
const CMSGHDR: usize = std::mem::size_of::<libc::cmsghdr>();
const IOVEC: usize = std::mem::size_of::<libc::iovec>();
const UDP_SEGMENT: i32 = 103;
const SO_DOMAIN: i32 = 39;

/// What the supervisor thread does with a notified send.
pub(super) enum Step {
    /// Answer now.
    Done(Result<i64, i32>),
    /// It must wait: finish it on a thread ([`Job::finish`]).
    Wait(Job),
}

/// Starts a send: copies it, decides its destinations, tries it without waiting.
pub(super) fn begin(s: &Shared, req: &libc::seccomp_notif) -> Step {
    let mut job = match prepare(s, req) {
        Ok(job) => job,
        Err(e) => return Step::Done(Err(e)),
    };
    if job.run(false) {
        return Step::Done(job.conclude());
    }
    if job.nonblocking {
        job.stopped = Some(libc::EAGAIN);
        return Step::Done(job.conclude());
    }
    match job.reserve(&s.held_fds) {
        Ok(()) => Step::Wait(job),
        Err(e) => Step::Done(Err(e)),
    }
}

/// One message, copied, its destination admitted.
struct Msg {
    /// The address we send to (empty: none).
    name: Vec<u8>,
    data: Vec<u8>,
    control: Vec<u8>,
    /// Keeps alive what `name` and `control` refer to by descriptor number.
    _held: Vec<OwnedFd>,
}

pub(super) struct Job {
    caller: Caller,
    sock: OwnedFd,
    stream: bool,
    /// Flags for our `sendmsg` calls (the caller's, plus `MSG_NOSIGNAL`).
    flags: i32,
    caller_nosignal: bool,
    nonblocking: bool,
    msgs: Vec<Msg>,
    /// `sendmmsg`: the caller's array and its memory, to write each `msg_len`.
    multi: Option<(u64, std::fs::File)>,
    /// The message being sent, and how many of its bytes went out already.
    next: usize,
    partial: usize,
    /// Bytes sent of each finished message.
    sent: Vec<usize>,
    /// The error that ended the call early.
    stopped: Option<i32>,
    fds: usize,
    reservation: Option<Arc<AtomicUsize>>,
}

impl Job {
    /// Sends what is left; `wait`: block as the caller's call would. True when the call
    /// is over (all sent, or an error); false when it would block (`!wait` only).
    fn run(&mut self, wait: bool) -> bool {
        while let Some(m) = self.msgs.get(self.next) {
            let data = &m.data[self.partial.min(m.data.len())..];
            // The control messages travel with the first byte only.
            let control: &[u8] = if self.partial == 0 { &m.control } else { &[] };
            let flags = self.flags | if wait { 0 } else { libc::MSG_DONTWAIT };
            match send_raw(self.sock.as_raw_fd(), &m.name, data, control, flags) {
                Ok(n) if self.stream && n < data.len() => {
                    self.partial += n;
                    // Without waiting: a non-blocking caller gets the short count, a
                    // blocking one waits for room on a thread, as its own call would.
                    // Waiting: a blocking send is short only when SO_SNDTIMEO ran out,
                    // and then the call returns what went out.
                    return wait;
                }
                Ok(n) => {
                    self.sent.push(self.partial + n);
                    self.partial = 0;
                    self.next += 1;
                }
                Err(libc::EINTR) => {}
                Err(libc::EAGAIN) if !wait => return false,
                Err(e) => {
                    self.stopped = Some(e);
                    return true;
                }
            }
        }
        true
    }

    /// Finishes a send that had to wait (on its own thread).
    pub(super) fn finish(mut self) -> Result<i64, i32> {
        self.run(true);
        self.conclude()
    }

    /// The call's result, with its side effects on the caller (`msg_len`, `SIGPIPE`).
    fn conclude(&mut self) -> Result<i64, i32> {
        // A stream message that went out in part counts, with its short length.
        if self.partial > 0 {
            self.sent.push(self.partial);
            self.partial = 0;
        }
        let result = match &self.multi {
            Some((base, mem)) => {
                for (i, n) in self.sent.iter().enumerate() {
                    let at = base
                        + (i * MMSGHDR) as u64
                        + std::mem::offset_of!(libc::mmsghdr, msg_len) as u64;
                    // As the kernel's put_user: a failure only loses the length.
                    let _ = mem.write_at(&(*n as u32).to_ne_bytes(), at);
                }
                if self.sent.is_empty() && !self.msgs.is_empty() {
                    Err(self.stopped.unwrap_or(libc::EAGAIN))
                } else {
                    Ok(self.sent.len() as i64)
                }
            }
            None => match self.sent.first() {
                Some(n) => Ok(*n as i64),
                None => Err(self.stopped.unwrap_or(libc::EAGAIN)),
            },
        };
        if result == Err(libc::EPIPE) && self.stream && !self.caller_nosignal {
            // SAFETY: signalling the caller through its pidfd; no memory is passed.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    self.caller.pidfd.as_raw_fd(),
                    libc::SIGPIPE,
                    std::ptr::null::<libc::siginfo_t>(),
                    0u32,
                )
            };
        }
        result
    }

    /// Accounts for the descriptors this job keeps open while it waits.
    fn reserve(&mut self, held: &Arc<AtomicUsize>) -> Result<(), i32> {
        if self.fds == 0 {
            return Ok(());
        }
        if held.fetch_add(self.fds, Ordering::SeqCst) + self.fds > MAX_HELD_FDS {
            held.fetch_sub(self.fds, Ordering::SeqCst);
            return Err(libc::ETOOMANYREFS);
        }
        self.reservation = Some(Arc::clone(held));
        Ok(())
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(held) = &self.reservation {
            held.fetch_sub(self.fds, Ordering::SeqCst);
        }
    }
}

/// The parts of a `msghdr` we use.
struct Header {
    name: u64,
    namelen: usize,
    iov: Vec<libc::iovec>,
    control: u64,
    controllen: usize,
}

fn read_header(caller: &Caller, at: u64, size: usize) -> Result<Header, i32> {
    let raw = caller.read(at, size).map_err(|_| libc::EFAULT)?;
    // SAFETY: `raw` holds at least MSGHDR bytes (an mmsghdr starts with a msghdr); msghdr
    // is plain data, its pointers are addresses in the caller, never dereferenced here.
    let h: libc::msghdr = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
    let namelen = if h.msg_name.is_null() {
        0
    } else if (h.msg_namelen as i32) < 0 {
        // The kernel reads it as an int.
        return Err(libc::EINVAL);
    } else {
        // As the kernel: a longer name is cut to a sockaddr_storage.
        (h.msg_namelen as usize).min(SOCKADDR_MAX)
    };
    let iovlen = h.msg_iovlen as usize;
    if iovlen > UIO_MAXIOV {
        return Err(libc::EMSGSIZE);
    }
    let iov = if iovlen == 0 {
        Vec::new()
    } else {
        let raw = caller
            .read(h.msg_iov as u64, iovlen * IOVEC)
            .map_err(|_| libc::EFAULT)?;
        raw.chunks_exact(IOVEC)
            // SAFETY: each chunk is one iovec of plain data (addresses in the caller).
            .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<libc::iovec>()) })
            .collect()
    };
    let controllen = h.msg_controllen as usize;
    if controllen > MAX_CONTROL {
        return Err(libc::ENOBUFS);
    }
    Ok(Header {
        name: h.msg_name as u64,
        namelen,
        iov,
        control: h.msg_control as u64,
        controllen,
    })
}

/// One message as copied, its destination not yet admitted.
struct Copied {
    name: Vec<u8>,
    dest: Option<Dest>,
    data: Vec<u8>,
    control: Vec<u8>,
}

/// How much of the call's copy and descriptor budget is left.
struct Budget {
    bytes: usize,
    fds: usize,
}

fn copy_msg(
    caller: &Caller,
    h: &Header,
    unix_dgram: bool,
    stream: bool,
    budget: &mut Budget,
    held: &mut Vec<OwnedFd>,
) -> Result<Copied, i32> {
    let name = if h.namelen > 0 {
        caller.read(h.name, h.namelen).map_err(|_| libc::EFAULT)?
    } else {
        Vec::new()
    };
    // Only an AF_UNIX datagram socket sends to the name it is given (a stream socket
    // refuses one, a seqpacket socket ignores it): only there is it a decision.
    let dest = if unix_dgram && !name.is_empty() {
        Some(resolve_dest(caller, &name)?)
    } else {
        None
    };
    let mut remote = Vec::with_capacity(h.iov.len());
    let mut total = 0usize;
    for v in &h.iov {
        if v.iov_len > isize::MAX as usize {
            return Err(libc::EINVAL);
        }
        let len = v.iov_len.min(MAX_RW_COUNT - total);
        total += len;
        remote.push(libc::iovec {
            iov_base: v.iov_base,
            iov_len: len,
        });
    }
    if total > budget.bytes {
        if !stream {
            return Err(libc::EMSGSIZE);
        }
        // A stream send may go out in part: cut the copy to what is left.
        let mut left = budget.bytes;
        for v in &mut remote {
            v.iov_len = v.iov_len.min(left);
            left -= v.iov_len;
        }
        total = budget.bytes;
    }
    let mut data = vec![0u8; total];
    caller
        .read_vectored(&remote, &mut data)
        .map_err(|_| libc::EFAULT)?;
    budget.bytes -= total;
    let control = if h.controllen > 0 && h.control != 0 {
        let raw = caller
            .read(h.control, h.controllen)
            .map_err(|_| libc::EFAULT)?;
        translate_control(caller, raw, budget, held)?
    } else {
        Vec::new()
    };
    Ok(Copied {
        name,
        dest,
        data,
        control,
    })
}

/// Our version of the caller's control messages (see the module doc).
fn translate_control(
    caller: &Caller,
    mut c: Vec<u8>,
    budget: &mut Budget,
    held: &mut Vec<OwnedFd>,
) -> Result<Vec<u8>, i32> {
    let mut off = 0;
    let mut fds_here = 0usize;
    while off + CMSGHDR <= c.len() {
        // SAFETY: CMSGHDR bytes at `off` are in `c`; cmsghdr is plain data.
        let h: libc::cmsghdr = unsafe { std::ptr::read_unaligned(c[off..].as_ptr().cast()) };
        let len = h.cmsg_len as usize;
        if len < CMSGHDR || len > c.len() - off {
            return Err(libc::EINVAL);
        }
        let body = off + CMSGHDR..off + len;
        match (h.cmsg_level, h.cmsg_type) {
            (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                let n = body.len() / 4;
                fds_here += n;
                if fds_here > SCM_MAX_FD {
                    return Err(libc::EINVAL);
                }
                if n > budget.fds {
                    return Err(libc::ETOOMANYREFS);
                }
                budget.fds -= n;
                for at in (body.start..body.start + 4 * n).step_by(4) {
                    let theirs = i32::from_ne_bytes([c[at], c[at + 1], c[at + 2], c[at + 3]]);
                    let ours = caller.take_fd(theirs).map_err(|_| libc::EBADF)?;
                    c[at..at + 4].copy_from_slice(&ours.as_raw_fd().to_ne_bytes());
                    held.push(ours);
                }
            }
            (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) => {
                if body.len() < std::mem::size_of::<libc::ucred>() {
                    return Err(libc::EINVAL);
                }
                // SAFETY: a ucred's worth of bytes at body.start; plain data.
                let cred: libc::ucred =
                    unsafe { std::ptr::read_unaligned(c[body.start..].as_ptr().cast()) };
                check_credentials(caller, &cred)?;
                let ours = libc::ucred {
                    pid: std::process::id() as libc::pid_t,
                    ..cred
                };
                // SAFETY: writing a ucred's worth of bytes at body.start, checked above.
                unsafe { std::ptr::write_unaligned(c[body.start..].as_mut_ptr().cast(), ours) };
            }
            (libc::IPPROTO_IP, libc::IP_TOS | libc::IP_TTL | libc::IP_PKTINFO)
            | (
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO | libc::IPV6_HOPLIMIT | libc::IPV6_TCLASS | libc::IPV6_DONTFRAG,
            )
            | (libc::SOL_UDP, UDP_SEGMENT) => {}
            _ => return Err(libc::EPERM),
        }
        off += (len + 7) & !7;
    }
    Ok(c)
}

/// The kernel's rule for `SCM_CREDENTIALS` of an unprivileged sender (the agent has no
/// capability): its own pid (in its PID namespace), one of its real, effective or saved
/// uids and gids.
fn check_credentials(caller: &Caller, cred: &libc::ucred) -> Result<(), i32> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", caller.tid)).map_err(errno)?;
    let field = |name: &str| -> Vec<i64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    // NStgid lists the pid from the outermost namespace inwards: the last is the
    // caller's own view.
    let pid = field("NStgid:").last().copied();
    let ids = |v: Vec<i64>, want: u32| v.iter().take(3).any(|x| *x == i64::from(want));
    if pid == Some(i64::from(cred.pid))
        && ids(field("Uid:"), cred.uid)
        && ids(field("Gid:"), cred.gid)
    {
        Ok(())
    } else {
        Err(libc::EPERM)
    }
}

fn sockopt_int(sock: RawFd, opt: i32) -> Result<i32, i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int-sized option into an int we own.
    let r = unsafe {
        libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(errno(io::Error::last_os_error()));
    }
    Ok(v)
}

/// Copies the call out of the caller, then (valid notification) admits its destinations.
fn prepare(s: &Shared, req: &libc::seccomp_notif) -> Result<Job, i32> {
    let a = req.data.args;
    let nr = i64::from(req.data.nr);
    let caller = Caller::new(req)?;
    let sock = caller.take_fd(a[0] as i32)?;
    let domain = sockopt_int(sock.as_raw_fd(), SO_DOMAIN)?;
    let stype = sockopt_int(sock.as_raw_fd(), libc::SO_TYPE)?;
    let unix_dgram = domain == libc::AF_UNIX && stype == libc::SOCK_DGRAM;
    let stream = stype == libc::SOCK_STREAM;
    let mut multi = None;
    let (flags, headers) = match nr {
        libc::SYS_sendto => {
            let namelen = a[5] as u32 as i32;
            if namelen < 0 || namelen as usize > SOCKADDR_MAX {
                return Err(libc::EINVAL);
            }
            let len = (a[2] as usize).min(i32::MAX as usize);
            let h = Header {
                name: a[4],
                namelen: if a[4] == 0 { 0 } else { namelen as usize },
                iov: vec![libc::iovec {
                    iov_base: a[1] as *mut libc::c_void,
                    iov_len: len,
                }],
                control: 0,
                controllen: 0,
            };
            (a[3] as u32 as i32, vec![Ok(h)])
        }
        libc::SYS_sendmsg => (a[2] as u32 as i32, vec![read_header(&caller, a[1], MSGHDR)]),
        libc::SYS_sendmmsg => {
            let vlen = (a[2] as u32 as usize).min(UIO_MAXIOV);
            let mem = std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/{}/mem", caller.tid))
                .map_err(errno)?;
            multi = Some((a[1], mem));
            let mut headers = Vec::with_capacity(vlen);
            for i in 0..vlen {
                let h = read_header(&caller, a[1] + (i * MMSGHDR) as u64, MMSGHDR);
                let bad = h.is_err();
                headers.push(h);
                if bad {
                    break;
                }
            }
            (a[3] as u32 as i32, headers)
        }
        _ => return Err(libc::ENOSYS),
    };
    // Copy every message; one that cannot be sent ends the batch there (the kernel sends
    // the ones before it and returns their count), or the call if it is the first.
    let mut budget = Budget {
        bytes: MAX_COPY,
        fds: SCM_MAX_FD,
    };
    let mut copied = Vec::with_capacity(headers.len());
    for h in headers {
        let mut held = Vec::new();
        let m = h.and_then(|h| copy_msg(&caller, &h, unix_dgram, stream, &mut budget, &mut held));
        match m {
            Ok(m) => copied.push((m, held)),
            Err(e) if copied.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    if !still_valid(s, req.id) {
        return Err(libc::EINTR);
    }
    // Decide where each message may go (descriptors only from here on).
    let mut msgs = Vec::with_capacity(copied.len());
    let mut stopped = None;
    for (c, mut held) in copied {
        let name = match c.dest {
            None | Some(Dest::AsGiven) => c.name,
            Some(Dest::Inode(inode)) => {
                let admitted = admit(s, &inode).and_then(|()| inode_addr(&inode));
                held.push(inode);
                match admitted {
                    Ok(addr) => addr,
                    Err(e) => {
                        stopped = Some(e);
                        break;
                    }
                }
            }
        };
        msgs.push(Msg {
            name,
            data: c.data,
            control: c.control,
            _held: held,
        });
    }
    if let (true, Some(e)) = (msgs.is_empty(), stopped) {
        return Err(e);
    }
    // SAFETY: F_GETFL on our own descriptor.
    let fl = unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_GETFL) };
    let fds = msgs.iter().map(|m| m._held.len()).sum();
    Ok(Job {
        caller,
        sock,
        stream,
        flags: (flags | libc::MSG_NOSIGNAL) & !(libc::MSG_ZEROCOPY | libc::MSG_DONTWAIT),
        caller_nosignal: flags & libc::MSG_NOSIGNAL != 0,
        nonblocking: flags & libc::MSG_DONTWAIT != 0 || (fl >= 0 && fl & libc::O_NONBLOCK != 0),
        msgs,
        multi,
        next: 0,
        partial: 0,
        sent: Vec::new(),
        // A batch cut short by a refused destination reports what went before it.
        stopped,
        fds,
        reservation: None,
    })
}

/// One `sendmsg` of our copies on our reference to the caller's socket.
fn send_raw(
    sock: RawFd,
    name: &[u8],
    data: &[u8],
    control: &[u8],
    flags: i32,
) -> Result<usize, i32> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    if !name.is_empty() {
        msg.msg_name = name.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = name.len() as libc::socklen_t;
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !control.is_empty() {
        msg.msg_control = control.as_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.len() as _;
    }
    // SAFETY: every pointer in `msg` refers to a buffer borrowed for this call; the
    // kernel only reads them.
    let n = unsafe { libc::sendmsg(sock, &msg, flags) };
    if n < 0 {
        return Err(errno(io::Error::last_os_error()));
    }
    Ok(n as usize)
}
