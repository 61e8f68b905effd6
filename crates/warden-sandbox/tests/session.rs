//! Sessions end to end through the library. `harness = false`: this binary is also the
//! session init (`/proc/self/exe` re-executed with the init marker).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use warden_sandbox::{Limits, Mount, SandboxSpec, TtyMode};

fn spec(ws: &Path, cmd: &[&str]) -> SandboxSpec {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    SandboxSpec {
        command: cmd.iter().map(OsString::from).collect(),
        cwd: ws.to_path_buf(),
        env: warden_sandbox::session_env(std::env::vars_os(), Vec::new(), &home),
        mounts: vec![Mount {
            source: ws.to_path_buf(),
            target: ws.to_path_buf(),
            writable: true,
        }],
        hide: Vec::new(),
        read_only: Vec::new(),
        hide_patterns: vec!["**/.env".into()],
        limits: Limits::default(),
        home,
        hostname: "warden".into(),
        tty: TtyMode::Inherit,
        session_id: format!("t{}", std::process::id()),
        network: warden_sandbox::Network::Loopback,
        mcp_door: false,
        trust_bundle: None,
        backend: warden_sandbox::Backend::Namespaces,
    }
}

fn run(spec: &SandboxSpec) -> i32 {
    warden_sandbox::preflight(spec).unwrap();
    let s = warden_sandbox::spawn(spec).unwrap();
    let e = s.wait().unwrap();
    if let Some(m) = &e.message {
        eprintln!("message: {m}");
    }
    e.code
}

/// Runs `spec` with its trust bundle handed over late; a failed hand-over is 125 (its
/// message must be the caller's).
fn late_bundle(spec: &SandboxSpec, bundle: Result<String, String>) -> i32 {
    let want_err = bundle.clone().err();
    let launch = warden_sandbox::launch(spec.tty);
    match warden_sandbox::prepare_with_trust_bundle(launch, spec, move || bundle) {
        Ok(p) => p.start().unwrap().wait().unwrap().code,
        Err(e) => {
            assert_eq!(Some(e.to_string()), want_err, "{e}");
            125
        }
    }
}

/// Runs `spec` with [`warden_sandbox::Network::Egress`]; the network descriptors are
/// held (unserved) for the session's life when `keep`, else closed before it starts.
fn run_net(spec: &SandboxSpec, keep: bool) -> i32 {
    let mut spec = spec.clone();
    spec.network = warden_sandbox::Network::Egress;
    warden_sandbox::preflight(&spec).unwrap();
    let mut p = warden_sandbox::prepare(&spec).unwrap();
    let fds = p.take_network().expect("network descriptors");
    assert!(fds.tun.is_some(), "no TUN device: {:?}", p.warnings());
    let held = keep.then_some(fds);
    let s = p.start().unwrap();
    let code = s.wait().unwrap().code;
    drop(held);
    code
}

const NET_UP: &str = r#"
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(("192.0.2.1", 9))
assert u.getsockname()[0] == "10.87.0.2", u.getsockname()
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6.connect(("2001:db8::1", 9))
assert u6.getsockname()[0] == "fd7a:7761:7265::2", u6.getsockname()
socket.create_connection(("127.0.0.1", 3128), timeout=5).close()
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    b.bind(("127.0.0.1", 53)); sys.exit("the DNS port was free")
except OSError:
    pass
"#;

const NET_GONE: &str = r#"
import errno, socket, sys
for fam, addr in ((socket.AF_INET, ("192.0.2.1", 9)), (socket.AF_INET6, ("2001:db8::1", 9))):
    u = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        u.connect(addr); sys.exit("route out after the proxy closed: %r" % (u.getsockname(),))
    except OSError as e:
        assert e.errno == errno.ENETUNREACH, e
try:
    socket.create_connection(("127.0.0.1", 3128), timeout=5); sys.exit("proxy port open")
except ConnectionRefusedError:
    pass
"#;

/// Every live child of this process (of any of its threads).
fn children() -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(c) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(c.split_whitespace().map(str::to_string));
        }
    }
    out
}

