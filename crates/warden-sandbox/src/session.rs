//! The parent side: start a session, relay its terminal, forward signals, collect its exit.
//!
//! [`spawn`] may be called from a multi-threaded process: between `clone` and `execve` the
//! child only calls async-signal-safe functions (`dup2`, `prctl`, `sigprocmask`, `execve`)
//! on data prepared before the `clone`. The clone happens on a thread of its own that
//! lives as long as the session (see [`launch`]).

use crate::cgroup::CgroupSet;
use crate::error::SandboxError;
use crate::proto::{self, InitRequest, Report};
use crate::sys;
use crate::{INIT_MARKER, SandboxSpec, TtyMode};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// How a session ended, per SPEC §3: the command's status, 126/127 when it could not be
/// executed or found, 128+N when it was killed by signal N.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionExit {
    /// The exit code `warden run` should exit with.
    pub code: i32,
    /// For 126/127: why the command could not run.
    pub message: Option<String>,
}

/// A running session.
#[derive(Debug)]
pub struct Session {
    /// Host pid of the session's init (PID 1 inside).
    pub pid: i32,
    pidfd: OwnedFd,
    cgroups: Option<CgroupSet>,
    pty: Option<Pty>,
    signals: Option<SignalGuard>,
    exec_error: Option<(i32, String)>,
    warnings: Vec<String>,
    guard: Option<std::thread::JoinHandle<()>>,
    reaped: Option<i32>,
    /// Keeps the launcher thread, the init's parent, until this is gone (see [`launch`]).
    parent: Option<std::sync::mpsc::Sender<()>>,
}

#[derive(Debug)]
struct Pty {
    master: OwnedFd,
    /// The host terminal's settings before raw mode, restored on drop.
    saved: Option<libc::termios>,
}

impl Drop for Pty {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            // SAFETY: restoring settings read from the same descriptor earlier.
            unsafe { libc::tcsetattr(0, libc::TCSADRAIN, t) };
        }
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const NS_FLAGS: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS;

/// Stack of the child between `clone` and its `execve` of the init.
const CHILD_STACK: usize = 64 * 1024;

/// What the child of [`prepare`] needs before its `execve`, prepared before the clone.
struct ChildArgs {
    exe: *const libc::c_char,
    argv: [*const libc::c_char; 3],
    envp: [*const libc::c_char; 1],
    channel: RawFd,
    slave: RawFd,
    last_cap: libc::c_ulong,
    cap_hdr: CapHeader,
    cap_all: [CapData; 2],
    empty: libc::sigset_t,
}

