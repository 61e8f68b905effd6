//! The request path Warden can read: plain HTTP (explicit proxy, CONNECT tunnels and
//! TUN flows carrying HTTP) and intercepted HTTPS.
//!
//! Per request: the authority must be the connection's host; `[[network.http]]`
//! method and path rules ([`Egress::check_http`]); the exfiltration guard over the
//! URL, every header value and the body (the values of every credential *not* bound
//! to the host, real or placeholder, in every encoding); on TLS connections only, the
//! bound credentials' placeholders are replaced by their real values in header values
//! and the URL (and in the body for credentials with `inject_body = true`), and
//! configured `header`s are set. Responses have every real value
//! turned back into its placeholder, in headers and (streaming) in the body.
//!
//! Bodies: a request body of known length up to [`BUFFER_LIMIT`] is read whole and
//! scanned before anything is sent upstream, so a refused request never reached the
//! server at all. Larger or streamed bodies go through a [`StreamGuard`] that holds
//! back only what could still become a value, and aborts the upstream request on a
//! finding before any byte of the value left.

use crate::egress::{Ctx, Egress, Refusal, ReqInfo};
use crate::intercept::HostCreds;
use crate::target::{Target, parse_authority, printable};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use warden_secrets::scan::{Finding, Rewrite, StreamGuard, StreamRewriter, StreamScanner};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Bodies sent to clients.
pub(crate) type RespBody = BoxBody<Bytes, hyper::Error>;
/// Bodies sent upstream.
pub(crate) type ReqBody = BoxBody<Bytes, BoxError>;

/// Request bodies of known length up to this are scanned whole before sending.
pub const BUFFER_LIMIT: u64 = 1024 * 1024;

/// How long held-back WebSocket bytes wait for the rest of a possible value.
const WS_FLUSH: Duration = Duration::from_millis(100);

pub(crate) fn text(status: StatusCode, body: String) -> Response<RespBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub(crate) fn full(body: String) -> RespBody {
    Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed()
}

pub(crate) fn refusal(r: Refusal) -> Response<RespBody> {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN);
    let mut resp = text(status, r.message);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the proxy's own; never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

/// Remove hop-by-hop headers, those the `Connection` header names, and every
/// `Proxy-*` header. Returns whether this was a WebSocket upgrade, whose `Upgrade`
/// and `Connection: upgrade` are put back. `TE: trailers` (which gRPC needs) is kept.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    let is_ws = headers.get_all(header::UPGRADE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.eq_ignore_ascii_case("websocket"))
    }) && headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for k in proxy {
        headers.remove(k);
    }
    if is_ws {
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    is_ws
}

/// Replace single header values (`(name, old value, new value)`), keeping the order
/// of repeated headers and every other value as it was.
fn replace_values(headers: &mut HeaderMap, updates: Vec<(HeaderName, HeaderValue, HeaderValue)>) {
    for (name, old, new) in updates {
        let all: Vec<HeaderValue> = headers
            .get_all(&name)
            .iter()
            .map(|v| if *v == old { new.clone() } else { v.clone() })
            .collect();
        headers.remove(&name);
        for v in all {
            headers.append(name.clone(), v);
        }
    }
}

