//! The policy path every front end shares: decide, resolve once, check every
//! address, dial a checked address, and record it all.
//!
//! Audit records (see the crate docs for the full list):
//! - a **deny** is recorded durably (`record_durable`) before the client learns of
//!   it: the 403, the NXDOMAIN, the reset all come after the fsync;
//! - an **allowed connection** gives two events sharing a `conn` id: `connect` at
//!   decision time (name, addresses, the dialled address, rule) and `close` when it
//!   ends (bytes each way, duration, error). Each is written to the log file before
//!   the proxy goes on (no crash of Warden loses it) and fsynced by the group commit
//!   within ~100 ms rather than one fsync per connection, so the proxy adds no disk
//!   latency to allowed traffic (docs/decisions/0006-audit-durability.md).

use crate::EgressError;
use crate::dns::SyntheticPool;
use crate::intercept::{Credentials, HostCreds, Interception};
use crate::io::Counters;
use crate::resolve::Resolve;
use crate::sni::Hello;
use crate::target::{Target, printable};
use arc_swap::ArcSwap;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use warden_audit::{AuditLog, Event, Stamp, Surface, Verdict};
use warden_policy::host::{PortSpec, RequestHost, canonical_host};
use warden_policy::{Intercept, Mode, Policy, Principal, Request};
use warden_secrets::scan::{Finding, Which};

/// Which front end saw the traffic; recorded as the event's `via` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// The explicit proxy (HTTP_PROXY / CONNECT).
    Proxy,
    /// The TUN device (transparent capture).
    Tun,
    /// The DNS front end.
    Dns,
}

impl Front {
    pub fn as_str(self) -> &'static str {
        match self {
            Front::Proxy => "proxy",
            Front::Tun => "tun",
            Front::Dns => "dns",
        }
    }
}

/// Who asked, through which front end.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub front: Front,
    pub client: Option<SocketAddr>,
}

/// Identity fields of every event this egress records; the policy id is added from
/// the policy in force at each decision.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub session: String,
    pub machine: String,
    pub user: String,
}

/// How an [`Egress`] is set up.
pub struct EgressConfig {
    pub identity: Identity,
    /// The principal decisions are made for.
    pub principal: Principal,
    /// Where the policy came from, named in refusal messages ("add ... in FILE").
    pub policy_source: String,
    pub audit: AuditLog,
    pub resolver: Arc<dyn Resolve>,
    /// Give up dialing one address after this long.
    pub connect_timeout: Duration,
    /// TLS interception and the session's credentials. `None`: no TLS is terminated
    /// and no credential is injected, guarded or scrubbed (every TLS connection is
    /// tunnelled end to end with its SNI checked); `[[network.http]]` rules still
    /// apply to every plain-HTTP request.
    pub interception: Option<Arc<Interception>>,
}

/// The policy in force, with the stamp its events carry.
struct Loaded {
    policy: Policy,
    stamp: Stamp,
    source: String,
    /// The credentials in force with it (`None` without interception).
    creds: Option<Arc<Credentials>>,
}

/// See [`Egress::version`]. Holds the loaded policy, so its address is not reused
/// while a token exists.
#[derive(Clone)]
pub(crate) struct PolicyVersion(Arc<Loaded>);

impl PartialEq for PolicyVersion {
    fn eq(&self, other: &PolicyVersion) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

pub(crate) struct Inner {
    state: ArcSwap<Loaded>,
    audit: AuditLog,
    resolver: Arc<dyn Resolve>,
    principal: Principal,
    identity: Identity,
    connect_timeout: Duration,
    pub(crate) pool: SyntheticPool,
    limiter: RateLimit,
    interception: Option<Arc<Interception>>,
}

/// The policy-enforcing core shared by all front ends. Cheap to clone.
///
/// The policy sits behind an [`ArcSwap`]: a decision loads it without a lock, and
/// [`Egress::reload`] swaps it for new connections while connections already open
/// keep the decision they were made under.
#[derive(Clone)]
pub struct Egress {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("policy", &self.inner.state.load().stamp.policy)
            .finish_non_exhaustive()
    }
}

/// What the policy said, flattened for events and messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruling {
    pub allow: bool,
    pub rule: String,
    pub reason: String,
}

