//! Connections to upstream MCP servers: stdio children and Streamable HTTP servers.
//!
//! Each upstream is one JSON-RPC peer with its own id space. The gateway's requests
//! use numeric ids from the upstream's own counter; responses are matched here and
//! everything else (server→client requests, notifications) goes to the session.

use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::config::{ServerConfig, Transport};
use crate::http_client::HttpUpstream;
use crate::jsonrpc::{self, Kind};
use crate::{GatewayError, lock};

/// Largest message accepted from an upstream (a longer line is dropped).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Starts stdio upstream servers.
///
/// The `warden` CLI's launcher starts each server inside a Warden session of its own
/// (`warden run --mcp-server NAME`, see `crates/warden/src/cmd/mcp.rs` and
/// docs/mcp.md); [`PlainLauncher`] starts a plain child process (library tests).
pub trait UpstreamLauncher: Send + Sync {
    /// The command that runs `server`. The caller pipes its stdin and stdout; its stderr
    /// is the launcher's to set (inherited when left alone).
    fn command(
        &self,
        server: &ServerConfig,
        argv: &[String],
    ) -> Result<tokio::process::Command, GatewayError>;
}

/// Not sandboxed: a child process whose environment is cleared except PATH, HOME,
/// LANG and the server's own variables (credential placeholders).
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainLauncher;

impl UpstreamLauncher for PlainLauncher {
    fn command(
        &self,
        server: &ServerConfig,
        argv: &[String],
    ) -> Result<tokio::process::Command, GatewayError> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| GatewayError::BadTransport {
                name: server.name.clone(),
                reason: "command is empty".into(),
            })?;
        let mut cmd = tokio::process::Command::new(prog);
        cmd.args(args).env_clear();
        for k in ["PATH", "HOME", "LANG"] {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        for (k, v) in &server.env {
            cmd.env(k, v);
        }
        Ok(cmd)
    }
}

/// What an upstream's transport delivers.
#[derive(Debug)]
pub enum UpEvent {
    Message(Value),
    Closed(String),
    /// A response, resolved by the session's event loop so that it stays ordered after
    /// the notifications (progress, logs) the upstream sent before it.
    Reply(oneshot::Sender<Reply>, Reply),
}

/// Why a request to an upstream did not produce a result.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The upstream answered with a JSON-RPC error object.
    Rpc(Value),
    Timeout(Duration),
    Closed(String),
}

impl CallError {
    /// A short description for audit and error messages (no arguments, no secrets).
    pub fn describe(&self) -> String {
        match self {
            CallError::Rpc(e) => format!(
                "upstream error {}: {}",
                e.get("code").and_then(Value::as_i64).unwrap_or(0),
                e.get("message").and_then(Value::as_str).unwrap_or("")
            ),
            CallError::Timeout(d) => format!("upstream timed out after {} ms", d.as_millis()),
            CallError::Closed(r) => format!("upstream is not running ({r})"),
        }
    }
}

type Reply = Result<Value, Value>;

/// One connected upstream server.
pub struct Upstream {
    pub name: String,
    out: mpsc::UnboundedSender<Value>,
    pending: Mutex<HashMap<i64, oneshot::Sender<Reply>>>,
    next_id: AtomicI64,
    closed: Mutex<Option<String>>,
    child: Mutex<Option<tokio::process::Child>>,
    /// Negotiated protocol revision and the server's capabilities, after `initialize`.
    pub info: Mutex<Option<(String, Value)>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish()
    }
}

