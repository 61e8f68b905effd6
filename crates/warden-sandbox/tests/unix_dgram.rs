//! Attacks on the host's datagram sockets from inside a session: `sendto`/`sendmsg`/
//! `sendmmsg` naming a socket a host process bound in the shared workspace, or an
//! abstract one, must fail and deliver nothing; the session's own datagram sockets and
//! socketpairs, and other sends the guard now performs, keep working (tests/unix_dgram.py).
//! `harness = false`: this binary is also the session init.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code
use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use warden_sandbox::{Limits, Mount, SandboxSpec, TtyMode};

/// The spec goes through serde so that it names `network` (loopback only), a field that
/// branches with the session network have and this one does not yet; serde ignores a
/// field a struct lacks.
fn spec(ws: &Path, cmd: &[&str]) -> SandboxSpec {
    let home = std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let command: Vec<OsString> = cmd.iter().map(OsString::from).collect();
    let v = serde_json::json!({
        "command": command,
        "cwd": ws,
        "env": warden_sandbox::session_env(std::env::vars_os(), Vec::new(), &home),
        "mounts": [Mount { source: ws.to_path_buf(), target: ws.to_path_buf(), writable: true }],
        "hide": [],
        "hide_patterns": [],
        "limits": Limits::default(),
        "home": home,
        "hostname": "warden",
        "tty": TtyMode::Inherit,
        "session_id": format!("dgram{}", std::process::id()),
        "network": "Loopback",
    });
    serde_json::from_value(v).unwrap()
}

fn main() {
    if warden_sandbox::is_init_invocation() {
        warden_sandbox::init_main();
    }
    // Answer the test runners' listing protocol (see tests/session.rs).
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("unix_dgram: test");
        }
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let ws = ws.path().canonicalize().unwrap();
    std::fs::write(ws.join("attack.py"), include_str!("unix_dgram.py")).unwrap();
    std::fs::write(ws.join("race.c"), include_str!("unix_dgram_race.c")).unwrap();
    // The host's sockets: one in the workspace, one abstract (host network namespace).
    let host = UnixDatagram::bind(ws.join("host.dgram")).unwrap();
    host.set_nonblocking(true).unwrap();
    let name = format!("warden-test-dgram-{}", std::process::id());
    let host_abstract =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    host_abstract.set_nonblocking(true).unwrap();

    let spec = spec(&ws, &["python3", "attack.py", &name]);
    warden_sandbox::preflight(&spec).unwrap();
    let exit = warden_sandbox::spawn(&spec).unwrap().wait().unwrap();
    if let Some(m) = &exit.message {
        eprintln!("message: {m}");
    }

    let mut failed = Vec::new();
    if exit.code != 0 {
        failed.push(format!("the in-session checks failed (exit {})", exit.code));
    }
    let mut buf = [0u8; 64];
    for (what, sock) in [("workspace", &host), ("abstract", &host_abstract)] {
        match sock.recv(&mut buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok(n) => failed.push(format!(
                "the host's {what} socket received {:?}",
                String::from_utf8_lossy(&buf[..n])
            )),
            Err(e) => failed.push(format!("reading the host's {what} socket: {e}")),
        }
    }
    if failed.is_empty() {
        println!("ok unix_dgram: host datagram sockets unreachable, the session's own work");
    } else {
        for f in &failed {
            println!("FAILED unix_dgram: {f}");
        }
        std::process::exit(1);
    }
}
