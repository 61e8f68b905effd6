//! The Streamable HTTP client side: one upstream MCP server reached by URL.
//!
//! Every outgoing message is a POST; a response arrives as `application/json` or as an
//! SSE stream. After `initialize` the session id is sent back on every request, and a
//! GET stream carries the server's own requests and notifications. The gateway adds
//! the server's credential headers; the client's `Authorization` never gets here.
//! `https://` upstreams are verified against the gateway's `UpstreamTrust` (system
//! roots plus `tls.extra_roots`, from `warden-tls`), chain and name; there is no way
//! to turn verification off.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use warden_secrets::Secret;
use warden_tls::rustls::ClientConfig;
use warden_tls::rustls::pki_types::ServerName;

use crate::config::ServerConfig;
use crate::upstream::{MAX_MESSAGE, UpEvent};
use crate::{GatewayError, jsonrpc, lock};

struct Target {
    /// `host:port`, for connecting and the `Host` header.
    authority: String,
    path: String,
    /// For `https://`: the name the certificate must carry.
    tls_name: Option<ServerName<'static>>,
}

fn parse_url(name: &str, url: &str) -> Result<Target, GatewayError> {
    let bad = |reason: &str| GatewayError::BadTransport {
        name: name.to_string(),
        reason: format!("url {url:?}: {reason}"),
    };
    let (rest, tls, default_port) = if let Some(r) = url.strip_prefix("http://") {
        (r, false, 80)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, true, 443)
    } else {
        return Err(bad("not an http:// or https:// URL"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("missing host, or userinfo in the URL"));
    }
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']');
    let host = if has_port {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    } else {
        authority
    };
    let authority = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    let tls_name = if tls {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        Some(
            ServerName::try_from(bare.to_string())
                .map_err(|_| bad("the host is not a valid TLS server name"))?,
        )
    } else {
        None
    };
    Ok(Target {
        authority,
        path: path.to_string(),
        tls_name,
    })
}

/// One HTTP upstream.
pub struct HttpUpstream {
    name: String,
    target: Arc<Target>,
    tls: Option<TlsConnector>,
    headers: Arc<Vec<(String, Secret)>>,
    session: Arc<Mutex<Option<String>>>,
    version: Arc<Mutex<Option<String>>>,
    tx: mpsc::UnboundedSender<UpEvent>,
}

impl HttpUpstream {
    pub fn new(
        server: &ServerConfig,
        url: &str,
        tls: Option<Arc<ClientConfig>>,
        tx: mpsc::UnboundedSender<UpEvent>,
    ) -> Result<Self, GatewayError> {
        let target = parse_url(&server.name, url)?;
        let tls = match (&target.tls_name, tls) {
            (None, _) => None,
            (Some(_), Some(config)) => Some(TlsConnector::from(config)),
            (Some(_), None) => {
                return Err(GatewayError::BadTransport {
                    name: server.name.clone(),
                    reason: format!("url {url:?}: no TLS trust configured for https upstreams"),
                });
            }
        };
        Ok(Self {
            name: server.name.clone(),
            target: Arc::new(target),
            tls,
            headers: Arc::new(server.headers.clone()),
            session: Arc::new(Mutex::new(None)),
            version: Arc::new(Mutex::new(None)),
            tx,
        })
    }

    fn clone_handle(&self) -> Self {
        Self {
            name: self.name.clone(),
            target: self.target.clone(),
            tls: self.tls.clone(),
            headers: self.headers.clone(),
            session: self.session.clone(),
            version: self.version.clone(),
            tx: self.tx.clone(),
        }
    }

