//! What TLS interception and credential handling need for one session: the session
//! CA, the upstream trust, and the session's credentials (real values, placeholders,
//! bound hosts, `header`/`format`), with the per-host guards and injectors derived
//! from them.
//!
//! Built once when a session starts ([`Interception::new`], or
//! [`Interception::from_policy`] which also loads the values) and handed to the
//! egress in [`crate::EgressConfig::interception`]. The CA and the trust stay for the
//! session; the [`Credentials`] in force are paired with the policy in force and move
//! with it on a reload ([`Credentials::reloaded`],
//! [`crate::Egress::reload_with_credentials`]).

use hyper::header::HeaderName;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use warden_policy::CredentialSource;
use warden_policy::host::{HostPattern, RequestHost};
use warden_policy::{Policy, Principal, Request};
use warden_secrets::scan::{Credential, Detector, Rewrite, SecretSet};
use warden_secrets::{
    LeaseId, LoadContext, Loaded, Placeholder, Secret, Source, SourceError, Zeroizing,
};
use warden_tls::{SessionCa, TlsError, UpstreamTrust};

/// One credential of the session, loaded.
pub struct SessionCredential {
    /// `[[credentials]] name`.
    pub name: String,
    /// Where the value came from; `None` when the caller loaded it some other way.
    pub source: Option<Source>,
    /// The real value (only ever sent to `hosts`, over TLS).
    pub secret: Secret,
    /// What the session holds instead.
    pub placeholder: Placeholder,
    /// Host patterns as written in the policy (`api.github.com`, `*.example.com`).
    pub hosts: Vec<String>,
    /// The session variable that holds the placeholder.
    pub env: Option<String>,
    /// A header the proxy sets on every request to `hosts`.
    pub header: Option<String>,
    /// The header's value, `{secret}` standing for the real value (default `{secret}`).
    pub format: Option<String>,
    /// `inject_body = true`: the placeholder is replaced in request bodies to `hosts`
    /// too (over intercepted TLS only), not just in header values and the URL.
    pub inject_body: bool,
}

impl fmt::Debug for SessionCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCredential")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .field("env", &self.env)
            .field("header", &self.header)
            .field("inject_body", &self.inject_body)
            .finish_non_exhaustive()
    }
}

/// Why an [`Interception`] could not be set up. Names the credential and what to fix;
/// never a value.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    /// the session CA or the upstream trust could not be built
    #[error("TLS interception: {0}")]
    Tls(#[from] TlsError),
    /// a credential's values could not be prepared for scanning
    #[error("{0}")]
    Scan(#[from] warden_secrets::ScanError),
    /// a credential could not be loaded from its source
    #[error("{0}")]
    Source(#[from] SourceError),
    /// a `hosts` entry is not a host pattern
    #[error("credential {credential:?}: hosts entry {host:?}: {reason}")]
    Host {
        credential: String,
        host: String,
        reason: String,
    },
    /// `header` is not a valid header name
    #[error("credential {credential:?}: header {header:?} is not a valid HTTP header name")]
    Header { credential: String, header: String },
    /// a placeholder handed over by the caller cannot stand for this credential
    #[error("credential {name:?}: the given placeholder cannot be used: {why}")]
    Placeholder { name: String, why: String },
}

/// A credential's facts, next to the [`SecretSet`].
struct Meta {
    name: String,
    /// Where the value came from (`None`: handed over by the caller). A reload naming
    /// the same source keeps the value instead of loading it again.
    source: Option<Source>,
    /// The real value (kept for reloads: a rotated placeholder must stand for it).
    secret: Secret,
    hosts: Vec<HostPattern>,
    hosts_written: Vec<String>,
    env: Option<String>,
    placeholder: Placeholder,
    /// `header` and the rendered `format` (holds the real value; zeroized on drop).
    header: Option<Arc<InjectedHeader>>,
    /// Placeholders in request bodies are replaced too.
    inject_body: bool,
    /// The placeholder has the value's length and escaping classes ([`same_shape`]).
    stable: bool,
}

/// A header the proxy sets on requests to a credential's hosts.
pub(crate) struct InjectedHeader {
    pub name: HeaderName,
    /// The rendered `format`, real value included (zeroized on drop).
    pub value: Zeroizing<Vec<u8>>,
    /// The credential's name.
    pub credential: Arc<str>,
}

/// The session's TLS authority and upstream trust, and the credentials it started
/// with. Share it as `Arc<Interception>`.
///
/// The credentials in force can change while the session runs
/// ([`Credentials::reloaded`], [`crate::Egress::reload_with_credentials`]); the CA and the
/// trust cannot.
pub struct Interception {
    ca: Arc<SessionCa>,
    trust: Arc<UpstreamTrust>,
    credentials: Arc<Credentials>,
}

impl fmt::Debug for Interception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interception")
            .field("ca", &self.ca)
            .field("trust", &self.trust)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// A set of loaded credentials: values, placeholders, bindings, and the guards and
/// injectors derived from them per host. Paired with the policy in force (a reload
/// swaps both at once), so every decision sees one consistent pair.
pub struct Credentials {
    set: SecretSet,
    meta: Vec<Meta>,
    scrub: Arc<Rewrite>,
    /// Every scrub keeps every encoded form's length (so `Content-Length` stays right).
    length_stable: bool,
    cache: Mutex<HashMap<(String, String), Arc<HostCreds>>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.meta.iter().map(|m| &m.name))
            .finish()
    }
}

