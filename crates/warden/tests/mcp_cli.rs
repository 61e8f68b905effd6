//! `warden mcp` end to end: the real binary with a real policy (tools.deny and a Cedar
//! per-argument rule), driven by the official Python `mcp` SDK client over stdio and
//! Streamable HTTP, in front of `@modelcontextprotocol/server-everything` and
//! warden-mcp's test server. The peers are installed by scripts/test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod control_common;

use control_common::ControlServer;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const WARDEN: &str = env!("CARGO_BIN_EXE_warden");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../warden-mcp/tests/fixtures")
        .canonicalize()
        .unwrap()
}

/// What a test server's own sandbox must see: the fixtures, read-only (SPEC §4: a
/// server sees the system directories and nothing else unless its policy mounts it).
fn fixture_mounts() -> String {
    format!(
        "filesystem.mounts = [{{ host = \"{}\", mode = \"ro\" }}]",
        fixtures().display()
    )
}

fn python() -> PathBuf {
    let p = std::env::var_os("WARDEN_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/mcp-venv/bin/python")
        });
    assert!(
        p.exists(),
        "the Python MCP SDK is missing: run scripts/test (it creates target/mcp-venv), or set WARDEN_TEST_PYTHON; looked for {}",
        p.display()
    );
    p
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let js =
        fixtures().join("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        js.exists(),
        "server-everything is missing: run `npm ci --prefix crates/warden-mcp/tests/fixtures/node` (scripts/test does)"
    );
    let policy = format!(
        r#"version = 1
name = "mcp-test"

[[mcp.servers]]
name = "everything"
command = ["node", "{js}", "stdio"]
tools.deny = ["get-env"]
{mounts}

[[mcp.servers]]
name = "test"
command = ["python3", "{srv}"]
{mounts}

[cedar]
files = ["rules/*.cedar"]
"#,
        js = js.display(),
        srv = fixtures().join("py/test_server.py").display(),
        mounts = fixture_mounts(),
    );
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/mcp.cedar"),
        "forbid (principal, action == Warden::Action::\"call_tool\", resource)\nwhen { context.args has path && context.args.path like \"/etc/*\" };\nforbid (principal, action == Warden::Action::\"get_prompt\", resource == Warden::Prompt::\"everything/args-prompt\");\n",
    )
    .unwrap();
    dir
}