/// The URL without query or fragment (what events record).
pub(crate) fn shown(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// One request's context: where it goes and what to do with credentials.
pub(crate) struct Exchange {
    pub egress: Egress,
    pub ctx: Ctx,
    /// The host the connection is to (rules, bindings and events use it).
    pub origin: Target,
    /// The client leg is TLS that Warden terminated: injection happens only here
    /// (a real value never goes on the wire in clear text).
    pub tls: bool,
    /// `None` without interception.
    pub creds: Option<Arc<HostCreds>>,
    pub conn: String,
}

/// A request ready to go upstream, and (for a streamed guarded body) the verdict
/// that arrives if the body turns out to carry a value.
pub(crate) struct Prepared {
    pub req: Request<ReqBody>,
    verdict: Option<oneshot::Receiver<Refusal>>,
    method: String,
    url: String,
}

impl Prepared {
    /// A copy to send again on a fresh upstream connection when a kept one turned out
    /// to be closed under it: only a safe method (GET, HEAD, OPTIONS) without a body
    /// (RFC 9110 §9.2.2: such a request may be retried automatically).
    pub fn replay(&self) -> Option<Request<ReqBody>> {
        let r = &self.req;
        let safe = matches!(
            *r.method(),
            hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS
        );
        if !safe || self.verdict.is_some() || !r.body().is_end_stream() {
            return None;
        }
        let mut copy = Request::new(
            Full::new(Bytes::new())
                .map_err(|n: Infallible| match n {})
                .boxed(),
        );
        *copy.method_mut() = r.method().clone();
        *copy.uri_mut() = r.uri().clone();
        *copy.version_mut() = r.version();
        *copy.headers_mut() = r.headers().clone();
        Some(copy)
    }

    /// Rewrite the request's head (keep its body: it is the guarded one).
    pub fn map_req(self, f: impl FnOnce(Request<ReqBody>) -> Request<ReqBody>) -> Prepared {
        Prepared {
            req: f(self.req),
            ..self
        }
    }
}

impl Exchange {
    /// Build an exchange for requests to `origin`: looks up the credential guard.
    pub fn new(
        egress: &Egress,
        ctx: Ctx,
        origin: Target,
        tls: bool,
        conn: String,
    ) -> Result<Exchange, Refusal> {
        let creds = egress.host_creds(&origin.host)?;
        Ok(Exchange {
            egress: egress.clone(),
            ctx,
            origin,
            tls,
            creds,
            conn,
        })
    }

    fn info<'a>(&'a self, method: &'a str, url_shown: &'a str) -> ReqInfo<'a> {
        ReqInfo {
            origin: &self.origin,
            ctx: self.ctx,
            method,
            url_shown,
            conn: &self.conn,
        }
    }

    /// Policy rules, the guard, and (TLS only) injection, for a request whose
    /// absolute URL is `url`. `Err` is the response to give the client instead.
    pub async fn prepare(
        &self,
        req: Request<Incoming>,
        url: &str,
    ) -> Result<Prepared, Response<RespBody>> {
        let method = req.method().as_str().to_string();
        self.egress
            .check_http(&method, url, &self.origin, self.ctx, &self.conn)
            .await
            .map_err(refusal)?;
        let url_shown = shown(url).to_string();
        let (mut parts, body) = req.into_parts();
        let Some(hc) = self.creds.clone() else {
            return Ok(Prepared {
                req: Request::from_parts(parts, body.map_err(BoxError::from).boxed()),
                verdict: None,
                method,
                url: url_shown,
            });
        };
        let info = self.info(&method, &url_shown);
        let mut verdict = None;
        let guarding = !hc.guard.is_empty();
        // Body injection: only where Warden terminated TLS (never in clear text), and
        // only for bound credentials that opted in with `inject_body = true`.
        let body_injector = if self.tls {
            hc.body_injector.clone().filter(|r| !r.is_empty())
        } else {
            None
        };
        if guarding {
            // URL and headers first: nothing is read or sent when they carry a value.
            let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
            if let Some(f) = hc.guard.find_decoded(pq.as_bytes()) {
                self.egress
                    .exfiltration(&f, &info, "url")
                    .await
                    .map_err(refusal)?;
            }
            for (name, value) in parts.headers.iter() {
                if let Some(f) = hc.guard.find_decoded(value.as_bytes()) {
                    self.egress
                        .exfiltration(&f, &info, &format!("header {name}"))
                        .await
                        .map_err(refusal)?;
                }
            }
        }
        let body: ReqBody = match body.size_hint().exact() {
            Some(n) if n <= BUFFER_LIMIT && (guarding || body_injector.is_some()) => {
                let collected = body.collect().await.map_err(|e| {
                    text(
                        StatusCode::BAD_REQUEST,
                        format!("warden: could not read the request body: {e}\n"),
                    )
                })?;
                let trailers = collected.trailers().cloned();
                let mut bytes = collected.to_bytes();
                if guarding {
                    if let Some(f) = hc.guard.find_decoded(&bytes) {
                        self.egress
                            .exfiltration(&f, &info, "body")
                            .await
                            .map_err(refusal)?;
                    }
                    if let Some(t) = &trailers {
                        for (name, value) in t.iter() {
                            if let Some(f) = hc.guard.find_decoded(value.as_bytes()) {
                                self.egress
                                    .exfiltration(&f, &info, &format!("trailer {name}"))
                                    .await
                                    .map_err(refusal)?;
                            }
                        }
                    }
                }
                if let Some(inj) = &body_injector
                    && let Some(rw) = inj.apply(&bytes)
                {
                    for c in &rw.credentials {
                        self.egress.credential_used("inject", c, &info, "body");
                    }
                    bytes = Bytes::copy_from_slice(&rw.bytes);
                    if parts.headers.contains_key(header::CONTENT_LENGTH) {
                        parts
                            .headers
                            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                    }
                }
                match trailers {
                    None => Full::new(bytes).map_err(|n: Infallible| match n {}).boxed(),
                    Some(t) => Buffered {
                        data: Some(bytes),
                        trailers: Some(t),
                    }
                    .boxed(),
                }
            }
            _ => {
                let guarded: ReqBody = if guarding {
                    let (tx, rx) = oneshot::channel();
                    verdict = Some(rx);
                    GuardedBody::new(body, self, &hc, &method, &url_shown, tx).boxed()
                } else {
                    body.map_err(BoxError::from).boxed()
                };
                match body_injector {
                    None => guarded,
                    Some(inj) => {
                        // The guard sees the client's bytes first; the injector runs on
                        // what it released.
                        if !hc.body_stable {
                            parts.headers.remove(header::CONTENT_LENGTH);
                        }
                        RewrittenBody::injected(
                            guarded,
                            inj,
                            hc.body_stable,
                            self,
                            &method,
                            &url_shown,
                        )
                        .boxed()
                    }
                }
            }
        };
        if self.tls {
            self.inject(&hc, &mut parts, &info).map_err(|why| {
                text(
                    StatusCode::BAD_GATEWAY,
                    format!("warden: cannot inject the credential: {why}\n"),
                )
            })?;
        }
        if hc.any_bound {
            // A bound host is the only one that ever receives a real value, so the only
            // one that can echo it: ask for an uncompressed response the scrubber can read.
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        Ok(Prepared {
            req: Request::from_parts(parts, body),
            verdict,
            method,
            url: url_shown,
        })
    }

    /// Replace the bound credentials' placeholders in header values and the URL, and
    /// set configured headers. Headers without a placeholder are left exactly as
    /// they are.
    fn inject(
        &self,
        hc: &HostCreds,
        parts: &mut hyper::http::request::Parts,
        info: &ReqInfo<'_>,
    ) -> Result<(), String> {
        let mut used: Vec<(Arc<str>, String)> = Vec::new();
        let bad = |e: &dyn std::fmt::Display| e.to_string();
        if !hc.injector.is_empty() {
            let mut updates = Vec::new();
            for (name, value) in parts.headers.iter() {
                match hc.injector.header_value(value.as_bytes()) {
                    Ok(None) => {}
                    Ok(Some(rw)) => {
                        let mut v = HeaderValue::from_bytes(&rw.bytes).map_err(|e| bad(&e))?;
                        v.set_sensitive(true);
                        for c in &rw.credentials {
                            used.push((c.clone(), format!("header {name}")));
                        }
                        updates.push((name.clone(), value.clone(), v));
                    }
                    Err(e) => return Err(bad(&e)),
                }
            }
            replace_values(&mut parts.headers, updates);
            if let Some(pq) = parts.uri.path_and_query()
                && let Some(rw) = hc.injector.apply(pq.as_str().as_bytes())
            {
                let new = std::str::from_utf8(&rw.bytes)
                    .ok()
                    .and_then(|s| s.parse::<hyper::http::uri::PathAndQuery>().ok())
                    .ok_or_else(|| {
                        bad(&"the credential's value cannot be written in a URL (percent-encode the placeholder)")
                    })?;
                let mut up = std::mem::take(&mut parts.uri).into_parts();
                up.path_and_query = Some(new);
                parts.uri = hyper::Uri::from_parts(up).map_err(|e| bad(&e))?;
                for c in &rw.credentials {
                    used.push((c.clone(), "url".to_string()));
                }
            }
        }
        for h in &hc.headers {
            let mut v = HeaderValue::from_bytes(&h.value).map_err(|e| bad(&e))?;
            v.set_sensitive(true);
            parts.headers.insert(h.name.clone(), v);
            used.push((h.credential.clone(), format!("header {}", h.name)));
        }
        let mut seen: Vec<&str> = Vec::new();
        for (cred, _) in &used {
            if seen.contains(&&**cred) {
                continue;
            }
            seen.push(cred);
            let locations: Vec<&str> = used
                .iter()
                .filter(|(c, _)| c == cred)
                .map(|(_, l)| l.as_str())
                .collect();
            self.egress
                .credential_used("inject", cred, info, &locations.join(", "));
        }
        Ok(())
    }

    /// Send `prepared` with `send`; a streamed body found carrying a value turns the
    /// exchange into the refusal (recorded before the client sees it).
    pub async fn send<F>(
        &self,
        prepared: Prepared,
        send: impl FnOnce(Request<ReqBody>) -> F,
    ) -> Result<Response<Incoming>, Response<RespBody>>
    where
        F: Future<Output = Result<Response<Incoming>, hyper::Error>>,
    {
        let Prepared { req, verdict, .. } = prepared;
        let fut = send(req);
        let gateway = |e: hyper::Error| {
            text(
                StatusCode::BAD_GATEWAY,
                format!("warden: upstream {} failed: {e}\n", self.origin),
            )
        };
        let Some(mut rx) = verdict else {
            return fut.await.map_err(gateway);
        };
        tokio::pin!(fut);
        tokio::select! {
            biased;
            v = &mut rx => match v {
                Ok(r) => Err(refusal(r)),
                Err(_) => fut.await.map_err(gateway),
            },
            r = &mut fut => match r {
                Ok(resp) => Ok(resp),
                // The body may have been cut because it carried a value.
                Err(e) => match rx.await {
                    Ok(r) => Err(refusal(r)),
                    Err(_) => Err(gateway(e)),
                },
            },
        }
    }

    /// The response for the client: hop-by-hop headers removed, and every real value
    /// turned back into its placeholder in headers and body.
    pub fn respond(
        &self,
        resp: Response<Incoming>,
        head: bool,
        method: &str,
        url: &str,
    ) -> Response<RespBody> {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let scrub = match &self.creds {
            Some(c) if !c.scrub.is_empty() => c.scrub.clone(),
            _ => return Response::from_parts(parts, body.boxed()),
        };
        let info = self.info(method, url);
        let mut updates = Vec::new();
        for (name, value) in parts.headers.iter() {
            if let Ok(Some(rw)) = scrub.header_value(value.as_bytes())
                && let Ok(v) = HeaderValue::from_bytes(&rw.bytes)
            {
                for c in &rw.credentials {
                    self.egress.credential_used(
                        "scrub",
                        c,
                        &info,
                        &format!("response header {name}"),
                    );
                }
                updates.push((name.clone(), value.clone(), v));
            }
        }
        replace_values(&mut parts.headers, updates);
        let no_body = head
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED
            || parts.status.is_informational();
        if no_body {
            return Response::from_parts(parts, body.boxed());
        }
        let stable = self.creds.as_ref().is_some_and(|c| c.scrub_stable);
        if !stable {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let egress = self.egress.clone();
        let origin = self.origin.clone();
        let (ctx, conn, method, url) = (
            self.ctx,
            self.conn.clone(),
            method.to_string(),
            url.to_string(),
        );
        let on_done = Box::new(move |creds: &[Arc<str>]| {
            let info = ReqInfo {
                origin: &origin,
                ctx,
                method: &method,
                url_shown: &url,
                conn: &conn,
            };
            for c in creds {
                egress.credential_used("scrub", c, &info, "response body");
            }
        });
        let body = RewrittenBody::new(body, StreamRewriter::new(scrub), stable, on_done);
        Response::from_parts(parts, body.boxed())
    }
}

/// A body read whole, with its trailers.
struct Buffered {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl HttpBody for Buffered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// A request body passed through the exfiltration guard as it streams.
struct GuardedBody {
    inner: Incoming,
    enforce: Option<StreamGuard>,
    audit: Option<StreamScanner>,
    done: bool,
    trailers: Option<HeaderMap>,
    /// Called once with the first finding (records it; in enforce mode sends the
    /// refusal to the waiting exchange).
    on_finding: Option<Box<dyn FnOnce(Finding) + Send + Sync>>,
}

impl GuardedBody {
    fn new(
        inner: Incoming,
        x: &Exchange,
        hc: &HostCreds,
        method: &str,
        url: &str,
        tx: oneshot::Sender<Refusal>,
    ) -> GuardedBody {
        let egress = x.egress.clone();
        let origin = x.origin.clone();
        let (ctx, conn, method, url) = (x.ctx, x.conn.clone(), method.to_string(), url.to_string());
        let on_finding = Box::new(move |f: Finding| {
            tokio::spawn(async move {
                let info = ReqInfo {
                    origin: &origin,
                    ctx,
                    method: &method,
                    url_shown: &url,
                    conn: &conn,
                };
                if let Err(r) = egress.exfiltration(&f, &info, "body").await {
                    let _ = tx.send(r);
                }
            });
        });
        let enforcing = x.egress.enforcing();
        GuardedBody {
            inner,
            enforce: enforcing.then(|| StreamGuard::new(hc.guard.clone())),
            audit: (!enforcing).then(|| StreamScanner::new(hc.guard.clone())),
            done: false,
            trailers: None,
            on_finding: Some(on_finding),
        }
    }

    fn found(&mut self, f: Finding) {
        if let Some(cb) = self.on_finding.take() {
            cb(f);
        }
    }
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(t) = this.trailers.take() {
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(f)) => Some(f),
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => None,
            };
            let mut out = Vec::new();
            let data = match frame {
                Some(f) => match f.into_data() {
                    Ok(d) => Some(d),
                    Err(f) => {
                        // Trailers end the body: release what was held, then them.
                        if let Ok(t) = f.into_trailers() {
                            this.trailers = Some(t);
                        }
                        None
                    }
                },
                None => None,
            };
            let ended = data.is_none();
            if let Some(d) = &data
                && let Some(s) = &mut this.audit
            {
                if let Some(f) = s.feed(d) {
                    this.found(f);
                }
                return Poll::Ready(Some(Ok(Frame::data(d.clone()))));
            }
            if this.audit.is_some() {
                // End of data (trailers, if any, go out first on the next turn).
                this.done = true;
                continue;
            }
            let result = match (&mut this.enforce, &data) {
                (Some(g), Some(d)) => g.feed(d, &mut out),
                (Some(g), None) => g.finish(&mut out),
                (None, _) => Ok(()),
            };
            if let Err(f) = result {
                this.found(f);
                this.done = true;
                this.trailers = None;
                return Poll::Ready(Some(Err(
                    "the request body carries a credential value bound to another host".into(),
                )));
            }
            if ended {
                this.done = true;
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // The guard forwards the same bytes (or aborts): the length is unchanged.
        self.inner.size_hint()
    }
}

/// A body rewritten as it streams, holding back only a possible start of a value
/// between frames: a response with real values turned back into placeholders, or a
/// request body with the bound credentials' placeholders replaced by their real
/// values (`inject_body = true`). Which credentials were rewritten is reported once,
/// when the body ends or goes away (a server that knows the length stops polling once
/// it has it, so the end is not always seen).
struct RewrittenBody<B> {
    inner: B,
    rw: StreamRewriter,
    done: bool,
    trailers: Option<HeaderMap>,
    /// Every replacement keeps the length: the inner size hint still holds.
    stable: bool,
    on_done: Option<OnScrubbed>,
}

/// Records which credentials a finished body had rewritten.
type OnScrubbed = Box<dyn FnOnce(&[Arc<str>]) + Send + Sync>;

impl RewrittenBody<ReqBody> {
    /// A request body with placeholders injected, each injection recorded.
    fn injected(
        inner: ReqBody,
        rw: Arc<Rewrite>,
        stable: bool,
        x: &Exchange,
        method: &str,
        url: &str,
    ) -> Self {
        let egress = x.egress.clone();
        let origin = x.origin.clone();
        let (ctx, conn, method, url) = (x.ctx, x.conn.clone(), method.to_string(), url.to_string());
        let on_done: OnScrubbed = Box::new(move |creds: &[Arc<str>]| {
            let info = ReqInfo {
                origin: &origin,
                ctx,
                method: &method,
                url_shown: &url,
                conn: &conn,
            };
            for c in creds {
                egress.credential_used("inject", c, &info, "body");
            }
        });
        RewrittenBody::new(inner, StreamRewriter::new(rw), stable, on_done)
    }
}

impl<B> RewrittenBody<B> {
    fn new(inner: B, rw: StreamRewriter, stable: bool, on_done: OnScrubbed) -> Self {
        RewrittenBody {
            inner,
            rw,
            done: false,
            trailers: None,
            stable,
            on_done: Some(on_done),
        }
    }

    fn report(&mut self) {
        if let Some(cb) = self.on_done.take()
            && !self.rw.credentials_used().is_empty()
        {
            cb(self.rw.credentials_used());
        }
    }
}

impl<B> Drop for RewrittenBody<B> {
    fn drop(&mut self) {
        self.report();
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for RewrittenBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(t) = this.trailers.take() {
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let mut out = Vec::new();
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => this.rw.feed(&d, &mut out),
                    Err(f) => {
                        if let Ok(t) = f.into_trailers() {
                            this.trailers = Some(t);
                        }
                        this.rw.finish(&mut out);
                        this.done = true;
                        this.report();
                    }
                },
                None => {
                    this.rw.finish(&mut out);
                    this.done = true;
                    this.report();
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.stable {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

/// The HTTP version spoken on one leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    H1,
    H2,
}

/// The upstream leg of a connection-bound flow.
enum Sender {
    H1(tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<ReqBody>>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

impl Sender {
    async fn send(&self, req: Request<ReqBody>) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Sender::H1(m) => {
                let fut = {
                    let mut s = m.lock().await;
                    s.ready().await?;
                    s.send_request(req)
                };
                fut.await
            }
            Sender::H2(s) => {
                let mut s = s.clone();
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

struct Flow {
    x: Exchange,
    up: Sender,
    up_proto: Proto,
    client_proto: Proto,
    /// WebSocket upgrades to bridge once the client connection hands its stream over.
    upgrades: tokio::sync::mpsc::UnboundedSender<Bridge>,
}

struct Bridge {
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    scrub: Option<Arc<Rewrite>>,
}

/// Serve one client connection (`client`, speaking `client_proto`) whose requests all
/// go to one upstream connection (`upstream`, speaking `up_proto`): a TLS connection
/// Warden terminated, or a plain-HTTP TCP flow. Returns when the client is done.
pub(crate) async fn serve_flow<C, U>(
    x: Exchange,
    client: C,
    client_proto: Proto,
    upstream: U,
    up_proto: Proto,
) -> Result<(), String>
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    U: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let up = match up_proto {
        Proto::H1 => {
            let (s, conn) = hyper::client::conn::http1::Builder::new()
                .preserve_header_case(true)
                .handshake(TokioIo::new(upstream))
                .await
                .map_err(|e| format!("upstream HTTP/1.1: {e}"))?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!("upstream connection: {e}");
                }
            });
            Sender::H1(tokio::sync::Mutex::new(s))
        }
        Proto::H2 => {
            let (s, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(upstream))
                .await
                .map_err(|e| format!("upstream HTTP/2: {e}"))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("upstream connection: {e}");
                }
            });
            Sender::H2(s)
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let flow = Arc::new(Flow {
        x,
        up,
        up_proto,
        client_proto,
        upgrades: tx,
    });
    let f2 = flow.clone();
    let svc = hyper::service::service_fn(move |req| {
        let flow = f2.clone();
        async move { Ok::<_, Infallible>(handle(flow, req).await) }
    });
    let served = match client_proto {
        Proto::H1 => hyper::server::conn::http1::Builder::new()
            .preserve_header_case(true)
            .serve_connection(TokioIo::new(client), svc)
            .with_upgrades()
            .await
            .map_err(|e| e.to_string()),
        Proto::H2 => hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(client), svc)
            .await
            .map_err(|e| e.to_string()),
    };
    // An upgraded connection is bridged here, inside the flow (not in a detached
    // task), so the flow ends only when the bridge does.
    while let Ok(b) = rx.try_recv() {
        bridge(b).await;
    }
    drop(flow);
    served
}

/// Does the authority the request names (Host header, URI authority) match the
/// connection's host? Anything else would let one allowed connection carry requests
/// for another host (domain fronting at the HTTP layer).
fn check_authority(
    req: &Request<Incoming>,
    origin: &Target,
    default_port: u16,
) -> Result<(), String> {
    let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
    if hosts.len() > 1 {
        return Err("more than one Host header".into());
    }
    let mut named: Vec<String> = hosts
        .iter()
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .collect();
    if let Some(a) = req.uri().authority() {
        named.push(a.as_str().to_string());
    }
    for n in named {
        let same = parse_authority(&n, Some(default_port)).is_ok_and(|t| t == *origin);
        if !same {
            return Err(format!(
                "the request names `{}` but the connection is to {origin}",
                printable(&n)
            ));
        }
    }
    Ok(())
}

async fn handle(flow: Arc<Flow>, mut req: Request<Incoming>) -> Response<RespBody> {
    let x = &flow.x;
    let (scheme, default_port) = if x.tls { ("https", 443) } else { ("http", 80) };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/")
        .to_string();
    let url = format!("{scheme}://{}{path}", x.origin);
    if let Err(why) = check_authority(&req, &x.origin, default_port) {
        return refusal(x.egress.reject("http", shown(&url), &why, x.ctx).await);
    }
    let head = req.method() == hyper::Method::HEAD;
    let client_upgrade = (flow.client_proto == Proto::H1).then(|| hyper::upgrade::on(&mut req));
    let mut prepared = match x.prepare(req, &url).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let (method, url_shown) = (prepared.method.clone(), prepared.url.clone());
    let is_ws = {
        let r = &mut prepared.req;
        let is_ws = strip_hop_by_hop(r.headers_mut());
        match flow.up_proto {
            Proto::H1 => {
                *r.version_mut() = hyper::Version::HTTP_11;
                let host = host_header(&x.origin, default_port);
                if let Ok(v) = HeaderValue::from_str(&host) {
                    r.headers_mut().insert(header::HOST, v);
                }
                // Origin form, keeping the (possibly injected) path and query.
                let pq = r
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| "/".into());
                if let Ok(u) = pq.parse::<hyper::Uri>() {
                    *r.uri_mut() = u;
                }
            }
            Proto::H2 => {
                *r.version_mut() = hyper::Version::HTTP_2;
                r.headers_mut().remove(header::HOST);
                let pq = r
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| "/".into());
                let authority = host_header(&x.origin, default_port);
                if let Ok(u) = format!("{scheme}://{authority}{pq}").parse::<hyper::Uri>() {
                    *r.uri_mut() = u;
                }
            }
        }
        is_ws && flow.up_proto == Proto::H1
    };
    let mut resp = match x.send(prepared, |r| flow.up.send(r)).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if is_ws
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client) = client_upgrade
    {
        let upstream = hyper::upgrade::on(&mut resp);
        let scrub = x.creds.as_ref().map(|c| c.scrub.clone());
        let _ = flow.upgrades.send(Bridge {
            client,
            upstream,
            scrub,
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
    x.respond(resp, head, &method, &url_shown)
}

/// The Host header (or h2 authority) for `origin`: the port only when not `default`.
pub(crate) fn host_header(origin: &Target, default: u16) -> String {
    let t = origin.to_string();
    if origin.port == default {
        t.strip_suffix(&format!(":{default}"))
            .unwrap_or(&t)
            .to_string()
    } else {
        t
    }
}

/// Relay an upgraded (WebSocket) connection. Server-to-client bytes go through the
/// scrubber; held-back bytes (a possible start of a value) are released after
/// [`WS_FLUSH`] without more data, so an interactive stream never stalls.
async fn bridge(b: Bridge) {
    let (Ok(c), Ok(u)) = (b.client.await, b.upstream.await) else {
        return;
    };
    let (mut cr, mut cw) = tokio::io::split(TokioIo::new(c));
    let (mut ur, mut uw) = tokio::io::split(TokioIo::new(u));
    let up = async {
        let _ = tokio::io::copy(&mut cr, &mut uw).await;
        let _ = uw.shutdown().await;
    };
    let down = async {
        let mut rw = b.scrub.filter(|s| !s.is_empty()).map(StreamRewriter::new);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let held = rw.as_ref().is_some_and(|r| r.held() > 0);
            let read = if held {
                match tokio::time::timeout(WS_FLUSH, ur.read(&mut buf)).await {
                    Ok(r) => r,
                    Err(_) => {
                        let mut out = Vec::new();
                        if let Some(r) = &mut rw {
                            r.finish(&mut out);
                        }
                        if cw.write_all(&out).await.is_err() {
                            break;
                        }
                        continue;
                    }
                }
            } else {
                ur.read(&mut buf).await
            };
            let n = match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let res = match &mut rw {
                Some(r) => {
                    let mut out = Vec::new();
                    r.feed(&buf[..n], &mut out);
                    cw.write_all(&out).await
                }
                None => cw.write_all(&buf[..n]).await,
            };
            if res.is_err() {
                break;
            }
        }
        let mut out = Vec::new();
        if let Some(r) = &mut rw {
            r.finish(&mut out);
        }
        let _ = cw.write_all(&out).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}
