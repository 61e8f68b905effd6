//! Real TLS handshakes against minted leaves: rustls clients, curl and Python.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use warden_tls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use warden_tls::{Alpn, CaOptions, SessionCa, UpstreamTrust, ca_env, upstream_client_config};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serve `count` TLS connections with `config`, answering any request with `ok`.
async fn serve(config: Arc<ServerConfig>, count: usize) -> Result<SocketAddr, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        for _ in 0..count {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Handshake as a rustls client and return the negotiated ALPN protocol.
async fn handshake(
    client: Arc<ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> Result<Option<Vec<u8>>, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let server_name = warden_tls::rustls::pki_types::ServerName::try_from(name.to_string())?;
    let mut tls = TlsConnector::from(client).connect(server_name, tcp).await?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut body = Vec::new();
    tls.read_to_end(&mut body).await?;
    Ok(alpn)
}

fn client_trusting_only(ca: &SessionCa, alpn: Alpn) -> Result<Arc<ClientConfig>, BoxError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone())?;
    let provider = Arc::new(warden_tls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.protocols();
    Ok(Arc::new(config))
}

#[tokio::test]
async fn minted_leaf_is_accepted_by_a_client_trusting_only_the_session_ca() -> Result<(), BoxError>
{
    let ca = SessionCa::new()?;
    let addr = serve(
        ca.server_config_for("api.example.test", Alpn::H2AndHttp1)?,
        2,
    )
    .await?;
    let alpn = handshake(
        client_trusting_only(&ca, Alpn::H2AndHttp1)?,
        addr,
        "api.example.test",
    )
    .await?;
    assert!(
        alpn.as_deref() == Some(&b"h2"[..]),
        "h2 should be negotiated"
    );
    // The leaf is for that name only.
    let wrong = handshake(
        client_trusting_only(&ca, Alpn::Http1)?,
        addr,
        "other.example.test",
    )
    .await;
    assert!(wrong.is_err(), "a leaf must not be valid for another name");
    Ok(())
}

#[tokio::test]
async fn alpn_mirrors_what_the_caller_asks_for() -> Result<(), BoxError> {
    let ca = SessionCa::new()?;
    let addr = serve(ca.server_config_for("h1.example.test", Alpn::Http1)?, 1).await?;
    let alpn = handshake(
        client_trusting_only(&ca, Alpn::H2AndHttp1)?,
        addr,
        "h1.example.test",
    )
    .await?;
    assert!(alpn.as_deref() == Some(&b"http/1.1"[..]));
    Ok(())
}

#[tokio::test]
async fn ip_literal_hosts_get_an_ip_san() -> Result<(), BoxError> {
    let ca = SessionCa::new()?;
    let addr = serve(ca.server_config_for("127.0.0.1", Alpn::Http1)?, 1).await?;
    handshake(client_trusting_only(&ca, Alpn::Http1)?, addr, "127.0.0.1").await?;
    Ok(())
}

#[tokio::test]
async fn upstream_with_an_untrusted_certificate_is_refused() -> Result<(), BoxError> {
    // A server whose chain ends in some other (session) CA: not in the system store.
    let rogue = SessionCa::new()?;
    let addr = serve(
        rogue.server_config_for("upstream.example.test", Alpn::H2AndHttp1)?,
        1,
    )
    .await?;
    let client = upstream_client_config(&[])?;
    let result = handshake(client, addr, "upstream.example.test").await;
    let refused = match result {
        Err(e) => {
            e.to_string().contains("UnknownIssuer")
                || e.to_string().contains("invalid peer certificate")
        }
        Ok(_) => false,
    };
    assert!(
        refused,
        "an untrusted upstream must fail certificate verification"
    );
    Ok(())
}