/// What the proxy does with credentials on requests to one host.
pub(crate) struct HostCreds {
    /// Every value (real and placeholder, every form) of the credentials NOT bound to
    /// the host: any of them in a request is exfiltration.
    pub guard: Arc<Detector>,
    /// Placeholder → real value for the credentials bound to the host.
    pub injector: Arc<Rewrite>,
    /// `header`s to set.
    pub headers: Vec<Arc<InjectedHeader>>,
    /// Placeholder → real value in request bodies, for the bound credentials that opt
    /// in with `inject_body = true`; `None` when none does.
    pub body_injector: Option<Arc<Rewrite>>,
    /// Injecting into a body keeps its length (every opted-in credential's placeholder
    /// has its value's shape), so `Content-Length` stays right.
    pub body_stable: bool,
    /// Any credential is bound to this host.
    pub any_bound: bool,
    /// Every real value → its placeholder, for answers (all the credentials).
    pub scrub: Arc<Rewrite>,
    /// `scrub` keeps every encoded form's length.
    pub scrub_stable: bool,
}

/// How many (policy, host) entries the derived-guard cache keeps before starting over.
const CACHE_LIMIT: usize = 512;

/// A credential the policy asks for, before its value is loaded.
struct Wanted {
    name: String,
    source: Source,
    /// `optional = true`: an unset variable leaves the credential out.
    optional: bool,
    hosts: Vec<String>,
    env: Option<String>,
    header: Option<String>,
    format: Option<String>,
    inject_body: bool,
}

impl Wanted {
    fn with(self, secret: Secret, placeholder: Placeholder) -> SessionCredential {
        SessionCredential {
            name: self.name,
            source: Some(self.source),
            secret,
            placeholder,
            hosts: self.hosts,
            env: self.env,
            header: self.header,
            format: self.format,
            inject_body: self.inject_body,
        }
    }
}

/// Every `[[credentials]]` entry of `policy`.
fn wanted(policy: &Policy) -> Vec<Wanted> {
    policy
        .doc()
        .credentials
        .iter()
        .map(|c| Wanted {
            name: c.name.clone(),
            source: source_of(&c.source),
            optional: c.optional,
            hosts: c.hosts.iter().map(ToString::to_string).collect(),
            env: c.env.clone(),
            header: c.header.clone(),
            format: c.format.clone(),
            inject_body: c.inject_body,
        })
        .collect()
}

impl Wanted {
    fn load(&self, ctx: &LoadContext<'_>) -> Result<Option<Loaded>, SourceError> {
        load_declared(&self.name, &self.source, self.optional, ctx)
    }
}

