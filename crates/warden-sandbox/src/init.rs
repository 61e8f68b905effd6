//! The session side: the init (PID 1 of the session's PID namespace) and the agent it forks.
//!
//! The init starts single-threaded (a fresh `execve` of this binary), so forking is safe.
//! It reads the request from fd 3, finishes the namespaces, builds the root, forks the
//! agent, then only reaps children and forwards signals until the agent exits, and exits
//! with the agent's status (128+N when the agent was killed by signal N). When the init
//! exits the kernel kills everything left in the PID namespace.

use crate::Backend;
use crate::mounts;
use crate::proto::{self, InitRequest, Report};
use crate::seccomp;
use crate::sys;
use std::ffi::{CString, OsStr, OsString};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const CHANNEL_FD: RawFd = 3;
/// Exit status of the init when setup failed (Warden's own failure, SPEC §3).
const EXIT_SETUP: i32 = 125;

const FORWARDED: &[libc::c_int] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCONT,
];

fn report(chan: &OwnedFd, r: &Report) {
    if let Ok(mut s) = proto::stream_of(chan) {
        let _ = proto::write_frame(&mut s, r);
        let _ = s.flush();
    }
}

/// Entry point of a session init (see [`crate::INIT_MARKER`]). Never returns. Started any
/// other way (by hand, without the marker), it exits with status 2 and touches nothing.
pub fn init_main() -> ! {
    if !crate::is_init_invocation() {
        eprintln!(
            "this program is the init of `warden run` sessions, started by warden; it is not a command of its own"
        );
        // SAFETY: _exit ends the process; nothing was set up.
        unsafe { libc::_exit(2) }
    }
    // SAFETY: fd 3 was placed there by `spawn` for this process; nothing else owns it.
    let mut chan = Some(unsafe { OwnedFd::from_raw_fd(CHANNEL_FD) });
    let code = match run_init(&mut chan) {
        Ok(code) => code,
        Err(msg) => {
            if let Some(c) = &chan {
                report(c, &Report::SetupFailed(msg));
            }
            EXIT_SETUP
        }
    };
    drop(chan);
    // SAFETY: _exit ends the process without running destructors of a half-built state.
    unsafe { libc::_exit(code) }
}

