//! Narrowing: the one place that combines a central policy with a local policy file
//! (SPEC §1 "local files may only narrow it", §4 "can only narrow the central policy").
//!
//! The local file is a complete policy of its own, so the combination is an
//! intersection of two policies: a request is allowed only when **both** allow it.
//!
//! - **Decisions** (network, HTTP, paths, credentials, MCP tools/prompts/resources,
//!   Cedar rules of either file) are not merged syntactically: the combined policy asks
//!   the central part, then the local part. Deny wins; the decision reported is the one
//!   that denied (the central one when both deny), so its rule names the file that
//!   decided. An allow reports the central rule and mentions the local one.
//! - **What sets a session up** (the merged [`PolicyDoc`] returned by `doc()`) is built
//!   here, always no wider than the central policy:
//!   mode `enforce` if either enforces; the sandbox backend and `tls.intercept` the
//!   stronger of the two; `filesystem.workspace` the stricter; `filesystem.deny` and
//!   `network.deny` and `[[network.http]]` the union; limits the minimum of each;
//!   `network.allow` the local entries (every allowed host must be allowed by the local
//!   file, and the central part still decides); mounts, credentials, MCP servers and TLS
//!   roots only those the local file names, each of which the central policy must grant.
//! - A local file that asks for something the central policy does not grant — a mount
//!   outside every central mount, a credential, MCP server or TLS root the central
//!   policy lacks, a server with another command or URL, a credential the central entry
//!   does not give that server — is an error naming the entry, never silently dropped.
//!   Hosts and tools are different: a local allow the central policy does not share is
//!   simply refused at decision time, as the intersection says.
//!
//! The combined id is `<central id>+<local id>`; its origin is
//! `<central origin> narrowed by <local origin>`.

use std::sync::Arc;

use crate::cedar::CedarNames;
use crate::doc::*;
use crate::error::{Diagnostic, PolicyError};
use crate::fs::normalize_keep_tilde;
use crate::{Decision, Policy, Principal, Request};

/// What a [`Policy`] is beyond its own tables.
#[derive(Debug, Clone, Default)]
pub(crate) enum Kind {
    /// One policy file (or preset): decided by its own tables and Cedar rules.
    #[default]
    Plain,
    /// A central policy narrowed by a local one: decided by both.
    Narrowed(Arc<Parts>),
    /// Denies everything, with this reason (fail closed).
    Refused(Arc<str>),
}

#[derive(Debug)]
pub(crate) struct Parts {
    pub central: Policy,
    pub local: Policy,
}

/// Allow only when both parts allow; the first deny (central first) is the answer.
pub(crate) fn decide(parts: &Parts, principal: &Principal, request: &Request<'_>) -> Decision {
    let c = parts.central.decide(principal, request);
    if !c.allow {
        return c;
    }
    let l = parts.local.decide(principal, request);
    if !l.allow {
        return l;
    }
    Decision {
        allow: true,
        reason: format!(
            "{}; the local policy {} allows it too ({})",
            c.reason,
            parts.local.origin(),
            l.rule
        ),
        rule: c.rule,
    }
}

impl Policy {
    /// This (central) policy narrowed by `local`: the result allows only what both
    /// allow, on every surface (see the module docs of `narrow.rs` and the crate
    /// README, "Narrowing"). `Err` when `local` asks for something this policy does not
    /// grant (a mount outside every mount of this policy, a credential, MCP server or
    /// TLS root it lacks, ...), with one diagnostic per entry, in `local`'s file.
    ///
    /// Id: `<self id>+<local id>`; origin: `<self origin> narrowed by <local origin>`.
    pub fn narrowed_by(&self, local: &Policy) -> Result<Policy, PolicyError> {
        if let Kind::Refused(_) = self.kind {
            return Ok(self.clone());
        }
        let mut cx = Cx {
            central: self.origin(),
            local: local.origin(),
            diags: Vec::new(),
        };
        let doc = merge(self.doc(), local.doc(), &mut cx);
        if !cx.diags.is_empty() {
            return Err(PolicyError::new(local.origin(), cx.diags));
        }
        let mut p = Policy::build(
            format!("{} narrowed by {}", self.origin(), local.origin()),
            format!("{}+{}", self.id(), local.id()),
            doc,
            Arc::default(),
            CedarNames::new(),
        );
        p.kind = Kind::Narrowed(Arc::new(Parts {
            central: self.clone(),
            local: local.clone(),
        }));
        Ok(p)
    }