/// Where a `[[credentials]]` entry's value comes from, as [`warden_secrets::load`]
/// takes it.
pub fn source_of(source: &CredentialSource) -> Source {
    match source {
        CredentialSource::Env(v) => Source::Env(v.clone()),
        CredentialSource::File(p) => Source::File(p.clone()),
        CredentialSource::Command(cmd) => Source::Command(cmd.clone()),
        CredentialSource::Vault(n) => Source::Vault(n.clone()),
    }
}

/// A declared credential's value from its source: `Ok(None)` when it is `optional`
/// and its variable is not set (whoever asked goes without it). `optional` is the
/// policy's `optional = true`, unless the caller needs the credential regardless.
pub fn load_declared(
    name: &str,
    source: &Source,
    optional: bool,
    ctx: &LoadContext<'_>,
) -> Result<Option<Loaded>, SourceError> {
    match warden_secrets::load(name, source, ctx) {
        Ok(loaded) => Ok(Some(loaded)),
        Err(SourceError::EnvMissing { .. }) if optional => Ok(None),
        Err(e) => Err(e),
    }
}

/// Credentials after a reload, and what could not be loaded.
pub struct Reloaded {
    pub credentials: Credentials,
    /// Vault leases taken for values loaded by this reload (end them with the session).
    pub leases: Vec<LeaseId>,
    /// One message per credential that could not be loaded (name and source, never a
    /// value); such a credential is left out of the new set.
    pub problems: Vec<String>,
}