impl Ruling {
    fn from_decision(d: warden_policy::Decision) -> Ruling {
        Ruling {
            allow: d.allow,
            rule: d.rule.to_string(),
            reason: d.reason,
        }
    }

    fn proxy(reason: &str) -> Ruling {
        Ruling {
            allow: false,
            rule: "proxy".into(),
            reason: reason.into(),
        }
    }
}

/// Why a connection or request was refused: an HTTP status for the explicit proxy
/// and a message for the client (never a secret, never internal detail beyond the
/// rule that decided).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn internal(what: &str) -> Refusal {
        Refusal {
            status: 502,
            message: format!("warden: {what}\n"),
        }
    }
}

/// An allowed, dialled upstream connection and its audit guard.
#[derive(Debug)]
pub struct Upstream {
    pub stream: TcpStream,
    pub guard: ConnGuard,
}

/// Records the `close` event of an allowed connection when dropped: bytes each way
/// (from the shared [`Counters`]), duration and any error noted with
/// [`ConnGuard::fail`].
#[derive(Debug)]
pub struct ConnGuard {
    egress: Egress,
    pub conn: String,
    pub target: Target,
    pub address: SocketAddr,
    pub ruling: Ruling,
    pub enforced: bool,
    pub counters: Arc<Counters>,
    stamp: Stamp,
    pub(crate) ctx: Ctx,
    started: Instant,
    error: Option<String>,
}

impl ConnGuard {
    /// Note why the connection ended abnormally (recorded in the close event).
    pub fn fail(&mut self, why: impl Into<String>) {
        self.error = Some(why.into());
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let (up, down) = self.counters.get();
        let verdict = if self.ruling.allow {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        let mut ev = Event::new(Surface::Network, "close", &self.target.to_string(), verdict)
            .rule(&self.ruling.rule)
            .reason(&self.ruling.reason)
            .enforced(self.enforced)
            .field("conn", self.conn.as_str())
            .field("address", self.address.to_string())
            .field("bytes_up", up)
            .field("bytes_down", down)
            .field(
                "duration_ms",
                u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            );
        ev = with_ctx(ev, &self.target, &self.ctx);
        if let Some(e) = &self.error {
            ev = ev.field("error", e.as_str());
        }
        if let Err(e) = self.egress.inner.audit.record(&self.stamp, ev) {
            tracing::error!("could not record the end of connection {}: {e}", self.conn);
        }
    }
}

fn with_ctx(ev: Event, target: &Target, ctx: &Ctx) -> Event {
    let mut ev = ev
        .field("via", ctx.front.as_str())
        .field("host", target.host_str())
        .field("port", target.port);
    if let Some(c) = ctx.client {
        ev = ev.field("client", c.to_string());
    }
    ev
}

impl Egress {
    /// An egress enforcing `policy`.
    pub fn new(policy: Policy, config: EgressConfig) -> Egress {
        let creds = config
            .interception
            .as_ref()
            .map(|i| i.credentials().clone());
        let loaded = load(policy, &config.identity, config.policy_source, creds);
        Egress {
            inner: Arc::new(Inner {
                state: ArcSwap::from_pointee(loaded),
                audit: config.audit,
                resolver: config.resolver,
                principal: config.principal,
                identity: config.identity,
                connect_timeout: config.connect_timeout,
                pool: SyntheticPool::default(),
                limiter: RateLimit::default(),
                interception: config.interception,
            }),
        }
    }

    /// Make `policy` the one new decisions follow, with the credentials in force
    /// (whose bindings it can narrow through `use_credential` decisions). Connections
    /// already open keep going under the decision they were made with. Records a
    /// `session`-surface `policy_reload` event.
    pub fn reload(&self, policy: Policy, source: String) {
        let creds = self.inner.state.load().creds.clone();
        self.put_in_force(load(policy, &self.inner.identity, source, creds), &[]);
    }

    /// [`Egress::reload`] with new credentials ([`Credentials::reloaded`]): the
    /// policy and the credentials go into force together, for new connections.
    /// `problems` (credentials that could not be loaded) are recorded in the
    /// `policy_reload` event. Without interception the credentials are ignored.
    pub fn reload_with_credentials(
        &self,
        policy: Policy,
        source: String,
        credentials: Credentials,
        problems: &[String],
    ) {
        let creds = self
            .inner
            .interception
            .as_ref()
            .map(|_| Arc::new(credentials));
        self.put_in_force(load(policy, &self.inner.identity, source, creds), problems);
    }