    /// Send every outgoing message as its own POST, concurrently.
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<Value>) {
        while let Some(msg) = rx.recv().await {
            let h = self.clone_handle();
            if jsonrpc::method(&msg) == "notifications/initialized" {
                let h2 = self.clone_handle();
                tokio::spawn(async move {
                    h.post(msg).await;
                    h2.get_stream().await;
                });
            } else {
                tokio::spawn(async move { h.post(msg).await });
            }
        }
        // The gateway dropped the upstream: end the server-side session.
        self.delete().await;
    }

    fn request(&self, method: hyper::Method, body: Option<Vec<u8>>) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method(method)
            .uri(&self.target.path)
            .header("host", &self.target.authority)
            .header("accept", "application/json, text/event-stream");
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        if let Some(s) = lock(&self.session).clone() {
            b = b.header("mcp-session-id", s);
        }
        if let Some(v) = lock(&self.version).clone() {
            b = b.header("mcp-protocol-version", v);
        }
        for (k, v) in self.headers.iter() {
            if let Ok(val) = hyper::header::HeaderValue::from_bytes(v.expose()) {
                let mut val = val;
                val.set_sensitive(true);
                b = b.header(k.as_str(), val);
            }
        }
        let body = Full::new(Bytes::from(body.unwrap_or_default()));
        b.body(body)
            .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
    }

    async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let stream = tokio::net::TcpStream::connect(&self.target.authority)
            .await
            .map_err(|e| format!("connect {}: {e}", self.target.authority))?;
        let _ = stream.set_nodelay(true);
        match (&self.tls, &self.target.tls_name) {
            (Some(connector), Some(name)) => {
                let tls = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| format!("TLS handshake with {}: {e}", self.target.authority))?;
                Self::exchange(TokioIo::new(tls), req).await
            }
            _ => Self::exchange(TokioIo::new(stream), req).await,
        }
    }

    async fn exchange<T>(
        io: TokioIo<T>,
        req: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(conn);
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP request: {e}"))
    }

    fn fail(&self, msg: &Value, why: String) {
        if let Some(id) = msg.get("id").filter(|_| msg.get("method").is_some()) {
            let _ = self.tx.send(UpEvent::Message(jsonrpc::error(
                id.clone(),
                jsonrpc::UPSTREAM_FAILED,
                format!("upstream {}: {why}", self.name),
            )));
        } else {
            tracing::warn!(server = %self.name, "{why}");
        }
    }

    async fn post(&self, msg: Value) {
        let is_init = jsonrpc::method(&msg) == "initialize";
        let req = self.request(hyper::Method::POST, Some(msg.to_string().into_bytes()));
        let resp = match self.send(req).await {
            Ok(r) => r,
            Err(e) => return self.fail(&msg, e),
        };
        let status = resp.status();
        if is_init
            && let Some(s) = resp
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
        {
            *lock(&self.session) = Some(s.to_string());
        }
        if status == hyper::StatusCode::ACCEPTED {
            return;
        }
        if !status.is_success() {
            if status == hyper::StatusCode::NOT_FOUND && lock(&self.session).is_some() {
                let _ = self
                    .tx
                    .send(UpEvent::Closed("the server ended the session (404)".into()));
            }
            return self.fail(&msg, format!("HTTP status {status}"));
        }
        let sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream"));
        let deliver = |v: Value, this: &Self| {
            if is_init
                && let Some(pv) = v.pointer("/result/protocolVersion").and_then(Value::as_str)
            {
                *lock(&this.version) = Some(pv.to_string());
            }
            let _ = this.tx.send(UpEvent::Message(v));
        };
        if sse {
            let mut body = resp.into_body();
            let mut parser = SseParser::default();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    for ev in parser.push(&data) {
                        match serde_json::from_str::<Value>(&ev) {
                            Ok(v) => deliver(v, self),
                            Err(_) => {
                                tracing::warn!(server = %self.name, "malformed SSE data; dropped")
                            }
                        }
                    }
                }
            }
        } else {
            let body = match http_body_util::Limited::new(resp.into_body(), MAX_MESSAGE)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => return self.fail(&msg, format!("reading the response: {e}")),
            };
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Array(a)) => a.into_iter().for_each(|v| deliver(v, self)),
                Ok(v) => deliver(v, self),
                Err(_) => self.fail(&msg, "response body is not JSON".into()),
            }
        }
    }

    async fn get_stream(&self) {
        let req = self.request(hyper::Method::GET, None);
        let Ok(resp) = self.send(req).await else {
            return;
        };
        if !resp.status().is_success() {
            return; // 405: the server offers no GET stream.
        }
        let mut body = resp.into_body();
        let mut parser = SseParser::default();
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                for ev in parser.push(&data) {
                    if let Ok(v) = serde_json::from_str::<Value>(&ev) {
                        let _ = self.tx.send(UpEvent::Message(v));
                    }
                }
            }
        }
    }

    async fn delete(&self) {
        if lock(&self.session).is_some() {
            let req = self.request(hyper::Method::DELETE, None);
            let _ = self.send(req).await;
        }
    }
}

/// Incremental `text/event-stream` parser: yields the `data` of each event.
#[derive(Default)]
pub struct SseParser {
    buf: String,
    raw: Vec<u8>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.raw.extend_from_slice(bytes);
        // Only decode complete UTF-8; keep a split multi-byte sequence for later.
        let valid = match std::str::from_utf8(&self.raw) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        let chunk: Vec<u8> = self.raw.drain(..valid).collect();
        self.buf.push_str(&String::from_utf8_lossy(&chunk));
        if self.buf.contains('\r') {
            self.buf = self.buf.replace("\r\n", "\n");
        }
        let mut out = Vec::new();
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        out
    }
}