fn run_init(slot: &mut Option<OwnedFd>) -> Result<i32, String> {
    let Some(chan) = slot.as_ref() else {
        return Err("no channel".into());
    };
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)
        .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    // Nothing inherited beyond stdio and the channel.
    sys::close_from(4).map_err(|e| format!("close_range: {e}"))?;
    // Leave the host's session and process group: the host terminal's signals go to
    // `warden run`, which forwards them once.
    // SAFETY: setsid has no memory effects.
    unsafe { libc::setsid() };
    let mut stream = proto::stream_of(chan).map_err(|e| format!("channel: {e}"))?;
    let mut req: InitRequest = match proto::read_frame(&mut stream) {
        Ok(Some(r)) => r,
        Ok(None) => return Err("the parent closed the channel before sending the spec".into()),
        Err(e) => return Err(format!("reading the spec: {e}")),
    };
    // The parent has moved us into the session's cgroups: make that the cgroup root.
    // SAFETY: unshare with a namespace flag only.
    if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
        return Err(format!(
            "cgroup namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    let host = sys::cstring(&req.spec.hostname).map_err(|e| format!("hostname: {e}"))?;
    // SAFETY: valid buffer of the given length.
    if unsafe { libc::sethostname(host.as_ptr(), req.spec.hostname.len()) } != 0 {
        return Err(format!("sethostname: {}", std::io::Error::last_os_error()));
    }
    let mut warnings = Vec::new();
    let egress = req.spec.network == crate::Network::Egress;
    let net = crate::net::setup(egress, req.spec.mcp_door, &mut warnings)
        .map_err(|e| format!("session network: {e}"))?;
    if let Some(fds) = net {
        // The parent holds the only copies once these are dropped.
        let tun = fds.tun.map(|fd| (proto::FdKind::Tun, fd));
        let mcp = fds.mcp.map(|fd| (proto::FdKind::McpListener, fd));
        for (kind, fd) in tun
            .into_iter()
            .chain([
                (proto::FdKind::ProxyListener, fds.proxy),
                (proto::FdKind::Dns, fds.dns),
            ])
            .chain(mcp)
        {
            report(chan, &Report::Fd(kind));
            proto::send_fd(chan.as_raw_fd(), fd.as_raw_fd())
                .map_err(|e| format!("passing the session's {kind:?} descriptor: {e}"))?;
        }
    }
    if req.unix_guard {
        // The guard asks the kernel which unix sockets belong to the session: through a
        // sock_diag socket of the session's network namespace, opened here.
        // SAFETY: plain socket creation, checked below.
        let d = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if d < 0 {
            return Err(format!(
                "sock_diag socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: fresh descriptor.
        let d = unsafe { OwnedFd::from_raw_fd(d) };
        report(chan, &Report::Fd(proto::FdKind::UnixDiag));
        proto::send_fd(chan.as_raw_fd(), d.as_raw_fd())
            .map_err(|e| format!("passing the sock_diag socket: {e}"))?;
    }
    if req.trust_bundle_follows {
        let bundle = proto::read_bytes(&mut stream)
            .map_err(|e| format!("reading the session's trust bundle: {e}"))?;
        let bundle = String::from_utf8(bundle)
            .map_err(|_| "the session's trust bundle is not UTF-8 text".to_string())?;
        req.spec.trust_bundle = Some(bundle);
    }
    let covered = mounts::build_root(&req, &mut warnings)?;
    for w in warnings {
        report(chan, &Report::Warning(w));
    }
    // Signals are handled synchronously through a signalfd.
    // SAFETY: sigset manipulation on a local, initialised set.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for &s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    // SAFETY: a new signalfd for the blocked set.
    let sfd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if sfd < 0 {
        return Err(format!("signalfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptor.
    let sfd = unsafe { OwnedFd::from_raw_fd(sfd) };

    // SAFETY: the init is single-threaded (fresh exec, no threads started), so the child may
    // run arbitrary code.
    let agent = unsafe { libc::fork() };
    if agent < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if agent == 0 {
        drop(sfd);
        let code = match agent_main(&req, &covered, chan) {
            Err(AgentError::Setup(msg)) => {
                report(chan, &Report::SetupFailed(msg));
                EXIT_SETUP
            }
            Err(AgentError::Exec(code, message)) => {
                report(chan, &Report::ExecFailed { code, message });
                code
            }
        };
        // SAFETY: leave without unwinding into the init's state.
        unsafe { libc::_exit(code) }
    }
    // The agent holds the channel until its exec; our copies must go so the parent sees EOF.
    drop(stream);
    *slot = None;
    let forward: Box<dyn Fn(libc::c_int)> = match req.spec.backend {
        // SAFETY: signalling our own child.
        Backend::Namespaces => Box::new(move |sig| unsafe {
            libc::kill(agent, sig);
        }),
        // `runsc run` does not pass the signals it receives on to the command (and dies
        // of most of them): ask the sandbox to deliver them instead.
        Backend::Gvisor => {
            let runsc = crate::gvisor::find_runsc();
            let id = req.spec.session_id.clone();
            Box::new(move |sig| {
                if let Some(argv) = runsc
                    .as_ref()
                    .and_then(|r| crate::gvisor::kill_argv(r, &id, sig).ok())
                {
                    spawn_quiet(&argv);
                }
            })
        }
    };
    Ok(supervise(agent, &sfd, &*forward))
}

/// Starts `argv` as a child of the init with stdout and stderr on `/dev/null` and the
/// default signal mask; the supervisor loop reaps it. The init is single-threaded, so
/// the child may run arbitrary code before `execve`.
fn spawn_quiet(argv: &[CString]) {
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: fork in a single-threaded process; the child only resets its signal mask,
    // redirects two descriptors and executes, or exits.
    unsafe {
        if libc::fork() == 0 {
            sys::reset_signals();
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
            if null >= 0 {
                libc::dup2(null, 1);
                libc::dup2(null, 2);
            }
            libc::execve(argv_p[0], argv_p.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
}

/// Reap and forward until the agent exits; returns its status as an exit code.
fn supervise(agent: libc::pid_t, sfd: &OwnedFd, forward: &dyn Fn(libc::c_int)) -> i32 {
    loop {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        // SAFETY: reading into a buffer of exactly the struct's size.
        let n = unsafe {
            libc::read(
                sfd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                std::mem::size_of::<libc::signalfd_siginfo>(),
            )
        };
        if n != std::mem::size_of::<libc::signalfd_siginfo>() as isize {
            continue;
        }
        let sig = info.ssi_signo as libc::c_int;
        if sig != libc::SIGCHLD {
            forward(sig);
            continue;
        }
        loop {
            let mut status = 0;
            // SAFETY: reaping any child of ours.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == agent {
                if libc::WIFEXITED(status) {
                    return libc::WEXITSTATUS(status);
                }
                if libc::WIFSIGNALED(status) {
                    return 128 + libc::WTERMSIG(status);
                }
            }
        }
    }
}

enum AgentError {
    Setup(String),
    Exec(i32, String),
}

fn setup<T>(what: &str, r: std::io::Result<T>) -> Result<T, AgentError> {
    r.map_err(|e| AgentError::Setup(format!("{what}: {e}")))
}

/// The agent: harden, then exec. Only returns on failure.
fn agent_main(
    req: &InitRequest,
    covered: &[mounts::Overmount],
    chan: &OwnedFd,
) -> Result<std::convert::Infallible, AgentError> {
    sys::reset_signals();
    // SAFETY: setsid has no memory effects.
    if unsafe { libc::setsid() } < 0 {
        return Err(AgentError::Setup(format!(
            "setsid: {}",
            std::io::Error::last_os_error()
        )));
    }
    if req.use_pty {
        // SAFETY: TIOCSCTTY on our stdin, the pty slave.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(AgentError::Setup(format!(
                "TIOCSCTTY: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    let spec = &req.spec;
    setup(
        &format!("working directory {}", spec.cwd.display()),
        std::env::set_current_dir(&spec.cwd),
    )?;
    let env: Vec<CString> = spec
        .env
        .iter()
        .filter_map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            CString::new(b).ok()
        })
        .collect();
    let argv: Vec<CString> = spec
        .command
        .iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    if argv.len() != spec.command.len() || argv.is_empty() {
        return Err(AgentError::Setup(
            "the command is empty or contains a NUL byte".into(),
        ));
    }
    let path_var = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());

    match spec.backend {
        Backend::Namespaces => {
            crate::landlock_layer::restrict(&mounts::writable_paths(req))
                .map_err(AgentError::Setup)?;
            drop_capabilities().map_err(AgentError::Setup)?;
            setup(
                "PR_SET_NO_NEW_PRIVS",
                sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1),
            )?;
            let prog = setup("seccomp filter", seccomp::agent_program())?;
            setup(
                "installing the seccomp filter",
                seccomp::install(&prog, false),
            )?;
            if req.unix_guard {
                // The guard mediates sendmsg, which passes its own listener on:
                // install_guard sends it from a thread without the guard.
                setup(
                    "installing the unix-socket guard and sending its listener",
                    seccomp::install_guard(|l| {
                        report(chan, &Report::Fd(proto::FdKind::ConnectGuard));
                        proto::send_fd(chan.as_raw_fd(), l.as_raw_fd())
                    }),
                )?;
            }
            // Resolve the command in the session (after Landlock, so an execute denial
            // shows).
            let exe = resolve(&spec.command[0], path_var.as_deref())?;
            let exe_c = CString::new(exe.as_os_str().as_bytes())
                .map_err(|_| AgentError::Setup("NUL in path".into()))?;
            go_and_exec(chan, &exe_c, &argv, &env)?;
        }
        Backend::Gvisor => {
            // The command is looked up here, on the same root gVisor serves it from, so
            // 126/127 and their messages are the same as with the other backend.
            resolve(&spec.command[0], path_var.as_deref())?;
            let runsc = crate::gvisor::find_runsc().ok_or_else(|| {
                AgentError::Setup(format!(
                    "runsc is not in the session ({}). {}",
                    crate::gvisor::RUNSC_CANDIDATES.join(", "),
                    crate::gvisor::RUNSC_INSTALL_HINT
                ))
            })?;
            crate::gvisor::write_bundle(req, covered).map_err(AgentError::Setup)?;
            crate::gvisor::enter_nested_namespaces(req.uid, req.gid).map_err(AgentError::Setup)?;
            crate::gvisor::append_to_regular_files(&[1, 2]);
            setup(
                "PR_SET_NO_NEW_PRIVS",
                sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1),
            )?;
            let argv =
                crate::gvisor::run_argv(&runsc, &spec.session_id).map_err(AgentError::Setup)?;
            let exe_c = argv[0].clone();
            // runsc gets no environment of the session: it only reads its flags and
            // the bundle.
            go_and_exec(chan, &exe_c, &argv, &[])?;
            let e = std::io::Error::last_os_error();
            return Err(AgentError::Exec(
                126,
                format!("{}: cannot execute: {e}", runsc.display()),
            ));
        }
    }
    let e = std::io::Error::last_os_error();
    let cmd = spec.command[0].to_string_lossy();
    Err(match e.raw_os_error() {
        Some(libc::ENOENT) => {
            AgentError::Exec(127, format!("{cmd}: not found in the session: {e}"))
        }
        _ => AgentError::Exec(126, format!("{cmd}: cannot execute: {e}")),
    })
}

/// Closes every descriptor but stdio and the channel at exec, reports `Prepared`, waits
/// for the parent's go-ahead (it records the session start durably meanwhile; end-of-file
/// instead means it gave up: do not run), reports `Ready` and executes. Returns only on
/// failure.
fn go_and_exec(
    chan: &OwnedFd,
    exe: &CString,
    argv: &[CString],
    env: &[CString],
) -> Result<(), AgentError> {
    setup("close_range", sys::cloexec_from(3))?;
    report(chan, &Report::Prepared);
    let mut stream = setup("channel", proto::stream_of(chan))?;
    match proto::read_frame::<proto::Control>(&mut stream) {
        Ok(Some(proto::Control::Go)) => {}
        _ => {
            return Err(AgentError::Setup(
                "the parent did not confirm the start".into(),
            ));
        }
    }
    drop(stream);
    report(chan, &Report::Ready);
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    env_p.push(std::ptr::null());
    // SAFETY: NUL-terminated arrays of valid C strings that live until the call returns.
    unsafe { libc::execve(exe.as_ptr(), argv_p.as_ptr(), env_p.as_ptr()) };
    Ok(())
}

/// `command[0]` → an executable path, like a shell would: 127 when nothing is found, 126
/// when something is found but cannot be executed.
fn resolve(cmd: &OsStr, path: Option<&OsStr>) -> Result<PathBuf, AgentError> {
    let name = cmd.to_string_lossy();
    if cmd.as_bytes().contains(&b'/') {
        let p = PathBuf::from(cmd);
        return match std::fs::metadata(&p) {
            Err(_) => Err(AgentError::Exec(
                127,
                format!("{name}: no such file in the session"),
            )),
            Ok(m) if m.is_dir() => Err(AgentError::Exec(126, format!("{name}: is a directory"))),
            Ok(_) if !executable(&p) => {
                Err(AgentError::Exec(126, format!("{name}: permission denied")))
            }
            Ok(_) => Ok(p),
        };
    }
    let path = path
        .map(OsString::from)
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut found_not_exec = None;
    for dir in path.as_bytes().split(|b| *b == b':') {
        let dir = if dir.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(dir))
        };
        let p = dir.join(cmd);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() && executable(&p) => return Ok(p),
            Ok(m) if m.is_file() => found_not_exec = Some(p),
            _ => {}
        }
    }
    match found_not_exec {
        Some(p) => Err(AgentError::Exec(
            126,
            format!("{name}: {}: permission denied", p.display()),
        )),
        None => Err(AgentError::Exec(
            127,
            format!(
                "{name}: command not found in the session (PATH={})",
                path.to_string_lossy()
            ),
        )),
    }
}

fn executable(p: &Path) -> bool {
    let Ok(c) = sys::cstr(p) else { return false };
    // SAFETY: valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

/// Drops every capability: bounding set, ambient, inheritable, permitted, effective.
fn drop_capabilities() -> Result<(), String> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    for cap in 0..=last {
        // EINVAL for caps this kernel does not know is fine.
        if let Err(e) = sys::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong)
            && e.raw_os_error() != Some(libc::EINVAL)
        {
            return Err(format!(
                "dropping capability {cap} from the bounding set: {e}"
            ));
        }
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let hdr = Header {
        version: 0x2008_0522,
        pid: 0,
    }; // _LINUX_CAPABILITY_VERSION_3
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and two data structs as capset(2) v3 expects.
    if unsafe { libc::syscall(libc::SYS_capset, &hdr as *const Header, data.as_ptr()) } != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for key in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        let ok = status
            .lines()
            .any(|l| l.starts_with(key) && l[key.len()..].trim().chars().all(|c| c == '0'));
        if !ok {
            return Err(format!("capabilities still present after dropping ({key})"));
        }
    }
    Ok(())
}