impl Credentials {
    /// The credentials `credentials`, with their guards and injectors prepared.
    pub fn new(credentials: Vec<SessionCredential>) -> Result<Credentials, InterceptError> {
        let mut meta = Vec::with_capacity(credentials.len());
        let mut scan = Vec::with_capacity(credentials.len());
        let mut length_stable = true;
        for c in credentials {
            let mut hosts = Vec::new();
            for h in &c.hosts {
                let p = HostPattern::parse(h).map_err(|e| InterceptError::Host {
                    credential: c.name.clone(),
                    host: h.clone(),
                    reason: e.to_string(),
                })?;
                hosts.push(p);
            }
            let header = match &c.header {
                None => None,
                Some(h) => {
                    let name = HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                        InterceptError::Header {
                            credential: c.name.clone(),
                            header: h.clone(),
                        }
                    })?;
                    let value = warden_secrets::scan::render_header(
                        &c.name,
                        c.format.as_deref(),
                        &c.secret,
                    )?;
                    Some(Arc::new(InjectedHeader {
                        name,
                        value,
                        credential: Arc::from(c.name.as_str()),
                    }))
                }
            };
            let stable = same_shape(c.secret.expose(), c.placeholder.as_bytes());
            length_stable &= stable;
            meta.push(Meta {
                name: c.name.clone(),
                source: c.source,
                secret: c.secret.clone(),
                hosts,
                hosts_written: c.hosts.clone(),
                env: c.env,
                placeholder: c.placeholder.clone(),
                header,
                inject_body: c.inject_body,
                stable,
            });
            scan.push(Credential {
                name: c.name,
                real: c.secret,
                placeholder: c.placeholder,
                hosts: c.hosts,
            });
        }
        let set = SecretSet::new(scan)?;
        let scrub = Arc::new(set.scrubber()?);
        Ok(Credentials {
            set,
            meta,
            scrub,
            length_stable,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The credentials `policy` asks for, for a session that holds these ones:
    ///
    /// - one with the same name and source keeps its value and placeholder (nothing is
    ///   loaded again), with the new `hosts`, `header`, `format` and `inject_body`;
    /// - a new one, or one whose source changed, is loaded; it keeps the old
    ///   placeholder when that can stand for the new value (so the variable the
    ///   session holds still works), else gets a fresh one (the session never holds
    ///   it: only a `header` the proxy sets can use it);
    /// - one the policy no longer names, or whose new value cannot be loaded, stays in
    ///   the set bound to no host: never injected, still guarded against
    ///   exfiltration and scrubbed from answers.
    ///
    /// A credential that cannot be loaded is reported in [`Reloaded::problems`], not an
    /// error: the rest of the reload must still apply. An `optional` one whose
    /// variable is not set is left out, like a credential the policy no longer names.
    pub fn reloaded(
        &self,
        policy: &Policy,
        ctx: &LoadContext<'_>,
    ) -> Result<Reloaded, InterceptError> {
        let mut out = Vec::new();
        let mut leases = Vec::new();
        let mut problems = Vec::new();
        for w in wanted(policy) {
            let prev = self.meta.iter().find(|m| m.name == w.name);
            let secret = match prev {
                Some(m) if m.source.as_ref() == Some(&w.source) => m.secret.clone(),
                _ => match w.load(ctx) {
                    Ok(Some(loaded)) => {
                        leases.extend(loaded.lease);
                        loaded.secret
                    }
                    Ok(None) => continue,
                    Err(e) => {
                        problems.push(e.to_string());
                        continue;
                    }
                },
            };
            let placeholder = prev
                .and_then(|m| Placeholder::adopt(m.placeholder.as_str(), &secret).ok())
                .unwrap_or_else(|| Placeholder::for_credential(&w.name, &secret, ctx.placeholders));
            out.push(w.with(secret, placeholder));
        }
        for m in &self.meta {
            if !out.iter().any(|c| c.name == m.name) {
                out.push(SessionCredential {
                    name: m.name.clone(),
                    source: m.source.clone(),
                    secret: m.secret.clone(),
                    placeholder: m.placeholder.clone(),
                    hosts: Vec::new(),
                    env: m.env.clone(),
                    header: None,
                    format: None,
                    inject_body: false,
                });
            }
        }
        Ok(Reloaded {
            credentials: Credentials::new(out)?,
            leases,
            problems,
        })
    }

    /// Each credential as (name, real value, placeholder, host patterns as written), in
    /// order: for another surface of the same session that must know them (its MCP
    /// gateway scans tool calls for them and hands its servers the same placeholders).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Secret, &Placeholder, &[String])> {
        self.meta.iter().map(|m| {
            (
                m.name.as_str(),
                &m.secret,
                &m.placeholder,
                m.hosts_written.as_slice(),
            )
        })
    }

    /// The credentials' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.meta.iter().map(|m| m.name.clone()).collect()
    }

    /// The placeholder of `credential` (what the session holds).
    pub fn placeholder(&self, credential: &str) -> Option<&Placeholder> {
        self.set.placeholder(credential)
    }

    /// `text` with every real credential value (in any encoding the scanner knows)
    /// replaced by its placeholder: for what Warden itself records, e.g. a command line.
    pub fn redact(&self, text: &str) -> String {
        match self.scrub.apply(text.as_bytes()) {
            Some(r) => String::from_utf8_lossy(&r.bytes).into_owned(),
            None => text.to_string(),
        }
    }

    /// The host patterns of `credential` as written.
    pub(crate) fn hosts_of(&self, credential: &str) -> Vec<String> {
        self.meta
            .iter()
            .find(|m| m.name == credential)
            .map(|m| m.hosts_written.clone())
            .unwrap_or_default()
    }

    /// Is `credential` bound to `host` under `policy`? Its own host patterns must
    /// match, and, when the policy declares it, the policy's `use_credential`
    /// decision must allow it (so a Cedar `forbid` can narrow a binding).
    fn bound(&self, policy: &Policy, principal: &Principal, i: usize, host: &RequestHost) -> bool {
        let Some(m) = self.meta.get(i) else {
            return false;
        };
        if !m.hosts.iter().any(|p| p.kind.matches_host(host)) {
            return false;
        }
        if policy.doc().credentials.iter().any(|c| c.name == m.name) {
            let h = host.to_string();
            return policy
                .decide(
                    principal,
                    &Request::Credential {
                        name: &m.name,
                        host: &h,
                    },
                )
                .allow;
        }
        true
    }

    /// Whether any credential is bound to `host`.
    pub(crate) fn any_bound(
        &self,
        policy: &Policy,
        principal: &Principal,
        host: &RequestHost,
    ) -> bool {
        (0..self.meta.len()).any(|i| self.bound(policy, principal, i, host))
    }

    /// The guard and injector for requests to `host`, derived once per policy and host.
    pub(crate) fn for_host(
        &self,
        policy: &Policy,
        principal: &Principal,
        host: &RequestHost,
    ) -> Result<Arc<HostCreds>, warden_secrets::ScanError> {
        let key = (policy.id().to_string(), host.to_string());
        if let Some(hc) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(hc.clone());
        }
        let bound: Vec<bool> = (0..self.meta.len())
            .map(|i| self.bound(policy, principal, i, host))
            .collect();
        let is_bound = |name: &str| {
            self.meta
                .iter()
                .zip(&bound)
                .any(|(m, b)| *b && m.name == name)
        };
        let guard = Arc::new(self.set.guard_for(|name, _| is_bound(name))?);
        let injector = Arc::new(self.set.injector_for(|name, _| is_bound(name))?);
        let headers = self
            .meta
            .iter()
            .zip(&bound)
            .filter(|(_, b)| **b)
            .filter_map(|(m, _)| m.header.clone())
            .collect();
        // Body injection: the credential opted in and, when the policy in force
        // declares it, still does.
        let in_body: Vec<bool> = self
            .meta
            .iter()
            .zip(&bound)
            .map(|(m, b)| {
                *b && m.inject_body
                    && policy
                        .doc()
                        .credentials
                        .iter()
                        .find(|c| c.name == m.name)
                        .is_none_or(|c| c.inject_body)
            })
            .collect();
        let body_injector = if in_body.iter().any(|b| *b) {
            let is_in = |name: &str| {
                self.meta
                    .iter()
                    .zip(&in_body)
                    .any(|(m, b)| *b && m.name == name)
            };
            Some(Arc::new(self.set.injector_for(|name, _| is_in(name))?))
        } else {
            None
        };
        let body_stable = self.meta.iter().zip(&in_body).all(|(m, b)| !*b || m.stable);
        let hc = Arc::new(HostCreds {
            guard,
            injector,
            headers,
            body_injector,
            body_stable,
            any_bound: bound.iter().any(|b| *b),
            scrub: self.scrub.clone(),
            scrub_stable: self.length_stable,
        });
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, hc.clone());
        Ok(hc)
    }
}

