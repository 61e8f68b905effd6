//! `warden run` behaving normally: exit codes, pipes, the terminal, the environment, real
//! programs in the workspace, workspace modes, and Warden's own failures (SPEC §3).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod run_common;

use run_common::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

fn exit_codes(b: B) {
    let env = Env::new_for(b, BASE);
    assert_code(&env.run(&["/bin/true"]), 0);
    assert_code(&env.sh("exit 3"), 3);
    std::fs::write(env.ws.join("noexec.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        env.ws.join("noexec.sh"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let o = env.run(&["./noexec.sh"]);
    assert_code(&o, 126);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("noexec.sh"),
        "{}",
        text(&o)
    );
    let o = env.run(&["no-such-command-warden"]);
    assert_code(&o, 127);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not found"),
        "{}",
        text(&o)
    );
    assert_code(&env.sh("kill -9 $$"), 137);
    assert_code(&env.run(&["/"]), 126);
    let ev = env.audit_events();
    assert!(
        ev.iter()
            .any(|e| e["action"] == "end" && e["exit_status"] == 3),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|e| e["action"] == "start" && e["backend"] == b.flag()),
        "{ev:?}"
    );
    assert!(
        ev.iter().any(|e| e["surface"] == "filesystem"
            && e["action"] == "mount"
            && e["decision"] == "allow"),
        "{ev:?}"
    );
}

fn pipes_pass_through(b: B) {
    let env = Env::new_for(b, BASE);
    let mut c = env.cmd(&[], &["sh", "-c", "tr a-z A-Z; echo err >&2"]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello pipes\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "HELLO PIPES\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("err"));
}

fn environment_is_filtered(b: B) {
    let env = Env::new_for(b, BASE);
    let mut c = env.cmd(
        &["--env", "ADDED=yes", "--env", "COPIED"],
        &["sh", "-c", "env | sort"],
    );
    c.env("AWS_SECRET_ACCESS_KEY", "leak")
        .env("COPIED", "from-host")
        .env("LC_TIME", "C")
        .env("SSH_AUTH_SOCK", "/tmp/x");
    let o = c.output().unwrap();
    let out = stdout(&o);
    assert!(
        !out.contains("leak") && !out.contains("SSH_AUTH_SOCK"),
        "{out}"
    );
    assert!(
        out.contains("ADDED=yes") && out.contains("COPIED=from-host") && out.contains("LC_TIME=C"),
        "{out}"
    );
    assert!(
        out.contains(&format!("HOME={}", env.home.display())),
        "{out}"
    );
    // What Warden itself sets: the proxy variables and the trust-store variables, with
    // exactly Warden's values (no host value rides in under their names).
    let warden_set = |key: &str, value: &str| match key.to_ascii_uppercase().as_str() {
        "HTTP_PROXY" | "HTTPS_PROXY" | "ALL_PROXY" => value == "http://127.0.0.1:3128",
        "NO_PROXY" => value == "localhost,127.0.0.1,::1",
        "IS_SANDBOX" => value == "1",
        "SSL_CERT_FILE"
        | "REQUESTS_CA_BUNDLE"
        | "CURL_CA_BUNDLE"
        | "NODE_EXTRA_CA_CERTS"
        | "GIT_SSL_CAINFO"
        | "PIP_CERT"
        | "AWS_CA_BUNDLE"
        | "CARGO_HTTP_CAINFO"
        | "DENO_CERT"
        | "HTTPLIB2_CA_CERTS"
        | "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"
        | "NIX_SSL_CERT_FILE"
        | "BUNDLE_SSL_CA_CERT" => value == "/etc/ssl/certs/ca-certificates.crt",
        _ => false,
    };
    assert!(out.contains("HTTPS_PROXY=http://127.0.0.1:3128"), "{out}");
    assert!(out.contains("no_proxy=localhost,127.0.0.1,::1"), "{out}");
    assert!(out.contains("IS_SANDBOX=1\n"), "{out}");
    for line in out.lines() {
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        if warden_set(key, value) {
            continue;
        }
        assert!(
            [
                "PATH",
                "HOME",
                "USER",
                "SHELL",
                "TERM",
                "COLORTERM",
                "LANG",
                "TZ",
                "ADDED",
                "COPIED",
                "PWD",
                "SHLVL",
                "_",
                "OLDPWD"
            ]
            .contains(&key)
                || key.starts_with("LC_"),
            "unexpected variable {key} in the session: {out}"
        );
    }
}

fn python_and_node_run_in_the_workspace(b: B) {
    let env = Env::new_for(b, BASE);
    std::fs::write(env.ws.join("s.py"), "import json, pathlib\npathlib.Path('py.out').write_text(json.dumps({'ok': 1}))\nprint('py-ok')\n").unwrap();
    std::fs::write(
        env.ws.join("s.js"),
        "require('fs').writeFileSync('js.out', 'x'); console.log('node-ok')\n",
    )
    .unwrap();
    let o = env.sh("python3 s.py && node s.js");
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("py-ok") && stdout(&o).contains("node-ok"),
        "{}",
        text(&o)
    );
    assert!(env.ws.join("py.out").exists() && env.ws.join("js.out").exists());
}

