//! TLS interception and credentials: real HTTPS upstreams (leaves from a test CA the
//! proxy trusts through `UpstreamTrust`), curl as the client trusting the session CA,
//! and attacks on the exfiltration guard.

use super::*;
use base64::Engine;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioExecutor;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_rustls::TlsAcceptor;
use warden_egress::warden_secrets::{Placeholder, Secret};
use warden_egress::warden_tls::{Alpn, SessionCa, UpstreamTrust};
use warden_egress::{Interception, SessionCredential};

const SECRET: &str = "ghp_R3alS3cretValue0123456789abcdefABCDE";

/// A response body fed from a channel (frames sent by a task, with pauses).
struct ChanBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A real HTTPS server for `name` with a leaf from `ca`, speaking h2 or HTTP/1.1 per
/// ALPN. Records every request (version, method, URI, headers, then the body as it
/// arrives). Routes: `/leak` streams the real secret split across frames (and in a
/// header); `/sse` sends one event, waits for `release`, sends another; `/ws` upgrades
/// and sends a line holding the secret, then echoes; anything else echoes the request.
struct Up {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    release: Arc<tokio::sync::Notify>,
}

impl Up {
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn https_upstream(ca: &SessionCa, name: &str) -> Up {
    let config = ca.server_config_for(name, Alpn::H2AndHttp1).unwrap();
    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let release = Arc::new(tokio::sync::Notify::new());
    let (s2, r2) = (seen.clone(), release.clone());
    tokio::spawn(async move {
        let acceptor = TlsAcceptor::from(config);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen, release) = (acceptor.clone(), s2.clone(), r2.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let svc = hyper::service::service_fn(move |req| {
                    upstream_svc(req, seen.clone(), release.clone())
                });
                let io = TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .with_upgrades()
                        .await;
                }
            });
        }
    });
    Up {
        port,
        seen,
        release,
    }
}

fn chan(frames: Vec<(Bytes, u64)>) -> UpBody {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        for (b, pause_ms) in frames {
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            if tx.send(b).await.is_err() {
                return;
            }
        }
    });
    http_body_util::BodyExt::boxed(ChanBody(rx))
}

async fn upstream_svc(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<String>>>,
    release: Arc<tokio::sync::Notify>,
) -> Result<Response<UpBody>, Infallible> {
    let mut head = format!("{:?} {} {}\n", req.version(), req.method(), req.uri());
    for (k, v) in req.headers() {
        head.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    head.push('\n');
    let idx = {
        let mut s = seen.lock().unwrap();
        s.push(head);
        s.len() - 1
    };
    let path = req.uri().path().to_string();
    if path == "/ws" {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(up) = on.await else { return };
            let mut io = TokioIo::new(up);
            let _ = io.write_all(format!("hello {SECRET}\n").as_bytes()).await;
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let mut resp = Response::new(http_body_util::BodyExt::boxed(Full::new(Bytes::new())));
        *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        resp.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        return Ok(resp);
    }
    let mut body = req.into_body();
    while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut body).await {
        if let Some(d) = frame.data_ref() {
            seen.lock().unwrap()[idx].push_str(&String::from_utf8_lossy(d));
        }
    }
    let record = seen.lock().unwrap()[idx].clone();
    let resp = match path.as_str() {
        "/leak" => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
            let mut r = Response::new(chan(vec![
                (Bytes::from("before "), 0),
                (Bytes::from(SECRET[..7].to_string()), 30),
                (Bytes::from(SECRET[7..20].to_string()), 30),
                (
                    Bytes::from(format!("{} b64:{b64} after", &SECRET[20..])),
                    30,
                ),
            ]));
            r.headers_mut().insert("x-echo", SECRET.parse().unwrap());
            r
        }
        "/sse" => {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from("data: one\n\n")).await;
                release.notified().await;
                let _ = tx.send(Bytes::from("data: two\n\n")).await;
            });
            let mut r = Response::new(http_body_util::BodyExt::boxed(ChanBody(rx)));
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
        _ => Response::new(http_body_util::BodyExt::boxed(Full::new(Bytes::from(
            record,
        )))),
    };
    Ok(resp)
}

struct Setup {
    h: H,
    api: Up,
    other: Up,
    bundle: PathBuf,
    placeholder: String,
    _dir: tempfile::TempDir,
}