/// Exit status of a session prepared on a thread that has ended by the time it runs:
/// the init must not die with the thread that asked for it (its parent-death signal
/// follows the thread that cloned it).
fn prepared_elsewhere(spec: &SandboxSpec) -> i32 {
    let spec = spec.clone();
    let prepared = std::thread::spawn(move || warden_sandbox::prepare(&spec).unwrap())
        .join()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    prepared.start().unwrap().wait().unwrap().code
}

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Children left once an init was launched and its `Launch` dropped unused (0
/// expected). Measured once this (otherwise single-threaded) binary is down to its main
/// thread again: the launcher thread kills and reaps an init nobody took, then ends, so
/// an init cloned after the drop is not missed.
fn dropped_launch_leftovers() -> i32 {
    let children_before = children().len();
    drop(warden_sandbox::launch(TtyMode::Inherit));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while threads() > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(threads(), 1, "a launcher thread did not end");
    children().len().saturating_sub(children_before) as i32
}

fn main() {
    if warden_sandbox::is_init_invocation() {
        warden_sandbox::init_main();
    }
    // This binary is its own harness (it must also be the sandbox init), so answer the
    // test runners' listing protocol (`--list --format terse`, as nextest asks) with one
    // test that runs every check below.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("session: test");
        }
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().canonicalize().unwrap();
    std::fs::write(ws.join(".env"), "SECRET=1").unwrap();
    let mut passed = 0;
    let mut failed = 0;
    let mut check = |name: &str, got: i32, want: i32| {
        if got == want {
            passed += 1;
            println!("ok {name}");
        } else {
            failed += 1;
            println!("FAILED {name}: exit {got}, want {want}");
        }
    };
    check("true", run(&spec(&ws, &["/bin/true"])), 0);
    check("exit 3", run(&spec(&ws, &["sh", "-c", "exit 3"])), 3);
    check("not found", run(&spec(&ws, &["no-such-command-xyz"])), 127);
    check(
        "env hidden",
        run(&spec(&ws, &["sh", "-c", "test ! -s .env"])),
        0,
    );
    check(
        "write ws",
        run(&spec(&ws, &["sh", "-c", "echo hi > out && cat out"])),
        0,
    );
    check(
        "no shadow",
        run(&spec(&ws, &["sh", "-c", "test ! -e /etc/shadow"])),
        0,
    );
    check(
        "own pids",
        run(&spec(
            &ws,
            &["sh", "-c", "test $(ls /proc | grep -c \"^[0-9]\") -le 5"],
        )),
        0,
    );
    // A host daemon's socket inside the workspace is refused; the session's own work.
    let sock = ws.join("host.sock");
    let host = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::write(
        ws.join("u.py"),
        "import socket, threading, sys\n\
         c = socket.socket(socket.AF_UNIX)\n\
         try:\n  c.connect('host.sock'); sys.exit(10)\nexcept ConnectionRefusedError: pass\n\
         s = socket.socket(socket.AF_UNIX); s.bind('own.sock'); s.listen(1)\n\
         threading.Thread(target=lambda: s.accept()[0].sendall(b'ok')).start()\n\
         d = socket.socket(socket.AF_UNIX); d.connect('own.sock'); assert d.recv(2) == b'ok'\n\
         e = socket.socket(); e.bind(('127.0.0.1', 0)); e.listen(1)\n\
         f = socket.create_connection(e.getsockname())\n",
    )
    .unwrap();
    check("unix guard", run(&spec(&ws, &["python3", "u.py"])), 0);
    let mut trusting = spec(
        &ws,
        &[
            "sh",
            "-c",
            "grep -qx 'SESSION-CA' /etc/ssl/certs/ca-certificates.crt && ! echo x >> /etc/ssl/certs/ca-certificates.crt",
        ],
    );
    trusting.trust_bundle = Some("SESSION-CA\n".into());
    check("trust bundle overlaid read-only", run(&trusting), 0);
    trusting.trust_bundle = None;
    check(
        "trust bundle supplied late, overlaid read-only",
        late_bundle(&trusting, Ok("SESSION-CA\n".into())),
        0,
    );
    let marker = ws.join("late-bundle-ran");
    let touching = spec(&ws, &["touch", marker.to_str().unwrap()]);
    check(
        "a late bundle that fails stops the session before the command",
        late_bundle(&touching, Err("no roots here".into())) + i32::from(marker.exists()),
        125,
    );
    check(
        "egress doors: TUN routes v4+v6, proxy listener, DNS socket",
        run_net(&spec(&ws, &["python3", "-c", NET_UP]), true),
        0,
    );
    check(
        "proxy gone: no route, no listener",
        run_net(&spec(&ws, &["python3", "-c", NET_GONE]), false),
        0,
    );
    check(
        "a session prepared on a thread that has ended still runs",
        prepared_elsewhere(&spec(&ws, &["/bin/true"])),
        0,
    );
    check(
        "an init launched and dropped unused leaves no process",
        dropped_launch_leftovers(),
        0,
    );
    drop(host);
    println!("{passed} passed, {failed} failed");
    // `exit` runs no destructors: remove the workspace first.
    drop(tmp);
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
