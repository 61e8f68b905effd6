//! One client session of the gateway: the client side speaks to the gateway as to one
//! MCP server; behind it every upstream is its own MCP session.
//!
//! Naming: tools and prompts are exposed as `SERVER__NAME`; resources as
//! `SERVER+<original uri>` (and templates likewise). Server names contain neither `_`
//! nor `+`, so the split is unambiguous and no server can shadow another's names.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use warden_audit::{AuditLog, Event, Stamp, Surface, Verdict};

use crate::config::{GatewayConfig, ToolDecision, Transport};
use crate::jsonrpc::{self, Kind};
use crate::pins::{self, PinCheck, PinStore};
use crate::scan::Secrets;
use crate::upstream::{CallError, UpEvent, Upstream, UpstreamLauncher};
use crate::{GatewayError, lock};

/// The separator between server and tool/prompt names.
pub const SEP: &str = "__";

/// Shared, per-process gateway state.
pub struct Gateway {
    pub(crate) cfg: GatewayConfig,
    audit: AuditLog,
    pins: PinStore,
    secrets: Secrets,
    /// Client config for `https://` upstreams (system roots + `tls.extra_roots`).
    pub(crate) tls: Option<Arc<warden_tls::rustls::ClientConfig>>,
    launcher: Arc<dyn UpstreamLauncher>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// Validate the configuration and open the audit log (fail closed if it cannot).
    pub fn new(
        cfg: GatewayConfig,
        launcher: Arc<dyn UpstreamLauncher>,
    ) -> Result<Arc<Gateway>, GatewayError> {
        cfg.validate()?;
        if let Some(dir) = cfg.audit.file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| GatewayError::Io {
                context: format!("creating {}", dir.display()),
                source: e,
            })?;
        }
        let audit = AuditLog::open(&cfg.audit.file)?;
        let pins = PinStore::new(cfg.pins_file.clone());
        let mut cfg = cfg;
        let secrets = Secrets::new(&cfg.credentials, &cfg.servers)
            .map_err(|e| GatewayError::Credentials(e.to_string()))?;
        resolve_credentials(&mut cfg, &secrets)?;
        let needs_tls = cfg
            .servers
            .iter()
            .any(|s| matches!(&s.transport, Transport::Url(u) if u.starts_with("https://")));
        let tls = if needs_tls {
            let trust = warden_tls::UpstreamTrust::load(&cfg.extra_roots)?;
            // The HTTP client speaks HTTP/1.1 only.
            Some(trust.client_config(warden_tls::Alpn::Http1)?)
        } else {
            None
        };
        Ok(Arc::new(Gateway {
            cfg,
            audit,
            pins,
            secrets,
            tls,
            launcher,
        }))
    }

    /// The placeholder the session holds for `credential`.
    pub fn placeholder(&self, credential: &str) -> Option<&warden_secrets::Placeholder> {
        self.secrets.placeholder(credential)
    }

    /// What events are stamped with: the configured stamp, with the id of the policy
    /// deciding now (it changes with a live reload).
    fn stamp(&self) -> std::borrow::Cow<'_, Stamp> {
        match self.cfg.authorizer.policy_id() {
            Some(id) if id != self.cfg.audit.stamp.policy => {
                let mut s = self.cfg.audit.stamp.clone();
                s.policy = id;
                std::borrow::Cow::Owned(s)
            }
            _ => std::borrow::Cow::Borrowed(&self.cfg.audit.stamp),
        }
    }

    /// Record an event; denials wait until they are on disk.
    fn record(&self, ev: Event, durable: bool) {
        let stamp = self.stamp();
        let res = if durable {
            self.audit.record_durable(&stamp, ev)
        } else {
            self.audit.record(&stamp, ev).map(|_| ())
        };
        if let Err(e) = res {
            say!("warden mcp: audit log failed: {e}");
        }
    }

    /// Write an event to the log (it survives a crash of this process from here on;
    /// the group commit fsyncs it within ~100 ms) and return its id. `Err`: the log
    /// cannot take it.
    fn record_written(&self, ev: Event) -> Result<String, warden_audit::AuditError> {
        let ticket = self.audit.record(&self.stamp(), ev)?;
        Ok(ticket.id().to_string())
    }

    /// Record an event and return once it is fsynced, without blocking a thread.
    async fn record_durable(&self, ev: Event) -> Result<(), warden_audit::AuditError> {
        let ticket = self.audit.record(&self.stamp(), ev)?;
        ticket.durable().await
    }

    /// Flush the audit log (at shutdown).
    pub fn flush(&self) {
        let _ = self.audit.flush();
    }

    /// Start a client session: upstream servers are launched now so they warm up
    /// while the client connects; `initialize` completes their handshakes.
    pub fn session(self: &Arc<Self>, to_client: mpsc::UnboundedSender<Value>) -> Arc<Session> {
        let (sink_tx, sink_rx) = mpsc::unbounded_channel();
        let mut ups = Vec::new();
        for (idx, s) in self.cfg.servers.iter().enumerate() {
            match Upstream::start(
                s,
                self.launcher.as_ref(),
                self.tls.clone(),
                idx,
                sink_tx.clone(),
            ) {
                Ok(u) => ups.push(Ok(u)),
                Err(e) => {
                    say!("warden mcp: {e}");
                    ups.push(Err(e.to_string()));
                }
            }
        }
        let session = Arc::new(Session {
            gw: self.clone(),
            ups,
            to_client,
            st: Mutex::new(State::default()),
        });
        tokio::spawn(upstream_events(Arc::downgrade(&session), sink_rx));
        session
    }
}

#[derive(Default)]
struct State {
    version: Option<String>,
    client_caps: Value,
    initialized: bool,
    /// Tool definitions seen in this session: (server idx, tool) → usable?
    tools: HashMap<(usize, String), ToolState>,
    /// Client request id (as JSON text) → (upstream idx, upstream request id).
    inflight: HashMap<String, (usize, i64)>,
    /// Progress tokens (as JSON text) of calls in flight → (upstream idx, client
    /// request id as JSON text).
    progress: HashMap<String, (usize, String)>,
    /// Client request id (as JSON text) → the stream its answer goes out on (a
    /// Streamable HTTP POST answered with SSE): messages related to that request go
    /// there too, before the answer.
    streams: HashMap<String, mpsc::UnboundedSender<Value>>,
    /// Gateway id of a server→client request → (upstream idx, the upstream's id).
    server_reqs: HashMap<i64, (usize, Value)>,
    next_server_req: i64,
    /// Merged lists a client is paging through, oldest first (at most `MAX_SNAPSHOTS`).
    snapshots: Vec<Snapshot>,
    next_snapshot: u64,
}