#[tokio::test]
async fn extra_roots_are_trusted_upstream() -> Result<(), BoxError> {
    let internal = SessionCa::new()?;
    let dir = tempfile::tempdir()?;
    let pem = dir.path().join("internal-ca.pem");
    std::fs::write(&pem, internal.cert_pem())?;
    let addr = serve(
        internal.server_config_for("git.internal.test", Alpn::H2AndHttp1)?,
        1,
    )
    .await?;
    let trust = UpstreamTrust::load(std::slice::from_ref(&pem))?;
    let alpn = handshake(
        trust.client_config(Alpn::H2AndHttp1)?,
        addr,
        "git.internal.test",
    )
    .await?;
    assert!(alpn.as_deref() == Some(&b"h2"[..]));
    Ok(())
}

#[test]
fn bad_extra_roots_are_errors_naming_the_file() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("missing.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n")?;
    for path in [missing, empty] {
        let err = UpstreamTrust::load(std::slice::from_ref(&path)).err();
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains(&path.display().to_string()), "{message}");
    }
    Ok(())
}

#[test]
fn bundle_holds_system_roots_the_session_ca_and_extra_roots_but_no_key() -> Result<(), BoxError> {
    let ca = SessionCa::new()?;
    let extra = SessionCa::new()?;
    let dir = tempfile::tempdir()?;
    let pem = dir.path().join("extra.pem");
    std::fs::write(&pem, extra.cert_pem())?;
    let bundle = ca.trust_bundle(std::slice::from_ref(&pem))?;
    let certs = bundle.matches("-----BEGIN CERTIFICATE-----").count();
    assert!(certs > 2, "system roots missing from the bundle");
    assert!(bundle.contains(ca.cert_pem().trim()) || contains_der(&bundle, ca.cert_der()));
    assert!(contains_der(&bundle, extra.cert_der()));
    assert!(!bundle.contains("PRIVATE KEY"));
    assert!(!ca.cert_pem().contains("PRIVATE KEY"));
    let debug = format!("{ca:?}");
    assert!(!debug.contains("PRIVATE") && !debug.contains("key"));
    Ok(())
}

#[test]
fn roots_loaded_deferred_are_the_same_roots() -> Result<(), BoxError> {
    let ca = SessionCa::new()?;
    let extra = SessionCa::new()?;
    let dir = tempfile::tempdir()?;
    let pem = dir.path().join("extra.pem");
    std::fs::write(&pem, extra.cert_pem())?;
    let eager = UpstreamTrust::load(std::slice::from_ref(&pem))?;
    let deferred = UpstreamTrust::deferred(vec![pem]);
    // The session bundle is the store read as text, the eager one the parsed roots
    // encoded: the same certificates.
    let session = certs_of(&deferred.session_bundle(&ca)?);
    assert_eq!(session, certs_of(&eager.session_bundle(&ca)?));
    assert!(session.contains(ca.cert_der().as_ref()));
    assert!(session.contains(extra.cert_der().as_ref()));
    assert_eq!(
        certs_of(&deferred.pem_bundle()?),
        certs_of(&eager.pem_bundle()?)
    );
    // The roots themselves are parsed on first use, from the same store.
    deferred.client_config(Alpn::H2AndHttp1)?;
    assert_eq!(format!("{deferred:?}"), format!("{eager:?}"));
    Ok(())
}

#[test]
fn a_deferred_load_that_fails_is_reported_by_every_use() -> Result<(), BoxError> {
    let ca = SessionCa::new()?;
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("missing.pem");
    let trust = UpstreamTrust::deferred(vec![missing.clone()]);
    let errors = [
        trust.wait().err(),
        trust.session_bundle(&ca).err(),
        trust.client_config(Alpn::Http1).err(),
        trust.wait().err(),
    ];
    for err in errors {
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("tls.extra_roots") && message.contains(&missing.display().to_string()),
            "{message}"
        );
    }
    Ok(())
}

/// The distinct certificates (DER) of a PEM bundle.
fn certs_of(bundle: &str) -> std::collections::BTreeSet<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(bundle.as_bytes())
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    assert!(!certs.is_empty(), "no certificate in the bundle");
    certs.into_iter().collect()
}

fn contains_der(bundle: &str, der: &[u8]) -> bool {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let flat: String = bundle.lines().filter(|l| !l.starts_with("-----")).collect();
    flat.contains(&b64)
}