/// The child of [`prepare`]'s clone, sharing the parent's memory (`CLONE_VM`) until it
/// executes the init: async-signal-safe calls on `ChildArgs` only, then execve or _exit.
extern "C" fn spawn_init(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` the suspended parent keeps alive until we execute.
    let a = unsafe { &*(arg as *const ChildArgs) };
    // SAFETY: async-signal-safe calls only, on data prepared before the clone.
    unsafe {
        if a.slave >= 0 {
            libc::dup2(a.slave, 0);
            libc::dup2(a.slave, 1);
            libc::dup2(a.slave, 2);
        }
        if a.channel == 3 {
            libc::fcntl(3, libc::F_SETFD, 0);
        } else {
            libc::dup2(a.channel, 3);
        }
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
        libc::syscall(
            libc::SYS_capset,
            &a.cap_hdr as *const CapHeader,
            a.cap_all.as_ptr(),
        );
        let mut cap: libc::c_ulong = 0;
        while cap <= a.last_cap {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            );
            cap += 1;
        }
        libc::sigprocmask(libc::SIG_SETMASK, &a.empty, std::ptr::null_mut());
        libc::execve(a.exe, a.argv.as_ptr(), a.envp.as_ptr());
        libc::_exit(125)
    }
}

fn validate(spec: &SandboxSpec) -> Result<(), SandboxError> {
    if spec.command.is_empty() {
        return Err(SandboxError::InvalidSpec("no command given".into()));
    }
    if spec.session_id.is_empty()
        || !spec
            .session_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(SandboxError::InvalidSpec(format!(
            "session id {:?} must be letters, digits, '-' or '_'",
            spec.session_id
        )));
    }
    for p in std::iter::once(&spec.cwd)
        .chain(std::iter::once(&spec.home))
        .chain(spec.mounts.iter().flat_map(|m| [&m.source, &m.target]))
        .chain(spec.hide.iter())
    {
        if !p.is_absolute() {
            return Err(SandboxError::InvalidSpec(format!(
                "{} must be an absolute path",
                p.display()
            )));
        }
    }
    if spec.home.parent().is_none() {
        return Err(SandboxError::InvalidSpec(
            "the session's home cannot be `/`".into(),
        ));
    }
    if spec.mcp_door && spec.network != crate::Network::Egress {
        return Err(SandboxError::InvalidSpec(
            "an MCP door needs the egress network (Network::Egress)".into(),
        ));
    }
    if spec.hostname.is_empty() || spec.hostname.len() > 64 {
        return Err(SandboxError::InvalidSpec(
            "hostname must be 1 to 64 bytes".into(),
        ));
    }
    Ok(())
}

fn userns_error(e: io::Error) -> SandboxError {
    let unpriv = !rustix::process::geteuid().is_root();
    let mut fix = String::from(
        "User namespaces are required. Check `sysctl user.max_user_namespaces` (must be > 0)",
    );
    if unpriv {
        fix.push_str(
            ", and for unprivileged users `sysctl kernel.unprivileged_userns_clone=1` (Debian/older kernels) and \
             `sysctl kernel.apparmor_restrict_unprivileged_userns=0` (Ubuntu 23.10+), or an AppArmor profile allowing `userns` for warden",
        );
    }
    fix.push_str(". Inside a container, run it with user namespaces allowed (e.g. a seccomp profile permitting clone with CLONE_NEWUSER).");
    SandboxError::Unsupported {
        what: format!("cannot create the session's namespaces ({e})"),
        fix,
    }
}

/// Starts a session. Returns once the command has been executed (or failed to be, which
/// [`Session::wait`] then reports as 126/127). Any failure before that is an error and the
/// command did not run. Same as [`prepare`] followed by [`Prepared::start`].
pub fn spawn(spec: &SandboxSpec) -> Result<Session, SandboxError> {
    prepare(spec)?.start()
}

/// A session whose boundary is fully set up, stopped right before `execve` of the command.
/// The caller records what it must (the session start, durably) and then calls
/// [`Prepared::start`]; dropping it instead kills the session without running anything.
#[derive(Debug)]
pub struct Prepared {
    session: Session,
    stream: std::os::unix::net::UnixStream,
    unix_guard: bool,
    fds: Received,
}

/// Descriptors the init handed back during setup.
#[derive(Debug, Default)]
struct Received {
    listener: Option<OwnedFd>,
    diag: Option<OwnedFd>,
    tun: Option<OwnedFd>,
    proxy: Option<OwnedFd>,
    dns: Option<OwnedFd>,
    mcp: Option<OwnedFd>,
}

/// Builds the session up to the point where only `execve` of the command is left.
pub fn prepare(spec: &SandboxSpec) -> Result<Prepared, SandboxError> {
    prepare_inner(launch(spec.tty), spec, None)
}

/// What the caller hands over once the init has been started (see
/// [`prepare_with_trust_bundle`]).
type LateBundle<'a> = Box<dyn FnOnce() -> Result<String, String> + 'a>;

/// [`prepare`] for the init `launch` started (its terminal mode must be `spec.tty`'s),
/// with the session's trust bundle ([`SandboxSpec::trust_bundle`], which must be `None`
/// here) supplied late: `bundle` is called on this thread once the spec has been sent,
/// while the init builds the session's namespaces and network, so that computing it
/// (`warden run` reads the host's CA roots there) costs the session no time of its own
/// as long as it takes less than that. Its result is shown at [`crate::SESSION_TRUST_BUNDLE`]
/// exactly as `trust_bundle` would be. An `Err` stops the session before anything ran
/// and is returned as [`SandboxError::Caller`].
pub fn prepare_with_trust_bundle<'a>(
    launch: Launch,
    spec: &SandboxSpec,
    bundle: impl FnOnce() -> Result<String, String> + 'a,
) -> Result<Prepared, SandboxError> {
    if spec.trust_bundle.is_some() {
        return Err(SandboxError::InvalidSpec(
            "the trust bundle is given twice (in the spec and late)".into(),
        ));
    }
    prepare_inner(launch, spec, Some(Box::new(bundle)))
}

/// An init being started ahead of its spec: [`launch`] returns at once, and
/// [`prepare_with_trust_bundle`] picks the init up, so that the kernel builds the session's
/// namespaces and loads the init while the caller is still reading its policy.
#[derive(Debug)]
pub struct Launch {
    use_pty: bool,
    started: std::sync::mpsc::Receiver<Result<Launched, SandboxError>>,
}

/// An init that runs in its namespaces, waiting for its spec.
#[derive(Debug)]
struct Launched {
    session: Session,
    chan: OwnedFd,
}

/// Starts a session's init for a session with terminal mode `tty`, on a thread of its
/// own (see [`Launch`]). The init waits for its spec; dropping the `Launch` (or the
/// [`Prepared`] made of it) kills it. What fails here is reported by
/// [`prepare_with_trust_bundle`].
///
/// The thread stays, blocked, for as long as the session's [`Session`] exists: it is the
/// init's parent, and the init's parent-death signal fires when the *thread* that
/// started it exits.
pub fn launch(tty: TtyMode) -> Launch {
    let use_pty = wants_pty(tty);
    let (tx, started) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("warden-launch".into())
        .spawn({
            let tx = tx.clone();
            move || {
                let (hold, held) = std::sync::mpsc::channel::<()>();
                let launched = start_init(use_pty).map(|mut l| {
                    l.session.parent = Some(hold);
                    l
                });
                if tx.send(launched).is_ok() {
                    // Until the session is gone (its end of `hold` dropped).
                    let _ = held.recv();
                }
            }
        });
    if let Err(e) = spawned {
        let _ = tx.send(Err(SandboxError::os(
            "starting the session's launcher thread",
            e,
        )));
    }
    Launch { use_pty, started }
}

/// Whether a session with terminal mode `tty` gets a pty.
fn wants_pty(tty: TtyMode) -> bool {
    match tty {
        TtyMode::Auto => sys::isatty(0) && sys::isatty(1),
        TtyMode::Pty => true,
        TtyMode::Inherit => false,
    }
}

/// Clones the init into its namespaces and maps its user; on the launcher thread.
fn start_init(use_pty: bool) -> Result<Launched, SandboxError> {
    let (pty, slave) = if use_pty {
        let (p, s) = open_pty()?;
        (Some(p), Some(s))
    } else {
        (None, None)
    };
    let (parent_end, child_end) = socketpair()?;

    // Everything the child needs, prepared before clone.
    let marker =
        CString::new(INIT_MARKER).map_err(|e| SandboxError::os("marker", io::Error::other(e)))?;
    // The init must keep its capabilities in the new user namespace across its execve
    // (a non-root uid, or a uid not mapped yet, loses them at exec otherwise): the child
    // raises them all as ambient before exec; the agent clears the ambient set.
    let last_cap: libc::c_ulong = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    // The init: the dedicated program when there is one, else this executable again.
    let (exe, argv0) = match crate::init_program() {
        Some(program) => {
            if let Some((what, fix)) = crate::init_program_problem() {
                return Err(SandboxError::Unsupported { what, fix });
            }
            (
                sys::cstr(program).map_err(|e| SandboxError::os("the init program path", e))?,
                c"warden-init",
            )
        }
        None => (c"/proc/self/exe".to_owned(), c"warden"),
    };
    let mut child = ChildArgs {
        exe: exe.as_ptr(),
        argv: [argv0.as_ptr(), marker.as_ptr(), std::ptr::null()],
        envp: [std::ptr::null()],
        channel: child_end.as_raw_fd(),
        slave: slave.as_ref().map_or(-1, |s| s.as_raw_fd()),
        last_cap,
        cap_hdr: CapHeader {
            version: 0x2008_0522,
            pid: 0,
        },
        cap_all: [CapData {
            effective: !0,
            permitted: !0,
            inheritable: !0,
        }; 2],
        // SAFETY: an all-zero sigset is a valid value; emptied properly below.
        empty: unsafe { std::mem::zeroed() },
    };
    // SAFETY: initialising the set.
    unsafe { libc::sigemptyset(&mut child.empty) };
    // The child runs on its own stack in this process's memory until its execve.
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: one past the end of the buffer, aligned down to 16 bytes: the initial
    // stack pointer of a downward-growing stack.
    let top = unsafe { stack.as_mut_ptr().add(stack.len()) };
    let top = top.wrapping_sub(top as usize % 16);

    // SAFETY: CLONE_VM | CLONE_VFORK, as posix_spawn does: the child shares this
    // process's memory and this thread is suspended until the child has executed (or
    // exited), so `child` and `stack` outlive its use of them, and the address space is
    // not copied (no page tables to copy for the child, no copy-on-write faults here
    // afterwards). The child only reads `child` and calls async-signal-safe functions,
    // then execve or _exit, so it is sound even if this process has threads.
    let pid = unsafe {
        libc::clone(
            spawn_init,
            top.cast(),
            NS_FLAGS | libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut child as *mut ChildArgs).cast(),
        )
    };
    let clone_error = io::Error::last_os_error();
    drop(stack);
    if pid < 0 {
        return Err(userns_error(clone_error));
    }
    let pid = pid as i32;
    drop(child_end);
    drop(slave);
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            kill_reap(pid);
            return Err(SandboxError::os("pidfd_open", e));
        }
    };
    let session = Session {
        pid,
        pidfd,
        cgroups: None,
        pty,
        signals: None,
        exec_error: None,
        warnings: Vec::new(),
        guard: None,
        reaped: None,
        parent: None,
    };
    // The init's user: the caller's uid and gid, nothing else.
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let base = format!("/proc/{pid}");
    std::fs::write(format!("{base}/uid_map"), format!("{uid} {uid} 1\n")).map_err(userns_error)?;
    std::fs::write(format!("{base}/setgroups"), "deny").map_err(userns_error)?;
    std::fs::write(format!("{base}/gid_map"), format!("{gid} {gid} 1\n")).map_err(userns_error)?;
    Ok(Launched {
        session,
        chan: parent_end,
    })
}

fn prepare_inner(
    launch: Launch,
    spec: &SandboxSpec,
    late: Option<LateBundle<'_>>,
) -> Result<Prepared, SandboxError> {
    validate(spec)?;
    let use_pty = wants_pty(spec.tty);
    if use_pty != launch.use_pty {
        return Err(SandboxError::InvalidSpec(
            "the init was launched for another terminal mode than the spec's".into(),
        ));
    }
    let cgroups = if spec.limits.is_empty() {
        None
    } else {
        Some(CgroupSet::create(&spec.session_id, &spec.limits)?)
    };
    let signals = SignalGuard::install(use_pty)?;
    let Launched { mut session, chan } = launch.started.recv().unwrap_or_else(|_| {
        Err(SandboxError::Setup(
            "the session's launcher thread ended without starting the init".into(),
        ))
    })?;
    session.cgroups = cgroups;
    session.signals = Some(signals);
    match session.handshake(spec, chan, use_pty, late) {
        Ok((stream, unix_guard, fds)) => {
            let doors_missing =
                fds.proxy.is_none() || fds.dns.is_none() || (spec.mcp_door && fds.mcp.is_none());
            if spec.network == crate::Network::Egress
                && doors_missing
                && session.exec_error.is_none()
            {
                session.kill();
                session.reap();
                return Err(SandboxError::Setup(
                    "the init did not hand over the session's network descriptors".into(),
                ));
            }
            Ok(Prepared {
                session,
                stream,
                unix_guard,
                fds,
            })
        }
        Err(e) => {
            session.kill();
            session.reap();
            Err(e)
        }
    }
}

impl Prepared {
    /// The session's network descriptors ([`crate::Network::Egress`]), once. The caller
    /// serves them (the egress proxy) before [`Prepared::start`]; closing them leaves
    /// the session without any route out.
    pub fn take_network(&mut self) -> Option<crate::NetworkFds> {
        Some(crate::NetworkFds {
            tun: self.fds.tun.take(),
            proxy: self.fds.proxy.take()?,
            dns: self.fds.dns.take()?,
            mcp: self.fds.mcp.take(),
        })
    }

    /// What ends this session from another thread (e.g. [`crate::watch_git`]'s).
    pub fn killer(&self) -> io::Result<Killer> {
        Ok(Killer(self.session.pidfd.try_clone()?))
    }

    /// Warnings reported by the init so far.
    pub fn warnings(&self) -> &[String] {
        &self.session.warnings
    }

    /// Lets the agent execute the command; returns once it did (or failed to, see
    /// [`SessionExit::message`]).
    pub fn start(self) -> Result<Session, SandboxError> {
        let Prepared {
            mut session,
            mut stream,
            unix_guard,
            fds,
        } = self;
        let r = (|| {
            if session.exec_error.is_some() {
                return Ok(());
            }
            if unix_guard {
                match (fds.listener, fds.diag) {
                    (Some(l), Some(d)) => session.guard = Some(crate::unixsock::start(l, d)),
                    _ => {
                        return Err(SandboxError::Setup(
                            "the unix-socket guard was not set up".into(),
                        ));
                    }
                }
            }
            proto::write_frame(&mut stream, &proto::Control::Go)
                .map_err(|e| SandboxError::Setup(format!("starting the command: {e}")))?;
            let mut ready = false;
            loop {
                let msg: Option<Report> = proto::read_frame(&mut stream)
                    .map_err(|e| SandboxError::Setup(format!("reading the init's report: {e}")))?;
                match msg {
                    None => break,
                    Some(Report::Ready) => ready = true,
                    Some(Report::Warning(w)) => session.warnings.push(w),
                    Some(Report::SetupFailed(m)) => return Err(SandboxError::Setup(m)),
                    Some(Report::ExecFailed { code, message }) => {
                        session.exec_error = Some((code, message));
                        ready = true;
                    }
                    Some(other) => {
                        return Err(SandboxError::Setup(format!("unexpected report {other:?}")));
                    }
                }
            }
            if !ready {
                let status = session.reap();
                return Err(SandboxError::NoReport(format!(
                    " (init exit status {status})"
                )));
            }
            if let Some(p) = &mut session.pty {
                // The command runs: put the host terminal in raw mode for the relay.
                p.saved = enter_raw_mode();
            }
            Ok(())
        })();
        match r {
            Ok(()) => Ok(session),
            Err(e) => {
                session.kill();
                session.reap();
                Err(e)
            }
        }
    }
}

impl Session {
    fn handshake(
        &mut self,
        spec: &SandboxSpec,
        chan: OwnedFd,
        use_pty: bool,
        late: Option<LateBundle<'_>>,
    ) -> Result<(std::os::unix::net::UnixStream, bool, Received), SandboxError> {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        if let Some(cg) = &self.cgroups {
            cg.add(self.pid)?;
        }
        // gVisor serves Unix sockets itself (never a host socket: `--host-uds=none`).
        let unix_guard = spec.backend == crate::Backend::Namespaces && crate::unixsock::enabled();
        let req = InitRequest {
            spec: spec.clone(),
            uid,
            gid,
            use_pty,
            unix_guard,
            trust_bundle_follows: late.is_some(),
        };
        let mut stream = std::os::unix::net::UnixStream::from(chan);
        proto::write_frame(&mut stream, &req)
            .map_err(|e| SandboxError::Setup(format!("sending the spec to the init: {e}")))?;
        if let Some(bundle) = late {
            // The init builds the namespaces and the network meanwhile, then waits for it.
            let bundle = bundle().map_err(SandboxError::Caller)?;
            proto::write_bytes(&mut stream, bundle.as_bytes()).map_err(|e| {
                SandboxError::Setup(format!("sending the trust bundle to the init: {e}"))
            })?;
        }
        let mut fds = Received::default();
        loop {
            let msg: Option<Report> = proto::read_frame(&mut stream)
                .map_err(|e| SandboxError::Setup(format!("reading the init's report: {e}")))?;
            match msg {
                None => {
                    let status = self.reap();
                    return Err(SandboxError::NoReport(format!(
                        " (init exit status {status})"
                    )));
                }
                Some(Report::Warning(w)) => self.warnings.push(w),
                Some(Report::Fd(kind)) => {
                    let fd = proto::recv_fd(stream.as_raw_fd()).map_err(|e| {
                        SandboxError::Setup(format!("receiving a descriptor from the init: {e}"))
                    })?;
                    let slot = match kind {
                        proto::FdKind::ConnectGuard => &mut fds.listener,
                        proto::FdKind::UnixDiag => &mut fds.diag,
                        proto::FdKind::Tun => &mut fds.tun,
                        proto::FdKind::ProxyListener => &mut fds.proxy,
                        proto::FdKind::Dns => &mut fds.dns,
                        proto::FdKind::McpListener => &mut fds.mcp,
                    };
                    *slot = Some(fd);
                }
                Some(Report::Prepared) => break,
                Some(Report::SetupFailed(m)) => return Err(SandboxError::Setup(m)),
                Some(Report::ExecFailed { code, message }) => {
                    self.exec_error = Some((code, message));
                    break;
                }
                Some(Report::Ready) => {
                    return Err(SandboxError::Setup(
                        "the agent reported ready before the go-ahead".into(),
                    ));
                }
            }
        }
        Ok((stream, unix_guard, fds))
    }

    /// Warnings reported by the init (e.g. the `hide_patterns` walk hit its bound).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Kills the whole session (SIGKILL to its init; the kernel kills the rest of its PID
    /// namespace).
    pub fn kill(&self) {
        if self.reaped.is_none() {
            kill_pidfd(&self.pidfd);
        }
    }

    fn reap(&mut self) -> i32 {
        if let Some(c) = self.reaped {
            return c;
        }
        let mut status = 0;
        loop {
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            125
        };
        self.reaped = Some(code);
        code
    }

    /// Relays the terminal (when the session has a pty), forwards SIGINT/SIGTERM/SIGHUP/
    /// SIGQUIT to the session, and waits for the session to end. Removes the session's
    /// cgroups and restores the terminal before returning.
    pub fn wait(mut self) -> Result<SessionExit, SandboxError> {
        let sig_rd = self.signals.as_ref().map_or(-1, |s| s.read_fd());
        let mut stdin_open = self.pty.is_some();
        let mut master_open = self.pty.is_some();
        let mut buf = vec![0u8; 16384];
        loop {
            let mut fds = vec![
                libc::pollfd {
                    fd: self.pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: sig_rd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let master_fd = self.pty.as_ref().map_or(-1, |p| p.master.as_raw_fd());
            fds.push(libc::pollfd {
                fd: if stdin_open { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            });
            fds.push(libc::pollfd {
                fd: if master_open { master_fd } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: `fds` is a valid array of pollfd of the given length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(SandboxError::os("poll", io::Error::last_os_error()));
            }
            if fds[1].revents & libc::POLLIN != 0 {
                for sig in self.signals.as_ref().map(|s| s.drain()).unwrap_or_default() {
                    if sig == libc::SIGWINCH {
                        if let Some(p) = &self.pty {
                            copy_winsize(0, p.master.as_raw_fd());
                        }
                    } else {
                        // SAFETY: signalling our own child through its pidfd.
                        unsafe {
                            libc::syscall(
                                libc::SYS_pidfd_send_signal,
                                self.pidfd.as_raw_fd(),
                                sig,
                                std::ptr::null::<u8>(),
                                0u32,
                            )
                        };
                    }
                }
            }
            if stdin_open && fds[2].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                match read_fd(0, &mut buf) {
                    Ok(0) | Err(_) => stdin_open = false,
                    Ok(k) => {
                        if write_all_fd(master_fd, &buf[..k]).is_err() {
                            stdin_open = false;
                        }
                    }
                }
            }
            if master_open && fds[3].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                match read_fd(master_fd, &mut buf) {
                    Ok(0) | Err(_) => master_open = false,
                    Ok(k) => {
                        let _ = write_all_fd(1, &buf[..k]);
                    }
                }
            }
            if fds[0].revents & libc::POLLIN != 0 {
                // The init exited: drain what the pty still holds.
                if master_open {
                    set_nonblocking(master_fd);
                    while let Ok(k) = read_fd(master_fd, &mut buf) {
                        if k == 0 {
                            break;
                        }
                        let _ = write_all_fd(1, &buf[..k]);
                    }
                }
                break;
            }
        }
        let code = self.reap();
        self.pty = None; // restores the terminal
        self.signals = None;
        if let Some(mut cg) = self.cgroups.take() {
            cg.remove();
        }
        if let Some(g) = self.guard.take() {
            let _ = g.join();
        }
        let message = self
            .exec_error
            .as_ref()
            .filter(|(c, _)| *c == code)
            .map(|(_, m)| m.clone());
        Ok(SessionExit { code, message })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            self.kill();
            self.reap();
        }
    }
}

fn kill_reap(pid: i32) {
    // SAFETY: our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
    }
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open returns a new descriptor or an error.
    let fd = sys::cvt_l(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) })?;
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn socketpair() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-element array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(SandboxError::os("socketpair", io::Error::last_os_error()));
    }
    // SAFETY: two fresh descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn open_pty() -> Result<(Pty, OwnedFd), SandboxError> {
    // SAFETY: posix_openpt/grantpt/unlockpt/ptsname_r on a descriptor we own; buffers are
    // local and sized.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if m < 0 {
            return Err(SandboxError::os(
                "opening a pty (posix_openpt)",
                io::Error::last_os_error(),
            ));
        }
        let master = OwnedFd::from_raw_fd(m);
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(SandboxError::os(
                "unlocking the pty",
                io::Error::last_os_error(),
            ));
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
            return Err(SandboxError::os("ptsname", io::Error::last_os_error()));
        }
        let s = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 {
            return Err(SandboxError::os(
                "opening the pty slave",
                io::Error::last_os_error(),
            ));
        }
        let slave = OwnedFd::from_raw_fd(s);
        // The slave starts with the host terminal's settings and size.
        if sys::isatty(0) {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) == 0 {
                libc::tcsetattr(s, libc::TCSANOW, &t);
            }
            copy_winsize(0, m);
        }
        Ok((
            Pty {
                master,
                saved: None,
            },
            slave,
        ))
    }
}

fn enter_raw_mode() -> Option<libc::termios> {
    if !sys::isatty(0) {
        return None;
    }
    // SAFETY: termios is plain data; calls on fd 0 which is a terminal.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) != 0 {
            return None;
        }
        let saved = t;
        libc::cfmakeraw(&mut t);
        libc::tcsetattr(0, libc::TCSADRAIN, &t);
        Some(saved)
    }
}

fn copy_winsize(from: RawFd, to: RawFd) {
    // SAFETY: winsize is plain data; ioctls read/write it.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to, libc::TIOCSWINSZ, &ws);
        }
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl flag change on our descriptor.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reading into a valid buffer.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn write_all_fd(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: writing from a valid buffer.
        let r = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if e.kind() == io::ErrorKind::WouldBlock {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            return Err(e);
        }
        data = &data[r as usize..];
    }
    Ok(())
}

// ---- signals of `warden run` -------------------------------------------------------------

/// Write end of the self-pipe the signal handler writes to (-1 when none).
static SIG_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIG_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is a local byte.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

#[derive(Debug)]
struct SignalGuard {
    rd: OwnedFd,
    wr: OwnedFd,
    old: Vec<(libc::c_int, libc::sigaction)>,
}

impl SignalGuard {
    fn install(winch: bool) -> Result<SignalGuard, SandboxError> {
        let mut p = [0; 2];
        // SAFETY: valid two-element array.
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(SandboxError::os("pipe2", io::Error::last_os_error()));
        }
        // SAFETY: fresh descriptors.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        SIG_PIPE.store(wr.as_raw_fd(), Ordering::Relaxed);
        let mut sigs = vec![libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];
        if winch {
            sigs.push(libc::SIGWINCH);
        }
        let mut old = Vec::new();
        for s in sigs {
            // SAFETY: installing a handler that only calls write(2); sigaction structs are
            // plain data.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                let mut prev: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(s, &sa, &mut prev) == 0 {
                    old.push((s, prev));
                }
            }
        }
        Ok(SignalGuard { rd, wr, old })
    }

    fn read_fd(&self) -> RawFd {
        self.rd.as_raw_fd()
    }

    fn drain(&self) -> Vec<libc::c_int> {
        let mut buf = [0u8; 64];
        let mut out = Vec::new();
        while let Ok(n) = read_fd(self.rd.as_raw_fd(), &mut buf) {
            if n == 0 {
                break;
            }
            out.extend(buf[..n].iter().map(|b| *b as libc::c_int));
        }
        out
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (s, prev) in &self.old {
            // SAFETY: restoring the previous disposition.
            unsafe { libc::sigaction(*s, prev, std::ptr::null_mut()) };
        }
        SIG_PIPE.store(-1, Ordering::Relaxed);
        let _ = &self.wr;
    }
}

/// Ends a session from any thread: SIGKILL to its init (the kernel kills the rest of
/// its PID namespace). Made by [`Prepared::killer`]; harmless once the session ended.
#[derive(Debug)]
pub struct Killer(OwnedFd);

impl Killer {
    pub fn kill(&self) {
        kill_pidfd(&self.0);
    }

    /// Kills the session once this process's parent process has exited, watched from a
    /// thread of its own: for a session that only its parent uses, e.g. an MCP server's
    /// session started by a gateway, which must not outlive the gateway even when the
    /// server ignores its closed stdin. (Not `PR_SET_PDEATHSIG`: that fires when the
    /// parent *thread* exits, and a gateway's runtime may retire the thread it spawned
    /// from.) A parent gone before the watch starts is not noticed (this process has been
    /// reparented by then); the closed stdin is then the only signal.
    pub fn kill_when_parent_exits(self) -> io::Result<()> {
        // SAFETY: getppid cannot fail.
        let parent = unsafe { libc::getppid() };
        let pidfd = pidfd_open(parent)?;
        std::thread::Builder::new()
            .name("warden-parent".into())
            .spawn(move || {
                let mut fds = [libc::pollfd {
                    fd: pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                loop {
                    // SAFETY: `fds` is a valid array of one pollfd.
                    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) };
                    if n > 0 {
                        break;
                    }
                    if n < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                        return;
                    }
                }
                self.kill();
            })?;
        Ok(())
    }
}

fn kill_pidfd(pidfd: &OwnedFd) {
    // SAFETY: pidfd_send_signal on a pidfd of our own child; a reaped child's pidfd
    // only makes it fail with ESRCH.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<u8>(),
            0u32,
        )
    };
}
