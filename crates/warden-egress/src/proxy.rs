//! The explicit proxy front end (what `HTTP_PROXY`/`HTTPS_PROXY` point at): HTTP/1.1
//! absolute-form forwarding of plain `http://`, CONNECT tunnels (TLS or plain TCP),
//! and WebSocket upgrades over plain HTTP.
//!
//! A plain-HTTP request is decided ([`Egress::open`], then the request rules) and
//! sent on an upstream connection kept for its client connection: the next request
//! of the same client to the same host reuses it while the policy is unchanged
//! (see [`Kept`]). Every upstream connection has its own `connect`/`close` audit
//! pair, and every request its `http` event.

use crate::egress::{Ctx, Egress, Front, PolicyVersion};
use crate::http::{
    Exchange, ReqBody, RespBody as Body, full, host_header, refusal, strip_hop_by_hop, text,
};
use crate::io::{Counted, Prefixed};
use crate::target::{Target, parse_authority, printable};
use crate::tunnel;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Serve the explicit proxy on `listener` until it fails.
pub async fn serve_proxy(egress: Egress, listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning or exiting.
                tracing::warn!("proxy accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let egress = egress.clone();
        tokio::spawn(async move { serve_connection(egress, stream, peer).await });
    }
}

/// Serve one client connection of the explicit proxy.
pub async fn serve_connection(egress: Egress, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    serve_io(egress, stream, peer).await;
}

/// [`serve_connection`] over any byte stream (the fuzz targets use an in-memory one).
pub(crate) async fn serve_io<I>(egress: Egress, stream: I, peer: SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let slot = Slot::default();
    let svc = hyper::service::service_fn(move |req| {
        let (egress, slot) = (egress.clone(), slot.clone());
        async move { Ok::<_, Infallible>(handle(egress, req, peer, slot).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .preserve_header_case(true)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!("proxy connection from {peer}: {e}");
    }
}

async fn handle(
    egress: Egress,
    req: Request<Incoming>,
    peer: SocketAddr,
    slot: Slot,
) -> Response<Body> {
    let ctx = Ctx {
        front: Front::Proxy,
        client: Some(peer),
    };
    if req.method() == Method::CONNECT {
        connect(egress, req, ctx).await
    } else {
        forward(egress, req, ctx, slot).await
    }
}

async fn connect(egress: Egress, req: Request<Incoming>, ctx: Ctx) -> Response<Body> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| req.uri().to_string());
    let target = match parse_authority(&raw, None) {
        Ok(t) => t,
        Err(e) => return refusal(egress.reject("connect", &raw, &e.to_string(), ctx).await),
    };
    let upstream = match egress.open(&target, ctx).await {
        Ok(u) => u,
        Err(r) => return refusal(r),
    };
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            // The client's own socket when nothing was read ahead (the relay then uses
            // its halves directly); otherwise the socket behind what hyper read ahead.
            Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) if parts.read_buf.is_empty() => {
                    tunnel::relay(&egress, parts.io.into_inner(), upstream).await
                }
                Ok(parts) => {
                    let client = Prefixed::new(parts.read_buf.to_vec(), parts.io.into_inner());
                    tunnel::relay(&egress, client, upstream).await
                }
                Err(upgraded) => tunnel::relay(&egress, TokioIo::new(upgraded), upstream).await,
            },
            Err(e) => {
                let mut upstream = upstream;
                upstream.guard.fail(format!("client upgrade failed: {e}"));
            }
        }
    });
    Response::new(full(String::new()))
}

