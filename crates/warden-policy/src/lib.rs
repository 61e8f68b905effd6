//! # warden-policy
//!
//! Owns Warden's policy: the TOML format (SPEC §4), its validation with source
//! positions, host/IP/port/path matching, compilation to Cedar (SPEC §6), decisions
//! that name the rule that decided, and the built-in presets.
//!
//! A [`Policy`] is compiled once and immutable; share it behind an `Arc`. Every
//! decision is a pure function of the policy and the request: this crate never
//! touches the network, never resolves names, never reads the filesystem while
//! deciding (only while loading), never sees a secret's value, and never panics on
//! input. Anything it cannot parse is denied.
//!
//! Semantics beyond SPEC §4 are written down in this crate's README.md.

mod cedar;
mod doc;
mod error;
mod fs;
pub mod host;
mod narrow;
mod net;
mod parse;
mod preset;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

pub use doc::*;
pub use error::{Diagnostic, PolicyError};
pub use fs::{DenyMatcher, normalize as normalize_path};
pub use preset::{Preset, preset_source};

use cedar::{ACTIONS, Act, CedarInput, CedarNames, UserCedar, Val};
use fs::{DenySet, Grant};
use host::{RequestHost, parse_request_host, special_range};
use net::{Entry, HostIndex};

/// Who is asking: the session and what runs in it (SPEC §6 principal).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    pub session: String,
    pub user: String,
    pub machine: String,
    /// The agent command's basename.
    pub agent: String,
    pub labels: BTreeMap<String, String>,
}

/// One question for the policy.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// A TCP connection to a name or an IP literal (`"[::1]"` and `"::1"` both work).
    /// Names are decided as written; see [`Policy::check_address`] for what they resolve to.
    Connect { host: &'a str, port: u16 },
    /// An HTTP request (absolute http/https URL).
    Http { method: &'a str, url: &'a str },
    /// Is this host path visible (and, with `write`, writable) in a session?
    Path {
        path: &'a Path,
        write: bool,
        workspace: &'a Path,
        home: &'a Path,
    },
    /// An MCP tool call.
    Tool {
        server: &'a str,
        tool: &'a str,
        args: &'a serde_json::Value,
    },
    /// May this credential be sent to this host?
    Credential { name: &'a str, host: &'a str },
    /// An MCP `prompts/get` (and whether `prompts/list` shows the prompt, asked with
    /// empty arguments). Cedar action `get_prompt`, resource `Warden::Prompt::"server/prompt"`.
    Prompt {
        server: &'a str,
        prompt: &'a str,
        args: &'a serde_json::Value,
    },
    /// An MCP `resources/read` or `resources/subscribe` of `uri` (the server's own URI),
    /// and whether a list shows it (templates are asked with the URI template). Cedar
    /// action `read_resource`, resource `Warden::Resource::"server/uri"`.
    Resource { server: &'a str, uri: &'a str },
}

/// Where a decision came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RuleRef {
    /// A line of the policy file or of one of its Cedar files. Line 0 means a
    /// file-level default (e.g. `filesystem.workspace` not written: "rw").
    Line { file: String, line: u32 },
    /// Nothing matched.
    Default,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleRef::Line { file, line: 0 } => f.write_str(file),
            RuleRef::Line { file, line } => write!(f, "{file}:{line}"),
            RuleRef::Default => f.write_str("default deny"),
        }
    }
}

/// The answer: allow or deny, the rule that decided, and why in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub rule: RuleRef,
    pub reason: String,
}

impl Decision {
    fn deny_default(reason: impl Into<String>) -> Self {
        Decision {
            allow: false,
            rule: RuleRef::Default,
            reason: reason.into(),
        }
    }
}

/// What the TOML rules said natively, before Cedar.
#[derive(Debug, Default)]
struct Verdict {
    forbid: Option<(RuleRef, String)>,
    permit: Option<(RuleRef, String)>,
    /// Reason when nothing matches.
    otherwise: String,
    /// A deny that is not a forbid (e.g. write to a read-only grant): wins over
    /// "default deny" in the explanation, not over a permit from Cedar.
    soft_deny: Option<(RuleRef, String)>,
}