    /// `(central, local)` when this policy is a narrowing ([`Policy::narrowed_by`]).
    pub fn narrowing(&self) -> Option<(&Policy, &Policy)> {
        match &self.kind {
            Kind::Narrowed(p) => Some((&p.central, &p.local)),
            _ => None,
        }
    }

    /// A policy that denies every request with `reason`, shows no workspace and mounts
    /// nothing: what a running session moves to when the policy it must follow cannot
    /// be built (fail closed, SPEC §7.1). `reason` is the reason of every decision.
    pub fn refused(id: String, origin: String, reason: String) -> Policy {
        let doc = PolicyDoc {
            version: 1,
            name: id.split('@').next().unwrap_or("refused").to_owned(),
            filesystem: Filesystem {
                workspace: WorkspaceMode::None,
                ..Filesystem::default()
            },
            ..PolicyDoc::default()
        };
        let mut p = Policy::build(origin, id, doc, Arc::default(), CedarNames::new());
        p.kind = Kind::Refused(reason.into());
        p
    }

    /// Why this policy denies everything, for a [`Policy::refused`] one.
    pub fn refusal(&self) -> Option<&str> {
        match &self.kind {
            Kind::Refused(why) => Some(why),
            _ => None,
        }
    }
}

/// Where problems go: diagnostics in the local file.
struct Cx<'a> {
    central: &'a str,
    local: &'a str,
    diags: Vec<Diagnostic>,
}

impl Cx<'_> {
    fn refuse(&mut self, line: u32, what: String) {
        let mut d = Diagnostic::whole_file(
            self.local,
            format!(
                "{what}; the central policy {} does not allow it, and a local policy on an \
                 enrolled machine can only narrow the central one",
                self.central
            ),
        );
        if line > 0 {
            d.line = line;
            d.col = 1;
        }
        d.hint = Some(
            "remove it from the local policy, or ask an admin to add it to the central policy"
                .into(),
        );
        self.diags.push(d);
    }
}

fn merge(c: &PolicyDoc, l: &PolicyDoc, cx: &mut Cx<'_>) -> PolicyDoc {
    let mode = if c.mode == Mode::Enforce || l.mode == Mode::Enforce {
        Mode::Enforce
    } else {
        Mode::Audit
    };
    let sandbox = if l.sandbox.backend == SandboxBackend::Gvisor {
        l.sandbox
    } else {
        c.sandbox
    };
    let mut extra_roots = Vec::new();
    for r in &l.tls.extra_roots {
        if c.tls.extra_roots.contains(r) {
            extra_roots.push(r.clone());
        } else {
            cx.refuse(
                0,
                format!(
                    "tls.extra_roots trusts `{}`, which the central policy does not",
                    r.display()
                ),
            );
        }
    }
    let intercept = if c.tls.intercept == Intercept::All || l.tls.intercept == Intercept::All {
        Intercept::All
    } else {
        Intercept::Needed
    };
    let mut credentials = Vec::new();
    for lc in &l.credentials {
        match c.credentials.iter().find(|cc| cc.name == lc.name) {
            // The central entry says where the secret comes from and how it is presented;
            // the local one can only restrict where it goes (both decide each use).
            Some(cc) => credentials.push(Credential {
                hosts: lc.hosts.clone(),
                host_lines: lc.host_lines.clone(),
                inject_body: cc.inject_body && lc.inject_body,
                ..cc.clone()
            }),
            None => cx.refuse(lc.line, format!("credential `{}`", lc.name)),
        }
    }
    let mut servers = Vec::new();
    for ls in &l.mcp.servers {
        let Some(cs) = c.mcp.servers.iter().find(|s| s.name == ls.name) else {
            cx.refuse(ls.line, format!("MCP server `{}`", ls.name));
            continue;
        };
        if cs.transport != ls.transport {
            cx.refuse(
                ls.line,
                format!(
                    "MCP server `{}` with another command or URL than the central entry's \
                     (a local policy cannot change what runs)",
                    ls.name
                ),
            );
        }
        for cred in &ls.credentials {
            if !cs.credentials.contains(cred) {
                cx.refuse(
                    ls.line,
                    format!("credential `{cred}` for MCP server `{}`", ls.name),
                );
            }
        }
        let what = format!("MCP server `{}`: ", ls.name);
        let tools_allow = match (&cs.tools_allow, &ls.tools_allow) {
            (None, l) => l.clone(),
            (c, None) => c.clone(),
            // Both lists decide each call; the local one is the narrower statement.
            (Some(_), Some(l)) => Some(l.clone()),
        };
        let tools_allow_lines = if ls.tools_allow.is_some() {
            ls.tools_allow_lines.clone()
        } else {
            cs.tools_allow_lines.clone()
        };
        let (tools_deny, tools_deny_lines) = union(
            &cs.tools_deny,
            &cs.tools_deny_lines,
            &ls.tools_deny,
            &ls.tools_deny_lines,
        );
        servers.push(McpServer {
            name: ls.name.clone(),
            transport: cs.transport.clone(),
            credentials: ls.credentials.clone(),
            tools_allow,
            tools_deny,
            tools_allow_lines,
            tools_deny_lines,
            network: network(&cs.network, &ls.network),
            filesystem: filesystem(&cs.filesystem, &ls.filesystem, &what, cx),
            limits: limits(cs.limits, ls.limits),
            line: ls.line,
        });
    }
    let mut cedar = c.cedar.clone();
    cedar.files.extend(l.cedar.files.iter().cloned());
    cedar.resolved.extend(l.cedar.resolved.iter().cloned());
    cedar.roots.extend(l.cedar.roots.iter().cloned());
    PolicyDoc {
        version: c.version,
        name: c.name.clone(),
        mode,
        network: network(&c.network, &l.network),
        tls: Tls {
            extra_roots,
            intercept,
        },
        filesystem: filesystem(&c.filesystem, &l.filesystem, "", cx),
        limits: limits(c.limits, l.limits),
        sandbox,
        credentials,
        mcp: Mcp { servers },
        cedar,
    }
}