    /// The credentials in force (`None` without interception).
    pub fn credentials(&self) -> Option<Arc<Credentials>> {
        self.inner.state.load().creds.clone()
    }

    fn put_in_force(&self, loaded: Loaded, problems: &[String]) {
        let mut ev = Event::new(
            Surface::Session,
            "policy_reload",
            &loaded.source,
            Verdict::Allow,
        )
        .reason("policy file changed");
        if !problems.is_empty() {
            ev = ev.field("credentials_not_loaded", problems.to_vec());
        }
        let stamp = loaded.stamp.clone();
        self.inner.state.store(Arc::new(loaded));
        if let Err(e) = self.inner.audit.record(&stamp, ev) {
            tracing::error!("could not record the policy reload: {e}");
        }
    }

    /// The policy in force as a version token: two tokens are equal only when no
    /// reload happened between them. A kept upstream connection is reused only under
    /// the version it was decided under.
    pub(crate) fn version(&self) -> PolicyVersion {
        PolicyVersion(self.inner.state.load_full())
    }

    /// `request` decided for this egress's principal by the policy in force (what other
    /// surfaces of the same session, e.g. its MCP gateway, decide with: they follow the
    /// same reloads).
    pub fn decide(&self, request: &Request<'_>) -> warden_policy::Decision {
        self.inner
            .state
            .load()
            .policy
            .decide(&self.inner.principal, request)
    }

    /// `name@digest` of the policy in force.
    pub fn policy_id(&self) -> String {
        self.inner.state.load().stamp.policy.clone()
    }

    /// The audit log events go to.
    pub fn audit(&self) -> &AuditLog {
        &self.inner.audit
    }

    fn connect_ruling(&self, l: &Loaded, host: &str, port: u16) -> Ruling {
        Ruling::from_decision(
            l.policy
                .decide(&self.inner.principal, &Request::Connect { host, port }),
        )
    }