/// A merged list taken when the client asked for its first page; later pages are
/// slices of it, so a client paging through sees one consistent list.
struct Snapshot {
    method: &'static str,
    id: u64,
    items: Arc<Vec<Value>>,
}

/// Where a client cursor points: the snapshot's items, its id, the offset.
type PagePos = (Arc<Vec<Value>>, u64, usize);

/// Lists a session keeps for paging; asking for a first page beyond this drops the
/// oldest (its cursors then answer `-32602`).
const MAX_SNAPSHOTS: usize = 8;

/// Cursor format version: cursors are `wc1.` + hex of `METHOD SNAPSHOT OFFSET`.
const CURSOR_PREFIX: &str = "wc1.";

fn encode_cursor(method: &str, snapshot: u64, offset: usize) -> String {
    format!(
        "{CURSOR_PREFIX}{}",
        hex::encode(format!("{method} {snapshot} {offset}"))
    )
}

/// `(snapshot, offset)` of a cursor this gateway issued for `method`.
fn decode_cursor(method: &str, cursor: &str) -> Option<(u64, usize)> {
    let raw = hex::decode(cursor.strip_prefix(CURSOR_PREFIX)?).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let mut parts = text.split(' ');
    if parts.next()? != method {
        return None;
    }
    let snapshot = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((snapshot, offset))
}

#[derive(Clone)]
enum ToolState {
    Ok,
    /// The definition differs from its pin.
    Changed,
}

/// One client session.
pub struct Session {
    gw: Arc<Gateway>,
    ups: Vec<Result<Arc<Upstream>, String>>,
    to_client: mpsc::UnboundedSender<Value>,
    st: Mutex<State>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

fn sha256_hex(v: &Value) -> String {
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}

fn deny_message(what: &str, d: &ToolDecision) -> String {
    format!("warden: {what} refused by {}: {}", d.rule, d.reason)
}

/// A valid MCP tool name (SEP-986): 1–128 of `A-Za-z0-9_-.`.
pub fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

impl Session {
    fn send(&self, msg: Value) {
        let _ = self.to_client.send(msg);
    }

    /// Send a message related to client request `key`: on that request's own stream
    /// when it has one, else on the session's channel.
    fn send_for(&self, key: Option<&str>, msg: Value) {
        let stream = key.and_then(|k| lock(&self.st).streams.get(k).cloned());
        match stream {
            Some(tx) => {
                if let Err(back) = tx.send(msg) {
                    self.send(back.0);
                }
            }
            None => self.send(msg),
        }
    }

    /// A client request in flight on upstream `idx` that has its own stream. Over stdio
    /// an upstream does not say which request a sampling request or log message belongs
    /// to; while one streamed request runs there, it is that one.
    fn stream_of_upstream(&self, idx: usize) -> Option<String> {
        let st = lock(&self.st);
        st.inflight
            .iter()
            .find(|(key, (i, _))| *i == idx && st.streams.contains_key(*key))
            .map(|(key, _)| key.clone())
    }

    /// [`Session::handle`] for one request whose related messages (progress, requests
    /// from the server handling it, its log messages) go to `stream` rather than the
    /// session's channel; the answer is returned as usual — send it on `stream` last.
    pub async fn handle_streamed(
        self: &Arc<Self>,
        msg: Value,
        stream: mpsc::UnboundedSender<Value>,
    ) -> Option<Value> {
        let key = msg.get("id").map(Value::to_string);
        if let Some(k) = &key {
            lock(&self.st).streams.insert(k.clone(), stream);
        }
        let answer = self.handle(msg).await;
        if let Some(k) = &key {
            lock(&self.st).streams.remove(k);
        }
        answer
    }

    fn up(&self, idx: usize) -> Option<&Arc<Upstream>> {
        self.ups.get(idx).and_then(|u| u.as_ref().ok())
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Arc<Upstream>)> {
        self.ups
            .iter()
            .enumerate()
            .filter_map(|(i, u)| u.as_ref().ok().map(|u| (i, u)))
            .filter(|(_, u)| u.closed().is_none() && lock(&u.info).is_some())
    }

    fn server_name(&self, idx: usize) -> &str {
        self.gw
            .cfg
            .servers
            .get(idx)
            .map(|s| s.name.as_str())
            .unwrap_or("?")
    }

    fn server_idx(&self, name: &str) -> Option<usize> {
        self.gw.cfg.servers.iter().position(|s| s.name == name)
    }

    /// Split `SERVER__NAME`.
    fn split_name<'a>(&self, exposed: &'a str) -> Option<(usize, &'a str)> {
        let (server, name) = exposed.split_once(SEP)?;
        Some((self.server_idx(server)?, name))
    }

