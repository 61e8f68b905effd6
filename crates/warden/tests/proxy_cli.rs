//! `warden proxy` end to end: the real binary, a real upstream, `curl` as the client,
//! live reload from the policy file and SIGHUP, an invalid policy kept out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A tiny upstream: answers every request with 200 "hello from upstream".
fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "hello from upstream";
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

struct Proxy {
    child: Child,
    addr: SocketAddr,
    stderr: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Proxy {
    fn start(policy: &std::path::Path, home: &std::path::Path) -> Proxy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["proxy", "--listen", "127.0.0.1:0", "--policy"])
            .arg(policy)
            .env("WARDEN_HOME", home)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let mut p = Proxy {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            stderr: rx,
            log: Vec::new(),
        };
        let line = p.wait_for("listening on");
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap();
        p.addr = addr.parse().unwrap();
        p
    }

    /// Wait (up to 10 s) for a stderr line containing `what`.
    fn wait_for(&mut self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self.log.iter().find(|l| l.contains(what)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) => self.log.push(l),
                Err(_) => panic!("no `{what}` on stderr; got {:#?}", self.log),
            }
        }
    }

    fn curl(&self, url: &str) -> u16 {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
                "-x",
            ])
            .arg(format!("http://{}", self.addr))
            .arg(url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Poll until `url` answers `code` (reloads take effect within a second).
    fn expect_soon(&self, url: &str, code: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.curl(url);
            if got == code {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{url}: still {got}, wanted {code}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_policy(path: &std::path::Path, allow: &str) {
    std::fs::write(
        path,
        format!("version = 1\nname = \"cli\"\n[network]\nallow = [{allow}]\n"),
    )
    .unwrap();
}

#[test]
fn proxy_enforces_reloads_and_keeps_the_last_good_policy() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let policy = dir.path().join("policy.toml");
    let up = upstream();
    let url = format!("http://127.0.0.1:{}/", up.port());
    write_policy(&policy, &format!("\"127.0.0.1:{}\"", up.port()));
    let mut proxy = Proxy::start(&policy, &home);
    assert_eq!(proxy.curl(&url), 200);

    // A name that resolves (via /etc/hosts) to loopback, without an IP entry: denied.
    write_policy(&policy, &format!("\"localhost:{}\"", up.port()));
    proxy.expect_soon(&format!("http://localhost:{}/", up.port()), 403);
    proxy.expect_soon(&url, 403);
    proxy.wait_for("reloaded");

    // An invalid policy is reported and the old one stays.
    std::fs::write(&policy, "version = 1\n[network]\nalow = []\n").unwrap();
    proxy.wait_for("is invalid");
    // The diagnostics follow, naming the bad key.
    proxy.wait_for("alow");
    assert_eq!(proxy.curl(&url), 403);

    // Back to allowing it; SIGHUP also reloads.
    write_policy(&policy, &format!("\"127.0.0.1:{}\"", up.port()));
    proxy.expect_soon(&url, 200);
    let st = Command::new("kill")
        .args(["-HUP", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    proxy.wait_for("(SIGHUP)");
    assert_eq!(proxy.curl(&url), 200);

    // Every decision is in the default audit log under WARDEN_HOME.
    drop(proxy);
    let audit = std::fs::read_to_string(home.join("audit.jsonl")).unwrap();
    assert!(audit.contains("\"decision\":\"deny\""), "{audit}");
    assert!(audit.contains("\"action\":\"close\""), "{audit}");
    assert!(audit.contains("policy_reload"), "{audit}");
}

#[test]
fn invalid_policy_at_start_is_exit_125() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "version = 1\n[network]\nallow = [\"a..b\"]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["proxy", "--listen", "127.0.0.1:0", "--policy"])
        .arg(&policy)
        .env("WARDEN_HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("policy.toml"), "{err}");
}