#[test]
fn leaves_are_cached_per_host_and_bounded() -> Result<(), BoxError> {
    let ca = SessionCa::with_options(CaOptions {
        cache_capacity: 2,
        ..CaOptions::default()
    })?;
    let a1 = ca.server_config_for("a.test", Alpn::H2AndHttp1)?;
    let a2 = ca.server_config_for("A.TEST.", Alpn::H2AndHttp1)?;
    assert!(
        Arc::ptr_eq(&a1, &a2),
        "same host and ALPN must reuse the config"
    );
    ca.server_config_for("b.test", Alpn::Http1)?;
    ca.server_config_for("a.test", Alpn::Http1)?; // a is now most recent
    ca.server_config_for("c.test", Alpn::Http1)?; // evicts b
    assert!(ca.cached_hosts() == 2);
    let a3 = ca.server_config_for("a.test", Alpn::H2AndHttp1)?;
    assert!(
        Arc::ptr_eq(&a1, &a3),
        "the recently used host must survive eviction"
    );
    assert!(ca.server_config_for("bad host", Alpn::Http1).is_err());
    Ok(())
}

#[test]
fn session_ca_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SessionCa>();
    assert_send_sync::<UpstreamTrust>();
}

#[test]
fn ca_env_points_the_usual_clients_at_the_bundle() {
    let env = ca_env(&PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    for name in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "PIP_CERT",
        "AWS_CA_BUNDLE",
        "CARGO_HTTP_CAINFO",
        "DENO_CERT",
    ] {
        assert!(
            env.iter()
                .any(|(k, v)| k == name && v == "/etc/ssl/certs/ca-certificates.crt"),
            "{name} missing"
        );
    }
}

/// Run a blocking client process off the runtime's worker threads.
async fn run(mut cmd: Command) -> Result<std::process::Output, BoxError> {
    Ok(tokio::task::spawn_blocking(move || cmd.output()).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_accepts_a_minted_leaf_with_the_bundle() -> Result<(), BoxError> {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipping: curl not installed");
        return Ok(());
    }
    let ca = SessionCa::new()?;
    let dir = tempfile::tempdir()?;
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, ca.trust_bundle(&[])?)?;
    // The test server speaks HTTP/1.1 only, so offer only that.
    let addr = serve(ca.server_config_for("api.example.test", Alpn::Http1)?, 2).await?;

    let mut ok = Command::new("curl");
    ok.args(["-sS", "--noproxy", "*", "--cacert"])
        .arg(&bundle)
        .arg("--resolve")
        .arg(format!("api.example.test:{}:127.0.0.1", addr.port()))
        .arg(format!("https://api.example.test:{}/", addr.port()));
    let out = run(ok).await?;
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == b"ok");

    // Without the bundle (system store only) the same leaf is refused.
    let mut refused = Command::new("curl");
    refused
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--cacert",
            "/etc/ssl/certs/ca-certificates.crt",
        ])
        .arg("--resolve")
        .arg(format!("api.example.test:{}:127.0.0.1", addr.port()))
        .arg(format!("https://api.example.test:{}/", addr.port()));
    let out = run(refused).await?;
    assert!(
        !out.status.success(),
        "curl accepted a leaf it had no root for"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_accepts_a_minted_leaf_through_ca_env() -> Result<(), BoxError> {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipping: python3 not installed");
        return Ok(());
    }
    let ca = SessionCa::new()?;
    let dir = tempfile::tempdir()?;
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, ca.trust_bundle(&[])?)?;
    let addr = serve(ca.server_config_for("127.0.0.1", Alpn::Http1)?, 1).await?;
    // The default context: it finds the bundle only through SSL_CERT_FILE.
    let script = "import ssl, sys, urllib.request\n\
                  ctx = ssl.create_default_context()\n\
                  opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))\n\
                  sys.stdout.write(opener.open(sys.argv[1], timeout=20).read().decode())\n";
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .arg(format!("https://127.0.0.1:{}/", addr.port()))
        .envs(ca_env(&bundle));
    let out = run(cmd).await?;
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == b"ok");
    Ok(())
}
