//! A real `warden server` for the tests that need an enrolled machine: started on a
//! free loopback port, killed when dropped, plus the admin CLI and the node's
//! enrolment and agent.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const WARDEN: &str = env!("CARGO_BIN_EXE_warden");

/// A child process killed and reaped when dropped.
pub struct Reaper(pub Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `warden ARGS` against the server at `url` with the admin token `token`, `home` as
/// WARDEN_HOME and `stdin` as its standard input.
pub fn admin_cli(home: &Path, url: &str, token: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(WARDEN)
        .args(args)
        .env("WARDEN_HOME", home)
        .env("WARDEN_SERVER", url)
        .env("WARDEN_TOKEN", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut input, stdin.as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// `warden server` with `home` as its WARDEN_HOME and `admin` as its bootstrap token.
pub struct ControlServer {
    pub url: String,
    admin: &'static str,
    _child: Reaper,
}

impl ControlServer {
    pub fn start(home: &Path, admin: &'static str) -> ControlServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(WARDEN)
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .env("WARDEN_HOME", home)
            .env("WARDEN_ADMIN_TOKEN", admin)
            .env("WARDEN_MASTER_KEY", "22".repeat(32))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let child = Reaper(child);
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
        while !lines
            .next()
            .expect("warden server exited")
            .unwrap()
            .contains("listening on")
        {}
        ControlServer {
            url: format!("http://127.0.0.1:{port}"),
            admin,
            _child: child,
        }
    }

    /// `warden ARGS` as this server's admin, with `home` as WARDEN_HOME.
    pub fn cli(&self, home: &Path, args: &[&str]) -> Output {
        self.cli_with_stdin(home, args, "")
    }

    /// [`ControlServer::cli`] with `stdin` as its standard input.
    pub fn cli_with_stdin(&self, home: &Path, args: &[&str], stdin: &str) -> Output {
        admin_cli(home, &self.url, self.admin, args, stdin)
    }

    /// Enroll the machine whose WARDEN_HOME is `home` with a fresh enrolment token,
    /// start its agent (stopped when the returned guard is dropped) and wait until
    /// `warden status` shows `policy` (e.g. `team@v1`) in force.
    pub fn enroll_with_agent(&self, home: &Path, policy: &str) -> Reaper {
        let o = self.cli(home, &["token", "create", "--enroll"]);
        assert!(o.status.success(), "token create: {o:?}");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let token = out.split_whitespace().last().unwrap().to_string();
        let o = self.cli(home, &["enroll", "--server", &self.url, "--token", &token]);
        assert!(o.status.success(), "enroll: {o:?}");
        let agent = Reaper(
            Command::new(WARDEN)
                .arg("agent")
                .env("WARDEN_HOME", home)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let t = std::time::Instant::now();
        loop {
            let o = self.cli(home, &["status"]);
            if String::from_utf8_lossy(&o.stdout).contains(policy) {
                return agent;
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(30),
                "{policy} never arrived: {o:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