impl Interception {
    /// Set up interception with `ca`, `trust` and the session's `credentials`.
    pub fn new(
        ca: SessionCa,
        trust: UpstreamTrust,
        credentials: Vec<SessionCredential>,
    ) -> Result<Interception, InterceptError> {
        Ok(Interception {
            ca: Arc::new(ca),
            trust: Arc::new(trust),
            credentials: Arc::new(Credentials::new(credentials)?),
        })
    }

    /// Everything from the policy: a new [`SessionCa`], the upstream trust with the
    /// policy's `tls.extra_roots` ([`UpstreamTrust::deferred`]: the system store is
    /// read as text when the session bundle is asked for, and parsed for upstream
    /// verification at the first intercepted connection; a store without any
    /// certificate or an unusable `extra_roots` file is reported by
    /// [`Interception::session_bundle`], [`Interception::trust_ready`] and every
    /// upstream handshake), and every `[[credentials]]` entry loaded with
    /// [`warden_secrets::load`], each given its placeholder (`LoadContext::placeholders`). Returns the vault
    /// leases to revoke when the session ends. A credential that cannot be loaded is
    /// an error: the session must not start with a credential silently missing —
    /// unless it is `optional` and its variable is not set (then it is left out).
    pub fn from_policy(
        policy: &Policy,
        ctx: &LoadContext<'_>,
    ) -> Result<(Interception, Vec<LeaseId>), InterceptError> {
        Interception::from_policy_adopting(policy, ctx, &HashMap::new())
    }