impl Upstream {
    /// Start the transport; incoming non-response messages go to `sink` tagged `idx`.
    pub fn start(
        server: &ServerConfig,
        launcher: &dyn UpstreamLauncher,
        tls: Option<Arc<warden_tls::rustls::ClientConfig>>,
        idx: usize,
        sink: mpsc::UnboundedSender<(usize, UpEvent)>,
    ) -> Result<Arc<Upstream>, GatewayError> {
        let (out_tx, out_rx) = mpsc::unbounded_channel::<Value>();
        let (in_tx, in_rx) = mpsc::unbounded_channel::<UpEvent>();
        let mut child_slot = None;
        match &server.transport {
            Transport::Command(argv) => {
                let mut cmd = launcher.command(server, argv)?;
                cmd.stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .kill_on_drop(true);
                let mut child = cmd.spawn().map_err(|e| GatewayError::Launch {
                    name: server.name.clone(),
                    source: e,
                })?;
                let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                    return Err(GatewayError::Launch {
                        name: server.name.clone(),
                        source: std::io::Error::other("no stdio pipes"),
                    });
                };
                tokio::spawn(stdio_writer(stdin, out_rx));
                tokio::spawn(stdio_reader(server.name.clone(), stdout, in_tx));
                child_slot = Some(child);
            }
            Transport::Url(url) => {
                let http = HttpUpstream::new(server, url, tls, in_tx)?;
                tokio::spawn(http.run(out_rx));
            }
        }
        let up = Arc::new(Upstream {
            name: server.name.clone(),
            out: out_tx,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicI64::new(1),
            closed: Mutex::new(None),
            child: Mutex::new(child_slot),
            info: Mutex::new(None),
        });
        tokio::spawn(dispatch(up.clone(), idx, in_rx, sink));
        Ok(up)
    }

    /// Why the upstream is gone, if it is.
    pub fn closed(&self) -> Option<String> {
        lock(&self.closed).clone()
    }

    /// Send a request; `on_id` learns the upstream-side id (for cancellation).
    pub async fn request(
        &self,
        method: &str,
        params: Option<Value>,
        timeout: Duration,
        on_id: impl FnOnce(i64),
    ) -> Result<Value, CallError> {
        if let Some(r) = self.closed() {
            return Err(CallError::Closed(r));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        on_id(id);
        if self
            .out
            .send(jsonrpc::request(json!(id), method, params))
            .is_err()
        {
            lock(&self.pending).remove(&id);
            return Err(CallError::Closed("transport closed".into()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(CallError::Rpc(e)),
            Ok(Err(_)) => Err(CallError::Closed(
                self.closed().unwrap_or_else(|| "connection lost".into()),
            )),
            Err(_) => {
                lock(&self.pending).remove(&id);
                self.notify(
                    "notifications/cancelled",
                    Some(json!({"requestId": id, "reason": "timed out in warden mcp"})),
                );
                Err(CallError::Timeout(timeout))
            }
        }
    }

    /// Send a notification.
    pub fn notify(&self, method: &str, params: Option<Value>) {
        let _ = self.out.send(jsonrpc::notification(method, params));
    }

    /// Send a raw message (a response to the upstream's own request).
    pub fn send(&self, msg: Value) {
        let _ = self.out.send(msg);
    }

    /// Stop the server (kills a stdio child).
    pub fn shutdown(&self) {
        self.stop("stopped by the gateway".into());
    }

    /// Stop the server, remembering why (calls to it then report the reason).
    pub fn stop(&self, reason: String) {
        if let Some(mut c) = lock(&self.child).take() {
            let _ = c.start_kill();
        }
        self.mark_closed(reason);
    }

    fn mark_closed(&self, reason: String) {
        lock(&self.closed).get_or_insert(reason);
        // Dropping the senders fails every waiter with "connection lost".
        lock(&self.pending).clear();
    }
}

async fn dispatch(
    up: Arc<Upstream>,
    idx: usize,
    mut rx: mpsc::UnboundedReceiver<UpEvent>,
    sink: mpsc::UnboundedSender<(usize, UpEvent)>,
) {
    while let Some(ev) = rx.recv().await {
        match ev {
            UpEvent::Message(msg) => match jsonrpc::kind(&msg) {
                Kind::Response => {
                    let Some(id) = msg.get("id").and_then(Value::as_i64) else {
                        tracing::warn!(server = %up.name, "response with an id the gateway never sent; dropped");
                        continue;
                    };
                    let waiter = lock(&up.pending).remove(&id);
                    if let Some(w) = waiter {
                        let reply = match msg.get("error") {
                            Some(e) => Err(e.clone()),
                            None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
                        };
                        // Through the same queue as the notifications before it: resolving
                        // the waiter here let a result overtake its own progress updates.
                        if let Err(mpsc::error::SendError((_, UpEvent::Reply(w, reply)))) =
                            sink.send((idx, UpEvent::Reply(w, reply)))
                        {
                            let _ = w.send(reply);
                        }
                    }
                }
                Kind::Request | Kind::Notification => {
                    let _ = sink.send((idx, UpEvent::Message(msg)));
                }
                Kind::Invalid => {
                    tracing::warn!(server = %up.name, "invalid JSON-RPC message from upstream; dropped");
                    if let Some(id) = msg.get("id").filter(|i| !i.is_null()).cloned() {
                        up.send(jsonrpc::error(
                            id,
                            jsonrpc::INVALID_REQUEST,
                            "invalid JSON-RPC message",
                        ));
                    }
                }
            },
            // Transports never produce replies; pass one on unchanged if it ever comes.
            UpEvent::Reply(w, reply) => {
                let _ = sink.send((idx, UpEvent::Reply(w, reply)));
            }
            UpEvent::Closed(mut reason) => {
                let child = lock(&up.child).take();
                if let Some(mut c) = child
                    && let Ok(Ok(status)) =
                        tokio::time::timeout(Duration::from_secs(2), c.wait()).await
                {
                    reason = format!("exited with {status}");
                }
                up.mark_closed(reason.clone());
                let _ = sink.send((idx, UpEvent::Closed(reason)));
                break;
            }
        }
    }
}

async fn stdio_writer(
    mut stdin: tokio::process::ChildStdin,
    mut rx: mpsc::UnboundedReceiver<Value>,
) {
    while let Some(msg) = rx.recv().await {
        let mut line = msg.to_string().into_bytes();
        line.push(b'\n');
        if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
            break;
        }
    }
}

async fn stdio_reader(
    name: String,
    stdout: tokio::process::ChildStdout,
    tx: mpsc::UnboundedSender<UpEvent>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(UpEvent::Closed(format!("read error: {e}")));
                return;
            }
        }
        if line.len() > MAX_MESSAGE {
            tracing::warn!(server = %name, "message over {MAX_MESSAGE} bytes; dropped");
            continue;
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Value>(text) {
            Ok(Value::Array(batch)) => {
                for m in batch {
                    let _ = tx.send(UpEvent::Message(m));
                }
            }
            Ok(v) => {
                let _ = tx.send(UpEvent::Message(v));
            }
            Err(_) => {
                tracing::warn!(server = %name, "malformed JSON from upstream; line dropped");
                say!("warden mcp: server {name:?} wrote a line that is not JSON; ignored");
            }
        }
    }
    let _ = tx.send(UpEvent::Closed("closed its stdout".into()));
}
