//! The Streamable HTTP front end (MCP 2025-03-26 and later).
//!
//! One endpoint path (`/mcp`). Before anything else every request must pass, in order:
//! the Host check and the Origin check (loopback only unless configured — DNS
//! rebinding cannot reach the gateway), and the bearer token. Bodies over the limit
//! are refused with 413 before they are buffered. The client's `Authorization`
//! header is consumed here and never reaches an upstream.
//!
//! A POSTed request that an upstream works on (`tools/call`, `prompts/get`,
//! `resources/read`, `completion/complete`) is answered with an SSE stream when the
//! client accepts `text/event-stream`: the messages related to it (progress, the
//! upstream's sampling/elicitation/roots requests, its log messages), then the response,
//! then the stream ends. Everything else is answered `application/json`; unrelated
//! server messages travel on the GET stream.

#![allow(clippy::result_large_err)] // early-return HTTP responses; built once per rejected request

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{OwnedMutexGuard, mpsc};

use crate::session::{Gateway, Session};
use crate::{GatewayError, jsonrpc, lock};

/// Options of the HTTP front end.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The bearer token clients must present.
    pub token: String,
    /// Extra `Host` values accepted besides loopback names (`host` or `host:port`).
    pub allowed_hosts: Vec<String>,
    /// Extra `Origin` values accepted besides loopback origins (exact match).
    pub allowed_origins: Vec<String>,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Most client sessions open at once. Each one runs its own copies of the stdio
    /// servers, so an `initialize` past it ends the least recently used session (whose
    /// client gets 404 and may initialize again) instead of starting more servers: a
    /// client looping on `initialize` cannot multiply processes on the host.
    pub max_sessions: usize,
}