/// The session's interception: a session CA, upstream trust in `upstream_ca` only,
/// and credential `tok` (hosts `api.test`) when `with_cred`.
fn interception(dir: &Path, upstream_ca: &SessionCa, with_cred: bool) -> (Interception, PathBuf) {
    let roots = dir.join("upstream-ca.pem");
    std::fs::write(&roots, upstream_ca.cert_pem()).unwrap();
    let trust = UpstreamTrust::from_parts(vec![], &[roots]).unwrap();
    let ca = SessionCa::new().unwrap();
    let bundle = dir.join("session-ca.pem");
    std::fs::write(&bundle, ca.cert_pem()).unwrap();
    let mut creds = Vec::new();
    if with_cred {
        let secret = Secret::new(SECRET.as_bytes().to_vec());
        let placeholder = Placeholder::for_secret(&secret, &mut rand::rng());
        creds.push(SessionCredential {
            name: "tok".into(),
            source: None,
            secret,
            placeholder,
            hosts: vec!["api.test".into()],
            env: Some("TOKEN".into()),
            header: None,
            format: None,
            inject_body: false,
        });
    }
    (Interception::new(ca, trust, creds).unwrap(), bundle)
}

/// Upstreams api.test and other.test, a policy allowing both, credential `tok` bound
/// to api.test; `extra` goes at the top of the policy (mode, [tls]).
async fn setup(extra: &str, http_rules: &str, with_cred: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let test_ca = SessionCa::new().unwrap();
    let api = https_upstream(&test_ca, "api.test").await;
    let other = https_upstream(&test_ca, "other.test").await;
    let (icpt, bundle) = interception(dir.path(), &test_ca, with_cred);
    let placeholder = icpt
        .placeholder("tok")
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let (a, o) = (api.port, other.port);
    let creds = if with_cred {
        "[[credentials]]\nname = \"tok\"\nsource = \"env:WARDEN_TEST_TOKEN\"\nhosts = [\"api.test\"]\nenv = \"TOKEN\"\n"
    } else {
        ""
    };
    let pol = format!(
        "version = 1\nname = \"test\"\n{extra}\n[network]\nallow = [\"api.test:{a}\", \"other.test:{o}\", \"127.0.0.2/32:{a}\", \"127.0.0.2/32:{o}\"]\n{http_rules}\n{creds}"
    );
    let h = harness_with(&pol, Arc::new(resolver()), Some(Arc::new(icpt))).await;
    Setup {
        h,
        api,
        other,
        bundle,
        placeholder,
        _dir: dir,
    }
}

impl Setup {
    async fn curl(&self, args: &[&str]) -> (u16, String) {
        let mut all = vec!["--cacert", self.bundle.to_str().unwrap()];
        all.extend_from_slice(args);
        curl(self.h.proxy, &all).await
    }
    fn api(&self, path: &str) -> String {
        format!("https://api.test:{}{path}", self.api.port)
    }
    fn other(&self, path: &str) -> String {
        format!("https://other.test:{}{path}", self.other.port)
    }
    fn audit_text(&self) -> String {
        self.h.egress.audit().flush().unwrap();
        std::fs::read_to_string(&self.h.audit_path).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholder_is_injected_at_the_bound_host_only() {
    // "all": other.test (no credential, no rules) is intercepted too, so the guard sees it.
    let s = setup("[tls]\nintercept = \"all\"", "", true).await;
    let ph = s.placeholder.clone();
    assert!(ph.starts_with("ghp_") && ph != SECRET, "{ph}");

    // Bound host: the upstream sees the real value; the app's other headers are untouched;
    // the echo of the real value comes back as the placeholder.
    let auth = format!("Authorization: Bearer {ph}");
    let (code, body) = s
        .curl(&["-H", &auth, "-H", "X-Other: keep-me", &s.api("/echo?k=1")])
        .await;
    assert_eq!(code, 200, "{body}");
    let seen = s.api.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].contains(&format!("authorization: Bearer {SECRET}")),
        "{seen:?}"
    );
    assert!(seen[0].contains("x-other: keep-me"), "{seen:?}");
    assert!(!seen[0].contains(&ph), "{seen:?}");
    assert!(
        body.contains(&format!("authorization: Bearer {ph}")),
        "{body}"
    );
    assert!(!body.contains(SECRET), "the echo must be scrubbed: {body}");
    let scrubbed =
        s.h.find(|e| e["action"] == "scrub" && e["location"] == "response body");
    assert_eq!(scrubbed.len(), 1, "{scrubbed:#?}");

    // Placeholder in the URL of a bound host: replaced there too.
    let (code, _) = s.curl(&[&s.api(&format!("/echo?key={ph}"))]).await;
    assert_eq!(code, 200);
    assert!(
        s.api.seen()[1].contains(&format!("key={SECRET}")),
        "{:?}",
        s.api.seen()
    );