/// Everyday file tools work on the workspace: `ls -l` and `stat` (coreutils' statx
/// with AT_NO_AUTOMOUNT, which Debian 12's gVisor rejected), `find`, `du`.
fn file_tools_work_in_the_workspace(b: B) {
    let env = Env::new_for(b, BASE);
    std::fs::write(env.ws.join("f.txt"), "12345").unwrap();
    let o = env.sh("ls -l f.txt && stat -c '%n %s' f.txt && find . -name f.txt && du -s . >/dev/null && echo tools-ok");
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(
        out.contains("f.txt 5") && out.contains("./f.txt") && out.contains("tools-ok"),
        "{}",
        text(&o)
    );
}

fn workspace_read_only_and_none(b: B) {
    let env = Env::new_for(b, "[filesystem]\nworkspace = \"ro\"\n");
    std::fs::write(env.ws.join("f"), "content").unwrap();
    let o = env.sh("cat f; echo x > g 2>/dev/null && echo WROTE; exit 0");
    assert!(
        stdout(&o).contains("content") && !stdout(&o).contains("WROTE"),
        "{}",
        text(&o)
    );
    let env = Env::new_for(b, "[filesystem]\nworkspace = \"none\"\n");
    std::fs::write(env.ws.join("f"), "content").unwrap();
    let o = env.sh(&format!("cat {}/f 2>&1; pwd", env.ws.display()));
    assert!(!stdout(&o).contains("content"), "{}", text(&o));
}

#[test]
fn warden_failures_exit_125() {
    let env = Env::new("[filesystem]\nworkspace = \"rw\"\nbogus_key = 1\n");
    let o = env.run(&["/bin/true"]);
    assert_code(&o, 125);
    // A policy that requires gVisor refuses a weaker --backend, naming both.
    let env = Env::new(&format!("{BASE}\n[sandbox]\nbackend = \"gvisor\"\n"));
    let o = env
        .cmd(&["--backend", "namespaces"], &["/bin/true"])
        .output()
        .unwrap();
    assert_code(&o, 125);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--backend namespaces") && err.contains("requires the gvisor backend"),
        "{}",
        text(&o)
    );
    let env = Env::new(BASE);
    let o = Command::new(WARDEN)
        .args([
            "run",
            "--policy",
            "/nonexistent/policy.toml",
            "--",
            "/bin/true",
        ])
        .env("WARDEN_HOME", &env.warden_home)
        .current_dir(&env.ws)
        .output()
        .unwrap();
    assert_code(&o, 125);
    // A warden without its session init next to it runs nothing, and says what to do.
    let lonely = env.dir.path().join("lonely");
    std::fs::create_dir(&lonely).unwrap();
    let bin = lonely.join("warden");
    if std::fs::hard_link(WARDEN, &bin).is_err() {
        std::fs::copy(WARDEN, &bin).unwrap();
    }
    let ran = env.ws.join("ran");
    let o = Command::new(&bin)
        .args(["run", "--policy"])
        .arg(&env.policy)
        .args(["--workspace"])
        .arg(&env.ws)
        .args(["--", "touch"])
        .arg(&ran)
        .env("WARDEN_HOME", &env.warden_home)
        .output()
        .unwrap();
    assert_code(&o, 125);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&lonely.join("warden-init").display().to_string())
            && err.contains("cargo install --path crates/warden"),
        "{}",
        text(&o)
    );
    assert!(!ran.exists(), "the command ran without its init");
    // Started by hand, the init does nothing.
    let o = Command::new(WARDEN_INIT).output().unwrap();
    assert_code(&o, 2);
    assert!(
        text(&o).contains("not a command of its own"),
        "{}",
        text(&o)
    );
}