impl HttpOptions {
    pub fn new(token: String) -> Self {
        Self {
            token,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_body: 4 * 1024 * 1024,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }
}

/// See [`HttpOptions::max_sessions`].
pub const DEFAULT_MAX_SESSIONS: usize = 16;

type Body = BoxBody<Bytes, Infallible>;

struct HttpSession {
    session: Arc<Session>,
    events: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Value>>>,
    /// When it was last used, in [`Server::clock`] ticks.
    used: AtomicU64,
}

struct Server {
    gw: Arc<Gateway>,
    opts: HttpOptions,
    sessions: Mutex<HashMap<String, Arc<HttpSession>>>,
    /// Counts session uses (for least-recently-used eviction).
    clock: AtomicU64,
}

/// Listen on `listener` and serve until the process ends.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    opts: HttpOptions,
) -> Result<(), GatewayError> {
    let server = Arc::new(Server {
        gw,
        opts,
        sessions: Mutex::new(HashMap::new()),
        clock: AtomicU64::new(0),
    });
    loop {
        let (stream, _) = listener.accept().await.map_err(|e| GatewayError::Io {
            context: "accepting a connection".into(),
            source: e,
        })?;
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.route(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn full(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert("content-type", v);
    }
    r
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", format!("{msg}\n"))
}

fn json_error(status: StatusCode, code: i32, msg: &str) -> Response<Body> {
    full(
        status,
        "application/json",
        jsonrpc::error(Value::Null, code, msg).to_string(),
    )
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || h == "[::1]"
        || h == "::1"
        || h.parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

/// The host part of `host[:port]` / `[v6][:port]`.
fn host_part(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .split_once(']')
            .map(|(h, _)| &authority[..h.len() + 1])
            .unwrap_or(authority);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

fn token_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

impl Server {
    fn check(&self, req: &Request<Incoming>) -> Result<(), Response<Body>> {
        // Host: the DNS-rebinding defence; a rebound name arrives with its own Host.
        let Some(host) = header(req, "host") else {
            return Err(text(StatusCode::BAD_REQUEST, "missing Host header"));
        };
        let host_ok =
            is_loopback_host(host_part(host))
                || self.opts.allowed_hosts.iter().any(|h| {
                    h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(host_part(host))
                });
        if !host_ok {
            return Err(text(StatusCode::FORBIDDEN, "Host not allowed"));
        }
        if let Some(origin) = req.headers().get("origin") {
            let origin = origin.to_str().unwrap_or("null");
            let loopback = origin.split_once("://").is_some_and(|(scheme, rest)| {
                (scheme == "http" || scheme == "https") && is_loopback_host(host_part(rest))
            });
            if !(loopback || self.opts.allowed_origins.iter().any(|o| o == origin)) {
                return Err(text(StatusCode::FORBIDDEN, "Origin not allowed"));
            }
        }
        let presented = header(req, "authorization")
            .and_then(|a| {
                a.strip_prefix("Bearer ")
                    .or_else(|| a.strip_prefix("bearer "))
            })
            .unwrap_or("");
        if !token_eq(presented.trim().as_bytes(), self.opts.token.as_bytes()) {
            let mut r = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut().insert(
                "www-authenticate",
                hyper::header::HeaderValue::from_static("Bearer realm=\"warden-mcp\""),
            );
            return Err(r);
        }
        Ok(())
    }

    fn session_of(&self, req: &Request<Incoming>) -> Result<Arc<HttpSession>, Response<Body>> {
        let Some(id) = header(req, "mcp-session-id") else {
            return Err(text(
                StatusCode::BAD_REQUEST,
                "missing Mcp-Session-Id header",
            ));
        };
        self.find(id)
            .ok_or_else(|| text(StatusCode::NOT_FOUND, "unknown or ended session"))
    }

    /// The session `id`, marked as used now.
    fn find(&self, id: &str) -> Option<Arc<HttpSession>> {
        let hs = lock(&self.sessions).get(id).cloned()?;
        hs.used.store(
            self.clock.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        Some(hs)
    }

    /// A new client session under `id`. Ending the least recently used one when
    /// [`HttpOptions::max_sessions`] are open, starting the new one (its servers) and
    /// registering it happen under one lock: concurrent `initialize`s cannot all pass
    /// the check before any of them is counted.
    fn open(&self, id: &str) -> Arc<HttpSession> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= self.opts.max_sessions.max(1) {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.used.load(Ordering::Relaxed))
                .map(|(id, _)| id.clone());
            if let Some(old) = oldest.and_then(|id| sessions.remove(&id)) {
                say!(
                    "warden mcp: {} client sessions open, the most allowed: ended the least recently used one",
                    self.opts.max_sessions
                );
                old.session.shutdown();
            }
        }
        let hs = Arc::new(HttpSession {
            session: self.gw.session(tx),
            events: Arc::new(tokio::sync::Mutex::new(rx)),
            used: AtomicU64::new(self.clock.fetch_add(1, Ordering::Relaxed)),
        });
        sessions.insert(id.to_string(), hs.clone());
        hs
    }

    async fn route(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if let Err(r) = self.check(&req) {
            return r;
        }
        if req.uri().path() != "/mcp" {
            return text(StatusCode::NOT_FOUND, "the MCP endpoint is /mcp");
        }
        if let Some(v) = header(&req, "mcp-protocol-version")
            && !jsonrpc::supported_versions().any(|s| s == v)
        {
            return text(StatusCode::BAD_REQUEST, "unsupported MCP-Protocol-Version");
        }
        match *req.method() {
            Method::POST => self.post(req).await,
            Method::GET => self.get(req),
            Method::DELETE => match self.session_of(&req) {
                Ok(s) => {
                    if let Some(id) = header(&req, "mcp-session-id") {
                        lock(&self.sessions).remove(id);
                    }
                    s.session.shutdown();
                    text(StatusCode::OK, "session ended")
                }
                Err(r) => r,
            },
            _ => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use POST, GET or DELETE");
                r.headers_mut().insert(
                    "allow",
                    hyper::header::HeaderValue::from_static("GET, POST, DELETE"),
                );
                r
            }
        }
    }

    async fn post(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let max = self.opts.max_body;
        if req
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n > max)
        {
            return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        let existing = header(&req, "mcp-session-id").map(str::to_string);
        let accepts_sse = header(&req, "accept").is_some_and(|a| a.contains("text/event-stream"));
        let body = match Limited::new(req.into_body(), max).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
        };
        let msg: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    jsonrpc::PARSE_ERROR,
                    "parse error: not JSON",
                );
            }
        };
        let is_init = jsonrpc::method(&msg) == "initialize";
        let (hs, new_id) = match (&existing, is_init) {
            (None, true) => {
                let id = hex::encode(rand::random::<[u8; 16]>());
                (self.open(&id), Some(id))
            }
            (None, false) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "missing Mcp-Session-Id header (initialize first)",
                );
            }
            (Some(id), _) => match self.find(id) {
                Some(s) => (s, None),
                None => return text(StatusCode::NOT_FOUND, "unknown or ended session"),
            },
        };
        // A request that an upstream works on may bring messages for the client before
        // its answer (progress, sampling/elicitation/roots requests, log messages): when
        // the client accepts it, answer with an SSE stream carrying them, then the answer.
        let streamable = matches!(
            jsonrpc::method(&msg),
            "tools/call" | "prompts/get" | "resources/read" | "completion/complete"
        ) && matches!(jsonrpc::kind(&msg), jsonrpc::Kind::Request);
        if accepts_sse && streamable && new_id.is_none() {
            let (tx, rx) = mpsc::unbounded_channel();
            let session = hs.session.clone();
            tokio::spawn(async move {
                if let Some(answer) = session.handle_streamed(msg, tx.clone()).await {
                    let _ = tx.send(answer);
                }
            });
            return sse(SseBody {
                source: Source::Request(rx),
            });
        }
        let answer = hs.session.handle(msg).await;
        let mut resp = match answer {
            Some(v) => full(StatusCode::OK, "application/json", v.to_string()),
            None => {
                let mut r = Response::new(Full::new(Bytes::new()).boxed());
                *r.status_mut() = StatusCode::ACCEPTED;
                r
            }
        };
        if let Some(id) = new_id
            && let Ok(v) = hyper::header::HeaderValue::from_str(&id)
        {
            resp.headers_mut().insert("mcp-session-id", v);
        }
        resp
    }

    fn get(&self, req: Request<Incoming>) -> Response<Body> {
        let hs = match self.session_of(&req) {
            Ok(s) => s,
            Err(r) => return r,
        };
        if !header(&req, "accept").is_some_and(|a| a.contains("text/event-stream")) {
            return text(
                StatusCode::NOT_ACCEPTABLE,
                "GET needs Accept: text/event-stream",
            );
        }
        let Ok(guard) = hs.events.clone().try_lock_owned() else {
            return text(
                StatusCode::CONFLICT,
                "this session already has a GET stream",
            );
        };
        sse(SseBody {
            source: Source::Session(guard),
        })
    }
}

fn sse(body: SseBody) -> Response<Body> {
    let mut r = Response::new(BodyExt::boxed(body));
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut().insert(
        "cache-control",
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    r
}

enum Source {
    /// The session's outgoing queue (the GET stream), held while the stream is open.
    Session(OwnedMutexGuard<mpsc::UnboundedReceiver<Value>>),
    /// One POSTed request's messages and then its answer; ends after the answer.
    Request(mpsc::UnboundedReceiver<Value>),
}

/// Server-sent events, one JSON-RPC message each.
struct SseBody {
    source: Source,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let rx = match &mut self.get_mut().source {
            Source::Session(guard) => &mut **guard,
            Source::Request(rx) => rx,
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(v)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!(
                "event: message\ndata: {v}\n\n"
            )))))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