/// `network.allow`: the local entries (each allowed host must be allowed by the local
/// policy; the central part still decides). Deny entries and HTTP rules of both apply.
fn network(c: &Network, l: &Network) -> Network {
    let mut deny = c.deny.clone();
    deny.extend(l.deny.iter().cloned());
    let mut http = c.http.clone();
    http.extend(l.http.iter().cloned());
    Network {
        allow: l.allow.clone(),
        deny,
        http,
    }
}

fn filesystem(c: &Filesystem, l: &Filesystem, what: &str, cx: &mut Cx<'_>) -> Filesystem {
    let rank = |m: WorkspaceMode| match m {
        WorkspaceMode::None => 0,
        WorkspaceMode::Ro => 1,
        WorkspaceMode::Rw => 2,
    };
    let (workspace, workspace_line) = if rank(l.workspace) < rank(c.workspace) {
        (l.workspace, l.workspace_line)
    } else {
        (c.workspace, c.workspace_line)
    };
    let (deny, deny_lines) = union(&c.deny, &c.deny_lines, &l.deny, &l.deny_lines);
    let mut mounts = Vec::new();
    for m in &l.mounts {
        // Lexical, with `~` as its own root: `/home/u/x` is not inside a central `~`
        // mount even when $HOME is /home/u (refused, never widened).
        let host = normalize_keep_tilde(&m.host);
        // The deepest central mount containing it decides its mode, as in decisions.
        let covering = c
            .mounts
            .iter()
            .filter(|cm| host.starts_with(normalize_keep_tilde(&cm.host)))
            .max_by_key(|cm| normalize_keep_tilde(&cm.host).components().count());
        match covering {
            Some(cm) => mounts.push(Mount {
                mode: if cm.mode == MountMode::Ro {
                    MountMode::Ro
                } else {
                    m.mode
                },
                ..m.clone()
            }),
            None => cx.refuse(
                m.line,
                format!(
                    "{what}the mount of `{}` is outside every [[filesystem.mounts]] entry of \
                     the central policy",
                    m.host.display()
                ),
            ),
        }
    }
    Filesystem {
        workspace,
        workspace_line,
        deny,
        deny_lines,
        mounts,
    }
}

fn limits(c: Limits, l: Limits) -> Limits {
    fn min<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Option<T> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b < a { b } else { a }),
            (a, None) => a,
            (None, b) => b,
        }
    }
    Limits {
        memory: min(c.memory, l.memory),
        pids: min(c.pids, l.pids),
        cpus: min(c.cpus, l.cpus),
    }
}

/// Both lists, without repeating an entry of the first in the second.
fn union(a: &[String], a_lines: &[u32], b: &[String], b_lines: &[u32]) -> (Vec<String>, Vec<u32>) {
    let mut items = a.to_vec();
    let mut lines = a_lines.to_vec();
    for (x, line) in b.iter().zip(b_lines) {
        if !items.contains(x) {
            items.push(x.clone());
            lines.push(*line);
        }
    }
    (items, lines)
}