/// Runs `warden run` on a pty made by python and scripts it; returns python's stdout.
fn on_pty(env: &Env, script: &str, cmd: &[&str]) -> (String, Option<i32>) {
    let mut argv: Vec<String> = vec![
        WARDEN.into(),
        "run".into(),
        "--policy".into(),
        env.policy.display().to_string(),
        "--workspace".into(),
        env.ws.display().to_string(),
        "--backend".into(),
        env.backend.flag().into(),
        "--".into(),
    ];
    argv.extend(cmd.iter().map(|s| s.to_string()));
    let py = format!(
        r#"
import os, pty, sys, time, fcntl, termios, struct, json, select, signal
argv = json.loads(sys.argv[1])
pid, fd = pty.fork()
if pid == 0:
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack('HHHH', 30, 90, 0, 0))
    os.execv(argv[0], argv)
out = b''
def read_until(tok, t=10):
    global out
    end = time.time() + t
    while tok.encode() not in out and time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try: out += os.read(fd, 4096)
            except OSError: break
    return tok.encode() in out
def send(b): os.write(fd, b)
def resize(rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack('HHHH', rows, cols, 0, 0))
    os.kill(pid, signal.SIGWINCH)
{script}
end = time.time() + 10
while time.time() < end:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            d = os.read(fd, 4096)
            if not d: break
            out += d
        except OSError: break
_, st = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors='replace'))
sys.exit(os.waitstatus_to_exitcode(st))
"#
    );
    let o = Command::new("python3")
        .arg("-c")
        .arg(py)
        .arg(serde_json::to_string(&argv).unwrap())
        .env("WARDEN_HOME", &env.warden_home)
        .env("HOME", &env.home)
        .env("TERM", "xterm")
        .current_dir(&env.ws)
        .output()
        .unwrap();
    (
        format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr)),
        o.status.code(),
    )
}