    // Unbound host: refused before anything is sent, recorded durably first.
    let (code, body) = s.curl(&["-H", &auth, &s.other("/echo")]).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("credential `tok`") && body.contains("hosts"),
        "{body}"
    );
    assert!(
        body.contains("policy.toml"),
        "the refusal names the rule: {body}"
    );
    // One line for what and why, one for the fix; real newlines.
    assert!(!body.contains("\\n"), "{body}");
    assert!(body.ends_with("out of the request\n"), "{body}");
    let on_disk = s.h.events_no_flush();
    let ex: Vec<&Value> = on_disk
        .iter()
        .filter(|e| e["surface"] == "credential" && e["action"] == "exfiltration")
        .collect();
    assert_eq!(ex.len(), 1, "{on_disk:#?}");
    assert_eq!(ex[0]["target"], "tok");
    assert_eq!(ex[0]["host"], "other.test");
    assert_eq!(ex[0]["which"], "placeholder");
    assert_eq!(ex[0]["location"], "header authorization");
    assert_eq!(ex[0]["enforced"], true);
    assert!(
        ex[0]["rule"].as_str().unwrap().contains("policy.toml:"),
        "{ex:?}"
    );

    // The real value typed literally, encoded, in the URL, a form body, a streamed body.
    let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    let hex: String = SECRET.bytes().map(|b| format!("{b:02x}")).collect();
    let big = s._dir.path().join("big.bin");
    let mut data = vec![b'a'; 2 * 1024 * 1024];
    data.extend_from_slice(ph.as_bytes());
    std::fs::write(&big, &data).unwrap();
    let big_arg = format!("@{}", big.display());
    let attempts: Vec<Vec<String>> = vec![
        vec!["-H".into(), format!("X-Api-Key: {SECRET}"), s.other("/x")],
        vec![s.other(&format!("/x?t={b64}"))],
        vec![s.other(&format!("/x?t={hex}"))],
        vec!["-d".into(), format!("token={ph}"), s.other("/form")],
        vec!["--data-binary".into(), big_arg, s.other("/big")],
    ];
    for a in &attempts {
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        let (code, body) = s.curl(&args).await;
        assert_eq!(code, 403, "{a:?}: {body}");
    }
    for r in s.other.seen() {
        assert!(
            !r.contains(SECRET) && !r.contains(&ph),
            "other.test saw a value: {r}"
        );
    }
    // Only the streamed body ever reached other.test (headers and a prefix of the
    // body, cut before the value).
    assert!(s.other.seen().len() <= 1, "{:?}", s.other.seen().len());
    let text = s.audit_text();
    assert!(!text.contains(SECRET), "a secret in the audit log");
    assert!(text.contains("\"action\":\"inject\""), "{text}");
    let n = text.matches("\"action\":\"exfiltration\"").count();
    assert_eq!(n, 1 + attempts.len(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_secret_is_scrubbed_across_chunks_on_h1_and_h2() {
    let s = setup("", "", true).await;
    let ph = s.placeholder.clone();
    let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    let ph64 = base64::engine::general_purpose::STANDARD.encode(&ph);
    for version in ["--http1.1", "--http2"] {
        let out = tokio::process::Command::new("curl")
            .args(["-s", "-S", "--max-time", "10", "-i", version, "--cacert"])
            .arg(&s.bundle)
            .arg("-x")
            .arg(format!("http://{}", s.h.proxy))
            .args(["-w", "\nVERSION=%{http_version}"])
            .arg(s.api("/leak"))
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!text.contains(SECRET), "{version}: {text}");
        assert!(!text.contains(&b64), "{version}: {text}");
        assert!(
            text.contains(&format!("before {ph} b64:{ph64} after")),
            "{version}: {text}"
        );
        assert!(
            text.to_ascii_lowercase()
                .contains(&format!("x-echo: {}", ph.to_ascii_lowercase())),
            "{version}: {text}"
        );
        let want = if version == "--http2" {
            "VERSION=2"
        } else {
            "VERSION=1.1"
        };
        assert!(text.contains(want), "{version}: {text}");
    }
    // Both legs spoke the same protocol: HTTP/2 reached the upstream as HTTP/2.
    let seen = s.api.seen();
    assert!(seen[0].starts_with("HTTP/1.1 GET /leak"), "{seen:?}");
    assert!(seen[1].starts_with("HTTP/2.0 GET"), "{seen:?}");
    let text = s.audit_text();
    assert!(text.contains("\"action\":\"scrub\""), "{text}");
    assert!(!text.contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_before_the_stream_ends() {
    let s = setup("", "", true).await;
    // intercept = "needed": other.test (no credential, no rules) stays end-to-end TLS,
    // so a client trusting only the session CA cannot verify it.
    let (code, _) = s.curl(&[&s.other("/")]).await;
    assert_eq!(code, 0);
    assert_eq!(s.other.seen().len(), 0);
    let mut child = tokio::process::Command::new("curl")
        .args(["-s", "-N", "--max-time", "20", "--cacert"])
        .arg(&s.bundle)
        .arg("-x")
        .arg(format!("http://{}", s.h.proxy))
        .arg(s.api("/sse"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    // The server sends "two" (and ends) only after the test saw "one": a proxy that
    // buffered the stream would never deliver "one".
    let first = tokio::time::timeout(Duration::from_secs(15), async {
        while !String::from_utf8_lossy(&got).contains("data: one\n\n") {
            let n = out.read(&mut buf).await.unwrap();
            assert!(n > 0, "stream ended before the first event");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        first.is_ok(),
        "the first event was held back: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(!String::from_utf8_lossy(&got).contains("two"));
    s.api.release.notify_one();
    out.read_to_end(&mut got).await.unwrap();
    assert!(String::from_utf8_lossy(&got).ends_with("data: two\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_interception() {
    let s = setup("", "", true).await;
    let ph = s.placeholder.clone();
    let target = format!("api.test:{}", s.api.port);
    let mut tcp = TcpStream::connect(s.h.proxy).await.unwrap();
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut roots = warden_egress::warden_tls::rustls::RootCertStore::empty();
    for cert in rustls_pem(&std::fs::read(&s.bundle).unwrap()) {
        roots.add(cert).unwrap();
    }
    let provider =
        Arc::new(warden_egress::warden_tls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config =
        warden_egress::warden_tls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name =
        warden_egress::warden_tls::rustls::pki_types::ServerName::try_from("api.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {ph}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let want_hello = format!("hello {ph}\n");
    tokio::time::timeout(Duration::from_secs(10), async {
        while !String::from_utf8_lossy(&got).contains(&want_hello) {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no scrubbed hello: {}", String::from_utf8_lossy(&got)));
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    tls.write_all(b"ping\n").await.unwrap();
    let mut echoed = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !echoed.ends_with(b"ping\n") {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0);
            echoed.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap();
    assert!(s.api.seen()[0].contains(&format!("authorization: Bearer {SECRET}")));
}

fn rustls_pem(
    pem: &[u8],
) -> Vec<warden_egress::warden_tls::rustls::pki_types::CertificateDer<'static>> {
    use warden_egress::warden_tls::rustls::pki_types::pem::PemObject;
    warden_egress::warden_tls::rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_rules_apply_to_intercepted_https_and_tunnelled_http() {
    let plain = http_upstream("127.0.0.2:0").await;
    let pp = plain.port();
    let rules =
        "[[network.http]]\nhost = \"api.test\"\nmethods = [\"GET\"]\npaths = [\"/repos/**\"]\n";
    let s = setup("", rules, false).await;
    let (code, body) = s.curl(&[&s.api("/repos/acme/x")]).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = s.curl(&["-X", "POST", &s.api("/repos/acme/x")]).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("[[network.http]]"), "{body}");
    let (code, _) = s.curl(&[&s.api("/other")]).await;
    assert_eq!(code, 403);
    // h2 too.
    let (code, _) = s.curl(&["--http2", &s.api("/other")]).await;
    assert_eq!(code, 403);
    // A request naming another host on the intercepted connection is refused.
    let (code, _) = s
        .curl(&["-H", "Host: other.test", &s.api("/repos/acme/x")])
        .await;
    assert_eq!(code, 400);
    assert_eq!(s.api.seen().len(), 1, "{:?}", s.api.seen());
    // Plain HTTP inside a CONNECT tunnel is read as HTTP: the rules hold there too.
    drop(s);
    let pol = format!(
        "version = 1\nname = \"t\"\n[network]\nallow = [\"api.test:{pp}\", \"127.0.0.2/32:{pp}\"]\n{rules}"
    );
    let h = harness(&pol, Arc::new(resolver())).await;
    let (code, body) = curl(h.proxy, &["-p", &format!("http://api.test:{pp}/repos/a")]).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("upstream saw GET /repos/a"), "{body}");
    let (code, _) = curl(h.proxy, &["-p", &format!("http://api.test:{pp}/secret")]).await;
    assert_eq!(code, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_upstream_certificate_is_a_502() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = SessionCa::new().unwrap();
    let rogue = SessionCa::new().unwrap();
    let bad = https_upstream(&rogue, "api.test").await;
    let (icpt, bundle) = interception(dir.path(), &trusted, false);
    let p = bad.port;
    let pol = format!(
        "version = 1\nname = \"t\"\n[tls]\nintercept = \"all\"\n[network]\nallow = [\"api.test:{p}\", \"127.0.0.2/32:{p}\"]\n"
    );
    let h = harness_with(&pol, Arc::new(resolver()), Some(Arc::new(icpt))).await;
    let (code, body) = curl(
        h.proxy,
        &[
            "--cacert",
            bundle.to_str().unwrap(),
            &format!("https://api.test:{p}/"),
        ],
    )
    .await;
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("upstream TLS failed"), "{body}");
    let fix = format!("extra_roots in {}\n", h.policy_path.display());
    assert!(body.ends_with(&fix), "{body}");
    let ev = h.find(|e| e["action"] == "tls" && e["upstream"] == true);
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert!(bad.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_records_exfiltration_without_blocking() {
    let s = setup("mode = \"audit\"\n[tls]\nintercept = \"all\"", "", true).await;
    let ph = s.placeholder.clone();
    let (code, body) = s
        .curl(&[
            "-H",
            &format!("Authorization: Bearer {ph}"),
            &s.other("/echo"),
        ])
        .await;
    assert_eq!(code, 200, "{body}");
    // Never injected toward an unbound host, even in audit mode.
    let seen = s.other.seen();
    assert!(
        seen[0].contains(&ph) && !seen[0].contains(SECRET),
        "{seen:?}"
    );
    let ex =
        s.h.find(|e| e["action"] == "exfiltration" && e["enforced"] == false);
    assert_eq!(ex.len(), 1);
}

/// A short value: its placeholder is padded (docs/credentials.md, placeholder rule 4),
/// so injecting it changes a body's length.
const SHORT: &str = "pin-4821-7730";

/// Upstreams api.test and other.test (both intercepted), credential `tok` declared in
/// the policy with `inject_body = inject` and credential `short` (not declared, like a
/// preset binding; `inject_body` = `inject`), both bound to api.test.
async fn body_setup(inject: bool) -> (Setup, String) {
    let dir = tempfile::tempdir().unwrap();
    let test_ca = SessionCa::new().unwrap();
    let api = https_upstream(&test_ca, "api.test").await;
    let other = https_upstream(&test_ca, "other.test").await;
    let roots = dir.path().join("upstream-ca.pem");
    std::fs::write(&roots, test_ca.cert_pem()).unwrap();
    let trust = UpstreamTrust::from_parts(vec![], &[roots]).unwrap();
    let ca = SessionCa::new().unwrap();
    let bundle = dir.path().join("session-ca.pem");
    std::fs::write(&bundle, ca.cert_pem()).unwrap();
    let cred = |name: &str, value: &str| {
        let secret = Secret::new(value.as_bytes().to_vec());
        let placeholder = Placeholder::for_secret(&secret, &mut rand::rng());
        SessionCredential {
            name: name.into(),
            source: None,
            secret,
            placeholder,
            hosts: vec!["api.test".into()],
            env: None,
            header: None,
            format: None,
            inject_body: inject,
        }
    };
    let icpt =
        Interception::new(ca, trust, vec![cred("tok", SECRET), cred("short", SHORT)]).unwrap();
    let placeholder = icpt.placeholder("tok").unwrap().as_str().to_string();
    let short_ph = icpt.placeholder("short").unwrap().as_str().to_string();
    assert_ne!(short_ph.len(), SHORT.len(), "{short_ph}");
    let (a, o) = (api.port, other.port);
    let pol = format!(
        "version = 1\nname = \"test\"\n[tls]\nintercept = \"all\"\n[network]\nallow = [\"api.test:{a}\", \"other.test:{o}\", \"127.0.0.2/32:{a}\", \"127.0.0.2/32:{o}\"]\n\
         [[credentials]]\nname = \"tok\"\nsource = \"env:WARDEN_TEST_TOKEN\"\nhosts = [\"api.test\"]\ninject_body = {inject}\n"
    );
    let h = harness_with(&pol, Arc::new(resolver()), Some(Arc::new(icpt))).await;
    let s = Setup {
        h,
        api,
        other,
        bundle,
        placeholder,
        _dir: dir,
    };
    (s, short_ph)
}

/// The body (after the blank line) of the request the upstream recorded.
fn seen_body(r: &str) -> &str {
    r.split_once("\n\n").map_or("", |(_, b)| b)
}

/// The `content-length` the upstream recorded, if any.
fn seen_length(r: &str) -> Option<usize> {
    r.lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_injection_when_the_policy_opts_in() {
    let (s, sph) = body_setup(true).await;
    let ph = s.placeholder.clone();

    // A body of known length (read whole): both placeholders replaced, in JSON and
    // URL-encoded; Content-Length follows the padded placeholder's change of length.
    let json = format!("{{\"key\":\"{ph}\",\"pin\":\"{sph}\"}}");
    for version in ["--http1.1", "--http2"] {
        let (code, body) = s
            .curl(&[
                version,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &json,
                &s.api("/json"),
            ])
            .await;
        assert_eq!(code, 200, "{version}: {body}");
        // The echo comes back scrubbed: the client sees its own placeholders.
        assert!(body.contains(&json), "{version}: {body}");
        assert!(!body.contains(SECRET) && !body.contains(SHORT), "{body}");
    }
    let want = format!("{{\"key\":\"{SECRET}\",\"pin\":\"{SHORT}\"}}");
    for r in s.api.seen() {
        assert_eq!(seen_body(&r), want, "{r}");
        if let Some(n) = seen_length(&r) {
            assert_eq!(n, want.len(), "{r}");
        }
        assert!(!r.contains(&ph) && !r.contains(&sph), "{r}");
    }
    assert!(
        s.api.seen().iter().any(|r| seen_length(r).is_some()),
        "HTTP/1.1 sent a Content-Length: {:?}",
        s.api.seen()
    );

    // A streamed body (chunked, unknown length), the placeholders after 64 KiB and
    // split across the client's writes: replaced as it streams.
    let file = s._dir.path().join("stream.bin");
    let mut data = vec![b'a'; 64 * 1024];
    data.extend_from_slice(format!("tok={ph}&pin={sph}&end").as_bytes());
    std::fs::write(&file, &data).unwrap();
    let at = format!("@{}", file.display());
    let (code, body) = s
        .curl(&[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &at,
            &s.api("/stream"),
        ])
        .await;
    assert_eq!(code, 200, "{body}");
    let seen = s.api.seen();
    let last = seen.last().unwrap();
    assert!(
        last.contains("transfer-encoding: chunked") || seen_length(last).is_none(),
        "{last}"
    );
    assert!(
        seen_body(last).ends_with(&format!("tok={SECRET}&pin={SHORT}&end")),
        "{}",
        &seen_body(last)[64 * 1024..]
    );

    // A large body of known length (over the buffer limit, streamed): same.
    let mut big = vec![b'b'; 2 * 1024 * 1024];
    big.extend_from_slice(format!("tok={ph}").as_bytes());
    std::fs::write(&file, &big).unwrap();
    let (code, body) = s.curl(&["--data-binary", &at, &s.api("/big")]).await;
    assert_eq!(code, 200, "{}", body.len());
    let seen = s.api.seen();
    assert!(seen_body(seen.last().unwrap()).ends_with(&format!("tok={SECRET}")));

    // Never toward a host the credentials are not bound to: refused before sending.
    let (code, body) = s.curl(&["--data-binary", &json, &s.other("/json")]).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = s
        .curl(&[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &at,
            &s.other("/stream"),
        ])
        .await;
    assert_eq!(code, 403, "{body}");
    for r in s.other.seen() {
        assert!(
            !r.contains(SECRET) && !r.contains(SHORT),
            "other.test saw a value"
        );
    }

    let injected =
        s.h.find(|e| e["action"] == "inject" && e["location"] == "body");
    assert!(
        injected.iter().any(|e| e["target"] == "tok"),
        "{injected:#?}"
    );
    assert!(
        injected.iter().any(|e| e["target"] == "short"),
        "{injected:#?}"
    );
    let text = s.audit_text();
    assert!(
        !text.contains(SECRET) && !text.contains(SHORT),
        "a secret in the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_is_not_injected_by_default() {
    let (s, sph) = body_setup(false).await;
    let ph = s.placeholder.clone();
    let json = format!("{{\"key\":\"{ph}\",\"pin\":\"{sph}\"}}");
    let auth = format!("Authorization: Bearer {ph}");
    let (code, body) = s
        .curl(&["-H", &auth, "--data-binary", &json, &s.api("/json")])
        .await;
    assert_eq!(code, 200, "{body}");
    let file = s._dir.path().join("stream.bin");
    std::fs::write(&file, format!("tok={ph}")).unwrap();
    let at = format!("@{}", file.display());
    let (code, body) = s
        .curl(&[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &at,
            &s.api("/stream"),
        ])
        .await;
    assert_eq!(code, 200, "{body}");
    let seen = s.api.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    // The header is injected as always; the bodies reach the bound host unchanged.
    assert!(
        seen[0].contains(&format!("authorization: Bearer {SECRET}")),
        "{}",
        seen[0]
    );
    assert_eq!(seen_body(&seen[0]), json);
    assert_eq!(seen_body(&seen[1]), format!("tok={ph}"));
    assert!(
        s.h.find(|e| e["action"] == "inject" && e["location"] == "body")
            .is_empty()
    );
}

/// How these tests load credentials: from `env` only, as session `s-test`.
fn test_ctx<'a>(
    env: &'a HashMap<String, String>,
    placeholders: Option<&'a warden_egress::warden_secrets::PlaceholderKey>,
) -> warden_egress::warden_secrets::LoadContext<'a> {
    warden_egress::warden_secrets::LoadContext {
        env,
        base_dir: None,
        vault: None,
        session: "s-test",
        command_timeout: Duration::from_secs(5),
        placeholders,
    }
}

/// Issue #7, delivery: a reload moves the credentials with the policy. A credential's
/// binding can move to another host, a new credential with a `header` is injected at
/// once (the session needs no new variable), one that cannot be loaded is reported in
/// the reload event and left out (an `optional` one whose variable is not set is left
/// out silently), and one the policy drops stays guarded but is bound to no host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_credentials_with_the_policy() {
    let s = setup("[tls]\nintercept = \"all\"", "", true).await;
    let ph = s.placeholder.clone();
    let auth = format!("Authorization: Bearer {ph}");
    let (a, o) = (s.api.port, s.other.port);
    let net = format!(
        "[tls]\nintercept = \"all\"\n[network]\nallow = [\"api.test:{a}\", \"other.test:{o}\", \"127.0.0.2/32:{a}\", \"127.0.0.2/32:{o}\"]\n"
    );
    const HDR: &str = "hdr-real-value-0123456789abcdef";
    let env: HashMap<String, String> = [
        ("WARDEN_TEST_TOKEN".to_string(), SECRET.to_string()),
        ("WARDEN_TEST_HDR".to_string(), HDR.to_string()),
    ]
    .into_iter()
    .collect();
    let ctx = test_ctx(&env, None);
    let reload = |text: String| {
        std::fs::write(
            &s.h.policy_path,
            format!("version = 1\nname = \"test\"\n{text}"),
        )
        .unwrap();
        let p = Policy::load(&s.h.policy_path).unwrap_or_else(|e| panic!("{e}"));
        let r =
            s.h.egress
                .credentials()
                .unwrap()
                .reloaded(&p, &ctx)
                .unwrap();
        s.h.egress
            .reload_with_credentials(p, "test".into(), r.credentials, &r.problems);
    };
    // v2: `tok` moves to other.test; `hdr` is new, set as a header on api.test;
    // `gone` cannot be loaded.
    reload(format!(
        "{net}
[[credentials]]
name = \"tok\"
source = \"env:WARDEN_TEST_TOKEN\"
hosts = [\"other.test\"]
env = \"TOKEN\"

[[credentials]]
name = \"hdr\"
source = \"env:WARDEN_TEST_HDR\"
hosts = [\"api.test\"]
header = \"X-Api-Key\"

[[credentials]]
name = \"gone\"
source = \"env:WARDEN_TEST_NOT_SET\"
hosts = [\"api.test\"]
header = \"X-Gone\"

[[credentials]]
name = \"opt\"
source = \"env:WARDEN_TEST_OPT_NOT_SET\"
hosts = [\"api.test\"]
header = \"X-Opt\"
optional = true
"
    ));
    assert_eq!(
        s.h.egress
            .credentials()
            .unwrap()
            .placeholder("tok")
            .unwrap()
            .as_str(),
        ph
    );
    let (code, body) = s.curl(&[&s.api("/echo")]).await;
    assert_eq!(code, 200, "{body}");
    let seen = s.api.seen();
    assert!(seen[0].contains(&format!("x-api-key: {HDR}")), "{seen:?}");
    assert!(!seen[0].contains("x-gone"), "{seen:?}");
    assert!(!body.contains(HDR), "the echo must be scrubbed: {body}");
    let (code, body) = s.curl(&["-H", &auth, &s.other("/echo")]).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        s.other.seen()[0].contains(&format!("authorization: Bearer {SECRET}")),
        "{:?}",
        s.other.seen()
    );
    let (code, body) = s.curl(&["-H", &auth, &s.api("/echo")]).await;
    assert_eq!(code, 403, "tok is no longer bound to api.test: {body}");
    let reloads = s.h.find(|e| e["action"] == "policy_reload");
    let problems = reloads[0]["credentials_not_loaded"].to_string();
    assert!(
        problems.contains("gone") && problems.contains("WARDEN_TEST_NOT_SET"),
        "{reloads:#?}"
    );
    assert!(
        !problems.contains("WARDEN_TEST_OPT_NOT_SET"),
        "an optional credential without its variable is no problem: {reloads:#?}"
    );
    assert!(!seen[0].contains("x-opt"), "{seen:?}");

    // v3 drops `tok`: its placeholder (and value) is refused everywhere, never injected.
    reload(net.clone());
    let (code, body) = s.curl(&["-H", &auth, &s.other("/echo")]).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("credential `tok`"), "{body}");
    let (code, _) = s.curl(&[&s.api("/echo")]).await;
    assert_eq!(code, 200);
    assert!(!s.api.seen()[1].contains("x-api-key"), "{:?}", s.api.seen());
    let text = s.audit_text();
    assert!(
        !text.contains(SECRET) && !text.contains(HDR),
        "a value in the audit log"
    );
}

/// `optional = true`: a credential whose variable is not set on the host is left out
/// (no placeholder, no variable in the session, nothing bound), one whose variable is
/// set is bound like any other, and a required one that is not set still refuses the
/// session. The built-in `balanced` preset binds the provider keys that way.
#[test]
fn optional_credentials_are_left_out_only_when_their_variable_is_not_set() {
    let env: HashMap<String, String> = [
        ("WARDEN_TEST_SET".to_string(), SECRET.to_string()),
        ("WARDEN_TEST_EMPTY".to_string(), String::new()),
        ("ANTHROPIC_API_KEY".to_string(), SECRET.to_string()),
    ]
    .into_iter()
    .collect();
    let ctx = test_ctx(&env, None);
    let cred = |name: &str, var: &str, optional: bool| {
        format!(
            "[[credentials]]\nname = \"{name}\"\nsource = \"env:{var}\"\nhosts = [\"api.test\"]\n\
             env = \"{}\"\noptional = {optional}\n",
            name.to_uppercase()
        )
    };
    let policy = |creds: &str| {
        Policy::parse(
            &format!("version = 1\nname = \"t\"\n{creds}"),
            "t.toml",
            Path::new("."),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let p = policy(&format!(
        "{}{}{}",
        cred("set", "WARDEN_TEST_SET", true),
        cred("unset", "WARDEN_TEST_NOT_SET", true),
        cred("empty", "WARDEN_TEST_EMPTY", true)
    ));
    let (icpt, _) = Interception::from_policy(&p, &ctx).unwrap();
    assert_eq!(icpt.credential_names(), ["set"]);
    let env_vars: Vec<String> = icpt
        .session_env(Path::new("/b.pem"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(env_vars.contains(&"SET".to_string()), "{env_vars:?}");
    assert!(
        !env_vars.contains(&"UNSET".to_string()) && !env_vars.contains(&"EMPTY".to_string()),
        "{env_vars:?}"
    );

    let p = policy(&cred("required", "WARDEN_TEST_NOT_SET", false));
    let Err(err) = Interception::from_policy(&p, &ctx) else {
        panic!("a required credential without its variable must refuse the session")
    };
    assert!(
        err.to_string().contains("required") && err.to_string().contains("WARDEN_TEST_NOT_SET"),
        "{err}"
    );

    // The built-in preset: only the provider variables set on the host are bound, each
    // to a placeholder in the same variable.
    let (icpt, _) =
        Interception::from_policy(&Policy::preset(warden_policy::Preset::Balanced), &ctx).unwrap();
    assert_eq!(icpt.credential_names(), ["anthropic"]);
    let ph = icpt.placeholder("anthropic").unwrap().as_str().to_string();
    assert_ne!(ph, SECRET);
    assert!(
        icpt.session_env(Path::new("/b.pem"))
            .contains(&("ANTHROPIC_API_KEY".to_string(), ph)),
    );
}

/// With the machine's placeholder key, a credential gets the same placeholder at every
/// session start (and keeps it through reloads, as always); a session started with
/// another value gets another one; without the key each start makes a fresh one.
#[test]
fn placeholders_stay_the_same_across_sessions_with_the_machine_key() {
    use warden_egress::warden_secrets::PlaceholderKey;
    let dir = tempfile::tempdir().unwrap();
    let key = PlaceholderKey::load_or_create(&dir.path().join(PlaceholderKey::FILE)).unwrap();
    let env_with = |value: &str| -> HashMap<String, String> {
        [("WARDEN_TEST_KEY".to_string(), value.to_string())]
            .into_iter()
            .collect()
    };
    let ctx = test_ctx;
    let policy = |source: &str| {
        Policy::parse(
            &format!(
                "version = 1\nname = \"t\"\n[[credentials]]\nname = \"k\"\nsource = \"{source}\"\n\
                 hosts = [\"api.test\"]\nenv = \"K\"\n"
            ),
            "t.toml",
            Path::new("."),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let env = env_with(SECRET);
    let p = policy("env:WARDEN_TEST_KEY");
    let start = |placeholders| {
        let (icpt, _) = Interception::from_policy(&p, &ctx(&env, placeholders)).unwrap();
        icpt.placeholder("k").unwrap().clone()
    };
    let first = start(Some(&key));
    assert_ne!(first.as_str(), SECRET);
    assert_eq!(
        start(Some(&key)),
        first,
        "another session, the same key and value"
    );
    assert_ne!(start(None), first);
    assert_ne!(start(None), start(None));

    // A reload that loads the value again (its source changed) keeps it too; a new value
    // gets another placeholder.
    let (icpt, _) = Interception::from_policy(&p, &ctx(&env, Some(&key))).unwrap();
    let other_value = format!("{SECRET}0");
    let other_env: HashMap<String, String> = [("WARDEN_TEST_KEY_3".to_string(), other_value)]
        .into_iter()
        .collect();
    let mut both = env.clone();
    both.insert("WARDEN_TEST_KEY_2".into(), SECRET.into());
    let r = icpt
        .credentials()
        .reloaded(&policy("env:WARDEN_TEST_KEY_2"), &ctx(&both, Some(&key)))
        .unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.credentials.placeholder("k"), Some(&first));
    let r = icpt
        .credentials()
        .reloaded(
            &policy("env:WARDEN_TEST_KEY_3"),
            &ctx(&other_env, Some(&key)),
        )
        .unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    // Within a session a placeholder never changes (the reload adopts it) ...
    assert_eq!(r.credentials.placeholder("k"), Some(&first));
    // ... but a session started with the new value gets its own.
    let p3 = policy("env:WARDEN_TEST_KEY_3");
    let (icpt, _) = Interception::from_policy(&p3, &ctx(&other_env, Some(&key))).unwrap();
    assert_ne!(icpt.placeholder("k"), Some(&first));
}
