//! The channel between `warden run` and the session init: one `AF_UNIX` stream socketpair
//! (fd 3 in the init), length-prefixed JSON frames, and `SCM_RIGHTS` for descriptors the
//! session hands back (the seccomp listener today; sockets of the session's network
//! namespace for the egress work next).
//!
//! The agent holds the init's end until `execve`, where close-on-exec closes it: the
//! parent reading end-of-file right after [`Report::Ready`] is how it learns the command
//! started; end-of-file without `Ready` means setup failed.

use crate::SandboxSpec;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Largest frame accepted (a spec with a large environment fits comfortably).
const MAX_FRAME: usize = 16 << 20;

/// Parent → init: what to build.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InitRequest {
    pub spec: SandboxSpec,
    /// The caller's uid/gid (mapped to the same ids in the session).
    pub uid: u32,
    pub gid: u32,
    /// The parent allocated a pty; fds 0-2 of the init are its slave.
    pub use_pty: bool,
    /// Whether the agent hands a seccomp user-notification listener back (host Unix socket
    /// guard).
    pub unix_guard: bool,
    /// The session's trust bundle follows as one [`write_bytes`] frame, read by the init
    /// right before it builds the root (the spec's `trust_bundle` is `None` then).
    #[serde(default)]
    pub trust_bundle_follows: bool,
}

/// What a descriptor passed back to the parent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FdKind {
    /// The seccomp user-notification listener of the agent's `connect()` guard.
    ConnectGuard,
    /// A `NETLINK_SOCK_DIAG` socket opened inside the session's network namespace.
    UnixDiag,
    /// The session's TUN device ([`crate::Network::Egress`]).
    Tun,
    /// The listening socket at [`crate::PROXY_ADDR`].
    ProxyListener,
    /// The UDP socket at [`crate::DNS_ADDR`].
    Dns,
    /// The listening socket at [`crate::MCP_ADDR`].
    McpListener,
}

/// Parent → agent, after [`Report::Prepared`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Control {
    /// Execute the command.
    Go,
}

/// Init/agent → parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Report {
    /// Something the caller should surface (e.g. the pattern walk hit its bound).
    Warning(String),
    /// A descriptor follows as one byte with `SCM_RIGHTS` (see [`send_fd`]).
    Fd(FdKind),
    /// All layers are in place; the agent waits for [`Control::Go`].
    Prepared,
    /// Go received; the next thing is `execve`.
    Ready,
    /// Setup failed; the command did not run.
    SetupFailed(String),
    /// The command could not be executed (126) or found (127).
    ExecFailed { code: i32, message: String },
}

pub(crate) fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(io::Error::other)?;
    let mut buf = Vec::with_capacity(body.len() + 4);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)
}

/// Writes `bytes` as one frame, as they are (no JSON: for the large trust bundle).
pub(crate) fn write_bytes(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(io::Error::other)?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(bytes)
}

/// Reads one frame written by [`write_bytes`].
pub(crate) fn read_bytes(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    read_body(r, len)
}

/// The body of a frame whose length prefix is `len`.
fn read_body(r: &mut impl Read, len: [u8; 4]) -> io::Result<Vec<u8>> {
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Reads one frame; `Ok(None)` on a clean end-of-file before any byte of a frame.
pub(crate) fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated frame",
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let body = read_body(r, len)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Sends `fd` with one marker byte over a unix socket (`SCM_RIGHTS`).
pub(crate) fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    let mut byte = [b'F'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: msghdr is plain data; zeroed is a valid initial value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg_control points to `space` bytes, enough for one cmsg with one fd, so
    // CMSG_FIRSTHDR is non-null and CMSG_DATA is in bounds.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::Error::other("no room for SCM_RIGHTS"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    loop {
        // SAFETY: msg is fully initialised and its buffers outlive the call.
        let r = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one descriptor sent with [`send_fd`].
pub(crate) fn recv_fd(sock: RawFd) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    let n = loop {
        // SAFETY: buffers are valid for the lengths given.
        let r = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r >= 0 {
            break r;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "no descriptor",
        ));
    }
    // SAFETY: the kernel filled msg_control; CMSG_FIRSTHDR checks the length.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "expected SCM_RIGHTS",
            ));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Convenience: a `UnixStream` view that does not take ownership.
pub(crate) fn stream_of(fd: &OwnedFd) -> io::Result<std::os::unix::net::UnixStream> {
    Ok(std::os::unix::net::UnixStream::from(fd.try_clone()?))
}