/// A compiled, immutable policy.
#[derive(Debug, Clone)]
pub struct Policy {
    origin: String,
    id: String,
    doc: PolicyDoc,
    allow: HostIndex,
    deny: HostIndex,
    deny_set: Arc<DenySet>,
    user: Arc<UserCedar>,
    names: Option<CedarNames>,
    /// Plain, or a central policy narrowed by a local one (decided by both), or refused.
    kind: narrow::Kind,
}

// Compile-time check: policies are shared across threads.
const _: fn() = || {
    fn assert<T: Send + Sync>() {}
    assert::<Policy>();
};

impl Policy {
    /// Read and compile a policy file. Cedar files and TLS roots resolve relative to
    /// its directory; the file name is the `origin` in errors and rule refs.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let origin = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let source = std::fs::read_to_string(path).map_err(|e| {
            PolicyError::single(Diagnostic::whole_file(
                &path.display().to_string(),
                format!("cannot read policy: {e}"),
            ))
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Policy::parse(&source, &origin, base)
    }

    /// Compile policy text. `origin` is the file name shown in errors and rule refs.
    pub fn parse(source: &str, origin: &str, base_dir: &Path) -> Result<Policy, PolicyError> {
        let default_name = Path::new(origin)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "policy".into());
        let mut cx = parse::Cx::new(origin, source, base_dir);
        let doc = parse::parse_doc(&mut cx, source, &default_name);
        let mut diags = std::mem::take(&mut cx.diags);
        let (user, cedar_digest) = match &doc {
            Some(d) => UserCedar::load(&d.cedar.resolved, base_dir, &mut diags),
            None => (UserCedar::default(), Vec::new()),
        };
        let names = CedarNames::new();
        if names.is_none() {
            diags.push(Diagnostic::whole_file(
                origin,
                "internal: Cedar names failed to parse",
            ));
        }
        match doc {
            Some(doc) if diags.is_empty() => {
                let mut h = Sha256::new();
                h.update(source.as_bytes());
                h.update([0]);
                h.update(&cedar_digest);
                let digest = hex::encode(h.finalize());
                let id = format!("{}@{}", doc.name, &digest[..12]);
                Ok(Policy::build(
                    origin.to_owned(),
                    id,
                    doc,
                    Arc::new(user),
                    names,
                ))
            }
            _ => Err(PolicyError::new(origin, diags)),
        }
    }

    fn build(
        origin: String,
        id: String,
        doc: PolicyDoc,
        user: Arc<UserCedar>,
        names: Option<CedarNames>,
    ) -> Policy {
        let mut allow = HostIndex::default();
        let mut deny = HostIndex::default();
        for e in &doc.network.allow {
            allow.insert(
                &e.pattern,
                Entry {
                    ports: e.pattern.ports,
                    line: e.line,
                    written: e.written.clone(),
                },
            );
        }
        for e in &doc.network.deny {
            deny.insert(
                &e.pattern,
                Entry {
                    ports: e.pattern.deny_ports(),
                    line: e.line,
                    written: e.written.clone(),
                },
            );
        }
        let deny_set = Arc::new(DenySet::new(&doc.filesystem.deny));
        Policy {
            origin,
            id,
            doc,
            allow,
            deny,
            deny_set,
            user,
            names,
            kind: narrow::Kind::Plain,
        }
    }

    /// The policy an MCP server's own sandbox runs under (SPEC §4: each server takes its
    /// own `network`, `filesystem` and `limits` tables): those tables of `[[mcp.servers]]`
    /// entry `server` in place of the top-level ones, the top-level `filesystem.deny`
    /// patterns added to the server's (secrets directories stay invisible everywhere),
    /// only the credentials the server names, no MCP servers of its own, and the same
    /// mode and Cedar rules. Its id is `<id>#mcp:<server>`. `None` when the policy has
    /// no such server.
    ///
    /// Of a narrowed policy: the central server's part narrowed by the local server's
    /// part (`None` when either lacks the server). Of a refused policy: refused too.
    pub fn for_mcp_server(&self, server: &str) -> Option<Policy> {
        match &self.kind {
            narrow::Kind::Plain => {}
            narrow::Kind::Narrowed(p) => {
                let c = p.central.for_mcp_server(server)?;
                let l = p.local.for_mcp_server(server)?;
                // `narrowed_by` already checked every server's tables of the local file
                // when this policy was built; a failure here refuses the server.
                return c.narrowed_by(&l).ok();
            }
            narrow::Kind::Refused(why) => {
                return Some(Policy::refused(
                    format!("{}#mcp:{server}", self.id),
                    self.origin.clone(),
                    why.to_string(),
                ));
            }
        }
        let s = self.doc.mcp.servers.iter().find(|s| s.name == server)?;
        let mut doc = self.doc.clone();
        doc.network = s.network.clone();
        doc.limits = s.limits;
        let mut fs = s.filesystem.clone();
        for (p, line) in self
            .doc
            .filesystem
            .deny
            .iter()
            .zip(&self.doc.filesystem.deny_lines)
        {
            if !fs.deny.contains(p) {
                fs.deny.push(p.clone());
                fs.deny_lines.push(*line);
            }
        }
        doc.filesystem = fs;
        doc.credentials.retain(|c| s.credentials.contains(&c.name));
        doc.mcp = Mcp::default();
        doc.name = format!("{}/mcp:{server}", self.doc.name);
        Some(Policy::build(
            self.origin.clone(),
            format!("{}#mcp:{server}", self.id),
            doc,
            self.user.clone(),
            CedarNames::new(),
        ))
    }

    /// A built-in preset. Infallible: the preset texts are tested to compile; should
    /// one ever fail, the result denies everything rather than panicking.
    pub fn preset(preset: Preset) -> Policy {
        let origin = format!("preset:{preset}");
        match Policy::parse(preset_source(preset), &origin, Path::new(".")) {
            Ok(p) => p,
            Err(_) => {
                let doc = PolicyDoc {
                    version: 1,
                    name: preset.to_string(),
                    filesystem: Filesystem {
                        workspace: WorkspaceMode::None,
                        ..Filesystem::default()
                    },
                    ..PolicyDoc::default()
                };
                let id = format!("{preset}@000000000000");
                Policy::build(origin, id, doc, Arc::default(), CedarNames::new())
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.doc.name
    }

    /// `name@<first 12 hex chars of sha256 over the source and cedar files>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn mode(&self) -> Mode {
        self.doc.mode
    }

    pub fn doc(&self) -> &PolicyDoc {
        &self.doc
    }

    /// The file name used in rule refs.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn line(&self, line: u32) -> RuleRef {
        RuleRef::Line {
            file: self.origin.clone(),
            line,
        }
    }

    /// Decide one request. Any matching forbid (TOML deny or Cedar forbid) denies;
    /// else any permit (TOML allow or Cedar permit) allows; else default deny.
    ///
    /// A narrowed policy ([`Policy::narrowed_by`]) allows only what its central and its
    /// local part both allow; a refused one ([`Policy::refused`]) denies everything.
    pub fn decide(&self, principal: &Principal, request: &Request<'_>) -> Decision {
        match &self.kind {
            narrow::Kind::Plain => {}
            narrow::Kind::Narrowed(p) => return narrow::decide(p, principal, request),
            narrow::Kind::Refused(why) => return Decision::deny_default(why.to_string()),
        }
        let (verdict, input) = match self.native(request) {
            Ok(v) => v,
            Err(d) => return d,
        };
        self.finish(principal, verdict, input)
    }

    fn finish(&self, principal: &Principal, v: Verdict, input: CedarInput) -> Decision {
        let mut outcome = cedar::CedarOutcome::default();
        // A TOML deny already decides (forbid wins): Cedar cannot change the answer.
        let relevant = match v.forbid {
            Some(_) => None,
            None => self.user.relevant(input.act, &input.resource_id),
        };
        if v.forbid.is_none() && !self.user.rules.is_empty() {
            let Some(names) = &self.names else {
                return Decision::deny_default("Cedar is unavailable; failing closed");
            };
            match cedar::evaluate_user(names, &self.user, principal, &input, relevant) {
                Ok(o) => outcome = o,
                Err(e) => {
                    return Decision::deny_default(format!(
                        "cannot evaluate the Cedar rules for this request ({e}); failing closed"
                    ));
                }
            }
        }
        let user_ref = |id: &cedar_policy::PolicyId| match self.user.rules.get(id) {
            Some(r) => RuleRef::Line {
                file: r.file.clone(),
                line: r.line,
            },
            None => RuleRef::Default,
        };
        if let Some((rule, reason)) = v.forbid {
            return Decision {
                allow: false,
                rule,
                reason,
            };
        }
        if let Some((id, errored)) = &outcome.forbid {
            let rule = user_ref(id);
            let reason = if *errored {
                format!("the Cedar forbid at {rule} could not be evaluated; failing closed")
            } else {
                format!("forbidden by the Cedar policy at {rule}")
            };
            return Decision {
                allow: false,
                rule,
                reason,
            };
        }
        if let Some((rule, reason)) = v.permit {
            return Decision {
                allow: true,
                rule,
                reason,
            };
        }
        if let Some(id) = &outcome.permit {
            let rule = user_ref(id);
            return Decision {
                allow: true,
                reason: format!("permitted by the Cedar policy at {rule}"),
                rule,
            };
        }
        if let Some((rule, reason)) = v.soft_deny {
            return Decision {
                allow: false,
                rule,
                reason,
            };
        }
        Decision::deny_default(v.otherwise)
    }

    /// The Cedar request and entities this request is evaluated with; authorize them
    /// against [`Policy::to_cedar`] to check a decision with the Cedar authorizer.
    pub fn cedar_request(
        &self,
        principal: &Principal,
        request: &Request<'_>,
    ) -> Result<(cedar_policy::Request, cedar_policy::Entities), String> {
        if !matches!(self.kind, narrow::Kind::Plain) {
            return Err(format!(
                "{} is not one Cedar policy set: ask its parts (Policy::narrowing)",
                self.id
            ));
        }
        let (_, input) = self.native(request).map_err(|d| d.reason)?;
        let names = self.names.as_ref().ok_or("Cedar is unavailable")?;
        cedar::build_owned(names, principal, &input)
    }

    fn native(&self, request: &Request<'_>) -> Result<(Verdict, CedarInput), Decision> {
        match *request {
            Request::Connect { host, port } => self.native_connect(host, port),
            Request::Http { method, url } => self.native_http(method, url),
            Request::Path {
                path,
                write,
                workspace,
                home,
            } => self.native_path(path, write, workspace, home),
            Request::Tool { server, tool, args } => Ok(self.native_tool(server, tool, args)),
            Request::Credential { name, host } => self.native_credential(name, host),
            Request::Prompt {
                server,
                prompt,
                args,
            } => Ok(self.native_mcp_item(
                Act::GetPrompt,
                server,
                prompt,
                vec![
                    ("prompt", Val::Str(prompt.into())),
                    ("args", Val::Json(args.clone())),
                ],
            )),
            Request::Resource { server, uri } => Ok(self.native_mcp_item(
                Act::ReadResource,
                server,
                uri,
                vec![("uri", Val::Str(uri.into()))],
            )),
        }
    }

    fn host_input(
        act: Act,
        host: &RequestHost,
        mut context: Vec<(&'static str, Val)>,
    ) -> CedarInput {
        if let RequestHost::Ip(ip) = host {
            context.push(("ip", Val::Ip(ip.to_string())));
        }
        let name = host.to_string();
        context.push(("host", Val::Str(name.clone())));
        CedarInput {
            act,
            resource_id: name,
            context,
        }
    }

    fn native_connect(&self, host: &str, port: u16) -> Result<(Verdict, CedarInput), Decision> {
        let h = parse_request_host(host)
            .map_err(|e| Decision::deny_default(format!("invalid host: {e}")))?;
        let target = match &h {
            RequestHost::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            other => format!("{other}:{port}"),
        };
        let mut v = Verdict::default();
        if let Some(e) = self.deny.find(&h, Some(port)) {
            v.forbid = Some((
                self.line(e.line),
                format!("{target} is denied by network.deny entry `{}`", e.written),
            ));
        }
        if let Some(e) = self.allow.find(&h, Some(port)) {
            v.permit = Some((
                self.line(e.line),
                format!("{target} is allowed by network.allow entry `{}`", e.written),
            ));
        } else if let Some(r) = self
            .doc
            .network
            .http
            .iter()
            .find(|r| r.host.matches_host(&h, port))
        {
            v.permit = Some((
                self.line(r.line),
                format!(
                    "{target} is allowed by the [[network.http]] rule for `{}` (its requests are filtered)",
                    r.host_written
                ),
            ));
        }
        // Only needed when nothing native matched: spare the allocation otherwise.
        if v.permit.is_none() && v.forbid.is_none() {
            v.otherwise = match &h {
                RequestHost::Ip(_) => format!(
                    "{target} matches no IP or CIDR entry in network.allow (name entries never allow IP literals)"
                ),
                RequestHost::Name(_) => format!("{target} matches no network.allow entry"),
            };
        }
        let input = Self::host_input(
            Act::Connect,
            &h,
            vec![
                ("port", Val::Long(i64::from(port))),
                ("protocol", Val::Str("tcp".into())),
            ],
        );
        Ok((v, input))
    }

    fn native_http(&self, method: &str, url: &str) -> Result<(Verdict, CedarInput), Decision> {
        let u =
            net::parse_url(url).map_err(|e| Decision::deny_default(format!("invalid URL: {e}")))?;
        let method = method.to_ascii_uppercase();
        if method.is_empty() || !method.bytes().all(parse::is_tchar) {
            return Err(Decision::deny_default(format!(
                "invalid HTTP method `{method}`"
            )));
        }
        let mut v = Verdict::default();
        if let Some(e) = self.deny.find(&u.host, Some(u.port)) {
            v.forbid = Some((
                self.line(e.line),
                format!(
                    "{}:{} is denied by network.deny entry `{}`",
                    u.host, u.port, e.written
                ),
            ));
        }
        let rules = &self.doc.network.http;
        let full = |r: &HttpRule| {
            r.host.kind.matches_host(&u.host)
                && u.path_ok
                && (r.methods.is_empty() || r.methods.contains(&method))
                && (r.paths.is_empty()
                    || r.paths.iter().any(|p| net::path_glob_matches(p, &u.path)))
        };
        if v.forbid.is_none()
            && let Some(first) = rules.iter().find(|r| r.host.kind.matches_host(&u.host))
            && !rules.iter().any(full)
        {
            let why = if u.path_ok {
                format!(
                    "{method} {} is not permitted by the [[network.http]] rules for `{}`",
                    u.path, first.host_written
                )
            } else {
                format!(
                    "the path `{}` hides a separator (%2F, %5C) or is not UTF-8; refused for a host with [[network.http]] rules",
                    u.path
                )
            };
            v.forbid = Some((self.line(first.line), why));
        }
        if let Some(r) = rules
            .iter()
            .find(|r| full(r) && r.host.ports.matches(u.port))
        {
            v.permit = Some((
                self.line(r.line),
                format!(
                    "{method} {} is permitted by the [[network.http]] rule for `{}`",
                    u.path, r.host_written
                ),
            ));
        } else if let Some(e) = self.allow.find(&u.host, Some(u.port)) {
            v.permit = Some((
                self.line(e.line),
                format!(
                    "{}:{} is allowed by network.allow entry `{}`",
                    u.host, u.port, e.written
                ),
            ));
        }
        v.otherwise = format!("{}:{} matches no network.allow entry", u.host, u.port);
        let depth = u.path.matches('/').count();
        let input = Self::host_input(
            Act::Http,
            &u.host,
            vec![
                ("method", Val::Str(method)),
                ("path", Val::Str(u.path.clone())),
                ("path_ok", Val::Bool(u.path_ok)),
                (
                    "path_depth",
                    Val::Long(i64::try_from(depth).unwrap_or(i64::MAX)),
                ),
                ("scheme", Val::Str(u.scheme.into())),
                ("port", Val::Long(i64::from(u.port))),
            ],
        );
        Ok((v, input))
    }

    fn native_path(
        &self,
        path: &Path,
        write: bool,
        workspace: &Path,
        home: &Path,
    ) -> Result<(Verdict, CedarInput), Decision> {
        if !path.is_absolute() {
            return Err(Decision::deny_default(format!(
                "`{}` is not an absolute path",
                path.display()
            )));
        }
        let fsd = &self.doc.filesystem;
        let p = fs::normalize(path);
        let home = fs::normalize(home);
        let ws = fs::normalize(workspace);
        let ws_ok =
            fsd.workspace != WorkspaceMode::None && fs::check_workspace(fsd, &ws, &home).is_ok();
        let grant = fs::covering_grant(fsd, &p, ws_ok.then_some(ws.as_path()), &home);
        let root = grant.as_ref().map(|(_, r)| r.as_path());
        let mut v = Verdict::default();
        let shown = p.display();
        if let Some(i) = self.deny_set.hiding(&p, &home, root) {
            let line = fsd.deny_lines.get(i).copied().unwrap_or(0);
            let pat = fsd.deny.get(i).map(String::as_str).unwrap_or("");
            v.forbid = Some((
                self.line(line),
                format!("`{shown}` is hidden by filesystem.deny `{pat}`"),
            ));
        }
        let (root_kind, mode_line, rw, what) = match &grant {
            Some((Grant::Workspace, _)) => (
                "workspace",
                fsd.workspace_line,
                fsd.workspace == WorkspaceMode::Rw,
                "the workspace".to_owned(),
            ),
            Some((Grant::Mount(i), r)) => {
                let m = fsd.mounts.get(*i);
                (
                    "mount",
                    m.map_or(0, |m| m.line),
                    m.is_some_and(|m| m.mode == MountMode::Rw),
                    format!("the mount of `{}`", r.display()),
                )
            }
            None => ("", 0, false, String::new()),
        };
        if grant.is_some() {
            if !write || rw {
                let m = if rw { "read-write" } else { "read-only" };
                v.permit = Some((
                    self.line(mode_line),
                    format!("`{shown}` is visible {m} through {what}"),
                ));
            } else {
                v.soft_deny = Some((
                    self.line(mode_line),
                    format!("`{shown}` is read-only: it is visible through {what}, mounted ro"),
                ));
            }
        }
        v.otherwise = if fsd.workspace != WorkspaceMode::None && !ws_ok && p.starts_with(&ws) {
            let why = fs::check_workspace(fsd, &ws, &home)
                .err()
                .unwrap_or_default();
            format!("`{shown}` is not visible: {why}")
        } else {
            format!("`{shown}` is outside the workspace and every mount")
        };
        let root_s = root
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_default();
        let root_tilde = root.map(|r| fs::tilde_form(r, &home)).unwrap_or_default();
        let ps = p.to_string_lossy().into_owned();
        let input = CedarInput {
            act: Act::Mount,
            resource_id: ps.clone(),
            context: vec![
                ("path", Val::Str(ps)),
                ("tilde", Val::Str(fs::tilde_form(&p, &home))),
                ("mode", Val::Str(if write { "rw" } else { "ro" }.into())),
                ("root", Val::Str(root_s)),
                ("root_tilde", Val::Str(root_tilde)),
                ("root_kind", Val::Str(root_kind.into())),
            ],
        };
        Ok((v, input))
    }

    fn native_tool(
        &self,
        server: &str,
        tool: &str,
        args: &serde_json::Value,
    ) -> (Verdict, CedarInput) {
        let mut v = Verdict::default();
        let input = CedarInput {
            act: Act::CallTool,
            resource_id: format!("{server}/{tool}"),
            context: vec![
                ("server", Val::Str(server.into())),
                ("tool", Val::Str(tool.into())),
                ("args", Val::Json(args.clone())),
            ],
        };
        let Some(s) = self.doc.mcp.servers.iter().find(|s| s.name == server) else {
            v.otherwise = format!("no MCP server named `{server}` in the policy");
            return (v, input);
        };
        if let Some((g, line)) = s
            .tools_deny
            .iter()
            .zip(&s.tools_deny_lines)
            .find(|(g, _)| net::star_matches(g, tool))
        {
            v.forbid = Some((
                self.line(*line),
                format!("{server}/{tool} is denied by tools.deny `{g}`"),
            ));
        }
        match &s.tools_allow {
            None => {
                v.permit = Some((
                    self.line(s.line),
                    format!(
                        "{server}/{tool}: server `{server}` has no tools.allow, so all its tools are allowed"
                    ),
                ));
            }
            Some(list) => {
                if let Some((g, line)) = list
                    .iter()
                    .zip(&s.tools_allow_lines)
                    .find(|(g, _)| net::star_matches(g, tool))
                {
                    v.permit = Some((
                        self.line(*line),
                        format!("{server}/{tool} is allowed by tools.allow `{g}`"),
                    ));
                }
            }
        }
        v.otherwise = format!("{server}/{tool} matches no tools.allow entry of server `{server}`");
        (v, input)
    }

    /// Prompts and resources of a configured MCP server: the policy format lists only
    /// tools, so every prompt and resource of a server in `[[mcp.servers]]` is permitted
    /// by that entry; Cedar `forbid` rules on `get_prompt` / `read_resource` narrow it.
    fn native_mcp_item(
        &self,
        act: Act,
        server: &str,
        name: &str,
        mut context: Vec<(&'static str, Val)>,
    ) -> (Verdict, CedarInput) {
        let what = if act == Act::GetPrompt {
            "prompt"
        } else {
            "resource"
        };
        let mut v = Verdict::default();
        context.push(("server", Val::Str(server.into())));
        let input = CedarInput {
            act,
            resource_id: format!("{server}/{name}"),
            context,
        };
        match self.doc.mcp.servers.iter().find(|s| s.name == server) {
            Some(s) => {
                v.permit = Some((
                    self.line(s.line),
                    format!(
                        "{what} {server}/{name}: the prompts and resources of MCP server `{server}` are allowed (narrow them with Cedar forbid rules on `{}`)",
                        ACTIONS[act as usize]
                    ),
                ));
            }
            None => v.otherwise = format!("no MCP server named `{server}` in the policy"),
        }
        (v, input)
    }

    fn native_credential(&self, name: &str, host: &str) -> Result<(Verdict, CedarInput), Decision> {
        let h = parse_request_host(host)
            .map_err(|e| Decision::deny_default(format!("invalid host: {e}")))?;
        let mut v = Verdict::default();
        let mut context = vec![("host", Val::Str(h.to_string()))];
        if let RequestHost::Ip(ip) = &h {
            context.push(("ip", Val::Ip(ip.to_string())));
        }
        let input = CedarInput {
            act: Act::UseCredential,
            resource_id: name.to_owned(),
            context,
        };
        let Some(c) = self.doc.credentials.iter().find(|c| c.name == name) else {
            v.otherwise = format!("no credential named `{name}` in the policy");
            return Ok((v, input));
        };
        if let Some((p, line)) = c
            .hosts
            .iter()
            .zip(&c.host_lines)
            .find(|(p, _)| p.kind.matches_host(&h))
        {
            v.permit = Some((
                self.line(*line),
                format!("credential `{name}` may be sent to {h} (hosts entry `{p}`)"),
            ));
        }
        let hosts: Vec<String> = c.hosts.iter().map(ToString::to_string).collect();
        v.otherwise = format!(
            "credential `{name}` may only be sent to: {}",
            hosts.join(", ")
        );
        Ok((v, input))
    }

    /// For a name already allowed, check the address it resolved to: `Some(deny)` when
    /// the address is special (loopback, private, link-local, CGNAT, multicast, cloud
    /// metadata, ... in any IPv6 spelling) and no IP/CIDR entry of `network.allow`
    /// admits it, or when an IP/CIDR entry of `network.deny` covers it; `None` otherwise.
    pub fn check_address(&self, ip: IpAddr, port: u16) -> Option<Decision> {
        match &self.kind {
            narrow::Kind::Plain => {}
            narrow::Kind::Narrowed(p) => {
                return p
                    .central
                    .check_address(ip, port)
                    .or_else(|| p.local.check_address(ip, port));
            }
            narrow::Kind::Refused(why) => return Some(Decision::deny_default(why.to_string())),
        }
        let ip = ip.to_canonical();
        let shown = match ip {
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            IpAddr::V4(v4) => format!("{v4}:{port}"),
        };
        if let Some(e) = self.deny.find_ip(ip, port) {
            return Some(Decision {
                allow: false,
                rule: self.line(e.line),
                reason: format!(
                    "the name resolves to {shown}, denied by network.deny entry `{}`",
                    e.written
                ),
            });
        }
        let range = special_range(ip)?;
        if self.allow.find_ip(ip, port).is_some() {
            return None;
        }
        Some(Decision::deny_default(format!(
            "the name resolves to {shown}, a {range} address; only an IP or CIDR entry in network.allow can allow it"
        )))
    }

    /// SPEC §4: the workspace is never `/`, `$HOME` or a parent of them unless the
    /// policy names it explicitly in `filesystem.mounts`.
    pub fn check_workspace(&self, workspace: &Path, home: &Path) -> Result<(), String> {
        match &self.kind {
            narrow::Kind::Plain => {}
            narrow::Kind::Narrowed(p) => {
                p.central.check_workspace(workspace, home)?;
                return p.local.check_workspace(workspace, home);
            }
            narrow::Kind::Refused(why) => return Err(why.to_string()),
        }
        fs::check_workspace(&self.doc.filesystem, workspace, home)
    }

    /// `filesystem.deny` bound to a home directory, for the sandbox.
    pub fn deny_matcher(&self, home: &Path) -> DenyMatcher {
        DenyMatcher {
            set: Arc::clone(&self.deny_set),
            home: fs::normalize(home),
        }
    }

    /// The Cedar text the TOML compiles to, followed by the user's Cedar files.
    ///
    /// Of a narrowed policy: both parts' texts, one after the other (a request must be
    /// allowed by each part on its own; the two are not one policy set).
    pub fn to_cedar(&self) -> String {
        if let narrow::Kind::Narrowed(p) = &self.kind {
            return format!(
                "// ---- central: {} (a request must be allowed by both parts) ----\n{}\n// ---- local: {} ----\n{}",
                p.central.id(),
                p.central.to_cedar(),
                p.local.id(),
                p.local.to_cedar()
            );
        }
        let mut out = cedar::compile(&self.doc, &self.origin, &self.id);
        for (name, text) in &self.user.texts {
            out.push_str(&format!("\n// ---- {name} ----\n"));
            out.push_str(text);
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }

    /// The resolved Cedar files this policy loaded.
    pub fn cedar_files(&self) -> &[PathBuf] {
        &self.doc.cedar.resolved
    }

    /// Where this policy's `[cedar] files` globs look for rules (see
    /// [`CedarFiles::roots`]): a session must not be able to write there.
    pub fn cedar_roots(&self) -> &[PathBuf] {
        &self.doc.cedar.roots
    }
}
