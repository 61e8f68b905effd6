//! The session's network: a new network namespace with only `lo` up, so loopback inside
//! the session works and nothing leaves it.
//!
//! Seam for the egress work: [`NetworkSetup`] runs in the init while it still holds
//! `CAP_NET_ADMIN` over the session's network namespace and before the root is pivoted.
//! The next step adds sockets created *inside* the namespace (a listener for the proxy's
//! session side, a DNS socket) and passes them to the parent over the control channel with
//! `SCM_RIGHTS` (see `proto::send_fd`), where the egress proxy serves them.

use std::io;

/// What the init does to the session's network namespace.
#[derive(Debug, Default)]
pub(crate) struct NetworkSetup;

impl NetworkSetup {
    /// Runs in the init, inside the new network namespace.
    pub(crate) fn run(&self, _channel: std::os::fd::RawFd) -> io::Result<()> {
        loopback_up()
    }
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket creation; the result is checked and closed below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; zeroed is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo\0".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    let r = unsafe {
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            -1
        } else {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr)
        }
    };
    let err = io::Error::last_os_error();
    // SAFETY: closing the socket we created.
    unsafe { libc::close(s) };
    if r < 0 { Err(err) } else { Ok(()) }
}
