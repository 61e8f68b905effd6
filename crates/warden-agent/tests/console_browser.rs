//! The console in a real browser: headless Chromium (Debian `chromium`) driven over the
//! DevTools protocol on a pipe, clicking through the flow an admin follows — log in, edit
//! a policy with an error, fix it, publish, see the enrolled machine (a real agent)
//! pick it up, and find the audit event that machine delivered.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use warden_agent::{AgentOptions, Node};
use warden_control::client::{Auth, Client};

const ADMIN: &str = "wdn_browser_test_admin_0123456789abcdef";

fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect(
            "this test needs headless Chromium: install Debian's `chromium` package \
             (scripts/test installs it)",
        )
}

/// Chromium with the DevTools protocol on a pair of FIFOs (its fds 3 and 4).
struct Browser {
    child: Child,
    to: std::fs::File,
    from: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After `Browser.close` Chromium ends on its own, helpers included; a kill is
        // for when it does not (its helpers may then write on for a moment).
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes `dir` for good: Chromium's helper processes can still be writing into the
/// profile for a moment after the browser is gone, which makes one removal fail and
/// left the test's directory in /tmp.
fn remove_dir(dir: tempfile::TempDir) {
    let path = dir.keep();
    for _ in 0..100 {
        if std::fs::remove_dir_all(&path).is_ok() || !path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("could not remove {}", path.display());
}

impl Browser {
    fn launch(dir: &Path) -> Browser {
        let fifo_in = dir.join("cdp-in");
        let fifo_out = dir.join("cdp-out");
        for f in [&fifo_in, &fifo_out] {
            assert!(Command::new("mkfifo").arg(f).status().unwrap().success());
        }
        let profile = dir.join("profile");
        let child = Command::new("sh")
            .arg("-c")
            .arg(
                "exec \"$0\" --headless=new --no-sandbox --disable-gpu --no-first-run \
                  --no-default-browser-check --disable-extensions --no-proxy-server \
                  --disable-background-networking --disable-dev-shm-usage \
                  --user-data-dir=\"$1\" --remote-debugging-pipe about:blank \
                  3<\"$2\" 4>\"$3\"",
            )
            .arg(chromium())
            .arg(&profile)
            .arg(&fifo_in)
            .arg(&fifo_out)
            // Chromium's own scratch files (`org.chromium.Chromium.*`, left behind when it
            // is killed) go into the test's directory, removed with it, not into /tmp.
            .env("TMPDIR", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Same order as the shell: its fd 3 (our writer) first, then fd 4.
        let to = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo_in)
            .unwrap();
        let out = std::fs::File::open(&fifo_out).unwrap();
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            while r.read_until(0, &mut buf).is_ok_and(|n| n > 0) {
                buf.pop();
                if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                    && tx.send(v).is_err()
                {
                    break;
                }
                buf.clear();
            }
        });
        let mut b = Browser {
            child,
            to,
            from,
            next_id: 0,
            session: None,
        };
        let t = b.call("Target.createTarget", json!({"url": "about:blank"}));
        let target = t["targetId"].as_str().unwrap().to_string();
        let s = b.call(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        b.session = Some(s["sessionId"].as_str().unwrap().to_string());
        b
    }

    /// Send one DevTools command and wait for its answer.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let v = self.call_raw(method, params);
        assert!(v.get("error").is_none(), "{method}: {v}");
        v["result"].clone()
    }