fn tty_is_a_pty_with_resize(b: B) {
    let env = Env::new_for(b, BASE);
    let (out, code) = on_pty(
        &env,
        "read_until('READY1'); resize(40, 100); time.sleep(0.3); send(b'go\\n')",
        &[
            "sh",
            "-c",
            "test -t 0 && echo IS-TTY; stty size; echo READY1; read x; stty size; echo DONE",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("IS-TTY")
            && out.contains("30 90")
            && out.contains("40 100")
            && out.contains("DONE"),
        "{out}"
    );
}

/// A full-screen program is rarely the session's first process (a shell or an agent
/// starts it): a window size change must reach it too.
fn resize_reaches_a_process_below_the_first(b: B) {
    let env = Env::new_for(b, BASE);
    let py = "import signal, sys, time\n\
        signal.signal(signal.SIGWINCH, lambda *a: (print('WINCHED', flush=True), sys.exit(0)))\n\
        print('READY1', flush=True)\n\
        time.sleep(10)";
    let (out, code) = on_pty(
        &env,
        "read_until('READY1'); time.sleep(0.2); resize(41, 101)",
        &["sh", "-c", &format!("python3 -c \"{py}\"; echo AFTER")],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("WINCHED") && out.contains("AFTER"), "{out}");
}

/// `>out 2>&1`: both streams on one open file, interleaved as written.
fn stdout_and_stderr_to_one_file_keep_every_line(b: B) {
    let env = Env::new_for(b, BASE);
    let path = env.dir.path().join("out.txt");
    let file = std::fs::File::create(&path).unwrap();
    let status = env
        .cmd(&[], &["sh", "-c", "echo one; echo two >&2; echo three"])
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let out = std::fs::read_to_string(&path).unwrap();
    // Warden's own warnings may come first; the session's lines follow in order.
    assert!(out.ends_with("one\ntwo\nthree\n"), "{out:?}");
}

fn ctrl_c_reaches_the_session(b: B) {
    let env = Env::new_for(b, BASE);
    let (out, code) = on_pty(
        &env,
        "read_until('SLEEPING'); time.sleep(0.2); send(b'\\x03')",
        &["sh", "-c", "echo SLEEPING; exec sleep 30"],
    );
    assert_eq!(code, Some(130), "{out}");
}

fn sigterm_is_forwarded_to_the_session(b: B) {
    let env = Env::new_for(b, BASE);
    let mut child = env
        .cmd(&[], &["sh", "-c", "echo started; exec sleep 30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "started\n");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert_eq!(child.wait().unwrap().code(), Some(143));
}

fn sigkill_to_warden_kills_the_session(b: B) {
    let env = Env::new_for(b, BASE);
    let marker = env.ws.join("still-running");
    let mut child = env
        .cmd(&[], &["sh", "-c", "sleep 2; touch still-running"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SIGKILL: the harshest case (no chance to forward anything).
    let _ = Command::new("kill")
        .arg("-9")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert!(!marker.exists(), "the session outlived warden run");
}

crate::per_backend!(
    exit_codes,
    pipes_pass_through,
    environment_is_filtered,
    python_and_node_run_in_the_workspace,
    file_tools_work_in_the_workspace,
    workspace_read_only_and_none,
    tty_is_a_pty_with_resize,
    resize_reaches_a_process_below_the_first,
    stdout_and_stderr_to_one_file_keep_every_line,
    ctrl_c_reaches_the_session,
    sigterm_is_forwarded_to_the_session,
    sigkill_to_warden_kills_the_session,
);

/// A credential's real value typed on the command line is recorded as its placeholder.
#[test]
fn the_recorded_command_line_never_holds_a_credential() {
    let env = Env::new(&format!(
        "{BASE}\n[[credentials]]\nname = \"tok\"\nsource = \"env:WARDEN_TEST_TOK\"\nhosts = [\"api.example.com\"]\nenv = \"TOK\"\n"
    ));
    let real = "tok-real-value-8c1d0e7f3a";
    let o = env
        .cmd(&[], &["sh", "-c", &format!("echo \"$TOK\" # {real}")])
        .env("WARDEN_TEST_TOK", real)
        .output()
        .unwrap();
    assert_code(&o, 0);
    let placeholder = stdout(&o).trim().to_string();
    assert!(
        placeholder.len() >= 16 && placeholder != real,
        "{}",
        text(&o)
    );
    let log = std::fs::read_to_string(env.audit()).unwrap();
    assert!(!log.contains(real), "the real value is in the audit log");
    assert!(log.contains(&placeholder), "{log}");
}

/// A credential keeps its placeholder from one session to the next on the same machine
/// (Warden's home holds the key, 0600, out of every session's sight), so an agent that
/// remembers which key its user approved keeps working; another machine (another home)
/// or another value gets another placeholder. The key is made only when a policy
/// declares a credential.
#[test]
fn a_credential_keeps_its_placeholder_from_one_session_to_the_next() {
    let env = Env::new(&format!(
        "{BASE}\n[[credentials]]\nname = \"tok\"\nsource = \"env:WARDEN_TEST_TOK\"\nhosts = [\"api.example.com\"]\nenv = \"TOK\"\n"
    ));
    let real = "tok-real-value-2b7e151628aed2a6";
    let session = |home: &std::path::Path, value: &str| {
        let key = home.join("placeholder.key");
        let o = env
            .cmd(
                &[],
                &[
                    "sh",
                    "-c",
                    &format!(
                        "echo \"$TOK\"; cat {} >/dev/null 2>&1 || echo hidden",
                        key.display()
                    ),
                ],
            )
            .env("WARDEN_TEST_TOK", value)
            .env("WARDEN_HOME", home)
            .output()
            .unwrap();
        assert_code(&o, 0);
        let out = stdout(&o);
        let mut lines = out.lines();
        let placeholder = lines.next().unwrap_or_default().to_string();
        assert!(
            placeholder.len() >= 16 && placeholder != value,
            "{}",
            text(&o)
        );
        assert_eq!(
            lines.next(),
            Some("hidden"),
            "the key is visible: {}",
            text(&o)
        );
        placeholder
    };
    let first = session(&env.warden_home, real);
    assert_eq!(session(&env.warden_home, real), first);
    let key = env.warden_home.join("placeholder.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    let other_home = env.dir.path().join("other-home");
    assert_ne!(session(&other_home, real), first);
    assert_ne!(
        session(&env.warden_home, "tok-real-value-3c4fcf098815f7ab"),
        first
    );
    // A policy without credentials leaves Warden's home without a key.
    let plain = Env::new(BASE);
    assert_code(&plain.run(&["/bin/true"]), 0);
    assert!(!plain.warden_home.join("placeholder.key").exists());
}