    /// Record a deny. Enforcing: durably, then `Err` with the client's refusal.
    /// Audit mode: recorded with `enforced: false`, then `Ok` (go on).
    async fn deny(
        &self,
        l: &Loaded,
        action: &str,
        target_text: &str,
        ruling: &Ruling,
        help: &str,
        fields: Vec<(&'static str, Value)>,
    ) -> Result<(), Refusal> {
        let enforce = l.policy.mode() == Mode::Enforce;
        let mut ev = Event::new(Surface::Network, action, target_text, Verdict::Deny)
            .rule(&ruling.rule)
            .reason(&ruling.reason)
            .enforced(enforce);
        for (k, v) in fields {
            ev = ev.field(k, v);
        }
        if enforce {
            self.record_durable(&l.stamp, ev).await?;
            let rule = if ruling.rule.is_empty() {
                "proxy"
            } else {
                &ruling.rule
            };
            Err(Refusal {
                status: 403,
                message: format!(
                    "warden: {action} {target_text} denied by {rule}: {}\n{help}\n",
                    ruling.reason
                ),
            })
        } else {
            self.record(&l.stamp, ev)?;
            Ok(())
        }
    }

    /// Record an event and wait (without blocking a thread) for its fsync. A failure
    /// refuses the connection (fail closed).
    async fn record_durable(&self, stamp: &Stamp, ev: Event) -> Result<(), Refusal> {
        let written = match self.inner.audit.record(stamp, ev) {
            Ok(ticket) => ticket.durable().await,
            Err(e) => Err(e),
        };
        written.map_err(|e| {
            tracing::error!("audit log failed; refusing: {e}");
            Refusal::internal("the audit log is failing; refusing")
        })
    }

    fn record(&self, stamp: &Stamp, ev: Event) -> Result<(), Refusal> {
        match self.inner.audit.record(stamp, ev) {
            Ok(_ticket) => Ok(()),
            Err(e) => {
                tracing::error!("audit log failed; refusing: {e}");
                Err(Refusal::internal("the audit log is failing; refusing"))
            }
        }
    }

    fn help_allow(l: &Loaded, ruling: &Ruling, entry: &str) -> String {
        if ruling.rule == "default deny" || ruling.rule.is_empty() {
            format!(
                "to allow it, add \"{entry}\" to [network] allow in {}",
                l.source
            )
        } else {
            format!("see the rule at {} ({})", ruling.rule, l.source)
        }
    }

    /// The decision path for a connection to `target`: policy, resolve once, check
    /// every address, dial one of the checked addresses. A refusal has been recorded
    /// (durably when enforced) by the time this returns.
    pub async fn open(&self, target: &Target, ctx: Ctx) -> Result<Upstream, Refusal> {
        let l = self.inner.state.load_full();
        let text = target.to_string();
        let ruling = self.connect_ruling(&l, &target.host_str(), target.port);
        let enforced = l.policy.mode() == Mode::Enforce;
        if !ruling.allow {
            let help = Self::help_allow(&l, &ruling, &text);
            let fields = ctx_fields(target, &ctx);
            self.deny(&l, "connect", &text, &ruling, &help, fields)
                .await?;
        }
        let conn = warden_audit::new_id();

        // Resolve once; every address is checked; only checked addresses are dialled.
        let addrs = match &target.host {
            RequestHost::Ip(ip) => vec![*ip],
            RequestHost::Name(name) => match self.inner.resolver.resolve(name, target.port).await {
                Ok(a) if !a.is_empty() => a,
                Ok(_) | Err(_) => {
                    let ev = with_ctx(
                        Event::new(Surface::Network, "connect", &text, verdict(&ruling))
                            .rule(&ruling.rule)
                            .reason(&ruling.reason)
                            .enforced(enforced)
                            .field("conn", conn.as_str())
                            .field("error", "name does not resolve"),
                        target,
                        &ctx,
                    );
                    self.record(&l.stamp, ev)?;
                    return Err(Refusal {
                        status: 502,
                        message: format!("warden: {} does not resolve\n", printable(name)),
                    });
                }
            },
        };
        let addrs: Vec<IpAddr> = addrs.into_iter().map(|ip| ip.to_canonical()).collect();
        let addr_list: Vec<Value> = addrs.iter().map(|a| Value::from(a.to_string())).collect();
        for ip in &addrs {
            if let Some(d) = l.policy.check_address(*ip, target.port) {
                let r = Ruling::from_decision(d);
                if r.allow {
                    continue;
                }
                let entry = Target::ip(*ip, target.port).to_string();
                let help = format!(
                    "{} resolves to {ip}; to allow that address, add \"{entry}\" (or its CIDR) to [network] allow in {}",
                    text, l.source
                );
                let mut fields = ctx_fields(target, &ctx);
                fields.push(("address", Value::from(ip.to_string())));
                fields.push(("addresses", Value::from(addr_list.clone())));
                self.deny(&l, "connect", &text, &r, &help, fields).await?;
            }
        }

        let mut last_err = None;
        let mut dialled = None;
        for ip in &addrs {
            let sa = SocketAddr::new(*ip, target.port);
            match tokio::time::timeout(self.inner.connect_timeout, TcpStream::connect(sa)).await {
                Ok(Ok(s)) => {
                    dialled = Some((s, sa));
                    break;
                }
                Ok(Err(e)) => last_err = Some(e.to_string()),
                Err(_) => last_err = Some("connect timed out".into()),
            }
        }
        let ev = Event::new(Surface::Network, "connect", &text, verdict(&ruling))
            .rule(&ruling.rule)
            .reason(&ruling.reason)
            .enforced(enforced)
            .field("conn", conn.as_str())
            .field("addresses", Value::from(addr_list));
        let ev = with_ctx(ev, target, &ctx);
        let Some((stream, address)) = dialled else {
            let why = last_err.unwrap_or_else(|| "no address".into());
            self.record(&l.stamp, ev.field("error", why.as_str()))?;
            return Err(Refusal {
                status: 502,
                message: format!("warden: could not connect to {text}: {why}\n"),
            });
        };
        self.record(&l.stamp, ev.field("address", address.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(Upstream {
            stream,
            guard: ConnGuard {
                egress: self.clone(),
                conn,
                target: target.clone(),
                address,
                ruling,
                enforced,
                counters: Arc::new(Counters::default()),
                stamp: l.stamp.clone(),
                ctx,
                started: Instant::now(),
                error: None,
            },
        })
    }

    /// The domain-fronting check on a tunnel's first bytes. For a name, a TLS
    /// ClientHello's SNI, when present, must be that name. For an address, an SNI
    /// must itself be a name the policy allows on that port (an allowed address must
    /// not front for an arbitrary name). A ClientHello that does not parse one
    /// unambiguous way is denied.
    pub async fn check_hello(&self, guard: &ConnGuard, hello: &Hello) -> Result<(), Refusal> {
        let l = self.inner.state.load_full();
        let target = &guard.target;
        let text = target.to_string();
        let (ruling, sni_text) = match hello {
            Hello::NotTls | Hello::NeedMore => return Ok(()),
            Hello::ClientHello { sni: None, .. } => return Ok(()),
            Hello::Malformed(why) => (
                Ruling::proxy(&format!("unparseable TLS ClientHello: {why}")),
                String::new(),
            ),
            Hello::ClientHello { sni: Some(sni), .. } => {
                let shown = printable(sni);
                match canonical_host(sni) {
                    Err(e) => (Ruling::proxy(&format!("invalid SNI: {e}")), shown),
                    Ok(canon) => match &target.host {
                        RequestHost::Name(n) if *n == canon => return Ok(()),
                        RequestHost::Name(n) => (
                            Ruling::proxy(&format!(
                                "TLS SNI {shown} does not match the destination {n} (domain fronting)"
                            )),
                            shown,
                        ),
                        RequestHost::Ip(_) => {
                            let r = self.connect_ruling(&l, &canon, target.port);
                            if r.allow {
                                return Ok(());
                            }
                            (
                                Ruling {
                                    allow: false,
                                    rule: r.rule,
                                    reason: format!(
                                        "TLS SNI {shown} sent to an address is not an allowed name: {}",
                                        r.reason
                                    ),
                                },
                                shown,
                            )
                        }
                    },
                }
            }
        };
        let mut fields = ctx_fields(target, &guard.ctx);
        fields.push(("conn", Value::from(guard.conn.as_str())));
        fields.push(("sni", Value::from(sni_text)));
        let help = "the TLS server name must be the host the connection was made to".to_string();
        self.deny(&l, "tls", &text, &ruling, &help, fields).await
    }

    /// `[[network.http]]` method and path rules for a plain-HTTP request.
    /// `url` is the absolute URL (`http://host:port/path?query`); the audit event
    /// records it without the query, which may carry tokens.
    pub async fn check_http(
        &self,
        method: &str,
        url: &str,
        target: &Target,
        ctx: Ctx,
        conn: &str,
    ) -> Result<(), Refusal> {
        let l = self.inner.state.load_full();
        let ruling = Ruling::from_decision(
            l.policy
                .decide(&self.inner.principal, &Request::Http { method, url }),
        );
        let shown = url.split(['?', '#']).next().unwrap_or(url);
        let shown = printable(shown);
        if ruling.allow {
            let ev = Event::new(Surface::Network, "http", &shown, Verdict::Allow)
                .rule(&ruling.rule)
                .reason(&ruling.reason)
                .field("method", method)
                .field("conn", conn);
            return self.record(&l.stamp, with_ctx(ev, target, &ctx));
        }
        let help = if ruling.rule == "default deny" {
            format!(
                "to allow it, add a [[network.http]] rule for {} with method {method} in {}",
                target.host_str(),
                l.source
            )
        } else {
            format!("see the rule at {} ({})", ruling.rule, l.source)
        };
        let mut fields = ctx_fields(target, &ctx);
        fields.push(("method", Value::from(method)));
        fields.push(("conn", Value::from(conn)));
        self.deny(
            &l,
            "http",
            &format!("{method} {shown}"),
            &ruling,
            &help,
            fields,
        )
        .await
    }

    /// Record a request the proxy rejects as malformed or ambiguous (a Host header
    /// that disagrees with the URI, a target with userinfo). Not a policy question,
    /// so it is refused in audit mode too.
    pub async fn reject(&self, action: &str, target_text: &str, reason: &str, ctx: Ctx) -> Refusal {
        let l = self.inner.state.load_full();
        let mut ev = Event::new(
            Surface::Network,
            action,
            &printable(target_text),
            Verdict::Deny,
        )
        .rule("proxy")
        .reason(reason)
        .field("via", ctx.front.as_str());
        if let Some(c) = ctx.client {
            ev = ev.field("client", c.to_string());
        }
        if let Err(r) = self.record_durable(&l.stamp, ev).await {
            return r;
        }
        Refusal {
            status: 400,
            message: format!("warden: {reason}\n"),
        }
    }

    /// Could any rule allow a connection to `name` on some port? Decides the DNS
    /// front end's answer: a name no rule could allow gets NXDOMAIN.
    ///
    /// The candidate ports are taken from every `[network] allow` entry and
    /// `[[network.http]]` rule whose host pattern covers the name (80 and 443 for
    /// entries without a port, 443 and 80 for `:*`); the name is allowed if the
    /// policy's connect decision allows any of them, so `deny` entries and Cedar
    /// `forbid`s are honoured exactly as for a connection.
    pub async fn dns_decide(&self, name: &str, qtype: &str, ctx: Ctx) -> DnsRuling {
        let l = self.inner.state.load_full();
        let host = RequestHost::Name(name.to_string());
        let mut ports: Vec<u16> = Vec::new();
        let doc = l.policy.doc();
        let patterns = doc
            .network
            .allow
            .iter()
            .map(|e| &e.pattern)
            .chain(doc.network.http.iter().map(|r| &r.host));
        for p in patterns {
            let candidates = match p.ports {
                PortSpec::Web | PortSpec::Any => [443, 80],
                PortSpec::One(n) => [n, n],
            };
            for port in candidates {
                if p.matches_host(&host, port) && !ports.contains(&port) {
                    ports.push(port);
                }
            }
        }
        let mut ruling = None;
        for &port in &ports {
            let r = self.connect_ruling(&l, name, port);
            if r.allow {
                ruling = Some(r);
                break;
            }
            ruling.get_or_insert(r);
        }
        let ruling = ruling.unwrap_or_else(|| self.connect_ruling(&l, name, 443));
        let enforced = l.policy.mode() == Mode::Enforce;
        let mut ev = Event::new(Surface::Network, "dns", name, verdict(&ruling))
            .rule(&ruling.rule)
            .reason(&ruling.reason)
            .enforced(enforced)
            .field("qtype", qtype)
            .field("via", ctx.front.as_str());
        if let Some(c) = ctx.client {
            ev = ev.field("client", c.to_string());
        }
        let recorded = if !ruling.allow && enforced {
            self.record_durable(&l.stamp, ev).await
        } else {
            self.record(&l.stamp, ev)
        };
        match recorded {
            Err(_) => DnsRuling::Fail,
            Ok(()) if ruling.allow || !enforced => DnsRuling::Answer,
            Ok(()) => DnsRuling::NxDomain,
        }
    }

    /// Record a dropped datagram or packet (UDP other than DNS, ICMP, anything not
    /// TCP). Rate-limited: at most [`RateLimit::PER_SECOND`] events a second; the
    /// next event carries how many were not recorded.
    pub fn record_dropped(&self, action: &str, src: SocketAddr, dst: SocketAddr, detail: &str) {
        let Some(suppressed) = self.inner.limiter.admit() else {
            return;
        };
        let l = self.inner.state.load();
        let target = Target::ip(dst.ip(), dst.port());
        let mut ev = Event::new(Surface::Network, action, &target.to_string(), Verdict::Deny)
            .rule("proxy")
            .reason(detail)
            .field("via", Front::Tun.as_str())
            .field("client", src.to_string());
        if suppressed > 0 {
            ev = ev.field("suppressed", suppressed);
        }
        if let Err(e) = self.inner.audit.record(&l.stamp, ev) {
            tracing::error!("could not record a dropped packet: {e}");
        }
    }

    /// Whether the policy in force blocks (`mode = "enforce"`) rather than records.
    pub(crate) fn enforcing(&self) -> bool {
        self.inner.state.load().policy.mode() == Mode::Enforce
    }

    /// The session's interception setup, if any.
    pub(crate) fn interception(&self) -> Option<&Arc<Interception>> {
        self.inner.interception.as_ref()
    }

    /// Does the policy restrict HTTP requests to `host` with `[[network.http]]` rules?
    /// (Those apply whatever the port, as the policy's HTTP decision does.)
    pub(crate) fn http_restricted(&self, host: &RequestHost) -> bool {
        let l = self.inner.state.load();
        l.policy
            .doc()
            .network
            .http
            .iter()
            .any(|r| r.host.kind.matches_host(host))
    }

    /// Should a TLS connection to `host` be terminated? Only with interception set
    /// up, and then: `[tls] intercept = "all"`, or a credential bound to the host, or
    /// `[[network.http]]` rules for it (`intercept = "needed"`).
    pub(crate) fn wants_interception(&self, host: &RequestHost) -> bool {
        let l = self.inner.state.load();
        let Some(creds) = &l.creds else {
            return false;
        };
        l.policy.doc().tls.intercept == Intercept::All
            || self.http_restricted(host)
            || creds.any_bound(&l.policy, &self.inner.principal, host)
    }

    /// The credential guard and injector for requests to `host`; `None` without
    /// interception. A failure to build them refuses (fail closed).
    pub(crate) fn host_creds(&self, host: &RequestHost) -> Result<Option<Arc<HostCreds>>, Refusal> {
        let l = self.inner.state.load();
        let Some(creds) = &l.creds else {
            return Ok(None);
        };
        creds
            .for_host(&l.policy, &self.inner.principal, host)
            .map(Some)
            .map_err(|e| {
                tracing::error!("could not build the credential guard for {host}: {e}");
                Refusal::internal("could not build the credential guard; refusing")
            })
    }

    /// The rule a credential's events cite: its `[[credentials]]` entry in the policy,
    /// or the preset that bound it.
    fn credential_rule(l: &Loaded, name: &str) -> String {
        match l.policy.doc().credentials.iter().find(|c| c.name == name) {
            Some(c) => format!("{}:{}", l.policy.origin(), c.line),
            None => "credentials preset".to_string(),
        }
    }

    /// A request carries a value of a credential not bound to its host. Recorded on
    /// the `credential` surface (action `exfiltration`; the credential's name, the
    /// host, the form, where it was found; never the value). Enforcing: durably, then
    /// `Err` with the 403. Audit mode: recorded with `enforced: false`, then `Ok`.
    pub(crate) async fn exfiltration(
        &self,
        finding: &Finding,
        req: &ReqInfo<'_>,
        location: &str,
    ) -> Result<(), Refusal> {
        let l = self.inner.state.load_full();
        let name: &str = &finding.credential;
        let rule = Self::credential_rule(&l, name);
        let hosts = l
            .creds
            .as_ref()
            .map(|c| c.hosts_of(name))
            .unwrap_or_default();
        let which = match finding.which {
            Which::Real => "real value",
            Which::Placeholder => "placeholder",
        };
        let host = req.origin.host_str();
        let allowed = if hosts.is_empty() {
            "it is bound to no host (the policy in force no longer binds it)".to_string()
        } else {
            format!("it may only be sent to: {}", hosts.join(", "))
        };
        let reason = format!(
            "{which} of credential `{name}` ({} form) in the {location} of a request to {host}; {allowed}",
            finding.form.as_str(),
        );
        let enforce = l.policy.mode() == Mode::Enforce;
        let ev = Event::new(Surface::Credential, "exfiltration", name, Verdict::Deny)
            .rule(&rule)
            .reason(&reason)
            .enforced(enforce)
            .field("credential", name)
            .field("form", finding.form.as_str())
            .field(
                "which",
                match finding.which {
                    Which::Real => "real",
                    Which::Placeholder => "placeholder",
                },
            )
            .field("location", location)
            .field("method", req.method)
            .field("url", printable(req.url_shown))
            .field("conn", req.conn);
        let ev = with_ctx(ev, req.origin, &req.ctx);
        if !enforce {
            return self.record(&l.stamp, ev);
        }
        self.record_durable(&l.stamp, ev).await?;
        let fix = if l.policy.doc().credentials.iter().any(|c| c.name == name) {
            format!(
                "if {host} should receive it, add \"{host}\" to hosts of the [[credentials]] entry `{name}` in {}; otherwise take it out of the request",
                l.source
            )
        } else {
            format!(
                "`{name}` is bound by the preset to {}; take it out of the request",
                hosts.join(", ")
            )
        };
        Err(Refusal {
            status: 403,
            message: format!(
                "warden: {} {} refused by {rule}: {reason}\n{fix}\n",
                req.method,
                printable(req.url_shown)
            ),
        })
    }

    /// Record a credential put on the wire (`inject`) or taken back out of a response
    /// (`scrub`). Through the group commit, like other allows.
    pub(crate) fn credential_used(
        &self,
        action: &str,
        name: &str,
        req: &ReqInfo<'_>,
        location: &str,
    ) {
        let l = self.inner.state.load();
        let rule = Self::credential_rule(&l, name);
        let reason = match action {
            "inject" => format!("credential `{name}` is bound to {}", req.origin.host_str()),
            _ => format!(
                "the real value of credential `{name}` came back from {} and was replaced by its placeholder",
                req.origin.host_str()
            ),
        };
        let ev = Event::new(Surface::Credential, action, name, Verdict::Allow)
            .rule(&rule)
            .reason(&reason)
            .enforced(l.policy.mode() == Mode::Enforce)
            .field("credential", name)
            .field("location", location)
            .field("method", req.method)
            .field("url", printable(req.url_shown))
            .field("conn", req.conn);
        let ev = with_ctx(ev, req.origin, &req.ctx);
        if let Err(e) = self.inner.audit.record(&l.stamp, ev) {
            tracing::error!("could not record a credential {action}: {e}");
        }
    }

    /// The upstream of an intercepted connection failed TLS (certificate not trusted,
    /// wrong name, handshake error). Recorded durably (`tls`, deny, rule `proxy`)
    /// before the client gets its 502.
    pub(crate) async fn upstream_tls_failed(&self, guard: &ConnGuard, why: &str) -> Refusal {
        let l = self.inner.state.load_full();
        let text = guard.target.to_string();
        let reason = format!("upstream TLS failed: {why}");
        let ev = Event::new(Surface::Network, "tls", &text, Verdict::Deny)
            .rule("proxy")
            .reason(&reason)
            .field("conn", guard.conn.as_str())
            .field("upstream", true);
        let ev = with_ctx(ev, &guard.target, &guard.ctx);
        if let Err(r) = self.record_durable(&l.stamp, ev).await {
            return r;
        }
        Refusal {
            status: 502,
            message: format!(
                "warden: {reason} ({text}); if the server uses a private CA, add it to [tls] extra_roots in {}\n",
                l.source
            ),
        }
    }
}

/// One request as the credential events describe it.
pub(crate) struct ReqInfo<'a> {
    pub origin: &'a Target,
    pub ctx: Ctx,
    pub method: &'a str,
    /// The URL without its query.
    pub url_shown: &'a str,
    pub conn: &'a str,
}

/// The DNS front end's answer for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsRuling {
    /// Answer with synthetic addresses.
    Answer,
    /// NXDOMAIN: no rule could allow the name.
    NxDomain,
    /// The decision could not be recorded: SERVFAIL.
    Fail,
}

fn verdict(r: &Ruling) -> Verdict {
    if r.allow {
        Verdict::Allow
    } else {
        Verdict::Deny
    }
}

fn ctx_fields(target: &Target, ctx: &Ctx) -> Vec<(&'static str, Value)> {
    let mut v = vec![
        ("via", Value::from(ctx.front.as_str())),
        ("host", Value::from(target.host_str())),
        ("port", Value::from(target.port)),
    ];
    if let Some(c) = ctx.client {
        v.push(("client", Value::from(c.to_string())));
    }
    v
}

fn load(
    policy: Policy,
    identity: &Identity,
    source: String,
    creds: Option<Arc<Credentials>>,
) -> Loaded {
    let stamp = Stamp {
        session: identity.session.clone(),
        machine: identity.machine.clone(),
        user: identity.user.clone(),
        policy: policy.id().to_string(),
    };
    Loaded {
        policy,
        stamp,
        source,
        creds,
    }
}

/// A lock-free rate limit for drop records: a one-second window and a counter.
#[derive(Debug, Default)]
pub struct RateLimit {
    window: AtomicU64,
    count: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub const PER_SECOND: u64 = 20;

    /// `Some(n)` to record now (`n` events were suppressed since the last one),
    /// `None` to skip.
    fn admit(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.window.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < Self::PER_SECOND {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl From<EgressError> for Refusal {
    fn from(e: EgressError) -> Refusal {
        Refusal::internal(&e.to_string())
    }
}
