//! A small HTTP client for the control plane: bearer-token calls (the CLI) and
//! machine-signed calls (the node agent), over `http://` or `https://` (rustls; the
//! system roots plus `WARDEN_SERVER_CA`, see [`crate::tls`]).

use crate::error::ControlError;
use crate::proto::sign_request;
use crate::tls::Connector;
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// How requests are authenticated.
#[derive(Clone)]
pub enum Auth {
    None,
    Bearer(String),
    Machine { id: String, key: Box<SigningKey> },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Auth::Machine { id, .. } => write!(f, "Machine({id})"),
        }
    }
}

/// An answer: status, ETag and body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// Every response header (e.g. `set-cookie`, `location`).
    pub headers: hyper::HeaderMap,
    pub etag: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Answer {
    /// The JSON body of a 2xx answer, else the server's error message.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ControlError> {
        self.ok()?;
        serde_json::from_slice(&self.body)
            .map_err(|e| ControlError::Http(format!("unexpected answer from the server: {e}")))
    }

    /// An error unless the status is 2xx.
    pub fn ok(&self) -> Result<(), ControlError> {
        if self.status.is_success() {
            return Ok(());
        }
        let message = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| {
                let err = v.get("error")?.as_str()?.to_string();
                Some(match v.get("rendered").and_then(|r| r.as_str()) {
                    Some(r) if !r.is_empty() => format!("{err}\n{r}"),
                    _ => err,
                })
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_string());
        Err(ControlError::Status {
            status: self.status.as_u16(),
            message,
        })
    }
}