    /// [`Interception::from_policy`], with the placeholders of some credentials given
    /// (credential name → placeholder, see [`Placeholder::adopt`]) instead of made.
    pub fn from_policy_adopting(
        policy: &Policy,
        ctx: &LoadContext<'_>,
        given: &HashMap<String, String>,
    ) -> Result<(Interception, Vec<LeaseId>), InterceptError> {
        // The system store is read when the session bundle is asked for; the roots are
        // parsed at the first upstream handshake.
        let trust = UpstreamTrust::deferred(policy.doc().tls.extra_roots.clone());
        let ca = SessionCa::new()?;
        let mut creds = Vec::new();
        let mut leases = Vec::new();
        for w in wanted(policy) {
            let Some(loaded) = w.load(ctx)? else {
                continue;
            };
            leases.extend(loaded.lease);
            let placeholder = match given.get(&w.name) {
                Some(v) => Placeholder::adopt(v, &loaded.secret).map_err(|why| {
                    InterceptError::Placeholder {
                        name: w.name.clone(),
                        why,
                    }
                })?,
                None => Placeholder::for_credential(&w.name, &loaded.secret, ctx.placeholders),
            };
            creds.push(w.with(loaded.secret, placeholder));
        }
        Ok((Interception::new(ca, trust, creds)?, leases))
    }

    /// The session CA (its certificate is public; its key never leaves it).
    pub fn ca(&self) -> &SessionCa {
        &self.ca
    }

    /// The trust toward upstreams.
    pub fn trust(&self) -> &UpstreamTrust {
        &self.trust
    }

    /// The credentials the session started with.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// Waits until the trust a session needs before it starts is checked (see
    /// [`UpstreamTrust::wait`]); the error if it failed.
    pub fn trust_ready(&self) -> Result<(), TlsError> {
        self.trust.wait()
    }

    /// The PEM bundle the session trusts: system roots, the session CA, `extra_roots`.
    /// Overlay it at `/etc/ssl/certs/ca-certificates.crt` and point [`Self::session_env`]
    /// at it. Waits for the system store to be read; the error if the store holds no
    /// certificate (and `tls.extra_roots` none) or a `tls.extra_roots` file is unusable.
    pub fn session_bundle(&self) -> Result<String, TlsError> {
        self.trust.session_bundle(&self.ca)
    }

    /// The session's environment additions: [`warden_tls::ca_env`] for
    /// `bundle_path` (the bundle's path as seen inside the session), then each
    /// credential's `env` variable set to its placeholder.
    pub fn session_env(&self, bundle_path: &Path) -> Vec<(String, String)> {
        let mut env = warden_tls::ca_env(bundle_path);
        for m in &self.credentials.meta {
            if let Some(var) = &m.env {
                env.push((var.clone(), m.placeholder.as_str().to_string()));
            }
        }
        env
    }

    /// The start credentials' names, in order.
    pub fn credential_names(&self) -> Vec<String> {
        self.credentials.names()
    }

    /// The placeholder of `credential` (what the session holds).
    pub fn placeholder(&self, credential: &str) -> Option<&Placeholder> {
        self.credentials.placeholder(credential)
    }

    /// `text` with every real value of the start credentials replaced by its
    /// placeholder ([`Credentials::redact`]).
    pub fn redact(&self, text: &str) -> String {
        self.credentials.redact(text)
    }

    pub(crate) fn session_ca(&self) -> &Arc<SessionCa> {
        &self.ca
    }

    pub(crate) fn upstream_trust(&self) -> &Arc<UpstreamTrust> {
        &self.trust
    }
}

/// Whether replacing `real` by `placeholder` keeps the length of every encoded form
/// the scanner knows (raw, base64, hex: same length; percent-encoding: each byte in
/// the same escaping class).
fn same_shape(real: &[u8], placeholder: &[u8]) -> bool {
    let class = |b: u8| {
        (
            b.is_ascii_alphanumeric() || b"-._~".contains(&b),
            b.is_ascii_alphanumeric() || b"*-._".contains(&b),
            b == b' ',
        )
    };
    real.len() == placeholder.len()
        && real
            .iter()
            .zip(placeholder)
            .all(|(a, b)| class(*a) == class(*b))
}
