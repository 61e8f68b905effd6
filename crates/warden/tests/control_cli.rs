//! The control-plane commands end to end through the real binary: a server, a policy
//! push, an enrollment token, a node that enrolls and runs `warden agent`, `status`,
//! `machines ls`, the vault and the central audit query.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod control_common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const ADMIN: &str = "test-admin-token-0123456789abcdef";

/// Kills the process when the test ends, also when it fails.
struct Reaper(Child);
impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `warden server` on 127.0.0.1:`port` with `extra` arguments, the admin token `ADMIN`
/// and a master key of `key_byte` repeated; returns once it listens.
fn start_server(home: &Path, port: u16, key_byte: &str, extra: &[&std::ffi::OsStr]) -> Reaper {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["server", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("WARDEN_HOME", home)
        .env("WARDEN_ADMIN_TOKEN", ADMIN)
        .env("WARDEN_MASTER_KEY", key_byte.repeat(32))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let server = Reaper(child);
    loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if line.contains("listening on") {
            break;
        }
    }
    // Keep reading: the server's later stderr must not hit a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    server
}

fn warden(home: &Path, server: &str, args: &[&str], stdin: Option<&str>) -> Output {
    control_common::admin_cli(home, server, ADMIN, args, stdin.unwrap_or_default())
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn push_enroll_sync_status_vault_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let (srv_home, node_home) = (dir.path().join("srv"), dir.path().join("node"));
    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let _server = start_server(&srv_home, port, "11", &[]);

    std::fs::write(
        dir.path().join("team.toml"),
        "version = 1\nname = \"team\"\n[network]\nallow = [\"api.github.com\"]\n",
    )
    .unwrap();
    let policy = dir.path().join("team.toml");
    let out = warden(
        &srv_home,
        &server,
        &["policy", "push", policy.to_str().unwrap()],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("team@v1"), "{}", text(&out));

    // An invalid policy is refused with the same diagnostics as `policy check`.
    std::fs::write(
        dir.path().join("bad.toml"),
        "version = 1\n[network]\nalow = []\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.toml");
    let out = warden(
        &srv_home,
        &server,
        &["policy", "push", bad.to_str().unwrap()],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("did you mean `allow`?"),
        "{}",
        text(&out)
    );

    let out = warden(
        &srv_home,
        &server,
        &["token", "create", "--enroll", "--label", "team=a"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let token = stdout.split_whitespace().last().unwrap().to_string();

    let out = warden(
        &node_home,
        &server,
        &["enroll", "--server", &server, "--token", &token],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    // The token is one-time.
    let other = dir.path().join("other");
    let out = warden(
        &other,
        &server,
        &["enroll", "--server", &server, "--token", &token],
        None,
    );
    assert!(!out.status.success(), "{}", text(&out));

    let agent = Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("agent")
        .env("WARDEN_HOME", &node_home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _agent = Reaper(agent);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = warden(&node_home, &server, &["status"], None);
        if text(&out).contains("team@v1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "policy never arrived: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let out = warden(&srv_home, &server, &["machines", "ls"], None);
    assert!(
        out.status.success() && text(&out).contains("team=a"),
        "{}",
        text(&out)
    );

    let out = warden(
        &srv_home,
        &server,
        &["secret", "set", "deploy-key"],
        Some("s3cr3t-value\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = warden(&srv_home, &server, &["secret", "ls"], None);
    assert!(text(&out).contains("deploy-key"), "{}", text(&out));
    assert!(!text(&out).contains("s3cr3t-value"));

    let out = warden(
        &srv_home,
        &server,
        &["audit", "query", "--surface", "network"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
}

/// `warden` with the control-plane environment plus `extra` (name, value) pairs.
fn warden_env(home: &Path, server: &str, args: &[&str], extra: &[(&str, &Path)]) -> Output {
    warden_in(home, server, args, extra, "")
}

/// [`warden_env`] with `stdin` as the standard input.
fn warden_in(
    home: &Path,
    server: &str,
    args: &[&str],
    extra: &[(&str, &Path)],
    stdin: &str,
) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warden"));
    c.args(args)
        .env("WARDEN_HOME", home)
        .env("WARDEN_SERVER", server)
        .env("WARDEN_TOKEN", ADMIN)
        .env_remove("WARDEN_SERVER_CA")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Every command that talks to the server works over HTTPS when `WARDEN_SERVER_CA`
/// names the CA of the server's certificate, and refuses the server without it.
#[test]
fn control_commands_work_over_https_with_warden_server_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (srv_home, node_home) = (d.join("srv"), d.join("node"));
    // A private CA and a server certificate for 127.0.0.1 signed by it.
    let openssl = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=warden",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
    ]);
    std::fs::write(
        d.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        "srv.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-extfile",
        "ext.cnf",
        "-out",
        "srv.crt",
    ]);
    let ca = d.join("ca.crt");
    let with_ca: &[(&str, &Path)] = &[("WARDEN_SERVER_CA", &ca)];

    let port = free_port();
    let server = format!("https://127.0.0.1:{port}");
    let (crt, key) = (d.join("srv.crt"), d.join("srv.key"));
    let _server = start_server(
        &srv_home,
        port,
        "33",
        &[
            "--tls-cert".as_ref(),
            crt.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
        ],
    );

    // Without the CA, the server's certificate is refused.
    let out = warden_env(&srv_home, &server, &["policy", "ls"], &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("certificate") && text(&out).contains("WARDEN_SERVER_CA"),
        "{}",
        text(&out)
    );

    let ok = |home: &Path, args: &[&str]| {
        let out = warden_env(home, &server, args, with_ca);
        assert!(out.status.success(), "warden {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let policy = d.join("team.toml");
    std::fs::write(
        &policy,
        "version = 1\nname = \"team\"\n[network]\nallow = [\"api.github.com\"]\n",
    )
    .unwrap();
    assert!(ok(&srv_home, &["policy", "push", policy.to_str().unwrap()]).contains("team@v1"));
    std::fs::write(
        &policy,
        "version = 1\nname = \"team\"\n[network]\nallow = [\"api.github.com\", \"pypi.org\"]\n",
    )
    .unwrap();
    assert!(ok(&srv_home, &["policy", "push", policy.to_str().unwrap()]).contains("team@v2"));
    assert!(ok(&srv_home, &["policy", "ls"]).contains("team"));
    assert!(ok(&srv_home, &["policy", "history", "team"]).contains("team"));
    ok(&srv_home, &["policy", "rollback", "team", "1"]);
    let token = ok(&srv_home, &["token", "create", "--enroll"]);
    let token = token.split_whitespace().last().unwrap().to_string();

    // A node enrolls over HTTPS and its agent keeps trusting the same CA.
    ok(
        &node_home,
        &["enroll", "--server", &server, "--token", &token],
    );
    let _agent = Reaper(
        Command::new(env!("CARGO_BIN_EXE_warden"))
            .arg("agent")
            .env("WARDEN_HOME", &node_home)
            .env_remove("WARDEN_SERVER_CA")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text(&warden_env(&node_home, &server, &["status"], &[])).contains("team@v3") {
        assert!(
            Instant::now() < deadline,
            "the bundle never arrived over HTTPS"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The server records what each machine holds every few seconds.
    while !ok(&srv_home, &["machines", "ls"]).contains("team@v3") {
        assert!(
            Instant::now() < deadline,
            "machines ls never showed team@v3"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(&srv_home, &["sessions", "ls"]);
    let out = warden_in(
        &srv_home,
        &server,
        &["secret", "set", "deploy-key"],
        with_ca,
        "s3cr3t\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(ok(&srv_home, &["secret", "ls"]).contains("deploy-key"));
    ok(
        &srv_home,
        &[
            "audit",
            "query",
            "--server",
            &server,
            "--surface",
            "network",
        ],
    );
}