/// A client for one server.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    auth: Auth,
    http: HyperClient<Connector, Full<Bytes>>,
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Client {
    /// `base` is `http://HOST:PORT` (a trailing slash is fine).
    pub fn new(base: &str, auth: Auth) -> Result<Client, ControlError> {
        Client::with_ca(base, auth, None)
    }

    /// Like [`Client::new`], trusting also the CA certificates in the PEM file `ca`
    /// for `https://` (instead of the one `WARDEN_SERVER_CA` names).
    pub fn with_ca(
        base: &str,
        auth: Auth,
        ca: Option<&std::path::Path>,
    ) -> Result<Client, ControlError> {
        let base = base.trim().trim_end_matches('/').to_string();
        let tls = if base.starts_with("https://") {
            Some(crate::tls::client_config(ca)?)
        } else if base.starts_with("http://") {
            None
        } else {
            return Err(ControlError::Http(format!(
                "server URL {base:?} must start with http:// or https://"
            )));
        };
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(Connector::new(tls));
        Ok(Client { base, auth, http })
    }

    /// The same client without keep-alive: every request opens its own connection and
    /// closes it afterwards (the load tool uses this so that 10,000 simulated machines
    /// do not also hold 10,000 idle connections open on the server).
    pub fn without_keepalive(mut self) -> Result<Client, ControlError> {
        let tls = if self.base.starts_with("https://") {
            Some(crate::tls::client_config(None)?)
        } else {
            None
        };
        self.http = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(Connector::new(tls));
        Ok(self)
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        extra: &[(&str, &str)],
    ) -> Result<Request<Full<Bytes>>, ControlError> {
        let mut b = Request::builder()
            .method(method.clone())
            .uri(format!("{}{}", self.base, path))
            .header("user-agent", concat!("warden/", env!("CARGO_PKG_VERSION")));
        let typed = extra
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if !body.is_empty() && !typed {
            b = b.header("content-type", "application/json");
        }
        match &self.auth {
            Auth::None => {}
            Auth::Bearer(t) => b = b.header("authorization", format!("Bearer {t}")),
            Auth::Machine { id, key } => {
                let nonce = hex::encode(crate::crypto::random_bytes::<16>()?);
                let signed =
                    sign_request(key, id, method.as_str(), path, &body, unix_now(), &nonce);
                for (k, v) in signed.pairs() {
                    b = b.header(k, v);
                }
            }
        }
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.body(Full::new(Bytes::from(body)))
            .map_err(|e| ControlError::Http(format!("bad request for {path}: {e}")))
    }

    /// Send a request and read the whole answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        extra: &[(&str, &str)],
    ) -> Result<Answer, ControlError> {
        let req = self.build(method, path, body, extra)?;
        let resp = tokio::time::timeout(Duration::from_secs(60), self.http.request(req))
            .await
            .map_err(|_| ControlError::Http(format!("{}: timed out", self.base)))?
            .map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let header = |n: hyper::header::HeaderName| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header(hyper::header::ETAG);
        let content_type = header(hyper::header::CONTENT_TYPE);
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(Duration::from_secs(300), resp.into_body().collect())
            .await
            .map_err(|_| ControlError::Http(format!("{}: timed out reading", self.base)))?
            .map_err(|e| ControlError::Http(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            etag,
            content_type,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Answer, ControlError> {
        self.send(Method::GET, path, Vec::new(), &[]).await
    }

    pub async fn delete(&self, path: &str) -> Result<Answer, ControlError> {
        self.send(Method::DELETE, path, Vec::new(), &[]).await
    }

    pub async fn post_json<T: Serialize>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<Answer, ControlError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ControlError::Http(e.to_string()))?;
        self.send(Method::POST, path, bytes, &[]).await
    }

    pub async fn put_json<T: Serialize>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<Answer, ControlError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ControlError::Http(e.to_string()))?;
        self.send(Method::PUT, path, bytes, &[]).await
    }

    /// Open a long-lived streaming GET (server-sent events).
    /// Why a request got no answer, with the whole cause chain (the legacy client's
    /// own message is only "client error (Connect)") and, for a certificate the client
    /// does not trust, what to do about it.
    fn unreachable(&self, e: &(dyn std::error::Error + 'static)) -> ControlError {
        let mut text = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        let hint = if text.contains("certificate") {
            format!(
                "; if the server's certificate is from a private CA, name its PEM file in {}",
                crate::tls::SERVER_CA_ENV
            )
        } else {
            String::new()
        };
        ControlError::Http(format!("cannot reach {}: {text}{hint}", self.base))
    }

    pub async fn open_stream(&self, path: &str) -> Result<hyper::Response<Incoming>, ControlError> {
        let req = self.build(
            Method::GET,
            path,
            Vec::new(),
            &[("accept", "text/event-stream")],
        )?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.http.request(req))
            .await
            .map_err(|_| ControlError::Http(format!("{}: timed out", self.base)))?
            .map_err(|e| self.unreachable(&e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let answer = Answer {
                status,
                headers: hyper::HeaderMap::new(),
                etag: None,
                content_type: None,
                body,
            };
            return Err(answer.ok().err().unwrap_or(ControlError::Status {
                status: status.as_u16(),
                message: "stream refused".into(),
            }));
        }
        Ok(resp)
    }
}

/// Percent-encode one query or path component.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Incrementally split a server-sent-events body into `(event, data)` pairs.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Feed bytes; returns the complete events they finished.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<(String, String)> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            let text = &self.buf;
            let Some(end) = find_blank_line(text) else {
                break;
            };
            let block = String::from_utf8_lossy(&text[..end.0]).into_owned();
            self.buf.drain(..end.1);
            let mut event = String::from("message");
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                }
            }
            if !data.is_empty() {
                out.push((event, data.join("\n")));
            }
        }
        if self.buf.len() > 1 << 20 {
            self.buf.clear();
        }
        out
    }
}

fn find_blank_line(b: &[u8]) -> Option<(usize, usize)> {
    let n = b.len();
    let mut i = 0;
    while i + 1 < n {
        if b[i] == b'\n' && b[i + 1] == b'\n' {
            return Some((i, i + 2));
        }
        if i + 3 < n && &b[i..i + 4] == b"\r\n\r\n" {
            return Some((i, i + 4));
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b"event: bundle\ndata: {\"se").is_empty());
        let ev = p.feed(b"rial\":3}\n\n:keepalive\n\nevent: bundle\ndata: x\n\n");
        assert_eq!(
            ev,
            vec![
                ("bundle".to_string(), "{\"serial\":3}".to_string()),
                ("bundle".to_string(), "x".to_string())
            ]
        );
    }
}
