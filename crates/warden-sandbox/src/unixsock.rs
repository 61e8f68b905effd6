//! Host Unix sockets: the supervisor side of the seccomp user-notification guard on
//! `connect()`. (Filled in below.)

use std::os::fd::OwnedFd;

pub(crate) fn enabled() -> bool {
    false
}

pub(crate) fn start(listener: OwnedFd, _pid: i32) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || drop(listener))
}