    /// The whole answer, errors included.
    fn call_raw(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer to {method}"));
            if v["id"] == id {
                return v;
            }
        }
    }

    /// Evaluate a JavaScript expression in the page; its value.
    fn eval(&mut self, expr: &str) -> Value {
        // During a navigation the page's context may be gone: that reads as null.
        let r = self.call_raw(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        );
        r["result"]["result"]["value"].clone()
    }

    fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_for(
            &format!("page {url}"),
            "document.readyState === 'complete' && location.href !== 'about:blank'",
        );
    }

    /// Wait until a JavaScript condition holds on the current page.
    fn wait_for(&mut self, what: &str, cond: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.eval(&format!(
                "(() => {{ try {{ return !!({cond}); }} catch (e) {{ return false; }} }})()"
            )) == json!(true)
            {
                return;
            }
            let page = self.eval("document.body ? document.body.innerText : ''");
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; page: {page}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Put text in a field.
    fn fill(&mut self, id: &str, text: &str) {
        let set = format!(
            "(() => {{ const e = document.getElementById({}); e.value = {}; return true; }})()",
            json!(id),
            json!(text)
        );
        assert_eq!(self.eval(&set), json!(true), "field #{id}");
    }

    /// Click an element, then wait for the page it leads to.
    fn click(&mut self, id: &str) {
        let js = format!(
            "(() => {{ window.__before = 1; document.getElementById({}).click(); return true; }})()",
            json!(id)
        );
        assert_eq!(self.eval(&js), json!(true), "button #{id}");
        // The click submits a form: wait for the next document to finish loading.
        self.wait_for(
            &format!("the page after #{id}"),
            "window.__before === undefined && document.readyState === 'complete'",
        );
    }

    fn text(&mut self, selector: &str) -> String {
        self.eval(&format!(
            "(document.querySelector({}) || {{innerText: ''}}).innerText",
            json!(selector)
        ))
        .as_str()
        .unwrap_or("")
        .to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_flow_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let mut c =
        warden_control::Config::new("127.0.0.1:0".parse().unwrap(), dir.path().join("server"));
    c.admin_token = Some(ADMIN.into());
    let server = warden_control::start(c).await.unwrap();
    let base = format!("http://{}", server.addr);

    // An enrolled machine with its agent running.
    let token: Value = Client::new(&base, Auth::Bearer(ADMIN.into()))
        .unwrap()
        .post_json("/api/v1/tokens", &json!({"role": "enroll"}))
        .await
        .unwrap()
        .json()
        .unwrap();
    let node = Node::new(&dir.path().join("node"));
    let id = node
        .enroll(&base, token["token"].as_str().unwrap(), "browser-node")
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = node.clone();
    let opts = AgentOptions {
        upload_interval: Duration::from_millis(100),
        ..AgentOptions::default()
    };
    let agent = tokio::spawn(async move {
        runner
            .run(opts, async move {
                let _ = stop_rx.await;
            })
            .await
    });

    let b_dir = dir.path().to_path_buf();
    let b_base = base.clone();
    let machine = id.machine_id.clone();
    let spool = node.home().join("audit.jsonl");
    tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch(&b_dir);
        // Log in.
        b.goto(&format!("{b_base}/login"));
        b.fill("token", ADMIN);
        b.click("login");
        b.wait_for(
            "the overview",
            "document.getElementById('summary') !== null",
        );

        // A policy with an error: the editor shows the diagnostics, nothing is published.
        b.goto(&format!("{b_base}/policies/edit"));
        b.fill(
            "source",
            "version = 1\nname = \"browser\"\n[network]\nallow = [\"api.github.com\"\n",
        );
        b.fill("target", "all");
        b.click("publish");
        let diag = b.text("#diagnostics");
        assert!(diag.contains("policy.toml:"), "diagnostics shown: {diag:?}");

        // Fixed: validate, then publish.
        b.fill(
            "source",
            "version = 1\nname = \"browser\"\n[network]\nallow = [\"api.github.com\"]\n",
        );
        b.click("validate");
        assert!(
            b.text("#ok").contains("Valid: browser"),
            "{}",
            b.text("main")
        );
        b.click("publish");
        b.wait_for(
            "the published notice",
            "location.pathname === '/policies/browser'",
        );
        assert!(b.text("#ok").contains("Published browser v1"));

        // The machine picks it up: its agent fetches the bundle after the stream notice.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            b.goto(&format!("{b_base}/machines"));
            let row = b.text("#machines");
            if row.contains(&machine) && row.contains("browser@v1") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "machine never showed browser@v1: {row}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }

        // A session on that machine is denied something; its agent delivers the event.
        let log = warden_audit::AuditLog::open(&spool).unwrap();
        let stamp = warden_audit::Stamp {
            session: "s-browser".into(),
            machine: machine.clone(),
            user: "alice".into(),
            policy: "browser@x".into(),
        };
        let ev = warden_audit::Event::new(
            warden_audit::Surface::Network,
            "connect",
            "exfil.example:443",
            warden_audit::Verdict::Deny,
        );
        let _ticket = log.record(&stamp, ev).unwrap();
        log.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        b.goto(&format!("{b_base}/audit"));
        loop {
            b.fill("f-target", "exfil.example:443");
            b.fill("f-decision", "deny");
            b.click("search");
            let rows = b.text("#events");
            if rows.contains("exfil.example:443") && rows.contains("s-browser") {
                break;
            }
            assert!(Instant::now() < deadline, "event never found: {rows}");
            std::thread::sleep(Duration::from_millis(200));
        }
        b.session = None;
        let _ = b.call_raw("Browser.close", json!({}));
    })
    .await
    .unwrap();

    let _ = stop_tx.send(());
    agent.await.unwrap().unwrap();
    server.stop().await;
    remove_dir(dir);
}