fn client(dir: &Path, scenario: &str, transport: &[&str]) -> Value {
    let out = dir.join(format!("report-{scenario}.json"));
    let status = Command::new(python())
        .arg(fixtures().join("py/client.py"))
        .arg(&out)
        .arg(scenario)
        .args(transport)
        .env("WARDEN_HOME", dir.join("home"))
        .status()
        .unwrap();
    assert!(status.success());
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

fn check_main(r: &Value) {
    assert!(r.get("fatal").is_none(), "{r:#}");
    assert_eq!(r["initialize"]["protocolVersion"], "2025-11-25");
    let names: Vec<&str> = r["tools"]["ok"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"everything__echo") && names.contains(&"test__read_file"),
        "{names:?}"
    );
    assert!(!names.contains(&"everything__get-env"), "{names:?}");
    assert_eq!(r["echo"]["ok"]["content"][0]["text"], "Echo: hello gateway");
    assert!(r["structured"]["ok"].get("structuredContent").is_some());
    // tools.deny names its policy line; the Cedar rule names its file and line.
    let m = r["denied"]["error"]["message"].as_str().unwrap();
    assert!(m.contains("policy.toml:7"), "{m}");
    let m = r["read_etc"]["error"]["message"].as_str().unwrap();
    assert!(m.contains("rules/mcp.cedar:1"), "{m}");
    // Prompts: a configured server's are allowed; a Cedar get_prompt forbid refuses one.
    assert!(
        r["prompt_ok"]["ok"]["messages"][0].is_object(),
        "{:#}",
        r["prompt_ok"]
    );
    let m = r["prompt_denied"]["error"]["message"].as_str().unwrap();
    assert!(m.contains("rules/mcp.cedar:3"), "{m}");
    assert_eq!(
        r["read_ok"]["ok"]["structuredContent"]["path"],
        "/tmp/ok.txt"
    );
    assert!(
        r["secret_arg"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("secret scan")
    );
    assert_eq!(r["crash"]["error"]["code"], -32011);
    assert_eq!(
        r["echo_after_crash"]["ok"]["content"][0]["text"],
        "Echo: still here"
    );
    assert!(r["notifications"].to_string().contains("list_changed"));
}

fn audit(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("home/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn stdio_gateway_with_policy_and_cedar_rules() {
    let dir = setup();
    let policy = dir.path().join("policy.toml");
    let r = client(
        dir.path(),
        "main",
        &["--cmd", WARDEN, "mcp", "--policy", policy.to_str().unwrap()],
    );
    check_main(&r);
    let events = audit(dir.path());
    let deny = events
        .iter()
        .find(|e| e["target"] == "test/read_file" && e["decision"] == "deny")
        .unwrap();
    assert_eq!(deny["rule"], "rules/mcp.cedar:1");
    assert_eq!(deny["surface"], "mcp");
    assert!(deny["policy"].as_str().unwrap().starts_with("mcp-test@"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn raw_http(port: u16, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn http_gateway_auth_origin_host_and_python_client() {
    let dir = setup();
    let port = free_port();
    let child = Command::new(WARDEN)
        .args(["mcp", "--policy"])
        .arg(dir.path().join("policy.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("WARDEN_HOME", dir.path().join("home"))
        .env("WARDEN_MCP_TOKEN", "test-token-1")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Kill(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let req = |headers: &str| {
        format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    assert!(
        raw_http(port, &req("")).starts_with("HTTP/1.1 401"),
        "no token"
    );
    assert!(raw_http(port, &req("Authorization: Bearer wrong\r\n")).starts_with("HTTP/1.1 401"));
    let evil_origin = req("Authorization: Bearer test-token-1\r\nOrigin: http://evil.example\r\n");
    assert!(
        raw_http(port, &evil_origin).starts_with("HTTP/1.1 403"),
        "bad Origin"
    );
    let rebound = format!(
        "POST /mcp HTTP/1.1\r\nHost: attacker.example:{port}\r\nAuthorization: Bearer test-token-1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert!(
        raw_http(port, &rebound).starts_with("HTTP/1.1 403"),
        "DNS rebinding Host"
    );
    let big = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer test-token-1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        64 * 1024 * 1024
    );
    assert!(
        raw_http(port, &big).starts_with("HTTP/1.1 413"),
        "body limit"
    );
    let junk = "POST /mcp HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer test-token-1\r\nContent-Length: 4\r\nConnection: close\r\n\r\n{nop".to_string();
    let resp = raw_http(port, &junk);
    assert!(
        resp.starts_with("HTTP/1.1 400") && resp.contains("-32700"),
        "{resp}"
    );

    let url = format!("http://127.0.0.1:{port}/mcp");
    let r = client(dir.path(), "main", &["--http", &url, "test-token-1"]);
    check_main(&r);
}

#[test]
fn pins_ls_approve_reset() {
    let dir = setup();
    let home = dir.path().join("home");
    let desc = dir.path().join("desc.txt");
    std::fs::write(&desc, "v1").unwrap();
    let policy = dir.path().join("policy.toml");
    let run = |scenario: &str| {
        let out = dir.path().join("r.json");
        let st = Command::new(python())
            .arg(fixtures().join("py/client.py"))
            .arg(&out)
            .arg(scenario)
            .args(["--cmd", WARDEN, "mcp", "--policy", policy.to_str().unwrap()])
            .env("WARDEN_HOME", &home)
            .env("TEST_DESC_FILE", &desc)
            .status()
            .unwrap();
        assert!(st.success());
        serde_json::from_str::<Value>(&std::fs::read_to_string(out).unwrap()).unwrap()
    };
    let warden = |args: &[&str]| {
        Command::new(WARDEN)
            .args(args)
            .env("WARDEN_HOME", &home)
            .output()
            .unwrap()
    };
    // PlainLauncher clears the environment, so the description file path reaches the
    // server only through the policy; use the default description instead and change
    // the pin store's record to simulate an older definition.
    let r = run("pins");
    assert_eq!(r["describe"]["ok"]["content"][0]["text"], "described");
    let out = warden(&["mcp", "pins", "ls", "--json"]);
    assert!(out.status.success());
    let pins: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = pins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["tool"] == "test/describe")
        .unwrap();
    assert_eq!(entry["status"], "pinned");

    // Tamper: pretend the first-seen definition was different (a rug pull since).
    let file = home.join("mcp-pins.json");
    let mut store: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    store["pins"]["test/describe"]["digest"] = Value::String("sha256:00".into());
    std::fs::write(&file, store.to_string()).unwrap();
    let r = run("pins");
    let m = r["describe"]["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(m.contains("pins approve test/describe"), "{r:#}");
    let out = warden(&["mcp", "pins", "ls"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("changed"));
    assert!(
        warden(&["mcp", "pins", "approve", "test/describe"])
            .status
            .success()
    );
    let r = run("pins");
    assert_eq!(r["describe"]["ok"]["content"][0]["text"], "described");
    assert_eq!(
        warden(&["mcp", "pins", "approve", "nope/nope"])
            .status
            .code(),
        Some(1)
    );
    assert!(warden(&["mcp", "pins", "reset"]).status.success());
    let out = warden(&["mcp", "pins", "ls", "--json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    let events = audit(dir.path());
    assert!(events.iter().any(|e| e["action"] == "tool_changed"));
    assert!(events.iter().any(|e| e["action"] == "pin_approve"));
}

#[test]
fn bad_policy_fails_closed_with_125() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "version = 1\n[[mcp.servers]]\nname = \"x\"\nbogus = 1\n",
    )
    .unwrap();
    let out = Command::new(WARDEN)
        .args(["mcp", "--policy"])
        .arg(&p)
        .env("WARDEN_HOME", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(125),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Credentials from `command:`, `file:` and `vault:` (the local store) are loaded by
/// the gateway: the bound server gets a placeholder, never the value; a value it
/// echoes comes back as that placeholder; the other credentials' values are refused
/// in its arguments. A credential a server needs that cannot load stops the gateway
/// (125) with an error naming it, never a value.
#[test]
fn credentials_from_every_source_kind() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let (cmd_value, file_value, vault_value) = (
        "s3cr3t-command-value",
        "s3cr3t-file-value-0001",
        "s3cr3t-vault-value-0002",
    );
    let token = dir.path().join("token.txt");
    std::fs::write(&token, format!("{file_value}\n")).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut set = Command::new(WARDEN)
        .args(["secret", "set", "vaulted"])
        .env("WARDEN_HOME", &home)
        .env_remove("WARDEN_SERVER")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    set.stdin
        .take()
        .unwrap()
        .write_all(vault_value.as_bytes())
        .unwrap();
    assert!(set.wait().unwrap().success());
    let srv = fixtures().join("py/test_server.py");
    let policy = format!(
        r#"version = 1
name = "creds"

[[credentials]]
name = "gh"
source = "command:printf %s {cmd_value}"
hosts = ["api.github.com"]
env = "GH_TOKEN"

[[credentials]]
name = "filed"
source = "file:token.txt"
hosts = ["example.com"]

[[credentials]]
name = "vaulted"
source = "vault:vaulted"
hosts = ["example.com"]

[[mcp.servers]]
name = "test"
command = ["python3", "{srv}"]
credentials = ["gh"]
tools.allow = ["*"]
{mounts}
"#,
        srv = srv.display(),
        mounts = fixture_mounts(),
    );
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let out = dir.path().join("report-creds.json");
    let status = Command::new(python())
        .arg(fixtures().join("py/client.py"))
        .arg(&out)
        .arg("creds")
        .args([
            "--cmd",
            WARDEN,
            "mcp",
            "--policy",
            policy_path.to_str().unwrap(),
        ])
        .env("WARDEN_HOME", &home)
        .env(
            "CREDS_PATHS",
            serde_json::json!([cmd_value, file_value, vault_value]).to_string(),
        )
        .status()
        .unwrap();
    assert!(status.success());
    let r: Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    assert!(r.get("fatal").is_none(), "{r:#}");
    let leak = r["leak"]["ok"]["content"][0]["text"].as_str().unwrap();
    let placeholder = leak
        .split_whitespace()
        .find_map(|w| w.strip_prefix("gh="))
        .unwrap();
    assert!(
        !placeholder.is_empty() && placeholder != cmd_value,
        "{leak}"
    );
    // The bound server's echo of the real value comes back as the placeholder.
    let echoed = r["read0"]["ok"]["content"][0]["text"].as_str().unwrap();
    assert_eq!(echoed, format!("contents of {placeholder}"));
    for (step, name) in [("read1", "filed"), ("read2", "vaulted")] {
        let m = r[step]["error"]["message"].as_str().unwrap();
        assert!(m.contains("secret scan") && m.contains(name), "{step}: {m}");
    }
    let raw = std::fs::read_to_string(home.join("audit.jsonl")).unwrap();
    for v in [cmd_value, file_value, vault_value] {
        assert!(!raw.contains(v), "a secret value in the audit log");
    }

    // A credential the server needs that cannot be loaded: fail closed.
    let broken = std::fs::read_to_string(&policy_path).unwrap().replace(
        &format!("command:printf %s {cmd_value}"),
        "env:WARDEN_TEST_SURELY_UNSET",
    );
    std::fs::write(&policy_path, broken).unwrap();
    let out = Command::new(WARDEN)
        .args(["mcp", "--policy"])
        .arg(&policy_path)
        .env("WARDEN_HOME", &home)
        .env_remove("WARDEN_TEST_SURELY_UNSET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"gh\"") && err.contains("WARDEN_TEST_SURELY_UNSET"),
        "{err}"
    );
    for v in [file_value, vault_value] {
        assert!(!err.contains(v), "a secret value in the error");
    }
}

/// A line-oriented JSON-RPC conversation with `warden mcp` over stdio.
struct Conversation {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Conversation {
    fn start(policy: &Path, home: &Path, cwd: &Path) -> Conversation {
        let mut child = Command::new(WARDEN)
            .args(["mcp", "--policy"])
            .arg(policy)
            .env("WARDEN_HOME", home)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut s = Conversation { child, out };
        let init = s.request(
            1,
            "initialize",
            serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
        );
        assert!(init.get("result").is_some(), "{init}");
        s.send(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        s
    }

    fn send(&mut self, msg: Value) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{msg}").unwrap();
        stdin.flush().unwrap();
    }

    fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        );
        loop {
            let mut line = String::new();
            let n = std::io::BufRead::read_line(&mut self.out, &mut line).unwrap();
            assert!(n > 0, "the gateway closed its output");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id {
                return v;
            }
        }
    }

    fn call(&mut self, id: u64, tool: &str, args: Value) -> String {
        let r = self.request(
            id,
            "tools/call",
            serde_json::json!({"name": tool, "arguments": args}),
        );
        r["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_string()
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stdio server runs in a Warden session of its own, under its own `network` and
/// `filesystem`: what the session may reach (the gateway's directory, the host's
/// files, hosts only the top-level policy allows) it cannot, and what its own table
/// allows it can.
#[test]
fn a_stdio_server_runs_in_its_own_sandbox_under_its_own_policy() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::write(root.join("gateway-secret.txt"), "TOP-SECRET").unwrap();
    // A host service the server's own policy allows by IP (nobody else's does).
    let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\nfrom the host",
            );
        }
    });
    let policy = root.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"version = 1
name = "sandboxed"

[network]
allow = ["example.com"]

[[mcp.servers]]
name = "probe"
command = ["python3", "{srv}"]
network.allow = ["127.0.0.2:{port}"]
{mounts}
"#,
            srv = fixtures().join("py/test_server.py").display(),
            mounts = fixture_mounts(),
        ),
    )
    .unwrap();
    let home = root.join("home");
    let mut gw = Conversation::start(&policy, &home, &root);
    let own = gw.call(
        2,
        "probe__fetch",
        serde_json::json!({"url": format!("http://127.0.0.2:{port}/")}),
    );
    assert_eq!(own, "status 200: from the host");
    // The session's own host is not the server's.
    let denied = gw.call(
        3,
        "probe__fetch",
        serde_json::json!({"url": "http://example.com/"}),
    );
    assert!(denied.contains("403"), "{denied}");
    let ls = gw.call(
        4,
        "probe__listdir",
        serde_json::json!({"path": root.display().to_string()}),
    );
    assert!(ls.starts_with("error:"), "{ls}");
    let ls = gw.call(5, "probe__listdir", serde_json::json!({"path": "/proc"}));
    assert!(
        ls.split_whitespace()
            .filter(|e| e.parse::<u32>().is_ok())
            .count()
            <= 4,
        "the server sees host processes: {ls}"
    );
    drop(gw);
    let events = audit(&root);
    let deny = events
        .iter()
        .find(|e| e["surface"] == "network" && e["target"] == "example.com:80")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(deny["decision"], "deny");
    assert!(
        deny["policy"].as_str().unwrap().ends_with("#mcp:probe"),
        "{deny}"
    );
    assert!(
        events.iter().any(|e| e["action"] == "start"
            && e["name"] == "mcp:probe"
            && e["backend"] == "namespaces"),
        "{events:#?}"
    );
}

/// On an enrolled machine (real `warden server`, `enroll`, `agent`), a running gateway
/// follows a policy pushed to the control plane: the next tool call is decided by it,
/// narrowed by the same local `--policy` file as at the start.
#[test]
fn an_enrolled_gateway_follows_a_pushed_policy() {
    const ADMIN: &str = "mcp-cli-admin-token-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let home = root.join("home");
    let control = ControlServer::start(&root.join("srv"), ADMIN);
    let cli = |args: &[&str]| {
        let o = control.cli(&home, args);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), all)
    };
    let version = |name: &str, deny: &str| {
        format!(
            r#"version = 1
name = "{name}"

[[mcp.servers]]
name = "probe"
command = ["python3", "{srv}"]
tools.deny = [{deny}]
{mounts}
"#,
            srv = fixtures().join("py/test_server.py").display(),
            mounts = fixture_mounts(),
        )
    };
    let v1 = root.join("v1.toml");
    std::fs::write(&v1, version("central-mcp", "\"listdir\"")).unwrap();
    let (ok, out) = cli(&["policy", "push", v1.to_str().unwrap()]);
    assert!(ok, "{out}");
    let _agent = control.enroll_with_agent(&home, "central-mcp@v1");

    // The local file allows listdir; the central v1 does not: denied by the central.
    let local = root.join("local.toml");
    std::fs::write(&local, version("local-mcp", "")).unwrap();
    let mut gw = Conversation::start(&local, &home, &root);
    let listdir = serde_json::json!({"name": "probe__listdir", "arguments": {"path": "/"}});
    let r = gw.request(2, "tools/call", listdir.clone());
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("central:central-mcp@v1")),
        "v1 denies listdir: {r}"
    );
    let v2 = root.join("v2.toml");
    std::fs::write(&v2, version("central-mcp", "")).unwrap();
    let (ok, out) = cli(&["policy", "push", v2.to_str().unwrap()]);
    assert!(ok && out.contains("central-mcp@v2"), "{out}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut id = 3;
    loop {
        let r = gw.request(id, "tools/call", listdir.clone());
        if r["result"]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.starts_with("error"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pushed policy never reached the gateway: {r}"
        );
        id += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(gw);
    let events = audit(&root);
    assert!(
        events.iter().any(|e| e["action"] == "policy_reload"),
        "{events:#?}"
    );
    // Each decision names the policy that made it: v1's refusal, v2's allow (the id
    // the gateway's reload switched to; the sandboxed server's own session records
    // reloads of its part of the policy too, under another session id).
    let calls: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["action"] == "call_tool" && e["target"] == "probe/listdir")
        .collect();
    let gateway = calls[0]["session"].clone();
    let v2_id = events
        .iter()
        .filter(|e| e["action"] == "policy_reload" && e["session"] == gateway)
        .filter_map(|e| e["policy"].as_str())
        .next_back()
        .unwrap()
        .to_string();
    let policy_of = |decision: &str| {
        calls
            .iter()
            .filter(|e| e["decision"] == decision)
            .map(|e| e["policy"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    let (denied, allowed) = (policy_of("deny"), policy_of("allow"));
    // Every id is the central one narrowed by the local file's (`central+local`).
    assert!(
        v2_id.starts_with("central-mcp@")
            && v2_id.contains("+local-mcp@")
            && !denied.is_empty()
            && !denied.contains(&v2_id)
            && denied.iter().all(|p| p.contains("+local-mcp@")),
        "{v2_id}: {calls:#?}"
    );
    assert!(
        !allowed.is_empty() && allowed.iter().all(|p| *p == v2_id),
        "{v2_id}: {calls:#?}"
    );
}

/// `warden run --mcp-server` (how the gateway sandboxes a stdio server) never falls back
/// to the built-in preset: standalone, it needs the policy the server is part of.
#[test]
fn a_server_session_without_a_policy_is_refused_when_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(WARDEN)
        .args(["run", "--mcp-server", "probe", "--", "true"])
        .env("WARDEN_HOME", dir.path().join("home"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(err.contains("--mcp-server probe needs --policy"), "{err}");
}

/// An `optional = true` credential whose variable is not set is left out silently; the
/// same credential without `optional` is left out with a warning; one an MCP server
/// uses must load even when `optional` (the gateway does not start: 125).
#[test]
fn an_optional_credential_is_left_out_unless_a_server_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let policy = |optional: bool, used: bool| {
        format!(
            r#"version = 1
name = "optional"

[[credentials]]
name = "opt"
source = "env:WARDEN_TEST_SURELY_UNSET"
hosts = ["example.com"]
optional = {optional}

[[mcp.servers]]
name = "test"
command = ["/bin/cat"]
credentials = {used}
tools.allow = ["*"]
"#,
            used = if used { r#"["opt"]"# } else { "[]" },
        )
    };
    let run = |optional: bool, used: bool| {
        let path = dir.path().join(format!("policy-{optional}-{used}.toml"));
        std::fs::write(&path, policy(optional, used)).unwrap();
        let out = Command::new(WARDEN)
            .args(["mcp", "--policy"])
            .arg(&path)
            .env("WARDEN_HOME", dir.path().join("home"))
            .env_remove("WARDEN_TEST_SURELY_UNSET")
            .env_remove("WARDEN_SERVER")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(true, false);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("\"opt\""), "{err}");
    let (code, err) = run(false, false);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("\"opt\"") && err.contains("WARDEN_TEST_SURELY_UNSET"),
        "{err}"
    );
    let (code, err) = run(true, true);
    assert_eq!(code, Some(125), "{err}");
    assert!(
        err.contains("\"opt\"") && err.contains("an MCP server of the policy uses it"),
        "{err}"
    );
}

/// The interpreter prefix behind the test venv (a venv links to it): what a session must
/// see, read-only, to run the Python SDK client inside it.
fn python_prefix() -> PathBuf {
    let out = Command::new(python())
        .args(["-c", "import sys; print(sys.base_prefix)"])
        .output()
        .unwrap();
    assert!(out.status.success());
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// [`setup`]'s policy for a session that runs the SDK client: the workspace `ws`, and
/// the venv (returned), its interpreter and the fixtures visible read-only.
fn session_setup() -> (tempfile::TempDir, PathBuf) {
    let dir = setup();
    let venv = python()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .canonicalize()
        .unwrap();
    let mut policy = std::fs::read_to_string(dir.path().join("policy.toml")).unwrap();
    policy.push_str(&format!(
        "\n[filesystem]\nworkspace = \"rw\"\nmounts = [{{ host = \"{}\", mode = \"ro\" }}, {{ host = \"{}\", mode = \"ro\" }}, {{ host = \"{}\", mode = \"ro\" }}]\n",
        venv.display(),
        python_prefix().display(),
        fixtures().display()
    ));
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    std::fs::create_dir(dir.path().join("ws")).unwrap();
    (dir, venv)
}

/// `sh -c script` in a session under the policy of [`session_setup`] (workspace `ws`),
/// with `$PY` (the venv's interpreter) and `$CLIENT` (client.py) set, and `env` in
/// `warden run`'s own environment.
fn session_sh(dir: &Path, venv: &Path, script: &str, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(WARDEN)
        .arg("run")
        .arg("--policy")
        .arg(dir.join("policy.toml"))
        .arg("--workspace")
        .arg(dir.join("ws"))
        .arg("--env")
        .arg(format!("PY={}", venv.join("bin/python").display()))
        .arg("--env")
        .arg(format!(
            "CLIENT={}",
            fixtures().join("py/client.py").display()
        ))
        .args(["--", "sh", "-c", script])
        .env("WARDEN_HOME", dir.join("home"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_session_reaches_its_policys_mcp_servers_through_its_gateway() {
    // SPEC §1: a `warden run` session's tool calls pass the gateway. The official Python
    // SDK client runs *inside* the session and talks to the gateway at the session's MCP
    // door ($WARDEN_MCP_URL, bearer $WARDEN_MCP_TOKEN), which serves the policy's
    // servers, each in a sandbox of its own.
    let (dir, venv) = session_setup();
    let ws = dir.path().join("ws");
    // The client's scenario, then the door's own checks from inside: no token, a wrong
    // one, and what the session's environment says.
    let script = r#"
set -u
"$PY" "$CLIENT" report.json main --http "$WARDEN_MCP_URL" "$WARDEN_MCP_TOKEN"
"$PY" - <<'PY' > door.json
import json, os, urllib.request, urllib.error
def post(headers):
    req = urllib.request.Request(os.environ["WARDEN_MCP_URL"], method="POST",
        data=b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
        headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers})
    try:
        return urllib.request.urlopen(req, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
print(json.dumps({"none": post({}), "wrong": post({"Authorization": "Bearer wrong"}),
                  "url": os.environ["WARDEN_MCP_URL"]}))
PY
"#;
    let out = session_sh(dir.path(), &venv, script, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(ws.join("report.json")).unwrap()).unwrap();
    check_main(&r);
    let door: Value =
        serde_json::from_str(&std::fs::read_to_string(ws.join("door.json")).unwrap()).unwrap();
    assert_eq!(door["none"], 401, "{door}");
    assert_eq!(door["wrong"], 401, "{door}");
    assert_eq!(door["url"], "http://127.0.0.1:3129/mcp");
    // Every call is recorded under the session that made it.
    let events = audit(dir.path());
    let start = events
        .iter()
        .find(|e| {
            e["surface"] == "session"
                && e["action"] == "start"
                && e["target"].as_str().unwrap().starts_with("sh -c")
        })
        .unwrap();
    let deny = events
        .iter()
        .find(|e| e["target"] == "test/read_file" && e["decision"] == "deny")
        .unwrap();
    assert_eq!(deny["rule"], "rules/mcp.cedar:1");
    assert_eq!(deny["session"], start["session"]);
    let allowed = events
        .iter()
        .find(|e| e["target"] == "everything/echo" && e["decision"] == "allow")
        .unwrap();
    assert_eq!(allowed["session"], start["session"]);
    // The servers' stderr goes to a log, not to the session's terminal (where an agent's
    // screen is): server-everything announces itself there.
    let log = std::fs::read_to_string(dir.path().join("home/mcp-servers.log")).unwrap();
    assert!(log.contains("Starting default (STDIO) server"), "{log}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("Starting default"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A session script for [`session_sh`]: one MCP client session at the session's door
/// (initialize, then tools/list, whose answer goes to `tools.txt`), which starts the
/// policy's servers.
const LIST_TOOLS: &str = r#"
set -u
"$PY" - <<'PY'
import json, os, urllib.request
url, token = os.environ["WARDEN_MCP_URL"], os.environ["WARDEN_MCP_TOKEN"]
def post(body, sid=None):
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
         "Authorization": "Bearer " + token}
    if sid:
        h["Mcp-Session-Id"] = sid
    r = urllib.request.urlopen(urllib.request.Request(url, data=json.dumps(body).encode(),
                                                      headers=h, method="POST"), timeout=60)
    return r.headers.get("Mcp-Session-Id"), r.read().decode()
sid, _ = post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
post({"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
_, tools = post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, sid)
open("tools.txt", "w").write(tools)
PY
"#;

#[test]
fn a_sessions_gateway_says_what_went_wrong_in_the_servers_log_not_on_the_terminal() {
    // A server that cannot start makes the gateway say so; during a session that line
    // goes to WARDEN_HOME/mcp-servers.log, not onto the terminal where the agent's screen
    // is.
    let (dir, venv) = session_setup();
    let mut policy = std::fs::read_to_string(dir.path().join("policy.toml")).unwrap();
    policy.push_str(
        "\n[[mcp.servers]]\nname = \"broken\"\ncommand = [\"/nonexistent/mcp-server\"]\n",
    );
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let out = session_sh(dir.path(), &venv, LIST_TOOLS, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The other servers still serve.
    let tools = std::fs::read_to_string(dir.path().join("ws/tools.txt")).unwrap();
    assert!(tools.contains("everything__echo"), "{tools}");
    let log = std::fs::read_to_string(dir.path().join("home/mcp-servers.log")).unwrap();
    assert!(log.contains("warden mcp: server \"broken\""), "{log}");
    assert!(!stderr.contains("warden mcp"), "{stderr}");
}

#[test]
fn a_session_cannot_change_the_program_its_mcp_server_runs() {
    // A server's program in the agent's writable workspace, shown to the server
    // read-only: rewritten by the agent, the server started for the next MCP client
    // would run the agent's code with the server's own network and credentials. The
    // session sees it read-only, like Warden's own programs.
    let (dir, venv) = session_setup();
    let ws = dir.path().join("ws").canonicalize().unwrap();
    let server = ws.join("server.py");
    let original = "import sys\nprint('the real server', file=sys.stderr)\n";
    std::fs::write(&server, original).unwrap();
    let mut policy = std::fs::read_to_string(dir.path().join("policy.toml")).unwrap();
    policy.push_str(&format!(
        "\n[[mcp.servers]]\nname = \"local\"\ncommand = [\"python3\", \"{}\"]\nfilesystem.mounts = [{{ host = \"{}\", mode = \"ro\" }}]\n",
        server.display(),
        ws.display()
    ));
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let script = format!(
        "echo \"import sys; print('AGENT CODE RAN', file=sys.stderr)\" > server.py 2>&1 || echo write-denied\n\
         mv server.py old.py 2>&1 || echo mv-denied\n{LIST_TOOLS}"
    );
    let out = session_sh(dir.path(), &venv, &script, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("write-denied") && stdout.contains("mv-denied"),
        "{stdout}"
    );
    assert_eq!(std::fs::read_to_string(&server).unwrap(), original);
    let log = std::fs::read_to_string(dir.path().join("home/mcp-servers.log")).unwrap();
    assert!(
        log.contains("the real server") && !log.contains("AGENT CODE RAN"),
        "{log}"
    );
    // Named through a link in the workspace, which the agent could point at its own
    // script: the session does not start.
    std::os::unix::fs::symlink(".", ws.join("current")).unwrap();
    let policy = std::fs::read_to_string(dir.path().join("policy.toml")).unwrap();
    let linked = ws.join("current/server.py");
    std::fs::write(
        dir.path().join("policy.toml"),
        policy.replace(
            &format!("\"{}\"", server.display()),
            &format!("\"{}\"", linked.display()),
        ),
    )
    .unwrap();
    let out = session_sh(dir.path(), &venv, "true", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("a link the session could re-point"),
        "{stderr}"
    );
}

#[test]
fn a_session_without_mcp_servers_has_no_gateway() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        "version = 1\nname = \"plain\"\n[filesystem]\nworkspace = \"rw\"\n",
    )
    .unwrap();
    let out = Command::new(WARDEN)
        .arg("run")
        .arg("--policy")
        .arg(dir.path().join("policy.toml"))
        .arg("--workspace")
        .arg(dir.path())
        .args([
            "--",
            "bash",
            "-c",
            // The proxy's door (3128) answers: the check can tell open from closed.
            "echo \"url=${WARDEN_MCP_URL:-none}\"; for p in 3128 3129; do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && echo $p=open || echo $p=closed; done",
        ])
        .env("WARDEN_HOME", dir.path().join("home"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("url=none"), "{stdout}");
    assert!(stdout.contains("3128=open"), "{stdout}");
    assert!(stdout.contains("3129=closed"), "{stdout}");
}

#[test]
fn a_sessions_tool_calls_follow_a_reload_of_its_policy() {
    // One policy in force for the whole session: editing the policy file while the
    // session runs changes what its gateway allows, for the next call.
    let (dir, venv) = session_setup();
    let ws = dir.path().join("ws");
    std::fs::write(
        ws.join("loop.py"),
        r#"
import asyncio, json, os, time
import httpx2
from mcp import ClientSession
from mcp.shared.exceptions import MCPError
from mcp.client.streamable_http import streamable_http_client

async def main():
    seen = []
    headers = {"Authorization": "Bearer " + os.environ["WARDEN_MCP_TOKEN"]}
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        async with streamable_http_client(os.environ["WARDEN_MCP_URL"], http_client=http) as st:
            async with ClientSession(st[0], st[1]) as s:
                await s.initialize()
                deadline = time.time() + 60
                while time.time() < deadline:
                    try:
                        r = await s.call_tool("everything__echo", {"message": "hi"})
                        seen.append({"ok": r.content[0].text})
                        open("first-ok", "w").close()
                    except MCPError as e:
                        seen.append({"error": e.message})
                        break
                    await asyncio.sleep(0.1)
    json.dump(seen, open("reload.json", "w"))

asyncio.run(main())
"#,
    )
    .unwrap();
    let policy = dir.path().join("policy.toml");
    let mut child = Command::new(WARDEN)
        .arg("run")
        .arg("--policy")
        .arg(&policy)
        .arg("--workspace")
        .arg(&ws)
        .arg("--")
        .arg(venv.join("bin/python"))
        .arg("loop.py")
        .env("WARDEN_HOME", dir.path().join("home"))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_file(&ws.join("first-ok"), "the session never called the tool");
    let text = std::fs::read_to_string(&policy).unwrap();
    let narrowed = text.replace(
        "tools.deny = [\"get-env\"]",
        "tools.deny = [\"get-env\", \"echo\"]",
    );
    assert_ne!(text, narrowed);
    std::fs::write(&policy, narrowed).unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    let seen: Value =
        serde_json::from_str(&std::fs::read_to_string(ws.join("reload.json")).unwrap()).unwrap();
    let seen = seen.as_array().unwrap();
    assert_eq!(seen[0]["ok"], "Echo: hi", "{seen:?}");
    let last = seen.last().unwrap()["error"].as_str().unwrap_or_default();
    assert!(last.contains("policy.toml:7"), "{seen:?}");
}

#[test]
fn a_sessions_gateway_guards_the_sessions_own_credentials() {
    // The session's gateway knows the credentials the session loaded: a credential's
    // placeholder may go to a server the policy binds it to, and nowhere else; the
    // server holds the same placeholder as the session, never the real value.
    let (gh_value, other_value) = (
        "s3cr3t-gh-session-value-01",
        "s3cr3t-other-session-value-02",
    );
    let (dir, venv) = session_setup();
    let ws = dir.path().join("ws");
    let policy = std::fs::read_to_string(dir.path().join("policy.toml")).unwrap();
    let policy = policy.replacen(
        "[[mcp.servers]]\nname = \"test\"\n",
        "[[mcp.servers]]\nname = \"test\"\ncredentials = [\"gh\"]\n",
        1,
    );
    let policy = format!(
        "{policy}\n[[credentials]]\nname = \"gh\"\nsource = \"env:WARDEN_TEST_GH\"\nhosts = [\"api.github.com\"]\nenv = \"GH_TOKEN\"\n\n[[credentials]]\nname = \"other\"\nsource = \"env:WARDEN_TEST_OTHER\"\nhosts = [\"example.com\"]\nenv = \"OTHER_TOKEN\"\n"
    );
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let script = r#"
set -u
printf '%s\n%s\n' "$GH_TOKEN" "$OTHER_TOKEN" > placeholders.txt
CREDS_PATHS="[\"$GH_TOKEN\", \"$OTHER_TOKEN\"]" "$PY" "$CLIENT" report.json creds --http "$WARDEN_MCP_URL" "$WARDEN_MCP_TOKEN"
"#;
    let out = session_sh(
        dir.path(),
        &venv,
        script,
        &[
            ("WARDEN_TEST_GH", gh_value),
            ("WARDEN_TEST_OTHER", other_value),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let placeholders = std::fs::read_to_string(ws.join("placeholders.txt")).unwrap();
    let mut lines = placeholders.lines();
    let (gh, other) = (lines.next().unwrap(), lines.next().unwrap());
    assert!(gh != gh_value && other != other_value, "{placeholders}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(ws.join("report.json")).unwrap()).unwrap();
    assert!(r.get("fatal").is_none(), "{r:#}");
    // To the server bound to it: passed, and echoed back as it was.
    assert_eq!(
        r["read0"]["ok"]["content"][0]["text"],
        format!("contents of {gh}"),
        "{r:#}"
    );
    // Another credential's placeholder to that server: refused by the secret scan.
    let m = r["read1"]["error"]["message"].as_str().unwrap_or_default();
    assert!(m.contains("secret scan") && m.contains("other"), "{r:#}");
    // The server's own session holds the session's placeholder, not the value.
    let leak = r["leak"]["ok"]["content"][0]["text"].as_str().unwrap();
    assert!(leak.contains(&format!("gh={gh} ")), "{leak}");
    let raw = std::fs::read_to_string(dir.path().join("home/audit.jsonl")).unwrap();
    for v in [gh_value, other_value] {
        assert!(!raw.contains(v), "a secret value in the audit log");
        assert!(!r.to_string().contains(v), "a secret value in the session");
    }
}

/// Waits up to 30 s for `path` to exist (a session's signal that it got that far); else
/// fails with `why`.
fn wait_for_file(path: &Path, why: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(std::time::Instant::now() < deadline, "{why}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    found
}

#[test]
fn killing_warden_run_ends_its_gateways_servers() {
    // A server that keeps running after its stdin closes: SIGKILL of the session's
    // `warden run` must still end it (and its own session) with the session.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let srv = root.join("stubborn_server.py");
    std::fs::write(
        &srv,
        r#"import json, sys, time
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m:
        continue
    if m.get("method") == "initialize":
        r = {"protocolVersion": m["params"]["protocolVersion"], "capabilities": {"tools": {}},
             "serverInfo": {"name": "stubborn", "version": "1"}}
    elif m.get("method") == "tools/list":
        r = {"tools": []}
    else:
        r = {}
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}), flush=True)
while True:  # stdin closed: stays anyway
    time.sleep(1)
"#,
    )
    .unwrap();
    std::fs::create_dir(root.join("ws")).unwrap();
    std::fs::write(
        root.join("policy.toml"),
        format!(
            "version = 1\nname = \"stubborn\"\n[filesystem]\nworkspace = \"rw\"\n\n[[mcp.servers]]\nname = \"stubborn\"\ncommand = [\"python3\", \"{}\"]\nfilesystem.mounts = [{{ host = \"{}\", mode = \"ro\" }}]\n",
            srv.display(),
            root.display()
        ),
    )
    .unwrap();
    // Inside the session: initialize (which starts the server), list its tools, wait.
    let client = r#"
import os, time, urllib.request
def post(body, sid=None):
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
         "Authorization": "Bearer " + os.environ["WARDEN_MCP_TOKEN"]}
    if sid:
        h["Mcp-Session-Id"] = sid
    r = urllib.request.urlopen(urllib.request.Request(os.environ["WARDEN_MCP_URL"], data=body.encode(), headers=h), timeout=30)
    return r.headers.get("Mcp-Session-Id"), r.read()
sid, _ = post('{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}')
post('{"jsonrpc":"2.0","method":"notifications/initialized"}', sid)
post('{"jsonrpc":"2.0","id":2,"method":"tools/list"}', sid)
open("listed", "w").close()
time.sleep(120)
"#;
    let mut child = Command::new(WARDEN)
        .arg("run")
        .arg("--policy")
        .arg(root.join("policy.toml"))
        .arg("--workspace")
        .arg(root.join("ws"))
        .args(["--", "/usr/bin/python3", "-c", client])
        .env("WARDEN_HOME", root.join("home"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let needle = srv.to_string_lossy().into_owned();
    wait_for_file(
        &root.join("ws/listed"),
        "the session never reached the server",
    );
    assert!(
        !processes_with(&needle).is_empty(),
        "the server is not running"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_with(&needle);
        if left.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            for p in &left {
                if let Some(pid) = p.split(':').next() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            panic!("the server outlived its session's warden run: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
