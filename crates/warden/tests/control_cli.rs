//! The control-plane commands end to end through the real binary: a server, a policy
//! push, an enrollment token, a node that enrolls and runs `warden agent`, `status`,
//! `machines ls`, the vault and the central audit query.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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

fn warden(home: &Path, server: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .env("WARDEN_HOME", home)
        .env("WARDEN_SERVER", server)
        .env("WARDEN_TOKEN", ADMIN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["server", "--listen", &format!("127.0.0.1:{port}")])
        .env("WARDEN_HOME", &srv_home)
        .env("WARDEN_ADMIN_TOKEN", ADMIN)
        .env("WARDEN_MASTER_KEY", "11".repeat(32))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let _server = Reaper(child);
    let mut lines = stderr.lines();
    loop {
        let line = lines.next().expect("server exited").unwrap();
        if line.contains("listening on") {
            break;
        }
    }

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