async fn forward(
    egress: Egress,
    mut req: Request<Incoming>,
    ctx: Ctx,
    slot: Slot,
) -> Response<Body> {
    let uri = req.uri().clone();
    let shown = printable(&uri.to_string());
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => {}
        Some(_) => {
            return refusal(
                egress
                    .reject(
                        "http",
                        &shown,
                        "only http:// URLs are forwarded; use CONNECT for https",
                        ctx,
                    )
                    .await,
            );
        }
        None => {
            return refusal(
                egress
                    .reject(
                        "http",
                        &shown,
                        "this is a proxy: requests need an absolute http:// URL",
                        ctx,
                    )
                    .await,
            );
        }
    }
    let raw = uri.authority().map(|a| a.as_str()).unwrap_or("");
    let target = match parse_authority(raw, Some(80)) {
        Ok(t) => t,
        Err(e) => return refusal(egress.reject("http", &shown, &e.to_string(), ctx).await),
    };
    // The Host header must name the same host and port as the URI: an upstream may
    // route on either (virtual hosting, CDNs), so they must not disagree.
    let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
    match hosts.as_slice() {
        [] => {}
        [h] => {
            let same = h
                .to_str()
                .ok()
                .and_then(|h| parse_authority(h, Some(80)).ok())
                .is_some_and(|t| t == target);
            if !same {
                let why = format!(
                    "the Host header `{}` does not match the URI host {target}",
                    printable(&String::from_utf8_lossy(h.as_bytes()))
                );
                return refusal(egress.reject("http", &shown, &why, ctx).await);
            }
        }
        _ => {
            return refusal(
                egress
                    .reject("http", &shown, "more than one Host header", ctx)
                    .await,
            );
        }
    }
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let url = format!("http://{target}{path}");
    // The connect decision (and dial) first, so a host that is not allowed at all is
    // refused with the connect rule; then the request-level rules and the guard. The
    // previous request's upstream connection is reused when it went to the same
    // host under the policy still in force (the same decision would be made again).
    let mut kept = slot
        .take()
        .filter(|k| k.target == target && k.version == egress.version());
    if let Some(k) = &mut kept
        && k.sender.ready().await.is_err()
    {
        kept = None;
    }
    let reused = kept.is_some();
    let mut up = match kept {
        Some(k) => k,
        None => match dial(&egress, &target, ctx).await {
            Ok(k) => k,
            Err(resp) => return resp,
        },
    };
    let x = match Exchange::new(&egress, ctx, target.clone(), false, up.conn.clone()) {
        Ok(x) => x,
        Err(r) => return refusal(r),
    };
    let origin_form: hyper::Uri = match path.parse() {
        Ok(u) => u,
        Err(_) => {
            return refusal(
                egress
                    .reject("http", &shown, "the request path does not parse", ctx)
                    .await,
            );
        }
    };
    let head = req.method() == Method::HEAD;
    let x_method = req.method().to_string();
    let client_upgrade = hyper::upgrade::on(&mut req);
    let prepared = match x.prepare(req, &url).await {
        Ok(p) => p,
        Err(resp) => {
            // Nothing was sent: the connection stays usable.
            slot.put(up);
            return resp;
        }
    };
    let mut is_ws = false;
    let prepared = prepared.map_req(|req| {
        let (mut parts, body) = req.into_parts();
        is_ws = strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(
            header::HOST,
            HeaderValue::from_str(&host_header(&target, 80))
                .unwrap_or(HeaderValue::from_static("")),
        );
        parts.uri = origin_form;
        parts.version = hyper::Version::HTTP_11;
        Request::from_parts(parts, body)
    });
    let replay = if reused { prepared.replay() } else { None };
    let mut resp = match (
        x.send(prepared, |r| up.sender.send_request(r)).await,
        replay,
    ) {
        (Ok(r), _) => r,
        (Err(_), Some(again)) => {
            // The kept connection was closed under the request (an upstream idle
            // timeout racing it): once more, on a connection of its own.
            up = match dial(&egress, &target, ctx).await {
                Ok(k) => k,
                Err(resp) => return resp,
            };
            match up.sender.send_request(again).await {
                Ok(r) => r,
                Err(e) => {
                    return text(
                        StatusCode::BAD_GATEWAY,
                        format!("warden: upstream {target} failed: {e}\n"),
                    );
                }
            }
        }
        (Err(resp), None) => return resp,
    };
    if is_ws && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(c), Ok(u)) = (client_upgrade.await, upstream_upgrade.await) {
                let mut c = TokioIo::new(c);
                let mut u = TokioIo::new(u);
                let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
            }
        });
        let (mut parts, _body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        return Response::from_parts(parts, full(String::new()));
    }
    // The response head is here; hyper lets the next request on this connection
    // wait until the body has been read (`ready`).
    slot.put(up);
    let (method, url_shown) = (x_method, crate::http::shown(&url).to_string());
    x.respond(resp, head, &method, &url_shown)
}

/// The upstream connection a client connection's last plain-HTTP request used, kept
/// for its next request (keep-alive on both legs: no TCP handshake, no new decision
/// for a host already decided under the same policy). One per client connection, so
/// every upstream connection still belongs to one client in the audit log (its
/// `connect` and `close` events); it closes when the client connection does.
struct Kept {
    target: Target,
    version: PolicyVersion,
    conn: String,
    sender: http1::SendRequest<ReqBody>,
}

/// Where a client connection keeps its [`Kept`] connection between requests (HTTP/1
/// serves one request at a time, so the lock is never contended).
#[derive(Clone, Default)]
struct Slot(Arc<Mutex<Option<Kept>>>);

impl Slot {
    fn take(&self) -> Option<Kept> {
        match self.0.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    fn put(&self, k: Kept) {
        match self.0.lock() {
            Ok(mut g) => *g = Some(k),
            Err(poisoned) => *poisoned.into_inner() = Some(k),
        }
    }
}

/// Decide and open an upstream connection to `target` ([`Egress::open`]) and start
/// an HTTP/1.1 client on it. Its `close` event is recorded when the connection ends.
async fn dial(egress: &Egress, target: &Target, ctx: Ctx) -> Result<Kept, Response<Body>> {
    let version = egress.version();
    let upstream = egress.open(target, ctx).await.map_err(refusal)?;
    let conn = upstream.guard.conn.clone();
    let counters = upstream.guard.counters.clone();
    let io = Counted::new(upstream.stream, counters, upstream.guard);
    let (sender, connection) = http1::Builder::new()
        .preserve_header_case(true)
        .handshake::<_, ReqBody>(TokioIo::new(io))
        .await
        .map_err(|e| text(StatusCode::BAD_GATEWAY, format!("warden: upstream: {e}\n")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!("upstream connection: {e}");
        }
    });
    Ok(Kept {
        target: target.clone(),
        version,
        conn,
        sender,
    })
}