    /// Split `SERVER+uri`.
    fn split_uri<'a>(&self, exposed: &'a str) -> Option<(usize, &'a str)> {
        let (server, uri) = exposed.split_once('+')?;
        Some((self.server_idx(server)?, uri))
    }

    fn has_cap(&self, up: &Upstream, cap: &str) -> bool {
        lock(&up.info)
            .as_ref()
            .is_some_and(|(_, caps)| caps.get(cap).is_some())
    }

    fn timeout(&self) -> Duration {
        self.gw.cfg.request_timeout
    }

    /// Stop every upstream.
    pub fn shutdown(&self) {
        for u in self.ups.iter().flatten() {
            u.shutdown();
        }
        self.gw.flush();
    }

    /// The protocol revision negotiated with the client.
    pub fn version(&self) -> Option<String> {
        lock(&self.st).version.clone()
    }

    /// Handle one message or batch from the client. Returns what to send back
    /// directly (a response or a batch of responses), if anything.
    pub async fn handle(self: &Arc<Self>, msg: Value) -> Option<Value> {
        if let Value::Array(batch) = msg {
            let version = self.version();
            let allowed = version.as_deref().is_some_and(jsonrpc::batches_allowed);
            if !allowed || batch.is_empty() {
                return Some(jsonrpc::error(
                    Value::Null,
                    jsonrpc::INVALID_REQUEST,
                    format!(
                        "JSON-RPC batches are not allowed in protocol revision {}",
                        version.as_deref().unwrap_or("(before initialize)")
                    ),
                ));
            }
            let mut tasks = Vec::new();
            for m in batch {
                let s = self.clone();
                tasks.push(tokio::spawn(async move { s.handle_one(m).await }));
            }
            let mut out = Vec::new();
            for t in tasks {
                if let Ok(Some(r)) = t.await {
                    out.push(r);
                }
            }
            return (!out.is_empty()).then_some(Value::Array(out));
        }
        self.handle_one(msg).await
    }

    async fn handle_one(self: &Arc<Self>, msg: Value) -> Option<Value> {
        match jsonrpc::kind(&msg) {
            Kind::Invalid => {
                let id = msg
                    .get("id")
                    .filter(|i| i.is_string() || i.is_number())
                    .cloned()
                    .unwrap_or(Value::Null);
                Some(jsonrpc::error(
                    id,
                    jsonrpc::INVALID_REQUEST,
                    "invalid JSON-RPC 2.0 message",
                ))
            }
            Kind::Notification => {
                self.client_notification(&msg);
                None
            }
            Kind::Response => {
                self.client_response(msg);
                None
            }
            Kind::Request => {
                let id = msg.get("id").cloned().unwrap_or(Value::Null);
                let params = msg.get("params").cloned().unwrap_or(Value::Null);
                let method = jsonrpc::method(&msg).to_string();
                Some(match self.request(&id, &method, params).await {
                    Ok(result) => jsonrpc::result(id, result),
                    Err(err) => {
                        let mut e = json!({"jsonrpc": "2.0", "id": id});
                        if let Some(o) = e.as_object_mut() {
                            o.insert("error".into(), err);
                        }
                        e
                    }
                })
            }
        }
    }

    async fn request(
        self: &Arc<Self>,
        id: &Value,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        let initialized = lock(&self.st).version.is_some();
        if !initialized && method != "initialize" && method != "ping" {
            return Err(err(jsonrpc::INVALID_REQUEST, "send initialize first"));
        }
        match method {
            "initialize" => self.initialize(params).await,
            "ping" => Ok(json!({})),
            "tools/list" => self.tools_list(&params).await,
            "tools/call" => self.tools_call(id, params).await,
            "prompts/list" => {
                self.list_merged("prompts/list", "prompts", "prompts", &params)
                    .await
            }
            "resources/list" => {
                self.list_merged("resources/list", "resources", "resources", &params)
                    .await
            }
            "resources/templates/list" => {
                self.list_merged(
                    "resources/templates/list",
                    "resourceTemplates",
                    "resources",
                    &params,
                )
                .await
            }
            "prompts/get" => self.prompts_get(id, params).await,
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                self.resource_op(id, method, params).await
            }
            "completion/complete" => self.complete(id, params).await,
            "logging/setLevel" => {
                for (_, u) in self.live() {
                    if self.has_cap(u, "logging") {
                        let _ = u
                            .request(method, Some(params.clone()), self.timeout(), |_| {})
                            .await;
                    }
                }
                Ok(json!({}))
            }
            _ => Err(err(
                jsonrpc::METHOD_NOT_FOUND,
                format!("method {method:?} not found"),
            )),
        }
    }

    async fn initialize(self: &Arc<Self>, params: Value) -> Result<Value, Value> {
        let requested = params.get("protocolVersion").and_then(Value::as_str);
        let version = jsonrpc::negotiate(requested).to_string();
        let client_caps = params.get("capabilities").cloned().unwrap_or(json!({}));
        {
            let mut st = lock(&self.st);
            if st.version.is_some() {
                return Err(err(jsonrpc::INVALID_REQUEST, "already initialized"));
            }
            st.version = Some(version.clone());
            st.client_caps = client_caps.clone();
        }
        // Offer each upstream only what the client itself can do.
        let mut caps = Map::new();
        for k in ["sampling", "elicitation", "roots"] {
            if let Some(v) = client_caps.get(k) {
                caps.insert(k.into(), v.clone());
            }
        }
        let client_name = params
            .pointer("/clientInfo/name")
            .and_then(Value::as_str)
            .unwrap_or("client")
            .to_string();
        let up_params = json!({
            "protocolVersion": jsonrpc::latest_version(),
            "capabilities": caps,
            "clientInfo": {"name": format!("warden-mcp (for {client_name})"), "version": env!("CARGO_PKG_VERSION")},
        });
        let mut tasks = Vec::new();
        for (idx, u) in self.ups.iter().enumerate() {
            let Ok(u) = u else { continue };
            let u = u.clone();
            let p = up_params.clone();
            let t = self.gw.cfg.startup_timeout;
            let name = self.server_name(idx).to_string();
            tasks.push(tokio::spawn(async move {
                match u.request("initialize", Some(p), t, |_| {}).await {
                    Ok(r) => {
                        let v = r.get("protocolVersion").and_then(Value::as_str).unwrap_or("");
                        if jsonrpc::supported_versions().any(|s| s == v) {
                            *lock(&u.info) = Some((
                                v.to_string(),
                                r.get("capabilities").cloned().unwrap_or(json!({})),
                            ));
                            u.notify("notifications/initialized", None);
                        } else {
                            let why = format!(
                                "it answered initialize with protocol revision {v:?}, which the gateway does not speak"
                            );
                            say!("warden mcp: server {name:?}: {why}; not used");
                            u.stop(why);
                        }
                    }
                    Err(e) => {
                        let why = format!("it did not initialize: {}", e.describe());
                        say!("warden mcp: server {name:?}: {why}");
                        u.stop(why);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        lock(&self.st).initialized = true;
        let names: Vec<&str> = self
            .gw
            .cfg
            .servers
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        Ok(json!({
            "protocolVersion": version,
            "capabilities": {
                "tools": {"listChanged": true},
                "prompts": {"listChanged": true},
                "resources": {"subscribe": true, "listChanged": true},
                "logging": {},
                "completions": {},
            },
            "serverInfo": {"name": "warden-mcp", "title": "Warden MCP gateway", "version": env!("CARGO_PKG_VERSION")},
            "instructions": format!(
                "Warden MCP gateway. Tools and prompts are named SERVER__NAME, resources SERVER+URI. Servers: {}. Every call is authorized by policy and recorded.",
                names.join(", ")
            ),
        }))
    }

    /// Every page of one list method from one upstream.
    async fn fetch_all(
        &self,
        u: &Upstream,
        method: &str,
        key: &str,
    ) -> Result<Vec<Value>, CallError> {
        let mut items = Vec::new();
        let mut cursor: Option<Value> = None;
        for _ in 0..1000 {
            let params = cursor.take().map(|c| json!({"cursor": c}));
            let r = u.request(method, params, self.timeout(), |_| {}).await?;
            if let Some(Value::Array(a)) = r.get(key) {
                items.extend(a.iter().cloned());
            }
            match r.get("nextCursor") {
                Some(c) if !c.is_null() => cursor = Some(c.clone()),
                _ => break,
            }
        }
        Ok(items)
    }

    /// The client's `cursor`: `Ok(None)` for a first page, else the snapshot and
    /// offset it points at.
    fn client_cursor(
        &self,
        method: &'static str,
        params: &Value,
    ) -> Result<Option<PagePos>, Value> {
        let cursor = match params.get("cursor") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(c)) => c,
            Some(_) => return Err(err(jsonrpc::INVALID_PARAMS, "cursor must be a string")),
        };
        let invalid = || {
            err(
                jsonrpc::INVALID_PARAMS,
                format!(
                    "invalid or expired cursor for {method}: use a nextCursor this session received, or list again without a cursor"
                ),
            )
        };
        let (id, offset) = decode_cursor(method, cursor).ok_or_else(invalid)?;
        let st = lock(&self.st);
        let snap = st
            .snapshots
            .iter()
            .find(|s| s.method == method && s.id == id)
            .ok_or_else(invalid)?;
        if offset > snap.items.len() {
            return Err(invalid());
        }
        Ok(Some((snap.items.clone(), id, offset)))
    }

    /// One page of a merged list: from `offset`, at most `page_size` items, and a
    /// `nextCursor` when more follow. A first page of a list longer than a page keeps
    /// the list as a snapshot for the cursors.
    fn page(
        &self,
        method: &'static str,
        key: &str,
        items: Arc<Vec<Value>>,
        snapshot: Option<u64>,
        offset: usize,
    ) -> Value {
        let end = offset
            .saturating_add(self.gw.cfg.page_size)
            .min(items.len());
        let mut out = json!({ key: items.get(offset..end).unwrap_or_default() });
        if end < items.len() {
            let id = match snapshot {
                Some(id) => id,
                None => {
                    let mut st = lock(&self.st);
                    st.next_snapshot += 1;
                    let id = st.next_snapshot;
                    if st.snapshots.len() >= MAX_SNAPSHOTS {
                        st.snapshots.remove(0);
                    }
                    st.snapshots.push(Snapshot {
                        method,
                        id,
                        items: items.clone(),
                    });
                    id
                }
            };
            out["nextCursor"] = Value::String(encode_cursor(method, id, end));
        }
        out
    }

    async fn tools_list(self: &Arc<Self>, params: &Value) -> Result<Value, Value> {
        if let Some((items, id, offset)) = self.client_cursor("tools/list", params)? {
            return Ok(self.page("tools/list", "tools", items, Some(id), offset));
        }
        let mut tasks = Vec::new();
        for (idx, u) in self.live() {
            if !self.has_cap(u, "tools") {
                continue;
            }
            let s = self.clone();
            let u = u.clone();
            tasks.push(tokio::spawn(async move {
                (idx, s.fetch_all(&u, "tools/list", "tools").await)
            }));
        }
        let mut tools = Vec::new();
        for t in tasks {
            let Ok((idx, res)) = t.await else { continue };
            match res {
                Ok(list) => tools.extend(self.filter_tools(idx, list)),
                Err(e) => say!(
                    "warden mcp: tools/list on server {:?} failed: {}",
                    self.server_name(idx),
                    e.describe()
                ),
            }
        }
        Ok(self.page("tools/list", "tools", Arc::new(tools), None, 0))
    }

    /// Validate, authorize and pin-check an upstream's tools; rename the visible ones.
    fn filter_tools(&self, idx: usize, list: Vec<Value>) -> Vec<Value> {
        let server = self.server_name(idx).to_string();
        let enforce = self.gw.cfg.enforce;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for mut tool in list {
            let Some(name) = tool.get("name").and_then(Value::as_str).map(str::to_string) else {
                continue;
            };
            if !valid_tool_name(&name) || !tool.is_object() || !seen.insert(name.clone()) {
                say!(
                    "warden mcp: server {server:?} offers a tool with an invalid or duplicate name; hidden"
                );
                continue;
            }
            let digest = pins::digest(&tool);
            let state = match self.gw.pins.check(&server, &name, &digest) {
                Ok(PinCheck::New | PinCheck::Match) => ToolState::Ok,
                Ok(PinCheck::Changed {
                    pinned,
                    seen,
                    first_report,
                }) => {
                    if first_report {
                        self.gw.record(
                            Event::new(Surface::Mcp, "tool_changed", &pins::key(&server, &name), Verdict::Deny)
                                .rule("pin")
                                .reason("tool definition changed since it was pinned; run `warden mcp pins approve`")
                                .enforced(enforce)
                                .field("server", server.as_str())
                                .field("tool", name.as_str())
                                .field("pinned_digest", pinned)
                                .field("seen_digest", seen),
                            true,
                        );
                    }
                    ToolState::Changed
                }
                Err(e) => {
                    say!("warden mcp: {e}");
                    ToolState::Changed
                }
            };
            lock(&self.st)
                .tools
                .insert((idx, name.clone()), state.clone());
            if enforce && matches!(state, ToolState::Changed) {
                continue;
            }
            let d = self.gw.cfg.authorizer.tool_listed(&server, &name);
            if enforce && !d.allow {
                continue;
            }
            if let Some(o) = tool.as_object_mut() {
                o.insert("name".into(), Value::String(format!("{server}{SEP}{name}")));
            }
            out.push(tool);
        }
        out
    }

    async fn list_merged(
        self: &Arc<Self>,
        method: &'static str,
        key: &'static str,
        cap: &'static str,
        params: &Value,
    ) -> Result<Value, Value> {
        if let Some((items, id, offset)) = self.client_cursor(method, params)? {
            return Ok(self.page(method, key, items, Some(id), offset));
        }
        let mut tasks = Vec::new();
        for (idx, u) in self.live() {
            if !self.has_cap(u, cap) {
                continue;
            }
            let s = self.clone();
            let u = u.clone();
            tasks.push(tokio::spawn(async move {
                (idx, s.fetch_all(&u, method, key).await)
            }));
        }
        let enforce = self.gw.cfg.enforce;
        let mut all = Vec::new();
        for t in tasks {
            let Ok((idx, res)) = t.await else { continue };
            let server = self.server_name(idx).to_string();
            match res {
                Ok(items) => {
                    for mut it in items {
                        let Some(o) = it.as_object_mut() else {
                            continue;
                        };
                        let field = match key {
                            "prompts" => "name",
                            "resources" => "uri",
                            _ => "uriTemplate",
                        };
                        let Some(v) = o.get(field).and_then(Value::as_str) else {
                            continue;
                        };
                        let authz = &self.gw.cfg.authorizer;
                        let d = if field == "name" {
                            authz.decide_prompt(&server, v, &json!({}))
                        } else {
                            authz.decide_resource(&server, v)
                        };
                        if enforce && !d.allow {
                            continue;
                        }
                        let renamed = if field == "name" {
                            format!("{server}{SEP}{v}")
                        } else {
                            format!("{server}+{v}")
                        };
                        o.insert(field.into(), Value::String(renamed));
                        all.push(it);
                    }
                }
                Err(e) => say!(
                    "warden mcp: {method} on server {server:?} failed: {}",
                    e.describe()
                ),
            }
        }
        Ok(self.page(method, key, Arc::new(all), None, 0))
    }

    /// Forward a request to one upstream, tracking it for cancellation and progress.
    async fn forward(
        &self,
        client_id: &Value,
        idx: usize,
        method: &str,
        params: Value,
    ) -> Result<Value, CallError> {
        let Some(u) = self.up(idx) else {
            return Err(CallError::Closed("not started".into()));
        };
        let key = client_id.to_string();
        let token = params.pointer("/_meta/progressToken").map(Value::to_string);
        if let Some(t) = &token {
            lock(&self.st)
                .progress
                .insert(t.clone(), (idx, key.clone()));
        }
        let res = u
            .request(method, Some(params), self.timeout(), |uid| {
                lock(&self.st).inflight.insert(key.clone(), (idx, uid));
            })
            .await;
        let mut st = lock(&self.st);
        st.inflight.remove(&key);
        if let Some(t) = &token {
            st.progress.remove(t);
        }
        res
    }

    fn call_error(e: &CallError) -> Value {
        match e {
            CallError::Rpc(e) => e.clone(),
            other => err(
                jsonrpc::UPSTREAM_FAILED,
                format!("warden: {}", other.describe()),
            ),
        }
    }

    async fn tools_call(self: &Arc<Self>, id: &Value, mut params: Value) -> Result<Value, Value> {
        let started = Instant::now();
        let exposed = params
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let Some((idx, tool)) = self.split_name(&exposed) else {
            return Err(err(
                jsonrpc::INVALID_PARAMS,
                format!("unknown tool {exposed:?}"),
            ));
        };
        let tool = tool.to_string();
        let server = self.server_name(idx).to_string();
        // A server that is down (did not start, failed its handshake, crashed) says
        // why, instead of looking like it lacks the tool.
        let down = match self.ups.get(idx) {
            Some(Ok(u)) => u.closed(),
            Some(Err(e)) => Some(e.clone()),
            None => None,
        };
        if let Some(why) = down {
            return Err(err(
                jsonrpc::UPSTREAM_FAILED,
                format!("warden: server {server:?} is not running: {why}"),
            ));
        }
        let args = params.get("arguments").cloned().unwrap_or(json!({}));
        let args_digest = sha256_hex(&args);
        let enforce = self.gw.cfg.enforce;
        let target = pins::key(&server, &tool);

        // 1. policy
        let mut decision = self.gw.cfg.authorizer.decide_tool(&server, &tool, &args);
        // 2. pin
        if decision.allow
            && let Some(d) = self.pin_refusal(idx, &server, &tool).await
        {
            decision = d;
        }
        // 3. secrets in the arguments
        if decision.allow {
            let bad = self.gw.secrets.refused_names(idx, &args);
            if !bad.is_empty() {
                decision = ToolDecision {
                    allow: false,
                    rule: "secret scan".into(),
                    reason: format!(
                        "arguments carry a secret ({}) that server {server:?} is not bound to",
                        bad.join(", ")
                    ),
                };
            }
        }
        let mut ev = Event::new(
            Surface::Mcp,
            "call_tool",
            &target,
            if decision.allow {
                Verdict::Allow
            } else {
                Verdict::Deny
            },
        )
        .rule(&decision.rule)
        .reason(&decision.reason)
        .enforced(enforce)
        .field("server", server.as_str())
        .field("tool", tool.as_str())
        .field("args_sha256", args_digest);
        if self.gw.cfg.audit.record_args {
            let mut redacted = args.clone();
            self.gw.secrets.scrub(&mut redacted);
            ev = ev.field("args", redacted);
        }
        if !decision.allow && enforce {
            let ev = ev.field("duration_ms", started.elapsed().as_secs_f64() * 1000.0);
            // The refusal is on disk before the client hears of it.
            if let Err(e) = self.gw.record_durable(ev).await {
                say!("warden mcp: audit log failed: {e}");
            }
            return Err(err_data(
                jsonrpc::POLICY_DENIED,
                deny_message(&format!("call to {exposed}"), &decision),
                json!({"rule": decision.rule, "reason": decision.reason}),
            ));
        }

        // The decision is written to the log before the call goes upstream (an allow
        // proceeds once written and is fsynced by the group commit; a refusal above
        // waits for its fsync: docs/decisions/0006-audit-durability.md). A log that
        // cannot take the record fails the call closed, before anything is sent.
        let verdict = if decision.allow {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        let call_id = match self.gw.record_written(ev) {
            Ok(id) => id,
            Err(e) => {
                say!("warden mcp: audit log failed: {e}");
                return Err(err(
                    jsonrpc::AUDIT_FAILED,
                    format!(
                        "warden: call to {exposed} not made: the audit log cannot record it ({e})"
                    ),
                ));
            }
        };
        if let Some(o) = params.as_object_mut() {
            o.insert("name".into(), Value::String(tool.clone()));
        }
        let res = self.forward(id, idx, "tools/call", params).await;
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        // The outcome: its own event, pointing at the decision (`call`), group-committed.
        let mut end = Event::new(Surface::Mcp, "call_tool_end", &target, verdict)
            .rule(&decision.rule)
            .reason(&decision.reason)
            .enforced(enforce)
            .field("server", server.as_str())
            .field("tool", tool.as_str())
            .field("call", call_id.as_str())
            .field("duration_ms", elapsed);
        let out = match res {
            Ok(mut result) => {
                let redacted = self.gw.secrets.scrub(&mut result);
                self.rewrite_content_uris(&server, &mut result);
                let size = result.to_string().len();
                end = end.field("result_bytes", size as u64).field(
                    "is_error",
                    result
                        .get("isError")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                );
                if !redacted.is_empty() {
                    let names: Vec<String> = redacted.into_iter().map(|f| f.name).collect();
                    end = end.field("redacted", names);
                }
                Ok(result)
            }
            Err(e) => {
                end = end.field("error", e.describe());
                Err(Self::call_error(&e))
            }
        };
        self.gw.record(end, false);
        out
    }

    /// Refusal because the tool's definition is unknown or differs from its pin.
    async fn pin_refusal(
        self: &Arc<Self>,
        idx: usize,
        server: &str,
        tool: &str,
    ) -> Option<ToolDecision> {
        let key = (idx, tool.to_string());
        let mut state = lock(&self.st).tools.get(&key).cloned();
        if state.is_none() {
            // Called without a tools/list in this session: look the definition up.
            if let Some(u) = self.up(idx).cloned()
                && let Ok(list) = self.fetch_all(&u, "tools/list", "tools").await
            {
                self.filter_tools(idx, list);
            }
            state = lock(&self.st).tools.get(&key).cloned();
        }
        match state {
            Some(ToolState::Ok) => None,
            Some(ToolState::Changed) => Some(ToolDecision {
                allow: false,
                rule: "pin".into(),
                reason: format!(
                    "the definition of {server}/{tool} changed since it was pinned; approve it with `warden mcp pins approve {server}/{tool}`"
                ),
            }),
            None => Some(ToolDecision {
                allow: false,
                rule: "pin".into(),
                reason: format!("server {server:?} does not offer a tool named {tool:?}"),
            }),
        }
    }

    /// Resource links and embedded resources in results carry the exposed URI, so the
    /// client can read them through the gateway.
    fn rewrite_content_uris(&self, server: &str, result: &mut Value) {
        if let Some(Value::Array(items)) = result.get_mut("content") {
            for it in items {
                let ptr = match it.get("type").and_then(Value::as_str) {
                    Some("resource_link") => "/uri",
                    Some("resource") => "/resource/uri",
                    _ => continue,
                };
                if let Some(Value::String(u)) = it.pointer_mut(ptr) {
                    *u = format!("{server}+{u}");
                }
            }
        }
    }

    async fn prompts_get(self: &Arc<Self>, id: &Value, mut params: Value) -> Result<Value, Value> {
        let exposed = params
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let Some((idx, name)) = self.split_name(&exposed) else {
            return Err(err(
                jsonrpc::INVALID_PARAMS,
                format!("unknown prompt {exposed:?}"),
            ));
        };
        let name = name.to_string();
        if let Some(o) = params.as_object_mut() {
            o.insert("name".into(), Value::String(name.clone()));
        }
        let server = self.server_name(idx).to_string();
        let args = params.get("arguments").cloned().unwrap_or(json!({}));
        let d = self.gw.cfg.authorizer.decide_prompt(&server, &name, &args);
        let ev = self
            .decision_event("get_prompt", &format!("{server}/{name}"), &server, &d)
            .field("prompt", name.as_str())
            .field("args_sha256", sha256_hex(&args));
        let mut r = self
            .decided_forward(id, idx, "prompts/get", params, ev, &d, &exposed)
            .await?;
        self.gw.secrets.scrub(&mut r);
        Ok(r)
    }

    async fn resource_op(
        self: &Arc<Self>,
        id: &Value,
        method: &str,
        mut params: Value,
    ) -> Result<Value, Value> {
        let exposed = params
            .get("uri")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let Some((idx, uri)) = self.split_uri(&exposed) else {
            return Err(err(
                jsonrpc::INVALID_PARAMS,
                format!("unknown resource {exposed:?}: resource URIs are SERVER+URI"),
            ));
        };
        let uri = uri.to_string();
        if let Some(o) = params.as_object_mut() {
            o.insert("uri".into(), Value::String(uri.clone()));
        }
        let server = self.server_name(idx).to_string();
        let action = match method {
            "resources/read" => "read_resource",
            "resources/subscribe" => "subscribe_resource",
            // Stopping updates needs no permission.
            _ => {
                return self
                    .forward(id, idx, method, params)
                    .await
                    .map_err(|e| Self::call_error(&e));
            }
        };
        let d = self.gw.cfg.authorizer.decide_resource(&server, &uri);
        let ev = self
            .decision_event(action, &format!("{server}/{uri}"), &server, &d)
            .field("uri", uri.as_str());
        let mut r = self
            .decided_forward(id, idx, method, params, ev, &d, &exposed)
            .await?;
        if let Some(Value::Array(items)) = r.get_mut("contents") {
            for it in items {
                if let Some(Value::String(u)) = it.get_mut("uri") {
                    *u = format!("{server}+{u}");
                }
            }
        }
        self.gw.secrets.scrub(&mut r);
        Ok(r)
    }

    async fn complete(self: &Arc<Self>, id: &Value, mut params: Value) -> Result<Value, Value> {
        let (field, is_uri) = match params.pointer("/ref/type").and_then(Value::as_str) {
            Some("ref/prompt") => ("name", false),
            Some("ref/resource") => ("uri", true),
            _ => return Err(err(jsonrpc::INVALID_PARAMS, "unknown completion ref")),
        };
        let exposed = params
            .pointer(&format!("/ref/{field}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let split = if is_uri {
            self.split_uri(&exposed)
        } else {
            self.split_name(&exposed)
        };
        let Some((idx, orig)) = split else {
            return Err(err(
                jsonrpc::INVALID_PARAMS,
                format!("unknown reference {exposed:?}"),
            ));
        };
        let orig = orig.to_string();
        let server = self.server_name(idx).to_string();
        // Completing a prompt's or resource's arguments needs the permission to use it.
        let d = if is_uri {
            self.gw.cfg.authorizer.decide_resource(&server, &orig)
        } else {
            self.gw
                .cfg
                .authorizer
                .decide_prompt(&server, &orig, &json!({}))
        };
        if let Some(r) = params.pointer_mut(&format!("/ref/{field}")) {
            *r = Value::String(orig.clone());
        }
        let ev = self.decision_event("complete", &format!("{server}/{orig}"), &server, &d);
        self.decided_forward(id, idx, "completion/complete", params, ev, &d, &exposed)
            .await
    }

    /// The decision event of a prompt or resource operation.
    fn decision_event(&self, action: &str, target: &str, server: &str, d: &ToolDecision) -> Event {
        Event::new(
            Surface::Mcp,
            action,
            target,
            if d.allow {
                Verdict::Allow
            } else {
                Verdict::Deny
            },
        )
        .rule(&d.rule)
        .reason(&d.reason)
        .enforced(self.gw.cfg.enforce)
        .field("server", server)
    }

    /// Enforce decision `d` for a request to upstream `idx`, recorded as `ev`: a refusal
    /// is on disk before its error returns; an allowed request is forwarded while its
    /// record is fsynced, and answered once both are done (as `tools/call`).
    #[allow(clippy::too_many_arguments)]
    async fn decided_forward(
        &self,
        id: &Value,
        idx: usize,
        method: &str,
        params: Value,
        ev: Event,
        d: &ToolDecision,
        exposed: &str,
    ) -> Result<Value, Value> {
        if !d.allow && self.gw.cfg.enforce {
            if let Err(e) = self.gw.record_durable(ev).await {
                say!("warden mcp: audit log failed: {e}");
            }
            return Err(err_data(
                jsonrpc::POLICY_DENIED,
                deny_message(&format!("{method} of {exposed}"), d),
                json!({"rule": d.rule, "reason": d.reason}),
            ));
        }
        match self.gw.record_written(ev) {
            Ok(_) => {}
            Err(e) => {
                say!("warden mcp: audit log failed: {e}");
                return Err(err(
                    jsonrpc::AUDIT_FAILED,
                    format!(
                        "warden: {method} of {exposed} not made: the audit log cannot record it ({e})"
                    ),
                ));
            }
        };
        self.forward(id, idx, method, params)
            .await
            .map_err(|e| Self::call_error(&e))
    }

    fn client_notification(&self, msg: &Value) {
        match jsonrpc::method(msg) {
            "notifications/cancelled" => {
                let Some(rid) = msg.pointer("/params/requestId") else {
                    return;
                };
                let target = lock(&self.st).inflight.get(&rid.to_string()).copied();
                if let Some((idx, uid)) = target
                    && let Some(u) = self.up(idx)
                {
                    let mut p = json!({"requestId": uid});
                    if let Some(r) = msg.pointer("/params/reason") {
                        p["reason"] = r.clone();
                    }
                    u.notify("notifications/cancelled", Some(p));
                }
            }
            "notifications/roots/list_changed" => {
                for (_, u) in self.live() {
                    u.notify("notifications/roots/list_changed", None);
                }
            }
            _ => {}
        }
    }

    fn client_response(&self, msg: Value) {
        let Some(gid) = msg.get("id").and_then(Value::as_i64) else {
            return;
        };
        let Some((idx, orig)) = lock(&self.st).server_reqs.remove(&gid) else {
            return;
        };
        let Some(u) = self.up(idx) else { return };
        // The client's answer (a sampling result, roots, form data) goes to this
        // server: the same secret rules as for tool arguments.
        let bad = self.gw.secrets.refused_names(idx, &msg);
        if !bad.is_empty() && self.gw.cfg.enforce {
            let server = self.server_name(idx).to_string();
            self.gw.record(
                Event::new(Surface::Mcp, "client_response", &server, Verdict::Deny)
                    .rule("secret scan")
                    .reason(&format!(
                        "the client's answer carries a secret ({}) that server {server:?} is not bound to",
                        bad.join(", ")
                    ))
                    .field("server", server.as_str()),
                true,
            );
            u.send(jsonrpc::error(
                orig,
                jsonrpc::POLICY_DENIED,
                "warden: the client's answer was withheld: it carries a secret this server is not bound to",
            ));
            return;
        }
        let mut m = msg;
        m["id"] = orig;
        u.send(m);
    }

    fn upstream_message(&self, idx: usize, msg: Value) {
        let Some(u) = self.up(idx) else { return };
        let server = self.server_name(idx).to_string();
        match jsonrpc::kind(&msg) {
            Kind::Request => {
                let id = msg.get("id").cloned().unwrap_or(Value::Null);
                let method = jsonrpc::method(&msg).to_string();
                if method == "ping" {
                    u.send(jsonrpc::result(id, json!({})));
                    return;
                }
                let cap = match method.as_str() {
                    "sampling/createMessage" => "sampling",
                    "elicitation/create" => "elicitation",
                    "roots/list" => "roots",
                    _ => "",
                };
                let mut st = lock(&self.st);
                if cap.is_empty() || st.client_caps.get(cap).is_none() {
                    drop(st);
                    u.send(jsonrpc::error(
                        id,
                        jsonrpc::METHOD_NOT_FOUND,
                        format!("method {method:?} not available"),
                    ));
                    return;
                }
                st.next_server_req += 1;
                let gid = st.next_server_req;
                st.server_reqs.insert(gid, (idx, id));
                drop(st);
                let mut m = msg;
                m["id"] = json!(gid);
                self.gw.secrets.scrub(&mut m);
                let key = self.stream_of_upstream(idx);
                self.send_for(key.as_deref(), m);
            }
            Kind::Notification => {
                let method = jsonrpc::method(&msg);
                match method {
                    "notifications/tools/list_changed" => {
                        lock(&self.st).tools.retain(|(i, _), _| *i != idx);
                        self.send(jsonrpc::notification(method, None));
                    }
                    "notifications/prompts/list_changed"
                    | "notifications/resources/list_changed" => {
                        self.send(jsonrpc::notification(method, None));
                    }
                    "notifications/resources/updated" => {
                        let mut m = msg;
                        if let Some(Value::String(u)) = m.pointer_mut("/params/uri") {
                            *u = format!("{server}+{u}");
                        }
                        self.send(m);
                    }
                    "notifications/progress" => {
                        let tok = msg.pointer("/params/progressToken").map(Value::to_string);
                        // Only for a call of this upstream in flight; on that call's stream.
                        let call = tok.and_then(|t| {
                            lock(&self.st)
                                .progress
                                .get(&t)
                                .filter(|(i, _)| *i == idx)
                                .map(|(_, key)| key.clone())
                        });
                        if let Some(key) = call {
                            let mut m = msg;
                            self.gw.secrets.scrub(&mut m);
                            self.send_for(Some(&key), m);
                        }
                    }
                    "notifications/message" => {
                        let mut m = msg;
                        let logger = m
                            .pointer("/params/logger")
                            .and_then(Value::as_str)
                            .map(|l| format!("{server}/{l}"))
                            .unwrap_or_else(|| server.clone());
                        if let Some(p) = m.get_mut("params").and_then(Value::as_object_mut) {
                            p.insert("logger".into(), Value::String(logger));
                        }
                        self.gw.secrets.scrub(&mut m);
                        let key = self.stream_of_upstream(idx);
                        self.send_for(key.as_deref(), m);
                    }
                    "notifications/cancelled" => {
                        let Some(rid) = msg.pointer("/params/requestId").cloned() else {
                            return;
                        };
                        let mut st = lock(&self.st);
                        let gid = st
                            .server_reqs
                            .iter()
                            .find(|(_, (i, orig))| *i == idx && *orig == rid)
                            .map(|(g, _)| *g);
                        if let Some(g) = gid {
                            st.server_reqs.remove(&g);
                            drop(st);
                            self.send(jsonrpc::notification(
                                "notifications/cancelled",
                                Some(json!({"requestId": g})),
                            ));
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn upstream_closed(&self, idx: usize, reason: &str) {
        let server = self.server_name(idx).to_string();
        say!("warden mcp: server {server:?} stopped: {reason}");
        self.gw.record(
            Event::new(Surface::Mcp, "upstream_exit", &server, Verdict::Deny)
                .reason(reason)
                .field("server", server.as_str()),
            false,
        );
        let was_ready = lock(&self.st).initialized;
        lock(&self.st).tools.retain(|(i, _), _| *i != idx);
        let pending: Vec<i64> = {
            let mut st = lock(&self.st);
            let g: Vec<i64> = st
                .server_reqs
                .iter()
                .filter(|(_, (i, _))| *i == idx)
                .map(|(g, _)| *g)
                .collect();
            for x in &g {
                st.server_reqs.remove(x);
            }
            g
        };
        for g in pending {
            self.send(jsonrpc::notification(
                "notifications/cancelled",
                Some(json!({"requestId": g, "reason": "server stopped"})),
            ));
        }
        if was_ready {
            self.send(jsonrpc::notification(
                "notifications/tools/list_changed",
                None,
            ));
        }
    }
}

fn err(code: i32, message: impl Into<String>) -> Value {
    json!({"code": code, "message": message.into()})
}

fn err_data(code: i32, message: impl Into<String>, data: Value) -> Value {
    json!({"code": code, "message": message.into(), "data": data})
}

async fn upstream_events(
    session: std::sync::Weak<Session>,
    mut rx: mpsc::UnboundedReceiver<(usize, UpEvent)>,
) {
    while let Some((idx, ev)) = rx.recv().await {
        let Some(s) = session.upgrade() else { break };
        match ev {
            UpEvent::Message(m) => s.upstream_message(idx, m),
            UpEvent::Closed(reason) => s.upstream_closed(idx, &reason),
            UpEvent::Reply(waiter, reply) => {
                let _ = waiter.send(reply);
            }
        }
    }
}

/// Put each server's credentials in place: placeholders into a stdio server's
/// environment, rendered headers for an HTTP server. A server naming a credential the
/// session does not have is a configuration error (fail closed).
fn resolve_credentials(cfg: &mut GatewayConfig, secrets: &Secrets) -> Result<(), GatewayError> {
    let unknown = |server: &str, credential: &str| {
        GatewayError::Credentials(format!(
            "MCP server {server:?} uses credential {credential:?}, which the session does not have"
        ))
    };
    for s in &mut cfg.servers {
        // `credential_env` stays: a launcher uses it to tell which variables hold
        // placeholders.
        for (var, credential) in s.credential_env.clone() {
            let ph = secrets
                .placeholder(&credential)
                .ok_or_else(|| unknown(&s.name, &credential))?;
            s.env.push((var, ph.to_string()));
        }
        for h in std::mem::take(&mut s.credential_headers) {
            let c = cfg
                .credentials
                .iter()
                .find(|c| c.name == h.credential)
                .ok_or_else(|| unknown(&s.name, &h.credential))?;
            let value = warden_secrets::scan::render_header(&c.name, Some(&h.format), &c.secret)
                .map_err(|e| GatewayError::Credentials(e.to_string()))?;
            s.headers
                .push((h.header, warden_secrets::Secret::new(value.to_vec())));
        }
    }
    Ok(())
}
