//! TLS interception: terminate the client's TLS with a leaf from the session CA, open
//! a verified TLS connection to the real server, and serve HTTP between the two.
//!
//! Order: the upstream handshake comes first, offering the protocols the client
//! offered (`h2`, `http/1.1`, or no ALPN); the client is then offered exactly what the
//! upstream chose ([`Alpn::from_negotiated`]), so both legs speak the same HTTP
//! version and nothing is translated. An upstream that fails verification is recorded
//! and the client, once its handshake is done, gets a 502 naming the reason.

use crate::egress::{ConnGuard, Egress, Refusal};
use crate::http::{self, Exchange, Proto};
use crate::io::{Counted, Prefixed};
use crate::target::Target;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use warden_policy::host::RequestHost;
use warden_tls::Alpn;
use warden_tls::rustls::pki_types::ServerName;

/// How long each TLS handshake (client or upstream) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Intercept one TLS connection. `client` replays the ClientHello already read;
/// `origin` is the host the connection is for (the CONNECT/TUN name, or the checked
/// SNI of a connection to an address); `sni` and `client_alpn` come from the hello.
pub(crate) async fn serve<C>(
    egress: &Egress,
    client: Prefixed<C>,
    stream: TcpStream,
    guard: &mut ConnGuard,
    origin: Target,
    sni: Option<String>,
    client_alpn: &[Vec<u8>],
) where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Some(icpt) = egress.interception().cloned() else {
        return;
    };
    let offers = |p: &[u8]| client_alpn.iter().any(|a| a == p);
    let up_alpn = match (client_alpn.is_empty(), offers(b"h2"), offers(b"http/1.1")) {
        (true, _, _) => Alpn::None,
        (false, true, true) => Alpn::H2AndHttp1,
        (false, true, false) => Alpn::H2,
        // Only protocols Warden does not read: offer HTTP/1.1, so a client that
        // insists on something else fails its handshake (fail closed).
        (false, false, _) => Alpn::Http1,
    };
    let cert_host = sni.unwrap_or_else(|| origin.host_str());
    let server_name = match &origin.host {
        RequestHost::Name(n) => ServerName::try_from(n.clone()).map_err(|e| e.to_string()),
        RequestHost::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
    };
    let counters = guard.counters.clone();
    let upstream = async {
        let name = server_name?;
        let config = icpt
            .upstream_trust()
            .client_config(up_alpn)
            .map_err(|e| e.to_string())?;
        let io = Counted::new(stream, counters, ());
        match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            TlsConnector::from(config).connect(name, io),
        )
        .await
        {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the TLS handshake timed out".to_string()),
        }
    };
    let upstream = match upstream.await {
        Ok(t) => t,
        Err(why) => {
            guard.fail(format!("upstream TLS: {why}"));
            let refusal = egress.upstream_tls_failed(guard, &why).await;
            answer_with(&icpt, client, &cert_host, client_alpn, refusal).await;
            return;
        }
    };
    let negotiated = upstream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let up_proto = if negotiated.as_deref() == Some(b"h2") {
        Proto::H2
    } else {
        Proto::H1
    };
    let config = match icpt
        .session_ca()
        .server_config_for(&cert_host, Alpn::from_negotiated(negotiated.as_deref()))
    {
        Ok(c) => c,
        Err(e) => {
            guard.fail(format!("could not mint a certificate: {e}"));
            return;
        }
    };
    let client =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(client))
            .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                // Typically a client that does not trust the session CA (a pinned store).
                guard.fail(format!("client TLS handshake failed: {e}"));
                return;
            }
            Err(_) => {
                guard.fail("client TLS handshake timed out");
                return;
            }
        };
    let client_proto = if client.get_ref().1.alpn_protocol() == Some(b"h2") {
        Proto::H2
    } else {
        Proto::H1
    };
    let x = match Exchange::new(egress, guard.ctx, origin, true, guard.conn.clone()) {
        Ok(x) => x,
        Err(r) => {
            guard.fail(r.message.trim_end().to_string());
            return;
        }
    };
    if let Err(e) = http::serve_flow(x, client, client_proto, upstream, up_proto).await {
        guard.fail(e);
    }
}

/// Finish the client's handshake and answer every request with `refusal` (the
/// upstream could not be reached safely).
async fn answer_with<C>(
    icpt: &crate::Interception,
    client: Prefixed<C>,
    cert_host: &str,
    client_alpn: &[Vec<u8>],
    refusal: Refusal,
) where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let h1 = client_alpn.is_empty() || client_alpn.iter().any(|a| a == b"http/1.1");
    let alpn = if h1 { Alpn::Http1 } else { Alpn::H2 };
    let Ok(config) = icpt.session_ca().server_config_for(cert_host, alpn) else {
        return;
    };
    let Ok(Ok(tls)) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(client)).await
    else {
        return;
    };
    let svc = hyper::service::service_fn(move |_req| {
        let r = refusal.clone();
        async move { Ok::<_, Infallible>(http::refusal(r)) }
    });
    let io = TokioIo::new(tls);
    let _ = if h1 {
        hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await
    };
}
